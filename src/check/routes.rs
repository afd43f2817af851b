//! Where the move's packets are routed: the lookups to ask the kernel while vmtun runs (role
//! new: a VM's marked reply, as `ip route get CLIENT from VM iif VIF mark FWMARK`; role old:
//! a subnet's address) and their verdicts, and the old host's own route for a subnet in the
//! main table (`blackhole 203.0.113.0/29`). Pure: [`super::netlink`] asks.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, Migration, Role};
use crate::netcfg::{DEFAULT_RULE_PRIORITY, Family};

use super::facts::{RouteAnswer, RouteFact, RouteKind, RouteProbe};
use super::verdict::Line;

/// One lookup to ask: `ip route get DST [from SRC iif IIF] [mark MARK]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteQuery {
    /// The subnet it is about.
    pub subnet: IpNet,
    /// The destination.
    pub dst: IpAddr,
    /// The source and the interface it comes in on (a forwarded packet), if any.
    pub from: Option<(IpAddr, String)>,
    /// The packet's mark, if any.
    pub mark: Option<u32>,
}

impl RouteQuery {
    /// In `ip route get` words.
    pub fn text(&self) -> String {
        let ip = match Family::of(self.dst) {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip -6",
        };
        let mut s = format!("{ip} route get {}", self.dst);
        if let Some((src, iif)) = &self.from {
            s += &format!(" from {src} iif {iif}");
        }
        if let Some(mark) = self.mark {
            s += &format!(" mark {mark:#x}");
        }
        s
    }
}

/// The stand-in for a VM interface that is not here yet.
const LOOPBACK: &str = "lo";

/// Documentation addresses that stand for a client somewhere on the internet.
const CLIENTS: [&str; 4] = [
    "198.51.100.1",
    "192.0.2.1",
    "2001:db8::1",
    "2001:db8:ffff::1",
];

/// What to ask the kernel about the move's routes, with `links` the host's interfaces.
/// Role new: per subnet, a reply from a VM address (a configured one when there is one) to
/// a client, marked, coming in on a VM interface that is here. Before a VM has arrived,
/// `lo` stands in for its interface: the policy rules and tables answer the same, and the
/// reverse-path filter, which would refuse the VM's source on any other interface that has
/// no route back to it, does not apply there. Role old: per subnet, an address in it that
/// no configured VM holds.
pub fn queries(config: &Config, links: &[String]) -> Vec<RouteQuery> {
    let Some(m) = &config.migration else {
        return Vec::new();
    };
    let vm_addresses = || {
        config
            .vms
            .iter()
            .flat_map(|vm| vm.addresses.iter().copied())
    };
    m.subnets
        .iter()
        .filter_map(|&subnet| match m.role {
            Role::New => {
                let vm = vm_addresses()
                    .find(|a| subnet.contains(a))
                    .or_else(|| subnet.hosts().next())?;
                let iif = config
                    .vms
                    .iter()
                    .map(|vm| vm.vif.as_str())
                    .find(|vif| links.iter().any(|l| l == vif))
                    .unwrap_or(LOOPBACK);
                let client = CLIENTS
                    .iter()
                    .filter_map(|c| c.parse::<IpAddr>().ok())
                    .find(|c| {
                        Family::of(*c) == Family::of(vm) && !m.subnets.iter().any(|s| s.contains(c))
                    })?;
                Some(RouteQuery {
                    subnet,
                    dst: client,
                    from: Some((vm, iif.to_string())),
                    mark: Some(m.fwmark),
                })
            }
            Role::Old => {
                let held: Vec<IpAddr> = vm_addresses().collect();
                let dst = std::iter::once(subnet.network())
                    .chain(subnet.hosts())
                    .find(|a| !held.contains(a))?;
                Some(RouteQuery {
                    subnet,
                    dst,
                    from: None,
                    mark: None,
                })
            }
        })
        .collect()
}

fn show_answer(a: &RouteAnswer) -> String {
    let mut s = match a.kind {
        RouteKind::Unicast | RouteKind::Other => String::new(),
        kind => format!("{kind} "),
    };
    s += &match &a.dev {
        Some(dev) => format!("dev {dev}"),
        None => "no device".into(),
    };
    if let Some(t) = a.table {
        s += &format!(" table {t}");
    }
    s
}

/// The verdict on one lookup: it must leave through the tunnel.
pub fn route_line(m: &Migration, tun: &str, probe: &RouteProbe) -> Line {
    let (what, packet, fix) = match m.role {
        Role::New => (
            format!("reply route {}", probe.subnet),
            "a VM's marked reply",
            format!(
                "ip rule show: a rule before priority {} takes it (move that rule after it, or make it skip fwmark {:#x})",
                DEFAULT_RULE_PRIORITY, m.fwmark
            ),
        ),
        Role::Old => (
            format!("subnet route {}", probe.subnet),
            "a packet for a VM that has left",
            format!(
                "ip rule show and ip route get show what wins: a rule before priority {}, or a more specific route in main, takes the subnet away from the tunnel",
                DEFAULT_RULE_PRIORITY - crate::netcfg::RULES_BEFORE_MARK
            ),
        ),
    };
    match &probe.answer {
        Ok(a) if a.kind == RouteKind::Unicast && a.dev.as_deref() == Some(tun) => Line::ok(
            what,
            format!(
                "{packet} goes through {tun}: {} -> {}",
                probe.query,
                show_answer(a)
            ),
        ),
        Ok(a) => Line::fail(
            what,
            format!(
                "{packet} does not go through {tun}: {} -> {}",
                probe.query,
                show_answer(a)
            ),
            fix,
        ),
        Err(e) => Line::fail(
            what,
            format!("{packet} has no route: {} -> {e}", probe.query),
            fix,
        ),
    }
}

/// The host's own route for a subnet in the main table (the provider routes the subnet to
/// the host, which often holds a `blackhole` or `unreachable` for it). Not a problem: a
/// route that refuses the subnet is set aside while vmtun runs and put back on exit; any
/// other is passed over by vmtun's rules for the subnet.
pub fn main_route_line(route: &RouteFact) -> Line {
    let kind = match route.kind {
        RouteKind::Unicast | RouteKind::Other => String::new(),
        kind => format!("{kind} "),
    };
    let dev = route
        .dev
        .as_ref()
        .map(|d| format!(" dev {d}"))
        .unwrap_or_default();
    let what = match route.kind {
        RouteKind::Unicast | RouteKind::Other => {
            "vmtun's rules pass it over for the subnet while vmtun runs"
        }
        _ => {
            "vmtun sets it aside while it runs (its own rules refuse unused addresses meanwhile) and puts it back on exit"
        }
    };
    Line::ok(
        format!("main table {}", route.dest),
        format!(
            "the host's own route '{kind}{}{dev}' is there: {what}",
            route.dest
        ),
    )
}
