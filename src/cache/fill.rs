//! Single-flight fills: one upstream fetch per digest, however many clients
//! ask for it at once.
//!
//! The first request for a missing blob becomes the leader: it gets a
//! [`FillWriter`] that a spawned task feeds from the upstream, so a leader
//! whose client goes away does not cancel the fetch. Every request, the
//! leader's included, reads through a [`Subscription`]:
//!
//! * *live*: a reader that joined before the first byte receives each chunk as
//!   the same `Bytes` the upstream delivered, through a bounded broadcast
//!   channel (a reference count, never a copy);
//! * *file*: a reader that joined late, asked for a range, or fell more than
//!   [`LIVE_CHANNEL_CAPACITY`] chunks behind reads the growing temporary file,
//!   woken by a `watch` of how many bytes are published.
//!
//! A slow reader therefore never slows the fetch, and memory per fill is
//! bounded by the channel. Bytes are *published* only once written to the
//! file; the chunk that completes the blob is held back until the digest and
//! length verify, so no reader ever completes a blob that fails its check.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use super::fill_error::FillError;
use super::sink;
use super::store::TempBlob;
use super::Cache;
use crate::error::Error;
use crate::oci::{Digest, Hasher};

/// Chunks a live reader may fall behind before it switches to reading the file.
pub const LIVE_CHANNEL_CAPACITY: usize = 64;

/// A message to live readers.
#[derive(Debug, Clone)]
pub enum LiveMsg {
    /// The next chunk, already written to the file.
    Data(Bytes),
    /// The blob is complete and verified.
    End,
    /// The fill failed; the reader must abort its client's stream.
    Failed(Error),
}

/// Where a fill stands.
#[derive(Debug, Clone, Default)]
pub enum FillState {
    /// The upstream has not answered yet.
    #[default]
    Pending,
    /// Bytes are flowing.
    Running,
    /// Every byte is published and verified.
    Complete,
    /// The fill failed; nothing was stored.
    Failed(Error),
}

/// What readers watch.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The blob's size, once the upstream said it.
    pub size: Option<u64>,
    /// The upstream's content type, passed on to clients.
    pub media_type: Option<String>,
    /// Bytes written to the file and released to readers.
    pub published: u64,
    /// Bytes sent on the live channel, whether or not the file holds them:
    /// a reader may join the channel only while this is 0, or it would take
    /// a later chunk for the first.
    pub streamed: u64,
    /// The fill's state.
    pub state: FillState,
    /// The cache file stopped being written (a full disk); only live
    /// readers get the rest.
    pub uncached: bool,
    /// The kind of source feeding the fill now (`bucket`, `peer`,
    /// `project`, `upstream`): when the fill is done, the one its last
    /// bytes came from. For the access log.
    pub source: Option<&'static str>,
    /// The temporary file opened with `O_DIRECT`, once the fill writes
    /// around the page cache (and `cache.direct_reads` is on): the lone
    /// reader of the file reads the whole blocks below the published tail
    /// through it.
    pub direct: Option<Arc<File>>,
}

/// One fill in progress.
#[derive(Debug)]
pub struct Fill {
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    live: broadcast::Sender<LiveMsg>,
    /// How many of its readers read its file (not the live channel).
    file_readers: Arc<AtomicUsize>,
    /// Whether readers may read the file around the page cache when the
    /// fill writes it so (`cache.direct_reads`).
    direct_reads: bool,
    /// Set once the fill reads from a registry: from then on no other
    /// replica feeds it, so one may follow it without closing a circle.
    from_registry: AtomicBool,
}

impl Fill {
    /// Creates a fill over a fresh temporary file, and the writer that owns it.
    pub(super) fn start(cache: Cache, digest: Digest, temp: TempBlob) -> (Arc<Fill>, FillWriter) {
        let fill = Arc::new(Fill {
            file: temp.shared_file(),
            progress: watch::Sender::new(Progress::default()),
            live: broadcast::Sender::new(LIVE_CHANNEL_CAPACITY),
            file_readers: Arc::new(AtomicUsize::new(0)),
            direct_reads: cache.inner.direct_reads,
            from_registry: AtomicBool::new(false),
        });
        let writer = FillWriter {
            fill: Arc::clone(&fill),
            cache,
            pending: Some((temp, Hasher::new(digest.algorithm()))),
            digest,
            sink: None,
            written: 0,
            size: None,
            finished: false,
        };
        (fill, writer)
    }

    /// Releases a chunk to every reader: through the file when it is in
    /// it (`in_file`), else to live readers only.
    pub(super) fn publish(&self, chunk: Bytes, in_file: bool) {
        let len = chunk.len() as u64;
        // Progress first, then the channel: see `Fill::subscribe`.
        self.progress.send_modify(|p| {
            p.streamed += len;
            if in_file {
                p.published += len;
            }
        });
        let _ = self.live.send(LiveMsg::Data(chunk));
    }

