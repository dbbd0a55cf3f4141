//! The registry API listener: accepts connections (HTTP/1.1 and HTTP/2),
//! routes requests to the proxy, logs each one, and shuts down gracefully.
//!
//! [`run`] holds the whole daemon, so tests start it in-process on port 0.
//! It is four steps: [`build`] the daemon, accept connections until shutdown
//! ([`accept_until`]), serve each ([`connection::serve`]), then [`drain`].

pub mod access_log;
pub mod activity;
pub mod admin;
mod audit;
pub mod connection;
pub mod h2_flood;
pub mod handlers;
pub mod open_files;
pub mod response;
pub mod router;
pub mod sendfile;
pub mod slots;
pub mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::client_tokens::{ClientTokens, TOKEN_PATH};
use crate::access::Access;
use crate::backfill::{Backfill, Dispatching};
use crate::bucket::Bucket;
use crate::cache::Cache;
use crate::cluster::peer_client::{
    ASKER_HEADER, HELLO_PATH, MEMBER_HEADER, OFFER_PATH, OFFLINE_PATH, PURGE_PATH,
};
use crate::cluster::Cluster;
use crate::config::{AccessConfig, Config};
use crate::error::Error;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::pull_through::{Backfiller, Outcome, Provenance, Proxy};
use crate::upstream::{Caller, Upstreams};
use crate::warmer::Warmer;
use access_log::{LoggedBody, Record};
use activity::{Activity, InFlight, Limits, WatchedBody};
use admin::token::AdminToken;
use connection::Shared;
use open_files::BlobBudget;
use router::Route;
use slots::Slots;

/// Streams a client may open at once on one HTTP/2 connection (nginx's
/// `http2_max_concurrent_streams`); hyper's default is 200.
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// The first pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS: the
/// condition persists, so retrying at once would spin); doubled while it
/// keeps failing, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between `accept` attempts that keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The longest a starting replica waits for the others to answer its
/// greeting before it serves clients (one that cannot be reached is given
/// up on after the peer connect timeout anyway).
const GREETING_WITHIN: Duration = Duration::from_secs(2);

/// Why the daemon could not start. Each message names the thing at fault;
/// the cause, if any, is its `source`, not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener's address could not be bound (taken, or not this host's).
    #[error("cannot listen on {addr} for the {role} ({key})")]
    Listen {
        /// The address that failed.
        addr: SocketAddr,
        /// The configuration key and flag that set it.
        key: &'static str,
        /// What it would have served.
        role: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The cache could not be opened.
    #[error("cannot open the cache")]
    Cache(#[from] crate::error::Error),
    /// An upstream's client could not be built (bad CA file, ...).
    #[error("{0}")]
    Upstream(String),
    /// The shared object store's client could not be built.
    #[error("object store: {0}")]
    Bucket(crate::error::Error),
    /// This replica cannot take part in the cluster as configured.
    #[error("{0}")]
    Cluster(String),
}

/// The sockets lasti serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// The registry API.
    pub api: TcpListener,
    /// The admin endpoints, if wanted.
    pub admin: Option<TcpListener>,
    /// The peer listener, when this replica is part of a cluster.
    pub peer: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of the configuration; an error names the one that failed.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let api = bind(config.listen, "listen, --listen", "registry API").await?;
        let admin = match config.admin_listen {
            Some(addr) => {
                Some(bind(addr, "admin_listen, --admin-listen", "admin endpoints").await?)
            }
            None => None,
        };
        let peer = match config.cluster.listen {
            Some(addr) => Some(bind(addr, "cluster.listen", "peer listener").await?),
            None => None,
        };
        Ok(Listeners { api, admin, peer })
    }
}

async fn bind(
    addr: SocketAddr,
    key: &'static str,
    role: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr,
            key,
            role,
            source,
        })
}

