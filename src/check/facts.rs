//! What the checks look at, as plain values: gathered from the host by [`super::gather`]
//! (the only part that does I/O) and judged by [`super::evaluate`] (pure, unit-tested).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::control::Status;
use crate::netcfg::{Change, Family};

use super::ruleset::Ruleset;

/// A policy rule found on the host (`ip rule`), reduced to what can clash with vmtun's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFact {
    /// `ip rule` or `ip -6 rule`.
    pub family: Family,
    /// Its priority.
    pub priority: u32,
    /// The mark it matches, if any.
    pub fwmark: Option<u32>,
    /// The table it looks up, if any.
    pub table: Option<u32>,
}

/// A route's type (`rtm_type`), as `ip route` prints it before the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A route that forwards (`ip route` prints no type).
    Unicast,
    /// `blackhole`: dropped silently.
    Blackhole,
    /// `unreachable`: dropped with ICMP host unreachable.
    Unreachable,
    /// `prohibit`: dropped with ICMP administratively prohibited.
    Prohibit,
    /// Another type (local, broadcast...).
    Other,
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unicast => "unicast",
            Self::Blackhole => "blackhole",
            Self::Unreachable => "unreachable",
            Self::Prohibit => "prohibit",
            Self::Other => "other",
        })
    }
}

/// A route found in the migration's routing table, or the main table's route for a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFact {
    /// Its destination prefix.
    pub dest: IpNet,
    /// Its output interface, if named.
    pub dev: Option<String>,
    /// Its type.
    pub kind: RouteKind,
}

/// The kernel's answer to one route lookup (`ip route get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    /// The output interface.
    pub dev: Option<String>,
    /// The table the route came from.
    pub table: Option<u32>,
    /// The route's type.
    pub kind: RouteKind,
}

/// One route lookup the move depends on, asked while vmtun runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProbe {
    /// What was asked, in `ip route get` words.
    pub query: String,
    /// The subnet it is about.
    pub subnet: IpNet,
    /// The kernel's answer, or its error.
    pub answer: Result<RouteAnswer, String>,
}

/// Whether a `vmtun up` for this config runs now.
#[derive(Debug, Clone)]
pub enum Instance {
    /// Nothing answers on the control socket.
    NotRunning,
    /// It answered `status`.
    Running(Box<Status>),
}

/// The listen port, tried by binding it (and letting go again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// Bound: nobody else has it.
    Free,
    /// `Address already in use`.
    InUse,
    /// Another error, as text.
    Error(String),
    /// Not tried: this config's vmtun holds it.
    Held,
}

/// What became of the handshake with one peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Handshake {
    /// The peer has no endpoint: it will be learned from the peer's first handshake.
    NoEndpoint,
    /// The probe's initiation was answered by a valid response.
    Completed {
        /// From sending the initiation to receiving the response.
        rtt: Duration,
    },
    /// The running instance's latest handshake with this peer (`None`: never).
    Latest(Option<Duration>),
    /// The endpoint answered with ICMP port unreachable: nothing listens there.
    Refused,
    /// Silence for this long.
    NoAnswer(Duration),
    /// The initiation could not be sent (no route, wrong family...).
    SendFailed(String),
    /// Not probed because the listen port could not be bound.
    NotProbed,
}

/// One peer's facts, in config order.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerFact {
    /// The endpoint probed (configured, or learned by the running instance).
    pub endpoint: Option<SocketAddr>,
    /// The handshake outcome.
    pub handshake: Handshake,
    /// The path MTU towards the endpoint (the route's MTU), when there is one.
    pub path_mtu: Option<Result<u32, String>>,
}

/// Everything the checks judge. `Err(String)` means the fact could not be read; the text
/// says why.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Whether we run as root (up needs it; nftables and /run/vmtun are root's).
    pub root: bool,
    /// The wall clock.
    pub now: SystemTime,
    /// The forwarding sysctl of each family the move needs, as read.
    pub forwarding: Vec<(Family, Result<String, String>)>,
    /// `net.ipv4.conf.default.forwarding`, which interfaces created later (the TUN device, a
    /// VM's arriving interface) start with, when the move has an IPv4 subnet.
    pub default_forwarding: Option<Result<String, String>>,
    /// Interface names (an rtnetlink dump).
    pub links: Result<Vec<String>, String>,
    /// Policy rules of each family the move needs.
    pub rules: Result<Vec<RuleFact>, String>,
    /// Routes in the migration table (role new), of each family the move needs.
    pub table_routes: Result<Vec<RouteFact>, String>,
    /// Role old: the main table's routes whose prefix is one of the subnets.
    pub main_routes: Result<Vec<RouteFact>, String>,
    /// The route lookups the move depends on (asked only while this config's vmtun runs:
    /// its rule and routes come with it).
    pub route_probes: Vec<RouteProbe>,
    /// Every nftables table, chain and rule (a netfilter netlink dump).
    pub nft: Result<Ruleset, String>,
    /// Whether this config's vmtun runs.
    pub instance: Instance,
    /// The host changes recorded in this config's state file: vmtun's own objects
    /// (`None`: no state file).
    pub own: Option<Vec<Change>>,
    /// The listen port.
    pub port: Port,
    /// One entry per configured peer.
    pub peers: Vec<PeerFact>,
}
