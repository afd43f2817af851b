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

/// What `down` says after the crash of a plain tunnel: all it changed went with its TUN
/// device, so there was nothing to undo, only its record to remove.
fn after_a_plain_crash(name: &str) -> String {
    format!(
        "no vmtun running for {name}; nothing that one which did not exit cleanly changed was \
         left (its changes went with its TUN device); removed its record\n"
    )
}

/// After a crash (SIGKILL: no cleanup ran) `down` says what it found, and cleans it:
/// nothing of the instance is left. A second `down` then finds nothing to clean.
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
        &after_a_plain_crash(a.ifname()),
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

/// Fails unless `outcome` is a failure with one line on stderr containing all of `words`.
fn check_refused(what: &str, outcome: (Option<i32>, String, String), words: &[&str]) -> Result<()> {
    let (code, out, err) = outcome;
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    check(
        code.is_some_and(|c| c != 0)
            && lines.len() == 1
            && words.iter().all(|w| lines[0].contains(w)),
        || {
            format!(
                "{what}: expected a failure naming {words:?} in one line; exit {code:?}, \
                 stdout {out:?}, stderr {err:?}"
            )
        },
    )
}

/// `status` after a crash says the instance is dead and to run `down` (not "Connection
/// refused"); run as a user, it says to run as root (not "no vmtun running").
#[test]
fn status_says_what_to_do_after_a_crash_and_without_root() -> Result<()> {
    preflight(&["setpriv"]);
    let net = Pair::new("statuswords")?;
    let mut a = Vmtun::start(&net.a, &net.scratch, config())?;
    // A copy of the config a user may read, in a directory a user may enter.
    let open = Scratch::new("statususer")?;
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| LabError::io("opening the scratch directory", e))?;
    let readable = open.write("a.toml", &a.cfg.to_toml(), 0o644)?;
    let readable = readable.to_string_lossy().into_owned();
    let as_user = ["--reuid=65534", "--regid=65534", "--clear-groups", VMTUN];
    let outcome = run_setpriv(&net.a, &net.scratch, &as_user, &["status", "-c", &readable])?;
    check_refused(
        "status as a user",
        outcome,
        &["permission denied", "run this as root"],
    )?;
    a.kill()?;
    let path = a.path.to_string_lossy().into_owned();
    let outcome = run_vmtun(
        &net.a,
        &net.scratch,
        "status",
        &["status", "-c", &path],
        WAIT,
    )?;
    check_refused(
        "status after a crash",
        outcome,
        &[
            "is not running: it died without cleaning up",
            &format!("run `vmtun down -c {path}`"),
        ],
    )?;
    check_said(
        down(&net.a, &net.scratch, &a.path)?,
        &after_a_plain_crash(a.ifname()),
    )?;
    a.check_gone()
}

/// `setpriv ARGS` in `ns`: exit code, stdout, stderr.
fn run_setpriv(
    ns: &Netns,
    scratch: &Scratch,
    setpriv: &[&str],
    args: &[&str],
) -> Result<(Option<i32>, String, String)> {
    let mut cmd = ns.command("setpriv");
    cmd.args(setpriv).args(args);
    let mut process = lab::Process::spawn("setpriv", scratch.path(), cmd)?;
    let status = process.wait_timeout(WAIT)?;
    Ok((status.code(), process.stdout(), process.stderr()))
}

/// What another program put on the host in vmtun's way: an object of the same name, added
/// to ns a before `up` runs (`IFACE` stands for the config's interface name).
struct InTheWay {
    what: &'static str,
    commands: &'static [&'static str],
    words: &'static [&'static str],
}

const IN_THE_WAY: &[InTheWay] = &[
    InTheWay {
        what: "a bridge named as the TUN device",
        commands: &["ip link add IFACE type bridge"],
        words: &[
            "an interface IFACE already exists in this network namespace (not vmtun's)",
            "set interface.name",
            "`ip link del IFACE`",
        ],
    },
    InTheWay {
        what: "someone else's rule for the mark",
        commands: &["ip rule add fwmark 0x1 lookup 201 priority 10000"],
        words: &[
            "an ip rule `fwmark 0x1 lookup 201 priority 10000` already exists (not vmtun's)",
            "`ip rule del fwmark 0x1 lookup 201 priority 10000`",
            "set migration.fwmark",
        ],
    },
    InTheWay {
        what: "someone else's nft table",
        commands: &["nft add table ip vmtun"],
        words: &[
            "nft table ip vmtun already exists (not this vmtun's)",
            "`nft delete table ip vmtun`",
        ],
    },
    InTheWay {
        what: "a route in vmtun's table",
        commands: &["ip route add blackhole default table 201"],
        words: &[
            "table 201 already has a route for default (not vmtun's)",
            "`ip route del default table 201`",
            "set migration.table",
        ],
    },
];

/// Each object in the way stops `up` with one line naming it, saying it is not vmtun's and
/// what to do; the namespace is left as it was (nothing half-applied).
#[test]
fn what_is_in_the_way_of_up_is_named_with_what_to_do() -> Result<()> {
    preflight(&["nft"]);
    let mut failures = Vec::new();
    for case in IN_THE_WAY {
        let scratch = Scratch::new("intheway")?;
        let ns = Netns::new("a")?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let mut cfg = config();
        cfg.peers[0].allowed_ips = vec!["0.0.0.0/0".into()];
        cfg.extra = format!(
            "\n[migration]\nrole = \"old\"\nsubnets = [\"203.0.113.0/29\"]\nvia = \"{TUNNEL_B}\"\n"
        );
        for command in case.commands {
            let command = command.replace("IFACE", &cfg.name);
            let words: Vec<&str> = command.split(' ').collect();
            ns.run(words[0], &words[1..])?;
        }
        let path = cfg.write(&scratch)?;
        let path = path.to_string_lossy().into_owned();
        let before = snapshot(&ns)?;
        let outcome = run_vmtun(&ns, &scratch, "up", &["up", "-c", &path], WAIT)?;
        let words: Vec<String> = (case.words.iter())
            .map(|w| w.replace("IFACE", &cfg.name))
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        if let Err(e) = check_refused(case.what, outcome, &words) {
            failures.push(e.to_string());
        }
        if snapshot(&ns)? != before {
            failures.push(format!("{}: the namespace changed", case.what));
        }
        let left: Vec<_> = (run_files(&ns, &cfg.name).into_iter())
            .filter(|p| p.exists())
            .collect();
        if !left.is_empty() {
            failures.push(format!("{}: left {left:?}", case.what));
        }
    }
    check(failures.is_empty(), || failures.join("\n"))
}
