//! The namespace lab: disposable network namespaces, veth links, bridges and child
//! processes for the end-to-end tests and `vmtun demo`.
//!
//! It owns everything a test creates on the host and guarantees it goes away again: every
//! namespace is deleted when its guard drops (veths and bridges inside die with it), every
//! child process is killed by PID, and namespaces left by a lab run that died are swept
//! the next time a lab starts. It must never touch the root network namespace: all
//! commands run with `ip -n NS` / `ip netns exec NS`, threads enter a namespace only after
//! checking they really are in it, and addresses outside the lab ranges are refused
//! ([`address::check_lab_address`]).
//!
//! Spawning `ip` is deliberate: the lab is a test harness and must not share code with the
//! `netcfg` it is meant to check.

pub mod address;
pub mod error;
pub mod flood;
pub mod impair;
pub mod libvirt;
pub mod link;
pub mod migration;
pub mod netns;
pub mod ping;
pub mod process;
pub mod qemu;
pub mod qemu_tls;
pub mod registry;
pub mod scratch;
pub mod wait;
pub mod wggo;

pub use address::check_lab_address;
pub use error::{LabError, Result};
pub use link::veth;
pub use netns::Netns;
pub use process::Process;
pub use registry::{cleanup_all, install_signal_cleanup};
pub use scratch::Scratch;
pub use wait::{wait_for, wait_until};

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace and scratch directory the lab creates; the sweeper relies on it.
pub const LAB_PREFIX: &str = "vmtunlab";

/// Longest interface name Linux accepts (`IFNAMSIZ` 16, including the NUL).
pub const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process; with the PID it makes names unique on the host.
pub(crate) fn next_serial() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// An interface name unique on the whole host, for devices whose name is shared beyond
/// their namespace: wireguard-go's UAPI socket (`/run/wireguard/<name>.sock`) lives in the
/// shared `/run`. vmtun keys its files by namespace, but unique names keep a file one test
/// leaked from disturbing another.
///
/// The form is `{prefix}{pid}-{serial}` in base 36, e.g. `vt2n9c-3`. Panics if `prefix` is
/// so long that the result could exceed [`IFNAME_MAX`] (a bug in the caller).
pub fn unique_ifname(prefix: &str) -> String {
    let name = format!(
        "{prefix}{}-{}",
        base36(std::process::id()),
        base36(next_serial())
    );
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name:?} is longer than {IFNAME_MAX} characters: shorten the prefix {prefix:?}"
    );
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ifnames_differ_and_fit() {
        let a = unique_ifname("vt");
        let b = unique_ifname("vt");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX && a.starts_with("vt"));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u32::MAX).len(), 7);
    }
}
