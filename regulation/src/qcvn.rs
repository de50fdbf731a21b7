//! National technical regulations as data: QCVN 05:2023/BTNMT ambient air limits and
//! QCVN 40:2011/BTNMT industrial wastewater limits.
//!
//! The shipped tables are constructors ([`AmbientLimits::qcvn_05_2023`],
//! [`WastewaterLimits::qcvn_40_2011`]); both types (de)serialise, so a deployment can load a
//! newer regulation (QCVN 40:2025 replaces QCVN 40:2011) from configuration without a
//! code change. Metric names are the canonical catalogue's; units are µg/m³ (ambient) and
//! mg/L, °C, Pt-Co, pH (wastewater). Running means for the 8-hour CO and O3 limits come
//! from [`crate::aqi::running_means`].

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Averaging period of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Period {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "8h")]
    EightHours,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "year")]
    Year,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Hour, Period::EightHours, Period::Day, Period::Year];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "1h",
            Period::EightHours => "8h",
            Period::Day => "24h",
            Period::Year => "year",
        }
    }

    pub fn parse(name: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A versioned table of ambient air limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmbientLimits {
    /// Which regulation the table is, e.g. "QCVN 05:2023/BTNMT", so published exceedances
    /// can name it.
    pub regulation: String,
    pub limits: Vec<AmbientLimit>,
}

/// One limit of an ambient table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmbientLimit {
    pub metric: String,
    pub period: Period,
    /// µg/m³ at 25 °C and 1 atm.
    pub value: f64,
    /// First day the value applies; `None` applies from the regulation's start. Limits that
    /// tighten on a date (PM2.5 24h) are several entries with different `from`.
    #[serde(default, with = "optional_date")]
    pub from: Option<NaiveDate>,
}

impl AmbientLimits {
    /// QCVN 05:2023/BTNMT (in force 12 Sep 2023), µg/Nm³ at 25 °C, 760 mmHg.
    pub fn qcvn_05_2023() -> AmbientLimits {
        use Period::{Day, EightHours, Hour, Year};
        let table: [(&str, Period, f64, Option<NaiveDate>); 19] = [
            ("so2", Hour, 350.0, None),
            ("so2", Day, 125.0, None),
            ("so2", Year, 50.0, None),
            ("co", Hour, 30000.0, None),
            ("co", EightHours, 10000.0, None),
            ("no2", Hour, 200.0, None),
            ("no2", Day, 100.0, None),
            ("no2", Year, 40.0, None),
            ("o3", Hour, 200.0, None),
            ("o3", EightHours, 120.0, None),
            ("tsp", Hour, 300.0, None),
            ("tsp", Day, 200.0, None),
            ("tsp", Year, 100.0, None),
            ("pm10", Day, 100.0, None),
            ("pm10", Year, 50.0, None),
            ("pm25", Day, 50.0, None),
            ("pm25", Day, 45.0, NaiveDate::from_ymd_opt(2026, 1, 1)),
            ("pm25", Year, 25.0, None),
            // Lead is not in the metric catalogue; "pb" follows its naming.
            ("pb", Day, 1.5, None),
        ];
        AmbientLimits {
            regulation: "QCVN 05:2023/BTNMT".to_owned(),
            limits: table
                .into_iter()
                .map(|(metric, period, value, from)| AmbientLimit {
                    metric: metric.to_owned(),
                    period,
                    value,
                    from,
                })
                .collect(),
        }
    }

    /// The limit for `metric` over `period` that applies on `date`: of the matching entries
    /// in force (`from` ≤ `date`, or no `from`), the one with the latest `from`; on equal
    /// `from` the first listed.
    pub fn limit(&self, metric: &str, period: Period, date: NaiveDate) -> Option<f64> {
        self.limits
            .iter()
            .filter(|l| l.metric == metric && l.period == period)
            .filter(|l| l.from.is_none_or(|from| from <= date))
            // `None` orders before any date; `rev` + `max_by_key` keeps the first of equals.
            .rev()
            .max_by_key(|l| l.from)
            .map(|l| l.value)
    }
}

