//! Notifications of changes to what vmtun keeps on the host, so that it notices at once when
//! another program removes some of it: `nft flush ruleset` (the first line of Debian's
//! `/etc/nftables.conf`), systemd-networkd deleting foreign policy rules when it restarts,
//! someone resetting `rp_filter`.
//!
//! Two netlink sockets subscribed to multicast groups, as `ip monitor` and `nft monitor` are:
//! rtnetlink's links, addresses, routes, rules and IPv4 device settings (`rp_filter` comes as
//! `RTM_NEWNETCONF`), and nftables' group. Reading them is the OS edge ([`EventSocket`]);
//! whether a message may mean that something of vmtun's went is decided from its bytes by
//! [`Interest::wakes`], a pure function tested with byte fixtures. Nothing here compares
//! with the kernel or puts anything back: [`super::Journal::restore`] does.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ipnet::IpNet;

use super::change::Change;
use super::nfsock::{Msg, split};
use super::nlattr;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct rtmsg)` (linux/rtnetlink.h).
const RTMSG_LEN: usize = 12;
/// `sizeof(struct nfgenmsg)` (linux/netfilter/nfnetlink.h).
const NFGENMSG_LEN: usize = 4;
/// The table-name attribute of every nftables object message (`NFTA_TABLE_NAME`,
/// `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, `NFTA_SET_ELEM_LIST_TABLE`).
const NFTA_TABLE: u16 = 1;
/// `NFNL_SUBSYS_NFTABLES`, the high byte of an nftables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Receive buffer asked for: a flush of a big ruleset is a burst of notifications.
const SOCKET_BUFFER: libc::c_int = 1 << 20;
/// Largest datagram read at once.
const RECV_BUF: usize = 64 * 1024;

/// Which netlink family a socket listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// rtnetlink: links, addresses, routes, rules, device settings.
    Route,
    /// nftables.
    Nftables,
}

/// What vmtun has on the host that notifications may concern: its nftables tables by name
/// and the destinations of its routes. Anything else (another table's rules, the routes a
/// routing daemon churns) never wakes the restore monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    nft_tables: Vec<String>,
    routes: Vec<IpNet>,
}

impl Interest {
    /// The interest of the changes a journal records.
    pub fn of(changes: &[Change]) -> Self {
        let mut i = Interest::default();
        for c in changes {
            match c {
                Change::NftTable { name, .. } if !i.nft_tables.contains(name) => {
                    i.nft_tables.push(name.clone());
                }
                Change::Route(r) if !i.routes.contains(&r.dest) => i.routes.push(r.dest),
                _ => {}
            }
        }
        i
    }

    /// Whether `msg`, received from `source`, may mean that one of vmtun's changes is no
    /// longer in place: a policy rule, an address or a route of vmtun's deleted, a link
    /// changed (its MTU, up or down, gone: IPv4 drops a link's routes without a word), a
    /// device setting changed, or an object of vmtun's nftables table deleted.
    pub fn wakes(&self, source: Source, msg: &Msg) -> bool {
        match source {
            Source::Route => match msg.ty {
                libc::RTM_NEWLINK
                | libc::RTM_DELLINK
                | libc::RTM_DELADDR
                | libc::RTM_DELRULE
                | libc::RTM_NEWNETCONF => true,
                libc::RTM_DELROUTE => {
                    route_dest(&msg.bytes).is_some_and(|d| self.routes.contains(&d))
                }
                _ => false,
            },
            Source::Nftables => {
                let (subsys, kind) = (msg.ty >> 8, (msg.ty & 0xff) as libc::c_int);
                let deletes = matches!(
                    kind,
                    libc::NFT_MSG_DELTABLE
                        | libc::NFT_MSG_DELCHAIN
                        | libc::NFT_MSG_DELRULE
                        | libc::NFT_MSG_DELSET
                        | libc::NFT_MSG_DELSETELEM
                );
                subsys == NFNL_SUBSYS_NFTABLES
                    && deletes
                    && nft_table(&msg.bytes).is_some_and(|t| self.nft_tables.iter().any(|n| n == t))
            }
        }
    }
}

