//! Data quality, as the province's data plan asks it to be rated: "đúng, đủ, sạch, sống"
//! (correct, complete, clean, live). What each kind of device owes by default, the counts a
//! score is made from, and the four formulas (README, "Data quality"). Pure: the stream counts
//! (per device, channel, metric and minute), the API sums the counts over a period and scores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The metrics a device of `kind` owes unless registered with its own `expected_metrics`.
/// Air stations: the six VN_AQI pollutants and the weather the decision asks to publish beside
/// them; wastewater: what Circular 10/2021 practice has every station measure (DOMAIN.md §5);
/// traffic counters: count, speed and occupancy; cameras send events, not values.
pub fn default_expected_metrics(kind: &str) -> &'static [&'static str] {
    match kind {
        "air_quality" => &[
            "pm25",
            "pm10",
            "o3",
            "no2",
            "so2",
            "co",
            "temperature",
            "humidity",
        ],
        "wastewater" => &["temperature", "ph", "cod", "tss", "nh4", "flow"],
        "traffic_counter" => &["vehicle_count", "avg_speed", "occupancy"],
        _ => &[],
    }
}

/// A reading counts as timely when it arrived within this of its measurement: the five minutes
/// within which an automatic station sends its file (DOMAIN.md §5).
pub const TIMELY_MS: i64 = 5 * 60_000;

/// The counts behind a device's scores over a period (all its channels and metrics). Values
/// are readings: one metric's value at one time on one channel, counted once per key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityCounts {
    /// Readings the period owed: for each expected metric, the period over the device's
    /// `expected_interval_s` (only while it was registered).
    pub expected_values: f64,
    /// Messages the period owed: the period over `expected_interval_s`.
    pub expected_messages: f64,
    /// Readings received, of any quality, each key once.
    pub received: u64,
    pub good: u64,
    pub suspect: u64,
    pub bad: u64,
    /// For each expected metric, its good readings up to what it owed, summed: what "complete"
    /// counts (a metric's surplus never makes up for another's silence).
    pub good_owed: f64,
    /// Good readings that were the `stream.stuck_after`-th or later of a run of one value.
    pub stuck: u64,
    /// Good readings that were spikes (README: a robust test against the readings before).
    pub spikes: u64,
    /// Extra copies of readings the device sent again under another message id (a broker's
    /// redelivery of the same message is not the device's doing and is not counted).
    pub resent: u64,
    /// Rejections of the device's messages and values, by reason code (dead letters).
    pub rejected: BTreeMap<String, u64>,
    /// Readings lost to rejections: a value rejected alone counts one; a message rejected
    /// whole counts as many as the device owes per message.
    pub rejected_values: f64,
    /// Messages over the device's rate limit (also among `rejected`, as `rate_limited`).
    pub rate_limited: u64,
    /// Readings that arrived within [`TIMELY_MS`] of their measurement.
    pub timely: u64,
    /// The delay from measurement to receipt: median and 95th percentile, in milliseconds
    /// (to the upper bound of the histogram bucket they fall in: [`DELAY_BUCKETS_MS`]).
    pub delay_p50_ms: Option<i64>,
    pub delay_p95_ms: Option<i64>,
    /// The longest stretch of the period with no reading (by measurement time).
    pub longest_silence_ms: i64,
    /// The part of the period the device was online: within `offline_after` expected
    /// intervals of a reading.
    pub online_ms: i64,
    /// The period scored: from its start, or the device's registration if later, to its end,
    /// or now if sooner.
    pub period_ms: i64,
}

/// Scores from 0 to 100, one decimal; `None` where there is nothing to score (no reading
/// received, nothing owed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// đúng: the share of received readings in range (not bad), not stuck, not spikes.
    pub correct: Option<f64>,
    /// đủ: good readings of the expected metrics (each up to what it owed) over those owed.
    pub complete: Option<f64>,
    /// sạch: the share of readings that reached the pipeline that were not rejected, not
    /// resent and not suspect.
    pub clean: Option<f64>,
    /// sống: the share of the period online, times the share of readings that came timely.
    pub live: Option<f64>,
}

/// A share as a score: 0 to 100 with one decimal.
fn score(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0 && part.is_finite())
        .then(|| (100.0 * (part / whole).clamp(0.0, 1.0) * 10.0).round() / 10.0)
}

impl QualityCounts {
    pub fn scores(&self) -> Scores {
        let received = self.received as f64;
        let wrong = (self.bad + self.stuck + self.spikes) as f64;
        let unclean = (self.suspect + self.resent) as f64;
        let live = if self.received == 0 {
            Some(0.0).filter(|_| self.period_ms > 0)
        } else {
            score(
                self.online_ms as f64 * self.timely as f64,
                self.period_ms as f64 * received,
            )
        };
        Scores {
            correct: score(received - wrong, received),
            complete: score(self.good_owed, self.expected_values),
            clean: score(received - unclean, received + self.rejected_values),
            live,
        }
    }

