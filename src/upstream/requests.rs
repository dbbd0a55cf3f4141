//! The registry API calls lasti makes upstream, and the one request path
//! they share: credentials, 401 challenge, redirects, retries.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;
use url::Url;

use super::caller::Caller;
use super::client::{self, SendError};
use super::site;
use super::Upstream;
use crate::body::{self, Body};
use crate::error::{Error, Result};
use crate::oci::manifest::ImageIndex;
use crate::oci::media_type::OCI_INDEX;
use crate::oci::{Digest, ErrorBody, ErrorCode, RepoName};

/// Redirects followed for one request (blob storage usually needs one).
const MAX_REDIRECTS: usize = 5;
/// Largest error or tag-list body read from an upstream.
const SMALL_BODY_LIMIT: usize = 1024 * 1024;
/// First retry delay; doubled per attempt, with jitter.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);

/// What a `HEAD` of a manifest told.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<Digest>,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest fetched whole.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<Digest>,
}

/// What a `HEAD` of a blob told.
#[derive(Debug, Clone)]
pub struct BlobHead {
    /// `Content-Length`.
    pub size: Option<u64>,
    /// `Content-Type`.
    pub media_type: Option<String>,
}

/// A blob response whose body is still to be read.
#[derive(Debug)]
pub struct BlobResponse {
    /// The blob's full size, when the upstream said it.
    pub size: Option<u64>,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// Where the body starts within the blob (non-zero after a resumed range).
    pub offset: u64,
    /// The body.
    pub body: Incoming,
}

impl BlobResponse {
    /// Reads a successful answer to a blob `GET` sent from byte `offset`
    /// on; `Err` says why it does not answer that request.
    pub(crate) fn from_response(
        response: Response<Incoming>,
        offset: u64,
    ) -> std::result::Result<BlobResponse, String> {
        let headers = response.headers();
        let media_type = text_header(headers, header::CONTENT_TYPE);
        let (size, start) = if response.status() == StatusCode::PARTIAL_CONTENT {
            let (start, total) = content_range(headers)
                .ok_or_else(|| "206 without a valid Content-Range".to_string())?;
            (total, start)
        } else {
            (length(headers), 0)
        };
        if start != offset {
            return Err(format!("asked for byte {offset}, got {start}"));
        }
        Ok(BlobResponse {
            size,
            media_type,
            offset,
            body: response.into_body(),
        })
    }
}

/// A tag list page, passed through.
#[derive(Debug, Clone)]
pub struct TagList {
    /// The JSON body.
    pub body: Bytes,
    /// The `Link` header for the next page, when any.
    pub link: Option<HeaderValue>,
}

/// A referrers list (an OCI image index), checked and passed through.
#[derive(Debug, Clone)]
pub struct Referrers {
    /// The index's JSON body.
    pub body: Bytes,
    /// `OCI-Filters-Applied`, when the upstream filtered by artifact type.
    pub filters_applied: Option<HeaderValue>,
}

/// Runs `$call` on the registries of `urls` in order until one answers
/// (see [`Upstream::sites`]): any failure tries the next, and the last
/// one's failure is returned.
macro_rules! across {
    ($upstream:expr, $caller:expr, |$site:ident, $asker:ident| $call:expr) => {{
        let anonymous = Caller::lasti();
        let sites = $upstream.sites($caller, &anonymous);
        let last = sites.len() - 1;
        let mut answer = None;
        for (at, ($site, $asker)) in sites.into_iter().enumerate() {
            match $call {
                Err(err) if at < last => {
                    tracing::debug!(upstream = $site.name(), error = %err, "trying the next of urls");
                }
                done => {
                    answer = Some(done);
                    break;
                }
            }
        }
        answer.expect("the last place answers")
    }};
}

