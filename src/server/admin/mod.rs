//! The admin listener: operator endpoints kept off the public registry API.
//!
//! - `GET /` (or `/status`): the status page, for a person (what is
//!   cached, the last hour by tier, upstreams, back-fill, replicas; purge
//!   and offline switches with the token); `GET /admin/status`: the same
//!   as JSON.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: the data directory is writable and the stores answer
//!   (the listeners are up, or this would not answer at all).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /admin/backfill[?limit=N&after=ID]`: the back-fill queue as JSON:
//!   counts per state, a page of pending jobs (oldest first; `next` is the
//!   `after` of the next page) and the newest failed and done jobs.
//! - `GET /admin/cache`: every tag the cache holds, with size, last use and
//!   whether it was back-filled, as JSON.
//! - `POST /admin/warm` (`{"images": [...], "platforms": [...]}`): pulls
//!   images into the cache in the background; `GET /admin/warm` shows what
//!   became of each image warmed so far (and of the configured warm list).
//! - `POST /admin/purge` (`{"image": "centos:7", "scope": "image"}`; scope
//!   `tag`, `manifest` or `image`, the default): drops it from the cache
//!   and the bucket now; answers with what was removed.
//! - `GET /admin/offline`: the offline switches and each upstream's
//!   breaker; `POST /admin/offline` (`{"offline": true}`, with
//!   `"upstream": "docker.io"` for one upstream) sets a switch here and on
//!   the other replicas, until it is set again or the process restarts.
//!
//! Every call that changes state (`POST`, `DELETE`) needs the admin token
//! ([`token`]); reading never does.

mod page;
pub mod status;
pub mod token;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::backfill::{self, Backfill};
use crate::body::{self, Body};
use crate::error::Error;
use crate::events::{self, Client, Kind, OfflineSwitched, Refused};
use crate::oci::ImageRef;
use crate::pull_through::{OfflineSwitch, Proxy, PurgeScope};
use crate::warmer::Warmer;
use token::{AdminToken, Refusal};

/// The largest `POST /admin/warm` body read.
const MAX_WARM_REQUEST: usize = 64 * 1024;
/// The largest `POST /admin/purge` and `POST /admin/offline` body read.
const MAX_SMALL_REQUEST: usize = 4 * 1024;

/// Pause after a failing `accept` on the admin listener.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What the admin endpoints act on.
pub struct State {
    /// The proxy: its cache, upstreams and metrics.
    pub proxy: Arc<Proxy>,
    /// The warm list, and warm requests.
    pub warmer: Arc<Warmer>,
    /// The back-fill queue, when back-fill is on.
    pub backfill: Option<Arc<Backfill>>,
    /// What a call that changes state must carry.
    pub token: AdminToken,
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move {
                let response = route(&state, client.ip(), request).await;
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connection);
    }
}

