//! Who may trigger the cutover on the new host, and when. Only the provider: a neighbour on
//! the new host's uplink segment (a third namespace on its bridge) forges unicast frames that
//! look like the provider's routing of the VM subnets; neither the kernel's native rule nor
//! the watcher may act on them, and the provider's real switch must still flip both. And a
//! provider that routes the subnet to the new host before it lifts its source filter there
//! costs the VM its replies for that gap, unless `cutover_hold_ms` covers it.
//!
//! ```text
//!                     ┌─ new host ─────────────────────────────────────┐
//!  core new0 ─────────┤ up0 ┐                                          │
//!  198.18.2.1         │     br0 198.18.2.2   vmtun role new, watcher   │
//!  (the uplink gw)    │ nb0 ┘                vif0 ── vm 203.0.113.2,   │
//!                     └──┼─────────────────────────── 2001:db8:1::2 ───┘
//!                        └── attacker eth0 (no address: raw frames only)
//! ```
//! The rest of the lab (client, core, old host, tunnel) is `tests/migration.rs`'s.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Netns, Result, Scratch, check, lab, preflight, wait_ping, wait_until};
use helpers::{
    FrameTap, WAIT, cut_over_with_pings, frame, ipv4_udp, ipv6_udp, launch_both, mac_of,
    migration_status_text, prepare_hosts, prepare_hosts_with, probing, send_frames,
    wait_cutover_done,
};
use std::time::Duration;
use vmtun::lab::migration::hosts::{CutoverState, mark_rules};
use vmtun::lab::migration::probe::{Echo, unix_ns};
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{BRIDGE, ECHO_PORT, Family, SUBNET, SUBNET6, VIF, VM_ADDR, VM_ADDR6};

/// After the forged frames have been seen on the bridge, how long the watcher and the
/// kernel are given to (wrongly) react before the test looks. A negative check: a slow
/// machine can only hide a false cutover, never fail a correct vmtun.
const GRACE: Duration = Duration::from_millis(300);

/// A namespace plugged into `host`'s bridge by a veth `nb0` (host side) / `eth0`: another
/// machine on the new host's uplink segment.
fn neighbour_on_bridge(host: &Netns) -> Result<Netns> {
    let ns = Netns::new("neighbour")?;
    ns.disable_ipv6()?;
    lab::veth(host, "nb0", &ns, "eth0")?;
    host.set_master("nb0", BRIDGE)?;
    Ok(ns)
}

/// One forged frame per family, from `src_mac` to the host's bridge MAC: a client's source
/// outside the subnets, the VM's address as destination, exactly what the provider's router
/// sends after its switch.
fn forged_frames(host_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    let vm6 = VM_ADDR6.parse().expect("constant");
    let client6 = "2001:db8:10::66".parse().expect("constant");
    vec![
        (
            "a forged IPv4 frame to the VM",
            frame(
                host_mac,
                src_mac,
                0x0800,
                &ipv4_udp([198, 18, 10, 66], [203, 0, 113, 2]),
            ),
        ),
        (
            "a forged IPv6 frame to the VM",
            frame(host_mac, src_mac, 0x86dd, &ipv6_udp(client6, vm6)),
        ),
    ]
}

#[test]
fn a_forged_frame_from_a_neighbour_on_the_uplink_does_not_cut_over() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("cut-forged")?;
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

    let attacker = neighbour_on_bridge(&lab.new)?;
    let host_mac = mac_of(&lab.new, BRIDGE)?;
    let attacker_mac = mac_of(&attacker, "eth0")?;
    for (what, forged) in forged_frames(host_mac, attacker_mac) {
        let tap = FrameTap::open(&lab.new, BRIDGE)?;
        send_frames(&attacker, "eth0", vec![forged.clone()])?;
        tap.wait_frame(what, &forged)?;
        std::thread::sleep(GRACE);
        let state = CutoverState::from_status(&new.status()?);
        let marks = mark_rules(&lab.new)?;
        check(
            state.phase.as_deref() == Some("watching")
                && state.cut_over.is_empty()
                && state.native_subnets.is_empty()
                && marks == [SUBNET, SUBNET6],
            || {
                format!(
                    "{what} from a neighbour on the bridge triggered the cutover: {state:?}, \
                     mark rules left {marks:?}"
                )
            },
        )?;
    }

    // The provider's real switch still flips both families.
    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR6, |s| s.cut_over == [SUBNET6])?;
    let done = cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    check(done.cut_over == [SUBNET6, SUBNET], || {
        format!("the provider's switch cuts over both subnets: {done:?}")
    })?;
    let marks = mark_rules(&lab.new)?;
    check(marks.is_empty(), || {
        format!("mark rules left after the provider's switch: {marks:?}")
    })?;
    eprintln!(
        "provider's switch: first native packet -> mark rule gone in {:.3} ms",
        done.latency_ns.unwrap_or(0) as f64 / 1e6
    );
    Ok(())
}

