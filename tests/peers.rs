//! A replica among members that are not what they seem: a member list that
//! names this replica twice (a host name beside its address), an owner
//! that is alive but busy, and one that joins after the others fetched
//! what it owns. Real parts: lasti in-process with its peer
//! listener on loopback, the CNCF distribution registry as the upstream;
//! the busy owner is a small in-test server that answers 503 to everything.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::lasti::cluster::rendezvous;
use ::lasti::config::Config;
use ::lasti::oci::Digest;
use ::lasti::secret::Secret;
use common::http;
use common::lasti::{config as lasti_config, Lasti};
use common::oci_layout::ImageSpec;
use common::registry::Registry;
use common::throttle::Throttle;
use common::{free_port, skopeo};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A replica of a cluster on loopback: its peer listener at `me`, the
/// members `peers`, the registry as docker.io.
fn replica(registry: &Registry, me: &str, peers: &[String]) -> Config {
    replica_of(&registry.url(), me, peers)
}

/// [`replica`] with the upstream at `url`.
fn replica_of(url: &str, me: &str, peers: &[String]) -> Config {
    let mut config = lasti_config(&[("docker.io", url)]);
    config.cluster.listen = Some(me.parse().unwrap());
    config.cluster.advertise = Some(me.to_string());
    config.cluster.peers = peers.to_vec();
    config.cluster.secret = Some(Secret::new("replicas-of-one-test".into()));
    // Far above the test's own limit: waiting for it is the defect.
    config.cluster.timeout = Duration::from_secs(300);
    config
}

/// The digests (of `all`) that `member` owns among `members`.
fn owned_by(member: &str, members: &[String], all: &[String]) -> HashSet<String> {
    all.iter()
        .filter(|d| rendezvous::ranked(members, &Digest::parse(d).unwrap())[0] == member)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_listed_under_two_names_never_waits_on_itself() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let sizes = [4096; 9];
    let spec = ImageSpec::linux_amd64(25, &sizes);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "twice", &spec).await;
    let port = free_port();
    let me = format!("127.0.0.1:{port}");
    let alias = format!("localhost:{port}");
    let members = vec![me.clone(), alias.clone()];
    let via_alias = owned_by(&alias, &members, &image.blob_digests());
    assert!(!via_alias.is_empty(), "the alias owns some of the blobs");

    let lasti = Lasti::start_with(replica(&registry, &me, &members), None).await;
    let out = work.path().join("out");
    let host = lasti.host();
    let pull = skopeo::pull_and_check(&host, "twice", &image, &out, false);
    tokio::time::timeout(Duration::from_secs(60), pull)
        .await
        .expect("the pull never waits for cluster.timeout");
    let admin = lasti.admin_url();
    assert!(
        http::metric(&admin, "lasti_peer_fetches_total", &["result=\"self\""]).await >= 1,
        "the request to itself was refused and counted"
    );
    assert_eq!(
        http::metric(&admin, "lasti_peer_fetches_total", &["result=\"done\""]).await,
        0,
        "no blob came from 'another' replica"
    );
    // Once known, the alias is this replica: nothing more is asked of it.
    let asked = http::metric(
        &admin,
        "lasti_peer_requests_total",
        &["outcome=\"refused\""],
    )
    .await;
    assert!(asked >= 1 && asked <= via_alias.len() as u64, "{asked}");
}

