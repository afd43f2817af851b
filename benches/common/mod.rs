//! Shared by the benches: two `Tunnel`s that complete a handshake in memory, and the
//! packets fed to them. Nothing here touches a socket or the host.
#![allow(dead_code)] // each bench uses a different part

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmtun::keys::PrivateKey;
use vmtun::noise::{Inbound, MAX_MESSAGE, OVERHEAD, Outbound, PeerConfig, Tunnel, TunnelConfig};

/// Big enough for any `out` the core writes (see `vmtun::noise::MAX_MESSAGE`).
pub const BUF: usize = MAX_MESSAGE + OVERHEAD + 16;

pub const A_IP: [u8; 4] = [100, 64, 0, 1];
pub const B_IP: [u8; 4] = [100, 64, 0, 2];

pub fn addr_a() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 1], 51820))
}

pub fn addr_b() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 2], 51820))
}

/// An IPv4/UDP packet of exactly `total` bytes (header included) from `src` to `dst`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], total: usize) -> Vec<u8> {
    assert!((28..=65535).contains(&total));
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// The configs of host A (198.18.0.1, 100.64.0.1) and host B (198.18.0.2, 100.64.0.2),
/// each knowing the other's key and endpoint. Fixed keys: runs are comparable.
pub fn configs() -> (TunnelConfig, TunnelConfig) {
    let key_a = PrivateKey::from_bytes([0x11; 32]);
    let key_b = PrivateKey::from_bytes([0x22; 32]);
    let a = TunnelConfig {
        private_key: key_a.clone(),
        peers: vec![PeerConfig {
            public_key: key_b.public_key(),
            preshared_key: None,
            endpoint: Some(addr_b()),
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            persistent_keepalive: None,
        }],
    };
    let b = TunnelConfig {
        private_key: key_b,
        peers: vec![PeerConfig {
            public_key: key_a.public_key(),
            preshared_key: None,
            endpoint: Some(addr_a()),
            allowed_ips: vec!["100.64.0.1/32".parse().unwrap()],
            persistent_keepalive: None,
        }],
    };
    (a, b)
}

/// The wall clock the tunnels are anchored to (only handshake timestamps use it).
pub fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Two fresh tunnels, no session yet.
pub fn fresh(now: Instant) -> (Tunnel, Tunnel) {
    let (a, b) = configs();
    (Tunnel::new(a, now, wall()), Tunnel::new(b, now, wall()))
}

/// One full handshake started by A's first packet: initiation, response, and the queued
/// packet as the first transport message, which B delivers (that confirms B's session).
/// Returns the delivered length. `out`/`back` are caller buffers of [`BUF`] bytes.
pub fn handshake(
    a: &mut Tunnel,
    b: &mut Tunnel,
    now: Instant,
    first: &[u8],
    out: &mut [u8],
    back: &mut [u8],
) -> usize {
    assert_eq!(a.handle_outbound(now, first, out), Outbound::Queued);
    let init = a.poll_transmit(now, out).expect("initiation");
    let Inbound::Send(resp) = b.handle_datagram(now, addr_a(), &out[..init.len], back) else {
        panic!("no response");
    };
    assert_eq!(
        a.handle_datagram(now, addr_b(), &back[..resp.len], out),
        Inbound::Consumed
    );
    let data = a.poll_transmit(now, out).expect("first transport");
    let Inbound::Deliver { len, .. } = b.handle_datagram(now, addr_a(), &out[..data.len], back)
    else {
        panic!("first transport not delivered");
    };
    while a.poll_transmit(now, out).is_some() {}
    while b.poll_transmit(now, out).is_some() {}
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    len
}

/// Two tunnels with an established, confirmed session both ways.
pub fn established(now: Instant) -> (Tunnel, Tunnel) {
    let (mut a, mut b) = fresh(now);
    let mut out = vec![0u8; BUF];
    let mut back = vec![0u8; BUF];
    handshake(
        &mut a,
        &mut b,
        now,
        &ipv4(A_IP, B_IP, 64),
        &mut out,
        &mut back,
    );
    (a, b)
}

/// Seals `packet` on `from` into `out`; panics unless it is sent at once.
pub fn seal(from: &mut Tunnel, now: Instant, packet: &[u8], out: &mut [u8]) -> usize {
    match from.handle_outbound(now, packet, out) {
        Outbound::Send(t) => t.len,
        other => panic!("seal: {other:?}"),
    }
}
