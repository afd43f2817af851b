//! Everything the core knows about one peer: its sessions (previous, current, next as in
//! the whitepaper 6.1 and wireguard-go's keypairs), the handshake it is running, its
//! timers, its pre-session queue, endpoint and counters. Owns the per-peer decisions: which
//! session sends, when to start, retransmit or give up on a handshake, when a keepalive is
//! owed. The `Tunnel` owns what peers share (index table, events, routes).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use crate::keys::{KEY_LEN, PrivateKey, PublicKey};
use crate::wire::{INITIATION_LEN, Initiation, InnerIp, RESPONSE_LEN, Response, Transport};

use super::allowed_ips::AllowedIps;
use super::cookie::CookieJar;
use super::drops::{DropCounters, DropReason};
use super::handshake::{InitiatorHandshake, ReceivedInitiation, drop_reason};
use super::index::IndexTable;
use super::session::{Session, SessionError};
use super::tai64n::Tai64N;
use super::timers::{
    MIN_INITIATION_INTERVAL, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT, Timers, retransmit_delay,
};
use super::{
    Event, EventQueue, Inbound, MAX_QUEUED, Outbound, PeerConfig, PeerId, PeerStatus, Transmit,
};

/// Which of a peer's sessions a transport message named.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

/// What a peer shares with the rest of the tunnel while handling one input.
pub struct Shared<'a> {
    /// Our session indices.
    pub indices: &'a mut IndexTable,
    /// Events for the driver's log.
    pub events: &'a mut EventQueue,
}

/// One configured peer.
pub struct Peer {
    id: PeerId,
    public_key: PublicKey,
    psk: Zeroizing<[u8; KEY_LEN]>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<Duration>,
    /// Age of a session we initiated at which sending on it starts a new handshake.
    rekey_after_time: Duration,
    /// The session we send on.
    current: Option<Session>,
    /// The session before it, still accepted for packets in flight.
    previous: Option<Session>,
    /// A session we responded to, unused for sending until the initiator's first
    /// transport message confirms it.
    next: Option<Session>,
    handshake: Option<InitiatorHandshake>,
    /// When the current attempt to get a session started; `Some` means one is running.
    attempt_started: Option<Instant>,
    attempts: u32,
    last_initiation_sent: Option<Instant>,
    last_timestamp_sent: Option<Tai64N>,
    last_timestamp_received: Option<Tai64N>,
    last_initiation_accepted: Option<Instant>,
    cookies: CookieJar,
    queue: VecDeque<Vec<u8>>,
    timers: Timers,
    want_keepalive: bool,
    last_handshake: Option<Instant>,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    drops: DropCounters,
}

impl Peer {
    /// A peer from its configuration. With a persistent keepalive and a known endpoint, a
    /// keepalive (and so a handshake) is due at once, as `wg` does on interface up.
    pub fn new(id: PeerId, config: &PeerConfig, now: Instant) -> Self {
        let mut timers = Timers::default();
        if config.persistent_keepalive.is_some() && config.endpoint.is_some() {
            timers.persistent = Some(now);
        }
        Self {
            id,
            public_key: config.public_key,
            psk: config
                .preshared_key
                .as_ref()
                .map_or(Zeroizing::new([0; KEY_LEN]), |k| {
                    Zeroizing::new(*k.as_bytes())
                }),
            endpoint: config.endpoint,
            persistent_keepalive: config.persistent_keepalive.filter(|d| !d.is_zero()),
            rekey_after_time: REKEY_AFTER_TIME,
            current: None,
            previous: None,
            next: None,
            handshake: None,
            attempt_started: None,
            attempts: 0,
            last_initiation_sent: None,
            last_timestamp_sent: None,
            last_timestamp_received: None,
            last_initiation_accepted: None,
            cookies: CookieJar::new(&config.public_key),
            queue: VecDeque::new(),
            timers,
            want_keepalive: false,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            drops: DropCounters::default(),
        }
    }

