//! The hosts' side of the scenario: `vmtun up` with the configs a user would write
//! ([`HostConfig`], keys from `vmtun keygen`/`pubkey`), its `status --json`, `vif-up` and
//! `down`; and the seed's commands for the new host, to compare with.

use super::*;
use crate::lab::{self, LabError, Netns, Process, Result, Scratch};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long `vmtun up` may take to come up, and other host commands to answer.
pub const HOST_WAIT: Duration = Duration::from_secs(15);

/// A key pair as `vmtun keygen` / `vmtun pubkey` print them.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// Private key, base64.
    pub private: String,
    /// Public key, base64.
    pub public: String,
}

impl KeyPair {
    /// Runs `vmtun keygen`, then `vmtun pubkey` on its output.
    pub fn generate(vmtun: &Path) -> Result<Self> {
        let private = lab::process::run_checked(
            "generating a key (vmtun keygen)",
            Command::new(vmtun).arg("keygen"),
        )?
        .trim()
        .to_owned();
        let mut child = Command::new(vmtun)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io("running vmtun pubkey", e))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(format!("{private}\n").as_bytes())
            .map_err(|e| LabError::io("writing to vmtun pubkey", e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io("waiting for vmtun pubkey", e))?;
        if !out.status.success() {
            return Err(LabError::Failed(format!(
                "vmtun pubkey failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Self { private, public })
    }
}

/// `[migration]` as the scenario writes it.
#[derive(Debug, Clone)]
pub struct MigrationSection {
    /// `"old"` or `"new"`.
    pub role: &'static str,
    /// The other host's tunnel address.
    pub via: String,
    /// `"auto"` or `"manual"` (role new).
    pub cutover: &'static str,
    /// `subnets`: the VMs' subnets.
    pub subnets: Vec<String>,
    /// `table` (role new): where the VMs' replies are routed through the tunnel.
    pub table: u32,
    /// `fwmark` (role new): the mark that selects `table`.
    pub fwmark: u32,
    /// `cutover_hold_ms` (role new), written when not zero.
    pub cutover_hold_ms: u32,
    /// `handover` (both roles: `"first-frame"` or `"vif-gone"`), written when set; unset,
    /// vmtun's default (`"first-frame"`).
    pub handover: Option<&'static str>,
}

impl MigrationSection {
    /// The scenario's section for `role`: the one subnet [`SUBNET`], [`TABLE`], [`FWMARK`].
    pub fn new(role: &'static str, via: &str, cutover: &'static str) -> Self {
        Self {
            role,
            via: via.to_owned(),
            cutover,
            subnets: vec![SUBNET.to_owned()],
            table: TABLE,
            fwmark: FWMARK,
            cutover_hold_ms: 0,
            handover: None,
        }
    }
}

/// A `[[vm]]` entry: a VM's interface on the host and its addresses.
#[derive(Debug, Clone)]
pub struct VmEntry {
    /// `vif`, e.g. `vif0`.
    pub vif: String,
    /// `addresses`.
    pub addresses: Vec<String>,
}

impl VmEntry {
    /// The scenario's VM: [`VIF`] with [`VM_ADDR`].
    pub fn scenario() -> Self {
        Self::of(Guest::FIRST, &[Family::Ipv4])
    }

    /// The lab's VM `guest` with its addresses of `families`.
    pub fn of(guest: Guest, families: &[Family]) -> Self {
        Self {
            vif: guest.vif(),
            addresses: families
                .iter()
                .map(|f| guest.addr(*f).to_string())
                .collect(),
        }
    }
}

/// One host's vmtun config.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// TUN device name, unique on the machine ([`lab::unique_ifname`]).
    pub name: String,
    /// This host's keys.
    pub keys: KeyPair,
    /// Tunnel address with prefix.
    pub address: String,
    /// The other host's public key.
    pub peer_public: String,
    /// The other host's `ip:port`.
    pub peer_endpoint: String,
    /// The other host's allowed IPs.
    pub peer_allowed_ips: Vec<String>,
    /// The move's section; `None` for a plain tunnel.
    pub migration: Option<MigrationSection>,
    /// The `[[vm]]` entries (written only with a `[migration]` section).
    pub vms: Vec<VmEntry>,
}

impl HostConfig {
    /// The old host's config: role old, the subnet via the new host's tunnel address, the
    /// new host's peer allowing every address (VMs still here after the switch are reached
    /// through it and reach everything through it).
    pub fn old(keys: &KeyPair, peer: &KeyPair) -> Self {
        Self {
            name: lab::unique_ifname("vo"),
            keys: keys.clone(),
            address: format!("{TUNNEL_OLD}/{TUNNEL_PREFIX}"),
            peer_public: peer.public.clone(),
            peer_endpoint: format!("{NEW}:{TUNNEL_PORT}"),
            peer_allowed_ips: vec!["0.0.0.0/0".to_owned()],
            migration: Some(MigrationSection::new("old", TUNNEL_NEW, "auto")),
            vms: vec![VmEntry::scenario()],
        }
    }

    /// Makes a migration config carry the VM's traffic of `families` (in a lab built with
    /// them): their subnets, the VM's addresses, and the peer's allowed IPs (every address,
    /// of IPv4 for the tunnel address and of each family for the VMs' traffic).
    pub fn carrying(mut self, families: &[Family]) -> Self {
        let Some(m) = self.migration.as_mut() else {
            return self;
        };
        m.subnets = families.iter().map(|f| subnet(*f).to_owned()).collect();
        for (index, vm) in (0..).zip(&mut self.vms) {
            *vm = VmEntry::of(Guest(index), families);
        }
        self.peer_allowed_ips = vec!["0.0.0.0/0".to_owned()];
        if families.contains(&Family::Ipv6) {
            self.peer_allowed_ips.push("::/0".to_owned());
        }
        self
    }

    /// Makes a migration config name every VM of `lab` (in guest order), with the
    /// addresses of the lab's families.
    pub fn with_guests(mut self, lab: &MigrationLab) -> Self {
        self.vms = lab
            .guests()
            .map(|g| VmEntry::of(g, &lab.families))
            .collect();
        self
    }

    /// The new host's config: role new with `cutover` (`"auto"`/`"manual"`), the old host
    /// as the peer for every destination (VM replies go anywhere).
    pub fn new_host(keys: &KeyPair, peer: &KeyPair, cutover: &'static str) -> Self {
        Self {
            name: lab::unique_ifname("vn"),
            keys: keys.clone(),
            address: format!("{TUNNEL_NEW}/{TUNNEL_PREFIX}"),
            peer_public: peer.public.clone(),
            peer_endpoint: format!("{OLD}:{TUNNEL_PORT}"),
            peer_allowed_ips: vec!["0.0.0.0/0".to_owned()],
            migration: Some(MigrationSection::new("new", TUNNEL_OLD, cutover)),
            vms: vec![VmEntry::scenario()],
        }
    }

    /// Sets `[migration] handover` (`"first-frame"` or `"vif-gone"`) in a migration config.
    pub fn with_handover(mut self, handover: &'static str) -> Self {
        if let Some(m) = self.migration.as_mut() {
            m.handover = Some(handover);
        }
        self
    }

    /// The TOML the user would write.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "[interface]\nname = {:?}\nprivate_key = {:?}\nlisten_port = {TUNNEL_PORT}\naddress = {:?}\n\n\
             [[peer]]\npublic_key = {:?}\nendpoint = {:?}\nallowed_ips = {:?}\n",
            self.name,
            self.keys.private,
            self.address,
            self.peer_public,
            self.peer_endpoint,
            self.peer_allowed_ips
        );
        if let Some(m) = &self.migration {
            text += &format!(
                "\n[migration]\nrole = {:?}\nsubnets = {:?}\nvia = {:?}\nvif_prefix = {VIF_PREFIX:?}\n",
                m.role, m.subnets, m.via
            );
            if let Some(handover) = m.handover {
                text += &format!("handover = {handover:?}\n");
            }
            if m.role == "new" {
                text += &format!(
                    "bridge = {BRIDGE:?}\ntable = {}\nfwmark = {}\ncutover = {:?}\n",
                    m.table, m.fwmark, m.cutover
                );
                if m.cutover_hold_ms != 0 {
                    text += &format!("cutover_hold_ms = {}\n", m.cutover_hold_ms);
                }
            }
            for vm in &self.vms {
                text += &format!(
                    "\n[[vm]]\nvif = {:?}\naddresses = {:?}\n",
                    vm.vif, vm.addresses
                );
            }
        }
        text
    }
}

/// `vmtun up` running in a host namespace. Dropping it stops the process (SIGTERM, so it
/// undoes what it did; SIGKILL after a grace period).
pub struct HostVmtun<'a> {
    ns: &'a Netns,
    vmtun: PathBuf,
    log_dir: PathBuf,
    /// The config it runs with.
    pub config: HostConfig,
    /// Where that config is written.
    pub path: PathBuf,
    process: Option<Process>,
}

