//! A real VM for the lab: QEMU (TCG, so it runs where `/dev/kvm` cannot boot a stock kernel)
//! booting the guest `scripts/guest.sh` builds, on a tap in a host namespace, and live
//! migrated from one host to the other over QMP (`migrate`, QEMU's `MIGRATION` event when it
//! ends, then `query-migrate` for its figures). QMP's events are kept with their timestamps
//! (QEMU's wall clock, the lab's one clock): the source's `STOP` and the destination's
//! `RESUME` bound the guest's real pause. The argument lists and the reading of QMP's
//! answers and events are pure and unit-tested; the process and socket edges are thin.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::lab::qemu_tls::MigrationTls;
use crate::lab::{LabError, Netns, Process, Result, wait_for, wait_until};

/// The QEMU binary the driver runs.
pub const QEMU: &str = "qemu-system-x86_64";
/// The line the guest's init prints on the console once its network is configured.
pub const GUEST_UP: &str = "vmtun-guest: up";
/// The line it prints instead when eth0 could not be configured.
pub const GUEST_FAILED: &str = "vmtun-guest: failed";
/// The TCP port the destination QEMU listens on for the migration stream.
pub const MIGRATION_PORT: u16 = 4444;
/// The ceiling of a boot under TCG (3–8 s measured on a quiet machine; shared CI is slower).
pub const BOOT_WAIT: Duration = Duration::from_secs(120);
/// The ceiling of a migration of the small guest (about 0.5 s measured).
pub const MIGRATE_WAIT: Duration = Duration::from_secs(60);
/// The longest one read from QMP may block; waits for events re-arm it until their own
/// ceiling.
const QMP_READ_WAIT: Duration = Duration::from_secs(30);

/// Why this machine cannot run the lab's real VM, if it cannot: QEMU's tap needs
/// `/dev/net/tun`, and QEMU must be installed (`scripts/setup.sh` installs it).
pub fn missing_requirement() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (QEMU's tap needs it)".into());
    }
    (!crate::lab::process::on_path(QEMU))
        .then(|| format!("{QEMU} is not installed or not on PATH: run scripts/setup.sh"))
}

/// The guest's kernel and initramfs, as `scripts/guest.sh` leaves them.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Debian's kernel.
    pub kernel: PathBuf,
    /// The busybox initramfs with the virtio NIC's modules.
    pub initrd: PathBuf,
}

/// Where `scripts/guest.sh` keeps the guest, from the environment as the script reads it:
/// `$VMTUN_GUEST_DIR`, else `$XDG_CACHE_HOME/vmtun-guest`, else `$HOME/.cache/vmtun-guest`.
pub fn guest_dir(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| {
        var(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    set("VMTUN_GUEST_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|cache| cache.join("vmtun-guest")))
        .or_else(|| set("HOME").map(|home| home.join(".cache/vmtun-guest")))
}

impl GuestImage {
    /// The guest `scripts/guest.sh` built earlier ([`guest_dir`]), without building it:
    /// for `vmtun demo --real-vm`, which runs outside the source tree. The error says to
    /// run the script.
    pub fn cached() -> Result<Self> {
        let dir = guest_dir(|name| std::env::var_os(name)).ok_or_else(|| {
            LabError::Failed(
                "no guest directory: set HOME or VMTUN_GUEST_DIR, then run scripts/guest.sh".into(),
            )
        })?;
        let image = Self::in_dir(&dir);
        if image.kernel.is_file() && image.initrd.is_file() {
            Ok(image)
        } else {
            Err(LabError::Failed(format!(
                "no guest image in {} (vmlinuz, initrd): build it with scripts/guest.sh as this user, or set VMTUN_GUEST_DIR to where it is",
                dir.display()
            )))
        }
    }

    fn in_dir(dir: &Path) -> Self {
        Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd"),
        }
    }

    /// Runs `scripts/guest.sh` under `repo` (a cached no-op once built) and takes the
    /// directory it prints.
    pub fn build(repo: &Path) -> Result<Self> {
        let script = repo.join("scripts/guest.sh");
        let out = crate::lab::process::run_checked(
            "building the guest (scripts/guest.sh)",
            Command::new(&script).stderr(std::process::Stdio::inherit()),
        )?;
        let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
        Ok(Self::in_dir(&dir))
    }
}

/// What one QEMU runs: the guest on a tap, its QMP socket and console file.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The kernel and initramfs.
    pub image: GuestImage,
    /// The tap QEMU creates in its namespace (libvirt's `<target dev=...>`).
    pub tap: String,
    /// The guest NIC's MAC.
    pub mac: String,
    /// The guest's address (its init puts it as a /32 on eth0).
    pub addr: String,
    /// The guest's arbitrary default gateway.
    pub gateway: String,
    /// The QMP socket's path.
    pub qmp: PathBuf,
    /// Where the serial console goes.
    pub console: PathBuf,
    /// When the guest's RAM gets its host memory.
    pub ram: GuestRam,
    /// QEMU's own TLS on the migration stream, if it encrypts it.
    pub tls: Option<MigrationTls>,
}

/// When QEMU backs the guest's RAM with host memory. It decides how long a destination
/// takes to load what the pause carries: a page the guest dirtied late that lands in a
/// region the destination never touched costs a fresh (huge) page, zeroed by the kernel on
/// the destination's loading thread. On this machine kind (a virtual machine whose own
/// memory is backed lazily) that zeroing took 91 % of a ~210 ms pause (perf on the
/// destination QEMU, 2026-12-03), whatever the migration path; allocated up front the
/// pause was 23–28 ms. libvirt's `<allocation mode='immediate'/>` is the same choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuestRam {
    /// All of it at start (`-mem-prealloc`): the pause measures the migration.
    #[default]
    Preallocated,
    /// On first touch, QEMU's default: the pause includes the destination's page zeroing.
    Lazy,
}

