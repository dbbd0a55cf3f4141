//! One error type for the whole proxy. Each variant says where the fault came
//! from (the client, an upstream, or lasti itself) and whether trying again
//! could help; `server::response` turns it into the OCI error body in one place.

use std::time::Duration;

use http::StatusCode;

use crate::oci::ErrorCode;

/// Who caused an error: decides the status class and whether it is logged as ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A bad or unsatisfiable request: 4xx, logged at debug.
    Client,
    /// The upstream registry failed or refused: 4xx mirrored, or 502/504.
    Upstream,
    /// lasti itself (disk, store): 500, logged as an error.
    Internal,
}

/// Everything that can go wrong while answering a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The repository name breaks the distribution-spec grammar.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// The digest is malformed or uses an algorithm lasti does not support.
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    /// The reference is neither a valid tag nor a digest.
    #[error("invalid reference: {0}")]
    ReferenceInvalid(String),
    /// Neither the cache nor the upstream has this manifest.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// Neither the cache nor the upstream has this blob.
    #[error("blob unknown")]
    BlobUnknown,
    /// The upstream does not know the repository.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The request asks for something a pull-through cache does not do (pushes, deletes).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The Range header cannot be satisfied for a blob of this size. The
    /// blob exists: the answer must not say `BLOB_UNKNOWN`, or a client
    /// takes it for missing.
    #[error("range not satisfiable: the blob has {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's full size, for `Content-Range: bytes */size`.
        size: u64,
    },
    /// The Range header is malformed or asks for several ranges.
    #[error("unsupported Range header: {0}")]
    RangeInvalid(String),
    /// The client must authenticate (access mode `authenticated`).
    #[error("authentication required")]
    Unauthorized {
        /// The `WWW-Authenticate` challenge to send.
        challenge: String,
    },
    /// The upstream does not let this client (anonymous, or with the
    /// credential it sent) pull the repository: 401, with lasti's token
    /// challenge, so that the client asks for credentials.
    #[error("{0}")]
    ClientRefused(String),
    /// The client may not pull this repository (allow/deny lists).
    #[error("{0}")]
    Denied(String),
    /// The client is over its request rate, or lasti over its fetch cap.
    #[error("too many requests; retry later")]
    RateLimited {
        /// When to retry.
        retry_after: Duration,
    },
    /// lasti is serving as many blobs as its open-file budget allows; the
    /// client should come back shortly (503, never a 500).
    #[error("too many blobs being served; retry later")]
    Busy {
        /// When to retry.
        retry_after: Duration,
    },
    /// The stored manifest's type is not among those the client accepts.
    #[error("manifest media type {0} is not acceptable to the client")]
    NotAcceptable(String),
    /// The upstream refused access (private or missing repository, bad credentials).
    #[error("upstream {upstream} denied access: {message}")]
    UpstreamDenied {
        /// The upstream's configured name.
        upstream: String,
        /// What it said.
        message: String,
    },
    /// The upstream is rate limiting us.
    #[error("upstream {upstream} is rate limiting pulls")]
    UpstreamTooManyRequests {
        /// The upstream's configured name.
        upstream: String,
        /// How long it asked us to wait, passed on to the client.
        retry_after: Option<Duration>,
    },
    /// The upstream could not be reached or answered with a server error.
    #[error("upstream {upstream} unavailable: {message}")]
    UpstreamUnavailable {
        /// The upstream's configured name.
        upstream: String,
        /// What happened.
        message: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream {upstream} timed out: {message}")]
    UpstreamTimeout {
        /// The upstream's configured name.
        upstream: String,
        /// Which phase timed out.
        message: String,
    },
    /// The upstream sent something that breaks the protocol: wrong digest,
    /// wrong length, oversize manifest, bad redirect, foreign token realm.
    #[error("upstream {upstream} sent a bad response: {message}")]
    UpstreamInvalid {
        /// The upstream's configured name.
        upstream: String,
        /// What was wrong.
        message: String,
    },
    /// The upstream's referrers list could not be had and none is cached.
    /// Answered with 404, which tells clients to fall back to the referrers
    /// tag schema (`sha256-<hex>` tags), served like any other tag.
    #[error("referrers from {upstream} not available: {message}")]
    ReferrersUnavailable {
        /// The upstream's configured name.
        upstream: String,
        /// Why.
        message: String,
    },
    /// The shared object store failed or did not answer in time. A fill
    /// goes on to its next source; a client sees it only when every
    /// source failed.
    #[error("object store unavailable: {0}")]
    BucketUnavailable(String),
    /// Another replica could not be reached, did not answer in time, or
    /// broke off: it is left out for a while.
    #[error("peer {member} unavailable: {message}")]
    PeerDown {
        /// The member's address.
        member: String,
        /// What happened.
        message: String,
    },
    /// Another replica answered, but not with the blob: it is busy (its
    /// open-file budget, its fetch cap), failed, or ignored the range asked
    /// for. It stays a member: a busy owner is not a dead one.
    #[error("peer {member} did not serve the blob: {message}")]
    PeerRefused {
        /// The member's address.
        member: String,
        /// What it answered.
        message: String,
    },
    /// A peer request reached the replica that sent it (the member list
    /// names it twice, e.g. by a host name and by its address): refused at
    /// once, never waited on.
    #[error("peer {member} is this replica under another name")]
    PeerIsSelf {
        /// The name under which this replica reached itself.
        member: String,
    },
    /// This replica is shutting down and was asked, on its peer listener,
    /// for a blob it neither holds nor is fetching: the asker takes the
    /// next member in rank instead (sent as `421 Misdirected Request`).
    #[error("this replica is shutting down; ask the next in rank")]
    Leaving,
    /// The upstream is offline (its own switch or the whole process's):
    /// nothing is asked of it, and what is not held is not served.
    #[error("{upstream} is offline (lasti's offline mode): only what lasti holds is served")]
    Offline {
        /// The upstream, as configured.
        upstream: String,
    },
    /// The upstream failed again and again, and is skipped for a while
    /// (its circuit breaker is open): answered at once, as unreachable.
    #[error("{upstream} failed again and again and is skipped for {retry_in_secs} s more")]
    UpstreamSkipped {
        /// The upstream, as configured.
        upstream: String,
        /// Until one request tries it again.
        retry_in_secs: u64,
    },
    /// The local disk or metadata store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Another process holds the data directory: lasti refuses to start
    /// rather than share (or clean) another's files.
    #[error(
        "data directory {} is in use by another lasti process{}; stop it, or give this one its own --data-dir",
        dir.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    DataDirInUse {
        /// The directory.
        dir: std::path::PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
}

impl Error {
    /// Where the fault lies.
    pub fn origin(&self) -> Origin {
        use Error::*;
        match self {
            NameInvalid(_)
            | DigestInvalid(_)
            | ReferenceInvalid(_)
            | Unsupported(_)
            | RangeNotSatisfiable { .. }
            | RangeInvalid(_)
            | NotAcceptable(_)
            | Unauthorized { .. }
            | ClientRefused(_)
            | Denied(_)
            | RateLimited { .. }
            // Not the client's fault, but an answer to come back later, as
            // for a rate limit: logged at debug, its message sent as is.
            | Busy { .. }
            // What the operator asked for.
            | Offline { .. } => Origin::Client,
            ManifestUnknown
            | BlobUnknown
            | NameUnknown
            | UpstreamDenied { .. }
            | UpstreamTooManyRequests { .. }
            | UpstreamUnavailable { .. }
            | UpstreamTimeout { .. }
            | UpstreamInvalid { .. }
            | UpstreamSkipped { .. }
            | ReferrersUnavailable { .. }
            | BucketUnavailable(_)
            | PeerDown { .. }
            | PeerRefused { .. }
            | PeerIsSelf { .. }
            | Leaving => Origin::Upstream,
            Storage(_) | DataDirInUse { .. } => Origin::Internal,
        }
    }

    /// Whether the same request may succeed if tried again (before any byte went out).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::UpstreamUnavailable { .. } | Error::UpstreamTimeout { .. }
        )
    }

    /// The upstream that failed us, for the faults an operator should see
    /// as warnings: out of reach, too slow, broken answers, rate limits.
    /// `None` for answers that are normal traffic (unknown names, denials).
    pub fn faulty_upstream(&self) -> Option<&str> {
        match self {
            Error::UpstreamUnavailable { upstream, .. }
            | Error::UpstreamTimeout { upstream, .. }
            | Error::UpstreamInvalid { upstream, .. }
            | Error::UpstreamTooManyRequests { upstream, .. } => Some(upstream),
            _ => None,
        }
    }

    /// The OCI error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        use Error::*;
        match self {
            NameInvalid(_) => ErrorCode::NameInvalid,
            DigestInvalid(_) => ErrorCode::DigestInvalid,
            ReferenceInvalid(_)
            | ManifestUnknown
            | NotAcceptable(_)
            | ReferrersUnavailable { .. } => ErrorCode::ManifestUnknown,
            BlobUnknown => ErrorCode::BlobUnknown,
            NameUnknown => ErrorCode::NameUnknown,
            Unsupported(_) | RangeInvalid(_) | RangeNotSatisfiable { .. } => ErrorCode::Unsupported,
            Unauthorized { .. } | ClientRefused(_) => ErrorCode::Unauthorized,
            Denied(_) => ErrorCode::Denied,
            RateLimited { .. } => ErrorCode::TooManyRequests,
            Busy { .. } => ErrorCode::Unavailable,
            UpstreamDenied { .. } => ErrorCode::Denied,
            UpstreamTooManyRequests { .. } => ErrorCode::TooManyRequests,
            UpstreamUnavailable { .. }
            | UpstreamTimeout { .. }
            | UpstreamInvalid { .. }
            | BucketUnavailable(_)
            | PeerDown { .. }
            | PeerRefused { .. } => ErrorCode::Unavailable,
            PeerIsSelf { .. } => ErrorCode::Denied,
            Leaving | Offline { .. } | UpstreamSkipped { .. } => ErrorCode::Unavailable,
            Storage(_) | DataDirInUse { .. } => ErrorCode::Unknown,
        }
    }

    /// The HTTP status sent to the client.
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            ReferenceInvalid(_) => StatusCode::NOT_FOUND,
            RangeNotSatisfiable { .. } | RangeInvalid(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            NotAcceptable(_) => StatusCode::NOT_FOUND,
            UpstreamUnavailable { .. }
            | UpstreamInvalid { .. }
            | BucketUnavailable(_)
            | PeerDown { .. }
            | PeerRefused { .. } => StatusCode::BAD_GATEWAY,
            PeerIsSelf { .. } => StatusCode::LOOP_DETECTED,
            Leaving => StatusCode::MISDIRECTED_REQUEST,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            other => other.code().status(),
        }
    }

    /// A short, bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        use Error::*;
        match self {
            NameInvalid(_) => "name_invalid",
            DigestInvalid(_) => "digest_invalid",
            ReferenceInvalid(_) => "reference_invalid",
            ManifestUnknown => "manifest_unknown",
            BlobUnknown => "blob_unknown",
            NameUnknown => "name_unknown",
            Unsupported(_) => "unsupported",
            RangeNotSatisfiable { .. } => "range_not_satisfiable",
            RangeInvalid(_) => "range_invalid",
            Unauthorized { .. } => "unauthorized",
            ClientRefused(_) => "client_refused",
            Denied(_) => "denied",
            RateLimited { .. } => "rate_limited",
            Busy { .. } => "busy",
            NotAcceptable(_) => "not_acceptable",
            UpstreamDenied { .. } => "upstream_denied",
            UpstreamTooManyRequests { .. } => "upstream_rate_limited",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamInvalid { .. } => "upstream_invalid",
            ReferrersUnavailable { .. } => "referrers_unavailable",
            BucketUnavailable(_) => "bucket_unavailable",
            PeerDown { .. } => "peer_down",
            PeerRefused { .. } => "peer_refused",
            PeerIsSelf { .. } => "peer_is_self",
            Leaving => "leaving",
            Offline { .. } => "offline",
            UpstreamSkipped { .. } => "upstream_skipped",
            Storage(_) => "storage",
            DataDirInUse { .. } => "data_dir_in_use",
        }
    }

    /// Wraps an I/O failure of the cache.
    pub fn storage(context: &str, err: impl std::fmt::Display) -> Error {
        Error::Storage(format!("{context}: {err}"))
    }
}

