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
//! This is the one module with `unsafe`, for `mmap`, `mincore` and
//! `cachestat`.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
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
        self.map
            .as_ref()
            .is_none_or(|map| resident(map, map.len(), &self.file, self.offset))
    }

    /// Whether the range's first page is in the page cache: a window that
    /// is not wholly resident but starts so is mostly cached (a hot blob
    /// that lost some pages), not a range the disk must be asked for.
    pub fn starts_resident(&self) -> bool {
        let page = rustix::param::page_size();
        self.map
            .as_ref()
            .is_none_or(|map| resident(map, map.len().min(page), &self.file, self.offset))
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

/// Set once `cachestat(2)` has proved missing here (a kernel before 6.5,
/// or a seccomp profile that does not know it), so it is not tried again.
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// `cachestat(2)`'s number; syscalls added since Linux 5.1 have one number
/// on every architecture, and the `libc` crate does not list this one for
/// all of them.
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether every page of the first `len` bytes of the window `map` (mapped
/// from `file` at `offset`) is in the page cache. `cachestat(2)` walks the
/// file's page cache once for the whole range, about three times cheaper
/// on a 4 MiB window than `mincore(2)`'s lookup of every page, which is the
/// fallback where the kernel has no `cachestat`.
fn resident(map: &Mmap, len: usize, file: &File, offset: u64) -> bool {
    if !NO_CACHESTAT.load(Ordering::Relaxed) {
        match cachestat_resident(file, offset, len) {
            Ok(resident) => return resident,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                NO_CACHESTAT.store(true, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    mincore_resident(map, len)
}

/// Whether `cachestat(2)` counts every page of `[offset, offset + len)` of
/// `file` as cached. It counts a page whose read is still in flight too
/// (`mincore` would not); a `sendfile` of it then waits for a read that is
/// already under way, never for one of its own.
fn cachestat_resident(file: &File, offset: u64, len: usize) -> io::Result<bool> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    if len == 0 {
        return Ok(true);
    }
    let page = rustix::param::page_size() as u64;
    let pages = (offset + len as u64 - 1) / page - offset / page + 1;
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both `repr(C)`
    // copies of its `struct cachestat_range` and `struct cachestat`, which
    // live across the call; the descriptor is `file`'s, open for the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            std::os::fd::AsRawFd::as_raw_fd(file),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    match rc {
        0 => Ok(stat.nr_cache >= pages),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether every page of the first `len` bytes of `map` is in the page
/// cache (`mincore(2)`), which costs a lookup a page and touches no page.
fn mincore_resident(map: &Mmap, len: usize) -> bool {
    let page = rustix::param::page_size();
    let start = map.as_ptr() as usize;
    // memmap2 maps from the page boundary below the offset asked for.
    let aligned = start - start % page;
    let len = len.min(map.len()) + (start - aligned);
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
        if Mapping::new(&file, 0, 256 * 4096).unwrap().is_resident() {
            eprintln!("this file system keeps clean pages cached (tmpfs?); nothing to check");
            return;
        }
        let bytes = window(&Arc::default(), &file, 8192, 200 * 4096).unwrap();
        assert!(
            Mapping::new(&file, 8192, 200 * 4096).unwrap().is_resident(),
            "the window's pages were read in"
        );
        assert_eq!(&bytes[..], &content[8192..8192 + 200 * 4096]);
    }

    /// Both ways of asking agree, page by page, on a file of which only one
    /// page is cached: ranges inside that page are resident, any range
    /// that reaches a neighbour is not.
    #[test]
    fn cachestat_and_mincore_agree_on_which_ranges_are_cached() {
        let page = 4096u64;
        let (tmp, file, _) = blob(16 * page as usize);
        tmp.as_file().sync_all().unwrap();
        // No read-ahead, so reading one page caches that page alone.
        rustix::fs::fadvise(file.as_ref(), 0, None, rustix::fs::Advice::Random).unwrap();
        rustix::fs::fadvise(file.as_ref(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let mut one = vec![0u8; page as usize];
        crate::cache::pread::read_exact_at(&file, &mut one, 5 * page).unwrap();

        let ranges = [
            (5 * page, page as usize, true),
            (5 * page + 100, 100, true),
            (5 * page + 1, page as usize - 1, true),
            (4 * page, 2 * page as usize, false),
            (5 * page, page as usize + 1, false),
            (5 * page - 1, 2, false),
            (0, 16 * page as usize, false),
        ];
        let probe = Mapping::new(&file, 0, 16 * page as usize).unwrap();
        let probe_map = probe.map.as_ref().unwrap();
        if mincore_resident(probe_map, probe_map.len()) {
            eprintln!("this file system keeps clean pages cached (tmpfs?); nothing to check");
            return;
        }
        for (offset, len, cached) in ranges {
            let mapping = Mapping::new(&file, offset, len).unwrap();
            let map = mapping.map.as_ref().unwrap();
            assert_eq!(
                mincore_resident(map, map.len()),
                cached,
                "mincore of {offset}+{len}"
            );
            match cachestat_resident(&file, offset, len) {
                Ok(resident) => assert_eq!(resident, cached, "cachestat of {offset}+{len}"),
                Err(e) => eprintln!("no cachestat here ({e}); mincore checked alone"),
            }
        }
        // A window from the cached page on starts resident without being
        // resident; one from the page before it does neither.
        let from_cached = Mapping::new(&file, 5 * page, 4 * page as usize).unwrap();
        assert!(from_cached.starts_resident() && !from_cached.is_resident());
        let from_before = Mapping::new(&file, 4 * page, 4 * page as usize).unwrap();
        assert!(!from_before.starts_resident() && !from_before.is_resident());
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
