//! The six wire formats the fleet speaks, encoded from canonical samples. These are contracts
//! with the ingest decoders (topics and bodies are documented on [`Format`]); the simulator
//! never imports the decoders.

use chrono::DateTime;
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{json, Map, Value as Json};

use crate::signals::{Sample, Value, LOCAL_OFFSET_MS};

/// A payload format, spoken by one group of simulated devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// `ioc/v1/devices/{device_id}/telemetry`:
    /// `{"ts": <epoch ms>, "seq": n, "channel"?, "interval_s"?, "values": {..}, "units"?: {..}}`.
    IocJson,
    /// `ioc/v1/devices/{device_id}/senml`: an RFC 8428 pack, `bt` in epoch seconds.
    Senml,
    /// `ioc/v1/gateways/{gateway_id}/flat`: one low-cost sensor's flat object, numbers as strings
    /// with a decimal comma, local time, identified by its `imei`.
    VendorFlat,
    /// `ioc/v1/stations/{station_code}/file`: a monitoring station's TAB-separated file.
    Tt10Station,
    /// `ioc/v1/devices/{device_id}/counts`: per-lane counts over an interval.
    TrafficCounter,
    /// `ioc/v1/cameras/{camera_id}/events`: one violation event.
    CameraEvent,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::IocJson,
        Format::Senml,
        Format::VendorFlat,
        Format::Tt10Station,
        Format::TrafficCounter,
        Format::CameraEvent,
    ];

    /// The decoder name a device registers with.
    pub fn name(self) -> &'static str {
        match self {
            Format::IocJson => "ioc-json",
            Format::Senml => "senml",
            Format::VendorFlat => "vendor-flat",
            Format::Tt10Station => "tt10-station",
            Format::TrafficCounter => "traffic-counter",
            Format::CameraEvent => "camera-event",
        }
    }

    /// The finest time step the format can write; a device never repeats a timestamp at it.
    pub(crate) fn resolution_ms(self) -> i64 {
        match self {
            Format::IocJson | Format::Senml => 1,
            _ => 1000,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an encoder needs besides the sample.
pub(crate) struct Frame<'a> {
    pub format: Format,
    pub device_id: &'a str,
    /// The device's place in its group: picks its vendor quirks (units, spellings, line ends).
    pub style: usize,
    /// `imei`, station code or camera id, as the device writes it.
    pub external_id: Option<&'a str>,
    pub ts: i64,
    pub seq: u64,
    /// Index of a value to send with a unit nobody knows (the wrong-units fault).
    pub bogus_unit: Option<usize>,
    /// The seconds a traffic counter's counts are over.
    pub interval_s: i64,
}

fn round(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

fn comma(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}").replace('.', ",")
}

pub(crate) fn local_time(ts_ms: i64, pattern: &str) -> String {
    DateTime::from_timestamp_millis(ts_ms + LOCAL_OFFSET_MS)
        .unwrap_or_default()
        .naive_utc()
        .format(pattern)
        .to_string()
}

/// µg/m³ to ppb at 25 °C (DOMAIN.md §1).
fn ppb(metric: &str, ugm3: f64) -> f64 {
    let molar_mass = match metric {
        "no2" => 46.01,
        "o3" => 48.00,
        "so2" => 64.07,
        "co" => 28.01,
        _ => return ugm3,
    };
    ugm3 * 24.45 / molar_mass
}

fn fahrenheit(celsius: f64) -> f64 {
    celsius * 9.0 / 5.0 + 32.0
}

/// Whether an ioc-json air device reports CO in mg/m³ and temperature in °F (one in three).
pub(crate) fn ioc_json_alt_units(style: usize) -> bool {
    style % 3 == 2
}

/// The payload, and how many of its values a decoder can turn into readings.
pub(crate) fn encode(frame: &Frame, sample: &Sample) -> (Vec<u8>, usize) {
    match (frame.format, sample) {
        (Format::CameraEvent, Sample::Violation(v)) => (camera(frame, v), 0),
        (_, Sample::Violation(_)) => (Vec::new(), 0),
        (Format::IocJson, Sample::Values(values)) => ioc_json(frame, values),
        (Format::Senml, Sample::Values(values)) => senml(frame, values),
        (Format::VendorFlat, Sample::Values(values)) => vendor_flat(frame, values),
        (Format::Tt10Station, Sample::Values(values)) => tt10(frame, values),
        (Format::TrafficCounter, Sample::Values(values)) => counter(frame, values),
        (Format::CameraEvent, Sample::Values(_)) => (Vec::new(), 0),
    }
}

fn readings(values: &[Value], frame: &Frame) -> usize {
    values.len() - usize::from(frame.bogus_unit.is_some())
}

fn ioc_json(frame: &Frame, values: &[Value]) -> (Vec<u8>, usize) {
    let alt = ioc_json_alt_units(frame.style);
    let mut out = Map::new();
    let mut units = Map::new();
    for (i, v) in values.iter().enumerate() {
        let x = match v.metric {
            "co" if alt => {
                units.insert("co".into(), json!("mg/m3"));
                round(v.v / 1000.0, 3)
            }
            "temperature" if alt => {
                units.insert("temperature".into(), json!("°F"));
                round(fahrenheit(v.v), 1)
            }
            _ => round(v.v, 1),
        };
        if frame.bogus_unit == Some(i) {
            units.insert(v.metric.into(), json!("grains"));
        }
        out.insert(v.metric.into(), json!(x));
    }
    let mut body = Map::new();
    body.insert("ts".into(), json!(frame.ts));
    body.insert("seq".into(), json!(frame.seq));
    body.insert("values".into(), Json::Object(out));
    if !units.is_empty() {
        body.insert("units".into(), Json::Object(units));
    }
    (
        serde_json::to_vec(&Json::Object(body)).unwrap_or_default(),
        readings(values, frame),
    )
}

fn senml(frame: &Frame, values: &[Value]) -> (Vec<u8>, usize) {
    // Half the SenML devices report NO2 and O3 in ppb, as electrochemical cells do.
    let in_ppb = frame.style % 2 == 0;
    let mut pack = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let mut record = Map::new();
        if i == 0 {
            record.insert("bn".into(), json!(format!("urn:dev:{}:", frame.device_id)));
            record.insert("bt".into(), json!(frame.ts as f64 / 1000.0));
            record.insert("bu".into(), json!("ug/m3"));
        }
        record.insert("n".into(), json!(v.metric));
        let (unit, x, t) = match v.metric {
            "temperature" => (Some("Cel"), round(v.v, 1), Some(-1)),
            "humidity" => (Some("%RH"), round(v.v, 0), None),
            "no2" | "o3" if in_ppb => (Some("ppb"), round(ppb(v.metric, v.v), 1), None),
            _ => (None, round(v.v, 1), None),
        };
        let unit = if frame.bogus_unit == Some(i) {
            Some("lb")
        } else {
            unit
        };
        if let Some(u) = unit {
            record.insert("u".into(), json!(u));
        }
        record.insert("v".into(), json!(x));
        if let Some(t) = t {
            record.insert("t".into(), json!(t));
        }
        pack.push(Json::Object(record));
    }
    (
        serde_json::to_vec(&Json::Array(pack)).unwrap_or_default(),
        readings(values, frame),
    )
}

