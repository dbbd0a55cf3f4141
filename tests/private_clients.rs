//! Private images with real parts: the distribution registry with htpasswd
//! as a private upstream (every request needs a user of its own), lasti in
//! front with `credentials = "client"`, and skopeo, podman, containerd and
//! docker bringing their users' credentials as the README's "Private
//! images" section sets them up. A client the registry would refuse is
//! refused by lasti too, even when the image is cached.

mod common;

use common::containerd::Containerd;
use common::docker::{Docker, DOCKER_HUB_AUTH_KEY};
use common::fake_upstream::FakeUpstream;
use common::lasti::{config, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec, Layout};
use common::podman::Podman;
use common::registry::{Registry, RegistryOptions};
use common::skopeo;
use lasti::config::{Config, CredentialSource};
use tempfile::TempDir;

const KIB: usize = 1024;
const REPO: &str = "team/app";

/// The registry's users: both may pull everything there.
const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

fn private_registry() -> Registry {
    Registry::start_with(RegistryOptions {
        htpasswd: Some((ALICE.0.into(), ALICE.1.into())),
        more_users: vec![(BOB.0.into(), BOB.1.into())],
    })
}

/// Pushes an unpackable image (podman and docker unpack layers) as alice.
async fn push(registry: &Registry, work: &TempDir, seed: u64) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[4 * KIB, 256 * KIB]).unpackable();
    let (layout, image) = Layout::single(&work.path().join(seed.to_string()), &spec, "v1");
    let args = [
        "copy".to_string(),
        "--preserve-digests".into(),
        "--dest-tls-verify=false".into(),
        format!("--dest-creds={}:{}", ALICE.0, ALICE.1),
        format!("oci:{}:v1", layout.dir.display()),
        format!("docker://{}/{REPO}:v1", registry.host()),
    ];
    skopeo::run(&args).await.expect("push as alice");
    image
}

fn client_mode(upstream_url: &str) -> Config {
    let mut cfg = config(&[("docker.io", upstream_url)]);
    cfg.upstreams[0].credentials = CredentialSource::Client;
    cfg
}

