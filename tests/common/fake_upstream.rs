//! A programmable fake registry for fault-injection tests: the pull side of
//! the distribution API served from memory on a loopback port, with faults
//! that tests switch on and off while it runs.
//!
//! Content is global, not per repository: any repository name finds any
//! stored blob, manifest or tag, which keeps tests short; with
//! [`FakeUpstream::scope_users`] (a token service that grants pull access
//! per user and repository), content stored per repository is served only
//! under it. Faults are keyed by
//! the last path segment (a digest or a tag), so one fault covers the
//! `GET`s and `HEAD`s of that object in every repository. Every request is
//! recorded, the token realm's too, so tests can count upstream traffic and
//! check which credentials went where. `/mirror/v2/...` serves the same
//! content without faults: a redirect target on the fake's own origin.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use self::reply::{serve_content, status, FakeBody};
use self::route::Route;

mod content;
mod reply;
mod route;
mod scopes;

// Each test crate uses a different part of this re-export.
#[allow(unused_imports)]
pub use content::{digest_of, image_manifest, padded_image_manifest, random_blob, OCI_MANIFEST};
#[allow(unused_imports)]
pub use route::{blob_path, manifest_path};

/// The path prefix of the fault-free, same-origin copy of the API.
const MIRROR: &str = "/mirror";

/// The `service` named in the challenges of [`FakeUpstream::require_bearer`].
pub const SERVICE: &str = "fake-registry";

/// A misbehaviour of one object (blob, manifest or tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve the bytes with the last one flipped: right length, wrong digest.
    Corrupt,
    /// Announce the whole length, send `bytes` of it, then close the
    /// connection. With `resume`, a later `Range: bytes=N-` request is
    /// answered properly; without, `Range` is ignored and the body cut again.
    CutAfter {
        /// Bytes sent before the cut.
        bytes: usize,
        /// Whether a ranged request is answered whole.
        resume: bool,
    },
    /// Answer `code` to the next `times` requests, then clear itself.
    Status {
        /// The status to answer.
        code: u16,
        /// Seconds for a `Retry-After` header.
        retry_after: Option<u64>,
        /// How many requests get it.
        times: usize,
    },
    /// Send the headers, then nothing, ever.
    Stall,
    /// Send this many bytes, then nothing, ever; a ranged request is answered whole.
    StallAfter(usize),
    /// Send the body in `chunk`-byte pieces with `pause` before each.
    Slow {
        /// Bytes per piece.
        chunk: usize,
        /// Pause before each piece.
        pause: Duration,
    },
    /// `302` to the same path on another server (its base URL).
    RedirectTo(String),
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query, when any.
    pub query: Option<String>,
    /// The `Authorization` header, when sent.
    pub authorization: Option<String>,
    /// The `Range` header, when sent.
    pub range: Option<String>,
}

/// Who must present which Bearer token, and where to get it.
#[derive(Debug, Clone)]
struct Bearer {
    realm: String,
    token: String,
}

/// What the `/token` realm hands out, and to whom.
#[derive(Debug, Clone)]
struct Issuer {
    token: String,
    basic: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    manifests: HashMap<String, Bytes>,
    tags: HashMap<String, String>,
    blobs: HashMap<String, Bytes>,
    faults: HashMap<String, Fault>,
    bearer: Option<Bearer>,
    issuer: Option<Issuer>,
    down: bool,
    headers: Vec<(String, String)>,
    referrers: HashMap<String, serde_json::Value>,
    seen: Vec<Seen>,
    scopes: Option<scopes::Scopes>,
    /// This fake's own base URL, for the realm of [`scopes::Scopes`].
    own_url: Option<String>,
}

type Shared = Arc<Mutex<State>>;

