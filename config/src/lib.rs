//! Configuration of every `ioc` stage: one typed tree, loaded in a documented order.
//!
//! 1. `default.toml` (this crate's folder), compiled into the binary;
//! 2. the user's file (`--config FILE`), overlaid key by key;
//! 3. environment variables `IOC_<SECTION>__<KEY>=value` (for example
//!    `IOC_KAFKA__BROKERS=10.0.0.5:9092`), and `IOC_ADMIN_TOKEN` for `api.admin_token`.
//!
//! [`load`] reports every problem at once, each with its path (`ingest.receive_maximum: ...`):
//! unknown keys, wrong types, unparsable durations, and values out of range.
//! Stages receive only their own section plus the connection sections they use; there is no
//! global configuration.

pub mod rules;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The compiled-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub ingest: IngestConfig,
    pub stream: StreamConfig,
    pub regulation: RegulationConfig,
    pub api: ApiConfig,
    pub notify: NotifyConfig,
    pub sim: SimConfig,
    pub up: UpConfig,
}

/// `ioc notify`: who is told of alerts, and how (`[notify]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Names the stage's checkpoint of `alert-transitions`.
    pub group_id: String,
    /// The dashboard's address, for the link in each notification.
    pub dashboard_url: String,
    /// A delivery that has failed for this long is given up (and recorded as expired).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// At most one message per recipient this often: what comes meanwhile is sent together,
    /// as one digest.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Who is told of the alerts of rules that name no recipients.
    pub default_recipients: Vec<String>,
    pub recipients: Vec<RecipientConfig>,
    pub smtp: SmtpConfig,
    /// CA certificates (PEM) trusted besides the public roots, for https webhooks and SMTP
    /// STARTTLS: a province's own CA. Empty: the public roots only.
    pub ca_file: String,
}

/// One recipient: a webhook or email addresses (`[[notify.recipients]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientConfig {
    pub name: String,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Email addresses (sent through `[notify.smtp]`).
    #[serde(default)]
    pub email: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Sent with every request (an `Authorization` header, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Signs each body: `X-IOC-Signature: sha256=<hex HMAC-SHA256 of the body>` (empty: none).
    #[serde(default)]
    pub secret: String,
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The SMTP server email goes through (`host` empty: no email).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub from: String,
    /// Upgrade the connection with STARTTLS (required when set).
    pub starttls: bool,
    /// Log in when set.
    pub username: String,
    pub password: String,
}

/// The limits exceedances are judged against, as data (`[regulation]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegulationConfig {
    /// Ambient air limits (QCVN 05:2023).
    pub ambient: ioc_regulation::qcvn::AmbientLimits,
    /// Wastewater limits, one table per regulation a station may be held to.
    pub wastewater: Vec<ioc_regulation::qcvn::WastewaterLimits>,
}

impl RegulationConfig {
    /// The wastewater table of `regulation`.
    pub fn wastewater(&self, regulation: &str) -> Option<&ioc_regulation::qcvn::WastewaterLimits> {
        self.wastewater.iter().find(|t| t.regulation == regulation)
    }

    /// The regulations a wastewater station may be held to.
    pub fn wastewater_names(&self) -> Vec<&str> {
        self.wastewater
            .iter()
            .map(|t| t.regulation.as_str())
            .collect()
    }
}

/// `ioc up`: the whole pipeline in one process on an embedded broker, bus and history store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpConfig {
    /// Where the embedded MQTT broker listens for devices.
    pub mqtt_listen: SocketAddr,
    /// Empty: `$XDG_DATA_HOME/ioc`, or `~/.local/share/ioc`.
    pub data_dir: String,
    /// How often the embedded bus fsyncs what arrived: the bound of what a crash can lose.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How often the embedded history store commits (a crash replays from the bus, losing
    /// nothing).
    #[serde(with = "humantime_serde")]
    pub history_flush_interval: Duration,
    /// Bus segments older than this are deleted (never the registry's).
    #[serde(with = "humantime_serde")]
    pub bus_retention: Duration,
    /// Most device connections the embedded broker accepts.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    AfterKafka,
    OnReceipt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub client_id: String,
    pub share_group: String,
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    pub receive_maximum: u16,
    pub max_payload_bytes: usize,
    pub max_packet_bytes: u32,
    pub ack_mode: AckMode,
    #[serde(with = "humantime_serde")]
    pub producer_linger: Duration,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub metrics_listen: SocketAddr,
    /// Local time of zone-less timestamps (station files), as `+HH:MM`.
    pub local_utc_offset: String,
    /// Key of the licence-plate pseudonyms (HMAC-SHA256). Empty: camera events are quarantined
    /// (`ioc up` generates one under its data dir).
    pub plate_secret: String,
    /// Messages per second one device may send, fleet-wide (0: no limit): each ingest process
    /// applies it alone, the stream to all ingest processes' records together; the excess is
    /// dead-lettered as `rate_limited`.
    pub device_rate_limit: f64,
    /// Messages a device may send at once above its rate (the token bucket's size).
    pub device_burst: f64,
    /// Which decoder reads which MQTT topics.
    pub routes: Vec<Route>,
    /// Vendor profiles besides the built-in `flat-gateway`.
    pub vendor_profiles: Vec<VendorProfile>,
}

/// One topic pattern and the format of the payloads on it. A pattern is MQTT topic levels; a
/// level `{name}` matches any one level and captures it: `{device_id}` names the device,
/// `{imei}`, `{station_code}`, `{camera_id}` an external id the registry resolves, any other
/// name nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub topic: String,
    pub format: String,
}

