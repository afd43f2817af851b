//! The move with a real VM: QEMU (TCG) boots the guest of `scripts/guest.sh` on the old
//! host's tap [`VIF`] (a libvirt-like vif: the guest's MAC with `fe` first, the seed's /32
//! and proxy ARP), vmtun runs on both hosts, a second QEMU waits on the new host with
//! `-incoming`, and the client pings the guest at a fixed rate (ICMP: the guest's kernel
//! answers) while QEMU live-migrates it over QMP, then while the provider switches and the
//! new host cuts over. The lab and the analysis are the namespace scenario's
//! ([`super::scenario`]), with QEMU's taps in place of the VM namespace's veth.
//!
//! Beside the scenario's per-phase figures, [`RealVmReport`] holds what only a real
//! migration has: QEMU's own downtime (`query-migrate`), the guest's real pause (the
//! source's `STOP` event to the destination's `RESUME`, both QEMU's wall clock, the lab's
//! one clock), and the probes lost once the guest ran again on the new host
//! ([`AFTER_RESUME`] after `RESUME`).
//!
//! The source QEMU ends (SIGTERM, as libvirt destroys it) as soon as the destination
//! reports `RESUME`: until its tap goes, the old host routes the VM's /32 to it.

use super::handover_trail;
use super::hosts::{HostConfig, HostVmtun};
use super::probe::{Prober, unix_ns};
use super::scenario::{self, Clock, Moments, Report};
use super::stats::{self, PhaseStats};
use super::topology::{CoreCounters, MigrationLab, Site};
use super::*;
use crate::config::HandoverMode;
use crate::control::Request;
use crate::keys::PrivateKey;
use crate::lab::qemu::{
    GuestImage, GuestRam, MIGRATE_WAIT, MIGRATION_PORT, MigrationParameter, MigrationStats, Qemu,
    VmSpec,
};
use crate::lab::qemu_tls::{self, MigrationTls};
use crate::lab::wggo::{WgGo, WgPeer};
use crate::lab::{self, Result, Scratch};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// From how long after the guest's `RESUME` on the new host a lost probe counts as lost
/// while the guest ran there (issue 12: "zero probes lost from RESUME + 2 ms on"): the
/// guest needs a moment to take its queued packets.
pub const AFTER_RESUME: Duration = Duration::from_millis(2);

/// Where QEMU's migration stream goes: the new host's address on the underlay (in the
/// clear, or encrypted by QEMU's TLS), its tunnel address, so that the stream crosses
/// vmtun's tunnel (the seed's way: encrypted without QEMU's TLS), or, for comparison, its
/// address in a stock WireGuard tunnel. Also `vmtun demo --migrate-via`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPath {
    /// The new host's underlay address.
    Underlay,
    /// The new host's tunnel address: the stream crosses vmtun's tunnel.
    Tunnel,
    /// The new host's underlay address with QEMU's TLS (`tls-creds`, a throwaway CA): what
    /// encryption costs when QEMU does it.
    UnderlayTls,
    /// The new host's address in a second tunnel between the hosts, a stock WireGuard
    /// (`wireguard-go`): what the seed's way costs through the reference implementation.
    WireguardGo,
}

/// The old host's address in the wireguard-go tunnel of [`MigrationPath::WireguardGo`].
const WG_OLD: &str = "100.64.1.1";
/// The new host's address in it.
const WG_NEW: &str = "100.64.1.2";
/// Its prefix length.
const WG_PREFIX: u8 = 24;
/// Its UDP port on both hosts (vmtun's is [`TUNNEL_PORT`]).
const WG_PORT: u16 = 51830;

impl MigrationPath {
    /// The address the destination QEMU listens on and the source sends to.
    pub fn address(self) -> &'static str {
        match self {
            MigrationPath::Underlay | MigrationPath::UnderlayTls => NEW,
            MigrationPath::Tunnel => TUNNEL_NEW,
            MigrationPath::WireguardGo => WG_NEW,
        }
    }

    /// The tools this path needs on the machine beyond the lab's own, for a one-line error
    /// before anything is built.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            MigrationPath::Underlay | MigrationPath::Tunnel => &[],
            MigrationPath::UnderlayTls => &["openssl"],
            MigrationPath::WireguardGo => &["wireguard-go", "wg"],
        }
    }

    /// How reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            MigrationPath::Underlay => "over the underlay",
            MigrationPath::Tunnel => "through the tunnel",
            MigrationPath::UnderlayTls => "over the underlay with QEMU's TLS",
            MigrationPath::WireguardGo => "through a wireguard-go tunnel",
        }
    }
}

