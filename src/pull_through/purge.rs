//! Purge: an operator drops a tag, a manifest or a whole image from the
//! cache now (a tag that moved wrongly, an image that must not be served
//! again from here), and from the bucket the replicas share.
//!
//! - `tag`: the tag's record goes (here and in the bucket); the next pull
//!   of the tag asks the upstream. The content stays.
//! - `manifest`: the manifest named (by tag or digest), the platform
//!   manifests of an index that no other cached index lists, their
//!   cosign attachments (`sha256-<hex>.sig`, `.att`, `.sbom`), and every
//!   tag record of the repository that names one of them.
//! - `image` (the default): as `manifest`, and the blobs of those
//!   manifests that no other cached manifest uses.
//!
//! What is dropped is unlinked at once; a client reading it keeps its open
//! file to the end. The Rahti project's copy (back-fill) is not touched:
//! it is the durable copy, managed with `oc`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Proxy;
use crate::bucket::Pending;
use crate::cache::index::{tag_key, TagRecord};
use crate::cluster::peer_client::PeerPurge;
use crate::error::{Error, Result};
use crate::oci::manifest::{ImageIndex, ImageManifest};
use crate::oci::{media_type, Digest, ImageRef, Reference};
use crate::signature::payload::is_attachment_tag;

/// How much a purge drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The tag's record only.
    Tag,
    /// The manifests, not the blobs.
    Manifest,
    /// The manifests and the blobs no other cached manifest uses.
    #[default]
    Image,
}

impl Scope {
    /// As the admin call and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tag => "tag",
            Scope::Manifest => "manifest",
            Scope::Image => "image",
        }
    }
}

/// What a purge removed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Purged {
    /// The upstream, as configured.
    pub upstream: String,
    /// The repository, as the upstream names it.
    pub repository: String,
    /// The manifest the name resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The tags whose records were removed.
    pub tags: Vec<String>,
    /// The manifests removed.
    pub manifests: Vec<Digest>,
    /// The blobs removed.
    pub blobs: Vec<Digest>,
    /// Bytes the removed files held.
    pub bytes: u64,
    /// Manifests of the image kept because another cached image uses
    /// them (a tag of another repository names the same content, or
    /// another index lists it).
    pub kept_manifests: usize,
    /// Blobs of the image kept because another cached manifest uses them.
    pub kept_blobs: usize,
    /// Objects and tag records removed from the bucket, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketPurged>,
    /// What each other replica of the cluster removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaPurged>,
}

/// What one other replica removed when the purge was forwarded to it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ReplicaPurged {
    /// The replica, as the member list names it.
    pub member: String,
    /// What it removed; none when it held nothing of the image.
    pub purged: Option<Box<Purged>>,
    /// Why it could not be asked (it is down): it may still hold the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a purge removed from the bucket.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct BucketPurged {
    /// Blobs, manifests and tag records deleted (or already gone).
    pub removed: usize,
    /// Deletes that failed (the bucket did not answer): logged.
    pub failed: usize,
}

/// A stored manifest's references: platform manifests and blobs.
#[derive(Debug, Default)]
struct Refs {
    children: Vec<Digest>,
    blobs: Vec<Digest>,
}

