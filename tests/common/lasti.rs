//! Runs lasti in-process on a loopback port, the way `main` does, so tests
//! reach every layer through real HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use lasti::config::{Config, UpstreamConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

/// A running lasti with its own data directory.
pub struct Lasti {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin endpoints listen.
    pub admin_addr: SocketAddr,
    dir: std::path::PathBuf,
    data: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The configuration tests start from: one upstream per `(name, url)`, the
/// first the default, data in a fresh directory.
pub fn config(upstreams: &[(&str, &str)]) -> Config {
    let upstreams = upstreams
        .iter()
        .map(|(name, url)| {
            let mut u = UpstreamConfig::new(name, Url::parse(url).expect("test url"));
            u.retries = 1;
            u
        })
        .collect();
    Config {
        upstreams,
        ..Config::default()
    }
}

/// Gives `config` an admin token, in a file in `dir`; `Bearer <token>`,
/// the header value admin calls that change state carry.
pub fn admin_token(config: &mut Config, dir: &Path) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let token = format!("admin-{nanos:032x}");
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).expect("write the admin token");
    config.admin_token_file = Some(path);
    format!("Bearer {token}")
}

/// Installs a log subscriber once; `RUST_LOG` chooses the level (default warn).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Lasti {
    /// Starts lasti with one upstream named `docker.io`.
    pub async fn start(upstream_url: &str) -> Lasti {
        Lasti::start_with(config(&[("docker.io", upstream_url)]), None).await
    }

    /// Starts lasti with a configuration; `data` reuses a directory (restart tests).
    pub async fn start_with(mut config: Config, data: Option<TempDir>) -> Lasti {
        let data = data.unwrap_or_else(|| tempfile::tempdir().expect("temp data dir"));
        config.data_dir = data.path().to_path_buf();
        Lasti::launch(config, Some(data)).await
    }

    /// Starts lasti on the data directory its configuration names.
    pub async fn start_with_dir(config: Config) -> Lasti {
        Lasti::launch(config, None).await
    }

    async fn launch(config: Config, data: Option<TempDir>) -> Lasti {
        init_logs();
        let dir = config.data_dir.clone();
        config.validate().expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let admin_addr = admin.local_addr().expect("local addr");
        let peer = match config.cluster.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("bind the peer listener"),
            ),
            None => None,
        };
        let listeners = lasti::server::Listeners {
            api: listener,
            admin: Some(admin),
            peer,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            lasti::server::run(listeners, config, shutdown)
                .await
                .expect("lasti runs");
        });
        Lasti {
            addr,
            admin_addr,
            dir,
            data,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:port` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// `127.0.0.1:port`, as skopeo wants it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Polls `/admin/backfill` until `ready` holds; fails the test after `limit`.
    pub async fn backfill_status_when(
        &self,
        limit: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let url = format!("{}/admin/backfill", self.admin_url());
            let reply = super::http::get(&url, &[]).await;
            let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            if ready(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "back-fill status never got there: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops lasti gracefully and hands back its data directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("lasti task ends cleanly");
        }
        // A blocking task of the cache (the start-up scan, a sweep) may
        // hold the index a moment longer than the server: wait until it
        // is free, so that a restart on this directory can open it.
        let index = self.dir.join("index.redb");
        let deadline = Instant::now() + Duration::from_secs(10);
        while index.exists() && lasti::cache::index::Index::open(&index).is_err() {
            assert!(Instant::now() < deadline, "the index is still held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.data.take().expect("data dir present")
    }
}

impl Drop for Lasti {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The sum of a metric over `replicas` (see [`super::http::metric`]).
pub async fn total<'a>(
    replicas: impl IntoIterator<Item = &'a Lasti> + Copy,
    name: &str,
    labels: &[&str],
) -> u64 {
    let mut sum = 0;
    for replica in replicas {
        sum += super::http::metric(&replica.admin_url(), name, labels).await;
    }
    sum
}

/// Waits (up to 30 s) until [`total`] reaches `want`; the last value.
/// Counters such as `lasti_fill_sources_total` move just after a client
/// has its last byte, so a test compares them once they settle.
pub async fn total_reaches<'a>(
    replicas: impl IntoIterator<Item = &'a Lasti> + Copy,
    name: &str,
    labels: &[&str],
    want: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = total(replicas, name, labels).await;
        if value >= want || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
