//! The OS edge of the cutover: receiving frames from the bridge, filtered in the kernel, with a
//! kernel receive timestamp, and stoppable at any time through an eventfd.
//!
//! [`PacketSocket`] is one `AF_PACKET` socket per address family watched, bound to the bridge
//! for `ETH_P_IP` and `ETH_P_IPV6`, each with the classic BPF program libpcap compiles
//! attached, polled together with the stop signal. `PcapCapture` (libpcap in immediate mode,
//! tests only) does the same job for the latency comparison at the top of [`super`], which
//! explains the choice. This file must not decide anything about the frames; the classifier
//! does.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use pcap::{Capture, Linktype};

use super::CutoverError;
use super::classify::{Classifier, SNAPLEN};

/// Wakes a source's poll from another thread, so that shutdown never waits for a packet.
#[derive(Debug)]
pub(crate) struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    /// A fresh, unraised signal (a non-blocking eventfd).
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by eventfd and is owned by nobody else.
        Ok(StopSignal {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes every present and future wait on this signal return.
    pub(crate) fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A failure can only be
        // EAGAIN on counter overflow, which still leaves the signal raised.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// One frame as received: at most [`SNAPLEN`] bytes, and the kernel's receive time.
pub(crate) struct Frame<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) captured_at: SystemTime,
}

/// How a source waits for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// poll() on the source and the stop signal, then non-blocking reads: what the watcher
    /// uses, stoppable.
    Stoppable,
    /// A plain blocking read, not stoppable: only for the latency comparison.
    #[cfg(test)]
    Blocking,
}

/// Outcome of waiting for frames.
pub(crate) enum Run<T> {
    /// The frame handler returned a value.
    Done(T),
    /// The stop signal was raised first.
    Stopped,
}

/// Most sockets a source waits on: one per address family.
const MAX_SOCKETS: usize = 2;

/// Most frames read from one socket per wakeup before the other socket's turn.
const BATCH: usize = 64;

/// Waits until one of `fds` (at most [`MAX_SOCKETS`]) is readable or `stop` is raised.
/// Returns which are readable, by index, or None when stopped.
fn wait_readable(fds: &[RawFd], stop: &StopSignal) -> io::Result<Option<[bool; MAX_SOCKETS]>> {
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    // The stop signal first: it wins when both are ready.
    let mut pollfds = [unused; MAX_SOCKETS + 1];
    pollfds[0] = libc::pollfd {
        fd: stop.fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    for (pollfd, &fd) in pollfds[1..].iter_mut().zip(fds) {
        *pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
    }
    let count = 1 + fds.len().min(MAX_SOCKETS);
    loop {
        // SAFETY: pollfds is a live array of at least `count` pollfd.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), count as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if pollfds[0].revents != 0 {
            return Ok(None);
        }
        let mut ready = [false; MAX_SOCKETS];
        for (ready, pollfd) in ready.iter_mut().zip(&pollfds[1..count]) {
            if pollfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other("the capture socket reported an error"));
            }
            *ready = pollfd.revents != 0;
        }
        if ready.contains(&true) {
            return Ok(Some(ready));
        }
    }
}

/// Checks that `bridge` names an interface in this network namespace, for a clear error before
/// any socket is opened.
pub(crate) fn interface_index(bridge: &str) -> Result<u32, CutoverError> {
    let no_such = || CutoverError::NoSuchInterface {
        bridge: bridge.to_owned(),
    };
    if bridge.is_empty() || bridge.len() >= libc::IFNAMSIZ {
        return Err(no_such());
    }
    let name = CString::new(bridge).map_err(|_| no_such())?;
    // SAFETY: name is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(no_such()),
        index => Ok(index),
    }
}

/// `AF_PACKET` sockets on the bridge that receive the IPv4 and IPv6 frames addressed to the
/// host: one per family watched, each bound to its ethertype (`ETH_P_IP`, `ETH_P_IPV6`).
///
/// Bound to an ethertype, a packet socket is a receive-path protocol handler: the kernel never
/// gives it the frames the host sends (those go to `ETH_P_ALL` taps only), nor ARP or RARP.
/// One `ETH_P_ALL` socket would see both families but also every frame the host sends out of
/// the bridge, among them the tunnelled traffic to the VMs before the cutover, all matching
/// the filter: the kernel would clone each one to the socket and the watcher would wake for
/// each, only to drop it by packet type. Two sockets cost one more fd in the same poll.
/// The BPF program drops other destinations in the kernel; [`Self::run`] also keeps only
/// `PACKET_HOST` frames (a promiscuous bridge also gets `PACKET_OTHERHOST` ones).
///
/// Frames of one family come in order; between the two sockets there is no order.
pub(crate) struct PacketSocket {
    /// One socket per family watched, IPv4's first.
    sockets: Vec<OwnedFd>,
    wait: Wait,
    buf: [u8; SNAPLEN],
}

