//! Every kind of bad input is dead-lettered with its reason and raw bytes, counted in
//! `/metrics`, and survived: ingest keeps running and keeps storing good data.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use rdkafka::message::Message;
use rumqttc::QoS;

use crate::harness::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_dead_lettered_counted_and_survived() -> Result<()> {
    let env = Env::new("reject", "")?;
    let _api = env.ioc("api", &["api"])?;
    env.wait_http(&env.api("/healthz"), Duration::from_secs(60))
        .await?;
    let _stream = env.ioc("stream", &["stream"])?;
    let mut ingest = env.ioc("ingest", &["ingest"])?;
    env.wait_http(
        &format!("http://127.0.0.1:{}/healthz", env.ingest_metrics_port),
        Duration::from_secs(60),
    )
    .await?;
    env.register("aq-1", "air_quality").await?;
    env.wait_ingest_knows_registered().await?;

    let ts = ioc_contract::time::now_ms() - 60_000;
    let dev = "ioc/v1/devices/aq-1/telemetry";
    let oversized = format!(
        r#"{{"ts":{ts},"values":{{"pm25":1}},"pad":"{}"}}"#,
        "x".repeat(300_000)
    );
    // (topic, payload, expected code)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ioc/v1/devices/bad$id/telemetry",
            format!(r#"{{"ts":{ts},"values":{{"pm25":1}}}}"#),
            "bad_topic",
        ),
        (
            "ioc/v1/devices/ghost-1/telemetry",
            format!(r#"{{"ts":{ts},"values":{{"pm25":1}}}}"#),
            "unknown_device",
        ),
        (dev, "this is not json".into(), "malformed"),
        (dev, r#"{"values":{"pm25":1}}"#.into(), "missing_ts"),
        (
            dev,
            r#"{"ts":"26/11/2026 08:05","values":{"pm25":1}}"#.into(),
            "invalid_ts",
        ),
        (
            dev,
            format!(r#"{{"ts":{ts},"interval_s":"sixty","values":{{"pm25":1}}}}"#),
            "invalid_field",
        ),
        (dev, format!(r#"{{"ts":{ts},"values":{{}}}}"#), "no_values"),
        (
            dev,
            format!(r#"{{"ts":{},"values":{{"pm25":12.5,"radon":3}}}}"#, ts + 1),
            "unknown_metric",
        ),
        (
            dev,
            format!(
                r#"{{"ts":{},"values":{{"pm10":"61,0","humidity":140}}}}"#,
                ts + 2
            ),
            "not_a_number",
        ),
        (dev, oversized, "payload_too_large"),
        // A station file: its unknown unit rejects that value alone.
        (
            "ioc/v1/stations/aq-1/file",
            "PM2.5\t12\tgrains/ft3\t20261126085500\t00\n".into(),
            "unknown_unit",
        ),
    ];
    let (mqtt, _poll) = env.mqtt_client("test-bad-devices");
    for (topic, payload, _) in &cases {
        mqtt.publish(
            *topic,
            QoS::AtLeastOnce,
            false,
            payload.clone().into_bytes(),
        )
        .await?;
    }

    // Every code arrives on the dead-letter topic with a reason, provenance and the raw bytes.
    let consumer = env.topic_reader("deadletter")?;
    let mut letters: HashMap<String, serde_json::Value> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while letters.len() < cases.len() {
        let m = tokio::time::timeout_at(deadline, consumer.recv()).await??;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        letters.insert(v["code"].as_str().unwrap_or_default().to_string(), v);
    }
    for (topic, payload, code) in &cases {
        let letter = &letters[*code];
        assert_eq!(letter["topic"], *topic, "{code}");
        assert!(
            letter["reason"].as_str().is_some_and(|r| r.len() > 5),
            "{code} has a reason: {letter}"
        );
        assert!(letter["received_at"].as_i64().is_some(), "{code}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(letter["raw_base64"].as_str().unwrap())?;
        assert_eq!(raw, payload.as_bytes(), "{code}: raw bytes kept");
    }
    assert_eq!(letters["unknown_metric"]["metric"], "radon");
    assert_eq!(letters["unknown_unit"]["metric"], "pm25");
    assert!(letters["not_a_number"]["reason"]
        .as_str()
        .unwrap()
        .contains("\"61,0\""));

    // Counted in /metrics, by code.
    for (_, _, code) in &cases {
        let n = env
            .metric(
                env.ingest_metrics_port,
                &format!("ioc_ingest_rejections_total{{code=\"{code}\"}}"),
            )
            .await?;
        assert_eq!(n, 1.0, "{code} counted once");
    }

    // Ingest is still running, the good values of partly bad messages were stored, the
    // out-of-range value kept as bad, and a good message after all this is stored too.
    assert!(ingest.is_running());
    mqtt.publish(
        dev,
        QoS::AtLeastOnce,
        false,
        format!(r#"{{"ts":{},"values":{{"pm25":7}}}}"#, ts + 3),
    )
    .await?;
    let rows = env
        .eventually("the good values in ClickHouse", Duration::from_secs(60), || async {
            let rows = env.clickhouse("SELECT metric, value, quality, quality_reason FROM readings FINAL ORDER BY ts, metric").await?;
            Ok((rows.len() >= 3).then_some(rows))
        })
        .await?;
    let summary: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("pm25".into(), "12.5".into(), "good".into()),
            ("humidity".into(), "140".into(), "bad".into()),
            ("pm25".into(), "7".into(), "good".into()),
        ]
    );
    assert!(
        rows[1][3].contains("outside physical range"),
        "{:?}",
        rows[1]
    );
    Ok(())
}
