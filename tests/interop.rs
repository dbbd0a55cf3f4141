//! lasti in front of the real CNCF distribution registry, pulled with skopeo:
//! the same digests as a direct pull, indexes byte for byte, one upstream
//! GET per blob however many clients pull at once, and a cache that
//! survives a restart.

mod common;

use common::http;
use common::lasti::Lasti;
use common::oci_layout::{BuiltImage, BuiltIndex, ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use tempfile::TempDir;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Pushes a three-layer image as `library/<name>:v1` and returns what was built.
async fn push_image(registry: &Registry, work: &TempDir, name: &str, seed: u64) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[KIB, 300 * KIB, 2 * MIB]);
    skopeo::push_image(&registry.host(), work.path(), name, &spec)
        .await
        .1
}

/// Pushes a two-platform index as `library/<name>:multi`.
async fn push_index(registry: &Registry, work: &TempDir, name: &str) -> BuiltIndex {
    let specs = [
        ImageSpec::new(20, &[4 * KIB, 64 * KIB], "linux", "amd64"),
        ImageSpec::new(21, &[8 * KIB, 32 * KIB], "linux", "arm64"),
    ];
    let (layout, index) = Layout::multi(&work.path().join(name), &specs, "multi");
    let dest = format!("{}/library/{name}:multi", registry.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &dest, true)
        .await
        .expect("push index");
    index
}