/// How to run the real-VM scenario.
#[derive(Debug, Clone)]
pub struct RealVmOptions {
    /// The `vmtun` binary the hosts run.
    pub vmtun: PathBuf,
    /// The guest's kernel and initramfs.
    pub image: GuestImage,
    /// Where the migration stream goes.
    pub path: MigrationPath,
    /// QEMU's migration parameters set before the migration (empty: QEMU's defaults).
    pub parameters: Vec<MigrationParameter>,
    /// Pings per second (1..=10000).
    pub rate_hz: u32,
    /// Probing before the migration begins.
    pub before_move: Duration,
    /// How long `move` and `switch` last after their action has completed (at least).
    pub settle: Duration,
    /// Length of `after_move`.
    pub after_move: Duration,
    /// Length of `after_switch`.
    pub after_switch: Duration,
    /// Both hosts' `[migration] handover`: when the old host stops routing the VM to the
    /// paused source's tap.
    pub handover: HandoverMode,
    /// Whether the lab hands the VM over at the source's `STOP` (`vmtun handover vif0` on
    /// the old host, as a manager following QEMU's or libvirt's events does; issue 12,
    /// item 3), and back should the migration fail. Needs `handover` first-frame.
    pub hand_over_at_pause: bool,
    /// How long the source QEMU stays, paused, after the guest resumed on the new host,
    /// before it is ended and its tap goes: libvirt ends it only after its finish and
    /// confirm round trips; zero ends it at once, as a bare QEMU manager may.
    pub source_linger: Duration,
    /// When both QEMUs back the guest's RAM with host memory.
    pub ram: GuestRam,
    /// The underlay's rate in Mbit/s each way (a token bucket on each host's uplink);
    /// `None`: the lab's veths, as fast as the CPU.
    pub underlay_mbit: Option<u32>,
}

impl RealVmOptions {
    /// The defaults: migration over the underlay, 1 kHz, 1 s before the move, 1 s settle,
    /// 2 s after the move and after the switch, the hosts' configs as the scenario writes
    /// them.
    pub fn new(vmtun: PathBuf, image: GuestImage) -> Self {
        Self {
            vmtun,
            image,
            path: MigrationPath::Underlay,
            parameters: Vec::new(),
            rate_hz: 1_000,
            before_move: Duration::from_secs(1),
            settle: Duration::from_secs(1),
            after_move: Duration::from_secs(2),
            after_switch: Duration::from_secs(2),
            handover: HandoverMode::FirstFrame,
            hand_over_at_pause: false,
            source_linger: Duration::ZERO,
            ram: GuestRam::Preallocated,
            underlay_mbit: None,
        }
    }
}

/// What `handover` changes in the hosts' configs `(old, new)`; the lab writes vmtun's
/// default (first-frame) unless told otherwise.
fn handover_configs(handover: HandoverMode) -> fn(&mut HostConfig, &mut HostConfig) {
    match handover {
        HandoverMode::FirstFrame => |_, _| {},
        HandoverMode::VifGone => |old, new| {
            *old = old.clone().with_handover("vif-gone");
            *new = new.clone().with_handover("vif-gone");
        },
    }
}

