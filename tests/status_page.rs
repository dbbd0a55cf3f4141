//! The status page in a real browser (Debian's headless Chromium, through
//! ChromeDriver): against a lasti with images pulled by skopeo, a failing
//! upstream and back-fill on, a person sees the images, the last hour by
//! tier, each upstream's state and the back-fill queue; the actions refuse
//! without the token and purge and switch offline with it; the page fits a
//! phone's width and refreshes itself.
//!
//! `LASTI_SCREENSHOTS=<dir>` keeps the screenshots (docs/status-page.png
//! is made this way).

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::http::{get, metric_reaches};
use common::lasti::{admin_token, config, Lasti};
use common::oci_layout::ImageSpec;
use common::registry::{Registry, RegistryOptions};
use common::skopeo;
use lasti::secret::Secret;
use serde_json::Value;
use tempfile::TempDir;
use url::Url;

const KIB: usize = 1024;
const TARGET_TOKEN: &str = "sa-token-status";

fn keep(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Ok(dir) = std::env::var("LASTI_SCREENSHOTS") {
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_the_cache_and_acts_on_it_in_a_browser() {
    let registry = Registry::start();
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some(("unused".into(), TARGET_TOKEN.into())),
        ..Default::default()
    });
    let work = TempDir::new().unwrap();
    for (name, seed, sizes) in [
        ("app", 81, vec![300 * KIB, 1200 * KIB]),
        ("tools", 82, vec![40 * KIB, 700 * KIB]),
    ] {
        let spec = ImageSpec::linux_amd64(seed, &sizes);
        skopeo::push_image(&registry.host(), work.path(), name, &spec).await;
    }
    let mut cfg = config(&[
        ("docker.io", &registry.url()),
        ("quay.example", "http://127.0.0.1:9"),
    ]);
    cfg.upstreams[1].retries = 0;
    cfg.upstreams[1].skip_after_failures = 2;
    cfg.upstreams[1].skip_for = Duration::from_secs(300);
    cfg.target.url = Some(Url::parse(&target.url()).unwrap());
    cfg.target.project = Some("proj".into());
    cfg.target.token = Some(Secret::new(TARGET_TOKEN.into()));
    let bearer = admin_token(&mut cfg, work.path());
    let token = bearer.strip_prefix("Bearer ").unwrap().to_string();
    let lasti = Lasti::start_with(cfg, None).await;
    let admin = lasti.admin_url();
    for name in ["app", "tools"] {
        let out = work.path().join(format!("pulled-{name}"));
        skopeo::pull_to_dir(&format!("{}/library/{name}:v1", lasti.host()), &out, false)
            .await
            .unwrap();
    }
    // A hit of app's manifest, and a failing upstream whose breaker opens.
    let manifest = format!("{}/v2/library/app/manifests/v1", lasti.url());
    assert_eq!(get(&manifest, &[]).await.status, 200);
    let dead = format!("{}/v2/quay.example/org/x/manifests/v1", lasti.url());
    for _ in 0..3 {
        assert!(get(&dead, &[]).await.status.is_server_error());
    }
    metric_reaches(
        &admin,
        "lasti_backfill_jobs_total",
        &["outcome=\"done\""],
        2,
    )
    .await;

    let browser = Browser::start(1280, 1000).await;
    let page = format!("{admin}/");
    browser.open(&page).await;

    // What is cached, with sizes, ages and whether the project has it.
    let rows = browser.find_all("#images tbody tr").await;
    assert_eq!(rows.len(), 2);
    let app = browser
        .text_of("#images tr[data-image='docker.io/library/app:v1']")
        .await;
    assert!(app.contains("library/app:v1"), "{app}");
    assert!(app.contains("1.5 MiB"), "app's layers and config: {app}");
    assert!(
        app.contains("s ago") && app.contains("yes"),
        "pulled now, back-filled: {app}"
    );
    let tools = browser
        .text_of("#images tr[data-image='docker.io/library/tools:v1']")
        .await;
    assert!(tools.contains("740.") && tools.contains("KiB"), "{tools}");

    // The last hour: bytes from the upstream and from the cache.
    let from_upstream = browser.text_of("#last-hour [data-tier=upstream]").await;
    assert!(from_upstream.contains("MiB"), "{from_upstream}");
    let from_cache = browser.text_of("#last-hour [data-tier=cache]").await;
    assert!(
        from_cache.contains(" responses") && !from_cache.contains("\n0 responses"),
        "the manifest hit at least: {from_cache}"
    );
    assert!(browser.text_of("#hit-ratio").await.contains('%'));
    let bars = browser.find_all("#last-hour svg rect").await;
    assert_eq!(bars.len(), 60, "a bar per minute");

    // Upstreams: one answering, one skipped.
    let docker = browser
        .text_of("#upstreams tr[data-upstream='docker.io']")
        .await;
    assert!(
        docker.contains("ok") && docker.contains("Take offline"),
        "{docker}"
    );
    let quay = browser
        .text_of("#upstreams tr[data-upstream='quay.example']")
        .await;
    assert!(
        quay.contains("skipped") && quay.contains("tried again in"),
        "{quay}"
    );
    let backfill = browser.text_of("#backfill").await;
    assert!(backfill.contains("Back-fill into proj"), "{backfill}");
    keep("status-page.png", &browser.screenshot().await);

    // Actions: none without the token, none with a wrong one.
    let purge_app = "#images tr[data-image='docker.io/library/app:v1'] button";
    browser.click(&browser.find(purge_app).await).await;
    browser
        .wait_for_text("#result", "Type the admin token first")
        .await;
    let token_field = browser.find("#token").await;
    browser.type_into(&token_field, "not-the-token").await;
    browser.click(&browser.find(purge_app).await).await;
    browser.wait_for_text("#result", "401 /admin/purge").await;
    browser.open(&page).await;
    assert_eq!(
        browser.find_all("#images tbody tr").await.len(),
        2,
        "nothing purged"
    );

    // With the token (kept for the tab across reloads): app is purged.
    let token_field = browser.find("#token").await;
    browser.clear(&token_field).await;
    browser.type_into(&token_field, &token).await;
    browser.click(&browser.find(purge_app).await).await;
    let answer = browser.wait_for_text("#result", "200 /admin/purge").await;
    assert!(answer.contains("\"blobs\""), "{answer}");
    browser.open(&page).await;
    let rows = browser.find_all("#images tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(browser.text(&rows[0]).await.contains("library/tools:v1"));
    let restored = browser
        .script("return document.getElementById('token').value")
        .await;
    assert_eq!(
        restored,
        token.as_str(),
        "the token outlives a reload in this tab"
    );

    // Offline, from the page.
    let take_offline = "#upstreams tr[data-upstream='docker.io'] button";
    browser.click(&browser.find(take_offline).await).await;
    browser.wait_for_text("#result", "200 /admin/offline").await;
    browser.open(&page).await;
    let docker = browser
        .text_of("#upstreams tr[data-upstream='docker.io']")
        .await;
    assert!(
        docker.contains("offline") && docker.contains("Bring online"),
        "{docker}"
    );
    let state = get(&format!("{admin}/admin/offline"), &[]).await;
    let state: Value = serde_json::from_slice(&state.body).unwrap();
    assert_eq!(state["upstreams"]["docker.io"]["offline"], true);

    // The JSON beside the page says the same.
    let json = get(&format!("{admin}/admin/status"), &[]).await;
    let json: Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(json["images_total"], 1);
    assert_eq!(json["upstreams"][0]["offline"], true);

    // On a phone: nothing wider than the screen (tables scroll in place).
    browser.resize(390, 844).await;
    browser.open(&page).await;
    let overflow = browser
        .script("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is {overflow} px too wide"
    );
    keep("status-page-phone.png", &browser.screenshot().await);

    // It refreshes itself.
    browser.script("window.lastiMarker = 1").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let marker = browser.script("return window.lastiMarker || null").await;
        if marker.is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_runs_only_its_own_code() {
    let registry = Registry::start();
    let lasti = Lasti::start_with(config(&[("docker.io", &registry.url())]), None).await;
    let reply = get(&format!("{}/status", lasti.admin_url()), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    let policy = reply.header("content-security-policy");
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(reply.header("cache-control"), "no-store");
    let page = String::from_utf8_lossy(&reply.body);
    assert!(page.contains("Nothing is cached yet."));
    // Only on the admin port.
    let public = get(&format!("{}/status", lasti.url()), &[]).await;
    assert_eq!(public.status, 404);
}
