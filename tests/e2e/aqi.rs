//! VN_AQI end to end, the same check on both modes, on the backdated day of `rollups.rs` (PM2.5
//! once a minute; 03:00–06:00 missing, 07:00–08:00 half-empty): the hourly and daily AQI
//! through the API equal what the decision gives for the API's own hourly windows (the same
//! arithmetic `ioc aqi` runs, golden-tested in `ioc-regulation`); then the late other half of
//! 07:00 makes that hour valid, and the AQI of that hour, of the hours after it and of the day
//! are re-emitted with higher versions while earlier hours stay as they were.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, FixedOffset};
use ioc_regulation::csv::{Hours, StationHour};
use rumqttc::QoS;

use crate::harness::eventually;
use crate::rollups::Api;

const ICT: i64 = 7 * 3_600_000;
const HOUR: i64 = 3_600_000;
const MIN_HOUR_CAPTURE: f64 = 0.75;

#[derive(Debug, Clone, PartialEq)]
struct Aqi {
    aqi: Option<u64>,
    nowcast_pm25: Option<f64>,
    low_capture: Vec<String>,
    version: u64,
}

fn parse_ms(v: &serde_json::Value) -> Result<i64> {
    ioc_contract::time::parse_rfc3339_ms(v.as_str().context("a time")?).context("a time")
}

/// The AQI records the API has for `device` at `resolution` over the day, by window start.
async fn stored(
    api: &Api<'_>,
    device: &str,
    resolution: &str,
    day: i64,
) -> Result<BTreeMap<i64, Aqi>> {
    let to = day + 86_400_000;
    let body = api
        .get(&format!(
            "/api/v1/aqi?device_id={device}&from={day}&to={to}&resolution={resolution}"
        ))
        .await?;
    let mut out = BTreeMap::new();
    for a in body["aqi"].as_array().context("aqi")? {
        anyhow::ensure!(
            a["resolution"] == resolution && a["grade"] == "reference",
            "{a}"
        );
        let (start, end) = (parse_ms(&a["window_start"])?, parse_ms(&a["window_end"])?);
        let len = if resolution == "1h" { HOUR } else { 24 * HOUR };
        anyhow::ensure!(
            end == start + len,
            "window_end is the hour-ending label: {a}"
        );
        if let Some(level) = a["band"]["level"].as_u64() {
            let aqi = a["aqi"].as_u64().context("aqi with a band")?;
            let want = ioc_regulation::aqi::band(aqi as u32).level as u64;
            anyhow::ensure!(level == want, "band of {a}");
        }
        out.insert(
            start,
            Aqi {
                aqi: a["aqi"].as_u64(),
                nowcast_pm25: a["nowcast_pm25"].as_f64(),
                low_capture: a["low_capture"]
                    .as_array()
                    .context("low_capture")?
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect(),
                version: a["version"].as_u64().context("version")?,
            },
        );
    }
    Ok(out)
}

/// What the decision gives for the API's stored PM2.5 hourly windows of the day (and the 11
/// hours before it): hourly and daily AQI by window start.
async fn recomputed(
    api: &Api<'_>,
    device: &str,
    day: i64,
) -> Result<(BTreeMap<i64, Aqi>, BTreeMap<i64, Aqi>)> {
    let (from, to) = (day - 11 * HOUR, day + 24 * HOUR);
    let body = api
        .get(&format!(
            "/api/v1/aggregates?device_id={device}&from={from}&to={to}&resolution=1h&metric=pm25"
        ))
        .await?;
    let offset = FixedOffset::east_opt((ICT / 1000) as i32).context("offset")?;
    let mut rows = Vec::new();
    let mut low = BTreeMap::new();
    for a in body["aggregates"].as_array().context("aggregates")? {
        let start = parse_ms(&a["window_start"])?;
        let valid = a["capture"].as_f64().is_none_or(|c| c >= MIN_HOUR_CAPTURE);
        low.insert(start, !valid);
        rows.push(StationHour {
            station_id: device.into(),
            time: DateTime::from_timestamp_millis(start + HOUR)
                .context("time")?
                .with_timezone(&offset),
            pm25: valid.then(|| a["mean"].as_f64()).flatten(),
            pm10: None,
            o3: None,
            no2: None,
            so2: None,
            co: None,
        });
    }
    let hours = Hours::new(&rows);
    let mut hourly = BTreeMap::new();
    for (&start, &low) in low.range(day..) {
        let h = hours.hourly(device, (start + HOUR) / 1000);
        hourly.insert(
            start,
            Aqi {
                aqi: h.aqi.map(u64::from),
                nowcast_pm25: h.nowcast_pm25.map(ioc_regulation::csv::round1),
                low_capture: if low { vec!["pm25".into()] } else { vec![] },
                version: 0,
            },
        );
    }
    let date = DateTime::from_timestamp_millis(day)
        .context("day")?
        .with_timezone(&offset)
        .date_naive();
    let d = hours.daily(device, date, offset, 1);
    let daily = BTreeMap::from([(
        day,
        Aqi {
            aqi: d.aqi.map(u64::from),
            nowcast_pm25: None,
            low_capture: vec![],
            version: 0,
        },
    )]);
    Ok((hourly, daily))
}

/// The same figures (versions aside).
fn same_one(g: &Aqi, w: &Aqi) -> bool {
    (g.aqi, g.nowcast_pm25, &g.low_capture) == (w.aqi, w.nowcast_pm25, &w.low_capture)
}

