//! The verdicts: facts in, checklist out. Pure, so every rule about what is fine and what
//! breaks the move is unit-tested without a host.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Migration, Role};
use crate::netcfg::{Change, DEFAULT_RULE_PRIORITY, Family, NFT_TABLE, RULES_BEFORE_MARK};
use crate::noise::REJECT_AFTER_TIME;

use super::Mode;
use super::facts::{Facts, Handshake, Instance, PeerFact, Port, RouteFact, RuleFact};
use super::offload;
use super::ruleset::{Chain, NftFamily};
use super::verdict::{Checklist, Line};
use super::{forward, marks, routes};

/// 2024-01-01 00:00:00 UTC: a clock before this is certainly wrong.
const SANE_CLOCK_AFTER: u64 = 1_704_067_200;
/// Outer headers around a tunnel packet over IPv4: IP 20 + UDP 8 + WireGuard 32.
const OVERHEAD_V4: u32 = 60;
/// The same over IPv6 (a 40-byte IP header).
const OVERHEAD_V6: u32 = 80;

/// The families whose forwarding the move needs: those of the migration's subnets. A
/// plain tunnel forwards nothing.
pub fn families(config: &Config) -> Vec<Family> {
    match &config.migration {
        Some(m) => Family::all_of(&m.subnets),
        None => Vec::new(),
    }
}

/// Judges `facts` about the host for `config`.
pub fn evaluate(config: &Config, facts: &Facts, mode: Mode) -> Checklist {
    let mut lines = vec![config_line(config)];
    lines.extend(
        config
            .caveats()
            .into_iter()
            .map(|c| Line::warn("config", c.problem, c.fix)),
    );
    lines.extend([root(facts), clock(facts.now)]);
    lines.push(instance(config, facts, mode));
    lines.extend(facts.forwarding.iter().map(|(f, v)| forwarding(*f, v)));
    // Setting ip_forward sets the default too: with it off, the forwarding line says it all.
    let ipv4_forwards = facts
        .forwarding
        .iter()
        .any(|(f, v)| *f == Family::Ipv4 && v.as_deref().map(str::trim) == Ok("1"));
    if ipv4_forwards {
        lines.extend(facts.default_forwarding.as_ref().map(default_forwarding));
    }
    lines.push(match &facts.links {
        Ok(links) => Line::ok("rtnetlink", format!("answers ({} interfaces)", links.len())),
        Err(e) => Line::fail(
            "rtnetlink",
            format!("cannot list interfaces: {e}"),
            "run as root on the host itself",
        ),
    });
    if config.migration.is_some() {
        lines.push(nftables(config, facts));
    }
    lines.push(tun_name(config, facts));
    if let Some(m) = &config.migration {
        let tun = &config.interface.name;
        if m.role == Role::New {
            lines.push(bridge(m, facts));
        }
        lines.extend(policy_routing(m, facts));
        lines.extend(forward::lines(m, tun, &facts.nft, own_nft_table));
        if let Ok(ruleset) = &facts.nft {
            lines.extend(offload::line(ruleset, own_nft_table));
        }
        let routes = facts.main_routes.as_deref().unwrap_or_default();
        lines.extend(
            routes
                .iter()
                .filter(|r| r.dev.as_deref() != Some(tun.as_str()))
                .map(routes::main_route_line),
        );
        lines.extend(
            facts
                .route_probes
                .iter()
                .map(|p| routes::route_line(m, tun, p)),
        );
        if !config.vms.is_empty() {
            lines.push(vm_interfaces(config, m.role, facts));
        }
    }
    lines.push(port(config, facts));
    for (i, fact) in facts.peers.iter().enumerate() {
        lines.push(handshake(i, config, fact, mode));
        if let Some(line) = path_mtu(i, config.interface.mtu, fact) {
            lines.push(line);
        }
    }
    Checklist { lines }
}

fn config_line(config: &Config) -> Line {
    let role = match &config.migration {
        Some(m) if m.role == Role::Old => "role old",
        Some(_) => "role new",
        None => "plain tunnel",
    };
    Line::ok(
        "config",
        format!(
            "{} is valid ({role}, {} peer(s), {} VM(s))",
            config.path.display(),
            config.peers.len(),
            config.vms.len()
        ),
    )
}

