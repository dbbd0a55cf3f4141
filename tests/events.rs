//! Audit events, received by a real HTTP receiver: a scripted sequence of
//! pulls (a real client's among them), refusals and operator calls arrives
//! whole and in order, as CloudEvents batches, with the receiver stopped
//! for part of it; back-fill reports what it pushed and what it gave up
//! on. A receiver that holds its answers, and one that is not there, slow
//! no pull: their queues fill, and what does not fit is dropped and counted.

mod common;

use std::time::Duration;

use common::checks::within;
use common::event_sink::EventSink;
use common::fake_upstream::OCI_MANIFEST;
use common::http::{get, head, metric, metric_reaches, post_json};
use common::lasti::{admin_token, config, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec};
use common::registry::Registry;
use common::skopeo;
use common::token_shim::TokenShim;
use lasti::config::{AccessMode, Config, SinkConfig};
use lasti::secret::Secret;
use serde_json::Value;
use tempfile::TempDir;
use url::Url;

const KIB: usize = 1024;
const TARGET_TOKEN: &str = "sa-token-events";

fn sink(url: &str) -> SinkConfig {
    SinkConfig {
        url: Url::parse(url).unwrap(),
        token_file: None,
        ca_file: None,
    }
}

/// `Basic` of alice's password, or of a wrong one.
fn basic(password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("alice:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

async fn push(registry: &Registry, work: &TempDir, name: &str, seed: u64) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[4 * KIB, 20 * KIB]);
    skopeo::push_image(&registry.host(), work.path(), name, &spec)
        .await
        .1
}

