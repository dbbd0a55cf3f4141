//! Fault injection on upstream answers: rate limits, server errors (retried
//! before any byte went out), a whole upstream down (stale tags and cached
//! blobs still served), and manifests that are too big or do not match
//! their digest.

mod common;

use std::time::Duration;

use bytesize::ByteSize;
use common::checks::{
    assert_not_stored, assert_oci_error, assert_upstream_error, assert_whole, within,
};
use common::fake_upstream::{
    blob_path, image_manifest, manifest_path, padded_image_manifest, random_blob, FakeUpstream,
    Fault, OCI_MANIFEST,
};
use common::http::{get, Reply};
use common::lasti::{config, Lasti};
use http::{Method, StatusCode};
use lasti::config::Config;

const REPO: &str = "team/app";

fn config_for(fake: &FakeUpstream) -> Config {
    config(&[("docker.io", &fake.url())])
}

async fn get_blob(lasti: &Lasti, digest: &str) -> Reply {
    get(&format!("{}{}", lasti.url(), blob_path(REPO, digest)), &[]).await
}

async fn get_manifest(lasti: &Lasti, reference: &str) -> Reply {
    let url = format!("{}{}", lasti.url(), manifest_path(REPO, reference));
    get(&url, &[("accept", OCI_MANIFEST)]).await
}

