//! The TUN device: the kernel side of the tunnel, where plaintext IP packets enter and
//! leave. Everything the driver needs from it sits behind [`Tun`], [`TunRx`] and [`TunTx`],
//! so the backend can change without touching the driver. Configuring the device's
//! addresses and routes is `netcfg`'s job, not this one's.
//!
//! The backend is tun-rs with `IFF_VNET_HDR` offloads (as wireguard-go does since 2022):
//! the kernel hands us TCP super-segments of up to 64 KiB in one read, which tun-rs splits
//! into MTU-sized packets, and on the way in tun-rs coalesces consecutive segments of a
//! flow into one write. One system call then moves dozens of packets each way. tun-tap,
//! the crate first named for this, cannot set `IFF_VNET_HDR`; see README "Performance" for
//! the measured difference.

use std::io;

use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Room kept in front of every packet buffer for the virtio-net header tun-rs writes.
const HEADROOM: usize = 16;
const _: () = assert!(HEADROOM >= VIRTIO_NET_HDR_LEN);
/// Largest packet the device hands over or takes: IP's limit (a coalesced super-segment).
const MAX_PACKET: usize = 65535;
/// Largest single packet after splitting: the largest MTU the config accepts, with slack.
const MAX_SEGMENT: usize = 9216;
/// Packets per batch: tun-rs's and wireguard-go's choice, enough for a 64 KiB
/// super-segment split at the smallest MTU.
pub const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;

/// An open TUN device in non-blocking mode; the driver polls its descriptor. The device
/// exists as long as this value does: dropping it removes the interface.
pub struct Tun {
    dev: SyncDevice,
}

impl Tun {
    /// Creates the TUN device `name`, down and without addresses (netcfg does those), with
    /// checksum and segmentation offloads on. An interface of that name already there is
    /// refused, whatever its kind: the kernel would say "Invalid argument" for a bridge and
    /// attach vmtun to a persistent TUN device it did not make.
    pub fn create(name: &str) -> io::Result<Self> {
        if exists(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "creating TUN device {name}: an interface {name} already exists in this \
                     network namespace (not vmtun's): set interface.name to a free name, or \
                     remove it with `ip link del {name}`"
                ),
            ));
        }
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("creating TUN device {name}: {e}"));
        let dev = DeviceBuilder::new()
            .name(name)
            .enable(false)
            .offload(true)
            .build_sync()
            .map_err(context)?;
        dev.set_nonblocking(true).map_err(context)?;
        let actual = dev.name()?;
        if actual != name {
            return Err(io::Error::other(format!(
                "creating TUN device {name}: the kernel named it {actual}"
            )));
        }
        Ok(Self { dev })
    }

    /// Reads one batch (one read from the kernel, split into packets) into `rx`; returns how
    /// many packets it holds. `WouldBlock` when nothing is queued.
    pub fn try_recv(&self, rx: &mut TunRx) -> io::Result<usize> {
        let n = self
            .dev
            .recv_multiple(&mut rx.raw, &mut rx.bufs, &mut rx.sizes, HEADROOM)?;
        rx.count = n;
        Ok(n)
    }

    /// Writes the packets gathered in `tx` to the kernel, coalescing what it can, and
    /// empties `tx`. A full kernel queue drops packets (as a NIC would).
    pub fn send(&self, tx: &mut TunTx) -> io::Result<()> {
        if tx.count == 0 {
            return Ok(());
        }
        let result = self
            .dev
            .send_multiple(&mut tx.gro, &mut tx.bufs[..tx.count], HEADROOM);
        tx.count = 0;
        result.map(drop)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Whether an interface called `name` exists in the caller's network namespace.
fn exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Buffers for reading a batch from the device, allocated once.
pub struct TunRx {
    raw: Box<[u8]>,
    bufs: Vec<Box<[u8]>>,
    sizes: Vec<usize>,
    count: usize,
}

impl TunRx {
    /// Allocates the buffers (about 1.2 MiB).
    pub fn new() -> Self {
        Self {
            raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET].into_boxed_slice(),
            bufs: (0..BATCH)
                .map(|_| vec![0; HEADROOM + MAX_SEGMENT].into_boxed_slice())
                .collect(),
            sizes: vec![0; BATCH],
            count: 0,
        }
    }

    /// The packets of the last read.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.sizes)
            .take(self.count)
            .map(|(b, &n)| &b[HEADROOM..HEADROOM + n])
    }
}

impl Default for TunRx {
    fn default() -> Self {
        Self::new()
    }
}

/// Packets gathered for one write to the device. Each buffer can grow to a whole
/// coalesced super-segment; the capacity is reserved once, so writing allocates nothing.
pub struct TunTx {
    bufs: Vec<Vec<u8>>,
    count: usize,
    gro: GROTable,
}

impl TunTx {
    /// Reserves the buffers (virtual memory for BATCH × 64 KiB; pages are touched only as
    /// packets use them).
    pub fn new() -> Self {
        Self {
            bufs: (0..BATCH)
                .map(|_| Vec::with_capacity(HEADROOM + MAX_PACKET))
                .collect(),
            count: 0,
            gro: GROTable::new(),
        }
    }

    /// Whether a write must happen before the next packet can be added.
    pub fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    /// The next free packet buffer, `len` bytes long, for the caller to write a packet
    /// into; it may hold an earlier packet's bytes.
    /// Call [`TunTx::commit`] to keep it. Panics if full (check [`TunTx::is_full`]).
    pub fn slot(&mut self, len: usize) -> &mut [u8] {
        let buf = &mut self.bufs[self.count];
        // Zero-fill only what the buffer never held: the caller overwrites what it keeps,
        // and commit cuts the rest.
        buf.resize(HEADROOM + len.min(MAX_PACKET), 0);
        &mut buf[HEADROOM..]
    }

    /// Keeps the first `len` bytes of the last [`TunTx::slot`] as a packet to write.
    pub fn commit(&mut self, len: usize) {
        self.bufs[self.count].truncate(HEADROOM + len);
        self.count += 1;
    }
}

impl Default for TunTx {
    fn default() -> Self {
        Self::new()
    }
}
