//! FIWARE Smart Data Models, keyValues form: the stations' hourly (or daily, or finer) windows
//! as `AirQualityObserved`, `WaterQualityObserved` and `TrafficFlowObserved` entities, and the
//! registry as `Device` entities, for the province's shared data warehouse (and, stations only,
//! for the open data portal). Values are in the models' units: concentrations in µg/m³ (air,
//! CO included) and mg/L (water), flow in m³/h, speeds in km/h; `relativeHumidity`,
//! `occupancy` and `reliability` are fractions 0–1 where the catalogue keeps %; wind
//! direction is −180° to 180°.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ioc_contract::time::format_ms;
use ioc_contract::{Aggregate, Device, Resolution};
use ioc_history::{AggregateRow, AqiRow};
use serde_json::{json, Map, Value};

use crate::error::{ApiFailure, ApiResult};
use crate::AppState;

/// The entity types, and the device kind each is made of.
pub const TYPES: [&str; 4] = [
    "AirQualityObserved",
    "WaterQualityObserved",
    "TrafficFlowObserved",
    "Device",
];

/// The types the open data portal gets: no traffic.
pub const OPEN_TYPES: [&str; 3] = ["AirQualityObserved", "WaterQualityObserved", "Device"];

fn kind_of(entity_type: &str) -> Option<&'static str> {
    match entity_type {
        "AirQualityObserved" => Some("air_quality"),
        "WaterQualityObserved" => Some("wastewater"),
        "TrafficFlowObserved" => Some("traffic_counter"),
        _ => None,
    }
}

