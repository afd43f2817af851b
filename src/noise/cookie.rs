//! WireGuard's denial-of-service defence (whitepaper 5.3 and 5.4.7): mac1 on every
//! handshake message (proves the sender knows our public key, checked before any DH),
//! and under load mac2, a MAC keyed with a cookie that binds the sender's address and is
//! only learned from a cookie reply. Owns the MAC keys, the rotating cookie secret, the
//! load estimate and each peer's stored cookie; never touches sessions.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{Digest as _, KeyInit, Mac as _};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rand::rngs::OsRng;

use crate::keys::{KEY_LEN, PublicKey};
use crate::wire::{
    COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, CookieReply, HandshakeMessage, HandshakeMessageMut,
    MAC_LEN, TAG_LEN,
};

/// Label hashed with the receiver's public key to make the mac1 key (whitepaper 5.4.4).
const LABEL_MAC1: &[u8; 8] = b"mac1----";
/// Label hashed with the responder's public key to make the cookie encryption key.
const LABEL_COOKIE: &[u8; 8] = b"cookie--";
/// The responder's cookie secret changes this often, and a stored cookie is used no
/// longer than this (whitepaper 5.4.7, wireguard-go `CookieRefreshTime`).
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);
/// Above this many handshake messages in one second, handshakes need a valid mac2.
/// boringtun uses the same figure; a tunnel between two hosts sees one every two minutes.
pub const UNDER_LOAD_HANDSHAKES_PER_SECOND: u32 = 100;
/// Once load was detected, keep asking for cookies this long (wireguard-go `UnderLoadAfterTime`).
const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);

/// A 16-byte MAC: mac1, mac2, or a cookie.
pub type Mac = [u8; MAC_LEN];

/// BLAKE2s-256(label || key), WireGuard's HASH.
fn hash(label: &[u8], key: &[u8]) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(label)
        .chain_update(key)
        .finalize()
        .into()
}

/// Keyed BLAKE2s with 16-byte output, WireGuard's MAC. `key` is 16 or 32 bytes.
pub fn mac(key: &[u8], data: &[&[u8]]) -> Mac {
    // Keys here are 16 or 32 bytes, within BLAKE2s's 32-byte limit, so this cannot fail.
    let Ok(mut state) = <Blake2sMac<U16> as KeyInit>::new_from_slice(key) else {
        return [0; MAC_LEN];
    };
    for part in data {
        state.update(part);
    }
    state.finalize().into_bytes().into()
}

/// Compares MACs without an early exit, so timing does not reveal how much matched.
fn mac_eq(a: &Mac, b: &Mac) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The two keys derived from one static public key.
#[derive(Clone)]
pub struct MacKeys {
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl MacKeys {
    /// Keys for messages sent to (mac1) or cookies sent by (cookie) the owner of `key`.
    pub fn new(key: &PublicKey) -> Self {
        Self {
            mac1: hash(LABEL_MAC1, key.as_bytes()),
            cookie: hash(LABEL_COOKIE, key.as_bytes()),
        }
    }

    /// mac1 of a message addressed to the owner of these keys.
    pub fn mac1(&self, msg: &impl HandshakeMessage) -> Mac {
        mac(&self.mac1, &[msg.mac1_input()])
    }
}

fn address_bytes(addr: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let len = match addr.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
    (out, len + 2)
}

/// The responder side: checks mac1 and mac2 of incoming handshake messages and writes
/// cookie replies. One per interface, keyed by our own public key.
pub struct CookieChecker {
    keys: MacKeys,
    secret: [u8; KEY_LEN],
    secret_born: Option<Instant>,
}

impl CookieChecker {
    /// A checker for messages addressed to `local`.
    pub fn new(local: &PublicKey) -> Self {
        Self {
            keys: MacKeys::new(local),
            secret: [0; KEY_LEN],
            secret_born: None,
        }
    }

    /// Whether mac1 is right: the sender knows our public key. Cheap; done first.
    pub fn check_mac1(&self, msg: &impl HandshakeMessage) -> bool {
        mac_eq(&self.keys.mac1(msg), &msg.mac1())
    }

    /// Whether mac2 carries the cookie we would give `from` right now.
    pub fn check_mac2(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &impl HandshakeMessage,
    ) -> bool {
        let cookie = self.cookie_for(now, from);
        mac_eq(&mac(&cookie, &[msg.mac2_input()]), &msg.mac2())
    }

