//! The embedded bus of `ioc up`: one append-only log per topic under a directory, one partition
//! each, with Kafka's semantics where the stages rely on them (offsets, reading from an offset,
//! tailing, a send that resolves once the record is durable).
//!
//! Durability: `send` appends to an in-memory buffer; a flusher writes every topic's buffer and
//! `fsync`s it each `flush_interval` (or sooner when a buffer passes [`EARLY_FLUSH_BYTES`]).
//! A send resolves only after its record's fsync, and readers see only durable records, so the
//! stream never consumes something a crash could take back. What a crash can lose is exactly
//! what was buffered since the last flush.
//!
//! On disk: `<dir>/<topic>/<base offset, 20 digits>.log` segments of framed records:
//! `len u32 | crc32 u32 | offset i64 | key_len u32 | key | payload`, little-endian, `len`
//! counting everything after itself and the CRC covering everything after the CRC. Opening a
//! log truncates a torn tail (a crash mid-write) at the last whole record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ioc_contract::Topics;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// A buffer this large is flushed without waiting for the interval.
pub const EARLY_FLUSH_BYTES: usize = 4 << 20;
/// Segments roll past this size by default; retention deletes whole closed segments.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 4 + 4 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("bus log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no topic {0} in the embedded bus")]
    NoSuchTopic(String),
    #[error("the embedded bus is closed")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Settings of the embedded log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub flush_interval: Duration,
    /// Closed segments older than this are deleted (never the registry's or the audit log's).
    pub retention: Duration,
    /// A segment rolls once it is this large ([`SEGMENT_BYTES`]).
    pub segment_bytes: u64,
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Segment {
    base: i64,
    path: PathBuf,
}

/// Writer-side state of one topic: records appended since the last flush.
struct Pending {
    next_offset: i64,
    buf: Vec<u8>,
}

/// The file being appended to; only the flusher touches it.
struct Active {
    file: File,
    base: i64,
    len: u64,
}

struct TopicLog {
    name: String,
    dir: PathBuf,
    keep_forever: bool,
    segment_bytes: u64,
    pending: Mutex<Pending>,
    active: Mutex<Active>,
    segments: RwLock<Vec<Segment>>,
    /// Offsets below this are on disk and fsynced.
    durable: watch::Sender<i64>,
}

/// What the embedded log counts (`ioc_bus_*`).
#[derive(Clone)]
struct LogMetrics {
    durable_offset: prometheus::IntGaugeVec,
    flushes: prometheus::IntCounter,
    flushed_bytes: prometheus::IntCounter,
}

