//! libvirt in the lab: one `libvirtd` per host namespace, so a real guest can be moved with
//! `virsh migrate --live --p2p` between two lab hosts as an operator moves it between two
//! machines.
//!
//! Each daemon runs in the host's network namespace and in a mount and UTS namespace of its
//! own (`unshare --mount --uts --propagation private`): `/etc/libvirt`, `/run/libvirt`,
//! `/var/lib/libvirt`, `/var/log/libvirt` and `/var/cache/libvirt` are bind mounts of
//! directories in the test's scratch directory, `/run` is a fresh tmpfs and `/var` an overlay
//! whose writes land in that tmpfs (the directories libvirt needs do not exist on a host
//! without libvirt-daemon-system, and making them there would touch the host). Nothing of the host's own `/etc/libvirt` or `/run/libvirt` is read or written,
//! and the mounts vanish with the namespace when its last process (the daemon, its QEMUs)
//! exits. Each daemon has its own hostname and `host_uuid` (libvirt refuses to migrate to
//! a host that looks like itself) and listens with TCP on the host's underlay address; the
//! client (`virsh`) connects to that from the host's network namespace.
//!
//! What this must not do: start anything in the root network namespace, or leave a mount
//! in the host's mount namespace. The configuration texts and the domain XML are pure and
//! unit-tested; starting the daemon and running `virsh` are the thin edge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::qemu::{GuestImage, QEMU};
use crate::lab::{LabError, Netns, Process, Result, process, wait_for};

/// The daemon.
pub const LIBVIRTD: &str = "libvirtd";
/// The client.
pub const VIRSH: &str = "virsh";
/// The system user the QEMU driver resolves as its default before it reads `qemu.conf`:
/// without it the driver does not load. libvirt-daemon-system makes it; the lab's hosts run
/// libvirt without that package (it would start a daemon in the root namespace).
pub const QEMU_USER: &str = "libvirt-qemu";
/// The ceiling of a daemon's start, its first QEMU capabilities probe included (a few
/// seconds on a quiet machine).
pub const DAEMON_WAIT: Duration = Duration::from_secs(120);
/// The ceiling of one `virsh` command other than a migration.
pub const VIRSH_WAIT: Duration = Duration::from_secs(120);
/// The ceiling of `virsh migrate` of the small guest (3–6 s measured).
pub const MIGRATE_WAIT: Duration = Duration::from_secs(180);
/// Where the domain's `<script path=...>` points, on every host (inside its private
/// `/etc/libvirt`).
pub const VIF_SCRIPT: &str = "/etc/libvirt/scripts/vif-route";
/// The file each host's script appends the interface it was called for to (inside its
/// private `/var/log/libvirt`): the test's proof that libvirt ran it.
pub const VIF_SCRIPT_CALLS: &str = "/var/log/libvirt/vif-route.calls";

/// The private directories of a daemon: the name of each one's source under the host's
/// directory, and where it is mounted.
pub const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// The helper that makes a daemon's namespace: a shell script run with `sh -c` under
/// `unshare --mount --uts --propagation private`, with the host's directory, hostname and
/// pid file as `$1`..`$3`. `/run` becomes an empty tmpfs (the host's `/run` holds other
/// daemons' sockets, and `/run/systemd/system` would send libvirt to systemd-machined);
/// `/var` an overlay whose upper layer lives in that tmpfs (any file system below will do),
/// so the mount points of [`PRIVATE_DIRS`] can be made without touching the host; then
/// each private directory is bind-mounted from `$1`. `/etc/libvirt` must exist (libvirt-daemon ships it).
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
mkdir -p /run/vmtunlab-var/upper /run/vmtunlab-var/work
mount -t overlay vmtunlab -o lowerdir=/var,upperdir=/run/vmtunlab-var/upper,workdir=/run/vmtunlab-var/work /var
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

/// Why this machine cannot run the libvirt lab, if it cannot: QEMU, libvirt's daemon and
/// client, `/etc/libvirt` and the `libvirt-qemu` user, all of which `scripts/setup.sh`
/// provides.
pub fn missing_requirement() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (QEMU's tap needs it)".into());
    }
    for program in [QEMU, LIBVIRTD, VIRSH] {
        if !process::on_path(program) {
            return Some(format!("no {program} on PATH: run scripts/setup.sh"));
        }
    }
    if !Path::new("/etc/libvirt").is_dir() {
        return Some("no /etc/libvirt (libvirt-daemon ships it): run scripts/setup.sh".into());
    }
    if !user_exists(QEMU_USER) {
        return Some(format!(
            "no user {QEMU_USER} (libvirt's QEMU driver needs it): run scripts/setup.sh"
        ));
    }
    None
}

