//! Writes the seed corpora kept in the repo, `fuzz/seeds/<target>/`: valid WireGuard
//! messages made by two in-memory tunnels (initiation, response, cookie reply, transport),
//! mode bytes that make the handshake targets start from a valid message, inner IP packets,
//! Ethernet frames for the cutover classifier, and valid config files.
//!
//! Run from `fuzz/`: `cargo run --example seeds`. The seeds of `wire` and `datagram` hold
//! raw messages with random ephemeral keys, so they change at every run; the others do not.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vmtun::config::Config;
use vmtun::cutover::classify::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use vmtun::keys::{PresharedKey, PrivateKey};
use vmtun::noise::{Inbound, Outbound};
use vmtun_fuzz::{
    BUF, GATEWAY_MAC, HOST_MAC, answer, first_transport, initiator, initiator_addr, ipv4,
    ipv4_from, responder, start_handshake,
};

fn ipv6(payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

/// Mode bytes (see each target's doc) and small XOR patterns over the valid message: the
/// same bytes at every run.
fn handshake_seeds(responder: &Path, initiator: &Path) {
    let zeros = |kind: u8, len: usize| {
        let mut m = vec![0u8; len];
        m[0] = kind;
        with_mode(0, &m)
    };
    let mut flip_index = vec![1u8, 0, 0, 0, 0, 0xff];
    for (name, bytes) in [
        ("initiation_as_is", vec![1]),
        ("initiation_under_load", vec![3]),
        ("initiation_replayed", vec![0x41]),
        ("initiation_truncated", with_mode(0x81, &[0; 100])),
        ("sender_index_flipped", flip_index.clone()),
        ("zero_initiation", zeros(1, 148)),
        ("zero_response", zeros(2, 92)),
    ] {
        write(responder, name, &bytes);
    }
    flip_index.extend_from_slice(&[0, 0, 0, 0xff]);
    for (name, bytes) in [
        ("response_as_is", vec![1]),
        ("cookie_reply_as_is", vec![2]),
        ("response_then_timers", vec![0x41]),
        ("cookie_reply_then_timers", vec![0x42]),
        ("response_truncated", with_mode(0x81, &[0; 60])),
        ("receiver_index_flipped", flip_index),
        ("zero_response", zeros(2, 92)),
        ("zero_cookie_reply", zeros(3, 64)),
    ] {
        write(initiator, name, &bytes);
    }
}

/// Ethernet frames for the classifier (subnets 203.0.113.0/29 and 2001:db8:1::/64).
fn frame_seeds(dir: &Path) {
    let client4 = Ipv4Addr::new(198, 51, 100, 7);
    let vm4 = Ipv4Addr::new(203, 0, 113, 2);
    let client6: Ipv6Addr = "2001:db8:99::7".parse().unwrap();
    let vm6: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
    let native4 = frame(
        HOST_MAC,
        GATEWAY_MAC,
        ETHERTYPE_IPV4,
        &ipv4_udp(client4, vm4),
    );
    let native6 = frame(
        HOST_MAC,
        GATEWAY_MAC,
        ETHERTYPE_IPV6,
        &ipv6_packet(17, client6, vm6),
    );
    let mut neighbour = native4.clone();
    neighbour[11] = 0x66;
    let mut ns = ipv6_packet(58, client6, vm6);
    ns[40] = 135;
    ns[7] = 255;
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&GATEWAY_MAC);
    arp.extend_from_slice(&client4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&vm4.octets());
    for (name, bytes) in [
        ("native_ipv4", native4.clone()),
        ("native_ipv6", native6),
        (
            "from_vm",
            frame(
                HOST_MAC,
                GATEWAY_MAC,
                ETHERTYPE_IPV4,
                &ipv4_udp(vm4, client4),
            ),
        ),
        ("from_neighbour", neighbour),
        (
            "neighbour_solicitation",
            frame(HOST_MAC, GATEWAY_MAC, ETHERTYPE_IPV6, &ns),
        ),
        (
            "arp_request",
            frame([0xff; 6], GATEWAY_MAC, ETHERTYPE_ARP, &arp),
        ),
        ("truncated_ipv4", native4[..30].to_vec()),
    ] {
        write(dir, name, &bytes);
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4/UDP packet with a valid header checksum (RFC 1071) and 8 payload bytes.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = ipv4_from(src.octets(), dst.octets(), 36);
    let sum = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    p[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p[20..28].copy_from_slice(&[0x9c, 0x40, 0, 9, 0, 16, 0, 0]);
    p
}

/// An IPv6 packet with next header `next` and 16 payload bytes (checksums left zero: the
/// classifier does not check them).
fn ipv6_packet(next: u8, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut p = ipv6(16);
    p[6] = next;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let dir = |target: &str| root.join(target);
    let (wire, datagram, config) = (dir("wire"), dir("datagram"), dir("config"));
    let now = Instant::now();
    let mut back = vec![0u8; BUF];

    // Handshake and data.
    let (mut i, mut r) = (initiator(now), responder(now));
    let init = start_handshake(&mut i, now);
    let resp = answer(&mut r, now, &init);
    let transport = first_transport(&mut i, now, &resp);
    // The responder's first packet back, after the first transport confirmed its session.
    assert!(matches!(
        r.handle_datagram(now, initiator_addr(), &transport, &mut back),
        Inbound::Deliver { .. }
    ));
    let Outbound::Send(t) = r.handle_outbound(
        now,
        &ipv4_from([100, 64, 0, 2], [100, 64, 0, 1], 40),
        &mut back,
    ) else {
        panic!("responder cannot send")
    };
    let reverse = back[..t.len].to_vec();

    // A cookie reply: a responder forced under load answers the initiation with one.
    let mut loaded = responder(now);
    loaded.set_under_load_threshold(0);
    let cookie = answer(&mut loaded, now, &init);

    let messages = [
        ("initiation", init.clone()),
        ("response", resp),
        ("cookie_reply", cookie),
        ("transport", transport.clone()),
        ("transport_reverse", reverse),
        ("type_only", vec![4, 0, 0, 0]),
    ];
    for (name, bytes) in &messages {
        write(&wire, name, bytes);
        write(&datagram, &format!("raw_{name}"), &with_mode(0, bytes));
    }
    write(&wire, "ipv4", &ipv4(64));
    write(&wire, "ipv6", &ipv6(24));
    write(&datagram, "initiation_as_is", &with_mode(1, &[]));
    write(
        &datagram,
        "initiation_truncated",
        &with_mode(0x81, &[0; 100]),
    );
    write(&datagram, "transport_as_is", &with_mode(2, &[]));
    write(
        &datagram,
        "transport_counter_flip",
        &with_mode(2, &[0, 0, 0, 0, 0, 0, 0, 0, 1]),
    );
    write(&datagram, "transport_then_timers", &with_mode(0x42, &[]));

    handshake_seeds(&dir("responder"), &dir("initiator"));
    frame_seeds(&dir("classify"));

    // Configs: a plain tunnel, one with every optional field, both migration roles.
    let k = |b: u8| PrivateKey::from_bytes([b; 32]);
    let psk = PresharedKey::from_bytes([7; 32]).to_base64();
    let plain = format!(
        "[interface]\nname = \"vmtun0\"\nprivate_key = \"{}\"\nlisten_port = 51820\naddress = \"100.64.0.1/24\"\n\n\
         [[peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.2.2:51820\"\nallowed_ips = [\"100.64.0.2/32\"]\n",
        k(1).to_base64(),
        k(2).public_key().to_base64()
    );
    let full = format!(
        "[interface]\nname = \"vmtun0\"\nprivate_key = \"{}\"\nlisten_port = 51820\naddress = \"100.64.0.1/24\"\nmtu = 1420\n\n\
         [[peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.2.2:51820\"\nallowed_ips = [\"100.64.0.2/32\", \"203.0.113.0/29\"]\n\
         preshared_key = \"{psk}\"\npersistent_keepalive = 25\n\n\
         [[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"100.64.0.3/32\", \"2001:db8::/64\"]\n",
        k(1).to_base64(),
        k(2).public_key().to_base64(),
        k(3).public_key().to_base64()
    );
    let migration = |role: &str, extra: &str, peer_ips: &str| {
        format!(
            "[interface]\nname = \"vmtun0\"\nprivate_key = \"{}\"\nlisten_port = 51820\naddress = \"100.64.0.1/24\"\n\n\
             [[peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.2.2:51820\"\nallowed_ips = [{peer_ips}]\n\n\
             [migration]\nrole = \"{role}\"\nsubnets = [\"203.0.113.0/29\"]\nvia = \"100.64.0.2\"\nvif_prefix = \"vif\"\n{extra}\n\
             [[vm]]\nvif = \"vif0\"\naddresses = [\"203.0.113.2\"]\n",
            k(1).to_base64(),
            k(2).public_key().to_base64()
        )
    };
    let old = migration("old", "", "\"100.64.0.2/32\", \"203.0.113.0/29\"");
    let new = migration(
        "new",
        "bridge = \"br0\"\ntable = 201\nfwmark = 1\ncutover = \"auto\"\n",
        "\"0.0.0.0/0\"",
    );
    for (name, text) in [("plain", plain), ("full", full), ("old", old), ("new", new)] {
        let verdict = match Config::parse(&text, Path::new("seed.toml")) {
            Ok(_) => "valid".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        println!("config seed {name}: {verdict}");
        write(&config, &format!("{name}.toml"), text.as_bytes());
    }
    println!("seeds written under {}", root.display());
}
