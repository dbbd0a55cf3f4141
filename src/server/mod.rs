//! The registry API listener: accepts connections (HTTP/1.1 and HTTP/2),
//! routes requests to the proxy, logs each one, and shuts down gracefully.
//!
//! [`run`] holds the whole daemon, so tests start it in-process on port 0.

pub mod access_log;
pub mod admin;
pub mod handlers;
pub mod response;
pub mod router;
pub mod sendfile;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::access::Access;
use crate::backfill::Backfill;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pull_through::{Backfiller, Outcome, Proxy};
use crate::upstream::Upstreams;
use crate::warmer::Warmer;
use access_log::{LoggedBody, Record};
use sendfile::SendfileStream;

/// Time a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cache could not be opened.
    #[error("cache: {0}")]
    Cache(#[from] crate::error::Error),
    /// An upstream's client could not be built (bad CA file, ...).
    #[error("{0}")]
    Upstream(String),
}

/// The sockets lasti serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// The registry API.
    pub api: TcpListener,
    /// The admin endpoints, if wanted.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of the configuration.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let api = TcpListener::bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Listeners { api, admin })
    }
}

/// Builds the proxy from the configuration, with back-fill running inside
/// it if configured (its tasks end when the proxy is dropped).
pub async fn build_proxy(config: &Config) -> Result<Arc<Proxy>, StartError> {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let upstreams =
        Upstreams::new(&config.upstreams, Arc::clone(&metrics)).map_err(StartError::Upstream)?;
    let cache = Cache::open(&config.data_dir, &config.cache, Arc::clone(&metrics)).await?;
    let (data_dir, config_copy) = (config.data_dir.clone(), config.clone());
    let backfill =
        tokio::task::spawn_blocking(move || Backfill::open(&data_dir, &config_copy, metrics))
            .await
            .map_err(|e| StartError::Upstream(format!("back-fill: {e}")))??;
    let max_manifest = config.cache.max_manifest_size.as_u64();
    let proxy = Arc::new_cyclic(|proxy| {
        let backfill = backfill.map(|b| b.start(proxy.clone()) as Arc<dyn Backfiller>);
        Proxy::new(upstreams, cache, max_manifest, backfill)
            .with_fetch_cap(config.access.max_upstream_fetches)
    });
    Ok(proxy)
}

/// Serves the registry API (and the admin endpoints) until `shutdown`
/// completes, then lets in-flight requests finish (up to a grace period).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let proxy = build_proxy(&config).await?;
    let metrics = Arc::clone(proxy.cache().metrics());
    let sent_from_files = metrics.sendfile_bytes();
    let access = Arc::new(Access::new(&config.access, metrics).map_err(StartError::Upstream)?);
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::ReloadingAcceptor::new(cert.clone(), key.clone()).map_err(StartError::Upstream)?,
        )),
        _ => None,
    };
    let listener = listeners.api;
    let warmer = Warmer::new(Arc::clone(&proxy));
    warmer.schedule(&config.warm);
    let admin_task = listeners
        .admin
        .map(|admin| tokio::spawn(admin::serve(admin, Arc::clone(&proxy), Arc::clone(&warmer))));
    let addr = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        upstream = proxy.upstreams().default_upstream().name(),
        "lasti listening"
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.access.header_read_timeout)
        .max_buf_size(config.access.max_header_bytes);
    builder
        .http2()
        .max_header_list_size(config.access.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.access.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (proxy, access) = (Arc::clone(&proxy), Arc::clone(&access));
        let service = service_fn(move |request| {
            let (proxy, access) = (Arc::clone(&proxy), Arc::clone(&access));
            async move { Ok::<_, Infallible>(serve(&proxy, &access, peer.ip(), request).await) }
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let tls = tls.as_ref().map(|t| t.acceptor());
        let sent_from_files = sent_from_files.clone();
        tokio::spawn(async move {
            let ended = match tls {
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection(
                                    TokioIo::new(SendfileStream::new(stream, sent_from_files)),
                                    service,
                                )
                                .into_owned(),
                        )
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let connection = builder
                                .serve_connection(TokioIo::new(tls), service)
                                .into_owned();
                            watcher.watch(connection).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: no new connections");
    drop(listener);
    warmer.stop().await;
    if let Some(task) = admin_task {
        task.abort();
        // Wait for it to drop its handle on the proxy (and so on the stores).
        let _ = task.await;
    }
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// Handles one request inside its span, counts it, and wraps the body for
/// the access log and the served-bytes counter.
async fn serve(
    proxy: &Proxy,
    access: &Access,
    client: IpAddr,
    request: Request<Incoming>,
) -> Response<LoggedBody> {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let route = router::route(&path).label();
    let span = tracing::info_span!("request", %method, %path);
    let admitted = match access.admit(client) {
        Ok(()) => {
            access
                .authorize(request.headers().get(http::header::AUTHORIZATION))
                .await
        }
        Err(err) => Err(err),
    };
    let response = match admitted {
        Ok(()) => handlers::handle(proxy, &request).instrument(span).await,
        Err(err) => response::error(&err),
    };
    let outcome = response.extensions().get::<Outcome>().copied();
    let metrics = proxy.cache().metrics();
    metrics.http_request(route, response.status().as_u16(), started.elapsed());
    if let Some(outcome) = outcome {
        metrics.cache_outcome(route, outcome.as_str());
    }
    let record = Record {
        method,
        path,
        status: response.status(),
        outcome,
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
    };
    response.map(|body| LoggedBody::new(body, record))
}
