//! The fleet-wide per-device rate limit, applied where the device's partition is read.
//!
//! Ingest's flood guard (`ioc_ingest::limit`) is per process: with several ingest processes on
//! a shared subscription each lets a device's share through up to the limit, so the device gets
//! about that many times its rate. Every record of a device is on one partition, read in offset
//! order by one stream process, so the stream applies the same rule (`ioc_contract::rate`, one
//! token per readings record, on its `received_at`) to the whole fleet's records at once. A record
//! over the limit is not stored or aggregated; it becomes a `rate_limited` dead letter.
//!
//! Its decisions must survive a restart: the stream replays from its checkpointed offset, and a
//! replayed record must be decided as it was, or a reading could be both dead-lettered and
//! stored. The decisions are a pure function of the partition's records in offset order and of
//! the state before the first: each partition's *clock* (the newest `received_at` seen) and its
//! devices' theoretical arrival times (TATs). So the state is checkpointed *as of the
//! checkpointed offset*, in the same row: the limiter keeps the state at the last checkpoint
//! (`base`) and the records since (`log`), and moving the checkpoint re-decides the logged records
//! below the new offset on `base`. The log spans what the open windows already hold.
//!
//! A TAT at or before the partition's clock is a full bucket, the same as no TAT (see
//! `ioc_contract::rate`), so it is forgotten: the saved state holds only devices that used part
//! of their burst lately (usually none), and a device's record that arrives with an older
//! `received_at` than the clock (another ingest's clock, a produce retried after an outage) is
//! decided as by a device whose bucket is full if its TAT has passed.

use std::collections::{HashMap, VecDeque};

use ioc_contract::rate::RateRule;
use serde::{Deserialize, Serialize};

/// One partition's state at one offset.
#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    /// The newest `received_at` (ms) of the partition's records below the offset.
    clock_ms: i64,
    /// Each device's TAT (µs); those at or before the clock mean a full bucket.
    tats: HashMap<String, i64>,
}

/// A [`State`] as checkpointed: JSON, devices sorted, only TATs after the clock.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    clock_ms: i64,
    tats: Vec<(String, i64)>,
}

impl State {
    fn decide(&mut self, rule: RateRule, device: &str, received_at: i64) -> bool {
        self.clock_ms = self.clock_ms.max(received_at);
        let clock_us = self.clock_ms.saturating_mul(1000);
        let tat = self.tats.get(device).copied().filter(|t| *t > clock_us);
        let Some(next) = rule.admit(tat, received_at) else {
            return false;
        };
        match self.tats.get_mut(device) {
            Some(t) => *t = next,
            None => {
                self.tats.insert(device.to_string(), next);
            }
        }
        true
    }

    /// Drops the TATs that have passed (changes no decision).
    fn forget_passed(&mut self) {
        let clock_us = self.clock_ms.saturating_mul(1000);
        self.tats.retain(|_, t| *t > clock_us);
    }

    fn save(&self) -> String {
        let clock_us = self.clock_ms.saturating_mul(1000);
        let mut tats: Vec<(String, i64)> = self
            .tats
            .iter()
            .filter(|(_, t)| **t > clock_us)
            .map(|(d, t)| (d.clone(), *t))
            .collect();
        tats.sort();
        serde_json::to_string(&Saved {
            clock_ms: self.clock_ms,
            tats,
        })
        .expect("strings and integers serialize")
    }

    fn load(saved: &str) -> Result<State, serde_json::Error> {
        if saved.is_empty() {
            return Ok(State::default());
        }
        let saved: Saved = serde_json::from_str(saved)?;
        Ok(State {
            clock_ms: saved.clock_ms,
            tats: saved.tats.into_iter().collect(),
        })
    }
}

#[derive(Debug)]
struct Partition {
    /// The state as of `base_offset` (every record below it decided).
    base: State,
    base_offset: i64,
    /// The state as of every record decided.
    live: State,
    /// The records decided at or above `base_offset`: offset, device, received_at.
    log: VecDeque<(i64, String, i64)>,
}

impl Partition {
    fn at(offset: i64, state: State) -> Partition {
        Partition {
            base: state.clone(),
            base_offset: offset,
            live: state,
            log: VecDeque::new(),
        }
    }
}