/// The embedded log of every topic of a deployment. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedLog {
    topics: Arc<HashMap<String, Arc<TopicLog>>>,
    flush_now: Arc<Notify>,
    options: LogOptions,
    closed: CancellationToken,
    metrics: Arc<std::sync::OnceLock<LogMetrics>>,
    /// Set on shutdown: every send asks for a flush instead of waiting for the interval.
    eager: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("topics", &self.topics.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log of every topic in `topics` under `dir`, repairing a
    /// torn tail. Call [`EmbeddedLog::start_flusher`] to make sends durable.
    pub fn open(dir: &Path, topics: &Topics, options: LogOptions) -> Result<EmbeddedLog, LogError> {
        let mut map = HashMap::new();
        for name in topics.all() {
            let log = TopicLog::open(
                &dir.join(name),
                name,
                name == topics.registry || name == topics.audit || name == topics.rules,
                options.segment_bytes,
            )?;
            map.insert(name.to_string(), Arc::new(log));
        }
        Ok(EmbeddedLog {
            topics: Arc::new(map),
            flush_now: Arc::new(Notify::new()),
            options,
            closed: CancellationToken::new(),
            metrics: Arc::default(),
            eager: Arc::default(),
        })
    }

    /// Registers `ioc_bus_durable_offset{topic}` (records below it are fsynced: the loss
    /// window's edge), `ioc_bus_flushes_total` and `ioc_bus_flushed_bytes_total`.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let durable_offset = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "ioc_bus_durable_offset",
                "Per topic, the offset below which every record is fsynced",
            ),
            &["topic"],
        )?;
        let flushes =
            prometheus::IntCounter::new("ioc_bus_flushes_total", "Flushes that wrote records")?;
        let flushed_bytes = prometheus::IntCounter::new(
            "ioc_bus_flushed_bytes_total",
            "Bytes written and fsynced",
        )?;
        registry.register(Box::new(durable_offset.clone()))?;
        registry.register(Box::new(flushes.clone()))?;
        registry.register(Box::new(flushed_bytes.clone()))?;
        for (name, log) in self.topics.iter() {
            durable_offset
                .with_label_values(&[name.as_str()])
                .set(*log.durable.borrow());
        }
        let _ = self.metrics.set(LogMetrics {
            durable_offset,
            flushes,
            flushed_bytes,
        });
        Ok(())
    }

    fn topic(&self, name: &str) -> Result<&Arc<TopicLog>, LogError> {
        self.topics
            .get(name)
            .ok_or_else(|| LogError::NoSuchTopic(name.to_string()))
    }

    /// Appends a record and resolves with its offset once it is durable.
    pub async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<i64, LogError> {
        let log = self.topic(topic)?;
        let (offset, big) = {
            let mut p = log.pending.lock().unwrap_or_else(|e| e.into_inner());
            let offset = p.next_offset;
            p.next_offset += 1;
            encode(&mut p.buf, offset, key, payload);
            (offset, p.buf.len() >= EARLY_FLUSH_BYTES)
        };
        // Registry writes are rare and someone is waiting on each (an API call).
        if big || log.keep_forever || self.eager.load(std::sync::atomic::Ordering::Relaxed) {
            self.flush_now.notify_one();
        }
        let mut durable = log.durable.subscribe();
        tokio::select! {
            r = durable.wait_for(|d| *d > offset) => r.map(|_| offset).map_err(|_| LogError::Closed),
            _ = self.closed.cancelled() => {
                // Closing flushes first; the record may have made it.
                if *log.durable.borrow() > offset { Ok(offset) } else { Err(LogError::Closed) }
            }
        }
    }

    /// From now on, flush as soon as anything is sent (and now): for shutdown, so that draining
    /// stages do not wait out the interval.
    pub fn flush_eagerly(&self) {
        self.eager.store(true, std::sync::atomic::Ordering::Relaxed);
        self.flush_now.notify_one();
    }

    /// The offset the next durable record of `topic` will have (Kafka's high watermark).
    pub fn durable_end(&self, topic: &str) -> Result<i64, LogError> {
        Ok(*self.topic(topic)?.durable.borrow())
    }

    /// The first offset `topic` still holds (records before it went with retention).
    pub fn first_offset(&self, topic: &str) -> Result<i64, LogError> {
        Ok(self.topic(topic)?.first_offset())
    }

    /// Writes and fsyncs every topic's buffered records. Blocking file I/O.
    pub fn flush(&self) -> Result<(), LogError> {
        for (name, log) in self.topics.iter() {
            let bytes = log.flush()?;
            if let (Some(m), true) = (self.metrics.get(), bytes > 0) {
                m.flushes.inc();
                m.flushed_bytes.inc_by(bytes as u64);
                m.durable_offset
                    .with_label_values(&[name.as_str()])
                    .set(*log.durable.borrow());
            }
        }
        Ok(())
    }

    /// Flushes every `flush_interval` (or early, on a large buffer) until `shutdown`, then
    /// flushes once more and closes the log to senders still waiting.
    pub fn start_flusher(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut retention_check = tokio::time::Instant::now();
            loop {
                let stop = tokio::select! {
                    _ = tokio::time::sleep(log.options.flush_interval) => false,
                    _ = log.flush_now.notified() => false,
                    _ = shutdown.cancelled() => true,
                };
                let l = log.clone();
                let flushed = tokio::task::spawn_blocking(move || l.flush()).await;
                match flushed {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        // Senders keep waiting; the next flush retries the same bytes.
                        tracing::error!(error = %e, "embedded bus flush failed; retrying");
                    }
                    Err(e) => tracing::error!(error = %e, "embedded bus flush task failed"),
                }
                if stop {
                    log.closed.cancel();
                    return;
                }
                if retention_check.elapsed() > Duration::from_secs(60) {
                    retention_check = tokio::time::Instant::now();
                    for t in log.topics.values() {
                        t.apply_retention(log.options.retention);
                    }
                }
            }
        })
    }

    /// A reader of `topic` starting at `from` (clamped to what the log holds).
    pub fn reader(&self, topic: &str, from: LogStart) -> Result<LogReader, LogError> {
        let log = self.topic(topic)?.clone();
        let durable = log.durable.subscribe();
        let start = match from {
            LogStart::Beginning => log.first_offset(),
            LogStart::End => *durable.borrow(),
            LogStart::Offset(o) => {
                let first = log.first_offset();
                if o < first {
                    tracing::warn!(topic = %log.name, requested = o, first, "records before the first retained offset are gone (retention); reading from the first");
                }
                o.max(first)
            }
        };
        Ok(LogReader {
            log,
            durable,
            next: start,
            cursor: None,
        })
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    Beginning,
    End,
    Offset(i64),
}

