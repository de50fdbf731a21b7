//! Devices' MQTT accounts: created when a device is registered, rotated and revoked through
//! the API (`POST`/`DELETE /api/v1/devices/{id}/credentials`), and revoked when a device is
//! decommissioned.
//!
//! A device logs in with username and client id both its device id, and a random password
//! shown once; the registry keeps its SHA-256 and the topics it may publish on
//! ([`ioc_normalize::route::Router::device_topics`]). Where the account lives depends on the mode
//! ([`Accounts`]): on Mosquitto's dynamic security plugin (the broker enforces the topics), or
//! only in the registry (`ioc up`'s broker checks logins against it).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::{sha256_hex, Actor, Device, DeviceCredentials, DeviceStatus, RegistryEvent};
use serde::Serialize;
use serde_json::json;

use crate::auth::{authorize, bearer, random_hex, Permission};
use crate::devices::write_registry;
use crate::dynsec::Dynsec;
use crate::error::{not_found_device, ApiFailure, ApiResult};
use crate::AppState;

/// Where device accounts live.
#[derive(Clone)]
pub enum Accounts {
    /// Not managed by ioc (`api.device_accounts = "none"`): registration creates none.
    None,
    /// Only in the registry: `ioc up`'s embedded broker checks logins against it.
    Registry,
    /// On Mosquitto's dynamic security plugin, and in the registry.
    Dynsec(Arc<Dynsec>),
}

/// A device's account as the API shows it: never the password, which only the answer that
/// created it carries.
#[derive(Debug, Serialize)]
pub struct ApiAccount {
    pub username: String,
    pub client_id: String,
    /// Its main topic: where its decoder's messages go.
    pub topic: String,
    /// Every topic it may publish on.
    pub topics: Vec<String>,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl ApiAccount {
    pub fn new(c: &DeviceCredentials, password: Option<String>) -> ApiAccount {
        ApiAccount {
            username: c.username.clone(),
            client_id: c.client_id.clone(),
            topic: c.topics.first().cloned().unwrap_or_default(),
            topics: c.topics.clone(),
            issued_at: format_ms(c.issued_at),
            password,
        }
    }
}

/// Creates (or replaces) `device`'s account on the broker, if ioc manages it, and returns the
/// registry event to write and what the caller is shown once. `None` when accounts are not
/// managed. Nothing is written to the registry here.
pub(crate) async fn prepare(
    state: &AppState,
    device: &Device,
    by: &Actor,
) -> ApiResult<Option<(RegistryEvent, ApiAccount)>> {
    if matches!(state.accounts, Accounts::None) {
        return Ok(None);
    }
    let password = random_hex(24)
        .map_err(|e| ApiFailure::unavailable("no randomness for a device password", e))?;
    let credentials = DeviceCredentials {
        device_id: device.device_id.clone(),
        username: device.device_id.clone(),
        client_id: device.device_id.clone(),
        topics: ioc_normalize::route::Router::new(&state.ingest.routes).device_topics(device),
        sha256: sha256_hex(&password),
        issued_at: now_ms(),
        issued_by: by.clone(),
    };
    if credentials.topics.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "no route of ingest.routes carries device {}'s format: it would have no topic to publish on",
                device.device_id
            ),
        ));
    }
    if let Accounts::Dynsec(dynsec) = &state.accounts {
        dynsec
            .provision(
                &device.device_id,
                &credentials.username,
                &credentials.client_id,
                &password,
                &credentials.topics,
            )
            .await
            .map_err(broker_failure)?;
    }
    let shown = ApiAccount::new(&credentials, Some(password));
    Ok(Some((
        RegistryEvent::CredentialsIssued { credentials },
        shown,
    )))
}

/// Deletes `device_id`'s account from the broker (disconnecting it) and the registry. Returns
/// whether the registry had one. The broker's is deleted even if this process's registry view
/// has none: another API process may have just made it, or its registry write may have failed.
pub(crate) async fn revoke(state: &AppState, device_id: &str, by: Actor) -> ApiResult<bool> {
    if let Accounts::Dynsec(dynsec) = &state.accounts {
        // The username is the device id.
        dynsec
            .remove(device_id, device_id)
            .await
            .map_err(broker_failure)?;
    }
    if state.registry.credentials(device_id).is_none() {
        return Ok(false);
    }
    write_registry(
        state,
        RegistryEvent::CredentialsRevoked {
            device_id: device_id.to_string(),
            by,
            at: now_ms(),
        },
    )
    .await?;
    Ok(true)
}

fn broker_failure(e: crate::dynsec::DynsecError) -> ApiFailure {
    match e {
        crate::dynsec::DynsecError::NotOurs(_) => {
            ApiFailure::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        e => ApiFailure::unavailable("the broker's device accounts could not be changed", e),
    }
}

/// `POST /api/v1/devices/{id}/credentials`: a new password (the old one stops working, and on
/// Mosquitto whoever is connected with it is disconnected).
pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let by = authorize(&state, bearer(&headers), Permission::ManageDevices)?;
    let device = state
        .registry
        .get(&id)
        .ok_or_else(|| not_found_device(&id))?;
    if device.status == DeviceStatus::Decommissioned {
        return Err(decommissioned(&id));
    }
    let Some((event, shown)) = prepare(&state, &device, &by).await? else {
        return Err(unmanaged());
    };
    // Decommissioned meanwhile (by another request): take the new account back.
    if state
        .registry
        .get(&id)
        .is_some_and(|d| d.status == DeviceStatus::Decommissioned)
    {
        revoke(&state, &id, by).await?;
        return Err(decommissioned(&id));
    }
    write_registry(&state, event).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"device_id": id, "mqtt": shown})),
    )
        .into_response())
}

/// `DELETE /api/v1/devices/{id}/credentials`.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let by = authorize(&state, bearer(&headers), Permission::ManageDevices)?;
    if state.registry.get(&id).is_none() {
        return Err(not_found_device(&id));
    }
    if matches!(state.accounts, Accounts::None) {
        return Err(unmanaged());
    }
    if !revoke(&state, &id, by).await? {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("device {id} has no MQTT account"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

fn decommissioned(id: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("device {id} is decommissioned: change its status before giving it an account"),
    )
}

fn unmanaged() -> ApiFailure {
    ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        "device accounts are managed outside ioc here (api.device_accounts = \"none\")",
    )
}
