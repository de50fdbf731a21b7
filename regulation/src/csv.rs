//! The `ioc aqi` file format: hourly means per station in, hourly and daily AQI out.
//!
//! Input is comma-separated text with the header [`HEADER`]; one row per station-hour:
//! `station_id`, `time` (the hour-ending local time, RFC 3339 with its offset, on the hour),
//! then pm25, pm10, o3, no2, so2, co in µg/m³, an empty cell being a missing value.
//! There is no quoting: no cell may contain a comma. Cells are taken verbatim (a space
//! around a number is an error). A UTF-8 byte-order mark, CRLF line ends and blank lines
//! are tolerated because spreadsheet exports produce them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, Timelike};
use serde::{Deserialize, Serialize};

use crate::aqi::{self, DailyInput, HourlyInput, DAY_HOURS, NOWCAST_HOURS, O3_PREVIOUS_HOURS};

/// The exact header line of an `ioc aqi` file.
pub const HEADER: &str = "station_id,time,pm25,pm10,o3,no2,so2,co";

const VALUE_COLUMNS: [&str; 6] = ["pm25", "pm10", "o3", "no2", "so2", "co"];
const SECONDS_PER_HOUR: i64 = 3600;

/// One row of an `ioc aqi` file.
#[derive(Debug, Clone, PartialEq)]
pub struct StationHour {
    pub station_id: String,
    /// End of the hour, local time with its offset; on the hour.
    pub time: DateTime<FixedOffset>,
    pub pm25: Option<f64>,
    pub pm10: Option<f64>,
    pub o3: Option<f64>,
    pub no2: Option<f64>,
    pub so2: Option<f64>,
    pub co: Option<f64>,
}

/// Why an `ioc aqi` file was rejected; every variant knows its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvError {
    /// The first line is not [`HEADER`] (an empty file has an empty first line).
    BadHeader {
        found: String,
    },
    FieldCount {
        line: usize,
        found: usize,
    },
    EmptyStationId {
        line: usize,
    },
    BadTime {
        line: usize,
        value: String,
    },
    NotOnTheHour {
        line: usize,
        value: String,
    },
    BadNumber {
        line: usize,
        column: &'static str,
        value: String,
    },
    /// The same station and instant twice (offsets may differ).
    Duplicate {
        line: usize,
        first_line: usize,
        station_id: String,
        time: String,
    },
}

impl CsvError {
    /// The 1-based line the error is on.
    pub fn line(&self) -> usize {
        match self {
            CsvError::BadHeader { .. } => 1,
            CsvError::FieldCount { line, .. }
            | CsvError::EmptyStationId { line }
            | CsvError::BadTime { line, .. }
            | CsvError::NotOnTheHour { line, .. }
            | CsvError::BadNumber { line, .. }
            | CsvError::Duplicate { line, .. } => *line,
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line())?;
        match self {
            CsvError::BadHeader { found } => write!(f, "header {found:?} is not {HEADER:?}"),
            CsvError::FieldCount { found, .. } => write!(
                f,
                "expected {} comma-separated fields, found {found}",
                2 + VALUE_COLUMNS.len()
            ),
            CsvError::EmptyStationId { .. } => f.write_str("station_id is empty"),
            CsvError::BadTime { value, .. } => {
                write!(f, "time {value:?} is not an RFC 3339 time with an offset")
            }
            CsvError::NotOnTheHour { value, .. } => write!(f, "time {value:?} is not on the hour"),
            CsvError::BadNumber { column, value, .. } => {
                write!(f, "{column} {value:?} is not a number")
            }
            CsvError::Duplicate {
                first_line,
                station_id,
                time,
                ..
            } => write!(
                f,
                "station {station_id:?} at {time} is already on line {first_line}"
            ),
        }
    }
}

impl std::error::Error for CsvError {}

