//! The embedded history store of `ioc up`: Parquet files under a directory, committed by a
//! manifest.
//!
//! Writes go to memory first (queries see them at once) and are committed every flush interval:
//! each table's new rows become one Parquet file (snappy), then `MANIFEST.json` is replaced
//! atomically (write, fsync, rename) listing the live files *and* the stream's checkpoint
//! (offsets and window watermarks) as of the same moment. A crash therefore reverts data and
//! checkpoint together to the last commit, and the stream re-reads the durable bus from that
//! checkpoint: nothing is lost and nothing counts twice, because rows are deduplicated on read
//! by key, the highest version winning (what ClickHouse's `ReplacingMergeTree` does on merge).
//!
//! Small files are compacted into one (deduplicated) once a table has [`COMPACT_TRIGGER`] of
//! them; files no longer listed are deleted a minute later (a query may still be reading them),
//! or at the next open. Each manifest entry carries its rows' time range, so a query opens
//! only files that overlap it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use ioc_contract::{Aggregate, Alert, Resolution};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    AggregateRow, AlertRow, EventRow, EvidenceRow, GoodValueRow, HistoryFilter, OffsetRow,
    Position, QuarantineRow, ReadingRow, WatermarkRow,
};

/// A table compacts once it has this many files smaller than [`COMPACT_MAX_ROWS`].
pub const COMPACT_TRIGGER: usize = 16;
/// Files with at least this many rows are left alone by compaction.
pub const COMPACT_MAX_ROWS: u64 = 250_000;
const GARBAGE_GRACE: Duration = Duration::from_secs(60);
const MANIFEST: &str = "MANIFEST.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("{path}: column {column} is missing or not of the expected type")]
    Column { path: PathBuf, column: &'static str },
    #[error("{path}: unreadable manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Table {
    Readings,
    Aggregates,
    Alerts,
    Events,
    Evidence,
    CameraQuarantine,
}

impl Table {
    const ALL: [Table; 6] = [
        Table::Readings,
        Table::Aggregates,
        Table::Alerts,
        Table::Events,
        Table::Evidence,
        Table::CameraQuarantine,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Readings => "readings",
            Table::Aggregates => "aggregates",
            Table::Alerts => "alerts",
            Table::Events => "events",
            Table::Evidence => "evidence",
            Table::CameraQuarantine => "camera_quarantine",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    table: Table,
    /// Which part of the table the file holds ([`TableRow::part`]): files of the aggregates
    /// table hold one resolution each, so a query for minutes skips the files of days, whose
    /// time ranges would overlap everything of theirs.
    #[serde(default)]
    part: u8,
    /// Relative to the store's directory.
    file: String,
    rows: u64,
    min_time: i64,
    max_time: i64,
}

/// The commit point: live files and the stream's checkpoint as of the same moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Manifest {
    next_file: u64,
    files: Vec<FileEntry>,
    checkpoint: Checkpoint,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    offsets: Vec<OffsetRow>,
    closed_until: BTreeMap<String, i64>,
}

impl Checkpoint {
    fn merge_offsets(&mut self, rows: Vec<OffsetRow>) {
        for row in rows {
            match self.offsets.iter_mut().find(|o| {
                o.group_id == row.group_id && o.topic == row.topic && o.partition == row.partition
            }) {
                Some(o) if o.next_offset < row.next_offset => *o = row,
                Some(_) => {}
                None => self.offsets.push(row),
            }
        }
    }

