//! The disk half of a fill: an async task that takes the chunks a fill
//! receives, writes and hashes them in batches on the blocking pool, and
//! publishes them to readers once written.
//!
//! No thread waits on the network. The task itself is async: between
//! batches it holds no thread, so a fill from a slow upstream costs the
//! blocking pool only the time its disk writes and hashes take. Each batch
//! (the chunks queued since the last one, up to [`BATCH_BYTES`]) is written
//! on one blocking thread while a second hashes the same `Bytes`, so the
//! digest check overlaps with the disk write; the two take the batches in
//! order but not in step, one batch apart at most, and a batch is published
//! once both are done with it. At most [`IO_SLOTS`] steps run at once
//! across all fills, which leaves the rest of the blocking pool to cache
//! hits: a hit never queues behind a miss however many fills are in flight.
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

/// Batches gathered and not yet released, at most: the hash may run one
/// batch ahead of the write, or the write one ahead of the hash.
const BATCHES_IN_FLIGHT: usize = 2;

/// Below this size a batch is written and then hashed on one thread: two
/// thread hand-offs would cost more than the overlap saves.
const OVERLAP_FROM_BYTES: usize = 256 * 1024;

/// Most fill steps (a batch's hash, its write, or both on one thread for a
/// small batch) on the blocking pool at once, across every fill. Each
/// takes one thread; the pool has 512, so hits always find one.
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
    /// disk); `None` while a write step holds it, and after a cache error.
    writer: Option<FileWriter>,
    /// Whether a large fill may bypass the page cache.
    direct: bool,
    /// Whether readers were told how the file is written (after the
    /// writer opened it).
    announced: bool,
}

/// A batch between its gathering and its release: both its steps must be
/// done before its chunks are published.
struct Batch {
    chunks: Arc<[Bytes]>,
    hashed: bool,
    written: bool,
}

/// What one blocking step hands back.
type Hashed = Hasher;
type Written = Option<(FileWriter, std::io::Result<()>)>;

/// The steps running on the blocking pool, and the batches they work on.
/// The hash and the write of a fill each take its batches in order, but
/// not in step with each other: the hash of a batch may start while the
/// write of the one before is still running, and the other way round. In
/// lock-step, each batch waited for the slower of its two steps; on a
/// shared machine the slower one changes from batch to batch, and the
/// fill then took the sum of those maxima rather than the slower step's
/// total (docs/performance.md, "The hash and the write apart").
#[derive(Default)]
struct Steps {
    /// Gathered, not yet released; the oldest first.
    batches: std::collections::VecDeque<Batch>,
    /// How many batches were released before `batches[0]`.
    released: usize,
    /// The next batch to hash and to write, counted like `released`.
    next_hash: usize,
    next_write: usize,
    hashing: Option<JoinHandle<Hashed>>,
    writing: Option<JoinHandle<Written>>,
    /// A small batch written and hashed on one thread.
    both: Option<JoinHandle<(Hashed, Written)>>,
}

/// The result of whichever step ended first.
enum Ended {
    Hashed(Result<Hashed, tokio::task::JoinError>),
    Written(Result<Written, tokio::task::JoinError>),
    Both(Result<(Hashed, Written), tokio::task::JoinError>),
}

impl Steps {
    fn batch(&self, index: usize) -> Option<&Batch> {
        self.batches.get(index - self.released)
    }

    fn batch_mut(&mut self, index: usize) -> &mut Batch {
        &mut self.batches[index - self.released]
    }

    fn idle(&self) -> bool {
        self.hashing.is_none() && self.writing.is_none() && self.both.is_none()
    }

    /// Waits for the next step to end; never resolves when none runs.
    async fn next_ended(&mut self) -> Ended {
        async fn join<T>(step: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
            match step.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            ended = join(&mut self.hashing) => {
                self.hashing = None;
                Ended::Hashed(ended)
            }
            ended = join(&mut self.writing) => {
                self.writing = None;
                Ended::Written(ended)
            }
            ended = join(&mut self.both) => {
                self.both = None;
                Ended::Both(ended)
            }
        }
    }
}

impl Sink {
    async fn run(mut self, mut chunks: mpsc::Receiver<Bytes>) -> Output {
        let mut steps = Steps::default();
        let mut open = true;
        loop {
            if let Err(e) = self.start_steps(&mut steps).await {
                self.out.error = Some(e);
                break;
            }
            while let Some(batch) = steps.batches.front() {
                if !(batch.hashed && batch.written) {
                    break;
                }
                let batch = steps.batches.pop_front().expect("a front batch");
                steps.released += 1;
                for chunk in batch.chunks.iter() {
                    self.release(chunk.clone());
                }
            }
            if !open && steps.batches.is_empty() {
                break;
            }
            let room = steps.batches.len() < BATCHES_IN_FLIGHT;
            tokio::select! {
                chunk = chunks.recv(), if open && room => match chunk {
                    Some(first) => steps.batches.push_back(Batch {
                        chunks: gather(first, &mut chunks).into(),
                        hashed: false,
                        written: false,
                    }),
                    None => open = false,
                },
                ended = steps.next_ended(), if !steps.idle() => {
                    if let Err(e) = self.step_ended(&mut steps, ended) {
                        self.out.error = Some(e);
                        break;
                    }
                }
            }
        }
        // A step still running after an error holds only its batch; it
        // ends on its own and its result is dropped.
        self.out
    }

