//! What this replica still owes the shared store, kept across crashes in
//! its own redb file (`<data_dir>/bucket.redb`): blobs and manifests to
//! publish (added before an upload starts, removed when it is done, so an
//! upload that failed, or that a crash cut, is tried again later), and the
//! multipart uploads in progress (so that one a crash left behind is
//! aborted at the next start, rather than keeping its parts in the bucket
//! until a lifecycle rule removes them).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::oci::Digest;

/// `<kind> <digest>` -> when it was last owed (Unix nanoseconds; rows of
/// earlier versions hold seconds, and sort first).
const PENDING: TableDefinition<&str, u64> = TableDefinition::new("pending");
/// Multipart upload id -> the object key it writes.
const UPLOADS: TableDefinition<&str, &str> = TableDefinition::new("uploads");

/// Something to publish.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pending {
    /// A blob, read from its cache file.
    Blob(Digest),
    /// A manifest, read from the cache.
    Manifest(Digest),
}

impl Pending {
    fn key(&self) -> String {
        match self {
            Pending::Blob(d) => format!("blob {d}"),
            Pending::Manifest(d) => format!("manifest {d}"),
        }
    }

    fn parse(key: &str) -> Option<Pending> {
        let (kind, digest) = key.split_once(' ')?;
        let digest = Digest::parse(digest).ok()?;
        match kind {
            "blob" => Some(Pending::Blob(digest)),
            "manifest" => Some(Pending::Manifest(digest)),
            _ => None,
        }
    }
}

/// The journal file.
#[derive(Debug)]
pub struct Journal {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::storage("bucket journal", e)
}

impl Journal {
    /// Opens or creates the file.
    pub fn open(path: &Path) -> Result<Journal> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(PENDING).map_err(err)?;
        txn.open_table(UPLOADS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Journal { db })
    }

    /// Notes that `item` is to be published (again: owing it anew gives
    /// it a new stamp, so a [`Journal::forget`] of the old one misses).
    pub fn owe(&self, item: &Pending) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.write(PENDING, |t| t.insert(item.key().as_str(), now).map(drop))
    }

    /// Drops `item` if it is still owed as of `stamp` (what
    /// [`Journal::owed`] said): one owed again since, by a fill that
    /// stored it anew, stays.
    pub fn forget(&self, item: &Pending, stamp: u64) -> Result<()> {
        self.write(PENDING, |t| {
            let key = item.key();
            let current = t.get(key.as_str())?.map(|v| v.value());
            if current == Some(stamp) {
                t.remove(key.as_str())?;
            }
            Ok(())
        })
    }

    /// Notes that `item` is published, or needs publishing no more.
    pub fn settle(&self, item: &Pending) -> Result<()> {
        self.write(PENDING, |t| t.remove(item.key().as_str()).map(drop))
    }

    /// Everything still owed, oldest first, with the stamp it is owed as of.
    pub fn owed(&self) -> Result<Vec<(Pending, u64)>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(PENDING).map_err(err)?;
        let mut items = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (key, added) = entry.map_err(err)?;
            if let Some(item) = Pending::parse(key.value()) {
                items.push((added.value(), item));
            }
        }
        items.sort_by_key(|(added, _)| *added);
        Ok(items
            .into_iter()
            .map(|(added, item)| (item, added))
            .collect())
    }

    /// Notes a multipart upload that has started.
    pub fn upload_started(&self, id: &str, key: &str) -> Result<()> {
        self.write(UPLOADS, |t| t.insert(id, key).map(drop))
    }

    /// Notes a multipart upload completed or aborted.
    pub fn upload_ended(&self, id: &str) -> Result<()> {
        self.write(UPLOADS, |t| t.remove(id).map(drop))
    }

    /// The multipart uploads started and never ended: `(id, key)`.
    pub fn uploads(&self) -> Result<Vec<(String, String)>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(UPLOADS).map_err(err)?;
        let mut uploads = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (id, key) = entry.map_err(err)?;
            uploads.push((id.value().to_string(), key.value().to_string()));
        }
        Ok(uploads)
    }

    fn write<K, V>(
        &self,
        table: TableDefinition<K, V>,
        change: impl FnOnce(&mut redb::Table<K, V>) -> std::result::Result<(), redb::StorageError>,
    ) -> Result<()>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
    {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(table).map_err(err)?;
            change(&mut table).map_err(err)?;
        }
        txn.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u8) -> Digest {
        Digest::sha256_of(&[i])
    }

    #[test]
    fn what_is_owed_survives_a_reopen_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bucket.redb");
        {
            let journal = Journal::open(&path).unwrap();
            journal.owe(&Pending::Blob(digest(1))).unwrap();
            journal.owe(&Pending::Manifest(digest(2))).unwrap();
            journal.owe(&Pending::Blob(digest(3))).unwrap();
            journal.settle(&Pending::Blob(digest(3))).unwrap();
            journal
                .upload_started("upload-1", "blobs/sha256/aa")
                .unwrap();
            journal
                .upload_started("upload-2", "blobs/sha256/bb")
                .unwrap();
            journal.upload_ended("upload-2").unwrap();
        }
        let journal = Journal::open(&path).unwrap();
        let mut owed: Vec<Pending> = journal
            .owed()
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        owed.sort_by_key(|p| format!("{p:?}"));
        assert_eq!(
            owed,
            [Pending::Blob(digest(1)), Pending::Manifest(digest(2))]
        );
        assert_eq!(
            journal.uploads().unwrap(),
            [("upload-1".to_string(), "blobs/sha256/aa".to_string())]
        );
    }

    #[test]
    fn forgetting_misses_an_item_owed_again_since() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("bucket.redb")).unwrap();
        journal.owe(&Pending::Blob(digest(1))).unwrap();
        let (_, stamp) = journal.owed().unwrap()[0].clone();
        // Stored again (after an eviction) by a new fill.
        std::thread::sleep(std::time::Duration::from_millis(2));
        journal.owe(&Pending::Blob(digest(1))).unwrap();
        journal.forget(&Pending::Blob(digest(1)), stamp).unwrap();
        let owed = journal.owed().unwrap();
        assert_eq!(owed.len(), 1, "still owed");
        journal
            .forget(&Pending::Blob(digest(1)), owed[0].1)
            .unwrap();
        assert!(journal.owed().unwrap().is_empty());
    }

    #[test]
    fn owing_twice_is_owing_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("bucket.redb")).unwrap();
        journal.owe(&Pending::Blob(digest(1))).unwrap();
        journal.owe(&Pending::Blob(digest(1))).unwrap();
        assert_eq!(journal.owed().unwrap().len(), 1);
        journal.settle(&Pending::Blob(digest(1))).unwrap();
        assert!(journal.owed().unwrap().is_empty());
    }
}
