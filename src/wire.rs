//! WireGuard's four message formats as zero-copy views over byte buffers, and a peek at the
//! inner IP header that cryptokey routing needs.
//!
//! This module owns byte layout only: no state, no crypto, no clocks. Each view checks the
//! length once in `new_checked`, after which no accessor can panic; `new_unchecked` is for
//! buffers the caller has already sized (when writing). Layouts are from the WireGuard
//! whitepaper, section 5.4, and match wireguard-go's `device/noise-protocol.go`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// Length of a MAC field (mac1, mac2) and of a cookie: keyed BLAKE2s-128.
pub const MAC_LEN: usize = 16;
/// Length of a Poly1305 tag, appended to every AEAD ciphertext.
pub const TAG_LEN: usize = 16;
/// A handshake initiation is exactly this long (whitepaper 5.4.2).
pub const INITIATION_LEN: usize = 148;
/// A handshake response is exactly this long (whitepaper 5.4.3).
pub const RESPONSE_LEN: usize = 92;
/// A cookie reply is exactly this long (whitepaper 5.4.7).
pub const COOKIE_REPLY_LEN: usize = 64;
/// The clear header of a transport message: type, receiver index, counter (whitepaper 5.4.6).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// The shortest transport message: a header and the tag of an empty plaintext (a keepalive).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Length of snow's Noise message 1 inside an initiation: ephemeral 32, static 32+16,
/// timestamp 12+16.
pub const INITIATION_NOISE_LEN: usize = 108;
/// Length of snow's Noise message 2 inside a response: ephemeral 32, empty payload's tag 16.
pub const RESPONSE_NOISE_LEN: usize = 48;
/// Length of the random XChaCha20 nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;

/// Byte ranges of every field, named so offsets appear exactly once.
pub mod field {
    use std::ops::Range;

    /// Message type as u32 little-endian: one type byte and three reserved zero bytes.
    pub const TYPE: Range<usize> = 0..4;

    /// Initiation: the initiator's index for this handshake.
    pub const INITIATION_SENDER: Range<usize> = 4..8;
    /// Initiation: Noise message 1 (ephemeral, encrypted static, encrypted timestamp).
    pub const INITIATION_NOISE: Range<usize> = 8..116;
    /// Initiation: mac1.
    pub const INITIATION_MAC1: Range<usize> = 116..132;
    /// Initiation: mac2.
    pub const INITIATION_MAC2: Range<usize> = 132..148;

    /// Response: the responder's index for the new session.
    pub const RESPONSE_SENDER: Range<usize> = 4..8;
    /// Response: the initiator's index, copied from the initiation.
    pub const RESPONSE_RECEIVER: Range<usize> = 8..12;
    /// Response: Noise message 2 (ephemeral, empty encrypted payload).
    pub const RESPONSE_NOISE: Range<usize> = 12..60;
    /// Response: mac1.
    pub const RESPONSE_MAC1: Range<usize> = 60..76;
    /// Response: mac2.
    pub const RESPONSE_MAC2: Range<usize> = 76..92;

    /// Cookie reply: the sender index of the message that triggered it.
    pub const COOKIE_RECEIVER: Range<usize> = 4..8;
    /// Cookie reply: random XChaCha20 nonce.
    pub const COOKIE_NONCE: Range<usize> = 8..32;
    /// Cookie reply: the encrypted 16-byte cookie and its tag.
    pub const COOKIE_ENCRYPTED: Range<usize> = 32..64;

    /// Transport: the receiver's session index.
    pub const TRANSPORT_RECEIVER: Range<usize> = 4..8;
    /// Transport: the nonce counter, u64 little-endian.
    pub const TRANSPORT_COUNTER: Range<usize> = 8..16;
    /// Transport: the ciphertext and tag start here and run to the end.
    pub const TRANSPORT_PAYLOAD: usize = 16;
}

