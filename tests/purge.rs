//! Purge against the real distribution registry and skopeo: a tag's record,
//! a multi-platform image's manifests, and an image with the blobs no other
//! cached image uses, by `POST /admin/purge` and by `lasti purge`; what is
//! dropped is fetched again on the next pull, what another image uses stays,
//! and a client reading a purged blob gets it whole.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::free_port;
use common::garage::Garage;
use common::http::{get, post_json};
use common::lasti::{admin_token, config, Lasti};
use common::oci_layout::{sha256_digest, ImageSpec, Layout};
use common::registry::Registry;
use common::s3::{blob_key, Store};
use common::skopeo;
use lasti::secret::Secret;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;

/// Where lasti keeps `digest` (`sha256:<hex>`) in `data`.
fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

async fn purge(lasti: &Lasti, bearer: &str, body: &str) -> (u16, Value) {
    let url = format!("{}/admin/purge", lasti.admin_url());
    let reply = post_json(&url, body, &[("authorization", bearer)]).await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status.as_u16(), value)
}

fn strings(value: &Value) -> Vec<String> {
    let mut list: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_tag_manifest_or_image_is_fetched_again_and_shared_blobs_stay() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    // Equal seeds and first sizes: `app` and `other` share their base layer.
    let app_spec = ImageSpec::linux_amd64(50, &[64 * KIB, 100 * KIB]);
    let other_spec = ImageSpec::linux_amd64(50, &[64 * KIB, 120 * KIB]);
    let (_, app) = skopeo::push_image(&registry.host(), work.path(), "app", &app_spec).await;
    let (_, other) = skopeo::push_image(&registry.host(), work.path(), "other", &other_spec).await;
    assert_eq!(app.layer_digests[0], other.layer_digests[0]);
    let specs = [
        ImageSpec::new(51, &[8 * KIB], "linux", "amd64"),
        ImageSpec::new(52, &[9 * KIB], "linux", "arm64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join("multi"), &specs, "v1");
    let dest = format!("{}/library/multi:v1", registry.host());
    skopeo::push_layout(&layout.dir, "v1", &dest, true)
        .await
        .unwrap();

    let mut cfg = config(&[("docker.io", &registry.url())]);
    let bearer = admin_token(&mut cfg, work.path());
    let lasti = Lasti::start_with(cfg, None).await;
    let data = lasti.data_dir().to_path_buf();
    let pulled = |name: &str| work.path().join(format!("pulled-{name}"));
    skopeo::pull_and_check(&lasti.host(), "app", &app, &pulled("app-1"), false).await;
    skopeo::pull_and_check(&lasti.host(), "other", &other, &pulled("other"), false).await;
    let multi = format!("{}/library/multi:v1", lasti.host());
    skopeo::pull_to_dir(&multi, &pulled("multi-1"), true)
        .await
        .unwrap();
    for digest in app.blob_digests() {
        assert!(blob_file(&data, &digest).exists(), "{digest} cached");
    }

    // The tag only: the next pull asks the registry for the tag, and
    // fetches no blob again.
    let tag_gets = registry.manifest_gets("v1");
    let (status, answer) = purge(&lasti, &bearer, r#"{"image": "app:v1", "scope": "tag"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(strings(&answer["tags"]), ["v1"]);
    assert_eq!(strings(&answer["manifests"]), Vec::<String>::new());
    assert!(blob_file(&data, &app.manifest_digest).exists());
    skopeo::pull_and_check(&lasti.host(), "app", &app, &pulled("app-2"), false).await;
    assert!(registry.wait_for_requests("GET", "/manifests/v1", tag_gets + 1) > tag_gets);
    for digest in app.blob_digests() {
        assert_eq!(registry.blob_gets(&digest), 1, "{digest} fetched once");
    }

    // The image: its manifest and the blobs only it uses go, the shared
    // base layer stays; the CLI says so.
    let token_file = work.path().join("admin-token");
    let out = Command::new(env!("CARGO_BIN_EXE_lasti"))
        .args(["--admin-token-file", token_file.to_str().unwrap()])
        .args(["purge", "app:v1", "--json", "--admin", &lasti.admin_url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["upstream"], "docker.io");
    assert_eq!(answer["repository"], "library/app");
    assert_eq!(strings(&answer["tags"]), ["v1"]);
    assert_eq!(
        strings(&answer["manifests"]),
        std::slice::from_ref(&app.manifest_digest)
    );
    let mut only_app = vec![app.config_digest.clone(), app.layer_digests[1].clone()];
    only_app.sort();
    assert_eq!(strings(&answer["blobs"]), only_app);
    assert_eq!(answer["kept_blobs"], 1, "the base layer `other` uses");
    let bytes = (app.config_bytes.len() + app.manifest_bytes.len()) as u64 + app.layer_sizes[1];
    assert_eq!(answer["bytes"], bytes);
    for digest in only_app.iter().chain([&app.manifest_digest]) {
        assert!(!blob_file(&data, digest).exists(), "{digest} removed");
    }
    assert!(blob_file(&data, &app.layer_digests[0]).exists());
    let listed = get(&format!("{}/admin/cache", lasti.admin_url()), &[]).await;
    let listed: Value = serde_json::from_slice(&listed.body).unwrap();
    let repos: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["repository"].as_str().unwrap())
        .collect();
    assert!(!repos.contains(&"library/app"), "{repos:?}");
    assert!(repos.contains(&"library/other"), "{repos:?}");
    skopeo::pull_and_check(&lasti.host(), "app", &app, &pulled("app-3"), false).await;
    for digest in &only_app {
        assert_eq!(registry.settled_blob_gets(digest, 2), 2, "{digest} again");
    }
    assert_eq!(registry.blob_gets(&app.layer_digests[0]), 1, "shared, kept");
    skopeo::pull_and_check(&lasti.host(), "other", &other, &pulled("other-2"), false).await;
    for digest in other.blob_digests() {
        assert_eq!(registry.blob_gets(&digest), 1, "{digest}: other untouched");
    }

    // The manifests of an index: the index and its platform manifests go,
    // by digest as by tag; the blobs stay.
    let body = format!(
        r#"{{"image": "multi@{}", "scope": "manifest"}}"#,
        index.index_digest
    );
    let (status, answer) = purge(&lasti, &bearer, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(strings(&answer["tags"]), ["v1"]);
    let mut manifests: Vec<String> = index
        .images
        .iter()
        .map(|i| i.manifest_digest.clone())
        .chain([index.index_digest.clone()])
        .collect();
    manifests.sort();
    assert_eq!(strings(&answer["manifests"]), manifests);
    assert_eq!(strings(&answer["blobs"]), Vec::<String>::new());
    for image in &index.images {
        assert!(!blob_file(&data, &image.manifest_digest).exists());
        for digest in image.blob_digests() {
            assert!(blob_file(&data, &digest).exists(), "{digest} kept");
        }
    }
    skopeo::pull_to_dir(&multi, &pulled("multi-2"), true)
        .await
        .unwrap();
    for image in &index.images {
        assert_eq!(registry.manifest_gets(&image.manifest_digest), 2);
        for digest in image.blob_digests() {
            assert_eq!(registry.blob_gets(&digest), 1, "{digest} not fetched again");
        }
    }

    // What is not cached, or not a purge, is said so; nothing without the token.
    let missing = purge(&lasti, &bearer, r#"{"image": "missing:v1"}"#).await;
    assert_eq!(missing.0, 404, "{}", missing.1);
    assert!(missing.1["error"].as_str().unwrap().contains("missing:v1"));
    let by_digest_tag = format!(
        r#"{{"image": "app@{}", "scope": "tag"}}"#,
        app.manifest_digest
    );
    for bad in [
        &by_digest_tag,
        r#"{"image": "app:v1", "scope": "all"}"#,
        "{}",
    ] {
        assert_eq!(purge(&lasti, &bearer, bad).await.0, 400, "{bad}");
    }
    let wrong = bearer.replace("admin-", "admix-");
    let refused = purge(&lasti, &wrong, r#"{"image": "other:v1"}"#).await;
    assert_eq!(refused.0, 401);
    assert!(blob_file(&data, &other.manifest_digest).exists());
}

/// A client in the middle of a purged blob reads it to its end, whole;
/// the next request is a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_purged_blob_gets_it_whole() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(53, &[4 * KIB, 48 * 1024 * KIB]);
    let (layout, image) = skopeo::push_image(&registry.host(), work.path(), "big", &spec).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    let bearer = admin_token(&mut cfg, work.path());
    let lasti = Lasti::start_with(cfg, None).await;
    skopeo::pull_and_check(
        &lasti.host(),
        "big",
        &image,
        &work.path().join("one"),
        false,
    )
    .await;
    let big = image.layer_digests[1].clone();
    let file = blob_file(lasti.data_dir(), &big);
    assert!(file.exists());

    // A slow reader: the request, the headers and a first part.
    let mut stream = tokio::net::TcpStream::connect(lasti.addr).await.unwrap();
    let request = format!(
        "GET /v2/library/big/blobs/{big} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        lasti.host()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    while received.len() < 256 * KIB {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the answer broke off");
        received.extend_from_slice(&buf[..n]);
    }

    let (status, answer) = purge(&lasti, &bearer, r#"{"image": "big:v1"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert!(strings(&answer["blobs"]).contains(&big));
    assert!(!file.exists(), "unlinked at once");

    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.read_to_end(&mut received).await.unwrap();
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&received[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &received[split + 4..];
    assert_eq!(body.len() as u64, image.layer_sizes[1], "whole");
    assert_eq!(sha256_digest(body), big, "the right bytes");
    assert_eq!(
        std::fs::read(layout.blob_path(&big)).unwrap().len(),
        body.len()
    );

    // The next client is a miss, and fetches it again.
    let url = format!("{}/v2/library/big/blobs/{big}", lasti.url());
    let again = get(&url, &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(sha256_digest(&again.body), big);
    assert_eq!(registry.settled_blob_gets(&big, 2), 2);
}

/// Waits (up to 30 s) until the object at `key` is there (or gone).
async fn in_bucket(garage: &Garage, key: &str, there: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (garage.status("HEAD", key, None) == 200) != there {
        assert!(std::time::Instant::now() < deadline, "{key} there: {there}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A purge on one replica goes to the others and the bucket they share:
/// the next pull through any of them fetches the image again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_replica_reaches_the_others_and_the_bucket() {
    let registry = Registry::start();
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(54, &[6 * KIB, 90 * KIB]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "shared", &spec).await;
    let members: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut tokens = Vec::new();
    let mut replicas = Vec::new();
    for (i, me) in members.iter().enumerate() {
        let mut cfg = config(&[("docker.io", &registry.url())]);
        garage.configure(&mut cfg);
        cfg.cluster.listen = Some(me.parse().unwrap());
        cfg.cluster.advertise = Some(me.clone());
        cfg.cluster.peers = members.clone();
        cfg.cluster.secret = Some(Secret::new("purge-test-cluster".into()));
        let dir = work.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        tokens.push(admin_token(&mut cfg, &dir));
        replicas.push(Lasti::start_with(cfg, None).await);
    }
    for (i, lasti) in replicas.iter().enumerate() {
        let out = work.path().join(format!("pulled-{i}"));
        skopeo::pull_and_check(&lasti.host(), "shared", &image, &out, false).await;
    }
    let manifest_key = |d: &str| format!("manifests/sha256/{}", d.trim_start_matches("sha256:"));
    let tag_key = "tags/docker.io/library/shared/_tags/v1";
    let mut keys: Vec<String> = image.blob_digests().iter().map(|d| blob_key(d)).collect();
    keys.push(manifest_key(&image.manifest_digest));
    keys.push(tag_key.to_string());
    for key in &keys {
        in_bucket(&garage, key, true).await;
    }

    let (status, answer) = purge(&replicas[0], &tokens[0], r#"{"image": "shared:v1"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bucket"]["removed"], keys.len(), "{answer:#}");
    assert_eq!(answer["bucket"]["failed"], 0);
    let other = &answer["replicas"][0];
    assert_eq!(other["member"], members[1].as_str(), "{answer:#}");
    assert_eq!(
        strings(&other["purged"]["manifests"]),
        std::slice::from_ref(&image.manifest_digest)
    );
    assert_eq!(strings(&other["purged"]["tags"]), ["v1"]);
    for key in &keys {
        assert_ne!(garage.status("HEAD", key, None), 200, "{key} removed");
    }
    for lasti in &replicas {
        for digest in image.blob_digests() {
            assert!(!blob_file(lasti.data_dir(), &digest).exists(), "{digest}");
        }
    }
    let out = work.path().join("pulled-again");
    skopeo::pull_and_check(&replicas[1].host(), "shared", &image, &out, false).await;
    for digest in image.blob_digests() {
        assert_eq!(registry.settled_blob_gets(&digest, 2), 2, "{digest} again");
    }
}
