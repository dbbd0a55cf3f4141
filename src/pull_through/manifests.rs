//! Manifests: by digest they are immutable and served from the cache
//! forever; by tag the last answer is trusted for its TTL, then revalidated
//! with a `HEAD` (which Docker Hub does not count as a pull), and served
//! stale when the upstream cannot be reached.
//!
//! The upstream is always asked for every modern manifest type, whatever
//! the client accepts, so a registry that converts (distribution 2.x turns
//! schema 2 into signed schema 1 for a client without schema 2) never does:
//! one fetch per reference serves every client, and the exact bytes, media
//! type and digest from the upstream are kept and served. The client's
//! `Accept` is matched locally, on hits, misses and `HEAD`s alike: a client
//! that can take none of the stored type gets 404 `MANIFEST_UNKNOWN`.
//! Schema 1 is refused whenever an upstream sends it, and never recorded.
//!
//! With `[cluster]`, a manifest this replica must fetch (a tag it has no
//! fresh record of, a digest it does not hold) is asked of the replica
//! that owns the reference (rendezvous over `upstream/repo:reference`),
//! which resolves it once for the cluster: Docker Hub counts each manifest
//! `GET` as a pull. The asker verifies what it gets like a registry's
//! answer; an owner that fails it is left for the registries.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::gate::{Grant, Probe};
use super::shared::{self, TagRef};
use super::single_flight::SingleFlight;
use super::{Outcome, Proxy};
use crate::cache::index::{unix_now, TagRecord};
use crate::cache::{Cache, Manifest};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::oci::media_type::{self, DEFAULT_MANIFEST_ACCEPT};
use crate::oci::{AcceptList, Digest, Hasher, Reference, RepoName, Tag};
use crate::upstream::{Caller, Upstream};

/// One manifest fetch: the client's `Accept` is not part of it, as the
/// upstream is asked the same way for every client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    upstream: String,
    repo: RepoName,
    reference: String,
}

/// Manifest fetches in flight, shared by concurrent requests.
pub(super) type Flights = SingleFlight<FlightKey, Result<(Arc<Manifest>, &'static str)>>;

/// What lasti held, for [`ManifestAnswer::from`].
const CACHE: &str = "cache";

/// A manifest answer: the whole manifest, or only its description (HEAD).
#[derive(Debug)]
pub enum ManifestAnswer {
    /// The stored manifest.
    Body {
        /// The manifest.
        manifest: Arc<Manifest>,
        /// How it was found.
        outcome: Outcome,
        /// Where its bytes came from (see [`super::Provenance`]).
        from: &'static str,
    },
    /// What the upstream or the tag record says, without the bytes.
    Head {
        /// Its digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// Its size.
        size: u64,
        /// How it was found.
        outcome: Outcome,
        /// Where what it says came from (see [`super::Provenance`]).
        from: &'static str,
    },
}

impl ManifestAnswer {
    /// The manifest's digest.
    pub fn digest(&self) -> &Digest {
        match self {
            ManifestAnswer::Body { manifest, .. } => &manifest.digest,
            ManifestAnswer::Head { digest, .. } => digest,
        }
    }

    /// The manifest's media type.
    pub fn media_type(&self) -> &str {
        match self {
            ManifestAnswer::Body { manifest, .. } => &manifest.media_type,
            ManifestAnswer::Head { media_type, .. } => media_type,
        }
    }

    /// The manifest's size.
    pub fn size(&self) -> u64 {
        match self {
            ManifestAnswer::Body { manifest, .. } => manifest.bytes.len() as u64,
            ManifestAnswer::Head { size, .. } => *size,
        }
    }

    /// How it was found.
    pub fn outcome(&self) -> Outcome {
        match self {
            ManifestAnswer::Body { outcome, .. } | ManifestAnswer::Head { outcome, .. } => *outcome,
        }
    }

    /// Where its bytes came from.
    pub fn from(&self) -> &'static str {
        match self {
            ManifestAnswer::Body { from, .. } | ManifestAnswer::Head { from, .. } => from,
        }
    }

    /// The bytes, when held.
    pub fn bytes(&self) -> Option<Bytes> {
        match self {
            ManifestAnswer::Body { manifest, .. } => Some(manifest.bytes.clone()),
            ManifestAnswer::Head { .. } => None,
        }
    }
}

