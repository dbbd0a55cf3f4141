//! The object store shared by replicas: verified blobs under
//! `<prefix>blobs/sha256/<hex>`, behind each replica's local disk and in
//! front of the project and the upstream; manifests and tag records beside
//! them (`records`).
//!
//! Only verified bytes are published: a blob is uploaded from the cache file
//! after its fill has checked length and digest and stored it, and the
//! upload is completed only when the bytes sent are the stored size; any
//! failure (the time limit included) aborts it, so no partial object is
//! ever visible under a blob's key (a multipart upload is invisible until
//! completed). Every part but the last is a full [`PART_BYTES`], as S3
//! wants (AWS, Ceph RGW and MinIO refuse a middle part under 5 MiB).
//!
//! What is to be published waits in the journal (`journal`), not in
//! memory: a stored blob or manifest is owed first, and an uploader
//! (`pull_through::uploader`) publishes what is owed, `max_uploads` at
//! once, taking a blob's file (and its lease on eviction) only when its
//! upload starts. A store slower than the upstream makes the journal
//! longer, never the disk fuller. A replica that
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
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::cache::StoredBlob;
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

/// Tag records being written at once; a tag resolved past it is not
/// shared (the next upstream answer writes a fresh record).
const TAG_WRITES: usize = 16;

/// Why a blob or manifest was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The cache could not read what was to be sent (`EIO` on a cache
    /// file): the store is not at fault and is not backed off from.
    #[error("cannot read it from the cache: {0}")]
    Local(Error),
    /// The store failed, or did not take it within the time limit.
    #[error("{0}")]
    Store(Error),
}

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
    max_uploads: usize,
    /// Places for tag records being written.
    tag_writes: Arc<Semaphore>,
    /// Wakes the uploader when something is owed.
    owed: Arc<Notify>,
    timeout: Duration,
    /// Until when look-ups skip the store, after one failed.
    skip_until: std::sync::Mutex<Option<Instant>>,
    /// What is still to be published, and the multipart uploads in flight.
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
}

impl Bucket {
    /// A client for the configured store, or `None` when none is configured,
    /// with its journal in `data_dir`. Builds the client only; nothing is
    /// sent until a blob is needed. Opens the journal: call it on the
    /// blocking pool.
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
            // Requests are signed, their bodies not hashed for it
            // (`UNSIGNED-PAYLOAD`): nothing read from the store is trusted
            // (every read is checked against its digest, and answers are
            // never signed anyway), so a payload hash would protect nothing
            // lasti relies on, at the cost of one more SHA-256 pass over
            // every byte uploaded.
            .with_unsigned_payload(true)
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
            max_uploads: config.max_uploads,
            tag_writes: Arc::new(Semaphore::new(TAG_WRITES)),
            owed: Arc::new(Notify::new()),
            timeout: config.timeout,
            skip_until: std::sync::Mutex::new(None),
            journal: Arc::new(journal),
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
        if self.backing_off_for().is_some() {
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

    /// How long look-ups and uploads still skip the store, after a failure.
    pub fn backing_off_for(&self) -> Option<Duration> {
        let now = Instant::now();
        let until = *self.skip_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|t| now < *t).map(|t| t - now)
    }

    /// Owes the store a blob about to be stored: journaled before the
    /// blob is committed to the cache, so that no crash between the two
    /// leaves a stored blob never published (one owed but never stored is
    /// forgotten by the uploader). [`Bucket::wake_uploader`] once it is
    /// stored. Holds nothing (no file, no lease) while it is owed.
    pub async fn owe_blob(&self, digest: &Digest) {
        let item = Pending::Blob(digest.clone());
        self.note(move |j| j.owe(&item)).await;
    }

    /// Owes the store a manifest just stored, and wakes the uploader.
    pub async fn owe_manifest(&self, digest: &Digest) {
        let item = Pending::Manifest(digest.clone());
        self.note(move |j| j.owe(&item)).await;
        self.wake_uploader();
    }

    /// Tells the uploader something is owed.
    pub fn wake_uploader(&self) {
        self.owed.notify_one();
    }

