//! The watcher tested for real, in network namespaces the tests create and delete (root
//! only; they fail, never skip, without it). Nothing touches the root namespace.
//!
//! ```text
//!  ns S: the provider's router                   ns N: the new host
//!  +----------------------------------+          +---------------------------------------+
//!  | cws<id> 198.18.0.2/24            |   veth   | cwn<id> ── port of bridge cwb<id>     |
//!  |         2001:db8:ff::2/64        |==========|   cwb<id> 198.18.0.1/24 (watched)     |
//!  |   mac 02:00:00:00:00:02          |          |           2001:db8:ff::1/64           |
//!  | lo 203.0.113.3/32,               |          |   mac 02:00:00:00:00:01               |
//!  |    2001:db8:1::3/128 (VM sources)|          | 203.0.113.4/32 via 198.18.0.2,        |
//!  | 203.0.113.0/24, 192.0.2.0/24,    |          | 2001:db8:1::4/128 via 2001:db8:ff::2  |
//!  | 198.51.100.0/24 via 198.18.0.1;  |          |   (the host sending *out* of br)      |
//!  | 2001:db8:1::/48, 2001:db8:2::/64,|          |                                       |
//!  | 2001:db8:3::/64                  |          |                                       |
//!  |   via 2001:db8:ff::1             |          |                                       |
//!  +----------------------------------+          +---------------------------------------+
//! ```
//! Watched subnets: 203.0.113.0/29 and 198.51.100.0/24 ([`Lab::subnets`]); with
//! 2001:db8:1::/64 and 2001:db8:2::/64 too in [`Lab::mixed_subnets`].

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::capture::{PacketSocket, PcapCapture, Run, StopSignal, Wait};
use super::classify::fixtures;
use super::classify::{Classifier, ETHERNET_HEADER_LEN, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN};
use super::{CutoverError, Phase, Uplink, Watcher};

/// How long a test waits for an event before calling it missing: a ceiling for a slow,
/// shared machine, never a speed check (speed is measured by `benches/cutover.sh`).
const EVENT_CEILING: Duration = Duration::from_secs(30);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the cutover namespace tests need root (ip netns, AF_PACKET sockets): run them as root"
    );
}

/// A lab namespace ([`crate::lab::Netns`]: deleted on drop, on SIGINT/SIGTERM, and by the
/// next lab run if this process dies) with the panicking helpers these tests use.
struct Netns(crate::lab::Netns);

impl Netns {
    fn new(tag: &str) -> Self {
        Netns(crate::lab::Netns::new(tag).expect("creating a lab namespace"))
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    /// Runs `f` on a thread that has entered this namespace (only that thread).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|s| {
            s.spawn(|| self.enter_then(f))
                .join()
                .expect("thread in netns")
        })
    }

    /// Enters this namespace on the calling thread, then runs `f`. For threads made for it.
    fn enter_then<T>(&self, f: impl FnOnce() -> T) -> T {
        let file = File::open(format!("/run/netns/{}", self.name())).expect("open netns");
        // SAFETY: setns on a valid namespace fd; it changes only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name(),
            std::io::Error::last_os_error()
        );
        f()
    }

    /// `ip -n NS ARGS`, panicking with its stderr on failure.
    fn ip(&self, args: &[&str]) {
        if let Err(e) = self.0.ip(args) {
            panic!("{e}");
        }
    }
}

fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The topology of the module diagram.
struct Lab {
    n: Netns,
    s: Netns,
    bridge: String,
    /// The bridge's port towards S.
    port: String,
    sender_if: String,
}

impl Lab {
    fn new() -> Self {
        require_root();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 1_000_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let n = Netns::new("cwn");
        let s = Netns::new("cws");
        let (bridge, port, sender_if) =
            (format!("cwb{id}"), format!("cwn{id}"), format!("cws{id}"));
        n.ip(&[
            "link",
            "add",
            &bridge,
            "address",
            &mac(fixtures::HOST_MAC),
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        n.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            &sender_if,
            "netns",
            s.name(),
        ]);
        n.ip(&["link", "set", &port, "master", &bridge, "up"]);
        n.ip(&["link", "set", &bridge, "up"]);
        n.ip(&["addr", "add", "198.18.0.1/24", "dev", &bridge]);
        n.ip(&["addr", "add", "2001:db8:ff::1/64", "dev", &bridge, "nodad"]);
        n.ip(&["route", "add", "203.0.113.4/32", "via", "198.18.0.2"]);
        n.ip(&["route", "add", "2001:db8:1::4/128", "via", "2001:db8:ff::2"]);
        s.ip(&[
            "link",
            "set",
            &sender_if,
            "address",
            &mac(fixtures::ROUTER_MAC),
            "up",
        ]);
        s.ip(&["addr", "add", "198.18.0.2/24", "dev", &sender_if]);
        s.ip(&[
            "addr",
            "add",
            "2001:db8:ff::2/64",
            "dev",
            &sender_if,
            "nodad",
        ]);
        s.ip(&["addr", "add", "203.0.113.3/32", "dev", "lo"]);
        s.ip(&["addr", "add", "2001:db8:1::3/128", "dev", "lo", "nodad"]);
        s.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.0.1"]);
        s.ip(&["route", "add", "192.0.2.0/24", "via", "198.18.0.1"]);
        s.ip(&["route", "add", "198.51.100.0/24", "via", "198.18.0.1"]);
        for net in ["2001:db8:1::/48", "2001:db8:2::/64", "2001:db8:3::/64"] {
            s.ip(&["route", "add", net, "via", "2001:db8:ff::1"]);
        }
        let lab = Lab {
            n,
            s,
            bridge,
            port,
            sender_if,
        };
        // Resolve the neighbours both ways now, so that later sends go out at once.
        lab.send_from_s(None, "198.18.0.1", b"hello");
        lab.send_from_n("198.18.0.2", b"hello");
        lab.send_from_s(None, "2001:db8:ff::1", b"hello");
        lab.send_from_n("2001:db8:ff::2", b"hello");
        thread::sleep(Duration::from_millis(50));
        lab
    }

