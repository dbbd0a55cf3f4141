//! Durable metadata that the blob files cannot carry: which digest a tag named
//! when last checked, and the media type of each stored manifest.
//!
//! Kept in redb, an embedded, crash-safe, pure-Rust key-value store with ACID
//! transactions: a record is either fully written or not at all, and opening
//! the same data directory from two processes fails instead of corrupting it.
//! Calls block briefly; async callers wrap them in `spawn_blocking`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::oci::Digest;

const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags");
const MANIFEST_TYPES: TableDefinition<&str, &str> = TableDefinition::new("manifest_types");
/// Signature verdicts that hold for good (a digest signed by a key set),
/// by the policy's key.
const VERDICTS: TableDefinition<&str, &str> = TableDefinition::new("signature_verdicts");

/// What a tag resolved to, and when that was last confirmed upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest the tag named.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
    /// Seconds since the Unix epoch when the upstream last confirmed it.
    pub checked_at: u64,
}

/// How far ahead of this replica's clock another's `checked_at` may be and
/// still count as "just now": clocks of pods on different nodes differ by
/// a little, not by minutes.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

impl TagRecord {
    /// How long ago the upstream confirmed this answer; zero for a time
    /// after `now`, whatever its value (never a panic).
    pub fn age(&self, now: SystemTime) -> Duration {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Duration::from_secs(now.saturating_sub(self.checked_at))
    }

    /// The record as this replica may trust it at `now` (Unix seconds): a
    /// `checked_at` a little ahead (within [`CLOCK_SKEW`]) is taken as now;
    /// one further ahead was written by a clock that ran wrong, and counts
    /// as never confirmed, so the tag is revalidated (and the record
    /// rewritten with this clock) instead of pinned until that time comes.
    pub fn trusted(mut self, now: u64) -> TagRecord {
        if self.checked_at > now.saturating_add(CLOCK_SKEW.as_secs()) {
            self.checked_at = 0;
        } else {
            self.checked_at = self.checked_at.min(now);
        }
        self
    }
}

/// Seconds since the Unix epoch, for `checked_at`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The metadata store.
pub struct Index {
    db: Database,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Index")
    }
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::storage("index", e)
}

impl Index {
    /// Opens or creates the store file.
    pub fn open(path: &Path) -> Result<Index> {
        let db = Database::create(path).map_err(store_err)?;
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(TAGS).map_err(store_err)?;
        txn.open_table(MANIFEST_TYPES).map_err(store_err)?;
        txn.open_table(VERDICTS).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(Index { db })
    }

