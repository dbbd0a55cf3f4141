//! Memory-mapped windows of stored blobs: a cache hit is handed to hyper as
//! `Bytes` that point into the page cache, never copied into a user-space
//! buffer.
//!
//! Each live window is also listed in the cache's [`Windows`] (address →
//! file and offset), so the plain-TCP connection can recognise a window's
//! bytes when hyper writes them and send them with `sendfile(2)` straight
//! from the page cache (see [`crate::server::sendfile`]). Windows go only to
//! such connections; the bytes on the wire are the file's.
//!
//! This is the one module with `unsafe`, for `mmap` and `mincore`.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

/// Bytes mapped at a time. Small enough that resident memory stays flat
/// however large the blob and however many clients read it (a window is
/// unmapped as soon as hyper has written it).
pub const WINDOW: u64 = 4 * 1024 * 1024;

/// Bytes read at a time when a window is read into the page cache.
const READ_IN_PIECE: usize = 256 * 1024;

/// Where a live window's bytes come from.
#[derive(Debug)]
struct Region {
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// Every live window of a cache, by the address of its first byte. The
/// cache owns it and lists each window it hands out; the server is handed
/// it to look up the buffers hyper writes.
#[derive(Debug, Default)]
pub struct Windows {
    regions: RwLock<BTreeMap<usize, Region>>,
}

impl Windows {
    /// The file and offset that `bytes` were mapped from, when they lie
    /// wholly inside one live window; `None` for any other memory.
    ///
    /// The caller must hold the `Bytes` that `bytes` borrows from (so the
    /// window stays mapped and listed while the answer is used).
    pub fn source(&self, bytes: &[u8]) -> Option<(Arc<File>, u64)> {
        if bytes.is_empty() {
            return None;
        }
        let start = bytes.as_ptr() as usize;
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let (&base, region) = regions.range(..=start).next_back()?;
        let skip = start - base;
        (skip + bytes.len() <= region.len)
            .then(|| (Arc::clone(&region.file), region.offset + skip as u64))
    }
}

/// The owner of a window's `Bytes`: unlists the window, then unmaps it.
struct Window {
    map: Mmap,
    windows: Arc<Windows>,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Unlisted before `map` is unmapped, so an address is never listed
        // for a mapping that no longer exists.
        let start = self.map.as_ptr() as usize;
        self.windows
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&start);
    }
}

/// A mapped range of a stored blob, not yet handed out.
#[derive(Debug)]
pub struct Mapping {
    map: Option<Mmap>,
    file: Arc<File>,
    offset: u64,
}

impl Mapping {
    /// Maps `[offset, offset + len)` of a stored blob. Mapping reads
    /// nothing, so it is cheap enough for an async thread.
    pub fn new(file: &Arc<File>, offset: u64, len: usize) -> io::Result<Mapping> {
        let map = match len {
            0 => None,
            // SAFETY: a mapped file must not shrink or change while mapped.
            // Files under `blobs/` are complete and immutable: they are
            // written in `tmp/`, verified, synced and renamed into place, and
            // lasti never opens them for writing again. Eviction unlinks the
            // name only; the inode and the mapping stay valid until the last
            // window is dropped. Only another process truncating a cache file
            // could break this, and the data directory belongs to lasti alone.
            _ => Some(unsafe {
                MmapOptions::new()
                    .offset(offset)
                    .len(len)
                    .map(file.as_ref())?
            }),
        };
        Ok(Mapping {
            map,
            file: Arc::clone(file),
            offset,
        })
    }

    /// Whether every page is in the page cache, so sending or reading the
    /// range never waits on the disk.
    pub fn is_resident(&self) -> bool {
        self.map.as_ref().is_none_or(resident)
    }

    /// Reads the range into the page cache through the file, not through
    /// the mapping: a disk error (or a file cut short) is an error here,
    /// where touching the mapped page would be a `SIGBUS` for the process.
    /// Blocks: call it on a blocking thread, for a mapping that is not
    /// resident.
    pub fn read_in(&self) -> io::Result<()> {
        let Some(map) = &self.map else {
            return Ok(());
        };
        let mut buf = vec![0u8; READ_IN_PIECE.min(map.len())];
        let mut done = 0;
        while done < map.len() {
            let piece = (map.len() - done).min(buf.len());
            let at = self.offset + done as u64;
            super::pread::read_exact_at(&self.file, &mut buf[..piece], at)?;
            done += piece;
        }
        Ok(())
    }

