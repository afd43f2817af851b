//! Read-only netlink dumps for the checks: interfaces, each family's policy rules and a
//! table's routes over rtnetlink, and the nftables ruleset over netfilter netlink.
//! Nothing here sends anything but dump requests.

use std::collections::HashMap;
use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::IpVersion;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};

use super::facts::{RouteAnswer, RouteFact, RouteKind, RouteProbe, RuleFact};
use super::routes::RouteQuery;
use super::ruleset::Ruleset;
use crate::netcfg::{Cause, Family, NfSock};

/// What the rtnetlink dumps found: interface names by index, rules, routes of one table, the
/// main table's routes for the subnets, and the answers to route lookups.
pub struct RouteDumps {
    /// Interface names by index.
    pub links: Result<HashMap<u32, String>, String>,
    /// Policy rules of the families asked for.
    pub rules: Result<Vec<RuleFact>, String>,
    /// Routes of those families in the table asked for.
    pub table_routes: Result<Vec<RouteFact>, String>,
    /// The main table's routes whose prefix is one of the subnets asked for.
    pub main_routes: Result<Vec<RouteFact>, String>,
}

/// What to read besides links: each of `families`' rules, the routes of `table`, the main
/// table's routes for `main_subnets`.
pub struct Wanted<'a> {
    /// The families the move needs.
    pub families: &'a [Family],
    /// The migration table (role new).
    pub table: Option<u32>,
    /// The subnets whose own route in the main table is looked for (role old).
    pub main_subnets: &'a [IpNet],
}

/// Dumps what `wanted` names, in the calling thread's network namespace.
pub fn route_dumps(wanted: &Wanted) -> RouteDumps {
    let failed = |e: String| RouteDumps {
        links: Err(e.clone()),
        rules: Err(e.clone()),
        table_routes: Err(e.clone()),
        main_routes: Err(e),
    };
    let families = wanted.families;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(e.to_string()),
    };
    rt.block_on(async {
        let (conn, handle, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => return failed(format!("opening a route netlink socket: {e}")),
        };
        tokio::spawn(conn);
        let links: Result<HashMap<u32, String>, String> = handle
            .link()
            .get()
            .execute()
            .map_ok(|m| (m.header.index, link_name(&m)))
            .try_collect()
            .await
            .map_err(|e| e.to_string());
        let mut rules = Ok(Vec::new());
        for &family in families {
            let found = dump_rules(&handle, family).await;
            rules = rules.and_then(|mut all: Vec<RuleFact>| {
                all.extend(found?);
                Ok(all)
            });
        }
        let names = links.clone().unwrap_or_default();
        let mut table_routes = Ok(Vec::new());
        if let Some(table) = wanted.table {
            for &family in families {
                let found = dump_table(&handle, family, table, &names).await;
                table_routes = table_routes.and_then(|mut all: Vec<RouteFact>| {
                    all.extend(found?);
                    Ok(all)
                });
            }
        }
        let mut main_routes = Ok(Vec::new());
        for family in Family::all_of(wanted.main_subnets) {
            let found = dump_table(&handle, family, MAIN_TABLE, &names).await;
            main_routes = main_routes.and_then(|mut all: Vec<RouteFact>| {
                all.extend(
                    found?
                        .into_iter()
                        .filter(|r| wanted.main_subnets.contains(&r.dest)),
                );
                Ok(all)
            });
        }
        RouteDumps {
            links,
            rules,
            table_routes,
            main_routes,
        }
    })
}

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u32 = 254;

/// Asks the kernel each of `queries` (`ip route get`), in the calling thread's network
/// namespace. A lookup changes nothing.
pub fn route_lookups(queries: &[RouteQuery]) -> Vec<RouteProbe> {
    let answers = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let names: HashMap<u32, String> = handle
                .link()
                .get()
                .execute()
                .map_ok(|m| (m.header.index, link_name(&m)))
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            let mut answers = Vec::new();
            for q in queries {
                answers.push(lookup(&handle, q, &names).await);
            }
            Ok::<_, String>(answers)
        }),
        Err(e) => Err(e.to_string()),
    };
    queries
        .iter()
        .enumerate()
        .map(|(i, q)| RouteProbe {
            query: q.text(),
            subnet: q.subnet,
            answer: match &answers {
                Ok(a) => a[i].clone(),
                Err(e) => Err(e.clone()),
            },
        })
        .collect()
}

