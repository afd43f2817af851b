//! The event loop: the only place where the protocol core meets I/O. It moves packets
//! between the TUN device, the UDP socket and [`Tunnel`], fires the core's timers, and
//! answers control requests; after traffic it keeps polling briefly before it sleeps
//! (see `busy_poll`). It runs on a thread of its own over a plain `epoll` (mio), so
//! a packet costs the system calls it needs and little else; the control socket, signals
//! and the VM-interface watcher live on the tokio runtime of the main thread and reach
//! the loop through a [`DriverHandle`]. No locks: both directions and the timers share
//! one `&mut Tunnel`. Packets move in batches (one system call for dozens of packets each
//! way, see `tun` and `udp`); buffers are allocated once, and the per-packet path
//! allocates nothing.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

use crate::busy_poll::BusyPoll;
use crate::migration::Migration;
use crate::noise::{Event, Inbound, Outbound, PeerId, Tunnel};
use crate::read_error::{self, Source};
use crate::status::{BusyPollStatus, PeerStatus, Reply, Request, Status};
use crate::tun::{Tun, TunRx, TunTx};
use crate::udp::{GsoBatch, Udp, UdpRx};

/// Largest datagram or packet the loop handles: IP's limit.
const MAX_PACKET: usize = 65535;
/// Room for the largest packet sealed: header, tag and padding to 16.
const SEALED_MAX: usize = MAX_PACKET + crate::noise::OVERHEAD + 16;
/// Reads per turn of the loop before it looks at the other side again, so that one
/// busy direction cannot starve the other or the timers.
const READS_PER_WAKE: usize = 8;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const COMMANDS: Token = Token(2);

/// What other threads ask of the event loop.
pub enum Command {
    /// A control-socket request, with where to send the answer.
    Control(Request, oneshot::Sender<Reply>),
    /// SIGINT or SIGTERM arrived: stop.
    Stop,
}

/// The way into a running event loop from other threads: queue a command, wake the loop.
#[derive(Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
}

impl DriverHandle {
    /// Queues `command`; false if the loop has ended.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok() && self.waker.wake().is_ok()
    }

    /// Asks the loop `request` (answered between two batches of packets) and waits for the
    /// reply; `None` if the loop has ended.
    pub async fn request(&self, request: Request) -> Option<Reply> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Control(request, tx)) {
            return None;
        }
        rx.await.ok()
    }
}

/// What the status snapshot needs that the core does not know.
pub struct Identity {
    /// TUN device name.
    pub interface: String,
    /// This host's public key, base64.
    pub public_key: String,
    /// UDP port.
    pub listen_port: u16,
    /// Each peer's allowed_ips as text, in config order.
    pub allowed_ips: Vec<Vec<String>>,
    /// The restore monitor's counters, when one runs.
    pub restore: Option<crate::restore::StatusHandle>,
}

/// Counters of local I/O trouble that are not the core's business.
#[derive(Default)]
struct IoDrops {
    udp_send: u64,
    tun_write: u64,
    /// Reads that failed for what they held, not for the device or socket (see `read_error`).
    tun_read: u64,
    udp_read: u64,
}

/// The buffers of both directions, allocated once.
struct Buffers {
    tun_rx: TunRx,
    tun_tx: TunTx,
    udp_rx: UdpRx,
    gso: GsoBatch,
    /// For datagrams the core sends outside the data path (handshakes, keepalives).
    scratch: Box<[u8]>,
}

/// The running tunnel: owns the device, the socket, the core and the buffers.
pub struct Driver {
    tunnel: Tunnel,
    tun: Tun,
    udp: Udp,
    poll: Poll,
    commands: mpsc::Receiver<Command>,
    identity: Identity,
    migration: Option<Migration>,
    bufs: Box<Buffers>,
    io_drops: IoDrops,
    busy: BusyPoll,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGINT or SIGTERM.
    Signal,
    /// `vmtun down`.
    Down,
}

/// Whether a source may still hold data: set by a readiness event, cleared only when a
/// read finds nothing (the poller is edge-triggered).
#[derive(Clone, Copy, Default)]
struct Pending {
    tun: bool,
    udp: bool,
}

