//! The device registry: a Kafka topic of [`RegistryEvent`]s, folded by every instance into a
//! [`RegistryView`].
//!
//! Why a topic: every stage already depends on Kafka and nothing else is shared by all of them
//! (ingest has no ClickHouse); the log survives restarts; a new instance rebuilds the view by
//! reading from the start, and a registration reaches every running instance within
//! milliseconds, so ingest accepts a new device's first message without polling a database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use ioc_contract::{Device, RegistryEvent};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;
use tokio_util::sync::CancellationToken;

use crate::{BusError, KafkaBus};

/// The in-memory fold of the registry topic. Cheap to clone; all clones share one map.
#[derive(Debug, Clone, Default)]
pub struct RegistryView {
    devices: Arc<RwLock<HashMap<String, Device>>>,
}

impl RegistryView {
    pub fn apply(&self, event: RegistryEvent) {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        match event {
            RegistryEvent::Registered { device } => {
                devices.insert(device.device_id.clone(), device);
            }
        }
    }

    pub fn get(&self, device_id: &str) -> Option<Device> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .cloned()
    }

    pub fn contains(&self, device_id: &str) -> bool {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(device_id)
    }

    pub fn len(&self) -> usize {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every device, ordered by id.
    pub fn list(&self) -> Vec<Device> {
        let mut all: Vec<Device> = self
            .devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        all
    }
}

/// Publishes a registry event and waits until Kafka has it.
pub async fn publish(
    producer: &FutureProducer,
    bus: &KafkaBus,
    event: &RegistryEvent,
) -> Result<(), BusError> {
    let RegistryEvent::Registered { device } = event;
    let payload = serde_json::to_vec(event).expect("registry events serialize");
    producer
        .send(
            FutureRecord::to(&bus.topics.registry)
                .key(&device.device_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| BusError::Kafka(e))?;
    Ok(())
}

/// Reads the registry topic up to its current end into `view`, then keeps following it in a
/// background task until `shutdown`. Returns once the view has caught up, so a caller that
/// starts work afterwards knows every device registered before it started.
pub async fn follow(
    bus: &KafkaBus,
    view: RegistryView,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let topic = bus.topics.registry.clone();
    let consumer = bus.assigned_consumer(&[&topic], Offset::Beginning)?;
    let (low, high) = {
        let c = &consumer;
        let t = topic.clone();
        tokio::task::block_in_place(|| c.fetch_watermarks(&t, 0, Duration::from_secs(10)))?
    };
    if high > low {
        let mut stream = consumer.stream();
        while let Some(message) = stream.next().await {
            let message = message?;
            apply_message(&view, message.payload());
            if message.offset() + 1 >= high {
                break;
            }
        }
    }
    Ok(tokio::spawn(async move {
        keep_following(consumer, view, shutdown).await
    }))
}

async fn keep_following(consumer: StreamConsumer, view: RegistryView, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            message = consumer.recv() => match message {
                Ok(m) => apply_message(&view, m.payload()),
                Err(e) => {
                    tracing::warn!(error = %e, "registry topic read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
}

fn apply_message(view: &RegistryView, payload: Option<&[u8]>) {
    match payload.map(serde_json::from_slice::<RegistryEvent>) {
        Some(Ok(event)) => view.apply(event),
        Some(Err(e)) => tracing::error!(error = %e, "unreadable registry event skipped"),
        None => {}
    }
}
