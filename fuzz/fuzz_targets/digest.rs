#![no_main]
//! Digests never panic; a parsed digest prints back to its input.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = lasti::oci::Digest::parse(text) {
            assert_eq!(d.to_string(), text);
        }
    }
});
