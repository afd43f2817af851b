//! Arbitrary text as a config file: `Config::parse` returns a value or a one-line error,
//! never panics. (A relative `private_key_file` is resolved against a directory that does
//! not exist, so no real file is read.)
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmtun::config::Config;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse(text, Path::new("/nonexistent-vmtun-fuzz/fuzz.toml")) {
        let line = e.to_string();
        assert!(!line.is_empty());
    }
});
