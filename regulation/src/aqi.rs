//! VN_AQI as defined by Decision 1459/QĐ-TCMT (12 Nov 2019).
//!
//! Concentrations are µg/m³ everywhere (CO too: 10 000 µg/m³ = 10 mg/m³).
//!
//! Rules the decision leaves open, and what this module does:
//! - A negative concentration (sensor offset around zero) counts as 0; a non-finite one
//!   (NaN, ±∞) counts as missing.
//! - Above the last breakpoint of a column the sub-index is 500, the top of the scale,
//!   except O3 8h, which has no sub-index above 400 µg/m³ (the decision drops the 8-hour
//!   column there and the 1-hour one decides).
//! - The PM sub-indices of the hourly AQI are computed from the unrounded NowCast.
//! - Ties for the dominant pollutant go to the first in [`Pollutant::ALL`]:
//!   PM2.5, PM10, O3, NO2, SO2, CO.

use serde::{Deserialize, Serialize};

/// Number of hourly means NowCast looks back over, the current hour included.
pub const NOWCAST_HOURS: usize = 12;
/// Hours in an AQI day (hour ending 01:00 to hour ending 00:00 of the next day).
pub const DAY_HOURS: usize = 24;
/// Length of the O3 running mean that the daily AQI uses.
pub const O3_RUNNING_HOURS: usize = 8;
/// Previous-day O3 hours needed for the running means that end in the day's first hours.
pub const O3_PREVIOUS_HOURS: usize = O3_RUNNING_HOURS - 1;
/// Default minimum number of present hours for a daily PM mean.
pub const DEFAULT_MIN_DAY_HOURS: usize = 1;

/// A pollutant that takes part in VN_AQI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pollutant {
    Pm25,
    Pm10,
    O3,
    No2,
    So2,
    Co,
}

impl Pollutant {
    /// Every pollutant, in the order that breaks ties for the dominant pollutant.
    pub const ALL: [Pollutant; 6] = [
        Pollutant::Pm25,
        Pollutant::Pm10,
        Pollutant::O3,
        Pollutant::No2,
        Pollutant::So2,
        Pollutant::Co,
    ];

    /// The canonical metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            Pollutant::Pm25 => "pm25",
            Pollutant::Pm10 => "pm10",
            Pollutant::O3 => "o3",
            Pollutant::No2 => "no2",
            Pollutant::So2 => "so2",
            Pollutant::Co => "co",
        }
    }

    /// The pollutant whose canonical metric name is `name` (exact match).
    pub fn parse(name: &str) -> Option<Pollutant> {
        Pollutant::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl std::fmt::Display for Pollutant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A column of the breakpoint table: a pollutant with its averaging time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    O3Hour,
    O3EightHours,
    Co,
    So2,
    No2,
    Pm10,
    Pm25,
}

impl Column {
    /// Every column, in the order of the decision's table.
    pub const ALL: [Column; 7] = [
        Column::O3Hour,
        Column::O3EightHours,
        Column::Co,
        Column::So2,
        Column::No2,
        Column::Pm10,
        Column::Pm25,
    ];

    /// The breakpoints `BP[i]` (µg/m³) of the index values `INDEX_BREAKPOINTS[i]`.
    /// O3 8h stops at I = 300.
    pub fn breakpoints(self) -> &'static [f64] {
        match self {
            Column::O3Hour => &[0.0, 160.0, 200.0, 300.0, 400.0, 800.0, 1000.0, 1200.0],
            Column::O3EightHours => &[0.0, 100.0, 120.0, 170.0, 210.0, 400.0],
            Column::Co => &[
                0.0, 10000.0, 30000.0, 45000.0, 60000.0, 90000.0, 120000.0, 150000.0,
            ],
            Column::So2 => &[0.0, 125.0, 350.0, 550.0, 800.0, 1600.0, 2100.0, 2630.0],
            Column::No2 => &[0.0, 100.0, 200.0, 700.0, 1200.0, 2350.0, 3100.0, 3850.0],
            Column::Pm10 => &[0.0, 50.0, 150.0, 250.0, 350.0, 420.0, 500.0, 600.0],
            Column::Pm25 => &[0.0, 25.0, 50.0, 80.0, 150.0, 250.0, 350.0, 500.0],
        }
    }
}

/// The index values `I[i]` of the breakpoint table's rows.
pub const INDEX_BREAKPOINTS: [u32; 8] = [0, 50, 100, 150, 200, 300, 400, 500];

