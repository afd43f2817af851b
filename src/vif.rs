//! VM interfaces: what libvirt's `<script path=...>` calls when a VM's tap appears
//! (`vmtun vif-up IFACE`), and the watcher that does the same from inside `vmtun up`.
//!
//! What this sets — a /32 route per VM address onto its interface, and proxy ARP there —
//! belongs to the interface's life, as in the seed's libvirt script: it is not journaled,
//! stays when vmtun exits (the moved VM must stay reachable), and goes with the interface.
//! The exceptions are the handover's (`crate::handover`): on the old host, [`unroute`] takes
//! a migrated VM's routes off the interface of its paused source before that goes; on the
//! new host, after the cutover, an interface that comes up gets only its proxy ARP
//! ([`prepare`]) until its guest's first frame (`crate::handover::Routing`).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

use crate::config::{Config, Vm};
use crate::cutover::index_of;
use crate::handover::{Handover, Routing};
use crate::netcfg::{self, Change, NetOps};
use crate::status::{Reply, Request};

/// `vmtun vif-up IFACE -c FILE` as run on a host: the running instance for `config` does it
/// (it knows whether the VM runs here yet: `crate::handover::Routing`); with none running
/// (or one from before it answered `vifup`), [`up`] here.
pub fn up_here(config: &Config, iface: &str) -> anyhow::Result<()> {
    match crate::control::request(config, Request::VifUp(iface.to_owned())) {
        Ok(Reply::Ok(_)) => Ok(()),
        Ok(Reply::Error(e)) if !e.starts_with("unknown request") => anyhow::bail!("{e}"),
        _ => up(config, iface),
    }
}

/// `vif-up` itself: routes the `[[vm]]` addresses of `iface` onto it and turns on proxy
/// ARP. Idempotent, so libvirt may call it on every start.
pub fn up(config: &Config, iface: &str) -> anyhow::Result<()> {
    let mut ops = netcfg::SystemOps::new()?;
    apply(&mut ops, config, iface)
}

/// The same, with the caller's netlink handle (the link watcher keeps one open).
pub fn apply(ops: &mut dyn NetOps, config: &Config, iface: &str) -> anyhow::Result<()> {
    let (vm, plan) = plan_of(config, iface)?;
    netcfg::apply_idempotent(ops, &plan)?;
    tracing::info!(iface, addresses = ?vm.addresses, "VM interface routed (gateway answered)");
    Ok(())
}

/// The `[[vm]]` of `iface` and what `vif-up` sets for it.
fn plan_of<'a>(config: &'a Config, iface: &str) -> anyhow::Result<(&'a Vm, Vec<Change>)> {
    let vm = config.vm(iface).with_context(|| {
        format!(
            "vif-up: no [[vm]] with vif = {iface:?} in {}",
            config.path.display()
        )
    })?;
    Ok((vm, netcfg::vif_up(iface, &vm.addresses)))
}

/// What `vif-up` does but the routes: proxy ARP and the rest of the interface's settings, for
/// an interface whose VM does not run on it yet.
pub fn prepare(config: &Config, iface: &str) -> anyhow::Result<()> {
    let (_, plan) = plan_of(config, iface)?;
    let settings: Vec<Change> = (plan.into_iter())
        .filter(|c| !matches!(c, Change::Route(_)))
        .collect();
    netcfg::apply_idempotent(&mut netcfg::SystemOps::new()?, &settings)?;
    tracing::info!(
        iface,
        "VM interface prepared; its routes wait for its guest"
    );
    Ok(())
}

/// Takes the `[[vm]]` routes of `iface` off it again (proxy ARP stays): the old host's half
/// of the handover, once the VM runs on the new host. Routes already gone are fine.
pub fn unroute(ops: &mut dyn NetOps, config: &Config, iface: &str) -> anyhow::Result<()> {
    let (_, plan) = plan_of(config, iface)?;
    let routes: Vec<netcfg::Route> = (plan.into_iter())
        .filter_map(|c| match c {
            Change::Route(r) => Some(r),
            _ => None,
        })
        .collect();
    netcfg::remove_routes(ops, &routes)?;
    Ok(())
}

