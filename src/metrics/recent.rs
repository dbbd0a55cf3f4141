//! The last hour in one-minute slots: requests and bytes by the tier that
//! served them, and hits against misses, for the status page. Prometheus
//! keeps the history; this is what a person opening the page sees without
//! one, and costs a few relaxed atomic adds per response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Where a response's bytes came from, in the order the page shows them.
pub const TIERS: [&str; 5] = ["cache", "bucket", "peer", "project", "upstream"];
/// Minutes kept.
pub const MINUTES: usize = 60;

/// One minute's counts.
#[derive(Debug, Default)]
struct Minute {
    /// Minutes since the epoch this slot counts; another value means the
    /// slot is an hour old and is reset before use.
    number: AtomicU64,
    requests: [AtomicU64; TIERS.len()],
    bytes: [AtomicU64; TIERS.len()],
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The ring of the last [`MINUTES`] minutes.
#[derive(Debug)]
pub struct Recent {
    minutes: Box<[Minute]>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            minutes: (0..MINUTES).map(|_| Minute::default()).collect(),
        }
    }
}

/// The last hour, summed and minute by minute.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LastHour {
    /// Responses per tier, in [`TIERS`] order.
    pub requests: [u64; TIERS.len()],
    /// Bytes sent per tier, in [`TIERS`] order.
    pub bytes: [u64; TIERS.len()],
    /// Answered from what lasti held (hit, revalidated, stale).
    pub hits: u64,
    /// Fetched (miss, coalesced, passthrough).
    pub misses: u64,
    /// Bytes sent in each minute, oldest first, the current minute last.
    pub bytes_per_minute: Vec<u64>,
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Recent {
    /// Counts one response: `tier` one of [`TIERS`] (others are not
    /// counted by tier), `hit` whether it was answered from what lasti held.
    pub fn record(&self, tier: &str, hit: bool, bytes: u64) {
        self.record_at(minute_now(), tier, hit, bytes);
    }

    fn record_at(&self, minute: u64, tier: &str, hit: bool, bytes: u64) {
        let slot = self.slot(minute);
        if let Some(i) = TIERS.iter().position(|t| *t == tier) {
            slot.requests[i].fetch_add(1, Ordering::Relaxed);
            slot.bytes[i].fetch_add(bytes, Ordering::Relaxed);
        }
        let outcome = if hit { &slot.hits } else { &slot.misses };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot of `minute`, emptied first when it still counts an older
    /// one (a count racing the reset may be lost: this is a display).
    fn slot(&self, minute: u64) -> &Minute {
        let slot = &self.minutes[(minute % MINUTES as u64) as usize];
        let seen = slot.number.load(Ordering::Acquire);
        if seen != minute
            && slot
                .number
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for counter in slot.requests.iter().chain(&slot.bytes) {
                counter.store(0, Ordering::Relaxed);
            }
            slot.hits.store(0, Ordering::Relaxed);
            slot.misses.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// The last hour, this minute included.
    pub fn last_hour(&self) -> LastHour {
        self.last_hour_at(minute_now())
    }

    fn last_hour_at(&self, now: u64) -> LastHour {
        let mut hour = LastHour::default();
        let first = now.saturating_sub(MINUTES as u64 - 1);
        for minute in first..=now {
            let slot = &self.minutes[(minute % MINUTES as u64) as usize];
            if slot.number.load(Ordering::Acquire) != minute {
                hour.bytes_per_minute.push(0);
                continue;
            }
            let mut sent = 0;
            for i in 0..TIERS.len() {
                let bytes = slot.bytes[i].load(Ordering::Relaxed);
                hour.requests[i] += slot.requests[i].load(Ordering::Relaxed);
                hour.bytes[i] += bytes;
                sent += bytes;
            }
            hour.hits += slot.hits.load(Ordering::Relaxed);
            hour.misses += slot.misses.load(Ordering::Relaxed);
            hour.bytes_per_minute.push(sent);
        }
        hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_is_counted_by_tier_and_older_minutes_fall_out() {
        let recent = Recent::default();
        let start = 29_000_000;
        recent.record_at(start, "cache", true, 100);
        recent.record_at(start, "upstream", false, 1000);
        recent.record_at(start + 1, "cache", true, 50);
        recent.record_at(start + 1, "-", false, 7);
        let hour = recent.last_hour_at(start + 1);
        assert_eq!(hour.requests, [2, 0, 0, 0, 1]);
        assert_eq!(hour.bytes, [150, 0, 0, 0, 1000]);
        assert_eq!((hour.hits, hour.misses), (2, 2));
        assert_eq!(hour.bytes_per_minute.len(), MINUTES);
        assert_eq!(hour.bytes_per_minute[MINUTES - 2..], [1100, 50]);

        // An hour on, the first minute's slot is reused, the second's has
        // fallen out of the window.
        let later = start + MINUTES as u64;
        recent.record_at(later, "peer", false, 5);
        let hour = recent.last_hour_at(later);
        assert_eq!(
            hour.requests,
            [1, 0, 1, 0, 0],
            "only minute start+1 and now"
        );
        assert_eq!(hour.bytes[2], 5);
        assert_eq!(
            recent.last_hour_at(later + MINUTES as u64),
            LastHour {
                bytes_per_minute: vec![0; MINUTES],
                ..LastHour::default()
            }
        );
    }
}
