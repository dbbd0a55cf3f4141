//! lasti: a pull-through caching proxy for container registries.
//!
//! A request travels through these modules, in order:
//!
//! - [`access`]: the front door: who may pull (htpasswd, tokens, delegation
//!   to the Rahti registry's login) and per-client rate limits.
//! - [`server`]: the listener (HTTP/1.1 and HTTP/2, TLS), the hand-written router
//!   of OCI paths, response building, the access log, connection timeouts
//!   and limits (idle, send, HTTP/2 floods, the open-file budget), graceful
//!   shutdown.
//! - [`pull_through`]: the decisions: hit or miss, tag TTL and revalidation,
//!   stale-if-error, single-flight fetches.
//! - [`upstream`]: registry clients (hyper + rustls), credentials and the
//!   Bearer token flow, redirects, retries, routing among upstreams.
//! - [`cache`]: the verified content-addressed store on disk, manifests in
//!   memory, tag records in redb, LRU eviction, and the fills that stream a
//!   blob to many clients while writing it once.
//! - [`oci`]: pure protocol types (names, references, digests, ranges,
//!   challenges, media types, the error body), validated at the edge.
//!
//! - [`backfill`]: the durable queue that pushes every pulled image into the
//!   Rahti project's registry, and the image stream naming rule.
//! - [`bucket`]: the object store (S3) replicas share, behind the local
//!   disk: verified blobs published after their fill, read on a local miss.
//! - [`cluster`]: several replicas as one cache: which one owns (fetches)
//!   a blob.
//! - [`warmer`]: the warm list and `POST /admin/warm`, pulling images into
//!   the cache in the background.
//! - [`signature`]: cosign signatures (keys, the `.sig` artifact, the
//!   simple-signing payload) and whether one is valid for a manifest.
//!
//! Around them: [`config`] (TOML + flags, validated), [`error`] (one error
//! type that knows its origin and whether to retry), [`body`] (the one
//! response body type), [`secret`] (redacted credentials), [`metrics`]
//! (Prometheus), [`telemetry`], [`allocator`] (glibc's thresholds, set for
//! fills), and the operator commands in [`tools`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod allocator;
pub mod backfill;
pub mod body;
pub mod bucket;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod metrics;
pub mod oci;
pub mod pull_through;
pub mod secret;
pub mod server;
pub mod signature;
pub mod telemetry;
pub mod tools;
pub mod upstream;
pub mod warmer;
