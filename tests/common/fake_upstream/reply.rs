//! The fake registry's responses: content with its headers, honouring
//! `Range: bytes=N-`, bent by a body fault (corrupt, cut, stall, slow), and
//! the small JSON, error and redirect answers.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{header, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use super::Fault;

/// An error that ends a body early; hyper then closes the connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every fake response.
pub type FakeBody = BoxBody<Bytes, BoxError>;

/// Pause before a cut connection closes, so the bytes before the cut are
/// flushed to the client rather than lost with the connection.
const CUT_FLUSH_DELAY: Duration = Duration::from_millis(50);
/// Size of the pieces a cut or stalled body is sent in.
const PIECE: usize = 16 * 1024;

/// A manifest or blob, or its headers for `HEAD`, with `fault` applied.
pub fn serve_content(
    bytes: Bytes,
    media_type: &str,
    digest: &str,
    head: bool,
    range: Option<&str>,
    fault: Option<Fault>,
) -> Response<FakeBody> {
    let bytes = match fault {
        Some(Fault::Corrupt) => flip_last(&bytes),
        _ => bytes,
    };
    let total = bytes.len();
    let start = range.and_then(range_start).filter(|s| *s < total);
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header("docker-content-digest", digest)
        .header(header::ACCEPT_RANGES, "bytes");
    if head {
        let builder = builder.header(header::CONTENT_LENGTH, total);
        return builder.body(empty()).expect("HEAD response");
    }
    let whole = builder.header(header::CONTENT_LENGTH, total);
    let body = match (fault, start) {
        // Without resume, a range is ignored: the whole body, cut again.
        (Some(Fault::CutAfter { bytes: n, resume }), s) if s.is_none() || !resume => {
            cut(bytes.slice(..n.min(total)))
        }
        (Some(Fault::Stall), _) => stalled(Bytes::new()),
        (Some(Fault::StallAfter(n)), None) => stalled(bytes.slice(..n.min(total))),
        (fault, Some(start)) => return partial(bytes, start, fault),
        (Some(Fault::Slow { chunk, pause }), None) => slow(bytes, chunk, pause),
        _ => full(bytes),
    };
    whole.body(body).expect("content response")
}

/// A `206` from `start` to the end.
fn partial(bytes: Bytes, start: usize, fault: Option<Fault>) -> Response<FakeBody> {
    let total = bytes.len();
    let rest = bytes.slice(start..);
    let body = match fault {
        Some(Fault::Slow { chunk, pause }) => slow(rest.clone(), chunk, pause),
        _ => full(rest.clone()),
    };
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, rest.len())
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total - 1),
        )
        .body(body)
        .expect("partial response")
}

/// The start of `bytes=N-` or `bytes=N-M`.
fn range_start(value: &str) -> Option<usize> {
    let spec = value.strip_prefix("bytes=")?;
    let (start, _) = spec.split_once('-')?;
    start.parse().ok()
}

fn flip_last(bytes: &Bytes) -> Bytes {
    let mut flipped = bytes.to_vec();
    if let Some(last) = flipped.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(flipped)
}

/// The answer of a `Status` fault, with the error code a registry sends with it.
pub fn fault_status(code: u16, retry_after: Option<u64>) -> Response<FakeBody> {
    let oci_code = match code {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        500..=599 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    status(code, retry_after, oci_code)
}

/// An error answer with the OCI JSON body and, for 429s, `Retry-After`.
pub fn status(code: u16, retry_after: Option<u64>, oci_code: &str) -> Response<FakeBody> {
    let status = StatusCode::from_u16(code).expect("valid status code");
    let body =
        serde_json::json!({"errors": [{"code": oci_code, "message": "fake upstream fault"}]});
    let mut response = json(status, body.to_string());
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

/// A JSON answer.
pub fn json(status: StatusCode, body: String) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(full(Bytes::from(body)))
        .expect("JSON response")
}

/// `302` to the same path and query on `base`.
pub fn redirect(base: &str, uri: &Uri) -> Response<FakeBody> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, format!("{base}{path}"))
        .header(header::CONTENT_LENGTH, 0)
        .body(empty())
        .expect("redirect response")
}

fn full(bytes: Bytes) -> FakeBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> FakeBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// `head` in pieces, then (after a flush) an error that closes the connection.
fn cut(head: Bytes) -> FakeBody {
    let end = stream::once(async {
        tokio::time::sleep(CUT_FLUSH_DELAY).await;
        Err::<Frame<Bytes>, BoxError>("connection cut by a fault".into())
    });
    BodyExt::boxed(StreamBody::new(pieces(head).chain(end)))
}

/// `head` in pieces, then nothing, ever.
fn stalled(head: Bytes) -> FakeBody {
    let end = stream::pending::<Result<Frame<Bytes>, BoxError>>();
    BodyExt::boxed(StreamBody::new(pieces(head).chain(end)))
}

/// `bytes` as a stream of [`PIECE`]-sized data frames.
fn pieces(bytes: Bytes) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    let frames: Vec<_> = bytes
        .chunks(PIECE)
        .map(|piece| Ok(Frame::data(bytes.slice_ref(piece))))
        .collect();
    stream::iter(frames)
}

fn slow(bytes: Bytes, chunk: usize, pause: Duration) -> FakeBody {
    let pieces = stream::unfold(bytes, move |mut rest| async move {
        if rest.is_empty() {
            return None;
        }
        tokio::time::sleep(pause).await;
        let piece = rest.split_to(chunk.min(rest.len()));
        Some((Ok::<_, BoxError>(Frame::data(piece)), rest))
    });
    BodyExt::boxed(StreamBody::new(pieces))
}
