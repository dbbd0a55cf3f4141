//! Replicas sharing a real S3 object store (Garage on loopback) in front of
//! the real CNCF distribution registry: what one replica fetched, another
//! with an empty disk serves from the bucket without asking the upstream;
//! a corrupt object in the bucket is never served and is removed. The
//! sharing is run against moto's S3 server too, which refuses multipart
//! parts below 5 MiB as AWS, Ceph and MinIO do, where Garage takes them.

mod common;

use std::time::{Duration, Instant};

use ::lasti::config::Config;
use ::lasti::secret::Secret;
use common::garage::Garage;
use common::http;
use common::lasti::{config as lasti_config, Lasti};
use common::moto::Moto;
use common::oci_layout::{sha256_digest, BuiltImage, ImageSpec};
use common::registry::Registry;
use common::s3::{blob_key, Store, BUCKET};
use common::skopeo;
use tempfile::TempDir;
use url::Url;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A lasti configuration with `registry` as `docker.io` and `store`'s
/// bucket as the shared store.
fn config(registry: &Registry, store: &impl Store) -> Config {
    let mut config = lasti_config(&[("docker.io", &registry.url())]);
    store.configure(&mut config);
    config
}

async fn start_garage() -> Garage {
    tokio::task::spawn_blocking(Garage::start).await.unwrap()
}

async fn start_moto() -> Moto {
    tokio::task::spawn_blocking(Moto::start).await.unwrap()
}

async fn push_image(
    registry: &Registry,
    work: &TempDir,
    name: &str,
    sizes: &[usize],
) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(7, sizes);
    skopeo::push_image(&registry.host(), work.path(), name, &spec)
        .await
        .1
}

/// Pulls `library/<name>:v1` through `lasti` with skopeo (which verifies
/// every digest) and checks it is `image`, whole.
async fn pull_and_check(lasti: &Lasti, name: &str, image: &BuiltImage, out: &std::path::Path) {
    skopeo::pull_and_check(&lasti.host(), name, image, out, false).await
}

async fn metric(lasti: &Lasti, name: &str, labels: &[&str]) -> u64 {
    http::metric(&lasti.admin_url(), name, labels).await
}

async fn metric_reaches(lasti: &Lasti, name: &str, labels: &[&str], at_least: u64) -> u64 {
    http::metric_reaches(&lasti.admin_url(), name, labels, at_least).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_empty_disk_serves_what_another_fetched_from_the_bucket() {
    // A layer above the multipart part size, and one written around the page cache.
    an_empty_replica_serves_from_the_bucket(start_garage().await, 20 * MIB).await;
}

/// moto completes a multipart upload only if every part but the last holds
/// 5 MiB or more: a layer of three parts or more (whose last is short)
/// reaches it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_takes_a_blob_of_three_parts_and_an_empty_replica_serves_it() {
    an_empty_replica_serves_from_the_bucket(start_moto().await, 20 * MIB + 4321).await;
}

/// One replica pulls an image whose last layer is `layer_size` bytes, above
/// the multipart part size, and publishes every blob to `store`'s bucket,
/// whole; a second with an empty disk serves the image from the bucket
/// without a blob GET to the upstream, and a third answers a HEAD from it.
async fn an_empty_replica_serves_from_the_bucket(store: impl Store, layer_size: usize) {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "app", &[KIB, 300 * KIB, layer_size]).await;
    let blobs = image.blob_digests();

    let first = Lasti::start_with(config(&registry, &store), None).await;
    skopeo::pull_to_dir(
        &format!("{}/library/app:v1", first.host()),
        &work.path().join("first"),
        false,
    )
    .await
    .expect("pull through the first replica");
    let stored = metric_reaches(
        &first,
        "lasti_bucket_requests_total",
        &["op=\"put\"", "result=\"stored\""],
        blobs.len() as u64,
    )
    .await;
    let failed = ["op=\"put\"", "result=\"error\""];
    let failed = metric(&first, "lasti_bucket_requests_total", &failed).await;
    assert_eq!(
        (stored, failed),
        (blobs.len() as u64, 0),
        "every blob published once, no upload refused (see lasti's log)"
    );
    let sizes = std::iter::once(image.config_bytes.len() as u64).chain(image.layer_sizes.clone());
    for (digest, size) in blobs.iter().zip(sizes) {
        let length = store.object_header(&blob_key(digest), "content-length");
        assert_eq!(
            length,
            Some(size.to_string()),
            "{digest} in the bucket, whole"
        );
        assert_eq!(
            registry.settled_blob_gets(digest, 1),
            1,
            "{digest} fetched from the upstream once"
        );
    }
    let layer = image.layer_digests.last().unwrap();
    let etag = store.object_header(&blob_key(layer), "etag").unwrap();
    assert!(
        parts(&etag) >= 3,
        "{layer} uploaded in parts, one between the first and the last: ETag {etag}"
    );

    let second = Lasti::start_with(config(&registry, &store), None).await;
    pull_and_check(&second, "app", &image, &work.path().join("second")).await;
    for digest in &blobs {
        assert_eq!(
            registry.blob_gets(digest),
            1,
            "{digest}: no second upstream GET"
        );
    }
    let fills = "lasti_fill_sources_total";
    let count = blobs.len() as u64;
    assert_eq!(
        metric_reaches(&second, fills, &["tier=\"bucket\""], count).await,
        count
    );
    assert_eq!(
        metric(&second, "lasti_fill_sources_total", &["tier=\"upstream\""]).await,
        0
    );
    // A third replica, still empty, answers HEADs from the bucket.
    let third = Lasti::start_with(config(&registry, &store), None).await;
    let heads = registry.count_requests("HEAD", &format!("/blobs/{layer}"));
    let head = http::head(
        &format!("{}/v2/library/app/blobs/{layer}", third.url()),
        &[],
    )
    .await;
    assert!(head.status.is_success());
    assert_eq!(head.header("content-length"), layer_size.to_string());
    assert_eq!(
        registry.count_requests("HEAD", &format!("/blobs/{layer}")),
        heads
    );
    // What came from the bucket is not uploaded again.
    assert_eq!(
        metric(&second, "lasti_bucket_requests_total", &["op=\"put\""]).await,
        0
    );
}