impl Route {
    /// The topic levels: `Ok(literal)` or `Err(capture name)`.
    pub fn levels(&self) -> impl Iterator<Item = Result<&str, &str>> {
        self.topic.split('/').map(|level| {
            match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                Some(name) => Err(name),
                None => Ok(level),
            }
        })
    }

    /// The MQTT subscription filter: every capture becomes `+`.
    pub fn filter(&self) -> String {
        self.levels()
            .map(|l| l.unwrap_or("+"))
            .collect::<Vec<_>>()
            .join("/")
    }

    fn problem(&self) -> Option<String> {
        if !ioc_contract::FORMAT_NAMES.contains(&self.format.as_str()) {
            return Some(format!(
                "format {:?} is not one of {}",
                self.format,
                ioc_contract::FORMAT_NAMES.join(", ")
            ));
        }
        let mut names = Vec::new();
        for level in self.levels() {
            match level {
                Ok(l) if l.is_empty() || l.contains(['+', '#', '{', '}']) => {
                    return Some(format!(
                        "topic {:?}: level {l:?} must be a non-empty literal without + # {{ }}, or {{name}}",
                        self.topic
                    ))
                }
                Err(name) if name.is_empty() || names.contains(&name) => {
                    return Some(format!(
                        "topic {:?}: captures need distinct non-empty names",
                        self.topic
                    ))
                }
                Err(name) => names.push(name),
                Ok(_) => {}
            }
        }
        None
    }
}

/// How one vendor's flat JSON names its fields (`vendor-flat`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorProfile {
    pub name: String,
    /// The key holding the sensor's external id, and the kind of that id.
    pub id_key: String,
    pub id_kind: String,
    /// The key holding the time, and its format: a pattern of `dd`, `MM`, `yyyy`, `HH`, `mm`,
    /// `ss` and literal characters (local time, `ingest.local_utc_offset`), or `epoch_s`,
    /// `epoch_ms`, `rfc3339`.
    pub time_key: String,
    pub time_format: String,
    /// Numbers may be strings, with a decimal comma.
    pub decimal_comma: bool,
    pub fields: Vec<ProfileField>,
}

/// One vendor key: the catalogue metric it carries and the unit the vendor sends it in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileField {
    pub key: String,
    pub metric: String,
    pub unit: String,
}

impl IngestConfig {
    /// `local_utc_offset` in milliseconds (0 if invalid; [`validate`] reports that).
    pub fn utc_offset_ms(&self) -> i64 {
        parse_utc_offset(&self.local_utc_offset).unwrap_or(0)
    }
}

/// `local@domain`, nothing more: the SMTP server is the judge of the rest.
fn plausible_email(a: &str) -> bool {
    match a.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !a
                    .chars()
                    .any(|c| c.is_whitespace() || c == ',' || c == '<' || c == '>')
                && !domain.contains('@')
        }
        None => false,
    }
}

/// `+HH:MM` or `-HH:MM` (up to ±14:00) as milliseconds east of UTC.
pub fn parse_utc_offset(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 6 || b[3] != b':' || !matches!(b[0], b'+' | b'-') {
        return None;
    }
    let h: i64 = s[1..3].parse().ok()?;
    let m: i64 = s[4..6].parse().ok()?;
    if h > 14 || m > 59 || (h == 14 && m > 0) {
        return None;
    }
    let ms = (h * 60 + m) * 60_000;
    Some(if b[0] == b'-' { -ms } else { ms })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub group_id: String,
    pub partitions: Vec<i32>,
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub batch_max_records: usize,
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    pub metrics_listen: SocketAddr,
    pub pm25_alert: Pm25AlertConfig,
    /// An hourly mean counts for VN_AQI and QCVN only when its window's capture is at least
    /// this (0 to 1).
    pub min_hour_capture: f64,
    /// The daily PM2.5 and PM10 means of VN_AQI need at least this many valid hours (the
    /// decision sets no minimum).
    pub min_day_hours: usize,
    /// A 24-hour mean is compared with a QCVN 05 daily limit only over at least this many
    /// valid hours.
    pub min_day_hours_qcvn: usize,
    /// Alert rules (`[[stream.rules]]`): SQL over the stream's named inputs. A rule named as
    /// a built-in one replaces it.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Built-in rules turned off, by name.
    #[serde(default)]
    pub disabled_rules: Vec<String>,
    /// More rules: a TOML file of `[[rules]]` tables, or a folder of such `*.toml` files (read
    /// in name order); empty: none. Read again on reload.
    #[serde(default)]
    pub rules_path: String,
    /// A device is offline after this many of its own `expected_interval_s` without a reading.
    pub offline_after: f64,
    /// A sensor is stuck after this many readings in a row with the same value, per metric
    /// (`default` for the rest; 0 turns the check off for a metric).
    pub stuck_after: BTreeMap<String, u32>,
    /// Windows older than this raise and resolve alerts as usual but notify no one (a backfill).
    #[serde(with = "humantime_serde")]
    pub notify_max_age: Duration,
    /// Where a traffic counter's congestion levels begin (`[stream.congestion]`).
    pub congestion: CongestionConfig,
}

/// A traffic counter's congestion level is the worse of two: its count-weighted speed against
/// its free-flow speed, and its occupancy. Each list holds where `moderate`, `heavy` and
/// `jammed` begin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CongestionConfig {
    /// Speed ÷ free-flow speed below each: falling, each in (0, 1].
    pub speed_ratio: [f64; 3],
    /// Occupancy (%) at or above each: rising, each in (0, 100].
    pub occupancy_pct: [f64; 3],
}

/// One alert rule: a SQL query whose every result row is a firing instance (`ioc_stream::rules`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique; letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// `air`, `water`, `traffic` or `device`.
    pub category: String,
    /// `critical`, `major`, `minor` or `warning`.
    pub severity: String,
    /// A query over the inputs; each row one instance, with `device_id` and a numeric `value`.
    pub sql: String,
    /// Rows of this query clear their instances (default: an instance clears when `sql` no
    /// longer returns it), so an alert hovering at its limit does not flap.
    #[serde(default)]
    pub clear_sql: Option<String>,
    /// How long, in event time, the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Option<Duration>,
    /// How long an alert stays firing after its condition last held.
    #[serde(default, with = "humantime_serde")]
    pub keep_firing_for: Option<Duration>,
    /// Notify again this often while firing and unacknowledged.
    #[serde(default, with = "humantime_serde")]
    pub renotify: Option<Duration>,
    /// Result columns besides `device_id` and `channel` that tell instances apart.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The alert's message; `{column}` is replaced by the row's value of that column.
    #[serde(default)]
    pub message: String,
    /// Who is notified (names of `[[notify.recipients]]`; none: `notify.default_recipients`).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// An alert still unacknowledged this long after its first notification is sent to `escalate_to`.
    #[serde(default, with = "humantime_serde")]
    pub escalate_after: Option<Duration>,
    #[serde(default)]
    pub escalate_to: Vec<String>,
}

