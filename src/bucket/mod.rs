//! The object store shared by replicas: verified blobs under
//! `<prefix>blobs/sha256/<hex>`, behind each replica's local disk and in
//! front of the project and the upstream; manifests and tag records beside
//! them (`records`).
//!
//! Only verified bytes are published: a blob is uploaded from the cache file
//! after its fill has checked length and digest and stored it, and the
//! upload is completed only when the bytes sent are the stored size; any
//! failure aborts it, so no partial object is ever visible under a blob's
//! key (a multipart upload is invisible until completed). A replica that
//! reads a blob from the store verifies it like any other source; an object
//! that fails its digest is deleted, so the next miss goes on to the
//! upstream instead of failing again.
//!
//! The client is the `object_store` crate's S3 implementation (see
//! docs/design.md, "Crates, and why").

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::sync::Semaphore;

mod records;

pub use records::StoredManifest;

use crate::cache::pread;
use crate::config::BucketConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::Digest;

/// The name the store goes by in errors, logs and metrics.
pub const NAME: &str = "bucket";

/// Size of one part of a multipart upload; blobs up to it go in one `PUT`.
/// S3 wants parts of at least 5 MiB (but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// After a failed request, misses skip the bucket this long: a store that
/// is down costs one failed request per this interval, not a wait on every
/// miss.
const BACK_OFF: Duration = Duration::from_secs(5);

/// A blob found in the store: its size and a stream of its bytes from the
/// offset asked for.
pub struct Found {
    /// The whole object's size.
    pub size: u64,
    /// The bytes from the offset on.
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found").field("size", &self.size).finish()
    }
}

/// The shared store.
#[derive(Debug)]
pub struct Bucket {
    store: AmazonS3,
    prefix: String,
    uploads: Semaphore,
    timeout: Duration,
    /// Until when look-ups skip the store, after one failed.
    skip_until: std::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Bucket {
    /// A client for the configured store, or `None` when none is configured.
    /// Builds the client only; nothing is sent until a blob is needed.
    pub fn new(config: &BucketConfig, metrics: Arc<Metrics>) -> Result<Option<Bucket>> {
        let (Some(endpoint), Some(bucket)) = (&config.endpoint, &config.bucket) else {
            return Ok(None);
        };
        let (id, secret) = config
            .credentials
            .as_ref()
            .ok_or_else(|| Error::Storage("bucket credentials were not resolved".into()))?;
        // The store's HTTP client (reqwest) takes the process's default
        // TLS provider; lasti's own clients name theirs (ring) explicitly,
        // and with more than one provider built in there is no default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
            .with_bucket_name(bucket)
            .with_region(&config.region)
            .with_access_key_id(id.expose())
            .with_secret_access_key(secret.expose())
            .with_virtual_hosted_style_request(!config.path_style)
            // One quick retry: a miss waiting on the store waits for a
            // client too, and the registries have the blob anyway.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 1,
                retry_timeout: config.timeout,
            })
            // The client's own timeout covers the whole body, which a large
            // blob outlasts; lasti bounds the headers and each pause instead.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(endpoint.scheme() == "http")
                    .with_timeout_disabled()
                    .with_connect_timeout(config.timeout.min(Duration::from_secs(10))),
            )
            .build()
            .map_err(|e| Error::Storage(format!("bucket client: {e}")))?;
        Ok(Some(Bucket {
            store,
            prefix: config.prefix.clone(),
            uploads: Semaphore::new(config.max_uploads),
            timeout: config.timeout,
            skip_until: std::sync::Mutex::new(None),
            metrics,
        }))
    }

    /// Where a blob lives in the bucket.
    pub fn key(&self, digest: &Digest) -> Path {
        Path::from(format!(
            "{}blobs/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// The blob from `offset` on, or `None` when the store does not have it.
    pub async fn get(&self, digest: &Digest, offset: u64) -> Result<Option<Found>> {
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let key = self.key(digest);
        let Some(result) = self
            .look_up("get", self.store.get_opts(&key, options))
            .await?
        else {
            return Ok(None);
        };
        let size = result.meta.size;
        let metrics = Arc::clone(&self.metrics);
        // Each pause of the body is bounded, as for an upstream.
        let body = with_idle_timeout(result.into_stream(), self.timeout)
            .map(move |chunk| {
                let bytes = chunk?;
                metrics.bucket_bytes("in", bytes.len() as u64);
                Ok(bytes)
            })
            .boxed();
        Ok(Some(Found { size, body }))
    }

    /// The size of a blob the store has, or `None`: a `HEAD` answered for
    /// the registries.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        let key = self.key(digest);
        let meta = self.look_up("head", self.store.head(&key)).await?;
        Ok(meta.map(|meta| meta.size))
    }

    /// One look-up in the store, bounded by the timeout and counted: `None`
    /// when the object is not there, or when the store failed a moment ago
    /// (then it is not asked at all). A failure makes the next look-ups skip
    /// the store for [`BACK_OFF`].
    async fn look_up<T>(
        &self,
        op: &str,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>> {
        let started = Instant::now();
        if self.skipping(started) {
            self.metrics.bucket_result(op, "skipped");
            return Ok(None);
        }
        let answer = tokio::time::timeout(self.timeout, request)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        self.metrics.bucket_request(op, started.elapsed());
        match answer {
            Ok(found) => {
                self.metrics.bucket_result(op, "found");
                Ok(Some(found))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.metrics.bucket_result(op, "missing");
                Ok(None)
            }
            Err(e) => {
                self.metrics.bucket_result(op, "error");
                self.back_off();
                Err(unavailable(e))
            }
        }
    }

    /// Makes look-ups skip the store for [`BACK_OFF`], after a failure.
    fn back_off(&self) {
        *self.skip_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + BACK_OFF);
    }

    /// Whether look-ups skip the store for now, after a failure.
    fn skipping(&self, now: Instant) -> bool {
        let mut until = self.skip_until.lock().unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(t) if now < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Uploads a stored, verified blob of `size` bytes from `file`. Waits
    /// for one of `max_uploads` places first. The object appears whole or
    /// not at all.
    pub async fn publish(&self, digest: &Digest, file: Arc<File>, size: u64) -> Result<()> {
        let _place = self
            .uploads
            .acquire()
            .await
            .map_err(|_| Error::Storage("bucket closed".into()))?;
        let started = Instant::now();
        let key = self.key(digest);
        // At least 1 MB/s, or the upload is given up (and aborted).
        let deadline = self.timeout + Duration::from_secs(size / 1_000_000);
        let upload = async {
            if size <= PART_BYTES as u64 {
                let bytes = read_whole(file, size).await?;
                self.store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map(drop)
                    .map_err(unavailable)
            } else {
                self.put_in_parts(&key, file, size).await
            }
        };
        let outcome = tokio::time::timeout(deadline, upload)
            .await
            .unwrap_or_else(|_| Err(unavailable(timed_out())));
        self.metrics.bucket_request("put", started.elapsed());
        match &outcome {
            Ok(()) => {
                self.metrics.bucket_result("put", "stored");
                self.metrics.bucket_bytes("out", size);
            }
            Err(_) => {
                self.metrics.bucket_result("put", "error");
                self.back_off();
            }
        }
        outcome
    }

    async fn put_in_parts(&self, key: &Path, file: Arc<File>, size: u64) -> Result<()> {
        let upload = self.store.put_multipart(key).await.map_err(unavailable)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut sent = 0u64;
        let result = async {
            while sent < size {
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(unavailable)?;
                let len = (size - sent).min(PART_BYTES as u64) as usize;
                let part = pread::read(&file, sent, len).await.map_err(io)?;
                if part.is_empty() {
                    break;
                }
                sent += part.len() as u64;
                writer.put(part);
            }
            check_length(sent, size)
        }
        .await;
        match result {
            Ok(()) => writer.finish().await.map(drop).map_err(unavailable),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%key, error = %abort, "cannot abort a failed upload");
                }
                Err(e)
            }
        }
    }

    /// Removes a blob that failed its digest, so that the next miss does
    /// not read it again.
    pub async fn remove(&self, digest: &Digest) -> Result<()> {
        let started = Instant::now();
        let answer = self.store.delete(&self.key(digest)).await;
        self.metrics.bucket_request("delete", started.elapsed());
        match answer {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.metrics.bucket_result("delete", "removed");
                Ok(())
            }
            Err(e) => {
                self.metrics.bucket_result("delete", "error");
                Err(unavailable(e))
            }
        }
    }
}

