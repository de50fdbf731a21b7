//! HTTP routes. Errors are JSON `{"error": code, "message": text}`; a failing dependency is
//! logged and answered 503 without its internal text.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use ioc_bus::registry;
use ioc_contract::time::{format_ms, now_ms, parse_param_ms};
use ioc_contract::{
    valid_device_id, valid_external_id, Actor, Aggregate, Device, DeviceChanges, DeviceCredentials,
    DeviceStatus, Grade, Qcvn40Column, Reading, RegistryEvent, Resolution, DEVICE_KINDS,
    EXTERNAL_ID_KINDS, FORMAT_NAMES,
};
use ioc_history::{AggregateRow, AqiRow, ExceedanceRow, HistoryFilter, ReadingRow};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, still_accepted, Permission};
use crate::live::DeviceActivity;
use crate::live::StreamName;
use crate::ws::{session, ClientFrame, Subscriptions};
use crate::AppState;
use crate::{access, accounts, alerts, commissioning, replay};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(list_devices).post(register_device))
        .route("/api/v1/devices/{id}", get(get_device).patch(update_device))
        .route("/api/v1/devices/{id}/replay", post(replay::replay))
        .route(
            "/api/v1/devices/{id}/credentials",
            post(accounts::rotate).delete(accounts::delete),
        )
        .route(
            "/api/v1/devices/{id}/commissioning",
            get(commissioning::commissioning),
        )
        .route("/api/v1/devices/{id}/live", get(device_live))
        .route("/api/v1/readings", get(readings))
        .route("/api/v1/aggregates", get(aggregates))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/{id}", get(alerts::get_one))
        .route("/api/v1/alerts/{id}/ack", post(alerts::acknowledge))
        .route("/api/v1/alerts/{id}/resolve", post(alerts::resolve))
        .route("/api/v1/rules", get(alerts::rules))
        .route("/api/v1/rules/reload", post(alerts::reload_rules))
        .route("/api/v1/aqi", get(aqi))
        .route("/api/v1/exceedances", get(exceedances))
        .route("/api/v1/annual", get(annual))
        .route("/api/v1/ws", get(websocket))
        .route(
            "/api/v1/tokens",
            get(access::list_tokens).post(access::issue_token),
        )
        .route("/api/v1/tokens/{id}", delete(access::revoke_token))
        .route("/api/v1/audit", get(access::audit))
        .route("/api/v1/events", get(access::events))
        .route("/api/v1/evidence", get(access::evidence))
        .fallback(not_found)
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Vec<FieldProblem>,
}

#[derive(Debug, Serialize)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiFailure {
        ApiFailure {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// 422 with every problem found.
    pub(crate) fn invalid(message: &str, problems: Vec<FieldProblem>) -> ApiFailure {
        let mut failure = ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        failure.problems = problems;
        failure
    }

    pub(crate) fn unavailable(context: &str, error: impl std::fmt::Display) -> ApiFailure {
        tracing::error!(error = %error, "{context}");
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{context}; try again shortly"),
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiFailure>;

pub(crate) fn not_found_device(id: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no device {id:?}"),
    )
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "devices": state.registry.len()}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&state.prometheus.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

type Fields = serde_json::Map<String, serde_json::Value>;

fn json_object(body: &[u8]) -> ApiResult<Fields> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "body must be a JSON object",
        )),
        Err(e) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body must be a JSON object: {e}"),
        )),
    }
}

/// The details of a device that can be given at registration and changed later, each checked
/// when present. What each field must be, for the messages of both routes.
const DETAILS: [(&str, &str); 15] = [
    ("name", "1 to 200 characters"),
    ("lat", "a number from -90 to 90"),
    ("lon", "a number from -180 to 180"),
    ("expected_interval_s", "a positive number of seconds"),
    (
        "status",
        "one of commissioning, active, maintenance, decommissioned",
    ),
    ("commune", "the commune or ward: 1 to 200 characters"),
    ("address", "1 to 500 characters"),
    (
        "installed_at",
        "RFC 3339 with an offset, or epoch milliseconds",
    ),
    ("installer", "1 to 200 characters"),
    ("grade", "reference or indicative"),
    (
        "discharge_channel",
        "the channel of the station's outlet: up to 64 characters (empty: its only channel)",
    ),
    ("qcvn40_column", "A or B"),
    ("kq", "a positive number (QCVN 40 receiving-water factor)"),
    ("kf", "a positive number (QCVN 40 discharge-flow factor)"),
    ("regulation", "a regulation with configured limits"),
];

/// The [`DETAILS`] fields that only a wastewater station has.
const DISCHARGE_FIELDS: [&str; 5] = [
    "discharge_channel",
    "qcvn40_column",
    "kq",
    "kf",
    "regulation",
];

