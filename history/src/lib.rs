//! History: the row types, idempotent writes and the queries the stream and API stages run,
//! over one of two stores:
//!
//! - [`clickhouse_store::ClickHouseHistory`]: ClickHouse, for the distributed deployment.
//! - [`embedded::EmbeddedHistory`]: Parquet files under a directory, for `ioc up`.
//!
//! Both keep one row per record key, the highest `version` winning (ClickHouse's
//! `ReplacingMergeTree`, and the same rule applied on read in the embedded store), so a repeated
//! write is harmless. Times are Int64 epoch milliseconds.

#[macro_use]
pub mod record;
pub mod clickhouse_store;
pub mod embedded;

use clickhouse::Row;
use ioc_contract::{
    Aggregate, Alert, AlertState, AlertTransition, DeadLetter, Event, Evidence, Quality, Reading,
    Resolution, ResolveReason, TransitionKind,
};
use serde::{Deserialize, Serialize};

pub use crate::clickhouse_store::ClickHouseHistory;
pub use crate::embedded::EmbeddedHistory;
pub use crate::record::Record;
use crate::record::{Keeping, Table};

/// Every table of history: what ClickHouse creates and the embedded store opens and compacts.
/// A new record type is defined with `record!` and listed here.
pub(crate) fn tables() -> [Table; 18] {
    [
        Table::of::<ReadingRow>(Keeping::Files),
        Table::of::<AggregateRow>(Keeping::Files),
        Table::of::<QualityRow>(Keeping::Files),
        Table::of::<CopyRow>(Keeping::Files),
        Table::of::<DeadLetterRow>(Keeping::Files),
        Table::of::<AqiRow>(Keeping::Files),
        Table::of::<ForecastRow>(Keeping::Files),
        Table::of::<TrafficRow>(Keeping::Files),
        Table::of::<ViolationRow>(Keeping::Files),
        Table::of::<ExceedanceRow>(Keeping::Files),
        Table::of::<AlertRow>(Keeping::Files),
        Table::of::<TransitionRow>(Keeping::Files),
        Table::of::<DeliveryRow>(Keeping::Files),
        Table::of::<EventRow>(Keeping::Files),
        Table::of::<EvidenceRow>(Keeping::Files),
        Table::of::<QuarantineRow>(Keeping::Files),
        Table::of::<OffsetRow>(Keeping::Checkpoint),
        Table::of::<WatermarkRow>(Keeping::Checkpoint),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("embedded history: {0}")]
    Embedded(#[from] embedded::StoreError),
}

record! {
    pub struct ReadingRow in "readings", key(device_id: String, channel: String, metric: String, ts: i64), time(ts) {
        pub device_id: String,
        pub channel: String,
        pub metric: String,
        pub ts: i64,
        pub value: f64,
        pub unit: String,
        pub interval_s: Option<f64>,
        pub quality: String,
        pub quality_reason: String,
        pub received_at: i64,
        pub message_id: String,
        pub version: u64,
    }
}

impl From<&Reading> for ReadingRow {
    fn from(r: &Reading) -> Self {
        ReadingRow {
            device_id: r.device_id.clone(),
            channel: r.channel.clone(),
            metric: r.metric.clone(),
            ts: r.ts,
            value: r.value,
            unit: r.unit.clone(),
            interval_s: r.interval_s,
            quality: r.quality.as_str().to_string(),
            quality_reason: r.quality_reason.clone(),
            received_at: r.received_at,
            message_id: r.message_id.clone(),
            // The latest received copy of a key wins.
            version: r.received_at.max(0) as u64,
        }
    }
}

impl ReadingRow {
    pub fn into_reading(self) -> Reading {
        Reading {
            device_id: self.device_id,
            channel: self.channel,
            metric: self.metric,
            ts: self.ts,
            value: self.value,
            unit: self.unit,
            interval_s: self.interval_s,
            quality: Quality::parse(&self.quality).unwrap_or(Quality::Bad),
            quality_reason: self.quality_reason,
            received_at: self.received_at,
            message_id: self.message_id,
        }
    }
}

record! {
    /// A window aggregate. Each resolution is its own part: its own ClickHouse table
    /// (`aggregates` for 1 minute, as before resolutions existed; `aggregates_5m`, `_1h`,
    /// `_1d`), where the table says the resolution, and its own embedded files, where it is a
    /// column.
    pub struct AggregateRow in "aggregates",
        key(resolution: Resolution, device_id: String, channel: String, metric: String, window_start: i64),
        time(window_start) {
        #[serde(skip)]
        pub resolution: Resolution [added ""],
        pub device_id: String,
        pub channel: String,
        pub metric: String,
        pub window_start: i64,
        pub window_end: i64,
        pub value_count: u64,
        /// Rows from before it was kept read as `mean × count`.
        pub value_sum: f64 [added "DEFAULT value_mean * value_count"],
        pub value_min: f64,
        pub value_max: f64,
        pub value_mean: f64,
        pub capture: Option<f64> [added ""],
        pub unit: String,
        pub version: u64,
    }
    impl {
        const PARTS: &'static [u8] = &[0, 1, 2, 3];
        fn part(&self) -> u8 {
            self.resolution as u8
        }
        fn set_part(&mut self, part: u8) {
            self.resolution = resolution_of(part);
        }
        fn filter_part(filter: &HistoryFilter) -> u8 {
            filter.resolution as u8
        }
        fn clickhouse_table(part: u8) -> &'static str {
            aggregates_table(resolution_of(part))
        }
        fn upgraded(mut self) -> Self {
            if self.value_sum.is_nan() {
                self.value_sum = self.value_mean * self.value_count as f64;
            }
            self
        }
    }
}

