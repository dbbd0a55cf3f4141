//! Configuration: a TOML file, embedded defaults for every key, command-line
//! overrides for the common case, then `validate()`.
//!
//! Loading is `parse -> apply overrides -> resolve secrets -> validate`, so
//! `lasti check-config` and `lasti serve` see exactly the same result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::secret::Secret;

mod access;
mod bucket;
mod cluster;
mod events;
mod render;
mod signatures;
mod target;
mod upstream;
mod warm;
pub use access::{AccessConfig, AccessMode, TlsConfig};
pub use bucket::BucketConfig;
pub use cluster::{member_name, ClusterConfig};
pub use events::{EventsConfig, SinkConfig};
pub use render::REDACTED;
pub use signatures::SignatureRuleConfig;
pub use target::{NamingConfig, TargetConfig, UpstreamPrefix, SERVICE_ACCOUNT_TOKEN};
pub use upstream::{CredentialSource, TagRule, UpstreamConfig};
pub use warm::WarmConfig;

/// Where lasti listens when nothing else is said: the port docker expects of a registry.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
/// The data directory when nothing else is said, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// The name clients and containerd's `ns=` use for Docker Hub.
pub const DOCKER_HUB_NAME: &str = "docker.io";
/// Where the admin listener (health, metrics, the cache listing, back-fill
/// and warm) listens: beside the API port, and on loopback, since what it
/// shows is for the operator (the deployment sets `0.0.0.0:9090` for the
/// pod, behind its NetworkPolicy; calls that change state need the admin
/// token wherever it listens). Not 9090 on a
/// workstation, Prometheus's own port (and 9091-9100 its pushgateway,
/// alertmanager and exporters); not 5001, which kind's local registry and
/// distribution's debug listener use.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:5002";
/// The shipped configuration file, embedded: its upstreams are the
/// built-in ones, so what `config/lasti.toml` shows is what lasti does
/// with no file at all.
pub const SHIPPED_CONFIG: &str = include_str!("../../config/lasti.toml");

/// The upstreams of [`SHIPPED_CONFIG`] (Docker Hub with its aliases and tag
/// rules, ghcr.io, quay.io, registry.k8s.io): the default when a
/// configuration names none.
pub fn default_upstreams() -> Vec<UpstreamConfig> {
    /// Only the upstream tables; the rest of the file is read elsewhere.
    #[derive(Deserialize)]
    struct Shipped {
        upstream: Vec<UpstreamConfig>,
    }
    static SHIPPED: std::sync::OnceLock<Vec<UpstreamConfig>> = std::sync::OnceLock::new();
    SHIPPED
        .get_or_init(|| {
            toml::from_str::<Shipped>(SHIPPED_CONFIG)
                .expect("the shipped config/lasti.toml parses (a unit test checks it)")
                .upstream
        })
        .clone()
}

