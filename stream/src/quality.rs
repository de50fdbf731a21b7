//! Data-quality counts per series (device, channel, metric) and minute: what arrived, of which
//! quality, how late, and which good readings were stuck or spikes (`ioc_history::QualityRow`;
//! the scores are `ioc_contract::quality`).
//!
//! A minute is counted from the stored raw readings (every quality: bad and suspect readings
//! never enter a window) once its device's windows have closed past it, and counted again when a
//! late reading lands in it or in the minutes before it that its judgements read. Its counts are
//! a function of the stored readings alone: each judgement reads back a fixed span before its
//! own minute ([`lookback_ms`]), never what happened to be read with it. So a replay after a
//! crash, which counts again from the checkpoint, writes the same rows as an uninterrupted run.
//!
//! Stuck: a good reading is stuck when it is the `stream.stuck_after`-th or later of a run of
//! good readings with exactly one value (the rule `sensor_stuck` fires on). Spikes: a good
//! reading is a spike when it lies further from the median of the up to [`SPIKE_BASELINE`] good
//! readings before it than [`SPIKE_Z`] robust standard deviations (1.4826 × the median absolute
//! deviation), half the median, and a hundredth of the metric's physical range. A median
//! absolute deviation, unlike a standard deviation, is not inflated by the spikes it looks for;
//! the two floors keep a flat series (deviation 0) from calling every small step a spike.

use std::collections::{BTreeMap, HashMap};

use ioc_contract::quality::{delay_bucket, histogram_text, DELAY_BUCKETS_MS, TIMELY_MS};
use ioc_contract::{window_start, Quality, WINDOW_MS};
use ioc_history::{CopyRow, QualityRow, ReadingRow};

/// Good readings before a reading that its spike test compares it with.
pub const SPIKE_BASELINE: usize = 10;
/// Fewer good readings before it than this, and a reading is not judged a spike.
pub const SPIKE_MIN_BASELINE: usize = 5;
/// Robust standard deviations from the baseline's median that make a spike.
pub const SPIKE_Z: f64 = 6.0;
/// The longest look back, whatever the interval: six hours.
const MAX_LOOKBACK_MS: i64 = 6 * 3_600_000;

/// How far before its minute a minute's judgements read: enough readings, at the device's
/// expected interval, for its longest stuck run and the spike baseline, in whole minutes, at
/// most six hours.
pub fn lookback_ms(longest_stuck_after: u32, expected_interval_s: Option<f64>) -> i64 {
    let interval_ms = expected_interval_s
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(60_000.0, |s| s * 1000.0);
    let readings = (longest_stuck_after as usize).max(SPIKE_BASELINE) as f64;
    let ms = (readings * interval_ms).ceil() as i64;
    (ms.div_euclid(WINDOW_MS) + 1)
        .saturating_mul(WINDOW_MS)
        .min(MAX_LOOKBACK_MS)
}

/// One device's minutes to count, as ranges `[from, to)` of minute starts (whole minutes).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Due {
    ranges: Vec<(i64, i64)>,
}

impl Due {
    pub fn add(&mut self, from: i64, to: i64) {
        if from < to {
            self.ranges.push((from, to));
        }
    }

    fn contains(&self, minute: i64) -> bool {
        self.ranges.iter().any(|(f, t)| (*f..*t).contains(&minute))
    }

    /// The span of stored readings counting these minutes reads: from the first one's look
    /// back to the last one's end. `None` if nothing is due.
    pub fn read_range(&self, lookback_ms: i64) -> Option<(i64, i64)> {
        let from = self.ranges.iter().map(|r| r.0).min()?;
        let to = self.ranges.iter().map(|r| r.1).max()?;
        Some((from - lookback_ms, to))
    }
}

