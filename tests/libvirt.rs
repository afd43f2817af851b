//! The move with libvirt in the loop: the guest of `scripts/guest.sh` is a libvirt domain on
//! the old host, with the interface the README documents ("With libvirt": `type='ethernet'`,
//! `<target dev='vif0'/>`, `<script path>` running `packaging/libvirt/vif-up`), vmtun runs
//! on both hosts, and `virsh migrate --live --persistent` to the new host's libvirtd over
//! SSH (`qemu+ssh://198.18.2.2/system`, the README's peer URI), run as root on the old host
//! with `--p2p` or without, moves the guest; then the provider switches.
//!
//! ```text
//!  client ── core ──┬── old host: libvirtd (TCP 198.18.1.2:16509), QEMU on vif0, vmtun old
//!                   └── new host: libvirtd (TCP 198.18.2.2:16509), SSH (:22), vmtun new
//!        virsh migrate, run in the old host's daemon namespaces: with --p2p the old
//!        host's libvirtd drives the new host's through SSH, without it virsh does (the
//!        test's other virsh commands reach each daemon over TCP); QEMU's stream
//!        goes old -> core -> new on the underlay (tcp://198.18.2.2), or through vmtun's
//!        tunnel (tcp://100.64.0.2), with --copy-storage-all the disk's NBD copy with it
//! ```
//!
//! Each libvirtd runs in its host's network namespace and in a mount and UTS namespace of
//! its own (private /etc/libvirt, /run/libvirt, /var/{lib,log,cache}/libvirt under the
//! scratch directory; see `vmtun::lab::libvirt`). Skips (saying why) only when QEMU or
//! libvirt cannot run here; `scripts/setup.sh` installs both.

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::transfer::XorShift;
use common::{LabError, Result, Scratch, check, preflight, wait_ping};
use helpers::{VMTUN, WAIT, cut_over_with_pings, launch_both, prepare_hosts, vif_routed};
use sha2::{Digest as _, Sha256};
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use vmtun::lab::libvirt::ssh::SshServer;
use vmtun::lab::libvirt::{
    self, DaemonSpec, Disks, DomainSpec, Driver, LIBVIRTD_LOG, Libvirtd, MIGRATE_WAIT,
    VIF_SCRIPT_CALLS, migrate_args,
};
use vmtun::lab::migration::hosts::CutoverState;
use vmtun::lab::migration::real_vm::MigrationPath;
use vmtun::lab::migration::topology::{MigrationLab, Site};
use vmtun::lab::migration::{NEW, OLD, VIF, VM_ADDR, VM_GATEWAY, VM_MAC};
use vmtun::lab::ping::Pinger;
use vmtun::lab::process::Process;
use vmtun::lab::qemu::{BOOT_WAIT, GUEST_FAILED, GUEST_UP, GuestImage};
use vmtun::lab::wait_until;

/// The domain's name on both hosts.
const DOMAIN: &str = "vmtunlab-guest";

/// The client's probes: 1 kHz, as in the issue's measurements.
const PING_INTERVAL: Duration = Duration::from_millis(1);

/// Pings after the cutover whose replies must all leave through the new host's link.
const NATIVE_PINGS: u64 = 20;

/// The guest's disk as both daemons see it: inside their private `/var/lib/libvirt`, so
/// each host has a file of its own, as two real hosts would.
const DISK: &str = "/var/lib/libvirt/images/vmtunlab-guest.raw";

/// The disk's size: 64 MiB of pseudo-random bytes, which no zero-page shortcut of the copy
/// can skip.
const DISK_BYTES: usize = 64 << 20;

/// The guest's TCP port that answers with its disk's SHA-256 (`scripts/guest.sh`).
const DISK_SUM_PORT: u16 = 5000;

/// The ceiling of the guest's reading and hashing its whole disk under TCG.
const DISK_SUM_WAIT: Duration = Duration::from_secs(180);

/// The README's `virsh migrate-setmaxdowntime` (ms): QEMU stops the guest only once the
/// rest fits this long, so little is left to cross the tunnel while it is stopped.
const MAX_DOWNTIME_MS: &str = "20";

