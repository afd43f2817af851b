//! What the command line says about itself when there is little to do: `vmtun down` with no
//! instance running, and after one that crashed. Its words and exit code must be true. And
//! the command line as a user meets it: `genkey` (WireGuard's name), output into a pipe
//! whose reader went away (`| head -1`), completions and man pages. And who may use a
//! running instance's control socket: root, `[control] group`, no one else.
//!
//! ```text
//!   ns a (a host with no instance, or one whose `vmtun up` was SIGKILLed)
//!   $ vmtun down -c a.toml
//!   $ vmtun up --dry-run -c a.toml | head -1
//! ```

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
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

/// `vmtun ARGS` with stdin `input`: exit code, stdout, stderr. For the commands that need
/// no namespace (keys, completions, man pages).
fn vmtun(args: &[&str], input: &str) -> Result<(Option<i32>, String, String)> {
    use std::io::Write as _;
    let mut child = Command::new(VMTUN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io(format!("running vmtun {}", args.join(" ")), e))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| LabError::io("writing vmtun's stdin", e))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io("waiting for vmtun", e))?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `vmtun genkey`, what a WireGuard user types, is `keygen`: a key `pubkey` accepts.
#[test]
fn genkey_is_keygen_under_wireguards_name() -> Result<()> {
    let (code, key, err) = vmtun(&["genkey"], "")?;
    check(
        code == Some(0) && key.trim().len() == 44 && err.is_empty(),
        || format!("`vmtun genkey` exited {code:?}, printed {key:?}, stderr {err:?}"),
    )?;
    let (code, public, err) = vmtun(&["pubkey"], &key)?;
    check(code == Some(0) && public.trim().len() == 44, || {
        format!(
            "`vmtun pubkey` of genkey's key exited {code:?}, printed {public:?}, stderr {err:?}"
        )
    })
}

/// Runs `cmd` with stdout a pipe whose reader has already gone, as `| head -1` leaves it
/// once it has its line: exit code and stderr.
fn with_stdout_closed(
    mut cmd: Command,
    scratch: &Scratch,
    label: &str,
) -> Result<(Option<i32>, String)> {
    let (reader, writer) = std::io::pipe().map_err(|e| LabError::io("making a pipe", e))?;
    drop(reader);
    let stderr = scratch.path().join(format!("{label}.stderr"));
    let file = std::fs::File::create(&stderr)
        .map_err(|e| LabError::io(format!("creating {}", stderr.display()), e))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(file)
        .spawn()
        .map_err(|e| LabError::io(format!("running {label}"), e))?;
    drop(cmd);
    let status = wait_for(WAIT, &format!("{label} to exit"), || {
        child.try_wait().ok().flatten()
    });
    let status = match status {
        Ok(status) => status,
        Err(timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timeout);
        }
    };
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    Ok((status.code(), err))
}

/// Output into a closed pipe ends quietly: exit 0 and no panic, for a command that prints
/// one line (`keygen`), a long one (`completions`), and `up --dry-run` after its checks
/// (whose checklist on stderr stays).
#[test]
fn a_closed_stdout_ends_the_output_quietly() -> Result<()> {
    preflight(&[]);
    let net = Pair::new("clipipe")?;
    let scratch = &net.scratch;
    let path = config().write(scratch)?;
    let mut dry_run = net.a.command(VMTUN);
    dry_run.args(["up", "--dry-run", "-c"]).arg(&path);
    for (label, cmd) in [
        ("keygen", {
            let mut cmd = Command::new(VMTUN);
            cmd.arg("keygen");
            cmd
        }),
        ("completions", {
            let mut cmd = Command::new(VMTUN);
            cmd.args(["completions", "bash"]);
            cmd
        }),
        ("dry-run", dry_run),
    ] {
        let (code, err) = with_stdout_closed(cmd, scratch, label)?;
        check(
            code == Some(0) && !err.contains("panicked") && !err.contains("Broken pipe"),
            || format!("`vmtun {label}` into a closed pipe exited {code:?}; stderr:\n{err}"),
        )?;
    }
    Ok(())
}

