//! `POST /api/v1/devices/{id}/replay`: messages dead-lettered because their device, or the
//! external id they named, was not registered yet (a gateway relaying a sensor before anyone
//! registered it, a station file with a new station code) are processed again now that the
//! device is registered, exactly once.
//!
//! The API reads the dead-letter topic, picks the `unknown_device` letters that name this
//! device's id or one of its external ids and were never replayed, runs their raw bytes through
//! the same [`Ingestor`] ingest uses (with each message's original receipt time), produces what
//! they become, and only then records their ids as replayed in the registry. A crash between
//! the two produces them again on the next replay; the readings' keys make that harmless
//! (history deduplicates by key), and the registry record makes every later replay skip them.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use base64::Engine as _;
use ioc_contract::time::now_ms;
use ioc_contract::{DeadLetter, RegistryEvent, RejectCode};
use ioc_normalize::decode::DecodeContext;
use ioc_normalize::Ingestor;
use serde_json::json;

use crate::auth::{authorize, bearer, Permission};
use crate::devices::write_registry;
use crate::error::{ApiFailure, ApiResult};
use crate::AppState;

/// What a replay found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages processed again.
    pub messages: usize,
    /// Readings they became.
    pub readings: usize,
    /// Rejections they met this time (each dead-lettered again with its new reason).
    pub rejections: usize,
    /// Matching messages skipped because an earlier replay processed them.
    pub already_replayed: usize,
}

/// Whether a dead letter is an `unknown_device` letter naming the device by its id or one of
/// its external ids (`kind:value`).
fn names_device(l: &DeadLetter, device_id: &str, external_ids: &HashSet<String>) -> bool {
    l.code == RejectCode::UnknownDevice
        && (l.device_id.as_deref() == Some(device_id)
            || l.external_id
                .as_ref()
                .is_some_and(|e| external_ids.contains(e)))
}

/// The dead letters to replay for `device` (its id and its external ids as `kind:value`), one
/// per message, skipping those `replayed` says were done.
pub fn pick<'a>(
    letters: impl IntoIterator<Item = DeadLetter>,
    device_id: &str,
    external_ids: &HashSet<String>,
    replayed: impl Fn(&str) -> bool,
    skipped: &mut usize,
) -> Vec<DeadLetter> {
    let mut seen = HashSet::new();
    letters
        .into_iter()
        .filter(|l| names_device(l, device_id, external_ids))
        .filter(|l| seen.insert(l.message_id.clone()))
        .filter(|l| {
            let done = replayed(&l.message_id);
            *skipped += usize::from(done);
            !done
        })
        .collect()
}

pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let by = authorize(&state, bearer(&headers), Permission::ManageDevices)?;
    let Some(device) = state.registry.get(&id) else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {id:?}"),
        ));
    };
    // One replay at a time in this process, so two requests cannot both produce a message.
    let _one = state.replaying.lock().await;
    let external_ids: HashSet<String> = device
        .external_ids
        .iter()
        .map(|(kind, value)| format!("{kind}:{value}"))
        .collect();
    let unavailable = |e: ioc_bus::BusError| ApiFailure::unavailable("the bus is unavailable", e);
    // Only this device's letters are kept while the topic is read.
    let mut letters = Vec::new();
    state
        .bus
        .scan(&state.bus.topics().deadletter, |r| {
            if let Ok(l) = serde_json::from_slice::<DeadLetter>(&r.payload) {
                if names_device(&l, &id, &external_ids) {
                    letters.push(l);
                }
            }
        })
        .await
        .map_err(unavailable)?;
    let mut report = ReplayReport::default();
    let chosen = pick(
        letters,
        &id,
        &external_ids,
        |m| state.registry.was_replayed(m),
        &mut report.already_replayed,
    );

    // The ingest path itself, as it is configured, without its flood limit: these messages
    // were limited when they arrived.
    let mut config = state.ingest.as_ref().clone();
    config.device_rate_limit = 0.0;
    let ingestor = Ingestor::new(&config, state.registry.clone(), state.bus.topics().clone())
        .map_err(|e| ApiFailure::unavailable("the ingest configuration is unusable", e))?;
    let mut sends = Vec::new();
    let mut ids = Vec::with_capacity(chosen.len());
    for letter in &chosen {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&letter.raw_base64) else {
            tracing::error!(message_id = %letter.message_id, "dead letter with unreadable bytes skipped");
            continue;
        };
        let ctx = DecodeContext {
            received_at: letter.received_at,
            max_future_skew_ms: config.max_future_skew.as_millis() as i64,
            max_payload_bytes: config.max_payload_bytes,
            utc_offset_ms: config.utc_offset_ms(),
        };
        let outcome = ingestor.process(&letter.topic, &raw, &ctx);
        report.messages += 1;
        report.rejections += outcome.rejections.len();
        // Marked replayed only once it got through (readings or events): a message rejected
        // again as a whole (the device is decommissioned, registered with another decoder...)
        // is dead-lettered with its new reason and stays replayable once that is fixed.
        let through = outcome
            .records
            .iter()
            .any(|r| r.readings > 0 || *r.topic == *state.bus.topics().events);
        for record in outcome.records {
            report.readings += record.readings;
            sends.push(record);
        }
        if through {
            ids.push(letter.message_id.clone());
        }
    }
    futures::future::try_join_all(
        sends
            .iter()
            .map(|r| state.producer.send(&r.topic, &r.key, &r.payload)),
    )
    .await
    .map_err(unavailable)?;
    if !ids.is_empty() {
        let event = RegistryEvent::Replayed {
            device_id: id.clone(),
            message_ids: ids,
            by,
            at: now_ms(),
        };
        write_registry(&state, event).await?;
    }
    tracing::info!(device = %id, messages = report.messages, readings = report.readings, "dead letters replayed");
    Ok(Json(json!({
        "device_id": id,
        "messages": report.messages,
        "readings": report.readings,
        "rejections": report.rejections,
        "already_replayed": report.already_replayed,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(
        id: &str,
        code: RejectCode,
        device: Option<&str>,
        external: Option<&str>,
    ) -> DeadLetter {
        DeadLetter {
            code,
            reason: "r".into(),
            topic: "t".into(),
            received_at: 1,
            message_id: id.into(),
            device_id: device.map(str::to_string),
            external_id: external.map(str::to_string),
            metric: None,
            raw_base64: String::new(),
        }
    }

    #[test]
    fn picks_unknown_device_letters_naming_the_device_once_each_and_never_again() {
        let ids: HashSet<String> = ["imei:861".to_string()].into();
        let letters = vec![
            letter("m1", RejectCode::UnknownDevice, None, Some("imei:861")),
            letter("m1", RejectCode::UnknownDevice, None, Some("imei:861")),
            letter("m2", RejectCode::UnknownDevice, Some("st-9"), None),
            letter("m3", RejectCode::UnknownDevice, None, Some("imei:999")),
            letter("m4", RejectCode::Malformed, Some("st-9"), None),
            letter("m5", RejectCode::UnknownDevice, None, Some("imei:861")),
        ];
        let mut skipped = 0;
        let chosen = pick(letters, "st-9", &ids, |m| m == "m5", &mut skipped);
        let chosen: Vec<&str> = chosen.iter().map(|l| l.message_id.as_str()).collect();
        assert_eq!(chosen, ["m1", "m2"]);
        assert_eq!(skipped, 1);
    }
}
