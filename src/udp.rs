//! The UDP socket: the network side of the tunnel. Batched both ways through quinn-udp:
//! `recvmmsg` with UDP GRO (the kernel hands over many same-flow datagrams in one buffer)
//! and `sendmsg` with UDP GSO (one call sends up to 64 equal-size datagrams). quinn-udp
//! probes what the kernel supports and falls back to one datagram per call.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

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
}

impl Udp {
    /// Wraps a bound socket, makes it non-blocking and turns on GRO where available.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self { socket, state })
    }

    /// How many datagrams one [`Udp::try_send`] may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// One `recvmmsg` into `rx`; returns how many buffers were filled. `WouldBlock` when
    /// nothing is queued.
    pub fn try_recv(&self, rx: &mut UdpRx) -> io::Result<usize> {
        let UdpRx { bufs, meta, count } = rx;
        let mut iovs = bufs.each_mut().map(|b| IoSliceMut::new(&mut b[..]));
        *count = self.state.recv((&self.socket).into(), &mut iovs, meta)?;
        Ok(*count)
    }

    /// Sends `contents` to `to`: one datagram, or several of `segment` bytes each (the last
    /// may be shorter) in one GSO call. A full socket buffer drops them (as a NIC would).
    pub fn try_send(&self, to: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
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

/// Receive buffers for one `recvmmsg`, allocated once.
pub struct UdpRx {
    bufs: [Box<[u8]>; RX_BATCH],
    meta: [RecvMeta; RX_BATCH],
    count: usize,
}

impl UdpRx {
    /// Allocates the buffers (RX_BATCH × 64 KiB).
    pub fn new() -> Self {
        Self {
            bufs: std::array::from_fn(|_| vec![0; RX_BUF].into_boxed_slice()),
            meta: [RecvMeta::default(); RX_BATCH],
            count: 0,
        }
    }

    /// The datagrams of the last receive, each with its sender.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.bufs
            .iter()
            .zip(&self.meta)
            .take(self.count)
            .flat_map(|(buf, meta)| {
                let stride = meta.stride.max(1);
                buf[..meta.len.min(buf.len())]
                    .chunks(stride)
                    .map(move |d| (meta.addr, d))
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
