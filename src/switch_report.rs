//! The two hosts' vmtun talk to each other: the new host reports the provider's switch of a
//! subnet, and a VM's arrival (or departure) on it; the old host acknowledges the latter.
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
//! The VM reports ([`Report::VmHere`], [`Report::VmGone`]) are `crate::handover`'s: the
//! new host saw a migrated guest's first frame on its interface, so the old host stops
//! routing the VM's addresses to the paused source; or that interface went away again. They
//! are repeated until the old host acknowledges them ([`Report::Ack`]); which ones to send
//! and when is `crate::handover::Announcer`'s decision, what to do with them
//! `crate::handover::Custody`'s. The other way, the old host tells the new host's reporter of
//! a handover at a source's pause ([`Report::VmPaused`], twice, unacknowledged), so that a
//! destination interface held there since the switch takes the VM's traffic at once.
//!
//! Every report is one small UDP datagram from the new host's tunnel address to the old
//! host's, port [`REPORT_PORT`], inside the tunnel: authenticated by it (the old host only
//! listens on its tunnel device and only believes the peer's tunnel address, which no one
//! but the peer can send from through the tunnel); acknowledgements go back the same way.
//! The new host sends a switch report at once and again every [`REPORT_EVERY`] for as long
//! as it runs, so a lost datagram or a restarted old host learns it within that time;
//! adding a subnet the set holds already changes nothing.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ipnet::IpNet;

use crate::handover::{Announcer, Transmit, VmEvent};

/// The UDP port the old host listens on for reports, on its tunnel address only.
pub const REPORT_PORT: u16 = 51821;
/// How often the new host repeats its switch reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a listening thread blocks before it looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// The largest report read: a VM report lists the VM's addresses (a few dozen fit).
const MAX_REPORT: usize = 1400;
/// What a switch report starts with (protocol version 1).
const SWITCHED: &str = "vmtun-switched/1 ";
/// What a report of a guest seen on the new host starts with.
const VM_HERE: &str = "vmtun-vm-here/1 ";
/// What a report of that guest's interface gone from the new host starts with.
const VM_GONE: &str = "vmtun-vm-gone/1 ";
/// What an acknowledgement of a VM report starts with.
const ACK: &str = "vmtun-ack/1 ";
/// What the old host's word that a VM is paused there for its migration starts with.
const VM_PAUSED: &str = "vmtun-vm-paused/1 ";

/// Names one sighting of a guest on the new host, so that the old host can tell a repeat
/// from a new migration, and match an acknowledgement to its report. Random: unique across
/// restarts of either host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ReportId(pub u64);

impl std::fmt::Display for ReportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a VM report says: which sighting, the new host's interface, the VM's addresses
/// (which identify the VM on the old host, whatever its interface is called there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmReport {
    /// The sighting.
    pub id: ReportId,
    /// The VM's interface on the new host (for the old host's log).
    pub vif: String,
    /// The VM's addresses, as the new host's `[[vm]]` lists them.
    pub addresses: Vec<IpAddr>,
}

/// Which VM report an acknowledgement answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOf {
    /// A [`Report::VmHere`].
    Here,
    /// A [`Report::VmGone`].
    Gone,
}

/// One message between the hosts' vmtun on [`REPORT_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// New to old: the provider has switched this subnet.
    Switched(IpNet),
    /// New to old: the guest sent its first frame on the new host's interface: it runs here.
    VmHere(VmReport),
    /// New to old: that interface went away (the guest stopped, or never ran, there).
    VmGone(VmReport),
    /// Old to new: a VM report was received and decided on.
    Ack(AckOf, ReportId),
    /// Old to new: the source paused this VM for its migration's last stage and the old
    /// host handed it over (`vmtun handover`): a destination interface for it waiting on
    /// the new host may take its traffic now.
    VmPaused(VmReport),
}

