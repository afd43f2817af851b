//! snow's crypto with what it lacks: X25519 refuses an all-zero shared secret, as Linux's
//! WireGuard and wireguard-go do (a low-order public key, all zeros say, makes the secret
//! zero whatever our private key, so a handshake built on it proves nothing about who sent
//! it); and the private keys and cipher keys snow holds are overwritten with zeros when a
//! handshake is dropped (snow itself never wipes them). snow's chaining key, hash and psk
//! copy are out of reach of a resolver and stay as snow leaves them. Everything else is
//! snow's default resolver, unchanged.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

// snow's cipher key length (its `CIPHERKEYLEN`, not exported) is ChaCha20's 32 bytes.
use crate::keys::KEY_LEN;

/// snow's default resolver with [`Contributory`] around every DH.
pub(super) struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        let inner = DefaultResolver.resolve_dh(choice)?;
        Some(Box::new(Contributory(inner)))
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        let inner = DefaultResolver.resolve_cipher(choice)?;
        Some(Box::new(Wiped(inner)))
    }
}

/// Zeros as long as any key snow handles (X448's 56 bytes).
const ZEROS: [u8; 56] = [0; 56];

/// A DH whose all-zero result is an error (`snow::Error::Dh`) instead of a key, and whose
/// private key is set to zeros when dropped.
struct Contributory(Box<dyn Dh>);

impl Drop for Contributory {
    fn drop(&mut self) {
        let len = self.0.priv_len().min(ZEROS.len());
        self.0.set(&ZEROS[..len]);
    }
}

/// snow's cipher, its key set to zeros when dropped.
struct Wiped(Box<dyn Cipher>);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.set(&[0; KEY_LEN]);
    }
}

impl Cipher for Wiped {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn set(&mut self, key: &[u8; KEY_LEN]) {
        self.0.set(key);
    }
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        self.0.encrypt(nonce, authtext, plaintext, out)
    }
    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        self.0.decrypt(nonce, authtext, ciphertext, out)
    }
    fn rekey(&mut self) {
        self.0.rekey();
    }
}

impl Dh for Contributory {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn pub_len(&self) -> usize {
        self.0.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.0.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.0.set(privkey);
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.0.generate(rng)
    }
    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }
    fn privkey(&self) -> &[u8] {
        self.0.privkey()
    }
    fn dh_len(&self) -> usize {
        self.0.dh_len()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        self.0.dh(pubkey, out)?;
        let len = self.0.dh_len().min(out.len());
        // Whether the secret is zero is no secret; OR-ing every byte just avoids an early exit.
        if out[..len].iter().fold(0u8, |acc, b| acc | b) == 0 {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x25519(private: [u8; 32]) -> Box<dyn Dh> {
        let mut dh = Resolver.resolve_dh(&DHChoice::Curve25519).unwrap();
        dh.set(&private);
        dh
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        let mut out = [0u8; 32];
        // All zeros, and the point of order 8 from the Curve25519 paper's list.
        let order8 = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        for public in [[0u8; 32], order8] {
            assert!(matches!(
                x25519([7; 32]).dh(&public, &mut out),
                Err(snow::Error::Dh)
            ));
        }
    }

    /// A DH and cipher that record every key they are given.
    #[derive(Default, Clone)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn last(&self) -> Vec<u8> {
            self.0.lock().unwrap().last().cloned().unwrap_or_default()
        }
    }

    impl Dh for Recorder {
        fn name(&self) -> &'static str {
            "25519"
        }
        fn pub_len(&self) -> usize {
            32
        }
        fn priv_len(&self) -> usize {
            32
        }
        fn set(&mut self, privkey: &[u8]) {
            self.0.lock().unwrap().push(privkey.to_vec());
        }
        fn generate(&mut self, _: &mut dyn Random) -> Result<(), snow::Error> {
            Ok(())
        }
        fn pubkey(&self) -> &[u8] {
            &[]
        }
        fn privkey(&self) -> &[u8] {
            &[]
        }
        fn dh(&self, _: &[u8], _: &mut [u8]) -> Result<(), snow::Error> {
            Ok(())
        }
    }

    impl Cipher for Recorder {
        fn name(&self) -> &'static str {
            "ChaChaPoly"
        }
        fn set(&mut self, key: &[u8; KEY_LEN]) {
            self.0.lock().unwrap().push(key.to_vec());
        }
        fn encrypt(&self, _: u64, _: &[u8], _: &[u8], _: &mut [u8]) -> usize {
            0
        }
        fn decrypt(&self, _: u64, _: &[u8], _: &[u8], _: &mut [u8]) -> Result<usize, snow::Error> {
            Ok(0)
        }
    }

    #[test]
    fn private_keys_and_cipher_keys_are_zeroed_when_dropped() {
        let seen = Recorder::default();
        let mut dh = Contributory(Box::new(seen.clone()));
        dh.set(&[7; 32]);
        assert_eq!(seen.last(), vec![7; 32]);
        drop(dh);
        assert_eq!(seen.last(), vec![0; 32]);

        let seen = Recorder::default();
        let mut cipher = Wiped(Box::new(seen.clone()));
        cipher.set(&[7; 32]);
        drop(cipher);
        assert_eq!(seen.last(), vec![0; 32]);
    }

    #[test]
    fn an_ordinary_public_key_gives_the_same_secret_both_ways() {
        let (a, b) = (x25519([7; 32]), x25519([9; 32]));
        let (mut ab, mut ba) = ([0u8; 32], [0u8; 32]);
        a.dh(b.pubkey(), &mut ab).unwrap();
        b.dh(a.pubkey(), &mut ba).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab, [0; 32]);
    }
}
