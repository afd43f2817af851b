//! The pure analysis of a probe run: which phase each probe was sent in, whether it was
//! answered, through which of the core's links its reply came, and per phase the probes
//! sent and lost, the longest gap and where the replies left. No I/O, no clocks: times are
//! Unix nanoseconds recorded by [`super::probe`] and the scenario.
//!
//! Definitions (also in the demo's summary):
//! - A probe belongs to the phase in which the client *sent* it.
//! - *Lost*: no reply arrived before the run ended (the client waits a drain time after the
//!   last probe).
//! - *Longest gap*: the longest run of consecutive lost probes in the phase, from the send
//!   time of its first lost probe to the send time of the next answered probe (at a steady
//!   rate: lost count × interval). 0 when nothing was lost. It is the downtime a client saw.
//! - *Via old / via new*: the core stamps each reply from the VM subnet with the link it
//!   arrived on (DSCP CS1 from the old host, CS2 from the new host); the client reads the
//!   stamp.

use serde::Serialize;

/// Which of the core's links a reply came in on, read from the DSCP stamp the core set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// From the old host (DSCP CS1).
    Old,
    /// From the new host (DSCP CS2).
    New,
    /// No stamp the core sets (a bug in the lab, or a reply that bypassed the core).
    Unknown,
}

/// TOS byte of DSCP CS1 (RFC 4594 class selector 1, `8 << 2`): the core's stamp on replies
/// that came from the old host.
pub const TOS_VIA_OLD: u8 = 8 << 2;
/// TOS byte of DSCP CS2 (`16 << 2`): replies that came from the new host.
pub const TOS_VIA_NEW: u8 = 16 << 2;

impl Via {
    /// The link a TOS byte names (ECN bits ignored).
    pub fn from_tos(tos: u8) -> Self {
        match tos & !0b11 {
            TOS_VIA_OLD => Via::Old,
            TOS_VIA_NEW => Via::New,
            _ => Via::Unknown,
        }
    }
}

/// A reply the client received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// When it arrived (Unix ns).
    pub received_ns: u64,
    /// Which core link it came through.
    pub via: Via,
}

/// One phase of the run, from `start_ns` to the next phase's start (the last one to the end
/// of probing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseMark {
    /// Short name, e.g. `after_move`.
    pub name: String,
    /// When it began (Unix ns).
    pub start_ns: u64,
}

/// Figures of one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseStats {
    /// The phase's name.
    pub name: String,
    /// Start, milliseconds after the first probe.
    pub start_ms: f64,
    /// Length in milliseconds.
    pub duration_ms: f64,
    /// Probes sent in the phase.
    pub sent: u64,
    /// Of those, answered.
    pub received: u64,
    /// Of those, never answered.
    pub lost: u64,
    /// The longest run of lost probes, in ms (see the module docs).
    pub longest_gap_ms: f64,
    /// Replies that came through the old host's link.
    pub replies_via_old: u64,
    /// Replies that came through the new host's link.
    pub replies_via_new: u64,
    /// Replies without a known stamp (should be 0).
    pub replies_via_unknown: u64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Splits a run into phases and computes their figures. `sent_ns[i]` is when probe `i` was