    /// The fill writes its file around the page cache, through `direct`;
    /// its readers read it so too, unless `cache.direct_reads` is off.
    pub(super) fn writes_directly(&self, direct: Arc<File>) {
        if self.direct_reads {
            self.progress.send_modify(|p| p.direct = Some(direct));
        }
    }

    /// The cache file could not be written: readers of the file stop at
    /// what it holds, live readers go on.
    pub(super) fn stop_caching(&self) {
        self.progress.send_modify(|p| p.uncached = true);
    }

    /// Whether the fill reads from a registry (see
    /// [`FillWriter::reading_registry`]).
    pub fn is_from_registry(&self) -> bool {
        self.from_registry.load(Ordering::SeqCst)
    }

    /// Joins the fill as a reader.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        // Subscribe to the live channel before reading the progress: if nothing
        // was streamed by then, every chunk will arrive on the channel. A
        // later joiner reads the file, which fails it cleanly when the file
        // stopped being written.
        let live = self.live.subscribe();
        let progress = self.progress.subscribe();
        let live = (progress.borrow().streamed == 0).then_some(live);
        Subscription {
            file: Arc::clone(&self.file),
            live,
            progress,
            readers: FillReaders {
                count: Arc::clone(&self.file_readers),
                counted: false,
            },
        }
    }
}

/// A reader's handle on a fill.
#[derive(Debug)]
pub struct Subscription {
    pub(super) file: Arc<File>,
    pub(super) live: Option<broadcast::Receiver<LiveMsg>>,
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) readers: FillReaders,
}

/// A reader's place among the readers of a fill's file. Readers on the
/// live channel do not count: they never read the file. A reader counts
/// from its first read of the file until it is dropped, whether or not the
/// fill has ended meanwhile.
#[derive(Debug)]
pub struct FillReaders {
    count: Arc<AtomicUsize>,
    counted: bool,
}

