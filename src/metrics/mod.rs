//! Prometheus metrics: one [`Metrics`] struct of typed handles, registered
//! into a registry passed in (never the global one, so tests are isolated),
//! and served as text on the admin listener's `/metrics`.
//!
//! Label values are bounded: routes, statuses and outcomes are fixed sets,
//! upstream names come from the configuration, and no repository name or
//! credential from a client ever becomes a label.

mod recent;

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
pub use recent::{LastHour, Recent, MINUTES, TIERS};

/// Buckets for request and upstream latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for back-fill push durations, in seconds.
const PUSH_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Every metric lasti exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    cache_outcomes: IntCounterVec,
    served_bytes: IntCounterVec,
    sendfile_bytes: IntCounter,
    connections_shed: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_ratelimit_limit: IntGaugeVec,
    upstream_ratelimit_remaining: IntGaugeVec,
    upstream_offline: IntGaugeVec,
    upstream_skipping: IntGaugeVec,
    upstream_skipped: IntCounterVec,
    token_fetches: IntCounterVec,
    access_checks: IntCounterVec,
    signature_verdicts: IntCounterVec,
    signature_refusals: IntCounterVec,
    digest_failures: IntCounter,
    cache_write_failures: IntCounter,
    cache_size: IntGauge,
    cache_objects: IntGauge,
    evictions: IntCounter,
    fills_in_flight: IntGauge,
    backfill_pending: IntGauge,
    backfill_jobs: IntCounterVec,
    backfill_refused: IntCounterVec,
    backfill_pushed_bytes: IntCounter,
    backfill_push_duration: Histogram,
    warmed_images: IntCounterVec,
    bucket_requests: IntCounterVec,
    bucket_duration: HistogramVec,
    bucket_bytes: IntCounterVec,
    fill_sources: IntCounterVec,
    fill_bytes: IntCounterVec,
    bucket_owed: IntGauge,
    peer_fetches: IntCounterVec,
    peer_served: IntCounterVec,
    events_sent: IntCounterVec,
    events_dropped: IntCounterVec,
    event_posts_failed: IntCounterVec,
    events_queued: IntGaugeVec,
    recent: Arc<Recent>,
    hot: Hot,
}

/// One event sink's series, looked up once when the sink starts.
#[derive(Debug, Clone)]
pub struct SinkSeries {
    /// Events the sink took.
    pub sent: IntCounter,
    /// Events dropped because the sink's queue was full.
    pub dropped_full: IntCounter,
    /// Events dropped because the sink refused their batch for its content.
    pub dropped_rejected: IntCounter,
    /// Events still queued when the process ended.
    pub dropped_shutdown: IntCounter,
    /// POSTs that failed (and were tried again).
    pub failed_posts: IntCounter,
    /// Events waiting for the sink.
    pub queued: IntGauge,
}

/// The series every cache hit touches, looked up once: `with_label_values`
/// hashes its labels and takes the family's lock on every call, four times
/// per request.
#[derive(Debug, Clone)]
struct Hot {
    blob_ok: IntCounter,
    manifest_ok: IntCounter,
    blob_duration: Histogram,
    manifest_duration: Histogram,
    blob_hit: IntCounter,
    manifest_hit: IntCounter,
    from_cache: IntCounter,
    from_upstream: IntCounter,
}

impl Hot {
    fn of(
        requests: &IntCounterVec,
        duration: &HistogramVec,
        outcomes: &IntCounterVec,
        served: &IntCounterVec,
    ) -> Hot {
        Hot {
            blob_ok: requests.with_label_values(&["blob", "200"]),
            manifest_ok: requests.with_label_values(&["manifest", "200"]),
            blob_duration: duration.with_label_values(&["blob"]),
            manifest_duration: duration.with_label_values(&["manifest"]),
            blob_hit: outcomes.with_label_values(&["blob", "hit"]),
            manifest_hit: outcomes.with_label_values(&["manifest", "hit"]),
            from_cache: served.with_label_values(&["cache"]),
            from_upstream: served.with_label_values(&["upstream"]),
        }
    }
}

/// Registers `metric` and hands it back; every name is registered once.
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registered(registry, metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid metric");
    registered(registry, metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registered(registry, metric)
}

fn single(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help).expect("valid metric"))
}

