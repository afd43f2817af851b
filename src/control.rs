//! The control socket: how `vmtun status`, `down` and `cutover` talk to a running `up`.
//!
//! One Unix socket per instance, `/run/vmtun/net-<ns>/<interface>.sock`, mode 0600 in 0700
//! directories (root only; with `[control] group`, 0660 and the group's, in 0711
//! directories, see [`crate::control_access`]). An instance's files are keyed by its network namespace (see
//! [`Paths`]), so the same interface name may run in two namespaces of one host. A request
//! is one line (`status`, `down`, `cutover`); the answer is one line of JSON. This module
//! owns the paths, the socket and the client side; the messages are `status`'s, and the
//! driver answers requests.

use std::fmt;
use std::io::{BufRead as _, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixListener;

use crate::config::Config;
pub use crate::control_access::Access;
use crate::control_access::Caller;
use crate::driver::DriverHandle;
use crate::handover::VmRequests;
use crate::netcfg;
pub use crate::status::{Reply, Request, Status};

/// Where instances keep their sockets, locks and state files, one directory per network
/// namespace.
pub const RUN_DIR: &str = "/run/vmtun";

/// How long a client waits for a running instance to answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most the instance reads of a request: every request is one short line, and a
/// longer one is refused as it is, unread beyond this.
const MAX_REQUEST: u64 = 64;

/// A network namespace, as the kernel tells them apart: the inode of its nsfs file, which
/// `readlink /proc/self/ns/net` prints as `net:[4026531840]` (and `lsns -t net` lists).
/// Everything vmtun changes (TUN, routes, rules, nft, sysctls) lives in one namespace, so
/// its files are keyed by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId(pub u64);

impl NetnsId {
    /// The namespace of the calling thread.
    pub fn current() -> std::io::Result<Self> {
        Self::of(Path::new("/proc/thread-self/ns/net"))
    }

    /// The namespace behind an nsfs file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        std::fs::metadata(path)
            .map(|m| Self(m.ino()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// This namespace's directory under [`RUN_DIR`].
    pub(crate) fn dir(self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("net-{}", self.0))
    }
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.0)
    }
}

/// The files of one instance: named after its interface, in its network namespace's
/// directory `/run/vmtun/net-<inode>/`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The network namespace the files are for.
    pub netns: NetnsId,
    /// The namespace's directory, where the journal keeps the state file and the cutover
    /// memory.
    pub dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Held (flock) while the instance runs: a second `up` finds it taken.
    pub lock: PathBuf,
    /// The journal of host changes, for undo after a crash.
    pub state: PathBuf,
    /// Which subnets have cut over here; outlives the instance.
    pub cutover_memory: PathBuf,
    /// Role old: which VMs run on the new host (`crate::handover`); outlives the instance.
    pub handover_memory: PathBuf,
    /// Where a vmtun from before the files were keyed by namespace kept its state file,
    /// `/run/vmtun/<interface>.json`: `up` and `down` still undo it, where its changes are.
    pub legacy_state: PathBuf,
    /// That older vmtun's instance lock, held while it runs.
    pub legacy_lock: PathBuf,
    /// That older vmtun's control socket.
    pub legacy_socket: PathBuf,
}

impl Paths {
    /// The paths for the instance that `config` describes, in the caller's namespace.
    pub fn of(config: &Config) -> std::io::Result<Self> {
        Ok(Self::in_netns(NetnsId::current()?, &config.interface.name))
    }

    /// The paths for interface `name` in namespace `netns`.
    pub fn in_netns(netns: NetnsId, name: &str) -> Self {
        let dir = netns.dir();
        Self {
            netns,
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
            state: netcfg::state_path(&dir, name),
            cutover_memory: netcfg::memory_path(&dir, name),
            handover_memory: dir.join(format!("{name}.handover.json")),
            legacy_state: netcfg::state_path(Path::new(RUN_DIR), name),
            legacy_lock: Path::new(RUN_DIR).join(format!("{name}.lock")),
            legacy_socket: Path::new(RUN_DIR).join(format!("{name}.sock")),
            dir,
        }
    }

