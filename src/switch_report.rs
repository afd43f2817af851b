//! The new host tells the old host that the provider has switched a subnet.
//!
//! After the switch the provider routes the whole subnet to the new host and accepts it as a
//! source only from there. A VM still on the old host is then reached through the tunnel
//! (the new host's rules send the subnet's addresses it has no VM for into it), and its own
//! traffic must go back through the tunnel too: sent natively, the provider drops it. Only
//! the new host sees the switch (the cutover: the first packet for the subnet arriving
//! natively, or `vmtun cutover` by hand), so it reports it to the old host, which adds the
//! subnet to its kernel set of switched subnets: from then on its mark rule sends what its
//! VMs of that subnet send through the tunnel.
//!
//! The report is one small UDP datagram from the new host's tunnel address to the old
//! host's, port [`REPORT_PORT`], inside the tunnel: authenticated by it (the old host only
//! listens on its tunnel device and only believes the peer's tunnel address, which no one
//! but the peer can send from through the tunnel). The new host sends it at once and again
//! every [`REPORT_EVERY`] for as long as it runs, so a lost datagram or a restarted old
//! host learns it within that time; adding a subnet the set holds already changes nothing.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;

/// The UDP port the old host listens on for reports, on its tunnel address only.
pub const REPORT_PORT: u16 = 51821;
/// How often the new host repeats its reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the listener blocks before it looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// What every report starts with (protocol version 1).
const MAGIC: &str = "vmtun-switched/1 ";

/// The datagram reporting `subnet` switched.
pub fn encode(subnet: IpNet) -> Vec<u8> {
    format!("{MAGIC}{}", subnet.trunc()).into_bytes()
}

/// The subnet a report names, or `None` for anything else.
pub fn decode(datagram: &[u8]) -> Option<IpNet> {
    let text = std::str::from_utf8(datagram).ok()?;
    let net: IpNet = text.strip_prefix(MAGIC)?.parse().ok()?;
    (net == net.trunc()).then_some(net)
}

/// Role new: sends the reports, from a thread of its own. Dropping it stops the thread.
pub struct Reporter {
    tx: Option<mpsc::Sender<IpNet>>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Binds a socket on this host's tunnel address `from` and starts reporting to the old
    /// host's tunnel address `to`.
    pub fn start(from: IpAddr, to: IpAddr) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(from, 0))
            .with_context(|| format!("binding the switch reporter to {from}"))?;
        let dest = SocketAddr::new(to, REPORT_PORT);
        let (tx, rx) = mpsc::channel::<IpNet>();
        let thread = thread::Builder::new()
            .name("switch-report".into())
            .spawn(move || {
                let mut switched: Vec<IpNet> = Vec::new();
                loop {
                    match rx.recv_timeout(REPORT_EVERY) {
                        Ok(net) => {
                            if !switched.contains(&net) {
                                switched.push(net);
                            }
                            send(&socket, dest, &[net]);
                        }
                        Err(RecvTimeoutError::Timeout) => send(&socket, dest, &switched),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Reports `subnet` switched, now and from now on.
    pub fn report(&self, subnet: IpNet) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(subnet);
        }
    }

    /// A handle that reports from another thread (the cutover watcher's callback).
    pub fn sender(&self) -> Option<mpsc::Sender<IpNet>> {
        self.tx.clone()
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send(socket: &UdpSocket, dest: SocketAddr, subnets: &[IpNet]) {
    for &net in subnets {
        if let Err(e) = socket.send_to(&encode(net), dest) {
            tracing::debug!("reporting the switch of {net} to {dest}: {e}");
        }
    }
}

/// Role old: receives the reports on a thread of its own and hands each one to
/// `on_switched`, which must be idempotent: reports repeat, and whoever flushed the kernel's
/// set (a reload of the host's firewall) is answered by the next one. Dropping it stops the
/// thread.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds [`REPORT_PORT`] on this host's tunnel address `at`, on the tunnel device `tun`
    /// only, and believes only reports from `peer` about one of `subnets`.
    pub fn start<E>(
        tun: &str,
        at: IpAddr,
        peer: IpAddr,
        subnets: Vec<IpNet>,
        mut on_switched: impl FnMut(IpNet) -> Result<(), E> + Send + 'static,
    ) -> anyhow::Result<Self>
    where
        E: std::fmt::Display,
    {
        let socket = UdpSocket::bind(SocketAddr::new(at, REPORT_PORT))
            .with_context(|| format!("binding the switch listener to {at} port {REPORT_PORT}"))?;
        bind_to_device(&socket, tun)
            .with_context(|| format!("binding the switch listener to device {tun}"))?;
        socket.set_read_timeout(Some(STOP_CHECK))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("switch-listen".into())
                .spawn(move || {
                    let mut seen: Vec<IpNet> = Vec::new();
                    let mut buf = [0u8; 128];
                    while !stop.load(Ordering::Relaxed) {
                        let (n, from) = match socket.recv_from(&mut buf) {
                            Ok(got) => got,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) =>
                            {
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!("switch listener: {e}; no longer listening");
                                return;
                            }
                        };
                        let Some(net) = decode(&buf[..n]) else {
                            tracing::debug!("switch listener: not a report from {from}");
                            continue;
                        };
                        if from.ip() != peer || !subnets.contains(&net) {
                            tracing::warn!(
                                "switch listener: ignored a report of {net} from {from} \
                                 (the peer is {peer}; subnets {subnets:?})"
                            );
                        } else {
                            match on_switched(net) {
                                Ok(()) if !seen.contains(&net) => {
                                    seen.push(net);
                                    tracing::info!(
                                        subnet = %net,
                                        "the new host reports the provider's switch: what VMs \
                                         still here send from this subnet now goes through \
                                         the tunnel"
                                    );
                                }
                                Ok(()) => {}
                                Err(e) => tracing::warn!("switch of {net} reported, but: {e}"),
                            }
                        }
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `SO_BINDTODEVICE`: the socket receives only what arrived on `dev`.
fn bind_to_device(socket: &UdpSocket, dev: &str) -> io::Result<()> {
    // SAFETY: the option value is the name's bytes, its length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr() as *const libc::c_void,
            dev.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_one_subnet_and_nothing_else_is_one() {
        for net in ["203.0.113.0/29", "2001:db8:1::/64"] {
            let net: IpNet = net.parse().unwrap();
            assert_eq!(decode(&encode(net)), Some(net));
        }
        // Host bits are dropped when sending and refused when receiving.
        let sloppy: IpNet = "203.0.113.5/29".parse().unwrap();
        assert_eq!(decode(&encode(sloppy)), Some(sloppy.trunc()));
        for junk in [
            &b"vmtun-switched/1 203.0.113.5/29"[..],
            b"vmtun-switched/2 203.0.113.0/29",
            b"203.0.113.0/29",
            b"vmtun-switched/1 ",
            b"\xff\xfe",
        ] {
            assert_eq!(decode(junk), None, "{junk:?}");
        }
    }
}