impl Proxy {
    /// Drops `image` as `scope` says from this replica's cache, the
    /// bucket, and the other replicas' caches. `ManifestUnknown` when
    /// nothing is cached under that name here (the others are asked all
    /// the same: they may hold what this replica does not).
    pub async fn purge(&self, image: &ImageRef, scope: Scope) -> Result<Purged> {
        let here = self.purge_local(image, scope, None, true).await;
        // A request that is wrong here is wrong everywhere.
        let forward = matches!(here, Ok(_) | Err(Error::ManifestUnknown));
        let Some(cluster) = self.cluster.as_ref().filter(|_| forward) else {
            return here;
        };
        let forwarded = PeerPurge {
            image: format!("{}{}", image.name, separator(&image.reference)),
            scope,
            digest: here.as_ref().ok().and_then(|p| p.digest.clone()),
        };
        let me = cluster.members().me().to_string();
        let members = cluster.members().all();
        let asks = members.iter().filter(|m| **m != me).map(|member| {
            let forwarded = &forwarded;
            async move {
                let answer = cluster.client().purge(member, forwarded).await;
                let (purged, error) = match answer {
                    Ok(purged) => (purged, None),
                    Err(err) => {
                        tracing::warn!(member, error = %err, "purge: a replica did not purge");
                        (None, Some(err.to_string()))
                    }
                };
                ReplicaPurged {
                    member: member.clone(),
                    purged: purged.map(Box::new),
                    error,
                }
            }
        });
        let replicas = futures_util::future::join_all(asks).await;
        let anywhere = replicas.iter().any(|r| r.purged.is_some());
        match here {
            Ok(mut purged) => {
                purged.replicas = replicas;
                Ok(purged)
            }
            Err(Error::ManifestUnknown) if anywhere => {
                let (upstream, repo) = self.locate(&image.name, None)?;
                Ok(Purged {
                    upstream: upstream.name().to_string(),
                    repository: repo.to_string(),
                    replicas,
                    ..Purged::default()
                })
            }
            Err(err) => Err(err),
        }
    }

    /// A purge another replica forwarded: this replica's cache only (the
    /// bucket is done); `digest` is what the name resolved to there.
    pub async fn purge_forwarded(&self, purge: PeerPurge) -> Result<Purged> {
        let image = ImageRef::parse(&purge.image).map_err(Error::NameInvalid)?;
        self.purge_local(&image, purge.scope, purge.digest, false)
            .await
    }

