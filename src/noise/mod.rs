//! The sans-IO WireGuard protocol core: handshakes, sessions, replay protection, timers,
//! cookies and cryptokey routing for all peers of one interface.
//!
//! Bytes and `now: Instant` go in (`handle_outbound`, `handle_datagram`, `handle_timeout`);
//! datagrams, deadlines and events come out (`poll_transmit`, `poll_timeout`,
//! `poll_event`). This module never opens a socket, never reads a clock and never
//! allocates on the data path of an established session; the driver does all I/O.

mod allowed_ips;
mod cookie;
mod drops;
mod endpoint;
mod handshake;
mod index;
mod peer;
mod ratelimit;
mod replay;
mod session;
mod tai64n;
mod timers;
mod tunnel;
mod x25519;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::keys::{PresharedKey, PrivateKey, PublicKey};

pub use allowed_ips::AllowedIps;
/// Public so fuzz targets can give arbitrary handshake bytes a valid mac1 and so reach the
/// handshake state machine behind that cheap check.
pub use cookie::MacKeys;
pub use cookie::{COOKIE_LIFETIME, UNDER_LOAD_HANDSHAKES_PER_SECOND};
pub use drops::{DropCounters, DropReason};
pub use endpoint::can_send_to;
pub use replay::{ReplayWindow, WINDOW_SIZE as REPLAY_WINDOW};
pub use tai64n::Tai64N;
pub use timers::{
    KEEPALIVE_TIMEOUT, MIN_INITIATION_INTERVAL, NEW_HANDSHAKE_AFTER, REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};
pub use tunnel::Tunnel;

/// Bytes a transport message adds to a plaintext: 16-byte header and 16-byte tag
/// (whitepaper 5.4.6). Size `out` as `packet.len() + OVERHEAD + 15` to leave room for the
/// padding to a multiple of 16.
pub const OVERHEAD: usize = crate::wire::TRANSPORT_HEADER_LEN + crate::wire::TAG_LEN;

/// The largest inner packet or datagram the core handles: the IP total-length limit.
/// A buffer of `MAX_MESSAGE + OVERHEAD + 15` bytes is always enough for `out`.
pub const MAX_MESSAGE: usize = 65535;

/// Packets kept per peer while a handshake runs; older ones are dropped first, as the
/// Linux module's `MAX_STAGED_PACKETS` (128).
pub const MAX_QUEUED: usize = 128;

/// Events kept for `poll_event` before the oldest are dropped, so a driver that never
/// polls events cannot grow memory without bound.
const MAX_EVENTS: usize = 1024;

/// Everything the core needs to run one interface.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Our static private key.
    pub private_key: PrivateKey,
    /// The peers, in config order; a peer's position is its [`PeerId`].
    pub peers: Vec<PeerConfig>,
}

/// One peer's configuration, as in a `[[peer]]` section.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's static public key: its identity.
    pub public_key: PublicKey,
    /// Mixed into the handshake when set; 32 zero bytes otherwise (WireGuard's rule).
    pub preshared_key: Option<PresharedKey>,
    /// Where to send first; later replaced by the source of authenticated packets.
    pub endpoint: Option<SocketAddr>,
    /// Which inner addresses route to this peer and which sources it may use.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Send a keepalive at least this often (for NAT and stateful firewalls).
    pub persistent_keepalive: Option<Duration>,
}

/// A peer, by its position in [`TunnelConfig::peers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub usize);

/// A datagram the core wrote into the caller's `out[..len]`, to be sent to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer's endpoint (or the source of the message answered).
    pub to: SocketAddr,
    /// Bytes written at the start of `out`.
    pub len: usize,
}

/// What became of a packet read from TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Encrypted into `out`: send it.
    Send(Transmit),
    /// No session yet: the packet waits (bounded queue) and a handshake was started;
    /// `poll_transmit` sends both.
    Queued,
    /// Not sent, for this reason.
    Dropped(DropReason),
}

/// What became of a datagram received from the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// `out[..len]` is an inner IP packet from `peer`, trimmed to its header's length:
    /// write it to TUN.
    Deliver {
        /// Who sent it.
        peer: PeerId,
        /// Its length.
        len: usize,
    },
    /// An answer (handshake response or cookie reply) is in `out[..len]`: send it.
    Send(Transmit),
    /// Handled, nothing to deliver (keepalive, completed handshake, stored cookie).
    Consumed,
    /// Refused, for this reason.
    Dropped(DropReason),
}

/// Something worth one log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An initiation went out; `retransmit` when it repeats an unanswered one.
    HandshakeInitiated {
        /// To whom.
        peer: PeerId,
        /// Whether an earlier initiation of the same attempt went unanswered.
        retransmit: bool,
    },
    /// A new session is usable; `initiator` says which side we were.
    HandshakeComplete {
        /// With whom.
        peer: PeerId,
        /// Whether we sent the initiation.
        initiator: bool,
    },
    /// Authenticated packets now come from a new address, and replies go there.
    EndpointChanged {
        /// Who moved.
        peer: PeerId,
        /// The address before, if any.
        old: Option<SocketAddr>,
        /// The address now.
        new: SocketAddr,
    },
    /// No answer for [`REKEY_ATTEMPT_TIME`]: the handshake and its queued packets are gone.
    HandshakeGaveUp {
        /// Which peer is unreachable.
        peer: PeerId,
        /// How many queued packets were dropped.
        dropped_packets: usize,
    },
    /// The current session passed [`REJECT_AFTER_TIME`] without a replacement; its keys
    /// are erased.
    SessionExpired {
        /// Whose session.
        peer: PeerId,
    },
    /// The peer is under load and sent a cookie; the next initiation carries mac2.
    CookieReceived {
        /// Which peer.
        peer: PeerId,
    },
}

/// One peer's state for `vmtun status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Which peer.
    pub id: PeerId,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where its packets go now.
    pub endpoint: Option<SocketAddr>,
    /// When the latest handshake completed (as initiator, or confirmed as responder).
    pub last_handshake: Option<Instant>,
    /// Whether a session can send right now (subject to age limits).
    pub has_session: bool,
    /// Packets waiting for a handshake.
    pub queued: usize,
    /// Datagram bytes received from this peer (handshakes, keepalives, data), as `wg`.
    pub rx_bytes: u64,
    /// Datagram bytes sent to this peer.
    pub tx_bytes: u64,
    /// Inner packets delivered from this peer.
    pub rx_packets: u64,
    /// Inner packets sent to this peer (keepalives not counted).
    pub tx_packets: u64,
    /// Drops attributable to this peer.
    pub drops: DropCounters,
}

/// The bounded event queue behind `poll_event`.
#[derive(Debug, Default)]
pub(crate) struct EventQueue(VecDeque<Event>);

impl EventQueue {
    fn push(&mut self, event: Event) {
        if self.0.len() >= MAX_EVENTS {
            self.0.pop_front();
        }
        self.0.push_back(event);
    }

    fn pop(&mut self) -> Option<Event> {
        self.0.pop_front()
    }
}