/// Parse an `ioc aqi` file; the first malformed row stops it.
pub fn parse_hourly_csv(text: &str) -> Result<Vec<StationHour>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .zip(1..);
    let header = lines.next().map_or("", |(l, _)| l);
    if header != HEADER {
        return Err(CsvError::BadHeader {
            found: header.to_owned(),
        });
    }
    let mut rows = Vec::new();
    // (station, instant) → line, so a duplicate can point at the first.
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for (text, line) in lines.filter(|(l, _)| !l.is_empty()) {
        let row = parse_row(text, line)?;
        let key = (row.station_id.clone(), row.time.timestamp());
        if let Some(&first_line) = seen.get(&key) {
            return Err(CsvError::Duplicate {
                line,
                first_line,
                station_id: row.station_id,
                time: format_time(row.time),
            });
        }
        seen.insert(key, line);
        rows.push(row);
    }
    Ok(rows)
}

fn parse_row(text: &str, line: usize) -> Result<StationHour, CsvError> {
    let cells: Vec<&str> = text.split(',').collect();
    let [station_id, time, values @ ..] = cells.as_slice() else {
        return Err(CsvError::FieldCount {
            line,
            found: cells.len(),
        });
    };
    if values.len() != VALUE_COLUMNS.len() {
        return Err(CsvError::FieldCount {
            line,
            found: cells.len(),
        });
    }
    if station_id.is_empty() {
        return Err(CsvError::EmptyStationId { line });
    }
    let parsed = DateTime::parse_from_rfc3339(time).map_err(|_| CsvError::BadTime {
        line,
        value: (*time).to_owned(),
    })?;
    if parsed.minute() != 0 || parsed.second() != 0 || parsed.nanosecond() != 0 {
        return Err(CsvError::NotOnTheHour {
            line,
            value: (*time).to_owned(),
        });
    }
    let mut numbers = [None; 6];
    for ((slot, cell), column) in numbers.iter_mut().zip(values).zip(VALUE_COLUMNS) {
        *slot = parse_value(cell, column, line)?;
    }
    let [pm25, pm10, o3, no2, so2, co] = numbers;
    Ok(StationHour {
        station_id: (*station_id).to_owned(),
        time: parsed,
        pm25,
        pm10,
        o3,
        no2,
        so2,
        co,
    })
}

/// Empty is missing; NaN and infinities are rejected like any other non-number, since no
/// instrument reports them as a mean.
fn parse_value(cell: &str, column: &'static str, line: usize) -> Result<Option<f64>, CsvError> {
    if cell.is_empty() {
        return Ok(None);
    }
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(CsvError::BadNumber {
            line,
            column,
            value: cell.to_owned(),
        }),
    }
}

pub(crate) fn format_time(time: DateTime<FixedOffset>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// One line of the hourly report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourlyOut {
    pub station_id: String,
    /// The row's hour-ending time, RFC 3339 with its offset (UTC written as +00:00).
    pub time: String,
    pub aqi: Option<u32>,
    pub dominant: Option<String>,
    /// Rounded to 1 decimal for people; the AQI comes from the unrounded value.
    pub nowcast_pm25: Option<f64>,
    pub nowcast_pm10: Option<f64>,
}

/// One line of the daily report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyOut {
    pub station_id: String,
    /// "YYYY-MM-DD": the local date of hours ending 01:00 to 00:00 of the next day.
    pub date: String,
    pub aqi: Option<u32>,
    pub dominant: Option<String>,
    pub valid_hours: u32,
}

/// Station-hours by (station, hour-ending instant): what the hourly and daily AQI of any
/// station-hour or station-day is computed from, by `ioc aqi` and the live pipeline alike.
pub struct Hours<'a> {
    by_hour: HashMap<(&'a str, i64), &'a StationHour>,
}

impl<'a> Hours<'a> {
    /// Rows should be unique per station-hour, as [`parse_hourly_csv`] guarantees; otherwise
    /// one of the duplicates is seen.
    pub fn new(rows: &'a [StationHour]) -> Hours<'a> {
        Hours {
            by_hour: rows
                .iter()
                .map(|r| ((r.station_id.as_str(), r.time.timestamp()), r))
                .collect(),
        }
    }

    fn at(&self, station_id: &str, ending: i64) -> Option<&'a StationHour> {
        self.by_hour.get(&(station_id, ending)).copied()
    }

