//! Alerts and the rules that raise them.
//!
//! - `GET /api/v1/alerts?state=&severity=&category=&rule=&device_id=&commune=&from=&to=&limit=`:
//!   alerts that fired in `[from, to)`, newest state of each; every filter takes one value or
//!   several separated by commas.
//! - `GET /api/v1/alerts/{id}`: one alert with its transitions.
//! - `POST /api/v1/alerts/{id}/ack` and `/resolve` (`{"comment"}`): the API writes a command
//!   with a request id to `alert-commands`, keyed by the alert's device, so that it reaches the
//!   stream process that owns the device (the alert's single writer), and waits for that
//!   process's reply on `alert-replies`: 200 with the alert, 409 naming who was first, or 202
//!   if no reply came in time (the command still takes effect, once). Each act is audited
//!   before it is sent.
//! - `GET /api/v1/rules`: the rules in force (the latest version on the `rules` topic), with
//!   how many of their alerts are open; `POST /api/v1/rules/reload` asks the stream to read
//!   them again and answers with the new version or every problem.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_config::rules::RulesRecord;
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::{
    Action, Alert, AlertCommand, AlertReply, AlertState, AlertTransition, AuditEntry,
    CommandAction, ReplyOutcome,
};
use ioc_history::{AlertRow, DeliveryRow, HistoryFilter, TransitionRow};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::auth::{authorize, bearer, may_act_on, random_hex, Permission};
use crate::error::{ApiFailure, ApiResult};
use crate::history::history_filter;
use crate::AppState;

/// How long an acknowledgement or resolution waits for the stream's reply before it answers
/// 202.
const REPLY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
pub struct ApiAction {
    pub by: String,
    pub at: String,
    pub comment: String,
}

