//! The back-fill target: the OpenShift (Rahti) project that pulled images
//! are pushed into, and how.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use url::Url;

use super::ConfigError;
use crate::secret::Secret;

/// Where a pod finds its service account token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Pending back-fill jobs held at most unless `max_pending_jobs` says otherwise.
pub const DEFAULT_MAX_PENDING_JOBS: u64 = 10_000;

/// The back-fill target. Back-fill is off unless `url` and `project` are set.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    /// The registry: the in-cluster service
    /// (`https://image-registry.openshift-image-registry.svc:5000`) or the external route.
    pub url: Option<Url>,
    /// The project (namespace) whose image streams receive the images.
    pub project: Option<String>,
    /// User name for `docker login`-style auth; OpenShift ignores it.
    pub username: String,
    /// Token, inline. Prefer `token_env`, `token_file`, or the pod's service account.
    #[serde(
        serialize_with = "super::render::secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<Secret>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// File holding the token, re-read when it changes. Defaults to the pod's
    /// service account token when that file exists.
    pub token_file: Option<PathBuf>,
    /// Extra PEM CA certificates for the target (the cluster's service CA).
    pub ca_file: Option<PathBuf>,
    /// Hosts besides the target's own domain allowed to serve its token realm.
    pub token_realm_hosts: Vec<String>,
    /// Platforms of an index to push (`linux/amd64`); empty means all.
    pub platforms: Vec<String>,
    /// When the target refuses an index, tag one platform's image instead.
    pub index_fallback: bool,
    /// The platform tagged by the index fallback.
    pub fallback_platform: String,
    /// Jobs pushed at once.
    pub workers: usize,
    /// Pending jobs the queue holds at most; past it an image is not queued
    /// (a warning and `lasti_backfill_refused_total`), so a target that is
    /// down for long cannot fill the disk with jobs.
    pub max_pending_jobs: u64,
    /// Blobs up to this size are uploaded in one `PUT`; larger ones in chunks.
    #[serde(serialize_with = "super::render::size")]
    pub monolithic_limit: ByteSize,
    /// Size of each `PATCH` of a chunked upload.
    #[serde(serialize_with = "super::render::size")]
    pub chunk_size: ByteSize,
    /// Longest wait between retries of a failing job.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A job failing transiently for this long is given up.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// On a local miss, look in the project before the upstream.
    pub read_through: bool,
    /// How upstream names become image stream names.
    pub naming: NamingConfig,
    /// Time allowed to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed until response headers arrive.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            url: None,
            project: None,
            username: "unused".to_string(),
            token: None,
            token_env: None,
            token_file: None,
            ca_file: None,
            token_realm_hosts: Vec::new(),
            platforms: Vec::new(),
            index_fallback: true,
            fallback_platform: "linux/amd64".to_string(),
            workers: 2,
            max_pending_jobs: DEFAULT_MAX_PENDING_JOBS,
            monolithic_limit: ByteSize::mib(16),
            chunk_size: ByteSize::mib(16),
            max_backoff: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
            read_through: true,
            naming: NamingConfig::default(),
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(60),
        }
    }
}

/// The image stream naming rule (see `backfill::naming`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamingConfig {
    /// Joins the components of a name: `bitnami/redis` -> `bitnami-redis`.
    pub separator: String,
    /// Drop Docker Hub's `library/`: `library/centos` -> `centos`.
    pub strip_library: bool,
    /// Put the upstream's name first: `never`, `always`, or `non-default`
    /// (every upstream but the first): `ghcr.io/org/app` -> `ghcr.io-org-app`.
    pub upstream_prefix: UpstreamPrefix,
    /// Longest image stream name; longer ones are cut and get a hash suffix.
    pub max_length: usize,
}

impl Default for NamingConfig {
    fn default() -> Self {
        NamingConfig {
            separator: "-".to_string(),
            strip_library: true,
            upstream_prefix: UpstreamPrefix::NonDefault,
            max_length: 128,
        }
    }
}

/// When the upstream's name starts an image stream name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamPrefix {
    /// Never (names from different upstreams may then collide and get hash suffixes).
    Never,
    /// Always.
    Always,
    /// For every upstream except the default one.
    NonDefault,
}

impl TargetConfig {
    /// Whether back-fill is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some() && self.project.is_some()
    }

    /// Resolves the token: env, then file, then inline, then the pod's service account.
    pub(super) fn resolve_token_source(&mut self) -> Result<(), ConfigError> {
        if let Some(var) = &self.token_env {
            let value = std::env::var(var).map_err(|_| {
                ConfigError::Invalid(format!("target: environment variable {var} is not set"))
            })?;
            self.token = Some(Secret::new(value));
        }
        if self.enabled() && self.token.is_none() && self.token_file.is_none() {
            let sa = Path::new(SERVICE_ACCOUNT_TOKEN);
            if sa.exists() {
                self.token_file = Some(sa.to_path_buf());
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError::Invalid(format!("target: {msg}")));
        if self.url.is_some() != self.project.is_some() {
            return fail("url and project go together");
        }
        if let Some(url) = &self.url {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return fail("url must be http:// or https:// with a host");
            }
        }
        if let Some(project) = &self.project {
            let dns_label = project.len() <= 63
                && !project.is_empty()
                && project
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !project.starts_with('-')
                && !project.ends_with('-');
            if !dns_label {
                return fail("project must be a Kubernetes namespace name (lowercase DNS label)");
            }
        }
        if self.workers == 0 || self.workers > 64 {
            return fail("workers must be between 1 and 64");
        }
        if self.max_pending_jobs == 0 {
            return fail("max_pending_jobs must be at least 1");
        }
        if self.chunk_size.as_u64() < 1024 * 1024 {
            return fail("chunk_size must be at least 1 MiB");
        }
        if !matches!(self.naming.separator.as_str(), "-" | "." | "_" | "__") {
            return fail("naming.separator must be one of - . _ __");
        }
        if !(16..=200).contains(&self.naming.max_length) {
            return fail("naming.max_length must be between 16 and 200");
        }
        for platform in self.platforms.iter().chain([&self.fallback_platform]) {
            if platform.split('/').count() < 2 {
                return fail("platforms are os/arch[/variant]");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn the_pending_job_cap_has_a_default_and_is_at_least_one() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.target.max_pending_jobs, DEFAULT_MAX_PENDING_JOBS);
        let capped = Config::from_toml("[target]\nmax_pending_jobs = 5").unwrap();
        assert_eq!(capped.target.max_pending_jobs, 5);
        let zero = Config::from_toml("[target]\nmax_pending_jobs = 0").unwrap();
        assert!(zero.target.validate().is_err());
    }
}
