//! Every zero-copy message view over arbitrary bytes: the checked constructors must
//! refuse or accept without panicking, and every accessor of an accepted view must work.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtun::wire::{
    CookieReply, HandshakeMessage, Initiation, InnerIp, MessageType, Response, Transport,
};

fn handshake(msg: &impl HandshakeMessage) {
    let _ = msg.sender_index();
    let _ = msg.mac1();
    let _ = msg.mac2();
    assert!(msg.mac2_input().len() > msg.mac1_input().len());
}

fuzz_target!(|data: &[u8]| {
    let kind = MessageType::of(data);
    if let Ok(Some(len)) = kind.map(MessageType::fixed_len) {
        assert!(len >= 4);
    }
    if let Ok(m) = Initiation::new_checked(data) {
        assert_eq!(kind, Ok(MessageType::Initiation));
        handshake(&m);
        let _ = m.noise();
        assert_eq!(m.as_bytes(), data);
    }
    if let Ok(m) = Response::new_checked(data) {
        assert_eq!(kind, Ok(MessageType::Response));
        handshake(&m);
        let _ = m.receiver_index();
        let _ = m.noise();
    }
    if let Ok(m) = CookieReply::new_checked(data) {
        assert_eq!(kind, Ok(MessageType::CookieReply));
        let _ = m.receiver_index();
        let _ = m.nonce();
        let _ = m.encrypted_cookie();
    }
    if let Ok(m) = Transport::new_checked(data) {
        assert_eq!(kind, Ok(MessageType::Transport));
        let _ = m.receiver_index();
        let _ = m.counter();
        let _ = m.payload();
    }
    if let Ok(ip) = InnerIp::parse(data) {
        assert!(ip.len <= data.len());
    }
});
