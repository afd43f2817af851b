//! When the restore monitor compares the journal with the kernel: the sans-IO pacer.
//!
//! Notifications come in bursts (`nft flush ruleset` deletes every table, chain, set and rule,
//! each with a message), so the monitor waits [`SETTLE`] after the first one and compares
//! once. And another program may insist: systemd-networkd configured to remove foreign rules
//! removes vmtun's again each time it runs, a cron job may flush every minute. So that vmtun
//! never fights it in a loop, checks that had to put something back are limited to [`BURST`]
//! per [`WINDOW`]; beyond that the next check waits until the oldest leaves the window (and
//! the monitor says so, once per hold).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long after a notification the monitor compares: long enough for a burst to end,
/// short against the second it may take.
pub const SETTLE: Duration = Duration::from_millis(20);

/// Checks that put something back, allowed per [`WINDOW`] before the monitor holds back.
pub const BURST: usize = 5;

/// The window of [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(60);

/// Decides when to compare. `now` is always passed in.
#[derive(Debug, Default)]
pub struct Pace {
    /// When the next comparison is due, if one is.
    due: Option<Instant>,
    /// When recent comparisons put something back, oldest first, within [`WINDOW`].
    restores: VecDeque<Instant>,
}

impl Pace {
    /// A pacer with nothing due.
    pub fn new() -> Self {
        Self::default()
    }

    /// A notification that may mean a removal came at `now`: a comparison becomes due after
    /// [`SETTLE`], or when the hold ends. Further notifications until then change nothing.
    pub fn notice(&mut self, now: Instant) {
        if self.due.is_none() {
            let settled = now + SETTLE;
            self.due = Some(self.held_until(now).map_or(settled, |h| h.max(settled)));
        }
    }

    /// When the next comparison is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Whether to compare now; if so, it is no longer due.
    pub fn poll_compare(&mut self, now: Instant) -> bool {
        match self.due {
            Some(due) if due <= now => {
                self.due = None;
                true
            }
            _ => false,
        }
    }

    /// A comparison at `now` ended; `put_back` says whether it had to restore anything.
    /// Returns when the monitor holds back from now on, if this restore reached the limit.
    pub fn compared(&mut self, now: Instant, put_back: bool) -> Option<Instant> {
        if !put_back {
            return None;
        }
        self.restores.push_back(now);
        self.held_until(now)
    }

    /// Until when comparisons wait, if [`BURST`] restores fell within the last [`WINDOW`].
    fn held_until(&mut self, now: Instant) -> Option<Instant> {
        while self
            .restores
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
        {
            self.restores.pop_front();
        }
        (self.restores.len() >= BURST).then(|| self.restores[0] + WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_notifications_makes_one_comparison_after_it_settles() {
        let t0 = Instant::now();
        let mut p = Pace::new();
        assert_eq!(p.poll_timeout(), None);
        p.notice(t0);
        p.notice(t0 + Duration::from_millis(5));
        assert_eq!(p.poll_timeout(), Some(t0 + SETTLE));
        assert!(!p.poll_compare(t0 + Duration::from_millis(10)));
        assert!(p.poll_compare(t0 + SETTLE));
        assert!(!p.poll_compare(t0 + SETTLE), "once");
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn comparisons_that_find_nothing_missing_are_never_limited() {
        let t0 = Instant::now();
        let mut p = Pace::new();
        for i in 0..100u32 {
            let now = t0 + SETTLE * (2 * i);
            p.notice(now);
            assert_eq!(p.poll_timeout(), Some(now + SETTLE));
            assert!(p.poll_compare(now + SETTLE));
            assert_eq!(p.compared(now + SETTLE, false), None);
        }
    }

    #[test]
    fn a_program_that_keeps_removing_is_answered_at_most_burst_times_a_window() {
        let t0 = Instant::now();
        let mut p = Pace::new();
        let mut now = t0;
        let mut restores = Vec::new();
        // Something removes vmtun's rule every 100 ms for three minutes.
        while now < t0 + 3 * WINDOW {
            p.notice(now);
            let due = p.poll_timeout().unwrap();
            if due <= now + Duration::from_millis(100) {
                assert!(p.poll_compare(due));
                restores.push(due);
                if let Some(hold) = p.compared(due, true) {
                    assert!(hold > due);
                }
            }
            now += Duration::from_millis(100);
        }
        for w in restores.windows(BURST + 1) {
            assert!(
                w[BURST] - w[0] >= WINDOW,
                "more than {BURST} in a window: {w:?}"
            );
        }
        // The first burst is answered at once, the next a window later.
        assert!(restores.len() <= 3 * BURST + 1, "{restores:?}");
        assert_eq!(restores[0], t0 + SETTLE);
        assert_eq!(restores[BURST], restores[0] + WINDOW);
    }

    #[test]
    fn the_hold_ends_when_the_oldest_restore_leaves_the_window() {
        let t0 = Instant::now();
        let mut p = Pace::new();
        for i in 0..BURST as u32 {
            let at = t0 + Duration::from_secs(i.into());
            p.notice(at);
            assert!(p.poll_compare(at + SETTLE));
            let hold = p.compared(at + SETTLE, true);
            assert_eq!(hold.is_some(), i as usize == BURST - 1);
        }
        let late = t0 + WINDOW + Duration::from_secs(30);
        p.notice(late);
        assert_eq!(
            p.poll_timeout(),
            Some(late + SETTLE),
            "the window has passed"
        );
    }
}
