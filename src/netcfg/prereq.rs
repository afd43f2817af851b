//! Host prerequisites that vmtun checks but never changes: turning them on is the
//! operator's decision (forwarding changes what the whole host does).

use super::change::SysctlKey;
use super::error::NetError;
use super::ops::NetOps;
use super::plan::Role;

/// Checks what `role` needs before anything is changed: both migration roles forward
/// packets between the tunnel, the VM interfaces and the uplink, so `net.ipv4.ip_forward`
/// must be 1. A plain tunnel (`None`) needs nothing.
pub fn check_prerequisites(ops: &mut dyn NetOps, role: Option<&Role>) -> Result<(), NetError> {
    let Some(role) = role else { return Ok(()) };
    let key = SysctlKey::ip_forward();
    let value = ops.read_sysctl(&key)?;
    if value.trim() != "1" {
        return Err(NetError::Prerequisite {
            key,
            value: value.trim().into(),
            role: role.name(),
        });
    }
    Ok(())
}
