//! `traffic-counter`: per-lane interval counts, decoded with no I/O.
//!
//! `{"sensor": "...", "end": <epoch seconds>, "interval_s": 60,
//!   "lanes": [{"lane": 1, "count": 17, "avg_speed": 42.5, "occupancy": 0.12}, ...]}`
//!
//! One reading per lane (its channel, `lane-<n>` for a numeric lane) and metric, at the end of
//! the interval: `vehicle_count` (with `interval_s`), `avg_speed` in km/h, `occupancy` given as a
//! fraction 0–1 and stored in percent (as in FIWARE's TrafficFlowObserved). A lane without an id
//! is rejected with its values; a value that is not a number is rejected alone.

use ioc_contract::{catalogue, units, Quality, Reading, RejectCode};
use serde_json::Value;

use crate::decode::{check_size, judge, DecodeContext, Decoded, Rejection, ValueRejection};

const MIN_S: i64 = 946_684_800;
const MAX_S: i64 = 4_102_444_800;

pub fn decode_counter(
    device_id: &str,
    payload: &[u8],
    message_id: &str,
    ctx: &DecodeContext,
) -> Result<Decoded, Rejection> {
    check_size(payload, ctx)?;
    let body: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(RejectCode::Malformed, format!("not JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(Rejection::new(
            RejectCode::Malformed,
            "a traffic-counter message must be a JSON object",
        ));
    };
    let end = match body.get("end") {
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectCode::MissingTs, "end is missing"))
        }
        Some(v) => v
            .as_i64()
            .filter(|s| (MIN_S..MAX_S).contains(s))
            .ok_or_else(|| {
                Rejection::new(
                    RejectCode::InvalidTs,
                    format!("end must be integer epoch seconds in 2000..2100, found {v}"),
                )
            })?,
    };
    let ts = end * 1000;
    let interval_s = match body.get("interval_s") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|s| *s > 0.0 && s.is_finite())
                .ok_or_else(|| {
                    Rejection::new(
                        RejectCode::InvalidField,
                        format!("interval_s must be a positive number of seconds, found {v}"),
                    )
                })?,
        ),
    };
    let lanes = match body.get("lanes") {
        Some(Value::Array(lanes)) if !lanes.is_empty() => lanes,
        Some(Value::Array(_)) => {
            return Err(Rejection::new(RejectCode::NoValues, "lanes is empty"))
        }
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectCode::NoValues, "lanes is missing"))
        }
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "lanes must be an array of lane objects",
            ))
        }
    };
    let mut out = Decoded::default();
    for (i, lane) in lanes.iter().enumerate() {
        let channel = match lane.get("lane") {
            Some(Value::Number(n)) if n.as_u64().is_some() => format!("lane-{n}"),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => s.clone(),
            other => {
                out.rejected_values.push(ValueRejection {
                    metric: format!("lanes[{i}]"),
                    code: RejectCode::InvalidField,
                    reason: format!(
                        "lanes[{i}].lane must be a lane number or name, found {}",
                        other.map_or("nothing".to_string(), Value::to_string)
                    ),
                });
                continue;
            }
        };
        for (key, metric, unit) in [
            ("count", "vehicle_count", "vehicles"),
            ("avg_speed", "avg_speed", "km/h"),
            ("occupancy", "occupancy", "fraction"),
        ] {
            let Some(raw) = lane.get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            let spec = catalogue::lookup(metric).expect("counter metrics are in the catalogue");
            let Some(value) = raw.as_f64().filter(|v| raw.is_number() && v.is_finite()) else {
                out.rejected_values.push(ValueRejection {
                    metric: metric.to_string(),
                    code: RejectCode::NotANumber,
                    reason: format!("{channel} {key} must be a number, found {raw}"),
                });
                continue;
            };
            let value = units::to_canonical(spec, value, unit).expect("counter units convert");
            let (quality, quality_reason) = if metric == "vehicle_count" && value.fract() != 0.0 {
                (
                    Quality::Bad,
                    format!("{value} vehicles is not a whole count"),
                )
            } else {
                judge(spec, value, ts, ctx)
            };
            out.readings.push(Reading {
                device_id: device_id.to_string(),
                channel: channel.clone(),
                metric: metric.to_string(),
                ts,
                value,
                unit: spec.unit.to_string(),
                interval_s: (metric == "vehicle_count").then_some(interval_s).flatten(),
                quality,
                quality_reason,
                received_at: ctx.received_at,
                message_id: message_id.to_string(),
            });
        }
    }
    if out.readings.is_empty() && out.rejected_values.is_empty() {
        return Err(Rejection::new(
            RejectCode::NoValues,
            "no lane has a count, avg_speed or occupancy",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: 1_795_658_400_000,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 65_536,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    fn decode(body: &str) -> Result<Decoded, Rejection> {
        decode_counter("tc-001", body.as_bytes(), "m", &ctx())
    }

    #[test]
    fn one_reading_per_lane_and_metric_with_occupancy_in_percent() {
        let d = decode(
            r#"{"sensor":"TC-77","end":1795658340,"interval_s":60,
                "lanes":[{"lane":1,"count":17,"avg_speed":42.5,"occupancy":0.12},
                         {"lane":"lane-2","count":9,"avg_speed":38.0,"occupancy":0.05}]}"#,
        )
        .unwrap();
        let got: Vec<(&str, &str, f64, Option<f64>)> = d
            .readings
            .iter()
            .map(|r| (r.channel.as_str(), r.metric.as_str(), r.value, r.interval_s))
            .collect();
        assert_eq!(
            got,
            vec![
                ("lane-1", "vehicle_count", 17.0, Some(60.0)),
                ("lane-1", "avg_speed", 42.5, None),
                ("lane-1", "occupancy", 12.0, None),
                ("lane-2", "vehicle_count", 9.0, Some(60.0)),
                ("lane-2", "avg_speed", 38.0, None),
                ("lane-2", "occupancy", 5.0, None),
            ]
        );
        assert!(d.readings.iter().all(|r| r.ts == 1_795_658_340_000));
        assert!(d.readings.iter().all(|r| r.quality == Quality::Good));
    }

    #[test]
    fn bad_lanes_and_values_are_rejected_alone() {
        let d = decode(
            r#"{"end":1795658340,"lanes":[{"count":3},{"lane":3,"count":"many","occupancy":1.7},
                {"lane":4,"count":2.5}]}"#,
        )
        .unwrap();
        let codes: Vec<RejectCode> = d.rejected_values.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            vec![RejectCode::InvalidField, RejectCode::NotANumber]
        );
        let q: Vec<(&str, Quality)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.quality))
            .collect();
        // 170 % occupancy and half a vehicle are kept, flagged bad.
        assert_eq!(
            q,
            vec![("occupancy", Quality::Bad), ("vehicle_count", Quality::Bad)]
        );
    }

    #[test]
    fn the_future_is_suspect_backfill_is_good_and_text_values_are_rejected_alone() {
        let now_s = ctx().received_at / 1000;
        let ahead = decode(&format!(
            r#"{{"end":{},"lanes":[{{"lane":1,"count":4}}]}}"#,
            now_s + 3_600
        ))
        .unwrap();
        assert_eq!(ahead.readings[0].quality, Quality::Suspect);
        assert!(ahead.readings[0]
            .quality_reason
            .contains("ahead of receive time"));
        // A counter's backlog after a 50-day outage is good data.
        let backfill = decode(&format!(
            r#"{{"end":{},"lanes":[{{"lane":1,"count":4,"avg_speed":"NaN","occupancy":"-"}}]}}"#,
            now_s - 50 * 86_400
        ))
        .unwrap();
        assert_eq!(backfill.readings.len(), 1);
        assert_eq!(backfill.readings[0].quality, Quality::Good);
        assert_eq!(
            backfill.rejections(),
            vec![
                ("avg_speed", RejectCode::NotANumber),
                ("occupancy", RejectCode::NotANumber)
            ]
        );
    }

    #[test]
    fn whole_message_rejections() {
        for (body, code) in [
            ("[]", RejectCode::Malformed),
            ("nope", RejectCode::Malformed),
            (r#"{"lanes":[{"lane":1,"count":1}]}"#, RejectCode::MissingTs),
            (
                r#"{"end":1795658340000,"lanes":[{"lane":1,"count":1}]}"#,
                RejectCode::InvalidTs,
            ),
            (
                r#"{"end":1795658340,"interval_s":0,"lanes":[{"lane":1}]}"#,
                RejectCode::InvalidField,
            ),
            (r#"{"end":1795658340,"lanes":[]}"#, RejectCode::NoValues),
            (
                r#"{"end":1795658340,"lanes":[{"lane":1}]}"#,
                RejectCode::NoValues,
            ),
        ] {
            assert_eq!(decode(body).unwrap_err().code, code, "{body}");
        }
    }
}
