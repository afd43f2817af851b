//! The initiator, waiting for the answer to its initiation, fed arbitrary responses and
//! cookie replies: it must never panic, and must accept the unchanged valid answer.
//!
//! The first input byte picks the mode (the rest is `data`); a valid answer is made afresh
//! each run, as the initiator's ephemeral key and index are random:
//! - 0: `data` is the datagram, as is.
//! - 1: the responder's valid response XORed with `data` (bytes beyond it appended; with
//!   bit 7 set, truncated to `data.len()`).
//! - 2: a valid cookie reply (from the responder under load), mutated the same way.
//! - bit 6: the initiator's timers then run ahead (retransmits, with mac2 once it holds a
//!   cookie).
//!
//! A datagram with the length and type of a response gets the mac1 a sender knowing the
//! initiator's public key would write.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vmtun::noise::Inbound;
use vmtun_fuzz::{
    answer, feed, initiator, initiator_key, mutate, responder, responder_addr, run_timers,
    seal_mac1, start_handshake,
};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut i = initiator(now);
    let init = start_handshake(&mut i, now);
    let truncate = mode & 0x80 != 0;
    let (msg, valid) = match mode % 3 {
        0 => (data.to_vec(), None),
        kind => {
            let mut r = responder(now);
            if kind == 2 {
                r.set_under_load_threshold(0);
            }
            let valid = answer(&mut r, now, &init);
            (mutate(&valid, data, truncate), Some(valid))
        }
    };
    let mut msg = msg;
    seal_mac1(&mut msg, initiator_key());
    let result = feed(&mut i, now, responder_addr(), &msg);
    if Some(&msg) == valid.as_ref() {
        assert_eq!(result, Inbound::Consumed, "valid answer refused");
    }
    if mode & 0x40 != 0 {
        run_timers(&mut i, now);
    }
});
