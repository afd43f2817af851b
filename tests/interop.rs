//! Interoperability with stock WireGuard (wireguard-go), and the harness's own check: a
//! wireguard-go pair must pass the same ping and transfer, or the harness is broken.
//!
//! ```text
//!   ns a                                         ns b
//!   ┌──────────────────────────┐                 ┌──────────────────────────┐
//!   │ vmtun | wireguard-go     │                 │ wireguard-go             │
//!   │ tun 100.64.0.1/24        │                 │ tun 100.64.0.2/24        │
//!   │ ul0 198.18.0.1/24 :51820 ├─────── veth ────┤ ul0 198.18.0.2/24 :51820 │
//!   └──────────────────────────┘                 └──────────────────────────┘
//! ```
//! Who initiates is forced by the config: the side without an endpoint for its peer cannot
//! start a handshake, so it must answer one.

mod common;

use common::transfer::transfer;
use common::*;

/// The harness checked against itself: wireguard-go in both namespaces.
#[test]
fn harness_wireguard_go_pair() -> Result<()> {
    preflight(&["wireguard-go", "wg", "ping"]);
    let net = Pair::new("wgpair")?;
    let (ka, kb) = (wg_keypair(), wg_keypair());
    let _b = start_wggo(
        &net.b,
        &net.scratch,
        &kb,
        PORT,
        TUNNEL_B,
        &PeerCfg::new(&ka.public, None, TUNNEL_A),
    )?;
    let a = start_wggo(
        &net.a,
        &net.scratch,
        &ka,
        PORT,
        TUNNEL_A,
        &PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B),
    )?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    check(a.latest_handshake(&kb.public).is_some(), || {
        "wg show reports no handshake after a successful ping".into()
    })?;
    let report = transfer(&net.a, &net.b, TUNNEL_B, BIG)?;
    eprintln!(
        "wireguard-go pair: {} bytes in {:?}",
        report.received, report.elapsed
    );
    Ok(())
}

/// vmtun initiates: wireguard-go in B has no endpoint for A.
#[test]
fn interop_vmtun_initiates() -> Result<()> {
    preflight(&["wireguard-go", "wg", "ping"]);
    let net = Pair::new("iopvm")?;
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
            vec![PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B)],
        ),
    )?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    check(b.latest_handshake(&ka.public).is_some(), || {
        "wireguard-go reports no handshake with vmtun after a successful ping".into()
    })?;
    check(
        b.endpoint(&ka.public).as_deref() == Some(&format!("{UNDERLAY_A}:{PORT}")[..]),
        || format!("wireguard-go learned endpoint {:?}", b.endpoint(&ka.public)),
    )?;
    transfer(&net.a, &net.b, TUNNEL_B, BIG)?;
    transfer(&net.b, &net.a, TUNNEL_A, BIG / 5)?;
    let status = a.status()?;
    check(status.handshake_secs(&kb.public).is_some(), || {
        format!(
            "vmtun status shows no handshake with wireguard-go: {:?}",
            status.0
        )
    })?;
    Ok(())
}

/// wireguard-go initiates: vmtun in A has no endpoint for B and must learn it.
#[test]
fn interop_wireguard_go_initiates() -> Result<()> {
    preflight(&["wireguard-go", "wg", "ping"]);
    let net = Pair::new("iopwg")?;
    let (ka, kb) = (vmtun_keypair(), wg_keypair());
    let a = Vmtun::start(
        &net.a,
        &net.scratch,
        VmtunCfg::new(
            &ka,
            TUNNEL_A,
            vec![PeerCfg::new(&kb.public, None, TUNNEL_B)],
        ),
    )?;
    let b = start_wggo(
        &net.b,
        &net.scratch,
        &kb,
        PORT,
        TUNNEL_B,
        &PeerCfg::new(&ka.public, Some(UNDERLAY_A), TUNNEL_A),
    )?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    check(b.latest_handshake(&ka.public).is_some(), || {
        "wireguard-go reports no handshake with vmtun after a successful ping".into()
    })?;
    transfer(&net.b, &net.a, TUNNEL_A, BIG)?;
    transfer(&net.a, &net.b, TUNNEL_B, BIG / 5)?;
    let status = a.status()?;
    check(
        status.endpoint(&kb.public).as_deref() == Some(&format!("{UNDERLAY_B}:{PORT}")[..]),
        || {
            format!(
                "vmtun did not learn wireguard-go's endpoint: {:?}",
                status.0
            )
        },
    )?;
    Ok(())
}
