//! The old host's side, pure: what to do with a VM's routes on its interface here when the
//! new host reports the guest, when the source pauses the guest for the migration's last
//! stage (issue 12, item 3), or when the guest shows up here again.
//!
//! A VM handed over at its pause is given away on trust: nothing has run on the new host
//! yet. The new host's report of the guest running there confirms it; without one within
//! [`CONFIRM_WITHIN`] (the migration failed and nobody said so), or when the source is said
//! to have resumed, the routes come back here.
//!
//! Each decision takes the VM interface's index as the I/O edge reads it at that moment
//! (`ifindex_of`), so a report about an interface since replaced cannot touch its successor.
//! No sockets, no netlink: the edge carries out the [`Decision`].

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Routing;
use crate::config::Vm;
use crate::switch_report::{AckOf, Report, ReportId, VmReport};

/// How long a VM handed over at its pause waits for the new host to report its guest
/// running there before its routes come back here. QEMU's pause is tens of milliseconds
/// (libvirt's finish round trip adds a few more); a migration whose guest has not run on
/// the new host after this has failed, and its source must get the VM's traffic again.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// What the old host must do about one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The guest runs on the new host: watch `vif` (index `ifindex`) for the guest, then
    /// remove the routes of `addresses` from it (the subnet's route through the tunnel then
    /// carries them).
    GiveAway {
        /// The VM's interface here.
        vif: String,
        /// Its index.
        ifindex: u32,
        /// The VM's addresses.
        addresses: Vec<IpAddr>,
    },
    /// An interface came up here (index `ifindex`) for a VM that runs on the new host (a
    /// migration back, its destination waiting): watch it for the guest, keep its routes
    /// off it until then.
    Hold {
        /// The VM's interface here.
        vif: String,
        /// Its index.
        ifindex: u32,
    },
    /// The VM runs here (again): put its routes back on `vif`, stop watching it.
    TakeBack {
        /// The VM's interface here.
        vif: String,
        /// Why.
        because: TakeBack,
    },
    /// Nothing to change on the host.
    Keep(Keep),
}

/// Why the old host takes a VM back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeBack {
    /// The guest sent a frame on its interface here after it was reported on the new host.
    GuestSentHere,
    /// The new host's interface went away while this one is still here.
    GoneFromNewHost,
    /// Handed over at its pause, the source was said to run the guest again (the
    /// migration failed or was cancelled).
    SourceResumed,
    /// Handed over at its pause, the new host did not report the guest running there
    /// within [`CONFIRM_WITHIN`].
    NotConfirmed,
}

/// Why a VM cannot be handed over at its pause (or back): the operator's mistake, told to
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `handover = "vif-gone"`: the new host reports nothing, so nothing would confirm it.
    Off,
    /// No `[[vm]]` here has this interface.
    UnknownVif,
    /// The VM's interface does not exist here.
    NoInterface,
}

/// Why the old host changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// `handover = "vif-gone"`: reports are acknowledged and ignored.
    Off,
    /// No `[[vm]]` here has exactly the reported addresses.
    UnknownVm,
    /// This sighting was decided on already (a repeat, or one taken back since).
    Repeat,
    /// The VM has no interface here (it left before, or never ran here).
    NoInterface,
    /// Given away already, under an earlier sighting.
    AlreadyGiven,
    /// A report of an interface gone on the new host for a VM not given away under it.
    NotGiven,
    /// The interface the VM was given away from went away: nothing to restore.
    InterfaceGone,
    /// Handed over at its pause, the new host now reports the guest running there.
    Confirmed,
    /// The VM's interface on the new host went away while it had none here: it runs nowhere
    /// known, and an interface for it here is routed at once again.
    LeftNewHost,
    /// Nothing concerns this VM.
    Unchanged,
}

/// What the old host knows of one VM that runs on the new host, kept across its restarts
/// (the custody's memory file): a restarted old host must not route the VM back onto its
/// paused source, nor onto a migration back's waiting destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The VM's interface here (its `[[vm]]`'s `vif`).
    pub vif: String,
    /// The VM's addresses when remembered: a changed `[[vm]]` forgets it.
    pub addresses: Vec<IpAddr>,
    /// The new host's sighting of the guest, if one said so.
    pub sighting: Option<ReportId>,
    /// Its interface here whose routes are kept off, if any.
    pub kept_off: Option<KeptOff>,
}

