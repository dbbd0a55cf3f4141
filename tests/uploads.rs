//! Uploads to a store that is slower than the upstream, or hangs: what is
//! owed waits in the journal, not on the disk, so the cache keeps its quota
//! and hits are served; once the store answers, what is still cached is
//! uploaded. Real parts: Garage behind a relay (the fault injection: bytes
//! towards the store trickle, or go nowhere), the CNCF distribution
//! registry, skopeo.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::lasti::config::Config;
use ::lasti::oci::Digest;
use common::garage::Garage;
use common::http;
use common::lasti::{config as lasti_config, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec};
use common::registry::Registry;
use common::relay::{relay, Mode};
use common::s3::{blob_key, Store};
use common::skopeo;
use tempfile::TempDir;
use tokio::net::TcpListener;

const MIB: usize = 1024 * 1024;
/// The layers of the test image: twenty of 2 MiB.
const LAYERS: usize = 20;
const LAYER: usize = 2 * MIB;
/// The cache's quota: room for eight layers, not twenty (and each stays
/// long enough for its upload to want it).
const QUOTA: u64 = 16 * MIB as u64;

/// Garage behind a relay in `mode`: the store, the relay's port, and the
/// switch.
async fn store_behind_relay(mode: Mode) -> (Garage, u16, Arc<AtomicU8>) {
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let switch = Arc::new(AtomicU8::new(mode as u8));
    tokio::spawn(relay(listener, garage.s3.port(), Arc::clone(&switch)));
    (garage, port, switch)
}

/// lasti with a small quota, the registry as docker.io, the bucket behind
/// the relay at `port`.
fn config(registry: &Registry, garage: &Garage, port: u16) -> Config {
    let mut config = lasti_config(&[("docker.io", &registry.url())]);
    garage.configure(&mut config);
    config.bucket.endpoint = Some(url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    config.bucket.timeout = Duration::from_secs(5);
    config.bucket.catch_up = Duration::from_millis(500);
    config.cache.max_size = bytesize::ByteSize::b(QUOTA);
    config
}

async fn push(registry: &Registry, work: &TempDir, name: &str, seed: u64) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[LAYER; LAYERS]);
    skopeo::push_image(&registry.host(), work.path(), name, &spec)
        .await
        .1
}

/// Waits (up to `within`) until lasti's disk holds no more than the quota
/// and the blobs `max_uploads` uploads may hold: what the index counts,
/// plus files evicted but still held open (lasti runs in this process, so
/// its open files are this process's), whose space the disk cannot free.
async fn quota_held(lasti: &Lasti, within: Duration) {
    let bound = QUOTA + 2 * LAYER as u64 + MIB as u64;
    let deadline = Instant::now() + within;
    loop {
        let indexed = http::metric(&lasti.admin_url(), "lasti_cache_size_bytes", &[]).await;
        let held = evicted_but_open(lasti.data_dir());
        if indexed + held <= bound {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the disk holds {indexed} bytes of cache and {held} of evicted files still open, \
             over {bound}: blobs waiting to be uploaded pin the disk"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bytes of files under `dir` that were deleted but are still open in
/// this process.
fn evicted_but_open(dir: &std::path::Path) -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let dir = dir.to_string_lossy().to_string();
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_string_lossy();
            (target.starts_with(&dir) && target.ends_with(" (deleted)"))
                .then(|| std::fs::metadata(fd.path()).ok().map(|m| m.len()))
                .flatten()
        })
        .sum()
}

/// Waits (up to a minute) until every blob still on lasti's disk is in the
/// store, whole, and nothing is owed any more.
async fn everything_cached_is_uploaded(lasti: &Lasti, garage: &Garage, image: &BuiltImage) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = not_in_the_store(lasti, garage, image);
        let owed = http::metric(&lasti.admin_url(), "lasti_bucket_owed", &[]).await;
        if missing.is_empty() && owed == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cached but not in the store: {missing:?}; owed: {owed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The blobs of `image` on lasti's disk that the store does not hold
/// whole; fails when none is on the disk.
fn not_in_the_store(lasti: &Lasti, garage: &Garage, image: &BuiltImage) -> Vec<String> {
    let mut cached = 0;
    let mut missing = Vec::new();
    for digest in image.blob_digests() {
        let parsed = Digest::parse(&digest).unwrap();
        let hex = parsed.hex();
        let file = lasti
            .data_dir()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        cached += 1;
        let size = garage.object_header(&blob_key(&digest), "content-length");
        if size != Some(meta.len().to_string()) {
            missing.push(digest);
        }
    }
    assert!(cached > 0, "some blobs are cached");
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hangs_pins_nothing_and_gets_everything_once_it_answers() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "hung", 31).await;
    let (garage, port, mode) = store_behind_relay(Mode::Hung).await;
    let lasti = Lasti::start_with(config(&registry, &garage, port), None).await;

    skopeo::pull_and_check(&lasti.host(), "hung", &image, &work.path().join("a"), false).await;
    quota_held(&lasti, Duration::from_secs(10)).await;
    // Hits (and the misses of what was evicted) are served meanwhile.
    skopeo::pull_and_check(&lasti.host(), "hung", &image, &work.path().join("b"), false).await;
    quota_held(&lasti, Duration::from_secs(10)).await;

    mode.store(Mode::Open as u8, Ordering::SeqCst);
    everything_cached_is_uploaded(&lasti, &garage, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_slower_than_the_upstream_keeps_the_quota_and_catches_up() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "slow", 32).await;
    let (garage, port, _mode) = store_behind_relay(Mode::Slow).await;
    let lasti = Lasti::start_with(config(&registry, &garage, port), None).await;

    skopeo::pull_and_check(&lasti.host(), "slow", &image, &work.path().join("a"), false).await;
    quota_held(&lasti, Duration::from_secs(5)).await;
    everything_cached_is_uploaded(&lasti, &garage, &image).await;
    let stored = ["op=\"put\"", "result=\"stored\""];
    assert!(http::metric(&lasti.admin_url(), "lasti_bucket_requests_total", &stored).await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_owed_during_a_long_upload_takes_the_free_place_at_once() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    // A layer whose upload takes about eight seconds at 512 KiB/s, and a
    // small one.
    let spec = ImageSpec::linux_amd64(33, &[4 * MIB, 4096]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "long", &spec).await;
    let (garage, port, _mode) = store_behind_relay(Mode::Slow).await;
    let lasti = Lasti::start_with(config(&registry, &garage, port), None).await;
    let blob = |digest: &str| format!("{}/v2/library/long/blobs/{digest}", lasti.url());
    let (long, short) = (&image.layer_digests[0], &image.layer_digests[1]);

    assert_eq!(http::get(&blob(long), &[]).await.status, 200);
    // Its upload is under way (one of `max_uploads`, 2) when the next
    // blob is owed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(http::get(&blob(short), &[]).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(4);
    while garage.status("HEAD", &blob_key(short), None) != 200 {
        assert!(
            Instant::now() < deadline,
            "the small blob waits behind the long upload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        garage.status("HEAD", &blob_key(long), None),
        200,
        "the long upload is still under way"
    );
    everything_cached_is_uploaded(&lasti, &garage, &image).await;
}
