//! Query parameters the routes share: unknown ones refused, `bbox`, and `format`.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};

use crate::error::{ApiFailure, ApiResult};

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Refuses a parameter the route does not take (a typo would otherwise be silently ignored).
pub fn known(q: &HashMap<String, String>, known: &[&str]) -> ApiResult<()> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(bad(format!(
            "unknown parameter {k:?}: this route takes {}",
            known.join(", ")
        ))),
    }
}

/// `bbox=south,west,north,east` in degrees.
pub fn bbox(q: &HashMap<String, String>) -> ApiResult<Option<[f64; 4]>> {
    let Some(b) = q.get("bbox") else {
        return Ok(None);
    };
    let parts: Vec<f64> = b.split(',').filter_map(|x| x.trim().parse().ok()).collect();
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
