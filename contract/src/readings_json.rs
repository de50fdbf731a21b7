//! The readings topic's record: its wire form, `Serialize` and `Deserialize` for
//! [`ReadingBatch`], and a hand-written writer for ingest's hot path.
//!
//! The readings of one message share most fields (device, channel, time, interval, receipt,
//! message id), so the record names the first reading's shared fields once, beside the list,
//! and each reading gives its own fields and only those shared fields where it differs:
//!
//! ```text
//! {"device_id":"aq-001","channel":"","ts":1795680240000,"interval_s":60.0,
//!  "received_at":1795680300000,"message_id":"9f2c...","readings":[
//!   {"metric":"pm25","value":35.2,"unit":"µg/m³","quality":"good"},
//!   {"metric":"pm10","value":6200.0,"unit":"µg/m³","quality":"bad",
//!    "quality_reason":"6200 outside physical range [0, 5000] µg/m³","ts":1795680250000}]}
//! ```
//!
//! `interval_s` is left out where there is none (a reading overriding one it does not have
//! writes `null`), `quality_reason` where it is empty. A batch without readings is
//! `{"readings":[]}`. Records written before this form (every field in every reading, nothing
//! beside the list) read the same, so a bus holding both is read whole.
//!
//! [`write`] is byte for byte what `serde_json::to_vec(&ReadingBatch)` writes, from borrowed
//! fields into one buffer sized up front. Numbers are formatted by the crates serde_json
//! formats them with (`itoa`, and `zmij` for shortest round-trip floats); a string is copied as
//! is when serde_json would copy it as is (no quote, backslash or control character) and
//! escaped by serde_json itself otherwise. Tests hold every byte, punctuation and field order
//! included, to the `Serialize` impl, so a serde_json that formats differently fails them
//! rather than changing the record.

use serde::de::Error as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalogue::MetricSpec;
use crate::{Quality, Reading, ReadingBatch};

/// One reading's fields, borrowed: a [`Reading`] without owning its strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadingRef<'a> {
    pub device_id: &'a str,
    pub channel: &'a str,
    pub metric: &'a str,
    pub ts: i64,
    pub value: f64,
    /// `value` as serde_json writes it, when the caller has that at hand: written as is.
    pub value_json: Option<&'a str>,
    pub unit: &'a str,
    pub interval_s: Option<f64>,
    pub quality: Quality,
    pub quality_reason: &'a str,
    pub received_at: i64,
    pub message_id: &'a str,
    /// The catalogue entry of `metric`, when the caller has it at hand: a reading whose metric
    /// and unit are its own is written with the entry's prebuilt pieces.
    pub spec: Option<&'static MetricSpec>,
}

impl<'a> From<&'a Reading> for ReadingRef<'a> {
    fn from(r: &'a Reading) -> ReadingRef<'a> {
        ReadingRef {
            device_id: &r.device_id,
            channel: &r.channel,
            metric: &r.metric,
            ts: r.ts,
            value: r.value,
            value_json: None,
            unit: &r.unit,
            interval_s: r.interval_s,
            quality: r.quality,
            quality_reason: &r.quality_reason,
            received_at: r.received_at,
            message_id: &r.message_id,
            spec: None,
        }
    }
}

/// Whether a reading's `interval_s` is the shared one: compared by bits, so the writer and
/// `Serialize` agree even on a NaN.
fn same_interval(a: Option<f64>, b: Option<f64>) -> bool {
    a.map(f64::to_bits) == b.map(f64::to_bits)
}

/// Whether two strings are equal; the readings of one message mostly borrow the very same
/// string, which needs no comparing of bytes.
#[inline]
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The JSON of a [`ReadingBatch`], as `serde_json::to_vec` writes it. An iterator, so a caller
/// need not collect its readings first (cloned once, to size the buffer from the first).
pub fn to_vec<'a, I>(readings: I) -> Vec<u8>
where
    I: IntoIterator<Item = ReadingRef<'a>>,
    I::IntoIter: Clone,
{
    let readings = readings.into_iter();
    // An estimate from the first reading (its shared fields once, and each reading's own
    // fields about as long as its), so the buffer mostly grows once without walking them all.
    let size = readings.clone().next().map_or(16, |first| {
        let own = 120 + first.metric.len() + first.unit.len() + first.quality_reason.len();
        160 + first.device_id.len()
            + first.channel.len()
            + first.message_id.len()
            + own * readings.size_hint().0.max(1)
    });
    let mut out = Vec::with_capacity(size);
    write(&mut out, readings);
    out
}

