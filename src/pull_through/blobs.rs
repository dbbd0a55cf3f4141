//! Blobs: a hit streams the stored file; a miss joins or starts the one fill
//! for that digest and streams from it while it is written and verified.
//!
//! The fill runs in its own task, fed from its sources (`sources`). When a
//! source's body breaks or stalls, the fill goes on from the byte it has
//! (bounded), so clients see one unbroken stream; if it cannot, every
//! client's stream is aborted and nothing is stored.

use std::sync::Arc;

use http::HeaderValue;

use super::gate::{Grant, Probe};
use super::sources::{self, FillContext, Peer, Source};
use super::{Backfiller, Outcome, Provenance, Proxy};
use crate::cache::fill::Subscription;
use crate::cache::reader::BlobReader;
use crate::cache::{BlobLookup, StoredBlob};
use crate::error::{Error, Result};
use crate::oci::media_type::OCTET_STREAM;
use crate::oci::range::RangeError;
use crate::oci::{ByteRange, Digest, RangeSpec, RepoName};
use crate::upstream::{Caller, Upstream};

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
    /// Where its bytes came from.
    pub from: Provenance,
}

impl Proxy {
    /// Answers `GET`/`HEAD /v2/<repo>/blobs/<digest>` for `caller`. Of an
    /// upstream that takes clients' credentials, a blob is served under a
    /// repository only once it is known to be there (see `gate`).
    pub async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
        caller: &Caller,
    ) -> Result<BlobAnswer> {
        let grant = self
            .gate
            .admit(upstream, repo, caller, Probe::Blob(digest))
            .await?;
        if !self
            .gate
            .holds(upstream, repo, &grant, digest, false)
            .await?
        {
            return Err(Error::BlobUnknown);
        }
        if head {
            return self.head_blob(upstream, repo, digest, &grant).await;
        }
        self.get_blob(upstream, repo, digest, range, Asker::Client, &grant)
            .await
    }

    /// A blob `GET` lasti makes for itself (back-fill of a blob no longer
    /// held): as lasti, with no client to check.
    pub async fn own_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer> {
        self.get_blob(upstream, repo, digest, None, Asker::Client, &Grant::open())
            .await
    }

    /// Answers another replica's `GET` on the peer listener (`asker`, as
    /// its member header names it): like a client's, except that a miss
    /// asks no owner in turn, only this replica's successor for a copy it
    /// holds or is reading from a registry (it stood in while this replica
    /// was away, and may be fetching the blob now). With
    /// `only_stored` (the asker owns the digest and asks its successor) the
    /// blob is served only if it is held whole or being read from a
    /// registry: never a fill fed by a peer, which may be the asker itself,
    /// and never a fetch of its own. While this replica leaves the cluster,
    /// what it would have to fetch is turned away.
    pub async fn peer_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        only_stored: bool,
        asker: Option<&str>,
    ) -> Result<BlobAnswer> {
        if only_stored {
            // The fill first: one that ends meanwhile has stored the blob.
            if let Some(sub) = self.cache.filling_from_registry(digest) {
                return filling_answer(sub, range, Outcome::Coalesced).await;
            }
            return match self.cache.stored_blob(digest).await? {
                Some(blob) => stored_answer(blob, range),
                None => Err(Error::BlobUnknown),
            };
        }
        if self.cluster.as_ref().is_some_and(|c| c.is_leaving()) {
            if let Some(blob) = self.cache.stored_blob(digest).await? {
                return stored_answer(blob, range);
            }
            return match self.cache.filling(digest) {
                Some(sub) => filling_answer(sub, range, Outcome::Coalesced).await,
                None => Err(Error::Leaving),
            };
        }
        // Asked only for what anyone may pull: as lasti itself.
        let asker = Asker::Peer(asker);
        self.get_blob(upstream, repo, digest, range, asker, &Grant::open())
            .await
    }

    async fn get_blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
        asker: Asker<'_>,
        grant: &Grant,
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
                let mut sources = Vec::with_capacity(4);
                sources.extend(self.bucket.clone().map(Source::Bucket));
                // A private blob never crosses the peer port: this replica
                // fetches it with its own client's credential.
                if let Some(cluster) = self.cluster.as_ref().filter(|_| grant.public) {
                    let peers = match asker {
                        Asker::Client => cluster.owners(digest),
                        Asker::Peer(_) => Vec::new(),
                    };
                    let successor = match asker {
                        Asker::Client => cluster.successor(digest),
                        Asker::Peer(from) => cluster.successor_for(digest, from),
                    };
                    let peers = peers.into_iter().map(|m| (m, false));
                    let peers = peers.chain(successor.map(|m| (m, true)));
                    sources.extend(peers.map(|(member, only_stored)| {
                        Source::Peer(Peer {
                            cluster: Arc::clone(cluster),
                            member,
                            only_stored,
                            upstream: upstream.name().to_string(),
                            repo: repo.clone(),
                            idle: upstream.body_idle_timeout(),
                        })
                    }));
                }
                let context = FillContext {
                    bucket: self.bucket.clone(),
                    metrics: Arc::clone(self.cache.metrics()),
                };
                let digest = digest.clone();
                let caller = grant.caller.clone();
                tokio::spawn(async move {
                    let project = read_through(backfill.as_ref(), &upstream, &repo).await;
                    sources.extend(Source::registries(project, upstream, repo, caller));
                    sources::fill(context, sources, digest, *writer).await;
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
        grant: &Grant,
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
                    from: Provenance::Fill(sub.progress()),
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
                    from: Provenance::Known("bucket"),
                });
            }
        }
        let found = upstream.head_blob(&grant.caller, repo, digest).await?;
        Ok(BlobAnswer {
            size: found.size,
            media_type: content_type(found.media_type.as_deref()),
            range: None,
            reader: None,
            outcome: Outcome::Passthrough,
            from: Provenance::Known("upstream"),
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
        from: Provenance::Known("cache"),
    })
}

async fn filling_answer(
    mut sub: Subscription,
    range: Option<RangeSpec>,
    outcome: Outcome,
) -> Result<BlobAnswer> {
    let progress = sub.ready().await?;
    let from = Provenance::Fill(sub.progress());
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
        from,
    })
}

/// Where a manifest by digest may come from, in order of preference.
pub(super) type Sources = Vec<(Arc<Upstream>, RepoName)>;

impl Proxy {
    /// The project first (when reading through it is on and back-fill has
    /// named this repository there), then the upstream.
    pub(super) async fn sources(&self, upstream: &Arc<Upstream>, repo: &RepoName) -> Sources {
        let project = read_through(self.backfill.as_ref(), upstream, repo).await;
        project
            .into_iter()
            .chain([(Arc::clone(upstream), repo.clone())])
            .collect()
    }
}

/// The project and the repository there, when reading through it is on
/// and back-fill has named this repository there.
async fn read_through(
    backfill: Option<&Arc<dyn Backfiller>>,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
) -> Option<(Arc<Upstream>, RepoName)> {
    let backfill = backfill?;
    let target_repo = backfill.read_through_repo(upstream.name(), repo).await?;
    Some((Arc::clone(backfill.target()), target_repo))
}

/// Who asks for a blob: a client, or another replica on the peer listener
/// (by its member name, when it sent one), whose misses ask no owner in
/// turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker<'a> {
    Client,
    Peer(Option<&'a str>),
}
