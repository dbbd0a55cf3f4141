//! Real container clients pulling through lasti configured as the README
//! says: podman with a registries.conf mirror (the file and library CRI-O
//! uses too), containerd with a `hosts.toml` per registry, and docker with
//! `registry-mirrors`. Two upstream registries hold different images, so
//! only correct routing, by path prefix (podman) or by containerd's `ns=`
//! parameter, finds each one; docker uses mirrors for Docker Hub names only,
//! so lasti's default upstream, named `docker.io`, is a local registry.
//!
//! Every registry location in the clients' configs is a closed loopback port
//! (`127.0.0.1:1`) where the README has the real registry (for docker, its
//! proxy for Docker Hub), so a client that got nothing from lasti fails
//! instead of going anywhere off the machine.

mod common;

use common::containerd::Containerd;
use common::docker::{Docker, DOCKER_HUB_AUTH_KEY};
use common::lasti::{config, Lasti};
use common::oci_layout::{sha256_digest, BuiltImage, ImageSpec, Layout};
use common::podman::Podman;
use common::registry::Registry;
use common::skopeo;
use lasti::config::AccessMode;
use serde_json::Value;
use tempfile::TempDir;

const KIB: usize = 1024;

/// Where the clients would go if lasti did not answer: nowhere.
const NOWHERE: &str = "127.0.0.1:1";

/// Two upstreams (`docker.io` and `ghcr.io` to lasti, both local registries)
/// with one image each, and lasti in front of both.
struct Setup {
    hub: Registry,
    ghcr: Registry,
    hub_image: BuiltImage,
    ghcr_image: BuiltImage,
    lasti: Lasti,
    _work: TempDir,
}

async fn push(registry: &Registry, work: &TempDir, seed: u64, repo: &str) -> BuiltImage {
    let spec = ImageSpec::linux_amd64(seed, &[4 * KIB, 512 * KIB]).unpackable();
    let (layout, image) = Layout::single(&work.path().join(repo), &spec, "v1");
    let dest = format!("{}/{repo}:v1", registry.host());
    skopeo::push_layout(&layout.dir, "v1", &dest, false)
        .await
        .expect("push");
    image
}

async fn setup() -> Setup {
    let (hub, ghcr, work) = (
        Registry::start(),
        Registry::start(),
        TempDir::new().unwrap(),
    );
    let hub_image = push(&hub, &work, 500, "library/app").await;
    let ghcr_image = push(&ghcr, &work, 501, "org/tool").await;
    let cfg = config(&[("docker.io", &hub.url()), ("ghcr.io", &ghcr.url())]);
    let lasti = Lasti::start_with(cfg, None).await;
    Setup {
        hub,
        ghcr,
        hub_image,
        ghcr_image,
        lasti,
        _work: work,
    }
}

