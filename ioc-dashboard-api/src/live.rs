//! Live data for websocket clients: one bus tail per API instance (outside any consumer
//! group, so every instance sees everything), fanned out through a bounded broadcast channel.
//! Each message is serialized once, whatever the number of clients.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use ioc_bus::registry::RegistryView;
use ioc_bus::{Bus, Consumer, StartAt};
use ioc_contract::time::format_ms;
use ioc_contract::{
    Aggregate, Alert, DeadLetter, Reading, ReadingBatch, RejectCode, Resolution, TapRecord,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::alerts::{ApiAlert, ApiTransition};
use crate::routes::{ApiAggregate, ApiAqi, ApiExceedance, ApiReading};
use ioc_history::{AqiRow, ExceedanceRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Readings,
    Aggregates,
    Alerts,
    /// What ingest made of each message of devices being commissioned or serviced.
    Device,
    /// Hourly and daily VN_AQI of air-quality stations.
    Aqi,
    /// QCVN exceedances and their withdrawals.
    Exceedances,
    /// Every alert transition (fired, acknowledged, resolved).
    #[serde(rename = "alert_transitions")]
    AlertTransitions,
}

impl StreamName {
    /// The resolutions a subscription to the stream may name, its default first (none: the
    /// stream has no resolution).
    pub fn resolutions(self) -> &'static [Resolution] {
        match self {
            StreamName::Aggregates => &Resolution::ALL,
            StreamName::Aqi => &[Resolution::Hour, Resolution::Day],
            _ => &[],
        }
    }
}

/// One message for websocket clients: `{"stream": ..., "data": {...}}`, already serialized.
#[derive(Debug)]
pub struct LiveMessage {
    pub stream: StreamName,
    pub device_id: String,
    /// An aggregate's resolution (sessions subscribe to one).
    pub resolution: Option<Resolution>,
    pub json: String,
}

impl LiveMessage {
    pub fn new<T: Serialize>(stream: StreamName, device_id: &str, data: &T) -> LiveMessage {
        #[derive(Serialize)]
        struct Envelope<'a, T> {
            stream: StreamName,
            data: &'a T,
        }
        let json =
            serde_json::to_string(&Envelope { stream, data }).expect("live messages serialize");
        LiveMessage {
            stream,
            device_id: device_id.to_string(),
            resolution: None,
            json,
        }
    }

    /// An aggregate of `resolution`.
    pub fn aggregate(a: &Aggregate) -> LiveMessage {
        LiveMessage {
            resolution: Some(a.resolution),
            ..LiveMessage::new(StreamName::Aggregates, &a.device_id, &ApiAggregate::from(a))
        }
    }

    /// An hourly or daily AQI.
    pub fn aqi(a: &AqiRow) -> LiveMessage {
        LiveMessage {
            resolution: Resolution::parse(&a.resolution),
            ..LiveMessage::new(StreamName::Aqi, &a.device_id, &ApiAqi::from(a))
        }
    }
}

/// The fan-out point. Slow clients lag instead of slowing everyone down.
#[derive(Clone)]
pub struct LiveHub {
    tx: broadcast::Sender<Arc<LiveMessage>>,
}

impl LiveHub {
    pub fn new(capacity: usize) -> LiveHub {
        let (tx, _) = broadcast::channel(capacity.max(1));
        LiveHub { tx }
    }

    pub fn publish(&self, message: LiveMessage) {
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(message));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveMessage>> {
        self.tx.subscribe()
    }
}

/// What this API instance has seen of a device since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceActivity {
    /// When ingest first and last received a message from it, stored or rejected (epoch ms).
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    /// Receipt times and ids of its latest messages, oldest first (at most
    /// [`RECENT_MESSAGES`]).
    pub recent: VecDeque<(i64, String)>,
    pub last_rejection: Option<Rejection>,
    /// What its latest message became.
    pub last_message: Option<MessageOutcome>,
}

/// How many receipt times [`DeviceActivity::recent`] keeps.
pub const RECENT_MESSAGES: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub at: i64,
    pub code: RejectCode,
    pub reason: String,
    /// For a rejected value: its metric; `None` when the whole message was rejected.
    pub metric: Option<String>,
}

/// One message's readings and rejections, gathered from the records made from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageOutcome {
    pub message_id: String,
    pub received_at: i64,
    pub readings: Vec<Reading>,
    pub rejections: Vec<Rejection>,
}

/// Per device, its [`DeviceActivity`], fed by the tail. Cheap to clone; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    inner: Arc<RwLock<HashMap<String, DeviceActivity>>>,
}