impl<'a> HostVmtun<'a> {
    /// Writes `config` into `scratch` (mode 0600) and runs `vmtun up -c` in `ns`; returns
    /// once `status` answers.
    pub fn start(
        ns: &'a Netns,
        vmtun: &Path,
        scratch: &Scratch,
        config: HostConfig,
    ) -> Result<Self> {
        let mut host = Self::prepare(ns, vmtun, scratch, config)?;
        host.launch()?;
        Ok(host)
    }

    /// Writes `config` into `scratch` (mode 0600) without starting anything, for commands
    /// that run before `up` (`vif-up`) and tests that snapshot the host first.
    pub fn prepare(
        ns: &'a Netns,
        vmtun: &Path,
        scratch: &Scratch,
        config: HostConfig,
    ) -> Result<Self> {
        let path = scratch.write(&format!("{}.toml", config.name), &config.to_toml(), 0o600)?;
        Ok(Self {
            ns,
            vmtun: vmtun.to_owned(),
            log_dir: scratch.path().to_owned(),
            config,
            path,
            process: None,
        })
    }

    /// Where this instance keeps its files (its namespace's directory in `/run/vmtun`).
    pub fn files(&self) -> Result<crate::control::Paths> {
        Ok(crate::control::Paths::in_netns(
            self.ns.id()?,
            &self.config.name,
        ))
    }

