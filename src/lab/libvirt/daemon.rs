//! One `libvirtd` in a lab host: its configuration (`libvirtd.conf`, `qemu.conf`, its UUID),
//! the helper that makes its private mount and UTS namespace, and [`Libvirtd`], the running
//! daemon with its `virsh`. The texts are pure and unit-tested; starting the daemon and
//! running `virsh` are the thin edge.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{DAEMON_WAIT, LIBVIRTD, LIBVIRTD_LOG, VIRSH, VIRSH_WAIT, uri};
use crate::lab::scratch::write_with_mode;
use crate::lab::{LabError, Netns, Process, Result, process, wait_for};

/// The private directories of a daemon: the name of each one's source under the host's
/// directory, and where it is mounted.
pub const PRIVATE_DIRS: [(&str, &str); 6] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
    // Root's SSH keys for `qemu+ssh://` (see `super::ssh`).
    ("ssh", "/root/.ssh"),
];

/// The helper that makes a daemon's namespace: a shell script run with `sh -c` under
/// `unshare --mount --uts --propagation private`, with the host's directory, hostname and
/// pid file as `$1`..`$3`. `/run` becomes an empty tmpfs (the host's `/run` holds other
/// daemons' sockets, and `/run/systemd/system` would send libvirt to systemd-machined);
/// `/var` and `/root` overlays whose upper layers live in that tmpfs (any file system below
/// will do), so the mount points of [`PRIVATE_DIRS`] can be made without touching the host
/// while the rest stays readable (the guest's image may be cached under `/root`); then
/// each private directory is bind-mounted from `$1`. `/etc/libvirt` must exist
/// (libvirt-daemon ships it).
pub fn namespace_script() -> String {
    let mounts: Vec<&str> = PRIVATE_DIRS.iter().map(|(_, mount)| *mount).collect();
    let pairs: Vec<String> = PRIVATE_DIRS
        .iter()
        .map(|(source, mount)| format!("{source}:{mount}"))
        .collect();
    format!(
        r#"set -eu
dir=$1
mount -t tmpfs -o mode=0755 vmtunlab /run
for top in var root; do
  mkdir -p /run/vmtunlab-$top/upper /run/vmtunlab-$top/work
  mount -t overlay vmtunlab -o lowerdir=/$top,upperdir=/run/vmtunlab-$top/upper,workdir=/run/vmtunlab-$top/work /$top
done
mkdir -p {mounts}
for pair in {pairs}; do
  mount --bind "$dir/${{pair%%:*}}" "${{pair#*:}}"
done
echo "$2" >/proc/sys/kernel/hostname
exec {LIBVIRTD} --listen --pid-file "$3"
"#,
        mounts = mounts.join(" "),
        pairs = pairs.join(" "),
    )
}

/// Where `inside`, a path under one of the private directories of the daemon whose
/// directory is `dir`, lives on the host; `None` for any other path.
pub fn private_path(dir: &Path, inside: &str) -> Option<PathBuf> {
    PRIVATE_DIRS.iter().find_map(|(source, mount)| {
        let rest = Path::new(inside).strip_prefix(mount).ok()?;
        Some(dir.join(source).join(rest))
    })
}

/// `libvirtd.conf`: plain TCP without authentication on the host's underlay address, for
/// the test's own `virsh` (the daemons reach each other over SSH, see [`super::ssh`]), the
/// host's own UUID, and the daemon's log in its private `/var/log/libvirt`.
pub fn libvirtd_conf(listen: &str, host_uuid: &str) -> String {
    format!(
        r#"listen_tls = 0
listen_tcp = 1
listen_addr = "{listen}"
auth_tcp = "none"
host_uuid = "{host_uuid}"
log_outputs = "3:file:{LIBVIRTD_LOG}"
"#
    )
}

/// `qemu.conf`: QEMU as root without a security driver, its output in files (no
/// virtlogd), and no cgroups or per-guest mount namespace, which a lab host cannot give
/// and which would reach beyond the namespaces (cgroupfs is the host's).
pub const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
"#;

/// A UUID for the daemon of `site` that no other lab host (of this or another process) has;
/// libvirt refuses UUIDs whose digits are all the same.
pub fn host_uuid(site: u8) -> String {
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        crate::lab::next_serial() & 0xffff,
        u64::from(site) + 1
    )
}

/// What one daemon is: its hostname, underlay address and UUID, and the `<script>` it
/// carries.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// A short name for logs and directories, e.g. `old`.
    pub label: String,
    /// The UTS hostname (with a dot, so libvirt does not try to resolve it).
    pub hostname: String,
    /// The host's underlay address: where the daemon listens.
    pub listen: String,
    /// `host_uuid`.
    pub host_uuid: String,
    /// The text of [`super::VIF_SCRIPT`] on this host.
    pub vif_script: String,
}