/// An interface here that does not carry its VM, which runs on the new host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptOff {
    /// The paused source's, given away (its index).
    Source(u32),
    /// A migration back's destination, waiting for the guest (its index).
    Destination(u32),
}

/// Where a VM runs, as the old host knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Here (or nowhere known): its routes are on its interface here, if it has one.
    Here,
    /// On the new host, its paused source's interface still here (index `ifindex`), the
    /// routes taken off it.
    Given { by: By, ifindex: u32 },
    /// On the new host, with no interface here; `id`: the sighting that says so, if one did.
    Away { id: Option<ReportId> },
    /// On the new host, and an interface for it is up here (index `ifindex`): a migration
    /// back, its destination waiting. Its routes wait for the guest's first frame on it.
    Held { id: Option<ReportId>, ifindex: u32 },
}

impl Place {
    /// The index of the VM's interface here whose routes are kept off (the paused source's,
    /// or a waiting destination's), if any.
    fn kept_off(self) -> Option<u32> {
        match self {
            Self::Given { ifindex, .. } | Self::Held { ifindex, .. } => Some(ifindex),
            Self::Here | Self::Away { .. } => None,
        }
    }

    /// The sighting on the new host this place rests on, if any.
    fn sighting(self) -> Option<ReportId> {
        match self {
            Self::Given {
                by: By::Report(id), ..
            } => Some(id),
            Self::Away { id } | Self::Held { id, .. } => id,
            Self::Here | Self::Given { .. } => None,
        }
    }
}

/// What gave a VM away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// The new host's report of this sighting of the guest.
    Report(ReportId),
    /// Its pause here, not yet confirmed by the new host: the routes come back at
    /// `confirm_by`.
    Pause { confirm_by: Instant },
}

/// One `[[vm]]` as the old host holds it.
#[derive(Debug, Clone)]
struct Held {
    vif: String,
    addresses: Vec<IpAddr>,
    place: Place,
    /// The last sighting acted on: a repeat of it (a late retransmission) never acts again.
    decided: Option<ReportId>,
}

impl Held {
    fn take_back(&mut self, because: TakeBack) -> Decision {
        self.place = Place::Here;
        Decision::TakeBack {
            vif: self.vif.clone(),
            because,
        }
    }

    fn hold(&mut self, id: Option<ReportId>, ifindex: u32) -> Decision {
        self.place = Place::Held { id, ifindex };
        Decision::Hold {
            vif: self.vif.clone(),
            ifindex,
        }
    }
}

/// The old host's custody of its VMs' routes: a sans-IO state machine.
#[derive(Debug, Clone)]
pub struct Custody {
    enabled: bool,
    vms: Vec<Held>,
}

/// Whether two address lists hold the same addresses, in any order.
pub(super) fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

impl Custody {
    /// Custody of `vms`, running here but those `remembered` on the new host by an earlier
    /// instance (see [`Self::remembered`]); `enabled` is `handover = "first-frame"`.
    /// `ifindex_of` reads an interface's index here: a remembered interface since replaced
    /// or gone counts as gone.
    pub fn new(
        vms: &[Vm],
        enabled: bool,
        remembered: &[Remembered],
        ifindex_of: impl Fn(&str) -> Option<u32>,
    ) -> Self {
        let place_of = |vm: &Vm| {
            if !enabled {
                return None;
            }
            let r = (remembered.iter())
                .find(|r| r.vif == vm.vif && same_addresses(&r.addresses, &vm.addresses))?;
            let (id, here) = (r.sighting, ifindex_of(&vm.vif));
            Some(match (r.kept_off, id) {
                (Some(KeptOff::Source(ifindex)), Some(id)) if here == Some(ifindex) => {
                    Place::Given {
                        by: By::Report(id),
                        ifindex,
                    }
                }
                (Some(KeptOff::Destination(ifindex)), _) if here == Some(ifindex) => {
                    Place::Held { id, ifindex }
                }
                _ => Place::Away { id },
            })
        };
        Self {
            enabled,
            vms: vms
                .iter()
                .map(|vm| Held {
                    vif: vm.vif.clone(),
                    addresses: vm.addresses.clone(),
                    place: place_of(vm).unwrap_or(Place::Here),
                    decided: None,
                })
                .collect(),
        }
    }

