//! Back-fill into a project registry: the real distribution registry as the
//! target (with htpasswd Basic auth, or behind an OpenShift-shaped token
//! realm), images pulled through lasti with skopeo, and the target checked
//! for identical digests. Also: permanent refusals, an unreachable target,
//! and a SIGKILL in the middle of a push.

mod common;

use std::time::Duration;

use common::lasti::{config, Lasti};
use common::oci_layout::{BuiltImage, BuiltIndex, ImageSpec, Layout};
use common::registry::{Registry, RegistryOptions};
use common::skopeo;
use common::token_shim::TokenShim;
use lasti::config::Config;
use lasti::secret::Secret;
use serde_json::Value;
use tempfile::TempDir;
use url::Url;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const PROJECT: &str = "proj";
const TOKEN: &str = "sa-token-123";

async fn push_image(
    registry: &Registry,
    work: &TempDir,
    name: &str,
    seed: u64,
    sizes: &[usize],
) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, sizes);
    skopeo::push_image(&registry.host(), work.path(), name, &spec)
        .await
        .1
}

fn with_target(mut cfg: Config, target_url: &str) -> Config {
    cfg.target.url = Some(Url::parse(target_url).unwrap());
    cfg.target.project = Some(PROJECT.into());
    cfg.target.token = Some(Secret::new(TOKEN.into()));
    cfg.target.max_backoff = Duration::from_secs(2);
    cfg
}

fn count(status: &Value, list: &str) -> usize {
    status[list].as_array().map(Vec::len).unwrap_or(0)
}

async fn target_digests(
    target_host: &str,
    reference: &str,
    out: &std::path::Path,
    all: bool,
) -> Vec<String> {
    let mut args = vec![
        "copy".to_string(),
        "--retry-times".into(),
        "0".into(),
        "--src-tls-verify=false".into(),
    ];
    args.extend(["--src-creds".to_string(), format!("unused:{TOKEN}")]);
    if all {
        args.push("--all".into());
    }
    args.push(format!("docker://{target_host}/{reference}"));
    args.push(format!("dir:{}", out.display()));
    skopeo::run(&args).await.expect("pull from target");
    skopeo::dir_digests(out)
}

