//! The VN_AQI operator: each time an hourly window of an air-quality station's pollutant is
//! stored, the hourly AQI of that hour and of the 11 after it (their NowCast reaches back 12
//! hours), and the daily AQI of its day (and of the next day, whose 8-hour O3 means reach back
//! 7 hours), are derived again from the stored hourly windows, with a higher version. No state:
//! what it derives is a function of the stored hours, computed by the same code as `ioc aqi`
//! (`ioc_regulation::csv::Hours`), so a published figure can be recomputed from a CSV.
//!
//! An hour's mean counts only when its window's capture is at least `stream.min_hour_capture`
//! (unknown capture counts); an AQI record exists for each hour, and each local day, for which
//! the station has a stored hourly window of an AQI pollutant.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset};
use ioc_contract::{Aggregate, Grade, Resolution};
use ioc_history::AqiRow;
use ioc_regulation::aqi::{Daily, Hourly, SubIndices};
use ioc_regulation::csv::{Hours, StationHour};

use crate::RegulatorySettings as Settings;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// The pollutants VN_AQI reads, by metric name.
pub const POLLUTANTS: [&str; 6] = ["pm25", "pm10", "o3", "no2", "so2", "co"];
/// Hours of NowCast history: an hour's AQI depends on it and the 11 before it.
const NOWCAST_HOURS: i64 = ioc_regulation::aqi::NOWCAST_HOURS as i64;
/// A day's daily AQI reads the previous day's last 7 hours (8-hour O3 means).
const O3_PREVIOUS_HOURS: i64 = ioc_regulation::aqi::O3_PREVIOUS_HOURS as i64;

/// Per station, the hours (starts) and local days (starts) whose AQI a batch may have changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Due {
    pub hours: BTreeSet<i64>,
    pub days: BTreeSet<i64>,
}

impl Due {
    /// The stored hourly windows the derivation reads: `[from, to)` of window starts.
    pub fn range(&self) -> (i64, i64) {
        let first_hour = self
            .hours
            .first()
            .map(|h| h - (NOWCAST_HOURS - 1) * HOUR_MS);
        let first_day = self.days.first().map(|d| d - O3_PREVIOUS_HOURS * HOUR_MS);
        let last_hour = self.hours.last().map(|h| h + HOUR_MS);
        let last_day = self.days.last().map(|d| d + DAY_MS);
        (
            first_hour.into_iter().chain(first_day).min().unwrap_or(0),
            last_hour.into_iter().chain(last_day).max().unwrap_or(0),
        )
    }
}

/// The stations and hours a batch's stored windows make due; `is_air` says which devices are
/// air-quality stations.
pub fn due(
    stored: &[Aggregate],
    is_air: impl Fn(&str) -> bool,
    utc_offset_ms: i64,
) -> BTreeMap<String, Due> {
    let mut due: BTreeMap<String, Due> = BTreeMap::new();
    for w in stored {
        if w.resolution != Resolution::Hour || !POLLUTANTS.contains(&w.metric.as_str()) {
            continue;
        }
        if !due.contains_key(&w.device_id) && !is_air(&w.device_id) {
            continue;
        }
        let d = due.entry(w.device_id.clone()).or_default();
        for k in 0..NOWCAST_HOURS {
            d.hours.insert(w.window_start + k * HOUR_MS);
        }
        let day = Resolution::Day.start(w.window_start, utc_offset_ms);
        d.days.insert(day);
        // The next day's 8-hour O3 means ending in its first hours include this one.
        if w.window_start >= day + DAY_MS - O3_PREVIOUS_HOURS * HOUR_MS {
            d.days.insert(day + DAY_MS);
        }
    }
    due
}

