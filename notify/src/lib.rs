//! `ioc notify`: tells people of alerts. It reads `alert-transitions` from its own
//! checkpoint and, for each transition that notifies (not a backfill, not a device in
//! maintenance), records one pending delivery per recipient of the rule, durably, before it
//! checkpoints past the transition; it also records re-notifications of alerts left firing and
//! unacknowledged (the rule's `renotify`) and escalations (`escalate_after`).
//!
//! Each recipient has its own queue and worker, so a failing or slow endpoint delays no one
//! else. A worker sends at most one message per `notify.min_interval`; what is due meanwhile
//! goes together as one digest, never a queue that trails. A failed attempt is retried with
//! exponential backoff (1 s doubling to 5 min) until `notify.max_age`, then given up as
//! `expired`. Every attempt is recorded on the delivery.
//!
//! Guarantee: at least once. Pending deliveries survive restarts and kill -9 (they are stored
//! before the checkpoint moves; a crash before it records them again, and the same key is not
//! recorded twice); a crash between a send and the record of it sends again. Every request
//! carries `Idempotency-Key: alert_id/event` (a digest: one key over all of its items, each
//! item with its own) so a receiver can drop the rare repeat.

pub mod message;
pub mod send;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ioc_bus::registry::RegistryView;
use ioc_bus::retry::until_shutdown;
use ioc_bus::{Bus, StartAt};
use ioc_config::{NotifyConfig, RuleConfig};
use ioc_contract::{Alert, AlertState, AlertTransition, TransitionKind};
use ioc_history::{AlertRow, DeliveryRow, History, HistoryFilter, OffsetRow};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::message::{compose, Notification};
use crate::send::{request_key, Channel};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("bus: {0}")]
    Bus(#[from] ioc_bus::BusError),
    #[error("history: {0}")]
    History(#[from] ioc_history::HistoryError),
    #[error("notify.recipients: {0}")]
    Recipient(String),
}

/// The first retry waits this long, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 300_000;
/// How often re-notifications and escalations are looked for.
const TICK: Duration = Duration::from_secs(5);

/// The stage's Prometheus metrics (`ioc_notify_*`).
#[derive(Clone)]
pub struct NotifyMetrics {
    pub sent: prometheus::IntCounterVec,
    pub failed_attempts: prometheus::IntCounterVec,
    pub expired: prometheus::IntCounter,
    pub pending: prometheus::IntGauge,
}

impl NotifyMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<NotifyMetrics> {
        let sent = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ioc_notify_messages_sent_total",
                "Messages (a notification or a digest) delivered, by channel",
            ),
            &["channel"],
        )?;
        let failed_attempts = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ioc_notify_failed_attempts_total",
                "Delivery attempts that failed (retried), by channel",
            ),
            &["channel"],
        )?;
        let expired = prometheus::IntCounter::new(
            "ioc_notify_expired_deliveries_total",
            "Deliveries given up after notify.max_age",
        )?;
        let pending = prometheus::IntGauge::new(
            "ioc_notify_pending_deliveries",
            "Deliveries waiting to be sent",
        )?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(failed_attempts.clone()))?;
        registry.register(Box::new(expired.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        Ok(NotifyMetrics {
            sent,
            failed_attempts,
            expired,
            pending,
        })
    }
}

/// One recipient's queue of pending deliveries.
#[derive(Default)]
struct Queue {
    items: Mutex<Vec<DeliveryRow>>,
    wake: tokio::sync::Notify,
}

impl Queue {
    fn push(&self, rows: impl IntoIterator<Item = DeliveryRow>) {
        self.items.lock().expect("queue lock").extend(rows);
        self.wake.notify_one();
    }
}

/// An open alert the stage may re-notify or escalate.
struct Open {
    alert: Alert,
    sent: Sent,
}

/// What was sent of one alert: when first and last (wall clock), how many reminders, and
/// whether it was escalated. Restored from the deliveries table at start.
#[derive(Clone, Copy)]
struct Sent {
    first_at: i64,
    last_at: i64,
    reminders: u32,
    escalated: bool,
}

impl Sent {
    fn new(at: i64) -> Sent {
        Sent {
            first_at: at,
            last_at: at,
            reminders: 0,
            escalated: false,
        }
    }
}

