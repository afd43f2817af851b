//! The control socket: how `vmtun status`, `down` and `cutover` talk to a running `up`.
//!
//! One Unix socket per instance, `/run/vmtun/<interface>.sock`, mode 0600 in a 0700
//! directory (root only). A request is one line (`status`, `down`, `cutover`); the answer
//! is one line of JSON. This module owns the paths, the wire format and the client side;
//! the driver answers requests.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::driver::{Command, DriverHandle};
use crate::migration::MigrationStatus;
use crate::restore::RestoreStatus;

/// Where instances keep their sockets, locks and state files.
pub const RUN_DIR: &str = "/run/vmtun";

/// How long a client waits for a running instance to answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The files of one instance, all named after its interface.
pub struct Paths {
    /// The control socket.
    pub socket: PathBuf,
    /// Held (flock) while the instance runs: a second `up` finds it taken.
    pub lock: PathBuf,
    /// The journal of host changes, for undo after a crash.
    pub state: PathBuf,
}

impl Paths {
    /// The paths for the instance that `config` describes.
    pub fn of(config: &Config) -> Self {
        let name = &config.interface.name;
        let dir = PathBuf::from(RUN_DIR);
        Self {
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
            state: dir.join(format!("{name}.json")),
        }
    }
}

/// What a client asks a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// A [`Status`] snapshot.
    Status,
    /// Stop and undo everything.
    Down,
    /// Role new: remove the mark rule now.
    Cutover,
}

impl Request {
    /// Parses a request line.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "status" => Some(Self::Status),
            "down" => Some(Self::Down),
            "cutover" => Some(Self::Cutover),
            _ => None,
        }
    }

    fn line(self) -> &'static str {
        match self {
            Self::Status => "status\n",
            Self::Down => "down\n",
            Self::Cutover => "cutover\n",
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The request was carried out; a status request gets the snapshot.
    Ok(Option<Box<Status>>),
    /// The request failed; the text says why.
    Error(String),
}

/// A running instance's state, as `vmtun status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// TUN device name.
    pub interface: String,
    /// This host's public key.
    pub public_key: String,
    /// UDP port.
    pub listen_port: u16,
    /// One entry per configured peer.
    pub peers: Vec<PeerStatus>,
    /// Datagrams dropped before they could be tied to a peer, by reason.
    pub drops: BTreeMap<String, u64>,
    /// What busy polling has cost and saved.
    pub busy_poll: BusyPollStatus,
    /// The move's state, when the config has `[migration]`.
    pub migration: Option<MigrationStatus>,
    /// What vmtun put back after other programs removed it.
    #[serde(default)]
    pub restore: Option<RestoreStatus>,
}

/// Busy polling in a [`Status`]: the operator's view of the CPU it spends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusyPollStatus {
    /// The configured window (0: off).
    pub window_us: u64,
    /// Wall time spent spinning so far, in milliseconds.
    pub spun_ms: f64,
    /// Spins that ended with traffic: wake-ups saved.
    pub caught: u64,
    /// Spins cut short by the CPU budget.
    pub over_budget: u64,
}

/// One peer in a [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its public key.
    pub public_key: String,
    /// Where its packets come from (configured or learned).
    pub endpoint: Option<String>,
    /// Its cryptokey routes.
    pub allowed_ips: Vec<String>,
    /// Seconds since the last completed handshake, if any.
    pub last_handshake_secs: Option<f64>,
    /// Bytes received (payload of authenticated messages).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets from or for this peer that were dropped, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// Serves the control socket at `path`: each connection's request goes to the event loop
/// through `driver`, and its reply back to the client. The caller holds the instance
/// lock, so a socket file already there is a dead instance's and is replaced.
pub fn listen(path: &Path, driver: DriverHandle) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_client(stream, driver.clone()));
        }
    }))
}

async fn serve_client(stream: tokio::net::UnixStream, driver: DriverHandle) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply =
        match tokio::time::timeout(CLIENT_TIMEOUT, BufReader::new(read).read_line(&mut line)).await
        {
            Ok(Ok(_)) => match Request::parse(&line) {
                Some(request) => {
                    let (tx, rx) = oneshot::channel();
                    if !driver.send(Command::Control(request, tx)) {
                        return;
                    }
                    match rx.await {
                        Ok(reply) => reply,
                        Err(_) => return,
                    }
                }
                None => Reply::Error(format!("unknown request {:?}", line.trim())),
            },
            _ => return,
        };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Sends one request to the instance of `config` and waits for the reply.