/// The hourly and daily AQI records of one station's due hours and days, from its stored
/// hourly windows (those `Due::range` reads). Only hours and days with a window are derived.
pub fn derive(
    device_id: &str,
    grade: Grade,
    due: &Due,
    windows: &[Aggregate],
    settings: Settings,
    version: u64,
) -> Vec<AqiRow> {
    let offset = FixedOffset::east_opt((settings.utc_offset_ms / 1000) as i32)
        .unwrap_or(FixedOffset::east_opt(0).expect("0 is a valid offset"));
    // Per hour start: each pollutant's window, on the first channel measuring it.
    let mut by_hour: BTreeMap<i64, BTreeMap<&str, &Aggregate>> = BTreeMap::new();
    for w in windows {
        if w.device_id != device_id
            || w.resolution != Resolution::Hour
            || !POLLUTANTS.contains(&w.metric.as_str())
        {
            continue;
        }
        let slot = by_hour
            .entry(w.window_start)
            .or_default()
            .entry(w.metric.as_str())
            .or_insert(w);
        if w.channel < slot.channel {
            *slot = w;
        }
    }
    let valid = |w: &Aggregate| w.capture.is_none_or(|c| c >= settings.min_hour_capture);
    let rows: Vec<StationHour> = by_hour
        .iter()
        .map(|(start, metrics)| {
            let mean = |m: &str| metrics.get(m).filter(|w| valid(w)).map(|w| w.mean);
            StationHour {
                station_id: device_id.to_string(),
                time: at(start + HOUR_MS, offset),
                pm25: mean("pm25"),
                pm10: mean("pm10"),
                o3: mean("o3"),
                no2: mean("no2"),
                so2: mean("so2"),
                co: mean("co"),
            }
        })
        .collect();
    let hours = Hours::new(&rows);
    let mut out = Vec::new();
    for start in &due.hours {
        let Some(metrics) = by_hour.get(start) else {
            continue;
        };
        let low_capture: Vec<&str> = POLLUTANTS
            .iter()
            .copied()
            .filter(|m| metrics.get(m).is_some_and(|w| !valid(w)))
            .collect();
        let h = hours.hourly(device_id, (start + HOUR_MS) / 1000);
        out.push(hourly_row(
            device_id,
            *start,
            &h,
            grade,
            low_capture.join(","),
            version,
        ));
    }
    for day in &due.days {
        if by_hour.range(*day..day + DAY_MS).next().is_none() {
            continue;
        }
        let date = at(*day, offset).date_naive();
        let d = hours.daily(device_id, date, offset, settings.min_day_hours_aqi);
        out.push(daily_row(device_id, *day, &d, grade, version));
    }
    out
}

fn at(ms: i64, offset: FixedOffset) -> DateTime<FixedOffset> {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&offset)
}

fn hourly_row(
    device_id: &str,
    start: i64,
    h: &Hourly,
    grade: Grade,
    low_capture: String,
    version: u64,
) -> AqiRow {
    let mut row = row(
        device_id,
        Resolution::Hour,
        start,
        h.aqi,
        h.dominant,
        &h.sub_indices,
    );
    row.nowcast_pm25 = h.nowcast_pm25;
    row.nowcast_pm10 = h.nowcast_pm10;
    row.grade = grade.as_str().to_string();
    row.low_capture = low_capture;
    row.version = version;
    row
}

fn daily_row(device_id: &str, start: i64, d: &Daily, grade: Grade, version: u64) -> AqiRow {
    let mut row = row(
        device_id,
        Resolution::Day,
        start,
        d.aqi,
        d.dominant,
        &d.sub_indices,
    );
    row.valid_hours = Some(d.valid_hours);
    row.grade = grade.as_str().to_string();
    row.version = version;
    row
}

