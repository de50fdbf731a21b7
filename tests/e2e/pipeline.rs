//! The whole pipeline: simulator → Mosquitto → ingest → Kafka → stream → ClickHouse and Kafka
//! → API (HTTP history and websocket).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{aggregates_vs_recomputation, Env, SimReport, TOKEN};

/// Compares stored aggregates with the recomputation: same windows, same counts, values equal
/// to within floating-point noise.
fn assert_same_aggregates(stored: &[String], recomputed: &[String]) {
    assert_eq!(stored.len(), recomputed.len(), "number of windows differs");
    for (s, r) in stored.iter().zip(recomputed) {
        let (s, r): (Vec<&str>, Vec<&str>) = (s.split(' ').collect(), r.split(' ').collect());
        assert_eq!(
            s[..5],
            r[..5],
            "window key or count differs: {s:?} vs {r:?}"
        );
        for i in 5..8 {
            let (a, b): (f64, f64) = (s[i].parse().unwrap(), r[i].parse().unwrap());
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "value {i} differs: {s:?} vs {r:?}"
            );
        }
    }
}

pub(crate) async fn start_pipeline(
    env: &Env,
) -> Result<(
    crate::harness::Proc,
    crate::harness::Proc,
    crate::harness::Proc,
)> {
    let api = env.ioc("api", &["api"])?;
    env.wait_http(&env.api("/healthz"), Duration::from_secs(60))
        .await?;
    let stream = env.ioc("stream", &["stream"])?;
    let ingest = env.ioc("ingest", &["ingest"])?;
    env.wait_http(
        &format!("http://127.0.0.1:{}/healthz", env.ingest_metrics_port),
        Duration::from_secs(60),
    )
    .await?;
    env.wait_http(
        &format!("http://127.0.0.1:{}/healthz", env.stream_metrics_port),
        Duration::from_secs(60),
    )
    .await?;
    // A port taken by someone else answers /healthz too: make sure the answers were ours.
    let (mut api, mut stream, mut ingest) = (api, stream, ingest);
    for (name, p) in [
        ("api", &mut api),
        ("stream", &mut stream),
        ("ingest", &mut ingest),
    ] {
        anyhow::ensure!(
            p.is_running(),
            "{name} exited at start; see {}",
            env.dir.join(format!("{name}.log")).display()
        );
    }
    Ok((api, stream, ingest))
}

