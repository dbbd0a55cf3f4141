//! The uploader: publishes what this replica owes the shared bucket (the
//! journal's owed set is the queue), `max_uploads` at once, oldest first.
//! It wakes when something is owed, and every `catch_up` interval for what
//! failed before or was cut by a crash; while the store is backing off it
//! waits, and what waits holds nothing but its journal row: a blob's file
//! and its lease on eviction are taken only when its upload starts. At
//! start, uploads an earlier run left half done are aborted first.
//!
//! What the cache evicted meanwhile is forgotten: another replica's miss
//! will publish it. An item that keeps failing goes behind the others, so
//! it never holds up the round; one that failed [`GIVE_UP_AFTER`] times
//! while others went through (or could not be read from the cache that
//! often) is dropped with a warning.
//!
//! On shutdown, [`flush`] runs rounds until nothing is owed or the grace
//! period is over: a replica's disk may not outlive it (an `emptyDir`),
//! and what it fetched but never published would cost the cluster another
//! upstream fetch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::Proxy;
use crate::bucket::{Bucket, Pending, PublishError};
use crate::cache::Cache;

/// Failures of one item, each in a round where another went through (or
/// a local one), after which it is no longer owed.
const GIVE_UP_AFTER: u32 = 5;

/// What the rounds remember between them: one round at a time (the
/// background uploader's or a flush's), so no item is uploaded twice at
/// once.
#[derive(Debug, Default)]
pub(crate) struct Rounds {
    failures: Mutex<Failures>,
}

