//! A back-fill job as stored, its states, and the count of each.

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, RepoName};

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

impl JobState {
    pub(super) const ALL: [JobState; 3] = [JobState::Pending, JobState::Done, JobState::Failed];

    /// Its key in the state index.
    pub(super) fn code(self) -> u8 {
        match self {
            JobState::Pending => 0,
            JobState::Done => 1,
            JobState::Failed => 2,
        }
    }

    /// Its key in the counts table.
    pub(super) fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// How many jobs are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Waiting or retrying.
    pub pending: u64,
    /// Landed (the newest are kept, the oldest pruned).
    pub done: u64,
    /// Given up.
    pub failed: u64,
}

impl Counts {
    pub(super) fn of(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Pending => &mut self.pending,
            JobState::Done => &mut self.done,
            JobState::Failed => &mut self.failed,
        }
    }
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

    pub(super) fn held_key(&self) -> String {
        format!("{}:{}", self.target_repo, self.tag)
    }
}
