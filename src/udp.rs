//! The UDP socket: the network side of the tunnel. Batched both ways through quinn-udp:
//! `recvmmsg` with UDP GRO (the kernel hands over many same-flow datagrams in one buffer)
//! and `sendmsg` with UDP GSO (one call sends up to 64 equal-size datagrams). quinn-udp
//! probes what the kernel supports and falls back to one datagram per call.
//!
//! The socket is dual-stack (`[::]:port`, `IPV6_V6ONLY` off) so IPv4 and IPv6 peers reach
//! the same port; on a host without IPv6 it is a plain IPv4 socket. Either way the rest of
//! vmtun sees plain addresses: IPv4 senders arrive as IPv4 (never `::ffff:a.b.c.d`), and
//! IPv4 destinations are mapped here when the socket is IPv6.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// Receive buffers per `recvmmsg`.
const RX_BATCH: usize = quinn_udp::BATCH_SIZE;
/// One receive buffer holds a whole GRO batch (the kernel caps it at 64 KiB).
const RX_BUF: usize = 65536;
/// A GSO batch carries at most this many bytes (an IP packet's limit, less headers).
pub const GSO_MAX_BYTES: usize = 65000;

/// The tunnel's UDP socket (non-blocking; the driver polls its descriptor), with the
/// offloads the kernel offers.
pub struct Udp {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    /// An `AF_INET6` socket: IPv4 destinations must be written v4-mapped.
    v6: bool,
}

/// Binds the tunnel's UDP port: dual-stack `[::]:port` where the host has IPv6, else
/// `0.0.0.0:port` (and says so once, in the log). A port in use is an error either way.
pub fn bind(port: u16) -> io::Result<std::net::UdpSocket> {
    let why_not_v6 = if ipv6_disabled() {
        "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)".to_string()
    } else {
        match bind_dual_stack(port) {
            Ok(socket) => return Ok(socket),
            Err(e) if no_ipv6(&e) => format!("no IPv6 here ({e})"),
            Err(e) => return Err(e),
        }
    };
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    tracing::info!("UDP port {port}: IPv4 only: {why_not_v6}; IPv6 peers cannot reach this host");
    Ok(socket)
}

/// `[::]:port` with `IPV6_V6ONLY` off, whatever `net.ipv6.bindv6only` says.
fn bind_dual_stack(port: u16) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(socket.into())
}

/// The errors that mean "this host (or namespace) has no IPv6", not "this port is taken".
fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// IPv6 switched off by sysctl in this network namespace. A dual-stack socket would still
/// carry IPv4 there, but an IPv4 socket is what such a host had before IPv6 support.
fn ipv6_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "1")
}

/// `addr` as the core sees it: an IPv4 sender on a dual-stack socket becomes plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Udp {
    /// Wraps a bound socket, makes it non-blocking and turns on GRO where available.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let v6 = socket.local_addr()?.is_ipv6();
        Ok(Self { socket, state, v6 })
    }

    /// Whether IPv6 peers can be reached: the socket is dual-stack, not IPv4 only.
    pub fn is_dual_stack(&self) -> bool {
        self.v6
    }

    /// How many datagrams one [`Udp::try_send`] may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// One `recvmmsg` into `rx`; returns how many buffers were filled. `WouldBlock` when
    /// nothing is queued. Offers as many buffers as [`UdpRx::drained`] suggests.
    pub fn try_recv(&self, rx: &mut UdpRx) -> io::Result<usize> {
        let UdpRx {
            bufs,
            meta,
            count,
            offer,
            drained,
        } = rx;
        let mut iovs = bufs[..*offer]
            .iter_mut()
            .map(|b| IoSliceMut::new(&mut b[..]));
        let mut iovs: [IoSliceMut; RX_BATCH] =
            std::array::from_fn(|_| iovs.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
        *count = self
            .state
            .recv((&self.socket).into(), &mut iovs[..*offer], meta)?;
        *drained = *count < *offer;
        // Grow the offer while batches come full, shrink it when traffic is sparse: each
        // buffer offered costs header set-up (and cache misses) even when it stays empty.
        *offer = (2 * *count).clamp(MIN_OFFER, RX_BATCH);
        Ok(*count)
    }

    /// Sends `contents` to `to`: one datagram, or several of `segment` bytes each (the last
    /// may be shorter) in one GSO call. A full socket buffer drops them (as a NIC would).
    /// An address nothing can be sent to ([`crate::noise::can_send_to`]: port 0,
    /// multicast...) is refused here: the kernel would answer EINVAL for port 0, and
    /// quinn-udp takes that as "no GSO" and turns it off for the whole socket.
    pub fn try_send(&self, to: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        if !crate::noise::can_send_to(to) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let destination = match to {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0).into()
            }
            _ => to,
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (segment < contents.len()).then_some(segment),
            src_ip: None,
        };
        self.state.try_send((&self.socket).into(), &transmit)
    }
}

