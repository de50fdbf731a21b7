//! `ioc stream`: readings in from the bus; raw history, window aggregates at 1 minute, 5
//! minutes, 1 hour and 1 day, and alerts out to the history store and the bus.
//!
//! The readings loop ([`run`]) reads a batch, passes it through its operators in a fixed
//! order, writes what they emitted, and checkpoints. The operators, each in its own file:
//! - [`limit`]: the fleet-wide per-device rate limit, decided first for each record, with its
//!   state checkpointed beside the offsets so a replay decides as before;
//! - [`recent`]: the duplicate-readings metric;
//! - [`quality`]: data-quality counts per series and minute, from the stored readings of the
//!   minutes whose windows closed (and of those a late reading lands in), and the resends
//!   found as the window engine is fed;
//! - [`windows`] and [`aggregate`]: 1-minute event-time windows, watermarks, lateness and the
//!   commit rule (pure), and the DataFusion query that aggregates closed and late windows;
//! - [`rollup`]: 5-minute, hourly and daily windows derived from the stored finer windows each
//!   time one is emitted (no state);
//! - [`aqi`]: hourly and daily VN_AQI of air-quality stations, derived from the stored hourly
//!   windows each time one is stored (no state);
//! - [`exceedance`]: QCVN 05 ambient and QCVN 40 wastewater exceedances over their averaging
//!   periods, judged again from the stored hourly windows each time one is stored (no state);
//! - [`forecast`]: each air station's PM2.5 for the 6 hours after each of its last stored
//!   hours, from its stored hourly windows (no state);
//! - [`stuck`]: runs of one value per series, from the 1-minute windows closed in order;
//! - [`alerts`]: the alert rules in force (`rules.rs`, built-in and configured), evaluated
//!   window by window over everything the batch emitted, each instance through its lifecycle
//!   (`lifecycle.rs`, pure); this process is the single writer of its devices' alerts, and
//!   applies the acknowledgements and manual resolutions the API sends for them.
//!
//! Per batch, in this order: rate limit; store raw readings; 1-minute windows; store them, then
//! derive and store each coarser resolution from the one stored before it; the AQI, the
//! exceedances and the forecasts of the stations whose hours were stored; alert rules over all
//! of it (and the devices' silence); publish the windows, AQI, forecasts, quality counts and
//! exceedances, then store the exceedances;
//! store, then publish, the alerts' transitions;
//! checkpoint each moved device's `closed_until`; checkpoint offsets up to what stored rows and
//! closed windows cover. A crash between any two steps repeats work idempotently and loses none.
//!
//! Between batches the loop applies the alert commands its devices received, and any new
//! version of the rules ([`reload`]: the `rules` topic, SIGHUP, a changed rules file).
//!
//! [`sink`]: beside that loop, the topics stored as they are (camera events, evidence,
//! quarantined camera messages), each with its own offset checkpoint.

pub mod aggregate;
pub mod alerts;
pub mod aqi;
pub mod exceedance;
pub mod forecast;
pub mod lifecycle;
pub mod limit;
pub mod quality;
pub mod recent;
pub mod reload;
pub mod rollup;
pub mod rules;
pub mod sink;
pub mod stuck;
#[cfg(test)]
mod tests;
pub mod traffic;
pub mod violations;
pub mod windows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ioc_bus::registry::RegistryView;
use ioc_bus::{Bus, Consumer, Producer, StartAt};
use ioc_config::StreamConfig;
use ioc_contract::rate::RateRule;
use ioc_contract::{
    window_start, Aggregate, AlertCommand, AlertReply, AlertTransition, DeadLetter, DeviceStatus,
    ReadingBatch, RejectCode, Resolution, WINDOW_MS,
};
use ioc_history::{
    AggregateRow, AlertRow, AqiRow, CopyRow, ExceedanceRow, ForecastRow, History, OffsetRow,
    Position, ReadingRow, Record, TrafficRecord, TrafficRow, TransitionRow, WatermarkRow,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use tokio_util::sync::CancellationToken;

use crate::aggregate::ClosingRows;
use crate::alerts::Alerts;
use crate::limit::FleetLimiter;
use crate::recent::Recent;
use crate::windows::{Observed, WindowEngine, WindowKey};

/// Reading keys remembered to count resends (`recent.rs`): a resend is counted if its original is
/// among this process's last 500 000 to 1 000 000 readings (about 10 to 20 MB).
const RECENT_READING_KEYS: usize = 500_000;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("bus: {0}")]
    Bus(#[from] ioc_bus::BusError),
    #[error("history: {0}")]
    History(#[from] ioc_history::HistoryError),
    #[error("invalid alert rules:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<rules::RuleProblem>),
    #[error("alert rules could not be evaluated: {0}")]
    Evaluation(#[from] datafusion::error::DataFusionError),
}

/// The stream's Prometheus metrics (`ioc_stream_*`).
#[derive(Clone)]
pub struct StreamMetrics {
    pub readings_consumed: IntCounter,
    pub duplicates: IntCounter,
    pub late_readings: IntCounter,
    pub unreadable_records: IntCounter,
    pub windows_closed: IntCounter,
    pub aggregates_emitted: IntCounter,
    pub alerts_emitted: IntCounter,
    pub store_retries: IntCounter,
    pub commits: IntCounter,
    pub offset_gaps: IntCounter,
    pub open_windows: IntGauge,
    /// Rows the sinks stored, by table.
    pub records_stored: IntCounterVec,
    pub duplicate_events: IntCounter,
    pub rate_limited: IntCounter,
}

impl StreamMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<StreamMetrics> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let open_windows = IntGauge::new("ioc_stream_open_windows", "Windows open in memory")?;
        registry.register(Box::new(open_windows.clone()))?;
        let records_stored = IntCounterVec::new(
            prometheus::Opts::new(
                "ioc_stream_records_stored_total",
                "Events, evidence and quarantined camera messages stored (replays included)",
            ),
            &["table"],
        )?;
        registry.register(Box::new(records_stored.clone()))?;
        Ok(StreamMetrics {
            readings_consumed: counter(
                "ioc_stream_readings_consumed_total",
                "Readings consumed from the bus",
            )?,
            duplicates: counter(
                "ioc_stream_duplicate_readings_total",
                "Readings resent with a key seen lately, whatever their quality or lateness (absorbed by the key)",
            )?,
            late_readings: counter(
                "ioc_stream_late_readings_total",
                "Good readings for windows already closed (re-emitted)",
            )?,
            unreadable_records: counter(
                "ioc_stream_unreadable_records_total",
                "Bus records that were not a readings batch",
            )?,
            windows_closed: counter(
                "ioc_stream_windows_closed_total",
                "Windows closed in event-time order",
            )?,
            aggregates_emitted: counter(
                "ioc_stream_aggregates_emitted_total",
                "Aggregates stored and published (re-emissions included)",
            )?,
            alerts_emitted: counter(
                "ioc_stream_alert_transitions_total",
                "Alert transitions (fired, acknowledged, resolved) stored and published (a replay's repeats included)",
            )?,
            store_retries: counter(
                "ioc_stream_store_retries_total",
                "History or bus writes that failed and were retried",
            )?,
            commits: counter(
                "ioc_stream_offset_checkpoints_total",
                "Offset checkpoints written",
            )?,
            offset_gaps: counter(
                "ioc_stream_offset_gaps_total",
                "Records the bus skipped between consecutive reads of a partition",
            )?,
            open_windows,
            records_stored,
            duplicate_events: counter(
                "ioc_stream_duplicate_events_total",
                "Camera events resent with an event id already stored (absorbed)",
            )?,
            rate_limited: counter(
                "ioc_stream_rate_limited_messages_total",
                "Readings records (dead-lettered) and camera events (quarantined) over their device's fleet-wide rate, as rate_limited (a restart's replay counts its span again)",
            )?,
        })
    }
}

/// One consumed bus record's readings.
struct Consumed {
    partition: i32,
    offset: i64,
    batch: Option<ReadingBatch>,
}

/// Monotonic versions for re-emitted aggregates and alerts: wall-clock microseconds, strictly
/// increasing within the process.
struct VersionClock(u64);

impl VersionClock {
    fn next(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.0 = now.max(self.0 + 1);
        self.0
    }
}

/// What the stream needs to know of the fleet beyond its own `[stream]` section: the registry
/// (followed by the composition root: window capture needs each device's `expected_interval_s`),
/// the rate limit ingest applies, and the local day's offset from UTC.
#[derive(Clone)]
pub struct Fleet {
    pub limit: DeviceLimit,
    pub registry: RegistryView,
    /// `ingest.local_utc_offset`: daily windows are local days.
    pub utc_offset_ms: i64,
    /// The limits stations are held to (`[regulation]`).
    pub limits: std::sync::Arc<ioc_config::RegulationConfig>,
}

