//! Why a fill was refused or stopped, typed so the caller can tell a bad
//! upstream (its bytes are refused, the fetch may be tried elsewhere) from
//! a fault of lasti's own (the cache's writer stopped).

use crate::oci::Digest;

/// A fill's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// The body ran past the length the upstream announced.
    #[error("sent more than the {announced} bytes it announced")]
    LongerThanAnnounced {
        /// The announced length.
        announced: u64,
    },
    /// The blob is over `cache.max_blob_size`.
    #[error("blob larger than cache.max_blob_size ({limit} bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The body ended before the announced length.
    #[error("ended after {written} of the {announced} bytes it announced")]
    ShorterThanAnnounced {
        /// Bytes received.
        written: u64,
        /// The announced length.
        announced: u64,
    },
    /// A source resumed (or took over) the blob with another size than the
    /// first announced.
    #[error("announced {now} bytes where the first source announced {announced}")]
    SizeChanged {
        /// What the first source announced.
        announced: u64,
        /// What this one announced.
        now: u64,
    },
    /// The bytes do not hash to the digest asked for.
    #[error("sent bytes that hash to {actual}, not to the digest asked for")]
    DigestMismatch {
        /// What they hash to.
        actual: Digest,
    },
    /// The cache's writer stopped (a task failed, or the fill was closed).
    #[error("the cache's writer stopped: {0}")]
    WriterStopped(&'static str),
}

impl FillError {
    /// Whether the upstream caused it (its bytes were wrong), rather than
    /// lasti.
    pub fn is_upstream_fault(&self) -> bool {
        !matches!(self, FillError::WriterStopped(_))
    }
}
