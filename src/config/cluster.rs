//! `[cluster]`: replicas that know each other, so that a blob is fetched
//! from the upstream by one of them (its owner) and streamed to the rest.
//! Off unless `listen` is set: one pod needs none of it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The peer listener: where the other replicas fetch blobs this one
    /// owns. Plain HTTP, blob and manifest GETs only, with the shared secret; keep it inside
    /// the cluster (the HA overlay's NetworkPolicy admits only lasti pods).
    pub listen: Option<SocketAddr>,
    /// The replicas' peer addresses (`host:port`), this one included.
    pub peers: Vec<String>,
    /// A name whose addresses are the replicas (`host:port`; a headless
    /// Service), looked up again every `refresh`. Instead of `peers`.
    pub peers_dns: Option<String>,
    /// How the others reach this replica (`host:port`). Without it:
    /// `$POD_IP` and the port of `listen`, else `listen` itself.
    pub advertise: Option<String>,
    /// How often `peers_dns` is looked up.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// A file holding a secret the replicas share; peer requests must carry
    /// it. Required with `listen`.
    pub secret_file: Option<PathBuf>,
    /// Time allowed to connect to a peer.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for a peer's response headers (the owner answers once
    /// its own fetch has started).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The shared secret, read from `secret_file` at start.
    #[serde(skip)]
    pub secret: Option<Secret>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: None,
            peers: Vec::new(),
            peers_dns: None,
            advertise: None,
            refresh: Duration::from_secs(5),
            secret_file: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            secret: None,
        }
    }
}

impl ClusterConfig {
    /// Whether this replica takes part in a cluster.
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    /// Reads the shared secret from its file.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.secret_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "cluster: secret_file {} is empty",
                path.display()
            )));
        }
        self.secret = Some(Secret::new(text.to_string()));
        Ok(())
    }

    /// The rules the types cannot state.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(format!("cluster: {msg}")));
        let listed = !self.peers.is_empty() || self.peers_dns.is_some();
        if !self.enabled() {
            return match listed || self.advertise.is_some() {
                true => fail("listen is needed to take part in a cluster".into()),
                false => Ok(()),
            };
        }
        if !listed {
            return fail("name the replicas with peers or peers_dns".into());
        }
        if self.secret_file.is_none() && self.secret.is_none() {
            return fail(
                "secret_file is needed with listen: the peer listener serves blobs \
                 and fetches with lasti's upstream credentials, so only replicas \
                 holding the shared secret may ask it"
                    .into(),
            );
        }
        if !self.peers.is_empty() && self.peers_dns.is_some() {
            return fail("peers and peers_dns are exclusive".into());
        }
        for address in self
            .peers
            .iter()
            .chain(&self.peers_dns)
            .chain(&self.advertise)
        {
            if !has_port(address) {
                return fail(format!("{address:?} is not host:port"));
            }
        }
        if self.refresh.is_zero() || self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return fail("refresh, timeout and connect_timeout must be above zero".into());
        }
        Ok(())
    }

    /// This replica's member name: `advertise`, else `pod_ip` with the
    /// listener's port, else the listener's address when it is a specific one.
    pub fn advertised(&self, pod_ip: Option<&str>) -> Result<String, String> {
        if let Some(address) = &self.advertise {
            return Ok(member_name(address));
        }
        let listen = self.listen.ok_or("cluster.listen is not set")?;
        if let Some(ip) = pod_ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok()) {
            return Ok(SocketAddr::new(ip, listen.port()).to_string());
        }
        match listen.ip().is_unspecified() {
            false => Ok(listen.to_string()),
            true => Err(format!(
                "cluster: listen is {listen}, which the others cannot dial: \
                 set cluster.advertise or POD_IP"
            )),
        }
    }
}

/// A member address in the one spelling every replica uses: socket
/// addresses as Rust prints them (`[fd00::1]:5001`), names lower-cased.
pub fn member_name(address: &str) -> String {
    match address.parse::<SocketAddr>() {
        Ok(addr) => addr.to_string(),
        Err(_) => address.trim().to_ascii_lowercase(),
    }
}

fn has_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(listen: &str) -> ClusterConfig {
        ClusterConfig {
            listen: Some(listen.parse().unwrap()),
            peers: vec!["10.0.0.1:5001".into(), "10.0.0.2:5001".into()],
            secret_file: Some("/run/secrets/lasti-cluster".into()),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_needs_nothing() {
        let mut config = ClusterConfig::default();
        assert!(!config.enabled());
        config.validate().unwrap();
        config.resolve_secrets().unwrap();
    }

    #[test]
    fn peers_without_a_listener_are_refused() {
        let config = ClusterConfig {
            peers: vec!["10.0.0.1:5001".into()],
            ..ClusterConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_listener_needs_one_way_to_find_the_replicas() {
        let mut config = on("0.0.0.0:5001");
        config.validate().unwrap();
        config.peers_dns = Some("lasti-peers:5001".into());
        assert!(config.validate().is_err(), "both");
        config.peers.clear();
        config.validate().unwrap();
        config.peers_dns = None;
        assert!(config.validate().is_err(), "neither");
        config.peers = vec!["10.0.0.1".into()];
        assert!(config.validate().is_err(), "no port");
    }

    #[test]
    fn a_listener_needs_the_shared_secret() {
        let mut config = on("0.0.0.0:5001");
        config.secret_file = None;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("secret_file"), "{err}");
        config.secret = Some(Secret::new("sh4red".into()));
        config.validate().unwrap();
    }

    #[test]
    fn this_replica_is_named_by_advertise_then_pod_ip_then_listen() {
        let mut config = on("0.0.0.0:5001");
        assert_eq!(
            config.advertised(Some("10.1.2.3")).unwrap(),
            "10.1.2.3:5001"
        );
        assert_eq!(
            config.advertised(Some("fd00::7")).unwrap(),
            "[fd00::7]:5001"
        );
        assert!(
            config.advertised(None).is_err(),
            "0.0.0.0 cannot be dialled"
        );
        config.advertise = Some("Lasti-0.Peers:5001".into());
        assert_eq!(
            config.advertised(Some("10.1.2.3")).unwrap(),
            "lasti-0.peers:5001"
        );
        let config = on("127.0.0.1:6001");
        assert_eq!(config.advertised(None).unwrap(), "127.0.0.1:6001");
    }

    #[test]
    fn the_secret_is_read_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "sh4red\n").unwrap();
        let mut config = on("127.0.0.1:6001");
        config.secret_file = Some(dir.path().join("secret"));
        config.resolve_secrets().unwrap();
        assert_eq!(config.secret.as_ref().unwrap().expose(), "sh4red");
        assert!(!format!("{config:?}").contains("sh4red"));
    }
}
