//! The front door with real clients: authenticated mode with htpasswd,
//! static tokens and delegation to an OpenShift-shaped registry login, allow
//! and deny lists, per-client rate limits, and TLS pulls with skopeo
//! trusting a CA the test makes.

mod common;

use std::time::Duration;

use common::lasti::{config, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use common::token_shim::TokenShim;
use lasti::config::{AccessMode, Config};
use tempfile::TempDir;

async fn push(registry: &Registry, work: &TempDir, repo: &str, seed: u64) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[2048, 40 * 1024]);
    let (layout, image) = Layout::single(&work.path().join(format!("l{seed}")), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/{repo}:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    image
}

fn expected(image: &BuiltImage) -> Vec<String> {
    let mut d = image.blob_digests();
    d.push(image.manifest_digest.clone());
    d.sort();
    d
}

/// `skopeo copy` with credentials (and TLS options) into a fresh dir.
async fn pull_with(
    src: &str,
    out: &std::path::Path,
    extra: &[String],
) -> Result<Vec<String>, String> {
    let mut args = vec!["copy".to_string(), "--retry-times".into(), "0".into()];
    args.extend(extra.iter().cloned());
    args.push(format!("docker://{src}"));
    args.push(format!("dir:{}", out.display()));
    skopeo::run(&args).await.map(|_| skopeo::dir_digests(out))
}

fn plain(creds: &str) -> Vec<String> {
    vec![
        "--src-tls-verify=false".into(),
        "--src-creds".into(),
        creds.into(),
    ]
}

