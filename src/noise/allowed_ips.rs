//! Cryptokey routing (whitepaper 2): a longest-prefix-match table from IP prefixes to
//! peers. Outbound packets pick their peer by destination; inbound packets must come from
//! a source their peer owns. Owns the table only; lookups allocate nothing.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::PeerId;

/// One address family: for each prefix length in use (longest first), the masked
/// network addresses of that length. A lookup costs one hash probe per distinct length.
#[derive(Debug, Default, Clone)]
struct Family {
    by_len: Vec<(u8, HashMap<u128, PeerId>)>,
}

impl Family {
    fn insert(&mut self, bits: u128, len: u8, width: u8, peer: PeerId) {
        let key = bits & mask(len, width);
        let slot = match self.by_len.iter().position(|(l, _)| *l == len) {
            Some(i) => i,
            None => {
                self.by_len.push((len, HashMap::new()));
                self.by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
                self.by_len.iter().position(|(l, _)| *l == len).unwrap_or(0)
            }
        };
        if let Some((_, map)) = self.by_len.get_mut(slot) {
            map.insert(key, peer);
        }
    }

    fn lookup(&self, bits: u128, width: u8) -> Option<PeerId> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&(bits & mask(*len, width))).copied())
    }
}

/// The mask of a `len`-bit prefix of a `width`-bit address held in the low bits of a u128.
fn mask(len: u8, width: u8) -> u128 {
    let len = len.min(width);
    if len == 0 {
        return 0;
    }
    let all: u128 = if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    all & (u128::MAX << (width - len))
}

/// Prefix to peer, IPv4 and IPv6.
#[derive(Debug, Default, Clone)]
pub struct AllowedIps {
    v4: Family,
    v6: Family,
}

impl AllowedIps {
    /// An empty table: every lookup fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `net` to `peer`. Host bits are ignored; a prefix already present moves to
    /// the new peer, as `wg set ... allowed-ips` does.
    pub fn insert(&mut self, net: IpNet, peer: PeerId) {
        match net {
            IpNet::V4(n) => {
                self.v4
                    .insert(u128::from(u32::from(n.addr())), n.prefix_len(), 32, peer)
            }
            IpNet::V6(n) => self
                .v6
                .insert(u128::from(n.addr()), n.prefix_len(), 128, peer),
        }
    }

    /// The peer owning the longest prefix that contains `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a), 128),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, usize)]) -> AllowedIps {
        let mut t = AllowedIps::new();
        for (net, peer) in entries {
            t.insert(net.parse().unwrap(), PeerId(*peer));
        }
        t
    }

    fn get(t: &AllowedIps, addr: &str) -> Option<usize> {
        t.lookup(addr.parse().unwrap()).map(|p| p.0)
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[
            ("0.0.0.0/0", 0),
            ("203.0.113.0/29", 1),
            ("203.0.113.4/32", 2),
            ("100.64.0.0/24", 3),
        ]);
        assert_eq!(get(&t, "203.0.113.4"), Some(2));
        assert_eq!(get(&t, "203.0.113.5"), Some(1));
        assert_eq!(get(&t, "203.0.113.8"), Some(0));
        assert_eq!(get(&t, "100.64.0.200"), Some(3));
        assert_eq!(get(&t, "::1"), None, "families are separate");
    }

    #[test]
    fn ipv6_and_host_bits() {
        let t = table(&[("2001:db8::1/32", 0), ("2001:db8:1::/48", 1), ("::/0", 2)]);
        assert_eq!(get(&t, "2001:db8::ffff"), Some(0));
        assert_eq!(get(&t, "2001:db8:1::5"), Some(1));
        assert_eq!(get(&t, "2001:db9::"), Some(2));
        assert_eq!(get(&t, "10.0.0.1"), None);
        let t = table(&[("2001:db8::1/128", 4)]);
        assert_eq!(get(&t, "2001:db8::1"), Some(4));
        assert_eq!(get(&t, "2001:db8::2"), None);
    }

    #[test]
    fn same_prefix_moves_to_the_last_peer() {
        let t = table(&[("10.0.0.0/8", 0), ("10.1.2.3/8", 1)]);
        assert_eq!(get(&t, "10.9.9.9"), Some(1));
        assert_eq!(get(&t, "11.0.0.0"), None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0, 32), 0);
        assert_eq!(mask(32, 32), 0xffff_ffff);
        assert_eq!(mask(8, 32), 0xff00_0000);
        assert_eq!(mask(128, 128), u128::MAX);
        assert_eq!(mask(1, 128), 1 << 127);
    }
}