/// The parts an object was uploaded in, from its ETag (`"<md5>-<parts>"`
/// after a multipart upload); 1 for a single `PUT`.
fn parts(etag: &str) -> usize {
    etag.trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, parts)| parts.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_in_the_bucket_is_never_served_and_is_removed() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "bad", &[64 * KIB]).await;
    let garage = start_garage().await;
    let layer = image.layer_digests[0].clone();
    let key = blob_key(&layer);
    // Same length, other bytes, under the layer's key.
    let garbage = work.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 64 * KIB]).unwrap();
    assert_eq!(garage.status("PUT", &key, Some(&garbage)), 200);

    let lasti = Lasti::start_with(config(&registry, &garage), None).await;
    let url = format!("{}/v2/library/bad/blobs/{layer}", lasti.url());
    let first = http::get(&url, &[]).await;
    assert!(
        first.body_error.is_some() || !first.status.is_success(),
        "a blob failing its digest is never completed: {:?}",
        first.status
    );
    assert_ne!(sha256_digest(&first.body), layer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while garage.status("HEAD", &key, None) != 404 {
        assert!(
            Instant::now() < deadline,
            "the corrupt object stays in the bucket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&lasti, "lasti_digest_failures_total", &[]).await, 1);

    let second = http::get(&url, &[]).await;
    assert!(second.status.is_success() && second.body_error.is_none());
    assert_eq!(sha256_digest(&second.body), layer, "the upstream's bytes");
    // The registry writes its access log line after the response is done.
    assert_eq!(
        registry.wait_for_requests("GET", &format!("/blobs/{layer}"), 1),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_is_down_costs_nothing_but_a_counted_error() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "down", &[KIB, 64 * KIB]).await;
    let garage = start_garage().await;
    let mut cfg = config(&registry, &garage);
    // Nothing listens there: every request to the store fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    cfg.bucket.endpoint = Some(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    let lasti = Lasti::start_with(cfg, None).await;
    pull_and_check(&lasti, "down", &image, &work.path().join("pulled")).await;
    let blobs = image.blob_digests().len() as u64;
    assert_eq!(
        metric_reaches(
            &lasti,
            "lasti_fill_sources_total",
            &["tier=\"upstream\""],
            blobs
        )
        .await,
        blobs
    );
    // The first failed look-up is counted; the misses after it skip the
    // store for a while instead of waiting on it again.
    let get = |result: &'static str| {
        let lasti = &lasti;
        async move {
            let result = format!("result=\"{result}\"");
            metric(
                lasti,
                "lasti_bucket_requests_total",
                &["op=\"get\"", &result],
            )
            .await
        }
    };
    let (errors, skipped) = (get("error").await, get("skipped").await);
    let all_errors = metric(&lasti, "lasti_bucket_requests_total", &["result=\"error\""]).await;
    assert!(all_errors >= 1, "a failed look-up is counted");
    assert_eq!(errors + skipped, blobs, "every miss looked once or skipped");
    // Uploads back off as look-ups do, and what they owe waits in the
    // journal, counted.
    let puts = ["op=\"put\"", "result=\"error\""];
    assert!(metric_reaches(&lasti, "lasti_bucket_requests_total", &puts, 1).await >= 1);
    let owed = metric_reaches(&lasti, "lasti_bucket_owed", &[], blobs).await;
    assert!(owed >= blobs, "every blob is owed: {owed}");
    // Just after the store failed, a miss does not ask it again.
    let other = push_image(&registry, &work, "other", &[2 * KIB]).await;
    let layer = &other.layer_digests[0];
    let reply = http::get(
        &format!("{}/v2/library/other/blobs/{layer}", lasti.url()),
        &[],
    )
    .await;
    assert_eq!(sha256_digest(&reply.body), *layer);
    assert_eq!(get("error").await, errors);
    assert_eq!(get("skipped").await, skipped + 1, "skipped, not waited on");
    // (It is owed too.)
    let owed = metric_reaches(&lasti, "lasti_bucket_owed", &[], blobs + 1).await;
    assert!(owed > blobs, "the new blob is owed: {owed}");
    // And hits never look in the bucket (the uploader goes on trying).
    let look_ups = || async {
        let mut sum = 0;
        for op in ["get", "head", "manifest_get", "tag_get"] {
            let op = format!("op=\"{op}\"");
            sum += metric(&lasti, "lasti_bucket_requests_total", &[&op]).await;
        }
        sum
    };
    let before = look_ups().await;
    let again = work.path().join("again");
    skopeo::pull_to_dir(&format!("{}/library/down:v1", lasti.host()), &again, false)
        .await
        .expect("a warm pull");
    assert_eq!(look_ups().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_another_replica_resolved_is_served_within_its_ttl_and_stale_after() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "app", &[KIB, 64 * KIB]).await;
    let garage = start_garage().await;
    let first = Lasti::start_with(config(&registry, &garage), None).await;
    pull_and_check(&first, "app", &image, &work.path().join("first")).await;
    for (op, want) in [
        ("put", image.blob_digests().len() as u64),
        ("manifest_put", 1),
        ("tag_put", 1),
    ] {
        let labels = [format!("op=\"{op}\""), "result=\"stored\"".to_string()];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let stored = metric_reaches(&first, "lasti_bucket_requests_total", &labels, want).await;
        assert_eq!(stored, want, "{op} reaches the bucket");
    }

    // Replicas whose upstream is down (nothing listens on its port).
    let down = format!("http://127.0.0.1:{}", common::free_port());
    let replica = |ttl: Option<Duration>| {
        let mut config = lasti_config(&[("docker.io", &down)]);
        garage.configure(&mut config);
        if let Some(ttl) = ttl {
            config.upstreams[0].tag_ttl = ttl;
        }
        config
    };
    // Within the tag's TTL, the first replica's answer is this one's own:
    // the upstream is not even asked.
    let fresh = Lasti::start_with(replica(None), None).await;
    pull_and_check(&fresh, "app", &image, &work.path().join("fresh")).await;
    let asked = "lasti_upstream_requests_total";
    assert_eq!(metric(&fresh, asked, &[]).await, 0);
    let tags = ["op=\"tag_get\"", "result=\"found\""];
    assert_eq!(
        metric(&fresh, "lasti_bucket_requests_total", &tags).await,
        1
    );

    // Past it, the upstream must confirm it; when it cannot be reached, the
    // shared record is served stale, as a local one would be.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = Lasti::start_with(replica(Some(Duration::from_secs(1))), None).await;
    pull_and_check(&stale, "app", &image, &work.path().join("stale")).await;
    assert!(
        metric(&stale, asked, &[]).await >= 1,
        "the upstream was asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_the_bucket_missed_are_caught_up_when_it_answers_even_after_a_restart() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "late", &[KIB, 9 * MIB]).await;
    let blobs = image.blob_digests();
    // The bucket's address, with nothing behind it yet.
    let port = common::free_port();
    let mut cfg = lasti_config(&[("docker.io", &registry.url())]);
    cfg.bucket.endpoint = Some(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    cfg.bucket.bucket = Some(BUCKET.to_string());
    cfg.bucket.credentials = Some((Secret::new("id".into()), Secret::new("secret".into())));
    cfg.bucket.catch_up = Duration::from_millis(500);

    let lasti = Lasti::start_with(cfg, None).await;
    pull_and_check(&lasti, "late", &image, &work.path().join("first")).await;
    let failed = ["op=\"put\"", "result=\"error\""];
    let count = blobs.len() as u64;
    let puts = metric_reaches(&lasti, "lasti_bucket_requests_total", &failed, count).await;
    // (A catch-up round may have tried one again already.)
    assert!(puts >= count, "every upload failed: {puts}");
    let data = lasti.stop().await;

    // The store comes up; lasti restarts on its disk and uploads what it owes.
    let garage = tokio::task::spawn_blocking(move || Garage::start_on(port))
        .await
        .unwrap();
    let mut cfg = config(&registry, &garage);
    cfg.bucket.catch_up = Duration::from_millis(500);
    let lasti = Lasti::start_with(cfg, Some(data)).await;
    let stored = ["op=\"put\"", "result=\"stored\""];
    let puts = metric_reaches(&lasti, "lasti_bucket_requests_total", &stored, count).await;
    assert_eq!(puts, count, "every blob caught up, once");
    let manifests = ["op=\"manifest_put\"", "result=\"stored\""];
    assert_eq!(
        metric_reaches(&lasti, "lasti_bucket_requests_total", &manifests, 1).await,
        1
    );
    for digest in &blobs {
        assert_eq!(garage.status("HEAD", &blob_key(digest), None), 200);
    }
    assert_eq!(metric(&lasti, "lasti_bucket_owed", &[]).await, 0);
    // And a replica with an empty disk gets everything from the bucket.
    let other = Lasti::start_with(config(&registry, &garage), None).await;
    pull_and_check(&other, "late", &image, &work.path().join("other")).await;
    let tier = ["tier=\"bucket\""];
    assert_eq!(
        metric_reaches(
            &other,
            "lasti_fill_sources_total",
            &tier,
            blobs.len() as u64
        )
        .await,
        blobs.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_a_crash_left_is_aborted_at_the_next_start() {
    let registry = Registry::start();
    let garage = start_garage().await;
    // An upload started (and journaled) by a run that then died.
    let key = "blobs/sha256/left-by-a-crash";
    let (status, answer) = garage.request("POST", &format!("{key}?uploads="), None);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status, 200, "{answer}");
    let id = answer
        .split("<UploadId>")
        .nth(1)
        .and_then(|rest| rest.split("</UploadId>").next())
        .expect("an upload id")
        .to_string();
    let listed = |garage: &Garage| {
        String::from_utf8_lossy(&garage.request("GET", "?uploads=", None).1).into_owned()
    };
    assert!(listed(&garage).contains(&id), "the upload is in progress");
    let data = TempDir::new().unwrap();
    {
        let journal_file = data.path().join(::lasti::bucket::JOURNAL_FILE);
        let journal = ::lasti::bucket::journal::Journal::open(&journal_file).unwrap();
        journal.upload_started(&id, key).unwrap();
    }

    let lasti = Lasti::start_with(config(&registry, &garage), Some(data)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(&garage).contains(&id) {
        assert!(Instant::now() < deadline, "the upload is aborted at start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data = lasti.stop().await;
    let journal_file = data.path().join(::lasti::bucket::JOURNAL_FILE);
    let journal = ::lasti::bucket::journal::Journal::open(&journal_file).unwrap();
    assert!(
        journal.uploads().unwrap().is_empty(),
        "and leaves the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_object_is_kept_when_bytes_resumed_from_another_source_fail() {
    use common::fake_upstream::{blob_path, random_blob, FakeUpstream, Fault};
    use common::relay::{relay, Mode, CUT_AFTER};
    use std::sync::atomic::AtomicU8;
    use std::sync::Arc;

    // The upstream sends wrong bytes; the bucket holds the right ones.
    let fake = FakeUpstream::start().await;
    let blob = random_blob(3 * MIB);
    let digest = fake.put_blob(blob.clone());
    fake.fault(&digest, Fault::Corrupt);
    let garage = start_garage().await;
    let work = TempDir::new().unwrap();
    let file = work.path().join("blob");
    std::fs::write(&file, &blob).unwrap();
    assert_eq!(garage.status("PUT", &blob_key(&digest), Some(&file)), 200);
    // Every answer of the bucket breaks off after its first MiB.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicU8::new(Mode::Cut as u8));
    tokio::spawn(relay(listener, garage.s3.port(), cut));
    let mut cfg = lasti_config(&[("docker.io", &fake.url())]);
    garage.configure(&mut cfg);
    cfg.bucket.endpoint = Some(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    let lasti = Lasti::start_with(cfg, None).await;

    let reply = http::get(
        &format!("{}{}", lasti.url(), blob_path("library/x", &digest)),
        &[],
    )
    .await;
    assert!(
        reply.body.len() < blob.len(),
        "the bad blob is not delivered"
    );
    let from_bucket = metric(&lasti, "lasti_fill_bytes_total", &["tier=\"bucket\""]).await;
    assert!(
        from_bucket >= CUT_AFTER as u64 / 2 && from_bucket < blob.len() as u64,
        "the bucket sent part of it (its client resumes once): {from_bucket}"
    );
    assert!(metric_reaches(&lasti, "lasti_digest_failures_total", &[], 1).await >= 1);
    assert!(
        fake.gets(&blob_path("library/x", &digest)) >= 1,
        "the upstream went on"
    );
    // Bytes mixed with the upstream's prove nothing about the object.
    assert_eq!(
        garage.object_header(&blob_key(&digest), "content-length"),
        Some(blob.len().to_string()),
        "the bucket's good object is kept"
    );
}