async fn lookup(
    handle: &rtnetlink::Handle,
    q: &RouteQuery,
    names: &HashMap<u32, String>,
) -> Result<RouteAnswer, String> {
    let host = |a: IpAddr| if a.is_ipv4() { 32 } else { 128 };
    let mut builder = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(q.dst, host(q.dst))
        .map_err(|e| e.to_string())?;
    if let Some((src, iif)) = &q.from {
        let index = (names.iter())
            .find(|(_, n)| *n == iif)
            .map(|(i, _)| *i)
            .ok_or_else(|| format!("no interface {iif}"))?;
        builder = builder
            .source_prefix(*src, host(*src))
            .map_err(|e| e.to_string())?
            .input_interface(index);
    }
    if let Some(mark) = q.mark {
        builder = builder.mark(mark);
    }
    let mut msg = builder.build();
    msg.header.flags |= RouteFlags::LookupTable;
    let found: Vec<RouteMessage> = handle
        .route()
        .get(msg)
        .execute()
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let m = found.first().ok_or("no answer")?;
    let fact = route_fact(m, names);
    Ok(RouteAnswer {
        dev: fact.dev,
        table: Some(crate::netcfg::route_table(m)).filter(|t| *t != 0),
        kind: fact.kind,
    })
}

fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn dump_rules(handle: &rtnetlink::Handle, family: Family) -> Result<Vec<RuleFact>, String> {
    let version = match family {
        Family::Ipv4 => IpVersion::V4,
        Family::Ipv6 => IpVersion::V6,
    };
    handle
        .rule()
        .get(version)
        .execute()
        .map_ok(|m| {
            let mut r = RuleFact {
                family,
                priority: 0,
                fwmark: None,
                table: Some(u32::from(m.header.table)).filter(|t| *t != 0),
            };
            for a in &m.attributes {
                match a {
                    RuleAttribute::Priority(p) => r.priority = *p,
                    RuleAttribute::FwMark(f) => r.fwmark = Some(*f),
                    RuleAttribute::Table(t) => r.table = Some(*t),
                    _ => {}
                }
            }
            // Only a `lookup` rule has a table; an `unreachable` one is listed with main's.
            if m.header.action != RuleAction::ToTable {
                r.table = None;
            }
            r
        })
        .try_collect()
        .await
        .map_err(|e| e.to_string())
}

async fn dump_table(
    handle: &rtnetlink::Handle,
    family: Family,
    table: u32,
    names: &HashMap<u32, String>,
) -> Result<Vec<RouteFact>, String> {
    let query = match family {
        Family::Ipv4 => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .table_id(table)
            .build(),
        Family::Ipv6 => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .table_id(table)
            .build(),
    };
    handle
        .route()
        .get(query)
        .execute()
        .try_filter(|m| std::future::ready(crate::netcfg::route_table(m) == table))
        .map_ok(|m| route_fact(&m, names))
        .try_collect()
        .await
        .map_err(|e| e.to_string())
}

fn route_fact(m: &RouteMessage, names: &HashMap<u32, String>) -> RouteFact {
    let len = m.header.destination_prefix_length;
    let mut dest = match m.header.address_family {
        rtnetlink::packet_route::AddressFamily::Inet6 => IpNet::V6(ipnet::Ipv6Net::default()),
        _ => IpNet::V4(ipnet::Ipv4Net::default()),
    };
    let mut dev = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                dest = IpNet::new((*ip).into(), len).unwrap_or(dest);
            }
            RouteAttribute::Oif(index) => dev = names.get(index).cloned(),
            _ => {}
        }
    }
    let kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        _ => RouteKind::Other,
    };
    RouteFact { dest, dev, kind }
}

/// `struct nlmsghdr` + `struct nfgenmsg`.
const NFT_REQUEST_LEN: usize = 16 + 4;

/// Every nftables table, chain and rule, of every family (a dump of each over netfilter
/// netlink): proves netfilter netlink is usable, and is what the checks of the forward hook
/// and of the fwmark's other users read.
pub fn nft_ruleset() -> Result<Ruleset, Cause> {
    let mut sock = NfSock::open().map_err(|e| Cause::from_io(&e))?;
    let mut messages = Vec::new();
    for (seq, what) in [
        libc::NFT_MSG_GETTABLE,
        libc::NFT_MSG_GETCHAIN,
        libc::NFT_MSG_GETRULE,
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = [0u8; NFT_REQUEST_LEN];
        let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | what as u16;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[0..4].copy_from_slice(&(NFT_REQUEST_LEN as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&ty.to_ne_bytes());
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&(seq as u32 + 1).to_ne_bytes());
        req[16] = libc::NFPROTO_UNSPEC as u8;
        sock.send(&req).map_err(|e| Cause::from_io(&e))?;
        messages.extend(sock.dump()?);
    }
    Ok(Ruleset::from_messages(
        messages.iter().map(|m| m.bytes.as_slice()),
    ))
}
