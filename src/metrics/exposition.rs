//! A [`Status`] snapshot as Prometheus metrics, in the text exposition format (version
//! 0.0.4). Pure: the snapshot and the wall clock go in, text comes out; prometheus-client's
//! encoder writes the format (names, `_total`, label escaping). Every family is listed in
//! [`FAMILIES`], and README "Metrics" shows a sample.
//!
//! Counters are the status counters as they are (they only grow while `vmtun up` runs);
//! what `status` shows as an age becomes a Unix timestamp, so that it does not change from
//! one scrape to the next unless a new handshake happens (`time() - x` is the age). Each
//! state (the migration's role, the cutover watcher's phase) is a gauge per state, 1 for
//! the current one and 0 for the others, the usual form of a state set in this format.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::Role;
use crate::cutover::Phase;
use crate::migration::MigrationStatus;
use crate::status::{PeerStatus, Status};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every family's exposed name (counters with the `_total` the encoder adds). The
/// restores appear when `up` runs its restore monitor (always), the migration's
/// families only with `[migration]`, the cutover's only on role new.
pub const FAMILIES: [&str; 20] = [
    "vmtun_info",
    "vmtun_dropped_packets_total",
    "vmtun_busy_poll_window_seconds",
    "vmtun_busy_poll_spun_seconds_total",
    "vmtun_busy_poll_caught_wakeups_total",
    "vmtun_busy_poll_over_budget_spins_total",
    "vmtun_restores_total",
    "vmtun_peer_rx_bytes_total",
    "vmtun_peer_tx_bytes_total",
    "vmtun_peer_rx_packets_total",
    "vmtun_peer_tx_packets_total",
    "vmtun_peer_last_handshake_timestamp_seconds",
    "vmtun_peer_dropped_packets_total",
    "vmtun_migration_role",
    "vmtun_migration_subnet_switched",
    "vmtun_cutover_phase",
    "vmtun_cutover_latency_seconds",
    "vmtun_cutover_detection_seconds",
    "vmtun_cutover_timestamp_seconds",
    "vmtun_cutover_manual_timestamp_seconds",
];

/// The cutover watcher's phases as `vmtun_cutover_phase` names them; `off` is
/// `cutover = "manual"` (no watcher).
const PHASES: [&str; 5] = ["off", "watching", "done", "stopped", "failed"];

/// The exposition of `status`, taken at wall-clock time `now`.
pub fn render(status: Status, now: SystemTime) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { status, now }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One scrape's snapshot, as prometheus-client's collector of metrics made at scrape time.
#[derive(Debug)]
struct Snapshot {
    status: Status,
    now: SystemTime,
}

/// A series' labels: name and value.
type Labels = Vec<(&'static str, String)>;

/// One family to write: its type, name (counters without `_total`), help and series.
struct Family<V> {
    kind: MetricType,
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, V)>,
}

impl<V: EncodeCounterValue + EncodeGaugeValue> Family<V> {
    fn counter(name: &'static str, help: &'static str, series: Vec<(Labels, V)>) -> Self {
        Self {
            kind: MetricType::Counter,
            name,
            help,
            series,
        }
    }

    fn gauge(name: &'static str, help: &'static str, series: Vec<(Labels, V)>) -> Self {
        Self {
            kind: MetricType::Gauge,
            name,
            help,
            series,
        }
    }

