//! The cutover on the new host: notice the first packet for the VM subnets that the provider
//! routes here natively, and hand it at once to the callback that removes the mark rule.
//!
//! - [`classify`]: the pure core. Is this Ethernet frame a native IPv4 packet for one of our
//!   subnets? Never ARP, RARP (QEMU's post-migration announcements), IPv6, other subnets, our
//!   own VMs' packets, broadcast frames or truncated frames. Byte fixtures test it.
//! - [`record`]: what was seen and when (`Detection`, `CutoverRecord` for `vmtun status`).
//! - `capture`: the OS edge, an `AF_PACKET` socket on the bridge with a kernel BPF filter and
//!   receive timestamps, stoppable through an eventfd.
//! - [`watcher`]: the thread tying them together; it calls the callback once per subnet.
//!
//! Wiring on the new host (role new, `cutover = "auto"`), with netcfg's per-subnet removal:
//! `Watcher::spawn(&bridge, subnets, move |d| netcfg::remove_mark_rule(&table,
//! &[d.subnet]).map(|r| r.gone_at))`; `vmtun status` shows [`Watcher::status`].
//!
//! This module never edits netfilter, routes or rules: the callback given to
//! [`Watcher::spawn`] (netcfg's atomic removal of vmtun's own mark rule) does. It never
//! spawns a program either: the seed's `tcpdump ... && iptables -F` cost 17–1566 ms.
//!
//! # Which capture, measured
//! An `AF_PACKET` socket bound to the bridge for `ETH_P_IP`, with libpcap's compiled filter
//! attached (`SO_ATTACH_FILTER`), against libpcap itself (pcap 2.5, libpcap 1.10.3) in
//! immediate mode (snaplen 78, direction in, same filter), each stoppable (poll with an
//! eventfd, then non-blocking reads) and plain blocking. Latency from `sendto` in the sender
//! namespace to the receiving thread's decision, through a veth into a Linux bridge; 5
//! interleaved rounds of 200 UDP packets 2 ms apart per variant, CLOCK_MONOTONIC stamped into
//! the payload; 2-core VM under a load average of 3–5 from other builds, release build:
//!
//! ```text
//! AF_PACKET poll+recv (watcher)  n=1000 p50 36.1 µs  p90 52.1 µs  p99 103.4 µs  max 2236 µs
//! AF_PACKET blocking recv        n=1000 p50 35.9 µs  p90 71.5 µs  p99 174.1 µs  max 3733 µs
//! pcap immediate poll+next       n=1000 p50 37.7 µs  p90 65.6 µs  p99 102.8 µs  max 3192 µs
//! pcap immediate blocking next   n=1000 p50 36.5 µs  p90 83.9 µs  p99 143.6 µs  max 3715 µs
//! ```
//! (An earlier run: p50 36.7 / 33.9 / 36.2 / 36.0 µs, p99 0.65–1.16 ms under heavier load.)
//!
//! The latencies are equal within noise; the tails are the machine's load, not the socket.
//! The packet socket is kept for what it sees, not for speed: the kernel tells it the packet
//! type, so it takes only `PACKET_HOST` frames, and bound to `ETH_P_IP` it never receives
//! the host's own outgoing frames at all. libpcap's direction `in` still includes
//! `PACKET_OTHERHOST`: on a promiscuous bridge (say, tcpdump running on it) a flooded frame
//! for another host's MAC with a VM's address fires libpcap but not the packet socket (the
//! tests `a_frame_for_another_host_does_not_fire_even_on_a_promiscuous_bridge` and the ignored
//! `pcap_sees_a_frame_for_another_host_on_a_promiscuous_bridge`). libpcap still compiles the
//! filter, and its capture stays in `capture` to rerun the comparison:
//!
//! `cargo test --release --lib cutover::netns_tests::compare_capture_latency -- --ignored
//! --nocapture` (as root).
//!
//! The watcher polls the socket together with an eventfd and then reads without blocking, so
//! that [`Watcher::stop`] never waits for a packet. A dedicated thread rather than tokio's
//! `AsyncFd`: the wakeup goes straight from the kernel to the thread that decides, with no
//! runtime hop and no dependence on how busy the driver's event loop is.

use std::io;

pub mod classify;
pub mod record;
pub mod watcher;

mod capture;
#[cfg(test)]
mod netns_tests;

pub use classify::{Classifier, Verdict};
pub use record::{CutoverRecord, Detection};
pub use watcher::{CutoverStatus, Phase, Watcher};

/// Why the watcher could not start. Each names the bridge and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// The subnet list was empty: nothing could ever match.
    #[error("cutover: no subnets to watch (set [migration] subnets)")]
    NoSubnets,
    /// The bridge does not exist in this network namespace.
    #[error("bridge {bridge}: no such interface (check [migration] bridge)")]
    NoSuchInterface {
        /// The configured bridge name.
        bridge: String,
    },
    /// A socket call failed.
    #[error("bridge {bridge}: {action}: {source}{}", privilege_hint(source))]
    Io {
        /// The configured bridge name.
        bridge: String,
        /// What the watcher was doing.
        action: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
    /// libpcap could not compile the filter for the subnets.
    #[error("bridge {bridge}: BPF filter: {message}")]
    Filter {
        /// The configured bridge name.
        bridge: String,
        /// libpcap's complaint, with the expression.
        message: String,
    },
}

fn privilege_hint(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::PermissionDenied {
        " (needs root or CAP_NET_RAW)"
    } else {
        ""
    }
}