/// Reads the [`DETAILS`] fields present in `fields` into changes for a device of `kind`,
/// noting each problem. `regulations`: those with configured wastewater limits.
fn details(
    fields: &Fields,
    kind: &str,
    regulations: &[&str],
    problems: &mut Vec<FieldProblem>,
) -> DeviceChanges {
    let mut changes = DeviceChanges::default();
    for (field, expected) in DETAILS {
        let Some(value) = fields.get(field) else {
            continue;
        };
        if DISCHARGE_FIELDS.contains(&field) && kind != "wastewater" {
            problems.push(FieldProblem {
                field,
                message: format!("only a wastewater station has it (this is {kind})"),
            });
            continue;
        }
        let factor = || value.as_f64().filter(|v| v.is_finite() && *v > 0.0);
        let text = |max: usize| {
            value
                .as_str()
                .filter(|t| !t.trim().is_empty() && t.chars().count() <= max)
                .map(str::to_string)
        };
        let number =
            |range: std::ops::RangeInclusive<f64>| value.as_f64().filter(|v| range.contains(v));
        let ok = match field {
            "name" => text(200).map(|v| changes.name = Some(v)),
            "lat" => number(-90.0..=90.0).map(|v| changes.lat = Some(v)),
            "lon" => number(-180.0..=180.0).map(|v| changes.lon = Some(v)),
            "expected_interval_s" => value
                .as_f64()
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| changes.expected_interval_s = Some(v)),
            "status" => value
                .as_str()
                .and_then(DeviceStatus::parse)
                .map(|v| changes.status = Some(v)),
            "commune" => text(200).map(|v| changes.commune = Some(v)),
            "address" => text(500).map(|v| changes.address = Some(v)),
            "installed_at" => match value {
                serde_json::Value::String(t) => parse_param_ms(t),
                other => other.as_i64(),
            }
            .map(|v| changes.installed_at = Some(v)),
            "installer" => text(200).map(|v| changes.installer = Some(v)),
            "grade" => value
                .as_str()
                .and_then(Grade::parse)
                .map(|v| changes.grade = Some(v)),
            "discharge_channel" => value
                .as_str()
                .filter(|c| c.chars().count() <= 64 && !c.chars().any(char::is_control))
                .map(|c| changes.discharge_channel = Some(c.to_string())),
            "qcvn40_column" => value
                .as_str()
                .and_then(Qcvn40Column::parse)
                .map(|v| changes.qcvn40_column = Some(v)),
            "kq" => factor().map(|v| changes.kq = Some(v)),
            "kf" => factor().map(|v| changes.kf = Some(v)),
            "regulation" => value
                .as_str()
                .filter(|r| regulations.contains(r))
                .map(|r| changes.regulation = Some(r.to_string())),
            _ => unreachable!("every DETAILS field is read"),
        };
        if ok.is_none() {
            let message = match field {
                "regulation" => format!("must be one of {}", regulations.join(", ")),
                _ => format!("must be {expected}"),
            };
            problems.push(FieldProblem { field, message });
        }
    }
    changes
}

/// Checks a registration, reporting every problem at once.
/// `profiles`: the vendor profiles ingest knows (`flat-gateway` and `ingest.vendor_profiles`).
fn validate_registration(
    body: &[u8],
    by: Actor,
    profiles: &[&str],
    regulations: &[&str],
) -> ApiResult<Device> {
    let fields = json_object(body)?;
    let mut problems = Vec::new();
    let kind = fields
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let changes = details(&fields, &kind, regulations, &mut problems);
    let mut problem =
        |field: &'static str, message: String| problems.push(FieldProblem { field, message });
    let string = |name: &str| {
        fields
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };

    let device_id = string("device_id").unwrap_or_default();
    if !valid_device_id(&device_id) {
        problem(
            "device_id",
            "required: 1 to 64 characters of A-Z a-z 0-9 _ - .".into(),
        );
    }
    if !DEVICE_KINDS.contains(&kind.as_str()) {
        problem(
            "kind",
            format!("required: one of {}", DEVICE_KINDS.join(", ")),
        );
    }
    for &(field, expected) in &DETAILS[..4] {
        if !fields.contains_key(field) {
            problem(field, format!("required: {expected}"));
        }
    }
    let mut external_ids = BTreeMap::new();
    match fields.get("external_ids") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(ids)) => {
            for (kind, value) in ids {
                match value.as_str() {
                    Some(v) if EXTERNAL_ID_KINDS.contains(&kind.as_str()) && valid_external_id(v) => {
                        external_ids.insert(kind.clone(), v.to_string());
                    }
                    _ if !EXTERNAL_ID_KINDS.contains(&kind.as_str()) => problem(
                        "external_ids",
                        format!(
                            "unknown kind {kind:?}: one of {}",
                            EXTERNAL_ID_KINDS.join(", ")
                        ),
                    ),
                    _ => problem(
                        "external_ids",
                        format!("{kind} must be a string of 1 to 64 printable ASCII characters without / + #"),
                    ),
                }
            }
        }
        Some(_) => problem(
            "external_ids",
            "must be an object like {\"imei\": \"861234567890123\"}".into(),
        ),
    }
    let decoder = match fields.get("decoder") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(d)) if FORMAT_NAMES.contains(&d.as_str()) => Some(d.clone()),
        Some(_) => {
            problem(
                "decoder",
                format!("must be one of {}", FORMAT_NAMES.join(", ")),
            );
            None
        }
    };
    let vendor_profile = match fields.get("vendor_profile") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(p)) if profiles.contains(&p.as_str()) => Some(p.clone()),
        Some(_) => {
            // A profile ingest does not know would dead-letter every message as not_configured.
            problem(
                "vendor_profile",
                format!(
                    "must be one of ingest's vendor profiles: {}",
                    profiles.join(", ")
                ),
            );
            None
        }
    };
    if !problems.is_empty() {
        return Err(ApiFailure::invalid(
            "the registration has problems",
            problems,
        ));
    }
    let mut device = Device {
        device_id,
        kind,
        registered_at: now_ms(),
        external_ids,
        decoder,
        vendor_profile,
        status: DeviceStatus::Commissioning,
        registered_by: Some(by),
        ..Default::default()
    };
    changes.apply_to(&mut device);
    Ok(device)
}

