//! Several replicas as one cache: which replica fetches a blob from the
//! upstream, so that a burst of cold pulls spread over all replicas costs
//! one upstream fetch per blob (see docs/design.md, "Several replicas").
//!
//! A replica that misses a blob it does not own asks the owner on its peer
//! listener; the owner runs the one fill (from its disk, the bucket, the
//! project or the upstream) and streams it, and the asker tees it into its
//! own disk. Requests on the peer listener never ask a peer in turn, so two
//! replicas whose member lists differ for a moment cannot send a blob
//! round in circles.

pub mod members;
pub mod peer_client;
pub mod rendezvous;

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::config::ClusterConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::Digest;
use members::Members;
use peer_client::PeerClient;

/// This replica's view of the cluster and its way to the others.
#[derive(Debug)]
pub struct Cluster {
    members: Arc<Members>,
    client: PeerClient,
    secret: Option<[u8; 32]>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// Joins the cluster the configuration describes (`None` when off);
    /// with `peers_dns`, follows the Service's addresses in the background
    /// for as long as the cluster lives.
    pub fn start(
        config: &ClusterConfig,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Option<Arc<Cluster>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let pod_ip = std::env::var("POD_IP").ok();
        let me = config.advertised(pod_ip.as_deref())?;
        let members = Arc::new(Members::new(&me, &config.peers));
        if let Some(name) = &config.peers_dns {
            let follow =
                members::follow_dns(Arc::downgrade(&members), name.clone(), config.refresh);
            tokio::spawn(follow);
        }
        tracing::info!(
            me = members.me(),
            members = members.all().len(),
            "cluster on"
        );
        Ok(Some(Arc::new(Cluster {
            members,
            client: PeerClient::new(config)?,
            secret: config.secret.as_ref().map(|s| hash(s.expose().as_bytes())),
            metrics,
        })))
    }

    /// The member to ask for `digest`, or `None` when this replica owns it.
    pub fn owner(&self, digest: &Digest) -> Option<String> {
        self.members.owner(digest)
    }

    /// The replicas as this one sees them.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The client that asks the other replicas for blobs.
    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    /// Counts a blob that could not be had from `member`. A member that
    /// failed (not one that said the blob does not exist or that it is busy)
    /// is left out for a while.
    pub fn failed(&self, member: &str, err: &Error) {
        self.metrics.peer_fetch("failed");
        match err {
            Error::BlobUnknown | Error::RateLimited { .. } => {
                tracing::debug!(member, error = %err, "the owner replica did not serve a blob")
            }
            _ => {
                tracing::warn!(member, error = %err, "peer fetch failed; leaving the peer out for a while");
                self.members.failed(member);
            }
        }
    }

    /// Whether a request on the peer listener may be answered: it carries
    /// the shared secret as a bearer token, or no secret is configured.
    pub fn admits(&self, authorization: Option<&http::HeaderValue>) -> bool {
        let Some(secret) = &self.secret else {
            return true;
        };
        let offered = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared as hashes: equal-length, and no early exit on the secret itself.
        offered.is_some_and(|token| hash(token.as_bytes()) == *secret)
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
