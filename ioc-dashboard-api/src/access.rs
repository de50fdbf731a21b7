//! Tokens, the audit log, and the routes that expose personal data.
//!
//! - `POST /api/v1/tokens` issues a scoped token (shown once), `GET` lists them, `DELETE
//!   /api/v1/tokens/{id}` revokes one: admin only, each a registry event, so audited and seen by
//!   every API instance.
//! - `GET /api/v1/events`: camera events with plate pseudonyms (admin, enforcement).
//! - `GET /api/v1/evidence`: plates in the clear (enforcement only).
//! - Both reads are written to the audit log, durably, before anything is read: a read that
//!   cannot be audited is refused (503).
//! - `GET /api/v1/audit`: registry changes and personal-data reads, merged by time (admin).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::{Actor, AuditEntry, RegistryEvent, Role, TokenRecord, ROLES};
use ioc_history::{EventRow, EvidenceRow, HistoryFilter};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, random_hex, sha256_hex, Permission};
use crate::devices::write_registry;
use crate::error::{ApiFailure, ApiResult, FieldProblem};
use crate::history::history_filter;
use crate::AppState;

#[derive(Serialize)]
struct ApiToken {
    token_id: String,
    name: String,
    role: &'static str,
    issued_at: String,
    issued_by: String,
}

impl From<&TokenRecord> for ApiToken {
    fn from(t: &TokenRecord) -> Self {
        ApiToken {
            token_id: t.token_id.clone(),
            name: t.name.clone(),
            role: t.role.as_str(),
            issued_at: format_ms(t.issued_at),
            issued_by: t.issued_by.name.clone(),
        }
    }
}