    /// Writes the family; nothing at all when it has no series (say, no cutover yet).
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        if self.series.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, value) in &self.series {
            let mut one = metric.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => one.encode_counter::<NoLabelSet, _, u64>(value, None)?,
                _ => one.encode_gauge(value)?,
            }
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.status;
        let b = &s.busy_poll;
        let identity = vec![
            ("interface", s.interface.clone()),
            ("public_key", s.public_key.clone()),
            ("listen_port", s.listen_port.to_string()),
        ];
        Family::gauge(
            "vmtun_info",
            "This instance: its TUN device, public key and UDP port (always 1).",
            vec![(identity, 1u64)],
        )
        .encode(&mut encoder)?;
        Family::counter(
            "vmtun_dropped_packets",
            "Datagrams dropped before they could be tied to a peer, and local send or write failures, by reason.",
            by_reason(Vec::new(), &s.drops),
        )
        .encode(&mut encoder)?;
        Family::gauge(
            "vmtun_busy_poll_window_seconds",
            "How long the data path keeps polling after traffic before it sleeps (busy_poll_us; 0: off).",
            vec![(Vec::new(), b.window_us as f64 / 1e6)],
        )
        .encode(&mut encoder)?;
        Family::counter(
            "vmtun_busy_poll_spun_seconds",
            "Wall time the data path spent busy polling: its CPU cost.",
            vec![(Vec::new(), b.spun_ms / 1e3)],
        )
        .encode(&mut encoder)?;
        Family::counter(
            "vmtun_busy_poll_caught_wakeups",
            "Busy polls that ended with traffic: wake-ups of a sleeping thread saved.",
            vec![(Vec::new(), b.caught)],
        )
        .encode(&mut encoder)?;
        Family::counter(
            "vmtun_busy_poll_over_budget_spins",
            "Busy polls cut short by the CPU budget (10 % of a core).",
            vec![(Vec::new(), b.over_budget)],
        )
        .encode(&mut encoder)?;
        if let Some(r) = &s.restore {
            Family::counter(
                "vmtun_restores",
                "Times vmtun put back host changes of its own that another program had removed.",
                vec![(Vec::new(), r.restores)],
            )
            .encode(&mut encoder)?;
        }
        self.encode_peers(&mut encoder)?;
        if let Some(m) = &s.migration {
            encode_migration(m, &mut encoder)?;
        }
        Ok(())
    }
}

impl Snapshot {
    fn encode_peers(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let peers = &self.status.peers;
        let per_peer = |value: fn(&PeerStatus) -> u64| {
            peers
                .iter()
                .map(|p| (peer(p), value(p)))
                .collect::<Vec<_>>()
        };
        Family::counter(
            "vmtun_peer_rx_bytes",
            "Bytes of authenticated WireGuard messages received from the peer (data, keepalives, handshakes), as on the wire.",
            per_peer(|p| p.rx_bytes),
        )
        .encode(encoder)?;
        Family::counter(
            "vmtun_peer_tx_bytes",
            "Bytes of WireGuard messages sent to the peer (data, keepalives, handshakes), as on the wire.",
            per_peer(|p| p.tx_bytes),
        )
        .encode(encoder)?;
        Family::counter(
            "vmtun_peer_rx_packets",
            "Data packets received from the peer and delivered to the TUN device.",
            per_peer(|p| p.rx_packets),
        )
        .encode(encoder)?;
        Family::counter(
            "vmtun_peer_tx_packets",
            "Data packets sent to the peer.",
            per_peer(|p| p.tx_packets),
        )
        .encode(encoder)?;
        let now = unix_seconds(self.now);
        Family::gauge(
            "vmtun_peer_last_handshake_timestamp_seconds",
            "Unix time of the last completed handshake with the peer; 0: never.",
            peers
                .iter()
                .map(|p| {
                    let at = p.last_handshake_secs.map_or(0.0, |age| now - age);
                    (peer(p), at)
                })
                .collect(),
        )
        .encode(encoder)?;
        Family::counter(
            "vmtun_peer_dropped_packets",
            "Packets from or for the peer that were dropped, by reason.",
            peers
                .iter()
                .flat_map(|p| by_reason(peer(p), &p.drops))
                .collect(),
        )
        .encode(encoder)
    }
}

