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
/// The artifact type of a signature kept as an OCI 1.1 referrer of its
/// image (`cosign sign --registry-referrers-mode=oci-1-1`): a manifest
/// whose layers are signatures as in a `.sig` manifest.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
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

/// The media types of layers that are attachments to an image, not a
/// filesystem: cosign signatures, in-toto attestations (DSSE envelopes),
/// sigstore bundles.
const ATTACHMENT_LAYERS: [&str; 3] = [
    SIMPLE_SIGNING,
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
];

/// The configs an image manifest of a runnable image has.
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Whether a tag is where cosign keeps an image's attachments
/// (`sha256-<hex>.sig`, `.att`, `.sbom`): served without a signature of
/// its own, as it is what signs.
pub fn is_attachment_tag(tag: &str) -> bool {
    let Some((digest, kind)) = tag.rsplit_once('.') else {
        return false;
    };
    let hex = digest
        .strip_prefix("sha256-")
        .or_else(|| digest.strip_prefix("sha512-"));
    matches!(kind, "sig" | "att" | "sbom")
        && hex.is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
}

/// Whether a manifest is an attachment (a signature, attestation or SBOM
/// artifact) rather than an image anything could run: every layer is of an
/// attachment type, or it has an artifact type and no image config. Such
/// a manifest, asked for by digest, needs no signature of its own.
pub fn is_attachment(manifest: &[u8]) -> bool {
    let Ok(manifest) = serde_json::from_slice::<AnyManifest>(manifest) else {
        return false;
    };
    let attachment_layers = !manifest.layers.is_empty()
        && manifest
            .layers
            .iter()
            .all(|l| ATTACHMENT_LAYERS.contains(&l.media_type.as_str()));
    let image_config = manifest
        .config
        .as_ref()
        .is_some_and(|c| IMAGE_CONFIGS.contains(&c.media_type.as_str()));
    attachment_layers || (manifest.artifact_type.is_some() && !image_config)
}

#[derive(Deserialize)]
struct ReferrerList {
    #[serde(default)]
    manifests: Vec<Referrer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Referrer {
    digest: String,
    #[serde(default)]
    artifact_type: Option<String>,
}

/// The signature manifests a referrers list names (an OCI index whose
/// entries carry their `artifactType`).
pub fn signature_referrers(list: &[u8]) -> Vec<Digest> {
    let Ok(list) = serde_json::from_slice::<ReferrerList>(list) else {
        return Vec::new();
    };
    list.manifests
        .into_iter()
        .filter(|r| r.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT))
        .filter_map(|r| Digest::parse(&r.digest).ok())
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

/// Whether a `docker-reference` names `repo` (as the upstream names it):
/// the same path, or the same one-component name that Docker Hub keeps
/// under `library/`.
pub fn names_repository(reference: &str, repo: &str) -> bool {
    let named = repository_of(reference);
    named == repo || repo.strip_prefix("library/") == Some(named)
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
    fn attachments_are_told_from_images() {
        let digest = format!("sha256:{}", "1".repeat(64));
        let hex = "ab".repeat(32);
        assert!(is_attachment_tag(&format!("sha256-{hex}.sig")));
        assert!(is_attachment_tag(&format!("sha256-{hex}.att")));
        assert!(!is_attachment_tag("v1.sig"));
        assert!(!is_attachment_tag(&format!("sha256-{hex}.tar")));
        assert!(!is_attachment_tag("latest"));
        let manifest = |config: &str, layer: &str, artifact: Option<&str>| {
            let mut m = serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": config, "digest": digest, "size": 2},
                "layers": [{"mediaType": layer, "digest": digest, "size": 2}],
            });
            if let Some(artifact) = artifact {
                m["artifactType"] = artifact.into();
            }
            m.to_string().into_bytes()
        };
        let image_config = IMAGE_CONFIGS[0];
        let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(is_attachment(&manifest(image_config, SIMPLE_SIGNING, None)));
        assert!(is_attachment(&manifest(
            "application/vnd.oci.empty.v1+json",
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            Some("application/vnd.dev.cosign.artifact.sig.v1+json"),
        )));
        assert!(!is_attachment(&manifest(image_config, tar, None)));
        // An artifact type beside an image config is still an image.
        assert!(!is_attachment(&manifest(image_config, tar, Some("x/y"))));
        assert!(!is_attachment(br#"{"manifests": []}"#));
        assert!(!is_attachment(b"not json"));
    }

    #[test]
    fn a_referrers_list_names_its_signature_manifests() {
        let (a, b) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let list = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"digest": a, "artifactType": SIGNATURE_ARTIFACT, "size": 1},
                {"digest": b, "artifactType": "application/spdx+json", "size": 1},
                {"digest": "not a digest", "artifactType": SIGNATURE_ARTIFACT, "size": 1},
            ]
        });
        let found = signature_referrers(list.to_string().as_bytes());
        assert_eq!(found, vec![Digest::parse(&a).unwrap()]);
        assert!(signature_referrers(b"[]").is_empty());
    }

    #[test]
    fn references_name_repositories_with_or_without_their_host() {
        assert!(names_repository(
            "docker.io/library/alpine:3",
            "library/alpine"
        ));
        assert!(names_repository("docker.io/alpine", "library/alpine"));
        assert!(names_repository("ghcr.io/org/app", "org/app"));
        assert!(!names_repository("ghcr.io/org/app", "org/other"));
        assert!(!names_repository("docker.io/alpine", "alpine/library"));
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
