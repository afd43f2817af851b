//! What the cutover needs to read of the new host's uplink over rtnetlink: the gateways of
//! its default routes, their MACs in the neighbour table, and where the route back to a
//! packet's source leaves (the reverse-path check). Reads only: nothing here changes the
//! host, except that [`resolve_gateway_macs`] may send one empty UDP datagram to a gateway
//! whose MAC the kernel does not know yet, so that it resolves it (ARP or Neighbor
//! Discovery), as any first packet to it would.
//!
//! The message formats are parsed by pure functions ([`parse_route`], [`parse_neighbour`]),
//! tested with byte fixtures; the socket is [`NfSock`] opened for NETLINK_ROUTE.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use super::error::Cause;
use super::nfsock::NfSock;
use super::nlattr;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct rtmsg)` and `sizeof(struct ndmsg)`: both 12 bytes (linux/rtnetlink.h).
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
/// Route attributes (`enum rtattr_type_t`).
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
/// Neighbour attributes (`NDA_DST`, `NDA_LLADDR`).
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states whose link-layer address can be used (linux/neighbour.h): reachable,
/// stale, delay, probe, permanent. Incomplete, failed and noarp entries have none.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
/// `RTN_UNICAST`: a route to a gateway or a link, not blackhole, unreachable or local.
const RTN_UNICAST: u8 = 1;
/// `RT_TABLE_MAIN`.
const TABLE_MAIN: u32 = 254;
/// How often a missing neighbour entry is looked up again while it resolves.
const RESOLVE_POLL: Duration = Duration::from_millis(20);
/// The discard port (RFC 863): where the datagram that makes the kernel resolve a gateway
/// goes.
const DISCARD_PORT: u16 = 9;

/// A route as rtnetlink describes it, the fields the cutover needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// The destination's prefix length (0: a default route).
    pub dst_len: u8,
    /// `rtm_type`: 1 is unicast.
    pub kind: u8,
    /// The routing table (RTA_TABLE, or rtm_table when small).
    pub table: u32,
    /// The output interface's index, when the route has one.
    pub oif: Option<u32>,
    /// The next hop, when the route has one.
    pub gateway: Option<IpAddr>,
}

/// A neighbour entry, the fields the cutover needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourInfo {
    /// The interface it is on.
    pub ifindex: u32,
    /// Its NUD state bits.
    pub state: u16,
    /// The neighbour's address.
    pub addr: Option<IpAddr>,
    /// Its MAC, if it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
}

impl NeighbourInfo {
    /// The MAC, if the entry is usable (resolved, not failed).
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        (self.state & NUD_USABLE != 0).then_some(self.mac).flatten()
    }
}

fn address(family: u8, bytes: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), bytes.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn u32_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// Parses an `RTM_NEWROUTE` message (header included); None if it is too short.
pub fn parse_route(msg: &[u8]) -> Option<RouteInfo> {
    let rtm = msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + RTMSG_LEN)?;
    let (family, dst_len, table, kind) = (rtm[0], rtm[1], rtm[4], rtm[7]);
    let mut route = RouteInfo {
        dst_len,
        kind,
        table: u32::from(table),
        oif: None,
        gateway: None,
    };
    for (ty, value) in nlattr::of_message(msg, RTMSG_LEN) {
        match ty {
            RTA_OIF => route.oif = u32_of(value),
            RTA_GATEWAY => route.gateway = address(family, value),
            RTA_TABLE => route.table = u32_of(value).unwrap_or(route.table),
            _ => {}
        }
    }
    Some(route)
}

/// Parses an `RTM_NEWNEIGH` message (header included); None if it is too short.
pub fn parse_neighbour(msg: &[u8]) -> Option<NeighbourInfo> {
    let nd = msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + NDMSG_LEN)?;
    let family = nd[0];
    let ifindex = u32::from_ne_bytes([nd[4], nd[5], nd[6], nd[7]]);
    let state = u16::from_ne_bytes([nd[8], nd[9]]);
    let mut entry = NeighbourInfo {
        ifindex,
        state,
        addr: None,
        mac: None,
    };
    for (ty, value) in nlattr::of_message(msg, NDMSG_LEN) {
        match ty {
            NDA_DST => entry.addr = address(family, value),
            NDA_LLADDR => entry.mac = value.try_into().ok(),
            _ => {}
        }
    }
    Some(entry)
}

/// A request: netlink header, a 12-byte family header whose first byte is `family` and
/// second `prefix_len`, then one attribute `attr` (if any).
fn request(ty: u16, flags: u16, family: u8, prefix_len: u8, attr: Option<(u16, &[u8])>) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m[4..6].copy_from_slice(&ty.to_ne_bytes());
    m[6..8].copy_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let mut fixed = [0u8; RTMSG_LEN];
    fixed[0] = family;
    fixed[1] = prefix_len;
    m.extend_from_slice(&fixed);
    if let Some((attr_ty, value)) = attr {
        m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&attr_ty.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize((m.len() + 3) & !3, 0);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn family_of(addr: IpAddr) -> (u8, u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
    }
}

/// The reverse-path half of the cutover's trigger, as the kernel's native rule has it
/// (`fib saddr . iif oif exists`): does the host's route back to a packet's source leave
/// through the interface the packet came in on? A socket opened in advance, so that the
/// check costs one netlink round trip on the watcher's path.
pub struct RouteLookup {
    sock: NfSock,
}

impl RouteLookup {
    /// Opens the route socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            sock: NfSock::open_route()?,
        })
    }

    /// Whether the route to `src` (main lookup, no mark) is a unicast route out of the
    /// interface with index `ifindex`. No route at all is `false`.
    pub fn leaves_through(&mut self, src: IpAddr, ifindex: u32) -> Result<bool, Cause> {
        let (family, len, bytes) = family_of(src);
        let req = request(libc::RTM_GETROUTE, 0, family, len, Some((RTA_DST, &bytes)));
        match self.sock.request(&req) {
            Ok(reply) => Ok(parse_route(&reply.bytes)
                .is_some_and(|r| r.kind == RTN_UNICAST && r.oif == Some(ifindex))),
            Err(Cause::Errno(
                libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL | libc::ENOENT,
            )) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The gateways of the main table's unicast default routes (both families) that leave
/// through one of `ifindexes`, with the interface: the provider's routers on the uplink.
pub fn default_gateways(ifindexes: &[u32]) -> Result<Vec<(IpAddr, u32)>, Cause> {
    let mut sock = NfSock::open_route().map_err(|e| Cause::from_io(&e))?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let req = request(libc::RTM_GETROUTE, libc::NLM_F_DUMP as u16, family, 0, None);
        sock.send(&req).map_err(|e| Cause::from_io(&e))?;
        for m in sock.dump()? {
            let Some(r) = parse_route(&m.bytes) else {
                continue;
            };
            if let (0, RTN_UNICAST, TABLE_MAIN, Some(gw), Some(oif)) =
                (r.dst_len, r.kind, r.table, r.gateway, r.oif)
                && ifindexes.contains(&oif)
                && !out.contains(&(gw, oif))
            {
                out.push((gw, oif));
            }
        }
    }
    Ok(out)
}

/// The usable MAC of `addr` in the neighbour table on one of `ifindexes`.
fn neighbour_mac(
    sock: &mut NfSock,
    addr: IpAddr,
    ifindexes: &[u32],
) -> Result<Option<[u8; 6]>, Cause> {
    let (family, _, _) = family_of(addr);
    let req = request(libc::RTM_GETNEIGH, libc::NLM_F_DUMP as u16, family, 0, None);
    sock.send(&req).map_err(|e| Cause::from_io(&e))?;
    Ok(sock
        .dump()?
        .iter()
        .filter_map(|m| parse_neighbour(&m.bytes))
        .filter(|n| n.addr == Some(addr) && ifindexes.contains(&n.ifindex))
        .find_map(|n| n.usable_mac()))
}

/// Sends one empty UDP datagram to `addr` (the discard port) so that the kernel resolves its
/// link-layer address; a link-local IPv6 address is reached on `ifindex`.
fn provoke_resolution(addr: IpAddr, ifindex: u32) -> io::Result<()> {
    let (bind, to): (SocketAddr, SocketAddr) = match addr {
        IpAddr::V4(a) => ((Ipv4Addr::UNSPECIFIED, 0).into(), (a, DISCARD_PORT).into()),
        IpAddr::V6(a) => (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            SocketAddrV6::new(a, DISCARD_PORT, 0, ifindex).into(),
        ),
    };
    UdpSocket::bind(bind)?.send_to(&[], to).map(drop)
}

/// A gateway's address and its MAC, None when it did not resolve.
pub type ResolvedGateway = (IpAddr, Option<[u8; 6]>);

/// The MAC of each gateway address, looked up in the neighbour table on `ifindexes`; a
/// gateway without a usable entry is sent one datagram (see the module doc) and looked up
/// again until `wait` has passed. `via` is the interface to reach a link-local gateway on.
/// None for a gateway that did not resolve in time.
pub fn resolve_gateway_macs(
    gateways: &[(IpAddr, u32)],
    ifindexes: &[u32],
    wait: Duration,
) -> Result<Vec<ResolvedGateway>, Cause> {
    let mut sock = NfSock::open_route().map_err(|e| Cause::from_io(&e))?;
    let until = Instant::now() + wait;
    let mut out = Vec::with_capacity(gateways.len());
    for &(gw, via) in gateways {
        let mut mac = neighbour_mac(&mut sock, gw, ifindexes)?;
        if mac.is_none() {
            if let Err(e) = provoke_resolution(gw, via) {
                tracing::debug!(gateway = %gw, "sending a datagram to resolve the gateway: {e}");
            }
            while mac.is_none() && Instant::now() < until {
                std::thread::sleep(RESOLVE_POLL);
                mac = neighbour_mac(&mut sock, gw, ifindexes)?;
            }
        }
        out.push((gw, mac));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of type `ty`: header, `fixed`, then the attributes.
    fn message(ty: u16, fixed: [u8; 12], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&fixed);
        for (ty, value) in attrs {
            m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(value);
            m.resize((m.len() + 3) & !3, 0);
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn a_default_route_is_parsed_with_its_gateway_and_interface() {
        // family AF_INET, dst_len 0, src_len 0, tos 0, table main, proto boot, scope
        // universe, type unicast, flags 0.
        let fixed = [2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let msg = message(
            libc::RTM_NEWROUTE,
            fixed,
            &[
                (RTA_TABLE, &254u32.to_ne_bytes()),
                (RTA_GATEWAY, &[198, 18, 2, 1]),
                (RTA_OIF, &7u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_route(&msg),
            Some(RouteInfo {
                dst_len: 0,
                kind: RTN_UNICAST,
                table: 254,
                oif: Some(7),
                gateway: Some("198.18.2.1".parse().unwrap()),
            })
        );
        // IPv6, a link-local gateway; an attribute cut short ends the walk without panic.
        let mut fixed6 = fixed;
        fixed6[0] = 10;
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut msg6 = message(
            libc::RTM_NEWROUTE,
            fixed6,
            &[(RTA_GATEWAY, &gw.octets()), (RTA_OIF, &3u32.to_ne_bytes())],
        );
        assert_eq!(parse_route(&msg6).unwrap().gateway, Some(IpAddr::V6(gw)));
        msg6.extend_from_slice(&[40, 0, 4]);
        assert_eq!(parse_route(&msg6).unwrap().oif, Some(3));
        assert_eq!(parse_route(&msg6[..20]), None);
    }

    /// An attribute shorter than its own 4-byte header is malformed: the walk ends there
    /// (with length 0 it used to yield the same empty attribute forever).
    #[test]
    fn an_attribute_shorter_than_its_header_ends_the_walk() {
        let fixed = [2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        for bad_len in 0u16..4 {
            let mut msg = message(libc::RTM_NEWROUTE, fixed, &[(RTA_OIF, &7u32.to_ne_bytes())]);
            msg.extend_from_slice(&bad_len.to_ne_bytes());
            msg.extend_from_slice(&RTA_GATEWAY.to_ne_bytes());
            msg.extend_from_slice(&[198, 18, 2, 1]);
            let attrs: Vec<_> = nlattr::of_message(&msg, RTMSG_LEN).take(10).collect();
            assert_eq!(
                attrs,
                [(RTA_OIF, &7u32.to_ne_bytes()[..])],
                "nla_len {bad_len}"
            );
            assert_eq!(parse_route(&msg).unwrap().gateway, None);
        }
    }

    #[test]
    fn a_neighbour_entry_gives_its_mac_only_when_usable() {
        let mac = [0x02, 0, 0, 0, 0, 0x02];
        // family AF_INET, ifindex 7, state REACHABLE.
        let mut fixed = [2, 0, 0, 0, 7, 0, 0, 0, 0x02, 0, 0, 0];
        fixed[4..8].copy_from_slice(&7u32.to_ne_bytes());
        fixed[8..10].copy_from_slice(&0x02u16.to_ne_bytes());
        let msg = message(
            libc::RTM_NEWNEIGH,
            fixed,
            &[(NDA_DST, &[198, 18, 2, 1]), (NDA_LLADDR, &mac)],
        );
        let n = parse_neighbour(&msg).unwrap();
        assert_eq!(n.ifindex, 7);
        assert_eq!(n.addr, Some("198.18.2.1".parse().unwrap()));
        assert_eq!(n.usable_mac(), Some(mac));
        // Failed (0x20) and incomplete (0x01) entries have no usable MAC.
        for state in [0x20u16, 0x01] {
            fixed[8..10].copy_from_slice(&state.to_ne_bytes());
            let msg = message(
                libc::RTM_NEWNEIGH,
                fixed,
                &[(NDA_DST, &[198, 18, 2, 1]), (NDA_LLADDR, &mac)],
            );
            assert_eq!(parse_neighbour(&msg).unwrap().usable_mac(), None);
        }
    }

    #[test]
    fn a_route_request_carries_the_destination() {
        let req = request(
            libc::RTM_GETROUTE,
            0,
            2,
            32,
            Some((RTA_DST, &[198, 18, 10, 2])),
        );
        assert_eq!(req.len(), NLMSG_HDRLEN + RTMSG_LEN + 8);
        assert_eq!(u32::from_ne_bytes(req[..4].try_into().unwrap()), 36);
        assert_eq!(&req[NLMSG_HDRLEN..NLMSG_HDRLEN + 2], &[2, 32]);
        let attrs: Vec<_> = nlattr::of_message(&req, RTMSG_LEN).collect();
        assert_eq!(attrs, vec![(RTA_DST, &[198u8, 18, 10, 2][..])]);
    }
}