    fn merge_watermarks(&mut self, rows: Vec<WatermarkRow>) {
        for row in rows {
            let e = self.closed_until.entry(row.device_id).or_insert(i64::MIN);
            *e = (*e).max(row.closed_until);
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Tables {
    readings: Vec<ReadingRow>,
    aggregates: Vec<AggregateRow>,
    alerts: Vec<AlertRow>,
    events: Vec<EventRow>,
    evidence: Vec<EvidenceRow>,
    quarantine: Vec<QuarantineRow>,
}

impl Tables {
    fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.aggregates.is_empty()
            && self.alerts.is_empty()
            && self.events.is_empty()
            && self.evidence.is_empty()
            && self.quarantine.is_empty()
    }

    /// Puts `later` after these rows.
    fn append(&mut self, later: &mut Tables) {
        self.readings.append(&mut later.readings);
        self.aggregates.append(&mut later.aggregates);
        self.alerts.append(&mut later.alerts);
        self.events.append(&mut later.events);
        self.evidence.append(&mut later.evidence);
        self.quarantine.append(&mut later.quarantine);
    }

    /// Writes every table's rows as new files listed in `manifest`.
    fn write(&self, dir: &Path, manifest: &mut Manifest) -> Result<(), StoreError> {
        write_table(dir, manifest, &self.readings)?;
        write_table(dir, manifest, &self.aggregates)?;
        write_table(dir, manifest, &self.alerts)?;
        write_table(dir, manifest, &self.events)?;
        write_table(dir, manifest, &self.evidence)?;
        write_table(dir, manifest, &self.quarantine)
    }
}

struct State {
    manifest: Arc<Manifest>,
    /// Written since the last commit began.
    pending: Tables,
    /// Being written by the commit in progress; still visible to queries.
    flushing: Arc<Tables>,
    /// The latest checkpoint (committed with the next flush).
    checkpoint: Checkpoint,
    garbage: Vec<(Instant, PathBuf)>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    /// One commit (flush or compaction) at a time.
    commit: tokio::sync::Mutex<()>,
}

/// The embedded history store. Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct EmbeddedHistory {
    shared: Arc<Shared>,
}

impl EmbeddedHistory {
    /// Opens (creating if needed) the store in `dir` and deletes files no commit lists.
    pub fn open(dir: &Path) -> Result<EmbeddedHistory, StoreError> {
        for t in Table::ALL {
            let d = dir.join(t.name());
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let path = dir.join(MANIFEST);
        let manifest: Manifest = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Manifest {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        // Files of a commit that did not finish, or compacted away before a restart.
        let live: std::collections::HashSet<&str> =
            manifest.files.iter().map(|f| f.file.as_str()).collect();
        for t in Table::ALL {
            let d = dir.join(t.name());
            for entry in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
                let rel = format!("{}/{}", t.name(), entry.file_name().to_string_lossy());
                if !live.contains(rel.as_str()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let checkpoint = manifest.checkpoint.clone();
        Ok(EmbeddedHistory {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                state: Mutex::new(State {
                    manifest: Arc::new(manifest),
                    pending: Tables::default(),
                    flushing: Arc::default(),
                    checkpoint,
                    garbage: Vec::new(),
                }),
                commit: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert_readings(&self, rows: impl Iterator<Item = ReadingRow>) -> usize {
        let mut s = self.state();
        let before = s.pending.readings.len();
        s.pending.readings.extend(rows);
        s.pending.readings.len() - before
    }

    pub fn insert_aggregates(&self, rows: impl Iterator<Item = AggregateRow>) -> usize {
        let mut s = self.state();
        let before = s.pending.aggregates.len();
        s.pending.aggregates.extend(rows);
        s.pending.aggregates.len() - before
    }

    pub fn insert_alerts(&self, rows: impl Iterator<Item = AlertRow>) -> usize {
        let mut s = self.state();
        let before = s.pending.alerts.len();
        s.pending.alerts.extend(rows);
        s.pending.alerts.len() - before
    }

    pub fn insert_events(&self, rows: impl Iterator<Item = EventRow>) -> usize {
        let mut s = self.state();
        let before = s.pending.events.len();
        s.pending.events.extend(rows);
        s.pending.events.len() - before
    }

    pub fn insert_evidence(&self, rows: impl Iterator<Item = EvidenceRow>) -> usize {
        let mut s = self.state();
        let before = s.pending.evidence.len();
        s.pending.evidence.extend(rows);
        s.pending.evidence.len() - before
    }

    pub fn insert_quarantine(&self, rows: impl Iterator<Item = QuarantineRow>) -> usize {
        let mut s = self.state();
        let before = s.pending.quarantine.len();
        s.pending.quarantine.extend(rows);
        s.pending.quarantine.len() - before
    }

    pub fn insert_watermarks(&self, rows: Vec<WatermarkRow>) -> usize {
        let n = rows.len();
        self.state().checkpoint.merge_watermarks(rows);
        n
    }

    pub fn insert_offsets(&self, rows: Vec<OffsetRow>) -> usize {
        let n = rows.len();
        self.state().checkpoint.merge_offsets(rows);
        n
    }

    pub fn offsets(&self, group_id: &str, topic: &str) -> Vec<Position> {
        self.state()
            .checkpoint
            .offsets
            .iter()
            .filter(|o| o.group_id == group_id && o.topic == topic)
            .map(|o| Position {
                partition: o.partition,
                next_offset: o.next_offset,
                limiter: o.limiter.clone(),
            })
            .collect()
    }

    pub fn closed_until(&self) -> Vec<(String, i64)> {
        self.state()
            .checkpoint
            .closed_until
            .iter()
            .map(|(d, c)| (d.clone(), *c))
            .collect()
    }

    /// Commits every write so far: Parquet files, then the manifest with the checkpoint.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _commit = self.shared.commit.lock().await;
        let (rows, checkpoint, base) = {
            let mut s = self.state();
            if s.pending.is_empty() && s.checkpoint == s.manifest.checkpoint {
                drop(s);
                self.collect_garbage();
                return Ok(());
            }
            let rows = Arc::new(std::mem::take(&mut s.pending));
            s.flushing = rows.clone();
            (rows, s.checkpoint.clone(), s.manifest.clone())
        };
        let dir = self.shared.dir.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<Manifest, StoreError> {
            let mut next = (*base).clone();
            rows.write(&dir, &mut next)?;
            next.checkpoint = checkpoint;
            commit_manifest(&dir, &next)?;
            Ok(next)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
        .and_then(|r| r);
        {
            let mut s = self.state();
            let flushed = std::mem::take(&mut s.flushing);
            match written {
                Ok(manifest) => s.manifest = Arc::new(manifest),
                Err(e) => {
                    // Put the rows back in front of anything written since; the next flush
                    // retries them.
                    let mut back = Arc::try_unwrap(flushed).unwrap_or_else(|a| (*a).clone());
                    back.append(&mut s.pending);
                    s.pending = back;
                    return Err(e);
                }
            }
        }
        self.compact().await?;
        self.collect_garbage();
        Ok(())
    }

    /// Flushes every `interval` until `shutdown`, then once more.
    pub fn start_flusher(
        &self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = tokio::time::sleep(interval) => false,
                    _ = shutdown.cancelled() => true,
                };
                if let Err(e) = store.flush().await {
                    tracing::error!(error = %e, "history flush failed; the rows stay in memory and the next flush retries");
                }
                if stop {
                    return;
                }
            }
        })
    }

    /// Merges a table's small files into one once there are [`COMPACT_TRIGGER`] of them.
    /// Called with the commit lock held.
    async fn compact(&self) -> Result<(), StoreError> {
        // Each part of each table compacts on its own (a file holds one part).
        let parts: std::collections::HashSet<(Table, u8)> = self
            .state()
            .manifest
            .files
            .iter()
            .map(|f| (f.table, f.part))
            .collect();
        for (table, part) in parts {
            let base = self.state().manifest.clone();
            let small: Vec<FileEntry> = base
                .files
                .iter()
                .filter(|f| f.table == table && f.part == part && f.rows < COMPACT_MAX_ROWS)
                .cloned()
                .collect();
            if small.len() < COMPACT_TRIGGER {
                continue;
            }
            let dir = self.shared.dir.clone();
            let merged = small.clone();
            let next = tokio::task::spawn_blocking(move || -> Result<Manifest, StoreError> {
                let mut next = (*base).clone();
                next.files
                    .retain(|f| !merged.iter().any(|m| m.file == f.file));
                fn merge<R: TableRow>(
                    dir: &Path,
                    next: &mut Manifest,
                    files: &[FileEntry],
                ) -> Result<(), StoreError> {
                    write_table(dir, next, &dedup(read_files::<R>(dir, files)?))
                }
                match table {
                    Table::Readings => merge::<ReadingRow>(&dir, &mut next, &merged)?,
                    Table::Aggregates => merge::<AggregateRow>(&dir, &mut next, &merged)?,
                    Table::Alerts => merge::<AlertRow>(&dir, &mut next, &merged)?,
                    Table::Events => merge::<EventRow>(&dir, &mut next, &merged)?,
                    Table::Evidence => merge::<EvidenceRow>(&dir, &mut next, &merged)?,
                    Table::CameraQuarantine => merge::<QuarantineRow>(&dir, &mut next, &merged)?,
                }
                commit_manifest(&dir, &next)?;
                Ok(next)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
            let mut s = self.state();
            s.manifest = Arc::new(next);
            let now = Instant::now();
            s.garbage
                .extend(small.iter().map(|f| (now, self.shared.dir.join(&f.file))));
            tracing::debug!(
                table = table.name(),
                files = small.len(),
                "compacted history files"
            );
        }
        Ok(())
    }

    fn collect_garbage(&self) {
        let mut s = self.state();
        s.garbage.retain(|(at, path)| {
            if at.elapsed() < GARBAGE_GRACE {
                return true;
            }
            let _ = std::fs::remove_file(path);
            false
        });
    }

    /// Rows of one table overlapping `[from, to)` that pass `keep` (on key fields only: it runs
    /// before deduplication), deduplicated by key. A file compacted away while the query ran is
    /// retried once against the newer manifest.
    async fn scan<R: TableRow>(
        &self,
        from: i64,
        to: i64,
        part: Option<u8>,
        keep: impl Fn(&R) -> bool + Send + Sync + Clone + 'static,
    ) -> Result<Vec<R>, StoreError> {
        let mut attempt = 0;
        loop {
            let (files, mut memory) = {
                let s = self.state();
                let files: Vec<FileEntry> = s
                    .manifest
                    .files
                    .iter()
                    .filter(|f| {
                        f.table == R::TABLE
                            && part.is_none_or(|p| f.part == p)
                            && f.max_time >= from
                            && f.min_time < to
                    })
                    .cloned()
                    .collect();
                let in_range = |r: &&R| (from..to).contains(&r.time()) && keep(r);
                let memory: Vec<R> = R::rows(&s.flushing)
                    .iter()
                    .chain(R::rows(&s.pending))
                    .filter(in_range)
                    .cloned()
                    .collect();
                (files, memory)
            };
            let dir = self.shared.dir.clone();
            let k = keep.clone();
            let stored = tokio::task::spawn_blocking(move || -> Result<Vec<R>, StoreError> {
                let mut out = Vec::new();
                for f in &files {
                    out.extend(
                        read_file::<R>(&dir.join(&f.file))?
                            .into_iter()
                            .filter(|r| (from..to).contains(&r.time()) && k(r)),
                    );
                }
                Ok(out)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
            match stored {
                Ok(mut rows) => {
                    rows.append(&mut memory);
                    return Ok(dedup(rows));
                }
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt == 0 =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn readings(&self, f: &HistoryFilter) -> Result<Vec<ReadingRow>, StoreError> {
        let (device, metric) = (f.device_id.clone(), f.metric.clone());
        let mut rows = self
            .scan::<ReadingRow>(f.from, f.to, None, move |r| {
                device.as_ref().is_none_or(|d| *d == r.device_id)
                    && metric.as_ref().is_none_or(|m| *m == r.metric)
            })
            .await?;
        rows.sort_by(|a, b| {
            (a.ts, &a.device_id, &a.channel, &a.metric).cmp(&(
                b.ts,
                &b.device_id,
                &b.channel,
                &b.metric,
            ))
        });
        rows.truncate(f.limit);
        Ok(rows)
    }

    pub async fn aggregates(&self, f: &HistoryFilter) -> Result<Vec<Aggregate>, StoreError> {
        let (device, metric, resolution) = (f.device_id.clone(), f.metric.clone(), f.resolution);
        let mut rows = self
            .scan::<AggregateRow>(f.from, f.to, Some(resolution as u8), move |r| {
                r.resolution == resolution
                    && device.as_ref().is_none_or(|d| *d == r.device_id)
                    && metric.as_ref().is_none_or(|m| *m == r.metric)
            })
            .await?;
        rows.sort_by(|a, b| {
            (a.window_start, &a.device_id, &a.channel, &a.metric).cmp(&(
                b.window_start,
                &b.device_id,
                &b.channel,
                &b.metric,
            ))
        });
        rows.truncate(f.limit);
        Ok(rows.into_iter().map(Aggregate::from).collect())
    }

    pub async fn windows(
        &self,
        resolution: Resolution,
        devices: &[String],
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let devices: std::collections::HashSet<String> = devices.iter().cloned().collect();
        let rows = self
            .scan::<AggregateRow>(from, to, Some(resolution as u8), move |r| {
                r.resolution == resolution && devices.contains(&r.device_id)
            })
            .await?;
        Ok(rows.into_iter().map(Aggregate::from).collect())
    }

    pub async fn alerts(&self, f: &HistoryFilter) -> Result<Vec<Alert>, StoreError> {
        let (device, metric) = (f.device_id.clone(), f.metric.clone());
        let mut rows = self
            .scan::<AlertRow>(f.from, f.to, None, move |r| {
                device.as_ref().is_none_or(|d| *d == r.device_id)
                    && metric.as_ref().is_none_or(|m| *m == r.metric)
            })
            .await?;
        rows.sort_by(|a, b| (a.raised_at, &a.alert_id).cmp(&(b.raised_at, &b.alert_id)));
        rows.truncate(f.limit);
        Ok(rows.into_iter().map(Alert::from).collect())
    }

    /// Events in range, newest first (the filter's metric does not apply).
    pub async fn events(&self, f: &HistoryFilter) -> Result<Vec<EventRow>, StoreError> {
        let device = f.device_id.clone();
        let mut rows = self
            .scan::<EventRow>(f.from, f.to, None, move |r| {
                device.as_ref().is_none_or(|d| *d == r.device_id)
            })
            .await?;
        rows.sort_by(|a, b| (b.ts, &a.event_id).cmp(&(a.ts, &b.event_id)));
        rows.truncate(f.limit);
        Ok(rows)
    }

    pub async fn evidence(&self, f: &HistoryFilter) -> Result<Vec<EvidenceRow>, StoreError> {
        let device = f.device_id.clone();
        let mut rows = self
            .scan::<EvidenceRow>(f.from, f.to, None, move |r| {
                device.as_ref().is_none_or(|d| *d == r.device_id)
            })
            .await?;
        rows.sort_by(|a, b| (b.ts, &a.event_id).cmp(&(a.ts, &b.event_id)));
        rows.truncate(f.limit);
        Ok(rows)
    }

    pub async fn good_values(
        &self,
        device_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<GoodValueRow>, StoreError> {
        let device = device_id.to_string();
        let rows = self
            .scan::<ReadingRow>(from, to, None, move |r| r.device_id == device)
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.quality == "good")
            .map(|r| GoodValueRow {
                device_id: r.device_id,
                channel: r.channel,
                metric: r.metric,
                ts: r.ts,
                value: r.value,
                unit: r.unit,
            })
            .collect())
    }

    pub async fn latest_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let rows = self
            .scan::<AlertRow>(i64::MIN, i64::MAX, None, |_| true)
            .await?;
        let mut latest: HashMap<(String, String, String), AlertRow> = HashMap::new();
        for r in rows {
            let key = (r.rule.clone(), r.device_id.clone(), r.channel.clone());
            match latest.get(&key) {
                Some(l) if l.raised_at >= r.raised_at => {}
                _ => {
                    latest.insert(key, r);
                }
            }
        }
        Ok(latest.into_values().map(Alert::from).collect())
    }
}

/// Keeps one row per key, the highest version winning (the later one on a tie).
fn dedup<R: TableRow>(rows: Vec<R>) -> Vec<R> {
    let mut best: HashMap<R::Key, R> = HashMap::with_capacity(rows.len());
    for r in rows {
        match best.get(&r.key()) {
            Some(b) if b.version() > r.version() => {}
            _ => {
                best.insert(r.key(), r);
            }
        }
    }
    best.into_values().collect()
}

/// Writes one table's rows as new Parquet files, one per part, and lists them in `manifest`.
fn write_table<R: TableRow>(
    dir: &Path,
    manifest: &mut Manifest,
    rows: &[R],
) -> Result<(), StoreError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    if rows.iter().all(|r| r.part() == first.part()) {
        return write_file(dir, manifest, rows, first.part());
    }
    let mut parts: BTreeMap<u8, Vec<R>> = BTreeMap::new();
    for r in rows {
        parts.entry(r.part()).or_default().push(r.clone());
    }
    for (part, rows) in parts {
        write_file(dir, manifest, &rows, part)?;
    }
    Ok(())
}

fn write_file<R: TableRow>(
    dir: &Path,
    manifest: &mut Manifest,
    rows: &[R],
    part: u8,
) -> Result<(), StoreError> {
    let rel = format!("{}/{:012}.parquet", R::TABLE.name(), manifest.next_file);
    manifest.next_file += 1;
    let path = dir.join(&rel);
    let batch = R::to_batch(rows).map_err(|source| StoreError::Arrow {
        path: path.clone(),
        source,
    })?;
    let file = File::create(&path).map_err(io(&path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let pq = |source| StoreError::Parquet {
        path: path.clone(),
        source,
    };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    writer.write(&batch).map_err(pq)?;
    let file = writer.into_inner().map_err(pq)?;
    file.sync_all().map_err(io(&path))?;
    let times = rows.iter().map(R::time);
    manifest.files.push(FileEntry {
        table: R::TABLE,
        part,
        file: rel,
        rows: rows.len() as u64,
        min_time: times.clone().min().unwrap_or(0),
        max_time: times.max().unwrap_or(0),
    });
    Ok(())
}

fn commit_manifest(dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    for t in Table::ALL {
        let d = dir.join(t.name());
        File::open(&d).and_then(|f| f.sync_all()).map_err(io(&d))?;
    }
    let tmp = dir.join("MANIFEST.json.tmp");
    let path = dir.join(MANIFEST);
    let bytes = serde_json::to_vec(manifest).expect("manifests serialize");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

fn read_files<R: TableRow>(dir: &Path, files: &[FileEntry]) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::new();
    for f in files {
        out.extend(read_file::<R>(&dir.join(&f.file))?);
    }
    Ok(out)
}

fn read_file<R: TableRow>(path: &Path) -> Result<Vec<R>, StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let pq = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq)?
        .build()
        .map_err(pq)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| StoreError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        out.extend(R::from_batch(&Columns {
            batch: &batch,
            path,
        })?);
    }
    Ok(out)
}

/// A row type stored as a table.
trait TableRow: Clone + Send + Sync + 'static {
    const TABLE: Table;
    type Key: std::hash::Hash + Eq;
    fn key(&self) -> Self::Key;
    fn version(&self) -> u64;
    /// The time the table is ranged by.
    fn time(&self) -> i64;
    /// Which of the table's parts the row is kept in (files hold one part each).
    fn part(&self) -> u8 {
        0
    }
    fn rows(tables: &Tables) -> &[Self];
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError>;
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError>;
}

fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
            .collect::<Vec<_>>(),
    ))
}

fn strs<R>(rows: &[R], f: impl Fn(&R) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}
fn i64s<R>(rows: &[R], f: impl Fn(&R) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
}
fn f64s<R>(rows: &[R], f: impl Fn(&R) -> f64) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
}
fn u64s<R>(rows: &[R], f: impl Fn(&R) -> u64) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
}

/// Typed access to a stored batch's columns.
struct Columns<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl Columns<'_> {
    fn len(&self) -> usize {
        self.batch.num_rows()
    }