/// Checks a change of a device's details (`PATCH`): only [`DETAILS`] fields, at least one.
fn validate_changes(body: &[u8], kind: &str, regulations: &[&str]) -> ApiResult<DeviceChanges> {
    let fields = json_object(body)?;
    let mut problems = Vec::new();
    let changes = details(&fields, kind, regulations, &mut problems);
    for field in fields.keys() {
        if !DETAILS.iter().any(|(known, _)| known == field) {
            problems.push(FieldProblem {
                field: "body",
                message: format!(
                    "{field:?} cannot be changed (ids, kind, external ids and decoder are fixed at registration); changeable: {}",
                    DETAILS.map(|(f, _)| f).join(", ")
                ),
            });
        }
    }
    if problems.is_empty() && changes.is_empty() {
        problems.push(FieldProblem {
            field: "body",
            message: "nothing to change".into(),
        });
    }
    if !problems.is_empty() {
        return Err(ApiFailure::invalid("the change has problems", problems));
    }
    Ok(changes)
}

#[derive(Serialize)]
struct ApiDevice {
    device_id: String,
    kind: String,
    name: String,
    lat: f64,
    lon: f64,
    expected_interval_s: f64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    commune: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    installed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    installer: Option<String>,
    registered_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_by: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    external_ids: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_profile: Option<String>,
    /// `reference` or `indicative` (its kind's default unless registered otherwise).
    grade: &'static str,
    /// A wastewater station's discharge settings, defaults filled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    discharge: Option<ApiDischarge>,
    /// When ingest last received a message from it (stored or rejected), as far as this API
    /// instance has seen since it started.
    last_seen: Option<String>,
    /// Seen within three of its expected intervals.
    online: bool,
    last_rejection: Option<ApiRejection>,
    /// Its MQTT account (never the password), if it has one.
    mqtt: Option<accounts::ApiAccount>,
}

#[derive(Serialize)]
struct ApiDischarge {
    discharge_channel: String,
    qcvn40_column: &'static str,
    kq: f64,
    kf: f64,
    regulation: String,
}

#[derive(Serialize)]
struct ApiRejection {
    at: String,
    code: &'static str,
    reason: String,
}

impl ApiDevice {
    fn new(
        d: &Device,
        activity: Option<DeviceActivity>,
        account: Option<&DeviceCredentials>,
        now: i64,
    ) -> ApiDevice {
        let activity = activity.unwrap_or_default();
        let last_seen = activity.last_seen;
        ApiDevice {
            device_id: d.device_id.clone(),
            kind: d.kind.clone(),
            name: d.name.clone(),
            lat: d.lat,
            lon: d.lon,
            expected_interval_s: d.expected_interval_s,
            status: d.status.as_str(),
            commune: d.commune.clone(),
            address: d.address.clone(),
            installed_at: d.installed_at.map(format_ms),
            installer: d.installer.clone(),
            registered_at: format_ms(d.registered_at),
            registered_by: d.registered_by.as_ref().map(|a| a.name.clone()),
            external_ids: d.external_ids.clone(),
            decoder: d.decoder.clone(),
            vendor_profile: d.vendor_profile.clone(),
            grade: d.grade().as_str(),
            discharge: (d.kind == "wastewater").then(|| {
                let x = d.discharge();
                ApiDischarge {
                    discharge_channel: x.channel,
                    qcvn40_column: x.column.as_str(),
                    kq: x.kq,
                    kf: x.kf,
                    regulation: x.regulation,
                }
            }),
            last_seen: last_seen.map(format_ms),
            online: last_seen
                .is_some_and(|t| (now - t) as f64 <= 3.0 * d.expected_interval_s * 1000.0),
            last_rejection: activity.last_rejection.map(|r| ApiRejection {
                at: format_ms(r.at),
                code: r.code.as_str(),
                reason: r.reason,
            }),
            mqtt: account.map(|c| accounts::ApiAccount::new(c, None)),
        }
    }
}

fn show(state: &AppState, d: &Device) -> ApiDevice {
    let account = state.registry.credentials(&d.device_id);
    ApiDevice::new(
        d,
        state.activity.get(&d.device_id),
        account.as_ref(),
        now_ms(),
    )
}

fn same_registration(a: &Device, b: &Device) -> bool {
    (
        &a.kind,
        &a.name,
        a.lat,
        a.lon,
        a.expected_interval_s,
        &a.external_ids,
        &a.decoder,
        &a.vendor_profile,
        a.grade(),
        (a.kind == "wastewater").then(|| a.discharge()),
    ) == (
        &b.kind,
        &b.name,
        b.lat,
        b.lon,
        b.expected_interval_s,
        &b.external_ids,
        &b.decoder,
        &b.vendor_profile,
        b.grade(),
        (b.kind == "wastewater").then(|| b.discharge()),
    )
}

