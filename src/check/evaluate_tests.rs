//! The verdicts, one rule at a time, on facts written by hand.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::check::Mode;
use crate::check::facts::{Facts, Handshake, Instance, PeerFact, Port, RouteFact, RuleFact};
use crate::check::verdict::Verdict;
use crate::config::Config;
use crate::netcfg::{Change, Family, FwMark, Rule, TableId};

const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const PEER: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

fn new_host() -> Config {
    let text = format!(
        r#"
[interface]
name = "vmtun0"
private_key = "{KEY}"
address = "100.64.0.2/24"

[[peer]]
public_key = "{PEER}"
endpoint = "198.18.1.2:51820"
allowed_ips = ["0.0.0.0/0"]

[migration]
role = "new"
subnets = ["203.0.113.0/29"]
via = "100.64.0.1"

[[vm]]
vif = "vif0"
addresses = ["203.0.113.2"]
"#
    );
    Config::parse(&text, Path::new("/etc/vmtun/new.toml")).unwrap()
}

/// A host where everything is in order for [`new_host`].
fn good() -> Facts {
    Facts {
        root: true,
        now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        forwarding: vec![(Family::Ipv4, Ok("1".into()))],
        links: Ok(vec!["lo".into(), "br0".into()]),
        rules: Ok(vec![
            RuleFact {
                family: Family::Ipv4,
                priority: 0,
                fwmark: None,
                table: Some(255),
            },
            RuleFact {
                family: Family::Ipv4,
                priority: 32766,
                fwmark: None,
                table: Some(254),
            },
        ]),
        table_routes: Ok(vec![]),
        nft_tables: Ok(vec![]),
        instance: Instance::NotRunning,
        own: None,
        port: Port::Free,
        peers: vec![PeerFact {
            endpoint: Some("198.18.1.2:51820".parse().unwrap()),
            handshake: Handshake::Completed {
                rtt: Duration::from_micros(400),
            },
            path_mtu: Some(Ok(1500)),
        }],
    }
}

fn verdict(facts: &Facts, what: &str) -> (Verdict, String) {
    let list = evaluate(&new_host(), facts, Mode::Check);
    let line = list
        .line(what)
        .unwrap_or_else(|| panic!("no line {what:?} in\n{list}"));
    (line.verdict, line.detail.clone())
}

#[test]
fn a_ready_host_passes_with_every_line_ok() {
    let list = evaluate(&new_host(), &good(), Mode::Check);
    assert!(
        list.lines.iter().all(|l| l.verdict == Verdict::Ok),
        "{list}"
    );
    assert!(
        list.to_string().ends_with("result: ready (0 warning(s))\n"),
        "{list}"
    );
}

#[test]
fn forwarding_off_fails() {
    let mut f = good();
    f.forwarding = vec![(Family::Ipv4, Ok("0".into()))];
    let (v, detail) = verdict(&f, "forwarding");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("net.ipv4.ip_forward = 0"), "{detail}");
}

#[test]
fn a_plain_tunnel_needs_no_forwarding() {
    let mut c = new_host();
    c.migration = None;
    c.vms.clear();
    assert!(families(&c).is_empty());
}

#[test]
fn a_missing_bridge_fails_naming_it() {
    let mut f = good();
    f.links = Ok(vec!["lo".into()]);
    let (v, detail) = verdict(&f, "bridge");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("br0"), "{detail}");
}

#[test]
fn vm_interfaces_may_be_absent_on_the_new_host_but_not_on_the_old() {
    let (v, detail) = verdict(&good(), "VM interfaces");
    assert_eq!(v, Verdict::Ok);
    assert!(detail.contains("absent: vif0"), "{detail}");
    let mut old = new_host();
    old.migration.as_mut().unwrap().role = crate::config::Role::Old;
    let list = evaluate(&old, &good(), Mode::Check);
    assert_eq!(list.line("VM interfaces").unwrap().verdict, Verdict::Warn);
}

