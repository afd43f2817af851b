//! The TOML config of the user contract (DESIGN.md), parsed into validated types.
//!
//! Every mistake an operator can make in the file is found here, as one line naming the
//! field, before anything on the host is touched. This module reads the config, the
//! private key file and the host's group database (`control.group`); it changes nothing.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::secret_file::{self, Links};

/// WireGuard's default tunnel MTU (1500 minus the IPv6 + UDP + WireGuard overhead).
pub const DEFAULT_MTU: u16 = 1420;
/// Busy-polling window after traffic, in microseconds: see `busy_poll` and README
/// "Performance" for what it buys and costs.
pub const DEFAULT_BUSY_POLL_US: u32 = 200;
/// Longest busy-polling window accepted: beyond this, sleeping is cheaper than spinning.
const MAX_BUSY_POLL_US: u32 = 1000;
/// WireGuard's customary port.
pub const DEFAULT_PORT: u16 = 51820;
/// Linux's limit on interface names (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Routing table ids the kernel reserves (unspec, default, main, local).
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

/// A config problem: one line, naming the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A validated config: what `vmtun up` and friends act on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages and for instance naming.
    pub path: PathBuf,
    /// This host's tunnel interface.
    pub interface: Interface,
    /// The other ends of the tunnel.
    pub peers: Vec<Peer>,
    /// The move's routing, when this host takes part in one.
    pub migration: Option<Migration>,
    /// Which addresses live behind which VM interface (for `vif-up`).
    pub vms: Vec<Vm>,
    /// The Prometheus endpoint, when the operator turned it on.
    pub metrics: Option<Metrics>,
    /// Who besides root may use the control socket.
    pub control: Control,
}

/// `[interface]`: the TUN device and this host's identity.
#[derive(Debug, Clone)]
pub struct Interface {
    /// TUN device name; also keys the control socket and state file.
    pub name: String,
    /// This host's static key.
    pub private_key: PrivateKey,
    /// UDP port to listen on.
    pub listen_port: u16,
    /// This host's address inside the tunnel, with the tunnel network's prefix length.
    pub address: IpNet,
    /// TUN MTU.
    pub mtu: u16,
    /// How long the event loop keeps polling after traffic before it sleeps (zero: never).
    pub busy_poll: Duration,
}

/// `[[peer]]`: one remote host and the addresses it may carry (cryptokey routing).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Where to send first; learned from authenticated packets when absent.
    pub endpoint: Option<SocketAddr>,
    /// Destinations routed to this peer and sources accepted from it.
    pub allowed_ips: Vec<IpNet>,
    /// Optional symmetric key mixed into the handshake.
    pub preshared_key: Option<PresharedKey>,
    /// Send a keepalive after this much silence (keeps NAT state alive).
    pub persistent_keepalive: Option<Duration>,
}

/// Which side of the move this host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The host the VMs leave: routes the subnets into the tunnel.
    Old,
    /// The host the VMs arrive at: sends their replies back through the tunnel until cutover.
    New,
}

/// How the new host learns that the provider has switched the subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CutoverMode {
    /// Watch the bridge for the first packet that arrives natively.
    Auto,
    /// Wait for `vmtun cutover`.
    Manual,
}

/// When the old host stops routing a VM's addresses to the VM's interface there
/// (`[migration] handover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HandoverMode {
    /// As soon as the new host sees the migrated guest's first frame on its interface
    /// (QEMU's announcement when the guest resumes there) and reports it through the tunnel:
    /// the paused source no longer swallows the VM's traffic (`crate::handover`).
    FirstFrame,
    /// Only when the VM's interface on the old host disappears (the source QEMU exits), as
    /// the seed's procedure does.
    VifGone,
}

/// `[migration]`: the routing of the move.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Old or new host.
    pub role: Role,
    /// The VMs' routed subnets, IPv4 and IPv6.
    pub subnets: Vec<IpNet>,
    /// The other host's tunnel address.
    pub via: IpAddr,
    /// Prefix of the VM-facing interfaces (`vif` matches vif0..vif7).
    pub vif_prefix: String,
    /// Role new: where natively routed packets arrive.
    pub bridge: String,
    /// Role new: more interfaces where natively routed packets may arrive, besides `bridge`.
    pub native_interfaces: Vec<String>,
    /// Role new: the provider's routers on the uplink, whose packets alone may trigger the
    /// cutover; empty: the gateways of the host's default routes through the native
    /// interfaces.
    pub gateways: Vec<Gateway>,
    /// Role new: routing table for VM replies via the tunnel.
    pub table: u32,
    /// Role new: mark that selects `table`.
    pub fwmark: u32,
    /// Role new: automatic or manual cutover.
    pub cutover: CutoverMode,
    /// Role new: how long replies keep going through the old host after the first native
    /// packet (zero: the kernel flips on that packet). For a provider that routes the subnet
    /// to the new host before it accepts it as a source from there.
    pub cutover_hold: Duration,
    /// Both roles: when the old host hands a migrated VM's traffic to the tunnel (the new
    /// host reports the guest's first frame only with [`HandoverMode::FirstFrame`], the old host
    /// acts on such reports only with it).
    pub handover: HandoverMode,
}

/// The longest `[migration] cutover_hold_ms`: a minute; a provider that needs longer between
/// its route and its filter is better served by `cutover = "manual"`.
const MAX_CUTOVER_HOLD_MS: u32 = 60_000;

/// One of `[migration] gateways`: a router on the uplink, by address (its MAC is looked up
/// in the neighbour table at start) or by MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    /// The router's address on the uplink, e.g. `198.18.2.1` or `fe80::1`.
    Address(IpAddr),
    /// The router's MAC, e.g. `52:54:00:ab:cd:ef` (a router vmtun cannot resolve, or the
    /// physical MACs behind a redundant pair's virtual one).
    Mac(crate::cutover::MacAddr),
}