fn encode(buf: &mut Vec<u8>, offset: i64, key: &[u8], payload: &[u8]) {
    let len = (4 + 8 + 4 + key.len() + payload.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads one framed record; `Ok(None)` at a clean end or a torn/corrupt tail.
fn decode(r: &mut impl Read) -> std::io::Result<Option<(LogRecord, u64)>> {
    let mut head = [0u8; HEADER];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let offset = i64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let key_len = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
    if len < 16 || key_len > len - 16 {
        return Ok(None);
    }
    let mut body = vec![0u8; len - 16];
    match r.read_exact(&mut body) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[8..]);
    hasher.update(&body);
    if hasher.finalize() != crc {
        return Ok(None);
    }
    let payload = body.split_off(key_len);
    Ok(Some((
        LogRecord {
            offset,
            key: body,
            payload,
        },
        (4 + len) as u64,
    )))
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

impl TopicLog {
    fn open(
        dir: &Path,
        name: &str,
        keep_forever: bool,
        segment_bytes: u64,
    ) -> Result<TopicLog, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments: Vec<Segment> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let base = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some(Segment { base, path })
            })
            .collect();
        segments.sort_by_key(|s| s.base);
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            File::create(&path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            segments.push(Segment { base: 0, path });
        }
        // Earlier segments were fsynced before the next was created; only the last can be torn.
        let last = segments.last().expect("one segment").clone();
        let (next_offset, valid_len) = scan(&last)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(io_err(&last.path))?;
        let len = file.metadata().map_err(io_err(&last.path))?.len();
        if len > valid_len {
            tracing::warn!(topic = name, segment = %last.path.display(), kept = valid_len, dropped_bytes = len - valid_len, "bus log had a torn tail (a crash mid-write); truncated to the last whole record");
            file.set_len(valid_len).map_err(io_err(&last.path))?;
            file.sync_all().map_err(io_err(&last.path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(&last.path))?;
        let (durable, _) = watch::channel(next_offset);
        Ok(TopicLog {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            keep_forever,
            segment_bytes,
            pending: Mutex::new(Pending {
                next_offset,
                buf: Vec::new(),
            }),
            active: Mutex::new(Active {
                file,
                base: last.base,
                len: valid_len,
            }),
            segments: RwLock::new(segments),
            durable,
        })
    }

    fn first_offset(&self) -> i64 {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map_or(0, |s| s.base)
    }

    /// Writes and fsyncs the buffered records; returns how many bytes.
    fn flush(&self) -> Result<usize, LogError> {
        // One flusher at a time per topic: the active lock is held across write and fsync.
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let (bytes, end) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut p.buf), p.next_offset)
        };
        if bytes.is_empty() {
            return Ok(0);
        }
        let path = segment_path(&self.dir, active.base);
        let written = active
            .file
            .write_all(&bytes)
            .and_then(|_| active.file.sync_data());
        if let Err(e) = written {
            // Put the bytes back in front so that nothing is skipped on the retry; a partial
            // write is cut back to the last durable length.
            let _ = active.file.set_len(active.len);
            let _ = active.file.seek(SeekFrom::End(0));
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let mut restored = bytes;
            restored.extend_from_slice(&p.buf);
            p.buf = restored;
            return Err(LogError::Io { path, source: e });
        }
        active.len += bytes.len() as u64;
        self.durable.send_replace(end);
        if active.len >= self.segment_bytes {
            let path = segment_path(&self.dir, end);
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            sync_dir(&self.dir)?;
            *active = Active {
                file,
                base: end,
                len: 0,
            };
            self.segments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(Segment { base: end, path });
        }
        Ok(bytes.len())
    }

    fn apply_retention(&self, retention: Duration) {
        if self.keep_forever {
            return;
        }
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        while segments.len() > 1 {
            let old = &segments[0];
            let expired = std::fs::metadata(&old.path)
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > retention)
                .unwrap_or(false);
            if !expired {
                break;
            }
            // Readers holding it open keep reading; new readers start at the next segment.
            if let Err(e) = std::fs::remove_file(&old.path) {
                tracing::warn!(error = %e, segment = %old.path.display(), "could not delete an expired bus segment");
                break;
            }
            tracing::info!(topic = %self.name, segment = %old.path.display(), "deleted a bus segment past retention");
            segments.remove(0);
        }
    }
}

