//! Curve25519 keys and pre-shared keys in WireGuard's text encoding (base64 of 32 bytes),
//! so keys move freely between `wg` and vmtun. Owns generation, clamping and parsing; it
//! never touches files (see `config` for the key file permission check). Secret keys are
//! wiped when dropped, never shown by `Debug`, and their text form is wiped too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore as _;
use rand::rngs::OsRng;
use zeroize::{Zeroize as _, Zeroizing};

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
    let bytes = Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| KeyError::Base64)?);
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// A secret key's base64 text: shown by `{}` (for `vmtun keygen`), wiped when dropped.
pub struct SecretText(Zeroizing<String>);

impl std::ops::Deref for SecretText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn secret_base64(bytes: &[u8; KEY_LEN]) -> SecretText {
    SecretText(Zeroizing::new(BASE64.encode(bytes)))
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

    /// WireGuard's text form (for `vmtun keygen`), wiped when dropped.
    pub fn to_base64(&self) -> SecretText {
        secret_base64(&self.0)
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
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

    /// WireGuard's text form (for `vmtun genpsk`), wiped when dropped.
    pub fn to_base64(&self) -> SecretText {
        secret_base64(&self.0)
    }
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
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

    /// The bytes left where a value was dropped in place.
    fn left_after_drop<T>(value: T, bytes: impl Fn(&T) -> *const [u8; KEY_LEN]) -> [u8; KEY_LEN] {
        let mut slot = std::mem::ManuallyDrop::new(value);
        let at = bytes(&slot);
        // SAFETY: `slot` is dropped once and never used again; its storage outlives the
        // read, and a [u8; 32] has no invalid bit patterns.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut slot);
            std::ptr::read_volatile(at)
        }
    }

    #[test]
    fn secret_keys_are_wiped_when_dropped() {
        let private = PrivateKey::from_bytes([0x55; KEY_LEN]);
        assert_eq!(left_after_drop(private, |k| k.as_bytes()), [0; KEY_LEN]);
        let psk = PresharedKey::from_bytes([0x55; KEY_LEN]);
        assert_eq!(left_after_drop(psk, |k| k.as_bytes()), [0; KEY_LEN]);
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
