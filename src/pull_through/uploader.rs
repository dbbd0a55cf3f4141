//! Publishing what the shared bucket missed: blobs and manifests whose
//! upload failed (the bucket was down or slow) or was cut by a crash stay
//! in the bucket's journal, and are uploaded from the cache every
//! `catch_up` interval once the bucket answers again; at start, uploads an
//! earlier run left half done are aborted first. What the cache evicted
//! meanwhile is forgotten: another replica's miss will publish it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Proxy;
use crate::bucket::{Bucket, Pending};
use crate::cache::Cache;

/// Runs until the proxy is dropped: sweeps old uploads, then catches up
/// every `every`.
pub(crate) async fn run(proxy: Weak<Proxy>, every: Duration) {
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
        if !bucket.is_backing_off() {
            catch_up(&bucket, &cache).await;
        }
        drop((bucket, cache));
        tokio::time::sleep(every).await;
    }
}

/// One round: publishes what is owed, oldest first, until the bucket fails.
async fn catch_up(bucket: &Arc<Bucket>, cache: &Cache) {
    let owed = bucket.owed().await;
    cache.metrics().bucket_owed(owed.len());
    let mut published = 0;
    for item in owed {
        let done = match &item {
            Pending::Blob(digest) => match cache.stored_blob(digest).await {
                Ok(Some(blob)) => bucket.publish(digest, blob.file, blob.size).await,
                Ok(None) => {
                    bucket.forget(item).await;
                    continue;
                }
                Err(e) => Err(e),
            },
            Pending::Manifest(digest) => match cache.manifest(digest).await {
                Ok(Some(manifest)) => bucket.put_manifest(&manifest).await,
                Ok(None) => {
                    bucket.forget(item).await;
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match done {
            Ok(()) => published += 1,
            Err(e) => {
                tracing::debug!(?item, error = %e, "catching up with the object store failed; later");
                break;
            }
        }
    }
    if published > 0 {
        tracing::info!(published, "caught up with the object store");
        cache.metrics().bucket_owed(bucket.owed().await.len());
    }
}
