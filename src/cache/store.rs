//! The content-addressed file layout under the data directory.
//!
//! ```text
//! <data>/blobs/sha256/ab/ab12...   one file per verified blob or manifest
//! <data>/tmp/<random>.part         fills in progress; removed on drop and on start
//! <data>/index.redb                tags and manifest media types (see `index`)
//! <data>/lock                      held by the one process using the directory
//! ```
//! Paths are built only from a parsed [`Digest`] (validated lowercase hex), so
//! nothing a client sends ever becomes a path. A file is renamed into
//! `blobs/` only after its digest and length were checked and it was synced,
//! so a file found there is whole, whatever crashed before.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rand::Rng;

use super::dir_lock::DirLock;
use crate::oci::{Algorithm, Digest};

/// One cached object found on disk at start.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// Its digest, from its file name.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The space it takes on disk.
    pub charge: u64,
    /// When it was last used, from its modification time.
    pub last_use: SystemTime,
}

/// The space a file takes on disk: its allocated blocks, or its length
/// where the file system reports none (a file system that packs small files).
pub fn charge(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (meta.blocks() * 512).max(meta.len())
}

/// The blob directory tree.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    /// Held as long as the store: the directory is this process's alone.
    _lock: DirLock,
}

impl BlobStore {
    /// Creates the tree if needed and removes temporary files a crash left
    /// behind; only with the directory's lock, so never another process's.
    pub fn open(data_dir: &Path, lock: DirLock) -> io::Result<BlobStore> {
        let store = BlobStore {
            blobs: data_dir.join("blobs"),
            tmp: data_dir.join("tmp"),
            _lock: lock,
        };
        fs::create_dir_all(&store.blobs)?;
        fs::create_dir_all(&store.tmp)?;
        for entry in fs::read_dir(&store.tmp)? {
            let entry = entry?;
            tracing::info!(file = %entry.path().display(), "removing a temporary file left by an earlier run");
            fs::remove_file(entry.path())?;
        }
        Ok(store)
    }

    /// Lists every stored blob, for rebuilding the usage index at start.
    pub fn scan(&self) -> io::Result<Vec<StoredBlob>> {
        let mut found = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.blobs.join(algorithm.as_str());
            let Ok(prefixes) = fs::read_dir(&dir) else {
                continue;
            };
            for prefix in prefixes {
                let entries = match prefix.and_then(|p| fs::read_dir(p.path())) {
                    Ok(entries) => entries,
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "skipping an unreadable directory of the blob store");
                        continue;
                    }
                };
                for entry in entries {
                    // One unreadable entry costs that blob, not the index.
                    let found_one = entry.and_then(|entry| {
                        let meta = entry.metadata()?;
                        Ok((entry, meta))
                    });
                    let (entry, meta) = match found_one {
                        Ok(found_one) => found_one,
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "skipping an unreadable blob file");
                            continue;
                        }
                    };
                    let name = entry.file_name();
                    let parsed = name.to_str().and_then(|hex| {
                        Digest::parse(&format!("{}:{hex}", algorithm.as_str())).ok()
                    });
                    let Some(digest) = parsed else {
                        tracing::warn!(file = %entry.path().display(), "ignoring a foreign file in the blob store");
                        continue;
                    };
                    found.push(StoredBlob {
                        digest,
                        size: meta.len(),
                        charge: charge(&meta),
                        last_use: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        Ok(found)
    }

    /// Where a verified blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Opens a stored blob for reading; `None` when it is not there.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<(File, fs::Metadata)>> {
        match File::open(self.path(digest)) {
            Ok(file) => {
                let meta = file.metadata()?;
                Ok(Some((file, meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a stored blob (eviction); a missing file is not an error.
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates a new temporary file for a fill.
    pub fn temp(&self) -> io::Result<TempBlob> {
        let name = format!("{:016x}.part", rand::thread_rng().gen::<u64>());
        let path = self.tmp.join(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempBlob {
            path,
            file: Some(Arc::new(file)),
            committed: false,
        })
    }

    /// Proves the data directory is writable: creates and removes a file.
    pub fn probe(&self) -> io::Result<()> {
        let temp = self.temp()?;
        temp.file().sync_data()
    }

    /// Renames a synced temporary file into place. [`BlobStore::sync_place`]
    /// then makes the rename durable.
    pub fn place(&self, mut temp: TempBlob, digest: &Digest) -> io::Result<()> {
        let target = self.path(digest);
        let parent = target.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent)?;
        fs::rename(&temp.path, &target)?;
        temp.committed = true;
        Ok(())
    }

    /// Syncs the directory a blob was renamed into.
    pub fn sync_place(&self, digest: &Digest) -> io::Result<()> {
        let target = self.path(digest);
        File::open(target.parent().expect("blob paths have a parent"))?.sync_all()
    }
}

/// A fill's file while it is written. Dropping it uncommitted removes it, so
/// a failed or abandoned fill leaves nothing behind.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    /// Always `Some` until dropped, when the removal takes it.
    file: Option<Arc<File>>,
    committed: bool,
}

impl TempBlob {
    /// The open file, for writing the fill and for followers to read it.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until dropped")
    }

    /// The open file as a handle that outlives a borrow, for blocking steps
    /// and readers.
    pub fn shared_file(&self) -> Arc<File> {
        Arc::clone(self.file.as_ref().expect("open until dropped"))
    }

    /// Flushes the file's data to the disk and returns the space it takes.
    pub fn sync(&self) -> io::Result<u64> {
        let file = self.file();
        file.sync_data()?;
        Ok(charge(&file.metadata()?))
    }

    /// Its path, for opening a second handle.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempBlob {
    /// An abandoned fill of a large blob frees its extents when its file is
    /// unlinked and closed, which can take milliseconds: inside the runtime
    /// both happen on its blocking pool, not on the async thread that
    /// dropped the fill. A removal the runtime's shutdown cuts short is
    /// finished at the next start ([`BlobStore::open`]).
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let (path, file) = (std::mem::take(&mut self.path), self.file.take());
        let remove = move || {
            let _ = fs::remove_file(&path);
            drop(file);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open(dir: &Path) -> BlobStore {
        BlobStore::open(dir, DirLock::acquire(dir).unwrap()).unwrap()
    }

    #[test]
    fn commit_places_the_file_under_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let temp = store.temp().unwrap();
        temp.file().write_all(b"hello").unwrap();
        let digest = Digest::sha256_of(b"hello");
        temp.sync().unwrap();
        store.place(temp, &digest).unwrap();
        store.sync_place(&digest).unwrap();
        let (_, meta) = store.open_blob(&digest).unwrap().unwrap();
        assert_eq!(meta.len(), 5);
        assert!(charge(&meta) >= 5);
        let path = store.path(&digest);
        assert!(path.starts_with(dir.path().join("blobs/sha256")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let scanned = store.scan().unwrap();
        assert_eq!(scanned.len(), 1);
        assert_eq!(scanned[0].digest, digest);
    }

    #[test]
    fn dropped_temp_files_vanish_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let temp = store.temp().unwrap();
        let path = temp.path().to_path_buf();
        drop(temp);
        assert!(!path.exists());
        drop(store);

        fs::write(dir.path().join("tmp/crashed.part"), b"half").unwrap();
        let store = open(dir.path());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.scan().unwrap().is_empty());
    }

    #[test]
    fn foreign_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        fs::create_dir_all(dir.path().join("blobs/sha256/zz")).unwrap();
        fs::write(dir.path().join("blobs/sha256/zz/not-a-digest"), b"x").unwrap();
        assert!(store.scan().unwrap().is_empty());
    }
}
