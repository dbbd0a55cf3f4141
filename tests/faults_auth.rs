//! Fault injection around credentials: the Bearer token flow and its cache,
//! a token realm on an origin lasti must not trust, redirects to blob
//! storage on another host and a back-fill upload moved to another origin
//! (which must never see credentials), and redirect loops.

mod common;

use std::time::{Duration, Instant};

use common::checks::{assert_oci_error, assert_upstream_error, assert_whole, within};
use common::fake_upstream::{
    blob_path, image_manifest, manifest_path, random_blob, FakeUpstream, Fault, Seen, OCI_MANIFEST,
    SERVICE,
};
use common::http::{get, Reply};
use common::lasti::{config, Lasti};
use common::registry::Registry;
use common::token_shim::TokenShim;
use http::{Method, StatusCode};
use lasti::config::Config;
use lasti::secret::Secret;

const REPO: &str = "team/app";
const TOKEN: &str = "fake-token-1";

fn config_for(fake: &FakeUpstream) -> Config {
    config(&[("docker.io", &fake.url())])
}

async fn get_blob(lasti: &Lasti, digest: &str) -> Reply {
    get(&format!("{}{}", lasti.url(), blob_path(REPO, digest)), &[]).await
}

fn token_requests(fake: &FakeUpstream) -> Vec<Seen> {
    let requests = fake.requests().into_iter();
    requests.filter(|s| s.path == "/token").collect()
}

