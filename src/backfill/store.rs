//! The durable back-fill queue, in redb (`<data>/backfill.redb`).
//!
//! A job is written and committed before it counts as accepted, so a crash
//! or restart loses none: at start every pending job is taken up again.
//! Besides jobs, the store remembers what the target is known to hold (so a
//! pull of an image already pushed enqueues nothing), which source holds
//! each image stream name (for collision-free naming), and one repository
//! per blob at the target (for cross-repository mounts).

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::cache::index::unix_now;
use crate::error::{Error, Result};
use crate::oci::{Digest, RepoName};

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const OPEN_KEYS: TableDefinition<&str, u64> = TableDefinition::new("open_keys");
const HELD: TableDefinition<&str, &str> = TableDefinition::new("held");
const STREAMS: TableDefinition<&str, &str> = TableDefinition::new("stream_names");
const BLOB_HOMES: TableDefinition<&str, &str> = TableDefinition::new("blob_homes");

/// Finished jobs kept for `/admin/backfill`; older ones are pruned.
const FINISHED_KEPT: usize = 1000;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker, or for its next attempt.
    Pending,
    /// The image landed and was verified.
    Done,
    /// Gave up: a permanent error, or transient ones for too long.
    Failed,
}

/// One image to push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Order of arrival.
    pub id: u64,
    /// The upstream it was pulled from.
    pub upstream: String,
    /// The repository as the upstream names it.
    pub repo: RepoName,
    /// The tag pulled (pushed unchanged).
    pub tag: String,
    /// The manifest (or index) digest the client was served.
    pub digest: Digest,
    /// `<project>/<stream>` at the target.
    pub target_repo: String,
    /// Where it stands.
    pub state: JobState,
    /// Attempts made.
    pub attempts: u32,
    /// Unix seconds before which it is not tried again.
    pub next_attempt: u64,
    /// Unix seconds it was accepted.
    pub created: u64,
    /// Unix seconds of its last change.
    pub updated: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Things worth knowing (an index fallback, skipped platforms).
    pub notes: Vec<String>,
}

impl Job {
    /// A new pending job; the store gives it its id and times.
    pub fn new(
        upstream: String,
        repo: RepoName,
        tag: String,
        digest: Digest,
        target_repo: String,
    ) -> Job {
        Job {
            id: 0,
            upstream,
            repo,
            tag,
            digest,
            target_repo,
            state: JobState::Pending,
            attempts: 0,
            next_attempt: 0,
            created: 0,
            updated: 0,
            last_error: None,
            notes: Vec::new(),
        }
    }

    /// The key that makes equal requests coalesce.
    pub fn key(&self) -> String {
        format!("{}:{}@{}", self.target_repo, self.tag, self.digest)
    }

    fn held_key(&self) -> String {
        format!("{}:{}", self.target_repo, self.tag)
    }
}

/// The back-fill store.
pub struct JobStore {
    db: Database,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobStore")
    }
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::storage("backfill store", e)
}

