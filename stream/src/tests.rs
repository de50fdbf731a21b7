//! The readings loop as a whole, over the embedded bus and history store (every write durable
//! at once, as ClickHouse's are): random readings with gaps, out-of-order and days-late
//! arrivals and resends, and crashes at random store or bus operations, including between the
//! 1-minute write and the roll-ups. Afterwards every stored window at every resolution must
//! equal a batch recomputation over the final raw rows, and no window may have been emitted
//! twice at one version with different contents.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use ioc_bus::embedded::{EmbeddedLog, LogOptions, SEGMENT_BYTES};
use ioc_bus::Bus;
use ioc_contract::{
    capture, Aggregate, Device, Quality, Reading, ReadingBatch, RegistryEvent, Resolution, Topics,
};
use ioc_history::{CopyRow, EmbeddedHistory, History, HistoryFilter, QualityRow};
use tokio_util::sync::CancellationToken;

use super::*;

const ICT: i64 = 7 * 3_600_000;
/// 2026-11-25T00:00:00+07:00.
const DAY0: i64 = 1_795_539_600_000;
const LATENESS_MS: i64 = 10_000;
const IDLE_MS: i64 = 60_000;
/// ww-1's outlet COD limit in these tests (QCVN 40's column B is 150).
const COD_LIMIT: f64 = 110.0;

/// The golden case files under `stream/golden/<name>/`, in name order.
pub(crate) fn golden_files(name: &str) -> Vec<std::path::PathBuf> {
    golden_files_of(name, "txt")
}

/// The golden files `golden/{name}/*.{ext}`, sorted.
pub(crate) fn golden_files_of(name: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// A seeded generator (xorshift), so failures repeat; the crate's tests share it.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn reading(device: &str, metric: &str, ts: i64, value: f64, quality: Quality) -> Reading {
    Reading {
        device_id: device.into(),
        channel: if metric == "cod" {
            "outlet".into()
        } else {
            String::new()
        },
        metric: metric.into(),
        ts,
        value,
        unit: "µg/m³".into(),
        interval_s: None,
        quality,
        quality_reason: String::new(),
        received_at: ts,
        message_id: format!("{device}-{ts}"),
    }
}

/// One message's readings: ww-1's outlet COD; tc-1's two lanes' counts, speeds and
/// occupancies (the first lane's count of `quality`), from free to jammed; or aq-1's PM2.5 (of
/// `quality`) with every other AQI pollutant: CO over its 8-hour limit about half the time, O3
/// above it always and often dominant, its 8-hour means either side of 400.
fn readings_of(device: &str, ts: i64, value: f64, quality: Quality) -> Vec<Reading> {
    if device == "tc-1" {
        let mut out = Vec::new();
        for (lane, share) in [("lane-1", 1.0), ("lane-2", 0.6)] {
            for (metric, v) in [
                ("vehicle_count", (value / 8.0 * share).round()),
                ("avg_speed", 60.0 - value / 4.0 * share),
                ("occupancy", value / 2.2 * share),
            ] {
                let q = if lane == "lane-1" && metric == "vehicle_count" {
                    quality
                } else {
                    Quality::Good
                };
                out.push(Reading {
                    channel: lane.into(),
                    ..reading(device, metric, ts, v, q)
                });
            }
        }
        return out;
    }
    if device != "aq-1" {
        return vec![reading(device, "cod", ts, value, quality)];
    }
    let mut readings = vec![reading(device, "pm25", ts, value, quality)];
    for (metric, v) in [
        ("no2", value / 3.0),
        ("pm10", value * 1.2),
        ("o3", value * 4.0),
        ("co", value * 100.0),
    ] {
        readings.push(reading(device, metric, ts, v, Quality::Good));
    }
    readings
}

/// What a partition holds, in offset order: two stations over a day and a half crossing the
/// local midnight, with gaps of minutes to hours, readings a few minutes out of order, bad
/// readings, resends, and at the end a backfill of hours that were missing plus a few
/// stragglers days late.
fn partition(rng: &mut Rng) -> Vec<ReadingBatch> {
    let mut messages: Vec<ReadingBatch> = Vec::new();
    let span = 36 * 3_600_000;
    for (device, step) in [("aq-1", 60_000), ("ww-1", 300_000), ("tc-1", 60_000)] {
        let mut ts = DAY0 + 20 * 3_600_000 + rng.below(step as u64) as i64;
        let mut backfill = Vec::new();
        while ts < DAY0 + 20 * 3_600_000 + span {
            let value = (rng.below(2000) as f64) / 10.0;
            let quality = if rng.below(40) == 0 {
                Quality::Bad
            } else {
                Quality::Good
            };
            let batch = ReadingBatch {
                readings: readings_of(device, ts, value, quality),
            };
            match rng.below(100) {
                // A gap of hours, backfilled at the end (a station's stored files).
                0..=1 => {
                    backfill.push(batch);
                    for _ in 0..rng.below(180) {
                        ts += step;
                        let value = (rng.below(2000) as f64) / 10.0;
                        backfill.push(ReadingBatch {
                            readings: readings_of(device, ts, value, Quality::Good),
                        });
                    }
                }
                // A gap that never fills.
                2..=4 => ts += step * rng.below(90) as i64,
                // A redelivery (the same message), or now and then a resend (the same
                // readings in another message).
                5..=7 => {
                    messages.push(batch.clone());
                    let mut again = batch;
                    if ts % 3 == 0 {
                        for r in &mut again.readings {
                            r.message_id = format!("{}-again", r.message_id);
                        }
                    }
                    messages.push(again);
                }
                _ => messages.push(batch),
            }
            ts += step / 2 + rng.below(step as u64) as i64;
        }
        // The sensor fails into out-of-range values: minutes with nothing good to close them.
        for _ in 0..5 {
            messages.push(ReadingBatch {
                readings: readings_of(device, ts, 9999.0, Quality::Bad),
            });
            ts += step;
        }
        // Out of order by up to a few messages.
        let n = messages.len();
        for _ in 0..n / 10 {
            let i = rng.below(n as u64 - 1) as usize;
            messages.swap(i, i + 1);
        }
        messages.extend(backfill);
        // Stragglers days late: readings for an hour that was complete long ago.
        for _ in 0..3 {
            let ts = DAY0 + 20 * 3_600_000 + rng.below(span as u64) as i64;
            messages.push(ReadingBatch {
                readings: readings_of(device, ts, 999.0, Quality::Good),
            });
        }
    }
    messages
}

