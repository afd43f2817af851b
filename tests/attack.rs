//! An attacker on the underlay: replayed tunnel packets, random and truncated datagrams,
//! and a stranger whose key B does not know. None of it may reach B's TUN device, all of
//! it must be counted as drops, and the real traffic between A and B must not notice.
//!
//! ```text
//!   ns a  vmtun 100.64.0.1   ul0 198.18.0.1 ──┐
//!   ns b  vmtun 100.64.0.2   ul0 198.18.0.2 ──┤   (B captures what arrives for :51820)
//!   ns m  attacker           ul0 198.18.0.3 ──┼── br0 (ns sw)
//!   ns c  vmtun 100.64.0.3   ul0 198.18.0.4 ──┘   (key unknown to B)
//! ```

mod common;

use common::capture::{Capture, Garbage, send_datagrams};
use common::transfer::{TRANSFER_TIMEOUT, Transfer, transfer};
use common::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const UNDERLAY_M: &str = "198.18.0.3";
const UNDERLAY_C: &str = "198.18.0.4";
/// The drop reason (`DropReason::UnknownPeer` in src/noise/drops.rs) for a handshake from
/// a key that is not configured.
const UNKNOWN_PEER: &str = "unknown_peer";

/// The attack mix: every captured datagram replayed, truncated copies of them, and random
/// datagrams of each message type and of no type.
fn attack(captured: &[Vec<u8>], rng: &mut Garbage) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = captured.to_vec();
    for packet in captured {
        let cut = 1 + (rng.next_u64() as usize) % packet.len().saturating_sub(1).max(1);
        out.push(packet[..cut].to_vec());
    }
    for kind in [0u8, 1, 2, 3, 4, 5, 255] {
        for len in [1usize, 3, 4, 15, 16, 31, 32, 64, 92, 148, 200, 1400] {
            out.push(rng.message(kind, len));
        }
    }
    for _ in 0..100 {
        let len = 1 + (rng.next_u64() as usize) % 1500;
        out.push(rng.bytes(len));
    }
    out
}

/// The attack harness checked against the reference: wireguard-go must keep every attack
/// datagram off its TUN device and carry the transfer intact, or the harness is wrong.
/// Paced pings from A to B while `capture` records at B: a handshake initiation and a few
/// hundred data packets, none of them lost before the tunnel saw them (a datagram dropped
/// by a full socket buffer was never seen, so replaying it would be no replay).
fn record_real_traffic(a_ns: &Netns, b_ns: &Netns, capture: Capture) -> Result<Vec<Vec<u8>>> {
    let overflows = udp_rcvbuf_errors(b_ns)?;
    wait_ping(a_ns, TUNNEL_B, WAIT)?;
    a_ns.run(
        "ping",
        &["-q", "-c", "300", "-i", "0.005", "-s", "1000", TUNNEL_B],
    )?;
    let captured = capture.stop()?;
    check(udp_rcvbuf_errors(b_ns)? == overflows, || {
        "B's UDP socket overflowed while recording: the capture holds unseen packets".into()
    })?;
    check(
        captured.len() >= 300 && captured.iter().any(|p| p.first() == Some(&1)),
        || {
            format!(
                "captured {} datagrams, expected an initiation and 300 pings",
                captured.len()
            )
        },
    )?;
    Ok(captured)
}

#[test]
fn harness_attack_against_wireguard_go() -> Result<()> {
    preflight(&["wireguard-go", "wg", "ping"]);
    let lan = Lan::new("attackwg")?;
    let a_ns = lan.host("a", UNDERLAY_A)?;
    let b_ns = lan.host("b", UNDERLAY_B)?;
    let m_ns = lan.host("m", UNDERLAY_M)?;
    let (ka, kb) = (wg_keypair(), wg_keypair());
    let b = start_wggo(
        &b_ns,
        &lan.scratch,
        &kb,
        PORT,
        TUNNEL_B,
        &PeerCfg::new(&ka.public, None, TUNNEL_A),
    )?;
    let _a = start_wggo(
        &a_ns,
        &lan.scratch,
        &ka,
        PORT,
        TUNNEL_A,
        &PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B),
    )?;
    let b_addr: Ipv4Addr = UNDERLAY_B.parse().expect("constant");
    let capture = Capture::start(&b_ns, UNDERLAY_DEV, b_addr, PORT)?;
    let captured = record_real_traffic(&a_ns, &b_ns, capture)?;
    let rx_before = b_ns.link_stat(&b.name, "rx_packets")?;
    let target = SocketAddr::new(b_addr.into(), PORT);
    send_datagrams(&m_ns, target, attack(&captured, &mut Garbage::new(7)))?;
    std::thread::sleep(Duration::from_millis(500));
    let rx_after = b_ns.link_stat(&b.name, "rx_packets")?;
    check(rx_after == rx_before, || {
        format!(
            "{} attack packets reached wireguard-go's TUN",
            rx_after - rx_before
        )
    })?;
    let endpoint = b.endpoint(&ka.public);
    check(
        endpoint.as_deref() == Some(&format!("{UNDERLAY_A}:{PORT}")[..]),
        || format!("the attack moved wireguard-go's endpoint to {endpoint:?}"),
    )?;
    transfer(&a_ns, &b_ns, TUNNEL_B, BIG / 5)?;
    Ok(())
}