/// Inside `vmtun up`: routes each configured VM interface when it comes up (libvirt creates
/// the tap on the new host during `virsh migrate`), so the libvirt script is optional.
/// Interfaces already up at start are routed at once. With a `handover`, tells it every
/// configured interface's coming and going. Runs until the task is aborted.
pub async fn watch(config: Arc<Config>, handover: Option<Handover>) {
    let (connection, _handle, mut messages) =
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link]) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("not watching VM interfaces (netlink: {e}); use vmtun vif-up");
                return;
            }
        };
    tokio::spawn(connection);
    // Routed once per time up: a later change of an interface that stays up (its carrier,
    // say) must not put back routes the handover took off it.
    let mut routed: HashSet<String> = HashSet::new();
    let routing_of = |vif: &str, ifindex: Option<u32>| match &handover {
        Some(handover) => handover.link(vif, ifindex),
        None => Routing::Now,
    };
    for vm in &config.vms {
        let up = is_up(&vm.vif);
        let routing = routing_of(&vm.vif, up.then(|| index_of(&vm.vif)).flatten());
        if up {
            routed.insert(vm.vif.clone());
            set_up_in_background(&config, &vm.vif, routing);
        }
    }
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
        let routing = routing_of(&name, up.then_some(link.header.index));
        if !up {
            routed.remove(&name);
        } else if routed.insert(name.clone()) {
            set_up_in_background(&config, &name, routing);
        }
    }
}

fn is_up(iface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & libc::IFF_UP as u32 != 0)
}

/// Sets up a VM interface that came up, routed or not as `routing` says. Netlink and sysctl
/// writes block; they run off the event loop.
fn set_up_in_background(config: &Arc<Config>, iface: &str, routing: Routing) {
    let (config, iface) = (config.clone(), iface.to_owned());
    tokio::task::spawn_blocking(move || {
        let done = match routing {
            Routing::Now => up(&config, &iface),
            Routing::AtFirstFrame => prepare(&config, &iface),
        };
        if let Err(e) = done {
            tracing::warn!("setting up VM interface {iface}: {e:#}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::FakeOps;
    use std::path::Path;

    fn config() -> Config {
        let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let peer = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";
        let text = format!(
            "[interface]\nname = \"vmtun0\"\nprivate_key = \"{key}\"\naddress = \"100.64.0.1/24\"\n\n\
             [[peer]]\npublic_key = \"{peer}\"\nallowed_ips = [\"0.0.0.0/0\", \"::/0\"]\n\n\
             [migration]\nrole = \"old\"\nsubnets = [\"203.0.113.0/29\", \"2001:db8:1::/64\"]\nvia = \"100.64.0.2\"\n\n\
             [[vm]]\nvif = \"vif0\"\naddresses = [\"203.0.113.2\", \"2001:db8:1::2\"]\n"
        );
        Config::parse(&text, Path::new("/etc/vmtun/test.toml")).unwrap()
    }

    #[test]
    fn unroute_takes_the_routes_off_and_leaves_the_rest_of_vif_up() {
        let config = config();
        let mut ops = FakeOps::with_interface("vif0", true);
        let dad = crate::netcfg::SysctlKey::ipv6_conf("vif0", "accept_dad");
        ops.sysctls.insert(dad.path().into(), "1".into());
        apply(&mut ops, &config, "vif0").unwrap();
        let before = ops.present.clone();
        unroute(&mut ops, &config, "vif0").unwrap();
        let gone: Vec<String> = (before.iter())
            .filter(|c| !ops.present.contains(c))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            gone,
            [
                "ip route add 203.0.113.2/32 dev vif0",
                "ip -6 route add 2001:db8:1::2/128 dev vif0"
            ]
        );
        assert!(
            ops.present
                .iter()
                .any(|c| matches!(c, Change::Address { .. }))
        );
        // Again: already gone is fine; vif-up puts them back.
        unroute(&mut ops, &config, "vif0").unwrap();
        apply(&mut ops, &config, "vif0").unwrap();
        assert_eq!(ops.present.len(), before.len());
        assert!(unroute(&mut ops, &config, "vif9").is_err());
    }
}
