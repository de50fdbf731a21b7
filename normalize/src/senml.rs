//! `senml`: RFC 8428 SenML JSON, decoded with no I/O.
//!
//! A pack is an array of records. Base fields (`bn`, `bt`, `bu`) apply to the records after
//! them until replaced; a record's name is `bn` + `n`, its time `bt` + `t` (seconds; a result
//! below 2^28 is relative to now, per RFC 8428 §4.5.3), its unit `u`, else `bu`. The metric is
//! the name's last segment after `:` or `/` (`urn:dev:ow:aq-001:pm25` → `pm25`), matched against
//! the catalogue; units go through `contract::units` (SenML's `Cel`, `%RH`, `/` included). Only
//! numeric values (`v`) become readings; a record with a string, boolean or data value, an
//! unknown name or an unknown unit is rejected alone.

use ioc_contract::{catalogue, units, Reading, RejectCode};
use serde_json::Value;

use crate::decode::{check_size, judge, DecodeContext, Decoded, Rejection, ValueRejection};

/// RFC 8428 §4.5.3: times below 2^28 seconds are relative to the current time.
const RELATIVE_LIMIT_S: f64 = 268_435_456.0;
const MIN_TS_MS: i64 = 946_684_800_000;
const MAX_TS_MS: i64 = 4_102_444_800_000;

/// A SenML unit symbol in the spelling `contract::units` knows.
fn unit_of(senml: &str) -> &str {
    match senml {
        "Cel" => "°C",
        "%RH" => "%",
        "/" => "fraction",
        other => other,
    }
}