impl Migration {
    /// Every interface where native packets may arrive: `bridge`, then `native_interfaces`.
    pub fn native_ifaces(&self) -> Vec<String> {
        std::iter::once(&self.bridge)
            .chain(&self.native_interfaces)
            .cloned()
            .collect()
    }
}

/// `[metrics]`: the opt-in Prometheus endpoint (off without the section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Where `vmtun up` serves `GET /metrics` over HTTP.
    pub listen: SocketAddr,
}

/// `[control]`: who besides root may use the control socket (`vmtun status`, `cutover`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// A group whose members may; `None` (the default): root only.
    pub group: Option<Group>,
}

/// A group of this host: its name, and the id the name had when the config was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// As written in the config.
    pub name: String,
    /// Its id in the host's group database.
    pub gid: u32,
}

/// `[[vm]]`: the addresses behind one VM interface.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The VM's host-side interface (libvirt's `<target dev=...>`).
    pub vif: String,
    /// Its public addresses, each routed as a /32 (IPv4) or /128 (IPv6) on `vif`.
    pub addresses: Vec<IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: RawInterface,
    #[serde(default)]
    peer: Vec<RawPeer>,
    migration: Option<RawMigration>,
    #[serde(default)]
    vm: Vec<RawVm>,
    metrics: Option<RawMetrics>,
    control: Option<RawControl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    listen_port: Option<u16>,
    address: String,
    mtu: Option<u16>,
    busy_poll_us: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: String,
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
    preshared_key: Option<String>,
    persistent_keepalive: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    role: Role,
    subnets: Vec<String>,
    via: String,
    vif_prefix: Option<String>,
    bridge: Option<String>,
    native_interfaces: Option<Vec<String>>,
    gateways: Option<Vec<String>>,
    table: Option<u32>,
    fwmark: Option<u32>,
    cutover: Option<CutoverMode>,
    cutover_hold_ms: Option<u32>,
    handover: Option<HandoverMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    vif: String,
    addresses: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`; the private key file is resolved relative to it.
    /// A config that holds the private key inline must be as private as a key file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let opened = secret_file::read(path, Links::Follow)
            .or_else(|e| err(format!("{shown}: cannot read: {e}")))?;
        let (config, inline_key) = Self::parse_with_source(&opened.text, path)
            .map_err(|e| ConfigError(format!("{shown}: {}", e.0)))?;
        if inline_key && let Some(exposed) = opened.exposure(&shown, secret_file::euid()) {
            return err(format!(
                "{exposed} (it holds interface.private_key; or move the key to a private_key_file)"
            ));
        }
        Ok(config)
    }

    /// Validates config text; `path` names it and anchors a relative `private_key_file`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_source(text, path).map(|(config, _)| config)
    }

    /// [`Config::parse`], and whether the private key was inline (not in a key file).
    fn parse_with_source(text: &str, path: &Path) -> Result<(Self, bool), ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let inline_key = raw.interface.private_key.is_some();
        let interface = interface(raw.interface, path)?;
        let mut peers = Vec::with_capacity(raw.peer.len());
        for (i, p) in raw.peer.into_iter().enumerate() {
            peers.push(peer(p, i)?);
        }
        check_peers(&peers, &interface)?;
        let migration = match raw.migration {
            Some(m) => Some(migration(m, &interface, &peers)?),
            None => None,
        };
        let vms = vms(raw.vm, migration.as_ref())?;
        let metrics = raw.metrics.map(metrics).transpose()?;
        let control = raw.control.map(control).transpose()?.unwrap_or_default();
        let config = Self {
            path: path.to_path_buf(),
            interface,
            peers,
            migration,
            vms,
            metrics,
            control,
        };
        Ok((config, inline_key))
    }

    /// The `[[vm]]` whose interface is `vif`.
    pub fn vm(&self, vif: &str) -> Option<&Vm> {
        self.vms.iter().find(|vm| vm.vif == vif)
    }

    /// What this valid config cannot do that an operator may expect, one line each (`up`
    /// logs them, `check` warns): role old whose peer does not allow every address of a
    /// subnet's family cannot serve a VM still on this host after the provider's switch,
    /// since the new host then forwards its clients' packets (any source) through the
    /// tunnel, and its own traffic (any destination) must go back through it.
    pub fn caveats(&self) -> Vec<Caveat> {
        let Some(m) = self.migration.as_ref().filter(|m| m.role == Role::Old) else {
            return Vec::new();
        };
        let Some((i, _)) = route_to(&self.peers, m.via) else {
            return Vec::new();
        };
        ["0.0.0.0/0", "::/0"]
            .into_iter()
            .map(|e| e.parse::<IpNet>().expect("constant prefix"))
            .filter(|every| {
                m.subnets
                    .iter()
                    .any(|n| n.addr().is_ipv4() == every.addr().is_ipv4())
                    && !self.peers[i].allowed_ips.contains(every)
            })
            .map(|every| Caveat {
                problem: format!(
                    "peer[{i}].allowed_ips lacks {every}: a VM still on this host after the \
                     provider's switch will be cut off"
                ),
                fix: format!("add {every}, or move every VM before the switch"),
            })
            .collect()
    }
}

/// Something a valid config cannot do, and what to change ([`Config::caveats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caveat {
    /// What will not work.
    pub problem: String,
    /// What to change.
    pub fix: String,
}

impl std::fmt::Display for Caveat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.problem, self.fix)
    }
}

