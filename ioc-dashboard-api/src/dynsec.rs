//! Mosquitto's dynamic security plugin, managed over MQTT: device accounts and the ingest's.
//!
//! The plugin (loaded by the shipped `config/mosquitto.conf`) takes JSON commands published on
//! `$CONTROL/dynamic-security/v1` by an admin account and answers on `.../response`, so any API
//! instance can manage it without the broker's files. Its ACLs have no per-username patterns:
//! each device gets its own role, `ioc-device-<id>`, allowing it to publish on its own topics
//! and nothing else (the plugin's defaults refuse publishing and subscribing). Deleting a client
//! disconnects it.
//!
//! Every operation is idempotent and only ever deletes an account that is a device's: one whose
//! only role is that device's role. So a device id that happens to name an operator's account
//! (`admin`, say) is refused instead of replacing it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Followed};

pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// The role of the ingest's account: subscribing to the shared subscriptions of its routes.
pub const INGEST_ROLE: &str = "ioc-ingest";
/// How long a command may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer the admin connection takes.
const ANSWER_LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    #[error("the broker's dynamic security plugin did not answer within {0:?} (is the broker up, the plugin loaded, and api.mqtt_username one of its admins?)")]
    Timeout(Duration),
    #[error("the broker refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error("the broker already has an account named {0:?} that is not this device's (or, for the ingest, that is a device's)")]
    NotOurs(String),
    #[error("unreadable answer from the broker: {0}")]
    Unreadable(String),
}

/// One answer of the plugin to one command.
#[derive(Debug, Clone, Deserialize)]
struct Answer {
    command: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default, rename = "correlationData")]
    correlation: Option<String>,
}

