//! `camera-event`: AI traffic camera violations, decoded with no I/O, and the plate pseudonyms
//! made right after.
//!
//! `{"camera_id":"CAM-BMT-001","event_id":"CAM-BMT-001-000042","event_time":"2026-11-26T08:05:00+07:00",
//!   "type":"red_light","plate":"47A-123.45","speed_kmh":52.0,"lane":2,"image_ref":"s3://..."}`
//!
//! `event_time` is RFC 3339 with an offset, epoch milliseconds, or a zone-less local
//! `yyyy-MM-ddTHH:mm:ss` (`ingest.local_utc_offset`). The type must be one the product knows
//! ([`CAMERA_EVENT_TYPES`]). A licence plate is personal data (DOMAIN.md §7): no reason written
//! here ever quotes the plate or the image reference, and [`PlateKey`] replaces the plate with a
//! keyed pseudonym before anything leaves ingest; the clear plate goes only to the evidence
//! topic.

use hmac::{Hmac, Mac};
use ioc_contract::{RejectCode, CAMERA_EVENT_TYPES};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::decode::{check_size, DecodeContext, Rejection};

const MIN_TS_MS: i64 = 946_684_800_000;
const MAX_TS_MS: i64 = 4_102_444_800_000;
const MAX_ID_LEN: usize = 128;

/// One decoded camera event, plate in clear: only [`crate::Ingestor`] sees it, and it splits it
/// into the pseudonymized event and the evidence record.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraEvent {
    pub event_id: String,
    pub camera_id: String,
    pub ts: i64,
    pub kind: String,
    pub plate: String,
    pub speed_kmh: Option<f64>,
    pub lane: Option<i64>,
    pub image_ref: String,
    /// Time further than `max_future_skew` ahead of receipt: kept, flagged.
    pub suspect_reason: String,
}

fn string_field<'a>(
    body: &'a Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<Option<&'a str>, Rejection> {
    match body.get(key) {
        Some(Value::String(s))
            if !s.trim().is_empty()
                && s.len() <= MAX_ID_LEN
                && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s))
        }
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("{key} is missing"),
        )),
        // The value is not quoted: it may be a plate.
        Some(_) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("{key} must be a non-empty string of at most {MAX_ID_LEN} characters"),
        )),
    }
}

/// Decodes one camera message.
pub fn decode_camera(payload: &[u8], ctx: &DecodeContext) -> Result<CameraEvent, Rejection> {
    check_size(payload, ctx)?;
    let body = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(Rejection::new(
                RejectCode::Malformed,
                "a camera event must be a JSON object",
            ))
        }
        // serde_json's syntax errors give a line and column, never the text.
        Err(e) => {
            return Err(Rejection::new(
                RejectCode::Malformed,
                format!(
                    "not JSON ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            ))
        }
    };
    let camera_id = string_field(&body, "camera_id", true)?.unwrap_or_default();
    let event_id = string_field(&body, "event_id", true)?.unwrap_or_default();
    let kind = string_field(&body, "type", true)?.unwrap_or_default();
    if !CAMERA_EVENT_TYPES.contains(&kind) {
        return Err(Rejection::new(
            RejectCode::InvalidField,
            format!("type is not one of {}", CAMERA_EVENT_TYPES.join(", ")),
        ));
    }
    let plate = string_field(&body, "plate", true)?.unwrap_or_default();
    if normalize_plate(plate).len() < 4 {
        return Err(Rejection::new(
            RejectCode::InvalidField,
            "plate must have at least 4 letters or digits",
        ));
    }
    let image_ref = string_field(&body, "image_ref", false)?.unwrap_or_default();
    let ts = match body.get("event_time") {
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                RejectCode::MissingTs,
                "event_time is missing",
            ))
        }
        Some(Value::String(s)) => ioc_contract::time::parse_rfc3339_ms(s)
            .or_else(|| local_iso(s, ctx.utc_offset_ms))
            .ok_or_else(|| {
                Rejection::new(
                    RejectCode::InvalidTs,
                    // Not quoted: a camera message's strings may hold a plate.
                    "event_time is not RFC 3339 (like 2026-11-26T08:05:00+07:00)",
                )
            })?,
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTs,
                "event_time must be integer epoch milliseconds",
            )
        })?,
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidTs,
                "event_time must be a string or epoch milliseconds",
            ))
        }
    };
    if !(MIN_TS_MS..MAX_TS_MS).contains(&ts) {
        return Err(Rejection::new(
            RejectCode::InvalidTs,
            format!("event_time {ts} is outside 2000..2100"),
        ));
    }
    let speed_kmh = match body.get("speed_kmh") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(s) if (0.0..=400.0).contains(&s) => Some(s),
            _ => {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    "speed_kmh must be a number from 0 to 400",
                ))
            }
        },
    };
    let lane = match body.get("lane") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(l) if (0..=64).contains(&l) => Some(l),
            _ => {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    "lane must be an integer from 0 to 64",
                ))
            }
        },
    };
    let future_by = ts - ctx.received_at;
    let suspect_reason = if future_by > ctx.max_future_skew_ms {
        format!("event_time {} s ahead of receive time", future_by / 1000)
    } else {
        String::new()
    };
    Ok(CameraEvent {
        event_id: event_id.to_string(),
        camera_id: camera_id.to_string(),
        ts,
        kind: kind.to_string(),
        plate: plate.to_string(),
        speed_kmh,
        lane,
        image_ref: image_ref.to_string(),
        suspect_reason,
    })
}

