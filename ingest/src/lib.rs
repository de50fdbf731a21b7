//! `ioc ingest`: MQTT in, bus out.
//!
//! - [`decode`]: device protocol v1, a pure function of the bytes; [`tt10`]: station files;
//!   [`senml`]: RFC 8428 SenML JSON; [`counter`]: per-lane traffic counts. All pure.
//! - [`Format`]: the payload formats by name (`ioc decode --format`).
//! - [`ack`]: in-order release of MQTT acknowledgements.
//! - [`metrics`]: what ingest counts.
//! - [`embedded`]: the embedded MQTT broker of `ioc up`, read through its in-process link.
//! - [`process_message`]: what one message becomes; both sources use it.
//! - [`run`]: the distributed service. It joins the shared subscription with a stable client id and a
//!   persistent session, turns every message into one readings record and/or one dead-letter
//!   record, and acknowledges the message to the broker only after Kafka confirmed all of them,
//!   in receive order. A crash therefore loses nothing: what was not acknowledged is redelivered
//!   to the restarted session, and the stream stage absorbs the duplicates by reading key.

pub mod ack;
pub mod counter;
pub mod decode;
pub mod embedded;
pub mod metrics;
pub mod senml;
pub mod tt10;

use std::time::Duration;

use base64::Engine;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ioc_bus::registry::RegistryView;
use ioc_bus::{Bus, Producer};
use ioc_config::{AckMode, IngestConfig, MqttConfig};
use ioc_contract::{
    device_of_station_topic, device_of_telemetry_topic, DeadLetter, ReadingBatch, RejectCode,
    Topics,
};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

use crate::ack::InOrderAcks;
use crate::decode::{decode_v1, message_id, DecodeContext};
pub use crate::metrics::IngestMetrics;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("bus: {0}")]
    Bus(#[from] ioc_bus::BusError),
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
}

/// A payload format ingest decodes, by the name `ioc decode --format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Device protocol v1 (`ioc/v1/devices/{id}/telemetry`).
    IocJson,
    /// A station file (Circular 10/2021 practice).
    Tt10Station,
    /// RFC 8428 SenML JSON (`ioc decode` only until topics are configurable).
    Senml,
    /// Per-lane interval counts (`ioc decode` only until topics are configurable).
    TrafficCounter,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::IocJson,
        Format::Tt10Station,
        Format::Senml,
        Format::TrafficCounter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::IocJson => "ioc-json",
            Format::Tt10Station => "tt10-station",
            Format::Senml => "senml",
            Format::TrafficCounter => "traffic-counter",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Decodes one payload of `device_id`: pure, no I/O.
    pub fn decode(
        self,
        device_id: &str,
        payload: &[u8],
        message_id: &str,
        ctx: &DecodeContext,
    ) -> Result<decode::Decoded, decode::Rejection> {
        match self {
            Format::IocJson => decode_v1(device_id, payload, message_id, ctx),
            Format::Tt10Station => tt10::decode_tt10(device_id, payload, message_id, ctx),
            Format::Senml => senml::decode_senml(device_id, payload, message_id, ctx),
            Format::TrafficCounter => counter::decode_counter(device_id, payload, message_id, ctx),
        }
    }
}

/// The topics ingest reads, and the format each carries: v1 device telemetry and station files.
pub const TOPIC_FILTERS: [(&str, Format); 2] = [
    ("ioc/v1/devices/+/telemetry", Format::IocJson),
    ("ioc/v1/stations/+/file", Format::Tt10Station),
];

/// The MQTT filters ingest subscribes to, shared by the group.
pub fn subscription_filters(share_group: &str) -> Vec<String> {
    TOPIC_FILTERS
        .iter()
        .map(|(filter, _)| format!("$share/{share_group}/{filter}"))
        .collect()
}