impl From<&Aggregate> for AggregateRow {
    fn from(a: &Aggregate) -> Self {
        AggregateRow {
            resolution: a.resolution,
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            window_start: a.window_start,
            window_end: a.window_end,
            value_count: a.count,
            value_sum: a.sum,
            value_min: a.min,
            value_max: a.max,
            value_mean: a.mean,
            capture: a.capture,
            unit: a.unit.clone(),
            version: a.version,
        }
    }
}

impl From<AggregateRow> for Aggregate {
    fn from(r: AggregateRow) -> Self {
        Aggregate {
            device_id: r.device_id,
            channel: r.channel,
            metric: r.metric,
            resolution: r.resolution,
            window_start: r.window_start,
            window_end: r.window_end,
            count: r.value_count,
            sum: r.value_sum,
            min: r.value_min,
            max: r.value_max,
            mean: r.value_mean,
            capture: r.capture,
            unit: r.unit,
            version: r.version,
        }
    }
}

/// The resolution of an aggregates part.
fn resolution_of(part: u8) -> Resolution {
    Resolution::ALL
        .get(part as usize)
        .copied()
        .unwrap_or_default()
}

/// The ClickHouse table of one resolution's aggregates.
pub fn aggregates_table(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "aggregates",
        Resolution::FiveMinutes => "aggregates_5m",
        Resolution::Hour => "aggregates_1h",
        Resolution::Day => "aggregates_1d",
    }
}

record! {
    /// The VN_AQI (Decision 1459/QĐ-TCMT) of one air-quality station for one hour (`1h`,
    /// labelled by its end) or one local day (`1d`), derived from the stored hourly windows
    /// and re-derived, with a higher version, whenever one of them is. Also the `aqi` topic's
    /// record. Sub-indices are fixed columns (18.16 has no Map type).
    pub struct AqiRow in "aqi", key(device_id: String, resolution: String, window_start: i64),
        time(window_start) {
        pub device_id: String,
        /// `1h` or `1d`.
        pub resolution: String,
        pub window_start: i64,
        pub window_end: i64,
        /// None where the decision gives none (no PM2.5 or PM10 sub-index).
        pub aqi: Option<u32>,
        /// The pollutant of the largest sub-index; empty without an AQI.
        pub dominant: String,
        pub pm25: Option<u32>,
        pub pm10: Option<u32>,
        pub o3_1h: Option<u32>,
        pub o3_8h: Option<u32>,
        pub no2: Option<u32>,
        pub so2: Option<u32>,
        pub co: Option<u32>,
        /// Hourly only: the NowCast concentrations (µg/m³) the PM sub-indices come from.
        pub nowcast_pm25: Option<f64>,
        pub nowcast_pm10: Option<f64>,
        /// Daily only: the hours the PM means are over.
        pub valid_hours: Option<u32>,
        /// `reference` or `indicative` (never mixed into an official figure).
        pub grade: String,
        /// Pollutants whose hour (for `1h`) had too little capture to count, comma-separated.
        pub low_capture: String,
        pub version: u64,
    }
}

