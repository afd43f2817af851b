//! The protocol core fed arbitrary datagrams: a responder `Tunnel` with fixed keys
//! receives them from a fixed address and must never panic, whatever the bytes; its
//! timers may then be run far ahead.
//!
//! The first input byte picks the mode (the rest is `data`); with its bit 6 set the
//! responder's timers are then run ahead (retransmits and rekeys write initiations, whose
//! DH operations make those inputs ~20x slower, so only some inputs do it):
//! - 0: `data` is the datagram, as is.
//! - 1: a valid initiation from the configured peer, XORed with `data` (bytes beyond
//!   148 are appended; with bit 7 of the mode byte set, truncated to `data.len()`), so
//!   the fuzzer starts from messages that pass mac1 and decrypt.
//! - 2: a session is established first, then a valid transport message is mutated the
//!   same way and delivered, then `data` itself as one more datagram.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use vmtun::keys::PrivateKey;
use vmtun::noise::{Inbound, MAX_MESSAGE, OVERHEAD, Outbound, PeerConfig, Tunnel, TunnelConfig};

const BUF: usize = MAX_MESSAGE + OVERHEAD + 16;

fn from() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 1], 51820))
}

fn to() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 2], 51820))
}

fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The configs of the initiator (the peer, at `from`) and the responder (under test, at
/// `to`), made once: deriving public keys is the slowest part of setting up a tunnel.
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
                endpoint: Some(to()),
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

fn initiator(now: Instant) -> Tunnel {
    Tunnel::new(configs().0.clone(), now, wall())
}

fn responder(now: Instant) -> Tunnel {
    Tunnel::new(configs().1.clone(), now, wall())
}

fn ipv4(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p
}

/// One valid initiation, made once per process (a fresh responder accepts it again).
fn initiation() -> &'static [u8] {
    static INIT: OnceLock<Vec<u8>> = OnceLock::new();
    INIT.get_or_init(|| {
        let now = Instant::now();
        let mut i = initiator(now);
        let mut out = vec![0u8; BUF];
        assert_eq!(
            i.handle_outbound(now, &ipv4(60), &mut out),
            Outbound::Queued
        );
        let t = i.poll_transmit(now, &mut out).expect("initiation");
        out[..t.len].to_vec()
    })
}

fn mutate(valid: &[u8], data: &[u8], truncate: bool) -> Vec<u8> {
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

/// Feeds one datagram to `r`, then drains everything it wants to send or report.
fn feed(r: &mut Tunnel, now: Instant, datagram: &[u8], out: &mut [u8]) -> Inbound {
    let result = r.handle_datagram(now, from(), datagram, out);
    if let Inbound::Deliver { len, .. } = result {
        assert!(len <= datagram.len());
    }
    while r.poll_transmit(now, out).is_some() {}
    while r.poll_event().is_some() {}
    result
}

fn run_timers(r: &mut Tunnel, mut now: Instant, out: &mut [u8]) {
    for _ in 0..16 {
        let Some(at) = r.poll_timeout() else { break };
        now = now.max(at);
        r.handle_timeout(now);
        while r.poll_transmit(now, out).is_some() {}
        while r.poll_event().is_some() {}
    }
    let _ = r.peers().count();
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut r = responder(now);
    let mut out = vec![0u8; BUF];
    let mut back = vec![0u8; BUF];
    let truncate = mode & 0x80 != 0;
    match mode % 3 {
        0 => {
            feed(&mut r, now, data, &mut out);
        }
        1 => {
            feed(&mut r, now, &mutate(initiation(), data, truncate), &mut out);
        }
        _ => {
            // Handshake in memory, then a valid transport message to mutate.
            let mut i = initiator(now);
            assert_eq!(
                i.handle_outbound(now, &ipv4(60), &mut out),
                Outbound::Queued
            );
            let init = i.poll_transmit(now, &mut out).expect("initiation");
            let Inbound::Send(resp) = r.handle_datagram(now, from(), &out[..init.len], &mut back)
            else {
                panic!("valid initiation refused");
            };
            assert_eq!(
                i.handle_datagram(now, to(), &back[..resp.len], &mut out),
                Inbound::Consumed
            );
            let first = i.poll_transmit(now, &mut out).expect("first transport");
            let valid = out[..first.len].to_vec();
            let mutated = mutate(&valid, data, truncate);
            let result = feed(&mut r, now, &mutated, &mut back);
            if mutated == valid {
                assert!(matches!(result, Inbound::Deliver { .. }), "{result:?}");
            }
            feed(&mut r, now, data, &mut back);
        }
    }
    if mode & 0x40 != 0 {
        run_timers(&mut r, now, &mut out);
    }
});
