//! The host changes vmtun makes, as plain values: what `--dry-run` prints, what the journal
//! records in its state file, and what the OS edge applies and reverts.
//!
//! Nothing here touches the kernel. Each [`Change`] knows how to print itself (as the `ip`,
//! `sysctl` or `nft` command an operator would type), how to print its inverse, and how to
//! name itself in an error message.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A routing table number (`ip route ... table N`), kept apart from marks and priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TableId(pub u32);

impl TableId {
    /// The main table (`RT_TABLE_MAIN` in `linux/rtnetlink.h`), where routes go by default.
    pub const MAIN: TableId = TableId(254);
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == TableId::MAIN {
            f.write_str("main")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// A packet mark (`skb->mark`), set by vmtun's nft rule and matched by its policy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FwMark(pub u32);

impl fmt::Display for FwMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `ip rule` and `nft` both print marks in hex.
        write!(f, "{:#x}", self.0)
    }
}

/// An address family, for what exists once per family: policy rules, nftables tables and
/// the sysctls that turn forwarding on. IPv4 is the default, so state files written before
/// vmtun knew IPv6 read as they were meant.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    #[default]
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The families of `nets`, each once, IPv4 first.
    pub fn all_of<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Vec<Family> {
        let mut out: Vec<Family> = nets.into_iter().map(|n| Family::of(n.addr())).collect();
        out.sort();
        out.dedup();
        out
    }

    /// The nftables family keyword (`ip`, `ip6`): vmtun keeps one table per family.
    pub fn nft(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    /// The sysctl that makes the host forward this family between interfaces.
    pub fn forwarding(self) -> SysctlKey {
        match self {
            Family::Ipv4 => SysctlKey("net/ipv4/ip_forward".into()),
            Family::Ipv6 => SysctlKey("net/ipv6/conf/all/forwarding".into()),
        }
    }

    /// The route covering every address of the family (`0.0.0.0/0`, `::/0`).
    pub fn everything(self) -> IpNet {
        match self {
            Family::Ipv4 => IpNet::V4(Default::default()),
            Family::Ipv6 => IpNet::V6(Default::default()),
        }
    }

    /// The bytes of an IP header and a TCP header without options: the MTU less this is
    /// the largest MSS that fits.
    pub fn ip_tcp_headers(self) -> u32 {
        match self {
            Family::Ipv4 => 40,
            Family::Ipv6 => 60,
        }
    }

    /// `ip`'s option for the family (`-6`), empty for IPv4 as `ip` assumes it.
    pub(crate) fn ip_option(self) -> &'static str {
        match self {
            Family::Ipv4 => "",
            Family::Ipv6 => "-6 ",
        }
    }
}

/// A sysctl, stored as its path below `/proc/sys` (`net/ipv4/conf/vmtun0/rp_filter`), so an
/// interface name containing a dot stays unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SysctlKey(String);

impl SysctlKey {
    /// A per-interface IPv4 setting, `net.ipv4.conf.IFACE.NAME`.
    pub fn ipv4_conf(iface: &str, name: &str) -> Self {
        SysctlKey(format!("net/ipv4/conf/{iface}/{name}"))
    }

    /// A per-interface IPv6 setting, `net.ipv6.conf.IFACE.NAME`.
    pub fn ipv6_conf(iface: &str, name: &str) -> Self {
        SysctlKey(format!("net/ipv6/conf/{iface}/{name}"))
    }

    /// A per-interface IPv4 neighbour (ARP) setting, `net.ipv4.neigh.IFACE.NAME`.
    pub fn ipv4_neigh(iface: &str, name: &str) -> Self {
        SysctlKey(format!("net/ipv4/neigh/{iface}/{name}"))
    }

    /// A per-interface IPv6 neighbour (NDP) setting, `net.ipv6.neigh.IFACE.NAME`.
    pub fn ipv6_neigh(iface: &str, name: &str) -> Self {
        SysctlKey(format!("net/ipv6/neigh/{iface}/{name}"))
    }

    /// The interface of a per-interface key (`net.ipv4.conf.IFACE.NAME`, `neigh`, or ipv6),
    /// so a missing file can be reported as a missing interface.
    pub fn interface(&self) -> Option<&str> {
        let rest = (self.0.strip_prefix("net/ipv4/conf/"))
            .or_else(|| self.0.strip_prefix("net/ipv4/neigh/"))
            .or_else(|| self.0.strip_prefix("net/ipv6/conf/"))
            .or_else(|| self.0.strip_prefix("net/ipv6/neigh/"))?;
        let (iface, _) = rest.rsplit_once('/')?;
        Some(iface).filter(|i| !matches!(*i, "all" | "default"))
    }

