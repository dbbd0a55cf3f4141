//! An OpenShift-shaped front for the real registry: it answers every API
//! request without a valid Bearer token with a 401 challenge whose realm is
//! its own `/openshift/token` endpoint, which hands out a token for Basic
//! credentials whose password is the project token (any user name, as
//! OpenShift does). Valid requests are forwarded to the backend registry.
//!
//! Knobs inject what a real cluster does to a pusher: a quota that denies
//! pushes, and slow uploads (to kill lasti mid-push); and what a hostile
//! one might: an upload `Location` on another origin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type ShimBody = BoxBody<Bytes, hyper::Error>;

/// What the shim does and what it saw.
#[derive(Debug, Default)]
pub struct ShimState {
    /// Refuse pushes with 403 DENIED "quota exceeded".
    pub deny_pushes: bool,
    /// Answer every API request with 503, as a registry being restarted.
    pub down: bool,
    /// Refuse image indexes with a 500, as some older OpenShift registries do.
    pub refuse_indexes: bool,
    /// Wait this long before forwarding each upload request (PATCH/PUT of a blob).
    pub upload_delay: Duration,
    /// Move the `Location` of each started upload to this origin
    /// (`http://host:port`), keeping its path and query.
    pub upload_origin: Option<String>,
    /// Token requests seen, and how many carried the right password.
    pub realm_requests: usize,
    /// Requests with the right password at the realm.
    pub realm_granted: usize,
    /// Upload requests (POST/PATCH/PUT under `/blobs/uploads/`) forwarded.
    pub uploads: usize,
    /// Manifest PUTs forwarded.
    pub manifest_puts: usize,
}

/// A running shim.
pub struct TokenShim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, changeable while it runs.
    pub state: Arc<Mutex<ShimState>>,
    task: JoinHandle<()>,
}

const ISSUED: &str = "issued-bearer-token";

impl TokenShim {
    /// Starts a shim that accepts `token` as the password at its realm.
    pub async fn start(backend: SocketAddr, token: &str) -> TokenShim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind shim");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ShimState::default()));
        let shared = Arc::clone(&state);
        let token = token.to_string();
        let task = tokio::spawn(async move {
            let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
            while let Ok((stream, _)) = listener.accept().await {
                let (state, token, client) = (Arc::clone(&shared), token.clone(), client.clone());
                let service = service_fn(move |req| {
                    let (state, token, client) =
                        (Arc::clone(&state), token.clone(), client.clone());
                    async move {
                        Ok::<_, Infallible>(
                            handle(req, addr, backend, &token, &state, &client).await,
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        TokenShim { addr, state, task }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TokenShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: &str) -> Response<ShimBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|n| match n {})
                .boxed(),
        )
        .expect("response")
}

async fn handle(
    req: Request<Incoming>,
    me: SocketAddr,
    backend: SocketAddr,
    token: &str,
    state: &Mutex<ShimState>,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
) -> Response<ShimBody> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req.uri().path().to_string();
    if path == "/openshift/token" {
        let granted = auth
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .is_some_and(|pair| {
                pair.split_once(':')
                    .is_some_and(|(_, password)| password == token)
            });
        let mut s = state.lock().unwrap();
        s.realm_requests += 1;
        if !granted {
            return reply(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad token"}]}"#,
            );
        }
        s.realm_granted += 1;
        return reply(
            StatusCode::OK,
            &format!(r#"{{"token":"{ISSUED}","expires_in":300}}"#),
        );
    }
    if auth != format!("Bearer {ISSUED}") {
        let challenge =
            format!(r#"Bearer realm="http://{me}/openshift/token",service="token-service""#);
        let mut response = reply(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
        return response;
    }
    if state.lock().unwrap().down {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"errors":[{"code":"UNAVAILABLE","message":"down"}]}"#,
        );
    }
    let push = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let upload = push && path.contains("/blobs/uploads/");
    let (delay, moved_to) = {
        let mut s = state.lock().unwrap();
        if push && s.deny_pushes {
            return reply(
                StatusCode::FORBIDDEN,
                r#"{"errors":[{"code":"DENIED","message":"quota exceeded"}]}"#,
            );
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if s.refuse_indexes && *req.method() == Method::PUT && content_type.contains("index") {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#,
            );
        }
        s.uploads += usize::from(upload);
        s.manifest_puts +=
            usize::from(*req.method() == Method::PUT && path.contains("/manifests/"));
        let started = upload && *req.method() == Method::POST;
        let delay = if upload && !started {
            s.upload_delay
        } else {
            Duration::ZERO
        };
        (delay, s.upload_origin.clone().filter(|_| started))
    };
    tokio::time::sleep(delay).await;
    let mut response = forward(req, backend, client).await;
    if let Some(origin) = moved_to {
        move_location(&mut response, me, &origin);
    }
    response
}

/// Puts the response's `Location` (relative, or absolute on `me`) on `origin`.
fn move_location(response: &mut Response<ShimBody>, me: SocketAddr, origin: &str) {
    let Some(location) = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let here = url::Url::parse(&format!("http://{me}/")).expect("shim url");
    let location = here.join(location).expect("backend Location");
    let mut moved = url::Url::parse(origin).expect("origin url");
    moved.set_path(location.path());
    moved.set_query(location.query());
    let value = moved.as_str().parse().expect("header value");
    response.headers_mut().insert(header::LOCATION, value);
}

async fn forward(
    req: Request<Incoming>,
    backend: SocketAddr,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
) -> Response<ShimBody> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    parts.uri = Uri::try_from(format!("http://{backend}{path}")).expect("uri");
    parts.headers.remove(header::AUTHORIZATION);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|b| b.boxed()),
        Err(e) => reply(
            StatusCode::BAD_GATEWAY,
            &format!(r#"{{"errors":[{{"code":"UNKNOWN","message":"{e}"}}]}}"#),
        ),
    }
}