/// Ends a body stream with an error when it pauses longer than `idle`,
/// and after its first error.
fn with_idle_timeout<S>(
    body: S,
    idle: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes>> + Send + 'static
where
    S: futures_util::Stream<Item = object_store::Result<Bytes>> + Send + Unpin + 'static,
{
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout(idle, body.next()).await {
            Err(_) => Some((Err(unavailable(timed_out())), None)),
            Ok(None) => None,
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
            Ok(Some(Err(e))) => Some((Err(unavailable(e)), None)),
        }
    })
}

fn timed_out() -> object_store::Error {
    object_store::Error::Generic {
        store: NAME,
        source: "no answer within the bucket timeout".into(),
    }
}

/// A store failure: like an upstream that is down, it sends the fill on to
/// the next source.
fn unavailable(e: object_store::Error) -> Error {
    Error::UpstreamUnavailable {
        upstream: NAME.to_string(),
        message: e.to_string(),
    }
}

fn io(e: std::io::Error) -> Error {
    Error::storage("read a blob to publish", e)
}

/// A small blob's whole file, read on the blocking pool.
async fn read_whole(file: Arc<File>, size: u64) -> Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; size as usize];
        pread::read_exact_at(&file, &mut buf, 0).map(|()| Bytes::from(buf))
    })
    .await
    .map_err(|e| Error::storage("read a blob to publish", e))?
    .map_err(io)
}

fn check_length(sent: u64, size: u64) -> Result<()> {
    match sent == size {
        true => Ok(()),
        false => Err(Error::Storage(format!(
            "the cache file holds {sent} bytes, not {size}: not published"
        ))),
    }
}
