//! Pushes one image into the target project: blobs first (skip what the
//! target has, mount what another of its repositories has, else upload from
//! the cache file), then child manifests of an index, then the manifest by
//! tag, then a `HEAD` to verify. Every step is idempotent, so a job that
//! half ran finishes cheaply.

use std::sync::Arc;

use crate::backfill::store::{Job, JobStore};
use crate::cache::Manifest;
use crate::config::TargetConfig;
use crate::error::{Error, Result};
use crate::oci::manifest::{ImageIndex, ImageManifest};
use crate::oci::media_type::{self, DEFAULT_MANIFEST_ACCEPT};
use crate::oci::{AcceptList, Digest, RepoName};
use crate::pull_through::Proxy;
use crate::upstream::push::UploadPlan;
use crate::upstream::{Caller, Upstream};

/// What a job needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The proxy, to read manifests and blobs through the cache.
    pub proxy: Arc<Proxy>,
    /// The target registry.
    pub target: Arc<Upstream>,
    /// The durable store (blob homes for mounts).
    pub store: Arc<JobStore>,
    /// The target's settings.
    pub config: Arc<TargetConfig>,
}

/// One run of a job: the notes to record on success.
pub async fn run(ctx: &Context, job: &Job) -> Result<Vec<String>> {
    let upstream = ctx
        .proxy
        .upstreams()
        .by_name(&job.upstream)
        .ok_or_else(|| {
            Error::Storage(format!("upstream {} is no longer configured", job.upstream))
        })?
        .clone();
    let target_repo =
        RepoName::parse(&job.target_repo).map_err(|e| Error::NameInvalid(e.to_string()))?;
    let push = Push {
        ctx,
        upstream,
        repo: job.repo.clone(),
        target_repo,
    };
    let manifest = push.manifest(&job.digest).await?;
    let mut notes = Vec::new();
    let tagged = if media_type::is_index(&manifest.media_type) {
        push.index(&manifest, &job.tag, &mut notes).await?
    } else {
        push.image(&manifest).await?;
        push.tag(&manifest, &job.tag).await?;
        manifest.digest.clone()
    };
    push.verify(&job.tag, &tagged).await?;
    Ok(notes)
}

struct Push<'a> {
    ctx: &'a Context,
    upstream: Arc<Upstream>,
    repo: RepoName,
    target_repo: RepoName,
}

