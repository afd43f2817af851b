//! The client's probes and the VM's echo responder.
//!
//! A probe is [`PROBE_LEN`] bytes: the magic `VMTP`, a sequence number and the send time.
//! The client sends them at a fixed rate and records every reply with the TOS byte it
//! arrived with (the core's stamp of the link it came through, see
//! [`super::stats::Via`]). A probe travels as one UDP datagram that the namespace VM's
//! echo responder returns unchanged, or (for a real guest, whose kernel answers ping) as
//! the payload of an ICMP echo request, which the reply carries back.
//!
//! Both are threads of this process whose sockets were opened inside their namespace (by a
//! thread of [`Netns::thread`]); a socket stays in the namespace it was created in, so the
//! loops themselves run on ordinary threads. The echo responder's socket is bound to the
//! wildcard address, so it keeps answering when the VM's interface is recreated by the move.

use super::stats::{Reply, Via};
use crate::lab::{LabError, Netns, Result};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Bytes of a probe: magic (4), sequence number (8, big endian), send time (8, Unix ns),
/// padded to a round 32.
pub const PROBE_LEN: usize = 32;
const MAGIC: [u8; 4] = *b"VMTP";
/// Bytes of an ICMP echo header: type, code, checksum, identifier, sequence (RFC 792).
const ICMP_HEADER_LEN: usize = 8;
/// ICMP type of an echo request (RFC 792).
const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP type of an echo reply (RFC 792).
const ICMP_ECHO_REPLY: u8 = 0;
/// Highest probe rate the client accepts (the brief's 10 kHz).
pub const MAX_RATE_HZ: u32 = 10_000;
/// How often the loops look at their stop flag while no packet arrives.
const POLL: Duration = Duration::from_millis(50);

/// The wall clock in Unix nanoseconds: the one clock of the lab's timeline, shared with
/// vmtun's cutover record (`packet_time_unix_ns`).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A probe's bytes.
pub fn encode(seq: u64, sent_ns: u64) -> [u8; PROBE_LEN] {
    let mut buf = [0u8; PROBE_LEN];
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..12].copy_from_slice(&seq.to_be_bytes());
    buf[12..20].copy_from_slice(&sent_ns.to_be_bytes());
    buf
}