/// A `libvirtd` in a lab host namespace, with its private directories under the test's
/// scratch directory. Dropping it destroys the domains it runs and stops it (by PID); any
/// QEMU left dies with the host's network namespace.
pub struct Libvirtd<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    spec: DaemonSpec,
    uri: String,
    process: Process,
}

impl<'a> Libvirtd<'a> {
    /// Writes the daemon's configuration under `scratch/libvirt-LABEL`, starts it in `ns`
    /// and waits until it answers `virsh version` over TCP.
    pub fn start(ns: &'a Netns, scratch: &Path, spec: &DaemonSpec) -> Result<Self> {
        let dir = scratch.join(format!("libvirt-{}", spec.label));
        let mut dirs: Vec<PathBuf> = PRIVATE_DIRS.iter().map(|(d, _)| dir.join(d)).collect();
        dirs.extend(["etc/scripts", "log/qemu"].map(|d| dir.join(d)));
        for d in &dirs {
            std::fs::create_dir_all(d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        let write =
            |name: &str, text: &str, mode: u32| write_with_mode(&dir.join(name), text, mode);
        write(
            "etc/libvirtd.conf",
            &libvirtd_conf(&spec.listen, &spec.host_uuid),
            0o644,
        )?;
        write("etc/qemu.conf", QEMU_CONF, 0o644)?;
        write("etc/scripts/vif-route", &spec.vif_script, 0o755)?;

        let mut cmd = ns.command("unshare");
        cmd.args(["--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", &namespace_script(), "vmtunlab-libvirtd"])
            .arg(&dir)
            .arg(&spec.hostname)
            .arg(dir.join("libvirtd.pid"));
        let mut process = Process::spawn(&format!("libvirtd-{}", spec.label), scratch, cmd)?;
        let daemon_uri = uri(&spec.listen);
        let log = dir.join("log/libvirtd.log");
        wait_for(DAEMON_WAIT, &format!("libvirtd on {}", spec.listen), || {
            if let Some(status) = process.exit_status() {
                return Some(Err(LabError::Failed(format!(
                    "libvirtd ({}) exited with {status} before answering:\n{}\n{}",
                    spec.label,
                    process.stderr_tail(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))));
            }
            virsh_command(ns, &daemon_uri, Duration::from_secs(20), &["version"])
                .ok()
                .map(|_| Ok(()))
        })??;
        Ok(Self {
            ns,
            dir,
            spec: spec.clone(),
            uri: daemon_uri,
            process,
        })
    }

    /// Its URI (`qemu+tcp://ADDR/system`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The host's underlay address, where it listens.
    pub fn address(&self) -> &str {
        &self.spec.listen
    }

    /// Its short name (`old`, `new`).
    pub fn label(&self) -> &str {
        &self.spec.label
    }

    /// Its host's hostname (its UTS namespace's).
    pub fn hostname(&self) -> &str {
        &self.spec.hostname
    }

    /// A command that runs `program` where the daemon runs: in its host's network namespace
    /// and in its mount and UTS namespaces, so that it sees the private directories (its
    /// socket, root's `/root/.ssh`) as the daemon and its children do.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.process.pid().to_string()])
            .args(["--net", "--mount", "--uts", "--", program]);
        cmd
    }

    /// Runs `virsh -c URI ARGS` in the host's namespace, at most [`VIRSH_WAIT`]; its stdout.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        self.virsh_within(VIRSH_WAIT, args)
    }

    /// [`Self::virsh`] with its own ceiling.
    pub fn virsh_within(&self, limit: Duration, args: &[&str]) -> Result<String> {
        virsh_command(self.ns, &self.uri, limit, args)
    }

    /// Runs `virsh -c qemu:///system ARGS` as root logged in on this host would: in the
    /// daemon's namespaces (its socket, root's SSH keys), at most `limit`; its stdout.
    pub fn local_virsh(&self, limit: Duration, args: &[&str]) -> Result<String> {
        let place = format!("on the {} host", self.spec.label);
        run_virsh(
            self.command("timeout"),
            &place,
            "qemu:///system",
            limit,
            args,
        )
    }

    /// Defines the domain `xml` (written to this host's directory) and starts it.
    pub fn define_and_start(&self, name: &str, xml: &str) -> Result<()> {
        let path = self.dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        self.virsh(&["define", &path.to_string_lossy()])?;
        self.virsh(&["start", name]).map(drop)
    }

    /// `virsh domstate`: `running`, `shut off`...
    pub fn domain_state(&self, name: &str) -> Result<String> {
        self.virsh(&["domstate", name]).map(|s| s.trim().to_owned())
    }

    /// The host path of `inside`, a path under one of the daemon's private directories
    /// (e.g. [`super::VIF_SCRIPT_CALLS`]); `None` for any other path.
    pub fn host_path(&self, inside: &str) -> Option<PathBuf> {
        private_path(&self.dir, inside)
    }

    /// The contents of `inside` (see [`Self::host_path`]), empty if it does not exist.
    pub fn read(&self, inside: &str) -> String {
        self.host_path(inside)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }
}

impl Drop for Libvirtd<'_> {
    fn drop(&mut self) {
        let limit = Duration::from_secs(20);
        if let Ok(names) = self.virsh_within(limit, &["list", "--name"]) {
            for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                let _ = self.virsh_within(limit, &["destroy", name]);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- libvirtd log ({}) ---\n{}",
                self.dir.display(),
                self.read(LIBVIRTD_LOG)
            );
        }
        let _ = self.process.terminate(process::DROP_GRACE);
    }
}

