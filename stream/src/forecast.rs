//! The forecast operator: when a batch stores hourly PM2.5 windows of an air-quality station,
//! the station's forecast for the 1 to 6 hours after each of them (back to 6 hours before the
//! newest) is made from its stored hourly windows up to that hour (`ioc_regulation::forecast::forecast_at`, the code
//! `ioc forecast` runs, so a published forecast can be made again from a CSV of the same
//! hours). No state: a replay, or a revision of the hour, makes it again with a higher version.
//!
//! An hour counts only when its window's capture is at least `stream.min_hour_capture` (as for
//! the AQI). Each forecast hour also carries the mean PM2.5 of its local day over the observed
//! hours and the forecast ones up to it, when those are at least `stream.min_day_hours_qcvn`,
//! with the QCVN 05 24-hour limit of that day: what the built-in warning rule compares.

use std::collections::{BTreeMap, BTreeSet};

use ioc_contract::{Aggregate, Grade, Resolution};
use ioc_history::ForecastRow;
use ioc_regulation::csv::round1;
use ioc_regulation::forecast::{self, Series, FIT_DAYS, MAX_HORIZON, PROFILE_DAYS};
use ioc_regulation::qcvn::{AmbientLimits, Period};

use crate::RegulatorySettings as Settings;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The stations a batch's stored windows make due, each with its origins: the ends of its
/// hourly PM2.5 windows stored, from the newest back [`MAX_HORIZON`] hours (an older origin's
/// forecast is past: a station's backfill is forecast only at its last hours).
pub fn due(stored: &[Aggregate], is_air: impl Fn(&str) -> bool) -> BTreeMap<String, BTreeSet<i64>> {
    let mut due: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for w in stored {
        if w.resolution != Resolution::Hour || w.metric != "pm25" {
            continue;
        }
        if let Some(origins) = due.get_mut(&w.device_id) {
            origins.insert(w.window_end);
        } else if is_air(&w.device_id) {
            due.insert(w.device_id.clone(), BTreeSet::from([w.window_end]));
        }
    }
    for origins in due.values_mut() {
        let newest = origins.last().copied().unwrap_or(0);
        origins.retain(|o| *o > newest - MAX_HORIZON as i64 * HOUR_MS);
    }
    due
}

/// The stored hourly windows forecasts at `origins` read: `[from, to)` of window starts.
pub fn range(origins: &BTreeSet<i64>) -> (i64, i64) {
    let days = FIT_DAYS.max(PROFILE_DAYS);
    let (first, last) = (
        origins.first().copied().unwrap_or(0),
        origins.last().copied().unwrap_or(0),
    );
    // The fit's first hours read the 3 before them.
    (first - days * DAY_MS - 4 * HOUR_MS, last)
}

