//! History routes: readings, aggregates, AQI, exceedances and annual means from ClickHouse,
//! filtered by device, metric and time.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ioc_contract::time::{now_ms, parse_param_ms};
use ioc_contract::{valid_device_id, Aggregate, Resolution};
use ioc_history::{AggregateRow, AqiRow, ExceedanceRow, HistoryFilter, ReadingRow};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, Permission};
use crate::error::{not_found_device, ApiFailure, ApiResult};
use crate::views::{ApiAggregate, ApiAqi, ApiExceedance, ApiReading};
use crate::AppState;

/// Parses `device_id`, `metric`, `from`, `to` (RFC 3339 or epoch ms; default: the last hour)
/// and `limit`.
pub(crate) fn history_filter(
    state: &AppState,
    q: &HashMap<String, String>,
) -> ApiResult<HistoryFilter> {
    let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let time = |name: &str| -> ApiResult<Option<i64>> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => parse_param_ms(v).map(Some).ok_or_else(|| {
                bad(format!(
                    "{name}={v:?} is not RFC 3339 with an offset or epoch milliseconds"
                ))
            }),
        }
    };
    let to = time("to")?.unwrap_or_else(|| now_ms() + 1);
    let from = time("from")?.unwrap_or(to - 3_600_000);
    if from >= to {
        return Err(bad("from must be before to".into()));
    }
    let max = state.config.query_limit;
    let limit = match q.get("limit") {
        None => max,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => return Err(bad(format!("limit must be from 1 to {max}"))),
        },
    };
    if let Some(d) = q.get("device_id") {
        if !valid_device_id(d) {
            return Err(bad(format!("device_id {d:?} is not a valid device id")));
        }
    }
    let resolution = match q.get("resolution") {
        None => Resolution::Minute,
        Some(r) => Resolution::parse(r)
            .ok_or_else(|| bad(format!("resolution {r:?} is not one of 1m, 5m, 1h, 1d")))?,
    };
    Ok(HistoryFilter {
        device_id: q.get("device_id").cloned(),
        metric: q.get("metric").cloned(),
        from,
        to,
        limit,
        resolution,
        regulation: q.get("regulation").cloned(),
        any_of: Vec::new(),
    })
}

/// An authorized history request: the token checked and the query parsed into a filter.
pub(crate) struct HistoryRequest(HistoryFilter);

impl axum::extract::FromRequestParts<AppState> for HistoryRequest {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> ApiResult<Self> {
        authorize(state, bearer(&parts.headers), Permission::ReadTelemetry)?;
        let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
        // A resolution the route would ignore is a mistake worth naming.
        let path = parts.uri.path();
        if q.contains_key("resolution") && path != "/api/v1/aggregates" {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("resolution applies to /api/v1/aggregates and /api/v1/aqi, not {path}"),
            ));
        }
        Ok(HistoryRequest(history_filter(state, &q)?))
    }
}

fn history_unavailable(e: ioc_history::HistoryError) -> ApiFailure {
    ApiFailure::unavailable("history is unavailable", e)
}

pub(crate) async fn readings(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .query::<ReadingRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let readings: Vec<ApiReading> = rows
        .into_iter()
        .map(|r| ApiReading::from(&r.into_reading()))
        .collect();
    Ok(Json(json!({ "readings": readings })))
}

pub(crate) async fn aggregates(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .query::<AggregateRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let aggregates: Vec<ApiAggregate> = rows
        .into_iter()
        .map(|r| ApiAggregate::from(&Aggregate::from(r)))
        .collect();
    Ok(Json(json!({ "aggregates": aggregates })))
}

/// `GET /api/v1/aqi?device_id=&from=&to=&resolution=1h|1d`: hourly (the default) or daily
/// VN_AQI whose window starts in the range (default: the last day of hours, or the last 31
/// days).
pub(crate) async fn aqi(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let resolution = match q.get("resolution").map(String::as_str) {
        None | Some("1h") => Resolution::Hour,
        Some("1d") => Resolution::Day,
        Some(r) => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("resolution {r:?} is not 1h or 1d"),
            ))
        }
    };
    let mut q = q;
    if !q.contains_key("from") {
        let to = match q.get("to") {
            Some(t) => parse_param_ms(t),
            None => Some(now_ms() + 1),
        };
        if let Some(to) = to {
            let span = if resolution == Resolution::Day {
                31 * 86_400_000
            } else {
                86_400_000
            };
            q.insert("from".into(), (to - span).to_string());
        }
    }
    q.remove("resolution");
    let filter = HistoryFilter {
        resolution,
        ..history_filter(&state, &q)?
    };
    let rows = state
        .history
        .query::<AqiRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let aqi: Vec<ApiAqi> = rows.iter().map(ApiAqi::from).collect();
    Ok(Json(json!({ "aqi": aqi })))
}

/// `GET /api/v1/exceedances?device_id=&regulation=&from=&to=`: QCVN exceedances (and their
/// withdrawals) whose period starts in the range.
pub(crate) async fn exceedances(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .query::<ExceedanceRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let exceedances: Vec<ApiExceedance> = rows.iter().map(ApiExceedance::from).collect();
    Ok(Json(json!({ "exceedances": exceedances })))
}

/// One pollutant's calendar-year mean against QCVN 05's year column.
#[derive(Debug, PartialEq, Serialize)]
pub struct AnnualMean {
    pub channel: String,
    pub metric: String,
    /// The mean of the year's valid hourly means (to 1 decimal).
    pub mean: f64,
    pub unit: String,
    pub valid_hours: u64,
    /// Hours of the year so far (all of it for a past year).
    pub hours: u64,
    /// valid_hours ÷ hours, to 3 decimals.
    pub coverage: f64,
    pub limit: f64,
    /// mean ÷ limit, to 2 decimals.
    pub multiple: f64,
    /// Whether the year's mean is above the limit; null where fewer than 75 % of the year's
    /// hours so far are valid (too little to judge a year by).
    pub exceeded: Option<bool>,
}

