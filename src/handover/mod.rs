//! The handover of a live-migrated VM's traffic from the old host to the new one, as soon
//! as the guest runs there (issue 12, item 2; `[migration] handover = "first-frame"`, the
//! default).
//!
//! After QEMU's live migration the source QEMU stays paused until it exits (libvirt ends it
//! after its own round trips); until then its tap, and with it the VM's /32 routes that
//! `vif-up` put there, are still on the old host, which keeps sending the VM's traffic into
//! a guest that no longer runs. The new host knows first: the guest's first frame on its
//! interface there (QEMU's announcement when the guest resumes, or anything the guest
//! sends) means the VM runs there. So:
//! - the new host watches every configured VM interface that comes up for the first frame
//!   arriving on it ([`FirstFrame`], a packet socket), and reports it to the old host
//!   through the tunnel ([`crate::switch_report`]'s channel, `Report::VmHere`), repeating
//!   until acknowledged ([`Announcer`]); if that interface then goes away it reports that
//!   too (`Report::VmGone`);
//! - the old host, on the report, takes the VM's routes off its interface there
//!   ([`crate::vif::unroute`]): the subnet's route through the tunnel then carries the VM's
//!   traffic to the new host. It watches that interface meanwhile: a frame from the guest
//!   there (the migration failed and the source resumed), or the new host's interface gone
//!   while the source's is still here, puts the routes back ([`crate::vif::apply`]). When
//!   the source's interface goes away, nothing is restored ([`Custody`]);
//! - the old host may also give a VM away before that, at its source's pause (`vmtun
//!   handover VIF`, which `crate::libvirt_events` runs on libvirt's event): the new host's
//!   waiting interface queues what the VM is sent until the guest resumes there, and the
//!   new host's report confirms it (else the routes come back after [`CONFIRM_WITHIN`]);
//! - an interface that comes up for a VM that runs on the other host waits for its guest
//!   ([`Routing::AtFirstFrame`]): on the old host, a migration back's destination; on the
//!   new host, once the VM's subnet has cut over there, any migration's destination. Its
//!   routes go on at the guest's first frame on it; until then the tunnel carries the VM's
//!   traffic to where it runs.
//!
//! What keeps a report from taking a running VM away from the old host:
//! - only the new host's vmtun can send one: it travels inside the tunnel, authenticated by
//!   the peer's key, and the old host listens on its tunnel device only and believes only the
//!   peer's tunnel address;
//! - the new host sends one only after a frame arrived on the VM's interface from the other
//!   side, i.e. from the process holding the tap: QEMU transmits only once the guest runs
//!   (or announces it at resume). The interface merely existing (QEMU waiting with
//!   `-incoming`, libvirt's script having run) reports nothing;
//! - the old host acts only on the `[[vm]]` whose addresses are exactly the reported ones,
//!   only on the interface as it is when the report comes (its index), and only once per
//!   sighting (a random id): a late repeat of a report it has since taken back changes
//!   nothing;
//! - a frame from the guest on the old host's interface after the handover wins: the routes
//!   come back at once.
//!
//! The parts: [`Announcer`] (new host) and [`Custody`] (old host) are pure state machines
//! with their unit tests; [`FirstFrame`] is the packet-socket edge; [`NewHost`] and
//! [`OldHost`] tie them to the reporter, the listener and netlink, and [`Handover`] is what
//! the VM interface watcher (`crate::vif::watch`) tells about interfaces coming and going.
//! Every decision is logged at info with the VM's interface.

mod announce;
mod custody;
mod first_frame;
mod new_host;
mod old_host;
mod requests;

use std::sync::Arc;

pub use announce::{Announcer, MAX_SENDS, RETRY_FIRST, RETRY_MAX, Transmit, VmEvent};
pub use custody::{
    CONFIRM_WITHIN, Custody, Decision, Keep, KeptOff, Refusal, Remembered, TakeBack,
};
pub use first_frame::{Ended, FirstFrame};
pub use new_host::NewHost;
pub use old_host::OldHost;
pub use requests::VmRequests;

/// When a VM interface that came up may carry its VM's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// At once (`vif-up` as ever).
    Now,
    /// Only at the guest's first frame on it: the VM runs on the other host meanwhile, and
    /// the handover puts the routes on when that frame comes.
    AtFirstFrame,
}

/// The handover of one host, as the VM interface watcher reaches it.
#[derive(Clone)]
pub enum Handover {
    /// Role new: watching for guests, reporting them.
    New(Arc<NewHost>),
    /// Role old: acting on the reports.
    Old(Arc<OldHost>),
}

impl Handover {
    /// The configured VM interface `vif` is up with index `ifindex`, or gone (`None`); when
    /// its VM's routes may go on it.
    pub fn link(&self, vif: &str, ifindex: Option<u32>) -> Routing {
        match self {
            Self::New(host) => host.link(vif, ifindex),
            Self::Old(host) => host.link(vif, ifindex),
        }
    }
}
