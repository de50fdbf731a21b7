//! The data contract every stage of the IOC pipeline shares.
//!
//! - [`catalogue`]: the canonical metric names, units and physical ranges (DOMAIN.md §1).
//! - [`Reading`], [`ReadingBatch`]: one value from one device, and the Kafka record that carries
//!   the readings made from one MQTT message; [`readings_json`] writes that record without
//!   building owned readings first.
//! - [`DeadLetter`]: a rejected message or value, with its raw bytes, reason and provenance.
//! - [`Aggregate`], [`Alert`], [`Event`]: what the stream layer emits.
//! - [`Device`], [`RegistryEvent`]: the device registry, shared through the bus.
//! - [`Topics`]: the bus topic names.
//! - [`time`]: the one way times are parsed and written.
//!
//! Nothing here does I/O. Every stage depends on this crate; no stage depends on another stage.

pub mod catalogue;
pub mod quality;
pub mod rate;
pub mod readings_json;
pub mod registry;
pub mod time;
pub mod units;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Readings' quality flag. Aggregates use only `Good` readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Suspect,
    Bad,
}

impl Quality {
    #[inline]
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Suspect => "suspect",
            Quality::Bad => "bad",
        }
    }

    pub fn parse(s: &str) -> Option<Quality> {
        match s {
            "good" => Some(Quality::Good),
            "suspect" => Some(Quality::Suspect),
            "bad" => Some(Quality::Bad),
            _ => None,
        }
    }
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value from one device. Its unique key is `(device_id, channel, metric, ts)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub device_id: String,
    /// Empty, or the sub-source on a device: a lane, `inlet`/`outlet`, ...
    #[serde(default)]
    pub channel: String,
    pub metric: String,
    /// Event time, UTC epoch milliseconds.
    pub ts: i64,
    /// In the catalogue's canonical unit for `metric`.
    pub value: f64,
    pub unit: String,
    /// For counts over an interval (vehicle_count): the interval's length in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
    pub quality: Quality,
    /// Why the reading is not `good`; empty when it is.
    #[serde(default)]
    pub quality_reason: String,
    /// When ingest received the source message, UTC epoch milliseconds.
    pub received_at: i64,
    /// Id of the source message: a hash of its topic and bytes, so a redelivered message keeps it.
    pub message_id: String,
}

/// The value of one record on the readings topic: every reading made from one MQTT message.
/// One record per message keeps the ingest acknowledgement to one Kafka confirmation. Its JSON
/// names the fields the readings share once ([`readings_json`] has the wire form, its
/// `Serialize` and `Deserialize`, and the hand-written writer ingest uses).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingBatch {
    pub readings: Vec<Reading>,
}

/// Why a message, or one value in it, was rejected. The code is the metric label and the
/// dead-letter record's `code`; the text in [`DeadLetter::reason`] gives the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    PayloadTooLarge,
    BadTopic,
    Malformed,
    MissingTs,
    InvalidTs,
    InvalidField,
    NoValues,
    UnknownDevice,
    UnknownMetric,
    NotANumber,
    UnknownUnit,
    /// The device is registered as speaking another format than the topic carries.
    WrongFormat,
    /// Something the message needs is not configured (a vendor profile, the plate secret).
    NotConfigured,
    /// The device sent faster than `ingest.device_rate_limit` allows.
    RateLimited,
    /// The device is registered as decommissioned.
    Decommissioned,
}

impl RejectCode {
    pub const ALL: [RejectCode; 15] = [
        RejectCode::PayloadTooLarge,
        RejectCode::BadTopic,
        RejectCode::Malformed,
        RejectCode::MissingTs,
        RejectCode::InvalidTs,
        RejectCode::InvalidField,
        RejectCode::NoValues,
        RejectCode::UnknownDevice,
        RejectCode::UnknownMetric,
        RejectCode::NotANumber,
        RejectCode::UnknownUnit,
        RejectCode::WrongFormat,
        RejectCode::NotConfigured,
        RejectCode::RateLimited,
        RejectCode::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::PayloadTooLarge => "payload_too_large",
            RejectCode::BadTopic => "bad_topic",
            RejectCode::Malformed => "malformed",
            RejectCode::MissingTs => "missing_ts",
            RejectCode::InvalidTs => "invalid_ts",
            RejectCode::InvalidField => "invalid_field",
            RejectCode::NoValues => "no_values",
            RejectCode::UnknownDevice => "unknown_device",
            RejectCode::UnknownMetric => "unknown_metric",
            RejectCode::NotANumber => "not_a_number",
            RejectCode::UnknownUnit => "unknown_unit",
            RejectCode::WrongFormat => "wrong_format",
            RejectCode::NotConfigured => "not_configured",
            RejectCode::RateLimited => "rate_limited",
            RejectCode::Decommissioned => "decommissioned",
        }
    }
}

/// A record on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub code: RejectCode,
    /// Human-readable detail: which field, what was expected, what was found.
    pub reason: String,
    /// The MQTT topic the message arrived on.
    pub topic: String,
    pub received_at: i64,
    pub message_id: String,
    /// The device the topic names, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// For a message whose device was not found by an external id: `kind:value`
    /// (`imei:861234567890123`), so it can be replayed once that device is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// For a rejected value: the metric it was sent as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The message's bytes exactly as received, base64 (standard alphabet, padded).
    pub raw_base64: String,
}

/// What ingest made of one message from a device being commissioned or serviced (status
/// `commissioning` or `maintenance`), on the `tap` topic, for the installer's live view of that
/// device. Camera messages' bytes are withheld: they may hold licence plates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TapRecord {
    pub device_id: String,
    /// The MQTT topic the message arrived on.
    pub topic: String,
    pub received_at: i64,
    pub message_id: String,
    /// The message as received, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_text: Option<String>,
    /// The message as received, base64, when it is not UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// Why the bytes are not shown, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    pub readings: Vec<Reading>,
    pub rejections: Vec<TapRejection>,
}

/// A rejection in a [`TapRecord`]: the whole message (no metric) or one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TapRejection {
    pub code: RejectCode,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

/// A closed event-time window over one device, channel and metric (good readings only), at one
/// [`Resolution`]. 1-minute windows are computed from readings; coarser ones are derived from the
/// stored windows of the next finer resolution, which is why `sum` is kept (a mean of means
/// weighted by count is exact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    /// Records from before resolutions existed were 1-minute windows.
    #[serde(default)]
    pub resolution: Resolution,
    pub window_start: i64,
    pub window_end: i64,
    pub count: u64,
    /// Sum of the good values (records from before it was kept: `mean × count`).
    #[serde(default = "f64_nan")]
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// The share of the window's expected readings that arrived good (`count` over the window's
    /// length divided by the device's `expected_interval_s`), at most 1.0; `None` where the
    /// device's expected interval was not known when the window was computed.
    #[serde(default)]
    pub capture: Option<f64>,
    pub unit: String,
    /// Higher versions replace lower ones: a late reading re-emits its window with a new version.
    pub version: u64,
}

fn f64_nan() -> f64 {
    f64::NAN
}

impl Aggregate {
    /// Fills what a record from an older release lacks (`sum`).
    pub fn upgraded(mut self) -> Aggregate {
        if self.sum.is_nan() {
            self.sum = self.mean * self.count as f64;
        }
        self
    }
}

/// The capture of a window of `window_ms` holding `count` good readings from a device expected
/// every `expected_interval_s` seconds: at most 1.0, `None` without a usable interval.
pub fn capture(count: u64, window_ms: i64, expected_interval_s: Option<f64>) -> Option<f64> {
    let interval = expected_interval_s.filter(|s| s.is_finite() && *s > 0.0)?;
    let expected = window_ms as f64 / (interval * 1000.0);
    Some((count as f64 / expected).min(1.0))
}

/// The length of a tumbling window. Each is a whole number of the next finer one, aligned on
/// the local day (`ingest.local_utc_offset`), so a coarser window is exactly the union of finer
/// ones.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Resolution {
    #[default]
    #[serde(rename = "1m")]
    Minute = 0,
    #[serde(rename = "5m")]
    FiveMinutes = 1,
    #[serde(rename = "1h")]
    Hour = 2,
    #[serde(rename = "1d")]
    Day = 3,
}

impl Resolution {
    pub const ALL: [Resolution; 4] = [
        Resolution::Minute,
        Resolution::FiveMinutes,
        Resolution::Hour,
        Resolution::Day,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Minute => "1m",
            Resolution::FiveMinutes => "5m",
            Resolution::Hour => "1h",
            Resolution::Day => "1d",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn ms(self) -> i64 {
        match self {
            Resolution::Minute => 60_000,
            Resolution::FiveMinutes => 300_000,
            Resolution::Hour => 3_600_000,
            Resolution::Day => 86_400_000,
        }
    }

    /// The next finer resolution, which this one is derived from (none for 1 minute).
    pub fn finer(self) -> Option<Resolution> {
        match self {
            Resolution::Minute => None,
            Resolution::FiveMinutes => Some(Resolution::Minute),
            Resolution::Hour => Some(Resolution::FiveMinutes),
            Resolution::Day => Some(Resolution::Hour),
        }
    }

    /// The next coarser resolution, derived from this one.
    pub fn coarser(self) -> Option<Resolution> {
        match self {
            Resolution::Minute => Some(Resolution::FiveMinutes),
            Resolution::FiveMinutes => Some(Resolution::Hour),
            Resolution::Hour => Some(Resolution::Day),
            Resolution::Day => None,
        }
    }

    /// Start of the window containing `ts`, for a local time `utc_offset_ms` ahead of UTC
    /// (a whole number of minutes, so minutes are the same in every zone).
    pub fn start(self, ts: i64, utc_offset_ms: i64) -> i64 {
        ts - (ts + utc_offset_ms).rem_euclid(self.ms())
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert stands. Alerts stored before the lifecycle read `active` as `firing` and
/// `cleared` as `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    #[serde(alias = "active")]
    Firing,
    Acknowledged,
    #[serde(alias = "cleared")]
    Resolved,
}

