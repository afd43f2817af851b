//! The watcher thread: waits on the native interfaces for each subnet's first native packet,
//! calls the rule-removal callback once per subnet, and keeps the records. It owns no
//! netfilter code: the caller's callback (netcfg's atomic removal of the mark rule) does that.
//!
//! A native packet is one the classifier accepts (for a watched subnet, from an uplink
//! gateway's MAC) whose source also passes the reverse-path check (`netcfg::RouteLookup`: the
//! route back to it leaves through the interface it came in on): the conditions of the
//! kernel's native rule, so that neither acts on a packet the other would refuse.
//!
//! # Real-time priority
//! The thread sleeps until the first native packet, and the time the scheduler takes to wake
//! it is most of the cutover's latency on a busy host: `benches/cutover.sh` at 10 kHz on a
//! 2-core VM had p50 0.17 ms but one trial in 25 at 8.7 ms, all of it between the packet and
//! the watcher seeing it. So the thread asks for `SCHED_FIFO` priority
//! [`WATCHER_RT_PRIORITY`] when it starts, which puts it ahead of every ordinary thread the
//! moment its packet arrives (it runs for microseconds per packet, so it cannot starve
//! anything; the kernel's real-time throttling caps it anyway). Without the privilege
//! (`CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` too low) it runs at normal priority and says so in
//! one log line.

use std::fmt::Display;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::CutoverError;
use super::capture::{PacketSocket, Run, StopSignal, Wait};
use super::classify::{Classifier, MacAddr, Verdict};
use super::record::{CutoverRecord, Detection};
use crate::netcfg::RouteLookup;

/// The `SCHED_FIFO` priority of the watcher thread (1-99): above every ordinary thread, low
/// among real-time ones (the kernel's threaded interrupt handlers run at 50).
pub const WATCHER_RT_PRIORITY: i32 = 10;

/// Where native packets arrive and who may send them: what the watcher watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The native interfaces: the bridge first, then any other (`[migration] bridge` and
    /// `native_interfaces`).
    pub interfaces: Vec<String>,
    /// The MACs of the uplink gateways, the only senders whose packets count (the same MACs
    /// the kernel's native rule accepts).
    pub gateways: Vec<MacAddr>,
}

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
    /// Reading from a native interface failed (it disappeared, say), or the watcher could not
    /// start (no gateway known); the rest of the cutover must be done by hand (`vmtun
    /// cutover`).
    Failed {
        /// What went wrong, naming the interface.
        error: String,
    },
    /// Stopped before every subnet had cut over (shutdown, or a manual cutover).
    Stopped,
}