impl Setup {
    /// Each blob of each image came from its own upstream exactly once:
    /// through lasti, since the clients had nowhere else to go.
    fn assert_fetched_once_through_lasti(&self) {
        for (registry, image) in [(&self.hub, &self.hub_image), (&self.ghcr, &self.ghcr_image)] {
            for digest in image.blob_digests() {
                assert_eq!(registry.settled_blob_gets(&digest, 1), 1, "{digest}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_lasti_as_a_registries_conf_mirror() {
    let setup = setup().await;
    let lasti = setup.lasti.host();
    // The README's registries.conf, with the real registries replaced by NOWHERE.
    let podman = Podman::new(&format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"{NOWHERE}\"\n\
         [[registry.mirror]]\nlocation = \"{lasti}\"\ninsecure = true\n\n\
         [[registry]]\nprefix = \"ghcr.io\"\nlocation = \"{NOWHERE}\"\n\
         [[registry.mirror]]\nlocation = \"{lasti}/ghcr.io\"\ninsecure = true\n"
    ));

    let hub = podman.pull("docker.io/library/app:v1").await.unwrap();
    assert_eq!(hub, setup.hub_image.manifest_digest);
    let ghcr = podman.pull("ghcr.io/org/tool:v1").await.unwrap();
    assert_eq!(ghcr, setup.ghcr_image.manifest_digest);
    setup.assert_fetched_once_through_lasti();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_lasti_with_hosts_toml() {
    let setup = setup().await;
    let containerd = Containerd::start();
    // The README's hosts.toml, with the real registry replaced by NOWHERE.
    let hosts = format!(
        "server = \"http://{NOWHERE}\"\n\n\
         [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        setup.lasti.host()
    );
    containerd.write_hosts("docker.io", &hosts);
    containerd.write_hosts("ghcr.io", &hosts);

    let hub = containerd.pull("docker.io/library/app:v1").await;
    assert_eq!(hub.unwrap(), setup.hub_image.manifest_digest);
    // The same host for both: only `ns=ghcr.io` tells lasti which upstream.
    let ghcr = containerd.pull("ghcr.io/org/tool:v1").await;
    assert_eq!(ghcr.unwrap(), setup.ghcr_image.manifest_digest);
    setup.assert_fetched_once_through_lasti();

    // A registry lasti does not front is refused, never sent to the default.
    containerd.write_hosts("quay.io", &hosts);
    let refused = containerd.pull("quay.io/org/tool:v1").await.unwrap_err();
    assert!(refused.contains("400"), "{refused}");
}

/// The architecture docker picks from an index on this machine.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// An image with one manifest per platform, as the upstream holds it.
struct Platforms {
    /// The digest of the index or manifest list the upstream serves.
    top_digest: String,
    /// The blobs of this machine's platform: config, then layers.
    chosen: Vec<String>,
    /// The blobs of the other platform.
    other: Vec<String>,
}

/// Pushes `<repo>:v1`, this machine's platform and `s390x`, as an OCI
/// index or (`docker_format`) as a Docker manifest list, and reads back from
/// the upstream what it serves.
async fn push_platforms(
    registry: &Registry,
    work: &TempDir,
    seed: u64,
    repo: &str,
    docker_format: bool,
) -> Platforms {
    let specs = [(host_arch(), seed), ("s390x", seed + 1)]
        .map(|(arch, seed)| ImageSpec::new(seed, &[4 * KIB, 64 * KIB], "linux", arch).unpackable());
    let (layout, _) = Layout::multi(&work.path().join(repo), &specs, "v1");
    let dest = format!("{}/{repo}:v1", registry.host());
    let (pushed, kind) = match docker_format {
        true => (
            skopeo::push_layout_as_docker(&layout.dir, "v1", &dest).await,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
        false => (
            skopeo::push_layout(&layout.dir, "v1", &dest, true).await,
            "application/vnd.oci.image.index.v1+json",
        ),
    };
    pushed.expect("push");
    let top = skopeo::inspect_raw(&dest).await.expect("inspect index");
    let index: Value = serde_json::from_slice(&top).expect("index JSON");
    assert_eq!(index["mediaType"], kind);
    let repo = format!("{}/{repo}", registry.host());
    Platforms {
        top_digest: sha256_digest(&top),
        chosen: platform_blobs(&repo, &index, host_arch()).await,
        other: platform_blobs(&repo, &index, "s390x").await,
    }
}

/// The blobs (config, then layers) of the manifest for `arch` in `index`,
/// as the upstream `repo` (`host:port/name`) serves them.
async fn platform_blobs(repo: &str, index: &Value, arch: &str) -> Vec<String> {
    let digest = |d: &Value| d["digest"].as_str().expect("digest").to_string();
    let mut children = index["manifests"].as_array().expect("manifests").iter();
    let child = children
        .find(|m| m["platform"]["architecture"] == arch)
        .expect("platform in index");
    let raw = skopeo::inspect_raw(&format!("{repo}@{}", digest(child)))
        .await
        .expect("inspect manifest");
    let manifest: Value = serde_json::from_slice(&raw).expect("manifest JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    std::iter::once(&manifest["config"])
        .chain(layers)
        .map(digest)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_through_lasti_as_a_registry_mirror() {
    let (hub, work) = (Registry::start(), TempDir::new().unwrap());
    let single = push(&hub, &work, 510, "library/app").await;
    let pinned = push(&hub, &work, 511, "library/pinned").await;
    let index = push_platforms(&hub, &work, 512, "library/multi", false).await;
    let list = push_platforms(&hub, &work, 514, "library/list", true).await;
    let lasti = Lasti::start_with(config(&[("docker.io", &hub.url())]), None).await;
    // The README's daemon.json; Docker Hub itself is NOWHERE.
    let docker = Docker::start(&lasti.host());

    let pulled = docker.pull("app:v1").await.unwrap();
    assert_eq!(pulled, [single.manifest_digest.as_str()]);
    // Again from nothing: lasti serves it from its cache.
    docker.run(&["image", "rm", "app:v1"]).await.unwrap();
    let pulled = docker.pull("app:v1").await.unwrap();
    assert_eq!(pulled, [single.manifest_digest.as_str()]);
    let pulled = docker.pull("multi:v1").await.unwrap();
    assert_eq!(pulled, [index.top_digest.as_str()]);
    let pulled = docker.pull("list:v1").await.unwrap();
    assert_eq!(pulled, [list.top_digest.as_str()]);
    let by_digest = format!("pinned@{}", pinned.manifest_digest);
    let pulled = docker.pull(&by_digest).await.unwrap();
    assert_eq!(pulled, [pinned.manifest_digest.as_str()]);

    let mut chosen = single.blob_digests();
    chosen.extend(pinned.blob_digests());
    chosen.extend(index.chosen.iter().chain(&list.chosen).cloned());
    for digest in chosen {
        assert_eq!(hub.settled_blob_gets(&digest, 1), 1, "{digest}");
    }
    for digest in index.other.iter().chain(&list.other) {
        assert_eq!(hub.blob_gets(digest), 0, "other platform: {digest}");
    }
}

/// docker sends a mirror the credentials it holds for Docker Hub, never
/// those it holds for the mirror: with lasti in authenticated mode, pull by
/// lasti's own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_from_authenticated_lasti_by_its_name_not_as_a_mirror() {
    let (hub, work) = (Registry::start(), TempDir::new().unwrap());
    let image = push(&hub, &work, 520, "library/app").await;
    let htpasswd = work.path().join("htpasswd");
    let line = format!("bob:{}\n", bcrypt::hash("s3cret", 4).unwrap());
    std::fs::write(&htpasswd, line).unwrap();
    let mut cfg = config(&[("docker.io", &hub.url())]);
    cfg.access.mode = AccessMode::Authenticated;
    cfg.access.htpasswd_file = Some(htpasswd);
    let lasti = Lasti::start_with(cfg, None).await;
    let docker = Docker::start(&lasti.host());
    let by_name = format!("{}/library/app:v1", lasti.host());
    // dockerd's log of each pull lasti refused for want of credentials.
    let asked = format!("{}/v2/library/app/manifests/v1", lasti.url());
    let refusals = || {
        let log = docker.log();
        let lines = log.lines().filter(|l| l.contains(&asked));
        lines
            .filter(|l| l.contains("no basic auth credentials"))
            .count()
    };

    let anonymous = docker.pull("app:v1").await;
    assert!(anonymous.is_err(), "an anonymous mirror pull is refused");
    let anonymous = docker.pull(&by_name).await;
    assert!(anonymous.is_err(), "an anonymous pull by name is refused");
    let wrong = docker.login(&lasti.host(), "bob", "wrong").await;
    assert!(wrong.is_err(), "a wrong password does not log in");

    docker.login(&lasti.host(), "bob", "s3cret").await.unwrap();
    let before = refusals();
    let mirror = docker.pull("app:v1").await;
    assert!(mirror.is_err(), "lasti's login is not sent to the mirror");
    assert!(
        refusals() > before,
        "the mirror was asked without credentials"
    );
    for digest in image.blob_digests() {
        assert_eq!(hub.blob_gets(&digest), 0, "refused pulls fetch nothing");
    }
    let pulled = docker.pull(&by_name).await.unwrap();
    assert_eq!(pulled, [image.manifest_digest.as_str()]);
    for digest in image.blob_digests() {
        assert_eq!(hub.settled_blob_gets(&digest, 1), 1, "{digest}");
    }

    // What the mirror is sent: the credentials kept for Docker Hub.
    docker.store_credentials(DOCKER_HUB_AUTH_KEY, "bob", "s3cret");
    let pulled = docker.pull("app:v1").await.unwrap();
    assert_eq!(pulled, [image.manifest_digest.as_str()]);
}
