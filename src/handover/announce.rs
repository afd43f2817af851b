//! The new host's side, pure: which VM reports to send to the old host, and when.
//!
//! For each `[[vm]]` it follows the VM's interface (present with its index, or absent) and
//! whether the guest has sent a frame on the present one. The guest's first frame makes a
//! [`Report::VmHere`]; the interface going away after that a [`Report::VmGone`]. Each is sent
//! at once and repeated, [`RETRY_FIRST`] apart and doubling up to [`RETRY_MAX`], until the
//! old host acknowledges it or it has been sent [`MAX_SENDS`] times. Bytes and `now` in,
//! reports and a deadline out; no sockets, no clock.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Vm;
use crate::switch_report::{AckOf, Report, ReportId, VmReport};

/// The first repeat of an unacknowledged VM report: a few tunnel round trips.
pub const RETRY_FIRST: Duration = Duration::from_millis(20);
/// The longest wait between repeats.
pub const RETRY_MAX: Duration = Duration::from_secs(1);
/// How many times a VM report is sent before the new host gives up (about a minute at
/// [`RETRY_FIRST`] doubling to [`RETRY_MAX`]): long enough for a restarting old host.
pub const MAX_SENDS: u32 = 60;

/// What the new host's I/O edge tells the [`Announcer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A configured VM interface is up with this index, or is gone (`None`).
    Link {
        /// The interface.
        vif: String,
        /// Its index while it is up.
        ifindex: Option<u32>,
    },
    /// The first frame arrived on the interface with this index; `id` names this sighting.
    GuestFrame {
        /// The interface.
        vif: String,
        /// The index of the interface the frame arrived on.
        ifindex: u32,
        /// A fresh random id for the report.
        id: ReportId,
        /// When the kernel received the frame (for the log: how soon the report followed).
        at: SystemTime,
    },
    /// The old host acknowledged a VM report.
    Ack(AckOf, ReportId),
}

/// What [`Announcer::poll_transmit`] asks of the I/O edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Send this report to the old host.
    Send(Report),
    /// This report was sent [`MAX_SENDS`] times without an acknowledgement: say so.
    GiveUp(Report),
}

/// A report being repeated until it is acknowledged.
#[derive(Debug, Clone)]
struct Pending {
    report: Report,
    sends: u32,
    due: Instant,
}

/// One `[[vm]]` as the new host sees it.
#[derive(Debug, Clone)]
struct Watched {
    vif: String,
    addresses: Vec<IpAddr>,
    /// The interface's index while it is up.
    link: Option<u32>,
    /// The sighting of the guest on the present interface, once its first frame came.
    seen: Option<ReportId>,
    pending: Option<Pending>,
}

impl Watched {
    fn report(&self, id: ReportId) -> VmReport {
        VmReport {
            id,
            vif: self.vif.clone(),
            addresses: self.addresses.clone(),
        }
    }

    /// The interface went (or was replaced): if the guest had run on it, the old host
    /// must hear that it no longer does.
    fn lose_link(&mut self, now: Instant) {
        if let Some(id) = self.seen.take() {
            tracing::info!(
                vif = self.vif,
                "handover: {} is gone after its guest ran here: telling the old host",
                self.vif
            );
            self.pending = Some(Pending {
                report: Report::VmGone(self.report(id)),
                sends: 0,
                due: now,
            });
        }
        self.link = None;
    }
}

/// The new host's VM reports: a sans-IO state machine (`handle` in, `poll_*` out).
#[derive(Debug, Clone)]
pub struct Announcer {
    vms: Vec<Watched>,
}

impl Announcer {
    /// Follows the interfaces of `vms`, none of them up yet.
    pub fn new(vms: &[Vm]) -> Self {
        Self {
            vms: vms
                .iter()
                .map(|vm| Watched {
                    vif: vm.vif.clone(),
                    addresses: vm.addresses.clone(),
                    link: None,
                    seen: None,
                    pending: None,
                })
                .collect(),
        }
    }