fn user_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: getpwnam(3) reads a NUL-terminated string we own; only the pointer's nullness
    // is used, before any other call could reuse its static buffer.
    !unsafe { libc::getpwnam(name.as_ptr()) }.is_null()
}

/// `libvirtd.conf`: plain TCP without authentication on the host's underlay address (the
/// lab's hosts trust each other; a real host uses `qemu+ssh://` or TLS), the host's own
/// UUID, and the daemon's log in its private `/var/log/libvirt`.
pub fn libvirtd_conf(listen: &str, host_uuid: &str) -> String {
    format!(
        r#"listen_tls = 0
listen_tcp = 1
listen_addr = "{listen}"
auth_tcp = "none"
host_uuid = "{host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
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

/// `text` with the five XML special characters escaped, for attribute and element text.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// `text` as one single-quoted shell word.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The guest as a libvirt domain: what [`domain_xml`] describes.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// The domain's name.
    pub name: String,
    /// The kernel and initramfs, booted directly.
    pub image: GuestImage,
    /// The guest NIC's MAC (libvirt gives the tap the same with `fe` first).
    pub mac: String,
    /// The host's interface for the guest (`<target dev=...>`).
    pub vif: String,
    /// The guest's address, for its init.
    pub addr: String,
    /// The guest's arbitrary default gateway, for its init.
    pub gateway: String,
}

impl DomainSpec {
    /// Where the serial console goes on every host (inside its private `/var/log/libvirt`).
    pub fn console(&self) -> String {
        format!("/var/log/libvirt/qemu/{}.console", self.name)
    }
}

/// The domain XML of `spec`: the interface as the README documents it (`type='ethernet'`,
/// the MAC, `<target dev>`, `<script path>` = [`VIF_SCRIPT`], virtio), TCG on q35 with ACPI
/// declared (without `<acpi/>` libvirt 9.0 passes `-no-acpi`, which QEMU 10 rejects), the
/// console appended to a file, and nothing else a lab guest does not need.
pub fn domain_xml(spec: &DomainSpec) -> String {
    let e = |s: &str| xml_escape(s);
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmtun.addr={} vmtun.gw={}",
        spec.addr, spec.gateway
    );
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/{qemu}</emulator>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{vif}'/>
      <script path='{script}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}' append='on'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        name = e(&spec.name),
        kernel = e(&spec.image.kernel.display().to_string()),
        initrd = e(&spec.image.initrd.display().to_string()),
        cmdline = e(&cmdline),
        qemu = QEMU,
        mac = e(&spec.mac),
        vif = e(&spec.vif),
        script = VIF_SCRIPT,
        console = e(&spec.console()),
    )
}

/// The lab's `<script>` on one host: it records the interface libvirt called it for in
/// [`VIF_SCRIPT_CALLS`], then runs the shipped script `shipped` with the binary under test
/// and the host's config (the shipped script's defaults are the installed paths; libvirt
/// passes the script no environment of its own, so the lab sets them here).
pub fn vif_script(shipped: &Path, vmtun: &Path, config: &Path) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    format!(
        "#!/bin/sh\necho \"$1\" >>{calls}\nexport VMTUN={vmtun} VMTUN_CONFIG={config}\nexec {shipped} \"$@\"\n",
        calls = VIF_SCRIPT_CALLS,
        vmtun = q(vmtun),
        config = q(config),
        shipped = q(shipped),
    )
}

/// The libvirt URI of the daemon listening on `addr` (TCP, the system instance).
pub fn uri(addr: &str) -> String {
    format!("qemu+tcp://{addr}/system")
}

/// `virsh migrate` of `domain` to the daemon on `dest`, the lab's form of the README's
/// command: live, peer to peer (the source daemon drives it), persistent on the
/// destination, and QEMU's stream sent to `dest` itself (`--migrateuri`): otherwise the
/// destination offers its hostname, which the source cannot resolve.
pub fn migrate_args(domain: &str, dest: &str) -> Vec<String> {
    [
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--verbose",
        domain,
        &uri(dest),
        "--migrateuri",
        &format!("tcp://{dest}"),
    ]
    .map(String::from)
    .to_vec()
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
    /// The text of [`VIF_SCRIPT`] on this host.
    pub vif_script: String,
}

