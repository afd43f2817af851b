//! The responder fed arbitrary handshake messages that carry a valid mac1, so the fuzzer
//! gets past the cheap check into the handshake state machine (Noise IK's reading of an
//! initiation, the peer lookup, the timestamp replay check, the response). It must never
//! panic, and must answer the unchanged valid initiation, once.
//!
//! The first input byte picks the mode (the rest is `data`):
//! - bit 0 clear: `data` is the message; set: a valid initiation XORed with `data` (bytes
//!   beyond 148 appended; with bit 7 set, truncated to `data.len()`).
//! - bit 1: the responder is under load (threshold 0), so mac2 is checked and cookie
//!   replies are written.
//! - bit 6: the message is delivered a second time, then the timers run ahead.
//!
//! A message with the length and type of an initiation or a response gets the mac1 a
//! sender knowing the responder's public key would write.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vmtun::noise::Inbound;
use vmtun_fuzz::{
    feed, initiation, initiator_addr, mutate, responder, responder_key, run_timers, seal_mac1,
};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut r = responder(now);
    let under_load = mode & 0x02 != 0;
    if under_load {
        r.set_under_load_threshold(0);
    }
    let mut msg = if mode & 0x01 == 0 {
        data.to_vec()
    } else {
        mutate(initiation(), data, mode & 0x80 != 0)
    };
    seal_mac1(&mut msg, responder_key());
    let first = feed(&mut r, now, initiator_addr(), &msg);
    let answered = matches!(first, Inbound::Send(_));
    if msg == initiation() {
        assert!(answered, "valid initiation refused: {first:?}");
    }
    if mode & 0x40 != 0 {
        let again = feed(&mut r, now, initiator_addr(), &msg);
        if answered && !under_load {
            // Same timestamp: a replayed initiation never gets a second response.
            assert!(!matches!(again, Inbound::Send(_)), "replay answered");
        }
        run_timers(&mut r, now);
    }
});
