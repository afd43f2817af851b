//! Two `Tunnel`s exchanging datagrams in memory with virtual time: the protocol end to
//! end, in microseconds, without sockets or root.
//!
//! ```text
//!   host A  100.64.0.1            host B  100.64.0.2
//!   198.18.0.1:51820  <-- wire -->  198.18.0.2:51820
//! ```
//! The "wire" is a FIFO of datagrams; tests may cut it, capture from it, or replay.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::keys::{PresharedKey, PrivateKey};

use super::*;

const BUF: usize = MAX_MESSAGE + OVERHEAD + 16;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A minimal IPv4 packet (checksums are not the tunnel's business).
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend(src);
    p.extend(dst);
    p.extend(payload);
    p
}

const A_IP: [u8; 4] = [100, 64, 0, 1];
const B_IP: [u8; 4] = [100, 64, 0, 2];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    A,
    B,
}

struct Host {
    tunnel: Tunnel,
    addr: SocketAddr,
    delivered: Vec<Vec<u8>>,
    events: Vec<Event>,
    results: Vec<Inbound>,
}

struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

struct Pair {
    a: Host,
    b: Host,
    now: Instant,
    wire: VecDeque<Datagram>,
    /// Every datagram put on the wire, for replay tests.
    log: Vec<Datagram>,
    /// Datagrams to these addresses are lost.
    cut: Vec<SocketAddr>,
}

struct Setup {
    psk_a: Option<PresharedKey>,
    psk_b: Option<PresharedKey>,
    b_knows_a: bool,
    b_has_endpoint: bool,
    keepalive_a: Option<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            psk_a: None,
            psk_b: None,
            b_knows_a: true,
            b_has_endpoint: true,
            keepalive_a: None,
        }
    }
}

impl Pair {
    fn new() -> Self {
        Self::with(Setup::default())
    }

    fn with(setup: Setup) -> Self {
        let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
        let (addr_a, addr_b) = (addr("198.18.0.1:51820"), addr("198.18.0.2:51820"));
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let config_a = TunnelConfig {
            private_key: key_a.clone(),
            peers: vec![PeerConfig {
                public_key: key_b.public_key(),
                preshared_key: setup.psk_a,
                endpoint: Some(addr_b),
                allowed_ips: vec![
                    "100.64.0.2/32".parse().unwrap(),
                    "2001:db8::2/128".parse().unwrap(),
                ],
                persistent_keepalive: setup.keepalive_a,
            }],
        };
        let a_key_at_b = if setup.b_knows_a {
            key_a.public_key()
        } else {
            PrivateKey::generate().public_key()
        };
        let config_b = TunnelConfig {
            private_key: key_b,
            peers: vec![PeerConfig {
                public_key: a_key_at_b,
                preshared_key: setup.psk_b,
                endpoint: setup.b_has_endpoint.then_some(addr_a),
                allowed_ips: vec![
                    "100.64.0.1/32".parse().unwrap(),
                    "2001:db8::1/128".parse().unwrap(),
                ],
                persistent_keepalive: None,
            }],
        };
        let host = |config, addr| Host {
            tunnel: Tunnel::new(config, now, wall),
            addr,
            delivered: Vec::new(),
            events: Vec::new(),
            results: Vec::new(),
        };
        Self {
            a: host(config_a, addr_a),
            b: host(config_b, addr_b),
            now,
            wire: VecDeque::new(),
            log: Vec::new(),
            cut: Vec::new(),
        }
    }