/// sent, `replies[i]` its reply if any (same length); `phases` in time order; `end_ns` when
/// probing stopped; `interval_ns` the probe interval (closes a loss run that lasts to the
/// end).
pub fn phase_stats(
    sent_ns: &[u64],
    replies: &[Option<Reply>],
    phases: &[PhaseMark],
    end_ns: u64,
    interval_ns: u64,
) -> Vec<PhaseStats> {
    let origin = sent_ns.first().copied().unwrap_or(end_ns);
    let count = sent_ns.len().min(replies.len());
    phases
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let end = phases.get(i + 1).map_or(end_ns, |next| next.start_ns);
            let first = sent_ns[..count].partition_point(|&t| t < phase.start_ns);
            let last = sent_ns[..count].partition_point(|&t| t < end);
            let mut stats = PhaseStats {
                name: phase.name.clone(),
                start_ms: ms(phase.start_ns.saturating_sub(origin)),
                duration_ms: ms(end.saturating_sub(phase.start_ns)),
                sent: (last - first) as u64,
                received: 0,
                lost: 0,
                longest_gap_ms: 0.0,
                replies_via_old: 0,
                replies_via_new: 0,
                replies_via_unknown: 0,
            };
            let mut run_start: Option<usize> = None;
            for seq in first..last {
                match replies[seq] {
                    Some(reply) => {
                        stats.received += 1;
                        match reply.via {
                            Via::Old => stats.replies_via_old += 1,
                            Via::New => stats.replies_via_new += 1,
                            Via::Unknown => stats.replies_via_unknown += 1,
                        }
                        if let Some(start) = run_start.take() {
                            let gap = sent_ns[seq].saturating_sub(sent_ns[start]);
                            stats.longest_gap_ms = stats.longest_gap_ms.max(ms(gap));
                        }
                    }
                    None => {
                        stats.lost += 1;
                        run_start.get_or_insert(seq);
                    }
                }
            }
            if let Some(start) = run_start {
                // The run lasts into a later phase (or to the end): close it at the next
                // answered probe, wherever that is.
                let close = (last..count)
                    .find(|&seq| replies[seq].is_some())
                    .map_or_else(
                        || sent_ns[count - 1].saturating_add(interval_ns),
                        |seq| sent_ns[seq],
                    );
                let gap = close.saturating_sub(sent_ns[start]);
                stats.longest_gap_ms = stats.longest_gap_ms.max(ms(gap));
            }
            stats
        })
        .collect()
}

/// A run of consecutive lost probes: an outage the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LossRun {
    /// Send time of its first lost probe (Unix ns).
    pub start_ns: u64,
    /// Send time of the next answered probe (or the end of probing).
    pub end_ns: u64,
    /// How many probes were lost.
    pub lost: u64,
}

