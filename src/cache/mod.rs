//! The verified, content-addressed cache: blob files on disk, manifests hot
//! in memory, tag answers with their age, and single-flight fills.
//!
//! This module knows nothing of HTTP: callers ask for a digest and get a
//! stored file, a fill to follow, or a fill to feed.

mod dir_lock;
mod direct_read;
mod file_writer;
pub mod fill;
mod fill_error;
pub mod index;
pub mod mapped;
pub(crate) mod open_blobs;
pub(crate) mod pread;
mod purge;
pub mod reader;
mod sink;
pub mod store;
mod upkeep;
pub mod usage;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::Digest;
use dir_lock::DirLock;
use fill::{Fill, FillWriter, Subscription};
pub use fill_error::FillError;
use index::{Index, TagRecord};
use open_blobs::{OpenBlob, OpenBlobs, IN_MEMORY_UP_TO};
use store::{BlobStore, TempBlob};
use usage::{Lease, Usage};

/// Most tag answers kept in memory in front of the index.
const TAG_MEMORY_ENTRIES: u64 = 100_000;
/// Most manifest media types kept in memory (one per stored manifest).
const MANIFEST_TYPE_ENTRIES: u64 = 1_000_000;

/// A manifest as stored: the upstream's exact bytes and media type.
#[derive(Debug)]
pub struct Manifest {
    /// Its digest, checked against the bytes.
    pub digest: Digest,
    /// The media type the upstream served it with.
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Bytes,
}

/// A stored blob opened for reading.
#[derive(Debug)]
pub struct StoredBlob {
    /// The open file, shared by the reader.
    pub file: Arc<File>,
    /// Its size.
    pub size: u64,
    /// The manifest media type, when the blob is a manifest.
    pub manifest_type: Option<Arc<str>>,
    /// The whole content, when the blob is small enough to be kept in
    /// memory: served without touching the file.
    pub content: Option<Bytes>,
    /// Whether its reader may read what is not in the page cache around
    /// it (`cache.direct_reads`; see [`reader::BlobReader::reading_around_page_cache`]).
    pub direct_reads: bool,
    /// Keeps it from eviction while read.
    pub lease: Lease,
}

impl StoredBlob {
    /// Exactly `len` bytes from `offset` (from memory when the blob is
    /// kept there, else through the page cache on the blocking pool,
    /// waiting on the disk as it must): for whoever sends the blob on in
    /// pieces that may not come short, such as the parts of a multipart
    /// upload.
    pub async fn read_exact(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.size);
        let Some(end) = end else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} of a blob of {}", self.size),
            ));
        };
        match &self.content {
            Some(content) => Ok(content.slice(offset as usize..end as usize)),
            None => pread::read_from_disk(&self.file, offset, BytesMut::zeroed(len)).await,
        }
    }
}

/// What the cache holds for a digest.
#[derive(Debug)]
pub enum BlobLookup {
    /// Stored and verified.
    Stored(StoredBlob),
    /// Being fetched by someone else: follow it.
    Filling(Subscription),
    /// Not there: the caller must feed the writer; the subscription reads it.
    Missing(Box<FillWriter>, Subscription),
}

impl Inner {
    /// Syncs a verified temporary file, renames it into place and records
    /// it, the last two under the placement lock. A manifest's media type
    /// is recorded in the same critical section, so an eviction of the same
    /// digest cannot delete the new row. Blocks.
    fn store_blob(
        &self,
        temp: TempBlob,
        digest: &Digest,
        manifest_type: Option<&str>,
    ) -> std::io::Result<()> {
        let charge = temp.sync()?;
        {
            let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(media_type) = manifest_type {
                self.index
                    .put_manifest_type(digest, media_type)
                    .map_err(std::io::Error::other)?;
            }
            self.store.place(temp, digest)?;
            self.usage.insert(digest.clone(), charge, SystemTime::now());
            self.open_blobs.forget(digest);
        }
        if self.usage.over_quota() {
            self.evictor.notify_one();
        }
        self.store.sync_place(digest)
    }