    fn host(&mut self, side: Side) -> &mut Host {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn put(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let at = self.now;
        self.log.push(Datagram {
            at,
            from,
            to,
            bytes: bytes.to_vec(),
        });
        if !self.cut.contains(&to) {
            self.wire.push_back(Datagram {
                at,
                from,
                to,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// A packet from `side`'s TUN.
    fn send(&mut self, side: Side, packet: &[u8]) -> Outbound {
        let now = self.now;
        let mut out = vec![0u8; BUF];
        let host = self.host(side);
        let result = host.tunnel.handle_outbound(now, packet, &mut out);
        let from = host.addr;
        if let Outbound::Send(t) = result {
            self.put(from, t.to, &out[..t.len]);
        }
        result
    }

    /// Hands one datagram to whichever host has its destination address.
    fn deliver(&mut self, d: &Datagram) -> Option<Inbound> {
        let now = self.now;
        let side = if d.to == self.a.addr {
            Side::A
        } else if d.to == self.b.addr {
            Side::B
        } else {
            return None;
        };
        let mut out = vec![0u8; BUF];
        let host = self.host(side);
        let result = host.tunnel.handle_datagram(now, d.from, &d.bytes, &mut out);
        host.results.push(result);
        let from = host.addr;
        match result {
            Inbound::Deliver { len, .. } => host.delivered.push(out[..len].to_vec()),
            Inbound::Send(t) => self.put(from, t.to, &out[..t.len]),
            _ => {}
        }
        Some(result)
    }

    /// Runs both hosts until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for side in [Side::A, Side::B] {
                let now = self.now;
                let mut out = vec![0u8; BUF];
                loop {
                    let host = self.host(side);
                    let Some(t) = host.tunnel.poll_transmit(now, &mut out) else {
                        break;
                    };
                    let from = host.addr;
                    self.put(from, t.to, &out[..t.len]);
                    moved = true;
                }
                let host = self.host(side);
                while let Some(e) = host.tunnel.poll_event() {
                    host.events.push(e);
                }
            }
            while let Some(d) = self.wire.pop_front() {
                self.deliver(&d);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("pair did not settle");
    }

    /// Moves virtual time forward by `by`, firing every deadline on the way.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..100_000 {
            let next = [self.a.tunnel.poll_timeout(), self.b.tunnel.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.a.tunnel.handle_timeout(self.now);
                    self.b.tunnel.handle_timeout(self.now);
                    self.pump();
                }
                _ => {
                    self.now = target;
                    self.pump();
                    return;
                }
            }
        }
        panic!("timers did not settle");
    }

    fn events(&self, side: Side) -> &[Event] {
        match side {
            Side::A => &self.a.events,
            Side::B => &self.b.events,
        }
    }

    fn count(&self, side: Side, pred: impl Fn(&Event) -> bool) -> usize {
        self.events(side).iter().filter(|e| pred(e)).count()
    }

    fn initiations(&self, side: Side) -> usize {
        self.count(side, |e| matches!(e, Event::HandshakeInitiated { .. }))
    }

    fn completes(&self, side: Side) -> usize {
        self.count(side, |e| matches!(e, Event::HandshakeComplete { .. }))
    }

    fn status(&self, side: Side) -> PeerStatus {
        match side {
            Side::A => self.a.tunnel.peers().next().unwrap(),
            Side::B => self.b.tunnel.peers().next().unwrap(),
        }
    }

    /// Datagrams sent by `side` whose first byte is `kind`.
    fn sent_of_type(&self, side: Side, kind: u8) -> usize {
        let from = match side {
            Side::A => self.a.addr,
            Side::B => self.b.addr,
        };
        self.log
            .iter()
            .filter(|d| d.from == from && d.bytes[0] == kind)
            .count()
    }

    /// A→B and B→A data with one packet each way, after which both have sessions.
    fn establish(&mut self) {
        assert_eq!(
            self.send(Side::A, &ipv4(A_IP, B_IP, b"hello")),
            Outbound::Queued
        );
        self.pump();
        assert_eq!(
            self.b.delivered.last().unwrap(),
            &ipv4(A_IP, B_IP, b"hello")
        );
        assert!(matches!(
            self.send(Side::B, &ipv4(B_IP, A_IP, b"back")),
            Outbound::Send(_)
        ));
        self.pump();
        assert_eq!(self.a.delivered.last().unwrap(), &ipv4(B_IP, A_IP, b"back"));
    }
}

#[test]
fn handshake_and_data_initiated_by_a() {
    let mut p = Pair::new();
    p.establish();
    assert!(p.events(Side::A).contains(&Event::HandshakeComplete {
        peer: PeerId(0),
        initiator: true
    }));
    assert!(p.events(Side::B).contains(&Event::HandshakeComplete {
        peer: PeerId(0),
        initiator: false
    }));
    assert_eq!((p.initiations(Side::A), p.initiations(Side::B)), (1, 0));
    let (a, b) = (p.status(Side::A), p.status(Side::B));
    assert!(a.has_session && b.has_session);
    assert_eq!(
        (a.tx_packets, a.rx_packets, b.tx_packets, b.rx_packets),
        (1, 1, 1, 1)
    );
    assert!(a.last_handshake.is_some() && b.last_handshake.is_some());
    assert_eq!(a.drops.total() + b.drops.total(), 0);
    assert_eq!(p.a.tunnel.drops().total() + p.b.tunnel.drops().total(), 0);
}

#[test]
fn handshake_and_data_initiated_by_b() {
    let mut p = Pair::new();
    assert_eq!(
        p.send(Side::B, &ipv4(B_IP, A_IP, b"first")),
        Outbound::Queued
    );
    p.pump();
    assert_eq!(p.a.delivered, vec![ipv4(B_IP, A_IP, b"first")]);
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"reply")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.b.delivered, vec![ipv4(A_IP, B_IP, b"reply")]);
    assert_eq!((p.initiations(Side::A), p.initiations(Side::B)), (0, 1));
}

#[test]
fn initiator_confirms_with_a_keepalive_when_nothing_is_queued() {
    // Persistent keepalive makes A handshake with an empty queue at start.
    let mut p = Pair::with(Setup {
        keepalive_a: Some(Duration::from_secs(25)),
        ..Setup::default()
    });
    p.advance(Duration::from_millis(1));
    assert_eq!(p.completes(Side::A), 1);
    assert_eq!(p.completes(Side::B), 1, "keepalive confirmed B's session");
    assert!(matches!(
        p.send(Side::B, &ipv4(B_IP, A_IP, b"x")),
        Outbound::Send(_)
    ));
}

#[test]
fn data_in_many_sizes_round_trips_exactly() {
    let mut p = Pair::new();
    p.establish();
    for len in [0usize, 1, 15, 16, 17, 100, 1380, 1400, 8000, 65_000] {
        let packet = ipv4(A_IP, B_IP, &vec![0xA5; len]);
        assert!(matches!(p.send(Side::A, &packet), Outbound::Send(_)));
        p.pump();
        assert_eq!(p.b.delivered.last().unwrap(), &packet, "payload {len}");
    }
    // IPv6 inside.
    let mut v6 = vec![0x60, 0, 0, 0, 0, 3, 17, 64];
    v6.extend(
        "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6.extend(
        "2001:db8::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6.extend([1, 2, 3]);
    assert!(matches!(p.send(Side::A, &v6), Outbound::Send(_)));
    p.pump();
    assert_eq!(p.b.delivered.last().unwrap(), &v6);
}

#[test]
fn padding_stops_at_the_mtu() {
    let mut p = Pair::new();
    p.establish();
    p.a.tunnel.set_mtu(1420);
    let mut out = vec![0u8; BUF];
    let full = ipv4(A_IP, B_IP, &[0; 1400]);
    let Outbound::Send(t) = p.a.tunnel.handle_outbound(p.now, &full, &mut out) else {
        panic!()
    };
    assert_eq!(
        t.len,
        1420 + OVERHEAD,
        "1420 is not a multiple of 16 but is the cap"
    );
    let small = ipv4(A_IP, B_IP, &[0; 1]);
    let Outbound::Send(t) = p.a.tunnel.handle_outbound(p.now, &small, &mut out) else {
        panic!()
    };
    assert_eq!(t.len, 32 + OVERHEAD, "21 bytes pad to 32");
}

#[test]
fn simultaneous_initiation_converges() {
    let mut p = Pair::new();
    assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"a0")), Outbound::Queued);
    assert_eq!(p.send(Side::B, &ipv4(B_IP, A_IP, b"b0")), Outbound::Queued);
    p.pump();
    assert_eq!(p.b.delivered, vec![ipv4(A_IP, B_IP, b"a0")]);
    assert_eq!(p.a.delivered, vec![ipv4(B_IP, A_IP, b"b0")]);
    for round in 0..20u8 {
        assert!(matches!(
            p.send(Side::A, &ipv4(A_IP, B_IP, &[round])),
            Outbound::Send(_)
        ));
        assert!(matches!(
            p.send(Side::B, &ipv4(B_IP, A_IP, &[round])),
            Outbound::Send(_)
        ));
        p.pump();
        p.advance(Duration::from_secs(10));
    }
    assert_eq!(p.a.delivered.len(), 21);
    assert_eq!(p.b.delivered.len(), 21);
    // Over 200 s both sides rekeyed at least once and nothing was lost on the way.
    assert!(p.completes(Side::A) >= 2 && p.completes(Side::B) >= 2);
    let (a, b) = (p.status(Side::A), p.status(Side::B));
    for reason in [
        DropReason::DecryptFailed,
        DropReason::Replay,
        DropReason::Expired,
    ] {
        assert_eq!(a.drops.get(reason) + b.drops.get(reason), 0, "{reason}");
    }
    // No index leaks: at most three sessions and one handshake per side.
    assert!(p.a.tunnel.live_indices() <= 4 && p.b.tunnel.live_indices() <= 4);
}

