//! Writes seed corpora for the fuzz targets into `fuzz/corpus/<target>/` (gitignored):
//! valid WireGuard messages made by two in-memory tunnels (initiation, response, cookie
//! reply, transport, keepalive), inner IP packets, and valid config files.
//!
//! Run from `fuzz/`: `cargo run --example seeds`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use vmtun::config::Config;
use vmtun::keys::{PresharedKey, PrivateKey};
use vmtun::noise::{Inbound, MAX_MESSAGE, OVERHEAD, Outbound, PeerConfig, Tunnel, TunnelConfig};

const BUF: usize = MAX_MESSAGE + OVERHEAD + 16;

fn sock(last: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, last], 51820))
}

fn pair(now: Instant) -> (Tunnel, Tunnel) {
    // The same keys as fuzz_targets/datagram.rs, so seeds decrypt there.
    let key_i = PrivateKey::from_bytes([0x11; 32]);
    let key_r = PrivateKey::from_bytes([0x22; 32]);
    let peer = |public_key, endpoint, net: &str| PeerConfig {
        public_key,
        preshared_key: None,
        endpoint,
        allowed_ips: vec![net.parse().unwrap()],
        persistent_keepalive: None,
    };
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let i = TunnelConfig {
        private_key: key_i.clone(),
        peers: vec![peer(key_r.public_key(), Some(sock(2)), "100.64.0.2/32")],
    };
    let r = TunnelConfig {
        private_key: key_r,
        peers: vec![peer(key_i.public_key(), None, "100.64.0.1/32")],
    };
    (Tunnel::new(i, now, wall), Tunnel::new(r, now, wall))
}

fn ipv4(len: usize) -> Vec<u8> {
    ipv4_from([100, 64, 0, 1], [100, 64, 0, 2], len)
}

fn ipv4_from(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

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

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let (wire, datagram, config) = (
        root.join("wire"),
        root.join("datagram"),
        root.join("config"),
    );
    let now = Instant::now();
    let mut out = vec![0u8; BUF];
    let mut back = vec![0u8; BUF];

    // Handshake and data.
    let (mut i, mut r) = pair(now);
    assert_eq!(
        i.handle_outbound(now, &ipv4(84), &mut out),
        Outbound::Queued
    );
    let t = i.poll_transmit(now, &mut out).unwrap();
    let init = out[..t.len].to_vec();
    let Inbound::Send(t) = r.handle_datagram(now, sock(1), &init, &mut back) else {
        panic!("no response")
    };
    let resp = back[..t.len].to_vec();
    assert_eq!(
        i.handle_datagram(now, sock(2), &resp, &mut out),
        Inbound::Consumed
    );
    let t = i.poll_transmit(now, &mut out).unwrap();
    let transport = out[..t.len].to_vec();
    // The responder's first packet back, after the first transport confirmed its session.
    assert!(matches!(
        r.handle_datagram(now, sock(1), &transport, &mut back),
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
    let (_, mut loaded) = pair(now);
    loaded.set_under_load_threshold(0);
    let cookie = match loaded.handle_datagram(now, sock(1), &init, &mut back) {
        Inbound::Send(t) => back[..t.len].to_vec(),
        other => panic!("no cookie reply: {other:?}"),
    };

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