/// QEMU's side of the move.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationFigures {
    /// Where the stream went.
    pub path: MigrationPath,
    /// When the old host let go of the VM (`[migration] handover`).
    pub handover: HandoverMode,
    /// Whether the lab handed the VM over at the source's `STOP`.
    pub hand_over_at_pause: bool,
    /// When the old host had taken the VM's routes off the source's tap after its `STOP`
    /// (its `handover` request answered; Unix ns).
    pub handed_over_unix_ns: Option<u64>,
    /// How long the source QEMU stayed after the guest resumed on the new host (ms).
    pub source_linger_ms: u64,
    /// When both QEMUs backed the guest's RAM with host memory.
    pub guest_ram: GuestRam,
    /// The underlay's rate limit in Mbit/s each way, if any.
    pub underlay_mbit: Option<u32>,
    /// The destination's `-incoming` URI.
    pub uri: String,
    /// The migration parameters set (empty: QEMU's defaults).
    pub parameters: Vec<MigrationParameter>,
    /// How long the guest took to boot on the old host (ms).
    pub boot_ms: f64,
    /// QEMU's own figures (`query-migrate`): times, bytes, the bytes of the pause.
    #[serde(flatten)]
    pub qemu: MigrationStats,
    /// The source's `STOP` event (Unix ns).
    pub stop_unix_ns: Option<u64>,
    /// The source's `MIGRATION` `completed` event (Unix ns): it has written the whole
    /// stream (into its socket: the tail may still be on its way). The destination's comes
    /// only after its `RESUME`, so it bounds nothing of the pause.
    pub source_completed_unix_ns: Option<u64>,
    /// The destination's `RESUME` event (Unix ns).
    pub resume_unix_ns: u64,
    /// `RESUME` − `STOP` (ms): how long the guest really did not run.
    pub real_pause_ms: Option<f64>,
    /// What the network lost meanwhile.
    pub losses: StreamLosses,
}

/// What the hosts' network stacks lost while QEMU's stream crossed (the changes of their
/// `/proc/net/snmp` counters from the `migrate` command until the source QEMU has exited,
/// read outside the pause so that reading them delays nothing): through
/// a tunnel, a datagram dropped on its full socket buffer is a TCP segment of the
/// stream lost, which the source must retransmit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StreamLosses {
    /// UDP datagrams the old host dropped on a full socket buffer.
    pub udp_rcvbuf_errors_old: u64,
    /// UDP datagrams the new host dropped on a full socket buffer.
    pub udp_rcvbuf_errors_new: u64,
    /// TCP segments the old host retransmitted (the migration stream is its only TCP).
    pub tcp_retransmits_old: u64,
}

/// The counters [`StreamLosses`] is the change of: `(old Udp RcvbufErrors, new Udp
/// RcvbufErrors, old Tcp RetransSegs)`.
fn loss_counters(lab: &MigrationLab) -> Result<[u64; 3]> {
    Ok([
        lab.old.snmp_counter("Udp", "RcvbufErrors")?,
        lab.new.snmp_counter("Udp", "RcvbufErrors")?,
        lab.old.snmp_counter("Tcp", "RetransSegs")?,
    ])
}

impl StreamLosses {
    /// The losses between two readings of [`loss_counters`].
    fn between(before: [u64; 3], after: [u64; 3]) -> Self {
        let d = |i: usize| after[i].saturating_sub(before[i]);
        Self {
            udp_rcvbuf_errors_old: d(0),
            udp_rcvbuf_errors_new: d(1),
            tcp_retransmits_old: d(2),
        }
    }
}

/// One row of the per-phase summary: the move (QEMU's columns) or the provider's switch
/// (the cutover's columns).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseSummary {
    /// `move` or `switch`.
    pub phase: String,
    /// QEMU's downtime (move only).
    pub qemu_downtime_ms: Option<u64>,
    /// The guest's real pause (move only).
    pub real_pause_ms: Option<f64>,
    /// The client's longest gap in the phase.
    pub longest_gap_ms: f64,
    /// Probes lost in the phase.
    pub lost: u64,
    /// Probes sent from `RESUME` + [`AFTER_RESUME`] until the switch that were lost (move
    /// only).
    pub lost_after_resume: Option<u64>,
    /// First native packet → mark rule gone (switch only).
    pub cutover_latency_ms: Option<f64>,
    /// Replies through the old host to probes sent after the first native packet reached
    /// the new host (switch only): each such probe arrived natively, so its reply should
    /// have left natively.
    pub wrong_way_replies: Option<u64>,
}

/// Everything the real-VM run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RealVmReport {
    /// What the namespace scenario reports too: phases, cutover, totals, timeline, exits.
    #[serde(flatten)]
    pub run: Report,
    /// QEMU's side of the move.
    pub migration: MigrationFigures,
    /// The move and the switch, in the issue's columns.
    pub summary: Vec<PhaseSummary>,
    /// The core's counters just before the provider's switch.
    pub core_before_switch: CoreCounters,
}