/// A running fake registry; dropping it stops the server and its connections.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts a fake on `127.0.0.1`.
    pub async fn start() -> FakeUpstream {
        FakeUpstream::start_on("127.0.0.1").await
    }

    /// Starts a fake on another loopback address, such as `127.0.0.2`.
    pub async fn start_on(ip: &str) -> FakeUpstream {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind the fake upstream");
        let addr = listener.local_addr().expect("fake upstream address");
        let state = Shared::default();
        state.lock().unwrap().own_url = Some(format!("http://{addr}"));
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        FakeUpstream { addr, state, task }
    }

    /// `http://ip:port`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL of the fault-free copy of the API on this same origin.
    pub fn mirror_url(&self) -> String {
        format!("{}{MIRROR}", self.url())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a blob and returns its digest.
    pub fn put_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = digest_of(&bytes);
        self.state().blobs.insert(digest.clone(), bytes);
        digest
    }

    /// Stores an OCI image manifest under its digest and `tag`; returns the digest.
    pub fn put_manifest(&self, tag: &str, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = digest_of(&bytes);
        let mut state = self.state();
        state.manifests.insert(digest.clone(), bytes);
        state.tags.insert(tag.to_string(), digest.clone());
        digest
    }

    /// Sets the fault of the object whose last path segment is `target`.
    pub fn fault(&self, target: &str, fault: Fault) {
        self.state().faults.insert(target.to_string(), fault);
    }

    /// Clears the fault of `target`.
    pub fn clear_fault(&self, target: &str) {
        self.state().faults.remove(target);
    }

    /// Answers `GET /v2/<any>/referrers/<subject>` with `list` (an image
    /// index, or anything, to be hostile), filtered by `artifactType` when
    /// asked. Subjects without a list get a 404, as from a registry
    /// without the referrers API.
    pub fn put_referrers(&self, subject: &str, list: serde_json::Value) {
        self.state().referrers.insert(subject.to_string(), list);
    }

    /// Headers added to every response from now on (e.g. Docker Hub's
    /// `RateLimit-Remaining`).
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        self.state().headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
    }

    /// While `down`, every request gets a 503.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Requires `Authorization: Bearer <token>` on `/v2/` paths and issues
    /// that token from this fake's own `/token`, to `basic` credentials if given.
    pub fn require_bearer(&self, token: &str, basic: Option<(&str, &str)>) {
        self.issue_tokens(token, basic);
        self.require_bearer_from(&format!("{}/token", self.url()), token);
    }

    /// Requires `Authorization: Bearer <token>`, naming `realm` in the challenge.
    pub fn require_bearer_from(&self, realm: &str, token: &str) {
        self.state().bearer = Some(Bearer {
            realm: realm.to_string(),
            token: token.to_string(),
        });
    }

    /// Serves `token` on `/token`, only to `basic` credentials if given.
    pub fn issue_tokens(&self, token: &str, basic: Option<(&str, &str)>) {
        self.state().issuer = Some(Issuer {
            token: token.to_string(),
            basic: basic.map(|(user, password)| basic_header(user, password)),
        });
    }

    /// Grants pull access per repository from now on, through this fake's
    /// own `/token`: each `(user, password, repositories)` may pull those,
    /// anyone (anonymous too) may pull `public`, and content stored with
    /// [`FakeUpstream::put_blob_in`] and [`FakeUpstream::put_manifest_in`]
    /// is served only under its repository.
    pub fn scope_users(&self, users: &[(&str, &str, &[&str])], public: &[&str]) {
        let mut state = self.state();
        let scopes = state.scopes.get_or_insert_with(Default::default);
        for (user, password, repos) in users {
            let repos = repos.iter().map(|r| r.to_string()).collect();
            scopes
                .users
                .insert(basic_header(user, password), (user.to_string(), repos));
        }
        scopes.public = public.iter().map(|r| r.to_string()).collect();
    }

    /// Stores a blob held by `repo` only; returns its digest.
    pub fn put_blob_in(&self, repo: &str, bytes: impl Into<Bytes>) -> String {
        let digest = self.put_blob(bytes);
        let mut state = self.state();
        let scopes = state.scopes.get_or_insert_with(Default::default);
        scopes
            .holds
            .entry(repo.to_string())
            .or_default()
            .insert(digest.clone());
        digest
    }

    /// Stores a manifest held by `repo` only, tagged `tag` there; returns
    /// its digest.
    pub fn put_manifest_in(&self, repo: &str, tag: &str, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = digest_of(&bytes);
        let mut state = self.state();
        state.manifests.insert(digest.clone(), bytes);
        let scopes = state.scopes.get_or_insert_with(Default::default);
        let held = scopes.holds.entry(repo.to_string()).or_default();
        held.insert(digest.clone());
        scopes.tags.insert(format!("{repo}:{tag}"), digest.clone());
        digest
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// Requests received for `path` (no query) with `method`.
    pub fn count(&self, method: Method, path: &str) -> usize {
        let state = self.state();
        state
            .seen
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    /// `GET`s received for `path`.
    pub fn gets(&self, path: &str) -> usize {
        self.count(Method::GET, path)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn basic_header(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

async fn accept_loop(listener: TcpListener, state: Shared) {
    // Owned here so that aborting this task aborts every connection too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(handle(&state, &request)))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn header_text(request: &Request<Incoming>, name: header::HeaderName) -> Option<String> {
    request
        .headers()
        .get(name)?
        .to_str()
        .ok()
        .map(str::to_string)
}

fn handle(state: &Shared, request: &Request<Incoming>) -> Response<FakeBody> {
    let mut response = respond(state, request);
    let state = state.lock().unwrap_or_else(|p| p.into_inner());
    for (name, value) in &state.headers {
        let name = header::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = value.parse().expect("header value");
        response.headers_mut().insert(name, value);
    }
    response
}

fn respond(state: &Shared, request: &Request<Incoming>) -> Response<FakeBody> {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let path = request.uri().path().to_string();
    state.seen.push(Seen {
        method: request.method().clone(),
        path: path.clone(),
        query: request.uri().query().map(str::to_string),
        authorization: header_text(request, header::AUTHORIZATION),
        range: header_text(request, header::RANGE),
    });
    if state.down {
        return status(503, None, "UNAVAILABLE");
    }
    if path == "/token" {
        return state.token(request);
    }
    let (route, mirrored) = match path.strip_prefix(MIRROR) {
        Some(rest) => (Route::parse(rest), true),
        None => (Route::parse(&path), false),
    };
    if let Some(challenge) = state.challenge(request, &route) {
        return challenge;
    }
    let fault = match route.target() {
        Some(target) if !mirrored => state.take_fault(target),
        _ => None,
    };
    match fault {
        Some(Fault::Status {
            code, retry_after, ..
        }) => return reply::fault_status(code, retry_after),
        Some(Fault::RedirectTo(base)) => return reply::redirect(&base, request.uri()),
        _ => {}
    }
    state.answer(request, &route, fault)
}

impl State {
    fn token(&self, request: &Request<Incoming>) -> Response<FakeBody> {
        if let Some(scopes) = &self.scopes {
            let sent = header_text(request, header::AUTHORIZATION);
            return match scopes.token_for(sent.as_deref()) {
                Some(token) => {
                    let body = serde_json::json!({"token": token, "expires_in": 300});
                    reply::json(StatusCode::OK, body.to_string())
                }
                None => status(401, None, "UNAUTHORIZED"),
            };
        }
        let Some(issuer) = &self.issuer else {
            return status(404, None, "NAME_UNKNOWN");
        };
        let sent = header_text(request, header::AUTHORIZATION);
        if issuer.basic.is_some() && sent != issuer.basic {
            return status(401, None, "UNAUTHORIZED");
        }
        let body = serde_json::json!({"token": issuer.token, "expires_in": 300});
        reply::json(StatusCode::OK, body.to_string())
    }

    fn challenge(&self, request: &Request<Incoming>, route: &Route) -> Option<Response<FakeBody>> {
        let sent = header_text(request, header::AUTHORIZATION);
        let realm = match (&self.scopes, &self.bearer) {
            (Some(scopes), _) => {
                if scopes.covers(sent.as_deref(), route.name()) {
                    return None;
                }
                format!("{}/token", self.own_url.as_deref().unwrap_or(""))
            }
            (None, Some(bearer)) => {
                if sent.as_deref() == Some(format!("Bearer {}", bearer.token).as_str()) {
                    return None;
                }
                bearer.realm.clone()
            }
            (None, None) => return None,
        };
        let mut value = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
        if let Some(name) = route.name() {
            value.push_str(&format!(",scope=\"repository:{name}:pull\""));
        }
        let mut response = status(401, None, "UNAUTHORIZED");
        let value = value.parse().expect("challenge header");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
        Some(response)
    }

    /// The fault for `target`; a `Status` fault counts down and clears itself.
    fn take_fault(&mut self, target: &str) -> Option<Fault> {
        let fault = self.faults.get_mut(target)?;
        let taken = fault.clone();
        if let Fault::Status { times, .. } = fault {
            *times = times.saturating_sub(1);
            if *times == 0 {
                self.faults.remove(target);
            }
        }
        Some(taken)
    }

    fn referrers(
        &self,
        request: &Request<Incoming>,
        subject: &str,
        fault: Option<Fault>,
    ) -> Response<FakeBody> {
        let Some(list) = self.referrers.get(subject) else {
            return status(404, None, "NAME_UNKNOWN");
        };
        let wanted = request.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "artifactType")
                .map(|(_, v)| v.into_owned())
        });
        let mut list = list.clone();
        if let (Some(wanted), Some(manifests)) = (&wanted, list["manifests"].as_array_mut()) {
            manifests.retain(|m| m["artifactType"].as_str() == Some(wanted.as_str()));
        }
        let index = "application/vnd.oci.image.index.v1+json";
        let head = request.method() == Method::HEAD;
        let body = Bytes::from(list.to_string());
        let mut response = serve_content(body, index, subject, head, None, fault);
        if wanted.is_some() {
            let headers = response.headers_mut();
            headers.insert("oci-filters-applied", "artifactType".parse().unwrap());
        }
        response
    }

    fn answer(
        &self,
        request: &Request<Incoming>,
        route: &Route,
        fault: Option<Fault>,
    ) -> Response<FakeBody> {
        let (bytes, media_type, digest) = match route {
            Route::Base => return reply::json(StatusCode::OK, "{}".into()),
            Route::Tags { name } => {
                let mut tags: Vec<_> = self.tags.keys().cloned().collect();
                tags.sort();
                let body = serde_json::json!({"name": name, "tags": tags});
                return reply::json(StatusCode::OK, body.to_string());
            }
            Route::Manifest { name, reference } if self.scopes.is_some() => {
                let scopes = self.scopes.as_ref().expect("checked");
                let tagged = scopes.tags.get(&format!("{name}:{reference}"));
                let digest = tagged.map_or(*reference, String::as_str);
                match self.manifests.get(digest) {
                    Some(bytes) if scopes.holds(name, digest) => {
                        (bytes.clone(), OCI_MANIFEST, digest)
                    }
                    _ => return status(404, None, "MANIFEST_UNKNOWN"),
                }
            }
            Route::Blob { name, digest } if self.scopes.is_some() => {
                let scopes = self.scopes.as_ref().expect("checked");
                match self.blobs.get(*digest) {
                    Some(bytes) if scopes.holds(name, digest) => {
                        (bytes.clone(), "application/octet-stream", *digest)
                    }
                    _ => return status(404, None, "BLOB_UNKNOWN"),
                }
            }
            Route::Manifest { reference, .. } => {
                let digest = self.tags.get(*reference).map_or(*reference, String::as_str);
                match self.manifests.get(digest) {
                    Some(bytes) => (bytes.clone(), OCI_MANIFEST, digest),
                    None => return status(404, None, "MANIFEST_UNKNOWN"),
                }
            }
            Route::Blob { digest, .. } => match self.blobs.get(*digest) {
                Some(bytes) => (bytes.clone(), "application/octet-stream", *digest),
                None => return status(404, None, "BLOB_UNKNOWN"),
            },
            Route::Referrers { digest, .. } => return self.referrers(request, digest, fault),
            Route::Other => return status(404, None, "NAME_UNKNOWN"),
        };
        let range = header_text(request, header::RANGE);
        let head = request.method() == Method::HEAD;
        serve_content(bytes, media_type, digest, head, range.as_deref(), fault)
    }
}
