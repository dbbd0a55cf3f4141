//! One receiver of events: a bounded queue in front of a task that posts
//! what has queued up as one batch, in order, and tries a batch again
//! until the receiver takes it.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};
use url::Url;

use crate::config::{EventsConfig, SinkConfig, UpstreamConfig};
use crate::metrics::{Metrics, SinkSeries};
use crate::secret::{SecretFile, PASSWORD_FILE_POLL};
use crate::upstream::client::{self, HttpClient};

/// The content type of a batch, in the CloudEvents HTTP binding.
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// The first wait after a batch the receiver did not take.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The most of a receiver's answer read (and dropped).
const MAX_ANSWER: usize = 64 * 1024;

/// The queue of one sink; the task behind it ends when this is dropped.
pub struct Sink {
    queue: mpsc::Sender<Arc<str>>,
    /// Events queued or in the batch being posted.
    pending: Arc<Pending>,
    series: SinkSeries,
}

/// What a sink still has to deliver, and a wake-up when that falls.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    fell: Notify,
}

/// What the task needs to post.
struct Poster {
    url: Url,
    label: String,
    client: HttpClient,
    token: Option<SecretFile>,
    timeout: Duration,
}

/// How a batch fared.
enum Delivery {
    /// Taken (a 2xx).
    Taken,
    /// Refused for its content (400, 413, 415, 422): sending it again
    /// would be refused again. A 401 or 403 is tried again: a token
    /// being rotated should not cost the events.
    Rejected(StatusCode),
    /// Not taken this time; `Some` is the receiver's `Retry-After`.
    Failed(String, Option<Duration>),
}

impl Sink {
    /// Builds the sink's client and starts its task.
    pub fn start(
        config: &SinkConfig,
        events: &EventsConfig,
        metrics: &Metrics,
    ) -> Result<Sink, String> {
        let mut client_config = UpstreamConfig::new("events", config.url.clone());
        client_config.ca_file = config.ca_file.clone();
        let client = client::build(&client_config)
            .map_err(|e| format!("events.sink {}: {e}", config.url))?;
        let label = label(&config.url);
        let series = metrics.event_sink(&label);
        let (queue, receiver) = mpsc::channel(events.queue);
        let pending = Arc::new(Pending::default());
        let poster = Poster {
            url: config.url.clone(),
            label,
            client,
            token: config.token_file.as_deref().map(watched),
            timeout: events.timeout,
        };
        tokio::spawn(run(
            receiver,
            poster,
            series.clone(),
            Arc::clone(&pending),
            events.batch,
            events.max_backoff,
        ));
        Ok(Sink {
            queue,
            pending,
            series,
        })
    }

    /// Queues one event, or drops and counts it when the queue is full.
    pub fn queue(&self, event: Arc<str>) {
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        match self.queue.try_send(event) {
            Ok(()) => self.series.queued.inc(),
            Err(_) => {
                self.pending.count.fetch_sub(1, Ordering::AcqRel);
                self.series.dropped_full.inc();
            }
        }
    }

    /// Waits until nothing is pending or `deadline`; what is left then is
    /// counted as dropped (the process is ending).
    pub async fn settle(&self, deadline: tokio::time::Instant) {
        loop {
            let fell = self.pending.fell.notified();
            let left = self.pending.count.load(Ordering::Acquire);
            if left == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, fell).await.is_err() {
                tracing::warn!(events = left, "events not delivered before exit");
                self.series.dropped_shutdown.inc_by(left as u64);
                return;
            }
        }
    }
}

fn watched(path: &Path) -> SecretFile {
    SecretFile::watch(path.to_path_buf(), PASSWORD_FILE_POLL)
}

/// The sink's name in metrics and logs: its URL without query.
fn label(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Takes what has queued up (up to `batch`), posts it, and starts again;
/// ends when the queue's sender is dropped and the queue is empty.
async fn run(
    mut receiver: mpsc::Receiver<Arc<str>>,
    poster: Poster,
    series: SinkSeries,
    pending: Arc<Pending>,
    batch: usize,
    max_backoff: Duration,
) {
    let mut events = Vec::with_capacity(batch);
    while receiver.recv_many(&mut events, batch).await > 0 {
        let count = events.len();
        let body = join(&events);
        let mut wait = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            match poster.post(body.clone()).await {
                Delivery::Taken => {
                    series.sent.inc_by(count as u64);
                    if failures > 0 {
                        tracing::info!(
                            sink = poster.label,
                            failures,
                            "event sink takes events again"
                        );
                    }
                    break;
                }
                Delivery::Rejected(status) => {
                    tracing::error!(
                        sink = poster.label,
                        status = status.as_u16(),
                        events = count,
                        "event sink refused a batch; its events are dropped"
                    );
                    series.dropped_rejected.inc_by(count as u64);
                    break;
                }
                Delivery::Failed(why, retry_after) => {
                    series.failed_posts.inc();
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            sink = poster.label,
                            error = why,
                            queued = receiver.len(),
                            "event sink did not take a batch; trying again with back-off"
                        );
                    }
                    let pause = retry_after.unwrap_or(wait).min(max_backoff);
                    tokio::time::sleep(pause).await;
                    wait = (wait * 2).min(max_backoff);
                }
            }
        }
        events.clear();
        series.queued.sub(count as i64);
        pending.count.fetch_sub(count, Ordering::AcqRel);
        pending.fell.notify_waiters();
    }
}

/// A JSON array of events already serialised.
fn join(events: &[Arc<str>]) -> Bytes {
    let length = events.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
    let mut body = Vec::with_capacity(length);
    body.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event.as_bytes());
    }
    body.push(b']');
    Bytes::from(body)
}

impl Poster {
    async fn post(&self, body: Bytes) -> Delivery {
        let mut request = Request::post(self.url.as_str())
            .header(header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .header(header::CONTENT_LENGTH, body.len());
        if let Some(token) = self.token.as_ref().and_then(SecretFile::current) {
            match HeaderValue::from_str(&format!("Bearer {}", token.expose().trim())) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request = request.header(header::AUTHORIZATION, value);
                }
                Err(_) => {
                    return Delivery::Failed("the token file holds no usable token".into(), None)
                }
            }
        }
        let request = match request.body(crate::body::full(body)) {
            Ok(request) => request,
            Err(e) => return Delivery::Failed(e.to_string(), None),
        };
        let answered = tokio::time::timeout(self.timeout, async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            // Read (a little of) the answer, so the connection is reused.
            let _ = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(parts)
        })
        .await;
        let parts = match answered {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => return Delivery::Failed(e.to_string(), None),
            Err(_) => return Delivery::Failed("timed out".into(), None),
        };
        let status = parts.status;
        match status {
            s if s.is_success() => Delivery::Taken,
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY => Delivery::Rejected(status),
            _ => Delivery::Failed(format!("status {status}"), retry_after(&parts.headers)),
        }
    }
}

/// A `Retry-After` in seconds.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_json_array_of_the_events_in_order() {
        let events: Vec<Arc<str>> = vec![r#"{"id":"1"}"#.into(), r#"{"id":"2"}"#.into()];
        let body = join(&events);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["id"], "1");
        assert_eq!(parsed[1]["id"], "2");
        assert_eq!(&join(&events[..1])[..], br#"[{"id":"1"}]"#);
    }

    #[test]
    fn the_label_drops_the_query() {
        let url: Url = "http://127.0.0.1:8080/events?key=x".parse().unwrap();
        assert_eq!(label(&url), "http://127.0.0.1:8080/events");
    }
}
