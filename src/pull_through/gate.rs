//! Who may see what of an upstream that takes clients' own credentials
//! (`credentials = "client"`): the upstream decides, per client and per
//! repository, and lasti remembers its answers for a short while.
//!
//! - A repository is public when an anonymous request may pull from it;
//!   that is asked once per `client_verdict_ttl`, and then everyone is
//!   served without a check of their own. Only a 2xx makes a yes: a 404
//!   makes no verdict at all, as a registry may hide a private repository
//!   behind one.
//! - Otherwise a client is served only after the upstream said yes to its
//!   credential for that repository (a `HEAD` of what it asked for, made
//!   with its credential), remembered per (fingerprint, repository); a
//!   no is remembered for at most [`REFUSAL_TTL`].
//! - The cache is content-addressed, so a digest alone would open any
//!   repository's blob: a blob or manifest is served under a repository
//!   only when lasti saw it there (fetched for it, or named by one of its
//!   manifests) or the upstream confirms it for the client's identity.
//!
//! Concurrent checks of one key are one upstream request (moka's entry
//! initialisation is single-flight); a failed check (the upstream cannot be
//! reached) is not remembered, and refuses the request: private content is
//! never served without a fresh yes. A repository found public stays public
//! through an outage of its upstream (for a day at most), so cached public
//! images are served as they are from any other upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::manifests::unreachable;
use crate::error::{Error, Result};
use crate::oci::manifest::{ImageIndex, ImageManifest};
use crate::oci::media_type::DEFAULT_MANIFEST_ACCEPT;
use crate::oci::{Digest, RepoName};
use crate::upstream::caller::Fingerprint;
use crate::upstream::{Caller, Upstream};

/// How long the upstream's no is remembered at most, so a fixed password
/// or a granted permission works soon after.
pub(super) const REFUSAL_TTL: Duration = Duration::from_secs(30);
/// Verdicts kept at most (per process): far more (client, repository)
/// pairs than a cluster pulls in a TTL, and a few MiB.
const VERDICTS: u64 = 100_000;
/// How long a repository found public stays public while its upstream
/// cannot be asked: public content keeps being served through an outage
/// (private content never is without a fresh verdict).
const ONCE_PUBLIC_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// (repository, digest) pairs kept at most; one forgotten is asked again.
const MEMBERS: u64 = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VerdictKey {
    /// `None`: may an anonymous client pull (is it public)?
    who: Option<Fingerprint>,
    upstream: String,
    /// `None`: does the upstream take the credential at all (a login)?
    repo: Option<RepoName>,
}

#[derive(Debug, Clone, Copy)]
struct Verdict {
    allowed: bool,
    ttl: Duration,
}

struct ByVerdict;

impl Expiry<VerdictKey, Verdict> for ByVerdict {
    fn expire_after_create(&self, _: &VerdictKey, v: &Verdict, _: Instant) -> Option<Duration> {
        Some(match v.allowed {
            true => v.ttl,
            false => v.ttl.min(REFUSAL_TTL),
        })
    }
}

/// What a check asks the upstream about: the thing the client asked for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Probe<'a> {
    /// A manifest, by tag or digest.
    Manifest(&'a str),
    /// A blob.
    Blob(&'a Digest),
}

/// What a client may do with one repository.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Whose credentials fetch for it: lasti's for a public repository
    /// (and for upstreams that take no client credentials), else the
    /// client's.
    pub caller: Caller,
    /// Anyone may pull it: it may be fetched through the cluster and
    /// back-filled.
    pub public: bool,
    /// Its content is kept apart by repository (`credentials = "client"`).
    pub guarded: bool,
}

impl Grant {
    /// An upstream that takes no client credentials: today's rules.
    pub fn open() -> Grant {
        Grant {
            caller: Caller::lasti(),
            public: true,
            guarded: false,
        }
    }
}

/// The verdicts and the (repository, digest) pairs seen.
pub(super) struct Gate {
    verdicts: moka::future::Cache<VerdictKey, Verdict>,
    members: moka::sync::Cache<(String, RepoName, Digest), ()>,
    /// Repositories an anonymous client could pull when last asked, for
    /// [`ONCE_PUBLIC_TTL`]: served as public while the upstream is down.
    once_public: moka::sync::Cache<(String, RepoName), ()>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("verdicts", &self.verdicts.entry_count())
            .field("members", &self.members.entry_count())
            .finish()
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            verdicts: moka::future::Cache::builder()
                .max_capacity(VERDICTS)
                .expire_after(ByVerdict)
                .build(),
            members: moka::sync::Cache::builder().max_capacity(MEMBERS).build(),
            once_public: moka::sync::Cache::builder()
                .max_capacity(VERDICTS)
                .time_to_live(ONCE_PUBLIC_TTL)
                .build(),
        }
    }
}

