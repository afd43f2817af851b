//! The pure core of the cutover: is this Ethernet frame, received on one of the new host's
//! native interfaces (the bridge, and any other uplink configured), a packet the provider now
//! routes natively to one of our subnets?
//!
//! No sockets, no clock. The capture edge (`capture`) hands frames in; it has already
//! dropped frames the host sends and frames for other hosts (the packet type is not in the
//! bytes).
//!
//! Only the provider may trigger the cutover: a native packet must come from the MAC of the
//! uplink's gateway (one of [`Classifier::new`]'s `gateways`), as the kernel's native rule
//! requires with `ether saddr @gateways`. A neighbour on the uplink segment forging the
//! provider's traffic (a client's source, a VM's destination, the host's MAC) is refused as
//! [`Verdict::NotFromGateway`]. The reverse-path half of the condition needs the routing
//! table and is the watcher's (`netcfg::RouteLookup`).
//!
//! Both families: an IPv4 packet is matched against the IPv4 subnets, an IPv6 packet against
//! the IPv6 ones. For IPv6 the counterpart of ARP is ICMPv6 Neighbor Discovery, which travels
//! inside IPv6 and may be unicast to a VM's address (a router confirming reachability): it is
//! refused by its type, looked up in the fixed header's Next Header only (see
//! [`Verdict::NeighbourDiscovery`]).
//!
//! No 802.1Q tag is ever parsed: the kernel takes the tag off a received frame before a packet
//! socket sees it (into the skb's metadata), and a socket bound to `ETH_P_IP` or `ETH_P_IPV6`
//! gets only frames whose (inner) protocol is that; a tagged frame for a VLAN the host has no
//! device for is `PACKET_OTHERHOST`, which the capture drops. A VLAN is watched by naming its
//! device (`eth0.100`) among the native interfaces. A frame that still reads 0x8100 is
//! refused as [`Verdict::NotIp`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Length of an Ethernet II header: two MAC addresses and the ethertype (IEEE 802.3, 3.1.1).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Shortest IPv4 header, without options (RFC 791, 3.1).
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Longest IPv4 header: IHL is four bits of 32-bit words (RFC 791, 3.1).
pub const IPV4_MAX_HEADER_LEN: usize = 60;
/// Length of the fixed IPv6 header (RFC 8200, 3).
pub const IPV6_HEADER_LEN: usize = 40;
/// Bytes the capture must keep of each frame so that the classifier sees a whole IPv4 header
/// with options (74) or the fixed IPv6 header and the ICMPv6 type byte of a Neighbor
/// Discovery message (55). Everything past it is payload we never look at (the seed's `-s 1`
/// kept too little: libpcap then discards the first packets).
pub const SNAPLEN: usize = max(
    ETHERNET_HEADER_LEN + IPV4_MAX_HEADER_LEN,
    ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + 1,
);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// ICMPv6's Next Header value (IANA "Assigned Internet Protocol Numbers").
const NEXT_HEADER_ICMPV6: u8 = 58;
/// ICMPv6 types of Neighbor Discovery (RFC 4861, 4): Router Solicitation and Advertisement,
/// Neighbor Solicitation and Advertisement, Redirect. All are on-link signalling with a hop
/// limit of 255 that no router forwards, so none shows where the provider routes a subnet.
const NEIGHBOUR_DISCOVERY_TYPES: std::ops::RangeInclusive<u8> = 133..=137;

/// IPv4 ethertype (IANA "IEEE 802 Numbers").
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP ethertype: neighbour resolution, never a routed packet.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// RARP ethertype: QEMU broadcasts RARP frames after a live migration to update switches.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// 802.1Q customer VLAN tag protocol identifier: never seen by the capture (module doc).
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IPv6 ethertype.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// An Ethernet MAC address: which router's frames may trigger the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    /// Lower-case hex, colon-separated, as `ip link` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = ();

    /// Six hex octets separated by colons (`52:54:00:ab:cd:ef`), either case.
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(())?;
            if part.is_empty() || part.len() > 2 {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        match parts.next() {
            None => Ok(MacAddr(out)),
            Some(_) => Err(()),
        }
    }
}

/// What the classifier concluded about one frame, with the reason when it is not native.
///
/// [`Classifier::classify`] only needs the first variant; the reasons exist so that tests and
/// debug logs can say *why* a frame did not trigger the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An IPv4 or IPv6 packet for one of our subnets, from outside them: the provider routes
    /// to us.
    Native {
        /// The watched subnet containing the destination (the most specific one).
        subnet: IpNet,
        /// Source address of the packet.
        src: IpAddr,
        /// Destination address of the packet.
        dst: IpAddr,
    },
    /// Shorter than the headers it announces (or than the capture kept); for an IPv6 frame
    /// the capture kept whole (shorter than [`SNAPLEN`]), shorter than its payload length.
    Truncated,
    /// Not IP (ARP, RARP, LLDP, ...): carries the ethertype found.
    NotIp(u16),
    /// Sent to a broadcast or multicast MAC, or to an IPv6 multicast address (ff00::/8): a
    /// routed packet for a VM is unicast to the host.
    NotUnicast,
    /// IP header malformed. IPv4: wrong version, IHL, total length or checksum. IPv6: wrong
    /// version, or an ICMPv6 payload too short for its type.
    BadHeader,
    /// An ICMPv6 Neighbor Discovery message (RFC 4861: types 133 to 137; 135/136, neighbour
    /// solicitation and advertisement, are the router resolving or probing a VM's address):
    /// on-link signalling like ARP, never a routed packet. Recognised only when ICMPv6
    /// directly follows the fixed header: extension headers are not walked (they would have
    /// to be captured whole), so an ND message behind one would count as native. RFC 4861
    /// messages carry none in practice.
    NeighbourDiscovery,
    /// The source is in our subnets: one of our VMs talking, not the provider's routing.
    FromOurSubnets,
    /// Would be native, but the frame's source MAC is not the uplink gateway's: a neighbour on
    /// the segment (or a router vmtun was not told about) cannot trigger the cutover.
    NotFromGateway {
        /// The subnet the packet was for.
        subnet: IpNet,
        /// The frame's source MAC.
        src_mac: MacAddr,
    },
    /// The destination is in none of the watched subnets.
    OtherDestination,
}