/// Every window at `resolution` recomputed from the final raw rows.
fn recompute(
    readings: &[Reading],
    resolution: Resolution,
    expected: &HashMap<&str, f64>,
) -> BTreeMap<(String, String, String, i64), (u64, f64, f64, f64, Option<f64>)> {
    let mut out: BTreeMap<_, (u64, f64, f64, f64, Option<f64>)> = BTreeMap::new();
    for r in readings.iter().filter(|r| r.quality == Quality::Good) {
        let key = (
            r.device_id.clone(),
            r.channel.clone(),
            r.metric.clone(),
            resolution.start(r.ts, ICT),
        );
        let w = out.entry(key).or_insert((0, 0.0, f64::MAX, f64::MIN, None));
        w.0 += 1;
        w.1 += r.value;
        w.2 = w.2.min(r.value);
        w.3 = w.3.max(r.value);
    }
    for ((device, ..), w) in out.iter_mut() {
        w.4 = capture(w.0, resolution.ms(), expected.get(device.as_str()).copied());
    }
    out
}

struct Harness {
    bus: Bus,
    history: History,
    fleet: Fleet,
    metrics: StreamMetrics,
    shutdown: CancellationToken,
    config: StreamConfig,
    _dir: std::path::PathBuf,
}

impl Harness {
    fn new(name: &str) -> Harness {
        Harness::with_devices(name, &[("aq-1", 60.0), ("ww-1", 300.0), ("tc-1", 60.0)])
    }

