//! The alerts operator: the rules in force (`rules.rs`: built-in and configured) evaluated
//! window by window over what each batch emitted, each rule instance through its lifecycle
//! (`lifecycle.rs`), and the acknowledgements and manual resolutions the API sends.
//!
//! The stream process that consumes a device's readings partition is the single writer of
//! every alert of that device: its windows drive the rules, and the commands of its alerts are
//! keyed by device id, so they arrive on the same partition number of `alert-commands`.
//!
//! A rule is evaluated once per window of its input: the input holds only the rows of that
//! window (of every device the batch emitted one for), and `devices` the registry. An instance
//! of a device whose window was evaluated is held if the query returned it; one that was not
//! returned is not held, provided the window held its series (its channel and metric, where
//! the input has them): a missing series is no evidence either way.
//!
//! Restart: the latest stored alert of each instance says what was decided: windows ending at
//! or before its last transition are skipped on replay, so a replay neither fires again nor
//! resolves early, and every transition it repeats has the same `alert_id` and kind.
//! (Pending conditions are not stored: one pending at a crash starts its `for` again from the
//! replayed windows.)
//!
//! Revision: a window re-emitted for late readings is evaluated again; if the alert it helped
//! fire no longer holds on it, the alert resolves with the reason `revised`. Other revisions of
//! past windows change nothing (the lifecycle runs in event-time order).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{filter_record_batch, kernels::cmp::eq};
use datafusion::error::DataFusionError;
use ioc_config::RuleConfig;
use ioc_contract::{
    Action, Alert, AlertCommand, AlertReply, AlertState, AlertTransition, CommandAction,
    ReplyOutcome, ResolveReason, TransitionKind,
};

use crate::lifecycle::{self, Evaluation, State, Transition};
use crate::rules::{self, Compiled, Instance};

/// One rule instance: where its lifecycle stands and its latest alert.
#[derive(Debug, Clone, Default)]
struct InstanceState {
    lifecycle: State,
    /// The latest alert, open or resolved (a command on a resolved one answers who resolved it).
    alert: Option<Alert>,
    /// Windows ending at or before this are decided (restored from the stored alert).
    decided_until: i64,
}

/// What the operator needs to know of a device when an alert fires.
pub trait DeviceInfo: Sync {
    /// In maintenance (or calibrating): its alerts notify no one.
    fn muted(&self, device_id: &str) -> bool;
}

impl<F: Fn(&str) -> bool + Sync> DeviceInfo for F {
    fn muted(&self, device_id: &str) -> bool {
        self(device_id)
    }
}

/// The operator's state (module docs).
pub struct Alerts {
    /// Shared, so evaluating a window can walk them while it updates the instances.
    rules: Arc<[Compiled]>,
    /// By rule, then instance key.
    instances: HashMap<String, HashMap<String, InstanceState>>,
    /// The latest window start evaluated in order, by (rule, device).
    last_window: HashMap<(String, String), i64>,
    notify_max_age_ms: i64,
}

/// A transition and what it changed, before it is given its version.
fn transition(kind: TransitionKind, at: i64, alert: &Alert, silent: bool) -> AlertTransition {
    AlertTransition {
        alert_id: alert.alert_id.clone(),
        kind,
        at,
        request_id: None,
        silent,
        alert: alert.clone(),
    }
}

/// Replaces `{column}` in `template` with the row's values (unknown names stay as written).
pub fn render(template: &str, row: &Instance) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match row.column(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The series a window's rows hold, to tell an instance not returned from one not evaluated.
struct Present {
    devices: HashSet<String>,
    /// (device, channel, metric), "" where the input has no such column.
    series: HashSet<(String, String, String)>,
    has_channel: bool,
    has_metric: bool,
}

impl Present {
    fn of(batch: &RecordBatch) -> Present {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
        };
        let device = text("device_id");
        let channel = text("channel");
        let metric = text("metric");
        let mut p = Present {
            devices: HashSet::new(),
            series: HashSet::new(),
            has_channel: channel.is_some(),
            has_metric: metric.is_some(),
        };
        let Some(device) = device else { return p };
        let at = |a: &Option<StringArray>, i: usize| {
            a.as_ref().map_or(String::new(), |a| a.value(i).to_string())
        };
        for i in 0..batch.num_rows() {
            p.devices.insert(device.value(i).to_string());
            p.series
                .insert((device.value(i).to_string(), at(&channel, i), at(&metric, i)));
        }
        p
    }

    /// Whether the window held the series of `alert` (or of a device's rows at all).
    fn holds(&self, device: &str, channel: &str, metric: &str) -> bool {
        if !self.devices.contains(device) {
            return false;
        }
        if !self.has_channel && !self.has_metric {
            return true;
        }
        let c = if self.has_channel { channel } else { "" };
        if self.has_metric && !metric.is_empty() {
            return self
                .series
                .contains(&(device.to_string(), c.to_string(), metric.to_string()));
        }
        self.series.iter().any(|(d, ch, _)| d == device && ch == c)
    }
}

/// The rows of `batch` whose `window_start` is `t`.
fn window_rows(batch: &RecordBatch, t: i64) -> Result<RecordBatch, DataFusionError> {
    let starts = batch
        .column_by_name("window_start")
        .ok_or_else(|| DataFusionError::Plan("input without window_start".into()))?;
    let mask = eq(starts, &Int64Array::new_scalar(t))?;
    Ok(filter_record_batch(batch, &mask)?)
}

