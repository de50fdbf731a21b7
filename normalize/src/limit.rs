//! The per-device flood guard: the shared rate rule (`ioc_contract::rate`) per device, on
//! receive time, so one device sending far too fast cannot take the ingest process from the
//! others. Its excess is dead-lettered (`rate_limited`) before any decoding.
//!
//! This guard is per ingest process: with several processes on a shared subscription a device's
//! messages are spread over them, and each lets through up to the limit. The fleet-wide limit is
//! the stream's (`ioc_stream::limit`), applied where the device's partition is read, with the same
//! rule: with one ingest process it admits what this guard admitted, but for a message or so at
//! the margin where records reach the partition out of receive order. Each decision here
//! is final for the message it is made for (it becomes a dead letter or readings, confirmed by
//! the bus before the message is acknowledged).

use std::collections::HashMap;
use std::sync::Mutex;

use ioc_contract::rate::RateRule;

#[derive(Debug)]
pub struct RateLimiter {
    rule: Option<RateRule>,
    rate: f64,
    burst: f64,
    /// Each device's theoretical arrival time (µs), by device id; only registered devices get
    /// one (looked up per message: a fast hasher).
    tats: Mutex<HashMap<String, i64, foldhash::fast::RandomState>>,
}

impl RateLimiter {
    /// `rate` messages per second (0: no limit), bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rule: RateRule::new(rate, burst),
            rate,
            burst: burst.max(1.0),
            tats: Mutex::default(),
        }
    }

    /// Takes a token for a message of `device` received at `now_ms`; false if it has none.
    pub fn admit(&self, device: &str, now_ms: i64) -> bool {
        let Some(rule) = self.rule else {
            return true;
        };
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        match tats.get_mut(device) {
            Some(tat) => match rule.admit(Some(*tat), now_ms) {
                Some(next) => {
                    *tat = next;
                    true
                }
                None => false,
            },
            None => {
                if let Some(next) = rule.admit(None, now_ms) {
                    tats.insert(device.to_string(), next);
                }
                true
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} messages/s with bursts of {} (ingest.device_rate_limit, ingest.device_burst)",
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
