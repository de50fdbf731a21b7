//! Violations per camera, type and hour, for the events sink: after a batch of camera events is
//! stored, each hour it touched is counted again per violation type, as the stored events have
//! it (one per event id: a resent event counts once), and stored and published with a higher
//! version. Counts only: no pseudonym leaves this module.
//!
//! Reading a camera's whole hour back after every batch would cost a read per batch that grows
//! with the hour, so the hours a process has read are kept ([`Kept`]: each hour's event ids by
//! type) and later batches are added to them; a process that has not kept an hour (a restart,
//! a late event for an hour long past) reads it from the stored events first, so a count is
//! always a function of the stored events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ioc_contract::Event;
use ioc_history::{EventRow, ViolationRow};

const HOUR_MS: i64 = 3_600_000;

/// How many hours before a camera's newest one stay kept.
const KEEP_HOURS: i64 = 3;

/// The hour (its start) an event is counted in.
pub fn hour_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(HOUR_MS)
}

/// A camera's hour: its event ids, per violation type.
#[derive(Debug, Default)]
struct Hour {
    ids: HashSet<String>,
    by_type: BTreeMap<String, u64>,
}

impl Hour {
    fn add(&mut self, event_id: &str, kind: &str) {
        if self.ids.insert(event_id.to_string()) {
            *self.by_type.entry(kind.to_string()).or_default() += 1;
        }
    }
}

/// The camera-hours this process has counted.
#[derive(Debug, Default)]
pub struct Kept {
    hours: HashMap<(String, i64), Hour>,
}

impl Kept {
    /// The camera-hours `events` touch, each with whether it is kept.
    pub fn touched(&self, events: &[Event]) -> BTreeMap<(String, i64), bool> {
        events
            .iter()
            .map(|e| {
                let key = (e.device_id.clone(), hour_of(e.ts));
                let kept = self.hours.contains_key(&key);
                (key, kept)
            })
            .collect()
    }

    /// Per camera, the range `[from, to)` of its touched hours not kept: what to read from the
    /// stored events.
    pub fn to_read(touched: &BTreeMap<(String, i64), bool>) -> BTreeMap<String, (i64, i64)> {
        let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for ((device, hour), _) in touched.iter().filter(|(_, kept)| !**kept) {
            let r = out.entry(device.clone()).or_insert((*hour, hour + HOUR_MS));
            *r = (r.0.min(*hour), r.1.max(hour + HOUR_MS));
        }
        out
    }

    /// Counts the touched hours: those not kept from `stored` (the stored events read for
    /// them, this batch's included), then this batch's `events` into every touched hour. The
    /// rows of the touched hours, one per type seen, with `version`.
    pub fn count(
        &mut self,
        touched: &BTreeMap<(String, i64), bool>,
        stored: &[EventRow],
        events: &[Event],
        version: u64,
    ) -> Vec<ViolationRow> {
        for ((device, hour), kept) in touched {
            if !kept {
                self.hours.insert((device.clone(), *hour), Hour::default());
            }
        }
        for e in stored {
            let key = (e.device_id.clone(), hour_of(e.ts));
            if touched.get(&key) == Some(&false) {
                if let Some(h) = self.hours.get_mut(&key) {
                    h.add(&e.event_id, &e.kind);
                }
            }
        }
        for e in events {
            if let Some(h) = self.hours.get_mut(&(e.device_id.clone(), hour_of(e.ts))) {
                h.add(&e.event_id, &e.kind);
            }
        }
        let rows = touched
            .keys()
            .filter_map(|key| self.hours.get(key).map(|h| (key, h)))
            .flat_map(|((device, hour), h)| {
                h.by_type.iter().map(move |(kind, count)| ViolationRow {
                    device_id: device.clone(),
                    window_start: *hour,
                    window_end: hour + HOUR_MS,
                    violation: kind.clone(),
                    count: *count,
                    version,
                })
            })
            .collect();
        self.forget();
        rows
    }