/// The regulations a wastewater station may be held to: those with limits in `[regulation]`.
fn regulations(state: &AppState) -> Vec<&str> {
    state.regulation.limits.wastewater_names()
}

async fn register_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let by = authorize(&state, bearer(&headers), Permission::ManageDevices)?;
    let profiles: Vec<&str> = std::iter::once(ioc_ingest::flat::DEFAULT_PROFILE)
        .chain(state.ingest.vendor_profiles.iter().map(|p| p.name.as_str()))
        .collect();
    let device = validate_registration(&body, by.clone(), &profiles, &regulations(&state))?;
    if let Some(existing) = state.registry.get(&device.device_id) {
        return if same_registration(&existing, &device) {
            Ok((StatusCode::OK, Json(show(&state, &existing))).into_response())
        } else {
            Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "device {} is already registered with other details",
                    device.device_id
                ),
            ))
        };
    }
    // External ids are unique: a station code or IMEI names exactly one device.
    for (kind, value) in &device.external_ids {
        if let Some(owner) = state.registry.by_external_id(kind, value) {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "{kind} {value:?} already belongs to device {}",
                    owner.device_id
                ),
            ));
        }
    }
    // The broker account first: if it cannot be made, nothing is registered. (If the registry
    // write fails after it, registering again replaces the account.)
    let account = if device.status == DeviceStatus::Decommissioned {
        None
    } else {
        accounts::prepare(&state, &device, &by).await?
    };
    let event = RegistryEvent::Registered {
        device: device.clone(),
    };
    write_registry(&state, event).await?;
    let mut body = serde_json::to_value(show(&state, &device)).expect("devices serialize");
    if let Some((event, shown)) = account {
        write_registry(&state, event).await.map_err(|_| {
            let id = &device.device_id;
            ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("device {id} is registered but its MQTT account could not be recorded: POST /api/v1/devices/{id}/credentials for a new one"),
            )
        })?;
        // The only time the password is ever shown: the registry keeps its hash.
        body["mqtt"] = json!(shown);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Writes a registry event and folds it in here at once (read-your-writes; other instances see
/// it through the registry topic).
pub(crate) async fn write_registry(state: &AppState, event: RegistryEvent) -> ApiResult<()> {
    registry::publish(&state.producer, &state.bus, &state.registry, event)
        .await
        .map_err(|e| ApiFailure::unavailable("the registry could not be written", e))
}

async fn update_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ApiDevice>> {
    let by = authorize(&state, bearer(&headers), Permission::ManageDevices)?;
    let Some(existing) = state.registry.get(&id) else {
        return Err(not_found_device(&id));
    };
    let changes = validate_changes(&body, &existing.kind, &regulations(&state))?;
    // A decommissioned device loses its broker account first: if that fails, nothing changes.
    if changes.status == Some(DeviceStatus::Decommissioned) {
        accounts::revoke(&state, &id, by.clone()).await?;
    }
    let event = RegistryEvent::Updated {
        device_id: id.clone(),
        changes,
        by,
        at: now_ms(),
    };
    write_registry(&state, event).await?;
    let device = state
        .registry
        .get(&id)
        .ok_or_else(|| not_found_device(&id))?;
    Ok(Json(show(&state, &device)))
}

async fn list_devices(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let devices: Vec<ApiDevice> = state
        .registry
        .list()
        .iter()
        .map(|d| show(&state, d))
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

async fn get_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiDevice>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    state
        .registry
        .get(&id)
        .map(|d| Json(show(&state, &d)))
        .ok_or_else(|| not_found_device(&id))
}

/// A reading as the API shows it.
#[derive(Debug, Serialize)]
pub struct ApiReading {
    pub device_id: String,
    pub channel: String,
    pub ts: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub quality: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub quality_reason: String,
}

impl From<&Reading> for ApiReading {
    fn from(r: &Reading) -> Self {
        ApiReading {
            device_id: r.device_id.clone(),
            channel: r.channel.clone(),
            ts: format_ms(r.ts),
            metric: r.metric.clone(),
            value: r.value,
            unit: r.unit.clone(),
            quality: r.quality.as_str(),
            quality_reason: r.quality_reason.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ApiAggregate {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub resolution: Resolution,
    pub window_start: String,
    pub window_end: String,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Share of the expected readings that arrived good, at most 1; null where the device's
    /// expected interval was unknown.
    pub capture: Option<f64>,
    pub unit: String,
    pub version: u64,
}

impl From<&Aggregate> for ApiAggregate {
    fn from(a: &Aggregate) -> Self {
        ApiAggregate {
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            resolution: a.resolution,
            window_start: format_ms(a.window_start),
            window_end: format_ms(a.window_end),
            count: a.count,
            sum: a.sum,
            min: a.min,
            max: a.max,
            mean: a.mean,
            capture: a.capture,
            unit: a.unit.clone(),
            version: a.version,
        }
    }
}

/// An hourly or daily VN_AQI, as `/api/v1/aqi` and the `aqi` stream give it.
#[derive(Debug, Serialize)]
pub struct ApiAqi {
    pub device_id: String,
    pub window_start: String,
    /// The hour-ending (or day-ending) label, in UTC.
    pub window_end: String,
    pub resolution: String,
    /// Null where the decision gives none (no PM2.5 or PM10 sub-index).
    pub aqi: Option<u32>,
    pub dominant: Option<String>,
    pub band: Option<ioc_regulation::aqi::Band>,
    pub sub_indices: ioc_regulation::aqi::SubIndices,
    /// µg/m³, to 1 decimal.
    pub nowcast_pm25: Option<f64>,
    pub nowcast_pm10: Option<f64>,
    pub valid_hours: Option<u32>,
    pub grade: String,
    /// Pollutants whose hour had too little capture to count: missing for the AQI.
    pub low_capture: Vec<String>,
    pub version: u64,
}

impl From<&AqiRow> for ApiAqi {
    fn from(a: &AqiRow) -> Self {
        use ioc_regulation::csv::round1;
        ApiAqi {
            device_id: a.device_id.clone(),
            window_start: format_ms(a.window_start),
            window_end: format_ms(a.window_end),
            resolution: a.resolution.clone(),
            aqi: a.aqi,
            dominant: (!a.dominant.is_empty()).then(|| a.dominant.clone()),
            band: a.aqi.map(ioc_regulation::aqi::band),
            sub_indices: ioc_regulation::aqi::SubIndices {
                pm25: a.pm25,
                pm10: a.pm10,
                o3_1h: a.o3_1h,
                o3_8h: a.o3_8h,
                no2: a.no2,
                so2: a.so2,
                co: a.co,
            },
            nowcast_pm25: a.nowcast_pm25.map(round1),
            nowcast_pm10: a.nowcast_pm10.map(round1),
            valid_hours: a.valid_hours,
            grade: a.grade.clone(),
            low_capture: a
                .low_capture
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            version: a.version,
        }
    }
}

/// A QCVN exceedance, as `/api/v1/exceedances` and the `exceedances` stream give it.
#[derive(Debug, Serialize)]
pub struct ApiExceedance {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub regulation: String,
    /// The averaging period: `1h`, `8h` or `24h`.
    pub period: String,
    pub window_start: String,
    pub window_end: String,
    /// The measured mean over the period.
    pub value: f64,
    pub unit: String,
    /// `{"max": 150}`, or for pH `{"low": 5.5, "high": 9}`.
    pub limit: serde_json::Value,
    /// value ÷ limit (for pH, how far outside its band), to 3 decimals.
    pub multiple: f64,
    /// The valid hours the mean is over.
    pub valid_hours: u32,
    pub grade: String,
    /// `exceeded`, or `withdrawn` when a revision brought the mean within the limit.
    pub status: String,
    pub version: u64,
}

impl From<&ExceedanceRow> for ApiExceedance {
    fn from(e: &ExceedanceRow) -> Self {
        let limit = match (e.limit_low, e.limit_high) {
            (Some(low), Some(high)) => json!({"low": low, "high": high}),
            (_, high) => json!({ "max": high }),
        };
        ApiExceedance {
            device_id: e.device_id.clone(),
            channel: e.channel.clone(),
            metric: e.metric.clone(),
            regulation: e.regulation.clone(),
            period: e.period.clone(),
            window_start: format_ms(e.window_start),
            window_end: format_ms(e.window_end),
            value: (e.value * 1000.0).round() / 1000.0,
            unit: e.unit.clone(),
            limit,
            multiple: (e.multiple * 1000.0).round() / 1000.0,
            valid_hours: e.valid_hours,
            grade: e.grade.clone(),
            status: e.status.clone(),
            version: e.version,
        }
    }
}

/// Parses `device_id`, `metric`, `from`, `to` (RFC 3339 or epoch ms; default: the last hour)
/// and `limit`.
pub(crate) fn history_filter(
    state: &AppState,
    q: &HashMap<String, String>,
) -> ApiResult<HistoryFilter> {
    let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let time = |name: &str| -> ApiResult<Option<i64>> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => parse_param_ms(v).map(Some).ok_or_else(|| {
                bad(format!(
                    "{name}={v:?} is not RFC 3339 with an offset or epoch milliseconds"
                ))
            }),
        }
    };
    let to = time("to")?.unwrap_or_else(|| now_ms() + 1);
    let from = time("from")?.unwrap_or(to - 3_600_000);
    if from >= to {
        return Err(bad("from must be before to".into()));
    }
    let max = state.config.query_limit;
    let limit = match q.get("limit") {
        None => max,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => return Err(bad(format!("limit must be from 1 to {max}"))),
        },
    };
    if let Some(d) = q.get("device_id") {
        if !valid_device_id(d) {
            return Err(bad(format!("device_id {d:?} is not a valid device id")));
        }
    }
    let resolution = match q.get("resolution") {
        None => Resolution::Minute,
        Some(r) => Resolution::parse(r)
            .ok_or_else(|| bad(format!("resolution {r:?} is not one of 1m, 5m, 1h, 1d")))?,
    };
    Ok(HistoryFilter {
        device_id: q.get("device_id").cloned(),
        metric: q.get("metric").cloned(),
        from,
        to,
        limit,
        resolution,
        regulation: q.get("regulation").cloned(),
        any_of: Vec::new(),
    })
}

/// An authorized history request: the token checked and the query parsed into a filter.
struct HistoryRequest(HistoryFilter);

impl axum::extract::FromRequestParts<AppState> for HistoryRequest {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> ApiResult<Self> {
        authorize(state, bearer(&parts.headers), Permission::ReadTelemetry)?;
        let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
        // A resolution the route would ignore is a mistake worth naming.
        let path = parts.uri.path();
        if q.contains_key("resolution") && path != "/api/v1/aggregates" {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("resolution applies to /api/v1/aggregates and /api/v1/aqi, not {path}"),
            ));
        }
        Ok(HistoryRequest(history_filter(state, &q)?))
    }
}

