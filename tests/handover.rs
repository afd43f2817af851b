//! The handover (`[migration] handover`, issue 12 item 2) in namespaces, without QEMU: the
//! migrated guest is a second copy of the lab's VM plugged into the new host while the
//! source's interface is still on the old host, and its "first frame" is QEMU's RARP
//! announcement sent from the copy (tests/real_vm.rs does it with a real live migration).
//!
//! ```text
//!                  ┌── old host ── vif0 ── vm (the source, "paused": drops all)
//!  client ── core ─┤      │ tunnel
//!                  └── new host ── vif0 ── vmcopy (the destination: same MACs and address)
//! ```

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Result, Scratch, check, preflight, wait_ping};
use helpers::{WAIT, decoy_frames, launch_both, mac_of, prepare_hosts_with, send_frames};
use std::time::{Duration, Instant};
use vmtun::lab::migration::hosts::HostVmtun;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{Guest, VIF, VM_ADDR};

use vmtun::lab::{Netns, wait_until};

/// What the old host logs whenever it takes a VM's routes off its interface.
const GIVEN_AWAY: &str = "the tunnel carries its traffic to the new host";

/// Whether `ns` routes the VM's /32 onto [`VIF`] (what `vif-up` put there).
fn vm_route_on_vif(ns: &Netns) -> Result<bool> {
    let route = ns.ip(&["route", "show", &format!("{VM_ADDR}/32"), "dev", VIF])?;
    Ok(!route.trim().is_empty())
}

/// Waits until the old host routes the VM to its vif0 (`routed`) or not; the hosts' logs
/// in the error.
fn wait_old_route(
    lab: &MigrationLab,
    routed: bool,
    old: &HostVmtun<'_>,
    new: &HostVmtun<'_>,
) -> Result<()> {
    let what = if routed {
        "the old host to route the VM to vif0 again"
    } else {
        "the old host to take the VM's /32 off its vif0"
    };
    wait_until(WAIT, what, || {
        vm_route_on_vif(&lab.old).is_ok_and(|r| r == routed)
    })
    .map_err(|e| {
        vmtun::lab::LabError::Failed(format!(
            "{e}\n--- old host:\n{}\n--- new host:\n{}",
            old.log(),
            new.log()
        ))
    })
}

/// Waits until the new host routes the VM onto its vif0; its log in the error.
fn wait_new_route(lab: &MigrationLab, new: &HostVmtun<'_>) -> Result<()> {
    wait_until(WAIT, "the new host to route the VM to its vif0", || {
        vm_route_on_vif(&lab.new).is_ok_and(|routed| routed)
    })
    .map_err(|e| vmtun::lab::LabError::Failed(format!("{e}\n--- new host:\n{}", new.log())))
}

/// QEMU's RARP announcement from `ns`'s eth0 (the guest's MAC), as at resume.
fn announce(ns: &Netns) -> Result<()> {
    let mac = mac_of(ns, "eth0")?;
    let (_, rarp) = decoy_frames(mac)
        .into_iter()
        .find(|(name, _)| name.contains("RARP"))
        .expect("the decoys hold QEMU's RARP");
    send_frames(ns, "eth0", vec![rarp])
}

/// "Pauses" the guest in `ns` as a stopped QEMU is: nothing it is sent arrives, it sends
/// nothing (IP and ARP dropped both ways), and its interface stays as it is.
fn pause(ns: &Netns) -> Result<()> {
    for family in ["inet", "arp"] {
        ns.run("nft", &["add", "table", family, "paused"])?;
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            let spec = format!("{{ type filter hook {hook} priority 0; policy drop; }}");
            ns.run("nft", &["add", "chain", family, "paused", chain, &spec])?;
        }
    }
    Ok(())
}

/// Undoes [`pause`].
fn resume(ns: &Netns) -> Result<()> {
    for family in ["inet", "arp"] {
        ns.run("nft", &["delete", "table", family, "paused"])?;
    }
    Ok(())
}

/// The migration "fails": the paused source in `lab.vm` runs again and sends on its
/// interface; waits until the old host routes the VM there again.
fn source_resumes(lab: &MigrationLab, old: &HostVmtun<'_>, new: &HostVmtun<'_>) -> Result<()> {
    resume(&lab.vm)?;
    announce(&lab.vm)?;
    wait_old_route(lab, true, old, new)
}

