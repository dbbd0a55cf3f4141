//! Signed images only: a manifest of a repository under a signature
//! policy is served only once a cosign signature by one of the policy's
//! keys is found valid for its digest (see `signature`).
//!
//! The check runs on every manifest answer, hit or miss, by tag or by
//! digest, `GET` or `HEAD`; what it costs is one lookup of a verdict
//! kept in memory. A verdict is made once per digest, repository and key
//! set: the signature's `sha256-<hex>.sig` manifest and its payloads are
//! read through the cache like any other content (asked as the client,
//! so a private image's signature is read with the client's credential,
//! and cached, so `cosign verify` and podman read them through lasti
//! too). A signature found valid stays valid for that digest and key
//! set: such verdicts are kept in the index and survive a restart; a
//! refusal is asked again after [`RECHECK_AFTER`], as a signature may be
//! pushed after its image.
//!
//! An index signed itself covers its platform manifests. An index
//! without any signature is served (it is only a list), but each
//! platform manifest must then be signed itself, and the index is not
//! back-filled. Signature, attestation and SBOM artifacts are served
//! without a signature of their own: they are what signs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::gate::Grant;
use super::manifests::ManifestAnswer;
use super::Proxy;
use crate::error::{Error, Result};
use crate::oci::manifest::ImageIndex;
use crate::oci::media_type::{self, DEFAULT_MANIFEST_ACCEPT};
use crate::oci::{AcceptList, Digest, Reference, RepoName, Tag};
use crate::signature::{self, Policy, Refusal, Signed};
use crate::upstream::{Caller, Upstream};

/// How long a refusal (or an unsigned index) is kept before the upstream
/// is asked for the signature again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(30);

/// Most signatures of one manifest read; a `.sig` with more is read up to
/// here (signatures accumulate with re-signing and key rotation).
const MAX_SIGNATURES: usize = 32;

/// Largest payload read: a simple-signing payload is a few hundred bytes.
const MAX_PAYLOAD: u64 = 64 * 1024;

/// Verdicts kept in memory.
const MAX_VERDICTS: u64 = 200_000;

/// What a policy says of one manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Signed by a key of the policy (of this kind).
    Signed(&'static str),
    /// A platform manifest of a signed index.
    Covered,
    /// A signature, attestation or SBOM artifact.
    Attachment,
    /// An index without signatures: served, its platform manifests
    /// checked one by one.
    UnsignedIndex,
    /// Not to be served.
    Refused(Refusal),
}

/// The key kinds a stored verdict may name.
const KINDS: [&str; 4] = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa"];
const COVERED: &str = "covered";
const ATTACHMENT: &str = "attachment";

impl Verdict {
    /// The metric's label.
    fn label(self) -> &'static str {
        match self {
            Verdict::Signed(_) => "signed",
            Verdict::Covered => COVERED,
            Verdict::Attachment => ATTACHMENT,
            Verdict::UnsignedIndex => "unsigned_index",
            Verdict::Refused(refusal) => refusal.as_str(),
        }
    }

    /// What the index keeps of a verdict that holds for good.
    fn stored(self) -> Option<&'static str> {
        match self {
            Verdict::Signed(kind) => Some(kind),
            Verdict::Covered => Some(COVERED),
            Verdict::Attachment => Some(ATTACHMENT),
            Verdict::UnsignedIndex | Verdict::Refused(_) => None,
        }
    }

    /// A verdict the index kept.
    fn from_stored(stored: &str) -> Option<Verdict> {
        match stored {
            COVERED => Some(Verdict::Covered),
            ATTACHMENT => Some(Verdict::Attachment),
            kind => KINDS
                .iter()
                .find(|k| **k == kind)
                .map(|k| Verdict::Signed(k)),
        }
    }
}

/// The verdicts made, by [`Policy::verdict_key`].
pub(super) struct Verdicts {
    /// Those that hold for good, looked up on every manifest hit under a
    /// rule: a plain map behind a lock costs a hit far less than moka's
    /// bookkeeping. Emptied when full; the index still has them.
    lasting: RwLock<HashMap<String, Verdict>>,
    /// Every verdict for [`RECHECK_AFTER`]: refusals wait here to be
    /// asked again, and concurrent checks of one manifest are one.
    recent: moka::future::Cache<String, Verdict>,
    /// Refused digests already logged.
    told: moka::sync::Cache<String, ()>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            lasting: RwLock::new(HashMap::new()),
            recent: moka::future::Cache::builder()
                .max_capacity(MAX_VERDICTS)
                .time_to_live(RECHECK_AFTER)
                .build(),
            told: moka::sync::Cache::new(10_000),
        }
    }
}

impl Verdicts {
    /// A verdict that holds for good, if one was made.
    fn lasting(&self, key: &str) -> Option<Verdict> {
        let lasting = self.lasting.read().unwrap_or_else(|p| p.into_inner());
        lasting.get(key).copied()
    }

