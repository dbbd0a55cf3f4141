//! The pull-through logic: answer from the cache when it can, otherwise fetch
//! from the upstream once, verify, store and stream at the same time.
//!
//! This layer speaks in registry terms (repositories, references, digests,
//! accepted media types) and returns typed answers; `server` turns them into
//! HTTP.

mod blobs;
mod gate;
mod listing;
mod manifests;
mod offline;
mod purge;
mod referrers;
mod shared;
mod signed;
mod single_flight;
mod sources;
mod uploader;
mod warm;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::bucket::Bucket;
use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::oci::{Digest, RepoName};
use crate::upstream::{Caller, TagList, Upstream, Upstreams};

pub use blobs::BlobAnswer;
pub use listing::CachedImage;
pub use manifests::ManifestAnswer;
pub use offline::{Availabilities, OfflineSwitch, ReplicaSwitched};
pub use purge::{BucketPurged, Purged, ReplicaPurged, Scope as PurgeScope};
pub use referrers::ReferrersAnswer;
pub use warm::Warmed;

/// An image served to a client, offered for back-fill; with `[cluster]`,
/// sent to the replica that owns its digest as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    /// The upstream's configured name.
    pub upstream: String,
    /// The repository as the upstream names it.
    pub repo: RepoName,
    /// The tag the client asked for.
    pub tag: String,
    /// The digest it was served.
    pub digest: Digest,
}

/// What the proxy asks of back-fill: take the images it serves, and be a
/// second source a miss may read through. Defined here and implemented by
/// `backfill`, so the proxy knows nothing of the queue and depends on it
/// only through this trait.
pub trait Backfiller: Send + Sync + std::fmt::Debug {
    /// Offers a served image; never blocks, never fails the request.
    fn offer(&self, offer: Offer);

    /// The project's registry, read through on a miss.
    fn target(&self) -> &Arc<Upstream>;

    /// The project repository that holds (or will hold) `repo` of
    /// `upstream`, when reading through the project is on.
    fn read_through_repo<'a>(
        &'a self,
        upstream: &'a str,
        repo: &'a RepoName,
    ) -> BoxFuture<'a, Option<RepoName>>;

    /// Whether the project is known to hold this tag at this digest.
    fn holds<'a>(
        &'a self,
        upstream: &'a str,
        repo: &'a RepoName,
        tag: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, bool>;
}

/// How a request was answered, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache, nothing asked upstream.
    Hit,
    /// From the cache after the upstream confirmed the tag.
    Revalidated,
    /// From the cache although the tag is past its TTL: the upstream failed.
    Stale,
    /// Fetched from the upstream by this request.
    Miss,
    /// Joined a fetch another request started.
    Coalesced,
    /// Passed through from the upstream without caching.
    Passthrough,
}

impl Outcome {
    /// A fixed label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Revalidated => "revalidated",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Passthrough => "passthrough",
        }
    }
}

/// Where a response's bytes came from, for the access log's `source`:
/// `cache` for what lasti held, else the kind of source a fetch read them
/// from (`bucket`, `peer`, `project`, `upstream`).
#[derive(Debug, Clone)]
pub enum Provenance {
    /// Known when the answer was made.
    Known(&'static str),
    /// A fill's: the source feeding it when the response ends.
    Fill(tokio::sync::watch::Receiver<crate::cache::fill::Progress>),
}

impl Provenance {
    /// What an outcome alone says: what lasti held comes from its cache,
    /// a passthrough from the upstream; a fetch says more itself.
    pub fn of_outcome(outcome: Outcome) -> Option<Provenance> {
        match outcome {
            Outcome::Hit | Outcome::Revalidated | Outcome::Stale => {
                Some(Provenance::Known("cache"))
            }
            Outcome::Passthrough => Some(Provenance::Known("upstream")),
            Outcome::Miss | Outcome::Coalesced => None,
        }
    }

