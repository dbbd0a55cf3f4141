//! Fault injection on blob bodies: corrupt bytes, connections cut half way
//! (with and without `Range` resume), a stalled body, and many clients of
//! one cold blob. The rule under test: a client either gets the whole
//! verified blob or an aborted stream, and only verified bytes are stored.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::checks::{
    assert_no_partial_files, assert_not_delivered, assert_not_stored, assert_stored, assert_whole,
    eventually, within,
};
use common::fake_upstream::{blob_path, random_blob, FakeUpstream, Fault};
use common::http::{get, Reply};
use common::lasti::{config, Lasti};
use lasti::config::Config;

const REPO: &str = "team/app";
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn config_for(fake: &FakeUpstream) -> Config {
    config(&[("docker.io", &fake.url())])
}

async fn get_blob(lasti: &Lasti, digest: &str) -> Reply {
    get(&format!("{}{}", lasti.url(), blob_path(REPO, digest)), &[]).await
}

/// A fake upstream holding one random blob of `size` bytes that it serves
/// with `fault`; the upstream, the blob and its digest.
async fn upstream_with(size: usize, fault: Fault) -> (FakeUpstream, Bytes, String) {
    let fake = FakeUpstream::start().await;
    let blob = random_blob(size);
    let digest = fake.put_blob(blob.clone());
    fake.fault(&digest, fault);
    (fake, blob, digest)
}