async fn pull_digests(src: &str, out: &std::path::Path, all: bool) -> Vec<String> {
    skopeo::pull_to_dir(src, out, all)
        .await
        .unwrap_or_else(|e| panic!("pull {src}: {e}"));
    skopeo::dir_digests(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_digest_matches_a_direct_pull() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "app", 1).await;
    let lasti = Lasti::start(&registry.url()).await;

    let direct = pull_digests(
        &format!("{}/library/app:v1", registry.host()),
        &work.path().join("direct"),
        false,
    )
    .await;
    // One-component name: lasti adds `library/` as Docker Hub does.
    let by_tag = pull_digests(
        &format!("{}/app:v1", lasti.host()),
        &work.path().join("tag"),
        false,
    )
    .await;
    assert_eq!(by_tag, direct);
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    assert_eq!(by_tag, expected);

    let by_digest_src = format!("{}/library/app@{}", lasti.host(), image.manifest_digest);
    let by_digest = pull_digests(&by_digest_src, &work.path().join("digest"), false).await;
    assert_eq!(by_digest, direct);
    assert_eq!(
        skopeo::inspect_raw(&by_digest_src).await.unwrap(),
        image.manifest_bytes
    );

    // The second pull came from the cache: still one upstream GET per blob
    // (the direct pull made the other).
    for digest in &image.layer_digests {
        let gets = registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 2);
        assert_eq!(gets, 2, "upstream GETs of {digest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_index_is_served_byte_for_byte_with_every_platform() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let index = push_index(&registry, &work, "multi").await;
    let lasti = Lasti::start(&registry.url()).await;

    let src = format!("{}/library/multi:multi", lasti.host());
    assert_eq!(skopeo::inspect_raw(&src).await.unwrap(), index.index_bytes);
    let pulled = pull_digests(&src, &work.path().join("all"), true).await;
    for image in &index.images {
        for digest in image.blob_digests().iter().chain([&image.manifest_digest]) {
            assert!(pulled.contains(digest), "{digest} missing from {pulled:?}");
        }
    }
    // Resolve with HEAD, then GET the index by digest: the same bytes.
    let tag_url = format!("{}/v2/library/multi/manifests/multi", lasti.url());
    let accept = [("accept", "application/vnd.oci.image.index.v1+json")];
    let head = http::head(&tag_url, &accept).await;
    assert_eq!(head.header("docker-content-digest"), index.index_digest);
    assert_eq!(
        head.header("content-length"),
        index.index_bytes.len().to_string()
    );
    let by_digest = format!(
        "{}/v2/library/multi/manifests/{}",
        lasti.url(),
        index.index_digest
    );
    let got = http::get(&by_digest, &accept).await;
    assert_eq!(got.body.as_ref(), index.index_bytes.as_slice());
    assert_eq!(
        got.header("content-type"),
        "application/vnd.oci.image.index.v1+json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_cold_pulls_cost_one_upstream_get_per_blob() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(7, &[16 * KIB, 3 * MIB, 8 * MIB]);
    let (layout, image) = Layout::single(&work.path().join("burst"), &spec, "v1");
    let dest = format!("{}/library/burst:v1", registry.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &dest, false)
        .await
        .unwrap();
    let lasti = Lasti::start(&registry.url()).await;

    let mut pulls = Vec::new();
    for i in 0..16 {
        let src = format!("{}/library/burst:v1", lasti.host());
        let out = work.path().join(format!("out-{i}"));
        pulls.push(tokio::spawn(async move {
            pull_digests(&src, &out, false).await
        }));
    }
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    for pull in pulls {
        assert_eq!(pull.await.unwrap(), expected);
    }
    for digest in image.blob_digests() {
        let gets = registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 1);
        assert_eq!(gets, 1, "upstream GETs of {digest}");
    }
    assert_eq!(
        registry.wait_for_requests("GET", "/manifests/v1", 1),
        1,
        "upstream manifest GETs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_survives_a_restart_and_serves_without_the_upstream() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "keep", 3).await;
    let lasti = Lasti::start(&registry.url()).await;
    let first = pull_digests(
        &format!("{}/library/keep:v1", lasti.host()),
        &work.path().join("a"),
        false,
    )
    .await;
    let config = common::lasti::config(&[("docker.io", &registry.url())]);
    let data = lasti.stop().await;
    drop(registry);

    let lasti = Lasti::start_with(config, Some(data)).await;
    let src = format!("{}/library/keep@{}", lasti.host(), image.manifest_digest);
    let again = pull_digests(&src, &work.path().join("b"), false).await;
    assert_eq!(again, first);
    // The tag is within its TTL, so it needs no upstream either.
    let by_tag = pull_digests(
        &format!("{}/library/keep:v1", lasti.host()),
        &work.path().join("c"),
        false,
    )
    .await;
    assert_eq!(by_tag, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_an_uncached_manifest_and_blob_answers_from_the_upstream() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "peek", 4).await;
    let lasti = Lasti::start(&registry.url()).await;
    let oci = [("accept", "application/vnd.oci.image.manifest.v1+json")];

    let head = http::head(
        &format!("{}/v2/library/peek/manifests/v1", lasti.url()),
        &oci,
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("docker-content-digest"), image.manifest_digest);
    assert_eq!(
        head.header("content-length"),
        image.manifest_bytes.len().to_string()
    );
    assert_eq!(
        head.header("content-type"),
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(head.body.is_empty());

    let layer = &image.layer_digests[2];
    let head = http::head(
        &format!("{}/v2/library/peek/blobs/{layer}", lasti.url()),
        &[],
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        image.layer_sizes[2].to_string()
    );
    assert_eq!(head.header("docker-content-digest"), layer.as_str());
    assert_eq!(
        registry.blob_gets(layer),
        0,
        "a HEAD must not fetch the blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_trusted_through_its_extra_ca_file() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push_image(&registry, &work, "tls", 5).await;
    let pki = common::tls::TestPki::new();
    let front = common::tls::TlsFront::start(&pki, registry.addr()).await;
    let upstream = format!("https://127.0.0.1:{}", front.addr.port());

    // Without the CA the upstream's certificate is refused.
    let untrusted = Lasti::start(&upstream).await;
    let url = format!("{}/v2/library/tls/manifests/v1", untrusted.url());
    let refused = http::get(&url, &[]).await;
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    assert_eq!(refused.error_code(), "UNAVAILABLE");

    let mut cfg = common::lasti::config(&[("docker.io", &upstream)]);
    cfg.upstreams[0].ca_file = Some(pki.write_ca(work.path()));
    let lasti = Lasti::start_with(cfg, None).await;
    let pulled = pull_digests(
        &format!("{}/library/tls:v1", lasti.host()),
        &work.path().join("tls-out"),
        false,
    )
    .await;
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    assert_eq!(pulled, expected);
}