    /// The label, read now.
    pub fn label(&self) -> &'static str {
        match self {
            Provenance::Known(label) => label,
            Provenance::Fill(progress) => progress.borrow().source.unwrap_or("-"),
        }
    }
}

/// The proxy: upstreams plus cache.
#[derive(Debug)]
pub struct Proxy {
    upstreams: Upstreams,
    cache: Cache,
    max_manifest_size: u64,
    manifest_flights: manifests::Flights,
    referrers: referrers::Lists,
    backfill: Option<Arc<dyn Backfiller>>,
    fetch_permits: Option<Arc<tokio::sync::Semaphore>>,
    bucket: Option<Arc<Bucket>>,
    uploads: Arc<uploader::Rounds>,
    cluster: Option<Arc<Cluster>>,
    gate: gate::Gate,
    verdicts: signed::Verdicts,
    events: Option<Arc<Events>>,
}

impl Proxy {
    /// Assembles the proxy.
    pub fn new(
        upstreams: Upstreams,
        cache: Cache,
        max_manifest_size: u64,
        backfill: Option<Arc<dyn Backfiller>>,
    ) -> Proxy {
        Proxy {
            upstreams,
            cache,
            max_manifest_size,
            manifest_flights: Default::default(),
            referrers: Default::default(),
            backfill,
            fetch_permits: None,
            bucket: None,
            uploads: Default::default(),
            cluster: None,
            gate: Default::default(),
            verdicts: Default::default(),
            events: None,
        }
    }

    /// Whether replicas share an object store.
    pub fn has_bucket(&self) -> bool {
        self.bucket.is_some()
    }

    /// Sends audit events to the configured sinks.
    pub fn with_events(mut self, events: Option<Arc<Events>>) -> Proxy {
        self.events = events;
        self
    }

    /// The audit event stream, when a sink is configured.
    pub fn events(&self) -> Option<&Arc<Events>> {
        self.events.as_ref()
    }

    /// Looks for blobs in the shared object store before the project and
    /// the upstream, and publishes the blobs it fetches there.
    pub fn with_bucket(mut self, bucket: Option<Arc<Bucket>>) -> Proxy {
        self.bucket = bucket;
        self
    }

