//! The Noise IKpsk2 handshake in WireGuard's framing, run by snow. Owns snow's state
//! between the two messages and the derivation of the transport keys; knows nothing of
//! peers, timers or MACs (the caller adds mac1/mac2 and checks timestamps).

use crate::keys::{KEY_LEN, PrivateKey, PublicKey};
use crate::wire::{INITIATION_NOISE_LEN, Initiation, RESPONSE_NOISE_LEN, Response, TAG_LEN};

use super::drops::DropReason;
use super::tai64n::{TAI64N_LEN, Tai64N};

/// WireGuard's Noise protocol name; snow hashes it exactly as WireGuard's `CONSTRUCTION`.
const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's `IDENTIFIER`, mixed in as the Noise prologue.
const PROLOGUE: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// The psk token comes at the end of message 2: `psk2`.
const PSK_POSITION: u8 = 2;

/// Why a handshake message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Decryption or authentication failed (wrong key, wrong psk, corrupted).
    #[error("handshake message did not authenticate")]
    Decrypt,
    /// A DH gave the all-zero secret: the other side sent a low-order public key.
    #[error("handshake used a low-order public key")]
    LowOrder,
    /// Authenticated but with a payload of the wrong size.
    #[error("handshake payload has the wrong length")]
    Payload,
    /// snow refused to set up the state: a bug, not a network condition.
    #[error("noise state could not be built (please report)")]
    Internal,
}

/// The counter a refused handshake message goes to.
pub fn drop_reason(e: HandshakeError) -> DropReason {
    match e {
        HandshakeError::Decrypt | HandshakeError::Internal => DropReason::DecryptFailed,
        HandshakeError::LowOrder => DropReason::LowOrderKey,
        HandshakeError::Payload => DropReason::Malformed,
    }
}

/// The two transport keys a completed handshake yields. Zeroed on drop.
pub struct SessionKeys {
    /// Key for what we send.
    pub send: [u8; KEY_LEN],
    /// Key for what we receive.
    pub recv: [u8; KEY_LEN],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.send.zeroize();
        self.recv.zeroize();
    }
}

/// A snow builder with WireGuard's parameters. `ephemeral` fixes the ephemeral key, for
/// byte-exact test fixtures only; `None` everywhere else.
fn builder(ephemeral: Option<&[u8; KEY_LEN]>) -> Result<snow::Builder<'_>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(|_| HandshakeError::Internal)?;
    let builder = snow::Builder::with_resolver(params, Box::new(super::x25519::Resolver))
        .prologue(PROLOGUE)
        .map_err(|_| HandshakeError::Internal)?;
    Ok(match ephemeral {
        Some(key) => builder.fixed_ephemeral_key_for_testing_only(key),
        None => builder,
    })
}

/// Why snow refused a message: a low-order key (see `x25519`) or anything else.
fn read_error(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Dh => HandshakeError::LowOrder,
        _ => HandshakeError::Decrypt,
    }
}

/// Splits a finished handshake into (initiator-to-responder, responder-to-initiator) keys:
/// WireGuard's `KDF2(C, empty)`, the same split snow's transport mode makes.
fn split(state: &mut snow::HandshakeState) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    state.dangerously_get_raw_split()
}

/// Our side of a handshake we started, waiting for the response.
pub struct InitiatorHandshake {
    state: snow::HandshakeState,
    /// Our index for this handshake; the response names it, and it becomes the session's.
    pub local_index: u32,
}

impl InitiatorHandshake {
    /// Writes the header, sender index and Noise message 1 of an initiation into `msg`
    /// (the caller adds the MACs).
    pub fn start(
        local: &PrivateKey,
        remote: &PublicKey,
        psk: &[u8; KEY_LEN],
        local_index: u32,
        timestamp: Tai64N,
        msg: &mut Initiation<&mut [u8]>,
    ) -> Result<Self, HandshakeError> {
        Self::start_with(local, remote, psk, local_index, timestamp, None, msg)
    }

    fn start_with(
        local: &PrivateKey,
        remote: &PublicKey,
        psk: &[u8; KEY_LEN],
        local_index: u32,
        timestamp: Tai64N,
        ephemeral: Option<&[u8; KEY_LEN]>,
        msg: &mut Initiation<&mut [u8]>,
    ) -> Result<Self, HandshakeError> {
        let mut state = builder(ephemeral)?
            .local_private_key(local.as_bytes())
            .and_then(|b| b.remote_public_key(remote.as_bytes()))
            .and_then(|b| b.psk(PSK_POSITION, psk))
            .and_then(|b| b.build_initiator())
            .map_err(|_| HandshakeError::Internal)?;
        msg.init_header();
        msg.set_sender_index(local_index);
        let written = state
            .write_message(timestamp.as_bytes(), msg.noise_mut())
            .map_err(|_| HandshakeError::Internal)?;
        if written != INITIATION_NOISE_LEN {
            return Err(HandshakeError::Internal);
        }
        Ok(Self { state, local_index })
    }