impl RuleConfig {
    /// A rule of just its query: no clear query, hold time, reminders, labels or recipients of
    /// its own.
    pub fn new(name: &str, category: &str, severity: &str, sql: impl Into<String>) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            category: category.into(),
            severity: severity.into(),
            sql: sql.into(),
            clear_sql: None,
            for_: None,
            keep_firing_for: None,
            renotify: None,
            labels: Vec::new(),
            message: String::new(),
            recipients: Vec::new(),
            escalate_after: None,
            escalate_to: Vec::new(),
        }
    }
}

/// Rule categories and severities, by name.
pub const RULE_CATEGORIES: [&str; 4] = ["air", "water", "traffic", "device"];
pub const RULE_SEVERITIES: [&str; 4] = ["critical", "major", "minor", "warning"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pm25AlertConfig {
    pub limit: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub admin_token: String,
    pub query_limit: usize,
    pub ws_buffer: usize,
    /// The websocket protocol's limits (`[api.ws]`).
    #[serde(default)]
    pub ws: WsConfig,
    /// The open-data routes (`[api.open_data]`).
    #[serde(default)]
    pub open_data: OpenDataConfig,
    /// The area devices are expected in, `[south, west, north, east]` in degrees: the
    /// commissioning checklist flags a device placed outside it.
    pub service_area: [f64; 4],
    /// How devices get MQTT accounts in the distributed mode.
    pub device_accounts: DeviceAccounts,
    /// The dashboard map's base tiles (`{z}`, `{x}`, `{y}` in an http(s) URL), or empty: none.
    pub tile_url: String,
    /// The API's own broker account: it follows the broker's log and, with `dynsec`, manages
    /// device accounts, so on Mosquitto it is a dynamic-security admin.
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// How often the fleet's data-quality gauges on `/metrics` are computed again.
    #[serde(with = "humantime_serde")]
    pub quality_gauges_every: Duration,
}

/// The websocket's limits (`[api.ws]`): what a client may ask for, how far back it may resume,
/// and when it is cut off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Bytes a client's outgoing queue may hold; past it, the client is told how much it
    /// missed and sent fresh snapshots once its queue drains.
    pub queue_bytes: usize,
    /// Bytes of recent messages kept per stream for clients that resume (`recover`).
    pub history_bytes: usize,
    /// Records per partition and topic read back at start, so a new API instance can resume
    /// clients and answer snapshots at once.
    pub warm_records: i64,
    /// How often the server pings each client and sends its positions.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A client that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connected clients the instance accepts.
    pub max_connections: usize,
    pub max_connections_per_token: usize,
    /// Subscriptions the sessions of one token may hold together.
    pub max_subscriptions_per_token: usize,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            queue_bytes: 1 << 20,
            history_bytes: 32 << 20,
            warm_records: 5_000,
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_token: 200,
            max_subscriptions_per_token: 2_000,
        }
    }
}

/// `/open/v1/`: the stations' data with no token (`[api.open_data]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenDataConfig {
    pub enabled: bool,
    /// Requests per second from one client address, and its burst.
    pub rate: f64,
    pub burst: f64,
}

impl Default for OpenDataConfig {
    fn default() -> OpenDataConfig {
        OpenDataConfig {
            enabled: true,
            rate: 2.0,
            burst: 20.0,
        }
    }
}

/// How devices get MQTT accounts (`api.device_accounts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceAccounts {
    /// Mosquitto's dynamic security plugin, managed over MQTT by the API: one account and one
    /// role (its own topics) per device.
    Dynsec,
    /// The broker is managed elsewhere: registering a device creates no account.
    None,
    /// `ioc up`: the embedded broker checks logins against the registry (set by `ioc up`, not
    /// in a config file).
    #[serde(skip)]
    Registry,
}

impl ApiConfig {
    /// The origin (`https://host:port`) of [`ApiConfig::tile_url`], the one outside address the
    /// dashboard may load from; `None` without tiles.
    pub fn tile_origin(&self) -> Option<String> {
        tile_origin(&self.tile_url)
    }

    /// Whether `(lat, lon)` lies in [`ApiConfig::service_area`].
    pub fn in_service_area(&self, lat: f64, lon: f64) -> bool {
        let [south, west, north, east] = self.service_area;
        (south..=north).contains(&lat) && (west..=east).contains(&lon)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Air-quality stations speaking ioc-json (a third of them in mg/m³ and °F).
    pub air_quality: u32,
    /// Wastewater monitoring stations sending tt10 station files.
    pub wastewater: u32,
    /// Per-lane traffic counters.
    pub traffic_counters: u32,
    /// Air-quality devices speaking SenML.
    pub senml_air: u32,
    /// Vendor gateways relaying flat JSON from low-cost air sensors...
    pub flat_gateways: u32,
    /// ...and the sensors behind each.
    pub flat_sensors_per_gateway: u32,
    /// AI traffic cameras reporting violations.
    pub cameras: u32,
    pub rate: f64,
    pub seed: u64,
    /// Put before every device id, station code and camera id, so that several simulators can
    /// share one deployment (empty: none).
    pub id_prefix: String,
    /// The simulator's broker account (empty: none). It publishes as every device of its fleet,
    /// so on a broker with per-device accounts it needs one allowed to publish on their topics.
    pub username: String,
    pub password: String,
}

impl SimConfig {
    /// How many devices the fleet has.
    pub fn devices(&self) -> u64 {
        [
            self.air_quality,
            self.wastewater,
            self.traffic_counters,
            self.senml_air,
            self.cameras,
        ]
        .iter()
        .map(|n| *n as u64)
        .sum::<u64>()
            + self.flat_gateways as u64 * self.flat_sensors_per_gateway as u64
    }
}

/// One problem found in a configuration, with the path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid(problems) => problems.clone(),
            other => vec![Problem {
                path: "-".into(),
                message: other.to_string(),
            }],
        }
    }
}