impl Answer {
    /// Ok unless the command failed with an error other than one of `tolerated`.
    fn check(&self, tolerated: &[&str]) -> Result<(), DynsecError> {
        match &self.error {
            Some(e) if !tolerated.contains(&e.as_str()) => Err(DynsecError::Refused {
                command: self.command.clone(),
                error: e.clone(),
            }),
            _ => Ok(()),
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Answer>>>>>;

/// A connection to the broker as a dynamic-security admin. Cheap to clone.
#[derive(Clone)]
pub struct Dynsec {
    client: AsyncClient,
    pending: Pending,
    /// True while subscribed to the answers.
    ready: watch::Receiver<bool>,
    /// Distinguishes this process's requests from other API instances'.
    prefix: String,
    next: Arc<AtomicU64>,
}

/// Every device's role starts with this.
const DEVICE_ROLE_PREFIX: &str = "ioc-device-";

/// The role of one device's account.
pub fn device_role(device_id: &str) -> String {
    format!("{DEVICE_ROLE_PREFIX}{device_id}")
}

/// The role names of a `getClient` answer.
fn roles_of(answer: &Answer) -> Vec<&str> {
    answer.data["client"]["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["rolename"].as_str()).collect())
        .unwrap_or_default()
}

impl Dynsec {
    /// Connects (and keeps reconnecting) as `username` until `shutdown`.
    pub fn connect(
        host: &str,
        port: u16,
        username: &str,
        password: &str,
        client_id: &str,
        shutdown: CancellationToken,
    ) -> (Dynsec, tokio::task::JoinHandle<()>) {
        let mut options = MqttOptions::new(client_id, host, port);
        // Mosquitto 2.0 sends every answer to every admin subscribed, ours or not, and a list
        // of a few hundred accounts is far above rumqttc's default 10 KiB.
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(ANSWER_LIMIT, ANSWER_LIMIT)
            .set_credentials(username, password);
        let (ready_tx, ready) = watch::channel(false);
        let pending: Pending = Arc::default();
        let answers = pending.clone();
        let (client, task) = broker::follow(
            options,
            RESPONSE_TOPIC,
            QoS::AtLeastOnce,
            shutdown,
            move |event| match event {
                Followed::Subscribed(granted) => {
                    if !granted {
                        tracing::error!("the broker refused the dynamic security answers to api.mqtt_username: it must be a dynamic-security admin");
                    }
                    let _ = ready_tx.send(granted);
                }
                Followed::Message(p) if p.topic == RESPONSE_TOPIC => deliver(&answers, &p.payload),
                Followed::Message(_) => {}
                Followed::Lost => {
                    let _ = ready_tx.send(false);
                }
            },
        );
        let dynsec = Dynsec {
            client,
            pending,
            ready,
            prefix: client_id.to_string(),
            next: Arc::default(),
        };
        (dynsec, task)
    }

    /// Sends `commands` in one message and returns the plugin's answers, in order.
    async fn request(&self, mut commands: Vec<Value>) -> Result<Vec<Answer>, DynsecError> {
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        for c in &mut commands {
            c["correlationData"] = json!(id);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let result = tokio::time::timeout(TIMEOUT, async {
            let mut ready = self.ready.clone();
            ready
                .wait_for(|r| *r)
                .await
                .map_err(|_| DynsecError::Timeout(TIMEOUT))?;
            let body = json!({ "commands": commands }).to_string();
            self.client
                .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, body)
                .await
                .map_err(|_| DynsecError::Timeout(TIMEOUT))?;
            rx.await.map_err(|_| DynsecError::Timeout(TIMEOUT))
        })
        .await
        .unwrap_or(Err(DynsecError::Timeout(TIMEOUT)));
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let answers = result?;
        if answers.len() != commands.len() {
            return Err(DynsecError::Unreadable(format!(
                "{} answers to {} commands",
                answers.len(),
                commands.len()
            )));
        }
        Ok(answers)
    }

    /// Refuses to touch `username` unless it is absent or a device's account (its only role
    /// is `role`). Returns whether it exists.
    async fn check_ours(&self, username: &str, role: &str) -> Result<bool, DynsecError> {
        let answer = self
            .request(vec![json!({"command": "getClient", "username": username})])
            .await?
            .remove(0);
        if answer.error.as_deref() == Some("Client not found") {
            return Ok(false);
        }
        answer.check(&[])?;
        if roles_of(&answer) == [role] {
            Ok(true)
        } else {
            Err(DynsecError::NotOurs(username.to_string()))
        }
    }

    /// Creates a device's account (or replaces it, disconnecting whoever used the old one):
    /// `username` and `password`, only as `client_id`, publishing only on `topics`.
    pub async fn provision(
        &self,
        device_id: &str,
        username: &str,
        client_id: &str,
        password: &str,
        topics: &[String],
    ) -> Result<(), DynsecError> {
        let role = device_role(device_id);
        self.check_ours(username, &role).await?;
        let acls: Vec<Value> = topics
            .iter()
            .map(|t| json!({"acltype": "publishClientSend", "topic": t, "allow": true}))
            .collect();
        let answers = self
            .request(vec![
                json!({"command": "deleteClient", "username": username}),
                json!({"command": "deleteRole", "rolename": role}),
                json!({"command": "createRole", "rolename": role, "acls": acls}),
                json!({"command": "createClient", "username": username, "password": password,
                       "clientid": client_id, "roles": [{"rolename": role}]}),
            ])
            .await?;
        answers[0].check(&["Client not found"])?;
        answers[1].check(&["Role not found"])?;
        answers[2].check(&[])?;
        answers[3].check(&[])
    }

    /// Deletes a device's account and role, disconnecting it. Absent already: nothing to do.
    pub async fn remove(&self, device_id: &str, username: &str) -> Result<(), DynsecError> {
        let role = device_role(device_id);
        self.check_ours(username, &role).await?;
        let answers = self
            .request(vec![
                json!({"command": "deleteClient", "username": username}),
                json!({"command": "deleteRole", "rolename": role}),
            ])
            .await?;
        answers[0].check(&["Client not found"])?;
        answers[1].check(&["Role not found"])
    }

    /// Makes sure the ingest's account exists with role [`INGEST_ROLE`] allowing its shared
    /// subscriptions (`$share/<group>/<filter>`: the plugin matches the literal filter). An
    /// existing account keeps its password. Returns what it created.
    pub async fn ensure_ingest(
        &self,
        username: &str,
        password: &str,
        subscriptions: &[String],
    ) -> Result<Vec<String>, DynsecError> {
        // A device's account never becomes the ingest's (it would read all telemetry).
        let existing = self
            .request(vec![json!({"command": "getClient", "username": username})])
            .await?
            .remove(0);
        let a_device = roles_of(&existing)
            .iter()
            .any(|r| r.starts_with(DEVICE_ROLE_PREFIX));
        if existing.error.is_none() && a_device {
            return Err(DynsecError::NotOurs(username.to_string()));
        }
        let acl = |t: &String| json!({"acltype": "subscribeLiteral", "topic": t, "allow": true});
        let mut commands = vec![json!({"command": "createRole", "rolename": INGEST_ROLE,
            "acls": subscriptions.iter().map(acl).collect::<Vec<_>>()})];
        for t in subscriptions {
            let mut add = acl(t);
            add["command"] = json!("addRoleACL");
            add["rolename"] = json!(INGEST_ROLE);
            commands.push(add);
        }
        commands.push(json!({"command": "createClient", "username": username,
            "password": password, "roles": [{"rolename": INGEST_ROLE}]}));
        commands.push(
            json!({"command": "addClientRole", "username": username, "rolename": INGEST_ROLE}),
        );
        let answers = self.request(commands).await?;
        let mut created = Vec::new();
        for a in &answers {
            match a.command.as_str() {
                "createRole" => a.check(&["Role already exists"])?,
                "addRoleACL" => a.check(&["ACL with this topic already exists"])?,
                "createClient" => a.check(&["Client already exists"])?,
                // Already in the role, or any other reason: the subscription check shows it.
                _ => {
                    if let Some(e) = &a.error {
                        tracing::debug!(command = %a.command, error = %e, "dynamic security");
                    }
                }
            }
            if a.error.is_none() && a.command.starts_with("create") {
                created.push(a.command.clone());
            }
        }
        Ok(created)
    }
}

/// Hands an answer message to the request it answers.
fn deliver(pending: &Pending, payload: &[u8]) {
    #[derive(Deserialize)]
    struct Message {
        responses: Vec<Answer>,
    }
    let Ok(message) = serde_json::from_slice::<Message>(payload) else {
        tracing::warn!("unreadable dynamic security answer ignored");
        return;
    };
    let Some(id) = message.responses.iter().find_map(|a| a.correlation.clone()) else {
        return;
    };
    if let Some(tx) = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id)
    {
        let _ = tx.send(message.responses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_reach_the_request_they_answer() {
        let pending: Pending = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        pending.lock().unwrap().insert("api-1".into(), tx);
        // Another instance's answer, and an unreadable one: ignored.
        deliver(
            &pending,
            br#"{"responses":[{"command":"getClient","correlationData":"other-1"}]}"#,
        );
        deliver(&pending, b"not json");
        assert!(rx.try_recv().is_err());
        deliver(
            &pending,
            br#"{"responses":[{"command":"deleteClient","error":"Client not found","correlationData":"api-1"},{"command":"createClient","correlationData":"api-1"}]}"#,
        );
        let answers = rx.try_recv().unwrap();
        assert_eq!(answers.len(), 2);
        assert!(answers[0].check(&["Client not found"]).is_ok());
        assert!(answers[0].check(&[]).is_err());
        assert!(answers[1].check(&[]).is_ok());
        assert!(pending.lock().unwrap().is_empty());
    }
}
