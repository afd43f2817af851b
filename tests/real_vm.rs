//! The move with a real VM: QEMU (TCG) boots the guest of `scripts/guest.sh` on the old
//! host's tap vif0, vmtun runs on both hosts, QEMU live-migrates the guest to the new host
//! over QMP, and the provider switches. The lab is tests/migration.rs's, with QEMU's taps
//! in place of the VM namespace's veth.
//!
//! Skips (saying why) only without /dev/net/tun or without QEMU; `scripts/setup.sh`
//! installs QEMU from bookworm-backports.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Result, Scratch, check, preflight, wait_ping};
use helpers::{WAIT, cut_over_with_pings, launch_both, prepare_hosts};
use std::path::Path;
use std::time::Instant;
use vmtun::lab::migration::hosts::CutoverState;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{NEW, VIF, VIF_MAC, VM_ADDR, VM_GATEWAY, VM_MAC};
use vmtun::lab::qemu::{GuestImage, MIGRATION_PORT, QEMU, Qemu, VmSpec};

/// Why this machine cannot run a real VM, if it cannot.
fn missing_requirement() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (QEMU's tap needs it)".into());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(QEMU).is_file()));
    (!on_path).then(|| format!("no {QEMU} on PATH: run scripts/setup.sh"))
}

fn spec(image: &GuestImage, scratch: &Scratch, side: &str) -> VmSpec {
    VmSpec {
        image: image.clone(),
        tap: VIF.into(),
        mac: VM_MAC.into(),
        addr: VM_ADDR.into(),
        gateway: VM_GATEWAY.into(),
        qmp: scratch.path().join(format!("{side}.qmp")),
        console: scratch.path().join(format!("{side}.console")),
    }
}