impl Driver {
    /// Assembles a driver and registers its sources; nothing runs until [`Driver::run`].
    /// The handle reaches the loop from other threads. `busy_poll` is how long the loop
    /// keeps polling after traffic before it sleeps (`busy_poll_us`; zero: never).
    pub fn new(
        tunnel: Tunnel,
        tun: Tun,
        udp: Udp,
        identity: Identity,
        migration: Option<Migration>,
        busy_poll: std::time::Duration,
    ) -> io::Result<(Self, DriverHandle)> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        registry.register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
        registry.register(&mut SourceFd(&udp.as_raw_fd()), UDP, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(registry, COMMANDS)?);
        let (tx, commands) = mpsc::channel();
        let driver = Self {
            busy: BusyPoll::new(busy_poll, Instant::now()),
            tunnel,
            tun,
            udp,
            poll,
            commands,
            identity,
            migration,
            bufs: Box::new(Buffers {
                tun_rx: TunRx::new(),
                tun_tx: TunTx::new(),
                udp_rx: UdpRx::new(),
                gso: GsoBatch::new(),
                scratch: vec![0; SEALED_MAX].into_boxed_slice(),
            }),
            io_drops: IoDrops::default(),
        };
        Ok((
            driver,
            DriverHandle {
                commands: tx,
                waker,
            },
        ))
    }

    /// Runs until a [`Command::Stop`] or a `down` request arrives, or every handle is gone.
    pub fn run(mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(8);
        let mut pending = Pending::default();
        loop {
            let timeout = if pending.tun || pending.udp {
                Some(std::time::Duration::ZERO)
            } else if self.busy.should_spin(Instant::now()) {
                std::thread::yield_now();
                Some(std::time::Duration::ZERO)
            } else {
                self.tunnel
                    .poll_timeout()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut commands = false;
            if !events.is_empty() {
                self.busy.on_activity(Instant::now());
            }
            for event in &events {
                match event.token() {
                    TUN => pending.tun = true,
                    UDP => pending.udp = true,
                    _ => commands = true,
                }
            }
            if pending.udp {
                pending.udp = self.on_udp()?;
            }
            if pending.tun {
                pending.tun = self.on_tun()?;
            }
            let now = Instant::now();
            if self.tunnel.poll_timeout().is_some_and(|at| at <= now) {
                self.tunnel.handle_timeout(now);
            }
            if commands && let Some(exit) = self.on_commands() {
                return Ok(exit);
            }
            self.flush(now);
            self.log_events();
        }
    }

    /// Answers what other threads queued; `Some` when the loop must end.
    fn on_commands(&mut self) -> Option<Exit> {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Control(request, answer)) => {
                    let down = request == Request::Down;
                    let _ = answer.send(self.on_request(request));
                    if down {
                        return Some(Exit::Down);
                    }
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    return Some(Exit::Signal);
                }
                Err(mpsc::TryRecvError::Empty) => return None,
            }
        }
    }

    /// Plaintext from the kernel: seal each packet into the GSO batch, send in bulk.
    /// Returns whether the device may hold more.
    fn on_tun(&mut self) -> io::Result<bool> {
        let Buffers { tun_rx, gso, .. } = &mut *self.bufs;
        let failed = &mut self.io_drops.udp_send;
        for _ in 0..READS_PER_WAKE {
            match self.tun.try_recv(tun_rx) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if read_error::is_fatal(&e) => {
                    let tun = Source::Tun(&self.identity.interface);
                    return Err(read_error::ended(tun, &e));
                }
                Err(e) => {
                    self.io_drops.tun_read += 1;
                    tracing::debug!("TUN read failed, skipped: {e}");
                    continue;
                }
            }
            let now = Instant::now();
            for packet in tun_rx.packets() {
                let out = gso.reserve(
                    &self.udp,
                    packet.len() + crate::noise::OVERHEAD + 16,
                    failed,
                );
                if let Outbound::Send(t) = self.tunnel.handle_outbound(now, packet, out) {
                    gso.push(&self.udp, t.to, t.len, failed);
                }
            }
            gso.flush(&self.udp, failed);
        }
        Ok(true)
    }

    /// Datagrams from the network: open each into the TUN batch, write in bulk. Returns
    /// whether the socket may hold more.
    fn on_udp(&mut self) -> io::Result<bool> {
        let Buffers { udp_rx, tun_tx, .. } = &mut *self.bufs;
        for _ in 0..READS_PER_WAKE {
            match self.udp.try_recv(udp_rx) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if read_error::is_fatal(&e) => {
                    let udp = Source::Udp(self.identity.listen_port);
                    return Err(read_error::ended(udp, &e));
                }
                // ICMP errors from an earlier send surface here too; they say nothing about
                // this socket.
                Err(e) => {
                    self.io_drops.udp_read += 1;
                    tracing::debug!("UDP read failed, skipped: {e}");
                    continue;
                }
            }
            let now = Instant::now();
            for (from, datagram) in udp_rx.datagrams() {
                if tun_tx.is_full() && self.tun.send(tun_tx).is_err() {
                    self.io_drops.tun_write += 1;
                }
                let out = tun_tx.slot(datagram.len().max(crate::wire::INITIATION_LEN));
                match self.tunnel.handle_datagram(now, from, datagram, out) {
                    Inbound::Deliver { len, .. } => tun_tx.commit(len),
                    Inbound::Send(t) => {
                        if self.udp.try_send(t.to, &out[..t.len], t.len).is_err() {
                            self.io_drops.udp_send += 1;
                        }
                    }
                    Inbound::Consumed | Inbound::Dropped(_) => {}
                }
            }
            if self.tun.send(tun_tx).is_err() {
                self.io_drops.tun_write += 1;
            }
            if udp_rx.drained() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends whatever the core queued: handshakes, keepalives, packets held during a handshake.
    fn flush(&mut self, now: Instant) {
        let scratch = &mut self.bufs.scratch;
        while let Some(t) = self.tunnel.poll_transmit(now, scratch) {
            if self.udp.try_send(t.to, &scratch[..t.len], t.len).is_err() {
                self.io_drops.udp_send += 1;
            }
        }
    }

    fn log_events(&mut self) {
        while let Some(event) = self.tunnel.poll_event() {
            let key = |peer: PeerId| {
                self.tunnel
                    .peers()
                    .nth(peer.0)
                    .map(|p| p.public_key.to_base64())
                    .unwrap_or_default()
            };
            match event {
                Event::HandshakeInitiated { peer, retransmit } => {
                    tracing::debug!(peer = %key(peer), retransmit, "handshake initiation sent");
                }
                Event::HandshakeComplete { peer, initiator } => {
                    tracing::info!(peer = %key(peer), initiator, "handshake complete");
                }
                Event::EndpointChanged { peer, old, new } => {
                    let old = old.map_or_else(|| "none".to_string(), |a| a.to_string());
                    tracing::info!(peer = %key(peer), %old, %new, "peer endpoint changed");
                }
                Event::HandshakeGaveUp {
                    peer,
                    dropped_packets,
                } => {
                    tracing::warn!(peer = %key(peer), dropped_packets, "no handshake answer for 90 s; giving up until new traffic");
                }
                Event::SessionExpired { peer } => {
                    tracing::info!(peer = %key(peer), "session expired (180 s without rekey); keys erased");
                }
                Event::CookieReceived { peer } => {
                    tracing::info!(peer = %key(peer), "peer is under load: retrying with its cookie");
                }
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Ok(Some(Box::new(self.status(Instant::now())))),
            Request::Down => Reply::Ok(None),
            Request::Cutover => match self.migration.as_mut() {
                Some(m) => match m.cutover_now() {
                    Ok(_) => Reply::Ok(Some(Box::new(self.status(Instant::now())))),
                    Err(e) => Reply::Error(format!("{e:#}")),
                },
                None => Reply::Error("no [migration] in the config: nothing to cut over".into()),
            },
            // The control socket serves them off this thread (`handover::VmRequests`).
            Request::Handover(_) | Request::HandBack(_) | Request::VifUp(_) => {
                Reply::Error("a VM request is not the data path's".into())
            }
        }
    }

    fn status(&self, now: Instant) -> Status {
        let peers = self
            .tunnel
            .peers()
            .zip(&self.identity.allowed_ips)
            .map(|(p, allowed)| PeerStatus {
                public_key: p.public_key.to_base64(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: allowed.clone(),
                last_handshake_secs: p
                    .last_handshake
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                drops: named(p.drops.iter()),
            })
            .collect();
        let mut drops = named(self.tunnel.drops().iter());
        drops.insert("udp_send_failed".into(), self.io_drops.udp_send);
        drops.insert("tun_write_failed".into(), self.io_drops.tun_write);
        drops.insert("tun_read_failed".into(), self.io_drops.tun_read);
        drops.insert("udp_read_failed".into(), self.io_drops.udp_read);
        let busy = self.busy.stats();
        Status {
            interface: self.identity.interface.clone(),
            public_key: self.identity.public_key.clone(),
            listen_port: self.identity.listen_port,
            peers,
            drops,
            busy_poll: BusyPollStatus {
                window_us: self.busy.window().as_micros() as u64,
                spun_ms: busy.spun.as_secs_f64() * 1e3,
                caught: busy.caught,
                over_budget: busy.over_budget,
            },
            migration: self.migration.as_ref().map(Migration::status),
            restore: self.identity.restore.as_ref().map(|r| r.get()),
        }
    }
}

fn named(counts: impl Iterator<Item = (crate::noise::DropReason, u64)>) -> BTreeMap<String, u64> {
    counts
        .map(|(reason, n)| (reason.name().to_string(), n))
        .collect()
}