fn int_column(batch: &RecordBatch, name: &str) -> Vec<i64> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
        .map(|a| a.values().to_vec())
        .unwrap_or_default()
}

impl Alerts {
    pub fn new(rules: Vec<Compiled>, notify_max_age_ms: i64) -> Alerts {
        Alerts {
            rules: rules.into(),
            instances: HashMap::new(),
            last_window: HashMap::new(),
            notify_max_age_ms,
        }
    }

    pub fn rules(&self) -> &[Compiled] {
        &self.rules
    }

    /// Restores an instance from its latest stored alert.
    pub fn restore(&mut self, alert: Alert) {
        let st = self
            .instances
            .entry(alert.rule.clone())
            .or_default()
            .entry(alert.instance.clone())
            .or_default();
        if st
            .alert
            .as_ref()
            .is_some_and(|a| a.fired_at > alert.fired_at)
        {
            return;
        }
        if alert.is_open() {
            st.lifecycle = State::Firing {
                started_at: alert.started_at,
                fired_at: alert.fired_at,
                last_held: alert.fired_at,
            };
            st.decided_until = alert.fired_at;
        } else {
            st.lifecycle = State::Inactive;
            st.decided_until = alert.resolved_at.unwrap_or(alert.fired_at);
        }
        st.alert = Some(alert);
    }

    /// Open alerts, and per rule how many instances are pending, firing and acknowledged.
    pub fn counts(&self) -> BTreeMap<String, [usize; 3]> {
        let mut out: BTreeMap<String, [usize; 3]> = self
            .rules
            .iter()
            .map(|r| (r.config.name.clone(), [0; 3]))
            .collect();
        for (rule, st) in self
            .instances
            .iter()
            .flat_map(|(r, m)| m.values().map(move |st| (r, st)))
        {
            let Some(c) = out.get_mut(rule) else { continue };
            let open = st.alert.as_ref().filter(|a| a.is_open());
            match (st.lifecycle, open) {
                (State::Pending { .. }, _) => c[0] += 1,
                (_, Some(a)) if a.state == AlertState::Acknowledged => c[2] += 1,
                (_, Some(_)) => c[1] += 1,
                _ => {}
            }
        }
        out
    }

    /// Every open alert.
    pub fn open(&self) -> impl Iterator<Item = &Alert> {
        self.instances
            .values()
            .flat_map(HashMap::values)
            .filter_map(|s| s.alert.as_ref())
            .filter(|a| a.is_open())
    }

