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

use std::any::Any;

use ioc_contract::{Aggregate, Alert, Resolution};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::record::{Keeping, Record, Table};
use crate::{
    AggregateRow, AlertRow, GoodValueRow, HistoryFilter, OffsetRow, Position, ReadingRow,
    WatermarkRow,
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

/// The tables kept in files (the others live in the manifest's checkpoint).
fn file_tables() -> impl Iterator<Item = Table> {
    crate::tables()
        .into_iter()
        .filter(|t| t.keeping == Keeping::Files)
}

/// Merges files of one table into one, deduplicated: compaction, for a table whose row type
/// only [`Table::merge`] knows.
pub(crate) type MergeFn = fn(&Path, &mut Manifest, &[FileEntry]) -> Result<(), StoreError>;

pub(crate) fn merge<R: Record>(
    dir: &Path,
    next: &mut Manifest,
    files: &[FileEntry],
) -> Result<(), StoreError> {
    write_table(dir, next, &dedup(read_files::<R>(dir, files)?))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    /// The table's name ([`Record::TABLE`]).
    #[serde(deserialize_with = "table_name")]
    table: String,
    /// Which part of the table the file holds ([`Record::part`]): files of the aggregates
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

/// A table's name in a manifest: manifests written before tables were defined with `record!`
/// spelled the camera quarantine `cameraquarantine`.
fn table_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    Ok(match name.as_str() {
        "cameraquarantine" => "camera_quarantine".to_string(),
        _ => name,
    })
}

/// The commit point: live files and the stream's checkpoint as of the same moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Manifest {
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

/// Rows not yet in files, per table, each of its record type.
#[derive(Default)]
struct Tables(BTreeMap<&'static str, Box<dyn Pending>>);

/// One table's rows in memory.
trait Pending: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn is_empty(&self) -> bool;
    /// Puts `later`'s rows (of the same type) after these.
    fn append(&mut self, later: &mut dyn Pending);
    fn write(&self, dir: &Path, manifest: &mut Manifest) -> Result<(), StoreError>;
    fn boxed_clone(&self) -> Box<dyn Pending>;
}

impl<R: Record> Pending for Vec<R> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn is_empty(&self) -> bool {
        self.is_empty()
    }
    fn append(&mut self, later: &mut dyn Pending) {
        if let Some(later) = later.as_any_mut().downcast_mut::<Vec<R>>() {
            Vec::append(self, later);
        }
    }
    fn write(&self, dir: &Path, manifest: &mut Manifest) -> Result<(), StoreError> {
        write_table(dir, manifest, self)
    }
    fn boxed_clone(&self) -> Box<dyn Pending> {
        Box::new(self.clone())
    }
}

impl Clone for Tables {
    fn clone(&self) -> Self {
        Tables(self.0.iter().map(|(k, v)| (*k, v.boxed_clone())).collect())
    }
}

impl Tables {
    fn is_empty(&self) -> bool {
        self.0.values().all(|t| t.is_empty())
    }

    fn rows<R: Record>(&self) -> &[R] {
        self.0
            .get(R::TABLE)
            .and_then(|t| t.as_any().downcast_ref::<Vec<R>>())
            .map_or(&[], |v| v.as_slice())
    }

    fn push<R: Record>(&mut self, rows: impl IntoIterator<Item = R>) -> usize {
        let table = self
            .0
            .entry(R::TABLE)
            .or_insert_with(|| Box::new(Vec::<R>::new()))
            .as_any_mut()
            .downcast_mut::<Vec<R>>()
            .expect("one record type per table name");
        let before = table.len();
        table.extend(rows);
        table.len() - before
    }

    /// Puts `later` after these rows.
    fn append(&mut self, later: &mut Tables) {
        for (name, rows) in std::mem::take(&mut later.0) {
            match self.0.get_mut(name) {
                Some(mine) => {
                    let mut rows = rows;
                    mine.append(rows.as_mut());
                }
                None => {
                    self.0.insert(name, rows);
                }
            }
        }
    }