/// The proxy's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_origin() {
        let up = "docker.io".to_string();
        let cases = [
            (Error::NameInvalid("x".into()), 400, "NAME_INVALID"),
            (Error::DigestInvalid("x".into()), 400, "DIGEST_INVALID"),
            (Error::ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
            (Error::BlobUnknown, 404, "BLOB_UNKNOWN"),
            (Error::Unsupported("push"), 405, "UNSUPPORTED"),
            (Error::RangeNotSatisfiable { size: 3 }, 416, "UNSUPPORTED"),
            (
                Error::UpstreamTooManyRequests {
                    upstream: up.clone(),
                    retry_after: None,
                },
                429,
                "TOOMANYREQUESTS",
            ),
            (
                Error::UpstreamDenied {
                    upstream: up.clone(),
                    message: "no".into(),
                },
                403,
                "DENIED",
            ),
            (
                Error::UpstreamUnavailable {
                    upstream: up.clone(),
                    message: "down".into(),
                },
                502,
                "UNAVAILABLE",
            ),
            (
                Error::UpstreamTimeout {
                    upstream: up,
                    message: "headers".into(),
                },
                504,
                "UNAVAILABLE",
            ),
            (
                Error::Busy {
                    retry_after: Duration::from_secs(1),
                },
                503,
                "UNAVAILABLE",
            ),
            (Error::Storage("disk".into()), 500, "UNKNOWN"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.code().as_str(), code, "{err}");
        }
    }

    #[test]
    fn only_transient_upstream_faults_retry() {
        let up = "x".to_string();
        assert!(Error::UpstreamTimeout {
            upstream: up.clone(),
            message: String::new()
        }
        .is_retryable());
        assert!(!Error::UpstreamDenied {
            upstream: up,
            message: String::new()
        }
        .is_retryable());
        assert!(!Error::ManifestUnknown.is_retryable());
    }

    #[test]
    fn an_upstream_out_of_reach_is_a_fault_an_unknown_name_is_not() {
        let down = Error::UpstreamUnavailable {
            upstream: "docker.io".into(),
            message: "connection refused".into(),
        };
        assert_eq!(down.faulty_upstream(), Some("docker.io"));
        assert_eq!(Error::ManifestUnknown.faulty_upstream(), None);
        let denied = Error::UpstreamDenied {
            upstream: "docker.io".into(),
            message: "no".into(),
        };
        assert_eq!(denied.faulty_upstream(), None);
    }
}