/// The device a topic names and the format of its payload, if ingest reads that topic.
pub fn route(topic: &str) -> Option<(&str, Format)> {
    device_of_telemetry_topic(topic)
        .map(|d| (d, Format::IocJson))
        .or_else(|| device_of_station_topic(topic).map(|d| (d, Format::Tt10Station)))
}

/// One bus record to produce for a message.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// Readings it carries (0 for a dead-letter record), for counting.
    pub readings: usize,
}

/// What one MQTT message became.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub records: Vec<OutRecord>,
    pub rejections: Vec<RejectCode>,
}

/// Turns one MQTT message into the records to produce. Pure apart from the registry look-up.
pub fn process_message(
    topic: &str,
    payload: &[u8],
    registry: &RegistryView,
    topics: &Topics,
    ctx: &DecodeContext,
) -> Outcome {
    let id = message_id(topic, payload);
    let mut outcome = Outcome::default();
    let route = route(topic);
    let device = route.map(|(d, _)| d);
    let dead_letter = |code: RejectCode, reason: String, metric: Option<String>| -> OutRecord {
        let letter = DeadLetter {
            code,
            reason,
            topic: topic.to_string(),
            received_at: ctx.received_at,
            message_id: id.clone(),
            device_id: device.map(str::to_string),
            metric,
            raw_base64: base64::engine::general_purpose::STANDARD.encode(payload),
        };
        OutRecord {
            topic: topics.deadletter.clone(),
            key: device.unwrap_or("").to_string(),
            payload: serde_json::to_vec(&letter).expect("dead letters serialize"),
            readings: 0,
        }
    };

    let Some((device_id, format)) = route else {
        outcome.rejections.push(RejectCode::BadTopic);
        outcome.records.push(dead_letter(
            RejectCode::BadTopic,
            format!("topic {topic:?} is not ioc/v1/devices/{{device_id}}/telemetry or ioc/v1/stations/{{station_id}}/file with a valid id"),
            None,
        ));
        return outcome;
    };
    if !registry.contains(device_id) {
        outcome.rejections.push(RejectCode::UnknownDevice);
        outcome.records.push(dead_letter(
            RejectCode::UnknownDevice,
            format!("device {device_id:?} is not registered"),
            None,
        ));
        return outcome;
    }
    match format.decode(device_id, payload, &id, ctx) {
        Err(rejection) => {
            outcome.rejections.push(rejection.code);
            outcome
                .records
                .push(dead_letter(rejection.code, rejection.reason, None));
        }
        Ok(decoded) => {
            if !decoded.readings.is_empty() {
                let n = decoded.readings.len();
                let batch = ReadingBatch {
                    readings: decoded.readings,
                };
                outcome.records.push(OutRecord {
                    topic: topics.readings.clone(),
                    key: device_id.to_string(),
                    payload: serde_json::to_vec(&batch).expect("readings serialize"),
                    readings: n,
                });
            }
            for rejected in decoded.rejected_values {
                outcome.rejections.push(rejected.code);
                outcome.records.push(dead_letter(
                    rejected.code,
                    rejected.reason,
                    Some(rejected.metric),
                ));
            }
        }
    }
    outcome
}

/// One received message through decoding, counted: the step both ingest loops (MQTT 5 client
/// and embedded broker) share. Returns the records to produce.
pub(crate) fn take_message(
    topic: &[u8],
    payload: &[u8],
    received_at: i64,
    config: &IngestConfig,
    registry: &RegistryView,
    topics: &Topics,
    metrics: &IngestMetrics,
) -> Vec<OutRecord> {
    metrics.messages_received.inc();
    let ctx = DecodeContext {
        received_at,
        max_future_skew_ms: config.max_future_skew.as_millis() as i64,
        max_payload_bytes: config.max_payload_bytes,
        utc_offset_ms: config.utc_offset_ms(),
    };
    let topic = String::from_utf8_lossy(topic);
    let outcome = process_message(&topic, payload, registry, topics, &ctx);
    for code in &outcome.rejections {
        metrics.rejections.with_label_values(&[code.as_str()]).inc();
    }
    outcome.records
}