record! {
    /// A PM2.5 forecast of one air-quality station for one hour ahead of one origin hour
    /// (`ioc_regulation::forecast`, the code `ioc forecast` runs), made when the station's
    /// origin hour is stored and made again, with a higher version, when that hour is revised.
    /// Also the `forecast` topic's record.
    pub struct ForecastRow in "forecasts", key(device_id: String, origin: i64, horizon_h: u32),
        time(origin) {
        pub device_id: String,
        /// The end of the last observed hour the forecast uses (epoch ms).
        pub origin: i64,
        /// The end of the forecast hour: `origin` + `horizon_h` hours.
        pub target: i64,
        pub horizon_h: u32,
        /// µg/m³, one decimal; the band is the 10th to 90th percentile of the fit's errors.
        pub pm25: f64,
        pub pm25_low: f64,
        pub pm25_high: f64,
        /// The forecast hour's VN_AQI: the PM2.5 sub-index of the NowCast over the observed
        /// and forecast hours.
        pub aqi: Option<u32>,
        /// The mean PM2.5 of the target's local day over its observed hours and the forecast
        /// ones up to the target, when those are at least `stream.min_day_hours_qcvn`; and the
        /// QCVN 05 24-hour limit it is held to that day.
        pub day_pm25: Option<f64>,
        pub day_pm25_limit: Option<f64>,
        /// `reference` or `indicative`, as the station's AQI.
        pub grade: String,
        pub version: u64,
    }
}

record! {
    /// A traffic counter's road segment over 5 minutes (`5m`) or an hour (`1h`): flow,
    /// count-weighted speed, occupancy and congestion level, derived from its stored 1-minute
    /// windows (lanes are channels) and derived again, with a higher version, when one of them
    /// is. Also the `traffic` topic's record (as [`TrafficRecord::Flow`]).
    pub struct TrafficRow in "traffic", key(device_id: String, resolution: String, window_start: i64),
        time(window_start) {
        pub device_id: String,
        /// `5m` or `1h`.
        pub resolution: String,
        pub window_start: i64,
        pub window_end: i64,
        /// The segment's name in the registry when the window was derived (empty: none).
        pub road_segment: String,
        /// Lanes with a reading in the window.
        pub lanes: u32,
        /// Vehicles counted, all lanes.
        pub vehicles: u64,
        /// Vehicles per hour, all lanes: each lane's count over the time its counts cover.
        pub flow_vph: Option<f64>,
        /// km/h, one decimal: each lane-minute's mean speed weighted by its count.
        pub speed_kmh: Option<f64>,
        /// %, one decimal: the mean of the lanes' minute occupancies.
        pub occupancy_pct: Option<f64>,
        /// As registered when the window was derived.
        pub free_flow_speed_kmh: Option<f64>,
        /// The share of the lanes' expected counts that arrived.
        pub capture: Option<f64>,
        /// `free`, `moderate`, `heavy` or `jammed` (`stream.congestion`); empty without a
        /// speed or an occupancy to judge.
        pub level: String,
        pub version: u64,
    }
}

record! {
    /// A traffic camera's violations of one type in one hour, counted from the stored camera
    /// events (one per event id), each time an event of that hour is stored. No pseudonym:
    /// counts only. Also the `traffic` topic's record (as [`TrafficRecord::Violations`]).
    pub struct ViolationRow in "violations", key(device_id: String, window_start: i64, violation: String),
        time(window_start) {
        pub device_id: String,
        pub window_start: i64,
        pub window_end: i64,
        /// One of `CAMERA_EVENT_TYPES` (`red_light`, `no_helmet`, ...).
        pub violation: String,
        pub count: u64,
        pub version: u64,
    }
}

