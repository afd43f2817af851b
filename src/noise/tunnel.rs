//! The `Tunnel`: all peers of one interface behind the sans-IO API the driver calls.
//! Owns dispatch by message type, the checks that come before any peer is known (mac1,
//! load and cookies, the per-source budget under load, the index table, the initiator's
//! static key) and the drops no peer can be blamed for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::keys::{PrivateKey, PublicKey};
use crate::wire::{
    CookieReply, HandshakeMessage, Initiation, InnerIp, MessageType, Response, Transport, WireError,
};

use super::allowed_ips::AllowedIps;
use super::cookie::{CookieChecker, LoadMonitor, UNDER_LOAD_HANDSHAKES_PER_SECOND};
use super::drops::{DropCounters, DropReason};
use super::endpoint::can_send_to;
use super::handshake::{ReceivedInitiation, drop_reason};
use super::index::IndexTable;
use super::peer::{Peer, Shared};
use super::ratelimit::RateLimiter;
use super::{
    Event, EventQueue, Inbound, MAX_MESSAGE, Outbound, PeerId, PeerStatus, Transmit, TunnelConfig,
};

/// All peers of one interface: the protocol state machine the driver feeds.
pub struct Tunnel {
    private_key: PrivateKey,
    public_key: PublicKey,
    peers: Vec<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    routes: AllowedIps,
    indices: IndexTable,
    checker: CookieChecker,
    load: LoadMonitor,
    limiter: RateLimiter,
    /// `now` and the wall clock at construction: TAI64N stamps are derived from both so
    /// the core never reads a clock.
    anchor: (Instant, SystemTime),
    events: EventQueue,
    drops: DropCounters,
    /// Where the next `poll_transmit` starts, so no peer starves the others.
    cursor: usize,
    max_padded: usize,
}

impl Tunnel {
    /// Sets up the peers and the routing table. `wall_clock` is the real time at `now`;
    /// it only anchors handshake timestamps (wall = wall_clock + (now' - now)). A public
    /// key listed twice keeps its last entry for incoming handshakes.
    pub fn new(config: TunnelConfig, now: Instant, wall_clock: SystemTime) -> Self {
        let public_key = config.private_key.public_key();
        let mut routes = AllowedIps::new();
        let mut by_key = HashMap::new();
        let mut peers = Vec::with_capacity(config.peers.len());
        for (i, peer) in config.peers.iter().enumerate() {
            let id = PeerId(i);
            for net in &peer.allowed_ips {
                routes.insert(*net, id);
            }
            by_key.insert(peer.public_key, id);
            peers.push(Peer::new(id, peer, now));
        }
        Self {
            checker: CookieChecker::new(&public_key),
            private_key: config.private_key,
            public_key,
            peers,
            by_key,
            routes,
            indices: IndexTable::default(),
            load: LoadMonitor::new(UNDER_LOAD_HANDSHAKES_PER_SECOND),
            limiter: RateLimiter::default(),
            anchor: (now, wall_clock),
            events: EventQueue::default(),
            drops: DropCounters::default(),
            cursor: 0,
            max_padded: MAX_MESSAGE,
        }
    }

    /// Our public key, for status output.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Caps padding at the interface MTU, as WireGuard does, so a full-size packet never
    /// grows past the MTU the driver planned the outer packet for. Default: no cap
    /// beyond [`MAX_MESSAGE`].
    pub fn set_mtu(&mut self, mtu: usize) {
        self.max_padded = mtu;
    }

    /// Changes the session age at which the initiator's sending starts a new handshake
    /// (default [`super::REKEY_AFTER_TIME`], 120 s), for tests that must see rekeys within
    /// seconds; `vmtun up` changes it only under `VMTUN_TEST_REKEY_AFTER_SECS`. The other
    /// limits (reject after 180 s, rekey on receive at 165 s) stay.
    pub fn set_rekey_after_time(&mut self, after: Duration) {
        for peer in &mut self.peers {
            peer.set_rekey_after_time(after);
        }
    }

