//! FIWARE Smart Data Models from real windows: two backdated hours of an air-quality station, a
//! wastewater station and a traffic counter go through the pipeline; the API's entities of
//! their hourly windows, and of the devices, validate against the models' published schemas
//! (vendored in tests/data/fiware, with the schemas they reference), in the models' units.

use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::QoS;
use serde_json::Value;

use crate::harness::{get_json, repo_root, Env, TOKEN};
use crate::pipeline::start_pipeline;

const HOUR: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fiware_entities_of_real_windows_validate_against_the_published_smart_data_models(
) -> Result<()> {
    let env = Env::new("fiware", "")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    for (id, kind) in [
        ("aq-fw", "air_quality"),
        ("ww-fw", "wastewater"),
        ("tc-fw", "traffic_counter"),
    ] {
        env.register(id, kind).await?;
    }
    env.wait_ingest_knows_registered().await?;
    let (mqtt, _poll) = env.mqtt_client("test-fiware");
    let start = (ioc_contract::time::now_ms() / HOUR - 4) * HOUR;
    for minute in 0..120i64 {
        let ts = start + minute * 60_000 + 15_000;
        for (device, body) in [
            (
                "aq-fw",
                format!(
                    r#"{{"ts":{ts},"values":{{"pm25":{},"pm10":50,"co":1200,"temperature":27.5,"humidity":65,"wind_dir":270,"wind_speed":2.5}}}}"#,
                    30 + minute % 5
                ),
            ),
            (
                "ww-fw",
                format!(
                    r#"{{"ts":{ts},"values":{{"ph":7.1,"cod":60,"bod5":25,"tss":40,"nh4":4,"flow":36,"temperature":29}}}}"#
                ),
            ),
            (
                "tc-fw",
                format!(
                    r#"{{"ts":{ts},"channel":"lane-1","values":{{"vehicle_count":12,"occupancy":12.5,"avg_speed":41}}}}"#
                ),
            ),
        ] {
            let topic = ioc_contract::telemetry_topic(device);
            mqtt.publish(topic, QoS::AtLeastOnce, false, body).await?;
        }
    }
    let range = format!("from={start}&to={}", start + 2 * HOUR);
    // The windows of one hour are stored metric by metric: wait for every entity to be whole.
    let fetch = |entity_type: &'static str, want: usize, attributes: &'static [&'static str]| {
        let url = env.api(&format!("/api/v1/fiware?type={entity_type}&{range}"));
        let env = &env;
        async move {
            env.eventually(
                &format!("{want} {entity_type} entities with {attributes:?}"),
                Duration::from_secs(120),
                || async {
                    let v = get_json(&env.http, &url, TOKEN).await?;
                    let whole = v.as_array().is_some_and(|es| {
                        es.len() >= want
                            && es
                                .iter()
                                .all(|e| attributes.iter().all(|a| e.get(*a).is_some()))
                    });
                    Ok(whole.then_some(v))
                },
            )
            .await
        }
    };
    let air = fetch(
        "AirQualityObserved",
        2,
        &[
            "pm25",
            "pm10",
            "co",
            "temperature",
            "relativeHumidity",
            "windDirection",
            "windSpeed",
        ],
    )
    .await?;
    let water = fetch(
        "WaterQualityObserved",
        2,
        &["pH", "cod", "bod", "tss", "NH4", "flow", "temperature"],
    )
    .await?;
    let traffic = fetch(
        "TrafficFlowObserved",
        2,
        &["intensity", "occupancy", "averageVehicleSpeed"],
    )
    .await?;
    let devices = fetch("Device", 3, &["controlledProperty"]).await?;
    // The second hour's VN_AQI (NowCast needs two of the latest three hours) comes after its
    // windows.
    let air_url = env.api(&format!("/api/v1/fiware?type=AirQualityObserved&{range}"));
    let air = env
        .eventually(
            "an hour with its VN_AQI",
            Duration::from_secs(60),
            || async {
                let v = get_json(&env.http, &air_url, TOKEN).await?;
                let rated = v.as_array().is_some_and(|es| {
                    es.iter()
                        .any(|e| e["airQualityIndex"].is_u64() && e["airQualityLevel"].is_string())
                });
                Ok(rated.then_some(v))
            },
        )
        .await
        .unwrap_or(air);

    // The models' units: fractions where the catalogue has %, wind from −180° to 180°.
    let first = &air[0];
    assert_eq!(first["relativeHumidity"], 0.65, "{first}");
    assert_eq!(first["windDirection"], -90.0, "{first}");
    assert_eq!(first["co"], 1200.0, "{first}");
    assert_eq!(first["refDevice"], "urn:ngsi-ld:Device:aq-fw", "{first}");
    assert!(
        air.as_array()
            .context("air")?
            .iter()
            .any(|e| e["airQualityIndex"].is_u64() && e["airQualityLevel"].is_string()),
        "an hour with its VN_AQI: {air}"
    );
    let lane = &traffic[0];
    assert_eq!(
        (&lane["laneId"], &lane["intensity"], &lane["occupancy"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(720.0),
            &serde_json::json!(0.125)
        ),
        "{lane}"
    );
    assert_eq!(water[0]["pH"], 7.1, "{}", water[0]);
    assert_eq!(water[0]["bod"], 25.0, "{}", water[0]);

    // Each entity against its model's published schema.
    let mut files = Vec::new();
    for (name, entities) in [
        ("air", &air),
        ("water", &water),
        ("traffic", &traffic),
        ("devices", &devices),
    ] {
        let file = env.dir.join(format!("fiware-{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(entities)?)?;
        files.push(file);
    }
    let python = std::path::Path::new("/var/tmp/ioc-tools/venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: scripts/services.sh installs it",
        python.display()
    );
    let out = std::process::Command::new(python)
        .arg(repo_root().join("tests/fiware/validate.py"))
        .args(&files)
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked = air.as_array().map_or(0, Vec::len)
        + water.as_array().map_or(0, Vec::len)
        + traffic.as_array().map_or(0, Vec::len)
        + devices.as_array().map_or(0, Vec::len);
    assert!(
        report.contains(&format!("{checked} entities checked, 0 problems")),
        "{report}"
    );

    // Open data: the stations only, no traffic.
    let open = |q: &str| {
        env.http
            .get(env.api(&format!("/open/v1/fiware?{q}")))
            .send()
    };
    assert_eq!(open("type=TrafficFlowObserved").await?.status(), 400);
    let r = open("type=Device").await?;
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
    let open_devices: Value = r.json().await?;
    let ids: Vec<&str> = open_devices
        .as_array()
        .context("devices")?
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["urn:ngsi-ld:Device:aq-fw", "urn:ngsi-ld:Device:ww-fw"]
    );
    let open_air: Value = open(&format!("type=AirQualityObserved&{range}"))
        .await?
        .json()
        .await?;
    assert_eq!(open_air, air, "the same entities, open");
    Ok(())
}