    fn col<T: 'static>(&self, column: &'static str) -> Result<&T, StoreError> {
        self.batch
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| StoreError::Column {
                path: self.path.to_path_buf(),
                column,
            })
    }
    /// A column files written by an older release lack: `None` where it is absent.
    fn optional<T: 'static>(&self, column: &'static str) -> Result<Option<&T>, StoreError> {
        match self.batch.column_by_name(column) {
            None => Ok(None),
            Some(_) => self.col(column).map(Some),
        }
    }
    fn str(&self, c: &'static str) -> Result<&StringArray, StoreError> {
        self.col(c)
    }
    fn i64(&self, c: &'static str) -> Result<&Int64Array, StoreError> {
        self.col(c)
    }
    fn f64(&self, c: &'static str) -> Result<&Float64Array, StoreError> {
        self.col(c)
    }
    fn u64(&self, c: &'static str) -> Result<&UInt64Array, StoreError> {
        self.col(c)
    }
}

impl TableRow for ReadingRow {
    const TABLE: Table = Table::Readings;
    type Key = (String, String, String, i64);
    fn key(&self) -> Self::Key {
        (
            self.device_id.clone(),
            self.channel.clone(),
            self.metric.clone(),
            self.ts,
        )
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn time(&self) -> i64 {
        self.ts
    }
    fn rows(t: &Tables) -> &[Self] {
        &t.readings
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        use DataType::*;
        RecordBatch::try_new(
            schema(&[
                ("device_id", Utf8, false),
                ("channel", Utf8, false),
                ("metric", Utf8, false),
                ("ts", Int64, false),
                ("value", Float64, false),
                ("unit", Utf8, false),
                ("interval_s", Float64, true),
                ("quality", Utf8, false),
                ("quality_reason", Utf8, false),
                ("received_at", Int64, false),
                ("message_id", Utf8, false),
                ("version", UInt64, false),
            ]),
            vec![
                strs(rows, |r| &r.device_id),
                strs(rows, |r| &r.channel),
                strs(rows, |r| &r.metric),
                i64s(rows, |r| r.ts),
                f64s(rows, |r| r.value),
                strs(rows, |r| &r.unit),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.interval_s))),
                strs(rows, |r| &r.quality),
                strs(rows, |r| &r.quality_reason),
                i64s(rows, |r| r.received_at),
                strs(rows, |r| &r.message_id),
                u64s(rows, |r| r.version),
            ],
        )
    }
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError> {
        let (device, channel, metric) = (c.str("device_id")?, c.str("channel")?, c.str("metric")?);
        let (ts, value, unit) = (c.i64("ts")?, c.f64("value")?, c.str("unit")?);
        let (interval, quality, reason) = (
            c.f64("interval_s")?,
            c.str("quality")?,
            c.str("quality_reason")?,
        );
        let (received, message, version) = (
            c.i64("received_at")?,
            c.str("message_id")?,
            c.u64("version")?,
        );
        Ok((0..c.len())
            .map(|i| ReadingRow {
                device_id: device.value(i).to_string(),
                channel: channel.value(i).to_string(),
                metric: metric.value(i).to_string(),
                ts: ts.value(i),
                value: value.value(i),
                unit: unit.value(i).to_string(),
                interval_s: interval.is_valid(i).then(|| interval.value(i)),
                quality: quality.value(i).to_string(),
                quality_reason: reason.value(i).to_string(),
                received_at: received.value(i),
                message_id: message.value(i).to_string(),
                version: version.value(i),
            })
            .collect())
    }
}

