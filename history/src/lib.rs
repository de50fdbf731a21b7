//! History in ClickHouse: the schema, the row types, idempotent writes and the queries the
//! stream and API stages run.
//!
//! ClickHouse 18.16 (Debian's) cannot deduplicate inserts on one node, so every table is a
//! `ReplacingMergeTree` keyed by its record's unique key with a version column: a repeated
//! write of the same key is harmless, and queries read with `FINAL` where a not-yet-merged
//! duplicate would show. Tables are partitioned by event time because `FINAL` only merges within
//! a partition. The SQL here runs on 18.16 and on current ClickHouse: no DateTime64 (times are
//! Int64 epoch milliseconds), no TTL, no LowCardinality.

use clickhouse::{Client, Row};
use ioc_config::ClickHouseConfig;
use ioc_contract::{Aggregate, Alert, AlertStatus, Quality, Reading};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// Statements that create the schema, in order; `{db}` is the database name.
const SCHEMA: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS {db}",
    "CREATE TABLE IF NOT EXISTS {db}.readings (
        device_id String, channel String, metric String, ts Int64, value Float64, unit String,
        interval_s Nullable(Float64), quality String, quality_reason String,
        received_at Int64, message_id String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000)))
    ORDER BY (device_id, channel, metric, ts)",
    "CREATE TABLE IF NOT EXISTS {db}.aggregates (
        device_id String, channel String, metric String, window_start Int64, window_end Int64,
        value_count UInt64, value_min Float64, value_max Float64, value_mean Float64,
        unit String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(window_start, 1000)))
    ORDER BY (device_id, channel, metric, window_start)",
    "CREATE TABLE IF NOT EXISTS {db}.alerts (
        alert_id String, rule String, device_id String, channel String, metric String,
        status String, raised_at Int64, cleared_at Nullable(Int64), value Float64, peak Float64,
        limit_value Float64, unit String, message String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(raised_at, 1000)))
    ORDER BY alert_id",
    "CREATE TABLE IF NOT EXISTS {db}.events (
        event_id String, device_id String, ts Int64, kind String, attributes String,
        received_at Int64, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000)))
    ORDER BY event_id",
    // The stream's consumed position: per partition, everything below next_offset is stored
    // and, where it belongs to a window, that window is emitted. Written after the watermarks.
    "CREATE TABLE IF NOT EXISTS {db}.stream_offsets (
        group_id String, topic String, partition Int32, next_offset Int64, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (group_id, topic, partition)",
    // The stream's checkpoint of window state: per device, every window ending at or before
    // closed_until has been closed and emitted. Tiny; read with max().
    "CREATE TABLE IF NOT EXISTS {db}.stream_watermarks (
        device_id String, closed_until Int64, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY device_id",
];

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

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AggregateRow {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub window_start: i64,
    pub window_end: i64,
    pub value_count: u64,
    pub value_min: f64,
    pub value_max: f64,
    pub value_mean: f64,
    pub unit: String,
    pub version: u64,
}

impl From<&Aggregate> for AggregateRow {
    fn from(a: &Aggregate) -> Self {
        AggregateRow {
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            window_start: a.window_start,
            window_end: a.window_end,
            value_count: a.count,
            value_min: a.min,
            value_max: a.max,
            value_mean: a.mean,
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
            window_start: r.window_start,
            window_end: r.window_end,
            count: r.value_count,
            min: r.value_min,
            max: r.value_max,
            mean: r.value_mean,
            unit: r.unit,
            version: r.version,
        }
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
}

/// A ClickHouse history store.
#[derive(Clone)]
pub struct History {
    client: Client,
    config: ClickHouseConfig,
}

impl History {
    pub fn new(config: &ClickHouseConfig) -> History {
        History {
            client: make_client(config).with_database(&config.database),
            config: config.clone(),
        }
    }

    /// Creates the database and tables if they do not exist.
    pub async fn ensure_schema(&self) -> Result<(), HistoryError> {
        let root = make_client(&self.config);
        for statement in SCHEMA {
            root.query(&statement.replace("{db}", &self.config.database))
                .execute()
                .await?;
        }
        Ok(())
    }

    async fn insert_rows<T>(
        &self,
        table: &str,
        rows: impl Iterator<Item = T>,
    ) -> Result<usize, HistoryError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let mut insert = self.client.insert::<T>(table).await?;
        let mut n = 0;
        for row in rows {
            insert.write(&row).await?;
            n += 1;
        }
        if n == 0 {
            // Ending an empty insert would send an empty INSERT; dropping it aborts nothing.
            return Ok(0);
        }
        insert.end().await?;
        Ok(n)
    }

