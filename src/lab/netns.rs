//! [`Netns`]: one network namespace the lab created, with a unique name, deleted (with
//! everything in it) when the guard drops. Commands run in it through `ip -n` and
//! `ip netns exec`; Rust code runs in it on a dedicated thread that has `setns`-ed into it.

use super::process::{Process, run_checked};
use super::registry::{self, destroy_netns, register, sweep_stale};
use super::{LAB_PREFIX, LabError, Result, check_lab_address, next_serial};
use std::ffi::OsStr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;

/// Longest a command run with [`Netns::run`] may take (exit status 124 when it is killed).
pub const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A network namespace owned by the lab. Dropping it kills the processes inside by PID and
/// deletes it; veths and bridges inside go with it.
///
/// Declare process guards *after* the namespaces they run in, so they drop first and can
/// stop gracefully.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `vmtunlab-<pid>-<serial>-<tag>` with loopback up. `tag` (letters, digits) only
    /// makes `ip netns list` readable. Sweeps namespaces of dead lab processes first.
    pub fn new(tag: &str) -> Result<Self> {
        sweep_stale();
        let name = format!(
            "{LAB_PREFIX}-{}-{}-{tag}",
            std::process::id(),
            next_serial()
        );
        run_checked(
            &format!("creating namespace {name}"),
            Command::new("ip").args(["netns", "add", &name]),
        )?;
        register(&name);
        let ns = Self { name };
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace as vmtun keys its files (`/run/vmtun/net-<inode>/`).
    pub fn id(&self) -> Result<crate::control::NetnsId> {
        let path = Path::new("/run/netns").join(&self.name);
        crate::control::NetnsId::of(&path)
            .map_err(|e| LabError::io(format!("reading the inode of {}", path.display()), e))
    }

    /// A command that will run `program` inside the namespace (`ip netns exec`), ready for
    /// more arguments; `ip` execs the program, so the child's PID is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace to completion; its stdout if it succeeded.
    /// A program still running after [`RUN_TIMEOUT`] is killed (coreutils `timeout`), so a
    /// hung command fails the test instead of hanging it.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let limit = format!("{}", RUN_TIMEOUT.as_secs());
        run_checked(
            &format!("running {program} in {}", self.name),
            self.command("timeout")
                .args(["--kill-after=5", &limit, program])
                .args(args),
        )
    }

    /// Runs `ip -n NS args`: the usual way to change links, addresses and routes here.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(
            &format!("ip {} in {}", args.join(" "), self.name),
            Command::new("ip").args(["-n", &self.name]).args(args),
        )
    }

    /// Starts a long-running `program args` inside the namespace under a [`Process`]
    /// guard, its output logged under `log_dir` as `<label>.stdout` / `<label>.stderr`.
    pub fn spawn(
        &self,
        label: &str,
        log_dir: &Path,
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Result<Process> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Process::spawn(label, log_dir, cmd)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_value(&self, key: &str) -> Result<String> {
        self.run("sysctl", &["-n", key])
            .map(|out| out.trim().to_owned())
    }

    /// Turns IPv6 off in the namespace (existing and future interfaces), so router
    /// solicitations and DAD do not add stray packets to counters tests compare.
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// Keeps IPv6 on but quiet (existing and future interfaces): no duplicate address
    /// detection, so addresses work at once, and no router solicitations.
    pub fn quiet_ipv6(&self) -> Result<()> {
        for scope in ["all", "default"] {
            self.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
            self.sysctl(&format!("net.ipv6.conf.{scope}.router_solicitations"), "0")?;
        }
        Ok(())
    }

    /// Brings `dev` up.
    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "up"]).map(drop)
    }

    /// Adds `cidr` (e.g. `198.18.0.1/24`) to `dev`; refuses addresses outside the lab ranges.
    pub fn add_address(&self, dev: &str, cidr: &str) -> Result<()> {
        check_lab_address(cidr)?;
        self.ip(&["addr", "add", cidr, "dev", dev]).map(drop)
    }

    /// Removes `cidr` from `dev`.
    pub fn del_address(&self, dev: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "del", cidr, "dev", dev]).map(drop)
    }

    /// Creates a bridge `name` inside the namespace and brings it up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.link_up(name)
    }

    /// Enslaves `dev` to the bridge `bridge` (both in this namespace).
    pub fn set_master(&self, dev: &str, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "master", bridge]).map(drop)
    }

    /// Whether an interface called `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", dev])
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    /// One counter of `dev`, e.g. `rx_packets` (`/sys/class/net/DEV/statistics/`, seen from
    /// inside the namespace).
    pub fn link_stat(&self, dev: &str, counter: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{dev}/statistics/{counter}");
        let text = self.run("cat", &[&path])?;
        text.trim()
            .parse()
            .map_err(|_| LabError::Failed(format!("{path} in {} read {text:?}", self.name)))
    }

    /// Whether `addr` answers one ICMP echo from this namespace within a second: what the
    /// lab and the tests wait on before they rely on a path.
    pub fn answers_ping(&self, addr: &str) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "1", "-q", addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// PIDs of the processes currently inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        registry::pids_in(&self.name)
    }

    /// The counter `field` of protocol `proto` in this namespace's `/proc/net/snmp`, e.g.
    /// `Udp` `RcvbufErrors` (datagrams dropped on a full socket buffer) or `Tcp`
    /// `RetransSegs`.
    pub fn snmp_counter(&self, proto: &str, field: &str) -> Result<u64> {
        let snmp = self.run("cat", &["/proc/net/snmp"])?;
        snmp_counter(&snmp, proto, field).ok_or_else(|| {
            LabError::Failed(format!(
                "no {proto} {field} in /proc/net/snmp of {}",
                self.name
            ))
        })
    }

    /// Runs `f` on a new OS thread that has entered this namespace: sockets it opens live
    /// here. The thread checks it really is in the namespace before calling `f`, so a failed
    /// `setns` can never run `f` in the root namespace.
    pub fn thread<T, F>(&self, label: &str, f: F) -> Result<JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("{label}@{name}"))
            .spawn(move || {
                enter(&name)?;
                f()
            })
            .map_err(|e| LabError::io(format!("starting thread {label} for {}", self.name), e))
    }
}

