//! The back-fill queue's bounds and bookkeeping, against a target that is
//! down (nothing listens on its port), so jobs stay pending: past
//! `max_pending_jobs` an image is refused and counted while the client's
//! pull succeeds, the listing pages with a cursor, and the counts (and the
//! queue-depth gauge) are right after a SIGKILL and restart.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::fake_upstream::{image_manifest, FakeUpstream};
use common::lasti::{config, Lasti};
use common::process::Setup;
use lasti::config::Config;
use lasti::secret::Secret;
use serde_json::Value;
use url::Url;

const REFUSED_FULL: &str = r#"lasti_backfill_refused_total{reason="queue_full"}"#;
const DEPTH: &str = "lasti_backfill_queue_depth";

/// A configuration whose back-fill target refuses every connection.
fn with_down_target(upstream: &FakeUpstream, max_pending: u64) -> Config {
    let mut cfg = config(&[("docker.io", &upstream.url())]);
    let port = common::free_port();
    cfg.target.url = Some(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    cfg.target.project = Some("proj".into());
    cfg.target.token = Some(Secret::new("t".into()));
    cfg.target.read_through = false;
    cfg.target.max_pending_jobs = max_pending;
    cfg
}

/// Puts `tags` on the fake upstream and pulls each through lasti.
async fn pull_tags(upstream: &FakeUpstream, lasti: &Lasti, tags: &[&str]) {
    for tag in tags {
        upstream.put_manifest(tag, image_manifest(tag.as_bytes(), &[b"layer"]));
        let url = format!("{}/v2/library/app/manifests/{tag}", lasti.url());
        let reply = common::http::get(&url, &[]).await;
        assert_eq!(reply.status, 200, "the pull of {tag} succeeds");
    }
}

async fn status(lasti: &Lasti, query: &str) -> (u16, Value) {
    let url = format!("{}/admin/backfill{query}", lasti.admin_url());
    let reply = common::http::get(&url, &[]).await;
    (
        reply.status.as_u16(),
        serde_json::from_slice(&reply.body).unwrap_or_default(),
    )
}

async fn scrape(lasti: &Lasti) -> HashMap<String, f64> {
    let reply = common::http::get(&format!("{}/metrics", lasti.admin_url()), &[]).await;
    String::from_utf8(reply.body.to_vec())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Polls until `ready` holds for the metrics, at most 10 s.
async fn wait_metrics(lasti: &Lasti, ready: impl Fn(&HashMap<String, f64>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(lasti).await;
        if ready(&metrics) {
            return;
        }
        assert!(Instant::now() < deadline, "metrics never got there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .map(|a| a.iter().filter_map(|j| j["id"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_an_image_is_refused_and_counted_but_still_served() {
    let upstream = FakeUpstream::start().await;
    let lasti = Lasti::start_with(with_down_target(&upstream, 2), None).await;

    pull_tags(&upstream, &lasti, &["v1", "v2", "v3"]).await;
    wait_metrics(&lasti, |m| m.get(REFUSED_FULL) == Some(&1.0)).await;
    let metrics = scrape(&lasti).await;
    assert_eq!(metrics.get(DEPTH), Some(&2.0));
    let (_, s) = status(&lasti, "").await;
    assert_eq!(s["counts"]["pending"], 2, "{s:#}");
    let tags: Vec<&str> = s["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["tag"].as_str())
        .collect();
    assert_eq!(tags, ["v1", "v2"], "the one past the cap was not queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_pages_with_a_cursor() {
    let upstream = FakeUpstream::start().await;
    let lasti = Lasti::start_with(with_down_target(&upstream, 100), None).await;
    pull_tags(&upstream, &lasti, &["a", "b", "c", "d", "e"]).await;
    wait_metrics(&lasti, |m| m.get(DEPTH) == Some(&5.0)).await;

    let (_, first) = status(&lasti, "?limit=2").await;
    assert_eq!(ids(&first["pending"]), [1, 2], "{first:#}");
    assert_eq!(first["next"], 2);
    let (_, second) = status(&lasti, "?limit=2&after=2").await;
    assert_eq!(ids(&second["pending"]), [3, 4]);
    let (_, last) = status(&lasti, &format!("?limit=2&after={}", second["next"])).await;
    assert_eq!(ids(&last["pending"]), [5]);
    assert!(last["next"].is_null(), "{last:#}");
    let (_, all) = status(&lasti, "").await;
    assert_eq!(ids(&all["pending"]), [1, 2, 3, 4, 5], "the default limit");

    for bad in ["?limit=0", "?limit=x", "?after=-1", "?page=2"] {
        assert_eq!(status(&lasti, bad).await.0, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_right_after_a_crash_and_restart() {
    let upstream = FakeUpstream::start().await;
    let work = tempfile::TempDir::new().unwrap();
    let target = format!(
        "[target]\nurl = \"http://127.0.0.1:{}\"\nproject = \"proj\"\ntoken = \"t\"\nread_through = false",
        common::free_port()
    );
    let setup = Setup::write(work.path(), &upstream.url(), "", &target);
    let lasti = setup.start();
    for tag in ["x", "y", "z"] {
        upstream.put_manifest(tag, image_manifest(tag.as_bytes(), &[b"layer"]));
        let url = format!("http://{}/v2/library/app/manifests/{tag}", lasti.api);
        assert_eq!(common::http::get(&url, &[]).await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&format!("{}/admin/backfill", lasti.admin)).await["counts"]["pending"] != 3 {
        assert!(Instant::now() < deadline, "the jobs were never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lasti.kill_lasti();

    let lasti = setup.start();
    let s = get_json(&format!("{}/admin/backfill", lasti.admin)).await;
    assert_eq!(s["counts"]["pending"], 3, "{s:#}");
    assert_eq!(s["counts"]["done"], 0);
    let metrics = common::http::get(&format!("{}/metrics", lasti.admin), &[]).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.lines().any(|l| l == format!("{DEPTH} 3")),
        "the gauge is right from the start"
    );
}

async fn get_json(url: &str) -> Value {
    serde_json::from_slice(&common::http::get(url, &[]).await.body).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_services_stops_back_fill_and_frees_its_stores() {
    let upstream = FakeUpstream::start().await;
    let data = tempfile::TempDir::new().unwrap();
    let mut cfg = with_down_target(&upstream, 100);
    cfg.data_dir = data.path().to_path_buf();
    let services = lasti::server::build_proxy(&cfg).await.expect("first start");
    assert!(services.proxy.backfill().is_some());
    // Let the back-fill tasks get going first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(services);
    // The dispatcher lets go of the proxy once stopped (a step under way
    // ends first), so the stores are soon free for the next start in the
    // same process.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lasti::server::build_proxy(&cfg).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "still held: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