    /// Writes a cookie reply to `msg` from `from` into `out`; returns its length, or
    /// `None` if `out` is too short.
    pub fn write_reply(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &impl HandshakeMessage,
        out: &mut [u8],
    ) -> Option<usize> {
        let buf = out.get_mut(..COOKIE_REPLY_LEN)?;
        let mut sealed = [0u8; MAC_LEN + TAG_LEN];
        sealed[..MAC_LEN].copy_from_slice(&self.cookie_for(now, from));
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(&self.keys.cookie.into());
        let tag = cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &msg.mac1(),
                &mut sealed[..MAC_LEN],
            )
            .ok()?;
        sealed[MAC_LEN..].copy_from_slice(&tag);
        let mut reply = CookieReply::new_unchecked(buf);
        reply.init_header();
        reply.set_receiver_index(msg.sender_index());
        reply.set_nonce(&nonce);
        reply.set_encrypted_cookie(&sealed);
        Some(COOKIE_REPLY_LEN)
    }

    /// MAC(secret, source address and port), with the secret renewed every 120 s.
    fn cookie_for(&mut self, now: Instant, from: SocketAddr) -> Mac {
        let fresh = self
            .secret_born
            .is_some_and(|born| now.saturating_duration_since(born) < COOKIE_LIFETIME);
        if !fresh {
            OsRng.fill_bytes(&mut self.secret);
            self.secret_born = Some(now);
        }
        let (bytes, len) = address_bytes(from);
        mac(&self.secret, &[&bytes[..len]])
    }
}

/// The initiator side, one per peer: puts mac1 and (with a fresh cookie) mac2 on our
/// handshake messages, and takes in the peer's cookie replies.
pub struct CookieJar {
    keys: MacKeys,
    cookie: Option<(Mac, Instant)>,
    last_mac1: Option<Mac>,
}

/// A cookie reply that could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCookie;

impl CookieJar {
    /// A jar for messages to `peer`.
    pub fn new(peer: &PublicKey) -> Self {
        Self {
            keys: MacKeys::new(peer),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Writes mac1, and mac2 if we hold a cookie younger than [`COOKIE_LIFETIME`]
    /// (zeros otherwise); remembers mac1 to authenticate the cookie reply it may trigger.
    pub fn seal(&mut self, now: Instant, msg: &mut impl HandshakeMessageMut) {
        let mac1 = self.keys.mac1(msg);
        msg.set_mac1(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match self.cookie {
            Some((cookie, born)) if now.saturating_duration_since(born) < COOKIE_LIFETIME => {
                mac(&cookie, &[msg.mac2_input()])
            }
            _ => [0; MAC_LEN],
        };
        msg.set_mac2(&mac2);
    }

    /// Decrypts a cookie reply from the peer and stores the cookie.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        reply: &CookieReply<&[u8]>,
    ) -> Result<(), BadCookie> {
        let aad = self.last_mac1.ok_or(BadCookie)?;
        let sealed = reply.encrypted_cookie();
        let (ciphertext, tag) = sealed.split_at(MAC_LEN);
        let mut cookie: Mac = [0; MAC_LEN];
        cookie.copy_from_slice(ciphertext);
        let cipher = XChaCha20Poly1305::new(&self.keys.cookie.into());
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&reply.nonce()),
                &aad,
                &mut cookie,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| BadCookie)?;
        self.cookie = Some((cookie, now));
        // A cookie reply answers one message; a second reply to it would be a replay.
        self.last_mac1 = None;
        Ok(())
    }
}

/// Counts handshake messages per second to decide when mac2 is required.
pub struct LoadMonitor {
    threshold: u32,
    window_start: Option<Instant>,
    count: u32,
    until: Option<Instant>,
}