#[test]
fn psk_on_both_sides_works() {
    let psk = PresharedKey::generate();
    let mut p = Pair::with(Setup {
        psk_a: Some(psk.clone()),
        psk_b: Some(psk),
        ..Setup::default()
    });
    p.establish();
}

#[test]
fn wrong_psk_fails_at_the_initiator() {
    let mut p = Pair::with(Setup {
        psk_a: Some(PresharedKey::generate()),
        psk_b: Some(PresharedKey::generate()),
        ..Setup::default()
    });
    assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"x")), Outbound::Queued);
    p.pump();
    assert_eq!(p.sent_of_type(Side::B, 2), 1, "B cannot tell and responds");
    assert_eq!(p.status(Side::A).drops.get(DropReason::DecryptFailed), 1);
    assert!(!p.status(Side::A).has_session);
    assert!(p.b.delivered.is_empty());
    assert_eq!(p.completes(Side::A) + p.completes(Side::B), 0);
}

#[test]
fn unknown_static_key_gets_no_session() {
    let mut p = Pair::with(Setup {
        b_knows_a: false,
        ..Setup::default()
    });
    assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"x")), Outbound::Queued);
    p.pump();
    assert_eq!(p.b.results, vec![Inbound::Dropped(DropReason::UnknownPeer)]);
    assert_eq!(p.b.tunnel.drops().get(DropReason::UnknownPeer), 1);
    assert_eq!(p.sent_of_type(Side::B, 2), 0);
    assert_eq!(p.b.tunnel.live_indices(), 0);
}

/// A's first initiation, taken off the wire before B sees it.
fn captured_initiation(p: &mut Pair) -> Vec<u8> {
    p.cut.push(p.b.addr);
    assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"x")), Outbound::Queued);
    p.pump();
    p.cut.clear();
    let init = p.log.iter().find(|d| d.bytes[0] == 1).unwrap();
    init.bytes.clone()
}

#[test]
fn bad_mac1_is_dropped_before_any_dh() {
    let mut p = Pair::new();
    let init = captured_initiation(&mut p);
    let mut out = vec![0u8; BUF];
    let from = p.a.addr;
    for byte in [0usize, 8, 50, 115, 116, 131] {
        let mut bad = init.clone();
        bad[byte] ^= 0x01;
        let result = p.b.tunnel.handle_datagram(p.now, from, &bad, &mut out);
        let expected = if byte == 0 {
            DropReason::UnknownType
        } else {
            DropReason::BadMac
        };
        assert_eq!(result, Inbound::Dropped(expected), "byte {byte}");
    }
    // mac2 is not covered by mac1: a flipped mac2 (not under load) is accepted.
    let mut mac2 = init.clone();
    mac2[140] ^= 1;
    assert!(matches!(
        p.b.tunnel.handle_datagram(p.now, from, &mac2, &mut out),
        Inbound::Send(_)
    ));
    // Byte 50 sits in the encrypted static key: had any DH run before the mac1 check, that
    // flip would have failed as `DecryptFailed`, not `BadMac`. What the rejection costs is
    // measured by `cargo bench --bench data_path -- handshake/bad_mac1`, not here.
}

#[test]
fn an_initiation_with_low_order_keys_is_dropped_and_counted() {
    let mut p = Pair::new();
    let responder = *p.b.tunnel.public_key();
    let mut init = super::handshake::tests::low_order_initiation(&responder);
    let mut msg = crate::wire::Initiation::new_unchecked(&mut init[..]);
    super::cookie::CookieJar::new(&responder).seal(p.now, &mut msg);
    let mut out = vec![0u8; BUF];
    let result = p.b.tunnel.handle_datagram(p.now, p.a.addr, &init, &mut out);
    assert_eq!(result, Inbound::Dropped(DropReason::LowOrderKey));
    assert_eq!(p.b.tunnel.drops().get(DropReason::LowOrderKey), 1);
}

#[test]
fn replayed_initiation_is_stale() {
    let mut p = Pair::new();
    let init = captured_initiation(&mut p);
    let from = p.a.addr;
    let mut out = vec![0u8; BUF];
    assert!(matches!(
        p.b.tunnel.handle_datagram(p.now, from, &init, &mut out),
        Inbound::Send(_)
    ));
    assert_eq!(
        p.b.tunnel.handle_datagram(p.now, from, &init, &mut out),
        Inbound::Dropped(DropReason::StaleTimestamp)
    );
    assert_eq!(p.status(Side::B).drops.get(DropReason::StaleTimestamp), 1);
}