    /// The bridge, with S as the gateway.
    fn uplink(&self) -> Uplink {
        Uplink {
            interfaces: vec![self.bridge.clone()],
            gateways: fixtures::gateways(),
        }
    }

    fn subnets() -> Vec<IpNet> {
        vec![
            "203.0.113.0/29".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ]
    }

    /// Two IPv4 and two IPv6 subnets.
    fn mixed_subnets() -> Vec<IpNet> {
        vec![
            "203.0.113.0/29".parse().unwrap(),
            "2001:db8:1::/64".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:2::/64".parse().unwrap(),
        ]
    }

    /// A UDP datagram from S (optionally from a chosen source) to `dst`:9.
    fn send_from_s(&self, src: Option<&str>, dst: &str, payload: &[u8]) {
        self.s.run(|| send_udp(src, dst, payload));
    }

    /// A UDP datagram sent by N itself, out of the bridge.
    fn send_from_n(&self, dst: &str, payload: &[u8]) {
        self.n.run(|| send_udp(None, dst, payload));
    }

    /// Raw Ethernet frames sent from S's veth into the bridge port.
    /// A watcher on N's uplink for [`Lab::subnets`] whose cutover always succeeds.
    fn watch(&self) -> Watcher {
        self.n
            .run(|| {
                Watcher::spawn(&self.uplink(), Lab::subnets(), |_: &super::Detection| {
                    Ok::<_, String>(Instant::now())
                })
            })
            .unwrap()
    }

    fn send_raw_from_s(&self, frames: &[Vec<u8>]) {
        send_raw(&self.s, &self.sender_if, frames);
    }

    /// (rx, tx) packet counters of the bridge device in N.
    fn bridge_counters(&self) -> (u64, u64) {
        let out = Command::new("ip")
            .args([
                "-n",
                self.n.name(),
                "-s",
                "-j",
                "link",
                "show",
                "dev",
                &self.bridge,
            ])
            .output()
            .expect("ip -s link");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let stats = &v[0]["stats64"];
        (
            stats["rx"]["packets"].as_u64().expect("rx packets"),
            stats["tx"]["packets"].as_u64().expect("tx packets"),
        )
    }
}

