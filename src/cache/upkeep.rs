//! The cache's background work, off the request path: indexing the blob
//! files found at start, evicting past the quota in bounded batches, and
//! forgetting old tag records whose manifests are gone.
//!
//! Indexing in the background lets the listener bind at once however many
//! objects the disk holds; until it is done, a blob not yet indexed is
//! looked up on disk directly (see `Cache::stored_blob`). Eviction runs
//! whenever a commit takes the cache past its quota, after indexing (the
//! quota may have been lowered, or the disk filled meanwhile) and every
//! [`CHECK_EVERY`], so a hits-only workload evicts too.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::Inner;

/// Most blobs deleted in one blocking step.
pub const EVICT_BATCH: usize = 256;

/// Blobs recorded at a time while indexing, under the placement lock.
const INDEX_BATCH: usize = 4096;

/// How often the quota is checked when nothing asked.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// How often old tag records are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// A tag record whose manifest is no longer stored is kept this long after
/// the upstream last confirmed it (it still answers a `HEAD` meanwhile).
const TAG_RECORD_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Starts the background task; it ends when the cache is dropped.
pub(super) fn start(inner: &Arc<Inner>) {
    tokio::spawn(run(Arc::downgrade(inner), Arc::clone(&inner.evictor)));
}

async fn run(cache: Weak<Inner>, evictor: Arc<Notify>) {
    if let Some(inner) = cache.upgrade() {
        index_found(&inner).await;
    }
    let mut swept: Option<Instant> = None;
    loop {
        let Some(inner) = cache.upgrade() else {
            return;
        };
        evict(&inner).await;
        if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            sweep_tags(&inner).await;
            swept = Some(Instant::now());
        }
        drop(inner);
        tokio::select! {
            _ = evictor.notified() => {}
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// Records every blob file on disk, most recently used first.
async fn index_found(inner: &Arc<Inner>) {
    let started = Instant::now();
    let scanning = Arc::clone(inner);
    let found = tokio::task::spawn_blocking(move || {
        let mut found = scanning.store.scan()?;
        found.sort_unstable_by_key(|b| std::cmp::Reverse(b.last_use));
        for batch in found.chunks(INDEX_BATCH) {
            let _placing = scanning.placing.lock().unwrap_or_else(|p| p.into_inner());
            let batch = batch
                .iter()
                .map(|b| (b.digest.clone(), b.charge, b.last_use));
            scanning.usage.insert_found(batch);
        }
        Ok::<_, std::io::Error>(found.len())
    })
    .await;
    inner.indexed.store(true, Ordering::Release);
    match found {
        Ok(Ok(count)) => tracing::info!(
            files = count,
            objects = inner.usage.count(),
            bytes = inner.usage.total_bytes(),
            took_ms = started.elapsed().as_millis() as u64,
            "cache indexed"
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot scan the blob store; blobs not yet used are not counted against the quota")
        }
        Err(e) => tracing::error!(error = %e, "blob store scan failed"),
    }
}

/// Evicts in batches until the cache is under its low watermark.
async fn evict(inner: &Arc<Inner>) {
    loop {
        let victims = inner.usage.take_victims(EVICT_BATCH);
        if victims.is_empty() {
            return;
        }
        let removing = Arc::clone(inner);
        if tokio::task::spawn_blocking(move || removing.remove_victims(victims))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Deletes tag records that point at manifests no longer stored and that
/// the upstream has not confirmed for [`TAG_RECORD_KEPT`].
async fn sweep_tags(inner: &Arc<Inner>) {
    let sweeping = Arc::clone(inner);
    let swept = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        sweeping.index.remove_tags_where(|record| {
            record.age(now) > TAG_RECORD_KEPT && !sweeping.usage.contains(&record.digest)
        })
    })
    .await;
    match swept {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "forgot old tag records of evicted manifests"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep tag records"),
        Err(e) => tracing::warn!(error = %e, "tag record sweep failed"),
    }
}
