//! Blobs: a hit streams the stored file; a miss joins or starts the one fill
//! for that digest and streams from it while it is written and verified.
//!
//! The fill runs in its own task, fed from the upstream. When the upstream
//! connection breaks or stalls mid-body, the fill resumes with a `Range`
//! request from the byte it has (bounded retries), so clients see one
//! unbroken stream; if it cannot resume, every client's stream is aborted
//! and nothing is stored.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Backfiller, Outcome, Proxy};
use crate::bucket::{self, Bucket};
use crate::cache::fill::{FillWriter, Subscription};
use crate::cache::reader::BlobReader;
use crate::cache::{BlobLookup, Cache, FillError, StoredBlob};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::media_type::OCTET_STREAM;
use crate::oci::range::RangeError;
use crate::oci::{ByteRange, Digest, RangeSpec, RepoName};
use crate::upstream::Upstream;

/// Times a fill re-asks the upstream after its body broke off.
const RESUME_ATTEMPTS: u32 = 3;

/// A blob answer: what to put in the headers, and the bytes to stream.
#[derive(Debug)]
pub struct BlobAnswer {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The content type to send: usually the static
    /// `application/octet-stream`, so a hit copies no string for it.
    pub media_type: HeaderValue,
    /// The part served, for a satisfiable `Range` request.
    pub range: Option<ByteRange>,
    /// The bytes; `None` for `HEAD`.
    pub reader: Option<BlobReader>,
    /// How it was found.
    pub outcome: Outcome,
}

impl Proxy {
    /// Answers `GET`/`HEAD /v2/<repo>/blobs/<digest>`.
    pub async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<BlobAnswer> {
        if head {
            return self.head_blob(upstream, repo, digest).await;
        }
        self.get_blob(upstream, repo, digest, range, Asker::Client)
            .await
    }

    /// Answers another replica's `GET` on the peer listener: like a
    /// client's, except that a miss never asks a peer in turn.
    pub async fn peer_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<BlobAnswer> {
        self.get_blob(upstream, repo, digest, range, Asker::Peer)
            .await
    }

    async fn get_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        asker: Asker,
    ) -> Result<BlobAnswer> {
        match self.cache.lookup(digest).await? {
            BlobLookup::Stored(blob) => stored_answer(blob, range),
            BlobLookup::Filling(sub) => filling_answer(sub, range, Outcome::Coalesced).await,
            BlobLookup::Missing(mut writer, sub) => {
                let permit = match self.fetch_permit() {
                    Ok(permit) => permit,
                    Err(err) => {
                        writer.fail(err.clone());
                        return Err(err);
                    }
                };
                // The fill task owns the writer from here on, so a client
                // leaving cannot fail the fill for the others.
                let backfill = self.backfill.clone();
                let (upstream, repo) = (Arc::clone(upstream), repo.clone());
                let owner = match (&self.cluster, asker) {
                    (Some(cluster), Asker::Client) => cluster.owner(digest).map(|member| Peer {
                        cluster: Arc::clone(cluster),
                        member,
                        upstream: upstream.name().to_string(),
                        repo: repo.clone(),
                    }),
                    _ => None,
                };
                let tiers = Tiers {
                    bucket: self.bucket.clone(),
                    owner,
                    cache: self.cache.clone(),
                    metrics: Arc::clone(self.cache.metrics()),
                };
                let digest = digest.clone();
                tokio::spawn(async move {
                    let sources = sources_of(backfill.as_ref(), &upstream, &repo).await;
                    fill(tiers, sources, digest, *writer).await;
                    drop(permit);
                });
                filling_answer(sub, range, Outcome::Miss).await
            }
        }
    }

    /// A `HEAD` never starts a fetch: it answers from the cache, a fill in
    /// progress, the shared bucket, or the upstream's own `HEAD`.
    async fn head_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer> {
        if let Some(blob) = self.cache.stored_blob(digest).await? {
            return stored_answer(blob, None);
        }
        if let Some(mut sub) = self.cache.filling(digest) {
            let progress = sub.ready().await?;
            if progress.size.is_some() {
                return Ok(BlobAnswer {
                    size: progress.size,
                    media_type: content_type(progress.media_type.as_deref()),
                    range: None,
                    reader: None,
                    outcome: Outcome::Coalesced,
                });
            }
        }
        if let Some(bucket) = &self.bucket {
            // A store that fails is no reason to fail the HEAD: ask the upstream.
            if let Ok(Some(size)) = bucket.size(digest).await {
                return Ok(BlobAnswer {
                    size: Some(size),
                    media_type: content_type(None),
                    range: None,
                    reader: None,
                    outcome: Outcome::Hit,
                });
            }
        }
        let found = upstream.head_blob(repo, digest).await?;
        Ok(BlobAnswer {
            size: found.size,
            media_type: content_type(found.media_type.as_deref()),
            range: None,
            reader: None,
            outcome: Outcome::Passthrough,
        })
    }
}