/// Why bytes are not a well-formed message; `Copy` so tests can compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 4-byte type field.
    #[error("datagram shorter than the 4-byte message type")]
    Truncated,
    /// The type field is not 1..=4 with zero reserved bytes.
    #[error("unknown message type {0:#010x}")]
    UnknownType(u32),
    /// A valid type, but not the one this view reads.
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongType {
        /// What the view reads.
        expected: MessageType,
        /// What the bytes announce.
        got: MessageType,
    },
    /// Known type, wrong length for it.
    #[error("{kind:?} message of {len} bytes has the wrong length")]
    BadLength {
        /// The type the first bytes announced.
        kind: MessageType,
        /// The length received.
        len: usize,
    },
    /// An inner packet whose version nibble is neither 4 nor 6.
    #[error("inner packet is not IPv4 or IPv6")]
    NotIp,
    /// An inner IP packet shorter than its header or its own length field.
    #[error("inner IP packet is truncated")]
    BadIpLength,
}

/// The four WireGuard message types, as the first byte of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Handshake initiation (1).
    Initiation = 1,
    /// Handshake response (2).
    Response = 2,
    /// Cookie reply (3), sent instead of a response when under load.
    CookieReply = 3,
    /// Transport data (4).
    Transport = 4,
}

impl MessageType {
    /// Reads the type of a datagram. The reserved bytes must be zero, as in wireguard-go,
    /// which compares the whole little-endian u32.
    pub fn of(datagram: &[u8]) -> Result<Self, WireError> {
        let raw = read_u32(datagram, field::TYPE).ok_or(WireError::Truncated)?;
        match raw {
            1 => Ok(Self::Initiation),
            2 => Ok(Self::Response),
            3 => Ok(Self::CookieReply),
            4 => Ok(Self::Transport),
            other => Err(WireError::UnknownType(other)),
        }
    }

    /// The exact length of this message type, `None` for transport (variable).
    pub fn fixed_len(self) -> Option<usize> {
        match self {
            Self::Initiation => Some(INITIATION_LEN),
            Self::Response => Some(RESPONSE_LEN),
            Self::CookieReply => Some(COOKIE_REPLY_LEN),
            Self::Transport => None,
        }
    }

    fn header(self) -> [u8; 4] {
        (self as u32).to_le_bytes()
    }
}

fn read_u32(bytes: &[u8], range: Range<usize>) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(range)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

fn check(bytes: &[u8], kind: MessageType, len_ok: bool) -> Result<(), WireError> {
    let got = MessageType::of(bytes)?;
    if got != kind {
        return Err(WireError::WrongType {
            expected: kind,
            got,
        });
    }
    if !len_ok {
        return Err(WireError::BadLength {
            kind,
            len: bytes.len(),
        });
    }
    Ok(())
}

/// Copies a range that the view's length check has proven in bounds into an array.
fn array<const N: usize>(bytes: &[u8], range: Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[range]);
    out
}

/// What the mac1/mac2 code needs from either handshake message (whitepaper 5.4.4):
/// each MAC covers every byte before it.
pub trait HandshakeMessage {
    /// The sender's index, used as the receiver index of a cookie reply.
    fn sender_index(&self) -> u32;
    /// The bytes mac1 is computed over.
    fn mac1_input(&self) -> &[u8];
    /// The bytes mac2 is computed over (everything up to mac2, mac1 included).
    fn mac2_input(&self) -> &[u8];
    /// The mac1 field.
    fn mac1(&self) -> [u8; MAC_LEN];
    /// The mac2 field.
    fn mac2(&self) -> [u8; MAC_LEN];
}

/// Writing side of [`HandshakeMessage`].
pub trait HandshakeMessageMut: HandshakeMessage {
    /// Stores mac1.
    fn set_mac1(&mut self, mac: &[u8; MAC_LEN]);
    /// Stores mac2.
    fn set_mac2(&mut self, mac: &[u8; MAC_LEN]);
}