    /// Keeps a verdict that holds for good.
    fn keep(&self, key: String, verdict: Verdict) {
        let mut lasting = self.lasting.write().unwrap_or_else(|p| p.into_inner());
        if lasting.len() >= MAX_VERDICTS as usize {
            lasting.clear();
        }
        lasting.insert(key, verdict);
    }
}

impl std::fmt::Debug for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verdicts")
            .field("recent", &self.recent.entry_count())
            .finish()
    }
}

/// The signatures of a manifest with their payloads, being read; `Err`
/// says why they could not be.
type Reading<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<Vec<(Signed, Bytes)>, String>> + Send + 'a>>;

impl Proxy {
    /// Holds `answer` to the signature policy of `repo`: `Err(Denied)`
    /// when it may not be served; else whether it may be back-filled.
    pub(super) async fn check_signed(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        answer: &ManifestAnswer,
        caller: &Caller,
        grant: &Grant,
    ) -> Result<bool> {
        let Some(policy) = upstream.signature_policy(repo) else {
            return Ok(true);
        };
        if let Reference::Tag(tag) = reference {
            if signature::is_attachment_tag(tag.as_str()) {
                return Ok(true);
            }
        }
        let digest = answer.digest();
        let key = policy.verdict_key(upstream.name(), repo, digest);
        let verdict = match self.verdicts.lasting(&key) {
            Some(verdict) => verdict,
            None => {
                let decided = self.decide(upstream, repo, answer, policy, caller, grant, &key);
                match self
                    .verdicts
                    .recent
                    .try_get_with(key.clone(), decided)
                    .await
                {
                    Ok(verdict) => verdict,
                    Err(why) => {
                        upstream.signature_refused("unverifiable");
                        return Err(Error::Denied(format!(
                            "signature policy {:?}: the signature of {repo}@{digest} could not \
                             be read ({why}); it is not served unverified",
                            policy.name()
                        )));
                    }
                }
            }
        };
        match verdict {
            Verdict::Refused(refusal) => {
                upstream.signature_refused(refusal.as_str());
                Err(Error::Denied(format!(
                    "signature policy {:?}: {repo}@{digest} is refused: {}",
                    policy.name(),
                    refusal.reason()
                )))
            }
            Verdict::UnsignedIndex => Ok(false),
            Verdict::Signed(_) | Verdict::Covered | Verdict::Attachment => Ok(true),
        }
    }

