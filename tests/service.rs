//! vmtun as the systemd service of packaging/vmtun@.service, as far as this machine (no
//! systemd as PID 1) can show it: the unit passes `systemd-analyze verify`, and `vmtun up`
//! speaks the sd_notify protocol the unit's `Type=notify` relies on, with only the
//! capabilities the unit leaves it.
//!
//! ```text
//!   test: a unix datagram socket, its path in NOTIFY_SOCKET
//!     │  READY=1, STOPPING=1
//!   ns new (the lab's new host, br0): setpriv --bounding-set <the unit's capabilities>
//!                                     vmtun up -c new.toml   (role new)
//!   ns old, core, client, vm: the rest of the lab; the old host runs no vmtun
//! ```

mod common;
#[path = "common/migration.rs"]
mod helpers;

use common::{Result, Scratch, check, preflight};
use helpers::{HostState, VMTUN, WAIT};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Instant;
use vmtun::lab::migration::SUBNET;
use vmtun::lab::migration::hosts::{HostConfig, KeyPair};
use vmtun::lab::migration::topology::MigrationLab;
use vmtun::lab::{LabError, Process};

/// The unit as it is shipped.
const UNIT: &str = include_str!("../packaging/vmtun@.service");

/// `setpriv --bounding-set` for the unit's `CapabilityBoundingSet=`, e.g.
/// `-all,+net_admin,+net_raw`: a root process exec'd with it holds exactly those.
fn unit_bounding_set() -> String {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit limits its capabilities");
    line.split_whitespace()
        .map(|cap| format!(",+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .fold("-all".to_owned(), |set, cap| set + &cap)
}

/// The notifications received on `socket` until `want` arrives (or `process` exits, or
/// WAIT passes), in order.
fn wait_notification(
    socket: &UnixDatagram,
    process: &mut Process,
    want: &str,
) -> Result<Vec<String>> {
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .map_err(|e| LabError::io("setting the notify socket's timeout", e))?;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if got.last().is_some_and(|m| m.lines().any(|l| l == want)) {
                    return Ok(got);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(LabError::io("receiving on the notify socket", e)),
        }
        if let Some(status) = process.exit_status() {
            return Err(LabError::Failed(format!(
                "vmtun up exited with {status} before {want} (received {got:?}):\n{}",
                process.stderr_tail()
            )));
        }
        if started.elapsed() > WAIT {
            return Err(LabError::Failed(format!(
                "no {want} within {WAIT:?} (received {got:?}):\n{}",
                process.stderr_tail()
            )));
        }
    }
}

/// `vmtun up` (role new) on the lab's new host as the unit runs it: with the unit's
/// capabilities only and a `NOTIFY_SOCKET` bound here.
struct Service<'a> {
    lab: &'a MigrationLab,
    config: HostConfig,
    path: std::path::PathBuf,
    socket: UnixDatagram,
    /// The host before `up`.
    before: HostState,
    up: Process,
}

impl<'a> Service<'a> {
    fn start(lab: &'a MigrationLab, scratch: &Scratch) -> Result<Self> {
        let vmtun = Path::new(VMTUN);
        let (keys, peer) = (KeyPair::generate(vmtun)?, KeyPair::generate(vmtun)?);
        let config = HostConfig::new_host(&keys, &peer, "auto");
        // With a control group, as a host that lets its operators' group read the status
        // runs it: giving the socket to the group is a capability of its own (CAP_CHOWN).
        let text = config.to_toml() + "\n[control]\ngroup = \"users\"\n";
        let path = scratch.write("new.toml", &text, 0o600)?;
        let notify_path = scratch.path().join("notify.sock");
        let socket = UnixDatagram::bind(&notify_path)
            .map_err(|e| LabError::io(format!("binding {}", notify_path.display()), e))?;
        let before = HostState::of(&lab.new)?;
        let mut cmd = lab.new.command("setpriv");
        cmd.arg(format!("--bounding-set={}", unit_bounding_set()))
            .args(["--", VMTUN, "up", "-c"])
            .arg(&path)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "vmtun=debug");
        let up = Process::spawn("vmtun-up", scratch.path(), cmd)?;
        Ok(Self {
            lab,
            config,
            path,
            socket,
            before,
            up,
        })
    }

    /// Waits for `READY=1` (failing if anything else came first), freezes `vmtun up` the
    /// moment it arrives and reads the host; `vmtun up` stays frozen (SIGSTOP).
    fn host_at_ready(&mut self) -> Result<HostState> {
        let first = wait_notification(&self.socket, &mut self.up, "READY=1")?;
        self.up.signal(libc::SIGSTOP);
        check(first == ["READY=1"], || {
            format!("before and with READY=1 came {first:?}")
        })?;
        HostState::of(&self.lab.new)
    }

    /// Wakes `vmtun up` and stops it as systemd does (SIGTERM); fails unless it says
    /// `STOPPING=1`, exits 0 and leaves the host as it was.
    fn stop(&mut self) -> Result<()> {
        self.up.signal(libc::SIGCONT);
        self.up.signal(libc::SIGTERM);
        wait_notification(&self.socket, &mut self.up, "STOPPING=1")?;
        let exit = self.up.wait_timeout(WAIT)?;
        check(exit.success(), || {
            format!(
                "vmtun up exited with {exit} on SIGTERM:\n{}",
                self.up.stderr()
            )
        })?;
        let after = HostState::of(&self.lab.new)?;
        check(after == self.before, || {
            format!(
                "SIGTERM left the host changed:\n{}",
                self.before.diff(&after)
            )
        })
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        // A test that failed while `vmtun up` was frozen: wake it, so that the process
        // guard's SIGTERM (dropped next) can have it undo its changes.
        self.up.signal(libc::SIGCONT);
    }
}