    fn with_devices(name: &str, devices: &[(&str, f64)]) -> Harness {
        let dir = std::env::temp_dir().join(format!("ioc-stream-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let topics = Topics::with_prefix("t.");
        let log = EmbeddedLog::open(
            &dir.join("bus"),
            &topics,
            LogOptions {
                flush_interval: Duration::from_millis(1),
                retention: Duration::from_secs(86_400),
                segment_bytes: SEGMENT_BYTES,
            },
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        log.start_flusher(shutdown.clone());
        let registry = RegistryView::default();
        for (id, interval) in devices.iter().copied() {
            registry.apply(RegistryEvent::Registered {
                device: Device {
                    device_id: id.into(),
                    kind: match &id[..3] {
                        "aq-" => "air_quality".into(),
                        "tc-" => "traffic_counter".into(),
                        _ => "wastewater".into(),
                    },
                    expected_interval_s: interval,
                    road_segment: id.starts_with("tc-").then(|| "Lê Duẩn".into()),
                    free_flow_speed_kmh: id.starts_with("tc-").then_some(55.0),
                    ..Default::default()
                },
            });
        }
        let loaded = ioc_config::load_str(None, []).unwrap();
        let mut config = loaded.stream;
        config.allowed_lateness = Duration::from_millis(LATENESS_MS as u64);
        config.idle_timeout = Duration::from_millis(IDLE_MS as u64);
        // The random data's gaps leave few whole hours and days, and its COD hovers around
        // 100 mg/L: a shorter day and a tighter COD limit (limits are data) give it
        // exceedances to judge.
        config.min_day_hours_qcvn = 4;
        // Likewise hours of a quarter of their readings count, so 8 valid hours in a row occur.
        config.min_hour_capture = 0.25;
        let mut limits = loaded.regulation;
        for l in &mut limits.wastewater[0].limits {
            if l.metric == "cod" {
                l.b = ioc_regulation::qcvn::Limit::Max(COD_LIMIT);
            }
        }
        Harness {
            bus: Bus::Embedded { log, topics },
            history: History::Embedded(EmbeddedHistory::open(&dir.join("history")).unwrap()),
            fleet: Fleet {
                limit: DeviceLimit {
                    rate: 0.0,
                    burst: 0.0,
                },
                registry,
                utc_offset_ms: ICT,
                limits: Arc::new(limits),
            },
            metrics: StreamMetrics::register(&prometheus::Registry::new()).unwrap(),
            shutdown,
            config,
            _dir: dir,
        }
    }

    /// Runs the loop over `messages` in random batches, crashing (when `crashes`) at a random
    /// store or bus operation and restarting from the checkpoint, until every message was
    /// processed and every window closed. Returns how many crashes happened.
    async fn run(&self, messages: &[ReadingBatch], rng: &mut Rng, crashes: bool) -> usize {
        let producer = self.bus.producer(Duration::from_millis(1)).unwrap();
        let topic = self.bus.topics().readings.clone();
        let mut crashed = 0;
        let mut last_version = 0;
        // Processing time: it only moves on, to the newest event time read so far.
        let mut clock = 0i64;
        'restart: loop {
            // A restarted process's clock is past every version the dead one gave out.
            while VersionClock(0).next() <= last_version {
                tokio::task::yield_now().await;
            }
            let budget = Arc::new(AtomicI64::new(if crashes && crashed < 40 {
                1 + rng.below(60) as i64
            } else {
                i64::MAX
            }));
            let step = Step {
                bus: &self.bus,
                history: &self.history,
                producer: &producer,
                metrics: &self.metrics,
                shutdown: &self.shutdown,
                fleet: &self.fleet,
                rollups: true,
                regulatory: true,
                alerting: true,
                quality: true,
                regulation: RegulatorySettings::of(&self.config, &self.fleet),
                stuck_after: &self.config.stuck_after,
                congestion: &self.config.congestion,
                crash_after: Some(budget),
            };
            let mut state = LoopState::restore_all(&self.config, &step, &topic).await;
            // The bus resumes at the checkpoint (or before it: `fresh` drops the rest).
            let mut offset = state.committed.get(&0).copied().unwrap_or(0);
            offset = (offset - rng.below(3) as i64).max(0);
            loop {
                let n = 1 + rng.below(40) as i64;
                let end = (offset + n).min(messages.len() as i64);
                let records: Vec<Consumed> = (offset..end)
                    .map(|o| Consumed {
                        partition: 0,
                        offset: o,
                        batch: Some(messages[o as usize].clone()),
                    })
                    .collect();
                // Once the partition is read, far enough on for every window to close by
                // idleness.
                clock = if records.is_empty() {
                    clock + 10 * IDLE_MS
                } else {
                    records
                        .iter()
                        .flat_map(|c| c.batch.iter().flat_map(|b| b.readings.iter()))
                        .map(|r| r.ts)
                        .fold(clock, i64::max)
                };
                let now = clock;
                let ok = step.batch("g", &topic, records, &mut state, now).await;
                last_version = state.ops.versions.0;
                if !ok {
                    crashed += 1;
                    continue 'restart;
                }
                if end == messages.len() as i64 && offset == end {
                    return crashed;
                }
                offset = end;
            }
        }
    }
}

#[tokio::test]
async fn every_window_at_every_resolution_equals_a_recomputation_after_random_crashes() {
    let mut total_crashes = 0;
    let mut periods = std::collections::BTreeSet::new();
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let messages = partition(&mut rng);
        let h = Harness::new(&format!("prop-{seed}"));
        total_crashes += h.run(&messages, &mut rng, seed != 1).await;

        let all = HistoryFilter {
            from: 0,
            to: i64::MAX,
            limit: usize::MAX,
            ..Default::default()
        };
        let raw: Vec<Reading> = h
            .history
            .query::<ReadingRow>(&all)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.into_reading())
            .collect();
        let expected_interval = HashMap::from([("aq-1", 60.0), ("ww-1", 300.0), ("tc-1", 60.0)]);
        for resolution in Resolution::ALL {
            let want = recompute(&raw, resolution, &expected_interval);
            let stored: Vec<Aggregate> = h
                .history
                .query::<AggregateRow>(&HistoryFilter {
                    resolution,
                    ..all.clone()
                })
                .await
                .unwrap()
                .into_iter()
                .map(Aggregate::from)
                .collect::<Vec<_>>();
            let got: BTreeMap<_, _> = stored
                .iter()
                .map(|a| {
                    (
                        (
                            a.device_id.clone(),
                            a.channel.clone(),
                            a.metric.clone(),
                            a.window_start,
                        ),
                        a,
                    )
                })
                .collect();
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "seed {seed}: the {resolution} windows stored are the ones the raw rows have"
            );
            for (key, (count, sum, min, max, capture)) in &want {
                let a = got[key];
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs().max(1.0);
                assert!(
                    a.count == *count
                        && close(a.sum, *sum)
                        && a.min == *min
                        && a.max == *max
                        && close(a.mean, sum / *count as f64)
                        && a.capture.zip(*capture).is_none_or(|(x, y)| close(x, y))
                        && a.capture.is_some() == capture.is_some()
                        && a.window_end == a.window_start + resolution.ms(),
                    "seed {seed}: {resolution} window {key:?} is {a:?}, recomputed ({count}, {sum}, {min}, {max}, {capture:?})"
                );
            }
        }

