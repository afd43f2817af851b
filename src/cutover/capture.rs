//! The OS edge of the cutover: receiving frames from the native interfaces (the bridge, and
//! any other uplink configured), filtered in the kernel, with a kernel receive timestamp and
//! the interface they came in on, and stoppable at any time through an eventfd.
//!
//! [`PacketSocket`] is one `AF_PACKET` socket per interface and address family watched, bound
//! for `ETH_P_IP` and `ETH_P_IPV6`, each with the classic BPF program libpcap compiles
//! attached, polled together with the stop signal. The same socket, bound for every protocol
//! (`PacketSocket::arriving`), waits for a guest's first frame on a VM interface
//! (`crate::handover`).
//!
//! An interface going down is survived: the kernel reports `ENETDOWN` on the socket (and
//! stops delivering), and hooks the socket up again by itself when the interface comes back
//! up with the same index; the capture reads the error to clear it and keeps waiting. While
//! an interface has been down, the capture also checks every [`DOWN_RECHECK`] that it still
//! exists: one deleted (or recreated under a new index, which the socket does not follow) is
//! an error naming it. `PcapCapture` (libpcap in immediate mode,
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

/// One frame as received: at most [`SNAPLEN`] bytes, the kernel's receive time, and the
/// index of the interface it came in on.
pub(crate) struct Frame<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) captured_at: SystemTime,
    pub(crate) ifindex: u32,
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

/// Which frames a [`PacketSocket`] takes, by the kernel's packet type (`sll_pkttype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Only frames addressed to the host (`PACKET_HOST`): the cutover's native packets.
    ToHost,
    /// Every frame the link brings in, whatever its destination (all but the host's own,
    /// `PACKET_OUTGOING`, which the kernel filter drops already): on a VM's interface, any
    /// frame at all comes from the guest.
    Arriving,
}

impl Take {
    fn accepts(self, pkttype: u8) -> bool {
        match self {
            Self::ToHost => pkttype == libc::PACKET_HOST,
            Self::Arriving => pkttype != libc::PACKET_OUTGOING,
        }
    }
}

/// The libpcap expression for every frame arriving on an interface: Linux's packet type
/// in the kernel filter (`SKF_AD_PKTTYPE`), everything but outgoing.
const ARRIVING: &str = "inbound";

/// Most frames read from one socket per wakeup before the other sockets' turn.
const BATCH: usize = 64;

/// While an interface has been down, how often the capture checks that it still exists.
pub(crate) const DOWN_RECHECK: Duration = Duration::from_secs(1);

/// What a wait on the sockets and the stop signal found.
enum Ready {
    /// The stop signal was raised.
    Stopped,
    /// Some sockets are readable or report an error (their `revents` in the poll set).
    Sockets,
    /// The timeout passed with nothing to read.
    Timeout,
}

/// Polls `pollfds` (the stop signal first: it wins when several are ready) for at most
/// `timeout` (None: no limit).
fn wait_readable(pollfds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<Ready> {
    let timeout_ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    for pollfd in pollfds.iter_mut() {
        pollfd.revents = 0;
    }
    loop {
        // SAFETY: pollfds is a live slice of pollfd.
        let n = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(match pollfds.first() {
            Some(stop) if stop.revents != 0 => Ready::Stopped,
            _ if n == 0 => Ready::Timeout,
            _ => Ready::Sockets,
        });
    }
}

/// The pollfd for reading `fd`.
fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The index of the interface named `name` in the calling thread's network namespace, None if
/// there is none.
pub fn index_of(name: &str) -> Option<u32> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let name = CString::new(name).ok()?;
    // SAFETY: name is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// Checks that `iface` names an interface in this network namespace, for a clear error before
/// any socket is opened.
pub(crate) fn interface_index(iface: &str) -> Result<u32, CutoverError> {
    index_of(iface).ok_or_else(|| CutoverError::NoSuchInterface {
        iface: iface.to_owned(),
    })
}

/// Reads and clears the socket's pending error (`SO_ERROR`).
fn take_error(fd: RawFd) -> io::Error {
    let mut code: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: code and len are live and sized as stated.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut code).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        io::Error::last_os_error()
    } else {
        io::Error::from_raw_os_error(code)
    }
}

/// One packet socket: on which interface, for which ethertype.
struct Socket {
    fd: OwnedFd,
    iface: String,
    ifindex: u32,
    /// Whether its interface has gone down since the watch began (see the module doc).
    was_down: bool,
}

/// `AF_PACKET` sockets on the native interfaces that receive the IPv4 and IPv6 frames
/// addressed to the host: one per interface and family watched, each bound to its ethertype
/// (`ETH_P_IP`, `ETH_P_IPV6`).
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
/// Frames of one family on one interface come in order; between sockets there is no order.
///
/// [`Self::arriving`] is the other use: one `ETH_P_ALL` socket on a VM's interface, where
/// every frame from the guest counts (ARP and RARP too) and the host's own are few.
pub(crate) struct PacketSocket {
    /// One socket per interface and family watched, IPv4's first on each interface.
    sockets: Vec<Socket>,
    /// The poll set: the stop signal (set by `run`), then each socket.
    pollfds: Vec<libc::pollfd>,
    wait: Wait,
    take: Take,
    buf: [u8; SNAPLEN],
}

