//! `GET /api/v1/quality`: the "đúng, đủ, sạch, sống" scores (`ioc_contract::quality`) of a
//! device, a commune or an agency per hour or local day, with the counts behind them, summed
//! from the stream's per-minute counts (`quality` table) and the stored dead letters.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ioc_contract::quality::{
    add_histogram, histogram_quantile, QualityCounts, Scores, DELAY_BUCKETS_MS,
};
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::{Device, RejectCode, Resolution};
use ioc_history::{DeadLetterRow, HistoryFilter, QualityRow};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, Permission};
use crate::error::{not_found_device, ApiFailure, ApiResult};
use crate::history::{history_unavailable, windows_filter};
use crate::AppState;

/// A delay histogram: one slot per bucket of `DELAY_BUCKETS_MS`, and one for longer.
type Histogram = [u64; DELAY_BUCKETS_MS.len() + 1];

/// A device is online within this many of its expected intervals of a reading (as the device
/// list's `online` says).
const ONLINE_INTERVALS: f64 = 3.0;

/// Per-minute counts one request sums at most (estimated from the range and each device's
/// expected metrics): a day of a thousand stations of eight metrics, or a month of thirty.
const READ_BUDGET: usize = 12_000_000;

/// Per-minute counts read at once (about 30 MB).
const CHUNK_ROWS: usize = 200_000;

/// One device's counts over `[from, to)`: `rows` are its per-minute counts from at least
/// [`ONLINE_INTERVALS`] expected intervals before `from` (a reading just before the period keeps
/// it online at its start), `letters` its dead letters received in the period.
pub fn device_counts(
    device: &Device,
    rows: &[&QualityRow],
    letters: &[&DeadLetterRow],
    from: i64,
    to: i64,
    now: i64,
) -> (QualityCounts, Histogram) {
    let interval_ms =
        Some(device.expected_interval_s * 1000.0).filter(|i| i.is_finite() && *i > 0.0);
    let start = from.max(owed_from(device));
    let end = to.min(now);
    let period = (end - start).max(0);
    let owed_metrics = device.expected_metrics();
    let per_metric = interval_ms.map_or(0.0, |i| period as f64 / i);
    let mut c = QualityCounts {
        expected_messages: per_metric,
        expected_values: per_metric * owed_metrics.len() as f64,
        period_ms: period,
        ..Default::default()
    };
    let mut histogram: Histogram = [0; DELAY_BUCKETS_MS.len() + 1];
    let mut good_by_metric: HashMap<&str, u64> = HashMap::new();
    let mut spans: Vec<(i64, i64)> = Vec::new();
    for r in rows {
        spans.push((r.first_ts, r.last_ts));
        if r.window_start < from || r.window_start >= to {
            continue;
        }
        c.received += u64::from(r.received);
        c.good += u64::from(r.good);
        c.suspect += u64::from(r.suspect);
        c.bad += u64::from(r.bad);
        c.stuck += u64::from(r.stuck);
        c.spikes += u64::from(r.spikes);
        c.resent += u64::from(r.resent);
        c.timely += u64::from(r.timely);
        *good_by_metric.entry(&r.metric).or_default() += u64::from(r.good);
        add_histogram(&mut histogram, &r.delays);
    }
    c.good_owed = owed_metrics
        .iter()
        .map(|m| (good_by_metric.get(m.as_str()).copied().unwrap_or(0) as f64).min(per_metric))
        .sum();
    c.delay_p50_ms = histogram_quantile(&histogram, 0.5);
    c.delay_p95_ms = histogram_quantile(&histogram, 0.95);
    spans.sort_unstable();
    c.longest_silence_ms = longest_silence(&spans, start, end);
    c.online_ms = interval_ms.map_or(0, |i| {
        covered(&spans, (ONLINE_INTERVALS * i).round() as i64, start, end)
    });
    let per_message = owed_metrics.len().max(1) as f64;
    for l in letters {
        *c.rejected.entry(l.code.clone()).or_default() += 1;
        if l.code == RejectCode::RateLimited.as_str() {
            c.rate_limited += 1;
        }
        c.rejected_values += if l.metric.is_empty() {
            per_message
        } else {
            1.0
        };
    }
    (c, histogram)
}

