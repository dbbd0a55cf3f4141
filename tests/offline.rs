//! Offline mode and the circuit breaker: with the upstream switched off
//! (for the process, for one upstream, or in the configuration), what is
//! cached is served, tags whatever their age, and nothing reaches the
//! upstream; a miss is a clear 503 naming offline mode. An upstream that
//! keeps failing is skipped for a period: one request per period reaches
//! it, and the first answer brings it back.

mod common;

use std::time::Duration;

use common::checks::{assert_whole, within};
use common::fake_upstream::{
    blob_path, image_manifest, manifest_path, random_blob, FakeUpstream, OCI_MANIFEST,
};
use common::http::{get, metric, post_json, Reply};
use common::lasti::{admin_token, config, Lasti};
use common::oci_layout::ImageSpec;
use common::registry::Registry;
use common::skopeo;
use serde_json::Value;
use tempfile::TempDir;

const KIB: usize = 1024;

async fn switch(lasti: &Lasti, bearer: &str, body: &str) -> (u16, Value) {
    let url = format!("{}/admin/offline", lasti.admin_url());
    let reply = post_json(&url, body, &[("authorization", bearer)]).await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status.as_u16(), value)
}

async fn state(lasti: &Lasti) -> Value {
    let reply = get(&format!("{}/admin/offline", lasti.admin_url()), &[]).await;
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).unwrap()
}

