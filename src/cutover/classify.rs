//! The pure core of the cutover: is this Ethernet frame, received on the new host's bridge, a
//! packet the provider now routes natively to one of our subnets?
//!
//! No sockets, no clock. The capture edge (`capture`) hands frames in; it has already
//! dropped frames the host sends out of the bridge and frames for other hosts (the packet type
//! is not in the bytes).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Length of an Ethernet II header: two MAC addresses and the ethertype (IEEE 802.3, 3.1.1).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag: TPID already counted as the ethertype, plus TCI and the inner
/// ethertype (IEEE 802.1Q, 9.3).
pub const VLAN_TAG_LEN: usize = 4;
/// Shortest IPv4 header, without options (RFC 791, 3.1).
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Longest IPv4 header: IHL is four bits of 32-bit words (RFC 791, 3.1).
pub const IPV4_MAX_HEADER_LEN: usize = 60;
/// Bytes the capture must keep of each frame so that the classifier sees a whole IPv4 header
/// behind one VLAN tag. Everything past it is payload we never look at (the seed's `-s 1`
/// kept too little: libpcap then discards the first packets).
pub const SNAPLEN: usize = ETHERNET_HEADER_LEN + VLAN_TAG_LEN + IPV4_MAX_HEADER_LEN;

/// IPv4 ethertype (IANA "IEEE 802 Numbers").
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP ethertype: neighbour resolution, never a routed packet.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// RARP ethertype: QEMU broadcasts RARP frames after a live migration to update switches.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// 802.1Q customer VLAN tag protocol identifier.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IPv6 ethertype: our subnets are IPv4 only.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// What the classifier concluded about one frame, with the reason when it is not native.
///
/// [`Classifier::classify`] only needs the first variant; the reasons exist so that tests and
/// debug logs can say *why* a frame did not trigger the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An IPv4 packet for one of our subnets, from outside them: the provider routes to us.
    Native {
        /// The watched subnet containing the destination (the most specific one).
        subnet: IpNet,
        /// Source address of the packet.
        src: IpAddr,
        /// Destination address of the packet.
        dst: IpAddr,
    },
    /// Shorter than the headers it announces (or than the capture kept).
    Truncated,
    /// Not IP (ARP, RARP, LLDP, ...): carries the ethertype found.
    NotIp(u16),
    /// Sent to a broadcast or multicast MAC: a routed packet for a VM is unicast to the host.
    NotUnicast,
    /// IPv4 header malformed: wrong version, IHL, total length or checksum.
    BadHeader,
    /// The source is in our subnets: one of our VMs talking, not the provider's routing.
    FromOurSubnets,
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

/// Decides whether frames seen on the bridge are native packets for the VM subnets.
///
/// Exists so that the decision that removes the mark rule is a pure function, tested with byte
/// fixtures, and applied as a second check behind the kernel's BPF filter (which cannot see
/// everything, e.g. the source-address rule or the IPv4 checksum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    /// All of our subnets: a packet from any of them is a VM talking.
    ours: Vec<IpNet>,
    /// The subnets whose first native packet is still awaited.
    watched: Vec<IpNet>,
}

impl Classifier {
    /// A classifier for these subnets (normally `[migration] subnets`, already validated).
    pub fn new(subnets: Vec<IpNet>) -> Self {
        let ours: Vec<IpNet> = subnets.into_iter().map(|n| n.trunc()).collect();
        Classifier {
            watched: ours.clone(),
            ours,
        }
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
        let mut ethertype = u16::from_be_bytes([header[12], header[13]]);
        let mut l3 = ETHERNET_HEADER_LEN;
        if ethertype == ETHERTYPE_VLAN {
            // libpcap puts back the tag the kernel stripped; one tag is all a host bridge sees.
            let Some(inner) = frame.get(l3 + 2..l3 + VLAN_TAG_LEN) else {
                return Verdict::Truncated;
            };
            ethertype = u16::from_be_bytes([inner[0], inner[1]]);
            l3 += VLAN_TAG_LEN;
        }
        if ethertype != ETHERTYPE_IPV4 {
            return Verdict::NotIp(ethertype);
        }
        let Some(ip) = frame.get(l3..) else {
            return Verdict::Truncated;
        };
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
        let src = IpAddr::V4(Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]));
        let dst = IpAddr::V4(Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]));
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

    /// The libpcap filter expression that lets only candidates through in the kernel:
    /// `ip and (dst net 203.0.113.0/29 or dst net ...)`, or a filter that passes nothing
    /// once no subnet is watched. The classifier still checks each frame the filter passes.
    pub fn bpf_expression(&self) -> String {
        if self.watched.is_empty() {
            return "ip and not ip".to_owned();
        }
        let nets: Vec<String> = self
            .watched
            .iter()
            .map(|n| format!("dst net {n}"))
            .collect();
        format!("ip and ({})", nets.join(" or "))
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

    use std::net::Ipv4Addr;

    use super::*;

    /// The bridge's MAC in the fixtures (locally administered, unicast).
    pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    /// The sender's (the provider's router) MAC in the fixtures.
    pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    /// The broadcast MAC.
    pub const BROADCAST: [u8; 6] = [0xff; 6];

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
        Classifier::new(vec![
            "203.0.113.0/29".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ])
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
        let c = Classifier::new(vec![
            "203.0.113.0/24".parse().unwrap(),
            "203.0.113.0/29".parse().unwrap(),
        ]);
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(c.classify(&f), Some("203.0.113.0/29".parse().unwrap()));
    }

    #[test]
    fn host_bits_in_configured_subnets_are_ignored() {
        let c = Classifier::new(vec!["203.0.113.5/29".parse().unwrap()]);
        assert_eq!(c.subnets(), &["203.0.113.0/29".parse::<IpNet>().unwrap()]);
        let f = udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b"");
        assert_eq!(c.classify(&f), Some("203.0.113.0/29".parse().unwrap()));
    }

    #[test]
    fn a_tagged_native_packet_matches() {
        let f = vlan_tagged(&udp4(HOST_MAC, ip(CLIENT), ip("203.0.113.2"), b""));
        assert_eq!(
            classifier().classify(&f),
            Some("203.0.113.0/29".parse().unwrap())
        );
    }

    #[test]
    fn arp_rarp_and_ipv6_never_match() {
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
        assert_eq!(c.verdict(&ipv6_lookalike()), Verdict::NotIp(ETHERTYPE_IPV6));
        assert_eq!(
            c.verdict(&vlan_tagged(&ipv6_lookalike())),
            Verdict::NotIp(ETHERTYPE_IPV6)
        );
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
        let tagged = vlan_tagged(&full);
        for len in 0..header_end + VLAN_TAG_LEN {
            assert_eq!(
                c.verdict(&tagged[..len]),
                Verdict::Truncated,
                "length {len}"
            );
        }
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
            "ip and (dst net 203.0.113.0/29 or dst net 198.51.100.0/24)"
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
        assert_eq!(c.bpf_expression(), "ip and (dst net 198.51.100.0/24)");
        c.stop_watching("198.51.100.0/24".parse().unwrap());
        assert!(c.subnets().is_empty());
        assert_eq!(c.bpf_expression(), "ip and not ip");
    }

    #[test]
    fn snaplen_covers_a_tagged_header_with_full_options() {
        assert_eq!(SNAPLEN, 78);
    }
}
