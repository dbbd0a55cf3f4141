//! The disk half of a fill: an async task that takes the chunks a fill
//! receives, writes and hashes them in batches on the blocking pool, and
//! publishes them to readers once written.
//!
//! No thread waits on the network. The task itself is async: between
//! batches it holds no thread, so a fill from a slow upstream costs the
//! blocking pool only the time its disk writes and hashes take. Each batch
//! (the chunks that arrived while the previous one was written, up to
//! [`BATCH_BYTES`]) is written on one blocking thread while a second hashes
//! the same `Bytes`, so the digest check still overlaps with the disk write.
//! At most [`IO_SLOTS`] batches run at once across all fills, which leaves
//! the rest of the blocking pool to cache hits: a hit never queues behind a
//! miss however many fills are in flight.
//!
//! The chunk that completes the blob (or, when the size is unknown, the
//! latest chunk) is held back for the fill's writer to release after
//! verification.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::file_writer::FileWriter;
use super::fill::Fill;
use super::fill_error::FillError;
use super::store::TempBlob;
use crate::oci::Hasher;

/// Chunks queued between the network and the disk; bounds a fill's memory.
pub const QUEUE: usize = 16;

/// Most bytes written and hashed in one blocking step.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Below this size a batch is written and then hashed on one thread: two
/// thread hand-offs would cost more than the overlap saves.
const OVERLAP_FROM_BYTES: usize = 256 * 1024;

/// Most fill batches on the blocking pool at once, across every fill. Each
/// takes up to two threads; the pool has 512, so hits always find one.
pub const IO_SLOTS: usize = 16;

/// The slots the blocking steps of one cache's fills share: [`IO_SLOTS`]
/// of them. The cache owns them and hands them to each sink.
pub fn io_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(IO_SLOTS))
}

/// What the sink hands back when its queue closes.
#[derive(Debug)]
pub struct Output {
    /// The temporary file, complete when `error` is `None`.
    pub temp: TempBlob,
    /// The hash of every byte written.
    pub hasher: Hasher,
    /// The chunk not yet published.
    pub held: Option<Bytes>,
    /// Why writing stopped early.
    pub error: Option<FillError>,
    /// Why the cache file could not be written (a full disk): the bytes were
    /// still streamed to live readers, but the blob must not be stored.
    pub cache_error: Option<String>,
}

/// The async side of a running sink.
#[derive(Debug)]
pub struct Handle {
    queue: mpsc::Sender<Bytes>,
    task: JoinHandle<Output>,
}

impl Handle {
    /// Queues a chunk; fails when the sink has stopped.
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), ()> {
        self.queue.send(chunk).await.map_err(drop)
    }

    /// Closes the queue and waits for the sink to write and hash what it
    /// holds; fails when the sink's task ended without an answer (it
    /// panicked, or the runtime is shutting down).
    pub async fn finish(self) -> Result<Output, FillError> {
        drop(self.queue);
        self.task
            .await
            .map_err(|_| FillError::WriterStopped("the fill's sink task ended"))
    }
}

/// Starts the sink of a fill whose size is `size` (if known).
pub fn spawn(
    fill: Arc<Fill>,
    temp: TempBlob,
    hasher: Hasher,
    size: Option<u64>,
    slots: Arc<Semaphore>,
    direct: bool,
) -> Handle {
    let (queue, chunks) = mpsc::channel::<Bytes>(QUEUE);
    let sink = Sink {
        fill,
        out: Output {
            temp,
            hasher,
            held: None,
            error: None,
            cache_error: None,
        },
        size,
        written: 0,
        slots,
        writer: None,
        direct,
        announced: false,
    };
    Handle {
        queue,
        task: tokio::spawn(sink.run(chunks)),
    }
}

struct Sink {
    fill: Arc<Fill>,
    out: Output,
    size: Option<u64>,
    written: u64,
    slots: Arc<Semaphore>,
    /// Opened on the first batch's blocking step (opening may touch the
    /// disk); `None` after a cache error.
    writer: Option<FileWriter>,
    /// Whether a large fill may bypass the page cache.
    direct: bool,
    /// Whether readers were told how the file is written (after the
    /// writer opened it).
    announced: bool,
}

