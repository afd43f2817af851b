//! Which namespaces this process has created, so they can all be deleted when the process
//! is interrupted (Ctrl-C, SIGTERM) before the guards' `Drop` runs, and the sweep of
//! namespaces left behind by lab processes that died (SIGKILL, a crash).

use super::{LAB_PREFIX, Result};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Records a namespace this process created; [`super::Netns`] calls it.
pub(crate) fn register(name: &str) {
    lock().insert(name.to_owned());
}

/// Forgets a namespace once it is deleted.
pub(crate) fn unregister(name: &str) {
    lock().remove(name);
}

fn lock() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    // A panic while holding the lock must not stop the cleanup of everything else.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deletes every namespace this process created and still holds, killing the processes
/// inside them first. For signal handlers and `vmtun demo`'s Ctrl-C path; the guards'
/// `Drop` does the same for one namespace.
pub fn cleanup_all() {
    let names: Vec<String> = lock().iter().cloned().collect();
    for name in names {
        destroy_netns(&name);
        unregister(&name);
    }
}

/// PIDs of the processes living in namespace `name` (`ip netns pids`), never our own.
pub(crate) fn pids_in(name: &str) -> Vec<u32> {
    let own = std::process::id();
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .filter(|&pid| pid != own)
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the processes in a lab namespace by PID (SIGTERM, so they can undo what they did,
/// then SIGKILL after a second), then deletes it. Only called for namespaces named with
/// [`LAB_PREFIX`], whose processes the lab started.
pub(crate) fn destroy_netns(name: &str) {
    debug_assert!(name.starts_with(LAB_PREFIX));
    for (signal, grace) in [
        (libc::SIGTERM, Duration::from_secs(1)),
        (libc::SIGKILL, Duration::from_secs(2)),
    ] {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        for &pid in &pids {
            // SAFETY: kill(2) with a PID read from the namespace the lab created.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
        let deadline = Instant::now() + grace;
        while !pids_in(name).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Deletes namespaces named `vmtunlab-<pid>-...` whose process is gone, with vmtun's files
/// for them under `/run/vmtun/net-<inode>/`: what a lab run that was SIGKILLed left behind.
/// Runs once per process, before the first namespace is made.
pub(crate) fn sweep_stale() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{LAB_PREFIX}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                // vmtun's files for that namespace: its instances died with the lab process
                // (nobody ran `vmtun down`) and what they changed goes with the namespace.
                let files = crate::control::NetnsId::of(&entry.path()).map(|id| id.dir());
                destroy_netns(&name);
                if let Ok(dir) = files {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    });
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Makes SIGINT, SIGTERM and SIGHUP delete every lab namespace before the process dies
/// with that signal. Call once at the start of a program or test that creates namespaces
/// (later calls do nothing). The handler only writes to a pipe; a watcher thread does the
/// cleanup, then restores the default action and re-raises the signal.
pub fn install_signal_cleanup() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut outcome = Ok(());
    INSTALL.call_once(|| outcome = install());
    outcome
}

fn install() -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(super::LabError::io(
            "creating the signal pipe",
            std::io::Error::last_os_error(),
        ));
    }
    let [read_fd, write_fd] = fds;
    SIGNAL_PIPE.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("lab-signal-cleanup".into())
        .spawn(move || {
            let mut byte = 0u8;
            // SAFETY: read(2) into a local byte from the pipe we created.
            let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                cleanup_all();
                let signal = libc::c_int::from(byte);
                // SAFETY: restoring the default action and re-raising ends the process as
                // the signal would have.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    libc::raise(signal);
                }
            }
        })
        .map_err(|e| super::LabError::io("starting the signal cleanup thread", e))?;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only does an async-signal-safe write.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
    Ok(())
}
