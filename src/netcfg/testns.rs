//! Test-only: a network namespace of the test's own, deleted on drop (also when the test
//! panics), and a way to run netcfg's code inside it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

/// A uniquely named lab namespace ([`crate::lab::Netns`]: deleted on drop, on SIGINT or
/// SIGTERM, and by the next lab run if this process dies).
pub(crate) struct TestNs(crate::lab::Netns);

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).collect();
        let ns = crate::lab::Netns::new(&format!("nc{tag}")).expect("creating a lab namespace");
        TestNs(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Runs `cmd` with `sh -c` inside the namespace; returns (success, stdout + stderr).
    pub fn try_sh(&self, cmd: &str) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", self.name(), "sh", "-c", cmd])
            .output()
            .expect("running ip netns exec");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// Like [`TestNs::try_sh`], panicking on failure.
    pub fn sh(&self, cmd: &str) -> String {
        let (ok, out) = self.try_sh(cmd);
        assert!(ok, "in {}: `{cmd}` failed: {out}", self.name());
        out
    }

    /// Runs `f` on a thread that entered the namespace first, so every socket it opens and
    /// every `/proc/sys/net` file it touches belongs to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name());
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).expect("opening the namespace");
                // SAFETY: setns on a namespace fd we own; affects this thread only.
                let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}
