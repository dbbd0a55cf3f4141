//! Size accounting and least-recently-used eviction of stored blobs.
//!
//! The blob files themselves are the durable index: at start `BlobStore::scan`
//! rebuilds this table from file sizes and modification times, and a use
//! refreshes the file's modification time (at most once a minute per blob,
//! and at shutdown for every blob used since), so recency survives
//! restarts without a second record that could disagree with the disk.
//!
//! Each blob is charged the space it takes on disk (its allocated blocks:
//! a 1 KiB blob takes a 4 KiB block), so the quota bounds what `du` shows
//! for `blobs/` (fills in progress and the index come on top).
//!
//! A blob being read holds a [`Lease`]; eviction never picks a leased blob.
//! A lease is a clone of its entry's token, so it counts for exactly the
//! entry it was taken on: storing the same digest again keeps the token (and
//! its leases), and a lease on an entry that was forgotten and stored anew
//! counts for neither.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lru::LruCache;

use crate::oci::{Algorithm, Digest};

/// Eviction frees space down to this share of the quota, so one commit past
/// the quota does not trigger an eviction per following commit.
const LOW_WATERMARK_PERCENT: u64 = 90;

/// How stale a file's modification time may get before a use refreshes
/// it: what a crash can cost the order of recent uses.
pub const PERSIST_USE_EVERY: Duration = Duration::from_secs(60);

/// A digest as the table keeps it: a SHA-256's 32 bytes inline (no text,
/// no allocation of its own: a million entries are a million of these),
/// any other digest as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Sha256([u8; 32]),
    Other(Box<str>),
}

impl Key {
    fn of(digest: &Digest) -> Key {
        let mut bytes = [0u8; 32];
        match digest.algorithm() {
            Algorithm::Sha256 if hex::decode_to_slice(digest.hex(), &mut bytes).is_ok() => {
                Key::Sha256(bytes)
            }
            _ => Key::Other(digest.as_str().into()),
        }
    }

    fn digest(&self) -> Digest {
        let text = match self {
            Key::Sha256(bytes) => format!("sha256:{}", hex::encode(bytes)),
            Key::Other(text) => text.to_string(),
        };
        Digest::parse(&text).expect("a key is made of a valid digest")
    }
}

#[derive(Debug)]
struct Entry {
    /// Bytes the blob takes on disk (allocated blocks, not its length).
    charge: u64,
    /// Unix seconds of the last use (seconds, not a `SystemTime`: half the
    /// size, for a table of a million entries).
    last_use: u32,
    /// Unix seconds the file's modification time says.
    persisted: u32,
    /// What leases clone; made at the first lease (most blobs of a large
    /// cache are never read again), then kept with the entry.
    token: Option<Arc<()>>,
}

/// Unix seconds, saturating (to 2106).
fn secs(time: SystemTime) -> u32 {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
}

fn time(secs: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

impl Entry {
    fn leased(&self) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| Arc::strong_count(t) > 1)
    }

    fn lease(&mut self) -> Lease {
        let token = self.token.get_or_insert_with(Arc::default);
        Lease {
            token: Arc::clone(token),
        }
    }
}

/// Entries from least to most recently used: a use moves an entry to the
/// front in O(1), and eviction takes from the back without sorting.
#[derive(Debug)]
struct Table {
    entries: LruCache<Key, Entry>,
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
    token: Arc<()>,
}

impl Lease {
    /// Whether this is the blob's only lease (besides the table's own
    /// token): no other client is reading the blob now.
    pub fn alone(&self) -> bool {
        Arc::strong_count(&self.token) <= 2
    }
}