/// Folds one recorded delivery into what is known to be recorded and what was sent of its
/// alert. The reminder clock counts firings and reminders only (an escalation does not reset
/// it, as it does not while running).
fn remember(
    d: &DeliveryRow,
    known: &mut HashSet<(String, String, String)>,
    sent: &mut HashMap<String, Sent>,
) {
    known.insert((d.alert_id.clone(), d.event.clone(), d.recipient.clone()));
    let entry = sent
        .entry(d.alert_id.clone())
        .or_insert(Sent::new(d.created_at));
    entry.first_at = entry.first_at.min(d.created_at);
    if d.event != "escalated" {
        entry.last_at = entry.last_at.max(d.created_at);
    }
    if let Some(n) = d
        .event
        .strip_prefix("renotify-")
        .and_then(|n| n.parse().ok())
    {
        entry.reminders = entry.reminders.max(n);
    }
    entry.escalated |= d.event == "escalated";
}

fn now_ms() -> i64 {
    ioc_contract::time::now_ms()
}

/// Everything the stage needs besides the bus and history.
pub struct Settings {
    pub config: NotifyConfig,
    /// The rules in force (their recipients, renotify and escalation).
    pub rules: Vec<RuleConfig>,
    /// `ingest.local_utc_offset`: notifications give local times.
    pub utc_offset_ms: i64,
}

