//! What the fuzz targets and the seed generator share: two tunnels' fixed keys and
//! addresses, valid messages made in memory, the byte mutation that starts the fuzzer from
//! a valid message, mac1 sealing, and the cutover classifier's fixed setup.
//!
//! Keys and addresses are fixed so the seeds in `seeds/` stay meaningful to the targets.
//! Tunnels still draw their ephemeral keys and indices at random, so a valid response or
//! transport message is made afresh in every run that needs one.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmtun::cutover::classify::{Classifier, MacAddr};
use vmtun::keys::{PrivateKey, PublicKey};
use vmtun::noise::{
    Inbound, MAX_MESSAGE, MacKeys, OVERHEAD, Outbound, PeerConfig, Tunnel, TunnelConfig,
};
use vmtun::wire::{HandshakeMessageMut, Initiation, Response};

/// Room for any datagram a tunnel writes.
pub const BUF: usize = MAX_MESSAGE + OVERHEAD + 16;

/// Where the initiator sends from.
pub fn initiator_addr() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 1], 51820))
}

/// Where the responder listens.
pub fn responder_addr() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 2], 51820))
}

fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The configs of the initiator and the responder, made once: deriving public keys is the
/// slowest part of setting up a tunnel.
fn configs() -> &'static (TunnelConfig, TunnelConfig) {
    static CONFIGS: OnceLock<(TunnelConfig, TunnelConfig)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let key_i = PrivateKey::from_bytes([0x11; 32]);
        let key_r = PrivateKey::from_bytes([0x22; 32]);
        let initiator = TunnelConfig {
            private_key: key_i.clone(),
            peers: vec![PeerConfig {
                public_key: key_r.public_key(),
                preshared_key: None,
                endpoint: Some(responder_addr()),
                allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
                persistent_keepalive: None,
            }],
        };
        let responder = TunnelConfig {
            private_key: key_r,
            peers: vec![PeerConfig {
                public_key: key_i.public_key(),
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec!["100.64.0.1/32".parse().unwrap(), "::/0".parse().unwrap()],
                persistent_keepalive: Some(Duration::from_secs(25)),
            }],
        };
        (initiator, responder)
    })
}

/// A fresh initiator, its peer the responder at [`responder_addr`].
pub fn initiator(now: Instant) -> Tunnel {
    Tunnel::new(configs().0.clone(), now, wall())
}

/// A fresh responder, its peer the initiator (no endpoint until it hears from it).
pub fn responder(now: Instant) -> Tunnel {
    Tunnel::new(configs().1.clone(), now, wall())
}

/// The initiator's public key: what mac1 of a message to the initiator is keyed with.
pub fn initiator_key() -> &'static PublicKey {
    &configs().1.peers[0].public_key
}

/// The responder's public key: what mac1 of a message to the responder is keyed with.
pub fn responder_key() -> &'static PublicKey {
    &configs().0.peers[0].public_key
}

/// An IPv4 packet of `len` bytes from the initiator's tunnel address to the responder's.
pub fn ipv4(len: usize) -> Vec<u8> {
    ipv4_from([100, 64, 0, 1], [100, 64, 0, 2], len)
}

/// An IPv4/UDP-looking packet of `len` bytes (at least 20) from `src` to `dst`.
pub fn ipv4_from(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Makes `i` start a handshake (a packet to send and no session) and returns its initiation.
pub fn start_handshake(i: &mut Tunnel, now: Instant) -> Vec<u8> {
    let mut out = vec![0u8; BUF];
    assert_eq!(
        i.handle_outbound(now, &ipv4(60), &mut out),
        Outbound::Queued
    );
    let t = i.poll_transmit(now, &mut out).expect("initiation");
    out[..t.len].to_vec()
}

/// One valid initiation, made once per process (a fresh responder accepts it again).
pub fn initiation() -> &'static [u8] {
    static INIT: OnceLock<Vec<u8>> = OnceLock::new();
    INIT.get_or_init(|| start_handshake(&mut initiator(Instant::now()), Instant::now()))
}

/// What `r` answers to `initiation`: a response, or a cookie reply when `r` is under load.
pub fn answer(r: &mut Tunnel, now: Instant, initiation: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; BUF];
    match r.handle_datagram(now, initiator_addr(), initiation, &mut out) {
        Inbound::Send(t) => out[..t.len].to_vec(),
        other => panic!("valid initiation refused: {other:?}"),
    }
}

/// Completes `i`'s handshake with `response` (from [`answer`]) and returns the first
/// transport message `i` sends: the packet [`start_handshake`] queued.
pub fn first_transport(i: &mut Tunnel, now: Instant, response: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; BUF];
    assert_eq!(
        i.handle_datagram(now, responder_addr(), response, &mut out),
        Inbound::Consumed
    );
    let t = i.poll_transmit(now, &mut out).expect("first transport");
    out[..t.len].to_vec()
}

/// `valid` XORed with `data` (bytes beyond `valid` appended; truncated to `data.len()`
/// when `truncate`), so the fuzzer mutates a valid message rather than build one.
pub fn mutate(valid: &[u8], data: &[u8], truncate: bool) -> Vec<u8> {
    let mut d = valid.to_vec();
    for (i, b) in data.iter().enumerate() {
        match d.get_mut(i) {
            Some(x) => *x ^= b,
            None => d.push(*b),
        }
    }
    if truncate {
        d.truncate(data.len());
    }
    d
}

/// Rewrites mac1 of `msg` for a message to the owner of `to`, if `msg` has the type and
/// length of an initiation or a response: the receiver then looks past its cheap check.
pub fn seal_mac1(msg: &mut [u8], to: &PublicKey) {
    let keys = MacKeys::new(to);
    if let Ok(mut m) = Initiation::new_checked(&mut *msg) {
        let mac = keys.mac1(&m);
        m.set_mac1(&mac);
    } else if let Ok(mut m) = Response::new_checked(&mut *msg) {
        let mac = keys.mac1(&m);
        m.set_mac1(&mac);
    }
}

/// Feeds one datagram to `t`, then drains everything it wants to send or report.
pub fn feed(t: &mut Tunnel, now: Instant, from: SocketAddr, datagram: &[u8]) -> Inbound {
    let mut out = vec![0u8; BUF];
    let result = t.handle_datagram(now, from, datagram, &mut out);
    if let Inbound::Deliver { len, .. } = result {
        assert!(len <= datagram.len());
    }
    while t.poll_transmit(now, &mut out).is_some() {}
    while t.poll_event().is_some() {}
    result
}

/// Runs `t`'s timers ahead, up to 16 deadlines, sending and reporting whatever is due.
pub fn run_timers(t: &mut Tunnel, mut now: Instant) {
    let mut out = vec![0u8; BUF];
    for _ in 0..16 {
        let Some(at) = t.poll_timeout() else { break };
        now = now.max(at);
        t.handle_timeout(now);
        while t.poll_transmit(now, &mut out).is_some() {}
        while t.poll_event().is_some() {}
    }
    let _ = t.peers().count();
}

/// The uplink gateway's MAC in the classifier target and its seeds.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The bridge's MAC (the destination of native frames) in the classifier seeds.
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The classifier under test: one IPv4 and one IPv6 subnet, one gateway.
pub fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        Classifier::new(
            vec![
                "203.0.113.0/29".parse().unwrap(),
                "2001:db8:1::/64".parse().unwrap(),
            ],
            vec![MacAddr(GATEWAY_MAC)],
        )
    })
}
