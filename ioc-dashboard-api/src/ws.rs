//! One websocket session. Generic over its outgoing sink and incoming stream so unit tests
//! drive it with channels; the route wires it to a real socket.
//!
//! Client → server: `{"op":"subscribe","stream":"readings"|"aggregates"|"alerts"|"alert_transitions"|"device"|"aqi"|"exceedances","device_ids":[...]}`
//! (device_ids optional: all devices; for `aggregates`, `"resolution":"1m"|"5m"|"1h"|"1d"`,
//! default `1m`, and for `aqi`, `"1h"|"1d"`, default `1h`: one resolution per stream and
//! session; subscribing again replaces the stream's filter) and
//! `{"op":"unsubscribe","stream":...}`. The `device`
//! stream is what ingest made of each message of devices being commissioned or serviced.
//! Server → client: `{"stream":...,"data":{...}}` for data; `{"op":"subscribed",...}`,
//! `{"op":"error","message":...}`, and `{"op":"lagged","missed":N}` when the client was too slow
//! and missed N messages (it stays connected). The session's token is checked again every
//! [`TOKEN_RECHECK`]: once it is revoked the client gets `{"op":"closed","reason":...}` and the
//! session ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use ioc_contract::Resolution;

use crate::live::{LiveMessage, StreamName};
use crate::ApiMetrics;

/// What a client sent, reduced to what the session cares about.
#[derive(Debug)]
pub enum ClientFrame {
    Text(String),
    Close,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
    stream: StreamName,
    #[serde(default)]
    device_ids: Option<Vec<String>>,
    #[serde(default)]
    resolution: Option<Resolution>,
}

/// How often a session checks that its token was not revoked.
pub const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Stream → device filter (`None`: every device).
pub type Subscriptions = HashMap<StreamName, Option<HashSet<String>>>;

