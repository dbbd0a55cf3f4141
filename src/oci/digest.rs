//! Content digests (`sha256:<hex>`): the identity of every blob and manifest lasti stores.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// Longest unsupported algorithm name kept in an error, so hostile input cannot bloat logs.
const MAX_ALGORITHM_ECHO: usize = 32;

/// The hash algorithms lasti can verify; the image spec registers exactly these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, used by nearly every registry.
    Sha256,
    /// SHA-512, registered by the image spec and accepted for completeness.
    Sha512,
}

impl Algorithm {
    /// The name that appears before the `:` of a digest.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// How many lowercase hex characters the encoded part must have.
    pub const fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Sha256, Self::Sha512]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// Why a string is not a digest lasti can verify; maps to `DIGEST_INVALID` at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not `algorithm:encoded`, or the encoded part has the wrong length or
    /// characters: what was wrong, said without echoing the input.
    #[error("{0}")]
    Invalid(&'static str),
    /// Well-formed, but with an algorithm lasti cannot verify (name capped at 32 chars).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
}

/// A validated digest: an algorithm lasti can verify and its lowercase hex encoding.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Digest {
    // The canonical `algorithm:hex` text, kept whole so `as_str` can borrow it.
    repr: String,
    algorithm: Algorithm,
}

impl Digest {
    /// Parses `algorithm ":" encoded`, accepting only sha256 and sha512 in lowercase hex.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, encoded) = s.split_once(':').ok_or(DigestError::Invalid(
            "not algorithm:encoded (e.g. sha256: and 64 hex characters)",
        ))?;
        if !is_algorithm(alg) {
            return Err(DigestError::Invalid(
                "the algorithm is not [a-z0-9]+ parts joined by + . _ or -",
            ));
        }
        if !is_encoded(encoded) {
            return Err(DigestError::Invalid(
                "the encoded part is empty or not [a-zA-Z0-9=_-]",
            ));
        }
        let Some(algorithm) = Algorithm::from_name(alg) else {
            let echo = alg.chars().take(MAX_ALGORITHM_ECHO).collect();
            return Err(DigestError::UnsupportedAlgorithm(echo));
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if encoded.len() != algorithm.hex_len() || !encoded.bytes().all(lower_hex) {
            return Err(DigestError::Invalid(match algorithm {
                Algorithm::Sha256 => "sha256 takes 64 lowercase hex characters",
                Algorithm::Sha512 => "sha512 takes 128 lowercase hex characters",
            }));
        }
        Ok(Self {
            repr: s.to_owned(),
            algorithm,
        })
    }

    /// The SHA-256 digest of `data`, for bodies small enough to hold in memory.
    pub fn sha256_of(data: &[u8]) -> Self {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(data);
        hasher.finish()
    }

    /// Which algorithm produced this digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding, without the `algorithm:` prefix; safe as a file name.
    pub fn hex(&self) -> &str {
        &self.repr[self.algorithm.as_str().len() + 1..]
    }

    /// The canonical `algorithm:hex` text, as it appears in URLs and headers.
    pub fn as_str(&self) -> &str {
        &self.repr
    }

    fn from_hex(algorithm: Algorithm, hex: &str) -> Self {
        Self {
            repr: format!("{}:{hex}", algorithm.as_str()),
            algorithm,
        }
    }
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*`, the spec's algorithm grammar.
fn is_algorithm(s: &str) -> bool {
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    s.split(['+', '.', '_', '-']).all(component)
}

/// `[a-zA-Z0-9=_-]+`, the spec's encoded grammar.
fn is_encoded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.repr)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A streaming hasher for one algorithm, so a blob is verified as it passes through.
#[derive(Clone)]
pub enum Hasher {
    /// Hashing with SHA-256.
    Sha256(sha2::Sha256),
    /// Hashing with SHA-512.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`, usually the algorithm of the digest being checked.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    /// Which algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Sha256(_) => Algorithm::Sha256,
            Self::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::from_hex(Algorithm::Sha256, &hex::encode(h.finalize())),
            Self::Sha512(h) => Digest::from_hex(Algorithm::Sha512, &hex::encode(h.finalize())),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Hasher").field(&self.algorithm()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::test_support::is_path_safe;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_serializes_the_string_form() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        let long = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(Digest::parse(&long).unwrap().algorithm(), Algorithm::Sha512);
        let d = Digest::sha256_of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:nothex\"").is_err());
    }

    #[test]
    fn rejects_malformed() {
        let upper = EMPTY_SHA256.to_uppercase().replacen("SHA256", "sha256", 1);
        let short = &EMPTY_SHA256[..EMPTY_SHA256.len() - 1];
        let long = format!("{EMPTY_SHA256}0");
        let listed = ": sha256 sha256: :abc SHA256:00 sha256:xyz a..b:00 sha256::00 sha512:00";
        let extra = ["", upper.as_str(), short, long.as_str()];
        for bad in listed.split(' ').chain(extra) {
            let err = Digest::parse(bad).unwrap_err();
            assert!(matches!(err, DigestError::Invalid(_)), "{bad:?}");
            assert!(
                !err.to_string().contains("invalid digest"),
                "says what is wrong"
            );
        }
    }

    #[test]
    fn a_malformed_digest_is_told_what_is_wrong() {
        let reason = |s: &str| Digest::parse(s).unwrap_err().to_string();
        assert!(reason("sha256").contains("algorithm:encoded"));
        assert!(reason("sha256:abc").contains("64 lowercase hex"));
        assert!(reason(&format!("sha512:{}", &EMPTY_SHA256[7..])).contains("128 lowercase hex"));
        assert!(reason("SHA256:00").contains("algorithm"));
        assert!(reason("sha256:").contains("encoded part"));
    }

    #[test]
    fn unsupported_algorithm_is_named_and_capped() {
        let unsupported = |name: &str| Err(DigestError::UnsupportedAlgorithm(name.into()));
        assert_eq!(Digest::parse("md5:abc"), unsupported("md5"));
        assert_eq!(Digest::parse("sha3+b58:Qm"), unsupported("sha3+b58"));
        let long = format!("{}:00", "a".repeat(100));
        assert_eq!(Digest::parse(&long), unsupported(&"a".repeat(32)));
    }

    #[test]
    fn hashes_known_vectors_incrementally() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY_SHA256);
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(
            h.finish().hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let sha512 = Hasher::new(Algorithm::Sha512).finish();
        let want = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce";
        assert!(sha512.hex().starts_with(want));
        assert_eq!(Digest::parse(sha512.as_str()), Ok(sha512));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = Digest::parse(&s);
        }

        #[test]
        fn near_misses_never_panic(s in "[a-z0-9+._:-]{0,12}:[a-fA-F0-9=_:-]{0,130}") {
            if let Ok(d) = Digest::parse(&s) {
                prop_assert_eq!(d.as_str(), s.as_str());
                prop_assert!(is_path_safe(d.as_str()));
            }
        }

        #[test]
        fn round_trips(hex in "[0-9a-f]{64}") {
            let s = format!("sha256:{hex}");
            let d: Digest = s.parse().unwrap();
            prop_assert_eq!(d.hex(), hex.as_str());
            prop_assert_eq!(Digest::parse(&format!("{d}")), Ok(d));
        }

        #[test]
        fn computed_digests_reparse_and_are_path_safe(data in any::<Vec<u8>>()) {
            let d = Digest::sha256_of(&data);
            prop_assert!(is_path_safe(d.as_str()));
            prop_assert_eq!(Digest::parse(d.as_str()), Ok(d));
        }
    }
}