    /// The path relative to `/proc/sys`.
    pub fn path(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SysctlKey {
    /// Prints the key as sysctl(8) does: slashes become dots and dots become slashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dotted: String = self
            .0
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect();
        f.write_str(&dotted)
    }
}

/// A route vmtun adds (and deletes on undo).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix; `0.0.0.0/0` for a default route.
    pub dest: IpNet,
    /// Next hop; `None` for a route straight onto the link (`scope link`).
    pub via: Option<IpAddr>,
    /// Output interface.
    pub dev: String,
    /// Routing table.
    pub table: TableId,
}

/// A policy rule `[iif DEV] [to PREFIX] [fwmark M] lookup T|unreachable
/// [suppress_prefixlength N] priority P`, in one family's rule list. The selectors and the
/// suppression are optional so that state files written when vmtun's only rule was
/// `fwmark M lookup T` read as they were meant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Which family's rules (IPv4 in state files from before IPv6).
    #[serde(default)]
    pub family: Family,
    /// Only packets that arrived on this interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    /// Only packets to this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<IpNet>,
    /// Only packets with this mark (full 32-bit mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<FwMark>,
    /// The table to look up; `None` refuses the packet (`unreachable`: the sender gets an
    /// ICMP destination unreachable).
    pub table: Option<TableId>,
    /// Ignore what the table finds if its prefix is this long or shorter (`0`: its default
    /// routes), so that the lookup goes on with the next rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_prefixlength: Option<u8>,
    /// Rule priority (lower runs first; main is 32766).
    pub priority: u32,
}

impl Rule {
    /// A rule of `family` at `priority` that looks up `table` (`None`: refuses) for every
    /// packet; the selectors below narrow it.
    pub fn new(family: Family, priority: u32, table: Option<TableId>) -> Self {
        Self {
            family,
            iif: None,
            to: None,
            fwmark: None,
            table,
            suppress_prefixlength: None,
            priority,
        }
    }

    /// Only packets to `net`.
    pub fn to(self, net: IpNet) -> Self {
        Self {
            to: Some(net),
            ..self
        }
    }

    /// Only packets arriving on `dev`.
    pub fn iif(self, dev: &str) -> Self {
        Self {
            iif: Some(dev.into()),
            ..self
        }
    }

    /// Only packets marked `mark`.
    pub fn fwmark(self, mark: FwMark) -> Self {
        Self {
            fwmark: Some(mark),
            ..self
        }
    }

    /// Ignores routes of prefix length `len` or shorter.
    pub fn suppress_prefixlength(self, len: u8) -> Self {
        Self {
            suppress_prefixlength: Some(len),
            ..self
        }
    }
}

/// A route that refuses packets, as the host had it (see [`Change::SetAside`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefusingRoute {
    /// How it refuses.
    pub kind: Refusal,
    /// Its metric, when it had one.
    pub metric: Option<u32>,
    /// Who added it (`proto`: 3 boot, 4 static...), so that it comes back the same.
    pub protocol: u8,
}

/// How a route refuses packets (`ip route` route types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Dropped silently.
    Blackhole,
    /// ICMP destination unreachable.
    Unreachable,
    /// ICMP administratively prohibited.
    Prohibit,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Blackhole => "blackhole",
            Refusal::Unreachable => "unreachable",
            Refusal::Prohibit => "prohibit",
        })
    }
}

