//! Host prerequisites that vmtun checks but never changes: turning them on is the
//! operator's decision (forwarding changes what the whole host does).

use super::change::Family;
use super::error::NetError;
use super::ops::NetOps;
use super::plan::Role;

/// Checks what `role` needs before anything is changed: both migration roles forward
/// packets between the tunnel, the VM interfaces and the uplink, so forwarding must be on
/// for each family of the VM subnets (`net.ipv4.ip_forward`,
/// `net.ipv6.conf.all.forwarding`). A plain tunnel (`None`) needs nothing.
pub fn check_prerequisites(ops: &mut dyn NetOps, role: Option<&Role>) -> Result<(), NetError> {
    let Some(role) = role else { return Ok(()) };
    for family in Family::all_of(role.subnets()) {
        let key = family.forwarding();
        let value = ops.read_sysctl(&key)?;
        if value.trim() != "1" {
            return Err(NetError::Prerequisite {
                key,
                value: value.trim().into(),
                role: role.name(),
            });
        }
    }
    Ok(())
}
