//! Manifest negotiation: lasti asks the upstream for every modern manifest
//! type whatever the client accepts, keeps the upstream's exact bytes, and
//! matches the client's `Accept` itself. Against the real distribution
//! registry, which converts a Docker schema 2 image to signed schema 1 for a
//! client that does not accept schema 2, and against a fake upstream that
//! only has schema 1, which lasti refuses.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::http::{self, Reply};
use common::lasti::Lasti;
use common::oci_layout::{sha256_digest, ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// A manifest as the upstream holds it.
struct Stored {
    bytes: Vec<u8>,
    digest: String,
}

/// Pushes a one-layer image as Docker schema 2 (`library/<name>:v1`) and
/// returns it as the registry serves it to a client that accepts schema 2.
async fn push_schema2(registry: &Registry, work: &TempDir, name: &str, seed: u64) -> Stored {
    let spec = ImageSpec::linux_amd64(seed, &[2048]);
    let (layout, _) = Layout::single(&work.path().join(name), &spec, "v1");
    let args = [
        "copy",
        "--quiet",
        "--retry-times",
        "0",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &layout.skopeo_ref(),
        &format!("docker://{}/library/{name}:v1", registry.host()),
    ]
    .map(String::from);
    skopeo::run(&args).await.expect("push as schema 2");
    let url = format!("{}/v2/library/{name}/manifests/v1", registry.url());
    let direct = http::get(&url, &[("accept", DOCKER_MANIFEST)]).await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.header("content-type"), DOCKER_MANIFEST);
    let digest = direct.header("docker-content-digest").to_string();
    assert_eq!(sha256_digest(&direct.body), digest);
    // The trap: the same tag asked for as OCI only comes back converted.
    let converted = http::get(&url, &[("accept", OCI_MANIFEST)]).await;
    assert_eq!(converted.header("content-type"), SCHEMA1_SIGNED);
    Stored {
        bytes: direct.body.to_vec(),
        digest,
    }
}

fn accept(value: Option<&str>) -> Vec<(&str, &str)> {
    value.map(|v| ("accept", v)).into_iter().collect()
}

/// A 404 `MANIFEST_UNKNOWN` whose message names the stored type (a `HEAD`
/// answer has the status only).
fn assert_unknown_as(reply: &Reply, stored_type: &str) {
    assert_eq!(reply.status, 404, "body {:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    if reply.body.is_empty() {
        return;
    }
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains(stored_type), "{message}");
}