impl PacketSocket {
    /// Opens the sockets on `ifaces` (in the calling thread's network namespace) for the
    /// families of the classifier's subnets.
    ///
    /// [`Wait::Blocking`] reads one socket only: it takes one interface and subnets of one
    /// family.
    pub(crate) fn open(
        ifaces: &[String],
        classifier: &Classifier,
        wait: Wait,
    ) -> Result<Self, CutoverError> {
        let subnets = classifier.subnets();
        let mut protocols = Vec::with_capacity(2);
        if subnets.iter().any(|n| matches!(n, IpNet::V4(_))) {
            protocols.push(libc::ETH_P_IP);
        }
        if subnets.iter().any(|n| matches!(n, IpNet::V6(_))) {
            protocols.push(libc::ETH_P_IPV6);
        }
        #[cfg(test)]
        assert!(
            wait != Wait::Blocking || protocols.len() * ifaces.len() == 1,
            "a blocking PacketSocket reads one socket: give it one interface and one family"
        );
        Self::open_with(ifaces, &protocols, wait, Take::ToHost, |iface| {
            compile_filter(iface, classifier)
        })
    }

    /// One stoppable socket on `iface` that takes every frame arriving there, of any
    /// protocol (`ETH_P_ALL`; the host's own outgoing frames are dropped by the kernel
    /// filter): a VM's interface, where the guest's first frame (QEMU's announcement, an ARP
    /// request) says that it runs.
    pub(crate) fn arriving(iface: &str) -> Result<Self, CutoverError> {
        let ifaces = [iface.to_owned()];
        Self::open_with(
            &ifaces,
            &[libc::ETH_P_ALL],
            Wait::Stoppable,
            Take::Arriving,
            |iface| compile_expression(iface, ARRIVING, true),
        )
    }

    /// One socket per interface of `ifaces` and ethertype of `protocols`, each with the
    /// filter `program` compiles for its interface.
    fn open_with(
        ifaces: &[String],
        protocols: &[libc::c_int],
        wait: Wait,
        take: Take,
        program: impl Fn(&str) -> Result<pcap::BpfProgram, CutoverError>,
    ) -> Result<Self, CutoverError> {
        let mut sockets = Vec::with_capacity(ifaces.len() * protocols.len());
        for iface in ifaces {
            let ifindex = interface_index(iface)?;
            let program = program(iface)?;
            for &protocol in protocols {
                sockets.push(Socket {
                    fd: open_socket(iface, ifindex, protocol, &program, wait)?,
                    iface: iface.clone(),
                    ifindex,
                    was_down: false,
                });
            }
        }
        let mut pollfds = vec![readable(-1)];
        pollfds.extend(sockets.iter().map(|s| readable(s.fd.as_raw_fd())));
        Ok(PacketSocket {
            sockets,
            pollfds,
            wait,
            take,
            buf: [0; SNAPLEN],
        })
    }

    /// Replaces the kernel filter (atomically, on each socket) with the classifier's current
    /// one, so that subnets already cut over no longer wake the watcher.
    pub(crate) fn update_filter(&self, classifier: &Classifier) -> Result<(), CutoverError> {
        for socket in &self.sockets {
            let program = compile_filter(&socket.iface, classifier)?;
            attach_filter(&socket.fd, &socket.iface, &program)?;
        }
        Ok(())
    }

