//! Repository names (`library/ubuntu`), checked against the distribution-spec grammar before they reach a path or a cache key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest repository name accepted, in bytes, as the spec advises.
pub const MAX_NAME_LEN: usize = 255;

/// How much of a bad component an error repeats back, so hostile input stays out of logs.
const MAX_ECHO_CHARS: usize = 64;

/// Why a string is not a repository name; maps to `NAME_INVALID` at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("repository name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("repository name is {len} bytes long; the limit is {max}", max = MAX_NAME_LEN)]
    TooLong {
        /// The rejected name's length in bytes.
        len: usize,
    },
    /// The name has a leading, trailing or doubled `/`.
    #[error("repository name has an empty path component")]
    EmptyComponent,
    /// A component breaks `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
    #[error(
        "repository name component {component:?} must be lowercase letters and digits \
         joined by '.', '_', '__' or dashes"
    )]
    InvalidComponent {
        /// The offending component, cut to its first 64 characters.
        component: String,
    },
}

/// A validated repository name: lowercase components joined by `/`, at most 255 bytes.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// Validates `s` against the spec grammar (hand-written, no regex engine).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: s.len() });
        }
        for component in s.split('/') {
            if component.is_empty() {
                return Err(NameError::EmptyComponent);
            }
            if !is_component(component.as_bytes()) {
                let component = component.chars().take(MAX_ECHO_CHARS).collect();
                return Err(NameError::InvalidComponent { component });
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as text, as it appears in the URL path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components, in order; each is a safe path segment.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Docker Hub's form of an official image: `ubuntu` becomes `library/ubuntu`.
    ///
    /// Names with more than one component come back unchanged. The prefixed name can
    /// exceed [`MAX_NAME_LEN`] by the 8 bytes of `library/`; it is meant only for the
    /// upstream request, where Docker Hub itself adds the same prefix.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.0.contains('/') {
            self.clone()
        } else {
            Self(format!("library/{}", self.0))
        }
    }
}

/// True when `c` matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_component(c: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut rest = c;
    loop {
        let run = rest.iter().take_while(|b| alnum(b)).count();
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        if rest.is_empty() {
            return true;
        }
        let sep = rest.iter().take_while(|b| !alnum(b)).count();
        if !is_separator(&rest[..sep]) {
            return false;
        }
        rest = &rest[sep..];
    }
}

/// True for the separators the grammar allows between alphanumeric runs.
fn is_separator(sep: &[u8]) -> bool {
    matches!(sep, b"." | b"_" | b"__") || (!sep.is_empty() && sep.iter().all(|&b| b == b'-'))
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for RepoName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RepoName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::test_support::is_path_safe;
    use proptest::prelude::*;

    #[test]
    fn accepts_spec_examples() {
        let good = [
            "ubuntu",
            "library/ubuntu",
            "a/b/c/d",
            "my-org/my--app",
            "x.y_z__w",
            "0",
            "a1/b2",
        ];
        for name in good {
            assert_eq!(RepoName::parse(name).unwrap().as_str(), name);
        }
        assert!(RepoName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        let bad = [
            "Ubuntu", "a//b", "/a", "a/", "-a", "a-", "a..b", "a._b", "a___b", "a/../b", "..",
            "a%2fb", "a\\b", "a\0b", "a b", "ü", "a_-b",
        ];
        for name in bad {
            assert!(RepoName::parse(name).is_err(), "{name:?}");
        }
        assert_eq!(RepoName::parse(""), Err(NameError::Empty));
        assert_eq!(RepoName::parse("a//b"), Err(NameError::EmptyComponent));
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(RepoName::parse(&long), Err(NameError::TooLong { len: 256 }));
    }

    #[test]
    fn errors_echo_at_most_64_chars() {
        let name = format!("{}A", "a".repeat(200));
        let err = RepoName::parse(&name).unwrap_err();
        assert_eq!(
            err,
            NameError::InvalidComponent {
                component: "a".repeat(64)
            }
        );
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn library_prefix_only_for_single_components() {
        let single = RepoName::parse("ubuntu").unwrap();
        assert_eq!(single.with_library_prefix().as_str(), "library/ubuntu");
        let nested = RepoName::parse("org/app").unwrap();
        assert_eq!(nested.with_library_prefix(), nested);
        assert_eq!(nested.components().collect::<Vec<_>>(), ["org", "app"]);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let name: RepoName = serde_json::from_str("\"org/app\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"org/app\"");
        assert!(serde_json::from_str::<RepoName>("\"Org/App\"").is_err());
    }

    const VALID: &str = "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}){0,3}";

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = RepoName::parse(&s);
        }

        #[test]
        fn near_misses_are_path_safe(s in "[a-z0-9._/%\\\\-]{0,40}") {
            if let Ok(name) = RepoName::parse(&s) {
                prop_assert!(is_path_safe(name.as_str()));
                prop_assert!(name.components().all(|c| !c.is_empty() && c != "." && c != ".."));
            }
        }

        #[test]
        fn valid_names_round_trip(s in VALID) {
            let name = RepoName::parse(&s).unwrap();
            prop_assert_eq!(name.to_string(), s.clone());
            prop_assert_eq!(RepoName::parse(name.as_str()), Ok(name.clone()));
            prop_assert_eq!(name.components().collect::<Vec<_>>().join("/"), s);
            let prefixed = name.with_library_prefix();
            prop_assert_eq!(prefixed.with_library_prefix(), prefixed);
        }
    }
}
