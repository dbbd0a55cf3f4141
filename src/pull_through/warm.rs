//! Warming: pulling an image into the cache as a client would, before any
//! client needs it. The manifest goes through the usual path (so a tag is
//! offered to back-fill), then every blob of the image, or of the chosen
//! platforms of an index, is fetched once and verified; blobs already stored
//! are only touched, which keeps them at the young end of the eviction order.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use super::{Outcome, Proxy};
use crate::error::Error;
use crate::oci::manifest::{ImageIndex, ImageManifest};
use crate::oci::media_type::{self, DEFAULT_MANIFEST_ACCEPT};
use crate::oci::{AcceptList, Digest, ImageRef, Reference, RepoName};
use crate::upstream::{Caller, Upstream};

/// What warming one image did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Warmed {
    /// The manifest (or index) digest the reference named.
    pub digest: Digest,
    /// Blobs of the image (of the chosen platforms).
    pub blobs: usize,
    /// Of those, fetched from the upstream now.
    pub fetched: usize,
    /// Their bytes.
    pub fetched_bytes: u64,
}

impl Proxy {
    /// Pulls `image` into the cache; `platforms` (`linux/amd64`) limit an
    /// index to those children, and an empty list takes them all.
    pub async fn warm(&self, image: &ImageRef, platforms: &[String]) -> Result<Warmed, Error> {
        let (upstream, repo) = self.resolve(&image.name, None)?;
        let reference = Reference::parse(&image.reference)
            .map_err(|e| Error::ReferenceInvalid(e.to_string()))?;
        let accept = AcceptList::parse([DEFAULT_MANIFEST_ACCEPT]);
        let top = self
            .manifest(
                upstream,
                &repo,
                &reference,
                &accept,
                false,
                &Caller::lasti(),
            )
            .await?;
        let body = top.bytes().ok_or(Error::ManifestUnknown)?;
        let mut manifests = Vec::new();
        if media_type::is_index(top.media_type()) {
            let index = ImageIndex::parse(&body).ok_or_else(|| not_readable(upstream))?;
            for child in &index.manifests {
                if child.is_for(platforms) {
                    let by_digest = Reference::Digest(child.digest.clone());
                    let answer = self
                        .manifest(
                            upstream,
                            &repo,
                            &by_digest,
                            &accept,
                            false,
                            &Caller::lasti(),
                        )
                        .await?;
                    manifests.push(answer.bytes().ok_or(Error::ManifestUnknown)?);
                }
            }
        } else {
            manifests.push(body);
        }
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        for bytes in &manifests {
            let manifest = ImageManifest::parse(bytes).ok_or_else(|| not_readable(upstream))?;
            blobs.extend(manifest.blobs().map(|b| (b.digest.clone(), b.size)));
        }
        blobs.sort();
        blobs.dedup();
        let mut warmed = Warmed {
            digest: top.digest().clone(),
            blobs: blobs.len(),
            fetched: 0,
            fetched_bytes: 0,
        };
        for (digest, size) in &blobs {
            if self.warm_blob(upstream, &repo, digest).await? {
                warmed.fetched += 1;
                warmed.fetched_bytes += size;
            }
        }
        Ok(warmed)
    }

    /// Makes sure a blob is stored; `true` when it had to be fetched.
    async fn warm_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let answer = self
            .blob(upstream, repo, digest, None, false, &Caller::lasti())
            .await?;
        if answer.outcome == Outcome::Hit {
            return Ok(false);
        }
        // Follow the fill to its end: it verifies and stores the blob, and
        // an error here means it did not.
        if let Some(reader) = answer.reader {
            let mut stream = std::pin::pin!(reader.into_stream());
            while let Some(chunk) = stream.next().await {
                chunk.map_err(|e| Error::UpstreamUnavailable {
                    upstream: upstream.name().to_string(),
                    message: format!("blob {digest}: {e}"),
                })?;
            }
        }
        Ok(true)
    }
}

fn not_readable(upstream: &Upstream) -> Error {
    upstream.invalid("a manifest lasti cannot read".into())
}