impl PacketSocket {
    /// Opens the sockets on `bridge` (in the calling thread's network namespace) for the
    /// families of the classifier's subnets.
    ///
    /// [`Wait::Blocking`] reads one socket only: it takes subnets of one family.
    pub(crate) fn open(
        bridge: &str,
        classifier: &Classifier,
        wait: Wait,
    ) -> Result<Self, CutoverError> {
        let index = interface_index(bridge)?;
        let subnets = classifier.subnets();
        let mut protocols = Vec::with_capacity(MAX_SOCKETS);
        if subnets.iter().any(|n| matches!(n, IpNet::V4(_))) {
            protocols.push(libc::ETH_P_IP);
        }
        if subnets.iter().any(|n| matches!(n, IpNet::V6(_))) {
            protocols.push(libc::ETH_P_IPV6);
        }
        #[cfg(test)]
        assert!(
            wait != Wait::Blocking || protocols.len() == 1,
            "a blocking PacketSocket reads one socket: give it subnets of one family"
        );
        let program = compile_filter(bridge, classifier)?;
        let sockets = protocols
            .into_iter()
            .map(|protocol| open_socket(bridge, index, protocol, &program, wait))
            .collect::<Result<_, _>>()?;
        Ok(PacketSocket {
            sockets,
            wait,
            buf: [0; SNAPLEN],
        })
    }

    /// Replaces the kernel filter (atomically, on each socket) with the classifier's current
    /// one, so that subnets already cut over no longer wake the watcher.
    pub(crate) fn update_filter(
        &self,
        bridge: &str,
        classifier: &Classifier,
    ) -> Result<(), CutoverError> {
        let program = compile_filter(bridge, classifier)?;
        for fd in &self.sockets {
            attach_filter(fd, bridge, &program)?;
        }
        Ok(())
    }

