//! The QCVN exceedance operator: each time an hourly window of a station is stored, the means
//! over every averaging period that contains that hour are judged again against the limits in
//! `[regulation]`, from the stored hourly windows (no state):
//!
//! - QCVN 05:2023 ambient (air-quality stations): the hour's mean against the 1-hour column;
//!   the 8-hour running means (CO, O3) ending in that hour and the 7 after it, each over 8
//!   valid hours, against the 8-hour column; the mean of the local day's valid hours, over at
//!   least `stream.min_day_hours_qcvn` of them, against the 24-hour column in force that day;
//! - QCVN 40 wastewater (wastewater stations): the hour's mean of the station's discharge
//!   channel against C × Kq × Kf of its column of the regulation it is held to (C itself for
//!   temperature, colour and pH, pH as its band).
//!
//! An hour counts only when its window's capture is at least `stream.min_hour_capture`. A mean
//! beyond its limit is an exceedance; one that a revision brings within the limit (or makes
//! uncountable) is re-emitted as `withdrawn`, never deleted. A record is emitted only when what
//! it says changes, so a settled station's hour judged again at the same mean is not
//! repeated.

use std::collections::{BTreeMap, BTreeSet};

use ioc_config::RegulationConfig;
use ioc_contract::{Aggregate, Device, Discharge, Grade, Qcvn40Column, Resolution};
use ioc_history::ExceedanceRow;
use ioc_regulation::qcvn::{exceedance, Column, Limit, Period};

use crate::RegulatorySettings as Settings;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Hours in a running 8-hour mean.
const EIGHT: i64 = 8;

/// What a station is held to.
#[derive(Debug, Clone)]
pub enum Station {
    /// An air-quality station, held to the ambient limits.
    Air { grade: Grade },
    /// A wastewater station, held to its discharge's regulation.
    Wastewater { grade: Grade, discharge: Discharge },
}

impl Station {
    /// The station a registered device is, if it is one.
    pub fn of(device: &Device) -> Option<Station> {
        match device.kind.as_str() {
            "air_quality" => Some(Station::Air {
                grade: device.grade(),
            }),
            "wastewater" => Some(Station::Wastewater {
                grade: device.grade(),
                discharge: device.discharge(),
            }),
            _ => None,
        }
    }

    fn grade(&self) -> Grade {
        match self {
            Station::Air { grade } | Station::Wastewater { grade, .. } => *grade,
        }
    }

    /// Whether a window of `channel` and `metric` is judged for this station.
    fn judges(&self, limits: &RegulationConfig, channel: &str, metric: &str) -> bool {
        match self {
            Station::Air { .. } => limits.ambient.limits.iter().any(|l| l.metric == metric),
            Station::Wastewater { discharge, .. } => {
                channel == discharge.channel
                    && limits
                        .wastewater(&discharge.regulation)
                        .is_some_and(|t| t.limits.iter().any(|l| l.metric == metric))
            }
        }
    }
}

/// The hours (starts) and local days (starts) of one station whose judgement a batch's stored
/// windows may have changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Due {
    pub hours: BTreeSet<i64>,
    pub days: BTreeSet<i64>,
}

impl Due {
    /// The stored hourly windows (and exceedances) the judgement reads: `[from, to)` of window
    /// starts. An 8-hour mean ending at a due hour or the 7 after it reaches 7 hours back.
    pub fn range(&self) -> (i64, i64) {
        let hours = self.hours.first().map(|h| {
            (
                h - (EIGHT - 1) * HOUR_MS,
                self.hours.last().unwrap_or(h) + EIGHT * HOUR_MS,
            )
        });
        let days = self
            .days
            .first()
            .map(|d| (*d, self.days.last().unwrap_or(d) + DAY_MS));
        match (hours, days) {
            (Some(h), Some(d)) => (h.0.min(d.0), h.1.max(d.1)),
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => (0, 0),
        }
    }
}

