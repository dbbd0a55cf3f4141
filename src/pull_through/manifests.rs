//! Manifests: by digest they are immutable and served from the cache
//! forever; by tag the last answer is trusted for its TTL, then revalidated
//! with a `HEAD` (which Docker Hub does not count as a pull), and served
//! stale when the upstream cannot be reached.
//!
//! The exact bytes and media type from the upstream are kept and served;
//! nothing is ever converted. A stored manifest is served only to a client
//! whose `Accept` allows its type.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::single_flight::SingleFlight;
use super::{Outcome, Proxy};
use crate::cache::index::{tag_key, unix_now, TagRecord};
use crate::cache::Manifest;
use crate::error::{Error, Result};
use crate::oci::media_type::{self, DEFAULT_MANIFEST_ACCEPT};
use crate::oci::{AcceptList, Digest, Hasher, Reference, RepoName, Tag};
use crate::upstream::Upstream;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    upstream: String,
    repo: RepoName,
    reference: String,
    accept: String,
}

/// Manifest fetches in flight, shared by concurrent requests.
pub(super) type Flights = SingleFlight<FlightKey, Result<Arc<Manifest>>>;

/// A manifest answer: the whole manifest, or only its description (HEAD).
#[derive(Debug)]
pub enum ManifestAnswer {
    /// The stored manifest.
    Body {
        /// The manifest.
        manifest: Arc<Manifest>,
        /// How it was found.
        outcome: Outcome,
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

    /// The bytes, when held.
    pub fn bytes(&self) -> Option<Bytes> {
        match self {
            ManifestAnswer::Body { manifest, .. } => Some(manifest.bytes.clone()),
            ManifestAnswer::Head { .. } => None,
        }
    }
}

/// Whether an upstream failure should make lasti serve what it has.
fn unreachable(err: &Error) -> bool {
    matches!(
        err,
        Error::UpstreamUnavailable { .. }
            | Error::UpstreamTimeout { .. }
            | Error::UpstreamTooManyRequests { .. }
    )
}

impl Proxy {
    /// Answers `GET`/`HEAD /v2/<repo>/manifests/<reference>`.
    pub async fn manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer> {
        match reference {
            Reference::Digest(digest) => {
                self.manifest_answer_by_digest(upstream, repo, digest, accept)
                    .await
            }
            Reference::Tag(tag) => {
                let answer = self
                    .manifest_by_tag(upstream, repo, tag, accept, head)
                    .await?;
                self.offer(upstream, repo, tag.as_str(), answer.digest());
                Ok(answer)
            }
        }
    }

    /// A manifest by digest through the cache, for back-fill: any media type.
    pub async fn manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        accept: &AcceptList,
    ) -> Result<Arc<Manifest>> {
        match self
            .manifest_answer_by_digest(upstream, repo, digest, accept)
            .await?
        {
            ManifestAnswer::Body { manifest, .. } => Ok(manifest),
            ManifestAnswer::Head { .. } => Err(Error::ManifestUnknown),
        }
    }

