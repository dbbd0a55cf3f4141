//! A token bucket per client address: `rate` requests per second on
//! average, up to `burst` at once. Buckets of idle clients expire.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients idle this long forget their bucket (it is full again anyway).
const IDLE_EXPIRY: Duration = Duration::from_secs(600);

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-client token buckets.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// `rate` requests per second, bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(IDLE_EXPIRY)
                .build(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let burst = self.burst;
        let bucket = self.buckets.get_with(client, || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
            }))
        });
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens =
            (b.tokens + now.duration_since(b.updated).as_secs_f64() * self.rate).min(self.burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate).max(Duration::from_secs(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_per_client() {
        let limiter = RateLimiter::new(1, 3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait >= Duration::from_secs(1));
        assert!(
            limiter.check(b).is_ok(),
            "another client has its own bucket"
        );
    }
}