impl LoadMonitor {
    /// A monitor that reports load above `threshold` handshake messages per second.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold,
            window_start: None,
            count: 0,
            until: None,
        }
    }

    /// Changes the threshold; 0 means every handshake message needs a cookie (tests).
    pub fn set_threshold(&mut self, threshold: u32) {
        self.threshold = threshold;
    }

    /// Counts one handshake message and says whether we are under load.
    pub fn handshake_received(&mut self, now: Instant) -> bool {
        let in_window = self
            .window_start
            .is_some_and(|start| now.saturating_duration_since(start) < Duration::from_secs(1));
        if !in_window {
            self.window_start = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count > self.threshold {
            self.until = Some(now + UNDER_LOAD_HOLD);
        }
        self.until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::wire::{INITIATION_LEN, Initiation};

    #[test]
    fn mac1_matches_an_independent_blake2s() {
        // Fixture computed with Python's hashlib (an independent BLAKE2s):
        //   pub = bytes(range(32))
        //   key = blake2s(b"mac1----" + pub).digest()
        //   msg = bytes([1,0,0,0]) + bytes([0x5a]*112)
        //   blake2s(msg, key=key, digest_size=16).hexdigest()
        let public = PublicKey::from_bytes(core::array::from_fn(|i| i as u8));
        let mut buf = [0x5au8; INITIATION_LEN];
        let mut msg = Initiation::new_unchecked(&mut buf[..]);
        msg.init_header();
        let mac1 = MacKeys::new(&public).mac1(&msg);
        assert_eq!(hex(&mac1), MAC1_FIXTURE);
    }

    const MAC1_FIXTURE: &str = "dbf2a1c1441235933463cf19b40b51dd";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn initiation(sender: u32) -> [u8; INITIATION_LEN] {
        let mut buf = [7u8; INITIATION_LEN];
        let mut msg = Initiation::new_unchecked(&mut buf[..]);
        msg.init_header();
        msg.set_sender_index(sender);
        buf
    }

    #[test]
    fn mac1_checks_against_the_receiver_key() {
        let responder = PrivateKey::generate().public_key();
        let mut jar = CookieJar::new(&responder);
        let checker = CookieChecker::new(&responder);
        let t0 = Instant::now();
        let mut buf = initiation(1);
        jar.seal(t0, &mut Initiation::new_unchecked(&mut buf[..]));
        assert!(checker.check_mac1(&Initiation::new_unchecked(&buf[..])));
        buf[20] ^= 1;
        assert!(!checker.check_mac1(&Initiation::new_unchecked(&buf[..])));
        let other = CookieChecker::new(&PrivateKey::generate().public_key());
        buf[20] ^= 1;
        assert!(!other.check_mac1(&Initiation::new_unchecked(&buf[..])));
    }

    #[test]
    fn cookie_round_trip_gives_a_valid_mac2() {
        let responder = PrivateKey::generate().public_key();
        let mut jar = CookieJar::new(&responder);
        let mut checker = CookieChecker::new(&responder);
        let from: SocketAddr = "198.18.0.1:51820".parse().unwrap();
        let t0 = Instant::now();

        let mut first = initiation(42);
        jar.seal(t0, &mut Initiation::new_unchecked(&mut first[..]));
        let msg = Initiation::new_unchecked(&first[..]);
        assert!(
            !checker.check_mac2(t0, from, &msg),
            "no cookie yet: mac2 is zero"
        );
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        assert_eq!(
            checker.write_reply(t0, from, &msg, &mut reply),
            Some(COOKIE_REPLY_LEN)
        );
        let reply = CookieReply::new_checked(&reply[..]).unwrap();
        assert_eq!(reply.receiver_index(), 42);
        jar.handle_reply(t0, &reply).unwrap();
        assert_eq!(
            jar.handle_reply(t0, &reply),
            Err(BadCookie),
            "second use refused"
        );

        let mut second = initiation(43);
        jar.seal(t0, &mut Initiation::new_unchecked(&mut second[..]));
        let msg = Initiation::new_unchecked(&second[..]);
        assert!(checker.check_mac2(t0, from, &msg));
        let elsewhere: SocketAddr = "198.18.0.9:51820".parse().unwrap();
        assert!(
            !checker.check_mac2(t0, elsewhere, &msg),
            "cookie binds the address"
        );
        let later = t0 + COOKIE_LIFETIME;
        assert!(!checker.check_mac2(later, from, &msg), "secret rotated");
    }

    #[test]
    fn cookie_reply_needs_the_right_mac1() {
        let responder = PrivateKey::generate().public_key();
        let mut jar = CookieJar::new(&responder);
        let mut checker = CookieChecker::new(&responder);
        let from: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let t0 = Instant::now();
        let mut sent = initiation(1);
        jar.seal(t0, &mut Initiation::new_unchecked(&mut sent[..]));
        // A reply made for some other message (other mac1) does not decrypt.
        let forged = initiation(1);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.write_reply(
            t0,
            from,
            &Initiation::new_unchecked(&forged[..]),
            &mut reply,
        );
        let reply = CookieReply::new_checked(&reply[..]).unwrap();
        assert_eq!(jar.handle_reply(t0, &reply), Err(BadCookie));
    }

    #[test]
    fn load_monitor_threshold() {
        let t0 = Instant::now();
        let mut load = LoadMonitor::new(3);
        assert!(!load.handshake_received(t0));
        assert!(!load.handshake_received(t0));
        assert!(!load.handshake_received(t0));
        assert!(load.handshake_received(t0));
        assert!(load.handshake_received(t0 + Duration::from_millis(500)));
        assert!(!load.handshake_received(t0 + Duration::from_millis(2600)));
        let mut always = LoadMonitor::new(0);
        assert!(always.handshake_received(t0));
    }
}
