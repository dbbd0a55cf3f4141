//! An upstream's signature rules, ready to use: the first rule whose
//! patterns match a repository decides whether it needs a signature, and
//! by which keys. Key files are read once, when the upstream is built, so
//! a bad key stops `serve` and `check-config` rather than a pull.

use globset::{GlobSet, GlobSetBuilder};

use super::PublicKey;
use crate::config::SignatureRuleConfig;
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

/// One rule that needs signatures.
#[derive(Debug)]
pub struct Policy {
    /// The rule's name, for errors, logs and metrics.
    name: String,
    /// The keys whose signature is enough.
    keys: Vec<PublicKey>,
    /// The signed payload must name the repository served.
    check_reference: bool,
    /// What the verdicts of this rule are kept under: the keys and what
    /// else is checked, hashed, so that another key set or another check
    /// is a new rule whose verdicts are made afresh.
    id: String,
}

impl Policy {
    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keys whose signature is enough.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Whether the payload must name the repository served.
    pub fn checks_reference(&self) -> bool {
        self.check_reference
    }

    /// Where the verdict on `digest` in `repo` of `upstream` is kept.
    pub fn verdict_key(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> String {
        // Built by hand: it is made on every manifest hit under a rule.
        let parts = [
            &self.id,
            " ",
            upstream,
            " ",
            repo.as_str(),
            "@",
            digest.as_str(),
        ];
        let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            key.push_str(part);
        }
        key
    }
}

/// What one rule says.
#[derive(Debug)]
enum Rule {
    Signed(std::sync::Arc<Policy>),
    Unsigned,
}

/// Which repositories a rule is for. Most patterns are a name or a name
/// followed by `*` (`*` crosses `/`, as in `allow`): those are compared
/// as strings, as they are on every manifest hit under a rule.
#[derive(Debug)]
enum Repositories {
    /// `*`.
    Any,
    /// Names, and prefixes of names, without any other glob syntax.
    Plain {
        names: Vec<String>,
        prefixes: Vec<String>,
    },
    /// Anything else.
    Globs(GlobSet),
}

impl Repositories {
    fn new(patterns: &[String], name: &str) -> Result<Repositories, String> {
        let special = |p: &str| p.contains(['?', '[', ']', '{', '}', '\\', '!']);
        if patterns.iter().any(|p| p == "*") {
            return Ok(Repositories::Any);
        }
        if !patterns.iter().any(|p| special(p)) {
            let (mut names, mut prefixes) = (Vec::new(), Vec::new());
            for pattern in patterns {
                match pattern.split_once('*') {
                    None => names.push(pattern.clone()),
                    Some((prefix, "")) if !prefix.contains('*') => prefixes.push(prefix.into()),
                    Some(_) => return Repositories::globs(patterns, name),
                }
            }
            return Ok(Repositories::Plain { names, prefixes });
        }
        Repositories::globs(patterns, name)
    }

    fn globs(patterns: &[String], name: &str) -> Result<Repositories, String> {
        let mut globs = GlobSetBuilder::new();
        for pattern in patterns {
            globs.add(globset::Glob::new(pattern).map_err(|e| format!("{name}: {e}"))?);
        }
        let globs = globs.build().map_err(|e| format!("{name}: {e}"))?;
        Ok(Repositories::Globs(globs))
    }

    fn matches(&self, repo: &str) -> bool {
        match self {
            Repositories::Any => true,
            Repositories::Plain { names, prefixes } => {
                names.iter().any(|n| n == repo)
                    || prefixes.iter().any(|p| repo.starts_with(p.as_str()))
            }
            Repositories::Globs(globs) => globs.is_match(repo),
        }
    }
}

/// An upstream's rules, in order.
#[derive(Debug, Default)]
pub struct Policies {
    rules: Vec<(Repositories, Rule)>,
}

impl Policies {
    /// Builds the rules of upstream `upstream`, reading their key files.
    pub fn new(upstream: &str, configs: &[SignatureRuleConfig]) -> Result<Policies, String> {
        let mut rules = Vec::new();
        for config in configs {
            let name = config.display_name(upstream);
            let globs = Repositories::new(&config.repositories, &name)?;
            if config.unsigned {
                rules.push((globs, Rule::Unsigned));
                continue;
            }
            let mut keys = Vec::new();
            for path in &config.keys {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("signature rule {name}: key file {}: {e}", path.display())
                })?;
                keys.extend(PublicKey::from_pem(&text).map_err(|e| {
                    format!("signature rule {name}: key file {}: {e}", path.display())
                })?);
            }
            let id = policy_id(&keys, config.check_reference);
            rules.push((
                globs,
                Rule::Signed(std::sync::Arc::new(Policy {
                    name,
                    keys,
                    check_reference: config.check_reference,
                    id,
                })),
            ));
        }
        Ok(Policies { rules })
    }

    /// The policy `repo` is held to, if it needs signatures.
    pub fn for_repo(&self, repo: &RepoName) -> Option<&std::sync::Arc<Policy>> {
        match self
            .rules
            .iter()
            .find(|(repositories, _)| repositories.matches(repo.as_str()))
        {
            Some((_, Rule::Signed(policy))) => Some(policy),
            _ => None,
        }
    }

    /// Whether any rule needs signatures.
    pub fn any(&self) -> bool {
        self.rules
            .iter()
            .any(|(_, rule)| matches!(rule, Rule::Signed(_)))
    }
}

