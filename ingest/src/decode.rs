//! Device protocol v1, decoded with no I/O: bytes and a context in, readings and rejections out.
//!
//! Topic `ioc/v1/devices/{device_id}/telemetry`, body
//! `{"ts": RFC 3339 with offset | epoch ms, "seq"?: u64, "channel"?: string, "interval_s"?: number,
//!   "values": {"<metric>": number, ...}, "units"?: {"<metric>": "<unit>", ...}}`.
//!
//! A value without an entry in `units` is in the catalogue's unit; one with an entry is converted
//! from that unit (`contract::units`), or rejected alone if the unit is unknown or cannot be
//! converted.
//!
//! A message that does not parse, lacks a valid `ts`, or has an invalid field is rejected
//! whole. A value that is not a number or names an unknown metric is rejected alone. A value
//! outside its physical range is kept with quality `bad`; a time too far in the future is kept
//! with quality `suspect`.

use ioc_contract::{catalogue, units};
use ioc_contract::{Quality, Reading, RejectCode};
use serde_json::{Map, Value};

/// What the decoder needs besides the bytes.
#[derive(Debug, Clone)]
pub struct DecodeContext {
    pub received_at: i64,
    pub max_future_skew_ms: i64,
    pub max_payload_bytes: usize,
    /// Offset of the deployment's local time from UTC (`ingest.local_utc_offset`), for payloads
    /// that carry zone-less local times.
    pub utc_offset_ms: i64,
}

/// A whole message rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: RejectCode,
    pub reason: String,
}

impl Rejection {
    pub(crate) fn new(code: RejectCode, reason: impl Into<String>) -> Rejection {
        Rejection {
            code,
            reason: reason.into(),
        }
    }
}

/// One value rejected while the rest of its message proceeds.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueRejection {
    pub metric: String,
    pub code: RejectCode,
    pub reason: String,
}

/// What a v1 message became.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    pub rejected_values: Vec<ValueRejection>,
}

/// Earliest and latest accepted event times (2000-01-01 and 2100-01-01 UTC): outside them a
/// timestamp is a unit mistake (seconds sent as milliseconds, say), not a time.
const MIN_TS_MS: i64 = 946_684_800_000;
const MAX_TS_MS: i64 = 4_102_444_800_000;
const MAX_CHANNEL_LEN: usize = 64;

