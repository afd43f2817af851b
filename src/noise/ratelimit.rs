//! A per-source budget for handshake messages while under load. Cookies prove that a
//! sender owns its address, not that it is polite: one real host can still send valid
//! initiations as fast as its link allows, and each costs a responder about 0.2 ms of
//! X25519. So, as WireGuard does, every source (an IPv4 address, an IPv6 /64) gets
//! [`PER_SECOND`] handshake messages with a burst of [`BURST`]; the rest are dropped
//! before any DH. The table is bounded, forgets idle sources, and when full makes room
//! for a new one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Handshake messages per second one source may have answered while under load.
pub const PER_SECOND: u32 = 20;
/// How many it may send at once after a quiet spell.
pub const BURST: u32 = 5;
/// Sources tracked at once; a new source beyond this takes the place of the quietest.
const MAX_SOURCES: usize = 8192;
/// A source idle this long has a full budget again and is forgotten.
const IDLE: Duration = Duration::from_secs(1);

const COST: Duration = Duration::from_nanos(1_000_000_000 / PER_SECOND as u64);
const FULL: Duration = Duration::from_nanos(COST.as_nanos() as u64 * BURST as u64);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Budget left, as time: each message costs [`COST`], time refills it up to [`FULL`].
    budget: Duration,
    last: Instant,
}

/// Token buckets per source, in time units (no floating point, no timer).
#[derive(Debug, Default)]
pub struct RateLimiter {
    sources: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// Whether a handshake message from `ip` may be processed now; counts it if so.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        self.sweep(now);
        let key = source_key(ip);
        if let Some(bucket) = self.sources.get_mut(&key) {
            let refill = now.saturating_duration_since(bucket.last);
            bucket.budget = (bucket.budget + refill).min(FULL);
            bucket.last = now;
            return match bucket.budget.checked_sub(COST) {
                Some(left) => {
                    bucket.budget = left;
                    true
                }
                None => false,
            };
        }
        if self.sources.len() >= MAX_SOURCES {
            self.evict_quietest();
        }
        self.sources.insert(
            key,
            Bucket {
                budget: FULL - COST,
                last: now,
            },
        );
        true
    }

    /// Makes room for a new source by forgetting the one heard from longest ago. Refusing
    /// instead would let anyone who fills the table (one address per entry, each holding a
    /// cookie) keep every new peer out; forgetting only costs the evicted source's history,
    /// which it regains at the next message. A scan of the table, but only when it is full,
    /// and far cheaper than the DH it guards.
    fn evict_quietest(&mut self) {
        if let Some(key) = self
            .sources
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(key, _)| *key)
        {
            self.sources.remove(&key);
        }
    }

    /// Forgets sources idle for [`IDLE`] (their budget is full again), at most once per
    /// [`IDLE`], so the table's size follows the sources that are active.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < IDLE)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.sources
            .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
    }
}

/// IPv6 hosts own a /64 each, so the /64 is the source.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_one_per_cost_interval() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        let a = ip("198.18.0.1");
        for i in 0..BURST {
            assert!(r.allow(t, a), "message {i} of the burst");
        }
        assert!(!r.allow(t, a), "the burst is spent");
        assert!(!r.allow(t + COST / 2, a), "half a message's worth of time");
        assert!(r.allow(t + COST, a), "one message's worth refilled");
        assert!(!r.allow(t + COST, a));
    }

    #[test]
    fn sources_are_independent_and_ipv6_counts_per_64() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        for _ in 0..BURST {
            assert!(r.allow(t, ip("198.18.0.1")));
            assert!(r.allow(t, ip("2001:db8:1:2::1")));
        }
        assert!(!r.allow(t, ip("198.18.0.1")));
        assert!(
            !r.allow(t, ip("2001:db8:1:2::ffff")),
            "same /64, same budget"
        );
        assert!(r.allow(t, ip("198.18.0.2")));
        assert!(r.allow(t, ip("2001:db8:1:3::1")));
    }

    #[test]
    fn a_quiet_source_gets_its_whole_burst_back() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        let a = ip("198.18.0.1");
        while r.allow(t, a) {}
        let later = t + IDLE * 2;
        for _ in 0..BURST {
            assert!(r.allow(later, a));
        }
        assert!(!r.allow(later, a), "never more than the burst");
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_sources() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            assert!(r.allow(t, IpAddr::from((0xc612_0000u32 + i).to_be_bytes())));
        }
        assert_eq!(r.sources.len(), MAX_SOURCES);
        assert!(r.allow(t + IDLE, ip("192.0.2.1")), "idle sources swept");
        assert_eq!(r.sources.len(), 1);
    }

    #[test]
    fn a_full_table_still_admits_a_new_source_by_forgetting_the_longest_quiet() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        let oldest = ip("203.0.113.1");
        assert!(r.allow(t, oldest));
        let busy = t + IDLE / 2;
        for i in 1..MAX_SOURCES as u32 {
            assert!(r.allow(busy, IpAddr::from((0xc612_0000u32 + i).to_be_bytes())));
        }
        assert!(
            r.allow(busy, ip("192.0.2.1")),
            "a new source when the table is full"
        );
        assert_eq!(r.sources.len(), MAX_SOURCES, "still bounded");
        assert!(!r.sources.contains_key(&oldest), "the longest quiet went");
        assert!(r.sources.contains_key(&ip("198.18.0.2")));
    }
}
