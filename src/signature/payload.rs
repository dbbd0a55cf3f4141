//! What a cosign signature says and where it is kept: the
//! `sha256-<hex>.sig` tag beside the image, an OCI manifest whose every
//! layer is one signature (the simple-signing payload as the blob, the
//! signature of it in the layer's `dev.cosignproject.cosign/signature`
//! annotation), as cosign and containers/image (skopeo, podman) write it.

use base64::Engine;
use serde::Deserialize;

use crate::oci::Digest;

/// The media type of a signature layer (the payload).
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation of a signature layer that holds the signature, base64.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a container image signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The tag the signatures of `digest` are kept under (`sha256-<hex>.sig`).
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}.sig", digest.as_str().replacen(':', "-", 1))
}

/// One signature of a `.sig` manifest, its payload still to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The payload blob's digest.
    pub payload: Digest,
    /// The payload's size, as the manifest says.
    pub size: u64,
    /// The signature over the payload's bytes.
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<SignatureLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureLayer {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

/// The signatures a `.sig` manifest holds; layers of another type, or
/// without a readable signature, are not signatures and are left out.
pub fn signatures(manifest: &[u8]) -> Vec<Signed> {
    let Ok(manifest) = serde_json::from_slice::<SignatureManifest>(manifest) else {
        return Vec::new();
    };
    let base64 = base64::engine::general_purpose::STANDARD;
    manifest
        .layers
        .into_iter()
        .filter(|layer| layer.media_type == SIMPLE_SIGNING)
        .filter_map(|layer| {
            let signature = base64
                .decode(layer.annotations.get(SIGNATURE_ANNOTATION)?)
                .ok()?;
            Some(Signed {
                payload: Digest::parse(&layer.digest).ok()?,
                size: layer.size,
                signature,
            })
        })
        .collect()
}

/// What a payload claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The manifest digest it signs.
    pub digest: String,
    /// `critical.identity.docker-reference`: where it was signed for
    /// (containers/image writes host, repository and tag; cosign the
    /// repository with its host).
    pub reference: String,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Reads a simple-signing payload; `None` for anything else.
pub fn claim(payload: &[u8]) -> Option<Claim> {
    let payload: Payload = serde_json::from_slice(payload).ok()?;
    (payload.critical.kind == SIGNATURE_TYPE).then_some(Claim {
        digest: payload.critical.image.docker_manifest_digest,
        reference: payload.critical.identity.docker_reference,
    })
}

/// The repository path of a `docker-reference` (`host/team/app:tag` ->
/// `team/app`): without its registry host, tag or digest, as lasti
/// serves an image under another host than the one it was signed for.
pub fn repository_of(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    // A tag follows the last colon after the last slash.
    let name = match (name.rfind(':'), name.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &name[..colon],
        (Some(colon), None) => &name[..colon],
        _ => name,
    };
    // A first component with a dot or a colon, or `localhost`, is a host.
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_tag_of_a_digest() {
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(
            signature_tag(&digest),
            format!("sha256-{}.sig", "ab".repeat(32))
        );
    }

    #[test]
    fn a_sig_manifest_lists_its_signature_layers() {
        let payload = format!("sha256:{}", "1".repeat(64));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": payload, "size": 2},
            "layers": [
                {"mediaType": SIMPLE_SIGNING, "digest": payload, "size": 250,
                 "annotations": {SIGNATURE_ANNOTATION: "AQID"}},
                {"mediaType": SIMPLE_SIGNING, "digest": payload, "size": 250,
                 "annotations": {SIGNATURE_ANNOTATION: "not base64!"}},
                {"mediaType": "application/octet-stream", "digest": payload, "size": 1,
                 "annotations": {SIGNATURE_ANNOTATION: "AQID"}},
            ]
        });
        let found = signatures(manifest.to_string().as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].signature, vec![1, 2, 3]);
        assert_eq!(found[0].size, 250);
        assert!(signatures(b"not json").is_empty());
    }

    #[test]
    fn a_payload_claims_a_digest_for_a_reference() {
        let payload = serde_json::json!({
            "critical": {
                "identity": {"docker-reference": "127.0.0.1:5000/team/app:v1"},
                "image": {"docker-manifest-digest": "sha256:abc"},
                "type": SIGNATURE_TYPE
            },
            "optional": {"creator": "containers/image"}
        });
        let claim = claim(payload.to_string().as_bytes()).unwrap();
        assert_eq!(claim.digest, "sha256:abc");
        assert_eq!(repository_of(&claim.reference), "team/app");
        let other = serde_json::json!({"critical": {"identity": {"docker-reference": "x"},
            "image": {"docker-manifest-digest": "sha256:abc"}, "type": "something else"}});
        assert!(super::claim(other.to_string().as_bytes()).is_none());
    }

    #[test]
    fn repositories_of_references() {
        assert_eq!(
            repository_of("docker.io/library/alpine:3.20"),
            "library/alpine"
        );
        assert_eq!(repository_of("ghcr.io/org/app"), "org/app");
        assert_eq!(repository_of("localhost:5000/app@sha256:abc"), "app");
        assert_eq!(repository_of("localhost/app"), "app");
        assert_eq!(repository_of("team/app:v1"), "team/app");
        assert_eq!(repository_of("app"), "app");
    }
}