/// Waits until the receiver holds `count` distinct events (a batch whose
/// answer was lost may arrive twice: receivers drop repeats by `id`); the
/// distinct events in the order first received.
async fn distinct_events(sink: &EventSink, count: usize, what: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = std::collections::HashSet::new();
        let events: Vec<Value> = sink
            .events()
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_string()))
            .collect();
        if events.len() >= count {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} of {count} events arrived: {events:#?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_sequence_arrives_whole_and_in_order_across_a_receiver_restart() {
    let registry = Registry::start();
    let backend = Registry::start();
    let target = TokenShim::start(backend.addr(), TARGET_TOKEN).await;
    let work = TempDir::new().unwrap();
    let app = push(&registry, &work, "app", 71).await;
    let other = push(&registry, &work, "other", 72).await;
    let htpasswd = work.path().join("htpasswd");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let mut receiver = EventSink::start().await;

    let mut cfg: Config = config(&[("docker.io", &registry.url())]);
    cfg.access.mode = AccessMode::Authenticated;
    cfg.access.htpasswd_file = Some(htpasswd);
    cfg.upstreams[0].deny = vec!["library/forbidden".into()];
    cfg.target.url = Some(Url::parse(&target.url()).unwrap());
    cfg.target.project = Some("proj".into());
    cfg.target.token = Some(Secret::new(TARGET_TOKEN.into()));
    cfg.target.max_backoff = Duration::from_secs(1);
    cfg.events.source = Some("/lasti/test".into());
    cfg.events.max_backoff = Duration::from_secs(1);
    cfg.events.sinks = vec![sink(&receiver.url())];
    let bearer = admin_token(&mut cfg, work.path());
    let lasti = Lasti::start_with(cfg, None).await;
    let (api, admin) = (lasti.url(), lasti.admin_url());
    let alice = basic("s3cret");
    let as_alice = [("authorization", alice.as_str()), ("accept", OCI_MANIFEST)];
    let manifest = |repo: &str, reference: &str| format!("{api}/v2/{repo}/manifests/{reference}");

    // 1. A real client, with alice's credentials: the miss.
    let src = format!("docker://{}/library/app:v1", lasti.host());
    let out = work.path().join("pulled");
    let args = [
        "copy",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--src-creds",
        "alice:s3cret",
        &src,
        &format!("dir:{}", out.display()),
    ];
    skopeo::run(&args.map(String::from)).await.unwrap();
    // 2. The hit, and 3. a HEAD by digest.
    assert_eq!(get(&manifest("app", "v1"), &as_alice).await.status, 200);
    let by_digest = manifest("app", &app.manifest_digest);
    assert_eq!(head(&by_digest, &as_alice).await.status, 200);
    // 4. A wrong password; a first request without any is a login, not a refusal.
    let wrong = basic("wrong");
    let refused = get(&manifest("app", "v1"), &[("authorization", &wrong)]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(get(&manifest("app", "v1"), &[]).await.status, 401);
    // 5. A repository the deny list refuses.
    let denied = get(&manifest("forbidden", "v1"), &as_alice).await;
    assert_eq!(denied.status, 403);
    // 6. A purge of the tag's record, 7. an admin call without the token.
    let purge = post_json(
        &format!("{admin}/admin/purge"),
        r#"{"image": "app:v1", "scope": "tag"}"#,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(purge.status, 200);
    let offline = format!("{admin}/admin/offline");
    let anyone = [("authorization", "Bearer nope")];
    assert_eq!(post_json(&offline, "{}", &anyone).await.status, 401);
    distinct_events(&receiver, 7, "before the receiver stops").await;

    // The receiver goes away: 8. a miss, 9.-10. offline and back.
    receiver.stop().await;
    assert_eq!(get(&manifest("other", "v1"), &as_alice).await.status, 200);
    let switch = |on: bool| format!(r#"{{"offline": {on}, "upstream": "docker.io"}}"#);
    let with_token = [("authorization", bearer.as_str())];
    assert_eq!(
        post_json(&offline, &switch(true), &with_token).await.status,
        200
    );
    assert_eq!(
        post_json(&offline, &switch(false), &with_token)
            .await
            .status,
        200
    );
    let failed = metric_reaches(&admin, "lasti_event_posts_failed_total", &[], 1).await;
    assert!(failed >= 1, "the receiver was down: a post failed");
    receiver.restart().await;
    // 11. The tag again, after its record was purged.
    assert_eq!(get(&manifest("app", "v1"), &as_alice).await.status, 200);

    let events = distinct_events(&receiver, 11, "after the restart").await;
    let audited: Vec<&Value> = events
        .iter()
        .filter(|e| {
            !e["type"]
                .as_str()
                .unwrap_or_default()
                .starts_with("lasti.backfill")
        })
        .collect();
    let kinds: Vec<&str> = audited
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "lasti.manifest.pulled",
            "lasti.manifest.pulled",
            "lasti.manifest.pulled",
            "lasti.pull.refused",
            "lasti.pull.refused",
            "lasti.cache.purged",
            "lasti.admin.refused",
            "lasti.manifest.pulled",
            "lasti.upstream.offline",
            "lasti.upstream.offline",
            "lasti.manifest.pulled",
        ],
        "{audited:#?}"
    );
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "/lasti/test");
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{event}");
    }

    let miss = &audited[0]["data"];
    assert_eq!(audited[0]["subject"], "docker.io/library/app:v1");
    assert_eq!(miss["client"]["user"], "alice");
    assert_eq!(miss["client"]["address"], "127.0.0.1");
    assert_eq!(miss["upstream"], "docker.io");
    assert_eq!(miss["repository"], "library/app");
    assert_eq!(miss["tag"], "v1");
    assert_eq!(miss["digest"], app.manifest_digest.as_str());
    assert_eq!(miss["method"], "GET");
    assert_eq!(miss["outcome"], "miss");
    assert_eq!(miss["tier"], "upstream");
    assert_eq!(miss["bytes"], app.manifest_bytes.len());
    assert_eq!(miss["complete"], true);
    let hit = &audited[1]["data"];
    assert_eq!(
        (&hit["outcome"], &hit["tier"]),
        (&"hit".into(), &"cache".into())
    );
    let headed = &audited[2];
    assert_eq!(
        headed["subject"],
        format!("docker.io/library/app@{}", app.manifest_digest)
    );
    assert_eq!(headed["data"]["method"], "HEAD");
    assert_eq!(headed["data"]["bytes"], 0);
    assert!(headed["data"].get("tag").is_none());

    let unauthorized = &audited[3]["data"];
    assert_eq!(unauthorized["status"], 401);
    assert_eq!(unauthorized["code"], "UNAUTHORIZED");
    assert_eq!(unauthorized["client"]["user"], "alice");
    let raw = serde_json::to_string(&events).unwrap();
    assert!(
        !raw.contains("s3cret") && !raw.contains("wrong"),
        "no password in any event"
    );
    let forbidden = &audited[4];
    assert_eq!(forbidden["subject"], "docker.io/library/forbidden");
    assert_eq!(forbidden["data"]["status"], 403);
    assert_eq!(forbidden["data"]["code"], "DENIED");
    assert!(forbidden["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("library/forbidden"));

    let purged = &audited[5]["data"];
    assert_eq!(purged["scope"], "tag");
    assert_eq!(purged["removed"]["tags"][0], "v1");
    assert_eq!(audited[6]["data"]["path"], "/admin/offline");
    assert_eq!(audited[7]["data"]["digest"], other.manifest_digest.as_str());
    assert_eq!(audited[7]["data"]["outcome"], "miss");
    assert_eq!(audited[8]["data"]["offline"], true);
    assert_eq!(audited[8]["subject"], "docker.io");
    assert_eq!(audited[9]["data"]["offline"], false);
    assert_eq!(audited[10]["data"]["digest"], app.manifest_digest.as_str());

    // Every POST was a batch in the CloudEvents HTTP binding.
    let types = receiver.seen().content_types.clone();
    assert!(!types.is_empty());
    assert!(
        types
            .iter()
            .all(|t| t == "application/cloudevents-batch+json"),
        "{types:?}"
    );
    assert_eq!(metric(&admin, "lasti_events_dropped_total", &[]).await, 0);

    // Back-fill: app and other were pushed; with pushes refused, a third
    // image is given up on.
    let done = distinct_events(&receiver, 13, "back-fill done").await;
    let pushed = of_type(&done, "lasti.backfill.done");
    assert_eq!(pushed.len(), 2, "{done:#?}");
    let app_pushed = pushed
        .iter()
        .find(|e| e["data"]["repository"] == "library/app");
    let app_pushed = app_pushed.expect("app was back-filled");
    assert_eq!(app_pushed["subject"], "proj/app:v1");
    assert_eq!(app_pushed["data"]["digest"], app.manifest_digest.as_str());
    assert_eq!(app_pushed["data"]["target"], "proj/app");
    target.state.lock().unwrap().deny_pushes = true;
    let third = push(&registry, &work, "third", 73).await;
    assert_eq!(get(&manifest("third", "v1"), &as_alice).await.status, 200);
    let all = distinct_events(&receiver, 15, "back-fill failed").await;
    let gave_up = of_type(&all, "lasti.backfill.failed");
    assert_eq!(gave_up.len(), 1, "{all:#?}");
    assert_eq!(gave_up[0]["data"]["digest"], third.manifest_digest.as_str());
    assert!(gave_up[0]["data"]["error"]
        .as_str()
        .unwrap()
        .contains("quota"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_or_absent_receiver_slows_no_pull_and_what_does_not_fit_is_counted() {
    within(async {
        let registry = Registry::start();
        let work = TempDir::new().unwrap();
        push(&registry, &work, "app", 74).await;
        let held = EventSink::start().await;
        held.hold(true);
        // A port nothing listens on.
        let absent = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/events", listener.local_addr().unwrap())
        };
        let mut cfg = config(&[("docker.io", &registry.url())]);
        cfg.events.queue = 4;
        cfg.events.batch = 2;
        cfg.events.timeout = Duration::from_secs(60);
        cfg.events.sinks = vec![sink(&held.url()), sink(&absent)];
        let lasti = Lasti::start_with(cfg, None).await;
        let admin = lasti.admin_url();
        let url = format!("{}/v2/library/app/manifests/v1", lasti.url());
        let pulls = 20u64;
        for _ in 0..pulls {
            let reply = get(&url, &[("accept", OCI_MANIFEST)]).await;
            assert_eq!(reply.status, 200);
        }
        // Every pull was answered while one receiver held its first batch
        // and the other refused every connection.
        assert_eq!(held.seen().events.len(), 0);
        let held_label = format!("sink=\"{}\"", held.url());
        let absent_label = format!("sink=\"{absent}\"");
        let full = "reason=\"queue_full\"";
        // At most a batch in flight and a queue's worth kept, per sink.
        let least = pulls - 4 - 2;
        let dropped = metric(&admin, "lasti_events_dropped_total", &[&held_label, full]).await;
        assert!(dropped >= least, "held: {dropped} dropped");
        let dropped = metric(&admin, "lasti_events_dropped_total", &[&absent_label, full]).await;
        assert!(dropped >= least, "absent: {dropped} dropped");
        assert!(
            metric_reaches(
                &admin,
                "lasti_event_posts_failed_total",
                &[&absent_label],
                1
            )
            .await
                >= 1
        );

        // Released, the held receiver gets what was kept: every event is
        // either taken or counted as dropped, none twice.
        held.hold(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let sent = metric(&admin, "lasti_events_sent_total", &[&held_label]).await;
            let dropped = metric(&admin, "lasti_events_dropped_total", &[&held_label]).await;
            if sent + dropped == pulls {
                assert_eq!(held.seen().events.len() as u64, sent);
                assert!(sent >= 1);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sent {sent} + dropped {dropped}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            metric(&admin, "lasti_events_queued", &[&held_label]).await,
            0
        );
    })
    .await;
}
