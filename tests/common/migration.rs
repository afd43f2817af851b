//! Helpers of the migration tests (tests/migration.rs, tests/migration_cli.rs): the two
//! hosts' vmtun instances on the lab of `vmtun::lab::migration`, waiting for what they do,
//! snapshots of a host's routing and netfilter state, and raw Ethernet frames (ARP, QEMU's
//! RARP announcement, broadcast IPv4) sent onto the new host's bridge from the core and
//! seen arriving there.
#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use vmtun::lab::migration::hosts::{CutoverState, HostConfig, HostVmtun, KeyPair};
use vmtun::lab::migration::probe::{Echo, Prober, unix_ns};
use vmtun::lab::migration::stats::Via;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{ECHO_PORT, TUNNEL_NEW, VIF, VM_ADDR};
use vmtun::lab::{LabError, Netns, Result, Scratch, wait_for, wait_until};

/// Path of the `vmtun` binary under test.
pub const VMTUN: &str = env!("CARGO_BIN_EXE_vmtun");

/// The ceiling of every wait for something that should happen: long, so that a slow,
/// shared machine never fails a test; a working vmtun takes milliseconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// The two hosts' configs, written but not started: `(old, new)`.
pub fn prepare_hosts<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
    cutover: &'static str,
) -> Result<(HostVmtun<'a>, HostVmtun<'a>)> {
    prepare_hosts_with(lab, scratch, cutover, |_, _| {})
}

/// [`prepare_hosts`], with `customize(old, new)` changing the configs before they are
/// written.
pub fn prepare_hosts_with<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
    cutover: &'static str,
    customize: impl FnOnce(&mut HostConfig, &mut HostConfig),
) -> Result<(HostVmtun<'a>, HostVmtun<'a>)> {
    let vmtun = Path::new(VMTUN);
    let old_keys = KeyPair::generate(vmtun)?;
    let new_keys = KeyPair::generate(vmtun)?;
    let mut old_config = HostConfig::old(&old_keys, &new_keys);
    let mut new_config = HostConfig::new_host(&new_keys, &old_keys, cutover);
    customize(&mut old_config, &mut new_config);
    let old = HostVmtun::prepare(&lab.old, vmtun, scratch, old_config)?;
    let new = HostVmtun::prepare(&lab.new, vmtun, scratch, new_config)?;
    Ok((old, new))
}

/// Starts `vmtun up` on both hosts (the new host first, as an operator would) and waits
/// for the tunnel's handshake.
pub fn launch_both(
    lab: &MigrationLab,
    old: &mut HostVmtun<'_>,
    new: &mut HostVmtun<'_>,
) -> Result<()> {
    new.launch()?;
    old.launch()?;
    wait_tunnel(lab)
}

/// The client probing the VM at `rate_hz`, once the first reply came back.
pub fn probing(lab: &MigrationLab, rate_hz: u32) -> Result<Prober> {
    let target = SocketAddrV4::new(VM_ADDR.parse().expect("constant"), ECHO_PORT);
    let prober = Prober::start(&lab.client, target, rate_hz)?;
    wait_until(WAIT, "the first reply", || prober.answered_since(0))?;
    Ok(prober)
}

/// The lab with the VM moved to the new host and answered there through the tunnel
/// (before the provider's switch); both hosts' vmtun up; the client probing at 1 kHz.
pub struct Moved<'a> {
    /// The lab.
    pub lab: &'a MigrationLab,
    /// The old host's vmtun.
    pub old: HostVmtun<'a>,
    /// The new host's vmtun.
    pub new: HostVmtun<'a>,
    /// The client's probes; `None` once a test stopped them.
    pub prober: Option<Prober>,
    _echo: Echo,
}

/// Builds [`Moved`] on `lab`: both hosts up, the client probing, the VM moved and answered.
pub fn moved<'a>(lab: &'a MigrationLab, scratch: &Scratch) -> Result<Moved<'a>> {
    let echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let (mut old, mut new) = prepare_hosts(lab, scratch, "auto")?;
    launch_both(lab, &mut old, &mut new)?;
    let prober = probing(lab, 1000)?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    let at = unix_ns();
    wait_until(WAIT, "replies through the tunnel after the move", || {
        prober.answered_since(at)
    })?;
    Ok(Moved {
        lab,
        old,
        new,
        prober: Some(prober),
        _echo: echo,
    })
}