impl JobStore {
    /// Opens or creates the store.
    pub fn open(path: &Path) -> Result<JobStore> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(JOBS).map_err(err)?;
        txn.open_table(OPEN_KEYS).map_err(err)?;
        txn.open_table(HELD).map_err(err)?;
        txn.open_table(STREAMS).map_err(err)?;
        txn.open_table(BLOB_HOMES).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(JobStore { db })
    }

    /// Persists a new job unless an equal one is open or the target already
    /// holds that tag at that digest. Returns the job when accepted.
    pub fn enqueue(&self, mut job: Job) -> Result<Option<Job>> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let held = txn.open_table(HELD).map_err(err)?;
            if held
                .get(job.held_key().as_str())
                .map_err(err)?
                .map(|v| v.value() == job.digest.as_str())
                == Some(true)
            {
                return Ok(None);
            }
            let mut open = txn.open_table(OPEN_KEYS).map_err(err)?;
            if open.get(job.key().as_str()).map_err(err)?.is_some() {
                return Ok(None);
            }
            let mut jobs = txn.open_table(JOBS).map_err(err)?;
            job.id = jobs
                .last()
                .map_err(err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            let now = unix_now();
            (job.created, job.updated, job.state) = (now, now, JobState::Pending);
            open.insert(job.key().as_str(), job.id).map_err(err)?;
            jobs.insert(job.id, serde_json::to_vec(&job).map_err(err)?.as_slice())
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Some(job))
    }

    /// Records a job's new state; a finished job leaves the open set, and a
    /// done one marks its tag as held by the target.
    pub fn update(&self, job: &Job) -> Result<()> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(err)?;
            jobs.insert(job.id, serde_json::to_vec(job).map_err(err)?.as_slice())
                .map_err(err)?;
            if job.state != JobState::Pending {
                txn.open_table(OPEN_KEYS)
                    .map_err(err)?
                    .remove(job.key().as_str())
                    .map_err(err)?;
                prune(&mut jobs)?;
            }
            if job.state == JobState::Done {
                let mut held = txn.open_table(HELD).map_err(err)?;
                held.insert(job.held_key().as_str(), job.digest.as_str())
                    .map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(JOBS).map_err(err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(err)?.rev() {
            let (_, value) = item.map_err(err)?;
            if let Ok(job) = serde_json::from_slice(value.value()) {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Jobs still to do, oldest first.
    pub fn pending(&self) -> Result<Vec<Job>> {
        let mut jobs: Vec<Job> = self
            .jobs()?
            .into_iter()
            .filter(|j| j.state == JobState::Pending)
            .collect();
        jobs.reverse();
        Ok(jobs)
    }

    /// Whether the target is known to hold `target_repo:tag` at `digest`.
    pub fn holds(&self, target_repo: &str, tag: &str, digest: &Digest) -> Result<bool> {
        let txn = self.db.begin_read().map_err(err)?;
        let held = txn.open_table(HELD).map_err(err)?;
        let key = format!("{target_repo}:{tag}");
        Ok(held
            .get(key.as_str())
            .map_err(err)?
            .map(|v| v.value() == digest.as_str())
            .unwrap_or(false))
    }

    /// The source holding an image stream name.
    pub fn stream_holder(&self, name: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(STREAMS).map_err(err)?;
        Ok(table.get(name).map_err(err)?.map(|v| v.value().to_string()))
    }

    /// Records that `source` holds the image stream name `name`.
    pub fn claim_stream(&self, name: &str, source: &str) -> Result<()> {
        self.put(STREAMS, name, source)
    }

    /// A target repository known to hold a blob, for a mount.
    pub fn blob_home(&self, digest: &Digest) -> Result<Option<String>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(BLOB_HOMES).map_err(err)?;
        Ok(table
            .get(digest.as_str())
            .map_err(err)?
            .map(|v| v.value().to_string()))
    }

    /// Records where a blob now lives at the target.
    pub fn set_blob_home(&self, digest: &Digest, target_repo: &str) -> Result<()> {
        self.put(BLOB_HOMES, digest.as_str(), target_repo)
    }

    fn put(&self, table: TableDefinition<&str, &str>, key: &str, value: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(table)
            .map_err(err)?
            .insert(key, value)
            .map_err(err)?;
        txn.commit().map_err(err)
    }
}

/// Drops the oldest finished jobs past [`FINISHED_KEPT`].
fn prune(jobs: &mut redb::Table<u64, &[u8]>) -> Result<()> {
    if jobs.len().map_err(err)? as usize <= FINISHED_KEPT * 2 {
        return Ok(());
    }
    let mut finished = Vec::new();
    for item in jobs.iter().map_err(err)? {
        let (key, value) = item.map_err(err)?;
        let job: Option<Job> = serde_json::from_slice(value.value()).ok();
        if job.is_some_and(|j| j.state != JobState::Pending) {
            finished.push(key.value());
        }
    }
    let excess = finished.len().saturating_sub(FINISHED_KEPT);
    for id in finished.into_iter().take(excess) {
        jobs.remove(id).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tag: &str, digest: &Digest) -> Job {
        let repo = RepoName::parse("library/centos").unwrap();
        Job::new(
            "docker.io".into(),
            repo,
            tag.into(),
            digest.clone(),
            "proj/centos".into(),
        )
    }

    #[test]
    fn jobs_persist_coalesce_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backfill.redb");
        let d1 = Digest::sha256_of(b"1");
        {
            let store = JobStore::open(&path).unwrap();
            let accepted = store.enqueue(job("7", &d1)).unwrap().expect("accepted");
            assert_eq!(accepted.id, 1);
            assert!(store.enqueue(job("7", &d1)).unwrap().is_none(), "coalesced");
            assert_eq!(store.enqueue(job("8", &d1)).unwrap().unwrap().id, 2);
        }
        let store = JobStore::open(&path).unwrap();
        let pending = store.pending().unwrap();
        assert_eq!(
            pending.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![1, 2],
            "survives reopening"
        );

        let mut done = pending[0].clone();
        done.state = JobState::Done;
        store.update(&done).unwrap();
        assert!(store.holds("proj/centos", "7", &d1).unwrap());
        assert!(
            store.enqueue(job("7", &d1)).unwrap().is_none(),
            "the target holds it"
        );
        let d2 = Digest::sha256_of(b"2");
        assert!(
            store.enqueue(job("7", &d2)).unwrap().is_some(),
            "the tag moved"
        );
        assert_eq!(store.pending().unwrap().len(), 2);
        assert_eq!(store.jobs().unwrap()[0].id, 3, "newest first");
    }

    #[test]
    fn names_and_blob_homes_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("b.redb")).unwrap();
        assert_eq!(store.stream_holder("centos").unwrap(), None);
        store
            .claim_stream("centos", "docker.io/library/centos")
            .unwrap();
        assert_eq!(
            store.stream_holder("centos").unwrap().as_deref(),
            Some("docker.io/library/centos")
        );
        let d = Digest::sha256_of(b"blob");
        store.set_blob_home(&d, "proj/centos").unwrap();
        assert_eq!(store.blob_home(&d).unwrap().as_deref(), Some("proj/centos"));
    }
}