/// From when a device owes readings: its installation, or its registration when it has none
/// (a station installed before it was registered owes its backfill).
fn owed_from(d: &Device) -> i64 {
    d.installed_at.unwrap_or(d.registered_at)
}

/// The longest stretch of `[start, end)` with no reading, from the readings' spans (first and
/// last measurement time of each minute, sorted).
fn longest_silence(spans: &[(i64, i64)], start: i64, end: i64) -> i64 {
    if end <= start {
        return 0;
    }
    let mut longest = 0;
    let mut last = start;
    for &(first, last_ts) in spans {
        if first >= end {
            break;
        }
        longest = longest.max(first - last);
        last = last.max(last_ts);
    }
    longest.max(end - last)
}

/// How much of `[start, end)` lies within `cover` after a reading.
fn covered(spans: &[(i64, i64)], cover: i64, start: i64, end: i64) -> i64 {
    let mut total = 0;
    let mut reach = start;
    for &(first, last) in spans {
        let (from, to) = (first.max(reach), (last + cover).min(end));
        if to > from {
            total += to - from;
            reach = to;
        }
    }
    total
}

/// How the answer's records are grouped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum By {
    Device,
    Commune,
    Agency,
    Kind,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Device => "device_id",
            By::Commune => "commune",
            By::Agency => "agency",
            By::Kind => "kind",
        }
    }

    fn of(self, d: &Device) -> Option<String> {
        match self {
            By::Device => Some(d.device_id.clone()),
            By::Commune => d.commune.clone(),
            By::Agency => d.agency.clone(),
            By::Kind => Some(d.kind.clone()),
        }
    }
}

/// The counts of a record, in the API's units (seconds, not milliseconds).
#[derive(Debug, Serialize, PartialEq)]
pub struct ApiCounts {
    /// Readings and messages owed (to one decimal: intervals need not divide the period).
    pub expected_values: f64,
    pub expected_messages: f64,
    pub received: u64,
    pub good: u64,
    pub suspect: u64,
    pub bad: u64,
    pub stuck: u64,
    pub spikes: u64,
    pub resent: u64,
    pub rejected: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub timely: u64,
    pub delay_p50_s: Option<f64>,
    pub delay_p95_s: Option<f64>,
    pub longest_silence_s: f64,
    pub online_s: f64,
    pub period_s: f64,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl ApiCounts {
    fn of(c: &QualityCounts, histogram: &Histogram) -> ApiCounts {
        let s = |ms: i64| round1(ms as f64 / 1000.0);
        ApiCounts {
            expected_values: round1(c.expected_values),
            expected_messages: round1(c.expected_messages),
            received: c.received,
            good: c.good,
            suspect: c.suspect,
            bad: c.bad,
            stuck: c.stuck,
            spikes: c.spikes,
            resent: c.resent,
            rejected: c.rejected.clone(),
            rate_limited: c.rate_limited,
            timely: c.timely,
            delay_p50_s: histogram_quantile(histogram, 0.5).map(s),
            delay_p95_s: histogram_quantile(histogram, 0.95).map(s),
            longest_silence_s: s(c.longest_silence_ms),
            online_s: s(c.online_ms),
            period_s: s(c.period_ms),
        }
    }
}

/// One device's, commune's or agency's scores over one hour or day.
#[derive(Debug, Serialize)]
pub struct ApiQuality {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commune: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// For a group: how many of its devices are scored (each counts alike).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<usize>,
    pub resolution: &'static str,
    pub window_start: String,
    pub window_end: String,
    pub scores: Scores,
    pub counts: ApiCounts,
}

/// One series' counts for one minute, as the websocket's `quality` stream sends them.
#[derive(Debug, Serialize)]
pub struct ApiMinute {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub window_start: String,
    pub window_end: String,
    pub received: u32,
    pub good: u32,
    pub suspect: u32,
    pub bad: u32,
    pub stuck: u32,
    pub spikes: u32,
    pub resent: u32,
    pub timely: u32,
    pub delay_p50_s: Option<f64>,
    pub delay_p95_s: Option<f64>,
    /// Higher versions replace lower ones: a minute counted again for a late reading.
    pub version: u64,
}

impl From<&QualityRow> for ApiMinute {
    fn from(q: &QualityRow) -> ApiMinute {
        let mut histogram: Histogram = [0; DELAY_BUCKETS_MS.len() + 1];
        add_histogram(&mut histogram, &q.delays);
        let s = |ms: i64| round1(ms as f64 / 1000.0);
        ApiMinute {
            device_id: q.device_id.clone(),
            channel: q.channel.clone(),
            metric: q.metric.clone(),
            window_start: format_ms(q.window_start),
            window_end: format_ms(q.window_end),
            received: q.received,
            good: q.good,
            suspect: q.suspect,
            bad: q.bad,
            stuck: q.stuck,
            spikes: q.spikes,
            resent: q.resent,
            timely: q.timely,
            delay_p50_s: histogram_quantile(&histogram, 0.5).map(s),
            delay_p95_s: histogram_quantile(&histogram, 0.95).map(s),
            version: q.version,
        }
    }
}

/// The mean of each score over `scores` (those that have one), to one decimal.
fn mean_scores(scores: &[Scores]) -> Scores {
    let mean = |f: fn(&Scores) -> Option<f64>| {
        let v: Vec<f64> = scores.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| round1(v.iter().sum::<f64>() / v.len() as f64))
    };
    Scores {
        correct: mean(|s| s.correct),
        complete: mean(|s| s.complete),
        clean: mean(|s| s.clean),
        live: mean(|s| s.live),
    }
}

