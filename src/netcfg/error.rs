//! netcfg's errors. Every error names the change or object it is about, so the operator
//! reads `adding route 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201: File exists`,
//! never a bare errno.

use std::fmt;
use std::path::PathBuf;

use super::change::{Action, Change, SysctlKey};

/// Why the kernel (or the path to it) refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    /// The kernel answered with this errno.
    #[error("{}", errno_text(*.0))]
    Errno(i32),
    /// An interface the change refers to does not exist.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// Talking to the kernel failed in a way that has no errno (unexpected reply, ...).
    #[error("{0}")]
    Netlink(String),
}

impl Cause {
    /// From an `io::Error`, keeping the errno when there is one.
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(code) => Cause::Errno(code),
            None => Cause::Netlink(e.to_string()),
        }
    }

    /// The object is already gone: what undo tolerates (a route that went with its TUN
    /// device, a rule the cutover already removed).
    pub fn is_gone(&self) -> bool {
        match self {
            Cause::Errno(e) => matches!(
                *e,
                libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL | libc::ENXIO
            ),
            Cause::NoInterface(_) => true,
            Cause::Netlink(_) => false,
        }
    }

    /// The object exists already: what idempotent plans (`vif-up`) tolerate.
    pub fn is_exists(&self) -> bool {
        matches!(self, Cause::Errno(libc::EEXIST))
    }
}

/// The errno's text without Rust's " (os error N)" suffix, as `ip` prints it.
fn errno_text(code: i32) -> String {
    let s = std::io::Error::from_raw_os_error(code).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A netcfg failure, naming what failed and on which object.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Applying or reverting one change failed.
    #[error("{}: {cause}", change.describe(*action))]
    Change {
        /// Applying or reverting.
        action: Action,
        /// The change (boxed: errors stay small).
        change: Box<Change>,
        /// Why.
        cause: Cause,
    },
    /// A plan failed and rolling it back failed too: these changes are still in place (and
    /// stay in the state file for `vmtun down`).
    #[error("{error}; rolling back also failed, still in place: {}", List(.leftovers))]
    RollbackFailed {
        /// The failure that started the rollback.
        error: Box<NetError>,
        /// The rollback failures.
        leftovers: Vec<NetError>,
    },
    /// Undo could not revert these changes (they stay in the state file).
    #[error("undo left {} change(s) in place: {}", .0.len(), List(.0))]
    Undo(Vec<NetError>),
    /// Reading a sysctl failed.
    #[error("reading sysctl {key}: {cause}")]
    ReadSysctl {
        /// Which sysctl.
        key: SysctlKey,
        /// Why.
        cause: Cause,
    },
    /// A host setting vmtun needs but does not change itself is wrong.
    #[error(
        "sysctl {key} is {value}, but role {role} forwards packets: set it with `sysctl -w {key}=1`"
    )]
    Prerequisite {
        /// Which sysctl.
        key: SysctlKey,
        /// Its current value.
        value: String,
        /// The role that needs it.
        role: &'static str,
    },
    /// The state file could not be read, parsed or written.
    #[error("state file {}: {detail}", path.display())]
    StateFile {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// An operation outside a plan (listing or removing nft rules) failed.
    #[error("{doing}: {cause}")]
    Op {
        /// What was being done, e.g. `removing the mark rules from nft table ip vmtun`.
        doing: String,
        /// Why.
        cause: Cause,
    },
}

impl NetError {
    /// Builds the error for `change` failing with `cause`.
    pub fn change(action: Action, change: &Change, cause: Cause) -> Self {
        NetError::Change {
            action,
            change: Box::new(change.clone()),
            cause,
        }
    }

    /// The cause, when this is a single failed change or operation.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            NetError::Change { cause, .. }
            | NetError::ReadSysctl { cause, .. }
            | NetError::Op { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// The object was already gone (see [`Cause::is_gone`]).
    pub fn is_gone(&self) -> bool {
        self.cause().is_some_and(Cause::is_gone)
    }

    /// The object already existed (see [`Cause::is_exists`]).
    pub fn is_exists(&self) -> bool {
        self.cause().is_some_and(Cause::is_exists)
    }
}

/// Joins errors with "; " for the aggregate variants.
struct List<'a>(&'a [NetError]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::change::{Route, TableId};

    #[test]
    fn error_names_the_change_and_the_errno() {
        let c = Change::Route(Route {
            dest: "203.0.113.0/29".parse().unwrap(),
            via: Some("100.64.0.2".parse().unwrap()),
            dev: "vmtun0".into(),
            table: TableId(201),
        });
        let e = NetError::change(Action::Apply, &c, Cause::Errno(libc::EEXIST));
        assert_eq!(
            e.to_string(),
            "adding route 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201: File exists"
        );
        assert!(e.is_exists());
        assert!(!e.is_gone());
    }
}