/// `ip [-6] route del|add` of each of `routes` for `dest`, joined with `; `.
fn refusing_routes(verb: &str, dest: &IpNet, routes: &[RefusingRoute]) -> String {
    let ip = Family::of(dest.addr()).ip_option();
    routes
        .iter()
        .map(|r| {
            let metric = r.metric.map(|m| format!(" metric {m}")).unwrap_or_default();
            format!("ip {ip}route {verb} {} {dest}{metric}", r.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An element of one of vmtun's sets: an address (the cutover sets) or a MAC (the uplink
/// gateways').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Element {
    /// An IPv4 or IPv6 address.
    Addr(IpAddr),
    /// An Ethernet address.
    Mac([u8; 6]),
}

impl Element {
    /// The element's key as the kernel holds it (network byte order).
    pub fn key(&self) -> Vec<u8> {
        match self {
            Element::Addr(IpAddr::V4(a)) => a.octets().to_vec(),
            Element::Addr(IpAddr::V6(a)) => a.octets().to_vec(),
            Element::Mac(m) => m.to_vec(),
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Addr(a) => write!(f, "{a}"),
            Element::Mac(m) => {
                let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
                f.write_str(&hex.join(":"))
            }
        }
    }
}

/// A sysctl write, with the value it replaced so that undo restores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sysctl {
    /// Which sysctl.
    pub key: SysctlKey,
    /// The value vmtun writes.
    pub value: String,
    /// The value read just before writing; `None` until the journal captured it.
    pub previous: Option<String>,
}

/// What an nft rule of vmtun's does; every rule also carries a comment naming it, by which
/// vmtun finds it again (rule handles are not known before the kernel assigns them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum NftRuleKind {
    /// `iifname "vif*" ip saddr NET [ip saddr & MASK != @SET] counter meta mark set M`:
    /// VM replies leave through the tunnel until the cutover.
    Mark {
        /// Interface name prefix of the VM interfaces.
        vif_prefix: String,
        /// The VM subnet whose sources are marked.
        subnet: IpNet,
        /// The mark the policy rule matches.
        fwmark: FwMark,
        /// The cutover set: while it holds the subnet, the rule no longer marks.
        skip_set: Option<String>,
    },
    /// `iifname "vif*" ip saddr NET ip saddr & MASK == @SET counter meta mark set M` (role
    /// old): once the new host has reported the provider's switch of the subnet (its
    /// address in the set), the traffic of VMs still on this host leaves through the tunnel,
    /// since the provider no longer accepts the subnet from here.
    SwitchedMark {
        /// Interface name prefix of the VM interfaces.
        vif_prefix: String,
        /// The VM subnet whose sources are marked.
        subnet: IpNet,
        /// The mark the policy rule matches.
        fwmark: FwMark,
        /// The set of switched subnets.
        set: String,
    },
    /// `meta pkttype host iifname "IFACE" ether saddr @GATEWAYS ip daddr NET fib saddr . iif
    /// oif exists counter add @SET { ip daddr & MASK }` (the element is the subnet's network
    /// address): the first packet for the subnet arriving natively from the provider flips
    /// the cutover inside the kernel. Only the provider: the frame comes from an uplink
    /// gateway's MAC, and the route back to its source leaves through the interface it came
    /// in on (strict reverse path), the same conditions the watcher applies. One rule per
    /// native interface and subnet.
    Native {
        /// The interface native traffic arrives on (the bridge, or another uplink).
        #[serde(rename = "bridge")]
        iface: String,
        /// The VM subnet.
        subnet: IpNet,
        /// The cutover set the subnet is added to; none: the rule only counts, and the
        /// kernel does not flip (`[migration] cutover_hold_ms`: the watcher removes the mark
        /// rule after the hold).
        set: Option<String>,
        /// The set of the gateways' MACs (state files from before it have none: no MAC or
        /// reverse-path condition).
        #[serde(default)]
        gateways: Option<String>,
    },
    /// `iifname|oifname "TUN" tcp flags syn / syn,rst tcp option maxseg size > MSS
    /// counter tcp option maxseg size set MSS`: a TCP handshake crossing the tunnel agrees on
    /// segments that fit its MTU, so full-size traffic needs no ICMP (which many paths
    /// filter) to find the tunnel's smaller MTU.
    ClampMss {
        /// The tunnel device.
        tun: String,
        /// Whether the SYNs go into the tunnel or come out of it.
        direction: Direction,
        /// The largest MSS let through: the tunnel MTU less the IP and TCP headers.
        mss: u16,
    },
}

/// Which way traffic crosses the tunnel device, for rules that match either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Routed into the tunnel (`oifname`).
    Into,
    /// Arrived from the tunnel (`iifname`).
    OutOf,
}

impl NftRuleKind {
    /// The rule's comment, unique per kind and subnet within vmtun's table.
    pub fn comment(&self) -> String {
        match self {
            NftRuleKind::Mark { subnet, .. } => format!("vmtun mark {subnet}"),
            NftRuleKind::SwitchedMark { subnet, .. } => format!("vmtun switched {subnet}"),
            NftRuleKind::Native {
                subnet,
                iface,
                gateways: Some(_),
                ..
            } => format!("vmtun native {subnet} on {iface}"),
            NftRuleKind::Native { subnet, .. } => format!("vmtun native {subnet}"),
            NftRuleKind::ClampMss { direction, .. } => match direction {
                Direction::Into => "vmtun mss into tunnel".into(),
                Direction::OutOf => "vmtun mss out of tunnel".into(),
            },
        }
    }
}

