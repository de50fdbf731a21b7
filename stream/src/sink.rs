//! Record sinks: bus topics whose records are stored as they are. Camera events, their evidence
//! (plates in clear, to its own table only), quarantined camera messages, and the dead letters
//! of every other device (without their bytes: what the quality scores count as rejected). Each sink consumes
//! its topic from its checkpoint, writes a batch idempotently (one row per event id or message
//! id, highest version wins), then checkpoints the offsets after it: a crash between the two
//! repeats the write, harmlessly.
//!
//! After each batch of camera events is stored, the violations of the hours it touched are
//! counted per camera and type (`violations.rs`), stored and published on `traffic`.
//!
//! Camera events are held to the fleet-wide rate like readings (`limit.rs`, state checkpointed
//! in the same offset row): an event over it is quarantined (`rate_limited`, the event record as
//! its bytes) instead of stored. Its evidence is stored all the same, in the restricted table
//! where a rejected camera message's bytes, plate included, also go: the two topics interleave
//! two ingest processes' records differently, so no single decision could cover both.

use std::collections::{BTreeMap, HashMap};

use ioc_bus::StartAt;
use ioc_config::StreamConfig;
use ioc_contract::{DeadLetter, Event, Evidence};
use ioc_history::{
    DeadLetterRow, EventRow, EvidenceRow, HistoryFilter, OffsetRow, QuarantineRow, TrafficRecord,
};

use crate::{Step, StreamError, VersionClock};

/// The topics stored as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Events,
    Evidence,
    Quarantine,
    DeadLetters,
}

impl Sink {
    pub const ALL: [Sink; 4] = [
        Sink::Events,
        Sink::Evidence,
        Sink::Quarantine,
        Sink::DeadLetters,
    ];

    /// The table it writes (the metric label).
    pub fn table(self) -> &'static str {
        match self {
            Sink::Events => "events",
            Sink::Evidence => "evidence",
            Sink::Quarantine => "camera_quarantine",
            Sink::DeadLetters => "deadletters",
        }
    }

    fn topic(self, topics: &ioc_contract::Topics) -> &str {
        match self {
            Sink::Events => &topics.events,
            Sink::Evidence => &topics.evidence,
            Sink::Quarantine => &topics.quarantine,
            Sink::DeadLetters => &topics.deadletter,
        }
    }
}

/// What a batch of one sink's records parsed to.
enum Parsed {
    Events(Vec<Event>),
    Evidence(Vec<Evidence>),
    Quarantine(Vec<DeadLetter>),
    DeadLetters(Vec<DeadLetter>),
}

impl Parsed {
    fn new(sink: Sink) -> Parsed {
        match sink {
            Sink::Events => Parsed::Events(Vec::new()),
            Sink::Evidence => Parsed::Evidence(Vec::new()),
            Sink::Quarantine => Parsed::Quarantine(Vec::new()),
            Sink::DeadLetters => Parsed::DeadLetters(Vec::new()),
        }
    }