/// A record of the `traffic` topic: a counter's window or a camera's hourly count of one
/// violation type, told apart by `"record": "flow"` or `"violations"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum TrafficRecord {
    Flow(TrafficRow),
    Violations(ViolationRow),
}

impl TrafficRecord {
    pub fn device_id(&self) -> &str {
        match self {
            TrafficRecord::Flow(f) => &f.device_id,
            TrafficRecord::Violations(v) => &v.device_id,
        }
    }
}

record! {
    /// A regulatory limit exceeded by a station's mean over the limit's averaging period (QCVN
    /// 05:2023 ambient: 1 h, 8 h running, 24 h; QCVN 40 wastewater: 1 h of the discharge
    /// channel), derived from the stored hourly windows and re-derived when one of them is. A
    /// revision that brings the mean within the limit re-emits it as `withdrawn`. Also the
    /// `exceedances` topic's record.
    pub struct ExceedanceRow in "exceedances",
        key(device_id: String, channel: String, metric: String, regulation: String,
            period: String, window_start: i64),
        time(window_start) {
        pub device_id: String,
        pub channel: String,
        pub metric: String,
        /// e.g. `QCVN 05:2023/BTNMT`.
        pub regulation: String,
        /// `1h`, `8h` or `24h`.
        pub period: String,
        pub window_start: i64,
        pub window_end: i64,
        /// The measured mean over the period.
        pub value: f64,
        pub unit: String,
        /// The legal band's low edge (pH); none for a maximum.
        pub limit_low: Option<f64>,
        /// The legal maximum (C × Kq × Kf where it applies), or the band's high edge.
        pub limit_high: Option<f64>,
        /// value ÷ limit; for a band, the distance outside it (0 inside it).
        pub multiple: f64,
        /// The valid hours the mean is over (1, 8, or the day's).
        pub valid_hours: u32,
        /// `reference` or `indicative`.
        pub grade: String,
        /// `exceeded`, or `withdrawn` once a revision brought the mean within the limit (its
        /// value then kept up to date) or left it uncountable (its value as last judged).
        pub status: String,
        pub version: u64,
    }
}

record! {
    /// The latest state of each alert. Columns keep their names from before the lifecycle:
    /// `status` holds the state, `raised_at` when it fired, `cleared_at` when it resolved.
    pub struct AlertRow in "alerts", key(alert_id: String), time(raised_at) {
        pub alert_id: String,
        pub rule: String,
        pub device_id: String,
        pub channel: String,
        pub metric: String,
        pub status: String,
        pub raised_at: i64,
        pub cleared_at: Option<i64>,
        pub value: f64,
        pub peak: f64,
        pub limit_value: f64,
        pub unit: String,
        pub message: String,
        pub version: u64,
        pub category: String [added ""],
        pub severity: String [added ""],
        pub instance: String [added "DEFAULT concat(device_id, '/', channel)"],
        /// The labels as a JSON object.
        pub labels: String [added ""],
        pub started_at: i64 [added "DEFAULT raised_at"],
        pub resolve_reason: String [added ""],
        /// The acknowledgement and the manual resolution as JSON `Action`s (empty: none).
        pub acknowledged: String [added ""],
        pub resolved_by: String [added ""],
        pub backfill: u32 [added ""],
        pub muted: u32 [added ""],
    }
    impl {
        fn upgraded(mut self) -> Self {
            if self.instance.is_empty() {
                self.instance = format!("{}/{}", self.device_id, self.channel);
            }
            if self.started_at == 0 {
                self.started_at = self.raised_at;
            }
            self
        }
    }
}