impl Metrics {
    /// Registers every metric into `registry`.
    pub fn new(registry: Registry) -> Metrics {
        let r = &registry;
        let http_requests = counter(
            r,
            "lasti_http_requests_total",
            "Registry API requests by route and status.",
            &["route", "status"],
        );
        let http_duration = histogram(
            r,
            "lasti_http_request_duration_seconds",
            "Time to the response headers, by route.",
            &["route"],
            LATENCY_BUCKETS,
        );
        let cache_outcomes = counter(r, "lasti_cache_requests_total", "Manifest and blob requests by outcome (hit, miss, coalesced, stale, revalidated, passthrough).", &["kind", "outcome"]);
        let served_bytes = counter(
            r,
            "lasti_served_bytes_total",
            "Blob and manifest bytes sent to clients, by where they came from (cache or upstream).",
            &["source"],
        );
        let hot = Hot::of(
            &http_requests,
            &http_duration,
            &cache_outcomes,
            &served_bytes,
        );
        Metrics {
            http_requests,
            http_duration,
            cache_outcomes,
            served_bytes,
            hot,
            connections_shed: counter(r, "lasti_connections_shed_total", "Connections closed to make room for a new one when every slot was taken: `unproven` (no request yet), `idle` (between requests).", &["reason"]),
            sendfile_bytes: single(r, "lasti_sendfile_bytes_total", "Cached blob bytes sent with sendfile, from the page cache to a plain-TCP socket without a copy (part of the cache's served bytes)."),
            upstream_requests: counter(r, "lasti_upstream_requests_total", "Requests to upstreams and the back-fill target, by registry, method and status class.", &["upstream", "method", "status"]),
            upstream_duration: histogram(r, "lasti_upstream_request_duration_seconds", "Time to an upstream's response headers.", &["upstream", "method"], LATENCY_BUCKETS),
            upstream_errors: counter(r, "lasti_upstream_errors_total", "Upstream failures by kind.", &["upstream", "kind"]),
            upstream_ratelimit_limit: gauge_vec(r, "lasti_upstream_ratelimit_limit", "The pull quota an upstream reports (Docker Hub's RateLimit-Limit).", &["upstream"]),
            upstream_ratelimit_remaining: gauge_vec(r, "lasti_upstream_ratelimit_remaining", "Pulls left in the upstream's window (Docker Hub's RateLimit-Remaining).", &["upstream"]),
            upstream_offline: gauge_vec(r, "lasti_upstream_offline", "1 while an upstream is offline (its own switch or the process's): no request goes to it.", &["upstream"]),
            upstream_skipping: gauge_vec(r, "lasti_upstream_skipping", "1 while an upstream is skipped after failing again and again (its circuit breaker is open).", &["upstream"]),
            upstream_skipped: counter(r, "lasti_upstream_skipped_total", "Requests not sent to an upstream, by reason (offline, failing, capped: no place among max_fetches in time).", &["upstream", "reason"]),
            token_fetches: counter(r, "lasti_token_fetches_total", "Tokens fetched from registries' token realms.", &["upstream"]),
            access_checks: counter(r, "lasti_access_checks_total", "Upstream checks of whether a client may pull a repository (credentials = \"client\"), by identity (anonymous, client) and verdict (allowed, refused, absent, failed).", &["upstream", "identity", "verdict"]),
            signature_verdicts: counter(r, "lasti_signature_verdicts_total", "Signature verdicts made under a signature policy (once per manifest digest and key set; hits reuse them), by outcome (signed, covered: a platform manifest of a signed index, attachment, unsigned_index, no_signature, unknown_key, wrong_payload, digest_mismatch, unverifiable: the signature could not be read).", &["upstream", "outcome"]),
            signature_refusals: counter(r, "lasti_signature_refused_total", "Manifest requests refused by a signature policy, by reason (no_signature, unknown_key, wrong_payload, digest_mismatch, unverifiable).", &["upstream", "reason"]),
            digest_failures: single(r, "lasti_digest_failures_total", "Blobs from an upstream that failed their digest or length check (never stored)."),
            cache_write_failures: single(r, "lasti_cache_write_failures_total", "Blobs streamed to clients but not cached, because the cache file could not be written (a full disk)."),
            cache_size: gauge(r, "lasti_cache_size_bytes", "Bytes held in the blob store."),
            cache_objects: gauge(r, "lasti_cache_objects", "Blobs and manifests held in the blob store."),
            evictions: single(r, "lasti_cache_evictions_total", "Blobs evicted to stay under the quota."),
            fills_in_flight: gauge(r, "lasti_fetches_in_flight", "Blob fetches from upstreams in progress."),
            backfill_pending: gauge(r, "lasti_backfill_queue_depth", "Back-fill jobs waiting or retrying."),
            backfill_jobs: counter(r, "lasti_backfill_jobs_total", "Back-fill job attempts by outcome (done, retry, failed).", &["outcome"]),
            backfill_refused: counter(r, "lasti_backfill_refused_total", "Images not queued for back-fill, by reason (queue_full, intake_busy).", &["reason"]),
            backfill_pushed_bytes: single(r, "lasti_backfill_pushed_bytes_total", "Blob bytes uploaded to the back-fill target."),
            backfill_push_duration: histogram(r, "lasti_backfill_push_duration_seconds", "Duration of back-fill job attempts.", &[], PUSH_BUCKETS)
                .with_label_values(&[] as &[&str]),
            warmed_images: counter(r, "lasti_warm_images_total", "Images of the warm list and of /admin/warm pulled into the cache, by outcome (done, failed).", &["outcome"]),
            bucket_requests: counter(r, "lasti_bucket_requests_total", "Requests to the shared object store, by operation (get, head, put, delete of blobs; manifest_get, manifest_put, tag_get, tag_put) and result (found, missing, stored, removed, error, skipped: not asked for a while after an error; local_error: the cache file could not be read).", &["op", "result"]),
            bucket_duration: histogram(r, "lasti_bucket_request_duration_seconds", "Time to the object store's response headers, by operation.", &["op"], LATENCY_BUCKETS),
            bucket_bytes: counter(r, "lasti_bucket_bytes_total", "Blob bytes read from (in) and uploaded to (out) the object store.", &["direction"]),
            fill_sources: counter(r, "lasti_fill_sources_total", "Blob fills completed, by the tier that supplied the bytes (bucket, peer, project, upstream).", &["tier"]),
            fill_bytes: counter(r, "lasti_fill_bytes_total", "Blob bytes written into the cache, by the tier they came from (bucket, peer, project, upstream).", &["tier"]),
            bucket_owed: gauge(r, "lasti_bucket_owed", "Blobs and manifests owed to the object store: waiting for an upload place, failed, or cut by a crash (as of the uploader's last round)."),
            peer_fetches: counter(r, "lasti_peer_fetches_total", "Blobs and manifests asked of their owner replica, by result (done; failed: unreachable or broke off, left out for a while; refused: it answered without the blob, busy or failing; self: the member was this replica under another name). All but done go on to the next source.", &["result"]),
            peer_served: counter(r, "lasti_peer_requests_total", "Requests answered on the peer listener, by outcome (hit, miss, coalesced: blobs and manifests; offer: a back-fill offer taken; error; refused: no secret, or the asker itself).", &["outcome"]),
            events_sent: counter(r, "lasti_events_sent_total", "Audit events a sink took, by sink.", &["sink"]),
            events_dropped: counter(r, "lasti_events_dropped_total", "Audit events never delivered, by sink and reason (queue_full: the sink was slow or down for longer than its queue holds; rejected: it refused the batch as malformed, a 400, 413, 415 or 422; shutdown: still queued when the process ended).", &["sink", "reason"]),
            event_posts_failed: counter(r, "lasti_event_posts_failed_total", "Batches of audit events a sink did not take (no answer, 5xx, 408, 429), each tried again after a back-off.", &["sink"]),
            events_queued: gauge_vec(r, "lasti_events_queued", "Audit events waiting for a sink.", &["sink"]),
            recent: Arc::default(),
            registry,
        }
        .with_outcomes()
    }