fn expected_digests(image: &BuiltImage) -> Vec<String> {
    let mut d = image.blob_digests();
    d.push(image.manifest_digest.clone());
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_lands_in_the_project_with_identical_digests() {
    let upstream = Registry::start();
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some(("unused".into(), TOKEN.into())),
        ..Default::default()
    });
    let work = TempDir::new().unwrap();
    let image = push_image(&upstream, &work, "centos", 1, &[KIB, 2 * MIB]).await;
    let lasti = Lasti::start_with(
        with_target(config(&[("docker.io", &upstream.url())]), &target.url()),
        None,
    )
    .await;

    let src = format!("{}/centos:v1", lasti.host());
    skopeo::pull_to_dir(&src, &work.path().join("pulled"), false)
        .await
        .unwrap();
    let status = lasti
        .backfill_status_when(Duration::from_secs(30), |s| count(s, "recent") == 1)
        .await;
    assert_eq!(status["recent"][0]["target_repo"], "proj/centos");
    assert_eq!(count(&status, "failed"), 0);

    let pushed = target_digests(
        &target.host(),
        "proj/centos:v1",
        &work.path().join("t"),
        false,
    )
    .await;
    assert_eq!(pushed, expected_digests(&image));

    // Pulling again enqueues nothing: the target is known to hold it.
    skopeo::pull_to_dir(&src, &work.path().join("again"), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = lasti
        .backfill_status_when(Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(count(&status, "recent") + count(&status, "pending"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_index_lands_with_every_platform() {
    let upstream = Registry::start();
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some(("unused".into(), TOKEN.into())),
        ..Default::default()
    });
    let work = TempDir::new().unwrap();
    let specs = [
        ImageSpec::new(5, &[4 * KIB, 64 * KIB], "linux", "amd64"),
        ImageSpec::new(6, &[8 * KIB], "linux", "arm64"),
    ];
    let (layout, index): (Layout, BuiltIndex) =
        Layout::multi(&work.path().join("multi"), &specs, "multi");
    let dest = format!("{}/bitnami/redis:7", upstream.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &dest, true)
        .await
        .unwrap();
    let lasti = Lasti::start_with(
        with_target(config(&[("docker.io", &upstream.url())]), &target.url()),
        None,
    )
    .await;

    // The client pulls one platform only.
    let src = format!("{}/bitnami/redis:7", lasti.host());
    skopeo::pull_to_dir(&src, &work.path().join("one"), false)
        .await
        .unwrap();
    let arm = &index.images[1];
    assert_eq!(
        upstream.blob_gets(&arm.layer_digests[0]),
        0,
        "the client did not pull arm64"
    );
    let status = lasti
        .backfill_status_when(Duration::from_secs(30), |s| count(s, "recent") == 1)
        .await;
    assert_eq!(status["recent"][0]["target_repo"], "proj/bitnami-redis");

    let all = target_digests(
        &target.host(),
        "proj/bitnami-redis:7",
        &work.path().join("t"),
        true,
    )
    .await;
    assert!(all.contains(&index.index_digest), "the index itself");
    for image in &index.images {
        for digest in expected_digests(image) {
            assert!(all.contains(&digest), "{digest} missing at the target");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openshift_token_realm_is_used_like_docker_login() {
    let upstream = Registry::start();
    let backend = Registry::start();
    let shim = TokenShim::start(backend.addr(), TOKEN).await;
    let work = TempDir::new().unwrap();
    let image = push_image(&upstream, &work, "app", 2, &[KIB, 300 * KIB]).await;
    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut cfg = with_target(config(&[("docker.io", &upstream.url())]), &shim.url());
    cfg.target.token = None;
    cfg.target.token_file = Some(token_file);
    let lasti = Lasti::start_with(cfg, None).await;

    skopeo::pull_to_dir(
        &format!("{}/app:v1", lasti.host()),
        &work.path().join("p"),
        false,
    )
    .await
    .unwrap();
    lasti
        .backfill_status_when(Duration::from_secs(30), |s| count(s, "recent") == 1)
        .await;
    let (granted, requests) = {
        let state = shim.state.lock().unwrap();
        (state.realm_granted, state.realm_requests)
    };
    assert!(granted >= 1, "lasti logged in at the realm");
    assert_eq!(granted, requests, "never with a wrong password");
    let pushed = target_digests(
        &backend.host(),
        "proj/app:v1",
        &work.path().join("t"),
        false,
    )
    .await;
    assert_eq!(pushed, expected_digests(&image));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_push_is_reported_and_not_retried() {
    let upstream = Registry::start();
    let backend = Registry::start();
    let shim = TokenShim::start(backend.addr(), TOKEN).await;
    shim.state.lock().unwrap().deny_pushes = true;
    let work = TempDir::new().unwrap();
    push_image(&upstream, &work, "quota", 3, &[KIB]).await;
    let lasti = Lasti::start_with(
        with_target(config(&[("docker.io", &upstream.url())]), &shim.url()),
        None,
    )
    .await;

    skopeo::pull_to_dir(
        &format!("{}/quota:v1", lasti.host()),
        &work.path().join("p"),
        false,
    )
    .await
    .unwrap();
    let status = lasti
        .backfill_status_when(Duration::from_secs(20), |s| count(s, "failed") == 1)
        .await;
    let failed = &status["failed"][0];
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("quota exceeded"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = lasti
        .backfill_status_when(Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(
        status["failed"][0]["attempts"], 1,
        "no retries after a permanent refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_retry_while_the_target_is_down_and_complete_when_it_returns() {
    let upstream = Registry::start();
    let backend = Registry::start();
    let shim = TokenShim::start(backend.addr(), TOKEN).await;
    shim.state.lock().unwrap().down = true;
    let work = TempDir::new().unwrap();
    let image = push_image(&upstream, &work, "later", 4, &[KIB, 64 * KIB]).await;
    let lasti = Lasti::start_with(
        with_target(config(&[("docker.io", &upstream.url())]), &shim.url()),
        None,
    )
    .await;

    skopeo::pull_to_dir(
        &format!("{}/later:v1", lasti.host()),
        &work.path().join("p"),
        false,
    )
    .await
    .unwrap();
    let status = lasti
        .backfill_status_when(Duration::from_secs(20), |s| {
            s["pending"][0]["attempts"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    assert!(status["pending"][0]["last_error"].as_str().is_some());
    shim.state.lock().unwrap().down = false;
    lasti
        .backfill_status_when(Duration::from_secs(30), |s| count(s, "recent") == 1)
        .await;
    let pushed = target_digests(
        &backend.host(),
        "proj/later:v1",
        &work.path().join("t"),
        false,
    )
    .await;
    assert_eq!(pushed, expected_digests(&image));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_read_through_the_project_and_survive_a_lost_upstream() {
    let upstream = Registry::start();
    let target = Registry::start_with(RegistryOptions {
        htpasswd: Some(("unused".into(), TOKEN.into())),
        ..Default::default()
    });
    let work = TempDir::new().unwrap();
    let image = push_image(&upstream, &work, "kept", 7, &[KIB, 512 * KIB]).await;
    let cfg = || with_target(config(&[("docker.io", &upstream.url())]), &target.url());
    let first = Lasti::start_with(cfg(), None).await;
    skopeo::pull_to_dir(
        &format!("{}/kept:v1", first.host()),
        &work.path().join("a"),
        false,
    )
    .await
    .unwrap();
    first
        .backfill_status_when(Duration::from_secs(30), |s| count(s, "recent") == 1)
        .await;

    // A second lasti with an empty cache takes the blobs from the project.
    let second = Lasti::start_with(cfg(), None).await;
    let gets_before: Vec<usize> = image
        .layer_digests
        .iter()
        .map(|d| upstream.blob_gets(d))
        .collect();
    let pulled = common::skopeo::pull_to_dir(
        &format!("{}/kept:v1", second.host()),
        &work.path().join("b"),
        false,
    )
    .await;
    pulled.unwrap();
    let gets_after: Vec<usize> = image
        .layer_digests
        .iter()
        .map(|d| upstream.blob_gets(d))
        .collect();
    assert_eq!(gets_after, gets_before, "no blob came from the upstream");

    // With the upstream gone, a third, empty lasti still serves the tag from the project.
    drop(upstream);
    let third = Lasti::start_with(
        with_target(
            config(&[("docker.io", "http://127.0.0.1:9")]),
            &target.url(),
        ),
        None,
    )
    .await;
    let out = work.path().join("c");
    skopeo::pull_to_dir(&format!("{}/kept:v1", third.host()), &out, false)
        .await
        .unwrap();
    assert_eq!(skopeo::dir_digests(&out), expected_digests(&image));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_index_falls_back_to_the_default_platform_and_says_so() {
    let upstream = Registry::start();
    let backend = Registry::start();
    let shim = TokenShim::start(backend.addr(), TOKEN).await;
    shim.state.lock().unwrap().refuse_indexes = true;
    let work = TempDir::new().unwrap();
    let specs = [
        ImageSpec::new(15, &[2 * KIB], "linux", "arm64"),
        ImageSpec::new(16, &[3 * KIB], "linux", "amd64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join("multi"), &specs, "m");
    let dest = format!("{}/library/fall:1", upstream.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &dest, true)
        .await
        .unwrap();
    let lasti = Lasti::start_with(
        with_target(config(&[("docker.io", &upstream.url())]), &shim.url()),
        None,
    )
    .await;

    skopeo::pull_to_dir(
        &format!("{}/fall:1", lasti.host()),
        &work.path().join("p"),
        false,
    )
    .await
    .unwrap();
    let status = lasti
        .backfill_status_when(Duration::from_secs(30), |s| count(s, "recent") == 1)
        .await;
    let notes = status["recent"][0]["notes"].to_string();
    assert!(
        notes.contains("refused the index") && notes.contains("linux/amd64"),
        "{notes}"
    );
    let amd64 = &index.images[1];
    let raw = skopeo::run(&[
        "inspect".to_string(),
        "--raw".into(),
        "--tls-verify=false".into(),
        "--creds".into(),
        format!("unused:{TOKEN}"),
        format!("docker://{}/proj/fall:1", backend.host()),
    ])
    .await
    .unwrap();
    assert_eq!(raw, amd64.manifest_bytes, "the tag names the amd64 image");
}