impl FillReaders {
    /// Counts this reader among the file's readers (once), and tells
    /// whether it is the only one.
    pub fn alone(&mut self) -> bool {
        if !self.counted {
            self.counted = true;
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        self.count.load(Ordering::SeqCst) == 1
    }
}

impl Drop for FillReaders {
    fn drop(&mut self) {
        if self.counted {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Subscription {
    /// A view of the fill's progress, which outlives the reader: the access
    /// log reads the fill's source from it when the response ends.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until the upstream has answered, so the size and type are known.
    pub async fn ready(&mut self) -> Result<Progress, Error> {
        loop {
            let progress = self.progress.borrow_and_update().clone();
            match &progress.state {
                FillState::Failed(err) => return Err(err.clone()),
                FillState::Pending => {}
                _ => return Ok(progress),
            }
            if self.progress.changed().await.is_err() {
                return Err(Error::Storage("fill abandoned".into()));
            }
        }
    }
}

/// Feeds a fill. Dropping it without [`FillWriter::finish`] fails the fill.
///
/// Chunks go to a [`sink`] on a blocking thread that writes, hashes and
/// publishes them, so reading the next chunk from the network overlaps with
/// the disk write and the hash of this one.
#[derive(Debug)]
pub struct FillWriter {
    fill: Arc<Fill>,
    cache: Cache,
    digest: Digest,
    pending: Option<(TempBlob, Hasher)>,
    sink: Option<sink::Handle>,
    written: u64,
    size: Option<u64>,
    finished: bool,
}

impl FillWriter {
    /// Records what the first source said of the blob; readers waiting in
    /// [`Subscription::ready`] proceed. Each later source (a resume, or the
    /// next tier) says it again: a size other than the first is refused,
    /// since readers and the sink hold the first.
    pub fn start(
        &mut self,
        size: Option<u64>,
        media_type: Option<String>,
    ) -> Result<(), FillError> {
        if self.pending.is_none() {
            return match (self.size, size) {
                (Some(announced), Some(now)) if announced != now => {
                    Err(FillError::SizeChanged { announced, now })
                }
                _ => Ok(()),
            };
        }
        self.size = size;
        self.fill.progress.send_modify(|p| {
            p.size = size;
            p.media_type = media_type;
            p.state = FillState::Running;
        });
        if let Some((temp, hasher)) = self.pending.take() {
            let slots = Arc::clone(&self.cache.inner.fill_slots);
            let fill = Arc::clone(&self.fill);
            let direct = self.cache.inner.direct_writes;
            self.sink = Some(sink::spawn(fill, temp, hasher, size, slots, direct));
        }
        Ok(())
    }

    /// Notes the kind of source the fill reads from now (`source`, for the
    /// access log), and whether it is a registry: from then on (sources
    /// run in order, registries last) another replica that owns the digest
    /// may follow the fill (see [`super::Cache::filling_from_registry`]).
    pub fn reading_from(&self, source: &'static str, registry: bool) {
        if registry {
            self.fill.from_registry.store(true, Ordering::SeqCst);
        }
        self.fill.progress.send_modify(|p| p.source = Some(source));
    }

    /// The size the upstream announced, if it did.
    pub fn expected_size(&self) -> Option<u64> {
        self.size
    }

    /// Bytes received so far: where a resumed upstream request should start.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Hands one chunk to the sink; waits only when the sink is
    /// [`sink::QUEUE`] chunks behind (back-pressure on the upstream).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), FillError> {
        if let Some(size) = self.size {
            if self.written + chunk.len() as u64 > size {
                return Err(FillError::LongerThanAnnounced { announced: size });
            }
        }
        let limit = self.cache.max_blob_size();
        if self.written + chunk.len() as u64 > limit || self.size.is_some_and(|s| s > limit) {
            return Err(FillError::TooLarge { limit });
        }
        if self.sink.is_none() {
            self.start(None, None)?;
        }
        let len = chunk.len() as u64;
        let closed = FillError::WriterStopped("fill already closed");
        let sink = self.sink.as_mut().ok_or(closed)?;
        if sink.send(chunk).await.is_err() {
            let output = self.sink.take().expect("sink present").finish().await?;
            return Err(output
                .error
                .unwrap_or(FillError::WriterStopped("the sink ended")));
        }
        self.written += len;
        Ok(())
    }

    /// Verifies length and digest; on success releases the last chunk, stores
    /// the blob and returns its size. On failure the caller must
    /// [`FillWriter::fail`] the fill (dropping the writer does it too).
    pub async fn finish(&mut self) -> Result<u64, FillError> {
        if self.sink.is_none() {
            self.start(self.size, None)?;
        }
        let output = self
            .sink
            .take()
            .ok_or(FillError::WriterStopped("fill already closed"))?
            .finish()
            .await?;
        if let Some(error) = output.error {
            return Err(error);
        }
        if let Some(size) = self.size.filter(|s| *s != self.written) {
            return Err(FillError::ShorterThanAnnounced {
                written: self.written,
                announced: size,
            });
        }
        let actual = output.hasher.finish();
        if actual != self.digest {
            return Err(FillError::DigestMismatch { actual });
        }
        let cached = output.cache_error.is_none();
        if let Some(last) = output.held {
            self.fill.publish(last, cached);
        }
        let size = self.written;
        match output.cache_error {
            None => self.cache.commit_fill(output.temp, &self.digest).await,
            Some(reason) => {
                tracing::warn!(digest = %self.digest, %reason, "blob streamed but not cached");
                self.cache.metrics().cache_write_failure();
            }
        }
        self.finished = true;
        self.fill.progress.send_modify(|p| {
            p.size = Some(size);
            p.state = FillState::Complete;
        });
        let _ = self.fill.live.send(LiveMsg::End);
        self.cache.end_fill(&self.digest);
        Ok(size)
    }

    /// Fails the fill: readers abort, the temporary file is removed.
    pub fn fail(&mut self, err: Error) {
        if self.finished {
            return;
        }
        self.finished = true;
        let failed = err.clone();
        self.fill
            .progress
            .send_modify(|p| p.state = FillState::Failed(failed));
        let _ = self.fill.live.send(LiveMsg::Failed(err));
        // Dropping the sink's queue ends it; it drops the temporary file.
        self.sink = None;
        self.pending = None;
        self.cache.end_fill(&self.digest);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.fail(Error::Storage("fill abandoned".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::reader::BlobReader;
    use crate::cache::BlobLookup;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_late_joiner_of_a_fill_that_stopped_caching_never_takes_a_later_chunk_for_the_first()
    {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), &Default::default(), Default::default())
            .await
            .unwrap();
        let digest = Digest::sha256_of(b"abcdef");
        let BlobLookup::Missing(mut writer, _leader) = cache.lookup(&digest).await.unwrap() else {
            panic!("nothing is stored yet");
        };
        writer.start(Some(6), None).unwrap();
        let fill = cache.inner.fills.lock().unwrap()[&digest].clone();
        // The first write to the cache file failed: the chunk went to live
        // readers only.
        fill.stop_caching();
        fill.publish(Bytes::from_static(b"abc"), false);

        let late = cache.filling(&digest).expect("the fill is running");
        let mut stream = std::pin::pin!(BlobReader::filling(late, 0, Some(6)).into_stream());
        fill.publish(Bytes::from_static(b"def"), false);
        match stream.next().await {
            Some(Err(_)) => {}
            Some(Ok(chunk)) => panic!("the late joiner got {chunk:?} as its first bytes"),
            None => panic!("the late joiner's stream ended without an error"),
        }
    }
}
