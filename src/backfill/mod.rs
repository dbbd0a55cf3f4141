//! Back-fill: every image pulled through lasti is pushed, asynchronously and
//! durably, into the Rahti project's integrated registry, so its image
//! stream exists there for deployments and survives the proxy.
//!
//! - The proxy knows back-fill only as a [`Backfiller`] (a trait the proxy
//!   owns): it *offers* each served image, a non-blocking send on a bounded
//!   channel, deduplicated in memory, and reads misses through the project.
//! - The intake task names the image stream ([`naming`]), skips what the
//!   target is known to hold, and persists a job ([`store`]) before it counts
//!   as accepted; past `max_pending_jobs` pending jobs it refuses the image
//!   (a warning and `lasti_backfill_refused_total`, never an error to the
//!   client).
//! - The dispatcher runs due jobs on at most `workers` tasks ([`job`]),
//!   retrying transient failures with exponential backoff and jitter, and
//!   stops on permanent ones (DENIED, NAME_INVALID, quota). It holds the
//!   proxy (to read what it pushes through the cache) until its
//!   [`Dispatching`] handle is dropped; the proxy holds only [`Backfill`],
//!   the queue's front, so nothing owns itself.
//! - At start every pending job is taken up again.

pub mod job;
pub mod naming;
pub mod store;
mod worker;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{Config, TargetConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::pull_through::{Backfiller, Proxy};
use crate::secret::Password;
use crate::upstream::auth::Credentials;
use crate::upstream::Upstream;
use naming::Namer;
use store::{Counts, Job, JobState, JobStore};

pub use crate::pull_through::Offer;

/// Offers waiting for the intake; more are dropped (the next pull offers again).
const OFFER_CHANNEL_CAPACITY: usize = 1024;
/// An offer of the same image within this long is ignored on the request path.
const OFFER_DEDUP_TTL: Duration = Duration::from_secs(60);
/// Jobs per list of `/admin/backfill` unless `limit` says otherwise.
pub const DEFAULT_LISTED: usize = 100;
/// The most jobs per list `/admin/backfill` returns.
pub const MAX_LISTED: usize = 1000;

/// Back-fill as the proxy and the admin listener hold it: the queue's
/// front (offers, read-through names, the target). It holds nothing of the
/// proxy; the jobs run in [`Backfill::start`]'s tasks, which hold the proxy
/// for as long as their [`Dispatching`] handle lives.
#[derive(Debug)]
pub struct Backfill {
    offers: mpsc::Sender<Offer>,
    recent: moka::sync::Cache<Offer, ()>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    /// The intake's end of `offers`, until [`Backfill::start`].
    intake: Mutex<Option<mpsc::Receiver<Offer>>>,
}

/// The running dispatcher. Dropping it stops the dispatcher, which then
/// lets go of the proxy; a job under way finishes its step first (a job
/// cut short stays pending and runs again at the next start).
#[derive(Debug)]
pub struct Dispatching {
    /// Closed on drop, which ends the dispatcher.
    _stop: watch::Sender<()>,
}

/// What the handle owns and lends its tasks: they hold it weakly while
/// idle, so it (and the store's file) is released as soon as the handle
/// drops, unless a job is under way.
#[derive(Debug)]
struct Shared {
    store: Arc<JobStore>,
    config: Arc<TargetConfig>,
    target: Arc<Upstream>,
    namer: Namer,
    names: moka::sync::Cache<String, RepoName>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Brings the queue-depth gauge up to date (no I/O).
    fn publish_counts(&self) {
        self.metrics
            .backfill_pending(self.store.counts().pending as usize);
    }
}

impl Backfill {
    /// Opens the store and builds the target client, when a target is
    /// configured. Blocks on the disk: call it off the async threads.
    pub fn open(
        data_dir: &Path,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Backfill>> {
        let target = &config.target;
        let (Some(url), Some(_)) = (&target.url, &target.project) else {
            return Ok(None);
        };
        let store = Arc::new(JobStore::open(&data_dir.join("backfill.redb"))?);
        let client =
            target_client(target, url.clone(), Arc::clone(&metrics)).map_err(Error::Storage)?;
        let (tx, rx) = mpsc::channel(OFFER_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            store,
            config: Arc::new(target.clone()),
            target: Arc::new(client),
            namer: Namer::new(target.naming.clone(), default_upstream(config)),
            names: moka::sync::Cache::new(10_000),
            metrics,
        });
        shared.publish_counts();
        Ok(Some(Backfill {
            offers: tx,
            recent: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(OFFER_DEDUP_TTL)
                .build(),
            shared,
            wake: Arc::new(Notify::new()),
            intake: Mutex::new(Some(rx)),
        }))
    }

    /// Starts the intake (which ends when this handle drops) and the
    /// dispatcher, which runs jobs through `proxy` until the handle it
    /// returns is dropped. `None` if started before.
    pub fn start(&self, proxy: Arc<Proxy>) -> Option<Dispatching> {
        let offers = self
            .intake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let (shared, wake) = (Arc::downgrade(&self.shared), Arc::clone(&self.wake));
        tokio::spawn(worker::intake(offers, shared.clone(), Arc::clone(&wake)));
        let (stop, stopped) = watch::channel(());
        let dispatcher = worker::Dispatcher::new(shared, wake, proxy, stopped);
        tokio::spawn(dispatcher.run());
        Some(Dispatching { _stop: stop })
    }

