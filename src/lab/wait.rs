//! Bounded polling: tests wait for a condition with a deadline instead of sleeping a fixed
//! time and hoping.

use super::{LabError, Result};
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, at most for `timeout`; the value, or
/// [`LabError::Timeout`] naming `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until `check` returns true, at most for `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    wait_for(timeout, what, || check().then_some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_or_times_out() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(1), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got.unwrap(), 3);
        let err = wait_until(Duration::from_millis(60), "never", || false).unwrap_err();
        assert!(err.to_string().contains("never"));
    }
}