    /// A snapshot for status output.
    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            id: self.id,
            public_key: self.public_key,
            endpoint: self.endpoint,
            last_handshake: self.last_handshake,
            has_session: self.current.is_some(),
            queued: self.queue.len(),
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            rx_packets: self.rx_packets,
            tx_packets: self.tx_packets,
            drops: self.drops.clone(),
        }
    }

    /// The earliest moment this peer has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiries = [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.created + REJECT_AFTER_TIME);
        expiries.chain(self.timers.next_deadline()).min()
    }

    fn drop_packet(&mut self, reason: DropReason) -> DropReason {
        self.drops.add(reason, 1);
        reason
    }

    fn sendable(&self, now: Instant) -> bool {
        self.endpoint.is_some() && self.current.as_ref().is_some_and(|s| s.can_send(now))
    }

    /// Starts an attempt to get a session unless one is running. The first initiation
    /// waits until [`REKEY_TIMEOUT`] after the previous one: peers drop initiations that
    /// come faster.
    fn start_handshake(&mut self, now: Instant) {
        if self.attempt_started.is_some() || self.endpoint.is_none() {
            return;
        }
        self.attempt_started = Some(now);
        self.attempts = 0;
        let earliest = self.last_initiation_sent.map_or(now, |t| t + REKEY_TIMEOUT);
        self.timers.initiation_due = Some(earliest.max(now));
    }

    /// Any authenticated packet went out.
    fn sent(&mut self, now: Instant, bytes: usize, data: bool) {
        self.tx_bytes = self.tx_bytes.saturating_add(bytes as u64);
        if data {
            self.tx_packets = self.tx_packets.saturating_add(1);
            self.timers.data_sent(now);
        }
        self.timers
            .authenticated_sent(now, self.persistent_keepalive);
    }

    /// Any authenticated packet came in from `from`: it becomes the endpoint (roaming).
    /// The `Tunnel` dropped every source nothing can be sent to before.
    fn received(&mut self, now: Instant, from: SocketAddr, bytes: usize, events: &mut EventQueue) {
        self.rx_bytes = self.rx_bytes.saturating_add(bytes as u64);
        self.timers
            .authenticated_received(now, self.persistent_keepalive);
        if self.endpoint != Some(from) {
            events.push(Event::EndpointChanged {
                peer: self.id,
                old: self.endpoint,
                new: from,
            });
            self.endpoint = Some(from);
        }
    }

    /// Encrypts on the current session. `Err(None)` means no usable session.
    fn encrypt(
        &mut self,
        now: Instant,
        packet: &[u8],
        max_padded: usize,
        out: &mut [u8],
    ) -> Result<Transmit, Option<DropReason>> {
        let (Some(to), Some(session)) = (self.endpoint, self.current.as_mut()) else {
            return Err(None);
        };
        let len = match session.encrypt(now, packet, max_padded, out) {
            Ok(len) => len,
            Err(SessionError::BufferTooSmall) => return Err(Some(DropReason::BufferTooSmall)),
            Err(_) => return Err(None),
        };
        let rekey = session.wants_rekey_on_send(now, self.rekey_after_time);
        self.sent(now, len, !packet.is_empty());
        if rekey {
            self.start_handshake(now);
        }
        Ok(Transmit { to, len })
    }

    /// Sets the session age at which sending starts a new handshake (see
    /// [`super::Tunnel::set_rekey_after_time`]).
    pub fn set_rekey_after_time(&mut self, after: Duration) {
        self.rekey_after_time = after;
    }

    /// A packet from TUN routed to this peer: send it, or queue it and start a handshake.
    pub fn handle_outbound(
        &mut self,
        now: Instant,
        packet: &[u8],
        max_padded: usize,
        out: &mut [u8],
    ) -> Outbound {
        match self.encrypt(now, packet, max_padded, out) {
            Ok(transmit) => return Outbound::Send(transmit),
            Err(Some(reason)) => return Outbound::Dropped(self.drop_packet(reason)),
            Err(None) => {}
        }
        if self.endpoint.is_none() {
            return Outbound::Dropped(self.drop_packet(DropReason::NoEndpoint));
        }
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            self.drop_packet(DropReason::QueueFull);
        }
        self.queue.push_back(packet.to_vec());
        self.start_handshake(now);
        Outbound::Queued
    }

    /// What this peer wants sent now: an initiation, a queued packet, or a keepalive.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        wall: SystemTime,
        local: &PrivateKey,
        max_padded: usize,
        shared: Shared<'_>,
        out: &mut [u8],
    ) -> Option<Transmit> {
        if self.want_keepalive && !self.sendable(now) {
            // A keepalive without a session means: get a session.
            self.want_keepalive = false;
            self.start_handshake(now);
        }
        if self.timers.initiation_due.is_some_and(|due| due <= now) {
            self.timers.initiation_due = None;
            if let Some(transmit) = self.write_initiation(now, wall, local, shared, out) {
                return Some(transmit);
            }
        }
        while self.sendable(now) {
            let Some(packet) = self.queue.pop_front() else {
                break;
            };
            match self.encrypt(now, &packet, max_padded, out) {
                Ok(transmit) => return Some(transmit),
                Err(Some(reason)) => {
                    self.drop_packet(reason);
                }
                Err(None) => {
                    self.queue.push_front(packet);
                    break;
                }
            }
        }
        if self.want_keepalive {
            self.want_keepalive = false;
            if let Ok(transmit) = self.encrypt(now, &[], max_padded, out) {
                return Some(transmit);
            }
        }
        None
    }

    fn write_initiation(
        &mut self,
        now: Instant,
        wall: SystemTime,
        local: &PrivateKey,
        shared: Shared<'_>,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let Some(to) = self.endpoint else {
            self.attempt_started = None;
            return None;
        };
        let Some(buf) = out.get_mut(..INITIATION_LEN) else {
            // Retry on the retransmit schedule (or give up) rather than spin.
            self.drop_packet(DropReason::BufferTooSmall);
            self.schedule_retransmit(now);
            return None;
        };
        if let Some(old) = self.handshake.take() {
            shared.indices.release(old.local_index);
        }
        let index = shared.indices.allocate(self.id);
        let mut stamp = Tai64N::from_system_time(wall);
        if let Some(last) = self.last_timestamp_sent.filter(|last| stamp <= *last) {
            stamp = last.successor();
        }
        let mut msg = Initiation::new_unchecked(buf);
        let Ok(handshake) =
            InitiatorHandshake::start(local, &self.public_key, &self.psk, index, stamp, &mut msg)
        else {
            shared.indices.release(index);
            self.schedule_retransmit(now);
            return None;
        };
        self.cookies.seal(now, &mut msg);
        self.handshake = Some(handshake);
        self.last_timestamp_sent = Some(stamp);
        self.last_initiation_sent = Some(now);
        let retransmit = self.attempts > 0;
        self.attempts = self.attempts.saturating_add(1);
        self.schedule_retransmit(now);
        self.sent(now, INITIATION_LEN, false);
        shared.events.push(Event::HandshakeInitiated {
            peer: self.id,
            retransmit,
        });
        Some(Transmit {
            to,
            len: INITIATION_LEN,
        })
    }

    /// Arms the retransmission 5 s + jitter from now, but never past the end of the
    /// attempt, so the give-up comes exactly [`REKEY_ATTEMPT_TIME`] after it started.
    fn schedule_retransmit(&mut self, now: Instant) {
        let give_up_at = self.attempt_started.unwrap_or(now) + REKEY_ATTEMPT_TIME;
        self.timers.retransmit = Some((now + retransmit_delay()).min(give_up_at));
    }

    /// Fires every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant, shared: Shared<'_>) {
        self.expire_sessions(now, shared.indices, shared.events);
        if self.timers.retransmit.is_some_and(|t| t <= now) {
            self.timers.retransmit = None;
            let gave_up = self
                .attempt_started
                .is_none_or(|start| now >= start + REKEY_ATTEMPT_TIME);
            if gave_up {
                self.give_up(shared.indices, shared.events);
            } else {
                self.timers.initiation_due = Some(now);
            }
        }
        if self.timers.new_handshake.is_some_and(|t| t <= now) {
            // Data went out 15 s ago and nothing came back: the session may be dead.
            self.timers.new_handshake = None;
            self.start_handshake(now);
        }
        if self.timers.keepalive.is_some_and(|t| t <= now) {
            self.timers.keepalive = None;
            self.want_keepalive = true;
        }
        if self.timers.persistent.is_some_and(|t| t <= now) {
            self.timers.persistent = None;
            self.want_keepalive = true;
        }
    }

    fn expire_sessions(&mut self, now: Instant, indices: &mut IndexTable, events: &mut EventQueue) {
        for slot in [Slot::Current, Slot::Previous, Slot::Next] {
            let session = self.slot_mut(slot);
            if session.as_ref().is_some_and(|s| s.expired(now)) {
                if let Some(old) = session.take() {
                    indices.release(old.local_index);
                }
                if slot == Slot::Current {
                    events.push(Event::SessionExpired { peer: self.id });
                }
            }
        }
    }

    /// The handshake was tried for [`REKEY_ATTEMPT_TIME`]: drop it and what waited for it.
    fn give_up(&mut self, indices: &mut IndexTable, events: &mut EventQueue) {
        if let Some(old) = self.handshake.take() {
            indices.release(old.local_index);
        }
        self.attempt_started = None;
        self.attempts = 0;
        self.timers.initiation_due = None;
        self.timers.new_handshake = None;
        self.timers.keepalive = None;
        self.want_keepalive = false;
        let dropped = self.queue.len();
        self.queue.clear();
        self.drops.add(DropReason::HandshakeTimeout, dropped as u64);
        events.push(Event::HandshakeGaveUp {
            peer: self.id,
            dropped_packets: dropped,
        });
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<Session> {
        match slot {
            Slot::Current => &mut self.current,
            Slot::Previous => &mut self.previous,
            Slot::Next => &mut self.next,
        }
    }

    fn handshake_complete(&mut self, now: Instant, initiator: bool, shared: Shared<'_>) {
        if let Some(pending) = self.handshake.take() {
            shared.indices.release(pending.local_index);
        }
        self.attempt_started = None;
        self.attempts = 0;
        self.timers.handshake_complete();
        self.last_handshake = Some(now);
        shared.events.push(Event::HandshakeComplete {
            peer: self.id,
            initiator,
        });
    }

    /// An authenticated initiation from this peer (mac1 checked, static key decrypted).
    pub fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        received: ReceivedInitiation,
        shared: Shared<'_>,
        out: &mut [u8],
    ) -> Inbound {
        if self
            .last_timestamp_received
            .is_some_and(|last| received.timestamp <= last)
        {
            return Inbound::Dropped(self.drop_packet(DropReason::StaleTimestamp));
        }
        let too_soon = self
            .last_initiation_accepted
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INITIATION_INTERVAL);
        if too_soon {
            return Inbound::Dropped(self.drop_packet(DropReason::TooFrequent));
        }
        let Some(buf) = out.get_mut(..RESPONSE_LEN) else {
            return Inbound::Dropped(self.drop_packet(DropReason::BufferTooSmall));
        };
        let index = shared.indices.allocate(self.id);
        let timestamp = received.timestamp;
        let remote_index = received.sender_index;
        let mut msg = Response::new_unchecked(buf);
        let keys = match received.respond(&self.psk, index, &mut msg) {
            Ok(keys) => keys,
            Err(_) => {
                shared.indices.release(index);
                return Inbound::Dropped(self.drop_packet(DropReason::DecryptFailed));
            }
        };
        self.cookies.seal(now, &mut msg);
        self.last_timestamp_received = Some(timestamp);
        self.last_initiation_accepted = Some(now);
        let session = Session::new(&keys, index, remote_index, false, now);
        if let Some(old) = self.next.replace(session) {
            shared.indices.release(old.local_index);
        }
        self.received(now, from, INITIATION_LEN, shared.events);
        self.sent(now, RESPONSE_LEN, false);
        Inbound::Send(Transmit {
            to: from,
            len: RESPONSE_LEN,
        })
    }

    /// A response naming one of our indices (mac1 checked).
    pub fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &Response<&[u8]>,
        shared: Shared<'_>,
    ) -> Inbound {
        let Some(handshake) = self
            .handshake
            .as_mut()
            .filter(|h| h.local_index == msg.receiver_index())
        else {
            return Inbound::Dropped(self.drop_packet(DropReason::UnknownIndex));
        };
        let keys = match handshake.finish(msg) {
            Ok(keys) => keys,
            Err(e) => return Inbound::Dropped(self.drop_packet(drop_reason(e))),
        };
        let local_index = handshake.local_index;
        use crate::wire::HandshakeMessage as _;
        let session = Session::new(&keys, local_index, msg.sender_index(), true, now);
        // The handshake's index now belongs to the session: do not release it.
        self.handshake = None;
        if let Some(old) = self.previous.take() {
            shared.indices.release(old.local_index);
        }
        self.previous = self.current.replace(session);
        self.received(now, from, RESPONSE_LEN, shared.events);
        self.handshake_complete(now, true, shared);
        if self.queue.is_empty() {
            // Confirm the session to the responder at once (it cannot send before).
            self.want_keepalive = true;
        }
        Inbound::Consumed
    }

    /// A cookie reply naming one of our indices.
    pub fn handle_cookie_reply(
        &mut self,
        now: Instant,
        msg: &crate::wire::CookieReply<&[u8]>,
        events: &mut EventQueue,
    ) -> Inbound {
        let index = msg.receiver_index();
        let ours = self
            .handshake
            .as_ref()
            .is_some_and(|h| h.local_index == index)
            || self.next.as_ref().is_some_and(|s| s.local_index == index);
        if !ours {
            return Inbound::Dropped(self.drop_packet(DropReason::UnknownIndex));
        }
        if self.cookies.handle_reply(now, msg).is_err() {
            return Inbound::Dropped(self.drop_packet(DropReason::DecryptFailed));
        }
        events.push(Event::CookieReceived { peer: self.id });
        Inbound::Consumed
    }

    /// A transport message naming one of our indices.
    pub fn handle_transport(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &Transport<&[u8]>,
        routes: &AllowedIps,
        shared: Shared<'_>,
        out: &mut [u8],
    ) -> Inbound {
        let index = msg.receiver_index();
        let named = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == index);
        let slot = if named(&self.current) {
            Slot::Current
        } else if named(&self.previous) {
            Slot::Previous
        } else if named(&self.next) {
            Slot::Next
        } else {
            return Inbound::Dropped(self.drop_packet(DropReason::UnknownIndex));
        };
        let Some(session) = self.slot_mut(slot).as_mut() else {
            return Inbound::Dropped(self.drop_packet(DropReason::UnknownIndex));
        };
        let len = match session.decrypt(now, msg, out) {
            Ok(len) => len,
            Err(e) => {
                let reason = match e {
                    SessionError::Replay => DropReason::Replay,
                    SessionError::Decrypt => DropReason::DecryptFailed,
                    SessionError::Expired => DropReason::Expired,
                    SessionError::BufferTooSmall => DropReason::BufferTooSmall,
                };
                return Inbound::Dropped(self.drop_packet(reason));
            }
        };
        let rekey = slot == Slot::Current && session.wants_rekey_on_receive(now);
        if rekey {
            session.rekey_requested = true;
        }
        let datagram_len = msg.payload().len() + crate::wire::TRANSPORT_HEADER_LEN;
        self.received(now, from, datagram_len, shared.events);
        if slot == Slot::Next {
            self.confirm_next(now, shared);
        }
        if rekey {
            self.start_handshake(now);
        }
        if len == 0 {
            return Inbound::Consumed;
        }
        let Some(ip) = out.get(..len).and_then(|p| InnerIp::parse(p).ok()) else {
            return Inbound::Dropped(self.drop_packet(DropReason::NotIp));
        };
        if routes.lookup(ip.src) != Some(self.id) {
            return Inbound::Dropped(self.drop_packet(DropReason::SourceNotAllowed));
        }
        self.rx_packets = self.rx_packets.saturating_add(1);
        self.timers.data_received(now);
        Inbound::Deliver {
            peer: self.id,
            len: ip.len,
        }
    }

    /// The initiator used the session we responded with: it is confirmed. It replaces the
    /// current one unless that is newer (both sides initiated at once and our own
    /// initiation completed later); either way the other stays for receiving.
    fn confirm_next(&mut self, now: Instant, shared: Shared<'_>) {
        let Some(next) = self.next.take() else { return };
        let newer = self
            .current
            .as_ref()
            .is_none_or(|c| next.created >= c.created);
        let evicted = if newer {
            let old_previous = self.previous.take();
            self.previous = self.current.replace(next);
            old_previous
        } else {
            self.previous.replace(next)
        };
        if let Some(old) = evicted {
            shared.indices.release(old.local_index);
        }
        self.handshake_complete(now, false, shared);
    }

    /// Test access to the current session.
    #[cfg(test)]
    pub fn current_mut(&mut self) -> Option<&mut Session> {
        self.current.as_mut()
    }
}
