//! netcfg's errors. Every error names the change or object it is about, so the operator
//! reads `removing route 203.0.113.0/29 via 100.64.0.2 dev vmtun0 table 201: Device or
//! resource busy`, never a bare errno. An object that is in the way says what it is, that
//! it is not vmtun's, and what to do: `an ip rule `fwmark 0x1 lookup 201 priority 10000`
//! already exists (not vmtun's): remove it with `ip rule del ...`, or set migration.fwmark
//! to a mark no other rule uses`.

use std::fmt;
use std::path::PathBuf;

use super::change::{Action, Change, Family, SysctlKey, TableId};

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
    #[error("{}", failed(*action, change, cause))]
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

/// The line for `change` failing with `cause`: what was being done and why, or, for an
/// object that already exists when vmtun adds it, what is in the way and what to do. Such
/// an object is never vmtun's own: `up` undoes what an earlier vmtun left before it adds
/// anything, and each plan adds an object once.
fn failed(action: Action, change: &Change, cause: &Cause) -> String {
    if action == Action::Apply && cause.is_exists() {
        if let Some(line) = in_the_way(change) {
            return line;
        }
        return format!(
            "{}: it exists already and is not vmtun's: remove it, then start vmtun again",
            change.describe(action)
        );
    }
    format!("{}: {cause}", change.describe(action))
}

/// What is in the way of adding `change`, and what to do, where vmtun can say more than
/// "it exists".
fn in_the_way(change: &Change) -> Option<String> {
    match change {
        Change::Rule(r) => {
            let ip = format!("ip {}", r.family.ip_option());
            let ip = ip.trim_end();
            let key = if r.fwmark.is_some() {
                ", or set migration.fwmark to a mark no other rule uses"
            } else if r.table.is_some_and(|t| t != TableId::MAIN) {
                ", or set migration.table to a table no other rule uses"
            } else {
                ""
            };
            Some(format!(
                "an {ip} rule `{r}` already exists (not vmtun's): remove it with \
                 `{ip} rule del {r}`{key}"
            ))
        }
        Change::Route(r) => {
            let ip = format!("ip {}", Family::of(r.dest.addr()).ip_option());
            let ip = ip.trim_end();
            let dest = if r.dest.prefix_len() == 0 {
                "default".to_string()
            } else {
                r.dest.to_string()
            };
            let key = if r.table == TableId::MAIN {
                String::new()
            } else {
                ", or set migration.table to a table nothing else uses".to_string()
            };
            Some(format!(
                "table {} already has a route for {dest} (not vmtun's): remove it with \
                 `{ip} route del {dest} table {}`{key}",
                r.table, r.table
            ))
        }
        Change::NftTable { family, name } => {
            let table = format!("{} {name}", family.nft());
            Some(format!(
                "nft table {table} already exists (not this vmtun's): another vmtun with a \
                 [migration] runs in this network namespace (one may), or it was left \
                 behind; if nothing uses it, remove it with `nft delete table {table}`"
            ))
        }
        _ => None,
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
    use crate::netcfg::change::{FwMark, Route, Rule};
    use ipnet::IpNet;

    fn route() -> Change {
        Change::Route(Route {
            dest: "0.0.0.0/0".parse().unwrap(),
            via: Some("100.64.0.2".parse().unwrap()),
            dev: "vmtun0".into(),
            table: TableId(201),
        })
    }

    fn exists(c: &Change) -> String {
        NetError::change(Action::Apply, c, Cause::Errno(libc::EEXIST)).to_string()
    }

    #[test]
    fn error_names_the_change_and_the_errno() {
        let e = NetError::change(Action::Revert, &route(), Cause::Errno(libc::EBUSY));
        assert_eq!(
            e.to_string(),
            "removing route default via 100.64.0.2 dev vmtun0 table 201: Device or resource busy"
        );
        assert!(!e.is_exists());
        assert!(!e.is_gone());
    }

    #[test]
    fn a_rule_in_the_way_is_named_as_ip_shows_it_with_the_key_to_change() {
        let subnet: IpNet = "203.0.113.0/29".parse().unwrap();
        let mark =
            Change::Rule(Rule::new(Family::Ipv4, 10000, Some(TableId(201))).fwmark(FwMark(1)));
        assert_eq!(
            exists(&mark),
            "an ip rule `fwmark 0x1 lookup 201 priority 10000` already exists (not vmtun's): \
             remove it with `ip rule del fwmark 0x1 lookup 201 priority 10000`, or set \
             migration.fwmark to a mark no other rule uses"
        );
        let to = Change::Rule(Rule::new(Family::Ipv4, 9998, Some(TableId(201))).to(subnet));
        assert_eq!(
            exists(&to),
            "an ip rule `to 203.0.113.0/29 lookup 201 priority 9998` already exists (not \
             vmtun's): remove it with `ip rule del to 203.0.113.0/29 lookup 201 priority \
             9998`, or set migration.table to a table no other rule uses"
        );
        let v6: IpNet = "2001:db8:1::/64".parse().unwrap();
        let guard = Change::Rule(Rule::new(Family::Ipv6, 9997, None).iif("vmtun0").to(v6));
        assert_eq!(
            exists(&guard),
            "an ip -6 rule `iif vmtun0 to 2001:db8:1::/64 unreachable priority 9997` already \
             exists (not vmtun's): remove it with `ip -6 rule del iif vmtun0 to \
             2001:db8:1::/64 unreachable priority 9997`"
        );
        assert!(NetError::change(Action::Apply, &mark, Cause::Errno(libc::EEXIST)).is_exists());
    }

    #[test]
    fn a_route_or_table_in_the_way_says_what_to_do() {
        assert_eq!(
            exists(&route()),
            "table 201 already has a route for default (not vmtun's): remove it with `ip \
             route del default table 201`, or set migration.table to a table nothing else uses"
        );
        let table = Change::NftTable {
            family: Family::Ipv6,
            name: "vmtun".into(),
        };
        assert_eq!(
            exists(&table),
            "nft table ip6 vmtun already exists (not this vmtun's): another vmtun with a \
             [migration] runs in this network namespace (one may), or it was left behind; if \
             nothing uses it, remove it with `nft delete table ip6 vmtun`"
        );
        let address = Change::Address {
            dev: "vmtun0".into(),
            addr: "100.64.0.1/24".parse().unwrap(),
        };
        assert_eq!(
            exists(&address),
            "adding address 100.64.0.1/24 on vmtun0: it exists already and is not vmtun's: \
             remove it, then start vmtun again"
        );
    }
}
