//! Stored blobs kept open, and the smallest kept in memory, so a hit of a
//! hot blob costs no `open`, no `fstat` and no trip to the blocking pool
//! (nginx's `open_file_cache`). Image configs, small layers and signatures
//! are the most frequent hits and the cheapest to keep whole.
//!
//! An entry is dropped when its blob is evicted or found missing; a file
//! handle stays valid after its name is unlinked, and blobs are immutable,
//! so an entry is never wrong, only possibly one eviction late.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use crate::oci::Digest;

/// Most blobs kept open.
pub const OPEN_BLOBS: u64 = 1024;

/// The share of the descriptor limit that kept-open blobs may take at most,
/// below [`OPEN_BLOBS`] when the limit is small.
const LIMIT_SHARE: u64 = 16;

/// How many blobs are kept open under the process's current descriptor
/// limit: [`OPEN_BLOBS`], or a sixteenth of a smaller limit. The server's
/// open-file budget reserves this many descriptors.
pub fn kept_open() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    kept_under(limit)
}

fn kept_under(limit: u64) -> u64 {
    OPEN_BLOBS.min(limit / LIMIT_SHARE).max(1)
}

/// Blobs up to this size are also kept in memory (at most
/// `OPEN_BLOBS * IN_MEMORY_UP_TO` bytes in all).
pub const IN_MEMORY_UP_TO: u64 = 64 * 1024;

/// A stored blob, open.
#[derive(Debug)]
pub struct OpenBlob {
    /// The open file.
    pub file: Arc<File>,
    /// Its size.
    pub size: u64,
    /// The manifest media type, when the blob is a manifest.
    pub manifest_type: Option<Arc<str>>,
    /// The whole content, for a blob of at most [`IN_MEMORY_UP_TO`] bytes.
    pub content: Option<Bytes>,
}

/// The table of open blobs.
#[derive(Debug)]
pub struct OpenBlobs {
    table: moka::sync::Cache<Digest, Arc<OpenBlob>>,
}

impl Default for OpenBlobs {
    fn default() -> Self {
        OpenBlobs {
            table: moka::sync::Cache::new(kept_open()),
        }
    }
}

impl OpenBlobs {
    /// The open blob, if kept.
    pub fn get(&self, digest: &Digest) -> Option<Arc<OpenBlob>> {
        self.table.get(digest)
    }

    /// Keeps a blob open.
    pub fn insert(&self, digest: Digest, blob: Arc<OpenBlob>) {
        self.table.insert(digest, blob);
    }

    /// Forgets a blob (evicted, or its file vanished).
    pub fn forget(&self, digest: &Digest) {
        self.table.invalidate(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_descriptor_limit_keeps_fewer_blobs_open() {
        assert_eq!(kept_under(1_048_576), OPEN_BLOBS);
        assert_eq!(kept_under(700), 43);
        assert_eq!(kept_under(8), 1);
    }
}