    /// The record of a tag, keyed by [`tag_key`].
    pub fn tag(&self, key: &str) -> Result<Option<TagRecord>> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(TAGS).map_err(store_err)?;
        let Some(value) = table.get(key).map_err(store_err)? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(value.value()).ok())
    }

    /// Records what a tag resolved to.
    pub fn put_tag(&self, key: &str, record: &TagRecord) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(store_err)?;
        let txn = self.db.begin_write().map_err(store_err)?;
        txn.open_table(TAGS)
            .map_err(store_err)?
            .insert(key, value.as_slice())
            .map_err(store_err)?;
        txn.commit().map_err(store_err)
    }

    /// The media type of a stored manifest.
    pub fn manifest_type(&self, digest: &Digest) -> Result<Option<String>> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(MANIFEST_TYPES).map_err(store_err)?;
        let found = table.get(digest.to_string().as_str()).map_err(store_err)?;
        Ok(found.map(|v| v.value().to_string()))
    }

    /// Records a manifest's media type; done before its bytes are committed.
    pub fn put_manifest_type(&self, digest: &Digest, media_type: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(store_err)?;
        txn.open_table(MANIFEST_TYPES)
            .map_err(store_err)?
            .insert(digest.to_string().as_str(), media_type)
            .map_err(store_err)?;
        txn.commit().map_err(store_err)
    }

    /// Forgets the media types of evicted manifests (and of blobs that were
    /// never manifests: a missing row is no error), in one transaction.
    pub fn remove_manifest_types(&self, digests: &[Digest]) -> Result<()> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(MANIFEST_TYPES).map_err(store_err)?;
            for digest in digests {
                table
                    .remove(digest.to_string().as_str())
                    .map_err(store_err)?;
            }
        }
        txn.commit().map_err(store_err)
    }

    /// A kept signature verdict.
    pub fn verdict(&self, key: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(VERDICTS).map_err(store_err)?;
        let found = table.get(key).map_err(store_err)?;
        Ok(found.map(|v| v.value().to_string()))
    }

    /// Keeps signature verdicts, in one transaction.
    pub fn put_verdicts(&self, verdicts: &[(String, &str)]) -> Result<()> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(VERDICTS).map_err(store_err)?;
            for (key, verdict) in verdicts {
                table.insert(key.as_str(), *verdict).map_err(store_err)?;
            }
        }
        txn.commit().map_err(store_err)
    }

    /// Deletes the tag records for which `stale` holds; returns how many.
    pub fn remove_tags_where(&self, stale: impl Fn(&TagRecord) -> bool) -> Result<usize> {
        let txn = self.db.begin_write().map_err(store_err)?;
        let removed = {
            let mut table = txn.open_table(TAGS).map_err(store_err)?;
            let before = table.len().map_err(store_err)?;
            table
                .retain(|_, value| {
                    serde_json::from_slice::<TagRecord>(value).is_ok_and(|record| !stale(&record))
                })
                .map_err(store_err)?;
            before - table.len().map_err(store_err)?
        };
        txn.commit().map_err(store_err)?;
        Ok(removed as usize)
    }

    /// Deletes the tag records of `keys` (a missing one is no error), in
    /// one transaction; returns the keys that were there.
    pub fn remove_tags(&self, keys: &[String]) -> Result<Vec<String>> {
        let txn = self.db.begin_write().map_err(store_err)?;
        let mut removed = Vec::new();
        {
            let mut table = txn.open_table(TAGS).map_err(store_err)?;
            for key in keys {
                if table.remove(key.as_str()).map_err(store_err)?.is_some() {
                    removed.push(key.clone());
                }
            }
        }
        txn.commit().map_err(store_err)?;
        Ok(removed)
    }

    /// The digests of every stored manifest (those with a media type).
    pub fn manifest_digests(&self) -> Result<Vec<Digest>> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(MANIFEST_TYPES).map_err(store_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(store_err)? {
            let (key, _) = item.map_err(store_err)?;
            if let Ok(digest) = Digest::parse(key.value()) {
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// Every tag record, for listing the cache.
    pub fn tags(&self) -> Result<Vec<(String, TagRecord)>> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(TAGS).map_err(store_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(store_err)? {
            let (key, value) = item.map_err(store_err)?;
            if let Ok(record) = serde_json::from_slice(value.value()) {
                out.push((key.value().to_string(), record));
            }
        }
        Ok(out)
    }
}

/// The key of a tag: upstream, repository and tag, separated by characters
/// that none of them may contain.
pub fn tag_key(upstream: &str, repository: &str, tag: &str) -> String {
    format!("{upstream} {repository}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let digest = Digest::sha256_of(b"m");
        let record = TagRecord {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
            checked_at: 42,
        };
        {
            let index = Index::open(&path).unwrap();
            let key = tag_key("docker.io", "library/alpine", "3");
            index.put_tag(&key, &record).unwrap();
            index
                .put_manifest_type(&digest, &record.media_type)
                .unwrap();
            assert!(
                Index::open(&path).is_err(),
                "a second opener must be refused"
            );
        }
        let index = Index::open(&path).unwrap();
        let key = tag_key("docker.io", "library/alpine", "3");
        assert_eq!(index.tag(&key).unwrap(), Some(record.clone()));
        assert_eq!(index.tag("docker.io library/alpine:4").unwrap(), None);
        assert_eq!(
            index.manifest_type(&digest).unwrap().as_deref(),
            Some(record.media_type.as_str())
        );
        assert_eq!(index.tags().unwrap().len(), 1);
    }

    #[test]
    fn stale_tag_records_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb")).unwrap();
        let record = |checked_at| TagRecord {
            digest: Digest::sha256_of(b"m"),
            media_type: "t".into(),
            size: 1,
            checked_at,
        };
        index.put_tag("old", &record(1)).unwrap();
        index.put_tag("new", &record(unix_now())).unwrap();
        let removed = index.remove_tags_where(|r| r.checked_at < 100).unwrap();
        assert_eq!(removed, 1);
        assert!(index.tag("old").unwrap().is_none());
        assert!(index.tag("new").unwrap().is_some());
    }

    #[test]
    fn age_is_measured_from_checked_at() {
        let record = TagRecord {
            digest: Digest::sha256_of(b""),
            media_type: String::new(),
            size: 0,
            checked_at: 100,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(160);
        assert_eq!(record.age(now), Duration::from_secs(60));
        assert_eq!(record.age(SystemTime::UNIX_EPOCH), Duration::ZERO);
        let far = TagRecord {
            checked_at: u64::MAX,
            ..record
        };
        assert_eq!(far.age(now), Duration::ZERO, "no overflow, no panic");
    }

    #[test]
    fn a_record_from_a_clock_that_ran_ahead_is_not_trusted() {
        let at = |checked_at| TagRecord {
            digest: Digest::sha256_of(b""),
            media_type: String::new(),
            size: 0,
            checked_at,
        };
        let now = 1_000_000;
        assert_eq!(at(now - 5).trusted(now).checked_at, now - 5);
        assert_eq!(at(now + 30).trusted(now).checked_at, now, "within the skew");
        assert_eq!(at(now + 3600).trusted(now).checked_at, 0, "an hour ahead");
        assert_eq!(at(u64::MAX).trusted(now).checked_at, 0);
    }
}