impl Default for AmbientLimits {
    fn default() -> Self {
        AmbientLimits::qcvn_05_2023()
    }
}

/// Column of QCVN 40:2011: A for water used for domestic supply, B for other water.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Column {
    A,
    B,
}

/// A legal limit: a maximum, or a band that the value must stay inside (pH).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Max(f64),
    Band { low: f64, high: f64 },
}

/// A versioned table of wastewater limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WastewaterLimits {
    pub regulation: String,
    pub limits: Vec<WastewaterLimit>,
}

/// The column A and B values C of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WastewaterLimit {
    pub metric: String,
    pub a: Limit,
    pub b: Limit,
    /// Whether the legal maximum is C × Kq × Kf; temperature, colour and pH are held to C.
    pub factors: bool,
}

impl WastewaterLimits {
    /// QCVN 40:2011/BTNMT (mg/L; temperature °C, colour Pt-Co, pH).
    pub fn qcvn_40_2011() -> WastewaterLimits {
        let max = |a, b, metric: &str| WastewaterLimit {
            metric: metric.to_owned(),
            a: Limit::Max(a),
            b: Limit::Max(b),
            factors: true,
        };
        let fixed = |limit: WastewaterLimit| WastewaterLimit {
            factors: false,
            ..limit
        };
        WastewaterLimits {
            regulation: "QCVN 40:2011/BTNMT".to_owned(),
            limits: vec![
                fixed(max(40.0, 40.0, "temperature")),
                fixed(max(50.0, 150.0, "color")),
                WastewaterLimit {
                    metric: "ph".to_owned(),
                    a: Limit::Band {
                        low: 6.0,
                        high: 9.0,
                    },
                    b: Limit::Band {
                        low: 5.5,
                        high: 9.0,
                    },
                    factors: false,
                },
                max(30.0, 50.0, "bod5"),
                max(75.0, 150.0, "cod"),
                max(50.0, 100.0, "tss"),
                max(5.0, 10.0, "nh4"),
                max(20.0, 40.0, "total_n"),
                max(4.0, 6.0, "total_p"),
            ],
        }
    }

    /// The legal limit of `metric` in `column` for a discharge with receiving-water factor
    /// `kq` and flow factor `kf` (1 and 1 when a station has none configured). The factors
    /// multiply a maximum only for metrics with `factors`; a band is never scaled. They are
    /// taken as given: validating them belongs to the station configuration.
    pub fn limit(&self, metric: &str, column: Column, kq: f64, kf: f64) -> Option<Limit> {
        let entry = self.limits.iter().find(|l| l.metric == metric)?;
        let c = match column {
            Column::A => entry.a,
            Column::B => entry.b,
        };
        Some(match c {
            Limit::Max(value) if entry.factors => Limit::Max(value * kq * kf),
            other => other,
        })
    }
}

impl Default for WastewaterLimits {
    fn default() -> Self {
        WastewaterLimits::qcvn_40_2011()
    }
}

/// How far `value` is beyond `limit`, or `None` when it complies (or is not finite).
///
/// For a maximum: the multiple value ÷ limit when value > limit. For a band: the distance
/// outside it (low − value or value − high); a value on an edge is inside.
pub fn exceedance(value: f64, limit: Limit) -> Option<f64> {
    if !value.is_finite() {
        return None;
    }
    match limit {
        Limit::Max(max) => (value > max).then(|| value / max),
        Limit::Band { low, .. } if value < low => Some(low - value),
        Limit::Band { high, .. } if value > high => Some(value - high),
        Limit::Band { .. } => None,
    }
}

