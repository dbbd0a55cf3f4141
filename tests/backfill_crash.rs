//! SIGKILL in the middle of a push loses nothing: lasti runs as its own
//! process and is killed while its upload to a slow target is under way,
//! then three more times at random moments as the job resumes; after the
//! last restart the accepted job completes and the image lands whole.

mod common;

use std::time::{Duration, Instant};

use common::oci_layout::{ImageSpec, Layout};
use common::process::Setup;
use common::registry::Registry;
use common::skopeo;
use common::token_shim::TokenShim;
use serde_json::Value;
use tempfile::TempDir;

const TOKEN: &str = "crash-token";

async fn status(admin: &str) -> Value {
    let reply = common::http::get(&format!("{admin}/admin/backfill"), &[]).await;
    serde_json::from_slice(&reply.body).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_push_loses_no_accepted_job() {
    let upstream = Registry::start();
    let backend = Registry::start();
    let shim = TokenShim::start(backend.addr(), TOKEN).await;
    shim.state.lock().unwrap().upload_delay = Duration::from_millis(700);
    let work = TempDir::new().unwrap();
    let spec = ImageSpec::linux_amd64(9, &[1024, 6 * 1024 * 1024]);
    let (layout, image) = Layout::single(&work.path().join("img"), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/big:v1", upstream.host()),
        false,
    )
    .await
    .unwrap();

    let data = work.path().join("data");
    let target = format!(
        "[target]\nurl = \"{}\"\nproject = \"proj\"\ntoken = \"{TOKEN}\"\n\
         monolithic_limit = \"1 MiB\"\nchunk_size = \"1 MiB\"\nmax_backoff = \"2s\"",
        shim.url()
    );
    let setup = Setup::write(work.path(), &upstream.url(), "", &target);

    let lasti = setup.start();
    skopeo::pull_to_dir(
        &format!("{}/library/big:v1", lasti.api),
        &work.path().join("p"),
        false,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while shim.state.lock().unwrap().uploads < 3 {
        assert!(Instant::now() < deadline, "the push never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = status(&lasti.admin).await;
    assert_eq!(
        before["pending"].as_array().map(Vec::len),
        Some(1),
        "{before:#}"
    );
    lasti.kill_lasti();
    assert_eq!(
        shim.state.lock().unwrap().manifest_puts,
        0,
        "killed before the manifest went up"
    );
    // More kills at random moments while the resumed job is pushing.
    for _ in 0..3 {
        let lasti = setup.start();
        let delay = rand::Rng::gen_range(&mut rand::thread_rng(), 100..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        lasti.kill_lasti();
    }

    shim.state.lock().unwrap().upload_delay = Duration::ZERO;
    let lasti = setup.start();
    assert_eq!(
        std::fs::read_dir(data.join("tmp")).unwrap().count(),
        0,
        "no temporary file survives a restart"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&lasti.admin).await;
        if s["recent"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never finished after the restart: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = work.path().join("target");
    let args: Vec<String> = [
        "copy",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("unused:{TOKEN}"),
        &format!("docker://{}/proj/big:v1", backend.host()),
        &format!("dir:{}", out.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    skopeo::run(&args).await.expect("pull from target");
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    assert_eq!(skopeo::dir_digests(&out), expected);
}
