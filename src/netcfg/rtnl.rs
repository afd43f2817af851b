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
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::{RuleAction, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, route::RouteMessage};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

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