/// Sub-index of a concentration (µg/m³) against one column, rounded half up.
///
/// A concentration exactly at `BP[i]` gives `I[i]`; between breakpoints it is interpolated on
/// the segment that contains it. Above the last breakpoint the sub-index is 500, except for
/// O3 8h, which gives `None` above 400 µg/m³. Negative concentrations count as 0;
/// non-finite ones give `None`.
pub fn sub_index(column: Column, concentration: f64) -> Option<u32> {
    let c = clean(concentration)?;
    let bp = column.breakpoints();
    let last = bp.len() - 1;
    if c > bp[last] {
        return match column {
            Column::O3EightHours => None,
            _ => Some(500),
        };
    }
    // First segment whose upper edge reaches c; c == BP[i] lands on the lower segment's
    // upper edge and so gives I[i] exactly.
    let i = (0..last).find(|&i| c <= bp[i + 1])?;
    if c == bp[i + 1] {
        return Some(INDEX_BREAKPOINTS[i + 1]);
    }
    let (i_lo, i_hi) = (
        f64::from(INDEX_BREAKPOINTS[i]),
        f64::from(INDEX_BREAKPOINTS[i + 1]),
    );
    let value = (i_hi - i_lo) * (c - bp[i]) / (bp[i + 1] - bp[i]) + i_lo;
    Some(round_half_up(value))
}

/// Round half up for non-negative values. The small tolerance keeps halves that binary
/// floating point lands just below rounding up (O3 1h 36.8 µg/m³ is 11.5 in decimal but
/// 11.4999… in `f64`).
fn round_half_up(value: f64) -> u32 {
    // Values are within 0..=500 here, so the cast cannot truncate.
    (value + 0.5 + 1e-9).floor() as u32
}

/// Negative concentrations count as 0, non-finite ones as missing.
fn clean(c: f64) -> Option<f64> {
    c.is_finite().then_some(c.max(0.0))
}

fn clean_all(hours: &[Option<f64>]) -> Vec<Option<f64>> {
    hours.iter().map(|h| h.and_then(clean)).collect()
}

/// NowCast of the last hourly means, newest first: `hours[0]` is c1, the current hour.
///
/// Only the first [`NOWCAST_HOURS`] values are used; missing ones are `None`. There is no
/// NowCast when fewer than 2 of c1, c2, c3 are present. With w* = Cmin/Cmax over the
/// present values, w = 1/2 if w* ≤ 1/2, else w*. For w > 1/2 the result is
/// Σ w^(i−1)·ci / Σ w^(i−1); for w = 1/2 it is Σ (1/2)^i·ci, not normalised, exactly as the
/// decision writes it. Sums run over present hours only. All zeros give 0.
pub fn nowcast(hours: &[Option<f64>]) -> Option<f64> {
    let hours = clean_all(&hours[..hours.len().min(NOWCAST_HOURS)]);
    if hours.iter().take(3).flatten().count() < 2 {
        return None;
    }
    let w = nowcast_weight(&hours)?;
    // Pairs (i − 1, ci) for the present hours, i counted from 1.
    let present = || {
        hours
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.map(|c| (k as i32, c)))
    };
    if w > 0.5 {
        let numerator: f64 = present().map(|(k, c)| w.powi(k) * c).sum();
        let denominator: f64 = present().map(|(k, _)| w.powi(k)).sum();
        Some(numerator / denominator)
    } else {
        Some(present().map(|(k, c)| 0.5f64.powi(k + 1) * c).sum())
    }
}

/// The NowCast weight w for cleaned hours; `None` if none are present.
fn nowcast_weight(hours: &[Option<f64>]) -> Option<f64> {
    let mut present = hours.iter().flatten().copied();
    let first = present.next()?;
    let (min, max) = present.fold((first, first), |(lo, hi), c| (lo.min(c), hi.max(c)));
    if max == 0.0 {
        // All zeros: the hours agree perfectly, and any w gives 0.
        return Some(1.0);
    }
    let w_star = min / max;
    Some(if w_star <= 0.5 { 0.5 } else { w_star })
}

