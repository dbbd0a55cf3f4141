//! Streams a byte range of a blob: from a stored file, from a fill's live
//! channel, or from a fill's growing file.
//!
//! A stored blob goes out as memory-mapped windows when the connection
//! sends them with `sendfile` ([`Delivery::Mapped`]); on any other
//! connection (TLS, HTTP/2), whose code would read the mapped memory, it is
//! read into buffers instead ([`Delivery::Copied`]), so a disk error fails
//! one response rather than raising `SIGBUS`. File reads are positional on a
//! shared handle (see [`super::pread`]), in pieces of [`READ_CHUNK`], so any
//! number of readers share one open file and memory per reader stays at one
//! piece. What of a large blob is not in the page cache, its lone reader
//! reads around the page cache ([`super::direct_read`]).

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use super::fill::{FillReaders, FillState, LiveMsg, Progress, Subscription};
use super::mapped;
use super::pread;
use super::usage::Lease;
use super::{direct_read, file_writer};

/// How a stored blob's bytes reach the connection.
#[derive(Debug, Clone, Default)]
pub enum Delivery {
    /// Read into buffers: for connections that read the body's memory
    /// (TLS encrypts it, HTTP/2 frames it).
    #[default]
    Copied,
    /// Mapped windows, listed in the cache's [`mapped::Windows`], for a
    /// connection that finds them there and sends them with `sendfile`,
    /// never reading the mapped memory itself.
    Mapped(Arc<mapped::Windows>),
}

/// Size of one read from a cache file.
pub const READ_CHUNK: usize = 256 * 1024;
/// The first read of a response from a file, doubled with each read after
/// it up to [`READ_CHUNK`] (or a direct read's piece). A response is read
/// only when its connection has taken the piece before, so a client that
/// opens a stream and never takes a byte (an HTTP/2 stream whose window
/// stays shut) holds this much, not a full chunk; one that reads on
/// reaches full chunks after four reads. One HTTP/2 frame's worth, and a
/// multiple of the direct-read block.
pub const FIRST_READ: u64 = 16 * 1024;

/// Where a stored blob's pages that are not in the page cache are read
/// from.
#[derive(Debug)]
enum DiskReads {
    /// Allowed, and none read yet.
    Untried,
    /// Around the page cache, through this `O_DIRECT` handle on the file.
    Direct(Arc<File>),
    /// Through the page cache: the file system refuses `O_DIRECT`, or the
    /// reader was not allowed to ([`BlobReader::reading_around_page_cache`]).
    Cached,
}

