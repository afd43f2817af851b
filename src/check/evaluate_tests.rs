//! The verdicts, one rule at a time, on facts written by hand.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::check::Mode;
use crate::check::facts::{
    Facts, Handshake, Instance, PeerFact, Port, RouteFact, RouteKind, RuleFact,
};
use crate::check::ruleset::{Expr, NftFamily, Ruleset};
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
        default_forwarding: Some(Ok("1".into())),
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
        main_routes: Ok(vec![]),
        route_probes: vec![],
        nft: Ok(Ruleset::default()),
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
    assert_eq!(verdict(&f, "rule priorities 9996-10000").0, Verdict::Fail);
    // Any of vmtun's priorities, not only the mark rule's.
    let mut g = good();
    g.rules.as_mut().unwrap().push(RuleFact {
        family: Family::Ipv4,
        priority: 9_997,
        fwmark: None,
        table: Some(300),
    });
    let (v, detail) = verdict(&g, "rule priorities 9996-10000");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("9997: from all lookup 300"), "{detail}");
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
    f.own = Some(vec![Change::Rule(
        Rule::new(Family::Ipv4, 10_000, Some(TableId(201))).fwmark(FwMark(1)),
    )]);
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
        kind: RouteKind::Unicast,
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
        kind: RouteKind::Unicast,
    }]);
    let (v, detail) = verdict(&f, "table 201");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("route 10.0.0.0/8 dev eth1"), "{detail}");
}