impl TableRow for AggregateRow {
    const TABLE: Table = Table::Aggregates;
    type Key = (Resolution, String, String, String, i64);
    fn key(&self) -> Self::Key {
        (
            self.resolution,
            self.device_id.clone(),
            self.channel.clone(),
            self.metric.clone(),
            self.window_start,
        )
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn time(&self) -> i64 {
        self.window_start
    }
    /// One part per resolution (files from before resolutions held minutes: part 0).
    fn part(&self) -> u8 {
        self.resolution as u8
    }
    fn rows(t: &Tables) -> &[Self] {
        &t.aggregates
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        use DataType::*;
        RecordBatch::try_new(
            schema(&[
                ("device_id", Utf8, false),
                ("channel", Utf8, false),
                ("metric", Utf8, false),
                ("window_start", Int64, false),
                ("window_end", Int64, false),
                ("value_count", UInt64, false),
                ("value_min", Float64, false),
                ("value_max", Float64, false),
                ("value_mean", Float64, false),
                ("unit", Utf8, false),
                ("version", UInt64, false),
                ("resolution", Utf8, false),
                ("value_sum", Float64, false),
                ("capture", Float64, true),
            ]),
            vec![
                strs(rows, |r| &r.device_id),
                strs(rows, |r| &r.channel),
                strs(rows, |r| &r.metric),
                i64s(rows, |r| r.window_start),
                i64s(rows, |r| r.window_end),
                u64s(rows, |r| r.value_count),
                f64s(rows, |r| r.value_min),
                f64s(rows, |r| r.value_max),
                f64s(rows, |r| r.value_mean),
                strs(rows, |r| &r.unit),
                u64s(rows, |r| r.version),
                strs(rows, |r| r.resolution.as_str()),
                f64s(rows, |r| r.value_sum),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.capture))),
            ],
        )
    }
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError> {
        let (device, channel, metric) = (c.str("device_id")?, c.str("channel")?, c.str("metric")?);
        let (start, end, count) = (
            c.i64("window_start")?,
            c.i64("window_end")?,
            c.u64("value_count")?,
        );
        let (min, max, mean) = (
            c.f64("value_min")?,
            c.f64("value_max")?,
            c.f64("value_mean")?,
        );
        let (unit, version) = (c.str("unit")?, c.u64("version")?);
        // Files from before resolutions held 1-minute windows, without sum or capture.
        let resolution = c.optional::<StringArray>("resolution")?;
        let sum = c.optional::<Float64Array>("value_sum")?;
        let capture = c.optional::<Float64Array>("capture")?;
        (0..c.len())
            .map(|i| {
                let resolution = match resolution {
                    None => Resolution::Minute,
                    Some(r) => Resolution::parse(r.value(i)).ok_or(StoreError::Column {
                        path: c.path.to_path_buf(),
                        column: "resolution",
                    })?,
                };
                Ok(AggregateRow {
                    resolution,
                    device_id: device.value(i).to_string(),
                    channel: channel.value(i).to_string(),
                    metric: metric.value(i).to_string(),
                    window_start: start.value(i),
                    window_end: end.value(i),
                    value_count: count.value(i),
                    value_sum: sum.map_or(mean.value(i) * count.value(i) as f64, |s| s.value(i)),
                    value_min: min.value(i),
                    value_max: max.value(i),
                    value_mean: mean.value(i),
                    capture: capture.and_then(|c| c.is_valid(i).then(|| c.value(i))),
                    unit: unit.value(i).to_string(),
                    version: version.value(i),
                })
            })
            .collect()
    }
}