/// The destination of an `RTM_DELROUTE` (a default route has none: `0.0.0.0/0`, `::/0`).
fn route_dest(bytes: &[u8]) -> Option<IpNet> {
    let (family, len) = (*bytes.get(NLMSG_HDRLEN)?, *bytes.get(NLMSG_HDRLEN + 1)?);
    let dst = nlattr::of_message(bytes, RTMSG_LEN).find(|(ty, _)| *ty == libc::RTA_DST);
    let addr = match (i32::from(family), dst) {
        (libc::AF_INET, Some((_, a))) => IpAddr::from(<[u8; 4]>::try_from(a).ok()?),
        (libc::AF_INET6, Some((_, a))) => IpAddr::from(<[u8; 16]>::try_from(a).ok()?),
        (libc::AF_INET, None) => IpAddr::from([0u8; 4]),
        (libc::AF_INET6, None) => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    IpNet::new(addr, len).ok()
}

/// The table an nftables object message is about.
fn nft_table(bytes: &[u8]) -> Option<&str> {
    let (_, name) = nlattr::of_message(bytes, NFGENMSG_LEN).find(|(ty, _)| *ty == NFTA_TABLE)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    std::str::from_utf8(&name[..end]).ok()
}

/// A non-blocking netlink socket subscribed to the groups that carry removals of what vmtun
/// keeps on the host.
pub struct EventSocket {
    fd: OwnedFd,
    source: Source,
    buf: Vec<u8>,
}

impl EventSocket {
    /// Subscribes to `source`'s notifications, in the calling thread's network namespace.
    pub fn open(source: Source) -> io::Result<Self> {
        let (protocol, groups): (libc::c_int, &[u32]) = match source {
            Source::Route => (
                libc::NETLINK_ROUTE,
                &[
                    libc::RTNLGRP_LINK,
                    libc::RTNLGRP_IPV4_IFADDR,
                    libc::RTNLGRP_IPV6_IFADDR,
                    libc::RTNLGRP_IPV4_ROUTE,
                    libc::RTNLGRP_IPV6_ROUTE,
                    libc::RTNLGRP_IPV4_RULE,
                    libc::RTNLGRP_IPV6_RULE,
                    libc::RTNLGRP_IPV4_NETCONF,
                ],
            ),
            Source::Nftables => (libc::NETLINK_NETFILTER, &[libc::NFNLGRP_NFTABLES as u32]),
        };
        // SAFETY: socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = |level, name, value: &libc::c_int| {
            // SAFETY: setsockopt(2) with an int we own, size as declared.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    (value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // Bound (the kernel picks the port id): notifications are sent to every member but
        // the port that asked for the change, and an unbound socket's port id, 0, is the
        // kernel's own.
        // SAFETY: sockaddr_nl is plain data; bind(2) with an address we own, size as
        // declared.
        let bound = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        // Best effort: the kernel clamps to net.core.rmem_max; an overflow is noticed below.
        let _ = set(libc::SOL_SOCKET, libc::SO_RCVBUF, &SOCKET_BUFFER);
        for &group in groups {
            set(
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                &(group as libc::c_int),
            )?;
        }
        Ok(EventSocket {
            fd,
            source,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Reads one datagram: `None` when there is none, otherwise whether it wakes
    /// `interest`. Notifications lost to a full socket buffer (`ENOBUFS`) wake it too: what
    /// they said is unknown.
    pub fn read(&mut self, interest: &Interest) -> io::Result<Option<bool>> {
        // SAFETY: recv(2) into our own buffer of the stated size.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::WouldBlock, _) => Ok(None),
                (io::ErrorKind::Interrupted, _) => Ok(Some(false)),
                (_, Some(libc::ENOBUFS)) => Ok(Some(true)),
                _ => Err(e),
            };
        }
        let data = self.buf.get(..n as usize).unwrap_or_default();
        let messages = split(data)?;
        Ok(Some(
            messages.iter().any(|m| interest.wakes(self.source, m)),
        ))
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcfg::fixtures::{new_role, tunnel};
    use crate::netcfg::plan::{Role, plan};

    /// A netlink message: header of type `ty`, then `body`.
    fn msg(ty: u16, body: &[u8]) -> Msg {
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        let mut bytes = len.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&ty.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(body);
        Msg { ty, bytes }
    }

    /// An attribute, padded to 4 bytes.
    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    /// An `RTM_DELROUTE` for `dest`.
    fn del_route(dest: &str) -> Msg {
        let net: IpNet = dest.parse().unwrap();
        let (family, addr) = match net.addr() {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        let mut body = vec![family, net.prefix_len(), 0, 0, 201, 4, 0, 1, 0, 0, 0, 0];
        body.extend(attr(15, &201u32.to_ne_bytes())); // RTA_TABLE first
        if net.prefix_len() > 0 {
            body.extend(attr(libc::RTA_DST, &addr));
        }
        msg(libc::RTM_DELROUTE, &body)
    }

    /// An nftables message of kind `kind` about table `table`.
    fn nft(kind: libc::c_int, table: &str) -> Msg {
        let mut body = vec![libc::NFPROTO_IPV4 as u8, 0, 0, 0];
        body.extend(attr(NFTA_TABLE | 0x8000, format!("{table}\0").as_bytes()));
        body.extend(attr(2, b"prerouting\0"));
        msg((NFNL_SUBSYS_NFTABLES << 8) | kind as u16, &body)
    }

    fn interest() -> Interest {
        Interest::of(&plan(&tunnel(), Some(&new_role())))
    }

    #[test]
    fn interest_is_the_journals_tables_and_route_destinations() {
        let i = interest();
        assert_eq!(i.nft_tables, ["vmtun"]);
        assert_eq!(i.routes, ["0.0.0.0/0".parse::<IpNet>().unwrap()]);
        let Role::New(mut n) = new_role() else {
            unreachable!()
        };
        n.subnets.push("2001:db8:1::/64".parse().unwrap());
        let dual = Interest::of(&plan(&tunnel(), Some(&Role::New(n))));
        assert_eq!(dual.nft_tables, ["vmtun"], "one name, both families");
        assert_eq!(dual.routes.len(), 2);
    }

    #[test]
    fn deleting_an_object_of_vmtuns_table_wakes() {
        let i = interest();
        for kind in [
            libc::NFT_MSG_DELTABLE,
            libc::NFT_MSG_DELCHAIN,
            libc::NFT_MSG_DELRULE,
            libc::NFT_MSG_DELSET,
            libc::NFT_MSG_DELSETELEM,
        ] {
            assert!(
                i.wakes(Source::Nftables, &nft(kind, "vmtun")),
                "kind {kind}"
            );
            assert!(
                !i.wakes(Source::Nftables, &nft(kind, "filter")),
                "kind {kind}"
            );
        }
        // Additions (vmtun's own restores, other programs' rules) do not.
        assert!(!i.wakes(Source::Nftables, &nft(libc::NFT_MSG_NEWRULE, "vmtun")));
        assert!(!i.wakes(Source::Nftables, &nft(libc::NFT_MSG_NEWGEN, "vmtun")));
        // A name that only starts like vmtun's is someone else's.
        assert!(!i.wakes(Source::Nftables, &nft(libc::NFT_MSG_DELTABLE, "vmtun2")));
    }

    #[test]
    fn only_route_deletions_of_vmtuns_destinations_wake() {
        let i = interest();
        assert!(i.wakes(Source::Route, &del_route("0.0.0.0/0")));
        assert!(!i.wakes(Source::Route, &del_route("198.51.100.0/24")));
        assert!(!i.wakes(Source::Route, &del_route("::/0")));
        let mut add = del_route("0.0.0.0/0");
        add.ty = libc::RTM_NEWROUTE;
        assert!(!i.wakes(Source::Route, &add));
        // Role old's route is the tunnel table's default route too.
        let old = Interest::of(&plan(
            &tunnel(),
            Some(&crate::netcfg::fixtures::old_role(&["203.0.113.0/29"])),
        ));
        assert!(old.wakes(Source::Route, &del_route("0.0.0.0/0")));
        assert!(!old.wakes(Source::Route, &del_route("203.0.113.0/28")));
    }

    #[test]
    fn rules_addresses_links_and_device_settings_wake() {
        let i = interest();
        for ty in [
            libc::RTM_DELRULE,
            libc::RTM_DELADDR,
            libc::RTM_NEWLINK,
            libc::RTM_DELLINK,
            libc::RTM_NEWNETCONF,
        ] {
            assert!(i.wakes(Source::Route, &msg(ty, &[0; 12])), "type {ty}");
        }
        for ty in [libc::RTM_NEWRULE, libc::RTM_NEWADDR, libc::RTM_NEWNEIGH] {
            assert!(!i.wakes(Source::Route, &msg(ty, &[0; 12])), "type {ty}");
        }
    }

    #[test]
    fn truncated_messages_never_panic_and_wake_only_by_type() {
        let i = interest();
        let mut route = del_route("0.0.0.0/0");
        route.bytes.truncate(NLMSG_HDRLEN + 1);
        assert!(!i.wakes(Source::Route, &route));
        let mut table = nft(libc::NFT_MSG_DELTABLE, "vmtun");
        for len in 0..table.bytes.len() {
            let mut t = table.clone();
            t.bytes.truncate(len);
            let _ = i.wakes(Source::Nftables, &t);
        }
        // An attribute claiming more than there is.
        table.bytes[NLMSG_HDRLEN + NFGENMSG_LEN] = 0xff;
        assert!(!i.wakes(Source::Nftables, &table));
    }
}