    /// The hourly AQI of the hour ending at `ending` (epoch seconds): its NowCast history is
    /// the station's 11 hours before it; an hour without a row is missing.
    pub fn hourly(&self, station_id: &str, ending: i64) -> aqi::Hourly {
        let history = |value: fn(&StationHour) -> Option<f64>| {
            let mut hours = [None; NOWCAST_HOURS];
            for (k, slot) in hours.iter_mut().enumerate() {
                *slot = self
                    .at(station_id, ending - k as i64 * SECONDS_PER_HOUR)
                    .and_then(value);
            }
            hours
        };
        let now = self.at(station_id, ending);
        aqi::hourly(&HourlyInput {
            pm25: history(|r| r.pm25),
            pm10: history(|r| r.pm10),
            o3: now.and_then(|r| r.o3),
            no2: now.and_then(|r| r.no2),
            so2: now.and_then(|r| r.so2),
            co: now.and_then(|r| r.co),
        })
    }

    /// The daily AQI of `date` in `offset`: its hours ending 01:00 to 00:00 of the next day;
    /// the 8-hour O3 means reach into the previous day's hours. See [`aqi::daily`] for
    /// `min_day_hours`.
    pub fn daily(
        &self,
        station_id: &str,
        date: NaiveDate,
        offset: FixedOffset,
        min_day_hours: usize,
    ) -> aqi::Daily {
        // The instant of local midnight starting the date: the end of its hour "0".
        let start = date.and_time(NaiveTime::MIN).and_utc().timestamp()
            - i64::from(offset.local_minus_utc());
        let at = |hour_end: i64| self.at(station_id, start + hour_end * SECONDS_PER_HOUR);
        let day = |value: fn(&StationHour) -> Option<f64>| {
            let mut hours = [None; DAY_HOURS];
            for (i, slot) in hours.iter_mut().enumerate() {
                *slot = at(i as i64 + 1).and_then(value);
            }
            hours
        };
        let mut o3_previous = [None; O3_PREVIOUS_HOURS];
        for (k, slot) in o3_previous.iter_mut().enumerate() {
            // Oldest first: hour ending 18:00 of the day before to hour ending 00:00.
            *slot = at(k as i64 + 1 - O3_PREVIOUS_HOURS as i64).and_then(|r| r.o3);
        }
        aqi::daily(
            &DailyInput {
                pm25: day(|r| r.pm25),
                pm10: day(|r| r.pm10),
                o3: day(|r| r.o3),
                no2: day(|r| r.no2),
                so2: day(|r| r.so2),
                co: day(|r| r.co),
                o3_previous,
            },
            min_day_hours,
        )
    }
}

fn sorted(rows: &[StationHour]) -> Vec<&StationHour> {
    let mut sorted: Vec<&StationHour> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (a.station_id.as_str(), a.time.timestamp())
            .cmp(&(b.station_id.as_str(), b.time.timestamp()))
    });
    sorted
}

/// The hourly AQI of every row, sorted by station then time ([`Hours::hourly`]).
pub fn hourly_report(rows: &[StationHour]) -> Vec<HourlyOut> {
    let hours = Hours::new(rows);
    sorted(rows)
        .into_iter()
        .map(|row| {
            let out = hours.hourly(&row.station_id, row.time.timestamp());
            HourlyOut {
                station_id: row.station_id.clone(),
                time: format_time(row.time),
                aqi: out.aqi,
                dominant: out.dominant.map(|p| p.as_str().to_owned()),
                nowcast_pm25: out.nowcast_pm25.map(round1),
                nowcast_pm10: out.nowcast_pm10.map(round1),
            }
        })
        .collect()
}