fn same(got: &BTreeMap<i64, Aqi>, want: &BTreeMap<i64, Aqi>) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|((s1, g), (s2, w))| s1 == s2 && same_one(g, w))
}

/// Waits until the API's hourly and daily AQI of the day equal the recomputation.
async fn settled(
    api: &Api<'_>,
    device: &str,
    day: i64,
) -> Result<(BTreeMap<i64, Aqi>, BTreeMap<i64, Aqi>)> {
    eventually(
        "the hourly and daily AQI to equal the decision's for the stored hours",
        Duration::from_secs(120),
        api.logs,
        || async {
            let (want_h, want_d) = recomputed(api, device, day).await?;
            let (got_h, got_d) = (
                stored(api, device, "1h", day).await?,
                stored(api, device, "1d", day).await?,
            );
            if same(&got_h, &want_h) && same(&got_d, &want_d) {
                return Ok(Some((got_h, got_d)));
            }
            let diff: Vec<String> = want_h
                .iter()
                .filter(|(s, w)| !got_h.get(s).is_some_and(|g| same_one(g, w)))
                .take(3)
                .map(|(s, w)| format!("{s}: stored {:?}, recomputed {w:?}", got_h.get(s)))
                .collect();
            bail!("AQI differs: {diff:?}; day stored {got_d:?} recomputed {want_d:?}")
        },
    )
    .await
}

/// After `rollups.rs` published the day (`sent` readings, all stored): the AQI equals the
/// decision's; the late other half of 07:00 revises 07:00, the hours after it and the day.
pub(crate) async fn the_backdated_day_gets_its_aqi_and_a_late_half_hour_revises_it(
    api: &Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
    day: i64,
) -> Result<()> {
    let (hours, days) = settled(api, device, day).await?;
    let seven = day + 7 * HOUR;
    assert_eq!(
        hours[&seven].low_capture,
        vec!["pm25"],
        "the half-empty hour is missing"
    );
    assert_eq!(
        hours[&seven].aqi, None,
        "07:00 has 1 of its latest 3 hours valid"
    );
    assert!(
        !hours.contains_key(&(day + 4 * HOUR)),
        "no AQI for an hour without windows"
    );
    assert!(hours[&(day + 12 * HOUR)].aqi.is_some());
    assert!(days[&day].aqi.is_some());

    let topic = format!("ioc/v1/devices/{device}/telemetry");
    for minute in (7 * 60..8 * 60i64).filter(|m| m % 2 == 1) {
        let ts = day + minute * 60_000 + 15_000;
        let body = format!(r#"{{"ts":{ts},"values":{{"pm25":30}}}}"#);
        mqtt.publish(&topic, QoS::AtLeastOnce, false, body).await?;
    }
    let (after_h, after_d) = eventually(
        "07:00 to become valid for the AQI",
        Duration::from_secs(120),
        api.logs,
        || async {
            let (h, d) = settled(api, device, day).await?;
            Ok(h[&seven].low_capture.is_empty().then_some((h, d)))
        },
    )
    .await?;
    assert!(
        after_h[&seven].aqi.is_some(),
        "07:00 now has 2 of its latest 3 hours"
    );
    for (start, new) in &after_h {
        let old = &hours[start];
        if (seven..seven + 12 * HOUR).contains(start) {
            assert!(
                new.version > old.version,
                "hour {start} re-emitted: {old:?} → {new:?}"
            );
        } else {
            assert_eq!(new, old, "hour {start} unchanged");
        }
    }
    assert!(
        after_d[&day].version > days[&day].version,
        "the day re-emitted"
    );

    // The annual report's PM2.5 mean is over the same valid hours (a few out of a year so far:
    // too few to judge it by the year column).
    let (from, to) = (day - 11 * HOUR, day + 24 * HOUR);
    let body = api
        .get(&format!(
            "/api/v1/aggregates?device_id={device}&from={from}&to={to}&resolution=1h&metric=pm25"
        ))
        .await?;
    let valid: Vec<f64> = body["aggregates"]
        .as_array()
        .context("aggregates")?
        .iter()
        .filter(|a| a["capture"].as_f64().is_none_or(|c| c >= MIN_HOUR_CAPTURE))
        .filter_map(|a| a["mean"].as_f64())
        .collect();
    let year = DateTime::from_timestamp_millis(day + ICT)
        .context("year")?
        .format("%Y")
        .to_string();
    let annual = api
        .get(&format!("/api/v1/annual?device_id={device}&year={year}"))
        .await?;
    let pm25 = annual["means"]
        .as_array()
        .context("means")?
        .iter()
        .find(|m| m["metric"] == "pm25")
        .with_context(|| format!("no PM2.5 year mean in {annual}"))?;
    let mean = valid.iter().sum::<f64>() / valid.len() as f64;
    assert_eq!(
        pm25["valid_hours"].as_u64(),
        Some(valid.len() as u64),
        "{pm25}"
    );
    assert_eq!(
        pm25["mean"].as_f64(),
        Some((mean * 10.0).round() / 10.0),
        "{pm25}"
    );
    assert_eq!(
        (&pm25["limit"], &pm25["exceeded"], &annual["regulation"]),
        (
            &serde_json::json!(25.0),
            &serde_json::Value::Null,
            &serde_json::json!("QCVN 05:2023/BTNMT")
        )
    );
    Ok(())
}
