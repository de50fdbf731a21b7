//! Onboarding on the real pipeline (Mosquitto, ingest, tansu, stream, ClickHouse): messages
//! from devices nobody registered yet are kept and replayed once they are, exactly once.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use rumqttc::QoS;
use serde_json::json;

use crate::access::{call, issue, register_as};
use crate::harness::{device_login, Env, TOKEN};
use crate::pipeline::start_pipeline;

/// `ms` (UTC) as local time (+07:00) in `pattern`'s shape: `dmy` gives `dd/MM/yyyy HH:mm:ss`,
/// `compact` gives `yyyyMMddhhmmss`.
fn local(ms: i64, compact: bool) -> String {
    let t = ioc_contract::time::format_ms(ms + 7 * 3_600_000);
    let (date, time) = (&t[..10], &t[11..19]);
    if compact {
        format!("{}{}", date.replace('-', ""), time.replace(':', ""))
    } else {
        format!("{}/{}/{} {time}", &date[8..10], &date[5..7], &date[..4])
    }
}

/// Rows of `device` in `readings`, counted without FINAL: a reading stored twice counts twice.
async fn stored(env: &Env, device: &str) -> Result<u64> {
    let rows = env
        .clickhouse(&format!(
            "SELECT count() FROM readings WHERE device_id = '{device}'"
        ))
        .await?;
    Ok(rows[0][0].parse()?)
}