/// Runs until the proxy is dropped: sweeps old uploads, then publishes
/// what is owed whenever something is, and every `every`.
pub(crate) async fn run(proxy: Weak<Proxy>, rounds: Arc<Rounds>, every: Duration) {
    if let Some(bucket) = proxy.upgrade().and_then(|p| p.bucket.clone()) {
        let aborted = bucket.sweep_uploads().await;
        if aborted > 0 {
            tracing::info!(aborted, "aborted uploads an earlier run left unfinished");
        }
    }
    loop {
        let Some(proxy) = proxy.upgrade() else {
            return;
        };
        let Some(bucket) = proxy.bucket.clone() else {
            return;
        };
        let cache = proxy.cache.clone();
        // Hold no strong reference while waiting, so the proxy can go.
        drop(proxy);
        let wait = match bucket.backing_off_for() {
            Some(left) => left,
            None => {
                round(&bucket, &cache, &mut *rounds.failures.lock().await).await;
                every
            }
        };
        let owed = bucket.owed_signal();
        drop((bucket, cache));
        tokio::select! {
            _ = owed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes what is owed until nothing is, or `within` is over (waiting
/// out the store's back-off meanwhile); how many items are still owed.
pub(crate) async fn flush(
    bucket: &Arc<Bucket>,
    cache: &Cache,
    rounds: &Rounds,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    let rounds = async {
        loop {
            if let Some(left) = bucket.backing_off_for() {
                tokio::time::sleep(left).await;
            }
            round(bucket, cache, &mut *rounds.failures.lock().await).await;
            if bucket.owed().await.is_empty() {
                return;
            }
            // What is left is still being stored by its fill, or failed.
            tokio::time::sleep(FLUSH_PAUSE).await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, rounds).await;
    bucket.owed().await.len()
}

/// Between the rounds of a flush.
const FLUSH_PAUSE: Duration = Duration::from_millis(100);

/// What one item's upload came to.
enum Uploaded {
    Done,
    /// Evicted from the cache meanwhile: no longer owed.
    Gone,
    /// Not tried: the store began backing off during the round, or the
    /// blob's fill has not stored it yet.
    Skipped,
}

/// One round: publishes what is owed, those that failed before last,
/// `max_uploads` at once, until the store backs off. What becomes owed
/// while the round runs joins it as soon as an upload place is free, so a
/// burst of fills keeps every place busy, and a large upload under way
/// holds up nothing but its own place.
async fn round(bucket: &Arc<Bucket>, cache: &Cache, failures: &mut Failures) {
    let mut owed = bucket.owed().await;
    cache.metrics().bucket_owed(owed.len());
    failures.order(&mut owed);
    let signal = bucket.owed_signal();
    let mut queue: VecDeque<(Pending, u64)> = owed.into();
    // Items taken this round (never twice: a failure waits for the next),
    // but for those skipped while their fill was still storing them.
    let mut taken: HashSet<Pending> = queue.iter().map(|(item, _)| item.clone()).collect();
    let mut uploads = FuturesUnordered::new();
    let (mut published, mut failed) = (0, Vec::new());
    let mut store_failed = Vec::new();
    loop {
        while uploads.len() < bucket.max_uploads() {
            let Some((item, stamp)) = queue.pop_front() else {
                break;
            };
            uploads.push(async move {
                let done = match bucket.backing_off_for() {
                    Some(_) => Ok(Uploaded::Skipped),
                    None => upload(bucket, cache, &item).await,
                };
                (item, stamp, done)
            });
        }
        let Some((item, stamp, done)) = (tokio::select! {
            done = uploads.next() => done,
            () = signal.notified(), if !uploads.is_empty() => {
                for (item, stamp) in bucket.owed().await {
                    if taken.insert(item.clone()) {
                        queue.push_back((item, stamp));
                    }
                }
                continue;
            }
        }) else {
            break;
        };
        match done {
            Ok(Uploaded::Done) => {
                published += 1;
                failures.clear(&item);
            }
            Ok(Uploaded::Gone) => {
                failures.clear(&item);
                bucket.forget(item, stamp).await;
            }
            // Its fill wakes the uploader once it is stored.
            Ok(Uploaded::Skipped) => {
                taken.remove(&item);
            }
            Err(PublishError::Local(e)) => {
                tracing::warn!(?item, error = %e, "cannot read what is owed to the object store");
                failures.tried(&item);
                failures.strike(&item);
                failed.push((item, stamp));
            }
            Err(PublishError::Store(e)) => {
                tracing::debug!(?item, error = %e, "publishing to the object store failed; later");
                failures.tried(&item);
                store_failed.push(item.clone());
                failed.push((item, stamp));
            }
        }
    }
    // A store failure counts against the item only when others went
    // through: a store that is down is no item's fault.
    if published > 0 {
        store_failed.iter().for_each(|item| failures.strike(item));
    }
    for (item, stamp) in failed {
        if failures.given_up(&item) {
            tracing::warn!(?item, "giving up publishing to the object store after repeated failures; another replica's miss will publish it");
            failures.clear(&item);
            bucket.forget(item, stamp).await;
        }
    }
    if published > 0 {
        tracing::debug!(published, "published to the object store");
        cache.metrics().bucket_owed(bucket.owed().await.len());
    }
}

/// One item to the store, read from the cache.
async fn upload(bucket: &Bucket, cache: &Cache, item: &Pending) -> Result<Uploaded, PublishError> {
    match item {
        // Owed before its fill commits it: its fill wakes the uploader
        // again once it is stored (a fill leaves the table after that).
        Pending::Blob(digest) if cache.filling(digest).is_some() => return Ok(Uploaded::Skipped),
        Pending::Blob(digest) => match cache.stored_blob(digest).await {
            Ok(Some(blob)) => bucket.publish(digest, &blob).await,
            Ok(None) => return Ok(Uploaded::Gone),
            Err(e) => Err(PublishError::Local(e)),
        },
        Pending::Manifest(digest) => match cache.manifest(digest).await {
            Ok(Some(manifest)) => bucket
                .put_manifest(&manifest)
                .await
                .map_err(PublishError::Store),
            Ok(None) => return Ok(Uploaded::Gone),
            Err(e) => Err(PublishError::Local(e)),
        },
    }
    .map(|()| Uploaded::Done)
}

/// How often each item failed: all failures order the round, strikes
/// (failures that were the item's own) decide when to give up.
#[derive(Debug, Default)]
struct Failures {
    by_item: HashMap<Pending, (u32, u32)>,
}

impl Failures {
    /// Puts what failed behind the rest: a stable sort, so the oldest
    /// come first among those that failed as often.
    fn order(&self, owed: &mut [(Pending, u64)]) {
        owed.sort_by_key(|(item, _)| self.tries(item));
    }

    /// Whether an item has failed often enough of its own to be dropped.
    fn given_up(&self, item: &Pending) -> bool {
        self.strikes(item) >= GIVE_UP_AFTER
    }

    fn tries(&self, item: &Pending) -> u32 {
        self.by_item.get(item).map_or(0, |(tries, _)| *tries)
    }

    fn strikes(&self, item: &Pending) -> u32 {
        self.by_item.get(item).map_or(0, |(_, strikes)| *strikes)
    }

    fn tried(&mut self, item: &Pending) {
        self.by_item.entry(item.clone()).or_default().0 += 1;
    }

    fn strike(&mut self, item: &Pending) {
        self.by_item.entry(item.clone()).or_default().1 += 1;
    }

    fn clear(&mut self, item: &Pending) {
        self.by_item.remove(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    fn blob(i: u8) -> Pending {
        Pending::Blob(Digest::sha256_of(&[i]))
    }

    #[test]
    fn an_item_that_failed_goes_behind_the_rest_which_keep_their_age() {
        let mut failures = Failures::default();
        failures.tried(&blob(1));
        let mut owed: Vec<(Pending, u64)> = (1..=3).map(|i| (blob(i), u64::from(i))).collect();
        let items =
            |owed: &[(Pending, u64)]| owed.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        failures.order(&mut owed);
        assert_eq!(items(&owed), [blob(2), blob(3), blob(1)]);
        failures.tried(&blob(2));
        failures.tried(&blob(1));
        failures.order(&mut owed);
        assert_eq!(items(&owed), [blob(3), blob(2), blob(1)]);
    }

    #[test]
    fn only_failures_of_its_own_give_an_item_up() {
        let mut failures = Failures::default();
        for _ in 0..GIVE_UP_AFTER * 3 {
            // The store was down: tried, never struck.
            failures.tried(&blob(1));
        }
        assert!(!failures.given_up(&blob(1)));
        for _ in 0..GIVE_UP_AFTER {
            failures.strike(&blob(1));
        }
        assert!(failures.given_up(&blob(1)));
        failures.clear(&blob(1));
        assert_eq!(failures.tries(&blob(1)), 0);
    }
}
