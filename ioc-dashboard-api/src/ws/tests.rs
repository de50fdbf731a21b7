use super::*;
use futures::channel::mpsc as fmpsc;
use serde_json::Value;

fn metrics() -> ApiMetrics {
    ApiMetrics::register(&prometheus::Registry::new()).unwrap()
}

fn limits() -> WsConfig {
    WsConfig {
        max_connections_per_token: 2,
        max_subscriptions_per_token: 3,
        ..WsConfig::default()
    }
}

fn reading(device: &str, metric: &str, value: f64) -> ioc_contract::Reading {
    ioc_contract::Reading {
        device_id: device.into(),
        channel: String::new(),
        metric: metric.into(),
        ts: 1_795_680_000_000,
        value,
        unit: "µg/m³".into(),
        interval_s: None,
        quality: ioc_contract::Quality::Good,
        quality_reason: String::new(),
        received_at: 1_795_680_000_000,
        message_id: "m".into(),
    }
}

/// Publishes a reading of `device`'s pm25 worth `offset` at partition 0, offset `offset`.
fn publish(hub: &LiveHub, device: &str, offset: i64) {
    hub.publish(LiveMessage::reading(
        &reading(device, "pm25", offset as f64),
        Pos(0, offset, 0),
    ));
}

struct Client {
    to_server: fmpsc::UnboundedSender<ClientFrame>,
    from_server: fmpsc::Receiver<OutFrame>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn send(&self, text: &str) {
        self.to_server
            .unbounded_send(ClientFrame::Text(text.into()))
            .unwrap();
    }

    async fn frame(&mut self) -> OutFrame {
        // Long enough for the paused clock's heartbeats too.
        tokio::time::timeout(Duration::from_secs(60), self.from_server.next())
            .await
            .expect("a frame within 60 s")
            .expect("session open")
    }

    /// The next text frame (pings skipped).
    async fn next(&mut self) -> Value {
        loop {
            match self.frame().await {
                OutFrame::Text(t) => return serde_json::from_str(&t).unwrap(),
                OutFrame::Ping => continue,
                OutFrame::Close(code, reason) => panic!("closed {code}: {reason}"),
            }
        }
    }

    /// The next frame with `op` (data frames have none), skipping others.
    async fn op(&mut self, op: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["op"] == op {
                return v;
            }
        }
    }

    /// The next data frame.
    async fn data(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v.get("op").is_none() {
                return v;
            }
        }
    }
}

/// A session on `hub` whose client reads through a channel of `room` frames (a small room and
/// no reading: a stalled client).
fn connect_with(
    hub: &LiveHub,
    caps: &Caps,
    token: &str,
    limits: WsConfig,
    metrics: ApiMetrics,
    room: usize,
) -> Client {
    let (to_server, incoming) = fmpsc::unbounded();
    let (out, from_server) = fmpsc::channel::<OutFrame>(room);
    let setup = Setup {
        hub: hub.clone(),
        metrics,
        admission: caps.admit(token, &limits).expect("admitted"),
        limits,
        first: Vec::new(),
        subscriptions: Vec::new(),
        token_live: || true,
    };
    let task = tokio::spawn(session(out, incoming, setup));
    Client {
        to_server,
        from_server,
        task,
    }
}

fn connect(hub: &LiveHub) -> Client {
    connect_with(hub, &Caps::default(), "t", limits(), metrics(), 10_000)
}

/// A hub whose streams have one partition, read from its start.
fn hub() -> LiveHub {
    let hub = LiveHub::new(1024, 1 << 20);
    hub.set_epoch("e1");
    for stream in StreamName::ALL {
        hub.start_stream(stream, &[0]);
    }
    hub
}

/// A client's position: the last `subscribed` one, each data frame's `pos` merged in.
fn merge(position: &mut Vec<Value>, pos: &Value) {
    position.retain(|p| p[0] != pos[0]);
    position.push(pos.clone());
}

fn values(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| f["data"]["value"].as_f64().unwrap() as i64)
        .collect()
}