pub fn decode_senml(
    device_id: &str,
    payload: &[u8],
    message_id: &str,
    ctx: &DecodeContext,
) -> Result<Decoded, Rejection> {
    check_size(payload, ctx)?;
    let pack: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(RejectCode::Malformed, format!("not JSON: {e}")))?;
    let Value::Array(records) = pack else {
        return Err(Rejection::new(
            RejectCode::Malformed,
            "a SenML pack must be a JSON array of records",
        ));
    };
    if records.is_empty() {
        return Err(Rejection::new(
            RejectCode::NoValues,
            "the SenML pack is empty",
        ));
    }
    let mut base_name = String::new();
    let mut base_time = 0.0f64;
    let mut base_unit: Option<String> = None;
    let mut out = Decoded::default();
    for (i, record) in records.iter().enumerate() {
        let Value::Object(r) = record else {
            return Err(Rejection::new(
                RejectCode::Malformed,
                format!("record {i} is not an object"),
            ));
        };
        let reject = |out: &mut Decoded, metric: &str, code: RejectCode, reason: String| {
            out.rejected_values.push(ValueRejection {
                metric: metric.to_string(),
                code,
                reason: format!("record {i}: {reason}"),
            })
        };
        if let Some(bn) = r.get("bn") {
            let Some(bn) = bn.as_str() else {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    format!("record {i}: bn must be a string, found {bn}"),
                ));
            };
            base_name = bn.to_string();
        }
        if let Some(bt) = r.get("bt") {
            match bt.as_f64().filter(|t| t.is_finite()) {
                Some(t) => base_time = t,
                None => {
                    return Err(Rejection::new(
                        RejectCode::InvalidTs,
                        format!("record {i}: bt must be a number of seconds, found {bt}"),
                    ))
                }
            }
        }
        if let Some(bu) = r.get("bu") {
            // A base unit that is not a unit's name would leave the records after it to a guess.
            let Some(bu) = bu.as_str() else {
                return Err(Rejection::new(
                    RejectCode::UnknownUnit,
                    format!("record {i}: bu must be a unit's name (a string), found {bu}"),
                ));
            };
            base_unit = Some(bu.to_string());
        }
        let has_value = ["v", "vs", "vb", "vd", "s"]
            .iter()
            .any(|k| r.contains_key(*k));
        if !has_value {
            continue; // a base-only record
        }
        let name = match r.get("n") {
            None => base_name.clone(),
            Some(Value::String(n)) => format!("{base_name}{n}"),
            Some(n) => {
                reject(
                    &mut out,
                    "",
                    RejectCode::UnknownMetric,
                    format!("n must be a string, found {n}"),
                );
                continue;
            }
        };
        let short = name
            .rsplit([':', '/'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let Some(spec) = catalogue::lookup(&short) else {
            reject(
                &mut out,
                &short,
                RejectCode::UnknownMetric,
                format!("name {name:?} names no catalogue metric"),
            );
            continue;
        };
        let Some(value) = r.get("v").and_then(Value::as_f64).filter(|v| v.is_finite()) else {
            reject(
                &mut out,
                spec.name,
                RejectCode::NotANumber,
                format!("{name} has no numeric value (v)"),
            );
            continue;
        };
        let unit = match r.get("u") {
            None => base_unit.as_deref(),
            Some(Value::String(u)) => Some(u.as_str()),
            Some(u) => {
                reject(
                    &mut out,
                    spec.name,
                    RejectCode::UnknownUnit,
                    format!("{name}: u must be a unit's name (a string), found {u}"),
                );
                continue;
            }
        };
        let value = match unit {
            // Neither `u` nor `bu`: RFC 8428 leaves the unit to the name; here the name is a
            // catalogue metric, whose unit is meant (the README says so to device makers).
            None => value,
            Some(u) => match units::to_canonical(spec, value, unit_of(u)) {
                Ok(v) => v,
                Err(e) => {
                    reject(&mut out, spec.name, RejectCode::UnknownUnit, e.to_string());
                    continue;
                }
            },
        };
        let t = base_time
            + match r.get("t") {
                None => 0.0,
                Some(t) => match t.as_f64().filter(|t| t.is_finite()) {
                    Some(t) => t,
                    None => {
                        reject(
                            &mut out,
                            spec.name,
                            RejectCode::InvalidTs,
                            format!("t must be a number of seconds, found {t}"),
                        );
                        continue;
                    }
                },
            };
        let ts = if t < RELATIVE_LIMIT_S {
            ctx.received_at + (t * 1000.0).round() as i64
        } else {
            (t * 1000.0).round() as i64
        };
        if !(MIN_TS_MS..MAX_TS_MS).contains(&ts) {
            reject(
                &mut out,
                spec.name,
                RejectCode::InvalidTs,
                format!("time {t} s is outside 2000..2100"),
            );
            continue;
        }
        let (quality, quality_reason) = judge(spec, value, ts, ctx);
        out.readings.push(Reading {
            device_id: device_id.to_string(),
            channel: String::new(),
            metric: spec.name.to_string(),
            ts,
            value,
            unit: spec.unit.to_string(),
            interval_s: None,
            quality,
            quality_reason,
            received_at: ctx.received_at,
            message_id: message_id.to_string(),
        });
    }
    if out.readings.is_empty() && out.rejected_values.is_empty() {
        return Err(Rejection::new(
            RejectCode::NoValues,
            "no record has a value",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_contract::Quality;

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: 1_795_658_400_000,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 65_536,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    fn decode(body: &str) -> Result<Decoded, Rejection> {
        decode_senml("aq-001", body.as_bytes(), "m", &ctx())
    }

    #[test]
    fn base_name_time_and_unit_apply_to_following_records() {
        let d = decode(
            r#"[{"bn":"urn:dev:ow:aq-001:","bt":1795658340,"bu":"ug/m3","n":"pm25","v":35.2},
                {"n":"pm10","v":61,"t":-60},
                {"n":"temperature","u":"Cel","v":28.4},
                {"n":"humidity","u":"%RH","v":76},
                {"n":"co","u":"mg/m3","v":1.2}]"#,
        )
        .unwrap();
        assert!(d.rejected_values.is_empty(), "{:?}", d.rejected_values);
        let got: Vec<(&str, f64, i64)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value, r.ts))
            .collect();
        assert_eq!(
            got,
            vec![
                ("pm25", 35.2, 1_795_658_340_000),
                ("pm10", 61.0, 1_795_658_280_000),
                ("temperature", 28.4, 1_795_658_340_000),
                ("humidity", 76.0, 1_795_658_340_000),
                ("co", 1200.0, 1_795_658_340_000),
            ]
        );
    }

    #[test]
    fn small_times_are_relative_to_now() {
        let d = decode(r#"[{"n":"pm25","u":"ug/m3","v":10,"t":-30}]"#).unwrap();
        assert_eq!(d.readings[0].ts, ctx().received_at - 30_000);
    }

    #[test]
    fn records_that_cannot_be_readings_are_rejected_alone() {
        let d = decode(
            r#"[{"bn":"aq-001/","bt":1795658340,"n":"pm25","v":12},
                {"n":"status","vs":"ok"},
                {"n":"no2","vs":"high"},
                {"n":"so2","u":"furlongs","v":3},
                {"n":"pm10","u":"ppb","v":3}]"#,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 1);
        let codes: Vec<RejectCode> = d.rejected_values.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            vec![
                RejectCode::UnknownMetric,
                RejectCode::NotANumber,
                RejectCode::UnknownUnit,
                RejectCode::UnknownUnit,
            ]
        );
    }

    #[test]
    fn units_and_names_that_are_not_strings_are_rejections_never_guesses() {
        // A `u` that is not a string rejects that value only (before, the catalogue unit was
        // assumed); `n` likewise.
        let d = decode(
            r#"[{"bn":"aq-001/","bt":1795658340,"n":"pm25","v":12},
                {"n":"co","u":1,"v":1.2},
                {"n":7,"v":3}]"#,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 1);
        let got: Vec<(RejectCode, &str)> = d
            .rejected_values
            .iter()
            .map(|r| (r.code, r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    RejectCode::UnknownUnit,
                    "record 1: aq-001/co: u must be a unit's name (a string), found 1"
                ),
                (
                    RejectCode::UnknownMetric,
                    "record 2: n must be a string, found 7"
                ),
            ]
        );
        // A base unit or base name that is not a string would mislead every record after it.
        let e = decode(r#"[{"bu":null,"n":"co","v":1.2}]"#).unwrap_err();
        assert_eq!(e.code, RejectCode::UnknownUnit);
        assert_eq!(
            e.reason,
            "record 0: bu must be a unit's name (a string), found null"
        );
        let e = decode(r#"[{"bn":5,"n":"co","v":1.2}]"#).unwrap_err();
        assert_eq!(e.code, RejectCode::InvalidField);
    }

    #[test]
    fn the_future_is_suspect_backfill_is_good_and_text_values_are_rejected_alone() {
        let now_s = ctx().received_at / 1000;
        let body = format!(
            r#"[{{"bt":{now_s},"n":"pm25","v":12,"t":3600}},
                {{"n":"pm10","v":30,"t":-4320000}},
                {{"n":"no2","v":"NaN"}},
                {{"n":"o3","vs":"-"}}]"#
        );
        let d = decode(&body).unwrap();
        let got: Vec<(&str, Quality)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.quality))
            .collect();
        assert_eq!(
            got,
            vec![("pm25", Quality::Suspect), ("pm10", Quality::Good)]
        );
        assert!(
            d.readings[0]
                .quality_reason
                .contains("ahead of receive time"),
            "{:?}",
            d.readings[0]
        );
        assert_eq!(
            d.readings[1].ts,
            ctx().received_at - 50 * 86_400_000,
            "50 days back"
        );
        assert_eq!(
            d.rejections(),
            vec![
                ("no2", RejectCode::NotANumber),
                ("o3", RejectCode::NotANumber)
            ]
        );
    }

    #[test]
    fn whole_pack_rejections() {
        for (body, code) in [
            ("{}", RejectCode::Malformed),
            ("[1]", RejectCode::Malformed),
            ("[]", RejectCode::NoValues),
            (r#"[{"bn":"x"}]"#, RejectCode::NoValues),
            (
                r#"[{"bt":"yesterday","n":"pm25","v":1}]"#,
                RejectCode::InvalidTs,
            ),
        ] {
            assert_eq!(decode(body).unwrap_err().code, code, "{body}");
        }
    }
}
