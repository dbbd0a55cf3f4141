//! Where a missing blob's bytes come from, and the one loop that feeds a
//! fill from them: the shared bucket, the replica that owns the digest, the
//! project (read-through), then the upstream. Each source goes on from the
//! byte the fill has; a registry whose body broke off is asked again from
//! there (bounded), any other source hands over to the next at once. A
//! blob fetched from a registry is owed to the bucket once stored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::bucket::{self, Bucket, Pending};
use crate::cache::fill::FillWriter;
use crate::cache::FillError;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::upstream::{Caller, Upstream};

/// Times a fill re-asks a registry after its body broke off.
const RESUME_ATTEMPTS: u32 = 3;

/// The kind of a source, as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Tier {
    /// The shared object store.
    Bucket,
    /// The replica that owns the digest.
    Peer,
    /// The Rahti project lasti back-fills (read-through).
    Project,
    /// The upstream registry.
    Upstream,
}

impl Tier {
    /// The metric label.
    pub(super) fn label(self) -> &'static str {
        match self {
            Tier::Bucket => "bucket",
            Tier::Peer => "peer",
            Tier::Project => "project",
            Tier::Upstream => "upstream",
        }
    }
}

/// The replica that owns a missing blob, to stream it from.
pub(super) struct Peer {
    pub(super) cluster: Arc<Cluster>,
    pub(super) member: String,
    /// Asked for a copy it holds, not to fetch one: this replica owns the
    /// digest, `member` is its successor.
    pub(super) only_stored: bool,
    /// The upstream's name, which the owner routes by.
    pub(super) upstream: String,
    pub(super) repo: RepoName,
    /// The longest pause of the owner's body (the upstream's own).
    pub(super) idle: Duration,
}

/// One place a fill may read from.
pub(super) enum Source {
    /// The shared object store.
    Bucket(Arc<Bucket>),
    /// The owner replica.
    Peer(Peer),
    /// A registry: the project or the upstream, asked as `caller`.
    Registry {
        registry: Arc<Upstream>,
        repo: RepoName,
        tier: Tier,
        caller: Caller,
    },
}

/// What one source did for the fill.
enum Fetched {
    /// It sent the blob to its end.
    Whole,
    /// It does not have the blob (only the bucket says so without failing).
    Absent,
}

impl Source {
    /// The registries a blob of `repo` may come from: `project` first when
    /// read-through names the repository there (asked as lasti), then the
    /// upstream (asked as `caller`).
    pub(super) fn registries(
        project: Option<(Arc<Upstream>, RepoName)>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        caller: Caller,
    ) -> impl Iterator<Item = Source> {
        let project = project.map(|(registry, repo)| Source::Registry {
            registry,
            repo,
            tier: Tier::Project,
            caller: Caller::lasti(),
        });
        project.into_iter().chain([Source::Registry {
            registry: upstream,
            repo,
            tier: Tier::Upstream,
            caller,
        }])
    }

    fn tier(&self) -> Tier {
        match self {
            Source::Bucket(_) => Tier::Bucket,
            Source::Peer(_) => Tier::Peer,
            Source::Registry { tier, .. } => *tier,
        }
    }

    /// The name in logs and in a client's error.
    fn name(&self) -> String {
        match self {
            Source::Bucket(_) => bucket::NAME.to_string(),
            Source::Peer(peer) => format!("peer {}", peer.member),
            Source::Registry { registry, .. } => registry.name().to_string(),
        }
    }

    /// How often a broken body of this source is asked again.
    fn resumes(&self) -> u32 {
        match self {
            Source::Registry { .. } => RESUME_ATTEMPTS,
            Source::Bucket(_) | Source::Peer(_) => 0,
        }
    }

