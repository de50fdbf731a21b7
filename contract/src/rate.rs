//! The per-device rate rule (`ingest.device_rate_limit` messages per second, bursts of
//! `ingest.device_burst`), shared by ingest's flood guard and the stream's fleet-wide limit so
//! both make the same decision for the same sequence of messages.
//!
//! It is a token bucket written as GCRA (the generic cell rate algorithm): a device's whole
//! state is one integer, its *theoretical arrival time* (TAT, microseconds), the time at which
//! its bucket is full again. A message at `t` is admitted unless `t < TAT - tolerance`; an
//! admitted one moves the TAT to `max(TAT, t) + interval`. A device without a TAT, or whose TAT
//! has passed, has a full bucket: the two are the same state, so a TAT that has passed can be
//! forgotten without changing any decision. Integer arithmetic: every process that replays the
//! same messages decides the same.

use serde::{Deserialize, Serialize};

/// The rule; absent (`RateRule::new` gives `None`) when the limit is off. Serializable, so a
/// checkpoint can say which rule its state was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRule {
    /// Microseconds per token (1 / rate).
    interval_us: i64,
    /// How far ahead of a message's time the TAT may be: (burst − 1) intervals.
    tolerance_us: i64,
}

impl RateRule {
    /// `rate` messages per second with bursts of `burst` (at least 1); `None` if `rate` is 0
    /// (no limit).
    pub fn new(rate: f64, burst: f64) -> Option<RateRule> {
        if !(rate > 0.0 && rate.is_finite()) {
            return None;
        }
        let interval_us = ((1_000_000.0 / rate).round() as i64).max(1);
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Some(RateRule {
            interval_us,
            tolerance_us: ((burst - 1.0) * interval_us as f64).round() as i64,
        })
    }

    /// Decides one message of a device at `at_ms` (epoch milliseconds), given the device's TAT
    /// (`None`: a full bucket). The device's new TAT if admitted; `None` if over the limit (its
    /// TAT is then unchanged).
    pub fn admit(&self, tat_us: Option<i64>, at_ms: i64) -> Option<i64> {
        let t = at_ms.saturating_mul(1000);
        match tat_us {
            Some(tat) if t < tat.saturating_sub(self.tolerance_us) => None,
            Some(tat) => Some(tat.max(t).saturating_add(self.interval_us)),
            None => Some(t.saturating_add(self.interval_us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives one device through the rule, as a caller keeps its TAT.
    fn run(rule: RateRule, times_ms: &[i64]) -> Vec<bool> {
        let mut tat = None;
        times_ms
            .iter()
            .map(|t| match rule.admit(tat, *t) {
                Some(next) => {
                    tat = Some(next);
                    true
                }
                None => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_passes_at_one_instant_then_the_rate_holds() {
        let rule = RateRule::new(10.0, 5.0).unwrap();
        let decisions = run(rule, &[1_000; 20]);
        assert_eq!(decisions.iter().filter(|a| **a).count(), 5);
        assert!(decisions[..5].iter().all(|a| *a), "the first five");

        // 20 messages at 1 000 ms, then at 2 000 ms (ten tokens back, capped at five), then one
        // at 2 100 ms (one token), then a clock step backwards (nothing).
        let mut times = vec![1_000; 20];
        times.extend([2_000; 20]);
        times.extend([2_100, 2_100, 1_000]);
        let decisions = run(rule, &times);
        assert_eq!(decisions[20..40].iter().filter(|a| **a).count(), 5);
        assert_eq!(&decisions[40..], &[true, false, false]);
    }

    #[test]
    fn a_steady_sender_under_the_rate_is_never_limited() {
        let rule = RateRule::new(1.0, 1.0).unwrap();
        let times: Vec<i64> = (0..1000).map(|i| i * 1_000).collect();
        assert!(run(rule, &times).iter().all(|a| *a));
        // Twice as fast: every other message.
        let times: Vec<i64> = (0..1000).map(|i| i * 500).collect();
        assert_eq!(run(rule, &times).iter().filter(|a| **a).count(), 500);
    }

    #[test]
    fn over_any_span_at_most_burst_plus_rate_times_span_pass() {
        let rule = RateRule::new(20.0, 10.0).unwrap();
        // A flood: one message every 7 ms for 3 s.
        let times: Vec<i64> = (0..430).map(|i| 50_000 + i * 7).collect();
        let decisions = run(rule, &times);
        let admitted = decisions.iter().filter(|a| **a).count() as f64;
        let span_s = (times.last().unwrap() - times[0]) as f64 / 1000.0;
        assert!(admitted <= 10.0 + 20.0 * span_s + 1.0, "{admitted}");
        assert!(admitted >= 10.0 + 20.0 * span_s - 1.0, "{admitted}");
    }

    #[test]
    fn a_tiny_rate_saturates_instead_of_overflowing() {
        let rule = RateRule::new(1e-300, 1e300).unwrap();
        assert_eq!(run(rule, &[0, 1, i64::MAX / 2_000]), vec![true, true, true]);
    }

    #[test]
    fn zero_is_no_rule_and_the_burst_is_at_least_one() {
        assert_eq!(RateRule::new(0.0, 5.0), None);
        assert_eq!(RateRule::new(f64::NAN, 5.0), None);
        let rule = RateRule::new(1.0, 0.0).unwrap();
        assert_eq!(run(rule, &[0, 0]), vec![true, false]);
    }
}