    /// Takes in one event at `now`.
    pub fn handle(&mut self, event: VmEvent, now: Instant) {
        match event {
            VmEvent::Link { vif, ifindex } => {
                let Some(vm) = self.vms.iter_mut().find(|vm| vm.vif == vif) else {
                    return;
                };
                if vm.link != ifindex {
                    vm.lose_link(now);
                    vm.link = ifindex;
                }
            }
            VmEvent::GuestFrame {
                vif,
                ifindex,
                id,
                at,
            } => {
                let Some(vm) = self.vms.iter_mut().find(|vm| vm.vif == vif) else {
                    return;
                };
                // A frame from an interface since replaced, or after the first: nothing new.
                if vm.link != Some(ifindex) || vm.seen.is_some() {
                    return;
                }
                let frame_unix_ns = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                tracing::info!(
                    vif,
                    report = %id,
                    frame_unix_ns,
                    "handover: the guest's first frame on {vif}: it runs here; telling the old host"
                );
                vm.seen = Some(id);
                vm.pending = Some(Pending {
                    report: Report::VmHere(vm.report(id)),
                    sends: 0,
                    due: now,
                });
            }
            VmEvent::Ack(of, id) => {
                for vm in &mut self.vms {
                    let acked = vm.pending.as_ref().is_some_and(|p| match &p.report {
                        Report::VmHere(r) => of == AckOf::Here && r.id == id,
                        Report::VmGone(r) => of == AckOf::Gone && r.id == id,
                        _ => false,
                    });
                    if acked {
                        tracing::info!(vif = vm.vif, report = %id, "handover: the old host acknowledged");
                        vm.pending = None;
                    }
                }
            }
        }
    }