/// Scans a segment: the next offset after its last whole record, and the byte length of its
/// whole records.
fn scan(segment: &Segment) -> Result<(i64, u64), LogError> {
    let file = File::open(&segment.path).map_err(io_err(&segment.path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut next, mut len) = (segment.base, 0u64);
    while let Some((record, size)) = decode(&mut reader).map_err(io_err(&segment.path))? {
        next = record.offset + 1;
        len += size;
    }
    Ok((next, len))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A position in one segment file.
struct Cursor {
    base: i64,
    reader: BufReader<File>,
}

/// Reads one topic's durable records in order from a start offset.
pub struct LogReader {
    log: Arc<TopicLog>,
    durable: watch::Receiver<i64>,
    next: i64,
    cursor: Option<Cursor>,
}

impl LogReader {
    pub fn topic(&self) -> &str {
        &self.log.name
    }

    /// The offset of the next record this reader returns.
    pub fn position(&self) -> i64 {
        self.next
    }

    /// Whether a durable record is ready to read without waiting.
    pub fn ready(&self) -> bool {
        *self.durable.borrow() > self.next
    }

    /// Waits until a record past this reader's position is durable.
    pub async fn wait(&mut self) -> Result<(), LogError> {
        let next = self.next;
        self.durable
            .wait_for(|d| *d > next)
            .await
            .map(|_| ())
            .map_err(|_| LogError::Closed)
    }

    /// The next durable record, or `None` if there is none yet. Blocking file I/O (page cache).
    pub fn try_next(&mut self) -> Result<Option<LogRecord>, LogError> {
        if !self.ready() {
            return Ok(None);
        }
        loop {
            let cursor = match self.cursor.take() {
                Some(c) => c,
                None => self.open_at(self.next)?,
            };
            let mut cursor = cursor;
            let path = segment_path(&self.log.dir, cursor.base);
            match decode(&mut cursor.reader).map_err(io_err(&path))? {
                Some((record, _)) if record.offset >= self.next => {
                    self.next = record.offset + 1;
                    self.cursor = Some(cursor);
                    return Ok(Some(record));
                }
                Some(_) => self.cursor = Some(cursor), // before the start: skip
                None => {
                    // End of this segment: the record is in the next one.
                    let segments = self.log.segments.read().unwrap_or_else(|e| e.into_inner());
                    match segments.iter().find(|s| s.base > cursor.base) {
                        Some(s) if s.base <= self.next => {
                            let base = s.base;
                            drop(segments);
                            self.cursor = Some(self.open_segment(base)?);
                        }
                        _ => {
                            // Durable but unread from this handle's buffer: reopen and retry.
                            drop(segments);
                            self.cursor = None;
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// The next durable record, waiting for one.
    pub async fn next(&mut self) -> Result<LogRecord, LogError> {
        loop {
            if let Some(r) = self.try_next()? {
                return Ok(r);
            }
            if self.ready() {
                // A segment boundary raced with a flush; yield and look again.
                tokio::task::yield_now().await;
                continue;
            }
            self.wait().await?;
        }
    }

    fn open_at(&self, offset: i64) -> Result<Cursor, LogError> {
        let base = {
            let segments = self.log.segments.read().unwrap_or_else(|e| e.into_inner());
            segments
                .iter()
                .rev()
                .find(|s| s.base <= offset)
                .or(segments.first())
                .map_or(0, |s| s.base)
        };
        self.open_segment(base)
    }

    fn open_segment(&self, base: i64) -> Result<Cursor, LogError> {
        let path = segment_path(&self.log.dir, base);
        let file = File::open(&path).map_err(io_err(&path))?;
        Ok(Cursor {
            base,
            reader: BufReader::with_capacity(256 << 10, file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> LogOptions {
        LogOptions {
            flush_interval: Duration::from_millis(5),
            retention: Duration::from_secs(3600),
            segment_bytes: SEGMENT_BYTES,
        }
    }

    #[tokio::test]
    async fn readers_cross_segments_and_retention_drops_old_ones_but_never_the_registry() {
        let dir = tmp("segments");
        let topics = Topics::with_prefix("t.");
        let small = LogOptions {
            segment_bytes: 1024,
            ..options()
        };
        let log = EmbeddedLog::open(&dir, &topics, small.clone()).unwrap();
        let stop = CancellationToken::new();
        let flusher = log.start_flusher(stop.clone());
        let mut tail = log.reader(&topics.readings, LogStart::End).unwrap();
        let body = [7u8; 100];
        for i in 0..100i64 {
            assert_eq!(log.send(&topics.readings, b"k", &body).await.unwrap(), i);
            log.send(&topics.registry, b"k", &body).await.unwrap();
        }
        for i in 0..100i64 {
            assert_eq!(tail.next().await.unwrap().offset, i);
        }
        stop.cancel();
        flusher.await.unwrap();
        let segments = std::fs::read_dir(dir.join(&topics.readings))
            .unwrap()
            .count();
        assert!(segments > 5, "{segments} segments");

        let log = EmbeddedLog::open(&dir, &topics, small).unwrap();
        assert_eq!(log.durable_end(&topics.readings).unwrap(), 100);
        let mut from_50 = log.reader(&topics.readings, LogStart::Offset(50)).unwrap();
        let offsets: Vec<i64> = (0..50)
            .map(|_| from_50.try_next().unwrap().unwrap().offset)
            .collect();
        assert_eq!(offsets, (50..100).collect::<Vec<_>>());

        for t in log.topics.values() {
            t.apply_retention(Duration::ZERO);
        }
        let first = log.first_offset(&topics.readings).unwrap();
        assert!(
            first > 90,
            "only the active segment is left: first offset {first}"
        );
        let mut oldest = log.reader(&topics.readings, LogStart::Beginning).unwrap();
        assert_eq!(oldest.try_next().unwrap().unwrap().offset, first);
        assert_eq!(
            log.first_offset(&topics.registry).unwrap(),
            0,
            "the registry is kept"
        );
        let mut registry = log.reader(&topics.registry, LogStart::Beginning).unwrap();
        assert_eq!(registry.try_next().unwrap().unwrap().offset, 0);
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ioc-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn sends_resolve_once_durable_and_survive_reopen_in_order() {
        let dir = tmp("reopen");
        let topics = Topics::with_prefix("t.");
        let log = EmbeddedLog::open(&dir, &topics, options()).unwrap();
        let stop = CancellationToken::new();
        let flusher = log.start_flusher(stop.clone());
        let mut reader = log.reader(&topics.readings, LogStart::Beginning).unwrap();
        for i in 0..100u32 {
            let off = log
                .send(&topics.readings, b"k", &i.to_le_bytes())
                .await
                .unwrap();
            assert_eq!(off, i as i64);
            assert!(log.durable_end(&topics.readings).unwrap() > off);
        }
        for i in 0..100u32 {
            let r = reader.next().await.unwrap();
            assert_eq!(
                (r.offset, r.payload.clone()),
                (i as i64, i.to_le_bytes().to_vec())
            );
        }
        stop.cancel();
        flusher.await.unwrap();

        let log = EmbeddedLog::open(&dir, &topics, options()).unwrap();
        assert_eq!(log.durable_end(&topics.readings).unwrap(), 100);
        let mut reader = log.reader(&topics.readings, LogStart::Offset(42)).unwrap();
        assert_eq!(reader.try_next().unwrap().unwrap().offset, 42);
        let mut end = log.reader(&topics.readings, LogStart::End).unwrap();
        assert!(end.try_next().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tmp("torn");
        let topics = Topics::with_prefix("t.");
        let log = EmbeddedLog::open(&dir, &topics, options()).unwrap();
        let stop = CancellationToken::new();
        let flusher = log.start_flusher(stop.clone());
        for i in 0..10u32 {
            log.send(&topics.alerts, b"", &i.to_le_bytes())
                .await
                .unwrap();
        }
        stop.cancel();
        flusher.await.unwrap();
        // A crash mid-write: half a record, then garbage in a record's CRC.
        let seg = segment_path(&dir.join(&topics.alerts), 0);
        let mut bytes = std::fs::read(&seg).unwrap();
        let whole = bytes.len();
        let mut partial = Vec::new();
        encode(&mut partial, 10, b"key", b"payload");
        bytes.extend_from_slice(&partial[..partial.len() / 2]);
        std::fs::write(&seg, &bytes).unwrap();

        let log = EmbeddedLog::open(&dir, &topics, options()).unwrap();
        assert_eq!(log.durable_end(&topics.alerts).unwrap(), 10);
        assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, whole);
        // The next record goes where the torn one was.
        let stop = CancellationToken::new();
        let flusher = log.start_flusher(stop.clone());
        assert_eq!(log.send(&topics.alerts, b"", b"x").await.unwrap(), 10);
        stop.cancel();
        flusher.await.unwrap();

        let mut flipped = std::fs::read(&seg).unwrap();
        let n = flipped.len();
        flipped[n - 1] ^= 0xff;
        std::fs::write(&seg, &flipped).unwrap();
        let log = EmbeddedLog::open(&dir, &topics, options()).unwrap();
        assert_eq!(
            log.durable_end(&topics.alerts).unwrap(),
            10,
            "a corrupt record is cut"
        );
    }

    #[tokio::test]
    async fn unflushed_records_are_invisible_to_readers() {
        let dir = tmp("invisible");
        let topics = Topics::with_prefix("t.");
        let log = EmbeddedLog::open(&dir, &topics, options()).unwrap();
        let mut reader = log.reader(&topics.readings, LogStart::Beginning).unwrap();
        let l = log.clone();
        let t = topics.readings.clone();
        let send = tokio::spawn(async move { l.send(&t, b"", b"a").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            reader.try_next().unwrap().is_none(),
            "no flusher, nothing durable"
        );
        assert!(!send.is_finished());
        log.flush().unwrap();
        assert_eq!(send.await.unwrap().unwrap(), 0);
        assert_eq!(reader.try_next().unwrap().unwrap().payload, b"a");
    }

    #[test]
    fn decoding_never_panics_on_garbage() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            encode(&mut buf, 1, b"key", b"some payload");
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = (seed >> 33) as usize % buf.len();
            buf[i] = (seed >> 13) as u8;
            buf.truncate((seed >> 40) as usize % (buf.len() + 1));
            let _ = decode(&mut &buf[..]);
        }
    }
}
