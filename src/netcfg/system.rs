//! The real [`NetOps`]: rtnetlink for links, addresses, routes and rules, `/proc/sys` for
//! sysctls, nftnl for netfilter. All of it acts on the network namespace of the thread that
//! created the [`SystemOps`] (netlink sockets) or calls it (sysctls, nft batches).

use super::change::{Action, Change, SysctlKey};
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
            | Change::NftRule { .. } => nft::carry_out(action, c),
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

    fn read_sysctl(&mut self, key: &SysctlKey) -> Result<String, NetError> {
        sysctl::read(key).map_err(|e| NetError::ReadSysctl {
            key: key.clone(),
            cause: Cause::from_io(&e),
        })
    }
}

/// A per-interface sysctl whose file is missing means the interface is missing: say so.
fn sysctl_cause(key: &SysctlKey, e: &std::io::Error) -> Cause {
    match (e.raw_os_error(), key.interface()) {
        (Some(libc::ENOENT), Some(iface)) => Cause::NoInterface(iface.into()),
        _ => Cause::from_io(e),
    }
}