/// The whole configuration of one lasti process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the registry API listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/admin/...`); kept off the public API.
    pub admin_listen: Option<SocketAddr>,
    /// File holding the bearer token that admin calls which change state
    /// (warm, purge) must carry; a mounted Secret, watched for
    /// rotation. Unset or missing: those calls are refused.
    pub admin_token_file: Option<PathBuf>,
    /// Offline, the whole process: no request goes to any upstream (the
    /// back-fill project is not an upstream). Switchable at run time.
    pub offline: bool,
    /// After SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Root of the cache: blobs, temporary files and the metadata store.
    pub data_dir: PathBuf,
    /// Logging format and filter.
    pub log: LogConfig,
    /// Disk and memory limits of the cache.
    pub cache: CacheConfig,
    /// Upstream registries, in order; the first is the default.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// The project that pulled images are back-filled into.
    pub target: TargetConfig,
    /// Who may pull, and request limits.
    pub access: AccessConfig,
    /// TLS for clients; plain HTTP when unset (behind an edge-TLS route).
    pub tls: TlsConfig,
    /// Images pulled into the cache without being asked, on a schedule.
    pub warm: WarmConfig,
    /// The object store shared by replicas; off unless configured.
    pub bucket: BucketConfig,
    /// The other replicas, for one upstream fetch per blob; off unless configured.
    pub cluster: ClusterConfig,
    /// Audit events posted to HTTP receivers; off unless a sink is configured.
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            admin_listen: Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default address")),
            admin_token_file: None,
            offline: false,
            shutdown_grace: Duration::from_secs(30),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log: LogConfig::default(),
            cache: CacheConfig::default(),
            upstreams: default_upstreams(),
            target: TargetConfig::default(),
            access: AccessConfig::default(),
            tls: TlsConfig::default(),
            warm: WarmConfig::default(),
            bucket: BucketConfig::default(),
            cluster: ClusterConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json` (one object per line, for log collectors).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `lasti=debug,info`; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            filter: "info".to_string(),
        }
    }
}

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// JSON objects for a log collector.
    Json,
}

/// Limits of the on-disk and in-memory cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Disk quota for cached blobs and manifests, in the space their files
    /// take (allocated blocks); least recently used blobs are evicted past it.
    #[serde(serialize_with = "render::size")]
    pub max_size: ByteSize,
    /// Memory kept for hot manifests, served without touching the disk.
    #[serde(serialize_with = "render::size")]
    pub manifest_memory: ByteSize,
    /// Largest manifest accepted from an upstream; larger ones are refused, not stored.
    #[serde(serialize_with = "render::size")]
    pub max_manifest_size: ByteSize,
    /// Largest blob accepted from an upstream: one announced larger is
    /// refused, and one without a length is cut off (an endless body).
    #[serde(serialize_with = "render::size")]
    pub max_blob_size: ByteSize,
    /// Write blobs of 16 MiB and more around the page cache (`O_DIRECT`):
    /// on a miss, the page-cache write of a large blob costs more CPU than
    /// its hash. Off: every fill goes through the page cache.
    pub direct_writes: bool,
    /// Read what of a blob of 16 MiB and more is not in the page cache
    /// around it (`O_DIRECT`) when one client alone reads the blob from its
    /// file (a hit, or a client behind a fill written around the page
    /// cache): reading it into the page cache first runs at a fraction of
    /// the disk's rate. Off: every read of a file goes through the page
    /// cache, which then keeps large blobs for later hits as far as memory
    /// allows.
    pub direct_reads: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: ByteSize::gib(50),
            manifest_memory: ByteSize::mib(64),
            max_manifest_size: ByteSize::mib(4),
            max_blob_size: ByteSize::gib(64),
            direct_writes: true,
            direct_reads: true,
        }
    }
}

/// Values given on the command line; each replaces the file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--upstream NAME=URL`, in order; the first becomes the default upstream.
    pub upstreams: Vec<(String, Url)>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--admin-token-file`.
    pub admin_token_file: Option<PathBuf>,
    /// `--target`.
    pub target_url: Option<Url>,
    /// `--target-project`.
    pub target_project: Option<String>,
    /// `--target-token-file`.
    pub target_token_file: Option<PathBuf>,
    /// `--target-username`.
    pub target_username: Option<String>,
}

/// Why a configuration was refused. A message names the file or key; the
/// cause, if any, is its `source`, so a printed chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value breaks a rule.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads the file (if any), applies overrides, resolves secrets and validates.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file; keys left out take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text; an empty text is the embedded default.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies command-line overrides. An `--upstream` whose name the file
    /// already has only replaces that upstream's URL, keeping its other keys.
    pub fn apply(&mut self, overrides: Overrides) {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(dir) = overrides.data_dir {
            self.data_dir = dir;
        }
        if let Some(format) = overrides.log_format {
            self.log.format = format;
        }
        if let Some(addr) = overrides.admin_listen {
            self.admin_listen = Some(addr);
        }
        if let Some(file) = overrides.admin_token_file {
            self.admin_token_file = Some(file);
        }
        let target = &mut self.target;
        target.url = overrides.target_url.or(target.url.take());
        target.project = overrides.target_project.or(target.project.take());
        if let Some(file) = overrides.target_token_file {
            target.token_file = Some(file);
            target.token = None;
            target.token_env = None;
        }
        if let Some(user) = overrides.target_username {
            target.username = user;
        }
        if overrides.upstreams.is_empty() {
            return;
        }
        let mut rest = std::mem::take(&mut self.upstreams);
        for (name, url) in overrides.upstreams {
            let upstream = match rest.iter().position(|u| u.name == name) {
                Some(i) => UpstreamConfig {
                    url,
                    ..rest.remove(i)
                },
                None => UpstreamConfig::new(&name, url),
            };
            self.upstreams.push(upstream);
        }
        self.upstreams.extend(rest);
    }

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        self.target.resolve_token_source()?;
        self.bucket.resolve_secrets()?;
        self.cluster.resolve_secrets()?;
        for upstream in &mut self.upstreams {
            if let Some(var) = &upstream.password_env {
                let value = std::env::var(var).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "upstream {}: environment variable {var} is not set",
                        upstream.name
                    ))
                })?;
                upstream.password = Some(Secret::new(value));
            }
            if let Some(file) = &upstream.password_file {
                let value = std::fs::read_to_string(file).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "upstream {}: cannot read password_file {}: {e}",
                        upstream.name,
                        file.display()
                    ))
                })?;
                upstream.password = Some(Secret::new(value.trim_end().to_string()));
            }
        }
        Ok(())
    }

    /// Whether an upstream takes clients' own credentials
    /// (`credentials = "client"`): then lasti issues client tokens.
    pub fn takes_client_credentials(&self) -> bool {
        self.upstreams
            .iter()
            .any(UpstreamConfig::takes_client_credentials)
    }

    /// Checks every rule that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.upstreams.is_empty() {
            return invalid("at least one [[upstream]] is required".into());
        }
        if self.cache.max_manifest_size.as_u64() == 0 {
            return invalid("cache.max_manifest_size must be above zero".into());
        }
        if crate::telemetry::filter::LogFilter::parse(&self.log.filter).is_err() {
            return invalid(format!(
                "log.filter {:?} is not a valid filter",
                self.log.filter
            ));
        }
        self.target.validate()?;
        self.access.validate()?;
        self.tls.validate()?;
        self.warm.validate()?;
        self.bucket.validate()?;
        self.cluster.validate()?;
        self.events.validate()?;
        if self.takes_client_credentials() && self.access.mode == AccessMode::Authenticated {
            return invalid(
                "access.mode = \"authenticated\" and an upstream with credentials = \"client\" \
                 both claim the client's Authorization header: with client credentials the \
                 upstream decides who may pull (see docs/security.md)"
                    .into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for upstream in &self.upstreams {
            upstream.validate()?;
            for name in std::iter::once(&upstream.name).chain(&upstream.aliases) {
                if !names.insert(name.as_str()) {
                    return invalid(format!("upstream name {name} is used twice"));
                }
            }
        }
        Ok(())
    }
}

/// Parses `NAME=URL` as given to `--upstream`.
pub fn parse_upstream_flag(value: &str) -> Result<(String, Url), String> {
    let (name, url) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=URL"))?;
    let url = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    Ok((name.to_string(), url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.upstreams, default_upstreams());
        assert_eq!(config.upstreams[0].name, "docker.io");
        assert_eq!(
            config.upstreams[0].url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert!(config.upstreams[0].uses_library_prefix());
        config.validate().unwrap();
    }

    #[test]
    fn the_admin_port_stays_clear_of_prometheus_and_the_api() {
        let config = Config::default();
        assert!(
            config.admin_listen.unwrap().ip().is_loopback(),
            "the admin listener (listings, metrics) is not open to the network by default"
        );
        let admin = config.admin_listen.unwrap().port();
        assert_ne!(admin, config.listen.port());
        assert!(!(9090..=9100).contains(&admin), "{admin}");
        let example = Config::from_toml(include_str!("../../config/lasti.toml")).unwrap();
        assert_eq!(
            example.admin_listen, config.admin_listen,
            "the example shows the default"
        );
    }

    #[test]
    fn client_credentials_take_no_configured_ones_and_no_authenticated_front_door() {
        let check = |extra: &str| {
            let text = format!(
                "[[upstream]]\nname = \"docker.io\"\nurl = \"https://r.example\"\n\
                 credentials = \"client\"\n{extra}"
            );
            Config::from_toml(&text)
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        assert!(check("").is_ok());
        let with_user = check("username = \"me\"\n").unwrap_err();
        assert!(with_user.contains("takes no username"), "{with_user}");
        let authenticated = "[access]\nmode = \"authenticated\"\ntokens_file = \"/dev/null\"\n";
        let both = check(authenticated).unwrap_err();
        assert!(both.contains("both claim"), "{both}");
        assert!(check("client_verdict_ttl = \"0s\"\n").is_err());
    }

    #[test]
    fn the_built_in_defaults_are_the_shipped_files() {
        let shipped = Config::from_toml(SHIPPED_CONFIG).unwrap();
        assert_eq!(
            shipped,
            Config::default(),
            "config/lasti.toml shows the defaults"
        );
        let names: Vec<_> = Config::default()
            .upstreams
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(
            names,
            ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
        );
        let hub = &Config::default().upstreams[0];
        assert!(hub.aliases.contains(&"index.docker.io".to_string()));
        assert_eq!(hub.tag_rules.len(), 2);
    }

    #[test]
    fn the_example_config_is_valid() {
        let config = Config::from_toml(include_str!("../../config/lasti.toml")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.upstreams[0].name, "docker.io");
        assert_eq!(config.upstreams[0].tag_rules.len(), 2);
    }

    #[test]
    fn urls_must_name_url_once_each() {
        let with = |urls: &str| {
            Config::from_toml(&format!(
                "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
                 urls = [{urls}]\nmax_bytes_per_second = \"50 MiB\"\nmax_fetches = 8\n"
            ))
            .unwrap()
            .validate()
        };
        with(r#""https://mirror.gcr.io", "https://registry-1.docker.io""#).unwrap();
        with("").unwrap();
        let err = with(r#""https://mirror.gcr.io""#).unwrap_err().to_string();
        assert!(err.contains("url must be one of urls"), "{err}");
        let twice = r#""https://registry-1.docker.io", "https://registry-1.docker.io""#;
        assert!(with(twice).unwrap_err().to_string().contains("twice"));
        let ftp = r#""ftp://mirror", "https://registry-1.docker.io""#;
        assert!(with(ftp).is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("lisen = \"0.0.0.0:1\"").is_err());
        assert!(Config::from_toml("[cache]\nmax = \"1GB\"").is_err());
    }

    #[test]
    fn human_units_parse() {
        let config = Config::from_toml(
            r#"
            [cache]
            max_size = "2 GiB"
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            tag_ttl = "1h 30m"
            [[upstream.tag_rule]]
            tag = "latest"
            ttl = "2m"
            "#,
        )
        .unwrap();
        assert_eq!(config.cache.max_size, ByteSize::gib(2));
        let up = &config.upstreams[0];
        assert_eq!(up.tag_ttl, Duration::from_secs(5400));
        assert_eq!(up.tag_rules[0].repository, "*");
        assert_eq!(up.tag_rules[0].ttl, Duration::from_secs(120));
        assert!(!up.uses_library_prefix());
        config.validate().unwrap();
    }

    #[test]
    fn upstream_flags_reorder_and_keep_file_settings() {
        let mut config = Config::from_toml(
            r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            username = "me"
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            "#,
        )
        .unwrap();
        config.apply(Overrides {
            upstreams: vec![
                parse_upstream_flag("quay.io=http://127.0.0.1:9").unwrap(),
                parse_upstream_flag("docker.io=http://127.0.0.1:5001").unwrap(),
            ],
            ..Overrides::default()
        });
        let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["quay.io", "docker.io", "ghcr.io"]);
        assert_eq!(config.upstreams[1].url.as_str(), "http://127.0.0.1:5001/");
        assert_eq!(config.upstreams[1].username.as_deref(), Some("me"));
    }

    #[test]
    fn validation_rules() {
        let bad = [
            "upstream = []",
            "[[upstream]]\nname = \"a b\"\nurl = \"http://x\"",
            "[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"",
            "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\npassword = \"p\"",
            "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\n[[upstream]]\nname = \"x\"\nurl = \"http://y\"",
            "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\nconnect_timeout = \"0s\"",
            "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\n[[upstream.tag_rule]]\ntag = \"[\"\nttl = \"1s\"",
            "[log]\nfilter = \"=\"",
            "[access]\nkeepalive_timeout = \"0s\"",
            "[access]\nsend_timeout = \"0s\"",
            "[access]\nhttp2_ping_timeout = \"0s\"",
        ];
        for text in bad {
            let config = Config::from_toml(text).unwrap();
            assert!(config.validate().is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn password_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text = format!(
            "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\nusername = \"u\"\npassword_file = {:?}",
            file.display().to_string()
        );
        let mut config = Config::from_toml(&text).unwrap();
        config.resolve_secrets().unwrap();
        assert_eq!(
            config.upstreams[0].password.as_ref().unwrap().expose(),
            "s3cret"
        );
        assert!(!format!("{config:?}").contains("s3cret"));

        let text = "[[upstream]]\nname = \"x\"\nurl = \"http://x\"\nusername = \"u\"\npassword_env = \"LASTI_TEST_SURELY_UNSET\"";
        let mut config = Config::from_toml(text).unwrap();
        assert!(config.resolve_secrets().is_err());
    }
}