impl From<&Alert> for AlertRow {
    fn from(a: &Alert) -> Self {
        let json = |a: &Option<ioc_contract::Action>| {
            a.as_ref()
                .and_then(|a| serde_json::to_string(a).ok())
                .unwrap_or_default()
        };
        AlertRow {
            alert_id: a.alert_id.clone(),
            rule: a.rule.clone(),
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            status: a.state.as_str().to_string(),
            raised_at: a.fired_at,
            cleared_at: a.resolved_at,
            value: a.value,
            peak: a.peak,
            limit_value: a.limit.unwrap_or(f64::NAN),
            unit: a.unit.clone(),
            message: a.message.clone(),
            version: a.version,
            category: a.category.clone(),
            severity: a.severity.clone(),
            instance: a.instance.clone(),
            labels: if a.labels.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&a.labels).unwrap_or_default()
            },
            started_at: a.started_at,
            resolve_reason: a
                .resolve_reason
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            acknowledged: json(&a.acknowledged),
            resolved_by: json(&a.resolved_by),
            backfill: u32::from(a.backfill),
            muted: u32::from(a.muted),
        }
    }
}

impl From<AlertRow> for Alert {
    fn from(r: AlertRow) -> Self {
        let action = |s: &str| serde_json::from_str(s).ok();
        let state = AlertState::parse(&r.status).unwrap_or(AlertState::Firing);
        Alert {
            alert_id: r.alert_id,
            rule: r.rule,
            category: r.category,
            severity: r.severity,
            device_id: r.device_id,
            channel: r.channel,
            metric: r.metric,
            instance: r.instance,
            labels: serde_json::from_str(&r.labels).unwrap_or_default(),
            state,
            started_at: r.started_at,
            fired_at: r.raised_at,
            resolved_at: r.cleared_at,
            // Alerts cleared before the lifecycle cleared by their condition.
            resolve_reason: ResolveReason::parse(&r.resolve_reason)
                .or((state == AlertState::Resolved).then_some(ResolveReason::Cleared)),
            acknowledged: action(&r.acknowledged),
            resolved_by: action(&r.resolved_by),
            value: r.value,
            peak: r.peak,
            limit: Some(r.limit_value).filter(|l| !l.is_nan()),
            unit: r.unit,
            message: r.message,
            backfill: r.backfill != 0,
            muted: r.muted != 0,
            version: r.version,
        }
    }
}

record! {
    /// Every transition of every alert, with the alert as it left it (JSON).
    pub struct TransitionRow in "alert_transitions", key(alert_id: String, kind: String), time(at) {
        pub alert_id: String,
        pub kind: String,
        pub at: i64,
        pub device_id: String,
        pub rule: String,
        pub request_id: String,
        pub silent: u32,
        pub alert: String,
        pub version: u64,
    }
}

record! {
    /// One notification of one alert event to one recipient, and every attempt to deliver it
    /// (`ioc notify`). `event` is `fired`, `resolved`, `renotify-N` or `escalated`.
    pub struct DeliveryRow in "deliveries", key(alert_id: String, event: String, recipient: String), time(created_at) {
        pub alert_id: String,
        pub event: String,
        pub recipient: String,
        pub device_id: String,
        pub rule: String,
        /// `webhook` or `email`.
        pub channel: String,
        /// `pending`, `sent`, or `expired` (given up after `notify.max_age`).
        pub status: String,
        pub created_at: i64,
        /// When the next attempt is due.
        pub next_at: i64,
        pub attempts: u32,
        pub sent_at: Option<i64>,
        pub last_error: String,
        /// Every attempt, as a JSON array of `{"at", "ok", "error", "digest"}`.
        pub attempt_log: String,
        /// What is sent (JSON).
        pub notification: String,
        pub version: u64,
    }
}

impl From<&AlertTransition> for TransitionRow {
    fn from(t: &AlertTransition) -> Self {
        TransitionRow {
            alert_id: t.alert_id.clone(),
            kind: t.kind.as_str().to_string(),
            at: t.at,
            device_id: t.alert.device_id.clone(),
            rule: t.alert.rule.clone(),
            request_id: t.request_id.clone().unwrap_or_default(),
            silent: u32::from(t.silent),
            alert: serde_json::to_string(&t.alert).unwrap_or_default(),
            version: t.alert.version,
        }
    }
}

