//! The event loop: the only place where the protocol core meets I/O. It moves packets
//! between the TUN device, the UDP socket and [`Tunnel`], fires the core's timers, and
//! answers control requests. One thread, no locks: both directions and the timers share
//! one `&mut Tunnel`. Packets move in batches (one system call for dozens of packets each
//! way, see `tun` and `udp`); buffers are allocated once, and the per-packet path
//! allocates nothing.

use std::collections::BTreeMap;
use std::io;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::control::{PeerStatus, Reply, Request, Status};
use crate::migration::Migration;
use crate::noise::{Event, Inbound, Outbound, PeerId, Tunnel};
use crate::tun::{Tun, TunRx, TunTx};
use crate::udp::{GsoBatch, Udp, UdpRx};

/// Largest datagram or packet the loop handles: IP's limit.
const MAX_PACKET: usize = 65535;
/// Room for the largest packet sealed: header, tag and padding to 16.
const SEALED_MAX: usize = MAX_PACKET + crate::noise::OVERHEAD + 16;
/// Reads per readiness event before the loop looks at the other side again, so that one
/// busy direction cannot starve the other or the timers.
const READS_PER_WAKE: usize = 8;

/// A control request waiting for the event loop, with where to send the answer.
pub type ControlRequest = (Request, oneshot::Sender<Reply>);

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
}

/// Counters of local I/O trouble that are not the core's business.
#[derive(Default)]
struct IoDrops {
    udp_send: u64,
    tun_write: u64,
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
    requests: mpsc::Receiver<ControlRequest>,
    identity: Identity,
    migration: Option<Migration>,
    bufs: Box<Buffers>,
    io_drops: IoDrops,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGINT or SIGTERM.
    Signal,
    /// `vmtun down`.
    Down,
}

impl Driver {
    /// Assembles a driver; nothing runs until [`Driver::run`].
    pub fn new(
        tunnel: Tunnel,
        tun: Tun,
        udp: Udp,
        requests: mpsc::Receiver<ControlRequest>,
        identity: Identity,
        migration: Option<Migration>,
    ) -> Self {
        Self {
            tunnel,
            tun,
            udp,
            requests,
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
        }
    }

    /// Runs until `stop` completes or a `down` request arrives.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> io::Result<Exit> {
        tokio::pin!(stop);
        loop {
            let deadline = self.tunnel.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return Ok(Exit::Signal),
                r = self.tun.readable() => { r?; self.on_tun()?; }
                r = self.udp.readable() => { r?; self.on_udp().await?; }
                _ = sleep => self.tunnel.handle_timeout(Instant::now()),
                Some((request, answer)) = self.requests.recv() => {
                    let reply = self.on_request(request);
                    let _ = answer.send(reply);
                    if request == Request::Down {
                        return Ok(Exit::Down);
                    }
                }
            }
            self.flush(Instant::now());
            self.log_events();
        }
    }

    /// Plaintext from the kernel: seal each packet into the GSO batch, send in bulk.
    fn on_tun(&mut self) -> io::Result<()> {
        let Buffers { tun_rx, gso, .. } = &mut *self.bufs;
        let failed = &mut self.io_drops.udp_send;
        for _ in 0..READS_PER_WAKE {
            match self.tun.try_recv(tun_rx) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
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
        Ok(())
    }

    /// Datagrams from the network: open each into the TUN batch, write in bulk.
    async fn on_udp(&mut self) -> io::Result<()> {
        let Buffers { udp_rx, tun_tx, .. } = &mut *self.bufs;
        for _ in 0..READS_PER_WAKE {
            match self.udp.try_recv(udp_rx) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from an earlier send surface here; they say nothing about this socket.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for (from, datagram) in udp_rx.datagrams() {
                if tun_tx.is_full() && self.tun.send(tun_tx).await.is_err() {
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
            if self.tun.send(tun_tx).await.is_err() {
                self.io_drops.tun_write += 1;
            }
        }
        Ok(())
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
        Status {
            interface: self.identity.interface.clone(),
            public_key: self.identity.public_key.clone(),
            listen_port: self.identity.listen_port,
            peers,
            drops,
            migration: self.migration.as_ref().map(Migration::status),
        }
    }
}

fn named(counts: impl Iterator<Item = (crate::noise::DropReason, u64)>) -> BTreeMap<String, u64> {
    counts
        .map(|(reason, n)| (reason.name().to_string(), n))
        .collect()
}
