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
//!
//! The body is parsed in one pass straight into what the checks need ([`Body`]), borrowing
//! strings from the payload: no `serde_json::Value` tree, no allocation per field. It keeps the
//! semantics of parsing into a `Value` first: the whole body must be valid JSON (unknown members
//! too, numbers in range, nesting at most 128 deep); a member given twice counts once, the last;
//! values are decoded in metric-name order. Hand-written readers ([`fast`]) take the common
//! cases: a valid message of the common shape goes straight to its values (`fast::message`), one
//! with something to reject is read into the same [`Body`] (`fast::body`); anything else is left
//! to the serde parse, so every rejection and its message are serde_json's.

use std::borrow::Cow;
use std::fmt;

use ioc_contract::catalogue::{self, MetricSpec};
use ioc_contract::units;
use ioc_contract::{Quality, Reading, RejectCode};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

mod fast;

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

#[cfg(test)]
impl Decoded {
    /// The rejected values as (metric, code), in the decoder's order: what the tests compare.
    pub(crate) fn rejections(&self) -> Vec<(&str, RejectCode)> {
        self.rejected_values
            .iter()
            .map(|r| (r.metric.as_str(), r.code))
            .collect()
    }
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
    let m = decode_v1_borrowed(payload, ctx)?;
    let readings = m
        .accepted
        .iter()
        .map(|a| Reading {
            device_id: device_id.to_string(),
            channel: m.channel.to_string(),
            metric: a.spec.name.to_string(),
            ts: m.ts,
            value: a.value,
            unit: a.spec.unit.to_string(),
            interval_s: m.interval_s,
            quality: a.quality,
            quality_reason: a.quality_reason.clone(),
            received_at: ctx.received_at,
            message_id: message_id.to_string(),
        })
        .collect();
    Ok(Decoded {
        readings,
        rejected_values: m.rejected_values,
    })
}

/// A v1 message decoded, normalized and validated, its strings borrowed from the payload: what
/// [`decode_v1`] turns into [`Reading`]s and ingest writes straight to the readings topic.
#[derive(Debug, Clone, PartialEq)]
pub struct V1Message<'a> {
    pub ts: i64,
    pub channel: Cow<'a, str>,
    pub interval_s: Option<f64>,
    /// In metric-name order.
    pub accepted: Vec<AcceptedValue<'a>>,
    pub rejected_values: Vec<ValueRejection>,
}

/// One value of a v1 message that becomes a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedValue<'a> {
    pub spec: &'static MetricSpec,
    /// In the catalogue's unit.
    pub value: f64,
    /// `value` as serde_json writes it, when the payload wrote it so and it was not converted:
    /// the readings record copies it rather than formatting the float again.
    pub json: Option<&'a str>,
    pub quality: Quality,
    pub quality_reason: String,
}

/// [`decode_v1`] without building owned readings.
pub fn decode_v1_borrowed<'a>(
    payload: &'a [u8],
    ctx: &DecodeContext,
) -> Result<V1Message<'a>, Rejection> {
    check_size(payload, ctx)?;
    // The common case, a valid message of the common shape, straight to its values.
    if let Some(m) = fast::message(payload, ctx) {
        return Ok(m);
    }
    // The common shape without serde; what it does not vouch for, serde_json decides.
    let body = match fast::body(payload) {
        Some(body) => body,
        None => serde_body(payload)?,
    };
    checked(body, ctx)
}

/// A body as the serde parse reads it, or why it is malformed.
fn serde_body(payload: &[u8]) -> Result<Body<'_>, Rejection> {
    match serde_json::from_slice::<Parsed<'_>>(payload) {
        Ok(Parsed::Object(body)) => Ok(body),
        Ok(Parsed::Other(kind)) => Err(Rejection::new(
            RejectCode::Malformed,
            format!("body must be a JSON object, found {kind}"),
        )),
        Err(e) => Err(Rejection::new(
            RejectCode::Malformed,
            format!("body is not JSON: {e}"),
        )),
    }
}