impl Gate {
    /// Whether `caller` may pull from `repo`, and as whom to fetch for it.
    /// Free for an upstream that takes no client credentials.
    pub(super) async fn admit(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        caller: &Caller,
        probe: Probe<'_>,
    ) -> Result<Grant> {
        if !upstream.takes_client_credentials() {
            return Ok(Grant::open());
        }
        let anonymous = Caller::lasti();
        let asked = self.verdict(upstream, repo, &anonymous, probe).await;
        let once_public = || (upstream.name().to_string(), repo.clone());
        let public = match &asked {
            Ok((public, _)) => *public,
            // Public when last asked: the upstream's outage keeps it so.
            Err(err) if unreachable(err) => self.once_public.contains_key(&once_public()),
            Err(_) => false,
        };
        if public {
            if let Ok((_, true)) = asked {
                self.once_public.insert(once_public(), ());
            }
            return Ok(Grant {
                caller: anonymous,
                public: true,
                guarded: true,
            });
        }
        let Some(credential) = caller.credential().filter(|c| upstream.is_for(c)) else {
            // A 404 to an anonymous probe is the answer; so is an outage.
            asked?;
            return Err(refused(upstream, repo, caller));
        };
        let caller = Caller::client(Arc::clone(credential));
        match self.verdict(upstream, repo, &caller, probe).await?.0 {
            true => Ok(Grant {
                caller,
                public: false,
                guarded: true,
            }),
            false => Err(refused(upstream, repo, &caller)),
        }
    }

    /// The upstream's verdict on `caller` for `repo`, asked (once for all
    /// concurrent askers) when none is kept. Only a yes or a no is kept:
    /// a probe that found nothing (404) makes no verdict (a registry may
    /// hide a repository behind a 404) and is the client's answer; a
    /// request that joined another's check whose probe found nothing asks
    /// its own. What a yes's probe found is remembered as seen in `repo`.
    async fn verdict(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        caller: &Caller,
        probe: Probe<'_>,
    ) -> Result<(bool, bool)> {
        let key = VerdictKey {
            who: caller.credential().map(|c| c.fingerprint()),
            upstream: upstream.name().to_string(),
            repo: Some(repo.clone()),
        };
        if let Some(kept) = self.verdicts.get(&key).await {
            return Ok((kept.allowed, false));
        }
        let ttl = upstream.client_verdict_ttl();
        let ran = std::sync::atomic::AtomicBool::new(false);
        let entry = self
            .verdicts
            .entry(key.clone())
            .or_try_insert_with(async {
                ran.store(true, std::sync::atomic::Ordering::Relaxed);
                let allowed = check(upstream, repo, caller, probe).await?;
                Ok::<_, Error>(Verdict { allowed, ttl })
            })
            .await;
        let allowed = match entry {
            Ok(entry) => {
                if entry.is_fresh() && entry.value().allowed {
                    self.saw_probed(upstream, repo, probe);
                }
                return Ok((entry.value().allowed, entry.is_fresh()));
            }
            Err(err) if ran.into_inner() || !is_absent(&err) => return Err((*err).clone()),
            Err(_) => {
                let allowed = check(upstream, repo, caller, probe).await?;
                self.verdicts.insert(key, Verdict { allowed, ttl }).await;
                if allowed {
                    self.saw_probed(upstream, repo, probe);
                }
                allowed
            }
        };
        Ok((allowed, true))
    }

    /// Whether the upstream takes `caller`'s credential at all (`GET /v2/`
    /// with it), remembered like a verdict on a repository.
    pub(super) async fn login(&self, upstream: &Arc<Upstream>, caller: &Caller) -> Result<bool> {
        let key = VerdictKey {
            who: caller.credential().map(|c| c.fingerprint()),
            upstream: upstream.name().to_string(),
            repo: None,
        };
        let ttl = upstream.client_verdict_ttl();
        let entry = self
            .verdicts
            .entry(key)
            .or_try_insert_with(async {
                let allowed = upstream.ping(caller).await?;
                Ok::<_, Error>(Verdict { allowed, ttl })
            })
            .await
            .map_err(|err: Arc<Error>| (*err).clone())?;
        Ok(entry.value().allowed)
    }

