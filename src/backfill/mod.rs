//! Back-fill: every image pulled through lasti is pushed, asynchronously and
//! durably, into the Rahti project's integrated registry, so its image
//! stream exists there for deployments and survives the proxy.
//!
//! - The request path only *offers* an image ([`Backfill::offer`]): a
//!   non-blocking send on a bounded channel, deduplicated in memory.
//! - The intake task names the image stream ([`naming`]), skips what the
//!   target is known to hold, and persists a job ([`store`]) before it counts
//!   as accepted.
//! - The dispatcher runs due jobs on at most `workers` tasks ([`job`]),
//!   retrying transient failures with exponential backoff and jitter, and
//!   stops on permanent ones (DENIED, NAME_INVALID, quota).
//! - At start every pending job is taken up again.

pub mod job;
pub mod naming;
pub mod store;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::config::{Config, TargetConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::pull_through::Proxy;
use crate::upstream::auth::{Credentials, Password};
use crate::upstream::Upstream;
use naming::Namer;
use store::{Job, JobState, JobStore};

/// Offers waiting for the intake; more are dropped (the next pull offers again).
const OFFER_CHANNEL_CAPACITY: usize = 1024;
/// An offer of the same image within this long is ignored on the request path.
const OFFER_DEDUP_TTL: Duration = Duration::from_secs(60);
/// Finished jobs listed by `/admin/backfill`.
const RECENT_LISTED: usize = 50;

/// An image served to a client, offered for back-fill.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// The handle the proxy and the admin listener hold.
#[derive(Debug, Clone)]
pub struct Backfill {
    offers: mpsc::Sender<Offer>,
    recent: moka::sync::Cache<Offer, ()>,
    store: Arc<JobStore>,
    wake: Arc<Notify>,
    config: Arc<TargetConfig>,
    target: Arc<Upstream>,
    namer: Namer,
    names: moka::sync::Cache<String, RepoName>,
}

/// What is needed to start the tasks once the proxy exists.
pub struct Pending {
    handle: Backfill,
    offers: mpsc::Receiver<Offer>,
}

impl Backfill {
    /// Opens the store and builds the target client, when a target is configured.
    pub fn open(
        data_dir: &Path,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Pending>> {
        let target = &config.target;
        let (Some(url), Some(_)) = (&target.url, &target.project) else {
            return Ok(None);
        };
        let store = Arc::new(JobStore::open(&data_dir.join("backfill.redb"))?);
        let client = target_client(target, url.clone(), metrics).map_err(Error::Storage)?;
        let (tx, rx) = mpsc::channel(OFFER_CHANNEL_CAPACITY);
        let handle = Backfill {
            offers: tx,
            recent: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(OFFER_DEDUP_TTL)
                .build(),
            store,
            wake: Arc::new(Notify::new()),
            config: Arc::new(target.clone()),
            target: Arc::new(client),
            namer: Namer::new(target.naming.clone(), default_upstream(config)),
            names: moka::sync::Cache::new(10_000),
        };
        Ok(Some(Pending { handle, offers: rx }))
    }

    /// The target registry, for reads through the project.
    pub fn target(&self) -> &Arc<Upstream> {
        &self.target
    }

    /// The project repository that back-fill gives `repo` of `upstream`
    /// (whether or not this instance pushed it), when reading through the
    /// project is on.
    pub async fn read_through_repo(&self, upstream: &str, repo: &RepoName) -> Option<RepoName> {
        if !self.config.read_through {
            return None;
        }
        self.read_through_repo_any(upstream, repo).await
    }

    /// The project repository that back-fill gives `repo` of `upstream`.
    async fn read_through_repo_any(&self, upstream: &str, repo: &RepoName) -> Option<RepoName> {
        let source = Namer::source(upstream, repo);
        if let Some(found) = self.names.get(&source) {
            return Some(found);
        }
        let store = Arc::clone(&self.store);
        let (namer, project) = (self.namer.clone(), self.config.project.clone()?);
        let (up, r) = (upstream.to_string(), repo.clone());
        let found = tokio::task::spawn_blocking(move || {
            let name = namer.stream_name(&up, &r, |n| store.stream_holder(n).ok().flatten());
            RepoName::parse(&format!("{project}/{name}")).ok()
        })
        .await
        .ok()
        .flatten()?;
        self.names.insert(source, found.clone());
        Some(found)
    }

    /// Offers a served image; never blocks, never fails the request.
    pub fn offer(&self, offer: Offer) {
        if self.recent.contains_key(&offer) {
            return;
        }
        self.recent.insert(offer.clone(), ());
        if self.offers.try_send(offer).is_err() {
            tracing::debug!(
                "back-fill intake is full; the image will be offered again on its next pull"
            );
        }
    }

    /// Whether the project holds this tag at this digest (back-filled).
    pub async fn holds(&self, upstream: &str, repo: &RepoName, tag: &str, digest: &Digest) -> bool {
        let Some(target_repo) = self.read_through_repo_any(upstream, repo).await else {
            return false;
        };
        let store = Arc::clone(&self.store);
        let (tag, digest) = (tag.to_string(), digest.clone());
        tokio::task::spawn_blocking(move || store.holds(target_repo.as_str(), &tag, &digest))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(false)
    }

    /// Jobs waiting or retrying, for the queue-depth gauge.
    pub async fn pending_count(&self) -> usize {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.pending()).await {
            Ok(Ok(pending)) => pending.len(),
            _ => 0,
        }
    }