/// The stations a batch's stored hourly windows make due.
pub fn due(
    stored: &[Aggregate],
    station: impl Fn(&str) -> Option<Station>,
    limits: &RegulationConfig,
    utc_offset_ms: i64,
) -> BTreeMap<String, Due> {
    let mut due: BTreeMap<String, Due> = BTreeMap::new();
    let mut stations: BTreeMap<&str, Option<Station>> = BTreeMap::new();
    for w in stored.iter().filter(|w| w.resolution == Resolution::Hour) {
        let s = stations
            .entry(&w.device_id)
            .or_insert_with(|| station(&w.device_id));
        if !s
            .as_ref()
            .is_some_and(|s| s.judges(limits, &w.channel, &w.metric))
        {
            continue;
        }
        let d = due.entry(w.device_id.clone()).or_default();
        d.hours.insert(w.window_start);
        d.days
            .insert(Resolution::Day.start(w.window_start, utc_offset_ms));
    }
    due
}

/// One judged mean: the key of its record and what it says.
struct Judged {
    channel: String,
    metric: String,
    regulation: String,
    period: Period,
    start: i64,
    end: i64,
    /// The mean and unit, where the period's mean is countable.
    mean: Option<(f64, String)>,
    /// The valid hours the mean is over.
    valid_hours: u32,
    limit: Option<Limit>,
}

/// The exceedance records a station's due hours and days call for, given its stored hourly
/// windows over `Due::range` and its exceedances stored over the same range (the latest of
/// each key).
#[allow(clippy::too_many_arguments)]
pub fn derive(
    device_id: &str,
    station: &Station,
    due: &Due,
    windows: &[Aggregate],
    stored: &[ExceedanceRow],
    limits: &RegulationConfig,
    settings: Settings,
    version: u64,
) -> Vec<ExceedanceRow> {
    derive_judged(
        device_id, station, due, windows, stored, limits, settings, version,
    )
    .0
}

