//! How a fill's bytes reach its temporary file: through the page cache, or,
//! for large blobs, around it with `O_DIRECT`.
//!
//! Writing a large blob through the page cache costs more CPU than hashing
//! it: every 4 KiB page is allocated, charged to the pod's memory cgroup and
//! copied into, and on a virtual machine a page the guest has not touched
//! yet costs a trip to the host too (see docs/performance.md, "Where a cold
//! miss's CPU goes"). A direct write costs one copy into an aligned buffer
//! and no page at all. Small blobs (configs, small layers) still go through
//! the page cache: they are the ones hit again at once, and their page
//! allocations are few.
//!
//! Readers of a fill in progress read the temporary file, so every byte a
//! batch publishes must be readable when the batch ends: the aligned part
//! of a batch goes out directly, and the unaligned tail (under 4 KiB) is
//! written through the page cache as well and kept to lead the next direct
//! write. Linux keeps the two coherent (a direct write drops the cached
//! pages it covers). A reader behind the fill reads the whole blocks below
//! the published tail directly too ([`super::direct_read`]): they are not
//! in the page cache, and reading them through it would fill it with pages
//! only to copy them out again.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

/// Blobs announced at least this large are written with `O_DIRECT`.
pub const DIRECT_FROM_BYTES: u64 = 16 * 1024 * 1024;

/// The alignment of a direct write's or read's buffer, offset and length:
/// the largest logical block size in use.
pub const ALIGN: usize = 4096;

/// The aligned buffer of one direct fill: the most one direct write sends.
const BUFFER_BYTES: usize = 1024 * 1024;

/// Writes a fill's batches at increasing offsets of its temporary file.
#[derive(Debug)]
pub enum FileWriter {
    /// Through the page cache.
    Buffered { file: Arc<File>, offset: u64 },
    /// Around it, with a buffered tail.
    Direct(Direct),
}

impl FileWriter {
    /// A writer for a fill of `size` bytes (if known) into `file` at `path`:
    /// direct for large blobs where the file system allows it, buffered
    /// otherwise.
    pub fn new(file: Arc<File>, path: &Path, size: Option<u64>) -> Self {
        if size.is_some_and(|s| s >= DIRECT_FROM_BYTES) {
            if let Some(direct) = open_direct(path) {
                return FileWriter::Direct(Direct {
                    direct,
                    buffered: file,
                    buf: AlignedBuf::new(BUFFER_BYTES),
                    len: 0,
                    offset: 0,
                });
            }
        }
        FileWriter::Buffered { file, offset: 0 }
    }

    /// Whether batches bypass the page cache.
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        matches!(self, FileWriter::Direct(_))
    }

    /// The file opened with `O_DIRECT`, for readers of the fill, when this
    /// writer writes around the page cache.
    pub fn direct_file(&self) -> Option<Arc<File>> {
        match self {
            FileWriter::Direct(direct) => Some(Arc::clone(&direct.direct)),
            FileWriter::Buffered { .. } => None,
        }
    }

    /// Writes one batch after the previous ones. Every byte of it can be read
    /// from the file when this returns.
    pub fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()> {
        match self {
            FileWriter::Buffered { file, offset } => {
                *offset += write_vectored_at(file, batch, *offset)? as u64;
                Ok(())
            }
            FileWriter::Direct(direct) => direct.write_batch(batch),
        }
    }
}

