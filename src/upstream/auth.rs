//! Credentials for one upstream: anonymous, Basic, or the registry Bearer
//! token flow (`WWW-Authenticate` challenge -> token realm -> cached token).
//!
//! Tokens are cached per scope until shortly before they expire, in a
//! bounded cache ([`TokenCache`]). The realm learned from the first
//! challenge is remembered, so later scopes fetch their token before the
//! request instead of after a 401. Basic credentials go only to a realm
//! that [`site::realm_trusted`] accepts, checked again as each token request
//! is sent; never the client's credentials.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request, StatusCode};
use serde::Deserialize;
use url::Url;

use super::caller::{basic_header, Caller, CredentialKind};
use super::client::{self, HttpClient, SendError};
use super::site;
use super::tokens::{bearer_header, TokenCache, TOKEN_CACHE_CAPACITY};
use crate::config::UpstreamConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::{Challenge, Scheme};
pub use crate::secret::Password;
use crate::secret::Secret;

/// Lifetime assumed for a token whose response gives none (distribution's rule).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Largest token response read.
const TOKEN_RESPONSE_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
enum Known {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Who to authenticate as, against which registry.
#[derive(Debug)]
pub struct Credentials {
    /// The registry's name, for errors and logs.
    pub registry: String,
    /// Its base URL: credentials stay with its origin and site.
    pub base: Url,
    /// User name, if any.
    pub username: Option<String>,
    /// Password or token.
    pub password: Password,
    /// Extra hosts allowed to serve the token realm.
    pub realm_hosts: Vec<String>,
    /// Timeout of a token request.
    pub timeout: Duration,
}

impl Credentials {
    /// The credentials of a configured upstream.
    pub fn of_upstream(config: &UpstreamConfig) -> Credentials {
        Credentials {
            registry: config.name.clone(),
            base: config.url.clone(),
            username: config.username.clone(),
            password: match &config.password {
                Some(secret) => Password::Fixed(secret.clone()),
                None => Password::None,
            },
            realm_hosts: config.token_realm_hosts.clone(),
            timeout: config.header_timeout,
        }
    }
}

/// The credentials and token cache of one registry.
#[derive(Debug)]
pub struct Auth {
    upstream: String,
    base: Url,
    username: Option<String>,
    password: Password,
    realm_hosts: Vec<String>,
    timeout: Duration,
    known: Mutex<Option<Known>>,
    tokens: TokenCache,
    /// Tokens fetched with clients' credentials, by fingerprint and scope.
    client_tokens: TokenCache,
    metrics: Arc<Metrics>,
}

impl Auth {
    /// The auth state of a registry.
    pub fn new(credentials: Credentials, metrics: Arc<Metrics>) -> Auth {
        Auth {
            upstream: credentials.registry,
            base: credentials.base,
            username: credentials.username,
            password: credentials.password,
            realm_hosts: credentials.realm_hosts,
            timeout: credentials.timeout,
            known: Mutex::new(None),
            tokens: TokenCache::new(TOKEN_CACHE_CAPACITY),
            client_tokens: TokenCache::new(TOKEN_CACHE_CAPACITY),
            metrics,
        }
    }

    /// The `Authorization` to send with a request for `scope` made for
    /// `caller`, if any is known to be needed; fetches a token when the
    /// realm is known but no valid token for the scope is cached. A token
    /// the client brought goes as it is.
    pub async fn header(
        &self,
        client: &HttpClient,
        caller: &Caller,
        scope: &str,
    ) -> Result<Option<HeaderValue>> {
        if let Some(CredentialKind::Bearer(token)) = caller.credential().map(|c| c.secret()) {
            return Ok(bearer_header(token.expose()));
        }
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match known {
            None => Ok(None),
            Some(Known::Basic) => Ok(self.basic(caller)),
            Some(Known::Bearer { realm, service }) => {
                if let Some(token) = self.cached(caller, scope) {
                    return Ok(Some(token));
                }
                self.fetch_token(client, caller, &realm, service.as_deref(), scope)
                    .await
                    .map(Some)
            }
        }
    }