/// The vendor's key for a metric, and how it writes the number (in the vendor's unit).
fn flat_field(v: &Value) -> Option<(&'static str, String)> {
    Some(match v.metric {
        "pm25" => ("PM2_5", comma(v.v, 1)),
        "pm10" => ("PM10", comma(v.v, 1)),
        "co" => ("CO", comma(v.v / 1000.0, 1)),
        "no2" => ("NO2", comma(ppb("no2", v.v), 0)),
        "temperature" => ("Temp", comma(v.v, 1)),
        "humidity" => ("Humi", comma(v.v, 0)),
        _ => return None,
    })
}

/// The order the vendor's firmware writes its fields in.
const FLAT_ORDER: [&str; 6] = ["PM2_5", "PM10", "CO", "NO2", "Temp", "Humi"];

fn vendor_flat(frame: &Frame, values: &[Value]) -> (Vec<u8>, usize) {
    // Written by hand: the vendor's field order is fixed and every value is a plain string.
    let mut body = format!(
        "{{\"imei\":\"{}\",\"time\":\"{}\"",
        frame.external_id.unwrap_or(frame.device_id),
        local_time(frame.ts, "%d/%m/%Y %H:%M:%S")
    );
    let mut fields: Vec<(&str, String)> = values.iter().filter_map(flat_field).collect();
    let order = |key: &str| FLAT_ORDER.iter().position(|k| *k == key);
    fields.sort_by_key(|(key, _)| order(key));
    let n = fields.len();
    for (key, text) in fields {
        body.push_str(&format!(",\"{key}\":\"{text}\""));
    }
    body.push('}');
    (body.into_bytes(), n)
}

