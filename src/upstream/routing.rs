//! Chooses the upstream for a request: containerd's `ns=` query parameter
//! first, then a registry host as the first path component
//! (`/v2/ghcr.io/org/app/...`), else the default (first configured) upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Upstream;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// All configured upstreams.
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    /// The whole process's offline switch, shared by every upstream.
    offline: Arc<AtomicBool>,
}

/// Why no upstream fits a request.
#[derive(Debug, PartialEq, Eq)]
pub struct NoUpstream(pub String);

impl Upstreams {
    /// Builds every upstream's client.
    pub fn new(configs: &[UpstreamConfig], metrics: Arc<Metrics>) -> Result<Upstreams, String> {
        let mut list = Vec::new();
        let mut by_name = HashMap::new();
        let offline = Arc::new(AtomicBool::new(false));
        // A credential whose user name names no upstream goes to the one
        // upstream that takes client credentials, never to one of several.
        let takers = configs
            .iter()
            .filter(|c| c.takes_client_credentials())
            .count();
        for (i, config) in configs.iter().enumerate() {
            for name in std::iter::once(&config.name).chain(&config.aliases) {
                by_name.insert(name.to_ascii_lowercase(), i);
            }
            let upstream = Upstream::new(config.clone(), Arc::clone(&metrics))?
                .taking_unnamed_credentials(takers == 1)
                .sharing_offline(Arc::clone(&offline))?;
            list.push(Arc::new(upstream));
        }
        if list.is_empty() {
            return Err("no upstream configured".into());
        }
        Ok(Upstreams {
            list,
            by_name,
            offline,
        })
    }

    /// Sets the whole process's offline switch: no request goes to any
    /// upstream while it is on (each upstream's own switch stays as set).
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::Relaxed);
        for upstream in &self.list {
            upstream.note_availability();
        }
        tracing::info!(offline, "offline switch of the whole process");
    }

    /// Whether the whole process is offline.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    /// The upstream used when a request names none.
    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.list[0]
    }

    /// Every upstream, default first.
    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    /// Looks an upstream up by name or alias.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.list[i])
    }

    /// Picks the upstream for the name part of a request path, returning it
    /// and the repository name left once a host prefix is removed.
    pub fn route<'a>(
        &self,
        raw_name: &'a str,
        ns: Option<&str>,
    ) -> Result<(&Arc<Upstream>, &'a str), NoUpstream> {
        if let Some(ns) = ns {
            return self
                .by_name(ns)
                .map(|u| (u, raw_name))
                .ok_or_else(|| NoUpstream(format!("no upstream is configured for ns={ns:.64}")));
        }
        if let Some((first, rest)) = raw_name.split_once('/') {
            if looks_like_host(first) {
                return self.by_name(first).map(|u| (u, rest)).ok_or_else(|| {
                    NoUpstream(format!("no upstream is configured for {first:.64}"))
                });
            }
        }
        Ok((self.default_upstream(), raw_name))
    }
}

/// Docker's rule: a first component with a dot or a port, or `localhost`, is a registry host.
fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    fn upstreams() -> Upstreams {
        let mut hub = UpstreamConfig::new("docker.io", Url::parse("http://127.0.0.1:1").unwrap());
        hub.aliases = vec!["index.docker.io".into()];
        let ghcr = UpstreamConfig::new("ghcr.io", Url::parse("http://127.0.0.1:2").unwrap());
        let local =
            UpstreamConfig::new("localhost:5001", Url::parse("http://127.0.0.1:3").unwrap());
        Upstreams::new(&[hub, ghcr, local], Arc::default()).unwrap()
    }

    #[test]
    fn routes_by_ns_then_prefix_then_default() {
        let u = upstreams();
        let cases = [
            ("library/alpine", None, "docker.io", "library/alpine"),
            ("alpine", Some("ghcr.io"), "ghcr.io", "alpine"),
            ("ghcr.io/org/app", None, "ghcr.io", "org/app"),
            ("GHCR.IO/org/app", None, "ghcr.io", "org/app"),
            ("index.docker.io/library/x", None, "docker.io", "library/x"),
            ("localhost:5001/x", None, "localhost:5001", "x"),
            ("org/app", None, "docker.io", "org/app"),
        ];
        for (raw, ns, upstream, rest) in cases {
            let (chosen, name) = u.route(raw, ns).unwrap();
            assert_eq!((chosen.name(), name), (upstream, rest), "{raw} ns={ns:?}");
        }
    }

    #[test]
    fn unknown_hosts_are_refused_not_sent_to_the_default() {
        let u = upstreams();
        assert!(u.route("quay.io/org/app", None).is_err());
        assert!(u.route("library/alpine", Some("quay.io")).is_err());
    }
}
