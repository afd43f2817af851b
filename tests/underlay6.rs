//! The tunnel over an IPv6 underlay, and one dual-stack socket for IPv4 and IPv6 peers.
//!
//! ```text
//!   ipv6 pair:   ns a ul0 2001:db8:18::1/64 ──── veth ──── ul0 2001:db8:18::2/64 ns b
//!
//!   dual stack:  ns p4 ul0 198.18.0.2/24 ─── ul4 198.18.0.1/24 ┐
//!                                                               ns h  vmtun [::]:51820
//!   ns p6 ul0 2001:db8:18::2/64 ─── ul6 2001:db8:18::1/64 ──────┘
//! ```
//!
//! Tunnel addresses stay IPv4 (100.64.0.0/24); only the underlay changes. IPv6 underlay
//! addresses are added with `nodad`: duplicate address detection would hold them
//! "tentative" (unusable) for a second or two.

mod common;

use common::transfer::transfer;
use common::*;

/// A's and B's IPv6 underlay addresses.
const UNDERLAY6_A: &str = "2001:db8:18::1";
const UNDERLAY6_B: &str = "2001:db8:18::2";
/// Prefix length of the IPv6 underlay.
const UNDERLAY6_PREFIX: u8 = 64;
/// Bytes of the checksummed transfer.
const TRANSFER: usize = 10 * 1024 * 1024;

/// `[addr]` as `PeerCfg::new` wants it: it appends `:PORT`.
fn bracketed(addr: &str) -> String {
    format!("[{addr}]")
}

/// A host namespace with IPv6 on (the shared harness turns it off), whatever the
/// defaults new namespaces get on this machine.
fn host6(tag: &str) -> Result<Netns> {
    let ns = Netns::new(tag)?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "0")?;
    Ok(ns)
}

/// Adds an IPv6 underlay address at once usable (no duplicate address detection).
fn add_address6(ns: &Netns, dev: &str, addr: &str) -> Result<()> {
    let cidr = format!("{addr}/{UNDERLAY6_PREFIX}");
    lab::check_lab_address(&cidr)?;
    ns.ip(&["addr", "add", &cidr, "dev", dev, "nodad"])
        .map(drop)
}

/// Two hosts whose underlay is IPv6 only: no IPv4 address on the veth at all.
struct Pair6 {
    scratch: Scratch,
    a: Netns,
    b: Netns,
}

impl Pair6 {
    fn new(test: &str) -> Result<Self> {
        let scratch = Scratch::new(test)?;
        let a = host6("a")?;
        let b = host6("b")?;
        lab::veth(&a, UNDERLAY_DEV, &b, UNDERLAY_DEV)?;
        add_address6(&a, UNDERLAY_DEV, UNDERLAY6_A)?;
        add_address6(&b, UNDERLAY_DEV, UNDERLAY6_B)?;
        Ok(Self { scratch, a, b })
    }
}

/// The endpoint `status` shows for `key`, failing the test with the whole status if it
/// is not `want`.
fn check_endpoint(vmtun: &Vmtun, who: &str, key: &str, want: &str) -> Result<()> {
    let status = vmtun.status()?;
    let shown = status.endpoint(key);
    check(shown.as_deref() == Some(want), || {
        format!(
            "{who}'s status shows endpoint {shown:?}, not {want}: {}",
            status.0
        )
    })
}

/// The listening sockets on UDP `PORT` in `ns`, as `ss` prints their local address.
fn listening(ns: &Netns) -> Result<String> {
    ns.run("ss", &["-Hlun", &format!("sport = :{PORT}")])
}

/// A knows B's IPv6 endpoint; B learns A's from the handshake. Ping both ways, 10 MB
/// checksummed, and both statuses show the IPv6 endpoints.
#[test]
fn ipv6_underlay_ping_transfer_and_status() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair6::new("ul6")?;
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let ca = VmtunCfg::new(
        &ka,
        TUNNEL_A,
        vec![PeerCfg::new(
            &kb.public,
            Some(&bracketed(UNDERLAY6_B)),
            TUNNEL_B,
        )],
    );
    let cb = VmtunCfg::new(
        &kb,
        TUNNEL_B,
        vec![PeerCfg::new(&ka.public, None, TUNNEL_A)],
    );
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;

    let report = transfer(&net.a, &net.b, TUNNEL_B, TRANSFER)?;
    eprintln!(
        "ipv6 underlay: {} bytes A->B in {:?}",
        report.received, report.elapsed
    );
    check_endpoint(&a, "A", b.public_key(), &format!("[{UNDERLAY6_B}]:{PORT}"))?;
    check_endpoint(&b, "B", a.public_key(), &format!("[{UNDERLAY6_A}]:{PORT}"))?;
    let text = a.status_text()?;
    check(text.contains(&format!("[{UNDERLAY6_B}]:{PORT}")), || {
        format!("`vmtun status` does not show the IPv6 endpoint:\n{text}")
    })?;
    check(a.status()?.drops("udp_send_failed") == 0, || {
        format!(
            "A failed UDP sends: {}",
            a.status().map(|s| s.0).unwrap_or_default()
        )
    })?;
    Ok(())
}