    /// Starts `vmtun up` (again, after [`Self::kill`]); returns once `status` answers.
    pub fn launch(&mut self) -> Result<()> {
        let mut cmd = self.ns.command(&self.vmtun);
        cmd.args(["up", "-c"])
            .arg(&self.path)
            .env("RUST_LOG", "vmtun=debug");
        let mut process =
            Process::spawn(&format!("vmtun-{}", self.config.name), &self.log_dir, cmd)?;
        let socket = self.files()?.socket;
        let what = format!("vmtun up ({})", self.config.name);
        let ready = lab::wait_for(HOST_WAIT, &what, || {
            if let Some(status) = process.exit_status() {
                return Some(Err(LabError::Failed(format!(
                    "vmtun up -c {} exited with {status} before coming up:\n{}",
                    self.path.display(),
                    process.stderr_tail()
                ))));
            }
            // The socket appears a moment before the instance answers on it.
            (socket.exists() && self.status().is_ok()).then_some(Ok(()))
        });
        let outcome = match ready {
            Ok(result) => result,
            Err(timeout) => Err(LabError::Failed(format!(
                "{timeout}\n{}",
                process.stderr_tail()
            ))),
        };
        self.process = Some(process);
        outcome
    }

    /// The TUN device's name.
    pub fn ifname(&self) -> &str {
        &self.config.name
    }