/// `GET /api/v1/quality?device_id=|commune=|agency=&by=&from=&to=&resolution=1h|1d`.
pub(crate) async fn quality(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let resolution = crate::params::hourly_or_daily(&q)?;
    let named: Vec<&str> = ["device_id", "commune", "agency"]
        .into_iter()
        .filter(|k| q.contains_key(*k))
        .collect();
    if named.len() > 1 {
        return Err(bad(format!(
            "give one of device_id, commune, agency (got {})",
            named.join(", ")
        )));
    }
    let by = match q.get("by").map(String::as_str) {
        Some("device") => By::Device,
        Some("commune") => By::Commune,
        Some("agency") => By::Agency,
        Some("kind") => By::Kind,
        Some(b) => {
            return Err(bad(format!(
                "by {b:?} is not device, commune, agency or kind"
            )))
        }
        None if q.contains_key("commune") => By::Commune,
        None if q.contains_key("agency") => By::Agency,
        None => By::Device,
    };
    let mut window_q = q.clone();
    for k in ["by", "commune", "agency"] {
        window_q.remove(k);
    }
    let filter = windows_filter(&state, &window_q, resolution)?;
    let all = match q.get("device_id") {
        Some(id) => vec![state.registry.get(id).ok_or_else(|| not_found_device(id))?],
        None => state.registry.list(),
    };
    let devices: Vec<&Device> = match (q.get("device_id"), q.get("commune"), q.get("agency")) {
        (Some(_), _, _) => all.iter().map(|d| d.as_ref()).collect(),
        (_, Some(c), _) => all
            .iter()
            .filter(|d| d.commune.as_ref() == Some(c))
            .map(|d| d.as_ref())
            .collect(),
        (_, _, Some(a)) => all
            .iter()
            .filter(|d| d.agency.as_ref() == Some(a))
            .map(|d| d.as_ref())
            .collect(),
        _ => all.iter().map(|d| d.as_ref()).collect(),
    };
    let records = score(&state, &devices, by, resolution, filter.from, filter.to).await?;
    Ok(Json(json!({ "by": by.name(), "quality": records })))
}