/// A catalogue metric's attribute in its model, and the factor from the catalogue's unit.
fn attribute(entity_type: &str, metric: &str) -> Option<(&'static str, f64)> {
    let air = || -> Option<(&'static str, f64)> {
        Some(match metric {
            "pm1" => ("pm1", 1.0),
            "pm25" => ("pm25", 1.0),
            "pm10" => ("pm10", 1.0),
            "tsp" => ("tsp", 1.0),
            "no" => ("no", 1.0),
            "no2" => ("no2", 1.0),
            "nox" => ("nox", 1.0),
            "so2" => ("so2", 1.0),
            "o3" => ("o3", 1.0),
            "co" => ("co", 1.0),
            "temperature" => ("temperature", 1.0),
            "humidity" => ("relativeHumidity", 0.01),
            "wind_speed" => ("windSpeed", 1.0),
            "wind_dir" => ("windDirection", 1.0),
            _ => return None,
        })
    };
    let water = || -> Option<(&'static str, f64)> {
        Some(match metric {
            "temperature" => ("temperature", 1.0),
            "ph" => ("pH", 1.0),
            "cod" => ("cod", 1.0),
            "bod5" => ("bod", 1.0),
            "tss" => ("tss", 1.0),
            "nh4" => ("NH4", 1.0),
            "total_n" => ("N-TOT", 1.0),
            "total_p" => ("P-TOT", 1.0),
            "do" => ("O2", 1.0),
            "turbidity" => ("turbidity", 1.0),
            "conductivity" => ("conductivity", 1.0),
            "flow" => ("flow", 1.0),
            _ => return None,
        })
    };
    match entity_type {
        "AirQualityObserved" => air(),
        "WaterQualityObserved" => water(),
        _ => None,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A device's position as GeoJSON, longitude first, to the map's six decimals (~0.1 m).
fn point(d: &Device) -> Value {
    use crate::devices::round6;
    json!({"type": "Point", "coordinates": [round6(d.lon), round6(d.lat)]})
}

fn urn(entity_type: &str, parts: &[&str]) -> String {
    format!("urn:ngsi-ld:{entity_type}:{}", parts.join(":"))
}

/// `2026-12-01T01:00:00.000Z` → `20261201T0100Z`, for ids.
fn stamp(ms: i64) -> String {
    let t = format_ms(ms);
    format!(
        "{}{}{}T{}{}Z",
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16]
    )
}

/// The observation entities of `entity_type` made of `windows` (one resolution), each device's
/// window an entity (a traffic counter's: one per lane); `aqi`: the hourly or daily VN_AQI by
/// device and window start, for air.
pub fn observations(
    entity_type: &str,
    windows: &[Aggregate],
    devices: &HashMap<String, std::sync::Arc<Device>>,
    aqi: &HashMap<(String, i64), u32>,
) -> Vec<Value> {
    // device, window start, channel (lanes only) → the window's metrics.
    let mut groups: BTreeMap<(&str, i64, &str), Vec<&Aggregate>> = BTreeMap::new();
    let traffic = entity_type == "TrafficFlowObserved";
    for w in windows {
        let channel = if traffic { w.channel.as_str() } else { "" };
        groups
            .entry((&w.device_id, w.window_start, channel))
            .or_default()
            .push(w);
    }
    let mut out = Vec::new();
    for ((device_id, start, channel), group) in groups {
        let Some(device) = devices.get(device_id) else {
            continue;
        };
        let end = group[0].window_end;
        let mut e = Map::new();
        if traffic {
            let lane = channel.strip_prefix("lane-").unwrap_or(channel);
            e.insert(
                "id".into(),
                json!(urn(
                    entity_type,
                    &[
                        device_id,
                        &stamp(start),
                        if lane.is_empty() { "all" } else { lane }
                    ]
                )),
            );
            e.insert("type".into(), json!(entity_type));
            e.insert(
                "dateObserved".into(),
                json!(format!("{}/{}", format_ms(start), format_ms(end))),
            );
            e.insert("dateObservedFrom".into(), json!(format_ms(start)));
            e.insert("dateObservedTo".into(), json!(format_ms(end)));
            if let Some(n) = lane.parse::<u32>().ok().filter(|n| *n >= 1) {
                e.insert("laneId".into(), json!(n));
            }
            for w in &group {
                match w.metric.as_str() {
                    "vehicle_count" => e.insert("intensity".into(), json!(round3(w.sum))),
                    "occupancy" => e.insert("occupancy".into(), json!(round3(w.mean / 100.0))),
                    "avg_speed" => e.insert("averageVehicleSpeed".into(), json!(round3(w.mean))),
                    _ => None,
                };
            }
        } else {
            e.insert(
                "id".into(),
                json!(urn(entity_type, &[device_id, &stamp(start)])),
            );
            e.insert("type".into(), json!(entity_type));
            e.insert("dateObserved".into(), json!(format_ms(end)));
            // First channel first: a station's main channel is its unnamed one.
            let mut group = group;
            group.sort_by(|a, b| a.channel.cmp(&b.channel));
            let mut capture: Option<f64> = None;
            for w in &group {
                let Some((name, factor)) = attribute(entity_type, &w.metric) else {
                    continue;
                };
                if e.contains_key(name) {
                    continue;
                }
                let mut value = w.mean * factor;
                if name == "windDirection" && value > 180.0 {
                    value -= 360.0;
                }
                e.insert(name.into(), json!(round3(value)));
                if let Some(c) = w.capture {
                    capture = Some(capture.map_or(c, |m: f64| m.min(c)));
                }
            }
            if entity_type == "AirQualityObserved" {
                e.insert("refDevice".into(), json!(urn("Device", &[device_id])));
                if let Some(c) = capture {
                    e.insert("reliability".into(), json!(round3(c.clamp(0.0, 1.0))));
                }
                if let Some(&index) = aqi.get(&(device_id.to_string(), start)) {
                    e.insert("airQualityIndex".into(), json!(index));
                    e.insert(
                        "airQualityLevel".into(),
                        json!(ioc_regulation::aqi::band(index).en.to_lowercase()),
                    );
                }
            }
        }
        e.insert("location".into(), point(device));
        e.insert("name".into(), json!(device.name));
        e.insert("source".into(), json!("ioc"));
        out.push(Value::Object(e));
    }
    out
}

/// What a device of `kind` observes, in the Device model's vocabulary.
fn controlled(kind: &str) -> &'static [&'static str] {
    match kind {
        "air_quality" => &["airPollution", "temperature", "humidity"],
        "wastewater" => &["waterPollution", "pH", "tss", "turbidity", "conductivity"],
        "traffic_counter" => &["occupancy", "speed"],
        _ => &["motion"],
    }
}

