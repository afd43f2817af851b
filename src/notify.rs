//! Telling the service manager how `vmtun up` is doing, for a systemd unit with
//! `Type=notify` (packaging/vmtun@.service): `READY=1` once the tunnel and all the routing
//! of the move are in place, `STOPPING=1` when it starts undoing them.
//!
//! The sd_notify protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the unix
//! socket named by `$NOTIFY_SOCKET`, a path or `@` for an abstract name. Without that
//! variable (not started by systemd) nothing is sent. A notification that cannot be sent is
//! logged and never stops `vmtun up`: the tunnel matters more than the manager's view of it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// What `vmtun up` tells the service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The tunnel device, the host plan (routes, rules, nftables) and the migration's
    /// watchers are in place, and the data path and control socket run.
    Ready,
    /// SIGTERM, SIGINT or `vmtun down` arrived: it is undoing what it did.
    Stopping,
}

impl State {
    /// The datagram for this state.
    fn message(self) -> &'static [u8] {
        match self {
            State::Ready => b"READY=1",
            State::Stopping => b"STOPPING=1",
        }
    }
}

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A name in the abstract namespace (the value without its leading `@`).
    Abstract(Vec<u8>),
}

/// Reads a `$NOTIFY_SOCKET` value; `None` for a form this does not speak (a relative path,
/// `vsock:`), which systemd never hands to a unix-socket client.
fn target(value: &OsStr) -> Option<Target> {
    let bytes = value.as_bytes();
    match bytes.first()? {
        b'/' => Some(Target::Path(PathBuf::from(value))),
        b'@' if bytes.len() > 1 => Some(Target::Abstract(bytes[1..].to_vec())),
        _ => None,
    }
}

/// Sends `state` to the service manager, if there is one; logs why not when it fails.
pub fn send(state: State) {
    let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let result = match target(&value) {
        Some(target) => send_to(&target, state.message()),
        None => Err(std::io::Error::other(
            "not an absolute path or @abstract name",
        )),
    };
    match result {
        Ok(()) => tracing::debug!("told the service manager {state:?}"),
        Err(e) => tracing::warn!(
            "could not tell the service manager {state:?} ({NOTIFY_SOCKET}={}): {e}",
            value.to_string_lossy()
        ),
    }
}

fn send_to(target: &Target, message: &[u8]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target {
        Target::Path(path) => socket.send_to(message, path)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &address)?
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_values_as_systemd_sets_them() {
        assert_eq!(
            target(OsStr::new("/run/systemd/notify")),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            target(OsStr::new("@/org/freedesktop/systemd1/notify/42")),
            Some(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        for refused in ["", "@", "notify", "vsock:2:1234"] {
            assert_eq!(target(OsStr::new(refused)), None, "{refused:?}");
        }
    }

    #[test]
    fn the_datagram_reaches_a_socket_file_and_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt as _;
        let dir = std::env::temp_dir().join(format!("vmtun-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let file = UnixDatagram::bind(&path).expect("binding a socket file");
        send_to(&Target::Path(path.clone()), State::Ready.message()).expect("sent");
        let name = format!("vmtun-notify-test-{}", std::process::id());
        let address =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let abstract_ = UnixDatagram::bind_addr(&address).expect("binding an abstract name");
        send_to(
            &Target::Abstract(name.into_bytes()),
            State::Stopping.message(),
        )
        .expect("sent");
        let mut buf = [0u8; 64];
        let n = file.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
        let n = abstract_.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