impl From<&Action> for ApiAction {
    fn from(a: &Action) -> Self {
        ApiAction {
            by: a.by.clone(),
            at: format_ms(a.at),
            comment: a.comment.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ApiAlert {
    pub alert_id: String,
    pub rule: String,
    pub category: String,
    pub severity: String,
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub state: &'static str,
    pub started_at: String,
    pub fired_at: String,
    pub resolved_at: Option<String>,
    pub resolve_reason: Option<&'static str>,
    pub acknowledged: Option<ApiAction>,
    pub resolved_by: Option<ApiAction>,
    pub value: f64,
    pub peak: f64,
    pub limit: Option<f64>,
    pub unit: String,
    pub message: String,
    /// Raised by windows older than `stream.notify_max_age`: notified to no one.
    pub backfill: bool,
    /// Raised while its device was in maintenance: notified to no one.
    pub muted: bool,
}

impl From<&Alert> for ApiAlert {
    fn from(a: &Alert) -> Self {
        ApiAlert {
            alert_id: a.alert_id.clone(),
            rule: a.rule.clone(),
            category: a.category.clone(),
            severity: a.severity.clone(),
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            labels: a.labels.clone(),
            state: a.state.as_str(),
            started_at: format_ms(a.started_at),
            fired_at: format_ms(a.fired_at),
            resolved_at: a.resolved_at.map(format_ms),
            resolve_reason: a.resolve_reason.map(|r| r.as_str()),
            acknowledged: a.acknowledged.as_ref().map(ApiAction::from),
            resolved_by: a.resolved_by.as_ref().map(ApiAction::from),
            value: a.value,
            peak: a.peak,
            limit: a.limit,
            unit: a.unit.clone(),
            message: a.message.clone(),
            backfill: a.backfill,
            muted: a.muted,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ApiTransition {
    pub alert_id: String,
    pub transition: &'static str,
    pub at: String,
    pub state: &'static str,
    /// Notified to no one (a backfill, a device in maintenance).
    pub silent: bool,
    pub by: Option<String>,
    pub comment: Option<String>,
    pub reason: Option<&'static str>,
}

impl From<&AlertTransition> for ApiTransition {
    fn from(t: &AlertTransition) -> Self {
        let act = match t.kind {
            ioc_contract::TransitionKind::Acknowledged => t.alert.acknowledged.as_ref(),
            ioc_contract::TransitionKind::Resolved => t.alert.resolved_by.as_ref(),
            ioc_contract::TransitionKind::Fired => None,
        };
        ApiTransition {
            alert_id: t.alert_id.clone(),
            transition: t.kind.as_str(),
            at: format_ms(t.at),
            state: t.alert.state.as_str(),
            silent: t.silent,
            by: act.map(|a| a.by.clone()),
            comment: act.map(|a| a.comment.clone()),
            reason: (t.kind == ioc_contract::TransitionKind::Resolved)
                .then(|| t.alert.resolve_reason.map(|r| r.as_str()))
                .flatten(),
        }
    }
}

/// Requests sent over the bus that a handler here waits on, by request id: what answers one
/// (read back from the bus) is handed to its waiter. Most answers are for another instance.
pub struct Waiters<T>(Arc<Mutex<HashMap<String, oneshot::Sender<T>>>>);

impl<T> Clone for Waiters<T> {
    fn clone(&self) -> Self {
        Waiters(self.0.clone())
    }
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters(Arc::default())
    }
}

impl<T> Waiters<T> {
    fn wait(&self, request_id: &str) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .expect("waiters lock")
            .insert(request_id.to_string(), tx);
        rx
    }

    fn forget(&self, request_id: &str) {
        self.0.lock().expect("waiters lock").remove(request_id);
    }

    /// Hands `answer` to whoever here waits for `request_id`.
    pub fn deliver(&self, request_id: &str, answer: T) {
        let waiter = self.0.lock().expect("waiters lock").remove(request_id);
        if let Some(tx) = waiter {
            let _ = tx.send(answer);
        }
    }
}

/// Waiters for the stream's replies to acknowledgements and resolutions (fed by the live tail).
pub type Replies = Waiters<AlertReply>;

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A comma-separated filter parameter, each value checked against `allowed` (if given).
fn values(
    q: &HashMap<String, String>,
    name: &str,
    allowed: Option<&[&str]>,
) -> ApiResult<Option<Vec<String>>> {
    let Some(v) = q.get(name) else {
        return Ok(None);
    };
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        return Err(bad(format!("{name} is empty")));
    }
    if let Some(allowed) = allowed {
        if let Some(wrong) = list.iter().find(|v| !allowed.contains(&v.as_str())) {
            return Err(bad(format!(
                "{name} {wrong:?} is not one of {}",
                allowed.join(", ")
            )));
        }
    }
    Ok(Some(list))
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let mut filter = history_filter(&state, &q)?;
    let states: Vec<&str> = AlertState::ALL.iter().map(|s| s.as_str()).collect();
    // Alerts stored before the lifecycle hold `active` and `cleared`.
    if let Some(mut wanted) = values(&q, "state", Some(states.as_slice()))? {
        if wanted.iter().any(|s| s == "firing") {
            wanted.push("active".into());
        }
        if wanted.iter().any(|s| s == "resolved") {
            wanted.push("cleared".into());
        }
        filter.any_of.push(("status", wanted));
    }
    if let Some(v) = values(&q, "severity", Some(&ioc_config::RULE_SEVERITIES[..]))? {
        filter.any_of.push(("severity", v));
    }
    if let Some(v) = values(&q, "category", Some(&ioc_config::RULE_CATEGORIES[..]))? {
        filter.any_of.push(("category", v));
    }
    if let Some(v) = values(&q, "rule", None)? {
        filter.any_of.push(("rule", v));
    }
    if let Some(communes) = values(&q, "commune", None)? {
        let devices: Vec<String> = state
            .registry
            .list()
            .into_iter()
            .filter(|d| d.commune.as_ref().is_some_and(|c| communes.contains(c)))
            .map(|d| d.device_id.clone())
            .collect();
        filter.any_of.push(("device_id", devices));
    }
    let rows = state
        .history
        .query::<AlertRow>(&filter)
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?;
    let alerts: Vec<ApiAlert> = rows
        .into_iter()
        .map(|r| ApiAlert::from(&Alert::from(r)))
        .collect();
    Ok(Json(json!({ "alerts": alerts })))
}

/// The stored alert `id` (its id names its device and when it started).
/// The rows of one alert (its versions, transitions or deliveries) from `from` on.
fn of_alert(id: &str, device: String, from: i64) -> HistoryFilter {
    HistoryFilter {
        device_id: Some(device),
        from,
        to: i64::MAX,
        limit: usize::MAX,
        any_of: vec![("alert_id", vec![id.to_string()])],
        ..Default::default()
    }
}

async fn find(state: &AppState, id: &str) -> ApiResult<Alert> {
    let not_found = || {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {id:?}"),
        )
    };
    let (started_at, device) = parse_id(id).ok_or_else(not_found)?;
    let filter = of_alert(id, device, started_at);
    let rows = state
        .history
        .query::<AlertRow>(&filter)
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?;
    rows.into_iter()
        .map(Alert::from)
        .max_by_key(|a| a.version)
        .ok_or_else(not_found)
}

/// `(no later than it fired, device_id)` of an alert id: `rule:device:started_at:hash`, or
/// from before the lifecycle `rule:device:channel:raised_at`.
fn parse_id(id: &str) -> Option<(i64, String)> {
    let parts: Vec<&str> = id.split(':').collect();
    let [_, device, a, b] = parts.as_slice() else {
        return None;
    };
    let from = a.parse().or_else(|_| b.parse()).ok()?;
    ioc_contract::valid_device_id(device).then(|| (from, device.to_string()))
}

pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let alert = find(&state, &id).await?;
    let filter = of_alert(&id, alert.device_id.clone(), alert.started_at);
    let mut transitions: Vec<AlertTransition> = state
        .history
        .query::<TransitionRow>(&filter)
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?
        .iter()
        .filter_map(TransitionRow::transition)
        .collect();
    transitions.sort_by_key(|t| (t.kind, t.at));
    let shown: Vec<ApiTransition> = transitions.iter().map(ApiTransition::from).collect();
    let mut deliveries = state
        .history
        .query::<DeliveryRow>(&HistoryFilter {
            from: alert.started_at.min(alert.fired_at) - 86_400_000,
            ..filter
        })
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?;
    deliveries.sort_by_key(|d| (d.created_at, d.recipient.clone()));
    let deliveries: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| {
            json!({
                "event": d.event,
                "recipient": d.recipient,
                "channel": d.channel,
                "status": d.status,
                "created_at": format_ms(d.created_at),
                "sent_at": d.sent_at.map(format_ms),
                "attempts": d.attempts,
                "last_error": d.last_error,
                "attempt_log": serde_json::from_str::<serde_json::Value>(&d.attempt_log)
                    .unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(json!({
        "alert": ApiAlert::from(&alert),
        "transitions": shown,
        "deliveries": deliveries,
    })))
}

pub async fn acknowledge(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    act(state, headers, id, body, CommandAction::Acknowledge).await
}

pub async fn resolve(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    act(state, headers, id, body, CommandAction::Resolve).await
}

async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
    action: CommandAction,
) -> ApiResult<Response> {
    let by = authorize(&state, bearer(&headers), Permission::ActOnAlerts)?;
    let comment = if body.is_empty() {
        String::new()
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("body must be a JSON object: {e}")))?;
        match v.get("comment") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(c)) if c.chars().count() <= 2000 => c.trim().to_string(),
            Some(serde_json::Value::String(_)) => {
                return Err(bad("comment must be at most 2000 characters".into()))
            }
            Some(_) => return Err(bad("comment must be a string".into())),
        }
    };
    if action == CommandAction::Resolve && comment.is_empty() {
        return Err(bad(
            "resolving by hand needs a comment saying why (`{\"comment\": \"...\"}`)".into(),
        ));
    }
    let alert = find(&state, &id).await?;
    if !may_act_on(by.role, &alert.category) {
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "role {} may act only on air and water alerts; this one is {}",
                by.role.as_str(),
                if alert.category.is_empty() {
                    "uncategorized"
                } else {
                    &alert.category
                }
            ),
        ));
    }
    if !alert.is_open() {
        let at = alert.resolved_at.map(format_ms).unwrap_or_default();
        let message = match &alert.resolved_by {
            Some(a) => format!("already resolved by {} at {at}", a.by),
            None => format!(
                "already resolved ({}) at {at}",
                alert.resolve_reason.map_or("cleared", |r| r.as_str())
            ),
        };
        return Ok((
            StatusCode::CONFLICT,
            Json(
                json!({ "error": "conflict", "message": message, "alert": ApiAlert::from(&alert) }),
            ),
        )
            .into_response());
    }
    let request_id = random_hex(16).map_err(|e| ApiFailure::unavailable("no randomness", e))?;
    let verb = match action {
        CommandAction::Acknowledge => "alert.acknowledged",
        CommandAction::Resolve => "alert.resolved",
    };
    let entry = AuditEntry {
        at: now_ms(),
        by: by.clone(),
        action: verb.into(),
        target: id.clone(),
        detail: json!({ "device_id": alert.device_id, "comment": comment, "request_id": request_id }),
    };
    ioc_bus::audit::record(&state.producer, &state.bus, &entry)
        .await
        .map_err(|e| {
            ApiFailure::unavailable("the act could not be audited, so it is refused", e)
        })?;
    let command = AlertCommand {
        request_id: request_id.clone(),
        alert_id: id.clone(),
        device_id: alert.device_id.clone(),
        action,
        by: by.name.clone(),
        at: entry.at,
        comment,
    };
    let reply = state.replies.wait(&request_id);
    let payload = serde_json::to_vec(&command).expect("commands serialize");
    if let Err(e) = state
        .producer
        .send(
            &state.bus.topics().alert_commands,
            &alert.device_id,
            &payload,
        )
        .await
    {
        state.replies.forget(&request_id);
        return Err(ApiFailure::unavailable("the command could not be sent", e));
    }
    let reply = match tokio::time::timeout(REPLY_WAIT, reply).await {
        Ok(Ok(reply)) => reply,
        _ => {
            state.replies.forget(&request_id);
            let body = json!({
                "request_id": request_id,
                "message": "the stream has not answered yet; the command takes effect once it does",
            });
            return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
        }
    };
    let shown = reply.alert.as_ref().map(ApiAlert::from);
    Ok(match reply.outcome {
        ReplyOutcome::Done => (StatusCode::OK, Json(json!({ "alert": shown }))).into_response(),
        ReplyOutcome::Conflict => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "conflict", "message": reply.message, "alert": shown })),
        )
            .into_response(),
        ReplyOutcome::Unknown => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "conflict", "message": reply.message })),
        )
            .into_response(),
    })
}