impl Moved<'_> {
    /// The running prober.
    pub fn prober(&self) -> &Prober {
        self.prober.as_ref().expect("probing")
    }

    /// Runs `command` in the new host (another program removing vmtun's objects) and waits
    /// for the VM to be answered again; prints how long that took.
    pub fn removed_and_answered_again(&self, what: &str, command: &[&str]) -> Result<()> {
        let started = unix_ns();
        self.lab.new.run(command[0], &command[1..])?;
        let returned = unix_ns();
        wait_until(WAIT, &format!("the VM answered again after {what}"), || {
            self.prober().answered_since(returned)
        })
        .map_err(|e| LabError::Failed(format!("{e}; the new host's log:\n{}", self.new.log())))?;
        let log = self.prober().snapshot();
        let first = log.sent_ns.partition_point(|&t| t < returned);
        let answer = log.replies[first..]
            .iter()
            .flatten()
            .map(|r| r.received_ns)
            .min()
            .unwrap_or(returned);
        let status = self.new.status()?;
        eprintln!(
            "after {what}: answered again {:.1} ms after the command started ({:.1} ms after \
             it returned); vmtun's restore took {:.1} ms",
            (answer - started) as f64 / 1e6,
            answer.saturating_sub(returned) as f64 / 1e6,
            status["restore"]["last"]["took_ns"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / 1e6
        );
        Ok(())
    }

    /// Replies to probes sent since `since_ns` that came back through `via`.
    pub fn replies_since(&self, since_ns: u64, via: Via) -> usize {
        let log = self.prober().snapshot();
        let first = log.sent_ns.partition_point(|&t| t < since_ns);
        log.replies[first..]
            .iter()
            .flatten()
            .filter(|r| r.via == via)
            .count()
    }
}

/// Waits for a ping from the old host to the new host's tunnel address: the handshake.
pub fn wait_tunnel(lab: &MigrationLab) -> Result<()> {
    wait_until(WAIT, "a ping through the tunnel", || {
        lab.old.answers_ping(TUNNEL_NEW)
    })
}

/// Waits until `vmtun status` on `host` satisfies `done`; the state it showed then.
pub fn wait_cutover(
    host: &HostVmtun<'_>,
    what: &str,
    mut done: impl FnMut(&CutoverState) -> bool,
) -> Result<CutoverState> {
    wait_for(WAIT, what, || {
        host.status()
            .ok()
            .map(|s| CutoverState::from_status(&s))
            .filter(&mut done)
    })
}

/// Waits until `vmtun status` on the new host shows the cutover done.
pub fn wait_cutover_done(new: &HostVmtun<'_>) -> Result<CutoverState> {
    wait_cutover(
        new,
        "vmtun status to show the cutover done",
        CutoverState::is_done,
    )
}

