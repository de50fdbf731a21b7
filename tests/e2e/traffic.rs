//! Traffic end to end on `ioc up`: a simulated counter's weekday morning (night, rush hour and
//! an incident) through MQTT, ingest, the stream's windows and its traffic operator: the API's
//! 5-minute and hourly flow, speed, occupancy and levels, and the built-in `traffic_jammed`
//! alert once per episode; a camera's events counted per type and hour (a resend once), on the
//! websocket too, and the repeat counts per pseudonym for `enforcement` alone, audited.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ioc_contract::time::format_ms;
use ioc_contract::Resolution;
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::harness::eventually;
use crate::rollups::Api;

const ICT: i64 = 7 * 3_600_000;
const MIN: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// An MQTT client of the simulator's account, its event loop polled.
fn client(mqtt: &ioc_config::MqttConfig, id: &str) -> rumqttc::AsyncClient {
    let mut options = rumqttc::MqttOptions::new(id, mqtt.host.clone(), mqtt.port);
    options.set_credentials(mqtt.username.clone(), mqtt.password.clone());
    options.set_inflight(100);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 1000);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    client
}

/// The windows' levels in time order: the alerts `traffic_jammed` should raise over them, by
/// the rule's own terms (fires at `jammed`; clears at `free` or `moderate` once 10 minutes have
/// passed since the last jammed window): each episode's firing window end.
fn episodes(windows: &[Value]) -> Vec<String> {
    let mut fired = Vec::new();
    let mut last_held: Option<i64> = None;
    for w in windows {
        let end = ioc_contract::time::parse_param_ms(w["window_end"].as_str().unwrap_or_default())
            .unwrap_or(0);
        match (w["level"].as_str(), last_held) {
            (Some("jammed"), None) => {
                fired.push(w["window_end"].as_str().unwrap_or_default().to_string());
                last_held = Some(end);
            }
            (Some("jammed"), Some(_)) => last_held = Some(end),
            (Some("free" | "moderate"), Some(held)) if end - held >= 10 * MIN => last_held = None,
            _ => {}
        }
    }
    fired
}

