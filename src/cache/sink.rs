//! The blocking half of a fill: one blocking thread writes each chunk to the
//! temporary file and publishes it to readers, while a second one hashes the
//! same `Bytes`, so the digest check overlaps with the disk write (SHA-256
//! is the slowest stage of a cold fetch). The chunk that completes the blob
//! (or, when the size is unknown, the latest chunk) is held back for the
//! writer to release after verification.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::fill::Fill;
use super::store::TempBlob;
use crate::oci::Hasher;

/// Chunks queued between the network and the disk; bounds a fill's memory.
pub const QUEUE: usize = 16;

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
    pub error: Option<String>,
    /// Why the cache file could not be written (a full disk): the bytes were
    /// still streamed to live readers, but the blob must not be stored.
    pub cache_error: Option<String>,
}

/// The async side of a running sink.
#[derive(Debug)]
pub struct Handle {
    queue: mpsc::Sender<Bytes>,
    task: JoinHandle<Output>,
    hash: JoinHandle<Hasher>,
}

impl Handle {
    /// Queues a chunk; fails when the sink has stopped.
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), ()> {
        self.queue.send(chunk).await.map_err(drop)
    }

    /// Closes the queue and waits for the sink to write and hash what it holds.
    pub async fn finish(self) -> Output {
        drop(self.queue);
        let mut output = self.task.await.expect("fill sink panicked");
        output.hasher = self.hash.await.expect("fill hasher panicked");
        output
    }
}

/// Starts the sink of a fill whose size is `size` (if known).
pub fn spawn(fill: Arc<Fill>, temp: TempBlob, hasher: Hasher, size: Option<u64>) -> Handle {
    let (queue, mut chunks) = mpsc::channel::<Bytes>(QUEUE);
    let (to_hash, mut hash_chunks) = mpsc::channel::<Bytes>(QUEUE);
    let algorithm = hasher.algorithm();
    let hash = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        while let Some(chunk) = hash_chunks.blocking_recv() {
            hasher.update(&chunk);
        }
        hasher
    });
    let task = tokio::task::spawn_blocking(move || {
        let mut out = Output {
            temp,
            // Replaced by the hashing thread's result in `Handle::finish`.
            hasher: Hasher::new(algorithm),
            held: None,
            error: None,
            cache_error: None,
        };
        let mut written = 0u64;
        while let Some(chunk) = chunks.blocking_recv() {
            if to_hash.blocking_send(chunk.clone()).is_err() {
                out.error = Some("the hashing thread stopped".into());
                break;
            }
            if out.cache_error.is_none() {
                if let Err(e) = out.temp.file().write_all(&chunk) {
                    // Keep streaming to the clients; only the cache gives up.
                    tracing::warn!(error = %e, "cannot write the cache file; streaming without caching");
                    out.cache_error = Some(format!("cannot write the cache file: {e}"));
                    fill.stop_caching();
                }
            }
            let cached = out.cache_error.is_none();
            written += chunk.len() as u64;
            match size {
                Some(size) if written == size => out.held = Some(chunk),
                Some(_) => fill.publish(chunk, cached),
                None => {
                    if let Some(previous) = out.held.replace(chunk) {
                        fill.publish(previous, cached);
                    }
                }
            }
        }
        out
    });
    Handle { queue, task, hash }
}
