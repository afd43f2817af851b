//! Read-only netlink dumps for the checks: interfaces, each family's policy rules and a
//! table's routes over rtnetlink, and the `ip` family's nftables tables over netfilter netlink.
//! Nothing here sends anything but dump requests.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::IpVersion;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::rule::RuleAttribute;

use super::facts::{RouteFact, RuleFact};
use crate::netcfg::Family;

/// What the rtnetlink dumps found: interface names by index, rules, routes of one table.
pub struct RouteDumps {
    /// Interface names by index.
    pub links: Result<HashMap<u32, String>, String>,
    /// Policy rules of the families asked for.
    pub rules: Result<Vec<RuleFact>, String>,
    /// Routes of those families in the table asked for.
    pub table_routes: Result<Vec<RouteFact>, String>,
}

/// Dumps links, and the rules and the routes of `table` of each of `families`, in the
/// calling thread's network namespace.
pub fn route_dumps(families: &[Family], table: Option<u32>) -> RouteDumps {
    let failed = |e: String| RouteDumps {
        links: Err(e.clone()),
        rules: Err(e.clone()),
        table_routes: Err(e),
    };
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
            .map_ok(|m| {
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                (m.header.index, name.unwrap_or_default())
            })
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
        if let Some(table) = table {
            for &family in families {
                let found = dump_table(&handle, family, table, &names).await;
                table_routes = table_routes.and_then(|mut all: Vec<RouteFact>| {
                    all.extend(found?);
                    Ok(all)
                });
            }
        }
        RouteDumps {
            links,
            rules,
            table_routes,
        }
    })
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
        .try_filter(|m| std::future::ready(table_of(m) == table))
        .map_ok(|m| route_fact(&m, names))
        .try_collect()
        .await
        .map_err(|e| e.to_string())
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
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
    RouteFact { dest, dev }
}

/// `struct nlmsghdr` + `struct nfgenmsg`.
const NFT_REQUEST_LEN: usize = 16 + 4;
/// `NFTA_TABLE_NAME`.
const NFTA_TABLE_NAME: u16 = 1;
/// `NFT_MSG_NEWTABLE`: the type of each table in a dump's reply.
const NFT_MSG_NEWTABLE: u16 = 0;

/// The `ip` and `ip6` families' nftables tables (others are not vmtun's kind): proves
/// netfilter netlink is usable.
pub fn nft_tables() -> io::Result<Vec<(Family, String)>> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; NFT_REQUEST_LEN];
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETTABLE as u16;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[0..4].copy_from_slice(&(NFT_REQUEST_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&ty.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::NFPROTO_UNSPEC as u8;
    // SAFETY: req is valid for its length; a netlink socket sends to the kernel by default.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is ours and its length is passed.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut data = &buf[..n as usize];
        while data.len() >= 16 {
            let len = (u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize)
                .clamp(16, data.len());
            let ty = u16::from_ne_bytes([data[4], data[5]]);
            let msg = &data[..len];
            match ty {
                t if t == libc::NLMSG_DONE as u16 => return Ok(names),
                t if t == libc::NLMSG_ERROR as u16 => {
                    let code = msg
                        .get(16..20)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                t if t & 0xff == NFT_MSG_NEWTABLE => {
                    // The nfgenmsg after the netlink header starts with the family.
                    let family = match msg.get(16).map(|f| i32::from(*f)) {
                        Some(libc::NFPROTO_IPV4) => Family::Ipv4,
                        Some(libc::NFPROTO_IPV6) => Family::Ipv6,
                        _ => {
                            data = data.get((len + 3) & !3..).unwrap_or(&[]);
                            continue;
                        }
                    };
                    let name = table_name(msg.get(NFT_REQUEST_LEN..).unwrap_or(&[]));
                    names.extend(name.map(|n| (family, n)));
                }
                _ => {}
            }
            data = data.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }
}

/// `NFTA_TABLE_NAME` among a table message's attributes.
fn table_name(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == NFTA_TABLE_NAME {
            let value = &attrs[4..len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}