/// One host change vmtun makes. Applying a plan means applying these in order; undo reverts
/// them in reverse order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// `ip addr add ADDR dev DEV` (the kernel adds the connected route with it).
    Address {
        /// Interface.
        dev: String,
        /// Address with prefix length.
        addr: IpNet,
    },
    /// `ip link set dev DEV mtu MTU`, restoring the previous MTU on undo.
    Mtu {
        /// Interface.
        dev: String,
        /// New MTU.
        mtu: u32,
        /// MTU before the change, captured when applied.
        previous: Option<u32>,
    },
    /// `ip link set dev DEV up`; undo sets it down again only if it was down.
    LinkUp {
        /// Interface.
        dev: String,
        /// Whether it was up before, captured when applied.
        was_up: Option<bool>,
    },
    /// `ip route add ...`.
    Route(Route),
    /// `ip rule add fwmark M lookup T priority P`.
    Rule(Rule),
    /// `sysctl -w KEY=VALUE`.
    Sysctl(Sysctl),
    /// The host's own routes that refuse a VM subnet (`blackhole`, `unreachable` or
    /// `prohibit`, for exactly the subnet, in `main`), taken out while vmtun runs and put
    /// back on exit. Such a route ends the kernel's rule walk for the subnet before vmtun's
    /// rules could send the addresses of moved VMs into the tunnel; meanwhile vmtun's loop
    /// guard does its job (unused addresses do not go round).
    SetAside {
        /// The subnet.
        dest: IpNet,
        /// What was found and taken out (`None` until applied; empty: nothing was there).
        found: Option<Vec<RefusingRoute>>,
    },
    /// `nft add table ip|ip6 NAME`: vmtun's own table, one per family; created exclusively,
    /// so it never adopts a table it did not make.
    NftTable {
        /// Table family (IPv4 in state files from before IPv6).
        #[serde(default)]
        family: Family,
        /// Table name.
        name: String,
    },
    /// A base chain in vmtun's table, `type filter hook HOOK priority mangle`.
    NftChain {
        /// Table family.
        #[serde(default)]
        family: Family,
        /// Table name.
        table: String,
        /// Chain name.
        name: String,
        /// Where it hooks (state files from before the forward chain have no such field:
        /// their one chain hooked prerouting).
        #[serde(default)]
        hook: NftHook,
    },
    /// A set in vmtun's table: addresses of the table's family that rules fill from the
    /// packet path (`flags dynamic`), or MACs that vmtun fills.
    NftSet {
        /// Table family.
        #[serde(default)]
        family: Family,
        /// Table name.
        table: String,
        /// Set name.
        name: String,
        /// What it holds (state files from before MAC sets: addresses).
        #[serde(default)]
        key: SetKey,
    },
    /// An element of one of vmtun's sets: a subnet's network address in the cutover set
    /// once the subnet has cut over. The kernel adds it on the first native packet; vmtun
    /// records it then, and adds it itself when it puts its table back or starts again
    /// after a remembered cutover.
    NftSetElement {
        /// Table family.
        #[serde(default)]
        family: Family,
        /// Table name.
        table: String,
        /// Set name.
        set: String,
        /// The element.
        #[serde(alias = "addr")]
        element: Element,
    },
    /// A rule in vmtun's chain.
    NftRule {
        /// Table family.
        #[serde(default)]
        family: Family,
        /// Table name.
        table: String,
        /// Chain name.
        chain: String,
        /// What the rule does.
        rule: NftRuleKind,
    },
}

/// What one of vmtun's nftables sets holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKey {
    /// Addresses of the table's family, added from the packet path (`flags dynamic`).
    #[default]
    DynamicAddress,
    /// Ethernet addresses (`ether_addr`), added by vmtun.
    EtherAddr,
}

/// The netfilter hook of one of vmtun's base chains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NftHook {
    /// Before routing: marking VM replies, noticing native packets.
    #[default]
    Prerouting,
    /// Routed traffic: clamping the MSS of what crosses the tunnel.
    Forward,
}

impl fmt::Display for NftHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NftHook::Prerouting => "prerouting",
            NftHook::Forward => "forward",
        })
    }
}

/// Which way a change is being carried out, so an error can say "adding" or "removing".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Making the change.
    Apply,
    /// Undoing it.
    Revert,
}

/// The priority of nft's `mangle` hook priority name (`NF_IP_PRI_MANGLE`, linux/netfilter_ipv4.h).
pub const NF_IP_PRI_MANGLE: i32 = -150;