/// The checks, normalization and validation of a read body.
fn checked<'a>(body: Body<'a>, ctx: &DecodeContext) -> Result<V1Message<'a>, Rejection> {
    let ts = parse_ts(body.ts.as_ref())?;
    if let Some(seq) = &body.seq {
        check_seq(seq)?;
    }
    let channel = channel_of(body.channel)?;
    let interval_s = interval_of(body.interval_s.as_ref())?;
    let values = match body.values {
        Some(Members::Object(values)) => values,
        None => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                "values is missing",
            ))
        }
        Some(Members::Other(other)) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("values must be an object, found {}", other.kind()),
            ))
        }
    };
    if values.is_empty() {
        return Err(Rejection::new(RejectCode::NoValues, "values is empty"));
    }
    let units = match body.units {
        None | Some(Members::Other(Raw::Null)) => None,
        Some(Members::Object(units)) => {
            if let Some((metric, unit)) = units.iter().find(|(_, u)| !matches!(u, Raw::String(_))) {
                return Err(Rejection::new(
                    RejectCode::InvalidField,
                    format!("units.{metric} must be a string, found {}", unit.kind()),
                ));
            }
            Some(units)
        }
        Some(Members::Other(other)) => {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!("units must be an object, found {}", other.kind()),
            ))
        }
    };

    let mut out = V1Message {
        ts,
        channel,
        interval_s,
        accepted: Vec::with_capacity(values.len()),
        rejected_values: Vec::new(),
    };
    for (metric, raw) in &values {
        let Some(spec) = catalogue::lookup(metric) else {
            out.rejected_values.push(ValueRejection {
                metric: metric.to_string(),
                code: RejectCode::UnknownMetric,
                reason: format!("unknown metric {metric:?}: not in the catalogue"),
            });
            continue;
        };
        let (value, json) = match raw {
            ValueMember::Number(v) => (*v, None),
            ValueMember::Written(v, text) => (*v, Some(*text)),
            ValueMember::Other(raw) => {
                out.rejected_values.push(ValueRejection {
                    metric: metric.to_string(),
                    code: RejectCode::NotANumber,
                    reason: format!("value of {metric} must be a number, found {}", short(raw)),
                });
                continue;
            }
        };
        let unit = units.as_ref().and_then(|u| {
            u.iter().find_map(|(m, unit)| match unit {
                Raw::String(unit) if m == metric => Some(unit),
                _ => None,
            })
        });
        let (value, json) = match unit {
            None => (value, json),
            Some(unit) => match units::to_canonical(spec, value, unit) {
                Ok(v) => (v, None),
                Err(e) => {
                    out.rejected_values.push(ValueRejection {
                        metric: metric.to_string(),
                        code: RejectCode::UnknownUnit,
                        reason: e.to_string(),
                    });
                    continue;
                }
            },
        };
        let (quality, quality_reason) = judge(spec, value, ts, ctx);
        out.accepted.push(AcceptedValue {
            spec,
            value,
            json,
            quality,
            quality_reason,
        });
    }
    Ok(out)
}

/// `seq`: an unsigned integer.
fn check_seq(seq: &Raw<'_>) -> Result<(), Rejection> {
    if matches!(seq, Raw::Number(n) if n.is_u64()) {
        return Ok(());
    }
    Err(Rejection::new(
        RejectCode::InvalidField,
        format!("seq must be an unsigned integer, found {}", seq.kind()),
    ))
}

/// `channel`: at most [`MAX_CHANNEL_LEN`] bytes without control characters; "" when absent or
/// null.
fn channel_of(channel: Option<Raw<'_>>) -> Result<Cow<'_, str>, Rejection> {
    match channel {
        None | Some(Raw::Null) => Ok(Cow::Borrowed("")),
        Some(Raw::String(s)) => {
            // C0 controls are single bytes; C1 and DEL are at 0x7f and up, so an ASCII channel
            // is checked without decoding characters.
            let control =
                s.bytes().any(|b| b < 0x20 || b >= 0x7f) && s.chars().any(char::is_control);
            if s.len() <= MAX_CHANNEL_LEN && !control {
                Ok(s)
            } else {
                Err(Rejection::new(
                    RejectCode::InvalidField,
                    format!(
                        "channel must be at most {MAX_CHANNEL_LEN} bytes with no control characters"
                    ),
                ))
            }
        }
        Some(other) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("channel must be a string, found {}", other.kind()),
        )),
    }
}

/// `interval_s`: a positive number, or none when absent or null.
fn interval_of(interval_s: Option<&Raw<'_>>) -> Result<Option<f64>, Rejection> {
    match interval_s {
        None | Some(Raw::Null) => Ok(None),
        Some(Raw::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
            _ => Err(Rejection::new(
                RejectCode::InvalidField,
                format!("interval_s must be a positive number, found {n}"),
            )),
        },
        Some(other) => Err(Rejection::new(
            RejectCode::InvalidField,
            format!("interval_s must be a number, found {}", other.kind()),
        )),
    }
}

