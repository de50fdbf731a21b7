//! HTTP routes. Errors are JSON `{"error": code, "message": text}`; a failing dependency is
//! logged and answered 503 without its internal text.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use ioc_bus::registry;
use ioc_contract::time::{format_ms, now_ms, parse_param_ms};
use ioc_contract::{
    valid_device_id, valid_external_id, Aggregate, Alert, Device, Reading, RegistryEvent,
    DEVICE_KINDS, EXTERNAL_ID_KINDS, FORMAT_NAMES,
};
use ioc_history::HistoryFilter;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ws::{session, ClientFrame};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(list_devices).post(register_device))
        .route("/api/v1/devices/{id}", get(get_device))
        .route("/api/v1/readings", get(readings))
        .route("/api/v1/aggregates", get(aggregates))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/ws", get(websocket))
        .fallback(not_found)
        .with_state(state)
}

/// An error answer.
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
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    fn unavailable(context: &str, error: impl std::fmt::Display) -> ApiFailure {
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

type ApiResult<T> = Result<T, ApiFailure>;

/// Compares without an early exit, so response timing does not reveal a prefix of the token.
fn token_matches(given: &str, expected: &str) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn authorize(state: &AppState, given: Option<&str>) -> ApiResult<()> {
    let expected = &state.config.admin_token;
    let refuse = |message: &str| {
        state.metrics.requests_unauthorized.inc();
        Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
        ))
    };
    if expected.is_empty() {
        return refuse(
            "this server has no admin token configured (set --admin-token or IOC_ADMIN_TOKEN)",
        );
    }
    match given {
        None => refuse("missing token: send Authorization: Bearer <token>"),
        Some(t) if token_matches(t, expected) => Ok(()),
        Some(_) => refuse("invalid token"),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
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

#[derive(Debug, Deserialize)]
struct Registration {
    device_id: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
    lat: Option<serde_json::Value>,
    lon: Option<serde_json::Value>,
    expected_interval_s: Option<serde_json::Value>,
    external_ids: Option<serde_json::Value>,
    decoder: Option<serde_json::Value>,
    vendor_profile: Option<serde_json::Value>,
}

/// Checks a registration, reporting every problem at once.
fn validate_registration(body: &[u8]) -> ApiResult<Device> {
    let reg: Registration = serde_json::from_slice(body).map_err(|e| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body must be a JSON object: {e}"),
        )
    })?;
    let mut problems = Vec::new();
    let mut problem =
        |field: &'static str, message: String| problems.push(FieldProblem { field, message });
    let string =
        |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_str()).map(str::to_string);
    let number = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_f64());

    let device_id = string(&reg.device_id).unwrap_or_default();
    if !valid_device_id(&device_id) {
        problem(
            "device_id",
            "required: 1 to 64 characters of A-Z a-z 0-9 _ - .".into(),
        );
    }
    let kind = string(&reg.kind).unwrap_or_default();
    if !DEVICE_KINDS.contains(&kind.as_str()) {
        problem(
            "kind",
            format!("required: one of {}", DEVICE_KINDS.join(", ")),
        );
    }
    let name = string(&reg.name).unwrap_or_default();
    if name.trim().is_empty() || name.len() > 200 {
        problem("name", "required: 1 to 200 characters".into());
    }
    let lat = number(&reg.lat);
    if !lat.is_some_and(|v| (-90.0..=90.0).contains(&v)) {
        problem("lat", "required: a number from -90 to 90".into());
    }
    let lon = number(&reg.lon);
    if !lon.is_some_and(|v| (-180.0..=180.0).contains(&v)) {
        problem("lon", "required: a number from -180 to 180".into());
    }
    let interval = number(&reg.expected_interval_s);
    if !interval.is_some_and(|v| v.is_finite() && v > 0.0) {
        problem(
            "expected_interval_s",
            "required: a positive number of seconds".into(),
        );
    }
    let mut external_ids = BTreeMap::new();
    match &reg.external_ids {
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
    let decoder = match &reg.decoder {
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
    let vendor_profile = match &reg.vendor_profile {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(p)) if valid_device_id(p) => Some(p.clone()),
        Some(_) => {
            problem(
                "vendor_profile",
                "must be a profile name: 1 to 64 characters of A-Z a-z 0-9 _ - .".into(),
            );
            None
        }
    };
    if !problems.is_empty() {
        let mut failure = ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the registration has problems",
        );
        failure.problems = problems;
        return Err(failure);
    }
    Ok(Device {
        device_id,
        kind,
        name,
        lat: lat.unwrap_or_default(),
        lon: lon.unwrap_or_default(),
        expected_interval_s: interval.unwrap_or_default(),
        registered_at: now_ms(),
        external_ids,
        decoder,
        vendor_profile,
    })
}

#[derive(Serialize)]
struct ApiDevice {
    device_id: String,
    kind: String,
    name: String,
    lat: f64,
    lon: f64,
    expected_interval_s: f64,
    registered_at: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    external_ids: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_profile: Option<String>,
}

