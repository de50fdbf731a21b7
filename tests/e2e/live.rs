//! The live websocket on the real pipeline: two API instances on one Kafka-protocol bus, a
//! client that drops and resumes on the other instance.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use rumqttc::QoS;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{free_port, Env, TOKEN};
use crate::pipeline::start_pipeline;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16) -> Result<Socket> {
    let url = format!("ws://127.0.0.1:{port}/api/v1/ws?token={TOKEN}");
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

async fn next(ws: &mut Socket) -> Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .context("a frame within 20 s")?
            .context("socket open")??;
        if let Message::Text(text) = frame {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// The next frame with `op`, or a data frame for `op` "data", within 30 s.
async fn expect(ws: &mut Socket, op: &str) -> Result<Value> {
    let wait = async {
        loop {
            let v = next(ws).await?;
            match v["op"].as_str() {
                None if op == "data" => return Ok(v),
                Some(o) if o == op => return Ok(v),
                Some("error") => bail!("error frame: {v}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .with_context(|| format!("a {op:?} frame within 30 s"))?
}

/// A client's position: the last `subscribed` position, each data frame's `pos` merged in.
fn merge(position: &mut Vec<Value>, pos: &Value) {
    position.retain(|p| p[0] != pos[0]);
    position.push(pos.clone());
}

fn value(frame: &Value) -> i64 {
    frame["data"]["value"].as_f64().unwrap_or(-1.0) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_instances_give_the_same_positions_and_a_client_resumes_on_the_other_without_a_gap(
) -> Result<()> {
    let env = Env::new("live", "")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    let second = free_port();
    let _api2 = env.ioc_with_env(
        "api-2",
        &["api"],
        &[("IOC_API__LISTEN", format!("127.0.0.1:{second}"))],
    )?;
    env.wait_http(
        &format!("http://127.0.0.1:{second}/healthz"),
        Duration::from_secs(60),
    )
    .await?;
    env.register("aq-live", "air_quality").await?;
    env.wait_ingest_knows_registered().await?;

    let subscribe = json!({"op": "subscribe", "stream": "readings", "device_ids": ["aq-live"]});
    let (mut a, mut b) = (connect(env.api_port).await?, connect(second).await?);
    a.send(Message::Text(subscribe.to_string().into())).await?;
    b.send(Message::Text(subscribe.to_string().into())).await?;
    let (sa, sb) = (
        expect(&mut a, "subscribed").await?,
        expect(&mut b, "subscribed").await?,
    );
    assert_eq!(sa["epoch"], sb["epoch"], "one epoch for one bus: {sa} {sb}");
    assert!(sa["epoch"].as_str().is_some_and(|e| e.len() == 16), "{sa}");

    let (mqtt, _poll) = env.mqtt_client("test-live-device");
    let topic = ioc_contract::telemetry_topic("aq-live");
    // Distinct stamps (a tight loop can repeat a millisecond: the same reading key).
    let base = ioc_contract::time::now_ms();
    let publish = |value: i64| {
        let body = format!(
            r#"{{"ts":{},"values":{{"pm25":{value}}}}}"#,
            base + value * 10
        );
        let mqtt = mqtt.clone();
        let topic = topic.clone();
        async move {
            mqtt.publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .map_err(anyhow::Error::from)
        }
    };
    for v in 0..20 {
        publish(v).await?;
    }
    let mut position: Vec<Value> = sa["position"].as_array().context("position")?.clone();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (fa, fb) = (expect(&mut a, "data").await?, expect(&mut b, "data").await?);
        assert_eq!(
            fa["pos"], fb["pos"],
            "the same message at the same position on both"
        );
        merge(&mut position, &fa["pos"]);
        got_a.push(value(&fa));
        got_b.push(value(&fb));
    }
    assert_eq!(got_a, (0..20).collect::<Vec<_>>(), "in order, each once");
    assert_eq!(got_a, got_b);

    // The first client's network drops; ten messages go by; it reconnects to the other
    // instance with its position.
    drop(a);
    for v in 20..30 {
        publish(v).await?;
    }
    for _ in 20..30 {
        expect(&mut b, "data").await?;
    }
    let epoch = sa["epoch"].clone();
    let mut a = connect(second).await?;
    let recover = json!({"op": "subscribe", "stream": "readings", "device_ids": ["aq-live"],
        "recover": {"epoch": epoch, "position": position}});
    a.send(Message::Text(recover.to_string().into())).await?;
    let resumed = expect(&mut a, "subscribed").await?;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let missed: Vec<i64> = resumed["missed"]
        .as_array()
        .context("missed")?
        .iter()
        .map(value)
        .collect();
    assert_eq!(
        missed,
        (20..30).collect::<Vec<_>>(),
        "exactly what it missed"
    );
    publish(30).await?;
    assert_eq!(value(&expect(&mut a, "data").await?), 30, "then live");

    // From a bus whose history is gone (another epoch): a reset and the latest values.
    let stale = json!({"op": "subscribe", "stream": "readings", "device_ids": ["aq-live"],
        "recover": {"epoch": "0000000000000000", "position": position}});
    a.send(Message::Text(stale.to_string().into())).await?;
    let reset = expect(&mut a, "reset").await?;
    assert!(
        reset["reason"].as_str().unwrap_or("").contains("epoch"),
        "{reset}"
    );
    let fresh = expect(&mut a, "subscribed").await?;
    let snapshot: Vec<i64> = fresh["snapshot"]
        .as_array()
        .context("snapshot")?
        .iter()
        .map(value)
        .collect();
    assert_eq!(snapshot, [30], "the latest pm25 of aq-live");

    // The fleet map: one row per device, its latest values from the same live feed (this
    // instance's: it may be a fetch wait behind the other one).
    let map_url = env.api("/api/v1/map?kind=air_quality");
    let map = env
        .eventually(
            "aq-live's pm25 30 on the map",
            Duration::from_secs(10),
            || async {
                let map = crate::harness::get_json(&env.http, &map_url, TOKEN).await?;
                let at_30 = map["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r[0] == "aq-live" && r[6]["pm25"] == 30.0);
                Ok(at_30.then_some(map))
            },
        )
        .await?;
    let fields: Vec<&str> = map["fields"]
        .as_array()
        .context("fields")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "device_id",
            "kind",
            "lat",
            "lon",
            "status",
            "online",
            "latest",
            "aqi_1h",
            "open_alerts",
            "violations_1h",
            "congestion"
        ],
        "{map}"
    );
    let row = map["devices"]
        .as_array()
        .context("devices")?
        .iter()
        .find(|r| r[0] == "aq-live")
        .context("aq-live on the map")?;
    let online = fields
        .iter()
        .position(|f| *f == "online")
        .context("online")?;
    assert_eq!(row[online], true, "{row}");
    let none = crate::harness::get_json(
        &env.http,
        &env.api("/api/v1/devices?kind=wastewater"),
        TOKEN,
    )
    .await?;
    assert!(!none.to_string().contains("aq-live"), "{none}");
    let bad = env
        .http
        .get(env.api("/api/v1/devices?online=maybe"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(bad.status(), 400);

    // History of the same readings from ClickHouse: downsampled, by area, and as CSV.
    let series_url = env.api(&format!(
        "/api/v1/readings?bbox=12.6,108.0,12.7,108.1&metric=pm25&points=3&from={}",
        ioc_contract::time::now_ms() - 600_000
    ));
    let series = env
        .eventually("31 readings stored", Duration::from_secs(30), || async {
            let v = crate::harness::get_json(&env.http, &series_url, TOKEN).await?;
            let count: u64 = v["series"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["device_id"] == "aq-live")
                .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
                .map(|p| p["count"].as_u64().unwrap_or(0))
                .sum();
            Ok((count == 31).then_some(v))
        })
        .await?;
    let points = series["series"][0]["points"].as_array().context("points")?;
    assert!(points.len() <= 3, "{series}");
    let max = points
        .iter()
        .filter_map(|p| p["max"].as_f64())
        .fold(0.0, f64::max);
    assert_eq!(max, 30.0, "{series}");
    let csv = env
        .http
        .get(env.api("/api/v1/readings?device_id=aq-live&from=0"))
        .bearer_auth(TOKEN)
        .header("Accept", "text/csv")
        .send()
        .await?;
    assert_eq!(
        csv.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );
    let text = csv.text().await?;
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap_or("")
            .starts_with("device_id,channel,metric,ts,"),
        "{text}"
    );
    assert_eq!(lines.count(), 31, "one line per stored reading: {text}");
    // Device status: a snapshot of the registry, then each change, live, filtered by kind.
    let mut watch = connect(second).await?;
    let subscribe = json!({"op": "subscribe", "stream": "status", "kinds": ["air_quality"]});
    watch
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    let subscribed = expect(&mut watch, "subscribed").await?;
    let snapshot = subscribed["snapshot"].as_array().context("snapshot")?;
    let mine: Vec<&Value> = snapshot
        .iter()
        .filter(|f| f["data"]["device_id"] == "aq-live")
        .collect();
    assert_eq!(mine.len(), 1, "{subscribed}");
    assert_ne!(mine[0]["data"]["status"], "maintenance", "{subscribed}");
    let (status, body) = crate::access::call(
        &env.http,
        &env.api(""),
        reqwest::Method::PATCH,
        "/api/v1/devices/aq-live",
        TOKEN,
        Some(json!({"status": "maintenance"})),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let changed = expect(&mut watch, "data").await?;
    assert_eq!(changed["stream"], "status", "{changed}");
    assert_eq!(
        (&changed["data"]["device_id"], &changed["data"]["status"]),
        (&json!("aq-live"), &json!("maintenance")),
        "{changed}"
    );
    // Open data: no token, stations only, CSV too, and rate limited per address.
    let open = env.http.get(env.api("/open/v1/stations")).send().await?;
    assert_eq!(open.status(), 200);
    let stations: Value = open.json().await?;
    assert!(stations.to_string().contains("aq-live"), "{stations}");
    assert!(
        !stations.to_string().contains("mqtt"),
        "no credentials: {stations}"
    );
    let listed = env
        .http
        .get(env.api("/open/v1/stations?format=csv"))
        .send()
        .await?;
    assert_eq!(listed.status(), 200);
    let text = listed.text().await?;
    assert!(text.starts_with("device_id,"), "{text}");
    assert!(text.contains("aq-live,"), "{text}");
    let hourly = env
        .http
        .get(env.api("/open/v1/aggregates?device_id=aq-live&resolution=2h"))
        .send()
        .await?;
    assert_eq!(hourly.status(), 400, "hourly or daily only");
    let mut limited = 0;
    for _ in 0..30 {
        let r = env.http.get(env.api("/open/v1/stations")).send().await?;
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "past the burst (20), refused with 429");
    let wrong = env
        .http
        .get(env.api("/api/v1/aqi?points=5"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(wrong.status(), 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_connection_cap_is_closed_with_the_reason() -> Result<()> {
    let env = Env::new(
        "live_caps",
        "[api.ws]\nmax_connections_per_token = 2\n[api.open_data]\nenabled = false\n",
    )?;
    let _api = env.ioc("api", &["api"])?;
    env.wait_http(&env.api("/healthz"), Duration::from_secs(60))
        .await?;
    // Two admitted (each answered), then a third.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(env.api_port).await?;
        ws.send(Message::Text(
            r#"{"op":"subscribe","stream":"alerts"}"#.into(),
        ))
        .await?;
        expect(&mut ws, "subscribed").await?;
        open.push(ws);
    }
    let mut c = connect(env.api_port).await?;
    let closed = expect(&mut c, "closed").await?;
    assert!(
        closed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("max_connections_per_token"),
        "{closed}"
    );
    let frame = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await?
        .context("a close frame")??;
    match frame {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4002),
        other => bail!("a close frame, not {other:?}"),
    }
    // Open data switched off here.
    let off = env.http.get(env.api("/open/v1/stations")).send().await?;
    assert_eq!(off.status(), 404);
    assert!(off.text().await?.contains("api.open_data.enabled"));
    Ok(())
}