/// Ends a test: the guest's copy unplugged, both hosts' vmtun down.
fn finish(copy: Netns, mut old: HostVmtun<'_>, mut new: HostVmtun<'_>) -> Result<()> {
    drop(copy);
    old.down()?;
    new.down()
}

/// Waits until `host`'s log has `line`.
fn wait_log(host: &HostVmtun<'_>, line: &str) -> Result<()> {
    wait_until(
        WAIT,
        &format!("`{line}` in the log of {}", host.ifname()),
        || host.log().contains(line),
    )
}

/// The lab with both hosts running vmtun with `handover`, the VM answering the client from
/// the old host; then the source [`pause`]d and its copy plugged into the new host, the new
/// host watching it.
fn paused_source_and_its_copy<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
    handover: &'static str,
) -> Result<(HostVmtun<'a>, HostVmtun<'a>, Netns)> {
    let (mut old, mut new) = prepare_hosts_with(lab, scratch, "auto", |o, n| {
        *o = o.clone().with_handover(handover);
        *n = n.clone().with_handover(handover);
    })?;
    launch_both(lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    pause(&lab.vm)?;
    let copy = lab.attach_copy(Guest::FIRST, Site::New)?;
    if handover == "first-frame" {
        wait_log(&new, &format!("handover: {VIF} is up: watching it"))?;
    }
    check(vm_route_on_vif(&lab.old)?, || {
        "the new host's interface alone (no guest frame) took the VM from the old host".into()
    })?;
    Ok((old, new, copy))
}

/// Once the guest's first frame arrives on the new host's interface, the old host takes the
/// VM's /32 off its own interface, which is still there: the client's pings reach the copy
/// through the tunnel. When the source sends on its interface again (the migration failed
/// and it resumed), the route comes back.
#[test]
fn the_guests_first_frame_on_the_new_host_moves_its_traffic_off_the_paused_source() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;

    announce(&copy)?;
    wait_old_route(&lab, false, &old, &new)?;
    check(lab.old.has_link(VIF), || {
        "the source's vif0 is still there".into()
    })?;
    // The source is paused: only the copy, through the tunnel, can answer.
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let status = old.status()?;
    check(
        status["migration"]["handed_over"] == serde_json::json!([VIF]),
        || format!("vmtun status on the old host: {status}"),
    )?;

    // A change of the source's interface that leaves it up (its MTU) puts nothing back.
    lab.old.ip(&["link", "set", VIF, "mtu", "1400"])?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    check(!vm_route_on_vif(&lab.old)?, || {
        format!(
            "the VM's route is back on the paused source:\n{}",
            old.log()
        )
    })?;

    // The migration "fails": the source runs again and sends on its interface.
    source_resumes(&lab, &old, &new)?;
    // The route is back a moment before the line saying so is written.
    wait_log(&old, "runs here again")?;
    finish(copy, old, new)
}

/// The new host's interface going away without a guest frame (QEMU's destination given up
/// before the guest ran there) takes nothing from the old host; going away after the guest
/// ran there, while the source's interface is still on the old host, gives the VM's routes
/// back to the source.
#[test]
fn the_new_hosts_interface_gone_leaves_or_gives_back_the_old_hosts_routes() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-back")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;

    lab.new.ip(&["link", "del", VIF])?;
    wait_log(&new, &format!("handover: {VIF} is gone"))?;
    check(vm_route_on_vif(&lab.old)?, || {
        format!("the old host lost the VM's route:\n{}", old.log())
    })?;
    check(!old.log().contains(GIVEN_AWAY), || {
        format!("the old host heard of a handover:\n{}", old.log())
    })?;
    drop(copy);

    let copy = lab.attach_copy(Guest::FIRST, Site::New)?;
    announce(&copy)?;
    wait_old_route(&lab, false, &old, &new)?;
    lab.new.ip(&["link", "del", VIF])?;
    wait_old_route(&lab, true, &old, &new)?;
    wait_log(&old, "its interface on the new host is gone")?;
    finish(copy, old, new)
}