impl AlertState {
    pub const ALL: [AlertState; 3] = [
        AlertState::Firing,
        AlertState::Acknowledged,
        AlertState::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        match s {
            "firing" | "active" => Some(AlertState::Firing),
            "acknowledged" => Some(AlertState::Acknowledged),
            "resolved" | "cleared" => Some(AlertState::Resolved),
            _ => None,
        }
    }

    pub fn is_open(self) -> bool {
        self != AlertState::Resolved
    }
}

/// Why an alert resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolveReason {
    /// Its clear condition held (or, without one, its condition no longer did).
    Cleared,
    /// By hand, with a comment.
    Manual,
    /// A revised window removed the value that raised it.
    Revised,
    /// Its device was decommissioned.
    Decommissioned,
    /// Its rule was removed or replaced.
    #[serde(rename = "rule_removed")]
    RuleRemoved,
}

impl ResolveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveReason::Cleared => "cleared",
            ResolveReason::Manual => "manual",
            ResolveReason::Revised => "revised",
            ResolveReason::Decommissioned => "decommissioned",
            ResolveReason::RuleRemoved => "rule_removed",
        }
    }

    pub fn parse(s: &str) -> Option<ResolveReason> {
        [
            ResolveReason::Cleared,
            ResolveReason::Manual,
            ResolveReason::Revised,
            ResolveReason::Decommissioned,
            ResolveReason::RuleRemoved,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One alert: one episode of one rule instance (the rule, the device, the channel and the
/// rule's labels), from firing (optionally acknowledged) to resolved. Each transition
/// republishes it under the same `alert_id` with a higher `version`; a new episode after
/// resolution is a new alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `{rule}:{instance}:{started_at}`: a replay makes the same id.
    pub alert_id: String,
    pub rule: String,
    /// `air`, `water`, `traffic`, `device` (empty on alerts from before rules had one).
    #[serde(default)]
    pub category: String,
    /// `critical`, `major`, `minor`, `warning`.
    #[serde(default)]
    pub severity: String,
    pub device_id: String,
    pub channel: String,
    #[serde(default)]
    pub metric: String,
    /// The rule instance: `device_id/channel` and each label's value (`/`-separated).
    #[serde(default)]
    pub instance: String,
    /// The rule's labels and their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(alias = "status")]
    pub state: AlertState,
    /// Start of the first window in which the condition held (UTC epoch ms).
    #[serde(default)]
    pub started_at: i64,
    /// When it fired: the end of the window after which the condition had held for `for`
    /// (event time). Alerts from before the lifecycle: the start of the first window.
    #[serde(alias = "raised_at")]
    pub fired_at: i64,
    #[serde(default, alias = "cleared_at", skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_reason: Option<ResolveReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Action>,
    /// Who resolved it by hand, when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<Action>,
    /// The value that fired it.
    pub value: f64,
    /// The highest value seen while it was firing.
    pub peak: f64,
    /// The limit the value is held to, where the rule names one.
    #[serde(default)]
    pub limit: Option<f64>,
    #[serde(default)]
    pub unit: String,
    pub message: String,
    /// Raised or resolved by windows older than `stream.notify_max_age` (a backfill): recorded
    /// as usual, notified to no one.
    #[serde(default)]
    pub backfill: bool,
    /// Raised while its device was in maintenance (or its readings calibrating): notified to
    /// no one.
    #[serde(default)]
    pub muted: bool,
    pub version: u64,
}

impl Alert {
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }
}

/// Someone's act on an alert: who, when (UTC epoch ms), and their comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub by: String,
    pub at: i64,
    #[serde(default)]
    pub comment: String,
    /// The command it came by: a replayed command finds its own act done, not a conflict.
    #[serde(default)]
    pub request_id: String,
}

