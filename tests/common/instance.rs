//! `vmtun` under test: its config as the user writes it, an instance running in a
//! namespace (`vmtun up`), and its `status --json`.

use super::{KeyPair, LabError, Netns, PORT, Result, Scratch, TUNNEL_PREFIX, VMTUN, WAIT, check};
use ::vmtun::lab::{self, Process};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// One `[[peer]]` section.
#[derive(Clone, Debug, Default)]
pub struct PeerCfg {
    /// The peer's public key.
    pub public_key: String,
    /// `ip:port`, or `None` to learn it from authenticated packets.
    pub endpoint: Option<String>,
    /// Cryptokey routing prefixes.
    pub allowed_ips: Vec<String>,
    /// Optional pre-shared key.
    pub preshared_key: Option<String>,
    /// Optional keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

impl PeerCfg {
    /// A peer reachable at `endpoint` (if any) owning the tunnel address `tunnel_addr`/32.
    pub fn new(public_key: &str, endpoint: Option<&str>, tunnel_addr: &str) -> Self {
        Self {
            public_key: public_key.to_owned(),
            endpoint: endpoint.map(|e| format!("{e}:{PORT}")),
            allowed_ips: vec![format!("{tunnel_addr}/32")],
            ..Self::default()
        }
    }
}

/// A whole vmtun config (the `[interface]` section and its peers).
#[derive(Clone, Debug)]
pub struct VmtunCfg {
    /// TUN device name; unique on the host (see [`lab::unique_ifname`]).
    pub name: String,
    /// This host's key pair.
    pub keys: KeyPair,
    /// UDP port.
    pub listen_port: u16,
    /// Tunnel address with prefix, e.g. `100.64.0.1/24`.
    pub address: String,
    /// Optional MTU.
    pub mtu: Option<u16>,
    /// Optional busy-polling window.
    pub busy_poll_us: Option<u32>,
    /// The peers.
    pub peers: Vec<PeerCfg>,
    /// `[metrics] listen`, e.g. `127.0.0.1:9586`; `None`: no metrics endpoint.
    pub metrics: Option<String>,
    /// More sections, as TOML, appended as they are (e.g. a `[migration]`).
    pub extra: String,
    /// Environment of `vmtun up` beyond `RUST_LOG`, not part of the TOML: the test knobs
    /// (e.g. `VMTUN_TEST_REKEY_AFTER_SECS`).
    pub env: Vec<(String, String)>,
}

impl VmtunCfg {
    /// A config with a fresh unique device name, the usual port and `tunnel_addr`/24.
    pub fn new(keys: &KeyPair, tunnel_addr: &str, peers: Vec<PeerCfg>) -> Self {
        Self {
            name: lab::unique_ifname("vt"),
            keys: keys.clone(),
            listen_port: PORT,
            address: format!("{tunnel_addr}/{TUNNEL_PREFIX}"),
            mtu: None,
            busy_poll_us: None,
            peers,
            metrics: None,
            extra: String::new(),
            env: Vec::new(),
        }
    }

    /// Writes [`Self::to_toml`] (mode 0600) into `scratch` as `<name>.toml`; its path.
    pub fn write(&self, scratch: &Scratch) -> Result<PathBuf> {
        scratch.write(&format!("{}.toml", self.name), &self.to_toml(), 0o600)
    }

    /// The TOML text the user would write.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "[interface]\nname = {:?}\nprivate_key = {:?}\nlisten_port = {}\naddress = {:?}\n",
            self.name, self.keys.private, self.listen_port, self.address
        );
        if let Some(mtu) = self.mtu {
            text += &format!("mtu = {mtu}\n");
        }
        if let Some(us) = self.busy_poll_us {
            text += &format!("busy_poll_us = {us}\n");
        }
        for peer in &self.peers {
            text += &format!("\n[[peer]]\npublic_key = {:?}\n", peer.public_key);
            if let Some(endpoint) = &peer.endpoint {
                text += &format!("endpoint = {endpoint:?}\n");
            }
            text += &format!("allowed_ips = {:?}\n", peer.allowed_ips);
            if let Some(psk) = &peer.preshared_key {
                text += &format!("preshared_key = {psk:?}\n");
            }
            if let Some(keepalive) = peer.persistent_keepalive {
                text += &format!("persistent_keepalive = {keepalive}\n");
            }
        }
        if let Some(listen) = &self.metrics {
            text += &format!("\n[metrics]\nlisten = {listen:?}\n");
        }
        text + &self.extra
    }
}