/// Appends the JSON of a [`ReadingBatch`] of `readings` to `out`.
pub fn write<'a>(out: &mut Vec<u8>, readings: impl IntoIterator<Item = ReadingRef<'a>>) {
    let mut readings = readings.into_iter();
    let Some(first) = readings.next() else {
        out.extend_from_slice(b"{\"readings\":[]}");
        return;
    };
    out.extend_from_slice(b"{\"device_id\":");
    str_leaf(out, first.device_id);
    out.extend_from_slice(b",\"channel\":");
    str_leaf(out, first.channel);
    out.extend_from_slice(b",\"ts\":");
    i64_leaf(out, first.ts);
    if let Some(interval_s) = first.interval_s {
        out.extend_from_slice(b",\"interval_s\":");
        f64_leaf(out, interval_s);
    }
    out.extend_from_slice(b",\"received_at\":");
    i64_leaf(out, first.received_at);
    out.extend_from_slice(b",\"message_id\":");
    str_leaf(out, first.message_id);
    out.extend_from_slice(b",\"readings\":[");
    write_reading(out, &first, &first);
    for r in readings {
        out.push(b',');
        write_reading(out, &r, &first);
    }
    out.extend_from_slice(b"]}");
}

/// One reading of the list: its own fields, then the shared ones where it differs from `first`.
#[inline]
fn write_reading(out: &mut Vec<u8>, r: &ReadingRef<'_>, first: &ReadingRef<'_>) {
    let spec = r
        .spec
        .filter(|spec| same(r.metric, spec.name) && same(r.unit, spec.unit));
    match spec {
        Some(spec) => out.extend_from_slice(spec.json_head.as_bytes()),
        None => {
            out.extend_from_slice(b"{\"metric\":");
            str_leaf(out, r.metric);
            out.extend_from_slice(b",\"value\":");
        }
    }
    match r.value_json {
        Some(json) => out.extend_from_slice(json.as_bytes()),
        None => f64_leaf(out, r.value),
    }
    match spec {
        Some(spec) => out.extend_from_slice(spec.json_unit.as_bytes()),
        None => {
            out.extend_from_slice(b",\"unit\":");
            str_leaf(out, r.unit);
        }
    }
    out.extend_from_slice(match r.quality {
        Quality::Good => b",\"quality\":\"good\"",
        Quality::Suspect => b",\"quality\":\"suspect\"",
        Quality::Bad => b",\"quality\":\"bad\"",
    });
    if !r.quality_reason.is_empty() {
        out.extend_from_slice(b",\"quality_reason\":");
        str_leaf(out, r.quality_reason);
    }
    if !same(r.device_id, first.device_id) {
        out.extend_from_slice(b",\"device_id\":");
        str_leaf(out, r.device_id);
    }
    if !same(r.channel, first.channel) {
        out.extend_from_slice(b",\"channel\":");
        str_leaf(out, r.channel);
    }
    if r.ts != first.ts {
        out.extend_from_slice(b",\"ts\":");
        i64_leaf(out, r.ts);
    }
    if !same_interval(r.interval_s, first.interval_s) {
        out.extend_from_slice(b",\"interval_s\":");
        match r.interval_s {
            Some(v) => f64_leaf(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    if r.received_at != first.received_at {
        out.extend_from_slice(b",\"received_at\":");
        i64_leaf(out, r.received_at);
    }
    if !same(r.message_id, first.message_id) {
        out.extend_from_slice(b",\"message_id\":");
        str_leaf(out, r.message_id);
    }
    out.push(b'}');
}

impl Serialize for ReadingBatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(first) = self.readings.first() {
            map.serialize_entry("device_id", &first.device_id)?;
            map.serialize_entry("channel", &first.channel)?;
            map.serialize_entry("ts", &first.ts)?;
            if let Some(interval_s) = first.interval_s {
                map.serialize_entry("interval_s", &interval_s)?;
            }
            map.serialize_entry("received_at", &first.received_at)?;
            map.serialize_entry("message_id", &first.message_id)?;
        }
        map.serialize_entry("readings", &ListOf(&self.readings))?;
        map.end()
    }
}

/// The readings list of a batch, each reading against the first.
struct ListOf<'a>(&'a [Reading]);

/// A reading of the list: its own fields, and the shared ones where it differs from `first`.
struct ItemOf<'a> {
    r: &'a Reading,
    first: &'a Reading,
}