async fn route(state: &State, client: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes_state {
        let authorization = request.headers().get(header::AUTHORIZATION);
        if let Err(refusal) = state.token.check(authorization) {
            let path = request.uri().path();
            return refused(&state.proxy, refusal, client, request.method(), path);
        }
    }
    let proxy = &state.proxy;
    match request.uri().path() {
        "/admin/warm" if request.method() == Method::POST => warm(&state.warmer, request).await,
        "/admin/purge" if request.method() == Method::POST => purge(proxy, client, request).await,
        "/admin/offline" if request.method() == Method::POST => {
            offline(proxy, client, request).await
        }
        "/admin/offline" => json(
            StatusCode::OK,
            serde_json::to_vec_pretty(&proxy.availabilities()).unwrap_or_default(),
        ),
        "/admin/warm" => json(
            StatusCode::OK,
            serde_json::to_vec_pretty(&serde_json::json!({ "images": state.warmer.statuses() }))
                .unwrap_or_default(),
        ),
        "/" | "/status" => status_page(state).await,
        "/admin/status" => json(
            StatusCode::OK,
            serde_json::to_vec_pretty(&status::snapshot(state).await).unwrap_or_default(),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match proxy.cache().check_ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(err) => {
                tracing::warn!(error = %err, "not ready");
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        },
        "/metrics" => metrics(proxy).await,
        "/admin/backfill" => {
            backfill_status(state.backfill.as_deref(), request.uri().query()).await
        }
        "/admin/cache" => match proxy.cached_images().await {
            Ok(images) => json(
                StatusCode::OK,
                serde_json::to_vec_pretty(&images).unwrap_or_default(),
            ),
            Err(err) => {
                tracing::error!(error = %err, "cannot list the cache");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot list the cache\n")
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The status page, with headers that keep it to itself: its own code
/// only, never framed, never cached.
async fn status_page(state: &State) -> Response<Body> {
    let page = page::render(&status::snapshot(state).await);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(
            header::CONTENT_SECURITY_POLICY,
            page::content_security_policy(),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body::full(page))
        .expect("static response")
}

/// The answer to a call that changes state without the admin token: `401`
/// with a challenge when the token is missing or wrong, `403` when no
/// token can be used at all (so none will do). Logged, without the token.
fn refused(
    proxy: &Proxy,
    refusal: Refusal,
    client: IpAddr,
    method: &Method,
    path: &str,
) -> Response<Body> {
    let (status, code, message) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "this call changes state: send the admin token as Authorization: Bearer <token>"
                .to_string(),
        ),
        Refusal::Locked(message) => (StatusCode::FORBIDDEN, "DENIED", message),
    };
    tracing::warn!(%client, %method, path, status = status.as_u16(), "admin call refused");
    if let Some(events) = proxy.events() {
        let data = Refused {
            client: &Client::address(client),
            method: method.as_str(),
            path,
            upstream: None,
            repository: None,
            status: status.as_u16(),
            code,
            reason: &message,
        };
        events.emit(Kind::AdminRefused, Some(path), &data);
    }
    let body = serde_json::json!({ "error": message });
    let mut response = json(status, body.to_string().into_bytes());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"lasti-admin\""),
        );
    }
    response
}

/// A small JSON request body as `T`; the answer to send when it is not
/// one (`expected` says what is).
async fn json_body<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    expected: &str,
) -> Result<T, Response<Body>> {
    let body = match Limited::new(request.into_body(), MAX_SMALL_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n")),
    };
    serde_json::from_slice(&body).map_err(|e| bad_request(format!("expected {expected}: {e}")))
}

async fn offline(proxy: &Proxy, client: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let expected = r#"{"offline": true|false, "upstream": "name" (optional)}"#;
    let switch: OfflineSwitch = match json_body(request, expected).await {
        Ok(switch) => switch,
        Err(answer) => return answer,
    };
    match proxy.switch_offline(&switch, true).await {
        Ok(now) => {
            if let Some(events) = proxy.events() {
                let data = OfflineSwitched {
                    client: &Client::address(client),
                    upstream: switch.upstream.as_deref(),
                    offline: switch.offline,
                };
                events.emit(Kind::OfflineSwitched, switch.upstream.as_deref(), &data);
            }
            json(
                StatusCode::OK,
                serde_json::to_vec_pretty(&now).unwrap_or_default(),
            )
        }
        Err(err) => bad_request(err.to_string()),
    }
}

/// The body of `POST /admin/purge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    image: String,
    #[serde(default)]
    scope: PurgeScope,
}