    /// What a restarted old host must know: the VMs that run on the new host, but those
    /// handed over at their pause and not yet confirmed (a restart takes them back, as
    /// their deadline would).
    pub fn remembered(&self) -> Vec<Remembered> {
        (self.vms.iter())
            .filter_map(|vm| {
                let kept_off = match vm.place {
                    Place::Here
                    | Place::Given {
                        by: By::Pause { .. },
                        ..
                    } => return None,
                    Place::Given { ifindex, .. } => Some(KeptOff::Source(ifindex)),
                    Place::Held { ifindex, .. } => Some(KeptOff::Destination(ifindex)),
                    Place::Away { .. } => None,
                };
                Some(Remembered {
                    vif: vm.vif.clone(),
                    addresses: vm.addresses.clone(),
                    sighting: vm.place.sighting(),
                    kept_off,
                })
            })
            .collect()
    }

    /// The interfaces here to watch for their guest, as [`Self::new`] found them: the VMs'
    /// whose routes stay off them (index).
    pub fn watched(&self) -> Vec<(String, u32)> {
        (self.vms.iter())
            .filter_map(|vm| Some((vm.vif.clone(), vm.place.kept_off()?)))
            .collect()
    }

    /// A VM report from the new host: the decision, and the acknowledgement to send back
    /// (`None` for what is not a VM report). `ifindex_of` reads an interface's index here.
    pub fn handle_report(
        &mut self,
        report: &Report,
        ifindex_of: impl Fn(&str) -> Option<u32>,
    ) -> (Decision, Option<Report>) {
        let (r, ack) = match report {
            Report::VmHere(r) => (r, AckOf::Here),
            Report::VmGone(r) => (r, AckOf::Gone),
            _ => return (Decision::Keep(Keep::Unchanged), None),
        };
        let enabled = self.enabled;
        let decision = match self.vm_of(r) {
            None => Decision::Keep(Keep::UnknownVm),
            Some(vm) if ack == AckOf::Here => Self::here(vm, r.id, enabled, &ifindex_of),
            Some(vm) => Self::gone(vm, r.id, &ifindex_of),
        };
        (decision, Some(Report::Ack(ack, r.id)))
    }

    fn vm_of(&mut self, r: &VmReport) -> Option<&mut Held> {
        (self.vms.iter_mut()).find(|vm| same_addresses(&vm.addresses, &r.addresses))
    }

    fn here(
        vm: &mut Held,
        id: ReportId,
        enabled: bool,
        ifindex_of: &impl Fn(&str) -> Option<u32>,
    ) -> Decision {
        if !enabled {
            return Decision::Keep(Keep::Off);
        }
        if vm.decided == Some(id) {
            return Decision::Keep(Keep::Repeat);
        }
        vm.decided = Some(id);
        let (place, keep) = match vm.place {
            Place::Given { by, ifindex } => (
                Place::Given {
                    by: By::Report(id),
                    ifindex,
                },
                match by {
                    By::Pause { .. } => Keep::Confirmed,
                    By::Report(_) => Keep::AlreadyGiven,
                },
            ),
            Place::Away { .. } => (Place::Away { id: Some(id) }, Keep::AlreadyGiven),
            Place::Held { ifindex, .. } => (
                Place::Held {
                    id: Some(id),
                    ifindex,
                },
                Keep::AlreadyGiven,
            ),
            Place::Here => match ifindex_of(&vm.vif) {
                None => (Place::Away { id: Some(id) }, Keep::NoInterface),
                Some(ifindex) => {
                    vm.place = Place::Given {
                        by: By::Report(id),
                        ifindex,
                    };
                    return Decision::GiveAway {
                        vif: vm.vif.clone(),
                        ifindex,
                        addresses: vm.addresses.clone(),
                    };
                }
            },
        };
        vm.place = place;
        Decision::Keep(keep)
    }

    fn gone(vm: &mut Held, id: ReportId, ifindex_of: &impl Fn(&str) -> Option<u32>) -> Decision {
        if vm.place.sighting() != Some(id) {
            return Decision::Keep(Keep::NotGiven);
        }
        match vm.place {
            place
                if place
                    .kept_off()
                    .is_some_and(|i| ifindex_of(&vm.vif) == Some(i)) =>
            {
                vm.take_back(TakeBack::GoneFromNewHost)
            }
            Place::Away { .. } => {
                vm.place = Place::Here;
                Decision::Keep(Keep::LeftNewHost)
            }
            _ => {
                vm.place = Place::Here;
                Decision::Keep(Keep::InterfaceGone)
            }
        }
    }

