//! A recording fake of [`NetOps`] over a simulated host, for unit tests of plans and of the
//! journal (here and in other layers) without root or a network namespace.

use std::collections::BTreeMap;

use super::change::{Action, Change, Family, SysctlKey};
use super::error::{Cause, NetError};
use super::ops::NetOps;

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `apply(c)`.
    Apply(Change),
    /// `revert(c)`.
    Revert(Change),
}

/// A simulated host: objects (addresses, routes, rules, nft objects) are present or not,
/// sysctls, MTUs and link states have values. Adding a present object fails with
/// `File exists`, removing an absent one with `No such file or directory`, as the kernel
/// does. Failures can be injected per change.
#[derive(Debug, Default, Clone)]
pub struct FakeOps {
    /// Every apply and revert, in order (failed ones included).
    pub calls: Vec<Call>,
    /// Objects present on the simulated host, in creation order.
    pub present: Vec<Change>,
    /// Sysctl values by key path (`net/ipv4/conf/vmtun0/rp_filter`).
    pub sysctls: BTreeMap<String, String>,
    /// Interface MTUs by name.
    pub mtus: BTreeMap<String, u32>,
    /// Interface up/down state by name.
    pub up: BTreeMap<String, bool>,
    /// Applying a change equal to one of these fails with the errno given.
    pub fail_apply: Vec<(Change, i32)>,
    /// Reverting a change equal to one of these fails with the errno given.
    pub fail_revert: Vec<(Change, i32)>,
}

impl FakeOps {
    /// A host with one interface `dev` (MTU 1500, down) and its default sysctls, plus
    /// forwarding of both families = `forward`.
    pub fn with_interface(dev: &str, forward: bool) -> Self {
        let mut f = FakeOps::default();
        f.add_interface(dev);
        for family in [Family::Ipv4, Family::Ipv6] {
            f.sysctls.insert(
                family.forwarding().path().into(),
                if forward { "1" } else { "0" }.into(),
            );
        }
        f
    }

    /// Adds an interface with MTU 1500, down, `rp_filter` 1, `proxy_arp` 0 and the
    /// kernel's defaults for `proxy_delay` (80 jiffies) and `unres_qlen_bytes` (212992).
    pub fn add_interface(&mut self, dev: &str) {
        self.mtus.insert(dev.into(), 1500);
        self.up.insert(dev.into(), false);
        for (name, v) in [("rp_filter", "1"), ("proxy_arp", "0")] {
            self.sysctls
                .insert(SysctlKey::ipv4_conf(dev, name).path().into(), v.into());
        }
        for (key, v) in [
            (SysctlKey::ipv4_neigh(dev, "proxy_delay"), "80"),
            (SysctlKey::ipv4_neigh(dev, "unres_qlen_bytes"), "212992"),
            (SysctlKey::ipv6_neigh(dev, "unres_qlen_bytes"), "212992"),
        ] {
            self.sysctls.insert(key.path().into(), v.into());
        }
    }

    fn injected(list: &[(Change, i32)], c: &Change) -> Option<i32> {
        list.iter().find(|(x, _)| x == c).map(|(_, e)| *e)
    }

    fn err(action: Action, c: &Change, errno: i32) -> NetError {
        NetError::change(action, c, Cause::Errno(errno))
    }

    fn no_dev(action: Action, c: &Change, dev: &str) -> NetError {
        NetError::change(action, c, Cause::NoInterface(dev.into()))
    }
}

impl NetOps for FakeOps {
    fn capture(&mut self, c: &Change) -> Result<Change, NetError> {
        let orig = c;
        let mut c = c.clone();
        match &mut c {
            Change::Mtu { dev, previous, .. } => match self.mtus.get(dev.as_str()) {
                Some(m) => *previous = Some(*m),
                None => return Err(Self::no_dev(Action::Apply, orig, dev)),
            },
            Change::LinkUp { dev, was_up } => *was_up = self.up.get(dev.as_str()).copied(),
            Change::Sysctl(s) => {
                let v = self.sysctls.get(s.key.path()).ok_or(NetError::ReadSysctl {
                    key: s.key.clone(),
                    cause: Cause::Errno(libc::ENOENT),
                })?;
                s.previous = Some(v.clone());
            }
            // The simulated host has no refusing routes.
            Change::SetAside { found, .. } => *found = Some(Vec::new()),
            _ => {}
        }
        Ok(c)
    }

    fn apply(&mut self, c: &Change) -> Result<(), NetError> {
        self.calls.push(Call::Apply(c.clone()));
        if let Some(e) = Self::injected(&self.fail_apply, c) {
            return Err(Self::err(Action::Apply, c, e));
        }
        match c {
            Change::Mtu { dev, mtu, .. } => match self.mtus.get_mut(dev) {
                Some(m) => *m = *mtu,
                None => return Err(Self::no_dev(Action::Apply, c, dev)),
            },
            Change::LinkUp { dev, .. } => match self.up.get_mut(dev) {
                Some(u) => *u = true,
                None => return Err(Self::no_dev(Action::Apply, c, dev)),
            },
            Change::Sysctl(s) => match self.sysctls.get_mut(s.key.path()) {
                Some(v) => *v = s.value.clone(),
                None => return Err(Self::err(Action::Apply, c, libc::ENOENT)),
            },
            _ => {
                if self.present.contains(c) {
                    return Err(Self::err(Action::Apply, c, libc::EEXIST));
                }
                self.present.push(c.clone());
            }
        }
        Ok(())
    }

    fn revert(&mut self, c: &Change) -> Result<(), NetError> {
        self.calls.push(Call::Revert(c.clone()));
        if let Some(e) = Self::injected(&self.fail_revert, c) {
            return Err(Self::err(Action::Revert, c, e));
        }
        match c {
            Change::Mtu { dev, previous, .. } => match (self.mtus.get_mut(dev), previous) {
                (Some(m), Some(p)) => *m = *p,
                (Some(_), None) => {}
                (None, _) => return Err(Self::no_dev(Action::Revert, c, dev)),
            },
            Change::LinkUp { dev, was_up } => match self.up.get_mut(dev) {
                Some(u) => {
                    if *was_up != Some(true) {
                        *u = false;
                    }
                }
                None => return Err(Self::no_dev(Action::Revert, c, dev)),
            },
            Change::Sysctl(s) => match (self.sysctls.get_mut(s.key.path()), &s.previous) {
                (Some(v), Some(p)) => *v = p.clone(),
                (Some(_), None) => {}
                (None, _) => return Err(Self::err(Action::Revert, c, libc::ENOENT)),
            },
            _ => match self.present.iter().position(|x| x == c) {
                Some(i) => {
                    self.present.remove(i);
                }
                None => return Err(Self::err(Action::Revert, c, libc::ENOENT)),
            },
        }
        Ok(())
    }

    fn is_in_place(&mut self, c: &Change) -> Result<bool, NetError> {
        Ok(match c {
            Change::Mtu { dev, mtu, .. } => self.mtus.get(dev) == Some(mtu),
            Change::LinkUp { dev, .. } => self.up.get(dev) == Some(&true),
            Change::Sysctl(s) => self.sysctls.get(s.key.path()) == Some(&s.value),
            _ => self.present.contains(c),
        })
    }

    fn read_sysctl(&mut self, key: &SysctlKey) -> Result<String, NetError> {
        self.sysctls
            .get(key.path())
            .cloned()
            .ok_or(NetError::ReadSysctl {
                key: key.clone(),
                cause: Cause::Errno(libc::ENOENT),
            })
    }
}
