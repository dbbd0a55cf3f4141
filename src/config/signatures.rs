//! Signed images only: which repositories of an upstream must carry a
//! cosign signature, and by which keys (see `signature::policy`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One signature rule of an upstream (`[[upstream.signatures]]`). The
/// first rule whose `repositories` match a repository decides for it; a
/// repository no rule matches is served as without any rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRuleConfig {
    /// A name for errors, logs and metrics; default: the upstream's name
    /// and the rule's patterns.
    #[serde(default)]
    pub name: Option<String>,
    /// Repository globs as the upstream names them (`library/*`,
    /// `team/*`, where `*` crosses `/` as in `allow`); default: every
    /// repository.
    #[serde(default = "every_repository")]
    pub repositories: Vec<String>,
    /// PEM files of the public keys whose signature is enough (cosign's
    /// `cosign.pub`; several for key rotation). Read at start.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Serve these repositories unsigned: an exception, placed before a
    /// wider rule that needs signatures.
    #[serde(default)]
    pub unsigned: bool,
    /// The signed payload must name the repository served
    /// (`critical.identity.docker-reference`, compared without its
    /// registry host). Off only for images signed under another name.
    #[serde(default = "yes")]
    pub check_reference: bool,
}

fn every_repository() -> Vec<String> {
    vec!["*".to_string()]
}

fn yes() -> bool {
    true
}

impl SignatureRuleConfig {
    /// The rule's name as errors and logs give it.
    pub fn display_name(&self, upstream: &str) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{upstream} {}", self.repositories.join(",")),
        }
    }

    /// What is wrong with the rule, if anything (the key files are read
    /// when the upstream is built, so `check-config` reads them too).
    pub(super) fn problem(&self) -> Option<String> {
        if self.repositories.is_empty() {
            return Some("repositories must name at least one pattern".into());
        }
        if let Some(bad) = self
            .repositories
            .iter()
            .find(|p| globset::Glob::new(p).is_err())
        {
            return Some(format!("repository pattern {bad:?} is not a valid glob"));
        }
        match (self.unsigned, self.keys.is_empty()) {
            (true, false) => Some("unsigned = true takes no keys".into()),
            (false, true) => Some("keys must list at least one public key file".into()),
            _ => None,
        }
    }
}
