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

/// A [`State`] as checkpointed: JSON, devices sorted, only TATs after the clock, and the rule it
/// was made under.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    clock_ms: i64,
    tats: Vec<(String, i64)>,
    #[serde(default)]
    rule: Option<RateRule>,
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

    fn save(&self, rule: RateRule) -> String {
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
            rule: Some(rule),
        })
        .expect("strings and integers serialize")
    }

    /// The state, and the rule it was made under (`None`: empty, or saved before rules were).
    fn load(saved: &str) -> Result<(State, Option<RateRule>), serde_json::Error> {
        if saved.is_empty() {
            return Ok((State::default(), None));
        }
        let saved: Saved = serde_json::from_str(saved)?;
        let state = State {
            clock_ms: saved.clock_ms,
            tats: saved.tats.into_iter().collect(),
        };
        Ok((state, saved.rule))
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
    ///
    /// `Ok(false)` if the state was made under another rule (the limit was changed): the
    /// records replayed from the checkpoint are then decided under the new one, and one decided
    /// otherwise before the restart can end up both stored and rejected.
    pub fn restore(
        &mut self,
        partition: i32,
        next_offset: i64,
        saved: &str,
    ) -> Result<bool, serde_json::Error> {
        let (state, made_under) = State::load(saved)?;
        self.partitions
            .insert(partition, Partition::at(next_offset, state));
        Ok(made_under.is_none() || made_under == self.rule)
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
        p.base.save(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Rng;

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
        // At most the burst plus the rate over the span (a record produced late, with an older
        // time, finds the flooder's bucket empty all the same).
        assert!(
            (admitted("flood") as f64) <= 10.0 + 40.0 * span_s + 1.0,
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

    /// The property the checkpoint exists for: a stream that reads three partitions in any
    /// interleaving, checkpoints each wherever its open windows allow, crashes anywhere, and
    /// restarts every partition from its last checkpoint decides every replayed record as the
    /// uninterrupted run did.
    #[test]
    fn a_restart_from_any_checkpoints_decides_every_record_as_before() {
        const PARTITIONS: usize = 3;
        let mut all_restarts = 0;
        for seed in 1..=30 {
            let parts: Vec<Vec<(i64, String, i64)>> = (0..PARTITIONS)
                .map(|p| {
                    let mut r = records(seed * 10 + p as u64, 1_500);
                    for (_, d, _) in r.iter_mut() {
                        *d = format!("p{p}-{d}"); // a device lives on one partition
                    }
                    r
                })
                .collect();
            let expected: Vec<Vec<bool>> = {
                let mut l = FleetLimiter::new(rule());
                let mut out = vec![Vec::new(); PARTITIONS];
                for i in 0..1_500 {
                    for p in 0..PARTITIONS {
                        let (o, d, r) = &parts[p][i];
                        out[p].push(l.admit(p as i32, *o, d, *r));
                    }
                }
                out
            };
            let mut rng = Rng(seed * 7919);
            let mut limiter = FleetLimiter::new(rule());
            let mut saved: Vec<(i64, String)> = vec![(0, String::new()); PARTITIONS];
            let mut pos = vec![0usize; PARTITIONS];
            let mut restarts = 0;
            while pos.iter().any(|p| *p < 1_500) {
                // A batch from one partition, then perhaps a checkpoint of it at some offset the
                // batch covers (the oldest open window may hold it back anywhere), then perhaps
                // a crash of the whole process.
                let p = rng.below(PARTITIONS as u64) as usize;
                let end = (pos[p] + 1 + rng.below(200) as usize).min(1_500);
                for i in pos[p]..end {
                    let (o, d, r) = &parts[p][i];
                    assert_eq!(
                        limiter.admit(p as i32, *o, d, *r),
                        expected[p][i],
                        "seed {seed}, partition {p}, offset {o}, after {restarts} restarts"
                    );
                }
                pos[p] = end;
                let at = saved[p].0 + rng.below((end as i64 - saved[p].0) as u64 + 1) as i64;
                if at > saved[p].0 {
                    saved[p] = (at, limiter.checkpoint(p as i32, at));
                }
                if rng.below(6) == 0 {
                    limiter = FleetLimiter::new(rule());
                    for (p, (offset, state)) in saved.iter().enumerate() {
                        assert!(limiter.restore(p as i32, *offset, state).unwrap());
                        pos[p] = *offset as usize;
                    }
                    restarts += 1;
                }
            }
            assert!(restarts > 0, "seed {seed}: the test restarted");
            all_restarts += restarts;
        }
        assert!(all_restarts > 100, "{all_restarts} restarts");
    }

    /// On records in receive order, the stream decides exactly as ingest's guard does (the
    /// same rule on a map that never forgets): forgetting passed TATs changes nothing.
    #[test]
    fn in_receive_order_it_decides_as_a_guard_that_never_forgets() {
        let rule = rule().unwrap();
        for seed in 1..=20 {
            let mut records = records(seed, 3_000);
            let mut times: Vec<i64> = records.iter().map(|(_, _, t)| *t).collect();
            times.sort();
            for (r, t) in records.iter_mut().zip(times) {
                r.2 = t;
            }
            let mut limiter = FleetLimiter::new(Some(rule));
            let mut guard: HashMap<String, i64> = HashMap::new();
            for (i, (o, d, t)) in records.iter().enumerate() {
                let by_guard = match rule.admit(guard.get(d).copied(), *t) {
                    Some(tat) => {
                        guard.insert(d.clone(), tat);
                        true
                    }
                    None => false,
                };
                assert_eq!(
                    limiter.admit(0, *o, d, *t),
                    by_guard,
                    "seed {seed}, record {i}"
                );
                if i % 97 == 0 {
                    limiter.checkpoint(0, *o); // forgets passed TATs
                }
            }
        }
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
        let rule_json = r#""rule":{"interval_us":100000,"tolerance_us":100000}"#;
        assert_eq!(
            saved,
            format!(r#"{{"clock_ms":1000000,"tats":[["d999",1000100000]],{rule_json}}}"#)
        );
        let saved = l.checkpoint(1, 3);
        assert_eq!(
            saved,
            format!(r#"{{"clock_ms":20000,"tats":[["d0",20200000]],{rule_json}}}"#)
        );
        let mut restored = FleetLimiter::new(rule);
        assert!(restored.restore(1, 3, &saved).unwrap(), "the same rule");
        assert!(
            !restored.admit(1, 3, "d0", 20_050),
            "still over after a restart"
        );
        assert!(restored.admit(1, 4, "d0", 20_100));
        // Restored under a changed limit: said so, and decided under the new one.
        let mut changed = FleetLimiter::new(RateRule::new(10.0, 3.0));
        assert!(!changed.restore(1, 3, &saved).unwrap());
        assert!(changed.admit(1, 3, "d0", 20_050));
        // A state saved before rules were saved (or none) is taken as it is.
        assert!(restored
            .restore(0, 0, r#"{"clock_ms":5,"tats":[]}"#)
            .unwrap());
    }

    #[test]
    fn no_limit_saves_nothing_and_a_bad_state_is_an_error() {
        let mut l = FleetLimiter::new(None);
        assert!((0..1000).all(|i| l.admit(0, i, "d", 0)));
        assert_eq!(l.checkpoint(0, 1000), "");
        let mut l = FleetLimiter::new(rule());
        assert!(l.restore(0, 5, "{not json").is_err());
        assert!(l.restore(0, 5, "").unwrap());
        assert!(l.admit(0, 5, "d", 0), "an empty state: every bucket full");
    }
}