#[test]
fn replayed_transport_is_refused() {
    let mut p = Pair::new();
    p.establish();
    let data = p
        .log
        .iter()
        .rev()
        .find(|d| d.bytes[0] == 4 && d.from == p.b.addr)
        .unwrap();
    let (from, bytes) = (data.from, data.bytes.clone());
    let mut out = vec![0u8; BUF];
    assert_eq!(
        p.a.tunnel.handle_datagram(p.now, from, &bytes, &mut out),
        Inbound::Dropped(DropReason::Replay)
    );
    // A forged packet with a fresh counter fails authentication, and does not move the
    // window: the genuine one with that counter still gets through.
    let mut fresh = bytes.clone();
    fresh[8..16].copy_from_slice(&5000u64.to_le_bytes());
    assert_eq!(
        p.a.tunnel.handle_datagram(p.now, from, &fresh, &mut out),
        Inbound::Dropped(DropReason::DecryptFailed)
    );
    assert!(matches!(
        p.send(Side::B, &ipv4(B_IP, A_IP, b"next")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.a.delivered.last().unwrap(), &ipv4(B_IP, A_IP, b"next"));
}

#[test]
fn out_of_order_transport_within_the_window_is_delivered() {
    let mut p = Pair::new();
    p.establish();
    p.cut.push(p.b.addr);
    for i in 0..5u8 {
        p.send(Side::A, &ipv4(A_IP, B_IP, &[i]));
    }
    p.cut.clear();
    let mut held: Vec<_> = p
        .log
        .iter()
        .rev()
        .take(5)
        .map(|d| (d.from, d.to, d.bytes.clone()))
        .collect();
    held.swap(0, 3);
    for (from, to, bytes) in held {
        let at = p.now;
        assert!(matches!(
            p.deliver(&Datagram {
                at,
                from,
                to,
                bytes
            }),
            Some(Inbound::Deliver { .. })
        ));
    }
}

#[test]
fn retransmit_after_rekey_timeout() {
    let mut p = Pair::new();
    p.cut.push(p.b.addr);
    assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"x")), Outbound::Queued);
    p.pump();
    assert_eq!(p.sent_of_type(Side::A, 1), 1);
    p.advance(REKEY_TIMEOUT - Duration::from_millis(1));
    assert_eq!(p.sent_of_type(Side::A, 1), 1);
    p.advance(REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(2));
    assert_eq!(p.sent_of_type(Side::A, 1), 2);
    assert!(p.events(Side::A).contains(&Event::HandshakeInitiated {
        peer: PeerId(0),
        retransmit: true
    }));
    // More outbound packets do not send more initiations.
    p.send(Side::A, &ipv4(A_IP, B_IP, b"y"));
    p.pump();
    assert_eq!(p.sent_of_type(Side::A, 1), 2);
    // The link comes back: the next retransmission gets through and the queue drains.
    p.cut.clear();
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(
        p.b.delivered,
        vec![ipv4(A_IP, B_IP, b"x"), ipv4(A_IP, B_IP, b"y")]
    );
}

#[test]
fn initiations_are_spaced_by_rekey_timeout() {
    // Through retransmissions, a give-up and a new attempt that packets start at once,
    // two initiations to one peer are never closer than 5 s.
    let mut p = Pair::new();
    p.cut.push(p.b.addr);
    let start = p.now;
    while p.now < start + Duration::from_secs(200) {
        p.send(Side::A, &ipv4(A_IP, B_IP, b"x"));
        p.advance(Duration::from_millis(100));
    }
    let from = p.a.addr;
    let times: Vec<Instant> = p
        .log
        .iter()
        .filter(|d| d.from == from && d.bytes[0] == 1)
        .map(|d| d.at)
        .collect();
    assert!(times.len() >= 36, "{} initiations", times.len());
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= REKEY_TIMEOUT,
            "{:?}",
            pair[1] - pair[0]
        );
    }
    assert_eq!(
        p.count(Side::A, |e| matches!(e, Event::HandshakeGaveUp { .. })),
        2
    );
}

#[test]
fn handshake_gives_up_after_rekey_attempt_time() {
    let mut p = Pair::new();
    p.cut.push(p.b.addr);
    p.send(Side::A, &ipv4(A_IP, B_IP, b"x"));
    p.send(Side::A, &ipv4(A_IP, B_IP, b"y"));
    p.pump();
    p.advance(REKEY_ATTEMPT_TIME - Duration::from_millis(1));
    assert_eq!(
        p.count(Side::A, |e| matches!(e, Event::HandshakeGaveUp { .. })),
        0
    );
    assert_eq!(p.status(Side::A).queued, 2);
    p.advance(Duration::from_millis(2));
    assert!(p.events(Side::A).contains(&Event::HandshakeGaveUp {
        peer: PeerId(0),
        dropped_packets: 2
    }));
    let status = p.status(Side::A);
    assert_eq!(status.queued, 0);
    assert_eq!(status.drops.get(DropReason::HandshakeTimeout), 2);
    // 90 s at 5 s + jitter: 17 or 18 initiations, then silence.
    let sent = p.sent_of_type(Side::A, 1);
    assert!((17..=18).contains(&sent), "{sent} initiations");
    p.advance(Duration::from_secs(60));
    assert_eq!(p.sent_of_type(Side::A, 1), sent);
    assert_eq!(p.a.tunnel.poll_timeout(), None);
    assert_eq!(p.a.tunnel.live_indices(), 0);
}

