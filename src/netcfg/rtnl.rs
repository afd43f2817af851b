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
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, route::RouteMessage};
use rtnetlink::{AddressMessageBuilder, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::change::{Family, Refusal, RefusingRoute, Route, Rule, TableId};
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

    /// Deletes a route whoever added it (any protocol), as `ip route del` does: for a VM's
    /// /32 that vmtun did not journal, which libvirt's own script may have put there
    /// (`proto boot`).
    pub fn route_del_any(&self, r: &Route) -> Result<(), Cause> {
        let index = self.link(&r.dev)?.index;
        let mut msg = route_message(r, index)?;
        msg.header.protocol = RouteProtocol::Unspec;
        let h = self.handle.clone();
        self.block(async move { h.route().del(msg).execute().await })
            .map_err(|e| link_cause(e, &r.dev))
    }

    /// Adds or deletes a policy rule in its family's rule list.
    pub fn rule(&self, r: &Rule, add: bool) -> Result<(), Cause> {
        let mut req = self.rule_request(r);
        let res = if add {
            self.block(async move { req.execute().await })
        } else {
            let msg: RuleMessage = req.message_mut().clone();
            let h = self.handle.clone();
            self.block(async move { h.rule().del(msg).execute().await })
        };
        res.map_err(cause)
    }

    /// The request that adds `r`.
    fn rule_request(&self, r: &Rule) -> rtnetlink::RuleAddRequest {
        let mut req = self.handle.rule().add().priority(r.priority);
        req = match r.table {
            Some(table) => req.table_id(table.0).action(RuleAction::ToTable),
            None => req.action(RuleAction::Unreachable),
        };
        if let Some(mark) = r.fwmark {
            req = req.fw_mark(mark.0);
        }
        if let Some(dev) = &r.iif {
            req = req.input_interface(dev.clone());
        }
        let msg = req.message_mut();
        msg.header.family = match r.family {
            Family::Ipv4 => AddressFamily::Inet,
            Family::Ipv6 => AddressFamily::Inet6,
        };
        if let Some(to) = r.to {
            msg.header.dst_len = to.prefix_len();
            msg.attributes
                .push(RuleAttribute::Destination(to.network()));
        }
        if let Some(len) = r.suppress_prefixlength {
            msg.attributes
                .push(RuleAttribute::SuppressPrefixLen(u32::from(len)));
        }
        req
    }
}

impl Rtnl {
    /// The routes in `main` for exactly `dest` that refuse its packets.
    pub fn refusing_routes(&self, dest: IpNet) -> Result<Vec<RefusingRoute>, Cause> {
        let main = TableId::MAIN.0;
        let query = match dest {
            IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(main)
                .build(),
            IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(main)
                .build(),
        };
        let h = self.handle.clone();
        let all: Vec<RouteMessage> = self
            .block(async move { h.route().get(query).execute().try_collect().await })
            .map_err(cause)?;
        Ok(all
            .iter()
            .filter(|m| route_dest(m) == Some(dest) && route_table(m) == main)
            .filter_map(|m| {
                let kind = match m.header.kind {
                    RouteType::BlackHole => Refusal::Blackhole,
                    RouteType::Unreachable => Refusal::Unreachable,
                    RouteType::Prohibit => Refusal::Prohibit,
                    _ => return None,
                };
                let metric = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                Some(RefusingRoute {
                    kind,
                    metric,
                    protocol: m.header.protocol.into(),
                })
            })
            .collect())
    }

    /// Adds or deletes a refusing route for `dest` in `main`.
    pub fn refusing_route(&self, dest: IpNet, r: &RefusingRoute, add: bool) -> Result<(), Cause> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.addr(), dest.prefix_len())
            .map_err(|e| Cause::Netlink(format!("invalid route destination: {e}")))?
            .table_id(TableId::MAIN.0)
            .protocol(r.protocol.into())
            .kind(match r.kind {
                Refusal::Blackhole => RouteType::BlackHole,
                Refusal::Unreachable => RouteType::Unreachable,
                Refusal::Prohibit => RouteType::Prohibit,
            });
        if let Some(m) = r.metric {
            b = b.priority(m);
        }
        let msg = b.build();
        let h = self.handle.clone();
        if add {
            self.block(async move { h.route().add(msg).execute().await })
        } else {
            self.block(async move { h.route().del(msg).execute().await })
        }
        .map_err(cause)
    }

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
        let wanted = RuleKey::of(self.rule_request(r).message_mut());
        let h = self.handle.clone();
        let found: Vec<RuleMessage> = self
            .block(async move { h.rule().get(version).execute().try_collect().await })
            .map_err(cause)?;
        Ok(found.iter().any(|m| RuleKey::of(m) == wanted))
    }
}

/// The suppress_prefixlength the kernel lists for a rule that has none (-1).
const NO_SUPPRESSION: u32 = u32::MAX;

/// What identifies one of vmtun's rules in a dump: everything its request sets.
#[derive(Debug, PartialEq, Eq)]
struct RuleKey {
    family: AddressFamily,
    action: RuleAction,
    /// Only for a `lookup` rule (others are listed with main's).
    table: Option<u32>,
    dst_len: u8,
    attributes: Vec<RuleAttribute>,
}

impl RuleKey {
    fn of(m: &RuleMessage) -> Self {
        let table = (m.header.action == RuleAction::ToTable).then(|| {
            m.attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table))
        });
        let mut attributes: Vec<RuleAttribute> = m
            .attributes
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    RuleAttribute::Priority(_)
                        | RuleAttribute::FwMark(_)
                        | RuleAttribute::Destination(_)
                        | RuleAttribute::Iifname(_)
                        | RuleAttribute::SuppressPrefixLen(_)
                ) && **a != RuleAttribute::SuppressPrefixLen(NO_SUPPRESSION)
            })
            .cloned()
            .collect();
        attributes.sort_by_key(|a| format!("{a:?}"));
        RuleKey {
            family: m.header.family,
            action: m.header.action,
            table,
            dst_len: m.header.dst_len,
            attributes,
        }
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
            table: route_table(m),
        }
    }
}

/// A route message's destination prefix (`None`: unparsable).
fn route_dest(m: &RouteMessage) -> Option<IpNet> {
    let len = m.header.destination_prefix_length;
    let addr = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    });
    match (addr, m.header.address_family) {
        (Some(a), _) => IpNet::new(a, len).ok(),
        (None, AddressFamily::Inet) => Some(IpNet::V4(Default::default())),
        (None, AddressFamily::Inet6) => Some(IpNet::V6(Default::default())),
        (None, _) => None,
    }
}

/// A route message's table (the attribute when the id is above 255).
pub(crate) fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
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