#[test]
fn foreign_rules_on_the_mark_priority_or_table_fail() {
    let mut f = good();
    f.rules.as_mut().unwrap().push(RuleFact {
        family: Family::Ipv4,
        priority: 100,
        fwmark: Some(1),
        table: Some(300),
    });
    let (v, detail) = verdict(&f, "fwmark 0x1");
    assert_eq!(v, Verdict::Fail);
    assert!(
        detail.contains("100: from all fwmark 0x1 lookup 300"),
        "{detail}"
    );
    f.rules.as_mut().unwrap().push(RuleFact {
        family: Family::Ipv4,
        priority: 10_000,
        fwmark: None,
        table: Some(201),
    });
    assert_eq!(verdict(&f, "rule priority 10000").0, Verdict::Fail);
    assert_eq!(verdict(&f, "table 201").0, Verdict::Fail);
}

#[test]
fn an_ipv6_rule_or_route_clashes_too_and_names_its_family() {
    let mut f = good();
    f.rules.as_mut().unwrap().push(RuleFact {
        family: Family::Ipv6,
        priority: 10_000,
        fwmark: Some(1),
        table: Some(201),
    });
    // vmtun's own IPv4 rule with the same numbers does not make the IPv6 one its own.
    f.own = Some(vec![Change::Rule(Rule {
        family: Family::Ipv4,
        fwmark: FwMark(1),
        table: TableId(201),
        priority: 10_000,
    })]);
    let (v, detail) = verdict(&f, "fwmark 0x1");
    assert_eq!(v, Verdict::Fail);
    assert!(
        detail.contains("ip -6 rule '10000: from all fwmark 0x1 lookup 201'"),
        "{detail}"
    );
    f.rules.as_mut().unwrap().pop();
    f.table_routes = Ok(vec![RouteFact {
        dest: "::/0".parse().unwrap(),
        dev: Some("eth1".into()),
    }]);
    let (v, detail) = verdict(&f, "table 201");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("route ::/0 dev eth1"), "{detail}");
}

#[test]
fn a_foreign_route_in_the_table_fails() {
    let mut f = good();
    f.table_routes = Ok(vec![RouteFact {
        dest: "10.0.0.0/8".parse().unwrap(),
        dev: Some("eth1".into()),
    }]);
    let (v, detail) = verdict(&f, "table 201");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("route 10.0.0.0/8 dev eth1"), "{detail}");
}

#[test]
fn vmtuns_own_rule_route_table_device_and_port_are_no_conflict() {
    let mut f = good();
    let own_rule = Rule {
        family: Family::Ipv4,
        fwmark: FwMark(1),
        table: TableId(201),
        priority: 10_000,
    };
    f.rules.as_mut().unwrap().push(RuleFact {
        family: Family::Ipv4,
        priority: 10_000,
        fwmark: Some(1),
        table: Some(201),
    });
    f.table_routes = Ok(vec![RouteFact {
        dest: "0.0.0.0/0".parse().unwrap(),
        dev: Some("vmtun0".into()),
    }]);
    f.nft_tables = Ok(vec![(Family::Ipv4, "vmtun".into())]);
    f.links.as_mut().unwrap().push("vmtun0".into());
    f.own = Some(vec![
        Change::Route(crate::netcfg::Route {
            dest: "0.0.0.0/0".parse().unwrap(),
            via: Some("100.64.0.1".parse().unwrap()),
            dev: "vmtun0".into(),
            table: TableId(201),
        }),
        Change::Rule(own_rule),
        Change::NftTable {
            family: Family::Ipv4,
            name: "vmtun".into(),
        },
    ]);
    f.port = Port::Held;
    f.peers[0].handshake = Handshake::Latest(Some(Duration::from_secs(5)));
    let status = crate::control::Status {
        interface: "vmtun0".into(),
        public_key: String::new(),
        listen_port: 51820,
        peers: vec![],
        drops: Default::default(),
        busy_poll: crate::control::BusyPollStatus {
            window_us: 0,
            spun_ms: 0.0,
            caught: 0,
            over_budget: 0,
        },
        migration: None,
        restore: None,
    };
    f.instance = Instance::Running(Box::new(status));
    let list = evaluate(&new_host(), &f, Mode::Check);
    assert!(
        list.lines.iter().all(|l| l.verdict == Verdict::Ok),
        "{list}"
    );
    // The same host for `up --dry-run`: up would refuse to start a second instance.
    let list = evaluate(&new_host(), &f, Mode::DryRun);
    assert_eq!(
        list.line("instance").unwrap().verdict,
        Verdict::Fail,
        "{list}"
    );
    // Without the state file, the same objects are someone else's.
    f.own = None;
    let list = evaluate(&new_host(), &f, Mode::Check);
    for what in ["fwmark 0x1", "rule priority 10000", "table 201", "nftables"] {
        assert_eq!(
            list.line(what).unwrap().verdict,
            Verdict::Fail,
            "{what}: {list}"
        );
    }
}