    /// Answers a 401: learns the challenge and returns the header to retry
    /// with, or `None` when there is nothing better to send (a token the
    /// client brought was refused: it is the client's to renew).
    pub async fn challenge(
        &self,
        client: &HttpClient,
        caller: &Caller,
        www_authenticate: &[&str],
        scope: &str,
    ) -> Result<Option<HeaderValue>> {
        if let Some(CredentialKind::Bearer(_)) = caller.credential().map(|c| c.secret()) {
            return Ok(None);
        }
        let challenges: Vec<Challenge> = www_authenticate
            .iter()
            .filter_map(|v| Challenge::parse(v).ok())
            .flatten()
            .collect();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == Scheme::Bearer) {
            let realm = self.check_realm(bearer.realm())?;
            let service = bearer.service().map(str::to_string);
            self.invalidate(caller, scope);
            let token = self
                .fetch_token(client, caller, &realm, service.as_deref(), scope)
                .await?;
            *self.known.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Known::Bearer { realm, service });
            return Ok(Some(token));
        }
        let basic = self.basic(caller);
        if challenges.iter().any(|c| c.scheme == Scheme::Basic) && basic.is_some() {
            *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(Known::Basic);
            return Ok(basic);
        }
        Ok(None)
    }

    /// Basic credentials of the caller: the client's, or the configured ones.
    fn basic(&self, caller: &Caller) -> Option<HeaderValue> {
        if let Some(credential) = caller.credential() {
            return credential.basic_header();
        }
        let user = self.username.as_deref()?;
        let password = self.password.current();
        basic_header(user, password.as_ref().map(Secret::expose).unwrap_or(""))
    }

    /// The token cache of the caller, and its key for `scope`.
    fn tokens_of(&self, caller: &Caller, scope: &str) -> (&TokenCache, String) {
        match caller.credential() {
            None => (&self.tokens, scope.to_string()),
            Some(credential) => (
                &self.client_tokens,
                format!("{}\n{scope}", credential.fingerprint().key()),
            ),
        }
    }

    fn cached(&self, caller: &Caller, scope: &str) -> Option<HeaderValue> {
        let (tokens, key) = self.tokens_of(caller, scope);
        tokens.get(&key)
    }

    fn invalidate(&self, caller: &Caller, scope: &str) {
        let (tokens, key) = self.tokens_of(caller, scope);
        tokens.remove(&key);
    }

    /// Accepts a realm only where [`site::realm_trusted`] allows, and only
    /// over https unless the upstream itself is http.
    fn check_realm(&self, realm: Option<&str>) -> Result<Url> {
        let refuse = |why: String| Error::UpstreamInvalid {
            upstream: self.upstream.clone(),
            message: why,
        };
        let realm = realm.ok_or_else(|| refuse("Bearer challenge without a realm".into()))?;
        let url = Url::parse(realm).map_err(|_| refuse("token realm is not a URL".into()))?;
        let secure = url.scheme() == "https" || self.base.scheme() == "http";
        if !secure || !matches!(url.scheme(), "http" | "https") {
            return Err(refuse("token realm must use https".into()));
        }
        if !site::realm_trusted(&url, &self.base, &self.realm_hosts) {
            let host = url.host_str().unwrap_or_default();
            let base_host = self.base.host_str().unwrap_or_default();
            return Err(refuse(format!(
                "token realm host {host} is not on {base_host}'s origin or registrable domain, \
                 nor in token_realm_hosts"
            )));
        }
        Ok(url)
    }

    async fn fetch_token(
        &self,
        client: &HttpClient,
        caller: &Caller,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<HeaderValue> {
        let mut url = realm.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            // Several scopes (a cross-repository mount) are several parameters.
            for one in scope.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", one);
            }
        }
        let mut request = Request::get(url.as_str());
        // Checked again here, as the credentials leave, whatever path led here.
        let trusted = site::realm_trusted(&url, &self.base, &self.realm_hosts);
        if let Some(basic) = self.basic(caller).filter(|_| trusted) {
            request = request.header(header::AUTHORIZATION, basic);
        }
        let request = request
            .body(crate::body::empty())
            .map_err(|e| self.invalid(format!("token request: {e}")))?;
        let response = match client::send(client, request, self.timeout).await {
            Ok(r) => r,
            Err(SendError::Timeout) => {
                return Err(Error::UpstreamTimeout {
                    upstream: self.upstream.clone(),
                    message: "token realm".into(),
                })
            }
            Err(SendError::Failed(e)) => {
                return Err(Error::UpstreamUnavailable {
                    upstream: self.upstream.clone(),
                    message: format!("token realm: {e}"),
                })
            }
        };
        let status = response.status();
        let body = client::read_small(response.into_body(), TOKEN_RESPONSE_LIMIT, self.timeout)
            .await
            .map_err(|e| self.invalid(format!("token response {e}")))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::UpstreamDenied {
                upstream: self.upstream.clone(),
                message: match caller.credential() {
                    Some(_) => "the token realm refused the client's credentials".into(),
                    None => "the token realm refused the configured credentials".into(),
                },
            });
        }
        if !status.is_success() {
            return Err(Error::UpstreamUnavailable {
                upstream: self.upstream.clone(),
                message: format!("token realm answered {status}"),
            });
        }
        self.metrics.token_fetched(&self.upstream);
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| self.invalid("token response is not JSON".into()))?;
        let value = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.invalid("token response has no token".into()))?;
        let header = bearer_header(&value)
            .ok_or_else(|| self.invalid("token is not a valid header value".into()))?;
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let (tokens, key) = self.tokens_of(caller, scope);
        tokens.insert(&key, Secret::new(value), lifetime);
        Ok(header)
    }

    fn invalid(&self, message: String) -> Error {
        Error::UpstreamInvalid {
            upstream: self.upstream.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(url: &str, hosts: &[&str]) -> Auth {
        let mut config = UpstreamConfig::new("test", Url::parse(url).unwrap());
        config.token_realm_hosts = hosts.iter().map(|h| h.to_string()).collect();
        Auth::new(Credentials::of_upstream(&config), Arc::default())
    }

    #[test]
    fn realms_on_the_same_site_are_accepted() {
        let a = auth("https://registry-1.docker.io", &[]);
        assert!(a.check_realm(Some("https://auth.docker.io/token")).is_ok());
        assert!(a.check_realm(Some("https://evil.example/token")).is_err());
        assert!(
            a.check_realm(Some("http://auth.docker.io/token")).is_err(),
            "https only"
        );
        assert!(a.check_realm(None).is_err());
        assert!(a.check_realm(Some("not a url")).is_err());
    }

    #[test]
    fn ip_upstreams_match_only_their_own_origin_or_the_allow_list() {
        let a = auth("http://127.0.0.1:5001", &["127.0.0.2"]);
        assert!(a.check_realm(Some("http://127.0.0.1:5001/token")).is_ok());
        assert!(a.check_realm(Some("http://127.0.0.1:9999/token")).is_err());
        assert!(a.check_realm(Some("http://127.0.0.2/token")).is_ok());
        assert!(a.check_realm(Some("http://127.0.0.3/token")).is_err());
    }

    #[test]
    fn another_azure_registry_is_not_a_realm() {
        let a = auth("https://x.azurecr.io", &[]);
        assert!(a
            .check_realm(Some("https://x.azurecr.io/oauth2/token"))
            .is_ok());
        assert!(a
            .check_realm(Some("https://y.azurecr.io/oauth2/token"))
            .is_err());
    }

    #[test]
    fn basic_header_is_sensitive_and_absent_without_user() {
        let mut config = UpstreamConfig::new("t", Url::parse("http://x").unwrap());
        assert!(Auth::new(Credentials::of_upstream(&config), Arc::default())
            .basic(&Caller::lasti())
            .is_none());
        config.username = Some("u".into());
        config.password = Some(Secret::new("p".into()));
        let header = Auth::new(Credentials::of_upstream(&config), Arc::default())
            .basic(&Caller::lasti())
            .unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Basic dTpw");
    }
}