impl AsRawFd for Udp {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Buffers offered to `recvmmsg` at least. With GRO one buffer holds up to 64 KiB of
/// same-flow datagrams, so a small offer still moves a lot.
const MIN_OFFER: usize = 2;

/// Receive buffers for one `recvmmsg`, allocated once.
pub struct UdpRx {
    bufs: [Box<[u8]>; RX_BATCH],
    meta: [RecvMeta; RX_BATCH],
    count: usize,
    /// How many buffers the next receive offers.
    offer: usize,
    /// The last receive filled fewer buffers than it offered.
    drained: bool,
}

impl UdpRx {
    /// Allocates the buffers (RX_BATCH × 64 KiB).
    pub fn new() -> Self {
        Self {
            bufs: std::array::from_fn(|_| vec![0; RX_BUF].into_boxed_slice()),
            meta: [RecvMeta::default(); RX_BATCH],
            count: 0,
            offer: MIN_OFFER,
            drained: false,
        }
    }

    /// Whether the last receive emptied the socket: it filled fewer buffers than it
    /// offered. The poller is edge-triggered and signals every new arrival, so the loop
    /// can skip the receive that would only say `WouldBlock`.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The datagrams of the last receive, each with its sender (IPv4 senders as IPv4).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.bufs
            .iter()
            .zip(&self.meta)
            .take(self.count)
            .flat_map(|(buf, meta)| {
                let stride = meta.stride.max(1);
                let from = canonical(meta.addr);
                buf[..meta.len.min(buf.len())]
                    .chunks(stride)
                    .map(move |d| (from, d))
            })
    }
}

impl Default for UdpRx {
    fn default() -> Self {
        Self::new()
    }
}

/// Sealed datagrams waiting to leave in one GSO send: same destination, same size (the
/// last may be shorter). The core seals straight into [`GsoBatch::reserve`]'s space, so
/// batching costs no copy.
pub struct GsoBatch {
    buf: Box<[u8]>,
    len: usize,
    segment: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
}

impl GsoBatch {
    /// Allocates the batch buffer (64 KiB plus room for one more datagram).
    pub fn new() -> Self {
        Self {
            buf: vec![0; GSO_MAX_BYTES + RX_BUF].into_boxed_slice(),
            len: 0,
            segment: 0,
            count: 0,
            to: None,
            closed: false,
        }
    }

    /// Space for the next datagram, at least `need` bytes; sends the batch first if the
    /// datagram might not fit in it.
    pub fn reserve(&mut self, udp: &Udp, need: usize, failed: &mut u64) -> &mut [u8] {
        if self.count > 0 && self.len + need > GSO_MAX_BYTES {
            self.flush(udp, failed);
        }
        &mut self.buf[self.len..]
    }

    /// Takes the `n` bytes just written at the start of [`GsoBatch::reserve`]'s space as a
    /// datagram for `to`. Sends what came before when the new one cannot join it.
    pub fn push(&mut self, udp: &Udp, to: SocketAddr, n: usize, failed: &mut u64) {
        let joins = self.count > 0
            && self.to == Some(to)
            && !self.closed
            && n <= self.segment
            && self.count < udp.max_segments();
        if !joins && self.count > 0 {
            let start = self.len;
            self.flush(udp, failed);
            self.buf.copy_within(start..start + n, 0);
        }
        if self.count == 0 {
            self.segment = n;
            self.to = Some(to);
        }
        self.closed = n < self.segment;
        self.len += n;
        self.count += 1;
    }

