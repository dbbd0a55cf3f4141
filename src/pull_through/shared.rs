//! What replicas share through the bucket besides blobs: manifests by
//! digest and tag records. Reads are on the request path (one small `GET`
//! before the upstream is asked, skipped while the bucket is failing);
//! writes go in the background, after the upstream answered and the local
//! record is written, so a slow bucket never slows a pull: manifests are
//! owed and uploaded with the blobs (`uploader`), tag records written by a
//! bounded number of tasks.

use std::sync::Arc;

use crate::bucket::{Bucket, StoredManifest};
use crate::cache::index::{tag_key, TagRecord};
use crate::cache::Manifest;
use crate::oci::{media_type, Digest, RepoName, Tag};
use crate::upstream::{FetchedManifest, Upstream};

/// A tag, named as the local index and the bucket both need it.
#[derive(Debug, Clone)]
pub(super) struct TagRef {
    upstream: String,
    repo: RepoName,
    tag: String,
    /// When the request that resolves it began (seconds): a record
    /// confirmed since is as good as a fetch of its own.
    pub(super) asked_at: u64,
}

impl TagRef {
    pub(super) fn new(upstream: &Upstream, repo: &RepoName, tag: &Tag) -> TagRef {
        TagRef {
            upstream: upstream.name().to_string(),
            repo: repo.clone(),
            tag: tag.as_str().to_string(),
            asked_at: crate::cache::index::unix_now(),
        }
    }

    /// The local index's key.
    pub(super) fn key(&self) -> String {
        tag_key(&self.upstream, self.repo.as_str(), &self.tag)
    }
}

/// The record another replica wrote for `tag`, if the bucket has one.
/// Failures count as none: the upstream is asked instead.
pub(super) async fn shared_tag(bucket: Option<&Arc<Bucket>>, tag: &TagRef) -> Option<TagRecord> {
    let bucket = bucket?;
    match bucket
        .get_tag(&tag.upstream, tag.repo.as_str(), &tag.tag)
        .await
    {
        Ok(record) => record.filter(|r| !media_type::is_schema1(&r.media_type)),
        Err(err) => {
            tracing::debug!(error = %err, "cannot read a tag record from the object store");
            None
        }
    }
}

/// Writes a tag record to the bucket, in the background, when one of a
/// bounded number of places is free; else the record is not shared (the
/// next upstream answer for the tag writes a fresh one).
pub(super) fn share_tag(bucket: Option<&Arc<Bucket>>, tag: &TagRef, record: TagRecord) {
    let Some(bucket) = bucket.cloned() else {
        return;
    };
    let Some(place) = bucket.tag_write_place() else {
        tracing::debug!(
            tag = tag.key(),
            "tag records are being written at capacity; not shared"
        );
        return;
    };
    let tag = tag.clone();
    tokio::spawn(async move {
        let _place = place;
        let put = bucket.put_tag(&tag.upstream, tag.repo.as_str(), &tag.tag, &record);
        if let Err(err) = put.await {
            tracing::warn!(error = %err, "cannot write a tag record to the object store");
        }
    });
}

/// Owes the bucket a verified manifest: journaled in the background (a
/// short write), uploaded by the uploader.
pub(super) fn share_manifest(bucket: Option<&Arc<Bucket>>, manifest: &Arc<Manifest>) {
    let Some(bucket) = bucket.cloned() else {
        return;
    };
    let digest = manifest.digest.clone();
    tokio::spawn(async move { bucket.owe_manifest(&digest).await });
}

/// A manifest by digest from the bucket, as a registry answer to verify;
/// `None` when the bucket does not have it or cannot be read.
pub(super) async fn manifest_from_bucket(
    bucket: Option<&Arc<Bucket>>,
    digest: &Digest,
    limit: u64,
) -> Option<FetchedManifest> {
    match bucket?.get_manifest(digest, limit).await {
        Ok(Some(StoredManifest { bytes, media_type })) => Some(FetchedManifest {
            bytes,
            media_type,
            digest: Some(digest.clone()),
        }),
        Ok(None) => None,
        Err(err) => {
            tracing::debug!(%digest, error = %err, "cannot read a manifest from the object store");
            None
        }
    }
}
