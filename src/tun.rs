//! The TUN device: the kernel side of the tunnel, where plaintext IP packets enter and
//! leave. Everything the driver needs from it sits behind [`Tun`], so the backend (tun-tap
//! today) can be swapped for one with offloads and multiple queues without touching the
//! driver. Configuring the device's addresses and routes is `netcfg`'s job, not this one's.

use std::io;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An open TUN device in non-blocking mode, registered with the tokio reactor. The device
/// exists as long as this value does: dropping it removes the interface.
pub struct Tun {
    fd: AsyncFd<tun_tap::Iface>,
}

impl Tun {
    /// Creates the TUN device `name` (no packet-info header). Must be called inside a tokio
    /// runtime.
    pub fn create(name: &str) -> io::Result<Self> {
        let iface = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun)
            .map_err(|e| io::Error::new(e.kind(), format!("creating TUN device {name}: {e}")))?;
        if iface.name() != name {
            return Err(io::Error::other(format!(
                "creating TUN device {name}: the kernel named it {}",
                iface.name()
            )));
        }
        iface.set_non_blocking()?;
        // SAFETY: `Iface` owns its fd for its whole life and always reports the same one.
        let fd = unsafe { AsyncFd::register_with_interest(iface, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.fd.get_ref().name()
    }

    /// Waits until a packet may be readable; [`Tun::try_recv`] says whether one is.
    pub async fn readable(&self) -> io::Result<()> {
        self.fd.readable().await.map(drop)
    }

    /// Reads one packet if one is queued; `WouldBlock` otherwise (which also re-arms
    /// [`Tun::readable`]).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.try_io(Interest::READABLE, |iface| iface.recv(buf))
    }

    /// Writes one packet to the kernel. A full queue drops the packet (as a NIC would):
    /// the tunnel never blocks on the TUN side.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.fd.get_ref().send(packet)
    }
}
