//! Busy polling: after traffic, the event loop keeps polling for a short window (yielding
//! the CPU to anything runnable between polls) before it goes to sleep. A packet that
//! arrives inside the window is picked up without the wake-up of a sleeping thread,
//! which on a virtual machine costs tens of microseconds per hop; a ping through the
//! tunnel makes four such hops. The kernel offers the same trade for sockets
//! (`net.core.busy_poll`); this is that, for the TUN device and the UDP socket together.
//!
//! The window is bounded twice: in time (`busy_poll_us` in the config) and in share of
//! the CPU ([`BUDGET_SHARE`]), so a trickle of packets just under a window apart cannot
//! keep a core spinning. This policy does no I/O; the driver asks it before each sleep.

use std::time::{Duration, Instant};

/// The most of one core's time spinning may take, on average.
pub const BUDGET_SHARE: f64 = 0.10;
/// Spin time that may be spent at once after a quiet spell.
const BUDGET_BURST: Duration = Duration::from_millis(20);

/// When to poll again instead of sleeping, and what spinning has cost so far.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    /// Spinning allowed until then (the window after the latest traffic).
    until: Instant,
    /// Spin time left in the budget as of `refilled`, in seconds; negative while a spin
    /// that overran it (polls are not instantaneous) is paid back.
    budget: f64,
    refilled: Instant,
    /// When the current spin began, if the loop is spinning.
    spinning_since: Option<Instant>,
    stats: BusyPollStats,
}

/// What busy polling has cost and caught, for `vmtun status`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct BusyPollStats {
    /// Wall time spent spinning (an upper bound on its CPU time: the spinner yields).
    pub spun: Duration,
    /// Spins that ended because traffic arrived: wake-ups saved.
    pub caught: u64,
    /// Spins cut short because the budget ran out.
    pub over_budget: u64,
}

impl BusyPoll {
    /// A policy spinning at most `window` after traffic; a zero window never spins.
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            until: now,
            budget: BUDGET_BURST.as_secs_f64(),
            refilled: now,
            spinning_since: None,
            stats: BusyPollStats::default(),
        }
    }

    /// Traffic (or any other event) arrived at `now`: a spin in progress ends having
    /// caught it, and the window starts again.
    pub fn on_activity(&mut self, now: Instant) {
        if self.end_spin(now) {
            self.stats.caught += 1;
        }
        self.until = now + self.window;
    }

    /// Whether the loop should poll again without sleeping.
    pub fn should_spin(&mut self, now: Instant) -> bool {
        if now >= self.until {
            self.end_spin(now);
            return false;
        }
        let since = *self.spinning_since.get_or_insert(now);
        if now.saturating_duration_since(since).as_secs_f64() >= self.budget(now) {
            self.end_spin(now);
            self.stats.over_budget += 1;
            self.until = now;
            return false;
        }
        true
    }

    /// The spin budget at `now`, before the current spin is charged.
    fn budget(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.budget = (self.budget + elapsed * BUDGET_SHARE).min(BUDGET_BURST.as_secs_f64());
        self.refilled = now;
        self.budget
    }

    /// Charges a spin in progress to the budget; whether there was one.
    fn end_spin(&mut self, now: Instant) -> bool {
        let Some(since) = self.spinning_since.take() else {
            return false;
        };
        let spun = now.saturating_duration_since(since);
        self.budget(now);
        self.budget -= spun.as_secs_f64();
        self.stats.spun += spun;
        true
    }

    /// The window, as configured.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Totals so far.
    pub fn stats(&self) -> BusyPollStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn spins_for_the_window_after_traffic_then_sleeps() {
        let t0 = Instant::now();
        let mut p = BusyPoll::new(100 * US, t0);
        assert!(!p.should_spin(t0), "no traffic yet");
        p.on_activity(t0);
        assert!(p.should_spin(t0 + 10 * US));
        assert!(p.should_spin(t0 + 99 * US));
        assert!(!p.should_spin(t0 + 100 * US));
        assert_eq!(p.stats().spun, 90 * US);
        assert_eq!(p.stats().caught, 0);
    }

    #[test]
    fn traffic_during_a_spin_counts_as_caught_and_restarts_the_window() {
        let t0 = Instant::now();
        let mut p = BusyPoll::new(100 * US, t0);
        p.on_activity(t0);
        assert!(p.should_spin(t0 + 20 * US));
        p.on_activity(t0 + 70 * US);
        assert_eq!(p.stats().caught, 1);
        assert_eq!(p.stats().spun, 50 * US);
        assert!(
            p.should_spin(t0 + 160 * US),
            "the window runs from the latest traffic"
        );
    }

    #[test]
    fn a_zero_window_never_spins() {
        let t0 = Instant::now();
        let mut p = BusyPoll::new(Duration::ZERO, t0);
        p.on_activity(t0);
        assert!(!p.should_spin(t0));
        assert_eq!(p.stats(), BusyPollStats::default());
    }

    #[test]
    fn a_trickle_just_inside_the_window_is_held_to_the_budget() {
        let t0 = Instant::now();
        let window = 100 * US;
        let mut p = BusyPoll::new(window, t0);
        // A packet every 90 us for two seconds: without a budget the loop would never sleep.
        let mut now = t0;
        while now < t0 + Duration::from_secs(2) {
            p.on_activity(now);
            let mut at = now + 10 * US;
            while at < now + 90 * US && p.should_spin(at) {
                at += 10 * US;
            }
            now += 90 * US;
        }
        let share = p.stats().spun.as_secs_f64() / 2.0;
        // The burst may be spent on top of the steady share, once.
        assert!(
            share <= BUDGET_SHARE + BUDGET_BURST.as_secs_f64() / 2.0,
            "{share}"
        );
        assert!(
            share >= BUDGET_SHARE / 2.0,
            "still spins within the budget: {share}"
        );
        assert!(p.stats().over_budget > 0);
    }
}