    /// A frame arrived from the guest on `vif` (index `ifindex`) here.
    pub fn handle_guest_frame(&mut self, vif: &str, ifindex: u32) -> Decision {
        match self.vms.iter_mut().find(|vm| vm.vif == vif) {
            Some(vm) if vm.place.kept_off() == Some(ifindex) => {
                vm.take_back(TakeBack::GuestSentHere)
            }
            _ => Decision::Keep(Keep::Unchanged),
        }
    }

    /// The source paused the guest of `vif` for the migration's last stage (libvirt's
    /// suspended-for-migration event, QEMU's `STOP`): give it away now, so that what is
    /// sent to it during the pause waits in its interface's queue on the new host rather
    /// than dying here, unless the new host confirms it by [`CONFIRM_WITHIN`] after `now`.
    pub fn handle_pause(
        &mut self,
        vif: &str,
        ifindex_of: impl Fn(&str) -> Option<u32>,
        now: Instant,
    ) -> Result<Decision, Refusal> {
        if !self.enabled {
            return Err(Refusal::Off);
        }
        let vm = self.held(vif)?;
        if vm.place != Place::Here {
            return Ok(Decision::Keep(Keep::AlreadyGiven));
        }
        let ifindex = ifindex_of(vif).ok_or(Refusal::NoInterface)?;
        vm.place = Place::Given {
            by: By::Pause {
                confirm_by: now + CONFIRM_WITHIN,
            },
            ifindex,
        };
        Ok(Decision::GiveAway {
            vif: vm.vif.clone(),
            ifindex,
            addresses: vm.addresses.clone(),
        })
    }

    /// The source runs the guest of `vif` again (a failed or cancelled migration): take it
    /// back if it was given away (or its interface here held).
    pub fn handle_resume(&mut self, vif: &str) -> Result<Decision, Refusal> {
        let vm = self.held(vif)?;
        Ok(match vm.place {
            Place::Given { .. } | Place::Held { .. } => vm.take_back(TakeBack::SourceResumed),
            Place::Away { .. } => Decision::Keep(Keep::NoInterface),
            Place::Here => Decision::Keep(Keep::NotGiven),
        })
    }

    fn held(&mut self, vif: &str) -> Result<&mut Held, Refusal> {
        (self.vms.iter_mut())
            .find(|vm| vm.vif == vif)
            .ok_or(Refusal::UnknownVif)
    }

