//! Maps an upstream repository to an image stream name in the project.
//!
//! An OpenShift repository has exactly two components, `<project>/<stream>`,
//! and a stream name holds no `/`. The rule, configurable in `[target.naming]`:
//!
//! | upstream repository          | image stream          |
//! | ---------------------------- | --------------------- |
//! | docker.io `library/centos`   | `centos`              |
//! | docker.io `bitnami/redis`    | `bitnami-redis`       |
//! | ghcr.io `org/app`            | `ghcr.io-org-app`     |
//! | localhost:5001 `team/app`    | `localhost-5001-team-app` |
//!
//! Joining is not injective (`a-b/c` and `a/b-c` both give `a-b-c`), so the
//! names already given are remembered (by the back-fill store): a second,
//! different source that would take a name already held gets the name with
//! a hash of its full source appended instead. Names longer than
//! `max_length` are cut and get the same kind of hash suffix. Tags are kept.

use sha2::{Digest as _, Sha256};

use crate::config::{NamingConfig, UpstreamPrefix};
use crate::oci::RepoName;

/// Hex characters of the hash suffix.
const HASH_LEN: usize = 8;

/// The naming rule.
#[derive(Debug, Clone)]
pub struct Namer {
    config: NamingConfig,
    default_upstream: String,
}

impl Namer {
    /// The rule for a configuration whose default upstream is `default_upstream`.
    pub fn new(config: NamingConfig, default_upstream: &str) -> Namer {
        Namer {
            config,
            default_upstream: default_upstream.to_string(),
        }
    }

    /// The source key of a repository: `upstream/repo`.
    pub fn source(upstream: &str, repo: &RepoName) -> String {
        format!("{upstream}/{repo}")
    }

    /// The image stream name for `repo` of `upstream`. `holder` tells which
    /// source already holds a name, if any.
    pub fn stream_name(
        &self,
        upstream: &str,
        repo: &RepoName,
        holder: impl Fn(&str) -> Option<String>,
    ) -> String {
        let source = Namer::source(upstream, repo);
        let readable = self.readable(upstream, repo);
        let name = if readable.len() > self.config.max_length {
            with_hash(&readable, &source, self.config.max_length)
        } else {
            readable
        };
        match holder(&name) {
            Some(other) if other != source => with_hash(&name, &source, self.config.max_length),
            _ => name,
        }
    }

    fn readable(&self, upstream: &str, repo: &RepoName) -> String {
        let mut parts: Vec<String> = Vec::new();
        let prefix = match self.config.upstream_prefix {
            UpstreamPrefix::Always => true,
            UpstreamPrefix::Never => false,
            UpstreamPrefix::NonDefault => upstream != self.default_upstream,
        };
        if prefix {
            parts.push(host_component(upstream));
        }
        let components: Vec<&str> = repo.components().collect();
        let skip = usize::from(
            self.config.strip_library && components.len() == 2 && components[0] == "library",
        );
        parts.extend(components[skip..].iter().map(|c| c.to_string()));
        parts.join(&self.config.separator)
    }
}

/// A registry host as a name component: lowercase, `:` and other
/// characters outside the grammar become `-`.
fn host_component(host: &str) -> String {
    let mapped: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `name` cut to leave room for `-<hash of source>`, within `max` characters.
fn with_hash(name: &str, source: &str, max: usize) -> String {
    let hash = hex::encode(Sha256::digest(source.as_bytes()));
    let keep = max.saturating_sub(HASH_LEN + 1).min(name.len());
    let cut = name[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{cut}-{}", &hash[..HASH_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namer(config: NamingConfig) -> Namer {
        Namer::new(config, "docker.io")
    }

    fn name(n: &Namer, upstream: &str, repo: &str) -> String {
        n.stream_name(upstream, &RepoName::parse(repo).unwrap(), |_| None)
    }

    /// The grammar of one repository component.
    fn valid_component(s: &str) -> bool {
        RepoName::parse(s).is_ok() && !s.contains('/')
    }

    #[test]
    fn the_documented_examples() {
        let n = namer(NamingConfig::default());
        let cases = [
            ("docker.io", "library/centos", "centos"),
            ("docker.io", "bitnami/redis", "bitnami-redis"),
            ("docker.io", "library/a/b", "library-a-b"),
            ("ghcr.io", "org/app", "ghcr.io-org-app"),
            ("localhost:5001", "team/app", "localhost-5001-team-app"),
            ("quay.io", "a", "quay.io-a"),
        ];
        for (upstream, repo, expected) in cases {
            let got = name(&n, upstream, repo);
            assert_eq!(got, expected, "{upstream}/{repo}");
            assert!(valid_component(&got), "{got}");
        }
    }

    #[test]
    fn options_change_the_rule() {
        let n = namer(NamingConfig {
            separator: "_".into(),
            strip_library: false,
            upstream_prefix: UpstreamPrefix::Always,
            max_length: 128,
        });
        assert_eq!(
            name(&n, "docker.io", "library/centos"),
            "docker.io_library_centos"
        );
        let n = namer(NamingConfig {
            upstream_prefix: UpstreamPrefix::Never,
            ..NamingConfig::default()
        });
        assert_eq!(name(&n, "ghcr.io", "org/app"), "org-app");
    }

    #[test]
    fn a_collision_gets_a_stable_hash_suffix() {
        let n = namer(NamingConfig::default());
        let first = RepoName::parse("a-b/c").unwrap();
        let second = RepoName::parse("a/b-c").unwrap();
        let taken = |name: &str| (name == "a-b-c").then(|| "docker.io/a-b/c".to_string());
        assert_eq!(
            n.stream_name("docker.io", &first, taken),
            "a-b-c",
            "the holder keeps its name"
        );
        let other = n.stream_name("docker.io", &second, taken);
        assert!(
            other.starts_with("a-b-c-") && other.len() == "a-b-c-".len() + HASH_LEN,
            "{other}"
        );
        assert_eq!(other, n.stream_name("docker.io", &second, taken), "stable");
        assert!(valid_component(&other));
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        let n = namer(NamingConfig {
            max_length: 40,
            ..NamingConfig::default()
        });
        let long_a = format!("org/{}", "a".repeat(60));
        let long_b = format!("org/{}b", "a".repeat(59));
        let a = name(&n, "docker.io", &long_a);
        let b = name(&n, "docker.io", &long_b);
        assert!(a.len() <= 40 && b.len() <= 40, "{a} {b}");
        assert_ne!(a, b);
        assert!(valid_component(&a) && valid_component(&b));
        // A cut that would end on a separator drops it.
        let dashed = format!("org/{}-{}", "x".repeat(29), "y".repeat(30));
        let cut = name(&n, "docker.io", &dashed);
        assert!(valid_component(&cut), "{cut}");
    }
}
