//! What the cutover saw and when: the detection handed to the rule-removal callback, and the
//! record kept for the log and `vmtun status --json`. Pure values; the clocks are read by the
//! watcher and passed in.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The first native packet, as the watcher saw it. Handed to the callback that removes the
/// mark rule, so that it can log or act on which subnet moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    /// The watched subnet the packet was for.
    pub subnet: IpNet,
    /// The packet's source address (the client whose packet arrived natively).
    pub src: IpAddr,
    /// The packet's destination address (a VM's).
    pub dst: IpAddr,
    /// When the kernel received the packet (its capture timestamp, wall clock).
    pub captured_at: SystemTime,
    /// When the watcher recognised it (monotonic, for measuring the removal).
    pub detected_at: Instant,
    /// The wall clock at `detected_at`, to relate it to `captured_at`.
    pub detected_at_wall: SystemTime,
}

impl Detection {
    /// Time from the kernel's receive timestamp to the watcher's decision (wakeup, copy,
    /// classification). Zero if the wall clock stepped backwards in between.
    pub fn detection_delay(&self) -> Duration {
        self.detected_at_wall
            .duration_since(self.captured_at)
            .unwrap_or(Duration::ZERO)
    }
}

/// The outcome of one cutover, kept for the log and shown by `vmtun status`.
///
/// Times are serialised as integer nanoseconds (Unix time for instants), so that JSON
/// consumers need no date parser and lose no precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverRecord {
    /// The subnet whose first native packet triggered the cutover.
    pub subnet: IpNet,
    /// Source of that packet.
    pub src: IpAddr,
    /// Destination of that packet.
    pub dst: IpAddr,
    /// When the kernel received the packet.
    #[serde(rename = "packet_time_unix_ns", with = "unix_nanos")]
    pub packet_time: SystemTime,
    /// When the callback returned: the mark rule is gone (or its removal failed, see
    /// `error`).
    #[serde(rename = "rule_gone_time_unix_ns", with = "unix_nanos")]
    pub rule_gone_time: SystemTime,
    /// `rule_gone_time - packet_time`: the window in which replies could still go the wrong
    /// way. The sum of `detection_delay` and `removal`.
    #[serde(rename = "latency_ns", with = "nanos")]
    pub latency: Duration,
    /// Packet received to packet recognised.
    #[serde(rename = "detection_delay_ns", with = "nanos")]
    pub detection_delay: Duration,
    /// Packet recognised to callback returned (the netlink transaction).
    #[serde(rename = "removal_ns", with = "nanos")]
    pub removal: Duration,
    /// Why removing the rule failed, if it did; the operator then runs `vmtun cutover`.
    pub error: Option<String>,
}

impl CutoverRecord {
    /// The record of `detection`, whose callback returned at `returned_at` (monotonic) with
    /// `error` (None on success).
    pub fn new(detection: &Detection, returned_at: Instant, error: Option<String>) -> Self {
        let detection_delay = detection.detection_delay();
        let removal = returned_at.saturating_duration_since(detection.detected_at);
        CutoverRecord {
            subnet: detection.subnet,
            src: detection.src,
            dst: detection.dst,
            packet_time: detection.captured_at,
            rule_gone_time: detection.detected_at_wall + removal,
            latency: detection_delay + removal,
            detection_delay,
            removal,
            error,
        }
    }
}

/// `SystemTime` as nanoseconds since the Unix epoch (u64: good until 2554).
pub(crate) mod unix_nanos {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        s.serialize_u64(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_nanos(u64::deserialize(d)?))
    }
}

/// `Duration` as whole nanoseconds.
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_nanos(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn record_splits_latency_into_detection_and_removal() {
        let t0 = Instant::now();
        let captured_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let detection = Detection {
            subnet: "203.0.113.0/29".parse().unwrap(),
            src: "198.18.0.2".parse().unwrap(),
            dst: "203.0.113.2".parse().unwrap(),
            captured_at,
            detected_at: t0,
            detected_at_wall: captured_at + Duration::from_micros(30),
        };
        let r = CutoverRecord::new(&detection, t0 + Duration::from_micros(45), None);
        assert_eq!(r.detection_delay, Duration::from_micros(30));
        assert_eq!(r.removal, Duration::from_micros(45));
        assert_eq!(r.latency, Duration::from_micros(75));
        assert_eq!(r.rule_gone_time, captured_at + Duration::from_micros(75));

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["subnet"], "203.0.113.0/29");
        assert_eq!(json["packet_time_unix_ns"], 1_700_000_000_000_000_000u64);
        assert_eq!(json["rule_gone_time_unix_ns"], 1_700_000_000_000_075_000u64);
        assert_eq!(json["latency_ns"], 75_000);
        assert_eq!(json["error"], serde_json::Value::Null);
        let back: CutoverRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_wall_clock_step_back_does_not_underflow() {
        let t0 = Instant::now();
        let captured_at = UNIX_EPOCH + Duration::from_secs(10);
        let detection = Detection {
            subnet: "203.0.113.0/29".parse().unwrap(),
            src: "198.18.0.2".parse().unwrap(),
            dst: "203.0.113.2".parse().unwrap(),
            captured_at,
            detected_at: t0,
            detected_at_wall: UNIX_EPOCH + Duration::from_secs(9),
        };
        let r = CutoverRecord::new(&detection, t0, Some("boom".into()));
        assert_eq!(r.latency, Duration::ZERO);
        assert_eq!(r.error.as_deref(), Some("boom"));
    }
}
