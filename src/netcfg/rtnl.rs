//! Routes, rules, addresses and link settings over rtnetlink, behind a blocking facade.
//!
//! rtnetlink is async; this module owns a small current-thread tokio runtime to drive it, so
//! callers (the journal, `vmtun down`) stay synchronous. Called from inside the driver's
//! runtime, each request runs on a short-lived helper thread, which inherits the calling
//! thread's network namespace; the netlink socket itself was opened when [`Rtnl::new`] ran.

use std::future::Future;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, route::RouteMessage};
use rtnetlink::{AddressMessageBuilder, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::change::{Family, Route, Rule};
use super::error::Cause;

/// What vmtun needs to know about a link before changing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub index: u32,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// A route-netlink connection with its own runtime.
pub(crate) struct Rtnl {
    // Always `Some` until dropped; an Option so that Drop can shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    handle: rtnetlink::Handle,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        // A runtime dropped the ordinary way inside another runtime's task panics; this
        // way never blocks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Rtnl {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection()?
        };
        rt.spawn(conn);
        Ok(Rtnl {
            rt: Some(rt),
            handle,
        })
    }

    /// Runs `f` to completion, also when called from inside another tokio runtime (where
    /// `block_on` would panic).
    fn block<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let Some(rt) = &self.rt else {
            unreachable!("the runtime is only taken when dropped")
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(f)
        }
    }

    /// Looks a link up by name.
    pub fn link(&self, name: &str) -> Result<LinkInfo, Cause> {
        let h = self.handle.clone();
        let name_owned = name.to_string();
        let msg = self
            .block(async move {
                let mut s = h.link().get().match_name(name_owned).execute();
                s.try_next().await
            })
            .map_err(|e| link_cause(e, name))?
            .ok_or_else(|| Cause::NoInterface(name.into()))?;
        let mtu = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        Ok(LinkInfo {
            index: msg.header.index,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
        })
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), Cause> {
        let index = self.link(name)?.index;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        let h = self.handle.clone();
        self.block(async move { h.link().set(msg).execute().await })
            .map_err(|e| link_cause(e, name))
    }

    /// Sets a link up or down.
    pub fn set_up(&self, name: &str, up: bool) -> Result<(), Cause> {
        let index = self.link(name)?.index;
        let b = LinkUnspec::new_with_index(index);
        let msg = if up { b.up() } else { b.down() }.build();
        let h = self.handle.clone();
        self.block(async move { h.link().set(msg).execute().await })
            .map_err(|e| link_cause(e, name))
    }

    /// Adds (`add`) or deletes an interface address.
    pub fn address(&self, dev: &str, addr: IpNet, add: bool) -> Result<(), Cause> {
        let index = self.link(dev)?.index;
        let h = self.handle.clone();
        let r = if add {
            self.block(async move {
                h.address()
                    .add(index, addr.addr(), addr.prefix_len())
                    .execute()
                    .await
            })
        } else {
            let msg = match addr {
                IpNet::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                    .index(index)
                    .address(a.addr(), a.prefix_len())
                    .build(),
                IpNet::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                    .index(index)
                    .address(a.addr(), a.prefix_len())
                    .build(),
            };
            self.block(async move { h.address().del(msg).execute().await })
        };
        r.map_err(|e| link_cause(e, dev))
    }

    /// Adds or deletes a route. Routes are added exclusively (an existing identical route is
    /// `File exists`), with protocol `static`, and deleted by the same attributes, so only
    /// vmtun's route matches.
    pub fn route(&self, r: &Route, add: bool) -> Result<(), Cause> {
        let index = self.link(&r.dev)?.index;
        let msg = route_message(r, index)?;
        let h = self.handle.clone();
        let res = if add {
            self.block(async move { h.route().add(msg).execute().await })
        } else {
            self.block(async move { h.route().del(msg).execute().await })
        };
        res.map_err(|e| link_cause(e, &r.dev))
    }

    /// Adds or deletes a `fwmark M lookup T priority P` rule in its family's rule list.
    pub fn rule(&self, r: &Rule, add: bool) -> Result<(), Cause> {
        let mut req = self
            .handle
            .rule()
            .add()
            .fw_mark(r.fwmark.0)
            .table_id(r.table.0)
            .priority(r.priority)
            .action(RuleAction::ToTable);
        req.message_mut().header.family = match r.family {
            Family::Ipv4 => AddressFamily::Inet,
            Family::Ipv6 => AddressFamily::Inet6,
        };
        let res = if add {
            self.block(async move { req.execute().await })
        } else {
            let msg: RuleMessage = req.message_mut().clone();
            let h = self.handle.clone();
            self.block(async move { h.rule().del(msg).execute().await })
        };
        res.map_err(cause)
    }
}