/// A gateway relays a sensor nobody registered; a station sends files under a new station
/// code. Both are dead-lettered as `unknown_device` with the external id they named. Once an
/// installer registers the devices, a replay stores their readings; a second replay stores
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_devices_registered_later_are_replayed_exactly_once() -> Result<()> {
    let env = Env::new("replay", "")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    env.wait_ingest_subscribed().await?;
    let unknown = "ioc_ingest_rejections_total{code=\"unknown_device\"}";
    let before = env.metric(env.ingest_metrics_port, unknown).await?;
    let (mqtt, _poll) = env.mqtt_client("replay-devices");
    let now = ioc_contract::time::now_ms();
    for i in 0..5 {
        let body = format!(
            r#"{{"imei":"869000000000001","time":"{}","PM2_5":"3{i},5","CO":"1,{i}"}}"#,
            local(now - 600_000 + i * 60_000, false)
        );
        mqtt.publish("ioc/v1/gateways/gw-9/flat", QoS::AtLeastOnce, false, body)
            .await?;
    }
    for i in 0..2 {
        let t = local(now - 900_000 + i * 300_000, true);
        let file = format!(
            "pH\t7,2{i}\tpH\t{t}\t00\r\nCOD\t6{i},5\tmg/L\t{t}\t00\r\nTSS\t1{i}\tmg/L\t{t}\t00\r\n"
        );
        mqtt.publish(
            "ioc/v1/stations/DLK_NEW_1/file",
            QoS::AtLeastOnce,
            false,
            file,
        )
        .await?;
    }
    env.eventually(
        "the unknown devices' messages to be dead-lettered",
        Duration::from_secs(30),
        || async {
            let n = env.metric(env.ingest_metrics_port, unknown).await?;
            Ok((n >= before + 7.0).then_some(()))
        },
    )
    .await?;

    let (http, base) = (&env.http, env.api(""));
    let installer = issue(http, &base, TOKEN, "installer", "lan-installer").await?;
    for registration in [
        json!({"device_id": "aqf-new", "kind": "air_quality", "name": "Sensor behind gw-9",
            "lat": 12.67, "lon": 108.04, "expected_interval_s": 60,
            "external_ids": {"imei": "869000000000001"}, "decoder": "vendor-flat",
            "vendor_profile": "flat-gateway"}),
        json!({"device_id": "ww-new", "kind": "wastewater", "name": "New discharge station",
            "lat": 12.70, "lon": 108.10, "expected_interval_s": 300,
            "external_ids": {"station_code": "DLK_NEW_1"}, "decoder": "tt10-station"}),
    ] {
        register_as(http, &base, &installer, registration).await?;
    }
    // An operator may not replay; an unknown device has nothing to replay.
    let operator = issue(http, &base, TOKEN, "operator", "wall").await?;
    let (status, _) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/devices/aqf-new/replay",
        &operator,
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/devices/nobody/replay",
        &installer,
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for (device, messages, readings) in [("aqf-new", 5, 10), ("ww-new", 2, 6)] {
        let path = format!("/api/v1/devices/{device}/replay");
        let (status, report) = call(http, &base, Method::POST, &path, &installer, None).await?;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(
            (
                &report["messages"],
                &report["readings"],
                &report["already_replayed"]
            ),
            (&json!(messages), &json!(readings), &json!(0)),
            "{report}"
        );
    }
    for (device, readings) in [("aqf-new", 10), ("ww-new", 6)] {
        env.eventually("the replayed readings", Duration::from_secs(60), || async {
            Ok((stored(&env, device).await? >= readings).then_some(()))
        })
        .await?;
    }
    // Again: nothing new is produced. What a second replay produced would be on each device's
    // partition before a message the device sends afterwards, so once that message is stored
    // the stream has been through anything the replay made; a resent reading would show in its
    // resend counter (merges can fold a doubled row before it is counted).
    let resends = "ioc_stream_duplicate_readings_total";
    let resent_before = env.metric(env.stream_metrics_port, resends).await?;
    for (device, messages) in [("aqf-new", 5), ("ww-new", 2)] {
        let path = format!("/api/v1/devices/{device}/replay");
        let (status, report) = call(http, &base, Method::POST, &path, &installer, None).await?;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(
            (&report["messages"], &report["already_replayed"]),
            (&json!(0), &json!(messages)),
            "{report}"
        );
    }
    let after = ioc_contract::time::now_ms();
    mqtt.publish(
        "ioc/v1/gateways/gw-9/flat",
        QoS::AtLeastOnce,
        false,
        format!(
            r#"{{"imei":"869000000000001","time":"{}","PM2_5":"9"}}"#,
            local(after, false)
        ),
    )
    .await?;
    let t = local(after, true);
    mqtt.publish(
        "ioc/v1/stations/DLK_NEW_1/file",
        QoS::AtLeastOnce,
        false,
        format!("pH\t7,5\tpH\t{t}\t00\r\n"),
    )
    .await?;
    for (device, readings) in [("aqf-new", 11), ("ww-new", 7)] {
        env.eventually(
            "the message sent after the replay",
            Duration::from_secs(60),
            || async { Ok((stored(&env, device).await? >= readings).then_some(())) },
        )
        .await?;
        assert_eq!(
            stored(&env, device).await?,
            readings,
            "{device}: each replayed reading stored once"
        );
    }
    assert_eq!(
        env.metric(env.stream_metrics_port, resends).await?,
        resent_before,
        "the second replay resent nothing"
    );
    let values = env
        .get_json(&format!(
            "/api/v1/readings?device_id=aqf-new&metric=co&from={}",
            now - 700_000
        ))
        .await?;
    let co: Vec<f64> = values["readings"]
        .as_array()
        .context("readings")?
        .iter()
        .filter_map(|r| r["value"].as_f64())
        .collect();
    assert_eq!(
        co,
        [1000.0, 1100.0, 1200.0, 1300.0, 1400.0],
        "CO mg/m³ → µg/m³, in time order"
    );
    let audit = env
        .get_json("/api/v1/audit?device_id=aqf-new&action=device.replayed")
        .await?;
    let entries = audit["entries"].as_array().context("entries")?;
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(
        (&entries[0]["by"], &entries[0]["detail"]["messages"]),
        (&json!("lan-installer"), &json!(5))
    );
    Ok(())
}