impl GuestRam {
    /// How reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            GuestRam::Preallocated => "preallocated",
            GuestRam::Lazy => "allocated on first touch",
        }
    }
}

/// QEMU's arguments for `spec`: TCG on q35, no default devices, the kernel booted directly
/// with the address and gateway on its command line, one virtio NIC on the tap. A source
/// starts paused (`-S`, so the tap can get its MAC before the guest sends), a destination
/// waits with `-incoming` for the migration stream on `incoming`.
pub fn qemu_args(spec: &VmSpec, incoming: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    let kernel_cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmtun.addr={} vmtun.gw={}",
        spec.addr, spec.gateway
    );
    args.extend([
        "-serial".into(),
        format!("file:{}", spec.console.display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", spec.qmp.display()),
        "-kernel".into(),
        spec.image.kernel.display().to_string(),
        "-initrd".into(),
        spec.image.initrd.display().to_string(),
        "-append".into(),
        kernel_cmdline,
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
    ]);
    if spec.ram == GuestRam::Preallocated {
        args.push("-mem-prealloc".into());
    }
    if let Some(tls) = &spec.tls {
        args.extend(tls.qemu_args());
    }
    match incoming {
        Some(uri) => args.extend(["-incoming".into(), uri.into()]),
        None => args.push("-S".into()),
    }
    args
}

/// QEMU's figures of a completed migration (`query-migrate`): how long it took and what
/// crossed the wire, above all while the guest was stopped, so that a report can say
/// what the guest's pause carried.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct MigrationStats {
    /// `total-time`, ms.
    pub total_ms: u64,
    /// `downtime`, ms: how long the guest was stopped, as the source measures it.
    pub downtime_ms: u64,
    /// `setup-time`, ms.
    pub setup_ms: u64,
    /// `ram.transferred`: the bytes of the whole stream.
    pub transferred_bytes: u64,
    /// `ram.downtime-bytes` (QEMU 9.0 and later): the bytes sent while the guest was
    /// stopped, the last dirty pages and the devices' state.
    pub downtime_bytes: Option<u64>,
    /// `ram.mbps`: QEMU's throughput estimate (Mbit/s), from which it decides when the
    /// rest fits into `downtime-limit`.
    pub mbps: f64,
    /// `ram.dirty-sync-count`: the passes over the dirty bitmap (one per iteration).
    pub dirty_syncs: u64,
}

impl MigrationStats {
    /// Reads `query-migrate`'s `return` object of a completed migration.
    pub fn from_query(ret: &Value) -> Self {
        let ram = &ret["ram"];
        Self {
            total_ms: ret["total-time"].as_u64().unwrap_or(0),
            downtime_ms: ret["downtime"].as_u64().unwrap_or(0),
            setup_ms: ret["setup-time"].as_u64().unwrap_or(0),
            transferred_bytes: ram["transferred"].as_u64().unwrap_or(0),
            downtime_bytes: ram["downtime-bytes"].as_u64(),
            mbps: ram["mbps"].as_f64().unwrap_or(0.0),
            dirty_syncs: ram["dirty-sync-count"].as_u64().unwrap_or(0),
        }
    }
}

