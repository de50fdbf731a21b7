//! The device registry's routes: register, change, list and show devices, validated as ingest
//! and the stream will read them.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_bus::registry;
use ioc_contract::time::{format_ms, now_ms, parse_param_ms};
use ioc_contract::{
    valid_device_id, valid_external_id, Actor, Device, DeviceChanges, DeviceCredentials,
    DeviceStatus, Grade, Qcvn40Column, RegistryEvent, DEVICE_KINDS, DEVICE_STATUSES,
    EXTERNAL_ID_KINDS, FORMAT_NAMES,
};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, Permission};
use crate::error::{not_found_device, ApiFailure, ApiResult, FieldProblem};
use crate::live::{DeviceActivity, StreamName, EVENTS_WINDOW_MS};
use crate::AppState;
use crate::{accounts, params};

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

/// A detail of a device that can be given at registration and changed later, checked when
/// present: its name, what it must be (for the messages of both routes), and its JSON Schema
/// (the OpenAPI document's registration and change bodies are made from this table).
pub(crate) struct Detail {
    pub field: &'static str,
    pub expected: &'static str,
    pub schema: fn() -> serde_json::Value,
}

const fn detail(
    field: &'static str,
    expected: &'static str,
    schema: fn() -> serde_json::Value,
) -> Detail {
    Detail {
        field,
        expected,
        schema,
    }
}

/// The details, in the order their problems are reported. The first four are required at
/// registration.
pub(crate) const DETAILS: [Detail; 19] = [
    detail("name", "1 to 200 characters", || text(200)),
    detail(
        "lat",
        "a number from -90 to 90",
        || json!({"type": "number", "minimum": -90, "maximum": 90}),
    ),
    detail(
        "lon",
        "a number from -180 to 180",
        || json!({"type": "number", "minimum": -180, "maximum": 180}),
    ),
    detail(
        "expected_interval_s",
        "a positive number of seconds",
        positive,
    ),
    detail(
        "status",
        "one of commissioning, active, maintenance, decommissioned",
        || json!({"type": "string", "enum": ioc_contract::DEVICE_STATUSES}),
    ),
    detail(
        "commune",
        "the commune or ward: 1 to 200 characters",
        || text(200),
    ),
    detail("address", "1 to 500 characters", || text(500)),
    detail(
        "installed_at",
        "RFC 3339 with an offset, or epoch milliseconds",
        || {
            json!({"anyOf": [
                {"type": "string", "pattern": crate::openapi::TIME_PATTERN},
                {"type": "integer", "minimum": 0,
                    "maximum": ioc_contract::time::MAX_PARAM_MS},
            ]})
        },
    ),
    detail("installer", "1 to 200 characters", || text(200)),
    detail(
        "grade",
        "reference or indicative",
        || json!({"type": "string", "enum": ["reference", "indicative"]}),
    ),
    detail(
        "expected_metrics",
        "a list of distinct metrics of the catalogue (what the device owes; [] for none)",
        || {
            let names: Vec<&str> = ioc_contract::catalogue::CATALOGUE
                .iter()
                .map(|m| m.name)
                .collect();
            json!({"type": "array", "uniqueItems": true,
                    "items": {"type": "string", "enum": names}})
        },
    ),
    detail(
        "agency",
        "the unit answerable for its data: 1 to 200 characters",
        || text(200),
    ),
    detail(
        "road_segment",
        "the road segment it counts: 1 to 200 characters",
        || text(200),
    ),
    detail(
        "free_flow_speed_kmh",
        "a speed in km/h from 5 to 200 (the segment's speed with no congestion)",
        || json!({"type": "number", "minimum": 5, "maximum": 200}),
    ),
    detail(
        "discharge_channel",
        "the channel of the station's outlet: up to 64 characters (empty: its only channel)",
        || json!({"type": "string", "maxLength": 64}),
    ),
    detail(
        "qcvn40_column",
        "A or B",
        || json!({"type": "string", "enum": ["A", "B"]}),
    ),
    detail(
        "kq",
        "a positive number (QCVN 40 receiving-water factor)",
        positive,
    ),
    detail(
        "kf",
        "a positive number (QCVN 40 discharge-flow factor)",
        positive,
    ),
    detail(
        "regulation",
        "a regulation with configured limits",
        || json!({"type": "string"}),
    ),
];

fn text(max: u32) -> serde_json::Value {
    json!({"type": "string", "minLength": 1, "maxLength": max})
}

fn positive() -> serde_json::Value {
    json!({"type": "number", "exclusiveMinimum": 0})
}

/// The [`DETAILS`] fields that only a wastewater station has.
const DISCHARGE_FIELDS: [&str; 5] = [
    "discharge_channel",
    "qcvn40_column",
    "kq",
    "kf",
    "regulation",
];

