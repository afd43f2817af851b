//! The protocol core fed arbitrary datagrams: a responder `Tunnel` with fixed keys
//! receives them from a fixed address and must never panic, whatever the bytes; its
//! timers may then be run far ahead.
//!
//! The first input byte picks the mode (the rest is `data`); with its bit 6 set the
//! responder's timers are then run ahead (retransmits and rekeys write initiations, whose
//! DH operations make those inputs ~20x slower, so only some inputs do it):
//! - 0: `data` is the datagram, as is.
//! - 1: a valid initiation from the configured peer, XORed with `data` (bytes beyond
//!   148 are appended; with bit 7 of the mode byte set, truncated to `data.len()`), so
//!   the fuzzer starts from messages that pass mac1 and decrypt.
//! - 2: a session is established first, then a valid transport message is mutated the
//!   same way and delivered, then `data` itself as one more datagram.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vmtun::noise::Inbound;
use vmtun_fuzz::{
    answer, feed, first_transport, initiation, initiator, initiator_addr, mutate, responder,
    run_timers, start_handshake,
};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut r = responder(now);
    let truncate = mode & 0x80 != 0;
    match mode % 3 {
        0 => {
            feed(&mut r, now, initiator_addr(), data);
        }
        1 => {
            feed(
                &mut r,
                now,
                initiator_addr(),
                &mutate(initiation(), data, truncate),
            );
        }
        _ => {
            // Handshake in memory, then a valid transport message to mutate.
            let mut i = initiator(now);
            let init = start_handshake(&mut i, now);
            let response = answer(&mut r, now, &init);
            let valid = first_transport(&mut i, now, &response);
            let mutated = mutate(&valid, data, truncate);
            let result = feed(&mut r, now, initiator_addr(), &mutated);
            if mutated == valid {
                assert!(matches!(result, Inbound::Deliver { .. }), "{result:?}");
            }
            feed(&mut r, now, initiator_addr(), data);
        }
    }
    if mode & 0x40 != 0 {
        run_timers(&mut r, now);
    }
});