    /// Creates the fixed label sets at zero, so `rate()` works from the start.
    fn with_outcomes(self) -> Metrics {
        for outcome in ["done", "retry", "failed"] {
            self.backfill_jobs.with_label_values(&[outcome]);
        }
        for reason in ["queue_full", "intake_busy"] {
            self.backfill_refused.with_label_values(&[reason]);
        }
        for kind in ["manifest", "blob", "referrers"] {
            for outcome in [
                "hit",
                "revalidated",
                "stale",
                "miss",
                "coalesced",
                "passthrough",
            ] {
                self.cache_outcomes.with_label_values(&[kind, outcome]);
            }
        }
        for outcome in ["done", "failed"] {
            self.warmed_images.with_label_values(&[outcome]);
        }
        for source in ["cache", "upstream"] {
            self.served_bytes.with_label_values(&[source]);
        }
        for tier in ["bucket", "peer", "project", "upstream"] {
            self.fill_sources.with_label_values(&[tier]);
            self.fill_bytes.with_label_values(&[tier]);
        }
        for result in ["done", "failed", "refused", "self"] {
            self.peer_fetches.with_label_values(&[result]);
        }
        for outcome in ["hit", "miss", "coalesced", "error", "refused", "offer"] {
            self.peer_served.with_label_values(&[outcome]);
        }
        for (op, results) in [
            ("get", &["found", "missing", "error", "skipped"][..]),
            ("head", &["found", "missing", "error", "skipped"]),
            ("put", &["stored", "error", "local_error"]),
            ("delete", &["removed", "error"]),
            ("manifest_get", &["found", "missing", "error", "skipped"]),
            ("manifest_put", &["stored", "error"]),
            ("tag_get", &["found", "missing", "error", "skipped"]),
            ("tag_put", &["stored", "error"]),
        ] {
            self.bucket_duration.with_label_values(&[op]);
            for result in results {
                self.bucket_requests.with_label_values(&[op, result]);
            }
        }
        for direction in ["in", "out"] {
            self.bucket_bytes.with_label_values(&[direction]);
        }
        self
    }

