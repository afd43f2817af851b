//! The whole move, end to end: build the lab, bring the hosts up, probe the VM from the
//! client, move the VM, switch the provider, see the cutover, tear down; and the
//! [`Report`] of what the client saw per phase.
//!
//! Phases (a probe belongs to the phase it was sent in):
//! - `before_move`: the VM on the old host; from the first answered probe (the warm-up
//!   before it, ARP and handshake, is not counted) to the moment the VM is unplugged.
//! - `move`: from unplugging the VM on the old host (its vif deleted), plugging it into the
//!   new host and `vif-up`, until `settle` after that, or until replies resumed if that
//!   took longer.
//! - `after_move`: the VM on the new host, the provider still routing to the old one.
//! - `switch`: from the provider's switch (anti-spoofing lifted for the new host, route
//!   moved) until `settle` after the switch has completed, or (vmtun) until `vmtun status`
//!   shows the cutover done if that took longer; the cutover happens here.
//! - `after_switch`: until probing stops.
//!
//! The phases after an action begin once the action has completed, not at a fixed time
//! after it started: on a slow machine a phase starts later, and its assertions hold.
//!
//! *Wrong-way replies*: replies that came through the old host's link to probes sent after
//! the provider's switch had completed. Every such probe arrived natively at the new host,
//! so its reply should have left natively; one that left through the tunnel and the old
//! site is what the cutover exists to prevent.

use super::hosts::{self, CutoverState, HostConfig, HostVmtun, KeyPair, SeedCutover};
use super::probe::{Echo, ProbeLog, Prober, unix_ns};
use super::stats::{self, PhaseMark, PhaseStats, Via};
use super::topology::{CoreCounters, MigrationLab, Site};
use super::*;
use crate::lab::{self, LabError, Result, Scratch};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// What runs on the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// `vmtun up` on both hosts: role old, and role new with `cutover = "auto"`.
    Vmtun,
    /// vmtun role old on the old host; on the new host a plain vmtun tunnel plus the seed's
    /// commands (table, rule, iptables mark, rp_filter off) and its cutover line
    /// `tcpdump -c 1 ... -s 1 && iptables -t mangle -F PREROUTING` (`immediate`: with
    /// `--immediate-mode`).
    Seed {
        /// Add `--immediate-mode` to tcpdump.
        immediate: bool,
    },
    /// No tunnel at all, the hosts as they were before vmtun: the VM is lost after the
    /// move until the provider switches.
    NoTunnel,
}

impl HostMode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            HostMode::Vmtun => "vmtun",
            HostMode::Seed { immediate: false } => "seed",
            HostMode::Seed { immediate: true } => "seed-immediate",
            HostMode::NoTunnel => "no-tunnel",
        }
    }
}

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `vmtun` binary the hosts run.
    pub vmtun: PathBuf,
    /// What runs on the hosts.
    pub mode: HostMode,
    /// Probes per second (1..=10000).
    pub rate_hz: u32,
    /// Length of `before_move`.
    pub before_move: Duration,
    /// How long `move` and `switch` last after their action has completed (at least).
    pub settle: Duration,
    /// Length of `after_move`.
    pub after_move: Duration,
    /// Length of `after_switch`.
    pub after_switch: Duration,
    /// `rp_filter` on the hosts before anything runs (1: strict, a hardened host).
    pub host_rp_filter: u8,
    /// The family of the VM's traffic: IPv4, or IPv6 in a dual-stack lab (the tunnel's
    /// underlay stays IPv4 either way). IPv6 runs with vmtun only: the seed is IPv4.
    pub family: Family,
}

impl Options {
    /// The defaults: vmtun on both hosts, 1 kHz, 1 s before the move, 1 s settle, 2 s
    /// after the move and after the switch.
    pub fn new(vmtun: PathBuf) -> Self {
        Self {
            vmtun,
            mode: HostMode::Vmtun,
            rate_hz: 1_000,
            before_move: Duration::from_secs(1),
            settle: Duration::from_secs(1),
            after_move: Duration::from_secs(2),
            after_switch: Duration::from_secs(2),
            host_rp_filter: 1,
            family: Family::Ipv4,
        }
    }
}