pub fn request(config: &Config, request: Request) -> anyhow::Result<Reply> {
    let paths = Paths::of(config);
    let mut stream = UnixStream::connect(&paths.socket).with_context(|| {
        format!(
            "no vmtun running for {} (control socket {})",
            config.interface.name,
            paths.socket.display()
        )
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(request.line().as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .context("reading the instance's reply")?;
    serde_json::from_str(&line).context("the instance's reply is not valid JSON")
}

/// `vmtun status`: the running instance's snapshot.
pub fn status(config: &Config) -> anyhow::Result<Status> {
    match request(config, Request::Status)? {
        Reply::Ok(Some(status)) => Ok(*status),
        Reply::Ok(None) => anyhow::bail!("the instance sent no status"),
        Reply::Error(e) => anyhow::bail!("{e}"),
    }
}

/// Sends a request that expects no data back (`down`, `cutover`).
pub fn command(config: &Config, request: Request) -> anyhow::Result<()> {
    match self::request(config, request)? {
        Reply::Ok(_) => Ok(()),
        Reply::Error(e) => anyhow::bail!("{e}"),
    }
}

/// `  restored host changes: ...`: how often vmtun put back what other programs removed,
/// and the latest time; nothing while that never happened.
fn restore_lines(f: &mut fmt::Formatter<'_>, r: &RestoreStatus) -> fmt::Result {
    if let Some(last) = &r.last {
        writeln!(
            f,
            "  restored host changes: {} time(s) after another program removed them; \
             latest {:.1} ms after the removal: {}",
            r.restores,
            last.took_ns as f64 / 1e6,
            last.put_back.join("; ")
        )?;
    }
    for e in &r.failed {
        writeln!(f, "  could not restore: {e}")?;
    }
    Ok(())
}

fn drops_line(drops: &BTreeMap<String, u64>) -> String {
    let total: u64 = drops.values().sum();
    let parts: Vec<String> = drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        format!("{total}")
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "interface: {}", self.interface)?;
        writeln!(f, "  public key: {}", self.public_key)?;
        writeln!(f, "  listening port: {}", self.listen_port)?;
        writeln!(f, "  dropped (no peer): {}", drops_line(&self.drops))?;
        let b = &self.busy_poll;
        match b.window_us {
            0 => writeln!(f, "  busy polling: off")?,
            w => writeln!(
                f,
                "  busy polling: {w} us window; spun {:.1} ms, caught {} wake-ups, {} spins cut by the CPU budget",
                b.spun_ms, b.caught, b.over_budget
            )?,
        }
        if let Some(r) = &self.restore {
            restore_lines(f, r)?;
        }
        for p in &self.peers {
            writeln!(f, "\npeer: {}", p.public_key)?;
            writeln!(
                f,
                "  endpoint: {}",
                p.endpoint.as_deref().unwrap_or("(none yet)")
            )?;
            writeln!(f, "  allowed ips: {}", p.allowed_ips.join(", "))?;
            match p.last_handshake_secs {
                Some(s) => writeln!(f, "  latest handshake: {s:.1} s ago")?,
                None => writeln!(f, "  latest handshake: never")?,
            }
            writeln!(
                f,
                "  transfer: {} B received ({} packets), {} B sent ({} packets)",
                p.rx_bytes, p.rx_packets, p.tx_bytes, p.tx_packets
            )?;
            writeln!(f, "  dropped: {}", drops_line(&p.drops))?;
        }
        if let Some(m) = &self.migration {
            write!(f, "\n{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::Restore;

    fn status(restore: Option<RestoreStatus>) -> Status {
        Status {
            interface: "vmtun0".into(),
            public_key: "key".into(),
            listen_port: 51820,
            peers: Vec::new(),
            drops: BTreeMap::new(),
            busy_poll: BusyPollStatus {
                window_us: 0,
                spun_ms: 0.0,
                caught: 0,
                over_budget: 0,
            },
            migration: None,
            restore,
        }
    }

    #[test]
    fn restores_show_only_once_there_was_one() {
        let quiet = status(Some(RestoreStatus::default())).to_string();
        assert_eq!(quiet, status(None).to_string());
        assert_eq!(quiet.lines().count(), 5);
        let restored = status(Some(RestoreStatus {
            restores: 2,
            last: Some(Restore {
                at_unix_ns: 1,
                took_ns: 24_500_000,
                put_back: vec![
                    "ip rule add fwmark 0x1 lookup 201 priority 10000".into(),
                    "nft add table ip vmtun".into(),
                ],
            }),
            failed: vec!["adding nft table ip vmtun: File exists".into()],
        }));
        assert_eq!(
            restored.to_string().lines().skip(5).collect::<Vec<_>>(),
            [
                "  restored host changes: 2 time(s) after another program removed them; \
                 latest 24.5 ms after the removal: ip rule add fwmark 0x1 lookup 201 \
                 priority 10000; nft add table ip vmtun",
                "  could not restore: adding nft table ip vmtun: File exists",
            ]
        );
    }
}
