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
use ioc_contract::{Aggregate, Alert, Resolution};
use serde::Deserialize;

use crate::record::{clickhouse_key, Record, Table};
use crate::{
    aggregates_table, AggregateRow, AlertRow, GoodValueRow, HistoryError, HistoryFilter, Position,
};

/// The statement that creates one of a table's ClickHouse tables, from its definition:
/// a `ReplacingMergeTree` on its version, sorted by its key, partitioned by month of its time.
fn create_table(db: &str, name: &str, table: &Table) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .filter_map(|c| c.clickhouse.map(|t| format!("{} {t}", c.name)))
        .collect();
    let partition = table
        .time
        .map(|t| format!(" PARTITION BY toYYYYMM(toDateTime(intDiv({t}, 1000)))"))
        .unwrap_or_default();
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name} ({}) ENGINE = ReplacingMergeTree(version){partition} ORDER BY ({})",
        columns.join(", "),
        table.clickhouse_key().join(", ")
    )
}

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

    /// Creates the database and tables if they do not exist, and adds to an existing table
    /// every column its definition has gained since (ClickHouse 18.16 has no
    /// `ADD COLUMN IF NOT EXISTS`).
    pub async fn ensure_schema(&self) -> Result<(), HistoryError> {
        let root = make_client(&self.config);
        let db = &self.config.database;
        root.query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .execute()
            .await?;
        for table in crate::tables() {
            for name in (table.clickhouse_tables)() {
                root.query(&create_table(db, name, &table))
                    .execute()
                    .await?;
                let present = || async {
                    root.query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                        .bind(db)
                        .bind(name)
                        .fetch_all::<String>()
                        .await
                };
                let columns = present().await?;
                for c in table.columns {
                    let Some(kind) = c.clickhouse else { continue };
                    if columns.iter().any(|p| p == c.name) {
                        continue;
                    }
                    tracing::info!(
                        table = name,
                        column = c.name,
                        "adding a column to an existing table"
                    );
                    let default = c.added.unwrap_or_default();
                    let added = root
                        .query(&format!(
                            "ALTER TABLE {db}.{name} ADD COLUMN {} {kind} {default}",
                            c.name
                        ))
                        .execute()
                        .await;
                    // Another process (the API, another stream) starting at the same moment
                    // may have added it first.
                    if let Err(e) = added {
                        if !present().await?.iter().any(|p| p == c.name) {
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes rows into their part's table.
    pub async fn insert<R: Record>(&self, rows: &[R]) -> Result<usize, HistoryError> {
        if let [part] = R::PARTS {
            return self.insert_rows(R::clickhouse_table(*part), rows).await;
        }
        let mut n = 0;
        for &part in R::PARTS {
            let of_part: Vec<&R> = rows.iter().filter(|r| r.part() == part).collect();
            if !of_part.is_empty() {
                n += self
                    .insert_rows(R::clickhouse_table(part), of_part.into_iter())
                    .await?;
            }
        }
        Ok(n)
    }

    /// Rows whose time is in the filter's range, in its part's table (deduplicated with
    /// FINAL), narrowed by device and metric where the table has them, in time then key order.
    pub async fn query<R: Record>(&self, f: &HistoryFilter) -> Result<Vec<R>, HistoryError> {
        let time = R::TIME.expect("queried tables have a time");
        let part = R::filter_part(f);
        let mut parts = vec![format!("{time} >= ?"), format!("{time} < ?")];
        let mut texts = Vec::new();
        let resolution = Some(f.resolution.as_str());
        for (column, value) in [
            ("device_id", f.device_id.as_deref()),
            ("metric", f.metric.as_deref()),
            ("resolution", resolution),
            ("regulation", f.regulation.as_deref()),
        ] {
            if let (Some(v), true) = (value, R::has_text_column(column)) {
                parts.push(format!("{column} = ?"));
                texts.push(v);
            }
        }
        for (column, values) in &f.any_of {
            if !R::has_text_column(column) {
                continue;
            }
            if values.is_empty() {
                parts.push("0".into());
                continue;
            }
            let marks = vec!["?"; values.len()].join(", ");
            parts.push(format!("{column} IN ({marks})"));
            texts.extend(values.iter().map(String::as_str));
        }
        let order = std::iter::once(if R::NEWEST_FIRST {
            format!("{time} DESC")
        } else {
            time.to_string()
        })
        .chain(
            clickhouse_key(R::COLUMNS, R::KEY)
                .into_iter()
                .map(String::from),
        )
        .collect::<Vec<_>>()
        .join(", ");
        // Table and column names are ours, never input.
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE {} ORDER BY {order} LIMIT ?",
            R::clickhouse_table(part),
            parts.join(" AND ")
        );
        let mut q = self.client.query(&sql).bind(f.from).bind(f.to);
        for t in texts {
            q = q.bind(t);
        }
        let mut rows = q.bind(f.limit as u64).fetch_all::<R>().await?;
        for r in &mut rows {
            r.set_part(part);
        }
        Ok(rows)
    }

    async fn insert_rows<'r, T>(
        &self,
        table: &str,
        rows: impl IntoIterator<Item = &'r T>,
    ) -> Result<usize, HistoryError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite + 'r,
    {
        let mut insert = self.client.insert::<T>(table).await?;
        let mut n = 0;
        for row in rows {
            insert.write(row).await?;
            n += 1;
        }
        if n == 0 {
            // Ending an empty insert would send an empty INSERT; dropping it aborts nothing.
            return Ok(0);
        }
        insert.end().await?;
        Ok(n)
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
                "SELECT ?fields FROM alerts FINAL WHERE (rule, instance, raised_at) IN \
                 (SELECT rule, instance, max(raised_at) FROM alerts GROUP BY rule, instance)",
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

    /// The stored windows of `resolution` of `devices` starting in `[from, to)`.
    pub async fn windows(
        &self,
        resolution: Resolution,
        devices: &[String],
        metrics: &[&str],
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregate>, HistoryError> {
        // `IN` a subquery, so the primary key (device first) narrows the read; 18.16 takes no
        // array on the right of IN.
        let of_metrics = if metrics.is_empty() {
            ""
        } else {
            " AND metric IN (SELECT arrayJoin(?))"
        };
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE device_id IN (SELECT arrayJoin(?)){of_metrics} \
             AND window_start >= ? AND window_start < ?",
            aggregates_table(resolution)
        );
        let mut query = self.client.query(&sql).bind(devices);
        if !metrics.is_empty() {
            query = query.bind(metrics);
        }
        let rows = query
            .bind(from)
            .bind(to)
            .fetch_all::<AggregateRow>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                r.resolution = resolution;
                Aggregate::from(r)
            })
            .collect())
    }
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