/// One of QEMU's numeric migration parameters (`migrate-set-parameters`), e.g.
/// `downtime-limit=50` (ms) or `max-bandwidth=1073741824` (bytes/s): what an operator sets
/// with `virsh migrate-setmaxdowntime` or `--bandwidth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationParameter {
    /// QEMU's name of it.
    pub name: String,
    /// Its value.
    pub value: u64,
}

impl std::str::FromStr for MigrationParameter {
    type Err = String;

    /// Reads `NAME=NUMBER`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not NAME=NUMBER, e.g. downtime-limit=50"))?;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(format!(
                "{name:?} is not a QEMU migration parameter name (lowercase and dashes, e.g. downtime-limit)"
            ));
        }
        let value = value
            .parse()
            .map_err(|_| format!("{value:?} in {text:?} is not a whole number"))?;
        Ok(Self {
            name: name.to_owned(),
            value,
        })
    }
}

/// Where a migration stands, from `query-migrate`.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationState {
    /// Still copying (or setting up).
    Running(String),
    /// Done: QEMU's own figures.
    Completed(MigrationStats),
    /// Failed or cancelled, with QEMU's reason.
    Failed(String),
}

impl MigrationState {
    /// Reads `query-migrate`'s `return` object.
    pub fn from_query(ret: &Value) -> Self {
        let status = ret["status"].as_str().unwrap_or("none").to_owned();
        match status.as_str() {
            "completed" => Self::Completed(MigrationStats::from_query(ret)),
            "failed" | "cancelled" => Self::Failed(format!(
                "{status}: {}",
                ret["error-desc"].as_str().unwrap_or("no reason given")
            )),
            _ => Self::Running(status),
        }
    }
}

/// When QEMU emitted `event`, in Unix nanoseconds: its `timestamp` (seconds and
/// microseconds of the host's wall clock).
pub fn event_unix_ns(event: &Value) -> Option<u64> {
    let stamp = &event["timestamp"];
    let seconds = stamp["seconds"].as_u64()?;
    let micros = stamp["microseconds"].as_u64()?;
    seconds
        .checked_mul(1_000_000_000)?
        .checked_add(micros * 1_000)
}

/// Whether `message` is the event called `name`.
pub fn is_event(message: &Value, name: &str) -> bool {
    message["event"].as_str() == Some(name)
}