/// Rounded to 1 decimal, as people read a concentration.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The local date an hour-ending time belongs to: an hour ending at 00:00 is the previous
/// day's last hour.
fn aqi_date(time: DateTime<FixedOffset>) -> NaiveDate {
    (time - TimeDelta::hours(1)).date_naive()
}

/// The daily AQI of every station-day that has at least one row, sorted by station then
/// date ([`Hours::daily`]). A row's date is taken in its own offset, and a day's hours in
/// the offset of its earliest row (a station is expected to report in one offset).
pub fn daily_report(rows: &[StationHour], min_day_hours: usize) -> Vec<DailyOut> {
    let hours = Hours::new(rows);
    let mut days: BTreeMap<(&str, NaiveDate), FixedOffset> = BTreeMap::new();
    for row in sorted(rows) {
        days.entry((row.station_id.as_str(), aqi_date(row.time)))
            .or_insert(*row.time.offset());
    }
    days.into_iter()
        .map(|((station_id, date), offset)| {
            let out = hours.daily(station_id, date, offset, min_day_hours);
            DailyOut {
                station_id: station_id.to_owned(),
                date: date.format("%Y-%m-%d").to_string(),
                aqi: out.aqi,
                dominant: out.dominant.map(|p| p.as_str().to_owned()),
                valid_hours: out.valid_hours,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: &[&str]) -> String {
        let mut text = format!("{HEADER}\n");
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        text
    }

    #[test]
    fn parses_rows_and_empty_cells_are_missing() {
        let text = file(&[
            "S1,2026-03-01T01:00:00+07:00,12.5,30,,40,5,800",
            "S1,2026-03-01T02:00:00+07:00,,,,,,",
        ]);
        let rows = parse_hourly_csv(&text).unwrap();
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!(r.station_id, "S1");
        assert_eq!(format_time(r.time), "2026-03-01T01:00:00+07:00");
        assert_eq!(
            (r.pm25, r.pm10, r.o3, r.no2, r.so2, r.co),
            (
                Some(12.5),
                Some(30.0),
                None,
                Some(40.0),
                Some(5.0),
                Some(800.0)
            )
        );
        assert_eq!(rows[1].pm25, None);
        assert_eq!(rows[1].co, None);
    }

    #[test]
    fn tolerates_bom_crlf_and_blank_lines() {
        let text = format!(
            "\u{feff}{HEADER}\r\nS1,2026-03-01T01:00:00+07:00,1,2,3,4,5,6\r\n\r\nS1,2026-03-01T02:00:00+07:00,1,,,,,\r\n"
        );
        assert_eq!(parse_hourly_csv(&text).unwrap().len(), 2);
        assert_eq!(parse_hourly_csv(HEADER).unwrap(), vec![]);
    }

    #[test]
    fn malformed_row_names_its_line() {
        // Lines 2..=6 are good rows, line 7 is not.
        let mut lines: Vec<String> = (1..=5)
            .map(|n| format!("S{n},2026-03-01T01:00:00+07:00,1,2,3,4,5,6"))
            .collect();
        lines.push("S1,2026-03-01T02:00:00+07:00,1,abc,3,4,5,6".to_owned());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let err = parse_hourly_csv(&file(&refs)).unwrap_err();
        assert_eq!(err.line(), 7);
        assert_eq!(err.to_string(), r#"line 7: pm10 "abc" is not a number"#);
    }

    #[test]
    fn each_malformation_is_an_error() {
        let cases = [
            (
                "S1,2026-03-01T01:00:00+07:00,1,2,3,4,5",
                "line 2: expected 8 comma-separated fields, found 7",
            ),
            (
                "S1,2026-03-01T01:00:00+07:00,1,2,3,4,5,6,7",
                "line 2: expected 8 comma-separated fields, found 9",
            ),
            ("S1", "line 2: expected 8 comma-separated fields, found 1"),
            (
                ",2026-03-01T01:00:00+07:00,1,2,3,4,5,6",
                "line 2: station_id is empty",
            ),
            (
                "S1,2026-03-01 01:00,1,2,3,4,5,6",
                r#"line 2: time "2026-03-01 01:00" is not an RFC 3339 time with an offset"#,
            ),
            (
                "S1,2026-03-01T01:00:00,1,2,3,4,5,6",
                r#"line 2: time "2026-03-01T01:00:00" is not an RFC 3339 time with an offset"#,
            ),
            (
                "S1,2026-03-01T01:00:00.5+07:00,1,2,3,4,5,6",
                r#"line 2: time "2026-03-01T01:00:00.5+07:00" is not on the hour"#,
            ),
            (
                "S1,2026-03-01T01:30:00+07:00,1,2,3,4,5,6",
                r#"line 2: time "2026-03-01T01:30:00+07:00" is not on the hour"#,
            ),
            (
                "S1,2026-03-01T01:00:00+07:00,1,2,3,4,5,NaN",
                r#"line 2: co "NaN" is not a number"#,
            ),
            (
                "S1,2026-03-01T01:00:00+07:00, 1,2,3,4,5,6",
                r#"line 2: pm25 " 1" is not a number"#,
            ),
        ];
        for (row, message) in cases {
            let err = parse_hourly_csv(&file(&[row])).unwrap_err();
            assert_eq!(err.to_string(), message, "{row}");
        }
        let err = parse_hourly_csv("station,time,pm25,pm10,o3,no2,so2,co\n").unwrap_err();
        assert_eq!(err.line(), 1);
        assert!(matches!(err, CsvError::BadHeader { .. }));
        assert!(matches!(
            parse_hourly_csv(""),
            Err(CsvError::BadHeader { .. })
        ));
    }

    #[test]
    fn duplicate_station_hour_is_an_error() {
        let text = file(&[
            "S1,2026-03-01T01:00:00+07:00,1,2,3,4,5,6",
            "S2,2026-03-01T01:00:00+07:00,1,2,3,4,5,6",
            // The same instant written in UTC.
            "S1,2026-02-28T18:00:00Z,1,2,3,4,5,6",
        ]);
        let err = parse_hourly_csv(&text).unwrap_err();
        assert_eq!(err.line(), 4);
        assert_eq!(
            err.to_string(),
            r#"line 4: station "S1" at 2026-02-28T18:00:00+00:00 is already on line 2"#
        );
    }

    /// The decision's PM2.5 hours for one station, oldest first, ending at 12:00.
    fn decision_rows(station: &str) -> Vec<String> {
        let pm25 = [
            26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6,
        ];
        pm25.iter()
            .enumerate()
            .map(|(k, c)| format!("{station},2026-03-01T{:02}:00:00+07:00,{c},,,,,", k + 1))
            .collect()
    }

    #[test]
    fn hourly_report_uses_the_station_history_and_sorts() {
        let mut lines = decision_rows("S2");
        lines.reverse(); // input order must not matter
                         // Another station with its own, different history, listed after.
        lines.push("S1,2026-03-01T01:00:00+07:00,200,,,,,".to_owned());
        lines.push("S1,2026-03-01T03:00:00+07:00,200,,,,,".to_owned());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let rows = parse_hourly_csv(&file(&refs)).unwrap();
        let report = hourly_report(&rows);
        assert_eq!(report.len(), 14);
        assert_eq!(report[0].station_id, "S1");
        assert_eq!(report[0].time, "2026-03-01T01:00:00+07:00");
        // Only c1 present: no NowCast, so no AQI.
        assert_eq!(report[0].nowcast_pm25, None);
        assert_eq!(report[0].aqi, None);
        // 02:00 has no row: c2 missing, c1 and c3 present.
        assert_eq!(report[1].time, "2026-03-01T03:00:00+07:00");
        // Cmin = Cmax gives w = 1: the mean of the present hours.
        assert_eq!(report[1].nowcast_pm25, Some(200.0));
        let last = &report[13];
        assert_eq!(last.station_id, "S2");
        assert_eq!(last.time, "2026-03-01T12:00:00+07:00");
        assert_eq!(last.nowcast_pm25, Some(20.3));
        assert_eq!(last.nowcast_pm10, None);
        assert_eq!(last.aqi, Some(41));
        assert_eq!(last.dominant.as_deref(), Some("pm25"));
        let times: Vec<&str> = report[2..].iter().map(|r| r.time.as_str()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }

    #[test]
    fn daily_date_of_an_hour_ending_at_midnight_is_the_previous_day() {
        let midnight = file(&["S1,2026-03-02T00:00:00+07:00,20,,,,,"]);
        let report = daily_report(&parse_hourly_csv(&midnight).unwrap(), 1);
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].date, "2026-03-01");
        assert_eq!(report[0].valid_hours, 1);

        let text = file(&[
            "S1,2026-03-01T01:00:00+07:00,30,,,,,",
            "S1,2026-03-02T00:00:00+07:00,20,,,,,",
            "S1,2026-03-02T01:00:00+07:00,100,,,,,",
        ]);
        let rows = parse_hourly_csv(&text).unwrap();
        let report = daily_report(&rows, 1);
        assert_eq!(report.len(), 2);
        assert_eq!(report[0].date, "2026-03-01");
        assert_eq!(report[0].valid_hours, 2);
        // Mean of 30 and 20 is 25: exactly the I = 50 breakpoint.
        assert_eq!(report[0].aqi, Some(50));
        assert_eq!(report[1].date, "2026-03-02");
        assert_eq!(report[1].valid_hours, 1);
        // 150 + 50·(100 − 80)/70 = 164.3.
        assert_eq!(report[1].aqi, Some(164));
        assert_eq!(daily_report(&rows, 2)[1].aqi, None);
    }

    #[test]
    fn daily_o3_reaches_into_the_previous_day() {
        // O3 110 from the hour ending 19:00 on 1 Mar to the hour ending 02:00 on 2 Mar:
        // exactly one complete 8-hour window, ending in 2 Mar's second hour.
        let mut lines: Vec<String> = (19..=23)
            .map(|h| format!("S1,2026-03-01T{h}:00:00+07:00,,,110,,,"))
            .collect();
        lines.push("S1,2026-03-02T00:00:00+07:00,,,110,,,".to_owned());
        lines.push("S1,2026-03-02T01:00:00+07:00,10,,110,,,".to_owned());
        lines.push("S1,2026-03-02T02:00:00+07:00,,,110,,,".to_owned());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let rows = parse_hourly_csv(&file(&refs)).unwrap();
        let report = daily_report(&rows, 1);
        let day = report.iter().find(|d| d.date == "2026-03-02").unwrap();
        // O3 8h 110 → 75 beats O3 1h 110 → 34 and PM2.5 10 → 20.
        assert_eq!(day.aqi, Some(75));
        assert_eq!(day.dominant.as_deref(), Some("o3"));
    }

    #[test]
    fn reports_serialise_with_their_field_names_and_nulls() {
        let hourly = HourlyOut {
            station_id: "S1".to_owned(),
            time: "2026-03-01T01:00:00+07:00".to_owned(),
            aqi: None,
            dominant: None,
            nowcast_pm25: Some(20.3),
            nowcast_pm10: None,
        };
        assert_eq!(
            serde_json::to_string(&hourly).unwrap(),
            r#"{"station_id":"S1","time":"2026-03-01T01:00:00+07:00","aqi":null,"dominant":null,"nowcast_pm25":20.3,"nowcast_pm10":null}"#
        );
        let daily = DailyOut {
            station_id: "S1".to_owned(),
            date: "2026-03-01".to_owned(),
            aqi: Some(110),
            dominant: Some("pm25".to_owned()),
            valid_hours: 24,
        };
        assert_eq!(
            serde_json::to_string(&daily).unwrap(),
            r#"{"station_id":"S1","date":"2026-03-01","aqi":110,"dominant":"pm25","valid_hours":24}"#
        );
    }
}
