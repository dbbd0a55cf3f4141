//! One lasti per data directory: an exclusive `flock` on `<data>/lock`,
//! taken before anything in the directory is touched and held for the
//! cache's whole life.
//!
//! An explicit lock rather than the index's own (redb's): cleaning `tmp/`
//! at start must come after it, and a second process must learn that the
//! *directory* is in use, not that some database file is. The kernel drops
//! an `flock` when its holder dies, so a crash (even SIGKILL) leaves no
//! stale lock to clean up by hand.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// Proof that this process owns the data directory; dropping it releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `data_dir` if needed and locks it, or says which process has.
    /// Writes this process's id into the lock file, for the next one's message.
    pub fn acquire(data_dir: &Path) -> Result<DirLock> {
        let fail = |e: io::Error| Error::storage(&format!("lock {}", data_dir.display()), e);
        fs::create_dir_all(data_dir).map_err(fail)?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join(LOCK_FILE))
            .map_err(fail)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(Error::DataDirInUse {
                    dir: data_dir.to_path_buf(),
                    pid: holder(&mut file),
                })
            }
            Err(e) => return Err(fail(e.into())),
        }
        file.set_len(0).map_err(fail)?;
        writeln!(file, "{}", std::process::id()).map_err(fail)?;
        Ok(DirLock { _file: file })
    }
}

/// The process id the holder wrote, if it could be read.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DirLock::acquire(&data).unwrap();
        match DirLock::acquire(&data) {
            Err(Error::DataDirInUse { dir, pid }) => {
                assert_eq!(dir, data);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected DataDirInUse, got {other:?}"),
        }
        drop(first);
        DirLock::acquire(&data).unwrap();
    }
}