/// Loads the configuration: defaults, then the optional file, then the given environment
/// (pass `std::env::vars()`; tests pass their own).
pub fn load(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let user = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            Some((path.display().to_string(), text))
        }
        None => None,
    };
    load_str(user.as_ref().map(|(o, t)| (o.as_str(), t.as_str())), env)
}

/// Like [`load`], with the user's file given as `(origin, text)`.
pub fn load_str(
    user: Option<(&str, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let defaults: toml::Table = DEFAULT_TOML.parse().expect("default.toml is valid TOML");
    let mut merged = defaults.clone();
    let mut problems = Vec::new();

    if let Some((origin, text)) = user {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_string(),
                    message: e.message().to_string(),
                })?;
        overlay(&defaults, &mut merged, table, "", &mut problems);
    }
    apply_env(&defaults, &mut merged, env, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }

    let config: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| {
            ConfigError::Invalid(vec![Problem {
                path: "-".into(),
                message: e.message().to_string(),
            }])
        })?;
    let mut config = config;
    let mut problems = Vec::new();
    for (_, rules) in read_rules_files(&config.stream.rules_path, &mut problems) {
        config.stream.rules.extend(rules);
    }
    problems.extend(validate(&config));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The files `stream.rules_path` names: itself, or the `*.toml` in it, in name order.
