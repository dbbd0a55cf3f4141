#![no_main]
//! Repository names, references and image references (`name:tag`,
//! `name@digest`, as the warm list takes them) never panic, and what parses
//! is path-safe.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(name) = lasti::oci::RepoName::parse(text) {
            assert!(!name.as_str().contains(".."));
        }
        let _ = lasti::oci::Reference::parse(text);
        if let Ok(image) = lasti::oci::ImageRef::parse(text) {
            assert!(!image.name.is_empty() && !image.reference.is_empty());
        }
    }
});
