//! The cutover on the new host: notice the first packet for the VM subnets that the provider
//! routes here natively, and hand it at once to the callback that removes the mark rule.
//!
//! The VM subnets are IPv4 or IPv6 in any mix (`ipnet::IpNet`); an IPv4 packet can only cut
//! over an IPv4 subnet, an IPv6 packet an IPv6 one.
//!
//! - [`classify`]: the pure core. Is this Ethernet frame a native IPv4 or IPv6 packet for one
//!   of our subnets, from the uplink gateway? Never ARP, RARP (QEMU's post-migration
//!   announcements), ICMPv6 Neighbor Discovery (IPv6's ARP: a router resolving or probing a
//!   VM's address), other subnets, our own VMs' packets, broadcast or multicast frames, IPv6
//!   multicast destinations, truncated frames, or frames from any other MAC. Byte fixtures
//!   test it.
//! - [`record`]: what was seen and when (`Detection`, `CutoverRecord` for `vmtun status`).
//! - `capture`: the OS edge, one `AF_PACKET` socket per native interface and family with a
//!   kernel BPF filter and receive timestamps, stoppable through an eventfd; it survives an
//!   interface going down and up.
//! - [`watcher`]: the thread tying them together, at real-time priority when allowed, with
//!   the reverse-path check (`netcfg::RouteLookup`); it calls the callback once per subnet.
//!
//! Wiring on the new host (role new, `cutover = "auto"`, in `crate::migration`): the uplink
//! gateways' MACs go into the kernel's `gateways` set and into [`Uplink`], then
//! `Watcher::spawn(&uplink, subnets, move |d| remover.remove(&[d.subnet]).map(|r|
//! r.gone_at))`; `vmtun status` shows [`Watcher::status`].
//!
//! This module never edits netfilter, routes or rules: the callback given to
//! [`Watcher::spawn`] (netcfg's atomic removal of vmtun's own mark rule) does. It never
//! spawns a program either: the seed's `tcpdump ... && iptables -F` cost 17–1566 ms.
//!
//! # Only the provider may trigger it
//! A unicast frame to the host's MAC with a client's source and a VM's destination is what
//! the provider's router sends after its switch, but any neighbour on the uplink segment can
//! forge one; acting on it would flip the VMs' replies to leave natively while the provider
//! still routes the subnet to the old host and drops them as spoofed. So a packet counts as
//! native only if, in both the watcher and the kernel's native rule (`netcfg`'s
//! `NftRuleKind::Native`):
//! - it came in on a native interface (`[migration] bridge`, `native_interfaces`), addressed
//!   to the host (`PACKET_HOST`, `meta pkttype host`);
//! - its source MAC is an uplink gateway's (classifier and BPF `ether src`; `ether saddr
//!   @gateways`);
//! - the host's route back to its source leaves through the interface it came in on, a
//!   strict reverse-path check (an rtnetlink route lookup on a socket opened in advance; `fib
//!   saddr . iif oif exists`). So a second uplink's native packets count only for sources
//!   the host routes back through it (as `rp_filter = 1` would require).
//!
//! The bridge port a frame entered by is not checked: neither the `ip`/`ip6` hook nor a
//! packet socket on the bridge sees it (the packet's device is the bridge), and neighbours
//! behind the provider's switch share the uplink's port anyway. A neighbour that spoofs the
//! gateway's MAC as well passes; that takes MAC spoofing on the provider's switch, which the
//! switch sees.
//!
//! Which MACs, decided at `vmtun up` (`crate::migration`):
//! - `[migration] gateways` lists the routers by address (looked up in the neighbour table)
//!   or by MAC (a router that does not answer, the physical MACs behind a VRRP pair). Empty,
//!   the default: the gateways of the main table's default routes through the native
//!   interfaces, i.e. the router the host itself uses.
//! - A gateway address without a usable neighbour entry is sent one empty UDP datagram (to
//!   make the kernel resolve it, as any first packet would) and looked up again for up to 3
//!   s. One that still has none is logged and left out.
//! - No MAC at all (no default route through a native interface, or none resolved): nothing
//!   can trigger the cutover, neither the kernel nor the watcher. `vmtun up` still runs the
//!   tunnel; `vmtun status` shows the watcher FAILED with the reason, and `vmtun cutover` at
//!   the switch does it by hand. Replies keep leaving through the old host meanwhile, which
//!   the provider keeps accepting: the safe side.
//! - The MACs are fixed for the run: a later change of the neighbour entry is not followed.
//!   Following it would let whoever can spoof ARP or Neighbor Discovery on the segment (the
//!   attacker above) put their own MAC in. A router replaced during the move therefore does
//!   not trigger the cutover (the safe side again, `vmtun cutover` by hand); list both MACs
//!   for a planned swap.
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
//! type, so it takes only `PACKET_HOST` frames, and bound to `ETH_P_IP` (or `ETH_P_IPV6`)
//! it never receives the host's own outgoing frames at all. libpcap's direction `in` still
//! includes `PACKET_OTHERHOST`: on a promiscuous bridge (say, tcpdump running on it) a
//! flooded frame for another host's MAC with a VM's address fires libpcap but not the packet
//! socket (the tests `a_frame_for_another_host_does_not_fire_even_on_a_promiscuous_bridge`,
//! its IPv6 twin, and the ignored `pcap_sees_a_frame_for_another_host_on_a_promiscuous_bridge`).
//! libpcap still compiles the filter, and its capture stays in `capture` to rerun the
//! comparison:
//!
//! `cargo test --release --lib cutover::netns_tests::compare_capture_latency -- --ignored
//! --nocapture` (as root).
//!
//! # Both families: a socket each
//! IPv6 comes to a second packet socket, bound to `ETH_P_IPV6` with the same filter, polled
//! together with the IPv4 one and the eventfd (only the families the subnets have are
//! opened). One socket bound to `ETH_P_ALL` would see both, but as a tap: it would also get
//! every frame the host sends out of the bridge, among them, before the cutover, all the
//! tunnelled traffic to the VMs, which matches the `dst net` filter. The kernel would clone
//! each such frame to it and wake the watcher for each, only for it to drop the frame as
//! `PACKET_OUTGOING`; bound to an ethertype, the sockets are never given them. The cost is
//! one more descriptor in the same poll; frames keep their order within a family only.
//! Measured as above (the comparison's last two rows: IPv4 then IPv6 packets with both
//! families watched), three runs, release build, load average 1.5–2.7 from other builds;
//! p50 / p99 in µs:
//!
//! ```text
//!                                            run 1        run 2         run 3
//! AF_PACKET poll+recv, IPv4 list (1 socket)  32.3 / 824   80.9 /  655   90.0 / 1822
//! AF_PACKET poll+recv, v4+v6 list, IPv4      43.6 / 735   82.7 / 1116   85.9 / 1504
//! AF_PACKET poll+recv, v4+v6 list, IPv6      52.5 / 410   93.2 / 1276   95.5 / 2494
//! ```
//! The second socket is lost in the noise for IPv4. IPv6 is 9–11 µs slower at p50 in each
//! run; the interval starts at `sendto` in the sender, so that includes its IPv6 stack, not
//! separated here.
//!
//! The watcher polls the sockets together with an eventfd and then reads without blocking, so
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

pub use capture::index_of;
pub(crate) use capture::{PacketSocket, Run, StopSignal};
pub use classify::{Classifier, MacAddr, Verdict};
pub use record::{CutoverRecord, Detection};
pub(crate) use watcher::real_time_priority;
pub use watcher::{CutoverStatus, Phase, Uplink, WATCHER_RT_PRIORITY, Watcher};

/// Why the watcher could not start. Each names the interface and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// The subnet list was empty: nothing could ever match.
    #[error("cutover: no subnets to watch (set [migration] subnets)")]
    NoSubnets,
    /// A native interface does not exist in this network namespace.
    #[error(
        "interface {iface}: no such interface (check [migration] bridge and native_interfaces)"
    )]
    NoSuchInterface {
        /// The configured interface name.
        iface: String,
    },
    /// A socket call failed.
    #[error("interface {iface}: {action}: {source}{}", privilege_hint(source))]
    Io {
        /// The configured interface name.
        iface: String,
        /// What the watcher was doing.
        action: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
    /// libpcap could not compile the filter for the subnets.
    #[error("interface {iface}: BPF filter: {message}")]
    Filter {
        /// The configured interface name.
        iface: String,
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
