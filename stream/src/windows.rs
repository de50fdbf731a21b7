//! Event-time window bookkeeping, with no I/O: which 1-minute window a reading belongs to,
//! per-device watermarks, when windows close, which readings are late, and how far Kafka
//! offsets may be committed.
//!
//! - A device's watermark is its newest reading's time minus the allowed lateness. Windows
//!   that end at or before the watermark close. So do all of a device's windows when it has sent
//!   no reading for the idle timeout (processing time, passed in as `now`, so tests need no
//!   sleeping).
//! - Readings that are not good are in no window, but their minutes are *held* as if they were
//!   open windows: they close the same way (so their data quality is counted, even for a sensor
//!   that sends nothing good), and a commit waits for them. A reading stamped ahead of its
//!   receipt (a clock ahead, suspect) holds nothing and moves no watermark: closing past its
//!   minute would make the device's present readings late.
//! - `closed_until` (per device) is the end of the last closed window; it only grows, and it is
//!   what the stream checkpoints. A good reading for a window ending at or before it is *late*:
//!   the caller stores it and recomputes that window from stored rows.
//! - Open windows keep their values keyed by timestamp, so a redelivered reading (same key)
//!   replaces itself instead of counting twice.
//! - The committable offset of a partition (checkpointed by the caller) is the lowest offset still held by an open window,
//!   or the next offset to consume if none: everything below it is stored and, where it belongs
//!   to a window, that window is closed and emitted. After a crash the stream resumes there and
//!   rebuilds every open window completely.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ioc_contract::{window_start, Quality, Reading, WINDOW_MS};

/// A message id as a number, to tell a key's copies apart.
pub fn message_hash(message_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    message_id.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub start: i64,
}

/// An open window's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenWindow {
    /// Value by event time: the reading key within this window.
    pub values: HashMap<i64, f64>,
    /// The message each value came in (`message_hash`), by event time: a copy of a key in
    /// another message is the device's resend.
    pub messages: HashMap<i64, u64>,
    pub unit: String,
    pub partition: i32,
    /// Lowest Kafka offset among the readings in this window: commits must not pass it.
    pub min_offset: i64,
}

#[derive(Debug, Default)]
struct DeviceState {
    /// Newest good reading's event time seen.
    max_ts: Option<i64>,
    closed_until: i64,
    /// Processing time of the newest good reading.
    last_seen: i64,
    /// Open windows, as (start, channel, metric).
    open: BTreeSet<(i64, String, String)>,
    /// Minutes of readings that are not good, as (start, partition), with the lowest offset of
    /// one (see the module's note).
    held: BTreeMap<(i64, i32), i64>,
}

/// What [`WindowEngine::observe`] did with a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Added to an open window.
    Added,
    /// Same key already in its open window from the same message (a redelivery); replaced,
    /// not added twice.
    Duplicate,
    /// Same key already in its open window from another message (its hash): the device sent
    /// it again. Replaced, not added twice.
    Resent(u64),
    /// Its window already closed: recompute that window from stored rows.
    Late(WindowKey),
    /// Not good quality: stored, but not aggregated.
    NotAggregated,
}

/// Windows that just closed, and the devices whose `closed_until` moved.
#[derive(Debug, Default)]
pub struct Closed {
    pub windows: Vec<(WindowKey, OpenWindow)>,
    pub devices: Vec<(String, i64)>,
    /// Each moved device's `closed_until` before it moved.
    pub before: HashMap<String, i64>,
}

#[derive(Debug)]
pub struct WindowEngine {
    lateness_ms: i64,
    idle_ms: i64,
    windows: HashMap<WindowKey, OpenWindow>,
    devices: HashMap<String, DeviceState>,
    /// Next offset to consume, per partition.
    consumed: HashMap<i32, i64>,
}

impl WindowEngine {
    pub fn new(lateness_ms: i64, idle_ms: i64) -> WindowEngine {
        WindowEngine {
            lateness_ms,
            idle_ms,
            windows: HashMap::new(),
            devices: HashMap::new(),
            consumed: HashMap::new(),
        }
    }

    /// Restores a device's checkpointed `closed_until` (after a restart or a rebalance).
    pub fn restore_closed_until(&mut self, device_id: &str, closed_until: i64) {
        let d = self.devices.entry(device_id.to_string()).or_default();
        d.closed_until = d.closed_until.max(closed_until);
    }

    pub fn closed_until(&self, device_id: &str) -> Option<i64> {
        self.devices.get(device_id).map(|d| d.closed_until)
    }

