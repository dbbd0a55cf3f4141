//! Streams a byte range of a blob: from a stored file, from a fill's live
//! channel, or from a fill's growing file.
//!
//! File reads are positional (`pread`) on a shared handle, done off the async
//! threads in pieces of [`READ_CHUNK`], so any number of readers share one
//! open file and memory per reader stays at one piece.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use super::fill::{FillState, LiveMsg, Progress, Subscription};
use super::mapped;
use super::usage::Lease;

/// Size of one read from a cache file.
pub const READ_CHUNK: usize = 256 * 1024;

/// A reader over `[offset, end)` of a blob.
#[derive(Debug)]
pub struct BlobReader {
    file: Arc<File>,
    offset: u64,
    end: u64,
    live: Option<broadcast::Receiver<LiveMsg>>,
    follow: Option<watch::Receiver<Progress>>,
    done: bool,
    _lease: Option<Lease>,
}

impl BlobReader {
    /// Reads a stored, complete blob. The lease keeps it from eviction until
    /// the reader is dropped.
    pub fn stored(file: Arc<File>, start: u64, end: u64, lease: Option<Lease>) -> Self {
        BlobReader {
            file,
            offset: start,
            end,
            live: None,
            follow: None,
            done: false,
            _lease: lease,
        }
    }

    /// Reads a blob while it is being filled. `end` is `None` when the size is
    /// not known yet (the upstream sent no length). Only a read from the first
    /// byte uses the live channel.
    pub fn filling(sub: Subscription, start: u64, end: Option<u64>) -> Self {
        BlobReader {
            file: sub.file,
            offset: start,
            end: end.unwrap_or(u64::MAX),
            live: if start == 0 { sub.live } else { None },
            follow: Some(sub.progress),
            done: false,
            _lease: None,
        }
    }

    /// The reader as a stream of chunks; an `Err` item means the client's
    /// response must be aborted.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            let item = reader.next().await?;
            if item.is_err() {
                reader.done = true;
            }
            Some((item, reader))
        })
    }

    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done || self.offset >= self.end {
            return None;
        }
        if let Some(item) = self.next_live().await {
            return item;
        }
        self.next_from_file().await
    }

    /// `Some` when the live channel decided the outcome, `None` to use the file.
    async fn next_live(&mut self) -> Option<Option<io::Result<Bytes>>> {
        let live = self.live.as_mut()?;
        match live.recv().await {
            Ok(LiveMsg::Data(mut chunk)) => {
                let room = self.end - self.offset;
                if chunk.len() as u64 > room {
                    chunk.truncate(room as usize);
                }
                self.offset += chunk.len() as u64;
                Some(Some(Ok(chunk)))
            }
            Ok(LiveMsg::End) => {
                self.done = true;
                Some(None)
            }
            Ok(LiveMsg::Failed(err)) => Some(Some(Err(io::Error::other(err.to_string())))),
            Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => {
                self.live = None;
                None
            }
        }
    }

    async fn next_from_file(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let (available, state, uncached) = match self.follow.as_mut() {
                None => (self.end, FillState::Complete, false),
                Some(rx) => {
                    let p = rx.borrow_and_update();
                    (p.published, p.state.clone(), p.uncached)
                }
            };
            if uncached && self.offset >= available {
                return Some(Err(io::Error::other(
                    "the cache could not be written (disk full?); retry the request",
                )));
            }
            if let FillState::Failed(err) = state {
                return Some(Err(io::Error::other(err.to_string())));
            }
            if self.offset < available {
                let limit = available.min(self.end);
                return Some(match self.follow {
                    None => self.map(limit).await,
                    Some(_) => self.read(limit).await,
                });
            }
            if matches!(state, FillState::Complete) {
                if self.end != u64::MAX && self.offset < self.end {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob shorter than announced",
                    )));
                }
                return None;
            }
            let rx = self.follow.as_mut().expect("only fills are incomplete");
            if rx.changed().await.is_err() {
                return Some(Err(io::Error::other("fill abandoned")));
            }
        }
    }

    /// The next window of a stored (immutable) blob, memory-mapped. A window
    /// already in the page cache (the usual hit) is handed out at once; one
    /// that is not is read in on a blocking thread first, so the async
    /// threads never wait on the disk.
    async fn map(&mut self, limit: u64) -> io::Result<Bytes> {
        let len = (limit - self.offset).min(mapped::WINDOW) as usize;
        let mapping = mapped::Mapping::new(&self.file, self.offset, len)?;
        let mapping = if mapping.is_resident() {
            mapping
        } else {
            tokio::task::spawn_blocking(move || {
                mapping.read_in();
                mapping
            })
            .await
            .map_err(io::Error::other)?
        };
        let chunk = mapping.into_bytes();
        self.offset += chunk.len() as u64;
        Ok(chunk)
    }

    /// The next piece of a file still being filled, read with `pread`.
    async fn read(&mut self, limit: u64) -> io::Result<Bytes> {
        let len = (limit - self.offset).min(READ_CHUNK as u64) as usize;
        let (file, offset) = (Arc::clone(&self.file), self.offset);
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(len);
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64)? {
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "cache file truncated",
                        ))
                    }
                    n => filled += n,
                }
            }
            Ok(buf.freeze())
        })
        .await
        .map_err(io::Error::other)??;
        self.offset += chunk.len() as u64;
        Ok(chunk)
    }
}