    /// Reads the response. On failure the state is unchanged, so a forged response cannot
    /// kill a handshake the real peer may still answer.
    pub fn finish(&mut self, msg: &Response<&[u8]>) -> Result<SessionKeys, HandshakeError> {
        let mut payload = [0u8; TAG_LEN];
        let len = self
            .state
            .read_message(msg.noise(), &mut payload)
            .map_err(read_error)?;
        if len != 0 {
            return Err(HandshakeError::Payload);
        }
        let (send, recv) = split(&mut self.state);
        Ok(SessionKeys { send, recv })
    }
}

/// An initiation we have read and authenticated (the initiator's static key decrypted),
/// before we decide whether to answer it.
pub struct ReceivedInitiation {
    state: snow::HandshakeState,
    /// Who sent it.
    pub remote: PublicKey,
    /// Its timestamp, to refuse replays.
    pub timestamp: Tai64N,
    /// The initiator's index, to put in the response.
    pub sender_index: u32,
}

impl ReceivedInitiation {
    /// Runs Noise message 1 (two DHs). Call only after mac1 verified.
    pub fn read(local: &PrivateKey, msg: &Initiation<&[u8]>) -> Result<Self, HandshakeError> {
        Self::read_with(local, None, msg)
    }

    fn read_with(
        local: &PrivateKey,
        ephemeral: Option<&[u8; KEY_LEN]>,
        msg: &Initiation<&[u8]>,
    ) -> Result<Self, HandshakeError> {
        use crate::wire::HandshakeMessage as _;
        let mut state = builder(ephemeral)?
            .local_private_key(local.as_bytes())
            .and_then(|b| b.build_responder())
            .map_err(|_| HandshakeError::Internal)?;
        let mut payload = [0u8; INITIATION_NOISE_LEN];
        let len = state
            .read_message(msg.noise(), &mut payload)
            .map_err(read_error)?;
        let stamp: [u8; TAI64N_LEN] = payload
            .get(..len)
            .and_then(|p| p.try_into().ok())
            .ok_or(HandshakeError::Payload)?;
        let remote: [u8; KEY_LEN] = state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(HandshakeError::Internal)?;
        Ok(Self {
            state,
            remote: PublicKey::from_bytes(remote),
            timestamp: Tai64N::from_bytes(stamp),
            sender_index: msg.sender_index(),
        })
    }