    /// Streams a missing blob from the replica that owns it, when that is
    /// another one, before asking the project and the upstream.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Proxy {
        self.cluster = cluster;
        self
    }

    /// Starts the uploader, which publishes what is owed to the bucket as
    /// soon as it is, and every `every` what failed before (see
    /// `uploader`); ends with the proxy. Nothing without a bucket.
    pub fn start_uploading(self: &Arc<Proxy>, every: Duration) {
        if self.bucket.is_some() {
            let rounds = Arc::clone(&self.uploads);
            tokio::spawn(uploader::run(Arc::downgrade(self), rounds, every));
        }
    }

    /// Publishes what this replica still owes the bucket, for at most
    /// `within` (on shutdown, once the connections are closed); how many
    /// items are left owed. Nothing without a bucket.
    pub async fn flush_uploads(&self, within: Duration) -> usize {
        match &self.bucket {
            Some(bucket) => uploader::flush(bucket, &self.cache, &self.uploads, within).await,
            None => 0,
        }
    }

    /// Caps the blob fetches from upstreams in flight at once (0: no cap).
    pub fn with_fetch_cap(mut self, cap: usize) -> Proxy {
        self.fetch_permits = (cap > 0).then(|| Arc::new(tokio::sync::Semaphore::new(cap)));
        self
    }

    /// A slot for one more upstream fetch; `Err` when the cap is reached.
    fn fetch_permit(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        match &self.fetch_permits {
            None => Ok(None),
            Some(permits) => Arc::clone(permits)
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| crate::error::Error::RateLimited {
                    retry_after: std::time::Duration::from_secs(1),
                }),
        }
    }

    /// This replica's cluster, when it is part of one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The back-fill queue, when a target is configured.
    pub fn backfill(&self) -> Option<&Arc<dyn Backfiller>> {
        self.backfill.as_ref()
    }

    /// Offers a tag just served for back-fill (cheap, never blocks). With
    /// `[cluster]`, the offer goes to the replica that owns the digest, so
    /// an image is back-filled by one replica, not by every one that served
    /// it; this replica's own queue takes it when the owner cannot.
    fn offer(&self, upstream: &Upstream, repo: &RepoName, tag: &str, digest: &Digest) {
        let Some(backfill) = &self.backfill else {
            return;
        };
        let offer = Offer {
            upstream: upstream.name().to_string(),
            repo: repo.clone(),
            tag: tag.to_string(),
            digest: digest.clone(),
        };
        let owner = self
            .cluster
            .as_ref()
            .and_then(|c| Some((c, c.owner(digest)?)));
        let Some((cluster, member)) = owner else {
            backfill.offer(offer);
            return;
        };
        let Some(place) = cluster.forward_place() else {
            backfill.offer(offer);
            return;
        };
        let (cluster, backfill) = (Arc::clone(cluster), Arc::clone(backfill));
        tokio::spawn(async move {
            let _place = place;
            if let Err(err) = cluster.client().offer(&member, &offer).await {
                cluster.failed(&member, &err);
                backfill.offer(offer);
            }
        });
    }

    /// Takes an offer another replica forwarded, as the owner of its
    /// digest; `false` when back-fill is off here.
    pub fn take_offer(&self, offer: Offer) -> bool {
        match &self.backfill {
            Some(backfill) => {
                backfill.offer(offer);
                true
            }
            None => false,
        }
    }

    /// Chooses the upstream for a name as a client sends it (and containerd's
    /// `ns=`), and the repository name that upstream will see; refuses names
    /// that break the grammar or the upstream's allow/deny lists.
    pub fn resolve(&self, raw: &str, ns: Option<&str>) -> Result<(&Arc<Upstream>, RepoName)> {
        let (upstream, repo) = self.locate(raw, ns)?;
        if !upstream.allows(&repo) {
            return Err(Error::Denied(format!(
                "{repo} on {} may not be pulled through this proxy",
                upstream.name()
            )));
        }
        Ok((upstream, repo))
    }

    /// The upstream and its repository for a name as a client sends it,
    /// whether or not pulling it is allowed (an operator may purge what a
    /// deny rule now refuses).
    pub fn locate(&self, raw: &str, ns: Option<&str>) -> Result<(&Arc<Upstream>, RepoName)> {
        let (upstream, name) = self
            .upstreams
            .route(raw, ns)
            .map_err(|e| Error::NameInvalid(e.0))?;
        let repo = RepoName::parse(name).map_err(|e| Error::NameInvalid(e.to_string()))?;
        Ok((upstream, upstream.upstream_repo(repo)))
    }

    /// The configured upstreams, for routing.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// A tag list, passed through from the upstream: asked with the
    /// client's credential where the upstream takes it (nothing of it is
    /// kept, so the upstream alone decides).
    pub async fn tags(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        query: Option<&str>,
        caller: &Caller,
    ) -> Result<TagList> {
        let caller = match caller.credential() {
            Some(credential) if upstream.is_for(credential) => caller.clone(),
            _ => Caller::lasti(),
        };
        match upstream.tags(&caller, repo, query).await {
            // The upstream's no to a client: ask it for (other) credentials.
            Err(Error::UpstreamDenied { message, .. }) if upstream.takes_client_credentials() => {
                Err(Error::ClientRefused(message))
            }
            other => other,
        }
    }

    /// Whether `caller`'s credential is one an upstream here takes and
    /// accepts (a `GET /v2/` with it, remembered like any verdict); for
    /// `docker login` and lasti's token endpoint. `None` when no upstream
    /// takes it (its user name names none, or several take credentials).
    pub async fn login(&self, caller: &Caller) -> Option<Result<bool>> {
        let credential = caller.credential()?;
        let upstream = self.upstreams.all().iter().find(|u| u.is_for(credential))?;
        Some(self.gate.login(upstream, caller).await)
    }
}
