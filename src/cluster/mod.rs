//! Several replicas as one cache: which replica fetches a blob from the
//! upstream, so that a burst of cold pulls spread over all replicas costs
//! one upstream fetch per blob (see docs/design.md, "Several replicas").
//!
//! A replica that misses a blob it does not own asks the owner on its peer
//! listener; the owner runs the one fill (from its disk, the bucket, the
//! project or the upstream) and streams it, and the asker tees it into its
//! own disk. Requests on the peer listener never ask a peer in turn, so two
//! replicas whose member lists differ for a moment cannot send a blob
//! round in circles. When the owner cannot serve (it went away, or it is
//! shutting down and turns away what it would have to fetch), the asker
//! tries the next member in rank, which every asker agrees on, and only
//! then fetches by itself.

pub mod members;
pub mod peer_client;
pub mod rendezvous;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::config::{member_name, ClusterConfig};
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
    secret: [u8; 32],
    /// A random id of this process, which its peer requests carry.
    instance: String,
    /// Places for back-fill offers being forwarded to their owners.
    forwards: Arc<tokio::sync::Semaphore>,
    /// Set on shutdown: peer requests for what this replica neither holds
    /// nor is fetching are turned away, so askers go to the next in rank.
    leaving: AtomicBool,
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
        let secret = config
            .secret
            .as_ref()
            .ok_or("cluster: the shared secret (secret_file) was not read")?;
        let pod_ip = std::env::var("POD_IP").ok();
        let me = config.advertised(pod_ip.as_deref())?;
        if !config.peers.is_empty() && !config.peers.iter().any(|p| member_name(p) == me) {
            return Err(format!(
                "cluster: peers does not list this replica as {me} (its advertise \
                 address): list every replica, this one included, by the address \
                 the others dial"
            ));
        }
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
        let instance = hex::encode(rand::random::<[u8; 16]>());
        let client = PeerClient::new(config, instance.clone(), members.me().to_string())?;
        Ok(Some(Arc::new(Cluster {
            members,
            client,
            instance,
            forwards: Arc::new(tokio::sync::Semaphore::new(FORWARDS)),
            leaving: AtomicBool::new(false),
            secret: hash(secret.expose().as_bytes()),
            metrics,
        })))
    }

    /// The member to ask for `digest`, or `None` when this replica owns it.
    pub fn owner(&self, digest: &Digest) -> Option<String> {
        self.members.owner(digest)
    }

    /// The owner of `digest` and the member after it in rank, those of
    /// them that are not this replica: a fill asks the second when the
    /// first cannot serve (it went away, it is shutting down), so askers
    /// still fetch once for the cluster while a replica restarts.
    pub fn owners(&self, digest: &Digest) -> Vec<String> {
        self.members.owners(digest, PEERS_ASKED)
    }

    /// The member to ask, when this replica owns `digest`, for a copy it
    /// already holds (and nothing more): the next in rank, which owned the
    /// digest while this replica was away or before it joined. A rolling
    /// restart or a new replica then costs no second upstream fetch of what
    /// the cluster has.
    pub fn successor(&self, digest: &Digest) -> Option<String> {
        self.members.successor(digest)
    }

    /// [`Cluster::successor`] for a fill another replica asked for: none
    /// when the successor is that replica (by its
    /// [`peer_client::MEMBER_HEADER`]), which is reading from this one and
    /// so has nothing of its own to give.
    pub fn successor_for(&self, digest: &Digest, asker: Option<&str>) -> Option<String> {
        let successor = self.members.successor(digest)?;
        match asker {
            Some(asker) if crate::config::member_name(asker) == successor => None,
            _ => Some(successor),
        }
    }

    /// From now on, turns away peer requests for blobs this replica would
    /// have to fetch: it is shutting down, and a fill it started now would
    /// be cut, or fetched again by the next owner.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Relaxed);
    }

    /// Whether [`Cluster::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// The replicas as this one sees them.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The client that asks the other replicas for blobs.
    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    /// Counts a blob that could not be had from `member`. Only a member
    /// that could not be reached, or broke off, is left out for a while; one
    /// that answered (the blob is unknown, it is busy, it failed) stays the
    /// owner of its digests. A name that turned out to be this replica's
    /// own is taken as this replica from then on.
    pub fn failed(&self, member: &str, err: &Error) {
        match err {
            Error::PeerIsSelf { .. } => {
                self.metrics.peer_fetch("self");
                tracing::warn!(
                    member,
                    "the member list names this replica twice; taking {member} as this one"
                );
                self.members.is_me(member);
            }
            Error::PeerDown { .. } => {
                self.metrics.peer_fetch("failed");
                tracing::warn!(member, error = %err, "peer fetch failed; leaving the peer out for a while");
                self.members.failed(member);
            }
            _ => {
                self.metrics.peer_fetch("refused");
                tracing::debug!(member, error = %err, "the owner replica did not serve a blob");
            }
        }
    }

    /// Notes a request on the peer listener from `member` (its
    /// [`peer_client::MEMBER_HEADER`]): it is up, whatever this replica
    /// noted before.
    pub fn heard_from(&self, member: Option<&http::HeaderValue>) {
        if let Some(member) = member.and_then(|m| m.to_str().ok()) {
            self.members.heard_from(member);
        }
    }

    /// Greets every other member, so that those that noted this replica
    /// down (it restarted, on the same address) take it back at once.
    /// Call once the peer listener serves. Failures are only logged: a
    /// member that is down itself has nothing to take back.
    pub async fn greet(&self) {
        let members = self.members.all();
        let others = members.iter().filter(|m| *m != self.members.me());
        let greetings = others.map(|member| async move {
            if let Err(e) = self.client.hello(member).await {
                tracing::debug!(member, error = %e, "cannot greet a member");
            }
        });
        futures_util::future::join_all(greetings).await;
    }

    /// A place to forward one back-fill offer, or `None` when [`FORWARDS`]
    /// are in flight.
    pub fn forward_place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.forwards).try_acquire_owned().ok()
    }

    /// Counts something had from `member`.
    pub fn fetched_from(&self, member: &str) {
        tracing::debug!(member, "fetched from the owner replica");
        self.metrics.peer_fetch("done");
    }

    /// Whether a peer request came from this very process (its
    /// [`peer_client::ASKER_HEADER`] is this instance's id).
    pub fn asked_by_me(&self, asker: Option<&http::HeaderValue>) -> bool {
        asker.is_some_and(|id| id.as_bytes() == self.instance.as_bytes())
    }

    /// Whether a request on the peer listener may be answered: it carries
    /// the shared secret as a bearer token.
    pub fn admits(&self, authorization: Option<&http::HeaderValue>) -> bool {
        let offered = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared as hashes: equal-length, and no early exit on the secret itself.
        offered.is_some_and(|token| hash(token.as_bytes()) == self.secret)
    }
}

/// Members a fill asks for a blob before fetching it itself: the owner
/// and the next in rank. More would make a sick network cost a fill one
/// timeout per member.
const PEERS_ASKED: usize = 2;

/// Back-fill offers forwarded at once; past it an offer stays with the
/// replica that served the image.
const FORWARDS: usize = 64;

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