/// (sequence number, send time) of a probe, or `None` if `buf` is not one.
pub fn decode(buf: &[u8]) -> Option<(u64, u64)> {
    if buf.len() != PROBE_LEN || buf[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(buf[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(buf[12..20].try_into().ok()?);
    Some((seq, sent))
}

/// How probes travel to the target and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// A UDP datagram to an echo responder ([`Echo`]).
    Udp,
    /// The payload of an ICMP echo request on a ping socket (icmp(7), `SOCK_DGRAM` with
    /// `IPPROTO_ICMP`): the kernel fills in the identifier and checksum and hands back
    /// the reply from the ICMP header on.
    Icmp,
}

impl Carrier {
    /// The bytes to send for probe `seq` sent at `sent_ns`, written into `buf`.
    fn wrap(self, seq: u64, sent_ns: u64, buf: &mut [u8; ICMP_HEADER_LEN + PROBE_LEN]) -> &[u8] {
        let probe = encode(seq, sent_ns);
        match self {
            Carrier::Udp => {
                buf[..PROBE_LEN].copy_from_slice(&probe);
                &buf[..PROBE_LEN]
            }
            Carrier::Icmp => {
                *buf = [0; ICMP_HEADER_LEN + PROBE_LEN];
                buf[0] = ICMP_ECHO_REQUEST;
                // The ICMP sequence field is 16 bits: the probe itself carries the full one.
                buf[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
                buf[ICMP_HEADER_LEN..].copy_from_slice(&probe);
                &buf[..]
            }
        }
    }

    /// (sequence number, send time) of the probe a received datagram answers, if it is one.
    fn unwrap(self, buf: &[u8]) -> Option<(u64, u64)> {
        match self {
            Carrier::Udp => decode(buf),
            Carrier::Icmp => match buf.split_first() {
                Some((&ICMP_ECHO_REPLY, _)) => decode(buf.get(ICMP_HEADER_LEN..)?),
                _ => None,
            },
        }
    }
}

/// Opens a UDP socket bound to `bind` inside `ns`.
pub fn bind_in(ns: &Netns, label: &str, bind: SocketAddr) -> Result<UdpSocket> {
    open_in(ns, label, move || {
        UdpSocket::bind(bind).map_err(|e| LabError::io(format!("binding UDP {bind}"), e))
    })
}

/// Runs `open` on a thread inside `ns`: the socket it returns stays in that namespace.
fn open_in(
    ns: &Netns,
    label: &str,
    open: impl FnOnce() -> Result<UdpSocket> + Send + 'static,
) -> Result<UdpSocket> {
    ns.thread(label, open)?
        .join()
        .map_err(|_| LabError::Failed(format!("{label} in {}: the thread panicked", ns.name())))?
}

fn spawn_loop(
    label: &str,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name(label.to_owned())
        .spawn(f)
        .map_err(|e| LabError::io(format!("starting thread {label}"), e))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The VM's UDP echo responder; stops (and joins) on drop.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Echo {
    /// Starts echoing on `port` inside `vm`, for both families (`[::]:port`), or for IPv4
    /// alone (`0.0.0.0:port`) where the VM has no IPv6.
    pub fn start(vm: &Netns, port: u16) -> Result<Self> {
        let socket = bind_in(vm, "echo-bind", (Ipv6Addr::UNSPECIFIED, port).into())
            .or_else(|_| bind_in(vm, "echo-bind", (Ipv4Addr::UNSPECIFIED, port).into()))?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| LabError::io("setting the echo socket's timeout", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = spawn_loop("vm-echo", move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    // A send can fail while the VM's interface is being recreated: the
                    // probe is lost, as on a real VM, and the loop goes on.
                    Ok((n, from)) => drop(socket.send_to(&buf[..n], from)),
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(LabError::io("echo: receiving", e)),
                }
            }
            Ok(())
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the responder; an error if its loop failed.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| LabError::Failed("the echo thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// What the client sent and got back; index = sequence number.
#[derive(Debug, Default, Clone)]
pub struct ProbeLog {
    /// Send time of each probe (Unix ns).
    pub sent_ns: Vec<u64>,
    /// Its reply, if one came.
    pub replies: Vec<Option<Reply>>,
    /// Replies that were not probes of this run, or duplicates.
    pub stray: u64,
}

impl ProbeLog {
    /// The newest answered probe's sequence number and send time.
    pub fn last_answered(&self) -> Option<(u64, u64)> {
        self.replies
            .iter()
            .rposition(Option::is_some)
            .map(|seq| (seq as u64, self.sent_ns[seq]))
    }

    /// Whether a probe sent at or after `since_ns` has been answered.
    pub fn answered_since(&self, since_ns: u64) -> bool {
        self.last_answered().is_some_and(|(_, t)| t >= since_ns)
    }
}

/// The client: sends probes at a fixed rate to `target` and records replies.
pub struct Prober {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ProbeLog>>,
    interval: Duration,
    sender: Option<JoinHandle<Result<()>>>,
    receiver: Option<JoinHandle<Result<()>>>,
    receiver_stop: Arc<AtomicBool>,
}

fn lock(log: &Mutex<ProbeLog>) -> std::sync::MutexGuard<'_, ProbeLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Prober {
    /// Starts probing `target` (a UDP echo responder) from inside `client` at `rate_hz`
    /// (1..=[`MAX_RATE_HZ`]).
    pub fn start(client: &Netns, target: impl Into<SocketAddr>, rate_hz: u32) -> Result<Self> {
        let target: SocketAddr = target.into();
        check_rate(rate_hz)?;
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = bind_in(client, "probe-bind", any)?;
        Self::run(socket, target, Carrier::Udp, rate_hz)
    }

    /// Starts pinging `target` from inside `client` at `rate_hz` (1..=[`MAX_RATE_HZ`]):
    /// ICMP echo requests carrying the probes, answered by the target's kernel (a real
    /// guest runs no echo responder). Allows ping sockets in `client` for root
    /// (`net.ipv4.ping_group_range`, which a new namespace leaves empty).
    pub fn start_icmp(client: &Netns, target: Ipv4Addr, rate_hz: u32) -> Result<Self> {
        check_rate(rate_hz)?;
        client.sysctl("net.ipv4.ping_group_range", "0 0")?;
        let socket = open_in(client, "probe-bind", || {
            socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::ICMPV4),
            )
            .map(UdpSocket::from)
            .map_err(|e| LabError::io("opening a ping socket (icmp(7))", e))
        })?;
        Self::run(socket, (target, 0).into(), Carrier::Icmp, rate_hz)
    }

    /// Runs the sender and receiver threads on `socket` (a UDP or ping socket: both are
    /// datagram sockets, which [`UdpSocket`]'s `send_to`/`recvmsg` serve alike).
    fn run(socket: UdpSocket, target: SocketAddr, carrier: Carrier, rate_hz: u32) -> Result<Self> {
        enable_recv_tos(&socket, target.is_ipv6())?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| LabError::io("setting the probe socket's timeout", e))?;
        let receive = socket
            .try_clone()
            .map_err(|e| LabError::io("cloning the probe socket", e))?;
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate_hz));
        let stop = Arc::new(AtomicBool::new(false));
        let receiver_stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(ProbeLog::default()));

        let (flag, sent_log) = (stop.clone(), log.clone());
        let sender = spawn_loop("probe-send", move || {
            let start = Instant::now();
            let mut seq: u64 = 0;
            let mut packet = [0u8; ICMP_HEADER_LEN + PROBE_LEN];
            while !flag.load(Ordering::Relaxed) {
                let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let sent_ns = unix_ns();
                {
                    let mut log = lock(&sent_log);
                    log.sent_ns.push(sent_ns);
                    log.replies.push(None);
                }
                // Sending fails only locally (e.g. no route in the client): the probe
                // counts as lost.
                let _ = socket.send_to(carrier.wrap(seq, sent_ns, &mut packet), target);
                seq += 1;
            }
            Ok(())
        })?;

        let (flag, recv_log) = (receiver_stop.clone(), log.clone());
        let receiver = spawn_loop("probe-recv", move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                match recv_with_tos(&receive, &mut buf) {
                    Ok((n, tos)) => {
                        let received_ns = unix_ns();
                        let mut log = lock(&recv_log);
                        let slot = buf
                            .get(..n)
                            .and_then(|datagram| carrier.unwrap(datagram))
                            .and_then(|(seq, _)| usize::try_from(seq).ok())
                            .filter(|&seq| seq < log.replies.len());
                        match slot {
                            Some(seq) if log.replies[seq].is_none() => {
                                log.replies[seq] = Some(Reply {
                                    received_ns,
                                    via: Via::from_tos(tos.unwrap_or(0)),
                                });
                            }
                            _ => log.stray += 1,
                        }
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(LabError::io("probe: receiving", e)),
                }
            }
            Ok(())
        })?;
        Ok(Self {
            stop,
            log,
            interval,
            sender: Some(sender),
            receiver: Some(receiver),
            receiver_stop,
        })
    }

    /// The probe interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A copy of the log so far.
    pub fn snapshot(&self) -> ProbeLog {
        lock(&self.log).clone()
    }

    /// Whether a probe sent at or after `since_ns` has been answered.
    pub fn answered_since(&self, since_ns: u64) -> bool {
        lock(&self.log).answered_since(since_ns)
    }

    /// Stops sending, waits `drain` for late replies, stops receiving; the log and when the
    /// last probe was sent.
    pub fn finish(mut self, drain: Duration) -> Result<(ProbeLog, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.sender.take(), "probe-send")?;
        let end_ns = unix_ns();
        std::thread::sleep(drain);
        self.receiver_stop.store(true, Ordering::Relaxed);
        join(self.receiver.take(), "probe-recv")?;
        Ok((lock(&self.log).clone(), end_ns))
    }
}

