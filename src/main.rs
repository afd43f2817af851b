//! The `vmtun` command line: parse, dispatch, turn errors into one line and an exit code.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use vmtun::config::Config;
use vmtun::keys::{PresharedKey, PrivateKey};
use vmtun::output::{self, OutputError};

/// Move running VMs to another data centre while they keep their public addresses.
///
/// `vmtun up` runs on both hosts: it carries the VMs' subnet through an encrypted,
/// WireGuard-compatible UDP tunnel and sets up the routing of the move, then undoes it on
/// exit. See README.md for the two-host procedure.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about,
    propagate_version = true,
    after_help = "Examples:
  (umask 077; vmtun keygen > /etc/vmtun/private.key)   # readable by root only
  vmtun pubkey < /etc/vmtun/private.key          # give this to the other host
  vmtun check -c /etc/vmtun/vmtun.toml           # is this host ready for the move?
  vmtun up -c /etc/vmtun/vmtun.toml --dry-run    # every change up would make
  vmtun up -c /etc/vmtun/vmtun.toml              # runs in the foreground
  vmtun status -c /etc/vmtun/vmtun.toml          # peers, traffic, cutover
  vmtun demo                                     # the whole move, in namespaces here"
)]
struct Cli {
    /// More log output: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new private key (base64), like `wg genkey`.
    #[command(visible_alias = "genkey")]
    Keygen,
    /// Read a private key on stdin, print its public key, like `wg pubkey`.
    Pubkey,
    /// Print a new pre-shared key (32 random bytes, base64), like `wg genpsk`.
    Genpsk,
    /// Bring the tunnel (and the migration routing) up; runs until SIGINT/SIGTERM or
    /// `vmtun down`, then undoes everything it did.
    Up {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Change nothing: run `vmtun check` (its checklist on stderr), then print every
        /// change `up` would make on stdout. If a check FAILs, `up` would refuse or the move
        /// would fail: no plan is printed and the exit status is 1.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that this host is ready for `up` and the move; changes nothing.
    ///
    /// Prints one line per check, `ok`, `warn` or `FAIL`, with what to do about a problem:
    /// the config; root; the clock (handshakes carry a timestamp); forwarding; rtnetlink and
    /// nftables answering; the TUN name, the bridge (role new) and the VM interfaces; the
    /// routing table, fwmark and rule priority (role new) unused by anything else; the UDP
    /// port free; per peer, a handshake and the path MTU towards its endpoint.
    ///
    /// When `vmtun up` runs for this config, what it set up is its own (not a conflict) and
    /// the handshake is its latest. Otherwise check binds the listen port for about 2.5 s
    /// and sends the peer one handshake initiation; the peer's vmtun answers it and keeps
    /// running unchanged. Run it on both hosts before the move; exit status 1 if any line
    /// FAILs (warnings do not change it).
    Check {
        /// Config file (TOML), as for `up`.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Stop a running instance; clean up after one that was killed.
    Down {
        /// Config file of the instance.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show peers, handshakes, traffic, drops, and the migration state.
    Status {
        /// Config file of the instance.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Role new: switch the VMs' replies to leave natively now (manual cutover).
    Cutover {
        /// Config file of the instance.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Role old: the VM on VIF is paused for the migration's last stage; send its traffic
    /// to the new host now, so that nothing sent to it during the pause is lost (it waits in
    /// the VM's interface queue there until the guest resumes).
    ///
    /// Run it at the source's pause: libvirt's "Suspended Migrated" lifecycle event, or
    /// QEMU's STOP during a migration. The new host must report the guest running there
    /// (`[migration] handover = "first-frame"` on both hosts) within 5 s, or the routes come
    /// back here by themselves; a guest frame on VIF here brings them back at once, and so
    /// does `--back` (run it when the source resumes after a failed migration).
    Handover {
        /// The VM's interface here, e.g. vif0 (a `[[vm]]`'s `vif`).
        vif: String,
        /// The guest runs here again: route it to VIF.
        #[arg(long)]
        back: bool,
        /// Config file of the instance.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Role old: follow libvirt's lifecycle events and run `vmtun handover` for each
    /// `[[vm]]` whose domain pauses for its migration's last stage ("Suspended Migrated"),
    /// `--back` when it resumes here; runs in the foreground (vmtun-follow-libvirt@.service).
    FollowLibvirt {
        /// Config file of the instance (role old, handover = "first-frame").
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The libvirt daemon to follow.
        #[arg(long, value_name = "URI", default_value = "qemu:///system")]
        connect: String,
    },
    /// Route a VM interface's addresses and enable proxy ARP on it; for libvirt's
    /// `<script path=...>`. Idempotent.
    ///
    /// With a vmtun running, it decides: an interface that comes up for a VM running on the
    /// other host (a migration's destination, waiting) gets its routes only at its guest's
    /// first frame.
    VifUp {
        /// The VM interface, e.g. vif0.
        iface: String,
        /// Config file listing the VM's addresses in `[[vm]]`.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Route it now, whatever the running vmtun holds: the VM runs here, but its guest
        /// has sent nothing yet.
        #[arg(long)]
        now: bool,
    },
    /// Run the whole move on this machine in network namespaces (root): progress, a
    /// timeline and a per-phase summary of what a client saw.
    Demo(vmtun::demo::DemoArgs),
    /// Print a shell completion script, e.g. `vmtun completions bash >
    /// /etc/bash_completion.d/vmtun` (the Debian package installs them).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vmtun.1, and vmtun-up.1 etc. for each command) into DIR (the
    /// Debian package installs them).
    Manpages {
        /// An existing directory, e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // `vmtun ... | head -1`: the reader has what it wanted; no message, no failure.
        Err(e) if stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("vmtun: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` is stdout's reader having gone away.
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(OutputError::Closed)))
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "vmtun=info",
        1 => "vmtun=debug",
        _ => "vmtun=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen => output::print(format_args!("{}\n", PrivateKey::generate().to_base64()))?,
        Command::Genpsk => {
            output::print(format_args!("{}\n", PresharedKey::generate().to_base64()))?
        }
        Command::Pubkey => {
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_to_string(&mut text)?;
            let key = PrivateKey::from_base64(&text)
                .map_err(|e| anyhow::anyhow!("private key on stdin: {e}"))?;
            output::print(format_args!("{}\n", key.public_key().to_base64()))?;
        }
        Command::Up { config, dry_run } => {
            let config = Config::load(&config)?;
            if dry_run {
                vmtun::check::before_dry_run(&config)?;
            }
            vmtun::instance::run(config, dry_run)?;
        }
        Command::Check { config } => {
            let list = vmtun::check::check_file(&config);
            output::print(&list)?;
            if !list.passed() {
                anyhow::bail!(
                    "check: {} FAIL line(s) above",
                    list.count(vmtun::check::Verdict::Fail)
                );
            }
        }
        Command::Down { config } => {
            let config = Config::load(&config)?;
            vmtun::instance::down(&config)?;
        }
        Command::Status { config, json } => {
            let config = Config::load(&config)?;
            let status = vmtun::control::status(&config)?;
            if json {
                output::print(format_args!("{}\n", serde_json::to_string_pretty(&status)?))?;
            } else {
                output::print(&status)?;
            }
        }
        Command::Cutover { config } => {
            let config = Config::load(&config)?;
            match vmtun::control::request(&config, vmtun::control::Request::Cutover)? {
                vmtun::control::Reply::Ok(Some(status)) => match &status.migration {
                    Some(m) => output::print(m)?,
                    None => output::print("cutover done\n")?,
                },
                vmtun::control::Reply::Ok(None) => output::print("cutover done\n")?,
                vmtun::control::Reply::Error(e) => anyhow::bail!("{e}"),
            }
        }
        Command::Handover { vif, back, config } => {
            let config = Config::load(&config)?;
            let request = if back {
                vmtun::control::Request::HandBack(vif.clone())
            } else {
                vmtun::control::Request::Handover(vif.clone())
            };
            vmtun::control::command(&config, request)?;
            output::print(if back {
                format!("{vif}: its VM is routed here again\n")
            } else {
                format!("{vif}: its VM's traffic goes to the new host\n")
            })?;
        }
        Command::FollowLibvirt { config, connect } => {
            vmtun::libvirt_events::follow(&Config::load(&config)?, &connect)?;
        }
        Command::VifUp { iface, config, now } => {
            let config = Config::load(&config)?;
            if now {
                vmtun::vif::up(&config, &iface)?;
            } else {
                vmtun::vif::up_here(&config, &iface)?;
            }
        }
        Command::Demo(args) => vmtun::demo::run(&args)?,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vmtun", &mut script);
            output::print(String::from_utf8_lossy(&script))?;
        }
        Command::Manpages { dir } => write_manpages(&dir)?,
    }
    Ok(())
}

/// `vmtun manpages DIR`: one page for vmtun and one per command, from the clap definition.
fn write_manpages(dir: &Path) -> anyhow::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| {
        format!(
            "writing the man pages into {}: is it an existing, writable directory?",
            dir.display()
        )
    })
}