#[test]
fn vmtuns_own_rule_route_table_device_and_port_are_no_conflict() {
    let mut f = good();
    let own_rule = Rule::new(Family::Ipv4, 10_000, Some(TableId(201))).fwmark(FwMark(1));
    f.rules.as_mut().unwrap().push(RuleFact {
        family: Family::Ipv4,
        priority: 10_000,
        fwmark: Some(1),
        table: Some(201),
    });
    f.table_routes = Ok(vec![RouteFact {
        dest: "0.0.0.0/0".parse().unwrap(),
        dev: Some("vmtun0".into()),
        kind: RouteKind::Unicast,
    }]);
    f.nft = Ok(Ruleset {
        tables: vec![(NftFamily::Ip, "vmtun".into())],
        chains: vec![],
    });
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
    let status = crate::status::Status {
        interface: "vmtun0".into(),
        public_key: String::new(),
        listen_port: 51820,
        peers: vec![],
        drops: Default::default(),
        busy_poll: crate::status::BusyPollStatus {
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
    for what in [
        "fwmark 0x1",
        "rule priorities 9996-10000",
        "table 201",
        "nftables",
    ] {
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

// --- The host's own policy: forwarding default, the forward hook, the mark's other users,
// routes. Rules are written as the kernel holds them (see ruleset_tests.rs for a real dump).

mod nft {
    use crate::check::ruleset::{
        Chain, Expr, HOOK_FORWARD, Hook, NftFamily, Rule, Verdict, ct, meta,
    };

    fn name_data(name: &str) -> Vec<u8> {
        match name.strip_suffix('*') {
            Some(prefix) => prefix.as_bytes().to_vec(),
            None => {
                let mut d = name.as_bytes().to_vec();
                d.resize(16, 0);
                d
            }
        }
    }

    /// `iifname NAME` (`vif*`: a prefix).
    pub fn iifname(name: &str) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: meta::IIFNAME,
                dreg: Some(0),
                sreg: None,
            },
            Expr::Cmp {
                sreg: 0,
                eq: true,
                data: name_data(name),
            },
        ]
    }

    /// `oifname NAME`.
    pub fn oifname(name: &str) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: meta::OIFNAME,
                dreg: Some(0),
                sreg: None,
            },
            Expr::Cmp {
                sreg: 0,
                eq: true,
                data: name_data(name),
            },
        ]
    }

    /// `ip daddr A.B.C.D/LEN`.
    pub fn ip_daddr(net: &str) -> Vec<Expr> {
        let net: ipnet::Ipv4Net = net.parse().unwrap();
        vec![
            Expr::Payload {
                base: 1,
                offset: 16,
                len: 4,
                dreg: 0,
            },
            Expr::Bitwise {
                sreg: 0,
                dreg: 0,
                mask: net.netmask().octets().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: 0,
                eq: true,
                data: net.network().octets().to_vec(),
            },
        ]
    }

    /// `ct state established,related`.
    pub fn established() -> Vec<Expr> {
        vec![
            Expr::Ct {
                key: ct::STATE,
                dreg: Some(0),
                sreg: None,
            },
            Expr::Bitwise {
                sreg: 0,
                dreg: 0,
                mask: 6u32.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: 0,
                eq: false,
                data: vec![0; 4],
            },
        ]
    }

    /// `meta mark set VALUE`.
    pub fn set_mark(value: u32) -> Vec<Expr> {
        vec![
            Expr::Immediate {
                dreg: 0,
                value: value.to_ne_bytes().to_vec(),
            },
            Expr::Meta {
                key: meta::MARK,
                dreg: None,
                sreg: Some(0),
            },
        ]
    }

    /// `meta mark & MASK == VALUE`.
    pub fn mark_masked(mask: u32, value: u32) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: meta::MARK,
                dreg: Some(0),
                sreg: None,
            },
            Expr::Bitwise {
                sreg: 0,
                dreg: 0,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: 0,
                eq: true,
                data: value.to_ne_bytes().to_vec(),
            },
        ]
    }

    /// `ct mark set meta mark` (save).
    pub fn save() -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: meta::MARK,
                dreg: Some(0),
                sreg: None,
            },
            Expr::Ct {
                key: ct::MARK,
                dreg: None,
                sreg: Some(0),
            },
        ]
    }

    /// `meta mark set ct mark` (restore).
    pub fn restore() -> Vec<Expr> {
        vec![
            Expr::Ct {
                key: ct::MARK,
                dreg: Some(0),
                sreg: None,
            },
            Expr::Meta {
                key: meta::MARK,
                dreg: None,
                sreg: Some(0),
            },
        ]
    }

    pub fn then(v: Verdict) -> Vec<Expr> {
        vec![Expr::Verdict(v)]
    }

    pub fn rule(handle: u64, parts: &[Vec<Expr>]) -> Rule {
        Rule {
            handle,
            exprs: parts.concat(),
        }
    }

    /// A chain `family table name`, a base chain on `hook` when given.
    pub fn chain(
        family: NftFamily,
        table: &str,
        name: &str,
        hook: Option<u32>,
        accepts: bool,
        rules: Vec<Rule>,
    ) -> Chain {
        Chain {
            family,
            table: table.into(),
            name: name.into(),
            hook: hook.map(|num| Hook { num, priority: 0 }),
            accepts: hook.map(|_| accepts),
            rules,
        }
    }

    /// A base chain on the forward hook.
    pub fn forward(
        family: NftFamily,
        table: &str,
        name: &str,
        accepts: bool,
        rules: Vec<Rule>,
    ) -> Chain {
        chain(family, table, name, Some(HOOK_FORWARD), accepts, rules)
    }
}

fn with_chains(chains: Vec<crate::check::ruleset::Chain>) -> Facts {
    let mut f = good();
    f.nft = Ok(Ruleset {
        tables: vec![],
        chains,
    });
    f
}

fn line_of(config: &Config, facts: &Facts, what: &str) -> crate::check::Line {
    let list = evaluate(config, facts, Mode::Check);
    list.line(what)
        .unwrap_or_else(|| panic!("no line {what:?} in\n{list}"))
        .clone()
}

#[test]
fn default_forwarding_off_fails_naming_what_it_breaks() {
    let mut f = good();
    f.default_forwarding = Some(Ok("0".into()));
    let (v, detail) = verdict(&f, "default forwarding");
    // With ip_forward off too, the forwarding line says it all: setting ip_forward sets
    // the default as well.
    let mut both = f.clone();
    both.forwarding = vec![(Family::Ipv4, Ok("0".into()))];
    let list = evaluate(&new_host(), &both, Mode::Check);
    assert!(list.line("default forwarding").is_none(), "{list}");
    assert_eq!(v, Verdict::Fail);
    assert!(
        detail.contains("net.ipv4.conf.default.forwarding = 0"),
        "{detail}"
    );
    assert!(detail.contains("TUN device"), "{detail}");
}

