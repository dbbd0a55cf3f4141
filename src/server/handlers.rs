//! Turns a parsed request into a call on the proxy and its answer into a
//! response: validation of every client-supplied piece happens here, once.

use std::sync::Arc;

use http::{header, HeaderMap, Method, Request, Response};

use super::response;
use super::router::{self, Route};
use crate::access::client_tokens::{ClientTokens, TOKEN_LIFETIME, TOKEN_PATH};
use crate::body::Body;
use crate::cluster::peer_client::{PeerPurge, MEMBER_HEADER, ONLY_IF_CACHED};
use crate::error::{Error, Result};
use crate::oci::{AcceptList, Digest, DigestError, RangeSpec, Reference, RepoName};
use crate::pull_through::{OfflineSwitch, Proxy};
use crate::upstream::{Caller, ClientCredential, Upstream};

/// Answers one registry API request, made by `caller`.
pub async fn handle<B>(proxy: &Proxy, request: &Request<B>, caller: &Caller) -> Response<Body> {
    match dispatch(proxy, request, caller).await {
        Ok(response) => response,
        Err(err) => failed(request, &err),
    }
}

/// The error response for a request, its reason logged.
fn failed<B>(request: &Request<B>, err: &Error) -> Response<Body> {
    response::log_failure(err, request.method(), request.uri().path());
    response::error(err)
}

async fn dispatch<B>(
    proxy: &Proxy,
    request: &Request<B>,
    caller: &Caller,
) -> Result<Response<Body>> {
    let route = router::route(request.uri().path());
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ if route == Route::NotFound => return Err(Error::NameUnknown),
        _ => {
            return Err(Error::Unsupported(
                "lasti is a pull-through cache: only GET and HEAD are supported",
            ))
        }
    };
    let query = request.uri().query();
    match route {
        Route::Base => Ok(response::base()),
        Route::Catalog => Err(Error::Unsupported(
            "the catalog is not offered by a pull-through cache",
        )),
        Route::UnknownApi | Route::NotFound => Err(Error::NameUnknown),
        Route::Manifest { name, reference } => {
            let (upstream, repo) = resolve(proxy, name, query)?;
            let reference = parse_reference(reference)?;
            let accept = AcceptList::parse(header_values(request.headers(), header::ACCEPT));
            let answer = proxy
                .manifest(upstream, &repo, &reference, &accept, head, caller)
                .await?;
            Ok(response::manifest(&answer, head))
        }
        Route::Blob { name, digest } => {
            let (upstream, repo) = resolve(proxy, name, query)?;
            let digest = parse_digest(digest)?;
            let range = parse_range(request.headers())?;
            let answer = proxy
                .blob(upstream, &repo, &digest, range, head, caller)
                .await?;
            let delivery = request.extensions().get().cloned().unwrap_or_default();
            Ok(response::blob(answer, digest.as_str(), delivery))
        }
        Route::Referrers { name, digest } => {
            let (upstream, repo) = resolve(proxy, name, query)?;
            let subject = parse_digest(digest)?;
            let artifact_type = query_param(query, "artifactType");
            let answer = proxy
                .referrers(upstream, &repo, &subject, artifact_type.as_deref(), caller)
                .await?;
            Ok(response::referrers(answer, head))
        }
        Route::Tags { name } => {
            let (upstream, repo) = resolve(proxy, name, query)?;
            let list = proxy
                .tags(upstream, &repo, pagination(query).as_deref(), caller)
                .await?;
            Ok(response::tags(list))
        }
    }
}