macro_rules! handshake_view {
    ($name:ident, $kind:expr, $len:expr, $sender:expr, $mac1:expr, $mac2:expr) => {
        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps a buffer without checking it; accessors panic if it is too short.
            /// For writing into a buffer already cut to the message length.
            pub fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a received buffer after checking its type and exact length.
            pub fn new_checked(buffer: T) -> Result<Self, WireError> {
                let bytes = buffer.as_ref();
                check(bytes, $kind, bytes.len() == $len)?;
                Ok(Self { buffer })
            }

            /// The whole message.
            pub fn as_bytes(&self) -> &[u8] {
                &self.buffer.as_ref()[..$len]
            }

            /// Gives the buffer back.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Writes the type and zero reserved bytes.
            pub fn init_header(&mut self) {
                self.buffer.as_mut()[field::TYPE].copy_from_slice(&$kind.header());
            }

            /// Stores the sender index.
            pub fn set_sender_index(&mut self, index: u32) {
                self.buffer.as_mut()[$sender].copy_from_slice(&index.to_le_bytes());
            }
        }

        impl<T: AsRef<[u8]>> HandshakeMessage for $name<T> {
            fn sender_index(&self) -> u32 {
                u32::from_le_bytes(array(self.buffer.as_ref(), $sender))
            }
            fn mac1_input(&self) -> &[u8] {
                &self.buffer.as_ref()[..$mac1.start]
            }
            fn mac2_input(&self) -> &[u8] {
                &self.buffer.as_ref()[..$mac2.start]
            }
            fn mac1(&self) -> [u8; MAC_LEN] {
                array(self.buffer.as_ref(), $mac1)
            }
            fn mac2(&self) -> [u8; MAC_LEN] {
                array(self.buffer.as_ref(), $mac2)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeMessageMut for $name<T> {
            fn set_mac1(&mut self, mac: &[u8; MAC_LEN]) {
                self.buffer.as_mut()[$mac1].copy_from_slice(mac);
            }
            fn set_mac2(&mut self, mac: &[u8; MAC_LEN]) {
                self.buffer.as_mut()[$mac2].copy_from_slice(mac);
            }
        }
    };
}

/// Handshake initiation (type 1, 148 bytes): the first Noise message with the initiator's
/// index and the two MACs.
#[derive(Debug, Clone)]
pub struct Initiation<T> {
    buffer: T,
}

handshake_view!(
    Initiation,
    MessageType::Initiation,
    INITIATION_LEN,
    field::INITIATION_SENDER,
    field::INITIATION_MAC1,
    field::INITIATION_MAC2
);

impl<T: AsRef<[u8]>> Initiation<T> {
    /// Noise message 1, for snow.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[field::INITIATION_NOISE]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Initiation<T> {
    /// Where snow writes Noise message 1.
    pub fn noise_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::INITIATION_NOISE]
    }
}

/// Handshake response (type 2, 92 bytes): the second Noise message, both indices and the
/// two MACs.
#[derive(Debug, Clone)]
pub struct Response<T> {
    buffer: T,
}

handshake_view!(
    Response,
    MessageType::Response,
    RESPONSE_LEN,
    field::RESPONSE_SENDER,
    field::RESPONSE_MAC1,
    field::RESPONSE_MAC2
);

impl<T: AsRef<[u8]>> Response<T> {
    /// The initiator's index this response answers.
    pub fn receiver_index(&self) -> u32 {
        u32::from_le_bytes(array(self.buffer.as_ref(), field::RESPONSE_RECEIVER))
    }

    /// Noise message 2, for snow.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[field::RESPONSE_NOISE]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Response<T> {
    /// Stores the receiver index.
    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::RESPONSE_RECEIVER].copy_from_slice(&index.to_le_bytes());
    }

    /// Where snow writes Noise message 2.
    pub fn noise_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::RESPONSE_NOISE]
    }
}

