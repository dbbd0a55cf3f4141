//! Asking the owner of a blob or a manifest for it:
//! `GET /v2/<repo>/blobs/<digest>?ns=<upstream>` (from byte `offset` on) or
//! `GET /v2/<repo>/manifests/<reference>?ns=<upstream>` on its peer
//! listener, with the shared secret.
//! No retries and no redirects: the asker goes on to the next source at
//! once. A peer that cannot be reached is left out for a while; one that
//! answers with anything but the blob (busy, a server error, the whole blob
//! to a resume) is not: it is alive, and owns its digests still.

use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};

use crate::body;
use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::oci::media_type::DEFAULT_MANIFEST_ACCEPT;
use crate::oci::{Digest, RepoName};
use crate::pull_through::{Offer, OfflineSwitch, PurgeScope, Purged};
use crate::secret::Secret;
use crate::upstream::client::{self, HttpClient, SendError};
use crate::upstream::{BlobResponse, FetchedManifest};

/// Where the peer listener takes back-fill offers (`POST`, JSON).
pub const OFFER_PATH: &str = "/lasti/backfill/offer";

/// The header a peer request names its asker in: the asking process's
/// instance id, so that a replica that reached itself under another name
/// knows at once.
pub const ASKER_HEADER: &str = "lasti-asker";

/// The header a peer request names its asker's member name in (as it
/// advertises itself), so the replica asked knows it is up.
pub const MEMBER_HEADER: &str = "lasti-member";

/// Where a replica greets the others when it starts (`POST`, empty,
/// answered 204), so they take it back before their note that it was down
/// runs out.
pub const HELLO_PATH: &str = "/lasti/cluster/hello";

/// Where a replica asks the others to purge what an operator purged on it
/// (`POST`, JSON [`PeerPurge`]; answered with what went, or `404`).
pub const PURGE_PATH: &str = "/lasti/cache/purge";

/// A purge forwarded to the other replicas.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PeerPurge {
    /// The image as the operator named it.
    pub image: String,
    /// How much to drop.
    pub scope: PurgeScope,
    /// The manifest the name resolved to on the replica that forwards it,
    /// for a replica that holds the content without the tag's record.
    pub digest: Option<Digest>,
}

/// Where a replica hands the others an offline switch an operator set on
/// it (`POST`, JSON [`OfflineSwitch`]; answered `204`).
pub const OFFLINE_PATH: &str = "/lasti/cluster/offline";

/// The `Cache-Control` directive of a peer request for a blob only if the
/// peer holds it (RFC 9111, 5.2.1.7).
pub const ONLY_IF_CACHED: &str = "only-if-cached";

/// The largest purge answer read from a peer (the digests it removed).
const PURGE_ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// The client for every peer (one pool; peers are plain HTTP).
#[derive(Debug)]
pub struct PeerClient {
    /// This process's instance id, sent as [`ASKER_HEADER`].
    instance: String,
    /// This replica's member name, sent as [`MEMBER_HEADER`].
    me: String,
    client: HttpClient,
    secret: Secret,
    timeout: std::time::Duration,
}

impl PeerClient {
    /// Builds the pooled client.
    pub fn new(
        config: &ClusterConfig,
        instance: String,
        me: String,
    ) -> std::result::Result<PeerClient, String> {
        Ok(PeerClient {
            instance,
            me,
            client: client::build_plain(config.connect_timeout)?,
            secret: config
                .secret
                .clone()
                .ok_or("cluster: the shared secret (secret_file) was not read")?,
            timeout: config.timeout,
        })
    }

