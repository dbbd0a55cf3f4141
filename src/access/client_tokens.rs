//! lasti's own token endpoint, for upstreams that take clients' credentials.
//!
//! docker, podman and containerd send credentials only after a challenge,
//! and docker fails a request outright when challenged with `Basic` and it
//! has none. So, as Docker Hub does, lasti answers `/v2/` with a `Bearer`
//! challenge naming its own `/token`: a client with credentials for lasti's
//! host sends them there, one without asks anonymously, and either gets a
//! token it then sends with every request.
//!
//! The token is the credential itself, sealed (ChaCha20-Poly1305, ring)
//! with a key only lasti holds, with an expiry: nothing is stored on this
//! side, a token survives nothing but its key, and replicas that share a
//! `[cluster]` secret derive the same key, so a token from one works at
//! another. Without a cluster the key is drawn at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::cache::index::unix_now;
use crate::upstream::caller::{ClientCredential, CredentialKind};
use crate::upstream::Caller;

/// Tokens kept opened, so that a client's every request does not open
/// its token again (base64, the AEAD, JSON and the fingerprint's HMAC
/// cost about as much as the rest of a hit); each until it expires.
const OPENED: u64 = 10_000;

/// How long a token lasts; clients ask for a new one when it runs out.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// What every token lasti issues starts with.
const PREFIX: &str = "lasti.";
/// Binds a sealed token to its purpose and format.
const AAD: &[u8] = b"lasti client token v1";
/// The path of the token endpoint on the API listener.
pub const TOKEN_PATH: &str = "/token";

/// What a token holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Expiry, Unix seconds.
    e: u64,
    /// The credential; `None` for an anonymous client.
    c: Option<Held>,
}

#[derive(Serialize, Deserialize)]
enum Held {
    /// User name (with its `upstream/` when it named one) and password.
    B(String, String),
    /// A token of the upstream's.
    T(String),
}

/// Issues and opens lasti's client tokens.
pub struct ClientTokens {
    key: LessSafeKey,
    realm: Option<Url>,
    tls: bool,
    opened: moka::sync::Cache<HeaderValue, Opened>,
}

/// A token opened, until it expires.
#[derive(Clone)]
struct Opened {
    caller: Caller,
    until: Instant,
}

struct UntilExpiry;

impl moka::Expiry<HeaderValue, Opened> for UntilExpiry {
    fn expire_after_create(&self, _: &HeaderValue, v: &Opened, now: Instant) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
}

impl std::fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTokens")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// Why a token does not open.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not sealed with this key, or altered.
    Invalid,
    /// Past its expiry.
    Expired,
}

impl ClientTokens {
    /// Tokens sealed with a key derived from `shared` (the cluster's
    /// secret, so replicas open each other's), or a random one. `realm`
    /// overrides the URL clients are sent to; `tls` says whether this
    /// listener serves TLS itself.
    pub fn new(shared: Option<&[u8]>, realm: Option<Url>, tls: bool) -> ClientTokens {
        let mut bytes = [0u8; 32];
        match shared {
            Some(secret) => {
                let mut hasher = Sha256::new();
                hasher.update(b"lasti client token key\0");
                hasher.update(secret);
                bytes.copy_from_slice(&hasher.finalize());
            }
            None => SystemRandom::new()
                .fill(&mut bytes)
                .expect("the system's random source works"),
        }
        let key = UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes).expect("a 32-byte key");
        ClientTokens {
            key: LessSafeKey::new(key),
            realm,
            tls,
            opened: moka::sync::Cache::builder()
                .max_capacity(OPENED)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    /// The caller of an `Authorization: Bearer <token>` header holding
    /// `token`, one of lasti's: opened once, then kept until it expires.
    pub fn caller(&self, header: &HeaderValue, token: &str) -> Result<Caller, TokenError> {
        if let Some(opened) = self.opened.get(header) {
            return Ok(opened.caller);
        }
        let (credential, expires) = self.open_until(token)?;
        let caller = credential
            .map(|c| Caller::client(Arc::new(c)))
            .unwrap_or_default();
        let left = expires.saturating_sub(unix_now());
        let opened = Opened {
            caller: caller.clone(),
            until: Instant::now() + Duration::from_secs(left),
        };
        self.opened.insert(header.clone(), opened);
        Ok(caller)
    }

    /// A token for `credential` (`None`: an anonymous client).
    pub fn seal(&self, credential: Option<&ClientCredential>) -> String {
        let held = credential.map(|c| match c.secret() {
            CredentialKind::Basic { user, password } => {
                let user = match c.named_upstream() {
                    Some(upstream) => format!("{upstream}/{user}"),
                    None => user.clone(),
                };
                Held::B(user, password.expose().to_string())
            }
            CredentialKind::Bearer(token) => Held::T(token.expose().to_string()),
        });
        let sealed = Sealed {
            e: unix_now() + TOKEN_LIFETIME.as_secs(),
            c: held,
        };
        let mut data = serde_json::to_vec(&sealed).expect("serialisable");
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .expect("sealing a small buffer");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        )
    }

