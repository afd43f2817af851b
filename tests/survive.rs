//! What vmtun put on the host survives what hosts do (issue 10, section 4), on the lab of
//! `vmtun::lab::migration`:
//! - another program flushes the ruleset or deletes vmtun's policy rule: vmtun puts back
//!   what is its own, as it stands now (after the cutover: no mark rule, the cutover set's
//!   element back), and the VM is answered again;
//! - restarting the new host's vmtun after the cutover does not turn the tunnel path back
//!   on, and restarting the old host's does not break the moved VM;
//! - `up` killed right after any of its host changes leaves nothing the next `up` trips over
//!   or `down` leaves behind, and `rp_filter`'s value to restore stays the host's own.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Result, Scratch, check, preflight, wait_until};
use helpers::{
    HostState, VMTUN, WAIT, migration_status_text, moved, prepare_hosts, wait_cutover_done,
};
use vmtun::lab::migration::hosts::{HostVmtun, mark_rules};
use vmtun::lab::migration::probe::unix_ns;
use vmtun::lab::migration::stats::Via;
use vmtun::lab::migration::topology::MigrationLab;
use vmtun::lab::migration::{BRIDGE, CLIENT};

/// `vmtun status --json`'s restore count.
fn restores(host: &HostVmtun<'_>) -> Result<u64> {
    Ok(host.status()?["restore"]["restores"].as_u64().unwrap_or(0))
}

/// The elements of the new host's cutover set (none without the table).
fn native_set(lab: &MigrationLab) -> String {
    lab.new
        .run("nft", &["list", "set", "ip", "vmtun", "native"])
        .unwrap_or_default()
}

/// `nft flush ruleset` (what `systemctl reload nftables` does on Debian) and `ip rule del`
/// (what systemd-networkd does to foreign rules when it restarts): before the provider's
/// switch the VM's replies stop until vmtun puts its table and rule back, then are answered
/// again; after the cutover vmtun puts back its table with the cutover set's element and
/// without the mark rule, so the replies never take the tunnel again.
#[test]
fn a_flushed_ruleset_or_deleted_rule_is_put_back_as_it_stands() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("survive-flush")?;
    let lab = MigrationLab::build(1)?;
    let m = moved(&lab, &scratch)?;
    let mut state = HostState::of(&lab.new)?;

    m.removed_and_answered_again("nft flush ruleset", &["nft", "flush", "ruleset"])?;
    let rule_del = [
        "ip", "rule", "del", "fwmark", "1", "lookup", "201", "priority", "10000",
    ];
    m.removed_and_answered_again("ip rule del", &rule_del)?;
    let restored = HostState::of(&lab.new)?;
    // Counters differ; everything else is as vmtun first set it.
    let strip = without_counters;
    check(strip(&restored) == strip(&state), || {
        format!(
            "the restored host differs:\n{}",
            strip(&state).diff(&strip(&restored))
        )
    })?;
    check(restores(&m.new)? >= 2, || {
        "status counts no restores".into()
    })?;
    let text = m.new.command(&["status"])?;
    check(text.contains("  restored host changes: "), || {
        format!("vmtun status:\n{text}")
    })?;

    // The provider's switch: the cutover removes the mark rule, the kernel fills the set.
    lab.switch_provider()?;
    wait_cutover_done(&m.new)?;
    check(mark_rules(&lab.new)?.is_empty(), || {
        "the mark rule is still there after the cutover".into()
    })?;
    state = HostState::of(&lab.new)?;
    let flushed = unix_ns();
    let before = restores(&m.new)?;
    lab.new.run("nft", &["flush", "ruleset"])?;
    wait_until(
        WAIT,
        "vmtun's table back with the cutover set's element",
        || native_set(&lab).contains("203.0.113.0"),
    )?;
    wait_until(WAIT, "the restore counted", || {
        restores(&m.new).is_ok_and(|n| n > before)
    })?;
    check(mark_rules(&lab.new)?.is_empty(), || {
        format!(
            "the restore turned the tunnel path back on:\n{}",
            lab.new.run("nft", &["list", "ruleset"]).unwrap_or_default()
        )
    })?;
    let now = HostState::of(&lab.new)?;
    check(strip(&now) == strip(&state), || {
        format!(
            "restored after the cutover:\n{}",
            strip(&state).diff(&strip(&now))
        )
    })?;
    let answered = unix_ns();
    wait_until(WAIT, "replies after the flush", || {
        m.prober().answered_since(answered)
    })?;
    let through_old = m.replies_since(flushed, Via::Old);
    check(through_old == 0, || {
        format!("{through_old} replies went through the tunnel after the cutover")
    })?;
    Ok(())
}

/// `state` with its nft counters' numbers left out.
fn without_counters(state: &HostState) -> HostState {
    let mut words = state.nft.split(' ').peekable();
    let mut nft = Vec::new();
    while let Some(w) = words.next() {
        nft.push(w);
        if w == "packets" || w == "bytes" {
            words.next();
        }
    }
    HostState {
        nft: nft.join(" "),
        ..state.clone()
    }
}

/// The VM pings the client once a second until answered: traffic the VM starts, which no
/// native packet has flipped the kernel for.
fn vm_reaches_the_client(lab: &MigrationLab) -> Result<()> {
    wait_until(WAIT, "the VM's ping to the client answered", || {
        lab.vm.answers_ping(CLIENT)
    })
}

