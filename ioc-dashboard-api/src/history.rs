//! History routes: readings, aggregates, AQI, exceedances and annual means from ClickHouse,
//! filtered by device, metric and time.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_contract::time::{now_ms, parse_param_ms};
use ioc_contract::{valid_device_id, Aggregate, Resolution};
use ioc_history::{AggregateRow, AqiRow, ExceedanceRow, HistoryFilter, ReadingRow};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, Permission};
use crate::error::{not_found_device, ApiFailure, ApiResult};
use crate::params;
use crate::views::{ApiAggregate, ApiAqi, ApiExceedance, ApiForecast, ApiReading};
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
    let mut any_of = Vec::new();
    if let Some(area) = area(state, q)? {
        any_of.push(("device_id", area));
    }
    Ok(HistoryFilter {
        device_id: q.get("device_id").cloned(),
        metric: q.get("metric").cloned(),
        from,
        to,
        limit,
        resolution,
        regulation: q.get("regulation").cloned(),
        any_of,
    })
}

/// The filter of a query on windows of `resolution`, as [`history_filter`] reads it, but with
/// the range defaulting to the last day (the last 31 days for daily windows).
pub(crate) fn windows_filter(
    state: &AppState,
    q: &HashMap<String, String>,
    resolution: Resolution,
) -> ApiResult<HistoryFilter> {
    let mut q = q.clone();
    q.remove("resolution");
    if !q.contains_key("from") {
        let days = if resolution == Resolution::Day { 31 } else { 1 };
        // A `to` that does not parse is history_filter's to refuse.
        let to = q
            .get("to")
            .and_then(|t| parse_param_ms(t))
            .unwrap_or_else(|| now_ms() + 1);
        q.insert("from".into(), (to - days * 86_400_000).to_string());
    }
    Ok(HistoryFilter {
        resolution,
        ..history_filter(state, &q)?
    })
}

/// The devices of the area a query names by `commune` and/or `bbox` (`south,west,north,east`),
/// as the registry has them now; `None` when it names none.
fn area(state: &AppState, q: &HashMap<String, String>) -> ApiResult<Option<Vec<String>>> {
    let commune = q.get("commune");
    let bbox = params::bbox(q)?;
    if commune.is_none() && bbox.is_none() {
        return Ok(None);
    }
    let ids = state
        .registry
        .list()
        .iter()
        .filter(|d| commune.is_none_or(|c| d.commune.as_ref() == Some(c)))
        .filter(|d| bbox.is_none_or(|b| params::in_bbox(b, d.lat, d.lon)))
        .map(|d| d.device_id.clone())
        .collect();
    Ok(Some(ids))
}

/// An authorized history request: the token checked, the query parsed into a filter, and how
/// the answer is wanted.
pub(crate) struct HistoryRequest {
    filter: HistoryFilter,
    /// `points`: downsampled to at most this many buckets per series.
    points: Option<usize>,
    /// `format=csv` or `Accept: text/csv`.
    csv: bool,
}

/// Most buckets a downsampled series may ask for.
pub const MAX_POINTS: usize = 5_000;
/// Most rows read to downsample (the answer says when it was reached).
const DOWNSAMPLE_ROWS: usize = 500_000;

impl axum::extract::FromRequestParts<AppState> for HistoryRequest {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> ApiResult<Self> {
        authorize(state, bearer(&parts.headers), Permission::ReadTelemetry)?;
        let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
        // Which parameters each route takes is its op's (routes.rs): the guard refused others.
        let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
        let csv = params::csv(&q, &parts.headers)?;
        let points = match q.get("points") {
            None => None,
            Some(p) => match p.parse::<usize>() {
                Ok(n) if (1..=MAX_POINTS).contains(&n) => Some(n),
                _ => {
                    return Err(bad(format!(
                        "points must be from 1 to {MAX_POINTS}, not {p:?}"
                    )))
                }
            },
        };
        let mut filter = history_filter(state, &q)?;
        if points.is_some() && !q.contains_key("limit") {
            filter.limit = DOWNSAMPLE_ROWS;
        }
        Ok(HistoryRequest {
            filter,
            points,
            csv,
        })
    }
}

/// A list answer: JSON `{name: [...]}`, or CSV.
fn answer<T: Serialize>(name: &str, rows: &[T], csv: bool) -> Response {
    if csv {
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::to_value(r).expect("views serialize"))
            .collect();
        return crate::csv::response(name, &values);
    }
    Json(json!({ name: rows })).into_response()
}