fn history_unavailable(e: ioc_history::HistoryError) -> ApiFailure {
    ApiFailure::unavailable("history is unavailable", e)
}

async fn readings(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .query::<ReadingRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let readings: Vec<ApiReading> = rows
        .into_iter()
        .map(|r| ApiReading::from(&r.into_reading()))
        .collect();
    Ok(Json(json!({ "readings": readings })))
}

async fn aggregates(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .query::<AggregateRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let aggregates: Vec<ApiAggregate> = rows
        .into_iter()
        .map(|r| ApiAggregate::from(&Aggregate::from(r)))
        .collect();
    Ok(Json(json!({ "aggregates": aggregates })))
}

/// `GET /api/v1/aqi?device_id=&from=&to=&resolution=1h|1d`: hourly (the default) or daily
/// VN_AQI whose window starts in the range (default: the last day of hours, or the last 31
/// days).
async fn aqi(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let resolution = match q.get("resolution").map(String::as_str) {
        None | Some("1h") => Resolution::Hour,
        Some("1d") => Resolution::Day,
        Some(r) => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("resolution {r:?} is not 1h or 1d"),
            ))
        }
    };
    let mut q = q;
    if !q.contains_key("from") {
        let to = match q.get("to") {
            Some(t) => parse_param_ms(t),
            None => Some(now_ms() + 1),
        };
        if let Some(to) = to {
            let span = if resolution == Resolution::Day {
                31 * 86_400_000
            } else {
                86_400_000
            };
            q.insert("from".into(), (to - span).to_string());
        }
    }
    q.remove("resolution");
    let filter = HistoryFilter {
        resolution,
        ..history_filter(&state, &q)?
    };
    let rows = state
        .history
        .query::<AqiRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let aqi: Vec<ApiAqi> = rows.iter().map(ApiAqi::from).collect();
    Ok(Json(json!({ "aqi": aqi })))
}