/// `clients` GETs of one URL at once, each on its own task; their replies.
async fn concurrent_gets(url: &str, clients: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(clients);
    for task in tasks {
        replies.push(task.await.expect("client task"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_aborted_not_stored_and_fetched_again() {
    within(async {
        let (fake, blob, digest) = upstream_with(300 * KIB, Fault::Corrupt).await;
        let lasti = Lasti::start(&fake.url()).await;
        let path = blob_path(REPO, &digest);

        let first = get_blob(&lasti, &digest).await;
        assert_not_delivered(&first, &blob);
        assert_not_stored(lasti.data_dir(), &digest);
        assert_no_partial_files(lasti.data_dir()).await;
        assert_eq!(fake.gets(&path), 1);

        let second = get_blob(&lasti, &digest).await;
        assert_not_delivered(&second, &blob);
        assert_eq!(fake.gets(&path), 2, "a rejected blob is fetched again");
        assert_not_stored(lasti.data_dir(), &digest);

        fake.clear_fault(&digest);
        assert_whole(&get_blob(&lasti, &digest).await, &blob);
        assert_stored(lasti.data_dir(), &digest, &blob).await;
        assert_whole(&get_blob(&lasti, &digest).await, &blob);
        assert_eq!(fake.gets(&path), 3, "the verified blob is served from disk");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_body_is_resumed_with_a_range_request() {
    within(async {
        let cut_at = 300 * KIB;
        let fault = Fault::CutAfter {
            bytes: cut_at,
            resume: true,
        };
        let (fake, blob, digest) = upstream_with(MIB, fault).await;
        let lasti = Lasti::start(&fake.url()).await;

        let reply = get_blob(&lasti, &digest).await;
        assert_whole(&reply, &blob);
        assert_stored(lasti.data_dir(), &digest, &blob).await;

        let path = blob_path(REPO, &digest);
        let gets: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|s| s.method == http::Method::GET && s.path == path)
            .collect();
        assert_eq!(gets.len(), 2, "one cut GET and one resumed GET: {gets:?}");
        assert_eq!(gets[0].range, None);
        assert_eq!(gets[1].range, Some(format!("bytes={cut_at}-")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_body_without_resume_aborts_and_stores_nothing() {
    within(async {
        let cut_at = 300 * KIB;
        let fault = Fault::CutAfter {
            bytes: cut_at,
            resume: false,
        };
        let (fake, blob, digest) = upstream_with(MIB, fault).await;
        let lasti = Lasti::start(&fake.url()).await;

        let reply = get_blob(&lasti, &digest).await;
        assert_not_delivered(&reply, &blob);
        assert!(
            reply.body.len() <= cut_at,
            "more bytes than the upstream sent"
        );
        assert_not_stored(lasti.data_dir(), &digest);
        assert_no_partial_files(lasti.data_dir()).await;
        let path = blob_path(REPO, &digest);
        let ranged = fake.requests().into_iter().filter(|s| s.path == path);
        assert!(
            ranged.filter(|s| s.range.is_some()).count() >= 1,
            "lasti never tried to resume"
        );

        fake.clear_fault(&digest);
        assert_whole(&get_blob(&lasti, &digest).await, &blob);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_aborted_after_the_idle_timeout() {
    within(async {
        let (fake, blob, digest) = upstream_with(64 * KIB, Fault::Stall).await;
        let mut config = config_for(&fake);
        let idle = Duration::from_secs(1);
        config.upstreams[0].body_idle_timeout = idle;
        let lasti = Lasti::start_with(config, None).await;

        let started = Instant::now();
        let reply = get_blob(&lasti, &digest).await;
        let took = started.elapsed();
        assert_not_delivered(&reply, &blob);
        assert!(
            took >= idle,
            "aborted after {took:?}, before the idle timeout"
        );
        assert!(took < idle * 10, "aborted only after {took:?}");
        assert_not_stored(lasti.data_dir(), &digest);
        assert_no_partial_files(lasti.data_dir()).await;

        fake.clear_fault(&digest);
        assert_whole(&get_blob(&lasti, &digest).await, &blob);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_of_a_cold_blob_share_one_upstream_get() {
    within(async {
        let pause = Duration::from_millis(2);
        let chunk = 16 * KIB;
        let (fake, blob, digest) = upstream_with(2 * MIB, Fault::Slow { chunk, pause }).await;
        let lasti = Lasti::start(&fake.url()).await;
        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));

        for reply in concurrent_gets(&url, 16).await {
            assert_whole(&reply, &blob);
        }
        assert_eq!(fake.gets(&blob_path(REPO, &digest)), 1);
        assert_stored(lasti.data_dir(), &digest, &blob).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_mid_body_is_resumed_with_a_range_request() {
    within(async {
        let stall_at = 128 * KIB;
        let (fake, blob, digest) = upstream_with(512 * KIB, Fault::StallAfter(stall_at)).await;
        let mut config = config_for(&fake);
        config.upstreams[0].body_idle_timeout = Duration::from_secs(1);
        let lasti = Lasti::start_with(config, None).await;

        assert_whole(&get_blob(&lasti, &digest).await, &blob);
        assert_stored(lasti.data_dir(), &digest, &blob).await;
        let path = blob_path(REPO, &digest);
        let ranges: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|s| s.path == path)
            .map(|s| s.range)
            .collect();
        assert_eq!(ranges, [None, Some(format!("bytes={stall_at}-"))]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_fill_does_not_cancel_it() {
    within(async {
        let (chunk, pause) = (16 * KIB, Duration::from_millis(5));
        let (fake, blob, digest) = upstream_with(2 * MIB, Fault::Slow { chunk, pause }).await;
        let lasti = Lasti::start(&fake.url()).await;

        let path = blob_path(REPO, &digest);
        let url = format!("{}{path}", lasti.url());
        let impatient = tokio::spawn(async move { get(&url, &[]).await });
        eventually("the fill started upstream", || fake.gets(&path) == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        impatient.abort();
        let gone = impatient.await;
        assert!(
            gone.is_err_and(|e| e.is_cancelled()),
            "the slow blob arrived too fast"
        );
        assert_stored(lasti.data_dir(), &digest, &blob).await;
        assert_whole(&get_blob(&lasti, &digest).await, &blob);
        assert_eq!(fake.gets(&blob_path(REPO, &digest)), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_aborts_every_concurrent_client() {
    within(async {
        // Clients join the fill or, once it failed, start another: none may get the blob.
        let (fake, blob, digest) = upstream_with(MIB, Fault::Corrupt).await;
        let lasti = Lasti::start(&fake.url()).await;
        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));

        for reply in concurrent_gets(&url, 8).await {
            assert_not_delivered(&reply, &blob);
        }
        assert_not_stored(lasti.data_dir(), &digest);
        assert_no_partial_files(lasti.data_dir()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_see_one_unbroken_stream_across_a_resume() {
    within(async {
        let (bytes, resume) = (MIB + 12_345, true);
        let (fake, blob, digest) = upstream_with(2 * MIB, Fault::CutAfter { bytes, resume }).await;
        let lasti = Lasti::start(&fake.url()).await;
        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));

        for reply in concurrent_gets(&url, 8).await {
            assert_whole(&reply, &blob);
        }
        assert_eq!(
            fake.gets(&blob_path(REPO, &digest)),
            2,
            "one cut GET, one resume"
        );
    })
    .await;
}
