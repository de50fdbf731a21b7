//! Live data for websocket clients: one bus tail per API instance (outside any consumer
//! group, so every instance sees everything), fanned out through a bounded broadcast channel.
//! Each message is serialized once, whatever the number of clients.

use std::sync::Arc;

use ioc_bus::{Bus, Consumer, StartAt};
use ioc_contract::{Aggregate, Alert, ReadingBatch};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::routes::{ApiAggregate, ApiAlert, ApiReading};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Readings,
    Aggregates,
    Alerts,
}

/// One message for websocket clients: `{"stream": ..., "data": {...}}`, already serialized.
#[derive(Debug)]
pub struct LiveMessage {
    pub stream: StreamName,
    pub device_id: String,
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
            json,
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

/// Starts tailing the live topics from their current end.
pub fn tail(
    bus: &Bus,
    hub: LiveHub,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ioc_bus::BusError> {
    let topics = bus.topics().clone();
    let mut consumer = bus.consumer(
        &[&topics.readings, &topics.aggregates, &topics.alerts],
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
                }
            } else if topic == topics.aggregates {
                if let Ok(a) = serde_json::from_slice::<Aggregate>(&payload) {
                    hub.publish(LiveMessage::new(
                        StreamName::Aggregates,
                        &a.device_id,
                        &ApiAggregate::from(&a),
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
