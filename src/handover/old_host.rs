//! The old host's handover at run time: [`super::Custody`]'s decisions carried out on the
//! host (routes through netlink, a [`FirstFrame`] watch on each interface given away, a
//! timer for each VM handed over at its pause), for the listener's reports, the watches'
//! frames, the VM interface watcher's links and the control socket's `handover` requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;

use super::{Custody, Decision, Ended, FirstFrame, Keep, Refusal, Remembered, Routing, TakeBack};
use crate::config::Config;
use crate::cutover::index_of;
use crate::netcfg::{NetOps, SystemOps};
use crate::switch_report::{Report, ReportId, ToPeer, VmReport};

/// Role old: acts on the new host's VM reports. Dropping it stops its watches.
pub struct OldHost {
    inner: Arc<Mutex<Inner>>,
    /// How to tell the new host of a handover at the pause (once its listener runs).
    new_host: OnceLock<ToPeer>,
}

struct Inner {
    custody: Custody,
    ops: SystemOps,
    config: Arc<Config>,
    /// The interfaces given away, watched for the guest.
    watches: HashMap<String, FirstFrame>,
    /// Where the custody's memory is kept for the next instance.
    memory: PathBuf,
    /// What it holds now.
    remembered: Vec<Remembered>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OldHost {
    /// Custody of `config`'s VMs; `enabled` is `handover = "first-frame"` (otherwise
    /// reports are acknowledged and ignored). What an earlier instance knew of VMs on the
    /// new host is read from `memory` (and kept there): their interfaces here stay without
    /// routes, watched for the guest. Opens its netlink socket now, in this network
    /// namespace.
    pub fn new(config: Arc<Config>, enabled: bool, memory: PathBuf) -> anyhow::Result<Self> {
        let remembered = read_memory(&memory);
        let shared = Arc::new(Mutex::new(Inner {
            custody: Custody::new(&config.vms, enabled, &remembered, index_of),
            ops: SystemOps::new()?,
            config,
            watches: HashMap::new(),
            memory,
            remembered,
        }));
        {
            let mut guard = lock(&shared);
            let inner = &mut *guard;
            for (vif, ifindex) in inner.custody.watched() {
                watch_for_guest(&shared, inner, &vif, ifindex);
                match crate::vif::unroute(&mut inner.ops, &inner.config, &vif) {
                    Ok(()) => tracing::info!(
                        vif,
                        "handover: as the last instance knew, the VM of {vif} runs on the new \
                         host: no routes on {vif} until its guest sends there"
                    ),
                    Err(e) => tracing::warn!("handover: keeping the routes off {vif}: {e:#}"),
                }
            }
            remember(inner);
        }
        Ok(Self {
            inner: shared,
            new_host: OnceLock::new(),
        })
    }

    /// A report from the new host (the listener's thread): carried out; the answer to send.
    pub fn handle_report(&self, report: &Report) -> Option<Report> {
        let mut inner = lock(&self.inner);
        let (decision, ack) = inner.custody.handle_report(report, index_of);
        let about = match report {
            Report::VmHere(r) => format!(
                "the new host reports the guest running there (report {} of its {} {:?})",
                r.id, r.vif, r.addresses
            ),
            Report::VmGone(r) => format!(
                "the new host reports the guest's interface gone there (report {} of its {} \
                 {:?})",
                r.id, r.vif, r.addresses
            ),
            other => format!("{other:?}"),
        };
        carry_out(&self.inner, &mut inner, decision, &about);
        ack
    }

    /// `vif` is up with index `ifindex`, or gone (the VM interface watcher, `vif-up`); when
    /// its VM's routes may go on it.
    pub fn link(&self, vif: &str, ifindex: Option<u32>) -> Routing {
        let mut inner = lock(&self.inner);
        let decision = inner.custody.handle_link(vif, ifindex);
        let about = match ifindex {
            Some(index) => format!("{vif} is up here (index {index})"),
            None => format!("{vif} is gone here"),
        };
        carry_out(&self.inner, &mut inner, decision, &about);
        inner.custody.routing(vif)
    }

    /// The source paused the guest of `vif` for the migration's last stage (`vmtun handover
    /// VIF`): its traffic goes to the new host from now on, unless the new host does not
    /// report the guest running there within [`super::CONFIRM_WITHIN`]. The error is one line for
    /// the operator.
    pub fn hand_over_at_pause(&self, vif: &str) -> Result<(), String> {
        let mut inner = lock(&self.inner);
        let decision = (inner.custody)
            .handle_pause(vif, index_of, Instant::now())
            .map_err(|refusal| explain(refusal, vif, &inner.config))?;
        let given = match &decision {
            Decision::GiveAway { addresses, .. } => Some(addresses.clone()),
            _ => None,
        };
        let about = format!("the guest of {vif} is paused here for the migration's last stage");
        carry_out(&self.inner, &mut inner, decision, &about);
        drop(inner);
        if let Some(addresses) = given {
            let weak = Arc::downgrade(&self.inner);
            std::thread::spawn(move || {
                while let Some(at) = confirm_deadline(&weak) {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
            });
            // After the provider's switch the new host holds a waiting interface until it
            // hears of this (twice: an unanswered datagram, and the tunnel may lose one).
            let paused = Report::VmPaused(VmReport {
                id: ReportId(rand::random()),
                vif: vif.to_owned(),
                addresses,
            });
            if let Some(to_peer) = self.new_host.get() {
                let told = to_peer.send(&paused) && to_peer.send(&paused);
                tracing::debug!(told, "handover: {paused:?} to the new host");
            }
        }
        Ok(())
    }

    /// Tells the new host of each handover at the pause through `to_peer` from now on.
    pub fn tell_the_new_host(&self, to_peer: ToPeer) {
        let _ = self.new_host.set(to_peer);
    }

    /// The source runs the guest of `vif` again (`vmtun handover --back VIF`, after a
    /// failed or cancelled migration): its routes come back here if they were given away.
    pub fn hand_back(&self, vif: &str) -> Result<(), String> {
        let mut inner = lock(&self.inner);
        let decision = (inner.custody)
            .handle_resume(vif)
            .map_err(|refusal| explain(refusal, vif, &inner.config))?;
        let about = format!("the guest of {vif} is said to run here again");
        carry_out(&self.inner, &mut inner, decision, &about);
        Ok(())
    }

    /// The VM interfaces given away to the new host now (for `vmtun status`).
    pub fn given_away(&self) -> Vec<String> {
        lock(&self.inner).custody.given_away()
    }
}

impl Drop for OldHost {
    fn drop(&mut self) {
        let watches = std::mem::take(&mut lock(&self.inner).watches);
        for (_, watch) in watches {
            watch.stop();
        }
    }
}

/// The custody's memory an earlier instance left at `path` (none if there is none, or it
/// cannot be read: then the VMs count as running here, as without it).
fn read_memory(path: &Path) -> Vec<Remembered> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!("handover: ignoring {} ({e})", path.display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Writes the custody's memory when it changed (atomically: a new file renamed over the
/// old), or removes it when there is nothing to remember.
fn remember(inner: &mut Inner) {
    let remembered = inner.custody.remembered();
    if remembered == inner.remembered && remembered.is_empty() != inner.memory.exists() {
        return;
    }
    let path = &inner.memory;
    let written = if remembered.is_empty() {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        let tmp = path.with_extension("json.tmp");
        serde_json::to_vec_pretty(&remembered)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, path))
    };
    match written {
        Ok(()) => inner.remembered = remembered,
        Err(e) => tracing::warn!(
            "handover: cannot keep {} ({e}): a restart would route the VMs on the new host \
             here again",
            path.display()
        ),
    }
}

/// What a refused `handover` request tells the operator, in one line.
fn explain(refusal: Refusal, vif: &str, config: &Config) -> String {
    match refusal {
        Refusal::Off => "[migration] handover = \"vif-gone\" here: the new host reports no \
                         guests, so nothing would confirm a handover at the pause; set handover \
                         = \"first-frame\" on both hosts"
            .into(),
        Refusal::UnknownVif => {
            format!("no [[vm]] in {} has vif = \"{vif}\"", config.path.display())
        }
        Refusal::NoInterface => format!("{vif} does not exist here: no VM to hand over"),
    }
}

/// The VMs handed over at their pause whose deadline has passed and that the new host has
/// not confirmed come back; when the next deadline is, if any is left.
fn confirm_deadline(shared: &Weak<Mutex<Inner>>) -> Option<Instant> {
    let shared = shared.upgrade()?;
    let mut inner = lock(&shared);
    for decision in inner.custody.handle_timeout(Instant::now()) {
        carry_out(
            &shared,
            &mut inner,
            decision,
            "the deadline of a handover at the pause",
        );
    }
    inner.custody.poll_timeout()
}

/// A watch on a given-away interface ended: the guest sent a frame there, or it went away.
fn watch_ended(shared: &Weak<Mutex<Inner>>, vif: &str, ended: Ended) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut inner = lock(&shared);
    // This thread's own watch is dropped, not waited for; a newer one stays.
    if inner.watches.get(vif).is_some_and(FirstFrame::runs_here) {
        inner.watches.remove(vif);
    }
    let decision = match ended {
        Ended::Frame { ifindex, .. } => inner.custody.handle_guest_frame(vif, ifindex),
        Ended::Failed(e) => {
            tracing::debug!("handover: {e}");
            inner.custody.handle_link(vif, index_of(vif))
        }
    };
    carry_out(
        &shared,
        &mut inner,
        decision,
        &format!("watching {vif} here"),
    );
}