#[test]
fn a_forward_chain_with_policy_drop_and_no_accept_for_the_tunnel_fails() {
    use crate::check::ruleset::Verdict as V;
    use nft::*;
    let f = with_chains(vec![forward(
        NftFamily::Inet,
        "filter",
        "forward",
        false,
        vec![rule(3, &[established(), then(V::Accept)])],
    )]);
    let l = line_of(&new_host(), &f, "forward chain inet filter forward");
    assert_eq!(l.verdict, Verdict::Fail, "{l:?}");
    assert!(
        l.detail
            .contains("from vmtun0 to vif* for 203.0.113.0/29 (its policy drop)"),
        "{l:?}"
    );
    assert!(
        l.detail.contains("from vif* to vmtun0 from 203.0.113.0/29"),
        "{l:?}"
    );
    let fix = l.fix.unwrap();
    assert!(
        fix.contains(
            r#"nft insert rule inet filter forward iifname "vmtun0" oifname "vif*" accept"#
        ),
        "{fix}"
    );
}

#[test]
fn a_forward_chain_that_accepts_the_tunnel_both_ways_passes() {
    use crate::check::ruleset::Verdict as V;
    use nft::*;
    let f = with_chains(vec![forward(
        NftFamily::Ip,
        "filter",
        "forward",
        false,
        vec![
            rule(2, &[established(), then(V::Accept)]),
            // Another subnet's drop does not concern the move.
            rule(3, &[ip_daddr("10.0.0.0/8"), then(V::Drop)]),
            rule(
                4,
                &[
                    iifname("vmtun0"),
                    oifname("vif*"),
                    ip_daddr("203.0.113.0/24"),
                    then(V::Accept),
                ],
            ),
            rule(5, &[iifname("vif*"), oifname("vmtun0"), then(V::Accept)]),
        ],
    )]);
    let list = evaluate(&new_host(), &f, Mode::Check);
    assert_eq!(
        list.line("forward hook").unwrap().verdict,
        Verdict::Ok,
        "{list}"
    );
    assert!(
        list.lines.iter().all(|l| l.verdict == Verdict::Ok),
        "{list}"
    );
    // A jump to a chain that accepts is followed.
    let f = with_chains(vec![
        forward(
            NftFamily::Inet,
            "filter",
            "forward",
            false,
            vec![
                rule(2, &[iifname("vmtun0"), then(V::Jump("tunnel".into()))]),
                rule(3, &[oifname("vmtun0"), then(V::Jump("tunnel".into()))]),
            ],
        ),
        chain(
            NftFamily::Inet,
            "filter",
            "tunnel",
            None,
            true,
            vec![rule(9, &[then(V::Accept)])],
        ),
    ]);
    assert_eq!(
        line_of(&new_host(), &f, "forward hook").verdict,
        Verdict::Ok
    );
}

#[test]
fn an_iptables_nft_drop_on_the_tunnel_interface_fails_with_an_iptables_fix() {
    use crate::check::ruleset::Verdict as V;
    use nft::*;
    let mut c = new_host();
    c.migration.as_mut().unwrap().role = crate::config::Role::Old;
    let f = with_chains(vec![forward(
        NftFamily::Ip,
        "filter",
        "FORWARD",
        true,
        vec![rule(
            2,
            &[
                iifname("vmtun0"),
                vec![Expr::Other("counter".into())],
                then(V::Drop),
            ],
        )],
    )]);
    let l = line_of(&c, &f, "forward chain ip filter FORWARD");
    assert_eq!(l.verdict, Verdict::Fail, "{l:?}");
    assert!(
        l.detail.contains(
            r#"out of vmtun0 from 203.0.113.0/29 (rule 'iifname "vmtun0" drop', handle 2)"#
        ),
        "{l:?}"
    );
    assert!(!l.detail.contains("into vmtun0"), "{l:?}");
    assert!(
        l.fix
            .unwrap()
            .contains("iptables -t filter -I FORWARD -i vmtun0 -j ACCEPT"),
    );
}