/// A registered device as a `Device` entity; `last_seen`: when ingest last had a message of it.
pub fn device(d: &Device, last_seen: Option<i64>) -> Value {
    let mut e = Map::new();
    e.insert("id".into(), json!(urn("Device", &[&d.device_id])));
    e.insert("type".into(), json!("Device"));
    e.insert("name".into(), json!(d.name));
    e.insert("category".into(), json!(["sensor"]));
    e.insert("controlledProperty".into(), json!(controlled(&d.kind)));
    e.insert("deviceState".into(), json!(d.status.as_str()));
    e.insert("supportedProtocol".into(), json!(["mqtt"]));
    e.insert("location".into(), point(d));
    if let Some(t) = last_seen {
        e.insert("dateLastValueReported".into(), json!(format_ms(t)));
    }
    e.insert("source".into(), json!("ioc"));
    Value::Object(e)
}

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The entities a query asks for, of the devices `include` lets through.
async fn entities(
    state: &AppState,
    q: &HashMap<String, String>,
    allowed: &[&str],
    include: impl Fn(&Device) -> bool,
) -> ApiResult<Vec<Value>> {
    let entity_type = q
        .get("type")
        .map(String::as_str)
        .filter(|t| allowed.contains(t))
        .ok_or_else(|| bad(format!("type is required: one of {}", allowed.join(", "))))?;
    let resolution = match q.get("resolution") {
        None => Resolution::Hour,
        Some(r) => Resolution::parse(r)
            .ok_or_else(|| bad(format!("resolution {r:?} is not one of 1m, 5m, 1h, 1d")))?,
    };
    let mut filter = crate::history::windows_filter(state, q, resolution)?;
    let kind = kind_of(entity_type);
    let devices: HashMap<String, std::sync::Arc<Device>> = state
        .registry
        .list()
        .into_iter()
        .filter(|d| kind.is_none_or(|k| d.kind == k) && include(d))
        .filter(|d| {
            filter
                .device_id
                .as_ref()
                .is_none_or(|id| *id == d.device_id)
        })
        .map(|d| (d.device_id.clone(), d))
        .collect();
    let unavailable = |e| ApiFailure::unavailable("history is unavailable", e);
    if entity_type == "Device" {
        let mut shown: Vec<&std::sync::Arc<Device>> = devices.values().collect();
        shown.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let in_area = filter
            .any_of
            .iter()
            .find(|(column, _)| *column == "device_id")
            .map(|(_, ids)| ids.clone());
        return Ok(shown
            .into_iter()
            .filter(|d| in_area.as_ref().is_none_or(|a| a.contains(&d.device_id)))
            .take(filter.limit)
            .map(|d| {
                device(
                    d,
                    state.activity.get(&d.device_id).and_then(|a| a.last_seen),
                )
            })
            .collect());
    }
    filter
        .any_of
        .push(("device_id", devices.keys().cloned().collect()));
    let windows: Vec<Aggregate> = state
        .history
        .query::<AggregateRow>(&filter)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(Aggregate::from)
        .collect();
    let mut aqi = HashMap::new();
    if entity_type == "AirQualityObserved"
        && matches!(resolution, Resolution::Hour | Resolution::Day)
    {
        for a in state
            .history
            .query::<AqiRow>(&filter)
            .await
            .map_err(unavailable)?
        {
            if let Some(index) = a.aqi {
                aqi.insert((a.device_id.clone(), a.window_start), index);
            }
        }
    }
    Ok(observations(entity_type, &windows, &devices, &aqi))
}

/// `GET /api/v1/fiware?type=...`: the entities of every device the registry has.
pub(crate) async fn api(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let entities = entities(&state, &q, &TYPES, |_| true).await?;
    Ok(Json(entities).into_response())
}

