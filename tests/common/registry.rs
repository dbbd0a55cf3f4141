//! A real CNCF distribution registry (`/usr/bin/docker-registry`, 2.8) for
//! interop tests.
//!
//! Each [`Registry`] owns a temporary directory holding its config, its
//! filesystem storage and its log (access log on stdout, app log on stderr,
//! both in one file). It listens on a free loopback port and is killed when
//! dropped. As a second line of defence it runs under coreutils `timeout`, so
//! an instance orphaned by a killed test process dies after
//! [`HARD_LIFETIME`] anyway.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The distribution registry binary from the Debian package `docker-registry`.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// coreutils `timeout`, which caps each registry's lifetime.
const TIMEOUT_BIN: &str = "/usr/bin/timeout";
/// procps `kill`, to signal by PID (std's `Child::kill` only sends SIGKILL).
const KILL_BIN: &str = "/usr/bin/kill";
/// `htpasswd` from the Debian package `apache2-utils`, for bcrypt lines.
const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";
/// The longest a registry process may live, even if its test process died.
pub const HARD_LIFETIME: Duration = Duration::from_secs(600);
/// How long a registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports to try before giving up (another process may grab one).
const START_ATTEMPTS: usize = 5;
/// How long a registry may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long [`Registry::wait_for_requests`] waits for access-log lines.
const LOG_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of log shown when the registry fails to start.
const LOG_TAIL_LINES: usize = 40;
/// The realm in the registry's htpasswd config.
pub const HTPASSWD_REALM: &str = "lasti-test";

/// How to configure a [`Registry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Require HTTP Basic auth with this `(user, password)` (htpasswd, bcrypt).
    pub htpasswd: Option<(String, String)>,
    /// More users of the htpasswd file (each may pull and push everything,
    /// as distribution's htpasswd auth has no per-repository rules).
    pub more_users: Vec<(String, String)>,
}

/// A running distribution registry on `127.0.0.1:<port>`.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    // Dropped after the child is killed (fields drop after `Drop::drop`).
    dir: TempDir,
}

/// Why one start attempt did not give a running registry.
enum StartFailure {
    /// The process exited (typically: the port was taken); try another port.
    Exited(String),
    /// The process stayed up but never answered; retrying will not help.
    Unresponsive(String),
}

impl Registry {
    /// Starts an open (no auth) registry.
    pub fn start() -> Registry {
        Registry::start_with(RegistryOptions::default())
    }