/// `skopeo copy` from lasti with `creds` (`None`: anonymous) into `out`.
async fn skopeo_pull(
    lasti: &Lasti,
    creds: Option<(&str, &str)>,
    out: &std::path::Path,
) -> Result<(), String> {
    let mut args = vec![
        "copy".to_string(),
        "--src-tls-verify=false".into(),
        "--retry-times=0".into(),
    ];
    match creds {
        Some((user, password)) => args.push(format!("--src-creds={user}:{password}")),
        None => args.push("--src-no-creds".into()),
    }
    args.push(format!("docker://{}/{REPO}:v1", lasti.host()));
    args.push(format!("dir:{}", out.display()));
    skopeo::run(&args).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_a_private_image_with_its_own_credentials_and_a_wrong_password_gets_nothing() {
    let (registry, work) = (private_registry(), TempDir::new().unwrap());
    let image = push(&registry, &work, 2801).await;
    let lasti = Lasti::start_with(client_mode(&registry.url()), None).await;

    let anonymous = skopeo_pull(&lasti, None, &work.path().join("anon")).await;
    assert!(anonymous.is_err(), "no credentials, no private image");

    let out = work.path().join("alice");
    skopeo_pull(&lasti, Some(ALICE), &out).await.unwrap();
    let mut pulled = skopeo::dir_digests(&out);
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    pulled.sort();
    expected.sort();
    assert_eq!(pulled, expected);
    for digest in image.blob_digests() {
        assert_eq!(registry.settled_blob_gets(&digest, 1), 1, "{digest}");
    }

    // bob is a user of the registry too: served from the cache.
    let out = work.path().join("bob");
    skopeo_pull(&lasti, Some(BOB), &out).await.unwrap();
    assert_eq!(skopeo::dir_digests(&out).len(), expected.len());

    // A wrong password is refused although every byte is cached.
    let wrong = skopeo_pull(&lasti, Some((ALICE.0, "wrong")), &work.path().join("w")).await;
    assert!(wrong.is_err(), "a wrong password gets nothing");
    let anonymous = skopeo_pull(&lasti, None, &work.path().join("anon2")).await;
    assert!(
        anonymous.is_err(),
        "nor does an anonymous client, cached or not"
    );
    for digest in image.blob_digests() {
        assert_eq!(registry.blob_gets(&digest), 1, "hits only: {digest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_with_its_auth_json_and_containerd_with_its_registry_auth() {
    let (registry, work) = (private_registry(), TempDir::new().unwrap());
    let image = push(&registry, &work, 2802).await;
    let lasti = Lasti::start_with(client_mode(&registry.url()), None).await;
    let reference = format!("{}/{REPO}:v1", lasti.host());

    // podman: `podman login lasti` writes auth.json, which pulls read.
    let podman = Podman::new("unqualified-search-registries = []\n");
    let host = lasti.host();
    let auth = work.path().join("auth.json");
    let login = ["login", "--tls-verify=false", "--authfile"];
    let wrong = [
        &login[..],
        &[auth.to_str().unwrap(), "-u", ALICE.0, "-p", "wrong", &host],
    ]
    .concat();
    assert!(
        podman.run(&wrong).await.is_err(),
        "podman login with a wrong password fails"
    );
    let right = [
        &login[..],
        &[auth.to_str().unwrap(), "-u", ALICE.0, "-p", ALICE.1, &host],
    ]
    .concat();
    podman.run(&right).await.unwrap();
    let pull = [
        "pull",
        "--quiet",
        "--tls-verify=false",
        "--authfile",
        auth.to_str().unwrap(),
        &reference,
    ];
    podman.run(&pull).await.unwrap();
    let digest = podman
        .run(&["image", "inspect", "--format", "{{.Digest}}", &reference])
        .await
        .unwrap();
    assert_eq!(digest, image.manifest_digest);

    // containerd: the credentials of `ctr pull --user` (what its CRI
    // plugin's registry auth sends the same way, after lasti's challenge).
    let containerd = Containerd::start();
    let pull = |user: String| {
        let reference = reference.clone();
        let containerd = &containerd;
        async move {
            containerd
                .ctr(&[
                    "images",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    "native",
                    "--user",
                    &user,
                    &reference,
                ])
                .await
        }
    };
    assert!(
        pull(format!("{}:wrong", BOB.0)).await.is_err(),
        "a wrong password"
    );
    pull(format!("{}:{}", BOB.0, BOB.1)).await.unwrap();
    let listing = containerd.ctr(&["images", "ls"]).await.unwrap();
    assert!(listing.contains(&image.manifest_digest), "{listing}");
    for digest in image.blob_digests() {
        assert_eq!(registry.settled_blob_gets(&digest, 1), 1, "{digest}");
    }
}

/// The fake's per-repository token service, holding real (unpackable)
/// images: `library/pub` for anyone, `team/app` for alice only.
fn put_layout_image(
    fake: &FakeUpstream,
    repo: &str,
    dir: &std::path::Path,
    seed: u64,
) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[4 * KIB, 64 * KIB]).unpackable();
    let (layout, image) = Layout::single(&dir.join(seed.to_string()), &spec, "v1");
    for digest in image.blob_digests() {
        let bytes = std::fs::read(layout.blob_path(&digest)).expect("layout blob");
        fake.put_blob_in(repo, bytes);
    }
    fake.put_manifest_in(repo, "v1", image.manifest_bytes.clone());
    image
}

/// docker sends a mirror the credentials it holds for Docker Hub: with
/// `credentials = "client"`, lasti is a mirror with authentication. With
/// none, docker takes lasti's anonymous token and pulls public images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_as_a_mirror_pulls_public_images_anonymously_and_private_ones_with_its_hub_login() {
    let work = TempDir::new().unwrap();
    let fake = FakeUpstream::start().await;
    fake.scope_users(&[(ALICE.0, ALICE.1, &[REPO])], &["library/pub"]);
    let public = put_layout_image(&fake, "library/pub", work.path(), 2803);
    let private = put_layout_image(&fake, REPO, work.path(), 2804);
    let lasti = Lasti::start_with(client_mode(&fake.url()), None).await;
    let docker = Docker::start(&lasti.host());

    let pulled = docker.pull("pub:v1").await.unwrap();
    assert_eq!(pulled, [public.manifest_digest.as_str()]);
    let refused = docker.pull(&format!("{REPO}:v1")).await;
    assert!(refused.is_err(), "no Docker Hub login, no private image");

    docker.store_credentials(DOCKER_HUB_AUTH_KEY, ALICE.0, ALICE.1);
    let pulled = docker.pull(&format!("{REPO}:v1")).await.unwrap();
    assert_eq!(pulled, [private.manifest_digest.as_str()]);
    let asked_as_alice = fake.requests().into_iter().any(|r| {
        r.path.contains(REPO) && r.authorization.as_deref() == Some("Bearer scoped-alice")
    });
    assert!(
        asked_as_alice,
        "the upstream was asked with alice's credentials"
    );
}

/// The project's token, for the back-fill target.
const TARGET_TOKEN: &str = "project-token";

/// A private image is back-filled into the project only with
/// `backfill_private = true`: the project's pull access (often every
/// authenticated user of the cluster) may be wider than the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_is_back_filled_only_when_the_upstream_is_told_so() {
    let (registry, work) = (private_registry(), TempDir::new().unwrap());
    push(&registry, &work, 2805).await;
    let jobs = |status: &serde_json::Value| {
        ["recent", "pending", "failed"]
            .iter()
            .map(|list| status[list].as_array().map(Vec::len).unwrap_or(0))
            .sum::<usize>()
    };
    for backfill_private in [false, true] {
        let target = Registry::start_with(RegistryOptions {
            htpasswd: Some(("unused".into(), TARGET_TOKEN.into())),
            ..Default::default()
        });
        let mut cfg = client_mode(&registry.url());
        cfg.upstreams[0].backfill_private = backfill_private;
        cfg.target.url = Some(url::Url::parse(&target.url()).unwrap());
        cfg.target.project = Some("proj".into());
        cfg.target.token = Some(lasti::secret::Secret::new(TARGET_TOKEN.into()));
        let lasti = Lasti::start_with(cfg, None).await;
        let out = work.path().join(format!("pulled-{backfill_private}"));
        skopeo_pull(&lasti, Some(ALICE), &out).await.unwrap();
        let limit = std::time::Duration::from_secs(30);
        if backfill_private {
            let status = lasti
                .backfill_status_when(limit, |s| {
                    s["recent"].as_array().is_some_and(|r| r.len() == 1)
                })
                .await;
            assert_eq!(jobs(&status), 1, "pushed once: {status:#}");
        } else {
            // What is offered is queued at once; give it a moment anyway.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let status = lasti.backfill_status_when(limit, |_| true).await;
            assert_eq!(jobs(&status), 0, "nothing queued: {status:#}");
            assert_eq!(target.count_requests("PUT", "/manifests/"), 0);
        }
    }
}
