//! Who may read what, and where licence plates may be: scoped tokens, audited reads of personal
//! data, and a search for every published plate outside the evidence store.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use futures::StreamExt;
use rdkafka::consumer::Consumer as _;
use rdkafka::Message as _;
use reqwest::{Method, StatusCode};
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::harness::{Env, FLEET, KAFKA, TOKEN};
use crate::pipeline::{register_sim_fleet, start_pipeline};

/// One API call with `token`; the status and JSON body (`null` when there is none).
pub(crate) async fn call(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value)> {
    let mut request = http.request(method, format!("{base}{path}"));
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await?;
    let status = r.status();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Registers a device with `token`; fails unless it was created. Returns the device as shown.
pub(crate) async fn register_as(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    registration: Value,
) -> Result<Value> {
    let (status, body) = call(
        http,
        base,
        Method::POST,
        "/api/v1/devices",
        token,
        Some(registration),
    )
    .await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "registering: {status} {body}"
    );
    Ok(body)
}

/// Issues a token of `role` for `name` with the admin token; returns the secret.
pub(crate) async fn issue(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    role: &str,
    name: &str,
) -> Result<String> {
    let (status, body) = call(
        http,
        base,
        Method::POST,
        "/api/v1/tokens",
        admin,
        Some(json!({"role": role, "name": name})),
    )
    .await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "issuing {role}: {status} {body}"
    );
    Ok(body["token"]
        .as_str()
        .context("token shown once")?
        .to_string())
}

/// Everything a text holds that could be a plate: its runs of letters, digits, `-` and `.`,
/// upper-cased without separators (`47a-123.45` → `47A12345`).
fn plate_like_tokens(text: &str, into: &mut HashSet<String>) {
    for run in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.')) {
        let token: String = run
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if token.len() >= 6 {
            into.insert(token);
        }
    }
}

/// A searchable copy of what one place holds.
#[derive(Default)]
struct Haystack {
    text: String,
    tokens: HashSet<String>,
}

impl Haystack {
    fn add(&mut self, text: &str) {
        plate_like_tokens(text, &mut self.tokens);
        self.text.push_str(text);
        self.text.push('\n');
        // Raw message bytes travel base64-encoded in dead letters: look inside them too.
        for run in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c))) {
            if run.len() >= 16 {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(run) {
                    let inner = String::from_utf8_lossy(&bytes);
                    plate_like_tokens(&inner, &mut self.tokens);
                    self.text.push_str(&inner);
                    self.text.push('\n');
                }
            }
        }
    }

    /// The plates found here, as published or normalized.
    fn plates_in(&self, plates: &BTreeSet<String>) -> Vec<String> {
        plates
            .iter()
            .filter(|p| {
                let normalized: String = p
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .map(|c| c.to_ascii_uppercase())
                    .collect();
                self.text.contains(p.as_str()) || self.tokens.contains(&normalized)
            })
            .cloned()
            .collect()
    }
}

/// Every record of `topic` (without prefix), read from the beginning of its `partitions` until
/// three quiet seconds.
async fn topic_text(env: &Env, topic: &str, partitions: i32) -> Result<Haystack> {
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", format!("{}-{topic}-leak", env.id))
        .set("enable.auto.commit", "false")
        .create()?;
    let name = format!("{}.{topic}", env.id);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&name, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut hay = Haystack::default();
    let mut stream = consumer.stream();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
        let m = m?;
        hay.add(&String::from_utf8_lossy(m.key().unwrap_or_default()));
        hay.add(&String::from_utf8_lossy(m.payload().unwrap_or_default()));
    }
    Ok(hay)
}

/// Every row of a ClickHouse table of this deployment, as text.
async fn table_text(env: &Env, table: &str) -> Result<Haystack> {
    let mut hay = Haystack::default();
    for row in env.clickhouse(&format!("SELECT * FROM {table}")).await? {
        hay.add(&row.join("\t"));
    }
    Ok(hay)
}