/// Totals of one run, for the caller's log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct IngestReport {
    pub messages: u64,
    pub acked: u64,
    pub left_unacked: u64,
}

/// Runs ingest until `shutdown`, then drains: stops taking new messages, waits up to
/// `drain_timeout` for Kafka to confirm what is in flight, acknowledges it, and disconnects.
/// Messages received during the drain are not acknowledged; the broker redelivers them to this
/// client id's session when it returns (or to nobody, if the session expires first).
pub async fn run(
    mqtt: &MqttConfig,
    config: &IngestConfig,
    bus: &Bus,
    registry: RegistryView,
    metrics: IngestMetrics,
    shutdown: CancellationToken,
) -> Result<IngestReport, IngestError> {
    let producer = bus.producer(config.producer_linger)?;

    let mut options = MqttOptions::new(&config.client_id, &mqtt.host, mqtt.port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            config.session_expiry.as_secs().min(u32::MAX as u64) as u32
        ))
        .set_receive_maximum(Some(config.receive_maximum))
        .set_max_packet_size(Some(config.max_packet_bytes))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30));
    if !mqtt.username.is_empty() {
        options.set_credentials(&mqtt.username, &mqtt.password);
    }
    let (client, eventloop) = AsyncClient::new(options, config.receive_maximum as usize + 64);
    let filters = subscription_filters(&config.share_group);
    // The event loop runs in its own task so that awaiting an ack (a bounded request channel)
    // can never stall it. It forwards only what this loop needs; the channel is unbounded, but
    // the broker sends at most receive_maximum unacknowledged publishes.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_mqtt(eventloop, events_tx, metrics.clone()));

    // Each entry: the connection generation it arrived on, and the publish to acknowledge
    // (None when it was acknowledged on receipt).
    let mut pending: InOrderAcks<(u64, Option<Publish>)> = InOrderAcks::default();
    let mut inflight = FuturesUnordered::new();
    let mut generation = 0u64;
    let mut report = IngestReport::default();
    let mut drain_deadline: Option<tokio::time::Instant> = None;

    loop {
        if drain_deadline.is_some() && pending.is_empty() {
            break;
        }
        let deadline = drain_deadline;
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                tracing::info!(inflight = pending.len(), "ingest draining");
                drain_deadline = Some(tokio::time::Instant::now() + config.drain_timeout);
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                tracing::error!(unconfirmed = pending.len(), "drain timed out; unconfirmed messages stay unacknowledged and will be redelivered");
                break;
            }
            Some(seq) = inflight.next() => {
                pending.confirm(seq);
                while let Some((gen, publish)) = pending.pop_ready() {
                    // A message from an earlier connection is redelivered by the broker with
                    // the same content; acking its old packet id could ack something else.
                    if let Some(publish) = publish.filter(|_| gen == generation) {
                        if client.ack(&publish).await.is_ok() {
                            report.acked += 1;
                            metrics.messages_acked.inc();
                        }
                    }
                }
                metrics.inflight_messages.set(pending.len() as i64);
            }
            event = events.recv() => match event {
                None => break,
                Some(MqttEvent::Connected) => {
                    generation += 1;
                    for filter in &filters {
                        if let Err(e) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                            tracing::error!(error = %e, %filter, "subscribe request failed");
                        }
                    }
                }
                Some(MqttEvent::Message(publish)) => {
                    if drain_deadline.is_some() {
                        // Not acknowledged: the broker redelivers it to this session.
                        continue;
                    }
                    report.messages += 1;
                    let records = take_message(
                        &publish.topic,
                        &publish.payload,
                        ioc_contract::time::now_ms(),
                        config,
                        &registry,
                        bus.topics(),
                        &metrics,
                    );
                    let ack_later = match config.ack_mode {
                        AckMode::AfterKafka => Some(publish),
                        AckMode::OnReceipt => {
                            if client.ack(&publish).await.is_ok() {
                                report.acked += 1;
                                metrics.messages_acked.inc();
                            }
                            None
                        }
                    };
                    let seq = pending.push((generation, ack_later));
                    inflight.push(deliver(producer.clone(), records, seq, metrics.clone()));
                    metrics.inflight_messages.set(pending.len() as i64);
                }
            },
        }
    }

    report.left_unacked = pending.len() as u64;
    // The event loop sends the acks queued above before the disconnect, then ends.
    let _ = client.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), poller)
        .await
        .is_err()
    {
        tracing::warn!("MQTT event loop did not finish within 5 s of the disconnect");
    }
    Ok(report)
}