/// How long the provider of the next test takes from routing the subnet to the new host to
/// accepting it as a source from there.
const FILTER_GAP: Duration = Duration::from_millis(300);
/// The hold that covers it, with room for a slow machine.
const HOLD_MS: u32 = 3000;

/// What the client saw when the provider routed first and lifted its filter [`FILTER_GAP`]
/// later.
#[derive(Debug)]
struct RouteFirst {
    /// Probes sent from the route change on that got no reply.
    lost: usize,
    /// Replies the provider dropped as spoofed (from the new host, before the filter went).
    spoof_dropped: u64,
    /// The cutover's record: first native packet to mark rule gone.
    cutover_ms: f64,
}

/// The move at 1 kHz with `cutover_hold_ms = hold_ms`, then the provider's switch in the
/// other order: the route first, the source filter [`FILTER_GAP`] later.
fn route_first_then_lift(hold_ms: u32) -> Result<RouteFirst> {
    let scratch = Scratch::new("cut-order")?;
    let lab = MigrationLab::build(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |_, new| {
        if let Some(m) = new.migration.as_mut() {
            m.cutover_hold_ms = hold_ms;
        }
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    let prober = probing(&lab, 1000)?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    let moved = unix_ns();
    wait_until(WAIT, "replies through the tunnel", || {
        prober.answered_since(moved)
    })?;
    let before = lab.core_counters()?;
    let routed = unix_ns();
    lab.route_to_new()?;
    std::thread::sleep(FILTER_GAP);
    lab.lift_source_filter()?;
    let done = wait_cutover_done(&new)?;
    let since_done = unix_ns();
    wait_until(WAIT, "replies after the cutover", || {
        prober.answered_since(since_done)
    })?;
    let (log, _) = prober.finish(Duration::from_millis(300))?;
    let after = lab.core_counters()?;
    let first = log.sent_ns.partition_point(|&t| t < routed);
    Ok(RouteFirst {
        lost: log.replies[first..].iter().filter(|r| r.is_none()).count(),
        spoof_dropped: after.spoof_dropped - before.spoof_dropped,
        cutover_ms: done.latency_ns.unwrap_or(0) as f64 / 1e6,
    })
}

/// vmtun assumes the provider accepts the subnet from the new host no later than it routes
/// the subnet there. In the other order the first native packet flips the replies to leave
/// natively while the provider still drops them; a hold longer than the provider's gap keeps
/// them on the old path until then, and nothing is lost.
#[test]
fn a_provider_that_routes_before_lifting_its_filter_needs_a_hold() -> Result<()> {
    preflight(&["nft", "ping"]);
    let without = route_first_then_lift(0)?;
    let with = route_first_then_lift(HOLD_MS)?;
    eprintln!(
        "route first, filter lifted {} ms later (1 kHz probes):\n  \
         no hold:      {} probes lost, {} replies dropped as spoofed, cutover {:.3} ms\n  \
         hold {HOLD_MS} ms: {} probes lost, {} replies dropped as spoofed, cutover {:.3} ms",
        FILTER_GAP.as_millis(),
        without.lost,
        without.spoof_dropped,
        without.cutover_ms,
        with.lost,
        with.spoof_dropped,
        with.cutover_ms
    );
    check(without.spoof_dropped > 0 && without.lost > 0, || {
        format!("without a hold the provider's order should cost replies: {without:?}")
    })?;
    check(with.spoof_dropped == 0 && with.lost == 0, || {
        format!("the hold did not keep the replies on the old path: {with:?}")
    })?;
    check(with.cutover_ms >= f64::from(HOLD_MS), || {
        format!("the mark rule went before the hold was over: {with:?}")
    })
}

/// A new host whose uplink gateway vmtun cannot learn (no default route through the bridge,
/// no `gateways` key): nothing may trigger the cutover, which `status` says with what to do;
/// the kernel's gateways set stays empty, and `vmtun cutover` still works by hand.
#[test]
fn without_a_known_gateway_the_watcher_says_so_and_vmtun_cutover_still_works() -> Result<()> {
    preflight(&["nft"]);
    let scratch = Scratch::new("cut-nogw")?;
    let lab = MigrationLab::build(1)?;
    lab.new.ip(&["route", "del", "default"])?;
    let (_old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    new.launch()?;
    let text = migration_status_text(&new)?;
    check(
        text.contains(
            "  cutover watcher: FAILED (cutover: no default route through br0 names the uplink \
             gateway, so nothing may trigger the cutover: set [migration] gateways, or run \
             `vmtun cutover` at the switch); run vmtun cutover",
        ),
        || format!("vmtun status:\n{text}"),
    )?;
    let set = lab
        .new
        .run("nft", &["list", "set", "ip", "vmtun", "gateways"])?;
    check(!set.contains("elements"), || format!("gateways set: {set}"))?;
    let out = new.output(&["cutover"])?;
    check(out.status.success(), || {
        format!("vmtun cutover: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let marks = mark_rules(&lab.new)?;
    check(marks.is_empty(), || {
        format!("mark rules left after vmtun cutover: {marks:?}")
    })
}
