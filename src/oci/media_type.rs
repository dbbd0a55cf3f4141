//! Manifest media types: the names lasti negotiates with, and a sniffer for bodies of unknown type.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index, the multi-platform list.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list, the multi-platform form of schema 2.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// A Docker schema 1 manifest, unsigned; obsolete, but still in old registries.
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// A Docker schema 1 manifest with its JWS signature; obsolete, but still in old registries.
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Raw bytes: the type lasti gives every blob.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Plain JSON, the type of OCI error bodies.
pub const JSON: &str = "application/json";

/// Every type that names a manifest or an index, modern ones first.
pub const MANIFEST_TYPES: [&str; 6] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
];

/// The `Accept` lasti sends upstream with every manifest request, whatever
/// the client accepts: the four modern types. Asking for all of them is what
/// keeps a distribution 2.x registry from converting a schema 2 image to
/// signed schema 1 (whose digest covers only its JWS payload); the client's
/// own `Accept` is matched against the answer locally. The OCI artifact
/// manifest is left out: it was dropped from the image spec before 1.1.0,
/// and artifacts are image manifests with an `artifactType`.
pub const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json,\
application/vnd.oci.image.index.v1+json,\
application/vnd.docker.distribution.manifest.v2+json,\
application/vnd.docker.distribution.manifest.list.v2+json";

/// Longest `mediaType` field trusted from a body, since it may end up in a header.
const MAX_SNIFFED_LEN: usize = 255;

/// The media type without its parameters or surrounding whitespace: `a/b; x=y` gives `a/b`.
pub fn essence(mt: &str) -> &str {
    mt.split_once(';').map_or(mt, |(head, _)| head).trim()
}

/// True for the multi-platform types (OCI index, Docker manifest list), whatever their case or parameters.
pub fn is_index(mt: &str) -> bool {
    let mt = essence(mt);
    mt.eq_ignore_ascii_case(OCI_INDEX) || mt.eq_ignore_ascii_case(DOCKER_MANIFEST_LIST)
}

/// True for the Docker schema 1 types, signed or not, whatever their case or
/// parameters: lasti refuses them, as their digest is not the hash of the
/// bytes served (signed) and no current client needs them.
pub fn is_schema1(mt: &str) -> bool {
    let mt = essence(mt);
    mt.eq_ignore_ascii_case(DOCKER_MANIFEST_V1)
        || mt.eq_ignore_ascii_case(DOCKER_MANIFEST_V1_SIGNED)
}

/// True for any manifest or index type, whatever its case or parameters.
pub fn is_manifest_type(mt: &str) -> bool {
    let mt = essence(mt);
    MANIFEST_TYPES.iter().any(|t| mt.eq_ignore_ascii_case(t))
}

/// The top-level fields that betray a manifest's type; everything else is skipped unread.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType")]
    media_type: Option<serde_json::Value>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde_json::Value>,
}

/// Guesses the type of a manifest served without one (fetched through `/blobs/`).
///
/// A plausible top-level `mediaType` wins; otherwise `manifests` means an OCI index,
/// `config` with `layers` an OCI manifest, and `schemaVersion: 1` a signed Docker v1
/// manifest. Returns `None` for a body that is not a JSON object or matches none of these.
pub fn sniff_manifest_type(body: &[u8]) -> Option<String> {
    // A struct also deserializes from a JSON array, so insist on an object first.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    if let Some(mt) = probe.media_type.as_ref().and_then(|v| v.as_str()) {
        if is_plausible(mt) {
            return Some(mt.to_owned());
        }
    }
    let inferred = if probe.manifests.is_some() {
        OCI_INDEX
    } else if probe.config.is_some() && probe.layers.is_some() {
        OCI_MANIFEST
    } else if probe.schema_version.as_ref().and_then(|v| v.as_u64()) == Some(1) {
        DOCKER_MANIFEST_V1_SIGNED
    } else {
        return None;
    };
    Some(inferred.to_owned())
}

/// A short, printable `type/subtype` that is safe to put in a `Content-Type` header.
fn is_plausible(mt: &str) -> bool {
    let printable = mt.bytes().all(|b| (b' '..=b'~').contains(&b));
    printable && mt.len() <= MAX_SNIFFED_LEN && essence(mt).contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_accept_is_the_four_modern_types() {
        assert_eq!(DEFAULT_MANIFEST_ACCEPT, MANIFEST_TYPES[..4].join(","));
    }

    #[test]
    fn classifies_types_ignoring_case_and_parameters() {
        assert!(is_index(OCI_INDEX));
        assert!(is_index(
            "Application/VND.docker.distribution.manifest.list.v2+json; charset=utf-8"
        ));
        assert!(!is_index(OCI_MANIFEST));
        for mt in MANIFEST_TYPES {
            assert!(is_manifest_type(mt));
        }
        assert!(!is_manifest_type(OCTET_STREAM));
        assert!(!is_manifest_type(JSON));
        assert!(is_schema1(DOCKER_MANIFEST_V1));
        assert!(is_schema1(
            "application/VND.docker.distribution.manifest.v1+prettyjws; x=y"
        ));
        for mt in &MANIFEST_TYPES[..4] {
            assert!(!is_schema1(mt));
        }
        assert_eq!(essence(" a/b ; q=1"), "a/b");
    }

    #[test]
    fn sniff_prefers_the_declared_type() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#;
        assert_eq!(
            sniff_manifest_type(body).as_deref(),
            Some(DOCKER_MANIFEST_V2)
        );
    }

    #[test]
    fn sniff_infers_from_shape() {
        let cases: [(&[u8], Option<&str>); 8] = [
            (br#"{"schemaVersion":2,"manifests":[]}"#, Some(OCI_INDEX)),
            (
                br#"  {"config":{"digest":"x"},"layers":[{}]}"#,
                Some(OCI_MANIFEST),
            ),
            (
                br#"{"schemaVersion":1,"fsLayers":[]}"#,
                Some(DOCKER_MANIFEST_V1_SIGNED),
            ),
            (
                br#"{"mediaType":"bad\r\nheader: x","manifests":[]}"#,
                Some(OCI_INDEX),
            ),
            (
                br#"{"mediaType":7,"config":{},"layers":[]}"#,
                Some(OCI_MANIFEST),
            ),
            (br#"{"config":{}}"#, None),
            (br#"[null,null,null,null,null]"#, None),
            (b"\x1f\x8b not json", None),
        ];
        for (body, want) in cases {
            assert_eq!(
                sniff_manifest_type(body).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        #[test]
        fn sniff_never_panics(body in any::<Vec<u8>>()) {
            let _ = sniff_manifest_type(&body);
        }

        #[test]
        fn declared_types_round_trip(mt in "[a-z]{1,10}/[a-z0-9.+-]{1,40}") {
            let body = serde_json::json!({ "schemaVersion": 2, "mediaType": mt, "layers": [] });
            let bytes = serde_json::to_vec(&body).unwrap();
            prop_assert_eq!(sniff_manifest_type(&bytes), Some(mt));
        }

        #[test]
        fn sniffed_types_are_header_safe(mt in any::<String>()) {
            let bytes = serde_json::to_vec(&serde_json::json!({ "mediaType": mt })).unwrap();
            if let Some(found) = sniff_manifest_type(&bytes) {
                prop_assert!(http::HeaderValue::from_str(&found).is_ok());
            }
        }
    }
}
