//! A docker daemon of the test's own (`/usr/sbin/dockerd`, Debian package
//! `docker.io`) driven with the `docker` CLI, with lasti as its registry
//! mirror, configured as the README says.
//!
//! Nothing is shared with a system docker: the daemon's config file, data
//! root, exec root, PID file, trust key and socket live in a temporary
//! directory; it uses a [`Containerd`] of the test's own (so it starts no
//! containerd child); no bridge, no iptables, the vfs storage driver. The
//! only path outside it is the empty `/run/docker/plugins`, which dockerd
//! always creates. The CLI keeps its logins in a config file in the same
//! directory. Docker Hub, where dockerd falls back when the mirror fails,
//! is reached through a proxy at a closed loopback port, so the fallback
//! fails at once and nothing leaves the machine. The daemon runs under
//! `timeout` and is ended by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::containerd::Containerd;

/// The daemon from the Debian package `docker.io`.
pub const DOCKERD_BIN: &str = "/usr/sbin/dockerd";
/// The client from the same package.
pub const DOCKER_BIN: &str = "/usr/bin/docker";
/// The longest the daemon may live, even if its test process died.
const HARD_LIFETIME: &str = "300";
/// The longest one docker invocation may run.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the daemon may take to answer its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The proxy for everything but loopback: a closed port.
const NOWHERE_PROXY: &str = "http://127.0.0.1:1";
/// The key under which the CLI keeps Docker Hub's credentials.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A running dockerd.
pub struct Docker {
    wrapper: Child,
    // Dropped after the daemon is ended (fields drop after `Drop::drop`).
    _containerd: Containerd,
    dir: TempDir,
}

impl Docker {
    /// Starts dockerd with `mirror` (`127.0.0.1:port`, plain HTTP) as its
    /// registry mirror and waits until it answers.
    pub fn start(mirror: &str) -> Docker {
        super::require_tool(DOCKERD_BIN);
        super::require_tool(DOCKER_BIN);
        let containerd = Containerd::start();
        let dir = TempDir::new().expect("docker dir");
        let path = dir.path();
        std::fs::write(
            path.join("daemon.json"),
            daemon_json(path, mirror, &containerd.socket()).to_string(),
        )
        .expect("write daemon.json");
        std::fs::create_dir_all(path.join("cli")).expect("cli config dir");
        let log = std::fs::File::create(path.join("dockerd.log")).expect("log");
        let wrapper = Command::new("/usr/bin/timeout")
            .args(["--signal=KILL", HARD_LIFETIME, DOCKERD_BIN, "--config-file"])
            .arg(path.join("daemon.json"))
            .env("HTTP_PROXY", NOWHERE_PROXY)
            .env("HTTPS_PROXY", NOWHERE_PROXY)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut docker = Docker {
            wrapper,
            _containerd: containerd,
            dir,
        };
        docker.wait_until_ready();
        docker
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers() {
            let exited = matches!(self.wrapper.try_wait(), Ok(Some(_)));
            assert!(
                !exited && Instant::now() < deadline,
                "dockerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        self.cli_sync()
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The daemon's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn cli_env(&self) -> [(&'static str, String); 3] {
        let path = self.dir.path();
        [
            (
                "DOCKER_HOST",
                format!("unix://{}", path.join("docker.sock").display()),
            ),
            ("DOCKER_CONFIG", path.join("cli").display().to_string()),
            // No credential helper can be found: logins go to the config file.
            ("PATH", String::new()),
        ]
    }

    fn cli_sync(&self) -> Command {
        let mut command = Command::new(DOCKER_BIN);
        command.envs(self.cli_env());
        command
    }

    /// Runs `docker <args>` against this daemon; its stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut command = tokio::process::Command::new(DOCKER_BIN);
        command.envs(self.cli_env()).args(args);
        let shown = format!("docker {}", args.join(" "));
        let stdout = super::output_of(command, &shown, DOCKER_TIMEOUT).await?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_string())
    }

    /// `docker login -u <user> <registry>`: the daemon checks the
    /// credentials against `registry`, the CLI keeps them for it.
    pub async fn login(&self, registry: &str, user: &str, password: &str) -> Result<(), String> {
        self.run(&["login", "-u", user, "-p", password, registry])
            .await
            .map(drop)
    }

    /// Stores credentials under `key` in the CLI's config file as
    /// `docker login` would, without asking any registry.
    pub fn store_credentials(&self, key: &str, user: &str, password: &str) {
        let file = self.dir.path().join("cli").join("config.json");
        let mut config: Value = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| json!({}));
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        config["auths"][key] = json!({ "auth": auth });
        std::fs::write(&file, config.to_string()).expect("write CLI config.json");
    }

    /// Pulls `image` (as a user names it: `app:v1`, `app@sha256:..`,
    /// `127.0.0.1:port/library/app:v1`) and returns the manifest digests
    /// docker recorded for it (`RepoDigests`, without the names).
    pub async fn pull(&self, image: &str) -> Result<Vec<String>, String> {
        self.run(&["pull", "--quiet", image]).await?;
        let format = "{{json .RepoDigests}}";
        let listed = self
            .run(&["image", "inspect", "--format", format, image])
            .await?;
        let names: Vec<String> = serde_json::from_str(&listed)
            .map_err(|e| format!("RepoDigests of {image}: {e}: {listed}"))?;
        let mut digests: Vec<String> = names
            .iter()
            .filter_map(|name| name.split_once('@').map(|(_, d)| d.to_string()))
            .collect();
        digests.sort();
        digests.dedup();
        Ok(digests)
    }
}

/// The daemon's whole configuration: `mirror` as in the README, every path
/// in `dir`, nothing that touches the host's network.
fn daemon_json(dir: &Path, mirror: &str, containerd: &Path) -> Value {
    let at = |name: &str| -> PathBuf { dir.join(name) };
    json!({
        "registry-mirrors": [format!("http://{mirror}")],
        "insecure-registries": [mirror],
        "iptables": false,
        "ip6tables": false,
        "ip-forward": false,
        "ip-masq": false,
        "bridge": "none",
        "storage-driver": "vfs",
        "data-root": at("data"),
        "exec-root": at("exec"),
        "pidfile": at("docker.pid"),
        "deprecated-key-path": at("key.json"),
        "hosts": [format!("unix://{}", at("docker.sock").display())],
        "containerd": containerd,
        "log-level": "info",
    })
}

impl Drop for Docker {
    fn drop(&mut self) {
        super::end_wrapped(&mut self.wrapper);
        unmount_below(self.dir.path());
    }
}

/// dockerd bind-mounts its data root onto itself and unmounts it when it
/// shuts down; if it was killed instead, the mount would keep the temporary
/// directory from being removed.
fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for point in mounts.lines().filter_map(|line| line.split(' ').nth(1)) {
        if Path::new(point).starts_with(dir) {
            let _ = Command::new("/usr/bin/umount").arg(point).status();
        }
    }
}
