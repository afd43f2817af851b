//! The tunnel harness shared by the namespace tests: topologies built from the lab
//! (`vmtun::lab`), `vmtun` and `wireguard-go` instances, ping, a checksummed TCP transfer
//! and a UDP capture. Every test calls [`preflight`] first, so a missing tool or a
//! non-root run fails loudly instead of skipping.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod capture;
pub mod instance;
pub mod transfer;
pub mod wggo;

pub use instance::{PeerCfg, Status, Stopped, Vmtun, VmtunCfg, run_files, run_vmtun};
pub use wggo::{WgGo, start_wggo};

pub use ::vmtun::lab::{self, LabError, Netns, Result, Scratch, wait_for, wait_until};
use std::process::Command;
use std::time::Duration;

/// Ceiling for things that should happen at once (a device appearing, a ping, an exit).
/// Generous on purpose: tests wait for the event and never time it; a shared 2-core
/// machine can stall for seconds, and speed belongs in the benchmarks.
pub const WAIT: Duration = Duration::from_secs(30);

/// The underlay: host A, host B, and extra hosts on a switched underlay.
pub const UNDERLAY_A: &str = "198.18.0.1";
/// Host B's underlay address.
pub const UNDERLAY_B: &str = "198.18.0.2";
/// Prefix length of the underlay subnet.
pub const UNDERLAY_PREFIX: u8 = 24;
/// Tunnel addresses of A, B (and C, the stranger in the attacker tests).
pub const TUNNEL_A: &str = "100.64.0.1";
/// B's tunnel address.
pub const TUNNEL_B: &str = "100.64.0.2";
/// C's tunnel address.
pub const TUNNEL_C: &str = "100.64.0.3";
/// Prefix length of the tunnel subnet.
pub const TUNNEL_PREFIX: u8 = 24;
/// Every tunnel endpoint listens here (each in its own namespace).
pub const PORT: u16 = 51820;
/// Name of the underlay interface in every host namespace.
pub const UNDERLAY_DEV: &str = "ul0";
/// Bytes of the big transfer the tests require.
pub const BIG: usize = 50 * 1024 * 1024;

/// Path of the `vmtun` binary under test.
pub const VMTUN: &str = env!("CARGO_BIN_EXE_vmtun");

/// Fails the test (never skips it) unless we are root and every `tools` binary is on
/// `PATH`; installs the lab's Ctrl-C cleanup.
pub fn preflight(tools: &[&str]) {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the namespace tests need root (they create network namespaces): run them as root, e.g. via scripts/test.sh"
    );
    for tool in ["ip", "sysctl", "ss"].iter().chain(tools) {
        assert!(
            lab::process::on_path(tool),
            "`{tool}` is not installed or not on PATH: run scripts/setup.sh"
        );
    }
    lab::install_signal_cleanup().expect("installing the lab's signal cleanup");
}

/// A host namespace with its underlay interface `ul0` addressed and IPv6 off.
fn host(tag: &str) -> Result<Netns> {
    let ns = Netns::new(tag)?;
    ns.disable_ipv6()?;
    Ok(ns)
}

/// Two hosts joined by one veth: the plain underlay.
///
/// ```text
///   ns a                          ns b
///   ul0 198.18.0.1/24 ─────────── ul0 198.18.0.2/24
/// ```
pub struct Pair {
    /// Configs, keys and logs of this test.
    pub scratch: Scratch,
    /// Host A.
    pub a: Netns,
    /// Host B.
    pub b: Netns,
}

impl Pair {
    /// Builds the pair; `test` tags the namespaces and the scratch directory.
    pub fn new(test: &str) -> Result<Self> {
        let scratch = Scratch::new(test)?;
        let a = host("a")?;
        let b = host("b")?;
        lab::veth(&a, UNDERLAY_DEV, &b, UNDERLAY_DEV)?;
        a.add_address(UNDERLAY_DEV, &format!("{UNDERLAY_A}/{UNDERLAY_PREFIX}"))?;
        b.add_address(UNDERLAY_DEV, &format!("{UNDERLAY_B}/{UNDERLAY_PREFIX}"))?;
        Ok(Self { scratch, a, b })
    }
}

/// Two hosts joined through a third namespace whose [`lab::impair::Wire`] carries the
/// frames, dropping and delaying them as `impairment` says (netem in userspace).
///
/// ```text
///   ns a                       ns wan                      ns b
///   ul0 198.18.0.1/24 ─── wa ─ Wire (loss, delay) ─ wb ─── ul0 198.18.0.2/24
/// ```
pub struct Wan {
    /// Configs, keys and logs of this test.
    pub scratch: Scratch,
    /// Host A.
    pub a: Netns,
    /// Host B.
    pub b: Netns,
    /// The wire; stopped before the namespaces go.
    pub wire: Option<lab::impair::Wire>,
    wan: Netns,
}

impl Wan {
    /// Builds the hosts and the wire; `test` tags the namespaces and the scratch directory.
    pub fn new(test: &str, impairment: lab::impair::Impairment) -> Result<Self> {
        let scratch = Scratch::new(test)?;
        let a = host("a")?;
        let b = host("b")?;
        let wan = host("wan")?;
        for (ns, end, addr) in [(&a, "wa", UNDERLAY_A), (&b, "wb", UNDERLAY_B)] {
            lab::veth(ns, UNDERLAY_DEV, &wan, end)?;
            ns.add_address(UNDERLAY_DEV, &format!("{addr}/{UNDERLAY_PREFIX}"))?;
            // One packet per frame, so the wire's loss is per packet (see lab::impair).
            ns.ip(&["link", "set", UNDERLAY_DEV, "gso_max_segs", "1"])?;
        }
        let wire = lab::impair::Wire::start(&wan, "wa", "wb", impairment)?;
        Ok(Self {
            scratch,
            a,
            b,
            wire: Some(wire),
            wan,
        })
    }
}

