//! The watcher thread: waits on the bridge for the first native packet, calls the rule-removal
//! callback once, and keeps the record. It owns no netfilter code: the caller's callback
//! (netcfg's atomic removal of the mark rule) does that.

use std::fmt::Display;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::CutoverError;
use super::capture::{PacketSocket, Run, StopSignal, Wait};
use super::classify::{Classifier, Verdict};
use super::record::{CutoverRecord, Detection};

/// Where the automatic cutover stands, for `vmtun status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CutoverState {
    /// Waiting for the first native packet on the bridge.
    Watching,
    /// The first native packet came and the callback ran (see the record's `error`).
    Done(CutoverRecord),
    /// Reading from the bridge failed; the cutover must be done by hand (`vmtun cutover`).
    Failed {
        /// What went wrong, naming the bridge.
        error: String,
    },
    /// Stopped before any native packet came (shutdown, or a manual cutover).
    Stopped,
}

/// A running watcher on the new host's bridge. It calls its callback at most once, on the
/// first IPv4 packet received there for one of the subnets, then ends its thread.
///
/// Dropping it stops it too; [`stop`](Self::stop) also returns what happened.
#[derive(Debug)]
pub struct Watcher {
    bridge: String,
    stop: Arc<StopSignal>,
    state: Arc<Mutex<CutoverState>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `bridge` for packets to `subnets` (role new, `cutover = "auto"`).
    ///
    /// The socket is opened here, in the calling thread's network namespace, so that a
    /// missing bridge or missing privilege is reported now. `on_native` runs on the watcher
    /// thread as soon as the first native packet is recognised; it should remove the mark rule
    /// and return; its error is kept in the record.
    pub fn spawn<F, E>(
        bridge: &str,
        subnets: Vec<Ipv4Net>,
        on_native: F,
    ) -> Result<Watcher, CutoverError>
    where
        F: FnOnce(&Detection) -> Result<(), E> + Send + 'static,
        E: Display,
    {
        if subnets.is_empty() {
            return Err(CutoverError::NoSubnets);
        }
        let classifier = Classifier::new(subnets);
        let source = PacketSocket::open(bridge, &classifier, Wait::Stoppable)?;
        let io_error = |action, source| CutoverError::Io {
            bridge: bridge.to_owned(),
            action,
            source,
        };
        let stop =
            Arc::new(StopSignal::new().map_err(|e| io_error("creating the stop eventfd", e))?);
        let state = Arc::new(Mutex::new(CutoverState::Watching));
        let thread = {
            let (bridge, stop, state) = (bridge.to_owned(), stop.clone(), state.clone());
            thread::Builder::new()
                .name(format!("cutover-{bridge}"))
                .spawn(move || {
                    let end = watch(&bridge, source, &classifier, &stop, on_native);
                    *state.lock().unwrap_or_else(PoisonError::into_inner) = end;
                })
                .map_err(|e| io_error("starting the watcher thread", e))?
        };
        tracing::info!(bridge, "cutover watcher started");
        Ok(Watcher {
            bridge: bridge.to_owned(),
            stop,
            state,
            thread: Some(thread),
        })
    }

    /// The bridge being watched.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Where the cutover stands now.
    pub fn state(&self) -> CutoverState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The record, once the callback has returned.
    pub fn record(&self) -> Option<CutoverRecord> {
        match self.state() {
            CutoverState::Done(record) => Some(record),
            _ => None,
        }
    }

    /// Stops watching without waiting for a packet (a callback already running is waited
    /// for), and returns the final state.
    pub fn stop(mut self) -> CutoverState {
        self.shut_down();
        self.state()
    }

    fn shut_down(&mut self) {
        self.stop.raise();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            *self.state.lock().unwrap_or_else(PoisonError::into_inner) = CutoverState::Failed {
                error: format!(
                    "bridge {}: the cutover callback panicked; should never happen: please report",
                    self.bridge
                ),
            };
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state == CutoverState::Watching {
            *state = CutoverState::Stopped;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The watcher thread's body: returns the state it ends in.
fn watch<F, E>(
    bridge: &str,
    mut source: PacketSocket,
    classifier: &Classifier,
    stop: &StopSignal,
    on_native: F,
) -> CutoverState
where
    F: FnOnce(&Detection) -> Result<(), E>,
    E: Display,
{
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
        Ok(Run::Stopped) => return CutoverState::Stopped,
        Err(e) => return failed(bridge, &e),
    };
    // The socket closes only after the callback: closing a packet socket waits for an RCU
    // grace period (synchronize_net in packet_release), milliseconds the rule must not wait.
    let error = on_native(&detection).err().map(|e| e.to_string());
    let record = CutoverRecord::new(&detection, Instant::now(), error);
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
    drop(source);
    CutoverState::Done(record)
}

fn failed(bridge: &str, e: &io::Error) -> CutoverState {
    let error = format!("bridge {bridge}: reading packets: {e}; run `vmtun cutover` by hand");
    tracing::error!("{error}");
    CutoverState::Failed { error }
}