    /// Adds one record; false if it is not what the topic carries.
    fn push(&mut self, payload: &[u8]) -> bool {
        match self {
            Parsed::Events(v) => serde_json::from_slice(payload).map(|e| v.push(e)).is_ok(),
            Parsed::Evidence(v) => serde_json::from_slice(payload).map(|e| v.push(e)).is_ok(),
            Parsed::Quarantine(v) | Parsed::DeadLetters(v) => {
                serde_json::from_slice(payload).map(|e| v.push(e)).is_ok()
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Parsed::Events(v) => v.len(),
            Parsed::Evidence(v) => v.len(),
            Parsed::Quarantine(v) | Parsed::DeadLetters(v) => v.len(),
        }
    }
}

/// Runs one sink until shutdown.
pub(crate) async fn run(
    sink: Sink,
    config: &StreamConfig,
    step: &Step<'_>,
) -> Result<(), StreamError> {
    let topic = sink.topic(step.bus.topics()).to_string();
    let partitions: Vec<i32> = if config.partitions.is_empty() {
        (0..step.bus.partitions_of(&topic)?).collect()
    } else {
        config.partitions.clone()
    };
    let positions = step.history.offsets(&config.group_id, &topic).await?;
    let mut committed: HashMap<i32, i64> = positions
        .iter()
        .map(|p| (p.partition, p.next_offset))
        .collect();
    let mut next_expected = committed.clone();
    let rule = match sink {
        Sink::Events => step.fleet.limit.rule(),
        Sink::Evidence | Sink::Quarantine | Sink::DeadLetters => None,
    };
    let mut limiter = crate::restored_limiter(rule, &topic, &positions);
    let mut consumer = step.bus.consumer_at(
        &topic,
        partitions.iter().map(|p| {
            (
                *p,
                committed
                    .get(p)
                    .map_or(StartAt::Beginning, |o| StartAt::Offset(*o)),
            )
        }),
    )?;
    let stored = step
        .metrics
        .records_stored
        .with_label_values(&[sink.table()]);
    let mut versions = VersionClock(0);
    // Event ids remembered to count resends: the last 50 000 to 100 000 events.
    let mut recent = crate::recent::Recent::new(50_000);
    let mut violations = crate::violations::Kept::default();
    while !step.shutdown.is_cancelled() {
        let mut parsed = Parsed::new(sink);
        let mut limited = Vec::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let deadline = tokio::time::Instant::now() + config.batch_linger;
        let mut taken = 0;
        while taken < config.batch_max_records {
            let record = tokio::select! {
                r = consumer.recv() => r,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = step.shutdown.cancelled() => break,
            };
            match record {
                Ok(r) => {
                    if !crate::fresh(
                        &mut next_expected,
                        r.partition,
                        r.offset,
                        &topic,
                        step.metrics,
                    ) {
                        continue; // below the checkpoint (decided and stored), or delivered again
                    }
                    taken += 1;
                    next.insert(r.partition, r.offset + 1);
                    if !parsed.push(&r.payload) {
                        // Never log the payload: evidence and quarantine records hold plates.
                        step.metrics.unreadable_records.inc();
                        tracing::error!(topic = %r.topic, partition = r.partition, offset = r.offset, "record is not what its topic carries; skipped");
                    } else if let Parsed::Events(events) = &mut parsed {
                        let e = events.last().expect("just pushed");
                        if !limiter.admit(r.partition, r.offset, &e.device_id, e.received_at) {
                            let e = events.pop().expect("just pushed");
                            limited.push(step.fleet.limit.letter(
                                &topic,
                                &e.device_id,
                                e.received_at,
                                &e.message_id,
                                &r.payload,
                            ));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, %topic, "bus consume error");
                    break;
                }
            }
        }
        if taken == 0 {
            continue;
        }
        if !step
            .publish_rate_limited(&step.bus.topics().quarantine, &limited)
            .await
        {
            return Ok(()); // shut down mid-retry; nothing was checkpointed for it
        }
        if let Parsed::Events(events) = &parsed {
            let resent = events
                .iter()
                .filter(|e| recent.seen(crate::recent::event_key(&e.event_id)))
                .count();
            step.metrics.duplicate_events.inc_by(resent as u64);
        }
        let n = parsed.len();
        if n > 0 {
            let written = step
                .retry(&format!("storing {}", sink.table()), || async {
                    match &parsed {
                        Parsed::Events(v) => step.history.insert(&rows_of::<_, EventRow>(v)).await,
                        Parsed::Evidence(v) => {
                            step.history.insert(&rows_of::<_, EvidenceRow>(v)).await
                        }
                        Parsed::Quarantine(v) => {
                            step.history.insert(&rows_of::<_, QuarantineRow>(v)).await
                        }
                        Parsed::DeadLetters(v) => {
                            step.history.insert(&rows_of::<_, DeadLetterRow>(v)).await
                        }
                    }
                })
                .await;
            if written.is_none() {
                return Ok(()); // shut down mid-retry; nothing was checkpointed for it
            }
            stored.inc_by(n as u64);
        }
        if let Parsed::Events(events) = &parsed {
            if !count_violations(step, events, &mut violations, &mut versions).await {
                return Ok(()); // shut down mid-retry; nothing was checkpointed for it
            }
        }
        let version = versions.next();
        let rows: Vec<OffsetRow> = next
            .into_iter()
            .filter(|(p, o)| committed.get(p).is_none_or(|c| o > c))
            .map(|(partition, next_offset)| OffsetRow {
                group_id: config.group_id.clone(),
                topic: topic.clone(),
                partition,
                next_offset,
                version,
                limiter: limiter.checkpoint(partition, next_offset),
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        if step
            .retry("checkpointing offsets", || {
                step.history.insert_offsets(rows.clone())
            })
            .await
            .is_none()
        {
            return Ok(());
        }
        step.metrics.commits.inc();
        committed.extend(rows.iter().map(|r| (r.partition, r.next_offset)));
    }
    Ok(())
}

/// Counts the violations of the camera-hours `events` (just stored) touch
/// (`violations.rs`), reading the hours not kept from the stored events, then stores the counts
/// and publishes them on the `traffic` topic. False on shutdown mid-way.
async fn count_violations(
    step: &Step<'_>,
    events: &[Event],
    kept: &mut crate::violations::Kept,
    versions: &mut VersionClock,
) -> bool {
    use crate::violations::Kept;
    if events.is_empty() {
        return true;
    }
    let touched = kept.touched(events);
    // One read per range, shared by the cameras whose untouched hours are the same.
    let mut reads: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
    for (device, range) in Kept::to_read(&touched) {
        reads.entry(range).or_default().push(device);
    }
    let mut stored = Vec::new();
    for ((from, to), devices) in reads {
        let filter = HistoryFilter {
            from,
            to,
            limit: usize::MAX,
            any_of: vec![("device_id", devices)],
            ..Default::default()
        };
        let Some(rows) = step
            .retry("reading stored camera events to count violations", || {
                step.history.query::<EventRow>(&filter)
            })
            .await
        else {
            return false;
        };
        stored.extend(rows);
    }
    let rows = kept.count(&touched, &stored, events, versions.next());
    if rows.is_empty() {
        return true;
    }
    if step
        .retry("storing violation counts", || step.history.insert(&rows))
        .await
        .is_none()
    {
        return false;
    }
    let topic = &step.bus.topics().traffic;
    let records: Vec<TrafficRecord> = rows.into_iter().map(TrafficRecord::Violations).collect();
    step.publish_each(
        records
            .iter()
            .map(|r| crate::Outgoing::json(topic, r.device_id(), r))
            .collect(),
    )
    .await
}

/// History rows of bus records.
fn rows_of<'a, T: 'a, R: From<&'a T>>(records: &'a [T]) -> Vec<R> {
    records.iter().map(R::from).collect()
}
