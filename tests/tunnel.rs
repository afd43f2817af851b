//! The tunnel as a user runs it: `vmtun up` on two hosts, then ping, a 50 MB transfer,
//! the initiator roaming to a new underlay address mid-transfer, and either side crashing
//! and coming back.
//!
//! ```text
//!   ns a                                         ns b
//!   ┌──────────────────────────┐                 ┌──────────────────────────┐
//!   │ vmtun up -c a.toml       │                 │ vmtun up -c b.toml       │
//!   │ tun 100.64.0.1/24        │                 │ tun 100.64.0.2/24        │
//!   │ ul0 198.18.0.1/24 :51820 ├─────── veth ────┤ ul0 198.18.0.2/24 :51820 │
//!   │   (roaming: → .11)       │                 │                          │
//!   └──────────────────────────┘                 └──────────────────────────┘
//! ```

mod common;

use common::transfer::{TRANSFER_TIMEOUT, Transfer, transfer};
use common::*;
use std::time::Duration;

/// A configured pair: A knows B's endpoint; B knows A's only if `b_knows_a`.
fn configs(b_knows_a: bool) -> (VmtunCfg, VmtunCfg) {
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let a = VmtunCfg::new(
        &ka,
        TUNNEL_A,
        vec![PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B)],
    );
    let b_endpoint = b_knows_a.then_some(UNDERLAY_A);
    let b = VmtunCfg::new(
        &kb,
        TUNNEL_B,
        vec![PeerCfg::new(&ka.public, b_endpoint, TUNNEL_A)],
    );
    (a, b)
}

/// A and B up (B with busy polling off, so status can show both kinds), pinging each
/// other through the tunnel.
fn pinging_with_b_not_polling(net: &Pair) -> Result<(Vmtun<'_>, Vmtun<'_>)> {
    let (ca, mut cb) = configs(true);
    cb.busy_poll_us = Some(0);
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    Ok((a, b))
}

#[test]
fn ping_both_ways_and_status_reports_the_session() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("ping")?;
    let (a, b) = pinging_with_b_not_polling(&net)?;

    let status = a.status()?;
    check(status.0["interface"].as_str() == Some(a.ifname()), || {
        format!("status names another interface: {:?}", status.0)
    })?;
    check(
        status.0["public_key"].as_str() == Some(a.public_key()),
        || format!("status shows another public key: {:?}", status.0),
    )?;
    let age = status.handshake_secs(b.public_key());
    check(
        matches!(age, Some(secs) if (0.0..60.0).contains(&secs)),
        || {
            format!(
                "A's status shows handshake age {age:?} after a ping: {:?}",
                status.0
            )
        },
    )?;
    for counter in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
        check(status.peer_counter(b.public_key(), counter) > 0, || {
            format!("A's status shows {counter} = 0 after pings: {:?}", status.0)
        })?;
    }
    let status_b = b.status()?;
    check(status_b.handshake_secs(a.public_key()).is_some(), || {
        format!("B's status shows no handshake: {:?}", status_b.0)
    })?;
    // A busy-polls by default and has spun after the pings; B was configured not to.
    let busy = |s: &Status, key: &str| s.0["busy_poll"][key].as_f64();
    check(busy(&status, "window_us") == Some(200.0), || {
        format!("A's status shows another busy-poll window: {:?}", status.0)
    })?;
    check(busy(&status, "spun_ms").is_some_and(|ms| ms > 0.0), || {
        format!("A never spun after traffic: {:?}", status.0)
    })?;
    check(
        busy(&status_b, "window_us") == Some(0.0) && busy(&status_b, "spun_ms") == Some(0.0),
        || format!("B spun with busy_poll_us = 0: {:?}", status_b.0),
    )?;
    Ok(())
}

#[test]
fn transfer_50mb_sha256_matches() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("xfer")?;
    let (ca, cb) = configs(true);
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    let report = transfer(&net.a, &net.b, TUNNEL_B, BIG)?;
    eprintln!(
        "vmtun: {} bytes A->B in {:?}",
        report.received, report.elapsed
    );
    let rx = b.status()?.peer_counter(a.public_key(), "rx_bytes");
    check(rx >= BIG as u64, || {
        format!("B's status counts rx_bytes {rx} after receiving {BIG} bytes")
    })?;
    Ok(())
}