/// A small image on `fake` under `tag`: (manifest, its digest, layer, its digest).
fn publish(fake: &FakeUpstream, tag: &str) -> (bytes::Bytes, String, bytes::Bytes, String) {
    let (config, layer) = (random_blob(200), random_blob(64 * 1024));
    fake.put_blob(config.clone());
    let layer_digest = fake.put_blob(layer.clone());
    let manifest = image_manifest(&config, &[&layer]);
    let digest = fake.put_manifest(tag, manifest.clone());
    (manifest, digest, layer, layer_digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_passed_on_with_retry_after() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (manifest, _, layer, layer_digest) = publish(&fake, "v1");
        let mut config = config_for(&fake);
        config.upstreams[0].retries = 2;
        let lasti = Lasti::start_with(config, None).await;
        let limited = |retry_after| Fault::Status {
            code: 429,
            retry_after: Some(retry_after),
            times: 1,
        };

        fake.fault("v1", limited(7));
        let reply = get_manifest(&lasti, "v1").await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_oci_error(&reply, "TOOMANYREQUESTS");
        assert_eq!(reply.header("retry-after"), "7");
        let path = manifest_path(REPO, "v1");
        assert_eq!(fake.gets(&path), 1, "a 429 is not retried upstream");

        fake.fault(&layer_digest, limited(3));
        let reply = get_blob(&lasti, &layer_digest).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_oci_error(&reply, "TOOMANYREQUESTS");
        assert_eq!(reply.header("retry-after"), "3");

        // The limit has passed: nothing of the refusal was remembered.
        assert_eq!(get_manifest(&lasti, "v1").await.body, manifest);
        assert_whole(&get_blob(&lasti, &layer_digest).await, &layer);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_before_any_byte_is_sent() {
    within(async {
        let fake = FakeUpstream::start().await;
        let blob = random_blob(100 * 1024);
        let digest = fake.put_blob(blob.clone());
        let mut config = config_for(&fake);
        config.upstreams[0].retries = 2;
        let lasti = Lasti::start_with(config, None).await;

        let (code, retry_after) = (500, None);
        fake.fault(
            &digest,
            Fault::Status {
                code,
                retry_after,
                times: 2,
            },
        );
        assert_whole(&get_blob(&lasti, &digest).await, &blob);
        assert_eq!(fake.gets(&blob_path(REPO, &digest)), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_server_errors_become_a_json_502() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (_, _, layer, layer_digest) = publish(&fake, "v1");
        let mut config = config_for(&fake);
        config.upstreams[0].retries = 2;
        let lasti = Lasti::start_with(config, None).await;

        let (code, retry_after) = (500, None);
        let times = usize::MAX;
        fake.fault(
            &layer_digest,
            Fault::Status {
                code,
                retry_after,
                times,
            },
        );
        let reply = get_blob(&lasti, &layer_digest).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_oci_error(&reply, "UNAVAILABLE");
        assert_eq!(
            fake.gets(&blob_path(REPO, &layer_digest)),
            3,
            "1 try + 2 retries"
        );
        assert_not_stored(lasti.data_dir(), &layer_digest);

        fake.fault(
            "v1",
            Fault::Status {
                code,
                retry_after,
                times,
            },
        );
        let reply = get_manifest(&lasti, "v1").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_oci_error(&reply, "UNAVAILABLE");

        fake.clear_fault(&layer_digest);
        assert_whole(&get_blob(&lasti, &layer_digest).await, &layer);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_upstream_serves_stale_tags_and_cached_blobs() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (manifest, digest, layer, layer_digest) = publish(&fake, "v1");
        let mut config = config_for(&fake);
        config.upstreams[0].tag_ttl = Duration::ZERO;
        config.upstreams[0].retries = 0;
        let lasti = Lasti::start_with(config, None).await;
        let tag_path = manifest_path(REPO, "v1");

        assert_eq!(get_manifest(&lasti, "v1").await.body, manifest);
        assert_whole(&get_blob(&lasti, &layer_digest).await, &layer);
        assert_eq!(get_manifest(&lasti, "v1").await.body, manifest);
        assert_eq!(
            fake.count(Method::HEAD, &tag_path),
            1,
            "an expired tag is revalidated"
        );

        fake.set_down(true);
        let stale = get_manifest(&lasti, "v1").await;
        assert_eq!(stale.status, StatusCode::OK, "body {:?}", stale.body);
        assert_eq!(stale.body, manifest);
        assert_eq!(stale.header("docker-content-digest"), digest);
        assert_eq!(
            fake.count(Method::HEAD, &tag_path),
            2,
            "the upstream was asked first"
        );
        assert_whole(&get_blob(&lasti, &layer_digest).await, &layer);
        assert_eq!(get_manifest(&lasti, &digest).await.body, manifest);
        assert_upstream_error(&get_manifest(&lasti, "v2").await, "UNAVAILABLE");

        // Unreachable, not merely failing: connections are refused.
        drop(fake);
        let stale = get_manifest(&lasti, "v1").await;
        assert_eq!(stale.status, StatusCode::OK, "body {:?}", stale.body);
        assert_eq!(stale.body, manifest);
        assert_whole(&get_blob(&lasti, &layer_digest).await, &layer);
        assert_upstream_error(&get_manifest(&lasti, "v2").await, "UNAVAILABLE");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_revalidation_serves_the_stale_tag() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (manifest, digest, _, _) = publish(&fake, "v1");
        let mut config = config_for(&fake);
        config.upstreams[0].tag_ttl = Duration::ZERO;
        let lasti = Lasti::start_with(config, None).await;
        assert_eq!(get_manifest(&lasti, "v1").await.body, manifest);

        let (code, retry_after) = (429, Some(30));
        fake.fault(
            "v1",
            Fault::Status {
                code,
                retry_after,
                times: 1,
            },
        );
        let stale = get_manifest(&lasti, "v1").await;
        assert_eq!(stale.status, StatusCode::OK, "body {:?}", stale.body);
        assert_eq!(stale.header("docker-content-digest"), digest);
        assert_eq!(stale.body, manifest);
        assert_eq!(fake.count(Method::HEAD, &manifest_path(REPO, "v1")), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_manifest_is_refused_and_not_stored() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (config_blob, layer) = (random_blob(200), random_blob(1024));
        let big = padded_image_manifest(&config_blob, &[&layer], 10 * 1024);
        let digest = fake.put_manifest("big", big);
        let mut config = config_for(&fake);
        config.cache.max_manifest_size = ByteSize::kib(4);
        let lasti = Lasti::start_with(config, None).await;

        assert_upstream_error(&get_manifest(&lasti, "big").await, "UNAVAILABLE");
        assert_upstream_error(&get_manifest(&lasti, &digest).await, "UNAVAILABLE");
        assert_not_stored(lasti.data_dir(), &digest);
        assert_upstream_error(&get_manifest(&lasti, "big").await, "UNAVAILABLE");
        assert_eq!(
            fake.gets(&manifest_path(REPO, "big")),
            2,
            "nothing was cached"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_not_matching_its_digest_is_refused_and_not_stored() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (manifest, digest, _, _) = publish(&fake, "v1");
        let lasti = Lasti::start(&fake.url()).await;
        let mut flipped = manifest.to_vec();
        *flipped.last_mut().expect("non-empty manifest") ^= 0xff;
        let flipped_digest = common::fake_upstream::digest_of(&flipped);

        fake.fault(&digest, Fault::Corrupt);
        assert_upstream_error(&get_manifest(&lasti, &digest).await, "UNAVAILABLE");
        fake.fault("v1", Fault::Corrupt);
        let by_tag = get_manifest(&lasti, "v1").await;
        assert_upstream_error(&by_tag, "UNAVAILABLE");
        for d in [&digest, &flipped_digest] {
            assert_not_stored(lasti.data_dir(), d);
        }

        fake.clear_fault(&digest);
        fake.clear_fault("v1");
        let good = get_manifest(&lasti, &digest).await;
        assert_eq!(good.status, StatusCode::OK);
        assert_eq!(good.body, manifest);
        assert_eq!(get_manifest(&lasti, "v1").await.body, manifest);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_manifest_body_ends_in_an_error_not_a_hang() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (_, digest, _, _) = publish(&fake, "v1");
        fake.fault("v1", Fault::Stall);
        let mut config = config_for(&fake);
        config.upstreams[0].body_idle_timeout = Duration::from_secs(1);
        let lasti = Lasti::start_with(config, None).await;

        let started = std::time::Instant::now();
        assert_upstream_error(&get_manifest(&lasti, "v1").await, "UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_not_stored(lasti.data_dir(), &digest);
    })
    .await;
}
