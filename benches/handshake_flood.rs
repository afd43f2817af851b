//! What a handshake flood costs vmtun: bogus initiations with a valid mac1 (`vmtun::lab::
//! flood`, what anyone who knows the public key can send) from 64 source addresses, at
//! several rates, against a `vmtun up` in a namespace; the CPU it spent (utime + stime from
//! `/proc/PID/stat`) over each flood, per 1000 initiations, beside the same time idle, and
//! how many it counted as drops (`vmtun status`: those its socket did not overflow with);
//! with busy polling as shipped and off.
//!
//! ```text
//!   ns m  flood from 198.18.0.100-163 ── veth ── ns b  vmtun up, 198.18.0.2:51820
//! ```
//!
//! `cargo bench --bench handshake_flood` (root; `SECONDS=N` per row, default 5; `VMTUN=path`
//! for another binary). Without `--bench` (`cargo test --benches`) it runs one short row.
//! Nothing outside its two namespaces is touched; they are deleted on exit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmtun::keys::PrivateKey;
use vmtun::lab::flood::Flood;
use vmtun::lab::{self, Netns, Process, Scratch};

/// Rows of the table: bogus initiations per second (0: idle, the baseline). 50/s stays
/// below the 100/s that puts vmtun under load, so each one costs a Diffie-Hellman; above it
/// each costs a cookie reply, and beyond 20/s per source the rate limiter drops the rest.
const RATES: [u32; 5] = [0, 50, 1_000, 10_000, 50_000];
const SOURCES: u8 = 64;
/// Each row with busy polling as shipped (200 µs after traffic, at most 10 % of a core)
/// and without it: under a steady flood the loop never sleeps, so the first spends its
/// budget.
const BUSY_POLL_US: [u32; 2] = [200, 0];
const PORT: u16 = 51820;

fn main() -> ExitCode {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (rates, every): (&[u32], _) = if full {
        (&RATES, Duration::from_secs(seconds))
    } else {
        (&[0, 1_000], Duration::from_secs(1))
    };
    match run(rates, every) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handshake_flood: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(rates: &[u32], every: Duration) -> lab::Result<()> {
    lab::install_signal_cleanup()?;
    let scratch = Scratch::new("floodbench")?;
    let b = Netns::new("b")?;
    let m = Netns::new("m")?;
    for ns in [&b, &m] {
        ns.disable_ipv6()?;
    }
    lab::veth(&b, "ul0", &m, "ul0")?;
    b.add_address("ul0", "198.18.0.2/24")?;
    let sources: Vec<IpAddr> = (0..SOURCES)
        .map(|i| Ipv4Addr::new(198, 18, 0, 100 + i).into())
        .collect();
    for ip in &sources {
        m.add_address("ul0", &format!("{ip}/24"))?;
    }
    let key = PrivateKey::generate();
    let vmtun = std::env::var_os("VMTUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_vmtun").into());
    let target = SocketAddr::new(Ipv4Addr::new(198, 18, 0, 2).into(), PORT);
    println!(
        "handshake flood against {} ({SOURCES} sources, {every:?} per row)",
        vmtun.display()
    );
    println!(
        "{:>13} {:>10} {:>9} {:>9} {:>12} {:>16} {:>22}",
        "busy_poll_us",
        "rate /s",
        "sent",
        "counted",
        "vmtun CPU ms",
        "CPU % of a core",
        "CPU ms per 1000 sent"
    );
    for busy_poll_us in BUSY_POLL_US {
        let host = Host {
            ns: &b,
            vmtun: &vmtun,
            config: scratch.write(
                &format!("b{busy_poll_us}.toml"),
                &config(&key, busy_poll_us),
                0o600,
            )?,
        };
        let mut cmd = b.command(&vmtun);
        cmd.arg("up").arg("-c").arg(&host.config);
        let mut up = Process::spawn(&format!("vmtun-{busy_poll_us}"), scratch.path(), cmd)?;
        lab::wait_until(Duration::from_secs(30), "vmtun up to answer", || {
            host.counted().is_ok()
        })?;
        for &rate in rates {
            let (before, counted_before) = (cpu_ticks(up.pid())?, host.counted()?);
            let started = Instant::now();
            let sent = if rate == 0 {
                std::thread::sleep(every);
                0
            } else {
                let flood = Flood::start(&m, &sources, target, &key.public_key(), rate)?;
                std::thread::sleep(every);
                flood.stop()?
            };
            // What the socket still holds is the flood's too.
            std::thread::sleep(Duration::from_millis(300));
            let ms = (cpu_ticks(up.pid())? - before) as f64 * 1000.0 / ticks_per_second();
            let counted = host.counted()? - counted_before;
            let wall = started.elapsed().as_secs_f64() * 1000.0;
            let per_1000 = if sent == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", ms * 1000.0 / sent as f64)
            };
            println!(
                "{busy_poll_us:>13} {rate:>10} {sent:>9} {counted:>9} {ms:>12.0} {:>16.1} {per_1000:>22}",
                100.0 * ms / wall
            );
        }
        up.terminate(Duration::from_secs(10))?;
    }
    Ok(())
}

/// The flooded host's config: one peer (whose key nobody in the flood holds), no endpoint.
fn config(key: &PrivateKey, busy_poll_us: u32) -> String {
    let peer = PrivateKey::generate().public_key();
    format!(
        "[interface]\nname = \"fb{}\"\nprivate_key = \"{}\"\nlisten_port = {PORT}\n\
         address = \"100.64.0.2/24\"\nbusy_poll_us = {busy_poll_us}\n\n[[peer]]\n\
         public_key = \"{}\"\nallowed_ips = [\"100.64.0.1/32\"]\n",
        std::process::id(),
        key.to_base64(),
        peer.to_base64()
    )
}

/// The flooded `vmtun up`, for `vmtun status`.
struct Host<'a> {
    ns: &'a Netns,
    vmtun: &'a std::path::Path,
    config: PathBuf,
}

impl Host<'_> {
    /// Every drop `vmtun status --json` counts: each bogus initiation it read is one.
    fn counted(&self) -> lab::Result<u64> {
        let (vmtun, config) = (self.vmtun.to_string_lossy(), self.config.to_string_lossy());
        let out = self.ns.run(&vmtun, &["status", "-c", &config, "--json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| lab::LabError::Failed(format!("vmtun status --json: {e}: {out}")))?;
        Ok(json["drops"]
            .as_object()
            .map(|drops| drops.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0))
    }
}

/// utime + stime of `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> lab::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| lab::LabError::io(&path, e))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14)
        .zip(field(15))
        .map(|(utime, stime)| utime + stime)
        .ok_or_else(|| lab::LabError::Failed(format!("no utime/stime in {path}: {stat}")))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}
