//! TAI64N timestamps, the payload of a handshake initiation. The responder keeps the
//! greatest one it has seen per peer and refuses any initiation not newer (whitepaper
//! 5.1: replayed initiations must not reset a session). Pure value code: the wall-clock
//! time comes in as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a TAI64N label on the wire.
pub const TAI64N_LEN: usize = 12;

/// Offset of the TAI64 label: 2^62 plus the 10 seconds TAI was ahead of UTC in 1972.
/// wireguard-go (`tai64n.go`) and the Linux module both use this base.
const TAI64_BASE: u64 = (1 << 62) + 10;

/// Nanoseconds are rounded down to a multiple of 2^24 ns (about 16.8 ms), as both
/// WireGuard implementations do, so the timestamp does not leak a precise clock.
const WHITENER_MASK: u32 = (1 << 24) - 1;

/// A TAI64N label: 8 bytes big-endian seconds, 4 bytes big-endian nanoseconds. Byte order
/// equals time order, so the derived `Ord` compares times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tai64N([u8; TAI64N_LEN]);

impl Tai64N {
    /// The label for a wall-clock time (times before 1970 count as 1970).
    pub fn from_system_time(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = TAI64_BASE.saturating_add(since.as_secs());
        let nanos = since.subsec_nanos() & !WHITENER_MASK;
        let mut bytes = [0u8; TAI64N_LEN];
        bytes[..8].copy_from_slice(&secs.to_be_bytes());
        bytes[8..].copy_from_slice(&nanos.to_be_bytes());
        Self(bytes)
    }

    /// Wraps received bytes.
    pub fn from_bytes(bytes: [u8; TAI64N_LEN]) -> Self {
        Self(bytes)
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8; TAI64N_LEN] {
        &self.0
    }

    /// The smallest label greater than this one, for the rare case where the wall clock
    /// has not moved on since the previous initiation (or went backwards).
    pub fn successor(&self) -> Self {
        let value = u128::from_be_bytes({
            let mut wide = [0u8; 16];
            wide[4..].copy_from_slice(&self.0);
            wide
        });
        let next = value.saturating_add(1).to_be_bytes();
        let mut bytes = [0u8; TAI64N_LEN];
        bytes.copy_from_slice(&next[4..]);
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn encodes_like_wireguard_go() {
        // 2021-01-01T00:00:00.5Z: seconds 1609459200, nanos 500_000_000 whitened.
        let t = UNIX_EPOCH + Duration::new(1_609_459_200, 500_000_000);
        let stamp = Tai64N::from_system_time(t);
        let secs = 0x4000_0000_0000_000a_u64 + 1_609_459_200;
        let nanos = 500_000_000u32 & !0x00ff_ffff;
        let mut expected = secs.to_be_bytes().to_vec();
        expected.extend(nanos.to_be_bytes());
        assert_eq!(stamp.as_bytes()[..], expected[..]);
        assert_eq!(&stamp.as_bytes()[..4], &[0x40, 0, 0, 0]);
    }

    #[test]
    fn order_follows_time() {
        let a = Tai64N::from_system_time(UNIX_EPOCH + Duration::from_secs(100));
        let b = Tai64N::from_system_time(UNIX_EPOCH + Duration::new(100, 20_000_000));
        let c = Tai64N::from_system_time(UNIX_EPOCH + Duration::from_secs(101));
        assert!(a < b && b < c);
        assert!(a.successor() > a && a.successor() < b);
        // Within one whitening step the labels are equal: a responder would refuse it.
        let d = Tai64N::from_system_time(UNIX_EPOCH + Duration::new(100, 1_000_000));
        assert_eq!(a, d);
    }

    #[test]
    fn successor_carries_into_seconds() {
        let mut bytes = [0u8; TAI64N_LEN];
        bytes[8..].copy_from_slice(&[0xff; 4]);
        let next = Tai64N::from_bytes(bytes).successor();
        assert_eq!(next.as_bytes()[7], 1);
        assert_eq!(&next.as_bytes()[8..], &[0; 4]);
    }
}