/// Raw Ethernet frames sent out of `ifname` in `ns`, as they are.
fn send_raw(ns: &Netns, ifname: &str, frames: &[Vec<u8>]) {
    let ifname = ifname.to_owned();
    ns.run(move || {
        let index = super::capture::interface_index(&ifname).expect("sending interface");
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        for frame in frames {
            // SAFETY: all-zero sockaddr_ll is valid; fields set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            // SAFETY: frame and addr are live and their sizes passed.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(
                n,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd is ours and not used after.
        unsafe { libc::close(fd) };
    });
}

fn send_udp(src: Option<&str>, dst: &str, payload: &[u8]) {
    let dst: IpAddr = dst.parse().unwrap();
    let src: IpAddr = match (src, dst) {
        (Some(src), _) => src.parse().unwrap(),
        (None, IpAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
        (None, IpAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind udp");
    socket
        .send_to(payload, SocketAddr::new(dst, 9))
        .expect("send udp");
}

fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    done()
}

#[test]
fn fires_once_on_the_first_native_packet_and_never_on_noise() {
    let lab = Lab::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<super::Detection>::new()));
    let watcher = {
        let (calls, seen) = (calls.clone(), seen.clone());
        lab.n
            .run(|| {
                Watcher::spawn(
                    &lab.uplink(),
                    Lab::subnets(),
                    move |d: &super::Detection| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(*d);
                        Ok::<_, std::io::Error>(Instant::now())
                    },
                )
            })
            .expect("watcher starts")
    };
    let (rx_before, tx_before) = lab.bridge_counters();

    // Noise that must not fire: ARP, QEMU's RARP (broadcast and unicast), an IPv6 frame
    // whose bytes mimic 203.0.113.2, a broadcast IPv4 frame to a VM.
    let noise = vec![
        fixtures::arp_request(
            "198.18.0.2".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        ),
        fixtures::qemu_rarp(),
        {
            let mut f = fixtures::qemu_rarp();
            f[..6].copy_from_slice(&fixtures::HOST_MAC);
            f
        },
        fixtures::ipv6_lookalike(),
        fixtures::udp4(
            fixtures::BROADCAST,
            "198.18.0.2".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
            b"broadcast",
        ),
    ];
    lab.send_raw_from_s(&noise);
    // Another subnet; a VM's outbound packet; VM-to-VM from outside; the host itself sending
    // to a watched address out of the bridge.
    lab.send_from_s(None, "192.0.2.1", b"other subnet");
    lab.send_from_s(Some("203.0.113.3"), "198.18.0.1", b"vm outbound");
    lab.send_from_s(Some("203.0.113.3"), "203.0.113.2", b"vm to vm");
    lab.send_from_n("203.0.113.4", b"outgoing from the host");
    thread::sleep(Duration::from_millis(300));

    let (rx_after, tx_after) = lab.bridge_counters();
    assert!(
        rx_after - rx_before >= 8,
        "the noise did not reach the bridge: rx {rx_before} -> {rx_after}"
    );
    assert!(
        tx_after > tx_before,
        "the host's own packet did not leave the bridge"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "fired on noise: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(watcher.status().phase, Phase::Watching);

    // The first native packet for 203.0.113.0/29, then more for it that must not call again.
    let first: IpNet = "203.0.113.0/29".parse().unwrap();
    let second: IpNet = "198.51.100.0/24".parse().unwrap();
    let sent = Instant::now();
    lab.send_from_s(None, "203.0.113.2", b"native");
    assert!(
        wait_for(EVENT_CEILING, || !watcher.records().is_empty()),
        "no cutover within 2 s of a native packet; status {:?}",
        watcher.status()
    );
    let noticed = sent.elapsed();
    for _ in 0..5 {
        lab.send_from_s(None, "203.0.113.6", b"native again");
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let status = watcher.status();
    assert_eq!(
        status.phase,
        Phase::Watching,
        "198.51.100.0/24 has not moved yet"
    );
    assert_eq!(status.waiting, vec![second]);

    let record = status.records[0].clone();
    assert_eq!(record.subnet, first);
    assert_eq!(record.dst, "203.0.113.2".parse::<IpAddr>().unwrap());
    assert_eq!(record.src, "198.18.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(record.error, None);
    assert!(
        record.latency > Duration::ZERO && record.latency < EVENT_CEILING,
        "implausible latency {:?}",
        record.latency
    );
    assert!(
        record.latency <= noticed,
        "latency {:?} > observed {noticed:?}",
        record.latency
    );

    // The second subnet moves later: its own call, then the watcher is done.
    lab.send_from_s(None, "198.51.100.7", b"native, second subnet");
    assert!(
        wait_for(EVENT_CEILING, || watcher.status().phase == Phase::Done),
        "second subnet not cut over; status {:?}",
        watcher.status()
    );
    lab.send_from_s(None, "198.51.100.8", b"after the end");
    thread::sleep(Duration::from_millis(50));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let subnets: Vec<IpNet> = seen.lock().unwrap().iter().map(|d| d.subnet).collect();
    assert_eq!(subnets, vec![first, second]);

    let status = watcher.stop();
    assert_eq!(status.phase, Phase::Done);
    assert!(status.waiting.is_empty());
    assert_eq!(status.records.len(), 2);
    assert_eq!(status.records[0], record);
    assert_eq!(status.records[1].subnet, second);
}

#[test]
fn stops_at_once_without_a_packet_and_reports_callback_errors() {
    let lab = Lab::new();
    let watcher = lab.watch();
    // No packet comes: stop must not wait for one (a ceiling, not a speed check).
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(watcher.stop().phase));
    assert_eq!(
        done_rx.recv_timeout(EVENT_CEILING),
        Ok(Phase::Stopped),
        "stop did not return without a packet"
    );

    let watcher = lab
        .n
        .run(|| {
            Watcher::spawn(&lab.uplink(), Lab::subnets(), |_: &super::Detection| {
                Err("deleting rule 7 in table inet vmtun: No such file or directory")
            })
        })
        .unwrap();
    lab.send_from_s(None, "203.0.113.5", b"native");
    assert!(wait_for(EVENT_CEILING, || !watcher.records().is_empty()));
    assert_eq!(
        watcher.records()[0].error.as_deref(),
        Some("deleting rule 7 in table inet vmtun: No such file or directory")
    );
}

#[test]
fn errors_name_the_bridge() {
    let lab = Lab::new();
    let err = lab
        .n
        .run(|| {
            let uplink = Uplink {
                interfaces: vec![lab.bridge.clone(), "br-nosuch0".into()],
                gateways: fixtures::gateways(),
            };
            Watcher::spawn(&uplink, Lab::subnets(), |_: &super::Detection| {
                Ok::<_, String>(Instant::now())
            })
        })
        .unwrap_err();
    assert!(matches!(err, CutoverError::NoSuchInterface { .. }));
    assert_eq!(
        err.to_string(),
        "interface br-nosuch0: no such interface (check [migration] bridge and native_interfaces)"
    );
    let err = lab
        .n
        .run(|| {
            Watcher::spawn(&lab.uplink(), vec![], |_: &super::Detection| {
                Ok::<_, String>(Instant::now())
            })
        })
        .unwrap_err();
    assert!(matches!(err, CutoverError::NoSubnets));
}

/// A frame for another host's MAC, flooded by the bridge, reaches the bridge device when it is
/// promiscuous (tcpdump running on it, say) as PACKET_OTHERHOST. The host's IP stack drops it,
/// and so must the watcher: it proves nothing about where the provider routes.
fn other_host_frame() -> Vec<u8> {
    let mut f = fixtures::udp4(
        [0x02, 0, 0, 0, 0, 0x99],
        "198.18.0.2".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
        b"for another host",
    );
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f
}

#[test]
fn a_frame_for_another_host_does_not_fire_even_on_a_promiscuous_bridge() {
    let lab = Lab::new();
    lab.n.ip(&["link", "set", &lab.bridge, "promisc", "on"]);
    let watcher = lab.watch();
    let (rx_before, _) = lab.bridge_counters();
    lab.send_raw_from_s(&[other_host_frame()]);
    // A native packet for the other subnet, sent after the flooded frame: the socket hands
    // frames over in order, so once it has fired the flooded one has been seen and refused.
    lab.send_from_s(
        None,
        "198.51.100.7",
        b"native, sent after the flooded frame",
    );
    assert!(
        wait_for(EVENT_CEILING, || !watcher.records().is_empty()),
        "the native packet after the flooded frame was not seen; status {:?}",
        watcher.status()
    );
    let (rx_after, _) = lab.bridge_counters();
    assert!(
        rx_after >= rx_before + 2,
        "the flooded frame did not reach the bridge device: rx {rx_before} -> {rx_after}"
    );
    let status = watcher.stop();
    let fired: Vec<IpNet> = status.records.iter().map(|r| r.subnet).collect();
    assert_eq!(
        fired,
        vec!["198.51.100.0/24".parse::<IpNet>().unwrap()],
        "fired on a frame for another host: {status:?}"
    );
    assert_eq!(
        status.waiting,
        vec!["203.0.113.0/29".parse::<IpNet>().unwrap()]
    );
    assert_eq!(status.phase, Phase::Stopped);
}

/// IPv6 next to IPv4: a native IPv6 packet fires the callback for its subnet with its
/// addresses; Neighbor Discovery for a VM's address, the host's own packet out of the bridge
/// and the rest of the noise do not.
#[test]
fn a_native_ipv6_packet_fires_and_neighbour_discovery_and_outgoing_frames_do_not() {
    let lab = Lab::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<super::Detection>::new()));
    let watcher = {
        let seen = seen.clone();
        lab.n
            .run(|| {
                Watcher::spawn(
                    &lab.uplink(),
                    Lab::mixed_subnets(),
                    move |d: &super::Detection| {
                        seen.lock().unwrap().push(*d);
                        Ok::<_, std::io::Error>(Instant::now())
                    },
                )
            })
            .expect("watcher starts")
    };
    let (rx_before, tx_before) = lab.bridge_counters();

    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let (vm, router_ll, router) = (v6("2001:db8:1::2"), v6("fe80::2"), v6("2001:db8:ff::2"));
    let host = fixtures::HOST_MAC;
    let group = fixtures::solicited_node(vm);
    // The router resolving the VM's address (multicast), then probing it (unicast to the
    // VM's address at the host's MAC, from its link-local and global addresses), and
    // advertisements to the VM's address.
    lab.send_raw_from_s(&[
        fixtures::neighbour_solicitation(fixtures::multicast_mac(group), router_ll, group, vm),
        fixtures::neighbour_solicitation(host, router_ll, vm, vm),
        fixtures::neighbour_solicitation(host, router, vm, vm),
        fixtures::neighbour_advertisement(host, router_ll, vm, router),
        fixtures::neighbour_advertisement(host, router, vm, router),
    ]);
    // Another subnet, just outside a watched one, a VM's packet, the host itself sending to
    // a watched address out of the bridge.
    lab.send_from_s(None, "2001:db8:3::1", b"other subnet");
    lab.send_from_s(None, "2001:db8:1:1::1", b"just outside the /64");
    lab.send_from_s(Some("2001:db8:1::3"), "2001:db8:1::2", b"vm to vm");
    lab.send_from_n("2001:db8:1::4", b"outgoing from the host");
    thread::sleep(Duration::from_millis(300));

    let (rx_after, tx_after) = lab.bridge_counters();
    assert!(
        rx_after - rx_before >= 8,
        "the noise did not reach the bridge: rx {rx_before} -> {rx_after}"
    );
    assert!(
        tx_after > tx_before,
        "the host's own packet did not leave the bridge"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "fired on noise: {:?}",
        seen.lock().unwrap()
    );

    lab.send_from_s(None, "2001:db8:1::2", b"native IPv6");
    assert!(
        wait_for(EVENT_CEILING, || !watcher.records().is_empty()),
        "no cutover after a native IPv6 packet; status {:?}",
        watcher.status()
    );
    let record = watcher.records()[0].clone();
    assert_eq!(record.subnet, "2001:db8:1::/64".parse::<IpNet>().unwrap());
    assert_eq!(record.src, IpAddr::V6(router));
    assert_eq!(record.dst, IpAddr::V6(vm));
    assert_eq!(record.error, None);
    let detection = seen.lock().unwrap()[0];
    assert_eq!(
        (detection.subnet, detection.src, detection.dst),
        (record.subnet, record.src, record.dst)
    );

    // The IPv4 subnet moves on its own packet, the other two still wait.
    lab.send_from_s(None, "203.0.113.2", b"native IPv4");
    assert!(
        wait_for(EVENT_CEILING, || watcher.records().len() == 2),
        "no cutover after a native IPv4 packet; status {:?}",
        watcher.status()
    );
    let status = watcher.stop();
    assert_eq!(status.phase, Phase::Stopped);
    let fired: Vec<IpNet> = status.records.iter().map(|r| r.subnet).collect();
    assert_eq!(
        fired,
        vec![
            "2001:db8:1::/64".parse::<IpNet>().unwrap(),
            "203.0.113.0/29".parse().unwrap()
        ]
    );
    assert_eq!(
        status.waiting,
        vec![
            "198.51.100.0/24".parse::<IpNet>().unwrap(),
            "2001:db8:2::/64".parse().unwrap()
        ]
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// As [`a_frame_for_another_host_does_not_fire_even_on_a_promiscuous_bridge`], for IPv6: the
/// packet socket for IPv6 keeps only PACKET_HOST frames too.
#[test]
fn an_ipv6_frame_for_another_host_does_not_fire_even_on_a_promiscuous_bridge() {
    let lab = Lab::new();
    lab.n.ip(&["link", "set", &lab.bridge, "promisc", "on"]);
    let watcher = lab
        .n
        .run(|| {
            Watcher::spawn(
                &lab.uplink(),
                Lab::mixed_subnets(),
                |_: &super::Detection| Ok::<_, String>(Instant::now()),
            )
        })
        .unwrap();
    let (rx_before, _) = lab.bridge_counters();
    let other_host = [0x02, 0, 0, 0, 0, 0x99];
    let flooded = fixtures::udp6(
        other_host,
        "2001:db8:ff::2".parse().unwrap(),
        "2001:db8:1::2".parse().unwrap(),
        b"for another host",
    );
    lab.send_raw_from_s(&[flooded]);
    // Sent after the flooded frame, same family: once it has fired, the flooded one has been
    // seen and refused.
    lab.send_from_s(None, "2001:db8:2::7", b"native, after the flooded frame");
    assert!(
        wait_for(EVENT_CEILING, || !watcher.records().is_empty()),
        "the native packet after the flooded frame was not seen; status {:?}",
        watcher.status()
    );
    let (rx_after, _) = lab.bridge_counters();
    assert!(
        rx_after >= rx_before + 2,
        "the flooded frame did not reach the bridge device: rx {rx_before} -> {rx_after}"
    );
    let status = watcher.stop();
    let fired: Vec<IpNet> = status.records.iter().map(|r| r.subnet).collect();
    assert_eq!(
        fired,
        vec!["2001:db8:2::/64".parse::<IpNet>().unwrap()],
        "fired on a frame for another host: {status:?}"
    );
}

/// Why the watcher is not libpcap: direction `in` still includes PACKET_OTHERHOST, so libpcap
/// hands the flooded frame over (the classifier alone cannot tell it from a native packet).
#[test]
#[ignore = "documents the libpcap alternative; run with --ignored, as root"]
fn pcap_sees_a_frame_for_another_host_on_a_promiscuous_bridge() {
    let lab = Lab::new();
    lab.n.ip(&["link", "set", &lab.bridge, "promisc", "on"]);
    let classifier = Classifier::new(Lab::subnets(), fixtures::gateways());
    let stop = StopSignal::new().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            lab.n.enter_then(|| {
                let mut pcap =
                    PcapCapture::open(&lab.bridge, &classifier, Wait::Stoppable).unwrap();
                ready_tx.send(()).unwrap();
                pcap.run(&stop, |frame| classifier.classify(frame.data))
            })
        });
        ready_rx.recv().unwrap();
        lab.send_raw_from_s(&[other_host_frame()]);
        thread::sleep(Duration::from_millis(200));
        stop.raise();
        let run = receiver.join().unwrap().unwrap();
        assert!(
            matches!(run, Run::Done(_)),
            "libpcap did not pass the flooded frame"
        );
    });
}