impl From<&Device> for ApiDevice {
    fn from(d: &Device) -> Self {
        ApiDevice {
            device_id: d.device_id.clone(),
            kind: d.kind.clone(),
            name: d.name.clone(),
            lat: d.lat,
            lon: d.lon,
            expected_interval_s: d.expected_interval_s,
            registered_at: format_ms(d.registered_at),
            external_ids: d.external_ids.clone(),
            decoder: d.decoder.clone(),
            vendor_profile: d.vendor_profile.clone(),
        }
    }
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
    ) == (
        &b.kind,
        &b.name,
        b.lat,
        b.lon,
        b.expected_interval_s,
        &b.external_ids,
        &b.decoder,
        &b.vendor_profile,
    )
}

async fn register_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, bearer(&headers))?;
    let device = validate_registration(&body)?;
    if let Some(existing) = state.registry.get(&device.device_id) {
        return if same_registration(&existing, &device) {
            Ok((StatusCode::OK, Json(ApiDevice::from(existing.as_ref()))).into_response())
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
    let event = RegistryEvent::Registered {
        device: device.clone(),
    };
    registry::publish(&state.producer, &state.bus, &event)
        .await
        .map_err(|e| ApiFailure::unavailable("the registry could not be written", e))?;
    // Read-your-writes here; other instances see it through the registry topic.
    state.registry.apply(event);
    Ok((StatusCode::CREATED, Json(ApiDevice::from(&device))).into_response())
}

async fn list_devices(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers))?;
    let devices: Vec<ApiDevice> = state
        .registry
        .list()
        .iter()
        .map(|d| ApiDevice::from(d.as_ref()))
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

async fn get_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiDevice>> {
    authorize(&state, bearer(&headers))?;
    state
        .registry
        .get(&id)
        .map(|d| Json(ApiDevice::from(d.as_ref())))
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no device {id:?}"),
            )
        })
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
    pub window_start: String,
    pub window_end: String,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub unit: String,
    pub version: u64,
}

impl From<&Aggregate> for ApiAggregate {
    fn from(a: &Aggregate) -> Self {
        ApiAggregate {
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            window_start: format_ms(a.window_start),
            window_end: format_ms(a.window_end),
            count: a.count,
            min: a.min,
            max: a.max,
            mean: a.mean,
            unit: a.unit.clone(),
            version: a.version,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ApiAlert {
    pub alert_id: String,
    pub rule: String,
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub status: &'static str,
    pub raised_at: String,
    pub cleared_at: Option<String>,
    pub value: f64,
    pub peak: f64,
    pub limit: f64,
    pub unit: String,
    pub message: String,
}

impl From<&Alert> for ApiAlert {
    fn from(a: &Alert) -> Self {
        ApiAlert {
            alert_id: a.alert_id.clone(),
            rule: a.rule.clone(),
            device_id: a.device_id.clone(),
            channel: a.channel.clone(),
            metric: a.metric.clone(),
            status: a.status.as_str(),
            raised_at: format_ms(a.raised_at),
            cleared_at: a.cleared_at.map(format_ms),
            value: a.value,
            peak: a.peak,
            limit: a.limit,
            unit: a.unit.clone(),
            message: a.message.clone(),
        }
    }
}

/// Parses `device_id`, `metric`, `from`, `to` (RFC 3339 or epoch ms; default: the last hour)
/// and `limit`.
fn history_filter(state: &AppState, q: &HashMap<String, String>) -> ApiResult<HistoryFilter> {
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
    Ok(HistoryFilter {
        device_id: q.get("device_id").cloned(),
        metric: q.get("metric").cloned(),
        from,
        to,
        limit,
    })
}

/// An authorized history request: the admin token checked and the query parsed into a filter.
struct HistoryRequest(HistoryFilter);

impl axum::extract::FromRequestParts<AppState> for HistoryRequest {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> ApiResult<Self> {
        authorize(state, bearer(&parts.headers))?;
        let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
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
        .readings(&filter)
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
        .aggregates(&filter)
        .await
        .map_err(history_unavailable)?;
    let aggregates: Vec<ApiAggregate> = rows.iter().map(ApiAggregate::from).collect();
    Ok(Json(json!({ "aggregates": aggregates })))
}

async fn alerts(
    State(state): State<AppState>,
    HistoryRequest(filter): HistoryRequest,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = state
        .history
        .alerts(&filter)
        .await
        .map_err(history_unavailable)?;
    let alerts: Vec<ApiAlert> = rows.iter().map(ApiAlert::from).collect();
    Ok(Json(json!({ "alerts": alerts })))
}

async fn websocket(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    authorize(&state, q.get("token").map(String::as_str))?;
    Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, state)))
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    let (sink, stream) = socket.split();
    let out =
        sink.with(|text: String| async move { Ok::<_, axum::Error>(Message::Text(text.into())) });
    let incoming = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Text(t)) => Some(ClientFrame::Text(t.to_string())),
            Ok(Message::Close(_)) | Err(_) => Some(ClientFrame::Close),
            Ok(_) => None,
        }
    });
    state.metrics.ws_clients.inc();
    session(
        Box::pin(out),
        Box::pin(incoming),
        state.live.subscribe(),
        state.metrics.clone(),
    )
    .await;
    state.metrics.ws_clients.dec();
}
