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
    inner: Arc<RwLock<Fold>>,
}

#[derive(Debug, Default)]
struct Fold {
    devices: HashMap<String, Arc<Device>>,
    /// The unique index of external ids: (kind, value) → device id.
    external: HashMap<(String, String), String>,
}

impl RegistryView {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Fold> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one event in. An external id already held by another device stays with the device
    /// that registered it first (every instance folds the same log in the same order, so they all
    /// agree); the API refuses such a registration before it is written, so this only settles a
    /// race between two API instances.
    pub fn apply(&self, event: RegistryEvent) {
        let mut fold = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            RegistryEvent::Registered { mut device } => {
                // A device registered again gives up the ids it no longer lists.
                if let Some(previous) = fold.devices.get(&device.device_id).cloned() {
                    for (kind, value) in &previous.external_ids {
                        fold.external.remove(&(kind.clone(), value.clone()));
                    }
                }
                device.external_ids.retain(|kind, value| {
                    let key = (kind.clone(), value.clone());
                    match fold.external.get(&key) {
                        Some(owner) if *owner != device.device_id => {
                            tracing::error!(device = %device.device_id, %kind, owner = %owner, "external id already belongs to another device; ignored for this one");
                            false
                        }
                        _ => true,
                    }
                });
                for (kind, value) in &device.external_ids {
                    fold.external
                        .insert((kind.clone(), value.clone()), device.device_id.clone());
                }
                fold.devices
                    .insert(device.device_id.clone(), Arc::new(device));
            }
        }
    }

    pub fn get(&self, device_id: &str) -> Option<Arc<Device>> {
        self.read().devices.get(device_id).cloned()
    }

    pub fn contains(&self, device_id: &str) -> bool {
        self.read().devices.contains_key(device_id)
    }

    /// The device an external id (`imei`, `station_code`, `camera_id`) belongs to.
    pub fn by_external_id(&self, kind: &str, value: &str) -> Option<Arc<Device>> {
        let fold = self.read();
        let id = fold.external.get(&(kind.to_string(), value.to_string()))?;
        fold.devices.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every device, ordered by id.
    pub fn list(&self) -> Vec<Arc<Device>> {
        let mut all: Vec<Arc<Device>> = self.read().devices.values().cloned().collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(id: &str, imei: &str) -> RegistryEvent {
        RegistryEvent::Registered {
            device: Device {
                device_id: id.into(),
                external_ids: [("imei".to_string(), imei.to_string())].into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn external_ids_resolve_and_the_first_holder_keeps_a_contested_one() {
        let view = RegistryView::default();
        view.apply(registered("a", "861"));
        view.apply(registered("b", "861"));
        view.apply(registered("c", "862"));
        assert_eq!(view.by_external_id("imei", "861").unwrap().device_id, "a");
        assert_eq!(view.by_external_id("imei", "862").unwrap().device_id, "c");
        assert!(view.by_external_id("station_code", "861").is_none());
        // b is registered, without the id it could not have.
        assert!(view.get("b").unwrap().external_ids.is_empty());
        assert_eq!(view.len(), 3);
        // Registered again with another id, a gives up the old one.
        view.apply(registered("a", "863"));
        assert_eq!(view.by_external_id("imei", "863").unwrap().device_id, "a");
        assert!(view.by_external_id("imei", "861").is_none());
        view.apply(registered("b", "861"));
        assert_eq!(view.by_external_id("imei", "861").unwrap().device_id, "b");
    }
}
