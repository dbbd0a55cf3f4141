//! The durable back-fill queue, in redb (`<data>/backfill.redb`).
//!
//! A job is written and committed before it counts as accepted, so a crash
//! or restart loses none: at start every pending job is taken up again.
//! Besides jobs, the store remembers what the target is known to hold (so a
//! pull of an image already pushed enqueues nothing), which source holds
//! each image stream name (for collision-free naming), and one repository
//! per blob at the target (for cross-repository mounts).
//!
//! Nothing here reads every job (but once, to index a store from before the
//! indexes): pending jobs are indexed by when they are due (the dispatcher
//! takes the next few), every job by state and id (the listing pages), and
//! the count of each state is kept in the same transactions that change it
//! (so it is right after any restart or crash).

mod record;
mod tables;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableTable, TableDefinition};

use crate::cache::index::unix_now;
use crate::error::{Error, Result};
use crate::oci::Digest;
use tables::*;

pub use record::{Counts, Job, JobState};

/// Finished jobs kept for `/admin/backfill`; older ones are pruned once
/// there are twice as many.
const FINISHED_KEPT: u64 = 1000;

/// What became of an offered job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Persisted, with its id and times.
    Accepted(Box<Job>),
    /// An equal job is open, or the target already holds the image.
    Known,
    /// The queue holds its maximum of pending jobs.
    Full,
}

/// The jobs due next, for the dispatcher.
#[derive(Debug, Default)]
pub struct Due {
    /// Due now, soonest first.
    pub jobs: Vec<Job>,
    /// When the next job not taken is due (unix seconds), if any.
    pub next: Option<u64>,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    /// The jobs, in listing order.
    pub jobs: Vec<Job>,
    /// The cursor for the next page, when there is one.
    pub next: Option<u64>,
}

/// The back-fill store.
pub struct JobStore {
    db: Database,
    /// Serialises writers so the counts below follow commits in order.
    counts: Mutex<Counts>,
    finished_kept: u64,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobStore")
    }
}

pub(super) fn err(e: impl std::fmt::Display) -> Error {
    Error::storage("backfill store", e)
}