    /// The media type of a stored manifest, `None` for any other blob; from
    /// memory, else from the index. Blocks.
    ///
    /// Only manifests are kept in memory: a blob is asked for when its file
    /// is opened (then kept open), and an entry per blob would cost a
    /// million entries' memory in a cache of a million blobs.
    fn manifest_type(&self, digest: &Digest) -> Option<Arc<str>> {
        if let Some(found) = self.manifest_types.get(digest) {
            return Some(found);
        }
        match self.index.manifest_type(digest) {
            Ok(Some(found)) => {
                let found: Arc<str> = Arc::from(found);
                self.manifest_types
                    .insert(digest.clone(), Arc::clone(&found));
                Some(found)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot read a manifest type");
                None
            }
        }
    }

    /// Deletes the files of blobs taken out of the usage table, unless a
    /// re-fill stored the same digest again since. Blocks.
    fn remove_victims(&self, victims: Vec<Digest>) {
        let mut removed = Vec::with_capacity(victims.len());
        for digest in victims {
            let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
            if self.usage.contains(&digest) {
                tracing::debug!(%digest, "stored again since it was chosen for eviction; kept");
                continue;
            }
            self.manifests.invalidate(&digest);
            self.manifest_types.invalidate(&digest);
            self.open_blobs.forget(&digest);
            match self.store.remove(&digest) {
                Ok(()) => {
                    tracing::debug!(%digest, "evicted");
                    removed.push(digest);
                }
                Err(e) => tracing::warn!(%digest, error = %e, "cannot evict"),
            }
        }
        self.metrics.evicted(removed.len());
        let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        removed.retain(|digest| !self.usage.contains(digest));
        if let Err(e) = self.index.remove_manifest_types(&removed) {
            tracing::warn!(error = %e, "cannot forget the media types of evicted manifests");
        }
    }
}

/// The cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: BlobStore,
    usage: Arc<Usage>,
    index: Index,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Held across a rename into `blobs/` and its record in `usage`, and
    /// across an eviction's check and unlink, so an eviction never deletes
    /// a file that a re-fill of the same digest has just stored.
    placing: Mutex<()>,
    /// Whether every blob file found at start is in `usage` (see `upkeep`).
    indexed: AtomicBool,
    /// The blocking-pool slots all fills' write and hash steps share.
    fill_slots: Arc<tokio::sync::Semaphore>,
    /// Hot blobs kept open, small ones in memory.
    open_blobs: OpenBlobs,
    /// The mapped windows handed out, for the server's `sendfile`.
    windows: Arc<mapped::Windows>,
    /// Wakes the eviction task.
    evictor: Arc<tokio::sync::Notify>,
    manifests: moka::sync::Cache<Digest, Arc<Manifest>>,
    /// The media types of manifests read from the index, or stored; other
    /// blobs have no entry (see `Inner::manifest_type`).
    manifest_types: moka::sync::Cache<Digest, Arc<str>>,
    tags: moka::sync::Cache<String, TagRecord>,
    metrics: Arc<Metrics>,
    max_blob_size: u64,
    /// Whether large fills bypass the page cache (`cache.direct_writes`).
    direct_writes: bool,
    /// Whether a lone hit reads a large blob's uncached ranges around the
    /// page cache (`cache.direct_reads`).
    direct_reads: bool,
}