pub fn rules_files(rules_path: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    if rules_path.is_empty() {
        return Ok(Vec::new());
    }
    let path = std::path::Path::new(rules_path);
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The rules of each file of `stream.rules_path`; a file that cannot be read or parsed is a
/// problem naming it.
fn read_rules_files(
    rules_path: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(String, Vec<RuleConfig>)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RulesFile {
        #[serde(default)]
        rules: Vec<RuleConfig>,
    }
    let files = match rules_files(rules_path) {
        Ok(f) => f,
        Err(e) => {
            problems.push(Problem {
                path: "stream.rules_path".into(),
                message: format!("cannot read the folder {rules_path:?}: {e}"),
            });
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for file in files {
        let origin = file.display().to_string();
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|text| {
                toml::from_str::<RulesFile>(&text).map_err(|e| e.message().to_string())
            });
        match parsed {
            Ok(f) => out.push((origin, f.rules)),
            Err(message) => problems.push(Problem {
                path: format!("stream.rules_path ({origin})"),
                message,
            }),
        }
    }
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Overlays `user` onto `merged`, checking every key and type against `defaults`.
fn overlay(
    defaults: &toml::Table,
    merged: &mut toml::Table,
    user: toml::Table,
    prefix: &str,
    problems: &mut Vec<Problem>,
) {
    for (key, value) in user {
        let path = join(prefix, &key);
        let Some(default) = defaults.get(&key) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            problems.push(Problem {
                path,
                message: format!("unknown key (known here: {})", known.join(", ")),
            });
            continue;
        };
        match (default, value) {
            (toml::Value::Table(d), toml::Value::Table(u)) => {
                let Some(toml::Value::Table(m)) = merged.get_mut(&key) else {
                    unreachable!()
                };
                overlay(d, m, u, &path, problems);
            }
            (default, value) => {
                if let Some(message) = type_problem(default, &value) {
                    problems.push(Problem { path, message });
                } else {
                    merged.insert(key, coerce(default, value));
                }
            }
        }
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn is_duration_default(default: &toml::Value) -> bool {
    matches!(default, toml::Value::String(s) if humantime::parse_duration(s).is_ok())
}

fn type_problem(default: &toml::Value, value: &toml::Value) -> Option<String> {
    let same = std::mem::discriminant(default) == std::mem::discriminant(value)
        || matches!(
            (default, value),
            (toml::Value::Float(_), toml::Value::Integer(_))
        );
    if !same {
        return Some(format!(
            "expected {}, found {}",
            type_name(default),
            type_name(value)
        ));
    }
    if is_duration_default(default) {
        if let toml::Value::String(s) = value {
            if let Err(e) = humantime::parse_duration(s) {
                return Some(format!(
                    "{s:?} is not a duration like \"250ms\" or \"2m\": {e}"
                ));
            }
        }
    }
    None
}

/// Integers are accepted where the default is a float (`limit = 50`).
fn coerce(default: &toml::Value, value: toml::Value) -> toml::Value {
    match (default, value) {
        (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
        (_, v) => v,
    }
}

const ENV_PREFIX: &str = "IOC_";

fn apply_env(
    defaults: &toml::Table,
    merged: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
) {
    // Sorted so that problems come out in a stable order.
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    for (name, raw) in vars {
        let path: Vec<String> = if name == "IOC_ADMIN_TOKEN" {
            vec!["api".into(), "admin_token".into()]
        } else {
            name[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect()
        };
        if path.len() != 2 {
            // IOC_* variables that are not settings (IOC_LOG, say) are none of our business.
            continue;
        }
        let shown = format!("{} (from {name})", path.join("."));
        let Some(toml::Value::Table(section)) = defaults.get(&path[0]) else {
            problems.push(Problem {
                path: shown,
                message: "unknown section".into(),
            });
            continue;
        };
        let Some(default) = section.get(&path[1]) else {
            problems.push(Problem {
                path: shown,
                message: "unknown key".into(),
            });
            continue;
        };
        let value = match default {
            toml::Value::String(_) => toml::Value::String(raw),
            _ => match format!("v = {raw}").parse::<toml::Table>() {
                Ok(mut t) => t.remove("v").expect("parsed key"),
                Err(_) => toml::Value::String(raw),
            },
        };
        if let Some(message) = type_problem(default, &value) {
            problems.push(Problem {
                path: shown,
                message,
            });
            continue;
        }
        if let Some(toml::Value::Table(m)) = merged.get_mut(&path[0]) {
            m.insert(path[1].clone(), coerce(default, value));
        }
    }
}

/// Semantic checks that types alone cannot express. Returns every problem found.
pub fn validate(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut bad = |path: &str, message: String| {
        p.push(Problem {
            path: path.into(),
            message,
        })
    };

    if c.up.flush_interval.is_zero() || c.up.flush_interval > Duration::from_secs(60) {
        bad(
            "up.flush_interval",
            "must be more than 0 and at most 1m (it bounds what a crash can lose)".into(),
        );
    }
    if c.up.history_flush_interval.is_zero() {
        bad("up.history_flush_interval", "must be more than 0".into());
    }
    if c.up.bus_retention < Duration::from_secs(3600) {
        bad("up.bus_retention", "must be at least 1h".into());
    }
    if !(c.ingest.device_rate_limit >= 0.0 && c.ingest.device_rate_limit.is_finite()) {
        bad(
            "ingest.device_rate_limit",
            "must be 0 (no limit) or a positive number of messages per second".into(),
        );
    }
    if !(c.ingest.device_burst >= 1.0 && c.ingest.device_burst.is_finite()) {
        bad("ingest.device_burst", "must be at least 1".into());
    }
    if c.up.max_connections == 0 {
        bad("up.max_connections", "must be at least 1".into());
    }
    for (i, route) in c.ingest.routes.iter().enumerate() {
        if let Some(message) = route.problem() {
            bad(&format!("ingest.routes[{i}]"), message);
        }
    }
    for (i, profile) in c.ingest.vendor_profiles.iter().enumerate() {
        let path = format!("ingest.vendor_profiles[{i}]");
        if !ioc_contract::EXTERNAL_ID_KINDS.contains(&profile.id_kind.as_str()) {
            bad(
                &path,
                format!(
                    "id_kind {:?} is not one of {}",
                    profile.id_kind,
                    ioc_contract::EXTERNAL_ID_KINDS.join(", ")
                ),
            );
        }
        for field in &profile.fields {
            if ioc_contract::catalogue::lookup(&field.metric).is_none() {
                bad(
                    &path,
                    format!(
                        "field {:?}: metric {:?} is not in the catalogue",
                        field.key, field.metric
                    ),
                );
            }
        }
    }
    if parse_utc_offset(&c.ingest.local_utc_offset).is_none() {
        bad(
            "ingest.local_utc_offset",
            format!(
                "must be +HH:MM or -HH:MM (Đắk Lắk: +07:00), is {:?}",
                c.ingest.local_utc_offset
            ),
        );
    }
    if c.mqtt.host.trim().is_empty() {
        bad("mqtt.host", "must not be empty".into());
    }
    if c.mqtt.port == 0 {
        bad("mqtt.port", "must be a port number from 1 to 65535".into());
    }
    if c.kafka.brokers.trim().is_empty() {
        bad("kafka.brokers", "must list at least one host:port".into());
    }
    if !c
        .kafka
        .topic_prefix
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
    {
        bad(
            "kafka.topic_prefix",
            "may contain only letters, digits, '.', '_' and '-'".into(),
        );
    }
    if !(1..=1024).contains(&c.kafka.partitions) {
        bad(
            "kafka.partitions",
            format!("must be from 1 to 1024, is {}", c.kafka.partitions),
        );
    }
    if c.kafka.replication < 1 {
        bad("kafka.replication", "must be at least 1".into());
    }
    if !(c.clickhouse.url.starts_with("http://") || c.clickhouse.url.starts_with("https://")) {
        bad(
            "clickhouse.url",
            format!(
                "must start with http:// or https://, is {:?}",
                c.clickhouse.url
            ),
        );
    }
    if c.clickhouse.database.is_empty()
        || !c
            .clickhouse
            .database
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        bad(
            "clickhouse.database",
            "must be letters, digits and '_'".into(),
        );
    }
    if c.ingest.client_id.is_empty() {
        bad(
            "ingest.client_id",
            "must not be empty: a stable id keeps the persistent session".into(),
        );
    }
    if c.ingest.share_group.is_empty() || c.ingest.share_group.contains(['/', '+', '#']) {
        bad(
            "ingest.share_group",
            "must be non-empty and contain no '/', '+' or '#'".into(),
        );
    }
    if c.ingest.receive_maximum == 0 {
        bad("ingest.receive_maximum", "must be at least 1".into());
    }
    if c.ingest.max_payload_bytes == 0
        || c.ingest.max_payload_bytes as u64 >= c.ingest.max_packet_bytes as u64
    {
        bad(
            "ingest.max_payload_bytes",
            format!(
                "must be above 0 and below ingest.max_packet_bytes ({}), so an oversized payload reaches ingest and is dead-lettered",
                c.ingest.max_packet_bytes
            ),
        );
    }
    if c.ingest.session_expiry.as_secs() == 0 {
        bad(
            "ingest.session_expiry",
            "must be at least 1s, or the broker forgets in-flight messages on disconnect".into(),
        );
    }
    if c.stream.group_id.is_empty() {
        bad("stream.group_id", "must not be empty".into());
    }
    if c.stream.partitions.iter().any(|p| *p < 0) {
        bad("stream.partitions", "partition numbers start at 0".into());
    }
    if c.stream.batch_max_records == 0 {
        bad("stream.batch_max_records", "must be at least 1".into());
    }
    if c.stream.idle_timeout.is_zero() {
        bad("stream.idle_timeout", "must be above 0".into());
    }
    if !(c.stream.pm25_alert.limit.is_finite() && c.stream.pm25_alert.limit > 0.0) {
        bad(
            "stream.pm25_alert.limit",
            "must be a positive number of µg/m³".into(),
        );
    }
    let [r1, r2, r3] = c.stream.congestion.speed_ratio;
    if !(r1 <= 1.0 && r1 > r2 && r2 > r3 && r3 > 0.0) {
        bad(
            "stream.congestion.speed_ratio",
            format!("must fall from at most 1 to above 0, as [0.7, 0.5, 0.3] does (got [{r1}, {r2}, {r3}])"),
        );
    }
    let [o1, o2, o3] = c.stream.congestion.occupancy_pct;
    if !(o1 > 0.0 && o1 < o2 && o2 < o3 && o3 <= 100.0) {
        bad(
            "stream.congestion.occupancy_pct",
            format!("must rise from above 0 to at most 100 %, as [20, 30, 45] does (got [{o1}, {o2}, {o3}])"),
        );
    }
    if !(0.0..=1.0).contains(&c.stream.min_hour_capture) {
        bad(
            "stream.min_hour_capture",
            "must be a share from 0 to 1 (0.75: three quarters of the hour's readings)".into(),
        );
    }
    if c.stream.min_day_hours == 0 || c.stream.min_day_hours > 24 {
        bad("stream.min_day_hours", "must be 1 to 24 hours".into());
    }
    if c.stream.min_day_hours_qcvn == 0 || c.stream.min_day_hours_qcvn > 24 {
        bad("stream.min_day_hours_qcvn", "must be 1 to 24 hours".into());
    }
    if !(c.stream.offline_after.is_finite() && c.stream.offline_after >= 1.0) {
        bad(
            "stream.offline_after",
            "must be at least 1 (expected intervals without a reading)".into(),
        );
    }
    if !c.stream.stuck_after.contains_key("default") {
        bad(
            "stream.stuck_after",
            "must have a `default` (readings in a row; 0: off)".into(),
        );
    }
    for (metric, n) in &c.stream.stuck_after {
        if *n == 1 {
            bad(
                &format!("stream.stuck_after.{metric}"),
                "must be 0 (off) or at least 2 readings in a row".into(),
            );
        }
    }
    let recipients: std::collections::BTreeSet<&str> = c
        .notify
        .recipients
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    for (i, r) in c.notify.recipients.iter().enumerate() {
        let path = |field: &str| format!("notify.recipients[{i}] ({}).{field}", r.name);
        if r.webhook.is_none() && r.email.is_empty() {
            bad(
                &path("webhook"),
                "a recipient needs a webhook or email addresses".into(),
            );
        }
        if let Some(w) = &r.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                bad(
                    &path("webhook.url"),
                    format!("{:?} is not an http:// or https:// URL", w.url),
                );
            }
        }
        for (j, a) in r.email.iter().enumerate() {
            if !plausible_email(a) {
                bad(
                    &format!("{}[{j}]", path("email")),
                    format!("{a:?} is not an email address"),
                );
            }
        }
        if !r.email.is_empty() && c.notify.smtp.host.is_empty() {
            bad(&path("email"), "email needs notify.smtp.host".into());
        }
    }
    if !c.notify.ca_file.is_empty() {
        match std::fs::read_to_string(&c.notify.ca_file) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => bad(
                "notify.ca_file",
                format!("{:?} holds no PEM certificate", c.notify.ca_file),
            ),
            Err(e) => bad("notify.ca_file", format!("{:?}: {e}", c.notify.ca_file)),
        }
    }
    let known = |list: &[String], path: String, bad: &mut dyn FnMut(&str, String)| {
        for (j, name) in list.iter().enumerate() {
            if !recipients.contains(name.as_str()) {
                bad(
                    &format!("{path}[{j}]"),
                    format!("{name:?} is not one of notify.recipients"),
                );
            }
        }
    };
    known(
        &c.notify.default_recipients,
        "notify.default_recipients".into(),
        &mut bad,
    );
    for (i, r) in c.stream.rules.iter().enumerate() {
        let path = |field: &str| format!("stream.rules[{i}] ({}).{field}", r.name);
        known(&r.recipients, path("recipients"), &mut bad);
        known(&r.escalate_to, path("escalate_to"), &mut bad);
        if r.escalate_after.is_some() && r.escalate_to.is_empty() {
            bad(
                &path("escalate_to"),
                "escalate_after needs someone to escalate to".into(),
            );
        }
    }
    for (i, name) in c.stream.disabled_rules.iter().enumerate() {
        if !rules::BUILTIN.contains(&name.as_str()) {
            bad(
                &format!("stream.disabled_rules[{i}]"),
                format!(
                    "{name:?} is not a built-in rule (they are {})",
                    rules::BUILTIN.join(", ")
                ),
            );
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in c.stream.rules.iter().enumerate() {
        let path = |field: &str| format!("stream.rules[{i}] ({}).{field}", r.name);
        let valid_name = !r.name.is_empty()
            && r.name.len() <= 64
            && r.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
        if !valid_name {
            bad(&path("name"), "must be 1 to 64 of A-Z a-z 0-9 _ - .".into());
        } else if !names.insert(r.name.as_str()) {
            bad(&path("name"), "another rule has this name".into());
        }
        if !RULE_CATEGORIES.contains(&r.category.as_str()) {
            bad(
                &path("category"),
                format!("must be one of {}", RULE_CATEGORIES.join(", ")),
            );
        }
        if !RULE_SEVERITIES.contains(&r.severity.as_str()) {
            bad(
                &path("severity"),
                format!("must be one of {}", RULE_SEVERITIES.join(", ")),
            );
        }
        if r.sql.trim().is_empty() {
            bad(&path("sql"), "must be a query".into());
        }
        if r.renotify.is_some_and(|d| d < Duration::from_secs(10)) {
            bad(
                &path("renotify"),
                "must be at least 10s (or absent: never)".into(),
            );
        }
        for label in &r.labels {
            if matches!(label.as_str(), "device_id" | "channel" | "value") {
                bad(
                    &path("labels"),
                    format!("{label:?} is always part of an instance; list only other columns"),
                );
            }
        }
    }
    if c.regulation
        .wastewater(ioc_contract::DEFAULT_WASTEWATER_REGULATION)
        .is_none()
    {
        bad(
            "regulation.wastewater",
            format!(
                "must hold a table for {}, the regulation of stations that name none",
                ioc_contract::DEFAULT_WASTEWATER_REGULATION
            ),
        );
    }
    let mut names: Vec<&str> = c.regulation.wastewater_names();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bad(
            "regulation.wastewater",
            "two tables name the same regulation".into(),
        );
    }
    let [south, west, north, east] = c.api.service_area;
    if !((-90.0..=90.0).contains(&south)
        && (-90.0..=90.0).contains(&north)
        && (-180.0..=180.0).contains(&west)
        && (-180.0..=180.0).contains(&east)
        && south < north
        && west < east)
    {
        bad(
            "api.service_area",
            "must be [south, west, north, east] in degrees, south < north and west < east".into(),
        );
    }
    if !c.api.tile_url.is_empty() && tile_origin(&c.api.tile_url).is_none() {
        bad(
            "api.tile_url",
            format!(
                "{:?} must be an http(s) URL with {{z}}, {{x}} and {{y}}, e.g. \"https://tiles.example.vn/{{z}}/{{x}}/{{y}}.png\", or empty for no tiles",
                c.api.tile_url
            ),
        );
    }
    if c.api.query_limit == 0 {
        bad("api.query_limit", "must be at least 1".into());
    }
    if c.api.ws_buffer == 0 {
        bad("api.ws_buffer", "must be at least 1".into());
    }
    let open = &c.api.open_data;
    if !(open.rate.is_finite() && open.rate > 0.0 && open.burst.is_finite() && open.burst >= 1.0) {
        bad(
            "api.open_data.rate",
            "must be a positive number of requests per second, with api.open_data.burst at least 1"
                .into(),
        );
    }
    if c.api.quality_gauges_every < Duration::from_secs(1) {
        bad("api.quality_gauges_every", "must be at least 1s".into());
    }
    let ws = &c.api.ws;
    if ws.queue_bytes < 4096 {
        bad("api.ws.queue_bytes", "must be at least 4096".into());
    }
    if ws.warm_records < 0 {
        bad("api.ws.warm_records", "must be 0 or more".into());
    }
    if ws.heartbeat < Duration::from_secs(1) || ws.idle_timeout <= ws.heartbeat {
        bad(
            "api.ws.idle_timeout",
            "must be longer than api.ws.heartbeat, itself at least 1s".into(),
        );
    }
    for (name, n) in [
        ("max_connections", ws.max_connections),
        ("max_connections_per_token", ws.max_connections_per_token),
        (
            "max_subscriptions_per_token",
            ws.max_subscriptions_per_token,
        ),
    ] {
        if n == 0 {
            bad(&format!("api.ws.{name}"), "must be at least 1".into());
        }
    }
    if !(c.sim.rate.is_finite() && c.sim.rate > 0.0) {
        bad(
            "sim.rate",
            "must be a positive number of messages per second".into(),
        );
    }
    if c.sim.devices() == 0 {
        bad("sim", "the fleet needs at least one device".into());
    }
    // The longest id the fleet makes is "aqf-" and three digits.
    if !c.sim.id_prefix.is_empty()
        && !ioc_contract::valid_device_id(&format!("{}aqf-000", c.sim.id_prefix))
    {
        bad(
            "sim.id_prefix",
            format!(
                "{:?} would make device ids that are not 1 to 64 characters of A-Z a-z 0-9 _ - .",
                c.sim.id_prefix
            ),
        );
    }
    p
}

/// The origin of a tile URL template, if it is an http(s) URL naming `{z}`, `{x}` and `{y}`
/// whose host has only the characters a host may have.
fn tile_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") || !["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p))
    {
        return None;
    }
    let host = rest.split('/').next()?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then(|| format!("{scheme}://{host}"))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tile_url_names_its_origin_or_is_refused() {
        assert_eq!(
            tile_origin("https://tiles.daklak.gov.vn/{z}/{x}/{y}.png").as_deref(),
            Some("https://tiles.daklak.gov.vn")
        );
        assert_eq!(
            tile_origin("http://10.0.0.5:8081/osm/{z}/{x}/{y}.png").as_deref(),
            Some("http://10.0.0.5:8081")
        );
        for bad in [
            "tiles/{z}/{x}/{y}",
            "ftp://h/{z}/{x}/{y}",
            "https://h/{z}/{x}.png",
            "https://h;x/{z}/{x}/{y}",
            "https:///{z}/{x}/{y}",
        ] {
            assert_eq!(tile_origin(bad), None, "{bad}");
        }
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = load_str(None, no_env()).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.ingest.ack_mode, AckMode::AfterKafka);
        assert_eq!(c.stream.allowed_lateness, Duration::from_secs(10));
    }

    /// The limits shipped as configuration are the regulations' tables, cell for cell (the
    /// tables in `ioc-regulation` are golden-tested against DOMAIN.md).
    #[test]
    fn the_shipped_limits_are_qcvn_05_2023_and_qcvn_40_2011() {
        let c = load_str(None, no_env()).unwrap();
        assert_eq!(
            c.regulation.ambient,
            ioc_regulation::qcvn::AmbientLimits::qcvn_05_2023()
        );
        assert_eq!(
            c.regulation.wastewater,
            vec![ioc_regulation::qcvn::WastewaterLimits::qcvn_40_2011()]
        );
        assert_eq!(
            c.regulation.wastewater_names(),
            vec![ioc_contract::DEFAULT_WASTEWATER_REGULATION]
        );
    }

    #[test]
    fn a_rule_s_fields_are_checked_each_with_its_path() {
        let file = r#"
[[stream.rules]]
name = "aqi poor"
category = "noise"
severity = "major"
sql = " "
renotify = "5s"
labels = ["channel"]
[[stream.rules]]
name = "ok"
category = "air"
severity = "minor"
sql = "SELECT device_id, aqi AS value FROM aqi_1h WHERE aqi >= 101"
for = "2h"
"#;
        let problems = match load_str(Some(("rules.toml", file)), no_env()) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("{other:?}"),
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "stream.rules[0] (aqi poor).name",
                "stream.rules[0] (aqi poor).category",
                "stream.rules[0] (aqi poor).sql",
                "stream.rules[0] (aqi poor).renotify",
                "stream.rules[0] (aqi poor).labels",
            ]
        );
        let c = load_str(
            Some((
                "rules.toml",
                &file
                    .replace("aqi poor", "aqi_poor")
                    .replace("noise", "air")
                    .replace("sql = \" \"", "sql = \"SELECT 1\"")
                    .replace("\"5s\"", "\"1h\"")
                    .replace("[\"channel\"]", "[]"),
            )),
            no_env(),
        )
        .unwrap();
        assert_eq!(c.stream.rules[1].for_, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn file_then_env_override_in_that_order() {
        let file = "[kafka]\nbrokers = \"file:9092\"\n[stream.pm25_alert]\nlimit = 80\n";
        let env = vec![
            ("IOC_KAFKA__BROKERS".to_string(), "env:9092".to_string()),
            ("IOC_ADMIN_TOKEN".to_string(), "s3cret".to_string()),
            ("IOC_INGEST__RECEIVE_MAXIMUM".to_string(), "64".to_string()),
            ("IOC_LOG".to_string(), "debug".to_string()),
        ];
        let c = load_str(Some(("f.toml", file)), env).unwrap();
        assert_eq!(c.kafka.brokers, "env:9092");
        assert_eq!(c.api.admin_token, "s3cret");
        assert_eq!(c.ingest.receive_maximum, 64);
        assert_eq!(c.stream.pm25_alert.limit, 80.0);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let file = r#"
[kafka]
brokers = 9092
bogus = 1
[ingest]
drain_timeout = "soon"
receive_maximum = 0
[stream.pm25_alert]
limit = -1.0
[nonsense]
"#;
        let err = load_str(Some(("f.toml", file)), no_env()).unwrap_err();
        let paths: Vec<String> = err.problems().into_iter().map(|p| p.path).collect();
        assert!(paths.contains(&"kafka.brokers".to_string()), "{paths:?}");
        assert!(paths.contains(&"kafka.bogus".to_string()), "{paths:?}");
        assert!(
            paths.contains(&"ingest.drain_timeout".to_string()),
            "{paths:?}"
        );
        assert!(paths.contains(&"nonsense".to_string()), "{paths:?}");
        // Type problems stop before semantic checks, so fix those and look again.
        let file = "[ingest]\nreceive_maximum = 0\nmax_payload_bytes = 4000000\n[stream.pm25_alert]\nlimit = -1.0\n";
        let err = load_str(Some(("f.toml", file)), no_env()).unwrap_err();
        let paths: Vec<String> = err.problems().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "ingest.receive_maximum",
                "ingest.max_payload_bytes",
                "stream.pm25_alert.limit"
            ]
        );
    }

    #[test]
    fn routes_need_a_known_format_literal_levels_and_distinct_captures() {
        let route = |topic: &str, format: &str| Route {
            topic: topic.into(),
            format: format.into(),
        };
        assert_eq!(
            route("ioc/v1/devices/{device_id}/senml", "senml").problem(),
            None
        );
        assert_eq!(
            route("sites/{site}/gw/{imei}/flat", "vendor-flat").filter(),
            "sites/+/gw/+/flat"
        );
        for (topic, format, problem) in [
            ("ioc/{device_id}/x", "csv", "format \"csv\" is not one of"),
            ("ioc/+/x", "senml", "level \"+\" must be"),
            ("ioc//x", "senml", "level \"\" must be"),
            ("ioc/#", "senml", "level \"#\" must be"),
            ("ioc/{a/b}/x", "senml", "must be a non-empty literal"),
            (
                "ioc/{a}/{a}",
                "senml",
                "captures need distinct non-empty names",
            ),
            (
                "ioc/{}/x",
                "senml",
                "captures need distinct non-empty names",
            ),
        ] {
            let got = route(topic, format).problem();
            assert!(
                got.as_deref().is_some_and(|p| p.contains(problem)),
                "{topic} {format}: {got:?}"
            );
        }
        // Each is reported at its place in the list.
        let file = "[ingest]\nroutes = [{ topic = \"a/{x}\", format = \"senml\" }, { topic = \"a/+\", format = \"senml\" }]\n";
        let err = load_str(Some(("f.toml", file)), no_env()).unwrap_err();
        let paths: Vec<String> = err.problems().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, vec!["ingest.routes[1]"]);
    }

    #[test]
    fn utc_offsets_parse_and_a_bad_one_is_reported() {
        assert_eq!(parse_utc_offset("+07:00"), Some(25_200_000));
        assert_eq!(parse_utc_offset("-03:30"), Some(-12_600_000));
        for bad in ["07:00", "+7:00", "+15:00", "+07:60", "UTC+7", ""] {
            assert_eq!(parse_utc_offset(bad), None, "{bad}");
        }
        let file = "[ingest]\nlocal_utc_offset = \"ICT\"\n";
        let err = load_str(Some(("f.toml", file)), no_env()).unwrap_err();
        assert!(
            err.problems()
                .iter()
                .any(|p| p.path == "ingest.local_utc_offset"),
            "{err}"
        );
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let env = vec![(
            "IOC_INGEST__RECEIVE_MAXIMUM".to_string(),
            "lots".to_string(),
        )];
        let err = load_str(None, env).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(
            p.path,
            "ingest.receive_maximum (from IOC_INGEST__RECEIVE_MAXIMUM)"
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = load_str(Some(("my.toml", "[kafka\n")), no_env()).unwrap_err();
        assert!(
            err.to_string().starts_with("my.toml is not valid TOML"),
            "{err}"
        );
    }
}
