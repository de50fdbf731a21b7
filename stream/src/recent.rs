//! A bounded memory of the keys seen lately, to count resends (a reading's key, a camera event's
//! id) whatever became of them: stored rows absorb a resend by their key, this only counts it.
//!
//! Two generations of 64-bit key hashes: when the current one is full it becomes the previous one
//! and the oldest is forgotten, so a resend is counted if its original is among the last
//! `capacity` to `2 × capacity` keys this process saw. A stream process sees every record of its
//! partitions, and a device's records all go to one partition, so several ingest processes do not
//! split a device's resends. After a restart the stream replays from its checkpoint (the oldest
//! open window): a resend whose original is also in the replayed span is counted again, one whose
//! original came before it is not counted.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use ioc_contract::Reading;

#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            capacity: capacity.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
        }
    }

    /// True if `key` was seen lately; remembers it either way.
    pub fn seen(&mut self, key: u64) -> bool {
        if self.current.contains(&key) || self.previous.contains(&key) {
            return true;
        }
        if self.current.len() >= self.capacity {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key);
        false
    }
}

/// A reading's key (device, channel, metric, event time), hashed; only this process compares them.
pub fn reading_key(r: &Reading) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (&r.device_id, &r.channel, &r.metric, r.ts).hash(&mut h);
    h.finish()
}

/// A camera event's key, its id.
pub fn event_key(event_id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    event_id.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_is_seen_until_two_generations_have_passed() {
        let mut r = Recent::new(3);
        assert!(!r.seen(1));
        assert!(r.seen(1), "a resend right after");
        for k in 2..=3 {
            assert!(!r.seen(k));
        }
        assert!(!r.seen(4), "the fourth key starts a new generation");
        assert!(r.seen(1), "the previous generation is still remembered");
        for k in 5..=6 {
            assert!(!r.seen(k));
        }
        assert!(!r.seen(7), "a third generation forgets the first");
        assert!(!r.seen(1), "forgotten, so seen as new");
        assert!(r.current.len() + r.previous.len() <= 6, "bounded");
    }

    #[test]
    fn reading_keys_differ_by_each_part_of_the_key_and_not_by_value_or_quality() {
        let base = Reading {
            device_id: "aq-1".into(),
            channel: "main".into(),
            metric: "pm25".into(),
            ts: 1_000,
            value: 3.0,
            unit: "µg/m³".into(),
            interval_s: None,
            quality: ioc_contract::Quality::Good,
            quality_reason: String::new(),
            received_at: 2_000,
            message_id: "m-1".into(),
        };
        let k = reading_key(&base);
        let resent = Reading {
            value: 4.0,
            quality: ioc_contract::Quality::Bad,
            received_at: 9_000,
            message_id: "m-2".into(),
            ..base.clone()
        };
        assert_eq!(reading_key(&resent), k, "same key, whatever the value");
        for other in [
            Reading {
                device_id: "aq-2".into(),
                ..base.clone()
            },
            Reading {
                channel: "b".into(),
                ..base.clone()
            },
            Reading {
                metric: "pm10".into(),
                ..base.clone()
            },
            Reading {
                ts: 1_001,
                ..base.clone()
            },
        ] {
            assert_ne!(reading_key(&other), k, "{other:?}");
        }
        assert_ne!(event_key("e-1"), event_key("e-2"));
    }
}