/// One vmtun socket, two peers: P4 reaches the hub over IPv4, P6 over IPv6. The hub
/// learns both endpoints; the IPv4 one shows as plain IPv4, not `::ffff:198.18.0.2`.
#[test]
fn dual_stack_socket_serves_an_ipv4_and_an_ipv6_peer() -> Result<()> {
    preflight(&["ping"]);
    let scratch = Scratch::new("dual")?;
    let h = host6("h")?;
    let p4 = host6("p4")?;
    let p6 = host6("p6")?;
    lab::veth(&h, "ul4", &p4, UNDERLAY_DEV)?;
    lab::veth(&h, "ul6", &p6, UNDERLAY_DEV)?;
    h.add_address("ul4", &format!("{UNDERLAY_A}/{UNDERLAY_PREFIX}"))?;
    p4.add_address(UNDERLAY_DEV, &format!("{UNDERLAY_B}/{UNDERLAY_PREFIX}"))?;
    add_address6(&h, "ul6", UNDERLAY6_A)?;
    add_address6(&p6, UNDERLAY_DEV, UNDERLAY6_B)?;

    let (kh, k4, k6) = (vmtun_keypair(), vmtun_keypair(), vmtun_keypair());
    let ch = VmtunCfg::new(
        &kh,
        TUNNEL_A,
        vec![
            PeerCfg::new(&k4.public, None, TUNNEL_B),
            PeerCfg::new(&k6.public, None, TUNNEL_C),
        ],
    );
    let c4 = VmtunCfg::new(
        &k4,
        TUNNEL_B,
        vec![PeerCfg::new(&kh.public, Some(UNDERLAY_A), TUNNEL_A)],
    );
    let c6 = VmtunCfg::new(
        &k6,
        TUNNEL_C,
        vec![PeerCfg::new(
            &kh.public,
            Some(&bracketed(UNDERLAY6_A)),
            TUNNEL_A,
        )],
    );
    let hub = Vmtun::start(&h, &scratch, ch)?;
    let _v4 = Vmtun::start(&p4, &scratch, c4)?;
    let _v6 = Vmtun::start(&p6, &scratch, c6)?;
    let sockets = listening(&h)?;
    check(
        sockets.contains(&format!("*:{PORT}")) || sockets.contains(&format!("[::]:{PORT}")),
        || format!("the hub's socket is not dual-stack: {sockets}"),
    )?;

    wait_ping(&p4, TUNNEL_A, WAIT)?;
    wait_ping(&p6, TUNNEL_A, WAIT)?;
    check_endpoint(&hub, "the hub", &k4.public, &format!("{UNDERLAY_B}:{PORT}"))?;
    check_endpoint(
        &hub,
        "the hub",
        &k6.public,
        &format!("[{UNDERLAY6_B}]:{PORT}"),
    )?;
    // The hub sends to both through the one socket (IPv4 v4-mapped), GSO batches too.
    wait_ping(&h, TUNNEL_B, WAIT)?;
    wait_ping(&h, TUNNEL_C, WAIT)?;
    for (to, addr) in [(&p4, TUNNEL_B), (&p6, TUNNEL_C)] {
        let report = transfer(&h, to, addr, TRANSFER)?;
        eprintln!(
            "dual stack: {} bytes hub->{addr} in {:?}",
            report.received, report.elapsed
        );
    }
    let status = hub.status()?;
    check(status.drops("udp_send_failed") == 0, || {
        format!("the hub failed UDP sends: {}", status.0)
    })?;
    Ok(())
}

/// IPv6 disabled by sysctl (the shared harness's hosts): vmtun falls back to an IPv4
/// socket, says so once, and the tunnel works as before.
#[test]
fn without_ipv6_the_socket_falls_back_to_ipv4() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("noip6")?;
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let ca = VmtunCfg::new(
        &ka,
        TUNNEL_A,
        vec![PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B)],
    );
    let cb = VmtunCfg::new(
        &kb,
        TUNNEL_B,
        vec![PeerCfg::new(&ka.public, None, TUNNEL_A)],
    );
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    let sockets = listening(&net.a)?;
    check(sockets.contains(&format!("0.0.0.0:{PORT}")), || {
        format!("with IPv6 disabled the socket is not IPv4: {sockets}")
    })?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    check_endpoint(&b, "B", a.public_key(), &format!("{UNDERLAY_A}:{PORT}"))?;
    let log = a.process().map(|p| p.stderr()).unwrap_or_default();
    let said = log.matches("IPv4 only").count();
    check(said == 1, || {
        format!("the fallback is logged {said} times, not once:\n{log}")
    })?;
    Ok(())
}

/// wireguard-go, the reference, over the IPv6 underlay: vmtun initiates to B's IPv6
/// endpoint; wireguard-go learns vmtun's.
#[test]
fn interop_with_wireguard_go_over_ipv6() -> Result<()> {
    preflight(&["wireguard-go", "wg", "ping"]);
    let net = Pair6::new("iop6")?;
    let (ka, kb) = (vmtun_keypair(), wg_keypair());
    let b = start_wggo(
        &net.b,
        &net.scratch,
        &kb,
        PORT,
        TUNNEL_B,
        &PeerCfg::new(&ka.public, None, TUNNEL_A),
    )?;
    let a = Vmtun::start(
        &net.a,
        &net.scratch,
        VmtunCfg::new(
            &ka,
            TUNNEL_A,
            vec![PeerCfg::new(
                &kb.public,
                Some(&bracketed(UNDERLAY6_B)),
                TUNNEL_B,
            )],
        ),
    )?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    let learned = b.endpoint(&ka.public);
    check(
        learned.as_deref() == Some(&format!("[{UNDERLAY6_A}]:{PORT}")[..]),
        || format!("wireguard-go learned endpoint {learned:?}"),
    )?;
    let report = transfer(&net.b, &net.a, TUNNEL_A, TRANSFER)?;
    eprintln!(
        "wireguard-go -> vmtun over ipv6: {} bytes in {:?}",
        report.received, report.elapsed
    );
    check_endpoint(&a, "vmtun", &kb.public, &format!("[{UNDERLAY6_B}]:{PORT}"))?;
    Ok(())
}
