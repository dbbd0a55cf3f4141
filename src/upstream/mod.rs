//! Registry clients for the configured upstreams, and the choice among them.
//!
//! An [`Upstream`] sends registry API requests with the right credentials,
//! retries transient failures while nothing has reached a client yet,
//! follows redirects to blob storage without credentials, and maps the
//! upstream's answers onto [`Error`].

pub mod auth;
pub mod availability;
pub mod caller;
pub mod caps;
pub mod client;
pub mod push;
mod requests;
pub mod routing;
mod site;
mod tokens;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::signature::{Policies, Policy};
use auth::Auth;
use availability::{Availability, Refusal};
use caps::Caps;
use client::HttpClient;

pub use caller::{Caller, ClientCredential};
pub use requests::{BlobHead, BlobResponse, FetchedManifest, ManifestHead, Referrers, TagList};
pub use routing::Upstreams;

/// The registries of `config.urls` other than `config.url`, in order: each
/// an upstream of its own, named `<name>@<host>` in metrics and logs, with
/// no credentials, no retries (the next one is the retry) and its own
/// breaker.
fn mirrors_of(
    config: &UpstreamConfig,
    metrics: &Arc<Metrics>,
    process_offline: Arc<AtomicBool>,
) -> Result<Vec<Arc<Upstream>>, String> {
    let mut mirrors = Vec::new();
    for url in config.urls.iter().filter(|u| **u != config.url) {
        let host = url.host_str().unwrap_or_default();
        let name = match url.port() {
            Some(port) => format!("{}@{host}:{port}", config.name),
            None => format!("{}@{host}", config.name),
        };
        let mirror = UpstreamConfig {
            name,
            url: url.clone(),
            retries: 0,
            ..UpstreamConfig::new("", url.clone())
        };
        let mirror = UpstreamConfig {
            connect_timeout: config.connect_timeout,
            header_timeout: config.header_timeout,
            body_idle_timeout: config.body_idle_timeout,
            ca_file: config.ca_file.clone(),
            offline: config.offline,
            skip_after_failures: config.skip_after_failures,
            skip_for: config.skip_for,
            ..mirror
        };
        let upstream = Upstream::new(mirror, Arc::clone(metrics))?;
        let availability = availability_of(&upstream.config, Arc::clone(&process_offline));
        mirrors.push(Arc::new(Upstream {
            availability,
            ..upstream
        }));
    }
    Ok(mirrors)
}

/// The switches and breaker of an upstream configured as `config`.
fn availability_of(config: &UpstreamConfig, process_offline: Arc<AtomicBool>) -> Availability {
    Availability::new(
        config.offline,
        process_offline,
        config.skip_after_failures,
        config.skip_for,
    )
}