/// A real guest answers the client from the old host, keeps answering after QEMU's live
/// migration to the new host (through the tunnel), and after the provider's switch, once
/// the new host cut over.
#[test]
fn a_real_vm_answers_after_a_live_migration_and_after_the_switch() -> Result<()> {
    if let Some(why) = missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    preflight(&["nft", "ping"]);
    let image = GuestImage::build(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let scratch = Scratch::new("realvm")?;
    let lab = MigrationLab::build(1)?;
    // QEMU's tap takes the place of the lab's veth.
    lab.detach_vm(Site::Old)?;

    let booting = Instant::now();
    let mut source = Qemu::start(
        &lab.old,
        "qemu-old",
        scratch.path(),
        spec(&image, &scratch, "old"),
        None,
        VIF_MAC,
    )?;
    lab.seed_vif_up(Site::Old)?;
    source.resume()?;
    source.wait_booted()?;
    eprintln!("real_vm: guest booted in {:.1?}", booting.elapsed());

    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    launch_both(&lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    let incoming = format!("tcp:{NEW}:{MIGRATION_PORT}");
    let destination = Qemu::start(
        &lab.new,
        "qemu-new",
        scratch.path(),
        spec(&image, &scratch, "new"),
        Some(&incoming),
        VIF_MAC,
    )?;
    new.vif_up(VIF)?;
    // A figure, not an assertion: how many of the client's pings the move cost.
    let interval = "0.02";
    let mut pings = lab.client.spawn(
        "pings",
        scratch.path(),
        "ping",
        &["-q", "-i", interval, VM_ADDR],
    )?;
    let (total_ms, downtime_ms) = source.migrate(&incoming)?;
    eprintln!("real_vm: migration took {total_ms} ms, downtime {downtime_ms} ms (QEMU's figures)");
    // libvirt ends the source QEMU once the guest runs on the destination: its tap goes.
    drop(source);
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    pings.signal(libc::SIGINT);
    pings.wait_timeout(WAIT)?;
    let summary = pings.stdout();
    let summary = summary
        .lines()
        .find(|line| line.contains("transmitted"))
        .unwrap_or("no summary");
    eprintln!("real_vm: the client's pings every {interval} s through the move: {summary}");
    let through_old = lab.core_counters()?;
    check(through_old.from_new == 0, || {
        format!("before the switch the replies leave through the old site: {through_old:?}")
    })?;
    check(!lab.old.has_link(VIF), || {
        "the source QEMU's tap is gone: the answers come from the migrated guest".into()
    })?;
    // The destination's tap: the guest's frames are its received packets.
    let from_guest = lab.new.link_stat(VIF, "rx_packets")?;
    check(from_guest > 0, || {
        format!("the migrated guest sent nothing on the new host's {VIF}")
    })?;

    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let after = lab.core_counters()?;
    check(after.from_new > 0, || {
        format!("after the switch the replies leave through the new site: {after:?}")
    })?;
    drop(destination);
    old.down()?;
    new.down()
}

/// Whether `ns` routes the VM's /32 onto [`VIF`] (what `vif-up` put there).
fn vm_route_on_vif(ns: &vmtun::lab::Netns) -> Result<bool> {
    let route = ns.ip(&["route", "show", &format!("{VM_ADDR}/32"), "dev", VIF])?;
    Ok(!route.trim().is_empty())
}

/// With the handover (`[migration] handover`, the default "first-frame"): once the migrated
/// guest has run on the new host (QEMU's announcement at resume on its tap), the old host
/// takes the VM's /32 off the source's tap while the source QEMU still exists, paused after
/// the migration; the client's pings are answered by the migrated guest through the tunnel
/// before the source is gone.
#[test]
fn the_old_host_stops_routing_to_the_paused_source_once_the_guest_runs_on_the_new_host()
-> Result<()> {
    if let Some(why) = missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    preflight(&["nft", "ping"]);
    let handover = "first-frame";
    let image = GuestImage::build(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let scratch = Scratch::new("realvm-handover")?;
    let lab = MigrationLab::build(1)?;
    lab.detach_vm(Site::Old)?;
    let mut source = Qemu::start(
        &lab.old,
        "qemu-old",
        scratch.path(),
        spec(&image, &scratch, "old"),
        None,
        VIF_MAC,
    )?;
    lab.seed_vif_up(Site::Old)?;
    source.resume()?;
    source.wait_booted()?;
    let (mut old, mut new) = helpers::prepare_hosts_with(&lab, &scratch, "auto", |o, n| {
        *o = o.clone().with_handover(handover);
        *n = n.clone().with_handover(handover);
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let incoming = format!("tcp:{NEW}:{MIGRATION_PORT}");
    let destination = Qemu::start(
        &lab.new,
        "qemu-new",
        scratch.path(),
        spec(&image, &scratch, "new"),
        Some(&incoming),
        VIF_MAC,
    )?;
    check(vm_route_on_vif(&lab.old)?, || {
        "the destination QEMU waiting with -incoming took the VM from the old host".into()
    })?;

    let (total_ms, downtime_ms) = source.migrate(&incoming)?;
    eprintln!("real_vm: migration took {total_ms} ms, downtime {downtime_ms} ms (QEMU's figures)");
    vmtun::lab::wait_until(
        WAIT,
        "the old host to take the VM's /32 off the source's tap",
        || vm_route_on_vif(&lab.old).is_ok_and(|routed| !routed),
    )
    .map_err(|e| {
        vmtun::lab::LabError::Failed(format!(
            "{e}\n--- old host:\n{}\n--- new host:\n{}",
            old.log(),
            new.log()
        ))
    })?;
    // The source still exists, paused: its tap, its process, QMP's answer.
    let state = source.qmp.execute("query-status", serde_json::json!({}))?;
    check(state["running"] == false, || {
        format!("the source QEMU should be paused: {state}")
    })?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    check(
        lab.old.has_link(VIF) && source.process.exit_status().is_none(),
        || "the source QEMU and its tap are still there while the migrated guest answers".into(),
    )?;
    eprintln!("real_vm: answered through the tunnel with the source QEMU {state}");
    for (host, log) in [("new", new.log()), ("old", old.log())] {
        for line in log.lines().filter(|l| l.contains("handover: the")) {
            eprintln!("real_vm: {host} host: {line}");
        }
    }
    drop(source);
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    drop(destination);
    old.down()?;
    new.down()
}