/// The kernel-compiled filter agrees with the classifier on the fixtures (run through
/// libpcap's BPF interpreter): it lets every native packet through.
#[test]
fn the_bpf_filter_passes_what_the_classifier_accepts() {
    let c = Classifier::new(Lab::subnets(), fixtures::gateways());
    let program = super::capture::compile_filter("test", &c).unwrap();
    let host = fixtures::HOST_MAC;
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let native = fixtures::udp4(host, ip("198.18.0.2"), ip("203.0.113.7"), b"");
    let native2 = fixtures::udp4(host, ip("198.18.0.2"), ip("198.51.100.1"), b"");
    assert!(program.filter(&native) && c.classify(&native).is_some());
    assert!(program.filter(&native2) && c.classify(&native2).is_some());
    for refused in [
        fixtures::arp_request(ip("198.18.0.2"), ip("203.0.113.2")),
        fixtures::qemu_rarp(),
        fixtures::ipv6_lookalike(),
        fixtures::udp4(host, ip("198.18.0.2"), ip("203.0.113.8"), b""),
        fixtures::udp4(host, ip("198.18.0.2"), ip("192.0.2.1"), b""),
    ] {
        assert!(!program.filter(&refused), "filter passed {refused:02x?}");
    }
}

/// The filter compiles for IPv4-only, IPv6-only, mixed and empty subnet lists, and on the
/// fixtures agrees with the classifier: it passes every native packet of either family (run
/// through libpcap's BPF interpreter) and drops the other family's and other destinations.
#[test]
fn the_bpf_filter_passes_native_packets_of_both_families() {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let host = fixtures::HOST_MAC;
    let native4 = fixtures::udp4(host, v4("198.18.0.2"), v4("203.0.113.7"), b"");
    let native6 = fixtures::udp6(host, v6("2001:db8:ff::2"), v6("2001:db8:1::2"), b"");
    let tagged6 = fixtures::vlan_tagged(&native6);
    let other6 = fixtures::udp6(host, v6("2001:db8:ff::2"), v6("2001:db8:2::2"), b"");
    let lists = [
        ("IPv4 only", vec![net("203.0.113.0/29")], true, false),
        ("IPv6 only", vec![net("2001:db8:1::/64")], false, true),
        (
            "mixed",
            vec![net("203.0.113.0/29"), net("2001:db8:1::/64")],
            true,
            true,
        ),
    ];
    for (name, subnets, passes4, passes6) in lists {
        let mut c = Classifier::new(subnets, fixtures::gateways());
        let program =
            super::capture::compile_filter("test", &c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(program.filter(&native4), passes4, "{name}: IPv4 native");
        assert_eq!(c.classify(&native4).is_some(), passes4, "{name}");
        assert_eq!(program.filter(&native6), passes6, "{name}: IPv6 native");
        assert_eq!(c.classify(&native6).is_some(), passes6, "{name}");
        for refused in [
            fixtures::arp_request(v4("198.18.0.2"), v4("203.0.113.2")),
            fixtures::ipv6_lookalike(),
            fixtures::udp4(host, v4("198.18.0.2"), v4("192.0.2.1"), b""),
            other6.clone(),
            // libpcap's `ip6` looks at the outer ethertype only, as `ip` does: on the receive
            // path the kernel moves the tag out of the frame before packet sockets see it.
            tagged6.clone(),
        ] {
            assert!(!program.filter(&refused), "{name}: passed {refused:02x?}");
        }
        for subnet in c.subnets().to_vec() {
            c.stop_watching(subnet);
        }
        let nothing = super::capture::compile_filter("test", &c).unwrap();
        assert!(
            !nothing.filter(&native4) && !nothing.filter(&native6),
            "{name}"
        );
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every namespace of the machine.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Copy, Debug)]
enum Source {
    PacketSocket(Wait),
    Pcap(Wait),
}

/// Measures send-to-detection latency for one capture source: see the figures in the module
/// doc of `cutover`.
/// The watcher's subnets are `subnets`; the packets go to `to`.
fn measure(
    lab: &Lab,
    source: Source,
    subnets: Vec<IpNet>,
    to: IpAddr,
    count: usize,
    warmup: usize,
) -> Vec<Duration> {
    let classifier = Classifier::new(subnets, fixtures::gateways());
    let stop = StopSignal::new().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    // Offset of our payload: Ethernet, IPv4 without options or IPv6 without extension
    // headers, UDP; and where S sends from.
    let (ip_header_len, from) = match to {
        IpAddr::V4(_) => (IPV4_MIN_HEADER_LEN, "198.18.0.2"),
        IpAddr::V6(_) => (IPV6_HEADER_LEN, "2001:db8:ff::2"),
    };
    let payload_at = ETHERNET_HEADER_LEN + ip_header_len + 8;
    thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            lab.n.enter_then(|| {
                let mut samples = Vec::with_capacity(count);
                let mut on_frame = |frame: super::capture::Frame<'_>| {
                    let now = monotonic_ns();
                    classifier.classify(frame.data)?;
                    let seq = u64::from_be_bytes(
                        frame
                            .data
                            .get(payload_at..payload_at + 8)?
                            .try_into()
                            .ok()?,
                    );
                    let sent = u64::from_be_bytes(
                        frame
                            .data
                            .get(payload_at + 8..payload_at + 16)?
                            .try_into()
                            .ok()?,
                    );
                    if seq as usize >= warmup {
                        samples.push(Duration::from_nanos(now.saturating_sub(sent)));
                    }
                    (samples.len() == count).then_some(())
                };
                let run = match source {
                    Source::PacketSocket(wait) => {
                        let mut s = PacketSocket::open(
                            std::slice::from_ref(&lab.bridge),
                            &classifier,
                            wait,
                        )
                        .unwrap();
                        ready_tx.send(()).unwrap();
                        s.run(&stop, &mut on_frame)
                    }
                    Source::Pcap(wait) => {
                        let mut s = PcapCapture::open(&lab.bridge, &classifier, wait).unwrap();
                        ready_tx.send(()).unwrap();
                        s.run(&stop, &mut on_frame)
                    }
                };
                assert!(matches!(run, Ok(Run::Done(()))));
                samples
            })
        });
        ready_rx.recv().unwrap();
        lab.s.run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
            for seq in 0..(count + warmup) as u64 {
                let mut payload = [0u8; 16];
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                payload[8..].copy_from_slice(&monotonic_ns().to_be_bytes());
                socket.send_to(&payload, SocketAddr::new(to, 9)).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
        });
        receiver.join().unwrap()
    })
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "{name:<40} n={} p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  max {:>7.1} µs",
        samples.len(),
        us(pick(0.5)),
        us(pick(0.9)),
        us(pick(0.99)),
        us(pick(1.0)),
    )
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, as root"]
fn compare_capture_latency() {
    let lab = Lab::new();
    let (v4, v6): (IpAddr, IpAddr) = (
        "203.0.113.2".parse().unwrap(),
        "2001:db8:1::2".parse().unwrap(),
    );
    let stoppable = Source::PacketSocket(Wait::Stoppable);
    // IPv4 packets to an IPv4 list (one socket); then, with both families watched (two
    // sockets polled), IPv4 and IPv6 packets.
    let variants = [
        (
            "AF_PACKET poll+recv (watcher)",
            stoppable,
            Lab::subnets(),
            v4,
        ),
        (
            "AF_PACKET blocking recv",
            Source::PacketSocket(Wait::Blocking),
            Lab::subnets(),
            v4,
        ),
        (
            "pcap immediate poll+next",
            Source::Pcap(Wait::Stoppable),
            Lab::subnets(),
            v4,
        ),
        (
            "pcap immediate blocking next",
            Source::Pcap(Wait::Blocking),
            Lab::subnets(),
            v4,
        ),
        (
            "AF_PACKET poll+recv, v4+v6 list, IPv4",
            stoppable,
            Lab::mixed_subnets(),
            v4,
        ),
        (
            "AF_PACKET poll+recv, v4+v6 list, IPv6",
            stoppable,
            Lab::mixed_subnets(),
            v6,
        ),
    ];
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    // Interleaved rounds, so that load from elsewhere on the machine hits every variant.
    for _ in 0..5 {
        for ((_, source, subnets, to), samples) in variants.iter().zip(&mut all) {
            samples.extend(measure(&lab, *source, subnets.clone(), *to, 200, 10));
        }
    }
    for ((name, ..), samples) in variants.iter().zip(all) {
        println!("{}", summary(name, samples));
    }
}

