//! Garage, a real S3-compatible object store, as a single node on loopback:
//! one bucket and one access key with read and write on it, in a temporary
//! directory of its own. Garage is a test tool only, built once by
//! `scripts/garage` into a cache directory outside the repository (the
//! README's test command does it and passes the path in `LASTI_GARAGE`).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::s3::{Store, BUCKET};

/// The region Garage answers for.
pub const REGION: &str = "garage";
/// Garage never outlives a test by more than this.
const HARD_LIFETIME: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running single-node Garage.
pub struct Garage {
    child: Child,
    /// `127.0.0.1:port` of the S3 API.
    pub s3: SocketAddr,
    /// The access key id with read and write on [`BUCKET`].
    pub key_id: String,
    /// Its secret.
    pub secret: String,
    config: PathBuf,
    // Dropped after the child is killed.
    _dir: TempDir,
}

/// The Garage binary: `LASTI_GARAGE`, or where `scripts/garage` builds it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LASTI_GARAGE") {
        return PathBuf::from(path);
    }
    super::cache_dir().join("lasti-tools/garage-2.5.0/bin/garage")
}

impl Garage {
    /// Starts Garage, gives it a layout, creates the bucket and the key.
    pub fn start() -> Garage {
        Garage::start_on(super::free_port())
    }

    /// [`Garage::start`] with its S3 API on `127.0.0.1:<s3_port>`.
    pub fn start_on(s3_port: u16) -> Garage {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: run the README's test command, which builds Garage once with scripts/garage",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("lasti-garage-")
            .tempdir()
            .expect("garage temp dir");
        let s3 = SocketAddr::from(([127, 0, 0, 1], s3_port));
        let rpc = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let config = dir.path().join("garage.toml");
        std::fs::write(&config, config_toml(dir.path(), s3, rpc, admin)).expect("garage.toml");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("garage.log");
        let child = Command::new("timeout")
            .arg(HARD_LIFETIME.as_secs().to_string())
            .arg(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        let mut garage = Garage {
            child,
            s3,
            key_id: String::new(),
            secret: String::new(),
            config,
            _dir: dir,
        };
        garage.wait_for(rpc);
        garage.wait_for(s3);
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().expect("node id").to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&["bucket", "create", BUCKET]);
        let key = garage.cli(&["key", "create", "lasti-test"]);
        garage.key_id = field(&key, "Key ID:");
        garage.secret = field(&key, "Secret key:");
        garage.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "lasti-test",
        ]);
        garage
    }

    /// Runs a `garage` command against this node and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "garage {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn wait_for(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("garage exited on start ({status})");
            }
            assert!(Instant::now() < deadline, "garage did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Store for Garage {
    fn endpoint(&self) -> String {
        format!("http://{}", self.s3)
    }

    fn region(&self) -> &str {
        REGION
    }

    fn key(&self) -> (&str, &str) {
        (&self.key_id, &self.secret)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        super::registry::stop(&mut self.child);
    }
}

/// The value after `label` on its line of `garage key create`'s output.
fn field(output: &str, label: &str) -> String {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in garage's output:\n{output}"))
}

fn config_toml(dir: &Path, s3: SocketAddr, rpc: SocketAddr, admin: SocketAddr) -> String {
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    format!(
        "metadata_dir = {meta:?}\ndata_dir = {data:?}\ndb_engine = \"sqlite\"\n\
         replication_factor = 1\nrpc_bind_addr = \"{rpc}\"\nrpc_public_addr = \"{rpc}\"\n\
         rpc_secret = \"{secret}\"\n\
         [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"{s3}\"\n\
         root_domain = \".s3.garage.localhost\"\n\
         [admin]\napi_bind_addr = \"{admin}\"\n",
        meta = dir.join("meta"),
        data = dir.join("data"),
    )
}