/// A `vmtun up` running in a namespace. Dropping it stops the process (SIGTERM, then
/// SIGKILL), printing its stderr if the test is failing.
pub struct Vmtun<'a> {
    ns: &'a Netns,
    log_dir: PathBuf,
    /// The config it runs with.
    pub cfg: VmtunCfg,
    /// Where that config is written.
    pub path: PathBuf,
    process: Option<Process>,
}

impl<'a> Vmtun<'a> {
    /// Writes `cfg` (mode 0600) into `scratch` and starts `vmtun up -c` in `ns`, returning
    /// once the TUN device carries its address, the UDP port is bound and `vmtun status`
    /// answers.
    pub fn start(ns: &'a Netns, scratch: &Scratch, cfg: VmtunCfg) -> Result<Self> {
        let path = cfg.write(scratch)?;
        let mut vmtun = Self {
            ns,
            log_dir: scratch.path().to_owned(),
            cfg,
            path,
            process: None,
        };
        vmtun.launch()?;
        Ok(vmtun)
    }

    /// Starts `vmtun up` again with the same config (after [`Self::kill`]).
    pub fn launch(&mut self) -> Result<()> {
        let path = self.path.to_string_lossy().into_owned();
        let mut cmd = self.ns.command(VMTUN);
        cmd.args(["up", "-c", &path]).env("RUST_LOG", "debug");
        cmd.envs(self.cfg.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(Process::spawn(
            &format!("vmtun-{}", self.cfg.name),
            &self.log_dir,
            cmd,
        )?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let name = self.cfg.name.clone();
        let address = self.cfg.address.clone();
        let port = self.cfg.listen_port;
        let ns = self.ns;
        let path = self.path.to_string_lossy().into_owned();
        let process = self.process.as_mut().expect("launched");
        let ready = lab::wait_for(WAIT, &format!("vmtun {name} to come up"), || {
            if let Some(status) = process.exit_status() {
                return Some(Err(LabError::Failed(format!(
                    "vmtun up exited with {status} before coming up:\n{}",
                    process.stderr_tail()
                ))));
            }
            let has_address = ns
                .ip(&["-o", "addr", "show", "dev", &name])
                .map(|out| out.contains(&address))
                .unwrap_or(false);
            let bound = ns
                .run("ss", &["-Hlun", &format!("sport = :{port}")])
                .map(|out| !out.trim().is_empty())
                .unwrap_or(false);
            // The control socket comes last, and `down` sent just after it appears can
            // still fail (see the report on `down` during start-up): up means answering.
            let answers = has_address
                && bound
                && ns
                    .command(VMTUN)
                    .args(["status", "-c", &path])
                    .output()
                    .map(|out| out.status.success())
                    .unwrap_or(false);
            (has_address && bound && answers).then_some(Ok(()))
        });
        match ready {
            Ok(result) => result,
            Err(timeout) => Err(LabError::Failed(format!(
                "{timeout}; device: {:?}; stderr:\n{}",
                ns.ip(&["addr", "show", "dev", &name]),
                process.stderr_tail()
            ))),
        }
    }

    /// This instance's public key.
    pub fn public_key(&self) -> &str {
        &self.cfg.keys.public
    }

    /// The TUN device name.
    pub fn ifname(&self) -> &str {
        &self.cfg.name
    }

    /// `vmtun status -c FILE --json`, run in the instance's namespace.
    pub fn status(&self) -> Result<Status> {
        let path = self.path.to_string_lossy().into_owned();
        let out = self.ns.run(VMTUN, &["status", "-c", &path, "--json"])?;
        self.no_private_key("status --json", &out)?;
        serde_json::from_str(&out).map(Status).map_err(|e| {
            LabError::Failed(format!(
                "`vmtun status --json` printed invalid JSON ({e}): {out}"
            ))
        })
    }

    /// `vmtun status -c FILE`, the text a user reads, run in the instance's namespace.
    pub fn status_text(&self) -> Result<String> {
        let path = self.path.to_string_lossy().into_owned();
        let out = self.ns.run(VMTUN, &["status", "-c", &path])?;
        self.no_private_key("status", &out)?;
        Ok(out)
    }

    /// Fails if `out` (what `vmtun what` printed) shows this instance's private key.
    fn no_private_key(&self, what: &str, out: &str) -> Result<()> {
        check(!out.contains(&self.cfg.keys.private), || {
            format!("`vmtun {what}` printed the private key")
        })
    }

    /// SIGKILL, as a crash: no cleanup runs.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill()?;
        }
        Ok(())
    }

