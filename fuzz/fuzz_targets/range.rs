#![no_main]
//! Range headers never panic and resolve inside the blob.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = lasti::oci::RangeSpec::parse(text) {
            if let Ok(r) = spec.resolve(1000) {
                assert!(r.start <= r.end && r.end < 1000);
            }
        }
    }
});
