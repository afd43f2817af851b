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
//! A cutover while such an interface waits (the switch during a migration) takes its routes
//! off again until the guest's first frame ([`NewHost::cut_over`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::net::IpAddr;

use ipnet::IpNet;

use super::custody::same_addresses;
use super::{Ended, FirstFrame, Routing, VmEvent};
use crate::config::Config;
use crate::netcfg::{SharedJournal, SystemOps};
use crate::switch_report::{ReportId, ReportSender};

/// Role new with `handover = "first-frame"`: watches the VM interfaces for their guests.
pub struct NewHost {
    reports: ReportSender,
    config: Arc<Config>,
    journal: SharedJournal,
    watches: Mutex<HashMap<String, Watch>>,
    /// The interfaces (and their index) whose guest has run here: one taken down and up
    /// again (same index) still carries a running guest, not a migration's destination.
    ran_here: Mutex<HashMap<String, u32>>,
}

/// One VM interface watched for its guest.
struct Watch {
    frame: FirstFrame,
    guest: Arc<Mutex<Guest>>,
}

/// What the new host knows of the guest behind one interface; its routes change only under
/// this lock, so a frame and a cutover arriving together leave them right.
#[derive(Debug, Default)]
struct Guest {
    /// Its routes wait for the guest's first frame.
    held: bool,
    /// That frame came: the guest runs here.
    framed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Guest {
    fn routing(&self) -> Routing {
        if self.held && !self.framed {
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
            ran_here: Mutex::new(HashMap::new()),
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
        let mut watches = lock(&self.watches);
        if let (Some(index), Some(watch)) = (ifindex, watches.get(vif))
            && watch.frame.ifindex() == index
        {
            return lock(&watch.guest).routing();
        }
        let was = watches.remove(vif);
        let was_watched = was.is_some();
        if let Some(watch) = was {
            let mut ran_here = lock(&self.ran_here);
            if lock(&watch.guest).framed {
                ran_here.insert(vif.to_owned(), watch.frame.ifindex());
            } else {
                ran_here.remove(vif);
            }
        }
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
        let ran_here = lock(&self.ran_here).get(vif) == Some(&index);
        let guest = Arc::new(Mutex::new(Guest {
            held: !ran_here && self.cut_over_for(vif),
            framed: ran_here,
        }));
        let on_frame = {
            let (reports, config, guest) =
                (self.reports.clone(), self.config.clone(), guest.clone());
            let name = vif.to_owned();
            move |ended| match ended {
                Ended::Frame { ifindex, at } => {
                    guest_runs_here(&config, &name, &guest);
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
                let routing = lock(&guest).routing();
                if routing == Routing::AtFirstFrame {
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
                watches.insert(vif.to_owned(), Watch { frame, guest });
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

    /// The old host handed the VM with `addresses` over at its source's pause (`vmtun
    /// handover`): a held interface of it takes the VM's routes now, so that what the VM is
    /// sent during the pause waits in its queue until the guest resumes here. (Before the
    /// cutover nothing is held: the old host's routes decide then.)
    pub fn paused_there(&self, addresses: &[IpAddr]) {
        let Some(vm) = (self.config.vms.iter()).find(|vm| same_addresses(&vm.addresses, addresses))
        else {
            return;
        };
        let watches = lock(&self.watches);
        let Some(watch) = watches.get(&vm.vif) else {
            return;
        };
        let mut guest = lock(&watch.guest);
        if !guest.held || guest.framed {
            return;
        }
        guest.held = false;
        let vif = &vm.vif;
        match crate::vif::up(&self.config, vif) {
            Ok(()) => tracing::info!(
                vif,
                "handover: the old host handed the VM of {vif} over at its pause: its routes \
                 are on {vif}, where what it is sent waits for the guest"
            ),
            Err(e) => tracing::warn!(
                "handover: the old host handed the VM of {vif} over at its pause, but routing \
                 it failed: {e:#}"
            ),
        }
    }

    /// `subnet` has cut over here: a VM interface of it that is up but has not seen its
    /// guest yet (a migration under way during the switch) loses its routes until the
    /// guest's first frame, as one coming up now would.
    pub fn cut_over(&self, subnet: IpNet) {
        for (vif, watch) in lock(&self.watches).iter() {
            let in_subnet = (self.config.vm(vif))
                .is_some_and(|vm| vm.addresses.iter().any(|a| subnet.contains(a)));
            let mut guest = lock(&watch.guest);
            if !in_subnet || guest.framed || guest.held {
                continue;
            }
            guest.held = true;
            let unrouted = SystemOps::new()
                .map_err(anyhow::Error::from)
                .and_then(|mut ops| crate::vif::unroute(&mut ops, &self.config, vif));
            match unrouted {
                Ok(()) => tracing::info!(
                    vif,
                    "handover: {subnet} has cut over while {vif} waits for its guest: the VM \
                     stays routed through the tunnel until the guest's first frame on {vif}"
                ),
                Err(e) => tracing::warn!(
                    "handover: {subnet} has cut over while {vif} waits for its guest, but \
                     taking its routes off failed: {e:#}"
                ),
            }
        }
    }
}

/// The guest's first frame on `vif`: it runs here; its routes go on if they were held.
fn guest_runs_here(config: &Config, vif: &str, guest: &Mutex<Guest>) {
    let mut guest = lock(guest);
    guest.framed = true;
    if !guest.held {
        return;
    }
    match crate::vif::up(config, vif) {
        Ok(()) => tracing::info!("handover: the guest of {vif} runs here: its routes are on {vif}"),
        Err(e) => tracing::warn!(
            "handover: the guest of {vif} runs here, but routing it failed: {e:#}; run \
             `vmtun vif-up --now {vif}`"
        ),
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
