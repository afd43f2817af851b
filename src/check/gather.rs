//! The I/O half of the checks: reads the host into [`Facts`] and changes nothing. The
//! listen port is bound only for the handshake probe and released when it ends; route
//! lookups (`ip route get`) and netlink dumps only read.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::control::{self, Paths};
use crate::netcfg::{Family, State};

use super::evaluate::families;
use super::facts::{Facts, Handshake, Instance, PeerFact, Port};
use super::netlink::{self, Wanted};
use super::probe;
use super::routes;
use super::ruleset::Ruleset;

/// Reads everything [`super::evaluate::evaluate`] judges, in the calling thread's network
/// namespace.
pub fn gather(config: &Config) -> Facts {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let families = families(config);
    let forwarding = families
        .iter()
        .map(|f| (*f, read_sysctl(&f.forwarding().to_string())))
        .collect();
    let default_forwarding = families
        .contains(&Family::Ipv4)
        .then(|| read_sysctl("net.ipv4.conf.default.forwarding"));
    let migration = config.migration.as_ref();
    let dumps = netlink::route_dumps(&Wanted {
        families: &families,
        table: migration.map(|m| m.table),
        main_subnets: migration.map_or(&[], |m| &m.subnets),
    });
    let nft = match migration {
        Some(_) => netlink::nft_ruleset().map_err(|e| e.to_string()),
        None => Ok(Ruleset::default()),
    };
    let instance = match control::status(config) {
        Ok(status) => Instance::Running(Box::new(status)),
        Err(_) => Instance::NotRunning,
    };
    // vmtun's rule and routes exist only while it runs: before, there is nothing to ask.
    let route_probes = match (&instance, &dumps.links) {
        (Instance::Running(_), Ok(links)) => {
            let names: Vec<String> = links.values().cloned().collect();
            netlink::route_lookups(&routes::queries(config, &names))
        }
        _ => Vec::new(),
    };
    let (port, peers) = match &instance {
        Instance::Running(status) => (Port::Held, from_status(config, status)),
        Instance::NotRunning => probe_peers(config),
    };
    Facts {
        root,
        now: SystemTime::now(),
        forwarding,
        default_forwarding,
        links: dumps.links.map(|l| l.into_values().collect()),
        rules: dumps.rules,
        table_routes: dumps.table_routes,
        main_routes: dumps.main_routes,
        route_probes,
        nft,
        instance,
        own: own_changes(config),
        port,
        peers,
    }
}

fn read_sysctl(dotted: &str) -> Result<String, String> {
    let path = format!("/proc/sys/{}", dotted.replace('.', "/"));
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

/// The changes this config's state file records, i.e. what a vmtun for it made.
fn own_changes(config: &Config) -> Option<Vec<crate::netcfg::Change>> {
    let text = std::fs::read_to_string(Paths::of(config).ok()?.state).ok()?;
    Some(
        serde_json::from_str::<State>(&text)
            .map(|s| s.changes)
            .unwrap_or_default(),
    )
}

/// The running instance's view of each peer: its latest handshake and current endpoint.
fn from_status(config: &Config, status: &control::Status) -> Vec<PeerFact> {
    config
        .peers
        .iter()
        .map(|peer| {
            let key = peer.public_key.to_base64();
            let seen = status.peers.iter().find(|p| p.public_key == key);
            let endpoint = seen
                .and_then(|p| p.endpoint.as_deref())
                .and_then(|e| e.parse().ok())
                .or(peer.endpoint);
            let handshake = match endpoint {
                None => Handshake::NoEndpoint,
                Some(_) => Handshake::Latest(
                    seen.and_then(|p| p.last_handshake_secs)
                        .map(Duration::from_secs_f64),
                ),
            };
            peer_fact(endpoint, handshake)
        })
        .collect()
}

/// Binds the listen port (the port check) and probes each peer from it; the port is
/// released when this returns.
fn probe_peers(config: &Config) -> (Port, Vec<PeerFact>) {
    // Bound as `up` binds it (dual-stack where the host has IPv6), so the verdict is up's.
    let bound = crate::udp::bind(config.interface.listen_port);
    let port = match &bound {
        Ok(_) => Port::Free,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Port::InUse,
        Err(e) => Port::Error(e.to_string()),
    };
    let peers = config
        .peers
        .iter()
        .map(|peer| {
            let handshake = match (&bound, peer.endpoint) {
                (_, None) => Handshake::NoEndpoint,
                (Ok(socket), Some(_)) => probe::handshake(config, peer, socket),
                (Err(_), Some(_)) => Handshake::NotProbed,
            };
            peer_fact(peer.endpoint, handshake)
        })
        .collect();
    (port, peers)
}

fn peer_fact(endpoint: Option<SocketAddr>, handshake: Handshake) -> PeerFact {
    PeerFact {
        endpoint,
        handshake,
        path_mtu: endpoint.map(probe::path_mtu),
    }
}
