//! Curve25519 keys and pre-shared keys in WireGuard's text encoding (base64 of 32 bytes),
//! so keys move freely between `wg` and vmtun. Owns generation, clamping and parsing; it
//! never touches files (see `config` for the key file permission check).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore as _;
use rand::rngs::OsRng;

/// Length of every key WireGuard uses: Curve25519 points and scalars, and the psk.
pub const KEY_LEN: usize = 32;

/// Why a key string was refused; `Copy` so tests and config errors can compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not valid base64 at all.
    #[error("not valid base64")]
    Base64,
    /// Valid base64, but not 32 bytes once decoded.
    #[error("decodes to {0} bytes, a key has 32")]
    Length(usize),
}

fn decode32(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = BASE64.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

fn random32() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A host's static private key. Clamped on creation as `wg genkey` does, so `vmtun keygen`
/// and `wg genkey` output are interchangeable.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Self {
        Self::from_bytes(random32())
    }

    /// Takes raw bytes and applies Curve25519 clamping (RFC 7748 section 5).
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self(bytes)
    }

    /// Parses WireGuard's base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(Self::from_bytes)
    }

    /// The matching public key (X25519 with the base point).
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(*x25519_dalek::PublicKey::from(&secret).as_bytes())
    }

    /// Raw scalar bytes, for the handshake.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// WireGuard's text form.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A peer's static public key: its identity in config, status and the handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw bytes (as received in a handshake).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses WireGuard's base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(Self)
    }

    /// Raw point bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// WireGuard's text form.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// An optional symmetric key mixed into the handshake (WireGuard's `PresharedKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// 32 random bytes, like `wg genpsk`.
    pub fn generate() -> Self {
        Self(random32())
    }

    /// Parses WireGuard's base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode32(text).map(Self)
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Raw bytes, for the handshake.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// WireGuard's text form.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixture from `wg genkey | tee /dev/stderr | wg pubkey` (wireguard-tools).
    const WG_PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const WG_PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn public_key_matches_wireguard_tools() {
        let private = PrivateKey::from_base64(WG_PRIVATE).unwrap();
        assert_eq!(private.public_key().to_base64(), WG_PUBLIC);
    }

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let key = PrivateKey::generate();
        let bytes = key.as_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 128, 0);
        assert_eq!(bytes[31] & 64, 64);
        assert_eq!(PrivateKey::from_base64(&key.to_base64()).unwrap(), key);
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        assert_eq!(
            PublicKey::from_base64("not base64!").unwrap_err(),
            KeyError::Base64
        );
        assert_eq!(
            PublicKey::from_base64("AAAA").unwrap_err(),
            KeyError::Length(3)
        );
    }
}
