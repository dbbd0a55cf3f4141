//! moto's S3 server on loopback, a second S3 store as strict as AWS where
//! Garage is lenient: it refuses to complete a multipart upload whose parts
//! before the last are under 5 MiB (`EntityTooSmall`), as AWS, Ceph and
//! MinIO do. It keeps its objects in memory and takes any key. moto is a
//! test tool only, installed from PyPI by the README's test command into a
//! virtualenv outside the repository (its path in `LASTI_MOTO_SERVER`).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::s3::Store;

/// The region moto signs for.
pub const REGION: &str = "us-east-1";
/// moto never outlives a test by more than this.
const HARD_LIFETIME: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports tried when the free one found was taken before moto bound it.
const PORT_ATTEMPTS: usize = 3;
/// The key lasti and the tests sign with (moto checks no signature).
const KEY_ID: &str = "lasti-test";
const SECRET: &str = "lasti-test-secret";

/// A running moto S3 server with the bucket [`super::s3::BUCKET`].
pub struct Moto {
    child: Child,
    /// `127.0.0.1:port` of the S3 API.
    pub s3: SocketAddr,
    // Dropped after the child is killed.
    _dir: TempDir,
}

/// `moto_server`: `LASTI_MOTO_SERVER`, or where the README's test command
/// installs it.
pub fn binary() -> PathBuf {
    match std::env::var_os("LASTI_MOTO_SERVER") {
        Some(path) => PathBuf::from(path),
        None => super::cache_dir().join("lasti-test/venv/bin/moto_server"),
    }
}

impl Moto {
    /// Starts moto on a free loopback port and creates the bucket.
    pub fn start() -> Moto {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: run the README's test command (./scripts/test), which installs \
             moto[server] into its virtualenv",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("lasti-moto-")
            .tempdir()
            .expect("moto temp dir");
        let (child, s3) = (1..=PORT_ATTEMPTS)
            .find_map(|_| launch(&bin, dir.path()))
            .unwrap_or_else(|| panic!("moto did not start: {}", log(dir.path())));
        let moto = Moto {
            child,
            s3,
            _dir: dir,
        };
        let (status, answer) = moto.request("PUT", "", None);
        assert_eq!(
            status,
            200,
            "create the bucket in moto: {}",
            String::from_utf8_lossy(&answer)
        );
        moto
    }
}

/// Starts moto on a port that was free and waits until it listens; `None`
/// when it exited first (the port was taken meanwhile).
fn launch(bin: &Path, dir: &Path) -> Option<(Child, SocketAddr)> {
    let s3 = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
    let out = std::fs::File::create(dir.join("moto.log")).expect("moto.log");
    let mut child = Command::new("timeout")
        .arg(HARD_LIFETIME.as_secs().to_string())
        .arg(bin)
        .args(["-H", "127.0.0.1", "-p", &s3.port().to_string()])
        // AWS's 5 MiB minimum part, whatever the environment says.
        .env_remove("S3_UPLOAD_PART_MIN_SIZE")
        .env("TMPDIR", dir)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .spawn()
        .expect("start moto_server");
    match wait_for(&mut child, s3) {
        Ok(()) => Some((child, s3)),
        Err(status) => {
            eprintln!("moto exited on start ({status}): {}", log(dir));
            None
        }
    }
}

/// Waits until `addr` takes connections; the exit status if `child` ends first.
fn wait_for(child: &mut Child, addr: SocketAddr) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        if Instant::now() > deadline {
            super::registry::stop(child);
            panic!("moto did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
}

impl Store for Moto {
    fn endpoint(&self) -> String {
        format!("http://{}", self.s3)
    }

    fn region(&self) -> &str {
        REGION
    }

    fn key(&self) -> (&str, &str) {
        (KEY_ID, SECRET)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        super::registry::stop(&mut self.child);
    }
}