/// The latest version of the rules on the `rules` topic, and waiters for reload outcomes.
#[derive(Default)]
pub struct RulesView {
    current: std::sync::RwLock<Option<(String, Vec<ioc_config::RuleConfig>)>>,
    waiters: Waiters<RulesRecord>,
}

impl RulesView {
    fn apply(&self, record: RulesRecord) {
        let request = match &record {
            RulesRecord::Version {
                version,
                rules,
                request_id,
                ..
            } => {
                *self.current.write().expect("rules lock") = Some((version.clone(), rules.clone()));
                request_id.clone()
            }
            RulesRecord::Refused { request_id, .. } => request_id.clone(),
            RulesRecord::ReloadRequested { .. } => None,
        };
        if let Some(id) = request {
            self.waiters.deliver(&id, record);
        }
    }
}

/// Follows the `rules` topic from its beginning into `view`, until `shutdown`.
pub fn follow_rules(
    bus: &ioc_bus::Bus,
    view: Arc<RulesView>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ioc_bus::BusError> {
    let mut consumer = bus.consumer(&[&bus.topics().rules], ioc_bus::StartAt::Beginning)?;
    Ok(tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = consumer.recv() => m,
            };
            match m {
                Ok(m) => {
                    if let Ok(r) = serde_json::from_slice::<RulesRecord>(&m.payload) {
                        view.apply(r);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bus consume error (rules)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }))
}

pub async fn reload_rules(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let by = authorize(&state, bearer(&headers), Permission::Administer)?;
    let request_id = random_hex(16).map_err(|e| ApiFailure::unavailable("no randomness", e))?;
    let rx = state.rules_view.waiters.wait(&request_id);
    let record = RulesRecord::ReloadRequested {
        request_id: request_id.clone(),
        by: by.name.clone(),
        at: now_ms(),
    };
    let payload = serde_json::to_vec(&record).expect("rules records serialize");
    if let Err(e) = state
        .producer
        .send(&state.bus.topics().rules, "rules", &payload)
        .await
    {
        state.rules_view.waiters.forget(&request_id);
        return Err(ApiFailure::unavailable(
            "the reload could not be asked for",
            e,
        ));
    }
    let before = state
        .rules_view
        .current
        .read()
        .expect("rules lock")
        .clone()
        .map(|(_, r)| r)
        .unwrap_or_else(|| state.regulation.rules.clone());
    match tokio::time::timeout(REPLY_WAIT, rx).await {
        Ok(Ok(RulesRecord::Version { version, rules, .. })) => {
            let (added, removed, changed) = ioc_config::rules::changes(&before, &rules);
            Ok((
                StatusCode::OK,
                Json(json!({
                    "version": version, "rules": rules.len(),
                    "added": added, "removed": removed, "changed": changed,
                })),
            )
                .into_response())
        }
        Ok(Ok(RulesRecord::Refused { problems, .. })) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "invalid_rules",
                "message": "the rules were not changed: the ones in force keep running",
                "problems": problems,
            })),
        )
            .into_response()),
        _ => {
            state.rules_view.waiters.forget(&request_id);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "request_id": request_id,
                    "message": "no stream has answered yet; the reload happens once one does",
                })),
            )
                .into_response())
        }
    }
}

