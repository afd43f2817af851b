//! The control socket: how `vmtun status`, `down` and `cutover` talk to a running `up`.
//!
//! One Unix socket per instance, `/run/vmtun/<interface>.sock`, mode 0600 in a 0700
//! directory (root only). A request is one line (`status`, `down`, `cutover`); the answer
//! is one line of JSON. This module owns the paths, the socket and the client side; the
//! messages are `status`'s, and the driver answers requests.

use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixListener;

use crate::config::Config;
use crate::driver::DriverHandle;
pub use crate::status::{Reply, Request, Status};

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
                Some(request) => match driver.request(request).await {
                    Some(reply) => reply,
                    None => return,
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
