//! What the cache holds, image by image: the proxy's answer to "which images
//! do we have" (`lasti ls`, `GET /admin/cache`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Proxy;
use crate::error::Result;
use crate::oci::manifest::ImageManifest;
use crate::oci::media_type;
use crate::oci::{Digest, RepoName};

/// One tag the cache knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedImage {
    /// The upstream's configured name.
    pub upstream: String,
    /// The repository as the upstream names it.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest (or index) digest the tag named when last checked.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The image's size (config and layers), for a stored image manifest.
    pub image_size: Option<u64>,
    /// Unix seconds when the upstream last confirmed the tag.
    pub checked_at: u64,
    /// Unix seconds when the manifest was last served, if it is stored.
    pub last_use: Option<u64>,
    /// Whether the back-fill target holds it (`null` without back-fill).
    pub backfilled: Option<bool>,
}

impl Proxy {
    /// Every tag the cache knows, sorted by upstream, repository and tag.
    pub async fn cached_images(&self) -> Result<Vec<CachedImage>> {
        let mut images = Vec::new();
        for (key, record) in self.cache.tag_records().await? {
            let Some((upstream, rest)) = key.split_once(' ') else {
                continue;
            };
            let Some((repository, tag)) = rest.rsplit_once(':') else {
                continue;
            };
            // Read-only: a listing is no use of the image.
            let image_size = match self.cache.peek_manifest(&record.digest).await? {
                Some(m) if !media_type::is_index(&m.media_type) => {
                    ImageManifest::parse(&m.bytes).map(|p| p.blobs().map(|b| b.size).sum())
                }
                _ => None,
            };
            let last_use = self.cache.last_use(&record.digest).map(unix);
            let backfilled = match (&self.backfill, RepoName::parse(repository)) {
                (Some(b), Ok(repo)) => Some(b.holds(upstream, &repo, tag, &record.digest).await),
                _ => None,
            };
            images.push(CachedImage {
                upstream: upstream.to_string(),
                repository: repository.to_string(),
                tag: tag.to_string(),
                digest: record.digest,
                media_type: record.media_type,
                image_size,
                checked_at: record.checked_at,
                last_use,
                backfilled,
            });
        }
        images.sort_by(|a, b| {
            (&a.upstream, &a.repository, &a.tag).cmp(&(&b.upstream, &b.repository, &b.tag))
        });
        Ok(images)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
