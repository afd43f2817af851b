//! VM interfaces: what libvirt's `<script path=...>` calls when a VM's tap appears
//! (`vmtun vif-up IFACE`), and the watcher that does the same from inside `vmtun up`.
//!
//! What this sets — a /32 route per VM address onto its interface, and proxy ARP there —
//! belongs to the interface's life, as in the seed's libvirt script: it is not journaled,
//! stays when vmtun exits (the moved VM must stay reachable), and goes with the interface.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

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
    netcfg::apply_idempotent(ops, &netcfg::vif_up(iface, &vm.addresses))?;
    tracing::info!(iface, addresses = ?vm.addresses, "VM interface routed (gateway answered)");
    Ok(())
}

/// Inside `vmtun up`: routes each configured VM interface when it comes up (libvirt creates
/// the tap on the new host during `virsh migrate`), so the libvirt script is optional.
/// Interfaces already up at start are routed at once. Runs until the task is aborted.
pub async fn watch(config: Arc<Config>) {
    let (connection, _handle, mut messages) =
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link]) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("not watching VM interfaces (netlink: {e}); use vmtun vif-up");
                return;
            }
        };
    tokio::spawn(connection);
    for vm in &config.vms {
        if is_up(&vm.vif) {
            route_in_background(&config, &vm.vif);
        }
    }
    let mut routed: HashSet<String> = HashSet::new();
    while let Some((message, _)) = messages.next().await {
        let (link, present) = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, true),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, false),
            _ => continue,
        };
        let Some(name) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            continue;
        };
        if config.vm(&name).is_none() {
            continue;
        }
        let up = present && link.header.flags.contains(LinkFlags::Up);
        if !up {
            routed.remove(&name);
        } else if routed.insert(name.clone()) {
            route_in_background(&config, &name);
        }
    }
}

fn is_up(iface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & libc::IFF_UP as u32 != 0)
}

/// Netlink and sysctl writes block; they run off the event loop.
fn route_in_background(config: &Arc<Config>, iface: &str) {
    let (config, iface) = (config.clone(), iface.to_owned());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = up(&config, &iface) {
            tracing::warn!("routing VM interface {iface}: {e:#}");
        }
    });
}