/// A moves from 198.18.0.1 to 198.18.0.11 while sending; B has no configured endpoint for
/// A and must follow it from authenticated packets.
#[test]
fn roaming_initiator_keeps_the_transfer() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("roam")?;
    // Deleting the primary address would otherwise delete the new secondary one with it.
    net.a.sysctl(
        &format!("net.ipv4.conf.{UNDERLAY_DEV}.promote_secondaries"),
        "1",
    )?;
    let (ca, cb) = configs(false);
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    let old = format!("{UNDERLAY_A}:{PORT}");
    let learned = b.status()?.endpoint(a.public_key());
    check(learned.as_deref() == Some(&old[..]), || {
        format!("B learned endpoint {learned:?}, expected {old}")
    })?;

    let xfer = Transfer::start(&net.a, &net.b, TUNNEL_B, BIG, Some(BIG / 5))?;
    xfer.wait_milestone(Duration::from_secs(60))?;
    net.a.add_address(UNDERLAY_DEV, "198.18.0.11/24")?;
    net.a
        .del_address(UNDERLAY_DEV, &format!("{UNDERLAY_A}/{UNDERLAY_PREFIX}"))?;
    // Read once the address has changed: what the receiver had by then. The sender is
    // parked at its milestone, so the rest can only cross after the move.
    let received_at_move = xfer.received();
    xfer.resume();
    let report = xfer.finish(TRANSFER_TIMEOUT)?;
    report.check(BIG)?;
    check(received_at_move < BIG as u64, || {
        format!(
            "the receiver had all {received_at_move} bytes before the address changed: the test proved nothing"
        )
    })?;
    let new = format!("198.18.0.11:{PORT}");
    wait_until(WAIT, "B to use A's new endpoint", || {
        b.status()
            .map(|s| s.endpoint(a.public_key()).as_deref() == Some(&new[..]))
            .unwrap_or(false)
    })?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    Ok(())
}

/// B crashes (SIGKILL) and starts again; A is left alone and must re-establish the session
/// by itself (WireGuard's timers: no answer to data for 15 s starts a new handshake).
#[test]
fn restart_of_responder_recovers_without_touching_the_other_side() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("rstb")?;
    let (ca, cb) = configs(true);
    let mut b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    b.kill()?;
    b.launch()?;
    // At least 15 s (keepalive timeout) plus a handshake; the rest is slack for a loaded
    // machine.
    wait_ping(&net.a, TUNNEL_B, Duration::from_secs(90))?;
    transfer(&net.a, &net.b, TUNNEL_B, BIG / 10)?;
    let status = b.status()?;
    check(status.handshake_secs(a.public_key()).is_some(), || {
        format!("restarted B shows no handshake: {:?}", status.0)
    })?;
    Ok(())
}

/// A, the initiator, crashes and starts again: its new handshake must be accepted at once.
#[test]
fn restart_of_initiator_recovers() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("rsta")?;
    let (ca, cb) = configs(true);
    let _b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let mut a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    a.kill()?;
    a.launch()?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    wait_ping(&net.b, TUNNEL_A, WAIT)?;
    Ok(())
}

/// `vmtun down` stops a running `up`, which exits with success and leaves nothing behind.
#[test]
fn down_stops_the_instance_and_removes_the_device() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("down")?;
    let (ca, _) = configs(true);
    let mut a = Vmtun::start(&net.a, &net.scratch, ca)?;
    let stopped = a.down()?;
    check(stopped.up.success(), || {
        format!("vmtun up exited with {} after `vmtun down`", stopped.up)
    })?;
    let said = format!(
        "vmtun for {} stopped; its host changes are undone\n",
        a.ifname()
    );
    check(stopped.stdout == said, || {
        format!(
            "`vmtun down` printed {:?}, expected {said:?}",
            stopped.stdout
        )
    })?;
    a.check_gone()
}

