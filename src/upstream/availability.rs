//! Whether a request may go to an upstream now: not while it (or the whole
//! process) is offline, and not while it is being skipped after failing
//! again and again (a circuit breaker).
//!
//! The breaker counts failures in a row: no answer, a timeout, or a 502,
//! 503 or 504 (a registry's gateway saying its backend is gone). Past
//! `skip_after_failures` the upstream is skipped for `skip_for`: requests
//! fail at once as unreachable, so a tag is served from its record and a
//! dead upstream costs one timeout per period instead of one per pull.
//! When the period is over one request (a probe) goes through; its answer
//! closes the breaker, its failure opens it again for twice as long (up
//! to ten times `skip_for`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The longest period of skipping, as a multiple of `skip_for`.
const MAX_PERIODS: u32 = 10;

/// A probe that has not reported after this long no longer holds the
/// breaker half-open (its request was dropped before it was sent).
const PROBE_LOST_AFTER: Duration = Duration::from_secs(120);

/// The switches and the breaker of one upstream.
#[derive(Debug)]
pub struct Availability {
    offline: AtomicBool,
    process_offline: Arc<AtomicBool>,
    after: u32,
    skip_for: Duration,
    breaker: Mutex<Breaker>,
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    /// Requests go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Skipped until `until`.
    Open { until: Instant, period: Duration },
    /// One probe is out since `since`; the rest are skipped.
    Probing { since: Instant, period: Duration },
}

/// Why a request may not go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The upstream or the whole process is offline.
    Offline,
    /// The upstream failed again and again; tried again in `retry_in`.
    Skipped {
        /// Until the next probe.
        retry_in: Duration,
    },
}

/// The state for `GET /admin/offline` and the status page.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct State {
    /// Offline by its own switch or the process's.
    pub offline: bool,
    /// `closed`, `open` (skipped) or `probing`.
    pub breaker: &'static str,
    /// Failures in a row, while closed.
    pub failures: u32,
    /// Seconds until the next probe, while open.
    pub retry_in_secs: Option<u64>,
}

impl Availability {
    /// An upstream's availability: `offline` from its configuration,
    /// `process_offline` shared by every upstream of the process.
    pub fn new(
        offline: bool,
        process_offline: Arc<AtomicBool>,
        after: u32,
        skip_for: Duration,
    ) -> Availability {
        Availability {
            offline: AtomicBool::new(offline),
            process_offline,
            after,
            skip_for,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        }
    }