impl Verdict {
    /// The matched subnet when the frame is native.
    pub fn native_subnet(self) -> Option<IpNet> {
        match self {
            Verdict::Native { subnet, .. } => Some(subnet),
            _ => None,
        }
    }
}

/// Decides whether frames seen on the native interfaces are native packets for the VM subnets.
///
/// Exists so that the decision that removes the mark rule is a pure function, tested with byte
/// fixtures, and applied as a second check behind the kernel's BPF filter (which cannot see
/// everything, e.g. the source-address rule, the IPv4 checksum or Neighbor Discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    /// All of our subnets: a packet from any of them is a VM talking.
    ours: Vec<IpNet>,
    /// The subnets whose first native packet is still awaited.
    watched: Vec<IpNet>,
    /// The MACs of the uplink gateways: only their frames can be native.
    gateways: Vec<MacAddr>,
}

impl Classifier {
    /// A classifier for these subnets, IPv4 and IPv6 in any mix (normally `[migration]
    /// subnets`, already validated), accepting native packets from the `gateways` MACs only
    /// (none: nothing is ever native).
    pub fn new(subnets: Vec<IpNet>, gateways: Vec<MacAddr>) -> Self {
        let ours: Vec<IpNet> = subnets.into_iter().map(|n| n.trunc()).collect();
        Classifier {
            watched: ours.clone(),
            ours,
            gateways,
        }
    }

    /// The gateway MACs whose frames may be native.
    pub fn gateways(&self) -> &[MacAddr] {
        &self.gateways
    }

    /// The subnets still watched, host bits cleared.
    pub fn subnets(&self) -> &[IpNet] {
        &self.watched
    }

    /// Stops matching packets for `subnet` (its cutover is done); its addresses still count
    /// as ours for the source check.
    pub fn stop_watching(&mut self, subnet: IpNet) {
        self.watched.retain(|n| *n != subnet);
    }

    /// The subnet a native packet is for, or `None` for anything else. Call it on frames
    /// received on the bridge only.
    pub fn classify(&self, frame: &[u8]) -> Option<IpNet> {
        self.verdict(frame).native_subnet()
    }

    /// Like [`classify`](Self::classify), with the reason for a refusal.
    pub fn verdict(&self, frame: &[u8]) -> Verdict {
        let Some(header) = frame.get(..ETHERNET_HEADER_LEN) else {
            return Verdict::Truncated;
        };
        // I/G bit of the destination MAC (IEEE 802, 8.2).
        if header[0] & 0x01 != 0 {
            return Verdict::NotUnicast;
        }
        let ethertype = u16::from_be_bytes([header[12], header[13]]);
        let ip = &frame[ETHERNET_HEADER_LEN..];
        let verdict = match ethertype {
            ETHERTYPE_IPV4 => self.ipv4(ip),
            // A frame shorter than SNAPLEN was kept whole by the capture.
            ETHERTYPE_IPV6 => self.ipv6(ip, frame.len() < SNAPLEN),
            other => Verdict::NotIp(other),
        };
        match verdict {
            Verdict::Native { subnet, .. } => {
                let mut src_mac = [0u8; 6];
                src_mac.copy_from_slice(&header[6..12]);
                let src_mac = MacAddr(src_mac);
                if self.gateways.contains(&src_mac) {
                    verdict
                } else {
                    Verdict::NotFromGateway { subnet, src_mac }
                }
            }
            other => other,
        }
    }

