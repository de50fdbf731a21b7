//! Traffic as the IOC sees it: road segments' flow, speed, occupancy and congestion, and
//! cameras' violations per type and hour, both derived by the stream.
//!
//! - `GET /api/v1/traffic?device_id=&from=&to=&resolution=`: the traffic counters' windows
//!   (`5m` or `1h`, default `1h`) and the cameras' hourly violation counts whose window starts in
//!   the range (default the last day); one device, or every traffic device of an area (`commune`,
//!   `bbox`) or of the province. Counts only: no pseudonym.
//! - `GET /api/v1/traffic/repeats?from=&to=&device_id=&min_violations=`: per plate pseudonym,
//!   how many violations it has in the range, by type and camera. Profiling a person's
//!   movements is personal data processing (DOMAIN.md §7): `enforcement` only, and audited
//!   before anything is read (a read that cannot be audited is refused).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::Resolution;
use ioc_history::{EventRow, HistoryFilter, TrafficRow, ViolationRow};
use serde::Serialize;
use serde_json::json;

use crate::access::audit_read;
use crate::auth::{authorize, bearer, Permission};
use crate::error::{not_found_device, ApiFailure, ApiResult};
use crate::history::{history_unavailable, windows_filter};
use crate::views::{ApiTraffic, ApiViolations};
use crate::AppState;

/// The kinds of device traffic is about.
const TRAFFIC_KINDS: [&str; 2] = ["traffic_counter", "traffic_camera"];

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `GET /api/v1/traffic`.
pub(crate) async fn traffic(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let resolution = match q.get("resolution").map(String::as_str) {
        None | Some("1h") => Resolution::Hour,
        Some("5m") => Resolution::FiveMinutes,
        Some(r) => {
            return Err(bad(format!(
                "resolution {r:?} is not 5m or 1h (cameras count per hour whatever it is)"
            )))
        }
    };
    let mut filter = windows_filter(&state, &q, resolution)?;
    if let Some(id) = &filter.device_id {
        let device = state.registry.get(id).ok_or_else(|| not_found_device(id))?;
        if !TRAFFIC_KINDS.contains(&device.kind.as_str()) {
            return Err(bad(format!(
                "{id} is a {} device: traffic is counted by {} devices",
                device.kind,
                TRAFFIC_KINDS.join(" and ")
            )));
        }
    }
    if filter.device_id.is_none() {
        // The area's traffic devices, or the province's.
        let area = filter.any_of.iter().find(|(c, _)| *c == "device_id");
        let ids: Vec<String> = state
            .registry
            .list()
            .iter()
            .filter(|d| TRAFFIC_KINDS.contains(&d.kind.as_str()))
            .filter(|d| area.is_none_or(|(_, ids)| ids.contains(&d.device_id)))
            .map(|d| d.device_id.clone())
            .collect();
        filter.any_of = vec![("device_id", ids)];
    }
    // One more row than the limit says whether there were more.
    let limit = filter.limit;
    filter.limit = limit.saturating_add(1);
    let counters = state
        .history
        .query::<TrafficRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let violations = state
        .history
        .query::<ViolationRow>(&filter)
        .await
        .map_err(history_unavailable)?;
    let truncated = counters.len() + violations.len() > limit;
    let counters: Vec<ApiTraffic> = counters.iter().take(limit).map(ApiTraffic::from).collect();
    let violations: Vec<ApiViolations> = violations
        .iter()
        .take(limit.saturating_sub(counters.len()))
        .map(ApiViolations::from)
        .collect();
    Ok(Json(json!({
        "traffic": counters,
        "violations": violations,
        "truncated": truncated,
    })))
}

/// The longest range `GET /api/v1/traffic/repeats` counts over.
const REPEATS_MAX_DAYS: i64 = 31;

/// One plate pseudonym's violations in a range.
#[derive(Debug, Serialize, PartialEq)]
pub struct Repeat {
    pub plate_pseudonym: String,
    pub violations: u64,
    pub by_type: BTreeMap<String, u64>,
    pub cameras: BTreeSet<String>,
    pub first_at: String,
    pub last_at: String,
}