    /// Whether a request may go now; while the breaker is open, the first
    /// request after the period goes as the probe.
    pub fn admit(&self) -> Result<(), Refusal> {
        if self.is_offline() {
            return Err(Refusal::Offline);
        }
        let now = Instant::now();
        let mut breaker = self.lock();
        match *breaker {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until, period } if now >= until => {
                *breaker = Breaker::Probing { since: now, period };
                Ok(())
            }
            Breaker::Open { until, .. } => Err(Refusal::Skipped {
                retry_in: until - now,
            }),
            Breaker::Probing { since, period } if now - since >= PROBE_LOST_AFTER => {
                *breaker = Breaker::Probing { since: now, period };
                Ok(())
            }
            Breaker::Probing { .. } => Err(Refusal::Skipped {
                retry_in: Duration::ZERO,
            }),
        }
    }

    /// Notes an answer (any status but 502, 503, 504): the upstream is up.
    /// Whether it was being skipped until now.
    pub fn answered(&self) -> bool {
        let mut breaker = self.lock();
        let was = *breaker;
        *breaker = Breaker::Closed { failures: 0 };
        !matches!(was, Breaker::Closed { .. })
    }

    /// Notes a failure; whether it opened the breaker (for a log line and
    /// the metrics).
    pub fn failed(&self) -> bool {
        if self.after == 0 {
            return false;
        }
        let now = Instant::now();
        let mut breaker = self.lock();
        let (opened, next) = match *breaker {
            Breaker::Closed { failures } if failures + 1 >= self.after => (
                true,
                Breaker::Open {
                    until: now + self.skip_for,
                    period: self.skip_for,
                },
            ),
            Breaker::Closed { failures } => (
                false,
                Breaker::Closed {
                    failures: failures + 1,
                },
            ),
            Breaker::Probing { period, .. } => {
                let period = (period * 2).min(self.skip_for * MAX_PERIODS);
                (
                    true,
                    Breaker::Open {
                        until: now + period,
                        period,
                    },
                )
            }
            // A request admitted before the breaker opened: already open.
            open @ Breaker::Open { .. } => (false, open),
        };
        *breaker = next;
        opened
    }

    /// Sets this upstream's own switch.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::Relaxed);
    }

    /// Whether the upstream is offline, by its switch or the process's.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed) || self.process_offline.load(Ordering::Relaxed)
    }

    /// Whether requests are being skipped (open, or a probe out).
    pub fn is_skipping(&self) -> bool {
        !matches!(*self.lock(), Breaker::Closed { .. })
    }

    /// The state, for reports.
    pub fn state(&self) -> State {
        let now = Instant::now();
        let (breaker, failures, retry_in) = match *self.lock() {
            Breaker::Closed { failures } => ("closed", failures, None),
            Breaker::Open { until, .. } => (
                "open",
                0,
                Some(until.saturating_duration_since(now).as_secs()),
            ),
            Breaker::Probing { .. } => ("probing", 0, Some(0)),
        };
        State {
            offline: self.is_offline(),
            breaker,
            failures,
            retry_in_secs: retry_in,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn availability(after: u32, skip_for: Duration) -> Availability {
        Availability::new(false, Arc::new(AtomicBool::new(false)), after, skip_for)
    }

    #[test]
    fn failures_in_a_row_open_the_breaker_and_one_probe_closes_it() {
        let a = availability(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert_eq!(a.admit(), Ok(()));
            assert!(!a.failed());
        }
        a.answered();
        for _ in 0..2 {
            assert!(!a.failed(), "the answer started the count again");
        }
        assert!(a.failed(), "the third in a row opens it");
        assert!(matches!(a.admit(), Err(Refusal::Skipped { .. })));
        assert_eq!(a.state().breaker, "open");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(a.admit(), Ok(()), "the probe");
        assert!(matches!(
            a.admit(),
            Err(Refusal::Skipped { retry_in }) if retry_in == Duration::ZERO
        ));
        a.answered();
        assert_eq!(a.admit(), Ok(()));
        assert_eq!(a.state().breaker, "closed");
    }

    #[test]
    fn a_failed_probe_skips_for_twice_as_long_up_to_ten_periods() {
        let a = availability(1, Duration::from_secs(30));
        assert!(a.failed());
        let mut period = Duration::from_secs(30);
        for _ in 0..6 {
            *a.lock() = Breaker::Open {
                until: Instant::now(),
                period,
            };
            assert_eq!(a.admit(), Ok(()));
            assert!(a.failed());
            let Breaker::Open { period: next, .. } = *a.lock() else {
                panic!("open again");
            };
            assert_eq!(next, (period * 2).min(Duration::from_secs(300)));
            period = next;
        }
        assert_eq!(period, Duration::from_secs(300));
    }

    #[test]
    fn offline_refuses_by_either_switch_and_zero_never_skips() {
        let process = Arc::new(AtomicBool::new(false));
        let a = Availability::new(true, Arc::clone(&process), 0, Duration::from_secs(1));
        assert_eq!(a.admit(), Err(Refusal::Offline));
        a.set_offline(false);
        assert_eq!(a.admit(), Ok(()));
        process.store(true, Ordering::Relaxed);
        assert_eq!(a.admit(), Err(Refusal::Offline));
        process.store(false, Ordering::Relaxed);
        for _ in 0..100 {
            assert!(!a.failed());
        }
        assert_eq!(a.admit(), Ok(()));
    }
}