/// Registers the simulated fleet through the API, as an installer would.
/// POSTs a registration; its status and JSON body.
async fn post_device(
    env: &Env,
    body: serde_json::Value,
) -> Result<(reqwest::StatusCode, serde_json::Value)> {
    let r = env
        .http
        .post(env.api("/api/v1/devices"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await?;
    Ok((r.status(), r.json().await?))
}

/// The fields a 422 answer names, in order.
fn problem_fields(body: &serde_json::Value) -> Vec<&str> {
    body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect()
}

pub(crate) fn register_sim_fleet(env: &Env) -> Result<()> {
    env.ioc_output(&[
        "sim",
        "--count",
        "0",
        "--register-with",
        &env.api(""),
        "--admin-token",
        TOKEN,
    ])?;
    Ok(())
}

fn sim_report(stdout: &str) -> SimReport {
    serde_json::from_str(stdout.lines().last().expect("sim prints its report"))
        .expect("sim report is JSON")
}

async fn stored_counts(env: &Env) -> Result<(u64, u64)> {
    let rows = env
        .clickhouse("SELECT count(), uniqExact(device_id, channel, metric, ts) FROM readings FINAL")
        .await?;
    Ok((rows[0][0].parse()?, rows[0][1].parse()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_flow_exactly_once_with_aggregates_alerts_and_live_feed() -> Result<()> {
    let env = Env::new(
        "flow",
        "[sim]\nair_quality = 3\nwastewater = 1\ntraffic_counters = 1\n",
    )?;
    let (mut api, mut stream, mut ingest) = start_pipeline(&env).await?;

    // A websocket client subscribed before anything is published.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/v1/ws?token={TOKEN}",
        env.api_port
    ))
    .await?;
    for stream in ["readings", "alerts", "aggregates"] {
        ws.send(Message::Text(
            format!(r#"{{"op":"subscribe","stream":"{stream}"}}"#).into(),
        ))
        .await?;
    }

    register_sim_fleet(&env)?;
    env.register("aq-alert", "air_quality").await?;
    env.wait_ingest_knows_registered().await?;

    // A smoke episode on aq-alert, in event time five minutes ago: two minutes above the
    // limit (50), then two below. One alert, then one clear.
    let base = ioc_contract::window_start(ioc_contract::time::now_ms()) - 5 * 60_000;
    let (mqtt, _poll) = env.mqtt_client("test-alert-device");
    let episode = [80.0, 95.0, 12.0, 10.0];
    for (minute, pm25) in episode.iter().enumerate() {
        for second in [5, 20, 35, 50] {
            let ts = base + minute as i64 * 60_000 + second * 1000;
            let body = format!(r#"{{"ts":{ts},"values":{{"pm25":{pm25}}}}}"#);
            mqtt.publish(
                "ioc/v1/devices/aq-alert/telemetry",
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await?;
        }
    }
    let alert_readings = episode.len() as u64 * 4;

    let out = env.ioc_output(&["sim", "--count", "400", "--rate", "400"])?;
    let report = sim_report(&out);
    assert_eq!((report.messages, report.acknowledged), (400, 400));
    let expected = report.readings + alert_readings;

    let (count, distinct) = env
        .eventually(
            "every reading in ClickHouse",
            Duration::from_secs(90),
            || async {
                let (count, distinct) = stored_counts(&env).await?;
                Ok((count >= expected).then_some((count, distinct)))
            },
        )
        .await?;
    assert_eq!(count, expected, "every reading key exactly once");
    assert_eq!(distinct, expected);

    // Once every device has been idle for the idle timeout, all windows are closed.
    let (stored, recomputed) = env
        .eventually(
            "aggregates to equal a recomputation from the raw rows",
            Duration::from_secs(60),
            || async {
                let (s, r) = aggregates_vs_recomputation(&env).await?;
                Ok((s.len() == r.len() && !s.is_empty()).then_some((s, r)))
            },
        )
        .await?;
    assert_same_aggregates(&stored, &recomputed);

    let alerts = env
        .get_json(&format!(
            "/api/v1/alerts?device_id=aq-alert&rule=pm25_1min_mean_above_limit&from={}",
            base - 60_000
        ))
        .await?;
    let alerts = alerts["alerts"].as_array().unwrap().clone();
    assert_eq!(
        alerts.len(),
        1,
        "one alert for the episode, not one per window: {alerts:?}"
    );
    // The condition first held in the window at `base`; with no `for`, the alert fired at
    // that window's end, and resolved at the end of the first window back within the limit.
    assert_eq!(alerts[0]["state"], "resolved");
    assert_eq!(alerts[0]["resolve_reason"], "cleared");
    assert_eq!(alerts[0]["started_at"], ioc_contract::time::format_ms(base));
    assert_eq!(
        alerts[0]["fired_at"],
        ioc_contract::time::format_ms(base + 60_000)
    );
    assert_eq!(
        alerts[0]["resolved_at"],
        ioc_contract::time::format_ms(base + 180_000)
    );
    assert_eq!(alerts[0]["peak"], 95.0);
    assert_eq!(alerts[0]["category"], "air");
    assert_eq!(alerts[0]["rule"], "pm25_1min_mean_above_limit");

    // History over HTTP, times as RFC 3339 UTC with milliseconds.
    let readings = env
        .get_json(&format!(
            "/api/v1/readings?device_id=aq-alert&from={}&metric=pm25",
            base
        ))
        .await?;
    let readings = readings["readings"].as_array().unwrap();
    assert_eq!(readings.len() as u64, alert_readings);
    assert_eq!(
        readings[0]["ts"],
        ioc_contract::time::format_ms(base + 5_000)
    );
    assert_eq!(readings[0]["unit"], "µg/m³");
    let aggregates = env
        .get_json(&format!(
            "/api/v1/aggregates?device_id=aq-alert&from={}",
            base
        ))
        .await?;
    let first = aggregates["aggregates"][0].clone();
    assert_eq!(
        (first["count"].as_u64(), first["mean"].as_f64()),
        (Some(4), Some(80.0))
    );

    // A late reading (its window closed minutes ago, as with station backfill) is stored and its
    // window re-emitted with a higher version; a redelivered copy of it changes nothing.
    let late = format!(r#"{{"ts":{},"values":{{"pm25":20}}}}"#, base + 10_000);
    for _ in 0..2 {
        mqtt.publish(
            "ioc/v1/devices/aq-alert/telemetry",
            QoS::AtLeastOnce,
            false,
            late.clone(),
        )
        .await?;
    }
    let reemitted = env
        .eventually(
            "the late reading's window to be re-emitted",
            Duration::from_secs(60),
            || async {
                let a = env
                    .get_json(&format!(
                        "/api/v1/aggregates?device_id=aq-alert&from={base}&to={}",
                        base + 60_000
                    ))
                    .await?;
                let a = a["aggregates"][0].clone();
                Ok((a["count"].as_u64() == Some(5)).then_some(a))
            },
        )
        .await?;
    assert_eq!(reemitted["mean"].as_f64(), Some((80.0 * 4.0 + 20.0) / 5.0));
    assert!(reemitted["version"].as_u64() > first["version"].as_u64());
    let (stored, recomputed) = aggregates_vs_recomputation(&env).await?;
    assert_same_aggregates(&stored, &recomputed);

    // The websocket saw live readings, and the alert raised and cleared.
    let mut seen_streams = HashSet::new();
    let mut alert_statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(seen_streams.contains("readings") && alert_statuses.contains(&"resolved".to_string())) {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await?
            .expect("socket open")?;
        if let Message::Text(text) = message {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            // Data frames, not the protocol's (`subscribed`, `position`, ... have an `op`).
            if let Some(stream) = v["stream"].as_str().filter(|_| v.get("op").is_none()) {
                seen_streams.insert(stream.to_string());
                if stream == "alerts" && v["data"]["device_id"] == "aq-alert" {
                    alert_statuses.push(v["data"]["state"].as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    assert_eq!(alert_statuses, vec!["firing", "resolved"]);

    // API contract details. The dashboard and health are open; the page allows scripts of its
    // own origin only.
    let page = env.http.get(env.api("/")).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(page.text().await?.contains("/assets/app.js"));
    let app = env.http.get(env.api("/assets/app.js")).send().await?;
    assert!(
        app.text().await?.contains("/api/v1/ws?token="),
        "the page reads the websocket"
    );
    let health: serde_json::Value = env
        .http
        .get(env.api("/healthz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "ok");
    let unauthorized = env.http.get(env.api("/api/v1/devices")).send().await?;
    assert_eq!(unauthorized.status(), 401);
    let body: serde_json::Value = unauthorized.json().await?;
    assert_eq!(body["error"], "unauthorized");
    // A resolution is refused where the route has none, rather than ignored.
    let ignored = env
        .http
        .get(env.api("/api/v1/readings?resolution=1h"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(ignored.status(), 400);
    let body: serde_json::Value = ignored.json().await?;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unknown parameter \"resolution\": /api/v1/readings takes device_id"),
        "the parameters it does take: {body}"
    );
    let (status, body) = post_device(
        &env,
        serde_json::json!({"device_id": "bad id", "kind": "toaster", "lat": 100}),
    )
    .await?;
    assert_eq!(status, 422);
    let fields: HashSet<&str> = problem_fields(&body).into_iter().collect();
    assert_eq!(
        fields,
        HashSet::from([
            "device_id",
            "kind",
            "name",
            "lat",
            "lon",
            "expected_interval_s"
        ])
    );
    // External ids are checked and unique: a station code names one device.
    let (status, body) = post_device(
        &env,
        serde_json::json!({"device_id": "x-1", "kind": "wastewater", "name": "x", "lat": 12.7,
            "lon": 108.0, "expected_interval_s": 300, "external_ids": {"serial": "1", "imei": "a/b"},
            "decoder": "csv", "vendor_profile": "acme-9000"}),
    )
    .await?;
    assert_eq!(status, 422);
    let fields = problem_fields(&body);
    assert_eq!(
        fields,
        vec!["external_ids", "external_ids", "decoder", "vendor_profile"],
        "{body}"
    );
    let devices = env.get_json("/api/v1/devices").await?;
    let station = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["decoder"] == "tt10-station")
        .expect("the simulated station")
        .clone();
    let code = station["external_ids"]["station_code"].as_str().unwrap();
    let (status, body) = post_device(
        &env,
        serde_json::json!({"device_id": "ww-copy", "kind": "wastewater", "name": "copy",
            "lat": 12.7, "lon": 108.0, "expected_interval_s": 300,
            "external_ids": {"station_code": code}}),
    )
    .await?;
    assert_eq!(status, 409);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(station["device_id"].as_str().unwrap()),
        "{body}"
    );
    // 3 + 1 + 1 of the old kinds, aq-alert, and the simulator's SenML, vendor-flat and camera
    // devices (defaults 2, 3, 2).
    assert_eq!(devices["devices"].as_array().unwrap().len(), 13);
    let missing = env
        .http
        .get(env.api("/api/v1/devices/nope"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(missing.status(), 404);

    // The live page in Debian's headless Chromium: it lists every device and its values update
    // without a reload while a device keeps publishing.
    let feeder = {
        let mqtt = mqtt.clone();
        tokio::spawn(async move {
            // Past the limit (50) from the seventh second, for up to three minutes: its
            // windows close and fire an alert for the inbox below.
            for i in 0..600 {
                let body = format!(
                    r#"{{"ts":{},"values":{{"pm25":{}}}}}"#,
                    ioc_contract::time::now_ms(),
                    // Varied, so that the stuck-sensor rule has nothing to say.
                    30 + i.min(100) + i % 3
                );
                let _ = mqtt
                    .publish(
                        "ioc/v1/devices/aq-alert/telemetry",
                        QoS::AtLeastOnce,
                        false,
                        body,
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let seen = crate::harness::dashboard_page(
        &format!("{}?token={TOKEN}", env.api("/")),
        &env.dir.join("operator.png"),
    )
    .await?;
    assert_eq!(seen["updated"], true, "live data without a reload: {seen}");
    let listed: HashSet<&str> = seen["markers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    assert!(
        listed.contains("aq-alert") && listed.contains("aq-001") && listed.len() == 13,
        "{seen}"
    );

    // The feeder's readings above the limit fire an alert: one operator acknowledges it from
    // the inbox with the keyboard, and a second operator's open page shows it acknowledged.
    env.eventually(
        "a firing alert of aq-alert",
        Duration::from_secs(120),
        || async {
            let v = env
                .get_json("/api/v1/alerts?device_id=aq-alert&state=firing&from=0")
                .await?;
            Ok(v["alerts"][0]["alert_id"].as_str().map(|_| ()))
        },
    )
    .await?;
    let url = format!("{}?token={TOKEN}", env.api("/"));
    // The simulated fleet's counter may be jammed at this hour: its alert is passed over.
    let acked =
        crate::harness::browser_check("acknowledge.js", &[&url, &"aq-alert", &"đã gọi nhà máy"])
            .await?;
    // Whichever of the device's firing alerts the keyboard reached first.
    let firing = acked["alert"].as_str().context("the alert acknowledged")?;
    assert!(firing.contains(":aq-alert:"), "{acked}");
    assert_eq!(acked["before"], "firing", "{acked}");
    assert!(
        acked["seen"]
            .as_str()
            .unwrap_or("")
            .contains("đã gọi nhà máy"),
        "the second session shows who acknowledged and why: {acked}"
    );
    assert_eq!(acked["button_left"], false, "{acked}");
    let stored = env.get_json(&format!("/api/v1/alerts/{firing}")).await?;
    assert_eq!(stored["alert"]["state"], "acknowledged", "{stored}");
    feeder.abort();

    // SIGTERM: every stage drains and exits cleanly.
    for (name, process) in [
        ("ingest", &mut ingest),
        ("stream", &mut stream),
        ("api", &mut api),
    ] {
        let status = process.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} exited cleanly on SIGTERM: {status:?}"
        );
    }
    let log = std::fs::read_to_string(env.dir.join("ingest.log"))?;
    assert!(
        log.contains("left_unacked=0"),
        "ingest drained before exiting"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_ingest_and_stream_loses_nothing_and_doubles_nothing() -> Result<()> {
    let env = Env::new(
        "chaos",
        "[sim]\nair_quality = 4\nwastewater = 2\ntraffic_counters = 2\n",
    )?;
    let (_api, mut stream, mut ingest) = start_pipeline(&env).await?;
    register_sim_fleet(&env)?;
    env.wait_ingest_knows_registered().await?;

    let sim = env.ioc("sim", &["sim", "--count", "3000", "--rate", "150"])?;
    let sim_stdout = env.dir.join("sim.log");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(std::process::id() as u64);
    let mut sim = sim;
    let mut kills = (0, 0);
    while sim.is_running() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        if rng.random_bool(0.5) {
            ingest.kill();
            ingest = env.ioc("ingest", &["ingest"])?;
            kills.0 += 1;
        } else {
            stream.kill();
            stream = env.ioc("stream", &["stream"])?;
            kills.1 += 1;
        }
    }
    assert!(
        sim.child.wait()?.success(),
        "simulator failed; see {}",
        sim_stdout.display()
    );
    let log = std::fs::read_to_string(&sim_stdout)?;
    let report: SimReport = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .last()
        .expect("sim report line");
    assert_eq!((report.messages, report.acknowledged), (3000, 3000));
    eprintln!("killed ingest {} and stream {} times", kills.0, kills.1);
    assert!(
        kills.0 + kills.1 >= 4,
        "the run was long enough to kill several times"
    );

    let (count, distinct) = env
        .eventually(
            "every reading in ClickHouse after the kills",
            Duration::from_secs(120),
            || async {
                let (count, distinct) = stored_counts(&env).await?;
                Ok((count >= report.readings).then_some((count, distinct)))
            },
        )
        .await?;
    assert_eq!(count, report.readings, "nothing lost or doubled");
    assert_eq!(distinct, report.readings);

    // Wait for the idle timeout to close every window; on a timeout the assertion below
    // shows the difference.
    let _ = env
        .eventually(
            "aggregates to equal a recomputation after the kills",
            Duration::from_secs(90),
            || async {
                let (s, r) = aggregates_vs_recomputation(&env).await?;
                Ok((!s.is_empty() && s == r).then_some(()))
            },
        )
        .await;
    let (stored, recomputed) = aggregates_vs_recomputation(&env).await?;
    assert_same_aggregates(&stored, &recomputed);
    // The quality counts of every minute counted: each reading once, whatever the kills. (The
    // stream checkpoints a device's `closed_until` last in a batch: wait for it.)
    let _ = env
        .eventually(
            "quality counts to equal a recount after the kills",
            Duration::from_secs(30),
            || async {
                let (s, r) = crate::harness::quality_vs_recount(&env).await?;
                Ok((!s.is_empty() && s == r).then_some(()))
            },
        )
        .await;
    let (stored, recounted) = crate::harness::quality_vs_recount(&env).await?;
    assert!(!stored.is_empty(), "quality was counted");
    let differs: Vec<_> = stored
        .iter()
        .zip(&recounted)
        .filter(|(s, r)| s != r)
        .take(5)
        .collect();
    assert!(
        stored.len() == recounted.len() && differs.is_empty(),
        "{} minutes counted, {} recounted; first differences (stored, recounted): {differs:?}",
        stored.len(),
        recounted.len()
    );
    assert!(ingest.is_running() && stream.is_running());
    Ok(())
}

/// A `stream_offsets` table made before the rate limiter's state was kept in it gains the
/// column when the stream starts (ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`), keeps its
/// rows, and then returns the state written beside each position.
#[tokio::test]
async fn a_stream_offsets_table_from_an_older_release_gains_the_limiter_column() -> Result<()> {
    use ioc_history::{ClickHouseHistory, History, OffsetRow, Position};
    let env = Env::new("migrate", "")?;
    let http = reqwest::Client::new();
    let db = &env.id;
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!(
            "CREATE TABLE {db}.stream_offsets (group_id String, topic String, partition Int32, \
             next_offset Int64, version UInt64) ENGINE = ReplacingMergeTree(version) \
             ORDER BY (group_id, topic, partition)"
        ),
        format!("INSERT INTO {db}.stream_offsets VALUES ('g', 't', 0, 42, 1)"),
    ] {
        let r = http
            .post(crate::harness::CLICKHOUSE)
            .body(sql)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{}", r.text().await?);
    }
    let config = ioc_config::load(Some(&env.config_path), Vec::<(String, String)>::new())?;
    let history = History::ClickHouse(ClickHouseHistory::new(&config.clickhouse));
    history.ensure_schema().await?;
    history.ensure_schema().await?; // a second start finds the column
    let position = |next_offset, limiter: &str| Position {
        partition: 0,
        next_offset,
        limiter: limiter.to_string(),
    };
    assert_eq!(history.offsets("g", "t").await?, vec![position(42, "")]);
    history
        .insert_offsets(vec![OffsetRow {
            group_id: "g".into(),
            topic: "t".into(),
            partition: 0,
            next_offset: 43,
            version: 2,
            limiter: r#"{"clock_ms":1,"tats":[]}"#.into(),
        }])
        .await?;
    assert_eq!(
        history.offsets("g", "t").await?,
        vec![position(43, r#"{"clock_ms":1,"tats":[]}"#)]
    );
    Ok(())
}

/// A day of backdated readings rolls up to 5 minutes, hours and the local day, equal to what the
/// raw rows give; a late reading revises its minute, five minutes, hour and day. Then its
/// VN_AQI, revised by a late half-hour (`aqi.rs`), and a wastewater station's QCVN 40
/// exceedances, one withdrawn by a late hour (`exceedances.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backdated_day_rolls_up_and_a_late_reading_revises_every_resolution() -> Result<()> {
    let env = Env::new("rollups", "")?;
    // A backfill as fast as the broker takes it: the flood guard is not under test here.
    env.insert_config("ingest", "device_rate_limit = 0.0")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    env.wait_ingest_subscribed().await?;
    env.register("aq-day", "air_quality").await?;
    env.register("ww-day", "wastewater").await?;
    env.register("aq-05", "air_quality").await?;
    env.register("aq-q", "air_quality").await?;
    env.register("aq-fc", "air_quality").await?;
    env.wait_ingest_knows_registered().await?;
    let (mqtt, _poll) = env.mqtt_client("test-rollups");
    let api = crate::rollups::Api {
        http: &env.http,
        base: env.api(""),
        token: TOKEN.into(),
        logs: &env.dir,
    };
    let day = crate::rollups::a_backdated_day_rolls_up_and_a_late_reading_revises_it(
        &api, &mqtt, "aq-day",
    )
    .await?;
    crate::aqi::the_backdated_day_gets_its_aqi_and_a_late_half_hour_revises_it(
        &api, &mqtt, "aq-day", day,
    )
    .await?;
    crate::exceedances::a_wastewater_day_exceeds_qcvn_40_and_a_late_hour_withdraws_it(
        &api, &mqtt, "ww-day",
    )
    .await?;
    crate::exceedances::an_air_day_exceeds_qcvn_05_hourly_and_daily(&api, &mqtt, "aq-05").await?;
    crate::quality::a_backdated_hour_scores_what_its_faults_make(&api, &mqtt, "aq-q").await?;
    crate::forecast::a_station_gets_the_forecast_ioc_forecast_makes_of_its_hours(
        &api, &mqtt, "aq-fc",
    )
    .await?;

    // The environment officer's view of the same stations in a browser: the AQI with its band's
    // name, the exceedances, the chart of hourly means and its CSV.
    let view = |station: &'static str| {
        let url = format!("{}?token={TOKEN}", env.api("/"));
        let shot = env.dir.join(format!("environment-{station}.png"));
        async move {
            let seen =
                crate::harness::browser_check("environment.js", &[&url, &station, &shot]).await?;
            if let Some(dir) = std::env::var_os("IOC_ARTIFACTS") {
                std::fs::create_dir_all(&dir)?;
                std::fs::copy(
                    &shot,
                    std::path::Path::new(&dir).join(shot.file_name().unwrap()),
                )?;
            }
            Ok::<serde_json::Value, anyhow::Error>(seen)
        }
    };
    // A station with a forecast: its PM2.5 chart goes on into the six forecast hours, with the
    // band between their low and high.
    let ahead = view("aq-fc").await?;
    let legend = ahead["legend"].to_string();
    assert!(
        ahead["forecast"] == 6
            && legend.contains("Dự báo")
            && legend.contains("Khoảng dự báo 80 %"),
        "{ahead}"
    );
    let air = view("aq-day").await?;
    assert!(
        air["aqi_1h"]
            .as_str()
            .is_some_and(|a| a.parse::<u32>().is_ok()),
        "{air}"
    );
    let band = air["band_1h"].as_str().unwrap_or("");
    assert!(
        ["Tốt", "Trung bình", "Kém", "Xấu", "Rất xấu", "Nguy hại"].contains(&band),
        "the band's name as Decision 1459 gives it: {air}"
    );
    // With the band's health advice, for the public and for sensitive groups.
    let bands = env.get_json("/api/v1/aqi/bands").await?;
    let shown = bands["bands"]
        .as_array()
        .context("bands")?
        .iter()
        .find(|b| b["vi"] == band)
        .context("the shown band among the bands")?;
    for who in ["general", "sensitive"] {
        let text = shown["advice"][who]["vi"].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "{shown}");
        assert_eq!(air[format!("advice_{who}_1h")], text, "{air}");
    }
    assert_eq!(air["metric"], "pm25", "{air}");
    assert!(
        air["points"].as_u64().is_some_and(|n| n >= 20),
        "a day of hours: {air}"
    );
    assert_eq!(air["canvas"].as_u64().map(|n| n >= 1), Some(true), "{air}");
    assert!(
        air["csv_header"]
            .as_str()
            .is_some_and(|h| h.starts_with("device_id,channel,metric,")),
        "{air}"
    );
    assert_eq!(
        air["csv_rows"], air["points"],
        "the CSV is what the chart shows: {air}"
    );
    assert_eq!(air["heading_en"], "QCVN exceedances", "{air}");
    let no2 = view("aq-05").await?;
    let rows = no2["exceedances"].as_array().context("exceedances")?;
    assert!(
        rows.iter()
            .any(|r| r[0] == "no2" && r[3].as_str().is_some_and(|l| l.contains("200"))),
        "the 1-hour NO2 exceedance with its limit: {no2}"
    );
    assert_eq!(no2["metric"], "no2", "{no2}");
    assert_eq!(
        no2["limit"], "200",
        "QCVN 05's 1-hour NO2 limit drawn on the chart: {no2}"
    );
    let limits = env.get_json("/api/v1/devices/ww-day/limits").await?;
    let cod = limits["limits"]
        .as_array()
        .context("limits")?
        .iter()
        .find(|l| l["metric"] == "cod")
        .context("a COD limit")?;
    assert_eq!(limits["regulation"], "QCVN 40:2011/BTNMT", "{limits}");
    assert_eq!(cod["unit"], "mg/L", "{limits}");
    assert!(cod["limit"]["max"].as_f64().is_some(), "{limits}");
    for seen in [&air, &no2] {
        let serious = crate::harness::serious_violations(seen)?;
        assert!(serious.is_empty(), "axe-core: {serious:?}");
    }

    // An environment officer's inbox: ww-day's QCVN 40 alert (its hour after the day stands
    // above column A's COD limit), its transitions, resolved by hand with a comment (refused on
    // the page without one). The page reads the history once: the alert is there first.
    env.eventually(
        "ww-day's firing QCVN 40 alert in the history",
        Duration::from_secs(60),
        || async {
            // From 30 days back, as the page reads.
            let from = ioc_contract::time::now_ms() - 30 * 86_400_000;
            let got = env
                .get_json(&format!(
                    "/api/v1/alerts?device_id=ww-day&rule=qcvn40_exceedance&state=firing&from={from}"
                ))
                .await?;
            Ok(got["alerts"].as_array().filter(|a| !a.is_empty()).cloned())
        },
    )
    .await?;
    let officer =
        crate::access::issue(&env.http, &env.api(""), TOKEN, "environment", "officer-hoa").await?;
    let comment = "Đã kiểm tra: nhà máy tạm dừng xả thải";
    let url = format!("{}?token={officer}", env.api("/"));
    let inbox = crate::harness::browser_check("inbox.js", &[&url, &"ww-day", &comment]).await?;
    let id = inbox["alert"].as_str().context("alert")?;
    assert_eq!(inbox["before"][0], "fired", "{inbox}");
    assert!(
        inbox["refused"]
            .as_str()
            .is_some_and(|m| m.contains("ghi chú")),
        "no resolve without a comment: {inbox}"
    );
    assert!(
        [200, 202].contains(&inbox["status"].as_u64().unwrap_or(0)),
        "{inbox}"
    );
    let resolved = inbox["after"]
        .as_array()
        .context("after")?
        .iter()
        .find(|t| t["kind"] == "resolved")
        .context("a resolved transition")?;
    let text = resolved["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("officer-hoa") && text.contains(comment),
        "who and why: {inbox}"
    );
    assert_eq!(inbox["buttons_left"], 0, "{inbox}");
    assert!(
        inbox["resolved_filter"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s == "resolved")),
        "{inbox}"
    );
    let stored = env.get_json(&format!("/api/v1/alerts/{id}")).await?;
    assert_eq!(stored["alert"]["state"], "resolved", "{stored}");
    assert_eq!(stored["alert"]["resolve_reason"], "manual", "{stored}");
    assert_eq!(
        stored["alert"]["resolved_by"]["by"], "officer-hoa",
        "{stored}"
    );
    Ok(())
}
