#![no_main]
//! WWW-Authenticate challenges from a hostile upstream never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lasti::oci::Challenge::parse(text);
    }
});