    /// Changes how many handshake messages per second count as load (default
    /// [`UNDER_LOAD_HANDSHAKES_PER_SECOND`]); 0 forces the cookie path, for tests.
    pub fn set_under_load_threshold(&mut self, handshakes_per_second: u32) {
        self.load.set_threshold(handshakes_per_second);
    }

    fn drop_global(&mut self, reason: DropReason) -> DropReason {
        self.drops.add(reason, 1);
        reason
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0)
    }

    /// A plaintext IP packet read from TUN. Picks the peer by destination (longest
    /// prefix of the allowed IPs) and encrypts into `out`, or queues it while a
    /// handshake runs. Size `out` as `packet.len() + OVERHEAD + 15`.
    pub fn handle_outbound(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Outbound {
        if packet.len() > MAX_MESSAGE {
            return Outbound::Dropped(self.drop_global(DropReason::TooLarge));
        }
        let Ok(ip) = InnerIp::parse(packet) else {
            return Outbound::Dropped(self.drop_global(DropReason::NotIp));
        };
        let Some(peer) = self
            .routes
            .lookup(ip.dst)
            .and_then(|id| self.peers.get_mut(id.0))
        else {
            return Outbound::Dropped(self.drop_global(DropReason::NoRoute));
        };
        peer.handle_outbound(now, packet, self.max_padded, out)
    }

    /// A UDP datagram received from `from`; one from a source nothing can be sent to is
    /// dropped first ([`can_send_to`]). Answers (handshake responses, cookie replies)
    /// and decrypted packets are written into `out`, which must hold
    /// `datagram.len()` bytes and at least 148.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Inbound {
        if datagram.len() > MAX_MESSAGE {
            return Inbound::Dropped(self.drop_global(DropReason::Malformed));
        }
        if !can_send_to(from) {
            return Inbound::Dropped(self.drop_global(DropReason::UnusableSource));
        }
        match MessageType::of(datagram) {
            Ok(MessageType::Initiation) => self.handle_initiation(now, from, datagram, out),
            Ok(MessageType::Response) => self.handle_response(now, from, datagram, out),
            Ok(MessageType::CookieReply) => self.handle_cookie_reply(now, datagram),
            Ok(MessageType::Transport) => self.handle_transport(now, from, datagram, out),
            Err(WireError::UnknownType(_)) => {
                Inbound::Dropped(self.drop_global(DropReason::UnknownType))
            }
            Err(_) => Inbound::Dropped(self.drop_global(DropReason::Malformed)),
        }
    }

    /// The checks every handshake message passes before any DH: mac1, then under load
    /// mac2 and the source's budget. `Err` carries what to return (a drop, or a cookie reply to send).
    fn screen_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &impl HandshakeMessage,
        out: &mut [u8],
    ) -> Result<(), Inbound> {
        if !self.checker.check_mac1(msg) {
            return Err(Inbound::Dropped(self.drop_global(DropReason::BadMac)));
        }
        if !self.load.handshake_received(now) {
            return Ok(());
        }
        if !self.checker.check_mac2(now, from, msg) {
            let reason = self.drop_global(DropReason::UnderLoad);
            return Err(match self.checker.write_reply(now, from, msg, out) {
                Some(len) => Inbound::Send(Transmit { to: from, len }),
                None => Inbound::Dropped(reason),
            });
        }
        if !self.limiter.allow(now, from.ip()) {
            return Err(Inbound::Dropped(self.drop_global(DropReason::RateLimited)));
        }
        Ok(())
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Inbound {
        let Ok(msg) = Initiation::new_checked(datagram) else {
            return Inbound::Dropped(self.drop_global(DropReason::Malformed));
        };
        if let Err(answer) = self.screen_handshake(now, from, &msg, out) {
            return answer;
        }
        let received = match ReceivedInitiation::read(&self.private_key, &msg) {
            Ok(received) => received,
            Err(e) => return Inbound::Dropped(self.drop_global(drop_reason(e))),
        };
        let Some(&id) = self.by_key.get(&received.remote) else {
            return Inbound::Dropped(self.drop_global(DropReason::UnknownPeer));
        };
        let Some(peer) = self.peers.get_mut(id.0) else {
            return Inbound::Dropped(self.drop_global(DropReason::UnknownPeer));
        };
        let shared = Shared {
            indices: &mut self.indices,
            events: &mut self.events,
        };
        peer.handle_initiation(now, from, received, shared, out)
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Inbound {
        let Ok(msg) = Response::new_checked(datagram) else {
            return Inbound::Dropped(self.drop_global(DropReason::Malformed));
        };
        if let Err(answer) = self.screen_handshake(now, from, &msg, out) {
            return answer;
        }
        let Some(peer) = self
            .indices
            .get(msg.receiver_index())
            .and_then(|id| self.peers.get_mut(id.0))
        else {
            return Inbound::Dropped(self.drop_global(DropReason::UnknownIndex));
        };
        let shared = Shared {
            indices: &mut self.indices,
            events: &mut self.events,
        };
        peer.handle_response(now, from, &msg, shared)
    }

    fn handle_cookie_reply(&mut self, now: Instant, datagram: &[u8]) -> Inbound {
        let Ok(msg) = CookieReply::new_checked(datagram) else {
            return Inbound::Dropped(self.drop_global(DropReason::Malformed));
        };
        let Some(peer) = self
            .indices
            .get(msg.receiver_index())
            .and_then(|id| self.peers.get_mut(id.0))
        else {
            return Inbound::Dropped(self.drop_global(DropReason::UnknownIndex));
        };
        peer.handle_cookie_reply(now, &msg, &mut self.events)
    }

    fn handle_transport(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Inbound {
        let Ok(msg) = Transport::new_checked(datagram) else {
            return Inbound::Dropped(self.drop_global(DropReason::Malformed));
        };
        let Some(peer) = self
            .indices
            .get(msg.receiver_index())
            .and_then(|id| self.peers.get_mut(id.0))
        else {
            return Inbound::Dropped(self.drop_global(DropReason::UnknownIndex));
        };
        let shared = Shared {
            indices: &mut self.indices,
            events: &mut self.events,
        };
        peer.handle_transport(now, from, &msg, &self.routes, shared, out)
    }

    /// Datagrams the core wants sent that answer nothing: initiations, retransmissions,
    /// keepalives, packets queued during a handshake. Call until `None` after every
    /// `handle_*` call. `out` must hold a full packet plus overhead (see
    /// [`super::MAX_MESSAGE`]).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        let count = self.peers.len();
        let wall = self.wall(now);
        for step in 0..count {
            let i = (self.cursor + step) % count;
            let Some(peer) = self.peers.get_mut(i) else {
                continue;
            };
            let shared = Shared {
                indices: &mut self.indices,
                events: &mut self.events,
            };
            if let Some(transmit) =
                peer.poll_transmit(now, wall, &self.private_key, self.max_padded, shared, out)
            {
                self.cursor = (i + 1) % count;
                return Some(transmit);
            }
        }
        None
    }

    /// Fires the deadlines that have passed (retransmit, give up, keepalives, rekey,
    /// session expiry). Call when `now` reaches [`Tunnel::poll_timeout`], then drain
    /// `poll_transmit`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in &mut self.peers {
            let shared = Shared {
                indices: &mut self.indices,
                events: &mut self.events,
            };
            peer.handle_timeout(now, shared);
        }
    }

    /// The earliest deadline of any peer; `None` when nothing is scheduled. A deadline at
    /// or before `now` means: call `handle_timeout` and `poll_transmit` at once.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.iter().filter_map(Peer::next_deadline).min()
    }

    /// The next event worth a log line; call until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// Every peer's state, in config order.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.iter().map(Peer::status)
    }

    /// Drops no peer can be blamed for (garbage, bad mac1, unknown index or key, load).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Test access to one peer.
    #[cfg(test)]
    pub(crate) fn peer_mut(&mut self, id: PeerId) -> &mut Peer {
        &mut self.peers[id.0]
    }

    /// Live indices (tests check nothing leaks).
    #[cfg(test)]
    pub(crate) fn live_indices(&self) -> usize {
        self.indices.len()
    }
}