impl Fleet {
    pub fn of(config: &ioc_config::Config, registry: RegistryView) -> Fleet {
        Fleet {
            limit: DeviceLimit::of(&config.ingest),
            registry,
            utc_offset_ms: config.ingest.utc_offset_ms(),
            limits: std::sync::Arc::new(config.regulation.clone()),
        }
    }

    /// A device's expected interval between readings, as the registry has it now.
    fn expected_interval_s(&self, device_id: &str) -> Option<f64> {
        self.registry.get(device_id).map(|d| d.expected_interval_s)
    }
}

/// What makes an hour and a day count for the AQI and exceedance operators: `stream.min_hour_capture`,
/// `stream.min_day_hours` (AQI), `stream.min_day_hours_qcvn`, and the local day's offset.
#[derive(Debug, Clone, Copy)]
pub struct RegulatorySettings {
    pub min_hour_capture: f64,
    pub min_day_hours_aqi: usize,
    pub min_day_hours_qcvn: usize,
    pub utc_offset_ms: i64,
}

impl RegulatorySettings {
    pub fn of(config: &StreamConfig, fleet: &Fleet) -> RegulatorySettings {
        RegulatorySettings {
            min_hour_capture: config.min_hour_capture,
            min_day_hours_aqi: config.min_day_hours,
            min_day_hours_qcvn: config.min_day_hours_qcvn,
            utc_offset_ms: fleet.utc_offset_ms,
        }
    }

    /// The local calendar date of an instant (epoch ms): what a limit's `from` applies on.
    pub fn local_date(&self, ms: i64) -> chrono::NaiveDate {
        chrono::DateTime::from_timestamp_millis(ms + self.utc_offset_ms)
            .unwrap_or_default()
            .date_naive()
    }
}

/// The per-device rate limit the stream holds the whole fleet to: `ingest.device_rate_limit`
/// messages per second with bursts of `ingest.device_burst` (0: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceLimit {
    pub rate: f64,
    pub burst: f64,
}

impl DeviceLimit {
    /// The limit configured for ingest, which the stream holds the fleet to.
    pub fn of(ingest: &ioc_config::IngestConfig) -> DeviceLimit {
        DeviceLimit {
            rate: ingest.device_rate_limit,
            burst: ingest.device_burst,
        }
    }

    fn rule(self) -> Option<RateRule> {
        RateRule::new(self.rate, self.burst)
    }

    /// The dead letter of a bus record over the limit: the record's own bytes (the MQTT bytes
    /// are not kept past ingest), and the topic it was read from.
    fn letter(
        self,
        topic: &str,
        device_id: &str,
        received_at: i64,
        message_id: &str,
        record: &[u8],
    ) -> DeadLetter {
        DeadLetter {
            code: RejectCode::RateLimited,
            reason: format!(
                "device {device_id} sent more than {} messages/s with bursts of {} across all ingest processes (ingest.device_rate_limit, ingest.device_burst); this message was not stored. Its bytes here are the {topic} record it became.",
                self.rate, self.burst
            ),
            topic: topic.to_string(),
            received_at,
            message_id: message_id.to_string(),
            device_id: Some(device_id.to_string()),
            external_id: None,
            metric: None,
            raw_base64: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, record),
        }
    }
}

/// Runs the stream stage until `shutdown`. It finishes the batch in hand, and leaves open
/// windows to be rebuilt from the checkpointed offsets by the next run.
pub async fn run(
    config: &StreamConfig,
    fleet: Fleet,
    source: reload::RuleSource,
    bus: &Bus,
    history: History,
    metrics: StreamMetrics,
    shutdown: CancellationToken,
) -> Result<(), StreamError> {
    let in_force = ioc_config::rules::in_force(config);
    let rules = rules::compile(&in_force)
        .await
        .map_err(StreamError::Rules)?;
    history.ensure_schema().await?;
    let producer = bus.producer(Duration::from_millis(5))?;
    let by = format!("ioc stream ({})", config.group_id);
    // Read the topic's end first, so that a reload asked for from now on is not missed.
    let (_, end) = reload::latest(bus).await?;
    let updates = reload::follow(bus, end, shutdown.clone())?;
    reload::seed(&in_force, &producer, bus, &by).await?;
    reload::watch(
        source.watch.clone(),
        source.watched_since.clone(),
        source.requested.clone(),
        shutdown.clone(),
    );
    let rules = RulesInForce {
        compiled: rules,
        configs: in_force,
        updates,
        source,
        by,
    };
    let step = Step {
        bus,
        history: &history,
        producer: &producer,
        metrics: &metrics,
        shutdown: &shutdown,
        fleet: &fleet,
        rollups: true,
        regulatory: true,
        alerting: true,
        quality: true,
        regulation: RegulatorySettings::of(config, &fleet),
        stuck_after: &config.stuck_after,
        congestion: &config.congestion,
        #[cfg(test)]
        crash_after: None,
    };
    let sinks = futures::future::try_join_all(sink::Sink::ALL.map(|s| sink::run(s, config, &step)));
    // Either failing ends the stage (its error is the stage's), rather than leaving half of it
    // running.
    tokio::try_join!(readings_loop(config, &step, rules), sinks).map(|_| ())
}

/// The readings loop (crate docs).
async fn readings_loop(
    config: &StreamConfig,
    step: &Step<'_>,
    rules: RulesInForce,
) -> Result<(), StreamError> {
    let RulesInForce {
        compiled: rules,
        configs: mut in_force,
        mut updates,
        source,
        by,
    } = rules;
    let (bus, metrics, shutdown) = (step.bus, step.metrics, step.shutdown);
    let topic = bus.topics().readings.clone();
    let total = bus.partitions_of(&topic)?;
    let partitions: Vec<i32> = if config.partitions.is_empty() {
        (0..total).collect()
    } else {
        config.partitions.clone()
    };
    let owner = Owner {
        partitions: partitions.clone(),
        total,
    };
    let mut state = LoopState::restore(config, step, &topic, owner, rules).await?;
    let commands_topic = bus.topics().alert_commands.clone();
    let mut commands = bus.consumer_at(
        &commands_topic,
        partitions.iter().map(|p| {
            (
                *p,
                state
                    .commands_committed
                    .get(p)
                    .map_or(StartAt::Beginning, |o| StartAt::Offset(*o)),
            )
        }),
    )?;
    let mut consumer = bus.consumer_at(
        &topic,
        partitions.iter().map(|p| {
            (
                *p,
                state
                    .committed
                    .get(p)
                    .map_or(StartAt::Beginning, |o| StartAt::Offset(*o)),
            )
        }),
    )?;
    tracing::info!(
        ?partitions,
        checkpoint = ?state.committed,
        "stream consuming from its checkpoint"
    );
    while !shutdown.is_cancelled() {
        let records = collect_batch(&mut consumer, config, metrics, shutdown).await;
        let now = ioc_contract::time::now_ms();
        if !step
            .batch(&config.group_id, &topic, records, &mut state, now)
            .await
        {
            break; // shut down while a write was being retried; nothing was checkpointed for it
        }
        let waiting = drain_commands(&mut commands).await;
        if !step
            .commands(&config.group_id, &commands_topic, waiting, &mut state)
            .await
        {
            break;
        }
        if !step
            .rules_updates(&mut state, &mut updates, &source, &mut in_force, &by)
            .await
        {
            break;
        }
    }
    Ok(())
}

/// The rules as the readings loop starts with them, and where new versions come from.
struct RulesInForce {
    compiled: Vec<rules::Compiled>,
    configs: Vec<ioc_config::RuleConfig>,
    updates: tokio::sync::mpsc::UnboundedReceiver<ioc_config::rules::RulesRecord>,
    source: reload::RuleSource,
    /// Who this process is, in the audit log.
    by: String,
}

/// The partitions of the readings topic this process consumes, of how many: its devices are
/// those keyed to them (`ioc_bus::key_partition`).
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    partitions: Vec<i32>,
    total: i32,
}

impl Owner {
    fn owns(&self, device_id: &str) -> bool {
        self.partitions
            .contains(&ioc_bus::key_partition(device_id, self.total))
    }

    /// The process that answers the API's reload requests: the one that owns partition 0.
    fn leads(&self) -> bool {
        self.partitions.contains(&0)
    }
}

/// The alert commands already on the bus, without waiting for more.
async fn drain_commands(consumer: &mut Consumer) -> Vec<(i32, i64, Option<AlertCommand>)> {
    let mut out = Vec::new();
    while out.len() < 1000 {
        let next = tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await;
        match next {
            Ok(Ok(m)) => {
                let command = serde_json::from_slice::<AlertCommand>(&m.payload).ok();
                if command.is_none() {
                    tracing::error!(
                        partition = m.partition,
                        offset = m.offset,
                        "alert-commands record is not an alert command; skipped"
                    );
                }
                out.push((m.partition, m.offset, command));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bus consume error (alert commands)");
                break;
            }
            Err(_) => break,
        }
    }
    out
}

