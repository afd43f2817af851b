//! The move, as DESIGN.md's lab builds it: a client probes the VM while it moves from the
//! old host to the new one and the provider switches its subnet; vmtun runs on both hosts.
//!
//! ```text
//!                              ┌─ old host ─────────────────────────┐
//!                              │ br0 198.18.1.2   vmtun role old    │
//!  client            core      │   └ up0          vif0 ── vm (before)│
//!  198.18.10.2 ── c0 ┬ old0 ───┘ 203.0.113.0/29 via the tunnel     │
//!                    │         └────────────────────────────────────┘
//!                    │         ┌─ new host ─────────────────────────┐
//!                    └ new0 ───┤ br0 198.18.2.2   vmtun role new    │
//!        (routes the /29 to    │   └ up0          vif0 ── vm (after) │
//!         old, drops it from   │ table 201, mark rule, watcher: br0 │
//!         new until the switch)└────────────────────────────────────┘
//!  tunnel 100.64.0.1 <-> 100.64.0.2 over the core; vm 203.0.113.2/32, gw 192.0.2.1 onlink
//! ```
//!
//! The core stamps every reply from the /29 with the link it arrived on, so the client knows
//! for each probe whether its reply left through the old or the new host.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{LabError, Result, Scratch, check, preflight, wait_ping, wait_until};
use helpers::{
    FrameTap, HostState, VMTUN, WAIT, cut_over_with_pings, decoy_frames, is_ipv4_to, launch_both,
    mac_of, prepare_hosts, prepare_hosts_with, probing, send_frames, wait_cutover_done,
};
use std::net::SocketAddrV4;
use std::time::Duration;
use vmtun::lab::migration::hosts::{CutoverState, mark_rule_present};
use vmtun::lab::migration::probe::{Echo, Prober, unix_ns};
use vmtun::lab::migration::scenario::{HostMode, Options, Report, run};
use vmtun::lab::migration::stats::Via;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{
    BRIDGE, ECHO_PORT, Family, OTHER_ADDR, OTHER_SUBNET, SUBNET, SUBNET6, VIF, VM_ADDR, VM_ADDR6,
};

/// After a decoy has been seen arriving on the bridge, how long the watcher is given to
/// (wrongly) react before the test looks. A negative check: a slow machine can only make
/// it miss a false cutover, never fail a correct vmtun.
const GRACE: Duration = Duration::from_millis(200);

fn options(mode: HostMode) -> Options {
    let mut options = Options::new(VMTUN.into());
    options.mode = mode;
    options.before_move = Duration::from_millis(500);
    options.settle = Duration::from_millis(500);
    options.after_move = Duration::from_secs(1);
    options.after_switch = Duration::from_secs(1);
    options
}

fn run_scenario(mode: HostMode) -> Result<Report> {
    run_with(&options(mode))
}

fn run_with(options: &Options) -> Result<Report> {
    let report = run(options, &mut |line| eprintln!("scenario: {line}"))?;
    eprintln!("{}", vmtun::demo::render(&report));
    Ok(report)
}

fn phase<'r>(
    report: &'r Report,
    name: &str,
) -> Result<&'r vmtun::lab::migration::stats::PhaseStats> {
    report
        .phase(name)
        .ok_or_else(|| LabError::Failed(format!("no phase {name} in the report")))
}

fn target() -> SocketAddrV4 {
    SocketAddrV4::new(VM_ADDR.parse().expect("constant"), ECHO_PORT)
}

/// Replies flow before the move, through the tunnel and out of the old host after it, and
/// natively out of the new host after the provider's switch; the mark rule is gone and
/// nothing the VM sent was dropped as spoofed.
#[test]
fn the_vm_keeps_answering_through_the_move_and_leaves_natively_after_the_switch() -> Result<()> {
    preflight(&["nft", "ping"]);
    the_move_went_right(&run_scenario(HostMode::Vmtun)?)
}

/// The same move for a VM whose traffic is IPv6: its /64 goes through the tunnel after the
/// move, its replies through the old site until the first native IPv6 packet flips them.
#[test]
fn an_ipv6_vm_keeps_answering_through_the_move_and_leaves_natively_after_the_switch() -> Result<()>
{
    preflight(&["nft", "ping"]);
    let mut options = options(HostMode::Vmtun);
    options.family = Family::Ipv6;
    let report = run_with(&options)?;
    check(report.vm.is_ipv6(), || {
        format!("the client probed {}", report.vm)
    })?;
    let cutover = report.cutover.as_ref();
    check(
        cutover.is_some_and(|c| c.native_subnets == ["2001:db8:1::"]),
        || format!("the kernel's flip for the /64: {cutover:?}"),
    )?;
    the_move_went_right(&report)
}

