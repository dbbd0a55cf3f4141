//! The parts of image manifests and indexes that lasti reads: the blobs an
//! image references and the children of an index with their platforms.
//!
//! Deliberately minimal and lenient serde structs: the exact bytes are what
//! lasti stores and serves; these are only read to know what else to fetch
//! or push, and they accept both the OCI and the Docker schema 2 variants
//! with any unknown fields.

use serde::Deserialize;

use super::Digest;

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of what it points at.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// The platform, for an index entry.
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// Whether this index entry is for one of `platforms` (`os/arch` or
    /// `os/arch/variant`); an empty list takes every entry.
    pub fn is_for(&self, platforms: &[String]) -> bool {
        platforms.is_empty()
            || self
                .platform
                .as_ref()
                .is_some_and(|p| platforms.iter().any(|w| p.matches(w)))
    }
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Whether `wanted` (`os/arch` or `os/arch/variant`) names this platform.
    pub fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && (variant.is_none() || variant == self.variant.as_deref())
    }
}

/// An image manifest: its config and layers.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageManifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Parses a manifest body.
    pub fn parse(bytes: &[u8]) -> Option<ImageManifest> {
        serde_json::from_slice(bytes).ok()
    }

    /// Every blob: config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// An image index (or Docker manifest list).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageIndex {
    /// The child manifests.
    pub manifests: Vec<Descriptor>,
}

impl ImageIndex {
    /// Parses an index body.
    pub fn parse(bytes: &[u8]) -> Option<ImageIndex> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_and_oci_shapes() {
        let d = format!("sha256:{}", "a".repeat(64));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"x","digest":"{d}","size":3}},
            "layers":[{{"digest":"{d}","size":5,"urls":["u"]}}],"annotations":{{}}}}"#
        );
        let parsed = ImageManifest::parse(manifest.as_bytes()).unwrap();
        assert_eq!(parsed.blobs().count(), 2);
        assert_eq!(parsed.layers[0].size, 5);

        let index = format!(
            r#"{{"manifests":[{{"digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7","features":[]}}}}]}}"#
        );
        let parsed = ImageIndex::parse(index.as_bytes()).unwrap();
        let platform = parsed.manifests[0].platform.as_ref().unwrap();
        assert_eq!(platform.name(), "linux/arm/v7");
        assert!(platform.matches("linux/arm") && platform.matches("linux/arm/v7"));
        assert!(!platform.matches("linux/arm/v6") && !platform.matches("linux/amd64"));
        assert!(ImageManifest::parse(b"{}").is_none());

        let child = &parsed.manifests[0];
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(child.is_for(&[]), "no list takes every entry");
        assert!(child.is_for(&names(&["linux/amd64", "linux/arm"])));
        assert!(!child.is_for(&names(&["linux/amd64"])));
        let mut bare = child.clone();
        bare.platform = None;
        assert!(
            !bare.is_for(&names(&["linux/arm"])),
            "no platform, not chosen"
        );
    }
}
