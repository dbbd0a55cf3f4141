//! SIGTERM, as Kubernetes sends it: lasti stops accepting connections, lets
//! a blob transfer in progress finish whole, and exits 0.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::oci_layout::{ImageSpec, Layout};
use common::process::Setup;
use common::registry::Registry;
use common::skopeo;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Reads a blob slowly (a pause per frame) and returns its bytes' digest and length.
async fn slow_get(url: String) -> (String, usize) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse().unwrap()).await.expect("request");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut hasher, mut len) = (Sha256::new(), 0);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the stream completes, not aborted");
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            len += data.len();
            // About 8 MB/s: a transfer of seconds, longer than the socket buffers.
            tokio::time::sleep(Duration::from_micros(data.len() as u64 / 8)).await;
        }
    }
    (format!("sha256:{}", hex::encode(hasher.finalize())), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transfer_finish_then_exits_zero() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(70, &[24 * 1024 * 1024]);
    let (layout, image) = Layout::single(&work.path().join("img"), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/t:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    let setup = Setup::write(work.path(), &registry.url(), "shutdown_grace = \"20s\"", "");
    let mut lasti = setup.start();

    let layer = image.layer_digests[0].clone();
    let url = format!("http://{}/v2/library/t/blobs/{layer}", lasti.api);
    let transfer = tokio::spawn(slow_get(url));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !transfer.is_finished(),
        "the transfer is slow enough to be cut by a careless shutdown"
    );
    let signalled = Instant::now();
    lasti.signal("TERM");

    // New connections are refused soon after the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::http_get_status(lasti.api.parse().unwrap(), "/v2/", None).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (digest, len) = transfer.await.unwrap();
    assert_eq!(len as u64, image.layer_sizes[0]);
    assert_eq!(digest, layer, "the client got the whole, verified blob");
    let status = lasti.wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exited within the grace period"
    );
}
