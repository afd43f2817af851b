//! An instance belongs to its network namespace: two with the same interface name in two
//! namespaces of one host both run, `status` and `down` act on the one of the namespace
//! they run in, and a `down` in the wrong namespace neither stops nor claims to have
//! cleaned another's. State files of an older vmtun (`/run/vmtun/<if>.json`, not keyed by
//! namespace) are undone only where their changes are.
//!
//! ```text
//!   ns a                                   ns b
//!   vmtun up  vtX 100.64.0.1               vmtun up  vtX 100.64.0.2   (same name)
//!   ul0 198.18.0.1/24 ──────────────────── ul0 198.18.0.2/24
//! ```

mod common;

use common::*;
use std::path::{Path, PathBuf};
use vmtun::control::Paths;

/// Configs for both hosts, peers of each other, with one interface name.
fn same_name(a: &KeyPair, b: &KeyPair) -> (VmtunCfg, VmtunCfg) {
    let cfg_a = VmtunCfg::new(
        a,
        TUNNEL_A,
        vec![PeerCfg::new(&b.public, Some(UNDERLAY_B), TUNNEL_B)],
    );
    let mut cfg_b = VmtunCfg::new(
        b,
        TUNNEL_B,
        vec![PeerCfg::new(&a.public, Some(UNDERLAY_A), TUNNEL_A)],
    );
    cfg_b.name = cfg_a.name.clone();
    (cfg_a, cfg_b)
}

/// Host A as role old of a move of 203.0.113.0/29: its policy rules stay in ns a when it
/// is killed, so where they are shows who cleaned what.
fn role_old(net: &Pair) -> Result<VmtunCfg> {
    net.a.sysctl("net.ipv4.ip_forward", "1")?;
    let peer = vmtun_keypair();
    let mut to_b = PeerCfg::new(&peer.public, Some(UNDERLAY_B), TUNNEL_B);
    to_b.allowed_ips.push("203.0.113.0/29".into());
    let mut cfg = VmtunCfg::new(&vmtun_keypair(), TUNNEL_A, vec![to_b]);
    cfg.extra = format!(
        "\n[migration]\nrole = \"old\"\nsubnets = [\"203.0.113.0/29\"]\nvia = \"{TUNNEL_B}\"\n"
    );
    Ok(cfg)
}

/// Whether ns a still has role old's rule for the subnet.
fn has_rule(ns: &Netns) -> Result<bool> {
    Ok(ns
        .ip(&["rule", "show"])?
        .contains("to 203.0.113.0/29 lookup 201"))
}

/// `vmtun ARGS -c config` in `ns`: exit code, stdout, stderr.
fn vmtun(ns: &Netns, scratch: &Scratch, args: &[&str], config: &Path) -> Result<Outcome> {
    let path = config.to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend(["-c", &path]);
    let (code, stdout, stderr) = run_vmtun(ns, scratch, args[0], &all, WAIT)?;
    Ok(Outcome {
        code,
        stdout,
        stderr,
    })
}

#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Fails unless the command failed with one line on stderr that contains every one of
    /// `words`.
    fn refused(&self, what: &str, words: &[&str]) -> Result<()> {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        check(
            self.code.is_some_and(|c| c != 0)
                && lines.len() == 1
                && words.iter().all(|w| lines[0].contains(w)),
            || format!("{what}: expected a failure naming {words:?} in one line, got {self:?}"),
        )
    }
}

