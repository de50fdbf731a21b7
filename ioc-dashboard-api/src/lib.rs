//! `ioc api`: the IOC dashboards' HTTP and websocket API on one port.
//!
//! - [`assets`]: the dashboard's page and files, embedded.
//! - [`routes`]: the router, built from [`openapi`]'s ops: each route's roles, parameters and
//!   answers, from which come both `/api/v1/openapi.json` and the guard that enforces them.
//! - [`error`]: the JSON refusals; [`views`]: what clients see of records, for REST and the
//!   websocket alike.
//! - [`devices`]: the device registry's routes; [`history`]: readings, aggregates, AQI,
//!   exceedances and annual means from ClickHouse.
//! - [`auth`]: tokens and roles: who may call what.
//! - [`accounts`]: devices' MQTT accounts, on Mosquitto through [`dynsec`] or in the registry.
//! - [`broker`]: the API's own MQTT sessions with the broker (its log, its dynamic security).
//! - [`access`]: issuing tokens, the audit log, and the audited routes of personal data.
//! - [`commissioning`]: the installer's checklist of one device, from [`connections`] (what the
//!   broker says about MQTT clients) and [`live::Activity`] (what ingest made of its messages).
//! - [`replay`]: dead letters of devices not yet registered, processed again once they are.
//! - [`alerts`]: alerts, acknowledging and resolving them through the stream, and the rules.
//! - [`live`]: tails the readings, aggregates and alerts topics and fans them out.
//! - [`open_data`]: the stations' hourly and daily data for the province's portal, no token.
//! - [`fiware`]: the same windows and the registry as FIWARE Smart Data Models entities.
//! - [`ws`]: one websocket session, generic over its sink and stream so tests can drive it;
//!   [`socket`]: the routes that upgrade to one.
//! - [`run`]: binds and serves until shutdown.
//!
//! `/`, `/healthz`, `/metrics`, `/open/v1/` and `/api/v1/openapi.json` are open; everything
//! else under `/api/v1/` needs a token whose role allows it (`Authorization: Bearer ...`, or `?token=` on the websocket route, since browsers
//! cannot set headers on a websocket).

pub mod access;
pub mod accounts;
pub mod alerts;
pub mod assets;
pub mod auth;
pub mod broker;
pub mod commissioning;
pub mod connections;
pub mod csv;
pub mod devices;
pub mod dynsec;
pub mod error;
pub mod fiware;
pub mod history;
pub mod live;
pub mod open_data;
pub mod openapi;
pub mod params;
pub mod quality;
pub mod replay;
pub mod routes;
pub mod socket;
pub mod traffic;
pub mod views;
pub mod ws;

use std::sync::Arc;

use ioc_bus::registry::RegistryView;
use ioc_bus::{Bus, Producer};
use ioc_config::{ApiConfig, IngestConfig};
use ioc_history::History;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bus: {0}")]
    Bus(#[from] ioc_bus::BusError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("the bus's epoch: {0}")]
    Epoch(String),
}