impl JobStore {
    /// Opens or creates the store; a store written before the indexes
    /// existed gets them built once, here.
    pub fn open(path: &Path) -> Result<JobStore> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(JOBS).map_err(err)?;
        txn.open_table(DUE).map_err(err)?;
        txn.open_table(BY_STATE).map_err(err)?;
        txn.open_table(OPEN_KEYS).map_err(err)?;
        for table in [HELD, STREAMS, BLOB_HOMES] {
            txn.open_table(table).map_err(err)?;
        }
        let counts = match read_counts(&txn)? {
            Some(counts) => counts,
            None => rebuild_indexes(&txn)?,
        };
        txn.commit().map_err(err)?;
        Ok(JobStore {
            db,
            counts: Mutex::new(counts),
            finished_kept: FINISHED_KEPT,
        })
    }

    /// Jobs in each state; no I/O.
    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists a new job unless an equal one is open, the target already
    /// holds that tag at that digest, or `max_pending` jobs are pending.
    pub fn enqueue(&self, mut job: Job, max_pending: u64) -> Result<Enqueued> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(err)?;
        {
            let held = txn.open_table(HELD).map_err(err)?;
            if held
                .get(job.held_key().as_str())
                .map_err(err)?
                .map(|v| v.value() == job.digest.as_str())
                == Some(true)
            {
                return Ok(Enqueued::Known);
            }
            let mut open = txn.open_table(OPEN_KEYS).map_err(err)?;
            if open.get(job.key().as_str()).map_err(err)?.is_some() {
                return Ok(Enqueued::Known);
            }
            if counts.pending >= max_pending {
                return Ok(Enqueued::Full);
            }
            let jobs = txn.open_table(JOBS).map_err(err)?;
            job.id = jobs
                .last()
                .map_err(err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            let now = unix_now();
            (job.created, job.updated, job.state) = (now, now, JobState::Pending);
            open.insert(job.key().as_str(), job.id).map_err(err)?;
        }
        let mut next = *counts;
        write_job(&txn, &job, None, &mut next)?;
        write_counts(&txn, &next)?;
        txn.commit().map_err(err)?;
        *counts = next;
        Ok(Enqueued::Accepted(Box::new(job)))
    }

    /// Records a job's new state; a finished job leaves the open set, and a
    /// done one marks its tag as held by the target.
    pub fn update(&self, job: &Job) -> Result<()> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = *counts;
        let txn = self.db.begin_write().map_err(err)?;
        let old = {
            let jobs = txn.open_table(JOBS).map_err(err)?;
            let old = jobs.get(job.id).map_err(err)?;
            old.and_then(|v| serde_json::from_slice::<Job>(v.value()).ok())
        };
        write_job(&txn, job, old.as_ref(), &mut next)?;
        if job.state != JobState::Pending {
            txn.open_table(OPEN_KEYS)
                .map_err(err)?
                .remove(job.key().as_str())
                .map_err(err)?;
            prune(&txn, &mut next, self.finished_kept)?;
        }
        if job.state == JobState::Done {
            let mut held = txn.open_table(HELD).map_err(err)?;
            held.insert(job.held_key().as_str(), job.digest.as_str())
                .map_err(err)?;
        }
        write_counts(&txn, &next)?;
        txn.commit().map_err(err)?;
        *counts = next;
        Ok(())
    }

    /// Pending jobs due by `now`, soonest first, at most `limit`, leaving
    /// out `running`; reads only those (and the next one's due time).
    pub fn due(&self, now: u64, limit: usize, running: &HashSet<u64>) -> Result<Due> {
        let txn = self.db.begin_read().map_err(err)?;
        let (due, jobs) = (
            txn.open_table(DUE).map_err(err)?,
            txn.open_table(JOBS).map_err(err)?,
        );
        let mut out = Due::default();
        for item in due.iter().map_err(err)? {
            let (key, _) = item.map_err(err)?;
            let (at, id) = key.value();
            if running.contains(&id) {
                continue;
            }
            if at > now || out.jobs.len() >= limit {
                out.next = Some(at);
                break;
            }
            if let Some(job) = decode(jobs.get(id).map_err(err)?) {
                out.jobs.push(job);
            }
        }
        Ok(out)
    }

    /// Jobs in `state` after the cursor `after`, at most `limit`: pending
    /// ones oldest first (queue order), finished ones newest first.
    pub fn page(&self, state: JobState, after: Option<u64>, limit: usize) -> Result<Page> {
        let txn = self.db.begin_read().map_err(err)?;
        let (index, jobs) = (
            txn.open_table(BY_STATE).map_err(err)?,
            txn.open_table(JOBS).map_err(err)?,
        );
        let s = state.code();
        let ids: Vec<u64> = if state == JobState::Pending {
            let from = after.map_or(0, |a| a.saturating_add(1));
            collect_ids(
                index.range((s, from)..=(s, u64::MAX)).map_err(err)?,
                limit + 1,
            )?
        } else {
            let range = index
                .range((s, 0)..(s, after.unwrap_or(u64::MAX)))
                .map_err(err)?;
            collect_ids(range.rev(), limit + 1)?
        };
        let mut page = Page::default();
        for &id in ids.iter().take(limit) {
            if let Some(job) = decode(jobs.get(id).map_err(err)?) {
                page.jobs.push(job);
            }
        }
        if ids.len() > limit {
            page.next = ids.get(limit - 1).copied();
        }
        Ok(page)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RepoName;

    const NO_CAP: u64 = u64::MAX;

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

    fn accepted(outcome: Enqueued) -> Job {
        match outcome {
            Enqueued::Accepted(job) => *job,
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn ids(jobs: &[Job]) -> Vec<u64> {
        jobs.iter().map(|j| j.id).collect()
    }

    fn pending(store: &JobStore) -> Vec<Job> {
        store.page(JobState::Pending, None, 1000).unwrap().jobs
    }

    #[test]
    fn jobs_persist_coalesce_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backfill.redb");
        let d1 = Digest::sha256_of(b"1");
        {
            let store = JobStore::open(&path).unwrap();
            assert_eq!(
                accepted(store.enqueue(job("7", &d1), NO_CAP).unwrap()).id,
                1
            );
            assert_eq!(
                store.enqueue(job("7", &d1), NO_CAP).unwrap(),
                Enqueued::Known
            );
            assert_eq!(
                accepted(store.enqueue(job("8", &d1), NO_CAP).unwrap()).id,
                2
            );
        }
        let store = JobStore::open(&path).unwrap();
        let pending_jobs = pending(&store);
        assert_eq!(ids(&pending_jobs), vec![1, 2], "survives reopening");

        let mut done = pending_jobs[0].clone();
        done.state = JobState::Done;
        store.update(&done).unwrap();
        assert!(store.holds("proj/centos", "7", &d1).unwrap());
        assert_eq!(
            store.enqueue(job("7", &d1), NO_CAP).unwrap(),
            Enqueued::Known,
            "the target holds it"
        );
        let d2 = Digest::sha256_of(b"2");
        accepted(store.enqueue(job("7", &d2), NO_CAP).unwrap());
        assert_eq!(ids(&pending(&store)), vec![2, 3]);
        let recent = store.page(JobState::Done, None, 10).unwrap();
        assert_eq!(ids(&recent.jobs), vec![1]);
    }

    #[test]
    fn counts_follow_every_change_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backfill.redb");
        {
            let store = JobStore::open(&path).unwrap();
            for n in 0..4u8 {
                accepted(
                    store
                        .enqueue(job("t", &Digest::sha256_of(&[n])), NO_CAP)
                        .unwrap(),
                );
            }
            let mut jobs = pending(&store);
            jobs[0].state = JobState::Done;
            jobs[1].state = JobState::Failed;
            jobs[2].next_attempt = unix_now() + 60;
            for j in &jobs[..3] {
                store.update(j).unwrap();
            }
            let expected = Counts {
                pending: 2,
                done: 1,
                failed: 1,
            };
            assert_eq!(store.counts(), expected);
        }
        let store = JobStore::open(&path).unwrap();
        assert_eq!(
            store.counts(),
            Counts {
                pending: 2,
                done: 1,
                failed: 1
            },
            "after a restart"
        );
    }

    #[test]
    fn the_cap_refuses_new_jobs_but_not_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("b.redb")).unwrap();
        let (d1, d2, d3) = (
            Digest::sha256_of(b"1"),
            Digest::sha256_of(b"2"),
            Digest::sha256_of(b"3"),
        );
        let first = accepted(store.enqueue(job("1", &d1), 2).unwrap());
        accepted(store.enqueue(job("2", &d2), 2).unwrap());
        assert_eq!(store.enqueue(job("3", &d3), 2).unwrap(), Enqueued::Full);
        assert_eq!(store.enqueue(job("1", &d1), 2).unwrap(), Enqueued::Known);
        assert_eq!(store.counts().pending, 2, "nothing written when full");
        let mut done = first;
        done.state = JobState::Done;
        store.update(&done).unwrap();
        accepted(store.enqueue(job("3", &d3), 2).unwrap());
    }

    #[test]
    fn due_selection_takes_only_due_jobs_in_order_with_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("b.redb")).unwrap();
        let now = unix_now();
        // Due times, in order of arrival: later, now, past, far, past.
        let due_at = [now + 30, now, now - 10, now + 3600, now - 5];
        for (n, at) in due_at.iter().enumerate() {
            let mut j = accepted(
                store
                    .enqueue(job("t", &Digest::sha256_of(&[n as u8])), NO_CAP)
                    .unwrap(),
            );
            j.next_attempt = *at;
            store.update(&j).unwrap();
        }
        let none = HashSet::new();
        let due = store.due(now, 10, &none).unwrap();
        assert_eq!(ids(&due.jobs), vec![3, 5, 2], "due ones, soonest first");
        assert_eq!(due.next, Some(now + 30));

        let due = store.due(now, 2, &none).unwrap();
        assert_eq!(ids(&due.jobs), vec![3, 5], "at most the limit");
        assert_eq!(due.next, Some(now), "another is due at once");

        let running = HashSet::from([3, 5]);
        let due = store.due(now, 2, &running).unwrap();
        assert_eq!(ids(&due.jobs), vec![2], "running jobs are left out");

        let mut finished = due.jobs[0].clone();
        finished.state = JobState::Done;
        store.update(&finished).unwrap();
        assert_eq!(ids(&store.due(now, 10, &none).unwrap().jobs), vec![3, 5]);
    }

    #[test]
    fn listings_page_by_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("b.redb")).unwrap();
        for n in 0..5u8 {
            accepted(
                store
                    .enqueue(job("t", &Digest::sha256_of(&[n])), NO_CAP)
                    .unwrap(),
            );
        }
        let first = store.page(JobState::Pending, None, 2).unwrap();
        assert_eq!((ids(&first.jobs), first.next), (vec![1, 2], Some(2)));
        let second = store.page(JobState::Pending, first.next, 2).unwrap();
        assert_eq!((ids(&second.jobs), second.next), (vec![3, 4], Some(4)));
        let last = store.page(JobState::Pending, second.next, 2).unwrap();
        assert_eq!((ids(&last.jobs), last.next), (vec![5], None));

        for mut j in pending(&store) {
            j.state = JobState::Failed;
            store.update(&j).unwrap();
        }
        let newest = store.page(JobState::Failed, None, 3).unwrap();
        assert_eq!((ids(&newest.jobs), newest.next), (vec![5, 4, 3], Some(3)));
        let older = store.page(JobState::Failed, newest.next, 3).unwrap();
        assert_eq!((ids(&older.jobs), older.next), (vec![2, 1], None));
    }

    #[test]
    fn a_store_from_before_the_indexes_gets_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut jobs = txn.open_table(JOBS).unwrap();
                for (id, state) in [(1, JobState::Done), (2, JobState::Pending)] {
                    let mut j = job(&id.to_string(), &Digest::sha256_of(b"x"));
                    (j.id, j.state) = (id, state);
                    jobs.insert(id, serde_json::to_vec(&j).unwrap().as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = JobStore::open(&path).unwrap();
        assert_eq!(
            store.counts(),
            Counts {
                pending: 1,
                done: 1,
                failed: 0
            }
        );
        let due = store.due(unix_now(), 10, &HashSet::new()).unwrap();
        assert_eq!(ids(&due.jobs), vec![2]);
    }

    #[test]
    fn old_finished_jobs_are_pruned_and_uncounted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JobStore::open(&dir.path().join("b.redb")).unwrap();
        store.finished_kept = 10;
        for n in 0..21u64 {
            let mut j = accepted(
                store
                    .enqueue(job(&n.to_string(), &Digest::sha256_of(b"x")), NO_CAP)
                    .unwrap(),
            );
            j.state = JobState::Failed;
            store.update(&j).unwrap();
        }
        assert_eq!(store.counts().failed, 10);
        let kept = store.page(JobState::Failed, None, 100).unwrap();
        assert_eq!(
            ids(&kept.jobs),
            (12..=21).rev().collect::<Vec<_>>(),
            "the oldest are gone"
        );
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
