//! Proves the interop harness itself: a real distribution registry, OCI
//! layouts built on disk, and skopeo pushing and pulling them unchanged.

mod common;

use std::net::TcpStream;

use common::oci_layout::{ImageSpec, Layout};
use common::registry::{parse_request_line, Registry, RegistryOptions};
use common::skopeo;
use tempfile::TempDir;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Sizes of the single-platform test image's layers.
const LAYER_SIZES: [usize; 3] = [KIB, 300 * KIB, 2 * MIB];

/// Builds the 3-layer test image and pushes it to `registry` as `repo:tag`.
async fn push_single(
    registry: &Registry,
    work: &TempDir,
    repo_tag: &str,
) -> common::oci_layout::BuiltImage {
    let spec = ImageSpec::linux_amd64(1, &LAYER_SIZES);
    let (layout, image) = Layout::single(&work.path().join("layout"), &spec, "v1");
    let dest = format!("{}/{repo_tag}", registry.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &dest, false)
        .await
        .expect("push single-platform layout");
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_image_round_trips_with_identical_digests() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_single(&registry, &work, "library/app:v1").await;
    let src = format!("{}/library/app:v1", registry.host());

    assert_eq!(
        skopeo::inspect_raw(&src).await.unwrap(),
        image.manifest_bytes
    );
    assert_eq!(
        skopeo::inspect_digest(&src).await.unwrap(),
        image.manifest_digest
    );

    let out = work.path().join("pulled");
    skopeo::pull_to_dir(&src, &out, false)
        .await
        .expect("pull to dir");
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    assert_eq!(skopeo::dir_digests(&out), expected);
    for (digest, size) in image.layer_digests.iter().zip(&image.layer_sizes) {
        let hex = digest.strip_prefix("sha256:").unwrap();
        assert_eq!(
            std::fs::metadata(out.join(hex)).unwrap().len(),
            *size,
            "size of {digest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_counts_one_get_per_layer_per_pull() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_single(&registry, &work, "library/count:v1").await;
    for digest in &image.layer_digests {
        assert_eq!(registry.blob_gets(digest), 0, "push must not GET {digest}");
    }

    let src = format!("{}/library/count:v1", registry.host());
    for pull in 1..=2 {
        let out = work.path().join(format!("pull-{pull}"));
        skopeo::pull_to_dir(&src, &out, false)
            .await
            .expect("pull to dir");
        for digest in &image.layer_digests {
            let path = format!("/blobs/{digest}");
            assert_eq!(
                registry.wait_for_requests("GET", &path, pull),
                pull,
                "GETs of {digest}"
            );
            assert_eq!(registry.blob_gets(digest), pull, "GETs of {digest}");
        }
        assert_eq!(
            registry.wait_for_requests("GET", "/manifests/v1", pull),
            pull
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_platform_index_round_trips_byte_for_byte() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let specs = [
        ImageSpec::new(10, &[4 * KIB, 64 * KIB], "linux", "amd64"),
        ImageSpec::new(11, &[8 * KIB], "linux", "arm64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join("layout"), &specs, "multi");
    let repo = format!("{}/library/multi", registry.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &format!("{repo}:multi"), true)
        .await
        .expect("push index with --all");

    assert_eq!(
        skopeo::inspect_raw(&format!("{repo}:multi")).await.unwrap(),
        index.index_bytes
    );
    assert_eq!(
        skopeo::inspect_digest(&format!("{repo}:multi"))
            .await
            .unwrap(),
        index.index_digest
    );
    for image in &index.images {
        let by_digest = format!("{repo}@{}", image.manifest_digest);
        assert_eq!(
            skopeo::inspect_raw(&by_digest).await.unwrap(),
            image.manifest_bytes
        );
    }

    let out = work.path().join("pulled");
    skopeo::pull_to_dir(&format!("{repo}:multi"), &out, true)
        .await
        .expect("pull --all");
    let mut expected = vec![index.index_digest.clone()];
    for image in &index.images {
        expected.push(image.manifest_digest.clone());
        expected.extend(image.blob_digests());
    }
    expected.sort();
    assert_eq!(skopeo::dir_digests(&out), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_demands_basic_auth() {
    let options = RegistryOptions {
        htpasswd: Some(("tester".into(), "s3cret".into())),
        ..Default::default()
    };
    let registry = Registry::start_with(options);
    let status = |basic| common::http_get_status(registry.addr(), "/v2/", basic).unwrap();
    assert_eq!(status(None), 401);
    assert_eq!(status(Some(("tester", "wrong"))), 401);
    assert_eq!(status(Some(("tester", "s3cret"))), 200);

    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(2, &[KIB]);
    let (layout, _) = Layout::single(&work.path().join("layout"), &spec, "v1");
    let dest = format!("{}/library/auth:v1", registry.host());
    let err = skopeo::push_layout(&layout.dir, "v1", &dest, false)
        .await
        .unwrap_err();
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );

    let args: Vec<String> = [
        "copy",
        "--quiet",
        "--retry-times",
        "0",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "tester:s3cret",
    ]
    .map(String::from)
    .into_iter()
    .chain([layout.skopeo_ref(), format!("docker://{dest}")])
    .collect();
    skopeo::run(&args).await.expect("push with credentials");
    assert!(registry.count_requests("PUT", "/manifests/v1") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_registry_kills_it() {
    let registry = Registry::start();
    let addr = registry.addr();
    assert_eq!(common::http_get_status(addr, "/v2/", None).unwrap(), 200);
    drop(registry);
    assert!(
        TcpStream::connect(addr).is_err(),
        "registry on {addr} still accepts connections"
    );
}

#[test]
fn layouts_are_deterministic_and_seed_dependent() {
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(7, &[KIB, 3 * MIB + 5]);
    let (_, first) = Layout::single(&work.path().join("a"), &spec, "t");
    let (layout, second) = Layout::single(&work.path().join("b"), &spec, "t");
    assert_eq!(first, second);
    assert_ne!(first.layer_digests[0], first.layer_digests[1][..]);
    assert_eq!(
        std::fs::metadata(layout.blob_path(&first.layer_digests[1]))
            .unwrap()
            .len(),
        3 * MIB as u64 + 5
    );

    let other = ImageSpec::linux_amd64(8, &[KIB, 3 * MIB + 5]);
    let (_, third) = Layout::single(&work.path().join("c"), &other, "t");
    assert_ne!(first.layer_digests[0], third.layer_digests[0]);
    assert_ne!(first.manifest_digest, third.manifest_digest);
}

#[test]
fn access_log_request_lines_are_parsed() {
    let line = r#"127.0.0.1 - - [29/Nov/2025:05:23:00 +0000] "GET /v2/library/x/blobs/sha256:ab HTTP/1.1" 200 3 "" "skopeo/1.9.3""#;
    assert_eq!(
        parse_request_line(line),
        Some(("GET", "/v2/library/x/blobs/sha256:ab"))
    );
    let app = r#"time="2025-11-29T05:23:00Z" level=warning msg="No HTTP secret provided""#;
    assert_eq!(parse_request_line(app), None);
}