#[test]
fn a_drop_the_check_cannot_judge_warns() {
    use crate::check::ruleset::Verdict as V;
    use nft::*;
    let lookup = vec![
        Expr::Payload {
            base: 1,
            offset: 12,
            len: 4,
            dreg: 0,
        },
        Expr::Lookup {
            sreg: 0,
            set: "blocked".into(),
        },
    ];
    let f = with_chains(vec![forward(
        NftFamily::Inet,
        "filter",
        "forward",
        true,
        vec![rule(7, &[lookup, then(V::Drop)])],
    )]);
    let l = line_of(&new_host(), &f, "forward chain inet filter forward");
    assert_eq!(l.verdict, Verdict::Warn, "{l:?}");
    assert!(
        l.detail.contains("rule 'ip saddr @blocked drop', handle 7"),
        "{l:?}"
    );
    // vmtun's own table is not judged here (the nftables line says whose it is).
    let f = with_chains(vec![forward(
        NftFamily::Ip,
        "vmtun",
        "forward",
        false,
        vec![],
    )]);
    assert_eq!(
        line_of(&new_host(), &f, "forward hook").verdict,
        Verdict::Ok
    );
}

#[test]
fn an_nft_rule_that_sets_or_tests_the_mark_fails_the_fwmark_line() {
    use nft::*;
    let mangle = |rules| chain(NftFamily::Ip, "mangle", "PREROUTING", Some(0), true, rules);
    let f = with_chains(vec![mangle(vec![rule(5, &[set_mark(1)])])]);
    let (v, detail) = verdict(&f, "fwmark 0x1");
    assert_eq!(v, Verdict::Fail);
    assert!(
        detail.contains("nft rule 'meta mark set 0x1' in ip mangle PREROUTING (handle 5)"),
        "{detail}"
    );
    // `meta mark & 0xff00 == 0x100` tests other bits: no user of 0x1. `& 0xff == 0x1` is.
    let f = with_chains(vec![mangle(vec![rule(6, &[mark_masked(0xff00, 0x100)])])]);
    assert_eq!(verdict(&f, "fwmark 0x1").0, Verdict::Ok);
    let f = with_chains(vec![mangle(vec![rule(6, &[mark_masked(0xff, 0x1)])])]);
    assert_eq!(verdict(&f, "fwmark 0x1").0, Verdict::Fail);
    // iptables-nft's `-j MARK --set-mark 1` (xt_mark_tginfo2 { mark, mask }).
    let target = Expr::Target {
        name: "MARK".into(),
        rev: 2,
        info: [1u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
    };
    let f = with_chains(vec![mangle(vec![rule(8, &[vec![target]])])]);
    let (v, detail) = verdict(&f, "fwmark 0x1");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("'-j MARK'"), "{detail}");
    // vmtun's own mark rule is no other user.
    let f = with_chains(vec![chain(
        NftFamily::Ip,
        "vmtun",
        "prerouting",
        Some(0),
        true,
        vec![rule(4, &[set_mark(1)])],
    )]);
    assert_eq!(verdict(&f, "fwmark 0x1").0, Verdict::Ok);
}

#[test]
fn connmark_save_and_restore_together_warn() {
    use nft::*;
    let mangle = |rules| {
        chain(
            NftFamily::Inet,
            "mangle",
            "prerouting",
            Some(0),
            true,
            rules,
        )
    };
    let f = with_chains(vec![mangle(vec![
        rule(2, &[restore()]),
        rule(3, &[save()]),
    ])]);
    let list = evaluate(&new_host(), &f, Mode::Check);
    let l = list.line("conntrack mark").expect("a conntrack mark line");
    assert_eq!(l.verdict, Verdict::Warn);
    assert!(
        l.detail
            .contains("'ct mark set meta mark' in inet mangle prerouting (handle 3) saves"),
        "{l:?}"
    );
    assert!(
        l.detail
            .contains("'meta mark set ct mark' in inet mangle prerouting (handle 2) restores"),
        "{l:?}"
    );
    assert!(list.passed());
    // A restore alone carries nothing of vmtun's.
    let f = with_chains(vec![mangle(vec![rule(2, &[restore()])])]);
    assert!(
        evaluate(&new_host(), &f, Mode::Check)
            .line("conntrack mark")
            .is_none()
    );
}

