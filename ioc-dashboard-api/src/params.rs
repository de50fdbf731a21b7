//! Query parameters the routes share: `bbox`, `format` and an hourly-or-daily `resolution`. (Unknown ones are refused before a
//! handler runs, by the guard of the route's op: [`crate::openapi`].)

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::{ApiFailure, ApiResult};

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `resolution=1h` (the default) or `1d`, for the routes of hourly and daily records (AQI,
/// data quality, open data).
pub fn hourly_or_daily(q: &HashMap<String, String>) -> ApiResult<ioc_contract::Resolution> {
    match q.get("resolution").map(String::as_str) {
        None | Some("1h") => Ok(ioc_contract::Resolution::Hour),
        Some("1d") => Ok(ioc_contract::Resolution::Day),
        Some(r) => Err(bad(format!(
            "resolution {r:?} is not 1h (hourly) or 1d (daily)"
        ))),
    }
}

/// `bbox=south,west,north,east` in degrees.
pub fn bbox(q: &HashMap<String, String>) -> ApiResult<Option<[f64; 4]>> {
    let Some(b) = q.get("bbox") else {
        return Ok(None);
    };
    // Every part a number: "1,2,x,3,4" is not a box with a typo dropped.
    let parts: Vec<f64> = b
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<Vec<f64>>>()
        .unwrap_or_default();
    match parts[..] {
        [south, west, north, east]
            if parts.iter().all(|x| x.is_finite()) && south < north && west < east =>
        {
            Ok(Some([south, west, north, east]))
        }
        _ => Err(bad(format!(
            "bbox is south,west,north,east in degrees (south < north, west < east), not {b:?}"
        ))),
    }
}

/// Whether `(lat, lon)` lies in `bbox`.
pub fn in_bbox([south, west, north, east]: [f64; 4], lat: f64, lon: f64) -> bool {
    (south..=north).contains(&lat) && (west..=east).contains(&lon)
}

/// Whether the answer is wanted as CSV: `format=csv`, or no `format` and `Accept: text/csv`.
pub fn csv(q: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<bool> {
    match q.get("format").map(String::as_str) {
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/csv")))),
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(f) => Err(bad(format!("format is json or csv, not {f:?}"))),
    }
}