/// `virsh -c uri ARGS` in `ns`, killed after `limit`.
fn virsh_command(ns: &Netns, uri: &str, limit: Duration, args: &[&str]) -> Result<String> {
    run_virsh(
        ns.command("timeout"),
        &format!("on {uri}"),
        uri,
        limit,
        args,
    )
}

/// `virsh -c uri ARGS` under `timeout` (a `timeout` command placed in the namespaces to run
/// it in), killed after `limit`; `place` names where it ran, for the error.
fn run_virsh(
    mut timeout: Command,
    place: &str,
    uri: &str,
    limit: Duration,
    args: &[&str],
) -> Result<String> {
    let limit = limit.as_secs().max(1).to_string();
    let what = format!("virsh {} {place}", args.join(" "));
    process::run_checked(
        &what,
        timeout
            .args(["--kill-after=5", &limit, VIRSH, "-c", uri])
            .args(args),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::libvirt::{VIF_SCRIPT, VIF_SCRIPT_CALLS};

    #[test]
    fn the_daemon_listens_on_tcp_with_its_own_uuid() {
        let conf = libvirtd_conf("198.18.1.2", "0000abcd-0001-4000-8000-000000000001");
        for line in [
            "listen_tcp = 1",
            "listen_tls = 0",
            "listen_addr = \"198.18.1.2\"",
            "auth_tcp = \"none\"",
            "host_uuid = \"0000abcd-0001-4000-8000-000000000001\"",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line} missing from {conf}"
            );
        }
        assert!(QEMU_CONF.contains("security_driver = \"none\""));
        assert!(QEMU_CONF.contains("stdio_handler = \"file\""));
        assert!(QEMU_CONF.contains("cgroup_controllers = [ ]"));
    }

    #[test]
    fn host_uuids_differ_and_are_well_formed() {
        let (a, b) = (host_uuid(0), host_uuid(1));
        assert_ne!(a, b);
        for uuid in [a, b] {
            let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
            assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn the_namespace_script_mounts_every_private_directory() {
        let script = namespace_script();
        assert!(script.contains(
            "mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /root/.ssh\n"
        ));
        assert!(script.contains(
            "for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt ssh:/root/.ssh; do\n"
        ));
        assert!(script.contains("  mount --bind \"$dir/${pair%%:*}\" \"${pair#*:}\"\n"));
        assert!(script.contains("mount -t tmpfs -o mode=0755 vmtunlab /run\n"));
        assert!(script.contains("for top in var root; do\n"));
        assert!(script.contains("lowerdir=/$top,upperdir=/run/vmtunlab-$top/upper,"));
        assert!(script.ends_with("exec libvirtd --listen --pid-file \"$3\"\n"));
    }

    #[test]
    fn private_paths_map_into_the_hosts_directory() {
        let dir = Path::new("/s/libvirt-old");
        assert_eq!(
            private_path(dir, VIF_SCRIPT_CALLS),
            Some(PathBuf::from("/s/libvirt-old/log/vif-route.calls"))
        );
        assert_eq!(
            private_path(dir, VIF_SCRIPT),
            Some(PathBuf::from("/s/libvirt-old/etc/scripts/vif-route"))
        );
        assert_eq!(private_path(dir, "/etc/libvirtx/a"), None);
        assert_eq!(private_path(dir, "/etc/hosts"), None);
    }
}
