//! Dropping what an operator names, now: tag records and stored objects.
//!
//! Unlike eviction, a purge does not spare what is being read: the file is
//! unlinked at once, and a client streaming it keeps its open file (and
//! any mapped window) to the end, after which the kernel frees the space.
//! Nothing new is served from it: the next request is a miss. Content is
//! addressed by digest, so a handle that outlives the purge still holds
//! the right bytes.

use std::sync::Arc;

use super::{Cache, Inner};
use crate::error::{Error, Result};
use crate::oci::Digest;

impl Cache {
    /// The digests of every stored manifest.
    pub async fn manifest_digests(&self) -> Result<Vec<Digest>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.manifest_digests())
            .await
            .map_err(|e| Error::storage("list manifests", e))?
    }

    /// Deletes the tag records of `keys`; the keys that were recorded. The
    /// next request for such a tag asks the upstream.
    pub async fn remove_tags(&self, keys: Vec<String>) -> Result<Vec<String>> {
        for key in &keys {
            self.inner.tags.invalidate(key);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.remove_tags(&keys))
            .await
            .map_err(|e| Error::storage("remove tags", e))?
    }

    /// Deletes stored blobs and manifests now, read or not; each removed,
    /// with the bytes its file held. A fill in progress for one of them
    /// is not stopped: it stores verified bytes when it ends.
    pub async fn remove_objects(&self, digests: Vec<Digest>) -> Result<Vec<(Digest, u64)>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.remove_objects(digests))
            .await
            .map_err(|e| Error::storage("remove objects", e))?
    }
}

impl Inner {
    /// Blocks. A file not yet indexed (just after a start) is removed too.
    fn remove_objects(&self, digests: Vec<Digest>) -> Result<Vec<(Digest, u64)>> {
        let mut removed = Vec::with_capacity(digests.len());
        for digest in digests {
            let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
            let charged = self.usage.forget(&digest);
            let on_disk = std::fs::metadata(self.store.path(&digest)).ok();
            self.manifests.invalidate(&digest);
            self.manifest_types.invalidate(&digest);
            self.open_blobs.forget(&digest);
            self.store
                .remove(&digest)
                .map_err(|e| Error::storage("remove a purged object", e))?;
            if let Some(meta) = on_disk {
                removed.push((digest, meta.len()));
            } else if charged.is_some() {
                removed.push((digest, 0));
            }
        }
        let digests: Vec<Digest> = removed.iter().map(|(d, _)| d.clone()).collect();
        self.index.remove_manifest_types(&digests)?;
        Ok(removed)
    }
}
