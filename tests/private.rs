//! Private images through one shared cache (`credentials = "client"`),
//! against a token service that grants pull access per user and per
//! repository, as Docker Hub, GitLab and ghcr.io do: alice may pull
//! `team/x`, bob only `team/y`, anyone `lib/pub`. What one client fetched
//! is served to another only if the upstream would serve that client too:
//! by tag, by digest, or by a digest guessed under another repository.
//! The same rules with real registries and real clients are in
//! `private_clients.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::checks::{assert_oci_error, assert_whole, within};
use common::fake_upstream::{blob_path, image_manifest, manifest_path, random_blob, FakeUpstream};
use common::http::{get, head, metric, Reply};
use common::lasti::{config, total_reaches, Lasti};
use http::{Method, StatusCode};
use lasti::config::{Config, CredentialSource};

/// One image of one repository at the fake.
struct Image {
    manifest: Bytes,
    manifest_digest: String,
    layer: Bytes,
    layer_digest: String,
}

fn put_image(fake: &FakeUpstream, repo: &str) -> Image {
    let (config, layer) = (random_blob(300), random_blob(50_000));
    fake.put_blob_in(repo, config.clone());
    let layer_digest = fake.put_blob_in(repo, layer.clone());
    let manifest = image_manifest(&config, &[&layer]);
    let manifest_digest = fake.put_manifest_in(repo, "v1", manifest.clone());
    Image {
        manifest,
        manifest_digest,
        layer,
        layer_digest,
    }
}

struct Setup {
    fake: FakeUpstream,
    lasti: Lasti,
    x: Image,
    y: Image,
    public: Image,
}

fn client_config(fake: &FakeUpstream, ttl: Duration) -> Config {
    let mut cfg = config(&[("docker.io", &fake.url())]);
    cfg.upstreams[0].credentials = CredentialSource::Client;
    cfg.upstreams[0].client_verdict_ttl = ttl;
    // An upstream that was down is tried again soon after.
    cfg.upstreams[0].skip_for = Duration::from_secs(1);
    cfg
}

async fn setup_with(ttl: Duration) -> Setup {
    let fake = FakeUpstream::start().await;
    fake.scope_users(
        &[
            ("alice", "alice-pw", &["team/x"]),
            ("bob", "bob-pw", &["team/y"]),
        ],
        &["lib/pub"],
    );
    let (x, y, public) = (
        put_image(&fake, "team/x"),
        put_image(&fake, "team/y"),
        put_image(&fake, "lib/pub"),
    );
    let lasti = Lasti::start_with(client_config(&fake, ttl), None).await;
    Setup {
        fake,
        lasti,
        x,
        y,
        public,
    }
}