/// `GET /api/v1/exceedances?device_id=&regulation=&from=&to=`: QCVN exceedances (and their
/// withdrawals) whose period starts in the range.
async fn exceedances(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .query::<ExceedanceRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let exceedances: Vec<ApiExceedance> = rows.iter().map(ApiExceedance::from).collect();
    Ok(Json(json!({ "exceedances": exceedances })))
}

/// One pollutant's calendar-year mean against QCVN 05's year column.
#[derive(Debug, PartialEq, Serialize)]
pub struct AnnualMean {
    pub channel: String,
    pub metric: String,
    /// The mean of the year's valid hourly means (to 1 decimal).
    pub mean: f64,
    pub unit: String,
    pub valid_hours: u64,
    /// Hours of the year so far (all of it for a past year).
    pub hours: u64,
    /// valid_hours ÷ hours, to 3 decimals.
    pub coverage: f64,
    pub limit: f64,
    /// mean ÷ limit, to 2 decimals.
    pub multiple: f64,
    /// Whether the year's mean is above the limit; null where fewer than 75 % of the year's
    /// hours so far are valid (too little to judge a year by).
    pub exceeded: Option<bool>,
}

/// The share of a year's hours a year's mean needs to be judged.
const MIN_YEAR_COVERAGE: f64 = 0.75;

/// Year means of `hours` (hourly windows of one station) for the metrics `limit` gives a year
/// column, over `hours_so_far` hours; an hour counts when its capture is at least
/// `min_capture`.
pub fn annual_means(
    hours: &[Aggregate],
    limit: impl Fn(&str) -> Option<f64>,
    min_capture: f64,
    hours_so_far: u64,
) -> Vec<AnnualMean> {
    let mut by: BTreeMap<(&str, &str), (f64, u64, &str)> = BTreeMap::new();
    for w in hours {
        if limit(&w.metric).is_none() || w.capture.is_some_and(|c| c < min_capture) {
            continue;
        }
        let e = by
            .entry((&w.channel, &w.metric))
            .or_insert((0.0, 0, &w.unit));
        e.0 += w.mean;
        e.1 += 1;
    }
    by.into_iter()
        .filter_map(|((channel, metric), (sum, n, unit))| {
            let limit = limit(metric)?;
            let mean = sum / n as f64;
            let coverage = n as f64 / hours_so_far.max(1) as f64;
            Some(AnnualMean {
                channel: channel.to_string(),
                metric: metric.to_string(),
                mean: (mean * 10.0).round() / 10.0,
                unit: unit.to_string(),
                valid_hours: n,
                hours: hours_so_far,
                coverage: (coverage * 1000.0).round() / 1000.0,
                limit,
                multiple: (mean / limit * 100.0).round() / 100.0,
                exceeded: (coverage >= MIN_YEAR_COVERAGE).then_some(mean > limit),
            })
        })
        .collect()
}

