//! Audit events: who pulled which manifest from which tier, what was
//! refused, what back-fill finished or gave up on, and what the operator
//! purged or switched offline, as CloudEvents 1.0 in structured JSON.
//!
//! Each event is serialised once, where it happens, and handed to every
//! sink's bounded queue without waiting: a full queue drops the event and
//! counts it, so a slow or dead receiver never slows a pull. A task per
//! sink posts what has queued up as one batch
//! (`application/cloudevents-batch+json`), in order, and tries a batch
//! again with a doubling back-off until the sink takes it. Delivery is at
//! least once while the process lives (a batch whose answer was lost is
//! sent again; receivers drop repeats by `id`); the queues are in memory,
//! so what is still queued when the process ends is lost and counted.

mod data;
mod sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::EventsConfig;
use crate::metrics::Metrics;
pub use data::{BackfillOutcome, Client, OfflineSwitched, Pulled, Purged, Refused};
use sink::Sink;

/// What an event says happened: its CloudEvents `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client was served a manifest (`GET` or `HEAD`).
    ManifestPulled,
    /// A client's manifest or blob request was refused: a credential not
    /// taken, or a policy (allow/deny lists, signatures, the upstream's
    /// own refusal of the client).
    PullRefused,
    /// An image was pushed into the back-fill project.
    BackfillDone,
    /// Back-fill gave up on an image.
    BackfillFailed,
    /// The operator purged an image, a manifest or a tag.
    Purged,
    /// The operator switched an upstream (or every one) offline or online.
    OfflineSwitched,
    /// A call that changes state reached the admin port without the token.
    AdminRefused,
}

impl Kind {
    /// The CloudEvents `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ManifestPulled => "lasti.manifest.pulled",
            Kind::PullRefused => "lasti.pull.refused",
            Kind::BackfillDone => "lasti.backfill.done",
            Kind::BackfillFailed => "lasti.backfill.failed",
            Kind::Purged => "lasti.cache.purged",
            Kind::OfflineSwitched => "lasti.upstream.offline",
            Kind::AdminRefused => "lasti.admin.refused",
        }
    }
}

/// The CloudEvents 1.0 envelope, in structured mode.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    data: &'a T,
}

/// The event stream of one process, and its sinks.
pub struct Events {
    source: String,
    /// Drawn at start: with the sequence number, an `id` no other process
    /// of the same `source` uses.
    run: String,
    next: AtomicU64,
    sinks: Vec<Sink>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("source", &self.source)
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Starts a task per configured sink; `None` when there is none. Reads
    /// the platform's certificates and CA files: call it on the blocking
    /// pool, inside the runtime.
    pub fn start(config: &EventsConfig, metrics: &Metrics) -> Result<Option<Arc<Events>>, String> {
        if config.sinks.is_empty() {
            return Ok(None);
        }
        let sinks = config
            .sinks
            .iter()
            .map(|sink| Sink::start(sink, config, metrics))
            .collect::<Result<Vec<_>, String>>()?;
        let run: [u8; 6] = rand::random();
        Ok(Some(Arc::new(Events {
            source: config.source.clone().unwrap_or_else(default_source),
            run: hex::encode(run),
            next: AtomicU64::new(1),
            sinks,
        })))
    }

    /// Records an event: serialised here, queued for every sink, never
    /// waited for.
    pub fn emit<T: Serialize>(&self, kind: Kind, subject: Option<&str>, data: &T) {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            specversion: "1.0",
            id: format!("{}-{sequence}", self.run),
            source: &self.source,
            kind: kind.as_str(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            datacontenttype: "application/json",
            subject,
            data,
        };
        let text: Arc<str> = match serde_json::to_string(&envelope) {
            Ok(text) => text.into(),
            Err(e) => {
                tracing::error!(error = %e, kind = kind.as_str(), "cannot serialise an event");
                return;
            }
        };
        for sink in &self.sinks {
            sink.queue(Arc::clone(&text));
        }
    }

    /// Waits until every sink has taken what is queued, or `within` has
    /// passed; what is left then is counted as dropped. For shutdown.
    pub async fn settle(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for sink in &self.sinks {
            sink.settle(deadline).await;
        }
    }
}

/// `/lasti/<host name>`: the pod's name in a pod.
fn default_source() -> String {
    let host = rustix::system::uname();
    let host = host.nodename().to_string_lossy();
    if host.is_empty() {
        "/lasti".to_string()
    } else {
        format!("/lasti/{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_a_cloudevent_in_structured_mode() {
        let data = serde_json::json!({ "repository": "library/alpine" });
        let envelope = Envelope {
            specversion: "1.0",
            id: "00ff-7".into(),
            source: "/lasti/pod-1",
            kind: Kind::ManifestPulled.as_str(),
            time: humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH).to_string(),
            datacontenttype: "application/json",
            subject: Some("docker.io/library/alpine:3"),
            data: &data,
        };
        let json: serde_json::Value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "lasti.manifest.pulled");
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["subject"], "docker.io/library/alpine:3");
        assert_eq!(json["data"]["repository"], "library/alpine");
        let none = Envelope {
            subject: None,
            ..envelope
        };
        let json = serde_json::to_value(&none).unwrap();
        assert!(json.get("subject").is_none(), "absent, not null");
    }

    #[test]
    fn the_default_source_names_the_host() {
        let source = default_source();
        assert!(source.starts_with("/lasti"), "{source}");
    }
}
