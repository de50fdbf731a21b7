//! `ioc sim`: a seeded, rate-controlled fleet of simulated devices publishing device protocol
//! v1 over MQTT QoS 1, as real devices would (MQTT 3.1.1). It knows the wire protocol, not the
//! pipeline's decoders.
//!
//! - [`Fleet`]: the devices and their signals; the same seed gives the same values.
//! - [`run`]: publishes at the configured rate, exactly `count` messages if given, waits for the
//!   broker to acknowledge every one, and reports totals.
//! - [`register_fleet`]: registers the fleet through the API, as an installer would.

use std::time::{Duration, Instant};

use ioc_config::{MqttConfig, SimConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("registering {device}: {message}")]
    Register { device: String, message: String },
    #[error("broker did not acknowledge {missing} message(s) within {waited:?}")]
    Unacknowledged { missing: u64, waited: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    AirQuality,
    Wastewater,
    TrafficCounter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::AirQuality => "air_quality",
            Kind::Wastewater => "wastewater",
            Kind::TrafficCounter => "traffic_counter",
        }
    }
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub device_id: String,
    pub kind: Kind,
    pub lat: f64,
    pub lon: f64,
    /// Channels the device reports on, in turn (empty string: none).
    pub channels: Vec<String>,
    /// Per-device level, so stations differ.
    level: f64,
    next_channel: usize,
    last_ts: i64,
    seq: u64,
}

/// The simulated fleet.
pub struct Fleet {
    pub devices: Vec<SimDevice>,
    rng: SmallRng,
    next_device: usize,
}

/// Around Buôn Ma Thuột.
const CENTRE: (f64, f64) = (12.6667, 108.0383);

impl Fleet {
    pub fn new(config: &SimConfig) -> Fleet {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut devices = Vec::new();
        let mut add =
            |kind: Kind, prefix: &str, n: u32, channels: Vec<String>, rng: &mut SmallRng| {
                for i in 1..=n {
                    devices.push(SimDevice {
                        device_id: format!("{prefix}-{i:03}"),
                        kind,
                        lat: CENTRE.0 + rng.random_range(-0.3..0.3),
                        lon: CENTRE.1 + rng.random_range(-0.3..0.3),
                        channels: channels.clone(),
                        level: rng.random_range(0.6..1.6),
                        next_channel: 0,
                        last_ts: 0,
                        seq: 0,
                    });
                }
            };
        add(
            Kind::AirQuality,
            "aq",
            config.air_quality,
            vec![String::new()],
            &mut rng,
        );
        add(
            Kind::Wastewater,
            "ww",
            config.wastewater,
            vec!["inlet".into(), "outlet".into()],
            &mut rng,
        );
        add(
            Kind::TrafficCounter,
            "tc",
            config.traffic_counters,
            vec!["lane-1".into(), "lane-2".into()],
            &mut rng,
        );
        Fleet {
            devices,
            rng,
            next_device: 0,
        }
    }