impl Serialize for ListOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in self.0 {
            seq.serialize_element(&ItemOf {
                r,
                first: &self.0[0],
            })?;
        }
        seq.end()
    }
}

impl Serialize for ItemOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, first) = (self.r, self.first);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("metric", &r.metric)?;
        map.serialize_entry("value", &r.value)?;
        map.serialize_entry("unit", &r.unit)?;
        map.serialize_entry("quality", &r.quality)?;
        if !r.quality_reason.is_empty() {
            map.serialize_entry("quality_reason", &r.quality_reason)?;
        }
        if r.device_id != first.device_id {
            map.serialize_entry("device_id", &r.device_id)?;
        }
        if r.channel != first.channel {
            map.serialize_entry("channel", &r.channel)?;
        }
        if r.ts != first.ts {
            map.serialize_entry("ts", &r.ts)?;
        }
        if !same_interval(r.interval_s, first.interval_s) {
            map.serialize_entry("interval_s", &r.interval_s)?;
        }
        if r.received_at != first.received_at {
            map.serialize_entry("received_at", &r.received_at)?;
        }
        if r.message_id != first.message_id {
            map.serialize_entry("message_id", &r.message_id)?;
        }
        map.end()
    }
}

/// A record as written: shared fields beside the list (absent in the older form).
#[derive(Deserialize)]
struct WireBatch {
    device_id: Option<String>,
    channel: Option<String>,
    ts: Option<i64>,
    interval_s: Option<f64>,
    received_at: Option<i64>,
    message_id: Option<String>,
    readings: Vec<WireReading>,
}

/// A reading as written: a shared field it does not give is the batch's.
#[derive(Deserialize)]
struct WireReading {
    device_id: Option<String>,
    channel: Option<String>,
    metric: String,
    ts: Option<i64>,
    value: f64,
    unit: String,
    /// Absent: the batch's; `null`: none.
    #[serde(default, deserialize_with = "given")]
    interval_s: Option<Option<f64>>,
    quality: Quality,
    #[serde(default)]
    quality_reason: String,
    received_at: Option<i64>,
    message_id: Option<String>,
}

/// A field that is present, `null` included.
fn given<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for ReadingBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ReadingBatch, D::Error> {
        let wire = WireBatch::deserialize(d)?;
        let shared = |own: Option<String>, batch: &Option<String>, name: &'static str| {
            own.or_else(|| batch.clone())
                .ok_or_else(|| D::Error::missing_field(name))
        };
        let readings = wire
            .readings
            .into_iter()
            .map(|r| {
                Ok(Reading {
                    device_id: shared(r.device_id, &wire.device_id, "device_id")?,
                    // The one shared field with a default (as `Reading` has it).
                    channel: r
                        .channel
                        .or_else(|| wire.channel.clone())
                        .unwrap_or_default(),
                    metric: r.metric,
                    ts: r
                        .ts
                        .or(wire.ts)
                        .ok_or_else(|| D::Error::missing_field("ts"))?,
                    value: r.value,
                    unit: r.unit,
                    interval_s: r.interval_s.unwrap_or(wire.interval_s),
                    quality: r.quality,
                    quality_reason: r.quality_reason,
                    received_at: r
                        .received_at
                        .or(wire.received_at)
                        .ok_or_else(|| D::Error::missing_field("received_at"))?,
                    message_id: shared(r.message_id, &wire.message_id, "message_id")?,
                })
            })
            .collect::<Result<Vec<_>, D::Error>>()?;
        Ok(ReadingBatch { readings })
    }
}

/// A string as serde_json writes it.
#[inline]
fn str_leaf(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly these bytes; a string without them it copies between quotes.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serializing a string into a Vec cannot fail.
        serde_json::to_writer(out, s).expect("a JSON string serializes");
    }
}