impl Activity {
    pub fn get(&self, device_id: &str) -> Option<DeviceActivity> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(device_id).cloned()
    }

    /// Adds what one record made of message `message_id` to the device's activity.
    fn note(
        &self,
        device_id: &str,
        message_id: &str,
        at: i64,
        readings: Vec<Reading>,
        rejection: Option<Rejection>,
    ) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(device_id.to_string()).or_default();
        entry.first_seen = Some(entry.first_seen.map_or(at, |t| t.min(at)));
        entry.last_seen = entry.last_seen.max(Some(at));
        let known = entry.recent.iter().any(|(_, id)| id == message_id);
        if !known {
            entry.recent.push_back((at, message_id.to_string()));
            if entry.recent.len() > RECENT_MESSAGES {
                entry.recent.pop_front();
            }
            entry.last_message = Some(MessageOutcome {
                message_id: message_id.to_string(),
                received_at: at,
                ..Default::default()
            });
        }
        // Records of one message arrive on several topics, in any order; an older message's
        // late record only updates the last rejection.
        if let Some(last) = entry
            .last_message
            .as_mut()
            .filter(|m| m.message_id == message_id)
        {
            last.readings.extend(readings);
            if let Some(rejection) = &rejection {
                last.rejections.push(rejection.clone());
            }
        }
        if let Some(rejection) = rejection {
            entry.last_rejection = Some(rejection);
        }
    }

    /// Notes a readings record (one message's readings; one device's in practice).
    fn readings(&self, batch: ReadingBatch) {
        let mut by_device: HashMap<(String, String), (i64, Vec<Reading>)> = HashMap::new();
        for r in batch.readings {
            let entry = by_device
                .entry((r.device_id.clone(), r.message_id.clone()))
                .or_insert((r.received_at, Vec::new()));
            entry.0 = entry.0.max(r.received_at);
            entry.1.push(r);
        }
        for ((device, message), (at, readings)) in by_device {
            self.note(&device, &message, at, readings, None);
        }
    }

    /// Notes a rejection of a registered device's message or value (letters can name any id a
    /// client made up: those are nobody's activity).
    fn rejected(&self, letter: DeadLetter, registry: &RegistryView) {
        if let Some(device) = letter.device_id.as_ref().filter(|d| registry.contains(d)) {
            let rejection = Rejection {
                at: letter.received_at,
                code: letter.code,
                reason: letter.reason,
                metric: letter.metric,
            };
            self.note(
                device,
                &letter.message_id,
                letter.received_at,
                Vec::new(),
                Some(rejection),
            );
        }
    }
}

/// A tap record as websocket clients see it.
#[derive(Debug, Serialize)]
pub struct ApiTap {
    pub device_id: String,
    pub topic: String,
    pub received_at: String,
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    pub readings: Vec<ApiReading>,
    pub rejections: Vec<serde_json::Value>,
}

impl From<&TapRecord> for ApiTap {
    fn from(t: &TapRecord) -> Self {
        ApiTap {
            device_id: t.device_id.clone(),
            topic: t.topic.clone(),
            received_at: format_ms(t.received_at),
            message_id: t.message_id.clone(),
            raw_text: t.raw_text.clone(),
            raw_base64: t.raw_base64.clone(),
            withheld: t.withheld.clone(),
            readings: t.readings.iter().map(ApiReading::from).collect(),
            rejections: t
                .rejections
                .iter()
                .map(|r| serde_json::json!({"code": r.code.as_str(), "reason": r.reason, "metric": r.metric}))
                .collect(),
        }
    }
}

