//! Builds every HTTP response lasti sends; errors become the spec's JSON
//! body here and nowhere else.

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use super::audit::Refusal;
use crate::body::{self, Body, BodyError};
use crate::cache::reader::Delivery;
use crate::error::{Error, Origin};
use crate::oci::media_type::OCI_INDEX;
use crate::oci::range::unsatisfied_content_range;
use crate::oci::{ErrorBody, ErrorCode};
use crate::pull_through::{BlobAnswer, ManifestAnswer, Outcome, Provenance, ReferrersAnswer};

/// Sent on every API response, as distribution does.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");
/// The header that names a manifest's or blob's digest.
pub const DIGEST_HEADER: &str = "docker-content-digest";
const API_VERSION_NAME: HeaderName = HeaderName::from_static(API_VERSION_HEADER);
const DIGEST_NAME: HeaderName = HeaderName::from_static(DIGEST_HEADER);
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

fn builder(status: StatusCode) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header(API_VERSION_HEADER, API_VERSION)
}

fn finish(builder: http::response::Builder, body: Body) -> Response<Body> {
    builder.body(body).expect("headers built from valid values")
}

/// `GET /v2/`: the version check clients start with.
pub fn base() -> Response<Body> {
    finish(
        builder(StatusCode::OK).header(header::CONTENT_TYPE, JSON),
        body::full(Bytes::from_static(b"{}")),
    )
}

/// A token for lasti's token endpoint, in the shape registries answer
/// (`token` and `access_token`, `expires_in` seconds); never cached.
pub fn token(token: &str, lifetime: std::time::Duration) -> Response<Body> {
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": lifetime.as_secs(),
    });
    finish(
        builder(StatusCode::OK)
            .header(header::CONTENT_TYPE, JSON)
            .header(header::CACHE_CONTROL, "no-store"),
        body::full(Bytes::from(body.to_string())),
    )
}

/// `202 Accepted` with an empty JSON object: taken, to be done later.
pub fn accepted() -> Response<Body> {
    finish(
        builder(StatusCode::ACCEPTED).header(header::CONTENT_TYPE, JSON),
        body::full(Bytes::from_static(b"{}")),
    )
}

/// `200 OK` with `value` as JSON.
pub fn json(value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    finish(
        builder(StatusCode::OK).header(header::CONTENT_TYPE, JSON),
        body::full(Bytes::from(bytes)),
    )
}

/// `204 No Content`: done, nothing to say.
pub fn no_content() -> Response<Body> {
    finish(builder(StatusCode::NO_CONTENT), body::empty())
}

/// Logs why a request failed, at the level its origin deserves, naming the
/// request (there is no span per request: a hit pays for none). The message
/// is the error body's: clients (skopeo, docker) often show only the
/// status, so the log is where the reason is found.
pub fn log_failure(err: &Error, method: &Method, path: &str) {
    let method = method.as_str();
    match (err.origin(), err.faulty_upstream()) {
        (Origin::Internal, _) => tracing::error!(method, path, error = %err, "request failed"),
        (_, Some(upstream)) => {
            tracing::warn!(method, path, upstream, error = %err, "upstream failed")
        }
        (Origin::Upstream, None) => {
            tracing::info!(method, path, error = %err, "request failed upstream")
        }
        (Origin::Client, None) => tracing::debug!(method, path, error = %err, "bad request"),
    }
}

/// The OCI error body for any error, with the status and headers it implies.
pub fn error(err: &Error) -> Response<Body> {
    let message = match err.origin() {
        // Internal details (paths, store errors) stay in the log.
        Origin::Internal => "internal error".to_string(),
        _ => err.to_string(),
    };
    let mut builder = builder(err.status()).header(header::CONTENT_TYPE, JSON);
    match err {
        Error::UpstreamTooManyRequests {
            retry_after: Some(after),
            ..
        } => {
            builder = builder.header(header::RETRY_AFTER, after.as_secs().max(1));
        }
        Error::RateLimited { retry_after } | Error::Busy { retry_after } => {
            builder = builder.header(header::RETRY_AFTER, retry_after.as_secs().max(1));
        }
        Error::Unauthorized { challenge } => {
            builder = builder.header(header::WWW_AUTHENTICATE, challenge.as_str());
        }
        Error::RangeNotSatisfiable { size } => {
            builder = builder.header(header::CONTENT_RANGE, unsatisfied_content_range(*size));
        }
        _ => {}
    }
    let code = err.code();
    let refusal = matches!(code, ErrorCode::Unauthorized | ErrorCode::Denied).then(|| Refusal {
        code: code.as_str(),
        reason: message.clone(),
    });
    let body = ErrorBody::new(code, message).to_json();
    let mut response = finish(builder, body::full(body));
    response.extensions_mut().insert(ErrorKind(err.kind()));
    if let Some(refusal) = refusal {
        response.extensions_mut().insert(refusal);
    }
    response
}

/// The error kind of a failed response, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

