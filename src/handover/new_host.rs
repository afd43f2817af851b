//! The new host's handover at run time: a [`FirstFrame`] watch on each configured VM
//! interface while it is up, feeding the reporter thread's [`super::Announcer`].
//!
//! Once the VM's subnet has cut over here, the provider delivers the VM's traffic to this
//! host, and while the VM still runs on the old host it must go on through the tunnel. An
//! interface appearing for it here (the destination QEMU waiting with `-incoming`, libvirt's
//! `<script>` run at the start of the migration) does not mean the guest runs here yet: its
//! routes are put on it only at the guest's first frame there ([`Routing::AtFirstFrame`]).
//! Before the cutover they go on at once: the old host decides then what crosses the tunnel
//! (and hands a VM over at its source's pause, when the waiting interface must take it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Ended, FirstFrame, Routing, VmEvent};
use crate::config::Config;
use crate::netcfg::SharedJournal;
use crate::switch_report::{ReportId, ReportSender};

/// Role new with `handover = "first-frame"`: watches the VM interfaces for their guests.
pub struct NewHost {
    reports: ReportSender,
    config: Arc<Config>,
    journal: SharedJournal,
    watches: Mutex<HashMap<String, Watch>>,
}

/// One VM interface watched for its guest.
struct Watch {
    frame: FirstFrame,
    /// Whether its routes wait for the guest's first frame, and whether that came.
    held: bool,
    framed: Arc<AtomicBool>,
}

impl Watch {
    fn routing(&self) -> Routing {
        if self.held && !self.framed.load(Ordering::Acquire) {
            Routing::AtFirstFrame
        } else {
            Routing::Now
        }
    }
}

impl NewHost {
    /// Reports through `reports` (the reporter must have an [`super::Announcer`]); whether a
    /// VM's subnet has cut over here is `journal`'s record.
    pub fn new(reports: ReportSender, config: Arc<Config>, journal: SharedJournal) -> Self {
        Self {
            reports,
            config,
            journal,
            watches: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the provider delivers `vif`'s VM here: one of its subnets has cut over.
    fn cut_over_for(&self, vif: &str) -> bool {
        let Some(vm) = self.config.vm(vif) else {
            return false;
        };
        let journal = self.journal.lock();
        (vm.addresses.iter()).any(|a| journal.cut_over().iter().any(|net| net.contains(a)))
    }

    /// `vif` is up with index `ifindex` (watch it for the guest's first frame), or gone;
    /// when its VM's routes may go on it.
    pub fn link(&self, vif: &str, ifindex: Option<u32>) -> Routing {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(index), Some(watch)) = (ifindex, watches.get(vif))
            && watch.frame.ifindex() == index
        {
            return watch.routing();
        }
        let was_watched = watches.remove(vif).is_some();
        self.reports.vm(VmEvent::Link {
            vif: vif.to_owned(),
            ifindex,
        });
        let Some(index) = ifindex else {
            if was_watched {
                tracing::info!(vif, "handover: {vif} is gone");
            }
            return Routing::Now;
        };
        let held = self.cut_over_for(vif);
        let framed = Arc::new(AtomicBool::new(false));
        let on_frame = {
            let (reports, config, framed) =
                (self.reports.clone(), self.config.clone(), framed.clone());
            let name = vif.to_owned();
            move |ended| match ended {
                Ended::Frame { ifindex, at } => {
                    if held {
                        match crate::vif::up(&config, &name) {
                            Ok(()) => tracing::info!(
                                "handover: the guest of {name} runs here: its routes are on {name}"
                            ),
                            Err(e) => tracing::warn!(
                                "handover: the guest of {name} runs here, but routing it failed: \
                                 {e:#}; run `vmtun vif-up {name}`"
                            ),
                        }
                    }
                    framed.store(true, Ordering::Release);
                    reports.vm(VmEvent::GuestFrame {
                        vif: name,
                        ifindex,
                        id: ReportId(rand::random()),
                        at,
                    });
                }
                Ended::Failed(e) => tracing::debug!("handover: no longer watching: {e}"),
            }
        };
        match FirstFrame::watch(vif, index, on_frame) {
            Ok(frame) => {
                if held {
                    tracing::info!(
                        vif,
                        "handover: {vif} is up: its VM's subnet has cut over here, so the VM \
                         stays routed through the tunnel until the guest's first frame on {vif}"
                    );
                }
                tracing::info!(
                    vif,
                    "handover: {vif} is up: watching it for the guest's first frame"
                );
                let watch = Watch {
                    frame,
                    held,
                    framed,
                };
                let routing = watch.routing();
                watches.insert(vif.to_owned(), watch);
                routing
            }
            Err(e) => {
                tracing::warn!(
                    "handover: cannot watch {vif} for its guest ({e}); routing it now, and the \
                     old host keeps routing the VM to its source until that goes"
                );
                Routing::Now
            }
        }
    }
}

impl Drop for NewHost {
    fn drop(&mut self) {
        let watches = std::mem::take(
            self.watches
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (_, watch) in watches {
            watch.frame.stop();
        }
    }
}