impl Sink {
    async fn run(mut self, mut chunks: mpsc::Receiver<Bytes>) -> Output {
        while let Some(first) = chunks.recv().await {
            let batch = gather(first, &mut chunks);
            if let Err(e) = self.write(&batch).await {
                self.out.error = Some(e);
                break;
            }
            for chunk in batch {
                self.release(chunk);
            }
        }
        self.out
    }

    /// Writes and hashes one batch on the blocking pool.
    async fn write(&mut self, batch: &[Bytes]) -> Result<(), FillError> {
        let stopped = FillError::WriterStopped;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| stopped("fill slots closed"))?;
        let writer = match self.out.cache_error {
            None => Some(self.writer.take().map_or_else(
                || {
                    let file = self.out.temp.shared_file();
                    let path = self.out.temp.path().to_path_buf();
                    let size = self.size.filter(|_| self.direct);
                    Opening::Later(file, path, size)
                },
                Opening::Open,
            )),
            Some(_) => None,
        };
        let algorithm = self.out.hasher.algorithm();
        let hasher = std::mem::replace(&mut self.out.hasher, Hasher::new(algorithm));
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        let (hasher, written) = if bytes < OVERLAP_FROM_BYTES {
            let batch = batch.to_vec();
            tokio::task::spawn_blocking(move || {
                let written = writer.map(|w| w.write(&batch));
                (hash(hasher, &batch), written)
            })
            .await
            .map_err(|_| stopped("the fill's write step failed"))?
        } else {
            let to_hash = batch.to_vec();
            let to_write = batch.to_vec();
            let hashing = tokio::task::spawn_blocking(move || hash(hasher, &to_hash));
            let writing = tokio::task::spawn_blocking(move || writer.map(|w| w.write(&to_write)));
            let (hashed, written) = tokio::join!(hashing, writing);
            (
                hashed.map_err(|_| stopped("the fill's hash step failed"))?,
                written.map_err(|_| stopped("the fill's write step failed"))?,
            )
        };
        self.out.hasher = hasher;
        let written = written.map(|(writer, result)| {
            if !self.announced {
                self.announced = true;
                if let Some(direct) = writer.direct_file() {
                    self.fill.writes_directly(direct);
                }
            }
            self.writer = Some(writer);
            result
        });
        if let Some(Err(e)) = written {
            // Keep streaming to the clients; only the cache gives up.
            tracing::warn!(error = %e, "cannot write the cache file; streaming without caching");
            self.out.cache_error = Some(format!("cannot write the cache file: {e}"));
            self.fill.stop_caching();
            self.writer = None;
        }
        Ok(())
    }

    /// Publishes a written chunk, holding back the one that may complete the
    /// blob.
    fn release(&mut self, chunk: Bytes) {
        let cached = self.out.cache_error.is_none();
        self.written += chunk.len() as u64;
        match self.size {
            Some(size) if self.written == size => self.out.held = Some(chunk),
            Some(_) => self.fill.publish(chunk, cached),
            None => {
                if let Some(previous) = self.out.held.replace(chunk) {
                    self.fill.publish(previous, cached);
                }
            }
        }
    }
}

/// The chunks already queued behind `first`, up to a batch.
fn gather(first: Bytes, chunks: &mut mpsc::Receiver<Bytes>) -> Vec<Bytes> {
    let mut bytes = first.len();
    let mut batch = vec![first];
    while bytes < BATCH_BYTES {
        match chunks.try_recv() {
            Ok(chunk) => {
                bytes += chunk.len();
                batch.push(chunk);
            }
            Err(_) => break,
        }
    }
    batch
}

/// The sink's file writer, or what it takes to open it on the blocking pool.
enum Opening {
    Open(FileWriter),
    Later(Arc<std::fs::File>, std::path::PathBuf, Option<u64>),
}

impl Opening {
    /// Writes one batch (opening the writer first if need be) and hands the
    /// writer back for the next.
    fn write(self, batch: &[Bytes]) -> (FileWriter, std::io::Result<()>) {
        let mut writer = match self {
            Opening::Open(writer) => writer,
            Opening::Later(file, path, size) => FileWriter::new(file, &path, size),
        };
        let result = writer.write_batch(batch);
        (writer, result)
    }
}

fn hash(mut hasher: Hasher, batch: &[Bytes]) -> Hasher {
    for chunk in batch {
        hasher.update(chunk);
    }
    hasher
}
