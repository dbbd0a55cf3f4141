//! A containerd daemon of the test's own (`/usr/bin/containerd`, Debian
//! package `containerd`), pulled through with `ctr` and a hosts directory
//! (`certs.d/<registry>/hosts.toml`), as a node is configured to use a
//! mirror. Its root, state and socket live in a temporary directory; the CRI
//! plugin is off; pulled layers are unpacked with the native snapshotter, so
//! they must be real tar archives. It runs under `timeout` and is ended by
//! PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// containerd and ctr from the Debian package `containerd`.
pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
/// The client.
pub const CTR_BIN: &str = "/usr/bin/ctr";
/// The longest the daemon may live, even if its test process died.
const HARD_LIFETIME: &str = "300";
/// The longest one ctr invocation may run.
const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// A running containerd.
pub struct Containerd {
    dir: TempDir,
    wrapper: Child,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub fn start() -> Containerd {
        super::require_tool(CONTAINERD_BIN);
        let dir = TempDir::new().expect("containerd dir");
        let path = dir.path();
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\naddress = {:?}\n[ttrpc]\naddress = {:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\npath = {:?}\n",
            path.join("root"),
            path.join("state"),
            path.join("containerd.sock"),
            path.join("containerd.sock.ttrpc"),
            path.join("opt"),
        );
        std::fs::write(path.join("config.toml"), config).expect("write containerd config");
        std::fs::create_dir_all(path.join("certs.d")).expect("certs.d");
        let log = std::fs::File::create(path.join("containerd.log")).expect("log");
        let wrapper = Command::new("/usr/bin/timeout")
            .args(["--signal=KILL", HARD_LIFETIME, CONTAINERD_BIN, "--config"])
            .arg(path.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { dir, wrapper };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !containerd.ctr_sync(&["version"]) {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    /// The daemon's gRPC socket, for a client or a dockerd of the test's own.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn ctr_sync(&self, args: &[&str]) -> bool {
        Command::new(CTR_BIN)
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The daemon's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Writes `certs.d/<registry>/hosts.toml`.
    pub fn write_hosts(&self, registry: &str, hosts_toml: &str) {
        let dir = self.dir.path().join("certs.d").join(registry);
        std::fs::create_dir_all(&dir).expect("hosts dir");
        std::fs::write(dir.join("hosts.toml"), hosts_toml).expect("write hosts.toml");
    }

    /// Runs `ctr <args>` against this daemon; its stdout.
    pub async fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let mut command = tokio::process::Command::new(CTR_BIN);
        command.arg("--address").arg(self.socket()).args(args);
        let shown = format!("ctr {}", args.join(" "));
        let stdout = super::output_of(command, &shown, CTR_TIMEOUT).await?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// Pulls and unpacks `image` (`docker.io/library/app:v1`) through the
    /// hosts directory; returns the manifest digest containerd recorded.
    pub async fn pull(&self, image: &str) -> Result<String, String> {
        let hosts = self.dir.path().join("certs.d");
        let hosts = hosts.to_str().expect("utf-8 path");
        self.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "--snapshotter",
            "native",
            image,
        ])
        .await?;
        let listing = self.ctr(&["images", "ls"]).await?;
        listing
            .lines()
            .find_map(|line| {
                let mut columns = line.split_whitespace();
                (columns.next() == Some(image)).then(|| columns.nth(1))?
            })
            .map(str::to_string)
            .ok_or_else(|| format!("{image} not in `ctr images ls`:\n{listing}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        super::end_wrapped(&mut self.wrapper);
    }
}