impl Change {
    /// Names the change with a verb, for error messages:
    /// `adding route 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201`.
    pub fn describe(&self, action: Action) -> String {
        let apply = action == Action::Apply;
        let (add, del) = ("adding", "removing");
        let verb = if apply { add } else { del };
        match self {
            Change::Address { dev, addr } => format!("{verb} address {addr} on {dev}"),
            Change::Mtu { dev, mtu, previous } => match (apply, previous) {
                (true, _) => format!("setting mtu {mtu} on {dev}"),
                (false, Some(p)) => format!("restoring mtu {p} on {dev}"),
                (false, None) => format!("restoring mtu on {dev}"),
            },
            Change::LinkUp { dev, .. } => {
                if apply {
                    format!("setting link {dev} up")
                } else {
                    format!("setting link {dev} down")
                }
            }
            Change::Route(r) => {
                let family = Family::of(r.dest.addr());
                format!("{verb} {}route {}", family.ip_option(), RouteSpec(r))
            }
            Change::Rule(r) => format!("{verb} {}rule {}", r.family.ip_option(), RuleSpec(r)),
            Change::Sysctl(s) => match (apply, &s.previous) {
                (true, _) => format!("setting sysctl {}={}", s.key, s.value),
                (false, Some(p)) => format!("restoring sysctl {}={p}", s.key),
                (false, None) => format!("restoring sysctl {}", s.key),
            },
            Change::SetAside { dest, .. } => {
                if apply {
                    format!("setting aside the host's refusing route for {dest}")
                } else {
                    format!("putting back the host's refusing route for {dest}")
                }
            }
            Change::NftTable { family, name } => {
                format!("{verb} nft table {} {name}", family.nft())
            }
            Change::NftChain {
                family,
                table,
                name,
                ..
            } => format!("{verb} nft chain {} {table} {name}", family.nft()),
            Change::NftSet {
                family,
                table,
                name,
                ..
            } => format!("{verb} nft set {} {table} {name}", family.nft()),
            Change::NftSetElement {
                family,
                table,
                set,
                element,
            } => {
                let to = if apply { "to" } else { "from" };
                format!(
                    "{verb} nft element {element} {to} set {} {table} {set}",
                    family.nft()
                )
            }
            Change::NftRule {
                family,
                table,
                chain,
                rule,
            } => format!(
                "{verb} nft rule {} {table} {chain} (comment \"{}\")",
                family.nft(),
                rule.comment()
            ),
        }
    }

    /// Whether reverting it leaves the host as it is: nothing was set aside, the link was up
    /// already, or no previous value was captured. Undo counts these apart from what it
    /// really put back.
    pub fn undoes_nothing(&self) -> bool {
        match self {
            Change::SetAside { found, .. } => found.as_ref().is_none_or(Vec::is_empty),
            Change::LinkUp { was_up, .. } => *was_up == Some(true),
            Change::Mtu { previous, .. } => previous.is_none(),
            Change::Sysctl(s) => s.previous.is_none(),
            _ => false,
        }
    }

    /// The command that undoes this change, for `--dry-run` and logs.
    pub fn inverse(&self) -> Inverse<'_> {
        Inverse(self)
    }
}

/// `route` printed as `ip route` prints it, table omitted when main.
struct RouteSpec<'a>(&'a Route);

impl fmt::Display for RouteSpec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if r.dest.prefix_len() == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", r.dest)?;
        }
        if let Some(via) = r.via {
            write!(f, " via {via}")?;
        }
        write!(f, " dev {}", r.dev)?;
        if r.table != TableId::MAIN {
            write!(f, " table {}", r.table)?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    /// The rule as `ip rule` takes it, after `add` or `del`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        RuleSpec(self).fmt(f)
    }
}

struct RuleSpec<'a>(&'a Rule);

impl fmt::Display for RuleSpec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if let Some(dev) = &r.iif {
            write!(f, "iif {dev} ")?;
        }
        if let Some(to) = &r.to {
            write!(f, "to {to} ")?;
        }
        if let Some(mark) = r.fwmark {
            write!(f, "fwmark {mark} ")?;
        }
        match r.table {
            Some(table) => write!(f, "lookup {table} ")?,
            None => f.write_str("unreachable ")?,
        }
        if let Some(len) = r.suppress_prefixlength {
            write!(f, "suppress_prefixlength {len} ")?;
        }
        write!(f, "priority {}", r.priority)
    }
}

/// The payload keyword nft matches a subnet's addresses with (`ip`, `ip6`).
fn header_of(net: &IpNet) -> &'static str {
    Family::of(net.addr()).nft()
}