impl TableRow for AlertRow {
    const TABLE: Table = Table::Alerts;
    type Key = String;
    fn key(&self) -> Self::Key {
        self.alert_id.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn time(&self) -> i64 {
        self.raised_at
    }
    fn rows(t: &Tables) -> &[Self] {
        &t.alerts
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        use DataType::*;
        RecordBatch::try_new(
            schema(&[
                ("alert_id", Utf8, false),
                ("rule", Utf8, false),
                ("device_id", Utf8, false),
                ("channel", Utf8, false),
                ("metric", Utf8, false),
                ("status", Utf8, false),
                ("raised_at", Int64, false),
                ("cleared_at", Int64, true),
                ("value", Float64, false),
                ("peak", Float64, false),
                ("limit_value", Float64, false),
                ("unit", Utf8, false),
                ("message", Utf8, false),
                ("version", UInt64, false),
            ]),
            vec![
                strs(rows, |r| &r.alert_id),
                strs(rows, |r| &r.rule),
                strs(rows, |r| &r.device_id),
                strs(rows, |r| &r.channel),
                strs(rows, |r| &r.metric),
                strs(rows, |r| &r.status),
                i64s(rows, |r| r.raised_at),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.cleared_at))),
                f64s(rows, |r| r.value),
                f64s(rows, |r| r.peak),
                f64s(rows, |r| r.limit_value),
                strs(rows, |r| &r.unit),
                strs(rows, |r| &r.message),
                u64s(rows, |r| r.version),
            ],
        )
    }
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError> {
        let (id, rule, device) = (c.str("alert_id")?, c.str("rule")?, c.str("device_id")?);
        let (channel, metric, status) = (c.str("channel")?, c.str("metric")?, c.str("status")?);
        let (raised, cleared, value) = (c.i64("raised_at")?, c.i64("cleared_at")?, c.f64("value")?);
        let (peak, limit, unit) = (c.f64("peak")?, c.f64("limit_value")?, c.str("unit")?);
        let (message, version) = (c.str("message")?, c.u64("version")?);
        Ok((0..c.len())
            .map(|i| AlertRow {
                alert_id: id.value(i).to_string(),
                rule: rule.value(i).to_string(),
                device_id: device.value(i).to_string(),
                channel: channel.value(i).to_string(),
                metric: metric.value(i).to_string(),
                status: status.value(i).to_string(),
                raised_at: raised.value(i),
                cleared_at: cleared.is_valid(i).then(|| cleared.value(i)),
                value: value.value(i),
                peak: peak.value(i),
                limit_value: limit.value(i),
                unit: unit.value(i).to_string(),
                message: message.value(i).to_string(),
                version: version.value(i),
            })
            .collect())
    }
}

