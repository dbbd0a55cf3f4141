//! No connection holds a slot or a file forever: silent and idle
//! connections are closed, a client that stops taking a response (a zero
//! HTTP/2 window, an unread socket) loses it and its open file, blob
//! responses past the open-file budget get 503, and a PING flood ends the
//! connection. Clients here are hand-written: raw TCP, raw HTTP/2 frames
//! (h2c with prior knowledge), the `h2` crate for streams, rustls for TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::checks::{blob_file, within};
use common::fake_upstream::{blob_path, random_blob, FakeUpstream};
use common::http::get;
use common::lasti::{config, Lasti};
use lasti::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPO: &str = "team/app";
const MIB: usize = 1024 * 1024;
/// Generous bound for something that should happen within about a second.
const SOON: Duration = Duration::from_secs(10);
/// Timeouts the tests shorten to a second; the others stay long, so only
/// the one under test can close a connection.
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(300);

fn config_with(fake: &FakeUpstream, change: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = config(&[("docker.io", &fake.url())]);
    cfg.access.header_read_timeout = LONG;
    cfg.access.keepalive_timeout = LONG;
    cfg.access.send_timeout = LONG;
    change(&mut cfg);
    cfg
}

/// Sets `cfg` to serve TLS with `pki`'s certificate, its files in `dir`.
fn serve_tls(cfg: &mut Config, pki: &common::tls::TestPki, dir: &std::path::Path) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    cfg.tls.cert_file = Some(cert);
    cfg.tls.key_file = Some(key);
}

/// Reads until the server closes the connection (EOF or reset); fails if
/// it is still open after [`SOON`]. Returns the bytes read.
async fn closed_by_server(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(SOON, read_all)
        .await
        .expect("the server kept the connection open");
    got
}

/// The status of a plain GET of `url`.
async fn status_of(url: &str) -> u16 {
    get(url, &[]).await.status.as_u16()
}

