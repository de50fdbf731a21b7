//! QCVN 40 exceedances end to end, the same check on both modes: a wastewater station publishes
//! a backdated day over MQTT (COD and pH on its outlet once a minute; COD 200 mg/L through
//! 09:00–10:00, pH 9.5 through 14:00–15:00; its inlet at 900 mg/L, which is not judged). The API
//! gives exactly the two exceedances QCVN 40:2011 column B gives; then a late hour of low COD
//! brings 09:00's mean to 125, and that exceedance is re-emitted as withdrawn with a higher
//! version, the pH one untouched; the station's settings change to column A and its next hour
//! is judged against the new limit. An air-quality station's day of NO2 gives its QCVN 05 hour
//! and day.

use std::time::Duration;

use anyhow::{Context, Result};
use ioc_contract::Resolution;
use rumqttc::QoS;

use crate::harness::eventually;
use crate::rollups::Api;

const ICT: i64 = 7 * 3_600_000;
const HOUR: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq)]
struct Exceedance {
    metric: String,
    period: String,
    start: i64,
    value: f64,
    multiple: f64,
    limit: serde_json::Value,
    status: String,
    version: u64,
}

/// The exceedances of `regulation` the API has for `device` over the day, on `channel` only.
async fn stored_of(
    api: &Api<'_>,
    device: &str,
    regulation: &str,
    channel: &str,
    day: i64,
) -> Result<Vec<Exceedance>> {
    let to = day + 24 * HOUR;
    let regulation = regulation.replace(' ', "%20");
    let body = api
        .get(&format!(
            "/api/v1/exceedances?device_id={device}&regulation={regulation}&from={day}&to={to}"
        ))
        .await?;
    let mut out = Vec::new();
    for e in body["exceedances"].as_array().context("exceedances")? {
        anyhow::ensure!(
            e["channel"] == channel && e["grade"] == "reference" && e["unit"].is_string(),
            "{e}"
        );
        out.push(Exceedance {
            metric: e["metric"].as_str().context("metric")?.into(),
            period: e["period"].as_str().context("period")?.into(),
            start: ioc_contract::time::parse_rfc3339_ms(
                e["window_start"].as_str().context("start")?,
            )
            .context("window_start")?,
            value: e["value"].as_f64().context("value")?,
            multiple: e["multiple"].as_f64().context("multiple")?,
            limit: e["limit"].clone(),
            status: e["status"].as_str().context("status")?.into(),
            version: e["version"].as_u64().context("version")?,
        });
    }
    out.sort_by(|a, b| (&a.metric, &a.period, a.start).cmp(&(&b.metric, &b.period, b.start)));
    Ok(out)
}