/// The pseudonyms with at least `min` violations among `events`, most first (then by
/// pseudonym, for a stable order).
pub fn repeats(events: &[EventRow], min: u64) -> Vec<Repeat> {
    /// One pseudonym's violations so far, and when the first and last were.
    struct Tally(Repeat, i64, i64);
    let mut by_plate: BTreeMap<String, Tally> = BTreeMap::new();
    for e in events {
        let attributes: serde_json::Value = serde_json::from_str(&e.attributes).unwrap_or_default();
        let Some(plate) = attributes["plate_pseudonym"].as_str() else {
            continue;
        };
        let Tally(r, first, last) = by_plate.entry(plate.to_string()).or_insert_with(|| {
            let r = Repeat {
                plate_pseudonym: plate.to_string(),
                violations: 0,
                by_type: BTreeMap::new(),
                cameras: BTreeSet::new(),
                first_at: String::new(),
                last_at: String::new(),
            };
            Tally(r, e.ts, e.ts)
        });
        r.violations += 1;
        *r.by_type.entry(e.kind.clone()).or_default() += 1;
        r.cameras.insert(e.device_id.clone());
        *first = (*first).min(e.ts);
        *last = (*last).max(e.ts);
    }
    let mut out: Vec<Repeat> = by_plate
        .into_values()
        .filter(|Tally(r, ..)| r.violations >= min)
        .map(|Tally(r, first, last)| Repeat {
            first_at: format_ms(first),
            last_at: format_ms(last),
            ..r
        })
        .collect();
    out.sort_by(|a, b| {
        b.violations
            .cmp(&a.violations)
            .then_with(|| a.plate_pseudonym.cmp(&b.plate_pseudonym))
    });
    out
}

/// `GET /api/v1/traffic/repeats`: enforcement only, audited.
pub(crate) async fn repeat_offenders(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let by = authorize(&state, bearer(&headers), Permission::ReadRepeats)?;
    let min = match q.get("min_violations") {
        None => 2,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "min_violations {v:?} is not a whole number from 1 to 10000"
                ))
            })?,
    };
    let mut q = q.clone();
    q.remove("min_violations");
    if !q.contains_key("from") {
        let to = q
            .get("to")
            .and_then(|t| ioc_contract::time::parse_param_ms(t))
            .unwrap_or_else(|| now_ms() + 1);
        q.insert("from".into(), (to - 7 * 86_400_000).to_string());
    }
    let filter = crate::history::history_filter(&state, &q)?;
    if filter.to - filter.from > REPEATS_MAX_DAYS * 86_400_000 {
        return Err(bad(format!(
            "from and to may be at most {REPEATS_MAX_DAYS} days apart"
        )));
    }
    if let Some(id) = &filter.device_id {
        let device = state.registry.get(id).ok_or_else(|| not_found_device(id))?;
        if device.kind != "traffic_camera" {
            return Err(bad(format!(
                "{id} is a {} device, not a traffic camera",
                device.kind
            )));
        }
    }
    audit_read(&state, by, "repeats.read", &filter).await?;
    let events = state
        .history
        .query::<EventRow>(&HistoryFilter {
            limit: usize::MAX,
            ..filter.clone()
        })
        .await
        .map_err(history_unavailable)?;
    let repeats = repeats(&events, min);
    Ok(Json(json!({
        "from": format_ms(filter.from),
        "to": format_ms(filter.to),
        "min_violations": min,
        "repeats": repeats,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, camera: &str, ts: i64, kind: &str, plate: &str) -> EventRow {
        EventRow {
            event_id: id.into(),
            device_id: camera.into(),
            ts,
            kind: kind.into(),
            attributes: json!({ "plate_pseudonym": plate, "lane": 2 }).to_string(),
            received_at: ts,
            message_id: String::new(),
            version: 1,
        }
    }

    #[test]
    fn repeats_count_each_pseudonyms_violations_by_type_and_camera() {
        let t = 1_795_651_200_000;
        let events = [
            event("1", "cam-1", t, "red_light", "p_a"),
            event("2", "cam-2", t + 60_000, "no_helmet", "p_a"),
            event("3", "cam-1", t + 120_000, "red_light", "p_a"),
            event("4", "cam-1", t + 30_000, "speeding", "p_b"),
            event("5", "cam-1", t + 40_000, "speeding", "p_c"),
            event("6", "cam-2", t + 50_000, "wrong_way", "p_c"),
        ];
        let r = repeats(&events, 2);
        assert_eq!(r.len(), 2, "p_b has one violation");
        assert_eq!(r[0].plate_pseudonym, "p_a");
        assert_eq!(r[0].violations, 3);
        assert_eq!(
            r[0].by_type,
            BTreeMap::from([("no_helmet".into(), 1), ("red_light".into(), 2)])
        );
        assert_eq!(
            r[0].cameras,
            BTreeSet::from(["cam-1".into(), "cam-2".into()])
        );
        assert_eq!(r[0].first_at, format_ms(t));
        assert_eq!(r[0].last_at, format_ms(t + 120_000));
        assert_eq!(r[1].plate_pseudonym, "p_c");
        assert_eq!(repeats(&events, 1).len(), 3);
    }
}
