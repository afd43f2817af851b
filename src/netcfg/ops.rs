//! The seam between the pure plan and the kernel: [`NetOps`] applies and reverts single
//! changes. The journal drives it; the netlink implementation ([`super::SystemOps`]) and the
//! recording fake ([`super::FakeOps`]) implement it.

use super::change::{Change, Route, SysctlKey};
use super::error::NetError;

/// Carries out single [`Change`]s on a host. Implementations do exactly one change per call
/// and report failures with [`NetError::Change`] naming it, so that the journal can roll
/// back and undo precisely.
pub trait NetOps {
    /// Reads the state `c` is about to overwrite (previous MTU, sysctl value, link state) and
    /// returns `c` with it filled in, so that [`NetOps::revert`] can restore it. Changes that
    /// overwrite nothing come back unchanged.
    fn capture(&mut self, c: &Change) -> Result<Change, NetError>;

    /// Makes the change. Fails (typically with `File exists`) rather than adopting an
    /// object that is already there: vmtun only undoes what it made.
    fn apply(&mut self, c: &Change) -> Result<(), NetError>;

    /// Undoes a change made by [`NetOps::apply`]. An object that is already gone is reported
    /// as such ([`NetError::is_gone`]); the journal decides whether that is fine.
    fn revert(&mut self, c: &Change) -> Result<(), NetError>;

    /// Whether `c`, as applied, is still in place: its object exists, its sysctl or MTU has
    /// vmtun's value, its link is up. An object on an interface that is gone is not in
    /// place. For putting back what another program removed.
    fn is_in_place(&mut self, c: &Change) -> Result<bool, NetError>;

    /// Reads a sysctl (prerequisite checks).
    fn read_sysctl(&mut self, key: &SysctlKey) -> Result<String, NetError>;

    /// Removes route `r` whoever added it (as `ip route del`, any protocol): for the routes
    /// that outlive vmtun ([`super::vif_up`]'s), which libvirt's own script may have added
    /// before vmtun ran. [`NetOps::revert`] removes only what vmtun added.
    fn remove_route(&mut self, r: &Route) -> Result<(), NetError> {
        self.revert(&Change::Route(r.clone()))
    }
}