impl Report {
    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let vm = |prefix: &str, r: &VmReport| {
            let addresses: Vec<String> = r.addresses.iter().map(IpAddr::to_string).collect();
            format!("{prefix}{} {} {}", r.id, r.vif, addresses.join(","))
        };
        match self {
            Self::Switched(net) => format!("{SWITCHED}{}", net.trunc()),
            Self::VmHere(r) => vm(VM_HERE, r),
            Self::VmGone(r) => vm(VM_GONE, r),
            Self::VmPaused(r) => vm(VM_PAUSED, r),
            Self::Ack(AckOf::Here, id) => format!("{ACK}here {id}"),
            Self::Ack(AckOf::Gone, id) => format!("{ACK}gone {id}"),
        }
        .into_bytes()
    }

    /// The report a datagram holds, or `None` for anything else.
    pub fn decode(datagram: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(datagram).ok()?;
        if let Some(rest) = text.strip_prefix(SWITCHED) {
            let net: IpNet = rest.parse().ok()?;
            return (net == net.trunc()).then_some(Self::Switched(net));
        }
        if let Some(rest) = text.strip_prefix(VM_HERE) {
            return vm_report(rest).map(Self::VmHere);
        }
        if let Some(rest) = text.strip_prefix(VM_GONE) {
            return vm_report(rest).map(Self::VmGone);
        }
        if let Some(rest) = text.strip_prefix(VM_PAUSED) {
            return vm_report(rest).map(Self::VmPaused);
        }
        let (of, id) = text.strip_prefix(ACK)?.split_once(' ')?;
        let of = match of {
            "here" => AckOf::Here,
            "gone" => AckOf::Gone,
            _ => return None,
        };
        Some(Self::Ack(of, report_id(id)?))
    }
}

