//! One hostile client must not take the service from everyone else. lasti
//! runs as its own process (so its memory can be read from /proc), and a
//! well-behaved client pulls beside each attack:
//!
//! - HTTP/2 streams that ask for a blob and never open their window (what
//!   `h2load -w 0` does), many connections of 128 streams each: each
//!   connection holds at most its share of the open-file budget, each
//!   stalled stream a small piece of memory, and the attacker's
//!   connections are closed once their streams stall past the grace;
//! - silent sockets reopened as soon as they are closed, more of them
//!   than lasti has connection slots: they give their slots up to new
//!   connections, so the good client's requests all complete at once.
//!
//! The attackers are hand-written on the `h2` crate and raw TCP, on
//! loopback; the upstream is an in-test fake with one blob.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::checks::{blob_file, within};
use common::fake_upstream::{blob_path, random_blob, FakeUpstream};
use common::h2_client::zero_window_streams;
use common::http;
use common::process::{Process, Setup};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const REPO: &str = "team/app";
const MIB: usize = 1024 * 1024;
/// Streams lasti lets one HTTP/2 connection open.
const STREAMS: usize = 128;
/// How soon a well-behaved request must be answered during an attack.
const PROMPTLY: Duration = Duration::from_secs(1);
/// Generous bound for what should happen within a few seconds.
const SOON: Duration = Duration::from_secs(15);

/// lasti as a process with `access` lines, and a cached 1 MiB blob (too
/// large to be held in memory, so each response reads its file).
async fn lasti_with_blob(
    work: &Path,
    fake: &FakeUpstream,
    access: &str,
) -> (Process, String, Bytes) {
    let setup = Setup::write(work, &fake.url(), "", &format!("[access]\n{access}"));
    let lasti = setup.start();
    let blob = random_blob(MIB);
    let digest = fake.put_blob(blob.clone());
    let reply = http::get(&blob_url(&lasti, &digest), &[]).await;
    assert_eq!(reply.status, 200);
    let file = blob_file(&work.join("data"), &digest);
    let deadline = Instant::now() + SOON;
    while !file.exists() {
        assert!(Instant::now() < deadline, "the blob is cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (lasti, digest, blob)
}

fn blob_url(lasti: &Process, digest: &str) -> String {
    format!("http://{}{}", lasti.api, blob_path(REPO, digest))
}

/// What lasti itself holds in memory (`RssAnon`), in MiB.
fn rss_anon_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A well-behaved client: the blob, whole, within [`PROMPTLY`].
async fn served_promptly(url: &str, blob: &Bytes, during: &str) {
    let started = Instant::now();
    let reply = tokio::time::timeout(PROMPTLY, http::get(url, &[]))
        .await
        .unwrap_or_else(|_| panic!("{during}: a blob GET took over {PROMPTLY:?}"));
    assert_eq!(reply.status, 200, "{during}: {:?}", reply.body);
    assert!(reply.body == *blob, "{during}: the whole blob");
    assert!(started.elapsed() < PROMPTLY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_cannot_take_the_blob_service_from_others() {
    within(async {
        let work = TempDir::new().unwrap();
        let fake = FakeUpstream::start().await;
        // 400 blob responses at once, eight connections: a share of 50
        // each. Before, four attacking connections took all 400.
        let access = "max_open_blobs = 400\nmax_connections = 8\nsend_stall_grace = \"2s\"";
        let (lasti, digest, blob) = lasti_with_blob(work.path(), &fake, access).await;
        let url = blob_url(&lasti, &digest);
        let pid = lasti.pid();
        served_promptly(&url, &blob, "before").await;
        let before = rss_anon_mib(&pid);

        let path = blob_path(REPO, &digest);
        let (mut attackers, mut held) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let opened = zero_window_streams(&lasti.api, &path, STREAMS).await;
            let (connection, statuses, bodies) =
                (opened.connection, opened.statuses, opened.bodies);
            held.push(statuses.iter().filter(|s| **s == 200).count());
            assert!(
                statuses.iter().all(|s| *s == 200 || *s == 429),
                "{statuses:?}"
            );
            attackers.push((connection, bodies));
        }
        // The first takes all it asks for, the second up to half the
        // budget; from then on each holds its share.
        assert_eq!(held, [128, 72, 50, 50], "places held per connection");
        let during = rss_anon_mib(&pid);
        for _ in 0..5 {
            served_promptly(&url, &blob, "the attack").await;
        }
        // 300 stalled responses of a 1 MiB blob: a small piece each, not a
        // 256 KiB read (75 MiB).
        assert!(
            during - before < 24.0,
            "lasti grew {:.1} MiB for the stalled streams",
            during - before
        );

        // Past the grace, the attacking connections are closed.
        let deadline = Instant::now() + SOON;
        while !attackers.iter().all(|(c, _)| c.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "the attackers' connections are closed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served_promptly(&url, &blob, "after").await;
    })
    .await;
}

/// Keeps `sockets` connections open to `addr` that send nothing; each one
/// lasti closes is opened again at once, until `stop`.
fn silent_sockets(addr: &str, sockets: usize, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<usize>> {
    (0..sockets)
        .map(|_| {
            let (addr, stop) = (addr.to_string(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut opened = 0;
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut socket) = TcpStream::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    opened += 1;
                    let mut buf = [0u8; 64];
                    loop {
                        let read = socket.read(&mut buf);
                        match tokio::time::timeout(Duration::from_millis(200), read).await {
                            Ok(Ok(0) | Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) if stop.load(Ordering::SeqCst) => break,
                            Err(_) => {}
                        }
                    }
                }
                opened
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_reopened_at_once_cannot_keep_a_client_out() {
    within(async {
        let work = TempDir::new().unwrap();
        let fake = FakeUpstream::start().await;
        // Twenty slots, and sixty silent sockets that would hold each one
        // for the 30 s header_read_timeout.
        let access = "max_connections = 20\nheader_read_timeout = \"30s\"";
        let (lasti, digest, blob) = lasti_with_blob(work.path(), &fake, access).await;
        let stop = Arc::new(AtomicBool::new(false));
        let attackers = silent_sockets(&lasti.api, 60, &stop);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let url = blob_url(&lasti, &digest);
        for _ in 0..10 {
            served_promptly(&url, &blob, "silent sockets").await;
            // A client of its own, on a new connection each time.
            let started = Instant::now();
            let mut client = TcpStream::connect(&lasti.api).await.unwrap();
            let request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            client.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(PROMPTLY, client.read_to_end(&mut answer))
                .await
                .expect("answered promptly")
                .unwrap();
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
            assert!(started.elapsed() < PROMPTLY);
        }
        stop.store(true, Ordering::SeqCst);
        let mut reopened = 0;
        for attacker in attackers {
            reopened += attacker.await.unwrap();
        }
        assert!(
            reopened > 60,
            "lasti closed silent sockets for the client: {reopened}"
        );
        let shed = http::metric(
            &lasti.admin,
            "lasti_connections_shed_total",
            &["reason=\"unproven\""],
        )
        .await;
        assert!(shed > 0, "counted as shed");
    })
    .await;
}