async fn setup() -> Setup {
    setup_with(Duration::from_secs(60)).await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// lasti's token for `user` (anonymous: `None`), as a client gets it.
async fn token(lasti: &Lasti, user: Option<(&str, &str)>) -> Result<String, Reply> {
    let header = user.map(|(u, p)| basic(u, p));
    let headers: Vec<(&str, &str)> = header
        .iter()
        .map(|h| ("authorization", h.as_str()))
        .collect();
    let reply = get(&format!("{}/token", lasti.url()), &headers).await;
    if reply.status != StatusCode::OK {
        return Err(reply);
    }
    let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("token JSON");
    Ok(body["token"].as_str().expect("a token").to_string())
}

/// A client holding lasti's token for one identity.
struct Client {
    base: String,
    bearer: String,
}

impl Client {
    async fn of(lasti: &Lasti, user: Option<(&str, &str)>) -> Client {
        let token = token(lasti, user).await.expect("a token");
        Client {
            base: lasti.url(),
            bearer: format!("Bearer {token}"),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        get(
            &format!("{}{path}", self.base),
            &[("authorization", &self.bearer)],
        )
        .await
    }

    async fn head(&self, path: &str) -> Reply {
        head(
            &format!("{}{path}", self.base),
            &[("authorization", &self.bearer)],
        )
        .await
    }
}

fn assert_refused(reply: &Reply, repo: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A HEAD has no body to name the error.
    if !reply.body.is_empty() {
        assert_oci_error(reply, "UNAUTHORIZED");
    }
    let challenge = reply.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1:")
            && challenge.contains("/token\",service=\"lasti\"")
            && challenge.contains(&format!("scope=\"repository:{repo}:pull\"")),
        "a challenge that sends the client to lasti's token endpoint: {challenge}"
    );
}

fn upstream_requests(fake: &FakeUpstream) -> usize {
    fake.requests()
        .iter()
        .filter(|s| s.path != "/token")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_check_sends_clients_to_lastis_token_endpoint() {
    within(async {
        let s = setup().await;
        let reply = get(&format!("{}/v2/", s.lasti.url()), &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let challenge = reply.header("www-authenticate");
        let realm = format!("Bearer realm=\"{}/token\",service=\"lasti\"", s.lasti.url());
        assert_eq!(challenge, realm);

        let anonymous = Client::of(&s.lasti, None).await;
        assert_eq!(anonymous.get("/v2/").await.status, StatusCode::OK);
        let alice = Client::of(&s.lasti, Some(("alice", "alice-pw"))).await;
        assert_eq!(alice.get("/v2/").await.status, StatusCode::OK);

        let wrong = token(&s.lasti, Some(("alice", "wrong"))).await.unwrap_err();
        assert_eq!(
            wrong.status,
            StatusCode::UNAUTHORIZED,
            "a wrong password gets no token"
        );
        let forged = get(
            &format!("{}/v2/", s.lasti.url()),
            &[(
                "authorization",
                "Bearer lasti.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )],
        )
        .await;
        assert_eq!(
            forged.status,
            StatusCode::UNAUTHORIZED,
            "a forged token opens nothing"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_is_served_only_to_clients_its_upstream_serves() {
    within(async {
        let s = setup().await;
        let (x, y) = (&s.x, &s.y);
        let alice = Client::of(&s.lasti, Some(("alice", "alice-pw"))).await;
        let bob = Client::of(&s.lasti, Some(("bob", "bob-pw"))).await;
        let anonymous = Client::of(&s.lasti, None).await;

        // alice pulls team/x: fetched with her own token.
        let manifest = alice.get(&manifest_path("team/x", "v1")).await;
        assert_whole(&manifest, &x.manifest);
        let layer = alice.get(&blob_path("team/x", &x.layer_digest)).await;
        assert_whole(&layer, &x.layer);
        let fetched_as: Vec<_> = s
            .fake
            .requests()
            .into_iter()
            .filter(|r| r.path == blob_path("team/x", &x.layer_digest) && r.method == Method::GET)
            .collect();
        assert_eq!(fetched_as.len(), 1);
        assert_eq!(
            fetched_as[0].authorization.as_deref(),
            Some("Bearer scoped-alice"),
            "fetched with alice's own credential"
        );

        // bob may not pull team/x, cached or not: by tag, by digest, a blob.
        assert_refused(&bob.get(&manifest_path("team/x", "v1")).await, "team/x");
        let by_digest = manifest_path("team/x", &x.manifest_digest);
        assert_refused(&bob.get(&by_digest).await, "team/x");
        assert_refused(&bob.head(&by_digest).await, "team/x");
        let x_layer = blob_path("team/x", &x.layer_digest);
        assert_refused(&bob.get(&x_layer).await, "team/x");
        assert_refused(&anonymous.get(&x_layer).await, "team/x");
        // His own repository he gets, and the public one anyone gets.
        assert_whole(&bob.get(&manifest_path("team/y", "v1")).await, &y.manifest);
        assert_whole(
            &bob.get(&blob_path("team/y", &y.layer_digest)).await,
            &y.layer,
        );
        let public = anonymous
            .get(&blob_path("lib/pub", &s.public.layer_digest))
            .await;
        assert_whole(&public, &s.public.layer);

        // Nor by guessing x's digests under his own repository, or a public
        // one, where the upstream already let them pull.
        let guesses = [(&bob, "team/y"), (&bob, "lib/pub"), (&anonymous, "lib/pub")];
        for (client, repo) in guesses {
            {
                let blob = client.get(&blob_path(repo, &x.layer_digest)).await;
                assert_oci_error(&blob, "BLOB_UNKNOWN");
                let head = client.head(&blob_path(repo, &x.layer_digest)).await;
                assert_eq!(head.status, StatusCode::NOT_FOUND);
                let manifest = client.get(&manifest_path(repo, &x.manifest_digest)).await;
                assert_oci_error(&manifest, "MANIFEST_UNKNOWN");
            }
        }
        // alice again: a hit, with no request upstream (verdict and tag kept).
        let before = upstream_requests(&s.fake);
        assert_whole(
            &alice.get(&manifest_path("team/x", "v1")).await,
            &x.manifest,
        );
        assert_whole(&alice.get(&x_layer).await, &x.layer);
        assert_eq!(
            upstream_requests(&s.fake),
            before,
            "a private hit asks nothing"
        );
        assert_eq!(s.fake.gets(&x_layer), 1, "fetched once");
        let admin = s.lasti.admin_url();
        let checks = |identity: &str, verdict: &str| {
            let labels = [
                format!("identity=\"{identity}\""),
                format!("verdict=\"{verdict}\""),
            ];
            let admin = admin.clone();
            async move {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                metric(&admin, "lasti_access_checks_total", &labels).await
            }
        };
        // alice's team/x and bob's team/y were each checked once; bob's
        // team/x was refused; the anonymous check of lib/pub found it public.
        assert_eq!(checks("client", "allowed").await, 2);
        assert!(checks("client", "refused").await >= 1);
        assert!(checks("anonymous", "allowed").await >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_sent_as_they_are_count_as_through_a_token() {
    within(async {
        let s = setup().await;
        let url = |path: &str| format!("{}{path}", s.lasti.url());
        let alice = basic("alice", "alice-pw");
        let reply = get(
            &url(&manifest_path("team/x", "v1")),
            &[("authorization", &alice)],
        )
        .await;
        assert_whole(&reply, &s.x.manifest);
        let wrong = basic("alice", "nope");
        let reply = get(
            &url(&manifest_path("team/x", "v1")),
            &[("authorization", &wrong)],
        )
        .await;
        assert_refused(&reply, "team/x");
        let none = get(&url(&manifest_path("team/x", "v1")), &[]).await;
        assert_refused(&none, "team/x");
        // podman's empty pair is an anonymous client: public content only.
        let empty = [("authorization", "Basic Og==")];
        let reply = get(&url(&manifest_path("lib/pub", "v1")), &empty).await;
        assert_whole(&reply, &s.public.manifest);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_upstream_is_down_public_content_is_served_and_private_needs_a_fresh_verdict() {
    within(async {
        let s = setup_with(Duration::from_secs(1)).await;
        let alice = Client::of(&s.lasti, Some(("alice", "alice-pw"))).await;
        let anonymous = Client::of(&s.lasti, None).await;
        let x_layer = blob_path("team/x", &s.x.layer_digest);
        let pub_layer = blob_path("lib/pub", &s.public.layer_digest);
        assert_whole(&alice.get(&x_layer).await, &s.x.layer);
        assert_whole(&anonymous.get(&pub_layer).await, &s.public.layer);

        s.fake.set_down(true);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let private = alice.get(&x_layer).await;
        assert!(
            private.status.is_server_error(),
            "no fresh verdict, no private byte: {}",
            private.status
        );
        assert_whole(&anonymous.get(&pub_layer).await, &s.public.layer);

        // Back up, it is asked again once its breaker lets a probe through.
        s.fake.set_down(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut reply = alice.get(&x_layer).await;
        while reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(std::time::Instant::now() < deadline, "never asked again");
            tokio::time::sleep(Duration::from_millis(250)).await;
            reply = alice.get(&x_layer).await;
        }
        assert_whole(&reply, &s.x.layer);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_credential_is_never_written_to_disk() {
    within(async {
        let s = setup().await;
        let alice = Client::of(&s.lasti, Some(("alice", "alice-pw"))).await;
        assert_whole(
            &alice.get(&manifest_path("team/x", "v1")).await,
            &s.x.manifest,
        );
        let x_layer = blob_path("team/x", &s.x.layer_digest);
        assert_whole(&alice.get(&x_layer).await, &s.x.layer);
        let data = s.lasti.stop().await;
        let mut found = Vec::new();
        for entry in walk(data.path()) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("alice-pw") || text.contains("scoped-alice") {
                found.push(entry);
            }
        }
        assert!(found.is_empty(), "credentials on disk: {found:?}");
    })
    .await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Two replicas of one cluster in front of the scoped upstream.
fn replica(fake: &FakeUpstream, me: &str, members: &[String]) -> Config {
    let mut cfg = client_config(fake, Duration::from_secs(60));
    cfg.cluster.listen = Some(me.parse().unwrap());
    cfg.cluster.advertise = Some(me.to_string());
    cfg.cluster.peers = members.to_vec();
    cfg.cluster.secret = Some(lasti::secret::Secret::new("one-cluster".into()));
    cfg
}

/// Private content never crosses the peer port: each replica fetches a
/// private blob with its own client's credential (once per replica),
/// while a public blob is fetched once for the cluster. A token one
/// replica issued opens at the other (their keys come from the cluster's
/// secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fetch_private_blobs_themselves_and_share_public_ones() {
    within(async {
        let fake = FakeUpstream::start().await;
        fake.scope_users(&[("alice", "alice-pw", &["team/x"])], &["lib/pub"]);
        let blobs = |repo: &str| -> Vec<(String, Bytes)> {
            (0..6)
                .map(|_| {
                    let bytes = random_blob(20_000);
                    (fake.put_blob_in(repo, bytes.clone()), bytes)
                })
                .collect()
        };
        let (private, public) = (blobs("team/x"), blobs("lib/pub"));
        let members: Vec<String> = (0..2)
            .map(|_| format!("127.0.0.1:{}", common::free_port()))
            .collect();
        let a = Lasti::start_with(replica(&fake, &members[0], &members), None).await;
        let b = Lasti::start_with(replica(&fake, &members[1], &members), None).await;

        let token = token(&a, Some(("alice", "alice-pw"))).await.unwrap();
        let bearer = format!("Bearer {token}");
        for lasti in [&a, &b] {
            for (repo, list) in [("team/x", &private), ("lib/pub", &public)] {
                for (digest, bytes) in list {
                    let url = format!("{}{}", lasti.url(), blob_path(repo, digest));
                    let reply = get(&url, &[("authorization", &bearer)]).await;
                    assert_whole(&reply, bytes);
                }
            }
        }
        // GETs that carried a token: a replica's first request to the
        // upstream goes without one, and its 401 teaches it the realm.
        let fetches = |path: String, token: &str| {
            let requests = fake.requests().into_iter();
            requests
                .filter(|r| r.method == Method::GET && r.path == path)
                .filter(|r| r.authorization.as_deref() == Some(token))
                .count()
        };
        for (digest, _) in &private {
            let gets = fetches(blob_path("team/x", digest), "Bearer scoped-alice");
            assert_eq!(gets, 2, "once per replica, never through a peer: {digest}");
        }
        for (digest, _) in &public {
            let gets = fetches(blob_path("lib/pub", digest), "Bearer scoped-");
            assert_eq!(gets, 1, "once for the cluster: {digest}");
        }
        // Each public blob reached one replica through the other; no
        // private one did.
        let fills = "lasti_fill_sources_total";
        let want = public.len() as u64;
        let through_peers = total_reaches([&a, &b], fills, &["tier=\"peer\""], want).await;
        assert_eq!(through_peers, want);
    })
    .await;
}