/// The readings loop's operators, in the order a batch passes them, with their state.
pub(crate) struct Operators {
    /// The fleet-wide rate limit (`limit.rs`).
    limiter: FleetLimiter,
    /// Resend counting (`recent.rs`).
    recent: Recent,
    /// 1-minute windows (`windows.rs`, `aggregate.rs`).
    engine: WindowEngine,
    /// Roll-ups (`rollup.rs`): the stored finer windows of recent coarse windows.
    rollups: rollup::Recent,
    /// Runs of one value (`stuck.rs`).
    runs: stuck::Runs,
    /// The stored readings of each device's look back, as its last quality count read them
    /// (`quality.rs`).
    quality: quality::Kept,
    /// The alert rules and their instances (`alerts.rs`).
    alerts: Alerts,
    /// When this process last received a reading of each device (processing time).
    last_seen: HashMap<String, i64>,
    /// When this process started: no device counts as silent from before it.
    started_at: i64,
    /// When the rules over `devices` alone (offline) last ran.
    devices_checked: i64,
    versions: VersionClock,
}

/// What the window engine made of a batch's readings (`Step::observe`).
struct Observations<'a> {
    /// Windows that had closed when a reading for them came.
    late: BTreeSet<WindowKey>,
    /// Per device, the closed minutes whose quality counts are due again, with how far back
    /// their judgements read.
    quality: BTreeMap<String, (quality::Due, i64)>,
    /// The messages of keys that came in an open window in more than one.
    copies: Vec<CopyRow>,
    /// Good readings for windows already closed: their resends are looked up in history.
    unwindowed: Vec<&'a ioc_contract::Reading>,
}

/// What the 1-minute windows operator emitted for one batch.
#[derive(Default)]
struct MinuteWindows {
    /// Windows closed in order (from memory).
    in_order: Vec<Aggregate>,
    /// Each closed window's run of one value (`stuck.rs`).
    runs: Vec<stuck::Run>,
    /// Windows recomputed for late readings.
    reemitted: Vec<Aggregate>,
    /// Devices whose `closed_until` moved.
    closed_devices: Vec<(String, i64)>,
    /// What says which coarse windows are complete (`rollup::due`).
    marks: rollup::Marks,
    /// Per device, the minutes whose quality counts are due (`quality.rs`), with how far back
    /// its judgements read.
    quality: BTreeMap<String, (quality::Due, i64)>,
}

/// Where `closed` left the devices it moved and those of `late` windows: their `closed_until`
/// before and after, and which have no open window left.
fn marks_of<'a>(
    engine: &WindowEngine,
    closed: &'a crate::windows::Closed,
    late: impl Iterator<Item = &'a str>,
) -> rollup::Marks {
    let mut marks = rollup::Marks {
        before: closed.before.clone(),
        ..Default::default()
    };
    let devices = closed.devices.iter().map(|(d, _)| d.as_str()).chain(late);
    for d in devices {
        if let Some(u) = engine.closed_until(d) {
            marks.closed_until.insert(d.to_string(), u);
        }
        if engine.is_settled(d) {
            marks.settled.insert(d.to_string());
        }
    }
    marks
}

/// How far before its first closed window a device's quality is counted (`quality.rs`).
const FIRST_QUALITY_SPAN_MS: i64 = 86_400_000;

/// How often the rules over `devices` alone (a device's silence) run, in processing time.
const DEVICE_CHECK_MS: i64 = 5_000;

/// A record to publish: its topic, its key (a device id) and its JSON.
pub(crate) struct Outgoing<'a> {
    topic: &'a str,
    key: &'a str,
    payload: Vec<u8>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn json(
        topic: &'a str,
        key: &'a str,
        record: &impl serde::Serialize,
    ) -> Outgoing<'a> {
        Outgoing {
            topic,
            key,
            // The records are plain structs: serializing them cannot fail.
            payload: serde_json::to_vec(record).expect("records serialize"),
        }
    }
}

/// What the AQI and exceedance operators derived for one batch.
#[derive(Default)]
struct Regulatory {
    aqi: Vec<AqiRow>,
    /// PM2.5 forecasts made at the stations' last stored hours.
    forecasts: Vec<ForecastRow>,
    /// Exceedance records to store and publish (changes only).
    exceedances: Vec<ExceedanceRow>,
    /// Every period judged, within its limit or not: what alert rules read.
    judged: Vec<ExceedanceRow>,
}

/// Everything the readings loop keeps between batches.
pub(crate) struct LoopState {
    ops: Operators,
    /// Per partition, the next offset expected (`fresh`).
    next_expected: HashMap<i32, i64>,
    /// Per partition, the offset last checkpointed.
    committed: HashMap<i32, i64>,
    /// Per partition of `alert-commands`, the offset after the last command applied.
    commands_committed: HashMap<i32, i64>,
    owner: Owner,
}

impl LoopState {
    /// The state of a process owning the whole (one-partition) readings topic, with the
    /// rules in force of `config` (tests).
    #[cfg(test)]
    pub(crate) async fn restore_all(
        config: &StreamConfig,
        step: &Step<'_>,
        topic: &str,
    ) -> LoopState {
        let rules = rules::compile(&ioc_config::rules::in_force(config))
            .await
            .expect("the rules in force plan");
        let owner = Owner {
            partitions: vec![0],
            total: 1,
        };
        LoopState::restore(config, step, topic, owner, rules)
            .await
            .expect("restores")
    }

    /// The state as of the checkpoint in history: offsets with the rate limiter's state, each
    /// device's `closed_until`, the latest alerts.
    async fn restore(
        config: &StreamConfig,
        step: &Step<'_>,
        topic: &str,
        owner: Owner,
        rules: Vec<rules::Compiled>,
    ) -> Result<LoopState, StreamError> {
        let history = step.history;
        let positions = history.offsets(&config.group_id, topic).await?;
        let commands_committed: HashMap<i32, i64> = history
            .offsets(&config.group_id, &step.bus.topics().alert_commands)
            .await?
            .iter()
            .map(|p| (p.partition, p.next_offset))
            .collect();
        let checkpoint: HashMap<i32, i64> = positions
            .iter()
            .map(|p| (p.partition, p.next_offset))
            .collect();
        let mut engine = WindowEngine::new(
            config.allowed_lateness.as_millis() as i64,
            config.idle_timeout.as_millis() as i64,
        );
        let mut alerts = Alerts::new(rules, config.notify_max_age.as_millis() as i64);
        restore(history, &mut engine, &mut alerts, &owner).await?;
        let now = ioc_contract::time::now_ms();
        Ok(LoopState {
            ops: Operators {
                limiter: restored_limiter(step.fleet.limit.rule(), topic, &positions),
                recent: Recent::new(RECENT_READING_KEYS),
                engine,
                rollups: rollup::Recent::default(),
                runs: stuck::Runs::default(),
                quality: quality::Kept::default(),
                alerts,
                last_seen: HashMap::new(),
                started_at: now,
                devices_checked: i64::MIN,
                versions: VersionClock(0),
            },
            next_expected: checkpoint.clone(),
            committed: checkpoint,
            commands_committed,
            owner,
        })
    }
}

/// Whether a consumed record is one this process has not decided yet, keeping per partition
/// the next offset expected. The bus may start before the checkpoint (`Bus::consumer_at`), and
/// everything below it was decided, stored and, if in a window, emitted; a record delivered a
/// second time is dropped alike, since the rate limit must decide each record once. Offsets of
/// one partition are contiguous (idempotent, non-transactional producers, no compaction): a
/// jump means the bus skipped records, which are counted and logged.
pub(crate) fn fresh(
    next_expected: &mut HashMap<i32, i64>,
    partition: i32,
    offset: i64,
    topic: &str,
    metrics: &StreamMetrics,
) -> bool {
    match next_expected.get(&partition) {
        Some(expected) if offset < *expected => return false,
        Some(expected) if offset > *expected => {
            metrics.offset_gaps.inc_by((offset - expected) as u64);
            tracing::error!(
                %topic,
                partition,
                expected,
                got = offset,
                "the bus skipped records; what they held is missing (windows incomplete, events unstored)"
            );
        }
        _ => {}
    }
    next_expected.insert(partition, offset + 1);
    true
}

