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
use vmtun::lab::migration::{CLIENT, CLIENT6, Family, Guest, SUBNET};

/// An address of the subnet of `family` that no VM of these labs has (VMs hold `.2` to
/// `.5`).
fn unused(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "203.0.113.6",
        Family::Ipv6 => "2001:db8:1::6",
    }
}

/// Both families, as the dual-stack lab carries them.
const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// Counts, on both hosts, the packets for one of `dests` sent into the tunnel while `run`
/// runs (an nft counter on the TUN device's output in a table of the test's own, removed
/// afterwards), so that other traffic (IPv6's own chatter) does not count.
fn tunnel_crossings(
    lab: &MigrationLab,
    old: &HostVmtun<'_>,
    new: &HostVmtun<'_>,
    dests: &[String],
    run: impl FnOnce() -> Result<()>,
) -> Result<u64> {
    let hosts = [(&lab.old, old.ifname()), (&lab.new, new.ifname())];
    for (ns, tun) in hosts {
        let rules: String = dests
            .iter()
            .map(|d| {
                let ip = if d.contains(':') { "ip6" } else { "ip" };
                format!("oifname \"{tun}\" {ip} daddr {d} counter name crossed\n")
            })
            .collect();
        let ruleset = format!(
            "table inet routing_test {{\n counter crossed {{ }}\n chain out {{\n type filter hook postrouting priority 0; policy accept;\n{rules} }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}-count.nft", ns.name()));
        std::fs::write(&path, ruleset).map_err(|e| LabError::io("writing the counter", e))?;
        ns.run("nft", &["-f", &path.to_string_lossy()])?;
        let _ = std::fs::remove_file(&path);
    }
    run()?;
    // Let a looping packet run out its TTL before counting.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut total = 0;
    for (ns, _) in hosts {
        let text = ns.run(
            "nft",
            &["list", "counter", "inet", "routing_test", "crossed"],
        )?;
        ns.run("nft", &["delete", "table", "inet", "routing_test"])?;
        total += text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| LabError::Failed(format!("no packet count in {text:?}")))?;
    }
    Ok(total)
}

/// A dual-stack lab of `vms` VMs.
fn lab_with_vms(vms: u8) -> Result<MigrationLab> {
    preflight(&["nft", "ping"]);
    MigrationLab::build_with(1, &FAMILIES, vms)
}

/// The hosts' configs for every VM of `lab`, both families.
fn prepare_all<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
) -> Result<(HostVmtun<'a>, HostVmtun<'a>)> {
    prepare_hosts_with(lab, scratch, "auto", |o, n| {
        *o = o.clone().carrying(&FAMILIES).with_guests(lab);
        *n = n.clone().carrying(&FAMILIES).with_guests(lab);
    })
}

fn vm_addr(guest: Guest) -> String {
    guest.addr(Family::Ipv4).to_string()
}

/// Waits until `from` gets an answer from `guest` in each family.
fn wait_answers(from: &Netns, guest: Guest) -> Result<()> {
    for family in FAMILIES {
        wait_ping(from, &guest.addr(family).to_string(), WAIT)?;
    }
    Ok(())
}

