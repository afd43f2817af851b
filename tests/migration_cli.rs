//! The README's claims about the move that the scenario test (tests/migration.rs) does not
//! run: `vmtun cutover` by hand (with `cutover = "manual"`, and after the watcher failed),
//! the VM-interface watcher inside `vmtun up`, `vmtun vif-up` on the command line, the
//! text of `vmtun status` on role new, a non-default `table`/`fwmark` with two subnets cut
//! over one at a time, and `vmtun demo --json` (also `--real-vm`, and its errors without QEMU
//! or the guest). All on the lab of `vmtun::lab::migration`.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Result, Scratch, check, preflight, wait_until};
use helpers::{
    HostState, VMTUN, WAIT, cut_over_with_pings, launch_both, migration_status_text, prepare_hosts,
    prepare_hosts_with, probing, vif_routed, wait_cutover,
};
use serde_json::Value;
use vmtun::lab::migration::hosts::{CutoverState, HostVmtun, VmEntry, mark_rules};
use vmtun::lab::migration::probe::{Echo, Prober, unix_ns};
use vmtun::lab::migration::scenario::PHASES;
use vmtun::lab::migration::stats::Via;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{
    BRIDGE, CLIENT, ECHO_PORT, NEW, SUBNET, TUNNEL_NEW, TUNNEL_OLD, VIF, VM_ADDR,
};
use vmtun::lab::qemu::{GuestImage, MIGRATION_PORT, missing_requirement};

/// The migration lines of `vmtun status` on role new before the first native packet, as
/// the README shows them.
const WATCHING: &str = "migration: role new (VM replies leave through the old host until cutover)
  subnets: 203.0.113.0/29
  arrived natively (kernel flip): none yet
  cutover watcher: watching, waiting for 203.0.113.0/29
";