/// Every run of at least `min_lost` consecutive lost probes, in order; a run lasting to the
/// end is closed at the last send time plus `interval_ns`.
pub fn loss_runs(
    sent_ns: &[u64],
    replies: &[Option<Reply>],
    min_lost: u64,
    interval_ns: u64,
) -> Vec<LossRun> {
    let count = sent_ns.len().min(replies.len());
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    for seq in 0..count {
        match (replies[seq], start) {
            (None, None) => start = Some(seq),
            (Some(_), Some(first)) => {
                runs.push(LossRun {
                    start_ns: sent_ns[first],
                    end_ns: sent_ns[seq],
                    lost: (seq - first) as u64,
                });
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        runs.push(LossRun {
            start_ns: sent_ns[first],
            end_ns: sent_ns[count - 1].saturating_add(interval_ns),
            lost: (count - first) as u64,
        });
    }
    runs.retain(|run| run.lost >= min_lost);
    runs
}

/// Replies that came through the old host to probes sent at or after `from_ns`: after the
/// provider switch, the replies the VM sent the wrong way (through the tunnel, out of the
/// old site) although its requests arrived natively at the new host.
pub fn replies_via_old_since(sent_ns: &[u64], replies: &[Option<Reply>], from_ns: u64) -> u64 {
    let first = sent_ns.partition_point(|&t| t < from_ns);
    replies
        .iter()
        .skip(first)
        .filter(|reply| matches!(reply, Some(r) if r.via == Via::Old))
        .count() as u64
}

/// Probes sent from `from_ns` (inclusive) until `until_ns` (exclusive) that were never
/// answered: with a real VM, the probes lost once the guest ran again on the new host.
pub fn lost_between(
    sent_ns: &[u64],
    replies: &[Option<Reply>],
    from_ns: u64,
    until_ns: u64,
) -> u64 {
    let count = sent_ns.len().min(replies.len());
    let first = sent_ns[..count].partition_point(|&t| t < from_ns);
    let last = sent_ns[..count].partition_point(|&t| t < until_ns);
    replies[first..last.max(first)]
        .iter()
        .filter(|reply| reply.is_none())
        .count() as u64
}

/// The first probe sent at or after `from_ns`, if any: (sequence number, send time).
pub fn first_probe_since(sent_ns: &[u64], from_ns: u64) -> Option<(u64, u64)> {
    let seq = sent_ns.partition_point(|&t| t < from_ns);
    sent_ns.get(seq).map(|&t| (seq as u64, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn reply(via: Via) -> Option<Reply> {
        Some(Reply {
            received_ns: 0,
            via,
        })
    }

    fn mark(name: &str, start_ns: u64) -> PhaseMark {
        PhaseMark {
            name: name.into(),
            start_ns,
        }
    }

    #[test]
    fn tos_stamps_name_the_link() {
        assert_eq!(Via::from_tos(0x20), Via::Old);
        assert_eq!(Via::from_tos(0x22), Via::Old); // ECN bits do not matter
        assert_eq!(Via::from_tos(0x40), Via::New);
        assert_eq!(Via::from_tos(0), Via::Unknown);
    }

    #[test]
    fn phases_count_loss_gap_and_links() {
        // 10 probes 1 ms apart; 3..=5 lost (a 3 ms gap), phase b starts at probe 4.
        let sent: Vec<u64> = (0..10).map(|i| 1_000 * MS + i * MS).collect();
        let mut replies = vec![reply(Via::Old); 10];
        for r in &mut replies[3..6] {
            *r = None;
        }
        for r in &mut replies[6..] {
            *r = reply(Via::New);
        }
        let phases = [mark("a", sent[0]), mark("b", sent[4])];
        let stats = phase_stats(&sent, &replies, &phases, sent[9] + MS, MS);
        assert_eq!(stats[0].sent, 4);
        assert_eq!(stats[0].lost, 1);
        // The run starting at probe 3 lasts until probe 6 answers.
        assert_eq!(stats[0].longest_gap_ms, 3.0);
        assert_eq!(stats[0].replies_via_old, 3);
        assert_eq!(stats[1].sent, 6);
        assert_eq!(stats[1].lost, 2);
        assert_eq!(stats[1].longest_gap_ms, 2.0);
        assert_eq!(stats[1].replies_via_new, 4);
        assert_eq!(stats[1].start_ms, 4.0);
    }

    #[test]
    fn no_loss_means_no_gap_and_loss_to_the_end_is_closed() {
        let sent: Vec<u64> = (0..5).map(|i| i * MS).collect();
        let replies = vec![reply(Via::Old), reply(Via::Old), None, None, None];
        let stats = phase_stats(&sent, &replies, &[mark("all", 0)], 5 * MS, MS);
        assert_eq!(stats[0].lost, 3);
        assert_eq!(stats[0].longest_gap_ms, 3.0);
        let all_answered = vec![reply(Via::New); 5];
        let stats = phase_stats(&sent, &all_answered, &[mark("all", 0)], 5 * MS, MS);
        assert_eq!(stats[0].longest_gap_ms, 0.0);
        assert_eq!(stats[0].received, 5);
    }

    #[test]
    fn loss_runs_are_found_and_filtered() {
        let sent: Vec<u64> = (0..8).map(|i| i * MS).collect();
        let r = reply(Via::Old);
        let replies = vec![r, None, r, None, None, None, r, None];
        let runs = loss_runs(&sent, &replies, 2, MS);
        assert_eq!(
            runs,
            vec![LossRun {
                start_ns: 3 * MS,
                end_ns: 6 * MS,
                lost: 3
            }]
        );
        let all = loss_runs(&sent, &replies, 1, MS);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].end_ns, 8 * MS);
    }

    #[test]
    fn wrong_way_replies_count_only_after_the_switch() {
        let sent: Vec<u64> = (0..6).map(|i| i * MS).collect();
        let replies = vec![
            reply(Via::Old),
            reply(Via::Old),
            reply(Via::Old),
            reply(Via::New),
            reply(Via::Old),
            None,
        ];
        assert_eq!(replies_via_old_since(&sent, &replies, 2 * MS), 2);
        assert_eq!(first_probe_since(&sent, 2 * MS + 1), Some((3, 3 * MS)));
        assert_eq!(first_probe_since(&sent, 10 * MS), None);
    }

    #[test]
    fn losses_are_counted_in_a_window_of_send_times() {
        let sent: Vec<u64> = (0..8).map(|i| i * MS).collect();
        let r = reply(Via::New);
        let replies = vec![None, None, r, None, r, None, None, r];
        assert_eq!(lost_between(&sent, &replies, 0, 8 * MS), 5);
        // From probe 2 (inclusive) to probe 6 (exclusive): 3 and 5 lost.
        assert_eq!(lost_between(&sent, &replies, 2 * MS, 6 * MS), 2);
        assert_eq!(lost_between(&sent, &replies, 2 * MS - 1, 2 * MS), 0);
        assert_eq!(lost_between(&sent, &replies, 6 * MS, 2 * MS), 0);
        assert_eq!(lost_between(&sent, &replies[..1], 0, 8 * MS), 1);
    }
}
