//! The watcher thread: waits on the bridge for each subnet's first native packet, calls the
//! rule-removal callback once per subnet, and keeps the records. It owns no netfilter code: the caller's callback
//! (netcfg's atomic removal of the mark rule) does that.

use std::fmt::Display;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::CutoverError;
use super::capture::{PacketSocket, Run, StopSignal, Wait};
use super::classify::{Classifier, Verdict};
use super::record::{CutoverRecord, Detection};

/// Where the automatic cutover stands, for `vmtun status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverStatus {
    /// Whether the watcher is still running, and how it ended.
    pub phase: Phase,
    /// One record per subnet cut over, in the order their first native packets came.
    pub records: Vec<CutoverRecord>,
    /// Subnets whose first native packet is still awaited.
    pub waiting: Vec<IpNet>,
}

/// The watcher's phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the first native packet of the subnets in `waiting`.
    Watching,
    /// Every subnet has had its first native packet and its callback (see each record's
    /// `error`).
    Done,
    /// Reading from the bridge failed; the rest of the cutover must be done by hand
    /// (`vmtun cutover`).
    Failed {
        /// What went wrong, naming the bridge.
        error: String,
    },
    /// Stopped before every subnet had cut over (shutdown, or a manual cutover).
    Stopped,
}

/// A running watcher on the new host's bridge. For each subnet it calls its callback once, on
/// the first native packet (IPv4 or IPv6, the subnet's family) received there for that
/// subnet, and ends its thread when all have cut over. (The provider may switch the subnets
/// at different times; each subnet's mark rule must stay until its own switch.)
///
/// Dropping it stops it too; [`stop`](Self::stop) also returns what happened.
#[derive(Debug)]
pub struct Watcher {
    bridge: String,
    stop: Arc<StopSignal>,
    status: Arc<Mutex<CutoverStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `bridge` for packets to `subnets`, IPv4 and IPv6 in any mix (role new,
    /// `cutover = "auto"`).
    ///
    /// The socket is opened here, in the calling thread's network namespace, so that a
    /// missing bridge or missing privilege is reported now. `on_native` runs on the watcher
    /// thread as soon as a subnet's first native packet is recognised, once per subnet; it
    /// should remove that subnet's mark rule and return. Its error is kept in the record.
    pub fn spawn<F, E>(
        bridge: &str,
        subnets: Vec<IpNet>,
        on_native: F,
    ) -> Result<Watcher, CutoverError>
    where
        F: FnMut(&Detection) -> Result<Instant, E> + Send + 'static,
        E: Display,
    {
        if subnets.is_empty() {
            return Err(CutoverError::NoSubnets);
        }
        let classifier = Classifier::new(subnets);
        let source = PacketSocket::open(bridge, &classifier, Wait::Stoppable)?;
        let stop = Arc::new(StopSignal::new().map_err(|source| CutoverError::Io {
            bridge: bridge.to_owned(),
            action: "creating the stop eventfd",
            source,
        })?);
        let status = Arc::new(Mutex::new(CutoverStatus {
            phase: Phase::Watching,
            records: Vec::new(),
            waiting: classifier.subnets().to_vec(),
        }));
        let thread = {
            let (name, stop, status) = (bridge.to_owned(), stop.clone(), status.clone());
            thread::Builder::new()
                .name(format!("cutover-{bridge}"))
                .spawn(move || {
                    let phase = watch(&name, source, classifier, &stop, &status, on_native);
                    lock(&status).phase = phase;
                })
                .map_err(|source| CutoverError::Io {
                    bridge: bridge.to_owned(),
                    action: "starting the watcher thread",
                    source,
                })?
        };
        tracing::info!(bridge, "cutover watcher started");
        Ok(Watcher {
            bridge: bridge.to_owned(),
            stop,
            status,
            thread: Some(thread),
        })
    }

    /// The bridge being watched.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Where the cutover stands now.
    pub fn status(&self) -> CutoverStatus {
        lock(&self.status).clone()
    }

    /// The records of the subnets cut over so far.
    pub fn records(&self) -> Vec<CutoverRecord> {
        lock(&self.status).records.clone()
    }

    /// Stops watching without waiting for a packet (a callback already running is waited
    /// for), and returns the final status.
    pub fn stop(mut self) -> CutoverStatus {
        self.shut_down();
        self.status()
    }

    fn shut_down(&mut self) {
        self.stop.raise();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            lock(&self.status).phase = Phase::Failed {
                error: format!(
                    "bridge {}: the cutover callback panicked; should never happen: please report",
                    self.bridge
                ),
            };
        }
        let mut status = lock(&self.status);
        if status.phase == Phase::Watching {
            status.phase = Phase::Stopped;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn lock(status: &Mutex<CutoverStatus>) -> MutexGuard<'_, CutoverStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The watcher thread's body: returns the phase it ends in.
fn watch<F, E>(
    bridge: &str,
    mut source: PacketSocket,
    mut classifier: Classifier,
    stop: &StopSignal,
    status: &Mutex<CutoverStatus>,
    mut on_native: F,
) -> Phase
where
    F: FnMut(&Detection) -> Result<Instant, E>,
    E: Display,
{
    loop {
        let found = source.run(stop, |frame| match classifier.verdict(frame.data) {
            Verdict::Native { subnet, src, dst } => Some(Detection {
                subnet,
                src,
                dst,
                captured_at: frame.captured_at,
                detected_at: Instant::now(),
                detected_at_wall: SystemTime::now(),
            }),
            other => {
                tracing::trace!(bridge, verdict = ?other, "frame is not a native packet");
                None
            }
        });
        let detection = match found {
            Ok(Run::Done(detection)) => detection,
            Ok(Run::Stopped) => return Phase::Stopped,
            Err(e) => return failed(bridge, &e),
        };
        // The callback says when the rule was gone: tearing down its netlink socket
        // afterwards costs milliseconds (an RCU grace period) that no reply waits for.
        let (gone_at, error) = match on_native(&detection) {
            Ok(at) => (at, None),
            Err(e) => (Instant::now(), Some(e.to_string())),
        };
        let record = CutoverRecord::new(&detection, gone_at, error);
        log(bridge, &record);
        classifier.stop_watching(detection.subnet);
        {
            let mut status = lock(status);
            status.records.push(record);
            status.waiting = classifier.subnets().to_vec();
        }
        if classifier.subnets().is_empty() {
            // The socket closes only now, after the callback: closing a packet socket waits
            // for an RCU grace period (synchronize_net), milliseconds no rule should wait.
            return Phase::Done;
        }
        // Packets for the subnet just cut over must stop waking us; if the kernel refuses the
        // new filter, the classifier still ignores them.
        if let Err(e) = source.update_filter(bridge, &classifier) {
            tracing::warn!(bridge, "narrowing the cutover filter: {e}");
        }
    }
}

fn log(bridge: &str, record: &CutoverRecord) {
    match &record.error {
        None => tracing::info!(
            bridge,
            subnet = %record.subnet,
            src = %record.src,
            dst = %record.dst,
            latency_us = record.latency.as_secs_f64() * 1e6,
            detection_us = record.detection_delay.as_secs_f64() * 1e6,
            removal_us = record.removal.as_secs_f64() * 1e6,
            "cutover: first native packet, mark rule removed"
        ),
        Some(error) => tracing::error!(
            bridge,
            subnet = %record.subnet,
            error,
            "cutover: first native packet, but removing the mark rule failed: run `vmtun cutover`"
        ),
    }
}

fn failed(bridge: &str, e: &io::Error) -> Phase {
    let error = format!("bridge {bridge}: reading packets: {e}; run `vmtun cutover` by hand");
    tracing::error!("{error}");
    Phase::Failed { error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_what_vmtun_status_prints() {
        let status = CutoverStatus {
            phase: Phase::Watching,
            records: Vec::new(),
            waiting: vec!["203.0.113.0/29".parse().unwrap()],
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"phase":"watching","records":[],"waiting":["203.0.113.0/29"]}"#
        );
        let failed = Phase::Failed {
            error: "bridge br0: reading packets: boom".into(),
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"failed":{"error":"bridge br0: reading packets: boom"}}"#
        );
    }
}