/// The forecast records of one station at `origin` from its stored hourly windows; none when
/// the origin hour does not count or the history is too short.
pub fn derive(
    device_id: &str,
    grade: Grade,
    origin: i64,
    windows: &[Aggregate],
    limits: &AmbientLimits,
    settings: Settings,
    version: u64,
) -> Vec<ForecastRow> {
    let offset_s = (settings.utc_offset_ms / 1000) as i32;
    // One channel per station: the first by name, as the AQI takes.
    let mut by_hour: BTreeMap<i64, &Aggregate> = BTreeMap::new();
    for w in windows {
        if w.device_id != device_id || w.resolution != Resolution::Hour || w.metric != "pm25" {
            continue;
        }
        let slot = by_hour.entry(w.window_end).or_insert(w);
        if w.channel < slot.channel {
            *slot = w;
        }
    }
    let values = by_hour
        .iter()
        .filter(|(_, w)| w.capture.is_none_or(|c| c >= settings.min_hour_capture))
        .map(|(end, w)| (end / 1000, w.mean))
        .collect();
    let series = Series {
        station_id: device_id.to_string(),
        offset_s,
        values,
    };
    let Some(forecasts) = forecast::forecast_at(&series, origin / 1000, MAX_HORIZON) else {
        return Vec::new();
    };
    let day_of = |end: i64| Resolution::Day.start(end - 1, settings.utc_offset_ms);
    forecasts
        .iter()
        .map(|f| {
            let target = origin + i64::from(f.horizon_h) * HOUR_MS;
            let day = day_of(target);
            // The day's hours ending after its start, up to the target: observed up to the
            // origin, forecast after it.
            let first = (day + HOUR_MS) / 1000;
            let observed = series
                .values
                .range(first..)
                .take_while(|(t, _)| **t <= origin / 1000)
                .map(|(_, v)| *v);
            let predicted = forecasts
                .iter()
                .take(f.horizon_h as usize)
                .filter(|g| day_of(origin + i64::from(g.horizon_h) * HOUR_MS) == day)
                .map(|g| g.pm25);
            let hours: Vec<f64> = observed.chain(predicted).collect();
            let day_pm25 = (hours.len() >= settings.min_day_hours_qcvn)
                .then(|| round1(hours.iter().sum::<f64>() / hours.len() as f64));
            ForecastRow {
                device_id: device_id.to_string(),
                origin,
                target,
                horizon_h: f.horizon_h,
                pm25: f.pm25,
                pm25_low: f.pm25_low,
                pm25_high: f.pm25_high,
                aqi: f.aqi,
                day_pm25,
                day_pm25_limit: limits.limit("pm25", Period::Day, settings.local_date(day)),
                grade: grade.as_str().to_string(),
                version,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-01T00:00:00+07:00.
    const T0: i64 = 1_772_298_000_000;

    fn hour(end: i64, mean: f64, capture: Option<f64>) -> Aggregate {
        Aggregate {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: "pm25".into(),
            resolution: Resolution::Hour,
            window_start: end - HOUR_MS,
            window_end: end,
            count: 60,
            sum: mean * 60.0,
            min: mean,
            max: mean,
            mean,
            unit: "µg/m³".into(),
            capture,
            version: 1,
        }
    }

    fn settings() -> Settings {
        Settings {
            min_hour_capture: 0.75,
            min_day_hours_aqi: 1,
            min_day_hours_qcvn: 18,
            utc_offset_ms: 7 * HOUR_MS,
        }
    }

    /// Ten days of a day's shape with a daily afternoon plume.
    fn days(n: i64) -> Vec<Aggregate> {
        (1..=n * 24)
            .map(|h| {
                let hod = (h - 1) % 24;
                let v = 30.0
                    + 15.0 * ((hod as f64 - 7.0) / 24.0 * std::f64::consts::TAU).cos()
                    + if (14..18).contains(&hod) { 20.0 } else { 0.0 };
                hour(T0 + h * HOUR_MS, v, Some(1.0))
            })
            .collect()
    }

    #[test]
    fn the_last_six_pm25_hours_of_each_air_station_are_due() {
        let mut stored = days(1);
        stored.push(Aggregate {
            metric: "no2".into(),
            window_end: T0 + 100 * HOUR_MS,
            ..stored[0].clone()
        });
        stored.push(Aggregate {
            device_id: "ww-1".into(),
            ..stored[3].clone()
        });
        let due = due(&stored, |d| d.starts_with("aq"));
        let last_six: BTreeSet<i64> = (19..=24).map(|h| T0 + h * HOUR_MS).collect();
        assert_eq!(due, BTreeMap::from([("aq-1".to_string(), last_six)]));
    }

    #[test]
    fn the_forecast_is_what_ioc_forecast_makes_of_the_same_hours_with_the_day_mean() {
        let windows = days(10);
        let origin = T0 + (9 * 24 + 20) * HOUR_MS;
        let limits = AmbientLimits::qcvn_05_2023();
        let rows = derive(
            "aq-1",
            Grade::Reference,
            origin,
            &windows,
            &limits,
            settings(),
            7,
        );
        assert_eq!(rows.len(), 6);
        let series = Series {
            station_id: "aq-1".into(),
            offset_s: 7 * 3600,
            values: windows
                .iter()
                .filter(|w| w.window_end <= origin)
                .map(|w| (w.window_end / 1000, w.mean))
                .collect(),
        };
        let cli = forecast::forecast_at(&series, origin / 1000, 6).unwrap();
        for (row, f) in rows.iter().zip(&cli) {
            assert_eq!(
                (row.pm25, row.pm25_low, row.pm25_high, row.aqi),
                (f.pm25, f.pm25_low, f.pm25_high, f.aqi)
            );
            assert_eq!(row.target, origin + i64::from(row.horizon_h) * HOUR_MS);
            assert_eq!(
                row.day_pm25_limit,
                Some(45.0),
                "QCVN 05's 24-hour PM2.5 from 2026"
            );
        }
        // 20:00: the day's 20 observed hours and the forecast ones up to each target, all in
        // the same day until 24:00 (the hour ending at midnight is the day's last).
        let observed: Vec<f64> = windows
            .iter()
            .filter(|w| w.window_end > origin - 20 * HOUR_MS && w.window_end <= origin)
            .map(|w| w.mean)
            .collect();
        let want = (observed.iter().sum::<f64>() + rows[0].pm25) / 21.0;
        assert_eq!(rows[0].day_pm25, Some(round1(want)));
        assert!(
            rows[4].day_pm25.is_none(),
            "01:00 starts a new day: too few hours"
        );
    }

    #[test]
    fn an_origin_hour_with_too_little_capture_makes_no_forecast() {
        let mut windows = days(10);
        let origin = T0 + 240 * HOUR_MS;
        windows.last_mut().unwrap().capture = Some(0.5);
        let limits = AmbientLimits::qcvn_05_2023();
        assert!(derive(
            "aq-1",
            Grade::Reference,
            origin,
            &windows,
            &limits,
            settings(),
            1
        )
        .is_empty());
    }
}