/// `GET /api/v1/annual?device_id=&year=`: an air-quality station's calendar-year (local) means
/// against QCVN 05's year column, for the annual report; a running year up to now.
async fn annual(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let device_id = q
        .get("device_id")
        .filter(|d| valid_device_id(d))
        .ok_or_else(|| bad("device_id is required: a valid device id".into()))?;
    let year: i32 = q
        .get("year")
        .and_then(|y| y.parse().ok())
        .filter(|y| (2000..=2100).contains(y))
        .ok_or_else(|| bad("year is required: 2000 to 2100".into()))?;
    let device = state
        .registry
        .get(device_id)
        .ok_or_else(|| not_found_device(device_id))?;
    if device.kind != "air_quality" {
        return Err(bad(format!(
            "{device_id} is a {} device: year means are judged for air_quality stations",
            device.kind
        )));
    }
    let offset = state.ingest.utc_offset_ms();
    let start_of = |y: i32| {
        chrono::NaiveDate::from_ymd_opt(y, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis() - offset)
            .unwrap_or_default()
    };
    let (from, end) = (start_of(year), start_of(year + 1));
    let to = end.min(now_ms());
    if to <= from {
        return Err(bad(format!("{year} has not begun")));
    }
    let hours = state
        .history
        .windows(Resolution::Hour, &[device_id.clone()], from, to)
        .await
        .map_err(history_unavailable)?;
    let ambient = &state.regulation.limits.ambient;
    let date = chrono::NaiveDate::from_ymd_opt(year, 12, 31).unwrap_or_default();
    let hours_so_far = ((to - from) / 3_600_000).max(1) as u64;
    let means = annual_means(
        &hours,
        |m| ambient.limit(m, ioc_regulation::qcvn::Period::Year, date),
        state.regulation.min_hour_capture,
        hours_so_far,
    );
    Ok(Json(json!({
        "device_id": device_id,
        "year": year,
        "regulation": ambient.regulation,
        "grade": device.grade().as_str(),
        "means": means,
    })))
}

/// Browsers cannot set headers on a websocket: its token comes as `?token=`. Returns the
/// check the session repeats to end when the token is revoked.
fn authorize_socket(
    state: &AppState,
    q: &HashMap<String, String>,
) -> ApiResult<impl Fn() -> bool + Send + 'static> {
    let token = q.get("token").map(String::as_str);
    authorize(state, token, Permission::ReadTelemetry)?;
    Ok(still_accepted(state, token.unwrap_or_default()))
}

async fn websocket(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let token_live = authorize_socket(&state, &q)?;
    Ok(upgrade.on_upgrade(move |socket| {
        serve_socket(socket, state, Vec::new(), Subscriptions::new(), token_live)
    }))
}

/// `GET /api/v1/devices/{id}/live?token=`: one device's websocket for an installer. It sends
/// the commissioning checklist first, then the device's `device` (what ingest made of each
/// message: while the device is commissioning or in maintenance), `readings` and `alerts`
/// streams, live.
async fn device_live(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let token_live = authorize_socket(&state, &q)?;
    let Some(device) = state.registry.get(&id) else {
        return Err(not_found_device(&id));
    };
    let checklist = commissioning::current(&state, &device);
    let mut first = vec![json!({"stream": "checklist", "data": checklist}).to_string()];
    if !device.status.is_tapped() {
        first.push(
            json!({"op": "notice", "message": format!(
                "device {id} is {}: ingest shows what it makes of each message only while a device is commissioning or in maintenance (PATCH its status)",
                device.status.as_str()
            )})
            .to_string(),
        );
    }
    let only = Some([id].into_iter().collect());
    let subscriptions = [StreamName::Device, StreamName::Readings, StreamName::Alerts]
        .into_iter()
        .map(|s| (s, only.clone()))
        .collect();
    Ok(upgrade
        .on_upgrade(move |socket| serve_socket(socket, state, first, subscriptions, token_live)))
}