/// `vmtun handover vif0` on the old host at the source's pause (issue 12, item 3) sends the
/// VM's traffic to the new host at once, before any guest frame there: the client's pings
/// reach the copy through the tunnel. The guest's first frame on the new host then confirms
/// it, and the routes stay away past the deadline.
#[test]
fn a_vm_handed_over_at_its_pause_goes_to_the_new_host_at_once_and_stays_once_confirmed()
-> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-pause")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;

    let said = old.command(&["handover", VIF])?;
    check(said.contains("goes to the new host"), || said.clone())?;
    // The route is off before the command returns.
    check(!vm_route_on_vif(&lab.old)?, || old.log())?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let status = old.status()?;
    check(
        status["migration"]["handed_over"] == serde_json::json!([VIF]),
        || format!("vmtun status on the old host: {status}"),
    )?;
    // Said again (the event and an operator both): nothing changes.
    old.command(&["handover", VIF])?;

    announce(&copy)?;
    wait_log(&old, "the handover at its pause stands")?;
    std::thread::sleep(vmtun::handover::CONFIRM_WITHIN + Duration::from_secs(1));
    check(!vm_route_on_vif(&lab.old)?, || {
        format!("a confirmed handover came back:\n{}", old.log())
    })?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    finish(copy, old, new)
}

/// A VM handed over at its pause comes back to the source when the new host never reports
/// the guest running (the migration failed and nobody said so), and at once with
/// `vmtun handover --back` (the source resumed). What cannot be handed over is refused in one
/// line, changing nothing.
#[test]
fn a_vm_handed_over_at_its_pause_comes_back_unless_the_new_host_confirms_it() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-pause-back")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;

    old.command(&["handover", VIF])?;
    check(!vm_route_on_vif(&lab.old)?, || old.log())?;
    let given = Instant::now();
    wait_old_route(&lab, true, &old, &new)?;
    check(
        given.elapsed() >= vmtun::handover::CONFIRM_WITHIN - Duration::from_millis(100),
        || format!("back after {:?} only:\n{}", given.elapsed(), old.log()),
    )?;
    wait_log(&old, "not reported running on the new host in time")?;

    old.command(&["handover", VIF])?;
    check(!vm_route_on_vif(&lab.old)?, || old.log())?;
    let said = old.command(&["handover", "--back", VIF])?;
    check(said.contains("routed here again"), || said.clone())?;
    check(vm_route_on_vif(&lab.old)?, || old.log())?;
    check(old.log().contains("the source runs it again"), || old.log())?;

    for (host, args, says) in [
        (&old, &["handover", "vif9"][..], "has vif = \"vif9\""),
        (&new, &["handover", VIF][..], "the old host's (role old)"),
    ] {
        let out = host.output(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        check(
            !out.status.success() && stderr.contains(says) && stderr.lines().count() == 1,
            || format!("vmtun {}: {:?} {stderr}", args.join(" "), out.status),
        )?;
    }
    check(vm_route_on_vif(&lab.old)?, || old.log())?;
    finish(copy, old, new)
}

