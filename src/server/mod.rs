//! The registry API listener: accepts connections (HTTP/1.1 and HTTP/2),
//! routes requests to the proxy, logs each one, and shuts down gracefully.
//!
//! [`run`] holds the whole daemon, so tests start it in-process on port 0.

pub mod access_log;
pub mod handlers;
pub mod response;
pub mod router;

use std::convert::Infallible;
use std::future::Future;
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

use crate::cache::Cache;
use crate::config::Config;
use crate::pull_through::{Outcome, Proxy};
use crate::upstream::Upstreams;
use access_log::{LoggedBody, Record};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 10_000;
/// Time a client gets to send its request headers (slow-client defence).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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

/// Builds the proxy from the configuration.
pub async fn build_proxy(config: &Config) -> Result<Proxy, StartError> {
    let upstreams = Upstreams::new(&config.upstreams).map_err(StartError::Upstream)?;
    let cache = Cache::open(&config.data_dir, &config.cache).await?;
    Ok(Proxy::new(
        upstreams,
        cache,
        config.cache.max_manifest_size.as_u64(),
    ))
}

/// Serves the registry API on `listener` until `shutdown` completes, then
/// lets in-flight requests finish (up to a grace period).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let proxy = Arc::new(build_proxy(&config).await?);
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
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(serve(&proxy, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: no new connections");
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// Handles one request inside its span and wraps the body for the access log.
async fn serve(proxy: &Proxy, request: Request<Incoming>) -> Response<LoggedBody> {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let span = tracing::info_span!("request", %method, %path);
    let response = handlers::handle(proxy, &request).instrument(span).await;
    let record = Record {
        method,
        path,
        status: response.status(),
        outcome: response.extensions().get::<Outcome>().copied(),
        error: response
            .extensions()
            .get::<response::ErrorKind>()
            .map(|k| k.0),
        started,
        expected_bytes: response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok()),
    };
    response.map(|body| LoggedBody::new(body, record))
}
