//! `vmtun demo`: the whole move on this machine, in network namespaces (DESIGN.md, "The
//! lab"). It prints progress as it goes, then a timeline and a per-phase summary (or one
//! JSON object with `--json`), and deletes every namespace it made, also on Ctrl-C and on
//! failure.
//!
//! `vmtun demo --real-vm` does the same with a real guest that QEMU live-migrates
//! ([`crate::lab::migration::real_vm`]) and adds a table of the move and the switch:
//! QEMU's downtime, the guest's real pause, the client's gap and losses, the cutover.
//!
//! This module only parses the options, runs [`crate::lab::migration::run`] (or the real
//! VM's) and presents its report; the scenario itself lives in the lab.

use crate::config::HandoverMode;
use crate::lab::qemu::{GuestRam, MigrationParameter};
use crate::lab::{self, migration};
use migration::real_vm::{self, MigrationPath, RealVmOptions, RealVmReport};
use migration::scenario::{HostMode, Options, Report};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `vmtun demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Print one JSON object (phases, cutover, totals, timeline) on stdout instead of the
    /// tables; progress still goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Probes per second from the client to the VM (1-10000).
    #[arg(long, default_value_t = 1000, value_name = "HZ")]
    pub rate: u32,
    /// Compare: the new host does it the seed's way (plain vmtun tunnel, the article's
    /// table/rule/iptables mark, and `tcpdump -c 1 -i br0 net NET -s 1 && iptables -t
    /// mangle -F PREROUTING` as the cutover).
    #[arg(long, conflicts_with = "no_tunnel")]
    pub seed_cutover: bool,
    /// With --seed-cutover: give tcpdump `--immediate-mode`.
    #[arg(long, requires = "seed_cutover")]
    pub immediate: bool,
    /// Compare: no tunnel at all, the hosts as before vmtun (the VM is lost after the move).
    #[arg(long)]
    pub no_tunnel: bool,
    /// Seconds to probe before the move (and after it, and after the switch: twice this).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub dwell: f64,
    /// The VM's traffic is IPv6: a dual-stack lab, the VM's /64 (2001:db8:1::/64) moved and
    /// cut over, the client probing 2001:db8:1::2. The tunnel's underlay stays IPv4.
    #[arg(long, conflicts_with_all = ["seed_cutover", "no_tunnel"])]
    pub ipv6: bool,
    /// A real VM: QEMU (TCG) boots the guest of scripts/guest.sh on the old host and
    /// live-migrates it to the new host; the client pings it. Adds QEMU's downtime and the
    /// guest's real pause to the report. Needs QEMU (scripts/setup.sh) and the guest
    /// (scripts/guest.sh; found in $VMTUN_GUEST_DIR or ~/.cache/vmtun-guest).
    #[arg(long, conflicts_with_all = ["seed_cutover", "no_tunnel", "ipv6"])]
    pub real_vm: bool,
    /// With --real-vm: where QEMU's migration stream goes, the new host's underlay address,
    /// its tunnel address (through vmtun's tunnel, the seed's way), its underlay address
    /// with QEMU's own TLS (a throwaway CA made with openssl), or its address in a
    /// wireguard-go tunnel the lab adds between the hosts (the reference WireGuard).
    #[arg(
        long,
        value_enum,
        requires = "real_vm",
        default_value = "underlay",
        value_name = "PATH"
    )]
    pub migrate_via: MigrationPath,
    /// With --real-vm: when the old host stops routing the VM to the paused source's tap,
    /// at the migrated guest's first frame on the new host (vmtun's default) or only when
    /// the source's tap goes (the seed's way); both hosts' `[migration] handover`.
    #[arg(
        long,
        value_enum,
        requires = "real_vm",
        default_value = "first-frame",
        value_name = "WHEN"
    )]
    pub handover: HandoverMode,
    /// With --real-vm: the old host hands the VM over at the source's pause (QEMU's STOP),
    /// as a manager following QEMU's or libvirt's events does with `vmtun handover VIF`:
    /// what the client sends during the pause waits on the new host instead of being lost.
    #[arg(long, requires = "real_vm", conflicts_with_all = ["handover"])]
    pub hand_over_at_pause: bool,
    /// With --real-vm: milliseconds the source QEMU stays, paused, after the guest resumed on
    /// the new host (libvirt ends it after its finish and confirm round trips; 0: at once).
    #[arg(long, requires = "real_vm", default_value_t = 0, value_name = "MS")]
    pub source_linger_ms: u64,
    /// With --real-vm: one of QEMU's migration parameters, NAME=NUMBER, set before the
    /// migration (e.g. downtime-limit=50, in ms); repeatable.
    #[arg(long, requires = "real_vm", value_name = "NAME=NUMBER")]
    pub migrate_parameter: Vec<MigrationParameter>,
    /// With --real-vm: when both QEMUs back the guest's RAM with host memory: all of it at
    /// start, or on first touch (QEMU's default; on this kind of virtual machine the
    /// destination's page zeroing then makes most of the pause, whatever the path).
    #[arg(
        long,
        value_enum,
        requires = "real_vm",
        default_value = "preallocated",
        value_name = "WHEN"
    )]
    pub guest_ram: GuestRam,
    /// With --real-vm: limit the underlay between the hosts to this many Mbit/s each way
    /// (a token bucket on each host's uplink), as a real link between two data centres
    /// is; without it the lab's links carry whatever the CPU can.
    #[arg(
        long,
        requires = "real_vm",
        value_name = "MBIT",
        value_parser = clap::value_parser!(u32).range(10..=100_000)
    )]
    pub underlay_mbit: Option<u32>,
}

