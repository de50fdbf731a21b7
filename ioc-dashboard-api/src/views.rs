//! What clients see of the bus's records: times as RFC 3339, numbers rounded for people, a
//! band's name and colour beside its index. REST and the websocket serialize the same views.

use ioc_contract::time::format_ms;
use ioc_contract::{Aggregate, Reading, Resolution};
use ioc_history::{AqiRow, ExceedanceRow};
use serde::Serialize;
use serde_json::json;

/// A reading as the API shows it.
#[derive(Debug, Serialize)]
pub struct ApiReading {
    pub device_id: String,
    pub channel: String,
    pub ts: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub quality: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub quality_reason: String,
}

impl From<&Reading> for ApiReading {
    fn from(r: &Reading) -> Self {
        ApiReading {
            device_id: r.device_id.clone(),
            channel: r.channel.clone(),
            ts: format_ms(r.ts),
            metric: r.metric.clone(),
            value: r.value,
            unit: r.unit.clone(),
            quality: r.quality.as_str(),
            quality_reason: r.quality_reason.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ApiAggregate {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub resolution: Resolution,
    pub window_start: String,
    pub window_end: String,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Share of the expected readings that arrived good, at most 1; null where the device's
    /// expected interval was unknown.
    pub capture: Option<f64>,
    pub unit: String,
    pub version: u64,
}

impl From<&Aggregate> for ApiAggregate {
    fn from(a: &Aggregate) -> Self {
        ApiAggregate {
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            resolution: a.resolution,
            window_start: format_ms(a.window_start),
            window_end: format_ms(a.window_end),
            count: a.count,
            sum: a.sum,
            min: a.min,
            max: a.max,
            mean: a.mean,
            capture: a.capture,
            unit: a.unit.clone(),
            version: a.version,
        }
    }
}

/// An hourly or daily VN_AQI, as `/api/v1/aqi` and the `aqi` stream give it.
#[derive(Debug, Serialize)]
pub struct ApiAqi {
    pub device_id: String,
    pub window_start: String,
    /// The hour-ending (or day-ending) label, in UTC.
    pub window_end: String,
    pub resolution: String,
    /// Null where the decision gives none (no PM2.5 or PM10 sub-index).
    pub aqi: Option<u32>,
    pub dominant: Option<String>,
    pub band: Option<ioc_regulation::aqi::Band>,
    pub sub_indices: ioc_regulation::aqi::SubIndices,
    /// µg/m³, to 1 decimal.
    pub nowcast_pm25: Option<f64>,
    pub nowcast_pm10: Option<f64>,
    pub valid_hours: Option<u32>,
    pub grade: String,
    /// Pollutants whose hour had too little capture to count: missing for the AQI.
    pub low_capture: Vec<String>,
    pub version: u64,
}

/// One hour ahead of a station's PM2.5 forecast.
#[derive(Debug, Serialize)]
pub struct ApiForecast {
    pub device_id: String,
    /// The end of the last observed hour the forecast uses.
    pub origin: String,
    /// The end of the forecast hour.
    pub target: String,
    pub horizon_h: u32,
    /// µg/m³, to 1 decimal; the band is the fit's 10th to 90th percentile error (80 %).
    pub pm25: f64,
    pub pm25_low: f64,
    pub pm25_high: f64,
    /// The forecast hour's VN_AQI (PM2.5 NowCast over the observed and forecast hours).
    pub aqi: Option<u32>,
    pub band: Option<ioc_regulation::aqi::Band>,
    /// The target's local day: its mean PM2.5 over the observed and forecast hours (when there
    /// are enough of them) and the QCVN 05 24-hour limit.
    pub day_pm25: Option<f64>,
    pub day_pm25_limit: Option<f64>,
    pub grade: String,
    pub version: u64,
}

impl From<&ioc_history::ForecastRow> for ApiForecast {
    fn from(f: &ioc_history::ForecastRow) -> Self {
        ApiForecast {
            device_id: f.device_id.clone(),
            origin: format_ms(f.origin),
            target: format_ms(f.target),
            horizon_h: f.horizon_h,
            pm25: f.pm25,
            pm25_low: f.pm25_low,
            pm25_high: f.pm25_high,
            aqi: f.aqi,
            band: f.aqi.map(ioc_regulation::aqi::band),
            day_pm25: f.day_pm25,
            day_pm25_limit: f.day_pm25_limit,
            grade: f.grade.clone(),
            version: f.version,
        }
    }
}

impl From<&AqiRow> for ApiAqi {
    fn from(a: &AqiRow) -> Self {
        use ioc_regulation::csv::round1;
        ApiAqi {
            device_id: a.device_id.clone(),
            window_start: format_ms(a.window_start),
            window_end: format_ms(a.window_end),
            resolution: a.resolution.clone(),
            aqi: a.aqi,
            dominant: (!a.dominant.is_empty()).then(|| a.dominant.clone()),
            band: a.aqi.map(ioc_regulation::aqi::band),
            sub_indices: ioc_regulation::aqi::SubIndices {
                pm25: a.pm25,
                pm10: a.pm10,
                o3_1h: a.o3_1h,
                o3_8h: a.o3_8h,
                no2: a.no2,
                so2: a.so2,
                co: a.co,
            },
            nowcast_pm25: a.nowcast_pm25.map(round1),
            nowcast_pm10: a.nowcast_pm10.map(round1),
            valid_hours: a.valid_hours,
            grade: a.grade.clone(),
            low_capture: a
                .low_capture
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            version: a.version,
        }
    }
}

/// A QCVN exceedance, as `/api/v1/exceedances` and the `exceedances` stream give it.
#[derive(Debug, Serialize)]
pub struct ApiExceedance {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub regulation: String,
    /// The averaging period: `1h`, `8h` or `24h`.
    pub period: String,
    pub window_start: String,
    pub window_end: String,
    /// The measured mean over the period.
    pub value: f64,
    pub unit: String,
    /// `{"max": 150}`, or for pH `{"low": 5.5, "high": 9}`.
    pub limit: serde_json::Value,
    /// value ÷ limit (for pH, how far outside its band), to 3 decimals.
    pub multiple: f64,
    /// The valid hours the mean is over.
    pub valid_hours: u32,
    pub grade: String,
    /// `exceeded`, or `withdrawn` when a revision brought the mean within the limit.
    pub status: String,
    pub version: u64,
}

impl From<&ExceedanceRow> for ApiExceedance {
    fn from(e: &ExceedanceRow) -> Self {
        let limit = match (e.limit_low, e.limit_high) {
            (Some(low), Some(high)) => json!({"low": low, "high": high}),
            (_, high) => json!({ "max": high }),
        };
        ApiExceedance {
            device_id: e.device_id.clone(),
            channel: e.channel.clone(),
            metric: e.metric.clone(),
            regulation: e.regulation.clone(),
            period: e.period.clone(),
            window_start: format_ms(e.window_start),
            window_end: format_ms(e.window_end),
            value: (e.value * 1000.0).round() / 1000.0,
            unit: e.unit.clone(),
            limit,
            multiple: (e.multiple * 1000.0).round() / 1000.0,
            valid_hours: e.valid_hours,
            grade: e.grade.clone(),
            status: e.status.clone(),
            version: e.version,
        }
    }
}

/// A traffic counter's road segment over 5 minutes or an hour (`"record": "flow"`).
#[derive(Debug, Serialize)]
pub struct ApiTraffic {
    pub record: &'static str,
    pub device_id: String,
    pub resolution: String,
    pub window_start: String,
    pub window_end: String,
    pub road_segment: Option<String>,
    pub lanes: u32,
    pub vehicles: u64,
    /// Vehicles per hour, all lanes.
    pub flow_vph: Option<f64>,
    /// Count-weighted mean speed, km/h.
    pub speed_kmh: Option<f64>,
    pub occupancy_pct: Option<f64>,
    pub free_flow_speed_kmh: Option<f64>,
    pub capture: Option<f64>,
    /// `free`, `moderate`, `heavy` or `jammed`; none without a speed or occupancy to judge.
    pub level: Option<String>,
    pub version: u64,
}

impl From<&ioc_history::TrafficRow> for ApiTraffic {
    fn from(t: &ioc_history::TrafficRow) -> Self {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ApiTraffic {
            record: "flow",
            device_id: t.device_id.clone(),
            resolution: t.resolution.clone(),
            window_start: format_ms(t.window_start),
            window_end: format_ms(t.window_end),
            road_segment: text(&t.road_segment),
            lanes: t.lanes,
            vehicles: t.vehicles,
            flow_vph: t.flow_vph,
            speed_kmh: t.speed_kmh,
            occupancy_pct: t.occupancy_pct,
            free_flow_speed_kmh: t.free_flow_speed_kmh,
            capture: t.capture,
            level: text(&t.level),
            version: t.version,
        }
    }
}

/// A traffic camera's violations of one type in one hour (`"record": "violations"`).
#[derive(Debug, Serialize)]
pub struct ApiViolations {
    pub record: &'static str,
    pub device_id: String,
    pub window_start: String,
    pub window_end: String,
    pub violation: String,
    pub count: u64,
    pub version: u64,
}

impl From<&ioc_history::ViolationRow> for ApiViolations {
    fn from(v: &ioc_history::ViolationRow) -> Self {
        ApiViolations {
            record: "violations",
            device_id: v.device_id.clone(),
            window_start: format_ms(v.window_start),
            window_end: format_ms(v.window_end),
            violation: v.violation.clone(),
            count: v.count,
            version: v.version,
        }
    }
}