/// After the cutover, and with the old host's vmtun stopped (the move is over), the new
/// host's vmtun restarts — cleanly, then after a crash — and remembers the cutover: no
/// mark rule, the subnet in the cutover set, `status` says so, and traffic the VM starts
/// leaves natively (through the tunnel it would be lost: nobody is at the other end).
#[test]
fn restarting_the_new_host_after_the_cutover_keeps_the_tunnel_path_off() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("survive-restart-new")?;
    let lab = MigrationLab::build(1)?;
    let mut m = moved(&lab, &scratch)?;
    lab.switch_provider()?;
    wait_cutover_done(&m.new)?;
    drop(m.prober.take());
    let stopped = m.old.stop()?;
    check(stopped.success(), || {
        format!("the old host's vmtun exited with {stopped}")
    })?;

    for (how, crash) in [
        ("a clean restart", false),
        ("a restart after a crash", true),
    ] {
        if crash {
            m.new.kill()?;
        } else {
            let status = m.new.stop()?;
            check(status.success(), || {
                format!("vmtun up exited with {status}")
            })?;
        }
        m.new.launch()?;
        check(mark_rules(&lab.new)?.is_empty(), || {
            format!("after {how} the mark rule is back:\n{}", m.new.log())
        })?;
        check(native_set(&lab).contains("203.0.113.0"), || {
            format!("after {how} the cutover set is empty: {}", native_set(&lab))
        })?;
        let text = migration_status_text(&m.new)?;
        check(
            text.contains("  cut over before this instance started: 203.0.113.0/29")
                && text.contains("  arrived natively (kernel flip): 203.0.113.0"),
            || format!("vmtun status after {how}:\n{text}"),
        )?;
        vm_reaches_the_client(&lab)?;
    }
    let status = m.new.stop()?;
    check(status.success(), || {
        format!("vmtun up exited with {status}")
    })
}

/// Before the provider's switch the moved VM is reached through the old host: restarting
/// the old host's vmtun (cleanly, then after a crash) interrupts it only until the tunnel
/// is back.
#[test]
fn restarting_the_old_host_does_not_break_the_moved_vm() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("survive-restart-old")?;
    let lab = MigrationLab::build(1)?;
    let mut m = moved(&lab, &scratch)?;
    for (how, crash) in [
        ("a clean restart", false),
        ("a restart after a crash", true),
    ] {
        if crash {
            m.old.kill()?;
        } else {
            let status = m.old.stop()?;
            check(status.success(), || {
                format!("vmtun up exited with {status}")
            })?;
        }
        m.old.launch()?;
        let at = unix_ns();
        wait_until(WAIT, &format!("the VM answered after {how}"), || {
            m.prober().answered_since(at)
        })?;
    }
    let at = unix_ns();
    let through_old = || m.replies_since(at, Via::Old);
    wait_until(WAIT, "replies through the old host", || through_old() > 10)?;
    Ok(())
}

/// The host changes `vmtun up` would make on `host`: its `--dry-run` lines but the TUN's.
fn plan_length(host: &HostVmtun<'_>) -> Result<usize> {
    let out = host.output(&["up", "--dry-run"])?;
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    check(out.status.success(), || {
        format!(
            "up --dry-run: {}\n{plan}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(plan
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("ip tuntap"))
        .count())
}

/// `vmtun up` killed (SIGKILL, as a crash) right after each of its host changes in turn,
/// through a test hook: each time the next `up` starts cleanly (no `File exists`), and its
/// exit leaves the host as it was, `rp_filter` on the bridge with the host's own value.
#[test]
fn up_killed_after_any_host_change_leaves_nothing_behind() -> Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    preflight(&["nft"]);
    let scratch = Scratch::new("survive-crash")?;
    let lab = MigrationLab::build(1)?;
    let (_old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    let pristine = HostState::of(&lab.new)?;
    let rp_filter = format!("net.ipv4.conf.{BRIDGE}.rp_filter");
    let own = lab.new.sysctl_value(&rp_filter)?;
    let changes = plan_length(&new)?;
    check(changes > 10, || format!("a plan of {changes} changes?"))?;
    for n in 1..=changes {
        let out = lab
            .new
            .command(VMTUN)
            .args(["up", "-c"])
            .arg(&new.path)
            .env("VMTUN_TEST_KILL_AFTER_CHANGES", n.to_string())
            .output()
            .map_err(|e| common::LabError::io("running vmtun up", e))?;
        check(out.status.signal() == Some(libc::SIGKILL), || {
            format!(
                "up with a kill after change {n}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        new.launch().map_err(|e| {
            common::LabError::Failed(format!("up after a kill after change {n}: {e}"))
        })?;
        check(lab.new.sysctl_value(&rp_filter)? == "2", || {
            format!("{rp_filter} is not 2 while up (kill after change {n})")
        })?;
        let status = new.stop()?;
        check(status.success(), || {
            format!(
                "up after a kill after change {n} exited with {status}:\n{}",
                new.log()
            )
        })?;
        let after = HostState::of(&lab.new)?;
        check(after == pristine, || {
            format!(
                "after a kill after change {n}, up and its exit:\n{}",
                pristine.diff(&after)
            )
        })?;
        check(lab.new.sysctl_value(&rp_filter)? == own, || {
            format!("{rp_filter} is not the host's own {own} (kill after change {n})")
        })?;
    }
    Ok(())
}
