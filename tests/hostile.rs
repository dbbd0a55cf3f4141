//! Hostile clients and upstreams, table-driven: each case gets a clear
//! answer (or a closed connection), nothing is stored, and lasti keeps
//! serving afterwards. Name, digest and Range abuse is in `tests/api.rs`;
//! corrupt, cut, endless-stall, oversized and redirect-looping upstreams in
//! `tests/faults*.rs`. See docs/security.md for the full table.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::fake_upstream::{FakeUpstream, Fault};
use common::lasti::{config, Lasti};

/// Sends raw bytes and returns what came back before the server closed the
/// connection (or the read timed out).
fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

fn still_serving(addr: SocketAddr) {
    assert_eq!(
        common::http_get_status(addr, "/v2/", None).unwrap(),
        200,
        "lasti still serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_clear_answers_and_change_nothing() {
    let fake = FakeUpstream::start().await;
    let mut cfg = config(&[("docker.io", &fake.url())]);
    cfg.access.header_read_timeout = Duration::from_secs(1);
    let lasti = Lasti::start_with(cfg, None).await;
    let addr = lasti.addr;
    let huge_header = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let huge_uri = format!(
        "GET /v2/{}/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "a/".repeat(50 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("oversized header", huge_header.into_bytes(), "431"),
        ("oversized URI", huge_uri.into_bytes(), "431"),
        (
            "garbage request line",
            b"\x00\x01\x02 nonsense\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "slow client, headers never end",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_vec(),
            "",
        ),
        (
            "absolute-form traversal",
            b"GET http://x/v2/../../etc/manifests/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "400",
        ),
    ];
    for (name, request, expected) in cases {
        let (answer, took) =
            tokio::task::spawn_blocking(move || raw(addr, &request, Duration::from_secs(5)))
                .await
                .unwrap();
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        if expected.is_empty() {
            assert!(!answer.starts_with("HTTP/1.1 2"), "{name}: {answer:.80}");
            assert!(took < Duration::from_secs(4), "{name}: the server closed after the header timeout, not the client's read timeout ({took:?})");
        } else {
            assert!(
                status == expected || answer.is_empty() && expected == "431",
                "{name}: got {status:?} ({answer:.120})"
            );
        }
        still_serving(addr);
    }
    assert_eq!(
        fake.requests().len(),
        0,
        "no hostile request reached the upstream"
    );
    assert_eq!(
        std::fs::read_dir(lasti.data_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_frees() {
    let fake = FakeUpstream::start().await;
    let digest = fake.put_blob(vec![9u8; 4096]);
    fake.fault(&digest, Fault::Stall);
    let mut cfg = config(&[("docker.io", &fake.url())]);
    cfg.access.max_connections = 2;
    let lasti = Lasti::start_with(cfg, None).await;
    // Two connections with a request in flight (a blob whose upstream
    // stalls): neither gives its slot up for a new connection.
    let request = format!("GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(lasti.addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            stream
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = lasti.addr;
    let waiting = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_millis(700),
        )
    })
    .await
    .unwrap();
    assert!(
        waiting.0.is_empty(),
        "a third connection is not served while two are busy"
    );
    drop(busy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serving(lasti.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_manifest_that_is_not_json_is_refused() {
    let fake = FakeUpstream::start().await;
    let digest = fake.put_manifest("junk", &b"<html>not a manifest</html>"[..]);
    let lasti = Lasti::start_with(config(&[("docker.io", &fake.url())]), None).await;
    let reply = common::http::get(
        &format!("{}/v2/library/app/manifests/junk", lasti.url()),
        &[],
    )
    .await;
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    assert_eq!(reply.error_code(), "UNAVAILABLE");
    let by_digest = common::http::get(
        &format!("{}/v2/library/app/manifests/{digest}", lasti.url()),
        &[],
    )
    .await;
    assert_eq!(by_digest.status, 502);
    let hex = digest.trim_start_matches("sha256:");
    assert!(!lasti
        .data_dir()
        .join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
        .exists());
}

/// A hostile upstream that answers every blob GET with a chunked body that
/// never ends (and no length); `/v2/` and everything else get 200 `{}`.
async fn endless_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&head[..n]).to_string();
                if !request.contains("/blobs/") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                        .await;
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upstream_body_is_cut_off_and_nothing_is_stored() {
    let (addr, upstream) = endless_upstream().await;
    let mut cfg = config(&[("docker.io", &format!("http://{addr}"))]);
    cfg.cache.max_blob_size = bytesize::ByteSize::mib(4);
    let lasti = Lasti::start_with(cfg, None).await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let url = format!("{}/v2/library/app/blobs/{digest}", lasti.url());
    let reply = tokio::time::timeout(Duration::from_secs(20), common::http::get(&url, &[]))
        .await
        .expect("lasti does not stream an endless body forever");
    assert!(
        reply.body_error.is_some() || reply.status != 200,
        "the client's stream is aborted, never completed: {} {} bytes",
        reply.status,
        reply.body.len()
    );
    assert!(reply.body.len() <= 4 * 1024 * 1024);
    assert!(
        !lasti.data_dir().join("blobs/sha256/ab").exists(),
        "nothing stored"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        std::fs::read_dir(lasti.data_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    still_serving(lasti.addr);
    upstream.abort();
}
