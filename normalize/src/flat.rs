//! `vendor-flat`: the flat JSON of cheap air-quality gateways, decoded with no I/O.
//!
//! `{"imei":"861234567890123","time":"26/11/2026 08:05:00","PM2_5":"35,2","PM10":"61,0",
//!   "CO":"1,2","NO2":"21","Temp":"28,4","Humi":"76"}`
//!
//! A [`Profile`] says how one vendor writes it: the key of the sensor's external id (the device
//! is found by it, not by the topic), the key and format of the time (zone-less local time by
//! default, converted with `ingest.local_utc_offset`), whether numbers come as strings with a
//! decimal comma, and per vendor key the catalogue metric and the unit it is sent in (the
//! built-in `flat-gateway` profile: CO in mg/m³, NO2 in ppb). A key the profile does not know is
//! rejected alone (`unknown_metric`), as is a value that is not a number (`"NaN"`, `"-"`, `""`);
//! the rest of the message proceeds.

use std::sync::Arc;

use ioc_config::VendorProfile;
use ioc_contract::{catalogue, units, Reading, RejectCode};
use serde_json::{Map, Value};

use crate::decode::{check_size, judge, DecodeContext, Decoded, Rejection, ValueRejection};

const MIN_TS_MS: i64 = 946_684_800_000;
const MAX_TS_MS: i64 = 4_102_444_800_000;

/// How a profile's time is written.
#[derive(Debug, Clone, PartialEq)]
enum TimeFormat {
    /// Local time by a pattern of `dd MM yyyy HH mm ss` and literal characters.
    Pattern(Vec<Token>),
    EpochS,
    EpochMs,
    Rfc3339,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Day,
    Month,
    Year,
    Hour,
    Minute,
    Second,
    Literal(char),
}

/// A vendor profile ready for decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub id_key: String,
    pub id_kind: String,
    time_key: String,
    time: TimeFormat,
    decimal_comma: bool,
    /// Vendor key → (catalogue metric, unit sent).
    fields: Vec<(String, &'static catalogue::MetricSpec, String)>,
}

/// The name of the built-in profile: the issue's example gateway.
pub const DEFAULT_PROFILE: &str = "flat-gateway";

impl Profile {
    /// The built-in `flat-gateway` profile.
    pub fn flat_gateway() -> Profile {
        let field = |key: &str, metric: &str, unit: &str| ioc_config::ProfileField {
            key: key.into(),
            metric: metric.into(),
            unit: unit.into(),
        };
        Profile::from_config(&VendorProfile {
            name: DEFAULT_PROFILE.into(),
            id_key: "imei".into(),
            id_kind: "imei".into(),
            time_key: "time".into(),
            time_format: "dd/MM/yyyy HH:mm:ss".into(),
            decimal_comma: true,
            fields: vec![
                field("PM2_5", "pm25", "µg/m³"),
                field("PM10", "pm10", "µg/m³"),
                field("PM1", "pm1", "µg/m³"),
                field("CO", "co", "mg/m³"),
                field("NO2", "no2", "ppb"),
                field("SO2", "so2", "ppb"),
                field("O3", "o3", "ppb"),
                field("Temp", "temperature", "°C"),
                field("Humi", "humidity", "%"),
            ],
        })
        .expect("the built-in profile is valid")
    }

    /// Checks and compiles a configured profile.
    pub fn from_config(c: &VendorProfile) -> Result<Profile, String> {
        let time = match c.time_format.as_str() {
            "epoch_s" => TimeFormat::EpochS,
            "epoch_ms" => TimeFormat::EpochMs,
            "rfc3339" => TimeFormat::Rfc3339,
            pattern => TimeFormat::Pattern(compile_pattern(pattern)?),
        };
        let mut fields = Vec::new();
        for f in &c.fields {
            let spec = catalogue::lookup(&f.metric)
                .ok_or_else(|| format!("metric {:?} is not in the catalogue", f.metric))?;
            units::to_canonical(spec, 1.0, &f.unit)
                .map_err(|e| format!("field {:?}: {e}", f.key))?;
            fields.push((f.key.clone(), spec, f.unit.clone()));
        }
        Ok(Profile {
            name: c.name.clone(),
            id_key: c.id_key.clone(),
            id_kind: c.id_kind.clone(),
            time_key: c.time_key.clone(),
            time,
            decimal_comma: c.decimal_comma,
            fields,
        })
    }

