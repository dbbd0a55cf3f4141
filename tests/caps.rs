//! Caps per upstream: a byte rate over its fills, and blobs fetched at
//! once. A capped miss is paced or waits for a place; a hit beside it does
//! not wait for either.

mod common;

use std::time::{Duration, Instant};

use bytesize::ByteSize;
use common::checks::{assert_whole, within};
use common::fake_upstream::{blob_path, random_blob, FakeUpstream, Fault};
use common::http::{get, metric};
use common::lasti::{config, Lasti};
use http::Method;

const KIB: usize = 1024;
const REPO: &str = "team/app";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_rate_paces_misses_and_never_hits() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (cached, big) = (random_blob(64 * KIB), random_blob(1536 * KIB));
        let (cached_digest, big_digest) =
            (fake.put_blob(cached.clone()), fake.put_blob(big.clone()));
        let mut cfg = config(&[("docker.io", &fake.url())]);
        cfg.upstreams[0].max_bytes_per_second = ByteSize::kib(512);
        let lasti = Lasti::start_with(cfg, None).await;
        let url = |d: &str| format!("{}{}", lasti.url(), blob_path(REPO, d));
        assert_whole(&get(&url(&cached_digest), &[]).await, &cached);

        // One second's worth at once, then 512 KiB a second: the rest of
        // the 1.5 MiB blob takes about two seconds.
        let started = Instant::now();
        let big_url = url(&big_digest);
        let miss = tokio::spawn(async move { get(&big_url, &[]).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hit = get(&url(&cached_digest), &[]).await;
        assert_whole(&hit, &cached);
        assert!(
            !miss.is_finished(),
            "the hit did not wait for the paced miss"
        );
        let miss = miss.await.unwrap();
        assert_whole(&miss, &big);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1500), "paced: {took:?}");
        assert_eq!(fake.count(Method::GET, &blob_path(REPO, &big_digest)), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_past_max_fetches_waits_for_a_place() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (slow, next) = (random_blob(256 * KIB), random_blob(32 * KIB));
        let (slow_digest, next_digest) = (fake.put_blob(slow.clone()), fake.put_blob(next.clone()));
        // About 1.6 s to send.
        fake.fault(
            &slow_digest,
            Fault::Slow {
                chunk: 32 * KIB,
                pause: Duration::from_millis(200),
            },
        );
        let mut cfg = config(&[("docker.io", &fake.url())]);
        cfg.upstreams[0].max_fetches = 1;
        let lasti = Lasti::start_with(cfg, None).await;
        let url = |d: &str| format!("{}{}", lasti.url(), blob_path(REPO, d));
        let slow_url = url(&slow_digest);
        let first = tokio::spawn(async move { get(&slow_url, &[]).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while fake.count(Method::GET, &blob_path(REPO, &slow_digest)) == 0 {
            assert!(Instant::now() < deadline, "the first fetch never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let next_url = url(&next_digest);
        let second = tokio::spawn(async move { get(&next_url, &[]).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next_path = blob_path(REPO, &next_digest);
        assert_eq!(fake.count(Method::GET, &next_path), 0, "waits for a place");
        assert!(!first.is_finished());
        assert_whole(&first.await.unwrap(), &slow);
        assert_whole(&second.await.unwrap(), &next);
        assert_eq!(fake.count(Method::GET, &next_path), 1);
        let capped = ["reason=\"capped\""];
        let admin = lasti.admin_url();
        assert_eq!(
            metric(&admin, "lasti_upstream_skipped_total", &capped).await,
            0
        );
    })
    .await;
}
