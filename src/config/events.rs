//! `[events]`: audit events (who pulled what, what was refused, what
//! back-fill and the operator did) as CloudEvents, posted in batches to one
//! or more HTTP receivers. Off unless a `[[events.sink]]` is configured.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::ConfigError;

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// The CloudEvents `source` of every event: which lasti said it.
    /// Unset: `/lasti/` and the host name (the pod's name in a pod).
    pub source: Option<String>,
    /// Events held per sink while it is slow or down; past it, new events
    /// are dropped and counted (`lasti_events_dropped_total`), never
    /// waited for.
    pub queue: usize,
    /// Events sent in one POST at most.
    pub batch: usize,
    /// Time allowed for one POST, connection included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest wait between two tries of a batch a sink did not take
    /// (the wait doubles from one second up to it).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The receivers; each gets every event, through a queue of its own.
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            source: None,
            queue: 10_000,
            batch: 100,
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            sinks: Vec::new(),
        }
    }
}

/// `[[events.sink]]`: one receiver.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Where batches are posted (`http` or `https`).
    pub url: Url,
    /// A file holding a token sent as `Authorization: Bearer`; a mounted
    /// Secret, watched for rotation.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An extra CA (PEM) to trust for this receiver's TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl EventsConfig {
    /// Sizes above zero; sink URLs that are HTTP(S), carry no credentials
    /// (use `token_file`) and are not listed twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.queue == 0 || self.batch == 0 {
            return invalid("events.queue and events.batch must be above zero".into());
        }
        if self.timeout.is_zero() || self.max_backoff < Duration::from_secs(1) {
            return invalid(
                "events.timeout must be above zero, events.max_backoff at least 1s".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for sink in &self.sinks {
            let url = &sink.url;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return invalid(format!("events.sink url {url} is not an http(s) URL"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return invalid(format!(
                    "events.sink url {} carries credentials: put a token in token_file instead",
                    url.host_str().unwrap_or_default()
                ));
            }
            if !seen.insert(url.as_str()) {
                return invalid(format!("events.sink url {url} is listed twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_sink(url: &str) -> EventsConfig {
        EventsConfig {
            sinks: vec![SinkConfig {
                url: url.parse().unwrap(),
                token_file: None,
                ca_file: None,
            }],
            ..EventsConfig::default()
        }
    }

    #[test]
    fn sinks_must_be_plain_http_urls_without_credentials() {
        EventsConfig::default().validate().unwrap();
        with_sink("http://127.0.0.1:8080/events")
            .validate()
            .unwrap();
        with_sink("https://audit.example/lasti").validate().unwrap();
        let refused = with_sink("https://user:secret@audit.example/")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(refused.contains("token_file"), "{refused}");
        assert!(!refused.contains("secret"), "the password is not repeated");
        assert!(with_sink("ftp://audit.example/").validate().is_err());
        let mut twice = with_sink("http://127.0.0.1:8080/");
        twice.sinks.push(twice.sinks[0].clone());
        assert!(twice.validate().is_err());
        let empty_queue = EventsConfig {
            queue: 0,
            ..with_sink("http://127.0.0.1:8080/")
        };
        assert!(empty_queue.validate().is_err());
    }
}