async fn purge(proxy: &Proxy, client: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let expected = r#"{"image": "name:tag", "scope": "tag|manifest|image"}"#;
    let wanted: PurgeRequest = match json_body(request, expected).await {
        Ok(wanted) => wanted,
        Err(answer) => return answer,
    };
    let image = match ImageRef::parse(&wanted.image) {
        Ok(image) => image,
        Err(e) => return bad_request(e),
    };
    match proxy.purge(&image, wanted.scope).await {
        Ok(purged) => {
            if let Some(events) = proxy.events() {
                let data = events::Purged {
                    client: &Client::address(client),
                    image: &wanted.image,
                    scope: wanted.scope.as_str(),
                    removed: &purged,
                };
                events.emit(Kind::Purged, Some(&wanted.image), &data);
            }
            json(
                StatusCode::OK,
                serde_json::to_vec_pretty(&purged).unwrap_or_default(),
            )
        }
        Err(Error::ManifestUnknown) => {
            let message = format!("nothing is cached under {}", wanted.image);
            let body = serde_json::json!({ "error": message });
            json(StatusCode::NOT_FOUND, body.to_string().into_bytes())
        }
        Err(err @ (Error::NameInvalid(_) | Error::ReferenceInvalid(_))) => {
            bad_request(err.to_string())
        }
        Err(err) => {
            tracing::error!(image = wanted.image, error = %err, "purge failed");
            let body = serde_json::json!({ "error": format!("purge failed: {err}") });
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                body.to_string().into_bytes(),
            )
        }
    }
}

/// The body of `POST /admin/warm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmRequest {
    images: Vec<String>,
    #[serde(default)]
    platforms: Vec<String>,
}

async fn warm(warmer: &Arc<Warmer>, request: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(request.into_body(), MAX_WARM_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n"),
    };
    let wanted: WarmRequest = match serde_json::from_slice(&body) {
        Ok(wanted) => wanted,
        Err(e) => return bad_request(format!("expected {{\"images\": [...]}}: {e}")),
    };
    if let Some(bad) = wanted.images.iter().find_map(|i| ImageRef::parse(i).err()) {
        return bad_request(bad);
    }
    let accepted = serde_json::json!({ "accepted": wanted.images });
    warmer.start(wanted.images, wanted.platforms);
    json(
        StatusCode::ACCEPTED,
        serde_json::to_vec_pretty(&accepted).unwrap_or_default(),
    )
}

fn bad_request(message: String) -> Response<Body> {
    let body = serde_json::json!({ "error": message });
    json(StatusCode::BAD_REQUEST, body.to_string().into_bytes())
}

async fn metrics(proxy: &Proxy) -> Response<Body> {
    let cache = proxy.cache();
    let (bytes, objects) = cache.usage();
    cache
        .metrics()
        .cache_state(bytes, objects, cache.fills_in_flight());
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(body::full(cache.metrics().render()))
        .expect("static response")
}

async fn backfill_status(backfill: Option<&Backfill>, query: Option<&str>) -> Response<Body> {
    let Some(backfill) = backfill else {
        return json(StatusCode::OK, br#"{"enabled":false}"#.to_vec());
    };
    let (after, limit) = match listing_query(query) {
        Ok(page) => page,
        Err(message) => return bad_request(message),
    };
    match backfill.status(after, limit).await {
        Ok(status) => {
            let mut value = serde_json::to_value(&status).unwrap_or_default();
            value["enabled"] = serde_json::Value::Bool(true);
            json(
                StatusCode::OK,
                serde_json::to_vec_pretty(&value).unwrap_or_default(),
            )
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot read the back-fill queue");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the back-fill queue\n",
            )
        }
    }
}

/// `after` and `limit` of a listing's query string.
fn listing_query(query: Option<&str>) -> Result<(Option<u64>, usize), String> {
    let (mut after, mut limit) = (None, backfill::DEFAULT_LISTED);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => {
                after = Some(
                    value
                        .parse()
                        .map_err(|_| format!("after={value:?} is not a job id"))?,
                );
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=backfill::MAX_LISTED).contains(n))
                    .ok_or_else(|| {
                        format!("limit must be between 1 and {}", backfill::MAX_LISTED)
                    })?;
            }
            _ => return Err(format!("unknown parameter {key:?} (limit, after)")),
        }
    }
    Ok((after, limit))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(Bytes::from_static(body.as_bytes())))
        .expect("static response")
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::full(body))
        .expect("static response")
}