    /// The verdict on an IPv4 packet (`ip` starts at its header).
    fn ipv4(&self, ip: &[u8]) -> Verdict {
        let Some(fixed) = ip.get(..IPV4_MIN_HEADER_LEN) else {
            return Verdict::Truncated;
        };
        if fixed[0] >> 4 != 4 {
            return Verdict::BadHeader;
        }
        let header_len = usize::from(fixed[0] & 0x0f) * 4;
        if header_len < IPV4_MIN_HEADER_LEN {
            return Verdict::BadHeader;
        }
        let Some(ip_header) = ip.get(..header_len) else {
            return Verdict::Truncated;
        };
        let total_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if total_len < header_len || internet_checksum(ip_header) != 0 {
            return Verdict::BadHeader;
        }
        let src = Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]);
        let dst = Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]);
        self.route(src.into(), dst.into())
    }

    /// The verdict on an IPv6 packet (`ip` starts at its fixed header). `whole`: the capture
    /// kept the entire frame, so the payload length can be checked against it.
    ///
    /// Extension headers are not walked: only the fixed header's Next Header is looked at
    /// for the Neighbor Discovery check. Walking them would need all of them captured (each
    /// may be up to 2 KiB), and RFC 4861 messages are sent without any in practice (RFC 6980
    /// forbids fragmenting them). So an ND message behind an extension header would count
    /// as native; a native packet is never refused for carrying extension headers.
    fn ipv6(&self, ip: &[u8], whole: bool) -> Verdict {
        let Some(fixed) = ip.get(..IPV6_HEADER_LEN) else {
            return Verdict::Truncated;
        };
        if fixed[0] >> 4 != 6 {
            return Verdict::BadHeader;
        }
        let payload_len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
        // The kernel drops such a packet too (ipv6_rcv). Without `whole`, the capture may
        // have cut the frame: nothing to compare against.
        if whole && ip.len() - IPV6_HEADER_LEN < payload_len {
            return Verdict::Truncated;
        }
        let next_header = fixed[6];
        let address = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&fixed[at..at + 16]);
            Ipv6Addr::from(octets)
        };
        let (src, dst) = (address(8), address(24));
        if dst.is_multicast() {
            return Verdict::NotUnicast;
        }
        if next_header == NEXT_HEADER_ICMPV6 {
            // An ICMPv6 message has at least a type, code and checksum (RFC 4443, 2.1).
            if payload_len == 0 {
                return Verdict::BadHeader;
            }
            let Some(&icmp_type) = ip.get(IPV6_HEADER_LEN) else {
                return Verdict::Truncated;
            };
            if NEIGHBOUR_DISCOVERY_TYPES.contains(&icmp_type) {
                return Verdict::NeighbourDiscovery;
            }
        }
        self.route(src.into(), dst.into())
    }

    /// The verdict on a well-formed unicast packet from `src` to `dst`.
    fn route(&self, src: IpAddr, dst: IpAddr) -> Verdict {
        if self.ours.iter().any(|n| n.contains(&src)) {
            return Verdict::FromOurSubnets;
        }
        match self
            .watched
            .iter()
            .filter(|n| n.contains(&dst))
            .max_by_key(|n| n.prefix_len())
        {
            Some(&subnet) => Verdict::Native { subnet, src, dst },
            None => Verdict::OtherDestination,
        }
    }

    /// The libpcap filter expression that lets only candidates through in the kernel: the
    /// gateways' source MACs (`ether src 02:00:00:00:00:02 and ...`, several joined by `or`),
    /// then one clause per family watched: `ip and (dst net 203.0.113.0/29 or dst net ...)`,
    /// `ip6 and (dst net 2001:db8:1::/64 or ...)`, or both joined as `(ip and (...)) or
    /// (ip6 and (...))`; once no subnet is watched, or with no gateway, `ip and not ip`, which
    /// passes nothing (libpcap's optimiser refuses it: compile it unoptimised). The
    /// classifier still checks each frame the filter passes (source, checksum, multicast,
    /// Neighbor Discovery). Forged frames from other MACs never wake the watcher.
    pub fn bpf_expression(&self) -> String {
        let macs: Vec<String> = (self.gateways.iter())
            .map(|m| format!("ether src {m}"))
            .collect();
        match (macs.len(), self.packet_expression()) {
            (0, _) | (_, None) => "ip and not ip".to_owned(),
            (1, Some(packets)) => format!("{} and ({packets})", macs[0]),
            (_, Some(packets)) => format!("({}) and ({packets})", macs.join(" or ")),
        }
    }

    /// The destination part of [`Self::bpf_expression`], None when nothing is watched.
    fn packet_expression(&self) -> Option<String> {
        let clause = |family: &str, v6: bool| {
            let nets: Vec<String> = self
                .watched
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(|n| format!("dst net {n}"))
                .collect();
            (!nets.is_empty()).then(|| format!("{family} and ({})", nets.join(" or ")))
        };
        match (clause("ip", false), clause("ip6", true)) {
            (Some(v4), Some(v6)) => Some(format!("({v4}) or ({v6})")),
            (Some(one), None) | (None, Some(one)) => Some(one),
            (None, None) => None,
        }
    }
}

