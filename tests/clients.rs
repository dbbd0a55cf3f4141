//! Real container clients pulling through lasti configured as the README
//! says: podman with a registries.conf mirror (the file and library CRI-O
//! uses too) and containerd with a `hosts.toml` per registry. Two upstream
//! registries hold different images, so only correct routing, by path prefix
//! (podman) or by containerd's `ns=` parameter, finds each one.
//!
//! Every registry location in the clients' configs is a closed loopback port
//! (`127.0.0.1:1`) where the README has the real registry, so a client that
//! got nothing from lasti fails instead of going anywhere off the machine.

mod common;

use common::containerd::Containerd;
use common::lasti::{config, Lasti};
use common::oci_layout::{BuiltImage, ImageSpec, Layout};
use common::podman::Podman;
use common::registry::Registry;
use common::skopeo;
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
                assert_eq!(registry.blob_gets(&digest), 1, "{digest}");
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