impl Usage {
    /// An empty table with a quota in bytes.
    pub fn new(quota: u64) -> Arc<Usage> {
        Arc::new(Usage {
            table: Mutex::new(Table {
                entries: LruCache::unbounded(),
                total: 0,
            }),
            quota,
        })
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a blob just stored, as the most recently used; `charge` is
    /// the space it takes on disk. Storing a digest again keeps its leases.
    pub fn insert(&self, digest: Digest, charge: u64, last_use: SystemTime) {
        let mut table = self.lock();
        let table = &mut *table;
        let key = Key::of(&digest);
        match table.entries.get_mut(&key) {
            Some(entry) => {
                table.total = table.total - entry.charge + charge;
                entry.charge = charge;
                entry.last_use = entry.last_use.max(secs(last_use));
                // A new file: its time is the store's.
                entry.persisted = secs(last_use);
            }
            None => {
                table.total += charge;
                let entry = Entry {
                    charge,
                    last_use: secs(last_use),
                    persisted: secs(last_use),
                    token: None,
                };
                table.entries.push(key, entry);
            }
        }
    }

    /// Records blobs found on disk at start, given from the most to the
    /// least recently used, as older than everything recorded so far. A
    /// digest already recorded (stored or used since the start) is kept.
    pub fn insert_found(&self, found: impl IntoIterator<Item = (Digest, u64, SystemTime)>) {
        let mut table = self.lock();
        for (digest, charge, last_use) in found {
            let key = Key::of(&digest);
            if table.entries.contains(&key) {
                continue;
            }
            table.total += charge;
            let entry = Entry {
                charge,
                last_use: secs(last_use),
                persisted: secs(last_use),
                token: None,
            };
            table.entries.push(key.clone(), entry);
            table.entries.demote(&key);
        }
    }

    /// Marks a blob used and leases it; `None` if the table does not hold it
    /// (never stored, or already chosen for eviction). The second value says
    /// whether the file's modification time should be refreshed.
    pub fn lease(&self, digest: &Digest) -> Option<(Lease, bool)> {
        let now = secs(SystemTime::now());
        let mut table = self.lock();
        let entry = table.entries.get_mut(&Key::of(digest))?;
        // Against what the file says, not the last use: a blob used every
        // second is refreshed once a minute, not never.
        let persist = u64::from(now.saturating_sub(entry.persisted)) >= PERSIST_USE_EVERY.as_secs();
        if persist {
            entry.persisted = now;
        }
        entry.last_use = now;
        Some((entry.lease(), persist))
    }

    /// Leases a blob without marking it used: it keeps its place in the
    /// eviction order and its last-use time (a listing reads it, no client
    /// did). `None` if the table does not hold it.
    pub fn peek_lease(&self, digest: &Digest) -> Option<Lease> {
        let mut table = self.lock();
        let entry = table.entries.peek_mut(&Key::of(digest))?;
        Some(entry.lease())
    }

    /// Forgets a blob (its file vanished or failed to open, or it is
    /// purged); the space it was charged, if it was recorded. Its leases
    /// stay valid for their readers and no longer count.
    pub fn forget(&self, digest: &Digest) -> Option<u64> {
        let mut table = self.lock();
        let entry = table.entries.pop(&Key::of(digest))?;
        table.total -= entry.charge;
        Some(entry.charge)
    }

    /// Whether the quota is exceeded, so eviction has work.
    pub fn over_quota(&self) -> bool {
        self.lock().total > self.quota
    }

    /// When the quota is exceeded, removes up to `max` of the least recently
    /// used unleased blobs from the table, stopping once usage is under the
    /// low watermark, and returns them so the caller deletes their files. A
    /// leased blob is being read, so it counts as used now.
    pub fn take_victims(&self, max: usize) -> Vec<Digest> {
        let mut table = self.lock();
        if table.total <= self.quota {
            return Vec::new();
        }
        let target = (u128::from(self.quota) * u128::from(LOW_WATERMARK_PERCENT) / 100) as u64;
        let mut victims = Vec::new();
        let mut leased_seen = 0;
        while table.total > target && victims.len() < max && leased_seen < table.entries.len() {
            let Some((key, entry)) = table.entries.peek_lru() else {
                break;
            };
            if entry.leased() {
                let key = key.clone();
                table.entries.promote(&key);
                leased_seen += 1;
                continue;
            }
            let (key, entry) = table.entries.pop_lru().expect("peeked");
            table.total -= entry.charge;
            victims.push(key.digest());
        }
        victims
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains(&Key::of(digest))
    }

    /// When a stored blob was last used, if it is stored.
    pub fn last_use(&self, digest: &Digest) -> Option<SystemTime> {
        let table = self.lock();
        table
            .entries
            .peek(&Key::of(digest))
            .map(|e| time(e.last_use))
    }

    /// The blobs used since their file's time was last set, each with its
    /// last use, taken as set: at shutdown, so that the next start orders
    /// them as they were used. Least recently used first.
    pub fn unpersisted(&self) -> Vec<(Digest, SystemTime)> {
        let mut table = self.lock();
        let mut out = Vec::new();
        for (key, entry) in table.entries.iter_mut().rev() {
            if entry.last_use > entry.persisted {
                entry.persisted = entry.last_use;
                out.push((key.digest(), time(entry.last_use)));
            }
        }
        out
    }

    /// Bytes held on disk.
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
    fn a_key_gives_back_its_digest() {
        let sha256 = digest(7);
        assert!(matches!(Key::of(&sha256), Key::Sha256(_)));
        assert_eq!(Key::of(&sha256).digest(), sha256);
        let sha512 = Digest::parse(&format!("sha512:{}", "ab".repeat(64))).unwrap();
        assert!(matches!(Key::of(&sha512), Key::Other(_)));
        assert_eq!(Key::of(&sha512).digest(), sha512);
        assert!(
            std::mem::size_of::<Key>() <= 40,
            "a SHA-256 key stays inline"
        );
    }

    #[test]
    fn evicts_least_recently_used_down_to_the_watermark() {
        let usage = Usage::new(1000);
        for n in 0..5 {
            usage.insert(digest(n), 250, at(100 + n as u64));
        }
        assert_eq!(usage.total_bytes(), 1250);
        let victims = usage.take_victims(usize::MAX);
        assert_eq!(victims, vec![digest(0), digest(1)]);
        assert_eq!(usage.total_bytes(), 750);
        assert!(usage.take_victims(usize::MAX).is_empty());
    }

    #[test]
    fn a_leased_blob_is_never_evicted() {
        let usage = Usage::new(100);
        usage.insert(digest(0), 80, at(1));
        usage.insert(digest(1), 80, at(2));
        let (lease, _) = usage.lease(&digest(0)).unwrap();
        let victims = usage.take_victims(usize::MAX);
        assert_eq!(victims, vec![digest(1)]);
        drop(lease);
        let later = SystemTime::now() + Duration::from_secs(3600);
        usage.insert(digest(2), 80, later);
        assert_eq!(
            usage.take_victims(usize::MAX),
            vec![digest(0)],
            "released, so evictable"
        );
    }

    #[test]
    fn a_lease_knows_when_another_client_reads_the_same_blob() {
        let usage = Usage::new(1000);
        usage.insert(digest(0), 80, at(1));
        usage.insert(digest(1), 80, at(2));
        let (first, _) = usage.lease(&digest(0)).unwrap();
        let (elsewhere, _) = usage.lease(&digest(1)).unwrap();
        assert!(first.alone(), "another blob's reader does not count");
        let (second, _) = usage.lease(&digest(0)).unwrap();
        assert!(!first.alone() && !second.alone());
        drop(second);
        assert!(first.alone(), "the other reader is gone");
        usage.forget(&digest(0));
        assert!(first.alone(), "still alone once the entry is forgotten");
        drop(elsewhere);
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
        assert_eq!(usage.take_victims(usize::MAX), vec![digest(1)]);
    }

    #[test]
    fn a_blob_used_again_and_again_is_persisted_by_its_file_s_time() {
        let usage = Usage::new(1000);
        let stored = SystemTime::now() - PERSIST_USE_EVERY / 2;
        usage.insert(digest(0), 60, stored);
        usage.insert(digest(1), 60, stored);
        // Used now and then: the file's time is recent enough for now.
        let (_, persist) = usage.lease(&digest(0)).unwrap();
        assert!(!persist);
        assert!(usage.last_use(&digest(0)).unwrap() > stored);
        // What shutdown writes: the used blob, with its last use; once.
        let unpersisted = usage.unpersisted();
        assert_eq!(unpersisted.len(), 1);
        assert_eq!(unpersisted[0].0, digest(0));
        assert!(usage.unpersisted().is_empty(), "taken as written");
        // Stored a minute and more ago, used every second: refreshed.
        usage.insert(digest(2), 60, SystemTime::now() - PERSIST_USE_EVERY * 2);
        let (_, persist) = usage.lease(&digest(2)).unwrap();
        assert!(persist, "the file's time is a minute old");
        let (_, persist) = usage.lease(&digest(2)).unwrap();
        assert!(!persist, "and is fresh now");
    }

    #[test]
    fn a_peek_leases_without_refreshing_recency() {
        let usage = Usage::new(100);
        usage.insert(digest(1), 40, at(1));
        usage.insert(digest(2), 40, at(2));
        let peeked = usage.peek_lease(&digest(1)).expect("stored");
        assert_eq!(usage.last_use(&digest(1)), Some(at(1)), "last use kept");
        drop(peeked);
        usage.insert(digest(3), 40, at(3));
        assert!(usage.over_quota());
        assert_eq!(
            usage.take_victims(8),
            vec![digest(1)],
            "the peeked blob is still the least recently used"
        );
    }

    #[test]
    fn storing_a_leased_blob_again_keeps_its_lease() {
        let usage = Usage::new(100);
        usage.insert(digest(0), 80, at(1));
        let (lease, _) = usage.lease(&digest(0)).unwrap();
        usage.insert(digest(0), 80, at(2));
        usage.insert(digest(1), 80, at(3));
        assert_eq!(
            usage.take_victims(usize::MAX),
            vec![digest(1)],
            "0 is still leased"
        );
        drop(lease);
        usage.insert(digest(2), 80, SystemTime::now());
        assert_eq!(usage.take_victims(usize::MAX), vec![digest(0)]);
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
        assert_eq!(usage.take_victims(usize::MAX), vec![digest(0)]);
        assert_eq!(usage.total_bytes(), 80);
    }

    #[test]
    fn blobs_found_at_start_are_older_than_those_stored_since() {
        let usage = Usage::new(25);
        usage.insert(digest(9), 10, SystemTime::now());
        // Most recently used first, as the scan hands them over; 9 again is
        // ignored (already recorded).
        usage.insert_found([
            (digest(1), 10, at(3)),
            (digest(9), 10, at(9)),
            (digest(2), 10, at(2)),
            (digest(3), 10, at(1)),
        ]);
        assert_eq!(usage.total_bytes(), 40);
        assert_eq!(usage.take_victims(usize::MAX), vec![digest(3), digest(2)]);
    }

    #[test]
    fn victims_come_in_bounded_batches() {
        let usage = Usage::new(100);
        for n in 0..10 {
            usage.insert(digest(n), 50, at(n as u64));
        }
        assert_eq!(usage.take_victims(3).len(), 3);
        assert_eq!(usage.take_victims(3).len(), 3);
        assert_eq!(usage.take_victims(3).len(), 3, "down to the watermark");
        assert!(!usage.over_quota());
        assert!(usage.take_victims(3).is_empty());
        assert_eq!(usage.count(), 1);
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
