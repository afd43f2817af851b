//! VM interfaces: what libvirt's `<script path=...>` calls when a VM's tap appears
//! (`vmtun vif-up IFACE`), and the watcher that does the same from inside `vmtun up`.
//!
//! What this sets — a /32 route per VM address onto its interface, and proxy ARP there —
//! belongs to the interface's life, as in the seed's libvirt script: it is not journaled,
//! stays when vmtun exits (the moved VM must stay reachable), and goes with the interface.

use std::net::IpAddr;

use anyhow::Context as _;

use crate::config::Config;
use crate::netcfg::{self, NetOps};

/// `vmtun vif-up IFACE -c FILE`: routes the `[[vm]]` addresses of `iface` onto it and
/// turns on proxy ARP. Idempotent, so libvirt may call it on every start.
pub fn up(config: &Config, iface: &str) -> anyhow::Result<()> {
    let mut ops = netcfg::SystemOps::new()?;
    apply(&mut ops, config, iface)
}

/// The same, with the caller's netlink handle (the link watcher keeps one open).
pub fn apply(ops: &mut dyn NetOps, config: &Config, iface: &str) -> anyhow::Result<()> {
    let vm = config.vm(iface).with_context(|| {
        format!(
            "vif-up: no [[vm]] with vif = {iface:?} in {}",
            config.path.display()
        )
    })?;
    let addresses: Vec<IpAddr> = vm.addresses.iter().copied().map(IpAddr::V4).collect();
    netcfg::apply_idempotent(ops, &netcfg::vif_up(iface, &addresses))?;
    tracing::info!(iface, addresses = ?vm.addresses, "VM interface routed (proxy ARP on)");
    Ok(())
}