    /// The next report due at `now`, if any; call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let vm = self
            .vms
            .iter_mut()
            .find(|vm| vm.pending.as_ref().is_some_and(|p| p.due <= now))?;
        let pending = vm.pending.as_mut()?;
        if pending.sends >= MAX_SENDS {
            let report = pending.report.clone();
            vm.pending = None;
            return Some(Transmit::GiveUp(report));
        }
        let wait = RETRY_FIRST
            .saturating_mul(1 << pending.sends.min(16))
            .min(RETRY_MAX);
        pending.sends += 1;
        pending.due = now + wait;
        Some(Transmit::Send(pending.report.clone()))
    }

    /// When [`Self::poll_transmit`] has something next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.vms
            .iter()
            .filter_map(|vm| vm.pending.as_ref().map(|p| p.due))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcer() -> Announcer {
        Announcer::new(&[
            Vm {
                vif: "vif0".into(),
                addresses: vec!["203.0.113.2".parse().unwrap()],
            },
            Vm {
                vif: "vif1".into(),
                addresses: vec!["203.0.113.3".parse().unwrap()],
            },
        ])
    }

    fn link(vif: &str, ifindex: Option<u32>) -> VmEvent {
        VmEvent::Link {
            vif: vif.into(),
            ifindex,
        }
    }

    fn frame(vif: &str, ifindex: u32, id: u64) -> VmEvent {
        VmEvent::GuestFrame {
            vif: vif.into(),
            ifindex,
            id: ReportId(id),
            at: UNIX_EPOCH,
        }
    }

    fn here(vif: &str, id: u64, addr: &str) -> Report {
        Report::VmHere(VmReport {
            id: ReportId(id),
            vif: vif.into(),
            addresses: vec![addr.parse().unwrap()],
        })
    }

    fn gone(vif: &str, id: u64, addr: &str) -> Report {
        match here(vif, id, addr) {
            Report::VmHere(r) => Report::VmGone(r),
            _ => unreachable!(),
        }
    }

    /// Everything due at `now`.
    fn drain(a: &mut Announcer, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| a.poll_transmit(now)).collect()
    }

    #[test]
    fn the_first_guest_frame_is_reported_at_once_and_only_once() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        assert_eq!(drain(&mut a, t0), [], "an interface alone is no guest");
        assert_eq!(a.poll_timeout(), None);
        a.handle(frame("vif0", 7, 1), t0);
        assert_eq!(a.poll_timeout(), Some(t0));
        assert_eq!(
            drain(&mut a, t0),
            [Transmit::Send(here("vif0", 1, "203.0.113.2"))]
        );
        // Later frames (another watcher's, a restart's) change nothing.
        a.handle(frame("vif0", 7, 2), t0);
        assert_eq!(drain(&mut a, t0), []);
        assert_eq!(a.poll_timeout(), Some(t0 + RETRY_FIRST));
    }

    #[test]
    fn a_report_repeats_doubling_until_acknowledged() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        a.handle(frame("vif0", 7, 1), t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            assert_eq!(drain(&mut a, now).len(), 1);
            let next = a.poll_timeout().unwrap();
            gaps.push((next - now).as_millis());
            now = next;
        }
        assert_eq!(gaps, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        // An acknowledgement of something else does not stop it.
        a.handle(VmEvent::Ack(AckOf::Gone, ReportId(1)), now);
        a.handle(VmEvent::Ack(AckOf::Here, ReportId(2)), now);
        assert!(a.poll_timeout().is_some());
        a.handle(VmEvent::Ack(AckOf::Here, ReportId(1)), now);
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(drain(&mut a, now + RETRY_MAX), []);
    }

    #[test]
    fn an_unacknowledged_report_is_given_up_after_max_sends() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        a.handle(frame("vif0", 7, 1), t0);
        let mut now = t0;
        let mut sent = 0;
        loop {
            match a.poll_transmit(now) {
                Some(Transmit::Send(_)) => sent += 1,
                Some(Transmit::GiveUp(r)) => {
                    assert_eq!(r, here("vif0", 1, "203.0.113.2"));
                    break;
                }
                None => now = a.poll_timeout().expect("still pending"),
            }
        }
        assert_eq!(sent, MAX_SENDS);
        assert!(now - t0 < Duration::from_secs(90), "{:?}", now - t0);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn the_interface_going_after_the_guest_ran_is_reported_gone() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        a.handle(frame("vif0", 7, 1), t0);
        drain(&mut a, t0);
        a.handle(link("vif0", None), t0);
        // The pending "here" is replaced: the old host must end up with the routes back.
        assert_eq!(
            drain(&mut a, t0),
            [Transmit::Send(gone("vif0", 1, "203.0.113.2"))]
        );
        a.handle(VmEvent::Ack(AckOf::Here, ReportId(1)), t0);
        assert!(
            a.poll_timeout().is_some(),
            "an ack of the here is not one of the gone"
        );
        a.handle(VmEvent::Ack(AckOf::Gone, ReportId(1)), t0);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn an_interface_that_goes_without_a_guest_frame_reports_nothing() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        a.handle(link("vif0", None), t0);
        a.handle(link("vif1", Some(8)), t0);
        a.handle(link("vif1", Some(9)), t0);
        assert_eq!(drain(&mut a, t0), []);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_frame_from_a_replaced_interface_or_an_unknown_one_is_ignored() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        a.handle(link("vif0", Some(9)), t0);
        a.handle(frame("vif0", 7, 1), t0);
        a.handle(frame("vif5", 7, 1), t0);
        assert_eq!(drain(&mut a, t0), []);
        // The replacement's guest is reported; replaced once more, it is gone.
        a.handle(frame("vif0", 9, 2), t0);
        a.handle(link("vif0", Some(11)), t0);
        assert_eq!(
            drain(&mut a, t0),
            [Transmit::Send(gone("vif0", 2, "203.0.113.2"))]
        );
    }

    #[test]
    fn each_vm_is_reported_on_its_own() {
        let (mut a, t0) = (announcer(), Instant::now());
        a.handle(link("vif0", Some(7)), t0);
        a.handle(link("vif1", Some(8)), t0);
        a.handle(frame("vif1", 8, 2), t0);
        a.handle(frame("vif0", 7, 1), t0);
        let mut sent = drain(&mut a, t0);
        sent.sort_by_key(|t| format!("{t:?}"));
        assert_eq!(
            sent,
            [
                Transmit::Send(here("vif0", 1, "203.0.113.2")),
                Transmit::Send(here("vif1", 2, "203.0.113.3")),
            ]
        );
        a.handle(VmEvent::Ack(AckOf::Here, ReportId(2)), t0);
        assert_eq!(
            drain(&mut a, t0 + RETRY_FIRST),
            [Transmit::Send(here("vif0", 1, "203.0.113.2"))]
        );
    }
}