/// Starts tailing the live topics from their current end, and the dead-letter and quarantine
/// topics for devices' activity (their reasons never quote a plate; their raw bytes are not
/// kept).
pub fn tail(
    bus: &Bus,
    hub: LiveHub,
    activity: Activity,
    registry: RegistryView,
    replies: crate::alerts::Replies,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ioc_bus::BusError> {
    let topics = bus.topics().clone();
    let mut consumer = bus.consumer(
        &[
            &topics.readings,
            &topics.aggregates,
            &topics.alerts,
            &topics.alert_transitions,
            &topics.alert_replies,
            &topics.aqi,
            &topics.exceedances,
            &topics.deadletter,
            &topics.quarantine,
            &topics.tap,
            &topics.events,
        ],
        StartAt::End,
    )?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = recv(&mut consumer) => m,
            };
            let Some((topic, payload)) = message else {
                continue;
            };
            if topic == topics.readings {
                if let Ok(batch) = serde_json::from_slice::<ReadingBatch>(&payload) {
                    for r in &batch.readings {
                        hub.publish(LiveMessage::new(
                            StreamName::Readings,
                            &r.device_id,
                            &ApiReading::from(r),
                        ));
                    }
                    activity.readings(batch);
                }
            } else if topic == topics.aggregates {
                if let Ok(a) = serde_json::from_slice::<Aggregate>(&payload) {
                    hub.publish(LiveMessage::aggregate(&a.upgraded()));
                }
            } else if topic == topics.aqi {
                if let Ok(a) = serde_json::from_slice::<AqiRow>(&payload) {
                    hub.publish(LiveMessage::aqi(&a));
                }
            } else if topic == topics.exceedances {
                if let Ok(e) = serde_json::from_slice::<ExceedanceRow>(&payload) {
                    hub.publish(LiveMessage::new(
                        StreamName::Exceedances,
                        &e.device_id,
                        &ApiExceedance::from(&e),
                    ));
                }
            } else if topic == topics.alerts {
                if let Ok(a) = serde_json::from_slice::<Alert>(&payload) {
                    hub.publish(LiveMessage::new(
                        StreamName::Alerts,
                        &a.device_id,
                        &ApiAlert::from(&a),
                    ));
                }
            } else if topic == topics.alert_transitions {
                if let Ok(t) = serde_json::from_slice::<ioc_contract::AlertTransition>(&payload) {
                    hub.publish(LiveMessage::new(
                        StreamName::AlertTransitions,
                        &t.alert.device_id,
                        &ApiTransition::from(&t),
                    ));
                }
            } else if topic == topics.alert_replies {
                if let Ok(r) = serde_json::from_slice::<ioc_contract::AlertReply>(&payload) {
                    replies.deliver(r);
                }
            } else if topic == topics.tap {
                if let Ok(tap) = serde_json::from_slice::<TapRecord>(&payload) {
                    hub.publish(LiveMessage::new(
                        StreamName::Device,
                        &tap.device_id,
                        &ApiTap::from(&tap),
                    ));
                }
            } else if topic == topics.deadletter || topic == topics.quarantine {
                if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&payload) {
                    activity.rejected(letter, &registry);
                }
            } else if topic == topics.events {
                // A camera's accepted event: only that it was seen (no pseudonym is kept).
                if let Ok(e) = serde_json::from_slice::<ioc_contract::Event>(&payload) {
                    activity.note(&e.device_id, &e.message_id, e.received_at, Vec::new(), None);
                }
            }
        }
    }))
}

async fn recv(consumer: &mut Consumer) -> Option<(String, Vec<u8>)> {
    match consumer.recv().await {
        Ok(m) => Some((m.topic, m.payload)),
        Err(e) => {
            tracing::warn!(error = %e, "live tail consume error");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_contract::Quality;

    fn reading(message: &str, at: i64) -> Reading {
        Reading {
            device_id: "d".into(),
            channel: String::new(),
            metric: "pm25".into(),
            ts: at,
            value: 1.0,
            unit: "µg/m³".into(),
            interval_s: None,
            quality: Quality::Good,
            quality_reason: String::new(),
            received_at: at,
            message_id: message.into(),
        }
    }

    fn letter(message: &str, at: i64, metric: Option<&str>) -> DeadLetter {
        DeadLetter {
            code: RejectCode::UnknownMetric,
            reason: "no such metric".into(),
            topic: "t".into(),
            received_at: at,
            message_id: message.into(),
            device_id: Some("d".into()),
            external_id: None,
            metric: metric.map(str::to_string),
            raw_base64: String::new(),
        }
    }

    #[test]
    fn the_records_of_one_message_make_one_outcome_whatever_their_order() {
        let activity = Activity::default();
        let registry = RegistryView::default();
        registry.apply(ioc_contract::RegistryEvent::Registered {
            device: ioc_contract::Device {
                device_id: "d".into(),
                ..Default::default()
            },
        });
        activity.rejected(letter("m1", 10, Some("xyz")), &registry);
        activity.readings(ReadingBatch {
            readings: vec![reading("m1", 10)],
        });
        activity.readings(ReadingBatch {
            readings: vec![reading("m2", 20)],
        });
        // m1's second letter arrives after m2: it is m1's, not the latest message's.
        activity.rejected(letter("m1", 10, Some("abc")), &registry);
        let a = activity.get("d").unwrap();
        assert_eq!(a.recent.len(), 2, "two messages: {:?}", a.recent);
        assert_eq!((a.first_seen, a.last_seen), (Some(10), Some(20)));
        let last = a.last_message.unwrap();
        assert_eq!((last.message_id.as_str(), last.readings.len()), ("m2", 1));
        assert!(last.rejections.is_empty());
        assert_eq!(a.last_rejection.unwrap().metric.as_deref(), Some("abc"));
        // A letter without a device (unknown device) is nobody's activity.
        let mut orphan = letter("m3", 30, None);
        orphan.device_id = None;
        activity.rejected(orphan, &registry);
        // Nor is one naming an id nobody registered.
        let mut made_up = letter("m4", 40, None);
        made_up.device_id = Some("made-up".into());
        activity.rejected(made_up, &registry);
        assert_eq!(activity.get("d").unwrap().last_seen, Some(20));
        assert!(activity.get("made-up").is_none());
    }
}