/// What changed an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    Fired,
    Acknowledged,
    Resolved,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Fired => "fired",
            TransitionKind::Acknowledged => "acknowledged",
            TransitionKind::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<TransitionKind> {
        [
            TransitionKind::Fired,
            TransitionKind::Acknowledged,
            TransitionKind::Resolved,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One transition of one alert (the `alert-transitions` topic): each kind happens at most once
/// per alert, so `(alert_id, kind)` is its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTransition {
    pub alert_id: String,
    pub kind: TransitionKind,
    /// Event time for firing and automatic resolution (a window's end); the act's time for an
    /// acknowledgement or a manual resolution.
    pub at: i64,
    /// The command that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Notifies no one: a backfill, a device in maintenance, or an alert that never notified.
    #[serde(default)]
    pub silent: bool,
    /// The alert as the transition left it.
    pub alert: Alert,
}

impl AlertTransition {
    /// `alert_id/kind`: what a receiver of its notification drops a repeat by.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.alert_id, self.kind.as_str())
    }
}

/// What someone asks of an alert (`alert-commands`, keyed by device id so that it reaches the
/// stream process owning the device's partition, the alert's single writer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertCommand {
    pub request_id: String,
    pub alert_id: String,
    pub device_id: String,
    pub action: CommandAction,
    pub by: String,
    pub at: i64,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandAction {
    Acknowledge,
    Resolve,
}