fn tt10(frame: &Frame, values: &[Value]) -> (Vec<u8>, usize) {
    // Two dataloggers' habits: Vietnamese names, decimal commas and CRLF, or English and LF.
    let vietnamese = frame.style % 2 == 1;
    let eol = if vietnamese { "\r\n" } else { "\n" };
    let time = local_time(frame.ts, "%Y%m%d%H%M%S");
    let mut file = String::new();
    for (i, v) in values.iter().enumerate() {
        let (parameter, unit, decimals) = match v.metric {
            "ph" => ("pH", "pH", 2),
            "cod" => ("COD", "mg/L", 1),
            "tss" => ("TSS", "mg/L", 1),
            "nh4" if vietnamese => ("Amoni", "mg/L", 2),
            "nh4" => ("NH4+", "mg/L", 2),
            "temperature" => ("Temp", "oC", 1),
            "flow" if vietnamese => ("Luu luong", "m3/h", 1),
            "flow" => ("Flow", "m3/h", 1),
            _ => continue,
        };
        let unit = if frame.bogus_unit == Some(i) {
            "furlong"
        } else {
            unit
        };
        let text = if vietnamese {
            comma(v.v, decimals)
        } else {
            format!("{:.*}", decimals, v.v)
        };
        file.push_str(&format!(
            "{parameter}\t{text}\t{unit}\t{time}\t{}{eol}",
            v.status
        ));
    }
    (file.into_bytes(), readings(values, frame))
}

fn counter(frame: &Frame, values: &[Value]) -> (Vec<u8>, usize) {
    let mut lanes: Vec<Map<String, Json>> = Vec::new();
    for v in values {
        let lane = v.lane.unwrap_or(1);
        if lanes.last().and_then(|l| l["lane"].as_u64()) != Some(lane as u64) {
            let mut l = Map::new();
            l.insert("lane".into(), json!(lane));
            lanes.push(l);
        }
        let x = match v.metric {
            "vehicle_count" => json!(v.v.round() as i64),
            "avg_speed" => json!(round(v.v, 1)),
            "occupancy" => json!(round(v.v / 100.0, 3)),
            _ => continue,
        };
        if let Some(l) = lanes.last_mut() {
            let key = if v.metric == "vehicle_count" {
                "count"
            } else {
                v.metric
            };
            l.insert(key.into(), x);
        }
    }
    let body = json!({
        "sensor": frame.device_id,
        "end": frame.ts.div_euclid(1000),
        "interval_s": frame.interval_s,
        "lanes": lanes,
    });
    (serde_json::to_vec(&body).unwrap_or_default(), values.len())
}

fn camera(frame: &Frame, v: &crate::signals::Violation) -> Vec<u8> {
    let camera_id = frame.external_id.unwrap_or(frame.device_id);
    let body = json!({
        "camera_id": camera_id,
        "event_id": format!("{camera_id}-{:06}", frame.seq),
        "event_time": local_time(frame.ts, "%Y-%m-%dT%H:%M:%S+07:00"),
        "type": v.kind,
        "plate": v.plate,
        "speed_kmh": round(v.speed_kmh, 1),
        "lane": v.lane,
        "image_ref": format!("s3://evidence/{camera_id}/{:06}.jpg", frame.seq),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Breaks a payload the way a flaky uplink or a buggy firmware does: cut short, wrapped in the
/// wrong shape, or replaced by binary noise.
pub(crate) fn garble(format: Format, payload: &[u8], rng: &mut SmallRng) -> Vec<u8> {
    match rng.random_range(0..10) {
        0..5 if payload.len() >= 2 => payload[..rng.random_range(1..payload.len())].to_vec(),
        5..8 => match format {
            Format::Tt10Station => String::from_utf8_lossy(payload)
                .replace('\t', ";")
                .into_bytes(),
            _ => {
                let mut out = b"{\"data\":".to_vec();
                out.extend_from_slice(payload);
                out.push(b'}');
                out
            }
        },
        _ => {
            let n = rng.random_range(16..64);
            // 0xFF never appears in UTF-8, so the noise is never mistaken for text.
            std::iter::once(0xFF)
                .chain((1..n).map(|_| rng.random::<u8>()))
                .collect()
        }
    }
}
