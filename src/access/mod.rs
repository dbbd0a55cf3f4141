//! The front door: decides whether a client may use the registry API.
//!
//! In `authenticated` mode every registry request needs credentials:
//! Basic user and password checked against an htpasswd file (bcrypt) or,
//! with `delegate_url`, against the Rahti registry's own token endpoint
//! (exactly what `docker login -u unused -p $(oc whoami -t)` sends), or a
//! static bearer token. Verdicts are remembered for `verdict_ttl`, keyed by
//! a SHA-256 of the credential, never the credential itself. Per-client rate
//! limits apply in either mode.
//!
//! With an upstream that takes clients' own credentials, the front door
//! also issues and reads lasti's client tokens ([`client_tokens`]) and
//! says whose credential a request carries ([`Access::caller`]); the
//! upstream then decides what that client may pull.

pub mod client_tokens;
mod delegate;
mod htpasswd;
mod rate;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use sha2::{Digest as _, Sha256};

use crate::config::{AccessConfig, AccessMode};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::upstream::{Caller, ClientCredential};
use client_tokens::{ClientTokens, TokenError};

/// A failed credential is remembered at most this long, so a fixed password
/// works soon after.
const NEGATIVE_VERDICT_TTL: Duration = Duration::from_secs(30);

/// The front door's state.
pub struct Access {
    mode: AccessMode,
    challenge: String,
    htpasswd: Option<htpasswd::Htpasswd>,
    tokens: HashSet<[u8; 32]>,
    delegate: Option<delegate::Delegate>,
    allowed: moka::sync::Cache<[u8; 32], ()>,
    refused: moka::sync::Cache<[u8; 32], ()>,
    rate: Option<rate::RateLimiter>,
    client_tokens: Option<ClientTokens>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Access {
    /// Reads the credential sources named in the configuration.
    pub fn new(
        config: &AccessConfig,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Access, String> {
        let htpasswd = config
            .htpasswd_file
            .as_deref()
            .map(htpasswd::Htpasswd::load)
            .transpose()?;
        let mut tokens = HashSet::new();
        if let Some(path) = &config.tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read tokens_file {}: {e}", path.display()))?;
            for token in text
                .lines()
                .map(str::trim)
                .filter(|t| !t.is_empty() && !t.starts_with('#'))
            {
                tokens.insert(hash(token.as_bytes()));
            }
        }
        let delegate = match &config.delegate_url {
            Some(url) => Some(delegate::Delegate::new(
                url.clone(),
                config.delegate_ca_file.clone(),
                metrics,
            )?),
            None => None,
        };
        Ok(Access {
            mode: config.mode,
            challenge: format!("Basic realm=\"{}\"", config.realm),
            htpasswd,
            tokens,
            delegate,
            allowed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.verdict_ttl)
                .build(),
            refused: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.verdict_ttl.min(NEGATIVE_VERDICT_TTL))
                .build(),
            rate: (config.rate_limit > 0)
                .then(|| rate::RateLimiter::new(config.rate_limit, config.rate_burst)),
            client_tokens: None,
        })
    }

    /// Issues and reads client tokens (an upstream takes clients' credentials).
    pub fn with_client_tokens(mut self, tokens: Option<ClientTokens>) -> Access {
        self.client_tokens = tokens;
        self
    }

    /// The token issuer, when an upstream takes clients' credentials.
    pub fn client_tokens(&self) -> Option<&ClientTokens> {
        self.client_tokens.as_ref()
    }

    /// Whose credential the request carries, for an upstream that takes
    /// clients' own: a token lasti issued (opened), Basic, or a Bearer
    /// token of the upstream's; lasti itself (anonymous) when none, or
    /// when no upstream takes clients' credentials.
    pub fn caller(&self, authorization: Option<&HeaderValue>) -> Result<Caller> {
        let (Some(tokens), Some(header)) = (&self.client_tokens, authorization) else {
            return Ok(Caller::lasti());
        };
        let refused = |why: &str| Error::ClientRefused(why.to_string());
        let text = header
            .to_str()
            .map_err(|_| refused("the Authorization header is not text"))?;
        let token = text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| ClientTokens::is_ours(token));
        if let Some(token) = token {
            return match tokens.caller(header, token) {
                Ok(caller) => Ok(caller),
                Err(TokenError::Expired) => Err(refused("the token has expired")),
                Err(TokenError::Invalid) => Err(refused("the token was not issued by this lasti")),
            };
        }
        match ClientCredential::from_header(header) {
            Ok(Some(credential)) => Ok(Caller::client(Arc::new(credential))),
            Ok(None) => Ok(Caller::lasti()),
            Err(_) => Err(refused("send Basic credentials or a Bearer token")),
        }
    }

    /// Applies the client's rate limit.
    pub fn admit(&self, client: IpAddr) -> Result<()> {
        match &self.rate {
            Some(rate) => rate
                .check(client)
                .map_err(|retry_after| Error::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    /// Checks the request's `Authorization` header; `path` (the request's,
    /// never its query) names it in the log when the credentials are refused.
    pub async fn authorize(&self, authorization: Option<&HeaderValue>, path: &str) -> Result<()> {
        if self.mode == AccessMode::Anonymous {
            return Ok(());
        }
        let unauthorized = || Error::Unauthorized {
            challenge: self.challenge.clone(),
        };
        let header = authorization.ok_or_else(unauthorized)?;
        let key = hash(header.as_bytes());
        if self.allowed.contains_key(&key) {
            return Ok(());
        }
        if self.refused.contains_key(&key) {
            return Err(unauthorized());
        }
        let verdict = self.check(header.to_str().unwrap_or("")).await?;
        if verdict {
            self.allowed.insert(key, ());
            Ok(())
        } else {
            tracing::info!(path, "credentials refused");
            self.refused.insert(key, ());
            Err(unauthorized())
        }
    }

    /// `Ok(true)`: valid; `Ok(false)`: invalid; `Err`: could not tell.
    async fn check(&self, header: &str) -> Result<bool> {
        if let Some(token) = header.strip_prefix("Bearer ") {
            return Ok(self.tokens.contains(&hash(token.trim().as_bytes())));
        }
        let Some((user, password)) = basic(header) else {
            return Ok(false);
        };
        if let Some(htpasswd) = &self.htpasswd {
            if htpasswd.verify(&user, &password).await {
                return Ok(true);
            }
        }
        match &self.delegate {
            Some(delegate) => delegate.verify(&user, &password).await,
            None => Ok(false),
        }
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn basic(header: &str) -> Option<(String, String)> {
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    crate::upstream::caller::decode_basic(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tokens: &std::path::Path) -> AccessConfig {
        AccessConfig {
            mode: AccessMode::Authenticated,
            tokens_file: Some(tokens.to_path_buf()),
            ..AccessConfig::default()
        }
    }

    #[tokio::test]
    async fn static_tokens_and_the_challenge() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# ci\nsecret-one\n\n  secret-two  \n").unwrap();
        let access = Access::new(&config(&file), Arc::default()).unwrap();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(access
            .authorize(Some(&header("Bearer secret-one")), "/v2/")
            .await
            .is_ok());
        assert!(access
            .authorize(Some(&header("Bearer secret-two")), "/v2/")
            .await
            .is_ok());
        match access.authorize(Some(&header("Bearer nope")), "/v2/").await {
            Err(Error::Unauthorized { challenge }) => {
                assert_eq!(challenge, "Basic realm=\"lasti\"")
            }
            other => panic!("{other:?}"),
        }
        assert!(access.authorize(None, "/v2/").await.is_err());
        let anonymous = Access::new(&AccessConfig::default(), Arc::default()).unwrap();
        assert!(anonymous.authorize(None, "/v2/").await.is_ok());
    }

    #[test]
    fn basic_credentials_parse() {
        assert_eq!(basic("Basic dTpwOnE="), Some(("u".into(), "p:q".into())));
        assert_eq!(basic("Basic !!"), None);
        assert_eq!(basic("Bearer x"), None);
    }
}
