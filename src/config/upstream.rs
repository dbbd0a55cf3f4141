//! One upstream registry: where it is, how to authenticate, how long its
//! tags are trusted, and which repositories may be pulled from it.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, SignatureRuleConfig, DOCKER_HUB_NAME};
use crate::secret::Secret;
/// One upstream registry and how to talk to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Registry host name as clients write it (`docker.io`, `ghcr.io`); used for
    /// containerd's `ns=` parameter and for path prefixes like `/v2/ghcr.io/org/app/...`.
    pub name: String,
    /// Other names that select this upstream (`index.docker.io`, `registry-1.docker.io`).
    pub aliases: Vec<String>,
    /// Base URL of the registry API; `http://` is allowed for tests and local mirrors.
    /// The only one of `urls` that credentials go to.
    pub url: Url,
    /// Registries with the same content, tried in this order (`url` among
    /// them): a mirror's 404, 429, 5xx or silence tries the next. Each has
    /// its own breaker; all but `url` are asked anonymously. Empty: `url`.
    pub urls: Vec<Url>,
    /// Prefix one-component names with `library/` (Docker Hub's official images).
    /// Defaults to true for `docker.io` and false elsewhere.
    pub library_prefix: Option<bool>,
    /// User name for Basic auth or for the token realm.
    pub username: Option<String>,
    /// Password or token, inline. Prefer `password_env` or `password_file`.
    #[serde(
        serialize_with = "super::render::secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Extra PEM CA certificates trusted for this upstream, besides the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Hosts besides the upstream's own registrable domain that may serve its token realm.
    pub token_realm_hosts: Vec<String>,
    /// How long a tag -> digest answer is trusted before it is revalidated with `HEAD`.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Per repository/tag overrides of `tag_ttl`; the first matching rule wins.
    #[serde(rename = "tag_rule")]
    pub tag_rules: Vec<TagRule>,
    /// Time allowed to open a connection (TCP and TLS).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed from sending a request until the response headers arrive.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest pause allowed between two pieces of a response body.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Retries of a request that failed before any byte went to a client.
    pub retries: u32,
    /// Offline: no request goes to this upstream; what is cached (and the
    /// bucket, the peers, the project) is served, tags whatever their age.
    /// Switchable at run time (`POST /admin/offline`).
    pub offline: bool,
    /// After this many failures in a row (no answer, a timeout, a 502,
    /// 503 or 504), the upstream is skipped for `skip_for`, so a dead one
    /// costs one timeout per period rather than one per pull; 0 never skips.
    pub skip_after_failures: u32,
    /// How long a failing upstream is skipped before one request tries it
    /// again; doubled while it keeps failing, up to ten times this.
    #[serde(with = "humantime_serde")]
    pub skip_for: Duration,
    /// Blobs fetched from this upstream at once; a fill past it waits for
    /// a place (0: no cap besides `access.max_upstream_fetches`).
    pub max_fetches: usize,
    /// Bytes per second read from this upstream, all fills together
    /// (0: no cap). Hits and other tiers never wait for it.
    pub max_bytes_per_second: ByteSize,
    /// Repository globs that may be pulled (`library/*`); empty allows all.
    pub allow: Vec<String>,
    /// Repository globs that may not be pulled; checked after `allow`.
    pub deny: Vec<String>,
    /// Whose credentials lasti pulls with: `lasti` (the ones configured
    /// here, or none) or `client` (each client's own, for that client's
    /// requests only; see docs/security.md, "Private images").
    pub credentials: CredentialSource,
    /// With `credentials = "client"`: how long the upstream's yes to one
    /// client for one repository (and its word that a repository is
    /// public) is trusted before it is asked again.
    #[serde(with = "humantime_serde")]
    pub client_verdict_ttl: Duration,
    /// With `credentials = "client"`: back-fill images of repositories
    /// that only credentialed clients may pull, too. Off by default: the
    /// project's pull access may be wider than the upstream's.
    pub backfill_private: bool,
    /// Signed images only: rules for which repositories need a cosign
    /// signature by which keys; the first matching rule decides.
    pub signatures: Vec<SignatureRuleConfig>,
}

/// Whose credentials an upstream is asked with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    /// The upstream's own `username` and password, or none: one identity
    /// for every client, and whatever it pulls is served to anyone lasti
    /// lets in.
    #[default]
    Lasti,
    /// Each client's own: private repositories are fetched with them and
    /// served only to clients the upstream itself lets pull.
    Client,
}