/// The scores of `devices` (those that owe something) per window of `resolution` in
/// `[from, to)`, grouped `by`.
pub async fn score(
    state: &AppState,
    devices: &[&Device],
    by: By,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> ApiResult<Vec<ApiQuality>> {
    let devices: Vec<&Device> = devices
        .iter()
        .copied()
        .filter(|d| !d.expected_metrics().is_empty())
        .collect();
    let offset = state.ingest.utc_offset_ms();
    let from = resolution.start(from, offset);
    let look_back = devices
        .iter()
        .map(|d| (ONLINE_INTERVALS * d.expected_interval_s * 1000.0).ceil() as i64)
        .max()
        .unwrap_or(0)
        .clamp(0, 86_400_000);
    // Read a chunk of devices at a time, so what is held stays bounded whatever the range;
    // refuse what would read too much (until hourly counts are stored, the per-minute ones are
    // summed here).
    let minutes = ((to - from + look_back) / 60_000).max(1) as usize;
    let estimate = |d: &Device| minutes * d.expected_metrics().len().max(1);
    let total: usize = devices.iter().map(|d| estimate(d)).sum();
    if total > READ_BUDGET {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "too_many_rows",
            format!(
                "the range and devices hold about {total} per-minute counts, more than the {READ_BUDGET} one request sums: narrow the range, or ask for fewer devices"
            ),
        ));
    }
    let mut chunks: Vec<Vec<&Device>> = vec![Vec::new()];
    let mut in_chunk = 0;
    for d in &devices {
        if in_chunk + estimate(d) > CHUNK_ROWS && !chunks[chunks.len() - 1].is_empty() {
            chunks.push(Vec::new());
            in_chunk = 0;
        }
        in_chunk += estimate(d);
        let last = chunks.len() - 1;
        chunks[last].push(d);
    }
    let now = now_ms();
    // Per group and window: the devices' counts, scores and merged delays.
    type Group = (QualityCounts, Histogram, Vec<Scores>);
    let mut groups: BTreeMap<(String, i64), Group> = BTreeMap::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let ids: Vec<String> = chunk.iter().map(|d| d.device_id.clone()).collect();
        let rows = state
            .history
            .query::<QualityRow>(&HistoryFilter {
                from: from - look_back,
                to,
                limit: usize::MAX,
                any_of: vec![("device_id", ids.clone())],
                ..Default::default()
            })
            .await
            .map_err(history_unavailable)?;
        let letters = state
            .history
            .query::<DeadLetterRow>(&HistoryFilter {
                from,
                to,
                limit: usize::MAX,
                any_of: vec![("device_id", ids)],
                ..Default::default()
            })
            .await
            .map_err(history_unavailable)?;
        let mut rows_of: HashMap<&str, Vec<&QualityRow>> = HashMap::new();
        for r in &rows {
            rows_of.entry(&r.device_id).or_default().push(r);
        }
        let mut letters_of: HashMap<&str, Vec<&DeadLetterRow>> = HashMap::new();
        for l in &letters {
            letters_of.entry(&l.device_id).or_default().push(l);
        }
        let mut window = from;
        while window < to.min(now) {
            let end = window + resolution.ms();
            for d in chunk {
                let Some(group) = by.of(d) else { continue };
                if owed_from(d) >= end {
                    continue;
                }
                let cover = (ONLINE_INTERVALS * d.expected_interval_s * 1000.0).ceil() as i64;
                let rows: Vec<&QualityRow> = rows_of
                    .get(d.device_id.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|r| r.last_ts >= window - cover && r.window_start < end)
                    .copied()
                    .collect();
                let letters: Vec<&DeadLetterRow> = letters_of
                    .get(d.device_id.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|l| l.received_at >= window && l.received_at < end)
                    .copied()
                    .collect();
                let (counts, histogram) = device_counts(d, &rows, &letters, window, end, now);
                let g = groups.entry((group, window)).or_insert_with(|| {
                    (
                        QualityCounts::default(),
                        [0; DELAY_BUCKETS_MS.len() + 1],
                        Vec::new(),
                    )
                });
                g.2.push(counts.scores());
                g.0.add(&counts);
                for (slot, n) in g.1.iter_mut().zip(histogram) {
                    *slot += n;
                }
            }
            window = end;
        }
    }
    Ok(groups
        .into_iter()
        .map(|((group, start), (counts, histogram, scores))| {
            let mut record = ApiQuality {
                device_id: None,
                commune: None,
                agency: None,
                kind: None,
                devices: (by != By::Device).then_some(scores.len()),
                resolution: resolution.as_str(),
                window_start: format_ms(start),
                window_end: format_ms(start + resolution.ms()),
                scores: if by == By::Device {
                    counts.scores()
                } else {
                    mean_scores(&scores)
                },
                counts: ApiCounts::of(&counts, &histogram),
            };
            match by {
                By::Device => record.device_id = Some(group),
                By::Commune => record.commune = Some(group),
                By::Agency => record.agency = Some(group),
                By::Kind => record.kind = Some(group),
            }
            record
        })
        .collect())
}