/// An integer as serde_json writes it (with `itoa`).
#[inline]
fn i64_leaf(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A float as serde_json writes it: shortest round trip (with `zmij`), `null` if not finite.
/// A whole number below 10^15 (an interval, a count) is its integer and `.0`, as the shortest
/// round trip writes it, without the float formatting.
#[inline]
fn f64_leaf(out: &mut Vec<u8>, v: f64) {
    if v != 0.0 && v.abs() < 1e15 && v.fract() == 0.0 {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
        out.extend_from_slice(b".0");
    } else if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReadingBatch;

    fn reading(i: u64) -> Reading {
        let pick = |xs: &[&str]| xs[(i as usize) % xs.len()].to_string();
        let values = [
            0.0,
            -0.0,
            35.2,
            1e-7,
            1180.5,
            -40.0,
            1e21,
            123456789.123,
            f64::NAN,
            f64::INFINITY,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
            2f64.powi(60),
            // Where float formatters differ: exponent thresholds, subnormals, extremes.
            5e-324,
            f64::MAX,
            -1e-300,
            1e15,
            1e16,
            9007199254740993.0,
            0.000001,
            1e-5,
            f64::NEG_INFINITY,
            // Whole numbers, written without the float formatter below 10^15.
            60.0,
            -1.0,
            1.0,
            999_999_999_999_999.0,
            -999_999_999_999_999.0,
            1e14,
            4503599627370496.0,
        ];
        Reading {
            device_id: pick(&["aq-001", "dev\"quoted\"", "tab\there", "ünïcödé-đắk-lắk"]),
            channel: pick(&[
                "",
                "lane-1",
                "in\\let",
                "ctl\u{1}\u{1f}\u{7f}",
                "inlet",
                "del\u{7f}",
                "/slash/",
            ]),
            metric: pick(&["pm25", "temperature", "vehicle_count"]),
            ts: [0, -1, 1_795_680_240_000, i64::MAX, i64::MIN][(i % 5) as usize],
            value: values[(i as usize) % values.len()],
            unit: pick(&["µg/m³", "°C", "%", "m³/h"]),
            interval_s: [None, Some(60.0), Some(0.5), Some(1e300)][(i % 4) as usize],
            quality: [Quality::Good, Quality::Suspect, Quality::Bad][(i % 3) as usize],
            quality_reason: pick(&[
                "",
                "1e300 outside physical range [0, 100] %",
                "line\nbreak \u{2028}",
            ]),
            received_at: 1_795_680_300_000 + i as i64,
            message_id: format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    #[test]
    fn readings_sharing_fields_are_written_as_serde_writes_them() {
        for i in 0..200u64 {
            let base = reading(i);
            let readings: Vec<Reading> = (0..(i % 6 + 1))
                .map(|j| {
                    let mut r = base.clone();
                    r.metric = reading(i + j).metric;
                    r.value = reading(i * 3 + j).value;
                    // Now and then a field differs from the one before it.
                    match (i + j) % 7 {
                        0 => r.interval_s = reading(i + j).interval_s,
                        1 => r.channel = reading(i + j + 1).channel,
                        2 => r.ts += 1,
                        3 => r.quality_reason = reading(j).quality_reason,
                        _ => {}
                    }
                    r
                })
                .collect();
            let expected = serde_json::to_vec(&ReadingBatch {
                readings: readings.clone(),
            })
            .unwrap();
            for refs in [plain_refs(&readings), refs_with_spec(&readings)] {
                assert_eq!(
                    String::from_utf8(to_vec(refs)).unwrap(),
                    String::from_utf8(expected.clone()).unwrap()
                );
            }
        }
    }

    fn plain_refs(readings: &[Reading]) -> Vec<ReadingRef<'_>> {
        readings.iter().map(ReadingRef::from).collect()
    }

    /// As ingest's v1 path gives them: with the metric's catalogue entry, whose prebuilt
    /// pieces are used only where the reading's metric and unit are the entry's.
    fn refs_with_spec(readings: &[Reading]) -> Vec<ReadingRef<'_>> {
        readings
            .iter()
            .map(|r| ReadingRef {
                spec: crate::catalogue::lookup(&r.metric),
                ..ReadingRef::from(r)
            })
            .collect()
    }

    #[test]
    fn writes_exactly_what_serde_writes() {
        for n in 0..6u64 {
            for start in 0..40u64 {
                let readings: Vec<Reading> =
                    (start..start + n).map(|i| reading(i * 7 + n)).collect();
                let expected = serde_json::to_vec(&ReadingBatch {
                    readings: readings.clone(),
                })
                .unwrap();
                for refs in [plain_refs(&readings), refs_with_spec(&readings)] {
                    assert_eq!(
                        String::from_utf8(to_vec(refs)).unwrap(),
                        String::from_utf8(expected.clone()).unwrap()
                    );
                }
            }
        }
    }

    /// A batch of `n` readings from `reading`, finite numbers only (serde_json writes a
    /// non-finite one as `null`, which no f64 reads back).
    fn finite_batch(i: u64, n: u64) -> Vec<Reading> {
        (0..n)
            .map(|j| {
                let mut r = reading(i);
                r.metric = reading(i + j).metric;
                r.value = reading(i * 3 + j).value;
                if !r.value.is_finite() {
                    r.value = j as f64 * 1.5;
                }
                match (i + j) % 9 {
                    0 => r.interval_s = None,
                    1 => r.channel = reading(i + j + 1).channel,
                    2 => r.ts += j as i64,
                    3 => r.quality_reason = reading(j).quality_reason,
                    4 => r.device_id = reading(i + j).device_id,
                    5 => r.message_id = reading(i + j).message_id,
                    6 => r.received_at -= j as i64,
                    7 => r.interval_s = Some(15.0),
                    _ => {}
                }
                r
            })
            .collect()
    }

    #[test]
    fn batches_read_back_as_written() {
        for i in 0..300u64 {
            let batch = ReadingBatch {
                readings: finite_batch(i, i % 7),
            };
            let json = serde_json::to_vec(&batch).unwrap();
            let back: ReadingBatch = serde_json::from_slice(&json)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
            assert_eq!(back, batch, "{}", String::from_utf8_lossy(&json));
        }
    }

    #[test]
    fn records_of_the_older_form_still_read() {
        // Every field in every reading, nothing beside the list: `Reading`'s own serde.
        #[derive(serde::Serialize)]
        struct Older<'a> {
            readings: &'a [Reading],
        }
        for i in 0..100u64 {
            let readings = finite_batch(i, i % 5 + 1);
            let json = serde_json::to_vec(&Older {
                readings: &readings,
            })
            .unwrap();
            let back: ReadingBatch = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.readings, readings);
        }
        // As the older writer left out an empty channel's default and a missing interval.
        let minimal = r#"{"readings":[{"device_id":"d","metric":"pm25","ts":1,"value":2.5,"unit":"µg/m³","quality":"good","received_at":3,"message_id":"m"}]}"#;
        let back: ReadingBatch = serde_json::from_str(minimal).unwrap();
        assert_eq!(back.readings[0].channel, "");
        assert_eq!(back.readings[0].interval_s, None);
        assert_eq!(back.readings[0].quality_reason, "");
    }

    #[test]
    fn shared_fields_are_written_once_and_overrides_only_where_they_differ() {
        let first = Reading {
            device_id: "aq-001".into(),
            channel: String::new(),
            metric: "pm25".into(),
            ts: 1_795_680_240_000,
            value: 35.2,
            unit: "µg/m³".into(),
            interval_s: Some(60.0),
            quality: Quality::Good,
            quality_reason: String::new(),
            received_at: 1_795_680_300_000,
            message_id: "0123456789abcdef".into(),
        };
        let second = Reading {
            metric: "pm10".into(),
            value: 6200.0,
            ts: first.ts + 10_000,
            interval_s: None,
            quality: Quality::Bad,
            quality_reason: "6200 outside physical range [0, 5000] µg/m³".into(),
            ..first.clone()
        };
        let batch = ReadingBatch {
            readings: vec![first, second],
        };
        let expected = concat!(
            r#"{"device_id":"aq-001","channel":"","ts":1795680240000,"interval_s":60.0,"#,
            r#""received_at":1795680300000,"message_id":"0123456789abcdef","readings":["#,
            r#"{"metric":"pm25","value":35.2,"unit":"µg/m³","quality":"good"},"#,
            r#"{"metric":"pm10","value":6200.0,"unit":"µg/m³","quality":"bad","#,
            r#""quality_reason":"6200 outside physical range [0, 5000] µg/m³","ts":1795680250000,"interval_s":null}]}"#
        );
        assert_eq!(serde_json::to_string(&batch).unwrap(), expected);
        let refs: Vec<ReadingRef> = batch.readings.iter().map(ReadingRef::from).collect();
        assert_eq!(String::from_utf8(to_vec(refs)).unwrap(), expected);
        assert_eq!(
            serde_json::to_string(&ReadingBatch { readings: vec![] }).unwrap(),
            r#"{"readings":[]}"#
        );
        assert_eq!(
            String::from_utf8(to_vec(Vec::new())).unwrap(),
            r#"{"readings":[]}"#
        );
    }

    #[test]
    fn a_reading_without_a_device_anywhere_is_refused_by_name() {
        let json = r#"{"ts":1,"received_at":2,"message_id":"m","readings":[{"metric":"pm25","value":1.0,"unit":"µg/m³","quality":"good"}]}"#;
        let err = serde_json::from_str::<ReadingBatch>(json).unwrap_err();
        assert!(err.to_string().contains("device_id"), "{err}");
    }
}