#[test]
fn a_taken_name_or_port_fails() {
    let mut f = good();
    f.links.as_mut().unwrap().push("vmtun0".into());
    f.port = Port::InUse;
    assert_eq!(verdict(&f, "tunnel interface").0, Verdict::Fail);
    let (v, _) = verdict(&f, "UDP port 51820");
    assert_eq!(v, Verdict::Fail);
}

#[test]
fn handshake_outcomes() {
    let cases = [
        (Handshake::NoEndpoint, Verdict::Ok),
        (
            Handshake::Latest(Some(Duration::from_secs(30))),
            Verdict::Ok,
        ),
        (
            Handshake::Latest(Some(Duration::from_secs(600))),
            Verdict::Warn,
        ),
        (Handshake::Latest(None), Verdict::Warn),
        (Handshake::Refused, Verdict::Warn),
        (Handshake::NotProbed, Verdict::Warn),
        (Handshake::NoAnswer(Duration::from_secs(2)), Verdict::Fail),
        (
            Handshake::SendFailed("Network is unreachable".into()),
            Verdict::Fail,
        ),
    ];
    for (handshake, expected) in cases {
        let mut f = good();
        f.peers[0].handshake = handshake.clone();
        assert_eq!(
            verdict(&f, "peer[0] handshake").0,
            expected,
            "{handshake:?}"
        );
    }
}

#[test]
fn a_silent_peer_does_not_stop_up_dry_run() {
    // `up` starts without its peer (the hosts come up one after the other), so the dry run
    // only warns where `vmtun check` fails.
    let mut f = good();
    f.peers[0].handshake = Handshake::NoAnswer(Duration::from_secs(2));
    let list = evaluate(&new_host(), &f, Mode::DryRun);
    let line = list.line("peer[0] handshake").expect("a handshake line");
    assert_eq!(line.verdict, Verdict::Warn);
    assert!(list.passed(), "{list}");
}

#[test]
fn path_mtu_must_hold_the_tunnel_mtu_and_60_bytes() {
    let mut f = good();
    f.peers[0].path_mtu = Some(Ok(1480));
    assert_eq!(verdict(&f, "peer[0] path MTU").0, Verdict::Ok);
    f.peers[0].path_mtu = Some(Ok(1479));
    let list = evaluate(&new_host(), &f, Mode::Check);
    let line = list.line("peer[0] path MTU").unwrap();
    assert_eq!(line.verdict, Verdict::Warn);
    assert!(
        line.fix
            .as_deref()
            .unwrap()
            .contains("interface.mtu = 1419"),
        "{list}"
    );
    f.peers[0].path_mtu = Some(Err("Network is unreachable".into()));
    assert_eq!(verdict(&f, "peer[0] path MTU").0, Verdict::Fail);
}

#[test]
fn a_clock_before_2024_warns() {
    let mut f = good();
    f.now = SystemTime::UNIX_EPOCH + Duration::from_secs(3600);
    let (v, detail) = verdict(&f, "clock");
    assert_eq!(v, Verdict::Warn);
    assert!(detail.starts_with("1970-01-01 01:00:00 UTC"), "{detail}");
    assert_eq!(verdict(&good(), "clock").1, "2027-01-15 08:00:00 UTC");
}

#[test]
fn not_root_fails() {
    let mut f = good();
    f.root = false;
    assert_eq!(verdict(&f, "root").0, Verdict::Fail);
}