impl Push<'_> {
    /// A manifest through the cache (fetched upstream if it is not there).
    async fn manifest(&self, digest: &Digest) -> Result<Arc<Manifest>> {
        let accept = AcceptList::default();
        self.ctx
            .proxy
            .manifest_by_digest(&self.upstream, &self.repo, digest, &accept)
            .await
    }

    /// An index: its children (the configured platforms), then the index by
    /// tag; if the target refuses the index, the fallback platform by tag.
    async fn index(&self, index: &Manifest, tag: &str, notes: &mut Vec<String>) -> Result<Digest> {
        let parsed = ImageIndex::parse(&index.bytes).ok_or(Error::ManifestUnknown)?;
        let wanted = &self.ctx.config.platforms;
        let mut children = Vec::new();
        for child in &parsed.manifests {
            if !child.is_for(wanted) {
                continue;
            }
            let manifest = self.manifest(&child.digest).await?;
            self.image(&manifest).await?;
            self.put(&manifest, &manifest.digest.to_string()).await?;
            children.push((child.platform.as_ref().map(|p| p.name()), manifest));
        }
        if !wanted.is_empty() {
            notes.push(format!("pushed platforms {}", wanted.join(", ")));
        }
        match self.put(index, tag).await {
            Ok(()) => Ok(index.digest.clone()),
            Err(err) if self.ctx.config.index_fallback && refused(&err) => {
                let fallback = &self.ctx.config.fallback_platform;
                let (name, child) = children
                    .iter()
                    .find(|(p, _)| {
                        p.as_deref()
                            .is_some_and(|p| p.starts_with(fallback.as_str()))
                    })
                    .or(children.first())
                    .ok_or(err.clone())?;
                self.put(child, tag).await?;
                notes.push(format!(
                    "the target refused the index ({err}); tagged {} ({}) instead",
                    name.as_deref().unwrap_or("its first image"),
                    child.digest
                ));
                Ok(child.digest.clone())
            }
            Err(err) => Err(err),
        }
    }

    /// Every blob of an image manifest, then the manifest by digest.
    async fn image(&self, manifest: &Manifest) -> Result<()> {
        let parsed =
            ImageManifest::parse(&manifest.bytes).ok_or_else(|| Error::UpstreamInvalid {
                upstream: self.upstream.name().to_string(),
                message: format!(
                    "{} is not an image manifest lasti can push",
                    manifest.media_type
                ),
            })?;
        for blob in parsed.blobs() {
            self.blob(&blob.digest).await?;
        }
        Ok(())
    }

    async fn blob(&self, digest: &Digest) -> Result<()> {
        let target = &self.ctx.target;
        if target.blob_exists(&self.target_repo, digest).await? {
            return Ok(());
        }
        let store = Arc::clone(&self.ctx.store);
        let d = digest.clone();
        let home = tokio::task::spawn_blocking(move || store.blob_home(&d))
            .await
            .map_err(|e| Error::storage("blob home", e))??;
        if let Some(home) = home.filter(|h| *h != self.target_repo.as_str()) {
            if let Ok(from) = RepoName::parse(&home) {
                if target.mount_blob(&self.target_repo, digest, &from).await? {
                    return self.remember(digest).await;
                }
            }
        }
        let blob = self.local_blob(digest).await?;
        let plan = UploadPlan {
            monolithic_limit: self.ctx.config.monolithic_limit.as_u64(),
            chunk_size: self.ctx.config.chunk_size.as_u64(),
        };
        target
            .upload_blob(
                &self.target_repo,
                digest,
                Arc::clone(&blob.file),
                blob.size,
                plan,
            )
            .await?;
        self.ctx.proxy.cache().metrics().backfill_pushed(blob.size);
        self.remember(digest).await
    }

    /// The blob from the cache, fetched through the cache path when the
    /// client pulled only part of the image.
    async fn local_blob(&self, digest: &Digest) -> Result<crate::cache::StoredBlob> {
        let cache = self.ctx.proxy.cache();
        if let Some(blob) = cache.stored_blob(digest).await? {
            return Ok(blob);
        }
        let answer = match self
            .ctx
            .proxy
            .own_blob(&self.upstream, &self.repo, digest)
            .await
        {
            // A private image's blob (credentials = "client") is lasti's
            // to push, not to fetch: a client's pull brings it; try again.
            Err(Error::UpstreamDenied { .. }) if self.upstream.takes_client_credentials() => {
                return Err(Error::UpstreamUnavailable {
                    upstream: self.upstream.name().to_string(),
                    message: format!(
                        "{digest} of a private image is not cached yet; waiting for a client's pull"
                    ),
                })
            }
            other => other?,
        };
        if let Some(reader) = answer.reader {
            use futures_util::StreamExt;
            let mut stream = std::pin::pin!(reader.into_stream());
            while let Some(chunk) = stream.next().await {
                chunk.map_err(|e| Error::UpstreamUnavailable {
                    upstream: self.upstream.name().to_string(),
                    message: format!("fetching {digest} for back-fill: {e}"),
                })?;
            }
        }
        // The fill commits just after its last chunk is released.
        for _ in 0..50 {
            if let Some(blob) = cache.stored_blob(digest).await? {
                return Ok(blob);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(Error::Storage(format!(
            "{digest} was fetched but not stored"
        )))
    }

    async fn remember(&self, digest: &Digest) -> Result<()> {
        let store = Arc::clone(&self.ctx.store);
        let (d, repo) = (digest.clone(), self.target_repo.to_string());
        tokio::task::spawn_blocking(move || store.set_blob_home(&d, &repo))
            .await
            .map_err(|e| Error::storage("blob home", e))?
    }

    async fn put(&self, manifest: &Manifest, reference: &str) -> Result<()> {
        self.ctx
            .target
            .put_manifest(
                &self.target_repo,
                reference,
                manifest.bytes.clone(),
                &manifest.media_type,
            )
            .await
    }

    async fn tag(&self, manifest: &Manifest, tag: &str) -> Result<()> {
        self.put(manifest, tag).await
    }

    /// The tag at the target names the digest pushed.
    async fn verify(&self, tag: &str, expected: &Digest) -> Result<()> {
        let found = self
            .ctx
            .target
            .head_manifest(
                &Caller::lasti(),
                &self.target_repo,
                tag,
                DEFAULT_MANIFEST_ACCEPT,
            )
            .await?;
        match found.digest {
            Some(d) if d == *expected => Ok(()),
            other => Err(Error::UpstreamInvalid {
                upstream: "target".into(),
                message: format!(
                    "after the push, {}:{tag} names {} instead of {expected}",
                    self.target_repo,
                    other
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "no digest".into())
                ),
            }),
        }
    }
}

/// Whether a failed index `PUT` means "this registry does not take indexes".
fn refused(err: &Error) -> bool {
    matches!(
        err,
        Error::UpstreamInvalid { .. } | Error::UpstreamUnavailable { .. } | Error::ManifestUnknown
    )
}

/// Whether retrying a job after this error could help.
pub fn is_permanent(err: &Error) -> bool {
    matches!(
        err,
        Error::UpstreamDenied { .. }
            | Error::NameInvalid(_)
            | Error::NameUnknown
            | Error::UpstreamInvalid { .. }
            | Error::ManifestUnknown
            | Error::DigestInvalid(_)
    )
}