    fn field(&self, key: &str) -> Option<&(String, &'static catalogue::MetricSpec, String)> {
        self.fields.iter().find(|(k, _, _)| k == key).or_else(|| {
            self.fields
                .iter()
                .find(|(k, _, _)| k.eq_ignore_ascii_case(key))
        })
    }
}

/// The profiles one ingest knows: the built-in one and the configured ones (a configured profile
/// named `flat-gateway` replaces the built-in one).
#[derive(Debug, Clone)]
pub struct Profiles {
    by_name: Vec<Arc<Profile>>,
}

impl Profiles {
    pub fn new(configured: &[VendorProfile]) -> Result<Profiles, String> {
        let mut by_name = vec![Arc::new(Profile::flat_gateway())];
        for c in configured {
            let p =
                Profile::from_config(c).map_err(|e| format!("vendor profile {}: {e}", c.name))?;
            by_name.retain(|q| q.name != p.name);
            by_name.push(Arc::new(p));
        }
        Ok(Profiles { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.by_name.iter().find(|p| p.name == name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.by_name.iter()
    }

    pub fn default_profile(&self) -> &Arc<Profile> {
        self.get(DEFAULT_PROFILE)
            .expect("the default profile exists")
    }
}

impl Default for Profiles {
    fn default() -> Profiles {
        Profiles::new(&[]).expect("built-in profiles")
    }
}

fn compile_pattern(p: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        let (token, len) = [
            ("yyyy", Token::Year),
            ("dd", Token::Day),
            ("MM", Token::Month),
            ("HH", Token::Hour),
            ("mm", Token::Minute),
            ("ss", Token::Second),
        ]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t))
        .map(|(t, tok)| (tok, t.len()))
        .unwrap_or_else(|| {
            let c = rest.chars().next().expect("not empty");
            (Token::Literal(c), c.len_utf8())
        });
        out.push(token);
        rest = &rest[len..];
    }
    for needed in [
        Token::Year,
        Token::Month,
        Token::Day,
        Token::Hour,
        Token::Minute,
    ] {
        if !out.contains(&needed) {
            return Err(format!(
                "time_format {p:?} needs yyyy, MM, dd, HH and mm (or epoch_s, epoch_ms, rfc3339)"
            ));
        }
    }
    Ok(out)
}

/// Local time by pattern, as UTC epoch milliseconds.
fn parse_pattern(tokens: &[Token], s: &str, offset_ms: i64) -> Option<i64> {
    let b = s.trim().as_bytes();
    let mut i = 0;
    let (mut y, mut mo, mut d, mut h, mut mi, mut se) = (0i32, 0u32, 0u32, 0u32, 0u32, 0u32);
    for t in tokens {
        let digits = |i: &mut usize, n: usize| -> Option<u32> {
            let part = b.get(*i..*i + n)?;
            if !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            *i += n;
            std::str::from_utf8(part).ok()?.parse().ok()
        };
        match t {
            Token::Year => y = digits(&mut i, 4)? as i32,
            Token::Month => mo = digits(&mut i, 2)?,
            Token::Day => d = digits(&mut i, 2)?,
            Token::Hour => h = digits(&mut i, 2)?,
            Token::Minute => mi = digits(&mut i, 2)?,
            Token::Second => se = digits(&mut i, 2)?,
            Token::Literal(c) => {
                let mut buf = [0u8; 4];
                let lit = c.encode_utf8(&mut buf).as_bytes();
                if b.get(i..i + lit.len())? != lit {
                    return None;
                }
                i += lit.len();
            }
        }
    }
    if i != b.len() {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(y, mo, d)?;
    let time = chrono::NaiveTime::from_hms_opt(h, mi, se)?;
    Some(date.and_time(time).and_utc().timestamp_millis() - offset_ms)
}

fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::new(
            RejectCode::Malformed,
            "a vendor-flat message must be a JSON object",
        )),
        Err(e) => Err(Rejection::new(
            RejectCode::Malformed,
            format!("not JSON: {e}"),
        )),
    }
}

/// The sensor's external id in a payload (`imei` by default): how ingest finds the device.
pub fn external_id(
    payload: &[u8],
    profile: &Profile,
    ctx: &DecodeContext,
) -> Result<String, Rejection> {
    check_size(payload, ctx)?;
    let body = parse_object(payload)?;
    match body.get(&profile.id_key) {
        Some(Value::String(s)) if ioc_contract::valid_external_id(s) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        None | Some(Value::Null) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!(
                "{} is missing: vendor-flat sensors are found by it",
                profile.id_key
            ),
        )),
        Some(_) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!(
                "{} must be a string of 1 to 64 printable characters",
                profile.id_key
            ),
        )),
    }
}