    /// Whether `token` looks like one of lasti's (whatever its key).
    pub fn is_ours(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    /// The credential a token holds (`None`: an anonymous client).
    pub fn open(&self, token: &str) -> Result<Option<ClientCredential>, TokenError> {
        self.open_until(token).map(|(credential, _)| credential)
    }

    /// [`ClientTokens::open`], and the token's expiry (Unix seconds).
    fn open_until(&self, token: &str) -> Result<(Option<ClientCredential>, u64), TokenError> {
        let body = token.strip_prefix(PREFIX).ok_or(TokenError::Invalid)?;
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Invalid)?;
        if bytes.len() < NONCE_LEN {
            return Err(TokenError::Invalid);
        }
        let mut data = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| TokenError::Invalid)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut data)
            .map_err(|_| TokenError::Invalid)?;
        let sealed: Sealed = serde_json::from_slice(plain).map_err(|_| TokenError::Invalid)?;
        if sealed.e <= unix_now() {
            return Err(TokenError::Expired);
        }
        let credential = match sealed.c {
            None => None,
            Some(Held::B(user, password)) => ClientCredential::basic(&user, &password),
            Some(Held::T(token)) => Some(ClientCredential::bearer(&token)),
        };
        Ok((credential, sealed.e))
    }

    /// The `WWW-Authenticate` challenge that sends a client to the token
    /// endpoint: at the configured realm, else at the host and scheme the
    /// client used. `scope` names what was asked, for clients that read it.
    pub fn challenge(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
        scope: Option<&str>,
    ) -> String {
        let realm = match &self.realm {
            Some(realm) => realm.to_string(),
            None => {
                let host = headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .or(authority)
                    .filter(|h| valid_host(h))
                    .unwrap_or("localhost");
                let forwarded = headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .filter(|p| matches!(*p, "http" | "https"));
                let scheme = forwarded.unwrap_or(if self.tls { "https" } else { "http" });
                format!("{scheme}://{host}{TOKEN_PATH}")
            }
        };
        let mut challenge = format!("Bearer realm=\"{realm}\",service=\"lasti\"");
        if let Some(scope) = scope.filter(|s| !s.contains('"')) {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        challenge
    }
}

/// A `Host` value fit for a URL: no quotes, spaces or paths.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_to_its_credential_only_with_its_key() {
        let tokens = ClientTokens::new(Some(b"secret"), None, false);
        let alice = ClientCredential::basic("ghcr.io/alice", "pw").unwrap();
        let token = tokens.seal(Some(&alice));
        assert!(ClientTokens::is_ours(&token));
        assert!(!token.contains("alice") && !token.contains("pw"));
        let opened = tokens.open(&token).unwrap().unwrap();
        assert!(opened.fingerprint() == alice.fingerprint());
        assert_eq!(opened.named_upstream(), Some("ghcr.io"));
        // Another replica of the cluster opens it; another key does not.
        let peer = ClientTokens::new(Some(b"secret"), None, false);
        assert!(peer.open(&token).unwrap().is_some());
        let stranger = ClientTokens::new(Some(b"other"), None, false);
        assert_eq!(stranger.open(&token).unwrap_err(), TokenError::Invalid);
        // Altered by one character: refused.
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(tokens.open(&altered).unwrap_err(), TokenError::Invalid);
        let anonymous = tokens.seal(None);
        assert!(tokens.open(&anonymous).unwrap().is_none());
    }

    #[test]
    fn a_token_is_opened_once_and_then_kept() {
        let tokens = ClientTokens::new(None, None, false);
        let alice = ClientCredential::basic("alice", "pw").unwrap();
        let token = tokens.seal(Some(&alice));
        let header = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let first = tokens.caller(&header, &token).unwrap();
        let again = tokens.caller(&header, &token).unwrap();
        let (first, again) = (first.credential().unwrap(), again.credential().unwrap());
        assert!(first.fingerprint() == alice.fingerprint());
        assert!(Arc::ptr_eq(first, again), "opened once");
        let forged = HeaderValue::from_static("Bearer lasti.AAAA");
        assert!(tokens.caller(&forged, "lasti.AAAA").is_err());
    }

    #[test]
    fn the_challenge_names_the_host_and_scheme_the_client_used() {
        let tokens = ClientTokens::new(None, None, false);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, "lasti.example".parse().unwrap());
        assert_eq!(
            tokens.challenge(&headers, None, Some("repository:team/app:pull")),
            "Bearer realm=\"http://lasti.example/token\",service=\"lasti\",\
             scope=\"repository:team/app:pull\""
        );
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(tokens
            .challenge(&headers, None, None)
            .starts_with("Bearer realm=\"https://lasti.example/token\""));
        headers.insert(http::header::HOST, "evil\"x".parse().unwrap());
        assert!(tokens
            .challenge(&headers, None, None)
            .starts_with("Bearer realm=\"https://localhost/token\""));
        let fixed = ClientTokens::new(None, Url::parse("https://l.example/token").ok(), false);
        assert!(fixed
            .challenge(&HeaderMap::new(), None, None)
            .starts_with("Bearer realm=\"https://l.example/token\""));
    }
}