/// Waits until a GET of `url` is answered 200 again: the stalled responses
/// gave their places in the open-blob budget back.
async fn until_served(what: &str, url: &str) {
    let waiting = async {
        while status_of(url).await != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(SOON, waiting)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {SOON:?}"));
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    let waiting = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(SOON, waiting)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {SOON:?}"));
}

/// A fake upstream with one blob of `size` bytes, pulled once through
/// lasti so it is cached; the digest and the path of its cache file.
async fn cached_blob(fake: &FakeUpstream, lasti: &Lasti, size: usize) -> (String, Bytes) {
    let blob = random_blob(size);
    let digest = fake.put_blob(blob.clone());
    let reply = get(&format!("{}{}", lasti.url(), blob_path(REPO, &digest)), &[]).await;
    assert_eq!(reply.status, 200);
    let file = blob_file(lasti.data_dir(), &digest);
    until("the blob is cached", || file.exists()).await;
    (digest, blob)
}

/// An HTTP/2 client (h2c, prior knowledge) that grants no stream window,
/// so lasti can send headers but no DATA; with `streams` blob GETs open,
/// each answered 200.
async fn zero_window_client(
    addr: SocketAddr,
    digest: &str,
    streams: usize,
) -> (
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    Vec<h2::RecvStream>,
) {
    let path = blob_path(REPO, digest);
    let opened = common::h2_client::zero_window_streams(&addr.to_string(), &path, streams).await;
    assert!(
        opened.statuses.iter().all(|s| *s == 200),
        "{:?}",
        opened.statuses
    );
    (opened.connection, opened.bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_and_its_slot_freed() {
    within(async {
        let fake = FakeUpstream::start().await;
        let cfg = config_with(&fake, |c| {
            c.access.max_connections = 1;
            c.access.header_read_timeout = SHORT;
        });
        let lasti = Lasti::start_with(cfg, None).await;
        let mut silent = TcpStream::connect(lasti.addr).await.unwrap();
        // The only slot is taken; this client is served once it is freed.
        let next = tokio::spawn({
            let url = format!("{}/v2/", lasti.url());
            async move { tokio::time::timeout(SOON, get(&url, &[])).await }
        });
        let said = closed_by_server(&mut silent).await;
        assert!(
            said.is_empty(),
            "nothing was sent to a client that asked nothing"
        );
        let reply = next
            .await
            .unwrap()
            .expect("served once the silent one was closed");
        assert_eq!(reply.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_the_tls_handshake_is_closed() {
    within(async {
        let fake = FakeUpstream::start().await;
        let work = tempfile::tempdir().unwrap();
        let pki = common::tls::TestPki::new();
        let cfg = config_with(&fake, |c| {
            c.access.header_read_timeout = SHORT;
            serve_tls(c, &pki, work.path());
        });
        let lasti = Lasti::start_with(cfg, None).await;
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(lasti.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        closed_by_server(&mut tls).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_the_tls_handshake_is_dropped_after_its_limit() {
    within(async {
        let fake = FakeUpstream::start().await;
        let work = tempfile::tempdir().unwrap();
        let pki = common::tls::TestPki::new();
        let cfg = config_with(&fake, |c| {
            c.access.tls_handshake_timeout = SHORT;
            serve_tls(c, &pki, work.path());
        });
        let lasti = Lasti::start_with(cfg, None).await;
        // The first bytes of a ClientHello, then nothing.
        let mut stalled = TcpStream::connect(lasti.addr).await.unwrap();
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let said = closed_by_server(&mut stalled).await;
        assert!(said.is_empty(), "no handshake answer to half a hello");
        assert!(
            started.elapsed() < 4 * SHORT,
            "dropped after tls_handshake_timeout, not a fixed limit: {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed() {
    within(async {
        let fake = FakeUpstream::start().await;
        let cfg = config_with(&fake, |c| c.access.keepalive_timeout = SHORT);
        let lasti = Lasti::start_with(cfg, None).await;
        let mut client = TcpStream::connect(lasti.addr).await.unwrap();
        client
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let said = closed_by_server(&mut client).await;
        let said = String::from_utf8_lossy(&said);
        assert!(said.starts_with("HTTP/1.1 200"), "{said}");
        assert!(
            said.ends_with("{}"),
            "one whole response, then the close: {said}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_connection_waits_keepalive_timeout_not_header_read_timeout() {
    within(async {
        let fake = FakeUpstream::start().await;
        let cfg = config_with(&fake, |c| {
            c.access.header_read_timeout = SHORT;
            c.access.keepalive_timeout = LONG;
        });
        let lasti = Lasti::start_with(cfg, None).await;
        let mut client = TcpStream::connect(lasti.addr).await.unwrap();
        let request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..2 {
            client.write_all(request).await.unwrap();
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(SOON, client.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            let said = String::from_utf8_lossy(&buf[..n]);
            assert!(said.starts_with("HTTP/1.1 200"), "{said}");
            // Idle for three times header_read_timeout, well within
            // keepalive_timeout: the connection must still be there.
            tokio::time::sleep(SHORT * 3).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_without_streams_is_closed() {
    within(async {
        let fake = FakeUpstream::start().await;
        let cfg = config_with(&fake, |c| c.access.keepalive_timeout = SHORT);
        let lasti = Lasti::start_with(cfg, None).await;
        let tcp = TcpStream::connect(lasti.addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{}/v2/", lasti.addr))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        // The client keeps its handle: only the server can end the connection.
        let _keep = client;
        tokio::time::timeout(SOON, connection)
            .await
            .expect("the idle h2 connection was closed")
            .unwrap()
            .ok();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_stream_loses_its_connection_and_file_after_the_send_timeout() {
    within(async {
        let fake = FakeUpstream::start().await;
        // The three stalled responses take the whole open-blob budget.
        let cfg = config_with(&fake, |c| {
            c.access.send_timeout = SHORT;
            c.access.max_open_blobs = 3;
        });
        let lasti = Lasti::start_with(cfg, None).await;
        let (digest, _) = cached_blob(&fake, &lasti, MIB).await;
        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));
        let (connection, bodies) = zero_window_client(lasti.addr, &digest, 3).await;
        assert_eq!(
            status_of(&url).await,
            503,
            "the stalled responses hold the blob"
        );
        until("the stalled connection is closed", || {
            connection.is_finished()
        })
        .await;
        until_served("the stalled responses let the blob go", &url).await;
        drop(bodies);
        // Others are still served.
        let reply = get(&format!("{}{}", lasti.url(), blob_path(REPO, &digest)), &[]).await;
        assert_eq!(reply.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_http1_response_loses_its_connection_and_file_after_the_send_timeout() {
    within(async {
        let fake = FakeUpstream::start().await;
        // The unread response takes the whole open-blob budget.
        let cfg = config_with(&fake, |c| {
            c.access.send_timeout = SHORT;
            c.access.max_open_blobs = 1;
        });
        let lasti = Lasti::start_with(cfg, None).await;
        // Larger than what loopback socket buffers absorb.
        let (digest, _) = cached_blob(&fake, &lasti, 48 * MIB).await;
        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));
        let mut client = TcpStream::connect(lasti.addr).await.unwrap();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
            blob_path(REPO, &digest)
        );
        client.write_all(request.as_bytes()).await.unwrap();
        // Answered at once while the unread response holds its place
        // (a 503), then, after the send timeout, served again.
        assert_eq!(
            status_of(&url).await,
            503,
            "the unread response holds the blob"
        );
        until_served("the unread response let the blob go", &url).await;
        let mut got = Vec::new();
        tokio::time::timeout(SOON, client.read_to_end(&mut got))
            .await
            .expect("the connection was closed")
            .ok();
        assert!(got.len() < 48 * MIB, "the response was cut, not completed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_open_file_budget_a_blob_gets_503_with_retry_after() {
    within(async {
        let fake = FakeUpstream::start().await;
        let cfg = config_with(&fake, |c| c.access.max_open_blobs = 2);
        let lasti = Lasti::start_with(cfg, None).await;
        let (digest, blob) = cached_blob(&fake, &lasti, MIB).await;
        let url = format!("{}{}", lasti.url(), blob_path(REPO, &digest));
        let (connection, bodies) = zero_window_client(lasti.addr, &digest, 2).await;
        let refused = get(&url, &[]).await;
        assert_eq!(refused.status, 503, "{:?}", refused.body);
        assert_eq!(refused.error_code(), "UNAVAILABLE");
        assert_eq!(refused.header("retry-after"), "1");
        let head = common::http::head(&url, &[]).await;
        assert_eq!(head.status, 200, "a HEAD opens no file and is not refused");
        drop(bodies);
        connection.abort();
        until_served("the budget is free again", &url).await;
        let reply = get(&url, &[]).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body == blob, "the whole blob");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_ends_the_connection() {
    const PINGS: usize = 20_000;
    within(async {
        let fake = FakeUpstream::start().await;
        let lasti = Lasti::start_with(config_with(&fake, |_| {}), None).await;
        let tcp = TcpStream::connect(lasti.addr).await.unwrap();
        let (mut reader, mut writer) = tcp.into_split();
        let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        flood.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        for _ in 0..PINGS {
            flood.extend_from_slice(&ping);
        }
        let sender = tokio::spawn(async move {
            // The server may close while this is still writing.
            let _ = writer.write_all(&flood).await;
            writer
        });
        let answered = closed_by_server(&mut reader).await;
        let acks = answered
            .windows(5)
            .filter(|w| w == &[0, 0, 8, 6, 1])
            .count();
        assert!(acks < PINGS, "{acks} of {PINGS} PINGs were answered");
        drop(sender.await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_peer_that_does_not_answer_pings_is_closed() {
    within(async {
        let fake = FakeUpstream::start().await;
        let cfg = config_with(&fake, |c| {
            c.access.http2_ping_interval = SHORT;
            c.access.http2_ping_timeout = SHORT;
        });
        let lasti = Lasti::start_with(cfg, None).await;
        let mut peer = TcpStream::connect(lasti.addr).await.unwrap();
        // The preface and an empty SETTINGS; then it reads but never answers.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        peer.write_all(&hello).await.unwrap();
        let heard = closed_by_server(&mut peer).await;
        let pinged = heard.windows(5).any(|w| w == [0, 0, 8, 6, 0]);
        assert!(pinged, "the server pinged before closing");
    })
    .await;
}
