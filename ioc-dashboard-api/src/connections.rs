//! Which MQTT clients the broker saw connect and disconnect, for the commissioning checklist.
//!
//! Mosquitto publishes its own log on `$SYS/broker/log/<level>` when configured with
//! `log_dest topic` (the shipped `config/mosquitto.conf` is); its notice lines say when a
//! client connected ("New client connected from 10.0.0.7:51234 as aq-001 (p2, c1, k60,
//! u'aq-001').") and left. The API follows them over MQTT. `ioc up`'s embedded broker reports no
//! connections; there `ioc up` notes the logins it accepts (never a disconnection, so the log
//! is not `reported`), and the checklist takes a login or a message for the connection.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ioc_config::MqttConfig;
use ioc_contract::time::now_ms;
use tokio_util::sync::CancellationToken;

/// The topic filter of Mosquitto's notice-level log lines.
pub const MOSQUITTO_LOG: &str = "$SYS/broker/log/N";

/// What the broker said about one client id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientState {
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
    /// The username it logged in with, if any.
    pub username: Option<String>,
    /// Where from (`address:port`).
    pub address: Option<String>,
}

impl ClientState {
    /// Connected and not disconnected since.
    pub fn is_connected(&self) -> bool {
        self.connected_at.is_some() && self.disconnected_at < self.connected_at
    }
}

/// Per client id, its [`ClientState`]. Cheap to clone; clones share the map. `reported` says
/// whether anything feeds it (false on the embedded broker).
#[derive(Debug, Clone, Default)]
pub struct ConnectionLog {
    clients: Arc<RwLock<HashMap<String, ClientState>>>,
    pub reported: bool,
}

/// One connection event from a broker log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Connected {
        client_id: String,
        address: String,
        username: Option<String>,
    },
    Disconnected {
        client_id: String,
    },
}

/// Reads a Mosquitto log line (with or without its `1700000000: ` timestamp prefix).
pub fn parse_mosquitto_line(line: &str) -> Option<Seen> {
    let line = line.trim();
    let line = match line.split_once(": ") {
        Some((stamp, rest)) if stamp.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => line,
    };
    if let Some(rest) = line.strip_prefix("New client connected from ") {
        let (address, rest) = rest.split_once(" as ")?;
        let (client_id, details) = rest.split_once(" (")?;
        let username = details
            .split(", ")
            .find_map(|part| part.strip_prefix("u'"))
            .and_then(|u| u.split('\'').next())
            .map(str::to_string);
        return Some(Seen::Connected {
            client_id: client_id.to_string(),
            address: address.to_string(),
            username,
        });
    }
    // "Client X disconnected.", "Client X closed its connection.", "Client X has exceeded
    // timeout, disconnecting.", "Client X disconnected due to ...", "Socket error on client X,
    // disconnecting."
    let gone = |rest: &str, endings: &[&str]| {
        endings
            .iter()
            .find_map(|e| rest.split_once(e).map(|(id, _)| id.to_string()))
    };
    if let Some(rest) = line.strip_prefix("Client ") {
        let client_id = gone(
            rest,
            &[
                " disconnected",
                " closed its connection",
                " has exceeded timeout",
            ],
        )?;
        return Some(Seen::Disconnected { client_id });
    }
    if let Some(rest) = line.strip_prefix("Socket error on client ") {
        return Some(Seen::Disconnected {
            client_id: gone(rest, &[", disconnecting"])?,
        });
    }
    None
}

impl ConnectionLog {
    pub fn get(&self, client_id: &str) -> Option<ClientState> {
        let map = self.clients.read().unwrap_or_else(|e| e.into_inner());
        map.get(client_id).cloned()
    }

    pub fn note(&self, seen: Seen, at: i64) {
        let mut map = self.clients.write().unwrap_or_else(|e| e.into_inner());
        match seen {
            Seen::Connected {
                client_id,
                address,
                username,
            } => {
                let state = map.entry(client_id).or_default();
                state.connected_at = Some(at);
                state.address = Some(address);
                state.username = username;
            }
            Seen::Disconnected { client_id } => {
                map.entry(client_id).or_default().disconnected_at = Some(at);
            }
        }
    }

    /// Follows Mosquitto's log topic until `shutdown`, reconnecting as needed. The log is only
    /// what happens from now on: clients connected before the API started show as connected
    /// once they reconnect or send a message.
    pub fn follow_mosquitto(
        mqtt: &MqttConfig,
        client_id: &str,
        shutdown: CancellationToken,
    ) -> (ConnectionLog, tokio::task::JoinHandle<()>) {
        let log = ConnectionLog {
            reported: true,
            ..Default::default()
        };
        let mut options = rumqttc::MqttOptions::new(client_id, &mqtt.host, mqtt.port);
        options.set_keep_alive(Duration::from_secs(30));
        if !mqtt.username.is_empty() {
            options.set_credentials(&mqtt.username, &mqtt.password);
        }
        let feed = log.clone();
        let (_client, task) = crate::broker::follow(
            options,
            MOSQUITTO_LOG,
            rumqttc::QoS::AtMostOnce,
            shutdown,
            move |event| {
                if let crate::broker::Followed::Message(p) = event {
                    if let Some(seen) = parse_mosquitto_line(&String::from_utf8_lossy(&p.payload)) {
                        feed.note(seen, now_ms());
                    }
                }
            },
        );
        (log, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mosquitto_connection_lines() {
        assert_eq!(
            parse_mosquitto_line(
                "1732694400: New client connected from 127.0.0.1:51234 as aq-001 (p2, c1, k60, u'aq-001')."
            ),
            Some(Seen::Connected {
                client_id: "aq-001".into(),
                address: "127.0.0.1:51234".into(),
                username: Some("aq-001".into()),
            })
        );
        assert_eq!(
            parse_mosquitto_line("New client connected from ::1:4000 as x (p4, c1, k30)."),
            Some(Seen::Connected {
                client_id: "x".into(),
                address: "::1:4000".into(),
                username: None,
            })
        );
        for line in [
            "Client aq-001 disconnected.",
            "1732694400: Client aq-001 closed its connection.",
            "Client aq-001 has exceeded timeout, disconnecting.",
            "Socket error on client aq-001, disconnecting.",
        ] {
            assert_eq!(
                parse_mosquitto_line(line),
                Some(Seen::Disconnected {
                    client_id: "aq-001".into()
                }),
                "{line}"
            );
        }
        assert_eq!(
            parse_mosquitto_line("Opening ipv4 listen socket on port 1883."),
            None
        );
    }

    #[test]
    fn a_client_is_connected_until_it_disconnects_and_again_when_it_returns() {
        let log = ConnectionLog::default();
        let connect = || Seen::Connected {
            client_id: "d".into(),
            address: "a".into(),
            username: None,
        };
        log.note(connect(), 10);
        assert!(log.get("d").unwrap().is_connected());
        log.note(
            Seen::Disconnected {
                client_id: "d".into(),
            },
            20,
        );
        assert!(!log.get("d").unwrap().is_connected());
        log.note(connect(), 30);
        assert!(log.get("d").unwrap().is_connected());
        assert!(log.get("other").is_none());
    }
}