/// A dual-stack VM, both subnets in one config: after the move it answers in both families
/// through the tunnel; after the provider's switch each subnet cuts over on its own first
/// native packet, IPv6 first here, and the IPv4 subnet keeps going through the old site
/// until its own.
#[test]
fn a_dual_stack_vm_answers_in_both_families_and_each_subnet_cuts_over_on_its_own() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("dual")?;
    let lab = MigrationLab::build_dual_stack(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let both = [Family::Ipv4, Family::Ipv6];
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |old, new| {
        *old = old.clone().carrying(&both);
        *new = new.clone().carrying(&both);
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    for addr in [VM_ADDR, VM_ADDR6] {
        wait_ping(&lab.client, addr, WAIT)?;
    }
    let through_old = lab.core_counters()?;
    check(
        through_old.from_old > 0 && through_old.from_new == 0,
        || format!("after the move the VM's replies leave through the old site: {through_old:?}"),
    )?;

    lab.switch_provider()?;
    let v6 = cut_over_with_pings(&lab, &new, VM_ADDR6, |s| !s.cut_over.is_empty())?;
    check(v6.cut_over == [SUBNET6] && v6.waiting == [SUBNET], || {
        format!("the first native IPv6 packet cuts over the /64 only: {v6:?}")
    })?;
    let marks = vmtun::lab::migration::hosts::mark_rules(&lab.new)?;
    check(marks == [SUBNET], || {
        format!("the IPv4 mark rule stays until its own cutover: {marks:?}")
    })?;
    let done = cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    check(done.cut_over == [SUBNET6, SUBNET], || {
        format!("both subnets cut over, each once: {done:?}")
    })?;
    check(!mark_rule_present(&lab.new)?, || {
        "a mark rule is left after both cutovers".into()
    })?;
    // Both families now leave natively: the old site sees no more of the VM's replies.
    let settled = lab.core_counters()?;
    for addr in [VM_ADDR, VM_ADDR6] {
        wait_ping(&lab.client, addr, WAIT)?;
    }
    let after = lab.core_counters()?;
    check(
        after.from_old == settled.from_old && after.from_new > settled.from_new,
        || format!("after both cutovers: {settled:?} then {after:?}"),
    )?;
    Ok(())
}

/// What a good move looks like in the report, whatever the family.
fn the_move_went_right(report: &Report) -> Result<()> {
    let before = phase(report, "before_move")?;
    check(before.received > 0 && before.replies_via_new == 0, || {
        format!("before the move: {before:?}")
    })?;
    let after_move = phase(report, "after_move")?;
    check(after_move.received > 0, || {
        format!("no replies after the move: {after_move:?}")
    })?;
    check(
        after_move.replies_via_new == 0 && after_move.replies_via_old == after_move.received,
        || format!("after the move every reply must leave through the old host: {after_move:?}"),
    )?;
    let after_switch = phase(report, "after_switch")?;
    check(
        after_switch.replies_via_new > 0 && after_switch.replies_via_old == 0,
        || format!("after the switch replies must leave through the new host: {after_switch:?}"),
    )?;
    let cutover = report
        .cutover
        .as_ref()
        .ok_or_else(|| LabError::Failed("no cutover in the report".into()))?;
    check(cutover.phase.as_deref() == Some("done"), || {
        format!("vmtun status shows cutover {:?}", cutover.phase)
    })?;
    check(cutover.mark_rule_left == Some(false), || {
        "vmtun's mark rule is still in the new host's ruleset after the cutover".into()
    })?;
    check(cutover.latency_ns.is_some(), || {
        "the cutover record has no latency".into()
    })?;
    let counters = report.core_counters;
    check(counters.from_new > 0 && counters.spoof_dropped == 0, || {
        format!(
            "core counters: {counters:?}: replies must reach the provider natively only after the switch"
        )
    })?;
    check(
        report
            .vmtun_exits
            .iter()
            .all(|e| e.ends_with("exit status: 0")),
        || format!("vmtun did not exit cleanly: {:?}", report.vmtun_exits),
    )?;
    Ok(())
}

/// Without vmtun (the hosts as they were: no tunnel, no roles) the VM is unreachable
/// between the move and the provider's switch: the scenario can tell success from failure.
#[test]
fn without_vmtun_the_vm_is_lost_after_the_move() -> Result<()> {
    preflight(&["nft"]);
    let report = run_scenario(HostMode::NoTunnel)?;
    let before = phase(&report, "before_move")?;
    check(before.received > 0, || {
        format!("the VM never answered: {before:?}")
    })?;
    let after_move = phase(&report, "after_move")?;
    check(after_move.sent > 0 && after_move.received == 0, || {
        format!("without a tunnel the VM must not answer after the move: {after_move:?}")
    })?;
    let after_switch = phase(&report, "after_switch")?;
    check(after_switch.replies_via_new > 0, || {
        format!("after the switch the VM answers natively again: {after_switch:?}")
    })?;
    Ok(())
}

/// The text of the foreign state placed in the new host before `up`.
fn foreign_state(lab: &MigrationLab) -> Result<String> {
    let ns = &lab.new;
    Ok([
        ns.run("iptables", &["-t", "mangle", "-S"])?,
        ns.run("nft", &["list", "table", "inet", "foreign"])?,
        ns.ip(&["rule", "show", "priority", "300"])?,
        ns.ip(&["route", "show", "table", "300"])?,
        ns.ip(&["route", "show", "192.0.2.128/25"])?,
    ]
    .join("\n---\n"))
}

/// Unrelated mangle rules, nftables tables, ip rules and routes in the new host survive
/// `up`, the cutover and the exit unchanged; after the exit the whole host is as before.
#[test]
fn foreign_state_survives_up_cutover_and_exit() -> Result<()> {
    preflight(&["nft", "iptables", "ping"]);
    let scratch = Scratch::new("mig-foreign")?;
    let lab = MigrationLab::build(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;

    let ns = &lab.new;
    ns.run(
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-s",
            OTHER_SUBNET,
            "-j",
            "MARK",
            "--set-mark",
            "7",
        ],
    )?;
    ns.run("nft", &["add", "table", "inet", "foreign"])?;
    ns.run(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "foreign",
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ],
    )?;
    ns.run(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "foreign",
            "input",
            "ip",
            "saddr",
            OTHER_SUBNET,
            "counter",
        ],
    )?;
    ns.ip(&[
        "rule",
        "add",
        "from",
        OTHER_SUBNET,
        "table",
        "300",
        "priority",
        "300",
    ])?;
    ns.ip(&[
        "route",
        "add",
        OTHER_SUBNET,
        "via",
        "198.18.2.1",
        "table",
        "300",
    ])?;
    ns.ip(&["route", "add", "192.0.2.128/25", "via", "198.18.2.1"])?;
    let foreign = foreign_state(&lab)?;
    let before = HostState::of(ns)?;

    launch_both(&lab, &mut old, &mut new)?;
    let prober = Prober::start(&lab.client, target(), 1000)?;
    let since = unix_ns();
    wait_until(WAIT, "replies through the tunnel", || {
        prober.answered_since(since)
    })?;
    check(mark_rule_present(ns)?, || {
        "vmtun's mark rule is missing while up".into()
    })?;
    let during = foreign_state(&lab)?;
    check(during == foreign, || {
        format!("foreign state changed by up:\nbefore:\n{foreign}\nafter:\n{during}")
    })?;

    lab.switch_provider()?;
    wait_cutover_done(&new)?;
    let after_cutover = foreign_state(&lab)?;
    check(after_cutover == foreign, || {
        format!(
            "foreign state changed by the cutover:\nbefore:\n{foreign}\nafter:\n{after_cutover}"
        )
    })?;

    drop(prober);
    let status = new.stop()?;
    check(status.success(), || {
        format!("new host's vmtun exited with {status}")
    })?;
    old.stop()?;
    let after = HostState::of(ns)?;
    check(after == before, || {
        format!("the new host differs after exit:\n{}", before.diff(&after))
    })?;
    Ok(())
}

