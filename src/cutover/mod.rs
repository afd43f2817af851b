//! The cutover on the new host: notice the first packet for the VM subnets that the provider
//! routes here natively, and hand it at once to the callback that removes the mark rule.
//!
//! - [`classify`]: the pure core. Is this Ethernet frame a native IPv4 packet for one of our
//!   subnets? Never ARP, RARP (QEMU's post-migration announcements), IPv6, other subnets, our
//!   own VMs' packets, broadcast frames or truncated frames. Byte fixtures test it.
//! - [`record`]: what was seen and when (`Detection`, `CutoverRecord` for `vmtun status`).
//! - `capture`: the OS edge, a socket on the bridge with a kernel BPF filter and receive
//!   timestamps, stoppable through an eventfd.
//! - [`watcher`]: the thread tying them together; it calls the callback once.
//!
//! This module never edits netfilter, routes or rules: the callback given to
//! [`Watcher::spawn`] (netcfg's atomic removal of vmtun's own mark rule) does. It never
//! spawns a program either: the seed's `tcpdump ... && iptables -F` cost 17–1566 ms.
//!
//! # Which capture, measured
//! An `AF_PACKET` socket bound to the bridge for `ETH_P_IP`, with libpcap's compiled filter
//! attached (`SO_ATTACH_FILTER`), against libpcap itself in immediate mode (snaplen 78,
//! direction in, same filter). Latency from `sendto` in the sender namespace to the watcher
//! thread's decision, 200 UDP packets per variant at 2 ms spacing, CLOCK_MONOTONIC stamped
//! into the payload, through a veth into a Linux bridge (2-core VM, release build):
//!
//! FIGURES
//!
//! Command: `cargo test --release --lib cutover::netns_tests::compare_capture_latency --
//! --ignored --nocapture` (as root).
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
pub use watcher::{CutoverState, Watcher};

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
    /// libpcap failed (only when the pcap capture is used).
    #[error("bridge {bridge}: {action}: {source}")]
    Pcap {
        /// The configured bridge name.
        bridge: String,
        /// What the watcher was doing.
        action: &'static str,
        /// libpcap's answer.
        source: pcap::Error,
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