/// toml's errors span several lines with a source excerpt; the operator gets one.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            // Name the key on that line too: toml's message often names only the value.
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !msg.contains(*k));
            match key {
                Some(key) => ConfigError(format!("line {line}: {key}: {msg}")),
                None => ConfigError(format!("line {line}: {msg}")),
            }
        }
        None => ConfigError(msg),
    }
}

fn ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        err(format!(
            "{field}: {name:?} is not a valid interface name (1-{MAX_IFNAME} characters, no '/', ':' or spaces)"
        ))
    }
}

fn interface(raw: RawInterface, config_path: &Path) -> Result<Interface, ConfigError> {
    ifname("interface.name", &raw.name)?;
    let private_key = match (raw.private_key, raw.private_key_file) {
        (Some(text), None) => PrivateKey::from_base64(&zeroize::Zeroizing::new(text))
            .or_else(|e| err(format!("interface.private_key: {e}")))?,
        (None, Some(file)) => {
            let file = config_path.parent().unwrap_or(Path::new(".")).join(file);
            private_key_file(&file)?
        }
        (Some(_), Some(_)) => {
            return err("interface: set private_key or private_key_file, not both");
        }
        (None, None) => return err("interface: missing private_key (or private_key_file)"),
    };
    let address = prefix("interface.address", &raw.address, false)?;
    let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
    if !(576..=9000).contains(&mtu) {
        return err(format!("interface.mtu: {mtu} is outside 576..=9000"));
    }
    let busy_poll_us = raw.busy_poll_us.unwrap_or(DEFAULT_BUSY_POLL_US);
    if busy_poll_us > MAX_BUSY_POLL_US {
        return err(format!(
            "interface.busy_poll_us: {busy_poll_us} is above {MAX_BUSY_POLL_US} (microseconds; 0 turns busy polling off)"
        ));
    }
    Ok(Interface {
        name: raw.name,
        private_key,
        listen_port: raw.listen_port.unwrap_or(DEFAULT_PORT),
        address,
        mtu,
        busy_poll: Duration::from_micros(busy_poll_us.into()),
    })
}

/// Reads a private key file, refusing one that others can read or control (as ssh does).
fn private_key_file(file: &Path) -> Result<PrivateKey, ConfigError> {
    let shown = file.display().to_string();
    let fail = |what: String| ConfigError(format!("interface.private_key_file: {what}"));
    let opened =
        secret_file::read(file, Links::Refuse).map_err(|e| fail(format!("{shown}: {e}")))?;
    if let Some(exposed) = opened.exposure(&shown, secret_file::euid()) {
        return Err(fail(exposed));
    }
    PrivateKey::from_base64(&opened.text).map_err(|e| fail(format!("{shown}: {e}")))
}