    /// Runs `vmtun ARGS -c FILE` in the namespace to completion; its stdout.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let path = self.path.to_string_lossy().into_owned();
        let vmtun = self.vmtun.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-c", &path]);
        self.ns.run(&vmtun, &all)
    }

    /// Runs `vmtun ARGS -c FILE` in the namespace to completion, whatever its exit status:
    /// for tests of the command line's own output and exit codes.
    pub fn output(&self, args: &[&str]) -> Result<std::process::Output> {
        self.ns
            .command(&self.vmtun)
            .args(args)
            .arg("-c")
            .arg(&self.path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::io(format!("running vmtun {}", args.join(" ")), e))
    }

    /// `vmtun status -c FILE --json`.
    pub fn status(&self) -> Result<Value> {
        let out = self.command(&["status", "--json"])?;
        serde_json::from_str(&out).map_err(|e| {
            LabError::Failed(format!(
                "`vmtun status --json` printed invalid JSON ({e}): {out}"
            ))
        })
    }

    /// `vmtun vif-up IFACE -c FILE`.
    pub fn vif_up(&self, iface: &str) -> Result<()> {
        self.command(&["vif-up", iface]).map(drop)
    }

    /// `request` on the instance's control socket, from this process (no `vmtun` process
    /// started: what a manager reacting to QEMU's events does, as quickly).
    pub fn request(&self, request: &crate::control::Request) -> Result<()> {
        let socket = self.files()?.socket;
        match crate::control::request_at(&socket, request) {
            Ok(crate::control::Reply::Ok(_)) => Ok(()),
            Ok(crate::control::Reply::Error(e)) => Err(LabError::Failed(format!(
                "{request:?} on {}: {e}",
                self.config.name
            ))),
            Err(e) => Err(LabError::Failed(format!("{request:?}: {e:#}"))),
        }
    }

    /// `vmtun cutover -c FILE`.
    pub fn cutover(&self) -> Result<()> {
        self.command(&["cutover"]).map(drop)
    }

    /// `vmtun down -c FILE`, then waits for the `up` process (if any still runs) to exit.
    pub fn down(&mut self) -> Result<()> {
        self.command(&["down"])?;
        if let Some(process) = self.process.as_mut() {
            process.wait_timeout(HOST_WAIT)?;
        }
        Ok(())
    }

    /// SIGTERM and wait: the normal exit, which undoes everything.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        match self.process.as_mut() {
            Some(process) => {
                process.signal(libc::SIGTERM);
                process.wait_timeout(HOST_WAIT)
            }
            None => Err(LabError::Failed("vmtun up is not running".into())),
        }
    }

    /// SIGKILL: a crash, nothing undone.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill()?;
        }
        Ok(())
    }

    /// The process's stderr (its log).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(Process::stderr)
            .unwrap_or_default()
    }
}

impl Drop for HostVmtun<'_> {
    fn drop(&mut self) {
        drop(self.process.take());
        // A killed instance leaves its files in the shared /run, and any instance its cutover
        // memory: remove this device's only, and its namespace's directory once empty.
        if let Ok(files) = self.files() {
            for file in [files.socket, files.lock, files.state, files.cutover_memory] {
                let _ = std::fs::remove_file(file);
            }
            let _ = std::fs::remove_dir(files.dir);
        }
    }
}

/// What the new host's `status --json` says about the cutover.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CutoverState {
    /// `migration.cutover.phase`, e.g. `watching`, `done`.
    pub phase: Option<String>,
    /// The first record's `latency_ns`.
    pub latency_ns: Option<u64>,
    /// Its `packet_time_unix_ns`.
    pub packet_time_unix_ns: Option<u64>,
    /// Its `rule_gone_time_unix_ns`.
    pub rule_gone_time_unix_ns: Option<u64>,
    /// Its `detection_delay_ns`: packet received to packet recognised.
    pub detection_delay_ns: Option<u64>,
    /// Its `removal_ns`: packet recognised to rule removed.
    pub removal_ns: Option<u64>,
    /// `migration.native_subnets`: what the kernel's set had seen arrive natively.
    pub native_subnets: Vec<String>,
    /// `migration.cutover.waiting`: subnets whose first native packet is still awaited.
    pub waiting: Vec<String>,
    /// The subnet of every cutover record, in order.
    pub cut_over: Vec<String>,
}

