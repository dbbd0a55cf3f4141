//! lasti as a child process (for signals: SIGKILL, SIGTERM), wrapped in
//! `timeout` so it never outlives a test, and always ended by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// By default the wrapper kills lasti after this long, whatever happens.
const HARD_LIFETIME: Duration = Duration::from_secs(120);

/// A lasti config file for a child process: loopback ports, `data/` and
/// `lasti.toml` inside a test's work directory, one `docker.io` upstream.
/// Restarts reuse the same file and ports.
pub struct Setup {
    path: PathBuf,
    api_port: u16,
    admin_port: u16,
    lifetime: Duration,
    env: Vec<(String, String)>,
}

impl Setup {
    /// Writes `lasti.toml` into `work`. `settings` are extra top-level lines;
    /// `sections` are extra TOML tables, after the upstream.
    pub fn write(work: &Path, upstream_url: &str, settings: &str, sections: &str) -> Setup {
        let (api_port, admin_port) = (super::free_port(), super::free_port());
        let config = format!(
            "listen = \"127.0.0.1:{api_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             data_dir = {:?}\n{settings}\n[log]\nfilter = \"error\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"{upstream_url}\"\n{sections}\n",
            work.join("data"),
        );
        let path = work.join("lasti.toml");
        std::fs::write(&path, config).expect("write lasti.toml");
        Setup {
            path,
            api_port,
            admin_port,
            lifetime: HARD_LIFETIME,
            env: Vec::new(),
        }
    }

    /// Lets lasti live longer than the default two minutes (load tests).
    pub fn lifetime(mut self, lifetime: Duration) -> Setup {
        self.lifetime = lifetime;
        self
    }

    /// Sets an environment variable for the lasti processes started from here.
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts lasti on this config and waits until `/v2/` answers.
    pub fn start(&self) -> Process {
        Process::start(self)
    }
}

/// A running lasti process.
pub struct Process {
    wrapper: Child,
    /// `127.0.0.1:port` of the registry API.
    pub api: String,
    /// `http://127.0.0.1:port` of the admin listener.
    pub admin: String,
}

impl Process {
    /// Starts `lasti --config FILE`, to be killed after the setup's
    /// lifetime, and waits until `/v2/` answers.
    fn start(setup: &Setup) -> Process {
        let wrapper = Command::new("/usr/bin/timeout")
            .arg("--signal=KILL")
            .arg(format!("{}s", setup.lifetime.as_secs()))
            .args([env!("CARGO_BIN_EXE_lasti"), "--config"])
            .arg(&setup.path)
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(setup))
            .spawn()
            .expect("start lasti");
        let process = Process {
            wrapper,
            api: format!("127.0.0.1:{}", setup.api_port),
            admin: format!("http://127.0.0.1:{}", setup.admin_port),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::http_get_status(process.api.parse().unwrap(), "/v2/", None).is_err() {
            assert!(Instant::now() < deadline, "lasti did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    /// lasti's own PID (the wrapper's child).
    pub fn pid(&self) -> String {
        let children = format!("/proc/{0}/task/{0}/children", self.wrapper.id());
        let pids = std::fs::read_to_string(children).expect("wrapper's children");
        pids.split_whitespace()
            .next()
            .expect("lasti's pid")
            .to_string()
    }

    /// Sends a signal (`KILL`, `TERM`) to lasti by PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("/bin/kill")
            .args([&format!("-{name}"), &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGKILL to lasti, then reap it.
    pub fn kill_lasti(mut self) {
        self.signal("KILL");
        let _ = self.wrapper.wait();
    }

    /// Waits for lasti to exit, at most `limit`; its exit status.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.wrapper.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "lasti did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where lasti's log goes: nowhere, or, when `LASTI_TEST_LOG_DIR` is set
/// (to look into a failing test, with `RUST_LOG` for the level), appended
/// to `<dir>/lasti-<api port>.log`.
fn log_file(setup: &Setup) -> Stdio {
    let Some(dir) = std::env::var_os("LASTI_TEST_LOG_DIR") else {
        return Stdio::null();
    };
    let path = Path::new(&dir).join(format!("lasti-{}.log", setup.api_port));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(file) => file.into(),
        Err(e) => panic!("cannot open {}: {e}", path.display()),
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        super::end_wrapped(&mut self.wrapper);
    }
}
