//! The back-fill tasks: the intake that turns offers into persisted jobs, and
//! the dispatcher that runs due jobs with bounded concurrency and backoff.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, Notify, Semaphore};

use super::job::{self, Context};
use super::naming::Namer;
use super::store::{Job, JobState};
use super::{Backfill, Offer};
use crate::cache::index::unix_now;

/// First retry delay of a failing job; doubled per attempt up to `max_backoff`.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest the dispatcher sleeps without looking at the queue.
const IDLE_RESCAN: Duration = Duration::from_secs(30);

/// Persists offered images as jobs.
pub(super) async fn intake(mut offers: mpsc::Receiver<Offer>, namer: Namer, handle: Backfill) {
    let project = handle.config.project.clone().unwrap_or_default();
    while let Some(offer) = offers.recv().await {
        let (store, namer, project) = (Arc::clone(&handle.store), namer.clone(), project.clone());
        let accepted = tokio::task::spawn_blocking(move || {
            let source = Namer::source(&offer.upstream, &offer.repo);
            let stream = namer.stream_name(&offer.upstream, &offer.repo, |name| {
                store.stream_holder(name).ok().flatten()
            });
            if store.stream_holder(&stream)?.is_none() {
                store.claim_stream(&stream, &source)?;
            }
            let target_repo = format!("{project}/{stream}");
            store.enqueue(Job::new(
                offer.upstream,
                offer.repo,
                offer.tag,
                offer.digest,
                target_repo,
            ))
        })
        .await;
        match accepted {
            Ok(Ok(Some(job))) => {
                tracing::info!(id = job.id, target = %job.target_repo, tag = %job.tag, digest = %job.digest, "back-fill job accepted");
                handle.wake.notify_one();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot persist a back-fill job"),
            Err(e) => tracing::error!(error = %e, "back-fill intake task failed"),
        }
    }
}

/// Runs due jobs, at most `workers` at once, until the runtime ends.
pub(super) async fn dispatch(ctx: Context, wake: Arc<Notify>) {
    let permits = Arc::new(Semaphore::new(ctx.config.workers));
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    loop {
        let store = Arc::clone(&ctx.store);
        let pending = match tokio::task::spawn_blocking(move || store.pending()).await {
            Ok(Ok(pending)) => pending,
            other => {
                tracing::error!(?other, "cannot read the back-fill queue");
                Vec::new()
            }
        };
        let now = unix_now();
        let mut next_due: Option<u64> = None;
        for job in pending {
            if running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&job.id)
            {
                continue;
            }
            if job.next_attempt > now {
                next_due = Some(next_due.map_or(job.next_attempt, |d| d.min(job.next_attempt)));
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                break;
            };
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.id);
            let (ctx, running, wake) = (ctx.clone(), Arc::clone(&running), Arc::clone(&wake));
            tokio::spawn(async move {
                let id = job.id;
                execute(&ctx, job).await;
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                drop(permit);
                wake.notify_one();
            });
        }
        let sleep = next_due
            .map(|due| Duration::from_secs(due.saturating_sub(now).max(1)))
            .unwrap_or(IDLE_RESCAN)
            .min(IDLE_RESCAN);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
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
    let store = Arc::clone(&ctx.store);
    let saved = tokio::task::spawn_blocking(move || store.update(&job)).await;
    if !matches!(saved, Ok(Ok(()))) {
        tracing::error!(?saved, "cannot record a back-fill job's outcome");
    }
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