fn resolve(range: Option<RangeSpec>, size: u64) -> Result<Option<ByteRange>> {
    match range.map(|r| r.resolve(size)) {
        None => Ok(None),
        Some(Ok(r)) => Ok(Some(r)),
        Some(Err(RangeError::Unsatisfiable)) => Err(Error::RangeNotSatisfiable { size }),
        // Anything else was rejected when the header was parsed.
        Some(Err(_)) => Ok(None),
    }
}

/// The `Content-Type` of a blob: a manifest's own type when the blob is one
/// (or the upstream named one), else `application/octet-stream`.
fn content_type(media_type: Option<&str>) -> HeaderValue {
    media_type
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static(OCTET_STREAM))
}

fn stored_answer(blob: StoredBlob, range: Option<RangeSpec>) -> Result<BlobAnswer> {
    let range = resolve(range, blob.size)?;
    let (start, end) = range
        .map(|r| (r.start, r.end + 1))
        .unwrap_or((0, blob.size));
    Ok(BlobAnswer {
        size: Some(blob.size),
        media_type: content_type(blob.manifest_type.as_deref()),
        range,
        reader: Some(
            BlobReader::stored(blob.file, start, end, Some(blob.lease))
                .with_content(blob.content)
                .reading_around_page_cache(blob.direct_reads),
        ),
        outcome: Outcome::Hit,
    })
}

async fn filling_answer(
    mut sub: Subscription,
    range: Option<RangeSpec>,
    outcome: Outcome,
) -> Result<BlobAnswer> {
    let progress = sub.ready().await?;
    let media_type = content_type(progress.media_type.as_deref());
    let (range, start, end) = match progress.size {
        Some(size) => {
            let range = resolve(range, size)?;
            let (start, end) = range.map(|r| (r.start, r.end + 1)).unwrap_or((0, size));
            (range, start, Some(end))
        }
        // Without a size, a range cannot be checked: serve the whole blob.
        None => (None, 0, None),
    };
    Ok(BlobAnswer {
        size: progress.size,
        media_type,
        range,
        reader: Some(BlobReader::filling(sub, start, end)),
        outcome,
    })
}

/// Where a blob may come from, in order of preference.
pub(super) type Sources = Vec<(Arc<Upstream>, RepoName)>;

impl Proxy {
    /// The project first (when reading through it is on and back-fill has
    /// named this repository there), then the upstream.
    pub(super) async fn sources(&self, upstream: &Arc<Upstream>, repo: &RepoName) -> Sources {
        sources_of(self.backfill.as_ref(), upstream, repo).await
    }
}

/// The project first (when reading through it is on), then the upstream.
async fn sources_of(
    backfill: Option<&Arc<dyn Backfiller>>,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
) -> Sources {
    let mut sources = Vec::with_capacity(2);
    if let Some(backfill) = backfill {
        if let Some(target_repo) = backfill.read_through_repo(upstream.name(), repo).await {
            sources.push((Arc::clone(backfill.target()), target_repo));
        }
    }
    sources.push((Arc::clone(upstream), repo.clone()));
    sources
}

/// Who asks for a blob: a client, or another replica on the peer listener
/// (whose misses never ask a peer in turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker {
    Client,
    Peer,
}

/// The replica that owns a missing blob, to stream it from.
struct Peer {
    cluster: Arc<Cluster>,
    member: String,
    /// The upstream's name, which the owner routes by.
    upstream: String,
    repo: RepoName,
}

