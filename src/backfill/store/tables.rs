//! The store's redb tables and the writes that keep its indexes and counts
//! in step with its jobs, inside the caller's transaction.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::err;
use super::record::{Counts, Job, JobState};
use crate::error::Result;

pub(super) const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// `(next_attempt, id)` of every pending job.
pub(super) const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("jobs_due");
/// `(state, id)` of every job.
pub(super) const BY_STATE: TableDefinition<(u8, u64), ()> = TableDefinition::new("jobs_by_state");
/// Jobs per state; empty only in a store written before it existed.
pub(super) const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("job_counts");
pub(super) const OPEN_KEYS: TableDefinition<&str, u64> = TableDefinition::new("open_keys");
pub(super) const HELD: TableDefinition<&str, &str> = TableDefinition::new("held");
pub(super) const STREAMS: TableDefinition<&str, &str> = TableDefinition::new("stream_names");
pub(super) const BLOB_HOMES: TableDefinition<&str, &str> = TableDefinition::new("blob_homes");

type Guard<'a> = redb::AccessGuard<'a, &'static [u8]>;

pub(super) fn decode(value: Option<Guard<'_>>) -> Option<Job> {
    value.and_then(|v| serde_json::from_slice(v.value()).ok())
}

pub(super) fn collect_ids<'a>(
    range: impl Iterator<
        Item = std::result::Result<
            (redb::AccessGuard<'a, (u8, u64)>, redb::AccessGuard<'a, ()>),
            redb::StorageError,
        >,
    >,
    limit: usize,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for item in range.take(limit) {
        ids.push(item.map_err(err)?.0.value().1);
    }
    Ok(ids)
}

/// Writes a job and moves it in the indexes from where `old` had it.
pub(super) fn write_job(
    txn: &WriteTransaction,
    job: &Job,
    old: Option<&Job>,
    counts: &mut Counts,
) -> Result<()> {
    let mut due = txn.open_table(DUE).map_err(err)?;
    let mut by_state = txn.open_table(BY_STATE).map_err(err)?;
    if let Some(old) = old {
        if old.state == JobState::Pending {
            due.remove((old.next_attempt, old.id)).map_err(err)?;
        }
        by_state.remove((old.state.code(), old.id)).map_err(err)?;
        let n = counts.of(old.state);
        *n = n.saturating_sub(1);
    }
    if job.state == JobState::Pending {
        due.insert((job.next_attempt, job.id), ()).map_err(err)?;
    }
    by_state
        .insert((job.state.code(), job.id), ())
        .map_err(err)?;
    *counts.of(job.state) += 1;
    txn.open_table(JOBS)
        .map_err(err)?
        .insert(job.id, serde_json::to_vec(job).map_err(err)?.as_slice())
        .map_err(err)?;
    Ok(())
}

pub(super) fn read_counts(txn: &WriteTransaction) -> Result<Option<Counts>> {
    let table = txn.open_table(COUNTS).map_err(err)?;
    let mut counts = Counts::default();
    for state in JobState::ALL {
        let Some(n) = table.get(state.name()).map_err(err)? else {
            return Ok(None);
        };
        *counts.of(state) = n.value();
    }
    Ok(Some(counts))
}

pub(super) fn write_counts(txn: &WriteTransaction, counts: &Counts) -> Result<()> {
    let mut table = txn.open_table(COUNTS).map_err(err)?;
    let mut counts = *counts;
    for state in JobState::ALL {
        table.insert(state.name(), *counts.of(state)).map_err(err)?;
    }
    Ok(())
}

/// Builds the due and state indexes and the counts from every job (once,
/// for a store from before they existed; a new store has no jobs).
pub(super) fn rebuild_indexes(txn: &WriteTransaction) -> Result<Counts> {
    let mut counts = Counts::default();
    let all: Vec<Job> = {
        let jobs = txn.open_table(JOBS).map_err(err)?;
        let mut all = Vec::new();
        for item in jobs.iter().map_err(err)? {
            let (_, value) = item.map_err(err)?;
            if let Ok(job) = serde_json::from_slice(value.value()) {
                all.push(job);
            }
        }
        all
    };
    for job in &all {
        write_job(txn, job, None, &mut counts)?;
    }
    write_counts(txn, &counts)?;
    Ok(counts)
}

/// Drops the oldest finished jobs, down to `kept`, once there are twice as
/// many.
pub(super) fn prune(txn: &WriteTransaction, counts: &mut Counts, kept: u64) -> Result<()> {
    if counts.done + counts.failed <= kept * 2 {
        return Ok(());
    }
    let mut finished = Vec::new();
    {
        let index = txn.open_table(BY_STATE).map_err(err)?;
        for state in [JobState::Done, JobState::Failed] {
            let s = state.code();
            for item in index.range((s, 0)..=(s, u64::MAX)).map_err(err)? {
                finished.push((item.map_err(err)?.0.value().1, state));
            }
        }
    }
    finished.sort_unstable_by_key(|(id, _)| *id);
    let excess = finished.len().saturating_sub(kept as usize);
    let mut jobs = txn.open_table(JOBS).map_err(err)?;
    let mut index = txn.open_table(BY_STATE).map_err(err)?;
    for (id, state) in finished.into_iter().take(excess) {
        jobs.remove(id).map_err(err)?;
        index.remove((state.code(), id)).map_err(err)?;
        let n = counts.of(state);
        *n = n.saturating_sub(1);
    }
    Ok(())
}
