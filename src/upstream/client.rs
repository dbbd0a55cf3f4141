//! The HTTP client of one upstream: hyper over rustls, with the platform's
//! roots plus an optional extra CA, connect and header timeouts, and bounded
//! reads of small bodies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::body::Body;
use crate::config::UpstreamConfig;

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The pooled client type shared by an upstream and its token realm.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Builds the client for one upstream: the platform's roots (read from
/// disk: call it on the blocking pool) and its `ca_file`.
pub fn build(config: &UpstreamConfig) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {} holds no certificate", path.display()));
        }
    }
    pooled(roots, config.connect_timeout)
}

/// A client for plain HTTP inside the cluster (the replicas' peer
/// listeners): no roots to read, and none trusted.
pub fn build_plain(connect_timeout: Duration) -> Result<HttpClient, String> {
    pooled(rustls::RootCertStore::empty(), connect_timeout)
}

fn pooled(roots: rustls::RootCertStore, connect_timeout: Duration) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https))
}

/// Why a request produced no response.
#[derive(Debug)]
pub enum SendError {
    /// No response headers within the header timeout.
    Timeout,
    /// Connection, TLS or protocol failure.
    Failed(String),
}

/// Sends a request and waits for the response headers, at most `timeout`.
pub async fn send(
    client: &HttpClient,
    request: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => Err(SendError::Timeout),
        Ok(Err(e)) => Err(SendError::Failed(describe(&e))),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Why a small body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// It did not arrive within the time allowed.
    Timeout,
    /// It broke off, or was larger than allowed.
    Failed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Timeout => f.write_str("timed out reading the body"),
            ReadError::Failed(e) => write!(f, "body: {e}"),
        }
    }
}

/// Reads a small body whole: at most `limit` bytes within `timeout`.
pub async fn read_small(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ReadError> {
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(e)) => Err(ReadError::Failed(e.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The error and its causes on one line (hyper hides the useful part in `source`).
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
