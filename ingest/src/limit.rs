//! The per-device flood guard: a token bucket per device, on receive time, so one device sending
//! far too fast cannot take the ingest process from the others. Its excess is dead-lettered
//! (`rate_limited`) before any decoding.
//!
//! The buckets are per ingest process: with several processes on a shared subscription, a
//! device's messages are spread over them and its limit is about that many times the configured
//! rate. Each decision is final for the message it is made for (it becomes a dead letter or
//! readings, confirmed by the bus before the message is acknowledged).

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// By device id; only registered devices get one (looked up per message: a fast hasher).
    buckets: Mutex<HashMap<String, Bucket, foldhash::fast::RandomState>>,
}

impl RateLimiter {
    /// `rate` messages per second (0: no limit), bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for a message of `device` received at `now_ms`; false if it has none.
    pub fn admit(&self, device: &str, now_ms: i64) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = match buckets.get_mut(device) {
            Some(b) => b,
            None => buckets.entry(device.to_string()).or_insert(Bucket {
                tokens: self.burst,
                at_ms: now_ms,
            }),
        };
        // A clock step backwards refills nothing.
        let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} messages/s with bursts of {} per ingest process (ingest.device_rate_limit, ingest.device_burst)",
            self.rate, self.burst
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_devices_are_apart() {
        let l = RateLimiter::new(10.0, 5.0);
        let admitted = (0..20).filter(|_| l.admit("flood", 1_000)).count();
        assert_eq!(admitted, 5, "the burst, at one instant");
        assert!(l.admit("quiet", 1_000), "another device is not affected");
        // One second later: ten more tokens, capped at the burst of five.
        let admitted = (0..20).filter(|_| l.admit("flood", 2_000)).count();
        assert_eq!(admitted, 5);
        // 100 ms later: one token.
        assert!(l.admit("flood", 2_100));
        assert!(!l.admit("flood", 2_100));
        // A clock step backwards gives nothing.
        assert!(!l.admit("flood", 1_000));
    }

    #[test]
    fn zero_means_no_limit() {
        let l = RateLimiter::new(0.0, 1.0);
        assert!((0..10_000).all(|_| l.admit("d", 0)));
    }
}