/// An error body's first code and message.
fn oci_error(reply: &Reply) -> (String, String) {
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let error = &body["errors"][0];
    (
        error["code"].as_str().unwrap_or_default().to_string(),
        error["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_serves_what_is_cached_and_sends_nothing_upstream() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(60, &[4 * KIB, 80 * KIB]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "kept", &spec).await;
    let other_spec = ImageSpec::linux_amd64(61, &[5 * KIB]);
    let (_, other) = skopeo::push_image(&registry.host(), work.path(), "later", &other_spec).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    // Every tag is old at once: served from its record only when offline.
    cfg.upstreams[0].tag_ttl = Duration::ZERO;
    let bearer = admin_token(&mut cfg, work.path());
    let lasti = Lasti::start_with(cfg, None).await;
    let admin = lasti.admin_url();
    let out = |n: &str| work.path().join(format!("pulled-{n}"));
    skopeo::pull_and_check(&lasti.host(), "kept", &image, &out("online"), false).await;
    assert_eq!(metric(&admin, "lasti_upstream_offline", &[]).await, 0);

    let (status, now) = switch(&lasti, &bearer, r#"{"offline": true}"#).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["offline"], true);
    assert_eq!(now["upstreams"]["docker.io"]["offline"], true);
    let before = registry.all_requests();
    skopeo::pull_and_check(&lasti.host(), "kept", &image, &out("offline"), false).await;
    let stale = ["outcome=\"stale\""];
    assert!(metric(&admin, "lasti_cache_requests_total", &stale).await >= 1);
    let miss = get(
        &format!("{}/v2/library/later/manifests/v1", lasti.url()),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(miss.status, 503);
    let (code, message) = oci_error(&miss);
    assert_eq!(code, "UNAVAILABLE");
    assert!(message.contains("offline"), "{message}");
    let blob = get(
        &format!(
            "{}/v2/library/later/blobs/{}",
            lasti.url(),
            other.layer_digests[0]
        ),
        &[],
    )
    .await;
    assert_eq!(blob.status, 503, "a blob miss too");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        registry.all_requests(),
        before,
        "nothing reached the registry"
    );
    assert_eq!(metric(&admin, "lasti_upstream_offline", &[]).await, 1);
    let skipped = ["reason=\"offline\""];
    assert!(metric(&admin, "lasti_upstream_skipped_total", &skipped).await >= 2);

    // Back online: the miss is fetched.
    let (status, now) = switch(&lasti, &bearer, r#"{"offline": false}"#).await;
    assert_eq!(status, 200);
    assert_eq!(now["upstreams"]["docker.io"]["offline"], false);
    skopeo::pull_and_check(&lasti.host(), "later", &other, &out("later"), false).await;

    // One upstream's own switch; one that is not configured is refused.
    let one = r#"{"offline": true, "upstream": "docker.io"}"#;
    let (status, now) = switch(&lasti, &bearer, one).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["offline"], false);
    assert_eq!(now["upstreams"]["docker.io"]["offline"], true);
    let before = registry.all_requests();
    let url = format!("{}/v2/library/nothere/manifests/v1", lasti.url());
    assert_eq!(get(&url, &[("accept", OCI_MANIFEST)]).await.status, 503);
    assert_eq!(registry.all_requests(), before);
    let bad = r#"{"offline": true, "upstream": "quay.example"}"#;
    assert_eq!(switch(&lasti, &bearer, bad).await.0, 400);
    assert_eq!(
        switch(&lasti, "Bearer nope", r#"{"offline": false}"#)
            .await
            .0,
        401
    );
    assert_eq!(
        state(&lasti).await["upstreams"]["docker.io"]["offline"],
        true
    );

    // The same from the command line: the state, then docker.io back online.
    let cli = |args: &[&str]| {
        let token_file = work.path().join("admin-token");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lasti"))
            .args(["--admin-token-file", token_file.to_str().unwrap()])
            .args(["offline", "--admin", &lasti.admin_url()])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = cli(&[]);
    assert!(
        shown.contains("process: online\ndocker.io: offline\n"),
        "{shown}"
    );
    let shown = cli(&["off", "docker.io"]);
    assert!(shown.contains("docker.io: online"), "{shown}");
    assert_eq!(
        state(&lasti).await["upstreams"]["docker.io"]["offline"],
        false
    );
    drop(lasti);

    // Offline from the start, by the configuration.
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.offline = true;
    let lasti = Lasti::start_with(cfg, None).await;
    assert_eq!(state(&lasti).await["offline"], true);
    let before = registry.all_requests();
    let url = format!("{}/v2/library/kept/manifests/v1", lasti.url());
    let reply = get(&url, &[("accept", OCI_MANIFEST)]).await;
    assert_eq!(reply.status, 503, "an empty cache has nothing to serve");
    assert_eq!(registry.all_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_keeps_failing_is_skipped_and_tried_once_per_period() {
    within(async {
        let fake = FakeUpstream::start().await;
        let (cfg_blob, layer) = (random_blob(200), random_blob(16 * KIB));
        fake.put_blob(cfg_blob.clone());
        let layer_digest = fake.put_blob(layer.clone());
        let manifest = image_manifest(&cfg_blob, &[&layer]);
        fake.put_manifest("v1", manifest.clone());
        let mut cfg = config(&[("docker.io", &fake.url())]);
        let upstream = &mut cfg.upstreams[0];
        upstream.tag_ttl = Duration::ZERO;
        upstream.retries = 0;
        upstream.skip_after_failures = 3;
        upstream.skip_for = Duration::from_secs(1);
        let lasti = Lasti::start_with(cfg, None).await;
        let admin = lasti.admin_url();
        let manifest_url = |tag: &str| format!("{}{}", lasti.url(), manifest_path("team/app", tag));
        let accept = [("accept", OCI_MANIFEST)];
        assert_eq!(get(&manifest_url("v1"), &accept).await.body, manifest);
        let blob_url = format!("{}{}", lasti.url(), blob_path("team/app", &layer_digest));
        assert_whole(&get(&blob_url, &[]).await, &layer);

        fake.set_down(true);
        let asked = || fake.requests().len();
        for _ in 0..3 {
            let reply = get(&manifest_url("v2"), &accept).await;
            assert_eq!(reply.status, 502, "the upstream's failure");
        }
        let reached = asked();
        for _ in 0..10 {
            let reply = get(&manifest_url("v2"), &accept).await;
            assert_eq!(reply.status, 503);
            let (code, message) = oci_error(&reply);
            assert_eq!(code, "UNAVAILABLE");
            assert!(message.contains("skipped"), "{message}");
            // A tag it has is served from its record, unrevalidated.
            let stale = get(&manifest_url("v1"), &accept).await;
            assert_eq!(stale.status, 200);
            assert_eq!(stale.body, manifest);
        }
        assert_eq!(asked(), reached, "no request reached the failing upstream");
        assert_eq!(metric(&admin, "lasti_upstream_skipping", &[]).await, 1);
        let failing = ["reason=\"failing\""];
        assert!(metric(&admin, "lasti_upstream_skipped_total", &failing).await >= 20);
        assert_eq!(
            state(&lasti).await["upstreams"]["docker.io"]["breaker"],
            "open"
        );

        // After the period one request tries it, fails, and the next
        // period is twice as long.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(get(&manifest_url("v2"), &accept).await.status, 502);
        assert_eq!(asked(), reached + 1, "one probe");
        assert_eq!(get(&manifest_url("v2"), &accept).await.status, 503);
        let retry_in = state(&lasti).await["upstreams"]["docker.io"]["retry_in_secs"]
            .as_u64()
            .unwrap();
        assert!(retry_in >= 1, "{retry_in}");

        // It answers again: the next probe closes the breaker.
        fake.set_down(false);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let reply = get(&manifest_url("v1"), &accept).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            state(&lasti).await["upstreams"]["docker.io"]["breaker"],
            "closed"
        );
        assert_eq!(metric(&admin, "lasti_upstream_skipping", &[]).await, 0);
        let reply = get(&manifest_url("v2"), &accept).await;
        assert_eq!(reply.status, 404, "asked again: it has no v2");
    })
    .await;
}