/// The next JSON text frame of a websocket, within 20 s.
pub(crate) async fn next_frame<S>(live: &mut S) -> Result<serde_json::Value>
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), live.next())
            .await
            .context("a websocket frame within 20 s")?
            .context("socket open")??;
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// The items of a commissioning checklist: name → (status, evidence).
fn items(list: &serde_json::Value) -> std::collections::BTreeMap<String, (String, String)> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["item"].as_str().unwrap_or_default().to_string(),
                        (
                            i["status"].as_str().unwrap_or_default().to_string(),
                            i["evidence"].as_str().unwrap_or_default().to_string(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An installer's session on site, on the real Mosquitto: the new device's checklist starts at
/// "no message yet"; the broker reports it connecting; its first messages at its interval turn
/// every item green. A second, faulty device shows which item fails and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installer_sees_a_new_device_go_from_nothing_to_ready() -> Result<()> {
    let env = Env::new("commissioning", "")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    let (http, base) = (&env.http, env.api(""));
    let installer = issue(http, &base, TOKEN, "installer", "lan-installer").await?;
    // Each device logs in with the account its registration returned.
    let mut logins = Vec::new();
    for (id, commune) in [("aq-site", Some("Phường Tân Lập")), ("aq-bad", None)] {
        let mut registration = json!({"device_id": id, "kind": "air_quality",
            "name": "On site", "lat": 12.68, "lon": 108.05, "expected_interval_s": 1});
        if let Some(c) = commune {
            registration["commune"] = json!(c);
        }
        let shown = register_as(http, &base, &installer, registration).await?;
        logins.push(device_login(&shown["mqtt"], env.mqtt_port)?);
    }
    env.wait_ingest_knows_registered().await?;
    let checklist = |id: &'static str| {
        let installer = installer.clone();
        let base = base.clone();
        async move {
            let path = format!("/api/v1/devices/{id}/commissioning");
            let (status, list) = call(http, &base, Method::GET, &path, &installer, None).await?;
            anyhow::ensure!(status == StatusCode::OK, "{list}");
            Ok::<_, anyhow::Error>(list)
        }
    };

    let list = checklist("aq-site").await?;
    assert_eq!(list["verdict"], "in_progress", "{list}");
    let first = items(&list);
    assert_eq!(
        first["first_message"],
        ("pending".into(), "no message yet".into())
    );
    assert_eq!(first["connected"].0, "pending", "{list}");
    assert_eq!(first["location_set"].0, "pass", "{list}");

    // The device connects (client id = device id) before it sends anything.
    let (device, mut events) = rumqttc::AsyncClient::new(logins[0].clone(), 100);
    let _poll = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let connected = env
        .eventually(
            "the broker to report the connection",
            Duration::from_secs(20),
            || async {
                let list = checklist("aq-site").await?;
                let (status, evidence) = items(&list)["connected"].clone();
                Ok((status == "pass").then_some(evidence))
            },
        )
        .await?;
    assert!(
        connected.starts_with("client aq-site connected at"),
        "{connected}"
    );
    assert_eq!(
        items(&checklist("aq-site").await?)["first_message"].0,
        "pending"
    );

    // The installer watches the device live: the checklist first, then each message as
    // received and what ingest made of it.
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/devices/aq-site/live?token={installer}",
        env.api_port
    );
    let (mut live, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let first_frame = next_frame(&mut live).await?;
    assert_eq!(first_frame["stream"], "checklist", "{first_frame}");
    assert_eq!(first_frame["data"]["device_id"], "aq-site");

    // Four good messages, one a second: its expected interval.
    let topic = ioc_contract::telemetry_topic("aq-site");
    let mut bodies = Vec::new();
    for i in 0..4 {
        let body = format!(
            r#"{{"ts":{},"values":{{"pm25":1{i}.5,"pm10":2{i}}}}}"#,
            ioc_contract::time::now_ms()
        );
        bodies.push(body.clone());
        device
            .publish(topic.as_str(), QoS::AtLeastOnce, false, body)
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let tapped = loop {
        let frame = next_frame(&mut live).await?;
        if frame["stream"] == "device" && frame.get("op").is_none() {
            break frame;
        }
    };
    assert_eq!(tapped["data"]["raw_text"], json!(bodies[0]), "{tapped}");
    assert_eq!(tapped["data"]["topic"], json!(topic), "{tapped}");
    let metrics: Vec<&str> = tapped["data"]["readings"]
        .as_array()
        .context("readings")?
        .iter()
        .filter_map(|r| r["metric"].as_str())
        .collect();
    assert_eq!(metrics.len(), 2, "{tapped}");
    assert!(
        metrics.contains(&"pm25") && metrics.contains(&"pm10"),
        "{tapped}"
    );
    let list = env
        .eventually("every item to pass", Duration::from_secs(20), || async {
            let list = checklist("aq-site").await?;
            Ok((list["verdict"] == "ready").then_some(list))
        })
        .await?;
    let done = items(&list);
    assert!(
        done["values_in_range"].1.contains("pm25=13.5 µg/m³"),
        "{list}"
    );
    assert!(
        done["reporting_interval"].1.starts_with("median gap 1."),
        "{list}"
    );

    // The faulty one: no commune, a metric nobody knows, and a value below zero.
    let (bad, mut bad_events) = rumqttc::AsyncClient::new(logins[1].clone(), 100);
    let _bad_poll = tokio::spawn(async move { while bad_events.poll().await.is_ok() {} });
    let body = format!(
        r#"{{"ts":{},"values":{{"pm25":-40,"xyz":1}}}}"#,
        ioc_contract::time::now_ms()
    );
    bad.publish(
        ioc_contract::telemetry_topic("aq-bad").as_str(),
        QoS::AtLeastOnce,
        false,
        body,
    )
    .await?;
    let list = env
        .eventually(
            "the faulty device's message",
            Duration::from_secs(20),
            || async {
                // The message's rejection and its readings come on different topics, in
                // either order: wait for both.
                let list = checklist("aq-bad").await?;
                let seen = items(&list);
                Ok(
                    (seen["decoding"].0 == "fail" && seen["values_in_range"].0 != "pending")
                        .then_some(list),
                )
            },
        )
        .await?;
    assert_eq!(list["verdict"], "failing", "{list}");
    let failed = items(&list);
    assert!(
        failed["decoding"].1.contains("xyz: unknown_metric"),
        "{list}"
    );
    assert_eq!(failed["values_in_range"].0, "fail", "{list}");
    assert!(
        failed["values_in_range"]
            .1
            .contains("pm25=-40 µg/m³ is bad"),
        "{list}"
    );
    assert_eq!(failed["location_set"].0, "fail", "{list}");
    assert!(
        failed["location_set"].1.contains("commune not set"),
        "{list}"
    );
    Ok(())
}

/// Per-device accounts on the real Mosquitto (dynamic security plugin): registration returns a
/// login that works for the device's own topic only; the broker refuses its publish on another
/// device's topic (PUBACK 0x87 over MQTT 5), another client id, and an account name that is
/// not a device's; revoking disconnects the device and refuses it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_accounts_on_mosquitto_allow_only_the_devices_own_topics() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};

    let env = Env::new("accounts", "")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    let (http, base) = (&env.http, env.api(""));
    let installer = issue(http, &base, TOKEN, "installer", "lan-installer").await?;
    let mut logins = Vec::new();
    for id in ["aq-acct", "aq-neighbour"] {
        let shown = register_as(
            http,
            &base,
            &installer,
            json!({"device_id": id, "kind": "air_quality", "name": id, "lat": 12.68,
                   "lon": 108.05, "expected_interval_s": 60, "decoder": "ioc-json",
                   "status": "active"}),
        )
        .await?;
        assert_eq!(
            shown["mqtt"]["topic"],
            json!(ioc_contract::telemetry_topic(id)),
            "{shown}"
        );
        logins.push(shown["mqtt"].clone());
    }
    // A device id that names an account the operators made is refused, not taken over.
    let (status, body) = call(
        http,
        &base,
        Method::POST,
        "/api/v1/devices",
        TOKEN,
        Some(
            json!({"device_id": crate::harness::FLEET.0, "kind": "air_quality",
                    "name": "x", "lat": 12.68, "lon": 108.05, "expected_interval_s": 60}),
        ),
    )
    .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let fleet =
        env.dynsec(json!([{"command": "getClient", "username": crate::harness::FLEET.0}]))?;
    assert_eq!(
        fleet[0]["data"]["client"]["roles"],
        json!([{"rolename": crate::harness::FLEET.0}]),
        "the operators' account is untouched"
    );
    env.wait_ingest_knows_registered().await?;
    env.wait_ingest_subscribed().await?;

    let login = |mqtt: &serde_json::Value, client_id: Option<&str>| {
        let field = |n: &str| mqtt[n].as_str().unwrap_or_default().to_string();
        let mut options = MqttOptions::new(
            client_id.map_or_else(|| field("client_id"), str::to_string),
            "127.0.0.1",
            env.mqtt_port,
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_credentials(field("username"), field("password"));
        options
    };
    // Another client id with the device's login: refused.
    let (_c, mut refused) = AsyncClient::new(login(&logins[0], Some("impostor")), 10);
    match tokio::time::timeout(Duration::from_secs(10), refused.poll()).await? {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => {}
        other => anyhow::bail!("another client id was not refused: {other:?}"),
    }

    // The device's connection, driven in the background: its PUBACK reasons, and when it ends.
    let (device, mut events) = AsyncClient::new(login(&logins[0], None), 10);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let _ = seen_tx.send(Some(ack.reason));
                }
                Ok(Event::Incoming(Packet::Disconnect(_))) | Err(_) => {
                    let _ = seen_tx.send(None);
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    let now = ioc_contract::time::now_ms();
    let publish = |topic: String, value: i32| {
        let device = device.clone();
        async move {
            device
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"ts":{now},"values":{{"pm25":{value}}}}}"#),
                )
                .await
        }
    };
    let mut acks = Vec::new();
    for (topic, value) in [
        (ioc_contract::telemetry_topic("aq-acct"), 11),
        (ioc_contract::telemetry_topic("aq-neighbour"), 99),
    ] {
        publish(topic, value).await?;
        acks.push(
            tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await?
                .flatten()
                .context("a PUBACK")?,
        );
    }
    assert_eq!(
        acks,
        [PubAckReason::Success, PubAckReason::NotAuthorized],
        "its own topic, then its neighbour's"
    );
    let window = format!("from={}&to={}", now - 1, now + 1);
    let stored = env
        .eventually("the device's reading", Duration::from_secs(30), || async {
            let r = env
                .get_json(&format!("/api/v1/readings?device_id=aq-acct&{window}"))
                .await?;
            Ok((!r["readings"].as_array().is_none_or(|a| a.is_empty())).then_some(r))
        })
        .await?;
    assert_eq!(stored["readings"][0]["value"], json!(11.0), "{stored}");
    // (Published after its own, which is stored: had the broker passed it on, ingest would
    // have taken it first.)
    let neighbour = env
        .get_json(&format!("/api/v1/readings?device_id=aq-neighbour&{window}"))
        .await?;
    assert_eq!(neighbour["readings"], json!([]), "{neighbour}");

    // Revoked: the broker disconnects it at once and refuses it after. Connected until then.
    publish(ioc_contract::telemetry_topic("aq-acct"), 12).await?;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), seen.recv()).await?,
        Some(Some(PubAckReason::Success)),
        "still connected before the revocation"
    );
    let path = "/api/v1/devices/aq-acct/credentials";
    let (status, _) = call(http, &base, Method::DELETE, path, &installer, None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), seen.recv()).await?,
        Some(None),
        "the revoked device's connection ended"
    );
    let (_c, mut again) = AsyncClient::new(login(&logins[0], None), 10);
    match tokio::time::timeout(Duration::from_secs(10), again.poll()).await? {
        Err(ConnectionError::ConnectionRefused(_)) => {}
        other => anyhow::bail!("a revoked account was let in: {other:?}"),
    }
    let shown = env.get_json("/api/v1/devices/aq-acct").await?;
    assert!(shown["mqtt"].is_null(), "{shown}");
    // Rotating gives it a new account that works; the neighbour's was never touched.
    let (status, rotated) = call(http, &base, Method::POST, path, &installer, None).await?;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let (_c, mut back) = AsyncClient::new(login(&rotated["mqtt"], None), 10);
    let (_n, mut neighbour) = AsyncClient::new(login(&logins[1], None), 10);
    for events in [&mut back, &mut neighbour] {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await?? {
            Event::Incoming(Packet::ConnAck(_)) => {}
            other => anyhow::bail!("expected a CONNACK, got {other:?}"),
        }
    }
    Ok(())
}