fn query_param(seen: &Seen, name: &str) -> Option<String> {
    let query = seen.query.as_deref().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn with_credentials(mut config: Config, user: &str, password: &str) -> Config {
    config.upstreams[0].username = Some(user.to_string());
    config.upstreams[0].password = Some(Secret::new(password.to_string()));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_fetched_once_per_scope_with_basic_credentials() {
    within(async {
        let fake = FakeUpstream::start().await;
        fake.require_bearer(TOKEN, Some(("alice", "s3cret")));
        let (one, two) = (random_blob(10_000), random_blob(20_000));
        let (d1, d2) = (fake.put_blob(one.clone()), fake.put_blob(two.clone()));
        let config = with_credentials(config_for(&fake), "alice", "s3cret");
        let lasti = Lasti::start_with(config, None).await;

        assert_whole(&get_blob(&lasti, &d1).await, &one);
        assert_whole(&get_blob(&lasti, &d2).await, &two);

        let realm = token_requests(&fake);
        assert_eq!(realm.len(), 1, "one token for the scope: {realm:?}");
        let expected_scope = format!("repository:{REPO}:pull");
        assert_eq!(query_param(&realm[0], "scope"), Some(expected_scope));
        assert_eq!(query_param(&realm[0], "service").as_deref(), Some(SERVICE));
        let basic = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
        assert_eq!(realm[0].authorization.as_deref(), Some(basic));

        let second: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|s| s.path == blob_path(REPO, &d2))
            .collect();
        assert_eq!(
            second.len(),
            1,
            "the cached token went first time: {second:?}"
        );
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(second[0].authorization.as_deref(), Some(bearer.as_str()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_at_the_realm_are_denied() {
    within(async {
        let fake = FakeUpstream::start().await;
        fake.require_bearer(TOKEN, Some(("alice", "s3cret")));
        let digest = fake.put_blob(random_blob(1000));
        let config = with_credentials(config_for(&fake), "alice", "wrong");
        let lasti = Lasti::start_with(config, None).await;

        let reply = get_blob(&lasti, &digest).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "body {:?}", reply.body);
        assert_oci_error(&reply, "DENIED");
        assert!(!String::from_utf8_lossy(&reply.body).contains("wrong"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_blob_reaches_the_second_host_without_credentials() {
    within(async {
        let storage = FakeUpstream::start_on("127.0.0.2").await;
        let registry = FakeUpstream::start().await;
        registry.require_bearer(TOKEN, None);
        let blob = random_blob(500_000);
        let digest = storage.put_blob(blob.clone());
        registry.put_blob(blob.clone());
        registry.fault(&digest, Fault::RedirectTo(storage.url()));
        let lasti = Lasti::start(&registry.url()).await;

        assert_whole(&get_blob(&lasti, &digest).await, &blob);

        let path = blob_path(REPO, &digest);
        let asked = registry.requests();
        let bearer = format!("Bearer {TOKEN}");
        let with_token = asked
            .iter()
            .filter(|s| s.path == path && s.authorization.as_deref() == Some(bearer.as_str()));
        assert_eq!(
            with_token.count(),
            1,
            "the registry saw the token: {asked:?}"
        );
        let served = storage.requests();
        assert_eq!(served.len(), 1, "{served:?}");
        assert_eq!((&served[0].method, &served[0].path), (&Method::GET, &path));
        assert_eq!(
            served[0].authorization, None,
            "credentials leaked to storage"
        );
    })
    .await;
}

/// A registry whose challenge names `realm`'s `/token`: lasti, holding
/// Basic credentials, sends the realm nothing until `allowed` lists its host.
async fn realm_gets_no_credentials_unless_allowed(realm: FakeUpstream, allowed: &str) {
    realm.issue_tokens(TOKEN, Some(("alice", "s3cret")));
    let registry = FakeUpstream::start().await;
    registry.require_bearer_from(&format!("{}/token", realm.url()), TOKEN);
    let blob = random_blob(4000);
    let digest = registry.put_blob(blob.clone());

    let config = || with_credentials(config_for(&registry), "alice", "s3cret");
    let lasti = Lasti::start_with(config(), None).await;
    assert_upstream_error(&get_blob(&lasti, &digest).await, "UNAVAILABLE");
    assert!(realm.requests().is_empty(), "{:?}", realm.requests());
    lasti.stop().await;

    let mut config = config();
    config.upstreams[0].token_realm_hosts = vec![allowed.to_string()];
    let lasti = Lasti::start_with(config, None).await;
    assert_whole(&get_blob(&lasti, &digest).await, &blob);
    let asked = token_requests(&realm);
    assert_eq!(asked.len(), 1, "{asked:?}");
    let basic = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
    assert_eq!(asked[0].authorization.as_deref(), Some(basic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_realm_on_a_foreign_host_is_refused_unless_allowed() {
    within(async {
        let realm = FakeUpstream::start_on("127.0.0.2").await;
        realm_gets_no_credentials_unless_allowed(realm, "127.0.0.2").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_realm_on_another_port_of_the_same_address_is_refused_unless_allowed() {
    within(async {
        let realm = FakeUpstream::start().await;
        realm_gets_no_credentials_unless_allowed(realm, "127.0.0.1").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_upload_moved_to_another_origin_is_refused_and_gets_nothing() {
    within(async {
        let upstream = FakeUpstream::start().await;
        let (config_blob, layer) = (random_blob(300), random_blob(40_000));
        upstream.put_blob(config_blob.clone());
        upstream.put_blob(layer.clone());
        upstream.put_manifest("v1", image_manifest(&config_blob, &[&layer]));
        let backend = Registry::start();
        let shim = TokenShim::start(backend.addr(), TOKEN).await;
        let elsewhere = FakeUpstream::start_on("127.0.0.2").await;
        shim.state.lock().unwrap().upload_origin = Some(elsewhere.url());
        let mut config = config_for(&upstream);
        config.target.url = Some(url::Url::parse(&shim.url()).unwrap());
        config.target.project = Some("proj".into());
        config.target.token = Some(Secret::new(TOKEN.into()));
        let lasti = Lasti::start_with(config, None).await;

        let url = format!("{}{}", lasti.url(), manifest_path(REPO, "v1"));
        let pulled = get(&url, &[("accept", OCI_MANIFEST)]).await;
        assert_eq!(pulled.status, StatusCode::OK, "{:?}", pulled.body);
        let status = lasti
            .backfill_status_when(Duration::from_secs(30), |s| {
                s["failed"].as_array().is_some_and(|f| !f.is_empty())
            })
            .await;
        let seen = elsewhere.requests();
        assert!(
            seen.iter().all(|s| s.authorization.is_none()),
            "credentials leaked to another origin: {seen:?}"
        );
        assert!(seen.is_empty(), "the blob went to another origin: {seen:?}");
        let error = status["failed"][0]["last_error"].to_string();
        let moved = format!("upload Location is on {}", elsewhere.url());
        assert!(
            error.contains(&moved) && error.contains("refused"),
            "{error}"
        );
        assert!(shim.state.lock().unwrap().uploads >= 1, "an upload started");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loop_ends_in_a_clear_error() {
    within(async {
        let fake = FakeUpstream::start().await;
        let digest = fake.put_blob(random_blob(1000));
        fake.fault(&digest, Fault::RedirectTo(fake.url()));
        let lasti = Lasti::start(&fake.url()).await;

        let started = Instant::now();
        let reply = get_blob(&lasti, &digest).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_upstream_error(&reply, "UNAVAILABLE");
        let asked = fake.gets(&blob_path(REPO, &digest));
        assert!(
            (2..=20).contains(&asked),
            "{asked} GETs for one redirect loop"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_cached_token_is_replaced() {
    within(async {
        let fake = FakeUpstream::start().await;
        fake.require_bearer(TOKEN, None);
        let (one, two) = (random_blob(1000), random_blob(2000));
        let (d1, d2) = (fake.put_blob(one.clone()), fake.put_blob(two.clone()));
        let lasti = Lasti::start(&fake.url()).await;
        assert_whole(&get_blob(&lasti, &d1).await, &one);

        // The registry rotates its tokens: the cached one is now refused.
        fake.require_bearer("fake-token-2", None);
        assert_whole(&get_blob(&lasti, &d2).await, &two);
        assert_eq!(token_requests(&fake).len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_redirect_after_a_challenge_keeps_the_token() {
    within(async {
        let fake = FakeUpstream::start().await;
        fake.require_bearer(TOKEN, None);
        let blob = random_blob(3000);
        let digest = fake.put_blob(blob.clone());
        fake.fault(&digest, Fault::RedirectTo(fake.mirror_url()));
        let lasti = Lasti::start(&fake.url()).await;

        // The very first request: lasti learns of the Bearer realm from a 401,
        // then is redirected within the registry's own origin.
        let reply = get_blob(&lasti, &digest).await;
        let mirror = format!("/mirror{}", blob_path(REPO, &digest));
        let mirrored: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|s| s.path == mirror)
            .collect();
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            mirrored.first().and_then(|s| s.authorization.as_deref()),
            Some(bearer.as_str()),
            "the same-origin redirect went without the token: {mirrored:?}"
        );
        assert_whole(&reply, &blob);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_never_reach_the_upstream() {
    within(async {
        let fake = FakeUpstream::start().await;
        let blob = random_blob(1000);
        let digest = fake.put_blob(blob.clone());
        let lasti = Lasti::start(&fake.url()).await;

        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));
        let client_auth = ("authorization", "Basic Y2xpZW50OnNlY3JldA==");
        assert_whole(&get(&url, &[client_auth]).await, &blob);
        let asked = fake.requests();
        assert!(asked.iter().all(|s| s.authorization.is_none()), "{asked:?}");
    })
    .await;
}
