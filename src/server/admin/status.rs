//! What the status page shows, gathered in one pass: the cache and its
//! images, the last hour by tier, each upstream's state, the back-fill
//! queue, and the replicas. Also served as JSON (`GET /admin/status`), so
//! a script sees exactly what a person does.

use std::collections::BTreeMap;

use serde::Serialize;

use super::State;
use crate::backfill;
use crate::cache::index::unix_now;
use crate::metrics::{LastHour, TIERS};
use crate::pull_through::CachedImage;

/// Images listed at most, most recently used first.
pub const MAX_IMAGES: usize = 200;
/// Failed and done back-fill jobs listed at most.
const BACKFILL_JOBS: usize = 10;

/// The status of one lasti, now.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// lasti's version.
    pub version: &'static str,
    /// Unix seconds it was taken.
    pub now: u64,
    /// What the cache holds.
    pub cache: CacheState,
    /// Tags the cache knows, most recently used first (at most [`MAX_IMAGES`]).
    pub images: Vec<CachedImage>,
    /// Tags the cache knows in all.
    pub images_total: usize,
    /// The tiers of `last_hour`'s arrays, in order.
    pub tiers: [&'static str; TIERS.len()],
    /// Requests and bytes of the last hour.
    pub last_hour: LastHour,
    /// The process's offline switch.
    pub offline: bool,
    /// Each upstream, and each other registry of its `urls`.
    pub upstreams: Vec<UpstreamState>,
    /// The back-fill queue, when back-fill is on.
    pub backfill: Option<backfill::Status>,
    /// The replicas, when clustered.
    pub cluster: Option<ClusterState>,
    /// Blobs and manifests owed to the object store, when there is one.
    pub bucket_owed: Option<i64>,
}

/// The cache's size.
#[derive(Debug, Serialize)]
pub struct CacheState {
    /// Bytes stored.
    pub bytes: u64,
    /// Blobs and manifests stored.
    pub objects: usize,
    /// `cache.max_size`.
    pub quota: u64,
}

/// One upstream's state.
#[derive(Debug, Serialize)]
pub struct UpstreamState {
    /// Its name (`docker.io`, or `docker.io@mirror.gcr.io` for a failover registry).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Offline, by its switch or the process's.
    pub offline: bool,
    /// `closed` (asked), `open` (skipped) or `probing`.
    pub breaker: &'static str,
    /// Failures in a row.
    pub failures: u32,
    /// Seconds until it is tried again, while skipped.
    pub retry_in_secs: Option<u64>,
    /// The pull quota it last reported (Docker Hub): limit and remaining.
    pub ratelimit: Option<(i64, i64)>,
}

/// The replicas as this one sees them.
#[derive(Debug, Serialize)]
pub struct ClusterState {
    /// This replica.
    pub me: String,
    /// Every replica, this one included.
    pub members: Vec<MemberState>,
}

/// One replica.
#[derive(Debug, Serialize)]
pub struct MemberState {
    /// Its peer address.
    pub name: String,
    /// Whether it is this replica.
    pub me: bool,
    /// Seconds since a request to it failed, while it is left out.
    pub left_out_secs: Option<u64>,
}

/// Gathers the snapshot.
pub async fn snapshot(state: &State) -> Snapshot {
    let proxy = &state.proxy;
    let cache = proxy.cache();
    let (bytes, objects) = cache.usage();
    let mut images = match proxy.cached_images().await {
        Ok(images) => images,
        Err(err) => {
            tracing::error!(error = %err, "status: cannot list the cache");
            Vec::new()
        }
    };
    let images_total = images.len();
    images.sort_by(|a, b| {
        b.last_use
            .cmp(&a.last_use)
            .then(b.checked_at.cmp(&a.checked_at))
    });
    images.truncate(MAX_IMAGES);
    let metrics = cache.metrics();
    let availabilities = proxy.availabilities();
    let upstreams = proxy
        .upstreams()
        .all()
        .iter()
        .flat_map(|u| std::iter::once(u).chain(u.mirrors()))
        .filter_map(|u| {
            let state = availabilities.upstreams.get(u.name())?;
            Some(UpstreamState {
                name: u.name().to_string(),
                url: u.url().to_string(),
                offline: state.offline,
                breaker: state.breaker,
                failures: state.failures,
                retry_in_secs: state.retry_in_secs,
                ratelimit: metrics.ratelimit_now(u.name()),
            })
        })
        .collect();
    let backfill = match &state.backfill {
        Some(backfill) => match backfill.status(None, BACKFILL_JOBS).await {
            Ok(status) => Some(status),
            Err(err) => {
                tracing::error!(error = %err, "status: cannot read the back-fill queue");
                None
            }
        },
        None => None,
    };
    let cluster = proxy.cluster().map(|cluster| {
        let members = cluster.members();
        let left_out: BTreeMap<String, u64> = members
            .left_out()
            .into_iter()
            .map(|(member, ago)| (member, ago.as_secs()))
            .collect();
        ClusterState {
            me: members.me().to_string(),
            members: members
                .all()
                .iter()
                .map(|name| MemberState {
                    name: name.clone(),
                    me: name == members.me(),
                    left_out_secs: left_out.get(name).copied(),
                })
                .collect(),
        }
    });
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        now: unix_now(),
        cache: CacheState {
            bytes,
            objects,
            quota: cache.quota(),
        },
        images,
        images_total,
        tiers: TIERS,
        last_hour: metrics.recent().last_hour(),
        offline: availabilities.offline,
        upstreams,
        backfill,
        cluster,
        bucket_owed: proxy.has_bucket().then(|| metrics.bucket_owed_now()),
    }
}