    /// The range as `Bytes` that unmap when dropped, listed in `windows`
    /// for `sendfile`.
    pub fn into_bytes(self, windows: &Arc<Windows>) -> Bytes {
        let Some(map) = self.map else {
            return Bytes::new();
        };
        let region = Region {
            len: map.len(),
            file: self.file,
            offset: self.offset,
        };
        windows
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(map.as_ptr() as usize, region);
        Bytes::from_owner(Window {
            map,
            windows: Arc::clone(windows),
        })
    }
}

/// Maps `[offset, offset + len)` of a stored blob and returns it once it is
/// in the page cache, reading it in if need be (so this may block). The
/// steps the blob reader takes, in one call, for tests.
#[cfg(test)]
pub fn window(
    windows: &Arc<Windows>,
    file: &Arc<File>,
    offset: u64,
    len: usize,
) -> io::Result<Bytes> {
    let mapping = Mapping::new(file, offset, len)?;
    if !mapping.is_resident() {
        mapping.read_in()?;
    }
    Ok(mapping.into_bytes(windows))
}

/// Whether every page of `map` is in the page cache (`mincore(2)`), which
/// costs a lookup a page and touches no page.
fn resident(map: &Mmap) -> bool {
    let page = rustix::param::page_size();
    let start = map.as_ptr() as usize;
    // memmap2 maps from the page boundary below the offset asked for.
    let aligned = start - start % page;
    let len = map.len() + (start - aligned);
    let mut pages = vec![0u8; len.div_ceil(page)];
    // SAFETY: `[aligned, aligned + len)` lies inside the mapping `map` owns,
    // which lives across the call, and `pages` has one byte for each of its
    // pages, as mincore writes.
    let rc = unsafe { libc::mincore(aligned as *mut libc::c_void, len, pages.as_mut_ptr()) };
    rc == 0 && pages.iter().all(|p| p & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn blob(len: usize) -> (tempfile::NamedTempFile, Arc<File>, Vec<u8>) {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&content).unwrap();
        let file = Arc::new(File::open(tmp.path()).unwrap());
        (tmp, file, content)
    }

    #[test]
    fn a_window_holds_the_file_range_and_knows_its_source() {
        let (_tmp, file, content) = blob(3 * 4096 + 100);
        let offset = 4096 + 17;
        let windows = Arc::new(Windows::default());
        let bytes = window(&windows, &file, offset as u64, 5000).unwrap();
        assert_eq!(&bytes[..], &content[offset..offset + 5000]);

        let (_, at) = windows.source(&bytes).expect("a window is listed");
        assert_eq!(at, offset as u64);
        let (_, at) = windows.source(&bytes[100..200]).expect("a part of it too");
        assert_eq!(at, offset as u64 + 100);
    }

    #[test]
    fn a_window_out_of_the_page_cache_is_read_in_before_it_is_handed_out() {
        let (tmp, file, content) = blob(256 * 4096);
        tmp.as_file().sync_all().unwrap();
        rustix::fs::fadvise(file.as_ref(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
        // SAFETY: the test's own file, not changed while mapped.
        let probe = unsafe { MmapOptions::new().map(file.as_ref()).unwrap() };
        if resident(&probe) {
            eprintln!("this file system keeps clean pages cached (tmpfs?); nothing to check");
            return;
        }
        let bytes = window(&Arc::default(), &file, 8192, 200 * 4096).unwrap();
        let probe = unsafe {
            MmapOptions::new()
                .offset(8192)
                .len(200 * 4096)
                .map(file.as_ref())
                .unwrap()
        };
        assert!(resident(&probe), "the window's pages were read in");
        assert_eq!(&bytes[..], &content[8192..8192 + 200 * 4096]);
    }

    #[test]
    fn other_memory_and_dropped_windows_have_no_source() {
        let (_tmp, file, _) = blob(8192);
        let heap = vec![1u8; 4096];
        let windows = Arc::new(Windows::default());
        assert!(windows.source(&heap).is_none());
        assert!(windows.source(&[]).is_none());

        let bytes = window(&windows, &file, 0, 8192).unwrap();
        assert!(windows.source(&bytes).is_some());
        drop(bytes);
        let regions = windows.regions.read().unwrap();
        assert!(regions.is_empty(), "a dropped window is unlisted");
    }
}