#[derive(Serialize)]
struct ApiRule {
    name: String,
    category: String,
    severity: String,
    sql: String,
    clear_sql: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    renotify: Option<String>,
    labels: Vec<String>,
    recipients: Vec<String>,
    builtin: bool,
    /// Open alerts by state.
    firing: usize,
    acknowledged: usize,
}

pub async fn rules(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let filter = HistoryFilter {
        from: 0,
        to: i64::MAX,
        limit: usize::MAX,
        any_of: vec![(
            "status",
            vec!["firing".into(), "acknowledged".into(), "active".into()],
        )],
        ..Default::default()
    };
    let open = state
        .history
        .query::<AlertRow>(&filter)
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?;
    let mut counts: HashMap<(String, AlertState), usize> = HashMap::new();
    for a in open.into_iter().map(Alert::from) {
        *counts.entry((a.rule, a.state)).or_default() += 1;
    }
    let human = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
    let (version, in_force) = state
        .rules_view
        .current
        .read()
        .expect("rules lock")
        .clone()
        .unwrap_or_else(|| {
            let r = state.regulation.rules.clone();
            (ioc_config::rules::version_of(&r), r)
        });
    let rules: Vec<ApiRule> = in_force
        .iter()
        .map(|r| ApiRule {
            firing: counts
                .get(&(r.name.clone(), AlertState::Firing))
                .copied()
                .unwrap_or(0),
            acknowledged: counts
                .get(&(r.name.clone(), AlertState::Acknowledged))
                .copied()
                .unwrap_or(0),
            builtin: ioc_config::rules::BUILTIN.contains(&r.name.as_str()),
            name: r.name.clone(),
            category: r.category.clone(),
            severity: r.severity.clone(),
            sql: r.sql.clone(),
            clear_sql: r.clear_sql.clone(),
            for_: human(r.for_),
            keep_firing_for: human(r.keep_firing_for),
            renotify: human(r.renotify),
            labels: r.labels.clone(),
            recipients: r.recipients.clone(),
        })
        .collect();
    Ok(Json(json!({ "version": version, "rules": rules })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_id_names_its_device_and_start() {
        assert_eq!(
            parse_id("qcvn40_exceedance:ww-1:1795680000000:0123456789ab"),
            Some((1_795_680_000_000, "ww-1".into()))
        );
        assert_eq!(
            parse_id("pm25_1min_mean_above_limit:aq-1::5"),
            Some((5, "aq-1".into()))
        );
        assert_eq!(parse_id("nonsense"), None);
    }
}