/// A listener's address for the log: the bound one (port 0 resolved).
/// The name a request reached this process by, for messages.
fn host_of<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("this replica")
        .to_string()
}

fn shown_addr(listener: &TcpListener) -> String {
    match listener.local_addr() {
        Ok(addr) => addr.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The proxy and what runs beside it.
pub struct Services {
    /// The proxy (its uploader ends when it is dropped).
    pub proxy: Arc<Proxy>,
    /// Back-fill's queue, when a target is configured (for the admin
    /// listener's view of it).
    backfill: Option<Arc<Backfill>>,
    /// Back-fill's dispatcher, which runs jobs through the proxy until
    /// this is dropped.
    dispatching: Option<Dispatching>,
}

/// Says at start where lasti fetches from: each upstream with its URL
/// and other names, and the object store (never its keys).
fn log_sources(config: &Config) {
    for (i, upstream) in config.upstreams.iter().enumerate() {
        let aliases = upstream.aliases.join(",");
        tracing::info!(
            name = upstream.name.as_str(),
            url = upstream.url.as_str(),
            aliases = aliases.as_str(),
            default = i == 0,
            "upstream"
        );
    }
    if let (Some(endpoint), Some(bucket)) = (&config.bucket.endpoint, &config.bucket.bucket) {
        tracing::info!(
            endpoint = endpoint.as_str(),
            bucket = bucket.as_str(),
            prefix = config.bucket.prefix.as_str(),
            "object store"
        );
    }
}

/// Loads what the configuration names that `serve` loads before it
/// listens (upstream and target CA files, the htpasswd and token files,
/// the TLS pair, the cluster's peers), without opening the data directory
/// or binding a port: `check-config` then refuses what `serve` would.
/// Secrets and the bucket's credential files are read by
/// [`Config::load`] already. Async because the cluster's peer lookup is
/// started on the runtime, as `serve` starts it.
pub async fn preflight(config: &Config) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    Upstreams::new(&config.upstreams, Arc::clone(&metrics)).map_err(StartError::Upstream)?;
    crate::backfill::check_target(config, Arc::clone(&metrics))
        .map_err(|e| StartError::Upstream(format!("back-fill: {e}")))?;
    Access::new(&config.access, Arc::clone(&metrics)).map_err(StartError::Upstream)?;
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        tls::ReloadingAcceptor::check(cert, key).map_err(StartError::Upstream)?;
    }
    Events::start(&config.events, &metrics).map_err(StartError::Upstream)?;
    Cluster::start(&config.cluster, metrics).map_err(StartError::Cluster)?;
    if let Some(path) = &config.admin_token_file {
        admin::token::check_file(path).map_err(StartError::Upstream)?;
    }
    Ok(())
}

/// lasti's client token issuer, when an upstream takes clients' own
/// credentials: keyed by the cluster's secret when there is one, so that
/// replicas read each other's tokens.
fn client_tokens(config: &Config) -> Option<ClientTokens> {
    config.takes_client_credentials().then(|| {
        let shared = config
            .cluster
            .secret
            .as_ref()
            .map(|s| s.expose().as_bytes());
        ClientTokens::new(
            shared,
            config.access.token_realm.clone(),
            config.tls.enabled(),
        )
    })
}

