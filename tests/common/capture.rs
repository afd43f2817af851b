//! Recording and replaying tunnel datagrams: an `AF_PACKET` capture of the UDP payloads
//! arriving at one host (what an on-path attacker sees), and a sender that plays datagrams
//! at a target from another namespace (the attacker's own address, no spoofing).

use super::{LabError, Netns, Result};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Offsets in an IPv4 header (RFC 791) and UDP header (RFC 768).
const IPV4_MIN_HEADER: usize = 20;
const IPV4_PROTOCOL: usize = 9;
const IPV4_DST: std::ops::Range<usize> = 16..20;
const UDP_HEADER: usize = 8;
const IPPROTO_UDP: u8 = 17;
/// `PACKET_OUTGOING` in `sockaddr_ll.sll_pkttype` (linux/if_packet.h).
const PACKET_OUTGOING: u8 = 4;

/// A capture running on a thread inside a namespace.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Records the payloads of UDP datagrams arriving on `dev` in `ns` for `dst:port`.
    pub fn start(ns: &Netns, dev: &str, dst: Ipv4Addr, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dev = dev.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = ns.thread("capture", move || {
            let fd = open_packet_socket(&dev)?;
            let _ = ready_tx.send(());
            let result = record(&fd, dst, port, &flag);
            drop(fd);
            result
        })?;
        ready_rx
            .recv_timeout(super::WAIT)
            .map_err(|_| LabError::Failed("the capture socket did not open".into()))?;
        Ok(Self { stop, handle })
    }

    /// Stops and returns the payloads seen, in order.
    pub fn stop(self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| LabError::Failed("the capture thread panicked".into()))?
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing the fd this guard owns, once.
        unsafe { libc::close(self.0) };
    }
}

fn open_packet_socket(dev: &str) -> Result<Fd> {
    let os_err = |what: &str| LabError::io(what.to_owned(), std::io::Error::last_os_error());
    let protocol = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned by the guard below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            libc::c_int::from(protocol),
        )
    };
    if fd < 0 {
        return Err(os_err("opening an AF_PACKET socket"));
    }
    let fd = Fd(fd);
    let name = std::ffi::CString::new(dev).map_err(|_| LabError::Refused(dev.into()))?;
    // SAFETY: NUL-terminated name; called in the capture thread's namespace.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(os_err(&format!("finding interface {dev}")));
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind(2) with a correctly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("binding the capture to {dev}")));
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt(2) with a timeval of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err("setting the capture timeout"));
    }
    Ok(fd)
}

fn record(fd: &Fd, dst: Ipv4Addr, port: u16, stop: &AtomicBool) -> Result<Vec<Vec<u8>>> {
    let mut packets = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom(2) into buffers we own, with their true sizes.
        let n = unsafe {
            libc::recvfrom(
                fd.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(LabError::io("capturing", err));
        }
        if from.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        let packet = &buf[..n as usize];
        if let Some(payload) = udp_payload(packet, dst, port) {
            packets.push(payload.to_vec());
        }
    }
    Ok(packets)
}

/// The UDP payload of an IPv4 packet addressed to `dst:port`, if it is one.
fn udp_payload(packet: &[u8], dst: Ipv4Addr, port: u16) -> Option<&[u8]> {
    if packet.len() < IPV4_MIN_HEADER || packet[0] >> 4 != 4 {
        return None;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    if packet[IPV4_PROTOCOL] != IPPROTO_UDP || packet[IPV4_DST] != dst.octets() {
        return None;
    }
    let udp = packet.get(header..)?;
    if udp.len() < UDP_HEADER || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(UDP_HEADER..len)
}

/// Sends each datagram from namespace `ns` (its own address, any port) to `target`, pacing
/// so the receiver's socket buffer never overflows: every datagram should be seen.
pub fn send_datagrams(ns: &Netns, target: SocketAddr, datagrams: Vec<Vec<u8>>) -> Result<usize> {
    ns.thread("attacker", move || {
        let socket =
            UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::io("binding the attacker", e))?;
        for (i, datagram) in datagrams.iter().enumerate() {
            socket
                .send_to(datagram, target)
                .map_err(|e| LabError::io(format!("sending datagram {i} to {target}"), e))?;
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(datagrams.len())
    })?
    .join()
    .map_err(|_| LabError::Failed("the attacker thread panicked".into()))?
}

/// A small deterministic generator for attack bytes.
pub struct Garbage(u64);

impl Garbage {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next pseudo-random 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A datagram that looks like WireGuard message `kind` (1-4, reserved bytes zero) of
    /// `len` bytes with random contents: it passes the type check and reaches deeper code.
    pub fn message(&mut self, kind: u8, len: usize) -> Vec<u8> {
        let mut bytes = self.bytes(len.max(4));
        bytes[0] = kind;
        bytes[1..4].fill(0);
        bytes.truncate(len);
        bytes
    }
}