/// One's complement sum over `bytes` (RFC 1071); 0 when a header with its checksum is intact.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| match *c {
            [hi, lo] => u32::from(u16::from_be_bytes([hi, lo])),
            [hi] => u32::from(hi) << 8,
            _ => 0,
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Byte fixtures shared by the classifier tests, the filter tests and the namespace test.

    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// The bridge's MAC in the fixtures (locally administered, unicast).
    pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    /// The sender's (the provider's router) MAC in the fixtures.
    pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    /// The broadcast MAC.
    pub const BROADCAST: [u8; 6] = [0xff; 6];
    /// A neighbour on the uplink segment that is not the gateway.
    pub const NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

    /// The gateways of the fixtures' classifiers: the router alone.
    pub fn gateways() -> Vec<MacAddr> {
        vec![MacAddr(ROUTER_MAC)]
    }

    /// `frame` with its source MAC replaced by `src`.
    pub fn from_mac(mut frame: Vec<u8>, src: [u8; 6]) -> Vec<u8> {
        frame[6..12].copy_from_slice(&src);
        frame
    }

    /// An Ethernet frame carrying an IPv4/UDP packet with a valid header checksum.
    pub fn udp4(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&ROUTER_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&ipv4_udp(src, dst, payload));
        f
    }

    /// An IPv4/UDP packet (no Ethernet header), UDP checksum 0 (allowed for IPv4).
    pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = (IPV4_MIN_HEADER_LEN + 8 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let sum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp_len = (8 + payload.len()) as u16;
        ip.extend_from_slice(&40000u16.to_be_bytes());
        ip.extend_from_slice(&9u16.to_be_bytes());
        ip.extend_from_slice(&udp_len.to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(payload);
        ip
    }

    /// An ARP request (who-has `target` tell `sender`), broadcast.
    pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        arp_like(ETHERTYPE_ARP, 1, sender, target)
    }

    /// A RARP "reverse request" like the one QEMU broadcasts after a live migration
    /// (`qemu_announce_self`): all addresses zero, broadcast.
    pub fn qemu_rarp() -> Vec<u8> {
        arp_like(
            ETHERTYPE_RARP,
            3,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        )
    }

    fn arp_like(ethertype: u16, op: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&BROADCAST);
        f.extend_from_slice(&ROUTER_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&ROUTER_MAC);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f.resize(60, 0);
        f
    }

    /// An IPv6 UDP frame, unicast to the host, whose bytes at the IPv4 destination offset
    /// read 203.0.113.2: a parser that skipped the ethertype check would fire on it.
    pub fn ipv6_lookalike() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&ROUTER_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 203, 0, 113, 2]);
        ip6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 203, 0, 113, 2]);
        ip6.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 8, 0, 0]);
        f.extend_from_slice(&ip6);
        f
    }

    /// An Ethernet frame carrying an IPv6/UDP packet with a valid UDP checksum.
    pub fn udp6(dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut udp = Vec::new();
        udp.extend_from_slice(&40000u16.to_be_bytes());
        udp.extend_from_slice(&9u16.to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        // Zero means "no checksum", which IPv6 forbids for UDP: it is sent as all ones.
        let sum = match upper_layer_checksum(src, dst, IPPROTO_UDP, &udp) {
            0 => 0xffff,
            sum => sum,
        };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        ethernet_ipv6(dst_mac, src, dst, IPPROTO_UDP, 64, &udp)
    }

    /// An Ethernet frame carrying an ICMPv6 message of type `icmp_type` (code 0) with `body`
    /// after the checksum, hop limit 255 as Neighbor Discovery requires.
    pub fn icmp6(
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        icmp_type: u8,
        body: &[u8],
    ) -> Vec<u8> {
        let mut icmp = vec![icmp_type, 0, 0, 0];
        icmp.extend_from_slice(body);
        let sum = upper_layer_checksum(src, dst, IPPROTO_ICMPV6, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        ethernet_ipv6(dst_mac, src, dst, IPPROTO_ICMPV6, 255, &icmp)
    }

    /// A Neighbor Solicitation for `target` (RFC 4861, 4.3), sent to `dst`: the
    /// solicited-node multicast address, or `target` itself to confirm reachability.
    pub fn neighbour_solicitation(
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
    ) -> Vec<u8> {
        icmp6(dst_mac, src, dst, 135, &nd_body(target))
    }

    /// A solicited Neighbor Advertisement for `target` (RFC 4861, 4.4), sent to `dst`.
    pub fn neighbour_advertisement(
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
    ) -> Vec<u8> {
        let mut body = nd_body(target);
        body[0] = 0x60; // Solicited, Override.
        icmp6(dst_mac, src, dst, 136, &body)
    }

    /// Reserved/flags, target address, source/target link-layer address option (ROUTER_MAC).
    fn nd_body(target: Ipv6Addr) -> Vec<u8> {
        let mut body = vec![0; 4];
        body.extend_from_slice(&target.octets());
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&ROUTER_MAC);
        body
    }

    /// The Ethernet multicast address for an IPv6 multicast address (RFC 2464, 7).
    pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
        let o = group.octets();
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    }

    /// The solicited-node multicast address of `addr` (RFC 4291, 2.7.1).
    pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
        let o = addr.octets();
        Ipv6Addr::from([
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
        ])
    }

    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ICMPV6: u8 = 58;

    fn ethernet_ipv6(
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        hop_limit: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&ROUTER_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next_header, hop_limit]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(payload);
        f
    }

    /// The checksum of an upper-layer message over the IPv6 pseudo-header (RFC 8200, 8.1).
    fn upper_layer_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, msg: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, next_header]);
        bytes.extend_from_slice(msg);
        internet_checksum(&bytes)
    }

    /// `frame` with an 802.1Q tag (VLAN 100) inserted after the MAC addresses.
    pub fn vlan_tagged(frame: &[u8]) -> Vec<u8> {
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f.extend_from_slice(&100u16.to_be_bytes());
        f.extend_from_slice(&frame[12..]);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn any(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn classifier() -> Classifier {
        Classifier::new(
            vec![
                "203.0.113.0/29".parse().unwrap(),
                "198.51.100.0/24".parse().unwrap(),
            ],
            gateways(),
        )
    }

    const CLIENT: &str = "198.18.5.5";

    #[test]
    fn native_udp_to_a_vm_matches_its_subnet() {
        let c = classifier();
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"probe");
        assert_eq!(c.classify(&f), Some("203.0.113.0/29".parse().unwrap()));
        let f = udp4(HOST_MAC, ip(CLIENT), ip("198.51.100.200"), b"probe");
        assert_eq!(c.classify(&f), Some("198.51.100.0/24".parse().unwrap()));
        assert_eq!(
            c.verdict(&f),
            Verdict::Native {
                subnet: "198.51.100.0/24".parse().unwrap(),
                src: any(CLIENT),
                dst: any("198.51.100.200"),
            }
        );
    }

    #[test]
    fn the_most_specific_subnet_wins() {
        let c = Classifier::new(
            vec![
                "203.0.113.0/24".parse().unwrap(),
                "203.0.113.0/29".parse().unwrap(),
            ],
            gateways(),
        );
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(c.classify(&f), Some("203.0.113.0/29".parse().unwrap()));
    }

    #[test]
    fn host_bits_in_configured_subnets_are_ignored() {
        let c = Classifier::new(vec!["203.0.113.5/29".parse().unwrap()], gateways());
        assert_eq!(c.subnets(), &["203.0.113.0/29".parse::<IpNet>().unwrap()]);
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(c.classify(&f), Some("203.0.113.0/29".parse().unwrap()));
    }

    #[test]
    fn a_frame_still_tagged_is_not_ip() {
        // The kernel untags received frames before a packet socket sees them; a frame that
        // still carries a tag is refused, for either family.
        let f = vlan_tagged(&udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b""));
        assert_eq!(classifier().verdict(&f), Verdict::NotIp(ETHERTYPE_VLAN));
        let f = vlan_tagged(&udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b""));
        assert_eq!(mixed().verdict(&f), Verdict::NotIp(ETHERTYPE_VLAN));
    }

    #[test]
    fn only_the_gateways_mac_can_be_native() {
        let c = classifier();
        let native = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert!(c.classify(&native).is_some());
        // The same packet forged by a neighbour on the segment, in either family.
        assert_eq!(
            c.verdict(&from_mac(native, NEIGHBOUR_MAC)),
            Verdict::NotFromGateway {
                subnet: "203.0.113.0/29".parse().unwrap(),
                src_mac: MacAddr(NEIGHBOUR_MAC),
            }
        );
        let forged6 = from_mac(udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b""), NEIGHBOUR_MAC);
        assert_eq!(
            mixed().verdict(&forged6),
            Verdict::NotFromGateway {
                subnet: net("2001:db8:1::/64"),
                src_mac: MacAddr(NEIGHBOUR_MAC),
            }
        );
        // The MAC is checked only on what would be native: other refusals keep their reason.
        let vm_out = from_mac(
            udp4(HOST_MAC, ip("203.0.113.2"), ip(CLIENT), b""),
            NEIGHBOUR_MAC,
        );
        assert_eq!(c.verdict(&vm_out), Verdict::FromOurSubnets);
        // Several gateways (a redundant pair): each may trigger; none known: nothing can.
        let pair = Classifier::new(
            vec![net("203.0.113.0/29")],
            vec![MacAddr(NEIGHBOUR_MAC), MacAddr(ROUTER_MAC)],
        );
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert!(pair.classify(&f).is_some());
        assert!(pair.classify(&from_mac(f.clone(), NEIGHBOUR_MAC)).is_some());
        let blind = Classifier::new(vec![net("203.0.113.0/29")], Vec::new());
        assert!(matches!(blind.verdict(&f), Verdict::NotFromGateway { .. }));
        assert_eq!(blind.bpf_expression(), "ip and not ip");
    }

    #[test]
    fn mac_addresses_parse_and_print_like_ip_link() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m, MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:",
            "5254:00:ab:cd:0f:1",
            "gg:00:00:00:00:00",
            "152:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn arp_and_rarp_never_match() {
        let c = classifier();
        assert_eq!(
            c.verdict(&arp_request(ip(CLIENT), ip("203.0.113.2"))),
            Verdict::NotUnicast
        );
        assert_eq!(c.verdict(&qemu_rarp()), Verdict::NotUnicast);
        let mut unicast_arp = arp_request(ip(CLIENT), ip("203.0.113.2"));
        unicast_arp[..6].copy_from_slice(&HOST_MAC);
        assert_eq!(c.verdict(&unicast_arp), Verdict::NotIp(ETHERTYPE_ARP));
        let mut unicast_rarp = qemu_rarp();
        unicast_rarp[..6].copy_from_slice(&HOST_MAC);
        assert_eq!(c.verdict(&unicast_rarp), Verdict::NotIp(ETHERTYPE_RARP));
        let mut lldp = unicast_arp.clone();
        lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        assert_eq!(c.verdict(&lldp), Verdict::NotIp(0x88cc));
        // Parsed as IPv6, whatever its bytes look like at IPv4 offsets.
        assert_eq!(c.verdict(&ipv6_lookalike()), Verdict::OtherDestination);
    }

    #[test]
    fn other_subnets_and_vm_outbound_traffic_never_match() {
        let c = classifier();
        let other = udp4(HOST_MAC, ip(CLIENT), ip("192.0.2.1"), b"");
        assert_eq!(c.verdict(&other), Verdict::OtherDestination);
        let just_outside = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.8"), b"");
        assert_eq!(c.verdict(&just_outside), Verdict::OtherDestination);
        let vm_out = udp4(HOST_MAC, ip("203.0.113.2"), ip(CLIENT), b"");
        assert_eq!(c.verdict(&vm_out), Verdict::FromOurSubnets);
        let vm_to_vm = udp4(HOST_MAC, ip("203.0.113.3"), ip("203.0.113.2"), b"");
        assert_eq!(c.verdict(&vm_to_vm), Verdict::FromOurSubnets);
    }

    #[test]
    fn broadcast_ipv4_never_matches() {
        let f = udp4(BROADCAST, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(classifier().verdict(&f), Verdict::NotUnicast);
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let c = classifier();
        let full = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        let header_end = ETHERNET_HEADER_LEN + IPV4_MIN_HEADER_LEN;
        for len in 0..header_end {
            assert_eq!(c.verdict(&full[..len]), Verdict::Truncated, "length {len}");
        }
        // The classifier needs the IP header only, not the payload.
        assert!(c.classify(&full[..header_end]).is_some());
    }

    #[test]
    fn options_must_be_captured_whole() {
        let c = classifier();
        let mut f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), &[0; 8]);
        // Turn the first four payload bytes into a header option (IHL 6), fix the checksum.
        let ip_start = ETHERNET_HEADER_LEN;
        f[ip_start] = 0x46;
        f[ip_start + 10..ip_start + 12].copy_from_slice(&[0, 0]);
        let sum = internet_checksum(&f[ip_start..ip_start + 24]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
        assert!(c.classify(&f).is_some());
        assert_eq!(c.verdict(&f[..ip_start + 23]), Verdict::Truncated);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let c = classifier();
        let good = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        let ip_start = ETHERNET_HEADER_LEN;
        let mut bad_version = good.clone();
        bad_version[ip_start] = 0x65;
        assert_eq!(c.verdict(&bad_version), Verdict::BadHeader);
        let mut short_ihl = good.clone();
        short_ihl[ip_start] = 0x44;
        assert_eq!(c.verdict(&short_ihl), Verdict::BadHeader);
        let mut bad_sum = good.clone();
        bad_sum[ip_start + 11] ^= 0xff;
        assert_eq!(c.verdict(&bad_sum), Verdict::BadHeader);
        let mut short_total = good;
        short_total[ip_start + 2..ip_start + 4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(c.verdict(&short_total), Verdict::BadHeader);
    }

    #[test]
    fn bpf_expression_lists_every_subnet() {
        assert_eq!(
            classifier().bpf_expression(),
            "ether src 02:00:00:00:00:02 and (ip and (dst net 203.0.113.0/29 or dst net 198.51.100.0/24))"
        );
        let pair = Classifier::new(
            vec!["203.0.113.0/29".parse().unwrap()],
            vec![MacAddr(ROUTER_MAC), MacAddr(NEIGHBOUR_MAC)],
        );
        assert_eq!(
            pair.bpf_expression(),
            "(ether src 02:00:00:00:00:02 or ether src 02:00:00:00:00:66) and (ip and (dst net 203.0.113.0/29))"
        );
    }

    #[test]
    fn a_subnet_no_longer_watched_stays_ours() {
        let mut c = classifier();
        c.stop_watching("203.0.113.0/29".parse().unwrap());
        let to_moved = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(c.verdict(&to_moved), Verdict::OtherDestination);
        let from_moved = udp4(HOST_MAC, ip("203.0.113.2"), ip("198.51.100.9"), b"");
        assert_eq!(c.verdict(&from_moved), Verdict::FromOurSubnets);
        assert_eq!(
            c.bpf_expression(),
            "ether src 02:00:00:00:00:02 and (ip and (dst net 198.51.100.0/24))"
        );
        c.stop_watching("198.51.100.0/24".parse().unwrap());
        assert!(c.subnets().is_empty());
        assert_eq!(c.bpf_expression(), "ip and not ip");
    }

    #[test]
    fn snaplen_covers_a_header_with_full_options() {
        assert_eq!(SNAPLEN, 74);
    }

    // IPv6.

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn any6(s: &str) -> IpAddr {
        IpAddr::V6(ip6(s))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Two IPv4 and two IPv6 subnets, as `[migration] subnets` may now list.
    fn mixed() -> Classifier {
        Classifier::new(
            vec![
                net("203.0.113.0/29"),
                net("2001:db8:1::/64"),
                net("198.51.100.0/24"),
                net("2001:db8:100::/56"),
            ],
            gateways(),
        )
    }

    /// A client outside our subnets, the provider's router as it appears on the link, a VM.
    const CLIENT6: &str = "2001:db8:ff::5";
    const ROUTER_LL: &str = "fe80::2";
    const VM6: &str = "2001:db8:1::2";

    #[test]
    fn native_udp6_to_a_vm_matches_its_subnet() {
        let c = mixed();
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b"probe");
        assert_eq!(
            c.verdict(&f),
            Verdict::Native {
                subnet: net("2001:db8:1::/64"),
                src: any6(CLIENT6),
                dst: any6(VM6),
            }
        );
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6("2001:db8:100:ff::1"), b"");
        assert_eq!(c.classify(&f), Some(net("2001:db8:100::/56")));
        // Any upper layer counts, ICMPv6 too (echo request), and the router's link-local
        // source is outside our subnets.
        let ping = icmp6(HOST_MAC, ip6(ROUTER_LL), ip6(VM6), 128, &[0, 1, 0, 1]);
        assert_eq!(c.classify(&ping), Some(net("2001:db8:1::/64")));
    }

    #[test]
    fn the_most_specific_ipv6_subnet_wins_and_host_bits_are_ignored() {
        let c = Classifier::new(
            vec![net("2001:db8:1::/48"), net("2001:db8:1::7/64")],
            gateways(),
        );
        assert_eq!(
            c.subnets(),
            &[net("2001:db8:1::/48"), net("2001:db8:1::/64")]
        );
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b"");
        assert_eq!(c.classify(&f), Some(net("2001:db8:1::/64")));
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6("2001:db8:1:2::1"), b"");
        assert_eq!(c.classify(&f), Some(net("2001:db8:1::/48")));
    }

    #[test]
    fn neighbour_discovery_for_a_vm_address_is_never_native() {
        let c = mixed();
        let vm = ip6(VM6);
        for src in [ip6(ROUTER_LL), ip6("2001:db8:ff::1")] {
            // Reachability confirmation: unicast to the VM's address, at the host's MAC.
            let ns = neighbour_solicitation(HOST_MAC, src, vm, vm);
            assert_eq!(c.verdict(&ns), Verdict::NeighbourDiscovery);
            let na = neighbour_advertisement(HOST_MAC, src, vm, vm);
            assert_eq!(c.verdict(&na), Verdict::NeighbourDiscovery);
        }
        // Address resolution: to the solicited-node group, at its multicast MAC.
        let group = solicited_node(vm);
        let ns = neighbour_solicitation(multicast_mac(group), ip6(ROUTER_LL), group, vm);
        assert_eq!(c.verdict(&ns), Verdict::NotUnicast);
        // Router Solicitation/Advertisement and Redirect are on-link signalling too.
        for icmp_type in [133, 134, 137] {
            let f = icmp6(HOST_MAC, ip6(ROUTER_LL), vm, icmp_type, &[0; 36]);
            assert_eq!(
                c.verdict(&f),
                Verdict::NeighbourDiscovery,
                "type {icmp_type}"
            );
        }
        // Only the fixed header's Next Header is looked at: behind an extension header the
        // ICMPv6 type is not inspected and the packet counts as native (the documented rule).
        let mut behind_hop_by_hop = neighbour_solicitation(HOST_MAC, ip6(ROUTER_LL), vm, vm);
        let ip_start = ETHERNET_HEADER_LEN;
        behind_hop_by_hop[ip_start + 6] = 0; // Hop-by-Hop Options
        let hop_by_hop = [58, 0, 1, 4, 0, 0, 0, 0]; // Next Header ICMPv6, PadN
        let at = ip_start + IPV6_HEADER_LEN;
        behind_hop_by_hop.splice(at..at, hop_by_hop);
        let payload_len = (behind_hop_by_hop.len() - at) as u16;
        behind_hop_by_hop[ip_start + 4..ip_start + 6].copy_from_slice(&payload_len.to_be_bytes());
        assert_eq!(c.classify(&behind_hop_by_hop), Some(net("2001:db8:1::/64")));
    }

    #[test]
    fn ipv6_multicast_is_never_native() {
        // A multicast destination at the host's unicast MAC, even inside a watched subnet.
        let c = Classifier::new(vec![net("ff05::/16"), net("2001:db8:1::/64")], gateways());
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6("ff05::1:3"), b"");
        assert_eq!(c.verdict(&f), Verdict::NotUnicast);
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6("ff02::1"), b"");
        assert_eq!(c.verdict(&f), Verdict::NotUnicast);
        let group = ip6("ff02::1");
        let f = udp6(multicast_mac(group), ip6(CLIENT6), group, b"");
        assert_eq!(c.verdict(&f), Verdict::NotUnicast);
        // Multicast MAC with a unicast destination: refused on the MAC, as for IPv4.
        let f = udp6(multicast_mac(group), ip6(CLIENT6), ip6(VM6), b"");
        assert_eq!(c.verdict(&f), Verdict::NotUnicast);
    }

    #[test]
    fn packets_from_our_subnets_of_either_family_never_match() {
        let mut c = mixed();
        let vm_out = udp6(HOST_MAC, ip6(VM6), ip6(CLIENT6), b"");
        assert_eq!(c.verdict(&vm_out), Verdict::FromOurSubnets);
        let vm_to_vm = udp6(HOST_MAC, ip6("2001:db8:1::3"), ip6(VM6), b"");
        assert_eq!(c.verdict(&vm_to_vm), Verdict::FromOurSubnets);
        let across = udp6(HOST_MAC, ip6("2001:db8:100::9"), ip6(VM6), b"");
        assert_eq!(c.verdict(&across), Verdict::FromOurSubnets);
        let v4_vm = udp4(HOST_MAC, ip("203.0.113.3"), ip("198.51.100.9"), b"");
        assert_eq!(c.verdict(&v4_vm), Verdict::FromOurSubnets);
        // A subnet cut over stays ours.
        c.stop_watching(net("2001:db8:1::/64"));
        assert_eq!(
            c.verdict(&udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b"")),
            Verdict::OtherDestination
        );
        assert_eq!(c.verdict(&vm_out), Verdict::FromOurSubnets);
        let from_moved = udp6(HOST_MAC, ip6(VM6), ip6("2001:db8:100::9"), b"");
        assert_eq!(c.verdict(&from_moved), Verdict::FromOurSubnets);
    }

    #[test]
    fn other_ipv6_destinations_never_match() {
        let c = mixed();
        for dst in [
            "2001:db8:2::1",
            "2001:db8:1:1::2",
            "2001:db8:101::1",
            "::1",
            "fe80::1",
        ] {
            let f = udp6(HOST_MAC, ip6(CLIENT6), ip6(dst), b"");
            assert_eq!(c.verdict(&f), Verdict::OtherDestination, "{dst}");
        }
        // An IPv4-only classifier parses IPv6 but watches nothing there.
        let f = udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b"");
        assert_eq!(classifier().verdict(&f), Verdict::OtherDestination);
    }

    #[test]
    fn ipv4_behaviour_is_unchanged_in_a_mixed_list() {
        let c = mixed();
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(
            c.verdict(&f),
            Verdict::Native {
                subnet: net("203.0.113.0/29"),
                src: any(CLIENT),
                dst: any("203.0.113.2"),
            }
        );
        let f = udp4(HOST_MAC, ip(CLIENT), ip("192.0.2.1"), b"");
        assert_eq!(c.verdict(&f), Verdict::OtherDestination);
        let f = udp4(BROADCAST, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(c.verdict(&f), Verdict::NotUnicast);
        let mut bad_sum = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        bad_sum[ETHERNET_HEADER_LEN + 11] ^= 0xff;
        assert_eq!(c.verdict(&bad_sum), Verdict::BadHeader);
        // An IPv4 packet is matched against IPv4 subnets only.
        let v6_only = Classifier::new(vec![net("2001:db8:1::/64")], gateways());
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(v6_only.verdict(&f), Verdict::OtherDestination);
    }

    #[test]
    fn every_ipv6_truncation_is_refused_without_panic() {
        let c = mixed();
        let full = udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b"");
        assert_eq!(full.len(), ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + 8);
        // Shorter than SNAPLEN, so the capture kept it whole: whatever is missing of what
        // the header announces is missing from the packet itself.
        for len in 0..full.len() {
            assert_eq!(c.verdict(&full[..len]), Verdict::Truncated, "length {len}");
        }
        assert!(c.classify(&full).is_some());
        // A frame of SNAPLEN bytes or more may have been cut by the capture: its payload
        // length is not checked, the NS is still recognised.
        let ns = neighbour_solicitation(HOST_MAC, ip6(ROUTER_LL), ip6(VM6), ip6(VM6));
        assert!(ns.len() > SNAPLEN);
        for len in 0..ns.len() {
            let expected = if len < SNAPLEN {
                Verdict::Truncated
            } else {
                Verdict::NeighbourDiscovery
            };
            assert_eq!(c.verdict(&ns[..len]), expected, "length {len}");
        }
        // Bytes after the packet (Ethernet padding of a short frame) are fine.
        let mut padded = full.clone();
        padded.extend_from_slice(&[0; 4]);
        assert!(c.classify(&padded).is_some());
    }

    #[test]
    fn a_long_ipv6_packet_cut_by_the_capture_is_still_classified() {
        let c = mixed();
        let long = udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), &[0xab; 1000]);
        assert_eq!(c.classify(&long[..SNAPLEN]), Some(net("2001:db8:1::/64")));
        // An NS with a long option area, cut at SNAPLEN: its type is still seen.
        let mut long_ns = neighbour_solicitation(HOST_MAC, ip6(ROUTER_LL), ip6(VM6), ip6(VM6));
        long_ns.resize(1000, 0);
        let payload_len = (long_ns.len() - ETHERNET_HEADER_LEN - IPV6_HEADER_LEN) as u16;
        long_ns[ETHERNET_HEADER_LEN + 4..ETHERNET_HEADER_LEN + 6]
            .copy_from_slice(&payload_len.to_be_bytes());
        assert_eq!(c.verdict(&long_ns[..SNAPLEN]), Verdict::NeighbourDiscovery);
    }

    #[test]
    fn malformed_ipv6_headers_are_refused() {
        let c = mixed();
        let good = udp6(HOST_MAC, ip6(CLIENT6), ip6(VM6), b"");
        let ip_start = ETHERNET_HEADER_LEN;
        let mut bad_version = good.clone();
        bad_version[ip_start] = 0x45;
        assert_eq!(c.verdict(&bad_version), Verdict::BadHeader);
        // ICMPv6 without even a type byte (the frame padded to Ethernet's minimum).
        let mut empty_icmp = good;
        empty_icmp.truncate(ip_start + IPV6_HEADER_LEN);
        empty_icmp[ip_start + 4..ip_start + 6].copy_from_slice(&[0, 0]);
        empty_icmp[ip_start + 6] = 58;
        empty_icmp.resize(60, 0);
        assert_eq!(c.verdict(&empty_icmp), Verdict::BadHeader);
        // "No Next Header" with no payload is a valid, if useless, packet.
        let mut nothing = empty_icmp;
        nothing[ip_start + 6] = 59;
        assert_eq!(c.classify(&nothing), Some(net("2001:db8:1::/64")));
    }

    #[test]
    fn bpf_expression_covers_each_family_watched() {
        assert_eq!(
            Classifier::new(
                vec![net("2001:db8:1::/64"), net("2001:db8:100::/56")],
                gateways()
            )
            .bpf_expression(),
            "ether src 02:00:00:00:00:02 and (ip6 and (dst net 2001:db8:1::/64 or dst net 2001:db8:100::/56))"
        );
        let mut c = mixed();
        assert_eq!(
            c.bpf_expression(),
            "ether src 02:00:00:00:00:02 and ((ip and (dst net 203.0.113.0/29 or dst net 198.51.100.0/24)) \
             or (ip6 and (dst net 2001:db8:1::/64 or dst net 2001:db8:100::/56)))"
        );
        c.stop_watching(net("203.0.113.0/29"));
        c.stop_watching(net("198.51.100.0/24"));
        assert_eq!(
            c.bpf_expression(),
            "ether src 02:00:00:00:00:02 and (ip6 and (dst net 2001:db8:1::/64 or dst net 2001:db8:100::/56))"
        );
        c.stop_watching(net("2001:db8:1::/64"));
        c.stop_watching(net("2001:db8:100::/56"));
        assert_eq!(c.bpf_expression(), "ip and not ip");
    }

    #[test]
    fn snaplen_covers_an_ipv6_header_and_the_icmpv6_type() {
        // Ethernet, the fixed IPv6 header, the ICMPv6 type byte.
        let ipv6_needs = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + 1;
        let ipv4_needs = ETHERNET_HEADER_LEN + IPV4_MAX_HEADER_LEN;
        assert_eq!((ipv6_needs, ipv4_needs), (55, 74));
        assert_eq!(SNAPLEN, ipv4_needs.max(ipv6_needs));
    }
}