/// [`derive`]'s records, and every countable period judged, exceeded or `within` (what alert
/// rules read: a period within its limit clears an alert, though nothing is stored for it).
#[allow(clippy::too_many_arguments)]
pub fn derive_judged(
    device_id: &str,
    station: &Station,
    due: &Due,
    windows: &[Aggregate],
    stored: &[ExceedanceRow],
    limits: &RegulationConfig,
    settings: Settings,
    version: u64,
) -> (Vec<ExceedanceRow>, Vec<ExceedanceRow>) {
    // Per (channel, metric), each valid hour's mean by start; `None` for an hour too empty.
    let mut hours: BTreeMap<(&str, &str), BTreeMap<i64, Option<f64>>> = BTreeMap::new();
    let mut units: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for w in windows {
        if w.device_id != device_id
            || w.resolution != Resolution::Hour
            || !station.judges(limits, &w.channel, &w.metric)
        {
            continue;
        }
        let valid = w.capture.is_none_or(|c| c >= settings.min_hour_capture);
        hours
            .entry((&w.channel, &w.metric))
            .or_default()
            .insert(w.window_start, valid.then_some(w.mean));
        units.insert((&w.channel, &w.metric), &w.unit);
    }
    let date = |start: i64| settings.local_date(start);
    let mut judged: Vec<Judged> = Vec::new();
    for (&(channel, metric), by_hour) in &hours {
        let unit = units[&(channel, metric)].to_string();
        let mut judge =
            |period: Period, start: i64, end: i64, mean: Option<f64>, valid_hours: usize| {
                let (regulation, limit) = match station {
                    Station::Air { .. } => (
                        limits.ambient.regulation.clone(),
                        limits
                            .ambient
                            .limit(metric, period, date(start))
                            .map(Limit::Max),
                    ),
                    Station::Wastewater { discharge, .. } => {
                        let table = limits.wastewater(&discharge.regulation);
                        let column = match discharge.column {
                            Qcvn40Column::A => Column::A,
                            Qcvn40Column::B => Column::B,
                        };
                        (
                            discharge.regulation.clone(),
                            table.and_then(|t| t.limit(metric, column, discharge.kq, discharge.kf)),
                        )
                    }
                };
                if limit.is_some() {
                    judged.push(Judged {
                        channel: channel.to_string(),
                        metric: metric.to_string(),
                        regulation,
                        period,
                        start,
                        end,
                        mean: mean.map(|m| (m, unit.clone())),
                        valid_hours: valid_hours as u32,
                        limit,
                    });
                }
            };
        for &h in &due.hours {
            if let Some(mean) = by_hour.get(&h) {
                judge(
                    Period::Hour,
                    h,
                    h + HOUR_MS,
                    *mean,
                    usize::from(mean.is_some()),
                );
            }
        }
        if matches!(station, Station::Air { .. }) {
            // Running 8-hour means ending in a due hour or the 7 after it.
            let ends: BTreeSet<i64> = due
                .hours
                .iter()
                .flat_map(|h| (0..EIGHT).map(move |k| h + k * HOUR_MS))
                .filter(|e| by_hour.contains_key(e))
                .collect();
            for e in ends {
                let start = e - (EIGHT - 1) * HOUR_MS;
                let means: Option<Vec<f64>> = (0..EIGHT)
                    .map(|k| by_hour.get(&(start + k * HOUR_MS)).copied().flatten())
                    .collect();
                let valid = (0..EIGHT)
                    .filter(|k| {
                        by_hour
                            .get(&(start + k * HOUR_MS))
                            .is_some_and(Option::is_some)
                    })
                    .count();
                let mean = means.map(|m| m.iter().sum::<f64>() / EIGHT as f64);
                judge(Period::EightHours, start, e + HOUR_MS, mean, valid);
            }
            for &day in &due.days {
                let valid: Vec<f64> = by_hour
                    .range(day..day + DAY_MS)
                    .filter_map(|(_, m)| *m)
                    .collect();
                if by_hour.range(day..day + DAY_MS).next().is_none() {
                    continue;
                }
                let mean = (valid.len() >= settings.min_day_hours_qcvn.max(1))
                    .then(|| valid.iter().sum::<f64>() / valid.len() as f64);
                judge(Period::Day, day, day + DAY_MS, mean, valid.len());
            }
        }
    }

    let latest: BTreeMap<_, &ExceedanceRow> = latest(stored);
    let grade = station.grade().as_str();
    let mut out = Vec::new();
    let mut judgments = Vec::new();
    let mut judged_keys: BTreeSet<Key> = BTreeSet::new();
    // The periods the due hours and days are judged over, whatever the metric and channel.
    let mut windows: BTreeSet<(String, i64)> = BTreeSet::new();
    for j in judged {
        let key = (
            j.channel.clone(),
            j.metric.clone(),
            j.regulation.clone(),
            j.period.as_str().to_string(),
            j.start,
        );
        windows.insert((key.3.clone(), key.4));
        let before = latest.get(&key).copied();
        judged_keys.insert(key);
        let limit = j.limit.expect("judged means have a limit");
        let (limit_low, limit_high) = match limit {
            Limit::Max(max) => (None, Some(max)),
            Limit::Band { low, high } => (Some(low), Some(high)),
        };
        let mean = j.mean.as_ref().map(|(m, _)| *m);
        let beyond = mean.and_then(|m| exceedance(m, limit));
        let row = ExceedanceRow {
            device_id: device_id.to_string(),
            channel: j.channel,
            metric: j.metric,
            regulation: j.regulation,
            period: j.period.as_str().to_string(),
            window_start: j.start,
            window_end: j.end,
            value: mean.unwrap_or(f64::NAN),
            unit: j.mean.map(|(_, u)| u).unwrap_or_default(),
            limit_low,
            limit_high,
            // Within the limit: what share of a maximum it is (0 inside a band).
            multiple: beyond.unwrap_or(match limit {
                Limit::Max(max) => mean.map_or(f64::NAN, |m| m / max),
                Limit::Band { .. } => 0.0,
            }),
            valid_hours: j.valid_hours,
            grade: grade.to_string(),
            status: if beyond.is_some() {
                "exceeded"
            } else {
                "withdrawn"
            }
            .into(),
            version,
        };
        if mean.is_some() {
            judgments.push(ExceedanceRow {
                status: if beyond.is_some() {
                    "exceeded"
                } else {
                    "within"
                }
                .into(),
                ..row.clone()
            });
        }
        let row = match (beyond, before) {
            (Some(_), _) => row,
            // No longer countable: withdrawn as it was last judged.
            (None, Some(b)) if mean.is_none() && b.status == "exceeded" => ExceedanceRow {
                valid_hours: row.valid_hours,
                status: "withdrawn".into(),
                version,
                ..b.clone()
            },
            (None, Some(_)) if mean.is_none() => continue,
            // Within the limit now: withdrawn, and kept up to date once it was published.
            (None, Some(_)) => row,
            (None, None) => continue,
        };
        if before.is_some_and(|b| same(b, &row)) {
            continue;
        }
        out.push(row);
    }
    // What was published for these periods and is no longer judged at all (the station's
    // discharge channel or regulation changed, a limit left `[regulation]`): withdrawn.
    for (key, b) in &latest {
        if b.status == "exceeded"
            && !judged_keys.contains(key)
            && windows.contains(&(key.3.clone(), key.4))
        {
            out.push(ExceedanceRow {
                status: "withdrawn".into(),
                version,
                ..(*b).clone()
            });
        }
    }
    (out, judgments)
}