    /// The project repository that back-fill gives `repo` of `upstream`.
    async fn read_through_repo_any(&self, upstream: &str, repo: &RepoName) -> Option<RepoName> {
        let shared = &self.shared;
        let source = Namer::source(upstream, repo);
        if let Some(found) = shared.names.get(&source) {
            return Some(found);
        }
        let store = Arc::clone(&shared.store);
        let (namer, project) = (shared.namer.clone(), shared.config.project.clone()?);
        let (up, r) = (upstream.to_string(), repo.clone());
        let found = tokio::task::spawn_blocking(move || {
            let name = namer.stream_name(&up, &r, |n| store.stream_holder(n).ok().flatten());
            RepoName::parse(&format!("{project}/{name}")).ok()
        })
        .await
        .ok()
        .flatten()?;
        shared.names.insert(source, found.clone());
        Some(found)
    }

    async fn holds_image(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &str,
        digest: &Digest,
    ) -> bool {
        let Some(target_repo) = self.read_through_repo_any(upstream, repo).await else {
            return false;
        };
        let store = Arc::clone(&self.shared.store);
        let (tag, digest) = (tag.to_string(), digest.clone());
        tokio::task::spawn_blocking(move || store.holds(target_repo.as_str(), &tag, &digest))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(false)
    }

    /// Jobs in each state (no I/O).
    pub fn counts(&self) -> Counts {
        self.shared.store.counts()
    }

    /// One page of the queue as `/admin/backfill` shows it: pending jobs
    /// after the cursor `after` (oldest first), and the newest failed and
    /// done ones, at most `limit` each.
    pub async fn status(&self, after: Option<u64>, limit: usize) -> Result<Status> {
        let store = Arc::clone(&self.shared.store);
        let limit = limit.clamp(1, MAX_LISTED);
        let (pending, failed, recent) = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>((
                store.page(JobState::Pending, after, limit)?,
                store.page(JobState::Failed, None, limit)?,
                store.page(JobState::Done, None, limit)?,
            ))
        })
        .await
        .map_err(|e| Error::storage("backfill status", e))??;
        let config = &self.shared.config;
        Ok(Status {
            target: config
                .url
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            project: config.project.clone().unwrap_or_default(),
            counts: self.counts(),
            pending: pending.jobs,
            next: pending.next,
            failed: failed.jobs,
            recent: recent.jobs,
        })
    }
}

impl Backfiller for Backfill {
    fn offer(&self, offer: Offer) {
        if self.recent.contains_key(&offer) {
            return;
        }
        self.recent.insert(offer.clone(), ());
        if self.offers.try_send(offer).is_err() {
            self.shared.metrics.backfill_refused("intake_busy");
            tracing::debug!(
                "back-fill intake is full; the image will be offered again on its next pull"
            );
        }
    }

    fn target(&self) -> &Arc<Upstream> {
        &self.shared.target
    }

    fn read_through_repo<'a>(
        &'a self,
        upstream: &'a str,
        repo: &'a RepoName,
    ) -> BoxFuture<'a, Option<RepoName>> {
        Box::pin(async move {
            if !self.shared.config.read_through {
                return None;
            }
            self.read_through_repo_any(upstream, repo).await
        })
    }

    fn holds<'a>(
        &'a self,
        upstream: &'a str,
        repo: &'a RepoName,
        tag: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, bool> {
        Box::pin(self.holds_image(upstream, repo, tag, digest))
    }
}

/// The back-fill queue's state, for operators.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The target registry.
    pub target: String,
    /// The project.
    pub project: String,
    /// Jobs in each state.
    pub counts: Counts,
    /// Jobs still to do (with their last error, if any), oldest first.
    pub pending: Vec<Job>,
    /// The cursor (`after=`) for the next page of pending jobs, if any.
    pub next: Option<u64>,
    /// Jobs given up, newest first.
    pub failed: Vec<Job>,
    /// Jobs done, newest first.
    pub recent: Vec<Job>,
}

/// Builds the target's client as [`Backfill::open`] does (its CA file
/// read), without the job store: `check-config` fails on what `serve`
/// would fail on.
pub fn check_target(config: &Config, metrics: Arc<Metrics>) -> std::result::Result<(), String> {
    let target = &config.target;
    match (&target.url, &target.project) {
        (Some(url), Some(_)) => target_client(target, url.clone(), metrics).map(drop),
        _ => Ok(()),
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
    // Never skipped: the queue backs off by itself, and a project back up
    // must take the next push at once.
    config.skip_after_failures = 0;
    let password = match (&target.token_file, &target.token) {
        (Some(file), _) => Password::file(file.clone()),
        (None, Some(token)) => Password::Fixed(token.clone()),
        (None, None) => Password::None,
    };
    let mut credentials = Credentials::of_upstream(&config);
    credentials.password = password;
    Upstream::with_credentials(config, credentials, metrics)
}