fn genpsk() -> String {
    let out = std::process::Command::new(VMTUN)
        .arg("genpsk")
        .output()
        .expect("running vmtun genpsk");
    assert!(out.status.success(), "vmtun genpsk failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// With a pre-shared key on both sides the tunnel works; with different ones it must not.
#[test]
fn preshared_key_must_match() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("psk")?;
    let (mut ca, mut cb) = configs(true);
    let psk = genpsk();
    ca.peers[0].preshared_key = Some(psk.clone());
    cb.peers[0].preshared_key = Some(psk);
    {
        let _b = Vmtun::start(&net.b, &net.scratch, cb.clone())?;
        let _a = Vmtun::start(&net.a, &net.scratch, ca.clone())?;
        wait_ping(&net.a, TUNNEL_B, WAIT)?;
    }
    cb.peers[0].preshared_key = Some(genpsk());
    ca.name = lab::unique_ifname("vt");
    cb.name = lab::unique_ifname("vt");
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    for _ in 0..3 {
        check(!net.a.answers_ping(TUNNEL_B), || {
            "a ping crossed the tunnel with mismatched pre-shared keys".into()
        })?;
    }
    let status = a.status()?;
    check(status.handshake_secs(b.public_key()).is_none(), || {
        format!(
            "A reports a handshake despite the wrong psk: {:?}",
            status.0
        )
    })?;
    Ok(())
}

/// A second `vmtun up` on the same config is refused with a message naming the running
/// instance, and the first one keeps working.
#[test]
fn second_up_on_the_same_config_is_refused() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("twice")?;
    let (ca, cb) = configs(true);
    let _b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    let path = a.path.to_string_lossy().into_owned();
    let out = net
        .a
        .command(VMTUN)
        .args(["up", "-c", &path])
        .output()
        .expect("running vmtun up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), || {
        "a second vmtun up on the same config succeeded".into()
    })?;
    check(stderr.contains("already running"), || {
        format!("the refusal does not say why: {stderr}")
    })?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    Ok(())
}

/// A signal stops `up` cleanly: the TUN device, its address, the routes and the files in
/// /run/vmtun are gone, and the exit status is success.
fn signal_removes_everything_up_made(tag: &str, signal: libc::c_int) -> Result<()> {
    preflight(&[]);
    let net = Pair::new(tag)?;
    let (ca, _) = configs(true);
    let routes_before = net.a.ip(&["route", "show", "table", "all"])?;
    let mut a = Vmtun::start(&net.a, &net.scratch, ca)?;
    let ifname = a.ifname().to_owned();
    check(net.a.has_link(&ifname), || {
        format!("{ifname} missing while up")
    })?;
    let status = a.stop_with(signal)?;
    check(status.success(), || {
        format!("vmtun up exited with {status} on signal {signal}")
    })?;
    a.check_gone()?;
    let routes_after = net.a.ip(&["route", "show", "table", "all"])?;
    check(routes_before == routes_after, || {
        format!("routes differ after exit:\nbefore:\n{routes_before}\nafter:\n{routes_after}")
    })?;
    Ok(())
}

#[test]
fn sigterm_removes_everything_up_made() -> Result<()> {
    signal_removes_everything_up_made("term", libc::SIGTERM)
}

/// Ctrl-C in the terminal `up` runs in.
#[test]
fn sigint_removes_everything_up_made() -> Result<()> {
    signal_removes_everything_up_made("int", libc::SIGINT)
}

/// Matches `line` against `template`, in which each `{}` stands for a number (digits and
/// at most one point); the numbers, or `None` if the line does not have that shape.
fn numbers_in(line: &str, template: &str) -> Option<Vec<f64>> {
    let mut parts = template.split("{}");
    let mut rest = line.strip_prefix(parts.next()?)?;
    let mut numbers = Vec::new();
    for literal in parts {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        numbers.push(rest[..end].parse().ok()?);
        rest = rest[end..].strip_prefix(literal)?;
    }
    rest.is_empty().then_some(numbers)
}