impl UpstreamConfig {
    /// An upstream with every option at its default.
    pub fn new(name: &str, url: Url) -> Self {
        UpstreamConfig {
            name: name.to_string(),
            url,
            ..UpstreamConfig::default()
        }
    }

    /// Whether clients' own credentials are used towards this upstream.
    pub fn takes_client_credentials(&self) -> bool {
        self.credentials == CredentialSource::Client
    }

    /// Whether one-component names get `library/` in front.
    pub fn uses_library_prefix(&self) -> bool {
        self.library_prefix.unwrap_or(self.name == DOCKER_HUB_NAME)
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            aliases: Vec::new(),
            url: Url::parse("http://invalid.invalid").expect("valid placeholder"),
            urls: Vec::new(),
            library_prefix: None,
            username: None,
            password: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            token_realm_hosts: Vec::new(),
            tag_ttl: Duration::from_secs(10 * 60),
            tag_rules: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            retries: 2,
            offline: false,
            skip_after_failures: 5,
            skip_for: Duration::from_secs(30),
            max_fetches: 0,
            max_bytes_per_second: ByteSize::b(0),
            allow: Vec::new(),
            deny: Vec::new(),
            credentials: CredentialSource::Lasti,
            client_verdict_ttl: Duration::from_secs(60),
            backfill_private: false,
            signatures: Vec::new(),
        }
    }
}

/// A TTL for the tags whose repository and tag match these glob patterns.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    /// Glob over the repository as stored upstream (`library/*`); default `*`.
    #[serde(default = "match_all")]
    pub repository: String,
    /// Glob over the tag (`latest`, `v*.*.*`); default `*`.
    #[serde(default = "match_all")]
    pub tag: String,
    /// How long a matching tag is trusted.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

fn match_all() -> String {
    "*".to_string()
}

impl UpstreamConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| {
            Err(ConfigError::Invalid(format!(
                "upstream {:?}: {msg}",
                self.name
            )))
        };
        if self.name.is_empty() || !self.name.chars().all(valid_host_char) {
            return fail("name must be a registry host name like docker.io or localhost:5001");
        }
        if self
            .aliases
            .iter()
            .any(|a| a.is_empty() || !a.chars().all(valid_host_char))
        {
            return fail("aliases must be host names");
        }
        if !matches!(self.url.scheme(), "http" | "https") || self.url.host_str().is_none() {
            return fail("url must be http:// or https:// with a host");
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            return fail("url must not have a query or fragment");
        }
        for mirror in &self.urls {
            if !matches!(mirror.scheme(), "http" | "https")
                || mirror.host_str().is_none()
                || mirror.query().is_some()
                || mirror.fragment().is_some()
            {
                return fail("urls must be http:// or https:// with a host, no query or fragment");
            }
        }
        if !self.urls.is_empty() && !self.urls.contains(&self.url) {
            return fail("url must be one of urls: it is where the credentials go");
        }
        let mut seen = std::collections::HashSet::new();
        if !self.urls.iter().all(|u| seen.insert(u)) {
            return fail("urls lists a registry twice");
        }
        if self.password.is_some() && self.username.is_none() {
            return fail("a password needs a username");
        }
        let set = [&self.password_env.is_some(), &self.password_file.is_some()];
        if set.iter().all(|s| **s) {
            return fail("give password_env or password_file, not both");
        }
        let configured = self.username.is_some()
            || self.password.is_some()
            || self.password_env.is_some()
            || self.password_file.is_some();
        if self.takes_client_credentials() && configured {
            return fail(
                "credentials = \"client\" takes no username or password: with them, what \
                 lasti's own identity may pull would count as public",
            );
        }
        if self.client_verdict_ttl.is_zero() {
            return fail("client_verdict_ttl must be above zero");
        }
        if self.connect_timeout.is_zero() || self.header_timeout.is_zero() {
            return fail("timeouts must be above zero");
        }
        for pattern in self.allow.iter().chain(&self.deny) {
            if globset::Glob::new(pattern).is_err() {
                return fail(&format!(
                    "allow/deny pattern {pattern:?} is not a valid glob"
                ));
            }
        }
        for (n, rule) in self.signatures.iter().enumerate() {
            if let Some(problem) = rule.problem() {
                return fail(&format!("signatures rule {}: {problem}", n + 1));
            }
        }
        for rule in &self.tag_rules {
            for pattern in [&rule.repository, &rule.tag] {
                if globset::Glob::new(pattern).is_err() {
                    return fail(&format!("tag_rule pattern {pattern:?} is not a valid glob"));
                }
            }
        }
        Ok(())
    }
}

fn valid_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')
}