#[test]
fn rekey_after_time_when_sending() {
    let mut p = Pair::new();
    p.establish();
    p.advance(REKEY_AFTER_TIME - Duration::from_secs(1));
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"old")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.initiations(Side::A), 1, "not yet");
    p.advance(Duration::from_secs(2));
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"due")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.initiations(Side::A), 2);
    assert_eq!(p.completes(Side::A), 2);
    // The responder of the first session does not rekey on age when sending.
    assert_eq!(p.initiations(Side::B), 0);
    assert!(matches!(
        p.send(Side::B, &ipv4(B_IP, A_IP, b"new")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.a.delivered.last().unwrap(), &ipv4(B_IP, A_IP, b"new"));
}

#[test]
fn a_shortened_rekey_time_rekeys_that_soon() {
    let mut p = Pair::new();
    let after = Duration::from_secs(10);
    p.a.tunnel.set_rekey_after_time(after);
    p.establish();
    p.advance(after - Duration::from_secs(1));
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"old")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.initiations(Side::A), 1, "not yet");
    p.advance(Duration::from_secs(2));
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"due")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(p.initiations(Side::A), 2);
    assert_eq!(p.completes(Side::A), 2);
}

#[test]
fn rekey_on_receive_near_reject_time() {
    let mut p = Pair::new();
    p.establish();
    // A (the initiator) stays quiet; only B sends. (Any send by A after 120 s, a
    // keepalive included, would rekey on send, as in WireGuard.)
    p.advance(REKEY_ON_RECEIVE_AGE - Duration::from_secs(1));
    p.send(Side::B, &ipv4(B_IP, A_IP, b"tick"));
    p.pump();
    assert_eq!(p.initiations(Side::A), 1);
    p.advance(Duration::from_secs(1));
    p.send(Side::B, &ipv4(B_IP, A_IP, b"tick"));
    p.pump();
    assert_eq!(
        p.initiations(Side::A),
        2,
        "rekeyed on receive, before any keepalive"
    );
    assert_eq!(p.completes(Side::A), 2);
    // Only once per session.
    p.send(Side::B, &ipv4(B_IP, A_IP, b"tick"));
    p.pump();
    assert_eq!(p.initiations(Side::A), 2);
}

#[test]
fn passive_keepalive_after_receiving_data() {
    let mut p = Pair::new();
    p.establish();
    let base = p.sent_of_type(Side::B, 4);
    p.send(Side::A, &ipv4(A_IP, B_IP, b"one-way"));
    p.pump();
    p.advance(KEEPALIVE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(p.sent_of_type(Side::B, 4), base);
    p.advance(Duration::from_millis(2));
    assert_eq!(p.sent_of_type(Side::B, 4), base + 1, "one keepalive");
    let last = p.a.results.last().unwrap();
    assert_eq!(*last, Inbound::Consumed);
    p.advance(Duration::from_secs(60));
    assert_eq!(p.sent_of_type(Side::B, 4), base + 1, "and only one");
}

#[test]
fn persistent_keepalive_repeats() {
    let interval = Duration::from_secs(25);
    let mut p = Pair::with(Setup {
        keepalive_a: Some(interval),
        ..Setup::default()
    });
    p.advance(Duration::from_millis(1));
    let base = p.sent_of_type(Side::A, 4);
    p.advance(Duration::from_secs(100));
    assert_eq!(p.sent_of_type(Side::A, 4) - base, 4);
    assert!(p.a.tunnel.poll_timeout().is_some());
}

#[test]
fn new_handshake_when_the_peer_goes_quiet() {
    let mut p = Pair::new();
    p.establish();
    p.advance(Duration::from_secs(30));
    p.cut.push(p.a.addr);
    p.send(Side::A, &ipv4(A_IP, B_IP, b"anyone?"));
    p.pump();
    p.advance(NEW_HANDSHAKE_AFTER - Duration::from_millis(1));
    assert_eq!(p.initiations(Side::A), 1);
    p.advance(Duration::from_millis(2));
    assert_eq!(p.initiations(Side::A), 2);
}

#[test]
fn sessions_are_rejected_and_erased_after_reject_time() {
    let mut p = Pair::new();
    p.establish();
    let old = p
        .log
        .iter()
        .rev()
        .find(|d| d.from == p.b.addr && d.bytes[0] == 4)
        .unwrap();
    let (from, mut old_bytes) = (old.from, old.bytes.clone());
    old_bytes[8..16].copy_from_slice(&99u64.to_le_bytes());
    p.advance(REJECT_AFTER_TIME + Duration::from_secs(1));
    assert!(
        p.events(Side::A)
            .contains(&Event::SessionExpired { peer: PeerId(0) })
    );
    assert!(!p.status(Side::A).has_session);
    assert_eq!(p.a.tunnel.live_indices(), 0, "keys and indices gone");
    let mut out = vec![0u8; BUF];
    assert_eq!(
        p.a.tunnel
            .handle_datagram(p.now, from, &old_bytes, &mut out),
        Inbound::Dropped(DropReason::UnknownIndex)
    );
    assert_eq!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"again")),
        Outbound::Queued
    );
    p.pump();
    assert_eq!(p.b.delivered.last().unwrap(), &ipv4(A_IP, B_IP, b"again"));
}

/// A pair whose B is under load, after A's first initiation (and B's cookie reply).
fn first_try_under_load() -> Pair {
    let mut p = Pair::new();
    p.b.tunnel.set_under_load_threshold(0);
    assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"x")), Outbound::Queued);
    p.pump();
    p
}

#[test]
fn cookie_reply_under_load_then_mac2_succeeds() {
    let mut p = first_try_under_load();
    assert_eq!(
        p.sent_of_type(Side::B, 3),
        1,
        "cookie reply instead of a response"
    );
    assert_eq!(p.sent_of_type(Side::B, 2), 0);
    assert_eq!(p.b.tunnel.drops().get(DropReason::UnderLoad), 1);
    assert!(
        p.events(Side::A)
            .contains(&Event::CookieReceived { peer: PeerId(0) })
    );
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(
        p.sent_of_type(Side::B, 2),
        1,
        "the retry carried a valid mac2"
    );
    assert_eq!(p.b.delivered, vec![ipv4(A_IP, B_IP, b"x")]);
    assert_eq!(p.b.tunnel.drops().get(DropReason::UnderLoad), 1);
}