/// Running means of `n` consecutive hours, oldest first.
///
/// Element i is the mean of `hours[i + 1 − n ..= i]` (the mean ending at hour i) when all
/// `n` of those hours are present and finite, otherwise `None`; the first `n − 1` elements
/// are therefore `None`. The result has the length of `hours`; `n == 0` gives all `None`.
pub fn running_means(hours: &[Option<f64>], n: usize) -> Vec<Option<f64>> {
    (0..hours.len())
        .map(|i| {
            if n == 0 || i + 1 < n {
                return None;
            }
            let window = &hours[i + 1 - n..=i];
            let sum = window
                .iter()
                .map(|h| h.filter(|c| c.is_finite()))
                .sum::<Option<f64>>()?;
            Some(sum / n as f64)
        })
        .collect()
}

/// An AQI band of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Band {
    /// 1 (Tốt/Good) to 6 (Nguy hại/Hazardous).
    pub level: u8,
    pub vi: &'static str,
    pub en: &'static str,
    /// `#rrggbb`, the decision's RGB values.
    pub colour: &'static str,
}

const BANDS: [(u32, Band); 6] = [
    (
        50,
        Band {
            level: 1,
            vi: "Tốt",
            en: "Good",
            colour: "#00e400",
        },
    ),
    (
        100,
        Band {
            level: 2,
            vi: "Trung bình",
            en: "Moderate",
            colour: "#ffff00",
        },
    ),
    (
        150,
        Band {
            level: 3,
            vi: "Kém",
            en: "Poor",
            colour: "#ff7e00",
        },
    ),
    (
        200,
        Band {
            level: 4,
            vi: "Xấu",
            en: "Bad",
            colour: "#ff0000",
        },
    ),
    (
        300,
        Band {
            level: 5,
            vi: "Rất xấu",
            en: "Very bad",
            colour: "#8f3f97",
        },
    ),
    (
        500,
        Band {
            level: 6,
            vi: "Nguy hại",
            en: "Hazardous",
            colour: "#7e0023",
        },
    ),
];

/// The band of an AQI value; above 500 is still Hazardous (level 6).
pub fn band(aqi: u32) -> Band {
    BANDS
        .iter()
        .find(|(upper, _)| aqi <= *upper)
        .map_or(BANDS[5].1, |(_, band)| *band)
}

/// Every band with the AQI values it covers (from, to; the last is open above 500).
pub fn bands() -> Vec<(u32, u32, Band)> {
    let mut from = 0;
    BANDS
        .iter()
        .map(|(upper, band)| {
            let row = (from, *upper, *band);
            from = upper + 1;
            row
        })
        .collect()
}

/// What a band means for health, for the public and for sensitive groups (the elderly,
/// children, people with respiratory or heart disease), in Vietnamese and English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Advice {
    pub general_vi: &'static str,
    pub general_en: &'static str,
    pub sensitive_vi: &'static str,
    pub sensitive_en: &'static str,
}

/// The health advice of a band (level 1–6), after Decision 1459's table of recommendations:
/// from 151 the public is affected, from 201 everyone should keep outdoor activity to a
/// minimum, from 301 stay indoors.
pub fn advice(level: u8) -> Advice {
    const FREE_VI: &str = "Tự do thực hiện các hoạt động ngoài trời.";
    const FREE_EN: &str = "Enjoy outdoor activities freely.";
    const INDOORS_VI: &str = "Mọi người nên ở trong nhà, đóng cửa ra vào và cửa sổ. Nếu cần thiết phải ra ngoài, hãy đeo khẩu trang đạt tiêu chuẩn.";
    const INDOORS_EN: &str = "Everyone should stay indoors with doors and windows closed. If you must go out, wear a certified mask.";
    let (general_vi, general_en, sensitive_vi, sensitive_en) = match level {
        0 | 1 => (FREE_VI, FREE_EN, FREE_VI, FREE_EN),
        2 => (
            FREE_VI,
            FREE_EN,
            "Nên theo dõi các triệu chứng như ho hoặc khó thở, nhưng vẫn có thể hoạt động bên ngoài.",
            "Watch for symptoms such as coughing or shortness of breath, but outdoor activity is still fine.",
        ),
        3 => (
            "Những người thấy có triệu chứng đau mắt, ho hoặc đau họng nên cân nhắc giảm các hoạt động ngoài trời.",
            "People with sore eyes, a cough or a sore throat should consider doing less outdoors.",
            "Nên giảm các hoạt động mạnh và giảm thời gian hoạt động ngoài trời. Những người mắc bệnh hen suyễn có thể cần sử dụng thuốc thường xuyên hơn.",
            "Reduce strenuous activity and time spent outdoors. People with asthma may need their medicine more often.",
        ),
        4 => (
            "Mọi người nên giảm các hoạt động mạnh khi ở ngoài trời, tránh tập thể dục kéo dài và nghỉ ngơi nhiều hơn trong nhà.",
            "Everyone should reduce strenuous activity outdoors, avoid prolonged exercise and rest indoors more.",
            "Nên ở trong nhà và giảm hoạt động mạnh. Nếu cần thiết phải ra ngoài, hãy đeo khẩu trang đạt tiêu chuẩn.",
            "Stay indoors and reduce strenuous activity. If you must go out, wear a certified mask.",
        ),
        5 => (
            "Mọi người hạn chế tối đa các hoạt động ngoài trời và chuyển tất cả các hoạt động vào trong nhà. Nếu cần thiết phải ra ngoài, hãy đeo khẩu trang đạt tiêu chuẩn.",
            "Everyone should keep outdoor activity to a minimum and move all activities indoors. If you must go out, wear a certified mask.",
            "Nên ở trong nhà và giảm hoạt động mạnh.",
            "Stay indoors and reduce strenuous activity.",
        ),
        _ => (INDOORS_VI, INDOORS_EN, INDOORS_VI, INDOORS_EN),
    };
    Advice {
        general_vi,
        general_en,
        sensitive_vi,
        sensitive_en,
    }
}