fn root(facts: &Facts) -> Line {
    if facts.root {
        Line::ok("root", "running as root")
    } else {
        Line::fail(
            "root",
            "not root",
            "run as root: up creates a TUN device and changes routes, and only root can see nftables and /run/vmtun",
        )
    }
}

fn clock(now: SystemTime) -> Line {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if secs >= SANE_CLOCK_AFTER {
        Line::ok("clock", utc(secs))
    } else {
        Line::warn(
            "clock",
            format!("{} is before 2024-01-01", utc(secs)),
            "set the clock (NTP): handshakes carry a TAI64N timestamp that must increase, and a peer that saw a later one from this host ignores earlier ones",
        )
    }
}

fn instance(config: &Config, facts: &Facts, mode: Mode) -> Line {
    let name = &config.interface.name;
    let file = config.path.display();
    match (&facts.instance, &facts.own, mode) {
        (Instance::Running(_), _, Mode::DryRun) => Line::fail(
            "instance",
            format!("vmtun up already runs for {name}: up would refuse"),
            format!("stop it first: vmtun down -c {file}"),
        ),
        (Instance::Running(_), _, Mode::Check) => Line::ok(
            "instance",
            format!("vmtun up runs for {name}; what it set up counts as its own"),
        ),
        (Instance::NotRunning, Some(_), _) => Line::warn(
            "instance",
            format!(
                "a vmtun for {name} died without cleaning up (its state file is in /run/vmtun)"
            ),
            format!("up undoes what it left before it starts; or run vmtun down -c {file} now"),
        ),
        (Instance::NotRunning, None, _) => {
            Line::ok("instance", format!("no vmtun running for {name}"))
        }
    }
}

fn forwarding(family: Family, value: &Result<String, String>) -> Line {
    let key = family.forwarding();
    match value.as_deref().map(str::trim) {
        Ok("1") => Line::ok("forwarding", format!("{key} = 1")),
        Ok(v) => Line::fail(
            "forwarding",
            format!(
                "{key} = {v}: the host does not route between the tunnel, the VMs and the uplink"
            ),
            format!(
                "sysctl -w {key}=1, and put it in /etc/sysctl.d/ to survive a reboot (vmtun never changes it)"
            ),
        ),
        Err(e) => Line::fail(
            "forwarding",
            format!("cannot read {key}: {e}"),
            "run as root on the host itself",
        ),
    }
}

/// `net.ipv4.conf.default.forwarding`: what the TUN device and a VM's arriving interface get.
fn default_forwarding(value: &Result<String, String>) -> Line {
    let key = "net.ipv4.conf.default.forwarding";
    match value.as_deref().map(str::trim) {
        Ok("1") => Line::ok("default forwarding", format!("{key} = 1")),
        Ok(v) => Line::fail(
            "default forwarding",
            format!(
                "{key} = {v}: interfaces created from now on (vmtun's TUN device, a VM's interface when it arrives) do not forward what comes in on them"
            ),
            format!(
                "sysctl -w {key}=1, and put it in /etc/sysctl.d/ to survive a reboot (vmtun never changes it)"
            ),
        ),
        Err(e) => Line::fail(
            "default forwarding",
            format!("cannot read {key}: {e}"),
            "run as root on the host itself",
        ),
    }
}

/// vmtun's own nftables tables (`ip vmtun`, `ip6 vmtun`): the nftables line judges whose they
/// are; the checks of other users leave them out.
fn own_nft_table(chain: &Chain) -> bool {
    matches!(chain.family, NftFamily::Ip | NftFamily::Ip6) && chain.table == NFT_TABLE
}