    /// Starts the hash and the write of the next batches, each if its
    /// step is free: one blocking thread for both when the batch is small
    /// and nothing else runs.
    async fn start_steps(&mut self, steps: &mut Steps) -> Result<(), FillError> {
        if steps.both.is_some() {
            return Ok(());
        }
        let small = steps
            .batch(steps.next_hash)
            .filter(|_| steps.idle() && steps.next_hash == steps.next_write)
            .map(|b| b.chunks.iter().map(Bytes::len).sum::<usize>() < OVERLAP_FROM_BYTES)
            .unwrap_or(false);
        if small {
            let batch = Arc::clone(&steps.batch(steps.next_hash).expect("a batch").chunks);
            let slot = self.slot().await?;
            let hasher = self.take_hasher();
            let writer = self.take_writer();
            steps.both = Some(tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let written = writer.map(|w| w.write(&batch));
                (hash(hasher, &batch), written)
            }));
            return Ok(());
        }
        if steps.hashing.is_none() {
            if let Some(batch) = steps.batch(steps.next_hash) {
                let batch = Arc::clone(&batch.chunks);
                let slot = self.slot().await?;
                let hasher = self.take_hasher();
                steps.hashing = Some(tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    hash(hasher, &batch)
                }));
            }
        }
        if steps.writing.is_none() && steps.batch(steps.next_write).is_some() {
            if self.out.cache_error.is_some() {
                // Nothing more is written; the batch goes to live readers.
                let next = steps.next_write;
                steps.batch_mut(next).written = true;
                steps.next_write += 1;
            } else {
                let batch = Arc::clone(&steps.batch(steps.next_write).expect("a batch").chunks);
                let slot = self.slot().await?;
                let writer = self.take_writer();
                steps.writing = Some(tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    writer.map(|w| w.write(&batch))
                }));
            }
        }
        Ok(())
    }

    /// Takes in what a step handed back and marks its batch.
    fn step_ended(&mut self, steps: &mut Steps, ended: Ended) -> Result<(), FillError> {
        let stopped = FillError::WriterStopped;
        match ended {
            Ended::Hashed(hashed) => {
                self.out.hasher = hashed.map_err(|_| stopped("the fill's hash step failed"))?;
                let next = steps.next_hash;
                steps.batch_mut(next).hashed = true;
                steps.next_hash += 1;
            }
            Ended::Written(written) => {
                let written = written.map_err(|_| stopped("the fill's write step failed"))?;
                self.took_back(written);
                let next = steps.next_write;
                steps.batch_mut(next).written = true;
                steps.next_write += 1;
            }
            Ended::Both(both) => {
                let (hasher, written) =
                    both.map_err(|_| stopped("the fill's write step failed"))?;
                self.out.hasher = hasher;
                self.took_back(written);
                let next = steps.next_hash;
                let batch = steps.batch_mut(next);
                batch.hashed = true;
                batch.written = true;
                steps.next_hash += 1;
                steps.next_write += 1;
            }
        }
        Ok(())
    }

    /// A slot on the blocking pool for one step, held until it ends.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, FillError> {
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| FillError::WriterStopped("fill slots closed"))
    }

    /// The hasher, for a hash step to hand back.
    fn take_hasher(&mut self) -> Hasher {
        let algorithm = self.out.hasher.algorithm();
        std::mem::replace(&mut self.out.hasher, Hasher::new(algorithm))
    }

    /// The writer, or what opens it, for a write step; `None` once the
    /// cache file cannot be written.
    fn take_writer(&mut self) -> Option<Opening> {
        if self.out.cache_error.is_some() {
            return None;
        }
        Some(self.writer.take().map_or_else(
            || {
                let file = self.out.temp.shared_file();
                let path = self.out.temp.path().to_path_buf();
                let size = self.size.filter(|_| self.direct);
                Opening::Later(file, path, size)
            },
            Opening::Open,
        ))
    }

    /// Takes back the writer a write step used, and its outcome: a failed
    /// write stops caching, never the stream to live readers.
    fn took_back(&mut self, written: Written) {
        let Some((writer, result)) = written else {
            return;
        };
        if !self.announced {
            self.announced = true;
            if let Some(direct) = writer.direct_file() {
                self.fill.writes_directly(direct);
            }
        }
        self.writer = Some(writer);
        if let Err(e) = result {
            // Keep streaming to the clients; only the cache gives up.
            tracing::warn!(error = %e, "cannot write the cache file; streaming without caching");
            self.out.cache_error = Some(format!("cannot write the cache file: {e}"));
            self.fill.stop_caching();
            self.writer = None;
        }
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