/// Sub-indices of one hour or day; `None` where there was no data (or, for O3 8h, the
/// 8-hour column does not apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubIndices {
    pub pm25: Option<u32>,
    pub pm10: Option<u32>,
    pub o3_1h: Option<u32>,
    /// Only the daily AQI uses the 8-hour O3 column.
    pub o3_8h: Option<u32>,
    pub no2: Option<u32>,
    pub so2: Option<u32>,
    pub co: Option<u32>,
}

impl SubIndices {
    /// The sub-index that stands for a pollutant: for O3 the larger of 1h and 8h.
    pub fn get(&self, pollutant: Pollutant) -> Option<u32> {
        match pollutant {
            Pollutant::Pm25 => self.pm25,
            Pollutant::Pm10 => self.pm10,
            Pollutant::O3 => self.o3_1h.max(self.o3_8h),
            Pollutant::No2 => self.no2,
            Pollutant::So2 => self.so2,
            Pollutant::Co => self.co,
        }
    }

    /// AQI (the largest sub-index) and dominant pollutant (ties to the first in
    /// [`Pollutant::ALL`]); `None` unless PM2.5 or PM10 has a sub-index.
    pub fn aqi(&self) -> Option<(u32, Pollutant)> {
        if self.pm25.is_none() && self.pm10.is_none() {
            return None;
        }
        Pollutant::ALL
            .into_iter()
            .filter_map(|p| self.get(p).map(|i| (i, p)))
            // Strictly greater keeps the earlier pollutant on a tie.
            .fold(None, |best, (i, p)| match best {
                Some((b, _)) if b >= i => best,
                _ => Some((i, p)),
            })
    }
}

/// One station-hour of input for the hourly AQI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourlyInput {
    /// The last 12 hourly PM2.5 means, newest (the current hour) first.
    pub pm25: [Option<f64>; NOWCAST_HOURS],
    /// The last 12 hourly PM10 means, newest (the current hour) first.
    pub pm10: [Option<f64>; NOWCAST_HOURS],
    /// The current hour's means.
    pub o3: Option<f64>,
    pub no2: Option<f64>,
    pub so2: Option<f64>,
    pub co: Option<f64>,
}

/// Hourly AQI of one station-hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hourly {
    pub aqi: Option<u32>,
    pub dominant: Option<Pollutant>,
    pub sub_indices: SubIndices,
    /// Unrounded; the PM sub-indices come from these.
    pub nowcast_pm25: Option<f64>,
    pub nowcast_pm10: Option<f64>,
}

/// Hourly AQI: PM from the NowCast, O3 against the 1h column, NO2/SO2/CO from the hour.
pub fn hourly(input: &HourlyInput) -> Hourly {
    let nowcast_pm25 = nowcast(&input.pm25);
    let nowcast_pm10 = nowcast(&input.pm10);
    let index = |column, c: Option<f64>| c.and_then(|c| sub_index(column, c));
    let sub_indices = SubIndices {
        pm25: index(Column::Pm25, nowcast_pm25),
        pm10: index(Column::Pm10, nowcast_pm10),
        o3_1h: index(Column::O3Hour, input.o3),
        o3_8h: None,
        no2: index(Column::No2, input.no2),
        so2: index(Column::So2, input.so2),
        co: index(Column::Co, input.co),
    };
    let aqi = sub_indices.aqi();
    Hourly {
        aqi: aqi.map(|(i, _)| i),
        dominant: aqi.map(|(_, p)| p),
        sub_indices,
        nowcast_pm25,
        nowcast_pm10,
    }
}