/// A rate limiter restored at each partition's checkpoint (`limit.rs`), saying what it could not
/// restore as it was.
fn restored_limiter(rule: Option<RateRule>, topic: &str, positions: &[Position]) -> FleetLimiter {
    let mut limiter = FleetLimiter::new(rule);
    for p in positions {
        match limiter.restore(p.partition, p.next_offset, &p.limiter) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                %topic,
                partition = p.partition,
                "ingest.device_rate_limit or ingest.device_burst changed since the checkpoint: the records replayed from it are decided under the new limit, so a message near the change may be both stored and rejected"
            ),
            // Only a corrupted row: the replayed span is then decided with full buckets.
            Err(e) => {
                tracing::error!(%topic, partition = p.partition, error = %e, "unreadable rate-limit checkpoint; every device's bucket starts full")
            }
        }
    }
    limiter
}

async fn restore(
    history: &History,
    engine: &mut WindowEngine,
    alerts: &mut Alerts,
    owner: &Owner,
) -> Result<(), StreamError> {
    for (device, until) in history.closed_until().await? {
        engine.restore_closed_until(&device, until);
    }
    for alert in history.latest_alerts().await? {
        if owner.owns(&alert.device_id) {
            alerts.restore(alert);
        }
    }
    Ok(())
}

/// Waits up to `batch_linger` for records, taking at most `batch_max_records`.
async fn collect_batch(
    consumer: &mut Consumer,
    config: &StreamConfig,
    metrics: &StreamMetrics,
    shutdown: &CancellationToken,
) -> Vec<Consumed> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + config.batch_linger;
    while out.len() < config.batch_max_records {
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.cancelled() => break,
        };
        match message {
            Ok(m) => {
                let batch = serde_json::from_slice::<ReadingBatch>(&m.payload).ok();
                if batch.is_none() {
                    metrics.unreadable_records.inc();
                    tracing::error!(
                        partition = m.partition,
                        offset = m.offset,
                        "readings record is not a readings batch; skipped"
                    );
                }
                out.push(Consumed {
                    partition: m.partition,
                    offset: m.offset,
                    batch,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "bus consume error");
                break;
            }
        }
    }
    out
}

pub(crate) struct Step<'a> {
    bus: &'a Bus,
    history: &'a History,
    producer: &'a Producer,
    metrics: &'a StreamMetrics,
    shutdown: &'a CancellationToken,
    pub(crate) fleet: &'a Fleet,
    /// Whether coarser windows are derived (off only to measure what they cost).
    rollups: bool,
    /// Whether the AQI and exceedances are derived (likewise).
    regulatory: bool,
    /// Whether alert rules run (likewise).
    alerting: bool,
    /// Whether resends are found and data quality counted (likewise).
    quality: bool,
    pub(crate) regulation: RegulatorySettings,
    /// `stream.stuck_after`: when a run of one value is stuck, per metric (`default` for the
    /// rest), for the quality counts (`quality.rs`).
    pub(crate) stuck_after: &'a BTreeMap<String, u32>,
    /// `stream.congestion`: where traffic counters' congestion levels begin.
    pub(crate) congestion: &'a ioc_config::CongestionConfig,
    /// Tests end the step at the Nth store read or write, as a SIGKILL would.
    #[cfg(test)]
    crash_after: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
}

