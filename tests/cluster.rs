//! Replicas as one cache, with real parts: lasti replicas on loopback that
//! know each other (static peer lists), one Garage bucket, and the real
//! CNCF distribution registry behind nginx with `limit_rate` (a slow
//! upstream, so fills overlap). A burst of cold `skopeo copy --all` spread
//! over three replicas fetches each blob from the registry once; a fourth
//! replica with an empty disk serves the image from the bucket; an owner
//! killed in the middle of a fill costs its askers nothing but time, and
//! leaves nothing wrong on a disk or in the bucket.

mod common;

use ::lasti::config::Config;
use ::lasti::oci::Digest;
use common::garage::Garage;
use common::http;
use common::lasti::{config as lasti_config, total, total_reaches, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec, Layout};
use common::process::Setup;
use common::registry::Registry;
use common::s3::{blob_key, Store};
use common::skopeo;
use common::throttle::Throttle;
use common::{checks, free_port};
use tempfile::TempDir;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Pushes `library/<name>:v1` straight to the registry; the layout keeps the blobs.
async fn push_image(
    registry: &Registry,
    work: &TempDir,
    name: &str,
    sizes: &[usize],
) -> (Layout, BuiltImage) {
    let spec = ImageSpec::linux_amd64(11, sizes);
    skopeo::push_image(&registry.host(), work.path(), name, &spec).await
}

/// Peer addresses for `n` replicas on loopback.
fn members(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect()
}

/// A replica `me` of the cluster `members`, pulling from `front`.
fn replica(front: &Throttle, garage: &Garage, me: &str, members: &[String]) -> Config {
    let mut config = lasti_config(&[("docker.io", &front.url())]);
    garage.configure(&mut config);
    config.cluster.listen = Some(me.parse().unwrap());
    config.cluster.peers = members.to_vec();
    config.cluster.secret = Some(lasti::secret::Secret::new(SECRET.into()));
    config
}

/// The secret the replicas of a test share.
const SECRET: &str = "replicas-of-one-test";