/// `yyyy-MM-ddTHH:mm:ss` (or with a space) without a zone: local time.
fn local_iso(s: &str, offset_ms: i64) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S"))
        .ok()?;
    Some(t.and_utc().timestamp_millis() - offset_ms)
}

/// A plate reduced to what identifies it: upper-case letters and digits (`47A-123.45` and
/// `47a 12345` are one plate).
pub fn normalize_plate(plate: &str) -> String {
    plate
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

/// The key of plate pseudonyms (`ingest.plate_secret`). Debug never shows it.
#[derive(Clone)]
pub struct PlateKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for PlateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlateKey(..)")
    }
}

impl PlateKey {
    /// None for an empty secret: camera events are then quarantined, never stored in clear.
    pub fn new(secret: &str) -> Option<PlateKey> {
        if secret.is_empty() {
            return None;
        }
        Some(PlateKey {
            mac: Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key"),
        })
    }

    /// `p_` and 32 hex digits (128 bits of HMAC-SHA256 of the normalized plate): the same plate
    /// always gives the same pseudonym under one key, and nobody without the key can reverse or
    /// recompute it.
    pub fn pseudonym(&self, plate: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(normalize_plate(plate).as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(34);
        out.push_str("p_");
        for b in &digest[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_680_300_000; // 2026-11-26T08:05:00Z

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: NOW,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 4096,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    const EXAMPLE: &str = r#"{"camera_id":"CAM-BMT-001","event_id":"CAM-BMT-001-000042","event_time":"2026-11-26T15:04:00+07:00","type":"red_light","plate":"47A-123.45","speed_kmh":52.0,"lane":2,"image_ref":"s3://evidence/42.jpg"}"#;

    #[test]
    fn the_example_decodes() {
        let e = decode_camera(EXAMPLE.as_bytes(), &ctx()).unwrap();
        assert_eq!(e.event_id, "CAM-BMT-001-000042");
        assert_eq!(e.ts, NOW - 60_000);
        assert_eq!(
            (e.kind.as_str(), e.lane, e.speed_kmh),
            ("red_light", Some(2), Some(52.0))
        );
        assert_eq!(e.plate, "47A-123.45");
        assert!(e.suspect_reason.is_empty());
    }

    #[test]
    fn rejections_never_quote_the_plate() {
        let plate = "47A-999.99";
        let cases = [
            format!(
                r#"{{"camera_id":"c","event_id":"e","event_time":"2026-11-26T15:04:00+07:00","type":"jaywalking","plate":"{plate}"}}"#
            ),
            format!(
                r#"{{"camera_id":"c","event_id":"e","event_time":"x {plate}","type":"red_light","plate":"{plate}"}}"#
            ),
            format!(
                r#"{{"camera_id":"c","event_id":"e","event_time":"2026-11-26T15:04:00+07:00","type":"red_light","plate":["{plate}"]}}"#
            ),
            format!(
                r#"{{"camera_id":"c","event_id":"e","event_time":"2026-11-26T15:04:00+07:00","type":"red_light","plate":"{plate}","speed_kmh":"{plate}"}}"#
            ),
            format!(r#"{{"camera_id":"c","event_id":"e","plate":"{plate}""#),
            format!(
                r#"{{"camera_id":"{plate}{plate}{plate}{plate}{plate}{plate}{plate}{plate}{plate}{plate}{plate}{plate}{plate}","event_id":"e"}}"#
            ),
        ];
        for body in &cases {
            let r = decode_camera(body.as_bytes(), &ctx()).unwrap_err();
            assert!(!r.reason.contains("999"), "{} leaks: {}", body, r.reason);
        }
    }

    #[test]
    fn missing_fields_and_times_are_specific() {
        let without = |key: &str| {
            let mut v: Map<String, Value> = serde_json::from_str(EXAMPLE).unwrap();
            v.remove(key);
            decode_camera(&serde_json::to_vec(&v).unwrap(), &ctx()).unwrap_err()
        };
        assert_eq!(without("event_time").code, RejectCode::MissingTs);
        assert_eq!(without("event_id").reason, "event_id is missing");
        assert_eq!(without("plate").reason, "plate is missing");
        let local = EXAMPLE.replace("2026-11-26T15:04:00+07:00", "2026-11-26T15:04:00");
        assert_eq!(
            decode_camera(local.as_bytes(), &ctx()).unwrap().ts,
            NOW - 60_000
        );
        let future = EXAMPLE.replace("2026-11-26T15:04", "2026-11-27T15:04");
        assert!(!decode_camera(future.as_bytes(), &ctx())
            .unwrap()
            .suspect_reason
            .is_empty());
    }

    #[test]
    fn every_violation_type_decodes_and_epoch_milliseconds_are_a_time() {
        for kind in ioc_contract::CAMERA_EVENT_TYPES {
            let body = EXAMPLE.replace("red_light", kind);
            assert_eq!(decode_camera(body.as_bytes(), &ctx()).unwrap().kind, kind);
        }
        let ms = EXAMPLE.replace(
            r#""2026-11-26T15:04:00+07:00""#,
            &(NOW - 60_000).to_string(),
        );
        let e = decode_camera(ms.as_bytes(), &ctx()).unwrap();
        assert_eq!(e.ts, NOW - 60_000);
        assert!(e.suspect_reason.is_empty());
        // Backfill from a camera that was offline for 50 days is good, not suspect.
        let old = EXAMPLE.replace(
            r#""2026-11-26T15:04:00+07:00""#,
            &(NOW - 50 * 86_400_000).to_string(),
        );
        assert!(decode_camera(old.as_bytes(), &ctx())
            .unwrap()
            .suspect_reason
            .is_empty());
    }

    #[test]
    fn pseudonyms_are_keyed_stable_and_ignore_punctuation() {
        let k = PlateKey::new("secret-1").unwrap();
        let p = k.pseudonym("47A-123.45");
        assert_eq!(p, k.pseudonym("47a 12345"));
        assert_ne!(p, k.pseudonym("47A-123.46"));
        assert_ne!(
            p,
            PlateKey::new("secret-2").unwrap().pseudonym("47A-123.45")
        );
        assert_eq!(p.len(), 34);
        assert!(!p.contains("47A"));
        assert!(PlateKey::new("").is_none());
        assert_eq!(format!("{k:?}"), "PlateKey(..)");
    }
}