/// `READY=1` comes when the host is set up: frozen (SIGSTOP) the moment it arrives, the new
/// host already has everything `up` sets up (the same as once `vmtun status` answers),
/// with the unit's capabilities only. SIGTERM (systemd's stop) sends `STOPPING=1`, and the
/// exit leaves the host as it was.
#[test]
fn ready_comes_once_the_routing_is_in_place_and_stop_undoes_it() -> Result<()> {
    preflight(&["nft", "setpriv"]);
    let scratch = Scratch::new("svc-ready")?;
    let lab = MigrationLab::build(1)?;
    let mut service = Service::start(&lab, &scratch)?;
    let at_ready = service.host_at_ready();
    service.up.signal(libc::SIGCONT);
    let at_ready = at_ready?;
    let (before, config, path) = (&service.before, &service.config, &service.path);
    let tun = config.name.as_str();
    for (what, present) in [
        (
            "the TUN device",
            at_ready.links.split(' ').any(|l| l == tun),
        ),
        (
            "the mark rule",
            at_ready.rules.contains("fwmark 0x1 lookup 201"),
        ),
        (
            "the subnet's rule",
            at_ready.rules.contains(&format!("to {SUBNET} lookup 201")),
        ),
        (
            "table 201's default route",
            at_ready.routes.contains(&format!("dev {tun} table 201")),
        ),
        (
            "the nftables table",
            at_ready.nft.contains("table ip vmtun"),
        ),
    ] {
        check(present, || {
            format!(
                "READY=1 came before {what} was in place:\n{}",
                before.diff(&at_ready)
            )
        })?;
    }
    let status = lab
        .new
        .run(VMTUN, &["status", "-c", &path.to_string_lossy()])?;
    let settled = HostState::of(&lab.new)?;
    check(at_ready == settled, || {
        format!(
            "the host changed after READY=1 (status answered: {status:?}):\n{}",
            at_ready.diff(&settled)
        )
    })?;

    service.stop()
}

/// A stop right after the start (`systemctl stop` as the unit becomes active): SIGTERM
/// the moment `READY=1` arrives undoes everything, as any later stop does; it does not
/// kill `vmtun up` with its changes left on the host.
#[test]
fn sigterm_as_soon_as_ready_undoes_everything() -> Result<()> {
    preflight(&["nft", "setpriv"]);
    let scratch = Scratch::new("svc-stopnow")?;
    let lab = MigrationLab::build(1)?;
    let mut service = Service::start(&lab, &scratch)?;
    service.host_at_ready()?;
    service.stop()
}

/// The shipped units (vmtun@.service, vmtun-follow-libvirt@.service) pass `systemd-analyze
/// verify` (scripts/verify-unit.sh), laid out as the package installs them: the binary in
/// usr/bin, the man pages their `Documentation=` names, the units in lib/systemd/system.
#[test]
fn the_unit_verifies() -> Result<()> {
    preflight(&["systemd-analyze"]);
    let scratch = Scratch::new("svc-verify")?;
    let root = scratch.path().join("root");
    for dir in ["usr/bin", "usr/share/man/man1", "lib/systemd/system"] {
        std::fs::create_dir_all(root.join(dir))
            .map_err(|e| LabError::io(format!("making {dir}"), e))?;
    }
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, root.join(to))
            .map(drop)
            .map_err(|e| LabError::io(format!("copying {}", from.display()), e))
    };
    copy(Path::new(VMTUN), "usr/bin/vmtun")?;
    for unit in ["vmtun@.service", "vmtun-follow-libvirt@.service"] {
        copy(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging")
                .join(unit),
            &format!("lib/systemd/system/{unit}"),
        )?;
    }
    let man = root.join("usr/share/man/man1");
    vmtun::lab::process::run_checked(
        "vmtun manpages",
        std::process::Command::new(VMTUN).arg("manpages").arg(&man),
    )?;
    let verify = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify-unit.sh");
    let out = std::process::Command::new(&verify)
        .arg(&root)
        .output()
        .map_err(|e| LabError::io(format!("running {}", verify.display()), e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    check(out.status.success(), || {
        format!("{} failed: {stderr}", verify.display())
    })
}