/// The stream's answer to a command (`alert-replies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertReply {
    pub request_id: String,
    pub alert_id: String,
    pub outcome: ReplyOutcome,
    /// What stands in the way, for people (`conflict`, `unknown`).
    #[serde(default)]
    pub message: String,
    /// The alert as it stands after the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// Done (or done before by this same request).
    Done,
    /// Someone else acknowledged or resolved it first.
    Conflict,
    /// No open alert by that id on its device.
    Unknown,
}

/// A discrete event, keyed by `event_id` (today: AI camera violations). Carries no personal
/// data in clear: a camera event's plate is only its keyed pseudonym (see [`Evidence`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub device_id: String,
    /// Event time, UTC epoch milliseconds.
    pub ts: i64,
    /// What happened: `red_light`, `no_helmet`, `speeding`, ...
    pub kind: String,
    /// Event details (`plate_pseudonym`, `speed_kmh`, `lane`, `camera_id`).
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub received_at: i64,
    #[serde(default)]
    pub message_id: String,
}

/// The personal data of a camera event, kept apart from everything else (DOMAIN.md §7): it goes
/// only to the evidence topic and table, never to logs, metrics or the general topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub event_id: String,
    pub device_id: String,
    pub camera_id: String,
    pub ts: i64,
    pub kind: String,
    /// The licence plate as the camera read it.
    pub plate: String,
    /// The keyed pseudonym the event carries (HMAC of the normalized plate).
    pub plate_pseudonym: String,
    pub image_ref: String,
    pub received_at: i64,
    pub message_id: String,
}

/// Violation types an AI traffic camera reports.
pub const CAMERA_EVENT_TYPES: [&str; 6] = [
    "red_light",
    "no_helmet",
    "wrong_lane",
    "wrong_way",
    "speeding",
    "no_seatbelt",
];

/// Kinds of device the product knows.
pub const DEVICE_KINDS: [&str; 4] = [
    "air_quality",
    "wastewater",
    "traffic_counter",
    "traffic_camera",
];

/// Kinds of external id a device can be found by: what its payloads or topics name it with.
pub const EXTERNAL_ID_KINDS: [&str; 3] = ["imei", "station_code", "camera_id"];

/// The payload formats ingest decodes, by name (`ingest.routes`, `ioc decode --format`, a
/// device's `decoder`).
pub const FORMAT_NAMES: [&str; 6] = [
    "ioc-json",
    "senml",
    "vendor-flat",
    "tt10-station",
    "traffic-counter",
    "camera-event",
];

/// A registered device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    pub kind: String,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub expected_interval_s: f64,
    pub registered_at: i64,
    /// Ids the device is known by outside the registry (kind in [`EXTERNAL_ID_KINDS`] → value),
    /// each unique across devices.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    /// The format the device speaks (one of [`FORMAT_NAMES`]); when set, ingest refuses other
    /// formats from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<String>,
    /// The vendor profile (key names, units, time format) its payloads follow, for formats that
    /// have profiles (`vendor-flat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_profile: Option<String>,
    /// Where the device is in its life. Records written before statuses existed read as
    /// `active`; a new registration starts as `commissioning` unless it says otherwise.
    #[serde(default)]
    pub status: DeviceStatus,
    /// The commune or ward (xã, phường, đặc khu) the device stands in: since 1 July 2025 the
    /// level directly under the province.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commune: Option<String>,
    /// Street address or landmark, free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// When it was installed on site, UTC epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<i64>,
    /// Who installed it (a person or contractor, free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<String>,
    /// The API caller who registered it (absent in records from before tokens had names:
    /// then only the admin token could register).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<Actor>,
    /// Whether its measurements are official ([`Grade`]); `None` is its kind's default
    /// ([`Device::grade`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Grade>,
    /// What a wastewater station's discharge is held to (absent: the defaults of
    /// [`Discharge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharge: Option<Discharge>,
    /// The metrics it owes (what the quality score "complete" counts against); `None` is its
    /// kind's default ([`quality::default_expected_metrics`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_metrics: Option<Vec<String>>,
    /// The unit answerable for its data (a department, a district, a company): quality scores
    /// are rolled up per agency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    /// A traffic counter's road segment (its lanes are its channels), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road_segment: Option<String>,
    /// A traffic counter's free-flow speed (km/h): what its congestion level holds the
    /// measured speed against. Absent: the level is judged by occupancy alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_flow_speed_kmh: Option<f64>,
}