    /// Makes the families labelled by upstream appear for `name` at zero,
    /// so dashboards and alerts see them before the first event.
    pub fn register_upstream(&self, name: &str) {
        self.token_fetches.with_label_values(&[name]);
        self.upstream_offline.with_label_values(&[name]);
        self.upstream_skipping.with_label_values(&[name]);
        for reason in ["offline", "failing", "capped"] {
            self.upstream_skipped.with_label_values(&[name, reason]);
        }
    }

    /// Whether an upstream is offline, and whether it is being skipped.
    pub fn upstream_availability(&self, upstream: &str, offline: bool, skipping: bool) {
        self.upstream_offline
            .with_label_values(&[upstream])
            .set(i64::from(offline));
        self.upstream_skipping
            .with_label_values(&[upstream])
            .set(i64::from(skipping));
    }

    /// A request not sent to an upstream (`offline`, `failing`).
    pub fn upstream_skipped(&self, upstream: &str, reason: &str) {
        self.upstream_skipped
            .with_label_values(&[upstream, reason])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// One registry API request answered.
    pub fn http_request(&self, route: &str, status: u16, elapsed: Duration) {
        let hot = &self.hot;
        match (route, status) {
            ("blob", 200) => hot.blob_ok.inc(),
            ("manifest", 200) => hot.manifest_ok.inc(),
            _ => self
                .http_requests
                .with_label_values(&[route, status_label(status)])
                .inc(),
        }
        let seconds = elapsed.as_secs_f64();
        match route {
            "blob" => hot.blob_duration.observe(seconds),
            "manifest" => hot.manifest_duration.observe(seconds),
            _ => self
                .http_duration
                .with_label_values(&[route])
                .observe(seconds),
        }
    }

    /// How a manifest or blob request was answered.
    pub fn cache_outcome(&self, kind: &str, outcome: &str) {
        match (kind, outcome) {
            ("blob", "hit") => self.hot.blob_hit.inc(),
            ("manifest", "hit") => self.hot.manifest_hit.inc(),
            _ => self
                .cache_outcomes
                .with_label_values(&[kind, outcome])
                .inc(),
        }
    }

    /// Bytes sent to a client, from the cache or fetched upstream.
    pub fn served(&self, from_cache: bool, bytes: u64) {
        match from_cache {
            true => self.hot.from_cache.inc_by(bytes),
            false => self.hot.from_upstream.inc_by(bytes),
        }
    }

    /// The last hour, minute by minute, for the status page.
    pub fn recent(&self) -> &Recent {
        &self.recent
    }

    /// Blobs and manifests owed to the object store, as last counted.
    pub fn bucket_owed_now(&self) -> i64 {
        self.bucket_owed.get()
    }

    /// The pull quota an upstream last reported (`RateLimit-Limit`,
    /// `RateLimit-Remaining`), when it reported one.
    pub fn ratelimit_now(&self, upstream: &str) -> Option<(i64, i64)> {
        let families = self.registry.gather();
        let value = |name: &str| {
            let family = families.iter().find(|f| f.name() == name)?;
            let metric = family.get_metric().iter().find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "upstream" && l.value() == upstream)
            })?;
            Some(metric.get_gauge().get_value() as i64)
        };
        Some((
            value("lasti_upstream_ratelimit_limit")?,
            value("lasti_upstream_ratelimit_remaining")?,
        ))
    }

    /// One image warmed, or not.
    pub fn warmed(&self, ok: bool) {
        let outcome = if ok { "done" } else { "failed" };
        self.warmed_images.with_label_values(&[outcome]).inc();
    }

    /// The counter of connections closed to make room, for the listeners.
    pub fn connections_shed(&self) -> IntCounterVec {
        self.connections_shed.clone()
    }

    /// The counter of bytes sent with `sendfile`, for the connections to add to.
    pub fn sendfile_bytes(&self) -> IntCounter {
        self.sendfile_bytes.clone()
    }

    /// One request to a registry, with its status (`None`: no response).
    pub fn upstream_request(
        &self,
        upstream: &str,
        method: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let status = status.map(status_class).unwrap_or("error");
        self.upstream_requests
            .with_label_values(&[upstream, method, status])
            .inc();
        self.upstream_duration
            .with_label_values(&[upstream, method])
            .observe(elapsed.as_secs_f64());
    }

    /// An upstream failure, by the error's kind.
    pub fn upstream_error(&self, upstream: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[upstream, kind])
            .inc();
    }

    /// The pull quota an upstream reported.
    pub fn upstream_ratelimit(&self, upstream: &str, limit: Option<i64>, remaining: Option<i64>) {
        if let Some(limit) = limit {
            self.upstream_ratelimit_limit
                .with_label_values(&[upstream])
                .set(limit);
        }
        if let Some(remaining) = remaining {
            self.upstream_ratelimit_remaining
                .with_label_values(&[upstream])
                .set(remaining);
        }
    }

    /// A token fetched from a realm.
    pub fn token_fetched(&self, upstream: &str) {
        self.token_fetches.with_label_values(&[upstream]).inc();
    }

    /// One access check asked of an upstream (`credentials = "client"`).
    pub fn access_check(&self, upstream: &str, identity: &'static str, verdict: &'static str) {
        self.access_checks
            .with_label_values(&[upstream, identity, verdict])
            .inc();
    }

    /// Starts the refusal counters of an upstream with signature rules at
    /// zero, so that an alert on their increase sees the first refusal.
    pub fn register_signature_rules(&self, upstream: &str) {
        for reason in crate::signature::Refusal::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(["unverifiable"])
        {
            self.signature_refusals
                .with_label_values(&[upstream, reason]);
        }
    }

    /// A signature verdict made (not one reused).
    pub fn signature_verdict(&self, upstream: &str, outcome: &'static str) {
        self.signature_verdicts
            .with_label_values(&[upstream, outcome])
            .inc();
    }

    /// A manifest request refused for its signature.
    pub fn signature_refused(&self, upstream: &str, reason: &'static str) {
        self.signature_refusals
            .with_label_values(&[upstream, reason])
            .inc();
    }

    /// A blob rejected for its digest or length.
    pub fn digest_failure(&self) {
        self.digest_failures.inc();
    }

    /// A blob streamed but not cached (the disk is full).
    pub fn cache_write_failure(&self) {
        self.cache_write_failures.inc();
    }

    /// One request to the object store took `elapsed` to its headers.
    pub fn bucket_request(&self, op: &str, elapsed: Duration) {
        self.bucket_duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// The result of one object-store request.
    pub fn bucket_result(&self, op: &str, result: &str) {
        self.bucket_requests.with_label_values(&[op, result]).inc();
    }

    /// Blob bytes moved to or from the object store.
    pub fn bucket_bytes(&self, direction: &str, bytes: u64) {
        self.bucket_bytes
            .with_label_values(&[direction])
            .inc_by(bytes);
    }

    /// A fill completed with bytes from `tier`.
    pub fn fill_source(&self, tier: &str) {
        self.fill_sources.with_label_values(&[tier]).inc();
    }

    /// Bytes a fill took from `tier`.
    pub fn fill_bytes(&self, tier: &str, bytes: u64) {
        if bytes > 0 {
            self.fill_bytes.with_label_values(&[tier]).inc_by(bytes);
        }
    }

    /// Blobs and manifests still to be uploaded to the object store.
    pub fn bucket_owed(&self, count: usize) {
        self.bucket_owed.set(count as i64);
    }

    /// A blob asked of its owner replica came whole (`done`) or not
    /// (`failed`, `refused`, `self`).
    pub fn peer_fetch(&self, result: &str) {
        self.peer_fetches.with_label_values(&[result]).inc();
    }

    /// The series of one event sink, created at zero.
    pub fn event_sink(&self, sink: &str) -> SinkSeries {
        SinkSeries {
            sent: self.events_sent.with_label_values(&[sink]),
            dropped_full: self.events_dropped.with_label_values(&[sink, "queue_full"]),
            dropped_rejected: self.events_dropped.with_label_values(&[sink, "rejected"]),
            dropped_shutdown: self.events_dropped.with_label_values(&[sink, "shutdown"]),
            failed_posts: self.event_posts_failed.with_label_values(&[sink]),
            queued: self.events_queued.with_label_values(&[sink]),
        }
    }

    /// A request on the peer listener was answered with `outcome`.
    pub fn peer_served(&self, outcome: &str) {
        self.peer_served.with_label_values(&[outcome]).inc();
    }

    /// Blobs evicted.
    pub fn evicted(&self, count: usize) {
        self.evictions.inc_by(count as u64);
    }

    /// The cache's size and the fetches in flight, set at scrape time.
    pub fn cache_state(&self, bytes: u64, objects: usize, fills: usize) {
        self.cache_size.set(bytes as i64);
        self.cache_objects.set(objects as i64);
        self.fills_in_flight.set(fills as i64);
    }

    /// The back-fill queue's depth, set whenever it changes.
    pub fn backfill_pending(&self, pending: usize) {
        self.backfill_pending.set(pending as i64);
    }

    /// One back-fill job attempt ended.
    pub fn backfill_attempt(&self, outcome: &str, elapsed: Duration) {
        self.backfill_jobs.with_label_values(&[outcome]).inc();
        self.backfill_push_duration.observe(elapsed.as_secs_f64());
    }

    /// An image not queued for back-fill, and why (`queue_full`, `intake_busy`).
    pub fn backfill_refused(&self, reason: &'static str) {
        self.backfill_refused.with_label_values(&[reason]).inc();
    }

    /// Blob bytes uploaded to the target.
    pub fn backfill_pushed(&self, bytes: u64) {
        self.backfill_pushed_bytes.inc_by(bytes);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::new())
    }
}

