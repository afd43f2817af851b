//! libvirt in the lab: one `libvirtd` per host namespace, so a real guest can be moved with
//! `virsh migrate --live` (with `--p2p` or without) between two lab hosts as an operator
//! moves it between two machines.
//!
//! Each daemon runs in the host's network namespace and in a mount and UTS namespace of its
//! own (`unshare --mount --uts --propagation private`): `/etc/libvirt`, `/run/libvirt`,
//! `/var/lib/libvirt`, `/var/log/libvirt`, `/var/cache/libvirt` and root's `/root/.ssh` are
//! bind mounts of directories in the test's scratch directory, `/run` is a fresh tmpfs, and
//! `/var` and `/root` are overlays whose writes land in that tmpfs (the directories libvirt
//! needs do not exist on a host without libvirt-daemon-system, and making them there would
//! touch the host). Nothing of
//! the host's own `/etc/libvirt` or `/run/libvirt` is read or written, and the mounts vanish
//! with the namespace when its last process (the daemon, its QEMUs) exits. Each daemon has
//! its own hostname and `host_uuid` (libvirt refuses to migrate to a host that looks like
//! itself) and listens with TCP on the host's underlay address; the client (`virsh`)
//! connects to that from the host's network namespace. A migration goes to the peer over
//! SSH, as the README's procedure has it (`qemu+ssh://`, see [`ssh`]).
//!
//! What this must not do: start anything in the root network namespace, or leave a mount
//! in the host's mount namespace.
//!
//! - [`domain`]: the guest as a domain (its XML, the lab's `<script>`, the `virsh migrate`
//!   arguments), pure;
//! - [`daemon`]: a daemon's configuration and namespace (pure) and [`Libvirtd`], the running
//!   daemon and its `virsh` (the thin edge);
//! - [`ssh`]: root's SSH login from the old host's daemon to the new host's.

pub mod daemon;
pub mod domain;
pub mod ssh;

pub use daemon::{DaemonSpec, Libvirtd, host_uuid};
pub use domain::{Disks, DomainSpec, Driver, domain_xml, migrate_args, vif_script};

use std::path::Path;
use std::time::Duration;

use crate::lab::process;
use crate::lab::qemu::QEMU;

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
/// The ceiling of `virsh migrate` of the small guest (2.3–3.7 s measured).
pub const MIGRATE_WAIT: Duration = Duration::from_secs(180);
/// The daemon's log (inside its private `/var/log/libvirt`): where a host's libvirtd writes
/// the errors it sends back, a failing `<script>`'s among them.
pub const LIBVIRTD_LOG: &str = "/var/log/libvirt/libvirtd.log";
/// Where the domain's `<script path=...>` points, on every host (inside its private
/// `/etc/libvirt`).
pub const VIF_SCRIPT: &str = "/etc/libvirt/scripts/vif-route";
/// The file each host's script appends the interface it was called for to (inside its
/// private `/var/log/libvirt`): the test's proof that libvirt ran it.
pub const VIF_SCRIPT_CALLS: &str = "/var/log/libvirt/vif-route.calls";

/// Why this machine cannot run the libvirt lab, if it cannot: QEMU, libvirt's daemon and
/// client, SSH's client and the lab's server, `/etc/libvirt` and the `libvirt-qemu` user,
/// all of which `scripts/setup.sh` provides.
pub fn missing_requirement() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (QEMU's tap needs it)".into());
    }
    for program in [QEMU, LIBVIRTD, VIRSH].into_iter().chain(ssh::PROGRAMS) {
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

/// The libvirt URI of the daemon listening on `addr` (TCP, the system instance).
pub fn uri(addr: &str) -> String {
    format!("qemu+tcp://{addr}/system")
}