/// The bridge going down and up again (an operator's `ip link set br0 down; ... up`, a
/// bridge reconfigured) must not end the watch: the first native packet afterwards still
/// cuts over.
#[test]
fn the_watcher_rearms_after_the_bridge_goes_down_and_up() {
    let lab = Lab::new();
    let watcher = lab.watch();
    lab.n.ip(&["link", "set", &lab.bridge, "down"]);
    lab.n.ip(&["link", "set", &lab.bridge, "up"]);
    // Until the bridge forwards again (forward_delay 0) and S has the host's MAC, sends
    // may be lost: send until the watcher sees one.
    let cut_over = wait_for(EVENT_CEILING, || {
        lab.send_from_s(None, "203.0.113.2", b"native, after down and up");
        thread::sleep(Duration::from_millis(20));
        !watcher.records().is_empty() || matches!(watcher.status().phase, Phase::Failed { .. })
    });
    let status = watcher.stop();
    assert!(
        cut_over && status.records.len() == 1,
        "no cutover after the bridge went down and up: {status:?}"
    );
    assert_eq!(
        status.records[0].subnet,
        "203.0.113.0/29".parse::<IpNet>().unwrap()
    );
}

/// Only the provider may trigger the cutover: the same native packets, forged by a neighbour
/// on the segment (another source MAC), of either family, or sent by the gateway with a
/// source whose route does not leave through the bridge (strict reverse path), or tagged for
/// a VLAN the host has no device for, never fire; the gateway's real packet still does.
#[test]
fn only_the_gateway_can_trigger_and_only_for_sources_routed_back_through_the_bridge() {
    let lab = Lab::new();
    let watcher = lab
        .n
        .run(|| {
            Watcher::spawn(
                &lab.uplink(),
                Lab::mixed_subnets(),
                |_: &super::Detection| Ok::<_, String>(Instant::now()),
            )
        })
        .unwrap();
    let (rx_before, _) = lab.bridge_counters();
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let host = fixtures::HOST_MAC;
    let native4 = fixtures::udp4(host, v4("198.18.0.2"), v4("203.0.113.2"), b"");
    let native6 = fixtures::udp6(host, v6("2001:db8:ff::2"), v6("2001:db8:1::2"), b"");
    lab.send_raw_from_s(&[
        fixtures::from_mac(native4.clone(), fixtures::NEIGHBOUR_MAC),
        fixtures::from_mac(native6.clone(), fixtures::NEIGHBOUR_MAC),
        // From the gateway, but N has no route back to these sources at all.
        fixtures::udp4(host, v4("192.0.2.99"), v4("203.0.113.2"), b""),
        fixtures::udp6(host, v6("2001:db8:99::1"), v6("2001:db8:1::2"), b""),
        fixtures::vlan_tagged(&native4),
    ]);
    // Sent after the refused frames, on the same sockets: once it has fired, they have all
    // been seen.
    lab.send_from_s(None, "198.51.100.7", b"native, from the gateway");
    assert!(
        wait_for(EVENT_CEILING, || !watcher.records().is_empty()),
        "the gateway's native packet was not seen; status {:?}",
        watcher.status()
    );
    let (rx_after, _) = lab.bridge_counters();
    assert!(
        rx_after >= rx_before + 6,
        "the frames did not reach the bridge: rx {rx_before} -> {rx_after}"
    );
    // The IPv6 frames go to another socket: give them a moment as well.
    thread::sleep(Duration::from_millis(200));
    let status = watcher.stop();
    let fired: Vec<IpNet> = status.records.iter().map(|r| r.subnet).collect();
    assert_eq!(
        fired,
        vec!["198.51.100.0/24".parse::<IpNet>().unwrap()],
        "fired on a frame not from the provider: {status:?}"
    );
}