/// One downsampled series: per bucket of the range, the minimum, maximum and mean of what fell
/// in it (min and max keep a chart's spikes; empty buckets are left out).
#[derive(Debug, Serialize)]
pub struct Series {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub unit: String,
    pub points: Vec<Bucket>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub t: String,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

/// Buckets `(series key, unit, time, value, weight)` samples into at most `points` buckets of
/// `[from, to)` per series.
fn downsample(
    samples: impl Iterator<Item = ((String, String, String), String, i64, f64, f64, f64, u64)>,
    from: i64,
    to: i64,
    points: usize,
) -> (Vec<Series>, i64) {
    let width = ((to - from) as f64 / points as f64).ceil().max(1.0) as i64;
    let mut series: BTreeMap<
        (String, String, String),
        (String, BTreeMap<i64, (f64, f64, f64, u64)>),
    > = BTreeMap::new();
    for (key, unit, t, min, max, sum, count) in samples {
        let bucket = from + (t - from).div_euclid(width) * width;
        let (_, buckets) = series.entry(key).or_insert_with(|| (unit, BTreeMap::new()));
        let b = buckets
            .entry(bucket)
            .or_insert((f64::INFINITY, f64::NEG_INFINITY, 0.0, 0));
        b.0 = b.0.min(min);
        b.1 = b.1.max(max);
        b.2 += sum;
        b.3 += count;
    }
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let out = series
        .into_iter()
        .map(|((device_id, channel, metric), (unit, buckets))| Series {
            device_id,
            channel,
            metric,
            unit,
            points: buckets
                .into_iter()
                .map(|(t, (min, max, sum, count))| Bucket {
                    t: ioc_contract::time::format_ms(t),
                    min: round(min),
                    max: round(max),
                    mean: round(sum / count.max(1) as f64),
                    count,
                })
                .collect(),
        })
        .collect();
    (out, width)
}

/// A downsampled answer: JSON `{"series":[...],"bucket_ms","truncated"}`, or CSV with a row
/// per bucket.
fn downsampled(series: Vec<Series>, width: i64, truncated: bool, csv: bool) -> Response {
    if csv {
        let rows: Vec<serde_json::Value> = series
            .iter()
            .flat_map(|s| {
                s.points.iter().map(move |b| {
                    json!({"device_id": s.device_id, "channel": s.channel, "metric": s.metric,
                        "unit": s.unit, "ts": b.t, "min": b.min, "max": b.max, "mean": b.mean,
                        "count": b.count})
                })
            })
            .collect();
        return crate::csv::response("series", &rows);
    }
    Json(json!({"series": series, "bucket_ms": width, "truncated": truncated})).into_response()
}

pub(crate) fn history_unavailable(e: ioc_history::HistoryError) -> ApiFailure {
    ApiFailure::unavailable("history is unavailable", e)
}

/// `GET /api/v1/readings`: raw readings, or with `points=N` per series (device, channel,
/// metric) at most N buckets of min, max and mean.
pub(crate) async fn readings(
    State(state): State<AppState>,
    request: HistoryRequest,
) -> ApiResult<Response> {
    let f = &request.filter;
    let rows = state
        .history
        .query::<ReadingRow>(f)
        .await
        .map_err(history_unavailable)?;
    if let Some(points) = request.points {
        let truncated = rows.len() >= f.limit;
        let samples = rows.into_iter().map(|r| {
            let r = r.into_reading();
            (
                (r.device_id, r.channel, r.metric),
                r.unit,
                r.ts,
                r.value,
                r.value,
                r.value,
                1,
            )
        });
        let (series, width) = downsample(samples, f.from, f.to, points);
        return Ok(downsampled(series, width, truncated, request.csv));
    }
    let readings: Vec<ApiReading> = rows
        .into_iter()
        .map(|r| ApiReading::from(&r.into_reading()))
        .collect();
    Ok(answer("readings", &readings, request.csv))
}

/// `GET /api/v1/aggregates`: windows of a resolution, or with `points=N` merged into at most N
/// buckets per series (min of mins, max of maxes, mean weighted by count).
pub(crate) async fn aggregates(
    State(state): State<AppState>,
    request: HistoryRequest,
) -> ApiResult<Response> {
    let f = &request.filter;
    let rows = state
        .history
        .query::<AggregateRow>(f)
        .await
        .map_err(history_unavailable)?;
    if let Some(points) = request.points {
        let truncated = rows.len() >= f.limit;
        let samples = rows.into_iter().map(|r| {
            let a = Aggregate::from(r);
            let key = (a.device_id, a.channel, a.metric);
            (key, a.unit, a.window_start, a.min, a.max, a.sum, a.count)
        });
        let (series, width) = downsample(samples, f.from, f.to, points);
        return Ok(downsampled(series, width, truncated, request.csv));
    }
    let aggregates: Vec<ApiAggregate> = rows
        .into_iter()
        .map(|r| ApiAggregate::from(&Aggregate::from(r)))
        .collect();
    Ok(answer("aggregates", &aggregates, request.csv))
}

/// `GET /api/v1/aqi?device_id=&from=&to=&resolution=1h|1d`: hourly (the default) or daily
/// VN_AQI whose window starts in the range (default: the last day of hours, or the last 31
/// days).
pub(crate) async fn aqi(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let csv = params::csv(&q, &headers)?;
    let resolution = params::hourly_or_daily(&q)?;
    let filter = windows_filter(&state, &q, resolution)?;
    let rows = state
        .history
        .query::<AqiRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let aqi: Vec<ApiAqi> = rows.iter().map(ApiAqi::from).collect();
    Ok(answer("aqi", &aqi, csv))
}

/// How far back `GET /api/v1/forecast` looks for a station's latest forecast.
const LATEST_FORECAST_WITHIN_MS: i64 = 2 * 86_400_000;

/// `GET /api/v1/forecast?device_id=`: the station's latest PM2.5 forecast (made at its newest
/// origin in the last two days), one record per hour ahead; with `from`/`to`, every forecast
/// whose origin is in the range.
pub(crate) async fn forecast(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let csv = params::csv(&q, &headers)?;
    let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let device = q
        .get("device_id")
        .ok_or_else(|| bad("device_id is required: the station to forecast".into()))?;
    if state.registry.get(device).is_none() {
        return Err(not_found_device(device));
    }
    let time = |name: &str| -> ApiResult<Option<i64>> {
        q.get(name)
            .map(|v| {
                parse_param_ms(v).ok_or_else(|| {
                    bad(format!(
                        "{name} {v:?} is not RFC 3339 or epoch milliseconds"
                    ))
                })
            })
            .transpose()
    };
    let (from, to) = (time("from")?, time("to")?);
    let latest = from.is_none() && to.is_none();
    let now = now_ms();
    let rows = state
        .history
        .query::<ioc_history::ForecastRow>(&HistoryFilter {
            device_id: Some(device.clone()),
            from: from.unwrap_or(now - LATEST_FORECAST_WITHIN_MS),
            to: to.unwrap_or(now + 1),
            limit: usize::MAX,
            ..Default::default()
        })
        .await
        .map_err(history_unavailable)?;
    let newest = rows.iter().map(|r| r.origin).max();
    let mut forecasts: Vec<ApiForecast> = rows
        .iter()
        .filter(|r| !latest || Some(r.origin) == newest)
        .map(ApiForecast::from)
        .collect();
    forecasts.sort_by(|a, b| (&a.origin, a.horizon_h).cmp(&(&b.origin, b.horizon_h)));
    Ok(answer("forecasts", &forecasts, csv))
}

/// `GET /api/v1/aqi/bands`: the six bands of Decision 1459 with the values they cover, their
/// names and colours, and their health advice for the public and for sensitive groups.
pub(crate) async fn aqi_bands(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let bands: Vec<serde_json::Value> = ioc_regulation::aqi::bands()
        .into_iter()
        .map(|(from, to, band)| {
            let a = ioc_regulation::aqi::advice(band.level);
            json!({
                "level": band.level, "from": from, "to": to,
                "vi": band.vi, "en": band.en, "colour": band.colour,
                "advice": {
                    "general": {"vi": a.general_vi, "en": a.general_en},
                    "sensitive": {"vi": a.sensitive_vi, "en": a.sensitive_en},
                },
            })
        })
        .collect();
    Ok(Json(json!({
        "source": "Quyết định 1459/QĐ-TCMT (2019), Tổng cục Môi trường",
        "bands": bands,
    })))
}

/// `GET /api/v1/exceedances?device_id=&regulation=&from=&to=`: QCVN exceedances (and their
/// withdrawals) whose period starts in the range.
pub(crate) async fn exceedances(
    State(state): State<AppState>,
    request: HistoryRequest,
) -> ApiResult<Response> {
    let rows = state
        .history
        .query::<ExceedanceRow>(&request.filter)
        .await
        .map_err(history_unavailable)?;
    let exceedances: Vec<ApiExceedance> = rows.iter().map(ApiExceedance::from).collect();
    Ok(answer("exceedances", &exceedances, request.csv))
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
        .windows(Resolution::Hour, &[device_id.clone()], &[], from, to)
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

    #[test]
    fn downsampling_keeps_each_buckets_extremes_and_weighs_means_by_count() {
        let key = || ("aq-1".to_string(), String::new(), "pm25".to_string());
        // Ten minutes into five buckets of two; a spike in the third.
        let samples = (0..10).map(|m| {
            let v = if m == 5 { 300.0 } else { 10.0 + m as f64 };
            (key(), "µg/m³".to_string(), m * 60_000, v, v, v, 1)
        });
        let (series, width) = downsample(samples, 0, 600_000, 5);
        assert_eq!(width, 120_000);
        assert_eq!(series.len(), 1);
        let p = &series[0].points;
        assert_eq!(p.len(), 5);
        assert_eq!(
            (p[2].min, p[2].max, p[2].mean, p[2].count),
            (14.0, 300.0, 157.0, 2)
        );
        assert_eq!(p[0].t, "1970-01-01T00:00:00.000Z");
        // Aggregates: the mean weighted by each window's count.
        let windows = [(0, 1.0, 3.0, 4.0, 2), (60_000, 5.0, 9.0, 54.0, 6)]
            .into_iter()
            .map(|(t, min, max, sum, n)| (key(), "µg/m³".to_string(), t, min, max, sum, n));
        let (series, _) = downsample(windows, 0, 120_000, 1);
        let b = &series[0].points[0];
        assert_eq!((b.min, b.max, b.mean, b.count), (1.0, 9.0, 7.25, 8));
    }
}