/// Decodes a v1 telemetry body from `device_id` (taken from the topic by the caller).
pub fn decode_v1(
    device_id: &str,
    payload: &[u8],
    message_id: &str,
    ctx: &DecodeContext,
) -> Result<Decoded, Rejection> {
    check_size(payload, ctx)?;
    let body: Map<String, Value> = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(Rejection::new(
                RejectCode::Malformed,
                format!("body must be a JSON object, found {}", kind(&other)),
            ))
        }
        Err(e) => {
            return Err(Rejection::new(
                RejectCode::Malformed,
                format!("body is not JSON: {e}"),
            ))
        }
    };

    let ts = parse_ts(body.get("ts"))?;
    if let Some(seq) = body.get("seq") {
        if !seq.is_u64() {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("seq must be an unsigned integer, found {}", kind(seq)),
            ));
        }
    }
    let channel = match body.get("channel") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s))
            if s.len() <= MAX_CHANNEL_LEN && !s.chars().any(char::is_control) =>
        {
            s.clone()
        }
        Some(Value::String(_)) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!(
                    "channel must be at most {MAX_CHANNEL_LEN} bytes with no control characters"
                ),
            ))
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("channel must be a string, found {}", kind(other)),
            ))
        }
    };
    let interval_s = match body.get("interval_s") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v > 0.0 => Some(v),
            _ => {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    format!("interval_s must be a positive number, found {n}"),
                ))
            }
        },
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("interval_s must be a number, found {}", kind(other)),
            ))
        }
    };
    let values = match body.get("values") {
        Some(Value::Object(values)) => values,
        None => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "values is missing",
            ))
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("values must be an object, found {}", kind(other)),
            ))
        }
    };
    if values.is_empty() {
        return Err(Rejection::new(RejectCode::NoValues, "values is empty"));
    }
    let units = match body.get("units") {
        None | Some(Value::Null) => None,
        Some(Value::Object(units)) => {
            if let Some((metric, unit)) = units.iter().find(|(_, u)| !u.is_string()) {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    format!("units.{metric} must be a string, found {}", kind(unit)),
                ));
            }
            Some(units)
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("units must be an object, found {}", kind(other)),
            ))
        }
    };

    let mut out = Decoded {
        readings: Vec::with_capacity(values.len()),
        rejected_values: Vec::new(),
    };
    for (metric, raw) in values {
        let Some(spec) = catalogue::lookup(metric) else {
            out.rejected_values.push(ValueRejection {
                metric: metric.clone(),
                code: RejectCode::UnknownMetric,
                reason: format!("unknown metric {metric:?}: not in the catalogue"),
            });
            continue;
        };
        let value = match raw.as_f64() {
            Some(v) if raw.is_number() && v.is_finite() => v,
            _ => {
                out.rejected_values.push(ValueRejection {
                    metric: metric.clone(),
                    code: RejectCode::NotANumber,
                    reason: format!("value of {metric} must be a number, found {}", short(raw)),
                });
                continue;
            }
        };
        let value = match units.and_then(|u| u.get(metric)).and_then(Value::as_str) {
            None => value,
            Some(unit) => match units::to_canonical(spec, value, unit) {
                Ok(v) => v,
                Err(e) => {
                    out.rejected_values.push(ValueRejection {
                        metric: metric.clone(),
                        code: RejectCode::UnknownUnit,
                        reason: e.to_string(),
                    });
                    continue;
                }
            },
        };
        let (quality, quality_reason) = judge(spec, value, ts, ctx);
        out.readings.push(Reading {
            device_id: device_id.to_string(),
            channel: channel.clone(),
            metric: spec.name.to_string(),
            ts,
            value,
            unit: spec.unit.to_string(),
            interval_s,
            quality,
            quality_reason,
            received_at: ctx.received_at,
            message_id: message_id.to_string(),
        });
    }
    Ok(out)
}

/// The size limit every decoder applies first (`ingest.max_payload_bytes`).
pub(crate) fn check_size(payload: &[u8], ctx: &DecodeContext) -> Result<(), Rejection> {
    if payload.len() > ctx.max_payload_bytes {
        return Err(Rejection::new(
            RejectCode::PayloadTooLarge,
            format!(
                "payload is {} bytes; the limit is {}",
                payload.len(),
                ctx.max_payload_bytes
            ),
        ));
    }
    Ok(())
}

/// The quality every decoder gives a value at `ts`: outside the metric's physical range it is
/// `bad`, more than `max_future_skew` ahead of receipt `suspect`, else `good`; with the reason.
pub(crate) fn judge(
    spec: &catalogue::MetricSpec,
    value: f64,
    ts: i64,
    ctx: &DecodeContext,
) -> (Quality, String) {
    let future_by = ts - ctx.received_at;
    if !spec.in_range(value) {
        (
            Quality::Bad,
            format!(
                "{value} outside physical range [{}, {}] {}",
                spec.min, spec.max, spec.unit
            ),
        )
    } else if future_by > ctx.max_future_skew_ms {
        (
            Quality::Suspect,
            format!("timestamp {} s ahead of receive time", future_by / 1000),
        )
    } else {
        (Quality::Good, String::new())
    }
}

fn parse_ts(ts: Option<&Value>) -> Result<i64, Rejection> {
    let ms = match ts {
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectCode::MissingTs, "ts is missing"))
        }
        Some(Value::String(s)) => ioc_contract::time::parse_rfc3339_ms(s).ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTs,
                format!("ts {s:?} is not RFC 3339 with an offset (like 2026-11-26T08:05:00+07:00)"),
            )
        })?,
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTs,
                format!("ts {n} must be integer epoch milliseconds"),
            )
        })?,
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidTs,
                format!("ts must be a string or an integer, found {}", kind(other)),
            ))
        }
    };
    if !(MIN_TS_MS..MAX_TS_MS).contains(&ms) {
        return Err(Rejection::new(
            RejectCode::InvalidTs,
            format!("ts {ms} is outside 2000..2100 as epoch milliseconds (seconds sent as milliseconds?)"),
        ));
    }
    Ok(ms)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value shown in a reason, cut short so a hostile payload cannot bloat the dead-letter topic.