    /// Sends what is batched.
    pub fn flush(&mut self, udp: &Udp, failed: &mut u64) {
        if let (Some(to), true) = (self.to, self.count > 0)
            && udp
                .try_send(to, &self.buf[..self.len], self.segment)
                .is_err()
        {
            *failed += self.count as u64;
        }
        self.len = 0;
        self.count = 0;
        self.closed = false;
    }
}

impl Default for GsoBatch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Udp, std::net::UdpSocket) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (Udp::new(rx).unwrap(), tx)
    }

    #[test]
    fn the_offer_grows_with_full_batches_and_a_short_batch_means_drained() {
        let (udp, tx) = pair();
        let mut rx = UdpRx::new();
        for i in 0..5u8 {
            tx.send(&[i; 100]).unwrap();
        }
        // Loopback does no GRO: one datagram per buffer.
        assert_eq!(udp.try_recv(&mut rx).unwrap(), MIN_OFFER);
        assert!(!rx.drained(), "a full batch may leave more behind");
        assert_eq!(udp.try_recv(&mut rx).unwrap(), 3);
        assert!(rx.drained());
        let firsts: Vec<u8> = rx.datagrams().map(|(_, d)| d[0]).collect();
        assert_eq!(firsts, [2, 3, 4]);
        let e = udp.try_recv(&mut rx).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    /// The one datagram queued on `udp` (after a short wait for loopback).
    fn recv_one(udp: &Udp) -> (SocketAddr, Vec<u8>) {
        let mut rx = UdpRx::new();
        for _ in 0..100 {
            if udp.try_recv(&mut rx).is_ok() {
                let (from, d) = rx.datagrams().next().unwrap();
                return (from, d.to_vec());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("nothing arrived");
    }

    #[test]
    fn a_dual_stack_socket_shows_ipv4_senders_as_ipv4_and_answers_them() {
        let udp = Udp::new(bind_dual_stack(0).unwrap()).unwrap();
        assert!(udp.is_dual_stack());
        let port = udp.socket.local_addr().unwrap().port();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"hello", ("127.0.0.1", port)).unwrap();
        let (from, d) = recv_one(&udp);
        assert_eq!(from, v4.local_addr().unwrap(), "not ::ffff:127.0.0.1");
        assert_eq!(d, b"hello");
        // Back to a plain IPv4 address, two segments in one GSO send.
        udp.try_send(from, &[7; 200], 100).unwrap();
        let mut buf = [0; 300];
        v4.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(v4.recv(&mut buf).unwrap(), 100);
        assert_eq!(v4.recv(&mut buf).unwrap(), 100);

        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        v6.send_to(b"six", ("::1", port)).unwrap();
        let (from, d) = recv_one(&udp);
        assert_eq!((from, &d[..]), (v6.local_addr().unwrap(), &b"six"[..]));
        udp.try_send(from, b"back", 4).unwrap();
        v6.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(v6.recv(&mut buf).unwrap(), 4);
    }

    #[test]
    fn port_0_is_refused_before_it_can_cost_the_socket_its_gso() {
        let (udp, _tx) = pair();
        let segments = udp.max_segments();
        let to: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let e = udp.try_send(to, &[0; 200], 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(udp.max_segments(), segments);
    }

    #[test]
    fn no_peer_is_sent_to_at_a_group_or_broadcast_address() {
        let (udp, _tx) = pair();
        for to in ["224.0.0.1:51820", "255.255.255.255:51820", "0.0.0.0:51820"] {
            let e = udp
                .try_send(to.parse().unwrap(), &[0; 100], 100)
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{to}");
        }
    }

    #[test]
    fn only_v4_mapped_addresses_change() {
        for (input, want) in [
            ("[::ffff:198.18.0.1]:51820", "198.18.0.1:51820"),
            ("198.18.0.1:51820", "198.18.0.1:51820"),
            ("[2001:db8:18::1]:51820", "[2001:db8:18::1]:51820"),
        ] {
            assert_eq!(canonical(input.parse().unwrap()).to_string(), want);
        }
    }
}
