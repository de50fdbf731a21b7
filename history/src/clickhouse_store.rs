//! History in ClickHouse: the schema and the SQL.
//!
//! ClickHouse 18.16 (Debian's) cannot deduplicate inserts on one node, so every table is a
//! `ReplacingMergeTree` keyed by its record's unique key with a version column: a repeated
//! write of the same key is harmless, and queries read with `FINAL` where a not-yet-merged
//! duplicate would show. Tables are partitioned by event time because `FINAL` only merges within
//! a partition. The SQL here runs on 18.16 and on current ClickHouse: no DateTime64 (times are
//! Int64 epoch milliseconds), no TTL, no LowCardinality.

use clickhouse::{Client, Row};
use ioc_config::ClickHouseConfig;
use ioc_contract::{Aggregate, Alert, Reading, Resolution};
use serde::Deserialize;

use crate::{
    aggregates_table, AggregateRow, AlertRow, EventRow, EvidenceRow, GoodValueRow, HistoryError,
    HistoryFilter, OffsetRow, Position, ReadingRow, WatermarkRow,
};

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
    "CREATE TABLE IF NOT EXISTS {db}.alerts (
        alert_id String, rule String, device_id String, channel String, metric String,
        status String, raised_at Int64, cleared_at Nullable(Int64), value Float64, peak Float64,
        limit_value Float64, unit String, message String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(raised_at, 1000)))
    ORDER BY alert_id",
    "CREATE TABLE IF NOT EXISTS {db}.events (
        event_id String, device_id String, ts Int64, kind String, attributes String,
        received_at Int64, message_id String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000)))
    ORDER BY event_id",
    // Personal data (plates, image references) of camera events: nothing else reads or joins
    // it; who may read it, and the audit of every read, come with evidence access.
    "CREATE TABLE IF NOT EXISTS {db}.evidence (
        event_id String, device_id String, camera_id String, ts Int64, kind String,
        plate String, plate_pseudonym String, image_ref String, received_at Int64,
        message_id String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000)))
    ORDER BY event_id",
    // Rejected camera messages, kept beside the evidence (their bytes may hold plates).
    "CREATE TABLE IF NOT EXISTS {db}.camera_quarantine (
        message_id String, code String, reason String, topic String, device_id String,
        received_at Int64, raw_base64 String, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(received_at, 1000)))
    ORDER BY message_id",
    // The stream's consumed position: per partition, everything below next_offset is stored
    // and, where it belongs to a window, that window is emitted. Written after the watermarks.
    // `limiter` is the state the stream needs as of next_offset to replay it exactly (its
    // fleet-wide rate limit), written in the same row so the two cannot disagree.
    "CREATE TABLE IF NOT EXISTS {db}.stream_offsets (
        group_id String, topic String, partition Int32, next_offset Int64, version UInt64,
        limiter String
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (group_id, topic, partition)",
    // The stream's checkpoint of window state: per device, every window ending at or before
    // closed_until has been closed and emitted. Tiny; read with max().
    "CREATE TABLE IF NOT EXISTS {db}.stream_watermarks (
        device_id String, closed_until Int64, version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY device_id",
];

/// The table of each resolution's aggregates (`aggregates_table`: 1-minute windows keep the
/// name from before there were other resolutions); `{table}` is its name. `value_sum` and
/// `capture` came later (ADDED_COLUMNS), hence their place.
const AGGREGATES: &str = "CREATE TABLE IF NOT EXISTS {db}.{table} (
        device_id String, channel String, metric String, window_start Int64, window_end Int64,
        value_count UInt64, value_min Float64, value_max Float64, value_mean Float64,
        unit String, version UInt64, value_sum Float64, capture Nullable(Float64)
    ) ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(toDateTime(intDiv(window_start, 1000)))
    ORDER BY (device_id, channel, metric, window_start)";

/// Columns added to a table after its first release, `(table, column, type)`: `ensure_schema`
/// adds each where it is missing (ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`), at the
/// end, where `CREATE TABLE` above also puts it.
/// A 1-minute row from before `value_sum` was kept reads as `mean × count`.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("stream_offsets", "limiter", "String"),
    (
        "aggregates",
        "value_sum",
        "Float64 DEFAULT value_mean * value_count",
    ),
    ("aggregates", "capture", "Nullable(Float64)"),
];

/// A ClickHouse history store.
#[derive(Clone)]
pub struct ClickHouseHistory {
    client: Client,
    config: ClickHouseConfig,
}

impl ClickHouseHistory {
    pub fn new(config: &ClickHouseConfig) -> ClickHouseHistory {
        ClickHouseHistory {
            client: make_client(config).with_database(&config.database),
            config: config.clone(),
        }
    }