fn authenticated(mut cfg: Config) -> Config {
    cfg.access.mode = AccessMode::Authenticated;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_and_tokens_guard_every_request() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "library/app", 1).await;
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash("s3cret", 4).unwrap()),
    )
    .unwrap();
    let tokens = work.path().join("tokens");
    std::fs::write(&tokens, "ci-token-1\n").unwrap();
    let mut cfg = authenticated(config(&[("docker.io", &registry.url())]));
    cfg.access.htpasswd_file = Some(htpasswd);
    cfg.access.tokens_file = Some(tokens);
    let lasti = Lasti::start_with(cfg, None).await;

    let version = common::http::get(&format!("{}/v2/", lasti.url()), &[]).await;
    assert_eq!(version.status, 401);
    assert_eq!(version.error_code(), "UNAUTHORIZED");
    assert_eq!(version.header("www-authenticate"), "Basic realm=\"lasti\"");

    let src = format!("{}/library/app:v1", lasti.host());
    let pulled = pull_with(&src, &work.path().join("a"), &plain("alice:s3cret"))
        .await
        .unwrap();
    assert_eq!(pulled, expected(&image));
    let refused = pull_with(&src, &work.path().join("b"), &plain("alice:wrong")).await;
    assert!(refused.is_err(), "a wrong password pulls nothing");
    let anonymous = pull_with(
        &src,
        &work.path().join("c"),
        &["--src-tls-verify=false".into()],
    )
    .await;
    assert!(anonymous.is_err(), "no credentials, no pull");

    let url = format!(
        "{}/v2/library/app/manifests/{}",
        lasti.url(),
        image.manifest_digest
    );
    let ok = common::http::get(&url, &[("authorization", "Bearer ci-token-1")]).await;
    assert_eq!(ok.status, 200);
    let bad = common::http::get(&url, &[("authorization", "Bearer ci-token-2")]).await;
    assert_eq!(bad.status, 401);
    assert!(
        !String::from_utf8_lossy(&bad.body).contains("ci-token-2"),
        "credentials are never echoed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_mode_accepts_whoever_can_log_in_to_the_rahti_registry() {
    let registry = Registry::start();
    let rahti_backend = Registry::start();
    let rahti = TokenShim::start(rahti_backend.addr(), "oc-whoami-token").await;
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "library/app", 2).await;
    let mut cfg = authenticated(config(&[("docker.io", &registry.url())]));
    cfg.access.delegate_url = Some(url::Url::parse(&rahti.url()).unwrap());
    let lasti = Lasti::start_with(cfg, None).await;

    let src = format!("{}/library/app:v1", lasti.host());
    for round in 0..2 {
        let out = work.path().join(format!("ok{round}"));
        let pulled = pull_with(&src, &out, &plain("unused:oc-whoami-token"))
            .await
            .unwrap();
        assert_eq!(pulled, expected(&image));
    }
    let realm_checks = rahti.state.lock().unwrap().realm_granted;
    assert_eq!(
        realm_checks, 1,
        "the verdict is remembered, not asked again per request"
    );
    let refused = pull_with(&src, &work.path().join("no"), &plain("unused:someone-else")).await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_refuse_without_upstream_traffic() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    push(&registry, &work, "library/app", 3).await;
    push(&registry, &work, "library/secret-app", 4).await;
    push(&registry, &work, "org/app", 5).await;
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.upstreams[0].allow = vec!["library/*".into()];
    cfg.upstreams[0].deny = vec!["library/secret*".into()];
    let lasti = Lasti::start_with(cfg, None).await;
    for (repo, status) in [
        ("library/app", 200),
        ("app", 200),
        ("library/secret-app", 403),
        ("org/app", 403),
    ] {
        let reply =
            common::http::get(&format!("{}/v2/{repo}/manifests/v1", lasti.url()), &[]).await;
        assert_eq!(reply.status.as_u16(), status, "{repo}");
        if status == 403 {
            assert_eq!(reply.error_code(), "DENIED");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        registry.count_requests("GET", "/v2/org/app/"),
        0,
        "no upstream traffic for a denied name"
    );
    assert_eq!(registry.count_requests("GET", "/v2/library/secret-app/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_toomanyrequests() {
    let registry = Registry::start();
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.access.rate_limit = 1;
    cfg.access.rate_burst = 3;
    let lasti = Lasti::start_with(cfg, None).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(common::http::get(&format!("{}/v2/", lasti.url()), &[]).await);
    }
    assert!(statuses[..3].iter().all(|r| r.status == 200));
    let limited = &statuses[4];
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error_code(), "TOOMANYREQUESTS");
    assert!(limited.header("retry-after").parse::<u64>().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_over_tls_trusting_the_test_ca() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let image = push(&registry, &work, "library/app", 6).await;
    let pki = common::tls::TestPki::new();
    let (cert, key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.tls.cert_file = Some(cert);
    cfg.tls.key_file = Some(key);
    let lasti = Lasti::start_with(cfg, None).await;
    let certs = work.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &pki.ca_pem).unwrap();

    let src = format!("{}/library/app:v1", lasti.host());
    let extra = vec!["--src-cert-dir".to_string(), certs.display().to_string()];
    let pulled = pull_with(&src, &work.path().join("tls"), &extra)
        .await
        .unwrap();
    assert_eq!(pulled, expected(&image));
    // Again, from the cache: on TLS, mapped windows are encrypted like any
    // memory, never handed to sendfile.
    let warm = pull_with(&src, &work.path().join("warm"), &extra)
        .await
        .unwrap();
    assert_eq!(warm, expected(&image));
    let metrics = common::http::get(&format!("{}/metrics", lasti.admin_url()), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(|l| l == "lasti_sendfile_bytes_total 0"),
        "nothing went out with sendfile over TLS"
    );
    // Without the CA, the certificate is refused.
    let untrusted = pull_with(&src, &work.path().join("no"), &[]).await;
    assert!(untrusted.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_picked_up_without_a_restart() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    push(&registry, &work, "library/app", 7).await;
    let (old, new) = (common::tls::TestPki::new(), common::tls::TestPki::new());
    let (cert, key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    std::fs::write(&cert, &old.cert_pem).unwrap();
    std::fs::write(&key, &old.key_pem).unwrap();
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.tls.cert_file = Some(cert.clone());
    cfg.tls.key_file = Some(key.clone());
    let lasti = Lasti::start_with(cfg, None).await;
    let trust = |pki: &common::tls::TestPki, name: &str| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &pki.ca_pem).unwrap();
        vec!["--src-cert-dir".to_string(), dir.display().to_string()]
    };
    let src = format!("{}/library/app:v1", lasti.host());
    assert!(pull_with(&src, &work.path().join("a"), &trust(&old, "old"))
        .await
        .is_ok());

    std::fs::write(&key, &new.key_pem).unwrap();
    std::fs::write(&cert, &new.cert_pem).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&cert)
        .unwrap()
        .set_modified(later)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The first handshake after the check interval reloads; then the new CA holds.
    let _ = pull_with(&src, &work.path().join("x"), &trust(&new, "new")).await;
    assert!(pull_with(&src, &work.path().join("b"), &trust(&new, "new"))
        .await
        .is_ok());
    assert!(pull_with(&src, &work.path().join("c"), &trust(&old, "old"))
        .await
        .is_err());
}