/// The bridge deleted while the watcher runs: a clear error naming it, not a silent watch.
#[test]
fn the_bridge_disappearing_fails_the_watcher_naming_it() {
    let lab = Lab::new();
    let watcher = lab.watch();
    lab.n.ip(&["link", "del", &lab.bridge]);
    assert!(
        wait_for(EVENT_CEILING, || matches!(
            watcher.status().phase,
            Phase::Failed { .. }
        )),
        "the watcher did not notice the bridge was deleted: {:?}",
        watcher.status()
    );
    assert_eq!(
        watcher.stop().phase,
        Phase::Failed {
            error: format!(
                "interface {}: disappeared; run `vmtun cutover` by hand",
                lab.bridge
            )
        }
    );
}

/// Native packets may come in on another interface than the bridge: here a second uplink
/// (a second link to the same router, outside the bridge). Watching the bridge alone misses
/// them; listed among the interfaces, the first one cuts over.
#[test]
fn a_native_packet_on_a_second_interface_cuts_over() {
    let lab = Lab::new();
    let (n_link, s_link) = (format!("{}x", lab.bridge), format!("{}x", lab.sender_if));
    lab.n.ip(&[
        "link",
        "add",
        &n_link,
        "type",
        "veth",
        "peer",
        "name",
        &s_link,
        "netns",
        lab.s.name(),
    ]);
    lab.n.ip(&["link", "set", &n_link, "up"]);
    lab.n.ip(&["addr", "add", "198.18.7.1/24", "dev", &n_link]);
    // The router's second port has the MAC of its first, as a router's ports often do.
    lab.s.ip(&[
        "link",
        "set",
        &s_link,
        "address",
        &mac(fixtures::ROUTER_MAC),
        "up",
    ]);
    lab.s.ip(&["addr", "add", "198.18.7.2/24", "dev", &s_link]);
    // S reaches one VM address through the second link, from its address there.
    lab.s
        .ip(&["route", "add", "203.0.113.5/32", "via", "198.18.7.1"]);
    let send_over_second_link = || {
        // The first may wait for ARP; one gets through.
        for _ in 0..3 {
            lab.send_from_s(None, "203.0.113.5", b"native, over the second link");
            thread::sleep(Duration::from_millis(50));
        }
    };
    let (bridge_only, both) = lab.n.run(|| {
        let spawn = |uplink: &Uplink| {
            Watcher::spawn(uplink, Lab::subnets(), |_: &super::Detection| {
                Ok::<_, String>(Instant::now())
            })
            .unwrap()
        };
        let both = Uplink {
            interfaces: vec![lab.bridge.clone(), n_link.clone()],
            gateways: fixtures::gateways(),
        };
        (spawn(&lab.uplink()), spawn(&both))
    });
    send_over_second_link();
    assert!(
        wait_for(EVENT_CEILING, || !both.records().is_empty()),
        "no cutover from the second interface: {:?}",
        both.status()
    );
    let record = both.stop().records[0].clone();
    assert_eq!(
        (record.subnet, record.src, record.dst),
        (
            "203.0.113.0/29".parse().unwrap(),
            "198.18.7.2".parse().unwrap(),
            "203.0.113.5".parse().unwrap()
        )
    );
    let bridge_only = bridge_only.stop();
    assert!(
        bridge_only.records.is_empty(),
        "the bridge's watcher saw a packet that came in on the second link: {bridge_only:?}"
    );
}