impl Device {
    /// The metrics it owes: as registered, else its kind's default.
    pub fn expected_metrics(&self) -> Vec<String> {
        match &self.expected_metrics {
            Some(m) => m.clone(),
            None => quality::default_expected_metrics(&self.kind)
                .iter()
                .map(|m| m.to_string())
                .collect(),
        }
    }

    /// Its grade: as registered, else `reference` for air-quality and wastewater stations
    /// (certified automatic stations, the common case) and `indicative` for anything else.
    pub fn grade(&self) -> Grade {
        self.grade.unwrap_or(match self.kind.as_str() {
            "air_quality" | "wastewater" => Grade::Reference,
            _ => Grade::Indicative,
        })
    }

    /// A wastewater station's discharge settings, with their defaults filled in.
    pub fn discharge(&self) -> Discharge {
        self.discharge.clone().unwrap_or_default()
    }
}

/// Whether a station's measurements count officially. Official VN_AQI and exceedances are
/// published for reference stations only; indicative ones (low-cost sensors) get the same
/// numbers marked `indicative`, never mixed into an official figure (DOMAIN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Reference,
    Indicative,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Reference => "reference",
            Grade::Indicative => "indicative",
        }
    }

    pub fn parse(name: &str) -> Option<Grade> {
        match name {
            "reference" => Some(Grade::Reference),
            "indicative" => Some(Grade::Indicative),
            _ => None,
        }
    }
}

/// A QCVN 40 column: A for discharge into water used for domestic supply, B otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Qcvn40Column {
    A,
    #[default]
    B,
}

impl Qcvn40Column {
    pub fn as_str(self) -> &'static str {
        match self {
            Qcvn40Column::A => "A",
            Qcvn40Column::B => "B",
        }
    }

    pub fn parse(name: &str) -> Option<Qcvn40Column> {
        match name {
            "A" => Some(Qcvn40Column::A),
            "B" => Some(Qcvn40Column::B),
            _ => None,
        }
    }
}

/// The regulation wastewater stations are held to unless registered otherwise.
pub const DEFAULT_WASTEWATER_REGULATION: &str = "QCVN 40:2011/BTNMT";

/// What a wastewater station's discharge is judged by: the hourly means of its discharge
/// channel against C × Kq × Kf of its column of its regulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Discharge {
    /// The channel measuring the outlet (the inlet is not judged). The empty channel is a
    /// station's only one.
    pub channel: String,
    pub column: Qcvn40Column,
    /// The receiving-water factor.
    pub kq: f64,
    /// The discharge-flow factor.
    pub kf: f64,
    pub regulation: String,
}

impl Default for Discharge {
    fn default() -> Self {
        Discharge {
            channel: "outlet".into(),
            column: Qcvn40Column::B,
            kq: 1.0,
            kf: 1.0,
            regulation: DEFAULT_WASTEWATER_REGULATION.into(),
        }
    }
}

/// A device's life cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Being installed: its messages are processed and stored as any other's.
    Commissioning,
    #[default]
    Active,
    /// Being serviced: still processed; dashboards show it is not in normal service.
    Maintenance,
    /// Taken out of service: ingest refuses its messages (`decommissioned`).
    Decommissioned,
}

/// Every device status, by name.
pub const DEVICE_STATUSES: [&str; 4] = ["commissioning", "active", "maintenance", "decommissioned"];

impl DeviceStatus {
    /// Whether ingest copies what it makes of the device's messages to the `tap` topic.
    pub fn is_tapped(self) -> bool {
        matches!(
            self,
            DeviceStatus::Commissioning | DeviceStatus::Maintenance
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Commissioning => "commissioning",
            DeviceStatus::Active => "active",
            DeviceStatus::Maintenance => "maintenance",
            DeviceStatus::Decommissioned => "decommissioned",
        }
    }

    pub fn parse(name: &str) -> Option<DeviceStatus> {
        Some(match name {
            "commissioning" => DeviceStatus::Commissioning,
            "active" => DeviceStatus::Active,
            "maintenance" => DeviceStatus::Maintenance,
            "decommissioned" => DeviceStatus::Decommissioned,
            _ => return None,
        })
    }
}

/// Changes to a registered device's details; `None` leaves a field as it is. Ids (device id,
/// external ids) and the decoder are changed by registering again, not here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_interval_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commune: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Grade>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharge_channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qcvn40_column: Option<Qcvn40Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kq: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kf: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regulation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_metrics: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub road_segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_flow_speed_kmh: Option<f64>,
}

