//! Failover registries (`urls`): tried in order, a mirror's 404 or 429
//! tries the next, a mirror that keeps failing is skipped by its own
//! breaker, credentials go only to `url`, and metrics name each registry.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::checks::{assert_whole, within};
use common::fake_upstream::{
    blob_path, image_manifest, manifest_path, random_blob, FakeUpstream, Fault, OCI_MANIFEST,
};
use common::http::{get, metric};
use common::lasti::{config, Lasti};
use http::Method;
use lasti::secret::Secret;
use url::Url;

const REPO: &str = "team/app";
const TOKEN: &str = "primary-token";

/// An image on `fake` under `tag`: its manifest and layer, with digests.
fn publish(fake: &FakeUpstream, tag: &str, layer: &Bytes) -> (Bytes, String) {
    let config_blob = random_blob(100);
    fake.put_blob(config_blob.clone());
    fake.put_blob(layer.clone());
    let manifest = image_manifest(&config_blob, &[layer]);
    fake.put_manifest(tag, manifest.clone());
    (manifest, fake.put_blob(layer.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_tried_in_order_and_credentials_reach_only_url() {
    within(async {
        let (mirror, primary) = (FakeUpstream::start().await, FakeUpstream::start().await);
        primary.require_bearer(TOKEN, Some(("alice", "s3cret")));
        let mut cfg = config(&[("docker.io", &primary.url())]);
        let upstream = &mut cfg.upstreams[0];
        upstream.urls = vec![
            Url::parse(&mirror.url()).unwrap(),
            Url::parse(&primary.url()).unwrap(),
        ];
        upstream.username = Some("alice".into());
        upstream.password = Some(Secret::new("s3cret".into()));
        upstream.skip_after_failures = 2;
        upstream.skip_for = Duration::from_secs(60);
        let lasti = Lasti::start_with(cfg, None).await;
        let accept = [("accept", OCI_MANIFEST)];
        let url = |path: String| format!("{}{path}", lasti.url());

        // On both: the mirror serves it, the primary is not asked.
        let both = random_blob(8 * 1024);
        let (manifest, layer) = publish(&mirror, "both", &both);
        publish(&primary, "both", &both);
        let reply = get(&url(manifest_path(REPO, "both")), &accept).await;
        assert_eq!(reply.body, manifest);
        assert_whole(&get(&url(blob_path(REPO, &layer)), &[]).await, &both);
        assert_eq!(primary.count(Method::GET, &blob_path(REPO, &layer)), 0);
        assert_eq!(primary.count(Method::GET, &manifest_path(REPO, "both")), 0);

        // Only on the primary: the mirror's 404 tries the next.
        let only = random_blob(9 * 1024);
        let (manifest, layer) = publish(&primary, "only", &only);
        let reply = get(&url(manifest_path(REPO, "only")), &accept).await;
        assert_eq!(reply.body, manifest);
        assert_whole(&get(&url(blob_path(REPO, &layer)), &[]).await, &only);
        assert_eq!(mirror.count(Method::GET, &blob_path(REPO, &layer)), 1);
        assert_eq!(primary.count(Method::GET, &blob_path(REPO, &layer)), 1);

        // A mirror that rate-limits: the next serves.
        let limited = random_blob(7 * 1024);
        let (_, layer) = publish(&mirror, "limited", &limited);
        publish(&primary, "limited", &limited);
        let fault = Fault::Status {
            code: 429,
            retry_after: Some(30),
            times: 1,
        };
        mirror.fault(&layer, fault);
        assert_whole(&get(&url(blob_path(REPO, &layer)), &[]).await, &limited);
        assert_eq!(primary.count(Method::GET, &blob_path(REPO, &layer)), 1);

        // Credentials went to the primary alone.
        let sent: Vec<_> = mirror
            .requests()
            .into_iter()
            .filter_map(|r| r.authorization)
            .collect();
        assert!(sent.is_empty(), "the mirror got credentials: {sent:?}");
        let primary_gets = primary
            .requests()
            .into_iter()
            .filter(|r| r.method == Method::GET);
        assert!(primary_gets
            .filter(|r| r.path.contains("/blobs/"))
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));

        // Each registry is its own label, and its own breaker: a mirror that
        // is down is skipped after two failures, the primary serves on.
        let admin = lasti.admin_url();
        let mirror_name = format!("docker.io@{}", mirror.url().trim_start_matches("http://"));
        let label = format!("upstream=\"{mirror_name}\"");
        assert!(metric(&admin, "lasti_upstream_requests_total", &[&label]).await >= 4);
        mirror.set_down(true);
        for i in 0..4 {
            let blob = random_blob(1000 + i);
            let (_, layer) = publish(&primary, &format!("down{i}"), &blob);
            assert_whole(&get(&url(blob_path(REPO, &layer)), &[]).await, &blob);
        }
        let reached = mirror
            .requests()
            .iter()
            .filter(|r| r.path.contains("/blobs/"))
            .count();
        let skipped = metric(&admin, "lasti_upstream_skipping", &[&label]).await;
        assert_eq!(skipped, 1, "the mirror is skipped");
        let primary_label = "upstream=\"docker.io\"";
        assert_eq!(
            metric(&admin, "lasti_upstream_skipping", &[primary_label]).await,
            0
        );
        let blob = random_blob(999);
        let (_, layer) = publish(&primary, "later", &blob);
        assert_whole(&get(&url(blob_path(REPO, &layer)), &[]).await, &blob);
        let now = mirror
            .requests()
            .iter()
            .filter(|r| r.path.contains("/blobs/"))
            .count();
        assert_eq!(now, reached, "a skipped mirror is not asked");
    })
    .await;
}