/// Traffic through the tunnel, the VM's own outbound traffic, ARP, QEMU's RARP
/// announcement, a broadcast frame to the VM's address and packets for another subnet on
/// the bridge do not trigger the cutover; the provider's switch then does. Every decoy is
/// seen arriving on the new host's bridge (where the watcher listens), or answered, so
/// that none can pass by going nowhere.
#[test]
fn no_false_cutover() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("mig-nofalse")?;
    let lab = MigrationLab::build(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    launch_both(&lab, &mut old, &mut new)?;
    let prober = probing(&lab, 1000)?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    let moved = unix_ns();
    wait_until(WAIT, "replies through the tunnel", || {
        prober.answered_since(moved)
    })?;

    // Each decoy on its own, so that a failure names the one that fired.
    let watching = || -> Result<Option<String>> {
        let status = new.status()?;
        let state = CutoverState::from_status(&status);
        let fired = state.phase.as_deref() != Some("watching")
            || !state.native_subnets.is_empty()
            || !mark_rule_present(&lab.new)?;
        Ok(fired.then(|| {
            format!(
                "phase {:?}, native set {:?}, mark rule present: {:?}",
                state.phase,
                state.native_subnets,
                mark_rule_present(&lab.new)
            )
        }))
    };
    let settle = || std::thread::sleep(GRACE);
    settle();
    if let Some(fired) = watching()? {
        return Err(LabError::Failed(format!(
            "traffic through the tunnel triggered the cutover: {fired}"
        )));
    }
    // The VM's own traffic: to the client (through the tunnel) and to the new host itself;
    // both answered, so both went where the VM's traffic goes.
    for dst in ["198.18.10.2", "198.18.2.2"] {
        wait_until(WAIT, &format!("the VM's ping to {dst} answered"), || {
            lab.vm.answers_ping(dst)
        })?;
    }
    settle();
    if let Some(fired) = watching()? {
        return Err(LabError::Failed(format!(
            "the VM's outbound traffic triggered the cutover: {fired}"
        )));
    }
    // ARP, gratuitous ARP, RARP and a broadcast IPv4 frame for the VM's address, from the
    // provider onto the new host's uplink.
    let core_mac = mac_of(&lab.core, "new0")?;
    let mut fired_by = Vec::new();
    for (name, frame) in decoy_frames(core_mac) {
        let tap = FrameTap::open(&lab.new, BRIDGE)?;
        send_frames(&lab.core, "new0", vec![frame.clone()])?;
        tap.wait_frame(name, &frame)?;
        settle();
        if let Some(fired) = watching()? {
            fired_by.push(format!("{name}: {fired}"));
        }
    }
    check(fired_by.is_empty(), || {
        format!(
            "decoy frames triggered the cutover:\n{}",
            fired_by.join("\n")
        )
    })?;
    // Native packets for another subnet.
    lab.core
        .ip(&["route", "add", OTHER_SUBNET, "via", "198.18.2.2"])?;
    let tap = FrameTap::open(&lab.new, BRIDGE)?;
    let _ = lab
        .core
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", "-q", OTHER_ADDR])
        .output();
    let other: std::net::Ipv4Addr = OTHER_ADDR.parse().expect("constant");
    tap.wait_for("a ping to another subnet", |f| is_ipv4_to(f, other))?;
    settle();
    if let Some(fired) = watching()? {
        return Err(LabError::Failed(format!(
            "packets for another subnet triggered the cutover: {fired}"
        )));
    }
    let log = prober.snapshot();
    let first = log.sent_ns.partition_point(|&t| t < moved);
    let native = log.replies[first..]
        .iter()
        .flatten()
        .filter(|r| r.via != Via::Old)
        .count();
    check(native == 0, || {
        format!("{native} replies left the new host natively before the switch")
    })?;

    // The control: the provider's switch is a native packet, and it must fire.
    lab.switch_provider()?;
    let done = wait_cutover_done(&new)?;
    check(!mark_rule_present(&lab.new)?, || {
        format!("mark rule still present after the cutover: {done:?}")
    })?;
    Ok(())
}

