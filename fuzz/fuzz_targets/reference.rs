#![no_main]
//! Repository names and references never panic, and what parses is path-safe.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(name) = lasti::oci::RepoName::parse(text) {
            assert!(!name.as_str().contains(".."));
        }
        let _ = lasti::oci::Reference::parse(text);
    }
});