/// After the provider's switch the VM's traffic reaches the new host first, and a VM still
/// on the old host gets it through the tunnel. Moving it then, the destination's interface
/// appears on the new host at the start of the migration, long before the guest runs
/// there: the new host must keep sending the VM's traffic to the old host until the guest's
/// first frame on that interface, then route it there.
#[test]
fn after_the_switch_a_moving_vm_is_routed_to_the_new_host_only_once_it_runs_there() -> Result<()> {
    use helpers::cut_over_with_pings;
    use vmtun::lab::migration::hosts::CutoverState;
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-switched")?;
    let lab = MigrationLab::build(1)?;
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |_, _| {})?;
    launch_both(&lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    // The destination waits for the guest (QEMU with -incoming): its interface is up, it
    // takes nothing in.
    let copy = lab.attach_copy(Guest::FIRST, Site::New)?;
    pause(&copy)?;
    wait_log(&new, &format!("handover: {VIF} is up: watching it"))?;
    // Also what libvirt's <script> asks for.
    new.vif_up(VIF)?;
    check(!vm_route_on_vif(&lab.new)?, || {
        format!(
            "the new host routes the VM to an interface it does not run on yet:\n{}",
            new.log()
        )
    })?;
    check(lab.client.answers_ping(VM_ADDR), || {
        "the VM, still on the old host, does not answer".into()
    })?;

    // The guest resumes on the new host (the source pauses).
    pause(&lab.vm)?;
    resume(&copy)?;
    announce(&copy)?;
    wait_new_route(&lab, &new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    // Its interface taken down and up again (the routes go with "down"): the guest runs
    // there, so it is routed again at once, not held.
    lab.new.ip(&["link", "set", VIF, "down"])?;
    lab.new.ip(&["link", "set", VIF, "up"])?;
    wait_new_route(&lab, &new)?;
    finish(copy, old, new)
}

/// After the provider's switch, a handover at the source's pause (`vmtun handover` on the
/// old host) reaches the new host, whose waiting interface takes the VM's routes at once
/// rather than at the guest's first frame: what the VM is sent during the pause waits there.
#[test]
fn after_the_switch_a_handover_at_the_pause_routes_the_waiting_destination_at_once() -> Result<()> {
    use helpers::cut_over_with_pings;
    use vmtun::lab::migration::hosts::CutoverState;
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-switched-pause")?;
    let lab = MigrationLab::build(1)?;
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |_, _| {})?;
    launch_both(&lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    let copy = lab.attach_copy(Guest::FIRST, Site::New)?;
    pause(&copy)?;
    wait_log(
        &new,
        "stays routed through the tunnel until the guest's first frame",
    )?;

    // The source pauses for the migration's last stage; the old host hands the VM over.
    pause(&lab.vm)?;
    old.command(&["handover", VIF])?;
    wait_new_route(&lab, &new)?;
    check(
        new.log()
            .contains("handed the VM of vif0 over at its pause"),
        || new.log(),
    )?;

    // The guest resumes on the new host: it answers there, and the old host hears of it.
    resume(&copy)?;
    announce(&copy)?;
    wait_log(&old, "the handover at its pause stands")?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    finish(copy, old, new)
}

/// The provider switches while a migration to the new host is under way: the destination's
/// interface, routed when it came up (before the switch the old host decides what crosses
/// the tunnel), loses the VM's routes at the cutover until the guest's first frame there,
/// so the VM, still on the old host, stays reachable through the tunnel.
#[test]
fn a_switch_during_a_migration_keeps_the_vm_off_its_waiting_destination() -> Result<()> {
    use helpers::cut_over_with_pings;
    use vmtun::lab::migration::hosts::CutoverState;
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-switch-during")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;
    // The source runs; its destination waits (QEMU with -incoming takes nothing in).
    pause(&copy)?;
    resume(&lab.vm)?;
    wait_new_route(&lab, &new)?;

    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    wait_log(&new, "has cut over while vif0 waits for its guest")?;
    check(!vm_route_on_vif(&lab.new)?, || new.log())?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    // The guest resumes on the new host.
    pause(&lab.vm)?;
    resume(&copy)?;
    announce(&copy)?;
    wait_new_route(&lab, &new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    finish(copy, old, new)
}

/// A VM moved to the new host and then back (a reverted move, before the provider's
/// switch): the old host's interface for it comes up at the start of the migration back,
/// while the guest still runs on the new host. The old host keeps sending the VM's traffic
/// through the tunnel until the guest's first frame on that interface, then routes it there.
#[test]
fn a_vm_moving_back_is_routed_to_the_old_host_only_once_it_runs_there() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-back-move")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;
    announce(&copy)?;
    wait_old_route(&lab, false, &old, &new)?;
    // The source QEMU exits: its interface goes. The VM runs on the new host.
    lab.detach_vm(Site::Old)?;
    wait_log(&old, "the interface it was handed over from is gone")?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    // The migration back begins: the old host's interface comes up, its QEMU waiting.
    let back = lab.attach_copy(Guest::FIRST, Site::Old)?;
    pause(&back)?;
    wait_log(&old, "but its VM runs on the new host")?;
    old.vif_up(VIF)?;
    check(!vm_route_on_vif(&lab.old)?, || {
        format!(
            "the old host routes the VM to an interface it does not run on yet:\n{}",
            old.log()
        )
    })?;
    check(lab.client.answers_ping(VM_ADDR), || {
        format!(
            "the VM, still on the new host, does not answer:\n{}",
            old.log()
        )
    })?;
    // The operator's override routes it at once; taken off again for the rest.
    old.command(&["vif-up", "--now", VIF])?;
    check(vm_route_on_vif(&lab.old)?, || {
        "vif-up --now did not route".into()
    })?;
    lab.old
        .ip(&["route", "del", &format!("{VM_ADDR}/32"), "dev", VIF])?;

    // The guest resumes on the old host.
    pause(&copy)?;
    resume(&back)?;
    announce(&back)?;
    wait_old_route(&lab, true, &old, &new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    drop(back);
    finish(copy, old, new)
}

/// The old host's vmtun restarted mid-move (a package upgrade, a crash) keeps what it knew:
/// the VM that runs on the new host stays off the paused source's interface, which is still
/// there, and a frame from the guest there still brings it back.
#[test]
fn a_restarted_old_host_keeps_a_migrated_vm_off_its_paused_source() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-restart")?;
    let lab = MigrationLab::build(1)?;
    let (mut old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;
    announce(&copy)?;
    wait_old_route(&lab, false, &old, &new)?;

    old.stop()?;
    old.launch()?;
    // Up again, it finds vif0 up and its VM in [[vm]]: as ever, it would route it.
    wait_log(&old, "as the last instance knew")?;
    std::thread::sleep(Duration::from_secs(1));
    check(!vm_route_on_vif(&lab.old)?, || {
        format!(
            "the restarted old host routes the VM to its paused source again:\n{}",
            old.log()
        )
    })?;
    let status = old.status()?;
    check(
        status["migration"]["handed_over"] == serde_json::json!([VIF]),
        || format!("vmtun status on the old host: {status}"),
    )?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    // The migration "fails": the source runs again and sends on its interface.
    source_resumes(&lab, &old, &new)?;
    finish(copy, old, new)
}

/// With `handover = "vif-gone"` the old host keeps routing the VM to its interface while it
/// exists, the guest's frame on the new host notwithstanding (what the bench compares).
#[test]
fn with_handover_vif_gone_the_route_stays_until_the_source_interface_goes() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("handover-off")?;
    let lab = MigrationLab::build(1)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "vif-gone")?;
    announce(&copy)?;
    // The copy answers through the tunnel only once the source's interface is gone.
    check(!lab.client.answers_ping(VM_ADDR), || {
        "the paused source's route answered".into()
    })?;
    check(vm_route_on_vif(&lab.old)?, || old.log())?;
    lab.detach_vm(Site::Old)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    check(!old.log().contains(GIVEN_AWAY), || old.log())?;
    finish(copy, old, new)
}

