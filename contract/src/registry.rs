//! The fold of the device registry: devices, the API's issued tokens, and the audit trail of
//! every change, as every instance builds it from the registry topic's [`RegistryEvent`]s.
//! Pure: the bus follows the topic into it (`ioc_bus::registry`), and the decoders look devices
//! up in it without any socket.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::{
    sha256_hex, Actor, AuditEntry, Device, DeviceCredentials, DeviceStatus, RegistryEvent,
    TokenRecord,
};

/// The in-memory fold of the registry topic. Cheap to clone; all clones share one map.
#[derive(Debug, Clone, Default)]
pub struct RegistryView {
    inner: Arc<RwLock<Fold>>,
    /// Devices whose messages ingest taps (commissioning or maintenance), readable without the
    /// lock: most of the time there are none and ingest skips the look-up.
    tapped: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Fold {
    /// Looked up for every message ingest reads: a fast hasher (seeded per process; its keys
    /// come from registrations, not from whoever publishes).
    devices: HashMap<String, Arc<Device>, foldhash::fast::RandomState>,
    /// The unique index of external ids: (kind, value) → device id.
    external: HashMap<(String, String), String>,
    /// Issued tokens not revoked, by their SHA-256 (hex).
    tokens: HashMap<String, TokenRecord>,
    /// Devices' live MQTT accounts, by device id.
    credentials: HashMap<String, DeviceCredentials>,
    /// Every change, in log order.
    audit: Vec<AuditEntry>,
    /// Ids of dead-lettered messages already replayed.
    replayed: HashSet<String>,
    /// Events this process is writing, by a hash of their bytes: each is folded in once,
    /// whether the writer's own apply or the topic's copy comes first.
    own: HashMap<u64, Own>,
    /// Devices whose status ingest taps, kept as devices come and change.
    tapped: usize,
    /// The first [`RegistryEvent::BusEpoch`] in log order.
    epoch: Option<String>,
}

/// Where an event this process writes stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Being written; not folded in yet.
    Writing,
    /// Folded in by the writer; its copy from the topic is skipped.
    AppliedByWriter,
    /// Its copy from the topic came first and was folded in; the writer skips it.
    AppliedFromTopic,
}