/// `GET /token`: lasti's token for the client's credential (Basic, checked
/// with the upstream it is for) or, without one, an anonymous token.
/// An upstream that cannot be reached for the check does not stop the
/// token: every pull is checked again with its upstream.
pub async fn token<B>(
    proxy: &Proxy,
    tokens: &ClientTokens,
    request: &Request<B>,
) -> Response<Body> {
    let refused = |why: &str| Error::Unauthorized {
        challenge: format!("Basic realm=\"lasti\", error=\"{why}\""),
    };
    let answer = async {
        if request.method() != Method::GET {
            return Err(Error::Unsupported("the token endpoint answers GET"));
        }
        let credential = match request.headers().get(header::AUTHORIZATION) {
            None => None,
            Some(value) => ClientCredential::from_header(value)
                .map_err(|_| refused("send Basic credentials"))?,
        };
        if let Some(credential) = &credential {
            let caller = Caller::client(Arc::new(credential.clone()));
            match proxy.login(&caller).await {
                None => return Err(refused("no upstream takes credentials of this user name")),
                Some(Ok(true)) => {}
                Some(Ok(false)) => {
                    tracing::info!(path = TOKEN_PATH, "credentials refused by their upstream");
                    return Err(refused("the upstream refused these credentials"));
                }
                Some(Err(err)) => tracing::warn!(
                    error = %err,
                    "cannot check credentials with their upstream; issuing a token, every pull is checked"
                ),
            }
        }
        Ok(response::token(
            &tokens.seal(credential.as_ref()),
            TOKEN_LIFETIME,
        ))
    };
    match answer.await {
        Ok(response) => response,
        Err(err) => failed(request, &err),
    }
}

/// Answers one request on the peer listener: a blob or manifest `GET` by
/// another replica that sees this one as its owner (a manifest by tag or
/// digest is resolved here once for the whole cluster). Everything else
/// is refused; the API proper is on the client listener.
pub async fn handle_peer<B>(proxy: &Proxy, request: &Request<B>) -> Response<Body> {
    // Asked for a copy it holds (by the owner of the digest), not a fetch.
    let only_stored = header_values(request.headers(), header::CACHE_CONTROL)
        .any(|v| v.split(',').any(|d| d.trim() == ONLY_IF_CACHED));
    let answer = async {
        if request.method() != Method::GET {
            return Err(Error::Unsupported(
                "the peer listener serves blob and manifest GETs only",
            ));
        }
        let query = request.uri().query();
        match router::route(request.uri().path()) {
            Route::Blob { name, digest } => {
                let (upstream, repo) = resolve(proxy, name, query)?;
                let digest = parse_digest(digest)?;
                let range = parse_range(request.headers())?;
                let asker = request.headers().get(MEMBER_HEADER);
                let asker = asker.and_then(|m| m.to_str().ok());
                let answer = proxy
                    .peer_blob(upstream, &repo, &digest, range, only_stored, asker)
                    .await?;
                let delivery = request.extensions().get().cloned().unwrap_or_default();
                Ok(response::blob(answer, digest.as_str(), delivery))
            }
            Route::Manifest { name, reference } => {
                let (upstream, repo) = resolve(proxy, name, query)?;
                let reference = parse_reference(reference)?;
                let accept = AcceptList::parse(header_values(request.headers(), header::ACCEPT));
                let answer = proxy
                    .peer_manifest(upstream, &repo, &reference, &accept)
                    .await?;
                Ok(response::manifest(&answer, false))
            }
            _ => Err(Error::NameUnknown),
        }
    };
    match answer.await {
        Ok(response) => response,
        // The usual answer to an owner's question: not worth a log line.
        Err(err @ Error::BlobUnknown) if only_stored => response::error(&err),
        Err(err) => failed(request, &err),
    }
}

/// Largest JSON body read on the peer listener (an offer, a purge, a switch).
const PEER_BODY_LIMIT: usize = 4096;

/// A peer's JSON body as `T`, read within 10 s; `what` names it in the
/// error when it is not one.
async fn peer_json<T: serde::de::DeserializeOwned>(
    body: hyper::body::Incoming,
    what: &'static str,
) -> Result<T> {
    let read =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, PEER_BODY_LIMIT));
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(bytes)) => {
            serde_json::from_slice::<T>(&bytes.to_bytes()).map_err(|_| Error::Unsupported(what))
        }
        _ => Err(Error::Unsupported(what)),
    }
}

