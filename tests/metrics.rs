//! The metrics endpoint as an operator runs it: `vmtun up` with `[metrics] listen` on one
//! host, traffic through the tunnel, and a Prometheus scrape (`GET /metrics` over TCP) from
//! inside that host's namespace; the other host has no `[metrics]` and listens on no TCP
//! port at all. A metrics port already in use stops `up` before it touches the host. And
//! on the migration lab (`vmtun::lab::migration`), the new host's cutover as scraped.
//!
//! ```text
//!   ns a                                         ns b
//!   ┌──────────────────────────┐                 ┌──────────────────────────┐
//!   │ vmtun up -c a.toml       │                 │ vmtun up -c b.toml       │
//!   │   [metrics] 127.0.0.1:9586                 │   (no [metrics])         │
//!   │   <- scrape (TcpStream)  │                 │                          │
//!   │ tun 100.64.0.1/24        │                 │ tun 100.64.0.2/24        │
//!   │ ul0 198.18.0.1/24 :51820 ├─────── veth ────┤ ul0 198.18.0.2/24 :51820 │
//!   └──────────────────────────┘                 └──────────────────────────┘
//! ```

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::*;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};
use vmtun::lab::migration::hosts::CutoverState;
use vmtun::lab::migration::topology::MigrationLab;
use vmtun::lab::migration::{SUBNET, VM_ADDR};

/// Where host A serves its metrics, inside its namespace.
const METRICS: &str = "127.0.0.1:9586";
/// Echo requests sent through the tunnel, and their ICMP payload.
const PINGS: u64 = 50;
const PING_PAYLOAD: u64 = 1000;
/// What one such echo request is on the wire: IPv4 20 + ICMP 8 + payload, padded to 16,
/// plus WireGuard's 16-byte header and 16-byte tag.
const PING_WIRE: u64 = (20 + 8 + PING_PAYLOAD).div_ceil(16) * 16 + 32;

/// A and B, each with its own config; A serves metrics at [`METRICS`].
fn configs() -> (VmtunCfg, VmtunCfg) {
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let mut a = VmtunCfg::new(
        &ka,
        TUNNEL_A,
        vec![PeerCfg::new(&kb.public, Some(UNDERLAY_B), TUNNEL_B)],
    );
    a.metrics = Some(METRICS.to_owned());
    let b = VmtunCfg::new(
        &kb,
        TUNNEL_B,
        vec![PeerCfg::new(&ka.public, Some(UNDERLAY_A), TUNNEL_A)],
    );
    (a, b)
}

/// `GET /metrics` at `addr` from inside `ns`, as Prometheus sends it; the body of a 200.
fn scrape(ns: &Netns, addr: &'static str) -> Result<String> {
    let thread = ns.thread("scrape", move || {
        let failed =
            |what: &str, e: std::io::Error| LabError::Failed(format!("{what} {addr}: {e}"));
        let mut stream = TcpStream::connect(addr).map_err(|e| failed("connecting to", e))?;
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| failed("setting a timeout on", e))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: vmtun\r\nAccept: text/plain\r\n\r\n")
            .map_err(|e| failed("sending to", e))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| failed("reading from", e))?;
        Ok(answer)
    })?;
    let answer = thread
        .join()
        .map_err(|_| LabError::Failed("the scrape thread panicked".into()))??;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    check(
        head.starts_with("HTTP/1.1 200 OK\r\n")
            && head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
        || format!("the scrape of {addr} was answered with:\n{head}"),
    )?;
    Ok(body.to_owned())
}

/// The samples of an exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
        .collect()
}

