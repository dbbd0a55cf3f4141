//! The registry API lasti offers, checked against the real distribution
//! registry as upstream: error bodies, Accept negotiation, ranges, routing,
//! tag lifetimes, and the traps other proxies fall into.

mod common;

use std::time::Duration;

use ::http::Method;
use common::http::{self, Reply};
use common::lasti::{config, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use tempfile::TempDir;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

async fn push(
    registry: &Registry,
    work: &TempDir,
    repo_tag: &str,
    seed: u64,
    sizes: &[usize],
) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, sizes);
    let dir = work.path().join(format!("layout-{seed}"));
    let (layout, image) = Layout::single(&dir, &spec, "t");
    let dest = format!("{}/{repo_tag}", registry.host());
    skopeo::push_layout(&layout.dir, &layout.tag, &dest, false)
        .await
        .expect("push");
    image
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "status; body {:?}",
        reply.body
    );
    assert_eq!(reply.error_code(), code, "code; body {:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_specs_json_errors() {
    let registry = Registry::start();
    let lasti = Lasti::start(&registry.url()).await;
    let base = lasti.url();
    let digest0 = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(Method, String, u16, &str)> = vec![
        (
            Method::GET,
            "/v2/Upper/manifests/v1".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/../../etc/manifests/passwd".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/%2e%2e/%2e%2e/manifests/x".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:%2e%2e".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/a/blobs/md5:{}", "0".repeat(32)),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/manifests/sha256:XYZ".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/library/none/manifests/{digest0}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/library/none/manifests/v1".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::GET,
            format!("/v2/library/none/blobs/{digest0}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            Method::POST,
            "/v2/library/a/blobs/uploads/".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::PUT,
            "/v2/library/a/manifests/v1".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::DELETE,
            format!("/v2/library/a/manifests/{digest0}"),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::PATCH,
            "/v2/library/a/blobs/uploads/x".into(),
            405,
            "UNSUPPORTED",
        ),
        (Method::GET, "/v2/_catalog".into(), 405, "UNSUPPORTED"),
        (
            Method::GET,
            "/v2/quay.io/org/app/manifests/v1".into(),
            400,
            "NAME_INVALID",
        ),
    ];
    for (method, path, status, code) in cases {
        let reply = http::request(method.clone(), &format!("{base}{path}"), &[]).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path}: {:?}",
            reply.body
        );
        assert_eq!(reply.error_code(), code, "{method} {path}");
        assert_eq!(
            reply.header("docker-distribution-api-version"),
            "registry/2.0"
        );
    }
    let version = http::get(&format!("{base}/v2/"), &[]).await;
    assert_eq!(version.status, 200);
    assert_eq!(
        version.header("docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_manifest_is_served_only_to_clients_that_accept_its_type() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "library/acc:v1", 30, &[1024]).await;
    let lasti = Lasti::start(&registry.url()).await;
    let url = format!("{}/v2/library/acc/manifests/v1", lasti.url());

    let oci = http::get(&url, &[("accept", OCI_MANIFEST)]).await;
    assert_eq!(oci.status, 200);
    assert_eq!(oci.body.as_ref(), image.manifest_bytes.as_slice());
    assert_eq!(oci.header("content-type"), OCI_MANIFEST);
    assert_eq!(oci.header("docker-content-digest"), image.manifest_digest);
    assert_eq!(oci.header("etag"), format!("\"{}\"", image.manifest_digest));

    // A Docker-only client is not handed an OCI manifest, nor a conversion.
    let docker_only = http::get(&url, &[("accept", DOCKER_MANIFEST)]).await;
    assert_error(&docker_only, 404, "MANIFEST_UNKNOWN");
    let by_digest = format!(
        "{}/v2/library/acc/manifests/{}",
        lasti.url(),
        image.manifest_digest
    );
    assert_error(
        &http::get(&by_digest, &[("accept", DOCKER_MANIFEST)]).await,
        404,
        "MANIFEST_UNKNOWN",
    );

    for accept in [None, Some("*/*"), Some("application/*")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let reply = http::get(&by_digest, &headers).await;
        assert_eq!(reply.status, 200, "accept {accept:?}");
        assert_eq!(reply.body.as_ref(), image.manifest_bytes.as_slice());
    }

    // The same manifest asked for as a blob keeps its manifest type.
    let as_blob = format!(
        "{}/v2/library/acc/blobs/{}",
        lasti.url(),
        image.manifest_digest
    );
    let reply = http::get(&as_blob, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), OCI_MANIFEST);
    assert_eq!(reply.body.as_ref(), image.manifest_bytes.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_on_misses_and_hits() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "library/rng:v1", 31, &[3 * 1024 * 1024]).await;
    let layer = &image.layer_digests[0];
    let local = work
        .path()
        .join(format!("layout-31/blobs/sha256/{}", &layer[7..]));
    let bytes = std::fs::read(local).unwrap();
    let size = bytes.len();
    let lasti = Lasti::start(&registry.url()).await;
    let url = format!("{}/v2/library/rng/blobs/{layer}", lasti.url());

    // A miss: the range comes from the fill, exactly those bytes.
    let miss = http::get(&url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(miss.status, 206);
    assert_eq!(
        miss.header("content-range"),
        format!("bytes 1000-1999/{size}")
    );
    assert_eq!(miss.body.as_ref(), &bytes[1000..2000]);

    // Wait for the fill to finish, then hit.
    let whole = http::get(&url, &[]).await;
    assert_eq!(whole.body.len(), size);
    let hit = http::get(&url, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body.as_ref(), bytes.as_slice());
    assert_eq!(hit.header("content-type"), "application/octet-stream");
    assert_eq!(hit.header("content-length"), size.to_string());
    assert_eq!(hit.header("docker-content-digest"), layer.as_str());
    assert_eq!(hit.header("etag"), format!("\"{layer}\""));
    assert_eq!(hit.header("accept-ranges"), "bytes");
    assert_eq!(
        hit.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    let cases = [
        ("bytes=0-0", 0, 1),
        ("bytes=-100", size - 100, size),
        ("bytes=2000000-", 2_000_000, size),
        ("bytes=10-99999999", 10, size),
    ];
    for (range, start, end) in cases {
        let reply = http::get(&url, &[("range", range)]).await;
        assert_eq!(reply.status, 206, "{range}");
        assert_eq!(reply.body.as_ref(), &bytes[start..end], "{range}");
        assert_eq!(reply.header("content-length"), (end - start).to_string());
    }
    let unsatisfiable = http::get(&url, &[("range", &format!("bytes={size}-"))]).await;
    // The blob exists: the error names the range, never BLOB_UNKNOWN.
    assert_error(&unsatisfiable, 416, "UNSUPPORTED");
    let message = String::from_utf8_lossy(&unsatisfiable.body).to_string();
    assert!(
        message.contains(&format!("range not satisfiable: the blob has {size} bytes")),
        "{message}"
    );
    assert_eq!(
        unsatisfiable.header("content-range"),
        format!("bytes */{size}")
    );
    for bad in ["bytes=5-1", "bytes=0-1,4-5", "items=0-1", "bytes=x-"] {
        assert_error(
            &http::get(&url, &[("range", bad)]).await,
            416,
            "UNSUPPORTED",
        );
    }
    assert_eq!(
        registry.wait_for_requests("GET", &format!("/blobs/{layer}"), 1),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_keeps_its_first_digest_until_the_ttl_then_revalidates_with_head() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let first = push(&registry, &work, "library/mv:v1", 40, &[512]).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.upstreams[0].tag_ttl = Duration::from_secs(2);
    let lasti = Lasti::start_with(cfg, None).await;
    let tag_url = format!("{}/v2/library/mv/manifests/v1", lasti.url());
    let accept = [("accept", OCI_MANIFEST)];

    let head = http::head(&tag_url, &accept).await;
    assert_eq!(head.header("docker-content-digest"), first.manifest_digest);
    let second = push(&registry, &work, "library/mv:v1", 41, &[512]).await;
    assert_ne!(second.manifest_digest, first.manifest_digest);

    // Within the TTL the client keeps the digest it was first given.
    let got = http::get(&tag_url, &accept).await;
    assert_eq!(got.header("docker-content-digest"), first.manifest_digest);
    assert_eq!(got.body.as_ref(), first.manifest_bytes.as_slice());
    let old = format!(
        "{}/v2/library/mv/manifests/{}",
        lasti.url(),
        first.manifest_digest
    );
    assert_eq!(http::get(&old, &accept).await.status, 200);

    // After it, a HEAD upstream notices the move and the new manifest is served.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let heads_before = registry.count_requests("HEAD", "/manifests/v1");
    let got = http::get(&tag_url, &accept).await;
    assert_eq!(got.header("docker-content-digest"), second.manifest_digest);
    assert_eq!(got.body.as_ref(), second.manifest_bytes.as_slice());
    assert!(registry.wait_for_requests("HEAD", "/manifests/v1", heads_before + 1) > heads_before);

    // An unchanged tag past its TTL costs a HEAD, not a GET.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gets_before = registry.count_requests("GET", "/manifests/v1");
    let heads_before = registry.count_requests("HEAD", "/manifests/v1");
    let got = http::get(&tag_url, &accept).await;
    assert_eq!(got.header("docker-content-digest"), second.manifest_digest);
    assert!(registry.wait_for_requests("HEAD", "/manifests/v1", heads_before + 1) > heads_before);
    assert_eq!(registry.count_requests("GET", "/manifests/v1"), gets_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_ns_and_by_path_prefix() {
    let hub = Registry::start();
    let other = Registry::start();
    let work = TempDir::new().unwrap();
    let on_hub = push(&hub, &work, "library/app:v1", 50, &[256]).await;
    let on_other = push(&other, &work, "org/app:v1", 51, &[256]).await;
    let cfg = config(&[("docker.io", &hub.url()), ("reg.example", &other.url())]);
    let lasti = Lasti::start_with(cfg, None).await;
    let accept = [("accept", OCI_MANIFEST)];
    let digest_of = |r: &Reply| r.header("docker-content-digest").to_string();

    let default = http::get(
        &format!("{}/v2/library/app/manifests/v1", lasti.url()),
        &accept,
    )
    .await;
    assert_eq!(digest_of(&default), on_hub.manifest_digest);
    let prefixed = http::get(
        &format!("{}/v2/reg.example/org/app/manifests/v1", lasti.url()),
        &accept,
    )
    .await;
    assert_eq!(digest_of(&prefixed), on_other.manifest_digest);
    let ns = http::get(
        &format!("{}/v2/org/app/manifests/v1?ns=reg.example", lasti.url()),
        &accept,
    )
    .await;
    assert_eq!(digest_of(&ns), on_other.manifest_digest);
    let ns_hub = http::get(
        &format!("{}/v2/library/app/manifests/v1?ns=docker.io", lasti.url()),
        &accept,
    )
    .await;
    assert_eq!(digest_of(&ns_hub), on_hub.manifest_digest);
    let unknown = http::get(
        &format!("{}/v2/org/app/manifests/v1?ns=nowhere.io", lasti.url()),
        &accept,
    )
    .await;
    assert_error(&unknown, 400, "NAME_INVALID");

    // The tag list passes through with its pagination.
    let tags = http::get(
        &format!("{}/v2/reg.example/org/app/tags/list?n=1", lasti.url()),
        &[],
    )
    .await;
    assert_eq!(tags.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(list["tags"], serde_json::json!(["v1"]));
    let missing = http::get(&format!("{}/v2/library/none/tags/list", lasti.url()), &[]).await;
    assert_eq!(missing.status, 404);
}