/// After a clean exit, and after SIGKILL followed by `vmtun down -c FILE`, both hosts'
/// rules, routes, netfilter state, sysctls and interfaces are what they were before `up`.
#[test]
fn hosts_are_restored_after_exit_and_after_sigkill_and_down() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("mig-restore")?;
    let lab = MigrationLab::build(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    // The VM is on the new host before `up`: what vif-up sets stays by design (it belongs
    // to the interface), so it is part of "before".
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    let before_old = HostState::of(&lab.old)?;
    let before_new = HostState::of(&lab.new)?;

    // A crash with the cutover pending: table, rule, mark rule, rp_filter all in place.
    launch_both(&lab, &mut old, &mut new)?;
    let prober = Prober::start(&lab.client, target(), 1000)?;
    let since = unix_ns();
    wait_until(WAIT, "replies through the tunnel", || {
        prober.answered_since(since)
    })?;
    let up_new = HostState::of(&lab.new)?;
    check(up_new != before_new, || {
        "`up` changed nothing on the new host: the test would prove nothing".into()
    })?;
    new.kill()?;
    old.kill()?;
    new.down()?;
    old.down()?;
    for (name, before, ns) in [
        ("old", &before_old, &lab.old),
        ("new", &before_new, &lab.new),
    ] {
        let after = HostState::of(ns)?;
        check(&after == before, || {
            format!(
                "{name} host after SIGKILL and `vmtun down`:\n{}",
                before.diff(&after)
            )
        })?;
    }

    // A clean exit after the cutover.
    launch_both(&lab, &mut old, &mut new)?;
    let since = unix_ns();
    wait_until(WAIT, "replies through the tunnel again", || {
        prober.answered_since(since)
    })?;
    lab.switch_provider()?;
    wait_cutover_done(&new)?;
    drop(prober);
    for host in [&mut new, &mut old] {
        let status = host.stop()?;
        check(status.success(), || {
            format!("{} exited with {status}:\n{}", host.ifname(), host.log())
        })?;
    }
    for (name, before, ns) in [
        ("old", &before_old, &lab.old),
        ("new", &before_new, &lab.new),
    ] {
        let after = HostState::of(ns)?;
        check(&after == before, || {
            format!("{name} host after a clean exit:\n{}", before.diff(&after))
        })?;
    }
    Ok(())
}