/// Runs the demo. Needs root (it creates network namespaces); never touches the root
/// namespace.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "demo: needs root to create network namespaces; run it as root (scripts/demo.sh does)"
        );
    }
    if !(0.1..=60.0).contains(&args.dwell) {
        anyhow::bail!(
            "demo: --dwell {} must be between 0.1 and 60 seconds",
            args.dwell
        );
    }
    for tool in ["ip", "nft", "sysctl", "ping"].into_iter().chain(
        args.seed_cutover
            .then_some(["tcpdump", "iptables"])
            .into_iter()
            .flatten()
            .chain(args.underlay_mbit.map(|_| "tc"))
            .chain(
                args.real_vm
                    .then(|| args.migrate_via.tools())
                    .into_iter()
                    .flatten()
                    .copied(),
            ),
    ) {
        if !lab::process::on_path(tool) {
            anyhow::bail!("demo: `{tool}` is not installed or not on PATH; run scripts/setup.sh");
        }
    }
    // Before anything is built: a missing QEMU or guest is a one-line error.
    let image = if args.real_vm {
        if let Some(why) = lab::qemu::missing_requirement() {
            anyhow::bail!("demo: {why}");
        }
        Some(lab::qemu::GuestImage::cached().map_err(|e| anyhow::anyhow!("demo: {e}"))?)
    } else {
        None
    };
    lab::install_signal_cleanup()?;
    let vmtun = std::env::current_exe()?;
    let options = options(args, vmtun);
    let started = Instant::now();
    let mut progress = |line: &str| {
        eprintln!("[{:7.3}s] {line}", started.elapsed().as_secs_f64());
    };
    // The scenario's report (for the verdict), the text and the JSON.
    let (report, text, json) = match image {
        Some(image) => {
            let real = real_vm::run(&real_vm_options(args, &options, image), &mut progress)?;
            let json = serde_json::to_string_pretty(&real)?;
            (real.run.clone(), render_real_vm(&real), json)
        }
        None => {
            let report = migration::run(&options, &mut progress)?;
            let json = serde_json::to_string_pretty(&report)?;
            let text = render(&report);
            (report, text, json)
        }
    };
    progress("done: every namespace is deleted");
    if args.json {
        crate::output::print(format_args!("{json}\n"))?;
    } else {
        crate::output::print(text)?;
    }
    verdict(&report, options.mode)
}