type Key = (String, String, String, String, i64);

/// The latest version of each stored exceedance.
fn latest(stored: &[ExceedanceRow]) -> BTreeMap<Key, &ExceedanceRow> {
    let mut latest: BTreeMap<Key, &ExceedanceRow> = BTreeMap::new();
    for e in stored {
        let key = (
            e.channel.clone(),
            e.metric.clone(),
            e.regulation.clone(),
            e.period.clone(),
            e.window_start,
        );
        match latest.get(&key) {
            Some(b) if b.version >= e.version => {}
            _ => {
                latest.insert(key, e);
            }
        }
    }
    latest
}

/// Whether two records say the same (versions aside).
fn same(a: &ExceedanceRow, b: &ExceedanceRow) -> bool {
    ExceedanceRow {
        version: 0,
        ..a.clone()
    } == ExceedanceRow {
        version: 0,
        ..b.clone()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate};

    use super::*;

    const OFFSET: i64 = 7 * HOUR_MS;
    /// 2026-03-01 00:00 +07:00.
    const DAY: i64 = 1_772_298_000_000;

    fn limits() -> RegulationConfig {
        ioc_config::load_str(None, Vec::<(String, String)>::new())
            .unwrap()
            .regulation
    }

    fn settings() -> Settings {
        Settings {
            min_hour_capture: 0.75,
            min_day_hours_aqi: 1,
            min_day_hours_qcvn: 18,
            utc_offset_ms: OFFSET,
        }
    }

    fn hour(channel: &str, metric: &str, start: i64, mean: f64) -> Aggregate {
        Aggregate {
            device_id: "s-1".into(),
            channel: channel.into(),
            metric: metric.into(),
            resolution: Resolution::Hour,
            window_start: start,
            window_end: start + HOUR_MS,
            count: 12,
            sum: mean * 12.0,
            min: mean,
            max: mean,
            mean,
            capture: Some(1.0),
            unit: "mg/L".into(),
            version: 1,
        }
    }

    fn air() -> Station {
        Station::Air {
            grade: Grade::Reference,
        }
    }

    fn wastewater(column: Qcvn40Column, kq: f64, kf: f64) -> Station {
        Station::Wastewater {
            grade: Grade::Reference,
            discharge: Discharge {
                column,
                kq,
                kf,
                ..Discharge::default()
            },
        }
    }

    fn judge(
        station: &Station,
        windows: &[Aggregate],
        stored: &[ExceedanceRow],
    ) -> Vec<ExceedanceRow> {
        let l = limits();
        let made = due(windows, |_| Some(station.clone()), &l, OFFSET);
        let Some(d) = made.get("s-1") else {
            return Vec::new();
        };
        derive("s-1", station, d, windows, stored, &l, settings(), 7)
    }

    fn brief(rows: &[ExceedanceRow]) -> Vec<(&str, &str, i64, f64, &str)> {
        rows.iter()
            .map(|r| {
                (
                    r.metric.as_str(),
                    r.period.as_str(),
                    r.window_start,
                    (r.multiple * 1000.0).round() / 1000.0,
                    r.status.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn wastewater_hours_against_c_kq_kf_of_their_column_and_ph_against_its_band() {
        let h = DAY + 9 * HOUR_MS;
        let windows = [
            hour("outlet", "cod", h, 160.0),
            hour("outlet", "temperature", h, 41.0),
            hour("outlet", "ph", h, 5.3),
            hour("outlet", "tss", h, 90.0),
            // The inlet is not judged.
            hour("inlet", "cod", h, 900.0),
        ];
        let got = judge(&wastewater(Qcvn40Column::B, 1.0, 1.0), &windows, &[]);
        assert_eq!(
            brief(&got),
            vec![
                ("cod", "1h", h, 1.067, "exceeded"),
                ("ph", "1h", h, 0.2, "exceeded"),
                ("temperature", "1h", h, 1.025, "exceeded"),
            ]
        );
        assert_eq!(got[1].limit_low, Some(5.5));
        // Kq·Kf 0.9 × 0.8 scales COD (150 → 108) and TSS (100 → 72), not temperature or pH.
        let got = judge(&wastewater(Qcvn40Column::B, 0.9, 0.8), &windows, &[]);
        let cod = got.iter().find(|r| r.metric == "cod").unwrap();
        assert_eq!(
            cod.limit_high.map(|l| (l * 1000.0).round()),
            Some(108_000.0)
        );
        assert!(got.iter().any(|r| r.metric == "tss"));
        let t = got.iter().find(|r| r.metric == "temperature").unwrap();
        assert_eq!(t.limit_high, Some(40.0));
        // Column A: pH 6–9, so 5.8 is out, which column B's 5.5–9 allows; 9.0 is on the edge.
        let ph = |v| [hour("outlet", "ph", h, v)];
        assert_eq!(
            judge(&wastewater(Qcvn40Column::A, 1.0, 1.0), &ph(5.8), &[]).len(),
            1
        );
        assert!(judge(&wastewater(Qcvn40Column::B, 1.0, 1.0), &ph(5.8), &[]).is_empty());
        assert!(judge(&wastewater(Qcvn40Column::A, 1.0, 1.0), &ph(9.0), &[]).is_empty());
        let high = judge(&wastewater(Qcvn40Column::A, 1.0, 1.0), &ph(9.4), &[]);
        assert_eq!(brief(&high), vec![("ph", "1h", h, 0.4, "exceeded")]);
    }

    #[test]
    fn an_hour_too_empty_counts_for_nothing() {
        let mut w = hour("outlet", "cod", DAY, 500.0);
        w.capture = Some(0.5);
        assert!(judge(&wastewater(Qcvn40Column::B, 1.0, 1.0), &[w], &[]).is_empty());
    }

    #[test]
    fn ambient_hours_eight_hour_running_means_and_days() {
        // CO: 8 hours at 11 000 µg/m³ (8-hour limit 10 000; 1-hour 30 000 not reached).
        let co: Vec<Aggregate> = (0..8)
            .map(|k| hour("", "co", DAY + k * HOUR_MS, 11_000.0))
            .collect();
        let got = judge(&air(), &co, &[]);
        assert_eq!(brief(&got), vec![("co", "8h", DAY, 1.1, "exceeded")]);
        assert_eq!(got[0].window_end, DAY + 8 * HOUR_MS);
        // Seven hours are no 8-hour mean.
        assert!(judge(&air(), &co[1..], &[]).is_empty());

        // NO2 1 hour at 250 (limit 200); its day of one hour is too short for the 24-hour column.
        let no2 = [hour("", "no2", DAY + 3 * HOUR_MS, 250.0)];
        assert_eq!(
            brief(&judge(&air(), &no2, &[])),
            vec![("no2", "1h", DAY + 3 * HOUR_MS, 1.25, "exceeded")]
        );

        // PM2.5 at 48 for a whole day: above 45 from 2026-01-01, within the 50 of 2025.
        let day = |start: i64| -> Vec<Aggregate> {
            (0..24)
                .map(|k| hour("", "pm25", start + k * HOUR_MS, 48.0))
                .collect()
        };
        let got = judge(&air(), &day(DAY), &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].period.as_str(), got[0].limit_high),
            ("24h", Some(45.0))
        );
        // 2025-12-31 00:00 +07:00.
        let last_of_2025 = DAY - 60 * DAY_MS;
        assert_eq!(
            DateTime::from_timestamp_millis(last_of_2025 + OFFSET)
                .unwrap()
                .date_naive(),
            NaiveDate::from_ymd_opt(2025, 12, 31).unwrap()
        );
        assert!(judge(&air(), &day(last_of_2025), &[]).is_empty());
    }

    #[test]
    fn a_revision_within_the_limit_withdraws_and_an_unchanged_one_is_not_repeated() {
        let h = DAY + 9 * HOUR_MS;
        let station = wastewater(Qcvn40Column::B, 1.0, 1.0);
        let first = judge(&station, &[hour("outlet", "cod", h, 160.0)], &[]);
        assert_eq!(first.len(), 1);
        // The same mean again: nothing new to say.
        assert!(judge(&station, &[hour("outlet", "cod", h, 160.0)], &first).is_empty());
        // A late reading brings the hour to 140: withdrawn, with the new mean.
        let withdrawn = judge(&station, &[hour("outlet", "cod", h, 140.0)], &first);
        assert_eq!(
            brief(&withdrawn),
            vec![("cod", "1h", h, 0.933, "withdrawn")]
        );
        assert_eq!(withdrawn[0].value, 140.0);
        // Withdrawn stays withdrawn, its mean kept up to date; the same again says nothing.
        let both = [
            first[0].clone(),
            ExceedanceRow {
                version: 8,
                ..withdrawn[0].clone()
            },
        ];
        let later = judge(&station, &[hour("outlet", "cod", h, 120.0)], &both);
        assert_eq!(brief(&later), vec![("cod", "1h", h, 0.8, "withdrawn")]);
        assert!(judge(&station, &[hour("outlet", "cod", h, 140.0)], &both).is_empty());
        // Too empty to count any more: withdrawn as last judged.
        let mut empty = hour("outlet", "cod", h, 400.0);
        empty.capture = Some(0.2);
        let gone = judge(&station, &[empty], &first);
        assert_eq!(brief(&gone), vec![("cod", "1h", h, 1.067, "withdrawn")]);
        assert_eq!((gone[0].value, gone[0].valid_hours), (160.0, 0));
    }

    #[test]
    fn an_exceedance_no_longer_judged_is_withdrawn() {
        let h = DAY + 9 * HOUR_MS;
        let station = wastewater(Qcvn40Column::B, 1.0, 1.0);
        let first = judge(&station, &[hour("outlet", "cod", h, 160.0)], &[]);
        // The station's outlet is now another channel: the old key is not judged again.
        let moved = Station::Wastewater {
            grade: Grade::Reference,
            discharge: Discharge {
                channel: "outlet-2".into(),
                ..Discharge::default()
            },
        };
        let got = judge(&moved, &[hour("outlet-2", "cod", h, 100.0)], &first);
        assert_eq!(brief(&got), vec![("cod", "1h", h, 1.067, "withdrawn")]);
        assert_eq!(got[0].channel, "outlet");
    }
}
