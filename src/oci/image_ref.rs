//! An image as people name it (`alpine:3.20`, `ghcr.io/org/app@sha256:...`),
//! split into the repository name lasti routes on and the reference, for the
//! warm list and `lasti warm`.

/// An image reference split for the registry API: `name` keeps any registry
/// prefix (lasti routes on it), `reference` is the tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `alpine`, `ghcr.io/org/app`.
    pub name: String,
    /// `latest`, `3.20`, `sha256:...`.
    pub reference: String,
}

impl ImageRef {
    /// Parses `name[:tag]` or `name@digest` (tag defaults to `latest`).
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let (name, reference) = match text.split_once('@') {
            Some((name, digest)) => (name, digest.to_string()),
            None => match text.rsplit_once(':') {
                // A colon inside the last path component is a tag; one before a
                // slash is a registry port.
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_string()),
                _ => (text, "latest".to_string()),
            },
        };
        if name.is_empty() || reference.is_empty() {
            return Err(format!("{text:?} is not an image reference"));
        }
        Ok(ImageRef {
            name: name.to_string(),
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let cases = [
            ("alpine", "alpine", "latest"),
            ("alpine:3.20", "alpine", "3.20"),
            ("ghcr.io/org/app:v1", "ghcr.io/org/app", "v1"),
            ("localhost:5001/app", "localhost:5001/app", "latest"),
            ("localhost:5001/app:2", "localhost:5001/app", "2"),
        ];
        for (text, name, reference) in cases {
            let parsed = ImageRef::parse(text).unwrap();
            assert_eq!(
                (parsed.name.as_str(), parsed.reference.as_str()),
                (name, reference),
                "{text}"
            );
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let parsed = ImageRef::parse(&format!("org/app@{digest}")).unwrap();
        assert_eq!(parsed.reference, digest);
        assert!(ImageRef::parse("app@").is_err());
    }
}