/// A report the new host did not send through the tunnel takes nothing: "the VM runs here"
/// forged from the provider's side with the new host's tunnel address as its source, sent to
/// the old host's tunnel address and port (what a neighbour on the underlay could do), and
/// reaching the old host (counted in its input hook), leaves the VM's route on the old host.
/// Then the guest's real first frame on the new host does take it (so the test could see a
/// removal).
#[test]
fn a_report_forged_from_outside_the_tunnel_takes_nothing() -> Result<()> {
    use vmtun::lab::migration::{OLD, TUNNEL_NEW, TUNNEL_OLD};
    use vmtun::switch_report::REPORT_PORT;
    preflight(&["nft", "ping", "bash"]);
    let scratch = Scratch::new("handover-forged")?;
    // rp_filter off on the hosts: the forged source, routed through the tunnel there, is not
    // refused by the kernel before vmtun's socket could see it.
    let lab = MigrationLab::build(0)?;
    let (old, new, copy) = paused_source_and_its_copy(&lab, &scratch, "first-frame")?;

    // What reaches the old host's own stack for the report port, outside the tunnel.
    lab.old.run("nft", &["add", "table", "inet", "forged"])?;
    lab.old.run(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "forged",
            "in",
            "{ type filter hook input priority -10; }",
        ],
    )?;
    lab.old.run(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "forged",
            "in",
            "iifname",
            "!=",
            old.ifname(),
            "udp",
            "dport",
            &REPORT_PORT.to_string(),
            "counter",
        ],
    )?;
    // The core (the provider) speaks as the new host's tunnel address.
    lab.core
        .ip(&["addr", "add", &format!("{TUNNEL_NEW}/32"), "dev", "lo"])?;
    lab.core.ip(&[
        "route",
        "add",
        &format!("{TUNNEL_OLD}/32"),
        "via",
        OLD,
        "src",
        TUNNEL_NEW,
    ])?;
    let forged = format!("vmtun-vm-here/1 00000000000000aa {VIF} {VM_ADDR}");
    for _ in 0..5 {
        lab.core.run(
            "bash",
            &[
                "-c",
                &format!("printf %s '{forged}' > /dev/udp/{TUNNEL_OLD}/{REPORT_PORT}"),
            ],
        )?;
    }
    let counted = lab.old.run("nft", &["list", "table", "inet", "forged"])?;
    check(counted.contains("packets 5 "), || {
        format!("the forged reports did not reach the old host:\n{counted}")
    })?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    check(vm_route_on_vif(&lab.old)?, || {
        format!(
            "a forged report took the VM from the old host:\n{}",
            old.log()
        )
    })?;
    check(!old.log().contains(GIVEN_AWAY), || old.log())?;

    announce(&copy)?;
    wait_old_route(&lab, false, &old, &new)?;
    finish(copy, old, new)
}