    /// The next message, round-robin over devices: `(topic, payload, readings in it)`.
    pub fn next_message(&mut self, now_ms: i64) -> (String, Vec<u8>, usize) {
        let i = self.next_device;
        self.next_device = (self.next_device + 1) % self.devices.len();
        let rng = &mut self.rng;
        let d = &mut self.devices[i];
        // Keys (device, channel, metric, ts) must be unique: never repeat a timestamp.
        let ts = now_ms.max(d.last_ts + 1);
        d.last_ts = ts;
        d.seq += 1;
        let channel = d.channels[d.next_channel].clone();
        d.next_channel = (d.next_channel + 1) % d.channels.len();
        let hour = ((ts / 3_600_000 + 7) % 24) as f64; // local hour, UTC+7
        let rush = if (6.5..9.0).contains(&hour) || (16.5..19.0).contains(&hour) {
            1.6
        } else {
            1.0
        };
        let diurnal = 1.0 + 0.3 * ((hour - 7.0) / 24.0 * std::f64::consts::TAU).cos();
        let mut noise = |scale: f64| rng.random_range(-scale..scale);
        let mut values = Map::new();
        let mut put = |k: &str, v: f64| {
            values.insert(k.to_string(), json!((v * 10.0).round() / 10.0));
        };
        match d.kind {
            Kind::AirQuality => {
                let pm25 = (22.0 * d.level * diurnal * rush + noise(4.0)).max(1.0);
                put("pm25", pm25);
                put("pm10", pm25 * 1.7 + noise(5.0).abs());
                put("no2", (28.0 * rush * d.level + noise(6.0)).max(0.0));
                put("so2", (9.0 * d.level + noise(2.0)).max(0.0));
                put("co", (900.0 * rush * d.level + noise(150.0)).max(0.0));
                let sun = (-((hour - 13.0) / 3.5).powi(2)).exp();
                put("o3", (25.0 + 85.0 * sun + noise(5.0)).max(0.0));
                put("temperature", 22.0 + 7.0 * sun + noise(0.5));
                put(
                    "humidity",
                    (82.0 - 20.0 * sun + noise(3.0)).clamp(20.0, 100.0),
                );
            }
            Kind::Wastewater => {
                let treated = if channel == "outlet" { 0.25 } else { 1.0 };
                put("ph", 7.1 + noise(0.4));
                put("cod", (260.0 * treated * d.level + noise(15.0)).max(0.0));
                put("tss", (180.0 * treated * d.level + noise(10.0)).max(0.0));
                put("nh4", (22.0 * treated * d.level + noise(2.0)).max(0.0));
                put("flow", (45.0 * d.level * diurnal + noise(3.0)).max(0.0));
                put("temperature", 29.0 + noise(1.0));
            }
            Kind::TrafficCounter => {
                // Counts are whole numbers: rounding to one decimal keeps them whole.
                put(
                    "vehicle_count",
                    (12.0 * d.level * rush * diurnal + noise(3.0))
                        .max(0.0)
                        .round(),
                );
                put("avg_speed", (42.0 / rush + noise(5.0)).max(3.0));
                put(
                    "occupancy",
                    (8.0 * rush * d.level + noise(2.0)).clamp(0.0, 100.0),
                );
            }
        }
        let n = values.len();
        let mut body = Map::new();
        body.insert("ts".into(), json!(ts));
        body.insert("seq".into(), json!(d.seq));
        if !channel.is_empty() {
            body.insert("channel".into(), json!(channel));
        }
        if d.kind == Kind::TrafficCounter {
            body.insert("interval_s".into(), json!(60));
        }
        body.insert("values".into(), Value::Object(values));
        let topic = format!("ioc/v1/devices/{}/telemetry", d.device_id);
        (
            topic,
            serde_json::to_vec(&Value::Object(body)).expect("json"),
            n,
        )
    }
}

/// What a run sent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SimReport {
    pub messages: u64,
    pub readings: u64,
    pub acknowledged: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
}

/// Options of one run besides the fleet.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub count: Option<u64>,
    pub rate: f64,
    pub client_id: String,
    /// Print progress to stderr every second.
    pub progress: bool,
}

