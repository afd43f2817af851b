//! The old host's side, pure: what to do with a VM's routes on its interface here when the
//! new host reports the guest, or the guest shows up here again.
//!
//! Each decision takes the VM interface's index as the I/O edge reads it at that moment
//! (`ifindex_of`), so a report about an interface since replaced cannot touch its successor.
//! No sockets, no netlink: the edge carries out the [`Decision`].

use std::net::IpAddr;

use crate::config::Vm;
use crate::switch_report::{AckOf, Report, ReportId, VmReport};

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
    /// Nothing concerns this VM.
    Unchanged,
}

/// A VM given away from its interface here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Given {
    /// The sighting reported by the new host.
    id: ReportId,
    /// The index of the interface the routes were removed from.
    ifindex: u32,
}

/// One `[[vm]]` as the old host holds it.
#[derive(Debug, Clone)]
struct Held {
    vif: String,
    addresses: Vec<IpAddr>,
    given: Option<Given>,
    /// The last sighting acted on: a repeat of it (a late retransmission) never acts again.
    decided: Option<ReportId>,
}

/// The old host's custody of its VMs' routes: a sans-IO state machine.
#[derive(Debug, Clone)]
pub struct Custody {
    enabled: bool,
    vms: Vec<Held>,
}

/// Whether two address lists hold the same addresses, in any order.
fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

impl Custody {
    /// Custody of `vms`, all running here; `enabled` is `handover = "first-frame"`.
    pub fn new(vms: &[Vm], enabled: bool) -> Self {
        Self {
            enabled,
            vms: vms
                .iter()
                .map(|vm| Held {
                    vif: vm.vif.clone(),
                    addresses: vm.addresses.clone(),
                    given: None,
                    decided: None,
                })
                .collect(),
        }
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
        if let Some(given) = vm.given.as_mut() {
            given.id = id;
            return Decision::Keep(Keep::AlreadyGiven);
        }
        match ifindex_of(&vm.vif) {
            None => Decision::Keep(Keep::NoInterface),
            Some(ifindex) => {
                vm.given = Some(Given { id, ifindex });
                Decision::GiveAway {
                    vif: vm.vif.clone(),
                    ifindex,
                    addresses: vm.addresses.clone(),
                }
            }
        }
    }

    fn gone(vm: &mut Held, id: ReportId, ifindex_of: &impl Fn(&str) -> Option<u32>) -> Decision {
        match vm.given {
            Some(given) if given.id == id => {
                vm.given = None;
                if ifindex_of(&vm.vif) == Some(given.ifindex) {
                    Decision::TakeBack {
                        vif: vm.vif.clone(),
                        because: TakeBack::GoneFromNewHost,
                    }
                } else {
                    Decision::Keep(Keep::InterfaceGone)
                }
            }
            _ => Decision::Keep(Keep::NotGiven),
        }
    }

    /// A frame arrived from the guest on `vif` (index `ifindex`) here.
    pub fn handle_guest_frame(&mut self, vif: &str, ifindex: u32) -> Decision {
        match self.vms.iter_mut().find(|vm| vm.vif == vif) {
            Some(vm) if vm.given.is_some_and(|g| g.ifindex == ifindex) => {
                vm.given = None;
                Decision::TakeBack {
                    vif: vm.vif.clone(),
                    because: TakeBack::GuestSentHere,
                }
            }
            _ => Decision::Keep(Keep::Unchanged),
        }
    }

    /// `vif` is up with index `ifindex`, or gone (`None`): an interface the VM was given
    /// away from that is no longer there is forgotten (its routes went with it; nothing is
    /// restored).
    pub fn handle_link(&mut self, vif: &str, ifindex: Option<u32>) -> Decision {
        match self.vms.iter_mut().find(|vm| vm.vif == vif) {
            Some(vm) if vm.given.is_some_and(|g| Some(g.ifindex) != ifindex) => {
                vm.given = None;
                Decision::Keep(Keep::InterfaceGone)
            }
            _ => Decision::Keep(Keep::Unchanged),
        }
    }

    /// The VMs given away now, by interface here (for `vmtun status`).
    pub fn given_away(&self) -> Vec<String> {
        (self.vms.iter())
            .filter(|vm| vm.given.is_some())
            .map(|vm| vm.vif.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "203.0.113.2";

    fn custody(enabled: bool) -> Custody {
        Custody::new(
            &[
                Vm {
                    vif: "vif0".into(),
                    addresses: vec![VM.parse().unwrap(), "2001:db8:1::2".parse().unwrap()],
                },
                Vm {
                    vif: "vif1".into(),
                    addresses: vec!["203.0.113.3".parse().unwrap()],
                },
            ],
            enabled,
        )
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
        assert_eq!(
            c.handle_report(&gone(1), vif0_is_7).0,
            Decision::Keep(Keep::NotGiven)
        );
        // Recreated under a new index (the VM back here), the old custody is forgotten too.
        c.handle_report(&here(2), vif0_is_7);
        assert_eq!(
            c.handle_link("vif0", Some(12)),
            Decision::Keep(Keep::InterfaceGone)
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
}