/// Parses `a.b.c.d/len`; `network` demands that host bits be zero (a route or filter),
/// otherwise they are expected (an interface address).
fn prefix(field: &str, text: &str, network: bool) -> Result<IpNet, ConfigError> {
    let net: IpNet = text.parse().or_else(|_| {
        err(format!(
            "{field}: {text:?} is not an address with a prefix length (like 203.0.113.0/29)"
        ))
    })?;
    if network && net.trunc() != net {
        return err(format!(
            "{field}: {text} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// `IPv4:PORT` or `[IPv6]:PORT`; `examples` shows the operator both forms.
fn socket_address(field: &str, text: &str, examples: &str) -> Result<SocketAddr, ConfigError> {
    text.parse::<SocketAddr>().or_else(|_| {
        let hint = if text.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            "it has no port"
        } else {
            "names are not resolved"
        };
        err(format!(
            "{field}: {text:?} is not IP:PORT like {examples} ({hint})"
        ))
    })
}

/// `IPv4:PORT` or `[IPv6]:PORT`. A v4-mapped IPv6 address (`[::ffff:198.18.0.2]`) is
/// taken as the IPv4 address it stands for, the form the tunnel uses for IPv4 peers.
fn endpoint(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let addr = socket_address(field, text, "198.51.100.7:51820 or [2001:db8::1]:51820")?;
    if addr.port() == 0 {
        return err(format!("{field}: {text}: port 0 cannot be sent to"));
    }
    if !crate::noise::can_send_to(addr) {
        return err(format!(
            "{field}: {text} cannot be sent to (unspecified, multicast or broadcast); give the peer's own address"
        ));
    }
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

fn peer(raw: RawPeer, i: usize) -> Result<Peer, ConfigError> {
    let field = |name: &str| format!("peer[{i}].{name}");
    let public_key = PublicKey::from_base64(&raw.public_key)
        .or_else(|e| err(format!("{}: {e}", field("public_key"))))?;
    let endpoint = match raw.endpoint {
        Some(text) => Some(endpoint(&field("endpoint"), &text)?),
        None => None,
    };
    let mut allowed_ips = Vec::with_capacity(raw.allowed_ips.len());
    for text in &raw.allowed_ips {
        let net = prefix(&field("allowed_ips"), text, true)?;
        if let Some(other) = allowed_ips
            .iter()
            .find(|o: &&IpNet| o.contains(&net) || net.contains(*o))
        {
            return err(format!("{}: {net} overlaps {other}", field("allowed_ips")));
        }
        allowed_ips.push(net);
    }
    let preshared_key = match raw.preshared_key {
        Some(text) => Some(
            PresharedKey::from_base64(&text)
                .or_else(|e| err(format!("{}: {e}", field("preshared_key"))))?,
        ),
        None => None,
    };
    let persistent_keepalive = raw
        .persistent_keepalive
        .filter(|&s| s > 0)
        .map(|s| Duration::from_secs(s.into()));
    Ok(Peer {
        public_key,
        endpoint,
        allowed_ips,
        preshared_key,
        persistent_keepalive,
    })
}

fn check_peers(peers: &[Peer], interface: &Interface) -> Result<(), ConfigError> {
    if peers.is_empty() {
        return err("no [[peer]]: a tunnel needs at least one");
    }
    let own = interface.private_key.public_key();
    let mut keys = HashSet::new();
    for (i, p) in peers.iter().enumerate() {
        if p.public_key == own {
            return err(format!(
                "peer[{i}].public_key: is this host's own public key"
            ));
        }
        if !keys.insert(p.public_key) {
            return err(format!(
                "peer[{i}].public_key: duplicate peer {}",
                p.public_key
            ));
        }
        for net in &p.allowed_ips {
            for (j, q) in peers.iter().enumerate().take(i) {
                if q.allowed_ips.contains(net) {
                    return err(format!(
                        "peer[{i}].allowed_ips: {net} is also in peer[{j}].allowed_ips"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The peer that cryptokey routing picks for `addr` (longest prefix).
fn route_to(peers: &[Peer], addr: IpAddr) -> Option<(usize, IpNet)> {
    peers
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.allowed_ips.iter().map(move |n| (i, *n)))
        .filter(|(_, n)| n.contains(&addr))
        .max_by_key(|(_, n)| n.prefix_len())
}

fn migration(
    raw: RawMigration,
    interface: &Interface,
    peers: &[Peer],
) -> Result<Migration, ConfigError> {
    if raw.subnets.is_empty() {
        return err("migration.subnets: empty; list the VMs' routed subnets");
    }
    let mut subnets: Vec<IpNet> = Vec::new();
    for text in &raw.subnets {
        let net = prefix("migration.subnets", text, true)?;
        if let Some(other) = subnets
            .iter()
            .find(|o| o.contains(&net) || net.contains(*o))
        {
            return err(format!("migration.subnets: {net} overlaps {other}"));
        }
        subnets.push(net);
    }
    apart_from_the_tunnel(&subnets, interface)?;
    let via: IpAddr = raw
        .via
        .parse()
        .or_else(|_| err(format!("migration.via: {:?} is not an IP address", raw.via)))?;
    if !interface.address.trunc().contains(&via) || via == interface.address.addr() {
        return err(format!(
            "migration.via: {via} must be the other host's address in {}",
            interface.address.trunc()
        ));
    }
    let Some((via_peer, _)) = route_to(peers, via) else {
        return err(format!("migration.via: {via} is in no peer's allowed_ips"));
    };
    match raw.role {
        Role::Old => {
            for net in &subnets {
                match route_to(peers, net.network()) {
                    Some((i, n)) if n.contains(net) && i == via_peer => {}
                    _ => {
                        return err(format!(
                            "migration.subnets: {net} must be inside peer[{via_peer}].allowed_ips (the new host's), or the tunnel drops the VMs' traffic"
                        ));
                    }
                }
            }
        }
        Role::New => {
            // The VMs' replies go to any address of their family through the old host.
            for everything in ["0.0.0.0/0", "::/0"] {
                let everything: IpNet = everything.parse().expect("constant prefix");
                let needed = subnets
                    .iter()
                    .any(|n| n.addr().is_ipv4() == everything.addr().is_ipv4());
                if needed && !peers[via_peer].allowed_ips.contains(&everything) {
                    return err(format!(
                        "peer[{via_peer}].allowed_ips: must include {everything} on role new (the VMs' replies go to any address through the old host)"
                    ));
                }
            }
        }
    }
    let vif_prefix = raw.vif_prefix.unwrap_or_else(|| "vif".into());
    if vif_prefix.is_empty() || vif_prefix.len() >= MAX_IFNAME {
        return err(format!(
            "migration.vif_prefix: {vif_prefix:?} must have 1-14 characters"
        ));
    }
    ifname("migration.vif_prefix", &vif_prefix)?;
    let bridge = raw.bridge.unwrap_or_else(|| "br0".into());
    ifname("migration.bridge", &bridge)?;
    let native_interfaces = raw.native_interfaces.unwrap_or_default();
    for (i, name) in native_interfaces.iter().enumerate() {
        ifname("migration.native_interfaces", name)?;
        if *name == bridge || native_interfaces[..i].contains(name) {
            return err(format!(
                "migration.native_interfaces: {name} is listed twice (with migration.bridge, it is watched already)"
            ));
        }
    }
    let gateways = (raw.gateways.unwrap_or_default().iter())
        .map(|text| match (text.parse(), text.parse()) {
            (Ok(addr), _) => Ok(Gateway::Address(addr)),
            (_, Ok(mac)) => Ok(Gateway::Mac(mac)),
            _ => err(format!(
                "migration.gateways: {text:?} is neither an IP address nor a MAC like 52:54:00:ab:cd:ef"
            )),
        })
        .collect::<Result<Vec<Gateway>, ConfigError>>()?;
    not_the_tunnel(&vif_prefix, &bridge, &interface.name)?;
    let table = raw.table.unwrap_or(201);
    if RESERVED_TABLES.contains(&table) {
        return err(format!(
            "migration.table: {table} is reserved by the kernel (0, 253, 254, 255)"
        ));
    }
    let cutover_hold_ms = raw.cutover_hold_ms.unwrap_or(0);
    if cutover_hold_ms > MAX_CUTOVER_HOLD_MS {
        return err(format!(
            "migration.cutover_hold_ms: {cutover_hold_ms} is above {MAX_CUTOVER_HOLD_MS} (a minute); ask the provider how long it takes between its route change and its source filter"
        ));
    }
    let fwmark = raw.fwmark.unwrap_or(1);
    if fwmark == 0 {
        return err("migration.fwmark: 0 means no mark; use a non-zero value");
    }
    Ok(Migration {
        role: raw.role,
        subnets,
        via,
        vif_prefix,
        bridge,
        native_interfaces,
        gateways,
        table,
        fwmark,
        cutover: raw.cutover.unwrap_or(CutoverMode::Auto),
        cutover_hold: Duration::from_millis(cutover_hold_ms.into()),
        handover: raw.handover.unwrap_or(HandoverMode::FirstFrame),
    })
}

/// The VMs' subnets and the tunnel's own network must not share an address: the tunnel
/// address would be routed as a VM's (and a VM's into the tunnel's connected route).
fn apart_from_the_tunnel(subnets: &[IpNet], interface: &Interface) -> Result<(), ConfigError> {
    let (own, tunnel) = (interface.address.addr(), interface.address.trunc());
    for net in subnets {
        if net.contains(&own) {
            return err(format!(
                "migration.subnets: {net} contains the tunnel's own address {own} \
                 (interface.address): a VM's address cannot also be the tunnel's; give the \
                 tunnel an address outside the VMs' subnets"
            ));
        }
        if net.contains(&tunnel) || tunnel.contains(net) {
            return err(format!(
                "migration.subnets: {net} overlaps the tunnel's network {tunnel} \
                 (interface.address): choose a tunnel network apart from the VMs' subnets"
            ));
        }
    }
    Ok(())
}

/// The bridge and the VM interfaces are other devices than the tunnel: the cutover watcher
/// would take the tunnel's own packets for native ones, the mark rule the tunnel's traffic
/// for VMs'.
fn not_the_tunnel(vif_prefix: &str, bridge: &str, tun: &str) -> Result<(), ConfigError> {
    if bridge == tun {
        return err(format!(
            "migration.bridge: {bridge} is the tunnel's own device (interface.name); name the \
             bridge the VMs' native traffic arrives on"
        ));
    }
    if tun.starts_with(vif_prefix) {
        return err(format!(
            "migration.vif_prefix: {vif_prefix:?} matches the tunnel's own device {tun} \
             (interface.name); use a prefix only the VMs' interfaces have"
        ));
    }
    Ok(())
}

/// The metrics endpoint's address: an IP and a fixed port, so scrapers know where to look.
fn metrics(raw: RawMetrics) -> Result<Metrics, ConfigError> {
    let listen = socket_address(
        "metrics.listen",
        &raw.listen,
        "127.0.0.1:9586 or [::1]:9586",
    )?;
    if listen.port() == 0 {
        return err(format!(
            "metrics.listen: {listen}: port 0 would pick a random port no scraper knows; give one, e.g. 9586"
        ));
    }
    Ok(Metrics { listen })
}

/// `[control]`: the group must exist on this host (its id is what the socket is given).
fn control(raw: RawControl) -> Result<Control, ConfigError> {
    let Some(name) = raw.group else {
        return Ok(Control::default());
    };
    match group_id(&name) {
        Some(gid) => Ok(Control {
            group: Some(Group { name, gid }),
        }),
        None => err(format!(
            "control.group: no group {name:?} on this host; create it (`groupadd {name}`) or \
             name an existing one"
        )),
    }
}

/// The id of the group called `name` in the host's group database (getgrnam_r).
fn group_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero `group` is a valid value for getgrnam_r to overwrite.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: c_name is NUL-terminated; group, buf (buf.len() bytes) and found are
        // valid for writes for the duration of the call.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(group.gr_gid);
    }
}

fn vms(raw: Vec<RawVm>, migration: Option<&Migration>) -> Result<Vec<Vm>, ConfigError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let Some(migration) = migration else {
        return err("vm: [[vm]] entries need a [migration] section");
    };
    let mut vms: Vec<Vm> = Vec::with_capacity(raw.len());
    for (i, vm) in raw.into_iter().enumerate() {
        let field = format!("vm[{i}]");
        ifname(&format!("{field}.vif"), &vm.vif)?;
        if !vm.vif.starts_with(&migration.vif_prefix) {
            return err(format!(
                "{field}.vif: {} does not start with migration.vif_prefix {:?}",
                vm.vif, migration.vif_prefix
            ));
        }
        if vms.iter().any(|o| o.vif == vm.vif) {
            return err(format!("{field}.vif: {} is listed twice", vm.vif));
        }
        let mut addresses = Vec::with_capacity(vm.addresses.len());
        for text in &vm.addresses {
            let addr: IpAddr = text
                .parse()
                .or_else(|_| err(format!("{field}.addresses: {text:?} is not an IP address")))?;
            if !migration.subnets.iter().any(|n| n.contains(&addr)) {
                return err(format!(
                    "{field}.addresses: {addr} is in none of migration.subnets"
                ));
            }
            if vms.iter().any(|o| o.addresses.contains(&addr)) || addresses.contains(&addr) {
                return err(format!("{field}.addresses: {addr} is listed twice"));
            }
            addresses.push(addr);
        }
        vms.push(Vm {
            vif: vm.vif,
            addresses,
        });
    }
    Ok(vms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUB_B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    // Public keys of the all-0x02 and all-0x01 private keys (from `wg pubkey`).
    const PUB_D: &str = "zo060cy2M+x7cMF4FKXHbs0CloUFDTRHRboFhw5YfVk=";
    const PUB_C: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

    fn good() -> String {
        format!(
            r#"
[interface]
name = "vmtun0"
private_key = "{KEY_A}"
listen_port = 51820
address = "100.64.0.1/24"

[[peer]]
public_key = "{PUB_C}"
endpoint = "198.18.0.2:51820"
allowed_ips = ["100.64.0.2/32", "203.0.113.0/29"]

[migration]
role = "old"
subnets = ["203.0.113.0/29"]
via = "100.64.0.2"

[[vm]]
vif = "vif0"
addresses = ["203.0.113.2"]
"#
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/vmtun/test.toml"))
    }

    #[test]
    fn the_contract_example_parses_with_defaults() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.interface.mtu, DEFAULT_MTU);
        assert_eq!(
            c.interface.busy_poll,
            Duration::from_micros(DEFAULT_BUSY_POLL_US.into())
        );
        let m = c.migration.unwrap();
        assert_eq!(
            (m.table, m.fwmark, m.vif_prefix.as_str(), m.bridge.as_str()),
            (201, 1, "vif", "br0")
        );
        assert_eq!(m.cutover, CutoverMode::Auto);
        assert!(m.gateways.is_empty() && m.native_interfaces.is_empty());
        assert_eq!(m.cutover_hold, Duration::ZERO);
        assert_eq!(m.handover, HandoverMode::FirstFrame);
        assert_eq!(m.native_ifaces(), ["br0"]);
        assert_eq!(c.vms[0].addresses, vec![IpAddr::from([203, 0, 113, 2])]);
    }

    #[test]
    fn handover_takes_its_two_values() {
        let with = |value: &str| {
            let text = good().replace(
                "via = \"100.64.0.2\"",
                &format!("via = \"100.64.0.2\"\nhandover = {value:?}"),
            );
            parse(&text).unwrap().migration.unwrap().handover
        };
        assert_eq!(with("first-frame"), HandoverMode::FirstFrame);
        assert_eq!(with("vif-gone"), HandoverMode::VifGone);
    }

    #[test]
    fn role_old_without_every_address_warns_about_vms_left_behind() {
        let narrow = parse(&good()).unwrap();
        let caveats: Vec<String> = narrow.caveats().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            caveats,
            [
                "peer[0].allowed_ips lacks 0.0.0.0/0: a VM still on this host after the \
              provider's switch will be cut off; add 0.0.0.0/0, or move every VM before the \
              switch"
            ]
        );
        let wide = good().replace(
            r#"allowed_ips = ["100.64.0.2/32", "203.0.113.0/29"]"#,
            r#"allowed_ips = ["0.0.0.0/0"]"#,
        );
        assert_eq!(parse(&wide).unwrap().caveats(), []);
    }

    #[test]
    fn gateways_take_addresses_and_macs_and_native_interfaces_add_to_the_bridge() {
        let text = good().replace(
            "via = \"100.64.0.2\"",
            "via = \"100.64.0.2\"\ngateways = [\"198.18.2.1\", \"fe80::1\", \"52:54:00:AB:cd:ef\"]\nnative_interfaces = [\"eth1.100\", \"bond0\"]",
        );
        let m = parse(&text).unwrap().migration.unwrap();
        assert_eq!(
            m.gateways,
            [
                Gateway::Address("198.18.2.1".parse().unwrap()),
                Gateway::Address("fe80::1".parse().unwrap()),
                Gateway::Mac(crate::cutover::MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef])),
            ]
        );
        assert_eq!(m.native_ifaces(), ["br0", "eth1.100", "bond0"]);
    }

    /// Each bad config must fail with one line that names the field.
    #[test]
    fn bad_configs_name_the_field() {
        let g = good();
        let cases: Vec<(String, &str)> = vec![
            (g.replace("listen_port", "lisen_port"), "unknown field `lisen_port`"),
            (g.replace(KEY_A, "not-base64!"), "interface.private_key: not valid base64"),
            (g.replace(PUB_C, "AAAA"), "peer[0].public_key: decodes to 3 bytes"),
            (g.replace("203.0.113.0/29\"]\n\n[migration]", "203.0.113.0/33\"]\n\n[migration]"), "peer[0].allowed_ips"),
            (g.replace("\"203.0.113.0/29\"]\n\n[migration]", "\"203.0.113.1/29\"]\n\n[migration]"), "host bits set"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"old.example:51820\""), "peer[0].endpoint"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"2001:db8::1:51820\""), "peer[0].endpoint: \"2001:db8::1:51820\" is not IP:PORT like 198.51.100.7:51820 or [2001:db8::1]:51820 (names are not resolved)"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"2001:db8::1\""), "(it has no port)"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"[2001:db8::1]:junk\""), "peer[0].endpoint: \"[2001:db8::1]:junk\" is not IP:PORT"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"[2001:db8::1]\""), "(it has no port)"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"[2001:db8::1]:0\""), "peer[0].endpoint: [2001:db8::1]:0: port 0"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"0.0.0.0:51820\""), "peer[0].endpoint: 0.0.0.0:51820 cannot be sent to"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"[ff02::1]:51820\""), "peer[0].endpoint: [ff02::1]:51820 cannot be sent to"),
            (g.replace("endpoint = \"198.18.0.2:51820\"", "endpoint = \"255.255.255.255:51820\""), "peer[0].endpoint: 255.255.255.255:51820 cannot be sent to"),
            (g.replace("address = \"100.64.0.1/24\"\n", ""), "missing field `address`"),
            (g.replace("name = \"vmtun0\"", "name = \"a-name-far-too-long\""), "interface.name"),
            (g.replace("role = \"old\"", "role = \"sideways\""), "unknown variant `sideways`"),
            (g.replace("via = \"100.64.0.2\"", "via = \"100.64.1.2\""), "migration.via"),
            (g.replace("addresses = [\"203.0.113.2\"]", "addresses = [\"198.51.100.2\"]"), "vm[0].addresses"),
            (g.replace("vif = \"vif0\"", "vif = \"eth0\""), "vm[0].vif"),
            (g.replace("listen_port = 51820", "listen_port = 70000"), "listen_port"),
            (g.replace("listen_port = 51820\n", "listen_port = 51820\nbusy_poll_us = 5000\n"), "interface.busy_poll_us: 5000 is above 1000"),
            (g.replace("[migration]", "mtu = 100\n[migration]").replace("listen_port = 51820\n", "listen_port = 51820\nmtu = 100\n"), "mtu"),
            (
                g.replace(
                    "[migration]",
                    &format!("[[peer]]\npublic_key = \"{PUB_C}\"\nallowed_ips = [\"100.64.0.3/32\"]\n\n[migration]"),
                ),
                "peer[1].public_key: duplicate peer",
            ),
            (
                g.replace(
                    "[migration]",
                    &format!("[[peer]]\npublic_key = \"{PUB_D}\"\nallowed_ips = [\"100.64.0.2/32\"]\n\n[migration]"),
                ),
                "peer[1].allowed_ips: 100.64.0.2/32 is also in peer[0]",
            ),
            (g.replace(PUB_C, PUB_B), "peer[0].public_key: is this host's own public key"),
            (g.replace("\"100.64.0.2/32\", \"203.0.113.0/29\"", "\"100.64.0.2/32\""), "migration.subnets"),
            (g.replace("role = \"old\"", "role = \"new\""), "must include 0.0.0.0/0"),
            (g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\ngateways = [\"198.18.2.1\", \"52:54:00:zz:00:01\"]"), "migration.gateways: \"52:54:00:zz:00:01\" is neither an IP address nor a MAC"),
            (g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\nnative_interfaces = [\"eth1\", \"br0\"]"), "migration.native_interfaces: br0 is listed twice"),
            (g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\nnative_interfaces = [\"eth1:0\"]"), "migration.native_interfaces: \"eth1:0\" is not a valid interface name"),
            (g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\ncutover_hold_ms = 60001"), "migration.cutover_hold_ms: 60001 is above 60000"),
            (g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\nhandover = \"never\""), "handover: unknown variant `never`, expected `first-frame` or `vif-gone`"),
            (
                g.replace("subnets = [\"203.0.113.0/29\"]", "subnets = [\"203.0.113.0/29\", \"100.64.0.0/26\"]"),
                "migration.subnets: 100.64.0.0/26 contains the tunnel's own address 100.64.0.1 (interface.address)",
            ),
            (
                g.replace("subnets = [\"203.0.113.0/29\"]", "subnets = [\"203.0.113.0/29\", \"100.64.0.128/25\"]"),
                "migration.subnets: 100.64.0.128/25 overlaps the tunnel's network 100.64.0.0/24 (interface.address)",
            ),
            (
                g.replace("100.64.0.1/24", "203.0.113.2/24")
                    .replace("\"100.64.0.2/32\", \"203.0.113.0/29\"", "\"0.0.0.0/0\""),
                "migration.subnets: 203.0.113.0/29 contains the tunnel's own address 203.0.113.2",
            ),
            (
                g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\nbridge = \"vmtun0\""),
                "migration.bridge: vmtun0 is the tunnel's own device (interface.name)",
            ),
            (
                g.replace("via = \"100.64.0.2\"", "via = \"100.64.0.2\"\nvif_prefix = \"vmtun\"")
                    .replace("vif = \"vif0\"", "vif = \"vmtun5\""),
                "migration.vif_prefix: \"vmtun\" matches the tunnel's own device vmtun0",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&text).expect_err(expected).to_string();
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
            assert!(!e.contains('\n'), "error spans several lines: {e:?}");
        }
    }

    #[test]
    fn control_group_is_root_only_by_default_and_resolved_by_name() {
        assert_eq!(parse(&good()).unwrap().control, Control::default());
        let with = |section: &str| parse(&format!("{}\n[control]\n{section}\n", good()));
        assert_eq!(with("").unwrap().control, Control::default());
        assert_eq!(
            with("group = \"root\"").unwrap().control.group,
            Some(Group {
                name: "root".into(),
                gid: 0
            })
        );
        let e = with("group = \"no-such-group-here\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("control.group: no group \"no-such-group-here\" on this host")
                && e.contains("groupadd"),
            "{e}"
        );
        let e = with("groups = \"root\"").unwrap_err().to_string();
        assert!(e.contains("unknown field `groups`"), "{e}");
    }

    #[test]
    fn metrics_are_off_by_default_and_listen_where_asked() {
        assert_eq!(parse(&good()).unwrap().metrics, None);
        let with = |section: &str| parse(&format!("{}\n[metrics]\n{section}\n", good()));
        let on = with("listen = \"127.0.0.1:9586\"")
            .unwrap()
            .metrics
            .unwrap();
        assert_eq!(on.listen, "127.0.0.1:9586".parse().unwrap());
        let v6 = with("listen = \"[::1]:9586\"").unwrap().metrics.unwrap();
        assert_eq!(v6.listen, "[::1]:9586".parse().unwrap());
        let cases = [
            (
                "listen = \"localhost:9586\"",
                "metrics.listen: \"localhost:9586\" is not IP:PORT like 127.0.0.1:9586 or [::1]:9586 (names are not resolved)",
            ),
            (
                "listen = \"127.0.0.1\"",
                "metrics.listen: \"127.0.0.1\" is not IP:PORT like 127.0.0.1:9586 or [::1]:9586 (it has no port)",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "metrics.listen: 127.0.0.1:0: port 0 would pick a random port",
            ),
            (
                "listen = \"127.0.0.1:70000\"",
                "metrics.listen: \"127.0.0.1:70000\" is not IP:PORT",
            ),
            (
                "listen = 9586",
                "listen: invalid type: integer `9586`, expected a string",
            ),
            ("", "missing field `listen`"),
            (
                "listen = \"127.0.0.1:9586\"\npath = \"/m\"",
                "unknown field `path`",
            ),
        ];
        for (section, expected) in cases {
            let e = with(section).expect_err(expected).to_string();
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
            assert!(!e.contains('\n'), "error spans several lines: {e:?}");
        }
    }

    #[test]
    fn subnets_and_vm_addresses_may_be_ipv6() {
        let v6 = good()
            .replace(
                "\"100.64.0.2/32\", \"203.0.113.0/29\"",
                "\"100.64.0.2/32\", \"203.0.113.0/29\", \"2001:db8:1::/64\"",
            )
            .replace(
                "subnets = [\"203.0.113.0/29\"]",
                "subnets = [\"203.0.113.0/29\", \"2001:db8:1::/64\"]",
            )
            .replace(
                "addresses = [\"203.0.113.2\"]",
                "addresses = [\"203.0.113.2\", \"2001:db8:1::2\"]",
            );
        let c = parse(&v6).unwrap();
        let m = c.migration.as_ref().unwrap();
        assert_eq!(m.subnets[1], "2001:db8:1::/64".parse::<IpNet>().unwrap());
        assert_eq!(
            c.vms[0].addresses[1],
            "2001:db8:1::2".parse::<IpAddr>().unwrap()
        );
        let cases = [
            // Role old: the IPv6 subnet must go to the new host through the tunnel.
            (
                v6.replace(", \"2001:db8:1::/64\"]\n\n[migration]", "]\n\n[migration]"),
                "migration.subnets: 2001:db8:1::/64 must be inside peer[0].allowed_ips",
            ),
            // Role new: IPv6 replies go anywhere through the old host.
            (
                v6.replace("role = \"old\"", "role = \"new\"").replace(
                    "\"100.64.0.2/32\", \"203.0.113.0/29\", \"2001:db8:1::/64\"",
                    "\"0.0.0.0/0\"",
                ),
                "peer[0].allowed_ips: must include ::/0 on role new",
            ),
            (
                v6.replace("\"2001:db8:1::2\"", "\"2001:db8:2::2\""),
                "vm[0].addresses: 2001:db8:2::2 is in none of migration.subnets",
            ),
            (
                v6.replace(
                    "\"2001:db8:1::/64\"]\nvia",
                    "\"2001:db8:1::/64\", \"2001:db8:1::/80\"]\nvia",
                ),
                "migration.subnets: 2001:db8:1::/80 overlaps 2001:db8:1::/64",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&text).expect_err(expected).to_string();
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
        // Role new with both default routes is fine.
        let new = v6.replace("role = \"old\"", "role = \"new\"").replace(
            "\"100.64.0.2/32\", \"203.0.113.0/29\", \"2001:db8:1::/64\"",
            "\"0.0.0.0/0\", \"::/0\"",
        );
        parse(&new).unwrap();
    }

    #[test]
    fn endpoints_may_be_ipv6_and_v4_mapped_ones_are_ipv4() {
        let with = |endpoint: &str| {
            parse(&good().replace("198.18.0.2:51820", endpoint))
                .unwrap()
                .peers[0]
                .endpoint
                .unwrap()
                .to_string()
        };
        assert_eq!(with("[2001:db8:18::2]:51820"), "[2001:db8:18::2]:51820");
        assert_eq!(with("[::ffff:198.18.0.2]:51820"), "198.18.0.2:51820");
        assert_eq!(with("198.18.0.2:51820"), "198.18.0.2:51820");
    }

    /// A fresh directory for one test's files, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("vmtun-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Writes `text` to `name` with `mode`.
        fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let file = self.0.join(name);
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            file
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_key_file(file: &Path) -> String {
        good().replace(
            &format!("private_key = \"{KEY_A}\""),
            &format!("private_key_file = \"{}\"", file.display()),
        )
    }

    #[test]
    fn a_private_key_file_reached_through_a_symlink_is_refused() {
        let dir = Scratch::new("key-symlink");
        let file = dir.file("private.key", KEY_A, 0o600);
        let link = dir.0.join("link.key");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = parse(&with_key_file(&link)).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(parse(&with_key_file(&file)).is_ok());
    }

    #[test]
    fn a_private_key_file_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to give a file away");
            return;
        }
        let dir = Scratch::new("key-owner");
        let file = dir.file("private.key", KEY_A, 0o600);
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let e = parse(&with_key_file(&file)).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(e.contains("chown"), "{e}");
    }

    #[test]
    fn a_group_readable_private_key_file_is_refused() {
        let dir = Scratch::new("key-group");
        let file = dir.file("private.key", KEY_A, 0o640);
        let e = parse(&with_key_file(&file)).unwrap_err().to_string();
        assert!(e.contains("permissions 0640"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn a_config_others_can_read_may_not_hold_the_private_key() {
        let dir = Scratch::new("config-inline");
        let inline = dir.file("inline.toml", &good(), 0o644);
        let e = Config::load(&inline).unwrap_err().to_string();
        assert!(e.contains("inline.toml has permissions 0644"), "{e}");
        assert!(e.contains("private_key_file"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        std::fs::set_permissions(&inline, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&inline).is_ok());
        let key = dir.file("private.key", KEY_A, 0o600);
        let by_file = dir.file("by-file.toml", &with_key_file(&key), 0o644);
        assert!(
            Config::load(&by_file).is_ok(),
            "no key in it: others may read it"
        );
    }

    #[test]
    fn private_key_file_must_not_be_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("vmtun-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("private.key");
        std::fs::write(&file, KEY_A).unwrap();
        let text = good().replace(
            &format!("private_key = \"{KEY_A}\""),
            &format!("private_key_file = \"{}\"", file.display()),
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("permissions 0644"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(parse(&text).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