fn check_rate(rate_hz: u32) -> Result<()> {
    if (1..=MAX_RATE_HZ).contains(&rate_hz) {
        Ok(())
    } else {
        Err(LabError::Refused(format!(
            "probe rate {rate_hz} Hz: use 1..={MAX_RATE_HZ}"
        )))
    }
}

fn join(thread: Option<JoinHandle<Result<()>>>, label: &str) -> Result<()> {
    match thread {
        Some(thread) => thread
            .join()
            .map_err(|_| LabError::Failed(format!("thread {label} panicked")))?,
        None => Ok(()),
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receiver_stop.store(true, Ordering::Relaxed);
        let _ = join(self.sender.take(), "probe-send");
        let _ = join(self.receiver.take(), "probe-recv");
    }
}

/// Asks the kernel to hand over each datagram's TOS byte (`IP_RECVTOS`, ip(7)), or for
/// IPv6 its traffic class, which holds the DSCP the same way (`IPV6_RECVTCLASS`, ipv6(7)).
fn enable_recv_tos(socket: &UdpSocket, ipv6: bool) -> Result<()> {
    let on: libc::c_int = 1;
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVTOS)
    };
    // SAFETY: setsockopt(2) on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(LabError::io(
            "asking for the TOS byte (IP_RECVTOS, IPV6_RECVTCLASS) on the probe socket",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// `recvmsg(2)` one datagram into `buf`: its length and the TOS byte from the `IP_TOS`
