#![no_main]
//! Request paths never panic in the router.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lasti::server::router::route(text);
    }
});