/// `Option<NaiveDate>` as "YYYY-MM-DD" or null, because chrono's own serde support is a
/// feature this crate does not enable.
mod optional_date {
    use chrono::NaiveDate;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(date: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
        match date {
            Some(d) => s.collect_str(&d.format("%Y-%m-%d")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                    .map_err(|e| D::Error::custom(format!("date {s:?}: {e}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn every_ambient_limit() {
        use Period::{Day, EightHours, Hour, Year};
        let table = AmbientLimits::default();
        assert_eq!(table.regulation, "QCVN 05:2023/BTNMT");
        // Every cell of the regulation's table on a day before 2026; None where it has "–".
        let expected: [(&str, [Option<f64>; 4]); 8] = [
            ("so2", [Some(350.0), None, Some(125.0), Some(50.0)]),
            ("co", [Some(30000.0), Some(10000.0), None, None]),
            ("no2", [Some(200.0), None, Some(100.0), Some(40.0)]),
            ("o3", [Some(200.0), Some(120.0), None, None]),
            ("tsp", [Some(300.0), None, Some(200.0), Some(100.0)]),
            ("pm10", [None, None, Some(100.0), Some(50.0)]),
            ("pm25", [None, None, Some(50.0), Some(25.0)]),
            ("pb", [None, None, Some(1.5), None]),
        ];
        let on = date(2025, 6, 1);
        for (metric, values) in expected {
            for (period, value) in [Hour, EightHours, Day, Year].into_iter().zip(values) {
                assert_eq!(table.limit(metric, period, on), value, "{metric} {period}");
            }
        }
        assert_eq!(table.limits.len(), 19);
        assert_eq!(table.limit("pm1", Day, on), None);
    }

    #[test]
    fn pm25_daily_limit_tightens_in_2026() {
        let table = AmbientLimits::qcvn_05_2023();
        assert_eq!(
            table.limit("pm25", Period::Day, date(2023, 9, 12)),
            Some(50.0)
        );
        assert_eq!(
            table.limit("pm25", Period::Day, date(2025, 12, 31)),
            Some(50.0)
        );
        assert_eq!(
            table.limit("pm25", Period::Day, date(2026, 1, 1)),
            Some(45.0)
        );
        assert_eq!(
            table.limit("pm25", Period::Day, date(2030, 1, 1)),
            Some(45.0)
        );
        assert_eq!(
            table.limit("pm25", Period::Year, date(2026, 1, 1)),
            Some(25.0)
        );
    }

    #[test]
    fn later_from_wins_regardless_of_order() {
        let mut table = AmbientLimits::qcvn_05_2023();
        table.limits.reverse();
        assert_eq!(
            table.limit("pm25", Period::Day, date(2025, 12, 31)),
            Some(50.0)
        );
        assert_eq!(
            table.limit("pm25", Period::Day, date(2026, 1, 1)),
            Some(45.0)
        );
    }

    #[test]
    fn equal_from_goes_to_the_first_listed() {
        let entry = |value| AmbientLimit {
            metric: "so2".to_owned(),
            period: Period::Hour,
            value,
            from: Some(date(2024, 1, 1)),
        };
        let table = AmbientLimits {
            regulation: "test".to_owned(),
            limits: vec![entry(1.0), entry(2.0)],
        };
        assert_eq!(
            table.limit("so2", Period::Hour, date(2024, 6, 1)),
            Some(1.0)
        );
        assert_eq!(table.limit("so2", Period::Hour, date(2023, 6, 1)), None);
    }

    #[test]
    fn ambient_table_round_trips_through_json() {
        let table = AmbientLimits::qcvn_05_2023();
        let json = serde_json::to_string(&table).unwrap();
        assert!(
            json.contains(r#""period":"24h","value":45.0,"from":"2026-01-01""#),
            "{json}"
        );
        let back: AmbientLimits = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
        // `from` may be left out of configuration.
        let entry: AmbientLimit =
            serde_json::from_str(r#"{"metric":"so2","period":"1h","value":350}"#).unwrap();
        assert_eq!(entry.from, None);
        let bad = serde_json::from_str::<AmbientLimit>(
            r#"{"metric":"so2","period":"1h","value":350,"from":"2026-13-01"}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn period_names() {
        for p in Period::ALL {
            assert_eq!(Period::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(Period::Day.as_str(), "24h");
    }

    #[test]
    fn every_wastewater_limit() {
        let table = WastewaterLimits::default();
        assert_eq!(table.regulation, "QCVN 40:2011/BTNMT");
        let expected = [
            ("temperature", 40.0, 40.0),
            ("color", 50.0, 150.0),
            ("bod5", 30.0, 50.0),
            ("cod", 75.0, 150.0),
            ("tss", 50.0, 100.0),
            ("nh4", 5.0, 10.0),
            ("total_n", 20.0, 40.0),
            ("total_p", 4.0, 6.0),
        ];
        for (metric, a, b) in expected {
            assert_eq!(
                table.limit(metric, Column::A, 1.0, 1.0),
                Some(Limit::Max(a)),
                "{metric} A"
            );
            assert_eq!(
                table.limit(metric, Column::B, 1.0, 1.0),
                Some(Limit::Max(b)),
                "{metric} B"
            );
        }
        assert_eq!(
            table.limit("ph", Column::A, 1.0, 1.0),
            Some(Limit::Band {
                low: 6.0,
                high: 9.0
            })
        );
        assert_eq!(
            table.limit("ph", Column::B, 1.0, 1.0),
            Some(Limit::Band {
                low: 5.5,
                high: 9.0
            })
        );
        assert_eq!(table.limits.len(), 9);
        assert_eq!(table.limit("coliform", Column::A, 1.0, 1.0), None);
    }

    #[test]
    fn factors_apply_to_cod_but_not_to_temperature_color_ph() {
        let table = WastewaterLimits::qcvn_40_2011();
        let (kq, kf) = (0.9, 1.1);
        match table.limit("cod", Column::A, kq, kf) {
            Some(Limit::Max(v)) => assert!((v - 74.25).abs() < 1e-9, "{v}"),
            other => panic!("{other:?}"),
        }
        match table.limit("cod", Column::B, 1.2, 1.0) {
            Some(Limit::Max(v)) => assert!((v - 180.0).abs() < 1e-9, "{v}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            table.limit("temperature", Column::A, kq, kf),
            Some(Limit::Max(40.0))
        );
        assert_eq!(
            table.limit("color", Column::B, kq, kf),
            Some(Limit::Max(150.0))
        );
        assert_eq!(
            table.limit("ph", Column::A, kq, kf),
            Some(Limit::Band {
                low: 6.0,
                high: 9.0
            })
        );
    }

    #[test]
    fn ph_band_exceedance() {
        let table = WastewaterLimits::qcvn_40_2011();
        let a = table.limit("ph", Column::A, 1.0, 1.0).unwrap();
        let b = table.limit("ph", Column::B, 1.0, 1.0).unwrap();
        let close = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() < 1e-9);
        assert!(close(exceedance(5.8, a), 0.2), "below the band");
        assert!(close(exceedance(9.5, a), 0.5), "above the band");
        assert_eq!(exceedance(6.0, a), None, "low edge is inside");
        assert_eq!(exceedance(9.0, a), None, "high edge is inside");
        assert_eq!(exceedance(7.0, a), None);
        assert_eq!(exceedance(5.8, b), None, "column B reaches 5.5");
        assert_eq!(exceedance(5.5, b), None);
        assert!(close(exceedance(5.0, b), 0.5));
    }

    #[test]
    fn max_exceedance_is_a_multiple() {
        assert_eq!(exceedance(150.0, Limit::Max(75.0)), Some(2.0));
        assert_eq!(exceedance(75.0, Limit::Max(75.0)), None);
        assert_eq!(exceedance(10.0, Limit::Max(75.0)), None);
        assert_eq!(exceedance(f64::NAN, Limit::Max(75.0)), None);
    }

    #[test]
    fn wastewater_table_round_trips_through_json() {
        let table = WastewaterLimits::qcvn_40_2011();
        let json = serde_json::to_string(&table).unwrap();
        assert!(
            json.contains(r#"{"metric":"ph","a":{"band":{"low":6.0,"high":9.0}}"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"metric":"cod","a":{"max":75.0},"b":{"max":150.0},"factors":true}"#)
        );
        let back: WastewaterLimits = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
    }
}