/// A moment of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// Milliseconds after the first counted probe (negative: during set-up).
    pub at_ms: f64,
    /// Unix time in nanoseconds.
    pub unix_ns: u64,
    /// What happened.
    pub event: String,
}

/// The cutover as measured.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    /// Who removed the mark rule: `vmtun` or `seed`.
    pub by: String,
    /// The seed's command line, if it was the seed.
    pub command: Option<String>,
    /// vmtun's `migration.cutover.phase` at the end (vmtun only).
    pub phase: Option<String>,
    /// The first native packet at the new host (vmtun: its capture time; seed: the send
    /// time of the first probe after the switch, which is that packet).
    pub packet_time_unix_ns: Option<u64>,
    /// When the mark rule was gone (vmtun: its record; seed: `iptables -F` returned).
    pub rule_gone_time_unix_ns: Option<u64>,
    /// The difference, in ns.
    pub latency_ns: Option<u64>,
    /// vmtun only: of the latency, packet received to packet recognised by the watcher.
    pub detection_delay_ns: Option<u64>,
    /// vmtun only: of the latency, recognised to rule removed (the netlink transaction).
    pub removal_ns: Option<u64>,
    /// vmtun only: `migration.native_subnets` at the end (the kernel-side flip).
    pub native_subnets: Vec<String>,
    /// Replies that left through the old host after the switch (see the module docs).
    pub wrong_way_replies: u64,
    /// Whether vmtun's mark rule was still in the new host's ruleset after the cutover
    /// (vmtun only; must be false).
    pub mark_rule_left: Option<bool>,
}

/// Sums over the counted phases.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Probes sent.
    pub sent: u64,
    /// Answered.
    pub received: u64,
    /// Never answered.
    pub lost: u64,
    /// Replies through the old host's link.
    pub replies_via_old: u64,
    /// Replies through the new host's link.
    pub replies_via_new: u64,
    /// Datagrams that were not a reply to an outstanding probe.
    pub stray: u64,
}

/// Everything the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`HostMode::name`].
    pub mode: String,
    /// Probes per second.
    pub rate_hz: u32,
    /// The VM's address the client probed (IPv4, or IPv6 with [`Options::family`]).
    pub vm: IpAddr,
    /// The VM subnet the provider switched and the counters count.
    pub subnet: String,
    /// Per phase, in order.
    pub phases: Vec<PhaseStats>,
    /// The cutover, when one ran.
    pub cutover: Option<CutoverReport>,
    /// Sums over the phases.
    pub totals: Totals,
    /// The core's own counters of packets from the VM subnet per link, whole run.
    pub core_counters: CoreCounters,
    /// What happened when (outages of 2 or more lost probes included).
    pub timeline: Vec<TimelineEvent>,
    /// How each `vmtun up` ended (`exit status: 0` is a clean undo).
    pub vmtun_exits: Vec<String>,
}

impl Report {
    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseStats> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// Phase names, in order.
pub const PHASES: [&str; 5] = [
    "before_move",
    "move",
    "after_move",
    "switch",
    "after_switch",
];
/// How long the client waits for late replies after the last probe.
pub(super) const DRAIN: Duration = Duration::from_millis(500);
/// How long replies may take to resume after the move before the run goes on without (a
/// ceiling for slow machines: reached only when something is broken).
pub(super) const RESUME_WAIT: Duration = Duration::from_secs(30);
/// How long the cutover may take to show before the run goes on without (a ceiling too).
const CUTOVER_WAIT: Duration = Duration::from_secs(30);
/// How long the handshake and the first reply may take before the run fails (a ceiling).
pub(super) const SETUP_WAIT: Duration = Duration::from_secs(30);

/// The run's timeline as it happens: (Unix ns, what).
pub(super) struct Clock {
    events: Vec<(u64, String)>,
}

impl Clock {
    pub(super) fn new() -> Self {
        Self { events: Vec::new() }
    }