    /// `vmtun down -c FILE` in the namespace (failing unless it succeeds), then waits for
    /// the `up` process to exit by itself.
    pub fn down(&mut self) -> Result<Stopped> {
        let path = self.path.to_string_lossy().into_owned();
        let stdout = self.ns.run(VMTUN, &["down", "-c", &path])?;
        let up = self.wait_exit("after `vmtun down`")?;
        Ok(Stopped { stdout, up })
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to `vmtun up` and waits for it to exit by
    /// itself: no SIGKILL behind it, so a hang fails the test instead of hiding.
    pub fn stop_with(&mut self, signal: libc::c_int) -> Result<ExitStatus> {
        if let Some(process) = self.process.as_mut() {
            process.signal(signal);
        }
        self.wait_exit(&format!("after signal {signal}"))
    }

    fn wait_exit(&mut self, after: &str) -> Result<ExitStatus> {
        let process = self.process.as_mut().ok_or_else(|| {
            LabError::Failed(format!("vmtun {} was never started", self.cfg.name))
        })?;
        process.wait_timeout(WAIT).map_err(|e| {
            LabError::Failed(format!(
                "vmtun up did not exit {after}: {e}; stderr:\n{}",
                process.stderr_tail()
            ))
        })
    }

    /// Which of this instance's files in `/run/vmtun` exist now.
    pub fn leftover_files(&self) -> Vec<PathBuf> {
        run_files(self.ns, &self.cfg.name)
            .into_iter()
            .filter(|path| path.exists())
            .collect()
    }

    /// Fails unless everything this instance made is gone: its TUN device and its
    /// `/run/vmtun/net-<ns>/<if>.{json,sock,lock}`. For after the process has exited.
    pub fn check_gone(&self) -> Result<()> {
        let mut left: Vec<String> = self
            .leftover_files()
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        if self.ns.has_link(&self.cfg.name) {
            left.push(format!(
                "the device {} in {}",
                self.cfg.name,
                self.ns.name()
            ));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(LabError::Failed(format!(
                "vmtun up for {} exited and left behind: {}",
                self.cfg.name,
                left.join(", ")
            )))
        }
    }

    /// The running process, for its logs.
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// The running process, to signal it.
    pub fn process_mut(&mut self) -> Option<&mut Process> {
        self.process.as_mut()
    }

    /// Packets the tunnel delivered to the kernel through the TUN device (the kernel counts
    /// what vmtun writes into the TUN as received).
    pub fn tun_rx_packets(&self) -> Result<u64> {
        self.ns.link_stat(&self.cfg.name, "rx_packets")
    }
}

impl Drop for Vmtun<'_> {
    fn drop(&mut self) {
        // Stop the process first (its own guard would do it a moment later: SIGTERM, then
        // SIGKILL). What it leaves in the shared /run is reported, never removed: deleting
        // it here would hide a leak from every test. The names are unique per test, so a
        // leftover cannot disturb another test; the namespaces go with the lab's guards.
        drop(self.process.take());
        let left = self.leftover_files();
        if !left.is_empty() {
            eprintln!(
                "\n!!!! LEAK: vmtun up for {} exited and left {} behind (kept for inspection; \
                 a test that stops it should assert Vmtun::check_gone) !!!!\n",
                self.cfg.name,
                left.iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
}

/// The files `vmtun up` in `ns` keeps for interface `name`: its state journal, control
/// socket and instance lock (none if the namespace is gone).
pub fn run_files(ns: &Netns, name: &str) -> Vec<PathBuf> {
    ns.id()
        .map(|id| {
            let paths = ::vmtun::control::Paths::in_netns(id, name);
            vec![paths.state, paths.socket, paths.lock]
        })
        .unwrap_or_default()
}

/// How a stopped `vmtun up` ended after `vmtun down`.
#[derive(Debug)]
pub struct Stopped {
    /// What `vmtun down` printed.
    pub stdout: String,
    /// The exit status of `vmtun up`.
    pub up: ExitStatus,
}

/// A parsed `vmtun status --json`.
#[derive(Clone, Debug)]
pub struct Status(pub Value);

impl Status {
    /// The peer entry for `public_key`.
    pub fn peer(&self, public_key: &str) -> Option<&Value> {
        self.0["peers"]
            .as_array()?
            .iter()
            .find(|peer| peer["public_key"].as_str() == Some(public_key))
    }

    /// Seconds since the last handshake with `public_key`; `None` if never (or unknown peer).
    pub fn handshake_secs(&self, public_key: &str) -> Option<f64> {
        self.peer(public_key)?["last_handshake_secs"].as_f64()
    }

    /// The endpoint vmtun currently uses for `public_key`.
    pub fn endpoint(&self, public_key: &str) -> Option<String> {
        self.peer(public_key)?["endpoint"]
            .as_str()
            .map(str::to_owned)
    }

    /// A per-peer counter such as `rx_bytes` (0 if absent).
    pub fn peer_counter(&self, public_key: &str, counter: &str) -> u64 {
        self.peer(public_key)
            .and_then(|peer| peer[counter].as_u64())
            .unwrap_or(0)
    }

    /// Every drop counted, interface-wide and per peer, all reasons together.
    pub fn drops_total(&self) -> u64 {
        let sum = |drops: &Value| {
            drops
                .as_object()
                .map(|map| map.values().filter_map(Value::as_u64).sum::<u64>())
                .unwrap_or(0)
        };
        let peers: u64 = self.0["peers"]
            .as_array()
            .map(|peers| peers.iter().map(|peer| sum(&peer["drops"])).sum())
            .unwrap_or(0);
        sum(&self.0["drops"]) + peers
    }

    /// Drops of one reason (e.g. `replay`), interface-wide and per peer together.
    pub fn drops(&self, reason: &str) -> u64 {
        let peers: u64 = self.0["peers"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .filter_map(|peer| peer["drops"][reason].as_u64())
                    .sum()
            })
            .unwrap_or(0);
        self.0["drops"][reason].as_u64().unwrap_or(0) + peers
    }
}

/// Runs `vmtun ARGS` in `ns` to completion within `timeout` (killing it otherwise): exit
/// code, stdout, stderr. For commands expected to fail.
pub fn run_vmtun(
    ns: &Netns,
    scratch: &Scratch,
    label: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<(Option<i32>, String, String)> {
    let mut cmd: Command = ns.command(VMTUN);
    cmd.args(args);
    let mut process = Process::spawn(label, scratch.path(), cmd)?;
    match process.wait_timeout(timeout) {
        Ok(status) => Ok((status.code(), process.stdout(), process.stderr())),
        Err(_) => {
            process.kill()?;
            Err(LabError::Failed(format!(
                "`vmtun {}` was still running after {timeout:?} (expected it to exit); stderr:\n{}",
                args.join(" "),
                process.stderr()
            )))
        }
    }
}