fn report_id(text: &str) -> Option<ReportId> {
    (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
        .map(ReportId)
}

/// `ID VIF ADDR,ADDR...`: every field present, at least one address.
fn vm_report(text: &str) -> Option<VmReport> {
    let mut fields = text.split(' ');
    let id = report_id(fields.next()?)?;
    let vif = fields.next().filter(|v| !v.is_empty())?.to_owned();
    let addresses = (fields.next()?.split(','))
        .map(str::parse)
        .collect::<Result<Vec<IpAddr>, _>>()
        .ok()?;
    fields
        .next()
        .is_none()
        .then_some(VmReport { id, vif, addresses })
}

/// What the reporter thread is asked to do.
enum Job {
    /// Report a subnet switched, now and from now on.
    Switched(IpNet),
    /// Something the [`Announcer`] decides on.
    Vm(VmEvent),
    /// End the thread (other threads may still hold senders).
    Stop,
}

/// Role new: sends the reports, from a thread of its own; with an [`Announcer`], also the
/// VM reports, reading the old host's acknowledgements on a second thread. Dropping it
/// stops both.
pub struct Reporter {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    acks: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// A handle that reports from another thread (the cutover watcher's callback, the VM
/// interface watchers).
#[derive(Clone)]
pub struct ReportSender(mpsc::Sender<Job>);

impl ReportSender {
    /// Reports `subnet` switched, now and from now on.
    pub fn switched(&self, subnet: IpNet) {
        let _ = self.0.send(Job::Switched(subnet));
    }

    /// Hands `event` to the reporter's [`Announcer`] (ignored without one).
    pub fn vm(&self, event: VmEvent) {
        let _ = self.0.send(Job::Vm(event));
    }
}

impl Reporter {
    /// Binds a socket on this host's tunnel address `from`, on the tunnel device `tun` (so
    /// that only the tunnel's datagrams are read as acknowledgements), and starts reporting
    /// to the old host's tunnel address `to`; VM reports as `announcer` decides, when given.
    pub fn start(
        tun: &str,
        from: IpAddr,
        to: IpAddr,
        announcer: Option<Announcer>,
        on_paused: OnPaused,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(from, 0))
            .with_context(|| format!("binding the switch reporter to {from}"))?;
        bind_to_device(&socket, tun)
            .with_context(|| format!("binding the switch reporter to device {tun}"))?;
        let dest = SocketAddr::new(to, REPORT_PORT);
        let (tx, rx) = mpsc::channel::<Job>();
        let acks = match &announcer {
            Some(_) => Some(read_acks(
                &socket,
                dest,
                ReportSender(tx.clone()),
                on_paused,
            )?),
            None => None,
        };
        let thread = thread::Builder::new()
            .name("switch-report".into())
            .spawn(move || {
                if announcer.is_some() {
                    at_real_time_priority("switch reporter");
                }
                report(&socket, dest, &rx, announcer)
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            acks,
        })
    }

    /// Reports `subnet` switched, now and from now on.
    pub fn report(&self, subnet: IpNet) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Switched(subnet));
        }
    }

    /// A handle that reports from another thread.
    pub fn sender(&self) -> Option<ReportSender> {
        self.tx.clone().map(ReportSender)
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.acks.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Job::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reporter thread: switch reports at once and every [`REPORT_EVERY`], VM reports
/// when the announcer says, until told to stop.
fn report(
    socket: &UdpSocket,
    dest: SocketAddr,
    rx: &mpsc::Receiver<Job>,
    mut announcer: Option<Announcer>,
) {
    let mut switched: Vec<IpNet> = Vec::new();
    let mut next_repeat = Instant::now() + REPORT_EVERY;
    loop {
        let due = (announcer.as_ref().and_then(Announcer::poll_timeout))
            .map_or(next_repeat, |t| t.min(next_repeat));
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Job::Switched(net)) => {
                if !switched.contains(&net) {
                    switched.push(net);
                }
                send(socket, dest, &Report::Switched(net));
            }
            Ok(Job::Vm(event)) => {
                if let Some(a) = announcer.as_mut() {
                    a.handle(event, Instant::now());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if now >= next_repeat {
            for &net in &switched {
                send(socket, dest, &Report::Switched(net));
            }
            next_repeat = now + REPORT_EVERY;
        }
        while let Some(t) = announcer.as_mut().and_then(|a| a.poll_transmit(now)) {
            match t {
                Transmit::Send(r) => send(socket, dest, &r),
                Transmit::GiveUp(r) => tracing::warn!(
                    "the old host ({}) acknowledged none of {} reports of {:?}: gave up; it \
                     may still route that VM to its interface there",
                    dest.ip(),
                    crate::handover::MAX_SENDS,
                    r
                ),
            }
        }
    }
}

/// Where the new host hears of a VM paused on the old host (the VM's addresses): set once
/// the handover that acts on it exists, which comes after the reporter.
pub type OnPaused = Arc<std::sync::OnceLock<Box<dyn Fn(&[IpAddr]) + Send + Sync>>>;

/// Reads the old host's acknowledgements on `socket` (only from `dest`) and hands them to
/// the reporter thread, and its pause reports to `on_paused`, until the returned flag is
/// raised.
fn read_acks(
    socket: &UdpSocket,
    dest: SocketAddr,
    to: ReportSender,
    on_paused: OnPaused,
) -> anyhow::Result<(Arc<AtomicBool>, JoinHandle<()>)> {
    let socket = socket.try_clone()?;
    socket.set_read_timeout(Some(STOP_CHECK))?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("switch-report-acks".into())
            .spawn(move || {
                let mut buf = [0u8; MAX_REPORT];
                while !stop.load(Ordering::Relaxed) {
                    match receive(&socket, &mut buf) {
                        Ok(Some((n, from))) if from == dest => match Report::decode(&buf[..n]) {
                            Some(Report::Ack(of, id)) => to.vm(VmEvent::Ack(of, id)),
                            Some(Report::VmPaused(r)) => {
                                if let Some(on_paused) = on_paused.get() {
                                    on_paused(&r.addresses);
                                }
                            }
                            _ => {}
                        },
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(
                                "switch reporter: {e}; no longer reading acknowledgements"
                            );
                            return;
                        }
                    }
                }
            })?
    };
    Ok((stop, thread))
}

