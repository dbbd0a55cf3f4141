//! podman (`/usr/bin/podman`, Debian package `podman`) pulling through lasti
//! as a mirror named in a registries.conf of the test's own: the file and the
//! library (containers/image) that CRI-O uses too. No daemon; images are
//! stored with the vfs driver in a temporary directory, which podman unpacks
//! every layer into, so the layers must be real tar archives.

use std::time::Duration;

use tempfile::TempDir;
use tokio::process::Command;

/// podman from the Debian package `podman`.
pub const PODMAN_BIN: &str = "/usr/bin/podman";
/// The longest one podman invocation may run.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// A podman with its own registries.conf and image store.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// A podman that reads `registries_conf` (TOML) and nothing else.
    pub fn new(registries_conf: &str) -> Podman {
        super::require_tool(PODMAN_BIN);
        let dir = TempDir::new().expect("podman dir");
        std::fs::write(dir.path().join("registries.conf"), registries_conf)
            .expect("write registries.conf");
        Podman { dir }
    }

    /// Runs `podman <args>` with this store and config; its stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let dir = self.dir.path();
        let mut command = Command::new(PODMAN_BIN);
        command
            .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
            .env("TMPDIR", dir)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(args);
        let shown = format!("podman {}", args.join(" "));
        let stdout = super::output_of(command, &shown, PODMAN_TIMEOUT).await?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_string())
    }

    /// Pulls `image` (as a user names it: `docker.io/library/app:v1`) and
    /// returns the manifest digest podman stored it under.
    pub async fn pull(&self, image: &str) -> Result<String, String> {
        self.run(&["pull", "--quiet", image]).await?;
        self.run(&["image", "inspect", "--format", "{{.Digest}}", image])
            .await
    }
}