impl fmt::Display for NftRuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftRuleKind::Mark {
                vif_prefix,
                subnet,
                fwmark,
                skip_set,
            } => {
                let ip = header_of(subnet);
                write!(f, "iifname \"{vif_prefix}*\" {ip} saddr {subnet}")?;
                if let Some(set) = skip_set {
                    let mask = subnet.netmask();
                    write!(f, " {ip} saddr & {mask} != @{set}")?;
                }
                write!(f, " counter meta mark set {fwmark}")?;
            }
            NftRuleKind::SwitchedMark {
                vif_prefix,
                subnet,
                fwmark,
                set,
            } => {
                let (ip, mask) = (header_of(subnet), subnet.netmask());
                write!(
                    f,
                    "iifname \"{vif_prefix}*\" {ip} saddr {subnet} {ip} saddr & {mask} == @{set} counter meta mark set {fwmark}"
                )?;
            }
            NftRuleKind::Native {
                iface,
                subnet,
                set,
                gateways,
            } => {
                let (ip, mask) = (header_of(subnet), subnet.netmask());
                write!(f, "meta pkttype host iifname \"{iface}\" ")?;
                if let Some(gateways) = gateways {
                    write!(f, "ether saddr @{gateways} ")?;
                }
                write!(f, "{ip} daddr {subnet} ")?;
                if gateways.is_some() {
                    write!(f, "fib saddr . iif oif exists ")?;
                }
                f.write_str("counter")?;
                if let Some(set) = set {
                    write!(f, " add @{set} {{ {ip} daddr & {mask} }}")?;
                }
            }
            NftRuleKind::ClampMss {
                tun,
                direction,
                mss,
            } => {
                let dir = match direction {
                    Direction::Into => "oifname",
                    Direction::OutOf => "iifname",
                };
                write!(
                    f,
                    "{dir} \"{tun}\" tcp flags syn / syn,rst tcp option maxseg size > {mss} counter tcp option maxseg size set {mss}"
                )?;
            }
        }
        write!(f, " comment \"{}\"", self.comment())
    }
}

impl fmt::Display for Change {
    /// The change as the command an operator would type for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Address { dev, addr } => write!(f, "ip addr add {addr} dev {dev}"),
            Change::Mtu { dev, mtu, .. } => write!(f, "ip link set dev {dev} mtu {mtu}"),
            Change::LinkUp { dev, .. } => write!(f, "ip link set dev {dev} up"),
            Change::Route(r) => write!(
                f,
                "ip {}route add {}",
                Family::of(r.dest.addr()).ip_option(),
                RouteSpec(r)
            ),
            Change::Rule(r) => write!(f, "ip {}rule add {}", r.family.ip_option(), RuleSpec(r)),
            Change::Sysctl(s) => {
                write!(f, "sysctl -w {}={}", s.key, s.value)?;
                if let Some(p) = &s.previous {
                    write!(f, "  # was {p}")?;
                }
                Ok(())
            }
            Change::SetAside { dest, found } => match found {
                Some(routes) if !routes.is_empty() => write!(
                    f,
                    "{}  # the host's; put back on exit",
                    refusing_routes("del", dest, routes)
                ),
                Some(_) => write!(
                    f,
                    "# no blackhole/unreachable/prohibit route for {dest} to set aside"
                ),
                None => write!(
                    f,
                    "# the host's blackhole/unreachable/prohibit route for {dest}, if any, is set aside until exit"
                ),
            },
            Change::NftTable { family, name } => {
                write!(f, "nft add table {} {name}", family.nft())
            }
            Change::NftChain {
                family,
                table,
                name,
                hook,
            } => write!(
                f,
                "nft add chain {} {table} {name} '{{ type filter hook {hook} priority mangle; policy accept; }}'",
                family.nft()
            ),
            Change::NftSet {
                family,
                table,
                name,
                key,
            } => {
                let spec = match (key, family) {
                    (SetKey::DynamicAddress, Family::Ipv4) => "type ipv4_addr; flags dynamic;",
                    (SetKey::DynamicAddress, Family::Ipv6) => "type ipv6_addr; flags dynamic;",
                    (SetKey::EtherAddr, _) => "type ether_addr;",
                };
                write!(
                    f,
                    "nft add set {} {table} {name} '{{ {spec} }}'",
                    family.nft()
                )
            }
            Change::NftSetElement {
                family,
                table,
                set,
                element,
            } => write!(
                f,
                "nft add element {} {table} {set} {{ {element} }}",
                family.nft()
            ),
            Change::NftRule {
                family,
                table,
                chain,
                rule,
            } => write!(f, "nft add rule {} {table} {chain} {rule}", family.nft()),
        }
    }
}

/// Prints the command that undoes a [`Change`]; see [`Change::inverse`].
pub struct Inverse<'a>(&'a Change);