/// Whether an upstream failure should make lasti serve what it has: it
/// could not answer, rather than said no.
pub(super) fn unreachable(err: &Error) -> bool {
    matches!(
        err,
        Error::UpstreamUnavailable { .. }
            | Error::UpstreamTimeout { .. }
            | Error::UpstreamTooManyRequests { .. }
            | Error::UpstreamSkipped { .. }
            | Error::Offline { .. }
    )
}

impl Proxy {
    /// Answers `GET`/`HEAD /v2/<repo>/manifests/<reference>` for `caller`
    /// (whose credential counts only towards an upstream that takes
    /// clients' credentials; see `gate`).
    pub async fn manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &AcceptList,
        head: bool,
        caller: &Caller,
    ) -> Result<ManifestAnswer> {
        let probe = Probe::Manifest(reference.as_str());
        let grant = self.gate.admit(upstream, repo, caller, probe).await?;
        let answer = match reference {
            Reference::Digest(digest) => {
                if !self
                    .gate
                    .holds(upstream, repo, &grant, digest, true)
                    .await?
                {
                    return Err(Error::ManifestUnknown);
                }
                self.manifest_answer_by_digest(upstream, repo, digest, &grant)
                    .await?
            }
            Reference::Tag(tag) => {
                self.manifest_by_tag(upstream, repo, tag, head, &grant)
                    .await?
            }
        };
        let backfillable = self
            .check_signed(upstream, repo, reference, &answer, caller, &grant)
            .await?;
        acceptable(accept, answer.media_type())?;
        if grant.guarded {
            match answer.bytes() {
                Some(bytes) => self
                    .gate
                    .saw_manifest(upstream, repo, answer.digest(), &bytes),
                None => self.gate.saw(upstream, repo, [answer.digest()]),
            }
        }
        if let Reference::Tag(tag) = reference {
            if backfillable && (grant.public || upstream.backfills_private()) {
                self.offer(upstream, repo, tag.as_str(), answer.digest());
            }
        }
        Ok(answer)
    }

    /// Answers another replica's manifest `GET` on the peer listener: like
    /// a client's, except that it never asks a peer in turn and offers
    /// nothing to back-fill (the asker's own answer does).
    pub async fn peer_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &AcceptList,
    ) -> Result<ManifestAnswer> {
        // Asked only for what anyone may pull: as lasti itself.
        let grant = Grant::open();
        let answer = PEER_REQUEST.scope((), async {
            match reference {
                Reference::Digest(digest) => {
                    self.manifest_answer_by_digest(upstream, repo, digest, &grant)
                        .await
                }
                Reference::Tag(tag) => {
                    self.manifest_by_tag(upstream, repo, tag, false, &grant)
                        .await
                }
            }
        });
        let answer = answer.await?;
        acceptable(accept, answer.media_type())?;
        Ok(answer)
    }

    /// The replica that resolves `reference` for the whole cluster, when
    /// it is another one and this request is not a peer's.
    fn manifest_owner(&self, upstream: &str, repo: &RepoName, reference: &str) -> Option<Owner> {
        if PEER_REQUEST.try_with(|_| ()).is_ok() {
            return None;
        }
        let cluster = self.cluster.as_ref()?;
        let key = Digest::sha256_of(format!("{upstream}/{repo}:{reference}").as_bytes());
        let member = cluster.owner(&key)?;
        Some(Owner {
            cluster: Arc::clone(cluster),
            member,
        })
    }

    /// A manifest by digest through the cache, for back-fill (as lasti
    /// itself): any media type.
    pub async fn manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        accept: &AcceptList,
    ) -> Result<Arc<Manifest>> {
        match self
            .manifest_answer_by_digest(upstream, repo, digest, &Grant::open())
            .await?
        {
            ManifestAnswer::Body { manifest, .. } => {
                acceptable(accept, &manifest.media_type)?;
                Ok(manifest)
            }
            ManifestAnswer::Head { .. } => Err(Error::ManifestUnknown),
        }
    }

    pub(super) async fn manifest_answer_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        grant: &Grant,
    ) -> Result<ManifestAnswer> {
        if let Some(manifest) = self.cache.manifest(digest).await? {
            return Ok(ManifestAnswer::Body {
                manifest,
                outcome: Outcome::Hit,
                from: CACHE,
            });
        }
        let (manifest, outcome, from) = self
            .fetch_manifest(
                upstream,
                repo,
                &digest.to_string(),
                Some(digest),
                None,
                grant,
            )
            .await?;
        Ok(ManifestAnswer::Body {
            manifest,
            outcome,
            from,
        })
    }

    async fn manifest_by_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        head: bool,
        grant: &Grant,
    ) -> Result<ManifestAnswer> {
        let tag_ref = TagRef::new(upstream, repo, tag);
        let key = tag_ref.key();
        let ttl = upstream.tag_ttl(repo, tag.as_str());
        let fresh = |r: &TagRecord| r.age(SystemTime::now()) < ttl;
        // Versions that forwarded the client's `Accept` could record a
        // converted schema 1 answer; such a record is asked for again.
        let local = self
            .cache
            .tag(&key)
            .await?
            .filter(|r| !media_type::is_schema1(&r.media_type))
            .map(|r| r.trusted(unix_now()));
        if let Some(record) = local.as_ref().filter(|r| fresh(r)) {
            return self
                .answer_recorded(upstream, repo, record.clone(), head, Outcome::Hit, grant)
                .await;
        }
        // Another replica may have asked the upstream since: its answer
        // counts as this replica's own, for the rest of the same TTL.
        let shared = shared::shared_tag(self.bucket.as_ref(), &tag_ref)
            .await
            .map(|r| r.trusted(unix_now()));
        let newer = |a: TagRecord, b: TagRecord| match b.checked_at > a.checked_at {
            true => b,
            false => a,
        };
        let recorded = match (local, shared) {
            (Some(a), Some(b)) => Some(newer(a, b)),
            (a, b) => a.or(b),
        };
        if let Some(record) = recorded {
            if fresh(&record) {
                if let Err(err) = self.cache.put_tag(&key, record.clone()).await {
                    tracing::error!(tag = key, error = %err, "cannot record a tag");
                }
                return self
                    .answer_recorded(upstream, repo, record, head, Outcome::Hit, grant)
                    .await;
            }
            match upstream
                .head_manifest(&grant.caller, repo, tag.as_str(), DEFAULT_MANIFEST_ACCEPT)
                .await
            {
                Ok(found) if found.digest.as_ref() == Some(&record.digest) => {
                    let refreshed = TagRecord {
                        checked_at: unix_now(),
                        ..record
                    };
                    self.record_tag(&tag_ref, refreshed.clone()).await;
                    return self
                        .answer_recorded(
                            upstream,
                            repo,
                            refreshed,
                            head,
                            Outcome::Revalidated,
                            grant,
                        )
                        .await;
                }
                Ok(_) => {}
                Err(err) if unreachable(&err) => {
                    tracing::warn!(upstream = upstream.name(), %repo, %tag, error = %err, "upstream unreachable; serving a stale tag");
                    return self
                        .answer_recorded(upstream, repo, record, head, Outcome::Stale, grant)
                        .await;
                }
                Err(err) => return Err(err),
            }
        }
        if head {
            if let Some(answer) = self.head_tag(upstream, repo, tag, &tag_ref, grant).await? {
                return Ok(answer);
            }
        }
        let fetched = self
            .fetch_manifest(upstream, repo, tag.as_str(), None, Some(tag_ref), grant)
            .await;
        let (manifest, outcome, from) = match fetched {
            Err(err) if unreachable(&err) => {
                let Some(manifest) = self.tag_from_project(upstream, repo, tag).await else {
                    return Err(err);
                };
                tracing::warn!(upstream = upstream.name(), %repo, %tag, error = %err, "upstream unreachable; serving the project's tag");
                return Ok(ManifestAnswer::Body {
                    manifest,
                    outcome: Outcome::Stale,
                    from: "project",
                });
            }
            other => other?,
        };
        Ok(ManifestAnswer::Body {
            manifest,
            outcome,
            from,
        })
    }

    /// A `HEAD` of an unknown tag asks the upstream's `HEAD` and records the
    /// answer, so the client's next `GET` of the tag gets the same digest.
    /// A schema 1 answer is refused, never recorded.
    async fn head_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        tag_ref: &TagRef,
        grant: &Grant,
    ) -> Result<Option<ManifestAnswer>> {
        let found = match upstream
            .head_manifest(&grant.caller, repo, tag.as_str(), DEFAULT_MANIFEST_ACCEPT)
            .await
        {
            // Let the GET path try the project's copy.
            Err(err) if unreachable(&err) => return Ok(None),
            other => other?,
        };
        let (Some(digest), Some(media_type), Some(size)) =
            (found.digest, found.media_type, found.size)
        else {
            return Ok(None);
        };
        if media_type::is_schema1(&media_type) {
            return Err(schema1_refused(upstream, &media_type));
        }
        if !media_type::is_manifest_type(&media_type) {
            return Ok(None);
        }
        let record = TagRecord {
            digest: digest.clone(),
            media_type: media_type.clone(),
            size,
            checked_at: unix_now(),
        };
        self.record_tag(tag_ref, record).await;
        Ok(Some(ManifestAnswer::Head {
            digest,
            media_type,
            size,
            outcome: Outcome::Passthrough,
            from: "upstream",
        }))
    }

    async fn answer_recorded(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        record: TagRecord,
        head: bool,
        outcome: Outcome,
        grant: &Grant,
    ) -> Result<ManifestAnswer> {
        if head {
            // A HEAD is a use too: keep the manifest from looking cold.
            self.cache.touch(&record.digest);
            return Ok(ManifestAnswer::Head {
                digest: record.digest,
                media_type: record.media_type,
                size: record.size,
                outcome,
                from: CACHE,
            });
        }
        if let Some(manifest) = self.cache.manifest(&record.digest).await? {
            return Ok(ManifestAnswer::Body {
                manifest,
                outcome,
                from: CACHE,
            });
        }
        let reference = record.digest.to_string();
        let (manifest, _, from) = self
            .fetch_manifest(
                upstream,
                repo,
                &reference,
                Some(&record.digest),
                None,
                grant,
            )
            .await?;
        Ok(ManifestAnswer::Body {
            manifest,
            outcome: Outcome::Miss,
            from,
        })
    }

    /// Records what the upstream just said of a tag, here and for the
    /// other replicas.
    async fn record_tag(&self, tag: &TagRef, record: TagRecord) {
        shared::share_tag(self.bucket.as_ref(), tag, record.clone());
        put_tag_record(&self.cache, tag, record).await;
    }

    /// Fetches a manifest once for all concurrent askers, verifies and
    /// stores it, and records the tag it was fetched by.
    async fn fetch_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<TagRef>,
        grant: &Grant,
    ) -> Result<(Arc<Manifest>, Outcome, &'static str)> {
        // Content by digest may come from the project; a tag always asks the upstream.
        let sources = match expected {
            Some(_) => self.sources(upstream, repo).await,
            None => vec![(Arc::clone(upstream), repo.clone())],
        };
        self.fetch_manifest_from(sources, reference, expected, tag, grant)
            .await
    }

    /// Fetches a manifest from the first source that has it (by digest,
    /// the shared bucket first), once for all concurrent askers; verifies
    /// and stores it, and shares what a registry sent through the bucket.
    /// The tag record is written inside the flight, so a request arriving
    /// just after it finds the tag. The upstream is asked as `grant` says;
    /// the project as lasti; only what anyone may pull goes to the cluster.
    async fn fetch_manifest_from(
        &self,
        sources: super::blobs::Sources,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<TagRef>,
        grant: &Grant,
    ) -> Result<(Arc<Manifest>, Outcome, &'static str)> {
        let (first, first_repo) = sources.first().expect("at least one source");
        // The project's copy of a tag (its upstream unreachable) is not the
        // cluster's to resolve: only what names an upstream is routed.
        let (upstream, repo) = sources.last().expect("at least one source");
        let owner = (grant.public && (expected.is_some() || tag.is_some()))
            .then(|| self.manifest_owner(upstream.name(), repo, reference))
            .flatten();
        let caller = grant.caller.clone();
        let key = FlightKey {
            upstream: first.name().to_string(),
            repo: first_repo.clone(),
            reference: reference.to_string(),
        };
        let (cache, limit, expected) = (
            self.cache.clone(),
            self.max_manifest_size,
            expected.cloned(),
        );
        let reference = reference.to_string();
        let bucket = self.bucket.clone();
        let work = move || async move {
            // A flight for the tag that ended while this request looked
            // elsewhere (its own record, the bucket) left its record: no
            // second fetch.
            if let Some(manifest) = recorded_since_asked(&cache, tag.as_ref()).await {
                return Ok((manifest, CACHE));
            }
            if let Some(expected) = &expected {
                let stored = shared::manifest_from_bucket(bucket.as_ref(), expected, limit).await;
                let checked = stored.map(|f| verify(&sources[0].0, f, Some(expected)));
                match checked {
                    Some(Ok(manifest)) => return Ok((keep(&cache, manifest).await, "bucket")),
                    // A registry's answer will replace it in the bucket.
                    Some(Err(err)) => {
                        tracing::warn!(digest = %expected, error = %err, "a manifest in the object store fails its check")
                    }
                    None => {}
                }
            }
            if let Some(owner) = owner {
                let (upstream, repo) = sources.last().expect("at least one source");
                let fetched = owner
                    .cluster
                    .client()
                    .get_manifest(&owner.member, upstream.name(), repo, &reference, limit)
                    .await;
                match fetched.and_then(|f| verify(upstream, f, expected.as_ref())) {
                    Ok(manifest) => {
                        owner.cluster.fetched_from(&owner.member);
                        // The owner shared it (and the tag) with the bucket.
                        let manifest = keep(&cache, manifest).await;
                        if let Some(tag) = &tag {
                            put_tag_record(&cache, tag, confirmed_now(&manifest)).await;
                        }
                        return Ok((manifest, "peer"));
                    }
                    // Availability before deduplication: ask by itself.
                    Err(err) => owner.cluster.failed(&owner.member, &err),
                }
            }
            let mut last = Error::ManifestUnknown;
            for (i, (source, repo)) in sources.iter().enumerate() {
                // The upstream is last; a registry before it is the project.
                let (from, caller) = match i + 1 == sources.len() {
                    true => ("upstream", caller.clone()),
                    false => ("project", Caller::lasti()),
                };
                let fetched = source
                    .get_manifest(&caller, repo, &reference, DEFAULT_MANIFEST_ACCEPT, limit)
                    .await;
                match fetched.and_then(|f| verify(source, f, expected.as_ref())) {
                    Ok(manifest) => {
                        let manifest = keep(&cache, manifest).await;
                        shared::share_manifest(bucket.as_ref(), &manifest);
                        if let Some(tag) = &tag {
                            let record = confirmed_now(&manifest);
                            shared::share_tag(bucket.as_ref(), tag, record.clone());
                            put_tag_record(&cache, tag, record).await;
                        }
                        return Ok((manifest, from));
                    }
                    Err(err) => last = err,
                }
            }
            Err(last)
        };
        let (result, joined) = self.manifest_flights.run(key, work).await;
        let outcome = if joined {
            Outcome::Coalesced
        } else {
            Outcome::Miss
        };
        result.map(|(m, from)| (m, outcome, from))
    }

    /// When the upstream cannot be reached and lasti has never seen the
    /// tag, the project's copy of it serves.
    async fn tag_from_project(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Option<Arc<Manifest>> {
        let backfill = self.backfill.as_ref()?;
        let target_repo = backfill.read_through_repo(upstream.name(), repo).await?;
        let sources = vec![(Arc::clone(backfill.target()), target_repo)];
        let (manifest, _, _) = self
            .fetch_manifest_from(sources, tag.as_str(), None, None, &Grant::open())
            .await
            .ok()?;
        Some(manifest)
    }
}