    /// The blob from where the fill is, into the fill.
    async fn read_into(&self, digest: &Digest, writer: &mut FillWriter) -> Result<Fetched> {
        let registry = matches!(self, Source::Registry { .. });
        writer.reading_from(self.tier().label(), registry);
        let offset = writer.written();
        let name = self.name();
        let (size, media_type, body, idle) = match self {
            Source::Bucket(bucket) => {
                let Some(found) = bucket.get(digest, offset).await? else {
                    return Ok(Fetched::Absent);
                };
                announce(writer, &name, Some(found.size), None)?;
                let mut body = found.body;
                while let Some(chunk) = body.next().await {
                    write(writer, &name, chunk?).await?;
                }
                return ended(
                    writer,
                    Error::BucketUnavailable("blob body ended early".into()),
                );
            }
            Source::Peer(peer) => {
                let client = peer.cluster.client();
                let asked = client.get_blob(
                    &peer.member,
                    &peer.upstream,
                    &peer.repo,
                    digest,
                    offset,
                    peer.only_stored,
                );
                let response = match asked.await {
                    Err(Error::BlobUnknown) if peer.only_stored => return Ok(Fetched::Absent),
                    response => response?,
                };
                (response.size, response.media_type, response.body, peer.idle)
            }
            Source::Registry {
                registry,
                repo,
                caller,
                ..
            } => {
                // Held to the end of the body: a fetch at once.
                let _place = registry.fetch_place().await?;
                let response = registry.get_blob(caller, repo, digest, offset).await?;
                let idle = registry.body_idle_timeout();
                announce(writer, &name, response.size, response.media_type)?;
                let paced = registry.capped().then_some(&**registry);
                pump(
                    response.body,
                    idle,
                    &name,
                    writer,
                    paced,
                    |message, stalled| self.broke(message, stalled),
                )
                .await?;
                return Ok(Fetched::Whole);
            }
        };
        announce(writer, &name, size, media_type)?;
        pump(body, idle, &name, writer, None, |message, stalled| {
            self.broke(message, stalled)
        })
        .await?;
        Ok(Fetched::Whole)
    }

    /// The error of a body that broke off, or `stalled`.
    fn broke(&self, message: &str, stalled: bool) -> Error {
        match self {
            Source::Bucket(_) => Error::BucketUnavailable(message.to_string()),
            Source::Peer(peer) => Error::PeerDown {
                member: peer.member.clone(),
                message: message.to_string(),
            },
            Source::Registry { registry, .. } if stalled => Error::UpstreamTimeout {
                upstream: registry.name().to_string(),
                message: message.to_string(),
            },
            Source::Registry { registry, .. } => Error::UpstreamUnavailable {
                upstream: registry.name().to_string(),
                message: message.to_string(),
            },
        }
    }

    /// Notes that this source failed the fill, before the next is asked.
    fn failed(&self, digest: &Digest, at: u64, err: &Error) {
        match self {
            // Availability first: the registries still have it.
            Source::Bucket(_) => {
                tracing::warn!(%digest, at, error = %err, "object store read failed; fetching from the next source")
            }
            // Availability before deduplication: fetch by itself.
            Source::Peer(peer) => peer.cluster.failed(&peer.member, err),
            Source::Registry { registry, .. } => {
                tracing::debug!(source = registry.name(), %digest, error = %err, "blob source failed")
            }
        }
    }
}

/// What a fill needs besides its sources.
pub(super) struct FillContext {
    /// The shared object store: owed what came from a registry, and
    /// cleaned of what it alone served wrong.
    pub(super) bucket: Option<Arc<Bucket>>,
    pub(super) metrics: Arc<Metrics>,
}

/// Feeds a fill from `sources`, in order, each from the byte the fill
/// has; then verifies and stores it.
pub(super) async fn fill(
    context: FillContext,
    sources: Vec<Source>,
    digest: Digest,
    mut writer: FillWriter,
) {
    let mut wrote: HashSet<Tier> = HashSet::new();
    let mut done = None;
    let mut last_error = None;
    'sources: for source in &sources {
        let mut resumes = 0;
        loop {
            let before = writer.written();
            let fetched = source.read_into(&digest, &mut writer).await;
            let got = writer.written() - before;
            context.metrics.fill_bytes(source.tier().label(), got);
            if got > 0 {
                wrote.insert(source.tier());
            }
            match fetched {
                Ok(Fetched::Whole) => {
                    if let Source::Peer(_) = source {
                        context.metrics.peer_fetch("done");
                    }
                    done = Some(source);
                    break 'sources;
                }
                Ok(Fetched::Absent) => continue 'sources,
                // Before the first byte, `Upstream::request` already retried.
                Err(err)
                    if writer.written() > 0 && err.is_retryable() && resumes < source.resumes() =>
                {
                    resumes += 1;
                    tracing::warn!(source = source.name(), %digest, at = writer.written(), error = %err, "blob body broke off; resuming");
                }
                Err(err) => {
                    source.failed(&digest, writer.written(), &err);
                    last_error = Some(err);
                    continue 'sources;
                }
            }
        }
    }
    let Some(source) = done else {
        let err = last_error.unwrap_or(Error::BlobUnknown);
        // Logged here as well as with each waiting request: the fill may
        // outlive every client that asked for it.
        let upstream = sources.last().map(Source::name).unwrap_or_default();
        tracing::warn!(upstream, %digest, error = %err, "blob fetch failed");
        writer.fail(err);
        return;
    };
    finish(context, source, &wrote, digest, writer).await;
}

