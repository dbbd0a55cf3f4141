//! The blocking half of a fill: writes each chunk to the temporary file,
//! hashes it, and publishes it to readers, on one blocking thread per fill.
//! The chunk that completes the blob (or, when the size is unknown, the
//! latest chunk) is held back for the writer to release after verification.

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

    /// Closes the queue and waits for the sink to write what it holds.
    pub async fn finish(self) -> Output {
        drop(self.queue);
        self.task.await.expect("fill sink panicked")
    }
}

/// Starts the sink of a fill whose size is `size` (if known).
pub fn spawn(fill: Arc<Fill>, temp: TempBlob, hasher: Hasher, size: Option<u64>) -> Handle {
    let (queue, mut chunks) = mpsc::channel::<Bytes>(QUEUE);
    let task = tokio::task::spawn_blocking(move || {
        let mut out = Output {
            temp,
            hasher,
            held: None,
            error: None,
        };
        let mut written = 0u64;
        while let Some(chunk) = chunks.blocking_recv() {
            if let Err(e) = out.temp.file().write_all(&chunk) {
                out.error = Some(format!("cannot write the cache file: {e}"));
                break;
            }
            out.hasher.update(&chunk);
            written += chunk.len() as u64;
            match size {
                Some(size) if written == size => out.held = Some(chunk),
                Some(_) => fill.publish(chunk),
                None => {
                    if let Some(previous) = out.held.replace(chunk) {
                        fill.publish(previous);
                    }
                }
            }
        }
        out
    });
    Handle { queue, task }
}