/// One station-day of input for the daily AQI. Hours run oldest first: index 0 is the
/// hour ending 01:00 local, index 23 the hour ending 00:00 of the next day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyInput {
    pub pm25: [Option<f64>; DAY_HOURS],
    pub pm10: [Option<f64>; DAY_HOURS],
    pub o3: [Option<f64>; DAY_HOURS],
    pub no2: [Option<f64>; DAY_HOURS],
    pub so2: [Option<f64>; DAY_HOURS],
    pub co: [Option<f64>; DAY_HOURS],
    /// The previous day's last 7 hourly O3 means, oldest first (hour ending 18:00 to hour
    /// ending 00:00), so that 8-hour means ending in the day's first 7 hours exist.
    pub o3_previous: [Option<f64>; O3_PREVIOUS_HOURS],
}

/// Daily AQI of one station-day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daily {
    pub aqi: Option<u32>,
    pub dominant: Option<Pollutant>,
    pub sub_indices: SubIndices,
    /// The larger of the PM2.5 and PM10 present-hour counts: how much of the day the PM
    /// means, which make or break the AQI, rest on.
    pub valid_hours: u32,
}

/// Daily AQI.
///
/// PM2.5 and PM10: the mean of the day's present hours, if at least `min_day_hours` are
/// present (0 is taken as 1). SO2, NO2, CO: the day's highest hourly mean (no minimum).
/// O3: the larger of the 1h sub-index of the highest hourly mean and the 8h sub-index of
/// the highest 8-hour running mean ending in the day's hours (each needs all 8 hours;
/// the 8h column is skipped when that highest mean is above 400 µg/m³).
pub fn daily(input: &DailyInput, min_day_hours: usize) -> Daily {
    let min_day_hours = min_day_hours.max(1);
    let pm_mean = |hours: &[Option<f64>]| {
        let present: Vec<f64> = clean_all(hours).into_iter().flatten().collect();
        let mean = (present.len() >= min_day_hours)
            .then(|| present.iter().sum::<f64>() / present.len() as f64);
        (mean, present.len())
    };
    let (pm25_mean, pm25_hours) = pm_mean(&input.pm25);
    let (pm10_mean, pm10_hours) = pm_mean(&input.pm10);

    let o3_series: Vec<Option<f64>> = input
        .o3_previous
        .iter()
        .chain(input.o3.iter())
        .copied()
        .collect();
    let o3_series = clean_all(&o3_series);
    // Means ending in the day's hours are the last 24 of the series.
    let o3_8h_max = max_present(&running_means(&o3_series, O3_RUNNING_HOURS)[O3_PREVIOUS_HOURS..]);

    let index = |column, c: Option<f64>| c.and_then(|c| sub_index(column, c));
    let sub_indices = SubIndices {
        pm25: index(Column::Pm25, pm25_mean),
        pm10: index(Column::Pm10, pm10_mean),
        o3_1h: index(Column::O3Hour, max_present(&input.o3)),
        o3_8h: index(Column::O3EightHours, o3_8h_max),
        no2: index(Column::No2, max_present(&input.no2)),
        so2: index(Column::So2, max_present(&input.so2)),
        co: index(Column::Co, max_present(&input.co)),
    };
    let aqi = sub_indices.aqi();
    Daily {
        aqi: aqi.map(|(i, _)| i),
        dominant: aqi.map(|(_, p)| p),
        sub_indices,
        // At most 24, so the cast cannot truncate.
        valid_hours: pm25_hours.max(pm10_hours) as u32,
    }
}

