//! Data quality end to end: a station told what it owes (`PATCH`: expected metrics, agency,
//! installation), then a backdated hour over MQTT with one metric never sent, a stuck run, a
//! spike, an out-of-range value, resends (in the open window and late) and a redelivery; the
//! hour's counts and scores through the API are exactly what those faults make, and each
//! moves only its own score. A rejected value counts against the hour it was received in.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ioc_contract::Resolution;
use rumqttc::QoS;

use crate::harness::eventually;
use crate::rollups::Api;

const ICT: i64 = 7 * 3_600_000;

/// Minute `m`'s message: PM2.5 varying (out of range at minute 45), PM10 varying then stuck at
/// 999.9 from minute 20 (a fan-failed SDS011), O3 varying with one spike at minute 30; NO2,
/// which it owes, never.
fn message(hour: i64, m: i64, extra: &str) -> String {
    let ts = hour + m * 60_000 + 30_000;
    let pm25 = if m == 45 {
        5000.0
    } else {
        20.0 + (m % 5) as f64 + m as f64 * 0.01
    };
    let pm10 = if m >= 20 {
        999.9
    } else {
        40.0 + (m % 3) as f64
    };
    let o3 = if m == 30 {
        900.0
    } else {
        50.0 + (m % 7) as f64
    };
    format!(r#"{{"ts":{ts},{extra}"values":{{"pm25":{pm25},"pm10":{pm10},"o3":{o3}}}}}"#)
}

pub(crate) async fn a_backdated_hour_scores_what_its_faults_make(
    api: &Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<()> {
    let now = ioc_contract::time::now_ms();
    let hour = Resolution::Hour.start(now, ICT) - 3 * 86_400_000;
    // What the station owes, from its installation four days ago.
    let changed = api
        .http
        .patch(format!("{}/api/v1/devices/{device}", api.base))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({
            "expected_metrics": ["pm25", "pm10", "o3", "no2"],
            "agency": "Sở Nông nghiệp và Môi trường",
            "installed_at": now - 4 * 86_400_000,
        }))
        .send()
        .await?;
    ensure!(
        changed.status().is_success(),
        "PATCH: {}",
        changed.text().await?
    );
    let shown = api.get(&format!("/api/v1/devices/{device}")).await?;
    ensure!(
        shown["expected_metrics"] == serde_json::json!(["pm25", "pm10", "o3", "no2"])
            && shown["agency"] == "Sở Nông nghiệp và Môi trường",
        "the device shows what it owes: {shown}"
    );
    let audit = api
        .get(&format!(
            "/api/v1/audit?device_id={device}&action=device.updated"
        ))
        .await?;
    ensure!(
        audit["entries"].to_string().contains("expected_metrics"),
        "the change is audited: {audit}"
    );

    let topic = format!("ioc/v1/devices/{device}/telemetry");
    let publish = |body: String| {
        let topic = topic.clone();
        async move { mqtt.publish(topic, QoS::AtLeastOnce, false, body).await }
    };
    for m in 0..60 {
        publish(message(hour, m, "")).await?;
        if m == 10 {
            // Sent again in another message (its payload differs): three resends, found in the
            // minute's open window.
            publish(message(hour, m, r#""seq":2,"#)).await?;
        }
    }
    // Long after their minutes closed: minute 5 sent again in another message (three more
    // resends, found in history), and minute 11's very message again (a redelivery: none).
    publish(message(hour, 5, r#""seq":2,"#)).await?;
    publish(message(hour, 11, "")).await?;
    // A value of a metric the catalogue does not know: rejected alone, now.
    publish(format!(
        r#"{{"ts":{},"values":{{"pm25":21.5,"pm2_5x":3}}}}"#,
        now
    ))
    .await?;

    let path = format!(
        "/api/v1/quality?device_id={device}&from={hour}&to={}",
        hour + 3_600_000
    );
    let record = eventually(
        "the hour's quality counts",
        Duration::from_secs(90),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let r = body["quality"][0].clone();
            let c = &r["counts"];
            // Not there yet is an error, so a time-out shows the last answer.
            ensure!(
                c["received"] == 180 && c["resent"] == 6,
                "not all counted yet: {body}"
            );
            Ok(Some(r))
        },
    )
    .await?;
    let c = &record["counts"];
    let counts: Vec<(&str, serde_json::Value)> = [
        "expected_values",
        "expected_messages",
        "received",
        "good",
        "suspect",
        "bad",
        "stuck",
        "spikes",
        "resent",
        "timely",
        "longest_silence_s",
        "period_s",
    ]
    .into_iter()
    .map(|k| (k, c[k].clone()))
    .collect();
    let want: Vec<(&str, serde_json::Value)> = vec![
        ("expected_values", 240.0.into()),
        ("expected_messages", 60.0.into()),
        ("received", 180.into()),
        ("good", 179.into()),
        ("suspect", 0.into()),
        ("bad", 1.into()),
        // PM10's run of 40 is stuck from its 30th reading.
        ("stuck", 11.into()),
        // O3's spike, and PM10's first five 999.9s while the ten before were still its
        // varying values.
        ("spikes", 6.into()),
        ("resent", 6.into()),
        // Three days late: none timely.
        ("timely", 0.into()),
        ("longest_silence_s", 60.0.into()),
        ("period_s", 3600.0.into()),
    ];
    ensure!(
        counts == want,
        "counts {counts:?}, expected {want:?}: {record}"
    );
    let scores = &record["scores"];
    let want_scores = serde_json::json!({
        // (180 - 1 bad - 11 stuck - 6 spikes) / 180
        "correct": 90.0,
        // (59 + 60 + 60 + 0 NO2) / 240
        "complete": 74.6,
        // (180 - 6 resent) / 180
        "clean": 96.7,
        // Online, but nothing came in time.
        "live": 0.0,
    });
    ensure!(
        *scores == want_scores,
        "scores {scores}, expected {want_scores}"
    );
    ensure!(
        c["delay_p50_s"] == 86400.0,
        "three days late reads as a day or more: {c}"
    );

    // The rejected value counts in the hour it was received.
    let received = Resolution::Hour.start(now, ICT);
    let path = format!(
        "/api/v1/quality?device_id={device}&from={received}&to={}",
        received + 3_600_000
    );
    eventually(
        "the rejection counted",
        Duration::from_secs(30),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let c = &body["quality"][0]["counts"];
            ensure!(
                c["rejected"]["unknown_metric"] == 1,
                "not counted yet: {body}"
            );
            Ok(Some(()))
        },
    )
    .await?;

    // Open data publishes the same scores beside the station's data, with no token.
    let open: serde_json::Value = api
        .http
        .get(format!(
            "{}/open/v1/quality?device_id={device}&from={hour}&to={}",
            api.base,
            hour + 3_600_000
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        open["quality"][0]["scores"] == want_scores,
        "open data's scores: {open}"
    );

    // Rolled up by agency, the station is its agency's one device.
    let body = api
        .get(&format!(
            "/api/v1/quality?by=agency&from={hour}&to={}",
            hour + 3_600_000
        ))
        .await?;
    let agency = body["quality"]
        .as_array()
        .context("records")?
        .iter()
        .find(|r| r["agency"] == "Sở Nông nghiệp và Môi trường")
        .with_context(|| format!("the agency's record in {body}"))?;
    ensure!(
        agency["devices"] == 1 && agency["scores"] == want_scores,
        "the agency's record is its one station's: {agency}"
    );
    Ok(())
}
