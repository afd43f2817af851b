//! snow's crypto with one check it lacks: X25519 refuses an all-zero shared secret, as
//! Linux's WireGuard and wireguard-go do. A low-order public key (all zeros, say) makes the
//! shared secret zero whatever our private key, so a handshake built on it proves nothing
//! about who sent it. Everything else is snow's default resolver, unchanged.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

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
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A DH whose all-zero result is an error (`snow::Error::Dh`) instead of a key.
struct Contributory(Box<dyn Dh>);

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