impl TransitionRow {
    pub fn transition(&self) -> Option<AlertTransition> {
        Some(AlertTransition {
            alert_id: self.alert_id.clone(),
            kind: TransitionKind::parse(&self.kind)?,
            at: self.at,
            request_id: Some(self.request_id.clone()).filter(|r| !r.is_empty()),
            silent: self.silent != 0,
            alert: serde_json::from_str(&self.alert).ok()?,
        })
    }
}

record! {
    /// A discrete event (camera violations), keyed by `event_id`. No personal data in clear.
    pub struct EventRow in "events", key(event_id: String), time(ts) {
        pub event_id: String,
        pub device_id: String,
        pub ts: i64,
        pub kind: String,
        /// The event's attributes as a JSON object.
        pub attributes: String,
        pub received_at: i64,
        pub message_id: String,
        pub version: u64,
    }
    impl {
        const NEWEST_FIRST: bool = true;
    }
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> Self {
        EventRow {
            event_id: e.event_id.clone(),
            device_id: e.device_id.clone(),
            ts: e.ts,
            kind: e.kind.clone(),
            attributes: serde_json::Value::Object(e.attributes.clone()).to_string(),
            received_at: e.received_at,
            message_id: e.message_id.clone(),
            // A resent event (same id) replaces the earlier copy: one row per event.
            version: e.received_at.max(0) as u64,
        }
    }
}

record! {
    /// A camera event's personal data (plates, image references): the evidence table, apart
    /// from everything else; nothing else reads or joins it. Only the API's audited,
    /// enforcement-only route reads it.
    pub struct EvidenceRow in "evidence", key(event_id: String), time(ts) {
        pub event_id: String,
        pub device_id: String,
        pub camera_id: String,
        pub ts: i64,
        pub kind: String,
        pub plate: String,
        pub plate_pseudonym: String,
        pub image_ref: String,
        pub received_at: i64,
        pub message_id: String,
        pub version: u64,
    }
    impl {
        const NEWEST_FIRST: bool = true;
    }
}

impl From<&Evidence> for EvidenceRow {
    fn from(e: &Evidence) -> Self {
        EvidenceRow {
            event_id: e.event_id.clone(),
            device_id: e.device_id.clone(),
            camera_id: e.camera_id.clone(),
            ts: e.ts,
            kind: e.kind.clone(),
            plate: e.plate.clone(),
            plate_pseudonym: e.plate_pseudonym.clone(),
            image_ref: e.image_ref.clone(),
            received_at: e.received_at,
            message_id: e.message_id.clone(),
            version: e.received_at.max(0) as u64,
        }
    }
}

record! {
    /// A rejected camera message, kept beside the evidence (its bytes may hold a plate). One row per
    /// message id: a camera message is rejected whole.
    pub struct QuarantineRow in "camera_quarantine", key(message_id: String), time(received_at) {
        pub message_id: String,
        pub code: String,
        pub reason: String,
        pub topic: String,
        pub device_id: String,
        pub received_at: i64,
        pub raw_base64: String,
        pub version: u64,
    }
}

impl From<&DeadLetter> for QuarantineRow {
    fn from(d: &DeadLetter) -> Self {
        QuarantineRow {
            message_id: d.message_id.clone(),
            code: d.code.as_str().to_string(),
            reason: d.reason.clone(),
            topic: d.topic.clone(),
            device_id: d.device_id.clone().unwrap_or_default(),
            received_at: d.received_at,
            raw_base64: d.raw_base64.clone(),
            version: d.received_at.max(0) as u64,
        }
    }
}

