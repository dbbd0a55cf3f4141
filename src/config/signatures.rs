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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with_rule(rule: &str) -> Result<Config, String> {
        let text = format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
             [[upstream.signatures]]\n{rule}\n"
        );
        let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn a_rule_needs_keys_or_says_unsigned_but_not_both() {
        let config = with_rule("keys = [\"/k.pub\"]").unwrap();
        let rule = &config.upstreams[0].signatures[0];
        assert_eq!(rule.repositories, ["*"]);
        assert!(rule.check_reference);
        assert_eq!(rule.display_name("docker.io"), "docker.io *");
        with_rule("repositories = [\"legacy/*\"]\nunsigned = true").unwrap();
        let no_keys = with_rule("repositories = [\"team/*\"]").unwrap_err();
        assert!(no_keys.contains("at least one public key"), "{no_keys}");
        let both = with_rule("unsigned = true\nkeys = [\"/k.pub\"]").unwrap_err();
        assert!(both.contains("takes no keys"), "{both}");
        let glob = with_rule("repositories = [\"[\"]\nkeys = [\"/k.pub\"]").unwrap_err();
        assert!(glob.contains("not a valid glob"), "{glob}");
        let none = with_rule("repositories = []\nkeys = [\"/k.pub\"]").unwrap_err();
        assert!(none.contains("at least one pattern"), "{none}");
        let typo = with_rule("key = [\"/k.pub\"]").unwrap_err();
        assert!(typo.contains("key"), "{typo}");
    }
}
