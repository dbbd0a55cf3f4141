//! Pure OCI distribution-spec types: names, references, digests, media types, ranges, challenges and the error body.
//!
//! Everything in here is validated once at the edge and then trusted by the rest of
//! lasti, so this module does no I/O and knows nothing of hyper or the disk. The only
//! outside vocabulary it borrows is `http::StatusCode`, for [`ErrorCode::status`].
//!
//! - [`digest`]: `sha256:<hex>` content addresses and a streaming [`Hasher`].
//! - [`name`]: repository names such as `library/ubuntu`.
//! - [`reference`]: the `<reference>` path segment, a [`Tag`] or a [`Digest`].
//! - [`media_type`]: manifest media types and sniffing a manifest of unknown type.
//! - [`accept`]: the client's `Accept` header, reduced to what lasti forwards and checks.
//! - [`error_code`]: the spec's error codes and the `{"errors":[...]}` body.
//! - [`range`]: single byte ranges for blob `Range` requests.
//! - [`challenge`]: upstream `WWW-Authenticate` challenges.
//! - `http_syntax` (private): the RFC 9110 tokens, quoted-strings and lists those parsers share.
//!
//! Names, tags and digests that parse are safe to use as path components: none of them
//! can contain `..`, `%`, `\` or NUL (property-tested in each file).

#![forbid(unsafe_code)]

pub mod accept;
pub mod challenge;
pub mod digest;
pub mod error_code;
mod http_syntax;
pub mod image_ref;
pub mod manifest;
pub mod media_type;
pub mod name;
pub mod range;
pub mod reference;

pub use accept::AcceptList;
pub use challenge::{Challenge, ChallengeError, Scheme};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error_code::{ErrorBody, ErrorCode, ErrorEntry};
pub use image_ref::ImageRef;
pub use name::{NameError, RepoName};
pub use range::{ByteRange, RangeError, RangeSpec};
pub use reference::{Reference, ReferenceError, Tag};

/// Helpers shared by the property tests of the parsers in this module.
#[cfg(test)]
pub(crate) mod test_support {
    /// True when `s` holds none of the sequences that could escape or confuse a path.
    pub fn is_path_safe(s: &str) -> bool {
        !s.contains("/..")
            && !s.contains("..")
            && !s.contains('%')
            && !s.contains('\\')
            && !s.contains('\0')
    }
}
