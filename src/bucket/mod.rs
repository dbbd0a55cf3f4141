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

pub mod journal;
mod records;

pub use journal::Pending;
pub use records::StoredManifest;

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use tokio::sync::Semaphore;

use crate::cache::pread;
use crate::config::BucketConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::Digest;
use journal::Journal;

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

/// The journal's file in the data directory.
pub const JOURNAL_FILE: &str = "bucket.redb";

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
    /// What is still to be published, and the multipart uploads in flight.
    journal: Arc<Journal>,
    /// Blobs being uploaded now: a catch-up round does not upload them twice.
    publishing: std::sync::Mutex<std::collections::HashSet<Digest>>,
    metrics: Arc<Metrics>,
}

impl Bucket {
    /// A client for the configured store, or `None` when none is configured,
    /// with its journal in `data_dir`. Builds the client only; nothing is
    /// sent until a blob is needed.
    pub fn new(
        config: &BucketConfig,
        data_dir: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Bucket>> {
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
        let journal = Journal::open(&data_dir.join(JOURNAL_FILE))?;
        Ok(Some(Bucket {
            store,
            prefix: config.prefix.clone(),
            uploads: Semaphore::new(config.max_uploads),
            timeout: config.timeout,
            skip_until: std::sync::Mutex::new(None),
            journal: Arc::new(journal),
            publishing: Default::default(),
            metrics,
        }))
    }

    /// Where a blob lives in the bucket.
    pub fn key(&self, digest: &Digest) -> Path {
        self.content_key("blobs", digest)
    }

    /// `<prefix><kind>/<algorithm>/<hex>`: where content addressed by
    /// `digest` lives.
    fn content_key(&self, kind: &str, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{kind}/{}/{}",
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
        let Some(_publishing) = Publishing::claim(self, digest) else {
            return Ok(());
        };
        let item = Pending::Blob(digest.clone());
        self.note(move |j| j.owe(&item)).await;
        let _place = self
            .uploads
            .acquire()
            .await
            .map_err(|_| Error::Storage("bucket closed".into()))?;
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
        self.store_within("put", deadline, upload).await?;
        self.metrics.bucket_bytes("out", size);
        let item = Pending::Blob(digest.clone());
        self.note(move |j| j.settle(&item)).await;
        Ok(())
    }

    /// One write to the store, given up after `deadline` and counted under
    /// `op`. A failure makes look-ups skip the store for [`BACK_OFF`], as a
    /// failed look-up does.
    async fn store_within(
        &self,
        op: &str,
        deadline: Duration,
        write: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(deadline, write)
            .await
            .unwrap_or_else(|_| Err(unavailable(timed_out())));
        self.metrics.bucket_request(op, started.elapsed());
        match &outcome {
            Ok(()) => self.metrics.bucket_result(op, "stored"),
            Err(_) => {
                self.metrics.bucket_result(op, "error");
                self.back_off();
            }
        }
        outcome
    }

    /// A multipart upload of the file, [`PARTS_IN_FLIGHT`] parts at once,
    /// completed only when exactly `size` bytes were sent and aborted on any
    /// failure. Its id is journaled while it runs, so that an upload a
    /// crash cut off is aborted at the next start.
    async fn put_in_parts(&self, key: &Path, file: Arc<File>, size: u64) -> Result<()> {
        let id = self
            .store
            .create_multipart(key)
            .await
            .map_err(unavailable)?;
        let (journaled_id, journaled_key) = (id.clone(), key.to_string());
        self.note(move |j| j.upload_started(&journaled_id, &journaled_key))
            .await;
        let result = async {
            let mut parts = Vec::new();
            let mut in_flight = futures_util::stream::FuturesOrdered::new();
            let mut sent = 0u64;
            while sent < size {
                let len = (size - sent).min(PART_BYTES as u64) as usize;
                let part = pread::read(&file, sent, len).await.map_err(io)?;
                if part.is_empty() {
                    break;
                }
                sent += part.len() as u64;
                let index = in_flight.len() + parts.len();
                in_flight.push_back(self.store.put_part(key, &id, index, PutPayload::from(part)));
                if in_flight.len() >= PARTS_IN_FLIGHT {
                    let done = in_flight.next().await.expect("a part in flight");
                    parts.push(done.map_err(unavailable)?);
                }
            }
            while let Some(done) = in_flight.next().await {
                parts.push(done.map_err(unavailable)?);
            }
            check_length(sent, size)?;
            self.store
                .complete_multipart(key, &id, parts)
                .await
                .map(drop)
                .map_err(unavailable)
        }
        .await;
        if result.is_err() {
            if let Err(abort) = self.store.abort_multipart(key, &id).await {
                tracing::warn!(%key, error = %abort, "cannot abort a failed upload");
                // Left in the journal: the next start aborts it.
                return result;
            }
        }
        self.note(move |j| j.upload_ended(&id)).await;
        result
    }

    /// Aborts the multipart uploads an earlier run started and never
    /// ended (it crashed, or could not abort them); their parts are
    /// invisible but take space. Returns how many were aborted.
    pub async fn sweep_uploads(&self) -> usize {
        let journal = Arc::clone(&self.journal);
        let uploads = tokio::task::spawn_blocking(move || journal.uploads())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let mut aborted = 0;
        for (id, key) in uploads {
            let path = Path::from(key.as_str());
            match self.store.abort_multipart(&path, &id).await {
                // Gone already (completed, or removed by a lifecycle rule).
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    aborted += 1;
                    self.note(move |j| j.upload_ended(&id)).await;
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot abort an upload left by an earlier run");
                    break;
                }
            }
        }
        aborted
    }

    /// What is still to be published, oldest first.
    pub async fn owed(&self) -> Vec<Pending> {
        let journal = Arc::clone(&self.journal);
        match tokio::task::spawn_blocking(move || journal.owed()).await {
            Ok(Ok(owed)) => owed,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the bucket journal");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Drops an item that cannot be published any more (evicted).
    pub async fn forget(&self, item: Pending) {
        self.note(move |j| j.settle(&item)).await;
    }

    /// Whether the store failed a moment ago (misses skip it for now).
    pub fn is_backing_off(&self) -> bool {
        self.skipping(Instant::now())
    }

    /// Writes to the journal on the blocking pool. A journal that cannot be
    /// written costs only a retry after a crash: logged, not fatal.
    async fn note(&self, change: impl FnOnce(&Journal) -> Result<()> + Send + 'static) {
        let journal = Arc::clone(&self.journal);
        match tokio::task::spawn_blocking(move || change(&journal)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the bucket journal"),
            Err(e) => tracing::warn!(error = %e, "cannot write the bucket journal"),
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

/// A blob's place among those being uploaded, given up when dropped.
struct Publishing<'a> {
    bucket: &'a Bucket,
    digest: Digest,
}

impl<'a> Publishing<'a> {
    /// `None` when the blob is being uploaded already.
    fn claim(bucket: &'a Bucket, digest: &Digest) -> Option<Publishing<'a>> {
        let mut set = bucket.publishing.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(digest.clone()).then(|| Publishing {
            bucket,
            digest: digest.clone(),
        })
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        let mut set = self
            .bucket
            .publishing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.remove(&self.digest);
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