/// The share of a year's hours a year's mean needs to be judged.
const MIN_YEAR_COVERAGE: f64 = 0.75;

/// Year means of `hours` (hourly windows of one station) for the metrics `limit` gives a year
/// column, over `hours_so_far` hours; an hour counts when its capture is at least
/// `min_capture`.
pub fn annual_means(
    hours: &[Aggregate],
    limit: impl Fn(&str) -> Option<f64>,
    min_capture: f64,
    hours_so_far: u64,
) -> Vec<AnnualMean> {
    let mut by: BTreeMap<(&str, &str), (f64, u64, &str)> = BTreeMap::new();
    for w in hours {
        if limit(&w.metric).is_none() || w.capture.is_some_and(|c| c < min_capture) {
            continue;
        }
        let e = by
            .entry((&w.channel, &w.metric))
            .or_insert((0.0, 0, &w.unit));
        e.0 += w.mean;
        e.1 += 1;
    }
    by.into_iter()
        .filter_map(|((channel, metric), (sum, n, unit))| {
            let limit = limit(metric)?;
            let mean = sum / n as f64;
            let coverage = n as f64 / hours_so_far.max(1) as f64;
            Some(AnnualMean {
                channel: channel.to_string(),
                metric: metric.to_string(),
                mean: (mean * 10.0).round() / 10.0,
                unit: unit.to_string(),
                valid_hours: n,
                hours: hours_so_far,
                coverage: (coverage * 1000.0).round() / 1000.0,
                limit,
                multiple: (mean / limit * 100.0).round() / 100.0,
                exceeded: (coverage >= MIN_YEAR_COVERAGE).then_some(mean > limit),
            })
        })
        .collect()
}

/// `GET /api/v1/annual?device_id=&year=`: an air-quality station's calendar-year (local) means
/// against QCVN 05's year column, for the annual report; a running year up to now.
pub(crate) async fn annual(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let device_id = q
        .get("device_id")
        .filter(|d| valid_device_id(d))
        .ok_or_else(|| bad("device_id is required: a valid device id".into()))?;
    let year: i32 = q
        .get("year")
        .and_then(|y| y.parse().ok())
        .filter(|y| (2000..=2100).contains(y))
        .ok_or_else(|| bad("year is required: 2000 to 2100".into()))?;
    let device = state
        .registry
        .get(device_id)
        .ok_or_else(|| not_found_device(device_id))?;
    if device.kind != "air_quality" {
        return Err(bad(format!(
            "{device_id} is a {} device: year means are judged for air_quality stations",
            device.kind
        )));
    }
    let offset = state.ingest.utc_offset_ms();
    let start_of = |y: i32| {
        chrono::NaiveDate::from_ymd_opt(y, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis() - offset)
            .unwrap_or_default()
    };
    let (from, end) = (start_of(year), start_of(year + 1));
    let to = end.min(now_ms());
    if to <= from {
        return Err(bad(format!("{year} has not begun")));
    }
    let hours = state
        .history
        .windows(Resolution::Hour, &[device_id.clone()], from, to)
        .await
        .map_err(history_unavailable)?;
    let ambient = &state.regulation.limits.ambient;
    let date = chrono::NaiveDate::from_ymd_opt(year, 12, 31).unwrap_or_default();
    let hours_so_far = ((to - from) / 3_600_000).max(1) as u64;
    let means = annual_means(
        &hours,
        |m| ambient.limit(m, ioc_regulation::qcvn::Period::Year, date),
        state.regulation.min_hour_capture,
        hours_so_far,
    );
    Ok(Json(json!({
        "device_id": device_id,
        "year": year,
        "regulation": ambient.regulation,
        "grade": device.grade().as_str(),
        "means": means,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_year_mean_is_over_its_valid_hours_and_judged_only_with_enough_of_them() {
        let hour = |metric: &str, i: i64, mean: f64, capture: f64| Aggregate {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: metric.into(),
            resolution: Resolution::Hour,
            window_start: i * 3_600_000,
            window_end: (i + 1) * 3_600_000,
            count: 60,
            sum: mean * 60.0,
            min: mean,
            max: mean,
            mean,
            capture: Some(capture),
            unit: "µg/m³".into(),
            version: 1,
        };
        let mut hours: Vec<Aggregate> = (0..80).map(|i| hour("pm25", i, 30.0, 1.0)).collect();
        // Too empty to count, however high.
        hours.push(hour("pm25", 80, 900.0, 0.5));
        hours.extend((0..50).map(|i| hour("no2", i, 20.0, 1.0)));
        // No year column for CO.
        hours.push(hour("co", 0, 5000.0, 1.0));
        let limits = ioc_regulation::qcvn::AmbientLimits::qcvn_05_2023();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let means = annual_means(
            &hours,
            |m| limits.limit(m, ioc_regulation::qcvn::Period::Year, date),
            0.75,
            100,
        );
        let brief: Vec<(&str, f64, u64, Option<bool>)> = means
            .iter()
            .map(|m| (m.metric.as_str(), m.mean, m.valid_hours, m.exceeded))
            .collect();
        // PM2.5 30 over 80 % of the hours, above 25; NO2 20 over 50 %: not judged.
        assert_eq!(
            brief,
            vec![("no2", 20.0, 50, None), ("pm25", 30.0, 80, Some(true))]
        );
        assert_eq!(
            (means[1].limit, means[1].multiple, means[1].coverage),
            (25.0, 1.2, 0.8)
        );
    }
}