#[test]
fn under_load_a_source_with_a_valid_cookie_gets_only_its_budget() {
    let mut p = first_try_under_load();
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(p.b.delivered, vec![ipv4(A_IP, B_IP, b"x")]);
    // The retry carried a valid mac2 and spent one message of A's burst. Replayed from
    // A's address, it keeps passing the cookie check: the budget is what stops it
    // before any DH.
    let retry = p
        .log
        .iter()
        .rev()
        .find(|d| d.from == p.a.addr && d.bytes[0] == 1)
        .map(|d| Datagram {
            at: d.at,
            from: d.from,
            to: d.to,
            bytes: d.bytes.clone(),
        })
        .unwrap();
    let flood = 10;
    for _ in 0..flood {
        p.deliver(&retry);
    }
    let results = &p.b.results[p.b.results.len() - flood as usize..];
    let count = |reason| {
        results
            .iter()
            .filter(|r| **r == Inbound::Dropped(reason))
            .count() as u64
    };
    let limited = count(DropReason::RateLimited);
    assert_eq!(p.b.tunnel.drops().get(DropReason::RateLimited), limited);
    // Those that got through the budget reached the DH and were refused as replays.
    let past_budget = count(DropReason::StaleTimestamp) + count(DropReason::TooFrequent);
    assert_eq!(limited + past_budget, flood, "{results:?}");
    // The retry spent one message; the time since may have earned one back.
    let burst = u64::from(super::ratelimit::BURST);
    assert!(
        (burst - 1..=burst).contains(&past_budget),
        "{past_budget} got past the budget"
    );
}

#[test]
fn cookie_from_another_address_does_not_help() {
    let mut p = first_try_under_load();
    // A moves before retrying: its cookie was for the old address.
    p.a.addr = addr("198.18.0.7:40000");
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(p.sent_of_type(Side::B, 2), 0);
    assert_eq!(p.b.tunnel.drops().get(DropReason::UnderLoad), 2);
}

/// Sources nothing can be sent to: port 0 (the kernel answers EINVAL, and quinn-udp then
/// turns segmentation offload off for the whole socket), the unspecified address,
/// multicast and broadcast, IPv4-mapped ones too.
const UNUSABLE_SOURCES: [&str; 8] = [
    "198.18.5.5:0",
    "[2001:db8::5]:0",
    "0.0.0.0:51820",
    "[::]:51820",
    "224.0.0.1:51820",
    "[ff02::1]:51820",
    "255.255.255.255:51820",
    "[::ffff:224.0.0.1]:51820",
];

#[test]
fn an_authenticated_packet_from_an_unusable_source_never_becomes_the_endpoint() {
    for source in UNUSABLE_SOURCES {
        let mut p = Pair::new();
        p.establish();
        let changes = |p: &Pair| p.count(Side::B, |e| matches!(e, Event::EndpointChanged { .. }));
        let (changed, delivered) = (changes(&p), p.b.delivered.len());
        p.a.addr = addr(source);
        p.send(Side::A, &ipv4(A_IP, B_IP, b"from nowhere"));
        p.pump();
        assert_eq!(changes(&p), changed, "{source}: {:?}", p.events(Side::B));
        assert_eq!(p.status(Side::B).endpoint, Some(addr("198.18.0.1:51820")));
        assert_eq!(p.b.delivered.len(), delivered, "{source}: dropped");
        let counted = p.b.tunnel.drops().get(DropReason::UnusableSource);
        assert_eq!(counted, 1, "{source}");
    }
}

#[test]
fn an_initiation_from_an_unusable_source_gets_no_answer() {
    for source in UNUSABLE_SOURCES {
        let mut p = Pair::with(Setup {
            b_has_endpoint: false,
            ..Setup::default()
        });
        p.a.addr = addr(source);
        assert_eq!(p.send(Side::A, &ipv4(A_IP, B_IP, b"x")), Outbound::Queued);
        p.pump();
        assert_eq!(p.sent_of_type(Side::B, 2), 0, "{source}: answered");
        assert_eq!(p.status(Side::B).endpoint, None, "{source}");
        assert!(
            p.b.tunnel.drops().get(DropReason::UnusableSource) >= 1,
            "{source}"
        );
    }
}

#[test]
fn endpoint_roams_to_the_latest_authenticated_source() {
    let mut p = Pair::new();
    p.establish();
    let moved = addr("198.18.5.5:6000");
    p.a.addr = moved;
    p.send(Side::A, &ipv4(A_IP, B_IP, b"from elsewhere"));
    p.pump();
    assert!(p.events(Side::B).contains(&Event::EndpointChanged {
        peer: PeerId(0),
        old: Some(addr("198.18.0.1:51820")),
        new: moved
    }));
    assert_eq!(p.status(Side::B).endpoint, Some(moved));
    let Outbound::Send(t) = p.send(Side::B, &ipv4(B_IP, A_IP, b"follow")) else {
        panic!()
    };
    assert_eq!(t.to, moved);
    // An unauthenticated packet from a third address does not move it.
    let mut out = vec![0u8; BUF];
    let junk = [
        4u8, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        9, 9,
    ];
    p.b.tunnel
        .handle_datagram(p.now, addr("198.18.9.9:1"), &junk, &mut out);
    assert_eq!(p.status(Side::B).endpoint, Some(moved));
}

#[test]
fn responder_learns_the_endpoint_from_the_handshake() {
    let mut p = Pair::with(Setup {
        b_has_endpoint: false,
        ..Setup::default()
    });
    assert_eq!(
        p.send(Side::B, &ipv4(B_IP, A_IP, b"x")),
        Outbound::Dropped(DropReason::NoEndpoint)
    );
    p.establish();
    assert_eq!(p.status(Side::B).endpoint, Some(p.a.addr));
}