/// Builds the proxy from the configuration, with back-fill running beside
/// it if configured; dropping what it returns stops back-fill and, once
/// no other holder is left, the proxy.
pub async fn build_proxy(config: &Config) -> Result<Services, StartError> {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    // Reads the system's certificates: on the blocking pool.
    let (upstream_configs, upstream_metrics) = (config.upstreams.clone(), Arc::clone(&metrics));
    let upstreams =
        tokio::task::spawn_blocking(move || Upstreams::new(&upstream_configs, upstream_metrics))
            .await
            .map_err(|e| StartError::Upstream(e.to_string()))?
            .map_err(StartError::Upstream)?;
    let cache = Cache::open(&config.data_dir, &config.cache, Arc::clone(&metrics)).await?;
    let (data_dir, config_copy) = (config.data_dir.clone(), config.clone());
    let backfill =
        tokio::task::spawn_blocking(move || Backfill::open(&data_dir, &config_copy, metrics))
            .await
            .map_err(|e| StartError::Upstream(format!("back-fill: {e}")))??;
    // Opens the journal: on the blocking pool.
    let (bucket_config, data_dir) = (config.bucket.clone(), config.data_dir.clone());
    let bucket_metrics = Arc::clone(cache.metrics());
    let bucket =
        tokio::task::spawn_blocking(move || Bucket::new(&bucket_config, &data_dir, bucket_metrics))
            .await
            .map_err(|e| StartError::Bucket(Error::Storage(e.to_string())))?
            .map_err(StartError::Bucket)?
            .map(Arc::new);
    if config.offline {
        upstreams.set_offline(true);
    }
    let cluster = Cluster::start(&config.cluster, Arc::clone(cache.metrics()))
        .map_err(StartError::Cluster)?;
    let max_manifest = config.cache.max_manifest_size.as_u64();
    let backfill = backfill.map(Arc::new);
    let backfiller = backfill.clone().map(|b| b as Arc<dyn Backfiller>);
    // Reads CA files and the system's certificates: on the blocking pool.
    let (events_config, events_metrics) = (config.events.clone(), Arc::clone(cache.metrics()));
    let events =
        tokio::task::spawn_blocking(move || Events::start(&events_config, &events_metrics))
            .await
            .map_err(|e| StartError::Upstream(e.to_string()))?
            .map_err(StartError::Upstream)?;
    let proxy = Proxy::new(upstreams, cache, max_manifest, backfiller)
        .with_fetch_cap(config.access.max_upstream_fetches)
        .with_bucket(bucket)
        .with_cluster(cluster)
        .with_events(events);
    let proxy = Arc::new(proxy);
    proxy.start_uploading(config.bucket.catch_up);
    // The dispatcher holds the proxy; the proxy holds only the queue's front.
    let dispatching = backfill.as_ref().and_then(|b| b.start(Arc::clone(&proxy)));
    Ok(Services {
        proxy,
        backfill,
        dispatching,
    })
}

/// Serves the registry API (and the admin endpoints) until `shutdown`
/// completes, then lets in-flight requests finish (up to a grace period).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let admin = listeners.admin.as_ref().map_or("off".into(), shown_addr);
    let daemon = build(listeners.admin, &config).await?;
    tracing::info!(
        addr = %shown_addr(&listeners.api),
        %admin,
        upstream = daemon.shared.app.proxy.upstreams().default_upstream().name(),
        max_open_blobs = daemon.shared.app.budget.size(),
        "lasti listening"
    );
    log_sources(&config);
    let budget = daemon.shared.app.budget.size();
    let peers = listeners.peer.is_some() && daemon.shared.app.proxy.cluster().is_some();
    let room = open_files::connection_room(config.access.max_connections, budget, peers);
    if room.cut {
        tracing::warn!(
            configured = config.access.max_connections,
            serving = room.clients,
            max_open_blobs = budget,
            "the open-file limit cannot hold access.max_connections beside the open-blob budget; \
             serving fewer connections at once (raise the limit, ulimit -n, or lower max_connections)"
        );
    }
    let (stop_peers, peers_stopped) = watch::channel(false);
    let peer_task = match (listeners.peer, daemon.shared.app.proxy.cluster()) {
        (Some(listener), Some(cluster)) => {
            tracing::info!(addr = %shown_addr(&listener), "peer listener");
            let shared = Arc::new(daemon.shared.for_peers(Arc::clone(cluster)));
            let mut stopped = peers_stopped;
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            Some(tokio::spawn(accept_until(
                listener, shared, room.peers, shutdown,
            )))
        }
        _ => None,
    };
    if let (Some(cluster), true) = (daemon.shared.app.proxy.cluster(), peers) {
        // The others take this replica back before it serves a client:
        // asked from then on, it is asked for what it owns.
        let _ = tokio::time::timeout(GREETING_WITHIN, cluster.greet()).await;
    }
    let connections = accept_until(
        listeners.api,
        Arc::clone(&daemon.shared),
        room.clients,
        shutdown,
    )
    .await;
    let peers = peer_task.map(|task| (stop_peers, task));
    drain(daemon, connections, peers, config.shutdown_grace).await;
    Ok(())
}

