//! The proxy's own faults: SIGKILL at random points of cold fetches leaves
//! no corrupt cache, eviction under the quota never removes a blob a
//! client is still reading, and the order of recent uses survives a
//! restart, so what is evicted after it is what was least recently used.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::oci_layout::{ImageSpec, Layout};
use common::process::Setup;
use common::registry::Registry;
use common::skopeo;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Every file under `blobs/` hashes to its own name.
fn assert_store_verifies(data: &Path) -> usize {
    let mut checked = 0;
    let root = data.join("blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return 0;
    };
    for prefix in prefixes {
        for entry in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                name,
                "{} is corrupt",
                path.display()
            );
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_cold_fetches_never_leaves_a_corrupt_cache() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(100, &[12 * 1024 * 1024, 700 * 1024]);
    let (layout, image) = Layout::single(&work.path().join("img"), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/k:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    let data = work.path().join("data");
    let setup = Setup::write(work.path(), &registry.url(), "", "");

    for round in 0..8 {
        let lasti = setup.start();
        assert_eq!(
            std::fs::read_dir(data.join("tmp")).unwrap().count(),
            0,
            "round {round}: temp files cleaned at start"
        );
        assert_store_verifies(&data);
        // Evict what the last round stored so every round fetches cold.
        let _ = std::fs::remove_dir_all(data.join("blobs"));
        drop(lasti);
        let lasti = setup.start();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        for digest in &image.layer_digests {
            let url = format!("http://{}/v2/library/k/blobs/{digest}", lasti.api);
            let client = client.clone();
            tokio::spawn(async move {
                if let Ok(response) = client.get(url.parse().unwrap()).await {
                    let _ = response.into_body().collect().await;
                }
            });
        }
        let delay = rand::thread_rng().gen_range(5..120);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        lasti.kill_lasti();
    }
    let lasti = setup.start();
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    let out = work.path().join("final");
    skopeo::pull_to_dir(&format!("{}/library/k:v1", lasti.api), &out, false)
        .await
        .unwrap();
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    assert_eq!(skopeo::dir_digests(&out), expected);
    assert!(assert_store_verifies(&data) >= image.layer_digests.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_removes_a_blob_being_read() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let mib = 1024 * 1024;
    // A is large enough that lasti is still streaming it (socket buffers
    // hold a few MiB) while B and C arrive.
    let spec = ImageSpec::linux_amd64(110, &[24 * mib, 3 * mib, 3 * mib]);
    let (layout, image) = Layout::single(&work.path().join("img"), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/e:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    let mut cfg = common::lasti::config(&[("docker.io", &registry.url())]);
    cfg.cache.max_size = bytesize::ByteSize::mib(26);
    let lasti = common::lasti::Lasti::start_with(cfg, None).await;
    let url = |d: &str| format!("{}/v2/library/e/blobs/{d}", lasti.url());
    let path = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        lasti
            .data_dir()
            .join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
    };
    let [a, b, c] = [
        &image.layer_digests[0],
        &image.layer_digests[1],
        &image.layer_digests[2],
    ];

    assert_eq!(
        common::http::get(&url(a), &[]).await.body.len(),
        24 * mib,
        "A cached"
    );
    // The fill commits just after its last byte went out; wait for it, so
    // the slow reader below reads the stored blob (a reader of a fill in
    // progress reads the open temporary file, which eviction cannot take away).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !path(a).exists() {
        assert!(std::time::Instant::now() < deadline, "A was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A slow reader holds A open. A small receive buffer keeps the kernel
    // from taking the whole blob off lasti's hands (tcp_rmem may be 32 MiB).
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_recv_buffer_size(Some(64 * 1024));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut body = client
        .get(url(a).parse().unwrap())
        .await
        .unwrap()
        .into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    // B and C push the cache past its 26 MiB quota.
    for d in [b, c] {
        assert_eq!(common::http::get(&url(d), &[]).await.body.len(), 3 * mib);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(path(a).exists(), "A is being read: never evicted");
    assert!(
        !path(b).exists(),
        "the least recently used unread blob went"
    );
    let mut hasher = Sha256::new();
    hasher.update(&first);
    while let Some(frame) = body.frame().await {
        hasher.update(frame.unwrap().into_data().unwrap());
    }
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        a.as_str(),
        "the reader finished whole"
    );
    // B comes back from the upstream when asked again.
    assert_eq!(common::http::get(&url(b), &[]).await.body.len(), 3 * mib);
    assert_eq!(
        registry.wait_for_requests("GET", &format!("/blobs/{b}"), 2),
        2
    );
}

/// Blobs stored first but used since are the most recently used after a
/// restart: restarted with a quota that holds a third of the cache, lasti
/// evicts the blobs nobody asked for again and keeps the hot ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_used_last_survives_a_restart_with_a_smaller_quota() {
    use common::fake_upstream::{blob_path, random_blob, FakeUpstream};
    let fake = FakeUpstream::start().await;
    let digests: Vec<String> = (0..12)
        .map(|_| fake.put_blob(random_blob(64 * 1024)))
        .collect();
    let cfg = common::lasti::config(&[("docker.io", &fake.url())]);
    let lasti = common::lasti::Lasti::start_with(cfg.clone(), None).await;
    let get = |digest: &str| {
        let url = format!("{}{}", lasti.url(), blob_path("team/app", digest));
        async move { common::http::get(&url, &[]).await }
    };
    for digest in &digests {
        assert_eq!(get(digest).await.status, 200);
    }
    for digest in &digests {
        common::checks::eventually("stored", || {
            common::checks::blob_file(lasti.data_dir(), digest).exists()
        })
        .await;
    }
    // A second on (file times count seconds), the first four are used
    // again and again: the hot set.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (hot, cold) = digests.split_at(4);
    for _ in 0..5 {
        for digest in hot {
            assert_eq!(get(digest).await.status, 200);
        }
    }
    let data = lasti.stop().await;

    let mut smaller = cfg;
    smaller.cache.max_size = bytesize::ByteSize::kib(6 * 64);
    let lasti = common::lasti::Lasti::start_with(smaller, Some(data)).await;
    let dir = lasti.data_dir().to_path_buf();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let kept = cold
            .iter()
            .filter(|d| common::checks::blob_file(&dir, d).exists())
            .count();
        if kept <= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kept} cold blobs still kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for digest in hot {
        assert!(
            common::checks::blob_file(&dir, digest).exists(),
            "a hot blob was evicted: {digest}"
        );
    }
}
