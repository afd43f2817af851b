//! The move with a real VM: QEMU (TCG) boots the guest of `scripts/guest.sh` on the old
//! host's tap vif0, vmtun runs on both hosts, QEMU live-migrates the guest to the new host
//! over QMP while the client pings it at 1 kHz, and the provider switches. The scenario is
//! `vmtun::lab::migration::real_vm` (which `vmtun demo --real-vm` and
//! `benches/real-vm.sh` run too; tests/migration_cli.rs runs the demo, migrating through
//! the tunnel); this test checks what it reports.
//!
//! Skips (saying why) only without /dev/net/tun or without QEMU; `scripts/setup.sh`
//! installs QEMU from bookworm-backports.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Result, Scratch, check, preflight, wait_ping};
use helpers::{VMTUN, WAIT, launch_both};
use std::path::Path;
use std::time::Duration;
use vmtun::lab::migration::real_vm::{self, RealVmOptions, RealVmReport, spec};
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{NEW, VIF, VIF_MAC, VM_ADDR};
use vmtun::lab::qemu::{GuestImage, GuestRam, MIGRATION_PORT, Qemu, missing_requirement};

/// Runs the scenario with short phases, migrating over the underlay, the old host handing
/// the VM over at the source's STOP; `None` (skipped) where the machine cannot run a real
/// VM.
fn run_real_vm() -> Result<Option<RealVmReport>> {
    if let Some(why) = missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(None);
    }
    preflight(&["nft", "ping"]);
    let image = GuestImage::build(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let mut options = RealVmOptions::new(VMTUN.into(), image);
    options.before_move = Duration::from_millis(500);
    options.settle = Duration::from_millis(500);
    options.after_move = Duration::from_secs(1);
    options.after_switch = Duration::from_secs(1);
    options.hand_over_at_pause = true;
    let report = real_vm::run(&options, &mut |line| eprintln!("real_vm: {line}"))?;
    eprintln!("{}", vmtun::demo::render_real_vm(&report));
    Ok(Some(report))
}

/// What every real-VM run must show: the guest answered after the move (through the
/// tunnel and out of the old host, the provider still routing to it) and after the
/// switch, with its replies then leaving natively through the new host (the core's
/// counters), the cutover done, and both QMP events of the pause seen in order.
fn check_the_move(report: &RealVmReport) -> Result<()> {
    let run = &report.run;
    let phase = |name: &str| run.phase(name).cloned().expect("every phase is reported");
    let after_move = phase("after_move");
    check(after_move.received > 0, || {
        format!("the migrated guest answers after the move: {after_move:?}")
    })?;
    check(
        after_move.replies_via_old == after_move.received
            && report.core_before_switch.from_new == 0,
        || {
            format!(
                "before the switch the replies leave through the old site: {after_move:?}, core {:?}",
                report.core_before_switch
            )
        },
    )?;
    let after_switch = phase("after_switch");
    check(after_switch.received > 0, || {
        format!("the guest answers after the switch: {after_switch:?}")
    })?;
    check(
        after_switch.replies_via_new == after_switch.received
            && run.core_counters.from_new > report.core_before_switch.from_new,
        || {
            format!(
                "after the cutover the replies leave natively through the new site: {after_switch:?}, core {:?}",
                run.core_counters
            )
        },
    )?;
    let cutover = run.cutover.as_ref().and_then(|c| c.phase.as_deref());
    check(cutover == Some("done"), || {
        format!("vmtun's cutover is done: {cutover:?}")
    })?;
    let m = &report.migration;
    check(
        m.stop_unix_ns.is_some_and(|stop| stop <= m.resume_unix_ns),
        || format!("the source's STOP came before the destination's RESUME: {m:?}"),
    )?;
    check(
        run.vmtun_exits
            .iter()
            .all(|e| e.ends_with("exit status: 0")),
        || format!("vmtun undid everything on exit: {:?}", run.vmtun_exits),
    )
}

/// A real guest answers the client from the old host, keeps answering after QEMU's live
/// migration to the new host's underlay address (through the tunnel), handed over by the
/// old host at the source's STOP, and after the provider's switch, once the new host cut
/// over. (How many probes the pause then costs is benches/real-vm.sh's to measure.)
#[test]
fn a_real_vm_answers_after_a_live_migration_handed_over_at_its_pause_and_after_the_switch()
-> Result<()> {
    let Some(report) = run_real_vm()? else {
        return Ok(());
    };
    check_the_move(&report)?;
    let m = &report.migration;
    check(
        m.hand_over_at_pause
            && m.stop_unix_ns
                .zip(m.handed_over_unix_ns)
                .is_some_and(|(stop, handed)| stop <= handed),
        || format!("the old host handed the VM over after the source's STOP: {m:?}"),
    )
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
        spec(&image, &scratch, "old", GuestRam::Preallocated, None),
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
        spec(&image, &scratch, "new", GuestRam::Preallocated, None),
        Some(&incoming),
        VIF_MAC,
    )?;
    check(vm_route_on_vif(&lab.old)?, || {
        "the destination QEMU waiting with -incoming took the VM from the old host".into()
    })?;

    let stats = source.migrate(&incoming, &[])?;
    eprintln!(
        "real_vm: migration took {} ms, downtime {} ms (QEMU's figures)",
        stats.total_ms, stats.downtime_ms
    );
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
