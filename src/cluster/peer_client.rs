//! Asking the owner of a blob for it: `GET /v2/<repo>/blobs/<digest>?ns=<upstream>`
//! on its peer listener, from byte `offset` on, with the shared secret.
//! No retries and no redirects: the asker goes on to the next source at
//! once. A peer that cannot be reached is left out for a while; one that
//! answers with anything but the blob (busy, a server error, the whole blob
//! to a resume) is not: it is alive, and owns its digests still.

use http::{header, HeaderValue, Method, Request, StatusCode};
use url::Url;

use crate::body;
use crate::config::{ClusterConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::oci::{Digest, RepoName};
use crate::secret::Secret;
use crate::upstream::client::{self, HttpClient, SendError};
use crate::upstream::BlobResponse;

/// The header a peer request names its asker in: the asking process's
/// instance id, so that a replica that reached itself under another name
/// knows at once.
pub const ASKER_HEADER: &str = "lasti-asker";

/// The client for every peer (one pool; peers are plain HTTP).
#[derive(Debug)]
pub struct PeerClient {
    /// This process's instance id, sent as [`ASKER_HEADER`].
    instance: String,
    client: HttpClient,
    secret: Secret,
    timeout: std::time::Duration,
}

impl PeerClient {
    /// Builds the pooled client.
    pub fn new(
        config: &ClusterConfig,
        instance: String,
    ) -> std::result::Result<PeerClient, String> {
        let mut settings = UpstreamConfig::new(
            "peers",
            Url::parse("http://127.0.0.1/").expect("a valid URL"),
        );
        settings.connect_timeout = config.connect_timeout;
        Ok(PeerClient {
            instance,
            client: client::build(&settings)?,
            secret: config
                .secret
                .clone()
                .ok_or("cluster: the shared secret (secret_file) was not read")?,
            timeout: config.timeout,
        })
    }

    /// `member`'s answer for the blob, from byte `offset` on; the body is
    /// still to be read.
    pub async fn get_blob(
        &self,
        member: &str,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        let down = |message: String| Error::PeerDown {
            member: member.to_string(),
            message,
        };
        let refused = |message: String| Error::PeerRefused {
            member: member.to_string(),
            message,
        };
        let ns = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", upstream)
            .finish();
        let uri = format!("http://{member}/v2/{repo}/blobs/{digest}?{ns}");
        let mut request = Request::builder().method(Method::GET).uri(uri);
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let value = HeaderValue::from_str(&format!("Bearer {}", self.secret.expose()))
            .map_err(|_| refused("the cluster secret is not a valid header value".into()))?;
        request = request
            .header(header::AUTHORIZATION, value)
            .header(ASKER_HEADER, self.instance.as_str());
        let request = request
            .body(body::empty())
            .map_err(|e| refused(e.to_string()))?;
        let response = match client::send(&self.client, request, self.timeout).await {
            Ok(response) => response,
            Err(SendError::Timeout) => return Err(down("no response headers in time".into())),
            Err(SendError::Failed(message)) => return Err(down(message)),
        };
        match response.status() {
            // A 200 to a resume is a peer that ignored the range, not a
            // dead one.
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                BlobResponse::from_response(response, offset).map_err(refused)
            }
            StatusCode::NOT_FOUND => Err(Error::BlobUnknown),
            StatusCode::LOOP_DETECTED => Err(Error::PeerIsSelf {
                member: member.to_string(),
            }),
            status => Err(refused(format!("answered {status}"))),
        }
    }
}