impl Upstream {
    /// `HEAD /v2/<repo>/manifests/<reference>`.
    pub async fn head_manifest(
        &self,
        caller: &Caller,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestHead> {
        across!(self, caller, |site, caller| site
            .head_manifest_here(caller, repo, reference, accept)
            .await)
    }

    async fn head_manifest_here(
        &self,
        caller: &Caller,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestHead> {
        let path = format!("{repo}/manifests/{reference}");
        let response = self
            .request(caller, Method::HEAD, &path, accept_header(accept), repo)
            .await?;
        let response = self
            .expect_success(response, Error::ManifestUnknown)
            .await?;
        let headers = response.headers();
        Ok(ManifestHead {
            digest: digest_header(headers),
            media_type: text_header(headers, header::CONTENT_TYPE),
            size: length(headers),
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>`, refusing bodies over `limit`.
    pub async fn get_manifest(
        &self,
        caller: &Caller,
        repo: &RepoName,
        reference: &str,
        accept: &str,
        limit: u64,
    ) -> Result<FetchedManifest> {
        across!(self, caller, |site, caller| site
            .get_manifest_here(caller, repo, reference, accept, limit)
            .await)
    }

    async fn get_manifest_here(
        &self,
        caller: &Caller,
        repo: &RepoName,
        reference: &str,
        accept: &str,
        limit: u64,
    ) -> Result<FetchedManifest> {
        let path = format!("{repo}/manifests/{reference}");
        let response = self
            .request(caller, Method::GET, &path, accept_header(accept), repo)
            .await?;
        let response = self
            .expect_success(response, Error::ManifestUnknown)
            .await?;
        if length(response.headers()).is_some_and(|n| n > limit) {
            return Err(self.invalid(format!("manifest larger than the {limit}-byte limit")));
        }
        let digest = digest_header(response.headers());
        let media_type = text_header(response.headers(), header::CONTENT_TYPE);
        let bytes = client::read_small(
            response.into_body(),
            limit as usize,
            self.config.body_idle_timeout,
        )
        .await
        .map_err(|e| self.read_error("manifest", e))?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`, following redirects.
    pub async fn head_blob(
        &self,
        caller: &Caller,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobHead> {
        across!(self, caller, |site, caller| site
            .head_blob_here(caller, repo, digest)
            .await)
    }

    async fn head_blob_here(
        &self,
        caller: &Caller,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobHead> {
        let path = format!("{repo}/blobs/{digest}");
        let response = self
            .request(caller, Method::HEAD, &path, HeaderMap::new(), repo)
            .await?;
        let response = self.expect_success(response, Error::BlobUnknown).await?;
        Ok(BlobHead {
            size: length(response.headers()),
            media_type: text_header(response.headers(), header::CONTENT_TYPE),
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>` from byte `offset` on, following redirects.
    pub async fn get_blob(
        &self,
        caller: &Caller,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        across!(self, caller, |site, caller| site
            .get_blob_here(caller, repo, digest, offset)
            .await)
    }

    async fn get_blob_here(
        &self,
        caller: &Caller,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        let path = format!("{repo}/blobs/{digest}");
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii");
            headers.insert(header::RANGE, range);
        }
        let response = self
            .request(caller, Method::GET, &path, headers, repo)
            .await?;
        let response = self.expect_success(response, Error::BlobUnknown).await?;
        BlobResponse::from_response(response, offset).map_err(|m| self.invalid(m))
    }

    /// `GET /v2/<repo>/tags/list`, with the client's `n` and `last`.
    pub async fn tags(
        &self,
        caller: &Caller,
        repo: &RepoName,
        query: Option<&str>,
    ) -> Result<TagList> {
        let path = match query {
            Some(q) => format!("{repo}/tags/list?{q}"),
            None => format!("{repo}/tags/list"),
        };
        let response = self
            .request(caller, Method::GET, &path, HeaderMap::new(), repo)
            .await?;
        let response = self.expect_success(response, Error::NameUnknown).await?;
        let link = response.headers().get(header::LINK).cloned();
        let body = client::read_small(
            response.into_body(),
            SMALL_BODY_LIMIT,
            self.config.body_idle_timeout,
        )
        .await
        .map_err(|e| self.read_error("tag list", e))?;
        Ok(TagList { body, link })
    }

    /// `GET /v2/<repo>/referrers/<digest>`, with the client's `artifactType`.
    /// A 404 (the upstream has no referrers API) is `ManifestUnknown`; a
    /// body that is not an image index is refused.
    pub async fn referrers(
        &self,
        caller: &Caller,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
        limit: usize,
    ) -> Result<Referrers> {
        let mut path = format!("{repo}/referrers/{digest}");
        if let Some(artifact_type) = artifact_type {
            path.push('?');
            path.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("artifactType", artifact_type)
                    .finish(),
            );
        }
        let response = self
            .request(caller, Method::GET, &path, accept_header(OCI_INDEX), repo)
            .await?;
        let response = self
            .expect_success(response, Error::ManifestUnknown)
            .await?;
        let filters_applied = response.headers().get("oci-filters-applied").cloned();
        let body = client::read_small(response.into_body(), limit, self.config.body_idle_timeout)
            .await
            .map_err(|e| self.read_error("referrers", e))?;
        if ImageIndex::parse(&body).is_none() {
            return Err(self.invalid("the referrers list is not an image index".into()));
        }
        Ok(Referrers {
            body,
            filters_applied,
        })
    }

    /// `GET /v2/` made for `caller`: whether the upstream takes its
    /// credentials at all (a token realm asked with no scope, or Basic).
    /// `Ok(false)` when it refuses them.
    pub async fn ping(&self, caller: &Caller) -> Result<bool> {
        let url = self.api_url("")?;
        let response = self
            .call(
                caller,
                &Method::GET,
                url,
                &HeaderMap::new(),
                "",
                &body::empty,
            )
            .await;
        match response {
            Ok(r) if r.status().is_success() => Ok(true),
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Ok(false),
            Ok(r) => Err(self.invalid(format!("/v2/ answered {}", r.status()))),
            Err(Error::UpstreamDenied { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The longest pause allowed while reading a body.
    pub fn body_idle_timeout(&self) -> Duration {
        self.config.body_idle_timeout
    }

    /// Sends a request, retrying transient failures with backoff.
    async fn request(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        headers: HeaderMap,
        repo: &RepoName,
    ) -> Result<Response<Incoming>> {
        let mut attempt = 0;
        loop {
            let outcome = self.attempt(caller, &method, path, &headers, repo).await;
            let transient = match &outcome {
                Ok(r) => matches!(r.status().as_u16(), 500 | 502 | 503 | 504),
                Err(e) => e.is_retryable(),
            };
            if !transient || attempt >= self.config.retries {
                return outcome;
            }
            let delay = RETRY_BASE_DELAY * 2u32.pow(attempt);
            let jitter = rand::thread_rng().gen_range(0..=delay.as_millis() as u64 / 2);
            tracing::debug!(
                upstream = self.name(),
                attempt,
                "retrying a transient failure"
            );
            tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
            attempt += 1;
        }
    }

    /// One try: credentials, one re-send after a 401 challenge, redirects.
    async fn attempt(
        &self,
        caller: &Caller,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        repo: &RepoName,
    ) -> Result<Response<Incoming>> {
        let url = self.api_url(path)?;
        let scope = format!("repository:{repo}:pull");
        self.call(caller, method, url, headers, &scope, &body::empty)
            .await
    }

    /// `<base>/v2/<path>`.
    pub(crate) fn api_url(&self, path: &str) -> Result<Url> {
        self.config
            .url
            .join(&format!("v2/{path}"))
            .map_err(|e| self.invalid(e.to_string()))
    }

    /// Sends one request with credentials for `scope`, answers a 401
    /// challenge once (re-creating the body with `body`), and follows
    /// redirects of `GET` and `HEAD`. Credentials reach only the
    /// registry's own origin (see [`Upstream::send`]).
    pub(crate) async fn call(
        &self,
        caller: &Caller,
        method: &Method,
        url: Url,
        headers: &HeaderMap,
        scope: &str,
        body: &(dyn Fn() -> Body + Sync),
    ) -> Result<Response<Incoming>> {
        self.admit()?;
        let mut authorization = self.auth.header(&self.client, caller, scope).await?;
        let mut response = self
            .send(method, &url, headers, authorization.as_ref(), body())
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenges: Vec<&str> = response
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if let Some(fresh) = self
                .auth
                .challenge(&self.client, caller, &challenges, scope)
                .await?
            {
                response = self
                    .send(method, &url, headers, Some(&fresh), body())
                    .await?;
                // Redirects below carry the token that worked, to the same origin only.
                authorization = Some(fresh);
            }
        }
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Ok(response);
        }
        self.follow_redirects(method, url, headers, authorization, response)
            .await
    }

    async fn follow_redirects(
        &self,
        method: &Method,
        mut url: Url,
        headers: &HeaderMap,
        authorization: Option<HeaderValue>,
        mut response: Response<Incoming>,
    ) -> Result<Response<Incoming>> {
        for _ in 0..MAX_REDIRECTS {
            if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED
            {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| self.invalid("redirect without Location".into()))?;
            url = url
                .join(location)
                .map_err(|_| self.invalid("redirect to an invalid URL".into()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(self.invalid("redirect to a non-HTTP URL".into()));
            }
            // Blob storage on another origin gets the request without credentials.
            response = self
                .send(method, &url, headers, authorization.as_ref(), body::empty())
                .await?;
        }
        Err(self.invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Sends one request. `authorization` goes along only when `url` is on
    /// the registry's own origin: checked here, as the request leaves, so
    /// no URL a registry hands back (a redirect, an upload `Location`) can
    /// carry its credentials elsewhere.
    async fn send(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
        body: Body,
    ) -> Result<Response<Incoming>> {
        let mut builder = Request::builder().method(method.clone()).uri(url.as_str());
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        if let Some(value) = authorization {
            if site::same_origin(url, &self.config.url) {
                builder = builder.header(header::AUTHORIZATION, value);
            } else {
                tracing::debug!(
                    upstream = self.name(),
                    host = url.host_str().unwrap_or_default(),
                    "credentials withheld from another origin"
                );
            }
        }
        let request = builder
            .body(body)
            .map_err(|e| self.invalid(format!("request: {e}")))?;
        let started = std::time::Instant::now();
        let sent = client::send(&self.client, request, self.config.header_timeout).await;
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        self.metrics
            .upstream_request(self.name(), method.as_str(), status, started.elapsed());
        self.note_outcome(status.is_some_and(|s| !matches!(s, 502..=504)));
        let response = sent.map_err(|e| {
            let err = match e {
                SendError::Timeout => Error::UpstreamTimeout {
                    upstream: self.name().to_string(),
                    message: "no response headers in time".into(),
                },
                SendError::Failed(message) => Error::UpstreamUnavailable {
                    upstream: self.name().to_string(),
                    message,
                },
            };
            self.metrics.upstream_error(self.name(), err.kind());
            err
        })?;
        self.note_ratelimit(response.headers());
        Ok(response)
    }

    /// Docker Hub reports the pull quota on manifest responses.
    fn note_ratelimit(&self, headers: &HeaderMap) {
        let value = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::metrics::ratelimit_value)
        };
        let (limit, remaining) = (value("ratelimit-limit"), value("ratelimit-remaining"));
        if limit.is_some() || remaining.is_some() {
            self.metrics
                .upstream_ratelimit(self.name(), limit, remaining);
        }
    }

    /// Passes a 2xx through; turns anything else into the matching error.
    pub(crate) async fn expect_success(
        &self,
        response: Response<Incoming>,
        missing: Error,
    ) -> Result<Response<Incoming>> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = client::read_small(
            response.into_body(),
            SMALL_BODY_LIMIT,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
        let parsed = ErrorBody::parse(&body);
        let first = parsed.as_ref().and_then(|b| b.errors.first());
        let code = first.and_then(|e| ErrorCode::from_code_str(&e.code));
        let message = first
            .map(|e| e.message.chars().take(200).collect())
            .unwrap_or_else(|| format!("status {status}"));
        let upstream = self.name().to_string();
        let err = match status.as_u16() {
            404 if code == Some(ErrorCode::NameUnknown) => Error::NameUnknown,
            404 => missing,
            401 | 403 => Error::UpstreamDenied { upstream, message },
            429 => Error::UpstreamTooManyRequests {
                upstream,
                retry_after,
            },
            500..=599 => Error::UpstreamUnavailable { upstream, message },
            _ => Error::UpstreamInvalid {
                upstream,
                message: format!("unexpected status {status}: {message}"),
            },
        };
        if !matches!(
            err,
            Error::ManifestUnknown | Error::BlobUnknown | Error::NameUnknown
        ) {
            self.metrics.upstream_error(self.name(), err.kind());
        }
        Err(err)
    }

    fn read_error(&self, what: &str, err: client::ReadError) -> Error {
        let upstream = self.name().to_string();
        match err {
            client::ReadError::Timeout => Error::UpstreamTimeout {
                upstream,
                message: format!("{what} body stalled"),
            },
            client::ReadError::Failed(e) => Error::UpstreamInvalid {
                upstream,
                message: format!("{what} body: {e}"),
            },
        }
    }

    pub(crate) fn invalid(&self, message: String) -> Error {
        Error::UpstreamInvalid {
            upstream: self.name().to_string(),
            message,
        }
    }
}

fn accept_header(accept: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(accept) {
        headers.insert(header::ACCEPT, value);
    }
    headers
}

fn text_header(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

fn length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn digest_header(headers: &HeaderMap) -> Option<Digest> {
    Digest::parse(headers.get("docker-content-digest")?.to_str().ok()?).ok()
}

/// `Content-Range: bytes start-end/total` -> (start, total).
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((start.parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 10-99/100"),
        );
        assert_eq!(content_range(&h), Some((10, Some(100))));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 10-99/*"),
        );
        assert_eq!(content_range(&h), Some((10, None)));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("items 1-2/3"),
        );
        assert_eq!(content_range(&h), None);
    }
}
