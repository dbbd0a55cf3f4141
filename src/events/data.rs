//! The `data` of each kind of event: field names are the contract with
//! whoever reads the audit trail (docs/events.md lists them).

use std::net::IpAddr;

use serde::Serialize;

/// Who made a request: the address it came from, and the user name its
/// credential carried, when it carried one with a name (Basic). Never the
/// credential.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// The peer address of the connection (a front proxy's, behind one).
    pub address: IpAddr,
    /// The user name of a Basic credential (checked by the front door, or
    /// passed on to an upstream that takes clients' own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Client {
    /// A client known by its address only (the admin port's: the admin
    /// token carries no name).
    pub fn address(address: IpAddr) -> Client {
        Client {
            address,
            user: None,
        }
    }
}

/// `lasti.manifest.pulled`: a manifest served.
#[derive(Debug, Serialize)]
pub struct Pulled<'a> {
    /// Who asked.
    pub client: &'a Client,
    /// `GET`, or `HEAD` (a client asking for the digest only).
    pub method: &'a str,
    /// The upstream, as configured.
    pub upstream: &'a str,
    /// The repository, as the upstream names it.
    pub repository: &'a str,
    /// The tag, when the manifest was asked for by tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<&'a str>,
    /// The manifest's digest.
    pub digest: &'a str,
    /// The manifest's media type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<&'a str>,
    /// Where it came from: `cache`, `bucket`, `peer`, `project`, `upstream`.
    pub tier: &'a str,
    /// How it was answered: `hit`, `revalidated`, `stale`, `miss`,
    /// `coalesced`, `passthrough`.
    pub outcome: &'a str,
    /// Bytes sent (none for `HEAD`).
    pub bytes: u64,
    /// Whether the whole answer went out.
    pub complete: bool,
}

/// `lasti.pull.refused`: a client told no.
#[derive(Debug, Serialize)]
pub struct Refused<'a> {
    /// Who asked.
    pub client: &'a Client,
    /// The request method.
    pub method: &'a str,
    /// The request path (never its query).
    pub path: &'a str,
    /// The upstream, when the name was routed to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// The repository, as the upstream names it, when routed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<&'a str>,
    /// The HTTP status answered: 401 or 403.
    pub status: u16,
    /// The registry error code answered (`DENIED`, `UNAUTHORIZED`).
    pub code: &'a str,
    /// Why, as the client was told.
    pub reason: &'a str,
}

/// `lasti.backfill.done` and `lasti.backfill.failed`.
#[derive(Debug, Serialize)]
pub struct BackfillOutcome<'a> {
    /// The upstream the image was pulled from.
    pub upstream: &'a str,
    /// The repository, as the upstream names it.
    pub repository: &'a str,
    /// The tag pushed.
    pub tag: &'a str,
    /// The manifest (or index) pushed.
    pub digest: &'a str,
    /// `<project>/<image stream>` in the back-fill registry.
    pub target: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// `lasti.cache.purged`.
#[derive(Debug, Serialize)]
pub struct Purged<'a, T: Serialize> {
    /// Who asked (the admin port's client; the admin token carries no name).
    pub client: &'a Client,
    /// The image as named in the request.
    pub image: &'a str,
    /// `tag`, `manifest` or `image`.
    pub scope: &'a str,
    /// What was removed, as the admin call answered.
    pub removed: &'a T,
}

/// `lasti.upstream.offline`.
#[derive(Debug, Serialize)]
pub struct OfflineSwitched<'a> {
    /// Who asked.
    pub client: &'a Client,
    /// The upstream switched; absent for the whole process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// Offline (`true`) or back online.
    pub offline: bool,
}