impl Cache {
    /// Opens the cache in `data_dir`: locks it (one process per
    /// directory), cleans temporary files and opens the index; the blob files are indexed in the background.
    pub async fn open(
        data_dir: &Path,
        config: &CacheConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Cache> {
        let data_dir = data_dir.to_path_buf();
        let config = config.clone();
        let cache =
            tokio::task::spawn_blocking(move || Cache::open_blocking(&data_dir, &config, metrics))
                .await
                .map_err(|e| Error::storage("open", e))??;
        upkeep::start(&cache.inner);
        Ok(cache)
    }

    fn open_blocking(
        data_dir: &Path,
        config: &CacheConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Cache> {
        // The lock comes first: the store cleans tmp/, which would delete
        // another process's fills in progress.
        let lock = DirLock::acquire(data_dir)?;
        let store =
            BlobStore::open(data_dir, lock).map_err(|e| Error::storage("open blob store", e))?;
        let index = Index::open(&data_dir.join("index.redb"))?;
        let manifests = moka::sync::Cache::builder()
            .max_capacity(config.manifest_memory.as_u64())
            .weigher(|_, m: &Arc<Manifest>| m.bytes.len().try_into().unwrap_or(u32::MAX))
            .build();
        tracing::info!(dir = %data_dir.display(), "cache opened");
        let inner = Inner {
            store,
            usage: Usage::new(config.max_size.as_u64()),
            index,
            fills: Mutex::new(HashMap::new()),
            placing: Mutex::new(()),
            indexed: AtomicBool::new(false),
            fill_slots: sink::io_slots(),
            open_blobs: OpenBlobs::default(),
            windows: Arc::default(),
            evictor: Arc::new(tokio::sync::Notify::new()),
            manifests,
            manifest_types: moka::sync::Cache::new(MANIFEST_TYPE_ENTRIES),
            tags: moka::sync::Cache::new(TAG_MEMORY_ENTRIES),
            metrics,
            max_blob_size: config.max_blob_size.as_u64(),
            direct_writes: config.direct_writes,
            direct_reads: config.direct_reads,
        };
        Ok(Cache {
            inner: Arc::new(inner),
        })
    }

    /// The windows of stored blobs handed out as mapped memory: a
    /// connection that sends them with `sendfile` looks its buffers up here.
    pub fn windows(&self) -> &Arc<mapped::Windows> {
        &self.inner.windows
    }

    /// Marks a blob used without reading it (a manifest served from memory,
    /// a tag answered from its record), so eviction sees it as hot; its
    /// file's modification time is refreshed when stale.
    pub fn touch(&self, digest: &Digest) {
        let Some((_lease, persist)) = self.inner.usage.lease(digest) else {
            return;
        };
        if persist {
            let path = self.inner.store.path(digest);
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::options().append(true).open(path)?;
                file.set_modified(SystemTime::now())
            });
        }
    }