/// Completions for bash, zsh and fish, and the man pages, come from the CLI's definition:
/// every command is in them, and bash accepts its script.
#[test]
fn completions_and_man_pages_cover_every_command() -> Result<()> {
    let commands = [
        "keygen", "genkey", "pubkey", "genpsk", "up", "check", "down", "status", "cutover",
        "vif-up", "demo",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = vmtun(&["completions", shell], "")?;
        check(code == Some(0) && err.is_empty(), || {
            format!("`vmtun completions {shell}` exited {code:?}: {err}")
        })?;
        let missing: Vec<_> = commands.iter().filter(|c| !script.contains(*c)).collect();
        check(missing.is_empty(), || {
            format!("`vmtun completions {shell}` lacks {missing:?}")
        })?;
    }
    let bash = Command::new("bash")
        .args([
            "-c",
            &format!("source <({VMTUN} completions bash) && complete -p vmtun"),
        ])
        .output()
        .map_err(|e| LabError::io("running bash", e))?;
    check(
        bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("vmtun"),
        || format!("bash did not take the completions: {bash:?}"),
    )?;

    let scratch = Scratch::new("climan")?;
    let (code, _, err) = vmtun(&["manpages", &scratch.path().to_string_lossy()], "")?;
    check(code == Some(0), || {
        format!("`vmtun manpages` exited {code:?}: {err}")
    })?;
    let page = |name: &str| std::fs::read_to_string(scratch.path().join(name)).unwrap_or_default();
    let top = page("vmtun.1");
    check(
        top.starts_with(".ie") || top.contains(".TH vmtun 1"),
        || format!("vmtun.1 is not a man page: {top:.200}"),
    )?;
    let up = page("vmtun-up.1");
    check(up.contains("dry") && up.contains("config"), || {
        format!("vmtun-up.1 does not describe up's options: {up:.400}")
    })
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

/// The user `setpriv` runs commands as: nobody (65534), in no group but its own.
const USER: &[&str] = &["--reuid=65534", "--regid=65534"];

/// Debian's group `users` (gid 100, in every base system): the control group the tests name.
const GROUP: (&str, u32) = ("users", 100);

/// A copy of `a`'s config the test user may read, in a directory it may enter, with the
/// key in a file of the user's own (a config others can read may not hold it inline).
fn config_for_the_user(a: &Vmtun, open: &Scratch) -> Result<String> {
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| LabError::io("opening the scratch directory", e))?;
    let key = open.write("a.key", &a.cfg.keys.private, 0o600)?;
    std::os::unix::fs::chown(&key, Some(65534), Some(65534))
        .map_err(|e| LabError::io("giving the key file to the user", e))?;
    let text = a.cfg.to_toml().replace(
        &format!("private_key = {:?}", a.cfg.keys.private),
        &format!("private_key_file = {key:?}"),
    );
    let readable = open.write("a.toml", &text, 0o644)?;
    Ok(readable.to_string_lossy().into_owned())
}

/// `vmtun status -c CONFIG` run by `setpriv SETPRIV`, the user's identity.
fn status_as(net: &Pair, setpriv: &[&str], config: &str) -> Result<(Option<i32>, String, String)> {
    let args: Vec<&str> = setpriv.iter().copied().chain([VMTUN]).collect();
    run_setpriv(&net.a, &net.scratch, &args, &["status", "-c", config])
}

/// Fails unless `outcome` is a success that printed `a`'s interface.
fn check_answered(what: &str, outcome: (Option<i32>, String, String), a: &Vmtun) -> Result<()> {
    let (code, out, err) = outcome;
    check(
        code == Some(0) && out.contains(&format!("interface: {}", a.ifname())),
        || format!("{what}: expected the status; exit {code:?}, stdout {out:?}, stderr {err:?}"),
    )
}