/// A `libvirtd` in a lab host namespace, with its private directories under the test's
/// scratch directory. Dropping it destroys the domains it runs and stops it (by PID); any
/// QEMU left dies with the host's network namespace.
pub struct Libvirtd<'a> {
    ns: &'a Netns,
    dir: PathBuf,
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
        let write = |name: &str, text: &str, mode: u32| -> Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.join(name);
            std::fs::write(&path, text)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
        };
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
            uri: daemon_uri,
            process,
        })
    }

    /// Its URI (`qemu+tcp://ADDR/system`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `virsh -c URI ARGS` in the host's namespace, at most [`VIRSH_WAIT`]; its stdout.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        self.virsh_within(VIRSH_WAIT, args)
    }

    /// [`Self::virsh`] with its own ceiling.
    pub fn virsh_within(&self, limit: Duration, args: &[&str]) -> Result<String> {
        virsh_command(self.ns, &self.uri, limit, args)
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
    /// (e.g. [`VIF_SCRIPT_CALLS`]); `None` for any other path.
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
                self.read("/var/log/libvirt/libvirtd.log")
            );
        }
        let _ = self.process.terminate(process::DROP_GRACE);
    }
}

/// `virsh -c uri ARGS` in `ns`, killed after `limit`.
fn virsh_command(ns: &Netns, uri: &str, limit: Duration, args: &[&str]) -> Result<String> {
    let limit = limit.as_secs().max(1).to_string();
    let what = format!("virsh {} on {uri}", args.join(" "));
    process::run_checked(
        &what,
        ns.command("timeout")
            .args(["--kill-after=5", &limit, VIRSH, "-c", uri])
            .args(args),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            name: "vmtunlab-guest".into(),
            image: GuestImage {
                kernel: "/g/vmlinuz".into(),
                initrd: "/g/initrd".into(),
            },
            mac: "52:54:00:00:71:02".into(),
            vif: "vif0".into(),
            addr: "203.0.113.2".into(),
            gateway: "192.0.2.1".into(),
        }
    }

    #[test]
    fn the_domain_has_the_documented_interface_and_acpi() {
        let xml = domain_xml(&spec());
        let interface = "<interface type='ethernet'>\n      <mac address='52:54:00:00:71:02'/>\n      <target dev='vif0'/>\n      <script path='/etc/libvirt/scripts/vif-route'/>\n      <model type='virtio'/>\n    </interface>";
        assert!(xml.contains(interface), "{xml}");
        assert!(xml.contains("<acpi/>"));
        assert!(xml.contains("<domain type='qemu'>"));
        assert!(xml.contains("vmtun.addr=203.0.113.2 vmtun.gw=192.0.2.1"));
        assert!(
            xml.contains(
                "<source path='/var/log/libvirt/qemu/vmtunlab-guest.console' append='on'/>"
            )
        );
    }

    #[test]
    fn xml_text_is_escaped() {
        let mut odd = spec();
        odd.image.kernel = "/a&b/<k>'".into();
        let xml = domain_xml(&odd);
        assert!(
            xml.contains("<kernel>/a&amp;b/&lt;k&gt;&apos;</kernel>"),
            "{xml}"
        );
    }

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
            "mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt\n"
        ));
        assert!(script.contains(
            "for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do\n"
        ));
        assert!(script.contains("  mount --bind \"$dir/${pair%%:*}\" \"${pair#*:}\"\n"));
        assert!(script.contains("mount -t tmpfs -o mode=0755 vmtunlab /run\n"));
        assert!(script.contains("lowerdir=/var,upperdir=/run/vmtunlab-var/upper,"));
        assert!(script.ends_with("exec libvirtd --listen --pid-file \"$3\"\n"));
    }

    #[test]
    fn the_lab_script_records_the_call_and_runs_the_shipped_one() {
        let script = vif_script(
            Path::new("/repo/packaging/libvirt/vif-up"),
            Path::new("/t/vmtun"),
            Path::new("/s/it's.toml"),
        );
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("echo \"$1\" >>/var/log/libvirt/vif-route.calls\n"));
        assert!(script.contains("export VMTUN='/t/vmtun' VMTUN_CONFIG='/s/it'\\''s.toml'\n"));
        assert!(script.ends_with("exec '/repo/packaging/libvirt/vif-up' \"$@\"\n"));
    }

    #[test]
    fn migration_is_live_peer_to_peer_and_to_the_underlay_address() {
        let args = migrate_args("g", "198.18.2.2");
        assert_eq!(
            args,
            [
                "migrate",
                "--live",
                "--p2p",
                "--persistent",
                "--verbose",
                "g",
                "qemu+tcp://198.18.2.2/system",
                "--migrateuri",
                "tcp://198.18.2.2"
            ]
        );
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