impl Step<'_> {
    /// Retries `op` until it succeeds; `None` if shutdown came first.
    pub(crate) async fn retry<T, E: std::fmt::Display, F, Fut>(
        &self,
        what: &str,
        op: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        #[cfg(test)]
        if let Some(budget) = &self.crash_after {
            if budget.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
                return None;
            }
        }
        ioc_bus::retry::until_shutdown(self.shutdown, what, || self.metrics.store_retries.inc(), op)
            .await
    }

    /// One batch of bus records of `topic`, at processing time `now`: drops what was decided
    /// already, processes the rest, checkpoints offsets. False on shutdown mid-way.
    async fn batch(
        &self,
        group_id: &str,
        topic: &str,
        mut records: Vec<Consumed>,
        state: &mut LoopState,
        now: i64,
    ) -> bool {
        let next_expected = &mut state.next_expected;
        records.retain(|c| fresh(next_expected, c.partition, c.offset, topic, self.metrics));
        if !self
            .process(records, &mut state.ops, &state.owner, now)
            .await
        {
            return false;
        }
        let ops = &mut state.ops;
        self.metrics
            .open_windows
            .set(ops.engine.open_windows() as i64);
        self.checkpoint_offsets(
            group_id,
            topic,
            &ops.engine,
            &mut ops.limiter,
            &mut state.committed,
            &mut ops.versions,
        )
        .await
    }

    /// One pass of the loop described in the crate docs, at processing time `now`. Returns
    /// false on shutdown mid-way.
    async fn process(
        &self,
        mut records: Vec<Consumed>,
        ops: &mut Operators,
        owner: &Owner,
        now: i64,
    ) -> bool {
        if !self.limit_rate(&mut records, &mut ops.limiter).await {
            return false;
        }
        let observed = self.observe(&records, ops, now);
        let copies = if self.quality {
            match self.copies(&observed).await {
                Some(copies) => copies,
                None => return false,
            }
        } else {
            Vec::new()
        };
        if !copies.is_empty()
            && self
                .retry("storing the messages of resent readings", || {
                    self.history.insert(&copies)
                })
                .await
                .is_none()
        {
            return false;
        }
        if !self.store_readings(&records).await {
            return false;
        }
        let Some(minutes) = self.minute_windows(observed, ops, now).await else {
            return false;
        };
        let closed_devices = minutes.closed_devices;
        let marks = minutes.marks;
        let devices_due = now - ops.devices_checked >= DEVICE_CHECK_MS;
        if minutes.in_order.is_empty()
            && minutes.reemitted.is_empty()
            && closed_devices.is_empty()
            && minutes.quality.is_empty()
            && !devices_due
        {
            return true;
        }
        let quality = if self.quality {
            match self
                .count_quality(&minutes.quality, &mut ops.quality, &mut ops.versions)
                .await
            {
                Some(counted) => counted,
                None => return false,
            }
        } else {
            Vec::new()
        };
        let runs = minutes.runs;
        let minutes: Vec<Aggregate> = minutes
            .in_order
            .into_iter()
            .chain(minutes.reemitted)
            .collect();
        let Some(aggregates) = self
            .store_with_rollups(minutes, &marks, &mut ops.rollups, &mut ops.versions)
            .await
        else {
            return false;
        };
        let regulatory = if self.regulatory {
            match self.derive_regulatory(&aggregates, &mut ops.versions).await {
                Some(derived) => derived,
                None => return false,
            }
        } else {
            Default::default()
        };
        let Regulatory {
            aqi,
            forecasts,
            exceedances,
            judged,
        } = regulatory;
        let traffic = if self.regulatory {
            match self.derive_traffic(&aggregates, &mut ops.versions).await {
                Some(derived) => derived,
                None => return false,
            }
        } else {
            Vec::new()
        };
        let transitions = if !self.alerting {
            Vec::new()
        } else {
            match self
                .evaluate_rules(
                    ops,
                    owner,
                    &aggregates,
                    &aqi,
                    &forecasts,
                    &traffic,
                    &judged,
                    &runs,
                    now,
                )
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "alert rules failed; the batch will be retried from the bus");
                    return false;
                }
            }
        };
        // What the batch derived, to the topics its readers follow (aggregates, AQI,
        // forecasts, traffic, quality counts, exceedances), all sent at once.
        let topics = self.bus.topics();
        let mut out: Vec<Outgoing> = Vec::new();
        out.extend(
            aggregates
                .iter()
                .map(|a| Outgoing::json(&topics.aggregates, &a.device_id, a)),
        );
        out.extend(
            aqi.iter()
                .map(|a| Outgoing::json(&topics.aqi, &a.device_id, a)),
        );
        out.extend(
            forecasts
                .iter()
                .map(|f| Outgoing::json(&topics.forecast, &f.device_id, f)),
        );
        let traffic_records: Vec<TrafficRecord> =
            traffic.iter().cloned().map(TrafficRecord::Flow).collect();
        out.extend(
            traffic_records
                .iter()
                .map(|t| Outgoing::json(&topics.traffic, t.device_id(), t)),
        );
        out.extend(
            quality
                .iter()
                .map(|q| Outgoing::json(&topics.quality, &q.device_id, q)),
        );
        out.extend(
            exceedances
                .iter()
                .map(|e| Outgoing::json(&topics.exceedances, &e.device_id, e)),
        );
        if !self.publish_each(out).await {
            return false;
        }
        if !exceedances.is_empty()
            && self
                .retry("storing exceedances", || self.history.insert(&exceedances))
                .await
                .is_none()
        {
            return false;
        }
        if !self.emit_transitions(&transitions).await {
            return false;
        }
        self.metrics
            .aggregates_emitted
            .inc_by(aggregates.len() as u64);
        if devices_due {
            ops.devices_checked = now;
        }

        if !closed_devices.is_empty() {
            let checkpoint_version = ops.versions.next();
            let rows: Vec<WatermarkRow> = closed_devices
                .iter()
                .map(|(device_id, closed_until)| WatermarkRow {
                    device_id: device_id.clone(),
                    closed_until: *closed_until,
                    version: checkpoint_version,
                })
                .collect();
            if self
                .retry("checkpointing watermarks", || {
                    self.history.insert_watermarks(rows.clone())
                })
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Stores the batch's raw readings (idempotent by reading key).
    async fn store_readings(&self, records: &[Consumed]) -> bool {
        let readings = records
            .iter()
            .filter_map(|c| c.batch.as_ref())
            .flat_map(|b| b.readings.iter());
        let n = readings.clone().count();
        if n == 0 {
            return true;
        }
        let rows: Vec<ReadingRow> = readings.map(ReadingRow::from).collect();
        let stored = self
            .retry("storing readings", || self.history.insert(&rows))
            .await;
        if stored.is_some() {
            self.metrics.readings_consumed.inc_by(n as u64);
        }
        stored.is_some()
    }

    /// Feeds the batch's readings to the window engine (before they are stored: the engine's
    /// memory is rebuilt from the checkpoint after a crash, so its order against the store does
    /// not matter): which windows are late, which minutes' quality counts are due again, and
    /// which readings are copies of a key from another message (found in the key's open window,
    /// or to be looked up in history: `Observations::unwindowed`).
    fn observe<'r>(
        &self,
        records: &'r [Consumed],
        ops: &mut Operators,
        now: i64,
    ) -> Observations<'r> {
        let engine = &mut ops.engine;
        let mut late: BTreeSet<WindowKey> = BTreeSet::new();
        let mut quality_due: BTreeMap<String, (quality::Due, i64)> = BTreeMap::new();
        let mut copies = Vec::new();
        let mut unwindowed = Vec::new();
        for c in records {
            engine.mark_consumed(c.partition, c.offset);
            if let Some(first) = c.batch.as_ref().and_then(|b| b.readings.first()) {
                match ops.last_seen.get_mut(&first.device_id) {
                    Some(seen) => *seen = now,
                    None => {
                        ops.last_seen.insert(first.device_id.clone(), now);
                    }
                }
            }
            for r in c.batch.iter().flat_map(|b| b.readings.iter()) {
                if ops.recent.seen(crate::recent::reading_key(r)) {
                    self.metrics.duplicates.inc();
                }
                // A reading of any quality in a minute already counted: count it again, and
                // the minutes whose judgements read it.
                if let Some(until) = engine.closed_until(&r.device_id) {
                    if window_start(r.ts) + WINDOW_MS <= until {
                        let (due, lookback) =
                            quality_due.entry(r.device_id.clone()).or_insert_with(|| {
                                (quality::Due::default(), self.lookback_ms(&r.device_id))
                            });
                        let (from, to) = quality::late_range(r.ts, *lookback, until);
                        due.add(from, to);
                    }
                }
                match engine.observe(r, c.partition, c.offset, now) {
                    Observed::Late(key) => {
                        self.metrics.late_readings.inc();
                        late.insert(key);
                        unwindowed.push(r);
                    }
                    // Resends are found among good readings only: a bad or suspect copy is in
                    // no window, so whether it met its other copy in one would depend on how
                    // the records were batched (and a replay batches them otherwise).
                    Observed::NotAggregated => {}
                    Observed::Resent(before) => {
                        copies.push(CopyRow::of(r, before));
                        copies.push(CopyRow::of(r, windows::message_hash(&r.message_id)));
                    }
                    Observed::Added | Observed::Duplicate => {}
                }
            }
        }
        Observations {
            late,
            quality: quality_due,
            copies,
            unwindowed,
        }
    }

    /// The resends among late good readings: a stored reading of the same key from another
    /// message, or an earlier one in this batch; with those found in
    /// open windows, each as the rows of both messages (`CopyRow`). Looked up before the batch
    /// is stored; stored before the readings, so a replay that finds its own copy stored finds
    /// the rows too. `None` on shutdown mid-way.
    async fn copies(&self, observed: &Observations<'_>) -> Option<Vec<CopyRow>> {
        let mut out = observed.copies.clone();
        if observed.unwindowed.is_empty() {
            return Some(out);
        }
        let mut devices: Vec<String> = observed
            .unwindowed
            .iter()
            .map(|r| r.device_id.clone())
            .collect();
        devices.sort_unstable();
        devices.dedup();
        let from = observed.unwindowed.iter().map(|r| r.ts).min().unwrap_or(0);
        let to = observed.unwindowed.iter().map(|r| r.ts).max().unwrap_or(0) + 1;
        let filter = ioc_history::HistoryFilter {
            from,
            to,
            limit: usize::MAX,
            any_of: vec![("device_id", devices)],
            ..Default::default()
        };
        let stored = self
            .retry("reading stored readings to find resends", || {
                self.history.query::<ReadingRow>(&filter)
            })
            .await?;
        let mut first: HashMap<(&str, &str, &str, i64), u64> = stored
            .iter()
            .map(|r| {
                let key = (
                    r.device_id.as_str(),
                    r.channel.as_str(),
                    r.metric.as_str(),
                    r.ts,
                );
                (key, windows::message_hash(&r.message_id))
            })
            .collect();
        for r in &observed.unwindowed {
            let key = (
                r.device_id.as_str(),
                r.channel.as_str(),
                r.metric.as_str(),
                r.ts,
            );
            let message = windows::message_hash(&r.message_id);
            match first.get(&key) {
                Some(m) if *m != message => {
                    out.push(CopyRow::of(r, *m));
                    out.push(CopyRow::of(r, message));
                }
                Some(_) => {}
                None => {
                    first.insert(key, message);
                }
            }
        }
        Some(out)
    }

    /// The 1-minute windows operator: closes what the engine's watermarks let close, and aggregates with DataFusion
    /// the windows that closed (from memory) and the late ones (from the stored rows, which now
    /// include the late readings), so a re-emitted aggregate equals a recomputation from the
    /// raw rows. `None` on shutdown mid-way.
    async fn minute_windows(
        &self,
        observed: Observations<'_>,
        ops: &mut Operators,
        now: i64,
    ) -> Option<MinuteWindows> {
        let Observations {
            late,
            quality: mut quality_due,
            ..
        } = observed;
        let engine = &mut ops.engine;
        let closed = engine.advance(now);
        // A device never closed before counts from its first window (all of its good readings
        // so far close now), or the day before, whichever is earlier.
        let mut first_windows: HashMap<&str, i64> = HashMap::new();
        for (key, _) in &closed.windows {
            let first = first_windows.entry(&key.device_id).or_insert(key.start);
            *first = (*first).min(key.start);
        }
        for (device, until) in &closed.devices {
            let before = closed
                .before
                .get(device)
                .copied()
                .filter(|b| *b > 0)
                .unwrap_or_else(|| {
                    let day = until - FIRST_QUALITY_SPAN_MS;
                    first_windows
                        .get(device.as_str())
                        .map_or(day, |f| day.min(*f))
                });
            let (due, _) = quality_due
                .entry(device.clone())
                .or_insert_with(|| (quality::Due::default(), self.lookback_ms(device)));
            due.add(before, *until);
        }
        let marks = marks_of(engine, &closed, late.iter().map(|k| k.device_id.as_str()));
        let runs = ops.runs.follow(&closed.windows);
        if closed.windows.is_empty() && late.is_empty() {
            return Some(MinuteWindows {
                closed_devices: closed.devices,
                marks,
                runs,
                quality: quality_due,
                ..MinuteWindows::default()
            });
        }
        let mut in_order = ClosingRows::default();
        for (key, window) in &closed.windows {
            for (ts, value) in &window.values {
                in_order.push(
                    &key.device_id,
                    &key.channel,
                    &key.metric,
                    &window.unit,
                    *ts,
                    *value,
                );
            }
        }
        let mut reemit = ClosingRows::default();
        let mut late_by_device: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for key in &late {
            let range = late_by_device
                .entry(&key.device_id)
                .or_insert((key.start, key.start + WINDOW_MS));
            range.0 = range.0.min(key.start);
            range.1 = range.1.max(key.start + WINDOW_MS);
        }
        for (device, (from, to)) in late_by_device {
            let rows = self
                .retry("reading stored rows of late windows", || {
                    self.history.good_values(device, from, to)
                })
                .await?;
            for row in rows {
                let key = WindowKey {
                    device_id: row.device_id.clone(),
                    channel: row.channel.clone(),
                    metric: row.metric.clone(),
                    start: ioc_contract::window_start(row.ts),
                };
                if late.contains(&key) {
                    reemit.push(
                        &row.device_id,
                        &row.channel,
                        &row.metric,
                        &row.unit,
                        row.ts,
                        row.value,
                    );
                }
            }
        }
        let version = ops.versions.next();
        let (Ok(mut in_order), Ok(mut reemitted)) = (
            aggregate::aggregate(in_order, version).await,
            aggregate::aggregate(reemit, version).await,
        ) else {
            tracing::error!(
                "DataFusion aggregation failed; the batch will be retried from the bus"
            );
            return None;
        };
        self.metrics
            .windows_closed
            .inc_by(closed.windows.len() as u64);
        for a in in_order.iter_mut().chain(reemitted.iter_mut()) {
            a.capture = ioc_contract::capture(
                a.count,
                WINDOW_MS,
                self.fleet.expected_interval_s(&a.device_id),
            );
        }
        Some(MinuteWindows {
            in_order,
            runs,
            reemitted,
            closed_devices: closed.devices,
            marks,
            quality: quality_due,
        })
    }

    /// How far back a device's quality judgements read (`quality::lookback_ms`).
    fn lookback_ms(&self, device_id: &str) -> i64 {
        let longest = self.stuck_after.values().copied().max().unwrap_or(0);
        quality::lookback_ms(longest, self.fleet.expected_interval_s(device_id))
    }

    /// The quality counts operator (`quality.rs`): counts the due minutes from the stored
    /// readings (one read per span that devices share; a device that only moved on since its
    /// last count reads only its new minutes, and takes the look back from what that count
    /// kept) and stores them. `None` on shutdown mid-way.
    async fn count_quality(
        &self,
        due: &BTreeMap<String, (quality::Due, i64)>,
        kept: &mut quality::Kept,
        versions: &mut VersionClock,
    ) -> Option<Vec<ioc_history::QualityRow>> {
        let mut out = Vec::new();
        if due.is_empty() {
            return Some(out);
        }
        let version = versions.next();
        let default = self.stuck_after.get("default").copied().unwrap_or(0);
        let stuck_after = |metric: &str| self.stuck_after.get(metric).copied().unwrap_or(default);
        let mut reads: BTreeMap<(i64, i64), Vec<&str>> = BTreeMap::new();
        let mut from_kept: HashMap<&str, Vec<ReadingRow>> = HashMap::new();
        for (device, (d, lookback)) in due {
            let Some((range, kept_rows)) = kept.plan(device, d, *lookback) else {
                continue;
            };
            if let Some(rows) = kept_rows {
                from_kept.insert(device, rows);
            }
            reads.entry(range).or_default().push(device);
        }
        for ((from, to), devices) in reads {
            let filter = ioc_history::HistoryFilter {
                from,
                to,
                limit: usize::MAX,
                any_of: vec![("device_id", devices.iter().map(|d| d.to_string()).collect())],
                ..Default::default()
            };
            let rows = self
                .retry("reading stored readings to count quality", || {
                    self.history.query::<ReadingRow>(&filter)
                })
                .await?;
            let copies = self
                .retry("reading stored resends to count quality", || {
                    self.history.query::<CopyRow>(&filter)
                })
                .await?;
            let mut copies_of: HashMap<&str, Vec<CopyRow>> =
                devices.iter().map(|d| (*d, Vec::new())).collect();
            for c in copies {
                if let Some(v) = copies_of.get_mut(c.device_id.as_str()) {
                    v.push(c);
                }
            }
            let mut rows_of: HashMap<&str, Vec<ReadingRow>> = devices
                .iter()
                .map(|d| (*d, from_kept.remove(d).unwrap_or_default()))
                .collect();
            for r in rows {
                if let Some(v) = rows_of.get_mut(r.device_id.as_str()) {
                    v.push(r);
                }
            }
            for (device, rows) in rows_of {
                let (d, lookback) = &due[device];
                out.extend(quality::count(
                    &rows,
                    &copies_of[device],
                    d,
                    *lookback,
                    stuck_after,
                    version,
                ));
                kept.keep(device, d, *lookback, rows);
            }
        }
        if !out.is_empty() {
            self.retry("storing quality counts", || self.history.insert(&out))
                .await?;
        }
        Some(out)
    }

    /// Stores the 1-minute windows, then derives and stores the coarser windows they, and the
    /// devices' moved `closed_until`, make due, each resolution from the one stored just before
    /// (`rollup.rs`). Returns every window stored; `None` on shutdown mid-way.
    async fn store_with_rollups(
        &self,
        minutes: Vec<Aggregate>,
        marks: &rollup::Marks,
        recent: &mut rollup::Recent,
        versions: &mut VersionClock,
    ) -> Option<Vec<Aggregate>> {
        let offset = self.fleet.utc_offset_ms;
        let mut all = minutes;
        let mut finer = 0..all.len();
        let mut resolution = Resolution::Minute;
        loop {
            let emitted = &all[finer.clone()];
            if !emitted.is_empty() {
                let rows: Vec<AggregateRow> = emitted.iter().map(AggregateRow::from).collect();
                self.retry("storing aggregates", || self.history.insert(&rows))
                    .await?;
            }
            let Some(coarser) = resolution.coarser().filter(|_| self.rollups) else {
                return Some(all);
            };
            let due = rollup::due(emitted, coarser, offset, marks);
            let missing = recent.update(coarser, emitted, &due, offset);
            let mut children = Vec::new();
            for read in rollup::child_reads(&missing, coarser) {
                children.extend(
                    self.retry("reading stored windows to roll up", || {
                        self.history
                            .windows(resolution, &read.devices, &[], read.from, read.to)
                    })
                    .await?,
                );
            }
            recent.remember(coarser, &missing, children, offset);
            let derived = rollup::derive(
                coarser,
                &due,
                recent.children(coarser, &due),
                offset,
                |d| self.fleet.expected_interval_s(d),
                versions.next(),
            );
            recent.forget_old(coarser, &due);
            let start = all.len();
            all.extend(derived);
            finer = start..all.len();
            resolution = coarser;
        }
    }

    /// The AQI and exceedance operators (`aqi.rs`, `exceedance.rs`): derive what the stored
    /// hourly windows make due, from one read of each due station's hourly windows, and store
    /// the AQI. The exceedances are stored by the caller once published: they are emitted only
    /// when they change, so a replay must find unstored what it did not publish. `None` on
    /// shutdown mid-way.
    async fn derive_regulatory(
        &self,
        stored: &[Aggregate],
        versions: &mut VersionClock,
    ) -> Option<Regulatory> {
        let registry = &self.fleet.registry;
        let offset = self.fleet.utc_offset_ms;
        let aqi_due = aqi::due(
            stored,
            |d| registry.get(d).is_some_and(|d| d.kind == "air_quality"),
            offset,
        );
        let station = |d: &str| registry.get(d).and_then(|d| exceedance::Station::of(&d));
        let judged_due = exceedance::due(stored, station, &self.fleet.limits, offset);
        let forecast_due = forecast::due(stored, |d| {
            registry.get(d).is_some_and(|d| d.kind == "air_quality")
        });
        if aqi_due.is_empty() && judged_due.is_empty() && forecast_due.is_empty() {
            return Some(Regulatory::default());
        }
        // One read of hourly windows per station over what both need; stations due over the
        // same hours (the common case: all at the current hour) share it.
        let mut ranges: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        let ranges_of = aqi_due
            .iter()
            .map(|(d, due)| (d, due.range()))
            .chain(judged_due.iter().map(|(d, due)| (d, due.range())));
        for (device, (from, to)) in ranges_of {
            let r = ranges.entry(device).or_insert((from, to));
            *r = (r.0.min(from), r.1.max(to));
        }
        let mut reads: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
        for (device, range) in &ranges {
            reads.entry(*range).or_default().push(device.to_string());
        }
        let mut windows: HashMap<String, Vec<Aggregate>> = HashMap::new();
        for ((from, to), devices) in reads {
            let read = self
                .retry("reading hourly windows for AQI and exceedances", || {
                    self.history
                        .windows(Resolution::Hour, &devices, &[], from, to)
                })
                .await?;
            for w in read {
                windows.entry(w.device_id.clone()).or_default().push(w);
            }
        }
        let version = versions.next();
        let windows_of = |device: &str| windows.get(device).map_or(&[][..], Vec::as_slice);
        let aqi: Vec<AqiRow> = aqi_due
            .iter()
            .flat_map(|(device, d)| {
                let grade = registry
                    .get(device)
                    .map_or(ioc_contract::Grade::Reference, |d| d.grade());
                aqi::derive(
                    device,
                    grade,
                    d,
                    windows_of(device),
                    self.regulation,
                    version,
                )
            })
            .collect();
        let mut exceedances = Vec::new();
        let mut judged = Vec::new();
        for (device, d) in &judged_due {
            let Some(station) = station(device) else {
                continue;
            };
            let (from, to) = d.range();
            let filter = ioc_history::HistoryFilter {
                device_id: Some(device.clone()),
                from,
                to,
                limit: usize::MAX,
                ..Default::default()
            };
            let before = self
                .retry("reading stored exceedances", || {
                    self.history.query::<ExceedanceRow>(&filter)
                })
                .await?;
            let (changed, all) = exceedance::derive_judged(
                device,
                &station,
                d,
                windows_of(device),
                &before,
                &self.fleet.limits,
                self.regulation,
                version,
            );
            exceedances.extend(changed);
            judged.extend(all);
        }
        if !aqi.is_empty() {
            self.retry("storing AQI", || self.history.insert(&aqi))
                .await?;
        }
        // Forecasts read weeks of hours: their own read, shared by stations due at the same
        // origins (the common case: all at the current hour).
        let mut forecast_reads: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
        for (device, origins) in &forecast_due {
            forecast_reads
                .entry(forecast::range(origins))
                .or_default()
                .push(device.clone());
        }
        let mut forecasts = Vec::new();
        for ((from, to), devices) in forecast_reads {
            let read = self
                .retry("reading hourly windows for forecasts", || {
                    self.history
                        .windows(Resolution::Hour, &devices, &["pm25"], from, to)
                })
                .await?;
            // Each station's PM2.5 hours once, not the whole read per station and origin.
            let mut pm25: HashMap<&str, Vec<Aggregate>> = HashMap::new();
            for w in &read {
                pm25.entry(w.device_id.as_str())
                    .or_default()
                    .push(w.clone());
            }
            for device in &devices {
                let hours = pm25.get(device.as_str()).map_or(&[][..], Vec::as_slice);
                let grade = registry
                    .get(device)
                    .map_or(ioc_contract::Grade::Reference, |d| d.grade());
                for origin in &forecast_due[device] {
                    forecasts.extend(forecast::derive(
                        device,
                        grade,
                        *origin,
                        hours,
                        &self.fleet.limits.ambient,
                        self.regulation,
                        version,
                    ));
                }
            }
        }
        if !forecasts.is_empty() {
            self.retry("storing forecasts", || self.history.insert(&forecasts))
                .await?;
        }
        Some(Regulatory {
            aqi,
            forecasts,
            exceedances,
            judged,
        })
    }

    /// The traffic operator (`traffic.rs`): the flow, speed, occupancy and congestion of the
    /// traffic counters whose 5-minute and hourly windows were just stored, from their stored
    /// readings, stored before they are returned. `None` on shutdown mid-way.
    async fn derive_traffic(
        &self,
        stored: &[Aggregate],
        versions: &mut VersionClock,
    ) -> Option<Vec<TrafficRow>> {
        let registry = &self.fleet.registry;
        let due = traffic::due(stored, |d| {
            registry.get(d).is_some_and(|d| d.kind == "traffic_counter")
        });
        if due.is_empty() {
            return Some(Vec::new());
        }
        // One read of the raw readings per range, shared by the counters due over it (the
        // common case: all of them at the same 5 minutes or hour).
        let mut reads: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
        for (device, windows) in &due {
            reads
                .entry(traffic::range(windows))
                .or_default()
                .push(device.clone());
        }
        let version = versions.next();
        let mut rows = Vec::new();
        for ((from, to), devices) in reads {
            let filter = ioc_history::HistoryFilter {
                from,
                to,
                limit: usize::MAX,
                any_of: vec![
                    ("device_id", devices.clone()),
                    ("metric", traffic::METRICS.map(String::from).to_vec()),
                ],
                ..Default::default()
            };
            let readings = self
                .retry("reading traffic counts", || {
                    self.history.query::<ReadingRow>(&filter)
                })
                .await?;
            let mut by_device: HashMap<&str, Vec<ReadingRow>> = HashMap::new();
            for r in readings {
                if let Some((d, _)) = due.get_key_value(r.device_id.as_str()) {
                    by_device.entry(d.as_str()).or_default().push(r);
                }
            }
            for device in &devices {
                let Some(d) = registry.get(device) else {
                    continue;
                };
                let readings = by_device
                    .get(device.as_str())
                    .map_or(&[][..], Vec::as_slice);
                rows.extend(
                    due[device].iter().filter_map(|w| {
                        traffic::derive(&d, *w, readings, self.congestion, version)
                    }),
                );
            }
        }
        if !rows.is_empty() {
            self.retry("storing traffic", || self.history.insert(&rows))
                .await?;
        }
        Some(rows)
    }

    /// The alerts operator (`alerts.rs`) over what the batch emitted; the transitions in order.
    #[allow(clippy::too_many_arguments)]
    async fn evaluate_rules(
        &self,
        ops: &mut Operators,
        owner: &Owner,
        aggregates: &[Aggregate],
        aqi: &[AqiRow],
        forecasts: &[ForecastRow],
        traffic: &[TrafficRow],
        judged: &[ExceedanceRow],
        runs: &[stuck::Run],
        now: i64,
    ) -> Result<Vec<AlertTransition>, StreamError> {
        let arrow = |e: datafusion::arrow::error::ArrowError| StreamError::Evaluation(e.into());
        let mut tables: Vec<(&'static str, datafusion::arrow::array::RecordBatch)> = Vec::new();
        for (name, resolution) in [
            ("aggregates_1m", Resolution::Minute),
            ("aggregates_5m", Resolution::FiveMinutes),
            ("aggregates_1h", Resolution::Hour),
            ("aggregates_1d", Resolution::Day),
        ] {
            let rows: Vec<AggregateRow> = aggregates
                .iter()
                .filter(|a| a.resolution == resolution)
                .map(AggregateRow::from)
                .collect();
            if !rows.is_empty() {
                tables.push((name, AggregateRow::to_batch(&rows).map_err(arrow)?));
            }
        }
        for (name, resolution) in [("aqi_1h", "1h"), ("aqi_1d", "1d")] {
            let rows: Vec<AqiRow> = aqi
                .iter()
                .filter(|a| a.resolution == resolution)
                .cloned()
                .collect();
            if !rows.is_empty() {
                tables.push((name, AqiRow::to_batch(&rows).map_err(arrow)?));
            }
        }
        for (name, resolution) in [("traffic_5m", "5m"), ("traffic_1h", "1h")] {
            let rows: Vec<TrafficRow> = traffic
                .iter()
                .filter(|t| t.resolution == resolution)
                .cloned()
                .collect();
            if !rows.is_empty() {
                tables.push((name, TrafficRow::to_batch(&rows).map_err(arrow)?));
            }
        }
        if !judged.is_empty() {
            tables.push((
                "exceedances",
                ExceedanceRow::to_batch(judged).map_err(arrow)?,
            ));
        }
        if !runs.is_empty() {
            tables.push(("runs", stuck::to_batch(runs).map_err(arrow)?));
        }
        if !forecasts.is_empty() {
            tables.push(("forecast", rules::forecast_batch(forecasts).map_err(arrow)?));
        }
        let devices: Vec<_> = self
            .fleet
            .registry
            .list()
            .into_iter()
            .filter(|d| owner.owns(&d.device_id))
            .collect();
        let devices_batch =
            rules::devices_batch(&devices, &ops.last_seen, ops.started_at, now).map_err(arrow)?;
        let mut versions = || ops.versions.next();
        let muted = |d: &str| {
            self.fleet
                .registry
                .get(d)
                .is_some_and(|d| d.status == DeviceStatus::Maintenance)
        };
        let devices_due = now - ops.devices_checked >= DEVICE_CHECK_MS;
        let mut out = ops
            .alerts
            .evaluate(
                &tables,
                &devices_batch,
                devices_due,
                now,
                &muted,
                &mut versions,
            )
            .await?;
        if devices_due {
            for d in devices
                .iter()
                .filter(|d| d.status == DeviceStatus::Decommissioned)
            {
                out.extend(ops.alerts.decommissioned(&d.device_id, now, &mut versions));
            }
        }
        Ok(out)
    }

    /// Publishes the alerts' new states and their transitions, then stores both. In that
    /// order, as exceedances are: a crash in between finds them unstored, so the replay makes
    /// them again (same alert ids and kinds) and publishes them again; stored first, a crash
    /// before the publish left the restored state past them and the bus without them. False on
    /// shutdown mid-way.
    async fn emit_transitions(&self, transitions: &[AlertTransition]) -> bool {
        if transitions.is_empty() {
            return true;
        }
        let topics = self.bus.topics();
        if !self
            .publish(
                &topics.alerts,
                transitions
                    .iter()
                    .map(|t| (&t.alert.device_id, serde_json::to_vec(&t.alert))),
            )
            .await
            || !self
                .publish(
                    &topics.alert_transitions,
                    transitions
                        .iter()
                        .map(|t| (&t.alert.device_id, serde_json::to_vec(t))),
                )
                .await
        {
            return false;
        }
        let alerts: Vec<AlertRow> = transitions
            .iter()
            .map(|t| AlertRow::from(&t.alert))
            .collect();
        let rows: Vec<TransitionRow> = transitions.iter().map(TransitionRow::from).collect();
        if self
            .retry("storing alerts", || self.history.insert(&alerts))
            .await
            .is_none()
            || self
                .retry("storing alert transitions", || self.history.insert(&rows))
                .await
                .is_none()
        {
            return false;
        }
        self.metrics.alerts_emitted.inc_by(transitions.len() as u64);
        for t in transitions {
            tracing::info!(alert_id = %t.alert_id, transition = t.kind.as_str(), "{}", t.alert.message);
        }
        true
    }

    /// Applies any new version of the rules read from the `rules` topic (resolving the open
    /// alerts of rules removed or whose query changed), and reloads when asked (SIGHUP, a
    /// changed file, or, for the process owning partition 0, the API). False on shutdown.
    async fn rules_updates(
        &self,
        state: &mut LoopState,
        updates: &mut tokio::sync::mpsc::UnboundedReceiver<ioc_config::rules::RulesRecord>,
        source: &reload::RuleSource,
        in_force: &mut Vec<ioc_config::RuleConfig>,
        by: &str,
    ) -> bool {
        use ioc_config::rules::{version_of, RulesRecord};
        let mut requests: Vec<(Option<String>, String)> = Vec::new();
        if source
            .requested
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            requests.push((None, by.to_string()));
        }
        while let Ok(record) = updates.try_recv() {
            match record {
                RulesRecord::Version { version, rules, .. } => {
                    if version == version_of(in_force) {
                        continue;
                    }
                    let compiled = match rules::compile(&rules).await {
                        Ok(c) => c,
                        Err(problems) => {
                            tracing::error!(%version, ?problems, "a published version of the rules does not plan here; keeping the rules in force");
                            continue;
                        }
                    };
                    let ops = &mut state.ops;
                    let now = ioc_contract::time::now_ms();
                    let transitions = ops
                        .alerts
                        .replace_rules(compiled, now, &mut || ops.versions.next());
                    tracing::info!(%version, rules = rules.len(), resolved = transitions.len(), "new rules in force");
                    *in_force = rules;
                    if !self.emit_transitions(&transitions).await {
                        return false;
                    }
                }
                RulesRecord::ReloadRequested { request_id, by, .. } if state.owner.leads() => {
                    requests.push((Some(request_id), by));
                }
                _ => {}
            }
        }
        for (request_id, who) in requests {
            let done = self
                .retry("reloading the rules", || {
                    reload::reload(
                        source,
                        &in_force[..],
                        self.producer,
                        self.bus,
                        &who,
                        request_id.clone(),
                    )
                })
                .await;
            if done.is_none() {
                return false;
            }
        }
        true
    }

    /// Applies the alert commands read since the last batch, in order: each one's transition
    /// stored and published, then its reply, then the commands' offsets checkpointed. A crash
    /// before the checkpoint applies them again, which finds them done. False on shutdown.
    async fn commands(
        &self,
        group_id: &str,
        topic: &str,
        commands: Vec<(i32, i64, Option<AlertCommand>)>,
        state: &mut LoopState,
    ) -> bool {
        if commands.is_empty() {
            return true;
        }
        let ops = &mut state.ops;
        let mut transitions = Vec::new();
        let mut replies: Vec<AlertReply> = Vec::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (partition, offset, command) in &commands {
            next.insert(*partition, offset + 1);
            let Some(command) = command else { continue };
            if state
                .commands_committed
                .get(partition)
                .is_some_and(|c| offset < c)
            {
                continue;
            }
            let (reply, transition) = ops.alerts.command(command, &mut || ops.versions.next());
            transitions.extend(transition);
            replies.push(reply);
        }
        if !self.emit_transitions(&transitions).await {
            return false;
        }
        let replies_topic = &self.bus.topics().alert_replies;
        if !self
            .publish(
                replies_topic,
                replies.iter().map(|r| (&r.alert_id, serde_json::to_vec(r))),
            )
            .await
        {
            return false;
        }
        let version = ops.versions.next();
        let rows: Vec<OffsetRow> = next
            .iter()
            .map(|(partition, next_offset)| OffsetRow {
                group_id: group_id.to_string(),
                topic: topic.to_string(),
                partition: *partition,
                next_offset: *next_offset,
                version,
                limiter: String::new(),
            })
            .collect();
        if self
            .retry("checkpointing alert commands", || {
                self.history.insert_offsets(rows.clone())
            })
            .await
            .is_none()
        {
            return false;
        }
        state.commands_committed.extend(next);
        true
    }

    /// Decides each record against its device's fleet-wide rate (`limit.rs`), in offset order;
    /// a record over it loses its readings and becomes a `rate_limited` dead letter, confirmed
    /// by the bus before anything of the batch is checkpointed. False on shutdown mid-way.
    async fn limit_rate(&self, records: &mut [Consumed], limiter: &mut FleetLimiter) -> bool {
        let topic = &self.bus.topics().readings;
        let mut letters: Vec<DeadLetter> = Vec::new();
        for c in records.iter_mut() {
            let Some(first) = c.batch.as_ref().and_then(|b| b.readings.first()) else {
                continue;
            };
            if limiter.admit(c.partition, c.offset, &first.device_id, first.received_at) {
                continue;
            }
            let batch = c.batch.take().expect("checked above");
            let first = &batch.readings[0];
            letters.push(self.fleet.limit.letter(
                topic,
                &first.device_id,
                first.received_at,
                &first.message_id,
                &serde_json::to_vec(&batch).unwrap_or_default(),
            ));
        }
        self.publish_rate_limited(&self.bus.topics().deadletter, &letters)
            .await
    }

    /// Publishes the dead letters of records over the fleet-wide rate to `topic` and counts
    /// them; false on shutdown mid-way.
    pub(crate) async fn publish_rate_limited(&self, topic: &str, letters: &[DeadLetter]) -> bool {
        if letters.is_empty() {
            return true;
        }
        let published = self
            .publish(
                topic,
                letters.iter().map(|l| {
                    (
                        l.device_id
                            .as_ref()
                            .expect("a rate-limited letter names its device"),
                        serde_json::to_vec(l),
                    )
                }),
            )
            .await;
        if published {
            self.metrics.rate_limited.inc_by(letters.len() as u64);
        }
        published
    }

    /// Checkpoints, per partition, the offset the window engine says is covered (after the
    /// window state it depends on was checkpointed in `process`), with the rate limiter's state
    /// as of that offset in the same row.
    async fn checkpoint_offsets(
        &self,
        group_id: &str,
        topic: &str,
        engine: &WindowEngine,
        limiter: &mut FleetLimiter,
        committed: &mut HashMap<i32, i64>,
        versions: &mut VersionClock,
    ) -> bool {
        let version = versions.next();
        let rows: Vec<OffsetRow> = engine
            .committable()
            .into_iter()
            .filter(|(partition, offset)| committed.get(partition).is_none_or(|c| offset > c))
            .map(|(partition, next_offset)| OffsetRow {
                group_id: group_id.to_string(),
                topic: topic.to_string(),
                partition,
                next_offset,
                version,
                limiter: limiter.checkpoint(partition, next_offset),
            })
            .collect();
        if rows.is_empty() {
            return true;
        }
        if self
            .retry("checkpointing offsets", || {
                self.history.insert_offsets(rows.clone())
            })
            .await
            .is_none()
        {
            return false;
        }
        self.metrics.commits.inc();
        committed.extend(rows.iter().map(|r| (r.partition, r.next_offset)));
        true
    }

    /// Publishes JSON records keyed by device id and waits for every confirmation.
    async fn publish<'r>(
        &self,
        topic: &'r str,
        records: impl Iterator<Item = (&'r String, Result<Vec<u8>, serde_json::Error>)>,
    ) -> bool {
        self.publish_each(
            records
                .filter_map(|(key, v)| {
                    v.ok().map(|payload| Outgoing {
                        topic,
                        key,
                        payload,
                    })
                })
                .collect(),
        )
        .await
    }

    /// Publishes records, each to its topic, and waits for every confirmation.
    pub(crate) async fn publish_each(&self, records: Vec<Outgoing<'_>>) -> bool {
        let sends = records.iter().map(|r| {
            self.retry("publishing to the bus", move || async move {
                self.producer.send(r.topic, r.key, &r.payload).await
            })
        });
        futures::future::join_all(sends)
            .await
            .iter()
            .all(Option::is_some)
    }
}