fn encode_migration(m: &MigrationStatus, encoder: &mut DescriptorEncoder) -> fmt::Result {
    Family::gauge(
        "vmtun_migration_role",
        "This host's side of the move: 1 for its role (old: the VMs leave; new: they arrive).",
        [(Role::Old, "old"), (Role::New, "new")]
            .into_iter()
            .map(|(role, name)| (vec![("role", name.to_string())], u64::from(m.role == role)))
            .collect(),
    )
    .encode(encoder)?;
    Family::gauge(
        "vmtun_migration_subnet_switched",
        "1 once the provider's switch of the subnet is known here: on role new its first native packet arrived, on role old the new host reported it.",
        m.subnets
            .iter()
            .map(|net| {
                let switched = match m.role {
                    Role::Old => m.switched_subnets.contains(&net.network()),
                    Role::New => {
                        m.native_subnets.contains(&net.network())
                            || m.cut_over_before.contains(net)
                            || (m.cutover.iter())
                                .any(|c| c.records.iter().any(|r| r.subnet == *net))
                    }
                };
                (vec![("subnet", net.to_string())], u64::from(switched))
            })
            .collect(),
    )
    .encode(encoder)?;
    if m.role != Role::New {
        return Ok(());
    }
    let current = match m.cutover.as_ref().map(|c| &c.phase) {
        None => "off",
        Some(Phase::Watching) => "watching",
        Some(Phase::Done) => "done",
        Some(Phase::Stopped) => "stopped",
        Some(Phase::Failed { .. }) => "failed",
    };
    Family::gauge(
        "vmtun_cutover_phase",
        "The cutover watcher on the bridge: 1 for its phase (off: cutover = \"manual\"; failed: run vmtun cutover).",
        PHASES
            .into_iter()
            .map(|phase| {
                (
                    vec![("phase", phase.to_string())],
                    u64::from(phase == current),
                )
            })
            .collect(),
    )
    .encode(encoder)?;
    let records = m.cutover.iter().flat_map(|c| &c.records);
    let per_subnet = |value: &dyn Fn(&crate::cutover::CutoverRecord) -> f64| {
        records
            .clone()
            .map(|r| (vec![("subnet", r.subnet.to_string())], value(r)))
            .collect::<Vec<_>>()
    };
    Family::gauge(
        "vmtun_cutover_latency_seconds",
        "From the subnet's first native packet on the bridge to the mark rule gone: how long replies could still leave the wrong way.",
        per_subnet(&|r| r.latency.as_secs_f64()),
    )
    .encode(encoder)?;
    Family::gauge(
        "vmtun_cutover_detection_seconds",
        "The part of the cutover latency from the packet's arrival to the watcher recognising it.",
        per_subnet(&|r| r.detection_delay.as_secs_f64()),
    )
    .encode(encoder)?;
    Family::gauge(
        "vmtun_cutover_timestamp_seconds",
        "Unix time the subnet's first native packet arrived on the bridge.",
        per_subnet(&|r| unix_seconds(r.packet_time)),
    )
    .encode(encoder)?;
    Family::gauge(
        "vmtun_cutover_manual_timestamp_seconds",
        "Unix time of the last manual cutover (vmtun cutover).",
        (m.manual_cutover.iter())
            .map(|c| (Vec::new(), unix_seconds(c.at)))
            .collect(),
    )
    .encode(encoder)
}

/// The `peer` label: the peer's public key.
fn peer(p: &PeerStatus) -> Labels {
    vec![("peer", p.public_key.clone())]
}