    /// Writes every table's rows as new files listed in `manifest`.
    fn write(&self, dir: &Path, manifest: &mut Manifest) -> Result<(), StoreError> {
        self.0.values().try_for_each(|t| t.write(dir, manifest))
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
        for t in file_tables() {
            let d = dir.join(t.name);
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
        for t in file_tables() {
            let d = dir.join(t.name);
            for entry in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
                let rel = format!("{}/{}", t.name, entry.file_name().to_string_lossy());
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

    /// Writes rows of a table kept in files (visible to queries at once, durable at the next
    /// flush).
    pub fn insert<R: Record>(&self, rows: impl IntoIterator<Item = R>) -> usize {
        self.state().pending.push(rows)
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
        let parts: std::collections::HashSet<(String, u8)> = self
            .state()
            .manifest
            .files
            .iter()
            .map(|f| (f.table.clone(), f.part))
            .collect();
        for (table, part) in parts {
            let Some(merge) = file_tables().find(|t| t.name == table).map(|t| t.merge) else {
                continue;
            };
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
                merge(&dir, &mut next, &merged)?;
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
            tracing::debug!(table, files = small.len(), "compacted history files");
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

    /// Rows of one part of a table overlapping `[from, to)` that pass `keep` (on key fields
    /// only: it runs before deduplication), deduplicated by key. A file compacted away while
    /// the query ran is retried once against the newer manifest.
    async fn scan<R: Record>(
        &self,
        from: i64,
        to: i64,
        part: u8,
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
                            && f.part == part
                            && f.max_time >= from
                            && f.min_time < to
                    })
                    .cloned()
                    .collect();
                let in_range =
                    |r: &&R| r.part() == part && (from..to).contains(&r.time()) && keep(r);
                let memory: Vec<R> = s
                    .flushing
                    .rows::<R>()
                    .iter()
                    .chain(s.pending.rows::<R>())
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

    /// Rows of one table in the filter's range and part, narrowed by device and metric where
    /// the table has them, in time (newest first where the table says so) then key order.
    pub async fn query<R: Record>(&self, f: &HistoryFilter) -> Result<Vec<R>, StoreError> {
        let (device, metric) = (f.device_id.clone(), f.metric.clone());
        let resolution = Some(f.resolution.as_str().to_string());
        let regulation = f.regulation.clone();
        let any_of = f.any_of.clone();
        let matches = |r: &R, column: &str, wanted: &Option<String>| {
            wanted
                .as_deref()
                .is_none_or(|w| r.text(column).is_none_or(|v| v == w))
        };
        let mut rows = self
            .scan::<R>(f.from, f.to, R::filter_part(f), move |r| {
                matches(r, "device_id", &device)
                    && matches(r, "metric", &metric)
                    && matches(r, "resolution", &resolution)
                    && matches(r, "regulation", &regulation)
                    && any_of.iter().all(|(column, values)| {
                        r.text(column).is_none_or(|v| values.iter().any(|w| w == v))
                    })
            })
            .await?;
        rows.sort_by_cached_key(|r| {
            // `!t` orders as `-t` does, without overflow.
            let t = if R::NEWEST_FIRST { !r.time() } else { r.time() };
            (t, r.key())
        });
        rows.truncate(f.limit);
        Ok(rows)
    }

    pub async fn windows(
        &self,
        resolution: Resolution,
        devices: &[String],
        metrics: &[&str],
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let devices: std::collections::HashSet<String> = devices.iter().cloned().collect();
        let metrics: std::collections::HashSet<String> =
            metrics.iter().map(|m| m.to_string()).collect();
        let rows = self
            .scan::<AggregateRow>(from, to, resolution as u8, move |r| {
                devices.contains(&r.device_id)
                    && (metrics.is_empty() || metrics.contains(&r.metric))
            })
            .await?;
        Ok(rows.into_iter().map(Aggregate::from).collect())
    }

    pub async fn good_values(
        &self,
        device_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<GoodValueRow>, StoreError> {
        let device = device_id.to_string();
        let rows = self
            .scan::<ReadingRow>(from, to, 0, move |r| r.device_id == device)
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
            .scan::<AlertRow>(i64::MIN, i64::MAX, 0, |_| true)
            .await?;
        let mut latest: HashMap<(String, String), AlertRow> = HashMap::new();
        for r in rows {
            let key = (r.rule.clone(), r.instance.clone());
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
fn dedup<R: Record>(rows: Vec<R>) -> Vec<R> {
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
fn write_table<R: Record>(
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

fn write_file<R: Record>(
    dir: &Path,
    manifest: &mut Manifest,
    rows: &[R],
    part: u8,
) -> Result<(), StoreError> {
    let rel = format!("{}/{:012}.parquet", R::TABLE, manifest.next_file);
    manifest.next_file += 1;
    let path = dir.join(&rel);
    let batch = R::to_batch(rows).map_err(|source| StoreError::Arrow {
        path: path.clone(),
        source,
    })?;
    let file = File::create(&path).map_err(io(&path))?;
    // No column statistics: the manifest keeps each file's time range, which is all a query
    // prunes by, and min/max over string columns was a tenth of the stream's time.
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::None)
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
        table: R::TABLE.to_string(),
        part,
        file: rel,
        rows: rows.len() as u64,
        min_time: times.clone().min().unwrap_or(0),
        max_time: times.max().unwrap_or(0),
    });
    Ok(())
}

fn commit_manifest(dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    for t in file_tables() {
        let d = dir.join(t.name);
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

fn read_files<R: Record>(dir: &Path, files: &[FileEntry]) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::new();
    for f in files {
        out.extend(read_file::<R>(&dir.join(&f.file))?);
    }
    Ok(out)
}

fn read_file<R: Record>(path: &Path) -> Result<Vec<R>, StoreError> {
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
        out.extend(R::from_batch(&batch).map_err(|column| StoreError::Column {
            path: path.to_path_buf(),
            column,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventRow, EvidenceRow};
    use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
    use arrow_schema::{DataType, Field, Schema, SchemaRef};

    fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        ))
    }

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
            regulation: None,
            any_of: Vec::new(),
        }
    }

    #[tokio::test]
    async fn rows_and_checkpoint_commit_together_and_survive_reopen() {
        let dir = tmp("reopen");
        let h = EmbeddedHistory::open(&dir).unwrap();
        h.insert((0..10).map(|i| reading("aq-1", i * 1000, i as f64, 1, "good")));
        h.insert_offsets(vec![OffsetRow {
            group_id: "g".into(),
            topic: "t".into(),
            partition: 0,
            next_offset: 10,
            version: 1,
            limiter: "as of 10".into(),
        }]);
        assert_eq!(
            h.query::<ReadingRow>(&all()).await.unwrap().len(),
            10,
            "visible before a flush"
        );
        h.flush().await.unwrap();
        // Written after the last flush: gone after a crash, rows and checkpoint alike.
        h.insert(std::iter::once(reading("aq-1", 99_000, 1.0, 1, "good")));
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
        let rows = h.query::<ReadingRow>(&all()).await.unwrap();
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
            h.insert((0..5).map(|i| reading("aq-1", i * 1000, v as f64, v, "good")));
            h.flush().await.unwrap();
        }
        let files = h.state().manifest.files.len();
        assert!(files < COMPACT_TRIGGER, "compacted to {files} files");
        h.insert(std::iter::once(reading("aq-1", 0, -1.0, 1, "good")));
        let rows = h.query::<ReadingRow>(&all()).await.unwrap();
        assert_eq!(rows.len(), 5);
        let top = COMPACT_TRIGGER as f64 + 3.0;
        assert!(rows.iter().all(|r| r.value == top), "{rows:?}");
        // A newer bad copy hides the older good one from good_values.
        h.insert(std::iter::once(reading("aq-1", 1000, 0.0, 1000, "bad")));
        let good = h.good_values("aq-1", 0, 10_000).await.unwrap();
        assert_eq!(good.len(), 4);
    }

    #[tokio::test]
    async fn filters_by_device_metric_time_and_limit_in_time_order() {
        let dir = tmp("filter");
        let h = EmbeddedHistory::open(&dir).unwrap();
        h.insert(
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
        let ts: Vec<i64> = h
            .query::<ReadingRow>(&f)
            .await
            .unwrap()
            .iter()
            .map(|r| r.ts)
            .collect();
        assert_eq!(ts, vec![4000, 6000, 8000]);
        let none = HistoryFilter {
            metric: Some("no2".into()),
            ..f
        };
        assert!(h.query::<ReadingRow>(&none).await.unwrap().is_empty());
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
        h.insert(
            [
                window(Resolution::Day, day, 100, 1),
                window(Resolution::Minute, day + 3_600_000, 1, 1),
                window(Resolution::Hour, day + 3_600_000, 60, 1),
            ]
            .into_iter(),
        );
        h.flush().await.unwrap();
        // A revision of the day, as a roll-up re-derives it.
        h.insert(std::iter::once(window(Resolution::Day, day, 101, 2)));
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
        let days: Vec<Aggregate> = h
            .query::<AggregateRow>(&f(Resolution::Day))
            .await
            .unwrap()
            .into_iter()
            .map(Aggregate::from)
            .collect();
        assert_eq!(
            days.iter()
                .map(|a| (a.resolution, a.count, a.capture))
                .collect::<Vec<_>>(),
            vec![(Resolution::Day, 101, Some(0.5))]
        );
        let minutes = h
            .windows(
                Resolution::Minute,
                &["aq-1".into()],
                &[],
                day,
                day + 86_400_000,
            )
            .await
            .unwrap();
        assert_eq!(minutes.len(), 1);
        assert_eq!(minutes[0].resolution, Resolution::Minute);
        // Only the metrics asked for, when some are.
        let of = |metric: &'static str| {
            let h = &h;
            async move {
                h.windows(
                    Resolution::Minute,
                    &["aq-1".into()],
                    &[metric],
                    day,
                    day + 86_400_000,
                )
                .await
                .unwrap()
                .len()
            }
        };
        assert_eq!((of("pm25").await, of("no2").await), (1, 0));
        assert!(h
            .windows(
                Resolution::Minute,
                &["aq-2".into()],
                &[],
                day,
                day + 86_400_000
            )
            .await
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_manifest_from_before_record_definitions_names_the_quarantine_as_its_table() {
        let entry: FileEntry = serde_json::from_str(
            r#"{"table":"cameraquarantine","file":"camera_quarantine/000000000003.parquet","rows":1,"min_time":0,"max_time":9}"#,
        )
        .unwrap();
        assert_eq!((entry.table.as_str(), entry.part), ("camera_quarantine", 0));
        assert!(file_tables().any(|t| t.name == entry.table));
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
        let rows = AggregateRow::from_batch(&batch).unwrap();
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
        store.insert([event("e1", 1_000, 1), event("e2", 2_000, 1)].into_iter());
        store.flush().await.unwrap();
        // A resent event: same id, later copy.
        store.insert([event("e1", 1_000, 5)].into_iter());
        store.insert(
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
        let events = store.query::<EventRow>(&f).await.unwrap();
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
