//! Assertions the fault-injection tests share: a time bound for every test,
//! what lasti left on disk, and how a refused or aborted answer looks to a
//! client.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::fake_upstream::digest_of;
use super::http::Reply;

/// Longest a fault test may run; a hang is a failure, not a stuck CI job.
pub const TEST_BOUND: Duration = Duration::from_secs(60);
/// How long a check of lasti's background clean-up keeps looking.
const SETTLE: Duration = Duration::from_secs(3);

/// Runs a test body, failing it if it takes longer than [`TEST_BOUND`].
pub async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("the test hung past its time bound")
}

/// Where lasti keeps a verified blob or manifest: `blobs/sha256/<hex[..2]>/<hex>`.
pub fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Fails if lasti stored anything under `digest`.
pub fn assert_not_stored(data_dir: &Path, digest: &str) {
    let file = blob_file(data_dir, digest);
    assert!(!file.exists(), "{digest} was stored at {}", file.display());
}

/// Waits (briefly) until `condition` holds; fails naming `what` if it never does.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails unless lasti stores exactly `bytes` under `digest` (soon: a client
/// can finish reading a verified blob just before its file is renamed into place).
pub async fn assert_stored(data_dir: &Path, digest: &str, bytes: &[u8]) {
    let file = blob_file(data_dir, digest);
    eventually(&format!("{digest} stored"), || file.exists()).await;
    let stored = std::fs::read(&file)
        .unwrap_or_else(|e| panic!("{digest} is not readable at {}: {e}", file.display()));
    assert!(
        stored == bytes,
        "the stored {digest} differs from the original"
    );
}

/// Waits (briefly) until lasti's `tmp/` holds no partial file.
pub async fn assert_no_partial_files(data_dir: &Path) {
    let tmp = data_dir.join("tmp");
    let empty = || std::fs::read_dir(&tmp).map_or(true, |mut dir| dir.next().is_none());
    eventually(
        &format!("{} emptied of partial files", tmp.display()),
        empty,
    )
    .await;
}

/// Fails unless `reply` is the whole, verified `expected` blob.
pub fn assert_whole(reply: &Reply, expected: &[u8]) {
    assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
    assert_eq!(reply.body_error, None, "the body was aborted");
    assert_eq!(reply.body.len(), expected.len(), "length of the body");
    assert_eq!(
        digest_of(&reply.body),
        digest_of(expected),
        "digest of the body"
    );
    assert_eq!(
        reply.header("content-length"),
        expected.len().to_string(),
        "Content-Length"
    );
}

/// Fails if a client could take `reply` for the whole blob: it must be an
/// error answer, or a `200` whose body the server aborted or cut short.
pub fn assert_not_delivered(reply: &Reply, whole: &[u8]) {
    assert_ne!(
        digest_of(&reply.body),
        digest_of(whole),
        "the client got the whole blob"
    );
    if reply.status == StatusCode::OK {
        let announced: Option<usize> = reply.header("content-length").parse().ok();
        let short = announced.is_some_and(|n| reply.body.len() < n);
        assert!(
            reply.body_error.is_some() || short,
            "a 200 ended cleanly with {} of {announced:?} bytes: the client cannot tell it is broken",
            reply.body.len()
        );
    } else {
        assert!(
            reply.status.is_server_error() || reply.status.is_client_error(),
            "status {}",
            reply.status
        );
    }
}

/// Fails unless `reply` is a 5xx with the OCI JSON error body and `code`.
pub fn assert_upstream_error(reply: &Reply, code: &str) {
    assert!(
        reply.status.is_server_error(),
        "status {} (body {:?})",
        reply.status,
        reply.body
    );
    assert_oci_error(reply, code);
}

/// Fails unless `reply` carries the OCI JSON error body with `code` and a message.
pub fn assert_oci_error(reply: &Reply, code: &str) {
    assert!(
        reply.header("content-type").starts_with("application/json"),
        "Content-Type {:?}",
        reply.header("content-type")
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", reply.body));
    assert_eq!(reply.error_code(), code, "body {body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "error without a message: {body}");
}