#[test]
fn source_not_allowed_and_no_route() {
    let mut p = Pair::new();
    p.establish();
    let spoofed = ipv4([100, 64, 0, 99], B_IP, b"spoof");
    assert!(matches!(p.send(Side::A, &spoofed), Outbound::Send(_)));
    p.pump();
    assert_eq!(
        *p.b.results.last().unwrap(),
        Inbound::Dropped(DropReason::SourceNotAllowed)
    );
    assert_eq!(p.status(Side::B).drops.get(DropReason::SourceNotAllowed), 1);
    assert_eq!(
        p.send(Side::A, &ipv4(A_IP, [10, 9, 9, 9], b"")),
        Outbound::Dropped(DropReason::NoRoute)
    );
    assert_eq!(
        p.send(Side::A, b"\x00garbage"),
        Outbound::Dropped(DropReason::NotIp)
    );
    assert_eq!(p.a.tunnel.drops().get(DropReason::NoRoute), 1);
    assert_eq!(p.a.tunnel.drops().get(DropReason::NotIp), 1);
}

#[test]
fn queue_is_bounded() {
    let mut p = Pair::new();
    p.cut.push(p.b.addr);
    for i in 0..(MAX_QUEUED + 10) {
        let packet = ipv4(A_IP, B_IP, &(i as u32).to_be_bytes());
        assert_eq!(p.send(Side::A, &packet), Outbound::Queued);
    }
    assert_eq!(p.status(Side::A).queued, MAX_QUEUED);
    assert_eq!(p.status(Side::A).drops.get(DropReason::QueueFull), 10);
    p.cut.clear();
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(p.b.delivered.len(), MAX_QUEUED);
    assert_eq!(
        p.b.delivered[0],
        ipv4(A_IP, B_IP, &10u32.to_be_bytes()),
        "oldest dropped first"
    );
}

#[test]
fn transport_to_unknown_index_and_before_any_session() {
    let mut p = Pair::new();
    let mut out = vec![0u8; BUF];
    let mut msg = vec![4u8, 0, 0, 0];
    msg.extend([0u8; 60]);
    assert_eq!(
        p.b.tunnel.handle_datagram(p.now, p.a.addr, &msg, &mut out),
        Inbound::Dropped(DropReason::UnknownIndex)
    );
}

#[test]
fn truncated_and_oversized_messages_are_malformed() {
    let mut p = Pair::new();
    let init = captured_initiation(&mut p);
    let mut out = vec![0u8; BUF];
    let from = p.a.addr;
    for (kind, len) in [(1u8, 148usize), (2, 92), (3, 64)] {
        for n in (0..len).chain([len + 1, len + 16, 1500, MAX_MESSAGE]) {
            let mut msg = vec![0u8; n];
            if n > 0 {
                msg[0] = kind;
            }
            if kind == 1 && n < 148 {
                msg[..n].copy_from_slice(&init[..n]);
            }
            let result = p.b.tunnel.handle_datagram(p.now, from, &msg, &mut out);
            assert_eq!(
                result,
                Inbound::Dropped(DropReason::Malformed),
                "type {kind} len {n}"
            );
        }
    }
    for n in 0..32 {
        let mut msg = vec![0u8; n];
        if n > 0 {
            msg[0] = 4;
        }
        let result = p.b.tunnel.handle_datagram(p.now, from, &msg, &mut out);
        assert_eq!(
            result,
            Inbound::Dropped(DropReason::Malformed),
            "transport len {n}"
        );
    }
    let huge = vec![4u8; MAX_MESSAGE + 1];
    assert_eq!(
        p.b.tunnel.handle_datagram(p.now, from, &huge, &mut out),
        Inbound::Dropped(DropReason::Malformed)
    );
    assert_eq!(
        p.b.tunnel
            .handle_datagram(p.now, from, &[9, 0, 0, 0, 1], &mut out),
        Inbound::Dropped(DropReason::UnknownType)
    );
    let too_big = ipv4(A_IP, B_IP, &[0; 10]);
    let mut packet = too_big.clone();
    packet.resize(MAX_MESSAGE + 1, 0);
    assert_eq!(
        p.a.tunnel.handle_outbound(p.now, &packet, &mut out),
        Outbound::Dropped(DropReason::TooLarge)
    );
}

#[test]
fn small_output_buffers_drop_instead_of_panicking() {
    let mut p = Pair::new();
    p.establish();
    let packet = ipv4(A_IP, B_IP, &[0; 100]);
    let mut small = vec![0u8; 100];
    assert_eq!(
        p.a.tunnel.handle_outbound(p.now, &packet, &mut small),
        Outbound::Dropped(DropReason::BufferTooSmall)
    );
    let mut out = vec![0u8; BUF];
    let Outbound::Send(t) = p.a.tunnel.handle_outbound(p.now, &packet, &mut out) else {
        panic!()
    };
    assert_eq!(
        p.b.tunnel
            .handle_datagram(p.now, p.a.addr, &out[..t.len], &mut small),
        Inbound::Dropped(DropReason::BufferTooSmall)
    );
    assert!(p.a.tunnel.poll_transmit(p.now, &mut small[..10]).is_none());

    // B's own peer's initiation (valid mac1, a response due) with no room for the response:
    // dropped as such, and the index it would have used is not left allocated.
    let mut q = Pair::new();
    let init = captured_initiation(&mut q);
    let live = q.b.tunnel.live_indices();
    let mut tiny = [0u8; 10];
    assert_eq!(
        q.b.tunnel
            .handle_datagram(q.now, q.a.addr, &init, &mut tiny),
        Inbound::Dropped(DropReason::BufferTooSmall)
    );
    assert_eq!(q.b.tunnel.live_indices(), live);
    // With room, the very same initiation is answered: it was refused for its buffer alone.
    assert!(matches!(
        q.b.tunnel.handle_datagram(q.now, q.a.addr, &init, &mut out),
        Inbound::Send(_)
    ));
}

