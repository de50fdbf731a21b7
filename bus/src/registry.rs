//! The device registry: a bus topic of [`RegistryEvent`]s, folded by every instance into a
//! [`RegistryView`].
//!
//! Why a topic: every stage already depends on the bus and nothing else is shared by all of them
//! (ingest has no ClickHouse); the log survives restarts; a new instance rebuilds the view by
//! reading from the start, and a registration reaches every running instance within
//! milliseconds, so ingest accepts a new device's first message without polling a database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ioc_contract::{Device, RegistryEvent};
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, Consumer, Producer, StartAt};

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

/// Publishes a registry event and waits until the bus has it durably.
pub async fn publish(
    producer: &Producer,
    bus: &Bus,
    event: &RegistryEvent,
) -> Result<(), BusError> {
    let RegistryEvent::Registered { device } = event;
    let payload = serde_json::to_vec(event).expect("registry events serialize");
    producer
        .send(&bus.topics().registry, &device.device_id, &payload)
        .await
}

/// Reads the registry topic up to its current end into `view`, then keeps following it in a
/// background task until `shutdown`. Returns once the view has caught up, so a caller that
/// starts work afterwards knows every device registered before it started.
pub async fn follow(
    bus: &Bus,
    view: RegistryView,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let topic = bus.topics().registry.clone();
    let mut consumer = bus.consumer(&[&topic], StartAt::Beginning)?;
    let (low, high) = {
        let b = bus.clone();
        let t = topic.clone();
        tokio::task::spawn_blocking(move || b.watermarks(&t, 0))
            .await
            .expect("watermarks task")?
    };
    if high > low {
        loop {
            let record = consumer.recv().await?;
            apply_message(&view, &record.payload);
            if record.offset + 1 >= high {
                break;
            }
        }
    }
    Ok(tokio::spawn(async move {
        keep_following(consumer, view, shutdown).await
    }))
}

async fn keep_following(mut consumer: Consumer, view: RegistryView, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            record = consumer.recv() => match record {
                Ok(r) => apply_message(&view, &r.payload),
                Err(e) => {
                    tracing::warn!(error = %e, "registry topic read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
}

fn apply_message(view: &RegistryView, payload: &[u8]) {
    if payload.is_empty() {
        return;
    }
    match serde_json::from_slice::<RegistryEvent>(payload) {
        Ok(event) => view.apply(event),
        Err(e) => tracing::error!(error = %e, "unreadable registry event skipped"),
    }
}
