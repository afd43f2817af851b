//! Why packets were dropped, counted per reason, so `vmtun status` can show where traffic
//! goes missing. Owns the reasons and their stable names.

/// Why the core refused a packet or datagram. `name()` is stable for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Wrong length for its type, or otherwise unparseable.
    Malformed,
    /// Not one of the four WireGuard message types.
    UnknownType,
    /// mac1 wrong: not addressed to our public key (refused before any DH).
    BadMac,
    /// A handshake from a static key that is not a configured peer.
    UnknownPeer,
    /// A response, cookie reply or transport message naming an index we do not have.
    UnknownIndex,
    /// Authentication failed (forged, corrupted, wrong key or psk).
    DecryptFailed,
    /// A handshake whose DH gave the all-zero secret: a low-order public key.
    LowOrderKey,
    /// A transport counter already received or too old for the window.
    Replay,
    /// An initiation whose timestamp is not newer than the last one from that peer.
    StaleTimestamp,
    /// A decrypted packet whose source is not in the sending peer's allowed IPs.
    SourceNotAllowed,
    /// An outbound packet whose destination is in no peer's allowed IPs.
    NoRoute,
    /// A packet for a peer whose address we do not know yet.
    NoEndpoint,
    /// A handshake without valid mac2 while under load: a cookie reply went back instead.
    UnderLoad,
    /// A message for a session past its time or message limit.
    Expired,
    /// An inner packet that is not IPv4 or IPv6, or shorter than its header says.
    NotIp,
    /// The pre-session queue was full: the oldest packet made room.
    QueueFull,
    /// Packets that waited for a handshake that was given up after 90 s.
    HandshakeTimeout,
    /// A packet larger than [`super::MAX_MESSAGE`] allows.
    TooLarge,
    /// An initiation less than 20 ms after the previous one accepted from that peer.
    TooFrequent,
    /// A handshake message with a valid cookie while under load, beyond its source's
    /// budget (see `ratelimit`).
    RateLimited,
    /// The caller's output buffer was too small (a driver bug).
    BufferTooSmall,
    /// A datagram from a source nothing can be sent to (port 0, unspecified, multicast,
    /// broadcast): never an endpoint, never answered.
    UnusableSource,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 22] = [
        Self::Malformed,
        Self::UnknownType,
        Self::BadMac,
        Self::UnknownPeer,
        Self::UnknownIndex,
        Self::DecryptFailed,
        Self::LowOrderKey,
        Self::Replay,
        Self::StaleTimestamp,
        Self::SourceNotAllowed,
        Self::NoRoute,
        Self::NoEndpoint,
        Self::UnderLoad,
        Self::Expired,
        Self::NotIp,
        Self::QueueFull,
        Self::HandshakeTimeout,
        Self::TooLarge,
        Self::TooFrequent,
        Self::RateLimited,
        Self::BufferTooSmall,
        Self::UnusableSource,
    ];

    /// A stable snake_case name for status output and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown_type",
            Self::BadMac => "bad_mac",
            Self::UnknownPeer => "unknown_peer",
            Self::UnknownIndex => "unknown_index",
            Self::DecryptFailed => "decrypt_failed",
            Self::LowOrderKey => "low_order_key",
            Self::Replay => "replay",
            Self::StaleTimestamp => "stale_timestamp",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::NoRoute => "no_route",
            Self::NoEndpoint => "no_endpoint",
            Self::UnderLoad => "under_load",
            Self::Expired => "expired",
            Self::NotIp => "not_ip",
            Self::QueueFull => "queue_full",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::TooLarge => "too_large",
            Self::TooFrequent => "too_frequent",
            Self::RateLimited => "rate_limited",
            Self::BufferTooSmall => "buffer_too_small",
            Self::UnusableSource => "unusable_source",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A counter per [`DropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// Counts `n` drops for `reason`.
    pub fn add(&mut self, reason: DropReason, n: u64) {
        if let Some(count) = self.counts.get_mut(reason.slot()) {
            *count = count.saturating_add(n);
        }
    }

    /// Drops counted for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts.get(reason.slot()).copied().unwrap_or(0)
    }

    /// Every reason with its count (zeros included, in a fixed order).
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_slot_order_and_names_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.slot(), i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn counts() {
        let mut c = DropCounters::default();
        c.add(DropReason::Replay, 2);
        c.add(DropReason::NoRoute, 1);
        assert_eq!(c.get(DropReason::Replay), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().filter(|(_, n)| *n > 0).count(), 2);
    }
}