pub(crate) async fn a_morning_of_traffic_shows_its_rush_hour_and_incidents(
    api: &Api<'_>,
    mqtt: &ioc_config::MqttConfig,
) -> Result<()> {
    let config = ioc_config::SimConfig {
        air_quality: 0,
        wastewater: 0,
        traffic_counters: 3,
        senml_air: 0,
        flat_gateways: 0,
        flat_sensors_per_gateway: 0,
        cameras: 1,
        rate: 1.0,
        seed: 42,
        id_prefix: "tr-".into(),
        username: mqtt.username.clone(),
        password: mqtt.password.clone(),
    };
    let fleet = sensor_sim::Fleet::new(&config);
    sensor_sim::register_fleet(&fleet, &api.base, &api.token).await?;
    // A weekday morning, 05:00 to 10:00 local, on which the busiest counter (whose rush hour
    // is congested) has an incident.
    let today = Resolution::Day.start(ioc_contract::time::now_ms(), ICT);
    let busiest = fleet
        .devices
        .iter()
        .filter(|d| d.kind == sensor_sim::Kind::TrafficCounter)
        .max_by(|a, b| a.level().total_cmp(&b.level()))
        .context("a counter")?;
    ensure!(busiest.level() > 1.0, "a busy road: {}", busiest.level());
    let counters = [busiest];
    let (device, from) = (1..=60)
        .map(|back| today - back * DAY_MS)
        .filter(|day| ((day + ICT).div_euclid(DAY_MS) + 3).rem_euclid(7) < 5)
        .flat_map(|day| counters.iter().map(move |c| (*c, day + 5 * 3_600_000)))
        .find(|(c, from)| (1..=300).any(|m| fleet.incident_at(&c.device_id, from + m * MIN)))
        .context("an incident on a weekday morning in the last 60 days")?;
    let id = device.device_id.as_str();
    let shown = api.get(&format!("/api/v1/devices/{id}")).await?;
    ensure!(
        shown["road_segment"].is_string() && shown["free_flow_speed_kmh"].as_f64() > Some(30.0),
        "the counter's segment and free-flow speed are registered: {shown}"
    );
    let to = from + 300 * MIN;
    let publisher = client(mqtt, "traffic-e2e");
    for m in fleet
        .counter_minutes(id, from, 300)
        .context("a counter's minutes")?
    {
        publisher
            .publish(m.topic, QoS::AtLeastOnce, false, m.payload)
            .await?;
    }
    let path = |resolution: &str| {
        format!(
            "/api/v1/traffic?device_id={id}&from={from}&to={to}&resolution={resolution}&limit=1000"
        )
    };
    let windows = eventually(
        "the morning's 5-minute traffic",
        Duration::from_secs(120),
        api.logs,
        || async {
            let body = api.get(&path("5m")).await?;
            let windows = body["traffic"].as_array().cloned().unwrap_or_default();
            ensure!(
                windows.len() == 60,
                "{} of 60 windows so far",
                windows.len()
            );
            Ok(Some(windows))
        },
    )
    .await?;
    // Each window judged, with the registry's segment and free-flow speed.
    for w in &windows {
        ensure!(
            w["record"] == "flow"
                && w["road_segment"] == shown["road_segment"]
                && w["free_flow_speed_kmh"] == shown["free_flow_speed_kmh"]
                && w["lanes"].as_u64() >= Some(2)
                && w["flow_vph"].is_number()
                && w["speed_kmh"].is_number()
                && w["level"].is_string(),
            "a judged window: {w}"
        );
    }
    let start_of = |w: &Value| {
        ioc_contract::time::parse_param_ms(w["window_start"].as_str().unwrap_or_default())
            .unwrap_or(0)
    };
    // A window's minutes are stamped at their ends: minute k of the window ends at start + k.
    let incident_minutes = |w: &Value| {
        (1..=5)
            .filter(|k| fleet.incident_at(id, start_of(w) + k * MIN))
            .count()
    };
    let local_hour = |w: &Value| ((start_of(w) + ICT).rem_euclid(DAY_MS)) as f64 / 3_600_000.0;
    let mean = |ws: &[&Value], field: &str| {
        ws.iter().filter_map(|w| w[field].as_f64()).sum::<f64>() / ws.len().max(1) as f64
    };
    let quiet: Vec<&Value> = windows
        .iter()
        .filter(|w| local_hour(w) < 5.4 && incident_minutes(w) == 0)
        .collect();
    let rush: Vec<&Value> = windows
        .iter()
        .filter(|w| (7.0..8.0).contains(&local_hour(w)) && incident_minutes(w) == 0)
        .collect();
    let jams: Vec<&Value> = windows
        .iter()
        .filter(|w| incident_minutes(w) == 5)
        .collect();
    ensure!(!quiet.is_empty() && !rush.is_empty() && !jams.is_empty());
    for w in &quiet {
        ensure!(w["level"] == "free", "before dawn the road is free: {w}");
    }
    for w in &jams {
        ensure!(
            w["level"] == "jammed",
            "an incident's 5 minutes are jammed: {w}"
        );
    }
    ensure!(
        mean(&rush, "flow_vph") > 3.0 * mean(&quiet, "flow_vph")
            && mean(&rush, "speed_kmh") < mean(&quiet, "speed_kmh") - 5.0
            && mean(&rush, "occupancy_pct") > mean(&quiet, "occupancy_pct") + 10.0,
        "the rush hour carries more vehicles, slower: {rush:?} against {quiet:?}"
    );
    ensure!(
        rush.iter().all(|w| w["level"] != "free"),
        "the rush hour is congested: {rush:?}"
    );
    // The hours are the same minutes: their vehicles are their twelve windows'.
    let hours = api.get(&path("1h")).await?;
    let hours = hours["traffic"].as_array().context("hours")?;
    ensure!(hours.len() == 5, "{hours:?}");
    for (h, hour) in hours.iter().enumerate() {
        let vehicles: u64 = windows[h * 12..(h + 1) * 12]
            .iter()
            .filter_map(|w| w["vehicles"].as_u64())
            .sum();
        ensure!(
            hour["vehicles"].as_u64() == Some(vehicles) && hour["resolution"] == "1h",
            "hour {h}: {hour} against its windows' {vehicles}"
        );
    }

    // The congestion alert: once per episode.
    let expected = episodes(&windows);
    ensure!(!expected.is_empty(), "the incident is an episode");
    let alerts = eventually(
        "one traffic_jammed alert per episode",
        Duration::from_secs(60),
        api.logs,
        || async {
            let body = api
                .get(&format!(
                    "/api/v1/alerts?device_id={id}&rule=traffic_jammed&from={from}&to={}",
                    to + 3_600_000
                ))
                .await?;
            let mut fired: Vec<String> = body["alerts"]
                .as_array()
                .context("alerts")?
                .iter()
                .filter_map(|a| a["fired_at"].as_str().map(str::to_string))
                .collect();
            fired.sort();
            ensure!(
                fired == expected,
                "fired at {fired:?}, episodes end {expected:?}"
            );
            Ok(Some(body))
        },
    )
    .await?;
    let first = &alerts["alerts"][0];
    let says = first["message"].as_str().unwrap_or_default();
    ensure!(
        first["category"] == "traffic"
            && first["severity"] == "warning"
            && says.contains(shown["road_segment"].as_str().unwrap_or("?"))
            && says.contains("km/h")
            && says.contains("vehicles/h")
            && !says.contains('{'),
        "the alert says where and why: {first}"
    );
    eprintln!(
        "traffic: {id}, {} windows, episodes at {expected:?}; rush {:.0} veh/h at {:.1} km/h, before dawn {:.0} veh/h at {:.1} km/h",
        windows.len(),
        mean(&rush, "flow_vph"),
        mean(&rush, "speed_kmh"),
        mean(&quiet, "flow_vph"),
        mean(&quiet, "speed_kmh"),
    );
    // The operator's map colours the counter by its latest 5 minutes' level, named in the legend.
    let last = windows.last().context("a window")?;
    let (colour, name) = match last["level"].as_str() {
        Some("free") => ("#1f9d55", "Thông thoáng"),
        Some("moderate") => ("#f2c200", "Đông"),
        Some("heavy") => ("#ff7e00", "Ùn ứ"),
        _ => ("#b3261e", "Tắc nghẽn"),
    };
    let map = api.get("/api/v1/map?kind=traffic_counter").await?;
    let at = |name: &str| {
        map["fields"]
            .as_array()
            .and_then(|f| f.iter().position(|x| x == name))
    };
    let (device_at, congestion_at) = (
        at("device_id").context("device_id")?,
        at("congestion").context("congestion")?,
    );
    let row = map["devices"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[device_at] == id))
        .context("the counter on the map")?;
    ensure!(
        row[congestion_at] == last["level"],
        "the map route's congestion: {map}"
    );
    let screenshot = api.logs.join("traffic-map.png");
    let seen = crate::harness::browser_check(
        "dashboard.js",
        &[
            &format!("{}/?token={}", api.base, api.token),
            &screenshot,
            &"10",
        ],
    )
    .await?;
    ensure!(
        seen["fills"][id] == colour && seen["legend"].to_string().contains(name),
        "the counter's marker is {colour} and the legend says {name}: {seen}"
    );
    let camera = fleet
        .devices
        .iter()
        .find(|d| d.kind == sensor_sim::Kind::TrafficCamera)
        .context("a camera")?;
    a_cameras_violations_are_counted_per_type_and_hour(api, &publisher, camera).await
}

