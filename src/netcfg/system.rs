//! The real [`NetOps`]: rtnetlink for links, addresses, routes and rules, `/proc/sys` for
//! sysctls, nftnl for netfilter. All of it acts on the network namespace of the thread that
//! created the [`SystemOps`] (netlink sockets) or calls it (sysctls, nft batches).

use super::change::{Action, Change, Route, SysctlKey};
use super::error::{Cause, NetError};
use super::ops::NetOps;
use super::rtnl::Rtnl;
use super::{nft, sysctl};

/// Applies and reverts changes on this host, in-process over netlink.
pub struct SystemOps {
    rtnl: Rtnl,
}

impl SystemOps {
    /// Opens the route-netlink socket (in the calling thread's network namespace).
    pub fn new() -> Result<Self, NetError> {
        let rtnl = Rtnl::new().map_err(|e| NetError::Op {
            doing: "opening a route netlink socket".into(),
            cause: Cause::from_io(&e),
        })?;
        Ok(SystemOps { rtnl })
    }

    fn carry_out(&mut self, action: Action, c: &Change) -> Result<(), Cause> {
        let add = action == Action::Apply;
        match c {
            Change::Address { dev, addr } => self.rtnl.address(dev, *addr, add),
            Change::Mtu { dev, mtu, previous } => match (add, previous) {
                (true, _) => self.rtnl.set_mtu(dev, *mtu),
                (false, Some(p)) => self.rtnl.set_mtu(dev, *p),
                (false, None) => Ok(()),
            },
            Change::LinkUp { dev, was_up } => match (add, was_up) {
                (true, _) => self.rtnl.set_up(dev, true),
                (false, Some(true)) => Ok(()),
                (false, _) => self.rtnl.set_up(dev, false),
            },
            Change::Route(r) => self.rtnl.route(r, add),
            Change::Rule(r) => self.rtnl.rule(r, add),
            Change::SetAside { dest, found } => {
                for r in found.iter().flatten() {
                    self.rtnl.refusing_route(*dest, r, !add)?;
                }
                Ok(())
            }
            Change::Sysctl(s) => match (add, &s.previous) {
                (true, _) => sysctl::write(&s.key, &s.value).map_err(|e| sysctl_cause(&s.key, &e)),
                (false, Some(p)) => sysctl::write(&s.key, p).map_err(|e| sysctl_cause(&s.key, &e)),
                (false, None) => Ok(()),
            },
            Change::NftTable { .. }
            | Change::NftChain { .. }
            | Change::NftSet { .. }
            | Change::NftSetElement { .. }
            | Change::NftRule { .. } => nft::carry_out(action, c),
        }
    }

    fn in_place(&mut self, c: &Change) -> Result<bool, Cause> {
        let link = |rtnl: &Rtnl, dev: &str| match rtnl.link(dev) {
            Ok(l) => Ok(Some(l)),
            Err(Cause::NoInterface(_)) => Ok(None),
            Err(e) => Err(e),
        };
        match c {
            Change::Address { dev, addr } => self.rtnl.has_address(dev, *addr),
            Change::Mtu { dev, mtu, .. } => {
                Ok(link(&self.rtnl, dev)?.is_some_and(|l| l.mtu == Some(*mtu)))
            }
            Change::LinkUp { dev, .. } => Ok(link(&self.rtnl, dev)?.is_some_and(|l| l.up)),
            Change::Route(r) => self.rtnl.has_route(r),
            Change::Rule(r) => self.rtnl.has_rule(r),
            // Set aside as long as none of the host's routes it took out is back.
            Change::SetAside { dest, found } => {
                let now = self.rtnl.refusing_routes(*dest)?;
                Ok(!found.iter().flatten().any(|r| now.contains(r)))
            }
            Change::Sysctl(s) => match sysctl::read(&s.key) {
                Ok(v) => Ok(v.trim() == s.value),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Err(e) => Err(sysctl_cause(&s.key, &e)),
            },
            Change::NftTable { .. }
            | Change::NftChain { .. }
            | Change::NftSet { .. }
            | Change::NftSetElement { .. }
            | Change::NftRule { .. } => nft::is_in_place(c),
        }
    }
}

impl NetOps for SystemOps {
    fn capture(&mut self, c: &Change) -> Result<Change, NetError> {
        let fail = |cause| NetError::change(Action::Apply, c, cause);
        let mut out = c.clone();
        match &mut out {
            Change::Mtu { dev, previous, .. } => *previous = self.rtnl.link(dev).map_err(fail)?.mtu,
            Change::LinkUp { dev, was_up } => {
                *was_up = Some(self.rtnl.link(dev).map_err(fail)?.up);
            }
            Change::Sysctl(s) => {
                s.previous =
                    Some(sysctl::read(&s.key).map_err(|e| fail(sysctl_cause(&s.key, &e)))?);
            }
            Change::SetAside { dest, found } => {
                *found = Some(self.rtnl.refusing_routes(*dest).map_err(fail)?);
            }
            _ => {}
        }
        Ok(out)
    }

    fn apply(&mut self, c: &Change) -> Result<(), NetError> {
        self.carry_out(Action::Apply, c)
            .map_err(|cause| NetError::change(Action::Apply, c, cause))
    }

    fn revert(&mut self, c: &Change) -> Result<(), NetError> {
        self.carry_out(Action::Revert, c)
            .map_err(|cause| NetError::change(Action::Revert, c, cause))
    }

    fn is_in_place(&mut self, c: &Change) -> Result<bool, NetError> {
        self.in_place(c).map_err(|cause| NetError::Op {
            doing: format!("checking that `{c}` is still in place"),
            cause,
        })
    }

    fn read_sysctl(&mut self, key: &SysctlKey) -> Result<String, NetError> {
        sysctl::read(key).map_err(|e| NetError::ReadSysctl {
            key: key.clone(),
            cause: Cause::from_io(&e),
        })
    }

    fn remove_route(&mut self, r: &Route) -> Result<(), NetError> {
        (self.rtnl.route_del_any(r))
            .map_err(|cause| NetError::change(Action::Revert, &Change::Route(r.clone()), cause))
    }
}

/// A per-interface sysctl whose file is missing means the interface is missing: say so.
fn sysctl_cause(key: &SysctlKey, e: &std::io::Error) -> Cause {
    match (e.raw_os_error(), key.interface()) {
        (Some(libc::ENOENT), Some(iface)) => Cause::NoInterface(iface.into()),
        _ => Cause::from_io(e),
    }
}