    /// Remembers what a probe that was answered 2xx asked for.
    fn saw_probed(&self, upstream: &Upstream, repo: &RepoName, probe: Probe<'_>) {
        match probe {
            Probe::Blob(digest) => self.saw(upstream, repo, [digest]),
            Probe::Manifest(reference) => {
                if let Ok(digest) = Digest::parse(reference) {
                    self.saw(upstream, repo, [&digest]);
                }
            }
        }
    }

    /// Remembers that these digests are in `repo`.
    pub(super) fn saw<'d>(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digests: impl IntoIterator<Item = &'d Digest>,
    ) {
        for digest in digests {
            let key = (upstream.name().to_string(), repo.clone(), digest.clone());
            self.members.insert(key, ());
        }
    }

    /// Remembers a manifest served under `repo` and what it names: its
    /// config and layers, or an index's manifests (a registry accepts a
    /// manifest only when the repository holds what it names).
    pub(super) fn saw_manifest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        bytes: &[u8],
    ) {
        self.saw(upstream, repo, [digest]);
        if let Some(manifest) = ImageManifest::parse(bytes) {
            self.saw(upstream, repo, manifest.blobs().map(|d| &d.digest));
        } else if let Some(index) = ImageIndex::parse(bytes) {
            self.saw(upstream, repo, index.manifests.iter().map(|d| &d.digest));
        }
    }

    /// Whether `digest` may be served under `repo` to whom `grant` is for:
    /// seen there, or confirmed now by the upstream for the same identity
    /// (and then remembered). `Ok(false)` when the upstream does not have
    /// it there.
    pub(super) async fn holds(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        grant: &Grant,
        digest: &Digest,
        manifest: bool,
    ) -> Result<bool> {
        if !grant.guarded {
            return Ok(true);
        }
        let key = (upstream.name().to_string(), repo.clone(), digest.clone());
        if self.members.contains_key(&key) {
            return Ok(true);
        }
        let probe = match manifest {
            true => Probe::Manifest(digest.as_str()),
            false => Probe::Blob(digest),
        };
        match head(upstream, repo, &grant.caller, probe).await {
            Ok(()) => {
                self.members.insert(key, ());
                Ok(true)
            }
            Err(err) if is_absent(&err) => Ok(false),
            Err(Error::UpstreamDenied { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// A `HEAD` of what `probe` names in `repo`, as `caller`.
async fn head(
    upstream: &Upstream,
    repo: &RepoName,
    caller: &Caller,
    probe: Probe<'_>,
) -> Result<()> {
    match probe {
        Probe::Manifest(reference) => upstream
            .head_manifest(caller, repo, reference, DEFAULT_MANIFEST_ACCEPT)
            .await
            .map(drop),
        Probe::Blob(digest) => upstream.head_blob(caller, repo, digest).await.map(drop),
    }
}

/// One request to the upstream, as `caller`, for what the client asked:
/// `true` when it was served (2xx), `false` when refused (401, 403, or the
/// token realm refusing the credential). A 404 is the error it is.
async fn check(
    upstream: &Upstream,
    repo: &RepoName,
    caller: &Caller,
    probe: Probe<'_>,
) -> Result<bool> {
    let verdict = match head(upstream, repo, caller, probe).await {
        Ok(()) => Ok(true),
        Err(Error::UpstreamDenied { .. }) => Ok(false),
        Err(err) => Err(err),
    };
    let label = match &verdict {
        Ok(true) => "allowed",
        Ok(false) => "refused",
        Err(err) if is_absent(err) => "absent",
        Err(_) => "failed",
    };
    upstream.access_checked(caller.credential().is_some(), label);
    verdict
}

/// A 404 of some kind.
fn is_absent(err: &Error) -> bool {
    matches!(
        err,
        Error::BlobUnknown | Error::ManifestUnknown | Error::NameUnknown
    )
}

/// The answer to a client the upstream would not serve: 401, so that
/// docker, podman and containerd ask for (other) credentials.
fn refused(upstream: &Upstream, repo: &RepoName, caller: &Caller) -> Error {
    let message = match caller.credential() {
        None => format!(
            "{repo} on {} is not public: log in to lasti with credentials for {}",
            upstream.name(),
            upstream.name()
        ),
        Some(_) => format!(
            "{} does not let these credentials pull {repo}",
            upstream.name()
        ),
    };
    Error::ClientRefused(message)
}