/// What a fill needs besides its registry sources.
struct Tiers {
    /// The shared object store, asked first and published to after.
    bucket: Option<Arc<Bucket>>,
    /// The owner replica, asked next, when it is another one.
    owner: Option<Peer>,
    cache: Cache,
    metrics: Arc<Metrics>,
}

/// Feeds a fill: from the shared object store if it has the blob, else
/// from the replica that owns it, else from its registry sources, resuming
/// after a broken body (from the same registry, then from the next source,
/// which serves the same digest). A blob fetched from a registry is
/// published to the object store once stored.
async fn fill(tiers: Tiers, sources: Sources, digest: Digest, mut writer: FillWriter) {
    let mut tier = None;
    if let Some(bucket) = &tiers.bucket {
        let before = writer.written();
        match fetch_from_bucket(bucket, &digest, &mut writer).await {
            Ok(found) => tier = found.then_some("bucket"),
            // Availability first: the registries still have it.
            Err(err) => {
                tracing::warn!(%digest, at = writer.written(), error = %err, "object store read failed; fetching from the registry")
            }
        }
        tiers
            .metrics
            .fill_bytes("bucket", writer.written() - before);
    }
    let bucket_bytes = writer.written() > 0;
    let idle = sources.last().map(|(u, _)| u.body_idle_timeout());
    if let (None, Some(owner), Some(idle)) = (tier, &tiers.owner, idle) {
        let before = writer.written();
        match fetch_from_peer(owner, &digest, idle, &mut writer).await {
            Ok(()) => {
                tier = Some("peer");
                tiers.metrics.peer_fetch("done");
            }
            // Availability before deduplication: fetch by itself.
            Err(err) => owner.cluster.failed(&owner.member, &err),
        }
        tiers.metrics.fill_bytes("peer", writer.written() - before);
    }
    let mut last_error = None;
    if tier.is_none() {
        'sources: for (index, (source, repo)) in sources.iter().enumerate() {
            let source_tier = match index + 1 == sources.len() {
                true => "upstream",
                false => "project",
            };
            let mut resumes = 0;
            loop {
                let before = writer.written();
                let fetched = fetch_into(source, repo, &digest, &mut writer).await;
                tiers
                    .metrics
                    .fill_bytes(source_tier, writer.written() - before);
                match fetched {
                    Ok(()) => {
                        last_error = None;
                        tier = Some(source_tier);
                        break 'sources;
                    }
                    // Before the first byte, `Upstream::request` already retried.
                    Err(err)
                        if writer.written() > 0
                            && err.is_retryable()
                            && resumes < RESUME_ATTEMPTS =>
                    {
                        resumes += 1;
                        tracing::warn!(source = source.name(), %digest, at = writer.written(), error = %err, "blob body broke off; resuming");
                    }
                    Err(err) => {
                        tracing::debug!(source = source.name(), %digest, error = %err, "blob source failed");
                        last_error = Some(err);
                        continue 'sources;
                    }
                }
            }
        }
    }
    if let Some(err) = last_error {
        // Logged here as well as with each waiting request: the fill may
        // outlive every client that asked for it.
        let upstream = sources.last().map(|(u, _)| u.name()).unwrap_or_default();
        tracing::warn!(upstream, %digest, error = %err, "blob fetch failed");
        writer.fail(err);
        return;
    }
    let tier = tier.unwrap_or("upstream");
    let upstream = match (tier, &tiers.owner) {
        ("bucket", _) => bucket::NAME.to_string(),
        ("peer", Some(owner)) => format!("peer {}", owner.member),
        _ => sources
            .last()
            .map(|(u, _)| u.name().to_string())
            .unwrap_or_default(),
    };
    match writer.finish().await {
        Ok(size) => {
            tracing::debug!(%upstream, %digest, size, tier, "blob stored");
            tiers.metrics.fill_source(tier);
            // What came from the store or a peer is in the store, or will
            // be when its owner has published it.
            let fetched = matches!(tier, "project" | "upstream");
            if let (Some(bucket), true) = (tiers.bucket, fetched) {
                tokio::spawn(publish(bucket, tiers.cache, digest));
            }
        }
        Err(reason) => {
            tracing::warn!(%upstream, %digest, %reason, "blob rejected");
            if reason.is_upstream_fault() {
                tiers.metrics.digest_failure();
                // Bytes from the store that fail the check must not be read
                // again: the next miss goes to the registries.
                if let (Some(bucket), true) = (&tiers.bucket, bucket_bytes) {
                    if let Err(e) = bucket.remove(&digest).await {
                        tracing::warn!(%digest, error = %e, "cannot remove a corrupt blob from the object store");
                    }
                }
            }
            writer.fail(fill_failure(&upstream, reason));
        }
    }
}