/// One series per drop reason, each with `labels` and its `reason`.
fn by_reason(
    labels: Labels,
    drops: &std::collections::BTreeMap<String, u64>,
) -> Vec<(Labels, u64)> {
    drops
        .iter()
        .map(|(reason, n)| {
            let mut l = labels.clone();
            l.push(("reason", reason.clone()));
            (l, *n)
        })
        .collect()
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    use crate::cutover::{CutoverRecord, CutoverStatus};
    use crate::migration::ManualCutover;
    use crate::status::BusyPollStatus;

    const KEY_B: &str = "iWKYv7pT7ZuSkFd2Wk8CeV3K5nrtJbJlghcg6KImhH0=";
    const KEY_C: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

    fn at(unix_secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(unix_secs)
    }

    fn drops(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    fn peer(key: &str, handshake: Option<f64>, n: u64) -> PeerStatus {
        PeerStatus {
            public_key: key.into(),
            endpoint: Some("198.18.0.2:51820".into()),
            allowed_ips: vec!["0.0.0.0/0".into()],
            last_handshake_secs: handshake,
            rx_bytes: n,
            tx_bytes: n + 1,
            rx_packets: n + 2,
            tx_packets: n + 3,
            drops: drops(&[("replay", n + 4), ("decrypt_failed", 0)]),
        }
    }

    /// A new host mid-move: two peers (one never shaken hands), the watcher done with one
    /// subnet, another subnet still waiting, and a manual cutover after it.
    fn new_host() -> Status {
        let subnet = "203.0.113.0/29".parse().unwrap();
        let record = CutoverRecord {
            subnet,
            src: "198.18.0.9".parse().unwrap(),
            dst: "203.0.113.2".parse().unwrap(),
            packet_time: at(1_700_000_000.5),
            rule_gone_time: at(1_700_000_000.500254),
            latency: Duration::from_micros(254),
            detection_delay: Duration::from_micros(69),
            removal: Duration::from_micros(185),
            error: None,
        };
        Status {
            interface: "vmtun0".into(),
            public_key: "HW8IEmprqYyqCzMIhqX68QZNvZPNZDAj88CdO6RD0l4=".into(),
            listen_port: 51820,
            peers: vec![peer(KEY_B, Some(5.0), 1000), peer(KEY_C, None, 0)],
            drops: drops(&[("no_route", 2), ("udp_send_failed", 0)]),
            busy_poll: BusyPollStatus {
                window_us: 200,
                spun_ms: 341.25,
                caught: 5535,
                over_budget: 7,
            },
            restore: Some(crate::restore::RestoreStatus {
                restores: 3,
                ..Default::default()
            }),
            migration: Some(MigrationStatus {
                role: Role::New,
                subnets: vec![subnet, "198.51.100.0/29".parse().unwrap()],
                cutover: Some(CutoverStatus {
                    phase: Phase::Stopped,
                    records: vec![record],
                    waiting: vec!["198.51.100.0/29".parse().unwrap()],
                }),
                manual_cutover: Some(ManualCutover {
                    at: at(1_700_000_100.0),
                    removed: vec!["198.51.100.0/29".parse().unwrap()],
                    commit_ns: 90_000,
                }),
                native_subnets: Vec::new(),
                switched_subnets: Vec::new(),
                handed_over: Vec::new(),
                cut_over_before: Vec::new(),
            }),
        }
    }

    /// The samples of an exposition, `name{labels}` to value, and the families it declares
    /// (`# TYPE` lines), checking every line's shape on the way.
    fn parse(text: &str) -> (HashMap<String, f64>, Vec<String>) {
        let mut samples = HashMap::new();
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').expect(line);
                let value: f64 = value.parse().expect(line);
                assert!(
                    samples.insert(series.to_string(), value).is_none(),
                    "{line}"
                );
            }
        }
        (samples, families)
    }

    #[test]
    fn every_family_is_there_with_the_status_values() {
        let now = at(1_700_000_200.0);
        let text = render(new_host(), now).unwrap();
        let (samples, families) = parse(&text);
        assert_eq!(families, FAMILIES, "{text}");
        let value = |series: &str| {
            *samples
                .get(series)
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let b = |name: &str| format!("{name}{{peer=\"{KEY_B}\"}}");
        assert_eq!(value(&b("vmtun_peer_rx_bytes_total")), 1000.0);
        assert_eq!(value(&b("vmtun_peer_tx_bytes_total")), 1001.0);
        assert_eq!(value(&b("vmtun_peer_rx_packets_total")), 1002.0);
        assert_eq!(value(&b("vmtun_peer_tx_packets_total")), 1003.0);
        assert_eq!(
            value(&b("vmtun_peer_last_handshake_timestamp_seconds")),
            1_700_000_195.0
        );
        assert_eq!(
            value(&format!(
                "vmtun_peer_last_handshake_timestamp_seconds{{peer=\"{KEY_C}\"}}"
            )),
            0.0,
            "never"
        );
        assert_eq!(
            value(&format!(
                "vmtun_peer_dropped_packets_total{{peer=\"{KEY_B}\",reason=\"replay\"}}"
            )),
            1004.0
        );
        assert_eq!(
            value(&format!(
                "vmtun_peer_dropped_packets_total{{peer=\"{KEY_C}\",reason=\"decrypt_failed\"}}"
            )),
            0.0
        );
        assert_eq!(
            value("vmtun_dropped_packets_total{reason=\"no_route\"}"),
            2.0
        );
        assert_eq!(
            value("vmtun_dropped_packets_total{reason=\"udp_send_failed\"}"),
            0.0
        );
        assert_eq!(
            value(
                "vmtun_info{interface=\"vmtun0\",public_key=\"HW8IEmprqYyqCzMIhqX68QZNvZPNZDAj88CdO6RD0l4=\",listen_port=\"51820\"}"
            ),
            1.0
        );
        assert_eq!(value("vmtun_busy_poll_window_seconds"), 0.0002);
        assert_eq!(value("vmtun_busy_poll_spun_seconds_total"), 0.34125);
        assert_eq!(value("vmtun_busy_poll_caught_wakeups_total"), 5535.0);
        assert_eq!(value("vmtun_busy_poll_over_budget_spins_total"), 7.0);
        assert_eq!(value("vmtun_migration_role{role=\"new\"}"), 1.0);
        assert_eq!(value("vmtun_migration_role{role=\"old\"}"), 0.0);
        assert_eq!(
            value("vmtun_migration_subnet_switched{subnet=\"203.0.113.0/29\"}"),
            1.0,
            "the watcher recorded it"
        );
        assert_eq!(
            value("vmtun_migration_subnet_switched{subnet=\"198.51.100.0/29\"}"),
            0.0,
            "a manual cutover is not the provider's switch"
        );
        for phase in PHASES {
            let expected = if phase == "stopped" { 1.0 } else { 0.0 };
            assert_eq!(
                value(&format!("vmtun_cutover_phase{{phase=\"{phase}\"}}")),
                expected
            );
        }
        let cut = |name: &str| value(&format!("{name}{{subnet=\"203.0.113.0/29\"}}"));
        assert_eq!(cut("vmtun_cutover_latency_seconds"), 0.000254);
        assert_eq!(cut("vmtun_cutover_detection_seconds"), 0.000069);
        assert_eq!(cut("vmtun_cutover_timestamp_seconds"), 1_700_000_000.5);
        assert_eq!(
            value("vmtun_cutover_manual_timestamp_seconds"),
            1_700_000_100.0
        );
        assert!(
            text.contains("# TYPE vmtun_peer_rx_bytes_total counter\n")
                && text.contains("# TYPE vmtun_cutover_latency_seconds gauge\n"),
            "{text}"
        );
    }

    #[test]
    fn peer_keys_are_escaped_in_labels() {
        let mut status = new_host();
        status.peers[0].public_key = "a\"b\\c\nd".into();
        let text = render(status, at(1_700_000_200.0)).unwrap();
        assert!(
            text.contains("vmtun_peer_rx_bytes_total{peer=\"a\\\"b\\\\c\\nd\"} 1000\n"),
            "{text}"
        );
        parse(&text);
    }

    #[test]
    fn the_kernel_flip_counts_as_switched_and_manual_mode_shows_the_watcher_off() {
        let mut status = new_host();
        let m = status.migration.as_mut().unwrap();
        m.cutover = None;
        m.manual_cutover = None;
        m.native_subnets = vec!["198.51.100.0".parse().unwrap()];
        let (samples, families) = parse(&render(status, at(0.0)).unwrap());
        assert_eq!(samples["vmtun_cutover_phase{phase=\"off\"}"], 1.0);
        assert_eq!(
            samples["vmtun_migration_subnet_switched{subnet=\"198.51.100.0/29\"}"],
            1.0
        );
        assert_eq!(
            samples["vmtun_migration_subnet_switched{subnet=\"203.0.113.0/29\"}"],
            0.0
        );
        assert!(
            !families
                .iter()
                .any(|f| f == "vmtun_cutover_latency_seconds")
        );
    }

    #[test]
    fn role_old_shows_the_reported_switches_and_no_cutover() {
        let mut status = new_host();
        let m = status.migration.as_mut().unwrap();
        m.role = Role::Old;
        m.cutover = None;
        m.manual_cutover = None;
        m.switched_subnets = vec!["203.0.113.0".parse().unwrap()];
        let text = render(status, at(0.0)).unwrap();
        let (samples, _) = parse(&text);
        assert_eq!(samples["vmtun_migration_role{role=\"old\"}"], 1.0);
        assert_eq!(
            samples["vmtun_migration_subnet_switched{subnet=\"203.0.113.0/29\"}"],
            1.0
        );
        assert_eq!(
            samples["vmtun_migration_subnet_switched{subnet=\"198.51.100.0/29\"}"],
            0.0
        );
        assert!(!text.contains("vmtun_cutover_"), "{text}");
    }

    #[test]
    fn a_plain_tunnel_has_no_migration_families() {
        let mut status = new_host();
        status.migration = None;
        let (_, families) = parse(&render(status, at(0.0)).unwrap());
        assert_eq!(families, FAMILIES[..13]);
    }
}
