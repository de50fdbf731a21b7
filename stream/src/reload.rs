//! The rules in force, shared through the `rules` topic so that every stream and API process
//! sees the same version (`ioc_config::rules::RulesRecord`).
//!
//! A stream process seeds the topic at start with the rules of its configuration when they
//! differ from the latest version there. A reload (SIGHUP, a change of the config file or of a
//! file of `stream.rules_path`, or a `reload_requested` record the API writes) reads the
//! configuration again, plans every rule, and publishes the new version, or, if any rule is
//! invalid, a `refused` record with every problem: the rules that were running keep running.
//! Every process applies a version when it reads it from the topic (its own included), so all
//! of them change together; each change is audited (`rules.changed`, with what was added,
//! removed and changed).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ioc_bus::{Bus, BusError, Producer, StartAt};
use ioc_config::rules::{changes, version_of, RulesRecord};
use ioc_config::RuleConfig;
use ioc_contract::{Actor, AuditEntry, Role};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where the rules come from, and what asks for them to be read again.
#[derive(Clone)]
pub struct RuleSource {
    /// Reads the rules in force again from the configuration (its file, `stream.rules_path`,
    /// the environment); every problem otherwise.
    pub load: Arc<dyn Fn() -> Result<Vec<RuleConfig>, Vec<String>> + Send + Sync>,
    /// Set by SIGHUP (and by the file watcher): reload before the next batch.
    pub requested: Arc<AtomicBool>,
    /// Files whose change reloads, and their modification times when the configuration was
    /// read.
    pub watch: Vec<PathBuf>,
    pub watched_since: Vec<Option<SystemTime>>,
}

impl RuleSource {
    /// Rules that only a restart changes (tests, benchmarks).
    pub fn fixed(rules: Vec<RuleConfig>) -> RuleSource {
        RuleSource {
            load: Arc::new(move || Ok(rules.clone())),
            requested: Arc::default(),
            watch: Vec::new(),
            watched_since: Vec::new(),
        }
    }
}

/// The latest version on the topic, if any, and the offset after the last record read.
pub async fn latest(bus: &Bus) -> Result<(Option<(String, Vec<RuleConfig>)>, i64), BusError> {
    let mut latest = None;
    let mut next = 0;
    for record in bus.read_all(&bus.topics().rules).await? {
        next = next.max(record.offset + 1);
        if let Ok(RulesRecord::Version { version, rules, .. }) =
            serde_json::from_slice::<RulesRecord>(&record.payload)
        {
            latest = Some((version, rules));
        }
    }
    Ok((latest, next))
}

pub async fn publish(producer: &Producer, bus: &Bus, record: &RulesRecord) -> Result<(), BusError> {
    let payload = serde_json::to_vec(record).expect("rules records serialize");
    producer.send(&bus.topics().rules, "rules", &payload).await
}

/// Follows the topic (one partition) from `offset`: what [`latest`] read up to, so that nothing
/// written since (a reload request) is missed.
pub fn follow(
    bus: &Bus,
    offset: i64,
    shutdown: CancellationToken,
) -> Result<mpsc::UnboundedReceiver<RulesRecord>, BusError> {
    let mut consumer = bus.consumer_at(&bus.topics().rules, [(0, StartAt::Offset(offset))])?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = consumer.recv() => m,
            };
            match m {
                // The bus may resume a little before `offset` (tansu's record batches).
                Ok(m) if m.offset < offset => {}
                Ok(m) => match serde_json::from_slice::<RulesRecord>(&m.payload) {
                    Ok(r) => {
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, offset = m.offset, "unreadable rules record; skipped")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "bus consume error (rules)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok(rx)
}

/// The modification times of `paths` (none for a missing file).
pub fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Sets `requested` whenever a watched file's modification time differs from `since` (the
/// times when the configuration was read: a change while the process started counts), polled
/// every 2 s.
pub fn watch(
    paths: Vec<PathBuf>,
    since: Vec<Option<SystemTime>>,
    requested: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    if paths.is_empty() {
        return;
    }
    let stamp = |paths: &[PathBuf]| stamps(paths);
    tokio::spawn(async move {
        let mut last = since;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let now = stamp(&paths);
            if now != last {
                tracing::info!(files = ?paths, "a rules file changed: reloading the rules");
                requested.store(true, Ordering::SeqCst);
                last = now;
            }
        }
    });
}

/// Reads the rules again and publishes the outcome: a new version (audited), or every problem.
pub async fn reload(
    source: &RuleSource,
    current: &[RuleConfig],
    producer: &Producer,
    bus: &Bus,
    by: &str,
    request_id: Option<String>,
) -> Result<(), BusError> {
    let at = ioc_contract::time::now_ms();
    let refused = |problems: Vec<String>| RulesRecord::Refused {
        request_id: request_id.clone(),
        problems,
        by: by.to_string(),
        at,
    };
    let rules = match (source.load)() {
        Ok(rules) => rules,
        Err(problems) => {
            tracing::error!(
                ?problems,
                "reloading the rules: the configuration is invalid; the rules in force stay"
            );
            return publish(producer, bus, &refused(problems)).await;
        }
    };
    if let Err(problems) = crate::rules::compile(&rules).await {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        tracing::error!(
            ?problems,
            "reloading the rules: refused; the rules in force stay"
        );
        return publish(producer, bus, &refused(problems)).await;
    }
    let version = version_of(&rules);
    if version == version_of(current) && request_id.is_none() {
        tracing::info!(%version, "reloading the rules: unchanged");
        return Ok(());
    }
    if let Some(entry) = changed_entry(current, &rules, "reload", by, at) {
        ioc_bus::audit::record(producer, bus, &entry).await?;
    }
    publish(
        producer,
        bus,
        &RulesRecord::Version {
            version,
            rules,
            source: "reload".into(),
            by: by.to_string(),
            at,
            request_id,
        },
    )
    .await
}

/// The audit entry of a change of the rules in force from `before` to `after` (what was added,
/// removed and changed, from which version, from where), or `None` when nothing changed.
fn changed_entry(
    before: &[RuleConfig],
    after: &[RuleConfig],
    source: &str,
    by: &str,
    at: i64,
) -> Option<AuditEntry> {
    let (added, removed, changed) = changes(before, after);
    if added.is_empty() && removed.is_empty() && changed.is_empty() {
        return None;
    }
    Some(AuditEntry {
        at,
        by: Actor {
            name: by.to_string(),
            role: Role::Admin,
        },
        action: "rules.changed".into(),
        target: version_of(after),
        detail: serde_json::json!({
            "added": added, "removed": removed, "changed": changed,
            "from": version_of(before), "source": source,
        }),
    })
}

/// At start: publishes the configuration's rules as a new version if the topic's latest
/// differs (audited), and returns them.
pub async fn seed(
    rules: &[RuleConfig],
    producer: &Producer,
    bus: &Bus,
    by: &str,
) -> Result<(), BusError> {
    let version = version_of(rules);
    let (before, _) = latest(bus).await?;
    if before.as_ref().is_some_and(|(v, _)| *v == version) {
        return Ok(());
    }
    let previous = before.map(|(_, r)| r).unwrap_or_default();
    let at = ioc_contract::time::now_ms();
    if let Some(entry) = changed_entry(&previous, rules, "config", by, at) {
        ioc_bus::audit::record(producer, bus, &entry).await?;
    }
    publish(
        producer,
        bus,
        &RulesRecord::Version {
            version,
            rules: rules.to_vec(),
            source: "config".into(),
            by: by.to_string(),
            at,
            request_id: None,
        },
    )
    .await
}
