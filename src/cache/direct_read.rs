//! Reads of cache files around the page cache, with `O_DIRECT`: straight
//! from the disk into a buffer of the reader's own.
//!
//! A large blob's pages are usually not in the page cache: its fill was
//! written around it ([`super::file_writer`]), and a pod's memory limit
//! would not keep them there anyway. Reading such a range through the page
//! cache first allocates and fills a page for every 4 KiB, only for the
//! bytes to be copied out again; on the virtual machine measured in
//! docs/performance.md ("The first hit of a large blob") that ran at half
//! the disk's rate. A direct read asks the disk for the whole range in one
//! request and copies nothing on the way.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use bytes::Bytes;

use super::file_writer::{AlignedBuf, ALIGN};

/// Most bytes one direct read asks for: one request to the disk, and the
/// memory a reader holds for it. Only a blob's lone reader reads directly,
/// so this is held once per large blob being read, not once per client. A
/// quarter of it cost a lone 1 GiB hit 1.7x the CPU (four times the trips
/// to the blocking pool) and a fifth more time (docs/performance.md).
pub const PIECE: u64 = 1024 * 1024;

/// A second handle on `file`, opened with `O_DIRECT`, or `None` where the
/// file system refuses it. Opened through `/proc/self/fd`, so it is the
/// same inode even after eviction unlinked the name. On a local file
/// system it never touches the disk (the inode is in memory while `file`
/// is open); a network one may ask its server, so call it on the blocking
/// pool.
pub fn reopen(file: &File) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// Reads `[start, end)` of `file`, opened with `O_DIRECT`; `start` must be
/// [`ALIGN`]ed. The disk is asked for whole blocks, so the last one may
/// run past `end`, or stop early at the end of the file; either way the
/// result is exactly `[start, end)`, or an error when the file is shorter.
/// Blocks: call it on the blocking pool.
pub fn read(file: &File, start: u64, end: u64) -> io::Result<Bytes> {
    debug_assert!(start % ALIGN as u64 == 0 && start < end);
    let want = (end - start) as usize;
    let mut buf = AlignedBuf::new(want.next_multiple_of(ALIGN));
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf.as_mut_slice()[done..], start + done as u64)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cache file shorter than recorded",
                ))
            }
            n => done += n,
        }
    }
    Ok(Bytes::from_owner(buf).slice(..want))
}

/// Whether an error says the file system takes no direct reads after all
/// (it let the file be opened with `O_DIRECT`, then refused the read), so
/// the reader should read through the page cache instead.
pub fn refused(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_exact_ranges_up_to_an_unaligned_end_of_file() {
        let size = 3 * ALIGN + 1234;
        let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&content)
            .unwrap();
        let file = File::open(&path).unwrap();
        let Some(direct) = reopen(&file) else {
            eprintln!("the temporary directory refuses O_DIRECT; nothing to check");
            return;
        };
        let a = ALIGN as u64;
        for (start, end) in [
            (0, 10),
            (a, 2 * a + 7),
            (0, size as u64),
            (3 * a, size as u64),
        ] {
            let got = read(&direct, start, end).unwrap();
            assert_eq!(&got[..], &content[start as usize..end as usize]);
        }
        let err = read(&direct, 3 * a, size as u64 + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
