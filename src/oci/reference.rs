//! The `<reference>` of a manifest URL: a tag such as `latest`, or a digest.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// The longest tag accepted, in characters, as the spec grammar allows.
pub const MAX_TAG_LEN: usize = 128;

/// Why a string is not a manifest reference; maps to `MANIFEST_UNKNOWN` or `DIGEST_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Breaks `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, or contains `..`.
    #[error("invalid tag")]
    InvalidTag,
    /// Has a `:`, so it is meant as a digest, but is not a valid one.
    #[error("invalid digest reference: {0}")]
    Digest(#[from] DigestError),
}

/// A validated tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` without `..`.
///
/// The spec grammar would allow `a..b`; lasti refuses it so that a tag can never look
/// like a parent-directory step once it becomes part of a cache key or path.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Validates `s` as a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bytes = s.as_bytes();
        let Some((&first, rest)) = bytes.split_first() else {
            return Err(ReferenceError::InvalidTag);
        };
        let head = first.is_ascii_alphanumeric() || first == b'_';
        let tail = rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !head || !tail || bytes.len() > MAX_TAG_LEN || s.contains("..") {
            return Err(ReferenceError::InvalidTag);
        }
        Ok(Self(s.to_owned()))
    }

    /// The tag clients mean when they name none.
    pub fn latest() -> Self {
        Self("latest".to_owned())
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// A tag, whose manifest may change upstream.
    Tag(Tag),
    /// A digest, whose manifest never changes and can be cached forever.
    Digest(Digest),
}

impl Reference {
    /// A reference with a `:` is a digest; anything else must be a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Ok(Self::Digest(Digest::parse(s)?))
        } else {
            Ok(Self::Tag(Tag::parse(s)?))
        }
    }

    /// True for a digest reference, whose content is immutable.
    pub fn is_digest(&self) -> bool {
        matches!(self, Self::Digest(_))
    }

    /// The digest, when this reference is one.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Self::Digest(d) => Some(d),
            Self::Tag(_) => None,
        }
    }

    /// The tag, when this reference is one.
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Self::Tag(t) => Some(t),
            Self::Digest(_) => None,
        }
    }

    /// The reference as it appears in the URL path.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tag(t) => t.as_str(),
            Self::Digest(d) => d.as_str(),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Tag> for Reference {
    fn from(tag: Tag) -> Self {
        Self::Tag(tag)
    }
}

impl From<Digest> for Reference {
    fn from(digest: Digest) -> Self {
        Self::Digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::test_support::is_path_safe;
    use proptest::prelude::*;

    #[test]
    fn tags_follow_the_grammar() {
        let longest = "a".repeat(MAX_TAG_LEN);
        for good in ["latest", "_x", "v1.2.3-rc_1", "A", longest.as_str()] {
            assert_eq!(Tag::parse(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(MAX_TAG_LEN + 1);
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "a..b",
            "a b",
            "a%2e",
            "a\\b",
            "a\0",
            "é",
            too_long.as_str(),
        ] {
            assert_eq!(Tag::parse(bad), Err(ReferenceError::InvalidTag), "{bad:?}");
        }
        assert_eq!(Tag::latest().to_string(), "latest");
    }

    #[test]
    fn colon_means_digest() {
        let d = Digest::sha256_of(b"m");
        let r = Reference::parse(d.as_str()).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.as_digest(), Some(&d));
        assert_eq!(r.to_string(), d.to_string());
        let t: Reference = "v1".parse().unwrap();
        assert!(!t.is_digest());
        assert_eq!(t.as_tag().map(Tag::as_str), Some("v1"));
        assert!(matches!(
            Reference::parse("latest:"),
            Err(ReferenceError::Digest(DigestError::Invalid(_)))
        ));
        assert!(matches!(
            Reference::parse("md5:00"),
            Err(ReferenceError::Digest(_))
        ));
        assert_eq!(Reference::parse(".."), Err(ReferenceError::InvalidTag));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = Reference::parse(&s);
        }

        #[test]
        fn parsed_references_are_path_safe(s in "[a-zA-Z0-9._:%/\\\\-]{0,40}") {
            if let Ok(r) = Reference::parse(&s) {
                prop_assert!(is_path_safe(r.as_str()));
            }
        }

        #[test]
        fn valid_tags_round_trip(s in "[a-zA-Z0-9_][a-zA-Z0-9_-]{0,20}(\\.[a-zA-Z0-9_-]{1,20}){0,4}") {
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(r.as_tag().map(Tag::as_str), Some(s.as_str()));
            prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        }
    }
}