/// An Ethernet frame from `src` to `dst` of the local experimental EtherType 0x88b5 (IEEE
/// 802): no protocol of the host answers it.
fn experimental_frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(60, 0);
    f
}

/// What a VM interface's watch takes (`PacketSocket::arriving`, the handover): every frame
/// the link brings in, of any protocol and destination, and none that the host sends out.
#[test]
fn arriving_takes_every_frame_from_the_link_and_none_the_host_sends() {
    let lab = Lab::new();
    // The bridge's port stands for a VM's interface: every frame the link brings in
    // reaches it (the bridge device gets only what is for the host).
    let mut socket = lab
        .n
        .run(|| PacketSocket::arriving(&lab.port).expect("open"));
    let stranger = [0x02, 0, 0, 0, 0, 0x77];
    // Out of the bridge, from the host: not taken.
    send_raw(
        &lab.n,
        &lab.bridge,
        &[experimental_frame(stranger, fixtures::HOST_MAC)],
    );
    // In from the link, for another host's MAC: taken.
    lab.send_raw_from_s(&[experimental_frame(stranger, fixtures::ROUTER_MAC)]);
    let stop = Arc::new(StopSignal::new().expect("eventfd"));
    let ceiling = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(EVENT_CEILING);
            stop.raise();
        })
    };
    let mut sources = Vec::new();
    let run = socket.run(&stop, |frame| {
        let source: [u8; 6] = frame.data[6..12].try_into().expect("a whole header");
        sources.push(source);
        (frame.data[12..14] == [0x88, 0xb5] && source == fixtures::ROUTER_MAC).then_some(())
    });
    assert!(
        matches!(run, Ok(Run::Done(()))),
        "the stranger's frame was not taken"
    );
    drop(ceiling);
    assert!(
        !sources.contains(&fixtures::HOST_MAC),
        "took a frame the host sent: {sources:02x?}"
    );
}