/// One upstream registry.
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    client: HttpClient,
    auth: Auth,
    tag_rules: Vec<(GlobMatcher, GlobMatcher, Duration)>,
    allow: Option<GlobSet>,
    deny: Option<GlobSet>,
    /// Takes a client credential whose user name names no upstream.
    unnamed_credentials: bool,
    /// Which repositories are served only signed, and by which keys.
    signatures: Policies,
    /// Offline, and skipped while failing.
    availability: Availability,
    /// Fetches at once and bytes per second.
    caps: Caps,
    /// The other registries of `urls`, asked anonymously, each with its
    /// own breaker; this one is at `position` among them.
    mirrors: Vec<Arc<Upstream>>,
    position: usize,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Builds the client and auth state of an upstream.
    pub fn new(config: UpstreamConfig, metrics: Arc<Metrics>) -> Result<Upstream, String> {
        let credentials = auth::Credentials::of_upstream(&config);
        Upstream::with_credentials(config, credentials, metrics)
    }

    /// Builds a registry client whose credentials come from elsewhere than
    /// the upstream configuration (the back-fill target's token file).
    pub fn with_credentials(
        config: UpstreamConfig,
        credentials: auth::Credentials,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, String> {
        let client =
            client::build(&config).map_err(|e| format!("registry {}: {e}", config.name))?;
        let auth = Auth::new(credentials, Arc::clone(&metrics));
        metrics.register_upstream(&config.name);
        let mut tag_rules = Vec::new();
        for rule in &config.tag_rules {
            let glob = |p: &str| {
                Glob::new(p)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| e.to_string())
            };
            tag_rules.push((glob(&rule.repository)?, glob(&rule.tag)?, rule.ttl));
        }
        let (allow, deny) = (globs(&config.allow)?, globs(&config.deny)?);
        let signatures = Policies::new(&config.name, &config.signatures)?;
        if signatures.any() {
            metrics.register_signature_rules(&config.name);
        }
        let availability = availability_of(&config, Arc::default());
        let caps = Caps::new(config.max_fetches, config.max_bytes_per_second.as_u64());
        let position = config
            .urls
            .iter()
            .position(|u| *u == config.url)
            .unwrap_or(0);
        metrics.upstream_availability(&config.name, config.offline, false);
        Ok(Upstream {
            config,
            client,
            auth,
            tag_rules,
            allow,
            deny,
            unnamed_credentials: false,
            signatures,
            availability,
            caps,
            // Built with the process's offline switch, which they share:
            // see `sharing_offline`.
            mirrors: Vec::new(),
            position,
            metrics,
        })
    }

    /// A place among this upstream's blob fetches at once (`max_fetches`),
    /// waited for up to `header_timeout`; `None` when there is no cap.
    pub async fn fetch_place(
        &self,
    ) -> crate::error::Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        self.caps
            .fetch_place(self.config.header_timeout)
            .await
            .map_err(|()| {
                self.metrics.upstream_skipped(self.name(), "capped");
                crate::error::Error::RateLimited {
                    retry_after: Duration::from_secs(1),
                }
            })
    }

    /// Waits until `bytes` more may be read from this upstream
    /// (`max_bytes_per_second`).
    pub async fn take_bytes(&self, bytes: usize) {
        self.caps.take_bytes(bytes).await;
    }

    /// Whether a cap is set on what is read from this upstream.
    pub fn capped(&self) -> bool {
        self.caps.any()
    }

    /// Makes `process_offline` (the whole process's switch, shared by
    /// every upstream) count for this upstream too, and builds the other
    /// registries of its `urls` under the same switch (once, at start).
    pub fn sharing_offline(mut self, process_offline: Arc<AtomicBool>) -> Result<Upstream, String> {
        self.availability = availability_of(&self.config, Arc::clone(&process_offline));
        self.mirrors = mirrors_of(&self.config, &self.metrics, process_offline)?;
        self.note_availability();
        Ok(self)
    }

    /// The other registries of `urls` (see [`Upstream::across`]).
    pub fn mirrors(&self) -> &[Arc<Upstream>] {
        &self.mirrors
    }

    /// The registries of `urls` in order, each with whom to ask as: this
    /// upstream as `caller`, the others as lasti, anonymously. A request
    /// carrying a client's credential goes to `url` alone: only it
    /// decides who may pull.
    pub(crate) fn sites<'a>(
        &'a self,
        caller: &'a Caller,
        anonymous: &'a Caller,
    ) -> Vec<(&'a Upstream, &'a Caller)> {
        if self.mirrors.is_empty() || caller.credential().is_some() {
            return vec![(self, caller)];
        }
        let mut sites: Vec<(&Upstream, &Caller)> =
            self.mirrors.iter().map(|m| (&**m, anonymous)).collect();
        sites.insert(self.position.min(sites.len()), (self, caller));
        sites
    }

    /// Whether a request may go to this upstream now (see
    /// [`availability`]); counted when it may not.
    pub(crate) fn admit(&self) -> crate::error::Result<()> {
        match self.availability.admit() {
            Ok(()) => Ok(()),
            Err(Refusal::Offline) => {
                self.metrics.upstream_skipped(self.name(), "offline");
                Err(crate::error::Error::Offline {
                    upstream: self.name().to_string(),
                })
            }
            Err(Refusal::Skipped { retry_in }) => {
                self.metrics.upstream_skipped(self.name(), "failing");
                Err(crate::error::Error::UpstreamSkipped {
                    upstream: self.name().to_string(),
                    retry_in_secs: retry_in.as_secs(),
                })
            }
        }
    }

    /// Notes how a request went: `answered` with a status other than 502,
    /// 503 or 504, or not.
    pub(crate) fn note_outcome(&self, answered: bool) {
        let changed = match answered {
            true => self.availability.answered(),
            false => self.availability.failed(),
        };
        if !changed {
            return;
        }
        match answered {
            true => tracing::info!(
                upstream = self.name(),
                "upstream answers again; no longer skipped"
            ),
            false => tracing::warn!(
                upstream = self.name(),
                failures = self.config.skip_after_failures,
                retry_in_secs = self.availability.state().retry_in_secs.unwrap_or(0),
                "upstream keeps failing; skipped until one request tries it again"
            ),
        }
        self.note_availability();
    }

    /// Sets this upstream's own offline switch (at run time).
    pub fn set_offline(&self, offline: bool) {
        self.availability.set_offline(offline);
        for mirror in &self.mirrors {
            mirror.availability.set_offline(offline);
            mirror.note_availability();
        }
        self.note_availability();
        tracing::info!(upstream = self.name(), offline, "offline switch");
    }

    /// Whether requests go to this upstream, and why not.
    pub fn availability(&self) -> availability::State {
        self.availability.state()
    }

    /// Brings the availability gauges up to date.
    pub fn note_availability(&self) {
        self.metrics.upstream_availability(
            self.name(),
            self.availability.is_offline(),
            self.availability.is_skipping(),
        );
    }

    /// Lets a client credential whose user name names no upstream be used
    /// here: set when this is the only upstream taking client credentials.
    pub fn taking_unnamed_credentials(mut self, take: bool) -> Upstream {
        self.unnamed_credentials = take;
        self
    }

    /// Whether clients' own credentials are used towards this upstream.
    pub fn takes_client_credentials(&self) -> bool {
        self.config.takes_client_credentials()
    }

    /// Whether `credential` is for this upstream: its user name names it
    /// (`ghcr.io/alice`), or names none and this is the only upstream
    /// taking client credentials. Never for one that takes none.
    pub fn is_for(&self, credential: &ClientCredential) -> bool {
        if !self.takes_client_credentials() {
            return false;
        }
        match credential.named_upstream() {
            Some(name) => std::iter::once(&self.config.name)
                .chain(&self.config.aliases)
                .any(|n| n.eq_ignore_ascii_case(name)),
            None => self.unnamed_credentials,
        }
    }

    /// How long the upstream's verdict on a client is trusted.
    pub fn client_verdict_ttl(&self) -> Duration {
        self.config.client_verdict_ttl
    }

    /// Counts one access check asked of this upstream for a client.
    pub fn access_checked(&self, client: bool, verdict: &'static str) {
        let identity = if client { "client" } else { "anonymous" };
        self.metrics.access_check(self.name(), identity, verdict);
    }

    /// Whether private images (served with client credentials) are back-filled.
    pub fn backfills_private(&self) -> bool {
        self.config.backfill_private
    }

    /// The configured name (`docker.io`).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The registry's URL, as configured.
    pub fn url(&self) -> &url::Url {
        &self.config.url
    }

    /// The repository as the upstream knows it (`alpine` -> `library/alpine` on Docker Hub).
    pub fn upstream_repo(&self, repo: RepoName) -> RepoName {
        if self.config.uses_library_prefix() {
            repo.with_library_prefix()
        } else {
            repo
        }
    }

    /// Whether the allow and deny lists let clients pull `repo` (as the
    /// upstream names it).
    pub fn allows(&self, repo: &RepoName) -> bool {
        let allowed = self
            .allow
            .as_ref()
            .is_none_or(|set| set.is_match(repo.as_str()));
        allowed
            && !self
                .deny
                .as_ref()
                .is_some_and(|set| set.is_match(repo.as_str()))
    }

    /// The signature policy `repo` (as the upstream names it) is held to,
    /// when it must be signed.
    pub fn signature_policy(&self, repo: &RepoName) -> Option<&Arc<Policy>> {
        self.signatures.for_repo(repo)
    }

    /// Counts a signature verdict made here, by outcome.
    pub fn signature_verdict(&self, outcome: &'static str) {
        self.metrics.signature_verdict(self.name(), outcome);
    }

    /// Counts a pull refused for its signature, by reason.
    pub fn signature_refused(&self, reason: &'static str) {
        self.metrics.signature_refused(self.name(), reason);
    }

    /// How long an answer for this tag is trusted.
    pub fn tag_ttl(&self, repo: &RepoName, tag: &str) -> Duration {
        self.tag_rules
            .iter()
            .find(|(r, t, _)| r.is_match(repo.as_str()) && t.is_match(tag))
            .map(|(_, _, ttl)| *ttl)
            .unwrap_or(self.config.tag_ttl)
    }
}

/// A glob set, or `None` for an empty list.
fn globs(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|e| e.to_string())?);
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}