#[test]
fn replayed_random_and_truncated_datagrams_are_dropped_and_counted() -> Result<()> {
    preflight(&["ping"]);
    let lan = Lan::new("attack")?;
    let a_ns = lan.host("a", UNDERLAY_A)?;
    let b_ns = lan.host("b", UNDERLAY_B)?;
    let m_ns = lan.host("m", UNDERLAY_M)?;
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let b = Vmtun::start(
        &b_ns,
        &lan.scratch,
        VmtunCfg::new(
            &kb,
            TUNNEL_B,
            vec![PeerCfg::new(&ka.public, Some(UNDERLAY_A), TUNNEL_A)],
        ),
    )?;
    let a = Vmtun::start(
        &a_ns,
        &lan.scratch,
        VmtunCfg::new(
            &ka,
            TUNNEL_A,
            vec![PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B)],
        ),
    )?;

    // Record real traffic: the handshake initiation, data and keepalives from A.
    let b_addr: Ipv4Addr = UNDERLAY_B.parse().expect("constant");
    let capture = Capture::start(&b_ns, UNDERLAY_DEV, b_addr, PORT)?;
    let captured = record_real_traffic(&a_ns, &b_ns, capture)?;

    // Quiet tunnel: every attack datagram must be dropped, counted, and kept off the TUN.
    let mut rng = Garbage::new(0x5eed);
    let target = SocketAddr::new(b_addr.into(), PORT);
    let endpoint_before = b.status()?.endpoint(a.public_key());
    let drops_before = b.status()?.drops_total();
    let rx_before = b.tun_rx_packets()?;
    let sent = send_datagrams(&m_ns, target, attack(&captured, &mut rng))? as u64;
    let counted = wait_for(WAIT, "B to count every attack datagram as a drop", || {
        let drops = b.status().ok()?.drops_total().saturating_sub(drops_before);
        (drops >= sent).then_some(drops)
    });
    let status = b.status()?;
    check(counted.is_ok(), || {
        format!(
            "B counted {} drops for {sent} attack datagrams: {:?}",
            status.drops_total().saturating_sub(drops_before),
            status.0
        )
    })?;
    eprintln!(
        "sent {sent} attack datagrams; B counted {} more drops: {}",
        status.drops_total().saturating_sub(drops_before),
        status.0["drops"]
    );
    let rx_after = b.tun_rx_packets()?;
    check(rx_after == rx_before, || {
        format!(
            "{} packets reached B's TUN during the attack",
            rx_after - rx_before
        )
    })?;
    check(status.endpoint(a.public_key()) == endpoint_before, || {
        format!(
            "the attack moved B's endpoint for A from {endpoint_before:?} to {:?}",
            status.endpoint(a.public_key())
        )
    })?;

    // Attack while a real transfer runs: it must arrive intact.
    let xfer = Transfer::start(&a_ns, &b_ns, TUNNEL_B, BIG / 5, Some(BIG / 50))?;
    xfer.wait_milestone(Duration::from_secs(60))?;
    xfer.resume();
    for _ in 0..3 {
        send_datagrams(&m_ns, target, attack(&captured, &mut rng))?;
    }
    xfer.finish(TRANSFER_TIMEOUT)?.check(BIG / 5)?;
    wait_ping(&b_ns, TUNNEL_A, WAIT)?;
    let status = b.status()?;
    check(status.endpoint(a.public_key()) == endpoint_before, || {
        format!(
            "after the attack B's endpoint for A is {:?}",
            status.endpoint(a.public_key())
        )
    })?;
    Ok(())
}

#[test]
fn peer_with_unknown_key_gets_no_session() -> Result<()> {
    preflight(&["ping"]);
    let lan = Lan::new("stranger")?;
    let a_ns = lan.host("a", UNDERLAY_A)?;
    let b_ns = lan.host("b", UNDERLAY_B)?;
    let c_ns = lan.host("c", UNDERLAY_C)?;
    let (ka, kb, kc) = (vmtun_keypair(), vmtun_keypair(), vmtun_keypair());
    let b = Vmtun::start(
        &b_ns,
        &lan.scratch,
        VmtunCfg::new(
            &kb,
            TUNNEL_B,
            vec![PeerCfg::new(&ka.public, Some(UNDERLAY_A), TUNNEL_A)],
        ),
    )?;
    let _a = Vmtun::start(
        &a_ns,
        &lan.scratch,
        VmtunCfg::new(
            &ka,
            TUNNEL_A,
            vec![PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B)],
        ),
    )?;
    // C knows B's key and address; B has never heard of C.
    let mut to_b = PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B);
    to_b.allowed_ips = vec![format!("{TUNNEL_B}/32"), format!("{TUNNEL_A}/32")];
    let c = Vmtun::start(
        &c_ns,
        &lan.scratch,
        VmtunCfg::new(&kc, TUNNEL_C, vec![to_b]),
    )?;

    let unknown_before = b.status()?.drops(UNKNOWN_PEER);
    for _ in 0..3 {
        check(!c_ns.answers_ping(TUNNEL_B), || {
            "the stranger's ping was answered".into()
        })?;
    }
    let status_c = c.status()?;
    check(status_c.handshake_secs(&kb.public).is_none(), || {
        format!("the stranger reports a handshake with B: {:?}", status_c.0)
    })?;
    let status_b = b.status()?;
    check(status_b.peer(&kc.public).is_none(), || {
        format!("B lists the stranger as a peer: {:?}", status_b.0)
    })?;
    let counted = wait_for(
        WAIT,
        &format!("B to count the stranger's initiations as {UNKNOWN_PEER}"),
        || (b.status().ok()?.drops(UNKNOWN_PEER) > unknown_before).then_some(()),
    );
    check(counted.is_ok(), || {
        format!(
            "B counted no {UNKNOWN_PEER} drop for the stranger's initiations: {:?}",
            b.status().map(|s| s.0)
        )
    })?;
    wait_ping(&a_ns, TUNNEL_B, WAIT)?;
    Ok(())
}