/// A member of a v1 body as the checks see it. Strings are borrowed unless they hold escapes;
/// arrays and objects, which the checks only name, are validated and dropped.
#[derive(Debug)]
enum Raw<'a> {
    Null,
    Bool,
    Number(Number),
    String(Cow<'a, str>),
    Array,
    Object,
}

impl Raw<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Bool => "a boolean",
            Raw::Number(_) => "a number",
            Raw::String(_) => "a string",
            Raw::Array => "an array",
            Raw::Object => "an object",
        }
    }
}

/// A body's top level: an object, or what else it was.
enum Parsed<'a> {
    Object(Body<'a>),
    Other(&'static str),
}

/// The members of a v1 body the checks read; the last one wins where a key repeats, as in a
/// `Value` map.
#[derive(Debug, Default)]
struct Body<'a> {
    ts: Option<Raw<'a>>,
    seq: Option<Raw<'a>>,
    channel: Option<Raw<'a>>,
    interval_s: Option<Raw<'a>>,
    values: Option<Members<'a, ValueMember<'a>>>,
    units: Option<Members<'a, Raw<'a>>>,
}

/// An object member read entry by entry (`values`, `units`), or what else it was.
#[derive(Debug)]
enum Members<'a, T> {
    /// Sorted by key, one entry per key (the last given): the order and the duplicate rule of
    /// a `Value` map.
    Object(Vec<(Cow<'a, str>, T)>),
    Other(Raw<'a>),
}

/// One entry of `values`. Anything but a number is kept as a `Value`: it is rare, and its
/// reason quotes it.
#[derive(Debug)]
enum ValueMember<'a> {
    Number(f64),
    /// A number, and its text in the payload, which is what serde_json writes for it.
    Written(f64, &'a str),
    Other(Value),
}

/// Any JSON value, checked as a `Value` parse would check it, and dropped.
struct Skip;

/// An object key, borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

/// The top-level keys the checks read.
enum Field {
    Ts,
    Seq,
    Channel,
    IntervalS,
    Values,
    Units,
    Other,
}

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
                Skip.visit_seq_of(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
                Skip.visit_map_of(map)
            }
        }
        // Not `deserialize_ignored_any`: serde_json skips those without checking numbers'
        // range, and a body a `Value` parse refuses must stay refused.
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, s: &str) -> Result<Field, E> {
                Ok(match s {
                    "ts" => Field::Ts,
                    "seq" => Field::Seq,
                    "channel" => Field::Channel,
                    "interval_s" => Field::IntervalS,
                    "values" => Field::Values,
                    "units" => Field::Units,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads any JSON value as a [`Raw`].
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        // As `Value` does: a float JSON cannot hold becomes null (the parser never makes one).
        Ok(Number::from_f64(v).map_or(Raw::Null, Raw::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::String(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Raw<'de>, E> {
        Ok(Raw::String(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Raw<'de>, A::Error> {
        Skip.visit_seq_of(seq).map(|_| Raw::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Raw<'de>, A::Error> {
        Skip.visit_map_of(map).map(|_| Raw::Object)
    }
}

impl Skip {
    /// Checks and drops every element of an array.
    fn visit_seq_of<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    /// Checks and drops every member of an object.
    fn visit_map_of<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

impl<'de> Deserialize<'de> for ValueMember<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ValueMember<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueMember<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<ValueMember<'de>, E> {
                Ok(ValueMember::Other(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ValueMember<'de>, E> {
                Ok(ValueMember::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ValueMember<'de>, E> {
                Ok(ValueMember::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ValueMember<'de>, E> {
                Ok(if v.is_finite() {
                    ValueMember::Number(v)
                } else {
                    ValueMember::Other(Value::Null)
                })
            }
            fn visit_str<E>(self, s: &str) -> Result<ValueMember<'de>, E> {
                Ok(ValueMember::Other(Value::String(s.to_string())))
            }
            fn visit_unit<E>(self) -> Result<ValueMember<'de>, E> {
                Ok(ValueMember::Other(Value::Null))
            }
            fn visit_none<E>(self) -> Result<ValueMember<'de>, E> {
                Ok(ValueMember::Other(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ValueMember<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(ValueMember::Other(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ValueMember<'de>, A::Error> {
                let mut members = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    members.insert(k, v);
                }
                Ok(ValueMember::Other(Value::Object(members)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Members<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members<'de, T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Members<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                RawVisitor.visit_bool(v).map(Members::Other)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                RawVisitor.visit_i64(v).map(Members::Other)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                RawVisitor.visit_u64(v).map(Members::Other)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                RawVisitor.visit_f64(v).map(Members::Other)
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                RawVisitor.visit_borrowed_str(s).map(Members::Other)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                RawVisitor.visit_str(s).map(Members::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Members::Other(Raw::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Members::Other(Raw::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                RawVisitor.visit_seq(seq).map(Members::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(Cow<'de, str>, T)> = Vec::with_capacity(8);
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v = map.next_value::<T>()?;
                    entries.push((k, v));
                }
                Ok(Members::Object(sorted_unique(entries)))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
impl Body<'_> {
    /// The body as the serde parse reads it, which keeps no number's text.
    fn forget_written(mut self) -> Self {
        if let Some(Members::Object(entries)) = &mut self.values {
            for (_, v) in entries {
                if let ValueMember::Written(number, _) = *v {
                    *v = ValueMember::Number(number);
                }
            }
        }
        self
    }
}

/// `a.cmp(b)`, byte by byte.
#[inline]
fn lexicographic(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// A `Value` map's order and duplicate rule: sorted by key, the last given wins.
fn sorted_unique<'a, T>(mut entries: Vec<(Cow<'a, str>, T)>) -> Vec<(Cow<'a, str>, T)> {
    // Stable: of equal keys, the last given is last. Keys are a few bytes: compared inline
    // rather than by a memcmp call each.
    entries.sort_by(|a, b| lexicographic(a.0.as_bytes(), b.0.as_bytes()));
    entries.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(&mut later.1, &mut kept.1);
        }
        same
    });
    entries
}

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Parsed<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parsed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("a number"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other(if v.is_finite() {
                    "a number"
                } else {
                    "null"
                }))
            }
            fn visit_str<E>(self, _: &str) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("a string"))
            }
            fn visit_unit<E>(self) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("null"))
            }
            fn visit_none<E>(self) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parsed<'de>, A::Error> {
                Skip.visit_seq_of(seq).map(|_| Parsed::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
                let mut body = Body::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Ts => body.ts = Some(map.next_value()?),
                        Field::Seq => body.seq = Some(map.next_value()?),
                        Field::Channel => body.channel = Some(map.next_value()?),
                        Field::IntervalS => body.interval_s = Some(map.next_value()?),
                        Field::Values => body.values = Some(map.next_value()?),
                        Field::Units => body.units = Some(map.next_value()?),
                        Field::Other => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Parsed::Object(body))
            }
        }
        d.deserialize_any(V)
    }
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

fn parse_ts(ts: Option<&Raw<'_>>) -> Result<i64, Rejection> {
    let ms = match ts {
        None | Some(Raw::Null) => {
            return Err(Rejection::new(RejectCode::MissingTs, "ts is missing"))
        }
        Some(Raw::String(s)) => ioc_contract::time::parse_rfc3339_ms(s).ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTs,
                format!("ts {s:?} is not RFC 3339 with an offset (like 2026-11-26T08:05:00+07:00)"),
            )
        })?,
        Some(Raw::Number(n)) => n.as_i64().ok_or_else(|| {
            Rejection::new(
                RejectCode::InvalidTs,
                format!("ts {n} must be integer epoch milliseconds"),
            )
        })?,
        Some(other) => {
            return Err(Rejection::new(
                RejectCode::InvalidTs,
                format!("ts must be a string or an integer, found {}", other.kind()),
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

/// The message id: XXH3-64 of the payload, seeded with the XXH3-64 of the topic, as 16 hex
/// digits. A redelivered message gets the same id. (XXH3 is specified and widely implemented,
/// so an operator can recompute an id outside the product; it reads 8 bytes at a time, where
/// the FNV-1a of earlier versions waited on one multiplication per byte.)
pub fn message_id(topic: &str, payload: &[u8]) -> String {
    MessageId::of(topic, payload).as_str().to_string()
}

/// [`message_id`] on the stack: ingest needs it for every message, and as a `String` only for
/// dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId([u8; 16]);

impl MessageId {
    pub fn of(topic: &str, payload: &[u8]) -> MessageId {
        use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
        let h = xxh3_64_with_seed(payload, xxh3_64(topic.as_bytes()));
        let mut hex = [0u8; 16];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(h >> (60 - 4 * i)) as usize & 0xf];
        }
        MessageId(hex)
    }

    pub fn as_str(&self) -> &str {
        // Sixteen ASCII hex digits.
        std::str::from_utf8(&self.0).expect("hex digits are UTF-8")
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
        let mut codes = d.rejections();
        codes.sort_by_key(|c| c.0);
        assert_eq!(
            codes,
            vec![
                ("PM10", RejectCode::UnknownMetric),
                ("co", RejectCode::NotANumber),
                ("pm25", RejectCode::NotANumber)
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
        // What another XXH3 implementation computes (Python's `xxhash`: the payload's
        // xxh3_64 seeded with the topic's): an id can be recomputed outside the product, and
        // ids of messages already on the bus stay what they were.
        assert_eq!(
            message_id(
                "ioc/v1/devices/aq-001/telemetry",
                br#"{"ts":1795680240000,"values":{"pm25":35.2}}"#
            ),
            "0ae5e223c2483892"
        );
        assert_eq!(message_id("", b""), "412f1275e10017f3");
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

    /// The decoder as it was before the borrowing parse: through a `serde_json::Value`. The
    /// oracle the new parser must agree with.
    mod value_oracle {
        use super::super::{
            check_size, judge, kind, short, DecodeContext, Decoded, Rejection, ValueRejection,
            MAX_CHANNEL_LEN, MAX_TS_MS, MIN_TS_MS,
        };
        use ioc_contract::{catalogue, units, Reading, RejectCode};
        use serde_json::{Map, Value};

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
                            reason: format!(
                                "value of {metric} must be a number, found {}",
                                short(raw)
                            ),
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
    }

    /// Payloads the mutations start from: every rule of the format, escapes, repeated keys.
    const SEEDS: &[&str] = &[
        r#"{"ts":1795680240000,"seq":42,"channel":"","values":{"pm25":35.2,"pm10":61.0,"no2":21.4,"co":1180.5}}"#,
        r#"{"ts":"2026-11-26T15:04:00+07:00","seq":7,"channel":"lane-1","interval_s":60,"values":{"vehicle_count":12,"avg_speed":41.5}}"#,
        r#"{"ts":1795680240000,"values":{"co":1.2,"temperature":82.4,"pm25":9,"no2":21},"units":{"co":"mg/m3","temperature":"\u00b0F","no2":"furlongs","o3":"ppb"}}"#,
        r#"{"ts":1795680240000,"values":{"pm25":"35,2","PM10":61,"no2":21,"co":null,"ph":[1,{"a":2}],"do":{"x":[]}}}"#,
        r#"{"ts":1795680240000,"ts":"2026-11-26T08:00:00Z","values":{"pm25":1,"pm25":2},"values":{"humidity":140,"humidity":50,"ph":7}}"#,
        r#"{"t\u0073":1795680240000,"ch\u0061nnel":"in\"let","val\u0075es":{"pm\u00325":3e1,"no\u0032":-0,"so2":1E2},"fw":{"v":[1,2,{"z":null}]},"n":18446744073709551616}"#,
        r#"{"ts":1795680240000,"interval_s":0.5,"seq":18446744073709551615,"units":null,"channel":null,"values":{"noise":55.5}}"#,
        r#"{"ts":1795683900000,"values":{"pm25":10,"wind_dir":361},"units":{"pm25":"ug/m3","wind_dir":"deg"}}"#,
    ];

    #[test]
    fn the_borrowing_parser_agrees_with_the_value_oracle_on_mutated_payloads() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let alphabet = b"{}[]\t,:\"\\0123456789eE.-+uanlsrt ";
        let tokens: [&[u8]; 12] = [
            b"\"ts\"",
            b"\"values\"",
            b"\"units\"",
            b"\"seq\"",
            b"\"channel\"",
            b"\"interval_s\"",
            b"\"pm25\"",
            b"null",
            b"\"\\u00e9\"",
            b"1e400",
            b"[[[",
            b"\"mg/m3\"",
        ];
        let (mut compared, mut accepted, mut partly, mut rejected) = (0, 0, 0, 0);
        for seed in SEEDS {
            let expected = value_oracle::decode_v1("aq-001", seed.as_bytes(), "m1", &ctx());
            assert!(expected.is_ok(), "{seed}: {expected:?}");
            assert_eq!(decode(seed), expected, "{seed}");
            for _ in 0..1500 {
                let mut body = seed.as_bytes().to_vec();
                for _ in 0..(next() % 3 + 1) {
                    let i = next() as usize % (body.len() + 1);
                    match next() % 4 {
                        0 if i < body.len() => body[i] = next() as u8,
                        1 if i < body.len() => {
                            body.remove(i);
                        }
                        2 => body.insert(i, alphabet[next() as usize % alphabet.len()]),
                        _ => {
                            let t = tokens[next() as usize % tokens.len()];
                            body.splice(i..i, t.iter().copied());
                        }
                    }
                }
                let old = value_oracle::decode_v1("aq-001", &body, "m1", &ctx());
                let new = decode_v1("aq-001", &body, "m1", &ctx());
                assert_eq!(new, old, "{}", String::from_utf8_lossy(&body));
                match &new {
                    Ok(d) if !d.rejected_values.is_empty() => partly += 1,
                    Ok(_) => accepted += 1,
                    Err(_) => rejected += 1,
                }
                compared += 1;
            }
        }
        assert_eq!(compared, SEEDS.len() * 1500);
        // The mutations reach every outcome, not only parse errors.
        assert!(
            accepted > 500 && partly > 500 && rejected > 5000,
            "{accepted} accepted, {partly} partly, {rejected} rejected"
        );
    }

    #[test]
    fn the_fast_reader_reads_what_the_serde_parse_reads_wherever_it_answers() {
        let seeds: &[&str] = &[
            SEEDS[0],
            SEEDS[1],
            SEEDS[6],
            SEEDS[7],
            r#" { "ts" : 1795680240000 , "site":"xéy", "ok":true, "no":false, "n":null,
              "values" : { "pm25" : -0 , "pm10":1E+2, "no2":0.000001, "co":1e22, "so2":1e23,
              "o3":9007199254740993.5, "noise":18446744073709551615, "ph":-9223372036854775808,
              "do":-9223372036854775809, "tss":0e5, "cod":-0.0, "flow":12345678901234567890,
              "nh4":4.35e-3, "bod5":9007199254740992.0, "color":1E-22 } } "#,
            r#"{"ts":"2026-11-26T15:04:00+07:00","channel":"roof","interval_s":60,"rssi":-71,"batt_v":3.71,"values":{"pm25":35.2,"pm10":61.0,"no2":21.4,"co":1.1805},"units":{"co":"mg/m3"}}"#,
            r#"{"ts":1795680240000,"values":5,"units":"x","seq":-1,"channel":7,"interval_s":"s"}"#,
            r#"{"ts":1795680240000,"values":{},"units":{"a":1,"b":null,"c":true}}"#,
        ];
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let alphabet = b"{}[]\t\n ,:\"\\0123456789eE.-+nultrsfa\x01\xc3\xa9\xff";
        let (mut read, mut left) = (0, 0);
        for seed in seeds {
            for round in 0..3000 {
                let mut body = seed.as_bytes().to_vec();
                if round > 0 {
                    for _ in 0..(next() % 3 + 1) {
                        let i = next() as usize % (body.len() + 1);
                        let b = alphabet[next() as usize % alphabet.len()];
                        match next() % 3 {
                            0 if i < body.len() => body[i] = b,
                            1 if i < body.len() => {
                                body.remove(i);
                            }
                            _ => body.insert(i, b),
                        }
                    }
                }
                let Some(fast) = fast::body(&body) else {
                    left += 1;
                    continue;
                };
                // A number's text is kept only where serde_json writes the number so.
                if let Some(Members::Object(entries)) = &fast.values {
                    for (_, v) in entries {
                        if let ValueMember::Written(v, text) = v {
                            assert_eq!(&serde_json::to_string(v).unwrap(), text);
                        }
                    }
                }
                let fast = fast.forget_written();
                match serde_json::from_slice::<Parsed>(&body) {
                    Ok(Parsed::Object(slow)) => assert_eq!(
                        format!("{fast:?}"),
                        format!("{slow:?}"),
                        "{}",
                        String::from_utf8_lossy(&body)
                    ),
                    _ => panic!(
                        "the fast reader read what serde refuses: {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
                read += 1;
            }
        }
        // Both ways are taken often.
        assert!(
            read > 2_000 && left > 2_000,
            "{read} read, {left} left to serde"
        );
    }

    /// A seeded xorshift64 generator: the mutation tests' randomness, the same every run.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// What a v1 body becomes by the serde parse and the checks: the way that shares no code
    /// with [`fast::message`]'s reading.
    fn the_general_way(payload: &[u8]) -> Result<V1Message<'_>, Rejection> {
        checked(serde_body(payload)?, &ctx())
    }

    /// A number's text is kept only where serde_json writes the number so; then forgotten, as
    /// the serde parse keeps none.
    fn forget_json(mut m: V1Message<'_>) -> V1Message<'_> {
        for a in &mut m.accepted {
            if let Some(text) = a.json.take() {
                assert_eq!(serde_json::to_string(&a.value).unwrap(), text);
            }
        }
        m
    }

    #[test]
    fn the_fast_message_is_what_the_general_way_makes_wherever_it_answers() {
        let seeds: &[&str] = &[
            SEEDS[0],
            SEEDS[1],
            r#"{"ts":1795680240000,"interval_s":0.5,"seq":4294967296,"units":null,"channel":null,"values":{"noise":55.5}}"#,
            SEEDS[7],
            r#"{"ts":"2026-11-26T15:04:00+07:00","seq":40,"site":"bmt-01","channel":"roof","interval_s":60,"rssi":-71,"batt_v":3.71,"ok":true,"no":false,"n":null,"values":{"pm25":35.2,"pm10":61.0,"no2":21.4,"co":1.1805},"units":{"co":"mg/m3"}}"#,
            r#" { "ts" : 1795680240000 , "channel" : "inlet" , "interval_s" : null , "units" : null ,
              "values" : { "temperature" : 82.4 , "humidity" : 140 , "pm25" : -0 , "no2" : 1E+2 ,
              "co" : 0.000001 , "o3" : 9007199254740992 , "noise" : 1844674407370955161 } } "#,
            r#"{"ts":1795680240000,"values":{"co":1.2,"no2":21,"so2":4e1},"units":{"co":"mg/m3","no2":"ppb","so2":"ppm","o3":"ppb"}}"#,
            "{\"ts\":1795680900000,\"channel\":\"k\u{e9}y\",\"values\":{\"pm25\":9,\"temperature\":99.5},\"units\":{\"temperature\":\"\u{b0}F\",\"pm25\":\"ug/m3\"}}",
        ];
        let mut next = xorshift(0x517c_c1b7_2722_0a95u64);
        let alphabet = b"{}[]\t\n ,:\"\\0123456789eE.-+nultrsfa\x01\x7f\xc2\x85\xff";
        let tokens: [&[u8]; 10] = [
            br#""ts":1795680240000,"#,
            br#""values":{},"#,
            br#""units":{"pm25":"mg/m3"},"#,
            br#""seq":-1,"#,
            br#""channel":"","#,
            br#""interval_s":0,"#,
            br#""pm25":1,"#,
            br#""PM10":1,"#,
            br#""ph":"7","#,
            br#""co":1e400,"#,
        ];
        let (mut answered, mut left) = (0, 0);
        for seed in seeds {
            assert!(fast::message(seed.as_bytes(), &ctx()).is_some(), "{seed}");
            for round in 0..3000 {
                let mut body = seed.as_bytes().to_vec();
                if round > 0 {
                    for _ in 0..(next() % 2 + 1) {
                        let i = next() as usize % (body.len() + 1);
                        let b = alphabet[next() as usize % alphabet.len()];
                        match next() % 7 {
                            // Another digit: mostly still valid, another value or time.
                            0..=2 => {
                                if let Some(d) = body[i..].iter().position(u8::is_ascii_digit) {
                                    body[i + d] = b'0' + (next() % 10) as u8;
                                }
                            }
                            3 if i < body.len() => body[i] = b,
                            4 if i < body.len() => {
                                body.remove(i);
                            }
                            5 => body.insert(i, b),
                            _ => {
                                let t = tokens[next() as usize % tokens.len()];
                                body.splice(i..i, t.iter().copied());
                            }
                        }
                    }
                }
                let general = the_general_way(&body);
                let Some(fast) = fast::message(&body, &ctx()) else {
                    left += 1;
                    continue;
                };
                let body = String::from_utf8_lossy(&body);
                let general = general.unwrap_or_else(|r| {
                    panic!("{body}: fast took what the general way refuses: {r:?}")
                });
                assert!(general.rejected_values.is_empty(), "{body}: {general:?}");
                // Debug: a zero's sign counts too.
                assert_eq!(
                    format!("{:?}", forget_json(fast)),
                    format!("{:?}", forget_json(general)),
                    "{body}"
                );
                answered += 1;
            }
        }
        // Both ways are taken often.
        assert!(
            answered > 5_000 && left > 10_000,
            "{answered} answered, {left} left to the general way"
        );
    }

    #[test]
    fn the_fast_message_leaves_the_rare_edges_to_the_general_way() {
        let many: String = catalogue::CATALOGUE[..17]
            .iter()
            .map(|s| format!("\"{}\":1", s.name))
            .collect::<Vec<_>>()
            .join(",");
        let sixteen = many.rsplit_once(',').unwrap().0;
        for (body, fast) in [
            (
                format!(r#"{{"ts":1795680240000,"values":{{{sixteen}}}}}"#),
                true,
            ),
            (
                format!(r#"{{"ts":1795680240000,"values":{{{many}}}}}"#),
                false,
            ),
            (
                r#"{"ts":946684800000,"values":{"pm25":1}}"#.to_string(),
                true,
            ),
            (
                r#"{"ts":946684799999,"values":{"pm25":1}}"#.to_string(),
                false,
            ),
            (
                r#"{"ts":4102444799999,"values":{"pm25":1}}"#.to_string(),
                true,
            ),
            (
                r#"{"ts":4102444800000,"values":{"pm25":1}}"#.to_string(),
                false,
            ),
            (
                format!(
                    "{{\"ts\":1795680240000,\"channel\":\"{}\",\"values\":{{\"pm25\":1}}}}",
                    "é".repeat(32)
                ),
                true,
            ),
            (
                format!(
                    "{{\"ts\":1795680240000,\"channel\":\"{}x\",\"values\":{{\"pm25\":1}}}}",
                    "é".repeat(32)
                ),
                false,
            ),
            (
                "{\"ts\":1795680240000,\"channel\":\"a\u{a0}\",\"values\":{\"pm25\":1}}"
                    .to_string(),
                true,
            ),
            (
                "{\"ts\":1795680240000,\"channel\":\"a\u{85}\",\"values\":{\"pm25\":1}}"
                    .to_string(),
                false,
            ),
            (
                "{\"ts\":1795680240000,\"channel\":\"a\u{7f}\",\"values\":{\"pm25\":1}}"
                    .to_string(),
                false,
            ),
            (
                r#"{"ts":1795680240000,"values":{"co":1},"units":{"co":"mg/m3","co":"mg/m3"}}"#
                    .to_string(),
                false,
            ),
            (
                r#"{"ts":1795680240000,"values":{"co":1,"co":2}}"#.to_string(),
                false,
            ),
            (
                r#"{"ts":1795680240000,"values":{"co":1},"values":{"co":1}}"#.to_string(),
                false,
            ),
            (
                r#"{"ts":1795680240000,"interval_s":-0,"values":{"co":1}}"#.to_string(),
                false,
            ),
        ] {
            let general = the_general_way(body.as_bytes());
            match fast::message(body.as_bytes(), &ctx()) {
                Some(m) => {
                    assert!(fast, "{body}: the fast way answered");
                    assert_eq!(
                        format!("{:?}", forget_json(m)),
                        format!("{:?}", forget_json(general.unwrap())),
                        "{body}"
                    );
                }
                None => assert!(!fast, "{body}: the fast way did not answer"),
            }
        }
    }

    #[test]
    fn a_string_ends_at_its_first_quote_backslash_or_control_byte() {
        let mut next = xorshift(0x2b99_2ddf_a232_49d6);
        let special = [
            b'"', b'\\', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        for _ in 0..100_000 {
            let len = next() as usize % 40;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0 => special[next() as usize % special.len()],
                    _ => next() as u8 | 0x20,
                })
                .collect();
            let expected = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(fast::string_end(&bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn a_number_s_text_is_kept_only_where_serde_json_writes_it_so() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut kept = 0;
        for i in 0..200_000u64 {
            let digits = |n: u64, r: u64| -> String {
                (0..n)
                    .map(|k| char::from(b'0' + ((r >> (k * 3 % 60)) % 10) as u8))
                    .collect()
            };
            let (a, b, c) = (next(), next(), next());
            let int = match a % 4 {
                0 => "0".to_string(),
                _ => digits(a % 17 + 1, b).trim_start_matches('0').to_string() + "1",
            };
            let frac = match c % 5 {
                0 => "0".to_string(),
                1 => format!(
                    "{}{}",
                    "0".repeat((c >> 8) as usize % 7),
                    digits(c % 4 + 1, b)
                ),
                _ => digits(c % 18 + 1, a ^ i),
            };
            let sign = if b % 3 == 0 { "-" } else { "" };
            let text = format!("{sign}{int}.{frac}");
            let value: f64 = serde_json::from_str(&text).unwrap();
            if fast::written_as_read(&text, value) {
                kept += 1;
                assert_eq!(serde_json::to_string(&value).unwrap(), text);
            }
        }
        for (text, kept) in [
            ("35.2", true),
            ("61.0", true),
            ("1180.5", true),
            ("-7.25", true),
            ("0.0001", true),
            ("0.00001", false),
            ("60", false),
            ("1e3", false),
            ("35.20", false),
            ("123456789012345.6", false),
            ("0.0", false),
        ] {
            let value: f64 = serde_json::from_str(text).unwrap();
            assert_eq!(fast::written_as_read(text, value), kept, "{text}");
        }
        assert!(kept > 50_000, "{kept}");
    }
}