fn nftables(config: &Config, facts: &Facts) -> Line {
    let foreign = |tables: &[(Family, String)]| {
        families(config).into_iter().find(|&family| {
            tables.contains(&(family, NFT_TABLE.to_string()))
                && !owns(facts, |c| {
                    matches!(c, Change::NftTable { family: f, name } if *f == family && name == NFT_TABLE)
                })
        })
    };
    let tables = facts.nft.as_ref().map(|r| {
        r.tables
            .iter()
            .filter_map(|(f, name)| match f {
                NftFamily::Ip => Some((Family::Ipv4, name.clone())),
                NftFamily::Ip6 => Some((Family::Ipv6, name.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    });
    match &tables {
        Ok(tables) if foreign(tables).is_some() => {
            let family = foreign(tables).unwrap_or_default();
            let table = format!("{} {NFT_TABLE}", family.nft());
            Line::fail(
                "nftables",
                format!("table {table} already exists and is not this config's"),
                format!(
                    "another vmtun runs here (one migration instance per host), or it is a leftover: stop that vmtun, or nft delete table {table}"
                ),
            )
        }
        Ok(tables) => Line::ok(
            "nftables",
            format!("netfilter answers ({} ip and ip6 tables)", tables.len()),
        ),
        Err(e) => Line::fail(
            "nftables",
            format!("cannot read the ruleset: {e}"),
            "run as root; the kernel needs nf_tables (modprobe nf_tables)",
        ),
    }
}

/// Whether this config's state file records a change matching `f`: vmtun's own object.
fn owns(facts: &Facts, f: impl Fn(&Change) -> bool) -> bool {
    facts.own.as_ref().is_some_and(|own| own.iter().any(f))
}

fn running(facts: &Facts) -> bool {
    matches!(facts.instance, Instance::Running(_))
}

/// A line about a link, or a warning that links could not be listed.
fn with_links(what: &str, facts: &Facts, judge: impl FnOnce(&[String]) -> Line) -> Line {
    match &facts.links {
        Ok(links) => judge(links),
        Err(_) => Line::warn(
            what,
            "not checked: interfaces could not be listed",
            "see the rtnetlink line",
        ),
    }
}

fn tun_name(config: &Config, facts: &Facts) -> Line {
    let name = &config.interface.name;
    with_links("tunnel interface", facts, |links| {
        if !links.contains(name) {
            Line::ok("tunnel interface", format!("{name} is free"))
        } else if running(facts) {
            Line::ok(
                "tunnel interface",
                format!("{name} is this config's running vmtun's"),
            )
        } else {
            Line::fail(
                "tunnel interface",
                format!("an interface named {name} already exists"),
                format!("choose another interface.name, or remove {name} if nothing uses it"),
            )
        }
    })
}

fn bridge(m: &Migration, facts: &Facts) -> Line {
    let b = &m.bridge;
    with_links("bridge", facts, |links| {
        if links.contains(b) {
            Line::ok("bridge", format!("{b} exists"))
        } else {
            Line::fail(
                "bridge",
                format!(
                    "bridge {b} does not exist: the cutover watches it for the first native packet"
                ),
                "set migration.bridge to the interface where the provider's traffic arrives, or create that bridge",
            )
        }
    })
}

fn vm_interfaces(config: &Config, role: Role, facts: &Facts) -> Line {
    with_links("VM interfaces", facts, |links| {
        let (present, absent): (Vec<&str>, Vec<&str>) = config
            .vms
            .iter()
            .map(|vm| vm.vif.as_str())
            .partition(|vif| links.iter().any(|l| l == vif));
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let detail = format!("present: {}; absent: {}", list(&present), list(&absent));
        match role {
            Role::New => Line::ok(
                "VM interfaces",
                format!("{detail} (a VM's interface appears when it arrives)"),
            ),
            Role::Old if absent.is_empty() => Line::ok("VM interfaces", detail),
            Role::Old => Line::warn(
                "VM interfaces",
                detail,
                "a VM that is not running here has nothing to move; check [[vm]].vif against virsh domiflist",
            ),
        }
    })
}

fn show_rule(r: &RuleFact) -> String {
    let ip = match r.family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip -6",
    };
    let mut s = format!("{ip} rule '{}: from all", r.priority);
    if let Some(mark) = r.fwmark {
        s += &format!(" fwmark {mark:#x}");
    }
    if let Some(t) = r.table {
        s += &format!(" lookup {t}");
    }
    s + "'"
}

/// Both roles: the table, mark and rule priorities must be vmtun's alone.
fn policy_routing(m: &Migration, facts: &Facts) -> Vec<Line> {
    let first = DEFAULT_RULE_PRIORITY - RULES_BEFORE_MARK;
    let rules = match &facts.rules {
        Ok(rules) => rules,
        Err(e) => {
            return vec![Line::fail(
                "policy rules",
                format!("cannot list ip rules: {e}"),
                "run as root on the host itself",
            )];
        }
    };
    let own_rule = |r: &RuleFact| {
        owns(
            facts,
            |c| matches!(c, Change::Rule(o) if o.family == r.family && o.fwmark.map(|m| m.0) == r.fwmark && o.priority == r.priority && o.table.map(|t| t.0) == r.table),
        )
    };
    let foreign: Vec<&RuleFact> = rules.iter().filter(|r| !own_rule(r)).collect();
    let marks = facts
        .nft
        .as_ref()
        .map(|r| marks::mark_users(r, m.fwmark, own_nft_table))
        .unwrap_or_default();
    let clash =
        |what: String, pick: &dyn Fn(&RuleFact) -> bool, nft: &[marks::Found], fix: &str| {
            let found: Vec<String> = (foreign.iter())
                .filter(|r| pick(r))
                .map(|r| show_rule(r))
                .chain(nft.iter().map(ToString::to_string))
                .collect();
            if found.is_empty() {
                Line::ok(what, "not used by anything else")
            } else {
                Line::fail(what, format!("already used by {}", found.join(", ")), fix)
            }
        };
    let mut lines = vec![
        clash(
            format!("fwmark {:#x}", m.fwmark),
            &|r| r.fwmark == Some(m.fwmark),
            &marks.users,
            "set migration.fwmark to a mark nothing else uses, or delete that rule if it is a leftover",
        ),
        clash(
            format!("rule priorities {first}-{DEFAULT_RULE_PRIORITY}"),
            &|r| (first..=DEFAULT_RULE_PRIORITY).contains(&r.priority),
            &[],
            "vmtun's rule priorities are fixed: move that rule to another priority",
        ),
    ];
    lines.push(table(m, facts, &foreign));
    lines.extend(marks::conntrack_line(m, &marks));
    lines
}

fn table(m: &Migration, facts: &Facts, foreign_rules: &[&RuleFact]) -> Line {
    let what = format!("table {}", m.table);
    let routes = match &facts.table_routes {
        Ok(routes) => routes,
        Err(e) => {
            return Line::fail(
                what,
                format!("cannot list its routes: {e}"),
                "run as root on the host itself",
            );
        }
    };
    let own_route = |r: &RouteFact| {
        owns(
            facts,
            |c| matches!(c, Change::Route(o) if o.table.0 == m.table && o.dest == r.dest),
        )
    };
    let mut users: Vec<String> = routes
        .iter()
        .filter(|r| !own_route(r))
        .map(|r| match &r.dev {
            Some(dev) => format!("route {} dev {dev}", r.dest),
            None => format!("route {}", r.dest),
        })
        .collect();
    users.extend(
        foreign_rules
            .iter()
            .filter(|r| r.table == Some(m.table))
            .map(|r| show_rule(r)),
    );
    if users.is_empty() {
        Line::ok(what, "nothing else uses it")
    } else {
        Line::fail(
            what,
            format!("already in use: {}", users.join(", ")),
            "set migration.table to a table nothing uses (ip route show table N prints nothing)",
        )
    }
}

fn port(config: &Config, facts: &Facts) -> Line {
    let p = config.interface.listen_port;
    let what = format!("UDP port {p}");
    match &facts.port {
        Port::Free => Line::ok(what, "free"),
        Port::Held => Line::ok(what, "held by this config's running vmtun"),
        Port::InUse => Line::fail(
            what,
            "in use by another program",
            format!(
                "find it with: ss -ulpn 'sport = :{p}'; stop it or change interface.listen_port"
            ),
        ),
        Port::Error(e) => Line::fail(
            what,
            format!("cannot bind it: {e}"),
            "run as root on the host itself",
        ),
    }
}

fn handshake(i: usize, config: &Config, fact: &PeerFact, mode: Mode) -> Line {
    let what = format!("peer[{i}] handshake");
    let to = fact.endpoint.map(|e| e.to_string()).unwrap_or_default();
    let own_key = config.interface.private_key.public_key().to_base64();
    match &fact.handshake {
        Handshake::NoEndpoint => Line::ok(
            what,
            "no endpoint configured: learned from the peer's first handshake",
        ),
        Handshake::Completed { rtt } => {
            Line::ok(what, format!("completed with {to} in {} (probe)", ms(*rtt)))
        }
        Handshake::Latest(Some(age)) if *age < REJECT_AFTER_TIME => Line::ok(
            what,
            format!(
                "latest handshake with {to} {:.1} s ago (running vmtun)",
                age.as_secs_f64()
            ),
        ),
        Handshake::Latest(age) => Line::warn(
            what,
            match age {
                Some(age) => format!(
                    "latest handshake with {to} {:.0} s ago: no live session",
                    age.as_secs_f64()
                ),
                None => format!("no handshake with {to} yet (running vmtun)"),
            },
            format!(
                "send traffic through the tunnel (e.g. ping migration.via); if it stays so, check the peer runs and lists {own_key}"
            ),
        ),
        Handshake::Refused => Line::warn(
            what,
            format!("nothing listens on {to} (ICMP port unreachable)"),
            "start vmtun up on the peer and check again",
        ),
        Handshake::NoAnswer(waited) => {
            let detail = format!("no answer from {to} within {:.1} s", waited.as_secs_f64());
            let fix = format!(
                "make sure UDP port {} passes the firewalls both ways, the peer's vmtun runs, and its config lists this host's public key {own_key}",
                fact.endpoint.map_or(0, |e| e.port())
            );
            match mode {
                // The move needs the peer; `vmtun check` is asked whether it can work now.
                Mode::Check => Line::fail(what, detail, fix),
                // `up` itself starts without the peer and keeps initiating: bringing the
                // two hosts up one after the other is the normal order.
                Mode::DryRun => Line::warn(what, detail, fix),
            }
        }
        Handshake::SendFailed(e) => Line::fail(
            what,
            format!("cannot send to {to}: {e}"),
            "give the host a route to the peer's endpoint",
        ),
        Handshake::NotProbed => Line::warn(
            what,
            "not probed: the listen port could not be bound",
            "see the UDP port line",
        ),
    }
}

fn overhead(endpoint: SocketAddr) -> u32 {
    if endpoint.is_ipv4() {
        OVERHEAD_V4
    } else {
        OVERHEAD_V6
    }
}

fn path_mtu(i: usize, mtu: u16, fact: &PeerFact) -> Option<Line> {
    let endpoint = fact.endpoint?;
    let what = format!("peer[{i}] path MTU");
    let need = u32::from(mtu) + overhead(endpoint);
    Some(match fact.path_mtu.as_ref()? {
        Ok(path) if *path >= need => Line::ok(
            what,
            format!(
                "{path} towards {}; the tunnel needs {mtu} + {} = {need}",
                endpoint.ip(),
                overhead(endpoint)
            ),
        ),
        Ok(path) => Line::warn(
            what,
            format!(
                "{path} towards {}, less than the tunnel MTU {mtu} + {} = {need}: full-size packets get fragmented or dropped",
                endpoint.ip(),
                overhead(endpoint)
            ),
            format!(
                "set interface.mtu = {} (on both hosts)",
                path.saturating_sub(overhead(endpoint))
            ),
        ),
        Err(e) => Line::fail(
            what,
            format!("no route towards {}: {e}", endpoint.ip()),
            "give the host a route to the peer's endpoint",
        ),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `YYYY-MM-DD HH:MM:SS UTC` (Howard Hinnant's days-to-civil).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