impl DeviceChanges {
    /// Applies the changes to `device`.
    pub fn apply_to(&self, device: &mut Device) {
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                field.clone_from(v);
            }
        };
        set(&mut device.name, &self.name);
        device.lat = self.lat.unwrap_or(device.lat);
        device.lon = self.lon.unwrap_or(device.lon);
        device.expected_interval_s = self
            .expected_interval_s
            .unwrap_or(device.expected_interval_s);
        device.status = self.status.unwrap_or(device.status);
        for (field, value) in [
            (&mut device.commune, &self.commune),
            (&mut device.address, &self.address),
            (&mut device.installer, &self.installer),
            (&mut device.agency, &self.agency),
            (&mut device.road_segment, &self.road_segment),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        device.installed_at = self.installed_at.or(device.installed_at);
        device.grade = self.grade.or(device.grade);
        device.free_flow_speed_kmh = self.free_flow_speed_kmh.or(device.free_flow_speed_kmh);
        if self.expected_metrics.is_some() {
            device.expected_metrics.clone_from(&self.expected_metrics);
        }
        let touches_discharge = self.discharge_channel.is_some()
            || self.qcvn40_column.is_some()
            || self.kq.is_some()
            || self.kf.is_some()
            || self.regulation.is_some();
        if touches_discharge {
            let d = device.discharge.get_or_insert_with(Discharge::default);
            if let Some(c) = &self.discharge_channel {
                d.channel.clone_from(c);
            }
            d.column = self.qcvn40_column.unwrap_or(d.column);
            d.kq = self.kq.unwrap_or(d.kq);
            d.kf = self.kf.unwrap_or(d.kf);
            if let Some(r) = &self.regulation {
                d.regulation.clone_from(r);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == DeviceChanges::default()
    }
}

/// What an API token may do. Pseudonymous camera events need `admin` or `enforcement`; the
/// cleartext evidence store only `enforcement` (DOMAIN.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything but the cleartext evidence: devices, tokens, audit, camera events.
    Admin,
    /// The IOC's dashboards: devices, readings, aggregates, alerts, live feed; read only.
    Operator,
    /// Onboarding: what an operator sees, plus registering and updating devices, their
    /// credentials, commissioning and replay.
    Installer,
    /// Traffic enforcement officers: what an operator sees, plus camera events and evidence.
    Enforcement,
    /// Environment officers: what an operator sees, and acting on (acknowledging, resolving)
    /// the alerts of the `air` and `water` categories.
    Environment,
}

/// Every role, by name.
pub const ROLES: [&str; 5] = [
    "admin",
    "operator",
    "installer",
    "enforcement",
    "environment",
];

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Installer => "installer",
            Role::Enforcement => "enforcement",
            Role::Environment => "environment",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Some(match name {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "installer" => Role::Installer,
            "enforcement" => Role::Enforcement,
            "environment" => Role::Environment,
            _ => return None,
        })
    }
}

/// Who did something through the API: a token's name and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

impl Actor {
    /// The token configured as `api.admin_token`.
    pub fn admin_token() -> Actor {
        Actor {
            name: "admin-token".into(),
            role: Role::Admin,
        }
    }
}

/// An issued API token, as the registry keeps it: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub token_id: String,
    /// Whose token it is (a person or a dashboard), as audit entries name them.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub issued_at: i64,
    pub issued_by: Actor,
}

/// A device's MQTT account, as the registry keeps it: never the password, only its SHA-256.
/// The device logs in with `username` (its device id) and `client_id` (the same) and may
/// publish on `topics` (on Mosquitto, its dynamic-security role allows exactly those).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCredentials {
    pub device_id: String,
    pub username: String,
    pub client_id: String,
    /// Where it publishes: the first is its main topic (its decoder's route).
    pub topics: Vec<String>,
    /// Hex SHA-256 of the password.
    pub sha256: String,
    pub issued_at: i64,
    pub issued_by: Actor,
}

/// One entry of the audit log: who did what, when, to what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// The caller.
    pub by: Actor,
    /// `device.registered`, `device.updated`, `token.issued`, `token.revoked`, `events.read`,
    /// `evidence.read`, ...
    pub action: String,
    /// What it was done to: a device id, a token id, or the query of a read.
    pub target: String,
    /// Details: the changes made, or a read's filter and how many rows it returned.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Hex SHA-256 of a secret: how the registry keeps API tokens and device passwords. The
/// secrets are random (at least 160 bits), so an unsalted hash is enough.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks an external id value: 1 to 64 printable ASCII characters, no `/`, `+`, `#` (it may
/// appear in an MQTT topic).
pub fn valid_external_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'+' | b'#'))
}