/// A camera's events of two hours, one sent twice: the counts per type and hour, over REST and
/// the websocket; the repeat counts per pseudonym for `enforcement` only, audited.
async fn a_cameras_violations_are_counted_per_type_and_hour(
    api: &Api<'_>,
    publisher: &rumqttc::AsyncClient,
    camera: &sensor_sim::SimDevice,
) -> Result<()> {
    let camera_id = camera
        .external_id
        .as_ref()
        .map(|e| e.value().to_string())
        .context("a camera id")?;
    let hour = Resolution::Hour.start(ioc_contract::time::now_ms(), ICT) - 3 * 3_600_000;
    let event = |n: u32, at: i64, kind: &str, plate: &str| {
        let time = format_ms(at + ICT).replace('Z', "+07:00");
        json!({
            "camera_id": camera_id, "event_id": format!("{camera_id}-e2e-{n}"),
            "event_time": time, "type": kind, "plate": plate, "speed_kmh": 41.0, "lane": 1,
            "image_ref": format!("s3://evidence/e2e-{n}.jpg"),
        })
        .to_string()
    };
    let topic = format!("ioc/v1/cameras/{camera_id}/events");
    let sent = [
        event(1, hour + 5 * MIN, "red_light", "47A-111.11"),
        event(2, hour + 10 * MIN, "red_light", "47A-111.11"),
        event(3, hour + 20 * MIN, "no_helmet", "47B1-222.22"),
        // The second event again: a camera's resend, counted once.
        event(2, hour + 10 * MIN, "red_light", "47A-111.11"),
        event(4, hour + 70 * MIN, "speeding", "47A-111.11"),
    ];
    for body in sent {
        publisher
            .publish(topic.clone(), QoS::AtLeastOnce, false, body)
            .await?;
    }
    let device = &camera.device_id;
    let path = format!(
        "/api/v1/traffic?device_id={device}&from={hour}&to={}",
        hour + 2 * 3_600_000
    );
    let counts = |body: &Value| -> Vec<(String, String, u64)> {
        body["violations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    v["window_start"].as_str().unwrap_or_default().to_string(),
                    v["violation"].as_str().unwrap_or_default().to_string(),
                    v["count"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let (h0, h1) = (format_ms(hour), format_ms(hour + 3_600_000));
    let expected = vec![
        (h0.clone(), "no_helmet".to_string(), 1),
        (h0.clone(), "red_light".to_string(), 2),
        (h1.clone(), "speeding".to_string(), 1),
    ];
    eventually(
        "the camera's violations per type and hour",
        Duration::from_secs(60),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let mut got = counts(&body);
            got.sort();
            ensure!(got == expected, "{body}");
            ensure!(
                !body.to_string().contains("p_"),
                "no pseudonym in counts: {body}"
            );
            Ok(Some(()))
        },
    )
    .await?;
    // The websocket's `traffic` stream holds the camera's latest count per type.
    let mut latest: std::collections::BTreeMap<(String, String), u64> = Default::default();
    api.watch("traffic", device, "each type's stored count", |d| {
        ensure!(d["record"] == "violations", "a camera's record: {d}");
        let key = (
            d["window_start"].as_str().unwrap_or_default().to_string(),
            d["violation"].as_str().unwrap_or_default().to_string(),
        );
        latest.insert(key, d["count"].as_u64().unwrap_or(0));
        let seen: Vec<(String, String, u64)> = latest
            .iter()
            .map(|((h, v), n)| (h.clone(), v.clone(), *n))
            .collect();
        Ok(seen == expected)
    })
    .await?;

    // Repeat counts: enforcement only, audited.
    let officer =
        crate::access::issue(api.http, &api.base, &api.token, "enforcement", "csgt-an").await?;
    let operator =
        crate::access::issue(api.http, &api.base, &api.token, "operator", "ioc-binh").await?;
    let repeats = format!(
        "/api/v1/traffic/repeats?from={hour}&to={}",
        hour + 2 * 3_600_000
    );
    let get_as = |token: String| {
        let url = format!("{}{repeats}", api.base);
        async move { api.http.get(url).bearer_auth(token).send().await }
    };
    let refused = get_as(operator).await?;
    ensure!(
        refused.status() == 403,
        "an operator may not: {}",
        refused.status()
    );
    let admin = get_as(api.token.clone()).await?;
    ensure!(admin.status() == 403, "nor the admin: {}", admin.status());
    let body: Value = get_as(officer).await?.json().await?;
    let list = body["repeats"].as_array().context("repeats")?;
    ensure!(list.len() == 1, "one plate offended twice or more: {body}");
    ensure!(
        list[0]["violations"] == 3
            && list[0]["by_type"] == json!({"red_light": 2, "speeding": 1})
            && list[0]["plate_pseudonym"]
                .as_str()
                .is_some_and(|p| p.starts_with("p_"))
            && list[0]["cameras"] == json!([device]),
        "{body}"
    );
    ensure!(
        !body.to_string().contains("47A"),
        "no plate in the clear: {body}"
    );
    let audit = api.get("/api/v1/audit?action=repeats.read").await?;
    ensure!(
        audit["entries"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["by"] == "csgt-an" && e["role"] == "enforcement")),
        "the read is audited: {audit}"
    );
    Ok(())
}