    /// Adds another period's or device's counts (a silence is the longer of the two; delays
    /// are not summed, they come from the merged histogram).
    pub fn add(&mut self, other: &QualityCounts) {
        self.expected_values += other.expected_values;
        self.expected_messages += other.expected_messages;
        self.received += other.received;
        self.good += other.good;
        self.suspect += other.suspect;
        self.bad += other.bad;
        self.good_owed += other.good_owed;
        self.stuck += other.stuck;
        self.spikes += other.spikes;
        self.resent += other.resent;
        for (code, n) in &other.rejected {
            *self.rejected.entry(code.clone()).or_default() += n;
        }
        self.rejected_values += other.rejected_values;
        self.rate_limited += other.rate_limited;
        self.timely += other.timely;
        self.longest_silence_ms = self.longest_silence_ms.max(other.longest_silence_ms);
        self.online_ms += other.online_ms;
        self.period_ms += other.period_ms;
    }
}

/// The upper bounds of the delay histogram's buckets (a last bucket holds everything longer):
/// fine where stations report (seconds to minutes), coarse where only backfill lands.
pub const DELAY_BUCKETS_MS: [i64; 11] = [
    1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 900_000, 3_600_000, 86_400_000,
];

/// The bucket a delay falls in (0 ..= `DELAY_BUCKETS_MS.len()`).
pub fn delay_bucket(delay_ms: i64) -> usize {
    DELAY_BUCKETS_MS
        .iter()
        .position(|b| delay_ms <= *b)
        .unwrap_or(DELAY_BUCKETS_MS.len())
}

/// A delay histogram as stored: the count of each bucket, comma-separated, trailing zeros left
/// out ("" is no reading).
pub fn histogram_text(counts: &[u64]) -> String {
    let end = counts.iter().rposition(|c| *c > 0).map_or(0, |i| i + 1);
    counts[..end]
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds a stored histogram into `into` (one slot per bucket); text that is not one is skipped.
pub fn add_histogram(into: &mut [u64; DELAY_BUCKETS_MS.len() + 1], text: &str) {
    for (slot, n) in into.iter_mut().zip(text.split(',')) {
        *slot += n.trim().parse::<u64>().unwrap_or(0);
    }
}

/// The `q` quantile of a histogram: the upper bound of the bucket it falls in (the last bucket
/// has none: its lower bound stands for it).
pub fn histogram_quantile(counts: &[u64; DELAY_BUCKETS_MS.len() + 1], q: f64) -> Option<i64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(DELAY_BUCKETS_MS[i.min(DELAY_BUCKETS_MS.len() - 1)]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> QualityCounts {
        QualityCounts {
            period_ms: 3_600_000,
            online_ms: 3_600_000,
            ..Default::default()
        }
    }

    #[test]
    fn half_the_messages_is_fifty_complete() {
        // Four metrics every minute for an hour owe 240 readings; 120 good arrive.
        let c = QualityCounts {
            expected_values: 240.0,
            received: 120,
            good: 120,
            good_owed: 120.0,
            timely: 120,
            ..counts()
        };
        assert_eq!(c.scores().complete, Some(50.0));
        assert_eq!(c.scores().correct, Some(100.0));
        assert_eq!(c.scores().clean, Some(100.0));
    }

    #[test]
    fn one_metric_missing_of_four_is_seventy_five_complete() {
        let c = QualityCounts {
            expected_values: 240.0,
            received: 180,
            good: 180,
            good_owed: 180.0,
            timely: 180,
            ..counts()
        };
        assert_eq!(c.scores().complete, Some(75.0));
    }

    #[test]
    fn stuck_and_spikes_are_not_correct_and_suspect_resent_rejected_not_clean() {
        let c = QualityCounts {
            received: 100,
            good: 90,
            bad: 5,
            suspect: 5,
            stuck: 10,
            spikes: 5,
            resent: 5,
            rejected_values: 10.0,
            timely: 100,
            ..counts()
        };
        let s = c.scores();
        assert_eq!(s.correct, Some(80.0)); // 100 - 5 bad - 10 stuck - 5 spikes
        assert_eq!(s.clean, Some(81.8)); // (100 - 5 - 5) / 110
    }

    #[test]
    fn live_is_the_online_share_times_the_timely_share() {
        let c = QualityCounts {
            received: 100,
            good: 100,
            timely: 80,
            online_ms: 1_800_000,
            ..counts()
        };
        assert_eq!(c.scores().live, Some(40.0));
        let silent = QualityCounts {
            online_ms: 0,
            ..counts()
        };
        assert_eq!(silent.scores().live, Some(0.0));
        assert_eq!(
            silent.scores().correct,
            None,
            "nothing received: nothing to judge"
        );
    }

    #[test]
    fn histogram_round_trips_and_gives_bucket_bounds() {
        let mut h = [0u64; DELAY_BUCKETS_MS.len() + 1];
        h[delay_bucket(800)] += 50;
        h[delay_bucket(4_000)] += 45;
        h[delay_bucket(400_000)] += 5;
        let text = histogram_text(&h);
        assert_eq!(text, "50,0,45,0,0,0,0,0,5");
        let mut back = [0u64; DELAY_BUCKETS_MS.len() + 1];
        add_histogram(&mut back, &text);
        assert_eq!(back, h);
        assert_eq!(histogram_quantile(&back, 0.5), Some(1_000));
        assert_eq!(histogram_quantile(&back, 0.95), Some(5_000));
        assert_eq!(histogram_quantile(&back, 0.99), Some(900_000));
        assert_eq!(histogram_text(&[0; 12]), "");
    }
}