    /// Writes header, indices and Noise message 2 into `msg` (the caller adds the MACs)
    /// and derives the session keys. `psk` is the initiator's, known only now.
    pub fn respond(
        mut self,
        psk: &[u8; KEY_LEN],
        local_index: u32,
        msg: &mut Response<&mut [u8]>,
    ) -> Result<SessionKeys, HandshakeError> {
        self.state
            .set_psk(usize::from(PSK_POSITION), psk)
            .map_err(|_| HandshakeError::Internal)?;
        msg.init_header();
        msg.set_sender_index(local_index);
        msg.set_receiver_index(self.sender_index);
        let written = self
            .state
            .write_message(&[], msg.noise_mut())
            .map_err(|_| HandshakeError::Internal)?;
        if written != RESPONSE_NOISE_LEN {
            return Err(HandshakeError::Internal);
        }
        let (initiator_to_responder, responder_to_initiator) = split(&mut self.state);
        Ok(SessionKeys {
            send: responder_to_initiator,
            recv: initiator_to_responder,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::wire::{INITIATION_LEN, RESPONSE_LEN};
    use std::time::{Duration, SystemTime};

    struct Run {
        keys_i: SessionKeys,
        keys_r: SessionKeys,
    }

    fn handshake(psk_i: [u8; 32], psk_r: [u8; 32]) -> Result<Run, HandshakeError> {
        let (si, sr) = (PrivateKey::generate(), PrivateKey::generate());
        let stamp = Tai64N::from_system_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        let mut init = [0u8; INITIATION_LEN];
        let mut hs = InitiatorHandshake::start(
            &si,
            &sr.public_key(),
            &psk_i,
            7,
            stamp,
            &mut Initiation::new_unchecked(&mut init[..]),
        )?;
        let received = ReceivedInitiation::read(&sr, &Initiation::new_checked(&init[..]).unwrap())?;
        assert_eq!(received.remote, si.public_key());
        assert_eq!(received.timestamp, stamp);
        assert_eq!(received.sender_index, 7);
        let mut resp = [0u8; RESPONSE_LEN];
        let keys_r = received.respond(&psk_r, 9, &mut Response::new_unchecked(&mut resp[..]))?;
        let resp = Response::new_checked(&resp[..]).unwrap();
        assert_eq!(resp.receiver_index(), 7);
        let keys_i = hs.finish(&resp)?;
        Ok(Run { keys_i, keys_r })
    }

    /// An attacker's X25519: its public key is all zeros (low order), and the shared
    /// secret it claims is zero, which is what X25519 gives the honest side too.
    struct LowOrder;

    impl snow::types::Dh for LowOrder {
        fn name(&self) -> &'static str {
            "25519"
        }
        fn pub_len(&self) -> usize {
            KEY_LEN
        }
        fn priv_len(&self) -> usize {
            KEY_LEN
        }
        fn set(&mut self, _: &[u8]) {}
        fn generate(&mut self, _: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
            Ok(())
        }
        fn pubkey(&self) -> &[u8] {
            &[0; KEY_LEN]
        }
        fn privkey(&self) -> &[u8] {
            &[0; KEY_LEN]
        }
        fn dh(&self, _: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
            out[..KEY_LEN].fill(0);
            Ok(())
        }
    }

    struct Attacker;

    impl snow::resolvers::CryptoResolver for Attacker {
        fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
            snow::resolvers::DefaultResolver.resolve_rng()
        }
        fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
            Some(Box::new(LowOrder))
        }
        fn resolve_hash(
            &self,
            choice: &snow::params::HashChoice,
        ) -> Option<Box<dyn snow::types::Hash>> {
            snow::resolvers::DefaultResolver.resolve_hash(choice)
        }
        fn resolve_cipher(
            &self,
            choice: &snow::params::CipherChoice,
        ) -> Option<Box<dyn snow::types::Cipher>> {
            snow::resolvers::DefaultResolver.resolve_cipher(choice)
        }
    }

    /// An initiation whose static and ephemeral keys are both all zeros: without the
    /// zero-secret check it authenticates, with nobody's private key behind it.
    pub(crate) fn low_order_initiation(responder: &PublicKey) -> [u8; INITIATION_LEN] {
        let mut state =
            snow::Builder::with_resolver(NOISE_PARAMS.parse().unwrap(), Box::new(Attacker))
                .prologue(PROLOGUE)
                .and_then(|b| b.local_private_key(&[0; KEY_LEN]))
                .and_then(|b| b.remote_public_key(responder.as_bytes()))
                .and_then(|b| b.psk(PSK_POSITION, &[0; KEY_LEN]))
                .and_then(|b| b.build_initiator())
                .unwrap();
        let mut init = [0u8; INITIATION_LEN];
        let mut msg = Initiation::new_unchecked(&mut init[..]);
        msg.init_header();
        msg.set_sender_index(1);
        let stamp = Tai64N::from_system_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        state
            .write_message(stamp.as_bytes(), msg.noise_mut())
            .unwrap();
        init
    }

    #[test]
    fn an_initiation_with_low_order_keys_is_refused() {
        let responder = PrivateKey::generate();
        let init = low_order_initiation(&responder.public_key());
        let read =
            ReceivedInitiation::read(&responder, &Initiation::new_checked(&init[..]).unwrap());
        assert_eq!(read.err(), Some(HandshakeError::LowOrder));
        assert_eq!(
            drop_reason(HandshakeError::LowOrder),
            DropReason::LowOrderKey
        );
    }

    #[test]
    fn both_sides_derive_matching_keys() {
        let run = handshake([0; 32], [0; 32]).unwrap();
        assert_eq!(run.keys_i.send, run.keys_r.recv);
        assert_eq!(run.keys_i.recv, run.keys_r.send);
        assert_ne!(run.keys_i.send, run.keys_i.recv);
        let run = handshake([3; 32], [3; 32]).unwrap();
        assert_eq!(run.keys_i.send, run.keys_r.recv);
    }

    #[test]
    fn wrong_psk_fails_at_the_initiator() {
        assert_eq!(
            handshake([1; 32], [2; 32]).err(),
            Some(HandshakeError::Decrypt)
        );
    }

