//! One structured event per request, written when its body is finished (or
//! dropped), so it carries the bytes actually sent and whether the stream
//! completed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

use std::sync::Arc;

use super::audit::Pending;
use crate::body::{Body, BodyError};
use crate::metrics::Metrics;
use crate::pull_through::{Outcome, Provenance};

/// What the access event reports besides bytes.
#[derive(Debug)]
pub struct Record {
    /// Request method.
    pub method: Method,
    /// Request path (never the query, which may carry tokens).
    pub path: String,
    /// Response status.
    pub status: StatusCode,
    /// The listener it came on: `api` (clients) or `peer` (replicas).
    pub listener: &'static str,
    /// How the request was answered, when it reached the proxy.
    pub outcome: Option<Outcome>,
    /// Where its bytes came from, when it reached the proxy.
    pub from: Option<Provenance>,
    /// The error kind of a failed request.
    pub error: Option<&'static str>,
    /// When the request arrived.
    pub started: Instant,
    /// The `Content-Length` announced, to tell a complete stream from a cut one.
    pub expected_bytes: Option<u64>,
    /// Where to count the bytes served.
    pub metrics: Option<Arc<Metrics>>,
    /// The audit event the request makes, sent once its body is done.
    pub audit: Option<Pending>,
}

/// A response body that counts what it sends and logs when done.
pub struct LoggedBody {
    inner: Body,
    record: Option<Record>,
    bytes: u64,
    failed: bool,
    ended: bool,
    expected: Option<u64>,
}

impl LoggedBody {
    /// Wraps a response body.
    pub fn new(inner: Body, record: Record) -> Self {
        LoggedBody {
            expected: record.expected_bytes,
            inner,
            record: Some(record),
            bytes: 0,
            failed: false,
            ended: false,
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl LoggedBody {
    /// Whether the whole response went out: a `HEAD` answer once its head
    /// was sent (it has no body, whatever `Content-Length` says), any other
    /// once its body ended or every announced byte was sent.
    fn complete(&self, method: &Method) -> bool {
        !self.failed
            && (method == Method::HEAD
                || self.ended
                || self.inner.is_end_stream()
                || self.expected == Some(self.bytes))
    }
}

/// Milliseconds to the microsecond: `0.125`, not `0.12498712`.
fn millis(elapsed: std::time::Duration) -> f64 {
    elapsed.as_micros() as f64 / 1000.0
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        if let (Some(metrics), Some(outcome)) = (&r.metrics, r.outcome) {
            let from_cache = matches!(
                outcome,
                Outcome::Hit | Outcome::Revalidated | Outcome::Stale
            );
            metrics.served(from_cache, self.bytes);
            if r.listener == "api" {
                let tier = r.from.as_ref().map(Provenance::label).unwrap_or("-");
                metrics.recent().record(tier, from_cache, self.bytes);
            }
        }
        let complete = self.complete(&r.method);
        tracing::info!(
            target: crate::telemetry::access_format::ACCESS_TARGET,
            method = r.method.as_str(),
            path = r.path.as_str(),
            status = u64::from(r.status.as_u16()),
            bytes = self.bytes,
            listener = r.listener,
            outcome = r.outcome.map(Outcome::as_str).unwrap_or("-"),
            source = r.from.as_ref().map(Provenance::label).unwrap_or("-"),
            error = r.error.unwrap_or("-"),
            complete,
            ms = millis(r.started.elapsed()),
        );
        if let Some(audit) = r.audit.take() {
            audit.finish(&r, self.bytes, complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(method: Method, inner: Body, expected_bytes: Option<u64>) -> LoggedBody {
        let record = Record {
            method,
            path: "/v2/library/alpine/blobs/sha256:00".into(),
            status: StatusCode::OK,
            listener: "api",
            outcome: Some(Outcome::Hit),
            from: Some(Provenance::Known("cache")),
            error: None,
            started: Instant::now(),
            expected_bytes,
            metrics: None,
            audit: None,
        };
        LoggedBody::new(inner, record)
    }

    #[test]
    fn a_head_answer_is_complete_once_sent_a_get_only_once_its_body_is() {
        let unsent = || crate::body::full(Bytes::from_static(&[7; 100]));
        // hyper never polls the body of a HEAD answer, whatever it is.
        let head = logged(Method::HEAD, unsent(), Some(100));
        assert!(head.complete(&Method::HEAD), "a HEAD hit of 100 bytes");
        let get = logged(Method::GET, unsent(), Some(100));
        assert!(!get.complete(&Method::GET), "no byte of a GET was sent");
    }
}