        // What was published: one content per window and version.
        let mut seen: HashMap<(Resolution, String, String, String, i64, u64), String> =
            HashMap::new();
        for record in h.bus.read_all(&h.bus.topics().aggregates).await.unwrap() {
            let a: Aggregate = serde_json::from_slice(&record.payload).unwrap();
            let key = (
                a.resolution,
                a.device_id.clone(),
                a.channel.clone(),
                a.metric.clone(),
                a.window_start,
                a.version,
            );
            let content = format!("{a:?}");
            if let Some(before) = seen.insert(key, content.clone()) {
                assert_eq!(
                    before, content,
                    "seed {seed}: one window, one version, two contents"
                );
            }
        }

        traffic_equals_a_derivation_from_the_final_rows(&h, &raw, seed).await;
        quality_equals_a_count_of_the_final_rows(&h, &messages, seed).await;
        aqi_equals_ioc_aqi_over_the_recomputed_hours(&h, &raw, &expected_interval, seed).await;
        exceedances_equal_the_limits_over_the_recomputed_hours(
            &h,
            &raw,
            &expected_interval,
            seed,
            &mut periods,
        )
        .await;
        h.shutdown.cancel();
    }
    assert!(total_crashes > 100, "only {total_crashes} crashes");
    assert_eq!(
        periods.into_iter().collect::<Vec<_>>(),
        vec!["1h", "24h", "8h"],
        "the data exceeds limits over every period"
    );
}

/// The quality counts stored after random crashes are those of one count over the final raw
/// rows (every minute before each device's last `closed_until` that has readings): a replay
/// neither loses nor doubles a reading, a stuck run or a spike.
async fn quality_equals_a_count_of_the_final_rows(
    h: &Harness,
    messages: &[ReadingBatch],
    seed: u64,
) {
    let all = HistoryFilter {
        from: 0,
        to: i64::MAX,
        limit: usize::MAX,
        ..Default::default()
    };
    let raw: Vec<ReadingRow> = h.history.query::<ReadingRow>(&all).await.unwrap();
    let resent: Vec<CopyRow> = h.history.query::<CopyRow>(&all).await.unwrap();
    // Every good reading's key that came in more than one message has a row per message
    // (resends are found among good readings: README).
    let mut messages_of: BTreeMap<(String, String, String, i64), std::collections::BTreeSet<u64>> =
        BTreeMap::new();
    for r in messages
        .iter()
        .flat_map(|m| m.readings.iter())
        .filter(|r| r.quality == Quality::Good)
    {
        messages_of
            .entry((
                r.device_id.clone(),
                r.channel.clone(),
                r.metric.clone(),
                r.ts,
            ))
            .or_default()
            .insert(windows::message_hash(&r.message_id));
    }
    let copies: std::collections::BTreeSet<_> = messages_of
        .into_iter()
        .filter(|(_, m)| m.len() > 1)
        .flat_map(|((d, c, m, ts), messages)| {
            messages
                .into_iter()
                .map(move |h| (d.clone(), c.clone(), m.clone(), ts, h))
        })
        .collect();
    let found: std::collections::BTreeSet<_> = resent
        .iter()
        .map(|r| {
            (
                r.device_id.clone(),
                r.channel.clone(),
                r.metric.clone(),
                r.ts,
                r.message,
            )
        })
        .collect();
    assert_eq!(
        found, copies,
        "seed {seed}: a row for each message of each resent key"
    );
    assert!(!copies.is_empty(), "seed {seed}: the data has resends");
    let closed: HashMap<String, i64> = h
        .history
        .closed_until()
        .await
        .unwrap()
        .into_iter()
        .collect();
    let stuck_after = |m: &str| {
        let c = &h.config.stuck_after;
        c.get(m).or(c.get("default")).copied().unwrap_or(0)
    };
    let longest = h.config.stuck_after.values().copied().max().unwrap_or(0);
    let mut want: BTreeMap<(String, String, String, i64), QualityRow> = BTreeMap::new();
    for (device, interval) in [("aq-1", 60.0), ("ww-1", 300.0), ("tc-1", 60.0)] {
        let rows: Vec<ReadingRow> = raw
            .iter()
            .filter(|r| r.device_id == device)
            .cloned()
            .collect();
        let mut due = quality::Due::default();
        due.add(i64::MIN / 2, closed[device]);
        let lookback = quality::lookback_ms(longest, Some(interval));
        let copies: Vec<CopyRow> = resent
            .iter()
            .filter(|r| r.device_id == device)
            .cloned()
            .collect();
        for q in quality::count(&rows, &copies, &due, lookback, stuck_after, 0) {
            want.insert(
                (
                    q.device_id.clone(),
                    q.channel.clone(),
                    q.metric.clone(),
                    q.window_start,
                ),
                q,
            );
        }
    }
    let stored: Vec<QualityRow> = h.history.query::<QualityRow>(&all).await.unwrap();
    let got: BTreeMap<_, _> = stored
        .into_iter()
        .map(|q| {
            (
                (
                    q.device_id.clone(),
                    q.channel.clone(),
                    q.metric.clone(),
                    q.window_start,
                ),
                QualityRow { version: 0, ..q },
            )
        })
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "seed {seed}: the minutes counted are those with readings"
    );
    for (key, q) in &want {
        assert_eq!(&got[key], q, "seed {seed}: minute {key:?}");
    }
    let totals = |f: fn(&QualityRow) -> u32| want.values().map(f).sum::<u32>();
    // Everything closed at the end (the devices fell idle), a failed sensor's bad minutes too.
    assert!(
        totals(|q| q.bad) > 0 && totals(|q| q.received) as usize == raw.len(),
        "seed {seed}: every reading counted once"
    );
    assert!(
        totals(|q| q.spikes) > 0,
        "seed {seed}: the random values have spikes to judge"
    );
}