/// The bus's epoch: the first [`ioc_contract::RegistryEvent::BusEpoch`] on the registry topic,
/// written now if there is none. Several instances starting at once may each write one; all
/// take the first in the log, so positions mean the same on every instance.
async fn bus_epoch(
    bus: &Bus,
    producer: &Producer,
    registry: &RegistryView,
) -> Result<String, ApiError> {
    if let Some(epoch) = registry.epoch() {
        return Ok(epoch);
    }
    let epoch = auth::random_hex(8).map_err(|e| ApiError::Epoch(e.to_string()))?;
    let event = ioc_contract::RegistryEvent::BusEpoch {
        epoch,
        at: ioc_contract::time::now_ms(),
    };
    let payload = serde_json::to_vec(&event).expect("registry events serialize");
    // Not folded in by this writer: the follower folds the topic's first in log order.
    producer
        .send(&bus.topics().registry, event.key(), &payload)
        .await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Some(epoch) = registry.epoch() {
            return Ok(epoch);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(ApiError::Epoch(
        "the registry follower did not read the epoch back within 30 s".into(),
    ))
}

/// The API's Prometheus metrics (`ioc_api_*`).
#[derive(Clone)]
pub struct ApiMetrics {
    pub ws_clients: IntGauge,
    pub ws_sent: IntCounter,
    pub ws_lagged: IntCounter,
    pub ws_recovered: IntCounter,
    pub ws_resets: IntCounter,
    pub ws_resyncs: IntCounter,
    pub ws_refused: IntCounter,
    pub requests_unauthorized: IntCounter,
    pub requests_forbidden: IntCounter,
}

impl ApiMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ApiMetrics> {
        let ws_clients = IntGauge::new("ioc_api_ws_clients", "Connected websocket clients")?;
        registry.register(Box::new(ws_clients.clone()))?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(ApiMetrics {
            ws_clients,
            ws_sent: counter(
                "ioc_api_ws_messages_sent_total",
                "Messages sent to websocket clients",
            )?,
            ws_lagged: counter(
                "ioc_api_ws_lagged_messages_total",
                "Messages slow websocket clients missed (they are told)",
            )?,
            ws_recovered: counter(
                "ioc_api_ws_recovered_total",
                "Subscriptions resumed with exactly what the client missed",
            )?,
            ws_resets: counter(
                "ioc_api_ws_resets_total",
                "Resumes this instance could not make (a reset and a fresh snapshot instead)",
            )?,
            ws_resyncs: counter(
                "ioc_api_ws_resyncs_total",
                "Clients resynchronized with fresh snapshots after their queue overflowed",
            )?,
            ws_refused: counter(
                "ioc_api_ws_refused_total",
                "Websocket connections refused at a connection cap",
            )?,
            requests_unauthorized: counter(
                "ioc_api_unauthorized_requests_total",
                "Requests refused for a missing or wrong token",
            )?,
            requests_forbidden: counter(
                "ioc_api_forbidden_requests_total",
                "Requests refused because the token's role does not allow them",
            )?,
        })
    }
}

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    /// Ingest's configuration, for replaying dead letters through the same path.
    pub ingest: Arc<IngestConfig>,
    /// The limits stations are held to, and what makes an hour count.
    pub regulation: Arc<Regulatory>,
    /// Held while a replay runs.
    pub replaying: Arc<tokio::sync::Mutex<()>>,
    pub bus: Bus,
    pub producer: Producer,
    pub registry: RegistryView,
    pub history: History,
    pub live: live::LiveHub,
    /// Websocket connections and subscriptions per token.
    pub ws_caps: ws::Caps,
    /// Open-data requests per client address.
    pub open_limiter: open_data::OpenLimiter,
    pub activity: live::Activity,
    pub connections: connections::ConnectionLog,
    pub accounts: accounts::Accounts,
    pub metrics: ApiMetrics,
    pub prometheus: Registry,
    /// Waiters for the stream's answers to alert commands.
    pub replies: alerts::Replies,
    /// The rules in force, as the `rules` topic has them.
    pub rules_view: Arc<alerts::RulesView>,
}

/// What the API judges regulatory figures by (`[regulation]` and `stream.min_hour_capture`, as
/// the stream does), and the alert rules in force.
#[derive(Debug, Clone)]
pub struct Regulatory {
    pub limits: ioc_config::RegulationConfig,
    pub min_hour_capture: f64,
    pub rules: Vec<ioc_config::RuleConfig>,
}

impl Regulatory {
    pub fn of(config: &ioc_config::Config) -> Regulatory {
        Regulatory {
            limits: config.regulation.clone(),
            min_hour_capture: config.stream.min_hour_capture,
            rules: ioc_config::rules::in_force(&config.stream),
        }
    }
}

/// Serves the API on `listener` until `shutdown`. The caller has bound the listener (so it can
/// report a busy port clearly) and started the registry follower.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ApiConfig,
    ingest: IngestConfig,
    regulation: Regulatory,
    connections: connections::ConnectionLog,
    accounts: accounts::Accounts,
    bus: Bus,
    registry: RegistryView,
    history: History,
    prometheus: Registry,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let metrics = ApiMetrics::register(&prometheus).expect("api metrics register once");
    let live = live::LiveHub::new(config.ws_buffer, config.ws.history_bytes);
    let producer = bus.producer(std::time::Duration::from_millis(1))?;
    live.set_epoch(&bus_epoch(&bus, &producer, &registry).await?);
    let activity = live::Activity::default();
    let replies = alerts::Replies::default();
    let rules_view = Arc::new(alerts::RulesView::default());
    let rules_follower = alerts::follow_rules(&bus, rules_view.clone(), shutdown.clone())?;
    let tail = live::tail(
        &bus,
        live.clone(),
        activity.clone(),
        registry.clone(),
        replies.clone(),
        config.ws.warm_records,
        shutdown.clone(),
    )
    .await?;
    let state = AppState {
        config: Arc::new(config),
        ingest: Arc::new(ingest),
        regulation: Arc::new(regulation),
        replaying: Arc::default(),
        producer,
        bus,
        registry,
        history,
        live,
        ws_caps: ws::Caps::default(),
        open_limiter: open_data::OpenLimiter::default(),
        activity,
        connections,
        accounts,
        metrics,
        prometheus,
        replies,
        rules_view,
    };
    let gauges = quality::keep_fleet_gauges(
        state.clone(),
        state.config.quality_gauges_every,
        shutdown.clone(),
    )
    .expect("quality gauges register once");
    let app = routes::router(state);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
    .map_err(ApiError::Serve);
    tail.abort();
    rules_follower.abort();
    gauges.abort();
    result
}
