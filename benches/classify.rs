//! The cutover classifier (`vmtun::cutover::Classifier::classify`), in frames/s: the pure
//! check applied to every frame the kernel filter lets through on the bridge.
//!
//! - `native`: an IPv4/UDP frame from outside to 203.0.113.2 (in the watched /29): the
//!   full parse, checksum and both subnet checks, a match.
//! - `other_destination`: the same frame to 198.51.100.9: the full parse, no match.
//! - `forged_native`: the native frame from a neighbour's MAC: the full parse, then refused
//!   as not from the gateway.
//! - `arp_broadcast`: a broadcast ARP request, refused on the first byte.
//! - `native6`: an IPv6/UDP frame from outside to 2001:db8:1::2 (in the watched /64).
//! - `neighbour_solicitation`: a Neighbor Solicitation unicast to that VM address, refused
//!   by its ICMPv6 type after the IPv6 header checks.
//!
//! Run: `cargo bench --bench classify`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vmtun::cutover::{Classifier, MacAddr};

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (valid header checksum) + UDP, 64-byte payload.
fn udp4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = [0xabu8; 64];
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&9u16.to_be_bytes());
    ip.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&payload);
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// Ethernet + IPv6 + `next_header` payload (checksums left zero: the classifier reads none).
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next_header, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&9u16.to_be_bytes());
    udp.extend_from_slice(&(8 + 64u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&[0xab; 64]);
    ipv6(src, dst, 17, &udp)
}

/// A Neighbor Solicitation for `target`, sent to `target` itself (reachability probe).
fn neighbour_solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    ipv6(src, target, 58, &icmp)
}

/// `frame` as a neighbour on the segment forges it: another source MAC.
fn forged(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    f
}

fn arp_broadcast() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&[198, 51, 100, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[203, 0, 113, 2]);
    f.resize(60, 0);
    f
}

fn bench(c: &mut Criterion) {
    let classifier = Classifier::new(
        vec![
            "203.0.113.0/29".parse().unwrap(),
            "2001:db8:1::/64".parse().unwrap(),
        ],
        vec![MacAddr(ROUTER_MAC)],
    );
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    let native = udp4(outside, Ipv4Addr::new(203, 0, 113, 2));
    let other = udp4(outside, Ipv4Addr::new(198, 51, 100, 9));
    let forged_native = forged(&native);
    let arp = arp_broadcast();
    let vm6: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
    let native6 = udp6("2001:db8:ff::7".parse().unwrap(), vm6);
    let ns = neighbour_solicitation("fe80::2".parse().unwrap(), vm6);
    assert!(classifier.classify(&native).is_some());
    assert!(classifier.classify(&native6).is_some());
    assert!(classifier.classify(&ns).is_none());
    assert!(classifier.classify(&forged_native).is_none());
    assert!(classifier.classify(&other).is_none());
    assert!(classifier.classify(&arp).is_none());

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("native", &native),
        ("other_destination", &other),
        ("forged_native", &forged_native),
        ("arp_broadcast", &arp),
        ("native6", &native6),
        ("neighbour_solicitation", &ns),
    ] {
        g.bench_function(name, |b| b.iter(|| classifier.classify(black_box(frame))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
