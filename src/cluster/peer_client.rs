//! Asking the owner of a blob for it: `GET /v2/<repo>/blobs/<digest>?ns=<upstream>`
//! on its peer listener, from byte `offset` on, with the shared secret.
//! No retries and no redirects: a peer that fails is left out and the
//! asker goes on to the next source at once.

use http::{header, HeaderValue, Method, Request, StatusCode};
use url::Url;

use crate::body;
use crate::config::{ClusterConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::oci::{Digest, RepoName};
use crate::secret::Secret;
use crate::upstream::client::{self, HttpClient, SendError};
use crate::upstream::BlobResponse;

/// The client for every peer (one pool; peers are plain HTTP).
#[derive(Debug)]
pub struct PeerClient {
    client: HttpClient,
    secret: Option<Secret>,
    timeout: std::time::Duration,
}

impl PeerClient {
    /// Builds the pooled client.
    pub fn new(config: &ClusterConfig) -> std::result::Result<PeerClient, String> {
        let mut settings = UpstreamConfig::new(
            "peers",
            Url::parse("http://127.0.0.1/").expect("a valid URL"),
        );
        settings.connect_timeout = config.connect_timeout;
        Ok(PeerClient {
            client: client::build(&settings)?,
            secret: config.secret.clone(),
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
        let failed = |message: String| Error::UpstreamUnavailable {
            upstream: format!("peer {member}"),
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
        if let Some(secret) = &self.secret {
            let value = HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
                .map_err(|_| failed("the cluster secret is not a valid header value".into()))?;
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(body::empty())
            .map_err(|e| failed(e.to_string()))?;
        let response = match client::send(&self.client, request, self.timeout).await {
            Ok(response) => response,
            Err(SendError::Timeout) => {
                return Err(Error::UpstreamTimeout {
                    upstream: format!("peer {member}"),
                    message: "no response headers in time".into(),
                })
            }
            Err(SendError::Failed(message)) => return Err(failed(message)),
        };
        match response.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                BlobResponse::from_response(response, offset).map_err(failed)
            }
            StatusCode::NOT_FOUND => Err(Error::BlobUnknown),
            StatusCode::TOO_MANY_REQUESTS => Err(Error::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
            }),
            status => Err(failed(format!("answered {status}"))),
        }
    }
}