/// Runs the stage until `shutdown`.
pub async fn run(
    settings: Settings,
    bus: &Bus,
    registry: RegistryView,
    history: History,
    metrics: NotifyMetrics,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    history.ensure_schema().await?;
    let config = &settings.config;
    let rules: HashMap<String, RuleConfig> = settings
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    let mut queues: HashMap<String, Arc<Queue>> = HashMap::new();
    let mut workers = Vec::new();
    let ca_pem = match config.ca_file.as_str() {
        "" => None,
        path => Some(
            std::fs::read(path)
                .map_err(|e| NotifyError::Recipient(format!("notify.ca_file {path:?}: {e}")))?,
        ),
    };
    for r in &config.recipients {
        let channel =
            Channel::of(r, &config.smtp, ca_pem.as_deref()).map_err(NotifyError::Recipient)?;
        let queue = Arc::new(Queue::default());
        queues.insert(r.name.clone(), queue.clone());
        workers.push(tokio::spawn(worker(
            r.name.clone(),
            channel,
            queue,
            history.clone(),
            config.min_interval.as_millis() as i64,
            config.max_age.as_millis() as i64,
            metrics.clone(),
            shutdown.clone(),
        )));
    }

    // Restore: pending deliveries to their queues; what was recorded lately, so a replayed
    // transition records nothing twice; open alerts, for reminders.
    let now = now_ms();
    let since = now - config.max_age.as_millis() as i64 - 86_400_000;
    let recent = history
        .query::<DeliveryRow>(&HistoryFilter {
            from: since,
            to: i64::MAX,
            limit: usize::MAX,
            ..Default::default()
        })
        .await?;
    let mut known: HashSet<(String, String, String)> = HashSet::new();
    let mut sent: HashMap<String, Sent> = HashMap::new();
    for d in recent {
        remember(&d, &mut known, &mut sent);
        if d.status == "pending" {
            if let Some(q) = queues.get(&d.recipient) {
                q.push([d]);
            }
        }
    }
    let mut open: HashMap<String, Open> = HashMap::new();
    let open_rows: Vec<Alert> = history
        .query::<AlertRow>(&HistoryFilter {
            from: 0,
            to: i64::MAX,
            limit: usize::MAX,
            any_of: vec![("status", vec!["firing".into(), "acknowledged".into()])],
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(Alert::from)
        .collect();
    // Alerts open for longer than the window read above: their deliveries from their start,
    // so a restart neither escalates them again nor restarts their reminders' count.
    let older: Vec<&Alert> = open_rows
        .iter()
        .filter(|a| !sent.contains_key(&a.alert_id))
        .collect();
    if let Some(from) = older.iter().map(|a| a.started_at.min(a.fired_at)).min() {
        let ids = older.iter().map(|a| a.alert_id.clone()).collect();
        let rows = history
            .query::<DeliveryRow>(&HistoryFilter {
                from: from - 86_400_000,
                to: since,
                limit: usize::MAX,
                any_of: vec![("alert_id", ids)],
                ..Default::default()
            })
            .await?;
        for d in &rows {
            remember(d, &mut known, &mut sent);
        }
    }
    for a in open_rows {
        let sent = sent.get(&a.alert_id).copied().unwrap_or(Sent::new(now));
        open.insert(a.alert_id.clone(), Open { alert: a, sent });
    }

    let topic = bus.topics().alert_transitions.clone();
    let committed: HashMap<i32, i64> = history
        .offsets(&config.group_id, &topic)
        .await?
        .into_iter()
        .map(|p| (p.partition, p.next_offset))
        .collect();
    let partitions = bus.partitions_of(&topic)?;
    let mut consumer = bus.consumer_at(
        &topic,
        (0..partitions).map(|p| {
            (
                p,
                committed
                    .get(&p)
                    .map_or(StartAt::Beginning, |o| StartAt::Offset(*o)),
            )
        }),
    )?;
    let mut committed = committed;
    tracing::info!(recipients = queues.len(), checkpoint = ?committed, "notify consuming alert transitions");
    let stage = Stage {
        config,
        rules: &rules,
        registry: &registry,
        utc_offset_ms: settings.utc_offset_ms,
        queues: &queues,
        history: &history,
        shutdown: &shutdown,
        metrics: &metrics,
    };
    let mut tick = tokio::time::interval(TICK);
    'outer: while !shutdown.is_cancelled() {
        let mut batch: Vec<(i32, i64, Option<AlertTransition>)> = Vec::new();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let rows = stage.reminders(&mut open, &mut known, now_ms());
                if !stage.record(rows).await {
                    break 'outer;
                }
                continue;
            }
            m = consumer.recv() => match m {
                Ok(m) => batch.push((m.partition, m.offset, serde_json::from_slice(&m.payload).ok())),
                Err(e) => {
                    tracing::warn!(error = %e, "bus consume error (alert transitions)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        }
        // What else is already there, without waiting.
        while batch.len() < 500 {
            match tokio::time::timeout(Duration::from_millis(20), consumer.recv()).await {
                Ok(Ok(m)) => batch.push((
                    m.partition,
                    m.offset,
                    serde_json::from_slice(&m.payload).ok(),
                )),
                _ => break,
            }
        }
        let mut rows = Vec::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (partition, offset, t) in batch {
            next.insert(partition, offset + 1);
            if committed.get(&partition).is_some_and(|c| offset < *c) {
                continue;
            }
            let Some(t) = t else {
                tracing::error!(
                    partition,
                    offset,
                    "alert-transitions record is not a transition; skipped"
                );
                continue;
            };
            rows.extend(stage.on_transition(&t, &mut open, &mut known, now_ms()));
        }
        if !stage.record(rows).await {
            break;
        }
        let version = now_ms() as u64;
        let offsets: Vec<OffsetRow> = next
            .iter()
            .map(|(p, o)| OffsetRow {
                group_id: config.group_id.clone(),
                topic: topic.clone(),
                partition: *p,
                next_offset: *o,
                version,
                limiter: String::new(),
            })
            .collect();
        if until_shutdown(
            &shutdown,
            "checkpointing alert transitions",
            || {},
            || history.insert_offsets(offsets.clone()),
        )
        .await
        .is_none()
        {
            break;
        }
        committed.extend(next);
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}

struct Stage<'a> {
    config: &'a NotifyConfig,
    rules: &'a HashMap<String, RuleConfig>,
    registry: &'a RegistryView,
    utc_offset_ms: i64,
    queues: &'a HashMap<String, Arc<Queue>>,
    history: &'a History,
    shutdown: &'a CancellationToken,
    metrics: &'a NotifyMetrics,
}

impl Stage<'_> {
    fn recipients(&self, rule: &str) -> Vec<String> {
        match self.rules.get(rule) {
            Some(r) if !r.recipients.is_empty() => r.recipients.clone(),
            _ => self.config.default_recipients.clone(),
        }
    }

    /// One pending delivery of `event` of `alert` to each of `to` not recorded before.
    fn deliveries(
        &self,
        alert: &Alert,
        event: &str,
        to: &[String],
        known: &mut HashSet<(String, String, String)>,
        now: i64,
    ) -> Vec<DeliveryRow> {
        let device = self.registry.get(&alert.device_id);
        let notification = compose(
            alert,
            event,
            device.as_deref(),
            &self.config.dashboard_url,
            self.utc_offset_ms,
        );
        let json = serde_json::to_string(&notification).unwrap_or_default();
        to.iter()
            .filter(|r| self.queues.contains_key(*r))
            .filter(|r| known.insert((alert.alert_id.clone(), event.to_string(), r.to_string())))
            .map(|r| DeliveryRow {
                alert_id: alert.alert_id.clone(),
                event: event.to_string(),
                recipient: r.clone(),
                device_id: alert.device_id.clone(),
                rule: alert.rule.clone(),
                channel: self
                    .config
                    .recipients
                    .iter()
                    .find(|c| &c.name == r)
                    .map_or("webhook", |c| {
                        if c.webhook.is_some() {
                            "webhook"
                        } else {
                            "email"
                        }
                    })
                    .to_string(),
                status: "pending".into(),
                created_at: now,
                next_at: now,
                attempts: 0,
                sent_at: None,
                last_error: String::new(),
                attempt_log: "[]".into(),
                notification: json.clone(),
                version: now as u64,
            })
            .collect()
    }

    fn on_transition(
        &self,
        t: &AlertTransition,
        open: &mut HashMap<String, Open>,
        known: &mut HashSet<(String, String, String)>,
        now: i64,
    ) -> Vec<DeliveryRow> {
        let event = match t.kind {
            TransitionKind::Fired => {
                // A firing read again after a restart keeps the clocks restored from its
                // deliveries, and the newer state if it was acknowledged since.
                let o = open.entry(t.alert_id.clone()).or_insert_with(|| Open {
                    alert: t.alert.clone(),
                    sent: Sent::new(now),
                });
                if t.alert.version >= o.alert.version {
                    o.alert = t.alert.clone();
                }
                "fired"
            }
            TransitionKind::Acknowledged => {
                if let Some(o) = open.get_mut(&t.alert_id) {
                    o.alert = t.alert.clone();
                }
                return Vec::new();
            }
            TransitionKind::Resolved => {
                open.remove(&t.alert_id);
                "resolved"
            }
        };
        if t.silent {
            return Vec::new();
        }
        self.deliveries(&t.alert, event, &self.recipients(&t.alert.rule), known, now)
    }

    /// Reminders of alerts firing unacknowledged for their rule's `renotify`, and escalations
    /// past its `escalate_after`.
    fn reminders(
        &self,
        open: &mut HashMap<String, Open>,
        known: &mut HashSet<(String, String, String)>,
        now: i64,
    ) -> Vec<DeliveryRow> {
        let mut rows = Vec::new();
        let mut ids: Vec<&String> = open.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            let o = open.get_mut(&id).expect("listed");
            if o.alert.state != AlertState::Firing || o.alert.muted || o.alert.backfill {
                continue;
            }
            let Some(rule) = self.rules.get(&o.alert.rule) else {
                continue;
            };
            if let Some(every) = rule.renotify {
                if now - o.sent.last_at >= every.as_millis() as i64 {
                    o.sent.reminders += 1;
                    o.sent.last_at = now;
                    let event = format!("renotify-{}", o.sent.reminders);
                    let alert = o.alert.clone();
                    rows.extend(self.deliveries(
                        &alert,
                        &event,
                        &self.recipients(&rule.name),
                        known,
                        now,
                    ));
                }
            }
            let o = open.get_mut(&id).expect("listed");
            if let Some(after) = rule.escalate_after {
                // Unacknowledged for `after` since it was first sent, not since its window
                // ended: a window that closes hours late still gives people time to act.
                if !o.sent.escalated && now - o.sent.first_at >= after.as_millis() as i64 {
                    o.sent.escalated = true;
                    let alert = o.alert.clone();
                    rows.extend(self.deliveries(
                        &alert,
                        "escalated",
                        &rule.escalate_to,
                        known,
                        now,
                    ));
                }
            }
        }
        rows
    }

    /// Stores new deliveries, then hands them to their queues. False on shutdown.
    async fn record(&self, rows: Vec<DeliveryRow>) -> bool {
        if rows.is_empty() {
            return true;
        }
        if until_shutdown(
            self.shutdown,
            "recording deliveries",
            || {},
            || self.history.insert(&rows),
        )
        .await
        .is_none()
        {
            return false;
        }
        self.metrics.pending.add(rows.len() as i64);
        let mut by_recipient: BTreeMap<String, Vec<DeliveryRow>> = BTreeMap::new();
        for r in rows {
            by_recipient.entry(r.recipient.clone()).or_default().push(r);
        }
        for (recipient, rows) in by_recipient {
            if let Some(q) = self.queues.get(&recipient) {
                q.push(rows);
            }
        }
        true
    }
}

/// One recipient's worker (crate docs).
#[allow(clippy::too_many_arguments)]
async fn worker(
    name: String,
    channel: Channel,
    queue: Arc<Queue>,
    history: History,
    min_interval_ms: i64,
    max_age_ms: i64,
    metrics: NotifyMetrics,
    shutdown: CancellationToken,
) {
    // The recipient's own pace: after a send, `min_interval`; after consecutive failures, the
    // backoff, for everything queued for it (what arrives meanwhile waits and goes with it).
    let mut next_allowed = 0i64;
    let mut failures: u32 = 0;
    loop {
        let now = now_ms();
        let (due, wait_ms) = {
            let mut items = queue.items.lock().expect("queue lock");
            let earliest = items.iter().map(|d| d.next_at).min();
            match earliest {
                None => (Vec::new(), None),
                Some(e) => {
                    let at = e.max(next_allowed);
                    if at > now {
                        (Vec::new(), Some(at - now))
                    } else {
                        // Everything due goes now, together.
                        let (due, rest): (Vec<_>, Vec<_>) =
                            items.drain(..).partition(|d| d.next_at <= now);
                        *items = rest;
                        (due, None)
                    }
                }
            }
        };
        if due.is_empty() {
            let wait = wait_ms.map_or(Duration::from_secs(3600), |ms| {
                Duration::from_millis(ms.max(1) as u64)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = queue.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let (expired, due): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|d| now - d.created_at > max_age_ms);
        let mut finished: Vec<DeliveryRow> = Vec::new();
        for mut d in expired {
            tracing::error!(recipient = %name, alert_id = %d.alert_id, event = %d.event, attempts = d.attempts, "delivery given up after notify.max_age");
            d.status = "expired".into();
            d.version = (now as u64).max(d.version + 1);
            metrics.expired.inc();
            finished.push(d);
        }
        if !due.is_empty() {
            let items: Vec<Notification> = due
                .iter()
                .filter_map(|d| serde_json::from_str(&d.notification).ok())
                .collect();
            let key = request_key(&items);
            let outcome = channel.send(&items).await;
            let at = now_ms();
            next_allowed = at + min_interval_ms;
            for mut d in due {
                d.attempts += 1;
                d.version = (at as u64).max(d.version + 1);
                let mut log: Vec<serde_json::Value> =
                    serde_json::from_str(&d.attempt_log).unwrap_or_default();
                log.push(json!({
                    "at": ioc_contract::time::format_ms(at),
                    "ok": outcome.is_ok(),
                    "error": outcome.as_ref().err(),
                    "digest": (items.len() > 1).then_some(&key),
                }));
                // The first attempts and the latest ones, for a delivery retried for hours.
                if log.len() > 40 {
                    log.drain(10..log.len() - 30);
                }
                d.attempt_log = serde_json::to_string(&log).unwrap_or_default();
                match &outcome {
                    Ok(()) => {
                        d.status = "sent".into();
                        d.sent_at = Some(at);
                        d.last_error.clear();
                        finished.push(d);
                    }
                    Err(e) => {
                        d.last_error = e.clone();
                        finished.push(d);
                    }
                }
            }
            match &outcome {
                Ok(()) => {
                    failures = 0;
                    metrics.sent.with_label_values(&[channel.kind()]).inc();
                }
                Err(e) => {
                    failures += 1;
                    let backoff = FIRST_BACKOFF_MS
                        .saturating_mul(1 << (failures.min(20) - 1))
                        .min(MAX_BACKOFF_MS);
                    next_allowed = at + backoff;
                    for d in finished.iter_mut().filter(|d| d.status == "pending") {
                        d.next_at = next_allowed;
                    }
                    metrics
                        .failed_attempts
                        .with_label_values(&[channel.kind()])
                        .inc();
                    tracing::warn!(recipient = %name, error = %e, "delivery failed; retrying with backoff");
                }
            }
        }
        if until_shutdown(
            &shutdown,
            "recording delivery attempts",
            || {},
            || history.insert(&finished),
        )
        .await
        .is_none()
        {
            return;
        }
        let retried: Vec<DeliveryRow> = finished
            .into_iter()
            .filter(|d| {
                let done = d.status != "pending";
                if done {
                    metrics.pending.dec();
                }
                !done
            })
            .collect();
        if !retried.is_empty() {
            queue.items.lock().expect("queue lock").extend(retried);
        }
    }
}
