//! A token service that grants pull access per user and per repository,
//! and content kept per repository: what Docker Hub, GitLab or ghcr.io do
//! and a local distribution registry (htpasswd: every user may pull
//! everything) cannot show.
//!
//! Tokens are `scoped-<user>` (`scoped-` alone for an anonymous client); a
//! request for a repository its token does not cover gets 401 with an
//! `insufficient_scope` challenge, as Docker Hub answers.

use std::collections::{HashMap, HashSet};

/// Users, their repositories, the public ones, and what each holds.
#[derive(Debug, Default, Clone)]
pub struct Scopes {
    /// `Basic ...` header -> (user, repositories it may pull).
    pub users: HashMap<String, (String, Vec<String>)>,
    /// Repositories anyone may pull, anonymous clients too.
    pub public: HashSet<String>,
    /// Repository -> digests of the blobs and manifests it holds.
    pub holds: HashMap<String, HashSet<String>>,
    /// `repo:tag` -> manifest digest.
    pub tags: HashMap<String, String>,
}

/// The token prefix.
pub const PREFIX: &str = "scoped-";

impl Scopes {
    /// The token for a `/token` request's `Authorization`, or `None` for
    /// credentials it does not know.
    pub fn token_for(&self, authorization: Option<&str>) -> Option<String> {
        match authorization {
            None => Some(PREFIX.to_string()),
            Some(basic) => {
                let (user, _) = self.users.get(basic)?;
                Some(format!("{PREFIX}{user}"))
            }
        }
    }

    /// Whether `authorization` (`Bearer scoped-<user>`) covers `repo`
    /// (`None`: the `/v2/` check, which any valid token passes).
    pub fn covers(&self, authorization: Option<&str>, repo: Option<&str>) -> bool {
        let Some(user) = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| t.strip_prefix(PREFIX))
        else {
            return false;
        };
        let Some(repo) = repo else {
            return true;
        };
        if self.public.contains(repo) {
            return true;
        }
        self.users
            .values()
            .any(|(name, repos)| name == user && repos.iter().any(|r| r == repo))
    }

    /// Whether `repo` holds `digest`.
    pub fn holds(&self, repo: &str, digest: &str) -> bool {
        self.holds.get(repo).is_some_and(|d| d.contains(digest))
    }
}