    /// Starts a registry configured by `options`; panics with the log tail if
    /// it does not answer `GET /v2/` within 10 s.
    pub fn start_with(options: RegistryOptions) -> Registry {
        super::require_tool(REGISTRY_BIN);
        super::require_tool(TIMEOUT_BIN);
        let dir = tempfile::Builder::new()
            .prefix("lasti-registry-")
            .tempdir()
            .expect("create registry temp dir");
        if let Some(first) = &options.htpasswd {
            let users: Vec<_> = std::iter::once(first).chain(&options.more_users).collect();
            write_htpasswd(&dir.path().join("htpasswd"), &users);
        }
        let log_path = dir.path().join("registry.log");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            match spawn_and_wait(dir.path(), &log_path, addr, &options) {
                Ok(child) => {
                    return Registry {
                        child,
                        addr,
                        log_path,
                        dir,
                    }
                }
                Err(StartFailure::Exited(log)) => last_log = log,
                Err(StartFailure::Unresponsive(log)) => {
                    panic!("{REGISTRY_BIN} on {addr} did not answer GET /v2/ within {START_TIMEOUT:?}; log tail:\n{log}")
                }
            }
        }
        panic!("{REGISTRY_BIN} exited on start {START_ATTEMPTS} times (ports taken?); last log tail:\n{last_log}")
    }

    /// The socket address the registry listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>`, the form skopeo and image references use.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's filesystem storage root (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The whole log: access log lines and warnings.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Counts access-log requests whose method is `method` and whose path
    /// contains `path_contains`.
    ///
    /// The registry logs a request just after answering it, so a count taken
    /// the instant a client finishes may lag; see [`Registry::wait_for_requests`].
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.log()
            .lines()
            .filter_map(parse_request_line)
            .filter(|(m, path)| *m == method && path.contains(path_contains))
            .count()
    }

    /// Every request in the access log, whatever its method and path.
    pub fn all_requests(&self) -> usize {
        self.log().lines().filter_map(parse_request_line).count()
    }

    /// `GET`s of `/blobs/<digest>` (digest as `sha256:<hex>`).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.count_requests("GET", &format!("/blobs/{digest}"))
    }

    /// [`Registry::blob_gets`] once the log holds at least `expected` of
    /// them (or 2 s have passed): for asserting an exact count right after
    /// a client finishes, when the last GET may not be logged yet.
    pub fn settled_blob_gets(&self, digest: &str, expected: usize) -> usize {
        self.wait_for_requests("GET", &format!("/blobs/{digest}"), expected)
    }

    /// `GET`s of `/manifests/<reference>` (a tag or a digest).
    pub fn manifest_gets(&self, reference: &str) -> usize {
        self.count_requests("GET", &format!("/manifests/{reference}"))
    }

    /// Polls [`Registry::count_requests`] for up to 2 s until it reaches
    /// `at_least`, and returns the last count (which may exceed `at_least`).
    pub fn wait_for_requests(&self, method: &str, path_contains: &str, at_least: usize) -> usize {
        let deadline = Instant::now() + LOG_SETTLE_TIMEOUT;
        loop {
            let count = self.count_requests(method, path_contains);
            if count >= at_least || Instant::now() >= deadline {
                return count;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Splits a combined-format access-log line into its method and path.
///
/// `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 ...`
/// gives `("GET", "/v2/x/blobs/sha256:..")`; any other line gives `None`.
pub fn parse_request_line(line: &str) -> Option<(&str, &str)> {
    let (_, rest) = line.split_once("] \"")?;
    let request = rest.split('"').next()?;
    let mut parts = request.split(' ');
    let method = parts.next()?;
    let path = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some((method, path))
}

/// Spawns one registry on `addr` and waits until `/v2/` answers.
fn spawn_and_wait(
    dir: &Path,
    log_path: &Path,
    addr: SocketAddr,
    options: &RegistryOptions,
) -> Result<Child, StartFailure> {
    let config_path = dir.join("config.yml");
    fs::write(&config_path, config_yaml(dir, addr, options)).expect("write registry config");
    let mut child = spawn(&config_path, log_path);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.try_wait().expect("poll registry process").is_some() {
            return Err(StartFailure::Exited(log_tail(log_path)));
        }
        // Our own access log must show the probe: a stranger that grabbed
        // the port in the meantime could answer it too.
        if super::http_get_status(addr, "/v2/", None).is_ok() && logged_probe(log_path) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            return Err(StartFailure::Unresponsive(log_tail(log_path)));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Runs `timeout <lifetime> docker-registry serve <config>`, output to `log_path`.
///
/// `timeout` puts itself and the registry into a new process group whose id
/// is the child's PID, which is what [`stop`] signals as a last resort.
fn spawn(config_path: &Path, log_path: &Path) -> Child {
    let log = File::create(log_path).expect("create registry log");
    let log_err = log.try_clone().expect("clone registry log handle");
    Command::new(TIMEOUT_BIN)
        .arg("--signal=KILL")
        .arg(format!("{}s", HARD_LIFETIME.as_secs()))
        .arg(REGISTRY_BIN)
        .arg("serve")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {TIMEOUT_BIN} {REGISTRY_BIN}: {e}"))
}

/// Stops `timeout` and the registry under it, by PID, and reaps both.
///
/// SIGTERM to `timeout` is forwarded to the registry (which exits at once:
/// no drain timeout is configured) and `timeout` reaps it before exiting, so
/// when this returns the port is closed and no zombie is left. If that does
/// not happen within [`STOP_TIMEOUT`], the whole process group (whose id is
/// the child's PID: `timeout` makes its own group) gets SIGKILL.
pub fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal("TERM", &child.id().to_string());
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    signal("KILL", &format!("-{}", child.id()));
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `SIG<name>` to `target` (a PID, or `-PGID` for a process group).
fn signal(name: &str, target: &str) {
    let _ = Command::new(KILL_BIN)
        .args(["-s", name, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The registry config: filesystem storage in `dir`, deletes enabled, access
/// log on, app log at warn, optional htpasswd auth.
fn config_yaml(dir: &Path, addr: SocketAddr, options: &RegistryOptions) -> String {
    let storage = yaml_str(&dir.join("storage"));
    let auth = match options.htpasswd {
        Some(_) => format!(
            "auth:\n  htpasswd:\n    realm: {HTPASSWD_REALM}\n    path: {}\n",
            yaml_str(&dir.join("htpasswd"))
        ),
        None => String::new(),
    };
    format!(
        "version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: lasti-test-registry-secret
{auth}"
    )
}

/// A path as a double-quoted YAML scalar (a JSON string is valid YAML).
fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("encode path")
}

/// Writes a one-user bcrypt htpasswd file using `htpasswd -Bbn`.
fn write_htpasswd(path: &Path, users: &[&(String, String)]) {
    assert!(
        Path::new(HTPASSWD_BIN).exists(),
        "{HTPASSWD_BIN} is missing: htpasswd auth needs the Debian package `apache2-utils`; \
         run the test command from the README, which installs it"
    );
    let mut lines = Vec::new();
    for (user, password) in users {
        let out = Command::new(HTPASSWD_BIN)
            .args(["-Bbn", user, password])
            .stdin(Stdio::null())
            .output()
            .expect("run htpasswd");
        assert!(
            out.status.success(),
            "htpasswd -Bbn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines.extend_from_slice(out.stdout.trim_ascii_end());
        lines.push(b'\n');
    }
    fs::write(path, &lines).expect("write htpasswd file");
}

/// Whether the access log at `path` shows a `GET /v2/` (a readiness probe).
fn logged_probe(path: &Path) -> bool {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_request_line)
        .any(|request| request == ("GET", "/v2/"))
}

/// The last lines of the log at `path`, for failure messages.
fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