/// Runs one session until the client leaves, the hub closes or `token_live` says the session's
/// token was revoked, starting with `subscriptions`.
pub async fn session<Out, In>(
    mut out: Out,
    mut incoming: In,
    mut live: broadcast::Receiver<Arc<LiveMessage>>,
    metrics: ApiMetrics,
    mut subscriptions: Subscriptions,
    token_live: impl Fn() -> bool,
) where
    Out: Sink<String> + Unpin,
    In: Stream<Item = ClientFrame> + Unpin,
{
    // The resolution of each subscription that has one (absent: the stream's default).
    let mut resolutions: HashMap<StreamName, Resolution> = HashMap::new();
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if !token_live() {
                    let bye = json!({"op": "closed", "reason": "the token of this session was revoked"});
                    let _ = out.send(bye.to_string()).await;
                    return;
                }
            }
            frame = incoming.next() => match frame {
                None | Some(ClientFrame::Close) => return,
                Some(ClientFrame::Text(text)) => {
                    let reply = match serde_json::from_str::<Request>(&text) {
                        Ok(r) if r.op == "subscribe" && r.resolution.is_some_and(|res| !r.stream.resolutions().contains(&res)) => {
                            let allowed = r.stream.resolutions();
                            let message = if allowed.is_empty() {
                                format!("resolution applies only to the aggregates and aqi streams, not {:?}", r.stream)
                            } else {
                                let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
                                format!("the {:?} stream's resolution is one of {}", r.stream, names.join(", "))
                            };
                            json!({"op": "error", "message": message})
                        }
                        Ok(r) if r.op == "subscribe" => {
                            let filter = r.device_ids.map(|ids| ids.into_iter().collect::<HashSet<_>>());
                            subscriptions.insert(r.stream, filter);
                            match r.resolution.or(r.stream.resolutions().first().copied()) {
                                Some(res) => {
                                    resolutions.insert(r.stream, res);
                                    json!({"op": "subscribed", "stream": r.stream, "resolution": res})
                                }
                                None => json!({"op": "subscribed", "stream": r.stream}),
                            }
                        }
                        Ok(r) if r.op == "unsubscribe" => {
                            subscriptions.remove(&r.stream);
                            json!({"op": "unsubscribed", "stream": r.stream})
                        }
                        Ok(r) => json!({"op": "error", "message": format!("unknown op {:?}; use subscribe or unsubscribe", r.op)}),
                        Err(e) => json!({"op": "error", "message": format!("bad request: {e}")}),
                    };
                    if out.send(reply.to_string()).await.is_err() {
                        return;
                    }
                }
            },
            message = live.recv() => match message {
                Ok(m) => {
                    let wanted = match subscriptions.get(&m.stream) {
                        Some(None) => true,
                        Some(Some(ids)) => ids.contains(&m.device_id),
                        None => false,
                    } && m.resolution.is_none_or(|r| {
                        resolutions.get(&m.stream).or(m.stream.resolutions().first()) == Some(&r)
                    });
                    if wanted {
                        if out.send(m.json.clone()).await.is_err() {
                            return;
                        }
                        metrics.ws_sent.inc();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics.ws_lagged.inc_by(missed);
                    if out.send(json!({"op": "lagged", "missed": missed}).to_string()).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::LiveHub;
    use futures::channel::mpsc;

    fn metrics() -> ApiMetrics {
        ApiMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    struct Client {
        to_server: mpsc::UnboundedSender<ClientFrame>,
        from_server: mpsc::UnboundedReceiver<String>,
    }

    impl Client {
        async fn send(&self, text: &str) {
            self.to_server
                .unbounded_send(ClientFrame::Text(text.into()))
                .unwrap();
        }
        async fn next(&mut self) -> serde_json::Value {
            let text =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.from_server.next())
                    .await
                    .expect("a message within 5 s")
                    .expect("session open");
            serde_json::from_str(&text).unwrap()
        }
    }

    fn start(hub: &LiveHub, metrics: ApiMetrics) -> (Client, tokio::task::JoinHandle<()>) {
        let (to_server, incoming) = mpsc::unbounded();
        let (out, from_server) = mpsc::unbounded::<String>();
        let task = tokio::spawn(session(
            out,
            incoming,
            hub.subscribe(),
            metrics,
            Subscriptions::new(),
            || true,
        ));
        (
            Client {
                to_server,
                from_server,
            },
            task,
        )
    }

    #[tokio::test]
    async fn delivers_only_subscribed_streams_and_devices() {
        let hub = LiveHub::new(16);
        let (mut client, _task) = start(&hub, metrics());
        client
            .send(r#"{"op":"subscribe","stream":"alerts","device_ids":["aq-2"]}"#)
            .await;
        assert_eq!(client.next().await["op"], "subscribed");
        hub.publish(LiveMessage::new(
            StreamName::Readings,
            "aq-2",
            &json!({"n": 1}),
        ));
        hub.publish(LiveMessage::new(
            StreamName::Alerts,
            "aq-1",
            &json!({"n": 2}),
        ));
        hub.publish(LiveMessage::new(
            StreamName::Alerts,
            "aq-2",
            &json!({"n": 3}),
        ));
        let m = client.next().await;
        assert_eq!(
            (m["stream"].as_str(), m["data"]["n"].as_i64()),
            (Some("alerts"), Some(3))
        );
    }

    fn aggregate(resolution: Resolution, count: u64) -> ioc_contract::Aggregate {
        ioc_contract::Aggregate {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: "pm25".into(),
            resolution,
            window_start: 0,
            window_end: resolution.ms(),
            count,
            sum: 1.0,
            min: 1.0,
            max: 1.0,
            mean: 1.0,
            capture: Some(0.5),
            unit: "µg/m³".into(),
            version: 1,
        }
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
        let hub = LiveHub::new(16);
        let (mut client, _task) = start(&hub, metrics());
        client.send(r#"{"op":"subscribe","stream":"aqi"}"#).await;
        assert_eq!(client.next().await["resolution"], "1h");
        client
            .send(r#"{"op":"subscribe","stream":"aggregates","resolution":"1d"}"#)
            .await;
        assert_eq!(client.next().await["resolution"], "1d");
        hub.publish(LiveMessage::aqi(&aqi("1d", 1)));
        hub.publish(LiveMessage::aqi(&aqi("1h", 41)));
        let m = client.next().await;
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
        client
            .send(r#"{"op":"subscribe","stream":"aqi","resolution":"1m"}"#)
            .await;
        let e = client.next().await;
        assert_eq!(e["op"], "error");
        assert!(e["message"].as_str().unwrap().contains("1h, 1d"), "{e}");
    }

    #[tokio::test]
    async fn an_aggregates_subscription_gets_one_resolution_1m_unless_it_names_another() {
        let hub = LiveHub::new(16);
        let (mut client, _task) = start(&hub, metrics());
        client
            .send(r#"{"op":"subscribe","stream":"aggregates"}"#)
            .await;
        assert_eq!(client.next().await["resolution"], "1m");
        hub.publish(LiveMessage::aggregate(&aggregate(Resolution::Hour, 1)));
        hub.publish(LiveMessage::aggregate(&aggregate(Resolution::Minute, 2)));
        let m = client.next().await;
        assert_eq!(
            (
                m["data"]["resolution"].as_str(),
                m["data"]["count"].as_u64()
            ),
            (Some("1m"), Some(2))
        );
        client
            .send(r#"{"op":"subscribe","stream":"aggregates","resolution":"1h"}"#)
            .await;
        assert_eq!(client.next().await["resolution"], "1h");
        hub.publish(LiveMessage::aggregate(&aggregate(Resolution::Minute, 3)));
        hub.publish(LiveMessage::aggregate(&aggregate(Resolution::Hour, 4)));
        let m = client.next().await;
        assert_eq!(
            (
                m["stream"].as_str(),
                m["data"]["resolution"].as_str(),
                m["data"]["count"].as_u64(),
                m["data"]["capture"].as_f64()
            ),
            (Some("aggregates"), Some("1h"), Some(4), Some(0.5))
        );
        client
            .send(r#"{"op":"subscribe","stream":"alerts","resolution":"1h"}"#)
            .await;
        assert_eq!(client.next().await["op"], "error");
        client
            .send(r#"{"op":"subscribe","stream":"aggregates","resolution":"2h"}"#)
            .await;
        assert_eq!(client.next().await["op"], "error");
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_and_the_session_goes_on() {
        let hub = LiveHub::new(16);
        let (mut client, _task) = start(&hub, metrics());
        client.send("nonsense").await;
        assert_eq!(client.next().await["op"], "error");
        client
            .send(r#"{"op":"subscribe","stream":"weather"}"#)
            .await;
        assert_eq!(client.next().await["op"], "error");
        client
            .send(r#"{"op":"subscribe","stream":"readings"}"#)
            .await;
        assert_eq!(client.next().await["op"], "subscribed");
    }

    #[tokio::test]
    async fn a_slow_client_is_told_what_it_missed_and_kept() {
        let hub = LiveHub::new(4);
        let m = metrics();
        let (to_server, incoming) = mpsc::unbounded();
        let (out, mut from_server) = mpsc::unbounded::<String>();
        let rx = hub.subscribe();
        // Overflow the receiver before the session reads anything.
        for n in 0..10 {
            hub.publish(LiveMessage::new(
                StreamName::Readings,
                "d",
                &json!({ "n": n }),
            ));
        }
        to_server
            .unbounded_send(ClientFrame::Text(
                r#"{"op":"subscribe","stream":"readings"}"#.into(),
            ))
            .unwrap();
        let _task = tokio::spawn(session(
            out,
            incoming,
            rx,
            m.clone(),
            Subscriptions::new(),
            || true,
        ));
        let lagged = loop {
            let text = tokio::time::timeout(std::time::Duration::from_secs(5), from_server.next())
                .await
                .unwrap()
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["op"] == "lagged" {
                break v;
            }
        };
        assert_eq!(lagged["missed"], 6);
        assert_eq!(m.ws_lagged.get(), 6);
        hub.publish(LiveMessage::new(
            StreamName::Readings,
            "d",
            &json!({"n": 99}),
        ));
        loop {
            let text = tokio::time::timeout(std::time::Duration::from_secs(5), from_server.next())
                .await
                .unwrap()
                .unwrap();
            if text.contains("99") {
                break;
            }
        }
    }

    #[tokio::test]
    async fn a_session_ends_once_its_token_is_revoked() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let hub = LiveHub::new(16);
        let live = Arc::new(AtomicBool::new(true));
        let (to_server, incoming) = mpsc::unbounded();
        let (out, from_server) = mpsc::unbounded::<String>();
        let flag = live.clone();
        let task = tokio::spawn(session(
            out,
            incoming,
            hub.subscribe(),
            metrics(),
            [(StreamName::Readings, None)].into_iter().collect(),
            move || flag.load(Ordering::Relaxed),
        ));
        let mut client = Client {
            to_server,
            from_server,
        };
        hub.publish(LiveMessage::new(
            StreamName::Readings,
            "d",
            &json!({"n": 1}),
        ));
        assert_eq!(client.next().await["data"]["n"], 1, "served while live");
        live.store(false, Ordering::Relaxed);
        assert_eq!(client.next().await["op"], "closed");
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the session ends")
            .unwrap();
    }
}