/// A number as a vendor writes it: a JSON number, or a string with `.` or (when the profile says
/// so) `,` as the decimal mark.
fn number(v: &Value, decimal_comma: bool) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let t = s.trim();
            if decimal_comma && t.contains(',') {
                t.replacen(',', ".", 1).parse().ok()?
            } else {
                t.parse().ok()?
            }
        }
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// Decodes one vendor-flat message of `device_id` (found by [`external_id`]).
pub fn decode_flat(
    device_id: &str,
    payload: &[u8],
    message_id: &str,
    ctx: &DecodeContext,
    profile: &Profile,
) -> Result<Decoded, Rejection> {
    check_size(payload, ctx)?;
    let body = parse_object(payload)?;
    let ts = match body.get(&profile.time_key) {
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                RejectCode::MissingTs,
                format!("{} is missing", profile.time_key),
            ))
        }
        Some(v) => {
            let ms = match (&profile.time, v) {
                (TimeFormat::Pattern(p), Value::String(s)) => {
                    parse_pattern(p, s, ctx.utc_offset_ms)
                }
                (TimeFormat::Rfc3339, Value::String(s)) => ioc_contract::time::parse_rfc3339_ms(s),
                (TimeFormat::EpochS, v) => number(v, false).map(|s| (s * 1000.0).round() as i64),
                (TimeFormat::EpochMs, v) => number(v, false).map(|ms| ms.round() as i64),
                _ => None,
            };
            match ms.filter(|ms| (MIN_TS_MS..MAX_TS_MS).contains(ms)) {
                Some(ms) => ms,
                None => {
                    return Err(Rejection::new(
                        RejectCode::InvalidTs,
                        format!(
                            "{} {} is not a time in the format of profile {} (2000..2100)",
                            profile.time_key,
                            shown(v),
                            profile.name
                        ),
                    ))
                }
            }
        }
    };
    let mut out = Decoded::default();
    for (key, raw) in &body {
        if *key == profile.id_key || *key == profile.time_key {
            continue;
        }
        let Some((_, spec, unit)) = profile.field(key) else {
            out.rejected_values.push(ValueRejection {
                metric: key.clone(),
                code: RejectCode::UnknownMetric,
                reason: format!("key {key:?} is not in vendor profile {}", profile.name),
            });
            continue;
        };
        let Some(value) = number(raw, profile.decimal_comma) else {
            out.rejected_values.push(ValueRejection {
                metric: spec.name.to_string(),
                code: RejectCode::NotANumber,
                reason: format!("value of {key} is not a number: {}", shown(raw)),
            });
            continue;
        };
        let value = match units::to_canonical(spec, value, unit) {
            Ok(v) => v,
            Err(e) => {
                out.rejected_values.push(ValueRejection {
                    metric: spec.name.to_string(),
                    code: RejectCode::UnknownUnit,
                    reason: e.to_string(),
                });
                continue;
            }
        };
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
            "the message has no values",
        ));
    }
    Ok(out)
}