/// `GET /open/v1/fiware?type=...`: the open stations' entities, no token.
pub(crate) async fn open(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    crate::open_data::gate(&state, addr)?;
    let entities = entities(&state, &q, &OPEN_TYPES, crate::open_data::is_open_station).await?;
    Ok(crate::open_data::cors(Json(entities).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn window(device: &str, channel: &str, metric: &str, mean: f64, sum: f64) -> Aggregate {
        Aggregate {
            device_id: device.into(),
            channel: channel.into(),
            metric: metric.into(),
            resolution: Resolution::Hour,
            window_start: 1_796_086_800_000,
            window_end: 1_796_090_400_000,
            count: 60,
            sum,
            min: mean,
            max: mean,
            mean,
            capture: Some(0.9),
            unit: String::new(),
            version: 1,
        }
    }

    fn devices(kind: &str) -> HashMap<String, Arc<Device>> {
        let d = Device {
            device_id: "d-1".into(),
            kind: kind.into(),
            name: "Trạm Hoà Phú".into(),
            lat: 12.654321987,
            lon: 108.0123456,
            status: ioc_contract::DeviceStatus::Active,
            ..Default::default()
        };
        [("d-1".to_string(), Arc::new(d))].into()
    }

    #[test]
    fn an_air_hour_is_one_entity_in_the_models_units_with_its_aqi() {
        let windows = [
            window("d-1", "", "pm25", 35.24444, 0.0),
            window("d-1", "", "humidity", 55.0, 0.0),
            window("d-1", "", "wind_dir", 270.0, 0.0),
            window("d-1", "", "co", 1200.0, 0.0),
            window("d-1", "", "noise", 60.0, 0.0),
        ];
        let aqi = [(("d-1".to_string(), 1_796_086_800_000), 120)].into();
        let e = observations(
            "AirQualityObserved",
            &windows,
            &devices("air_quality"),
            &aqi,
        );
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e["id"], "urn:ngsi-ld:AirQualityObserved:d-1:20261201T0100Z");
        assert_eq!(
            e["dateObserved"], "2026-12-01T02:00:00.000Z",
            "the hour's end"
        );
        assert_eq!(e["pm25"], 35.244);
        assert_eq!(e["relativeHumidity"], 0.55, "0–1 where the catalogue has %");
        assert_eq!(e["windDirection"], -90.0, "−180° to 180°");
        assert_eq!(e["co"], 1200.0, "µg/m³ like every other gas");
        assert!(e.get("noise").is_none(), "not an attribute of the model");
        assert_eq!(e["airQualityIndex"], 120);
        assert_eq!(e["airQualityLevel"], "poor");
        assert_eq!(e["reliability"], 0.9);
        assert_eq!(e["refDevice"], "urn:ngsi-ld:Device:d-1");
        assert_eq!(
            e["location"],
            json!({"type": "Point", "coordinates": [108.012346, 12.654322]})
        );
    }

    #[test]
    fn a_traffic_window_is_an_entity_per_lane_with_occupancy_as_a_fraction() {
        let windows = [
            window("d-1", "lane-1", "vehicle_count", 12.0, 720.0),
            window("d-1", "lane-1", "occupancy", 12.5, 0.0),
            window("d-1", "lane-2", "vehicle_count", 3.0, 180.0),
            window("d-1", "lane-2", "avg_speed", 41.26666, 0.0),
        ];
        let e = observations(
            "TrafficFlowObserved",
            &windows,
            &devices("traffic_counter"),
            &HashMap::new(),
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["laneId"], 1);
        assert_eq!(e[0]["intensity"], 720.0, "vehicles in the window");
        assert_eq!(e[0]["occupancy"], 0.125);
        assert_eq!(
            e[0]["dateObserved"],
            "2026-12-01T01:00:00.000Z/2026-12-01T02:00:00.000Z"
        );
        assert_eq!(e[1]["laneId"], 2);
        assert_eq!(e[1]["averageVehicleSpeed"], 41.267);
        assert_ne!(e[0]["id"], e[1]["id"]);
    }

    #[test]
    fn a_water_hour_names_its_pollutants_as_the_model_does() {
        let windows = [
            window("d-1", "", "ph", 7.2, 0.0),
            window("d-1", "", "bod5", 20.0, 0.0),
            window("d-1", "", "nh4", 4.0, 0.0),
            window("d-1", "", "total_n", 15.0, 0.0),
            window("d-1", "", "flow", 36.0, 0.0),
            window("d-1", "outlet-2", "ph", 9.9, 0.0),
        ];
        let e = observations(
            "WaterQualityObserved",
            &windows,
            &devices("wastewater"),
            &HashMap::new(),
        );
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(
            (&e["pH"], &e["bod"], &e["NH4"], &e["N-TOT"], &e["flow"]),
            (
                &json!(7.2),
                &json!(20.0),
                &json!(4.0),
                &json!(15.0),
                &json!(36.0)
            )
        );
        assert!(e.get("refDevice").is_none(), "not in the water model");
    }

    #[test]
    fn a_device_entity_states_what_it_observes_and_when_it_last_reported() {
        let d = devices("wastewater").remove("d-1").unwrap();
        let e = device(&d, Some(1_796_086_800_000));
        assert_eq!(e["id"], "urn:ngsi-ld:Device:d-1");
        assert_eq!(e["controlledProperty"][0], "waterPollution");
        assert_eq!(e["deviceState"], "active", "its registry status");
        assert_eq!(e["dateLastValueReported"], "2026-12-01T01:00:00.000Z");
        assert!(device(&d, None).get("dateLastValueReported").is_none());
    }
}
