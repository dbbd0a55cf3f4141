//! Warming against the real distribution registry: the configured warm list
//! is pulled at start (only the chosen platforms of an index), and
//! `POST /admin/warm` pulls on demand; `GET /admin/warm` reports each image,
//! failures included. A pull afterwards finds everything in the cache.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, post_json};
use common::lasti::{admin_token, config, Lasti};
use common::oci_layout::{BuiltImage, BuiltIndex, ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use serde_json::Value;
use tempfile::TempDir;

const KIB: usize = 1024;

async fn push_image(registry: &Registry, work: &TempDir, repo: &str, seed: u64) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[4 * KIB, 300 * KIB]);
    let (layout, image) = Layout::single(&work.path().join(repo), &spec, "v1");
    let dest = format!("{}/library/{repo}:v1", registry.host());
    skopeo::push_layout(&layout.dir, "v1", &dest, false)
        .await
        .unwrap();
    image
}

async fn push_index(registry: &Registry, work: &TempDir) -> BuiltIndex {
    let specs = [
        ImageSpec::new(711, &[8 * KIB, 100 * KIB], "linux", "amd64"),
        ImageSpec::new(712, &[8 * KIB, 120 * KIB], "linux", "arm64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join("multi"), &specs, "v1");
    let dest = format!("{}/library/multi:v1", registry.host());
    skopeo::push_layout(&layout.dir, "v1", &dest, true)
        .await
        .unwrap();
    index
}

/// `GET /admin/warm` until no image is queued or running; the statuses.
async fn settled(lasti: &Lasti, images: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = get(&format!("{}/admin/warm", lasti.admin_url()), &[]).await;
        assert_eq!(reply.status, 200);
        let status: Value = serde_json::from_slice(&reply.body).unwrap();
        let finished = images.iter().all(|image| {
            matches!(
                status["images"][*image]["state"].as_str(),
                Some("done" | "failed")
            )
        });
        if finished {
            return status["images"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "warming did not finish: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_list_is_pulled_at_start_for_the_chosen_platforms() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "single", 710).await;
    let index = push_index(&registry, &work).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.warm.images = vec!["single:v1".into(), "library/multi:v1".into()];
    cfg.warm.platforms = vec!["linux/arm64".into()];
    let lasti = Lasti::start_with(cfg, None).await;

    let status = settled(&lasti, &["single:v1", "library/multi:v1"]).await;
    let single = &status["single:v1"];
    assert_eq!(single["state"], "done", "{status:#}");
    assert_eq!(single["warmed"]["digest"], image.manifest_digest.as_str());
    assert_eq!(single["warmed"]["fetched"], 3, "config and two layers");
    let multi = &status["library/multi:v1"];
    assert_eq!(multi["state"], "done", "{status:#}");
    assert_eq!(multi["warmed"]["digest"], index.index_digest.as_str());
    let (amd64, arm64) = (&index.images[0], &index.images[1]);
    for digest in arm64.blob_digests() {
        assert_eq!(
            registry.settled_blob_gets(&digest, 1),
            1,
            "arm64 {digest} warmed"
        );
    }
    for digest in &amd64.layer_digests {
        assert_eq!(registry.blob_gets(digest), 0, "amd64 {digest} left alone");
    }

    // A pull now is served from what warming stored.
    let out = work.path().join("pulled");
    skopeo::pull_to_dir(&format!("{}/library/single:v1", lasti.host()), &out, false)
        .await
        .unwrap();
    for digest in image.blob_digests() {
        assert_eq!(
            registry.settled_blob_gets(&digest, 1),
            1,
            "{digest} fetched once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_warm_pulls_on_request_and_reports_failures() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "ondemand", 720).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    let bearer = admin_token(&mut cfg, work.path());
    let lasti = Lasti::start_with(cfg, None).await;
    let url = format!("{}/admin/warm", lasti.admin_url());
    let token = [("authorization", bearer.as_str())];

    // Without the admin token, or with another, nothing is warmed.
    let wanted = r#"{"images": ["ondemand:v1", "missing:v1"]}"#;
    let wrong = bearer.replace("admin-", "admim-");
    for headers in [vec![], vec![("authorization", wrong.as_str())]] {
        let refused = post_json(&url, wanted, &headers).await;
        assert_eq!(refused.status, 401, "{headers:?}");
        let challenge = refused.headers.get("www-authenticate").unwrap();
        assert_eq!(challenge, "Bearer realm=\"lasti-admin\"");
    }
    let status = settled(&lasti, &[]).await;
    assert!(status.as_object().unwrap().is_empty(), "{status:#}");
    for digest in image.blob_digests() {
        assert_eq!(registry.blob_gets(&digest), 0, "{digest} not fetched");
    }

    let accepted = post_json(&url, wanted, &token).await;
    assert_eq!(accepted.status, 202);
    let status = settled(&lasti, &["ondemand:v1", "missing:v1"]).await;
    assert_eq!(status["ondemand:v1"]["state"], "done", "{status:#}");
    assert_eq!(
        status["ondemand:v1"]["warmed"]["digest"],
        image.manifest_digest.as_str()
    );
    for digest in image.blob_digests() {
        assert_eq!(registry.settled_blob_gets(&digest, 1), 1, "{digest}");
    }
    assert_eq!(status["missing:v1"]["state"], "failed");
    assert!(
        status["missing:v1"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("manifest unknown")),
        "{status:#}"
    );

    // Warming again fetches nothing: everything is stored.
    assert_eq!(
        post_json(&url, r#"{"images": ["ondemand:v1"]}"#, &token)
            .await
            .status,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = settled(&lasti, &["ondemand:v1"]).await;
        if status["ondemand:v1"]["warmed"]["fetched"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for bad in [r#"{"images": ["app@"]}"#, "not json", r#"{"image": "x"}"#] {
        assert_eq!(post_json(&url, bad, &token).await.status, 400, "{bad}");
    }
}

/// With no admin token configured, a call that changes state is refused
/// whatever it carries, and says how to allow it; reading stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_nothing_on_the_admin_port_changes_state() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "locked", 721).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    // A token file named but not there yet (a Secret not created): locked.
    let missing = work.path().join("not-yet");
    cfg.admin_token_file = Some(missing.clone());
    let lasti = Lasti::start_with(cfg, None).await;
    let url = format!("{}/admin/warm", lasti.admin_url());
    let wanted = r#"{"images": ["locked:v1"]}"#;
    let guess = [("authorization", "Bearer admin-0123456789abcdef")];
    let refused = post_json(&url, wanted, &guess).await;
    assert_eq!(refused.status, 403);
    let body = String::from_utf8_lossy(&refused.body).to_string();
    assert!(body.contains("does not exist"), "{body}");

    // The Secret arrives: the token in it opens, and only it.
    std::fs::write(&missing, "admin-0123456789abcdef\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_json(&url, r#"{"images": []}"#, &guess).await.status != 202 {
        assert!(Instant::now() < deadline, "the token file was never read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(lasti);

    let lasti = Lasti::start_with(config(&[("docker.io", &registry.url())]), None).await;
    let url = format!("{}/admin/warm", lasti.admin_url());
    let refused = post_json(&url, wanted, &guess).await;
    assert_eq!(refused.status, 403);
    let body = String::from_utf8_lossy(&refused.body).to_string();
    assert!(body.contains("admin_token_file"), "{body}");
    for path in [
        "/admin/warm",
        "/admin/cache",
        "/admin/backfill",
        "/metrics",
        "/healthz",
    ] {
        let reply = get(&format!("{}{path}", lasti.admin_url()), &[]).await;
        assert_eq!(reply.status, 200, "{path} is read-only and open");
    }
    for digest in image.blob_digests() {
        assert_eq!(registry.blob_gets(&digest), 0, "{digest} not fetched");
    }
}
