//! Load, bounded in time and count, loopback only. These take minutes, so
//! they are ignored by a plain `cargo test` and run by `scripts/test`
//! (`--include-ignored`), which CI calls.
//!
//! - 1,000 concurrent connections mixing cache hits, coalesced cold misses
//!   and range requests: no errors, every byte verified, lasti's resident
//!   memory flat (the figure is printed) and its file descriptors released.
//! - 64 clients pulling one 1 GiB blob cold at once: one upstream GET, every
//!   client verifies the whole blob.
//!
//! `LASTI_LOAD_SECONDS` (default 300) and `LASTI_LOAD_BIG_MIB` (default 1024)
//! change the duration and the big blob's size.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::oci_layout::{ImageSpec, Layout};
use common::process::{Process, Setup};
use common::registry::Registry;
use common::skopeo;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

const CONNECTIONS: usize = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A memory figure of a process from /proc (`VmRSS`, `RssAnon`), in MiB.
/// `VmRSS` also counts the page cache pages of mapped cache files once per
/// mapping; `RssAnon` is the memory lasti itself holds.
fn memory_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Fails early, and says why, when the disk cannot hold what a test stores:
/// on a full disk lasti streams misses without caching them, by design, and
/// a reader that fell behind such a fill is cut off, which would look like
/// a bug here.
fn require_free_disk(gib: u64) {
    let dir = std::env::temp_dir();
    let stat = rustix::fs::statvfs(&dir).expect("statvfs");
    let free = stat.f_bavail * stat.f_frsize;
    assert!(
        free >= gib << 30,
        "{} has {} MiB free; this load test needs {gib} GiB",
        dir.display(),
        free >> 20
    );
}

fn rss_mib(pid: &str) -> f64 {
    memory_mib(pid, "VmRSS:")
}

fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// lasti with no cap on upstream fetches per client (all load comes from
/// one address), killed after `lifetime` whatever happens.
fn start_lasti(work: &TempDir, registry: &Registry, lifetime: Duration) -> Process {
    let sections = "[access]\nmax_upstream_fetches = 0";
    Setup::write(work.path(), &registry.url(), "", sections)
        .lifetime(lifetime)
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: minutes; run by scripts/test"]
async fn a_thousand_connections_of_hits_misses_and_ranges() {
    require_free_disk(1);
    // The clients' thousand sockets live in this process: a shell's soft
    // limit of 1,024 descriptors would not hold them. lasti raises its own.
    lasti::server::open_files::raise_limit().expect("raise the open-file limit");
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    // 16 small blobs to hit, 16 larger ones first asked for under load.
    let hot = ImageSpec::linux_amd64(200, &[256 * 1024; 16]);
    let cold = ImageSpec::linux_amd64(201, &[1024 * 1024; 16]);
    let (hot_layout, hot_image) = Layout::single(&work.path().join("hot"), &hot, "v1");
    let (cold_layout, cold_image) = Layout::single(&work.path().join("cold"), &cold, "v1");
    for (layout, repo) in [(&hot_layout, "hot"), (&cold_layout, "cold")] {
        skopeo::push_layout(
            &layout.dir,
            "v1",
            &format!("{}/library/{repo}:v1", registry.host()),
            false,
        )
        .await
        .unwrap();
    }
    let blob = |layout: &Layout, digest: &str| {
        Bytes::from(std::fs::read(layout.blob_path(digest)).unwrap())
    };
    let hot_blobs: Arc<Vec<(String, Bytes)>> = Arc::new(
        hot_image
            .layer_digests
            .iter()
            .map(|d| (d.clone(), blob(&hot_layout, d)))
            .collect(),
    );
    let cold_blobs: Arc<Vec<(String, Bytes)>> = Arc::new(
        cold_image
            .layer_digests
            .iter()
            .map(|d| (d.clone(), blob(&cold_layout, d)))
            .collect(),
    );

    let seconds = env_u64("LASTI_LOAD_SECONDS", 300);
    // The run, plus time to set up and to check the figures afterwards.
    let lasti = start_lasti(&work, &registry, Duration::from_secs(seconds + 240));
    let pid = lasti.pid();
    skopeo::pull_to_dir(
        &format!("{}/library/hot:v1", lasti.api),
        &work.path().join("warm"),
        false,
    )
    .await
    .unwrap();
    let (fds_before, rss_idle) = (open_fds(&pid), rss_mib(&pid));

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let (hot, cold, api) = (
            Arc::clone(&hot_blobs),
            Arc::clone(&cold_blobs),
            lasti.api.clone(),
        );
        let (requests, bytes) = (Arc::clone(&requests), Arc::clone(&bytes));
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per task.
            let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http();
            while Instant::now() < deadline {
                let pick = rand::thread_rng().gen_range(0..10);
                let (repo, (digest, content), range) = match pick {
                    0..=4 => ("hot", &hot[i % hot.len()], None),
                    5..=6 => ("cold", &cold[i % cold.len()], None),
                    _ => {
                        let (d, c) = &hot[(i + pick) % hot.len()];
                        let start = rand::thread_rng().gen_range(0..c.len() - 1);
                        let end = rand::thread_rng().gen_range(start..c.len());
                        ("hot", &(d.clone(), c.clone()), Some((start, end)))
                    }
                };
                let url = format!("http://{api}/v2/library/{repo}/blobs/{digest}");
                let mut request = http::Request::get(url.as_str());
                if let Some((s, e)) = range {
                    request = request.header(http::header::RANGE, format!("bytes={s}-{e}"));
                }
                let response = client
                    .request(request.body(Empty::new()).unwrap())
                    .await
                    .expect("request");
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("a whole body")
                    .to_bytes();
                match range {
                    Some((s, e)) => {
                        assert_eq!(status, 206);
                        assert_eq!(body, content.slice(s..=e), "range bytes");
                    }
                    None => {
                        assert_eq!(status, 200);
                        assert_eq!(
                            format!("sha256:{}", hex::encode(Sha256::digest(&body))),
                            *digest
                        );
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let (mut rss_max, mut anon_max) = (0f64, 0f64);
    while Instant::now() < deadline {
        rss_max = rss_max.max(rss_mib(&pid));
        anon_max = anon_max.max(memory_mib(&pid, "RssAnon:"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for task in tasks {
        task.await.expect("no client saw an error");
    }
    rss_max = rss_max.max(rss_mib(&pid));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds_after = open_fds(&pid);
    let total = requests.load(Ordering::Relaxed);
    println!(
        "load: {CONNECTIONS} connections, {seconds} s, {total} requests, {} MiB, lasti RSS idle {rss_idle:.1} MiB, max {rss_max:.1} MiB (anonymous max {anon_max:.1} MiB), fds {fds_before} -> {fds_after}",
        bytes.load(Ordering::Relaxed) / (1024 * 1024)
    );
    assert!(total > CONNECTIONS as u64, "every connection made requests");
    // VmRSS counts mapped cache pages once per mapping; what lasti itself
    // holds is its anonymous memory.
    assert!(
        anon_max < 256.0,
        "lasti's own memory stays bounded: {anon_max:.1} MiB (VmRSS {rss_max:.1} MiB)"
    );
    assert!(
        // Idle pooled upstream connections stay open for a while; a leak of
        // client connections would be in the hundreds.
        fds_after <= fds_before + 64,
        "file descriptors released: {fds_before} -> {fds_after}"
    );
    for (digest, _) in cold_blobs.iter() {
        let gets = registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 1);
        assert_eq!(
            gets, 1,
            "one upstream GET for a blob missed by many at once: {digest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: minutes; run by scripts/test"]
async fn sixty_four_clients_of_one_big_cold_blob_share_one_fetch() {
    // The layout, the registry's copy and lasti's: three times the blob.
    require_free_disk(4);
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let size = env_u64("LASTI_LOAD_BIG_MIB", 1024) as usize * 1024 * 1024;
    let (layout, image) = Layout::single(
        &work.path().join("big"),
        &ImageSpec::linux_amd64(300, &[size]),
        "v1",
    );
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/big:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    drop(layout);
    let lasti = start_lasti(&work, &registry, Duration::from_secs(600));
    let pid = lasti.pid();
    let digest = image.layer_digests[0].clone();
    let url = format!("http://{}/v2/library/big/blobs/{digest}", lasti.api);
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pid, rss_max) = (pid.clone(), Arc::clone(&rss_max));
        tokio::spawn(async move {
            loop {
                rss_max.fetch_max(rss_mib(&pid) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for _ in 0..64 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut body = client
                .get(url.parse().unwrap())
                .await
                .expect("request")
                .into_body();
            let (mut hasher, mut len) = (Sha256::new(), 0usize);
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame.expect("the stream completes").data_ref() {
                    hasher.update(data);
                    len += data.len();
                }
            }
            (format!("sha256:{}", hex::encode(hasher.finalize())), len)
        }));
    }
    for client in clients {
        let (got, len) = client.await.unwrap();
        assert_eq!(
            (got.as_str(), len),
            (digest.as_str(), size),
            "every client verifies the whole blob"
        );
    }
    sampler.abort();
    assert_eq!(
        registry.wait_for_requests("GET", &format!("/blobs/{digest}"), 1),
        1,
        "one upstream fetch"
    );
    let max = rss_max.load(Ordering::Relaxed);
    println!(
        "64 clients x {} MiB cold: lasti RSS max {max} MiB",
        size / (1024 * 1024)
    );
    assert!(max < 256, "memory stays flat: {max} MiB");
}

/// Latency quantiles of a set of requests, for the report.
fn quantiles(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    format!(
        "n {} p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        times.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

/// Hits of a cached blob and manifest, one after the other, until `until`
/// resolves; returns each one's time.
async fn hits_until(
    api: String,
    paths: Vec<String>,
    until: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut times = Vec::new();
    let mut n = 0;
    while !*until.borrow() {
        let url = format!("http://{api}{}", paths[n % paths.len()]);
        n += 1;
        let started = Instant::now();
        let response = client.get(url.parse().unwrap()).await.expect("hit");
        assert_eq!(response.status(), 200, "{url}");
        response.into_body().collect().await.expect("a whole hit");
        times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    times
}

/// The storm: 256 distinct cold misses from an upstream that sends each at
/// about 0.5 MiB/s, and meanwhile a steady stream of hits of a cached blob
/// and a cached manifest. The hits' latency is reported before and during
/// the storm, and every fill must still complete and verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: minutes; run by scripts/test"]
async fn hits_stay_fast_while_256_slow_misses_fill() {
    use common::fake_upstream::{image_manifest, random_blob, FakeUpstream, Fault};
    const MISSES: usize = 256;
    const MISS_SIZE: usize = 4 * 1024 * 1024;
    require_free_disk(2);
    let upstream = FakeUpstream::start().await;
    let hit_blob = upstream.put_blob(random_blob(1024 * 1024));
    let manifest = upstream.put_manifest("v1", image_manifest(b"{}", &[b"layer"]));
    let cold: Vec<(String, Bytes)> = (0..MISSES)
        .map(|_| {
            let bytes = random_blob(MISS_SIZE);
            let digest = upstream.put_blob(bytes.clone());
            let pause = Duration::from_millis(31);
            upstream.fault(
                &digest,
                Fault::Slow {
                    chunk: 16 * 1024,
                    pause,
                },
            );
            (digest, bytes)
        })
        .collect();
    let work = TempDir::new().unwrap();
    let lasti = Setup::write(
        work.path(),
        &upstream.url(),
        "",
        "[access]\nmax_upstream_fetches = 0",
    )
    .start();
    let paths = vec![
        format!("/v2/load/storm/blobs/{hit_blob}"),
        format!("/v2/load/storm/manifests/{manifest}"),
    ];
    let hitters = 4;
    let idle = {
        let (stop, until) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..hitters)
            .map(|_| tokio::spawn(hits_until(lasti.api.clone(), paths.clone(), until.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.send(true).unwrap();
        let mut times = Vec::new();
        for task in tasks {
            times.extend(task.await.unwrap());
        }
        times
    };

    let (stop, until) = tokio::sync::watch::channel(false);
    let hits: Vec<_> = (0..hitters)
        .map(|_| tokio::spawn(hits_until(lasti.api.clone(), paths.clone(), until.clone())))
        .collect();
    let started = Instant::now();
    let misses: Vec<_> = cold
        .into_iter()
        .map(|(digest, content)| {
            let url = format!("http://{}/v2/load/storm/blobs/{digest}", lasti.api);
            tokio::spawn(async move {
                let client: Client<_, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let response = client.get(url.parse().unwrap()).await.expect("miss");
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.expect("a whole miss");
                assert!(body.to_bytes() == content, "the miss of {digest} is right");
            })
        })
        .collect();
    for miss in misses {
        miss.await.expect("every miss completes");
    }
    let fill_time = started.elapsed();
    stop.send(true).unwrap();
    let mut during = Vec::new();
    for task in hits {
        during.extend(task.await.unwrap());
    }
    let slowest = *during.iter().max().unwrap();
    println!(
        "storm: {MISSES} fills of {} MiB at ~0.5 MiB/s took {:.1} s; hits idle: {}; hits during: {}",
        MISS_SIZE >> 20,
        fill_time.as_secs_f64(),
        quantiles(idle),
        quantiles(during)
    );
    let hit_path = common::fake_upstream::blob_path("load/storm", &hit_blob);
    assert_eq!(upstream.gets(&hit_path), 1, "the hit blob was fetched once");
    // A liveness bound, far above the figure it reports: a hit queued
    // behind the fills' threads took seconds.
    assert!(
        slowest < Duration::from_secs(1),
        "a hit waited {slowest:?} behind the fills"
    );
}