fn assert_serves(reply: &Reply, stored: &Stored, head: bool, what: &str) {
    assert_eq!(reply.status, 200, "{what}: body {:?}", reply.body);
    assert_eq!(
        reply.header("docker-content-digest"),
        stored.digest,
        "{what}"
    );
    assert_eq!(reply.header("content-type"), DOCKER_MANIFEST, "{what}");
    assert_eq!(
        reply.header("content-length"),
        stored.bytes.len().to_string(),
        "{what}"
    );
    if !head {
        assert_eq!(reply.body.as_ref(), stored.bytes.as_slice(), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_only_client_of_a_schema2_image_gets_manifest_unknown_and_no_conversion() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let stored = push_schema2(&registry, &work, "dock", 40).await;
    let lasti = Lasti::start(&registry.url()).await;
    let tag = format!("{}/v2/library/dock/manifests/v1", lasti.url());
    let by_digest = format!(
        "{}/v2/library/dock/manifests/{}",
        lasti.url(),
        stored.digest
    );
    let oci = accept(Some(OCI_MANIFEST));

    // HEAD first: on a cold tag it asks the upstream, which must not
    // convert, and what it records must be the schema 2 answer.
    assert_unknown_as(&http::head(&tag, &oci).await, DOCKER_MANIFEST);
    assert_unknown_as(&http::get(&tag, &oci).await, DOCKER_MANIFEST);
    assert_unknown_as(&http::get(&by_digest, &oci).await, DOCKER_MANIFEST);

    let oci_any = accept(Some(
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
    ));
    assert_unknown_as(&http::head(&by_digest, &oci_any).await, DOCKER_MANIFEST);

    // The tag record is the schema 2 one, for every client that can take it.
    for value in [
        Some(DOCKER_MANIFEST),
        Some("application/vnd.oci.image.manifest.v1+json;q=0.5, application/vnd.docker.distribution.manifest.v2+json"),
        None,
        Some("*/*"),
        Some("application/*"),
    ] {
        let headers = accept(value);
        assert_serves(&http::head(&tag, &headers).await, &stored, true, &format!("HEAD {value:?}"));
        assert_serves(&http::get(&tag, &headers).await, &stored, false, &format!("GET {value:?}"));
        assert_serves(&http::get(&by_digest, &headers).await, &stored, false, &format!("GET by digest {value:?}"));
    }
}

/// No `Accept`, or only wildcards, is no preference (RFC 9110): such a
/// client gets what the upstream holds, as from a registry that never converts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_type_preference_gets_the_schema2_bytes() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let stored = push_schema2(&registry, &work, "plain", 41).await;
    let lasti = Lasti::start(&registry.url()).await;
    let tag = format!("{}/v2/library/plain/manifests/v1", lasti.url());
    let any = accept(Some("*/*"));

    assert_serves(
        &http::head(&tag, &any).await,
        &stored,
        true,
        "cold HEAD, */*",
    );
    assert_serves(&http::get(&tag, &any).await, &stored, false, "GET, */*");
    assert_serves(
        &http::head(&tag, &[]).await,
        &stored,
        true,
        "HEAD, no Accept",
    );
    assert_serves(
        &http::get(&tag, &[]).await,
        &stored,
        false,
        "GET, no Accept",
    );

    let other = push_schema2(&registry, &work, "plain2", 43).await;
    let cold = format!("{}/v2/library/plain2/manifests/v1", lasti.url());
    assert_serves(
        &http::get(&cold, &any).await,
        &other,
        false,
        "cold GET, */*",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_different_accepts_share_one_upstream_fetch() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let stored = Arc::new(push_schema2(&registry, &work, "crowd", 42).await);
    let gets_before = registry.wait_for_requests("GET", "/manifests/v1", 2);
    let lasti = Lasti::start(&registry.url()).await;
    let tag = format!("{}/v2/library/crowd/manifests/v1", lasti.url());

    let accepts = [
        Some(DOCKER_MANIFEST),
        Some(OCI_MANIFEST),
        None,
        Some("*/*"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"),
        Some("application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"),
    ];
    let mut clients = Vec::new();
    for round in 0..3 {
        for value in accepts {
            let (tag, stored) = (tag.clone(), Arc::clone(&stored));
            clients.push(tokio::spawn(async move {
                let reply = http::get(&tag, &accept(value)).await;
                let what = format!("round {round}, Accept {value:?}");
                if value == Some(OCI_MANIFEST) {
                    assert_unknown_as(&reply, DOCKER_MANIFEST);
                } else {
                    assert_serves(&reply, &stored, false, &what);
                }
            }));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    registry.wait_for_requests("GET", "/manifests/v1", gets_before + 1);
    // Let a second upstream request, if any was made, reach the access log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        registry.count_requests("GET", "/manifests/v1") - gets_before,
        1,
        "upstream manifest GETs"
    );
    assert_eq!(
        registry.count_requests("GET", &format!("/manifests/{}", stored.digest)),
        0
    );
}

/// An older lasti recorded a tag from a `HEAD` the upstream answered with a
/// conversion: that record is ignored, not served, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema1_tag_record_left_by_an_older_version_is_not_served() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let stored = push_schema2(&registry, &work, "legacy", 44).await;
    let url = format!("{}/v2/library/legacy/manifests/v1", registry.url());
    let converted = http::head(&url, &accept(Some(OCI_MANIFEST))).await;
    let schema1_digest = converted.header("docker-content-digest");
    assert_ne!(schema1_digest, stored.digest);

    let data = TempDir::new().unwrap();
    let index = lasti::cache::index::Index::open(&data.path().join("index.redb")).unwrap();
    let record = lasti::cache::index::TagRecord {
        digest: lasti::oci::Digest::parse(schema1_digest).unwrap(),
        media_type: SCHEMA1_SIGNED.to_string(),
        size: converted.header("content-length").parse().unwrap(),
        checked_at: lasti::cache::index::unix_now(),
    };
    let key = lasti::cache::index::tag_key("docker.io", "library/legacy", "v1");
    index.put_tag(&key, &record).unwrap();
    drop(index);

    let config = common::lasti::config(&[("docker.io", &registry.url())]);
    let lasti = Lasti::start_with(config, Some(data)).await;
    let tag = format!("{}/v2/library/legacy/manifests/v1", lasti.url());
    assert_serves(
        &http::head(&tag, &[]).await,
        &stored,
        true,
        "HEAD, no Accept",
    );
    assert_serves(
        &http::get(&tag, &[]).await,
        &stored,
        false,
        "GET, no Accept",
    );
    assert_serves(&http::head(&tag, &[]).await, &stored, true, "HEAD again");
}

/// One request as the schema 1 upstream saw it.
#[derive(Clone, Debug)]
struct SeenManifest {
    method: hyper::Method,
    accept: String,
}

/// What the schema 1 upstream serves for `v1` and by digest.
struct Served {
    media_type: String,
    bytes: Bytes,
    digest: String,
}

#[derive(Default)]
struct Schema1State {
    served: Mutex<Option<Served>>,
    seen: Mutex<Vec<SeenManifest>>,
}

/// A registry holding one tag, `v1`, in whatever form the test sets; it
/// answers `/v2/` and that manifest (by tag or digest), 404 to the rest.
struct OldUpstream {
    addr: SocketAddr,
    state: Arc<Schema1State>,
    task: tokio::task::JoinHandle<()>,
}

impl OldUpstream {
    async fn start() -> OldUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Schema1State::default());
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(old_upstream_reply(&state, &request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OldUpstream { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, media_type: &str, bytes: &[u8], digest: &str) {
        *self.state.served.lock().unwrap() = Some(Served {
            media_type: media_type.to_string(),
            bytes: Bytes::copy_from_slice(bytes),
            digest: digest.to_string(),
        });
    }

    fn seen(&self) -> Vec<SeenManifest> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for OldUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn old_upstream_reply<B>(
    state: &Schema1State,
    request: &hyper::Request<B>,
) -> hyper::Response<Full<Bytes>> {
    let path = request.uri().path();
    let json = |status: u16, body: &'static str| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    if path == "/v2/" {
        return json(200, "{}");
    }
    let Some((_, reference)) = path.rsplit_once("/manifests/") else {
        return json(
            404,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}"#,
        );
    };
    let accept = request
        .headers()
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    state.seen.lock().unwrap().push(SeenManifest {
        method: request.method().clone(),
        accept,
    });
    let served = state.served.lock().unwrap();
    match served.as_ref() {
        Some(s) if reference == "v1" || reference == s.digest => hyper::Response::builder()
            .header("content-type", s.media_type.as_str())
            .header("docker-content-digest", s.digest.as_str())
            .body(Full::new(s.bytes.clone()))
            .unwrap(),
        _ => json(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        ),
    }
}

/// A schema 1 manifest; `signed` adds the JWS signature a registry adds.
fn schema1_manifest(signed: bool) -> Vec<u8> {
    let mut manifest = serde_json::json!({
        "schemaVersion": 1,
        "name": "library/old",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": format!("sha256:{}", "a".repeat(64))}],
        "history": [{"v1Compatibility": "{\"id\":\"0\"}"}],
    });
    if signed {
        manifest["signatures"] = serde_json::json!([{
            "header": {"jwk": {"crv": "P-256", "kty": "EC", "x": "AA", "y": "AA"}, "alg": "ES256"},
            "signature": "AAAA",
            "protected": "AAAA",
        }]);
    }
    serde_json::to_vec_pretty(&manifest).unwrap()
}

fn assert_schema1_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 502, "{what}: body {:?}", reply.body);
    if !reply.body.is_empty() {
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let message = body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(message.contains("schema1"), "{what}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema1_upstream_is_refused_and_its_digest_never_recorded() {
    let upstream = OldUpstream::start().await;
    let lasti = Lasti::start(&upstream.url()).await;
    let tag = format!("{}/v2/library/old/manifests/v1", lasti.url());

    // As a registry signs it: the digest covers the JWS payload only.
    let signed = schema1_manifest(true);
    let payload_digest = sha256_digest(&schema1_manifest(false));
    upstream.serve(SCHEMA1_SIGNED, &signed, &payload_digest);
    let oci = accept(Some(OCI_MANIFEST));
    assert_schema1_refused(&http::head(&tag, &oci).await, "HEAD, signed");
    assert_schema1_refused(&http::head(&tag, &[]).await, "HEAD, no Accept, signed");
    assert_schema1_refused(&http::get(&tag, &[]).await, "GET, signed");
    let by_digest = format!("{}/v2/library/old/manifests/{payload_digest}", lasti.url());
    assert_schema1_refused(&http::get(&by_digest, &[]).await, "GET by digest, signed");

    // Unsigned, with an honest digest: still refused.
    let unsigned = schema1_manifest(false);
    upstream.serve(SCHEMA1, &unsigned, &sha256_digest(&unsigned));
    assert_schema1_refused(&http::get(&tag, &[]).await, "GET, unsigned");
    assert_schema1_refused(&http::head(&tag, &[]).await, "HEAD, unsigned");

    // Re-pushed as schema 2: nothing of the schema 1 answers was kept.
    let modern = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":2},"layers":[]}"#;
    let stored = Stored {
        bytes: modern.to_vec(),
        digest: sha256_digest(modern),
    };
    upstream.serve(DOCKER_MANIFEST, modern, &stored.digest);
    assert_serves(
        &http::head(&tag, &[]).await,
        &stored,
        true,
        "HEAD after re-push",
    );
    assert_serves(
        &http::get(&tag, &[]).await,
        &stored,
        false,
        "GET after re-push",
    );

    // Whatever each client accepted, the upstream was asked for every modern type.
    let seen = upstream.seen();
    assert!(!seen.is_empty());
    for request in seen {
        for wanted in [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST] {
            assert!(
                request.accept.contains(wanted),
                "{} asked with Accept {:?}",
                request.method,
                request.accept
            );
        }
        let schema1 = "distribution.manifest.v1";
        assert!(!request.accept.contains(schema1), "{:?}", request.accept);
    }
}
