//! lasti as a child process (for signals: SIGKILL, SIGTERM), wrapped in
//! `timeout` so it never outlives a test, and always ended by PID.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The wrapper kills lasti after this long, whatever happens.
const HARD_LIFETIME: &str = "120";

/// A running lasti process.
pub struct Process {
    wrapper: Child,
    /// `127.0.0.1:port` of the registry API.
    pub api: String,
    /// `http://127.0.0.1:port` of the admin listener.
    pub admin: String,
}

impl Process {
    /// Starts `lasti --config FILE` and waits until `/v2/` answers.
    pub fn start(config_path: &Path, api_port: u16, admin_port: u16) -> Process {
        let wrapper = Command::new("/usr/bin/timeout")
            .args([
                "--signal=KILL",
                HARD_LIFETIME,
                env!("CARGO_BIN_EXE_lasti"),
                "--config",
            ])
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lasti");
        let process = Process {
            wrapper,
            api: format!("127.0.0.1:{api_port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
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

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.wrapper.try_wait(), Ok(None)) {
            let _ = Command::new("/bin/kill")
                .args(["-TERM", &self.wrapper.id().to_string()])
                .status();
            let _ = self.wrapper.wait();
        }
    }
}
