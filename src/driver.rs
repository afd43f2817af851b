//! The event loop: the only place where the protocol core meets I/O. It moves packets
//! between the TUN device, the UDP socket and [`Tunnel`], fires the core's timers, and
//! answers control requests. One thread, no locks: both directions and the timers share
//! one `&mut Tunnel`. Buffers are allocated once; the per-packet path allocates nothing.

use std::collections::BTreeMap;
use std::io;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::control::{PeerStatus, Reply, Request, Status};
use crate::migration::Migration;
use crate::noise::{Event, Inbound, Outbound, PeerId, Transmit, Tunnel};
use crate::tun::Tun;

/// Largest IP packet the TUN device can hand us (its MTU is far below; this is IP's limit).
const MAX_PACKET: usize = 65535;
/// Room for the largest packet sealed: header, tag and padding to 16.
const BUF_LEN: usize = MAX_PACKET + crate::noise::OVERHEAD + 16;
/// Packets moved per readiness event before the loop looks at the other side again, so
/// that one busy direction cannot starve the other or the timers.
const BATCH: usize = 64;

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

/// The running tunnel: owns the device, the socket, the core and the scratch buffers.
pub struct Driver {
    tunnel: Tunnel,
    tun: Tun,
    udp: UdpSocket,
    requests: mpsc::Receiver<ControlRequest>,
    identity: Identity,
    migration: Option<Migration>,
    packet: Box<[u8]>,
    sealed: Box<[u8]>,
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
        udp: UdpSocket,
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
            packet: vec![0; BUF_LEN].into_boxed_slice(),
            sealed: vec![0; BUF_LEN].into_boxed_slice(),
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
                r = self.udp.readable() => { r?; self.on_udp()?; }
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

    fn on_tun(&mut self) -> io::Result<()> {
        for _ in 0..BATCH {
            let n = match self.tun.try_recv(&mut self.packet) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if let Outbound::Send(t) =
                self.tunnel
                    .handle_outbound(now, &self.packet[..n], &mut self.sealed)
            {
                send(&self.udp, &self.sealed, t, &mut self.io_drops);
            }
        }
        Ok(())
    }

    fn on_udp(&mut self) -> io::Result<()> {
        for _ in 0..BATCH {
            let (n, from) = match self.udp.try_recv_from(&mut self.packet) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from an earlier send surface here; they say nothing about this socket.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            match self
                .tunnel
                .handle_datagram(now, from, &self.packet[..n], &mut self.sealed)
            {
                Inbound::Deliver { len, .. } => {
                    if self.tun.send(&self.sealed[..len]).is_err() {
                        self.io_drops.tun_write += 1;
                    }
                }
                Inbound::Send(t) => send(&self.udp, &self.sealed, t, &mut self.io_drops),
                Inbound::Consumed | Inbound::Dropped(_) => {}
            }
        }
        Ok(())
    }

    /// Sends whatever the core queued: handshakes, keepalives, packets held during a handshake.
    fn flush(&mut self, now: Instant) {
        while let Some(t) = self.tunnel.poll_transmit(now, &mut self.sealed) {
            send(&self.udp, &self.sealed, t, &mut self.io_drops);
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

fn send(udp: &UdpSocket, buf: &[u8], t: Transmit, drops: &mut IoDrops) {
    if udp.try_send_to(&buf[..t.len], t.to).is_err() {
        drops.udp_send += 1;
    }
}