/// Verifies and stores a blob read to its end from `source`.
async fn finish(
    context: FillContext,
    source: &Source,
    wrote: &HashSet<Tier>,
    digest: Digest,
    mut writer: FillWriter,
) {
    let tier = source.tier();
    let name = source.name();
    // What came from the store or a peer is in the store, or will be when
    // its owner has published it; what came from a registry is owed to it.
    let owes = match tier {
        Tier::Project | Tier::Upstream => context.bucket.as_ref(),
        Tier::Bucket | Tier::Peer => None,
    };
    if let Some(bucket) = owes {
        bucket.owe_blob(&digest).await;
    }
    match writer.finish().await {
        Ok(size) => {
            tracing::debug!(source = name, %digest, size, tier = tier.label(), "blob stored");
            context.metrics.fill_source(tier.label());
            if let Some(bucket) = owes {
                bucket.wake_uploader();
            }
        }
        Err(reason) => {
            if let Some(bucket) = owes {
                bucket.unowe(Pending::Blob(digest.clone())).await;
            }
            tracing::warn!(source = name, %digest, %reason, "blob rejected");
            if reason.is_upstream_fault() {
                context.metrics.digest_failure();
                // Only what the store alone served is known to be wrong
                // there: mixed with another source's bytes, either may be.
                let bucket_alone = wrote.len() == 1 && wrote.contains(&Tier::Bucket);
                if let (Some(bucket), true) = (&context.bucket, bucket_alone) {
                    if let Err(e) = bucket.remove(&digest).await {
                        tracing::warn!(%digest, error = %e, "cannot remove a corrupt blob from the object store");
                    }
                }
            }
            writer.fail(fill_failure(&name, reason));
        }
    }
}

/// The error a client of a failed fill gets: the source's fault, or the
/// cache's own.
fn fill_failure(source: &str, reason: FillError) -> Error {
    match reason.is_upstream_fault() {
        true => Error::UpstreamInvalid {
            upstream: source.to_string(),
            message: reason.to_string(),
        },
        false => Error::storage("fill", reason),
    }
}

/// Tells the fill what a source says of the blob; a source that speaks of
/// another size than the first is refused.
fn announce(
    writer: &mut FillWriter,
    source: &str,
    size: Option<u64>,
    media_type: Option<String>,
) -> Result<()> {
    writer
        .start(size, media_type)
        .map_err(|reason| fill_failure(source, reason))
}

async fn write(writer: &mut FillWriter, source: &str, chunk: bytes::Bytes) -> Result<()> {
    writer
        .write(chunk)
        .await
        .map_err(|reason| fill_failure(source, reason))
}

/// `Ok` when the body ended at the announced size, else `early`.
fn ended(writer: &FillWriter, early: Error) -> Result<Fetched> {
    match writer.expected_size().is_some_and(|n| writer.written() < n) {
        true => Err(early),
        false => Ok(Fetched::Whole),
    }
}

/// A response body into the fill, each pause at most `idle`, at the byte
/// rate of `paced` when it has one; `broke` makes the error of a body that
/// broke off or ended early, or that stalled (`true`).
async fn pump(
    mut body: Incoming,
    idle: Duration,
    source: &str,
    writer: &mut FillWriter,
    paced: Option<&Upstream>,
    broke: impl Fn(&str, bool) -> Error,
) -> Result<()> {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(broke("blob body stalled", true)),
            Ok(None) => return ended(writer, broke("blob body ended early", false)).map(drop),
            Ok(Some(Err(e))) => return Err(broke(&format!("blob body: {e}"), false)),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if let Some(upstream) = paced {
                upstream.take_bytes(data.len()).await;
            }
            write(writer, source, data).await?;
        }
    }
}