/// Takes a back-fill offer another replica forwarded to this one, the
/// owner of its digest: `202 Accepted` once queued here.
pub async fn peer_offer(proxy: &Proxy, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let answer =
        peer_json::<crate::pull_through::Offer>(body, "the body is not a back-fill offer").await;
    let answer = answer.and_then(|offer| {
        let ns = format!("ns={}", offer.upstream);
        let (upstream, repo) = resolve(proxy, offer.repo.as_str(), Some(&ns))?;
        let offer = crate::pull_through::Offer {
            upstream: upstream.name().to_string(),
            repo,
            ..offer
        };
        match proxy.take_offer(offer) {
            true => Ok(response::accepted()),
            false => Err(Error::Unsupported("back-fill is off on this replica")),
        }
    });
    match answer {
        Ok(response) => response,
        Err(err) => {
            response::log_failure(&err, &parts.method, parts.uri.path());
            response::error(&err)
        }
    }
}

/// Purges what another replica purged for its operator (`POST`, JSON):
/// `200` with what went, `404` when this replica held none of it.
pub async fn peer_purge(proxy: &Proxy, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let answer = match peer_json::<PeerPurge>(body, "the body is not a purge").await {
        Ok(asked) => proxy.purge_forwarded(asked).await,
        Err(err) => Err(err),
    };
    match answer {
        Ok(purged) => response::json(&purged),
        Err(err) => {
            if !matches!(err, Error::ManifestUnknown) {
                response::log_failure(&err, &parts.method, parts.uri.path());
            }
            response::error(&err)
        }
    }
}

/// Sets an offline switch another replica's operator set (`POST`, JSON):
/// `204`.
pub async fn peer_offline(
    proxy: &Proxy,
    request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let answer = match peer_json::<OfflineSwitch>(body, "the body is not an offline switch").await {
        Ok(switch) => proxy.switch_offline(&switch, false).await,
        Err(err) => Err(err),
    };
    match answer {
        Ok(_) => response::no_content(),
        Err(err) => {
            response::log_failure(&err, &parts.method, parts.uri.path());
            response::error(&err)
        }
    }
}

/// Chooses the upstream (by `ns=` or the name) and validates the name.
fn resolve<'p>(
    proxy: &'p Proxy,
    raw: &str,
    query: Option<&str>,
) -> Result<(&'p Arc<Upstream>, RepoName)> {
    proxy.resolve(raw, query_param(query, "ns").as_deref())
}

fn parse_reference(raw: &str) -> Result<Reference> {
    Reference::parse(raw).map_err(|e| match e {
        crate::oci::ReferenceError::Digest(d) => Error::DigestInvalid(d.to_string()),
        other => Error::ReferenceInvalid(other.to_string()),
    })
}

fn parse_digest(raw: &str) -> Result<Digest> {
    Digest::parse(raw).map_err(|e: DigestError| Error::DigestInvalid(e.to_string()))
}

/// A malformed or multi-part `Range` is refused; RFC 9110 lets a server
/// ignore it, but an explicit error shows a broken client its mistake.
fn parse_range(headers: &HeaderMap) -> Result<Option<RangeSpec>> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Error::RangeInvalid("Range header is not ASCII".into()))?;
    RangeSpec::parse(text)
        .map(Some)
        .map_err(|e| Error::RangeInvalid(e.to_string()))
}

fn header_values(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Only `n` and `last` go upstream; `ns` and anything else stay here.
fn pagination(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query?.as_bytes())
        .filter(|(k, _)| k == "n" || k == "last")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_keeps_only_n_and_last() {
        assert_eq!(
            pagination(Some("ns=docker.io&n=10&last=a%2Fb")).as_deref(),
            Some("n=10&last=a%2Fb")
        );
        assert_eq!(pagination(Some("ns=docker.io")), None);
        assert_eq!(pagination(None), None);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(parse_range(&headers).unwrap().is_none());
        headers.insert(header::RANGE, "bytes=0-1,3-4".parse().unwrap());
        assert!(parse_range(&headers).is_err());
        headers.insert(header::RANGE, "bytes=5-1".parse().unwrap());
        assert!(parse_range(&headers).is_err());
        headers.insert(header::RANGE, "bytes=2-".parse().unwrap());
        assert!(parse_range(&headers).unwrap().is_some());
    }
}