/// `status` after a crash says the instance is dead and to run `down` (not "Connection
/// refused"); run as a user, it says to run as root (not "no vmtun running").
#[test]
fn status_says_what_to_do_after_a_crash_and_without_root() -> Result<()> {
    preflight(&["setpriv"]);
    let net = Pair::new("statuswords")?;
    let mut a = Vmtun::start(&net.a, &net.scratch, config())?;
    let open = Scratch::new("statususer")?;
    let readable = config_for_the_user(&a, &open)?;
    let as_user = [USER, &["--clear-groups"]].concat();
    check_refused(
        "status as a user",
        status_as(&net, &as_user, &readable)?,
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

/// The file modes are not the only guard: a user who gets past them (here with
/// CAP_DAC_OVERRIDE, as a badly confined service might) is still refused by the instance,
/// which checks who connected (SO_PEERCRED), with one line.
#[test]
fn the_control_socket_checks_who_connected() -> Result<()> {
    preflight(&["setpriv"]);
    let net = Pair::new("peercred")?;
    let a = Vmtun::start(&net.a, &net.scratch, config())?;
    let open = Scratch::new("peercreduser")?;
    let readable = config_for_the_user(&a, &open)?;
    let past_the_modes = [
        USER,
        &[
            "--clear-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
        ],
    ]
    .concat();
    check_refused(
        "status as a user past the file modes",
        status_as(&net, &past_the_modes, &readable)?,
        &["permission denied", "root only", "control.group"],
    )?;
    let path = a.path.to_string_lossy().into_owned();
    check_answered("status as root", status_as(&net, &[], &path)?, &a)
}

/// A request is one short line: a caller who sends a long one without a newline gets a
/// refusal at once, and the instance does not buffer what follows.
#[test]
fn a_long_control_request_is_refused_unread() -> Result<()> {
    use std::io::{Read as _, Write as _};
    preflight(&[]);
    let net = Pair::new("longreq")?;
    let a = Vmtun::start(&net.a, &net.scratch, config())?;
    let socket = Paths::in_netns(net.a.id()?, a.ifname()).socket;
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| LabError::io(format!("connecting to {}", socket.display()), e))?;
    stream
        .set_read_timeout(Some(WAIT))
        .map_err(|e| LabError::io("setting a read timeout", e))?;
    // 64 KiB fits the socket's buffer: the write returns whether or not anyone reads it.
    let _ = stream.write_all(&[b's'; 64 * 1024]);
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    check(
        reply.contains("unknown request") && reply.len() < 1024,
        || format!("a 64 KiB request without a newline got {:.300?}", reply),
    )
}

/// With `[control] group`, members of the group use `status` (by their primary or a
/// supplementary group), root still does, and other users are refused with one line that
/// names the group. The socket is root's and the group's, mode 0660.
#[test]
fn the_control_group_may_use_the_socket_and_no_one_else() -> Result<()> {
    preflight(&["setpriv"]);
    let net = Pair::new("ctlgroup")?;
    let mut cfg = config();
    cfg.extra = format!("\n[control]\ngroup = {:?}\n", GROUP.0);
    let a = Vmtun::start(&net.a, &net.scratch, cfg)?;
    let socket = Paths::in_netns(net.a.id()?, a.ifname()).socket;
    let meta = std::fs::metadata(&socket)
        .map_err(|e| LabError::io(format!("reading {}", socket.display()), e))?;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    check(
        meta.uid() == 0 && meta.gid() == GROUP.1 && meta.permissions().mode() & 0o777 == 0o660,
        || {
            format!(
                "{}: owner {}:{} mode {:o}; expected 0:{} 0660",
                socket.display(),
                meta.uid(),
                meta.gid(),
                meta.permissions().mode() & 0o777,
                GROUP.1
            )
        },
    )?;
    // The directories now let everyone through: the instance's other files are root's alone.
    let dir = socket.parent().expect("/run/vmtun/net-<ns>");
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LabError::io(format!("listing {}", dir.display()), e))?;
    let own = format!("{}.", a.ifname());
    let files = entries.flatten().map(|e| e.path()).filter(|p| {
        *p != socket
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&own))
    });
    for file in files {
        let mode = std::fs::metadata(&file).map_or(0, |m| m.permissions().mode());
        check(mode & 0o077 == 0, || {
            format!("{} has mode {mode:o}: others may read it", file.display())
        })?;
    }
    let open = Scratch::new("ctlgroupuser")?;
    let readable = config_for_the_user(&a, &open)?;
    let supplementary = format!("--groups={}", GROUP.1);
    let member = [
        &["--reuid=65534", "--regid=65534"],
        &[supplementary.as_str()][..],
    ]
    .concat();
    check_answered(
        "status as a member",
        status_as(&net, &member, &readable)?,
        &a,
    )?;
    let primary = format!("--regid={}", GROUP.1);
    let by_primary = ["--reuid=65534", primary.as_str(), "--clear-groups"];
    check_answered(
        "status by the primary group",
        status_as(&net, &by_primary, &readable)?,
        &a,
    )?;
    let stranger = [USER, &["--clear-groups"]].concat();
    check_refused(
        "status as a user outside the group",
        status_as(&net, &stranger, &readable)?,
        &[
            "permission denied",
            "run this as root or as a member of group users",
        ],
    )?;
    let path = a.path.to_string_lossy().into_owned();
    check_answered("status as root", status_as(&net, &[], &path)?, &a)
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
