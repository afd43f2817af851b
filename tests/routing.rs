//! The routing of the move on real hosts (issue "routing that holds"): no loops for the
//! subnet's unused addresses, a host's own `blackhole` for the subnet left alone, VMs that
//! move one after another and back, and traffic between VMs on the new host that stays
//! there. Each test counts what enters the tunnel (the TUN devices' transmit counters: a
//! packet the kernel routes into the tunnel is one the TUN device transmits).

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::*;
use helpers::{WAIT, launch_both, prepare_hosts, prepare_hosts_with};
use vmtun::lab::migration::hosts::HostVmtun;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{CLIENT, Family, Guest, SUBNET};

/// An address of the subnet that no VM of these labs has (VMs hold `.2` to `.5`).
const UNUSED: &str = "203.0.113.6";

/// Packets the host's TUN device has transmitted, i.e. sent into the tunnel.
fn into_tunnel(host: &HostVmtun<'_>, ns: &Netns) -> Result<u64> {
    let path = format!("/sys/class/net/{}/statistics/tx_packets", host.ifname());
    let text = ns.run("cat", &[&path])?;
    text.trim()
        .parse()
        .map_err(|e| LabError::Failed(format!("{path}: {text:?}: {e}")))
}

/// Packets sent into the tunnel by both hosts together.
fn tunnel_crossings(lab: &MigrationLab, old: &HostVmtun<'_>, new: &HostVmtun<'_>) -> Result<u64> {
    Ok(into_tunnel(old, &lab.old)? + into_tunnel(new, &lab.new)?)
}

/// A lab of `vms` VMs with vmtun on both hosts, every VM in both configs.
fn lab_with_vms(vms: u8) -> Result<MigrationLab> {
    preflight(&["nft", "ping"]);
    MigrationLab::build_with(1, &[Family::Ipv4], vms)
}

fn vm_addr(guest: Guest) -> String {
    guest.addr(Family::Ipv4).to_string()
}

/// After the move, before the provider's switch: one ping to an address of the subnet that
/// no VM has crosses the tunnel once (old → new) and is refused there, instead of bouncing
/// between the hosts through the provider until its TTL runs out.
#[test]
fn a_ping_to_an_unused_address_crosses_the_tunnel_at_most_once() -> Result<()> {
    let scratch = Scratch::new("rt-loop")?;
    let lab = lab_with_vms(1)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    launch_both(&lab, &mut old, &mut new)?;
    lab.move_vm(Site::Old, Site::New)?;
    wait_ping(&lab.client, &vm_addr(Guest::FIRST), WAIT)?;

    let before = tunnel_crossings(&lab, &old, &new)?;
    let answered = ping_once(&lab.client, UNUSED);
    // Let a looping packet run out its TTL before counting.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let crossings = tunnel_crossings(&lab, &old, &new)? - before;
    eprintln!("one ping to {UNUSED}: {crossings} packet(s) into the tunnel");
    check(!answered, || format!("{UNUSED} answered a ping"))?;
    check(crossings <= 1, || {
        format!("one ping to the unused {UNUSED} entered the tunnel {crossings} times")
    })?;
    // The VM still answers, through the tunnel.
    wait_ping(&lab.client, &vm_addr(Guest::FIRST), WAIT)
}

/// A host that protects the subnet with `blackhole <subnet>` (so that its unused addresses
/// do not loop to the provider) runs role old: vmtun starts, the moved VM answers through
/// the tunnel, and the host's route is still there, untouched, after vmtun exits.
#[test]
fn role_old_starts_beside_the_hosts_own_blackhole_for_the_subnet() -> Result<()> {
    let scratch = Scratch::new("rt-blackhole")?;
    let lab = lab_with_vms(1)?;
    lab.old.ip(&["route", "add", "blackhole", SUBNET])?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    launch_both(&lab, &mut old, &mut new)?;
    lab.move_vm(Site::Old, Site::New)?;
    wait_ping(&lab.client, &vm_addr(Guest::FIRST), WAIT)?;
    let status = old.stop()?;
    check(status.success(), || {
        format!("role old exited with {status}:\n{}", old.log())
    })?;
    let routes = lab.old.ip(&["route", "show", SUBNET])?;
    check(routes.trim() == format!("blackhole {SUBNET}"), || {
        format!("the host's blackhole route is not as it was: {routes:?}")
    })
}

