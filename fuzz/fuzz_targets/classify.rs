//! The cutover classifier fed arbitrary Ethernet frames: `Classifier::verdict` must never
//! panic, and a frame it calls native must be what the cutover relies on: from the
//! gateway's MAC, to an address in the subnet it names, from outside our subnets, and no
//! longer native for that subnet once it is no longer watched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtun::cutover::classify::{ETHERNET_HEADER_LEN, Verdict};
use vmtun_fuzz::{GATEWAY_MAC, classifier};

fuzz_target!(|frame: &[u8]| {
    let c = classifier();
    let verdict = c.verdict(frame);
    assert_eq!(c.classify(frame), verdict.native_subnet());
    if frame.len() < ETHERNET_HEADER_LEN {
        assert_eq!(verdict, Verdict::Truncated);
    }
    if let Verdict::Native { subnet, src, dst } = verdict {
        assert_eq!(frame[6..12], GATEWAY_MAC);
        assert!(subnet.contains(&dst), "{dst} outside {subnet}");
        assert!(
            !c.subnets().iter().any(|n| n.contains(&src)),
            "{src} is ours"
        );
        let mut done = c.clone();
        done.stop_watching(subnet);
        assert_ne!(done.classify(frame), Some(subnet));
    }
});