/// `vmtun status` without `--json`: the interface block with its busy-polling line, and one
/// block per peer, line by line as the README shows them.
#[test]
fn status_text_shows_busy_polling_and_the_peer() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("stext")?;
    let (a, b) = pinging_with_b_not_polling(&net)?;

    let text = a.status_text()?;
    let lines: Vec<&str> = text.lines().collect();
    let shown = || format!("`vmtun status` printed:\n{text}");
    check(lines.len() == 12, || {
        format!("expected 12 lines; {}", shown())
    })?;
    let exact = [
        (0, format!("interface: {}", a.ifname())),
        (1, format!("  public key: {}", a.public_key())),
        (2, format!("  listening port: {PORT}")),
        (5, String::new()),
        (6, format!("peer: {}", b.public_key())),
        (7, format!("  endpoint: {UNDERLAY_B}:{PORT}")),
        (8, format!("  allowed ips: {TUNNEL_B}/32")),
    ];
    for (index, expected) in exact {
        check(lines[index] == expected, || {
            format!("line {index} should be {expected:?}; {}", shown())
        })?;
    }
    let shaped = |index: usize, template: &str| {
        numbers_in(lines[index], template).ok_or_else(|| {
            LabError::Failed(format!(
                "line {index} does not read {template:?}; {}",
                shown()
            ))
        })
    };
    // No IPv6 in these namespaces and no stranger: nothing to drop, so no reasons listed.
    shaped(3, "  dropped (no peer): {}")?;
    let busy = shaped(
        4,
        "  busy polling: {} us window; spun {} ms, caught {} wake-ups, {} spins cut by the CPU budget",
    )?;
    check(busy[0] == 200.0 && busy[1] > 0.0, || {
        format!(
            "A should show the default 200 us window and some spinning; {}",
            shown()
        )
    })?;
    let age = shaped(9, "  latest handshake: {} s ago")?;
    check((0.0..60.0).contains(&age[0]), || {
        format!("the handshake age is implausible; {}", shown())
    })?;
    let transfer = shaped(
        10,
        "  transfer: {} B received ({} packets), {} B sent ({} packets)",
    )?;
    check(transfer.iter().all(|n| *n > 0.0), || {
        format!("a counter is 0 after pings both ways; {}", shown())
    })?;
    shaped(11, "  dropped: {}")?;

    // B was configured not to busy-poll.
    let text_b = b.status_text()?;
    check(text_b.lines().nth(4) == Some("  busy polling: off"), || {
        format!("B (busy_poll_us = 0) should show busy polling off:\n{text_b}")
    })?;
    Ok(())
}

/// A non-default `mtu`: the TUN device gets it, and a packet of exactly that size crosses
/// with fragmentation forbidden.
#[test]
fn configured_mtu_sets_the_device_and_a_full_packet_crosses() -> Result<()> {
    const MTU: u16 = 1300;
    preflight(&["ping"]);
    let net = Pair::new("mtu")?;
    let (mut ca, mut cb) = configs(true);
    ca.mtu = Some(MTU);
    cb.mtu = Some(MTU);
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    for (ns, vmtun) in [(&net.a, &a), (&net.b, &b)] {
        let link = ns.ip(&["-o", "link", "show", "dev", vmtun.ifname()])?;
        check(link.contains(&format!(" mtu {MTU} ")), || {
            format!("{} should have mtu {MTU}: {link}", vmtun.ifname())
        })?;
    }
    // ICMP payload = MTU - 20 (IPv4 header) - 8 (ICMP header): an IP packet of MTU bytes.
    let payload = (MTU - 28).to_string();
    wait_until(
        WAIT,
        &format!("a {MTU}-byte ping with DF set to cross"),
        || {
            net.a
                .run(
                    "ping",
                    &[
                        "-c", "1", "-W", "1", "-q", "-M", "do", "-s", &payload, TUNNEL_B,
                    ],
                )
                .is_ok()
        },
    )?;
    Ok(())
}

/// `persistent_keepalive = 1`: an idle peer keeps sending keepalives, which B counts as
/// received bytes while no packet reaches its TUN device.
#[test]
fn persistent_keepalive_keeps_an_idle_peer_talking() -> Result<()> {
    /// Keepalives B must see: without the setting, A owes B at most one passive keepalive
    /// (10 s after the last ping's reply).
    const KEEPALIVES: u64 = 3;
    /// A keepalive is an empty transport message: 16 bytes of header, 16 of tag.
    const KEEPALIVE_BYTES: u64 = 32;
    preflight(&["ping"]);
    let net = Pair::new("keepal")?;
    let (mut ca, cb) = configs(true);
    ca.peers[0].persistent_keepalive = Some(1);
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    let before = b.status()?;
    let tun_before = b.tun_rx_packets()?;
    let rx = |s: &Status| s.peer_counter(a.public_key(), "rx_bytes");
    let grown = wait_for(
        Duration::from_secs(30),
        &format!("B to receive {KEEPALIVES} keepalives from idle A"),
        || {
            let now = b.status().ok()?;
            (rx(&now) >= rx(&before) + KEEPALIVES * KEEPALIVE_BYTES).then_some(now)
        },
    )?;
    let data = |s: &Status| s.peer_counter(a.public_key(), "rx_packets");
    check(data(&grown) == data(&before), || {
        format!(
            "B received data packets while A was idle: {} -> {}",
            data(&before),
            data(&grown)
        )
    })?;
    let tun_after = b.tun_rx_packets()?;
    check(tun_after == tun_before, || {
        format!(
            "{} packets reached B's TUN while A was idle",
            tun_after - tun_before
        )
    })?;
    Ok(())
}
