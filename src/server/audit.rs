//! Which finished client requests become audit events, and what they say:
//! every manifest served (`GET` and `HEAD`), and every refusal of a
//! credential or by a policy. A `401` to a request that carried no
//! credential is the start of a login (every client's first `/v2/`), not
//! a refusal, and is not reported.

use std::net::IpAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Response, StatusCode};

use super::access_log::Record;
use super::router::Route;
use crate::events::{Client, Events, Kind, Pulled, Refused};
use crate::pull_through::{Outcome, Provenance, Proxy};
use crate::upstream::caller::{decode_basic, CredentialKind};
use crate::upstream::Caller;

/// The upstream and repository a request names, as the upstream names them.
#[derive(Debug, Clone)]
struct Located {
    upstream: String,
    repository: String,
}

/// The user name of a client credential passed on to an upstream, set on
/// the response when events are on (the request carried lasti's token,
/// which only lasti can open).
#[derive(Debug, Clone)]
pub struct ClientUser(pub String);

impl ClientUser {
    /// The user name `caller`'s credential carries, if any: as the client
    /// wrote it (`ghcr.io/alice` for one bound to an upstream).
    pub fn of(caller: &Caller) -> Option<ClientUser> {
        let credential = caller.credential()?;
        let CredentialKind::Basic { user, .. } = credential.secret() else {
            return None;
        };
        Some(ClientUser(match credential.named_upstream() {
            Some(upstream) => format!("{upstream}/{user}"),
            None => user.clone(),
        }))
    }
}

/// A refusal's code and message, set on the response by
/// [`super::response::error`].
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `UNAUTHORIZED` or `DENIED`.
    pub code: &'static str,
    /// What the client was told.
    pub reason: String,
}

/// What an event needs of the request it is about.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Its query (for containerd's `ns=`).
    pub query: Option<&'a str>,
    /// The client's address.
    pub address: IpAddr,
    /// Its `Authorization` header.
    pub authorization: Option<&'a HeaderValue>,
    /// Its method.
    pub method: &'a Method,
    /// Its route.
    pub route: &'a Route<'a>,
}

/// What an event will say once the response is sent.
#[derive(Debug)]
pub struct Pending {
    events: Arc<Events>,
    kind: Kind,
    client: Client,
    located: Option<Located>,
    tag: Option<String>,
    digest: Option<String>,
    media_type: Option<String>,
    refusal: Option<Refusal>,
}

impl Pending {
    /// The event a client request's response makes, if any (none when no
    /// sink is configured).
    pub fn of<B>(proxy: &Proxy, request: &Request<'_>, response: &Response<B>) -> Option<Pending> {
        let Request {
            query,
            address,
            authorization,
            method,
            route,
        } = *request;
        let events = proxy.events()?;
        let status = response.status();
        let refusal = response.extensions().get::<Refusal>();
        let kind = match (route, status) {
            (Route::Manifest { .. }, s) if s.is_success() && is_pull(method) => {
                Kind::ManifestPulled
            }
            (_, StatusCode::FORBIDDEN) => Kind::PullRefused,
            (_, StatusCode::UNAUTHORIZED) if authorization.is_some() => Kind::PullRefused,
            _ => return None,
        };
        let extensions = response.extensions();
        let user = extensions
            .get::<ClientUser>()
            .map(|u| u.0.clone())
            .or_else(|| basic_user(authorization?));
        let header = |name| {
            let value = response.headers().get(name)?.to_str().ok()?;
            Some(value.to_string())
        };
        let tag = match route {
            Route::Manifest { reference, .. } if !reference.contains(':') => {
                Some(reference.to_string())
            }
            _ => None,
        };
        Some(Pending {
            events: Arc::clone(events),
            kind,
            client: Client { address, user },
            located: route.name().and_then(|name| {
                let ns = super::handlers::query_param(query, "ns");
                let (upstream, repository) = proxy.locate(name, ns.as_deref()).ok()?;
                Some(Located {
                    upstream: upstream.name().to_string(),
                    repository: repository.to_string(),
                })
            }),
            tag,
            digest: header(super::response::DIGEST_HEADER),
            media_type: header(header::CONTENT_TYPE.as_str()),
            refusal: refusal.cloned(),
        })
    }

    /// Sends the event, with what the response turned out to be.
    pub fn finish(self, record: &Record, bytes: u64, complete: bool) {
        let (method, path, status) = (&record.method, record.path.as_str(), record.status);
        let (outcome, from) = (record.outcome, record.from.as_ref());
        let (upstream, repository) = match &self.located {
            Some(l) => (Some(l.upstream.as_str()), Some(l.repository.as_str())),
            None => (None, None),
        };
        match self.kind {
            Kind::ManifestPulled => {
                let (Some(upstream), Some(repository)) = (upstream, repository) else {
                    return;
                };
                let digest = self.digest.as_deref().unwrap_or_default();
                let subject = match &self.tag {
                    Some(tag) => format!("{upstream}/{repository}:{tag}"),
                    None => format!("{upstream}/{repository}@{digest}"),
                };
                let data = Pulled {
                    client: &self.client,
                    method: method.as_str(),
                    upstream,
                    repository,
                    tag: self.tag.as_deref(),
                    digest,
                    media_type: self.media_type.as_deref(),
                    tier: from.map(Provenance::label).unwrap_or("-"),
                    outcome: outcome.map(Outcome::as_str).unwrap_or("-"),
                    bytes,
                    complete,
                };
                self.events.emit(self.kind, Some(&subject), &data);
            }
            kind => {
                let (code, reason) = match &self.refusal {
                    Some(r) => (r.code, r.reason.as_str()),
                    None => (status.canonical_reason().unwrap_or("refused"), ""),
                };
                let data = Refused {
                    client: &self.client,
                    method: method.as_str(),
                    path,
                    upstream,
                    repository,
                    status: status.as_u16(),
                    code,
                    reason,
                };
                let subject = match (upstream, repository) {
                    (Some(upstream), Some(repository)) => format!("{upstream}/{repository}"),
                    _ => path.to_string(),
                };
                self.events.emit(kind, Some(&subject), &data);
            }
        }
    }
}

fn is_pull(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The user name of a Basic credential.
fn basic_user(authorization: &HeaderValue) -> Option<String> {
    let text = authorization.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let (user, _) = decode_basic(encoded)?;
    Some(user).filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_of_a_basic_credential_and_nothing_of_a_token() {
        let basic = crate::upstream::caller::basic_header("alice", "s3cret").unwrap();
        assert_eq!(basic_user(&basic).as_deref(), Some("alice"));
        let bearer = HeaderValue::from_static("Bearer abc");
        assert_eq!(basic_user(&bearer), None);
        let empty = HeaderValue::from_static("Basic Og==");
        assert_eq!(basic_user(&empty), None, "podman's empty pair is anonymous");
    }
}
