//! Caps on what the cache takes from one upstream: blobs fetched at once,
//! and bytes per second over all of its fills. Only a fill's reads from
//! the upstream itself wait for them; hits, and fills from the bucket, the
//! other replicas or the project, never do.
//!
//! The byte rate is a token bucket holding at most one second of bytes:
//! each chunk read takes its size, and when the bucket runs short the
//! reader sleeps until it would have been filled, which stops reading the
//! socket and lets TCP slow the upstream down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The caps of one upstream.
#[derive(Debug, Default)]
pub struct Caps {
    fetches: Option<Arc<Semaphore>>,
    rate: Option<Rate>,
}

#[derive(Debug)]
struct Rate {
    per_second: f64,
    /// Tokens (bytes) in the bucket, negative while readers owe it, and
    /// when it was last filled.
    state: Mutex<(f64, Instant)>,
}

impl Caps {
    /// `max_fetches` at once and `bytes_per_second` (0: no cap).
    pub fn new(max_fetches: usize, bytes_per_second: u64) -> Caps {
        Caps {
            fetches: (max_fetches > 0).then(|| Arc::new(Semaphore::new(max_fetches))),
            rate: (bytes_per_second > 0).then(|| Rate {
                per_second: bytes_per_second as f64,
                state: Mutex::new((bytes_per_second as f64, Instant::now())),
            }),
        }
    }

    /// A place among the fetches at once, waited for up to `within`;
    /// `None` when there is no cap, `Err` when none came free in time.
    pub async fn fetch_place(&self, within: Duration) -> Result<Option<OwnedSemaphorePermit>, ()> {
        let Some(fetches) = &self.fetches else {
            return Ok(None);
        };
        match tokio::time::timeout(within, Arc::clone(fetches).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(()),
        }
    }

    /// Waits until `bytes` more may be read under the byte rate.
    pub async fn take_bytes(&self, bytes: usize) {
        let Some(rate) = &self.rate else {
            return;
        };
        let wait = rate.take(bytes as f64, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether either cap is set.
    pub fn any(&self) -> bool {
        self.fetches.is_some() || self.rate.is_some()
    }
}

impl Rate {
    /// Takes `bytes` at `now`; how long the taker must wait for them.
    fn take(&self, bytes: f64, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, filled) = *state;
        let elapsed = now.saturating_duration_since(filled).as_secs_f64();
        let tokens = (tokens + elapsed * self.per_second).min(self.per_second) - bytes;
        *state = (tokens, now.max(filled));
        match tokens >= 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-tokens / self.per_second),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_lets_one_second_through_then_paces_the_rest() {
        let rate = Rate {
            per_second: 1000.0,
            state: Mutex::new((1000.0, Instant::now())),
        };
        let start = Instant::now();
        assert_eq!(
            rate.take(1000.0, start),
            Duration::ZERO,
            "one second's burst"
        );
        assert_eq!(rate.take(500.0, start), Duration::from_millis(500));
        assert_eq!(
            rate.take(500.0, start),
            Duration::from_millis(1000),
            "in debt"
        );
        let later = start + Duration::from_secs(1);
        assert_eq!(rate.take(0.0, later), Duration::ZERO, "paid back");
        let idle = start + Duration::from_secs(60);
        assert_eq!(rate.take(1000.0, idle), Duration::ZERO);
        assert_eq!(
            rate.take(1000.0, idle),
            Duration::from_secs(1),
            "a long pause saves one second at most"
        );
    }

    #[tokio::test]
    async fn fetches_past_the_cap_wait_for_a_place() {
        let caps = Caps::new(1, 0);
        let first = caps.fetch_place(Duration::from_secs(1)).await.unwrap();
        assert!(first.is_some());
        assert!(caps.fetch_place(Duration::from_millis(20)).await.is_err());
        drop(first);
        assert!(caps
            .fetch_place(Duration::from_millis(20))
            .await
            .unwrap()
            .is_some());
        assert!(Caps::new(0, 0)
            .fetch_place(Duration::ZERO)
            .await
            .unwrap()
            .is_none());
    }
}