/// Writes a batch at `offset` with as few `pwritev` calls as the kernel
/// allows; returns the bytes written.
fn write_vectored_at(file: &File, batch: &[Bytes], offset: u64) -> io::Result<usize> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut rest = &mut slices[..];
    let mut done = 0;
    while !rest.is_empty() {
        match rustix::io::pwritev(file, rest, offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                done += n;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Opens `path` for direct writes, or `None` where the file system does not
/// take them: some refuse the open (tmpfs), some only the first write (a few
/// FUSE and network mounts), so one aligned block of zeros is written at the
/// start and cut off again.
fn open_direct(path: &Path) -> Option<Arc<File>> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let probe = AlignedBuf::new(ALIGN);
    match direct.write_at(probe.as_slice(), 0) {
        // The file is as long as what the fill writes, and no longer.
        Ok(n) if n == ALIGN => direct.set_len(0).ok().map(|()| Arc::new(direct)),
        _ => None,
    }
}

/// The direct state: the aligned buffer and where its first byte goes.
#[derive(Debug)]
pub struct Direct {
    direct: Arc<File>,
    buffered: Arc<File>,
    buf: AlignedBuf,
    /// Bytes in `buf`.
    len: usize,
    /// The file offset of `buf[0]`; always aligned.
    offset: u64,
}

impl Direct {
    fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()> {
        for chunk in batch {
            let mut data = &chunk[..];
            while !data.is_empty() {
                let room = self.buf.capacity() - self.len;
                let n = room.min(data.len());
                self.buf.as_mut_slice()[self.len..self.len + n].copy_from_slice(&data[..n]);
                self.len += n;
                data = &data[n..];
                if self.len == self.buf.capacity() {
                    self.send_aligned(self.len)?;
                }
            }
        }
        let aligned = self.len - self.len % ALIGN;
        if aligned > 0 {
            self.send_aligned(aligned)?;
        }
        if self.len > 0 {
            self.buffered
                .write_all_at(&self.buf.as_slice()[..self.len], self.offset)?;
        }
        Ok(())
    }

    /// Writes the first `n` (aligned) bytes of the buffer directly and moves
    /// the rest to its front.
    fn send_aligned(&mut self, n: usize) -> io::Result<()> {
        debug_assert_eq!(n % ALIGN, 0);
        let mut sent = 0;
        while sent < n {
            let wrote = self
                .direct
                .write_at(&self.buf.as_slice()[sent..n], self.offset + sent as u64)?;
            if wrote == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += wrote;
        }
        self.buf.as_mut_slice().copy_within(n..self.len, 0);
        self.len -= n;
        self.offset += n as u64;
        Ok(())
    }
}

/// A heap buffer whose start is [`ALIGN`]-aligned, as `O_DIRECT` needs.
#[derive(Debug)]
pub(super) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    capacity: usize,
}

impl AlignedBuf {
    pub(super) fn new(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf {
            raw,
            start,
            capacity,
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.capacity]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.capacity]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes `chunks` in batches of `per_batch` and checks after each
    /// batch that every byte so far reads back from the file.
    fn write_and_check(dir: &Path, chunks: &[Vec<u8>], per_batch: usize) -> bool {
        let path = dir.join("fill.part");
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap(),
        );
        let mut writer = FileWriter::new(Arc::clone(&file), &path, Some(DIRECT_FROM_BYTES));
        let mut expected = Vec::new();
        for batch in chunks.chunks(per_batch.max(1)) {
            let batch: Vec<Bytes> = batch.iter().cloned().map(Bytes::from).collect();
            writer.write_batch(&batch).unwrap();
            for chunk in &batch {
                expected.extend_from_slice(chunk);
            }
            let mut read = vec![0u8; expected.len()];
            file.read_exact_at(&mut read, 0).unwrap();
            assert_eq!(
                read, expected,
                "every written byte is readable after its batch"
            );
        }
        assert_eq!(file.metadata().unwrap().len(), expected.len() as u64);
        writer.is_direct()
    }

    #[test]
    fn a_large_fill_is_written_directly_and_reads_back_after_every_batch() {
        let dir = tempfile::tempdir().unwrap();
        // Unaligned chunks, a chunk larger than the buffer, a tail under a block.
        let chunks: Vec<Vec<u8>> = [5000, 70_000, BUFFER_BYTES + 12_345, 1, 4096, 333]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 31 + i * 7) as u8).collect())
            .collect();
        let direct = write_and_check(dir.path(), &chunks, 2);
        // ext4 and xfs take O_DIRECT; where the temporary directory is on
        // tmpfs, this checked the fallback instead.
        if !direct {
            eprintln!("the temporary directory refuses O_DIRECT; checked the fallback");
        }
    }

    #[test]
    fn small_or_unsized_fills_go_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fill.part");
        let file = Arc::new(File::create(&path).unwrap());
        assert!(!FileWriter::new(Arc::clone(&file), &path, Some(1024)).is_direct());
        assert!(!FileWriter::new(Arc::clone(&file), &path, None).is_direct());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_chunking_reads_back_exactly(
            sizes in proptest::collection::vec(1usize..300_000, 1..12),
            per_batch in 1usize..5,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let chunks: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|b| (b ^ (i * 131)) as u8).collect())
                .collect();
            write_and_check(dir.path(), &chunks, per_batch);
        }
    }
}