/// A short hash of a key set (in any order) and the checks made.
fn policy_id(keys: &[PublicKey], check_reference: bool) -> String {
    let mut encoded: Vec<&[u8]> = keys.iter().map(|k| k.identity()).collect();
    encoded.sort_unstable();
    encoded.dedup();
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(if check_reference { b"ref\n" } else { b"any\n" });
    for key in encoded {
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(key);
    }
    let digest = hasher.finish();
    let hex = digest.hex();
    format!("p{}", &hex[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        repositories: &[&str],
        keys: Vec<std::path::PathBuf>,
        unsigned: bool,
    ) -> SignatureRuleConfig {
        SignatureRuleConfig {
            name: None,
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
            keys,
            unsigned,
            check_reference: true,
        }
    }

    fn key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let algorithm = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(algorithm, &rng).unwrap();
        let pair =
            ring::signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &rng).unwrap();
        let spki = crate::signature::key::tests::p256_spki(pair.public_key().as_ref());
        let body = base64::engine::general_purpose::STANDARD.encode(spki);
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"),
        )
        .unwrap();
        path
    }

    #[test]
    fn the_first_matching_rule_decides_and_keys_make_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key_file(dir.path(), "a.pub"), key_file(dir.path(), "b.pub"));
        let repo = |name: &str| RepoName::parse(name).unwrap();
        let policies = Policies::new(
            "docker.io",
            &[
                rule(&["team/legacy"], Vec::new(), true),
                rule(&["team/*"], vec![a.clone(), b.clone()], false),
            ],
        )
        .unwrap();
        assert!(policies.any());
        assert!(policies.for_repo(&repo("team/legacy")).is_none());
        assert!(policies.for_repo(&repo("other/app")).is_none());
        let policy = policies.for_repo(&repo("team/app")).unwrap();
        assert_eq!(policy.keys().len(), 2);
        assert_eq!(policy.name(), "docker.io team/*");

        // The same keys in another order are the same policy; other keys
        // or another check are another.
        let id = |keys: Vec<std::path::PathBuf>, check_reference: bool| {
            let mut config = rule(&["*"], keys, false);
            config.check_reference = check_reference;
            let policies = Policies::new("docker.io", &[config]).unwrap();
            let digest = crate::oci::Digest::sha256_of(b"m");
            policies
                .for_repo(&repo("x/y"))
                .unwrap()
                .verdict_key("docker.io", &repo("x/y"), &digest)
        };
        assert_eq!(
            id(vec![a.clone(), b.clone()], true),
            id(vec![b.clone(), a.clone()], true)
        );
        assert_ne!(
            id(vec![a.clone()], true),
            id(vec![a.clone(), b.clone()], true)
        );
        assert_ne!(id(vec![a.clone()], true), id(vec![a.clone()], false));
    }

    #[test]
    fn plain_patterns_match_as_their_globs_do() {
        let patterns = [
            "*",
            "team/*",
            "team/app",
            "team/app*",
            "te*",
            "team/*/x",
            "team/[ab]pp",
            "t?am/*",
            "team/**",
            "*/app",
        ];
        let repos = [
            "team/app",
            "team/apps",
            "team/bpp",
            "team/a/x",
            "other/app",
            "team",
            "tea",
        ];
        for pattern in patterns {
            let ours = Repositories::new(&[pattern.to_string()], "t").unwrap();
            let glob = globset::Glob::new(pattern).unwrap().compile_matcher();
            for repo in repos {
                assert_eq!(
                    ours.matches(repo),
                    glob.is_match(repo),
                    "{pattern} on {repo}"
                );
            }
        }
    }

    #[test]
    fn a_key_file_that_cannot_be_used_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pub");
        let err = Policies::new("docker.io", &[rule(&["*"], vec![missing], false)]).unwrap_err();
        assert!(err.contains("missing.pub"), "{err}");
        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "not a key").unwrap();
        let err = Policies::new("docker.io", &[rule(&["*"], vec![junk], false)]).unwrap_err();
        assert!(err.contains("no PUBLIC KEY"), "{err}");
    }
}