/// Hosts on a switched underlay: a bridge in its own namespace, one veth per host.
///
/// ```text
///   ns a ul0 .1 ──┐
///   ns b ul0 .2 ──┼── br0 (ns sw)        all in 198.18.0.0/24
///   ns m ul0 .3 ──┘   ...
/// ```
pub struct Lan {
    /// Configs, keys and logs of this test.
    pub scratch: Scratch,
    /// The switch; declared after the hosts' users, dropped last among the namespaces.
    pub switch: Netns,
    ports: std::cell::Cell<u32>,
}

impl Lan {
    /// Builds the switch (a bridge `br0` in namespace `sw`).
    pub fn new(test: &str) -> Result<Self> {
        let scratch = Scratch::new(test)?;
        let switch = host("sw")?;
        switch.add_bridge("br0")?;
        Ok(Self {
            scratch,
            switch,
            ports: std::cell::Cell::new(0),
        })
    }

    /// A new host namespace plugged into the switch with underlay address `addr`
    /// (e.g. `198.18.0.3`, /24).
    pub fn host(&self, tag: &str, addr: &str) -> Result<Netns> {
        let ns = host(tag)?;
        let port = format!("p{}", self.ports.get());
        self.ports.set(self.ports.get() + 1);
        lab::veth(&ns, UNDERLAY_DEV, &self.switch, &port)?;
        self.switch.set_master(&port, "br0")?;
        ns.add_address(UNDERLAY_DEV, &format!("{addr}/{UNDERLAY_PREFIX}"))?;
        Ok(ns)
    }
}

/// A private/public key pair in WireGuard's base64 form.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// Private key.
    pub private: String,
    /// Public key.
    pub public: String,
}

/// A key pair from `vmtun keygen` / `vmtun pubkey` (pure commands: no namespace needed).
pub fn vmtun_keypair() -> KeyPair {
    keypair(VMTUN, "keygen", "pubkey")
}

/// A key pair from `wg genkey` / `wg pubkey`.
pub fn wg_keypair() -> KeyPair {
    keypair("wg", "genkey", "pubkey")
}

fn keypair(program: &str, genkey: &str, pubkey: &str) -> KeyPair {
    use std::io::Write as _;
    let out = Command::new(program)
        .arg(genkey)
        .output()
        .unwrap_or_else(|e| panic!("running `{program} {genkey}`: {e}"));
    assert!(
        out.status.success(),
        "`{program} {genkey}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut child = Command::new(program)
        .arg(pubkey)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running `{program} {pubkey}`: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{private}\n").as_bytes())
        .expect("writing the private key to pubkey");
    let out = child.wait_with_output().expect("waiting for pubkey");
    assert!(
        out.status.success(),
        "`{program} {pubkey}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(public.len(), 44, "`{program} {pubkey}` printed {public:?}");
    KeyPair { private, public }
}

/// Pings until one echo is answered, at most `timeout`.
pub fn wait_ping(ns: &Netns, addr: &str, timeout: Duration) -> Result<()> {
    wait_until(
        timeout,
        &format!("a ping from {} to {addr}", ns.name()),
        || ns.answers_ping(addr),
    )
}

/// Turns a failed lab step into a test failure that also says which step.
pub fn check(condition: bool, message: impl FnOnce() -> String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(LabError::Failed(message()))
    }
}

/// `RcvbufErrors` of `/proc/net/snmp` in `ns`: UDP datagrams dropped because a socket's
/// receive buffer was full.
pub fn udp_rcvbuf_errors(ns: &Netns) -> Result<u64> {
    let snmp = ns.run("cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    names
        .zip(values)
        .and_then(|(names, values)| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == "RcvbufErrors")
                .and_then(|(_, value)| value.parse().ok())
        })
        .ok_or_else(|| LabError::Failed(format!("no Udp RcvbufErrors in /proc/net/snmp: {snmp}")))
}

/// A config template with `{IFACE}`, `{KEY}` (this host's private key) and `{PEER}` (the
/// peer's public key) filled in.
pub fn fill(template: &str, iface: &str, own: &KeyPair, peer: &KeyPair) -> String {
    template
        .replace("{IFACE}", iface)
        .replace("{KEY}", &own.private)
        .replace("{PEER}", &peer.public)
}

/// Everything `up`, `check` or a refused config could change in a namespace, as text:
/// links, addresses, routes, rules, the nftables ruleset and the IPv4 sysctls. Not `ip
/// neigh`: the neighbour cache is the kernel's, not configuration, and the preflight's
/// handshake probe of the peer fills it.
pub fn snapshot(ns: &Netns) -> Result<String> {
    let mut text = String::new();
    for args in [
        &["link", "show"][..],
        &["addr", "show"],
        &["route", "show", "table", "all"],
        &["rule", "show"],
        &["-6", "route", "show", "table", "all"],
        &["-6", "rule", "show"],
    ] {
        // A veth's peer namespace is left out: `ip` names it by looking through every
        // namespace, which fails now and then while other tests delete theirs.
        let out: Vec<String> = (ns.ip(args)?.lines())
            .map(|l| match l.find(" link-netns") {
                Some(at) => l[..at].to_owned(),
                None => l.to_owned(),
            })
            .collect();
        text += &format!("## ip {}\n{}\n", args.join(" "), out.join("\n"));
    }
    text += &format!("## nft\n{}", ns.run("nft", &["list", "ruleset"])?);
    for tree in ["net.ipv4", "net.ipv6"] {
        text += &format!("## sysctl {tree}\n{}", ns.run("sysctl", &[tree])?);
    }
    Ok(text)
}