fn hash_of(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

impl Fold {
    /// Folds one event in.
    fn apply(&mut self, event: RegistryEvent) {
        match event {
            RegistryEvent::Registered { device } => self.register(device),
            RegistryEvent::Updated {
                device_id,
                changes,
                by,
                at,
            } => {
                let Some(device) = self.devices.get(&device_id) else {
                    tracing::error!(device = %device_id, "update of an unknown device ignored");
                    return;
                };
                let mut device = Device::clone(device);
                let was_tapped = device.status.is_tapped();
                changes.apply_to(&mut device);
                self.tapped =
                    self.tapped + usize::from(device.status.is_tapped()) - usize::from(was_tapped);
                self.devices.insert(device_id.clone(), Arc::new(device));
                self.audit.push(AuditEntry {
                    at,
                    by,
                    action: "device.updated".into(),
                    target: device_id,
                    detail: serde_json::to_value(&changes).unwrap_or_default(),
                });
            }
            RegistryEvent::TokenIssued { token } => {
                self.audit.push(AuditEntry {
                    at: token.issued_at,
                    by: token.issued_by.clone(),
                    action: "token.issued".into(),
                    target: token.token_id.clone(),
                    detail: serde_json::json!({"name": token.name, "role": token.role}),
                });
                self.tokens.insert(token.sha256.clone(), token);
            }
            RegistryEvent::Replayed {
                device_id,
                message_ids,
                by,
                at,
            } => {
                self.audit.push(AuditEntry {
                    at,
                    by,
                    action: "device.replayed".into(),
                    target: device_id,
                    detail: serde_json::json!({ "messages": message_ids.len() }),
                });
                self.replayed.extend(message_ids);
            }
            RegistryEvent::CredentialsIssued { credentials } => {
                self.audit.push(AuditEntry {
                    at: credentials.issued_at,
                    by: credentials.issued_by.clone(),
                    action: "device.credentials_issued".into(),
                    target: credentials.device_id.clone(),
                    detail: serde_json::json!({
                        "username": credentials.username,
                        "client_id": credentials.client_id,
                        "topics": credentials.topics,
                    }),
                });
                self.credentials
                    .insert(credentials.device_id.clone(), credentials);
            }
            RegistryEvent::CredentialsRevoked { device_id, by, at } => {
                self.credentials.remove(&device_id);
                self.audit.push(AuditEntry {
                    at,
                    by,
                    action: "device.credentials_revoked".into(),
                    target: device_id,
                    detail: serde_json::Value::Null,
                });
            }
            RegistryEvent::BusEpoch { epoch, .. } => {
                self.epoch.get_or_insert(epoch);
            }
            RegistryEvent::TokenRevoked { token_id, by, at } => {
                self.tokens.retain(|_, t| t.token_id != token_id);
                self.audit.push(AuditEntry {
                    at,
                    by,
                    action: "token.revoked".into(),
                    target: token_id,
                    detail: serde_json::Value::Null,
                });
            }
        }
    }

    /// Folds a registration in. An external id already held by another device stays with the
    /// device that registered it first (every instance folds the same log in the same order, so
    /// they all agree); the API refuses such a registration before it is written, so this only
    /// settles a race between two API instances.
    fn register(&mut self, mut device: Device) {
        // A device registered again gives up the ids it no longer lists.
        let previous = self.devices.get(&device.device_id).cloned();
        if let Some(previous) = &previous {
            for (kind, value) in &previous.external_ids {
                self.external.remove(&(kind.clone(), value.clone()));
            }
        }
        device.external_ids.retain(|kind, value| {
            let key = (kind.clone(), value.clone());
            match self.external.get(&key) {
                Some(owner) if *owner != device.device_id => {
                    tracing::error!(device = %device.device_id, %kind, owner = %owner, "external id already belongs to another device; ignored for this one");
                    false
                }
                _ => true,
            }
        });
        for (kind, value) in &device.external_ids {
            self.external
                .insert((kind.clone(), value.clone()), device.device_id.clone());
        }
        self.audit.push(AuditEntry {
            at: device.registered_at,
            // Before tokens had names, only the admin token could register.
            by: device
                .registered_by
                .clone()
                .unwrap_or_else(Actor::admin_token),
            action: if previous.is_some() {
                "device.reregistered".into()
            } else {
                "device.registered".into()
            },
            target: device.device_id.clone(),
            detail: serde_json::to_value(&device).unwrap_or_default(),
        });
        self.tapped = self.tapped + usize::from(device.status.is_tapped())
            - usize::from(previous.as_ref().is_some_and(|p| p.status.is_tapped()));
        self.devices
            .insert(device.device_id.clone(), Arc::new(device));
    }
}

impl RegistryView {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Fold> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one event in.
    pub fn apply(&self, event: RegistryEvent) {
        let mut fold = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.apply_locked(&mut fold, event);
    }

    fn apply_locked(&self, fold: &mut Fold, event: RegistryEvent) {
        fold.apply(event);
        self.tapped.store(fold.tapped, Ordering::Relaxed);
    }

    /// Notes that this process is writing the event serialized as `payload`; returns its key.
    pub fn writing(&self, payload: &[u8]) -> u64 {
        let key = hash_of(payload);
        let mut fold = self.inner.write().unwrap_or_else(|e| e.into_inner());
        fold.own.insert(key, Own::Writing);
        key
    }

    /// The write of `event` ended (`ok`: the bus has it): folds it in unless its copy from the
    /// topic already was.
    pub fn written(&self, key: u64, event: RegistryEvent, ok: bool) {
        let mut fold = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match (ok, fold.own.get(&key).copied()) {
            // If it was written after all, the follower folds it in when it reads it.
            (false, Some(Own::Writing)) => {
                fold.own.remove(&key);
            }
            (false, _) => {}
            (true, Some(Own::AppliedFromTopic)) => {
                fold.own.remove(&key);
            }
            (true, _) => {
                fold.own.insert(key, Own::AppliedByWriter);
                self.apply_locked(&mut fold, event);
            }
        }
    }

    /// Folds in a record read from the registry topic, unless it is this process's own event
    /// that its writer already folded in.
    pub fn apply_from_topic(&self, payload: &[u8], event: RegistryEvent) {
        let mut fold = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let key = hash_of(payload);
        match fold.own.get(&key).copied() {
            Some(Own::AppliedByWriter) => {
                fold.own.remove(&key);
            }
            Some(Own::Writing) => {
                fold.own.insert(key, Own::AppliedFromTopic);
                self.apply_locked(&mut fold, event);
            }
            Some(Own::AppliedFromTopic) | None => self.apply_locked(&mut fold, event),
        }
    }

    /// The bus's epoch, once the registry topic has one.
    pub fn epoch(&self) -> Option<String> {
        self.read().epoch.clone()
    }

    /// How many devices' messages ingest taps.
    pub fn tapped(&self) -> usize {
        self.tapped.load(Ordering::Relaxed)
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

    /// The live (issued, not revoked) token with this SHA-256 (hex).
    pub fn token_by_hash(&self, sha256: &str) -> Option<TokenRecord> {
        self.read().tokens.get(sha256).cloned()
    }

    /// Live tokens, oldest first.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut all: Vec<TokenRecord> = self.read().tokens.values().cloned().collect();
        all.sort_by(|a, b| (a.issued_at, &a.token_id).cmp(&(b.issued_at, &b.token_id)));
        all
    }

    /// The live MQTT account of a device.
    pub fn credentials(&self, device_id: &str) -> Option<DeviceCredentials> {
        self.read().credentials.get(device_id).cloned()
    }

    /// Whether an MQTT login may connect: a device's live account (username, client id and
    /// password all match) of a device that is not decommissioned. What `ioc up`'s broker asks.
    pub fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        let fold = self.read();
        let Some(account) = fold.credentials.get(username) else {
            return false;
        };
        let in_service = fold
            .devices
            .get(&account.device_id)
            .is_some_and(|d| d.status != DeviceStatus::Decommissioned);
        // A hash comparison: its timing says nothing useful about a random password.
        in_service
            && account.username == username
            && account.client_id == client_id
            && account.sha256 == sha256_hex(password)
    }

    /// Whether the dead-lettered message with this id was already replayed.
    pub fn was_replayed(&self, message_id: &str) -> bool {
        self.read().replayed.contains(message_id)
    }

    /// Whether a token with this id was ever issued (revoked or not).
    pub fn token_issued(&self, token_id: &str) -> bool {
        self.read()
            .audit
            .iter()
            .any(|e| e.action == "token.issued" && e.target == token_id)
    }

    /// The audit trail of registry changes that `keep` selects, in log order.
    pub fn audit(&self, keep: impl Fn(&AuditEntry) -> bool) -> Vec<AuditEntry> {
        self.read()
            .audit
            .iter()
            .filter(|e| keep(e))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the bus's follower does with a record of the registry topic.
    fn apply_message(view: &RegistryView, payload: &[u8]) {
        view.apply_from_topic(payload, serde_json::from_slice(payload).unwrap());
    }

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

    #[test]
    fn updates_change_only_what_they_name_and_every_change_is_audited() {
        let view = RegistryView::default();
        assert_eq!(view.tapped(), 0);
        let installer = Actor {
            name: "lan".into(),
            role: crate::Role::Installer,
        };
        view.apply(RegistryEvent::Registered {
            device: Device {
                device_id: "aq-1".into(),
                name: "Old name".into(),
                status: crate::DeviceStatus::Commissioning,
                registered_at: 10,
                registered_by: Some(installer.clone()),
                ..Default::default()
            },
        });
        view.apply(RegistryEvent::Updated {
            device_id: "aq-1".into(),
            changes: crate::DeviceChanges {
                status: Some(crate::DeviceStatus::Active),
                commune: Some("Phường Buôn Ma Thuột".into()),
                ..Default::default()
            },
            by: installer.clone(),
            at: 20,
        });
        // An update of a device nobody registered changes nothing.
        view.apply(RegistryEvent::Updated {
            device_id: "ghost".into(),
            changes: Default::default(),
            by: installer.clone(),
            at: 21,
        });
        let device = view.get("aq-1").unwrap();
        assert_eq!(device.status, crate::DeviceStatus::Active);
        assert_eq!(
            view.tapped(),
            0,
            "commissioning, then active: no longer tapped"
        );
        assert_eq!(device.commune.as_deref(), Some("Phường Buôn Ma Thuột"));
        assert_eq!(device.name, "Old name");
        assert!(view.get("ghost").is_none());
        let trail = view.audit(|e| e.target == "aq-1");
        let actions: Vec<(&str, i64, &str)> = trail
            .iter()
            .map(|e| (e.action.as_str(), e.at, e.by.name.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("device.registered", 10, "lan"),
                ("device.updated", 20, "lan")
            ]
        );
        assert_eq!(trail[1].detail["status"], "active");
        // A record from before tokens had names was registered with the admin token.
        view.apply(registered("old", "1"));
        assert_eq!(
            view.audit(|e| e.target == "old")[0].by,
            Actor::admin_token()
        );
    }

    #[test]
    fn a_revoked_token_is_no_longer_found() {
        let view = RegistryView::default();
        let token = |id: &str, hash: &str| TokenRecord {
            token_id: id.into(),
            name: format!("{id}-name"),
            role: crate::Role::Enforcement,
            sha256: hash.into(),
            issued_at: 1,
            issued_by: Actor::admin_token(),
        };
        view.apply(RegistryEvent::TokenIssued {
            token: token("t1", "h1"),
        });
        view.apply(RegistryEvent::TokenIssued {
            token: token("t2", "h2"),
        });
        assert_eq!(view.token_by_hash("h1").unwrap().token_id, "t1");
        view.apply(RegistryEvent::TokenRevoked {
            token_id: "t1".into(),
            by: Actor::admin_token(),
            at: 5,
        });
        assert!(view.token_by_hash("h1").is_none());
        assert_eq!(view.token_by_hash("h2").unwrap().token_id, "t2");
        assert!(view.token_issued("t1"));
        assert_eq!(view.tokens().len(), 1);
        let actions: Vec<String> = view.audit(|_| true).into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["token.issued", "token.issued", "token.revoked"]);
    }

    #[test]
    fn a_device_logs_in_with_its_live_account_only() {
        let view = RegistryView::default();
        view.apply(registered("aq-1", "861"));
        let issue = |password: &str, at: i64| RegistryEvent::CredentialsIssued {
            credentials: DeviceCredentials {
                device_id: "aq-1".into(),
                username: "aq-1".into(),
                client_id: "aq-1".into(),
                topics: vec!["ioc/v1/devices/aq-1/telemetry".into()],
                sha256: sha256_hex(password),
                issued_at: at,
                issued_by: Actor::admin_token(),
            },
        };
        assert!(!view.authenticate("aq-1", "aq-1", "pw1"), "no account yet");
        view.apply(issue("pw1", 1));
        assert!(view.authenticate("aq-1", "aq-1", "pw1"));
        assert!(!view.authenticate("aq-1", "aq-1", "pw2"), "wrong password");
        assert!(
            !view.authenticate("other", "aq-1", "pw1"),
            "wrong client id"
        );
        assert!(!view.authenticate("aq-1", "aq-2", "pw1"), "wrong username");
        // Rotated: only the new password works.
        view.apply(issue("pw2", 2));
        assert!(!view.authenticate("aq-1", "aq-1", "pw1"));
        assert!(view.authenticate("aq-1", "aq-1", "pw2"));
        // Decommissioned: refused while the account lasts.
        let status = |s| RegistryEvent::Updated {
            device_id: "aq-1".into(),
            changes: crate::DeviceChanges {
                status: Some(s),
                ..Default::default()
            },
            by: Actor::admin_token(),
            at: 3,
        };
        view.apply(status(DeviceStatus::Decommissioned));
        assert!(!view.authenticate("aq-1", "aq-1", "pw2"));
        view.apply(status(DeviceStatus::Active));
        assert!(view.authenticate("aq-1", "aq-1", "pw2"));
        // Revoked.
        view.apply(RegistryEvent::CredentialsRevoked {
            device_id: "aq-1".into(),
            by: Actor::admin_token(),
            at: 4,
        });
        assert!(!view.authenticate("aq-1", "aq-1", "pw2"));
        assert!(view.credentials("aq-1").is_none());
        let actions: Vec<String> = view
            .audit(|e| e.action.starts_with("device.credentials"))
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "device.credentials_issued",
                "device.credentials_issued",
                "device.credentials_revoked"
            ]
        );
    }

    #[test]
    fn an_event_this_process_writes_is_folded_in_once_whichever_copy_comes_first() {
        let update = |at| RegistryEvent::Updated {
            device_id: "a".into(),
            changes: crate::DeviceChanges {
                name: Some(format!("n{at}")),
                ..Default::default()
            },
            by: Actor::admin_token(),
            at,
        };
        let view = RegistryView::default();
        view.apply(registered("a", "1"));
        let updates = || view.audit(|e| e.action == "device.updated").len();
        // The writer's apply first, then the topic's copy.
        let bytes = serde_json::to_vec(&update(1)).unwrap();
        let key = view.writing(&bytes);
        view.written(key, update(1), true);
        apply_message(&view, &bytes);
        assert_eq!(updates(), 1);
        // The topic's copy first.
        let bytes = serde_json::to_vec(&update(2)).unwrap();
        let key = view.writing(&bytes);
        apply_message(&view, &bytes);
        view.written(key, update(2), true);
        assert_eq!(updates(), 2);
        // Another process's event: folded in as read.
        apply_message(&view, &serde_json::to_vec(&update(3)).unwrap());
        assert_eq!(updates(), 3);
        // A failed write is not folded in by the writer.
        let bytes = serde_json::to_vec(&update(4)).unwrap();
        let key = view.writing(&bytes);
        view.written(key, update(4), false);
        assert_eq!(updates(), 3);
        assert_eq!(view.get("a").unwrap().name, "n3");
        assert!(view.read().own.is_empty());
    }
}