    /// Hands every frame it takes (see [`Take`]) to `on_frame` until it returns `Some` or
    /// `stop` is raised. An error names the interface.
    pub(crate) fn run<T>(
        &mut self,
        stop: &StopSignal,
        mut on_frame: impl FnMut(Frame<'_>) -> Option<T>,
    ) -> io::Result<Run<T>> {
        self.pollfds[0] = readable(stop.fd.as_raw_fd());
        loop {
            if self.wait == Wait::Stoppable {
                let timeout = self
                    .sockets
                    .iter()
                    .any(|s| s.was_down)
                    .then_some(DOWN_RECHECK);
                match wait_readable(&mut self.pollfds, timeout)? {
                    Ready::Stopped => return Ok(Run::Stopped),
                    Ready::Timeout => {
                        self.check_still_there()?;
                        continue;
                    }
                    Ready::Sockets => {}
                }
            }
            for (i, socket) in self.sockets.iter_mut().enumerate() {
                let revents = self.pollfds[i + 1].revents;
                if self.wait == Wait::Stoppable && revents == 0 {
                    continue;
                }
                if revents & libc::POLLERR != 0 {
                    socket.handle_error(take_error(socket.fd.as_raw_fd()))?;
                }
                // At most BATCH frames, then the other sockets' turn: frames the filter
                // passes but the classifier refuses, coming fast on one socket, must not
                // hold back another family's or interface's first native packet.
                for _ in 0..BATCH {
                    let received = match recv(socket.fd.as_raw_fd(), &mut self.buf) {
                        Ok(received) => received,
                        Err(e) => {
                            socket.handle_error(e)?;
                            None
                        }
                    };
                    match received {
                        None => break,
                        Some((len, pkttype, captured_at)) if self.take.accepts(pkttype) => {
                            let data = self.buf.get(..len).unwrap_or(&self.buf);
                            let ifindex = socket.ifindex;
                            if let Some(t) = on_frame(Frame {
                                data,
                                captured_at,
                                ifindex,
                            }) {
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

    /// Fails if an interface that went down has since disappeared (or was recreated under
    /// another index, which the socket does not follow).
    fn check_still_there(&self) -> io::Result<()> {
        match self
            .sockets
            .iter()
            .find(|s| s.was_down && index_of(&s.iface) != Some(s.ifindex))
        {
            Some(gone) => Err(gone.error(io::Error::from_raw_os_error(libc::ENODEV))),
            None => Ok(()),
        }
    }
}

impl Socket {
    /// Survives its interface going down (the kernel hooks the socket up again when it comes
    /// back); any other error is returned, naming the interface.
    fn handle_error(&mut self, e: io::Error) -> io::Result<()> {
        if e.raw_os_error() == Some(libc::ENETDOWN) && index_of(&self.iface) == Some(self.ifindex) {
            if !self.was_down {
                tracing::warn!(
                    iface = self.iface,
                    "cutover watcher: {} went down; watching again once it is up",
                    self.iface
                );
            }
            self.was_down = true;
            return Ok(());
        }
        if e.raw_os_error() == Some(0) {
            return Ok(());
        }
        Err(self.error(e))
    }

    fn error(&self, e: io::Error) -> io::Error {
        let what = match e.raw_os_error() {
            Some(libc::ENETDOWN | libc::ENODEV) => "disappeared".to_owned(),
            _ => format!("reading packets: {e}"),
        };
        io::Error::new(e.kind(), format!("interface {}: {what}", self.iface))
    }
}

/// Opens one packet socket on the interface `iface` with index `index` for the ethertype
/// `protocol`, with `program` attached before it receives anything.
fn open_socket(
    iface: &str,
    index: u32,
    protocol: libc::c_int,
    program: &pcap::BpfProgram,
    wait: Wait,
) -> Result<OwnedFd, CutoverError> {
    let io_error = |action: &'static str, source: io::Error| CutoverError::Io {
        iface: iface.to_owned(),
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

    attach_filter(&fd, iface, program)?;
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
    iface: &str,
    program: &pcap::BpfProgram,
) -> Result<(), CutoverError> {
    let insns = program.get_instructions();
    let filter = libc::sock_fprog {
        len: u16::try_from(insns.len()).map_err(|_| CutoverError::Filter {
            iface: iface.to_owned(),
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
        iface: iface.to_owned(),
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
    iface: &str,
    classifier: &Classifier,
) -> Result<pcap::BpfProgram, CutoverError> {
    compile_expression(iface, &classifier.bpf_expression(), optimize(classifier))
}

/// Compiles `expression` for Ethernet with libpcap, without a device.
fn compile_expression(
    iface: &str,
    expression: &str,
    optimize: bool,
) -> Result<pcap::BpfProgram, CutoverError> {
    let filter_error = |e: pcap::Error| CutoverError::Filter {
        iface: iface.to_owned(),
        message: format!("compiling `{expression}`: {e}"),
    };
    let dead = Capture::dead(Linktype::ETHERNET).map_err(filter_error)?;
    dead.compile(expression, optimize).map_err(filter_error)
}

/// Whether libpcap may optimise the filter: not once nothing is watched (or no gateway is
/// known), because its optimiser refuses an expression that rejects every packet
/// ("expression rejects all packets").
fn optimize(classifier: &Classifier) -> bool {
    !classifier.subnets().is_empty() && !classifier.gateways().is_empty()
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
    ifindex: u32,
}

#[cfg(test)]
impl PcapCapture {
    /// Opens libpcap on `bridge` (in the calling thread's network namespace).
    pub(crate) fn open(
        bridge: &str,
        classifier: &Classifier,
        wait: Wait,
    ) -> Result<Self, CutoverError> {
        let ifindex = interface_index(bridge)?;
        let pcap_error = |action: &'static str| {
            move |e: pcap::Error| CutoverError::Io {
                iface: bridge.to_owned(),
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
        Ok(PcapCapture {
            capture,
            wait,
            ifindex,
        })
    }

    /// As [`PacketSocket::run`].
    pub(crate) fn run<T>(
        &mut self,
        stop: &StopSignal,
        mut on_frame: impl FnMut(Frame<'_>) -> Option<T>,
    ) -> io::Result<Run<T>> {
        let mut pollfds = [
            readable(stop.fd.as_raw_fd()),
            readable(self.capture.as_raw_fd()),
        ];
        loop {
            if self.wait == Wait::Stoppable
                && matches!(wait_readable(&mut pollfds, None)?, Ready::Stopped)
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
                            ifindex: self.ifindex,
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