/// A record on the registry topic (keyed by device id). The registry is the fold of these events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RegistryEvent {
    Registered {
        device: Device,
    },
    Updated {
        device_id: String,
        changes: DeviceChanges,
        by: Actor,
        at: i64,
    },
    TokenIssued {
        token: TokenRecord,
    },
    TokenRevoked {
        token_id: String,
        by: Actor,
        at: i64,
    },
    /// A device's MQTT account was created or its password changed (the old one stops working).
    CredentialsIssued {
        credentials: DeviceCredentials,
    },
    /// A device's MQTT account was deleted.
    CredentialsRevoked {
        device_id: String,
        by: Actor,
        at: i64,
    },
    /// Dead-lettered messages (by message id) reprocessed for a device once it was registered;
    /// never replayed again.
    Replayed {
        device_id: String,
        message_ids: Vec<String>,
        by: Actor,
        at: i64,
    },
    /// The bus's history began. The first of these on the registry topic names the epoch of
    /// every position the API gives websocket clients: a bus rebuilt from nothing has another,
    /// so a client's old positions are known to be of a history that is gone. Written by the
    /// first API instance to find none.
    BusEpoch {
        epoch: String,
        at: i64,
    },
}

impl RegistryEvent {
    /// The record key on the registry topic.
    pub fn key(&self) -> &str {
        match self {
            RegistryEvent::Registered { device } => &device.device_id,
            RegistryEvent::Updated { device_id, .. } => device_id,
            RegistryEvent::TokenIssued { token } => &token.token_id,
            RegistryEvent::TokenRevoked { token_id, .. } => token_id,
            RegistryEvent::Replayed { device_id, .. } => device_id,
            RegistryEvent::CredentialsIssued { credentials } => &credentials.device_id,
            RegistryEvent::CredentialsRevoked { device_id, .. } => device_id,
            RegistryEvent::BusEpoch { .. } => "epoch",
        }
    }
}

/// Checks a device id: 1 to 64 characters of `A-Z a-z 0-9 _ - .`; it appears in MQTT topics,
/// so no `/`, `+` or `#`.
#[inline]
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The bus topic names, all under one configurable prefix (several deployments can share a
/// Kafka cluster, and tests isolate themselves this way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub readings: String,
    pub deadletter: String,
    pub aggregates: String,
    pub alerts: String,
    /// Hourly and daily VN_AQI per air-quality station (`ioc_history::AqiRow`).
    pub aqi: String,
    /// QCVN exceedances and their withdrawals (`ioc_history::ExceedanceRow`).
    pub exceedances: String,
    /// Data-quality counts per device, channel, metric and minute (`ioc_history::QualityRow`),
    /// each time a minute is counted.
    pub quality: String,
    /// PM2.5 forecasts per air-quality station, origin hour and hour ahead
    /// (`ioc_history::ForecastRow`), each time a station's hour is stored.
    pub forecast: String,
    /// Traffic counters' flow, speed, occupancy and congestion per 5 minutes and hour, and
    /// cameras' violations per type and hour (`ioc_history::TrafficRecord`).
    pub traffic: String,
    pub events: String,
    /// Camera events' personal data (plates, image references), apart from everything else.
    pub evidence: String,
    /// Rejected camera messages: they may hold plates, so not the general dead-letter topic.
    pub quarantine: String,
    /// Every alert transition (`AlertTransition`).
    pub alert_transitions: String,
    /// Acknowledgements and manual resolutions, API to stream (`AlertCommand`).
    pub alert_commands: String,
    /// The stream's answers to them (`AlertReply`).
    pub alert_replies: String,
    pub registry: String,
    /// The alert rules in force, every change, and reload requests (`ioc_config::rules::RulesRecord`).
    pub rules: String,
    /// Reads of personal data (camera events, evidence): who read what, when. Kept forever.
    pub audit: String,
    /// What ingest made of each message of devices being commissioned or serviced.
    pub tap: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Topics {
        Topics {
            readings: format!("{prefix}readings"),
            deadletter: format!("{prefix}deadletter"),
            aggregates: format!("{prefix}aggregates"),
            alerts: format!("{prefix}alerts"),
            aqi: format!("{prefix}aqi"),
            exceedances: format!("{prefix}exceedances"),
            quality: format!("{prefix}quality"),
            forecast: format!("{prefix}forecast"),
            traffic: format!("{prefix}traffic"),
            events: format!("{prefix}events"),
            evidence: format!("{prefix}evidence"),
            quarantine: format!("{prefix}quarantine"),
            alert_transitions: format!("{prefix}alert-transitions"),
            alert_commands: format!("{prefix}alert-commands"),
            alert_replies: format!("{prefix}alert-replies"),
            registry: format!("{prefix}registry"),
            rules: format!("{prefix}rules"),
            audit: format!("{prefix}audit"),
            tap: format!("{prefix}tap"),
        }
    }

    pub fn all(&self) -> [&str; 19] {
        [
            &self.readings,
            &self.deadletter,
            &self.aggregates,
            &self.alerts,
            &self.aqi,
            &self.exceedances,
            &self.events,
            &self.evidence,
            &self.quarantine,
            &self.alert_transitions,
            &self.alert_commands,
            &self.alert_replies,
            &self.registry,
            &self.rules,
            &self.audit,
            &self.tap,
            &self.quality,
            &self.forecast,
            &self.traffic,
        ]
    }
}