/// The per-phase summary from the scenario's report and QEMU's figures; `lost_after_resume`
/// is the move's count of probes lost once the guest ran on the new host, `wrong_way` the
/// switch's count of replies that left the wrong way after the first native packet.
pub fn summarise(
    run: &Report,
    migration: &MigrationFigures,
    lost_after_resume: u64,
    wrong_way: Option<u64>,
) -> Vec<PhaseSummary> {
    let figures = |name: &str| {
        run.phase(name)
            .map_or((0.0, 0), |p: &PhaseStats| (p.longest_gap_ms, p.lost))
    };
    let (move_gap, move_lost) = figures("move");
    let (switch_gap, switch_lost) = figures("switch");
    let cutover = run.cutover.as_ref();
    vec![
        PhaseSummary {
            phase: "move".into(),
            qemu_downtime_ms: Some(migration.qemu.downtime_ms),
            real_pause_ms: migration.real_pause_ms,
            longest_gap_ms: move_gap,
            lost: move_lost,
            lost_after_resume: Some(lost_after_resume),
            cutover_latency_ms: None,
            wrong_way_replies: None,
        },
        PhaseSummary {
            phase: "switch".into(),
            qemu_downtime_ms: None,
            real_pause_ms: None,
            longest_gap_ms: switch_gap,
            lost: switch_lost,
            lost_after_resume: None,
            cutover_latency_ms: cutover.and_then(|c| c.latency_ns).map(|ns| ns as f64 / 1e6),
            wrong_way_replies: wrong_way,
        },
    ]
}

/// The QEMU of `side` (`old`, `new`) for the lab's VM: its tap [`VIF`], MAC, address and
/// gateway, QMP socket and console in `scratch`, its RAM backed as `ram` says, its
/// migration stream encrypted with `tls` if given.
pub fn spec(
    image: &GuestImage,
    scratch: &Scratch,
    side: &str,
    ram: GuestRam,
    tls: Option<MigrationTls>,
) -> VmSpec {
    VmSpec {
        image: image.clone(),
        tap: VIF.into(),
        mac: VM_MAC.into(),
        addr: VM_ADDR.into(),
        gateway: VM_GATEWAY.into(),
        qmp: scratch.path().join(format!("{side}.qmp")),
        console: scratch.path().join(format!("{side}.console")),
        ram,
        tls,
    }
}

/// A wireguard-go tunnel between the lab's hosts beside vmtun's ([`WG_OLD`] ↔
/// [`WG_NEW`], fresh keys), up once a ping crosses it: the path of
/// [`MigrationPath::WireguardGo`].
fn wireguard_go_pair<'a>(lab: &'a MigrationLab, scratch: &Scratch) -> Result<[WgGo<'a>; 2]> {
    let (old_key, new_key) = (PrivateKey::generate(), PrivateKey::generate());
    let peer = |key: &PrivateKey, endpoint: Option<String>, addr: &str| WgPeer {
        public_key: key.public_key().to_base64(),
        endpoint,
        allowed_ips: vec![format!("{addr}/32")],
        ..WgPeer::default()
    };
    let new = WgGo::start(
        &lab.new,
        scratch,
        &new_key.to_base64(),
        WG_PORT,
        &format!("{WG_NEW}/{WG_PREFIX}"),
        &peer(&old_key, None, WG_OLD),
    )?;
    let old = WgGo::start(
        &lab.old,
        scratch,
        &old_key.to_base64(),
        WG_PORT,
        &format!("{WG_OLD}/{WG_PREFIX}"),
        &peer(&new_key, Some(format!("{NEW}:{WG_PORT}")), WG_NEW),
    )?;
    lab::wait_until(scenario::SETUP_WAIT, "a ping through wireguard-go", || {
        lab.old.answers_ping(WG_NEW)
    })?;
    Ok([old, new])
}

/// Waits for the source's `STOP` and hands the VM over on the `old` host at once (the
/// `handover` request on its control socket); when that was done (Unix ns), if the guest
/// stopped.
fn hand_over_at_stop(
    source: &mut Qemu,
    old: &HostVmtun<'_>,
    clock: &mut Clock,
) -> Result<Option<u64>> {
    if source.wait_stopped()?.is_none() {
        return Ok(None);
    }
    old.request(&Request::Handover(VIF.into()))?;
    Ok(Some(clock.now(
        "the old host hands the VM over at the source's STOP (vmtun handover vif0)",
    )))
}