/// Publishes one message of the station's `channel` at `ts`; `values` is the inside of its
/// values object.
async fn send(
    mqtt: &rumqttc::AsyncClient,
    topic: &str,
    ts: i64,
    channel: &str,
    values: &str,
) -> Result<()> {
    let body = format!(r#"{{"ts":{ts},"channel":"{channel}","values":{{{values}}}}}"#);
    mqtt.publish(topic, QoS::AtLeastOnce, false, body).await?;
    Ok(())
}

async fn stored(api: &Api<'_>, device: &str, day: i64) -> Result<Vec<Exceedance>> {
    stored_of(api, device, "QCVN 40:2011/BTNMT", "outlet", day).await
}

/// Publishes the day, checks its exceedances, then withdraws one with a late hour.
pub(crate) async fn a_wastewater_day_exceeds_qcvn_40_and_a_late_hour_withdraws_it(
    api: &Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<()> {
    let day = Resolution::Day.start(ioc_contract::time::now_ms(), ICT) - 2 * 86_400_000;
    let topic = format!("ioc/v1/devices/{device}/telemetry");
    for minute in 0..1440i64 {
        let hour = minute / 60;
        let ts = day + minute * 60_000 + 10_000;
        let cod = if hour == 9 { 200.0 } else { 100.0 };
        let ph = if hour == 14 { 9.5 } else { 7.2 };
        send(
            mqtt,
            &topic,
            ts,
            "outlet",
            &format!(r#""cod":{cod},"ph":{ph}"#),
        )
        .await?;
        if hour == 9 {
            send(mqtt, &topic, ts, "inlet", r#""cod":900"#).await?;
        }
    }
    let nine = day + 9 * HOUR;
    let before = eventually(
        "the day's QCVN 40 exceedances",
        Duration::from_secs(120),
        api.logs,
        || async {
            let got = stored(api, device, day).await?;
            let brief: Vec<(&str, &str, i64, &str)> = got
                .iter()
                .map(|e| {
                    (
                        e.metric.as_str(),
                        e.period.as_str(),
                        e.start,
                        e.status.as_str(),
                    )
                })
                .collect();
            let want = vec![
                ("cod", "1h", nine, "exceeded"),
                ("ph", "1h", day + 14 * HOUR, "exceeded"),
            ];
            Ok((brief == want).then_some(got))
        },
    )
    .await?;
    assert_eq!(
        (before[0].value, before[0].multiple, &before[0].limit),
        (200.0, 1.333, &serde_json::json!({"max": 150.0})),
        "COD against column B's 150 × Kq 1 × Kf 1"
    );
    assert_eq!(
        (before[1].value, before[1].multiple, &before[1].limit),
        (9.5, 0.5, &serde_json::json!({"low": 5.5, "high": 9.0})),
        "pH against its band"
    );

    // An hour of late COD readings between the others: 09:00's mean becomes 125.
    for minute in 9 * 60..10 * 60i64 {
        let ts = day + minute * 60_000 + 40_000;
        send(mqtt, &topic, ts, "outlet", r#""cod":50"#).await?;
    }
    // Withdrawn as soon as the mean falls below 150 with part of the late hour in; then kept
    // up to date until all of it is.
    let after = eventually(
        "09:00's COD exceedance withdrawn at the hour's new mean",
        Duration::from_secs(120),
        api.logs,
        || async {
            let got = stored(api, device, day).await?;
            let done = got.len() == 2 && got[0].status == "withdrawn" && got[0].value == 125.0;
            Ok(done.then_some(got))
        },
    )
    .await?;
    assert_eq!(
        (after[0].value, after[0].multiple),
        (125.0, 0.833),
        "the revised mean"
    );
    assert!(
        after[0].version > before[0].version,
        "re-emitted with a higher version"
    );
    assert_eq!(after[1], before[1], "the pH exceedance is as it was");

    // The station's settings change by PATCH, shown with the device and audited.
    let shown = api
        .patch_device(device, serde_json::json!({"qcvn40_column": "A", "kq": 0.9}))
        .await?;
    assert_eq!(
        shown["discharge"],
        serde_json::json!({"discharge_channel": "outlet", "qcvn40_column": "A", "kq": 0.9,
            "kf": 1.0, "regulation": "QCVN 40:2011/BTNMT"})
    );
    assert_eq!(shown["grade"], "reference");
    let audit = api
        .get(&format!(
            "/api/v1/audit?device_id={device}&action=device.updated"
        ))
        .await?;
    let detail = audit["entries"][0]["detail"].to_string();
    assert!(
        detail.contains("qcvn40_column") && detail.contains("0.9"),
        "the change is in the audit: {audit}"
    );

    // The new settings judge the station's next hour: its COD of 100 stands above column A's
    // 75 × Kq 0.9 × Kf 1 = 67.5 mg/L, and no later hour clears it (the officer's inbox in the
    // pipeline test finds its alert firing). One reading a minute into the hour after closes it
    // in event time (not after the idle timeout); that one reading is too few to judge its own
    // hour.
    let next = day + 24 * HOUR;
    for minute in (0..60i64).chain([61]) {
        let ts = next + minute * 60_000 + 10_000;
        send(mqtt, &topic, ts, "outlet", r#""cod":100.0,"ph":7.2"#).await?;
    }
    let judged = eventually(
        "the next hour's COD judged against column A",
        Duration::from_secs(120),
        api.logs,
        || async {
            let got = stored(api, device, next).await?;
            Ok(got
                .into_iter()
                .find(|e| e.metric == "cod" && e.start == next))
        },
    )
    .await?;
    let limit = judged.limit["max"].as_f64().unwrap_or(f64::NAN);
    assert!(
        judged.status == "exceeded" && judged.value == 100.0 && (limit - 67.5).abs() < 1e-9,
        "{judged:?}"
    );
    Ok(())
}

/// An air-quality station's backdated day of NO2 (120 µg/m³, 250 through 05:00–06:00): QCVN
/// 05:2023 gives the hour against its 1-hour 200 and the day's mean of 125.4 against its 24-hour
/// 100; nothing else (no 8-hour column for NO2).
pub(crate) async fn an_air_day_exceeds_qcvn_05_hourly_and_daily(
    api: &Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<()> {
    let day = Resolution::Day.start(ioc_contract::time::now_ms(), ICT) - 2 * 86_400_000;
    let topic = format!("ioc/v1/devices/{device}/telemetry");
    for minute in 0..1440i64 {
        let ts = day + minute * 60_000 + 20_000;
        let no2 = if minute / 60 == 5 { 250.0 } else { 120.0 };
        let body = format!(r#"{{"ts":{ts},"values":{{"no2":{no2}}}}}"#);
        mqtt.publish(&topic, QoS::AtLeastOnce, false, body).await?;
    }
    let got = eventually(
        "the day's QCVN 05 exceedances",
        Duration::from_secs(120),
        api.logs,
        || async {
            let got = stored_of(api, device, "QCVN 05:2023/BTNMT", "", day).await?;
            // The day is judged once 18 of its hours are valid, and settles when all 24 are in.
            let complete = got.iter().any(|e| e.period == "24h" && e.value == 125.417);
            Ok((got.len() == 2 && complete).then_some(got))
        },
    )
    .await?;
    let brief: Vec<(&str, &str, i64, f64, f64)> = got
        .iter()
        .map(|e| {
            (
                e.metric.as_str(),
                e.period.as_str(),
                e.start,
                e.value,
                e.multiple,
            )
        })
        .collect();
    assert_eq!(
        brief,
        vec![
            ("no2", "1h", day + 5 * HOUR, 250.0, 1.25),
            ("no2", "24h", day, 125.417, 1.254),
        ]
    );
    assert_eq!(got[1].limit, serde_json::json!({"max": 100.0}));
    Ok(())
}
