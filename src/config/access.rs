//! The front door: who may pull, request limits, and TLS for clients.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::ConfigError;

/// Who may pull, and how many requests a client may make.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// `anonymous` (anyone may pull) or `authenticated` (every registry
    /// request needs valid credentials).
    pub mode: AccessMode,
    /// The realm named in the `WWW-Authenticate: Basic` challenge.
    pub realm: String,
    /// An htpasswd file of bcrypt hashes (`htpasswd -B`), read at start.
    pub htpasswd_file: Option<PathBuf>,
    /// A file of static bearer tokens, one per line (for CI systems).
    pub tokens_file: Option<PathBuf>,
    /// Check Basic credentials (user and OpenShift token, as `docker login`
    /// sends them) against this registry's token endpoint.
    pub delegate_url: Option<Url>,
    /// Extra PEM CA certificates for the delegate registry.
    pub delegate_ca_file: Option<PathBuf>,
    /// With an upstream taking client credentials: the token endpoint
    /// clients are sent to (`https://lasti.example/token`). Default: this
    /// listener's `/token` at the host and scheme the client used (the
    /// `Host` header, and `X-Forwarded-Proto` behind a TLS-terminating route).
    pub token_realm: Option<Url>,
    /// How long a verdict on a credential is remembered (keyed by its hash).
    #[serde(with = "humantime_serde")]
    pub verdict_ttl: Duration,
    /// Requests per second allowed to one client address (0: no limit).
    pub rate_limit: u32,
    /// Requests a client may make in a burst above `rate_limit`.
    pub rate_burst: u32,
    /// Upstream blob fetches in flight at once; a miss past it gets
    /// TOOMANYREQUESTS (0: no limit).
    pub max_upstream_fetches: usize,
    /// Client connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client gets to send its request headers (slow-client defence),
    /// counted on a new connection from the moment it is accepted, so a
    /// client that sends nothing at all is closed too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client gets to finish the TLS handshake, counted from
    /// accept; the first request's `header_read_timeout` runs from accept
    /// too, so the tighter of the two ends a silent TLS client.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
    /// How long a connection with no request in flight stays open after its
    /// last response: HTTP/1.1 keep-alive, and HTTP/2 with no open stream.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// How long a response may wait for the client to take its next bytes
    /// (a full socket, or an HTTP/2 window held at zero) before its
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long a response may wait for the client before it gives its
    /// place among `max_open_blobs` back (it goes on if the client comes
    /// back); a connection with more than 16 such responses while it takes
    /// nothing is closed. Capped at `send_timeout`.
    #[serde(with = "humantime_serde")]
    pub send_stall_grace: Duration,
    /// How often an HTTP/2 connection is pinged while it is open.
    #[serde(with = "humantime_serde")]
    pub http2_ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub http2_ping_timeout: Duration,
    /// Blob responses (each holding an open file) served at once; one past
    /// it gets 503 `UNAVAILABLE` with `Retry-After`. 0: a quarter of the
    /// process's open-file limit. Once half are in use, one connection
    /// holds at most `max_open_blobs / max_connections` (at least 16).
    pub max_open_blobs: usize,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            mode: AccessMode::Anonymous,
            realm: "lasti".to_string(),
            htpasswd_file: None,
            tokens_file: None,
            delegate_url: None,
            delegate_ca_file: None,
            token_realm: None,
            verdict_ttl: Duration::from_secs(300),
            rate_limit: 0,
            rate_burst: 100,
            max_upstream_fetches: 256,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            send_stall_grace: Duration::from_secs(5),
            http2_ping_interval: Duration::from_secs(60),
            http2_ping_timeout: Duration::from_secs(20),
            max_open_blobs: 0,
        }
    }
}

/// Whether clients must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone may pull (`registry-viewer` for `system:anonymous`).
    Anonymous,
    /// Only clients with valid credentials (`system:authenticated`).
    Authenticated,
}

/// Serve the registry API over TLS (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; reloaded when the file changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key; reloaded with the certificate.
    pub key_file: Option<PathBuf>,
}

impl AccessConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError::Invalid(format!("access: {msg}")));
        let sources = self.htpasswd_file.is_some()
            || self.tokens_file.is_some()
            || self.delegate_url.is_some();
        if self.mode == AccessMode::Authenticated && !sources {
            return fail("authenticated mode needs htpasswd_file, tokens_file or delegate_url");
        }
        if self.realm.is_empty() || self.realm.contains('"') {
            return fail("realm must be non-empty and hold no quotes");
        }
        if let Some(realm) = &self.token_realm {
            if !matches!(realm.scheme(), "http" | "https") || realm.host_str().is_none() {
                return fail("token_realm must be an http:// or https:// URL with a host");
            }
        }
        if self.max_connections == 0 || self.header_read_timeout.is_zero() {
            return fail("max_connections and header_read_timeout must be above zero");
        }
        let timeouts = [
            self.tls_handshake_timeout,
            self.keepalive_timeout,
            self.send_timeout,
            self.send_stall_grace,
            self.http2_ping_interval,
            self.http2_ping_timeout,
        ];
        if timeouts.iter().any(Duration::is_zero) {
            return fail(
                "tls_handshake_timeout, keepalive_timeout, send_timeout, send_stall_grace and the \
                 http2_ping_* keys must be above zero",
            );
        }
        if self.max_header_bytes < 8192 {
            return fail("max_header_bytes must be at least 8192");
        }
        if self.rate_limit > 0 && self.rate_burst == 0 {
            return fail("rate_burst must be above zero when rate_limit is set");
        }
        Ok(())
    }
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "tls: cert_file and key_file go together".into(),
            ));
        }
        Ok(())
    }
}