    #[test]
    fn initiation_for_someone_else_does_not_decrypt() {
        let si = PrivateKey::generate();
        let mut init = [0u8; INITIATION_LEN];
        InitiatorHandshake::start(
            &si,
            &PrivateKey::generate().public_key(),
            &[0; 32],
            1,
            Tai64N::from_bytes([0; 12]),
            &mut Initiation::new_unchecked(&mut init[..]),
        )
        .unwrap();
        let msg = Initiation::new_checked(&init[..]).unwrap();
        assert_eq!(
            ReceivedInitiation::read(&PrivateKey::generate(), &msg).err(),
            Some(HandshakeError::Decrypt)
        );
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(first: u8) -> [u8; 32] {
        core::array::from_fn(|i| first + i as u8)
    }

    // Made by an independent implementation of the whitepaper (section 5.4) in Python
    // with `hashlib.blake2s`, `hmac` and `cryptography`'s X25519 and ChaCha20-Poly1305
    // (`fixtures/wg_handshake.py`, which prints these constants):
    // static keys 1..=32 (initiator) and 101..=132 (responder), ephemerals 51..=82 and
    // 151..=182, no psk, indices 0x11223344 / 0x55667788, timestamp 1_700_000_000 s.
    const FIXTURE_INIT: &str = "0100000044332211c15d2265459455c9ff156e6c1da6bfb7910bb8af50f2b2f9f853ea9325259d4d628c6ddbb78e850c1ad4cee2a68a859e4c392f8572ccd082c0c0e18c9f52df207b8d9d850cb562b4d0a5987fbf02298ddbc2d1b96c787affe1cd17a9725ec248d81be9a80562b937de864a4c881dfed791989cb74a0293393d990d2900000000000000000000000000000000";
    const FIXTURE_RESP: &str = "020000008877665544332211153864612f5c5d47f684d66899a9de4f7c30b5f74a8ebd699642212bce00d938f3494b79b492aff1bc1faf6ed113b88f1881e43d51fe45f6271faf6fcabb894b00000000000000000000000000000000";
    const FIXTURE_T_SEND_I: &str =
        "99f51e078246c606626107f69e451ed4b5d9c4a7152973c351b787aa4d5c8e93";
    const FIXTURE_T_RECV_I: &str =
        "e0f2265a74ff004b7d1a790504f4ec54989e6e389bc75d763048191183d5bd62";
    /// The first transport message from the initiator: a 20-byte IPv4 header stub
    /// (0x45 then zeros), padded to 32.
    const FIXTURE_DATA: &str = "0400000088776655000000000000000055025886f19e8e443b5ffc59485fa7647c2f88fb32ed7c0d44304ab581c5f4f9513479056d81b17fb200c5fa66c75123";

    #[test]
    fn byte_exact_against_an_independent_wireguard_implementation() {
        use crate::noise::cookie::CookieJar;
        use crate::noise::session::Session;
        use std::time::Instant;

        let si = PrivateKey::from_bytes(key(1));
        let sr = PrivateKey::from_bytes(key(101));
        let now = Instant::now();
        let stamp =
            Tai64N::from_system_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));

        let mut init = [0u8; INITIATION_LEN];
        let mut msg = Initiation::new_unchecked(&mut init[..]);
        let mut hs = InitiatorHandshake::start_with(
            &si,
            &sr.public_key(),
            &[0; 32],
            0x1122_3344,
            stamp,
            Some(&key(51)),
            &mut msg,
        )
        .unwrap();
        CookieJar::new(&sr.public_key()).seal(now, &mut msg);
        assert_eq!(init[..], unhex(FIXTURE_INIT)[..], "initiation");

        let received = ReceivedInitiation::read_with(
            &sr,
            Some(&key(151)),
            &Initiation::new_checked(&init[..]).unwrap(),
        )
        .unwrap();
        let mut resp = [0u8; RESPONSE_LEN];
        let mut msg = Response::new_unchecked(&mut resp[..]);
        let keys_r = received.respond(&[0; 32], 0x5566_7788, &mut msg).unwrap();
        CookieJar::new(&si.public_key()).seal(now, &mut msg);
        assert_eq!(resp[..], unhex(FIXTURE_RESP)[..], "response");

        let keys_i = hs
            .finish(&Response::new_checked(&resp[..]).unwrap())
            .unwrap();
        assert_eq!(keys_i.send[..], unhex(FIXTURE_T_SEND_I)[..]);
        assert_eq!(keys_i.recv[..], unhex(FIXTURE_T_RECV_I)[..]);
        assert_eq!(keys_r.recv, keys_i.send);

        let mut session = Session::new(&keys_i, 0x1122_3344, 0x5566_7788, true, now);
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        let mut out = [0u8; 128];
        let len = session.encrypt(now, &packet, usize::MAX, &mut out).unwrap();
        assert_eq!(out[..len], unhex(FIXTURE_DATA)[..], "transport");
    }
}
