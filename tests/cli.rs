//! What the command line says about itself when there is little to do: `vmtun down` with no
//! instance running, and after one that crashed. Its words and exit code must be true.
//!
//! ```text
//!   ns a (a host with no instance, or one whose `vmtun up` was SIGKILLed)
//!   $ vmtun down -c a.toml
//! ```

mod common;

use common::*;
use std::path::Path;
use vmtun::control::Paths;

/// `vmtun down -c FILE` in `ns`: exit code, stdout, stderr.
fn down(ns: &Netns, scratch: &Scratch, config: &Path) -> Result<(Option<i32>, String, String)> {
    let path = config.to_string_lossy().into_owned();
    run_vmtun(ns, scratch, "down", &["down", "-c", &path], WAIT)
}

/// A config for one host with one (absent) peer.
fn config() -> VmtunCfg {
    let peer = vmtun_keypair();
    VmtunCfg::new(
        &vmtun_keypair(),
        TUNNEL_A,
        vec![PeerCfg::new(&peer.public, Some(UNDERLAY_B), TUNNEL_B)],
    )
}

/// Fails unless `down` exited 0, printed exactly `stdout` and nothing on stderr.
fn check_said(outcome: (Option<i32>, String, String), stdout: &str) -> Result<()> {
    let (code, out, err) = outcome;
    check(code == Some(0) && out == stdout && err.is_empty(), || {
        format!(
            "`vmtun down` exited {code:?} with stdout {out:?} and stderr {err:?}; expected 0, {stdout:?} and nothing"
        )
    })
}

/// Nothing running and nothing left: `down` says exactly that, succeeds (there is nothing
/// to stop, as asked), and leaves no file of its own behind (it takes the lock to look).
#[test]
fn down_with_nothing_running_says_so_and_succeeds() -> Result<()> {
    preflight(&[]);
    let scratch = Scratch::new("downidle")?;
    let ns = Netns::new("a")?;
    let cfg = config();
    let path = cfg.write(&scratch)?;
    let left_before: Vec<_> = run_files(&ns, &cfg.name)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    check(left_before.is_empty(), || {
        format!("files of a fresh interface name exist already: {left_before:?}")
    })?;
    let said = format!(
        "no vmtun running for {} and nothing left to clean\n",
        cfg.name
    );
    // Twice: the first look must not leave anything that changes the second answer.
    for _ in 0..2 {
        check_said(down(&ns, &scratch, &path)?, &said)?;
        let left: Vec<_> = run_files(&ns, &cfg.name)
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        check(left.is_empty(), || {
            format!("`vmtun down` with nothing running left {left:?}")
        })?;
    }
    Ok(())
}

/// After a crash (SIGKILL: no cleanup ran) `down` says it cleaned up, and has: nothing of
/// the instance is left. A second `down` then finds nothing to clean.
#[test]
fn down_after_a_crash_cleans_up_and_says_so() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("downcrash")?;
    let mut a = Vmtun::start(&net.a, &net.scratch, config())?;
    a.kill()?;
    let state = Paths::in_netns(net.a.id()?, a.ifname()).state;
    check(state.exists(), || {
        format!(
            "{} missing after SIGKILL: nothing for down to clean",
            state.display()
        )
    })?;
    check_said(
        down(&net.a, &net.scratch, &a.path)?,
        &format!(
            "cleaned up after a vmtun for {} that did not exit cleanly\n",
            a.ifname()
        ),
    )?;
    a.check_gone()?;
    check_said(
        down(&net.a, &net.scratch, &a.path)?,
        &format!(
            "no vmtun running for {} and nothing left to clean\n",
            a.ifname()
        ),
    )
}

/// A control socket left by a dead instance (no state file: it had changed nothing yet):
/// `down` removes it and says so, instead of claiming there was nothing to clean.
#[test]
fn down_removes_a_stale_control_socket_and_says_so() -> Result<()> {
    preflight(&[]);
    let scratch = Scratch::new("downsock")?;
    let ns = Netns::new("a")?;
    let cfg = config();
    let path = cfg.write(&scratch)?;
    let socket = Paths::in_netns(ns.id()?, &cfg.name).socket;
    std::fs::create_dir_all(socket.parent().expect("/run/vmtun/net-<ns>"))
        .and_then(|()| std::os::unix::net::UnixListener::bind(&socket).map(drop))
        .map_err(|e| LabError::io(format!("making a stale {}", socket.display()), e))?;
    let said = format!(
        "no vmtun running for {}; removed its stale control socket {}\n",
        cfg.name,
        socket.display()
    );
    check_said(down(&ns, &scratch, &path)?, &said)?;
    check(!socket.exists(), || {
        format!("{} is still there", socket.display())
    })?;
    check_said(
        down(&ns, &scratch, &path)?,
        &format!(
            "no vmtun running for {} and nothing left to clean\n",
            cfg.name
        ),
    )
}