/// One datagram, or `None` when the read timed out.
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
    match socket.recv_from(buf) {
        Ok(got) => Ok(Some(got)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn send(socket: &UdpSocket, dest: SocketAddr, report: &Report) {
    if let Err(e) = socket.send_to(&report.encode(), dest) {
        tracing::debug!("sending {report:?} to {dest}: {e}");
    }
}

/// Role old: receives the reports on a thread of its own. Each switch report goes to
/// `on_switched`, which must be idempotent: reports repeat, and whoever flushed the kernel's
/// set (a reload of the host's firewall) is answered by the next one. Each VM report goes to
/// `on_vm`, whose answer (an acknowledgement) is sent back to the reporter. Dropping it stops
/// the thread.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    to_peer: ToPeer,
}

/// Role old: sends the new host's reporter a message of the old host's own (a VM paused
/// here), to where its reports last came from; nothing before the first.
#[derive(Clone)]
pub struct ToPeer {
    socket: Arc<UdpSocket>,
    reporter: Arc<std::sync::Mutex<Option<SocketAddr>>>,
}

impl ToPeer {
    /// Sends `report`; whether the new host's reporter is known.
    pub fn send(&self, report: &Report) -> bool {
        let at = *self
            .reporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        at.inspect(|&to| send(&self.socket, to, report)).is_some()
    }
}

impl Listener {
    /// Binds [`REPORT_PORT`] on this host's tunnel address `at`, on the tunnel device `tun`
    /// only, and believes only reports from `peer`, switch reports only about one of
    /// `subnets`.
    pub fn start<E>(
        tun: &str,
        at: IpAddr,
        peer: IpAddr,
        subnets: Vec<IpNet>,
        mut on_switched: impl FnMut(IpNet) -> Result<(), E> + Send + 'static,
        mut on_vm: impl FnMut(&Report) -> Option<Report> + Send + 'static,
    ) -> anyhow::Result<Self>
    where
        E: std::fmt::Display,
    {
        let socket = UdpSocket::bind(SocketAddr::new(at, REPORT_PORT))
            .with_context(|| format!("binding the switch listener to {at} port {REPORT_PORT}"))?;
        bind_to_device(&socket, tun)
            .with_context(|| format!("binding the switch listener to device {tun}"))?;
        socket.set_read_timeout(Some(STOP_CHECK))?;
        let to_peer = ToPeer {
            socket: Arc::new(socket.try_clone()?),
            reporter: Arc::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let reporter = to_peer.reporter.clone();
            thread::Builder::new()
                .name("switch-listen".into())
                .spawn(move || {
                    at_real_time_priority("switch listener");
                    let mut seen: Vec<IpNet> = Vec::new();
                    let mut buf = [0u8; MAX_REPORT];
                    while !stop.load(Ordering::Relaxed) {
                        let (n, from) = match receive(&socket, &mut buf) {
                            Ok(Some(got)) => got,
                            Ok(None) => continue,
                            Err(e) => {
                                tracing::warn!("switch listener: {e}; no longer listening");
                                return;
                            }
                        };
                        let Some(report) = Report::decode(&buf[..n]) else {
                            tracing::debug!("switch listener: not a report from {from}");
                            continue;
                        };
                        if from.ip() != peer {
                            tracing::warn!(
                                "switch listener: ignored {report:?} from {from} (the peer is {peer})"
                            );
                            continue;
                        }
                        *reporter.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(from);
                        let net = match report {
                            Report::Switched(net) => net,
                            Report::Ack(..) | Report::VmPaused(_) => continue,
                            vm => {
                                if let Some(reply) = on_vm(&vm) {
                                    send(&socket, from, &reply);
                                }
                                continue;
                            }
                        };
                        if !subnets.contains(&net) {
                            tracing::warn!(
                                "switch listener: ignored a report of {net} from {from} \
                                 (subnets {subnets:?})"
                            );
                            continue;
                        }
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
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            to_peer,
        })
    }

    /// Sends to the new host's reporter.
    pub fn to_peer(&self) -> ToPeer {
        self.to_peer.clone()
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

/// A VM report is on the path of the client's traffic (the handover): the threads that
/// carry it wake at once, ahead of busy ordinary threads (QEMU's), when allowed.
fn at_real_time_priority(who: &str) {
    if let Err(e) = crate::cutover::real_time_priority() {
        tracing::debug!("{who} runs at normal priority ({e})");
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

    fn vm(id: u64, addresses: &[&str]) -> VmReport {
        VmReport {
            id: ReportId(id),
            vif: "vif0".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_switch_report_names_one_subnet_and_nothing_else_is_one() {
        for net in ["203.0.113.0/29", "2001:db8:1::/64"] {
            let net: IpNet = net.parse().unwrap();
            let report = Report::Switched(net);
            assert_eq!(Report::decode(&report.encode()), Some(report));
        }
        // Host bits are dropped when sending and refused when receiving.
        let sloppy: IpNet = "203.0.113.5/29".parse().unwrap();
        assert_eq!(
            Report::decode(&Report::Switched(sloppy).encode()),
            Some(Report::Switched(sloppy.trunc()))
        );
        for junk in [
            &b"vmtun-switched/1 203.0.113.5/29"[..],
            b"vmtun-switched/2 203.0.113.0/29",
            b"203.0.113.0/29",
            b"vmtun-switched/1 ",
            b"\xff\xfe",
        ] {
            assert_eq!(Report::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn vm_reports_and_acks_read_back_byte_for_byte() {
        let here = Report::VmHere(vm(0x0123_4567_89ab_cdef, &["203.0.113.2", "2001:db8:1::2"]));
        assert_eq!(
            here.encode(),
            b"vmtun-vm-here/1 0123456789abcdef vif0 203.0.113.2,2001:db8:1::2"
        );
        let gone = Report::VmGone(vm(7, &["203.0.113.2"]));
        assert_eq!(
            gone.encode(),
            b"vmtun-vm-gone/1 0000000000000007 vif0 203.0.113.2"
        );
        let acks = [
            (
                Report::Ack(AckOf::Here, ReportId(7)),
                &b"vmtun-ack/1 here 0000000000000007"[..],
            ),
            (
                Report::Ack(AckOf::Gone, ReportId(u64::MAX)),
                b"vmtun-ack/1 gone ffffffffffffffff",
            ),
        ];
        for (report, bytes) in acks {
            assert_eq!(report.encode(), bytes);
        }
        let paused = Report::VmPaused(vm(9, &["203.0.113.2"]));
        assert_eq!(
            paused.encode(),
            b"vmtun-vm-paused/1 0000000000000009 vif0 203.0.113.2"
        );
        for report in [here, gone, paused, Report::Ack(AckOf::Gone, ReportId(1))] {
            assert_eq!(Report::decode(&report.encode()), Some(report));
        }
    }

    #[test]
    fn a_malformed_vm_report_or_ack_is_none() {
        for junk in [
            &b"vmtun-vm-here/1 0123456789abcdef vif0"[..],
            b"vmtun-vm-here/1 0123456789abcdef vif0 ",
            b"vmtun-vm-here/1 0123456789abcdef vif0 203.0.113.2 extra",
            b"vmtun-vm-here/1 0123456789abcdef  203.0.113.2",
            b"vmtun-vm-here/1 123 vif0 203.0.113.2",
            b"vmtun-vm-here/1 0123456789abcdeg vif0 203.0.113.2",
            b"vmtun-vm-here/1 0123456789abcdef vif0 203.0.113.2,",
            b"vmtun-vm-here/1 0123456789abcdef vif0 203.0.113.0/29",
            b"vmtun-vm-gone/2 0123456789abcdef vif0 203.0.113.2",
            b"vmtun-ack/1 there 0123456789abcdef",
            b"vmtun-ack/1 here 0123456789abcdef0",
            b"vmtun-ack/1 here",
            b"vmtun-ack/1 here +123456789abcdef",
        ] {
            assert_eq!(
                Report::decode(junk),
                None,
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
    }
}
