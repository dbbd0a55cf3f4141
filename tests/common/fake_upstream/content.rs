//! What the fake serves: random blobs, their digests, and OCI image
//! manifests that reference them.

use bytes::Bytes;
use rand::RngCore;
use sha2::{Digest as _, Sha256};

/// The media type manifests are served with.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `len` random bytes.
pub fn random_blob(len: usize) -> Bytes {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    Bytes::from(bytes)
}

/// An OCI image manifest referencing `config` and `layers`.
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Bytes {
    manifest_json(config, layers, "")
}

/// An OCI image manifest of at least `min_len` bytes (padded with an annotation).
pub fn padded_image_manifest(config: &[u8], layers: &[&[u8]], min_len: usize) -> Bytes {
    manifest_json(config, layers, &"x".repeat(min_len))
}

fn manifest_json(config: &[u8], layers: &[&[u8]], padding: &str) -> Bytes {
    let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({"mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len()});
    let layers: Vec<_> = layers
        .iter()
        .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l))
        .collect();
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers,
    });
    if !padding.is_empty() {
        manifest["annotations"] = serde_json::json!({ "padding": padding });
    }
    Bytes::from(serde_json::to_vec(&manifest).expect("manifest JSON"))
}