    /// What the uploader waits on between rounds: notified when something
    /// is owed.
    pub fn owed_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.owed)
    }

    /// How many uploads run at once (`max_uploads`).
    pub fn max_uploads(&self) -> usize {
        self.max_uploads
    }

    /// A place to write one tag record, or `None` when [`TAG_WRITES`] are
    /// in flight already.
    pub fn tag_write_place(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.tag_writes).try_acquire_owned().ok()
    }

    /// Uploads a stored, verified blob, and settles it in the journal. The
    /// object appears whole or not at all; an upload not done within its
    /// time limit (at least 1 MB/s) is aborted.
    pub async fn publish(&self, digest: &Digest, blob: &StoredBlob) -> Result<(), PublishError> {
        let key = self.key(digest);
        let size = blob.size;
        let deadline = self.timeout + Duration::from_secs(size / 1_000_000);
        let started = Instant::now();
        let outcome = match size <= PART_BYTES as u64 {
            true => match blob.read_exact(0, size as usize).await.map_err(io) {
                Ok(bytes) => {
                    let put = self.store.put(&key, PutPayload::from(bytes));
                    within(deadline, async { put.await.map(drop).map_err(unavailable) })
                        .await
                        .map_err(PublishError::Store)
                }
                Err(e) => Err(PublishError::Local(e)),
            },
            false => self.put_in_parts(&key, blob, deadline).await,
        };
        self.count_write("put", started, outcome.as_ref().err());
        outcome?;
        self.metrics.bucket_bytes("out", size);
        let item = Pending::Blob(digest.clone());
        self.note(move |j| j.settle(&item)).await;
        Ok(())
    }

    /// Counts one write to the store under `op`; a store failure makes
    /// look-ups and uploads skip the store for [`BACK_OFF`], as a failed
    /// look-up does (a local one does not).
    fn count_write(&self, op: &str, started: Instant, failure: Option<&PublishError>) {
        self.metrics.bucket_request(op, started.elapsed());
        match failure {
            None => self.metrics.bucket_result(op, "stored"),
            Some(PublishError::Local(_)) => self.metrics.bucket_result(op, "local_error"),
            Some(PublishError::Store(_)) => {
                self.metrics.bucket_result(op, "error");
                self.back_off();
            }
        }
    }

    /// One small write to the store, within the timeout, counted under `op`.
    async fn store_within(
        &self,
        op: &str,
        write: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let started = Instant::now();
        let outcome = within(self.timeout, write).await;
        let failure = outcome.as_ref().err().cloned().map(PublishError::Store);
        self.count_write(op, started, failure.as_ref());
        outcome
    }

    /// A multipart upload of the file, [`PARTS_IN_FLIGHT`] parts at once,
    /// completed only when exactly `size` bytes were sent, within
    /// `deadline`, and aborted on any failure, the deadline included. Its
    /// id is journaled while it runs, so that an upload a crash cut off is
    /// aborted at the next start.
    async fn put_in_parts(
        &self,
        key: &Path,
        blob: &StoredBlob,
        deadline: Duration,
    ) -> Result<(), PublishError> {
        let create = async { self.store.create_multipart(key).await.map_err(unavailable) };
        let id = within(self.timeout, create)
            .await
            .map_err(PublishError::Store)?;
        let (journaled_id, journaled_key) = (id.clone(), key.to_string());
        self.note(move |j| j.upload_started(&journaled_id, &journaled_key))
            .await;
        let result = match tokio::time::timeout(deadline, self.send_parts(key, &id, blob)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Store(unavailable(timed_out()))),
        };
        if result.is_err() {
            let abort = within(self.timeout, async {
                self.store
                    .abort_multipart(key, &id)
                    .await
                    .map_err(unavailable)
            });
            if let Err(abort) = abort.await {
                tracing::warn!(%key, error = %abort, "cannot abort a failed upload");
                // Left in the journal: the next start aborts it.
                return result;
            }
        }
        self.note(move |j| j.upload_ended(&id)).await;
        result
    }

    /// The parts of a multipart upload, then its completion.
    async fn send_parts(
        &self,
        key: &Path,
        id: &object_store::MultipartId,
        blob: &StoredBlob,
    ) -> Result<(), PublishError> {
        let size = blob.size;
        let mut parts = Vec::new();
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut sent = 0u64;
        while sent < size {
            let len = (size - sent).min(PART_BYTES as u64) as usize;
            // Whole, whatever the page cache holds: a short part in the
            // middle fails the whole upload on a real S3.
            let part = blob
                .read_exact(sent, len)
                .await
                .map_err(|e| PublishError::Local(io(e)))?;
            sent += part.len() as u64;
            let index = in_flight.len() + parts.len();
            in_flight.push_back(self.store.put_part(key, id, index, PutPayload::from(part)));
            if in_flight.len() >= PARTS_IN_FLIGHT {
                let done = in_flight.next().await.expect("a part in flight");
                parts.push(done.map_err(|e| PublishError::Store(unavailable(e)))?);
            }
        }
        while let Some(done) = in_flight.next().await {
            parts.push(done.map_err(|e| PublishError::Store(unavailable(e)))?);
        }
        check_length(sent, size).map_err(PublishError::Local)?;
        self.store
            .complete_multipart(key, id, parts)
            .await
            .map(drop)
            .map_err(|e| PublishError::Store(unavailable(e)))
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

    /// What is still to be published, oldest first, with the stamp each is
    /// owed as of (for [`Bucket::forget`]).
    pub async fn owed(&self) -> Vec<(Pending, u64)> {
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

    /// Drops an item that cannot be published any more (evicted, or
    /// given up), unless it was owed again since `stamp`.
    pub async fn forget(&self, item: Pending, stamp: u64) {
        self.note(move |j| j.forget(&item, stamp)).await;
    }

    /// Drops an item owed for a fill that failed: nothing was stored.
    pub async fn unowe(&self, item: Pending) {
        self.note(move |j| j.settle(&item)).await;
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

    /// Removes a blob (one that failed its digest, so that the next miss
    /// does not read it again, or one purged). One already gone is no error.
    pub async fn remove(&self, digest: &Digest) -> Result<()> {
        self.delete(&self.key(digest)).await
    }

    /// Deletes an object; one already gone is no error.
    pub(crate) async fn delete(&self, key: &Path) -> Result<()> {
        let started = Instant::now();
        let answer = self.store.delete(key).await;
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

/// A store failure: it sends the fill on to the next source.
fn unavailable(e: object_store::Error) -> Error {
    Error::BucketUnavailable(e.to_string())
}

/// `write`, failed as the store's when not done within `limit`.
async fn within<T>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(unavailable(timed_out())))
}

fn io(e: std::io::Error) -> Error {
    Error::storage("read a blob to publish", e)
}

fn check_length(sent: u64, size: u64) -> Result<()> {
    match sent == size {
        true => Ok(()),
        false => Err(Error::Storage(format!(
            "the cache file holds {sent} bytes, not {size}: not published"
        ))),
    }
}