/// The [`DETAILS`] fields that only a traffic counter has.
const ROAD_FIELDS: [&str; 2] = ["road_segment", "free_flow_speed_kmh"];

/// Reads the [`DETAILS`] fields present in `fields` into changes for a device of `kind`,
/// noting each problem. `regulations`: those with configured wastewater limits.
fn details(
    fields: &Fields,
    kind: &str,
    regulations: &[&str],
    problems: &mut Vec<FieldProblem>,
) -> DeviceChanges {
    let mut changes = DeviceChanges::default();
    for &Detail {
        field, expected, ..
    } in &DETAILS
    {
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
        if ROAD_FIELDS.contains(&field) && kind != "traffic_counter" {
            problems.push(FieldProblem {
                field,
                message: format!("only a traffic counter has it (this is {kind})"),
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
                other => other
                    .as_i64()
                    .filter(|t| (0..=ioc_contract::time::MAX_PARAM_MS).contains(t)),
            }
            .map(|v| changes.installed_at = Some(v)),
            "installer" => text(200).map(|v| changes.installer = Some(v)),
            "grade" => value
                .as_str()
                .and_then(Grade::parse)
                .map(|v| changes.grade = Some(v)),
            "expected_metrics" => metric_list(value).map(|v| changes.expected_metrics = Some(v)),
            "agency" => text(200).map(|v| changes.agency = Some(v)),
            "road_segment" => text(200).map(|v| changes.road_segment = Some(v)),
            "free_flow_speed_kmh" => {
                number(5.0..=200.0).map(|v| changes.free_flow_speed_kmh = Some(v))
            }
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

/// A list of distinct catalogue metrics, in the order given.
fn metric_list(value: &serde_json::Value) -> Option<Vec<String>> {
    let items = value.as_array()?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let name = item.as_str()?;
        ioc_contract::catalogue::lookup(name)?;
        if out.iter().any(|m| m == name) {
            return None;
        }
        out.push(name.to_string());
    }
    Some(out)
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
    for &Detail {
        field, expected, ..
    } in &DETAILS[..4]
    {
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
        if !DETAILS.iter().any(|d| d.field == field) {
            problems.push(FieldProblem {
                field: "body",
                message: format!(
                    "{field:?} cannot be changed (ids, kind, external ids and decoder are fixed at registration); changeable: {}",
                    DETAILS.map(|d| d.field).join(", ")
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
pub(crate) struct ApiDevice {
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
    /// What it owes (its kind's default unless registered otherwise).
    expected_metrics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agency: Option<String>,
    /// A traffic counter's road segment and free-flow speed, where registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    road_segment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    free_flow_speed_kmh: Option<f64>,
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
            expected_metrics: d.expected_metrics(),
            agency: d.agency.clone(),
            road_segment: d.road_segment.clone(),
            free_flow_speed_kmh: d.free_flow_speed_kmh,
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
            online: is_online(d, last_seen, now),
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

pub(crate) async fn register_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let by = authorize(&state, bearer(&headers), Permission::ManageDevices)?;
    let profiles: Vec<&str> = std::iter::once(ioc_normalize::flat::DEFAULT_PROFILE)
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

pub(crate) async fn update_device(
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

/// Which devices a list or the map selects: `kind`, `commune`, `status`, `online`, `bbox`
/// (`south,west,north,east`), each optional; anything else is a 400.
struct DeviceQuery {
    kind: Option<String>,
    commune: Option<String>,
    status: Option<DeviceStatus>,
    online: Option<bool>,
    bbox: Option<[f64; 4]>,
}

impl DeviceQuery {
    fn parse(q: &HashMap<String, String>) -> ApiResult<DeviceQuery> {
        let bad = |m: String| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m);
        let kind = q.get("kind").cloned();
        if let Some(k) = kind.as_deref().filter(|k| !DEVICE_KINDS.contains(k)) {
            return Err(bad(format!(
                "kind {k:?} is none of {}",
                DEVICE_KINDS.join(", ")
            )));
        }
        let status = match q.get("status") {
            None => None,
            Some(s) => Some(DeviceStatus::parse(s).ok_or_else(|| {
                bad(format!(
                    "status {s:?} is none of {}",
                    DEVICE_STATUSES.join(", ")
                ))
            })?),
        };
        let online = match q.get("online").map(String::as_str) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(o) => return Err(bad(format!("online is true or false, not {o:?}"))),
        };
        let bbox = params::bbox(q)?;
        Ok(DeviceQuery {
            kind,
            commune: q.get("commune").cloned(),
            status,
            online,
            bbox,
        })
    }

    fn selects(&self, d: &Device, online: bool) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == d.kind)
            && self
                .commune
                .as_ref()
                .is_none_or(|c| d.commune.as_ref() == Some(c))
            && self.status.is_none_or(|s| s == d.status)
            && self.online.is_none_or(|o| o == online)
            && self.bbox.is_none_or(|b| params::in_bbox(b, d.lat, d.lon))
    }
}

pub(crate) async fn list_devices(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let query = DeviceQuery::parse(&q)?;
    let devices: Vec<ApiDevice> = state
        .registry
        .list()
        .iter()
        .filter_map(|d| {
            let shown = show(&state, d);
            query.selects(d, shown.online).then_some(shown)
        })
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

/// `GET /api/v1/map`: the whole fleet for a map in one small answer: per device its position,
/// status, whether it is online, its latest values (`channel/metric` → value, as the live feed
/// last had them), its hourly AQI, its open alerts, a camera's violations in the last hour and a
/// traffic counter's latest 5-minute congestion level, as rows of [`MAP_FIELDS`]. Takes the
/// device list's filters.
pub(crate) async fn map(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let query = DeviceQuery::parse(&q)?;
    let mut latest: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
    for m in state.live.latest(StreamName::Readings) {
        if let (Some(key), Some(v)) = (&m.key, m.value) {
            let key = key.trim_start_matches('/').to_string();
            latest
                .entry(m.device_id.clone())
                .or_default()
                .insert(key, v);
        }
    }
    let aqi: HashMap<String, f64> = state
        .live
        .latest(StreamName::Aqi)
        .iter()
        .filter(|m| m.resolution == Some(ioc_contract::Resolution::Hour))
        .filter_map(|m| Some((m.device_id.clone(), m.value?)))
        .collect();
    let congestion: HashMap<String, String> = state
        .live
        .latest(StreamName::Traffic)
        .iter()
        .filter(|m| m.resolution == Some(ioc_contract::Resolution::FiveMinutes))
        .filter_map(|m| Some((m.device_id.clone(), m.level.clone()?)))
        .collect();
    let mut alerts: HashMap<String, u32> = HashMap::new();
    for m in state.live.latest(StreamName::Alerts) {
        *alerts.entry(m.device_id.clone()).or_default() += 1;
    }
    let now = now_ms();
    let rows: Vec<serde_json::Value> = state
        .registry
        .list()
        .iter()
        .filter_map(|d| {
            let activity = state.activity.get(&d.device_id);
            let online = is_online(d, activity.as_ref().and_then(|a| a.last_seen), now);
            query.selects(d, online).then(|| {
                json!([
                    d.device_id,
                    d.kind,
                    round6(d.lat),
                    round6(d.lon),
                    d.status.as_str(),
                    online,
                    latest.remove(&d.device_id).unwrap_or_default(),
                    aqi.get(&d.device_id),
                    alerts.get(&d.device_id).copied().unwrap_or(0),
                    (d.kind == "traffic_camera")
                        .then(|| state.activity.events_in_last_hour(&d.device_id, now)),
                    congestion.get(&d.device_id),
                ])
            })
        })
        .collect();
    Ok(Json(json!({
        "fields": MAP_FIELDS,
        "devices": rows,
        // Cameras' counts cover the last hour only once this instance has read events that long.
        "violations_since": format_ms(state.activity.events_since().max(now - EVENTS_WINDOW_MS)),
    })))
}

/// Seen within three of its expected intervals.
fn is_online(d: &Device, last_seen: Option<i64>, now: i64) -> bool {
    last_seen.is_some_and(|t| (now - t) as f64 <= 3.0 * d.expected_interval_s * 1000.0)
}

/// The columns of `/api/v1/map`'s rows.
pub const MAP_FIELDS: [&str; 11] = [
    "device_id",
    "kind",
    "lat",
    "lon",
    "status",
    "online",
    "latest",
    "aqi_1h",
    "open_alerts",
    "violations_1h",
    "congestion",
];

pub(crate) fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

pub(crate) async fn get_device(
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

/// `GET /api/v1/devices/{id}/limits`: what a station is held to today: an air station the
/// ambient table's limits for each averaging period, a wastewater station its discharge's
/// (column A or B, times Kq × Kf where the regulation says so). Other kinds have none.
pub(crate) async fn limits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let d = state
        .registry
        .get(&id)
        .ok_or_else(|| not_found_device(&id))?;
    let limits = &state.regulation.limits;
    let unit = |metric: &str| ioc_contract::catalogue::lookup(metric).map_or("", |m| m.unit);
    let shown = |l: ioc_regulation::qcvn::Limit| match l {
        ioc_regulation::qcvn::Limit::Max(max) => json!({ "max": max }),
        ioc_regulation::qcvn::Limit::Band { low, high } => json!({ "low": low, "high": high }),
    };
    let (regulation, rows): (String, Vec<serde_json::Value>) = match d.kind.as_str() {
        "air_quality" => {
            let today =
                chrono::DateTime::from_timestamp_millis(now_ms() + state.ingest.utc_offset_ms())
                    .unwrap_or_default()
                    .date_naive();
            let mut keys: Vec<(String, ioc_regulation::qcvn::Period)> = limits
                .ambient
                .limits
                .iter()
                .map(|l| (l.metric.clone(), l.period))
                .collect();
            keys.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
            keys.dedup();
            let rows = keys
                .iter()
                .filter_map(|(metric, period)| {
                    let max = limits.ambient.limit(metric, *period, today)?;
                    Some(json!({
                        "channel": "", "metric": metric, "period": period.as_str(),
                        "unit": unit(metric), "limit": { "max": max },
                    }))
                })
                .collect();
            (limits.ambient.regulation.clone(), rows)
        }
        "wastewater" => {
            let discharge = d.discharge();
            let column = match discharge.column {
                ioc_contract::Qcvn40Column::A => ioc_regulation::qcvn::Column::A,
                ioc_contract::Qcvn40Column::B => ioc_regulation::qcvn::Column::B,
            };
            let rows = limits
                .wastewater(&discharge.regulation)
                .map(|table| {
                    table
                        .limits
                        .iter()
                        .filter_map(|l| {
                            let limit =
                                table.limit(&l.metric, column, discharge.kq, discharge.kf)?;
                            Some(json!({
                                "channel": discharge.channel, "metric": l.metric, "period": "1h",
                                "unit": unit(&l.metric), "limit": shown(limit),
                            }))
                        })
                        .collect()
                })
                .unwrap_or_default();
            (discharge.regulation.clone(), rows)
        }
        _ => (String::new(), Vec::new()),
    };
    Ok(Json(json!({
        "device_id": d.device_id, "regulation": regulation, "limits": rows,
    })))
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
    fn a_traffic_counter_names_its_road_segment_and_free_flow_speed() {
        let mut d = Device {
            kind: "traffic_counter".into(),
            ..Default::default()
        };
        let changes = validate_changes(
            r#"{"road_segment": "Lê Duẩn, Buôn Ma Thuột", "free_flow_speed_kmh": 45}"#.as_bytes(),
            "traffic_counter",
            &REGULATIONS,
        )
        .unwrap();
        changes.apply_to(&mut d);
        assert_eq!(
            (d.road_segment.as_deref(), d.free_flow_speed_kmh),
            (Some("Lê Duẩn, Buôn Ma Thuột"), Some(45.0))
        );
        // A change of one keeps the other.
        validate_changes(
            br#"{"free_flow_speed_kmh": 50}"#,
            "traffic_counter",
            &REGULATIONS,
        )
        .unwrap()
        .apply_to(&mut d);
        assert_eq!(d.road_segment.as_deref(), Some("Lê Duẩn, Buôn Ma Thuột"));
        assert_eq!(d.free_flow_speed_kmh, Some(50.0));
        let p = problems(
            validate_changes(
                br#"{"free_flow_speed_kmh": 1, "road_segment": ""}"#,
                "traffic_counter",
                &REGULATIONS,
            )
            .unwrap_err(),
        );
        let fields: Vec<&str> = p.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["road_segment", "free_flow_speed_kmh"], "{p:?}");
        let p = problems(
            validate_changes(br#"{"road_segment": "QL14"}"#, "air_quality", &REGULATIONS)
                .unwrap_err(),
        );
        assert!(p[0].1.contains("only a traffic counter"), "{p:?}");
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

    #[test]
    fn device_filters_refuse_values_they_do_not_know_and_select_by_every_part() {
        let q = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            DeviceQuery::parse(&map)
        };
        for (pairs, says) in [
            (vec![("kind", "weather")], "none of"),
            (vec![("status", "broken")], "none of"),
            (vec![("online", "yes")], "true or false"),
            (vec![("bbox", "13,107,12,109")], "south < north"),
            (vec![("bbox", "1,2,3")], "south,west,north,east"),
        ] {
            let e = q(&pairs).err().expect("refused");
            assert!(e.message.contains(says), "{pairs:?}: {}", e.message);
        }
        let d = Device {
            device_id: "aq-1".into(),
            kind: "air_quality".into(),
            commune: Some("Ea Kar".into()),
            lat: 12.8,
            lon: 108.4,
            ..Default::default()
        };
        let all = q(&[
            ("kind", "air_quality"),
            ("commune", "Ea Kar"),
            ("status", "active"),
            ("online", "true"),
            ("bbox", "12.5,108,13,109"),
        ])
        .unwrap();
        assert!(all.selects(&d, true));
        assert!(!all.selects(&d, false), "offline");
        assert!(!q(&[("commune", "Krông Pắc")]).unwrap().selects(&d, true));
        assert!(!q(&[("bbox", "12,107,12.5,108")]).unwrap().selects(&d, true));
        assert!(!q(&[("kind", "wastewater")]).unwrap().selects(&d, true));
    }
}
