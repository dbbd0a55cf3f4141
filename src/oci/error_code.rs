//! The spec's error codes and the `{"errors":[...]}` body, both for lasti's own errors and for reading an upstream's.

use std::fmt;

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The error codes of the distribution spec, plus `UNAVAILABLE` for upstream failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`: the blob is not in the repository.
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID`: the upload was bad (push side; kept for completeness).
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN`: no such upload session (push side).
    BlobUploadUnknown,
    /// `DIGEST_INVALID`: a digest is malformed or the content does not match it.
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN`: a manifest refers to a missing blob.
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID`: the manifest could not be parsed or verified.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`: no manifest under that tag or digest.
    ManifestUnknown,
    /// `NAME_INVALID`: the repository name breaks the grammar.
    NameInvalid,
    /// `NAME_UNKNOWN`: the repository does not exist.
    NameUnknown,
    /// `SIZE_INVALID`: a declared length does not match the content.
    SizeInvalid,
    /// `UNAUTHORIZED`: the client must authenticate.
    Unauthorized,
    /// `DENIED`: the client may not access the resource.
    Denied,
    /// `UNSUPPORTED`: the operation is not supported (lasti is pull-only).
    Unsupported,
    /// `TOOMANYREQUESTS`: the client, or lasti upstream, is rate limited.
    TooManyRequests,
    /// `UNAVAILABLE`: the upstream failed or could not be reached.
    Unavailable,
    /// `UNKNOWN`: an internal error, or an upstream code lasti does not know.
    Unknown,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and lookup.
    pub const ALL: [ErrorCode; 16] = [
        Self::BlobUnknown,
        Self::BlobUploadInvalid,
        Self::BlobUploadUnknown,
        Self::DigestInvalid,
        Self::ManifestBlobUnknown,
        Self::ManifestInvalid,
        Self::ManifestUnknown,
        Self::NameInvalid,
        Self::NameUnknown,
        Self::SizeInvalid,
        Self::Unauthorized,
        Self::Denied,
        Self::Unsupported,
        Self::TooManyRequests,
        Self::Unavailable,
        Self::Unknown,
    ];

    /// The code as it appears on the wire, e.g. `BLOB_UNKNOWN`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status lasti answers with when it reports this code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BlobUnknown
            | Self::ManifestUnknown
            | Self::NameUnknown
            | Self::BlobUploadUnknown => StatusCode::NOT_FOUND,
            Self::DigestInvalid
            | Self::NameInvalid
            | Self::ManifestInvalid
            | Self::SizeInvalid
            | Self::BlobUploadInvalid
            | Self::ManifestBlobUnknown => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code named by `s`, ignoring ASCII case, or `None` if the spec has no such code.
    pub fn from_code_str(s: &str) -> Option<ErrorCode> {
        Self::ALL
            .into_iter()
            .find(|code| code.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an error body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// The code as sent; kept as text so an upstream's unknown codes still parse.
    pub code: String,
    /// A human-readable message; optional in the spec, so empty when absent.
    #[serde(default)]
    pub message: String,
    /// Arbitrary extra JSON, omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl ErrorEntry {
    /// The entry's code, with codes lasti does not know read as [`ErrorCode::Unknown`].
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_code_str(&self.code).unwrap_or(ErrorCode::Unknown)
    }
}

/// The `{"errors":[...]}` body every failed registry response carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The errors, most important first.
    pub errors: Vec<ErrorEntry>,
}

impl ErrorBody {
    /// A body with a single error and no detail.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let entry = ErrorEntry {
            code: code.as_str().to_owned(),
            message: message.into(),
            detail: None,
        };
        Self {
            errors: vec![entry],
        }
    }

    /// Adds `detail` to the first error, for structured context such as the offending digest.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        if let Some(first) = self.errors.first_mut() {
            first.detail = Some(detail);
        }
        self
    }

    /// The body as JSON bytes, encoded by serde so messages are always escaped.
    pub fn to_json(&self) -> Vec<u8> {
        // Encoding strings and JSON values cannot fail; the fallback only avoids a panic path.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"errors":[{"code":"UNKNOWN","message":"unencodable error"}]}"#.to_vec()
        })
    }

    /// Reads an upstream's error body; `None` if it is not one.
    pub fn parse(body: &[u8]) -> Option<ErrorBody> {
        serde_json::from_slice(body).ok()
    }

    /// The first error's code, which is what decides how lasti reacts; `None` if there are no errors.
    pub fn first_code(&self) -> Option<ErrorCode> {
        self.errors.first().map(ErrorEntry::error_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_round_trip_and_map_to_statuses() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code_str(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(
            ErrorCode::from_code_str("blob_unknown"),
            Some(ErrorCode::BlobUnknown)
        );
        assert_eq!(ErrorCode::from_code_str("NOPE"), None);
        assert_eq!(
            ErrorCode::ManifestBlobUnknown.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(ErrorCode::BlobUploadUnknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ErrorCode::Unsupported.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(ErrorCode::TooManyRequests.status().as_u16(), 429);
        assert_eq!(ErrorCode::Unavailable.status().as_u16(), 503);
        assert_eq!(ErrorCode::Unknown.status().as_u16(), 500);
    }

    #[test]
    fn builds_the_wire_form() {
        let body = ErrorBody::new(ErrorCode::ManifestUnknown, "manifest \"x\" unknown");
        let json: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        let want = serde_json::json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest \"x\" unknown"}]});
        assert_eq!(json, want);
        let detailed = body.with_detail(serde_json::json!({"tag": "x"}));
        assert!(String::from_utf8(detailed.to_json())
            .unwrap()
            .contains(r#""detail":{"tag":"x"}"#));
    }

    #[test]
    fn reads_upstream_bodies() {
        let hub = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"x","Action":"pull"}]}]}"#;
        let body = ErrorBody::parse(hub).unwrap();
        assert_eq!(body.first_code(), Some(ErrorCode::Unauthorized));
        let odd = ErrorBody::parse(br#"{"errors":[{"code":"QUOTA_EXCEEDED"}]}"#).unwrap();
        assert_eq!(odd.first_code(), Some(ErrorCode::Unknown));
        assert_eq!(
            ErrorBody::parse(br#"{"errors":[]}"#).unwrap().first_code(),
            None
        );
        assert_eq!(ErrorBody::parse(b"<html>502</html>"), None);
        assert_eq!(ErrorBody::parse(br#"{"error":"x"}"#), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in any::<Vec<u8>>()) {
            let _ = ErrorBody::parse(&body);
        }

        #[test]
        fn bodies_round_trip(index in 0..ErrorCode::ALL.len(), message in any::<String>()) {
            let code = ErrorCode::ALL[index];
            let body = ErrorBody::new(code, message);
            let parsed = ErrorBody::parse(&body.to_json()).unwrap();
            prop_assert_eq!(parsed.first_code(), Some(code));
            prop_assert_eq!(parsed, body);
        }
    }
}