    /// Records `what` at `at`; returns `at`.
    pub(super) fn note(&mut self, at: u64, what: impl Into<String>) -> u64 {
        self.events.push((at, what.into()));
        at
    }

    /// Records `what` now; returns the time.
    pub(super) fn now(&mut self, what: impl Into<String>) -> u64 {
        self.note(unix_ns(), what)
    }
}

/// Sleeps until the Unix time `unix` (ns), if it is still ahead.
pub(super) fn sleep_until(unix: u64) {
    let now = unix_ns();
    if unix > now {
        std::thread::sleep(Duration::from_nanos(unix - now));
    }
}

/// `d` in ns, saturating.
pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Refuses a probe rate the client cannot send.
pub(super) fn check_rate(rate_hz: u32) -> Result<()> {
    if (1..=probe::MAX_RATE_HZ).contains(&rate_hz) {
        Ok(())
    } else {
        Err(LabError::Refused(format!(
            "probe rate {rate_hz} Hz: use 1..={}",
            probe::MAX_RATE_HZ
        )))
    }
}

/// Starts `vmtun up` on the new host, then on the old host (as an operator would), with
/// the scenario's configs for `family` as `customize(old, new)` leaves them, and waits for
/// the tunnel's handshake. A new host's config without `[migration]` is a plain tunnel
/// with the seed's commands by hand. The hosts, new first.
pub(super) fn start_hosts<'a>(
    lab: &'a MigrationLab,
    vmtun: &std::path::Path,
    scratch: &Scratch,
    family: Family,
    customize: impl FnOnce(&mut HostConfig, &mut HostConfig),
    progress: &mut dyn FnMut(&str),
    clock: &mut Clock,
) -> Result<Vec<HostVmtun<'a>>> {
    let old_keys = KeyPair::generate(vmtun)?;
    let new_keys = KeyPair::generate(vmtun)?;
    let mut new_config = HostConfig::new_host(&new_keys, &old_keys, "auto").carrying(&[family]);
    let mut old_config = HostConfig::old(&old_keys, &new_keys).carrying(&[family]);
    customize(&mut old_config, &mut new_config);
    progress(&format!(
        "vmtun up on the new host ({}, {})",
        new_config.name,
        if new_config.migration.is_some() {
            "role new, cutover auto"
        } else {
            "plain tunnel; the seed's table, rule and iptables mark by hand"
        }
    ));
    let new = HostVmtun::start(&lab.new, vmtun, scratch, new_config)?;
    if new.config.migration.is_none() {
        hosts::seed_new_host_setup(&lab.new, new.ifname())?;
    }
    progress(&format!(
        "vmtun up on the old host ({}, role old)",
        old_config.name
    ));
    let old = HostVmtun::start(&lab.old, vmtun, scratch, old_config)?;
    progress("waiting for the handshake (ping through the tunnel)");
    lab::wait_until(SETUP_WAIT, "a ping through the tunnel", || {
        lab.old.answers_ping(TUNNEL_NEW)
    })?;
    clock.now("handshake done (ping through the tunnel answered)");
    Ok(vec![new, old])
}