record! {
    /// What one series (device, channel, metric) sent in one minute, by measurement time, and
    /// how it fared: the counts the quality scores are made from (`ioc_contract::quality`).
    /// Computed by the stream from the stored raw readings when the minute's windows close, and
    /// again, with a higher version, when a late reading lands in it or in the minutes its
    /// judgements look back over. Also the `quality` topic's record.
    pub struct QualityRow in "quality", key(device_id: String, channel: String, metric: String, window_start: i64),
        time(window_start) {
        pub device_id: String,
        pub channel: String,
        pub metric: String,
        pub window_start: i64,
        pub window_end: i64,
        /// Readings received, each key once, of any quality.
        pub received: u32,
        pub good: u32,
        pub suspect: u32,
        pub bad: u32,
        /// Good readings that were the `stream.stuck_after`-th or later of a run of one value.
        pub stuck: u32,
        /// Good readings judged spikes against the readings before them.
        pub spikes: u32,
        /// Readings the device sent again in another message (each copy after the first).
        pub resent: u32,
        /// Readings received within `quality::TIMELY_MS` of their measurement.
        pub timely: u32,
        /// The delay from measurement to receipt, as counts per `quality::DELAY_BUCKETS_MS`
        /// bucket, comma-separated.
        pub delays: String,
        /// The first and last measurement times in the minute (silences are the gaps between).
        pub first_ts: i64,
        pub last_ts: i64,
        pub version: u64,
    }
}

record! {
    /// A message a reading's key came in, for keys that came in more than one: the device sent
    /// the reading again (a broker's redelivery of the same message is one message). A key's
    /// resends are its rows less one. Found by the stream and stored before the readings of its
    /// batch, so a replay that finds its own copy stored finds these too; the quality counts
    /// read them back.
    pub struct CopyRow in "reading_copies", key(device_id: String, channel: String, metric: String, ts: i64, message: u64),
        time(ts) {
        pub device_id: String,
        pub channel: String,
        pub metric: String,
        pub ts: i64,
        /// The message id's hash (`ioc_stream::windows::message_hash`).
        pub message: u64,
        pub version: u64,
    }
}

impl CopyRow {
    /// The row of `r`'s key in the message hashed to `message`.
    pub fn of(r: &Reading, message: u64) -> CopyRow {
        CopyRow {
            device_id: r.device_id.clone(),
            channel: r.channel.clone(),
            metric: r.metric.clone(),
            ts: r.ts,
            message,
            version: 0,
        }
    }
}

record! {
    /// A rejection of a device's message or value (the dead-letter topic, without the bytes,
    /// which stay on the topic for replay): what the quality scores count as rejected and
    /// rate-limited. One row per message id, code and metric.
    pub struct DeadLetterRow in "deadletters", key(message_id: String, code: String, metric: String),
        time(received_at) {
        pub message_id: String,
        pub code: String,
        /// Empty where the message was rejected whole.
        pub metric: String,
        /// Empty where no device was named.
        pub device_id: String,
        pub reason: String,
        pub topic: String,
        pub received_at: i64,
        pub version: u64,
    }
}

impl From<&DeadLetter> for DeadLetterRow {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterRow {
            message_id: d.message_id.clone(),
            code: d.code.as_str().to_string(),
            metric: d.metric.clone().unwrap_or_default(),
            device_id: d.device_id.clone().unwrap_or_default(),
            reason: d.reason.clone(),
            topic: d.topic.clone(),
            received_at: d.received_at,
            version: d.received_at.max(0) as u64,
        }
    }
}

record! {
    /// The stream's checkpoint of window state: per device, every window ending at or before
    /// `closed_until` has been closed and emitted. Tiny; read with max().
    pub struct WatermarkRow in "stream_watermarks", key(device_id: String) {
        pub device_id: String,
        pub closed_until: i64,
        pub version: u64,
    }
}

record! {
    /// The stream's consumed position: per partition, everything below `next_offset` is stored
    /// and, where it belongs to a window, that window is emitted. Written after the watermarks.
    pub struct OffsetRow in "stream_offsets", key(group_id: String, topic: String, partition: i32) {
        pub group_id: String,
        pub topic: String,
        pub partition: i32,
        pub next_offset: i64,
        pub version: u64,
        /// State the consumer needs as of `next_offset` to replay from it exactly (the stream's
        /// fleet-wide rate limit: `ioc_stream::limit`); empty for consumers that keep none.
        /// Written in the same row as the offset so the two cannot disagree.
        #[serde(default)]
        pub limiter: String [added ""],
    }
}

/// A consumer's checkpointed position in one partition, with the state it needs from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub next_offset: i64,
    pub limiter: String,
}

/// One good reading's value, as the stream needs it to recompute a window.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct GoodValueRow {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub ts: i64,
    pub value: f64,
    pub unit: String,
}