tokio::task_local! {
    /// Set while answering another replica on the peer listener: such a
    /// request never asks a peer in turn, so replicas whose member lists
    /// differ for a moment cannot send a manifest round in circles.
    static PEER_REQUEST: ();
}

/// The replica that resolves a manifest for the cluster.
struct Owner {
    cluster: Arc<Cluster>,
    member: String,
}

/// The record of a tag that names `manifest`, confirmed now.
fn confirmed_now(manifest: &Manifest) -> TagRecord {
    TagRecord {
        digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        size: manifest.bytes.len() as u64,
        checked_at: unix_now(),
    }
}

/// The manifest of `tag`'s local record, if it was confirmed since the
/// request asked (by a flight that ended meanwhile) and is still held.
async fn recorded_since_asked(cache: &Cache, tag: Option<&TagRef>) -> Option<Arc<Manifest>> {
    let tag = tag?;
    let record = cache.tag(&tag.key()).await.ok()??;
    if record.checked_at < tag.asked_at || media_type::is_schema1(&record.media_type) {
        return None;
    }
    cache.manifest(&record.digest).await.ok()?
}

/// Writes a tag record to the local index; a failure is logged, not fatal
/// (the tag is asked again next time).
async fn put_tag_record(cache: &Cache, tag: &TagRef, record: TagRecord) {
    let key = tag.key();
    if let Err(err) = cache.put_tag(&key, record).await {
        tracing::error!(tag = key, error = %err, "cannot record a tag");
    }
}