/// The stream's fleet-wide limit over the partitions it reads.
#[derive(Debug)]
pub struct FleetLimiter {
    rule: Option<RateRule>,
    partitions: HashMap<i32, Partition>,
}

impl FleetLimiter {
    /// `None`: no limit (`ingest.device_rate_limit` 0).
    pub fn new(rule: Option<RateRule>) -> FleetLimiter {
        FleetLimiter {
            rule,
            partitions: HashMap::new(),
        }
    }

    /// Restores a partition at its checkpointed `next_offset` from the state saved beside it
    /// (empty: every bucket full, as for a checkpoint written before this limit existed). The
    /// caller must not feed records below `next_offset`: they were decided before.
    pub fn restore(
        &mut self,
        partition: i32,
        next_offset: i64,
        saved: &str,
    ) -> Result<(), serde_json::Error> {
        let state = State::load(saved)?;
        self.partitions
            .insert(partition, Partition::at(next_offset, state));
        Ok(())
    }

    /// Decides one readings record of `device` received at `received_at`, at `offset` of
    /// `partition`; records of a partition must come in offset order. False: over the limit.
    pub fn admit(&mut self, partition: i32, offset: i64, device: &str, received_at: i64) -> bool {
        let Some(rule) = self.rule else {
            return true;
        };
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition::at(offset, State::default()));
        debug_assert!(offset >= p.base_offset, "a record below the checkpoint");
        p.log.push_back((offset, device.to_string(), received_at));
        p.live.decide(rule, device, received_at)
    }

    /// The state to checkpoint with `next_offset` of `partition`, which must not be below the
    /// last one: the state after every record below it. Empty if there is no limit.
    pub fn checkpoint(&mut self, partition: i32, next_offset: i64) -> String {
        let Some(rule) = self.rule else {
            return String::new();
        };
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition::at(next_offset, State::default()));
        debug_assert!(next_offset >= p.base_offset, "a checkpoint moved back");
        while let Some((offset, device, received_at)) = p.log.front() {
            if *offset >= next_offset {
                break;
            }
            p.base.decide(rule, device, *received_at);
            p.log.pop_front();
        }
        p.base_offset = p.base_offset.max(next_offset);
        p.base.forget_passed();
        p.live.forget_passed();
        p.base.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded generator (xorshift), so failures repeat.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A partition's records: a flooding device, a bursty one and quiet ones, with receive times
    /// from two ingest clocks that disagree by up to 40 ms, and now and then a record produced
    /// late (an old `received_at`).
    fn records(seed: u64, n: usize) -> Vec<(i64, String, i64)> {
        let mut rng = Rng(seed);
        let mut t = 1_795_680_000_000_i64;
        (0..n as i64)
            .map(|offset| {
                t += rng.below(8) as i64;
                let device = match rng.below(10) {
                    0..=5 => "flood".to_string(),
                    6 | 7 => "bursty".to_string(),
                    k => format!("quiet-{}", k + rng.below(50)),
                };
                let received_at = match rng.below(100) {
                    0 => t - 5_000 - rng.below(60_000) as i64,
                    _ => t - rng.below(40) as i64,
                };
                (offset, device, received_at)
            })
            .collect()
    }

    fn rule() -> Option<RateRule> {
        RateRule::new(40.0, 10.0)
    }

    fn uninterrupted(records: &[(i64, String, i64)]) -> Vec<bool> {
        let mut l = FleetLimiter::new(rule());
        records
            .iter()
            .map(|(o, d, r)| l.admit(0, *o, d, *r))
            .collect()
    }

    #[test]
    fn the_flood_is_held_to_the_rule_and_the_quiet_pass() {
        let records = records(7, 5_000);
        let decisions = uninterrupted(&records);
        let admitted = |who: &str| {
            records
                .iter()
                .zip(&decisions)
                .filter(|((_, d, _), a)| d.starts_with(who) && **a)
                .count()
        };
        let flood = records.iter().filter(|(_, d, _)| d == "flood").count();
        let span_s = (records.last().unwrap().2 - records[0].2) as f64 / 1000.0;
        assert!(flood > 2_000);
        // At most the burst plus the rate over the span (plus the late-produced ones, whose
        // older times can find a full bucket).
        assert!(
            (admitted("flood") as f64) < 10.0 + 40.0 * span_s + 60.0,
            "{} of {flood} in {span_s} s",
            admitted("flood")
        );
        assert!((admitted("flood") as f64) > 40.0 * span_s * 0.9);
        let quiet = records
            .iter()
            .filter(|(_, d, _)| d.starts_with("quiet"))
            .count();
        assert_eq!(admitted("quiet"), quiet, "no quiet device is limited");
    }

    /// The property the checkpoint exists for: a stream that checkpoints wherever its open
    /// windows allow, crashes anywhere, and restarts from its last checkpoint decides every
    /// replayed record as the uninterrupted run did.
    #[test]
    fn a_restart_from_any_checkpoint_decides_every_record_as_before() {
        let mut all_restarts = 0;
        for seed in 1..=40 {
            let records = records(seed, 3_000);
            let expected = uninterrupted(&records);
            let mut rng = Rng(seed * 7919);
            let mut limiter = FleetLimiter::new(rule());
            let mut saved: (i64, String) = (0, String::new());
            let mut next = 0usize;
            let mut restarts = 0;
            while next < records.len() {
                // A batch, then a checkpoint at some offset the batch covers (the oldest open
                // window may hold it back anywhere), now and then a crash.
                let end = (next + 1 + rng.below(300) as usize).min(records.len());
                for i in next..end {
                    let (o, d, r) = &records[i];
                    assert_eq!(
                        limiter.admit(0, *o, d, *r),
                        expected[i],
                        "seed {seed}, offset {o}, after {restarts} restarts"
                    );
                }
                next = end;
                let at = saved.0 + rng.below((next as i64 - saved.0) as u64 + 1) as i64;
                if at > saved.0 {
                    saved = (at, limiter.checkpoint(0, at));
                }
                if rng.below(4) == 0 {
                    limiter = FleetLimiter::new(rule());
                    limiter.restore(0, saved.0, &saved.1).unwrap();
                    next = saved.0 as usize;
                    restarts += 1;
                }
            }
            assert!(restarts > 0, "seed {seed}: the test restarted");
            all_restarts += restarts;
        }
        assert!(all_restarts > 150, "{all_restarts} restarts");
    }

    #[test]
    fn the_saved_state_is_small_and_partitions_are_apart() {
        let rule = RateRule::new(10.0, 2.0);
        let mut l = FleetLimiter::new(rule);
        // Many devices, one message a second between them: each bucket is full again by the
        // next, so only the last device's is saved.
        for i in 0..1000 {
            assert!(l.admit(0, i, &format!("d{i}"), 1_000 + i * 1_000));
        }
        // One device three times at once on partition 1: its third is over, and the partition 0
        // device of the same name is another partition's.
        assert!(l.admit(1, 0, "d0", 20_000));
        assert!(l.admit(1, 1, "d0", 20_000));
        assert!(!l.admit(1, 2, "d0", 20_000));
        let saved = l.checkpoint(0, 1000);
        assert_eq!(
            saved,
            r#"{"clock_ms":1000000,"tats":[["d999",1000100000]]}"#
        );
        let saved = l.checkpoint(1, 3);
        assert_eq!(saved, r#"{"clock_ms":20000,"tats":[["d0",20200000]]}"#);
        let mut restored = FleetLimiter::new(rule);
        restored.restore(1, 3, &saved).unwrap();
        assert!(
            !restored.admit(1, 3, "d0", 20_050),
            "still over after a restart"
        );
        assert!(restored.admit(1, 4, "d0", 20_100));
    }

    #[test]
    fn no_limit_saves_nothing_and_a_bad_state_is_an_error() {
        let mut l = FleetLimiter::new(None);
        assert!((0..1000).all(|i| l.admit(0, i, "d", 0)));
        assert_eq!(l.checkpoint(0, 1000), "");
        let mut l = FleetLimiter::new(rule());
        assert!(l.restore(0, 5, "{not json").is_err());
        l.restore(0, 5, "").unwrap();
        assert!(l.admit(0, 5, "d", 0), "an empty state: every bucket full");
    }
}
