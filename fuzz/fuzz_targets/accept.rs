#![no_main]
//! Accept headers never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lasti::oci::AcceptList::parse([text])
            .allows("application/vnd.oci.image.manifest.v1+json");
    }
});
