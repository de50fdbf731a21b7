//! History: the row types, idempotent writes and the queries the stream and API stages run,
//! over one of two stores:
//!
//! - [`clickhouse_store::ClickHouseHistory`]: ClickHouse, for the distributed deployment.
//! - [`embedded::EmbeddedHistory`]: Parquet files under a directory, for `ioc up`.
//!
//! Both keep one row per record key, the highest `version` winning (ClickHouse's
//! `ReplacingMergeTree`, and the same rule applied on read in the embedded store), so a repeated
//! write is harmless. Times are Int64 epoch milliseconds.

pub mod clickhouse_store;
pub mod embedded;

use clickhouse::Row;
use ioc_contract::{
    Aggregate, Alert, AlertStatus, DeadLetter, Event, Evidence, Quality, Reading, Resolution,
};
use serde::{Deserialize, Serialize};

pub use crate::clickhouse_store::ClickHouseHistory;
pub use crate::embedded::EmbeddedHistory;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("embedded history: {0}")]
    Embedded(#[from] embedded::StoreError),
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ReadingRow {
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

/// A window aggregate. Each resolution has its own ClickHouse table (`aggregates` for 1 minute,
/// as before resolutions existed; `aggregates_5m`, `_1h`, `_1d`), so the resolution is the
/// table's, not a column there; the embedded store keeps it as a column.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AggregateRow {
    #[serde(skip)]
    pub resolution: Resolution,
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub window_start: i64,
    pub window_end: i64,
    pub value_count: u64,
    pub value_sum: f64,
    pub value_min: f64,
    pub value_max: f64,
    pub value_mean: f64,
    pub capture: Option<f64>,
    pub unit: String,
    pub version: u64,
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

/// The ClickHouse table of one resolution's aggregates.
pub fn aggregates_table(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "aggregates",
        Resolution::FiveMinutes => "aggregates_5m",
        Resolution::Hour => "aggregates_1h",
        Resolution::Day => "aggregates_1d",
    }
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AlertRow {
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
}

impl From<&Alert> for AlertRow {
    fn from(a: &Alert) -> Self {
        AlertRow {
            alert_id: a.alert_id.clone(),
            rule: a.rule.clone(),
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            status: a.status.as_str().to_string(),
            raised_at: a.raised_at,
            cleared_at: a.cleared_at,
            value: a.value,
            peak: a.peak,
            limit_value: a.limit,
            unit: a.unit.clone(),
            message: a.message.clone(),
            version: a.version,
        }
    }
}

impl From<AlertRow> for Alert {
    fn from(r: AlertRow) -> Self {
        Alert {
            alert_id: r.alert_id,
            rule: r.rule,
            device_id: r.device_id,
            channel: r.channel,
            metric: r.metric,
            status: AlertStatus::parse(&r.status).unwrap_or(AlertStatus::Active),
            raised_at: r.raised_at,
            cleared_at: r.cleared_at,
            value: r.value,
            peak: r.peak,
            limit: r.limit_value,
            unit: r.unit,
            message: r.message,
            version: r.version,
        }
    }
}

/// A discrete event (camera violations), keyed by `event_id`. No personal data in clear.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct EventRow {
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

/// A camera event's personal data: the evidence table, apart from everything else.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct EvidenceRow {
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

/// A rejected camera message, kept beside the evidence (its bytes may hold a plate). One row per
/// message id: a camera message is rejected whole.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct QuarantineRow {
    pub message_id: String,
    pub code: String,
    pub reason: String,
    pub topic: String,
    pub device_id: String,
    pub received_at: i64,
    pub raw_base64: String,
    pub version: u64,
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

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct WatermarkRow {
    pub device_id: String,
    pub closed_until: i64,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct OffsetRow {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub version: u64,
    /// State the consumer needs as of `next_offset` to replay from it exactly (the stream's
    /// fleet-wide rate limit: `ioc_stream::limit`); empty for consumers that keep none. Last,
    /// as on tables made before it was added.
    #[serde(default)]
    pub limiter: String,
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
    /// Which aggregates table (only aggregate queries read it).
    pub resolution: Resolution,
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

    pub async fn insert_readings<'a>(
        &self,
        readings: impl Iterator<Item = &'a Reading>,
    ) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert_readings(readings).await,
            History::Embedded(h) => Ok(h.insert_readings(readings.map(ReadingRow::from))),
        }
    }

    pub async fn insert_aggregates(&self, aggregates: &[Aggregate]) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert_aggregates(aggregates).await,
            History::Embedded(h) => {
                Ok(h.insert_aggregates(aggregates.iter().map(AggregateRow::from)))
            }
        }
    }

    pub async fn insert_alerts(&self, alerts: &[Alert]) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert_alerts(alerts).await,
            History::Embedded(h) => Ok(h.insert_alerts(alerts.iter().map(AlertRow::from))),
        }
    }

    pub async fn insert_events(&self, events: &[Event]) -> Result<usize, HistoryError> {
        let rows = events.iter().map(EventRow::from);
        match self {
            History::ClickHouse(h) => h.insert_rows("events", rows).await,
            History::Embedded(h) => Ok(h.insert_events(rows)),
        }
    }

    pub async fn insert_evidence(&self, evidence: &[Evidence]) -> Result<usize, HistoryError> {
        let rows = evidence.iter().map(EvidenceRow::from);
        match self {
            History::ClickHouse(h) => h.insert_rows("evidence", rows).await,
            History::Embedded(h) => Ok(h.insert_evidence(rows)),
        }
    }

    pub async fn insert_quarantine(&self, letters: &[DeadLetter]) -> Result<usize, HistoryError> {
        let rows = letters.iter().map(QuarantineRow::from);
        match self {
            History::ClickHouse(h) => h.insert_rows("camera_quarantine", rows).await,
            History::Embedded(h) => Ok(h.insert_quarantine(rows)),
        }
    }

    /// Events in the filter's time range, newest first (deduplicated by event id).
    pub async fn events(&self, f: &HistoryFilter) -> Result<Vec<EventRow>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.events(f).await,
            History::Embedded(h) => Ok(h.events(f).await?),
        }
    }

    /// Evidence (plates in the clear) in the filter's time range, newest first. Only the API's
    /// audited, enforcement-only route reads this.
    pub async fn evidence(&self, f: &HistoryFilter) -> Result<Vec<EvidenceRow>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.evidence(f).await,
            History::Embedded(h) => Ok(h.evidence(f).await?),
        }
    }

    pub async fn insert_watermarks(&self, rows: Vec<WatermarkRow>) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert_watermarks(rows).await,
            History::Embedded(h) => Ok(h.insert_watermarks(rows)),
        }
    }

    pub async fn insert_offsets(&self, rows: Vec<OffsetRow>) -> Result<usize, HistoryError> {
        match self {
            History::ClickHouse(h) => h.insert_offsets(rows).await,
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

    /// The latest alert of every (rule, device, channel): the state a restarted stream resumes.
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

    pub async fn readings(&self, f: &HistoryFilter) -> Result<Vec<ReadingRow>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.readings(f).await,
            History::Embedded(h) => Ok(h.readings(f).await?),
        }
    }

    /// Aggregates of the filter's resolution whose window starts in its range.
    pub async fn aggregates(&self, f: &HistoryFilter) -> Result<Vec<Aggregate>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.aggregates(f).await,
            History::Embedded(h) => Ok(h.aggregates(f).await?),
        }
    }

    /// The stored windows of `resolution` of the given devices starting in `[from, to)`,
    /// deduplicated: what a coarser window is derived from.
    pub async fn windows(
        &self,
        resolution: Resolution,
        devices: &[String],
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregate>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.windows(resolution, devices, from, to).await,
            History::Embedded(h) => Ok(h.windows(resolution, devices, from, to).await?),
        }
    }

    pub async fn alerts(&self, f: &HistoryFilter) -> Result<Vec<Alert>, HistoryError> {
        match self {
            History::ClickHouse(h) => h.alerts(f).await,
            History::Embedded(h) => Ok(h.alerts(f).await?),
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
