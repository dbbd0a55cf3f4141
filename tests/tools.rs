//! The operator commands against a running lasti and the real registry:
//! `lasti warm` pre-pulls every platform of an index (or only those named)
//! through the proxy, and `lasti ls` / `GET /admin/cache` list what it holds.

mod common;

use std::process::Command;

use common::lasti::Lasti;
use common::oci_layout::{ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use tempfile::TempDir;

fn lasti_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lasti"))
        .args(args)
        .output()
        .expect("run lasti");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pulls_every_platform_and_ls_lists_it() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let specs = [
        ImageSpec::new(80, &[4096, 70 * 1024], "linux", "amd64"),
        ImageSpec::new(81, &[5000], "linux", "arm64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join("multi"), &specs, "m");
    skopeo::push_layout(
        &layout.dir,
        &layout.tag,
        &format!("{}/library/tool:1", registry.host()),
        true,
    )
    .await
    .unwrap();
    let single = ImageSpec::linux_amd64(82, &[3000]);
    let (layout, image) = Layout::single(&work.path().join("single"), &single, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/other:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    let lasti = Lasti::start(&registry.url()).await;
    let server = lasti.url();

    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        lasti_cli(&["warm", "--server", &server, "tool:1", "library/other:v1"])
    })
    .await
    .unwrap();
    assert!(ok, "warm failed: {err}");
    assert!(
        err.contains("warmed tool:1") && err.contains("warmed library/other:v1"),
        "{err}"
    );
    for built in index.images.iter().chain([&image]) {
        for digest in built.blob_digests() {
            assert_eq!(
                registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 1),
                1,
                "{digest}"
            );
        }
    }

    let admin = lasti.admin_url();
    let (ok, out, err) = tokio::task::spawn_blocking(move || lasti_cli(&["ls", "--admin", &admin]))
        .await
        .unwrap();
    assert!(ok, "ls failed: {err}");
    assert!(
        out.contains("library/tool") && out.contains("library/other"),
        "{out}"
    );

    let reply = common::http::get(&format!("{}/admin/cache", lasti.admin_url()), &[]).await;
    let listed: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let other = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["repository"] == "library/other")
        .expect("listed");
    assert_eq!(other["tag"], "v1");
    assert_eq!(other["digest"], image.manifest_digest.as_str());
    let size = image.config_bytes.len() as u64 + image.layer_sizes.iter().sum::<u64>();
    assert_eq!(other["image_size"], size);
    assert!(other["last_use"].as_u64().is_some());
    assert!(other["backfilled"].is_null(), "no back-fill configured");
}

/// The `last_use` `GET /admin/cache` gives `repository`.
async fn listed_last_use(lasti: &Lasti, repository: &str) -> u64 {
    let reply = common::http::get(&format!("{}/admin/cache", lasti.admin_url()), &[]).await;
    let listed: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["repository"] == repository)
        .and_then(|i| i["last_use"].as_u64())
        .expect("listed with a last use")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_the_cache_is_no_use_of_what_it_lists() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(83, &[3000]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "listed", &spec).await;
    let lasti = Lasti::start(&registry.url()).await;
    skopeo::pull_and_check(
        &lasti.host(),
        "listed",
        &image,
        &work.path().join("out"),
        false,
    )
    .await;
    let pulled = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    std::thread::sleep(std::time::Duration::from_secs(2));
    let first = listed_last_use(&lasti, "library/listed").await;
    assert!(
        first <= pulled,
        "the pull's time, not the listing's: {first} > {pulled}"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    // As --admin-listen takes it: host:port.
    let admin = lasti.admin_url().trim_start_matches("http://").to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || lasti_cli(&["ls", "--admin", &admin]))
        .await
        .unwrap();
    assert!(ok, "ls failed: {err}");
    assert!(!out.contains(" 0s ago"), "{out}");
    assert_eq!(
        listed_last_use(&lasti, "library/listed").await,
        first,
        "listing twice left the last use where it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_can_limit_an_index_to_named_platforms() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let specs = [
        ImageSpec::new(90, &[4096], "linux", "amd64"),
        ImageSpec::new(91, &[5000], "linux", "arm64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join("multi"), &specs, "m");
    skopeo::push_layout(
        &layout.dir,
        &layout.tag,
        &format!("{}/library/plat:1", registry.host()),
        true,
    )
    .await
    .unwrap();
    let lasti = Lasti::start(&registry.url()).await;
    let server = lasti.url();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        lasti_cli(&[
            "warm",
            "--server",
            &server,
            "--platform",
            "linux/arm64",
            "plat:1",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let arm = &index.images[1].layer_digests[0];
    let amd = &index.images[0].layer_digests[0];
    assert_eq!(
        registry.wait_for_requests("GET", &format!("/blobs/{arm}"), 1),
        1
    );
    assert_eq!(registry.blob_gets(amd), 0, "amd64 was not asked for");

    let (ok, _, err) = tokio::task::spawn_blocking(|| {
        lasti_cli(&["warm", "--server", "http://127.0.0.1:9", "x:1"])
    })
    .await
    .unwrap();
    assert!(
        !ok && err.contains("x:1"),
        "a failed warm says which image: {err}"
    );
}