fn display(paths: &[&PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn two_namespaces_run_the_same_interface_name_each_its_own() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("netnstwo")?;
    let scratch_b = Scratch::new("netnstwob")?;
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let (cfg_a, cfg_b) = same_name(&ka, &kb);
    let mut a = Vmtun::start(&net.a, &net.scratch, cfg_a)?;
    let mut b = Vmtun::start(&net.b, &scratch_b, cfg_b)?;
    wait_ping(&net.a, TUNNEL_B, WAIT)?;
    // Each namespace's `status` answers for its own instance.
    for (vmtun, keys) in [(&a, &ka), (&b, &kb)] {
        let status = vmtun.status()?;
        check(status.0["public_key"] == keys.public.as_str(), || {
            format!("status in its namespace answers for another instance: {status:?}")
        })?;
    }
    let (files_a, files_b) = (
        Paths::in_netns(net.a.id()?, a.ifname()),
        Paths::in_netns(net.b.id()?, b.ifname()),
    );
    check(
        files_a.socket != files_b.socket && files_a.socket.exists() && files_b.socket.exists(),
        || {
            format!(
                "expected one control socket per namespace: {:?}",
                display(&[&files_a.socket, &files_b.socket])
            )
        },
    )?;
    // `down` in ns a stops a's, and b's runs on.
    let stopped = a.down()?;
    check(stopped.stdout.contains("stopped"), || {
        format!("`down` in ns a said {:?}", stopped.stdout)
    })?;
    a.check_gone()?;
    b.status()?;
    check(net.b.has_link(b.ifname()), || {
        "b's device went with a's".into()
    })?;
    b.down()?;
    b.check_gone()
}

#[test]
fn down_and_status_in_another_namespace_leave_the_instance_alone_and_say_where() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("netnsother")?;
    let (ka, kb) = (vmtun_keypair(), vmtun_keypair());
    let (cfg_a, _) = same_name(&ka, &kb);
    let mut a = Vmtun::start(&net.a, &net.scratch, cfg_a)?;
    let lock = Paths::in_netns(net.a.id()?, a.ifname()).lock;
    let shown = lock.display().to_string();
    vmtun(&net.b, &net.scratch, &["down"], &a.path)?
        .refused("down in ns b", &["in this network namespace", &shown])?;
    vmtun(&net.b, &net.scratch, &["status"], &a.path)?
        .refused("status in ns b", &["in this network namespace", &shown])?;
    a.status()?;
    a.down()?;
    a.check_gone()
}

#[test]
fn down_after_a_crash_undoes_only_in_the_namespace_of_the_crash() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("netnscrash")?;
    let mut a = Vmtun::start(&net.a, &net.scratch, role_old(&net)?)?;
    a.kill()?;
    let state = Paths::in_netns(net.a.id()?, a.ifname()).state;
    check(state.exists() && has_rule(&net.a)?, || {
        "the crash left no state file or no rule".into()
    })?;
    vmtun(&net.b, &net.scratch, &["down"], &a.path)?.refused(
        "down in ns b after a crash in ns a",
        &["another namespace", &state.display().to_string()],
    )?;
    check(state.exists() && has_rule(&net.a)?, || {
        "down in ns b removed the record or the rule of ns a".into()
    })?;
    let down = vmtun(&net.a, &net.scratch, &["down"], &a.path)?;
    check(
        down.code == Some(0)
            && down.stdout
                == format!(
                    "cleaned up after a vmtun for {} that did not exit cleanly\n",
                    a.ifname()
                ),
        || format!("down in ns a: {down:?}"),
    )?;
    check(!has_rule(&net.a)?, || "down in ns a left the rule".into())?;
    a.check_gone()
}

/// An older vmtun kept `/run/vmtun/<if>.json`, `.lock` and `.sock` for every namespace:
/// made here from a killed instance's files, as such a vmtun would have left them.
#[test]
fn a_state_file_of_an_older_vmtun_is_undone_where_its_changes_are() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("netnslegacy")?;
    let mut a = Vmtun::start(&net.a, &net.scratch, role_old(&net)?)?;
    a.kill()?;
    let keyed = Paths::in_netns(net.a.id()?, a.ifname());
    let moves = [
        (&keyed.state, &keyed.legacy_state),
        (&keyed.lock, &keyed.legacy_lock),
        (&keyed.socket, &keyed.legacy_socket),
    ];
    for (from, to) in moves {
        if from.exists() {
            std::fs::rename(from, to)
                .map_err(|e| LabError::io(format!("moving {}", from.display()), e))?;
        }
    }
    let legacy = keyed.legacy_state.display().to_string();
    vmtun(&net.b, &net.scratch, &["down"], &a.path)?
        .refused("down in ns b", &["another namespace", &legacy])?;
    check(keyed.legacy_state.exists() && has_rule(&net.a)?, || {
        "down in ns b removed the older vmtun's record or rule".into()
    })?;
    let down = vmtun(&net.a, &net.scratch, &["down"], &a.path)?;
    check(
        down.code == Some(0) && down.stdout.starts_with("cleaned up after a vmtun"),
        || format!("down in ns a: {down:?}"),
    )?;
    check(!has_rule(&net.a)?, || "down in ns a left the rule".into())?;
    let left: Vec<String> = display(&[
        &keyed.legacy_state,
        &keyed.legacy_lock,
        &keyed.legacy_socket,
    ])
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    check(left.is_empty(), || {
        format!("down in ns a left the older vmtun's {left:?}")
    })?;
    a.check_gone()
}