/// Counts the due minutes of one device that have readings, from `rows`: its stored readings
/// (deduplicated by key) over at least [`Due::read_range`], and `copies`: the messages of its
/// keys that came in more than one, over the same span. `stuck_after` is per metric (0: never stuck).
pub fn count(
    rows: &[ReadingRow],
    copies: &[CopyRow],
    due: &Due,
    lookback_ms: i64,
    stuck_after: impl Fn(&str) -> u32,
    version: u64,
) -> Vec<QualityRow> {
    let mut series: BTreeMap<(&str, &str, &str), Vec<&ReadingRow>> = BTreeMap::new();
    for r in rows {
        series
            .entry((&r.device_id, &r.channel, &r.metric))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((device_id, channel, metric), mut readings) in series {
        readings.sort_by_key(|r| r.ts);
        let stuck_after = stuck_after(metric) as usize;
        let range = ioc_contract::catalogue::lookup(metric).map_or(0.0, |m| m.max - m.min);
        // Good readings so far, in time order: what each judgement looks back over.
        let mut good: Vec<(i64, f64)> = Vec::new();
        let mut minutes: BTreeMap<i64, (QualityRow, [u64; DELAY_BUCKETS_MS.len() + 1])> =
            BTreeMap::new();
        for r in readings {
            let minute = window_start(r.ts);
            let quality = Quality::parse(&r.quality).unwrap_or(Quality::Bad);
            let counted = due.contains(minute);
            if counted {
                let (row, delays) = minutes.entry(minute).or_insert_with(|| {
                    (
                        QualityRow {
                            device_id: device_id.to_string(),
                            channel: channel.to_string(),
                            metric: metric.to_string(),
                            window_start: minute,
                            window_end: minute + WINDOW_MS,
                            received: 0,
                            good: 0,
                            suspect: 0,
                            bad: 0,
                            stuck: 0,
                            spikes: 0,
                            resent: 0,
                            timely: 0,
                            delays: String::new(),
                            first_ts: r.ts,
                            last_ts: r.ts,
                            version,
                        },
                        [0; DELAY_BUCKETS_MS.len() + 1],
                    )
                });
                row.received += 1;
                row.last_ts = r.ts;
                match quality {
                    Quality::Good => row.good += 1,
                    Quality::Suspect => row.suspect += 1,
                    Quality::Bad => row.bad += 1,
                }
                let delay = (r.received_at - r.ts).max(0);
                delays[delay_bucket(delay)] += 1;
                if delay <= TIMELY_MS {
                    row.timely += 1;
                }
                if quality == Quality::Good {
                    // What this minute's judgements may read: its own look back, nothing older.
                    let since = minute - lookback_ms;
                    let before = &good[good.partition_point(|(t, _)| *t < since)..];
                    if stuck_after > 0 && run_before(before, r.value) + 1 >= stuck_after {
                        row.stuck += 1;
                    }
                    if is_spike(before, r.value, range) {
                        row.spikes += 1;
                    }
                }
            }
            if quality == Quality::Good {
                good.push((r.ts, r.value));
            }
        }
        // A key's resends are its messages less one.
        let mut messages: BTreeMap<i64, u32> = BTreeMap::new();
        for c in copies {
            if (c.device_id.as_str(), c.channel.as_str(), c.metric.as_str())
                == (device_id, channel, metric)
            {
                *messages.entry(c.ts).or_default() += 1;
            }
        }
        for (ts, n) in messages {
            if let Some((row, _)) = minutes.get_mut(&window_start(ts)) {
                row.resent += n.saturating_sub(1);
            }
        }
        out.extend(minutes.into_values().map(|(mut row, delays)| {
            row.delays = histogram_text(&delays);
            row
        }));
    }
    out
}

/// How many of the readings just before (the end of `before`) have exactly `value`.
fn run_before(before: &[(i64, f64)], value: f64) -> usize {
    before.iter().rev().take_while(|(_, v)| *v == value).count()
}

/// The spike test (module docs) of `value` against the good readings before it.
fn is_spike(before: &[(i64, f64)], value: f64, range: f64) -> bool {
    let baseline = &before[before.len().saturating_sub(SPIKE_BASELINE)..];
    if baseline.len() < SPIKE_MIN_BASELINE {
        return false;
    }
    let mut values: Vec<f64> = baseline.iter().map(|(_, v)| *v).collect();
    let median = median_of(&mut values);
    let mut deviations: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
    let mad = median_of(&mut deviations);
    let threshold = (SPIKE_Z * 1.4826 * mad)
        .max(0.5 * median.abs())
        .max(0.01 * range);
    (value - median).abs() > threshold
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The minutes a late reading at `ts` makes due again: its own and those whose judgements look
/// back over it, up to the device's `closed_until` (later ones are counted when they close).
pub fn late_range(ts: i64, lookback_ms: i64, closed_until: i64) -> (i64, i64) {
    let minute = window_start(ts);
    (minute, (minute + lookback_ms + WINDOW_MS).min(closed_until))
}

/// What each device's last count read of its stored readings before the end of its due
/// minutes (its `closed_until`), as far back as its look back: the next count, if its due
/// minutes start right there, reads only them and takes the rest from here. Stored readings
/// before a device's `closed_until` change only by late readings, and a late reading makes its
/// minutes due again, so that count reads everything again. Reading the look back every time
/// cost more than all the other operators together. Empty after a restart.
#[derive(Debug, Default)]
pub struct Kept {
    by_device: HashMap<String, KeptRows>,
}

#[derive(Debug)]
struct KeptRows {
    /// The rows are every stored reading of the device in `[until - lookback_ms, until)`.
    until: i64,
    lookback_ms: i64,
    rows: Vec<ReadingRow>,
}

impl Kept {
    /// The span to read for a device's due minutes, and the kept rows that stand for the rest
    /// (taken out: the count gives them back with [`Kept::keep`]). `None` if nothing is due.
    pub fn plan(
        &mut self,
        device_id: &str,
        due: &Due,
        lookback_ms: i64,
    ) -> Option<((i64, i64), Option<Vec<ReadingRow>>)> {
        let full = due.read_range(lookback_ms)?;
        let kept = self.by_device.remove(device_id);
        match (due.ranges.as_slice(), kept) {
            ([(from, to)], Some(k)) if k.until == *from && k.lookback_ms == lookback_ms => {
                Some(((*from, *to), Some(k.rows)))
            }
            _ => Some((full, None)),
        }
    }

    /// Keeps what a count of `due` had (every stored reading of the device over the span it
    /// read) for the next count of the device.
    pub fn keep(
        &mut self,
        device_id: &str,
        due: &Due,
        lookback_ms: i64,
        mut rows: Vec<ReadingRow>,
    ) {
        let Some(until) = due.ranges.iter().map(|r| r.1).max() else {
            return;
        };
        rows.retain(|r| r.ts >= until - lookback_ms && r.ts < until);
        self.by_device.insert(
            device_id.to_string(),
            KeptRows {
                until,
                lookback_ms,
                rows,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_680_000_000; // a minute boundary (2026-11-26T08:00:00Z)

    fn reading(metric: &str, ts: i64, value: f64, quality: &str, delay: i64) -> ReadingRow {
        ReadingRow {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: metric.into(),
            ts,
            value,
            unit: "µg/m³".into(),
            interval_s: None,
            quality: quality.into(),
            quality_reason: String::new(),
            received_at: ts + delay,
            message_id: format!("m{ts}"),
            version: 1,
        }
    }

    fn due(from: i64, to: i64) -> Due {
        let mut d = Due::default();
        d.add(from, to);
        d
    }

    fn noisy(i: i64) -> f64 {
        // 30 ± 2, never repeating two readings in a row.
        30.0 + ((i * 7) % 5) as f64 - 2.0 + (i as f64) * 1e-3
    }

    #[test]
    fn counts_each_quality_delay_and_time_span_of_a_minute() {
        let rows = vec![
            reading("pm25", T0 + 5_000, 30.0, "good", 800),
            reading("pm25", T0 + 15_000, 31.0, "good", 4_000),
            reading("pm25", T0 + 25_000, 5_000.0, "bad", 900),
            reading("pm25", T0 + 35_000, 32.0, "suspect", 400_000),
            reading("pm25", T0 + 65_000, 33.0, "good", 1_000), // the next minute: not due
        ];
        let out = count(&rows, &[], &due(T0, T0 + WINDOW_MS), 600_000, |_| 30, 7);
        assert_eq!(out.len(), 1);
        let q = &out[0];
        assert_eq!(
            (q.received, q.good, q.bad, q.suspect, q.timely),
            (4, 2, 1, 1, 3)
        );
        assert_eq!((q.first_ts, q.last_ts), (T0 + 5_000, T0 + 35_000));
        assert_eq!(q.delays, "2,0,1,0,0,0,0,0,1");
        assert_eq!(
            (q.window_start, q.window_end, q.version),
            (T0, T0 + WINDOW_MS, 7)
        );
    }

    #[test]
    fn a_stuck_run_counts_from_its_stuck_after_th_reading() {
        // One reading a minute: 10 varying, then 999.9 forty times (a fan-failed SDS011).
        let mut rows: Vec<ReadingRow> = (0..10)
            .map(|i| reading("pm25", T0 + i * WINDOW_MS, noisy(i), "good", 500))
            .collect();
        rows.extend((10..50).map(|i| reading("pm25", T0 + i * WINDOW_MS, 999.9, "good", 500)));
        let lookback = lookback_ms(30, Some(60.0));
        let out = count(
            &rows,
            &[],
            &due(T0, T0 + 50 * WINDOW_MS),
            lookback,
            |_| 30,
            1,
        );
        let stuck: u32 = out.iter().map(|q| q.stuck).sum();
        assert_eq!(stuck, 40 - 29, "the 30th to the 40th of the run");
        // The first of the run is a spike, and the next ones while the baseline's median is
        // still the varying values.
        let spikes: Vec<i64> = out
            .iter()
            .filter(|q| q.spikes > 0)
            .map(|q| (q.window_start - T0) / WINDOW_MS)
            .collect();
        assert_eq!(spikes, vec![10, 11, 12, 13, 14]);
    }

    #[test]
    fn a_lone_spike_is_one_spike_and_nothing_stuck() {
        let mut rows: Vec<ReadingRow> = (0..30)
            .map(|i| reading("pm25", T0 + i * 10_000, noisy(i), "good", 500))
            .collect();
        rows[20].value = 400.0;
        let out = count(&rows, &[], &due(T0, T0 + 5 * WINDOW_MS), 600_000, |_| 30, 1);
        let spikes: u32 = out.iter().map(|q| q.spikes).sum();
        assert_eq!(spikes, 1);
        let stuck: u32 = out.iter().map(|q| q.stuck).sum();
        assert_eq!(stuck, 0);
    }

    #[test]
    fn a_minute_counts_the_same_whatever_is_read_with_it() {
        // A run that began long before: counted once with a read of everything, once with a
        // read of the minute alone (as a late reading would), the minute's stuck count is equal.
        let rows: Vec<ReadingRow> = (0..120)
            .map(|i| reading("pm25", T0 + i * WINDOW_MS, 12.5, "good", 500))
            .collect();
        let lookback = lookback_ms(30, Some(60.0));
        let minute = T0 + 100 * WINDOW_MS;
        let all = count(
            &rows,
            &[],
            &due(T0, T0 + 120 * WINDOW_MS),
            lookback,
            |_| 30,
            1,
        );
        let (from, to) = due(minute, minute + WINDOW_MS)
            .read_range(lookback)
            .unwrap();
        let part: Vec<ReadingRow> = rows
            .iter()
            .filter(|r| r.ts >= from && r.ts < to)
            .cloned()
            .collect();
        let alone = count(
            &part,
            &[],
            &due(minute, minute + WINDOW_MS),
            lookback,
            |_| 30,
            1,
        );
        let of_minute = |rows: &[QualityRow]| {
            rows.iter()
                .find(|q| q.window_start == minute)
                .map(|q| q.stuck)
        };
        assert_eq!(of_minute(&all), of_minute(&alone));
        assert_eq!(of_minute(&alone), Some(1));
    }

    #[test]
    fn lookback_covers_the_run_at_the_interval() {
        assert_eq!(lookback_ms(30, Some(60.0)), 31 * WINDOW_MS);
        assert_eq!(lookback_ms(30, Some(10.0)), 6 * WINDOW_MS);
        assert_eq!(lookback_ms(30, Some(3600.0)), MAX_LOOKBACK_MS);
        assert_eq!(lookback_ms(0, None), 11 * WINDOW_MS);
    }
}