/// A member that answers every request with 503 `UNAVAILABLE`, as a
/// replica past its open-file budget does; records the digests asked, and
/// whether each was asked only if held (`Cache-Control: only-if-cached`).
async fn busy_member(port: u16) -> Arc<Mutex<Vec<(String, bool)>>> {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let seen = Arc::clone(&asked);
    tokio::spawn(async move {
        // Stops by itself, whatever the test does.
        let _ = tokio::time::timeout(Duration::from_secs(120), async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut head = vec![0; 8192];
                    let n = socket.read(&mut head).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
                    let only_stored = head.contains("\r\ncache-control: only-if-cached\r\n");
                    if let Some(digest) = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.split("/blobs/").nth(1))
                        .and_then(|rest| rest.split('?').next())
                    {
                        seen.lock().unwrap().push((digest.to_string(), only_stored));
                    }
                    let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}"#;
                    let answer = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        })
        .await;
    });
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_owner_stays_the_owner_of_its_blobs() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let sizes = [4096; 16];
    let spec = ImageSpec::linux_amd64(26, &sizes);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "busy", &spec).await;
    let me = format!("127.0.0.1:{}", free_port());
    let busy_port = free_port();
    let busy = format!("127.0.0.1:{busy_port}");
    let members = vec![me.clone(), busy.clone()];
    let theirs = owned_by(&busy, &members, &image.blob_digests());
    assert!(theirs.len() >= 2, "the busy member owns several blobs");
    let asked = busy_member(busy_port).await;

    let lasti = Lasti::start_with(replica(&registry, &me, &members), None).await;
    // One blob after another, all within the time a member that failed is
    // left out: each of the busy member's blobs is asked of it again.
    for digest in image.blob_digests() {
        let url = format!("{}/v2/library/busy/blobs/{digest}", lasti.url());
        let reply = http::get(&url, &[]).await;
        assert_eq!(reply.status, 200, "{digest}");
        assert_eq!(Digest::sha256_of(&reply.body).to_string(), digest);
    }
    let asked = asked.lock().unwrap().clone();
    let to_fetch: HashSet<String> = asked.iter().filter(|a| !a.1).map(|a| a.0.clone()).collect();
    assert_eq!(to_fetch, theirs, "every blob it owns was asked of it");
    // It is also this replica's successor: asked for a copy of each blob
    // this replica owns, never to fetch one.
    let if_held: HashSet<String> = asked.iter().filter(|a| a.1).map(|a| a.0.clone()).collect();
    let mine: HashSet<String> = image.blob_digests().into_iter().collect();
    assert_eq!(
        if_held,
        &mine - &theirs,
        "each of this replica's own blobs asked if held"
    );
    let admin = lasti.admin_url();
    assert_eq!(
        http::metric(&admin, "lasti_peer_fetches_total", &["result=\"refused\""]).await,
        mine.len() as u64
    );
    assert_eq!(
        http::metric(&admin, "lasti_peer_fetches_total", &["result=\"failed\""]).await,
        0,
        "a busy member is not a failed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pulled_through_two_replicas_is_fetched_from_the_upstream_once() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(27, &[4096, 8192]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "once", &spec).await;
    let members = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let mut replicas = Vec::new();
    for me in &members {
        replicas.push(Lasti::start_with(replica(&registry, me, &members), None).await);
    }
    for (i, lasti) in replicas.iter().enumerate() {
        let out = work.path().join(format!("through-{i}"));
        skopeo::pull_and_check(&lasti.host(), "once", &image, &out, false).await;
    }
    assert_eq!(
        registry.wait_for_requests("GET", "/manifests/", 2),
        1,
        "the tag's owner resolved it for both"
    );
    for digest in image.blob_digests() {
        assert_eq!(
            registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 2),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_joins_takes_its_blobs_from_its_successor_not_the_upstream() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(29, &[4096; 8]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "joined", &spec).await;
    let (late, early) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let members = vec![late.clone(), early.clone()];
    let blobs = image.blob_digests();
    assert!(
        !owned_by(&late, &members, &blobs).is_empty(),
        "the replica that joins late owns some of the blobs"
    );

    // While `late` is away (a restart, or before it is scheduled), `early`
    // fetches its blobs itself.
    let first = Lasti::start_with(replica(&registry, &early, &members), None).await;
    let out = work.path().join("through-early");
    skopeo::pull_and_check(&first.host(), "joined", &image, &out, false).await;
    for digest in &blobs {
        assert_eq!(registry.settled_blob_gets(digest, 1), 1, "{digest}");
    }

    // `late` comes, with an empty disk: what it owns it asks its successor
    // for, a copy held, not a fetch.
    let second = Lasti::start_with(replica(&registry, &late, &members), None).await;
    let out = work.path().join("through-late");
    skopeo::pull_and_check(&second.host(), "joined", &image, &out, false).await;
    std::thread::sleep(Duration::from_millis(300));
    for digest in &blobs {
        assert_eq!(registry.blob_gets(digest), 1, "{digest} fetched once");
    }

    // Asked only for what it holds, a replica never fetches.
    let unknown = Digest::sha256_of(b"held by no one").to_string();
    let url = format!("http://{early}/v2/library/joined/blobs/{unknown}?ns=docker.io");
    let reply = http::get(
        &url,
        &[
            ("authorization", "Bearer replicas-of-one-test"),
            ("cache-control", "only-if-cached"),
        ],
    )
    .await;
    assert_eq!(reply.status, 404);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(registry.blob_gets(&unknown), 0, "nothing asked upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_joins_during_its_successors_fetch_follows_that_fetch() {
    let registry = Registry::start();
    // 2 MiB/s: a 4 MiB layer takes two seconds, time for a replica to join.
    let throttle = Throttle::start(&registry.host(), "2m");
    let work = TempDir::new().unwrap();
    let (late, early) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let members = vec![late.clone(), early.clone()];
    let spec = ImageSpec::linux_amd64(33, &[4 * 1024 * 1024; 4]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "during", &spec).await;
    let digest = owned_by(&late, &members, &image.layer_digests)
        .into_iter()
        .next()
        .expect("the replica that joins owns a layer");

    // `late` is away: `early` fetches the layer from the upstream itself.
    let first = Lasti::start_with(replica_of(&throttle.url(), &early, &members), None).await;
    let url = |host: &str| format!("http://{host}/v2/library/during/blobs/{digest}");
    let early_url = url(&first.host());
    let through_early = tokio::spawn(async move { http::get(&early_url, &[]).await });
    let admin = first.admin_url();
    let fetching = http::metric_reaches(&admin, "lasti_fetches_in_flight", &[], 1).await;
    assert_eq!(fetching, 1, "early fetches the layer");

    // `late` joins meanwhile and is asked for the layer it owns: it follows
    // its successor's fetch instead of starting one of its own.
    let second = Lasti::start_with(replica_of(&throttle.url(), &late, &members), None).await;
    let still = http::metric(&admin, "lasti_fetches_in_flight", &[]).await;
    assert_eq!(still, 1, "late joined while early fetched");
    let through_late = http::get(&url(&second.host()), &[]).await;
    let through_early = through_early.await.unwrap();
    for reply in [&through_early, &through_late] {
        assert_eq!(reply.status, 200);
        assert_eq!(Digest::sha256_of(&reply.body).to_string(), digest);
    }
    assert_eq!(registry.settled_blob_gets(&digest, 1), 1, "fetched once");
}

/// A restarted owner asked by another replica for a blob its successor is
/// fetching follows that fetch: in a rolling restart, the replica that
/// stood in for it and the one asking it must not cost two upstream GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_owner_asked_by_a_peer_follows_its_successors_fetch() {
    let registry = Registry::start();
    // 2 MiB/s: a 4 MiB layer takes two seconds, time for the owner to return.
    let throttle = Throttle::start(&registry.host(), "2m");
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(34, &[4 * 1024 * 1024]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "rolled", &spec).await;
    let digest = image.layer_digests[0].clone();
    // Addresses that rank `owner`, `successor`, `asker` for the layer.
    let members = loop {
        let members: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        if rendezvous::ranked(&members, &Digest::parse(&digest).unwrap()) == members {
            break members;
        }
    };
    let (owner, successor, asker) = (&members[0], &members[1], &members[2]);
    let config = |me: &str| replica_of(&throttle.url(), me, &members);

    // The owner is away: its successor fetches the layer itself.
    let standing_in = Lasti::start_with(config(successor), None).await;
    let third = Lasti::start_with(config(asker), None).await;
    let url = |host: &str| format!("http://{host}/v2/library/rolled/blobs/{digest}");
    let first_url = url(&standing_in.host());
    let first = tokio::spawn(async move { http::get(&first_url, &[]).await });
    let admin = standing_in.admin_url();
    let fetching = http::metric_reaches(&admin, "lasti_fetches_in_flight", &[], 1).await;
    assert_eq!(fetching, 1, "the successor fetches the layer");

    // The owner comes back with an empty disk, and the third replica asks
    // it for the layer: it follows its successor's fetch.
    let back = Lasti::start_with(config(owner), None).await;
    let v2 = format!("{}/v2/", back.url());
    while http::get(&v2, &[]).await.status != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still = http::metric(&admin, "lasti_fetches_in_flight", &[]).await;
    assert_eq!(still, 1, "the owner came back during the fetch");
    let second = http::get(&url(&third.host()), &[]).await;
    let first = first.await.unwrap();
    for reply in [&first, &second] {
        assert_eq!(reply.status, 200);
        assert_eq!(Digest::sha256_of(&reply.body).to_string(), digest);
    }
    let peer = ["tier=\"peer\""];
    let fills = "lasti_fill_sources_total";
    let through = http::metric_reaches(&third.admin_url(), fills, &peer, 1).await;
    assert_eq!(through, 1, "the third replica had it through the owner");
    assert_eq!(registry.settled_blob_gets(&digest, 1), 1, "fetched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_on_its_address_is_taken_back_at_once() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let (_, before) = skopeo::push_image(
        &registry.host(),
        work.path(),
        "before",
        &ImageSpec::linux_amd64(30, &[4096; 8]),
    )
    .await;
    let (_, after) = skopeo::push_image(
        &registry.host(),
        work.path(),
        "after",
        &ImageSpec::linux_amd64(31, &[4096; 8]),
    )
    .await;
    let (asker, back) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let members = vec![asker.clone(), back.clone()];
    let theirs = owned_by(&back, &members, &after.blob_digests());
    assert!(
        !theirs.is_empty(),
        "the replica that comes back owns some blobs"
    );

    // While `back` is away, `asker` finds it down and fetches by itself.
    let first = Lasti::start_with(replica(&registry, &asker, &members), None).await;
    let out = work.path().join("pulled-before");
    skopeo::pull_and_check(&first.host(), "before", &before, &out, false).await;
    let admin = first.admin_url();
    let failed = ["result=\"failed\""];
    assert!(http::metric(&admin, "lasti_peer_fetches_total", &failed).await >= 1);

    // It comes back on the same address and greets the others: its blobs
    // are asked of it at once, not after the note that it was down ran out.
    let second = Lasti::start_with(replica(&registry, &back, &members), None).await;
    // It serves clients once its greeting is answered.
    let v2 = format!("{}/v2/", second.url());
    while http::get(&v2, &[]).await.status != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = work.path().join("pulled-after");
    skopeo::pull_and_check(&first.host(), "after", &after, &out, false).await;
    let fills = "lasti_fill_sources_total";
    assert_eq!(
        http::metric_reaches(&admin, fills, &["tier=\"peer\""], theirs.len() as u64).await,
        theirs.len() as u64,
        "every blob it owns came from it"
    );
}

/// How many back-fill jobs a replica has, whatever their state.
fn jobs(status: &serde_json::Value) -> usize {
    ["pending", "recent", "failed"]
        .iter()
        .map(|list| status[list].as_array().map(Vec::len).unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_served_by_two_replicas_is_back_filled_by_its_owner_alone() {
    let registry = Registry::start();
    let token = "sa-token-of-the-project";
    let target = Registry::start_with(common::registry::RegistryOptions {
        htpasswd: Some(("unused".into(), token.into())),
        ..Default::default()
    });
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(28, &[4096, 8192]);
    let (_, image) = skopeo::push_image(&registry.host(), work.path(), "filled", &spec).await;
    let members = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let owner = rendezvous::ranked(&members, &Digest::parse(&image.manifest_digest).unwrap())[0]
        .to_string();
    let mut replicas = Vec::new();
    for me in &members {
        let mut config = replica(&registry, me, &members);
        config.target.url = Some(url::Url::parse(&target.url()).unwrap());
        config.target.project = Some("proj".into());
        config.target.token = Some(Secret::new(token.into()));
        replicas.push(Lasti::start_with(config, None).await);
    }
    for (i, lasti) in replicas.iter().enumerate() {
        let out = work.path().join(format!("through-{i}"));
        skopeo::pull_and_check(&lasti.host(), "filled", &image, &out, false).await;
    }
    let at_owner = members.iter().position(|m| *m == owner).unwrap();
    let status = replicas[at_owner]
        .backfill_status_when(Duration::from_secs(30), |s| {
            s["recent"].as_array().is_some_and(|r| r.len() == 1)
        })
        .await;
    assert_eq!(status["recent"][0]["target_repo"], "proj/filled");
    let other = replicas[1 - at_owner]
        .backfill_status_when(Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(
        jobs(&other),
        0,
        "the other replica forwarded its offer: {other:#}"
    );
    let admin = replicas[at_owner].admin_url();
    assert!(
        http::metric(&admin, "lasti_peer_requests_total", &["outcome=\"offer\""]).await >= 1,
        "the owner took the other's offer"
    );
}