/// Stores a verified manifest in the cache. A manifest that cannot be
/// stored is still served: the client asked for it and it is verified.
async fn keep(cache: &Cache, manifest: Manifest) -> Arc<Manifest> {
    let manifest = Arc::new(manifest);
    if let Err(err) = cache.put_manifest(Arc::clone(&manifest)).await {
        tracing::error!(digest = %manifest.digest, error = %err, "cannot store a manifest; serving it anyway");
    }
    manifest
}

/// Settles a fetched manifest's media type, refuses schema 1, and checks
/// the bytes against the digest asked for and the digest the upstream announced.
fn verify(
    upstream: &Upstream,
    fetched: crate::upstream::FetchedManifest,
    expected: Option<&Digest>,
) -> Result<Manifest> {
    let invalid = |message: String| upstream.invalid(message);
    // The bytes are served as they are, but they must at least be JSON.
    if serde_json::from_slice::<serde::de::IgnoredAny>(&fetched.bytes).is_err() {
        return Err(invalid("the manifest is not valid JSON".into()));
    }
    let declared = fetched
        .media_type
        .as_deref()
        .map(|t| media_type::essence(t).to_string())
        .filter(|t| media_type::is_manifest_type(t));
    let media_type = declared
        .or_else(|| media_type::sniff_manifest_type(&fetched.bytes))
        .ok_or_else(|| invalid("the manifest is not JSON of a known manifest type".into()))?;
    // Before the digest check: a signed schema 1 digest covers only the JWS
    // payload, so a mismatch would hide the real reason.
    if media_type::is_schema1(&media_type) {
        return Err(schema1_refused(upstream, &media_type));
    }
    let algorithm = expected
        .or(fetched.digest.as_ref())
        .map(Digest::algorithm)
        .unwrap_or(crate::oci::Algorithm::Sha256);
    let mut hasher = Hasher::new(algorithm);
    hasher.update(&fetched.bytes);
    let actual = hasher.finish();
    for claimed in [expected, fetched.digest.as_ref()].into_iter().flatten() {
        if claimed.algorithm() == algorithm && *claimed != actual {
            return Err(invalid(format!(
                "manifest bytes hash to {actual}, not {claimed}"
            )));
        }
    }
    Ok(Manifest {
        digest: actual,
        media_type,
        bytes: fetched.bytes,
    })
}

/// The error for a schema 1 answer, whose type the upstream sent even
/// though lasti asked only for modern types: the image exists upstream only
/// in that obsolete form.
fn schema1_refused(upstream: &Upstream, media_type: &str) -> Error {
    upstream.invalid(format!(
        "a schema1 manifest ({media_type}), which lasti does not serve; \
         the image must be pushed as Docker schema 2 or OCI"
    ))
}

/// Serves `media_type` only to a client whose `Accept` allows it; otherwise
/// the spec's 404 `MANIFEST_UNKNOWN`, naming the stored type.
fn acceptable(accept: &AcceptList, media_type: &str) -> Result<()> {
    if accept.allows(media_type) {
        Ok(())
    } else {
        Err(Error::NotAcceptable(media_type.to_string()))
    }
}