fn options(args: &DemoArgs, vmtun: PathBuf) -> Options {
    let mut options = Options::new(vmtun);
    options.rate_hz = args.rate;
    options.mode = if args.seed_cutover {
        HostMode::Seed {
            immediate: args.immediate,
        }
    } else if args.no_tunnel {
        HostMode::NoTunnel
    } else {
        HostMode::Vmtun
    };
    if args.ipv6 {
        options.family = migration::Family::Ipv6;
    }
    let dwell = Duration::from_secs_f64(args.dwell);
    options.before_move = dwell;
    options.settle = dwell;
    options.after_move = dwell * 2;
    options.after_switch = dwell * 2;
    options
}

fn real_vm_options(
    args: &DemoArgs,
    options: &Options,
    image: lab::qemu::GuestImage,
) -> RealVmOptions {
    let mut real = RealVmOptions::new(options.vmtun.clone(), image);
    real.path = args.migrate_via;
    real.parameters = args.migrate_parameter.clone();
    real.rate_hz = options.rate_hz;
    real.before_move = options.before_move;
    real.settle = options.settle;
    real.after_move = options.after_move;
    real.after_switch = options.after_switch;
    real.source_linger = Duration::from_millis(args.source_linger_ms);
    real.handover = args.handover;
    real.hand_over_at_pause = args.hand_over_at_pause;
    real.ram = args.guest_ram;
    real.underlay_mbit = args.underlay_mbit;
    real
}

/// Fails the command when vmtun's run did not do what the demo shows it doing, so that a
/// script running the demo notices.
fn verdict(report: &Report, mode: HostMode) -> anyhow::Result<()> {
    if mode != HostMode::Vmtun {
        return Ok(());
    }
    let mut problems = Vec::new();
    match &report.cutover {
        Some(c) if c.phase.as_deref() == Some("done") => {}
        Some(c) => problems.push(format!("cutover phase is {:?}, not done", c.phase)),
        None => problems.push("no cutover ran".into()),
    }
    for name in ["after_move", "after_switch"] {
        if report.phase(name).is_none_or(|p| p.received == 0) {
            problems.push(format!("no replies in phase {name}"));
        }
    }
    if report
        .phase("after_switch")
        .is_none_or(|p| p.replies_via_new == 0)
    {
        problems.push("no reply left natively through the new host after the switch".into());
    }
    if report
        .vmtun_exits
        .iter()
        .any(|e| !e.ends_with("exit status: 0"))
    {
        problems.push(format!("vmtun exits: {:?}", report.vmtun_exits));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "demo: the move did not go as it should: {}",
            problems.join("; ")
        )
    }
}

/// `--real-vm`'s report: the scenario's ([`render`]), then QEMU's figures and the table
/// of the move and the switch.
pub fn render_real_vm(report: &RealVmReport) -> String {
    let mut out = render(&report.run);
    let m = &report.migration;
    let _ = writeln!(
        out,
        "\nQEMU (TCG, guest RAM {}): the guest booted in {:.1} s; migrated {}{} ({}) in {} ms: {:.1} MB at {:.0} Mbit/s, {} while the guest was stopped",
        m.guest_ram.describe(),
        m.boot_ms / 1e3,
        m.path.describe(),
        m.underlay_mbit.map_or(String::new(), |mbit| format!(
            " (underlay limited to {mbit} Mbit/s)"
        )),
        m.uri,
        m.qemu.total_ms,
        m.qemu.transferred_bytes as f64 / 1e6,
        m.qemu.mbps,
        m.qemu
            .downtime_bytes
            .map_or("? kB".to_owned(), |b| format!("{:.1} kB", b as f64 / 1e3)),
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:>13} {:>11} {:>12} {:>6} {:>17} {:>15} {:>10}",
        "phase",
        "QEMU downtime",
        "real pause",
        "longest gap",
        "lost",
        "lost after RESUME",
        "cutover latency",
        "wrong-way"
    );
    let ms =
        |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$} ms"));
    let count = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for row in &report.summary {
        let _ = writeln!(
            out,
            "{:<16} {:>13} {:>11} {:>9.1} ms {:>6} {:>17} {:>15} {:>10}",
            phase_label(&row.phase),
            ms(row.qemu_downtime_ms.map(|v| v as f64), 0),
            ms(row.real_pause_ms, 1),
            row.longest_gap_ms,
            row.lost,
            count(row.lost_after_resume),
            ms(row.cutover_latency_ms, 3),
            count(row.wrong_way_replies)
        );
    }
    let _ = writeln!(
        out,
        "(QEMU downtime: query-migrate's, the source's view; real pause: the source's STOP event to the destination's RESUME; lost after RESUME: probes sent from RESUME + {} ms until the switch that were never answered; wrong-way: replies through the old host to probes sent after the first native packet reached the new host)",
        real_vm::AFTER_RESUME.as_millis()
    );
    out
}