    /// Hands every frame received for the host to `on_frame` until it returns `Some` or
    /// `stop` is raised.
    pub(crate) fn run<T>(
        &mut self,
        stop: &StopSignal,
        mut on_frame: impl FnMut(Frame<'_>) -> Option<T>,
    ) -> io::Result<Run<T>> {
        let fds: Vec<RawFd> = self.sockets.iter().map(|fd| fd.as_raw_fd()).collect();
        loop {
            let ready = match self.wait {
                Wait::Stoppable => match wait_readable(&fds, stop)? {
                    Some(ready) => ready,
                    None => return Ok(Run::Stopped),
                },
                // One socket (see `open`); the read blocks.
                #[cfg(test)]
                Wait::Blocking => [true; MAX_SOCKETS],
            };
            for (&fd, _) in fds.iter().zip(ready).filter(|(_, ready)| *ready) {
                // At most BATCH frames, then the other socket's turn: frames the filter
                // passes but the classifier refuses, coming fast for one family, must not
                // hold back the other family's first native packet.
                for _ in 0..BATCH {
                    match recv(fd, &mut self.buf)? {
                        None => break,
                        Some((len, pkttype, captured_at)) if pkttype == libc::PACKET_HOST => {
                            let data = self.buf.get(..len).unwrap_or(&self.buf);
                            if let Some(t) = on_frame(Frame { data, captured_at }) {
                                return Ok(Run::Done(t));
                            }
                        }
                        Some(_) => {}
                    }
                    if self.wait != Wait::Stoppable {
                        break;
                    }
                }
            }
        }
    }
}

/// Opens one packet socket on the bridge with interface index `index` for the ethertype
/// `protocol`, with `program` attached before it receives anything.
fn open_socket(
    bridge: &str,
    index: u32,
    protocol: libc::c_int,
    program: &pcap::BpfProgram,
    wait: Wait,
) -> Result<OwnedFd, CutoverError> {
    let io_error = |action: &'static str, source: io::Error| CutoverError::Io {
        bridge: bridge.to_owned(),
        action,
        source,
    };
    let flags = match wait {
        Wait::Stoppable => libc::SOCK_NONBLOCK,
        #[cfg(test)]
        Wait::Blocking => 0,
    };
    // Protocol 0: the socket receives nothing until bind(), so no frame slips in before
    // the filter is attached.
    // SAFETY: plain socket(2) call; a non-negative result is a new fd we own.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    if raw < 0 {
        return Err(io_error(
            "opening a packet socket",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: raw was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    attach_filter(&fd, bridge, program)?;
    setsockopt(&fd, libc::SO_TIMESTAMPNS, &1 as &libc::c_int)
        .map_err(|e| io_error("enabling receive timestamps", e))?;

    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (protocol as u16).to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a live sockaddr_ll and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io_error(
            "binding the packet socket",
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

/// One recvmsg on `fd` into `buf`: (bytes kept, sll_pkttype, kernel timestamp), or None when
/// nothing is queued (non-blocking).
fn recv(fd: RawFd, buf: &mut [u8; SNAPLEN]) -> io::Result<Option<(usize, u8, SystemTime)>> {
    // SAFETY: all-zero is valid for these plain C structs.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    // Room for one SCM_TIMESTAMPNS (a timespec) with its header, u64-aligned.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: msg points at live buffers (from, iov -> buf, control) sized as stated.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => recv(fd, buf),
            _ => Err(err),
        };
    }
    let len = (n as usize).min(buf.len());
    let mut captured_at = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, bounded
    // by msg_controllen; the timespec is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                captured_at = Some(timespec_to_system_time(ts.tv_sec, ts.tv_nsec));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let captured_at = captured_at.unwrap_or_else(SystemTime::now);
    Ok(Some((len, from.sll_pkttype, captured_at)))
}

fn attach_filter(
    fd: &OwnedFd,
    bridge: &str,
    program: &pcap::BpfProgram,
) -> Result<(), CutoverError> {
    let insns = program.get_instructions();
    let filter = libc::sock_fprog {
        len: u16::try_from(insns.len()).map_err(|_| CutoverError::Filter {
            bridge: bridge.to_owned(),
            message: format!(
                "{} BPF instructions, more than the kernel takes",
                insns.len()
            ),
        })?,
        // pcap's BpfInstruction is repr(transparent) over libpcap's struct bpf_insn
        // { u16 code; u8 jt; u8 jf; u32 k }, which is the kernel's struct sock_filter.
        filter: insns.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    setsockopt(fd, libc::SO_ATTACH_FILTER, &filter).map_err(|source| CutoverError::Io {
        bridge: bridge.to_owned(),
        action: "attaching the BPF filter",
        source,
    })
}

fn setsockopt<T>(fd: &OwnedFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value is a live T and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Compiles the classifier's filter expression for Ethernet with libpcap, without a device.
pub(crate) fn compile_filter(
    bridge: &str,
    classifier: &Classifier,
) -> Result<pcap::BpfProgram, CutoverError> {
    let expression = classifier.bpf_expression();
    let filter_error = |e: pcap::Error| CutoverError::Filter {
        bridge: bridge.to_owned(),
        message: format!("compiling `{expression}`: {e}"),
    };
    let dead = Capture::dead(Linktype::ETHERNET).map_err(filter_error)?;
    dead.compile(&expression, optimize(classifier))
        .map_err(filter_error)
}

/// Whether libpcap may optimise the filter: not once nothing is watched, because its optimiser
/// refuses an expression that rejects every packet ("expression rejects all packets").
fn optimize(classifier: &Classifier) -> bool {
    !classifier.subnets().is_empty()
}

fn timespec_to_system_time(sec: i64, nsec: i64) -> SystemTime {
    let secs = u64::try_from(sec).unwrap_or(0);
    let nanos = u32::try_from(nsec).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// libpcap on the bridge: immediate mode (no buffering timeout), a small snaplen, incoming
/// direction only, the same BPF filter. Kept for the latency comparison.
#[cfg(test)]
pub(crate) struct PcapCapture {
    capture: Capture<pcap::Active>,
    wait: Wait,
}

#[cfg(test)]
impl PcapCapture {
    /// Opens libpcap on `bridge` (in the calling thread's network namespace).
    pub(crate) fn open(
        bridge: &str,
        classifier: &Classifier,
        wait: Wait,
    ) -> Result<Self, CutoverError> {
        interface_index(bridge)?;
        let pcap_error = |action: &'static str| {
            move |e: pcap::Error| CutoverError::Io {
                bridge: bridge.to_owned(),
                action,
                source: io::Error::other(e),
            }
        };
        let capture = Capture::from_device(bridge)
            .map_err(pcap_error("opening the capture"))?
            .immediate_mode(true)
            .snaplen(SNAPLEN as i32)
            .promisc(false)
            .precision(pcap::Precision::Nano)
            .open()
            .map_err(pcap_error("opening the capture"))?;
        let mut capture = match wait {
            Wait::Stoppable => capture
                .setnonblock()
                .map_err(pcap_error("setting non-blocking mode"))?,
            Wait::Blocking => capture,
        };
        capture
            .direction(pcap::Direction::In)
            .map_err(pcap_error("capturing incoming packets only"))?;
        capture
            .filter(&classifier.bpf_expression(), optimize(classifier))
            .map_err(pcap_error("setting the BPF filter"))?;
        Ok(PcapCapture { capture, wait })
    }

    /// As [`PacketSocket::run`].
    pub(crate) fn run<T>(
        &mut self,
        stop: &StopSignal,
        mut on_frame: impl FnMut(Frame<'_>) -> Option<T>,
    ) -> io::Result<Run<T>> {
        loop {
            if self.wait == Wait::Stoppable
                && wait_readable(&[self.capture.as_raw_fd()], stop)?.is_none()
            {
                return Ok(Run::Stopped);
            }
            loop {
                match self.capture.next_packet() {
                    Ok(packet) => {
                        let ts = packet.header.ts;
                        // Precision::Nano: tv_usec holds nanoseconds.
                        let captured_at = timespec_to_system_time(ts.tv_sec, ts.tv_usec);
                        if let Some(t) = on_frame(Frame {
                            data: packet.data,
                            captured_at,
                        }) {
                            return Ok(Run::Done(t));
                        }
                    }
                    Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => break,
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
                if self.wait != Wait::Stoppable {
                    break;
                }
            }
        }
    }
}
