//! The client's ICMP probes at a real guest, which answers ping and nothing else: `ping -D`
//! at a short interval in the client's namespace, and the reading of what it printed (when
//! each reply came, how many probes went out and came back), so a test can report the
//! longest gap in the replies, the outage a user of the guest saw. ping keeps its interval
//! only while replies come: with replies outstanding it sent one probe per 10 ms here
//! (iputils 20221126 at `-i 0.001`), so its loss count is no fixed-rate figure; the gap is.
//! The reading is pure and unit-tested; the process is the thin edge.

use std::path::Path;
use std::time::Duration;

use crate::lab::{LabError, Netns, Process, Result};

/// What one run of `ping -D` printed.
#[derive(Debug, Clone, PartialEq)]
pub struct PingTrace {
    /// When each reply arrived (Unix time, seconds), in order.
    pub replies: Vec<f64>,
    /// Probes sent, from the summary.
    pub transmitted: u64,
    /// Replies received, from the summary.
    pub received: u64,
}

impl PingTrace {
    /// Reads `ping -D`'s output: each `[SECONDS] 64 bytes from ...` line a reply
    /// (duplicates left out), and the `N packets transmitted, M received` summary.
    pub fn parse(text: &str) -> Self {
        let replies = text
            .lines()
            .filter(|line| line.contains(" bytes from ") && !line.contains("(DUP!)"))
            .filter_map(|line| {
                let stamp = line.strip_prefix('[')?.split(']').next()?;
                stamp.parse::<f64>().ok()
            })
            .collect();
        let summary = text
            .lines()
            .find(|line| line.contains("packets transmitted"))
            .unwrap_or_default();
        let count = |label: &str| -> u64 {
            summary
                .split(',')
                .find(|part| part.contains(label))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Self {
            replies,
            transmitted: count("transmitted"),
            received: count("received"),
        }
    }

    /// The longest time between two consecutive replies; `None` with fewer than two.
    pub fn longest_gap(&self) -> Option<Duration> {
        self.replies
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .fold(None, |longest: Option<f64>, gap| {
                Some(longest.map_or(gap, |l| l.max(gap)))
            })
            .map(|secs| Duration::from_secs_f64(secs.max(0.0)))
    }
}

/// `ping -D -i INTERVAL ADDR` running in a namespace until [`Pinger::stop`].
pub struct Pinger {
    process: Process,
}

impl Pinger {
    /// Starts pinging `addr` from `ns` every `interval` (at least 1 ms: ping's floor for
    /// root without flooding), its output logged under `log_dir`.
    pub fn start(ns: &Netns, log_dir: &Path, addr: &str, interval: Duration) -> Result<Self> {
        let interval = format!("{:.3}", interval.as_secs_f64().max(0.001));
        let process = ns.spawn("ping", log_dir, "ping", &["-D", "-i", &interval, addr])?;
        Ok(Self { process })
    }

    /// Stops it (SIGINT, so it prints its summary) and reads what it printed.
    pub fn stop(mut self) -> Result<PingTrace> {
        self.process.signal(libc::SIGINT);
        self.process.wait_timeout(Duration::from_secs(30))?;
        let trace = PingTrace::parse(&self.process.stdout());
        if trace.transmitted == 0 {
            return Err(LabError::Failed(format!(
                "ping printed no summary:\n{}",
                self.process.stderr_tail()
            )));
        }
        Ok(trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "PING 203.0.113.2 (203.0.113.2) 56(84) bytes of data.
[1796285585.000000] 64 bytes from 203.0.113.2: icmp_seq=1 ttl=63 time=0.412 ms
[1796285585.001000] 64 bytes from 203.0.113.2: icmp_seq=2 ttl=63 time=0.398 ms
[1796285585.001100] 64 bytes from 203.0.113.2: icmp_seq=2 ttl=63 time=0.498 ms (DUP!)
[1796285585.043500] 64 bytes from 203.0.113.2: icmp_seq=3 ttl=63 time=41.2 ms
[1796285585.044500] 64 bytes from 203.0.113.2: icmp_seq=44 ttl=63 time=0.401 ms

--- 203.0.113.2 ping statistics ---
44 packets transmitted, 4 received, +1 duplicates, 90.9091% packet loss, time 43ms
rtt min/avg/max/mdev = 0.398/10.602/41.200/17.6 ms
";

    #[test]
    fn replies_and_the_summary_are_read() {
        let trace = PingTrace::parse(OUTPUT);
        assert_eq!(trace.replies.len(), 4);
        assert_eq!((trace.transmitted, trace.received), (44, 4));
        let gap = trace.longest_gap().expect("a gap");
        assert!((gap.as_secs_f64() - 0.0425).abs() < 1e-6, "{gap:?}");
    }

    #[test]
    fn no_replies_no_gap() {
        let trace = PingTrace::parse(
            "PING x\n\n--- x ping statistics ---\n5 packets transmitted, 0 received, 100% packet loss, time 4ms\n",
        );
        assert_eq!(trace.longest_gap(), None);
        assert_eq!((trace.transmitted, trace.received), (5, 0));
        assert_eq!(PingTrace::parse("").transmitted, 0);
    }
}
