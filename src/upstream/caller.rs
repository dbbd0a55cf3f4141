//! Who an upstream request is made for: lasti itself (the upstream's
//! configured credentials, or none), or one client with its own.
//!
//! A client's credential lives in memory for the requests it came with
//! (and inside the sealed token lasti handed that client), never on disk,
//! and is known elsewhere only by its [`Fingerprint`]: an HMAC under a key
//! drawn at start, so no table of fingerprints can be tested against
//! guessed passwords, and fingerprints compare in constant time.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use http::HeaderValue;

use crate::secret::Secret;

/// A credential's keyed hash: what verdicts and tokens are kept by.
#[derive(Clone, Copy, Eq)]
pub struct Fingerprint([u8; 32]);

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Fingerprint) -> bool {
        // No early exit: a timing of the comparison says nothing of either.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::hash::Hash for Fingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

impl Fingerprint {
    /// Hex text, for keys of string-keyed caches.
    pub fn key(&self) -> String {
        hex::encode(self.0)
    }

    /// The keyed hash of `parts`, each length-prefixed so that no two
    /// credentials share one.
    fn of(parts: &[&[u8]]) -> Fingerprint {
        static KEY: OnceLock<ring::hmac::Key> = OnceLock::new();
        let key = KEY.get_or_init(|| {
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .expect("the system's random source works")
        });
        let mut context = ring::hmac::Context::with_key(key);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut out = [0; 32];
        out.copy_from_slice(context.sign().as_ref());
        Fingerprint(out)
    }
}

/// `Authorization: Basic base64(user:password)`, marked sensitive so
/// that no log shows it: for a client's credential and a configured one.
pub fn basic_header(user: &str, password: &str) -> Option<HeaderValue> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The (user, password) of a Basic credential's base64 part.
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// An `Authorization` header that is neither Basic nor Bearer, or is
/// not well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadableCredential;

/// What a client authenticates with towards the upstream.
#[derive(Clone)]
pub enum CredentialKind {
    /// A user name and password (or access token), as `docker login` takes them.
    Basic {
        /// The user name.
        user: String,
        /// The password or token.
        password: Secret,
    },
    /// A token the upstream issued, sent on as it is.
    Bearer(Secret),
}

/// One client's credential for one upstream.
#[derive(Clone)]
pub struct ClientCredential {
    fingerprint: Fingerprint,
    /// The upstream it is for, when the user name named one
    /// (`ghcr.io/alice`); else it is for the one upstream that takes
    /// client credentials.
    upstream: Option<String>,
    secret: CredentialKind,
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredential")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl ClientCredential {
    /// A user name and password; a user name `upstream/user` binds it to
    /// that upstream. `None` for an empty pair (podman sends `Basic Og==`
    /// when it has no credentials: that is an anonymous client).
    pub fn basic(user: &str, password: &str) -> Option<ClientCredential> {
        if user.is_empty() && password.is_empty() {
            return None;
        }
        let (upstream, user) = match user.split_once('/') {
            Some((upstream, user)) => (Some(upstream.to_string()), user),
            None => (None, user),
        };
        Some(ClientCredential {
            fingerprint: Fingerprint::of(&[
                b"basic",
                upstream.as_deref().unwrap_or("").as_bytes(),
                user.as_bytes(),
                password.as_bytes(),
            ]),
            upstream,
            secret: CredentialKind::Basic {
                user: user.to_string(),
                password: Secret::new(password.to_string()),
            },
        })
    }

    /// A token the upstream issued to the client.
    pub fn bearer(token: &str) -> ClientCredential {
        ClientCredential {
            fingerprint: Fingerprint::of(&[b"bearer", token.as_bytes()]),
            upstream: None,
            secret: CredentialKind::Bearer(Secret::new(token.to_string())),
        }
    }

    /// The credential of an `Authorization` header that lasti did not
    /// issue: Basic, or an upstream's Bearer token. `Err` for a header of
    /// another kind; `Ok(None)` for an empty Basic pair.
    pub fn from_header(
        value: &HeaderValue,
    ) -> Result<Option<ClientCredential>, UnreadableCredential> {
        let text = value.to_str().map_err(|_| UnreadableCredential)?;
        let (scheme, rest) = text.split_once(' ').ok_or(UnreadableCredential)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(rest).ok_or(UnreadableCredential)?;
            return Ok(ClientCredential::basic(&user, &password));
        }
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Ok(Some(ClientCredential::bearer(rest.trim())));
        }
        Err(UnreadableCredential)
    }

    /// Its fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The upstream its user name named, if any.
    pub fn named_upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// What it authenticates with.
    pub fn secret(&self) -> &CredentialKind {
        &self.secret
    }

    /// `Authorization: Basic ...` for the user name and password, marked
    /// sensitive; `None` for a token.
    pub fn basic_header(&self) -> Option<HeaderValue> {
        let CredentialKind::Basic { user, password } = &self.secret else {
            return None;
        };
        basic_header(user, password.expose())
    }
}

/// Whose credentials an upstream request carries.
#[derive(Debug, Clone, Default)]
pub struct Caller(Option<Arc<ClientCredential>>);

impl Caller {
    /// lasti itself: the upstream's configured credentials, or none.
    pub fn lasti() -> Caller {
        Caller(None)
    }

    /// One client, with its own credential.
    pub fn client(credential: Arc<ClientCredential>) -> Caller {
        Caller(Some(credential))
    }

    /// The client's credential, when the request is made for one.
    pub fn credential(&self) -> Option<&Arc<ClientCredential>> {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_credentials_apart_and_say_nothing() {
        let a = ClientCredential::basic("alice", "one").unwrap();
        let b = ClientCredential::basic("alice", "two").unwrap();
        let a_again = ClientCredential::basic("alice", "one").unwrap();
        assert!(a.fingerprint() == a_again.fingerprint());
        assert!(a.fingerprint() != b.fingerprint());
        // Length-prefixed: moving the colon makes another credential.
        let c = ClientCredential::basic("alic", "eone").unwrap();
        assert!(a.fingerprint() != c.fingerprint());
        assert_eq!(
            format!("{:?}", a),
            "ClientCredential { upstream: None, .. }"
        );
    }

    #[test]
    fn headers_parse_into_credentials() {
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        // "ghcr.io/alice:pw"
        let named = ClientCredential::from_header(&header("Basic Z2hjci5pby9hbGljZTpwdw=="))
            .unwrap()
            .unwrap();
        assert_eq!(named.named_upstream(), Some("ghcr.io"));
        assert_eq!(
            named.basic_header().unwrap().to_str().unwrap(),
            "Basic YWxpY2U6cHc="
        );
        assert!(named.basic_header().unwrap().is_sensitive());
        // podman's empty pair is an anonymous client.
        assert!(ClientCredential::from_header(&header("Basic Og=="))
            .unwrap()
            .is_none());
        let token = ClientCredential::from_header(&header("Bearer abc"))
            .unwrap()
            .unwrap();
        assert!(token.basic_header().is_none());
        assert!(ClientCredential::from_header(&header("Digest x")).is_err());
        assert!(ClientCredential::from_header(&header("Basic !!")).is_err());
    }
}