/// The pipeline with the simulator's camera fleet publishing at full rate, faults on. Roles: only enforcement reads plates, admin and enforcement read
/// pseudonyms, every such read is in the audit log before it is answered, a revoked token stops
/// working. Then every log line, topic (dead letters included), table and metric outside the
/// evidence store is searched for the published plates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plates_are_read_only_by_enforcement_audited_and_found_nowhere_else() -> Result<()> {
    let env = Env::new(
        "access",
        "[sim]\nair_quality = 0\nwastewater = 0\ntraffic_counters = 0\nsenml_air = 0\nflat_gateways = 0\ncameras = 6\nseed = 23\n",
    )?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    register_sim_fleet(&env)?;
    env.wait_ingest_knows_registered().await?;
    env.wait_ingest_subscribed().await?;
    // Two cameras being serviced: ingest taps their messages, bytes withheld.
    for camera in ["cam-001", "cam-002"] {
        let path = format!("/api/v1/devices/{camera}");
        let body = json!({"status": "maintenance"});
        let (status, answer) = call(
            &env.http,
            &env.api(""),
            Method::PATCH,
            &path,
            TOKEN,
            Some(body),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // What the cameras publish, seen as any MQTT subscriber would.
    let (watcher, mut watch) = {
        let mut options = rumqttc::MqttOptions::new("leak-watch", "127.0.0.1", env.mqtt_port);
        options
            .set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024)
            .set_credentials(FLEET.0, FLEET.1);
        rumqttc::AsyncClient::new(options, 10_000)
    };
    watcher.subscribe("ioc/v1/#", QoS::AtMostOnce).await?;
    let collector = tokio::spawn(async move {
        let mut plates = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, watch.poll()).await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let text = String::from_utf8_lossy(&p.payload);
                // Faulty payloads are not always JSON: find the field by its name.
                for part in text.split("\"plate\"").skip(1) {
                    if let Some(plate) = part
                        .trim_start_matches([' ', ':'])
                        .strip_prefix('"')
                        .and_then(|rest| rest.split('"').next())
                    {
                        if plate.len() >= 6 {
                            plates.insert(plate.to_string());
                        }
                    }
                }
            }
        }
        plates
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The simulator's own output (stdout and stderr) is searched with the other logs.
    let mut sim = env.ioc(
        "sim",
        &[
            "sim",
            "--count",
            "3000",
            "--rate",
            "100000",
            "--faults",
            "all",
            "--fault-rate",
            "0.1",
            "--client-id",
            "leak-sim",
        ],
    )?;
    let finished = env
        .eventually("the simulator to finish", Duration::from_secs(120), || {
            let status = sim.child.try_wait();
            async move { Ok(status?) }
        })
        .await?;
    assert!(finished.success(), "sim: {finished}");

    // Stored: the camera events and their evidence stop growing.
    let last = std::cell::Cell::new((0u64, 0u64));
    env.eventually("camera events to be stored", Duration::from_secs(90), || {
        let (env, last) = (&env, &last);
        async move {
            let rows = env
                .clickhouse("SELECT (SELECT count() FROM events FINAL), (SELECT count() FROM evidence FINAL)")
                .await?;
            let now: (u64, u64) = (rows[0][0].parse()?, rows[0][1].parse()?);
            let previous = last.replace(now);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok((now.0 > 100 && now == previous).then_some(()))
        }
    })
    .await?;
    // The violations per camera, type and hour, counted by the stream as the events came
    // (resends among them), are the stored events counted once each.
    let by_hour =
        "SELECT device_id, intDiv(ts, 3600000) * 3600000 AS h, kind, count() FROM events FINAL \
                   GROUP BY device_id, h, kind ORDER BY device_id, h, kind";
    let counted = "SELECT device_id, window_start, violation, count FROM violations FINAL \
                   ORDER BY device_id, window_start, violation";
    env.eventually(
        "violations counted as stored",
        Duration::from_secs(60),
        || async {
            let (events, violations) = (
                env.clickhouse(by_hour).await?,
                env.clickhouse(counted).await?,
            );
            Ok((!events.is_empty() && events == violations).then_some(()))
        },
    )
    .await
    .context("the violations table against the events table")?;
    watcher.disconnect().await.ok();
    let plates = collector.await?;
    assert!(
        plates.len() > 50,
        "the fleet's plates were seen: {}",
        plates.len()
    );

    let (http, base) = (&env.http, env.api(""));
    let operator = issue(http, &base, TOKEN, "operator", "dashboard-wall").await?;
    let installer = issue(http, &base, TOKEN, "installer", "lan-installer").await?;
    let officer = issue(http, &base, TOKEN, "enforcement", "officer-hoa").await?;

    // Who may read what.
    for (token, path, want) in [
        ("", "/api/v1/events", StatusCode::UNAUTHORIZED),
        ("not-a-token", "/api/v1/events", StatusCode::UNAUTHORIZED),
        (operator.as_str(), "/api/v1/readings", StatusCode::OK),
        (operator.as_str(), "/api/v1/events", StatusCode::FORBIDDEN),
        (operator.as_str(), "/api/v1/evidence", StatusCode::FORBIDDEN),
        (installer.as_str(), "/api/v1/events", StatusCode::FORBIDDEN),
        (
            installer.as_str(),
            "/api/v1/evidence",
            StatusCode::FORBIDDEN,
        ),
        (TOKEN, "/api/v1/evidence", StatusCode::FORBIDDEN),
        (officer.as_str(), "/api/v1/audit", StatusCode::FORBIDDEN),
        (operator.as_str(), "/api/v1/tokens", StatusCode::FORBIDDEN),
        (installer.as_str(), "/api/v1/tokens", StatusCode::FORBIDDEN),
        (installer.as_str(), "/api/v1/audit", StatusCode::FORBIDDEN),
        (officer.as_str(), "/api/v1/tokens", StatusCode::FORBIDDEN),
        (officer.as_str(), "/api/v1/devices", StatusCode::OK),
    ] {
        let (status, body) = call(http, &base, Method::GET, path, token, None).await?;
        assert_eq!(status, want, "GET {path} with {token:?}: {body}");
        if status == StatusCode::FORBIDDEN {
            assert_eq!(body["error"], "forbidden", "{body}");
        }
    }
    let register = json!({"device_id": "aq-new", "kind": "air_quality", "name": "new",
        "lat": 12.7, "lon": 108.0, "expected_interval_s": 60});
    let (status, body) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/devices",
        &operator,
        Some(register.clone()),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "operators only read: {body}");
    let (status, _) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/devices",
        &officer,
        Some(register.clone()),
    )
    .await?;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "enforcement does not register devices"
    );
    let (status, _) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/tokens",
        &installer,
        Some(json!({"role": "enforcement", "name": "x"})),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins issue tokens");
    let (status, body) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/devices",
        &installer,
        Some(register),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["registered_by"], "lan-installer");
    assert_eq!(body["status"], "commissioning");

    // Pseudonyms for admin; plates only for enforcement, and they match.
    // The simulator at full rate runs its clock ahead: its events span hours.
    let now = ioc_contract::time::now_ms();
    let span = format!(
        "limit=10000&from={}&to={}",
        now - 2 * 86_400_000,
        now + 2 * 86_400_000
    );
    let path = format!("/api/v1/events?{span}");
    let (status, events) = call(http, &base, Method::GET, &path, TOKEN, None).await?;
    assert_eq!(status, StatusCode::OK, "{events}");
    let events = events["events"].as_array().context("events")?.clone();
    assert!(events.len() > 100, "{} events", events.len());
    let events_text = serde_json::to_string(&events)?;
    let mut hay = Haystack::default();
    hay.add(&events_text);
    assert_eq!(
        hay.plates_in(&plates),
        Vec::<String>::new(),
        "plates in events"
    );
    let (status, evidence) = call(
        http,
        &base,
        Method::GET,
        &format!("/api/v1/evidence?{span}"),
        &officer,
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{evidence}");
    let evidence = evidence["evidence"].as_array().context("evidence")?;
    assert_eq!(
        evidence.len(),
        events.len(),
        "one evidence record per event"
    );
    let pseudonym_of: std::collections::HashMap<&str, &str> = events
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap(),
                e["attributes"]["plate_pseudonym"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for e in evidence {
        let plate = e["plate"].as_str().context("plate")?;
        assert!(
            plates.contains(plate),
            "evidence holds a published plate: {e}"
        );
        assert_eq!(
            pseudonym_of.get(e["event_id"].as_str().unwrap()).copied(),
            e["plate_pseudonym"].as_str(),
            "{e}"
        );
    }

    // Every personal-data read is in the audit log, with who read it.
    let (status, audit) = call(http, &base, Method::GET, "/api/v1/audit", TOKEN, None).await?;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let entries = audit["entries"].as_array().context("entries")?;
    let has = |action: &str, by: &str, role: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["by"] == by && e["role"] == role)
    };
    assert!(
        has("evidence.read", "officer-hoa", "enforcement"),
        "{audit}"
    );
    assert!(has("events.read", "admin-token", "admin"), "{audit}");
    assert!(
        has("device.registered", "lan-installer", "installer"),
        "{audit}"
    );
    assert!(has("token.issued", "admin-token", "admin"), "{audit}");
    // Refused reads were never made, so never audited.
    assert!(
        !entries.iter().any(|e| e["by"] == "dashboard-wall"),
        "{audit}"
    );

    // A revoked token stops working at once.
    let (_, tokens) = call(http, &base, Method::GET, "/api/v1/tokens", TOKEN, None).await?;
    let officer_id = tokens["tokens"]
        .as_array()
        .context("tokens")?
        .iter()
        .find(|t| t["name"] == "officer-hoa")
        .and_then(|t| t["token_id"].as_str())
        .context("officer's token listed")?
        .to_string();
    assert!(
        !tokens.to_string().contains(&officer),
        "secrets are never listed"
    );
    // A websocket the officer has open is closed too.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/v1/ws?token={officer}",
        env.api_port
    ))
    .await?;
    let path = format!("/api/v1/tokens/{officer_id}");
    let (status, _) = call(http, &base, Method::DELETE, &path, TOKEN, None).await?;
    assert_eq!(status, StatusCode::OK);
    let closed = crate::onboarding::next_frame(&mut socket).await?;
    assert_eq!(closed["op"], "closed", "{closed}");
    let (status, _) = call(http, &base, Method::GET, "/api/v1/evidence", &officer, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(http, &base, Method::DELETE, &path, TOKEN, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoking twice");

    // The search. First, that it finds plates where they are: in the evidence store, and in a
    // dead letter's base64 bytes if one ever held them.
    let some_plate = plates.iter().next().context("a plate")?.clone();
    let mut control = Haystack::default();
    control.add(
        &json!({"raw_base64": base64::engine::general_purpose::STANDARD.encode(
        format!(r#"{{"plate":"{some_plate}"}}"#))})
        .to_string(),
    );
    assert_eq!(control.plates_in(&plates), vec![some_plate]);
    let evidence_table = table_text(&env, "evidence").await?;
    assert!(
        evidence_table.plates_in(&plates).len() > plates.len() / 2,
        "the search finds plates where they are"
    );
    let mut places: Vec<(String, Haystack)> = Vec::new();
    for entry in std::fs::read_dir(&env.dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log" || e == "out") {
            let mut hay = Haystack::default();
            hay.add(&String::from_utf8_lossy(&std::fs::read(&path)?));
            places.push((format!("log {}", path.display()), hay));
        }
    }
    for port in [
        env.ingest_metrics_port,
        env.stream_metrics_port,
        env.api_port,
    ] {
        let text = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let mut hay = Haystack::default();
        hay.add(&text);
        places.push((format!("metrics :{port}"), hay));
    }
    for (topic, partitions) in [
        ("readings", 3),
        ("deadletter", 3),
        ("aggregates", 3),
        ("alerts", 3),
        ("events", 3),
        ("registry", 1),
        ("audit", 1),
        ("tap", 3),
    ] {
        places.push((
            format!("topic {topic}"),
            topic_text(&env, topic, partitions).await?,
        ));
    }
    for row in env.clickhouse("SHOW TABLES").await? {
        let table = &row[0];
        if table != "evidence" && table != "camera_quarantine" {
            places.push((format!("table {table}"), table_text(&env, table).await?));
        }
    }
    let deadletters = places
        .iter()
        .find(|(name, _)| name == "topic deadletter")
        .map(|(_, h)| h.text.len())
        .unwrap_or(0);
    assert!(
        deadletters > 0,
        "the air-quality station's faults were dead-lettered"
    );
    let leaks: Vec<(String, Vec<String>)> = places
        .iter()
        .map(|(name, hay)| (name.clone(), hay.plates_in(&plates)))
        .filter(|(_, found)| !found.is_empty())
        .collect();
    assert!(
        leaks.is_empty(),
        "plates outside the evidence store: {leaks:?}"
    );
    eprintln!(
        "access: {} plates, {} events; searched {} places",
        plates.len(),
        events.len(),
        places.len()
    );
    Ok(())
}
