//! Open data for the province's portal (`/open/v1/`): the stations, their hourly and daily
//! aggregates, VN_AQI and data-quality scores, as JSON or CSV, with no token. Nothing personal is reachable here:
//! only air-quality and wastewater stations (no cameras, no traffic events, no plates or
//! pseudonyms, no credentials or external ids). Rate limited per client address
//! (`api.open_data.rate`, `burst`) and switched off with `api.open_data.enabled = false`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_contract::rate::RateRule;
use ioc_contract::time::now_ms;
use ioc_contract::Aggregate;
use ioc_history::{AggregateRow, AqiRow, HistoryFilter};
use serde_json::json;

use crate::error::{ApiFailure, ApiResult};
use crate::params;
use crate::views::{ApiAggregate, ApiAqi};
use crate::AppState;

/// The kinds whose data is open: stations, not cameras or counters of people's movements.
const OPEN_KINDS: [&str; 2] = ["air_quality", "wastewater"];
/// Addresses remembered before the idle ones are forgotten.
const REMEMBERED: usize = 10_000;

/// Requests per client address.
#[derive(Debug, Clone, Default)]
pub struct OpenLimiter {
    tats: Arc<Mutex<HashMap<IpAddr, i64>>>,
}

impl OpenLimiter {
    fn admit(&self, rule: &RateRule, ip: IpAddr, now: i64) -> bool {
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        if tats.len() > REMEMBERED {
            // Those whose bucket has refilled are as good as new.
            tats.retain(|_, tat| *tat > now * 1000);
        }
        match rule.admit(tats.get(&ip).copied(), now) {
            Some(next) => {
                tats.insert(ip, next);
                true
            }
            None => false,
        }
    }
}

/// Checks the switch and the client's rate.
pub(crate) fn gate(state: &AppState, addr: SocketAddr) -> ApiResult<()> {
    let open = &state.config.open_data;
    if !open.enabled {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "open data is switched off here (api.open_data.enabled)",
        ));
    }
    if let Some(rule) = RateRule::new(open.rate, open.burst) {
        if !state.open_limiter.admit(&rule, addr.ip(), now_ms()) {
            return Err(ApiFailure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "at most {} requests per second from one address, bursts of {}: try again in a second",
                    open.rate, open.burst
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a device's data is open: a station's.
pub(crate) fn is_open_station(d: &ioc_contract::Device) -> bool {
    OPEN_KINDS.contains(&d.kind.as_str())
}

fn open_stations(state: &AppState) -> Vec<std::sync::Arc<ioc_contract::Device>> {
    state
        .registry
        .list()
        .into_iter()
        .filter(|d| is_open_station(d))
        .collect()
}

/// `GET /open/v1/stations`: `{"stations":[{"device_id","name","kind","lat","lon","commune","status"}]}`.
pub(crate) async fn stations(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    gate(&state, addr)?;
    let rows: Vec<serde_json::Value> = open_stations(&state)
        .iter()
        .map(|d| {
            json!({"device_id": d.device_id, "name": d.name, "kind": d.kind, "lat": d.lat,
                "lon": d.lon, "commune": d.commune, "status": d.status.as_str()})
        })
        .collect();
    Ok(list("stations", rows, params::csv(&q, &headers)?))
}

fn list(name: &str, rows: Vec<serde_json::Value>, csv: bool) -> Response {
    cors(if csv {
        crate::csv::response(name, &rows)
    } else {
        Json(json!({ name: rows })).into_response()
    })
}

/// Anyone's portal may show it.
pub(crate) fn cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        "*".parse().expect("static header"),
    );
    response
}

/// The filter of an open history query: the history routes' parameters, a resolution of `1h`
/// (default) or `1d`, and only open stations.
fn open_filter(state: &AppState, q: &HashMap<String, String>) -> ApiResult<HistoryFilter> {
    let resolution = params::hourly_or_daily(q)?;
    let mut filter = crate::history::windows_filter(state, q, resolution)?;
    let stations: Vec<String> = open_stations(state)
        .iter()
        .map(|d| d.device_id.clone())
        .collect();
    filter.any_of.push(("device_id", stations));
    Ok(filter)
}

/// `GET /open/v1/aggregates?resolution=1h|1d&device_id=&metric=&from=&to=&commune=&bbox=&format=`.
pub(crate) async fn aggregates(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    gate(&state, addr)?;
    let csv = params::csv(&q, &headers)?;
    let filter = open_filter(&state, &q)?;
    let rows = state
        .history
        .query::<AggregateRow>(&filter)
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?;
    let rows = rows
        .into_iter()
        .map(|r| {
            serde_json::to_value(ApiAggregate::from(&Aggregate::from(r))).expect("views serialize")
        })
        .collect();
    Ok(list("aggregates", rows, csv))
}

/// `GET /open/v1/aqi?resolution=1h|1d&device_id=&from=&to=&commune=&bbox=&format=`.
pub(crate) async fn aqi(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    gate(&state, addr)?;
    let csv = params::csv(&q, &headers)?;
    if q.contains_key("metric") {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "metric does not apply to the AQI (each row has every pollutant's sub-index)",
        ));
    }
    let filter = open_filter(&state, &q)?;
    let rows = state
        .history
        .query::<AqiRow>(&filter)
        .await
        .map_err(|e| ApiFailure::unavailable("history is unavailable", e))?;
    let rows = rows
        .iter()
        .map(|r| serde_json::to_value(ApiAqi::from(r)).expect("views serialize"))
        .collect();
    Ok(list("aqi", rows, csv))
}

/// `GET /open/v1/quality?resolution=1h|1d&device_id=&from=&to=&commune=&bbox=&format=`: each
/// open station's data-quality scores and counts per hour or day (`/api/v1/quality`), so a
/// portal can publish them beside the station's data.
pub(crate) async fn quality(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    gate(&state, addr)?;
    let csv = params::csv(&q, &headers)?;
    let filter = open_filter(&state, &q)?;
    let stations = open_stations(&state);
    let wanted = |d: &ioc_contract::Device| {
        filter
            .device_id
            .as_ref()
            .is_none_or(|id| *id == d.device_id)
            && filter
                .any_of
                .iter()
                .all(|(_, ids)| ids.contains(&d.device_id))
    };
    let devices: Vec<&ioc_contract::Device> = stations
        .iter()
        .map(|d| d.as_ref())
        .filter(|d| wanted(d))
        .collect();
    let records = crate::quality::score(
        &state,
        &devices,
        crate::quality::By::Device,
        filter.resolution,
        filter.from,
        filter.to,
    )
    .await?;
    let rows = records
        .iter()
        .map(|r| serde_json::to_value(r).expect("views serialize"))
        .collect();
    Ok(list("quality", rows, csv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_bucket_and_idle_ones_are_forgotten() {
        let rule = RateRule::new(1.0, 2.0).unwrap();
        let limiter = OpenLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.admit(&rule, a, 1_000));
        assert!(limiter.admit(&rule, a, 1_000));
        assert!(!limiter.admit(&rule, a, 1_000), "past its burst");
        assert!(
            limiter.admit(&rule, b, 1_000),
            "another address is not held back"
        );
        assert!(limiter.admit(&rule, a, 2_100), "a second later, one more");
        for i in 0..=REMEMBERED as u32 {
            limiter.admit(&rule, IpAddr::from(i.to_be_bytes()), 3_000);
        }
        limiter.admit(&rule, a, 60_000);
        assert!(
            limiter.tats.lock().unwrap().len() < 10,
            "idle addresses forgotten"
        );
    }
}
