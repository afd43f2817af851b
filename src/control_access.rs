//! Who may use an instance's control socket: root, and the members of `[control] group`.
//!
//! Two guards. The socket file is root's (and the group's), mode 0600 (0660), so the kernel
//! refuses `connect` to anyone else; and on every connection the instance asks the kernel
//! who connected (`SO_PEERCRED`, `SO_PEERGROUPS`: the caller's identity when it called
//! `connect`) and answers only root and the group, so a user who gets past the file modes
//! (CAP_DAC_OVERRIDE, a mode changed by hand) is still refused. `vmtun down` stays root's:
//! it may have to undo a dead instance's host changes, which only root can. This module owns
//! the decision ([`Access::refusal`], pure) and its two thin OS edges ([`Caller::of`],
//! [`Access::secure`]); the control module carries the requests.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::config::Group;
use crate::status::Request;

/// Who is on the other end of a control connection, as the kernel saw it at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id and its supplementary groups.
    pub gids: Vec<u32>,
}

/// Supplementary groups asked for at first; `SO_PEERGROUPS` says when more are needed.
const FIRST_GROUPS: usize = 64;

impl Caller {
    /// The identity behind a connected Unix stream socket.
    pub fn of(socket: BorrowedFd<'_>) -> io::Result<Self> {
        let fd = socket.as_raw_fd();
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: fd is a live socket; cred and len are valid for writes of len bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut gids = vec![cred.gid];
        gids.extend(peer_groups(fd)?);
        Ok(Self {
            uid: cred.uid,
            gids,
        })
    }
}

/// `SO_PEERGROUPS`: the caller's supplementary groups (Linux 4.13).
fn peer_groups(fd: libc::c_int) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; FIRST_GROUPS];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: fd is a live socket; groups holds len bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the kernel wrote how many bytes it needs into len.
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

/// Who may use one instance's control socket.
#[derive(Debug, Clone)]
pub struct Access {
    /// The instance's interface, for messages.
    pub interface: String,
    /// `[control] group`: whose members may use status and cutover besides root.
    pub group: Option<Group>,
}

impl Access {
    /// Why `caller` may not make `request`, as the one line it gets back; `None`: allowed.
    pub fn refusal(&self, caller: &Caller, request: &Request) -> Option<String> {
        if caller.uid == 0 {
            return None;
        }
        let name = &self.interface;
        let Some(group) = &self.group else {
            return Some(format!(
                "permission denied: the vmtun for {name} answers root only; to let a group \
                 use status and cutover, name it in control.group"
            ));
        };
        if !caller.gids.contains(&group.gid) {
            return Some(format!(
                "permission denied: the vmtun for {name} answers root and members of group \
                 {} only",
                group.name
            ));
        }
        match request {
            Request::Status | Request::Cutover => None,
            Request::Down => Some(format!(
                "permission denied: stopping the vmtun for {name} is root's (it undoes host \
                 changes); group {} may use status and cutover",
                group.name
            )),
            Request::Handover(_) | Request::HandBack(_) | Request::VifUp(_) => Some(format!(
                "permission denied: routing a VM is root's (it moves its traffic); group {} may \
                 use status and cutover",
                group.name
            )),
        }
    }

    /// Gives the socket at `socket` its owner and mode (root's, 0600; with a group, the
    /// group's too, 0660) and, with a group, lets everyone through its directory and
    /// `run_dir` above it (adding 0711: no listing; every other file in them is 0600).
    pub fn secure(&self, socket: &Path, run_dir: &Path) -> io::Result<()> {
        let Some(group) = &self.group else {
            return set_mode(socket, 0o600);
        };
        std::os::unix::fs::chown(socket, Some(0), Some(group.gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "giving {} to group {} (control.group): {e}; that needs CAP_CHOWN (the \
                     packaged unit grants it)",
                    socket.display(),
                    group.name
                ),
            )
        })?;
        set_mode(socket, 0o660)?;
        for dir in socket.parent().into_iter().chain([run_dir]) {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
            set_mode(dir, mode | 0o711)?;
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("setting mode {mode:o} on {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(group: Option<u32>) -> Access {
        Access {
            interface: "vmtun0".into(),
            group: group.map(|gid| Group {
                name: "vmtunctl".into(),
                gid,
            }),
        }
    }

    fn caller(uid: u32, gids: &[u32]) -> Caller {
        Caller {
            uid,
            gids: gids.to_vec(),
        }
    }

    fn all() -> [Request; 6] {
        [
            Request::Status,
            Request::Cutover,
            Request::Down,
            Request::Handover("vif0".into()),
            Request::HandBack("vif0".into()),
            Request::VifUp("vif0".into()),
        ]
    }

    #[test]
    fn root_may_do_everything_with_or_without_a_group() {
        for group in [None, Some(120)] {
            for request in all() {
                assert_eq!(access(group).refusal(&caller(0, &[0]), &request), None);
            }
        }
    }

    #[test]
    fn without_a_group_every_other_user_is_refused() {
        for request in all() {
            let refused = access(None).refusal(&caller(1000, &[1000, 120]), &request);
            let line = refused.expect("refused");
            assert!(
                line.contains("root only") && line.contains("control.group"),
                "{line}"
            );
        }
    }

    #[test]
    fn members_may_ask_status_and_cutover_but_not_down_or_a_handover() {
        let access = access(Some(120));
        for member in [caller(1000, &[120]), caller(1000, &[1000, 27, 120])] {
            assert_eq!(access.refusal(&member, &Request::Status), None);
            assert_eq!(access.refusal(&member, &Request::Cutover), None);
            for request in &all()[2..] {
                let refused = access.refusal(&member, request).expect("refused");
                assert!(
                    refused.contains("root's") && refused.contains("vmtunctl"),
                    "{refused}"
                );
            }
        }
    }

    #[test]
    fn other_users_are_refused_naming_the_group() {
        for request in all() {
            let line = access(Some(120))
                .refusal(&caller(1000, &[1000, 27]), &request)
                .expect("refused");
            assert!(line.contains("members of group vmtunctl only"), "{line}");
        }
    }

    #[test]
    fn the_caller_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = Caller::of(std::os::fd::AsFd::as_fd(&a)).unwrap();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(me.uid, uid);
        assert_eq!(me.gids.first(), Some(&gid));
    }
}
