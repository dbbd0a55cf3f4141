#![no_main]
//! Manifests and indexes from a hostile upstream never panic the readers.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lasti::oci::manifest::ImageManifest::parse(data);
    let _ = lasti::oci::manifest::ImageIndex::parse(data);
    let _ = lasti::oci::media_type::sniff_manifest_type(data);
});