/// The daemon once built: what the accept loop and the drain need.
struct Daemon {
    shared: Arc<Shared>,
    warmer: Arc<Warmer>,
    admin_task: Option<JoinHandle<()>>,
    /// Stops back-fill's dispatcher when dropped.
    dispatching: Option<Dispatching>,
}

/// Builds the proxy and the connection settings, schedules the warm list
/// and starts the admin listener.
async fn build(admin: Option<TcpListener>, config: &Config) -> Result<Daemon, StartError> {
    let Services {
        proxy,
        backfill,
        dispatching,
    } = build_proxy(config).await?;
    let metrics = Arc::clone(proxy.cache().metrics());
    let sent_from_files = metrics.sendfile_bytes();
    let windows = Arc::clone(proxy.cache().windows());
    let access = Access::new(&config.access, metrics)
        .map_err(StartError::Upstream)?
        .with_client_tokens(client_tokens(config));
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => Some(
            tls::ReloadingAcceptor::new(cert.clone(), key.clone()).map_err(StartError::Upstream)?,
        ),
        _ => None,
    };
    let warmer = Warmer::new(Arc::clone(&proxy));
    warmer.schedule(&config.warm);
    let admin_task = match admin {
        Some(listener) => {
            let path = config.admin_token_file.clone();
            if let Some(path) = &path {
                admin::token::check_file(path).map_err(StartError::Upstream)?;
            }
            // Reads the token file: on the blocking pool.
            let token = tokio::task::spawn_blocking(move || AdminToken::new(path.as_deref()))
                .await
                .map_err(|e| StartError::Upstream(e.to_string()))?;
            let state = admin::State {
                proxy: Arc::clone(&proxy),
                warmer: Arc::clone(&warmer),
                backfill,
                token,
            };
            Some(tokio::spawn(admin::serve(listener, Arc::new(state))))
        }
        None => None,
    };
    let app = App {
        proxy,
        door: Door::Clients(Box::new(access)),
        budget: Arc::new(BlobBudget::new(
            config.access.max_open_blobs,
            config.access.max_connections,
        )),
    };
    let shared = Shared {
        app: Arc::new(app),
        builder: http_builder(&config.access),
        tls,
        limits: Limits {
            first_request: config.access.header_read_timeout,
            keepalive: config.access.keepalive_timeout,
            send: config.access.send_timeout,
            stall: config.access.send_stall_grace,
        },
        handshake: config.access.tls_handshake_timeout,
        sent_from_files,
        windows,
    };
    Ok(Daemon {
        shared: Arc::new(shared),
        warmer,
        admin_task,
        dispatching,
    })
}