/// `vmtun cutover -c FILE` on `host`: it must exit 0; what it printed.
fn cutover_by_hand(host: &HostVmtun<'_>) -> Result<String> {
    let out = host.output(&["cutover"])?;
    check(out.status.success(), || {
        format!(
            "vmtun cutover exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// With `cutover = "manual"` no watcher runs and the mark rule stays until `vmtun cutover
/// -c FILE`, which removes it (and only it: the table and the ip rule stay until exit);
/// `status` says so before and after.
#[test]
fn manual_cutover_removes_the_mark_rule_and_status_says_so() -> Result<()> {
    preflight(&["nft"]);
    let scratch = Scratch::new("mig-manual")?;
    let lab = MigrationLab::build(1)?;
    let (_old, mut new) = prepare_hosts(&lab, &scratch, "manual")?;
    new.launch()?;
    check(mark_rules(&lab.new)? == [SUBNET], || {
        "no mark rule for the subnet while up".into()
    })?;
    let before = migration_status_text(&new)?;
    check(
        before.contains("\n  cutover watcher: off (cutover = \"manual\")\n")
            && !before.contains("manual cutover:"),
        || format!("vmtun status before the manual cutover:\n{before}"),
    )?;

    let printed = cutover_by_hand(&new)?;
    let removed = format!("  manual cutover: removed the mark rule of {SUBNET} (commit ");
    check(printed.contains(&removed), || {
        format!("vmtun cutover printed:\n{printed}")
    })?;
    check(mark_rules(&lab.new)?.is_empty(), || {
        "the mark rule is still there after vmtun cutover".into()
    })?;
    let after = migration_status_text(&new)?;
    check(after.contains(&removed), || {
        format!("vmtun status after the manual cutover:\n{after}")
    })?;
    let rules = lab.new.ip(&["rule", "show"])?;
    check(rules.contains("fwmark 0x1 lookup 201"), || {
        format!("the cutover removed more than the mark rule: ip rule:\n{rules}")
    })?;
    let status = new.stop()?;
    check(status.success(), || {
        format!("vmtun up exited with {status}:\n{}", new.log())
    })
}

/// When the watcher fails (its bridge deleted while it watches) `status` says so and
/// `vmtun cutover` still removes the mark rule: the by-hand path of the README.
#[test]
fn manual_cutover_removes_the_mark_rule_after_the_watcher_failed() -> Result<()> {
    preflight(&["nft"]);
    let scratch = Scratch::new("mig-failed")?;
    let lab = MigrationLab::build(1)?;
    let (_old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    new.launch()?;
    check(migration_status_text(&new)? == WATCHING, || {
        "the watcher is not watching after up".into()
    })?;
    lab.new.ip(&["link", "del", BRIDGE])?;
    let failed = "\n  cutover watcher: FAILED (";
    wait_until(WAIT, "vmtun status to show the watcher failed", || {
        migration_status_text(&new).is_ok_and(|t| t.contains(failed))
    })?;
    check(mark_rules(&lab.new)? == [SUBNET], || {
        "the mark rule went with the failed watcher: the test would prove nothing".into()
    })?;

    let printed = cutover_by_hand(&new)?;
    check(mark_rules(&lab.new)?.is_empty(), || {
        format!("the mark rule is still there after vmtun cutover, which printed:\n{printed}")
    })?;
    let after = migration_status_text(&new)?;
    check(
        after.contains(failed)
            && after.contains(&format!(
                "  manual cutover: removed the mark rule of {SUBNET} ("
            )),
        || format!("vmtun status after the manual cutover:\n{after}"),
    )?;
    // Its exit may complain about the bridge it can no longer restore; it must exit.
    new.stop()?;
    Ok(())
}

/// A running `vmtun up` routes a configured VM interface when it appears, with nobody
/// calling `vif-up`: the /32 route and proxy ARP come, the VM answers through the tunnel;
/// and again when the interface is recreated (the VM comes back).
#[test]
fn vmtun_up_routes_a_vm_interface_that_appears_without_vif_up() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("mig-vifwatch")?;
    let lab = MigrationLab::build(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    launch_both(&lab, &mut old, &mut new)?;
    let prober = probing(&lab, 200)?;
    check(!vif_routed(&lab.new)?, || {
        "vif0 is routed on the new host before the VM is there".into()
    })?;

    lab.move_vm(Site::Old, Site::New)?;
    let moved = unix_ns();
    wait_until(
        WAIT,
        "vmtun up to route vif0 (/32 route, proxy_arp)",
        || vif_routed(&lab.new).unwrap_or(false),
    )?;
    wait_until(WAIT, "replies through the tunnel", || {
        prober.answered_since(moved)
    })?;

    // The VM leaves and comes back: a new interface, with nothing set on it.
    lab.move_vm(Site::New, Site::New)?;
    let back = unix_ns();
    wait_until(WAIT, "vmtun up to route the recreated vif0", || {
        vif_routed(&lab.new).unwrap_or(false)
    })?;
    wait_until(WAIT, "replies through the tunnel again", || {
        prober.answered_since(back)
    })?;
    drop(prober);
    for host in [&mut new, &mut old] {
        let status = host.stop()?;
        check(status.success(), || {
            format!("{} exited with {status}:\n{}", host.ifname(), host.log())
        })?;
    }
    Ok(())
}

/// `vmtun vif-up IFACE -c FILE`: routes the VM's interface; twice leaves the host as once
/// (exit 0 both times); an interface the config does not list, or one that does not exist,
/// is a one-line error with a non-zero exit and changes nothing.
#[test]
fn vif_up_on_the_command_line_is_idempotent_and_refuses_unknown_interfaces() -> Result<()> {
    preflight(&[]);
    let scratch = Scratch::new("mig-vifup")?;
    let lab = MigrationLab::build(1)?;
    let (_old, new) = prepare_hosts_with(&lab, &scratch, "auto", |_, new| {
        new.vms.push(VmEntry {
            vif: "vif1".into(),
            addresses: vec!["203.0.113.3".into()],
        });
    })?;
    lab.move_vm(Site::Old, Site::New)?;
    check(!vif_routed(&lab.new)?, || {
        "vif0 is routed before vif-up".into()
    })?;
    let vif_up = |iface: &str| -> Result<std::process::Output> {
        let out = new.output(&["vif-up", iface])?;
        eprintln!(
            "vif-up {iface}: {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    };
    let first = vif_up(VIF)?;
    check(first.status.success() && vif_routed(&lab.new)?, || {
        format!("the first vif-up: {first:?}")
    })?;
    let once = HostState::of(&lab.new)?;
    let second = vif_up(VIF)?;
    check(second.status.success(), || {
        format!("the second vif-up: {second:?}")
    })?;
    let twice = HostState::of(&lab.new)?;
    check(twice == once, || {
        format!("vif-up twice differs from once:\n{}", once.diff(&twice))
    })?;

    for (iface, why) in [("vif9", "not in the config"), ("vif1", "not on the host")] {
        let out = vif_up(iface)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        check(
            !out.status.success()
                && stderr.lines().count() == 1
                && stderr.starts_with("vmtun: ")
                && stderr.contains(iface),
            || format!("vif-up {iface} ({why}): {}, stderr {stderr:?}", out.status),
        )?;
        let after = HostState::of(&lab.new)?;
        check(after == once, || {
            format!(
                "vif-up {iface} ({why}) changed the host:\n{}",
                once.diff(&after)
            )
        })?;
    }
    Ok(())
}

/// The migration lines of `vmtun status` (text) on role new, as the README shows them:
/// watching before the provider's switch; after the first native packet the kernel flip,
/// the watcher done and the cutover's record.
#[test]
fn status_text_on_role_new_shows_the_migration_before_and_after_the_cutover() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("mig-status")?;
    let lab = MigrationLab::build(1)?;
    let (_old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    new.launch()?;
    let before = migration_status_text(&new)?;
    check(before == WATCHING, || {
        format!("vmtun status before the switch:\n{before}\nexpected:\n{WATCHING}")
    })?;

    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    let after = migration_status_text(&new)?;
    let lines: Vec<&str> = after.lines().collect();
    let record = format!(
        "  cutover {SUBNET}: first native packet from {CLIENT} to {VM_ADDR}; mark rule gone "
    );
    let latency_ms = lines
        .get(4)
        .and_then(|l| l.strip_prefix(record.as_str()))
        .and_then(|l| l.strip_suffix(" ms later"))
        .and_then(|ms| ms.parse::<f64>().ok());
    check(
        lines.len() == 5
            && lines[..2] == WATCHING.lines().take(2).collect::<Vec<_>>()[..]
            && lines[2] == "  arrived natively (kernel flip): 203.0.113.0"
            && lines[3] == "  cutover watcher: done"
            && latency_ms.is_some(),
        || format!("vmtun status after the cutover:\n{after}"),
    )?;
    let status = new.stop()?;
    check(status.success(), || {
        format!("vmtun up exited with {status}:\n{}", new.log())
    })
}

/// The second VM subnet of the two-subnet test, its probed address, and the non-default
/// routing table and mark.
const SECOND_SUBNET: &str = "203.0.113.8/29";
const SECOND_ADDR: &str = "203.0.113.9";
const TABLE: u32 = 250;
const FWMARK: u32 = 42;

/// Non-default `table` and `fwmark` and two subnets, end to end: the rule and the table
/// are the configured ones and carry the VM's replies through the tunnel; the provider
/// switches one subnet, which cuts over alone (its mark rule gone, in the native set) while
/// the other's mark rule stays until its own first native packet.
#[test]
fn non_default_table_fwmark_and_two_subnets_cut_over_one_at_a_time() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("mig-twonets")?;
    let lab = MigrationLab::build(1)?;
    let _echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let subnets = vec![SUBNET.to_owned(), SECOND_SUBNET.to_owned()];
    let (mut old, mut new) = prepare_hosts_with(&lab, &scratch, "auto", |old, new| {
        if let Some(m) = old.migration.as_mut() {
            m.subnets = subnets.clone();
        }
        if let Some(m) = new.migration.as_mut() {
            m.subnets = subnets.clone();
            m.table = TABLE;
            m.fwmark = FWMARK;
        }
    })?;
    launch_both(&lab, &mut old, &mut new)?;
    let rules = lab.new.ip(&["rule", "show"])?;
    check(
        rules.contains(&format!("fwmark {FWMARK:#x} lookup {TABLE}")) && !rules.contains("201"),
        || format!("ip rule on the new host:\n{rules}"),
    )?;
    let table = lab
        .new
        .ip(&["route", "show", "table", &TABLE.to_string()])?;
    check(table.contains(&format!("default via {TUNNEL_OLD}")), || {
        format!("table {TABLE} on the new host:\n{table}")
    })?;
    check(mark_rules(&lab.new)? == subnets, || {
        format!("mark rules: {:?}", mark_rules(&lab.new))
    })?;

    // The VM's replies go through the tunnel by the configured mark and table.
    let prober = probing(&lab, 200)?;
    lab.move_vm(Site::Old, Site::New)?;
    new.vif_up(VIF)?;
    let moved = unix_ns();
    wait_until(WAIT, "replies through the tunnel", || {
        prober.answered_since(moved)
    })?;
    let native_before = replies_since(&prober, moved, Via::New);
    check(native_before == 0, || {
        format!("{native_before} replies left natively before the switch")
    })?;

    // The provider switches the VM's subnet only.
    lab.switch_provider()?;
    let first = wait_cutover(&new, "the first subnet to cut over", |s| {
        !s.cut_over.is_empty()
    })?;
    check(
        first.cut_over == [SUBNET]
            && first.waiting == [SECOND_SUBNET]
            && first.phase.as_deref() == Some("watching")
            && first.native_subnets == ["203.0.113.0"],
        || format!("after the first subnet's switch: {first:?}"),
    )?;
    check(mark_rules(&lab.new)? == [SECOND_SUBNET], || {
        format!(
            "mark rules after the first subnet's cutover: {:?}",
            mark_rules(&lab.new)
        )
    })?;
    let switched = unix_ns();
    wait_until(WAIT, "replies leaving natively", || {
        replies_since(&prober, switched, Via::New) > 0
    })?;
    drop(prober);

    // Then the second subnet's first native packet.
    lab.core.ip(&["route", "add", SECOND_SUBNET, "via", NEW])?;
    let done = cut_over_with_pings(&lab, &new, SECOND_ADDR, CutoverState::is_done)?;
    let mut native = done.native_subnets.clone();
    native.sort();
    check(
        done.cut_over == subnets && native == ["203.0.113.0", "203.0.113.8"],
        || format!("after the second subnet's switch: {done:?}"),
    )?;
    check(mark_rules(&lab.new)?.is_empty(), || {
        format!("mark rules after both cutovers: {:?}", mark_rules(&lab.new))
    })?;
    for host in [&mut new, &mut old] {
        let status = host.stop()?;
        check(status.success(), || {
            format!("{} exited with {status}:\n{}", host.ifname(), host.log())
        })?;
    }
    let rules = lab.new.ip(&["rule", "show"])?;
    check(!rules.contains(&TABLE.to_string()), || {
        format!("the rule for table {TABLE} stayed after exit:\n{rules}")
    })
}

/// Replies received to probes sent since `since_ns` that came back through `via`.
fn replies_since(prober: &Prober, since_ns: u64, via: Via) -> usize {
    let log = prober.snapshot();
    let first = log.sent_ns.partition_point(|&t| t < since_ns);
    log.replies[first..]
        .iter()
        .flatten()
        .filter(|r| r.via == via)
        .count()
}

/// Runs `vmtun demo ARGS` with `env`: it must exit 0 and print one JSON object with every
/// phase in order; that object.
fn run_demo(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<Value> {
    let out = std::process::Command::new(VMTUN)
        .arg("demo")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| common::LabError::io(format!("running vmtun demo {args:?}"), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.success(), || {
        format!("vmtun demo {args:?} exited with {}:\n{stderr}", out.status)
    })?;
    let report: Value = serde_json::from_str(&stdout).map_err(|e| {
        common::LabError::Failed(format!(
            "vmtun demo {args:?} printed invalid JSON ({e}):\n{stdout}"
        ))
    })?;
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    check(phases == PHASES, || {
        format!("demo phases {phases:?}, expected {PHASES:?}")
    })?;
    Ok(report)
}

/// `vmtun demo --json --rate 10000 --dwell 0.2 EXTRA`: it must exit 0 and print one JSON
/// object with every phase in order, at the asked rate, and a cutover record; the report.
fn demo_json(extra: &[&str]) -> Result<Value> {
    let mut args = vec!["--json", "--rate", "10000", "--dwell", "0.2"];
    args.extend_from_slice(extra);
    let report = run_demo(&args, &[])?;
    check(report["rate_hz"] == 10_000, || {
        format!("demo rate_hz {}", report["rate_hz"])
    })?;
    check(report["cutover"].is_object(), || {
        format!("no cutover record in the demo's JSON:\n{report}")
    })?;
    let after_switch = &report["phases"][4];
    check(after_switch["replies_via_new"].as_u64() > Some(0), || {
        format!("no reply left natively after the switch: {after_switch}")
    })?;
    Ok(report)
}

/// `vmtun demo --json --rate 10000` (short phases): vmtun's own cutover, recorded.
#[test]
fn demo_json_reports_vmtuns_cutover() -> Result<()> {
    preflight(&["nft", "ping"]);
    let report = demo_json(&[])?;
    let cutover = &report["cutover"];
    check(
        report["mode"] == "vmtun"
            && cutover["by"] == "vmtun"
            && cutover["phase"] == "done"
            && cutover["mark_rule_left"] == false
            && cutover["latency_ns"].is_u64()
            && cutover["native_subnets"] == serde_json::json!(["203.0.113.0"]),
        || format!("the demo's cutover: {cutover}"),
    )
}

/// `vmtun demo --json --seed-cutover --rate 10000` (short phases): the cutover is the
/// seed's line (tcpdump, then flushing the mangle table), not vmtun's.
#[test]
fn demo_json_with_seed_cutover_reports_the_seeds_cutover() -> Result<()> {
    preflight(&["nft", "ping", "tcpdump", "iptables"]);
    let report = demo_json(&["--seed-cutover"])?;
    let cutover = &report["cutover"];
    let command = cutover["command"].as_str().unwrap_or_default();
    check(
        report["mode"] == "seed"
            && cutover["by"] == "seed"
            && command.starts_with("tcpdump -c 1 -i br0 net 203.0.113.0/29")
            && command.ends_with("&& iptables -t mangle -F PREROUTING")
            && cutover["rule_gone_time_unix_ns"].is_u64()
            && cutover["phase"].is_null()
            && cutover["native_subnets"] == serde_json::json!([]),
        || format!("the demo's cutover: {cutover}"),
    )
}

/// `vmtun demo --real-vm` with `env` set (and `PATH`, if given, replaced): it must fail
/// before building anything, with one line on stderr that names `cause` and `fix`.
fn demo_real_vm_refused(env: &[(&str, &std::ffi::OsStr)], cause: &str, fix: &str) -> Result<()> {
    let out = std::process::Command::new(VMTUN)
        .args(["demo", "--real-vm"])
        .envs(env.iter().copied())
        .output()
        .map_err(|e| common::LabError::io("running vmtun demo --real-vm", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        !out.status.success()
            && stderr.lines().count() == 1
            && stderr.contains(cause)
            && stderr.contains(fix),
        || {
            format!(
                "vmtun demo --real-vm must refuse in one line naming {cause:?} and {fix:?}; it exited with {} and said:\n{stderr}",
                out.status
            )
        },
    )
}

/// Without the guest image, `vmtun demo --real-vm` says where it looked and to run
/// scripts/guest.sh.
#[test]
fn demo_real_vm_without_the_guest_says_to_build_it() -> Result<()> {
    preflight(&["nft", "ping"]);
    if let Some(why) = missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let scratch = Scratch::new("demo-noguest")?;
    demo_real_vm_refused(
        &[("VMTUN_GUEST_DIR", scratch.path().as_os_str())],
        &format!("no guest image in {}", scratch.path().display()),
        "scripts/guest.sh",
    )
}

/// Without QEMU on the PATH (the demo's other tools still there), `vmtun demo --real-vm`
/// says to run scripts/setup.sh.
#[test]
fn demo_real_vm_without_qemu_says_to_run_setup() -> Result<()> {
    preflight(&["nft", "ping"]);
    let scratch = Scratch::new("demo-noqemu")?;
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).map_err(|e| common::LabError::io("creating bin", e))?;
    for tool in ["ip", "nft", "sysctl", "ping"] {
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
            .expect("preflight found it");
        std::os::unix::fs::symlink(&real, bin.join(tool))
            .map_err(|e| common::LabError::io(format!("linking {tool}"), e))?;
    }
    demo_real_vm_refused(
        &[("PATH", bin.as_os_str())],
        "qemu-system-x86_64 is not installed",
        "scripts/setup.sh",
    )
}

/// `vmtun demo --real-vm --json --migrate-via tunnel --migrate-parameter
/// downtime-limit=20` (short phases, the README's downtime limit): a real guest migrated
/// through the tunnel, with the move and the switch summarised in the columns:
/// QEMU's downtime, the real pause (from QMP's STOP and RESUME), the gap, losses after
/// RESUME, the cutover's latency and wrong-way replies; and what the pause carried (the
/// bytes sent while the guest was stopped, when the source had written them all).
#[test]
fn demo_real_vm_json_reports_the_move_and_the_switch() -> Result<()> {
    preflight(&["nft", "ping"]);
    if let Some(why) = missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let image = GuestImage::build(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let guest_dir = image.kernel.parent().expect("the image has a directory");
    let report = run_demo(
        &[
            "--real-vm",
            "--json",
            "--dwell",
            "0.5",
            "--migrate-via",
            "tunnel",
            "--migrate-parameter",
            "downtime-limit=20",
        ],
        &[("VMTUN_GUEST_DIR", guest_dir.as_os_str())],
    )?;
    let migration = &report["migration"];
    check(
        migration["path"] == "tunnel"
            && migration["uri"] == format!("tcp:{TUNNEL_NEW}:{MIGRATION_PORT}")
            && migration["real_pause_ms"].is_f64(),
        || format!("the migration through the tunnel, its pause measured: {migration}"),
    )?;
    let at = |key: &str| migration[key].as_u64().unwrap_or(0);
    check(
        migration["parameters"] == serde_json::json!([{"name": "downtime-limit", "value": 20}])
            && migration["downtime_bytes"].as_u64() > Some(0)
            && at("transferred_bytes") > at("downtime_bytes")
            && at("stop_unix_ns") <= at("source_completed_unix_ns")
            && at("source_completed_unix_ns") <= at("resume_unix_ns")
            && migration["losses"]["tcp_retransmits_old"].is_u64(),
        || format!("what the pause carried, with QEMU's downtime limit set: {migration}"),
    )?;
    let summary = &report["summary"];
    let (moved, switched) = (&summary[0], &summary[1]);
    check(
        moved["phase"] == "move"
            && moved["qemu_downtime_ms"].is_u64()
            && moved["real_pause_ms"] == migration["real_pause_ms"]
            && moved["longest_gap_ms"].is_f64()
            && moved["lost_after_resume"].is_u64(),
        || format!("the move's summary: {moved}"),
    )?;
    check(
        switched["phase"] == "switch"
            && switched["cutover_latency_ms"].is_f64()
            && switched["wrong_way_replies"] == 0,
        || format!("the switch's summary: {switched}"),
    )?;
    let after_switch = &report["phases"][4];
    check(
        after_switch["received"].as_u64() > Some(0)
            && after_switch["replies_via_new"] == after_switch["received"],
        || format!("the guest answered natively after the switch: {after_switch}"),
    )
}