/// Highest present, finite value (negatives as 0).
fn max_present(hours: &[Option<f64>]) -> Option<f64> {
    hours
        .iter()
        .filter_map(|h| h.and_then(clean))
        .fold(None, |best: Option<f64>, c| {
            Some(best.map_or(c, |b| b.max(c)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The decision's worked example, newest first.
    fn decision_pm25() -> [Option<f64>; 12] {
        let oldest_first = [
            26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6,
        ];
        let mut hours = [None; 12];
        for (k, c) in oldest_first.iter().rev().enumerate() {
            hours[k] = Some(*c);
        }
        hours
    }

    #[test]
    fn pollutant_names_round_trip() {
        for p in Pollutant::ALL {
            assert_eq!(Pollutant::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(Pollutant::Pm25.as_str(), "pm25");
        assert_eq!(Pollutant::parse("PM2.5"), None);
    }

    #[test]
    fn decision_nowcast_example() {
        let hours = decision_pm25();
        let w = nowcast_weight(&hours).unwrap();
        assert!((w - 0.61).abs() < 0.005, "w = {w}");
        let nc = nowcast(&hours).unwrap();
        assert!((nc - 20.3).abs() < 0.05, "NowCast = {nc}");
        let out = hourly(&HourlyInput {
            pm25: hours,
            o3: Some(136.1),
            ..HourlyInput::default()
        });
        assert_eq!(out.sub_indices.pm25, Some(41));
        assert_eq!(out.sub_indices.o3_1h, Some(43));
        assert_eq!(out.aqi, Some(43));
        assert_eq!(out.dominant, Some(Pollutant::O3));
    }

    #[test]
    fn o3_1h_golden() {
        assert_eq!(sub_index(Column::O3Hour, 136.1), Some(43));
    }

    #[test]
    fn every_breakpoint_edge_gives_its_index() {
        for column in Column::ALL {
            let bp = column.breakpoints();
            for (i, c) in bp.iter().enumerate() {
                assert_eq!(
                    sub_index(column, *c),
                    Some(INDEX_BREAKPOINTS[i]),
                    "{column:?} at {c}"
                );
            }
            let above = bp[bp.len() - 1] + 0.1;
            let expected = match column {
                Column::O3EightHours => None,
                _ => Some(500),
            };
            assert_eq!(
                sub_index(column, above),
                expected,
                "{column:?} above the table"
            );
        }
        assert_eq!(Column::O3EightHours.breakpoints().len(), 6);
        assert_eq!(sub_index(Column::Pm25, 25.0), Some(50));
        assert_eq!(sub_index(Column::Pm25, 50.0), Some(100));
    }

    #[test]
    fn interpolates_on_the_containing_segment() {
        // Just above an edge belongs to the upper segment.
        assert_eq!(sub_index(Column::Pm25, 25.1), Some(50));
        assert_eq!(sub_index(Column::Pm25, 26.0), Some(52));
        assert_eq!(sub_index(Column::Pm25, 37.5), Some(75));
        assert_eq!(sub_index(Column::No2, 450.0), Some(125));
        assert_eq!(sub_index(Column::Co, 20000.0), Some(75));
        // 55.7 → 109.5 exactly in decimal, rounded half up.
        assert_eq!(sub_index(Column::Pm25, 55.7), Some(110));
        assert_eq!(sub_index(Column::Pm25, 12.25), Some(25)); // 24.5 → 25
                                                              // Exact halves that f64 computes as x.4999…
        assert_eq!(sub_index(Column::O3Hour, 36.8), Some(12));
        assert_eq!(sub_index(Column::O3Hour, 139.2), Some(44));
    }

    #[test]
    fn negative_is_zero_and_non_finite_is_missing() {
        assert_eq!(sub_index(Column::Pm25, -3.0), Some(0));
        assert_eq!(sub_index(Column::Pm25, f64::NAN), None);
        assert_eq!(sub_index(Column::Pm25, f64::INFINITY), None);
    }

    #[test]
    fn nowcast_missing_hours_when_w_above_half() {
        // Cmin 20, Cmax 30: w = 2/3. Present i = 1, 3, 4.
        // (20 + 30·(4/9) + 25·(8/27)) / (1 + 4/9 + 8/27) = 1100/47.
        let hours = [Some(20.0), None, Some(30.0), Some(25.0)];
        assert!(approx(nowcast(&hours).unwrap(), 1100.0 / 47.0));
    }

    #[test]
    fn nowcast_missing_hours_when_w_is_half() {
        // Cmin 4, Cmax 40: w* = 0.1, so w = 1/2 and the unnormalised sum applies:
        // 10/2 + 40/4 + (c3 missing) + 4/16 = 15.25.
        let hours = [Some(10.0), Some(40.0), None, Some(4.0)];
        assert!(approx(nowcast(&hours).unwrap(), 15.25));
    }

    #[test]
    fn nowcast_needs_two_of_the_first_three_hours() {
        let mut hours = [None; 12];
        hours[0] = Some(10.0);
        hours[3] = Some(10.0);
        hours[4] = Some(10.0);
        assert_eq!(nowcast(&hours), None, "only c1 of c1..c3");
        hours[2] = Some(10.0);
        assert!(approx(nowcast(&hours).unwrap(), 10.0), "c1 and c3");
        hours[0] = None;
        hours[1] = Some(10.0);
        assert!(
            approx(nowcast(&hours).unwrap(), 10.0),
            "c2 and c3, c1 missing"
        );
        assert_eq!(nowcast(&[]), None);
    }

    #[test]
    fn nowcast_of_zeros_is_zero_and_extra_hours_are_ignored() {
        assert_eq!(nowcast(&[Some(0.0); 12]), Some(0.0));
        // A 13th value, however large, is outside the 12 hours.
        let mut hours = vec![Some(10.0); 12];
        hours.push(Some(1000.0));
        assert!(approx(nowcast(&hours).unwrap(), 10.0));
    }

    #[test]
    fn bands() {
        let level = |aqi| band(aqi).level;
        let cases = [
            (0, 1),
            (50, 1),
            (51, 2),
            (100, 2),
            (101, 3),
            (150, 3),
            (151, 4),
            (200, 4),
            (201, 5),
            (300, 5),
            (301, 6),
            (500, 6),
            (999, 6),
        ];
        for (aqi, expected) in cases {
            assert_eq!(level(aqi), expected, "AQI {aqi}");
        }
        assert_eq!(band(42).vi, "Tốt");
        let ranges: Vec<(u32, u32)> = super::bands().iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(
            ranges,
            [
                (0, 50),
                (51, 100),
                (101, 150),
                (151, 200),
                (201, 300),
                (301, 500)
            ]
        );
        // The public is affected from 151; from 301 everyone stays indoors.
        assert!(advice(3).general_vi.contains("cân nhắc"));
        assert!(advice(4).general_en.starts_with("Everyone"));
        assert_eq!(advice(6).general_vi, advice(6).sensitive_vi);
        assert!(advice(6).general_en.contains("stay indoors"));
        assert_eq!(band(42).colour, "#00e400");
        assert_eq!(band(120).en, "Poor");
        assert_eq!(band(250).colour, "#8f3f97");
        assert_eq!(band(400).colour, "#7e0023");
    }

    #[test]
    fn no_aqi_without_pm() {
        let out = hourly(&HourlyInput {
            o3: Some(180.0),
            no2: Some(150.0),
            ..HourlyInput::default()
        });
        assert_eq!(out.sub_indices.o3_1h, Some(75));
        assert_eq!(out.aqi, None);
        assert_eq!(out.dominant, None);

        let day = daily(
            &DailyInput {
                no2: [Some(130.8); 24],
                ..DailyInput::default()
            },
            1,
        );
        assert_eq!(day.sub_indices.no2, Some(65));
        assert_eq!(day.aqi, None);
        assert_eq!(day.valid_hours, 0);
    }

    #[test]
    fn dominant_tie_goes_to_the_earlier_pollutant() {
        let out = hourly(&HourlyInput {
            pm25: [Some(25.0); 12],
            pm10: [Some(50.0); 12],
            no2: Some(100.0),
            ..HourlyInput::default()
        });
        assert_eq!(out.aqi, Some(50));
        assert_eq!(out.dominant, Some(Pollutant::Pm25));
    }

    /// The decision's daily example: O3 8h 89.3, O3 1h 114.6, NO2 130.8, PM2.5 55.7.
    #[test]
    fn decision_daily_example() {
        let mut o3 = [Some(20.0); 24];
        // Hours 10..18 average 89.3 and hold the day's highest hour, 114.6.
        let block = [114.6, 85.0, 85.0, 85.0, 85.0, 85.0, 85.0, 89.8];
        for (k, c) in block.iter().enumerate() {
            o3[10 + k] = Some(*c);
        }
        let mut no2 = [Some(40.0); 24];
        no2[5] = Some(130.8);
        let input = DailyInput {
            pm25: [Some(55.7); 24],
            o3,
            no2,
            o3_previous: [Some(20.0); 7],
            ..DailyInput::default()
        };
        let day = daily(&input, DEFAULT_MIN_DAY_HOURS);
        assert_eq!(day.sub_indices.o3_8h, Some(45));
        assert_eq!(day.sub_indices.o3_1h, Some(36));
        assert_eq!(day.sub_indices.no2, Some(65));
        assert_eq!(day.sub_indices.pm25, Some(110));
        assert_eq!(day.aqi, Some(110));
        assert_eq!(day.dominant, Some(Pollutant::Pm25));
        assert_eq!(day.valid_hours, 24);
    }

    #[test]
    fn daily_o3_8h_is_skipped_above_400() {
        let input = DailyInput {
            pm25: [Some(10.0); 24],
            o3: [Some(450.0); 24],
            o3_previous: [Some(450.0); 7],
            ..DailyInput::default()
        };
        let day = daily(&input, 1);
        assert_eq!(day.sub_indices.o3_8h, None);
        // 450 on the 1h column: 200 + 100·50/400 = 212.5, rounded half up.
        assert_eq!(day.sub_indices.o3_1h, Some(213));
        assert_eq!(day.aqi, Some(213));
        assert_eq!(day.dominant, Some(Pollutant::O3));
    }

    #[test]
    fn daily_o3_8h_needs_eight_present_hours() {
        let mut o3 = [Some(110.0); 24];
        for h in o3.iter_mut().step_by(7) {
            *h = None; // a gap at least every 7 hours: no complete window
        }
        let input = DailyInput {
            pm25: [Some(10.0); 24],
            o3,
            o3_previous: [Some(110.0); 7],
            ..DailyInput::default()
        };
        let day = daily(&input, 1);
        assert_eq!(day.sub_indices.o3_8h, None);
        assert_eq!(day.sub_indices.o3_1h, Some(34));

        // Complete windows only where they reach back into the previous day (ending at
        // the day's hours 1 and 2).
        let mut o3 = [None; 24];
        o3[0] = Some(110.0);
        o3[1] = Some(110.0);
        o3[2] = Some(110.0);
        let mut previous = [Some(110.0); 7];
        previous[0] = None;
        let day = daily(
            &DailyInput {
                pm25: [Some(10.0); 24],
                o3,
                o3_previous: previous,
                ..DailyInput::default()
            },
            1,
        );
        // 110 on the 8h column: 50 + 50·10/20 = 75.
        assert_eq!(day.sub_indices.o3_8h, Some(75));
    }

    #[test]
    fn daily_pm_mean_needs_min_day_hours() {
        let mut pm25 = [None; 24];
        for h in pm25.iter_mut().take(18) {
            *h = Some(30.0);
        }
        let mut pm10 = [None; 24];
        pm10[0] = Some(100.0);
        let input = DailyInput {
            pm25,
            pm10,
            ..DailyInput::default()
        };
        let day = daily(&input, 18);
        assert_eq!(day.sub_indices.pm25, Some(60));
        assert_eq!(day.sub_indices.pm10, None);
        assert_eq!(day.valid_hours, 18);
        let day = daily(&input, 19);
        assert_eq!(day.sub_indices.pm25, None);
        assert_eq!(day.aqi, None);
        let day = daily(&input, 0);
        assert_eq!(day.sub_indices.pm10, Some(75));
    }

    #[test]
    fn daily_gases_use_the_highest_hour() {
        let mut so2 = [None; 24];
        so2[3] = Some(100.0);
        so2[20] = Some(350.0);
        let mut co = [Some(5000.0); 24];
        co[23] = Some(30000.0);
        let day = daily(
            &DailyInput {
                pm25: [Some(5.0); 24],
                so2,
                co,
                ..DailyInput::default()
            },
            1,
        );
        assert_eq!(day.sub_indices.so2, Some(100));
        assert_eq!(day.sub_indices.co, Some(100));
    }

    #[test]
    fn running_means_need_all_hours() {
        let hours = [Some(1.0), Some(2.0), Some(3.0), None, Some(5.0), Some(6.0)];
        assert_eq!(
            running_means(&hours, 2),
            vec![None, Some(1.5), Some(2.5), None, None, Some(5.5)]
        );
        assert_eq!(running_means(&hours, 3)[2], Some(2.0));
        assert_eq!(running_means(&hours, 0), vec![None; 6]);
        assert_eq!(running_means(&hours, 7), vec![None; 6]);
        assert_eq!(
            running_means(&[Some(f64::NAN), Some(1.0)], 2),
            vec![None, None]
        );
    }

    #[test]
    fn sub_indices_serialise_with_fixed_fields() {
        let json = serde_json::to_value(SubIndices {
            pm25: Some(1),
            ..SubIndices::default()
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pm25": 1, "pm10": null, "o3_1h": null, "o3_8h": null,
                "no2": null, "so2": null, "co": null
            })
        );
    }
}