/// control message (or the traffic class from `IPV6_TCLASS`).
fn recv_with_tos(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, Option<u8>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at iov and control, both alive and sized as declared.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut tos = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; IP_TOS carries one byte, IPV6_TCLASS an int.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, ty) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && ty == libc::IP_TOS {
                tos = Some(*libc::CMSG_DATA(cmsg));
            } else if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_TCLASS {
                let class = (libc::CMSG_DATA(cmsg) as *const libc::c_int).read_unaligned();
                tos = u8::try_from(class).ok();
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, tos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_junk_is_refused() {
        let buf = encode(42, 1_700_000_000_123_456_789);
        assert_eq!(decode(&buf), Some((42, 1_700_000_000_123_456_789)));
        assert_eq!(decode(&buf[..20]), None);
        let mut other = buf;
        other[0] = b'X';
        assert_eq!(decode(&other), None);
    }

    #[test]
    fn icmp_probes_ride_in_echo_requests_and_come_back_in_replies() {
        let mut buf = [0u8; ICMP_HEADER_LEN + PROBE_LEN];
        let request = Carrier::Icmp.wrap(70_000, 99, &mut buf).to_vec();
        assert_eq!(request.len(), ICMP_HEADER_LEN + PROBE_LEN);
        assert_eq!(request[0], ICMP_ECHO_REQUEST);
        assert_eq!(request[6..8], (70_000u64 as u16).to_be_bytes());
        // The request itself is no reply; the guest's reply is the same with type 0.
        assert_eq!(Carrier::Icmp.unwrap(&request), None);
        let mut reply = request.clone();
        reply[0] = ICMP_ECHO_REPLY;
        assert_eq!(Carrier::Icmp.unwrap(&reply), Some((70_000, 99)));
        assert_eq!(Carrier::Icmp.unwrap(&reply[..ICMP_HEADER_LEN + 4]), None);
        assert_eq!(Carrier::Icmp.unwrap(&[]), None);
        let udp = Carrier::Udp.wrap(7, 8, &mut buf).to_vec();
        assert_eq!(udp, encode(7, 8));
        assert_eq!(Carrier::Udp.unwrap(&udp), Some((7, 8)));
    }
}