async fn serve_socket(
    socket: WebSocket,
    state: AppState,
    first: Vec<String>,
    subscriptions: Subscriptions,
    token_live: impl Fn() -> bool,
) {
    let (sink, stream) = socket.split();
    let mut out = Box::pin(
        sink.with(|text: String| async move { Ok::<_, axum::Error>(Message::Text(text.into())) }),
    );
    // Subscribed before the first frames, so nothing published meanwhile is missed.
    let live = state.live.subscribe();
    for frame in first {
        if out.send(frame).await.is_err() {
            return;
        }
    }
    let incoming = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Text(t)) => Some(ClientFrame::Text(t.to_string())),
            Ok(Message::Close(_)) | Err(_) => Some(ClientFrame::Close),
            Ok(_) => None,
        }
    });
    state.metrics.ws_clients.inc();
    session(
        out,
        Box::pin(incoming),
        live,
        state.metrics.clone(),
        subscriptions,
        token_live,
    )
    .await;
    state.metrics.ws_clients.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    use ioc_contract::Discharge;

    const REGULATIONS: [&str; 1] = [ioc_contract::DEFAULT_WASTEWATER_REGULATION];

    fn problems(e: ApiFailure) -> Vec<(&'static str, String)> {
        e.problems
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    }

    fn register(body: serde_json::Value) -> ApiResult<Device> {
        validate_registration(
            body.to_string().as_bytes(),
            Actor::admin_token(),
            &[],
            &REGULATIONS,
        )
    }

    #[test]
    fn station_settings_default_by_kind_and_are_checked_at_registration() {
        let base = serde_json::json!({"device_id": "ww-1", "kind": "wastewater", "name": "KCN Hoà Phú",
            "lat": 12.6, "lon": 108.0, "expected_interval_s": 300});
        let d = register(base.clone()).unwrap();
        assert_eq!(
            (d.grade(), d.discharge()),
            (Grade::Reference, Discharge::default())
        );
        assert_eq!(
            (
                d.discharge().channel.as_str(),
                d.discharge().column,
                d.discharge().kq
            ),
            ("outlet", Qcvn40Column::B, 1.0)
        );

        let mut set = base.clone();
        for (k, v) in [
            ("grade", serde_json::json!("indicative")),
            ("discharge_channel", serde_json::json!("")),
            ("qcvn40_column", serde_json::json!("A")),
            ("kq", serde_json::json!(0.9)),
            ("kf", serde_json::json!(1.1)),
        ] {
            set[k] = v;
        }
        let d = register(set).unwrap();
        let x = d.discharge();
        assert_eq!(d.grade(), Grade::Indicative);
        assert_eq!(
            (
                x.channel.as_str(),
                x.column,
                x.kq,
                x.kf,
                x.regulation.as_str()
            ),
            ("", Qcvn40Column::A, 0.9, 1.1, "QCVN 40:2011/BTNMT")
        );

        let mut bad = base.clone();
        bad["grade"] = "official".into();
        bad["qcvn40_column"] = "C".into();
        bad["kq"] = 0.into();
        bad["regulation"] = "QCVN 99".into();
        let fields: Vec<&str> = problems(register(bad).unwrap_err())
            .iter()
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(fields, vec!["grade", "qcvn40_column", "kq", "regulation"]);

        let mut air = base;
        air["kind"] = "air_quality".into();
        air["kf"] = 2.into();
        let p = problems(register(air.clone()).unwrap_err());
        assert_eq!(p[0].0, "kf");
        assert!(p[0].1.contains("only a wastewater station"), "{p:?}");
        air.as_object_mut().unwrap().remove("kf");
        assert_eq!(register(air).unwrap().grade(), Grade::Reference);
    }

    #[test]
    fn a_year_mean_is_over_its_valid_hours_and_judged_only_with_enough_of_them() {
        let hour = |metric: &str, i: i64, mean: f64, capture: f64| Aggregate {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: metric.into(),
            resolution: Resolution::Hour,
            window_start: i * 3_600_000,
            window_end: (i + 1) * 3_600_000,
            count: 60,
            sum: mean * 60.0,
            min: mean,
            max: mean,
            mean,
            capture: Some(capture),
            unit: "µg/m³".into(),
            version: 1,
        };
        let mut hours: Vec<Aggregate> = (0..80).map(|i| hour("pm25", i, 30.0, 1.0)).collect();
        // Too empty to count, however high.
        hours.push(hour("pm25", 80, 900.0, 0.5));
        hours.extend((0..50).map(|i| hour("no2", i, 20.0, 1.0)));
        // No year column for CO.
        hours.push(hour("co", 0, 5000.0, 1.0));
        let limits = ioc_regulation::qcvn::AmbientLimits::qcvn_05_2023();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let means = annual_means(
            &hours,
            |m| limits.limit(m, ioc_regulation::qcvn::Period::Year, date),
            0.75,
            100,
        );
        let brief: Vec<(&str, f64, u64, Option<bool>)> = means
            .iter()
            .map(|m| (m.metric.as_str(), m.mean, m.valid_hours, m.exceeded))
            .collect();
        // PM2.5 30 over 80 % of the hours, above 25; NO2 20 over 50 %: not judged.
        assert_eq!(
            brief,
            vec![("no2", 20.0, 50, None), ("pm25", 30.0, 80, Some(true))]
        );
        assert_eq!(
            (means[1].limit, means[1].multiple, means[1].coverage),
            (25.0, 1.2, 0.8)
        );
    }

    #[test]
    fn a_change_of_station_settings_keeps_what_it_does_not_name() {
        let changes = validate_changes(br#"{"kq": 0.8}"#, "wastewater", &REGULATIONS).unwrap();
        let mut d = Device {
            kind: "wastewater".into(),
            ..Default::default()
        };
        changes.apply_to(&mut d);
        assert_eq!(
            (
                d.discharge().kq,
                d.discharge().kf,
                d.discharge().channel.as_str()
            ),
            (0.8, 1.0, "outlet")
        );
        validate_changes(br#"{"qcvn40_column": "A"}"#, "wastewater", &REGULATIONS)
            .unwrap()
            .apply_to(&mut d);
        assert_eq!(
            (d.discharge().kq, d.discharge().column),
            (0.8, Qcvn40Column::A)
        );
        let e = validate_changes(br#"{"kq": 0.8}"#, "traffic_counter", &REGULATIONS).unwrap_err();
        assert_eq!(problems(e)[0].0, "kq");
    }
}
