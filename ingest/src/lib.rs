//! `ioc ingest`: MQTT in, bus out. What a message becomes is `ioc_normalize`'s (re-exported
//! here: the decoders, [`Format`], the routes, the [`Ingestor`]); this crate moves messages.
//!
//! - [`ack`]: in-order release of MQTT acknowledgements.
//! - [`metrics`]: what ingest counts.
//! - [`embedded`]: the embedded MQTT broker of `ioc up`, read through its in-process link.
//! - [`run`]: the distributed service. It joins the shared subscription with a stable client id and a
//!   persistent session, turns every message into one readings record and/or one dead-letter
//!   record, and acknowledges the message to the broker only after Kafka confirmed all of them,
//!   in receive order. A crash therefore loses nothing: what was not acknowledged is redelivered
//!   to the restarted session, and the stream stage absorbs the duplicates by reading key.

pub mod ack;
pub mod embedded;
pub mod metrics;

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ioc_bus::registry::RegistryView;
use ioc_bus::{Bus, Producer};
use ioc_config::{AckMode, IngestConfig, MqttConfig};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

pub use ioc_normalize::{
    camera, counter, decode, flat, limit, route, senml, tap, tt10, Format, Ingestor, OutRecord,
    Outcome,
};

use crate::ack::InOrderAcks;
use crate::decode::DecodeContext;
pub use crate::metrics::IngestMetrics;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("bus: {0}")]
    Bus(#[from] ioc_bus::BusError),
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// One received message through decoding, counted: the step both ingest loops (MQTT 5 client
/// and embedded broker) share. Returns the records to produce.
pub(crate) fn take_message(
    topic: &[u8],
    payload: &[u8],
    received_at: i64,
    config: &IngestConfig,
    ingestor: &Ingestor,
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
    let outcome = ingestor.process(&topic, payload, &ctx);
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
    let ingestor =
        Ingestor::new(config, registry, bus.topics().clone()).map_err(IngestError::Config)?;

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
    let filters: Vec<String> = ingestor
        .filters()
        .iter()
        .map(|f| format!("$share/{}/{f}", config.share_group))
        .collect();
    // The event loop runs in its own task so that awaiting an ack (a bounded request channel)
    // can never stall it. It forwards only what this loop needs; the channel is unbounded, but
    // the broker sends at most receive_maximum unacknowledged publishes.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_mqtt(
        eventloop,
        events_tx,
        filters.len(),
        metrics.clone(),
    ));

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
                        &ingestor,
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

/// Polls the MQTT event loop until the client disconnects, reconnecting with backoff. Counts
/// the `filters` subscriptions granted since each connect into `metrics.subscribed`.
async fn poll_mqtt(
    mut eventloop: rumqttc::v5::EventLoop,
    events: tokio::sync::mpsc::UnboundedSender<MqttEvent>,
    filters: usize,
    metrics: IngestMetrics,
) {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
    let mut backoff = Duration::from_millis(100);
    let mut granted = 0;
    loop {
        let forward = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                for code in &suback.return_codes {
                    match code {
                        SubscribeReasonCode::Success(_) => granted += 1,
                        refused => {
                            tracing::error!(reason = ?refused, "the broker refused a subscription; ingest receives nothing on it")
                        }
                    }
                }
                metrics.subscribed.set(i64::from(granted >= filters));
                None
            }
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff = Duration::from_millis(100);
                granted = 0;
                metrics.subscribed.set(0);
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
                metrics.subscribed.set(0);
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
