//! A full disk: lasti's data directory on a small tmpfs (the test mounts it;
//! it needs root, as CI has). Misses that do not fit are streamed to the
//! client whole and verified but not cached, counted in
//! `lasti_cache_write_failures_total`; no half-written file is taken for a
//! blob; caching resumes when space returns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::lasti::{config, Lasti};
use common::oci_layout::{ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
use tempfile::TempDir;

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (as CI has)");
        SmallDisk {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_streams_misses_through_and_caching_resumes_when_space_returns() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    let mib = 1024 * 1024;
    let spec = ImageSpec::linux_amd64(120, &[1024, 6 * mib]);
    let (layout, image) = Layout::single(&work.path().join("img"), &spec, "v1");
    skopeo::push_layout(
        &layout.dir,
        "v1",
        &format!("{}/library/f:v1", registry.host()),
        false,
    )
    .await
    .unwrap();
    let disk = SmallDisk::mount(&work.path().join("disk"), "8m");
    // Ballast leaves about 3 MiB free: the 6 MiB layer cannot be cached.
    let ballast = disk.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 5 * mib]).unwrap();
    let data = disk.path.join("data");
    let mut cfg = config(&[("docker.io", &registry.url())]);
    cfg.data_dir = data.clone();
    let lasti = Lasti::start_with_dir(cfg).await;

    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    expected.sort();
    let src = format!("{}/library/f:v1", lasti.host());
    let first = skopeo::pull_to_dir(&src, &work.path().join("a"), false).await;
    first.expect("the pull succeeds though the disk is full");
    assert_eq!(skopeo::dir_digests(&work.path().join("a")), expected);
    let big = &image.layer_digests[1];
    let hex = big.trim_start_matches("sha256:");
    let stored = data.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    assert!(
        !stored.exists(),
        "nothing half-written is taken for the blob"
    );
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    let metrics = common::http::get(&format!("{}/metrics", lasti.admin_url()), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("lasti_cache_write_failures_total 1"),
        "{text}"
    );

    // Space returns: the next miss is cached, the one after is a hit.
    std::fs::remove_file(&ballast).unwrap();
    skopeo::pull_to_dir(&src, &work.path().join("b"), false)
        .await
        .unwrap();
    assert!(stored.exists(), "cached once there is room");
    skopeo::pull_to_dir(&src, &work.path().join("c"), false)
        .await
        .unwrap();
    assert_eq!(
        registry.wait_for_requests("GET", &format!("/blobs/{big}"), 2),
        2
    );
    assert_eq!(skopeo::dir_digests(&work.path().join("c")), expected);
    drop(lasti);
}