/// The device protocol v1 MQTT topic of a device's telemetry.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("ioc/v1/devices/{device_id}/telemetry")
}

/// The device id in a v1 telemetry topic, if the topic is one.
pub fn device_of_telemetry_topic(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("ioc/v1/devices/")?;
    let id = rest.strip_suffix("/telemetry")?;
    valid_device_id(id).then_some(id)
}

/// The topic a monitoring station sends its files on (one file per message).
pub fn station_file_topic(station_id: &str) -> String {
    format!("ioc/v1/stations/{station_id}/file")
}

/// The station id in a station file topic, if the topic is one. Until devices carry external
/// ids, a station's id is its device id.
pub fn device_of_station_topic(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("ioc/v1/stations/")?;
    let id = rest.strip_suffix("/file")?;
    valid_device_id(id).then_some(id)
}

/// Length of the window readings are aggregated in first (every other is derived from it).
pub const WINDOW_MS: i64 = 60_000;

/// Start of the 1-minute window that contains `ts`.
pub fn window_start(ts: i64) -> i64 {
    Resolution::Minute.start(ts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_topic_round_trips() {
        assert_eq!(
            device_of_telemetry_topic(&telemetry_topic("aq-001")),
            Some("aq-001")
        );
        assert_eq!(
            device_of_telemetry_topic("ioc/v1/devices/a/b/telemetry"),
            None
        );
        assert_eq!(device_of_telemetry_topic("ioc/v1/devices//telemetry"), None);
        assert_eq!(device_of_telemetry_topic("other/aq-001/telemetry"), None);
    }

    #[test]
    fn windows_are_minute_aligned_for_negative_times_too() {
        assert_eq!(window_start(60_000), 60_000);
        assert_eq!(window_start(119_999), 60_000);
        assert_eq!(window_start(-1), -60_000);
    }

    #[test]
    fn coarser_windows_are_unions_of_finer_ones_on_the_local_day() {
        let ict = 7 * 3_600_000;
        // 2026-11-26T16:59:59.999Z is 23:59:59.999 in Vietnam: still the 26th there.
        let t = 1_795_712_399_999;
        assert_eq!(Resolution::Day.start(t, ict), 1_795_626_000_000);
        assert_eq!(Resolution::Day.start(t + 1, ict), t + 1);
        assert_eq!(Resolution::Day.start(t + 1, 0), 1_795_651_200_000);
        for r in Resolution::ALL {
            let Some(finer) = r.finer() else { continue };
            assert_eq!(r.ms() % finer.ms(), 0);
            for ts in [t - 7_777_777, t, t + 1, -1] {
                let start = r.start(ts, ict);
                assert_eq!(
                    finer.start(start, ict),
                    start,
                    "{r} starts on a {finer} boundary"
                );
                assert!(start <= ts && ts < start + r.ms());
            }
            assert_eq!(finer.coarser(), Some(r));
            assert_eq!(Resolution::parse(r.as_str()), Some(r));
        }
        assert_eq!(Resolution::parse("2h"), None);
    }

    #[test]
    fn capture_is_the_share_of_expected_readings_and_at_most_one() {
        assert_eq!(capture(45, 3_600_000, Some(60.0)), Some(0.75));
        assert_eq!(capture(120, 3_600_000, Some(60.0)), Some(1.0));
        assert_eq!(capture(1, 60_000, Some(300.0)), Some(1.0));
        assert_eq!(capture(10, 60_000, None), None);
        assert_eq!(capture(10, 60_000, Some(0.0)), None);
    }

    #[test]
    fn an_aggregate_from_an_older_release_reads_as_a_minute_with_its_sum() {
        let old = r#"{"device_id":"a","channel":"","metric":"pm25","window_start":0,"window_end":60000,"count":4,"min":1.0,"max":3.0,"mean":2.5,"unit":"µg/m³","version":1}"#;
        let a = serde_json::from_str::<Aggregate>(old).unwrap().upgraded();
        assert_eq!(
            (a.resolution, a.sum, a.capture),
            (Resolution::Minute, 10.0, None)
        );
    }

    #[test]
    fn station_topics_round_trip() {
        assert_eq!(
            device_of_station_topic(&station_file_topic("ww-001")),
            Some("ww-001")
        );
        assert_eq!(device_of_station_topic("ioc/v1/stations/a+b/file"), None);
        assert_eq!(
            device_of_station_topic("ioc/v1/devices/ww-001/telemetry"),
            None
        );
    }

    #[test]
    fn reject_codes_have_distinct_names() {
        let mut names: Vec<_> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RejectCode::ALL.len());
        for code in RejectCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