    /// Creates the database and tables if they do not exist.
    pub async fn ensure_schema(&self) -> Result<(), HistoryError> {
        let root = make_client(&self.config);
        let aggregates =
            Resolution::ALL.map(|r| AGGREGATES.replace("{table}", aggregates_table(r)));
        for statement in SCHEMA
            .iter()
            .copied()
            .chain(aggregates.iter().map(String::as_str))
        {
            root.query(&statement.replace("{db}", &self.config.database))
                .execute()
                .await?;
        }
        for (table, column, kind) in ADDED_COLUMNS {
            let present = || async {
                root.query(
                    "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
                )
                .bind(&self.config.database)
                .bind(*table)
                .bind(*column)
                .fetch_one::<u64>()
                .await
            };
            if present().await? > 0 {
                continue;
            }
            tracing::info!(table, column, "adding a column to an existing table");
            let added = root
                .query(&format!(
                    "ALTER TABLE {}.{table} ADD COLUMN {column} {kind}",
                    self.config.database
                ))
                .execute()
                .await;
            // Another process (the API, another stream) starting at the same moment may have
            // added it first.
            if let Err(e) = added {
                if present().await? == 0 {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn insert_rows<T>(
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

    /// Each aggregate into its resolution's table.
    pub async fn insert_aggregates(&self, aggregates: &[Aggregate]) -> Result<usize, HistoryError> {
        let mut n = 0;
        for resolution in Resolution::ALL {
            let rows = aggregates
                .iter()
                .filter(|a| a.resolution == resolution)
                .map(AggregateRow::from);
            n += self.insert_rows(aggregates_table(resolution), rows).await?;
        }
        Ok(n)
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

    /// Per partition, the checkpointed position of `group_id` on `topic`: the highest offset
    /// written and the state in its row (rows not yet merged are all read).
    pub async fn offsets(
        &self,
        group_id: &str,
        topic: &str,
    ) -> Result<Vec<Position>, HistoryError> {
        #[derive(Row, Deserialize)]
        struct R {
            partition: i32,
            last_offset: i64,
            last_limiter: String,
        }
        // (Aliases unlike the columns: ClickHouse would read `next_offset` inside argMax as
        // the alias, an aggregate inside an aggregate.)
        let rows = self
            .client
            .query(
                "SELECT partition, max(next_offset) AS last_offset, \
                 argMax(limiter, next_offset) AS last_limiter FROM stream_offsets \
                 WHERE group_id = ? AND topic = ? GROUP BY partition",
            )
            .bind(group_id)
            .bind(topic)
            .fetch_all::<R>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Position {
                partition: r.partition,
                next_offset: r.last_offset,
                limiter: r.last_limiter,
            })
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
                aggregates_table(f.resolution),
                "window_start",
                "window_start, device_id, channel, metric",
                f,
            )
            .await?;
        Ok(at(f.resolution, rows))
    }

    /// The stored windows of `resolution` of `devices` starting in `[from, to)`.
    pub async fn windows(
        &self,
        resolution: Resolution,
        devices: &[String],
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregate>, HistoryError> {
        // `IN` a subquery, so the primary key (device first) narrows the read; 18.16 takes no
        // array on the right of IN.
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE device_id IN (SELECT arrayJoin(?)) \
             AND window_start >= ? AND window_start < ?",
            aggregates_table(resolution)
        );
        let rows = self
            .client
            .query(&sql)
            .bind(devices)
            .bind(from)
            .bind(to)
            .fetch_all::<AggregateRow>()
            .await?;
        Ok(at(resolution, rows))
    }

    pub async fn alerts(&self, f: &HistoryFilter) -> Result<Vec<Alert>, HistoryError> {
        let rows: Vec<AlertRow> = self
            .filtered("alerts", "raised_at", "raised_at, alert_id", f)
            .await?;
        Ok(rows.into_iter().map(Alert::from).collect())
    }

    /// Events in range, newest first; the filter's metric does not apply (events have kinds).
    pub async fn events(&self, f: &HistoryFilter) -> Result<Vec<EventRow>, HistoryError> {
        let f = HistoryFilter {
            metric: None,
            ..f.clone()
        };
        self.filtered("events", "ts", "ts DESC, event_id", &f).await
    }

    pub async fn evidence(&self, f: &HistoryFilter) -> Result<Vec<EvidenceRow>, HistoryError> {
        let f = HistoryFilter {
            metric: None,
            ..f.clone()
        };
        self.filtered("evidence", "ts", "ts DESC, event_id", &f)
            .await
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

/// Rows read from a resolution's table, as aggregates of that resolution (the table, not a
/// column, says which).
fn at(resolution: Resolution, rows: Vec<AggregateRow>) -> Vec<Aggregate> {
    rows.into_iter()
        .map(|r| Aggregate::from(AggregateRow { resolution, ..r }))
        .collect()
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