/// The daemon of `site`: its hostname, underlay address, UUID and the lab's `<script>`
/// running the shipped one with this host's vmtun config.
fn daemon(label: &str, listen: &str, site: u8, config: &Path) -> DaemonSpec {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/libvirt/vif-up");
    DaemonSpec {
        label: label.into(),
        hostname: format!("{label}.vmtunlab.invalid"),
        listen: listen.into(),
        host_uuid: libvirt::host_uuid(site),
        vif_script: libvirt::vif_script(&shipped, Path::new(VMTUN), config),
    }
}

/// Waits until the guest's init reports on the console of `host`.
fn wait_booted(host: &Libvirtd<'_>, console: &str) -> Result<()> {
    let text = common::wait_for(BOOT_WAIT, "the guest to boot", || {
        let text = host.read(console);
        (text.contains(GUEST_UP) || text.contains(GUEST_FAILED)).then_some(text)
    })?;
    check(text.contains(GUEST_UP), || {
        format!("the guest booted without its network; its console:\n{text}")
    })
}

/// The line `name:` of `virsh domjobinfo`'s output `info`, its value with single spaces.
fn job_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// "Total downtime" of the last migration as the source libvirtd reports it (from the
/// source's pause to the destination's resume), if it does.
fn downtime(host: &Libvirtd<'_>) -> Option<String> {
    let info = host.virsh(&["domjobinfo", DOMAIN, "--completed"]).ok()?;
    job_field(&info, "Total downtime")
}