pub async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let by = authorize(&state, bearer(&headers), Permission::Administer)?;
    let request: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body must be a JSON object: {e}"),
        )
    })?;
    let mut problems = Vec::new();
    let role = request["role"].as_str().and_then(Role::parse);
    if role.is_none() {
        problems.push(FieldProblem {
            field: "role",
            message: format!("required: one of {}", ROLES.join(", ")),
        });
    }
    let name = request["name"]
        .as_str()
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.chars().count() <= 100);
    if name.is_none() {
        problems.push(FieldProblem {
            field: "name",
            message: "required: whose token it is, 1 to 100 characters (audit entries name it)"
                .into(),
        });
    }
    let (Some(role), Some(name)) = (role, name) else {
        return Err(ApiFailure::invalid(
            "the token request has problems",
            problems,
        ));
    };
    let random =
        |n| random_hex(n).map_err(|e| ApiFailure::unavailable("no randomness for a new token", e));
    let secret = format!("ioc_{}", random(24)?);
    let token = TokenRecord {
        token_id: format!("tok_{}", random(8)?),
        name: name.to_string(),
        role,
        sha256: sha256_hex(&secret),
        issued_at: now_ms(),
        issued_by: by,
    };
    let shown = ApiToken::from(&token);
    write_registry(&state, RegistryEvent::TokenIssued { token }).await?;
    let mut body = serde_json::to_value(shown).expect("tokens serialize");
    // The only time the secret is ever shown: the registry keeps its hash.
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/v1/me`: the caller, and the dashboard view its role opens on.
pub async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let view = match actor.role {
        Role::Environment => "environment",
        Role::Installer => "installer",
        _ => "operator",
    };
    Ok(Json(
        json!({ "name": actor.name, "role": actor.role.as_str(), "view": view }),
    ))
}

pub async fn list_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::Administer)?;
    let tokens: Vec<ApiToken> = state.registry.tokens().iter().map(ApiToken::from).collect();
    Ok(Json(json!({ "tokens": tokens })))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let by = authorize(&state, bearer(&headers), Permission::Administer)?;
    if !state
        .registry
        .tokens()
        .iter()
        .any(|t| t.token_id == token_id)
    {
        let message = if state.registry.token_issued(&token_id) {
            format!("token {token_id:?} is already revoked")
        } else {
            format!("no token {token_id:?}")
        };
        return Err(ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message));
    }
    let event = RegistryEvent::TokenRevoked {
        token_id: token_id.clone(),
        by,
        at: now_ms(),
    };
    write_registry(&state, event).await?;
    Ok(Json(json!({ "token_id": token_id, "revoked": true })))
}

/// Registry changes and personal-data reads, newest first, narrowed by `device_id` (entries
/// about that device, and reads that named no device, which covered it too), `action`, and
/// `from`/`to` (default: everything); at most `limit`, the newest kept.
pub async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::Administer)?;
    let mut window = q.clone();
    window.entry("from".into()).or_insert_with(|| "0".into());
    let filter = history_filter(&state, &window)?;
    let keep = |e: &AuditEntry| {
        (filter.from..filter.to).contains(&e.at)
            && q.get("action").is_none_or(|a| *a == e.action)
            && filter.device_id.as_ref().is_none_or(|d| {
                e.target == *d
                    || (e.target == "*" && e.action.ends_with(".read"))
                    || e.detail.get("device_id").and_then(|v| v.as_str()) == Some(d)
            })
    };
    let mut entries = state.registry.audit(keep);
    let reads = ioc_bus::audit::read(&state.bus)
        .await
        .map_err(|e| ApiFailure::unavailable("the audit log could not be read", e))?;
    entries.extend(reads.into_iter().filter(keep));
    // Newest first; within one millisecond, later in the log first (a registration and its
    // account are written in the same millisecond, in that order).
    entries.reverse();
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    let truncated = entries.len() > filter.limit;
    entries.truncate(filter.limit);
    let shown: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|e| {
            json!({
                "at": format_ms(e.at),
                "by": e.by.name,
                "role": e.by.role.as_str(),
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({ "entries": shown, "truncated": truncated })))
}

/// Writes the audit entry of a personal-data read, durably, before the read.
pub(crate) async fn audit_read(
    state: &AppState,
    by: Actor,
    action: &str,
    filter: &HistoryFilter,
) -> ApiResult<()> {
    let entry = AuditEntry {
        at: now_ms(),
        by,
        action: action.into(),
        target: filter.device_id.clone().unwrap_or_else(|| "*".into()),
        detail: json!({
            "device_id": filter.device_id,
            "from": format_ms(filter.from),
            "to": format_ms(filter.to),
            "limit": filter.limit,
        }),
    };
    ioc_bus::audit::record(&state.producer, &state.bus, &entry)
        .await
        .map_err(|e| ApiFailure::unavailable("the read could not be audited, so it is refused", e))
}

fn history_unavailable(e: ioc_history::HistoryError) -> ApiFailure {
    ApiFailure::unavailable("history is unavailable", e)
}

#[derive(Serialize)]
struct ApiEvent {
    event_id: String,
    device_id: String,
    ts: String,
    kind: String,
    attributes: serde_json::Value,
    received_at: String,
}

impl From<EventRow> for ApiEvent {
    fn from(e: EventRow) -> Self {
        ApiEvent {
            attributes: serde_json::from_str(&e.attributes).unwrap_or_default(),
            event_id: e.event_id,
            device_id: e.device_id,
            ts: format_ms(e.ts),
            kind: e.kind,
            received_at: format_ms(e.received_at),
        }
    }
}

/// Camera events (`device_id`, `from`, `to`, `limit`), newest first. Audited.
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let by = authorize(&state, bearer(&headers), Permission::ReadEvents)?;
    let filter = history_filter(&state, &q)?;
    audit_read(&state, by, "events.read", &filter).await?;
    let rows = state
        .history
        .query::<EventRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let events: Vec<ApiEvent> = rows.into_iter().map(ApiEvent::from).collect();
    Ok(Json(json!({ "events": events })))
}

#[derive(Serialize)]
struct ApiEvidence {
    event_id: String,
    device_id: String,
    camera_id: String,
    ts: String,
    kind: String,
    plate: String,
    plate_pseudonym: String,
    image_ref: String,
    received_at: String,
}

impl From<EvidenceRow> for ApiEvidence {
    fn from(e: EvidenceRow) -> Self {
        ApiEvidence {
            event_id: e.event_id,
            device_id: e.device_id,
            camera_id: e.camera_id,
            ts: format_ms(e.ts),
            kind: e.kind,
            plate: e.plate,
            plate_pseudonym: e.plate_pseudonym,
            image_ref: e.image_ref,
            received_at: format_ms(e.received_at),
        }
    }
}

/// The evidence of camera events (`device_id`, `from`, `to`, `limit`), newest first: plates in
/// the clear. Enforcement only; audited.
pub async fn evidence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let by = authorize(&state, bearer(&headers), Permission::ReadEvidence)?;
    let filter = history_filter(&state, &q)?;
    audit_read(&state, by, "evidence.read", &filter).await?;
    let rows = state
        .history
        .query::<EvidenceRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let evidence: Vec<ApiEvidence> = rows.into_iter().map(ApiEvidence::from).collect();
    Ok(Json(json!({ "evidence": evidence })))
}
