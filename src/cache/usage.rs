//! Size accounting and least-recently-used eviction of stored blobs.
//!
//! The blob files themselves are the durable index: at start `BlobStore::scan`
//! rebuilds this table from file sizes and modification times, and a use
//! refreshes the file's modification time (at most hourly), so recency
//! survives restarts without a second record that could disagree with the disk.
//!
//! A blob being read holds a [`Lease`]; eviction never picks a leased blob.
//! A lease is a clone of its entry's token, so it counts for exactly the
//! entry it was taken on: storing the same digest again keeps the token (and
//! its leases), and a lease on an entry that was forgotten and stored anew
//! counts for neither.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::oci::Digest;

/// Eviction frees space down to this share of the quota, so one commit past
/// the quota does not trigger an eviction per following commit.
const LOW_WATERMARK_PERCENT: u64 = 90;

/// How stale a file's modification time may get before a use refreshes it.
pub const PERSIST_USE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: SystemTime,
    token: Arc<()>,
}

impl Entry {
    fn leased(&self) -> bool {
        Arc::strong_count(&self.token) > 1
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Digest, Entry>,
    total: u64,
}

/// The usage table of the blob store.
#[derive(Debug)]
pub struct Usage {
    table: Mutex<Table>,
    quota: u64,
}

/// Keeps a blob from eviction while it is read.
#[derive(Debug)]
pub struct Lease {
    _token: Arc<()>,
}

impl Usage {
    /// An empty table with a quota in bytes.
    pub fn new(quota: u64) -> Arc<Usage> {
        Arc::new(Usage {
            table: Mutex::new(Table::default()),
            quota,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a stored blob (at start, or after a commit).
    pub fn insert(&self, digest: Digest, size: u64, last_use: SystemTime) {
        let mut table = self.lock();
        let table = &mut *table;
        match table.entries.get_mut(&digest) {
            Some(entry) => {
                table.total = table.total - entry.size + size;
                entry.size = size;
                entry.last_use = entry.last_use.max(last_use);
            }
            None => {
                table.total += size;
                let token = Arc::new(());
                let entry = Entry {
                    size,
                    last_use,
                    token,
                };
                table.entries.insert(digest, entry);
            }
        }
    }

    /// Marks a blob used and leases it; `None` if the table does not hold it
    /// (never stored, or already chosen for eviction). The second value says
    /// whether the file's modification time should be refreshed.
    pub fn lease(&self, digest: &Digest) -> Option<(Lease, bool)> {
        let now = SystemTime::now();
        let mut table = self.lock();
        let entry = table.entries.get_mut(digest)?;
        let persist = now
            .duration_since(entry.last_use)
            .map(|age| age >= PERSIST_USE_EVERY)
            .unwrap_or(false);
        entry.last_use = now;
        let lease = Lease {
            _token: Arc::clone(&entry.token),
        };
        Some((lease, persist))
    }

    /// Forgets a blob (its file vanished or failed to open).
    pub fn forget(&self, digest: &Digest) {
        let mut table = self.lock();
        if let Some(entry) = table.entries.remove(digest) {
            table.total -= entry.size;
        }
    }

    /// When the quota is exceeded, removes the least recently used unleased
    /// blobs from the table until usage is under the low watermark, and
    /// returns them so the caller deletes their files.
    pub fn take_victims(&self) -> Vec<Digest> {
        let mut table = self.lock();
        if table.total <= self.quota {
            return Vec::new();
        }
        let target = self.quota / 100 * LOW_WATERMARK_PERCENT;
        let mut candidates: Vec<(SystemTime, Digest, u64)> = table
            .entries
            .iter()
            .filter(|(_, e)| !e.leased())
            .map(|(d, e)| (e.last_use, d.clone(), e.size))
            .collect();
        candidates.sort_unstable_by_key(|c| c.0);
        let mut victims = Vec::new();
        for (_, digest, size) in candidates {
            if table.total <= target {
                break;
            }
            table.entries.remove(&digest);
            table.total -= size;
            victims.push(digest);
        }
        victims
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains_key(digest)
    }

    /// When a stored blob was last used, if it is stored.
    pub fn last_use(&self, digest: &Digest) -> Option<SystemTime> {
        self.lock().entries.get(digest).map(|e| e.last_use)
    }

    /// Bytes held.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Objects held.
    pub fn count(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn evicts_least_recently_used_down_to_the_watermark() {
        let usage = Usage::new(1000);
        for n in 0..5 {
            usage.insert(digest(n), 250, at(100 + n as u64));
        }
        assert_eq!(usage.total_bytes(), 1250);
        let victims = usage.take_victims();
        assert_eq!(victims, vec![digest(0), digest(1)]);
        assert_eq!(usage.total_bytes(), 750);
        assert!(usage.take_victims().is_empty());
    }

    #[test]
    fn a_leased_blob_is_never_evicted() {
        let usage = Usage::new(100);
        usage.insert(digest(0), 80, at(1));
        usage.insert(digest(1), 80, at(2));
        let (lease, _) = usage.lease(&digest(0)).unwrap();
        let victims = usage.take_victims();
        assert_eq!(victims, vec![digest(1)]);
        drop(lease);
        let later = SystemTime::now() + Duration::from_secs(3600);
        usage.insert(digest(2), 80, later);
        assert_eq!(
            usage.take_victims(),
            vec![digest(0)],
            "released, so evictable"
        );
    }

    #[test]
    fn use_refreshes_recency_and_asks_to_persist_old_times() {
        let usage = Usage::new(100);
        usage.insert(digest(0), 60, at(1));
        usage.insert(digest(1), 60, at(2));
        let (_, persist) = usage.lease(&digest(0)).unwrap();
        assert!(persist, "a time from 1970 is stale");
        let (_, persist) = usage.lease(&digest(0)).unwrap();
        assert!(!persist, "just refreshed");
        assert_eq!(usage.take_victims(), vec![digest(1)]);
    }

    #[test]
    fn storing_a_leased_blob_again_keeps_its_lease() {
        let usage = Usage::new(100);
        usage.insert(digest(0), 80, at(1));
        let (lease, _) = usage.lease(&digest(0)).unwrap();
        usage.insert(digest(0), 80, at(2));
        usage.insert(digest(1), 80, at(3));
        assert_eq!(usage.take_victims(), vec![digest(1)], "0 is still leased");
        drop(lease);
        usage.insert(digest(2), 80, SystemTime::now());
        assert_eq!(usage.take_victims(), vec![digest(0)]);
    }

    #[test]
    fn a_lease_from_before_a_forget_does_not_pin_or_break_the_new_entry() {
        let usage = Usage::new(100);
        usage.insert(digest(0), 80, at(1));
        let (old, _) = usage.lease(&digest(0)).unwrap();
        usage.forget(&digest(0));
        usage.insert(digest(0), 80, at(1));
        usage.insert(digest(1), 80, SystemTime::now());
        drop(old);
        assert_eq!(usage.take_victims(), vec![digest(0)]);
        assert_eq!(usage.total_bytes(), 80);
    }

    #[test]
    fn reinsert_and_forget_keep_the_total_right() {
        let usage = Usage::new(1000);
        usage.insert(digest(0), 10, at(1));
        usage.insert(digest(0), 10, at(2));
        assert_eq!((usage.total_bytes(), usage.count()), (10, 1));
        usage.forget(&digest(0));
        assert_eq!((usage.total_bytes(), usage.count()), (0, 0));
        assert!(usage.lease(&digest(0)).is_none());
    }
}