/// Waits (at most [`CUTOVER_WAIT`]) for vmtun on the new host to show its cutover done;
/// what it recorded, and whether its mark rule is still in the ruleset. The wrong-way
/// count is [`analyse`]'s.
pub(super) fn vmtun_cutover(
    lab: &MigrationLab,
    new: &HostVmtun<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<CutoverReport> {
    let state = lab::wait_for(CUTOVER_WAIT, "vmtun's cutover", || {
        new.status()
            .ok()
            .map(|s| CutoverState::from_status(&s))
            .filter(CutoverState::is_done)
    });
    let state = match state {
        Ok(state) => {
            progress("cutover seen: vmtun removed its mark rule");
            state
        }
        Err(_) => {
            progress(&format!("cutover NOT seen within {CUTOVER_WAIT:?}"));
            new.status()
                .map(|s| CutoverState::from_status(&s))
                .unwrap_or_default()
        }
    };
    Ok(CutoverReport {
        by: "vmtun".into(),
        command: None,
        phase: state.phase.clone(),
        packet_time_unix_ns: state.packet_time_unix_ns,
        rule_gone_time_unix_ns: state.rule_gone_time_unix_ns,
        latency_ns: state.latency_ns,
        detection_delay_ns: state.detection_delay_ns,
        removal_ns: state.removal_ns,
        native_subnets: state.native_subnets.clone(),
        wrong_way_replies: 0,
        mark_rule_left: Some(hosts::mark_rule_present(&lab.new)?),
    })
}

/// Stops every `vmtun up` (SIGTERM: it undoes what it did); how each ended.
pub(super) fn stop_hosts(hosts: &mut [HostVmtun<'_>]) -> Vec<String> {
    hosts
        .iter_mut()
        .map(|host| {
            let how = match host.stop() {
                Ok(status) => status.to_string(),
                Err(e) => format!("did not exit: {e}"),
            };
            format!("{}: {how}", host.ifname())
        })
        .collect()
}

/// When the run's moments were, for [`analyse`].
pub(super) struct Moments {
    /// Probes started (the warm-up's start).
    pub warmup: u64,
    /// The start of each of [`PHASES`], in order; the first is the origin of the report.
    pub phases: [u64; 5],
    /// From when a reply counts as "the first reply after the move".
    pub moved: u64,
    /// When the provider's switch had completed (the wrong-way count starts there).
    pub switch_done: u64,
}

/// What a run's report is made of, from the client's log: per phase figures, totals, the
/// timeline (the clock's events, the cutover's moments, outages, first replies after the
/// move and through the new host), and the cutover's wrong-way count (and for the seed its
/// latency).
pub(super) fn analyse(
    log: &ProbeLog,
    end_ns: u64,
    rate_hz: u32,
    at: &Moments,
    cutover: Option<&mut CutoverReport>,
    mut clock: Clock,
) -> (Vec<PhaseStats>, Totals, Vec<TimelineEvent>) {
    let t0 = at.phases[0];
    let mut phase_marks = vec![PhaseMark {
        name: "warmup".into(),
        start_ns: at.warmup,
    }];
    phase_marks.extend(PHASES.iter().zip(at.phases).map(|(name, start)| PhaseMark {
        name: (*name).into(),
        start_ns: start,
    }));
    let interval = nanos(Duration::from_secs(1)) / u64::from(rate_hz);
    let mut phases = stats::phase_stats(&log.sent_ns, &log.replies, &phase_marks, end_ns, interval);
    phases.remove(0);
    // The warm-up's probes are not counted; its start time is not the origin either.
    for phase in &mut phases {
        phase.start_ms = (phase_start(&phase_marks, &phase.name) - t0) as f64 / 1e6;
    }

    if let Some(report) = cutover {
        report.wrong_way_replies =
            stats::replies_via_old_since(&log.sent_ns, &log.replies, at.switch_done);
        if report.by == "seed" {
            report.packet_time_unix_ns =
                stats::first_probe_since(&log.sent_ns, at.switch_done).map(|(_, t)| t);
            report.latency_ns = report
                .packet_time_unix_ns
                .zip(report.rule_gone_time_unix_ns)
                .map(|(packet, gone)| gone.saturating_sub(packet));
        }
        if let Some(t) = report.packet_time_unix_ns {
            clock.note(t, "first native packet for the subnet at the new host");
        }
        if let Some(t) = report.rule_gone_time_unix_ns {
            clock.note(t, "mark rule gone: replies leave natively");
        }
    }
    let first_after = |from: u64, via: Option<Via>| {
        let first = log.sent_ns.partition_point(|&t| t < from);
        log.replies[first..]
            .iter()
            .flatten()
            .filter(|r| via.is_none_or(|v| r.via == v))
            .map(|r| r.received_ns)
            .min()
    };
    for run in stats::loss_runs(&log.sent_ns, &log.replies, 2, interval) {
        if run.start_ns < t0 {
            continue;
        }
        clock.note(
            run.start_ns,
            format!(
                "outage begins: {} probes lost, {:.1} ms until the next reply",
                run.lost,
                (run.end_ns - run.start_ns) as f64 / 1e6
            ),
        );
    }
    if let Some(t) = first_after(at.moved, None) {
        clock.note(t, "first reply after the move");
    }
    if let Some(t) = first_after(0, Some(Via::New)) {
        clock.note(t, "first reply through the new host's link");
    }

    let totals = phases.iter().fold(
        Totals {
            stray: log.stray,
            ..Totals::default()
        },
        |mut acc, p| {
            acc.sent += p.sent;
            acc.received += p.received;
            acc.lost += p.lost;
            acc.replies_via_old += p.replies_via_old;
            acc.replies_via_new += p.replies_via_new;
            acc
        },
    );
    let mut timeline: Vec<TimelineEvent> = clock
        .events
        .into_iter()
        .map(|(unix_ns, event)| TimelineEvent {
            at_ms: (unix_ns as f64 - t0 as f64) / 1e6,
            unix_ns,
            event,
        })
        .collect();
    timeline.sort_by_key(|e| e.unix_ns);
    (phases, totals, timeline)
}

/// Runs the scenario; `progress` gets one line per step as it happens. Every namespace is
/// gone when this returns, also on error.
pub fn run(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    check_rate(options.rate_hz)?;
    let family = options.family;
    if family == Family::Ipv6 && options.mode != HostMode::Vmtun {
        return Err(LabError::Refused(format!(
            "{} over IPv6: the seed's commands and the no-tunnel baseline are IPv4 only",
            options.mode.name()
        )));
    }
    let scratch = Scratch::new("demo")?;
    let lab = if family == Family::Ipv6 {
        progress("building the lab, dual-stack: client, core (provider), old host, new host, vm");
        MigrationLab::build_dual_stack(options.host_rp_filter)?
    } else {
        progress("building the lab: client, core (provider), old host, new host, vm");
        MigrationLab::build(options.host_rp_filter)?
    };
    let echo = Echo::start(&lab.vm, ECHO_PORT)?;
    let mut clock = Clock::new();
    let mut hosts: Vec<HostVmtun<'_>> = Vec::new();

    if options.mode != HostMode::NoTunnel {
        let seed = matches!(options.mode, HostMode::Seed { .. });
        hosts = start_hosts(
            &lab,
            &options.vmtun,
            &scratch,
            family,
            |_, new| {
                if seed {
                    new.migration = None;
                }
            },
            progress,
            &mut clock,
        )?;
    }
    // The new host, when vmtun runs there with its [migration].
    let vmtun_new = hosts.first().filter(|new| new.config.migration.is_some());

    let vm: IpAddr = vm_addr(family).parse().expect("constant");
    let target = SocketAddr::new(vm, ECHO_PORT);
    progress(&format!(
        "probing {target} from the client at {} Hz",
        options.rate_hz
    ));
    let prober = Prober::start(&lab.client, target, options.rate_hz)?;
    let warmup = clock.now("probes started");
    lab::wait_until(SETUP_WAIT, "the first probe reply", || {
        prober.answered_since(0)
    })?;
    let t0 = clock.now("first reply: the VM answers on the old host");

    sleep_until(t0 + nanos(options.before_move));
    progress("moving the VM: unplug vif0 on the old host, plug it into the new host");
    let move_start = clock.now("VM leaves the old host (vif0 deleted)");
    lab.move_vm(Site::Old, Site::New)?;
    let unplugged = clock.now("VM plugged into the new host (vif0 up)");
    match vmtun_new {
        Some(new) => {
            new.vif_up(VIF)?;
            clock.now(match family {
                Family::Ipv4 => "vmtun vif-up vif0 done (/32 route, proxy_arp)",
                Family::Ipv6 => "vmtun vif-up vif0 done (/128 route, fe80::1 on vif0)",
            });
        }
        None => {
            lab.seed_vif_up(Site::New)?;
            clock.now("vif0: /32 route and proxy_arp by hand (the seed's script)");
        }
    }
    let move_done = unix_ns();
    let mut after_move_start = move_done + nanos(options.settle);
    if options.mode != HostMode::NoTunnel {
        let resumed = lab::wait_until(RESUME_WAIT, "replies after the move", || {
            prober.answered_since(move_done)
        });
        match resumed {
            Ok(()) => progress("replies resumed: through the tunnel, out of the old host"),
            Err(_) => progress(&format!(
                "replies did not resume within {RESUME_WAIT:?} after the move"
            )),
        }
        after_move_start = after_move_start.max(unix_ns());
    }
    sleep_until(after_move_start);

    let seed = match options.mode {
        HostMode::Seed { immediate } => {
            let seed = SeedCutover::start(&lab.new, scratch.path(), immediate)?;
            progress(&format!(
                "the seed's cutover line is armed: {}",
                seed.command
            ));
            clock.now(format!("seed cutover armed: {}", seed.command));
            Some(seed)
        }
        _ => None,
    };
    sleep_until(after_move_start + nanos(options.after_move));

    progress("switching the provider: the VM subnet now routes to the new host");
    let switch_start = clock.now("provider switch begins");
    lab.switch_provider()?;
    let switch_done = clock.now("provider switched (anti-spoofing lifted, route to new host)");

    // The switch phase lasts `settle` after the switch has completed, and at least until the
    // cutover shows (vmtun) or the seed's line returned.
    let mut after_switch_start = switch_done + nanos(options.settle);
    let mut cutover = None;
    match (vmtun_new, seed) {
        (Some(new), _) => {
            cutover = Some(vmtun_cutover(&lab, new, progress)?);
            after_switch_start = after_switch_start.max(unix_ns());
        }
        (_, Some(seed)) => {
            let command = seed.command.clone();
            let gone = seed.wait(CUTOVER_WAIT);
            match &gone {
                Ok(_) => progress("cutover seen: the seed's line flushed the mangle table"),
                Err(e) => progress(&format!("the seed's line did not fire: {e}")),
            }
            after_switch_start = after_switch_start.max(unix_ns());
            cutover = Some(CutoverReport {
                by: "seed".into(),
                command: Some(command),
                phase: None,
                packet_time_unix_ns: None,
                rule_gone_time_unix_ns: gone.ok(),
                latency_ns: None,
                detection_delay_ns: None,
                removal_ns: None,
                native_subnets: Vec::new(),
                wrong_way_replies: 0,
                mark_rule_left: None,
            });
        }
        _ => {}
    }

    sleep_until(after_switch_start + nanos(options.after_switch));
    progress("stopping the probes");
    let (log, end_ns) = prober.finish(DRAIN)?;
    clock.note(end_ns, "probes stopped");
    let core_counters = lab.core_counters()?;

    progress("tearing down: vmtun down on both hosts, deleting the namespaces");
    let vmtun_exits = stop_hosts(&mut hosts);
    drop(hosts);
    echo.stop()?;
    drop(lab);

    let moments = Moments {
        warmup,
        phases: [
            t0,
            move_start,
            after_move_start,
            switch_start,
            after_switch_start,
        ],
        moved: unplugged,
        switch_done,
    };
    let (phases, totals, timeline) = analyse(
        &log,
        end_ns,
        options.rate_hz,
        &moments,
        cutover.as_mut(),
        clock,
    );
    Ok(Report {
        mode: options.mode.name().into(),
        rate_hz: options.rate_hz,
        vm,
        subnet: subnet(family).into(),
        phases,
        cutover,
        totals,
        core_counters,
        timeline,
        vmtun_exits,
    })
}

fn phase_start(marks: &[PhaseMark], name: &str) -> u64 {
    marks
        .iter()
        .find(|m| m.name == name)
        .map_or(0, |m| m.start_ns)
}