/// What the MQTT event loop task passes to the ingest loop.
enum MqttEvent {
    Connected,
    Message(Publish),
}

/// Polls the MQTT event loop until the client disconnects, reconnecting with backoff.
async fn poll_mqtt(
    mut eventloop: rumqttc::v5::EventLoop,
    events: tokio::sync::mpsc::UnboundedSender<MqttEvent>,
    metrics: IngestMetrics,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let forward = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff = Duration::from_millis(100);
                metrics.mqtt_connects.inc();
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to MQTT broker"
                );
                Some(MqttEvent::Connected)
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Some(MqttEvent::Message(publish)),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection error");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                None
            }
        };
        if let Some(event) = forward {
            if events.send(event).is_err() {
                return;
            }
        }
    }
}

/// Produces every record of one message, retrying each until the bus confirms it; resolves to
/// the message's sequence number.
pub(crate) async fn deliver(
    producer: Producer,
    records: Vec<OutRecord>,
    seq: u64,
    metrics: IngestMetrics,
) -> u64 {
    futures::future::join_all(
        records
            .iter()
            .map(|r| send_until_confirmed(&producer, r, &metrics)),
    )
    .await;
    seq
}

async fn send_until_confirmed(producer: &Producer, record: &OutRecord, metrics: &IngestMetrics) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match producer
            .send(&record.topic, &record.key, &record.payload)
            .await
        {
            Ok(_) => {
                if record.readings > 0 {
                    metrics.readings_produced.inc_by(record.readings as u64);
                } else {
                    metrics.deadletters_produced.inc();
                }
                return;
            }
            Err(e) => {
                metrics.produce_errors.inc();
                tracing::error!(error = %e, topic = %record.topic, retry_in = ?backoff, "the bus did not confirm a record; retrying (the message stays unacknowledged)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_contract::{Device, RegistryEvent};

    fn topics() -> Topics {
        Topics::with_prefix("t.")
    }

    fn registry() -> RegistryView {
        let view = RegistryView::default();
        view.apply(RegistryEvent::Registered {
            device: Device {
                device_id: "aq-1".into(),
                kind: "air_quality".into(),
                name: "a".into(),
                lat: 12.6,
                lon: 108.0,
                expected_interval_s: 60.0,
                registered_at: 0,
            },
        });
        view
    }

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: 1_795_680_300_000,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 1024,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    fn process(topic: &str, body: &[u8]) -> Outcome {
        process_message(topic, body, &registry(), &topics(), &ctx())
    }

    fn letters(outcome: &Outcome) -> Vec<DeadLetter> {
        outcome
            .records
            .iter()
            .filter(|r| r.topic == "t.deadletter")
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }

    #[test]
    fn a_good_message_is_one_readings_record_keyed_by_device() {
        let body = br#"{"ts":1795680240000,"values":{"pm25":12,"no2":20}}"#;
        let out = process("ioc/v1/devices/aq-1/telemetry", body);
        assert_eq!(out.records.len(), 1);
        assert_eq!(
            (out.records[0].topic.as_str(), out.records[0].key.as_str()),
            ("t.readings", "aq-1")
        );
        let batch: ReadingBatch = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(batch.readings.len(), 2);
        assert!(out.rejections.is_empty());
    }

    #[test]
    fn unknown_devices_are_rejected_whole_with_provenance_and_raw_bytes() {
        let body = br#"{"ts":1795680240000,"values":{"pm25":12}}"#;
        let out = process("ioc/v1/devices/ghost/telemetry", body);
        assert_eq!(out.rejections, vec![RejectCode::UnknownDevice]);
        let letter = &letters(&out)[0];
        assert_eq!(letter.topic, "ioc/v1/devices/ghost/telemetry");
        assert_eq!(letter.device_id.as_deref(), Some("ghost"));
        assert_eq!(letter.received_at, ctx().received_at);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&letter.raw_base64)
            .unwrap();
        assert_eq!(raw, body);
    }

    #[test]
    fn a_partly_bad_message_gives_readings_and_one_letter_per_bad_value() {
        let body = br#"{"ts":1795680240000,"values":{"pm25":12,"radon":1,"no2":"x"}}"#;
        let out = process("ioc/v1/devices/aq-1/telemetry", body);
        assert_eq!(out.records.len(), 3);
        let mut metrics: Vec<String> = letters(&out).into_iter().filter_map(|l| l.metric).collect();
        metrics.sort();
        assert_eq!(metrics, vec!["no2", "radon"]);
    }

    #[test]
    fn station_files_are_routed_to_the_station_decoder() {
        let file = b"COD\t61.5\tmg/L\t20261126085500\t00\nTSS\t12\tgrains\t20261126085500\t00\n";
        let out = process("ioc/v1/stations/aq-1/file", file);
        let batch: ReadingBatch = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(batch.readings.len(), 1);
        assert_eq!(batch.readings[0].metric, "cod");
        assert_eq!(out.rejections, vec![RejectCode::UnknownUnit]);
        assert_eq!(letters(&out)[0].metric.as_deref(), Some("tss"));
        let out = process("ioc/v1/stations/ghost/file", file);
        assert_eq!(out.rejections, vec![RejectCode::UnknownDevice]);
    }

    #[test]
    fn no_format_panics_on_mutated_payloads() {
        let samples: [(Format, &[u8]); 4] = [
            (Format::IocJson, br#"{"ts":1795680240000,"channel":"a","values":{"pm25":12,"no2":20}}"#),
            (Format::Tt10Station, b"COD\t61,5\tmg/L\t20261126085500\t00\npH\t7\tpH\t20261126085500\t01\n"),
            (Format::Senml, br#"[{"bn":"x:","bt":1795658340,"bu":"ug/m3","n":"pm25","v":35.2},{"n":"co","u":"ppm","v":1,"t":-5}]"#),
            (Format::TrafficCounter, br#"{"end":1795658340,"interval_s":60,"lanes":[{"lane":1,"count":17,"avg_speed":42.5,"occupancy":0.12}]}"#),
        ];
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (format, sample) in samples {
            assert!(
                format.decode("d", sample, "m", &ctx()).is_ok(),
                "{format:?} sample decodes"
            );
            for _ in 0..3000 {
                let mut buf = sample.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let i = next() as usize % buf.len();
                    match next() % 3 {
                        0 => buf[i] = next() as u8,
                        1 => {
                            buf.remove(i);
                        }
                        _ => {
                            let alphabet = b"{}[]\t,:\"0-9e.";
                            buf.insert(i, alphabet[next() as usize % alphabet.len()])
                        }
                    }
                    if buf.is_empty() {
                        buf.push(b'{');
                    }
                }
                let _ = format.decode("d", &buf, "m", &ctx());
            }
        }
    }

    #[test]
    fn invalid_device_ids_in_topics_are_bad_topics() {
        let out = process("ioc/v1/devices/a+b/telemetry", b"{}");
        assert_eq!(out.rejections, vec![RejectCode::BadTopic]);
        assert_eq!(letters(&out)[0].device_id, None);
    }
}