/// Watches `vif` (index `ifindex`) for a frame from the guest, which takes the VM back.
fn watch_for_guest(shared: &Arc<Mutex<Inner>>, inner: &mut Inner, vif: &str, ifindex: u32) {
    let weak = Arc::downgrade(shared);
    let name = vif.to_owned();
    match FirstFrame::watch(vif, ifindex, move |ended| watch_ended(&weak, &name, ended)) {
        Ok(watch) => {
            inner.watches.insert(vif.to_owned(), watch);
        }
        Err(e) => tracing::warn!(
            "handover: cannot watch {vif} for the guest ({e}): its routes will not come back \
             by themselves should it run here (`vmtun handover --back {vif}` does it)"
        ),
    }
}

/// Does what `decision` says, logs it (`about`: what it answers), and keeps what the
/// custody knows for the next instance.
fn carry_out(shared: &Arc<Mutex<Inner>>, inner: &mut Inner, decision: Decision, about: &str) {
    carry_out_only(shared, inner, decision, about);
    remember(inner);
}

fn carry_out_only(shared: &Arc<Mutex<Inner>>, inner: &mut Inner, decision: Decision, about: &str) {
    match decision {
        Decision::GiveAway {
            vif,
            ifindex,
            addresses,
        } => {
            // Watching first: a frame from the guest here from now on is not missed.
            watch_for_guest(shared, inner, &vif, ifindex);
            match crate::vif::unroute(&mut inner.ops, &inner.config, &vif) {
                Ok(()) => tracing::info!(
                    vif,
                    ?addresses,
                    "handover: {about}: the VM's routes to {vif} are removed, the tunnel \
                     carries its traffic to the new host"
                ),
                Err(e) => tracing::warn!(
                    "handover: {about}, but removing the VM's routes to {vif} failed: {e:#}; \
                     its traffic goes to {vif} until that goes"
                ),
            }
        }
        Decision::Hold { vif, ifindex } => {
            watch_for_guest(shared, inner, &vif, ifindex);
            // Nothing should have routed it yet (`vif-up` asks this instance); made sure.
            let unrouted = crate::vif::unroute(&mut inner.ops, &inner.config, &vif);
            match unrouted {
                Ok(()) => tracing::info!(
                    vif,
                    "handover: {about}, but its VM runs on the new host: the tunnel carries its \
                     traffic until the guest's first frame on {vif}"
                ),
                Err(e) => tracing::warn!(
                    "handover: {about}, but its VM runs on the new host; keeping its routes off \
                     {vif} failed: {e:#}"
                ),
            }
        }
        Decision::TakeBack { vif, because } => {
            drop(inner.watches.remove(&vif));
            let why = match because {
                TakeBack::GuestSentHere => "the guest sent a frame on it here",
                TakeBack::GoneFromNewHost => "its interface on the new host is gone",
                TakeBack::SourceResumed => "the source runs it again",
                TakeBack::NotConfirmed => {
                    "handed over at its pause, it was not reported running on the new host in time"
                }
            };
            let ops: &mut dyn NetOps = &mut inner.ops;
            match crate::vif::apply(ops, &inner.config, &vif) {
                Ok(()) => tracing::info!(
                    vif,
                    "handover: the VM of {vif} runs here again ({why}): its routes are back on {vif}"
                ),
                Err(e) => tracing::warn!(
                    "handover: the VM of {vif} runs here again ({why}), but routing it failed: \
                     {e:#}; run `vmtun vif-up {vif}`"
                ),
            }
        }
        Decision::Keep(keep) => {
            let says = match keep {
                Keep::Off => {
                    "ignored: handover = \"vif-gone\" here, the routes stay until the interface goes"
                }
                Keep::UnknownVm => {
                    tracing::warn!(
                        "handover: {about}: no [[vm]] here has exactly these addresses; ignored"
                    );
                    return;
                }
                Keep::NoInterface => "that VM has no interface here: nothing to hand over",
                Keep::AlreadyGiven => "handed over already",
                Keep::Confirmed => "the handover at its pause stands",
                Keep::LeftNewHost => {
                    "it runs nowhere known now: an interface for it here is routed at once"
                }
                Keep::InterfaceGone => {
                    "the interface it was handed over from is gone: nothing to restore"
                }
                Keep::Unchanged => return,
                Keep::Repeat | Keep::NotGiven => {
                    tracing::debug!("handover: {about}: {keep:?}");
                    return;
                }
            };
            tracing::info!("handover: {about}: {says}");
        }
    }
}