fn short(v: &Value) -> String {
    let mut s = format!("{} {v}", kind(v));
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// A 64-bit FNV-1a hash of the topic and payload, as 16 hex digits: the message id. A
/// redelivered message gets the same id.
pub fn message_id(topic: &str, payload: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes().iter().chain([0u8].iter()).chain(payload) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_680_300_000; // 2026-11-26T08:05:00Z

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: NOW,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 1024,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    fn decode(body: &str) -> Result<Decoded, Rejection> {
        decode_v1("aq-001", body.as_bytes(), "m1", &ctx())
    }

    #[test]
    fn decodes_rfc3339_with_offset_to_utc_ms() {
        let d = decode(
            r#"{"ts":"2026-11-26T15:04:00+07:00","values":{"pm25":35.2,"temperature":28.4}}"#,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 2);
        let pm = d.readings.iter().find(|r| r.metric == "pm25").unwrap();
        assert_eq!(pm.ts, NOW - 60_000);
        assert_eq!(pm.unit, "µg/m³");
        assert_eq!(pm.quality, Quality::Good);
        assert_eq!(pm.channel, "");
        assert_eq!(pm.received_at, NOW);
        assert_eq!(pm.message_id, "m1");
    }

    #[test]
    fn decodes_epoch_ms_channel_and_interval() {
        let d = decode(r#"{"ts":1795680240000,"seq":7,"channel":"lane-1","interval_s":60,"values":{"vehicle_count":12}}"#)
            .unwrap();
        let r = &d.readings[0];
        assert_eq!(
            (r.ts, r.channel.as_str(), r.interval_s, r.value),
            (1_795_680_240_000, "lane-1", Some(60.0), 12.0)
        );
    }

    #[test]
    fn rejects_whole_message_with_a_specific_reason() {
        let cases = [
            ("not json", RejectCode::Malformed, "not JSON"),
            ("[1,2]", RejectCode::Malformed, "found an array"),
            (r#"{"values":{"pm25":1}}"#, RejectCode::MissingTs, "missing"),
            (
                r#"{"ts":"yesterday","values":{"pm25":1}}"#,
                RejectCode::InvalidTs,
                "RFC 3339",
            ),
            (
                r#"{"ts":"2026-11-26T08:05:00","values":{"pm25":1}}"#,
                RejectCode::InvalidTs,
                "offset",
            ),
            (
                r#"{"ts":1795680240,"values":{"pm25":1}}"#,
                RejectCode::InvalidTs,
                "seconds sent as milliseconds",
            ),
            (
                r#"{"ts":1.5e12,"values":{"pm25":1}}"#,
                RejectCode::InvalidTs,
                "integer",
            ),
            (
                r#"{"ts":1795680240000,"seq":-1,"values":{"pm25":1}}"#,
                RejectCode::InvalidField,
                "seq",
            ),
            (
                r#"{"ts":1795680240000,"channel":3,"values":{"pm25":1}}"#,
                RejectCode::InvalidField,
                "channel",
            ),
            (
                r#"{"ts":1795680240000,"interval_s":0,"values":{"pm25":1}}"#,
                RejectCode::InvalidField,
                "interval_s",
            ),
            (
                r#"{"ts":1795680240000}"#,
                RejectCode::InvalidField,
                "values is missing",
            ),
            (
                r#"{"ts":1795680240000,"values":[]}"#,
                RejectCode::InvalidField,
                "values must be an object",
            ),
            (
                r#"{"ts":1795680240000,"values":{}}"#,
                RejectCode::NoValues,
                "empty",
            ),
        ];
        for (body, code, needle) in cases {
            let err = decode(body).expect_err(body);
            assert_eq!(err.code, code, "{body}");
            assert!(err.reason.contains(needle), "{body}: {}", err.reason);
        }
    }

    #[test]
    fn oversized_payload_is_rejected_before_parsing() {
        let body = format!(
            r#"{{"ts":1795680240000,"values":{{"pm25":1}},"pad":"{}"}}"#,
            "x".repeat(2000)
        );
        assert_eq!(decode(&body).unwrap_err().code, RejectCode::PayloadTooLarge);
    }

    #[test]
    fn bad_values_are_rejected_alone() {
        let d =
            decode(r#"{"ts":1795680240000,"values":{"pm25":"35,2","PM10":61,"no2":21,"co":null}}"#)
                .unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].metric, "no2");
        let mut codes: Vec<(String, RejectCode)> = d
            .rejected_values
            .iter()
            .map(|r| (r.metric.clone(), r.code))
            .collect();
        codes.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            codes,
            vec![
                ("PM10".into(), RejectCode::UnknownMetric),
                ("co".into(), RejectCode::NotANumber),
                ("pm25".into(), RejectCode::NotANumber)
            ]
        );
        assert!(d
            .rejected_values
            .iter()
            .any(|r| r.reason.contains("\"35,2\"")));
    }

    #[test]
    fn out_of_range_is_kept_bad_and_future_is_suspect() {
        let d = decode(r#"{"ts":1795680240000,"values":{"humidity":140,"ph":7}}"#).unwrap();
        let h = d.readings.iter().find(|r| r.metric == "humidity").unwrap();
        assert_eq!(h.quality, Quality::Bad);
        assert!(
            h.quality_reason
                .contains("outside physical range [0, 100] %"),
            "{}",
            h.quality_reason
        );
        let body = format!(r#"{{"ts":{},"values":{{"pm25":10}}}}"#, NOW + 3_600_000);
        let d = decode(&body).unwrap();
        assert_eq!(d.readings[0].quality, Quality::Suspect);
        assert!(d.readings[0].quality_reason.contains("3600 s ahead"));
        // Old readings are not suspect for being old: backfill is good data.
        let d = decode(r#"{"ts":"2026-10-01T00:00:00Z","values":{"pm25":10}}"#).unwrap();
        assert_eq!(d.readings[0].quality, Quality::Good);
    }

    #[test]
    fn a_units_map_converts_its_values_and_rejects_unknown_units_alone() {
        let d = decode(
            r#"{"ts":1795680240000,"values":{"co":1.2,"temperature":82.4,"pm25":9,"no2":21},
                "units":{"co":"mg/m3","temperature":"°F","no2":"furlongs","o3":"ppb"}}"#,
        )
        .unwrap();
        let v = |m: &str| d.readings.iter().find(|r| r.metric == m).map(|r| r.value);
        assert!((v("co").unwrap() - 1200.0).abs() < 1e-9);
        assert!((v("temperature").unwrap() - 28.0).abs() < 1e-9);
        assert_eq!(v("pm25"), Some(9.0));
        assert_eq!(v("no2"), None);
        assert_eq!(d.rejected_values.len(), 1);
        assert_eq!(d.rejected_values[0].code, RejectCode::UnknownUnit);
        assert!(d.rejected_values[0].reason.contains("furlongs"));
        for bad in [
            r#"{"ts":1795680240000,"values":{"co":1},"units":"mg/m3"}"#,
            r#"{"ts":1795680240000,"values":{"co":1},"units":{"co":1}}"#,
        ] {
            assert_eq!(
                decode(bad).unwrap_err().code,
                RejectCode::InvalidField,
                "{bad}"
            );
        }
    }

    #[test]
    fn message_id_is_stable_and_depends_on_topic_and_bytes() {
        assert_eq!(message_id("a", b"x"), message_id("a", b"x"));
        assert_ne!(message_id("a", b"x"), message_id("b", b"x"));
        assert_ne!(message_id("ax", b""), message_id("a", b"x"));
        assert_eq!(message_id("a", b"x").len(), 16);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: mutate a valid body byte by byte.
        let valid =
            br#"{"ts":"2026-11-26T15:04:00+07:00","channel":"in","values":{"pm25":35.2,"ph":7}}"#;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut body = valid.to_vec();
            let i = (state as usize) % body.len();
            body[i] = (state >> 32) as u8;
            if state % 3 == 0 {
                body.truncate(i);
            }
            let _ = decode_v1("d", &body, "m", &ctx());
        }
    }
}