/// A running watcher on the new host's native interfaces. For each subnet it calls its
/// callback once, on the first native packet (IPv4 or IPv6, the subnet's family) received
/// there for that subnet, and ends its thread when all have cut over. (The provider may
/// switch the subnets at different times; each subnet's mark rule must stay until its own
/// switch.)
///
/// Dropping it stops it too; [`stop`](Self::stop) also returns what happened.
#[derive(Debug)]
pub struct Watcher {
    name: String,
    stop: Arc<StopSignal>,
    status: Arc<Mutex<CutoverStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching the uplink's interfaces for packets to `subnets`, IPv4 and IPv6 in any
    /// mix, from its gateways (role new, `cutover = "auto"`).
    ///
    /// The sockets are opened here, in the calling thread's network namespace, so that a
    /// missing interface or missing privilege is reported now. `on_native` runs on the
    /// watcher thread as soon as a subnet's first native packet is recognised, once per
    /// subnet; it should remove that subnet's mark rule and return. Its error is kept in the
    /// record.
    pub fn spawn<F, E>(
        uplink: &Uplink,
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
        let name = uplink.interfaces.join(",");
        let io_error = |action, source| CutoverError::Io {
            iface: name.clone(),
            action,
            source,
        };
        let classifier = Classifier::new(subnets, uplink.gateways.clone());
        let source = PacketSocket::open(&uplink.interfaces, &classifier, Wait::Stoppable)?;
        let routes = RouteLookup::open().map_err(|e| io_error("opening a route socket", e))?;
        let stop =
            Arc::new(StopSignal::new().map_err(|e| io_error("creating the stop eventfd", e))?);
        let status = Arc::new(Mutex::new(CutoverStatus {
            phase: Phase::Watching,
            records: Vec::new(),
            waiting: classifier.subnets().to_vec(),
        }));
        let thread = {
            let (stop, status) = (stop.clone(), status.clone());
            let mut watch = Watch {
                source,
                classifier,
                routes,
            };
            thread::Builder::new()
                .name("vmtun-cutover".into())
                .spawn(move || {
                    raise_priority();
                    let phase = watch.run(&stop, &status, on_native);
                    lock(&status).phase = phase;
                })
                .map_err(|e| io_error("starting the watcher thread", e))?
        };
        tracing::info!(
            interfaces = name,
            gateways = ?uplink.gateways.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "cutover watcher started"
        );
        Ok(Watcher {
            name,
            stop,
            status,
            thread: Some(thread),
        })
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
                    "interfaces {}: the cutover callback panicked; should never happen: please report",
                    self.name
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

/// Asks for real-time priority for the calling thread (see the module doc), and says whether
/// it got it.
fn raise_priority() {
    match real_time_priority() {
        Ok(()) => tracing::info!(
            priority = WATCHER_RT_PRIORITY,
            "cutover watcher runs at real-time priority (SCHED_FIFO)"
        ),
        Err(e) => tracing::warn!(
            "cutover watcher runs at normal priority ({e}): a busy host may delay it by \
             milliseconds; give vmtun CAP_SYS_NICE for SCHED_FIFO"
        ),
    }
}

/// Puts the calling thread at `SCHED_FIFO` priority [`WATCHER_RT_PRIORITY`]: for threads
/// that sleep until one event and must act on it at once (see the module doc).
pub(crate) fn real_time_priority() -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: WATCHER_RT_PRIORITY,
    };
    // SAFETY: pid 0 is the calling thread; param is a live sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The watcher thread's state: the sockets, the decision, the reverse-path check.
struct Watch {
    source: PacketSocket,
    classifier: Classifier,
    routes: RouteLookup,
}

impl Watch {
    /// The watcher thread's body: returns the phase it ends in.
    fn run<F, E>(
        &mut self,
        stop: &StopSignal,
        status: &Mutex<CutoverStatus>,
        mut on_native: F,
    ) -> Phase
    where
        F: FnMut(&Detection) -> Result<Instant, E>,
        E: Display,
    {
        loop {
            let (classifier, routes) = (&self.classifier, &mut self.routes);
            let found = self.source.run(stop, |frame| match classifier.verdict(frame.data) {
                Verdict::Native { subnet, src, dst } => {
                    match routes.leaves_through(src, frame.ifindex) {
                        Ok(true) => Some(Detection {
                            subnet,
                            src,
                            dst,
                            captured_at: frame.captured_at,
                            detected_at: Instant::now(),
                            detected_at_wall: SystemTime::now(),
                        }),
                        Ok(false) => {
                            tracing::debug!(%src, %dst, "a packet for {subnet} from the gateway failed the reverse-path check");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(%src, "cutover watcher: looking up the route back to {src}: {e}");
                            None
                        }
                    }
                }
                other => {
                    tracing::trace!(verdict = ?other, "frame is not a native packet");
                    None
                }
            });
            let detection = match found {
                Ok(Run::Done(detection)) => detection,
                Ok(Run::Stopped) => return Phase::Stopped,
                Err(e) => return failed(&e),
            };
            // The callback says when the rule was gone: tearing down its netlink socket
            // afterwards costs milliseconds (an RCU grace period) that no reply waits for.
            let (gone_at, error) = match on_native(&detection) {
                Ok(at) => (at, None),
                Err(e) => (Instant::now(), Some(e.to_string())),
            };
            let record = CutoverRecord::new(&detection, gone_at, error);
            log(&record);
            self.classifier.stop_watching(detection.subnet);
            {
                let mut status = lock(status);
                status.records.push(record);
                status.waiting = self.classifier.subnets().to_vec();
            }
            if self.classifier.subnets().is_empty() {
                // The sockets close only now, after the callback: closing a packet socket
                // waits for an RCU grace period (synchronize_net), milliseconds no rule should
                // wait.
                return Phase::Done;
            }
            // Packets for the subnet just cut over must stop waking us; if the kernel refuses
            // the new filter, the classifier still ignores them.
            if let Err(e) = self.source.update_filter(&self.classifier) {
                tracing::warn!("narrowing the cutover filter: {e}");
            }
        }
    }
}

fn log(record: &CutoverRecord) {
    match &record.error {
        None => tracing::info!(
            subnet = %record.subnet,
            src = %record.src,
            dst = %record.dst,
            latency_us = record.latency.as_secs_f64() * 1e6,
            detection_us = record.detection_delay.as_secs_f64() * 1e6,
            removal_us = record.removal.as_secs_f64() * 1e6,
            "cutover: first native packet, mark rule removed"
        ),
        Some(error) => tracing::error!(
            subnet = %record.subnet,
            error,
            "cutover: first native packet, but removing the mark rule failed: run `vmtun cutover`"
        ),
    }
}

fn failed(e: &io::Error) -> Phase {
    let error = format!("{e}; run `vmtun cutover` by hand");
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