    /// Drops `image` from this replica's cache, and with `bucket` from the
    /// bucket; what the tag names here, or else `hint`, is its manifest.
    async fn purge_local(
        &self,
        image: &ImageRef,
        scope: Scope,
        hint: Option<Digest>,
        bucket: bool,
    ) -> Result<Purged> {
        let (upstream, repo) = self.locate(&image.name, None)?;
        let reference = Reference::parse(&image.reference)
            .map_err(|e| Error::ReferenceInvalid(e.to_string()))?;
        let (up, repository) = (upstream.name(), repo.as_str());
        let prefix = tag_key(up, repository, "");
        let (mut records, mut elsewhere) = (Vec::new(), HashSet::new());
        for (key, record) in self.cache.tag_records().await? {
            match key.strip_prefix(&prefix) {
                Some(tag) => records.push((tag.to_string(), record)),
                None => {
                    elsewhere.insert(record.digest);
                }
            }
        }
        let mut purged = Purged {
            upstream: up.to_string(),
            repository: repository.to_string(),
            ..Purged::default()
        };
        let mut tags: Vec<String> = Vec::new();
        let root = match &reference {
            Reference::Digest(digest) if scope == Scope::Tag => {
                return Err(Error::ReferenceInvalid(format!(
                    "{digest} is a digest, not a tag: purge a manifest or an image"
                )))
            }
            Reference::Digest(digest) => Some(digest.clone()),
            Reference::Tag(tag) => {
                tags.push(tag.as_str().to_string());
                let local = records.iter().find(|(t, _)| t == tag.as_str());
                let shared = match (local, self.bucket.as_ref().filter(|_| bucket)) {
                    (None, Some(bucket)) => bucket
                        .get_tag(up, repository, tag.as_str())
                        .await
                        .ok()
                        .flatten(),
                    _ => None,
                };
                let found = local.map(|(_, r)| r.digest.clone());
                found.or(shared.map(|r| r.digest)).or(hint)
            }
        };
        let stored: HashSet<Digest> = self.cache.manifest_digests().await?.into_iter().collect();
        // Nothing cached under that name: nothing to do, and said so.
        let Some(root) = root else {
            return Err(Error::ManifestUnknown);
        };
        let named = records.iter().any(|(_, r)| r.digest == root);
        if matches!(reference, Reference::Digest(_)) && !stored.contains(&root) && !named {
            return Err(Error::ManifestUnknown);
        }
        let mut drop_manifests: HashSet<Digest> = HashSet::new();
        let mut drop_blobs: HashSet<Digest> = HashSet::new();
        if scope != Scope::Tag {
            let refs = self.manifest_refs(&stored).await?;
            let candidates = closure(&root, &refs, &records);
            // Kept: what another repository's tag names, what a manifest
            // outside the purge is, and what those list.
            let live = refs
                .keys()
                .filter(|d| !candidates.contains(*d))
                .chain(candidates.iter().filter(|d| elsewhere.contains(*d)));
            let kept = listed_from(live.cloned().collect(), &refs);
            for digest in candidates {
                let explicit = digest == root && !elsewhere.contains(&digest);
                match explicit || !kept.contains(&digest) {
                    true => drop_manifests.insert(digest),
                    false => {
                        purged.kept_manifests += usize::from(stored.contains(&digest));
                        false
                    }
                };
            }
            // Their tags, and the attachment tags of what goes.
            for (tag, record) in &records {
                if drop_manifests.contains(&record.digest) {
                    tags.push(tag.clone());
                }
            }
            if scope == Scope::Image {
                let used_elsewhere: HashSet<&Digest> = refs
                    .iter()
                    .filter(|(d, _)| !drop_manifests.contains(*d))
                    .flat_map(|(_, r)| &r.blobs)
                    .collect();
                let blobs = drop_manifests.iter().filter_map(|d| refs.get(d));
                let (kept, gone): (HashSet<&Digest>, HashSet<&Digest>) = blobs
                    .flat_map(|r| &r.blobs)
                    .partition(|b| used_elsewhere.contains(*b));
                purged.kept_blobs = kept.len();
                drop_blobs = gone.into_iter().cloned().collect();
            }
        }
        tags.sort();
        tags.dedup();
        let keys = tags.iter().map(|t| tag_key(up, repository, t)).collect();
        let removed_keys = self.cache.remove_tags(keys).await?;
        purged.tags = removed_keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .collect();
        let objects: Vec<Digest> = drop_manifests.iter().chain(&drop_blobs).cloned().collect();
        for (digest, bytes) in self.cache.remove_objects(objects).await? {
            purged.bytes += bytes;
            match drop_manifests.contains(&digest) {
                true => purged.manifests.push(digest),
                false => purged.blobs.push(digest),
            }
        }
        purged.manifests.sort();
        purged.blobs.sort();
        purged.digest = Some(root);
        // What this replica owed the bucket of it is owed no more.
        if let Some(store) = &self.bucket {
            for digest in &drop_manifests {
                store.unowe(Pending::Manifest(digest.clone())).await;
            }
            for digest in &drop_blobs {
                store.unowe(Pending::Blob(digest.clone())).await;
            }
        }
        if let Some(bucket) = self.bucket.as_ref().filter(|_| bucket) {
            let mut done = BucketPurged::default();
            let mut count = |result: Result<()>| match result {
                Ok(()) => done.removed += 1,
                Err(err) => {
                    tracing::warn!(error = %err, "purge: cannot delete from the object store");
                    done.failed += 1;
                }
            };
            for tag in &tags {
                count(bucket.remove_tag(up, repository, tag).await);
            }
            for digest in &drop_manifests {
                count(bucket.remove_manifest(digest).await);
            }
            for digest in &drop_blobs {
                count(bucket.remove(digest).await);
            }
            purged.bucket = Some(done);
        }
        tracing::info!(
            upstream = up,
            repository,
            reference = %image.reference,
            scope = ?scope,
            tags = purged.tags.len(),
            manifests = purged.manifests.len(),
            blobs = purged.blobs.len(),
            bytes = purged.bytes,
            "purged"
        );
        Ok(purged)
    }