/// After the move, before the provider's switch: one ping to an address of the subnet that
/// no VM has crosses the tunnel once (old → new) and is refused there, instead of bouncing
/// between the hosts through the provider until its TTL runs out.
#[test]
fn a_ping_to_an_unused_address_crosses_the_tunnel_at_most_once() -> Result<()> {
    let scratch = Scratch::new("rt-loop")?;
    let lab = lab_with_vms(1)?;
    let (mut old, mut new) = prepare_all(&lab, &scratch)?;
    launch_both(&lab, &mut old, &mut new)?;
    lab.move_vm(Site::Old, Site::New)?;
    wait_answers(&lab.client, Guest::FIRST)?;

    for family in FAMILIES {
        let unused = unused(family);
        let mut answered = false;
        let crossings = tunnel_crossings(&lab, &old, &new, &[unused.to_owned()], || {
            answered = lab.client.answers_ping(unused);
            Ok(())
        })?;
        eprintln!("one ping to {unused}: {crossings} packet(s) into the tunnel");
        check(!answered, || format!("{unused} answered a ping"))?;
        check(crossings <= 1, || {
            format!("one ping to the unused {unused} entered the tunnel {crossings} times")
        })?;
    }
    // The VM still answers, through the tunnel.
    wait_answers(&lab.client, Guest::FIRST)
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
    let (mut old, mut new) = prepare_all(&lab, &scratch)?;
    launch_both(&lab, &mut old, &mut new)?;
    for guest in lab.guests() {
        lab.move_guest(guest, Site::Old, Site::New)?;
        wait_answers(&lab.client, guest)?;
    }
    let first = lab.guest_ns(Guest::FIRST);
    wait_answers(first, Guest(1))?;
    for family in FAMILIES {
        let second = Guest(1).addr(family).to_string();
        let both = [Guest::FIRST.addr(family).to_string(), second.clone()];
        let crossings = tunnel_crossings(&lab, &old, &new, &both, || {
            let out = first.run("ping", &["-c", "3", "-i", "0.2", "-W", "1", "-q", &second])?;
            eprintln!("{out}");
            Ok(())
        })?;
        eprintln!(
            "3 pings VM to VM on the new host ({second}): {crossings} packet(s) into the tunnel"
        );
        check(crossings == 0, || {
            format!(
                "3 pings between two VMs on the new host ({second}) put {crossings} packets into the tunnel"
            )
        })?;
    }
    Ok(())
}

/// VMs move one after another, and one moves back (a reverted move): at every step each
/// VM answers the client, without restarting either vmtun.
#[test]
fn vms_move_one_after_another_and_back_without_a_restart() -> Result<()> {
    let scratch = Scratch::new("rt-moves")?;
    let lab = lab_with_vms(2)?;
    let (mut old, mut new) = prepare_all(&lab, &scratch)?;
    launch_both(&lab, &mut old, &mut new)?;
    let all_answer = |step: &str| -> Result<()> {
        for guest in lab.guests() {
            wait_answers(&lab.client, guest).map_err(|e| {
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
    wait_answers(lab.guest_ns(Guest::FIRST), Guest(1))
}

/// After the provider's switch, a VM that has not moved yet stays reachable: the new host
/// sends its traffic into the tunnel, and the old host, told of the switch, sends the VM's
/// own traffic back through it (the provider no longer accepts the subnet from the old
/// host). Then it moves too, and the other one moves back.
#[test]
fn a_vm_left_on_the_old_host_stays_reachable_after_the_switch() -> Result<()> {
    let scratch = Scratch::new("rt-left")?;
    let lab = lab_with_vms(2)?;
    let (mut old, mut new) = prepare_all(&lab, &scratch)?;
    launch_both(&lab, &mut old, &mut new)?;
    let (moved, stayed) = (Guest::FIRST, Guest(1));
    lab.move_guest(moved, Site::Old, Site::New)?;
    wait_answers(&lab.client, moved)?;

    lab.switch_provider()?;
    lab.drop_subnets_from_old()?;
    for family in FAMILIES {
        let addr = moved.addr(family).to_string();
        let net = vmtun::lab::migration::subnet(family).to_owned();
        helpers::cut_over_with_pings(&lab, &new, &addr, |s| s.cut_over.contains(&net))?;
    }
    wait_answers(&lab.client, stayed).map_err(|e| {
        LabError::Failed(format!(
            "the VM left on the old host is cut off after the switch: {e}\nold host:\n{}",
            old.log()
        ))
    })?;
    // Its own traffic too (a connection it opens, a DNS query).
    let client = [CLIENT, CLIENT6];
    for addr in client {
        wait_ping(lab.guest_ns(stayed), addr, WAIT)?;
    }
    // A reload of the old host's firewall empties the switched set with the rest: vmtun puts
    // its table back and the new host's next report refills the set.
    lab.old.run("nft", &["flush", "ruleset"])?;
    for addr in client {
        wait_ping(lab.guest_ns(stayed), addr, WAIT)?;
    }

    lab.move_guest(stayed, Site::Old, Site::New)?;
    wait_answers(&lab.client, stayed)?;
    lab.move_guest(moved, Site::New, Site::Old)?;
    wait_answers(&lab.client, moved)?;
    for addr in client {
        wait_ping(lab.guest_ns(moved), addr, WAIT)?;
    }
    Ok(())
}