    /// Makes the verdict on `answer` (once for all who ask at once); `Err`
    /// says why the signature could not be read.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        answer: &ManifestAnswer,
        policy: &Policy,
        caller: &Caller,
        grant: &Grant,
        key: &str,
    ) -> std::result::Result<Verdict, String> {
        let kept = self.cache.verdict(key).await.map_err(|e| e.to_string())?;
        if let Some(verdict) = kept.as_deref().and_then(Verdict::from_stored) {
            self.verdicts.keep(key.to_string(), verdict);
            return Ok(verdict);
        }
        let digest = answer.digest();
        let (bytes, media_type) = match answer.bytes() {
            Some(bytes) => (bytes, answer.media_type().to_string()),
            // A `HEAD` answered from a tag record: the manifest itself.
            None => {
                let whole = self
                    .manifest_answer_by_digest(upstream, repo, digest, grant)
                    .await
                    .map_err(|e| e.to_string())?;
                let bytes = whole.bytes().ok_or("the manifest is not held")?;
                (bytes, whole.media_type().to_string())
            }
        };
        let verdict = if signature::is_attachment(&bytes) {
            Verdict::Attachment
        } else {
            let repository = policy.checks_reference().then_some(repo.as_str());
            let check = |signed: &[(Signed, Bytes)]| {
                signature::verify(digest, repository, policy.keys(), signed)
            };
            // The `.sig` tag first (what cosign writes by default); OCI 1.1
            // referrers only when it holds no valid signature.
            let mut signed = self.signatures_of(upstream, repo, digest, caller).await?;
            let mut found = check(&signed);
            if found.is_err() {
                let referred = self
                    .referred_signatures(upstream, repo, digest, caller)
                    .await?;
                if !referred.is_empty() {
                    signed.extend(referred);
                    found = check(&signed);
                }
            }
            match found {
                Ok(kind) => Verdict::Signed(kind),
                Err(Refusal::NoSignature) if media_type::is_index(&media_type) => {
                    Verdict::UnsignedIndex
                }
                Err(refusal) => Verdict::Refused(refusal),
            }
        };
        upstream.signature_verdict(verdict.label());
        let mut lasting: Vec<(String, &'static str)> = verdict
            .stored()
            .map(|stored| (key.to_string(), stored))
            .into_iter()
            .collect();
        if matches!(verdict, Verdict::Signed(_)) && media_type::is_index(&media_type) {
            for child in ImageIndex::parse(&bytes).map_or(Vec::new(), |i| i.manifests) {
                let child_key = policy.verdict_key(upstream.name(), repo, &child.digest);
                self.verdicts.keep(child_key.clone(), Verdict::Covered);
                upstream.signature_verdict(COVERED);
                lasting.push((child_key, COVERED));
            }
        }
        if verdict.stored().is_some() {
            self.verdicts.keep(key.to_string(), verdict);
        }
        if !lasting.is_empty() {
            if let Err(e) = self.cache.put_verdicts(lasting).await {
                tracing::warn!(error = %e, "cannot keep signature verdicts; they are made again after a restart");
            }
        }
        if let Verdict::Refused(refusal) = verdict {
            let told = format!("{} {repo}@{digest}", policy.name());
            if !self.verdicts.told.contains_key(&told) {
                self.verdicts.told.insert(told, ());
                tracing::warn!(
                    upstream = upstream.name(),
                    %repo,
                    %digest,
                    policy = policy.name(),
                    reason = refusal.as_str(),
                    "refused by signature policy"
                );
            }
        }
        Ok(verdict)
    }

    /// The signatures of `digest` in its `.sig` manifest, with their
    /// payloads, read through the cache as `caller`: none when there is no
    /// `.sig` manifest; `Err` when it or a payload cannot be read.
    fn signatures_of<'a>(
        &'a self,
        upstream: &'a Arc<Upstream>,
        repo: &'a RepoName,
        digest: &'a Digest,
        caller: &'a Caller,
    ) -> Reading<'a> {
        // Boxed, and so declared `Send`: it reads through `manifest`,
        // which checks signatures in turn.
        Box::pin(async move {
            // A sha512 digest's tag is longer than a tag may be: no signature.
            let Ok(tag) = Tag::parse(&signature::signature_tag(digest)) else {
                return Ok(Vec::new());
            };
            self.signature_manifest(upstream, repo, Reference::Tag(tag), caller)
                .await
        })
    }

    /// The signatures of `digest` kept as its OCI 1.1 referrers of
    /// cosign's signature artifact type, with their payloads: none when
    /// the upstream has no referrers API or list.
    fn referred_signatures<'a>(
        &'a self,
        upstream: &'a Arc<Upstream>,
        repo: &'a RepoName,
        digest: &'a Digest,
        caller: &'a Caller,
    ) -> Reading<'a> {
        Box::pin(async move {
            let artifact = Some(signature::payload::SIGNATURE_ARTIFACT);
            let list = match self
                .referrers(upstream, repo, digest, artifact, caller)
                .await
            {
                Ok(list) => list.body,
                Err(Error::ManifestUnknown) => return Ok(Vec::new()),
                Err(e) => return Err(e.to_string()),
            };
            let mut found = Vec::new();
            for manifest in signature::payload::signature_referrers(&list)
                .into_iter()
                .take(MAX_SIGNATURES)
            {
                let reference = Reference::Digest(manifest);
                found.extend(
                    self.signature_manifest(upstream, repo, reference, caller)
                        .await?,
                );
            }
            Ok(found)
        })
    }

    /// The signatures a signature manifest holds, with their payloads.
    async fn signature_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: Reference,
        caller: &Caller,
    ) -> std::result::Result<Vec<(Signed, Bytes)>, String> {
        let accept = AcceptList::parse([DEFAULT_MANIFEST_ACCEPT]);
        let manifest = match self
            .manifest(upstream, repo, &reference, &accept, false, caller)
            .await
        {
            Ok(answer) => answer.bytes().ok_or("the signature manifest is not held")?,
            Err(Error::ManifestUnknown) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut found = Vec::new();
        for signed in signature::signatures(&manifest)
            .into_iter()
            .take(MAX_SIGNATURES)
        {
            if signed.size > MAX_PAYLOAD {
                continue;
            }
            let blob = match self
                .blob(upstream, repo, &signed.payload, None, false, caller)
                .await
            {
                Ok(blob) => blob,
                Err(Error::BlobUnknown) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let payload = read_whole(blob).await?;
            found.push((signed, payload));
        }
        Ok(found)
    }
}

/// A small blob's bytes, at most [`MAX_PAYLOAD`].
async fn read_whole(blob: super::BlobAnswer) -> std::result::Result<Bytes, String> {
    let Some(reader) = blob.reader else {
        return Err("a payload without a body".into());
    };
    let mut stream = std::pin::pin!(reader.into_stream());
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading a payload: {e}"))?;
        if (out.len() + chunk.len()) as u64 > MAX_PAYLOAD {
            return Err("a payload larger than its manifest says".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