/// Whether `message` is the `MIGRATION` event of a migration's end (completed, failed or
/// cancelled); QEMU sends those once the `events` capability is on.
pub fn is_migration_end(message: &Value) -> bool {
    is_event(message, "MIGRATION")
        && matches!(
            message["data"]["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
}

/// The states of the `MIGRATION` events among `events`, with their times (Unix ns), in
/// order; events without a status or a timestamp are left out.
pub fn migration_states(events: &[Value]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter(|e| is_event(e, "MIGRATION"))
        .filter_map(|e| Some((e["data"]["status"].as_str()?.to_owned(), event_unix_ns(e)?)))
        .collect()
}

/// A QMP connection: commands in, answers out; asynchronous events are kept, in order.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path` (waiting for QEMU to create it) and leaves capabilities
    /// negotiation mode.
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = wait_for(Duration::from_secs(30), "QEMU's QMP socket", || {
            UnixStream::connect(path).ok()
        })?;
        stream
            .set_read_timeout(Some(QMP_READ_WAIT))
            .map_err(|e| LabError::io("setting QMP's read timeout", e))?;
        let reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|e| LabError::io("cloning the QMP socket", e))?,
        );
        let mut qmp = Self {
            writer: stream,
            reader,
            events: Vec::new(),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(LabError::Failed(format!("no QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| LabError::io("reading from QMP", e))?;
        if n == 0 {
            return Err(LabError::Failed("QEMU closed its QMP socket".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| LabError::Failed(format!("QMP sent no JSON ({e}): {line}")))
    }

    /// Runs `command` with `arguments`; its `return` value, or QEMU's error as the error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}")
            .map_err(|e| LabError::io(format!("sending {command} to QMP"), e))?;
        loop {
            let answer = self.read()?;
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = answer.get("error") {
                return Err(LabError::Failed(format!("QMP {command}: {error}")));
            }
            if answer.get("event").is_some() {
                self.events.push(answer);
            }
        }
    }

    /// The events QEMU sent so far, oldest first.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Waits at most `timeout` for an event that `matches` (one already received counts);
    /// that event.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events.iter().find(|e| matches(e)) {
                return Ok(event.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LabError::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.min(QMP_READ_WAIT)))
                .map_err(|e| LabError::io("setting QMP's read timeout", e))?;
            let message = self.read();
            self.reader
                .get_ref()
                .set_read_timeout(Some(QMP_READ_WAIT))
                .map_err(|e| LabError::io("setting QMP's read timeout", e))?;
            match message {
                Ok(message) if message.get("event").is_some() => self.events.push(message),
                Ok(_) => {}
                Err(LabError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A running QEMU in a host namespace, killed (by PID) on drop.
pub struct Qemu {
    /// The process guard.
    pub process: Process,
    /// Its QMP connection.
    pub qmp: Qmp,
    /// What it runs.
    pub spec: VmSpec,
}

impl Qemu {
    /// Starts QEMU in `ns` for `spec` (paused as a source, or waiting on `incoming`), then
    /// gives the tap it created `tap_mac` and brings it up, as libvirt does.
    pub fn start(
        ns: &Netns,
        label: &str,
        log_dir: &Path,
        spec: VmSpec,
        incoming: Option<&str>,
        tap_mac: &str,
    ) -> Result<Self> {
        let mut cmd = ns.command(QEMU);
        cmd.args(qemu_args(&spec, incoming));
        let process = Process::spawn(label, log_dir, cmd)?;
        let qmp = Qmp::connect(&spec.qmp)?;
        wait_until(Duration::from_secs(10), "QEMU's tap", || {
            ns.has_link(&spec.tap)
        })?;
        ns.ip(&["link", "set", &spec.tap, "address", tap_mac])?;
        ns.link_up(&spec.tap)?;
        Ok(Self { process, qmp, spec })
    }

    /// Runs a paused source guest (`cont`).
    pub fn resume(&mut self) -> Result<()> {
        self.qmp.execute("cont", json!({})).map(drop)
    }

    /// The guest's console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.spec.console).unwrap_or_default()
    }

    /// Waits until the guest's init says its network is up (or could not be).
    pub fn wait_booted(&self) -> Result<()> {
        let console = wait_for(BOOT_WAIT, "the guest to boot", || {
            let console = self.console();
            (console.contains(GUEST_UP) || console.contains(GUEST_FAILED)).then_some(console)
        })?;
        if console.contains(GUEST_UP) {
            Ok(())
        } else {
            Err(LabError::Failed(format!(
                "the guest booted without its network; its console:\n{console}"
            )))
        }
    }

    /// Live-migrates the guest to `uri` (the destination's `-incoming`) with QEMU's
    /// migration `parameters` set first (`migrate-set-parameters`, e.g. `downtime-limit`;
    /// an empty list leaves QEMU's defaults) and waits for the end (QEMU's `MIGRATION`
    /// event, so that the caller learns it at once, as libvirt does); QEMU's figures of it.
    pub fn migrate(
        &mut self,
        uri: &str,
        parameters: &[MigrationParameter],
    ) -> Result<MigrationStats> {
        self.start_migration(uri, parameters)?;
        self.finish_migration()
    }

    /// Starts the live migration to `uri` as [`Self::migrate`] does (with TLS if the spec
    /// has credentials), and returns at once.
    pub fn start_migration(&mut self, uri: &str, parameters: &[MigrationParameter]) -> Result<()> {
        self.enable_migration_events()?;
        let mut object = self
            .spec
            .tls
            .as_ref()
            .map(MigrationTls::source_parameters)
            .unwrap_or_default();
        object.extend(parameters.iter().map(|p| (p.name.clone(), json!(p.value))));
        if !object.is_empty() {
            self.qmp
                .execute("migrate-set-parameters", Value::Object(object))?;
        }
        self.qmp.execute("migrate", json!({ "uri": uri })).map(drop)
    }

    /// Waits for the migration started here to stop the guest for its last stage (the
    /// `STOP` event), or to end without that; when the guest stopped (Unix ns), if it did.
    pub fn wait_stopped(&mut self) -> Result<Option<u64>> {
        self.qmp
            .wait_event(MIGRATE_WAIT, "the source to stop the guest", |e| {
                is_event(e, "STOP") || is_migration_end(e)
            })?;
        Ok(self.stopped_at())
    }

    /// Waits for the end of the migration started here; QEMU's figures of it.
    pub fn finish_migration(&mut self) -> Result<MigrationStats> {
        self.qmp
            .wait_event(MIGRATE_WAIT, "the migration to end", is_migration_end)?;
        let done = MigrationState::from_query(&self.qmp.execute("query-migrate", json!({}))?);
        match done {
            MigrationState::Completed(stats) => Ok(stats),
            other => Err(LabError::Failed(format!("migration {other:?}"))),
        }
    }

    /// Asks QEMU for a `MIGRATION` event at each change of the migration's state (the
    /// `events` capability).
    fn enable_migration_events(&mut self) -> Result<()> {
        self.qmp
            .execute(
                "migrate-set-capabilities",
                json!({ "capabilities": [{ "capability": "events", "state": true }] }),
            )
            .map(drop)
    }

    /// The `MIGRATION` events received so far: each state with when QEMU entered it (Unix
    /// ns), oldest first.
    pub fn migration_events(&self) -> Vec<(String, u64)> {
        migration_states(self.qmp.events())
    }

    /// When the guest last stopped here (the `STOP` event; on a source, the migration's
    /// final stage), in Unix ns.
    pub fn stopped_at(&self) -> Option<u64> {
        let stop = self.qmp.events().iter().rfind(|e| is_event(e, "STOP"))?;
        event_unix_ns(stop)
    }

    /// Waits at most `timeout` for the guest to run here (the `RESUME` event; on a
    /// destination, the end of the migration's pause); when, in Unix ns.
    pub fn wait_resumed(&mut self, timeout: Duration) -> Result<u64> {
        let resume = self
            .qmp
            .wait_event(timeout, "the guest to resume (QMP RESUME)", |e| {
                is_event(e, "RESUME")
            })?;
        event_unix_ns(&resume)
            .ok_or_else(|| LabError::Failed(format!("QMP RESUME without a timestamp: {resume}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            image: GuestImage {
                kernel: "/g/vmlinuz".into(),
                initrd: "/g/initrd".into(),
            },
            tap: "vif0".into(),
            mac: "52:54:00:00:71:02".into(),
            addr: "203.0.113.2".into(),
            gateway: "192.0.2.1".into(),
            qmp: "/s/qmp".into(),
            console: "/s/console".into(),
            ram: GuestRam::Preallocated,
            tls: None,
        }
    }

    #[test]
    fn a_source_starts_paused_and_a_destination_waits_for_the_stream() {
        let source = qemu_args(&spec(), None);
        assert!(source.contains(&"-S".to_owned()));
        assert!(!source.contains(&"-incoming".to_owned()));
        assert!(source.contains(&"q35,accel=tcg".to_owned()));
        assert!(source.contains(&"tap,id=n0,ifname=vif0,script=no,downscript=no".to_owned()));
        assert!(source.contains(&"virtio-net-pci,netdev=n0,mac=52:54:00:00:71:02".to_owned()));
        assert!(
            source
                .iter()
                .any(|a| a.ends_with("vmtun.addr=203.0.113.2 vmtun.gw=192.0.2.1"))
        );
        let dest = qemu_args(&spec(), Some("tcp:0.0.0.0:4444"));
        assert!(!dest.contains(&"-S".to_owned()));
        let at = dest
            .iter()
            .position(|a| a == "-incoming")
            .expect("-incoming");
        assert_eq!(dest[at + 1], "tcp:0.0.0.0:4444");
        assert!(source.contains(&"-mem-prealloc".to_owned()));
        assert!(dest.contains(&"-mem-prealloc".to_owned()));
        let lazy = VmSpec {
            ram: GuestRam::Lazy,
            ..spec()
        };
        assert!(!qemu_args(&lazy, None).contains(&"-mem-prealloc".to_owned()));
        assert!(!source.contains(&"-object".to_owned()));
        let tls = MigrationTls {
            dir: "/s/tls/server".into(),
            endpoint: crate::lab::qemu_tls::Endpoint::Server,
        };
        let with_tls = VmSpec {
            tls: Some(tls.clone()),
            ..spec()
        };
        assert!(
            qemu_args(&with_tls, Some("tcp:0.0.0.0:4444")).ends_with(
                &tls.qemu_args()
                    .into_iter()
                    .chain(["-incoming".into(), "tcp:0.0.0.0:4444".into()])
                    .collect::<Vec<_>>()
            )
        );
    }

    #[test]
    fn events_carry_their_time_and_the_migrations_end_is_recognised() {
        let stop = json!({"event": "STOP", "timestamp": {"seconds": 1_700_000_000u64, "microseconds": 250_001}});
        assert_eq!(event_unix_ns(&stop), Some(1_700_000_000_250_001_000));
        assert!(is_event(&stop, "STOP") && !is_event(&stop, "RESUME"));
        assert_eq!(event_unix_ns(&json!({"event": "STOP"})), None);
        let migration = |status: &str| json!({"event": "MIGRATION", "data": {"status": status}});
        assert!(is_migration_end(&migration("completed")));
        assert!(is_migration_end(&migration("failed")));
        assert!(!is_migration_end(&migration("active")));
        assert!(!is_migration_end(&migration("device")));
        assert!(!is_migration_end(&stop));
        let at = |status: &str, micros: u64| {
            json!({"event": "MIGRATION", "data": {"status": status},
                   "timestamp": {"seconds": 1u64, "microseconds": micros}})
        };
        assert_eq!(
            migration_states(&[
                at("active", 1),
                stop.clone(),
                json!({"event": "MIGRATION", "data": {"status": "device"}}),
                at("completed", 3),
            ]),
            [
                ("active".to_owned(), 1_000_001_000),
                ("completed".to_owned(), 1_000_003_000)
            ]
        );
    }

    #[test]
    fn the_guest_dir_is_found_as_guest_sh_finds_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            guest_dir(env(&[("VMTUN_GUEST_DIR", "/g"), ("HOME", "/root")])),
            Some(PathBuf::from("/g"))
        );
        assert_eq!(
            guest_dir(env(&[("XDG_CACHE_HOME", "/c"), ("HOME", "/root")])),
            Some(PathBuf::from("/c/vmtun-guest"))
        );
        assert_eq!(
            guest_dir(env(&[("VMTUN_GUEST_DIR", ""), ("HOME", "/root")])),
            Some(PathBuf::from("/root/.cache/vmtun-guest"))
        );
        assert_eq!(guest_dir(env(&[])), None);
    }

    #[test]
    fn migration_parameters_read_as_name_equals_number() {
        let p: MigrationParameter = "downtime-limit=50".parse().unwrap();
        assert_eq!((p.name.as_str(), p.value), ("downtime-limit", 50));
        assert!("downtime-limit".parse::<MigrationParameter>().is_err());
        assert!("downtime-limit=fast".parse::<MigrationParameter>().is_err());
        assert!("Downtime=1".parse::<MigrationParameter>().is_err());
        assert!("=1".parse::<MigrationParameter>().is_err());
    }

    #[test]
    fn a_completed_migration_says_what_crossed_while_the_guest_was_stopped() {
        // QEMU 10.0's answer, abridged.
        let ret = json!({
            "status": "completed", "total-time": 612, "downtime": 23, "setup-time": 4,
            "ram": {"transferred": 9_512_345u64, "downtime-bytes": 301_234u64,
                    "mbps": 268.4, "dirty-sync-count": 3, "remaining": 0}
        });
        assert_eq!(
            MigrationState::from_query(&ret),
            MigrationState::Completed(MigrationStats {
                total_ms: 612,
                downtime_ms: 23,
                setup_ms: 4,
                transferred_bytes: 9_512_345,
                downtime_bytes: Some(301_234),
                mbps: 268.4,
                dirty_syncs: 3,
            })
        );
        // Before QEMU 9.0 there is no downtime-bytes: unknown, not zero.
        let old = json!({"status": "completed", "ram": {"transferred": 1}});
        assert_eq!(MigrationStats::from_query(&old).downtime_bytes, None);
    }

    #[test]
    fn query_migrate_reads_as_running_completed_or_failed() {
        assert_eq!(
            MigrationState::from_query(&json!({"status": "active"})),
            MigrationState::Running("active".into())
        );
        assert_eq!(
            MigrationState::from_query(&json!({})),
            MigrationState::Running("none".into())
        );
        assert_eq!(
            MigrationState::from_query(
                &json!({"status": "completed", "total-time": 512, "downtime": 41})
            ),
            MigrationState::Completed(MigrationStats {
                total_ms: 512,
                downtime_ms: 41,
                ..MigrationStats::default()
            })
        );
        assert_eq!(
            MigrationState::from_query(&json!({"status": "failed", "error-desc": "refused"})),
            MigrationState::Failed("failed: refused".into())
        );
    }
}