impl Rtnl {
    /// The index of link `name`, or `None` when there is no such link.
    fn index_of(&self, name: &str) -> Result<Option<u32>, Cause> {
        match self.link(name) {
            Ok(l) => Ok(Some(l.index)),
            Err(Cause::NoInterface(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `dev` holds the address `addr` (with its prefix length).
    pub fn has_address(&self, dev: &str, addr: IpNet) -> Result<bool, Cause> {
        let Some(index) = self.index_of(dev)? else {
            return Ok(false);
        };
        let h = self.handle.clone();
        let found: Vec<_> = self
            .block(async move {
                let s = h.address().get().set_link_index_filter(index).execute();
                s.try_collect().await
            })
            .map_err(|e| link_cause(e, dev))?;
        Ok(found.iter().any(|m| {
            m.header.prefix_len == addr.prefix_len()
                && m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Local(x) | AddressAttribute::Address(x)
                        if *x == addr.addr())
                })
        }))
    }

    /// Whether the route `r` is in its table: same destination, next hop and device.
    pub fn has_route(&self, r: &Route) -> Result<bool, Cause> {
        let Some(index) = self.index_of(&r.dev)? else {
            return Ok(false);
        };
        let wanted = route_message(r, index)?;
        // Only the family: a destination would make it a lookup instead of a dump.
        let mut query = RouteMessage::default();
        query.header.address_family = wanted.header.address_family;
        let h = self.handle.clone();
        let found: Vec<RouteMessage> = self
            .block(async move { h.route().get(query).execute().try_collect().await })
            .map_err(cause)?;
        let key = RouteKey::of(&wanted);
        Ok(found.iter().any(|m| RouteKey::of(m) == key))
    }

    /// Whether the rule `r` is in its family's rule list.
    pub fn has_rule(&self, r: &Rule) -> Result<bool, Cause> {
        let version = match r.family {
            Family::Ipv4 => IpVersion::V4,
            Family::Ipv6 => IpVersion::V6,
        };
        let h = self.handle.clone();
        let found: Vec<RuleMessage> = self
            .block(async move { h.rule().get(version).execute().try_collect().await })
            .map_err(cause)?;
        Ok(found.iter().any(|m| {
            let attr = |f: fn(&RuleAttribute) -> Option<u32>| m.attributes.iter().find_map(f);
            let table = attr(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table));
            m.header.action == RuleAction::ToTable
                && table == r.table.0
                && attr(|a| match a {
                    RuleAttribute::FwMark(x) => Some(*x),
                    _ => None,
                }) == Some(r.fwmark.0)
                && attr(|a| match a {
                    RuleAttribute::Priority(x) => Some(*x),
                    _ => None,
                }) == Some(r.priority)
        }))
    }
}

/// What identifies one of vmtun's routes in a dump: family, destination, table, next hop
/// and output interface.
#[derive(Debug, PartialEq, Eq)]
struct RouteKey {
    family: AddressFamily,
    dest_len: u8,
    dest: Option<RouteAttribute>,
    gateway: Option<RouteAttribute>,
    oif: Option<u32>,
    table: u32,
}

impl RouteKey {
    fn of(m: &RouteMessage) -> Self {
        let find = |f: fn(&RouteAttribute) -> bool| m.attributes.iter().find(|a| f(a)).cloned();
        RouteKey {
            family: m.header.address_family,
            dest_len: m.header.destination_prefix_length,
            // A default route comes without a destination from the kernel.
            dest: find(|a| matches!(a, RouteAttribute::Destination(_)))
                .filter(|_| m.header.destination_prefix_length > 0),
            gateway: find(|a| matches!(a, RouteAttribute::Gateway(_))),
            oif: m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
            table: m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table)),
        }
    }
}

fn route_message(r: &Route, index: u32) -> Result<RouteMessage, Cause> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dest.addr(), r.dest.prefix_len())
        .map_err(|e| Cause::Netlink(format!("invalid route destination: {e}")))?
        .output_interface(index)
        .table_id(r.table.0);
    match r.via {
        Some(gw) => {
            b = b
                .gateway(gw)
                .map_err(|e| Cause::Netlink(format!("invalid gateway: {e}")))?
        }
        None => b = b.scope(RouteScope::Link),
    }
    let msg = b.build();
    debug_assert!(matches!(
        msg.header.address_family,
        AddressFamily::Inet | AddressFamily::Inet6
    ));
    Ok(msg)
}

/// Maps an rtnetlink error to a cause, keeping the errno.
fn cause(e: rtnetlink::Error) -> Cause {
    match e {
        rtnetlink::Error::NetlinkError(m) => Cause::Errno(m.raw_code().abs()),
        other => Cause::Netlink(other.to_string()),
    }
}

/// Like [`cause`], but "No such device" names the interface.
fn link_cause(e: rtnetlink::Error, name: &str) -> Cause {
    match cause(e) {
        Cause::Errno(libc::ENODEV) => Cause::NoInterface(name.into()),
        c => c,
    }
}