/// The TCP sockets listening in `ns` (`ss -Hltn`), one line each.
fn tcp_listeners(ns: &Netns) -> Result<Vec<String>> {
    Ok(ns
        .run("ss", &["-Hltn"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

#[test]
fn a_scrape_counts_the_traffic_and_shows_the_handshake() -> Result<()> {
    preflight(&["ping"]);
    let net = Pair::new("metrics")?;
    let (ca, cb) = configs();
    let b = Vmtun::start(&net.b, &net.scratch, cb)?;
    let a = Vmtun::start(&net.a, &net.scratch, ca)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;

    let listening = tcp_listeners(&net.a)?;
    check(
        listening.len() == 1 && listening[0].contains(METRICS),
        || format!("A should listen on {METRICS} only; ss -Hltn: {listening:?}"),
    )?;
    let quiet = tcp_listeners(&net.b)?;
    check(quiet.is_empty(), || {
        format!("B has no [metrics] but listens on TCP: {quiet:?}")
    })?;

    let series = |name: &str| format!("{name}{{peer=\"{}\"}}", b.public_key());
    let page = scrape(&net.a, METRICS)?;
    let before = samples(&page);
    let value = |s: &HashMap<String, f64>, name: &str| s.get(&series(name)).copied();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let handshake = value(&before, "vmtun_peer_last_handshake_timestamp_seconds");
    check(
        handshake.is_some_and(|t| (now - 60.0..=now + 1.0).contains(&t)),
        || {
            format!(
                "A's metrics show handshake time {handshake:?} (now {now}) after a ping:\n{page}"
            )
        },
    )?;
    for family in [
        "vmtun_info{",
        "vmtun_dropped_packets_total{reason=",
        "vmtun_busy_poll_spun_seconds_total ",
    ] {
        check(page.contains(family), || {
            format!("no {family} in A's metrics:\n{page}")
        })?;
    }
    let b_rx_before = b.status()?.peer_counter(a.public_key(), "rx_bytes");

    net.a.run(
        "ping",
        &[
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.02",
            "-s",
            &PING_PAYLOAD.to_string(),
            "-q",
            TUNNEL_B,
        ],
    )?;
    // A page may be up to 100 ms old: scrape until it shows the pings.
    let tx_before = value(&before, "vmtun_peer_tx_packets_total").unwrap_or(0.0);
    let after = wait_for(WAIT, "A's metrics to count the pings", || {
        let s = samples(&scrape(&net.a, METRICS).ok()?);
        (value(&s, "vmtun_peer_tx_packets_total")? >= tx_before + PINGS as f64).then_some(s)
    })
    .map_err(|e| LabError::Failed(e.to_string()))?;
    let b_rx = b.status()?.peer_counter(a.public_key(), "rx_bytes") - b_rx_before;
    let delta =
        |name: &str| value(&after, name).unwrap_or(0.0) - value(&before, name).unwrap_or(0.0);
    let tx_bytes = delta("vmtun_peer_tx_bytes_total");
    check(tx_bytes == b_rx as f64, || {
        format!("A's metrics count {tx_bytes} bytes sent during the pings; B received {b_rx}")
    })?;
    check(tx_bytes >= (PINGS * PING_WIRE) as f64, || {
        format!(
            "A's metrics count {tx_bytes} bytes for {PINGS} pings of {PING_WIRE} bytes on the wire"
        )
    })?;
    for (name, at_least) in [
        ("vmtun_peer_rx_packets_total", PINGS),
        ("vmtun_peer_rx_bytes_total", PINGS * PING_WIRE),
    ] {
        let counted = delta(name);
        check(counted >= at_least as f64, || {
            format!(
                "A's {name} grew by {counted} during {PINGS} answered pings (at least {at_least})"
            )
        })?;
    }
    Ok(())
}

#[test]
fn dry_run_says_where_the_metrics_would_be_served() -> Result<()> {
    preflight(&["nft"]);
    let net = Pair::new("metricsdry")?;
    let (ca, _) = configs();
    let path = ca.write(&net.scratch)?.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run_vmtun(
        &net.a,
        &net.scratch,
        "up-dry-run",
        &["up", "--dry-run", "-c", &path],
        WAIT,
    )?;
    let said = format!(
        "# and listen on UDP port {PORT}\n# and serve metrics on http://{METRICS}/metrics\n"
    );
    check(code == Some(0) && stdout.ends_with(&said), || {
        format!("vmtun up --dry-run: exit {code:?}, stdout:\n{stdout}\nstderr:\n{stderr}")
    })?;
    let listening = tcp_listeners(&net.a)?;
    check(listening.is_empty(), || {
        format!("vmtun up --dry-run left a TCP listener: {listening:?}")
    })
}

#[test]
fn a_metrics_port_in_use_stops_up_before_the_host_changes() -> Result<()> {
    preflight(&["nft"]);
    let net = Pair::new("metricsport")?;
    let (ca, _) = configs();
    let path = ca.write(&net.scratch)?;
    let squatter = net
        .a
        .thread("squatter", || {
            std::net::TcpListener::bind(METRICS)
                .map_err(|e| LabError::Failed(format!("binding {METRICS}: {e}")))
        })?
        .join()
        .map_err(|_| LabError::Failed("the squatter thread panicked".into()))??;
    let before = snapshot(&net.a)?;
    let path = path.to_string_lossy().into_owned();
    let (code, _, stderr) = run_vmtun(
        &net.a,
        &net.scratch,
        "up-port-in-use",
        &["up", "-c", &path],
        WAIT,
    )?;
    // The error lines, not the log's.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("vmtun:")).collect();
    check(code == Some(1) && lines.len() == 1, || {
        format!("vmtun up with its metrics port taken: exit {code:?}, stderr:\n{stderr}")
    })?;
    check(
        lines[0].contains(&format!("metrics.listen: cannot listen on {METRICS}: "))
            && lines[0].ends_with("choose another one in [metrics] listen"),
        || format!("the error does not name the field and what to do: {stderr}"),
    )?;
    let after = snapshot(&net.a)?;
    check(before == after, || {
        format!(
            "vmtun up changed the namespace before refusing:\n--- before\n{before}\n--- after\n{after}"
        )
    })?;
    check(
        run_files(&net.a, &ca.name).iter().all(|f| !f.exists()),
        || {
            format!(
                "vmtun up left files behind: {:?}",
                run_files(&net.a, &ca.name)
            )
        },
    )?;
    drop(squatter);
    Ok(())
}

/// The new host's cutover as Prometheus sees it: the watcher's phase before and after the
/// provider's switch, the subnet switched, and the cutover latency `status --json` records.
#[test]
fn a_scrape_of_the_new_host_shows_the_cutover() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("metrics-cutover")?;
    let lab = MigrationLab::build(1)?;
    let (_old, mut new) = helpers::prepare_hosts(&lab, &scratch, "auto")?;
    let config = std::fs::read_to_string(&new.path)
        .map_err(|e| LabError::io(format!("reading {}", new.path.display()), e))?;
    std::fs::write(
        &new.path,
        format!("{config}\n[metrics]\nlisten = {METRICS:?}\n"),
    )
    .map_err(|e| LabError::io(format!("writing {}", new.path.display()), e))?;
    new.launch()?;
    let phase = |s: &HashMap<String, f64>, phase: &str| {
        s.get(&format!("vmtun_cutover_phase{{phase=\"{phase}\"}}"))
            .copied()
    };
    let switched = format!("vmtun_migration_subnet_switched{{subnet=\"{SUBNET}\"}}");
    let page = scrape(&lab.new, METRICS)?;
    let before = samples(&page);
    check(
        phase(&before, "watching") == Some(1.0)
            && phase(&before, "done") == Some(0.0)
            && before.get(&switched) == Some(&0.0)
            && before.get("vmtun_migration_role{role=\"new\"}") == Some(&1.0),
        || format!("the new host's metrics before the switch:\n{page}"),
    )?;

    lab.switch_provider()?;
    let done = helpers::cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    // A page may be up to 100 ms old: scrape until it shows the cutover.
    let after = wait_for(
        WAIT,
        "the new host's metrics to show the cutover done",
        || {
            let s = samples(&scrape(&lab.new, METRICS).ok()?);
            (phase(&s, "done") == Some(1.0)).then_some(s)
        },
    )
    .map_err(|e| LabError::Failed(e.to_string()))?;
    let latency = after.get(&format!(
        "vmtun_cutover_latency_seconds{{subnet=\"{SUBNET}\"}}"
    ));
    let recorded = done.latency_ns.map(|ns| ns as f64 / 1e9);
    check(
        matches!((latency, recorded), (Some(l), Some(r)) if *l > 0.0 && (l - r).abs() < 1e-9),
        || format!("cutover latency {latency:?} s in the metrics, {recorded:?} s in vmtun status"),
    )?;
    check(
        after.get(&switched) == Some(&1.0) && phase(&after, "watching") == Some(0.0),
        || format!("the new host's metrics after the cutover: {after:?}"),
    )
}
