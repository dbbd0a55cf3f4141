//! Manifests and tag records in the shared store, so that a replica can
//! answer what another resolved without asking the upstream.
//!
//! A manifest is immutable under its digest,
//! `<prefix>manifests/sha256/<hex>`, its media type the object's content
//! type; a replica that reads it verifies it like a registry's answer. A
//! tag record (what the upstream last said a tag names, and when) is JSON
//! under `<prefix>tags/<upstream>/<repo>/_tags/<tag>`: `_tags` cannot be a
//! repository component (those start with a letter or digit), so no
//! repository's records overlap another's. Both are small and read whole,
//! within the bucket timeout.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, PutOptions, PutPayload};

use super::{unavailable, Bucket, Pending};
use crate::cache::index::TagRecord;
use crate::cache::Manifest;
use crate::error::Result;
use crate::oci::Digest;

/// The largest tag record read (a digest, a media type, two numbers).
const TAG_RECORD_LIMIT: u64 = 4096;

/// A manifest's bytes and the media type it was stored with.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// The object's content type, when the store kept it.
    pub media_type: Option<String>,
}

impl Bucket {
    /// Where a manifest lives in the bucket.
    pub fn manifest_key(&self, digest: &Digest) -> Path {
        self.content_key("manifests", digest)
    }

    /// Where a tag's record lives in the bucket.
    pub fn tag_key(&self, upstream: &str, repo: &str, tag: &str) -> Path {
        Path::from(format!("{}tags/{upstream}/{repo}/_tags/{tag}", self.prefix))
    }

    /// A manifest by digest, at most `limit` bytes, or `None`.
    pub async fn get_manifest(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<StoredManifest>> {
        let key = self.manifest_key(digest);
        let found = self.get_small("manifest_get", &key, limit).await?;
        Ok(found.map(|(bytes, attributes)| StoredManifest {
            bytes,
            media_type: attributes
                .get(&Attribute::ContentType)
                .map(|v| v.as_ref().to_string()),
        }))
    }

    /// Stores a verified manifest under its digest, and settles it in the
    /// journal (it was owed with [`Bucket::owe_manifest`]).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        let item = Pending::Manifest(manifest.digest.clone());
        let key = self.manifest_key(&manifest.digest);
        let attributes =
            Attributes::from_iter([(Attribute::ContentType, manifest.media_type.clone())]);
        let payload = PutPayload::from(manifest.bytes.clone());
        self.put_small("manifest_put", &key, payload, attributes)
            .await?;
        self.note(move |j| j.settle(&item)).await;
        Ok(())
    }

    /// Removes a purged manifest.
    pub async fn remove_manifest(&self, digest: &Digest) -> Result<()> {
        self.delete(&self.manifest_key(digest)).await
    }

    /// Removes a purged tag's record: the next replica to be asked for the
    /// tag asks the upstream.
    pub async fn remove_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<()> {
        self.delete(&self.tag_key(upstream, repo, tag)).await
    }

    /// What another replica recorded for a tag, or `None`. A record that
    /// cannot be read as one counts as none.
    pub async fn get_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>> {
        let key = self.tag_key(upstream, repo, tag);
        let Some((bytes, _)) = self.get_small("tag_get", &key, TAG_RECORD_LIMIT).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::warn!(%key, error = %e, "ignoring an unreadable tag record in the object store");
                Ok(None)
            }
        }
    }

    /// Records what the upstream said a tag names, for the other replicas.
    pub async fn put_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        record: &TagRecord,
    ) -> Result<()> {
        let key = self.tag_key(upstream, repo, tag);
        let json = serde_json::to_vec(record).expect("a tag record serializes");
        let attributes = Attributes::from_iter([(Attribute::ContentType, "application/json")]);
        self.put_small("tag_put", &key, PutPayload::from(json), attributes)
            .await
    }

    /// A small object whole, with its attributes; `None` when missing or
    /// larger than `limit`.
    async fn get_small(
        &self,
        op: &str,
        key: &Path,
        limit: u64,
    ) -> Result<Option<(Bytes, Attributes)>> {
        let read = async {
            let result = self.store.get_opts(key, GetOptions::default()).await?;
            if result.meta.size > limit {
                return Ok(None);
            }
            let attributes = result.attributes.clone();
            let bytes = result.bytes().await?;
            Ok(Some((bytes, attributes)))
        };
        Ok(self.look_up(op, read).await?.flatten())
    }

    /// One `PUT` of a small object, bounded by the timeout and counted.
    async fn put_small(
        &self,
        op: &str,
        key: &Path,
        payload: PutPayload,
        attributes: Attributes,
    ) -> Result<()> {
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let put = self.store.put_opts(key, payload, options);
        let put = async { put.await.map(drop).map_err(unavailable) };
        self.store_within(op, put).await
    }
}