    /// Drops the hours more than [`KEEP_HOURS`] before their camera's newest.
    fn forget(&mut self) {
        let mut newest: HashMap<&str, i64> = HashMap::new();
        for (device, hour) in self.hours.keys() {
            let n = newest.entry(device.as_str()).or_insert(*hour);
            *n = (*n).max(*hour);
        }
        let old: BTreeSet<(String, i64)> = self
            .hours
            .keys()
            .filter(|(d, h)| *h < newest[d.as_str()] - KEEP_HOURS * HOUR_MS)
            .cloned()
            .collect();
        for k in old {
            self.hours.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_651_200_000;

    fn event(id: &str, device: &str, ts: i64, kind: &str) -> Event {
        Event {
            event_id: id.into(),
            device_id: device.into(),
            ts,
            kind: kind.into(),
            attributes: Default::default(),
            received_at: ts,
            message_id: String::new(),
        }
    }

    fn counts(rows: &[ViolationRow]) -> Vec<(String, i64, String, u64)> {
        rows.iter()
            .map(|r| {
                (
                    r.device_id.clone(),
                    (r.window_start - T0) / HOUR_MS,
                    r.violation.clone(),
                    r.count,
                )
            })
            .collect()
    }

    fn row(device: &str, hour: i64, kind: &str, n: u64) -> (String, i64, String, u64) {
        (device.into(), hour, kind.into(), n)
    }

    #[test]
    fn an_hour_is_counted_per_type_once_per_event_id() {
        let mut kept = Kept::default();
        let batch = vec![
            event("e1", "cam-1", T0 + 10, "red_light"),
            event("e2", "cam-1", T0 + 20, "no_helmet"),
            event("e3", "cam-1", T0 + 30, "red_light"),
            event("e4", "cam-2", T0 + HOUR_MS, "speeding"),
        ];
        let touched = kept.touched(&batch);
        assert!(touched.values().all(|k| !k), "nothing kept yet");
        assert_eq!(Kept::to_read(&touched)["cam-1"], (T0, T0 + HOUR_MS));
        // The store holds this batch (just written) and an event from an earlier process.
        let mut stored: Vec<EventRow> = batch.iter().map(EventRow::from).collect();
        stored.push(EventRow::from(&event("e0", "cam-1", T0 + 5, "red_light")));
        let rows = kept.count(&touched, &stored, &batch, 7);
        assert_eq!(
            counts(&rows),
            [
                row("cam-1", 0, "no_helmet", 1),
                row("cam-1", 0, "red_light", 3),
                row("cam-2", 1, "speeding", 1)
            ]
        );
        assert!(rows
            .iter()
            .all(|r| r.version == 7 && r.window_end == r.window_start + HOUR_MS));
        // The next batch: one new event, and e3 again (a camera's resend): kept, no read.
        let batch = vec![
            event("e3", "cam-1", T0 + 30, "red_light"),
            event("e5", "cam-1", T0 + 40, "red_light"),
        ];
        let touched = kept.touched(&batch);
        assert!(Kept::to_read(&touched).is_empty());
        let rows = kept.count(&touched, &[], &batch, 8);
        assert_eq!(
            counts(&rows),
            [
                row("cam-1", 0, "no_helmet", 1),
                row("cam-1", 0, "red_light", 4)
            ]
        );
    }

    #[test]
    fn old_hours_are_forgotten_and_read_again_when_an_event_comes_for_them() {
        let mut kept = Kept::default();
        let first = vec![event("a", "cam-1", T0, "red_light")];
        let touched = kept.touched(&first);
        let stored: Vec<EventRow> = first.iter().map(EventRow::from).collect();
        kept.count(&touched, &stored, &first, 1);
        let later = vec![event("b", "cam-1", T0 + 5 * HOUR_MS, "wrong_way")];
        let touched = kept.touched(&later);
        kept.count(&touched, &[], &later, 2);
        // Hour 0 is forgotten: a late event for it reads the hour again.
        let late = vec![event("c", "cam-1", T0 + 60, "red_light")];
        let touched = kept.touched(&late);
        assert_eq!(touched.values().collect::<Vec<_>>(), [&false]);
        let mut stored = stored;
        stored.extend(late.iter().map(EventRow::from));
        let rows = kept.count(&touched, &stored, &late, 3);
        assert_eq!(counts(&rows), [row("cam-1", 0, "red_light", 2)]);
    }
}
