//! The one response body type of the proxy: a boxed stream of `Bytes`.
//!
//! Every response, whether a small JSON error, a manifest held in memory, or
//! a multi-gigabyte blob streamed from disk or from an upstream, is a `Body`,
//! so handlers compose without generic noise and nothing is ever collected.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};

/// The error a streaming body ends with when it cannot complete. Ending a
/// body with an error makes hyper abort the connection, so a client never
/// takes a cut or unverified blob for a whole one.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A body with no bytes (HEAD responses, 304s).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body held in memory, sent as one frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body produced piece by piece.
pub fn stream<S>(stream: S) -> Body
where
    S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
{
    StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
}