    async fn manifest_answer_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        accept: &AcceptList,
    ) -> Result<ManifestAnswer> {
        if let Some(manifest) = self.cache.manifest(digest).await? {
            if !accept.allows(&manifest.media_type) {
                return Err(Error::NotAcceptable(manifest.media_type.clone()));
            }
            return Ok(ManifestAnswer::Body {
                manifest,
                outcome: Outcome::Hit,
            });
        }
        let (manifest, outcome) = self
            .fetch_manifest(
                upstream,
                repo,
                &digest.to_string(),
                accept,
                Some(digest),
                None,
            )
            .await?;
        Ok(ManifestAnswer::Body { manifest, outcome })
    }

    async fn manifest_by_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &AcceptList,
        head: bool,
    ) -> Result<ManifestAnswer> {
        let key = tag_key(upstream.name(), repo.as_str(), tag.as_str());
        let recorded = self
            .cache
            .tag(&key)
            .await?
            .filter(|r| accept.allows(&r.media_type));
        if let Some(record) = recorded {
            if record.age(SystemTime::now()) < upstream.tag_ttl(repo, tag.as_str()) {
                return self
                    .answer_recorded(upstream, repo, record, accept, head, Outcome::Hit)
                    .await;
            }
            match upstream
                .head_manifest(repo, tag.as_str(), &accept_header(accept))
                .await
            {
                Ok(found) if found.digest.as_ref() == Some(&record.digest) => {
                    let refreshed = TagRecord {
                        checked_at: unix_now(),
                        ..record
                    };
                    self.record_tag(&key, refreshed.clone()).await;
                    return self
                        .answer_recorded(
                            upstream,
                            repo,
                            refreshed,
                            accept,
                            head,
                            Outcome::Revalidated,
                        )
                        .await;
                }
                Ok(_) => {}
                Err(err) if unreachable(&err) => {
                    tracing::warn!(upstream = upstream.name(), %repo, %tag, error = %err, "upstream unreachable; serving a stale tag");
                    return self
                        .answer_recorded(upstream, repo, record, accept, head, Outcome::Stale)
                        .await;
                }
                Err(err) => return Err(err),
            }
        }
        if head {
            if let Some(answer) = self.head_tag(upstream, repo, tag, accept, &key).await? {
                return Ok(answer);
            }
        }
        let fetched = self
            .fetch_manifest(upstream, repo, tag.as_str(), accept, None, Some(key))
            .await;
        let (manifest, outcome) = match fetched {
            Err(err) if unreachable(&err) => {
                let Some(manifest) = self.tag_from_project(upstream, repo, tag, accept).await
                else {
                    return Err(err);
                };
                tracing::warn!(upstream = upstream.name(), %repo, %tag, error = %err, "upstream unreachable; serving the project's tag");
                return Ok(ManifestAnswer::Body {
                    manifest,
                    outcome: Outcome::Stale,
                });
            }
            other => other?,
        };
        Ok(ManifestAnswer::Body { manifest, outcome })
    }

    /// A `HEAD` of an unknown tag asks the upstream's `HEAD` and records the
    /// answer, so the client's next `GET` of the tag gets the same digest.
    async fn head_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &AcceptList,
        key: &str,
    ) -> Result<Option<ManifestAnswer>> {
        let found = match upstream
            .head_manifest(repo, tag.as_str(), &accept_header(accept))
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
        if !media_type::is_manifest_type(&media_type) {
            return Ok(None);
        }
        let record = TagRecord {
            digest: digest.clone(),
            media_type: media_type.clone(),
            size,
            checked_at: unix_now(),
        };
        self.record_tag(key, record).await;
        Ok(Some(ManifestAnswer::Head {
            digest,
            media_type,
            size,
            outcome: Outcome::Passthrough,
        }))
    }

    async fn answer_recorded(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        record: TagRecord,
        accept: &AcceptList,
        head: bool,
        outcome: Outcome,
    ) -> Result<ManifestAnswer> {
        if head {
            return Ok(ManifestAnswer::Head {
                digest: record.digest,
                media_type: record.media_type,
                size: record.size,
                outcome,
            });
        }
        if let Some(manifest) = self.cache.manifest(&record.digest).await? {
            return Ok(ManifestAnswer::Body { manifest, outcome });
        }
        let reference = record.digest.to_string();
        let (manifest, _) = self
            .fetch_manifest(
                upstream,
                repo,
                &reference,
                accept,
                Some(&record.digest),
                None,
            )
            .await?;
        Ok(ManifestAnswer::Body {
            manifest,
            outcome: Outcome::Miss,
        })
    }

    async fn record_tag(&self, key: &str, record: TagRecord) {
        if let Err(err) = self.cache.put_tag(key, record).await {
            tracing::error!(error = %err, "cannot record a tag");
        }
    }

    /// Fetches a manifest once for all concurrent askers, verifies and
    /// stores it, and records the tag (`tag_key`) it was fetched by.
    async fn fetch_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &str,
        accept: &AcceptList,
        expected: Option<&Digest>,
        tag_key: Option<String>,
    ) -> Result<(Arc<Manifest>, Outcome)> {
        // Content by digest may come from the project; a tag always asks the upstream.
        let sources = match expected {
            Some(_) => self.sources(upstream, repo).await,
            None => vec![(Arc::clone(upstream), repo.clone())],
        };
        self.fetch_manifest_from(sources, reference, accept, expected, tag_key)
            .await
    }

    /// Fetches a manifest from the first source that has it, once for all
    /// concurrent askers; verifies and stores it. The tag record is written
    /// inside the flight, so a request arriving just after it finds the tag.
    async fn fetch_manifest_from(
        &self,
        sources: super::blobs::Sources,
        reference: &str,
        accept: &AcceptList,
        expected: Option<&Digest>,
        tag_key: Option<String>,
    ) -> Result<(Arc<Manifest>, Outcome)> {
        let accept = accept_header(accept);
        let (first, first_repo) = sources.first().expect("at least one source");
        let key = FlightKey {
            upstream: first.name().to_string(),
            repo: first_repo.clone(),
            reference: reference.to_string(),
            accept: accept.clone(),
        };
        let (cache, limit, expected) = (
            self.cache.clone(),
            self.max_manifest_size,
            expected.cloned(),
        );
        let reference = reference.to_string();
        let work = move || async move {
            let mut last = Error::ManifestUnknown;
            for (source, repo) in &sources {
                let fetched = source.get_manifest(repo, &reference, &accept, limit).await;
                match fetched.and_then(|f| verify(source, f, expected.as_ref())) {
                    Ok(manifest) => {
                        let manifest = Arc::new(manifest);
                        if let Err(err) = cache.put_manifest(Arc::clone(&manifest)).await {
                            tracing::error!(error = %err, "cannot store a manifest; serving it anyway");
                        }
                        if let Some(key) = &tag_key {
                            let record = TagRecord {
                                digest: manifest.digest.clone(),
                                media_type: manifest.media_type.clone(),
                                size: manifest.bytes.len() as u64,
                                checked_at: unix_now(),
                            };
                            if let Err(err) = cache.put_tag(key, record).await {
                                tracing::error!(error = %err, "cannot record a tag");
                            }
                        }
                        return Ok(manifest);
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
        result.map(|m| (m, outcome))
    }

    /// When the upstream cannot be reached and lasti has never seen the
    /// tag, the project's copy of it serves.
    async fn tag_from_project(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &AcceptList,
    ) -> Option<Arc<Manifest>> {
        let backfill = self.backfill.as_ref()?;
        let target_repo = backfill.read_through_repo(upstream.name(), repo).await?;
        let sources = vec![(Arc::clone(backfill.target()), target_repo)];
        let (manifest, _) = self
            .fetch_manifest_from(sources, tag.as_str(), accept, None, None)
            .await
            .ok()?;
        Some(manifest)
    }
}

/// Checks a fetched manifest against the digest asked for and the digest the
/// upstream announced, and settles its media type.
fn verify(
    upstream: &Upstream,
    fetched: crate::upstream::FetchedManifest,
    expected: Option<&Digest>,
) -> Result<Manifest> {
    let invalid = |message: String| Error::UpstreamInvalid {
        upstream: upstream.name().to_string(),
        message,
    };
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
    Ok(Manifest {
        digest: actual,
        media_type,
        bytes: fetched.bytes,
    })
}

/// What lasti sends upstream as `Accept`: the client's list, else every
/// modern manifest type.
fn accept_header(accept: &AcceptList) -> String {
    accept
        .header_value()
        .unwrap_or_else(|| DEFAULT_MANIFEST_ACCEPT.to_string())
}
