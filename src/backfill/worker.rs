//! The back-fill tasks: the intake that turns offers into persisted jobs, and
//! the dispatcher that runs due jobs with bounded concurrency and backoff.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::job::{self, Context};
use super::naming::Namer;
use super::store::{Enqueued, Job, JobState};
use super::{Offer, Shared};
use crate::cache::index::unix_now;
use crate::events::{BackfillOutcome, Kind};
use crate::pull_through::Proxy;

/// First retry delay of a failing job; doubled per attempt up to `max_backoff`.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest the dispatcher sleeps without looking at the queue.
const IDLE_RESCAN: Duration = Duration::from_secs(30);

/// Persists offered images as jobs, until the handle (and its sender) drops.
pub(super) async fn intake(
    mut offers: mpsc::Receiver<Offer>,
    shared: Weak<Shared>,
    wake: Arc<Notify>,
) {
    while let Some(offer) = offers.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        accept(offer, &shared).await;
        wake.notify_one();
    }
}

/// Names an offered image's stream and persists its job, unless the
/// queue is full.
async fn accept(offer: Offer, shared: &Shared) {
    let store = Arc::clone(&shared.store);
    let namer = shared.namer.clone();
    let project = shared.config.project.clone().unwrap_or_default();
    let max_pending = shared.config.max_pending_jobs;
    let accepted = tokio::task::spawn_blocking(move || {
        let source = Namer::source(&offer.upstream, &offer.repo);
        let stream = namer.stream_name(&offer.upstream, &offer.repo, |name| {
            store.stream_holder(name).ok().flatten()
        });
        if store.stream_holder(&stream)?.is_none() {
            store.claim_stream(&stream, &source)?;
        }
        let target_repo = format!("{project}/{stream}");
        let job = Job::new(
            offer.upstream,
            offer.repo,
            offer.tag,
            offer.digest,
            target_repo,
        );
        store.enqueue(job.clone(), max_pending).map(|e| (e, job))
    })
    .await;
    match accepted {
        Ok(Ok((Enqueued::Accepted(job), _))) => {
            tracing::info!(id = job.id, target = %job.target_repo, tag = %job.tag, digest = %job.digest, "back-fill job accepted");
            shared.publish_counts();
        }
        Ok(Ok((Enqueued::Known, _))) => {}
        Ok(Ok((Enqueued::Full, job))) => {
            shared.metrics.backfill_refused("queue_full");
            tracing::warn!(target = %job.target_repo, tag = %job.tag, digest = %job.digest, max_pending_jobs = max_pending, "back-fill queue is full; image not queued (it is offered again on a later pull)");
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot persist a back-fill job"),
        Err(e) => tracing::error!(error = %e, "back-fill intake task failed"),
    }
}

/// Runs due jobs, at most `workers` at once, until its [`Dispatching`]
/// handle drops (or back-fill's own).
///
/// [`Dispatching`]: super::Dispatching
pub(super) struct Dispatcher {
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<()>,
    permits: Arc<Semaphore>,
    running: Arc<Mutex<HashSet<u64>>>,
}

impl Dispatcher {
    pub(super) fn new(
        shared: Weak<Shared>,
        wake: Arc<Notify>,
        proxy: Arc<Proxy>,
        stop: watch::Receiver<()>,
    ) -> Self {
        let workers = shared.upgrade().map_or(1, |s| s.config.workers);
        Dispatcher {
            shared,
            wake,
            proxy,
            stop,
            permits: Arc::new(Semaphore::new(workers)),
            running: Arc::default(),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let next_due = self.start_due(&shared).await;
            drop(shared);
            let now = unix_now();
            let sleep = next_due
                .map(|due| Duration::from_secs(due.saturating_sub(now).max(1)))
                .unwrap_or(IDLE_RESCAN)
                .min(IDLE_RESCAN);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    /// Starts the jobs due now, as many as there are free workers; returns
    /// when the next one not started is due.
    async fn start_due(&self, shared: &Arc<Shared>) -> Option<u64> {
        let free = self.permits.available_permits();
        if free == 0 {
            // A finishing job wakes the dispatcher.
            return None;
        }
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let store = Arc::clone(&shared.store);
        let due = tokio::task::spawn_blocking(move || store.due(unix_now(), free, &running)).await;
        let due = match due {
            Ok(Ok(due)) => due,
            other => {
                tracing::error!(?other, "cannot read the back-fill queue");
                return None;
            }
        };
        for job in due.jobs {
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                break;
            };
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.id);
            let ctx = Context {
                proxy: Arc::clone(&self.proxy),
                target: Arc::clone(&shared.target),
                store: Arc::clone(&shared.store),
                config: Arc::clone(&shared.config),
            };
            let (shared, running) = (Arc::clone(shared), Arc::clone(&self.running));
            let wake = Arc::clone(&self.wake);
            tokio::spawn(async move {
                let id = job.id;
                execute(&ctx, job).await;
                shared.publish_counts();
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                drop(permit);
                wake.notify_one();
            });
        }
        due.next
    }
}

/// One attempt of a job, and the record of its outcome.
async fn execute(ctx: &Context, mut job: Job) {
    job.attempts += 1;
    let started = std::time::Instant::now();
    let outcome = job::run(ctx, &job).await;
    let now = unix_now();
    job.updated = now;
    let metrics = ctx.proxy.cache().metrics();
    let label = match &outcome {
        Ok(_) => "done",
        Err(err) if job::is_permanent(err) => "failed",
        Err(_) => "retry",
    };
    metrics.backfill_attempt(label, started.elapsed());
    match outcome {
        Ok(notes) => {
            job.state = JobState::Done;
            job.last_error = None;
            job.notes = notes;
            tracing::info!(id = job.id, target = %job.target_repo, tag = %job.tag, seconds = started.elapsed().as_secs_f64(), "back-filled");
        }
        Err(err) if job::is_permanent(&err) => {
            job.state = JobState::Failed;
            job.last_error = Some(err.to_string());
            tracing::warn!(id = job.id, target = %job.target_repo, error = %err, "back-fill failed for good");
        }
        Err(err) => {
            job.last_error = Some(err.to_string());
            let age = Duration::from_secs(now.saturating_sub(job.created));
            if age >= ctx.config.give_up_after {
                job.state = JobState::Failed;
                tracing::warn!(id = job.id, error = %err, "back-fill gave up after retrying");
            } else {
                let delay = backoff(job.attempts, ctx.config.max_backoff);
                job.next_attempt = now + delay.as_secs().max(1);
                tracing::info!(id = job.id, error = %err, retry_in = delay.as_secs(), "back-fill will retry");
            }
        }
    }
    report(ctx, &job);
    let store = Arc::clone(&ctx.store);
    let saved = tokio::task::spawn_blocking(move || store.update(&job)).await;
    if !matches!(saved, Ok(Ok(()))) {
        tracing::error!(?saved, "cannot record a back-fill job's outcome");
    }
}

/// An audit event for a job that is done or has failed for good.
fn report(ctx: &Context, job: &Job) {
    let Some(events) = ctx.proxy.events() else {
        return;
    };
    let kind = match job.state {
        JobState::Done => Kind::BackfillDone,
        JobState::Failed => Kind::BackfillFailed,
        _ => return,
    };
    let (repository, digest) = (job.repo.to_string(), job.digest.to_string());
    let data = BackfillOutcome {
        upstream: &job.upstream,
        repository: &repository,
        tag: &job.tag,
        digest: &digest,
        target: &job.target_repo,
        attempts: job.attempts,
        error: job.last_error.as_deref(),
    };
    let subject = format!("{}:{}", job.target_repo, job.tag);
    events.emit(kind, Some(&subject), &data);
}

/// Exponential backoff with up to 50% jitter, capped.
fn backoff(attempts: u32, cap: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)));
    let base = exp.min(cap);
    let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 2);
    (base + Duration::from_millis(jitter)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(60);
        let first = backoff(1, cap);
        assert!(first >= BACKOFF_BASE && first <= BACKOFF_BASE * 3 / 2);
        let fourth = backoff(4, cap);
        assert!(fourth >= Duration::from_secs(16) && fourth <= Duration::from_secs(24));
        assert_eq!(backoff(40, cap), cap);
    }
}