    /// The files of an instance for interface `name` in namespaces other than this one's:
    /// their lock or state files (a running or a dead instance), for `down` to point at.
    pub fn elsewhere(&self, name: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(RUN_DIR) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|dir| *dir != self.dir && dir.is_dir())
            .flat_map(|dir| ["lock", "json"].map(|ext| dir.join(format!("{name}.{ext}"))))
            .filter(|file| file.exists())
            .collect();
        found.sort();
        found
    }
}

/// Serves the control socket at `path` to those `access` admits: each connection's request
/// goes to the event loop through `driver` (a VM request to `vms`, beside it), and its reply
/// back to the client. The caller
/// holds the instance lock, so a socket file already there is a dead instance's and is
/// replaced.
pub fn listen(
    path: &Path,
    access: Access,
    driver: DriverHandle,
    vms: VmRequests,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    access.secure(path, Path::new(RUN_DIR))?;
    let access = std::sync::Arc::new(access);
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_client(
                stream,
                access.clone(),
                driver.clone(),
                vms.clone(),
            ));
        }
    }))
}

async fn serve_client(
    stream: tokio::net::UnixStream,
    access: std::sync::Arc<Access>,
    driver: DriverHandle,
    vms: VmRequests,
) {
    let Ok(caller) = Caller::of(stream.as_fd()) else {
        return;
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match tokio::time::timeout(
        CLIENT_TIMEOUT,
        BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await
    {
        Ok(Ok(_)) => match Request::parse(&line) {
            Some(request) => match access.refusal(&caller, &request) {
                Some(refusal) => Reply::Error(refusal),
                None if VmRequests::serves(&request) => {
                    match tokio::task::spawn_blocking(move || vms.answer(&request)).await {
                        Ok(Some(reply)) => reply,
                        _ => return,
                    }
                }
                None => match driver.request(request).await {
                    Some(reply) => reply,
                    None => return,
                },
            },
            None => Reply::Error(format!("unknown request {:?}", line.trim())),
        },
        _ => return,
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Sends one request to the instance of `config` (in the caller's network namespace) and
/// waits for the reply.
pub fn request(config: &Config, request: Request) -> anyhow::Result<Reply> {
    let paths = Paths::of(config).context("finding this network namespace")?;
    let stream = UnixStream::connect(&paths.socket)
        .map_err(|e| anyhow::anyhow!(unreachable(config, &paths, &e)))?;
    ask(stream, &request)
}

/// Sends one request to the instance listening on `socket` (any namespace's: a Unix
/// socket's path is the file system's) and waits for the reply: for a manager that knows
/// where the instance is, such as the lab.
pub fn request_at(socket: &Path, request: &Request) -> anyhow::Result<Reply> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the control socket {}", socket.display()))?;
    ask(stream, request)
}

fn ask(mut stream: UnixStream, request: &Request) -> anyhow::Result<Reply> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(request.line().as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .context("reading the instance's reply")?;
    serde_json::from_str(&line).context("the instance's reply is not valid JSON")
}

/// Why the instance's control socket did not answer, and what to do, in one line.
fn unreachable(config: &Config, paths: &Paths, e: &std::io::Error) -> String {
    let name = &config.interface.name;
    let socket = paths.socket.display();
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => format!(
            "the vmtun for {name} is not running: it died without cleaning up (its control \
             socket {socket} is stale); run `vmtun down -c {}` to undo what it left",
            config.path.display()
        ),
        Some(libc::EACCES | libc::EPERM) => match &config.control.group {
            None => format!(
                "cannot reach a vmtun for {name}: permission denied on {socket} ({RUN_DIR} is \
                 root's); run this as root"
            ),
            Some(group) => format!(
                "cannot reach a vmtun for {name}: permission denied on {socket}; run this as \
                 root or as a member of group {}",
                group.name
            ),
        },
        Some(libc::ENOENT) => {
            let here = format!(
                "no vmtun running for {name} in this network namespace ({})",
                paths.netns
            );
            match paths.elsewhere(name).as_slice() {
                [] => here,
                others => format!(
                    "{here}; other namespaces have one ({}): run vmtun in that namespace",
                    others
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        _ => format!("cannot reach the vmtun for {name} at {socket}: {e}"),
    }
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
