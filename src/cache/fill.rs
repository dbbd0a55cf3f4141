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
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

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
    /// The fill's state.
    pub state: FillState,
}

/// One fill in progress.
#[derive(Debug)]
pub struct Fill {
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    live: broadcast::Sender<LiveMsg>,
}

impl Fill {
    /// Creates a fill over a fresh temporary file, and the writer that owns it.
    pub(super) fn start(
        cache: Cache,
        digest: Digest,
        temp: TempBlob,
    ) -> std::io::Result<(Arc<Fill>, FillWriter)> {
        let fill = Arc::new(Fill {
            file: Arc::new(temp.file().try_clone()?),
            progress: watch::Sender::new(Progress::default()),
            live: broadcast::Sender::new(LIVE_CHANNEL_CAPACITY),
        });
        let writer = FillWriter {
            fill: Arc::clone(&fill),
            cache,
            hasher: Some(Hasher::new(digest.algorithm())),
            digest,
            temp: Some(temp),
            written: 0,
            held: None,
            size: None,
            finished: false,
        };
        Ok((fill, writer))
    }

    /// Joins the fill as a reader.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        // Subscribe to the live channel before reading the progress: if nothing
        // was published by then, every chunk will arrive on the channel.
        let live = self.live.subscribe();
        let progress = self.progress.subscribe();
        let live = (progress.borrow().published == 0).then_some(live);
        Subscription {
            file: Arc::clone(&self.file),
            live,
            progress,
        }
    }
}

/// A reader's handle on a fill.
#[derive(Debug)]
pub struct Subscription {
    pub(super) file: Arc<File>,
    pub(super) live: Option<broadcast::Receiver<LiveMsg>>,
    pub(super) progress: watch::Receiver<Progress>,
}

impl Subscription {
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
#[derive(Debug)]
pub struct FillWriter {
    fill: Arc<Fill>,
    cache: Cache,
    digest: Digest,
    temp: Option<TempBlob>,
    hasher: Option<Hasher>,
    written: u64,
    held: Option<Bytes>,
    size: Option<u64>,
    finished: bool,
}

impl FillWriter {
    /// Records what the upstream said of the blob; readers waiting in
    /// [`Subscription::ready`] proceed.
    pub fn start(&mut self, size: Option<u64>, media_type: Option<String>) {
        self.size = size;
        self.fill.progress.send_modify(|p| {
            p.size = size;
            p.media_type = media_type;
            p.state = FillState::Running;
        });
    }

    /// The size the upstream announced, if it did.
    pub fn expected_size(&self) -> Option<u64> {
        self.size
    }

    /// Bytes received so far: where a resumed upstream request should start.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes and hashes one chunk off the async threads, then publishes it
    /// (or holds it back if it is the last one).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), String> {
        if let Some(size) = self.size {
            if self.written + chunk.len() as u64 > size {
                return Err(format!("sent more than the {size} bytes it announced"));
            }
        }
        let (temp, mut hasher) = (self.temp.take(), self.hasher.take());
        let piece = chunk.clone();
        let (temp, hasher, result) = tokio::task::spawn_blocking(move || {
            let result = temp.as_ref().map(|t| t.file().write_all(&piece));
            if let Some(h) = hasher.as_mut() {
                h.update(&piece);
            }
            (temp, hasher, result)
        })
        .await
        .map_err(|e| format!("writer task: {e}"))?;
        (self.temp, self.hasher) = (temp, hasher);
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("cannot write the cache file: {e}")),
            None => return Err("fill already closed".into()),
        }
        self.written += chunk.len() as u64;
        match self.size {
            Some(size) if self.written == size => self.held = Some(chunk),
            Some(_) => self.publish(chunk),
            None => {
                if let Some(previous) = self.held.replace(chunk) {
                    self.publish(previous);
                }
            }
        }
        Ok(())
    }

    fn publish(&self, chunk: Bytes) {
        let len = chunk.len() as u64;
        // Progress first, then the channel: see `Fill::subscribe`.
        self.fill.progress.send_modify(|p| p.published += len);
        let _ = self.fill.live.send(LiveMsg::Data(chunk));
    }

    /// Verifies length and digest; on success releases the last chunk, stores
    /// the blob and returns its size. On failure the caller must
    /// [`FillWriter::fail`] the fill (dropping the writer does it too).
    pub async fn finish(&mut self) -> Result<u64, String> {
        if let Some(size) = self.size.filter(|s| *s != self.written) {
            return Err(format!(
                "ended after {} of the {size} bytes it announced",
                self.written
            ));
        }
        let actual = self
            .hasher
            .take()
            .expect("hasher present until finish")
            .finish();
        if actual != self.digest {
            return Err(format!(
                "sent bytes that hash to {actual}, not to the digest asked for"
            ));
        }
        if let Some(last) = self.held.take() {
            self.publish(last);
        }
        let size = self.written;
        let temp = self.temp.take().expect("temp present until finish");
        self.cache.commit_fill(temp, &self.digest, size).await;
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
        self.temp = None;
        self.cache.end_fill(&self.digest);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.fail(Error::Storage("fill abandoned".into()));
    }
}