    /// The references of every stored manifest, read without marking any
    /// used.
    async fn manifest_refs(&self, stored: &HashSet<Digest>) -> Result<HashMap<Digest, Refs>> {
        let mut refs = HashMap::with_capacity(stored.len());
        for digest in stored {
            let Some(manifest) = self.cache.peek_manifest(digest).await? else {
                continue;
            };
            let found = match media_type::is_index(&manifest.media_type) {
                true => Refs {
                    children: ImageIndex::parse(&manifest.bytes)
                        .map(|i| i.manifests.into_iter().map(|m| m.digest).collect())
                        .unwrap_or_default(),
                    blobs: Vec::new(),
                },
                false => Refs {
                    children: Vec::new(),
                    blobs: ImageManifest::parse(&manifest.bytes)
                        .map(|m| m.blobs().map(|b| b.digest.clone()).collect())
                        .unwrap_or_default(),
                },
            };
            refs.insert(digest.clone(), found);
        }
        Ok(refs)
    }
}

/// How a reference follows the name: `@` for a digest, `:` for a tag.
fn separator(reference: &str) -> String {
    match reference.contains(':') {
        true => format!("@{reference}"),
        false => format!(":{reference}"),
    }
}

/// `live` and every manifest they list, transitively.
fn listed_from(live: Vec<Digest>, refs: &HashMap<Digest, Refs>) -> HashSet<Digest> {
    let mut found = HashSet::new();
    let mut queue = live;
    while let Some(digest) = queue.pop() {
        if let Some(r) = refs.get(&digest) {
            if !found.contains(&digest) {
                queue.extend(r.children.iter().cloned());
            }
        }
        found.insert(digest);
    }
    found
}

/// `root`, the platform manifests it lists (stored or not), and the
/// manifests the repository's attachment tags of any of them name.
fn closure(
    root: &Digest,
    refs: &HashMap<Digest, Refs>,
    records: &[(String, TagRecord)],
) -> HashSet<Digest> {
    let mut found = HashSet::new();
    let mut queue = vec![root.clone()];
    while let Some(digest) = queue.pop() {
        if !found.insert(digest.clone()) {
            continue;
        }
        if let Some(r) = refs.get(&digest) {
            queue.extend(r.children.iter().cloned());
        }
        let prefix = format!("{}.", digest.as_str().replacen(':', "-", 1));
        let attachments = records
            .iter()
            .filter(|(tag, _)| tag.starts_with(&prefix) && is_attachment_tag(tag));
        queue.extend(attachments.map(|(_, record)| record.digest.clone()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn record(digest: &Digest) -> TagRecord {
        TagRecord {
            digest: digest.clone(),
            media_type: media_type::OCI_MANIFEST.to_string(),
            size: 1,
            checked_at: 0,
        }
    }

    #[test]
    fn the_closure_takes_children_and_attachments_of_every_level() {
        let (index, child, other, sig, child_sig, unrelated) = (
            digest(1),
            digest(2),
            digest(3),
            digest(4),
            digest(5),
            digest(6),
        );
        let mut refs = HashMap::new();
        refs.insert(
            index.clone(),
            Refs {
                children: vec![child.clone(), other.clone()],
                blobs: vec![],
            },
        );
        let tag_of = |d: &Digest| format!("{}.sig", d.as_str().replacen(':', "-", 1));
        let records = vec![
            (tag_of(&index), record(&sig)),
            (tag_of(&child), record(&child_sig)),
            (format!("{}.txt", tag_of(&child)), record(&unrelated)),
            ("v1".to_string(), record(&unrelated)),
        ];
        let found = closure(&index, &refs, &records);
        let want: HashSet<Digest> = [index, child, other, sig, child_sig].into_iter().collect();
        assert_eq!(found, want);
    }
}
