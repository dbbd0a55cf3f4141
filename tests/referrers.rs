//! The referrers API (OCI distribution 1.1) through lasti: lists passed on
//! whole, filtered by artifact type, kept in memory for the tag TTL and
//! served stale when the upstream fails; a 404, the spec's signal to fall
//! back to the tag schema, when no list can be had. The fake upstream plays
//! a registry with the API (distribution 2.8 has none); the real registry
//! shows the fallback.

mod common;

use std::time::Duration;

use common::fake_upstream::{image_manifest, FakeUpstream, Fault};
use common::http::get;
use common::lasti::{config, Lasti};
use common::oci_layout::{ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use serde_json::{json, Value};
use tempfile::TempDir;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";

fn descriptor(digit: char, artifact_type: &str) -> Value {
    json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", digit.to_string().repeat(64)),
        "size": 512,
        "artifactType": artifact_type,
    })
}

/// A fake upstream holding one image whose list names a signature and an SBOM.
fn upstream_with_referrers(fake: &FakeUpstream) -> (String, Value) {
    let subject = fake.put_manifest("v1", image_manifest(b"{}", &[b"layer"]));
    let list = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [descriptor('a', SIGNATURE), descriptor('b', SBOM)],
    });
    fake.put_referrers(&subject, list.clone());
    (subject, list)
}

async fn lasti_with_ttl(fake: &FakeUpstream, ttl: Duration) -> Lasti {
    let mut cfg = config(&[("docker.io", &fake.url())]);
    cfg.upstreams[0].tag_ttl = ttl;
    Lasti::start_with(cfg, None).await
}

fn upstream_gets(fake: &FakeUpstream, path: &str) -> usize {
    fake.requests().iter().filter(|s| s.path == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_passed_on_filtered_and_kept_for_the_tag_ttl() {
    let fake = FakeUpstream::start().await;
    let (subject, list) = upstream_with_referrers(&fake);
    let lasti = lasti_with_ttl(&fake, Duration::from_secs(3600)).await;
    let path = format!("/v2/library/app/referrers/{subject}");
    let url = format!("{}{path}", lasti.url());

    let reply = get(&url, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), INDEX);
    assert_eq!(serde_json::from_slice::<Value>(&reply.body).unwrap(), list);
    let again = get(&url, &[]).await;
    assert_eq!(again.body, reply.body);
    assert_eq!(
        upstream_gets(&fake, &path),
        1,
        "the second answer came from memory"
    );

    let filtered = get(
        &format!("{url}?artifactType=application%2Fspdx%2Bjson"),
        &[],
    )
    .await;
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.header("oci-filters-applied"), "artifactType");
    let body: Value = serde_json::from_slice(&filtered.body).unwrap();
    assert_eq!(body["manifests"], json!([descriptor('b', SBOM)]));
    let asked = fake
        .requests()
        .into_iter()
        .rfind(|s| s.path == path)
        .unwrap();
    assert_eq!(
        asked.query.as_deref(),
        Some("artifactType=application%2Fspdx%2Bjson"),
        "the filter went upstream, and nothing else did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_gets_stale_lists_or_the_fallback_404() {
    let fake = FakeUpstream::start().await;
    let (subject, list) = upstream_with_referrers(&fake);
    let other = fake.put_manifest("v2", image_manifest(b"{}", &[b"other"]));
    // Every list is past its TTL at once: each request asks the upstream.
    let lasti = lasti_with_ttl(&fake, Duration::ZERO).await;
    let url = |digest: &str| format!("{}/v2/library/app/referrers/{digest}", lasti.url());
    assert_eq!(get(&url(&subject), &[]).await.status, 200);

    fake.set_down(true);
    let stale = get(&url(&subject), &[]).await;
    assert_eq!(stale.status, 200, "served stale while the upstream is down");
    assert_eq!(serde_json::from_slice::<Value>(&stale.body).unwrap(), list);
    let none = get(&url(&other), &[]).await;
    assert_eq!(
        none.status, 404,
        "nothing cached: clients fall back to tags"
    );
    assert_eq!(none.error_code(), "MANIFEST_UNKNOWN");

    fake.set_down(false);
    assert_eq!(
        get(&url(&other), &[]).await.status,
        404,
        "no list upstream either"
    );
    fake.put_referrers(&other, json!({"schemaVersion": 2, "not": "an index"}));
    let hostile = get(&url(&other), &[]).await;
    assert_eq!(
        hostile.status, 404,
        "a body that is not an index is not passed on"
    );
    assert!(!String::from_utf8_lossy(&hostile.body).contains("\"not\""));

    let bad = get(&url("sha256:xyz"), &[]).await;
    assert_eq!(
        (bad.status.as_u16(), bad.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_upstream_clients_fall_back_to_the_tag_schema() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let (layout, image) = Layout::single(
        &work.path().join("app"),
        &ImageSpec::linux_amd64(600, &[4096]),
        "v1",
    );
    let dest = format!("{}/library/app:v1", registry.host());
    skopeo::push_layout(&layout.dir, "v1", &dest, false)
        .await
        .unwrap();
    // What cosign pushes without the API: an artifact tagged after the subject.
    let schema_tag = image.manifest_digest.replacen(':', "-", 1);
    let (sig_layout, signature) = Layout::single(
        &work.path().join("sig"),
        &ImageSpec::linux_amd64(601, &[2048]),
        &schema_tag,
    );
    let dest = format!("{}/library/app:{schema_tag}", registry.host());
    skopeo::push_layout(&sig_layout.dir, &schema_tag, &dest, false)
        .await
        .unwrap();
    let lasti = Lasti::start(&registry.url()).await;

    let url = format!(
        "{}/v2/library/app/referrers/{}",
        lasti.url(),
        image.manifest_digest
    );
    assert_eq!(
        get(&url, &[]).await.status,
        404,
        "distribution 2.8 has no API"
    );
    let pulled = skopeo::inspect_raw(&format!("{}/library/app:{schema_tag}", lasti.host()))
        .await
        .unwrap();
    assert_eq!(pulled, signature.manifest_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_asks_for_one_list_share_one_upstream_get() {
    let fake = FakeUpstream::start().await;
    let (subject, list) = upstream_with_referrers(&fake);
    let pause = Duration::from_millis(50);
    fake.fault(&subject, Fault::Slow { chunk: 64, pause });
    let lasti = lasti_with_ttl(&fake, Duration::from_secs(3600)).await;
    let path = format!("/v2/library/app/referrers/{subject}");
    let url = format!("{}{path}", lasti.url());

    let asks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    for ask in asks {
        let reply = ask.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(serde_json::from_slice::<Value>(&reply.body).unwrap(), list);
    }
    assert_eq!(upstream_gets(&fake, &path), 1);
}