    /// `member`'s answer for the blob, from byte `offset` on; the body is
    /// still to be read. `only_stored`: the member serves the blob only if
    /// it holds it whole or reads it from a registry already
    /// (`Cache-Control: only-if-cached`), and answers `404` rather than
    /// fetch it.
    pub async fn get_blob(
        &self,
        member: &str,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
        only_stored: bool,
    ) -> Result<BlobResponse> {
        let path = format!("{repo}/blobs/{digest}");
        let mut headers = Vec::new();
        if offset > 0 {
            headers.push((header::RANGE, format!("bytes={offset}-")));
        }
        if only_stored {
            headers.push((header::CACHE_CONTROL, ONLY_IF_CACHED.to_string()));
        }
        let response = self.get(member, upstream, &path, headers).await?;
        match response.status() {
            // A 200 to a resume is a peer that ignored the range, not a
            // dead one.
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                BlobResponse::from_response(response, offset).map_err(|e| refused(member, e))
            }
            StatusCode::NOT_FOUND => Err(Error::BlobUnknown),
            status => Err(answered(member, status)),
        }
    }

    /// `member`'s answer for a manifest by tag or digest, read whole (at
    /// most `limit` bytes), still to be verified by the asker.
    pub async fn get_manifest(
        &self,
        member: &str,
        upstream: &str,
        repo: &RepoName,
        reference: &str,
        limit: u64,
    ) -> Result<FetchedManifest> {
        let path = format!("{repo}/manifests/{reference}");
        let accept = vec![(header::ACCEPT, DEFAULT_MANIFEST_ACCEPT.to_string())];
        let response = self.get(member, upstream, &path, accept).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(Error::ManifestUnknown),
            status => return Err(answered(member, status)),
        }
        let text = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = text(header::CONTENT_TYPE);
        let digest = text(HeaderName::from_static("docker-content-digest"))
            .and_then(|d| Digest::parse(&d).ok());
        let bytes = client::read_small(response.into_body(), limit as usize, self.timeout)
            .await
            .map_err(|e| down(member, format!("manifest body: {e}")))?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Tells `member` that this replica is up (after a start): `204`.
    pub async fn hello(&self, member: &str) -> Result<()> {
        let response = self.post(member, HELLO_PATH, None).await?;
        expect(member, &response, StatusCode::NO_CONTENT)
    }

    /// Hands a back-fill offer to `member`, the owner of its digest, whose
    /// queue takes it (`202 Accepted`).
    pub async fn offer(&self, member: &str, offer: &Offer) -> Result<()> {
        let json = serde_json::to_vec(offer).expect("an offer serializes");
        let response = self.post(member, OFFER_PATH, Some(json)).await?;
        expect(member, &response, StatusCode::ACCEPTED)
    }

    /// Asks `member` to purge as this replica did; what it removed, or
    /// `None` when it held nothing of it.
    pub async fn purge(&self, member: &str, purge: &PeerPurge) -> Result<Option<Purged>> {
        let json = serde_json::to_vec(purge).expect("a purge serializes");
        let response = self.post(member, PURGE_PATH, Some(json)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        expect(member, &response, StatusCode::OK)?;
        let body = http_body_util::Limited::new(response.into_body(), PURGE_ANSWER_LIMIT);
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| refused(member, format!("the purge answer broke off: {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| refused(member, format!("the purge answer is not one: {e}")))
    }

    /// Sets `switch` on `member` as an operator set it here.
    pub async fn switch_offline(&self, member: &str, switch: &OfflineSwitch) -> Result<()> {
        let json = serde_json::to_vec(switch).expect("a switch serializes");
        let response = self.post(member, OFFLINE_PATH, Some(json)).await?;
        expect(member, &response, StatusCode::NO_CONTENT)
    }

    /// One `POST` to `path` on `member`'s peer listener, with a JSON body
    /// or none; the response's head.
    async fn post(
        &self,
        member: &str,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let uri = format!("http://{member}{path}");
        let (headers, body) = match json {
            Some(json) => (
                vec![(header::CONTENT_TYPE, "application/json".to_string())],
                body::full(json),
            ),
            None => (Vec::new(), body::empty()),
        };
        self.send(member, Method::POST, uri, headers, body).await
    }

    /// One `GET` of `/v2/<path>?ns=<upstream>` on `member`'s peer listener;
    /// the response's head.
    async fn get(
        &self,
        member: &str,
        upstream: &str,
        path: &str,
        headers: Vec<(HeaderName, String)>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let ns = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", upstream)
            .finish();
        let uri = format!("http://{member}/v2/{path}?{ns}");
        self.send(member, Method::GET, uri, headers, body::empty())
            .await
    }

    /// One request to `member`'s peer listener, with the secret and this
    /// process's id; the response's head.
    async fn send(
        &self,
        member: &str,
        method: Method,
        uri: String,
        headers: Vec<(HeaderName, String)>,
        body: crate::body::Body,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let value =
            HeaderValue::from_str(&format!("Bearer {}", self.secret.expose())).map_err(|_| {
                refused(
                    member,
                    "the cluster secret is not a valid header value".into(),
                )
            })?;
        let request = request
            .header(header::AUTHORIZATION, value)
            .header(ASKER_HEADER, self.instance.as_str())
            .header(MEMBER_HEADER, self.me.as_str())
            .body(body)
            .map_err(|e| refused(member, e.to_string()))?;
        match client::send(&self.client, request, self.timeout).await {
            Ok(response) if response.status() == StatusCode::LOOP_DETECTED => {
                Err(Error::PeerIsSelf {
                    member: member.to_string(),
                })
            }
            // Left out like an unreachable member: it is going away.
            Ok(response) if response.status() == StatusCode::MISDIRECTED_REQUEST => {
                Err(down(member, "shutting down".into()))
            }
            Ok(response) => Ok(response),
            Err(SendError::Timeout) => Err(down(member, "no response headers in time".into())),
            Err(SendError::Failed(message)) => Err(down(member, message)),
        }
    }
}

/// A member that could not be reached, timed out, or broke off.
fn down(member: &str, message: String) -> Error {
    Error::PeerDown {
        member: member.to_string(),
        message,
    }
}

/// A member that answered, but not with what was asked.
fn refused(member: &str, message: String) -> Error {
    Error::PeerRefused {
        member: member.to_string(),
        message,
    }
}

fn answered(member: &str, status: StatusCode) -> Error {
    refused(member, format!("answered {status}"))
}

/// `Ok` when `member` answered `wanted`.
fn expect<B>(member: &str, response: &http::Response<B>, wanted: StatusCode) -> Result<()> {
    match response.status() {
        status if status == wanted => Ok(()),
        status => Err(answered(member, status)),
    }
}