/// Runs the real-VM scenario; `progress` gets one line per step as it happens. Every
/// namespace and QEMU is gone when this returns, also on error.
pub fn run(options: &RealVmOptions, progress: &mut dyn FnMut(&str)) -> Result<RealVmReport> {
    scenario::check_rate(options.rate_hz)?;
    let scratch = Scratch::new("realvm")?;
    progress("building the lab: client, core (provider), old host, new host");
    let lab = MigrationLab::build(1)?;
    if let Some(mbit) = options.underlay_mbit {
        progress(&format!("the underlay limited to {mbit} Mbit/s each way"));
        lab.limit_underlay(mbit)?;
    }
    let (server_tls, client_tls) = if options.path == MigrationPath::UnderlayTls {
        progress("issuing TLS certificates for QEMU's migration stream (a throwaway CA)");
        let (server, client) = qemu_tls::issue(&scratch.path().join("tls"))?;
        (Some(server), Some(client))
    } else {
        (None, None)
    };
    // QEMU's tap takes the place of the lab's veth.
    lab.detach_vm(Site::Old)?;
    let mut clock = Clock::new();

    progress("booting the guest under QEMU (TCG) on the old host's tap vif0");
    let booting = Instant::now();
    let mut source = Qemu::start(
        &lab.old,
        "qemu-old",
        scratch.path(),
        spec(&options.image, &scratch, "old", options.ram, client_tls),
        None,
        VIF_MAC,
    )?;
    lab.seed_vif_up(Site::Old)?;
    source.resume()?;
    // vmtun comes up while the guest boots.
    let mut hosts: Vec<HostVmtun<'_>> = scenario::start_hosts(
        &lab,
        &options.vmtun,
        &scratch,
        Family::Ipv4,
        handover_configs(options.handover),
        progress,
        &mut clock,
    )?;
    let wireguard = if options.path == MigrationPath::WireguardGo {
        progress("a wireguard-go tunnel between the hosts for QEMU's stream");
        Some(wireguard_go_pair(&lab, &scratch)?)
    } else {
        None
    };
    source.wait_booted()?;
    let boot_ms = booting.elapsed().as_secs_f64() * 1e3;
    clock.now("the guest booted on the old host");
    progress(&format!("the guest booted in {:.1} s", boot_ms / 1e3));

    let uri = format!("tcp:{}:{MIGRATION_PORT}", options.path.address());
    progress(&format!(
        "QEMU waits on the new host ({uri}); vmtun vif-up vif0 as libvirt's script would"
    ));
    let mut destination = Qemu::start(
        &lab.new,
        "qemu-new",
        scratch.path(),
        spec(&options.image, &scratch, "new", options.ram, server_tls),
        Some(&uri),
        VIF_MAC,
    )?;
    hosts[0].vif_up(VIF)?;

    let vm: Ipv4Addr = VM_ADDR.parse().expect("constant");
    progress(&format!(
        "pinging {vm} from the client at {} Hz",
        options.rate_hz
    ));
    let prober = Prober::start_icmp(&lab.client, vm, options.rate_hz)?;
    let warmup = clock.now("probes started");
    lab::wait_until(scenario::SETUP_WAIT, "the first probe reply", || {
        prober.answered_since(0)
    })?;
    let t0 = clock.now("first reply: the guest answers on the old host");

    scenario::sleep_until(t0 + scenario::nanos(options.before_move));
    progress(&format!(
        "live migration {}: QMP migrate {uri}",
        options.path.describe()
    ));
    let counters = loss_counters(&lab)?;
    let move_start = clock.now(format!("QMP migrate {uri}: the live migration begins"));
    source.start_migration(&uri, &options.parameters)?;
    let handed_over = if options.hand_over_at_pause {
        hand_over_at_stop(&mut source, &hosts[1], &mut clock)?
    } else {
        None
    };
    let qemu = match source.finish_migration() {
        Ok(qemu) => qemu,
        Err(e) => {
            if handed_over.is_some() {
                hosts[1].request(&Request::HandBack(VIF.into()))?;
            }
            return Err(e);
        }
    };
    clock.now("the source reports the migration completed");
    let resume = destination.wait_resumed(MIGRATE_WAIT)?;
    clock.note(resume, "the guest resumes on the new host (QMP RESUME)");
    let stop = source.stopped_at();
    if let Some(stop) = stop {
        clock.note(stop, "the source stops the guest (QMP STOP)");
    }
    let mut sent = None;
    for (status, at) in source.migration_events() {
        if status == "completed" {
            sent = Some(at);
        }
        clock.note(at, format!("the source QEMU's migration: {status}"));
    }
    scenario::sleep_until(resume + scenario::nanos(options.source_linger));
    source.process.signal(libc::SIGTERM);
    clock.now("SIGTERM to the source QEMU (libvirt ends it so): its tap vif0 goes as it exits");
    drop(source);
    let gone = clock.now("the source QEMU has exited");
    let losses = StreamLosses::between(counters, loss_counters(&lab)?);
    let real_pause_ms = stop.map(|stop| resume.saturating_sub(stop) as f64 / 1e6);
    progress(&format!(
        "migrated in {} ms: QEMU's downtime {} ms, real pause {}",
        qemu.total_ms,
        qemu.downtime_ms,
        real_pause_ms.map_or("unknown (no STOP event)".into(), |ms| format!("{ms:.1} ms"))
    ));

    let resumed = lab::wait_until(scenario::RESUME_WAIT, "replies after the move", || {
        prober.answered_since(resume)
    });
    match resumed {
        Ok(()) => progress("replies resumed: through the tunnel, out of the old host"),
        Err(_) => progress(&format!(
            "replies did not resume within {:?} after the move",
            scenario::RESUME_WAIT
        )),
    }
    for (at, what) in handover_trail::trail(&hosts[0].log(), &hosts[1].log()) {
        clock.note(at, what);
    }
    let after_move_start = (gone + scenario::nanos(options.settle)).max(unix_ns());
    scenario::sleep_until(after_move_start + scenario::nanos(options.after_move));
    let core_before_switch = lab.core_counters()?;

    progress("switching the provider: the VM subnet now routes to the new host");
    let switch_start = clock.now("provider switch begins");
    lab.switch_provider()?;
    let switch_done = clock.now("provider switched (anti-spoofing lifted, route to new host)");
    let mut cutover = scenario::vmtun_cutover(&lab, &hosts[0], progress)?;
    let after_switch_start = (switch_done + scenario::nanos(options.settle)).max(unix_ns());

    scenario::sleep_until(after_switch_start + scenario::nanos(options.after_switch));
    progress("stopping the probes");
    let (log, end_ns) = prober.finish(scenario::DRAIN)?;
    clock.note(end_ns, "probes stopped");
    let core_counters = lab.core_counters()?;

    progress("tearing down: QEMU, vmtun down on both hosts, deleting the namespaces");
    drop(destination);
    drop(wireguard);
    let vmtun_exits = scenario::stop_hosts(&mut hosts);
    drop(hosts);
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
        moved: resume,
        switch_done,
    };
    let (phases, totals, timeline) = scenario::analyse(
        &log,
        end_ns,
        options.rate_hz,
        &moments,
        Some(&mut cutover),
        clock,
    );
    let lost_after_resume = stats::lost_between(
        &log.sent_ns,
        &log.replies,
        resume + scenario::nanos(AFTER_RESUME),
        switch_start,
    );
    let wrong_way = cutover
        .packet_time_unix_ns
        .map(|first_native| stats::replies_via_old_since(&log.sent_ns, &log.replies, first_native));
    let run = Report {
        mode: "vmtun, real VM".into(),
        rate_hz: options.rate_hz,
        vm: vm.into(),
        subnet: SUBNET.into(),
        phases,
        cutover: Some(cutover),
        totals,
        core_counters,
        timeline,
        vmtun_exits,
    };
    let migration = MigrationFigures {
        path: options.path,
        handover: options.handover,
        hand_over_at_pause: options.hand_over_at_pause,
        handed_over_unix_ns: handed_over,
        source_linger_ms: options.source_linger.as_millis() as u64,
        guest_ram: options.ram,
        underlay_mbit: options.underlay_mbit,
        uri,
        parameters: options.parameters.clone(),
        boot_ms,
        qemu,
        stop_unix_ns: stop,
        source_completed_unix_ns: sent,
        resume_unix_ns: resume,
        real_pause_ms,
        losses,
    };
    let summary = summarise(&run, &migration, lost_after_resume, wrong_way);
    Ok(RealVmReport {
        run,
        migration,
        summary,
        core_before_switch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::migration::scenario::{CutoverReport, Totals};

    fn phase(name: &str, gap: f64, lost: u64) -> PhaseStats {
        PhaseStats {
            name: name.into(),
            start_ms: 0.0,
            duration_ms: 1.0,
            sent: 100,
            received: 100 - lost,
            lost,
            longest_gap_ms: gap,
            replies_via_old: 0,
            replies_via_new: 0,
            replies_via_unknown: 0,
        }
    }

    #[test]
    fn the_summary_puts_qemus_figures_on_the_move_and_the_cutover_on_the_switch() {
        let run = Report {
            mode: "vmtun, real VM".into(),
            rate_hz: 1000,
            vm: "203.0.113.2".parse().unwrap(),
            subnet: SUBNET.into(),
            phases: vec![
                phase("before_move", 0.0, 0),
                phase("move", 61.0, 60),
                phase("switch", 1.0, 1),
            ],
            cutover: Some(CutoverReport {
                by: "vmtun".into(),
                command: None,
                phase: Some("done".into()),
                packet_time_unix_ns: None,
                rule_gone_time_unix_ns: None,
                latency_ns: Some(250_000),
                detection_delay_ns: None,
                removal_ns: None,
                native_subnets: Vec::new(),
                wrong_way_replies: 0,
                mark_rule_left: Some(false),
            }),
            totals: Totals::default(),
            core_counters: CoreCounters::default(),
            timeline: Vec::new(),
            vmtun_exits: Vec::new(),
        };
        let migration = MigrationFigures {
            path: MigrationPath::Tunnel,
            handover: HandoverMode::FirstFrame,
            hand_over_at_pause: false,
            handed_over_unix_ns: None,
            source_linger_ms: 0,
            guest_ram: GuestRam::Preallocated,
            underlay_mbit: None,
            uri: "tcp:100.64.0.2:4444".into(),
            parameters: Vec::new(),
            boot_ms: 5000.0,
            qemu: MigrationStats {
                total_ms: 500,
                downtime_ms: 17,
                ..MigrationStats::default()
            },
            stop_unix_ns: Some(1_000_000_000),
            source_completed_unix_ns: None,
            resume_unix_ns: 1_041_000_000,
            real_pause_ms: Some(41.0),
            losses: StreamLosses::default(),
        };
        let summary = summarise(&run, &migration, 15, Some(2));
        assert_eq!(summary.len(), 2);
        let (moved, switched) = (&summary[0], &summary[1]);
        assert_eq!(moved.phase, "move");
        assert_eq!(moved.qemu_downtime_ms, Some(17));
        assert_eq!(moved.real_pause_ms, Some(41.0));
        assert_eq!((moved.longest_gap_ms, moved.lost), (61.0, 60));
        assert_eq!(moved.lost_after_resume, Some(15));
        assert_eq!(moved.cutover_latency_ms, None);
        assert_eq!(switched.phase, "switch");
        assert_eq!((switched.longest_gap_ms, switched.lost), (1.0, 1));
        assert_eq!(switched.cutover_latency_ms, Some(0.25));
        assert_eq!(switched.wrong_way_replies, Some(2));
        assert_eq!(switched.qemu_downtime_ms, None);
        assert_eq!(MigrationPath::Tunnel.address(), TUNNEL_NEW);
        assert_eq!(MigrationPath::Underlay.address(), NEW);
        assert_eq!(MigrationPath::UnderlayTls.address(), NEW);
        assert_eq!(MigrationPath::UnderlayTls.tools(), ["openssl"]);
        assert!(
            MigrationPath::Underlay.tools().is_empty() && MigrationPath::Tunnel.tools().is_empty()
        );
        assert_eq!(MigrationPath::WireguardGo.address(), WG_NEW);
        assert_eq!(MigrationPath::WireguardGo.tools(), ["wireguard-go", "wg"]);
    }
}
