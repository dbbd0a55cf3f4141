//! Positional reads of cache files into owned buffers, from an async thread
//! without ever waiting on the disk there.
//!
//! A read first tries `preadv2(RWF_NOWAIT)`, which copies what the page cache
//! holds and refuses rather than waiting for the disk; only what is not
//! cached is read on the blocking pool. Unlike touching a mapped page, a read
//! reports a failing disk (`EIO` from network storage) or a file cut short as
//! an error for one response, never a `SIGBUS` for the whole process.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustix::io::{Errno, ReadWriteFlags};

/// What [`read_cached`] found.
#[derive(Debug)]
pub enum Cached {
    /// What the page cache held, from the first byte on.
    Hit(Bytes),
    /// The first byte needs the disk: the buffer, to read it into.
    Miss(BytesMut),
}

/// What the page cache holds of the `len` bytes at `offset`, from the
/// first on, read without waiting on the disk; a miss when the first byte
/// needs the disk (or the file system cannot say).
pub fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Cached> {
    let mut buf = BytesMut::zeroed(len);
    match cached_into(file, &mut buf, offset)? {
        0 => Ok(Cached::Miss(buf)),
        n => {
            buf.truncate(n);
            Ok(Cached::Hit(buf.freeze()))
        }
    }
}

/// Fills `buf` from `offset` through the page cache on the blocking pool,
/// waiting on the disk as it must.
pub async fn read_from_disk(file: &Arc<File>, offset: u64, mut buf: BytesMut) -> io::Result<Bytes> {
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        read_exact_at(&file, &mut buf, offset).map(|()| buf.freeze())
    })
    .await
    .map_err(io::Error::other)?
}

/// What the page cache holds of `[offset, offset + buf.len())`, without
/// waiting on the disk: `Ok(0)` when that needs the disk (or the file system
/// cannot say), else the bytes read.
fn cached_into(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut slices = [IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut slices, offset, ReadWriteFlags::NOWAIT) {
        Ok(0) => Err(cut_short()),
        Ok(n) => Ok(n),
        Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Fills `buf` from `offset`, waiting on the disk if need be. Blocks.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    match file.read_exact_at(buf, offset) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(cut_short()),
        other => other,
    }
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "cache file shorter than recorded",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// What the page cache holds of the range from its start, else the
    /// range from the disk: how hits read.
    async fn read(file: &Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
        match read_cached(file, offset, len)? {
            Cached::Hit(chunk) => Ok(chunk),
            Cached::Miss(buf) => read_from_disk(file, offset, buf).await,
        }
    }

    fn file_of(content: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(content).unwrap();
        let file = Arc::new(File::open(tmp.path()).unwrap());
        (tmp, file)
    }

    #[tokio::test]
    async fn a_read_from_disk_is_whole_when_the_page_cache_holds_only_its_start() {
        const LEN: usize = 8 * 1024 * 1024;
        let content: Vec<u8> = (0..2 * LEN).map(|i| (i % 251) as u8).collect();
        let (tmp, _) = file_of(&content);
        tmp.as_file().sync_all().unwrap();
        let file = Arc::new(File::open(tmp.path()).unwrap());
        // Out of the page cache, then its first page read back in (with
        // whatever the kernel reads ahead).
        rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        read_exact_at(&file, &mut [0; 4096], 0).unwrap();
        let cached = match read_cached(&file, 0, LEN).unwrap() {
            Cached::Hit(bytes) => bytes.len(),
            Cached::Miss(_) => 0,
        };
        assert!(
            cached > 0 && cached < LEN,
            "the page cache holds the range's start only ({cached} bytes)"
        );
        let whole = read_from_disk(&file, 0, BytesMut::zeroed(LEN))
            .await
            .unwrap();
        assert_eq!(whole.len(), LEN, "every byte asked for");
        assert_eq!(&whole[..], &content[..LEN]);
    }

    #[tokio::test]
    async fn reads_the_range_asked_for() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (_tmp, file) = file_of(&content);
        let mut at = 1000;
        while at < 150_000 {
            let got = read(&file, at as u64, 50_000).await.unwrap();
            assert!(!got.is_empty());
            assert_eq!(&got[..], &content[at..at + got.len()]);
            at += got.len();
        }
    }

    #[tokio::test]
    async fn a_file_cut_short_is_an_error() {
        let (tmp, file) = file_of(&[7; 10_000]);
        tmp.as_file().set_len(100).unwrap();
        let mut at = 0;
        let err = loop {
            match read(&file, at, 10_000 - at as usize).await {
                Ok(got) => at += got.len() as u64,
                Err(e) => break e,
            }
            assert!(at <= 100, "read past the end of the file");
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = read(&file, 5_000, 100).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
