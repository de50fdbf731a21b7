//! The embedded MQTT broker of `ioc up` and the ingest loop that reads it.
//!
//! rumqttd speaks MQTT 3.1.1 to devices and has no MQTT 5 shared subscriptions, so ingest does
//! not connect to it as a client: it reads the telemetry topics through rumqttd's in-process
//! link and hands each message to the same [`crate::Ingestor`] as the distributed ingest.
//!
//! Devices log in: rumqttd asks [`BrokerOptions::authenticate`] about every CONNECT (on `ioc up`
//! the registry's device accounts). It has no topic permissions, so a logged-in device could
//! publish on another's topic, and no way to disconnect a client, so a revoked account holds
//! its open connection until it reconnects (README, "Security notes").
//!
//! rumqttd acknowledges a device's QoS 1 publish on receipt. What the broker has acknowledged
//! but the bus has not yet made durable is the loss window of this mode: bounded by the bus's
//! flush interval plus the time a message spends between the broker and the log (measured in
//! the README).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ioc_bus::registry::RegistryView;
use ioc_bus::Bus;
use ioc_config::IngestConfig;
use rumqttd::local::{LinkError, LinkRx};
use rumqttd::{Broker, Notification};
use tokio_util::sync::CancellationToken;

use crate::{deliver, take_message, IngestError, IngestMetrics, IngestReport};

/// Messages between the broker's link and the ingest loop, and messages awaiting the bus.
const CHANNEL: usize = 4096;
const MAX_INFLIGHT: usize = 8192;
/// After shutdown, the link is drained until it has been quiet this long.
const QUIET: Duration = Duration::from_millis(100);

/// The client id of ingest's in-process link. rumqttd drops a connection when another takes its
/// client id, so it is one no login can use: no device id has a ':'.
pub const LINK_ID: &str = "ioc:ingest";

/// Whether a login `(client id, username, password)` may connect.
pub type Authenticate = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// Settings of the embedded broker.
#[derive(Clone)]
pub struct BrokerOptions {
    /// Asked about every CONNECT; a client without a username and password is refused.
    pub authenticate: Authenticate,
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub max_payload_bytes: usize,
    /// The topics ingest reads ([`crate::Ingestor::filters`]).
    pub filters: Vec<String>,
}

/// A started broker: its in-process link, subscribed to the topics ingest reads.
pub struct EmbeddedBroker {
    link: LinkRx,
}

/// Starts rumqttd on `options.listen` in its own threads. The caller checks beforehand that the
/// port is free (rumqttd only logs a bind failure).
pub fn start_broker(options: &BrokerOptions) -> Result<EmbeddedBroker, IngestError> {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: options.max_payload_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let authenticate = options.authenticate.clone();
    connections.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            let ok = client_id != LINK_ID && authenticate(&client_id, &username, &password);
            if !ok {
                tracing::warn!(%client_id, %username, "MQTT login refused");
            }
            std::future::ready(ok)
        },
    );
    let server = rumqttd::ServerSettings {
        name: "devices".to_string(),
        listen: options.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: options.max_connections,
            max_outgoing_packet_count: 200,
            // What the router keeps for a slow reader (the ingest link): 10 × 100 MiB.
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("devices".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = Broker::new(config);
    let (mut link_tx, link_rx) = broker
        .link(LINK_ID)
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    for filter in &options.filters {
        link_tx
            .subscribe(filter.as_str())
            .map_err(|e| IngestError::Broker(e.to_string()))?;
    }
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // Keeps link_tx (the subscription) alive as long as the broker.
            let _link_tx = link_tx;
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    Ok(EmbeddedBroker { link: link_rx })
}

/// One message taken from the broker.
struct Incoming {
    topic: bytes::Bytes,
    payload: bytes::Bytes,
    received_at: i64,
}

/// Reads the link in a thread (its receive is blocking) until `stop`, then until it has been
/// quiet for [`QUIET`] or `drain` has passed.
fn read_link(
    mut link: LinkRx,
    tx: tokio::sync::mpsc::Sender<Incoming>,
    stop: Arc<AtomicBool>,
    drain: Duration,
) {
    let mut stopping_since: Option<Instant> = None;
    loop {
        let wait = if stopping_since.is_some() {
            QUIET
        } else {
            Duration::from_millis(200)
        };
        if stopping_since.is_none() && stop.load(Ordering::Acquire) {
            stopping_since = Some(Instant::now());
        }
        if stopping_since.is_some_and(|s| s.elapsed() > drain) {
            return;
        }
        match link.recv_deadline(Instant::now() + wait) {
            Ok(Some(Notification::Forward(forward))) => {
                let incoming = Incoming {
                    topic: forward.publish.topic,
                    payload: forward.publish.payload,
                    received_at: ioc_contract::time::now_ms(),
                };
                if tx.blocking_send(incoming).is_err() {
                    return;
                }
            }
            // The router paused this link because its buffer was full; ask for more.
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = link.ready() {
                    tracing::error!(error = %e, "embedded broker link: cannot resume");
                    return;
                }
            }
            Ok(_) => {}
            Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {
                if stopping_since.is_some() {
                    return; // quiet: drained
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded broker link closed");
                return;
            }
        }
    }
}

/// Runs ingest on the embedded broker until `shutdown`, then drains: reads what the broker
/// still holds for the link, and waits up to `drain_timeout` for the bus to make it durable.
pub async fn run(
    broker: EmbeddedBroker,
    config: &IngestConfig,
    bus: &Bus,
    registry: RegistryView,
    metrics: IngestMetrics,
    shutdown: CancellationToken,
) -> Result<IngestReport, IngestError> {
    let producer = bus.producer(config.producer_linger)?;
    let ingestor = crate::Ingestor::new(config, registry, bus.topics().clone())
        .map_err(IngestError::Config)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let drain = config.drain_timeout;
        std::thread::Builder::new()
            .name("mqtt-link".into())
            .spawn(move || read_link(broker.link, tx, stop, drain))
            .map_err(|e| IngestError::Broker(e.to_string()))?
    };
    let mut inflight = FuturesUnordered::new();
    let mut report = IngestReport::default();
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => {
                tracing::info!(inflight = inflight.len(), "ingest draining the embedded broker");
                stop.store(true, Ordering::Release);
                draining = true;
            }
            Some(_) = inflight.next() => {}
            m = rx.recv(), if inflight.len() < MAX_INFLIGHT => match m {
                // The reader finished (drained after shutdown, or the link closed).
                None => break,
                Some(m) => {
                    report.messages += 1;
                    // The broker acknowledged it to the device on receipt.
                    report.acked += 1;
                    metrics.messages_acked.inc();
                    let records = take_message(
                        &m.topic,
                        &m.payload,
                        m.received_at,
                        config,
                        &ingestor,
                        &metrics,
                    );
                    // Sends start in receive order (FuturesUnordered polls new futures first
                    // come, first served), so the log keeps the broker's order.
                    inflight.push(deliver(producer.clone(), records, 0, metrics.clone()));
                }
            },
        }
        metrics.inflight_messages.set(inflight.len() as i64);
    }
    let confirmed = tokio::time::timeout(config.drain_timeout, async {
        while inflight.next().await.is_some() {}
    })
    .await;
    if confirmed.is_err() {
        report.left_unacked = inflight.len() as u64;
        tracing::error!(
            unconfirmed = inflight.len(),
            "drain timed out; these messages were not made durable"
        );
    }
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    Ok(report)
}