/// The exceedances stored as `exceeded` are exactly the means over the recomputed hourly windows
/// beyond the harness's COD limit (ww-1's outlet, [`COD_LIMIT`]) and QCVN 05 (aq-1's PM2.5 day over
/// 45 µg/m³ from 2026, NO2 hour over 200 and day over 100), each with its mean; whatever else
/// was published is withdrawn.
async fn exceedances_equal_the_limits_over_the_recomputed_hours(
    h: &Harness,
    raw: &[Reading],
    expected_interval: &HashMap<&str, f64>,
    seed: u64,
    periods: &mut std::collections::BTreeSet<String>,
) {
    let hours = recompute(raw, Resolution::Hour, expected_interval);
    let valid = |capture: &Option<f64>| capture.is_none_or(|c| c >= h.config.min_hour_capture);
    let mut want: BTreeMap<(String, String, String, i64), f64> = BTreeMap::new();
    let mut days: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    let mut valid_hours: HashMap<(String, i64), f64> = HashMap::new();
    for ((device, channel, metric, start), (count, sum, _, _, capture)) in &hours {
        if !valid(capture) {
            continue;
        }
        let mean = sum / *count as f64;
        let hourly_limit = match (device.as_str(), metric.as_str()) {
            ("ww-1", "cod") => Some(COD_LIMIT),
            ("aq-1", "no2" | "o3") => Some(200.0),
            ("aq-1", "co") => Some(30_000.0),
            _ => None,
        };
        if hourly_limit.is_some_and(|l| mean > l) {
            want.insert((channel.clone(), metric.clone(), "1h".into(), *start), mean);
        }
        if device == "aq-1" {
            days.entry((metric.clone(), Resolution::Day.start(*start, ICT)))
                .or_default()
                .push(mean);
            valid_hours.insert((metric.clone(), *start), mean);
        }
    }
    // 8-hour running means over 8 valid hours, ending at an hour with a window.
    for ((device, _, metric, end), _) in &hours {
        let limit = match (device.as_str(), metric.as_str()) {
            ("aq-1", "co") => 10_000.0,
            ("aq-1", "o3") => 120.0,
            _ => continue,
        };
        let start = end - 7 * 3_600_000;
        let means: Option<Vec<f64>> = (0..8)
            .map(|k| {
                valid_hours
                    .get(&(metric.clone(), start + k * 3_600_000))
                    .copied()
            })
            .collect();
        if let Some(mean) = means.map(|m| m.iter().sum::<f64>() / 8.0) {
            if mean > limit {
                want.insert((String::new(), metric.clone(), "8h".into(), start), mean);
            }
        }
    }
    for ((metric, day), means) in days {
        let limit = match metric.as_str() {
            "pm25" => 45.0,
            "pm10" | "no2" => 100.0,
            _ => continue,
        };
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        if means.len() >= h.config.min_day_hours_qcvn && mean > limit {
            want.insert((String::new(), metric, "24h".into(), day), mean);
        }
    }
    let stored = h
        .history
        .query::<ExceedanceRow>(&HistoryFilter {
            from: 0,
            to: i64::MAX,
            limit: usize::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    let got: BTreeMap<(String, String, String, i64), f64> = stored
        .iter()
        .filter(|e| e.status == "exceeded")
        .map(|e| {
            (
                (
                    e.channel.clone(),
                    e.metric.clone(),
                    e.period.clone(),
                    e.window_start,
                ),
                e.value,
            )
        })
        .collect();
    periods.extend(want.keys().map(|k| k.2.clone()));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "seed {seed}: the exceedances are the means beyond their limits"
    );
    for (k, v) in &want {
        assert!(
            (got[k] - v).abs() <= 1e-9 * v,
            "seed {seed}: {k:?} {} vs {v}",
            got[k]
        );
    }
    // The topic carries one content per version, and its latest record of each exceedance is
    // the stored one (a record stored is one published).
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut latest: HashMap<String, ExceedanceRow> = HashMap::new();
    for record in h.bus.read_all(&h.bus.topics().exceedances).await.unwrap() {
        let e: ExceedanceRow = serde_json::from_slice(&record.payload).unwrap();
        let id = format!(
            "{:?}",
            (
                &e.device_id,
                &e.channel,
                &e.metric,
                &e.period,
                e.window_start
            )
        );
        let key = format!("{id}/{}", e.version);
        let content = format!("{e:?}");
        if let Some(before) = seen.insert(key, content.clone()) {
            assert_eq!(
                before, content,
                "seed {seed}: one exceedance, one version, two contents"
            );
        }
        if latest.get(&id).is_none_or(|l| l.version <= e.version) {
            latest.insert(id, e);
        }
    }
    assert_eq!(
        latest.len(),
        stored.len(),
        "seed {seed}: every stored exceedance was published"
    );
    // (serde_json reads a float back to within an ulp.)
    let rounded = |e: &ExceedanceRow| ExceedanceRow {
        value: (e.value * 1e9).round(),
        multiple: (e.multiple * 1e9).round(),
        ..e.clone()
    };
    for e in &stored {
        let id = format!(
            "{:?}",
            (
                &e.device_id,
                &e.channel,
                &e.metric,
                &e.period,
                e.window_start
            )
        );
        assert_eq!(
            latest.get(&id).map(rounded),
            Some(rounded(e)),
            "seed {seed}: the topic's latest is the stored one"
        );
    }
}

/// The stored traffic of tc-1 is, for every 5-minute and hourly window holding its good
/// readings, the traffic operator's derivation from the final raw rows (so a late reading's
/// revision reached it), and the `traffic` topic carries one content per window and version.
async fn traffic_equals_a_derivation_from_the_final_rows(h: &Harness, raw: &[Reading], seed: u64) {
    let readings: Vec<ReadingRow> = raw
        .iter()
        .filter(|r| r.device_id == "tc-1")
        .map(ReadingRow::from)
        .collect();
    let device = h.fleet.registry.get("tc-1").unwrap();
    let mut want = Vec::new();
    for resolution in [Resolution::FiveMinutes, Resolution::Hour] {
        let starts: std::collections::BTreeSet<i64> = readings
            .iter()
            .filter(|r| r.quality == "good")
            .map(|r| resolution.start(r.ts, ICT))
            .collect();
        for start in starts {
            let window = (resolution, start, start + resolution.ms());
            want.extend(crate::traffic::derive(
                &device,
                window,
                &readings,
                &h.config.congestion,
                0,
            ));
        }
    }
    let all = HistoryFilter {
        from: 0,
        to: i64::MAX,
        limit: usize::MAX,
        ..Default::default()
    };
    let mut got: Vec<ioc_history::TrafficRow> = Vec::new();
    for resolution in [Resolution::FiveMinutes, Resolution::Hour] {
        got.extend(
            h.history
                .query::<ioc_history::TrafficRow>(&HistoryFilter {
                    resolution,
                    ..all.clone()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|t| ioc_history::TrafficRow { version: 0, ..t }),
        );
    }
    let key = |t: &ioc_history::TrafficRow| (t.resolution.clone(), t.window_start);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert!(
        want.len() > 100,
        "seed {seed}: {} traffic windows",
        want.len()
    );
    let levels: std::collections::BTreeSet<&str> = want.iter().map(|t| t.level.as_str()).collect();
    assert!(
        levels.len() >= 3,
        "seed {seed}: the data reaches several levels: {levels:?}"
    );
    // Sums in another order may differ in the last bit: compare at the records' rounding.
    let rounded = |t: &ioc_history::TrafficRow| format!("{t:?}");
    assert_eq!(
        got.iter().map(rounded).collect::<Vec<_>>(),
        want.iter().map(rounded).collect::<Vec<_>>(),
        "seed {seed}: the stored traffic is the derivation from the recomputed minutes"
    );
    let mut seen: HashMap<(String, i64, u64), String> = HashMap::new();
    for record in h.bus.read_all(&h.bus.topics().traffic).await.unwrap() {
        let Ok(TrafficRecord::Flow(t)) = serde_json::from_slice(&record.payload) else {
            panic!("seed {seed}: a traffic record of a counter");
        };
        let content = format!("{t:?}");
        if let Some(before) = seen.insert(
            (t.resolution.clone(), t.window_start, t.version),
            content.clone(),
        ) {
            assert_eq!(
                before, content,
                "seed {seed}: one window, one version, two contents"
            );
        }
    }
}

/// The stored hourly and daily AQI equal what `ioc aqi` gives for a CSV of the hourly means
/// recomputed from the final raw rows (an hour below the capture threshold as empty cells), and
/// the `aqi` topic carries one content per record and version.
async fn aqi_equals_ioc_aqi_over_the_recomputed_hours(
    h: &Harness,
    raw: &[Reading],
    expected_interval: &HashMap<&str, f64>,
    seed: u64,
) {
    use ioc_regulation::csv::{daily_report, hourly_report, parse_hourly_csv};
    let hours = recompute(raw, Resolution::Hour, expected_interval);
    let mut by_hour: BTreeMap<i64, [String; 6]> = BTreeMap::new();
    for ((device, _, metric, start), (count, sum, _, _, capture)) in &hours {
        let Some(i) = crate::aqi::POLLUTANTS.iter().position(|p| p == metric) else {
            continue;
        };
        if device != "aq-1" {
            continue;
        }
        let cells = by_hour.entry(*start).or_default();
        if capture.is_none_or(|c| c >= h.config.min_hour_capture) {
            cells[i] = format!("{}", sum / *count as f64);
        }
    }
    let offset = chrono::FixedOffset::east_opt((ICT / 1000) as i32).unwrap();
    let mut csv = String::from(ioc_regulation::csv::HEADER);
    for (start, cells) in &by_hour {
        let end = chrono::DateTime::from_timestamp_millis(start + 3_600_000)
            .unwrap()
            .with_timezone(&offset)
            .to_rfc3339();
        csv.push_str(&format!("\naq-1,{end},{}", cells.join(",")));
    }
    let rows = parse_hourly_csv(&csv).unwrap();
    let stored = |resolution| async move {
        h.history
            .query::<AqiRow>(&HistoryFilter {
                from: 0,
                to: i64::MAX,
                limit: usize::MAX,
                resolution,
                ..Default::default()
            })
            .await
            .unwrap()
    };
    type Hourly = (
        String,
        Option<u32>,
        Option<String>,
        Option<f64>,
        Option<f64>,
    );
    let hourly: Vec<Hourly> = stored(Resolution::Hour)
        .await
        .iter()
        .map(|a| {
            let end = chrono::DateTime::from_timestamp_millis(a.window_end)
                .unwrap()
                .with_timezone(&offset)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            (
                end,
                a.aqi,
                (!a.dominant.is_empty()).then(|| a.dominant.clone()),
                a.nowcast_pm25.map(ioc_regulation::csv::round1),
                a.nowcast_pm10.map(ioc_regulation::csv::round1),
            )
        })
        .collect();
    let want: Vec<Hourly> = hourly_report(&rows)
        .into_iter()
        .map(|o| (o.time, o.aqi, o.dominant, o.nowcast_pm25, o.nowcast_pm10))
        .collect();
    assert!(want.len() > 30, "seed {seed}: {} hours", want.len());
    assert_eq!(
        hourly, want,
        "seed {seed}: hourly AQI as `ioc aqi` gives it"
    );
    type Daily = (String, Option<u32>, Option<String>, Option<u32>);
    let daily: Vec<Daily> = stored(Resolution::Day)
        .await
        .iter()
        .map(|a| {
            let date = chrono::DateTime::from_timestamp_millis(a.window_start)
                .unwrap()
                .with_timezone(&offset)
                .format("%Y-%m-%d")
                .to_string();
            (
                date,
                a.aqi,
                (!a.dominant.is_empty()).then(|| a.dominant.clone()),
                a.valid_hours,
            )
        })
        .collect();
    let want: Vec<Daily> = daily_report(&rows, h.config.min_day_hours)
        .into_iter()
        .map(|o| (o.date, o.aqi, o.dominant, Some(o.valid_hours)))
        .collect();
    assert!(
        daily.iter().any(|d| d.2.as_deref() == Some("o3"))
            || hourly.iter().any(|h| h.2.as_deref() == Some("o3")),
        "seed {seed}: O3 dominates somewhere, so its sub-indices are compared too"
    );
    assert_eq!(
        daily, want,
        "seed {seed}: daily AQI as `ioc aqi --daily` gives it"
    );

    let mut seen: HashMap<(String, String, i64, u64), String> = HashMap::new();
    for record in h.bus.read_all(&h.bus.topics().aqi).await.unwrap() {
        let a: AqiRow = serde_json::from_slice(&record.payload).unwrap();
        let key = (
            a.device_id.clone(),
            a.resolution.clone(),
            a.window_start,
            a.version,
        );
        let content = format!("{a:?}");
        if let Some(before) = seen.insert(key, content.clone()) {
            assert_eq!(
                before, content,
                "seed {seed}: one AQI, one version, two contents"
            );
        }
    }
    assert!(!seen.is_empty());
}

/// Readings per second through the readings loop (embedded store, one thread): 1-minute
/// windows only, with the roll-ups, and with the roll-ups, VN_AQI and exceedances, alternating
/// in one run; and what the AQI and exceedance operators cost per station-hour: README,
/// "Measured". `cargo test --release --workspace -- --ignored --nocapture readings_per_second`
#[tokio::test]
#[ignore]
async fn readings_per_second_with_and_without_rollups() {
    // 100 air stations, 3 AQI pollutants every 10 s of event time, for 3 hours: 324 000
    // readings and 300 station-hours a round.
    let ids: Vec<String> = (0..100).map(|i| format!("aq-{i:03}")).collect();
    let devices: Vec<(&str, f64)> = ids.iter().map(|d| (d.as_str(), 10.0)).collect();
    let hours = 3;
    let mut messages = Vec::new();
    for step in 0..hours * 360 {
        let ts = DAY0 + step * 10_000;
        for d in &ids {
            messages.push(ReadingBatch {
                readings: ["pm25", "pm10", "no2"]
                    .iter()
                    .enumerate()
                    .map(|(i, m)| reading(d, m, ts, (step % 97) as f64 + i as f64, Quality::Good))
                    .collect(),
            });
        }
    }
    let readings: usize = messages.iter().map(|m| m.readings.len()).sum();
    let station_hours = (ids.len() as i64 * hours) as f64;
    const MODES: [(&str, bool, bool, bool, bool); 5] = [
        ("1-minute only", false, false, false, false),
        ("roll-ups", true, false, false, false),
        ("roll-ups, AQI, exceedances", true, true, false, false),
        (
            "roll-ups, AQI, exceedances, built-in alert rules",
            true,
            true,
            true,
            false,
        ),
        (
            "roll-ups, AQI, exceedances, built-in alert rules, data quality",
            true,
            true,
            true,
            true,
        ),
    ];
    let mut results: Vec<(usize, f64)> = Vec::new();
    for round in 0..3 {
        for (mode, (name, rollups, regulatory, alerting, quality)) in MODES.iter().enumerate() {
            let h = Harness::with_devices(&format!("bench-{round}-{mode}"), &devices);
            let producer = h.bus.producer(Duration::from_millis(1)).unwrap();
            let step = Step {
                bus: &h.bus,
                history: &h.history,
                producer: &producer,
                metrics: &h.metrics,
                shutdown: &h.shutdown,
                fleet: &h.fleet,
                rollups: *rollups,
                regulatory: *regulatory,
                alerting: *alerting,
                quality: *quality,
                regulation: RegulatorySettings::of(&h.config, &h.fleet),
                stuck_after: &h.config.stuck_after,
                congestion: &h.config.congestion,
                crash_after: None,
            };
            let topic = h.bus.topics().readings.clone();
            let mut state = LoopState::restore_all(&h.config, &step, &topic).await;
            let started = std::time::Instant::now();
            for (i, chunk) in messages.chunks(2000).enumerate() {
                let first = (i * 2000) as i64;
                let records: Vec<Consumed> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, m)| Consumed {
                        partition: 0,
                        offset: first + j as i64,
                        batch: Some(m.clone()),
                    })
                    .collect();
                let now = chunk[chunk.len() - 1].readings[0].ts;
                assert!(step.batch("g", &topic, records, &mut state, now).await);
                if i % 10 == 9 {
                    h.history.flush().await.unwrap();
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "round {round}, {name}: {:.0} readings/s",
                readings as f64 / seconds
            );
            results.push((mode, seconds));
            h.shutdown.cancel();
        }
    }
    let median = |mode: usize| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == mode)
            .map(|r| r.1)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |mode: usize| readings as f64 / median(mode);
    println!(
        "median: 1-minute only {:.0} readings/s, with roll-ups {:.0} (+{:.1} % per reading), with roll-ups, AQI and exceedances {:.0} (+{:.1} %); the AQI and exceedance operators {:.2} ms per station-hour",
        rate(0),
        rate(1),
        (median(1) / median(0) - 1.0) * 100.0,
        rate(2),
        (median(2) / median(0) - 1.0) * 100.0,
        (median(2) - median(1)) * 1000.0 / station_hours,
    );
    println!(
        "median: with the built-in alert rules too {:.0} readings/s (+{:.1} % over roll-ups, AQI and exceedances)",
        rate(3),
        (median(3) / median(2) - 1.0) * 100.0,
    );
    println!(
        "median: with data quality too {:.0} readings/s (+{:.1} % per reading over all of that)",
        rate(4),
        (median(4) / median(3) - 1.0) * 100.0,
    );
}