/// A disk image of [`DISK_BYTES`] pseudo-random bytes (from `seed`) and its SHA-256, hex.
fn disk_image(seed: u64) -> (Vec<u8>, String) {
    let mut bytes = vec![0u8; DISK_BYTES];
    XorShift(seed | 1).fill(&mut bytes);
    let sum = sha256_hex(&bytes);
    (bytes, sum)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of the guest's disk as the guest reads it from its disk (not its page
/// cache), asked from the client over TCP.
fn disk_sum_in_guest(lab: &MigrationLab) -> Result<String> {
    let io = |what: &'static str| move |e: std::io::Error| LabError::io(what, e);
    let ask = lab.client.thread("disksum", move || {
        let addr = SocketAddr::new(VM_ADDR.parse().expect("constant"), DISK_SUM_PORT);
        let mut stream =
            TcpStream::connect_timeout(&addr, WAIT).map_err(io("connecting to the guest"))?;
        stream
            .set_read_timeout(Some(DISK_SUM_WAIT))
            .map_err(io("setting a read timeout"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(io("reading the guest's disk checksum"))?;
        Ok(answer)
    })?;
    let answer = ask
        .join()
        .map_err(|_| LabError::Failed("the disk checksum thread panicked".into()))??;
    answer
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| LabError::Failed(format!("the guest sent no checksum: {answer:?}")))
}

/// Writes the guest's disk on the old host (`bytes`) and an empty image of the same size
/// at the same path on the new host (the mirror's target; libvirt creates one only in a
/// storage pool).
fn place_disks(source: &Libvirtd<'_>, destination: &Libvirtd<'_>, bytes: &[u8]) -> Result<()> {
    for (host, data) in [(source, Some(bytes)), (destination, None)] {
        let path = host
            .host_path(DISK)
            .expect("the disk lies in a private directory");
        let dir = path.parent().expect("an image has a directory");
        std::fs::create_dir_all(dir)
            .and_then(|()| match data {
                Some(data) => std::fs::write(&path, data),
                None => std::fs::File::create(&path)?.set_len(bytes.len() as u64),
            })
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// The two hosts' daemons, the old one running the booted guest: its `<script>` (with the
/// old host's vmtun config `old_config`) ran and routed the guest's address onto vif0. The
/// new host's script uses `new_config`. With `disk`, the guest has it as `/dev/vda` (see
/// [`place_disks`]). The old host's root logs in to the new host over SSH, as the README's
/// `qemu+ssh://` needs; the third value is the new host's SSH server (drop it first).
fn guest_on_old_host<'a>(
    lab: &'a MigrationLab,
    scratch: &Scratch,
    old_config: &Path,
    new_config: &Path,
    disk: Option<&[u8]>,
) -> Result<(Libvirtd<'a>, Libvirtd<'a>, SshServer)> {
    let image = GuestImage::build(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    // The libvirt domain's tap takes the place of the lab's veth.
    lab.detach_vm(Site::Old)?;
    let source = Libvirtd::start(&lab.old, scratch.path(), &daemon("old", OLD, 0, old_config))?;
    let destination =
        Libvirtd::start(&lab.new, scratch.path(), &daemon("new", NEW, 1, new_config))?;
    let ssh_server = libvirt::ssh::open(&source, &destination, scratch.path())?;
    let domain = DomainSpec {
        name: DOMAIN.into(),
        image,
        mac: VM_MAC.into(),
        vif: VIF.into(),
        addr: VM_ADDR.into(),
        gateway: VM_GATEWAY.into(),
        disk: disk.map(|_| DISK.into()),
    };
    if let Some(bytes) = disk {
        place_disks(&source, &destination, bytes)?;
    }
    let booting = Instant::now();
    source.define_and_start(DOMAIN, &libvirt::domain_xml(&domain))?;
    wait_booted(&source, &domain.console())?;
    eprintln!("libvirt: guest booted in {:.1?}", booting.elapsed());
    check(source.read(VIF_SCRIPT_CALLS).trim() == VIF, || {
        format!(
            "libvirt ran the <script> on the old host for {VIF} only: {:?}",
            source.read(VIF_SCRIPT_CALLS)
        )
    })?;
    check(vif_routed(&lab.old)?, || {
        format!("the old host's <script> routed {VM_ADDR} onto {VIF} with proxy ARP")
    })?;
    Ok((source, destination, ssh_server))
}

/// `vmtun follow-libvirt` on the old host for `source`'s events (the README's
/// vmtun-follow-libvirt@.service), once it follows them and knows the guest's vif0.
fn follow_libvirt(
    lab: &MigrationLab,
    scratch: &Scratch,
    old_config: &Path,
    source: &Libvirtd<'_>,
) -> Result<Process> {
    let mut cmd = lab.old.command(VMTUN);
    cmd.args(["follow-libvirt", "-c"])
        .arg(old_config)
        .args(["--connect", source.uri()]);
    let follower = Process::spawn("follow-libvirt", scratch.path(), cmd)?;
    wait_until(WAIT, "vmtun follow-libvirt to follow the old host", || {
        follower
            .stderr()
            .contains(&format!("{DOMAIN}: VM interfaces {VIF}"))
            && follower
                .stderr()
                .contains("following libvirt's lifecycle events")
    })
    .map_err(|e| LabError::Failed(format!("{e}\n{}", follower.stderr())))?;
    Ok(follower)
}

/// The error of `attempt`, a `virsh migrate` that must fail.
fn refusal(attempt: Result<String>) -> Result<String> {
    match attempt {
        Ok(out) => Err(LabError::Failed(format!(
            "virsh migrate succeeded although the new host's <script> fails: {out}"
        ))),
        Err(e) => Ok(e.to_string()),
    }
}

/// `virsh migrate` of the guest from `source` to the new host, as the README has it, run
/// by root on the old host and driven by `driver`, the stream (and the disks' copy) to
/// `stream`.
fn migrate(
    source: &Libvirtd<'_>,
    stream: MigrationPath,
    disks: Disks,
    driver: Driver,
) -> Result<String> {
    let args = migrate_args(DOMAIN, NEW, stream.address(), disks, driver);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    source.local_virsh(MIGRATE_WAIT, &args)
}

/// A real guest, defined and started by the old host's libvirtd, answers the client; the
/// old host's libvirtd live-migrates it (`--p2p`) to the new host's; libvirt runs the
/// `<script>` on the new host, the guest answers through the tunnel, and after the
/// provider's switch and the cutover its replies leave through the new host's link.
#[test]
fn virsh_migrate_moves_a_real_vm_between_two_libvirt_hosts_running_vmtun() -> Result<()> {
    if let Some(why) = libvirt::missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    preflight(&["nft", "ping", "unshare"]);
    let scratch = Scratch::new("libvirt")?;
    let lab = MigrationLab::build(1)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    let (source, destination, ssh_server) =
        guest_on_old_host(&lab, &scratch, &old.path, &new.path, None)?;

    launch_both(&lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let follower = follow_libvirt(&lab, &scratch, &old.path, &source)?;

    let pings = Pinger::start(&lab.client, scratch.path(), VM_ADDR, PING_INTERVAL)?;
    let logins = ssh_server.logins();
    let migrating = Instant::now();
    migrate(
        &source,
        MigrationPath::Underlay,
        Disks::Leave,
        Driver::SourceDaemon,
    )?;
    let migrate_took = migrating.elapsed();
    check(ssh_server.logins() > logins, || {
        "the old host's libvirtd reached the new host's over SSH for the migration".into()
    })?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let trace = pings.stop()?;
    // ping sends every PING_INTERVAL only while replies come: with replies outstanding it
    // waits 10 ms between probes, so its loss count is not a fixed-rate figure; the gap is.
    eprintln!(
        "libvirt: virsh migrate took {migrate_took:.2?}; libvirt's total downtime {}; the client's longest gap between ping replies {:.1?} (ping every {PING_INTERVAL:?}; {} sent, {} answered)",
        downtime(&source).unwrap_or_else(|| "not reported".into()),
        trace.longest_gap().unwrap_or_default(),
        trace.transmitted,
        trace.received,
    );

    check(destination.domain_state(DOMAIN)? == "running", || {
        "the guest runs on the new host after virsh migrate".into()
    })?;
    // The old host handed the VM over at libvirt's "Suspended Migrated", and the new host
    // confirmed it once the guest ran there.
    wait_until(WAIT, "the new host to confirm the handover", || {
        old.log().contains("the handover at its pause stands")
    })
    .map_err(|e| LabError::Failed(format!("{e}\n{}", old.log())))?;
    for line in follower.stderr().lines().filter(|l| l.contains(DOMAIN)) {
        eprintln!("libvirt: follow-libvirt: {line}");
    }
    check(
        follower.stderr().contains("handed over to the new host")
            && old
                .log()
                .contains("paused here for the migration's last stage"),
        || format!("{}\n{}", follower.stderr(), old.log()),
    )?;
    drop(follower);
    check(source.domain_state(DOMAIN)? == "shut off", || {
        "the guest stays defined, shut off, on the old host".into()
    })?;
    check(!lab.old.has_link(VIF), || {
        "the source's tap is gone: the answers come from the migrated guest".into()
    })?;
    check(destination.read(VIF_SCRIPT_CALLS).trim() == VIF, || {
        format!(
            "libvirt ran the <script> on the new host for {VIF}: {:?}",
            destination.read(VIF_SCRIPT_CALLS)
        )
    })?;
    check(vif_routed(&lab.new)?, || {
        format!("the new host routes {VM_ADDR} onto {VIF} with proxy ARP")
    })?;
    let before_switch = lab.core_counters()?;
    check(before_switch.from_new == 0, || {
        format!("before the switch the replies leave through the old site: {before_switch:?}")
    })?;

    lab.switch_provider()?;
    cut_over_with_pings(&lab, &new, VM_ADDR, CutoverState::is_done)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let cut_over = lab.core_counters()?;
    let count = NATIVE_PINGS.to_string();
    lab.client.run(
        "ping",
        &["-c", &count, "-i", "0.05", "-W", "2", "-q", VM_ADDR],
    )?;
    let after = lab.core_counters()?;
    check(
        after.from_old == cut_over.from_old && after.from_new >= cut_over.from_new + NATIVE_PINGS,
        || {
            format!(
                "after the cutover all {NATIVE_PINGS} replies leave through the new site: {cut_over:?} -> {after:?}"
            )
        },
    )?;
    old.down()?;
    new.down()
}

/// When libvirt cannot run the `<script>` on the new host (here vmtun's config is missing
/// there), the migration is aborted before the guest moves, with `--p2p` and without: the
/// operator reads vmtun's error in `virsh migrate`'s (without `--p2p`; with it, in the new
/// host's libvirtd log when libvirt reports the SSH connection's end instead), the guest
/// runs on and answers from the old host, and nothing of it is left on the new host (its
/// tap went with the aborted start).
#[test]
fn a_failing_script_on_the_new_host_aborts_the_migration_and_the_guest_stays() -> Result<()> {
    if let Some(why) = libvirt::missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    preflight(&["ping", "unshare"]);
    let scratch = Scratch::new("libvirt-abort")?;
    let lab = MigrationLab::build(1)?;
    let (old, _) = prepare_hosts(&lab, &scratch, "auto")?;
    let absent = scratch.path().join("absent.toml");
    let (source, destination, _ssh_server) =
        guest_on_old_host(&lab, &scratch, &old.path, &absent, None)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;

    let absent = absent.display().to_string();
    // The README's command: the old host's libvirtd drives the move (`--p2p`) and gets the
    // new host's refusal; over SSH libvirt 9.0 then mostly reports its connection's end
    // instead (`End of file while reading data`, 5 of 6 runs here; what it says is
    // libvirt's), and the new host's libvirtd log keeps vmtun's words.
    let p2p = refusal(migrate(
        &source,
        MigrationPath::Underlay,
        Disks::Leave,
        Driver::SourceDaemon,
    ))?;
    let says = if p2p.contains(&absent) {
        "vmtun's error"
    } else {
        "not vmtun's error"
    };
    eprintln!("libvirt: virsh migrate --p2p refused, with {says}: {p2p}");
    let logged = format!("vmtun: {absent}: cannot read");
    check(destination.read(LIBVIRTD_LOG).contains(&logged), || {
        format!("the new host's libvirtd log carries vmtun's error {logged:?}")
    })?;
    // Without `--p2p` virsh, run by root on the old host, drives the move and reports the
    // new host's error itself.
    let direct = refusal(migrate(
        &source,
        MigrationPath::Underlay,
        Disks::Leave,
        Driver::Virsh,
    ))?;
    eprintln!("libvirt: virsh migrate refused: {direct}");
    check(direct.contains(&absent), || {
        format!("virsh migrate's error carries vmtun's, naming {absent}: {direct}")
    })?;
    let calls = destination.read(VIF_SCRIPT_CALLS);
    check(calls.lines().eq([VIF, VIF]), || {
        format!("libvirt ran the <script> on the new host for {VIF}, once per attempt: {calls:?}")
    })?;
    check(source.domain_state(DOMAIN)? == "running", || {
        "the guest runs on on the old host".into()
    })?;
    let left = destination.virsh(&["list", "--all", "--name"])?;
    check(left.trim().is_empty(), || {
        format!("no domain is left on the new host: {left:?}")
    })?;
    check(!lab.new.has_link(VIF), || {
        format!("no {VIF} is left on the new host")
    })?;
    wait_ping(&lab.client, VM_ADDR, WAIT)
}

/// A guest with a disk moves as the README's step 5 has it: `virsh
/// migrate-setmaxdowntime` on the running domain, then `virsh migrate --copy-storage-all`
/// run by root on the old host and driving the move itself (no `--p2p`, as step 5 has it;
/// the move with the follower takes `--p2p`), QEMU's stream and the disk's NBD
/// copy both sent to `path`'s address of the new host. The guest answers on the new host,
/// reads from its disk there exactly what it read on the old host, the new host's image
/// holds the old one's bytes, and the copy crossed vmtun's tunnel exactly when it was sent
/// to the tunnel address. Prints libvirt's figures of the copy.
fn copy_storage_all(path: MigrationPath) -> Result<()> {
    if let Some(why) = libvirt::missing_requirement() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    preflight(&["nft", "ping", "unshare"]);
    let scratch = Scratch::new("libvirt-disk")?;
    let lab = MigrationLab::build(1)?;
    let (mut old, mut new) = prepare_hosts(&lab, &scratch, "auto")?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64);
    let (image, sum) = disk_image(seed);
    let (source, destination, _ssh_server) =
        guest_on_old_host(&lab, &scratch, &old.path, &new.path, Some(&image))?;
    drop(image);
    launch_both(&lab, &mut old, &mut new)?;
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let before = disk_sum_in_guest(&lab)?;
    check(before == sum, || {
        format!("the guest reads its disk on the old host: {before} against {sum}")
    })?;

    source.virsh(&["migrate-setmaxdowntime", DOMAIN, MAX_DOWNTIME_MS])?;
    let limit = source.virsh(&["migrate-getmaxdowntime", DOMAIN])?;
    check(limit.trim() == MAX_DOWNTIME_MS, || {
        format!("libvirt set QEMU's downtime limit before the migration: {limit:?}")
    })?;

    let tunnel_rx = || lab.new.link_stat(new.ifname(), "rx_bytes");
    let rx_before = tunnel_rx()?;
    let pings = Pinger::start(&lab.client, scratch.path(), VM_ADDR, PING_INTERVAL)?;
    let migrating = Instant::now();
    migrate(&source, path, Disks::CopyAll, Driver::Virsh)?;
    let migrate_took = migrating.elapsed();
    wait_ping(&lab.client, VM_ADDR, WAIT)?;
    let trace = pings.stop()?;
    let through_tunnel = tunnel_rx()? - rx_before;
    let info = source.virsh(&["domjobinfo", DOMAIN, "--completed"])?;
    eprintln!(
        "libvirt --copy-storage-all {}: virsh migrate took {migrate_took:.2?}; {} MiB through the tunnel; the client's longest gap {:.1?}; domjobinfo --completed:\n{info}",
        path.describe(),
        through_tunnel >> 20,
        trace.longest_gap().unwrap_or_default(),
    );
    for field in [
        "Time elapsed",
        "Data processed",
        "File processed",
        "Total downtime",
    ] {
        check(job_field(&info, field).is_some(), || {
            format!("domjobinfo --completed reports {field:?}: {info}")
        })?;
    }

    check(destination.domain_state(DOMAIN)? == "running", || {
        "the guest runs on the new host after virsh migrate".into()
    })?;
    check(!lab.old.has_link(VIF), || {
        "the source's QEMU is gone with its tap".into()
    })?;
    let after = disk_sum_in_guest(&lab)?;
    check(after == sum, || {
        format!("the guest reads the same disk on the new host: {after} against {sum}")
    })?;
    let copy = destination
        .host_path(DISK)
        .expect("the disk lies in a private directory");
    let copied =
        std::fs::read(&copy).map_err(|e| LabError::io("reading the new host's image", e))?;
    check(sha256_hex(&copied) == sum, || {
        format!(
            "the new host's image {} holds the old one's bytes",
            copy.display()
        )
    })?;
    let crossed = through_tunnel >= DISK_BYTES as u64;
    check(crossed == (path == MigrationPath::Tunnel), || {
        format!(
            "the disk's copy ({DISK_BYTES} bytes) crossed the tunnel only when sent to its address: {through_tunnel} bytes came out of the new host's tunnel, migrating {}",
            path.describe()
        )
    })?;
    old.down()?;
    new.down()
}

/// `--copy-storage-all` with `--migrateuri tcp://<new host's tunnel address>`: the guest's
/// memory and its disk both move through vmtun's tunnel (the seed's way, encrypted without
/// QEMU's TLS).
#[test]
fn copy_storage_all_moves_the_guest_and_its_disk_through_the_tunnel() -> Result<()> {
    copy_storage_all(MigrationPath::Tunnel)
}

/// The same over the underlay (`--migrateuri tcp://<new host's underlay address>`): the
/// disk arrives too, and nothing of it crosses the tunnel.
#[test]
fn copy_storage_all_over_the_underlay_leaves_the_tunnel_alone() -> Result<()> {
    copy_storage_all(MigrationPath::Underlay)
}