    /// The queue as `/admin/backfill` shows it.
    pub async fn status(&self) -> Result<Status> {
        let store = Arc::clone(&self.store);
        let jobs = tokio::task::spawn_blocking(move || store.jobs())
            .await
            .map_err(|e| Error::storage("backfill status", e))??;
        let pick = |state: JobState, limit: usize| -> Vec<Job> {
            jobs.iter()
                .filter(|j| j.state == state)
                .take(limit)
                .cloned()
                .collect()
        };
        Ok(Status {
            target: self
                .config
                .url
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            project: self.config.project.clone().unwrap_or_default(),
            pending: pick(JobState::Pending, usize::MAX),
            failed: pick(JobState::Failed, RECENT_LISTED),
            recent: pick(JobState::Done, RECENT_LISTED),
        })
    }
}

/// The back-fill queue's state, for operators.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The target registry.
    pub target: String,
    /// The project.
    pub project: String,
    /// Jobs still to do (with their last error, if any).
    pub pending: Vec<Job>,
    /// Jobs given up, newest first.
    pub failed: Vec<Job>,
    /// Jobs done, newest first.
    pub recent: Vec<Job>,
}

impl Pending {
    /// The handle to give the proxy.
    pub fn handle(&self) -> Backfill {
        self.handle.clone()
    }

    /// Starts the intake and the dispatcher. They run until the runtime ends;
    /// a job cut short stays pending and runs again at the next start.
    pub fn start(self, proxy: Arc<Proxy>) {
        let ctx = job::Context {
            proxy,
            target: Arc::clone(&self.handle.target),
            store: Arc::clone(&self.handle.store),
            config: Arc::clone(&self.handle.config),
        };
        let namer = self.handle.namer.clone();
        tokio::spawn(worker::intake(self.offers, namer, self.handle.clone()));
        tokio::spawn(worker::dispatch(ctx, Arc::clone(&self.handle.wake)));
    }
}

fn default_upstream(config: &Config) -> &str {
    config
        .upstreams
        .first()
        .map(|u| u.name.as_str())
        .unwrap_or("")
}

/// A registry client for the target, with its token re-read from its file.
fn target_client(
    target: &TargetConfig,
    url: url::Url,
    metrics: Arc<Metrics>,
) -> std::result::Result<Upstream, String> {
    let mut config = UpstreamConfig::new("target", url);
    config.username = Some(target.username.clone());
    config.ca_file = target.ca_file.clone();
    config.token_realm_hosts = target.token_realm_hosts.clone();
    config.connect_timeout = target.connect_timeout;
    config.header_timeout = target.header_timeout;
    // Reads through the project must not delay a miss when the project's
    // registry is down; pushes are retried by the queue instead.
    config.retries = 0;
    let password = match (&target.token_file, &target.token) {
        (Some(file), _) => Password::file(file.clone()),
        (None, Some(token)) => Password::Fixed(token.clone()),
        (None, None) => Password::None,
    };
    let mut credentials = Credentials::of_upstream(&config);
    credentials.password = password;
    Upstream::with_credentials(config, credentials, metrics)
}