    /// When [`Self::handle_timeout`] must next be called: the earliest deadline of a VM
    /// handed over at its pause and not yet confirmed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.vms.iter())
            .filter_map(|vm| match vm.place {
                Place::Given {
                    by: By::Pause { confirm_by },
                    ..
                } => Some(confirm_by),
                _ => None,
            })
            .min()
    }

    /// The VMs handed over at their pause whose deadline passed by `now` come back.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Decision> {
        (self.vms.iter_mut())
            .filter(|vm| {
                matches!(vm.place, Place::Given { by: By::Pause { confirm_by }, .. } if confirm_by <= now)
            })
            .map(|vm| vm.take_back(TakeBack::NotConfirmed))
            .collect()
    }

    /// `vif` is up with index `ifindex`, or gone (`None`). An interface the VM was given
    /// away from that is no longer there is forgotten (its routes went with it; nothing is
    /// restored); an interface that comes up for a VM running on the new host is held: its
    /// routes wait for the guest's first frame on it.
    pub fn handle_link(&mut self, vif: &str, ifindex: Option<u32>) -> Decision {
        let Some(vm) = self.vms.iter_mut().find(|vm| vm.vif == vif) else {
            return Decision::Keep(Keep::Unchanged);
        };
        let was_away = matches!(vm.place, Place::Away { .. });
        let kept_off = vm.place.kept_off();
        if !was_away && (kept_off.is_none() || kept_off == ifindex) {
            return Decision::Keep(Keep::Unchanged);
        }
        let id = vm.place.sighting();
        match ifindex {
            Some(index) => vm.hold(id, index),
            None => {
                vm.place = Place::Away { id };
                Decision::Keep(if was_away {
                    Keep::Unchanged
                } else {
                    Keep::InterfaceGone
                })
            }
        }
    }

    /// When the VM routes of `vif`, up now, may go on it: at its guest's first frame while
    /// they are kept off it (given away or held).
    pub fn routing(&self, vif: &str) -> Routing {
        match self.vms.iter().find(|vm| vm.vif == vif) {
            Some(vm) if vm.place.kept_off().is_some() => Routing::AtFirstFrame,
            _ => Routing::Now,
        }
    }

    /// The VMs whose interface here has no routes because they run on the new host (for
    /// `vmtun status`).
    pub fn given_away(&self) -> Vec<String> {
        (self.vms.iter())
            .filter(|vm| vm.place.kept_off().is_some())
            .map(|vm| vm.vif.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "203.0.113.2";

    fn vms() -> Vec<Vm> {
        vec![
            Vm {
                vif: "vif0".into(),
                addresses: vec![VM.parse().unwrap(), "2001:db8:1::2".parse().unwrap()],
            },
            Vm {
                vif: "vif1".into(),
                addresses: vec!["203.0.113.3".parse().unwrap()],
            },
        ]
    }

    fn custody(enabled: bool) -> Custody {
        Custody::new(&vms(), enabled, &[], vif0_is_7)
    }

    /// A restart: a new custody from what this one remembers; `ifindex_of` as it is then.
    fn restarted(c: &Custody, ifindex_of: impl Fn(&str) -> Option<u32>) -> Custody {
        let text = serde_json::to_string(&c.remembered()).unwrap();
        let remembered: Vec<Remembered> = serde_json::from_str(&text).unwrap();
        Custody::new(&vms(), true, &remembered, ifindex_of)
    }

    #[test]
    fn a_restarted_old_host_keeps_what_runs_on_the_new_host_off_its_interfaces() {
        let mut c = custody(true);
        assert!(c.remembered().is_empty());
        c.handle_report(&here(1), vif0_is_7);
        // The paused source still here: still given away, watched, not routed.
        let mut again = restarted(&c, vif0_is_7);
        assert_eq!(again.given_away(), ["vif0"]);
        assert_eq!(again.watched(), [("vif0".to_owned(), 7)]);
        assert_eq!(again.routing("vif0"), Routing::AtFirstFrame);
        assert_eq!(
            again.handle_guest_frame("vif0", 7),
            take_back(TakeBack::GuestSentHere)
        );
        // The source gone meanwhile: away, so a migration back's interface is held.
        let mut away = restarted(&c, |_| None);
        assert!(away.watched().is_empty());
        assert_eq!(
            away.handle_link("vif0", Some(9)),
            Decision::Hold {
                vif: "vif0".into(),
                ifindex: 9
            }
        );
        // A held destination is held again; its VM leaving the new host routes it.
        let mut held = restarted(&away, |vif| (vif == "vif0").then_some(9));
        assert_eq!(held.watched(), [("vif0".to_owned(), 9)]);
        assert_eq!(
            held.handle_report(&gone(1), |_| Some(9)).0,
            take_back(TakeBack::GoneFromNewHost)
        );
        // A handover at the pause not yet confirmed is not remembered: a restart takes it
        // back, as its deadline would.
        let mut paused = custody(true);
        paused.handle_pause("vif0", vif0_is_7, at(0)).unwrap();
        assert!(paused.remembered().is_empty());
        // Nothing is held with the handover off.
        let off = Custody::new(&vms(), false, &c.remembered(), vif0_is_7);
        assert!(off.given_away().is_empty());
        // Nor is a VM whose [[vm]] changed.
        let mut other = c.remembered();
        other[0].addresses.pop();
        let fresh = Custody::new(&vms(), true, &other, vif0_is_7);
        assert!(fresh.given_away().is_empty());
    }

    fn vm_report(id: u64, addresses: &[&str]) -> VmReport {
        VmReport {
            id: ReportId(id),
            // The new host's name for it does not matter.
            vif: "tap-elsewhere".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn here(id: u64) -> Report {
        Report::VmHere(vm_report(id, &["2001:db8:1::2", VM]))
    }

    fn gone(id: u64) -> Report {
        Report::VmGone(vm_report(id, &[VM, "2001:db8:1::2"]))
    }

    /// vif0 is interface 7 here, nothing else exists.
    fn vif0_is_7(vif: &str) -> Option<u32> {
        (vif == "vif0").then_some(7)
    }

    fn give_away() -> Decision {
        Decision::GiveAway {
            vif: "vif0".into(),
            ifindex: 7,
            addresses: vec![VM.parse().unwrap(), "2001:db8:1::2".parse().unwrap()],
        }
    }

    fn take_back(because: TakeBack) -> Decision {
        Decision::TakeBack {
            vif: "vif0".into(),
            because,
        }
    }

    #[test]
    fn a_guest_seen_on_the_new_host_is_given_away_once_and_acknowledged_each_time() {
        let mut c = custody(true);
        assert_eq!(
            c.handle_report(&here(1), vif0_is_7),
            (give_away(), Some(Report::Ack(AckOf::Here, ReportId(1))))
        );
        assert_eq!(c.given_away(), ["vif0"]);
        assert_eq!(
            c.handle_report(&here(1), vif0_is_7),
            (
                Decision::Keep(Keep::Repeat),
                Some(Report::Ack(AckOf::Here, ReportId(1)))
            )
        );
    }

    #[test]
    fn off_acknowledges_and_changes_nothing() {
        let mut c = custody(false);
        assert_eq!(
            c.handle_report(&here(1), vif0_is_7),
            (
                Decision::Keep(Keep::Off),
                Some(Report::Ack(AckOf::Here, ReportId(1)))
            )
        );
        assert!(c.given_away().is_empty());
    }

    #[test]
    fn only_a_vm_with_exactly_the_reported_addresses_is_given_away() {
        let mut c = custody(true);
        for addresses in [
            &[VM][..],
            &[VM, "2001:db8:1::2", "203.0.113.3"],
            &["203.0.113.4"],
        ] {
            let (decision, ack) =
                c.handle_report(&Report::VmHere(vm_report(1, addresses)), vif0_is_7);
            assert_eq!(decision, Decision::Keep(Keep::UnknownVm), "{addresses:?}");
            assert!(ack.is_some());
        }
        assert!(c.given_away().is_empty());
        // Not a VM report: no answer.
        let switched = Report::Switched("203.0.113.0/29".parse().unwrap());
        assert_eq!(
            c.handle_report(&switched, vif0_is_7),
            (Decision::Keep(Keep::Unchanged), None)
        );
    }

    #[test]
    fn a_vm_without_an_interface_here_has_nothing_to_give() {
        let mut c = custody(true);
        let (decision, _) = c.handle_report(&here(1), |_| None);
        assert_eq!(decision, Decision::Keep(Keep::NoInterface));
        // Its interface back later (the VM moved back), the same sighting still acts not.
        assert_eq!(
            c.handle_report(&here(1), vif0_is_7).0,
            Decision::Keep(Keep::Repeat)
        );
    }

    #[test]
    fn the_guest_sending_here_again_takes_the_vm_back_for_good() {
        let mut c = custody(true);
        c.handle_report(&here(1), vif0_is_7);
        // Not the interface it was given away from: nothing.
        assert_eq!(
            c.handle_guest_frame("vif0", 8),
            Decision::Keep(Keep::Unchanged)
        );
        assert_eq!(
            c.handle_guest_frame("vif1", 7),
            Decision::Keep(Keep::Unchanged)
        );
        assert_eq!(
            c.handle_guest_frame("vif0", 7),
            take_back(TakeBack::GuestSentHere)
        );
        assert!(c.given_away().is_empty());
        // A late repeat of the report must not take it away again...
        assert_eq!(
            c.handle_report(&here(1), vif0_is_7).0,
            Decision::Keep(Keep::Repeat)
        );
        // ...a new sighting (another migration) does.
        assert_eq!(c.handle_report(&here(2), vif0_is_7).0, give_away());
    }

    #[test]
    fn the_new_hosts_interface_gone_brings_the_routes_back_if_the_source_is_still_here() {
        let mut c = custody(true);
        c.handle_report(&here(1), vif0_is_7);
        // A gone of another sighting is not this one's.
        assert_eq!(
            c.handle_report(&gone(9), vif0_is_7),
            (
                Decision::Keep(Keep::NotGiven),
                Some(Report::Ack(AckOf::Gone, ReportId(9)))
            )
        );
        assert_eq!(
            c.handle_report(&gone(1), vif0_is_7),
            (
                take_back(TakeBack::GoneFromNewHost),
                Some(Report::Ack(AckOf::Gone, ReportId(1)))
            )
        );
        assert_eq!(
            c.handle_report(&gone(1), vif0_is_7).0,
            Decision::Keep(Keep::NotGiven)
        );
        // With the source gone (or replaced) too, there is nothing to bring back.
        c.handle_report(&here(2), vif0_is_7);
        assert_eq!(
            c.handle_report(&gone(2), |_| Some(8)).0,
            Decision::Keep(Keep::InterfaceGone)
        );
    }

    #[test]
    fn the_source_interface_going_away_restores_nothing() {
        let mut c = custody(true);
        c.handle_report(&here(1), vif0_is_7);
        assert_eq!(
            c.handle_link("vif0", Some(7)),
            Decision::Keep(Keep::Unchanged)
        );
        assert_eq!(
            c.handle_link("vif0", None),
            Decision::Keep(Keep::InterfaceGone)
        );
        assert!(c.given_away().is_empty());
        assert_eq!(
            c.handle_guest_frame("vif0", 7),
            Decision::Keep(Keep::Unchanged)
        );
        // The VM then leaves the new host too: it runs nowhere known.
        assert_eq!(
            c.handle_report(&gone(1), |_| None).0,
            Decision::Keep(Keep::LeftNewHost)
        );
    }

    #[test]
    fn an_interface_coming_up_for_a_vm_on_the_new_host_waits_for_its_guest() {
        let mut c = custody(true);
        c.handle_report(&here(1), vif0_is_7);
        c.handle_link("vif0", None);
        assert_eq!(c.routing("vif0"), Routing::Now);
        // A migration back: its destination's interface comes up here, the guest still
        // runs on the new host.
        let held = Decision::Hold {
            vif: "vif0".into(),
            ifindex: 12,
        };
        assert_eq!(c.handle_link("vif0", Some(12)), held);
        assert_eq!(c.routing("vif0"), Routing::AtFirstFrame);
        assert_eq!(c.given_away(), ["vif0"]);
        assert_eq!(
            c.handle_link("vif0", Some(12)),
            Decision::Keep(Keep::Unchanged)
        );
        assert_eq!(
            c.handle_pause("vif0", |_| Some(12), at(0)),
            Ok(Decision::Keep(Keep::AlreadyGiven))
        );
        // Not its guest's interface: nothing.
        assert_eq!(
            c.handle_guest_frame("vif0", 7),
            Decision::Keep(Keep::Unchanged)
        );
        assert_eq!(
            c.handle_guest_frame("vif0", 12),
            take_back(TakeBack::GuestSentHere)
        );
        assert_eq!(c.routing("vif0"), Routing::Now);
        assert!(c.given_away().is_empty());
        // Its interface on the new host goes after that: nothing more.
        assert_eq!(
            c.handle_report(&gone(1), |_| Some(12)).0,
            Decision::Keep(Keep::NotGiven)
        );
    }

    #[test]
    fn a_held_interface_gets_the_vm_when_it_leaves_the_new_host_or_resumes_here() {
        let mut c = custody(true);
        c.handle_report(&here(1), vif0_is_7);
        // The source replaced at once (the index changed): held too.
        assert_eq!(
            c.handle_link("vif0", Some(12)),
            Decision::Hold {
                vif: "vif0".into(),
                ifindex: 12
            }
        );
        assert_eq!(
            c.handle_report(&gone(1), |_| Some(12)).0,
            take_back(TakeBack::GoneFromNewHost)
        );
        c.handle_report(&here(2), |_| Some(12));
        c.handle_link("vif0", None);
        c.handle_link("vif0", Some(13));
        assert_eq!(
            c.handle_resume("vif0"),
            Ok(take_back(TakeBack::SourceResumed))
        );
        // Held, then gone, then the VM left the new host: routed at once next time.
        c.handle_report(&here(3), |_| Some(13));
        c.handle_link("vif0", None);
        c.handle_link("vif0", Some(14));
        c.handle_link("vif0", None);
        assert_eq!(
            c.handle_report(&gone(3), |_| None).0,
            Decision::Keep(Keep::LeftNewHost)
        );
        assert_eq!(
            c.handle_link("vif0", Some(15)),
            Decision::Keep(Keep::Unchanged)
        );
        assert_eq!(c.routing("vif0"), Routing::Now);
    }

    #[test]
    fn a_vm_reported_on_the_new_host_without_an_interface_here_is_held_when_one_comes() {
        let mut c = custody(true);
        assert_eq!(
            c.handle_report(&here(1), |_| None).0,
            Decision::Keep(Keep::NoInterface)
        );
        assert_eq!(
            c.handle_link("vif0", Some(7)),
            Decision::Hold {
                vif: "vif0".into(),
                ifindex: 7
            }
        );
    }

    #[test]
    fn a_new_sighting_while_given_away_is_remembered_for_its_gone() {
        let mut c = custody(true);
        c.handle_report(&here(1), vif0_is_7);
        assert_eq!(
            c.handle_report(&here(2), vif0_is_7).0,
            Decision::Keep(Keep::AlreadyGiven)
        );
        assert_eq!(
            c.handle_report(&gone(1), vif0_is_7).0,
            Decision::Keep(Keep::NotGiven)
        );
        assert_eq!(
            c.handle_report(&gone(2), vif0_is_7).0,
            take_back(TakeBack::GoneFromNewHost)
        );
    }

    /// `ms` after a fixed instant: the custody only compares them.
    fn at(ms: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn a_vm_paused_for_migration_is_given_away_at_once_and_confirmed_by_the_new_host() {
        let mut c = custody(true);
        assert_eq!(c.handle_pause("vif0", vif0_is_7, at(0)), Ok(give_away()));
        assert_eq!(c.given_away(), ["vif0"]);
        // Said twice (the event and an operator): nothing more to do.
        assert_eq!(
            c.handle_pause("vif0", vif0_is_7, at(1)),
            Ok(Decision::Keep(Keep::AlreadyGiven))
        );
        assert_eq!(
            c.handle_report(&here(1), vif0_is_7),
            (
                Decision::Keep(Keep::Confirmed),
                Some(Report::Ack(AckOf::Here, ReportId(1)))
            )
        );
        // Confirmed: the deadline no longer applies...
        assert_eq!(c.handle_timeout(at(60_000)), []);
        assert_eq!(c.given_away(), ["vif0"]);
        // ...and the new host's interface gone under that sighting brings it back.
        assert_eq!(
            c.handle_report(&gone(1), vif0_is_7).0,
            take_back(TakeBack::GoneFromNewHost)
        );
    }

    #[test]
    fn a_vm_handed_over_at_its_pause_comes_back_when_the_new_host_never_reports_it() {
        let mut c = custody(true);
        c.handle_pause("vif0", vif0_is_7, at(0)).unwrap();
        assert_eq!(c.poll_timeout(), Some(at(0) + CONFIRM_WITHIN));
        assert_eq!(c.handle_timeout(at(0) + CONFIRM_WITHIN / 2), []);
        assert_eq!(
            c.handle_timeout(at(0) + CONFIRM_WITHIN),
            [take_back(TakeBack::NotConfirmed)]
        );
        assert!(c.given_away().is_empty());
        assert_eq!(c.poll_timeout(), None);
        // A late report of the guest running there is a new sighting: it acts.
        assert_eq!(c.handle_report(&here(1), vif0_is_7).0, give_away());
    }

    #[test]
    fn a_source_that_resumes_after_its_pause_gets_its_vm_back() {
        let mut c = custody(true);
        assert_eq!(c.handle_resume("vif0"), Ok(Decision::Keep(Keep::NotGiven)));
        c.handle_pause("vif0", vif0_is_7, at(0)).unwrap();
        assert_eq!(
            c.handle_resume("vif0"),
            Ok(take_back(TakeBack::SourceResumed))
        );
        assert!(c.given_away().is_empty());
        assert_eq!(c.handle_timeout(at(0) + CONFIRM_WITHIN), []);
        // So does a guest frame on the source, the same as after a report.
        c.handle_pause("vif0", vif0_is_7, at(10)).unwrap();
        assert_eq!(
            c.handle_guest_frame("vif0", 7),
            take_back(TakeBack::GuestSentHere)
        );
    }

    #[test]
    fn a_pause_is_refused_for_what_cannot_be_handed_over() {
        assert_eq!(
            custody(false).handle_pause("vif0", vif0_is_7, at(0)),
            Err(Refusal::Off)
        );
        let mut c = custody(true);
        assert_eq!(
            c.handle_pause("vif9", vif0_is_7, at(0)),
            Err(Refusal::UnknownVif)
        );
        assert_eq!(c.handle_resume("vif9"), Err(Refusal::UnknownVif));
        assert_eq!(
            c.handle_pause("vif1", vif0_is_7, at(0)),
            Err(Refusal::NoInterface)
        );
        assert!(c.given_away().is_empty());
    }
}
