//! nginx (`/usr/sbin/nginx`) as a throttled front for a real registry:
//! `limit_rate` makes every blob body take a while (nginx buffers the
//! registry's answer and sends it to the client at the rate), so fills started by
//! several replicas overlap as they would behind a slow upstream.
//!
//! One nginx process (`master_process off`), everything in its own
//! temporary directory, on a free loopback port, under coreutils `timeout`;
//! killed by PID when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// nginx from the Debian package `nginx`.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";
/// The longest the front may live, even if its test process died.
const HARD_LIFETIME: Duration = Duration::from_secs(600);

/// A running nginx in front of one registry.
pub struct Throttle {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Throttle {
    /// Proxies `127.0.0.1:<port>` to `backend` (`host:port`), sending each
    /// response at most `rate` (nginx syntax: `4m` is 4 MiB/s).
    pub fn start(backend: &str, rate: &str) -> Throttle {
        super::require_tool(NGINX_BIN);
        let dir = tempfile::Builder::new()
            .prefix("lasti-nginx-")
            .tempdir()
            .expect("nginx temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config(dir.path(), addr, backend, rate)).expect("nginx.conf");
        let child = Command::new("/usr/bin/timeout")
            .args(["--signal=KILL", &format!("{}s", HARD_LIFETIME.as_secs())])
            .arg(NGINX_BIN)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let throttle = Throttle {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::http_get_status(addr, "/v2/", None).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        throttle
    }

    /// `127.0.0.1:port`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        super::end_wrapped(&mut self.child);
    }
}

fn config(dir: &Path, addr: SocketAddr, backend: &str, rate: &str) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log {dir}/access.log;\n\
         client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n\
         scgi_temp_path {dir}/scgi;\n\
         server {{\n    listen {addr};\n    location / {{\n\
         proxy_pass http://{backend};\n      proxy_set_header Host $http_host;\n\
         proxy_http_version 1.1;\n      limit_rate {rate};\n\
         }}\n  }}\n}}\n"
    )
}