/// Publishes until `count` messages were sent (or `shutdown`), then waits until the broker has
/// acknowledged every message.
pub async fn run(
    mqtt: &MqttConfig,
    fleet: &mut Fleet,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> Result<SimReport, SimError> {
    let mut mqtt_options = MqttOptions::new(&options.client_id, &mqtt.host, mqtt.port);
    mqtt_options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(500)
        .set_clean_session(true);
    if !mqtt.username.is_empty() {
        mqtt_options.set_credentials(&mqtt.username, &mqtt.password);
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt_options, 1000);
    let (ack_tx, mut ack_rx) = tokio::sync::watch::channel(0u64);
    let (err_tx, mut err_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let poller = tokio::spawn(async move {
        let mut acked = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    let _ = ack_tx.send(acked);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = err_tx.send(Some(e.to_string()));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });

    let mut report = SimReport::default();
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_progress_count = 0u64;
    while options.count.is_none_or(|c| report.messages < c) && !shutdown.is_cancelled() {
        let due = (start.elapsed().as_secs_f64() * options.rate).floor() as u64 + 1;
        if report.messages >= due {
            let wait = Duration::from_secs_f64(
                ((report.messages as f64) / options.rate - start.elapsed().as_secs_f64()).max(0.0),
            );
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_millis(50))) => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let (topic, payload, n) = fleet.next_message(now);
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| SimError::Mqtt(e.to_string()))?;
        report.messages += 1;
        report.readings += n as u64;
        if options.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let rate = (report.messages - last_progress_count) as f64
                / last_progress.elapsed().as_secs_f64();
            eprintln!(
                "sim: {} messages, {} readings, {:.0} msg/s",
                report.messages, report.readings, rate
            );
            last_progress = Instant::now();
            last_progress_count = report.messages;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.messages_per_second = report.messages as f64 / report.seconds.max(1e-9);

    // Every message counts only once the broker has it.
    let waited = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        report.acknowledged = *ack_rx.borrow_and_update();
        if report.acknowledged >= report.messages {
            break;
        }
        tokio::select! {
            _ = ack_rx.changed() => {}
            _ = err_rx.changed() => {
                if let Some(e) = err_rx.borrow().clone() {
                    tracing::warn!(error = %e, "MQTT connection error while waiting for acknowledgements");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                poller.abort();
                return Err(SimError::Unacknowledged { missing: report.messages - report.acknowledged, waited });
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(report)
}

/// Registers every device of the fleet through the API (idempotent: an identical registration
/// is accepted again).
pub async fn register_fleet(fleet: &Fleet, api_url: &str, token: &str) -> Result<usize, SimError> {
    let http = reqwest::Client::new();
    for d in &fleet.devices {
        let body = json!({
            "device_id": d.device_id,
            "kind": d.kind.as_str(),
            "name": format!("Simulated {} {}", d.kind.as_str().replace('_', " "), d.device_id),
            "lat": (d.lat * 1e5).round() / 1e5,
            "lon": (d.lon * 1e5).round() / 1e5,
            "expected_interval_s": 60,
        });
        let response = http
            .post(format!("{}/api/v1/devices", api_url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| SimError::Register {
                device: d.device_id.clone(),
                message: e.to_string(),
            })?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(SimError::Register {
                device: d.device_id.clone(),
                message: format!("{status}: {text}"),
            });
        }
    }
    Ok(fleet.devices.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> SimConfig {
        SimConfig {
            air_quality: 2,
            wastewater: 1,
            traffic_counters: 1,
            rate: 10.0,
            seed,
        }
    }

    #[test]
    fn same_seed_same_messages() {
        let (mut a, mut b) = (Fleet::new(&config(7)), Fleet::new(&config(7)));
        for i in 0..50 {
            assert_eq!(
                a.next_message(1_795_680_000_000 + i),
                b.next_message(1_795_680_000_000 + i)
            );
        }
        let mut c = Fleet::new(&config(8));
        let differs = (0..50).any(|i| a.next_message(i) != c.next_message(i));
        assert!(differs);
    }

    #[test]
    fn timestamps_never_repeat_per_device_even_within_one_millisecond() {
        let mut fleet = Fleet::new(&config(1));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..400 {
            let (topic, payload, _) = fleet.next_message(1_795_680_000_000);
            let body: Value = serde_json::from_slice(&payload).unwrap();
            let key = (
                topic,
                body["channel"].as_str().unwrap_or("").to_string(),
                body["ts"].as_i64().unwrap(),
            );
            assert!(seen.insert(key));
        }
    }

    #[test]
    fn messages_are_v1_with_canonical_metrics() {
        let mut fleet = Fleet::new(&config(3));
        let kinds: Vec<Kind> = fleet.devices.iter().map(|d| d.kind).collect();
        for kind in kinds {
            let (topic, payload, n) = fleet.next_message(1_795_680_000_000);
            assert!(topic.starts_with("ioc/v1/devices/") && topic.ends_with("/telemetry"));
            let body: Value = serde_json::from_slice(&payload).unwrap();
            let values = body["values"].as_object().unwrap();
            assert_eq!(values.len(), n);
            let expected: &[&str] = match kind {
                Kind::AirQuality => &[
                    "pm25",
                    "pm10",
                    "no2",
                    "so2",
                    "co",
                    "o3",
                    "temperature",
                    "humidity",
                ],
                Kind::Wastewater => &["ph", "cod", "tss", "nh4", "flow", "temperature"],
                Kind::TrafficCounter => &["vehicle_count", "avg_speed", "occupancy"],
            };
            for m in expected {
                assert!(values[*m].is_number(), "{kind:?} {m}");
            }
        }
    }
}