impl TableRow for EventRow {
    const TABLE: Table = Table::Events;
    type Key = String;
    fn key(&self) -> Self::Key {
        self.event_id.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn time(&self) -> i64 {
        self.ts
    }
    fn rows(t: &Tables) -> &[Self] {
        &t.events
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        use DataType::*;
        RecordBatch::try_new(
            schema(&[
                ("event_id", Utf8, false),
                ("device_id", Utf8, false),
                ("ts", Int64, false),
                ("kind", Utf8, false),
                ("attributes", Utf8, false),
                ("received_at", Int64, false),
                ("message_id", Utf8, false),
                ("version", UInt64, false),
            ]),
            vec![
                strs(rows, |r| &r.event_id),
                strs(rows, |r| &r.device_id),
                i64s(rows, |r| r.ts),
                strs(rows, |r| &r.kind),
                strs(rows, |r| &r.attributes),
                i64s(rows, |r| r.received_at),
                strs(rows, |r| &r.message_id),
                u64s(rows, |r| r.version),
            ],
        )
    }
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError> {
        let (id, device, ts, kind) = (
            c.str("event_id")?,
            c.str("device_id")?,
            c.i64("ts")?,
            c.str("kind")?,
        );
        let (attributes, received, message, version) = (
            c.str("attributes")?,
            c.i64("received_at")?,
            c.str("message_id")?,
            c.u64("version")?,
        );
        Ok((0..c.len())
            .map(|i| EventRow {
                event_id: id.value(i).to_string(),
                device_id: device.value(i).to_string(),
                ts: ts.value(i),
                kind: kind.value(i).to_string(),
                attributes: attributes.value(i).to_string(),
                received_at: received.value(i),
                message_id: message.value(i).to_string(),
                version: version.value(i),
            })
            .collect())
    }
}

impl TableRow for EvidenceRow {
    const TABLE: Table = Table::Evidence;
    type Key = String;
    fn key(&self) -> Self::Key {
        self.event_id.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn time(&self) -> i64 {
        self.ts
    }
    fn rows(t: &Tables) -> &[Self] {
        &t.evidence
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        use DataType::*;
        RecordBatch::try_new(
            schema(&[
                ("event_id", Utf8, false),
                ("device_id", Utf8, false),
                ("camera_id", Utf8, false),
                ("ts", Int64, false),
                ("kind", Utf8, false),
                ("plate", Utf8, false),
                ("plate_pseudonym", Utf8, false),
                ("image_ref", Utf8, false),
                ("received_at", Int64, false),
                ("message_id", Utf8, false),
                ("version", UInt64, false),
            ]),
            vec![
                strs(rows, |r| &r.event_id),
                strs(rows, |r| &r.device_id),
                strs(rows, |r| &r.camera_id),
                i64s(rows, |r| r.ts),
                strs(rows, |r| &r.kind),
                strs(rows, |r| &r.plate),
                strs(rows, |r| &r.plate_pseudonym),
                strs(rows, |r| &r.image_ref),
                i64s(rows, |r| r.received_at),
                strs(rows, |r| &r.message_id),
                u64s(rows, |r| r.version),
            ],
        )
    }
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError> {
        let (id, device, camera, ts) = (
            c.str("event_id")?,
            c.str("device_id")?,
            c.str("camera_id")?,
            c.i64("ts")?,
        );
        let (kind, plate, pseudonym, image) = (
            c.str("kind")?,
            c.str("plate")?,
            c.str("plate_pseudonym")?,
            c.str("image_ref")?,
        );
        let (received, message, version) = (
            c.i64("received_at")?,
            c.str("message_id")?,
            c.u64("version")?,
        );
        Ok((0..c.len())
            .map(|i| EvidenceRow {
                event_id: id.value(i).to_string(),
                device_id: device.value(i).to_string(),
                camera_id: camera.value(i).to_string(),
                ts: ts.value(i),
                kind: kind.value(i).to_string(),
                plate: plate.value(i).to_string(),
                plate_pseudonym: pseudonym.value(i).to_string(),
                image_ref: image.value(i).to_string(),
                received_at: received.value(i),
                message_id: message.value(i).to_string(),
                version: version.value(i),
            })
            .collect())
    }
}

impl TableRow for QuarantineRow {
    const TABLE: Table = Table::CameraQuarantine;
    type Key = String;
    fn key(&self) -> Self::Key {
        self.message_id.clone()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn time(&self) -> i64 {
        self.received_at
    }
    fn rows(t: &Tables) -> &[Self] {
        &t.quarantine
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        use DataType::*;
        RecordBatch::try_new(
            schema(&[
                ("message_id", Utf8, false),
                ("code", Utf8, false),
                ("reason", Utf8, false),
                ("topic", Utf8, false),
                ("device_id", Utf8, false),
                ("received_at", Int64, false),
                ("raw_base64", Utf8, false),
                ("version", UInt64, false),
            ]),
            vec![
                strs(rows, |r| &r.message_id),
                strs(rows, |r| &r.code),
                strs(rows, |r| &r.reason),
                strs(rows, |r| &r.topic),
                strs(rows, |r| &r.device_id),
                i64s(rows, |r| r.received_at),
                strs(rows, |r| &r.raw_base64),
                u64s(rows, |r| r.version),
            ],
        )
    }
    fn from_batch(c: &Columns) -> Result<Vec<Self>, StoreError> {
        let (id, code, reason, topic) = (
            c.str("message_id")?,
            c.str("code")?,
            c.str("reason")?,
            c.str("topic")?,
        );
        let (device, received, raw, version) = (
            c.str("device_id")?,
            c.i64("received_at")?,
            c.str("raw_base64")?,
            c.u64("version")?,
        );
        Ok((0..c.len())
            .map(|i| QuarantineRow {
                message_id: id.value(i).to_string(),
                code: code.value(i).to_string(),
                reason: reason.value(i).to_string(),
                topic: topic.value(i).to_string(),
                device_id: device.value(i).to_string(),
                received_at: received.value(i),
                raw_base64: raw.value(i).to_string(),
                version: version.value(i),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ioc-hist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn reading(device: &str, ts: i64, value: f64, version: u64, quality: &str) -> ReadingRow {
        ReadingRow {
            device_id: device.into(),
            channel: "main".into(),
            metric: "pm25".into(),
            ts,
            value,
            unit: "ug/m3".into(),
            interval_s: (ts % 2 == 0).then_some(60.0),
            quality: quality.into(),
            quality_reason: String::new(),
            received_at: version as i64,
            message_id: format!("m{ts}"),
            version,
        }
    }

    fn all() -> HistoryFilter {
        HistoryFilter {
            device_id: None,
            metric: None,
            from: 0,
            to: i64::MAX,
            limit: 1_000_000,
            resolution: Resolution::Minute,
        }
    }

    #[tokio::test]
    async fn rows_and_checkpoint_commit_together_and_survive_reopen() {
        let dir = tmp("reopen");
        let h = EmbeddedHistory::open(&dir).unwrap();
        h.insert_readings((0..10).map(|i| reading("aq-1", i * 1000, i as f64, 1, "good")));
        h.insert_offsets(vec![OffsetRow {
            group_id: "g".into(),
            topic: "t".into(),
            partition: 0,
            next_offset: 10,
            version: 1,
            limiter: "as of 10".into(),
        }]);
        assert_eq!(
            h.readings(&all()).await.unwrap().len(),
            10,
            "visible before a flush"
        );
        h.flush().await.unwrap();
        // Written after the last flush: gone after a crash, rows and checkpoint alike.
        h.insert_readings(std::iter::once(reading("aq-1", 99_000, 1.0, 1, "good")));
        h.insert_offsets(vec![OffsetRow {
            group_id: "g".into(),
            topic: "t".into(),
            partition: 0,
            next_offset: 11,
            version: 2,
            limiter: "as of 11".into(),
        }]);
        drop(h);

        let h = EmbeddedHistory::open(&dir).unwrap();
        let rows = h.readings(&all()).await.unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[3], reading("aq-1", 3000, 3.0, 1, "good"));
        assert_eq!(
            h.offsets("g", "t"),
            vec![Position {
                partition: 0,
                next_offset: 10,
                limiter: "as of 10".into()
            }],
            "the position and the state beside it, as of the same flush"
        );
    }

    #[test]
    fn a_checkpoint_written_before_the_limiter_state_existed_still_reads() {
        let old = r#"{"offsets":[{"group_id":"g","topic":"t","partition":2,"next_offset":7,"version":1}],"closed_until":{}}"#;
        let checkpoint: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!(checkpoint.offsets[0].next_offset, 7);
        assert_eq!(checkpoint.offsets[0].limiter, "");
    }

    #[tokio::test]
    async fn the_highest_version_wins_across_files_and_memory_and_compaction() {
        let dir = tmp("dedup");
        let h = EmbeddedHistory::open(&dir).unwrap();
        // Many flushes of the same keys with rising versions: compaction kicks in.
        for v in 1..=(COMPACT_TRIGGER as u64 + 3) {
            h.insert_readings((0..5).map(|i| reading("aq-1", i * 1000, v as f64, v, "good")));
            h.flush().await.unwrap();
        }
        let files = h.state().manifest.files.len();
        assert!(files < COMPACT_TRIGGER, "compacted to {files} files");
        h.insert_readings(std::iter::once(reading("aq-1", 0, -1.0, 1, "good")));
        let rows = h.readings(&all()).await.unwrap();
        assert_eq!(rows.len(), 5);
        let top = COMPACT_TRIGGER as f64 + 3.0;
        assert!(rows.iter().all(|r| r.value == top), "{rows:?}");
        // A newer bad copy hides the older good one from good_values.
        h.insert_readings(std::iter::once(reading("aq-1", 1000, 0.0, 1000, "bad")));
        let good = h.good_values("aq-1", 0, 10_000).await.unwrap();
        assert_eq!(good.len(), 4);
    }

    #[tokio::test]
    async fn filters_by_device_metric_time_and_limit_in_time_order() {
        let dir = tmp("filter");
        let h = EmbeddedHistory::open(&dir).unwrap();
        h.insert_readings(
            (0..20).map(|i| reading(if i % 2 == 0 { "a" } else { "b" }, i * 1000, 0.0, 1, "good")),
        );
        h.flush().await.unwrap();
        let f = HistoryFilter {
            device_id: Some("a".into()),
            metric: Some("pm25".into()),
            from: 4000,
            to: 12_000,
            limit: 3,
            ..Default::default()
        };
        let ts: Vec<i64> = h.readings(&f).await.unwrap().iter().map(|r| r.ts).collect();
        assert_eq!(ts, vec![4000, 6000, 8000]);
        let none = HistoryFilter {
            metric: Some("no2".into()),
            ..f
        };
        assert!(h.readings(&none).await.unwrap().is_empty());
    }

    fn window(resolution: Resolution, start: i64, count: u64, version: u64) -> AggregateRow {
        AggregateRow {
            resolution,
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: "pm25".into(),
            window_start: start,
            window_end: start + resolution.ms(),
            value_count: count,
            value_sum: count as f64,
            value_min: 1.0,
            value_max: 1.0,
            value_mean: 1.0,
            capture: (count > 1).then_some(0.5),
            unit: "µg/m³".into(),
            version,
        }
    }

    #[tokio::test]
    async fn each_resolution_is_its_own_part_and_its_own_files() {
        let dir = tmp("resolutions");
        let h = EmbeddedHistory::open(&dir).unwrap();
        let day = 1_795_539_600_000;
        h.insert_aggregates(
            [
                window(Resolution::Day, day, 100, 1),
                window(Resolution::Minute, day + 3_600_000, 1, 1),
                window(Resolution::Hour, day + 3_600_000, 60, 1),
            ]
            .into_iter(),
        );
        h.flush().await.unwrap();
        // A revision of the day, as a roll-up re-derives it.
        h.insert_aggregates(std::iter::once(window(Resolution::Day, day, 101, 2)));
        h.flush().await.unwrap();
        let parts: Vec<(u8, i64)> = h
            .state()
            .manifest
            .files
            .iter()
            .map(|f| (f.part, f.min_time))
            .collect();
        assert_eq!(
            parts,
            vec![
                (0, day + 3_600_000),
                (2, day + 3_600_000),
                (3, day),
                (3, day)
            ]
        );
        drop(h);
        let h = EmbeddedHistory::open(&dir).unwrap();
        let f = |resolution| HistoryFilter {
            from: day,
            to: day + 86_400_000,
            limit: 100,
            resolution,
            ..Default::default()
        };
        let days = h.aggregates(&f(Resolution::Day)).await.unwrap();
        assert_eq!(
            days.iter()
                .map(|a| (a.resolution, a.count, a.capture))
                .collect::<Vec<_>>(),
            vec![(Resolution::Day, 101, Some(0.5))]
        );
        let minutes = h
            .windows(Resolution::Minute, &["aq-1".into()], day, day + 86_400_000)
            .await
            .unwrap();
        assert_eq!(minutes.len(), 1);
        assert_eq!(minutes[0].resolution, Resolution::Minute);
        assert!(h
            .windows(Resolution::Minute, &["aq-2".into()], day, day + 86_400_000)
            .await
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_aggregates_file_from_before_resolutions_reads_as_minutes_with_their_sum() {
        use DataType::*;
        let batch = RecordBatch::try_new(
            schema(&[
                ("device_id", Utf8, false),
                ("channel", Utf8, false),
                ("metric", Utf8, false),
                ("window_start", Int64, false),
                ("window_end", Int64, false),
                ("value_count", UInt64, false),
                ("value_min", Float64, false),
                ("value_max", Float64, false),
                ("value_mean", Float64, false),
                ("unit", Utf8, false),
                ("version", UInt64, false),
            ]),
            vec![
                Arc::new(StringArray::from(vec!["aq-1"])),
                Arc::new(StringArray::from(vec![""])),
                Arc::new(StringArray::from(vec!["pm25"])),
                Arc::new(Int64Array::from(vec![0])),
                Arc::new(Int64Array::from(vec![60_000])),
                Arc::new(UInt64Array::from(vec![4])),
                Arc::new(Float64Array::from(vec![1.0])),
                Arc::new(Float64Array::from(vec![4.0])),
                Arc::new(Float64Array::from(vec![2.5])),
                Arc::new(StringArray::from(vec!["µg/m³"])),
                Arc::new(UInt64Array::from(vec![7])),
            ],
        )
        .unwrap();
        let rows = AggregateRow::from_batch(&Columns {
            batch: &batch,
            path: Path::new("old.parquet"),
        })
        .unwrap();
        assert_eq!(
            (rows[0].resolution, rows[0].value_sum, rows[0].capture),
            (Resolution::Minute, 10.0, None)
        );
    }

    fn event(id: &str, ts: i64, version: u64) -> EventRow {
        EventRow {
            event_id: id.into(),
            device_id: "cam-1".into(),
            ts,
            kind: "red_light".into(),
            attributes: format!("{{\"v\":{version}}}"),
            received_at: version as i64,
            message_id: format!("m{version}"),
            version,
        }
    }

    #[tokio::test]
    async fn events_are_one_row_per_id_across_commits_and_reopen_and_evidence_is_its_own_table() {
        let dir = tmp("events");
        let store = EmbeddedHistory::open(&dir).unwrap();
        store.insert_events([event("e1", 1_000, 1), event("e2", 2_000, 1)].into_iter());
        store.flush().await.unwrap();
        // A resent event: same id, later copy.
        store.insert_events([event("e1", 1_000, 5)].into_iter());
        store.insert_evidence(
            [EvidenceRow {
                event_id: "e1".into(),
                device_id: "cam-1".into(),
                camera_id: "CAM-1".into(),
                ts: 1_000,
                kind: "red_light".into(),
                plate: "47A-123.45".into(),
                plate_pseudonym: "p_x".into(),
                image_ref: "s3://x".into(),
                received_at: 5,
                message_id: "m5".into(),
                version: 5,
            }]
            .into_iter(),
        );
        store.flush().await.unwrap();
        drop(store);
        let store = EmbeddedHistory::open(&dir).unwrap();
        let f = HistoryFilter {
            from: 0,
            to: 10_000,
            limit: 100,
            ..Default::default()
        };
        let events = store.events(&f).await.unwrap();
        let got: Vec<(&str, u64)> = events
            .iter()
            .map(|e| (e.event_id.as_str(), e.version))
            .collect();
        assert_eq!(
            got,
            vec![("e2", 1), ("e1", 5)],
            "newest first, one row per event id"
        );
        let evidence = std::fs::read_dir(dir.join("evidence")).unwrap().count();
        assert_eq!(evidence, 1);
        let in_events: Vec<u8> = std::fs::read_dir(dir.join("events"))
            .unwrap()
            .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(!String::from_utf8_lossy(&in_events).contains("47A"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