/// Sends one ping from the client to `addr` at a time until `vmtun status` on the new host
/// satisfies `done` (the provider must already route `addr` to the new host): native
/// packets for the address, as many as it takes.
pub fn cut_over_with_pings(
    lab: &MigrationLab,
    new: &HostVmtun<'_>,
    addr: &str,
    done: impl Fn(&CutoverState) -> bool,
) -> Result<CutoverState> {
    wait_for(WAIT, &format!("pings to {addr} to cut over"), || {
        let _ = lab
            .client
            .command("ping")
            .args(["-c", "1", "-W", "0.2", "-q", addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        new.status()
            .ok()
            .map(|s| CutoverState::from_status(&s))
            .filter(&done)
    })
}

/// `vmtun status -c FILE` (the text) of `host`, from its `migration:` line on.
pub fn migration_status_text(host: &HostVmtun<'_>) -> Result<String> {
    let text = host.command(&["status"])?;
    text.find("migration:")
        .map(|at| text[at..].to_owned())
        .ok_or_else(|| LabError::Failed(format!("no migration part in vmtun status:\n{text}")))
}

/// Whether `ns` routes [`VM_ADDR`]/32 onto [`VIF`] with proxy ARP on there: what
/// `vif-up` (or `vmtun up`'s interface watcher) sets.
pub fn vif_routed(ns: &Netns) -> Result<bool> {
    if !ns.has_link(VIF) {
        return Ok(false);
    }
    let route = ns.ip(&["route", "show", &format!("{VM_ADDR}/32"), "dev", VIF])?;
    let proxy_arp = ns.sysctl_value(&format!("net.ipv4.conf.{VIF}.proxy_arp"))?;
    Ok(!route.trim().is_empty() && proxy_arp.trim() == "1")
}

/// A host's routing and netfilter state, as text, to compare before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// `ip rule`.
    pub rules: String,
    /// `ip route show table all`.
    pub routes: String,
    /// `nft list ruleset` (iptables-nft's tables included).
    pub nft: String,
    /// rp_filter, proxy_arp, forwarding and src_valid_mark of every interface, and
    /// ip_forward.
    pub sysctls: String,
    /// Interfaces (names only).
    pub links: String,
}

impl HostState {
    /// Reads the state of `ns`.
    pub fn of(ns: &Netns) -> Result<Self> {
        let links = ns.ip(&["-o", "link", "show"])?;
        let mut names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect();
        names.sort_unstable();
        Ok(Self {
            rules: ns.ip(&["rule", "show"])?,
            routes: ns.ip(&["route", "show", "table", "all"])?,
            nft: ns.run("nft", &["list", "ruleset"])?,
            sysctls: ns.run(
                "sysctl",
                &[
                    "-a",
                    "-r",
                    r"^net\.ipv4\.(conf\..*\.(rp_filter|proxy_arp|forwarding|src_valid_mark)|ip_forward)$",
                ],
            )?,
            links: names.join(" "),
        })
    }

    /// A readable difference for failure messages.
    pub fn diff(&self, other: &Self) -> String {
        let mut out = String::new();
        for (name, a, b) in [
            ("ip rule", &self.rules, &other.rules),
            ("ip route show table all", &self.routes, &other.routes),
            ("nft list ruleset", &self.nft, &other.nft),
            ("sysctls", &self.sysctls, &other.sysctls),
            ("links", &self.links, &other.links),
        ] {
            if a != b {
                out += &format!("--- {name} before:\n{a}\n--- {name} after:\n{b}\n");
            }
        }
        out
    }
}

/// An Ethernet frame: destination, source, EtherType, payload (padded to 60 bytes).
pub fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An ARP/RARP body for Ethernet/IPv4 (RFC 826, RFC 903).
fn arp_body(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut b = vec![0, 1, 0x08, 0x00, 6, 4];
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa);
    b.extend_from_slice(&tha);
    b.extend_from_slice(&tpa);
    b
}

/// A minimal IPv4/UDP packet from `src` to `dst` (checksums computed for the IP header).
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, src[0], src[1], src[2], src[3], dst[0], dst[1],
        dst[2], dst[3],
    ];
    let sum: u32 = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(&[0x1e, 0x61, 0x1e, 0x61, 0, 8, 0, 0]);
    p
}

/// A minimal IPv6/UDP packet from `src` to `dst` (UDP checksum left zero: nothing before the
/// UDP layer looks at it).
pub fn ipv6_udp(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x1e, 0x61, 0x1e, 0x61, 0, 8, 0, 0]);
    p
}

/// Frames that carry the VM's address without being a native IPv4 packet for the subnet
/// to this host, each with a name: ARP requests and a gratuitous ARP for the VM's address,
/// QEMU's RARP announcement after a migration, and a broadcast IPv4 frame to the VM's
/// address.
pub fn decoy_frames(src_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    const BROADCAST: [u8; 6] = [0xff; 6];
    let vm_mac = [0x52, 0x54, 0x00, 0x00, 0x71, 0x02];
    let vm = [203, 0, 113, 2];
    let core = [198, 18, 2, 1];
    vec![
        (
            "ARP request for the VM's address",
            frame(
                BROADCAST,
                src_mac,
                0x0806,
                &arp_body(1, src_mac, core, [0; 6], vm),
            ),
        ),
        (
            "gratuitous ARP for the VM's address",
            frame(
                BROADCAST,
                src_mac,
                0x0806,
                &arp_body(2, src_mac, vm, BROADCAST, vm),
            ),
        ),
        (
            "QEMU's RARP announcement",
            frame(
                BROADCAST,
                vm_mac,
                0x8035,
                &arp_body(3, vm_mac, [0; 4], vm_mac, [0; 4]),
            ),
        ),
        (
            "broadcast IPv4 frame to the VM's address",
            frame(BROADCAST, src_mac, 0x0800, &ipv4_udp([198, 18, 10, 2], vm)),
        ),
    ]
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let text = ns.run("cat", &[&format!("/sys/class/net/{dev}/address")])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| LabError::Failed(format!("bad MAC of {dev}: {text:?}")))
}