/// A manifest (or, for HEAD, only its headers).
pub fn manifest(answer: &ManifestAnswer, head: bool) -> Response<Body> {
    let digest = answer.digest().to_string();
    let builder = builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, answer.media_type())
        .header(header::CONTENT_LENGTH, answer.size())
        .header(DIGEST_HEADER, &digest)
        .header(header::ETAG, format!("\"{digest}\""));
    let body = match (head, answer.bytes()) {
        (false, Some(bytes)) => body::full(bytes),
        _ => body::empty(),
    };
    let mut response = finish(builder, body);
    response
        .extensions_mut()
        .insert(Provenance::Known(answer.from()));
    with_outcome(response, answer.outcome())
}

/// A blob, a range of it, or (for HEAD) its headers. The most frequent
/// response: its headers go into a map sized for them, with no builder
/// and no string formatting on the way.
pub fn blob(answer: BlobAnswer, digest: &str, delivery: Delivery) -> Response<Body> {
    let status = if answer.range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(API_VERSION_NAME, API_VERSION);
    headers.insert(header::CONTENT_TYPE, answer.media_type);
    headers.insert(DIGEST_NAME, digest_value(digest));
    headers.insert(header::ETAG, etag(digest));
    headers.insert(header::ACCEPT_RANGES, BYTES);
    match (answer.range, answer.size) {
        (Some(range), Some(size)) => {
            headers.insert(header::CONTENT_LENGTH, range.len().into());
            let content_range = HeaderValue::from_str(&range.content_range(size))
                .expect("a content range is ASCII");
            headers.insert(header::CONTENT_RANGE, content_range);
        }
        (None, Some(size)) => {
            headers.insert(header::CONTENT_LENGTH, size.into());
        }
        _ => {}
    }
    let body = match answer.reader {
        Some(reader) => match reader.in_memory() {
            Some(bytes) => body::full(bytes),
            None => body::stream(
                reader
                    .with_delivery(delivery)
                    .into_stream()
                    .map(|chunk| chunk.map_err(|e| Box::new(e) as BodyError)),
            ),
        },
        None => body::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(answer.from);
    with_outcome(response, answer.outcome)
}

/// A parsed digest as a header value (it is ASCII by construction).
fn digest_value(digest: &str) -> HeaderValue {
    HeaderValue::from_str(digest).expect("a parsed digest is a valid header value")
}

/// The strong `ETag` of a blob: its digest in quotes.
fn etag(digest: &str) -> HeaderValue {
    let mut quoted = BytesMut::with_capacity(digest.len() + 2);
    quoted.put_u8(b'"');
    quoted.put_slice(digest.as_bytes());
    quoted.put_u8(b'"');
    HeaderValue::from_maybe_shared(quoted.freeze())
        .expect("a parsed digest is a valid header value")
}

/// A tag list page, passed through.
pub fn tags(list: crate::upstream::TagList) -> Response<Body> {
    let mut builder = builder(StatusCode::OK).header(header::CONTENT_TYPE, JSON);
    if let Some(link) = list.link {
        builder = builder.header(header::LINK, link);
    }
    with_outcome(finish(builder, body::full(list.body)), Outcome::Passthrough)
}

/// A referrers list (an image index); for HEAD, its headers.
pub fn referrers(answer: ReferrersAnswer, head: bool) -> Response<Body> {
    let mut builder = builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, OCI_INDEX)
        .header(header::CONTENT_LENGTH, answer.body.len());
    if let Some(filters) = answer.filters_applied {
        builder = builder.header("oci-filters-applied", filters);
    }
    let body = if head {
        body::empty()
    } else {
        body::full(answer.body)
    };
    with_outcome(finish(builder, body), answer.outcome)
}

fn with_outcome(mut response: Response<Body>, outcome: Outcome) -> Response<Body> {
    response.extensions_mut().insert(outcome);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::reader::BlobReader;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    fn answer(reader: BlobReader, size: u64) -> BlobAnswer {
        BlobAnswer {
            size: Some(size),
            media_type: HeaderValue::from_static("application/octet-stream"),
            range: None,
            reader: Some(reader),
            outcome: Outcome::Hit,
            from: Provenance::Known("cache"),
        }
    }

    /// A blob held in memory goes out as a body known to end with its
    /// bytes (over HTTP/2, the end of the stream rides on the data's own
    /// frame); one read from its file is streamed. Both carry the bytes.
    #[tokio::test]
    async fn a_blob_in_memory_is_one_body_that_ends_with_its_bytes() {
        let content = Bytes::from(vec![9u8; 4096]);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &content).unwrap();
        let file = Arc::new(std::fs::File::open(tmp.path()).unwrap());
        let size = content.len() as u64;

        let kept = BlobReader::stored(Arc::clone(&file), 0, size, None)
            .with_content(Some(content.clone()));
        let body = blob(answer(kept, size), "sha256:x", Delivery::Copied).into_body();
        assert_eq!(body.size_hint().exact(), Some(size));
        assert_eq!(body.collect().await.unwrap().to_bytes(), content);

        let read = BlobReader::stored(file, 0, size, None);
        let body = blob(answer(read, size), "sha256:x", Delivery::Copied).into_body();
        assert_eq!(body.size_hint().exact(), None, "a file is streamed");
        assert_eq!(body.collect().await.unwrap().to_bytes(), content);
    }
}