/// The fleet's scores per kind of device over the last complete hour, as `/metrics` gauges
/// (`ioc_api_quality_score{kind,score}`, `ioc_api_quality_devices{kind}`: never a device id),
/// refreshed every `every` until `shutdown`.
pub fn keep_fleet_gauges(
    state: AppState,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> prometheus::Result<tokio::task::JoinHandle<()>> {
    let scores = prometheus::GaugeVec::new(
        prometheus::Opts::new(
            "ioc_api_quality_score",
            "Mean data-quality score (0-100) of each kind of device over the last complete hour",
        ),
        &["kind", "score"],
    )?;
    let devices = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "ioc_api_quality_devices",
            "Devices scored per kind over the last complete hour",
        ),
        &["kind"],
    )?;
    state.prometheus.register(Box::new(scores.clone()))?;
    state.prometheus.register(Box::new(devices.clone()))?;
    Ok(tokio::spawn(async move {
        loop {
            let hour = Resolution::Hour.start(now_ms(), 0) - 3_600_000;
            let all = state.registry.list();
            let fleet: Vec<&Device> = all.iter().map(|d| d.as_ref()).collect();
            match score(
                &state,
                &fleet,
                By::Kind,
                Resolution::Hour,
                hour,
                hour + 3_600_000,
            )
            .await
            {
                Ok(records) => {
                    scores.reset();
                    devices.reset();
                    for r in records {
                        let kind = r.kind.as_deref().unwrap_or_default();
                        devices
                            .with_label_values(&[kind])
                            .set(r.devices.unwrap_or(0) as i64);
                        for (name, value) in [
                            ("correct", r.scores.correct),
                            ("complete", r.scores.complete),
                            ("clean", r.scores.clean),
                            ("live", r.scores.live),
                        ] {
                            if let Some(v) = value {
                                scores.with_label_values(&[kind, name]).set(v);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "fleet quality gauges not refreshed")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H0: i64 = 1_795_680_000_000; // 2026-11-26T08:00:00Z, an hour boundary
    const MIN: i64 = 60_000;

    fn station(metrics: &[&str]) -> Device {
        Device {
            device_id: "aq-1".into(),
            kind: "air_quality".into(),
            expected_interval_s: 60.0,
            registered_at: H0 - 86_400_000,
            expected_metrics: Some(metrics.iter().map(|m| m.to_string()).collect()),
            ..Default::default()
        }
    }

    /// One good, timely reading a minute of `metric` at second 30 of each of `minutes`.
    fn minutes(metric: &str, minutes: impl Iterator<Item = i64>) -> Vec<QualityRow> {
        minutes
            .map(|m| QualityRow {
                device_id: "aq-1".into(),
                channel: String::new(),
                metric: metric.into(),
                window_start: H0 + m * MIN,
                window_end: H0 + (m + 1) * MIN,
                received: 1,
                good: 1,
                suspect: 0,
                bad: 0,
                stuck: 0,
                spikes: 0,
                resent: 0,
                timely: 1,
                delays: "1".into(),
                first_ts: H0 + m * MIN + 30_000,
                last_ts: H0 + m * MIN + 30_000,
                version: 1,
            })
            .collect()
    }

    fn score(
        device: &Device,
        rows: &[QualityRow],
        letters: &[DeadLetterRow],
    ) -> (QualityCounts, Scores) {
        let rows: Vec<&QualityRow> = rows.iter().collect();
        let letters: Vec<&DeadLetterRow> = letters.iter().collect();
        let (c, _) = device_counts(device, &rows, &letters, H0, H0 + 60 * MIN, H0 + 120 * MIN);
        let s = c.scores();
        (c, s)
    }

    #[test]
    fn half_its_messages_is_fifty_complete() {
        let d = station(&["pm25", "pm10", "o3", "no2"]);
        let rows: Vec<QualityRow> = ["pm25", "pm10", "o3", "no2"]
            .iter()
            .flat_map(|m| minutes(m, (0..60).step_by(2)))
            .collect();
        let (c, s) = score(&d, &rows, &[]);
        assert_eq!(c.expected_values, 240.0);
        assert_eq!(c.received, 120);
        assert_eq!(s.complete, Some(50.0));
        assert_eq!(s.correct, Some(100.0));
        // Online from its first reading, 30 s into the hour, on: every gap (two minutes) is
        // within three intervals.
        assert_eq!(c.online_ms, 60 * MIN - 30_000);
        assert_eq!(s.live, Some(99.2));
    }

    #[test]
    fn one_metric_missing_of_four_is_seventy_five_complete() {
        let d = station(&["pm25", "pm10", "o3", "no2"]);
        let rows: Vec<QualityRow> = ["pm25", "pm10", "o3"]
            .iter()
            .flat_map(|m| minutes(m, 0..60))
            .collect();
        let (_, s) = score(&d, &rows, &[]);
        assert_eq!(s.complete, Some(75.0));
        assert_eq!(s.live, Some(99.2));
        // A metric it does not owe makes up for none.
        let mut more = rows.clone();
        more.extend(minutes("temperature", 0..60));
        assert_eq!(score(&d, &more, &[]).1.complete, Some(75.0));
    }

    #[test]
    fn two_hours_of_silence_is_the_longest_silence_and_not_live() {
        let d = station(&["pm25"]);
        // Readings in the first ten minutes of the period, then nothing.
        let rows = minutes("pm25", 0..10);
        let rows: Vec<&QualityRow> = rows.iter().collect();
        let (c, _) = device_counts(&d, &rows, &[], H0, H0 + 180 * MIN, H0 + 200 * MIN);
        assert_eq!(c.longest_silence_ms, 180 * MIN - (9 * MIN + 30_000));
        // Online from the first reading to three intervals after the last.
        assert_eq!(c.online_ms, 12 * MIN);
        let s = c.scores();
        assert_eq!(s.live, Some(6.7)); // 12 of 180 minutes
        assert_eq!(s.complete, Some(5.6)); // 10 of 180
    }

    #[test]
    fn rejections_count_against_clean_and_rate_limits_apart() {
        let d = station(&["pm25", "pm10"]);
        let rows = [minutes("pm25", 0..60), minutes("pm10", 0..60)].concat();
        let letter = |id: &str, code: &str, metric: &str| DeadLetterRow {
            message_id: id.into(),
            code: code.into(),
            metric: metric.into(),
            device_id: "aq-1".into(),
            reason: String::new(),
            topic: String::new(),
            received_at: H0 + 5 * MIN,
            version: 1,
        };
        let letters = [
            letter("a", "unknown_metric", "pm1"),
            letter("b", "rate_limited", ""),
            letter("c", "malformed", ""),
        ];
        let (c, s) = score(&d, &rows, &letters);
        assert_eq!(c.rejected_values, 5.0); // 1 value, then two whole messages of 2
        assert_eq!(c.rate_limited, 1);
        assert_eq!(c.rejected.get("malformed"), Some(&1));
        assert_eq!(s.clean, Some(96.0)); // 120 of 125
    }

    #[test]
    fn a_device_installed_mid_period_owes_only_from_then() {
        let mut d = station(&["pm25"]);
        d.installed_at = Some(H0 + 30 * MIN);
        let rows = minutes("pm25", 30..60);
        let (c, s) = score(&d, &rows, &[]);
        assert_eq!(c.expected_values, 30.0);
        assert_eq!(c.period_ms, 30 * MIN);
        assert_eq!(s.complete, Some(100.0));
    }

    #[test]
    fn silence_and_cover_helpers() {
        assert_eq!(longest_silence(&[], 0, 100), 100);
        assert_eq!(longest_silence(&[(10, 20), (60, 70)], 0, 100), 40);
        assert_eq!(covered(&[(10, 20), (15, 30)], 5, 0, 100), 25);
        assert_eq!(covered(&[(-10, -5)], 10, 0, 100), 5);
    }
}