/// hyper's settings for both protocols. Rapid resets and CONTINUATION
/// floods are bounded by `h2` itself (`max_pending_accept_reset_streams`,
/// `max_local_error_reset_streams`, the header list size); PING and
/// SETTINGS floods by [`h2_flood`].
fn http_builder(access: &AccessConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's timer also runs while a keep-alive connection waits for
        // its next request; the watchdog (`activity`) enforces both limits,
        // so hyper's must not cut the idle wait short of keepalive_timeout.
        .header_read_timeout(access.header_read_timeout.max(access.keepalive_timeout))
        .max_buf_size(access.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(access.http2_ping_interval)
        .keep_alive_timeout(access.http2_ping_timeout)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(access.max_header_bytes as u32);
    builder
}

/// Accepts connections, at most `max_connections` served at once, until
/// `shutdown` completes. Returns the sender that tells them to drain.
async fn accept_until(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> watch::Sender<bool> {
    let (connections, draining) = watch::channel(false);
    let shed = shared.app.proxy.cache().metrics().connections_shed();
    let slots = Slots::new(max_connections, shed);
    tokio::pin!(shutdown);
    loop {
        // The one connection accepted beyond the slots waits here for one;
        // the rest wait in the kernel's backlog.
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.take() => slot,
        };
        let (shared, draining) = (Arc::clone(&shared), draining.clone());
        tokio::spawn(connection::serve(shared, stream, peer, slot, draining));
    }
    tracing::info!("shutting down: no new connections");
    connections
}

/// The next connection. A failing `accept` (out of descriptors, most
/// likely) is retried with a growing pause, logged once per second at most.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut pause = ACCEPT_BACKOFF_MIN;
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                if pause == ACCEPT_BACKOFF_MIN || pause == ACCEPT_BACKOFF_MAX {
                    tracing::warn!(error = %e, "accept failed; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// The peer listener while the clients' connections drain: the switch
/// that stops it, and its accept loop.
type PeerListener = (watch::Sender<bool>, JoinHandle<watch::Sender<bool>>);

/// Stops the warmer and the admin listener, asks the clients' connections
/// to finish and waits for them; then does the same with the peer
/// listener, and publishes what is owed to the bucket; all within `grace`.
///
/// Meanwhile the replica leaves its cluster: the peer listener still
/// serves what this replica holds or is fetching (its askers' fills run to
/// their end, fetched once), and turns away the rest, which its askers
/// take to the next member in rank.
async fn drain(
    daemon: Daemon,
    connections: watch::Sender<bool>,
    peers: Option<PeerListener>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    let proxy = Arc::clone(&daemon.shared.app.proxy);
    if let Some(cluster) = proxy.cluster() {
        cluster.leave();
    }
    // No new back-fill job from here; one under way ends its step.
    drop(daemon.dispatching);
    daemon.warmer.stop().await;
    if let Some(task) = daemon.admin_task {
        task.abort();
        // Wait for it to drop its handle on the proxy (and so on the stores).
        let _ = task.await;
    }
    connections.send_replace(true);
    let closed = async {
        connections.closed().await;
        if let Some((stop, listener)) = peers {
            stop.send_replace(true);
            if let Ok(peer_connections) = listener.await {
                peer_connections.send_replace(true);
                peer_connections.closed().await;
            }
        }
    };
    if tokio::time::timeout_at(deadline, closed).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    // What was fetched but not yet published goes to the bucket now: the
    // disk may not outlive this process (a pod's emptyDir).
    // Audit events still queued go to their sinks alongside.
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let settled = async {
        if let Some(events) = proxy.events() {
            events.settle(left).await;
        }
    };
    let (owed, ()) = tokio::join!(proxy.flush_uploads(left), settled);
    // The order of recent uses, for the next start's eviction.
    let kept = proxy.cache().persist_recency().await;
    tracing::debug!(blobs = kept, "last uses written");
    if owed > 0 {
        tracing::warn!(
            owed,
            "grace period over; exiting with uploads to the object store still owed \
             (published at the next start on this disk, or by another replica's miss)"
        );
    }
}

/// What answers requests: the proxy behind the front door.
pub struct App {
    proxy: Arc<Proxy>,
    door: Door,
    budget: Arc<BlobBudget>,
}

/// Who a listener lets in.
enum Door {
    /// The registry API: clients, by the access settings.
    Clients(Box<Access>),
    /// The peer listener: other replicas, with the cluster's secret; blob
    /// and manifest GETs only.
    Peers(Arc<Cluster>),
}

impl App {
    /// The same proxy and open-file budget behind the peer listener's door.
    fn for_peers(&self, cluster: Arc<Cluster>) -> App {
        App {
            proxy: Arc::clone(&self.proxy),
            door: Door::Peers(cluster),
            budget: Arc::clone(&self.budget),
        }
    }

    /// Handles one request, counts it, and wraps the body for the access
    /// log, the served-bytes counter and the send timeout.
    pub async fn respond(
        &self,
        client: IpAddr,
        activity: &Arc<Activity>,
        request: Request<Incoming>,
    ) -> Response<WatchedBody<LoggedBody>> {
        let mut in_flight = activity.request();
        let started = Instant::now();
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let route = router::route(&path);
        let authorization = request.headers().get(http::header::AUTHORIZATION);
        let admitted = match &self.door {
            Door::Clients(access) => match access.admit(client) {
                Ok(()) => access.authorize(authorization, &path).await,
                Err(err) => Err(err),
            },
            Door::Peers(cluster) => match cluster.admits(authorization) {
                // Answered at once: waiting would be waiting on itself.
                true if cluster.asked_by_me(request.headers().get(ASKER_HEADER)) => {
                    Err(Error::PeerIsSelf {
                        member: host_of(&request),
                    })
                }
                true => {
                    cluster.heard_from(request.headers().get(MEMBER_HEADER));
                    Ok(())
                }
                false => Err(Error::Denied("not a replica of this cluster".into())),
            },
        }
        .and_then(|()| self.reserve_file(&method, &route, &mut in_flight));
        let refused = admitted.is_err();
        // What an audit event needs of the request, kept when events are on.
        let asked = match &self.door {
            Door::Clients(_) if self.proxy.events().is_some() => Some((
                request.uri().query().map(str::to_owned),
                authorization.cloned(),
            )),
            _ => None,
        };
        let response = match (admitted, &self.door) {
            (Ok(()), Door::Clients(access)) => self.client_request(access, &route, &request).await,
            (Ok(()), Door::Peers(_)) if method == Method::POST && path == OFFER_PATH => {
                handlers::peer_offer(&self.proxy, request).await
            }
            (Ok(()), Door::Peers(_)) if method == Method::POST && path == PURGE_PATH => {
                handlers::peer_purge(&self.proxy, request).await
            }
            (Ok(()), Door::Peers(_)) if method == Method::POST && path == OFFLINE_PATH => {
                handlers::peer_offline(&self.proxy, request).await
            }
            // What it is for was done at the door.
            (Ok(()), Door::Peers(_)) if method == Method::POST && path == HELLO_PATH => {
                response::no_content()
            }
            (Ok(()), Door::Peers(_)) => handlers::handle_peer(&self.proxy, &request).await,
            (Err(err), _) => {
                response::log_failure(&err, &method, &path);
                response::error(&err)
            }
        };
        let audit = asked.and_then(|(query, authorization)| {
            let request = audit::Request {
                query: query.as_deref(),
                address: client,
                authorization: authorization.as_ref(),
                method: &method,
                route: &route,
            };
            audit::Pending::of(&self.proxy, &request, &response)
        });
        let route = route.label();
        let outcome = response.extensions().get::<Outcome>().copied();
        let metrics = self.proxy.cache().metrics();
        match (&self.door, outcome) {
            (Door::Clients(_), _) => {
                metrics.http_request(route, response.status().as_u16(), started.elapsed());
                if let Some(outcome) = outcome {
                    metrics.cache_outcome(route, outcome.as_str());
                }
            }
            (Door::Peers(_), _) if refused => metrics.peer_served("refused"),
            (Door::Peers(_), _) if response.status() == http::StatusCode::ACCEPTED => {
                metrics.peer_served("offer")
            }
            (Door::Peers(_), Some(outcome)) => metrics.peer_served(outcome.as_str()),
            (Door::Peers(_), None) => metrics.peer_served("error"),
        }
        let listener = match &self.door {
            Door::Clients(_) => "api",
            Door::Peers(_) => "peer",
        };
        let from = response.extensions().get::<Provenance>().cloned();
        let from = from.or_else(|| outcome.and_then(Provenance::of_outcome));
        let record = Record {
            method,
            path,
            status: response.status(),
            listener,
            outcome,
            from,
            error: response
                .extensions()
                .get::<response::ErrorKind>()
                .map(|k| k.0),
            started,
            expected_bytes: response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            metrics: Some(Arc::clone(metrics)),
            audit,
        };
        response.map(|body| activity.watch(LoggedBody::new(body, record), in_flight))
    }

    /// A client's request. With an upstream that takes clients' own
    /// credentials: lasti's token endpoint, a `/v2/` that asks for a token
    /// (as Docker Hub's does, so every client sends its credential, or an
    /// anonymous token), and every 401 with the challenge that leads there.
    async fn client_request(
        &self,
        access: &Access,
        route: &Route<'_>,
        request: &Request<Incoming>,
    ) -> Response<crate::body::Body> {
        let Some(tokens) = access.client_tokens() else {
            return handlers::handle(&self.proxy, request, &Caller::lasti()).await;
        };
        let path = request.uri().path();
        let authorization = request.headers().get(http::header::AUTHORIZATION);
        let mut response = if path == TOKEN_PATH {
            handlers::token(&self.proxy, tokens, request).await
        } else {
            let caller = access.caller(authorization);
            let caller = match (route, caller) {
                (Route::Base, Ok(caller)) => self.ping(authorization, caller).await,
                (_, caller) => caller,
            };
            match caller {
                Ok(caller) => {
                    let mut response = handlers::handle(&self.proxy, request, &caller).await;
                    if self.proxy.events().is_some() {
                        if let Some(user) = audit::ClientUser::of(&caller) {
                            response.extensions_mut().insert(user);
                        }
                    }
                    response
                }
                Err(err) => {
                    response::log_failure(&err, request.method(), path);
                    response::error(&err)
                }
            }
        };
        let challenged = response
            .headers()
            .contains_key(http::header::WWW_AUTHENTICATE);
        if response.status() == http::StatusCode::UNAUTHORIZED && !challenged {
            let scope = route.name().map(|name| format!("repository:{name}:pull"));
            let authority = request.uri().authority().map(|a| a.as_str());
            let challenge = tokens.challenge(request.headers(), authority, scope.as_deref());
            if let Ok(value) = http::HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }

    /// `/v2/` with client tokens: a request with no credential is asked
    /// for one (or an anonymous token); Basic credentials sent as they are
    /// must be ones their upstream takes.
    async fn ping(
        &self,
        authorization: Option<&http::HeaderValue>,
        caller: Caller,
    ) -> Result<Caller, Error> {
        let Some(header) = authorization else {
            return Err(Error::ClientRefused(
                "ask lasti's token endpoint for a token (anonymous, or with credentials)".into(),
            ));
        };
        let basic = header
            .as_bytes()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"basic "));
        if basic && caller.credential().is_some() {
            if let Some(Ok(false)) = self.proxy.login(&caller).await {
                return Err(Error::ClientRefused(
                    "the upstream refused these credentials".into(),
                ));
            }
        }
        Ok(caller)
    }

    /// A blob GET holds a file until its body is done: it takes a place in
    /// the open-file budget first (within its connection's share), or is
    /// told to come back.
    fn reserve_file(
        &self,
        method: &Method,
        route: &Route<'_>,
        in_flight: &mut InFlight,
    ) -> Result<(), Error> {
        if method == Method::GET && matches!(route, Route::Blob { .. }) {
            let activity = Arc::clone(in_flight.activity());
            let permit = self.budget.admit(activity.places())?;
            in_flight.hold(activity.place(permit));
        }
        Ok(())
    }
}