    /// Whether everything the device sent is in closed windows (it fell idle, or reports
    /// sparsely enough that its last window closed).
    pub fn is_settled(&self, device_id: &str) -> bool {
        self.devices
            .get(device_id)
            .is_none_or(|d| d.open.is_empty())
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Records the reading at `offset` of `partition`, consumed at processing time `now`.
    pub fn observe(&mut self, r: &Reading, partition: i32, offset: i64, now: i64) -> Observed {
        let next = self.consumed.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
        let start = window_start(r.ts);
        if r.quality != Quality::Good {
            if r.ts - r.received_at <= WINDOW_MS {
                let device = self.devices.entry(r.device_id.clone()).or_default();
                if start + WINDOW_MS > device.closed_until {
                    device.max_ts = Some(device.max_ts.map_or(r.ts, |m| m.max(r.ts)));
                    device.last_seen = device.last_seen.max(now);
                    let held = device.held.entry((start, partition)).or_insert(offset);
                    *held = (*held).min(offset);
                }
            }
            return Observed::NotAggregated;
        }
        let device = self.devices.entry(r.device_id.clone()).or_default();
        let key = WindowKey {
            device_id: r.device_id.clone(),
            channel: r.channel.clone(),
            metric: r.metric.clone(),
            start,
        };
        if start + WINDOW_MS <= device.closed_until {
            return Observed::Late(key);
        }
        device.max_ts = Some(device.max_ts.map_or(r.ts, |m| m.max(r.ts)));
        device.last_seen = device.last_seen.max(now);
        device
            .open
            .insert((start, r.channel.clone(), r.metric.clone()));
        let window = self.windows.entry(key).or_insert_with(|| OpenWindow {
            values: HashMap::new(),
            messages: HashMap::new(),
            unit: r.unit.clone(),
            partition,
            min_offset: offset,
        });
        window.min_offset = window.min_offset.min(offset);
        let message = message_hash(&r.message_id);
        window.values.insert(r.ts, r.value);
        match window.messages.insert(r.ts, message) {
            None => Observed::Added,
            Some(before) if before == message => Observed::Duplicate,
            Some(before) => Observed::Resent(before),
        }
    }

    /// Records that `offset` of `partition` was consumed (for records that carried no reading).
    pub fn mark_consumed(&mut self, partition: i32, offset: i64) {
        let next = self.consumed.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// Advances watermarks and idle timeouts at processing time `now`; returns what closed.
    pub fn advance(&mut self, now: i64) -> Closed {
        let mut closed = Closed::default();
        for (device_id, device) in self.devices.iter_mut() {
            let mut until = device.closed_until;
            if let Some(max_ts) = device.max_ts {
                until = until.max(window_start(max_ts - self.lateness_ms));
            }
            let newest = device
                .open
                .last()
                .map(|(s, _, _)| *s)
                .max(device.held.last_key_value().map(|((s, _), _)| *s));
            if let Some(newest) = newest.filter(|_| now - device.last_seen >= self.idle_ms) {
                until = until.max(newest + WINDOW_MS);
            }
            if until == device.closed_until {
                continue;
            }
            closed.before.insert(device_id.clone(), device.closed_until);
            device.closed_until = until;
            closed.devices.push((device_id.clone(), until));
            device
                .held
                .retain(|(start, _), _| start + WINDOW_MS > until);
            while let Some(first) = device.open.first() {
                if first.0 + WINDOW_MS > until {
                    break;
                }
                let (start, channel, metric) = device.open.pop_first().expect("checked non-empty");
                let key = WindowKey {
                    device_id: device_id.clone(),
                    channel,
                    metric,
                    start,
                };
                if let Some(window) = self.windows.remove(&key) {
                    closed.windows.push((key, window));
                }
            }
        }
        closed.windows.sort_by(|a, b| a.0.cmp(&b.0));
        closed
    }

    /// Per partition, the offset up to which (exclusive) a commit is safe now.
    pub fn committable(&self) -> HashMap<i32, i64> {
        let mut out = self.consumed.clone();
        let held = self
            .devices
            .values()
            .flat_map(|d| d.held.iter().map(|((_, p), o)| (*p, *o)));
        let open = self.windows.values().map(|w| (w.partition, w.min_offset));
        for (partition, offset) in open.chain(held) {
            if let Some(o) = out.get_mut(&partition) {
                *o = (*o).min(offset);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_680_000_000; // a minute boundary (2026-11-26T08:00:00Z)

    fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
        Reading {
            device_id: device.into(),
            channel: String::new(),
            metric: metric.into(),
            ts,
            value,
            unit: "µg/m³".into(),
            interval_s: None,
            quality: Quality::Good,
            quality_reason: String::new(),
            received_at: ts,
            message_id: "m".into(),
        }
    }

    fn engine() -> WindowEngine {
        WindowEngine::new(10_000, 60_000)
    }

    #[test]
    fn readings_fall_into_minute_windows() {
        let mut e = engine();
        e.observe(&reading("a", "pm25", T0, 1.0), 0, 0, T0);
        e.observe(&reading("a", "pm25", T0 + 59_999, 2.0), 0, 1, T0);
        e.observe(&reading("a", "pm25", T0 + 60_000, 3.0), 0, 2, T0);
        assert_eq!(e.open_windows(), 2);
    }

    #[test]
    fn windows_close_when_the_watermark_passes_their_end_plus_lateness() {
        let mut e = engine();
        e.observe(&reading("a", "pm25", T0 + 5_000, 1.0), 0, 0, T0);
        e.observe(&reading("a", "pm25", T0 + 65_000, 2.0), 0, 1, T0);
        // Watermark = T0+55s: the first window (ends T0+60s) is still open for stragglers.
        assert!(e.advance(T0).windows.is_empty());
        e.observe(&reading("a", "pm25", T0 + 70_000, 3.0), 0, 2, T0);
        let closed = e.advance(T0);
        assert_eq!(closed.windows.len(), 1);
        assert_eq!(closed.windows[0].0.start, T0);
        assert_eq!(closed.devices, vec![("a".to_string(), T0 + 60_000)]);
        // Other devices' watermarks are their own.
        e.observe(&reading("b", "pm25", T0 + 5_000, 1.0), 0, 3, T0);
        assert!(e.advance(T0).windows.is_empty());
    }

    #[test]
    fn idle_timeout_closes_every_window_of_a_silent_device() {
        let mut e = engine();
        e.observe(&reading("a", "pm25", T0 + 5_000, 1.0), 0, 0, 1_000);
        e.observe(&reading("a", "no2", T0 + 61_000, 1.0), 0, 1, 1_000);
        assert!(e.advance(1_000 + 59_999).windows.is_empty());
        let closed = e.advance(1_000 + 60_000);
        assert_eq!(closed.windows.len(), 2);
        assert_eq!(e.closed_until("a"), Some(T0 + 120_000));
        assert_eq!(e.open_windows(), 0);
    }

    #[test]
    fn a_reading_for_a_closed_window_is_late_and_reemitted_by_the_caller() {
        let mut e = engine();
        e.observe(&reading("a", "pm25", T0 + 5_000, 1.0), 0, 0, 0);
        e.observe(&reading("a", "pm25", T0 + 75_000, 1.0), 0, 1, 0);
        assert_eq!(e.advance(0).windows.len(), 1);
        let late = e.observe(&reading("a", "pm25", T0 + 30_000, 9.0), 0, 2, 0);
        assert_eq!(
            late,
            Observed::Late(WindowKey {
                device_id: "a".into(),
                channel: "".into(),
                metric: "pm25".into(),
                start: T0
            })
        );
        // Days-late backfill is late too, not dropped.
        assert!(matches!(
            e.observe(&reading("a", "pm25", T0 - 86_400_000, 1.0), 0, 3, 0),
            Observed::Late(_)
        ));
        // A late reading does not reopen anything or hold back commits.
        assert_eq!(e.open_windows(), 1);
        assert_eq!(e.committable()[&0], 1);
    }

    #[test]
    fn a_redelivered_reading_is_not_counted_twice() {
        let mut e = engine();
        assert_eq!(
            e.observe(&reading("a", "pm25", T0 + 5_000, 1.0), 0, 0, 0),
            Observed::Added
        );
        assert_eq!(
            e.observe(&reading("a", "pm25", T0 + 5_000, 1.0), 0, 7, 0),
            Observed::Duplicate
        );
        // The device sends it again, in another message.
        let mut resent = reading("a", "pm25", T0 + 5_000, 1.0);
        resent.message_id = "m2".into();
        assert_eq!(
            e.observe(&resent, 0, 8, 0),
            Observed::Resent(message_hash("m"))
        );
        e.observe(&reading("a", "pm25", T0 + 80_000, 1.0), 0, 9, 0);
        let closed = e.advance(0);
        assert_eq!(closed.windows[0].1.values.len(), 1);
    }

    #[test]
    fn commits_stop_at_the_oldest_reading_of_an_open_window() {
        let mut e = engine();
        e.observe(&reading("a", "pm25", T0 + 5_000, 1.0), 0, 10, 0);
        e.observe(&reading("b", "pm25", T0 + 5_000, 1.0), 1, 4, 0);
        e.observe(&reading("a", "pm25", T0 + 6_000, 1.0), 0, 11, 0);
        e.mark_consumed(0, 12);
        assert_eq!(e.committable(), HashMap::from([(0, 10), (1, 4)]));
        e.observe(&reading("a", "pm25", T0 + 75_000, 1.0), 0, 13, 0);
        e.advance(0);
        assert_eq!(e.committable(), HashMap::from([(0, 13), (1, 4)]));
        // A bad reading is never windowed, but its minute holds commits until it closes.
        let mut bad = reading("c", "pm25", T0, 1.0);
        bad.quality = Quality::Bad;
        assert_eq!(e.observe(&bad, 2, 5, 0), Observed::NotAggregated);
        assert_eq!(e.committable()[&2], 5);
    }

    #[test]
    fn minutes_of_readings_that_are_not_good_close_like_windows_and_hold_commits() {
        let mut e = engine();
        let not_good = |ts: i64, quality: Quality| {
            let mut r = reading("a", "ph", ts, 15.0);
            r.quality = quality;
            r
        };
        // A pH probe failed into out-of-range values: nothing good, minute after minute.
        for (i, m) in (0..3).enumerate() {
            let r = not_good(T0 + m * 60_000 + 1_000, Quality::Bad);
            assert_eq!(e.observe(&r, 0, i as i64, T0), Observed::NotAggregated);
        }
        // Its own newest time moves its watermark: the first minute closes.
        let closed = e.advance(T0);
        assert!(closed.windows.is_empty());
        assert_eq!(closed.devices, vec![("a".to_string(), T0 + 60_000)]);
        assert_eq!(
            e.committable()[&0],
            1,
            "the second minute holds its reading"
        );
        // Then silence: the rest closes at the idle timeout, and nothing holds commits.
        assert!(e.advance(T0 + 59_999).devices.is_empty());
        e.advance(T0 + 60_000);
        assert_eq!(e.closed_until("a"), Some(T0 + 180_000));
        assert_eq!(e.committable()[&0], 3);
        // A reading of that device's clock hours ahead (suspect) holds nothing and moves
        // nothing: the present is not made late.
        let mut ahead = not_good(T0 + 5 * 3_600_000, Quality::Suspect);
        ahead.received_at = T0 + 200_000;
        e.observe(&ahead, 0, 3, T0 + 200_000);
        assert!(e.advance(T0 + 10 * 3_600_000).devices.is_empty());
        assert_eq!(e.committable()[&0], 4);
        assert_eq!(
            e.observe(&reading("a", "ph", T0 + 200_000, 7.0), 0, 4, T0 + 200_000),
            Observed::Added
        );
    }

    #[test]
    fn suspect_and_bad_readings_are_kept_out_of_windows_open_or_closed() {
        let mut e = engine();
        e.observe(&reading("a", "cod", T0 + 1_000, 10.0), 0, 0, T0);
        for (i, quality) in [Quality::Suspect, Quality::Bad].into_iter().enumerate() {
            let mut r = reading("a", "cod", T0 + 2_000 + i as i64, 500.0);
            r.quality = quality;
            r.quality_reason = "calibrating".into();
            assert_eq!(e.observe(&r, 0, 1 + i as i64, T0), Observed::NotAggregated);
        }
        // Good readings move the watermark past the first window, which closes with only the good
        // value; a suspect reading for it afterwards is not late, since it never counts.
        e.observe(&reading("a", "cod", T0 + 80_000, 11.0), 0, 3, T0);
        let closed = e.advance(T0);
        assert_eq!(closed.windows.len(), 1);
        let values: Vec<f64> = closed.windows[0].1.values.values().copied().collect();
        assert_eq!(values, vec![10.0], "only the good reading is aggregated");
        let mut late = reading("a", "cod", T0 + 3_000, 900.0);
        late.quality = Quality::Suspect;
        assert_eq!(e.observe(&late, 0, 4, T0), Observed::NotAggregated);
    }

    #[test]
    fn a_restored_checkpoint_makes_replayed_closed_windows_late() {
        let mut e = engine();
        e.restore_closed_until("a", T0 + 60_000);
        assert!(matches!(
            e.observe(&reading("a", "pm25", T0 + 1_000, 1.0), 0, 0, 0),
            Observed::Late(_)
        ));
        assert_eq!(
            e.observe(&reading("a", "pm25", T0 + 61_000, 1.0), 0, 1, 0),
            Observed::Added
        );
    }
}