impl fmt::Display for Inverse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Change::Address { dev, addr } => write!(f, "ip addr del {addr} dev {dev}"),
            Change::Mtu {
                dev,
                previous: Some(p),
                ..
            } => write!(f, "ip link set dev {dev} mtu {p}"),
            Change::Mtu { dev, .. } => write!(f, "ip link set dev {dev} mtu <previous>"),
            Change::LinkUp {
                dev,
                was_up: Some(true),
            } => write!(f, "# nothing: {dev} was up already"),
            Change::LinkUp { dev, .. } => write!(f, "ip link set dev {dev} down"),
            Change::Route(r) => write!(
                f,
                "ip {}route del {}",
                Family::of(r.dest.addr()).ip_option(),
                RouteSpec(r)
            ),
            Change::Rule(r) => write!(f, "ip {}rule del {}", r.family.ip_option(), RuleSpec(r)),
            Change::Sysctl(s) => match &s.previous {
                Some(p) => write!(f, "sysctl -w {}={p}", s.key),
                None => write!(f, "sysctl -w {}=<previous>", s.key),
            },
            Change::SetAside { dest, found } => match found {
                Some(routes) if !routes.is_empty() => {
                    f.write_str(&refusing_routes("add", dest, routes))
                }
                Some(_) => write!(f, "# nothing to put back for {dest}"),
                None => write!(
                    f,
                    "# the host's refusing route for {dest}, if any, is put back"
                ),
            },
            Change::NftTable { family, name } => {
                write!(f, "nft delete table {} {name}", family.nft())
            }
            Change::NftChain {
                family,
                table,
                name,
                ..
            } => write!(f, "nft delete chain {} {table} {name}", family.nft()),
            Change::NftSet {
                family,
                table,
                name,
                ..
            } => write!(f, "nft delete set {} {table} {name}", family.nft()),
            Change::NftSetElement {
                family,
                table,
                set,
                element,
            } => write!(
                f,
                "nft delete element {} {table} {set} {{ {element} }}",
                family.nft()
            ),
            Change::NftRule {
                family,
                table,
                chain,
                rule,
            } => write!(
                f,
                "nft delete rule {} {table} {chain} handle <handle of comment \"{}\">",
                family.nft(),
                rule.comment()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Change {
        Change::Route(Route {
            dest: "203.0.113.0/29".parse().unwrap(),
            via: Some("100.64.0.2".parse().unwrap()),
            dev: "vmtun0".into(),
            table: TableId(201),
        })
    }

    #[test]
    fn route_prints_like_ip() {
        assert_eq!(
            route().to_string(),
            "ip route add 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201"
        );
        assert_eq!(
            route().inverse().to_string(),
            "ip route del 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201"
        );
        assert_eq!(
            route().describe(Action::Apply),
            "adding route 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201"
        );
    }

    #[test]
    fn sysctl_key_prints_like_sysctl() {
        let k = SysctlKey::ipv4_conf("eth0.100", "rp_filter");
        assert_eq!(k.path(), "net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(k.to_string(), "net.ipv4.conf.eth0/100.rp_filter");
        assert_eq!(k.interface(), Some("eth0.100"));
        assert_eq!(SysctlKey::ipv4_conf("all", "rp_filter").interface(), None);
        assert_eq!(Family::Ipv4.forwarding().interface(), None);
        assert_eq!(Family::Ipv6.forwarding().interface(), None);
        assert_eq!(
            SysctlKey::ipv6_conf("vif0", "proxy_ndp").interface(),
            Some("vif0")
        );
    }

    #[test]
    fn mark_rule_prints_like_nft() {
        let c = Change::NftRule {
            family: Family::Ipv4,
            table: "vmtun".into(),
            chain: "prerouting".into(),
            rule: NftRuleKind::Mark {
                vif_prefix: "vif".into(),
                subnet: "203.0.113.0/29".parse().unwrap(),
                fwmark: FwMark(1),
                skip_set: Some("native".into()),
            },
        };
        assert_eq!(
            c.to_string(),
            "nft add rule ip vmtun prerouting iifname \"vif*\" ip saddr 203.0.113.0/29 \
             ip saddr & 255.255.255.248 != @native counter meta mark set 0x1 \
             comment \"vmtun mark 203.0.113.0/29\""
        );
    }

    #[test]
    fn change_round_trips_through_json() {
        let c = Change::Sysctl(Sysctl {
            key: SysctlKey::ipv4_conf("br0", "rp_filter"),
            value: "2".into(),
            previous: Some("1".into()),
        });
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Change>(&s).unwrap(), c);
    }

    #[test]
    fn a_set_aside_route_prints_as_taken_out_and_put_back() {
        let aside = Change::SetAside {
            dest: "203.0.113.0/29".parse().unwrap(),
            found: Some(vec![
                RefusingRoute {
                    kind: Refusal::Blackhole,
                    metric: None,
                    protocol: 3,
                },
                RefusingRoute {
                    kind: Refusal::Unreachable,
                    metric: Some(5),
                    protocol: 4,
                },
            ]),
        };
        assert_eq!(
            aside.to_string(),
            "ip route del blackhole 203.0.113.0/29; ip route del unreachable 203.0.113.0/29 \
             metric 5  # the host's; put back on exit"
        );
        assert_eq!(
            aside.inverse().to_string(),
            "ip route add blackhole 203.0.113.0/29; ip route add unreachable 203.0.113.0/29 metric 5"
        );
        let s = serde_json::to_string(&aside).unwrap();
        assert_eq!(serde_json::from_str::<Change>(&s).unwrap(), aside);
    }

    #[test]
    fn a_native_rule_from_before_the_gateway_condition_reads_as_it_was() {
        let old: Change = serde_json::from_str(
            r#"{"kind":"nft_rule","family":"ipv4","table":"vmtun","chain":"prerouting",
                "rule":{"rule":"native","bridge":"br0","subnet":"203.0.113.0/29","set":"native"}}"#,
        )
        .unwrap();
        assert_eq!(
            old.to_string(),
            "nft add rule ip vmtun prerouting meta pkttype host iifname \"br0\" \
             ip daddr 203.0.113.0/29 counter add @native { ip daddr & 255.255.255.248 } \
             comment \"vmtun native 203.0.113.0/29\""
        );
        let set: Change = serde_json::from_str(
            r#"{"kind":"nft_set","family":"ipv4","table":"vmtun","name":"native"}"#,
        )
        .unwrap();
        assert_eq!(
            set.to_string(),
            "nft add set ip vmtun native '{ type ipv4_addr; flags dynamic; }'"
        );
    }

    #[test]
    fn state_from_before_ipv6_reads_as_ipv4() {
        let table: Change = serde_json::from_str(r#"{"kind":"nft_table","name":"vmtun"}"#).unwrap();
        assert_eq!(table.to_string(), "nft add table ip vmtun");
        let rule: Change =
            serde_json::from_str(r#"{"kind":"rule","fwmark":1,"table":201,"priority":10000}"#)
                .unwrap();
        assert_eq!(
            rule.to_string(),
            "ip rule add fwmark 0x1 lookup 201 priority 10000"
        );
    }

    #[test]
    fn ipv6_changes_print_like_ip_and_nft() {
        let route = Change::Route(Route {
            dest: "::/0".parse().unwrap(),
            via: None,
            dev: "vmtun0".into(),
            table: TableId(201),
        });
        assert_eq!(
            route.to_string(),
            "ip -6 route add default dev vmtun0 table 201"
        );
        assert_eq!(
            route.describe(Action::Revert),
            "removing -6 route default dev vmtun0 table 201"
        );
        let rule =
            Change::Rule(Rule::new(Family::Ipv6, 10_000, Some(TableId(201))).fwmark(FwMark(1)));
        assert_eq!(
            rule.inverse().to_string(),
            "ip -6 rule del fwmark 0x1 lookup 201 priority 10000"
        );
        let native = Change::NftRule {
            family: Family::Ipv6,
            table: "vmtun".into(),
            chain: "prerouting".into(),
            rule: NftRuleKind::Native {
                iface: "br0".into(),
                subnet: "2001:db8:1::/64".parse().unwrap(),
                set: Some("native".into()),
                gateways: Some("gateways".into()),
            },
        };
        assert_eq!(
            native.to_string(),
            "nft add rule ip6 vmtun prerouting meta pkttype host iifname \"br0\" \
             ether saddr @gateways ip6 daddr 2001:db8:1::/64 fib saddr . iif oif exists \
             counter add @native { ip6 daddr & ffff:ffff:ffff:ffff:: } \
             comment \"vmtun native 2001:db8:1::/64 on br0\""
        );
        let set = Change::NftSet {
            family: Family::Ipv6,
            table: "vmtun".into(),
            name: "native".into(),
            key: SetKey::DynamicAddress,
        };
        assert_eq!(
            set.to_string(),
            "nft add set ip6 vmtun native '{ type ipv6_addr; flags dynamic; }'"
        );
        let gateways = Change::NftSet {
            family: Family::Ipv6,
            table: "vmtun".into(),
            name: "gateways".into(),
            key: SetKey::EtherAddr,
        };
        assert_eq!(
            gateways.to_string(),
            "nft add set ip6 vmtun gateways '{ type ether_addr; }'"
        );
    }
}