/// An `AF_PACKET` socket for every protocol, bound to `dev` of the calling thread's
/// namespace (run it on a [`Netns::thread`]); the socket keeps that namespace.
fn packet_socket(dev: &str) -> Result<(OwnedFd, libc::c_int)> {
    let name = std::ffi::CString::new(dev).expect("no NUL in a device name");
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(LabError::io(
            format!("finding {dev}"),
            std::io::Error::last_os_error(),
        ));
    }
    let ifindex = ifindex as libc::c_int;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2); the fd is owned by OwnedFd right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(protocol)) };
    if fd < 0 {
        return Err(LabError::io(
            "opening a packet socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid before we fill it.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex;
    // SAFETY: bind(2) with an address we own, size as declared.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(LabError::io(
            format!("binding a packet socket to {dev}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok((fd, ifindex))
}

/// Runs `f` with a packet socket on `dev`, on a thread in `ns`.
fn with_packet_socket<T: Send + 'static>(
    ns: &Netns,
    dev: &str,
    f: impl FnOnce(OwnedFd, libc::c_int) -> Result<T> + Send + 'static,
) -> Result<T> {
    let dev = dev.to_owned();
    ns.thread("packet-socket", move || {
        let (fd, ifindex) = packet_socket(&dev)?;
        f(fd, ifindex)
    })?
    .join()
    .map_err(|_| LabError::Failed("the packet socket thread panicked".into()))?
}

/// Sends `frames` out of `dev` in `ns` through an `AF_PACKET` socket, unchanged.
pub fn send_frames(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let name = dev.to_owned();
    with_packet_socket(ns, dev, move |fd, ifindex| {
        for f in &frames {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid before we fill it.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: sendto(2) with a buffer and address we own, sizes as declared.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(LabError::io(
                    format!("sending a frame on {name}"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    })
}

/// Length of an Ethernet header without a VLAN tag.
const ETHERNET_HEADER: usize = 14;

/// `PACKET_OUTGOING` in `sockaddr_ll.sll_pkttype` (linux/if_packet.h).
const PACKET_OUTGOING: u8 = 4;

/// What arrives on one interface, as the cutover watcher sees it there: a packet socket
/// opened before the frames of interest are sent, so none can be missed.
pub struct FrameTap {
    fd: OwnedFd,
    dev: String,
}

impl FrameTap {
    /// Starts receiving every frame arriving on `dev` in `ns`.
    pub fn open(ns: &Netns, dev: &str) -> Result<Self> {
        let fd = with_packet_socket(ns, dev, |fd, _| Ok(fd))?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt(2) with a timeval we own, size as declared.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(LabError::io(
                "setting a receive timeout",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            fd,
            dev: dev.to_owned(),
        })
    }

    /// Waits (at most [`WAIT`]) for an arriving frame that `matches`; that frame.
    pub fn wait_for(&self, what: &str, mut matches: impl FnMut(&[u8]) -> bool) -> Result<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: sockaddr_ll is plain data; recvfrom fills it.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom(2) into a buffer and address we own, sizes as declared.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(LabError::io(format!("receiving on {}", self.dev), e)),
                }
            }
            let frame = &buf[..n as usize];
            if from.sll_pkttype != PACKET_OUTGOING && matches(frame) {
                return Ok(frame.to_vec());
            }
        }
        Err(LabError::Timeout {
            what: format!("{what} to arrive on {}", self.dev),
            after: WAIT,
        })
    }

    /// Waits for `frame` itself to arrive: byte for byte, but for trailing zero padding,
    /// which the kernel may trim (bridge netfilter cuts an IPv4 frame to the packet's total
    /// length; `frame` pads to Ethernet's 60 bytes).
    pub fn wait_frame(&self, what: &str, frame: &[u8]) -> Result<()> {
        self.wait_for(what, |got| {
            got.len() >= ETHERNET_HEADER
                && frame.starts_with(got)
                && frame[got.len()..].iter().all(|&b| b == 0)
        })
        .map(drop)
    }
}

/// Whether `frame` is an IPv4 packet (Ethernet, no VLAN tag) to `dst`.
pub fn is_ipv4_to(frame: &[u8], dst: std::net::Ipv4Addr) -> bool {
    frame.len() >= ETHERNET_HEADER + 20
        && frame[12..14] == [0x08, 0x00]
        && frame[ETHERNET_HEADER + 16..ETHERNET_HEADER + 20] == dst.octets()
}