    pub async fn insert_readings<'a>(
        &self,
        readings: impl Iterator<Item = &'a Reading>,
    ) -> Result<usize, HistoryError> {
        self.insert_rows("readings", readings.map(ReadingRow::from))
            .await
    }

    pub async fn insert_aggregates(&self, aggregates: &[Aggregate]) -> Result<usize, HistoryError> {
        self.insert_rows("aggregates", aggregates.iter().map(AggregateRow::from))
            .await
    }

    pub async fn insert_alerts(&self, alerts: &[Alert]) -> Result<usize, HistoryError> {
        self.insert_rows("alerts", alerts.iter().map(AlertRow::from))
            .await
    }

    pub async fn insert_watermarks(&self, rows: Vec<WatermarkRow>) -> Result<usize, HistoryError> {
        self.insert_rows("stream_watermarks", rows.into_iter())
            .await
    }

    pub async fn insert_offsets(&self, rows: Vec<OffsetRow>) -> Result<usize, HistoryError> {
        self.insert_rows("stream_offsets", rows.into_iter()).await
    }

    /// Per partition, the checkpointed next offset of `group_id` on `topic`.
    pub async fn offsets(
        &self,
        group_id: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, HistoryError> {
        #[derive(Row, Deserialize)]
        struct R {
            partition: i32,
            next_offset: i64,
        }
        let rows = self
            .client
            .query(
                "SELECT partition, max(next_offset) AS next_offset FROM stream_offsets \
                 WHERE group_id = ? AND topic = ? GROUP BY partition",
            )
            .bind(group_id)
            .bind(topic)
            .fetch_all::<R>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.partition, r.next_offset))
            .collect())
    }

    /// Per device, the end of the last window the stream closed.
    pub async fn closed_until(&self) -> Result<Vec<(String, i64)>, HistoryError> {
        #[derive(Row, Deserialize)]
        struct R {
            device_id: String,
            closed_until: i64,
        }
        let rows = self
            .client
            .query("SELECT device_id, max(closed_until) AS closed_until FROM stream_watermarks GROUP BY device_id")
            .fetch_all::<R>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.device_id, r.closed_until))
            .collect())
    }

    /// The latest alert of every (rule, device, channel): the state a restarted stream resumes.
    pub async fn latest_alerts(&self) -> Result<Vec<Alert>, HistoryError> {
        let rows = self
            .client
            .query(
                "SELECT ?fields FROM alerts FINAL WHERE (rule, device_id, channel, raised_at) IN \
                 (SELECT rule, device_id, channel, max(raised_at) FROM alerts GROUP BY rule, device_id, channel)",
            )
            .fetch_all::<AlertRow>()
            .await?;
        Ok(rows.into_iter().map(Alert::from).collect())
    }

    /// Good readings of one device in `[from, to)`, deduplicated.
    pub async fn good_values(
        &self,
        device_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<GoodValueRow>, HistoryError> {
        Ok(self
            .client
            .query(
                "SELECT device_id, channel, metric, ts, value, unit FROM readings FINAL \
                 WHERE device_id = ? AND ts >= ? AND ts < ? AND quality = 'good'",
            )
            .bind(device_id)
            .bind(from)
            .bind(to)
            .fetch_all::<GoodValueRow>()
            .await?)
    }

    pub async fn readings(&self, f: &HistoryFilter) -> Result<Vec<ReadingRow>, HistoryError> {
        self.filtered("readings", "ts", "ts, device_id, channel, metric", f)
            .await
    }

    pub async fn aggregates(&self, f: &HistoryFilter) -> Result<Vec<Aggregate>, HistoryError> {
        let rows: Vec<AggregateRow> = self
            .filtered(
                "aggregates",
                "window_start",
                "window_start, device_id, channel, metric",
                f,
            )
            .await?;
        Ok(rows.into_iter().map(Aggregate::from).collect())
    }

    pub async fn alerts(&self, f: &HistoryFilter) -> Result<Vec<Alert>, HistoryError> {
        let rows: Vec<AlertRow> = self
            .filtered("alerts", "raised_at", "raised_at, alert_id", f)
            .await?;
        Ok(rows.into_iter().map(Alert::from).collect())
    }

    /// Rows of `table` (deduplicated with FINAL) whose `time_column` is in the filter's range,
    /// narrowed by device and metric when given. Table and column names are ours, never input.
    async fn filtered<T>(
        &self,
        table: &str,
        time_column: &str,
        order_by: &str,
        f: &HistoryFilter,
    ) -> Result<Vec<T>, HistoryError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let (clause, binds) = where_clause(f, time_column);
        let sql =
            format!("SELECT ?fields FROM {table} FINAL WHERE {clause} ORDER BY {order_by} LIMIT ?");
        Ok(bind_all(self.client.query(&sql), &binds)
            .bind(f.limit as u64)
            .fetch_all::<T>()
            .await?)
    }
}

enum BindValue {
    Str(String),
    Int(i64),
}

fn where_clause(f: &HistoryFilter, time_column: &str) -> (String, Vec<BindValue>) {
    let mut parts = vec![format!("{time_column} >= ?"), format!("{time_column} < ?")];
    let mut binds = vec![BindValue::Int(f.from), BindValue::Int(f.to)];
    if let Some(d) = &f.device_id {
        parts.push("device_id = ?".into());
        binds.push(BindValue::Str(d.clone()));
    }
    if let Some(m) = &f.metric {
        parts.push("metric = ?".into());
        binds.push(BindValue::Str(m.clone()));
    }
    (parts.join(" AND "), binds)
}

fn bind_all(mut q: clickhouse::query::Query, binds: &[BindValue]) -> clickhouse::query::Query {
    for b in binds {
        q = match b {
            BindValue::Str(s) => q.bind(s.as_str()),
            BindValue::Int(i) => q.bind(*i),
        };
    }
    q
}

fn make_client(config: &ClickHouseConfig) -> Client {
    // Validation needs RowBinaryWithNamesAndTypes and LZ4 answers come back empty on 18.16.
    Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(&config.password)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
}
