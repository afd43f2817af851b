//! The restore monitor: when another program removes what vmtun keeps on the host (`nft flush
//! ruleset`, which `systemctl reload nftables` runs on Debian; systemd-networkd deleting
//! foreign policy rules when it restarts; someone resetting `rp_filter`), vmtun notices
//! within milliseconds, puts back what is its own, logs it and counts it in `status`.
//!
//! What "its own" is comes from the journal, which records what is applied *now*: after a
//! subnet's cutover its mark rule is not there on purpose and its cutover set element is,
//! so a restore puts the element back and never turns the tunnel path on again.
//!
//! - [`pace`]: the sans-IO pacer: one comparison per burst of notifications, and at most a
//!   few restores a minute, so vmtun never fights another program in a loop.
//! - this file: the tokio task. Netlink notifications come in through
//!   [`netcfg::EventSocket`] (which says whether one may concern vmtun's objects), and the
//!   comparison, [`netcfg::Journal::restore`], runs on the blocking pool.

pub mod pace;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::netcfg::{self, EventSocket, EventSource, Interest, SharedJournal};
use pace::Pace;

/// What `vmtun status` shows of the restore monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStatus {
    /// How many times vmtun found some of its host changes removed and put them back.
    pub restores: u64,
    /// The latest of those.
    pub last: Option<Restore>,
    /// What the latest comparison could not check or put back.
    pub failed: Vec<String>,
}

/// One restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// When it was done, in nanoseconds since the Unix epoch.
    pub at_unix_ns: u64,
    /// From the first notification of the removal to everything put back, in nanoseconds.
    pub took_ns: u64,
    /// What was put back, as the commands that do it.
    pub put_back: Vec<String>,
}

/// A running restore monitor; dropping it (or [`Monitor::stop`]) ends it.
pub struct Monitor {
    task: JoinHandle<()>,
    status: StatusHandle,
}

/// A view of the monitor's [`RestoreStatus`], for the status snapshot.
#[derive(Debug, Clone, Default)]
pub struct StatusHandle(Arc<Mutex<RestoreStatus>>);

impl StatusHandle {
    /// The status now.
    pub fn get(&self) -> RestoreStatus {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut RestoreStatus)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Monitor {
    /// Subscribes to the notifications now (in the calling thread's network namespace, so a
    /// failure shows at start) and watches on the current tokio runtime for removals of what
    /// `journal` records.
    pub fn start(journal: SharedJournal) -> std::io::Result<Monitor> {
        let route = watch(EventSource::Route)?;
        let nft = watch(EventSource::Nftables)?;
        let status = StatusHandle::default();
        let task = tokio::spawn(run(route, nft, journal, status.clone()));
        Ok(Monitor { task, status })
    }

    /// The status, for `vmtun status`.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Stops watching (before vmtun undoes its changes, so it does not fight its own exit).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An [`EventSocket`] for `source`, registered with the runtime.
fn watch(source: EventSource) -> std::io::Result<AsyncFd<EventSocket>> {
    let sock = EventSocket::open(source)?;
    // SAFETY: the socket owns its fd, keeps it open until dropped and always returns it.
    unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

async fn run(
    mut route: AsyncFd<EventSocket>,
    mut nft: AsyncFd<EventSocket>,
    journal: SharedJournal,
    status: StatusHandle,
) {
    let interest = Interest::of(&journal.lock().state().changes);
    let mut pace = Pace::new();
    // When the first notification of the current round came.
    let mut since: Option<Instant> = None;
    loop {
        let due = pace.poll_timeout();
        let woke = tokio::select! {
            woke = drain(&mut route, &interest) => woke,
            woke = drain(&mut nft, &interest) => woke,
            () = sleep_until(due) => Ok(false),
        };
        let now = Instant::now();
        match woke {
            Ok(true) => {
                tracing::debug!("a netlink notification may concern vmtun's host changes");
                since.get_or_insert(now);
                pace.notice(now);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(
                    "not watching for removals of vmtun's host changes any more \
                     (reading netlink notifications: {e}); restart vmtun to watch again"
                );
                return;
            }
        }
        if pace.poll_compare(now) {
            let put_back = compare(&journal, &status, since.take().unwrap_or(now)).await;
            if let Some(until) = pace.compared(Instant::now(), put_back) {
                tracing::warn!(
                    "vmtun put its host changes back {} times within {} s: another program \
                     keeps removing them (see above; tell it to leave vmtun's alone); the next \
                     check waits {:.0} s",
                    pace::BURST,
                    pace::WINDOW.as_secs(),
                    until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                );
            }
        }
    }
}

/// Waits until `due`, or forever.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads every notification waiting on `sock`; whether one may concern vmtun's objects.
async fn drain(sock: &mut AsyncFd<EventSocket>, interest: &Interest) -> std::io::Result<bool> {
    let mut guard = sock.readable_mut().await?;
    let mut woke = false;
    loop {
        match guard.get_inner_mut().read(interest)? {
            Some(w) => woke |= w,
            None => {
                guard.clear_ready();
                return Ok(woke);
            }
        }
    }
}

/// Compares the journal with the kernel and puts back what is missing (on the blocking
/// pool: netlink requests block); logs and counts it. Whether anything was put back.
async fn compare(journal: &SharedJournal, status: &StatusHandle, since: Instant) -> bool {
    let journal = journal.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut ops = netcfg::SystemOps::new()?;
        Ok::<_, netcfg::NetError>(journal.lock().restore(&mut ops))
    })
    .await;
    let restored = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => netcfg::Restored {
            put_back: Vec::new(),
            failed: vec![e],
        },
        Err(e) => {
            tracing::error!(
                "checking vmtun's host changes: {e}; should never happen: please report"
            );
            return false;
        }
    };
    let took = since.elapsed();
    tracing::debug!(
        put_back = restored.put_back.len(),
        failed = restored.failed.len(),
        took_ms = took.as_secs_f64() * 1e3,
        "compared vmtun's host changes with the kernel"
    );
    let put_back: Vec<String> = restored.put_back.iter().map(ToString::to_string).collect();
    for e in &restored.failed {
        tracing::error!("could not put back a host change of vmtun's that went missing: {e}");
    }
    if !put_back.is_empty() {
        tracing::warn!(
            took_ms = took.as_secs_f64() * 1e3,
            "another program removed some of vmtun's host changes; put back: {}",
            put_back.join("; ")
        );
    }
    let failed = restored.failed.iter().map(ToString::to_string).collect();
    let any = !put_back.is_empty();
    status.update(|s| {
        s.failed = failed;
        if any {
            s.restores += 1;
            s.last = Some(Restore {
                at_unix_ns: unix_ns(SystemTime::now()),
                took_ns: u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                put_back,
            });
        }
    });
    any
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