/// A station that flags its readings as calibrating (TT10 status `01`: suspect) may send any
/// value: suspect readings never reach a window, so they raise no alert and notify no one. The
/// same values measured raise the QCVN 40 alert, so the test can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrating_readings_raise_no_alert_where_measured_ones_do() {
    for (quality, name) in [
        (Quality::Suspect, "calibrating"),
        (Quality::Good, "measured"),
    ] {
        let h = Harness::with_devices(name, &[("ww-1", 300.0)]);
        // Ten hours at three times the COD limit, every 5 minutes, with a little variation (a
        // constant value is a stuck sensor, another alert).
        let messages: Vec<ReadingBatch> = (0..10 * 12)
            .map(|i| {
                let ts = DAY0 + 8 * 3_600_000 + i * 300_000 + 10_000;
                let mut r = reading("ww-1", "cod", ts, 3.0 * COD_LIMIT + (i % 3) as f64, quality);
                if quality == Quality::Suspect {
                    r.quality_reason = "station calibrating (status 01)".into();
                }
                ReadingBatch { readings: vec![r] }
            })
            .collect();
        h.run(&messages, &mut Rng(7), false).await;
        let alerts = h
            .history
            .query::<ioc_history::AlertRow>(&HistoryFilter {
                from: 0,
                to: i64::MAX,
                limit: usize::MAX,
                ..Default::default()
            })
            .await
            .unwrap();
        let qcvn: Vec<_> = alerts
            .iter()
            .filter(|a| a.rule == ioc_config::rules::QCVN_WATER_RULE)
            .collect();
        if quality == Quality::Suspect {
            assert!(alerts.is_empty(), "calibrating raised {alerts:#?}");
        } else {
            assert_eq!(qcvn.len(), 1, "{alerts:#?}");
        }
        h.shutdown.cancel();
    }
}