fn phase_label(name: &str) -> &str {
    match name {
        "before_move" => "before move",
        "move" => "move",
        "after_move" => "after move",
        "switch" => "provider switch",
        "after_switch" => "after switch",
        other => other,
    }
}

/// The human-readable report: timeline, per-phase table, cutover and counters.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nvmtun demo ({}): the VM {} moves from the old host to the new host while the client probes it at {} Hz\n",
        report.mode, report.vm, report.rate_hz
    );
    let _ = writeln!(out, "timeline (ms after the first reply)");
    for event in &report.timeline {
        let _ = writeln!(out, "  {:>10.3}  {}", event.at_ms, event.event);
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>7} {:>6} {:>12} {:>8} {:>8}",
        "phase", "start", "sent", "lost", "longest gap", "via old", "via new"
    );
    for p in &report.phases {
        let _ = writeln!(
            out,
            "{:<16} {:>6.2} s {:>7} {:>6} {:>9.1} ms {:>8} {:>8}",
            phase_label(&p.name),
            p.start_ms / 1e3,
            p.sent,
            p.lost,
            p.longest_gap_ms,
            p.replies_via_old,
            p.replies_via_new
        );
    }
    let t = &report.totals;
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>7} {:>6} {:>12} {:>8} {:>8}",
        "total", "", t.sent, t.lost, "", t.replies_via_old, t.replies_via_new
    );
    let _ = writeln!(
        out,
        "(longest gap: the longest run of lost probes, i.e. the downtime the client saw; via old/new: the link the reply reached the provider on)"
    );
    if let Some(c) = &report.cutover {
        let latency = c.latency_ns.map_or("unknown".to_owned(), |ns| {
            format!("{:.3} ms", ns as f64 / 1e6)
        });
        let _ = writeln!(
            out,
            "\ncutover by {}: first native packet -> mark rule gone in {latency}",
            c.by
        );
        if let (Some(detect), Some(removal)) = (c.detection_delay_ns, c.removal_ns) {
            let _ = writeln!(
                out,
                "  of which: packet to watcher {:.3} ms, watcher to rule removed {:.3} ms",
                detect as f64 / 1e6,
                removal as f64 / 1e6
            );
        }
        if !c.native_subnets.is_empty() {
            let _ = writeln!(
                out,
                "  the kernel flipped by itself on the first native packet (native set: {})",
                c.native_subnets.join(", ")
            );
        }
        if let Some(command) = &c.command {
            let _ = writeln!(out, "  command: {command}");
        }
        if let Some(phase) = &c.phase {
            let _ = writeln!(out, "  vmtun status: cutover {phase}");
        }
        if let Some(left) = c.mark_rule_left {
            let _ = writeln!(
                out,
                "  mark rule in the new host's ruleset afterwards: {}",
                if left { "STILL THERE" } else { "gone" }
            );
        }
        let _ = writeln!(
            out,
            "  replies sent the wrong way (through the old host, for probes sent after the switch): {}",
            c.wrong_way_replies
        );
    }
    let c = &report.core_counters;
    let _ = writeln!(
        out,
        "\nprovider counters (packets from {}): from the old host {}, from the new host {}, dropped by anti-spoofing {}",
        report.subnet, c.from_old, c.from_new, c.spoof_dropped
    );
    for exit in &report.vmtun_exits {
        let _ = writeln!(out, "vmtun up {exit}");
    }
    out
}