fn probe(dev: &str, table: u32) -> crate::check::RouteProbe {
    crate::check::RouteProbe {
        query: "ip route get 198.51.100.1 from 203.0.113.2 iif br0 mark 0x1".into(),
        subnet: "203.0.113.0/29".parse().unwrap(),
        answer: Ok(crate::check::RouteAnswer {
            dev: Some(dev.into()),
            table: Some(table),
            kind: RouteKind::Unicast,
        }),
    }
}

#[test]
fn a_marked_reply_must_be_routed_into_the_tunnel() {
    let mut f = good();
    f.route_probes = vec![probe("vmtun0", 201)];
    let (v, detail) = verdict(&f, "reply route 203.0.113.0/29");
    assert_eq!(v, Verdict::Ok);
    assert!(detail.ends_with("-> dev vmtun0 table 201"), "{detail}");
    f.route_probes = vec![probe("eth0", 254)];
    let (v, detail) = verdict(&f, "reply route 203.0.113.0/29");
    assert_eq!(v, Verdict::Fail);
    assert!(detail.contains("does not go through vmtun0"), "{detail}");
    assert!(detail.ends_with("-> dev eth0 table 254"), "{detail}");
}

#[test]
fn the_old_hosts_own_route_for_a_subnet_is_reported_not_failed() {
    let mut c = new_host();
    c.migration.as_mut().unwrap().role = crate::config::Role::Old;
    let mut f = good();
    f.main_routes = Ok(vec![RouteFact {
        dest: "203.0.113.0/29".parse().unwrap(),
        dev: None,
        kind: RouteKind::Blackhole,
    }]);
    let l = line_of(&c, &f, "main table 203.0.113.0/29");
    assert_eq!(l.verdict, Verdict::Ok);
    assert!(l.detail.contains("'blackhole 203.0.113.0/29'"), "{l:?}");
    assert!(
        l.detail.contains("vmtun sets it aside while it runs"),
        "{l:?}"
    );
}

#[test]
fn route_queries_stand_for_the_moves_packets() {
    use crate::check::routes::queries;
    let c = new_host();
    let q = queries(&c, &["lo".into(), "br0".into()]);
    assert_eq!(q.len(), 1);
    // No VM interface yet: lo stands in for it.
    assert_eq!(
        q[0].text(),
        "ip route get 198.51.100.1 from 203.0.113.2 iif lo mark 0x1"
    );
    let q = queries(&c, &["vif0".into(), "br0".into()]);
    assert_eq!(q[0].from.as_ref().unwrap().1, "vif0");
    let mut old = new_host();
    old.migration.as_mut().unwrap().role = crate::config::Role::Old;
    assert_eq!(queries(&old, &[])[0].text(), "ip route get 203.0.113.0");
}

#[test]
fn on_the_old_host_the_subnet_must_be_routed_into_the_tunnel() {
    let mut c = new_host();
    c.migration.as_mut().unwrap().role = crate::config::Role::Old;
    let mut f = good();
    let mut p = probe("vmtun0", 254);
    p.query = "ip route get 203.0.113.0".into();
    f.route_probes = vec![p.clone()];
    assert_eq!(
        line_of(&c, &f, "subnet route 203.0.113.0/29").verdict,
        Verdict::Ok
    );
    p.answer = Ok(crate::check::RouteAnswer {
        dev: None,
        table: Some(254),
        kind: RouteKind::Blackhole,
    });
    f.route_probes = vec![p];
    let l = line_of(&c, &f, "subnet route 203.0.113.0/29");
    assert_eq!(l.verdict, Verdict::Fail);
    assert!(
        l.detail.ends_with("-> blackhole no device table 254"),
        "{l:?}"
    );
}

#[test]
fn an_old_host_that_cannot_serve_vms_left_behind_warns() {
    let mut c = new_host();
    c.migration.as_mut().unwrap().role = crate::config::Role::Old;
    c.peers[0].allowed_ips = vec![
        "100.64.0.1/32".parse().unwrap(),
        "203.0.113.0/29".parse().unwrap(),
    ];
    let list = evaluate(&c, &good(), Mode::Check);
    let warning = list
        .lines
        .iter()
        .find(|l| l.verdict == Verdict::Warn && l.detail.contains("lacks 0.0.0.0/0"))
        .unwrap_or_else(|| panic!("no warning about VMs left behind in\n{list}"));
    assert_eq!(warning.what, "config");
}