#[tokio::test]
async fn delivers_only_subscribed_streams_and_devices() {
    let hub = hub();
    let mut client = connect(&hub);
    client.send(r#"{"op":"subscribe","stream":"readings","device_ids":["aq-2"]}"#);
    let s = client.op("subscribed").await;
    assert_eq!(
        (s["epoch"].as_str(), s["snapshot"].as_array().map(Vec::len)),
        (Some("e1"), Some(0))
    );
    publish(&hub, "aq-1", 1);
    hub.publish(LiveMessage::new(
        StreamName::Alerts,
        Pos(0, 1, 0),
        "aq-2",
        &json!({"n": 2}),
    ));
    publish(&hub, "aq-2", 2);
    let m = client.data().await;
    assert_eq!(
        (m["stream"].as_str(), m["data"]["device_id"].as_str()),
        (Some("readings"), Some("aq-2"))
    );
    assert_eq!(m["pos"], json!([0, 2, 0]));
}

#[tokio::test]
async fn filters_by_kind_commune_bbox_and_metric() {
    let hub = hub();
    let device = |id: &str, kind: &str, commune: &str, lat: f64| {
        Arc::new(ioc_contract::Device {
            device_id: id.into(),
            kind: kind.into(),
            commune: Some(commune.into()),
            lat,
            lon: 108.0,
            ..Default::default()
        })
    };
    let mut client = connect(&hub);
    client.send(r#"{"op":"subscribe","stream":"readings","kinds":["air_quality"],"communes":["Buôn Ma Thuột"],"bbox":[12.0,107.0,13.0,109.0],"metrics":["pm25"]}"#);
    client.op("subscribed").await;
    let cases = [
        (device("a", "wastewater", "Buôn Ma Thuột", 12.6), "pm25"),
        (device("b", "air_quality", "Ea Kar", 12.6), "pm25"),
        (device("c", "air_quality", "Buôn Ma Thuột", 13.5), "pm25"),
        (device("d", "air_quality", "Buôn Ma Thuột", 12.6), "pm10"),
        (device("e", "air_quality", "Buôn Ma Thuột", 12.6), "pm25"),
    ];
    for (i, (d, metric)) in cases.into_iter().enumerate() {
        let mut m = LiveMessage::reading(&reading(&d.device_id, metric, 1.0), Pos(0, i as i64, 0));
        m.device = Some(d);
        hub.publish(m);
    }
    assert_eq!(
        client.data().await["data"]["device_id"],
        "e",
        "only e matches every part"
    );
}

#[tokio::test]
async fn the_aqi_stream_is_hourly_unless_it_names_daily_and_each_stream_keeps_its_resolution() {
    let aqi = |resolution: &str, aqi: u32| ioc_history::AqiRow {
        device_id: "aq-1".into(),
        resolution: resolution.into(),
        window_start: 0,
        window_end: 3_600_000,
        aqi: Some(aqi),
        dominant: "pm25".into(),
        pm25: Some(aqi),
        pm10: None,
        o3_1h: None,
        o3_8h: None,
        no2: None,
        so2: None,
        co: None,
        nowcast_pm25: Some(20.27),
        nowcast_pm10: None,
        valid_hours: None,
        grade: "reference".into(),
        low_capture: String::new(),
        version: 1,
    };
    let hub = hub();
    let mut client = connect(&hub);
    client.send(r#"{"op":"subscribe","stream":"aqi"}"#);
    assert_eq!(client.op("subscribed").await["resolution"], "1h");
    client.send(r#"{"op":"subscribe","stream":"aggregates","resolution":"1d"}"#);
    assert_eq!(client.op("subscribed").await["resolution"], "1d");
    hub.publish(LiveMessage::aqi(&aqi("1d", 1), Pos(0, 0, 0)));
    hub.publish(LiveMessage::aqi(&aqi("1h", 41), Pos(0, 1, 0)));
    let m = client.data().await;
    assert_eq!(
        (
            m["stream"].as_str(),
            m["data"]["aqi"].as_u64(),
            m["data"]["band"]["colour"].as_str(),
            m["data"]["nowcast_pm25"].as_f64()
        ),
        (Some("aqi"), Some(41), Some("#00e400"), Some(20.3)),
        "the aggregates stream's 1d does not change the aqi stream's 1h"
    );
    client.send(r#"{"op":"subscribe","stream":"aqi","resolution":"1m"}"#);
    let e = client.op("error").await;
    assert!(e["message"].as_str().unwrap().contains("1h, 1d"), "{e}");
}

#[tokio::test]
async fn bad_requests_get_a_precise_error_and_the_session_goes_on() {
    let hub = hub();
    let mut client = connect(&hub);
    for (request, says) in [
        ("nonsense", "bad request"),
        (
            r#"{"op":"subscribe","stream":"weather"}"#,
            "unknown variant",
        ),
        (
            r#"{"op":"subscribe","stream":"alerts","resolution":"1h"}"#,
            "resolution applies only",
        ),
        (
            r#"{"op":"subscribe","stream":"aggregates","resolution":"2h"}"#,
            "unknown variant",
        ),
        (
            r#"{"op":"subscribe","stream":"readings","bbox":[13,107,12,109]}"#,
            "south < north",
        ),
        (
            r#"{"op":"subscribe","stream":"alerts","max_rate":1}"#,
            "every one of its messages matters",
        ),
        (
            r#"{"op":"subscribe","stream":"readings","max_rate":0}"#,
            "positive number",
        ),
        (r#"{"op":"watch","stream":"readings"}"#, "unknown op"),
    ] {
        client.send(request);
        let e = client.op("error").await;
        assert!(
            e["message"].as_str().unwrap().contains(says),
            "{request}: {e}"
        );
    }
    client.send(r#"{"op":"subscribe","stream":"readings"}"#);
    assert_eq!(client.op("subscribed").await["stream"], "readings");
}

/// The boundary between snapshot and live, while messages keep coming: the client's values of
/// one key are every value from its snapshot's on, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_has_no_duplicate_and_no_gap_at_the_boundary() {
    let hub = LiveHub::new(100_000, 64 << 20);
    hub.set_epoch("e1");
    let publisher = {
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || {
            for offset in 1..=20_000 {
                publish(&hub, "aq-1", offset);
                if offset % 100 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    // Subscribe while the publisher runs.
    while hub
        .start(StreamName::Readings, &Filter::default(), None)
        .items
        .is_empty()
    {
        tokio::task::yield_now().await;
    }
    let roomy = WsConfig {
        queue_bytes: 64 << 20,
        ..limits()
    };
    let mut client = connect_with(&hub, &Caps::default(), "t", roomy, metrics(), 100_000);
    client.send(r#"{"op":"subscribe","stream":"readings"}"#);
    let s = client.op("subscribed").await;
    let snapshot = s["snapshot"].as_array().unwrap();
    assert_eq!(snapshot.len(), 1, "one device, one key: {s}");
    let first = values(snapshot)[0];
    assert!(
        first < 20_000,
        "subscribed while publishing (snapshot at {first})"
    );
    assert_eq!(s["position"], json!([[0, first, 0]]));
    publisher.await.unwrap();
    let mut expected = first + 1;
    while expected <= 20_000 {
        let m = client.data().await;
        assert_eq!(values(&[m]), [expected], "the next value, once");
        expected += 1;
    }
}

#[tokio::test]
async fn a_client_that_resumes_gets_exactly_what_it_missed_in_order() {
    let hub = hub();
    let mut client = connect(&hub);
    client.send(r#"{"op":"subscribe","stream":"readings","device_ids":["aq-1","aq-2"]}"#);
    let s = client.op("subscribed").await;
    let mut position: Vec<Value> = s["position"].as_array().unwrap().clone();
    for offset in 1..=3 {
        publish(&hub, "aq-1", offset);
    }
    for _ in 0..3 {
        let m = client.data().await;
        merge(&mut position, &m["pos"]);
    }
    assert_eq!(position, [json!([0, 3, 0])]);
    // The connection drops; messages go on, some for other devices.
    client.task.abort();
    for offset in 4..=9 {
        publish(&hub, if offset % 3 == 0 { "aq-9" } else { "aq-2" }, offset);
    }
    let mut again = connect(&hub);
    again.send(
        &json!({"op": "subscribe", "stream": "readings", "device_ids": ["aq-1", "aq-2"],
            "recover": {"epoch": "e1", "position": position}})
        .to_string(),
    );
    let s = again.op("subscribed").await;
    assert_eq!(s["recovered"], true, "{s}");
    assert_eq!(values(s["missed"].as_array().unwrap()), [4, 5, 7, 8], "{s}");
    assert_eq!(s["position"], json!([[0, 9, 0]]));
    publish(&hub, "aq-1", 10);
    assert_eq!(
        values(&[again.data().await]),
        [10],
        "then live, nothing twice"
    );
}

#[tokio::test]
async fn a_resume_from_history_this_instance_no_longer_has_is_reset_to_a_snapshot() {
    // Room for a few readings of history.
    let hub = LiveHub::new(1024, 2000);
    hub.set_epoch("e1");
    for offset in 1..=100 {
        publish(&hub, "aq-1", offset);
    }
    let mut client = connect(&hub);
    client.send(
        r#"{"op":"subscribe","stream":"readings","recover":{"epoch":"e1","position":[[0,2,0]]}}"#,
    );
    let reset = client.op("reset").await;
    assert!(
        reset["reason"]
            .as_str()
            .unwrap()
            .contains("older than this instance keeps"),
        "{reset}"
    );
    let s = client.op("subscribed").await;
    assert_eq!(
        (
            s["recovered"].as_bool(),
            values(s["snapshot"].as_array().unwrap())
        ),
        (Some(false), vec![100])
    );
    // Another epoch: the bus the position was of is gone.
    client.send(
        r#"{"op":"subscribe","stream":"readings","recover":{"epoch":"e0","position":[[0,99,0]]}}"#,
    );
    let reset = client.op("reset").await;
    assert!(
        reset["reason"].as_str().unwrap().contains("epoch"),
        "{reset}"
    );
    assert_eq!(client.op("subscribed").await["recovered"], false);
    // Recent enough: recovered.
    client.send(
        r#"{"op":"subscribe","stream":"readings","recover":{"epoch":"e1","position":[[0,99,0]]}}"#,
    );
    let s = client.next().await;
    assert_eq!(
        (s["op"].as_str(), values(s["missed"].as_array().unwrap())),
        (Some("subscribed"), vec![100]),
        "{s}"
    );
}

#[tokio::test]
async fn a_client_ahead_of_this_instance_is_not_sent_what_it_has() {
    let hub = hub();
    publish(&hub, "aq-1", 1);
    let mut client = connect(&hub);
    // It came from an instance that had read up to offset 3.
    client.send(
        r#"{"op":"subscribe","stream":"readings","recover":{"epoch":"e1","position":[[0,3,0]]}}"#,
    );
    let s = client.op("subscribed").await;
    assert_eq!(
        (s["recovered"].as_bool(), s["position"].clone()),
        (Some(true), json!([[0, 3, 0]]))
    );
    for offset in 2..=4 {
        publish(&hub, "aq-1", offset);
    }
    assert_eq!(values(&[client.data().await]), [4]);
}

#[tokio::test]
async fn a_filtered_client_learns_its_position_with_each_heartbeat() {
    let hub = hub();
    let limits = WsConfig {
        heartbeat: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(60),
        ..limits()
    };
    let mut client = connect_with(&hub, &Caps::default(), "t", limits, metrics(), 100);
    client.send(r#"{"op":"subscribe","stream":"readings","device_ids":["aq-1"]}"#);
    client.op("subscribed").await;
    publish(&hub, "aq-9", 5);
    let p = client.op("position").await;
    assert_eq!(
        (p["epoch"].as_str(), p["position"].clone()),
        (Some("e1"), json!([[0, 5, 0]]))
    );
}

#[tokio::test]
async fn conflation_sends_at_most_the_rate_and_always_the_latest_value() {
    let hub = hub();
    let mut client = connect(&hub);
    client.send(r#"{"op":"subscribe","stream":"readings","max_rate":2}"#);
    assert_eq!(client.op("subscribed").await["max_rate"], 2.0);
    let started = Instant::now();
    for i in 1..=200 {
        publish(&hub, "aq-1", 2 * i);
        publish(&hub, "aq-2", 2 * i + 1);
    }
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    while got.get("aq-1").and_then(|v| v.last()) != Some(&400)
        || got.get("aq-2").and_then(|v| v.last()) != Some(&401)
    {
        let m = client.data().await;
        let device = m["data"]["device_id"].as_str().unwrap().to_string();
        got.entry(device).or_default().extend(values(&[m]));
    }
    let elapsed = started.elapsed();
    for (device, v) in &got {
        // The first at once, then one per half second at most.
        let allowed = 1 + (elapsed.as_secs_f64() * 2.0).ceil() as usize;
        assert!(v.len() <= allowed, "{device}: {v:?} in {elapsed:?}");
        assert!(
            v.windows(2).all(|w| w[0] < w[1]),
            "{device}: in order {v:?}"
        );
    }
    assert_eq!(got["aq-1"][0], 2, "the first value goes at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_overflows_alone_and_is_resynchronized_once_it_reads() {
    let hub = LiveHub::new(100_000, 64 << 20);
    hub.set_epoch("e1");
    let m = metrics();
    let caps = Caps::default();
    let small = WsConfig {
        queue_bytes: 8192,
        ..limits()
    };
    // A client that reads nothing: its sink holds one frame.
    let mut stalled = connect_with(&hub, &caps, "a", small, m.clone(), 0);
    stalled.send(r#"{"op":"subscribe","stream":"readings"}"#);
    let mut fast = connect_with(&hub, &caps, "b", limits(), m.clone(), 10_000);
    fast.send(r#"{"op":"subscribe","stream":"readings"}"#);
    fast.op("subscribed").await;
    let n = 5_000;
    let started = Instant::now();
    for offset in 1..=n {
        publish(&hub, "aq-1", offset);
        if offset % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for expected in 1..=n {
        assert_eq!(
            values(&[fast.data().await]),
            [expected],
            "the fast client gets everything"
        );
    }
    eprintln!(
        "fast client: {n} messages in {:?} beside a stalled one",
        started.elapsed()
    );
    assert!(
        m.ws_lagged.get() > 0,
        "the stalled client's data was dropped"
    );
    // Once it reads, it is told what it missed and gets a fresh snapshot.
    let lagged = stalled.op("lagged").await;
    assert!(lagged["missed"].as_u64().unwrap() > 0, "{lagged}");
    assert!(
        lagged["reason"].as_str().unwrap().contains("queue_bytes"),
        "{lagged}"
    );
    let s = stalled.op("subscribed").await;
    assert_eq!(values(s["snapshot"].as_array().unwrap()), [n]);
}

#[tokio::test]
async fn connections_and_subscriptions_are_capped_per_token() {
    let caps = Caps::default();
    let limits = limits();
    let a = caps.admit("t", &limits).unwrap();
    let _b = caps.admit("t", &limits).unwrap();
    let (code, reason) = caps.admit("t", &limits).unwrap_err();
    assert_eq!(code, close::TOO_MANY_FOR_TOKEN);
    assert!(reason.contains("max_connections_per_token"), "{reason}");
    assert!(
        caps.admit("other", &limits).is_ok(),
        "another token is not held back"
    );
    drop(a);
    let hub = hub();
    let mut client = connect_with(&hub, &caps, "t", limits.clone(), metrics(), 100);
    for stream in ["readings", "alerts", "aqi"] {
        client.send(&format!(r#"{{"op":"subscribe","stream":"{stream}"}}"#));
        assert_eq!(client.op("subscribed").await["stream"], stream);
    }
    client.send(r#"{"op":"subscribe","stream":"readings","device_ids":["x"]}"#);
    assert_eq!(
        client.op("subscribed").await["stream"],
        "readings",
        "replacing one is not another"
    );
    client.send(r#"{"op":"subscribe","stream":"exceedances"}"#);
    let e = client.op("error").await;
    assert_eq!(e["code"], "too_many_subscriptions", "{e}");
    client.send(r#"{"op":"unsubscribe","stream":"aqi"}"#);
    client.op("unsubscribed").await;
    client.send(r#"{"op":"subscribe","stream":"exceedances"}"#);
    assert_eq!(client.op("subscribed").await["stream"], "exceedances");
}

#[tokio::test]
async fn an_idle_client_is_pinged_then_closed_with_its_reason() {
    let hub = hub();
    let limits = WsConfig {
        heartbeat: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1200),
        ..limits()
    };
    let mut client = connect_with(&hub, &Caps::default(), "t", limits, metrics(), 100);
    let started = Instant::now();
    assert!(
        matches!(client.frame().await, OutFrame::Ping),
        "pinged at 0.5 s"
    );
    client.to_server.unbounded_send(ClientFrame::Alive).unwrap();
    // Alive at 0.5 s: pinged at 1 and 1.5 s, closed at 2 s (1.5 s of silence).
    assert!(matches!(client.frame().await, OutFrame::Ping));
    assert!(matches!(client.frame().await, OutFrame::Ping));
    let closed = client.next().await;
    assert_eq!(closed["op"], "closed");
    assert!(
        started.elapsed() >= Duration::from_millis(1700),
        "not before its time"
    );
    match client.frame().await {
        OutFrame::Close(code, reason) => {
            assert_eq!(code, close::IDLE);
            assert!(reason.contains("idle"), "{reason}");
        }
        other => panic!("a close frame, not {other:?}"),
    }
}

#[tokio::test]
async fn a_session_ends_once_its_token_is_revoked() {
    use std::sync::atomic::AtomicBool;
    let hub = hub();
    let live = Arc::new(AtomicBool::new(true));
    let (to_server, incoming) = fmpsc::unbounded();
    let (out, from_server) = fmpsc::channel::<OutFrame>(100);
    let flag = live.clone();
    let setup = Setup {
        hub: hub.clone(),
        metrics: metrics(),
        admission: Caps::default().admit("t", &limits()).unwrap(),
        limits: limits(),
        first: Vec::new(),
        subscriptions: vec![(StreamName::Readings, Filter::default())],
        token_live: move || flag.load(Ordering::Relaxed),
    };
    let task = tokio::spawn(session(out, incoming, setup));
    let mut client = Client {
        to_server,
        from_server,
        task,
    };
    client.op("subscribed").await;
    publish(&hub, "d", 1);
    assert_eq!(values(&[client.data().await]), [1], "served while live");
    live.store(false, Ordering::Relaxed);
    assert_eq!(
        client.op("closed").await["reason"],
        "the token of this session was revoked"
    );
    match client.frame().await {
        OutFrame::Close(code, _) => assert_eq!(code, close::TOKEN_REVOKED),
        other => panic!("a close frame, not {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .expect("the session ends")
        .unwrap();
}

#[test]
fn snapshots_keep_open_alerts_only() {
    let hub = hub();
    let alert = |state: &str, offset: i64| {
        let a: ioc_contract::Alert = serde_json::from_value(json!({
            "alert_id": format!("a{offset}"), "rule": "pm25_high", "device_id": "aq-1",
            "channel": "", "metric": "pm25", "instance": "aq-1", "state": state,
            "fired_at": 0, "value": 60.0, "peak": 60.0, "message": "m", "version": offset,
        }))
        .unwrap();
        LiveMessage::alert(&a, Pos(0, offset, 0))
    };
    hub.publish(alert("firing", 1));
    assert_eq!(
        hub.start(StreamName::Alerts, &Filter::default(), None)
            .items
            .len(),
        1
    );
    hub.publish(alert("resolved", 2));
    assert!(hub
        .start(StreamName::Alerts, &Filter::default(), None)
        .items
        .is_empty());
}