/// A reader over `[offset, end)` of a blob.
#[derive(Debug)]
pub struct BlobReader {
    file: Arc<File>,
    offset: u64,
    end: u64,
    live: Option<broadcast::Receiver<LiveMsg>>,
    follow: Option<watch::Receiver<Progress>>,
    delivery: Delivery,
    content: Option<Bytes>,
    done: bool,
    disk: DiskReads,
    lease: Option<Lease>,
    fill_readers: Option<FillReaders>,
    /// The most the next file read may take (see [`FIRST_READ`]).
    allowance: u64,
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
            delivery: Delivery::Copied,
            content: None,
            done: false,
            disk: DiskReads::Cached,
            lease,
            fill_readers: None,
            allowance: FIRST_READ,
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
            delivery: Delivery::Copied,
            content: None,
            done: false,
            disk: DiskReads::Cached,
            lease: None,
            fill_readers: Some(sub.readers),
            allowance: FIRST_READ,
        }
    }

    /// Serves a stored blob from its whole content in memory, not its file.
    pub fn with_content(mut self, content: Option<Bytes>) -> Self {
        self.content = content;
        self
    }

    /// The whole range as one buffer, when the blob is held in memory
    /// ([`BlobReader::with_content`]): the response can then be sent as a
    /// body that is known to end with it. Over HTTP/2 that puts the end of
    /// the stream on the data's own frame; a streamed body ends with an
    /// empty frame after it, which h2 writes separately once the data is
    /// over 256 bytes (two TLS records and two `writev`s per 4 KiB hit).
    pub fn in_memory(&self) -> Option<Bytes> {
        let content = self.content.as_ref()?;
        content.get(self.offset as usize..self.end as usize)?;
        Some(content.slice(self.offset as usize..self.end as usize))
    }

    /// Lets a stored blob's reader read what is not in the page cache around
    /// it, when it may ([`BlobReader::disk_direct`]); without this, or with
    /// `false` (`cache.direct_reads = false`), it reads through the page
    /// cache.
    pub fn reading_around_page_cache(mut self, allowed: bool) -> Self {
        self.disk = if allowed {
            DiskReads::Untried
        } else {
            DiskReads::Cached
        };
        self
    }

    /// Chooses how a stored blob's bytes are handed out (a fill's are always
    /// copied from its growing file or shared from the live channel).
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
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
        if let Some(content) = self.content.take() {
            let (start, end) = (self.offset as usize, self.end as usize);
            self.offset = self.end;
            return Some(match content.get(start..end) {
                Some(_) => Ok(content.slice(start..end)),
                None => Err(io::Error::other(
                    "a blob in memory is shorter than recorded",
                )),
            });
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
            let (available, state, uncached, direct) = match self.follow.as_mut() {
                None => (self.end, FillState::Complete, false, None),
                Some(rx) => {
                    let p = rx.borrow_and_update();
                    (p.published, p.state.clone(), p.uncached, p.direct.clone())
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
                let alone = self.fill_readers.as_mut().is_none_or(FillReaders::alone);
                if let Some(direct) = direct.filter(|_| alone) {
                    if let Some(read) = self.read_fill_direct(&direct, available, limit).await {
                        return Some(read);
                    }
                }
                return Some(match (&self.follow, &self.delivery) {
                    (None, Delivery::Mapped(windows)) => {
                        let windows = Arc::clone(windows);
                        self.map(limit, &windows).await
                    }
                    _ => self.read(limit).await,
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
    /// that is not is read from the disk on a blocking thread, so the async
    /// threads never wait on it: around the page cache when this reader may
    /// ([`BlobReader::disk_direct`]), else into it first.
    async fn map(&mut self, limit: u64, windows: &Arc<mapped::Windows>) -> io::Result<Bytes> {
        let len = (limit - self.offset).min(mapped::WINDOW) as usize;
        let mapping = mapped::Mapping::new(&self.file, self.offset, len)?;
        let mapping = if mapping.is_resident() {
            mapping
        } else {
            // A window that starts cached is mostly cached (a hot blob that
            // lost some pages): read the few missing pages into the page
            // cache and keep `sendfile`, rather than ask the disk for all.
            if !mapping.starts_resident() {
                if let Some(read) = self.read_stored_direct(limit).await {
                    return read;
                }
            }
            tokio::task::spawn_blocking(move || mapping.read_in().map(|()| mapping))
                .await
                .map_err(io::Error::other)??
        };
        let chunk = mapping.into_bytes(windows);
        self.offset += chunk.len() as u64;
        Ok(chunk)
    }

    /// Reads from `self.offset` on of a fill written around the page cache,
    /// through its `O_DIRECT` handle, up to [`direct_read::PIECE`] and never
    /// into the block that holds the published tail (`available`), which is
    /// written through the page cache and rewritten by the next direct
    /// write. `None` when no whole written block lies ahead. Only the lone
    /// reader of the fill's file reads so (readers on the live channel do
    /// not count): readers of one file together read it through the page
    /// cache, where the pages one brings in serve the others instead of
    /// each asking the disk for the whole blob.
    async fn read_fill_direct(
        &mut self,
        direct: &Arc<File>,
        available: u64,
        limit: u64,
    ) -> Option<io::Result<Bytes>> {
        let whole_blocks = available - available % file_writer::ALIGN as u64;
        let stop = whole_blocks.min(self.direct_piece_end()).min(limit);
        if stop <= self.offset {
            return None;
        }
        Some(self.read_direct_to(Arc::clone(direct), stop).await)
    }

    /// Where a direct read from `self.offset` ends at most: one
    /// [`direct_read::PIECE`] past the block that holds `self.offset`.
    fn direct_piece_end(&self) -> u64 {
        let piece = direct_read::PIECE.min(self.allowance);
        self.offset - self.offset % file_writer::ALIGN as u64 + piece
    }

    /// Counts a read from the file: the next may take twice as much.
    fn grow_allowance(&mut self) {
        self.allowance = (self.allowance * 2).min(direct_read::PIECE);
    }

    /// Reads `[self.offset, stop)` through the `O_DIRECT` handle `direct`,
    /// on the blocking pool, from the start of the block that holds
    /// `self.offset`; moves `self.offset` to `stop` once read.
    async fn read_direct_to(&mut self, direct: Arc<File>, stop: u64) -> io::Result<Bytes> {
        let start = self.offset - self.offset % file_writer::ALIGN as u64;
        let blocks = tokio::task::spawn_blocking(move || direct_read::read(&direct, start, stop))
            .await
            .map_err(io::Error::other)??;
        let chunk = blocks.slice((self.offset - start) as usize..);
        self.offset = stop;
        self.grow_allowance();
        Ok(chunk)
    }

    /// The next piece of the file, read into a buffer: what the page cache
    /// holds at once, the rest from the disk on the blocking pool (around
    /// the page cache when this reader may, [`BlobReader::disk_direct`]).
    async fn read(&mut self, limit: u64) -> io::Result<Bytes> {
        let most = self.allowance.min(READ_CHUNK as u64);
        let len = (limit - self.offset).min(most) as usize;
        let chunk = match pread::read_cached(&self.file, self.offset, len)? {
            pread::Cached::Hit(chunk) => chunk,
            pread::Cached::Miss(buf) => match self.read_stored_direct(limit).await {
                Some(read) => return read,
                None => pread::read_from_disk(&self.file, self.offset, buf).await?,
            },
        };
        self.offset += chunk.len() as u64;
        self.grow_allowance();
        Ok(chunk)
    }

    /// Reads from `self.offset` on of a stored blob from the disk around
    /// the page cache, up to [`direct_read::PIECE`]; `None` when this
    /// reader reads through the page cache instead.
    async fn read_stored_direct(&mut self, limit: u64) -> Option<io::Result<Bytes>> {
        let direct = self.disk_direct().await?;
        let stop = limit.min(self.direct_piece_end());
        match self.read_direct_to(direct, stop).await {
            Err(e) if direct_read::refused(&e) => {
                self.disk = DiskReads::Cached;
                None
            }
            read => Some(read),
        }
    }

    /// The `O_DIRECT` handle to read a stored blob's uncached pages with,
    /// when reading around the page cache is the better trade: the range
    /// reaches [`file_writer::DIRECT_FROM_BYTES`] into the blob (so the blob
    /// was large enough to be written around it too), and no other client
    /// is reading it now. Clients reading it together (a burst of pulls of
    /// one image) read through the page cache, where the pages one brings
    /// in serve the others.
    async fn disk_direct(&mut self) -> Option<Arc<File>> {
        let alone = self.lease.as_ref().is_none_or(Lease::alone);
        if self.follow.is_some() || self.end < file_writer::DIRECT_FROM_BYTES || !alone {
            return None;
        }
        if let DiskReads::Untried = self.disk {
            // An open may ask a network file system's server: never on an
            // async thread.
            let file = Arc::clone(&self.file);
            let reopened = tokio::task::spawn_blocking(move || direct_read::reopen(&file)).await;
            self.disk = match reopened {
                Ok(Some(file)) => DiskReads::Direct(Arc::new(file)),
                _ => DiskReads::Cached,
            };
        }
        match &self.disk {
            DiskReads::Direct(file) => Some(Arc::clone(file)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;

    /// A stored blob whose file lost its tail after it was recorded, the
    /// way a failing disk loses pages: each delivery fails the response
    /// with an error instead of crashing the process.
    #[tokio::test]
    async fn a_stored_file_that_cannot_be_read_fails_the_response_not_the_process() {
        for delivery in [Delivery::Mapped(Arc::default()), Delivery::Copied] {
            let mut tmp = tempfile::NamedTempFile::new().unwrap();
            let size = 3 * mapped::WINDOW as usize;
            tmp.write_all(&vec![5u8; size]).unwrap();
            let file = Arc::new(std::fs::File::open(tmp.path()).unwrap());
            tmp.as_file().set_len(mapped::WINDOW + 100).unwrap();
            let reader =
                BlobReader::stored(file, 0, size as u64, None).with_delivery(delivery.clone());
            let mut stream = std::pin::pin!(reader.into_stream());
            let mut got = 0;
            let err = loop {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        assert!(chunk.iter().all(|b| *b == 5));
                        got += chunk.len();
                    }
                    Some(Err(e)) => break e,
                    None => panic!("{delivery:?}: the stream ended as if complete"),
                }
            };
            assert!(got <= mapped::WINDOW as usize + 100, "{delivery:?}");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{delivery:?}");
        }
    }
}