/// A small deterministic generator, so the noise below is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_datagrams_never_panic() {
    let mut p = Pair::new();
    p.establish();
    let samples: Vec<Vec<u8>> = p.log.iter().map(|d| d.bytes.clone()).collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out = vec![0u8; BUF];
    let from = p.a.addr;
    for i in 0..20_000 {
        let msg = if i % 2 == 0 {
            let len = (rng.next() % 300) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = m.first_mut() {
                *first = (rng.next() % 5) as u8;
            }
            for b in m.iter_mut().skip(1).take(3) {
                *b = 0;
            }
            m
        } else {
            let mut m = samples[(rng.next() as usize) % samples.len()].clone();
            let flips = 1 + rng.next() % 3;
            for _ in 0..flips {
                let at = (rng.next() as usize) % m.len();
                m[at] ^= 1 << (rng.next() % 8);
            }
            if rng.next() & 3 == 0 {
                m.truncate((rng.next() as usize) % m.len());
            }
            m
        };
        let result = p.b.tunnel.handle_datagram(p.now, from, &msg, &mut out);
        assert!(
            !matches!(result, Inbound::Deliver { .. }),
            "forged delivery: {msg:?}"
        );
    }
    // The real session survived the noise.
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"still here")),
        Outbound::Send(_)
    ));
    p.pump();
    assert_eq!(
        p.b.delivered.last().unwrap(),
        &ipv4(A_IP, B_IP, b"still here")
    );
}

#[test]
fn timestamps_follow_the_anchored_wall_clock() {
    // Two tunnels built at different wall times: the later one's initiation is newer,
    // so a restarted peer is accepted while a replay of the old one is not.
    let key_a = PrivateKey::generate();
    let key_b = PrivateKey::generate();
    let now = Instant::now();
    let make = |wall: SystemTime| {
        Tunnel::new(
            TunnelConfig {
                private_key: key_a.clone(),
                peers: vec![PeerConfig {
                    public_key: key_b.public_key(),
                    preshared_key: None,
                    endpoint: Some(addr("198.18.0.2:1")),
                    allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
                    persistent_keepalive: None,
                }],
            },
            now,
            wall,
        )
    };
    let mut responder = Tunnel::new(
        TunnelConfig {
            private_key: key_b.clone(),
            peers: vec![PeerConfig {
                public_key: key_a.public_key(),
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec![],
                persistent_keepalive: None,
            }],
        },
        now,
        UNIX_EPOCH,
    );
    let initiation = |t: &mut Tunnel| {
        let mut out = vec![0u8; BUF];
        assert_eq!(
            t.handle_outbound(now, &ipv4(A_IP, B_IP, b""), &mut out),
            Outbound::Queued
        );
        let tx = t.poll_transmit(now, &mut out).unwrap();
        out.truncate(tx.len);
        out
    };
    let base = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let old = initiation(&mut make(base));
    let new = initiation(&mut make(base + Duration::from_secs(1)));
    let newer = initiation(&mut make(base + Duration::from_secs(2)));
    let mut out = vec![0u8; BUF];
    let from = addr("198.18.0.1:1");
    assert!(matches!(
        responder.handle_datagram(now, from, &new, &mut out),
        Inbound::Send(_)
    ));
    assert_eq!(
        responder.handle_datagram(now, from, &old, &mut out),
        Inbound::Dropped(DropReason::StaleTimestamp)
    );
    // A newer one is still refused within 20 ms of the last accepted (flood guard).
    let soon = now + MIN_INITIATION_INTERVAL - Duration::from_millis(1);
    assert_eq!(
        responder.handle_datagram(soon, from, &newer, &mut out),
        Inbound::Dropped(DropReason::TooFrequent)
    );
    let later = now + MIN_INITIATION_INTERVAL;
    assert!(matches!(
        responder.handle_datagram(later, from, &newer, &mut out),
        Inbound::Send(_)
    ));
}

#[test]
fn message_limits_rekey_then_reject() {
    let mut p = Pair::new();
    p.establish();
    let session = p.a.tunnel.peer_mut(PeerId(0)).current_mut().unwrap();
    session.set_send_counter(REKEY_AFTER_MESSAGES);
    assert!(matches!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"many")),
        Outbound::Send(_)
    ));
    p.pump();
    // The handshake just before was at the same instant: the rekey waits 5 s.
    assert_eq!(p.initiations(Side::A), 1);
    p.advance(REKEY_TIMEOUT);
    assert_eq!(p.initiations(Side::A), 2, "rekey after 2^60 messages");
    let session = p.a.tunnel.peer_mut(PeerId(0)).current_mut().unwrap();
    session.set_send_counter(REJECT_AFTER_MESSAGES);
    assert_eq!(
        p.send(Side::A, &ipv4(A_IP, B_IP, b"full")),
        Outbound::Queued
    );
    p.advance(REKEY_TIMEOUT);
    assert_eq!(p.initiations(Side::A), 3);
    assert_eq!(p.b.delivered.last().unwrap(), &ipv4(A_IP, B_IP, b"full"));
}

#[test]
fn an_initiation_that_does_not_fit_is_retried_not_spun() {
    let mut p = Pair::new();
    let mut tiny = [0u8; 100];
    let packet = ipv4(A_IP, B_IP, b"x");
    assert_eq!(
        p.a.tunnel.handle_outbound(p.now, &packet, &mut tiny),
        Outbound::Queued
    );
    assert_eq!(p.a.tunnel.poll_transmit(p.now, &mut tiny), None);
    assert_eq!(p.status(Side::A).drops.get(DropReason::BufferTooSmall), 1);
    assert!(p.a.tunnel.poll_timeout().unwrap() >= p.now + REKEY_TIMEOUT);
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(p.b.delivered, vec![packet]);
}