/// Reads counter `field` of `proto` from the text of `/proc/net/snmp`: a line of names
/// (`Udp: InDatagrams ...`) followed by a line of values.
pub fn snmp_counter(snmp: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == field)
        .and_then(|(_, value)| value.parse().ok())
}

/// Moves the calling thread into namespace `name` and proves it by comparing namespace
/// inodes. Private: only threads made by [`Netns::thread`] may change namespace.
fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file =
        std::fs::File::open(&path).map_err(|e| LabError::io(format!("opening {path}"), e))?;
    // SAFETY: setns(2) on an fd we hold open; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::io(
            format!("entering namespace {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    let target = file
        .metadata()
        .map_err(|e| LabError::io(format!("stat {path}"), e))?;
    let current = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| LabError::io("stat /proc/thread-self/ns/net", e))?;
    if (target.dev(), target.ino()) != (current.dev(), current.ino()) {
        return Err(LabError::Failed(format!(
            "thread is not in namespace {name} after setns: refusing to continue"
        )));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        // vmtun's files for the namespace (its memories of a cutover or a handover outlive
        // an instance, not the namespace they describe).
        let files = self.id().map(|id| id.dir());
        destroy_netns(&self.name);
        registry::unregister(&self.name);
        if let Ok(dir) = files {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_counters_are_read_by_protocol_and_name() {
        let snmp = "Tcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 17 0\nUdp: InDatagrams RcvbufErrors\nUdp: 52 3\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 0\n";
        assert_eq!(snmp_counter(snmp, "Tcp", "RetransSegs"), Some(17));
        assert_eq!(snmp_counter(snmp, "Udp", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_counter(snmp, "UdpLite", "InDatagrams"), Some(0));
        assert_eq!(snmp_counter(snmp, "Udp", "NoSuchField"), None);
        assert_eq!(snmp_counter(snmp, "Icmp", "InMsgs"), None);
    }
}