/// A status code as a bounded label: the exact code for the ones lasti
/// sends, else its class.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        206 => "206",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        416 => "416",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => status_class(other),
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Reads Docker Hub's `RateLimit-Limit` / `RateLimit-Remaining` value
/// (`100;w=21600`): the number before any parameter.
pub fn ratelimit_value(header: &str) -> Option<i64> {
    header.split(';').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_with_bounded_labels() {
        let m = Metrics::default();
        m.http_request("blob", 200, Duration::from_millis(3));
        m.http_request("blob", 299, Duration::from_millis(3));
        m.upstream_request("docker.io", "GET", Some(200), Duration::from_millis(10));
        m.upstream_request("docker.io", "HEAD", None, Duration::from_millis(10));
        m.upstream_ratelimit(
            "docker.io",
            ratelimit_value("100;w=21600"),
            ratelimit_value("76;w=21600"),
        );
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"lasti_http_requests_total{route="blob",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"lasti_http_requests_total{route="blob",status="2xx"} 1"#));
        assert!(text.contains(
            r#"lasti_upstream_requests_total{method="HEAD",status="error",upstream="docker.io"} 1"#
        ));
        assert!(text.contains(r#"lasti_upstream_ratelimit_remaining{upstream="docker.io"} 76"#));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("lasti_"), "{line}");
        }
    }

    #[test]
    fn ratelimit_headers_parse() {
        assert_eq!(ratelimit_value("100;w=21600"), Some(100));
        assert_eq!(ratelimit_value(" 7 "), Some(7));
        assert_eq!(ratelimit_value("x"), None);
    }
}
