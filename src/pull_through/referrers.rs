//! The referrers API of OCI distribution 1.1: which signatures, SBOMs and
//! attestations point at a manifest (what cosign, notation and policy
//! engines such as Kyverno ask before they admit an image).
//!
//! A list changes whenever someone pushes a signature, so it is kept like a
//! tag, not like content: in memory, fresh for the upstream's tag TTL (the
//! rule for the `sha256-<hex>` tag, the referrers tag schema's name for the
//! same list), served stale when the upstream fails, never on disk. The
//! artifacts it lists are manifests by digest and are cached as usual.
//!
//! When no list can be had (the upstream has no referrers API, or it is down
//! and nothing is cached), the answer is a 404: the spec's signal for
//! clients to fall back to the tag schema, whose tags lasti serves from its
//! cache like any other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;

use super::gate::Probe;
use super::single_flight::SingleFlight;
use super::{Outcome, Proxy};
use crate::error::{Error, Result};
use crate::oci::{Digest, RepoName};
use crate::upstream::{Caller, Referrers, Upstream};

/// Bytes of lists kept at most (a list is a few descriptors, about 200
/// bytes each), so memory stays bounded whatever upstreams send.
const KEPT_BYTES: u64 = 16 * 1024 * 1024;

/// (upstream, repository, subject digest, artifact type filter).
type Key = (String, String, String, Option<String>);

/// A list as last fetched.
#[derive(Debug)]
pub struct Entry {
    body: Bytes,
    filters_applied: Option<HeaderValue>,
    fetched: Instant,
}

/// The referrers lists lasti holds, and the fetches of them in flight (one
/// per list however many clients ask, as when a deployment's pods are all
/// admitted at once).
#[derive(Debug)]
pub struct Lists {
    kept: moka::sync::Cache<Key, Arc<Entry>>,
    flights: SingleFlight<Key, Result<Referrers>>,
}

impl Default for Lists {
    fn default() -> Self {
        Lists {
            kept: moka::sync::Cache::builder()
                .weigher(|_, entry: &Arc<Entry>| {
                    u32::try_from(entry.body.len()).unwrap_or(u32::MAX)
                })
                .max_capacity(KEPT_BYTES)
                .build(),
            flights: SingleFlight::default(),
        }
    }
}

/// A referrers list to send.
#[derive(Debug, Clone)]
pub struct ReferrersAnswer {
    /// The image index.
    pub body: Bytes,
    /// `OCI-Filters-Applied`, passed on from the upstream.
    pub filters_applied: Option<HeaderValue>,
    /// Fresh from memory, fetched, or stale.
    pub outcome: Outcome,
}

impl ReferrersAnswer {
    fn from(entry: &Entry, outcome: Outcome) -> ReferrersAnswer {
        ReferrersAnswer {
            body: entry.body.clone(),
            filters_applied: entry.filters_applied.clone(),
            outcome,
        }
    }
}

impl Proxy {
    /// The manifests that name `subject` as their subject, optionally only
    /// those of one artifact type.
    pub async fn referrers(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        caller: &Caller,
    ) -> Result<ReferrersAnswer> {
        let probe = Probe::Manifest(subject.as_str());
        let grant = self.gate.admit(upstream, repo, caller, probe).await?;
        let key: Key = (
            upstream.name().to_string(),
            repo.to_string(),
            subject.to_string(),
            artifact_type.map(str::to_string),
        );
        let lists = &self.referrers;
        let cached = lists.kept.get(&key);
        let schema_tag = subject.as_str().replacen(':', "-", 1);
        let ttl: Duration = upstream.tag_ttl(repo, &schema_tag);
        if let Some(entry) = &cached {
            if entry.fetched.elapsed() < ttl {
                return Ok(ReferrersAnswer::from(entry, Outcome::Hit));
            }
        }
        let limit = self.max_manifest_size as usize;
        let work = {
            let (upstream, repo, subject) = (Arc::clone(upstream), repo.clone(), subject.clone());
            let artifact_type = artifact_type.map(str::to_string);
            let caller = grant.caller;
            move || async move {
                upstream
                    .referrers(&caller, &repo, &subject, artifact_type.as_deref(), limit)
                    .await
            }
        };
        let (fetched, joined) = lists.flights.run(key.clone(), work).await;
        match fetched {
            Ok(list) => {
                let entry = Arc::new(Entry {
                    body: list.body,
                    filters_applied: list.filters_applied,
                    fetched: Instant::now(),
                });
                lists.kept.insert(key, Arc::clone(&entry));
                let outcome = if joined {
                    Outcome::Coalesced
                } else {
                    Outcome::Miss
                };
                Ok(ReferrersAnswer::from(&entry, outcome))
            }
            // The upstream answered: it has no such list (or no such API).
            Err(Error::ManifestUnknown) => {
                lists.kept.invalidate(&key);
                Err(Error::ManifestUnknown)
            }
            Err(err @ (Error::UpstreamDenied { .. } | Error::Denied(_))) => Err(err),
            Err(err) => match cached {
                Some(entry) => {
                    tracing::info!(error = %err, "upstream failed; serving stale referrers");
                    Ok(ReferrersAnswer::from(&entry, Outcome::Stale))
                }
                None => Err(Error::ReferrersUnavailable {
                    upstream: upstream.name().to_string(),
                    message: err.to_string(),
                }),
            },
        }
    }
}
