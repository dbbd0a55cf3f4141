//! Runs warming in the background, for the configured warm list (at start,
//! then every `warm.interval`) and for `POST /admin/warm`, and remembers
//! what became of each image for `GET /admin/warm`.
//!
//! Images of one request are warmed one after another, so a long list never
//! opens many upstream fetches at once; concurrent requests for the same
//! blobs still share one fetch (the proxy's single flight).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::WarmConfig;
use crate::metrics::Metrics;
use crate::oci::ImageRef;
use crate::pull_through::{Proxy, Warmed};

/// Images remembered at most; past it, the longest-finished are forgotten.
const MAX_STATUSES: usize = 1000;

/// Where an image's warming stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for the images before it.
    Queued,
    /// Being pulled.
    Running,
    /// Stored and verified.
    Done,
    /// Could not be pulled; see `error`.
    Failed,
}

/// The last warming of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Where it stands.
    pub state: State,
    /// What the last finished run did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmed: Option<Warmed>,
    /// Why the last run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds when the last run finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
}

/// The background warmer.
#[derive(Debug)]
pub struct Warmer {
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    statuses: Mutex<BTreeMap<String, Status>>,
    /// The runs in progress, ended by [`Warmer::stop`].
    tasks: Mutex<JoinSet<()>>,
}

impl Warmer {
    /// A warmer over `proxy`; nothing runs until asked.
    pub fn new(proxy: Arc<Proxy>) -> Arc<Warmer> {
        let metrics = Arc::clone(proxy.cache().metrics());
        Arc::new(Warmer {
            proxy,
            metrics,
            statuses: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    /// Warms the configured list now and then every `interval` (once, for
    /// `0s`), until the task is aborted.
    pub fn schedule(self: &Arc<Self>, config: &WarmConfig) {
        if config.images.is_empty() {
            return;
        }
        let (warmer, config) = (Arc::clone(self), config.clone());
        self.spawn(async move {
            loop {
                warmer.run(&config.images, &config.platforms).await;
                if config.interval == Duration::ZERO {
                    return;
                }
                tokio::time::sleep(config.interval).await;
            }
        });
    }

    /// Queues `images` and warms them in the background; returns at once.
    pub fn start(self: &Arc<Self>, images: Vec<String>, platforms: Vec<String>) {
        let warmer = Arc::clone(self);
        for image in &images {
            self.set(image, State::Queued, None);
        }
        self.spawn(async move { warmer.run(&images, &platforms).await });
    }

    /// Ends every run in progress (at shutdown), so none holds the cache.
    pub async fn stop(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    fn spawn(&self, run: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(run);
    }

    /// Every image's last status, by name.
    pub fn statuses(&self) -> BTreeMap<String, Status> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run(&self, images: &[String], platforms: &[String]) {
        for image in images {
            self.set(image, State::Running, None);
            let result = match ImageRef::parse(image) {
                Ok(reference) => self
                    .proxy
                    .warm(&reference, platforms)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match result {
                Ok(warmed) => {
                    tracing::info!(
                        image,
                        digest = %warmed.digest,
                        blobs = warmed.blobs,
                        fetched = warmed.fetched,
                        "warmed"
                    );
                    self.metrics.warmed(true);
                    self.set(image, State::Done, Some(Ok(warmed)));
                }
                Err(error) => {
                    tracing::warn!(image, %error, "warming failed");
                    self.metrics.warmed(false);
                    self.set(image, State::Failed, Some(Err(error)));
                }
            }
        }
    }

    fn set(&self, image: &str, state: State, finished: Option<Result<Warmed, String>>) {
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        let status = statuses.entry(image.to_string()).or_insert(Status {
            state,
            warmed: None,
            error: None,
            finished_at: None,
        });
        status.state = state;
        if let Some(finished) = finished {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            status.finished_at = Some(now);
            match finished {
                Ok(warmed) => (status.warmed, status.error) = (Some(warmed), None),
                Err(error) => status.error = Some(error),
            }
        }
        while statuses.len() > MAX_STATUSES {
            let oldest = statuses
                .iter()
                .filter(|(_, s)| matches!(s.state, State::Done | State::Failed))
                .min_by_key(|(_, s)| s.finished_at)
                .map(|(name, _)| name.clone());
            match oldest {
                Some(name) => statuses.remove(&name),
                None => break,
            };
        }
    }
}
