//! The admin listener during real pulls: `/metrics` counters move by exactly
//! what a cold and then a warm skopeo pull did, every documented metric is
//! exported, and the health endpoints answer.

mod common;

use std::collections::HashMap;

use common::fake_upstream::{image_manifest, FakeUpstream};
use common::lasti::Lasti;
use common::oci_layout::{ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use tempfile::TempDir;

/// The space the files under `dir` take on disk (allocated blocks).
fn disk_use(dir: &std::path::Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += match meta.is_dir() {
            true => disk_use(&entry.path()) as u64,
            false => (meta.blocks() * 512).max(meta.len()),
        };
    }
    total as f64
}

/// Every sample of the exposition, keyed by `name{labels}` as printed.
async fn scrape(lasti: &Lasti) -> HashMap<String, f64> {
    let reply = common::http::get(&format!("{}/metrics", lasti.admin_url()), &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").starts_with("text/plain"));
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A scrape taken once no fill is in flight. A client has every byte of a
/// blob when the fill publishes its verified last chunk; the fill commits the
/// file and ends a moment later, so a scrape right after a pull can still
/// count it.
async fn scrape_settled(lasti: &Lasti) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sample = scrape(lasti).await;
        if sample["lasti_fetches_in_flight"] == 0.0 {
            return sample;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a fill stayed in flight after the pull ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_a_cold_and_a_warm_pull_did() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(60, &[4096, 200 * 1024]);
    let (layout, image) = Layout::single(&work.path().join("img"), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/m:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    let lasti = Lasti::start(&registry.url()).await;
    let blobs = image.blob_digests().len() as f64;
    let blob_bytes =
        (image.config_bytes.len() as u64 + image.layer_sizes.iter().sum::<u64>()) as f64;
    let manifest_bytes = image.manifest_bytes.len() as f64;

    let before = scrape(&lasti).await;
    skopeo::pull_to_dir(
        &format!("{}/library/m:v1", lasti.host()),
        &work.path().join("a"),
        false,
    )
    .await
    .unwrap();
    let cold = scrape_settled(&lasti).await;
    let d = |key: &str| delta(&before, &cold, key);
    assert_eq!(
        d(r#"lasti_cache_requests_total{kind="blob",outcome="miss"}"#),
        blobs
    );
    assert_eq!(
        d(r#"lasti_cache_requests_total{kind="manifest",outcome="miss"}"#),
        1.0
    );
    assert_eq!(
        d(r#"lasti_upstream_requests_total{method="GET",status="2xx",upstream="docker.io"}"#),
        blobs + 1.0
    );
    assert_eq!(
        d(r#"lasti_served_bytes_total{source="upstream"}"#),
        blob_bytes + manifest_bytes
    );
    assert_eq!(
        d(r#"lasti_http_requests_total{route="blob",status="200"}"#),
        blobs
    );
    assert_eq!(
        cold[r#"lasti_cache_objects"#],
        blobs + 1.0,
        "blobs and the manifest"
    );
    assert_eq!(
        cold[r#"lasti_cache_size_bytes"#],
        disk_use(&lasti.data_dir().join("blobs")),
        "the cache counts the space its files take, as du does"
    );
    assert!(cold[r#"lasti_cache_size_bytes"#] >= blob_bytes + manifest_bytes);

    skopeo::pull_to_dir(
        &format!("{}/library/m:v1", lasti.host()),
        &work.path().join("b"),
        false,
    )
    .await
    .unwrap();
    let warm = scrape(&lasti).await;
    let d = |key: &str| delta(&cold, &warm, key);
    assert_eq!(
        d(r#"lasti_cache_requests_total{kind="blob",outcome="hit"}"#),
        blobs
    );
    assert_eq!(
        d(r#"lasti_cache_requests_total{kind="manifest",outcome="hit"}"#),
        1.0
    );
    assert_eq!(
        d(r#"lasti_served_bytes_total{source="cache"}"#),
        blob_bytes + manifest_bytes
    );
    assert_eq!(
        d(r#"lasti_http_requests_total{route="blob",status="200"}"#),
        blobs
    );
    assert_eq!(
        d(r#"lasti_http_request_duration_seconds_count{route="blob"}"#),
        blobs
    );
    assert!(
        d(r#"lasti_http_request_duration_seconds_count{route="manifest"}"#) >= 1.0,
        "the manifest's request timed"
    );
    // Blobs of up to 64 KiB (the config, the small layer) are kept in
    // memory; larger ones leave with sendfile.
    let large_bytes = image
        .layer_sizes
        .iter()
        .filter(|size| **size > 64 * 1024)
        .sum::<u64>() as f64;
    assert!(large_bytes > 0.0);
    assert_eq!(
        d("lasti_sendfile_bytes_total"),
        large_bytes,
        "cached blobs past 64 KiB go out with sendfile on plain HTTP/1.1"
    );
    let upstream_gets =
        r#"lasti_upstream_requests_total{method="GET",status="2xx",upstream="docker.io"}"#;
    assert_eq!(d(upstream_gets), 0.0, "a warm pull asks nothing upstream");
    assert!(warm.contains_key(
        r#"lasti_upstream_request_duration_seconds_count{method="GET",upstream="docker.io"}"#
    ));
    assert!(
        warm.keys().all(|k| k.starts_with("lasti_")),
        "only lasti's own metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_and_health_answers() {
    let registry = Registry::start();
    let cfg = common::lasti::config(&[
        ("docker.io", &registry.url()),
        ("dead.example", "http://127.0.0.1:9"),
    ]);
    let lasti = Lasti::start_with(cfg, None).await;
    // A request of each kind makes the labelled families appear.
    common::http::get(&format!("{}/v2/", lasti.url()), &[]).await;
    common::http::get(&format!("{}/v2/library/none/manifests/x", lasti.url()), &[]).await;
    let dead = common::http::get(
        &format!("{}/v2/dead.example/x/manifests/y", lasti.url()),
        &[],
    )
    .await;
    assert_eq!(dead.status, 502);
    let reply = common::http::get(&format!("{}/metrics", lasti.admin_url()), &[]).await;
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    for name in [
        "lasti_http_requests_total",
        "lasti_http_request_duration_seconds",
        "lasti_upstream_requests_total",
        "lasti_upstream_request_duration_seconds",
        "lasti_upstream_errors_total",
        "lasti_upstream_offline",
        "lasti_upstream_skipping",
        "lasti_upstream_skipped_total",
        "lasti_cache_size_bytes",
        "lasti_cache_objects",
        "lasti_cache_evictions_total",
        "lasti_fetches_in_flight",
        "lasti_digest_failures_total",
        "lasti_backfill_pushed_bytes_total",
        "lasti_backfill_refused_total",
        "lasti_backfill_push_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/nope", 404)] {
        let reply = common::http::get(&format!("{}{path}", lasti.admin_url()), &[]).await;
        assert_eq!(reply.status.as_u16(), status, "{path}");
    }
    // Admin paths are not on the registry API listener.
    let public = common::http::get(&format!("{}/metrics", lasti.url()), &[]).await;
    assert_eq!(public.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_exported_metrics() {
    let registry = Registry::start();
    let cfg = common::lasti::config(&[
        ("docker.io", &registry.url()),
        ("dead.example", "http://127.0.0.1:9"),
    ]);
    let lasti = Lasti::start_with(cfg, None).await;
    common::http::get(
        &format!("{}/v2/dead.example/x/manifests/y", lasti.url()),
        &[],
    )
    .await;
    let reply = common::http::get(&format!("{}/metrics", lasti.admin_url()), &[]).await;
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/lasti.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut used = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metrics_in(target["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/monitoring/prometheusrule.yaml"
    ))
    .unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rules).unwrap();
    let mut alerting = 0;
    for rule in rules["spec"]["groups"][0]["rules"].as_sequence().unwrap() {
        let found = metrics_in(rule["expr"].as_str().unwrap());
        alerting += found.len();
        used.extend(found);
    }
    assert!(alerting >= 7, "the alerts use lasti's metrics");
    for name in used {
        // The quota gauges appear once an upstream reports a quota (Docker
        // Hub), the signature counters with an upstream's signature rules
        // (tests/signatures.rs reads them), the event counters with a sink.
        let exported = text.contains(&format!("# TYPE {name} "));
        let quota = name.starts_with("lasti_upstream_ratelimit");
        let signatures = name.starts_with("lasti_signature_");
        let events = name.starts_with("lasti_event");
        assert!(
            exported || quota || signatures || events,
            "the dashboard or an alert uses {name}, which lasti does not export"
        );
    }
}

/// The lasti metric names a PromQL expression reads.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("lasti_"))
        .map(|word| word.trim_end_matches("_bucket").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_rate_limit_headers_become_gauges() {
    let fake = FakeUpstream::start().await;
    let lasti = Lasti::start(&fake.url()).await;
    let limit = r#"lasti_upstream_ratelimit_limit{upstream="docker.io"}"#;
    let remaining = r#"lasti_upstream_ratelimit_remaining{upstream="docker.io"}"#;
    let pull = |tag: &str| {
        let url = format!("{}/v2/library/app/manifests/{tag}", lasti.url());
        async move { common::http::get(&url, &[]).await.status }
    };

    // As Docker Hub sends them: a count, then the window in seconds.
    fake.set_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "76;w=21600"),
    ]);
    fake.put_manifest("v1", image_manifest(b"{}", &[b"one"]));
    assert_eq!(pull("v1").await, 200);
    let first = scrape(&lasti).await;
    assert_eq!((first[limit], first[remaining]), (100.0, 76.0));

    fake.set_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "75;w=21600"),
    ]);
    fake.put_manifest("v2", image_manifest(b"{}", &[b"two"]));
    assert_eq!(pull("v2").await, 200);
    assert_eq!(scrape(&lasti).await[remaining], 75.0, "follows each answer");
}