/// Uploads a blob just stored to the object store, from its cache file
/// (held from eviction while read).
async fn publish(bucket: Arc<Bucket>, cache: Cache, digest: Digest) {
    let blob = match cache.stored_blob(&digest).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot read a stored blob to publish");
            return;
        }
    };
    match bucket.publish(&digest, blob.file, blob.size).await {
        Ok(()) => tracing::debug!(%digest, size = blob.size, "blob published to the object store"),
        Err(e) => tracing::warn!(%digest, error = %e, "cannot publish a blob to the object store"),
    }
}

/// The blob from the object store into the fill, from where the fill is.
/// `Ok(false)`: the store does not have it.
async fn fetch_from_bucket(
    bucket: &Bucket,
    digest: &Digest,
    writer: &mut FillWriter,
) -> Result<bool> {
    let offset = writer.written();
    let Some(found) = bucket.get(digest, offset).await? else {
        return Ok(false);
    };
    if offset == 0 {
        writer.start(Some(found.size), None);
    }
    let mut body = found.body;
    while let Some(chunk) = body.next().await {
        writer
            .write(chunk?)
            .await
            .map_err(|reason| fill_failure(bucket::NAME, reason))?;
    }
    if writer.expected_size().is_some_and(|n| writer.written() < n) {
        return Err(Error::UpstreamUnavailable {
            upstream: bucket::NAME.to_string(),
            message: "blob body ended early".into(),
        });
    }
    Ok(true)
}

/// The error a client of a failed fill gets: the upstream's fault, or the
/// cache's own.
fn fill_failure(upstream: &str, reason: FillError) -> Error {
    match reason.is_upstream_fault() {
        true => Error::UpstreamInvalid {
            upstream: upstream.to_string(),
            message: reason.to_string(),
        },
        false => Error::storage("fill", reason),
    }
}

/// The blob from the replica that owns it, from where the fill is.
async fn fetch_from_peer(
    owner: &Peer,
    digest: &Digest,
    idle: Duration,
    writer: &mut FillWriter,
) -> Result<()> {
    let offset = writer.written();
    let response = owner
        .cluster
        .client()
        .get_blob(&owner.member, &owner.upstream, &owner.repo, digest, offset)
        .await?;
    if offset == 0 {
        writer.start(response.size, response.media_type);
    }
    pump(
        response.body,
        idle,
        &format!("peer {}", owner.member),
        writer,
    )
    .await
}

/// One upstream request's worth of body into the fill.
async fn fetch_into(
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    writer: &mut FillWriter,
) -> Result<()> {
    let offset = writer.written();
    let response = upstream.get_blob(repo, digest, offset).await?;
    if offset == 0 {
        writer.start(response.size, response.media_type);
    }
    pump(
        response.body,
        upstream.body_idle_timeout(),
        upstream.name(),
        writer,
    )
    .await
}

/// A response body into the fill, each pause at most `idle`; `source`
/// names where it came from in errors.
async fn pump(
    mut body: Incoming,
    idle: Duration,
    source: &str,
    writer: &mut FillWriter,
) -> Result<()> {
    let broken = |message: String| Error::UpstreamUnavailable {
        upstream: source.to_string(),
        message,
    };
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(Error::UpstreamTimeout {
                    upstream: source.to_string(),
                    message: "blob body stalled".into(),
                })
            }
            Ok(None) if writer.expected_size().is_some_and(|n| writer.written() < n) => {
                return Err(broken("blob body ended early".into()))
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(broken(format!("blob body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            writer
                .write(data)
                .await
                .map_err(|reason| fill_failure(source, reason))?;
        }
    }
}