/// Filter of a history query. Times are epoch milliseconds, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub device_id: Option<String>,
    pub metric: Option<String>,
    pub from: i64,
    pub to: i64,
    pub limit: usize,
    /// Which resolution, for tables that have one (aggregates, AQI).
    pub resolution: Resolution,
    /// Which regulation, for tables that have one (exceedances).
    pub regulation: Option<String>,
    /// Further text columns, each with the values a row may have (any of them), for tables
    /// that have the column. The column names are the caller's constants, never input.
    pub any_of: Vec<(&'static str, Vec<String>)>,
}

/// The history store of a deployment.
#[derive(Clone)]
pub enum History {
    ClickHouse(ClickHouseHistory),
    Embedded(EmbeddedHistory),
}

impl History {
    /// Creates the schema if it does not exist.
    pub async fn ensure_schema(&self) -> Result<(), HistoryError> {
        match self {
            History::ClickHouse(h) => h.ensure_schema().await,
            History::Embedded(_) => Ok(()),
        }
    }

    /// Writes rows of one table (a repeated write of a key is harmless: the highest version
    /// wins).
    pub async fn insert<R: Record>(&self, rows: &[R]) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert(rows).await,
            History::Embedded(h) => Ok(h.insert(rows.iter().cloned())),
        }
    }

    /// Rows of one table whose time is in the filter's range (and part: an aggregate's
    /// resolution), narrowed by device and metric where the table has those columns,
    /// deduplicated, in time order (newest first for events and evidence), at most
    /// `limit`.
    pub async fn query<R: Record>(&self, f: &HistoryFilter) -> Result<Vec<R>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.query(f).await,
            History::Embedded(h) => Ok(h.query(f).await?),
        }
    }

    pub async fn insert_watermarks(&self, rows: Vec<WatermarkRow>) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert(&rows).await,
            History::Embedded(h) => Ok(h.insert_watermarks(rows)),
        }
    }

    pub async fn insert_offsets(&self, rows: Vec<OffsetRow>) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert(&rows).await,
            History::Embedded(h) => Ok(h.insert_offsets(rows)),
        }
    }

    /// Per partition, the checkpointed position of `group_id` on `topic` (the highest offset
    /// written, with the state written beside it).
    pub async fn offsets(
        &self,
        group_id: &str,
        topic: &str,
    ) -> Result<Vec<Position>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.offsets(group_id, topic).await,
            History::Embedded(h) => Ok(h.offsets(group_id, topic)),
        }
    }

    /// Per device, the end of the last window the stream closed.
    pub async fn closed_until(&self) -> Result<Vec<(String, i64)>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.closed_until().await,
            History::Embedded(h) => Ok(h.closed_until()),
        }
    }

    /// The latest alert of every rule instance: the state a restarted stream resumes.
    pub async fn latest_alerts(&self) -> Result<Vec<Alert>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.latest_alerts().await,
            History::Embedded(h) => Ok(h.latest_alerts().await?),
        }
    }

    /// Good readings of one device in `[from, to)`, deduplicated.
    pub async fn good_values(
        &self,
        device_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<GoodValueRow>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.good_values(device_id, from, to).await,
            History::Embedded(h) => Ok(h.good_values(device_id, from, to).await?),
        }
    }

    /// The stored windows of `resolution` of the given devices starting in `[from, to)`,
    /// deduplicated: what a coarser window is derived from. Only those of `metrics`, unless it
    /// is empty.
    pub async fn windows(
        &self,
        resolution: Resolution,
        devices: &[String],
        metrics: &[&str],
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregate>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.windows(resolution, devices, metrics, from, to).await,
            History::Embedded(h) => Ok(h.windows(resolution, devices, metrics, from, to).await?),
        }
    }

    /// Makes every write so far durable (the embedded store's commit; ClickHouse writes are
    /// durable when they return).
    pub async fn flush(&self) -> Result<(), HistoryError> {
        match self {
            History::ClickHouse(_) => Ok(()),
            History::Embedded(h) => Ok(h.flush().await?),
        }
    }
}