    /// Writes the last use of every blob used since its file's time was
    /// last set into that time, so the next start orders them as they were
    /// used (a use refreshes the time at most once a minute); at shutdown.
    /// How many files were set.
    pub async fn persist_recency(&self) -> usize {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut set = 0;
            for (digest, last_use) in inner.usage.unpersisted() {
                let path = inner.store.path(&digest);
                let file = std::fs::File::options().append(true).open(path);
                match file.and_then(|f| f.set_modified(last_use)) {
                    Ok(()) => set += 1,
                    Err(e) => tracing::debug!(%digest, error = %e, "cannot keep a blob's last use"),
                }
            }
            set
        })
        .await
        .unwrap_or(0)
    }

    /// Whether every blob file found at start is indexed.
    pub fn indexed(&self) -> bool {
        self.inner.indexed.load(Ordering::Acquire)
    }

    /// Leases a stored blob; while indexing runs, one not yet indexed is
    /// looked up on disk and recorded.
    async fn lease(&self, digest: &Digest) -> Result<Option<(Lease, bool)>> {
        if let Some(leased) = self.inner.usage.lease(digest) {
            return Ok(Some(leased));
        }
        if self.indexed() {
            return Ok(None);
        }
        let inner = Arc::clone(&self.inner);
        let d = digest.clone();
        tokio::task::spawn_blocking(move || {
            let _placing = inner.placing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, meta)) = inner.store.open_blob(&d)? {
                let last_use = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                inner
                    .usage
                    .insert_found([(d.clone(), store::charge(&meta), last_use)]);
            }
            Ok::<_, std::io::Error>(inner.usage.lease(&d))
        })
        .await
        .map_err(|e| Error::storage("open blob", e))?
        .map_err(|e| Error::storage("open blob", e))
    }

    /// Opens a stored blob, leasing it; `None` when it is not stored.
    pub async fn stored_blob(&self, digest: &Digest) -> Result<Option<StoredBlob>> {
        let Some((lease, touch)) = self.lease(digest).await? else {
            return Ok(None);
        };
        let open = match self.inner.open_blobs.get(digest) {
            Some(open) => {
                if touch {
                    let file = Arc::clone(&open.file);
                    tokio::task::spawn_blocking(move || file.set_modified(SystemTime::now()));
                }
                open
            }
            None => match self.open_blob(digest, touch).await? {
                Some(open) => open,
                None => {
                    tracing::warn!(%digest, "blob vanished from the store; forgetting it");
                    self.inner.usage.forget(digest);
                    return Ok(None);
                }
            },
        };
        Ok(Some(StoredBlob {
            file: Arc::clone(&open.file),
            size: open.size,
            manifest_type: open.manifest_type.clone(),
            content: open.content.clone(),
            direct_reads: self.inner.direct_reads,
            lease,
        }))
    }

    /// Opens a stored blob on the blocking pool (reading it whole when it
    /// is small) and keeps it open; `None` when its file is gone.
    async fn open_blob(&self, digest: &Digest, touch: bool) -> Result<Option<Arc<OpenBlob>>> {
        let inner = Arc::clone(&self.inner);
        let d = digest.clone();
        tokio::task::spawn_blocking(move || {
            let Some((file, meta)) = inner.store.open_blob(&d)? else {
                return Ok(None);
            };
            if touch {
                let _ = file.set_modified(SystemTime::now());
            }
            let size = meta.len();
            let content = match size <= IN_MEMORY_UP_TO {
                true => {
                    let mut buf = vec![0u8; size as usize];
                    pread::read_exact_at(&file, &mut buf, 0)?;
                    Some(Bytes::from(buf))
                }
                false => None,
            };
            let open = Arc::new(OpenBlob {
                file: Arc::new(file),
                size,
                manifest_type: inner.manifest_type(&d),
                content,
            });
            // Kept only while stored, without the placement lock (which a
            // manifest's store holds across a metadata commit). Kept first,
            // checked after: an eviction takes a blob out of the usage table
            // before it forgets its open file, so either that forgets this
            // one or this check sees the blob gone.
            inner.open_blobs.insert(d.clone(), Arc::clone(&open));
            if !inner.usage.contains(&d) {
                inner.open_blobs.forget(&d);
            }
            Ok::<_, std::io::Error>(Some(open))
        })
        .await
        .map_err(|e| Error::storage("open blob", e))?
        .map_err(|e| Error::storage("open blob", e))
    }

    /// Finds a blob: stored, being filled, or missing (then a fill starts and
    /// the caller becomes its leader).
    pub async fn lookup(&self, digest: &Digest) -> Result<BlobLookup> {
        if let Some(blob) = self.stored_blob(digest).await? {
            return Ok(BlobLookup::Stored(blob));
        }
        if let Some(sub) = self.filling(digest) {
            return Ok(BlobLookup::Filling(sub));
        }
        let inner = Arc::clone(&self.inner);
        let temp = tokio::task::spawn_blocking(move || inner.store.temp())
            .await
            .map_err(|e| Error::storage("create temp file", e))?
            .map_err(|e| Error::storage("create temp file", e))?;
        if let Some(found) = self.join_or_start(digest, temp) {
            return Ok(found);
        }
        // Committed between the first look and the fills lock.
        match self.stored_blob(digest).await? {
            Some(blob) => Ok(BlobLookup::Stored(blob)),
            None => Err(Error::Storage("blob vanished while opening".into())),
        }
    }

    /// Under the fills lock: follow a fill, or start one on `temp`; `None`
    /// when the blob got stored meanwhile. An unused `temp` is removed.
    fn join_or_start(&self, digest: &Digest, temp: TempBlob) -> Option<BlobLookup> {
        let mut fills = self.inner.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = fills.get(digest) {
            return Some(BlobLookup::Filling(fill.subscribe()));
        }
        if self.inner.usage.contains(digest) {
            return None;
        }
        let (fill, writer) = Fill::start(self.clone(), digest.clone(), temp);
        let sub = fill.subscribe();
        fills.insert(digest.clone(), fill);
        Some(BlobLookup::Missing(Box::new(writer), sub))
    }

    /// Follows a fill in progress, if there is one; never starts one.
    pub fn filling(&self, digest: &Digest) -> Option<Subscription> {
        let fills = self.inner.fills.lock().unwrap_or_else(|p| p.into_inner());
        fills.get(digest).map(|fill| fill.subscribe())
    }

    /// Follows a fill in progress that reads from a registry, if there is
    /// one. A replica asked for a blob only if held may serve this one:
    /// no peer feeds it, so the asker cannot be feeding it in turn.
    pub fn filling_from_registry(&self, digest: &Digest) -> Option<Subscription> {
        let fills = self.inner.fills.lock().unwrap_or_else(|p| p.into_inner());
        let fill = fills.get(digest).filter(|fill| fill.is_from_registry())?;
        Some(fill.subscribe())
    }

    /// Stores a verified fill and evicts past the quota. A failure here is
    /// logged, never passed to readers: they already have verified bytes.
    async fn commit_fill(&self, temp: TempBlob, digest: &Digest) {
        let inner = Arc::clone(&self.inner);
        let d = digest.clone();
        let committed = tokio::task::spawn_blocking(move || inner.store_blob(temp, &d, None)).await;
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(%digest, error = %e, "cannot store a verified blob"),
            Err(e) => tracing::error!(%digest, error = %e, "blob commit task failed"),
        }
    }

    fn end_fill(&self, digest: &Digest) {
        let mut fills = self.inner.fills.lock().unwrap_or_else(|p| p.into_inner());
        fills.remove(digest);
    }

    /// A stored manifest by digest, from memory or disk.
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>> {
        if let Some(m) = self.inner.manifests.get(digest) {
            self.touch(digest);
            return Ok(Some(m));
        }
        let Some(blob) = self.stored_blob(digest).await? else {
            return Ok(None);
        };
        let Some(media_type) = blob.manifest_type.clone() else {
            return Ok(None);
        };
        let bytes = match blob.content {
            Some(content) => content,
            None => tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; blob.size as usize];
                pread::read_exact_at(&blob.file, &mut buf, 0)?;
                Ok::<_, std::io::Error>(Bytes::from(buf))
            })
            .await
            .map_err(|e| Error::storage("read manifest", e))?
            .map_err(|e| Error::storage("read manifest", e))?,
        };
        let manifest = Arc::new(Manifest {
            digest: digest.clone(),
            media_type: media_type.to_string(),
            bytes,
        });
        self.inner
            .manifests
            .insert(digest.clone(), Arc::clone(&manifest));
        Ok(Some(manifest))
    }

    /// A stored manifest by digest, read without marking it used: listings
    /// (`lasti ls`, `/admin/cache`) must not change what is evicted next or
    /// the last-use times they show.
    pub async fn peek_manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>> {
        if let Some(m) = self.inner.manifests.get(digest) {
            return Ok(Some(m));
        }
        let Some(lease) = self.inner.usage.peek_lease(digest) else {
            return Ok(None);
        };
        let inner = Arc::clone(&self.inner);
        let d = digest.clone();
        let read = tokio::task::spawn_blocking(move || {
            let Some(media_type) = inner.manifest_type(&d) else {
                return Ok(None);
            };
            let Some((file, meta)) = inner.store.open_blob(&d)? else {
                return Ok(None);
            };
            let mut buf = vec![0u8; meta.len() as usize];
            pread::read_exact_at(&file, &mut buf, 0)?;
            Ok::<_, std::io::Error>(Some(Manifest {
                digest: d,
                media_type: media_type.to_string(),
                bytes: Bytes::from(buf),
            }))
        })
        .await
        .map_err(|e| Error::storage("read manifest", e))?
        .map_err(|e| Error::storage("read manifest", e))?;
        drop(lease);
        Ok(read.map(Arc::new))
    }

    /// Stores a manifest whose digest the caller verified.
    pub async fn put_manifest(&self, manifest: Arc<Manifest>) -> Result<()> {
        self.inner
            .manifests
            .insert(manifest.digest.clone(), Arc::clone(&manifest));
        if self.inner.manifest_types.contains_key(&manifest.digest)
            && self.inner.usage.contains(&manifest.digest)
        {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let m = Arc::clone(&manifest);
        tokio::task::spawn_blocking(move || {
            let temp = inner
                .store
                .temp()
                .map_err(|e| Error::storage("create temp file", e))?;
            temp.file()
                .write_all(&m.bytes)
                .map_err(|e| Error::storage("write manifest", e))?;
            inner
                .store_blob(temp, &m.digest, Some(&m.media_type))
                .map_err(|e| Error::storage("commit manifest", e))?;
            inner
                .manifest_types
                .insert(m.digest.clone(), Arc::from(m.media_type.as_str()));
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::storage("store manifest", e))??;
        Ok(())
    }

    /// The last known answer for a tag.
    pub async fn tag(&self, key: &str) -> Result<Option<TagRecord>> {
        if let Some(record) = self.inner.tags.get(key) {
            return Ok(Some(record));
        }
        let inner = Arc::clone(&self.inner);
        let k = key.to_string();
        let found = tokio::task::spawn_blocking(move || inner.index.tag(&k))
            .await
            .map_err(|e| Error::storage("read tag", e))??;
        if let Some(record) = &found {
            self.inner.tags.insert(key.to_string(), record.clone());
        }
        Ok(found)
    }

    /// Records a tag's answer, durably.
    pub async fn put_tag(&self, key: &str, record: TagRecord) -> Result<()> {
        self.inner.tags.insert(key.to_string(), record.clone());
        let inner = Arc::clone(&self.inner);
        let k = key.to_string();
        tokio::task::spawn_blocking(move || inner.index.put_tag(&k, &record))
            .await
            .map_err(|e| Error::storage("write tag", e))?
    }

    /// A signature verdict kept by [`Cache::put_verdicts`].
    pub async fn verdict(&self, key: &str) -> Result<Option<String>> {
        let inner = Arc::clone(&self.inner);
        let k = key.to_string();
        tokio::task::spawn_blocking(move || inner.index.verdict(&k))
            .await
            .map_err(|e| Error::storage("read verdict", e))?
    }

    /// Keeps signature verdicts that hold for good, durably: a restart
    /// does not check a signed image again.
    pub async fn put_verdicts(&self, verdicts: Vec<(String, &'static str)>) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.put_verdicts(&verdicts))
            .await
            .map_err(|e| Error::storage("write verdicts", e))?
    }

    /// Every tag record, for listing what the cache holds.
    pub async fn tag_records(&self) -> Result<Vec<(String, TagRecord)>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.tags())
            .await
            .map_err(|e| Error::storage("list tags", e))?
    }

    /// When a stored blob or manifest was last used, if it is stored.
    pub fn last_use(&self, digest: &Digest) -> Option<SystemTime> {
        self.inner.usage.last_use(digest)
    }

    /// The most bytes the cache keeps (`cache.max_size`).
    pub fn quota(&self) -> u64 {
        self.inner.usage.quota()
    }

    /// Bytes and objects stored.
    pub fn usage(&self) -> (u64, usize) {
        (self.inner.usage.total_bytes(), self.inner.usage.count())
    }

    /// Whether the cache can serve: the data directory is writable and the
    /// index answers. For `/readyz`.
    pub async fn check_ready(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            inner
                .store
                .probe()
                .map_err(|e| Error::storage("data directory", e))?;
            inner.index.tag("readiness probe").map(drop)
        })
        .await
        .map_err(|e| Error::storage("readiness", e))?
    }

    /// The largest blob a fill accepts.
    pub fn max_blob_size(&self) -> u64 {
        self.inner.max_blob_size
    }

    /// The metrics handles, for the cache's callers.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Fills in progress.
    pub fn fills_in_flight(&self) -> usize {
        self.inner.fills.lock().map(|f| f.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