/// Cookie reply (type 3, 64 bytes): sent instead of a response when under load, so the
/// initiator proves it owns its source address with mac2 on the next try.
#[derive(Debug, Clone)]
pub struct CookieReply<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Wraps a buffer without checking it; accessors panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a received buffer after checking its type and exact length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        check(
            bytes,
            MessageType::CookieReply,
            bytes.len() == COOKIE_REPLY_LEN,
        )?;
        Ok(Self { buffer })
    }

    /// The index of the handshake message this reply answers.
    pub fn receiver_index(&self) -> u32 {
        u32::from_le_bytes(array(self.buffer.as_ref(), field::COOKIE_RECEIVER))
    }

    /// The XChaCha20 nonce.
    pub fn nonce(&self) -> [u8; COOKIE_NONCE_LEN] {
        array(self.buffer.as_ref(), field::COOKIE_NONCE)
    }

    /// The encrypted cookie and its tag.
    pub fn encrypted_cookie(&self) -> [u8; MAC_LEN + TAG_LEN] {
        array(self.buffer.as_ref(), field::COOKIE_ENCRYPTED)
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..COOKIE_REPLY_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Writes the type and zero reserved bytes.
    pub fn init_header(&mut self) {
        self.buffer.as_mut()[field::TYPE].copy_from_slice(&MessageType::CookieReply.header());
    }

    /// Stores the receiver index.
    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::COOKIE_RECEIVER].copy_from_slice(&index.to_le_bytes());
    }

    /// Stores the nonce.
    pub fn set_nonce(&mut self, nonce: &[u8; COOKIE_NONCE_LEN]) {
        self.buffer.as_mut()[field::COOKIE_NONCE].copy_from_slice(nonce);
    }

    /// Stores the encrypted cookie and its tag.
    pub fn set_encrypted_cookie(&mut self, sealed: &[u8; MAC_LEN + TAG_LEN]) {
        self.buffer.as_mut()[field::COOKIE_ENCRYPTED].copy_from_slice(sealed);
    }
}

/// Transport data (type 4): a clear 16-byte header, then the ChaCha20-Poly1305 ciphertext
/// of the padded inner packet with its tag.
#[derive(Debug, Clone)]
pub struct Transport<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Transport<T> {
    /// Wraps a buffer without checking it; accessors panic if it is shorter than the header.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a received buffer after checking its type and that it holds at least a
    /// header and a tag.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        check(
            bytes,
            MessageType::Transport,
            bytes.len() >= TRANSPORT_MIN_LEN,
        )?;
        Ok(Self { buffer })
    }

    /// Our session index, chosen by us in the handshake.
    pub fn receiver_index(&self) -> u32 {
        u32::from_le_bytes(array(self.buffer.as_ref(), field::TRANSPORT_RECEIVER))
    }

    /// The sender's nonce counter.
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(array(self.buffer.as_ref(), field::TRANSPORT_COUNTER))
    }

    /// Ciphertext followed by the 16-byte tag.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::TRANSPORT_PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Transport<T> {
    /// Writes the type, receiver index and counter in one go.
    pub fn set_header(&mut self, receiver_index: u32, counter: u64) {
        let bytes = self.buffer.as_mut();
        bytes[field::TYPE].copy_from_slice(&MessageType::Transport.header());
        bytes[field::TRANSPORT_RECEIVER].copy_from_slice(&receiver_index.to_le_bytes());
        bytes[field::TRANSPORT_COUNTER].copy_from_slice(&counter.to_le_bytes());
    }

    /// Where the ciphertext goes.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::TRANSPORT_PAYLOAD..]
    }
}

/// IPv4 header fields the tunnel reads (RFC 791): minimum header, total length, addresses.
const IPV4_MIN_HEADER: usize = 20;
const IPV4_TOTAL_LEN: Range<usize> = 2..4;
const IPV4_SRC: Range<usize> = 12..16;
const IPV4_DST: Range<usize> = 16..20;
/// IPv6 fixed header fields (RFC 8200): header length, payload length, addresses.
const IPV6_HEADER: usize = 40;
const IPV6_PAYLOAD_LEN: Range<usize> = 4..6;
const IPV6_SRC: Range<usize> = 8..24;
const IPV6_DST: Range<usize> = 24..40;

/// What cryptokey routing needs from an inner IP packet: addresses and the length the
/// header claims (a decrypted packet carries up to 15 bytes of padding after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerIp {
    /// Source address: must be in the sending peer's allowed IPs.
    pub src: IpAddr,
    /// Destination address: picks the peer for an outbound packet.
    pub dst: IpAddr,
    /// The packet's length by its own header; never more than the bytes given.
    pub len: usize,
}