impl CutoverState {
    /// Reads `migration.cutover` from a status document.
    pub fn from_status(status: &Value) -> Self {
        let cutover = &status["migration"]["cutover"];
        let record = &cutover["records"][0];
        let strings = |list: &Value| -> Vec<String> {
            list.as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            phase: cutover["phase"].as_str().map(str::to_owned),
            latency_ns: record["latency_ns"].as_u64(),
            packet_time_unix_ns: record["packet_time_unix_ns"].as_u64(),
            rule_gone_time_unix_ns: record["rule_gone_time_unix_ns"].as_u64(),
            detection_delay_ns: record["detection_delay_ns"].as_u64(),
            removal_ns: record["removal_ns"].as_u64(),
            native_subnets: strings(&status["migration"]["native_subnets"]),
            waiting: strings(&cutover["waiting"]),
            cut_over: cutover["records"]
                .as_array()
                .map(|records| {
                    records
                        .iter()
                        .filter_map(|r| r["subnet"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether the cutover is complete.
    pub fn is_done(&self) -> bool {
        self.phase.as_deref() == Some("done")
    }
}

/// Whether vmtun's mark rule is in `ns`'s netfilter ruleset (rules carry the comment
/// `vmtun mark <subnet>`).
pub fn mark_rule_present(ns: &Netns) -> Result<bool> {
    Ok(!mark_rules(ns)?.is_empty())
}

/// The subnets of vmtun's mark rules in `ns`'s netfilter ruleset, as their comments
/// `vmtun mark <subnet>` name them, in ruleset order.
pub fn mark_rules(ns: &Netns) -> Result<Vec<String>> {
    let ruleset = ns.run("nft", &["list", "ruleset"])?;
    Ok(ruleset
        .split("comment \"vmtun mark ")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect())
}

/// The seed's setup of the new host (article step 4), by hand, next to a plain vmtun
/// tunnel to the old host whose device is `tun`: `rp_filter` off on every interface, table
/// 201 with a default route via the old host's tunnel address, `ip rule fwmark 1`, and
/// iptables' mangle rule marking packets from the subnet that come in on `vif+`.
pub fn seed_new_host_setup(new: &Netns, tun: &str) -> Result<()> {
    let listing = new.run(
        "sysctl",
        &["-N", "-a", "-r", r"^net\.ipv4\.conf\..*\.rp_filter$"],
    )?;
    for key in listing.lines().map(str::trim).filter(|k| !k.is_empty()) {
        new.sysctl(key, "0")?;
    }
    new.ip(&[
        "rule",
        "add",
        "fwmark",
        &FWMARK.to_string(),
        "table",
        &TABLE.to_string(),
    ])?;
    new.ip(&[
        "route",
        "add",
        "default",
        "via",
        TUNNEL_OLD,
        "dev",
        tun,
        "table",
        &TABLE.to_string(),
    ])?;
    new.run(
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "vif+",
            "-s",
            SUBNET,
            "-j",
            "MARK",
            "--set-mark",
            &FWMARK.to_string(),
        ],
    )
    .map(drop)
}

/// The seed's cutover line (article step 6, with `-c 1` so that it returns), running in
/// the new host. `tcpdump` must have been given time to start listening before packets
/// come: [`SeedCutover::start`] waits for its "listening on" line.
pub struct SeedCutover {
    waiter: std::thread::JoinHandle<Result<u64>>,
    pid: u32,
    /// The exact command line, for the report.
    pub command: String,
}

impl SeedCutover {
    /// Starts `tcpdump -c 1 -i br0 net SUBNET -s 1 && iptables -t mangle -F PREROUTING`
    /// (with `--immediate-mode` if `immediate`) in `new`, logging into `log_dir`.
    pub fn start(new: &Netns, log_dir: &Path, immediate: bool) -> Result<Self> {
        let mode = if immediate { " --immediate-mode" } else { "" };
        let line = format!(
            "tcpdump -c 1{mode} -i {BRIDGE} net {SUBNET} -s 1 && iptables -t mangle -F PREROUTING"
        );
        let stderr_path = log_dir.join("seed-cutover.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| LabError::io(format!("creating {}", stderr_path.display()), e))?;
        let mut child = new
            .command("sh")
            .args(["-c", &line])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| LabError::io(format!("starting `{line}`"), e))?;
        let pid = child.id();
        let waiter = std::thread::Builder::new()
            .name("seed-cutover".into())
            .spawn(move || {
                let status = child
                    .wait()
                    .map_err(|e| LabError::io("waiting for the seed's cutover", e))?;
                let done = super::probe::unix_ns();
                if status.success() {
                    Ok(done)
                } else {
                    Err(LabError::Failed(format!(
                        "the seed's cutover line exited with {status}"
                    )))
                }
            })
            .map_err(|e| LabError::io("starting the seed cutover waiter", e))?;
        lab::wait_until(HOST_WAIT, "tcpdump to listen on br0", || {
            std::fs::read_to_string(&stderr_path)
                .map(|text| text.contains("listening on"))
                .unwrap_or(false)
        })?;
        Ok(Self {
            waiter,
            pid,
            command: line,
        })
    }

    /// Waits up to `timeout` for the line to finish; when `iptables -F` had returned (Unix
    /// ns: the moment the mark rule was gone, plus the shell's exit).
    pub fn wait(self, timeout: Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.waiter.is_finished() {
            if std::time::Instant::now() >= deadline {
                // SAFETY: kill(2) of our own unreaped child (the waiter has not reaped it).
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                let _ = self.waiter.join();
                return Err(LabError::Timeout {
                    what: "the seed's cutover line to fire".into(),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.waiter
            .join()
            .map_err(|_| LabError::Failed("the seed cutover waiter panicked".into()))?
    }
}
