//! WireGuard's protocol constants and the per-peer timer deadlines (whitepaper section 6,
//! and the Linux module's `timers.c`, whose event hooks these follow). Owns deadlines
//! only; what happens when one fires is decided in `peer`.

use std::time::{Duration, Instant};

/// Start a new handshake once a session has sent this many messages (whitepaper 6.1).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept a counter at or above this: 2^64 - 2^13 - 1 (whitepaper 6.1),
/// leaving room for the replay window.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator of a session starts a new handshake when sending on one this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up on a handshake (and drop the packets waiting for it) after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this; also the least time between two
/// initiations to one peer (wireguard-go drops initiations that come faster).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Random extra delay (0..=this) on each retransmission, so peers do not stay in step.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive this long after receiving data if nothing was sent meanwhile.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The initiator of a session rekeys when it receives data on a session this old, so a
/// fresh one exists before the old is rejected: 180 - 10 - 5 = 165 s.
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(165);
/// Start a new handshake if data was sent but nothing came back for this long (10 + 5 s).
pub const NEW_HANDSHAKE_AFTER: Duration = Duration::from_secs(15);

/// A responder ignores an initiation that comes sooner than this after the last one it
/// accepted from the same peer (wireguard-go's `HandshakeInitationRate`, 1 s / 50).
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(20);

/// The deadlines of one peer. Each is `None` when its timer is not armed.
#[derive(Debug, Default, Clone)]
pub struct Timers {
    /// Send an initiation at or after this (a fresh attempt, or a retransmission).
    pub initiation_due: Option<Instant>,
    /// Retransmit the pending initiation, or give up if the attempt is too old.
    pub retransmit: Option<Instant>,
    /// Passive keepalive: data was received and nothing sent since.
    pub keepalive: Option<Instant>,
    /// Another passive keepalive is owed after the armed one fires.
    pub keepalive_again: bool,
    /// Data was sent and nothing authenticated received since.
    pub new_handshake: Option<Instant>,
    /// The configured persistent keepalive.
    pub persistent: Option<Instant>,
}

impl Timers {
    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.initiation_due,
            self.retransmit,
            self.keepalive,
            self.new_handshake,
            self.persistent,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Any authenticated packet (data, keepalive, handshake) was sent: the peer heard from
    /// us, so no passive keepalive is owed.
    pub fn authenticated_sent(&mut self, now: Instant, persistent: Option<Duration>) {
        self.keepalive = None;
        self.keepalive_again = false;
        self.traversal(now, persistent);
    }

    /// Any authenticated packet was received: the peer is alive.
    pub fn authenticated_received(&mut self, now: Instant, persistent: Option<Duration>) {
        self.new_handshake = None;
        self.traversal(now, persistent);
    }

    /// A data packet (not a keepalive) was sent: expect an answer within 15 s.
    pub fn data_sent(&mut self, now: Instant) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + NEW_HANDSHAKE_AFTER);
        }
    }

    /// A data packet was received: owe a keepalive unless we send something first.
    pub fn data_received(&mut self, now: Instant) {
        if self.keepalive.is_none() {
            self.keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.keepalive_again = true;
        }
    }

    /// A handshake completed: stop retransmitting.
    pub fn handshake_complete(&mut self) {
        self.retransmit = None;
        self.initiation_due = None;
    }

    fn traversal(&mut self, now: Instant, persistent: Option<Duration>) {
        if let Some(interval) = persistent {
            self.persistent = Some(now + interval);
        }
    }
}

/// A random retransmission delay: [`REKEY_TIMEOUT`] plus up to
/// [`REKEY_TIMEOUT_JITTER_MAX`].
pub fn retransmit_delay() -> Duration {
    use rand::Rng as _;
    let max = u64::try_from(REKEY_TIMEOUT_JITTER_MAX.as_millis()).unwrap_or(0);
    REKEY_TIMEOUT + Duration::from_millis(rand::thread_rng().gen_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_whitepaper() {
        assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - 8192);
        assert_eq!(
            u128::from(REJECT_AFTER_MESSAGES),
            (1u128 << 64) - (1 << 13) - 1
        );
        assert_eq!(
            REKEY_ON_RECEIVE_AGE,
            REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        );
        assert_eq!(NEW_HANDSHAKE_AFTER, KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
    }

    #[test]
    fn hooks_arm_and_clear() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next_deadline(), None);
        timers.data_received(t0);
        timers.data_received(t0 + Duration::from_secs(1));
        assert_eq!(timers.keepalive, Some(t0 + KEEPALIVE_TIMEOUT));
        assert!(timers.keepalive_again);
        timers.data_sent(t0);
        assert_eq!(timers.next_deadline(), Some(t0 + KEEPALIVE_TIMEOUT));
        timers.authenticated_sent(t0, Some(Duration::from_secs(25)));
        assert_eq!(timers.keepalive, None);
        assert_eq!(timers.persistent, Some(t0 + Duration::from_secs(25)));
        timers.authenticated_received(t0, None);
        assert_eq!(timers.new_handshake, None);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = retransmit_delay();
            assert!(d >= REKEY_TIMEOUT && d <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
        }
    }
}