impl InnerIp {
    /// Reads the version, addresses and length of an IP packet.
    pub fn parse(packet: &[u8]) -> Result<Self, WireError> {
        let version = packet.first().ok_or(WireError::NotIp)? >> 4;
        let (src, dst, len) = match version {
            4 => {
                if packet.len() < IPV4_MIN_HEADER {
                    return Err(WireError::BadIpLength);
                }
                let src = Ipv4Addr::from(array::<4>(packet, IPV4_SRC));
                let dst = Ipv4Addr::from(array::<4>(packet, IPV4_DST));
                let len = usize::from(u16::from_be_bytes(array(packet, IPV4_TOTAL_LEN)));
                if len < IPV4_MIN_HEADER {
                    return Err(WireError::BadIpLength);
                }
                (IpAddr::V4(src), IpAddr::V4(dst), len)
            }
            6 => {
                if packet.len() < IPV6_HEADER {
                    return Err(WireError::BadIpLength);
                }
                let src = Ipv6Addr::from(array::<16>(packet, IPV6_SRC));
                let dst = Ipv6Addr::from(array::<16>(packet, IPV6_DST));
                let payload = usize::from(u16::from_be_bytes(array(packet, IPV6_PAYLOAD_LEN)));
                (IpAddr::V6(src), IpAddr::V6(dst), IPV6_HEADER + payload)
            }
            _ => return Err(WireError::NotIp),
        };
        if len > packet.len() {
            return Err(WireError::BadIpLength);
        }
        Ok(Self { src, dst, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built initiation: type 1, sender 0x04030201, noise bytes 0xAA, mac1 0x11,
    /// mac2 0x22.
    fn initiation_fixture() -> Vec<u8> {
        let mut bytes = vec![1, 0, 0, 0, 0x01, 0x02, 0x03, 0x04];
        bytes.extend([0xAA; 108]);
        bytes.extend([0x11; 16]);
        bytes.extend([0x22; 16]);
        bytes
    }

    #[test]
    fn initiation_fields_sit_where_wireguard_puts_them() {
        let bytes = initiation_fixture();
        let msg = Initiation::new_checked(&bytes[..]).unwrap();
        assert_eq!(msg.sender_index(), 0x0403_0201);
        assert_eq!(msg.noise(), &[0xAA; 108][..]);
        assert_eq!(msg.mac1(), [0x11; 16]);
        assert_eq!(msg.mac2(), [0x22; 16]);
        assert_eq!(msg.mac1_input().len(), 116);
        assert_eq!(msg.mac2_input().len(), 132);
    }

    #[test]
    fn initiation_written_through_the_view_matches_the_fixture() {
        let mut buf = [0u8; INITIATION_LEN];
        let mut msg = Initiation::new_unchecked(&mut buf[..]);
        msg.init_header();
        msg.set_sender_index(0x0403_0201);
        msg.noise_mut().fill(0xAA);
        msg.set_mac1(&[0x11; 16]);
        msg.set_mac2(&[0x22; 16]);
        assert_eq!(&buf[..], &initiation_fixture()[..]);
    }

    #[test]
    fn response_fields() {
        let mut bytes = vec![2, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0];
        bytes.extend([0xBB; 48]);
        bytes.extend([0x11; 16]);
        bytes.extend([0x22; 16]);
        let msg = Response::new_checked(&bytes[..]).unwrap();
        assert_eq!((msg.sender_index(), msg.receiver_index()), (5, 6));
        assert_eq!(msg.noise(), &[0xBB; 48][..]);
        assert_eq!(msg.mac1_input().len(), 60);
        assert_eq!(msg.mac2(), [0x22; 16]);

        let mut buf = [0u8; RESPONSE_LEN];
        let mut out = Response::new_unchecked(&mut buf[..]);
        out.init_header();
        out.set_sender_index(5);
        out.set_receiver_index(6);
        out.noise_mut().fill(0xBB);
        out.set_mac1(&[0x11; 16]);
        out.set_mac2(&[0x22; 16]);
        assert_eq!(&buf[..], &bytes[..]);
    }

    #[test]
    fn cookie_reply_fields() {
        let mut bytes = vec![3, 0, 0, 0, 9, 0, 0, 0];
        bytes.extend([0xCC; 24]);
        bytes.extend([0xDD; 32]);
        let msg = CookieReply::new_checked(&bytes[..]).unwrap();
        assert_eq!(msg.receiver_index(), 9);
        assert_eq!(msg.nonce(), [0xCC; 24]);
        assert_eq!(msg.encrypted_cookie(), [0xDD; 32]);

        let mut buf = [0u8; COOKIE_REPLY_LEN];
        let mut out = CookieReply::new_unchecked(&mut buf[..]);
        out.init_header();
        out.set_receiver_index(9);
        out.set_nonce(&[0xCC; 24]);
        out.set_encrypted_cookie(&[0xDD; 32]);
        assert_eq!(&buf[..], &bytes[..]);
    }

    #[test]
    fn transport_fields() {
        let mut bytes = vec![4, 0, 0, 0, 7, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0x80];
        bytes.extend([0xEE; 20]);
        let msg = Transport::new_checked(&bytes[..]).unwrap();
        assert_eq!(msg.receiver_index(), 7);
        assert_eq!(msg.counter(), 0x8000_0000_0000_0201);
        assert_eq!(msg.payload(), &[0xEE; 20][..]);

        let mut buf = vec![0u8; bytes.len()];
        let mut out = Transport::new_unchecked(&mut buf[..]);
        out.set_header(7, 0x8000_0000_0000_0201);
        out.payload_mut().fill(0xEE);
        assert_eq!(buf, bytes);
    }

    #[test]
    fn every_type_refuses_every_wrong_length() {
        let kinds = [
            (1u8, INITIATION_LEN),
            (2, RESPONSE_LEN),
            (3, COOKIE_REPLY_LEN),
            (4, TRANSPORT_MIN_LEN),
        ];
        for (kind, good) in kinds {
            for len in 0..good + 40 {
                let mut bytes = vec![0u8; len];
                if let Some(first) = bytes.first_mut() {
                    *first = kind;
                }
                let ok = match kind {
                    1 => Initiation::new_checked(&bytes[..]).is_ok(),
                    2 => Response::new_checked(&bytes[..]).is_ok(),
                    3 => CookieReply::new_checked(&bytes[..]).is_ok(),
                    _ => Transport::new_checked(&bytes[..]).is_ok(),
                };
                let expected = if kind == 4 { len >= good } else { len == good };
                assert_eq!(ok, expected, "type {kind} len {len}");
            }
        }
    }

    #[test]
    fn type_needs_zero_reserved_bytes() {
        assert_eq!(MessageType::of(&[4, 0, 0, 0]), Ok(MessageType::Transport));
        assert_eq!(
            MessageType::of(&[4, 0, 1, 0]),
            Err(WireError::UnknownType(0x0001_0004))
        );
        assert_eq!(
            MessageType::of(&[5, 0, 0, 0]),
            Err(WireError::UnknownType(5))
        );
        assert_eq!(MessageType::of(&[1, 0, 0]), Err(WireError::Truncated));
        let mut transport = [0u8; 40];
        transport[0] = 4;
        assert_eq!(
            Initiation::new_checked(&transport[..]).err(),
            Some(WireError::WrongType {
                expected: MessageType::Initiation,
                got: MessageType::Transport
            })
        );
    }

    #[test]
    fn inner_ipv4_and_ipv6() {
        let mut v4 = vec![
            0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        v4.extend([0u8; 4 + 12]); // 4 payload bytes, 12 bytes of padding
        let ip = InnerIp::parse(&v4).unwrap();
        assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(ip.len, 24);

        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend("2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend([0u8; 8]);
        let ip = InnerIp::parse(&v6).unwrap();
        assert_eq!(ip.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(ip.len, 48);

        assert_eq!(InnerIp::parse(&[]), Err(WireError::NotIp));
        assert_eq!(InnerIp::parse(&[0x10; 40]), Err(WireError::NotIp));
        assert_eq!(InnerIp::parse(&v4[..19]), Err(WireError::BadIpLength));
        assert_eq!(InnerIp::parse(&v4[..23]), Err(WireError::BadIpLength));
        assert_eq!(InnerIp::parse(&v6[..47]), Err(WireError::BadIpLength));
        let mut short_total = v4.clone();
        short_total[3] = 19;
        assert_eq!(InnerIp::parse(&short_total), Err(WireError::BadIpLength));
    }
}