/// Pulls `library/<name>:v1` (all platforms) through `host` with skopeo,
/// which verifies every digest, into `out`; checks it is `image`, whole.
async fn pull_and_check(host: &str, name: &str, image: &BuiltImage, out: &std::path::Path) {
    skopeo::pull_and_check(host, name, image, out, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_three_replicas_fetches_each_blob_from_the_upstream_once() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let (_, image) = push_image(&registry, &work, "app", &[64 * KIB, 2 * MIB, 6 * MIB]).await;
    let front = Throttle::start(&registry.host(), "2m");
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let mut names = members(3);
    let mut replicas = Vec::new();
    for me in &names {
        let config = replica(&front, &garage, me, &names);
        replicas.push(Lasti::start_with(config, None).await);
    }

    let pulls = (0..48).map(|i| {
        let host = replicas[i % replicas.len()].host();
        let out = work.path().join(format!("pull-{i}"));
        let image = &image;
        async move { pull_and_check(&host, "app", image, &out).await }
    });
    futures_util::future::join_all(pulls).await;

    let blobs = image.blob_digests();
    for digest in &blobs {
        let gets = registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 2);
        assert_eq!(
            gets, 1,
            "one upstream GET for {digest} in the whole cluster"
        );
    }
    // The tag was resolved once for the cluster, by its owner: Docker Hub
    // counts every manifest GET as a pull.
    assert_eq!(
        registry.wait_for_requests("GET", "/manifests/", 2),
        1,
        "one upstream manifest GET in the whole cluster"
    );
    let count = blobs.len() as u64;
    let fills = "lasti_fill_sources_total";
    // A fill is counted just after its last byte is released: wait for the
    // counts to settle before comparing them.
    total_reaches(&replicas, fills, &[], 3 * count).await;
    assert_eq!(total(&replicas, fills, &["tier=\"upstream\""]).await, count);
    let from_peers = total(&replicas, fills, &["tier=\"peer\""]).await;
    let from_bucket = total(&replicas, fills, &["tier=\"bucket\""]).await;
    assert_eq!(
        from_peers + from_bucket,
        2 * count,
        "every other replica filled from the owner (or, once it had published, the bucket)"
    );
    assert!(from_peers > 0, "the burst was served by the owners");
    let served = "lasti_peer_requests_total";
    assert!(total(&replicas, served, &[]).await >= from_peers);
    assert_eq!(
        total(&replicas, "lasti_peer_fetches_total", &["failed"]).await,
        0
    );

    // Every owner publishes what it fetched, and the tag and its manifest
    // are recorded; then a replica that joins with an empty disk serves the
    // image from the bucket without a single request to the registry.
    let puts = "lasti_bucket_requests_total";
    for (op, want) in [("put", count), ("manifest_put", 1), ("tag_put", 1)] {
        let labels = [format!("op=\"{op}\""), "stored".to_string()];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let stored = total_reaches(&replicas, puts, &labels, want).await;
        assert!(stored >= want, "{op} reaches the bucket");
    }
    let requests_before = registry.all_requests();
    let fourth_name = members(1).remove(0);
    names.push(fourth_name.clone());
    let fourth = Lasti::start_with(replica(&front, &garage, &fourth_name, &names), None).await;
    pull_and_check(&fourth.host(), "app", &image, &work.path().join("fourth")).await;
    for digest in &blobs {
        assert_eq!(registry.blob_gets(digest), 1, "still one GET for {digest}");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        registry.all_requests(),
        requests_before,
        "the fourth replica asked the registry nothing: tag, manifest and blobs came from the bucket"
    );
    let admin = fourth.admin_url();
    assert_eq!(
        http::metric_reaches(&admin, fills, &["tier=\"bucket\""], count).await,
        count
    );
    assert_eq!(http::metric(&admin, fills, &["tier=\"upstream\""]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_mid_fill_leaves_every_copy_whole() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let (layout, image) = push_image(&registry, &work, "big", &[KIB, 40 * MIB]).await;
    // 40 MiB at 8 MiB/s: the owner is well inside the fill when it dies.
    let front = Throttle::start(&registry.host(), "8m");
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let bucket = garage.config_section(work.path(), &garage.endpoint(), "");
    let names = members(2);
    let big = image.layer_digests[1].clone();
    let owner_name = ::lasti::cluster::rendezvous::owner(&names, &Digest::parse(&big).unwrap())
        .unwrap()
        .to_string();
    let setups: Vec<Setup> = names
        .iter()
        .map(|me| {
            let dir = work.path().join(me.replace(':', "_"));
            std::fs::create_dir_all(&dir).unwrap();
            let peers = names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let secret = dir.join("cluster-secret");
            std::fs::write(&secret, SECRET).unwrap();
            let cluster = format!(
                "[cluster]\nlisten = {me:?}\npeers = [{peers}]\nsecret_file = {secret:?}\n{bucket}"
            );
            Setup::write(&dir, &front.url(), "", &cluster)
        })
        .collect();
    let owner_at = names.iter().position(|n| *n == owner_name).unwrap();
    let (owner_setup, asker_setup) = (&setups[owner_at], &setups[1 - owner_at]);
    let owner = owner_setup.start();
    let asker = asker_setup.start();

    let out = work.path().join("through-asker");
    let pull = {
        let (host, image, out) = (asker.api.clone(), image.clone(), out.clone());
        tokio::spawn(async move { pull_and_check(&host, "big", &image, &out).await })
    };
    let filling = http::metric_reaches(&owner.admin, "lasti_fetches_in_flight", &[], 1).await;
    assert_eq!(filling, 1, "the owner fetches the big layer for the asker");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    owner.kill_lasti();

    pull.await
        .expect("the pull through the asker completes and verifies");
    let asker_dir = work
        .path()
        .join(names[1 - owner_at].replace(':', "_"))
        .join("data");
    let bytes = std::fs::read(layout.blob_path(&big)).unwrap();
    checks::assert_stored(&asker_dir, &big, &bytes).await;
    let failed = http::metric(&asker.admin, "lasti_peer_fetches_total", &["failed"]).await;
    assert_eq!(
        failed, 1,
        "the asker saw its owner go and fetched the rest itself"
    );

    // What the asker fetched (from the owner, then from the registry) is
    // published whole: the object in the bucket has the blob's digest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let object = loop {
        match garage.request("GET", &blob_key(&big), None) {
            (200, object) => break object,
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            _ => panic!("{big} never reached the bucket"),
        }
    };
    assert!(object == bytes, "the bucket holds the whole, verified blob");

    // The owner comes back on its disk: whatever it kept is whole, and it
    // serves the image.
    let owner = owner_setup.start();
    let owner_dir = work.path().join(owner_name.replace(':', "_")).join("data");
    let kept = checks::blob_file(&owner_dir, &big);
    if kept.exists() {
        assert_eq!(std::fs::read(kept).unwrap(), bytes, "no wrong byte kept");
    }
    pull_and_check(
        &owner.api,
        "big",
        &image,
        &work.path().join("through-owner"),
    )
    .await;
    drop(asker);
}