/// A value in a reason, cut short.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        let mut cut = 37;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_contract::Quality;

    const NOW: i64 = 1_795_680_300_000; // 2026-11-26T08:05:00Z

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: NOW,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 1024,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    const EXAMPLE: &str = r#"{"imei":"861234567890123","time":"26/11/2026 08:05:00","PM2_5":"35,2","PM10":"61,0","CO":"1,2","NO2":"21","Temp":"28,4","Humi":"76"}"#;

    fn decode(body: &str) -> Result<Decoded, Rejection> {
        decode_flat(
            "aqf-1",
            body.as_bytes(),
            "m",
            &ctx(),
            &Profile::flat_gateway(),
        )
    }

    fn value(d: &Decoded, metric: &str) -> f64 {
        d.readings
            .iter()
            .find(|r| r.metric == metric)
            .unwrap()
            .value
    }

    #[test]
    fn the_example_decodes_with_local_time_decimal_commas_and_unit_conversions() {
        let d = decode(EXAMPLE).unwrap();
        assert!(d.rejected_values.is_empty(), "{:?}", d.rejected_values);
        assert_eq!(d.readings.len(), 6);
        // 08:05 local (+07:00) is 01:05 UTC.
        assert_eq!(d.readings[0].ts, NOW - 7 * 3_600_000);
        assert!((value(&d, "pm25") - 35.2).abs() < 1e-9);
        assert!((value(&d, "co") - 1200.0).abs() < 1e-9, "CO mg/m³ → µg/m³");
        // NO2 21 ppb × 46.01 / 24.45 = 39.52 µg/m³
        assert!((value(&d, "no2") - 21.0 * 46.01 / 24.45).abs() < 1e-9);
        assert!((value(&d, "temperature") - 28.4).abs() < 1e-9);
        assert!(d.readings.iter().all(|r| r.quality == Quality::Good));
        assert_eq!(
            external_id(EXAMPLE.as_bytes(), &Profile::flat_gateway(), &ctx()).unwrap(),
            "861234567890123"
        );
    }

    #[test]
    fn non_numbers_and_unknown_keys_are_rejected_alone() {
        let d = decode(
            r#"{"imei":"8612","time":"26/11/2026 08:05:00","PM2_5":"NaN","PM10":"-","CO":"","NO2":"21","Radon":"3"}"#,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 1);
        let mut codes = d.rejections();
        codes.sort_by_key(|c| c.0);
        assert_eq!(
            codes,
            vec![
                ("Radon", RejectCode::UnknownMetric),
                ("co", RejectCode::NotANumber),
                ("pm10", RejectCode::NotANumber),
                ("pm25", RejectCode::NotANumber),
            ]
        );
    }

    #[test]
    fn bad_times_reject_the_message_and_old_times_are_good() {
        for (body, code) in [
            (r#"{"imei":"1","PM2_5":"1"}"#, RejectCode::MissingTs),
            (
                r#"{"imei":"1","time":"2026-11-26 08:05:00","PM2_5":"1"}"#,
                RejectCode::InvalidTs,
            ),
            (
                r#"{"imei":"1","time":"31/02/2026 08:05:00","PM2_5":"1"}"#,
                RejectCode::InvalidTs,
            ),
            (
                r#"{"imei":"1","time":"26/11/2026 08:05:00 ","PM2_5":"1","x":1"#,
                RejectCode::Malformed,
            ),
            (r#"["imei"]"#, RejectCode::Malformed),
        ] {
            assert_eq!(decode(body).unwrap_err().code, code, "{body}");
        }
        // Backfill from 50 days ago flows through as good data.
        let d = decode(r#"{"imei":"1","time":"07/10/2026 08:05:00","PM2_5":"12,5"}"#).unwrap();
        assert_eq!(d.readings[0].quality, Quality::Good);
        // Tomorrow is suspect.
        let d = decode(r#"{"imei":"1","time":"27/11/2026 08:05:00","PM2_5":"12,5"}"#).unwrap();
        assert_eq!(d.readings[0].quality, Quality::Suspect);
    }

    #[test]
    fn a_missing_external_id_is_a_clear_rejection() {
        let e = external_id(br#"{"time":"x"}"#, &Profile::flat_gateway(), &ctx()).unwrap_err();
        assert_eq!(e.code, RejectCode::InvalidField);
        assert!(e.reason.contains("imei is missing"), "{}", e.reason);
    }

    #[test]
    fn configured_profiles_rename_keys_units_and_time_formats() {
        let c = VendorProfile {
            name: "acme".into(),
            id_key: "dev".into(),
            id_kind: "imei".into(),
            time_key: "t".into(),
            time_format: "epoch_s".into(),
            decimal_comma: false,
            fields: vec![ioc_config::ProfileField {
                key: "dust".into(),
                metric: "pm10".into(),
                unit: "mg/m3".into(),
            }],
        };
        let profiles = Profiles::new(&[c.clone()]).unwrap();
        let p = profiles.get("acme").unwrap();
        let d = decode_flat(
            "x",
            br#"{"dev":"7","t":1795658700,"dust":0.05}"#,
            "m",
            &ctx(),
            p,
        )
        .unwrap();
        assert_eq!(d.readings[0].ts, 1_795_658_700_000);
        assert!((d.readings[0].value - 50.0).abs() < 1e-9);
        assert!(profiles.get(DEFAULT_PROFILE).is_some());
        let mut wrong = c;
        wrong.fields[0].unit = "furlong".into();
        assert!(Profiles::new(&[wrong]).unwrap_err().contains("furlong"));
    }
}