/// Two VMs on the new host talk to each other directly: none of their packets enters the
/// tunnel (the mark sends the VMs' traffic to the old site only where the new host has no
/// better route than its default).
#[test]
fn vms_on_the_new_host_talk_without_crossing_the_tunnel() -> Result<()> {
    let scratch = Scratch::new("rt-v2v")?;
    let lab = lab_with_vms(2)?;
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |o, n| {
        *o = o.clone().with_guests(&lab);
        *n = n.clone().with_guests(&lab);
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    for guest in lab.guests() {
        lab.move_guest(guest, Site::Old, Site::New)?;
        wait_ping(&lab.client, &vm_addr(guest), WAIT)?;
    }
    let (first, second) = (lab.guest_ns(Guest::FIRST), vm_addr(Guest(1)));
    wait_ping(first, &second, WAIT)?;
    let before = tunnel_crossings(&lab, &old, &new)?;
    let out = first.run("ping", &["-c", "3", "-i", "0.2", "-W", "1", "-q", &second])?;
    let crossings = tunnel_crossings(&lab, &old, &new)? - before;
    eprintln!("3 pings VM to VM on the new host: {crossings} packet(s) into the tunnel\n{out}");
    check(crossings == 0, || {
        format!("3 pings between two VMs on the new host put {crossings} packets into the tunnel")
    })
}

/// VMs move one after another, and one moves back (a reverted move): at every step each
/// VM answers the client, without restarting either vmtun.
#[test]
fn vms_move_one_after_another_and_back_without_a_restart() -> Result<()> {
    let scratch = Scratch::new("rt-moves")?;
    let lab = lab_with_vms(2)?;
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |o, n| {
        *o = o.clone().with_guests(&lab);
        *n = n.clone().with_guests(&lab);
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    let all_answer = |step: &str| -> Result<()> {
        for guest in lab.guests() {
            wait_ping(&lab.client, &vm_addr(guest), WAIT).map_err(|e| {
                LabError::Failed(format!("{step}: VM {} does not answer: {e}", guest.0))
            })?;
        }
        Ok(())
    };
    all_answer("before the moves")?;
    lab.move_guest(Guest::FIRST, Site::Old, Site::New)?;
    all_answer("VM 0 moved")?;
    lab.move_guest(Guest(1), Site::Old, Site::New)?;
    all_answer("both moved")?;
    lab.move_guest(Guest::FIRST, Site::New, Site::Old)?;
    all_answer("VM 0 moved back")?;
    // The VM moved back talks to the one that stayed on the new host.
    wait_ping(lab.guest_ns(Guest::FIRST), &vm_addr(Guest(1)), WAIT)
}

/// After the provider's switch, a VM that has not moved yet stays reachable: the new host
/// sends its traffic into the tunnel, and the old host, told of the switch, sends the VM's
/// own traffic back through it (the provider no longer accepts the subnet from the old
/// host). Then it moves too, and the other one moves back.
#[test]
fn a_vm_left_on_the_old_host_stays_reachable_after_the_switch() -> Result<()> {
    let scratch = Scratch::new("rt-left")?;
    let lab = lab_with_vms(2)?;
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |o, n| {
        *o = o.clone().with_guests(&lab);
        *n = n.clone().with_guests(&lab);
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    let (moved, stayed) = (Guest::FIRST, Guest(1));
    lab.move_guest(moved, Site::Old, Site::New)?;
    wait_ping(&lab.client, &vm_addr(moved), WAIT)?;

    lab.switch_provider()?;
    lab.drop_subnets_from_old()?;
    helpers::cut_over_with_pings(&lab, &new, &vm_addr(moved), |s| s.is_done())?;
    wait_ping(&lab.client, &vm_addr(stayed), WAIT).map_err(|e| {
        LabError::Failed(format!(
            "the VM left on the old host is cut off after the switch: {e}\nold host:\n{}",
            old.log()
        ))
    })?;
    // Its own traffic too (a connection it opens, a DNS query).
    wait_ping(lab.guest_ns(stayed), CLIENT, WAIT)?;

    lab.move_guest(stayed, Site::Old, Site::New)?;
    wait_ping(&lab.client, &vm_addr(stayed), WAIT)?;
    lab.move_guest(moved, Site::New, Site::Old)?;
    wait_ping(&lab.client, &vm_addr(moved), WAIT)?;
    wait_ping(lab.guest_ns(moved), CLIENT, WAIT)
}