    /// Evaluates every rule over what one batch emitted: `tables` by input name (any of
    /// `rules::WINDOWED`), `devices` the registry of this process's devices (the rules over it
    /// alone run only when `devices_due`), at processing time `now`. Returns the transitions
    /// in the order they happened, each alert versioned by `version`.
    pub async fn evaluate(
        &mut self,
        tables: &[(&'static str, RecordBatch)],
        devices: &RecordBatch,
        devices_due: bool,
        now: i64,
        info: &dyn DeviceInfo,
        version: &mut (dyn FnMut() -> u64 + Send),
    ) -> Result<Vec<AlertTransition>, DataFusionError> {
        let mut out = Vec::new();
        let devices_batch = devices;
        let inputs: BTreeSet<&'static str> = self.rules.iter().map(|r| r.input).collect();
        for input in inputs {
            if input == "devices" {
                if !devices_due {
                    continue;
                }
                let ctx = rules::context(vec![("devices", devices.clone())])?;
                let present = Present::of(devices);
                self.evaluate_window(
                    &ctx, input, now, now, &present, now, info, version, &mut out,
                )
                .await?;
                continue;
            }
            let Some((_, batch)) = tables.iter().find(|(n, _)| *n == input) else {
                continue;
            };
            let starts: BTreeSet<i64> = int_column(batch, "window_start").into_iter().collect();
            for t in starts {
                let rows = window_rows(batch, t)?;
                let end = int_column(&rows, "window_end")
                    .into_iter()
                    .max()
                    .unwrap_or(t);
                let present = Present::of(&rows);
                let ctx = rules::context(vec![(input, rows), ("devices", devices_batch.clone())])?;
                self.evaluate_window(&ctx, input, t, end, &present, now, info, version, &mut out)
                    .await?;
            }
        }
        Ok(out)
    }

    /// Every rule of `input` over one window `[start, end)` of it.
    #[allow(clippy::too_many_arguments)]
    async fn evaluate_window(
        &mut self,
        ctx: &datafusion::prelude::SessionContext,
        input: &str,
        start: i64,
        end: i64,
        present: &Present,
        now: i64,
        info: &dyn DeviceInfo,
        version: &mut (dyn FnMut() -> u64 + Send),
        out: &mut Vec<AlertTransition>,
    ) -> Result<(), DataFusionError> {
        let rules = self.rules.clone();
        for rule in rules.iter().filter(|r| r.input == input) {
            let name = &rule.config.name;
            let held: BTreeMap<String, Instance> = rules::evaluate(ctx, &rule.config)
                .await?
                .into_iter()
                .map(|i| (i.key(), i))
                .collect();
            let cleared: HashSet<String> = match &rule.config.clear_sql {
                Some(sql) => rules::run(ctx, &rule.config, sql)
                    .await?
                    .iter()
                    .map(Instance::key)
                    .collect(),
                None => HashSet::new(),
            };
            // The instances this window decides: those it returned, and those it could have.
            let mut keys: BTreeSet<String> = held.keys().cloned().collect();
            let of_rule = self.instances.entry(name.clone()).or_default();
            for (key, st) in of_rule.iter() {
                if st.lifecycle == State::Inactive {
                    continue;
                }
                let (device, channel, metric) = match &st.alert {
                    Some(a) => (a.device_id.as_str(), a.channel.as_str(), a.metric.as_str()),
                    None => match key.split('/').collect::<Vec<_>>().as_slice() {
                        [d, c, ..] => (*d, *c, ""),
                        _ => continue,
                    },
                };
                if present.holds(device, channel, metric) {
                    keys.insert(key.clone());
                }
            }
            for key in keys {
                let row = held.get(&key);
                let device = row.map_or_else(
                    || key.split('/').next().unwrap_or_default().to_string(),
                    |r| r.device_id.clone(),
                );
                let last = self
                    .last_window
                    .get(&(name.clone(), device.clone()))
                    .copied()
                    .unwrap_or(i64::MIN);
                let of_rule = self.instances.entry(name.clone()).or_default();
                let st = of_rule.entry(key.clone()).or_default();
                if end <= st.decided_until {
                    continue;
                }
                let e = Evaluation {
                    start,
                    end,
                    held: row.is_some(),
                    cleared: cleared.contains(&key),
                    value: row.map_or(f64::NAN, |r| r.value),
                };
                if start <= last && input != "devices" {
                    // A revised past window: it can only take back what it helped fire.
                    let revised = st.alert.as_mut().filter(|a| {
                        a.is_open() && !e.held && start >= a.started_at && end <= a.fired_at
                    });
                    if let Some(alert) = revised {
                        alert.state = AlertState::Resolved;
                        alert.resolved_at = Some(alert.fired_at.max(last));
                        alert.resolve_reason = Some(ResolveReason::Revised);
                        alert.version = version();
                        st.lifecycle = State::Inactive;
                        let silent = alert.backfill || alert.muted;
                        out.push(transition(
                            TransitionKind::Resolved,
                            alert.resolved_at.unwrap_or(end),
                            alert,
                            silent,
                        ));
                    }
                    continue;
                }
                let (next, t) = lifecycle::step(st.lifecycle, rule.timing, e);
                st.lifecycle = next;
                if let (State::Firing { .. }, Some(r), Some(a)) = (next, row, st.alert.as_mut()) {
                    if a.is_open() && r.value > a.peak {
                        a.peak = r.value;
                    }
                }
                match t {
                    Some(Transition::Fired {
                        started_at,
                        fired_at,
                        value,
                    }) => {
                        let row = row.expect("fired by a returned row");
                        let alert = new_alert(
                            &rule.config,
                            &key,
                            row,
                            started_at,
                            fired_at,
                            value,
                            now - fired_at > self.notify_max_age_ms,
                            info.muted(&row.device_id),
                            version(),
                        );
                        let silent = alert.backfill || alert.muted;
                        out.push(transition(TransitionKind::Fired, fired_at, &alert, silent));
                        st.alert = Some(alert);
                    }
                    Some(Transition::Resolved { at }) => {
                        if let Some(alert) = st.alert.as_mut().filter(|a| a.is_open()) {
                            alert.state = AlertState::Resolved;
                            alert.resolved_at = Some(at);
                            alert.resolve_reason = Some(ResolveReason::Cleared);
                            alert.version = version();
                            let silent =
                                alert.backfill || alert.muted || now - at > self.notify_max_age_ms;
                            out.push(transition(TransitionKind::Resolved, at, alert, silent));
                        }
                    }
                    None => {}
                }
                if st.lifecycle == State::Inactive && st.alert.is_none() {
                    of_rule.remove(&key);
                }
            }
            if input != "devices" {
                for d in &present.devices {
                    let last = self
                        .last_window
                        .entry((name.clone(), d.clone()))
                        .or_insert(i64::MIN);
                    *last = (*last).max(start);
                }
            }
        }
        Ok(())
    }

    /// Resolves the open alerts of a decommissioned device.
    pub fn decommissioned(
        &mut self,
        device_id: &str,
        at: i64,
        version: &mut (dyn FnMut() -> u64 + Send),
    ) -> Vec<AlertTransition> {
        let mut out = Vec::new();
        for st in self.instances.values_mut().flat_map(HashMap::values_mut) {
            let Some(alert) = st
                .alert
                .as_mut()
                .filter(|a| a.is_open() && a.device_id == device_id)
            else {
                continue;
            };
            alert.state = AlertState::Resolved;
            alert.resolved_at = Some(at);
            alert.resolve_reason = Some(ResolveReason::Decommissioned);
            alert.version = version();
            st.lifecycle = State::Inactive;
            out.push(transition(TransitionKind::Resolved, at, alert, true));
        }
        out.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        out
    }

    /// Resolves the open alerts of rules no longer in force (a reload removed or replaced
    /// them), and takes the new rules.
    pub fn replace_rules(
        &mut self,
        rules: Vec<Compiled>,
        at: i64,
        version: &mut (dyn FnMut() -> u64 + Send),
    ) -> Vec<AlertTransition> {
        let kept: HashMap<&str, &Compiled> =
            rules.iter().map(|r| (r.config.name.as_str(), r)).collect();
        let old: HashMap<String, RuleConfig> = self
            .rules
            .iter()
            .map(|r| (r.config.name.clone(), r.config.clone()))
            .collect();
        let mut out = Vec::new();
        for (rule, st) in self
            .instances
            .iter_mut()
            .flat_map(|(r, m)| m.values_mut().map(move |st| (r, st)))
        {
            let changed = match (kept.get(rule.as_str()), old.get(rule)) {
                (Some(new), Some(old)) => new.config.sql != old.sql,
                (None, _) => true,
                _ => false,
            };
            if !changed {
                continue;
            }
            st.lifecycle = State::Inactive;
            if let Some(alert) = st.alert.as_mut().filter(|a| a.is_open()) {
                alert.state = AlertState::Resolved;
                alert.resolved_at = Some(at);
                alert.resolve_reason = Some(ResolveReason::RuleRemoved);
                alert.version = version();
                out.push(transition(TransitionKind::Resolved, at, alert, false));
            }
        }
        out.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        self.rules = rules.into();
        out
    }

    /// Applies an acknowledgement or a manual resolution: the reply, and the transition if it
    /// changed the alert. A command seen again (a replay) finds its own act and is done.
    pub fn command(
        &mut self,
        cmd: &AlertCommand,
        version: &mut (dyn FnMut() -> u64 + Send),
    ) -> (AlertReply, Option<AlertTransition>) {
        let reply = |outcome, message: String, alert: Option<&Alert>| AlertReply {
            request_id: cmd.request_id.clone(),
            alert_id: cmd.alert_id.clone(),
            outcome,
            message,
            alert: alert.cloned(),
        };
        let found = self
            .instances
            .values_mut()
            .flat_map(HashMap::values_mut)
            .find(|st| {
                st.alert
                    .as_ref()
                    .is_some_and(|a| a.alert_id == cmd.alert_id)
            });
        let Some(st) = found else {
            return (
                reply(
                    ReplyOutcome::Unknown,
                    format!(
                        "no alert {} among the latest of device {}",
                        cmd.alert_id, cmd.device_id
                    ),
                    None,
                ),
                None,
            );
        };
        let alert = st.alert.as_mut().expect("found by its alert");
        let act = Action {
            by: cmd.by.clone(),
            at: cmd.at,
            comment: cmd.comment.clone(),
            request_id: cmd.request_id.clone(),
        };
        let mine = |a: &Option<Action>| a.as_ref().is_some_and(|a| a.request_id == cmd.request_id);
        let when = |at: i64| ioc_contract::time::format_ms(at);
        match cmd.action {
            CommandAction::Acknowledge => {
                if mine(&alert.acknowledged) {
                    return (reply(ReplyOutcome::Done, String::new(), Some(alert)), None);
                }
                if let Some(first) = &alert.acknowledged {
                    let msg = format!("already acknowledged by {} at {}", first.by, when(first.at));
                    return (reply(ReplyOutcome::Conflict, msg, Some(alert)), None);
                }
                if !alert.is_open() {
                    let msg = resolved_message(alert);
                    return (reply(ReplyOutcome::Conflict, msg, Some(alert)), None);
                }
                alert.state = AlertState::Acknowledged;
                alert.acknowledged = Some(act);
                alert.version = version();
                let mut t = transition(TransitionKind::Acknowledged, cmd.at, alert, false);
                t.request_id = Some(cmd.request_id.clone());
                (
                    reply(ReplyOutcome::Done, String::new(), Some(alert)),
                    Some(t),
                )
            }
            CommandAction::Resolve => {
                if mine(&alert.resolved_by) {
                    return (reply(ReplyOutcome::Done, String::new(), Some(alert)), None);
                }
                if !alert.is_open() {
                    let msg = resolved_message(alert);
                    return (reply(ReplyOutcome::Conflict, msg, Some(alert)), None);
                }
                alert.state = AlertState::Resolved;
                alert.resolved_at = Some(cmd.at);
                alert.resolve_reason = Some(ResolveReason::Manual);
                alert.resolved_by = Some(act);
                alert.version = version();
                st.lifecycle = State::Inactive;
                let silent = alert.backfill || alert.muted;
                let mut t = transition(TransitionKind::Resolved, cmd.at, alert, silent);
                t.request_id = Some(cmd.request_id.clone());
                (
                    reply(ReplyOutcome::Done, String::new(), Some(alert)),
                    Some(t),
                )
            }
        }
    }
}

fn resolved_message(alert: &Alert) -> String {
    let at = alert
        .resolved_at
        .map(ioc_contract::time::format_ms)
        .unwrap_or_default();
    match &alert.resolved_by {
        Some(by) => format!("already resolved by {} at {at}", by.by),
        None => format!(
            "already resolved ({}) at {at}",
            alert.resolve_reason.map_or("cleared", |r| r.as_str())
        ),
    }
}

/// `{rule}:{device_id}:{started_at}:{instance hash}`: the same for a replay, safe in a URL, and
/// its device readable (the API finds an alert by it).
pub fn alert_id(rule: &str, device_id: &str, instance: &str, started_at: i64) -> String {
    let hash = ioc_contract::sha256_hex(instance);
    format!("{rule}:{device_id}:{started_at}:{}", &hash[..12])
}

#[allow(clippy::too_many_arguments)]
fn new_alert(
    rule: &RuleConfig,
    key: &str,
    row: &Instance,
    started_at: i64,
    fired_at: i64,
    value: f64,
    backfill: bool,
    muted: bool,
    version: u64,
) -> Alert {
    let severity = row
        .column("severity")
        .filter(|s| ioc_config::RULE_SEVERITIES.contains(s))
        .unwrap_or(&rule.severity)
        .to_string();
    let message = if rule.message.is_empty() {
        format!(
            "{}: {} at {}",
            rule.name,
            row.column("value").unwrap_or("?"),
            row.device_id
        )
    } else {
        render(&rule.message, row)
    };
    Alert {
        alert_id: alert_id(&rule.name, &row.device_id, key, started_at),
        rule: rule.name.clone(),
        category: rule.category.clone(),
        severity,
        device_id: row.device_id.clone(),
        channel: row.channel.clone(),
        metric: row.column("metric").unwrap_or_default().to_string(),
        instance: key.to_string(),
        labels: rule
            .labels
            .iter()
            .cloned()
            .zip(row.labels.iter().cloned())
            .collect(),
        state: AlertState::Firing,
        started_at,
        fired_at,
        resolved_at: None,
        resolve_reason: None,
        acknowledged: None,
        resolved_by: None,
        value,
        peak: value,
        limit: row.column("limit").and_then(|l| l.parse().ok()),
        unit: row.column("unit").unwrap_or_default().to_string(),
        message,
        backfill,
        muted,
        version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_history::{AggregateRow, AqiRow, ExceedanceRow, Record};
    use std::sync::Arc;

    const T0: i64 = 1_795_680_000_000;
    const MIN: i64 = 60_000;

    fn stream_config() -> ioc_config::StreamConfig {
        ioc_config::load_str(None, std::iter::empty())
            .unwrap()
            .stream
    }

    /// A rule file: `-- key: value` directives (name, category, severity, for,
    /// keep_firing_for, labels, clear, builtin), then the SQL.
    fn rule_of(text: &str) -> RuleConfig {
        let mut sql = String::new();
        let mut d: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            match line.strip_prefix("-- ").and_then(|l| l.split_once(": ")) {
                Some((k, v)) => {
                    d.insert(k.to_string(), v.to_string());
                }
                None if line.starts_with("--") => {}
                None => {
                    sql.push_str(line);
                    sql.push('\n');
                }
            }
        }
        if let Some(name) = d.get("builtin") {
            return ioc_config::rules::builtin(&stream_config())
                .into_iter()
                .find(|r| &r.name == name)
                .unwrap_or_else(|| panic!("no built-in rule {name}"));
        }
        let duration = |k: &str| d.get(k).map(|v| humantime::parse_duration(v).unwrap());
        let field = |k: &str, default: &str| d.get(k).map_or(default, String::as_str).to_string();
        RuleConfig {
            clear_sql: d.get("clear").cloned(),
            for_: duration("for"),
            keep_firing_for: duration("keep_firing_for"),
            labels: d
                .get("labels")
                .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            ..RuleConfig::new(
                &field("name", "rule"),
                &field("category", "air"),
                &field("severity", "minor"),
                sql,
            )
        }
    }

    /// A row of `input` from `key=value` fields over a default row (`t` is the window start
    /// in minutes after T0).
    fn row_json(input: &str, fields: &str) -> serde_json::Value {
        let length = match input {
            "aggregates_1m" | "runs" => MIN,
            "aggregates_5m" | "traffic_5m" => 5 * MIN,
            "aggregates_1d" | "aqi_1d" => 1440 * MIN,
            _ => 60 * MIN,
        };
        let mut v = match input {
            "aqi_1h" | "aqi_1d" => serde_json::json!({
                "device_id": "", "resolution": if input == "aqi_1h" { "1h" } else { "1d" },
                "window_start": 0, "window_end": 0, "aqi": null, "dominant": "pm25",
                "pm25": null, "pm10": null, "o3_1h": null, "o3_8h": null, "no2": null,
                "so2": null, "co": null, "nowcast_pm25": null, "nowcast_pm10": null,
                "valid_hours": null, "grade": "reference", "low_capture": "", "version": 1
            }),
            "forecast" => serde_json::json!({
                "device_id": "", "origin": 0, "target": 0, "horizon_h": 1, "pm25": 0.0,
                "pm25_low": 0.0, "pm25_high": 0.0, "aqi": null, "day_pm25": null,
                "day_pm25_limit": 45.0, "grade": "reference", "version": 1
            }),
            "traffic_5m" | "traffic_1h" => serde_json::json!({
                "device_id": "", "resolution": if input == "traffic_5m" { "5m" } else { "1h" },
                "window_start": 0, "window_end": 0, "road_segment": "Lê Duẩn", "lanes": 2,
                "vehicles": 100, "flow_vph": 1200.0, "speed_kmh": 40.0, "occupancy_pct": 10.0,
                "free_flow_speed_kmh": 45.0, "capture": 1.0, "level": "free", "version": 1
            }),
            "exceedances" => serde_json::json!({
                "device_id": "", "channel": "outlet", "metric": "cod",
                "regulation": "QCVN 40:2011/BTNMT", "period": "1h", "window_start": 0,
                "window_end": 0, "value": 0.0, "unit": "mg/L", "limit_low": null,
                "limit_high": 150.0, "multiple": 0.0, "valid_hours": 1, "grade": "reference",
                "status": "within", "version": 1
            }),
            _ => serde_json::json!({
                "resolution": "1m", "device_id": "", "channel": "", "metric": "pm25",
                "window_start": 0, "window_end": 0, "value_count": 4, "value_sum": 0.0,
                "value_min": 0.0, "value_max": 0.0, "value_mean": 0.0, "capture": null,
                "unit": "µg/m³", "version": 1
            }),
        };
        for f in fields.split_whitespace() {
            let (k, val) = f
                .split_once('=')
                .unwrap_or_else(|| panic!("{f}: not key=value"));
            let val: serde_json::Value = match val.parse::<f64>() {
                Ok(n) if k == "t" => serde_json::json!(T0 + (n * MIN as f64) as i64),
                Ok(n)
                    if n.fract() == 0.0 && k != "value_mean" && k != "value" && k != "multiple" =>
                {
                    serde_json::json!(n as i64)
                }
                Ok(n) => serde_json::json!(n),
                Err(_) => serde_json::json!(val.replace('_', " ").replace("~", "_")),
            };
            let k = if k == "t" { "window_start" } else { k };
            v[k] = val;
        }
        let start = v["window_start"].as_i64().unwrap();
        v["window_end"] = serde_json::json!(start + length);
        if input == "forecast" {
            // The origin hour is the window.
            let hours = v["horizon_h"].as_i64().unwrap();
            v["origin"] = serde_json::json!(start + length);
            v["target"] = serde_json::json!(start + length + hours * 60 * MIN);
        }
        v
    }

    fn batch_of(input: &str, rows: &[serde_json::Value]) -> RecordBatch {
        fn rows_of<R: Record>(rows: &[serde_json::Value]) -> RecordBatch {
            let rows: Vec<R> = rows
                .iter()
                .map(|r| serde_json::from_value(r.clone()).unwrap_or_else(|e| panic!("{r}: {e}")))
                .collect();
            R::to_batch(&rows).unwrap()
        }
        match input {
            "aqi_1h" | "aqi_1d" => rows_of::<AqiRow>(rows),
            "exceedances" => rows_of::<ExceedanceRow>(rows),
            "traffic_5m" | "traffic_1h" => rows_of::<ioc_history::TrafficRow>(rows),
            "forecast" => {
                let rows: Vec<ioc_history::ForecastRow> = rows
                    .iter()
                    .map(|r| {
                        serde_json::from_value(r.clone()).unwrap_or_else(|e| panic!("{r}: {e}"))
                    })
                    .collect();
                rules::forecast_batch(&rows).unwrap()
            }
            "runs" => {
                let runs: Vec<crate::stuck::Run> = rows
                    .iter()
                    .map(|r| crate::stuck::Run {
                        device_id: r["device_id"].as_str().unwrap().into(),
                        channel: r["channel"].as_str().unwrap_or_default().into(),
                        metric: r["metric"].as_str().unwrap().into(),
                        window_start: r["window_start"].as_i64().unwrap(),
                        value: r["last_value"].as_f64().unwrap_or(0.0),
                        unit: String::new(),
                        run: r["run"].as_i64().unwrap(),
                    })
                    .collect();
                crate::stuck::to_batch(&runs).unwrap()
            }
            _ => rows_of::<AggregateRow>(rows),
        }
    }

    fn device(id: &str, kind: &str) -> Arc<ioc_contract::Device> {
        Arc::new(ioc_contract::Device {
            device_id: id.into(),
            kind: kind.into(),
            ..Default::default()
        })
    }

    /// Runs a golden case; the transitions as `.expected` lines.
    async fn run_case(rule: &str, input: &str) -> Vec<String> {
        let rule = rule_of(rule);
        let compiled = rules::compile(std::slice::from_ref(&rule))
            .await
            .unwrap_or_else(|p| panic!("{p:?}"));
        let mut alerts = Alerts::new(compiled.clone(), 6 * 3_600_000);
        let mut table = "aggregates_1m".to_string();
        let mut devices: Vec<Arc<ioc_contract::Device>> = Vec::new();
        let mut batches: Vec<Vec<serde_json::Value>> = Vec::new();
        let mut out = Vec::new();
        let mut stored: HashMap<String, Alert> = HashMap::new();
        let mut version = 0u64;
        let lines: Vec<&str> = input
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .chain(["end"])
            .collect();
        for line in lines {
            let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
            if !matches!(head, "batch" | "restart" | "end") && !line.starts_with("t=") {
                match head {
                    "input" => table = rest.to_string(),
                    "device" => {
                        let (id, kind) = rest.split_once(' ').unwrap();
                        devices.push(device(id, kind));
                    }
                    other => panic!("unreadable line {other:?}"),
                }
                continue;
            }
            if line.starts_with("t=") {
                batches
                    .last_mut()
                    .expect("rows after `batch`")
                    .push(row_json(&table, line));
                continue;
            }
            // A batch ends: evaluate it.
            if let Some(rows) = batches.pop() {
                let name: &'static str = rules::WINDOWED
                    .into_iter()
                    .find(|n| *n == table)
                    .unwrap_or("aggregates_1m");
                let tables = vec![(name, batch_of(&table, &rows))];
                let devices_batch =
                    rules::devices_batch(&devices, &HashMap::new(), T0, T0).unwrap();
                let ts = alerts
                    .evaluate(
                        &tables,
                        &devices_batch,
                        false,
                        T0 + 1440 * MIN,
                        &|_: &str| false,
                        &mut || {
                            version += 1;
                            version
                        },
                    )
                    .await
                    .unwrap();
                for t in ts {
                    let a = &t.alert;
                    let m = |ms: i64| (ms - T0) / MIN;
                    out.push(match t.kind {
                        TransitionKind::Fired => format!(
                            "fired {} started={} fired={} value={} severity={}",
                            a.instance,
                            m(a.started_at),
                            m(a.fired_at),
                            a.value,
                            a.severity
                        ),
                        _ => format!(
                            "resolved {} at={} reason={}",
                            a.instance,
                            m(a.resolved_at.unwrap()),
                            a.resolve_reason.unwrap().as_str()
                        ),
                    });
                    stored.insert(a.alert_id.clone(), a.clone());
                }
            }
            match head {
                "batch" => batches.push(Vec::new()),
                "restart" => {
                    // As a restarted stream: only what was stored survives.
                    alerts = Alerts::new(compiled.clone(), 6 * 3_600_000);
                    let mut latest: HashMap<String, Alert> = HashMap::new();
                    for a in stored.values() {
                        let keep = latest
                            .get(&a.instance)
                            .is_none_or(|l| l.fired_at < a.fired_at);
                        if keep {
                            latest.insert(a.instance.clone(), a.clone());
                        }
                    }
                    for a in latest.into_values() {
                        alerts.restore(a);
                    }
                }
                _ => {}
            }
        }
        out
    }

    #[tokio::test]
    async fn every_golden_rule_file() {
        let files = crate::tests::golden_files_of("rules", "sql");
        assert!(files.len() >= 6, "golden files: {files:?}");
        let mut failures = Vec::new();
        for f in &files {
            let read = |ext: &str| {
                std::fs::read_to_string(f.with_extension(ext))
                    .unwrap_or_else(|e| panic!("{}: {e}", f.with_extension(ext).display()))
            };
            let got = run_case(&read("sql"), &read("input")).await;
            let expected: Vec<String> = read("expected")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            if got != expected {
                failures.push(format!(
                    "{}:\n  got      {got:#?}\n  expected {expected:#?}",
                    f.display()
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[tokio::test]
    async fn every_built_in_rule_plans() {
        let rules = ioc_config::rules::builtin(&stream_config());
        let compiled = rules::compile(&rules)
            .await
            .unwrap_or_else(|p| panic!("{p:#?}"));
        let inputs: BTreeMap<&str, &str> = compiled
            .iter()
            .map(|c| (c.config.name.as_str(), c.input))
            .collect();
        assert_eq!(inputs[ioc_config::rules::PM25_RULE], "aggregates_1m");
        assert_eq!(inputs[ioc_config::rules::AQI_POOR_RULE], "aqi_1h");
        assert_eq!(inputs[ioc_config::rules::QCVN_WATER_RULE], "exceedances");
        assert_eq!(inputs[ioc_config::rules::OFFLINE_RULE], "devices");
        assert_eq!(inputs[ioc_config::rules::STUCK_RULE], "runs");
        assert_eq!(inputs[ioc_config::rules::FORECAST_RULE], "forecast");
    }

    async fn offline_alerts() -> (Alerts, Vec<Compiled>) {
        let rules: Vec<RuleConfig> = ioc_config::rules::builtin(&stream_config())
            .into_iter()
            .filter(|r| r.name == ioc_config::rules::OFFLINE_RULE)
            .collect();
        let compiled = rules::compile(&rules).await.unwrap();
        (Alerts::new(compiled.clone(), 6 * 3_600_000), compiled)
    }

    #[tokio::test]
    async fn offline_after_three_intervals_cleared_when_it_reports_and_never_for_a_restart() {
        let (mut alerts, _) = offline_alerts().await;
        let mut d = ioc_contract::Device {
            device_id: "aq-1".into(),
            kind: "air_quality".into(),
            expected_interval_s: 60.0,
            ..Default::default()
        };
        d.status = ioc_contract::DeviceStatus::Active;
        let devices = vec![Arc::new(d)];
        let mut seen = HashMap::new();
        async fn at(
            alerts: &mut Alerts,
            devices: &[Arc<ioc_contract::Device>],
            now: i64,
            seen: &HashMap<String, i64>,
        ) -> Vec<AlertTransition> {
            let batch = rules::devices_batch(devices, seen, T0, now).unwrap();
            let mut v = now as u64;
            alerts
                .evaluate(&[], &batch, true, now, &|_: &str| false, &mut || {
                    v += 1;
                    v
                })
                .await
                .unwrap()
        }
        // Never seen since this process started: silent only from the start, so nothing at
        // first, and offline three intervals after it.
        assert!(at(&mut alerts, &devices, T0 + 60_000, &seen)
            .await
            .is_empty());
        assert!(at(&mut alerts, &devices, T0 + 179_000, &seen)
            .await
            .is_empty());
        let fired = at(&mut alerts, &devices, T0 + 180_000, &seen).await;
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].kind, TransitionKind::Fired);
        assert_eq!(fired[0].alert.category, "device");
        assert!(
            at(&mut alerts, &devices, T0 + 240_000, &seen)
                .await
                .is_empty(),
            "fires once"
        );
        seen.insert("aq-1".to_string(), T0 + 250_000);
        let back = at(&mut alerts, &devices, T0 + 255_000, &seen).await;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].kind, TransitionKind::Resolved);
    }

    #[tokio::test]
    async fn acknowledgement_once_then_conflict_and_a_replay_is_done() {
        let rule = rule_of(
            "SELECT device_id, value_mean AS value FROM aggregates_1m WHERE value_mean > 50",
        );
        let compiled = rules::compile(&[rule]).await.unwrap();
        let mut alerts = Alerts::new(compiled, 6 * 3_600_000);
        let rows = vec![row_json(
            "aggregates_1m",
            "t=0 device_id=aq-1 value_mean=60",
        )];
        let batch = rules::devices_batch(&[], &HashMap::new(), T0, T0).unwrap();
        let mut v = 0;
        let mut next = || {
            v += 1;
            v
        };
        let fired = alerts
            .evaluate(
                &[("aggregates_1m", batch_of("aggregates_1m", &rows))],
                &batch,
                false,
                T0,
                &|_: &str| false,
                &mut next,
            )
            .await
            .unwrap();
        let id = fired[0].alert_id.clone();
        let cmd = |request: &str, by: &str, action| AlertCommand {
            request_id: request.into(),
            alert_id: id.clone(),
            device_id: "aq-1".into(),
            action,
            by: by.into(),
            at: T0 + 5,
            comment: "seen".into(),
        };
        let (first, t) = alerts.command(&cmd("r1", "lan", CommandAction::Acknowledge), &mut next);
        assert_eq!(first.outcome, ReplyOutcome::Done);
        assert_eq!(t.unwrap().kind, TransitionKind::Acknowledged);
        let (second, t) = alerts.command(&cmd("r2", "minh", CommandAction::Acknowledge), &mut next);
        assert_eq!(second.outcome, ReplyOutcome::Conflict);
        assert!(second.message.contains("lan"), "{}", second.message);
        assert!(t.is_none());
        let (again, t) = alerts.command(&cmd("r1", "lan", CommandAction::Acknowledge), &mut next);
        assert_eq!(
            again.outcome,
            ReplyOutcome::Done,
            "a replayed command is done"
        );
        assert!(t.is_none());
        let (resolved, t) = alerts.command(&cmd("r3", "minh", CommandAction::Resolve), &mut next);
        assert_eq!(resolved.outcome, ReplyOutcome::Done);
        let t = t.unwrap();
        assert_eq!(t.alert.resolve_reason, Some(ResolveReason::Manual));
        let (late, _) = alerts.command(&cmd("r4", "lan", CommandAction::Resolve), &mut next);
        assert_eq!(late.outcome, ReplyOutcome::Conflict);
        assert!(late.message.contains("minh"), "{}", late.message);
    }

    /// `cargo test --release --workspace -- --ignored --nocapture rule_evaluations_per_second`:
    /// 200 rules over the 1-minute windows of a 1 000-device fleet (one window per device and
    /// metric per minute, 4 metrics), ten minutes, in batches of one minute as the stream
    /// closes them.
    #[tokio::test]
    #[ignore]
    async fn rule_evaluations_per_second() {
        let metrics = ["pm25", "pm10", "no2", "co"];
        let rules: Vec<RuleConfig> = (0..200)
            .map(|i| {
                let metric = metrics[i % metrics.len()];
                RuleConfig {
                    name: format!("r{i}"),
                    for_: Some(std::time::Duration::from_secs(120)),
                    ..rule_of(&format!(
                        "SELECT device_id, channel, metric, value_mean AS value FROM aggregates_1m \
                         WHERE metric = '{metric}' AND value_mean > {}",
                        40 + i
                    ))
                }
            })
            .collect();
        let compiled = rules::compile(&rules).await.unwrap();
        let mut alerts = Alerts::new(compiled, 6 * 3_600_000);
        let devices: Vec<Arc<ioc_contract::Device>> = (0..1000)
            .map(|d| device(&format!("aq-{d:04}"), "air_quality"))
            .collect();
        let devices_batch = rules::devices_batch(&devices, &HashMap::new(), T0, T0).unwrap();
        let mut v = 0;
        let mut transitions = 0;
        let mut evaluations = 0u64;
        let started = std::time::Instant::now();
        let mut per_minute = Vec::new();
        for minute in 0..10i64 {
            let rows: Vec<AggregateRow> = devices
                .iter()
                .enumerate()
                .flat_map(|(d, dev)| {
                    metrics.iter().map(move |m| {
                        // Some devices drift above some thresholds and back.
                        let mean = 30.0 + ((d as i64 * 7 + minute * 13) % 250) as f64;
                        AggregateRow {
                            resolution: ioc_contract::Resolution::Minute,
                            device_id: dev.device_id.clone(),
                            channel: String::new(),
                            metric: m.to_string(),
                            window_start: T0 + minute * MIN,
                            window_end: T0 + (minute + 1) * MIN,
                            value_count: 6,
                            value_sum: 6.0 * mean,
                            value_min: mean,
                            value_max: mean,
                            value_mean: mean,
                            capture: Some(1.0),
                            unit: "µg/m³".into(),
                            version: 1,
                        }
                    })
                })
                .collect();
            let batch = AggregateRow::to_batch(&rows).unwrap();
            let t = std::time::Instant::now();
            let out = alerts
                .evaluate(
                    &[("aggregates_1m", batch)],
                    &devices_batch,
                    false,
                    T0,
                    &|_: &str| false,
                    &mut || {
                        v += 1;
                        v
                    },
                )
                .await
                .unwrap();
            per_minute.push(t.elapsed().as_secs_f64());
            transitions += out.len();
            evaluations += 200 * devices.len() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        per_minute.sort_by(f64::total_cmp);
        println!(
            "200 rules × 1000 devices: {:.0} rule evaluations per second (rule × device window), \
             {:.0} ms per minute of the fleet's windows (median), {transitions} transitions",
            evaluations as f64 / seconds,
            per_minute[per_minute.len() / 2] * 1000.0
        );
    }

    #[test]
    fn messages_fill_in_the_row() {
        let row = Instance {
            columns: vec![
                ("value".into(), "61.2".into()),
                ("unit".into(), "µg/m³".into()),
            ],
            ..Default::default()
        };
        assert_eq!(
            render("PM2.5 {value} {unit} ({nope})", &row),
            "PM2.5 61.2 µg/m³ ({nope})"
        );
    }
}