fn row(
    device_id: &str,
    resolution: Resolution,
    start: i64,
    aqi: Option<u32>,
    dominant: Option<ioc_regulation::aqi::Pollutant>,
    s: &SubIndices,
) -> AqiRow {
    AqiRow {
        device_id: device_id.to_string(),
        resolution: resolution.as_str().to_string(),
        window_start: start,
        window_end: start + resolution.ms(),
        aqi,
        dominant: dominant.map(|p| p.as_str().to_string()).unwrap_or_default(),
        pm25: s.pm25,
        pm10: s.pm10,
        o3_1h: s.o3_1h,
        o3_8h: s.o3_8h,
        no2: s.no2,
        so2: s.so2,
        co: s.co,
        nowcast_pm25: None,
        nowcast_pm10: None,
        valid_hours: None,
        grade: String::new(),
        low_capture: String::new(),
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFSET: i64 = 7 * HOUR_MS;
    /// 2026-03-01 00:00 +07:00.
    const DAY: i64 = 1_772_298_000_000;

    fn hour(metric: &str, start: i64, mean: f64, capture: f64) -> Aggregate {
        Aggregate {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: metric.into(),
            resolution: Resolution::Hour,
            window_start: start,
            window_end: start + HOUR_MS,
            count: 60,
            sum: mean * 60.0,
            min: mean,
            max: mean,
            mean,
            capture: Some(capture),
            unit: "µg/m³".into(),
            version: 1,
        }
    }

    fn settings() -> Settings {
        Settings {
            min_hour_capture: 0.75,
            min_day_hours_aqi: 1,
            min_day_hours_qcvn: 18,
            utc_offset_ms: OFFSET,
        }
    }

    #[test]
    fn an_hour_makes_its_nowcast_successors_and_its_days_due() {
        assert_eq!(Resolution::Day.start(DAY + 5 * HOUR_MS, OFFSET), DAY);
        let stored = [
            hour("pm25", DAY + 5 * HOUR_MS, 20.0, 1.0),
            hour("temperature", DAY + 6 * HOUR_MS, 20.0, 1.0),
        ];
        let made = due(&stored, |_| true, OFFSET);
        let d = &made["aq-1"];
        assert_eq!(d.hours.len(), 12);
        assert_eq!(d.hours.first(), Some(&(DAY + 5 * HOUR_MS)));
        assert_eq!(d.days, BTreeSet::from([DAY]));
        // The hour starting 17:00 ends 18:00: the next day's first 8-hour O3 mean includes it.
        let late = due(
            &[hour("o3", DAY + 17 * HOUR_MS, 1.0, 1.0)],
            |_| true,
            OFFSET,
        );
        assert_eq!(late["aq-1"].days, BTreeSet::from([DAY, DAY + DAY_MS]));
        assert!(due(&stored, |_| false, OFFSET).is_empty());
        assert_eq!(
            d.range(),
            (DAY - 7 * HOUR_MS, DAY + DAY_MS),
            "the day's reach back for O3 and to its end"
        );
    }

    #[test]
    fn the_decisions_nowcast_example_through_stored_windows() {
        // Oldest first, the decision's 12 hourly PM2.5 means: NowCast 20.3, sub-index 41.
        let means = [
            26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6,
        ];
        let mut windows: Vec<Aggregate> = means
            .iter()
            .enumerate()
            .map(|(i, m)| hour("pm25", DAY + i as i64 * HOUR_MS, *m, 1.0))
            .collect();
        let last = DAY + 11 * HOUR_MS;
        let due = Due {
            hours: BTreeSet::from([last]),
            days: BTreeSet::new(),
        };
        let rows = derive("aq-1", Grade::Reference, &due, &windows, settings(), 9);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.aqi, r.dominant.as_str(), r.pm25),
            (Some(41), "pm25", Some(41))
        );
        assert_eq!(r.nowcast_pm25.map(ioc_regulation::csv::round1), Some(20.3));
        assert_eq!(
            (r.window_end, r.version, r.grade.as_str()),
            (last + HOUR_MS, 9, "reference")
        );

        // The newest hour half-empty: it is missing, and says so.
        windows[11].capture = Some(0.5);
        let rows = derive("aq-1", Grade::Indicative, &due, &windows, settings(), 10);
        assert_eq!(rows[0].low_capture, "pm25");
        assert_eq!(rows[0].grade, "indicative");
        assert_ne!(rows[0].nowcast_pm25, r.nowcast_pm25);
    }

    #[test]
    fn only_hours_and_days_with_windows_get_records() {
        let windows = [hour("pm25", DAY + 2 * HOUR_MS, 30.0, 1.0)];
        let made = due(&windows, |_| true, OFFSET);
        let rows = derive(
            "aq-1",
            Grade::Reference,
            &made["aq-1"],
            &windows,
            settings(),
            1,
        );
        let kinds: Vec<(&str, i64)> = rows
            .iter()
            .map(|r| (r.resolution.as_str(), r.window_start))
            .collect();
        assert_eq!(kinds, vec![("1h", DAY + 2 * HOUR_MS), ("1d", DAY)]);
        // One hour of 30 µg/m³: the day's PM2.5 mean is 30 → sub-index 60, over 1 valid hour.
        assert_eq!((rows[1].aqi, rows[1].valid_hours), (Some(60), Some(1)));
    }
}
