//! The Bearer tokens of one registry, by scope, until shortly before they
//! expire.
//!
//! Scopes come from the repository names clients ask for, so any client
//! can make new ones: the cache is bounded in entries (least recently used
//! go first) and each token leaves when it is due for renewal (moka's
//! per-entry expiry), never kept past its own lifetime.

use std::time::{Duration, Instant};

use http::HeaderValue;
use moka::sync::Cache;
use moka::Expiry;

use crate::secret::Secret;

/// Tokens kept per registry: far more repositories than one pod pulls in
/// a token's lifetime, and a few MiB at most.
pub const TOKEN_CACHE_CAPACITY: u64 = 10_000;
/// A token is renewed this long before it expires.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(10);
/// Longest a token is kept, whatever its registry says (moka refuses
/// expiries past 1000 years; registries issue minutes to hours).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone)]
struct Token {
    value: Secret,
    keep_for: Duration,
}

/// Each token expires when it is due for renewal.
struct UntilRenewal;

impl Expiry<String, Token> for UntilRenewal {
    fn expire_after_create(&self, _: &String, token: &Token, _: Instant) -> Option<Duration> {
        Some(token.keep_for)
    }
}

/// Tokens by scope (`repository:team/app:pull`).
pub struct TokenCache {
    tokens: Cache<String, Token>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.tokens.entry_count())
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: u64) -> TokenCache {
        TokenCache {
            tokens: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilRenewal)
                .build(),
        }
    }

    /// The `Authorization` value of a token for `scope` that is not yet
    /// due for renewal.
    pub fn get(&self, scope: &str) -> Option<HeaderValue> {
        bearer_header(self.tokens.get(scope)?.value.expose())
    }

    /// Keeps a token that the realm said lives `lifetime`.
    pub fn insert(&self, scope: &str, value: Secret, lifetime: Duration) {
        let keep_for = renewal_after(lifetime);
        if !keep_for.is_zero() {
            let token = Token { value, keep_for };
            self.tokens.insert(scope.to_string(), token);
        }
    }

    /// Forgets the token for `scope`, after the registry refused it.
    pub fn remove(&self, scope: &str) {
        self.tokens.invalidate(scope);
    }

    /// Tokens held, after pending evictions have run.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.tokens.run_pending_tasks();
        self.tokens.entry_count()
    }
}

/// How long a token of `lifetime` is kept: until the renewal margin, capped.
fn renewal_after(lifetime: Duration) -> Duration {
    lifetime
        .min(MAX_TOKEN_LIFETIME)
        .saturating_sub(TOKEN_RENEW_MARGIN)
}

/// `Bearer <token>`, marked sensitive so that no log shows it.
pub fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn many_scopes_do_not_grow_the_cache_past_its_capacity() {
        let cache = TokenCache::new(100);
        for n in 0..2_000 {
            let scope = format!("repository:junk/name-{n}:pull");
            cache.insert(&scope, Secret::new(format!("t{n}")), HOUR);
        }
        let held = cache.len();
        assert!(held <= 100, "{held} tokens held for a capacity of 100");
        assert!(held > 0);
    }

    #[test]
    fn a_token_is_found_until_it_is_forgotten() {
        let cache = TokenCache::new(10);
        cache.insert("s", Secret::new("abc".into()), HOUR);
        let header = cache.get("s").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer abc");
        assert!(header.is_sensitive());
        cache.remove("s");
        assert!(cache.get("s").is_none());
    }

    #[test]
    fn a_token_too_short_lived_to_renew_is_not_kept() {
        let cache = TokenCache::new(10);
        cache.insert("s", Secret::new("abc".into()), TOKEN_RENEW_MARGIN);
        assert!(cache.get("s").is_none());
    }

    #[test]
    fn tokens_are_kept_until_their_renewal_margin_and_never_past_a_day() {
        assert_eq!(
            renewal_after(Duration::from_secs(300)),
            Duration::from_secs(290)
        );
        assert_eq!(renewal_after(Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(
            renewal_after(Duration::from_secs(u64::MAX)),
            MAX_TOKEN_LIFETIME - TOKEN_RENEW_MARGIN
        );
    }
}
