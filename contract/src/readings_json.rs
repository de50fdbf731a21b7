//! The readings topic's record, written by hand for ingest's hot path: byte for byte what
//! `serde_json::to_vec(&ReadingBatch)` writes, from borrowed fields, into one buffer sized up
//! front. Numbers are formatted by the crates serde_json formats them with (`itoa`, and `zmij`
//! for shortest round-trip floats); a string is copied as is when serde_json would copy it as
//! is (no quote, backslash or control character) and escaped by serde_json itself otherwise.
//! Tests hold every byte, punctuation and field order included, to the derive, so a serde_json
//! that formats differently fails them rather than changing the record.

use std::ops::Range;

use crate::{Quality, Reading};

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
        }
    }
}

impl ReadingRef<'_> {
    /// An upper estimate of the bytes it takes (no escapes), so the buffer grows once.
    fn size_hint(&self) -> usize {
        // Field names and punctuation, two i64 and up to two f64 at 24 bytes each at most.
        200 + self.device_id.len()
            + self.channel.len()
            + self.metric.len()
            + self.unit.len()
            + self.quality_reason.len()
            + self.message_id.len()
    }
}

/// The JSON of `ReadingBatch { readings }`, as `serde_json::to_vec` writes it. An iterator
/// (walked twice: sizes, then bytes), so a caller need not collect its readings first.
pub fn to_vec<'a, I>(readings: I) -> Vec<u8>
where
    I: IntoIterator<Item = ReadingRef<'a>>,
    I::IntoIter: Clone,
{
    let readings = readings.into_iter();
    let size = 16 + readings.clone().map(|r| r.size_hint()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    write(&mut out, readings);
    out
}

/// Appends the JSON of `ReadingBatch { readings }` to `out`.
pub fn write<'a>(out: &mut Vec<u8>, readings: impl IntoIterator<Item = ReadingRef<'a>>) {
    out.extend_from_slice(b"{\"readings\":[");
    // The readings of one message share most fields (device, channel, time, message id): a
    // field equal to the previous reading's is copied from where it was written, not
    // escaped or formatted again.
    let mut prev: Option<(ReadingRef<'_>, Spans)> = None;
    for r in readings {
        if prev.is_some() {
            out.push(b',');
        }
        let mut spans = Spans::default();
        out.extend_from_slice(b"{\"device_id\":");
        spans.device_id = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (same(p.device_id, r.device_id), &s.device_id)),
            |out| str_leaf(out, r.device_id),
        );
        out.extend_from_slice(b",\"channel\":");
        spans.channel = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (same(p.channel, r.channel), &s.channel)),
            |out| str_leaf(out, r.channel),
        );
        out.extend_from_slice(b",\"metric\":");
        str_leaf(out, r.metric);
        out.extend_from_slice(b",\"ts\":");
        spans.ts = cached(
            out,
            prev.as_ref().map(|(p, s)| (p.ts == r.ts, &s.ts)),
            |out| i64_leaf(out, r.ts),
        );
        out.extend_from_slice(b",\"value\":");
        match r.value_json {
            Some(json) => out.extend_from_slice(json.as_bytes()),
            None => f64_leaf(out, r.value),
        }
        out.extend_from_slice(b",\"unit\":");
        str_leaf(out, r.unit);
        if let Some(interval_s) = r.interval_s {
            out.extend_from_slice(b",\"interval_s\":");
            spans.interval_s = cached(
                out,
                prev.as_ref().map(|(p, s)| {
                    (
                        p.interval_s.map(f64::to_bits) == Some(interval_s.to_bits()),
                        &s.interval_s,
                    )
                }),
                |out| f64_leaf(out, interval_s),
            );
        }
        out.extend_from_slice(b",\"quality\":\"");
        out.extend_from_slice(r.quality.as_str().as_bytes());
        out.extend_from_slice(b"\",\"quality_reason\":");
        str_leaf(out, r.quality_reason);
        out.extend_from_slice(b",\"received_at\":");
        spans.received_at = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (p.received_at == r.received_at, &s.received_at)),
            |out| i64_leaf(out, r.received_at),
        );
        out.extend_from_slice(b",\"message_id\":");
        spans.message_id = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (same(p.message_id, r.message_id), &s.message_id)),
            |out| str_leaf(out, r.message_id),
        );
        out.push(b'}');
        prev = Some((r, spans));
    }
    out.extend_from_slice(b"]}");
}

/// Where the previous reading's shared fields were written in the buffer.
#[derive(Default)]
struct Spans {
    device_id: Range<usize>,
    channel: Range<usize>,
    ts: Range<usize>,
    interval_s: Range<usize>,
    received_at: Range<usize>,
    message_id: Range<usize>,
}

/// Whether two strings are equal; the readings of one message mostly borrow the very same
/// string, which needs no comparing of bytes.
#[inline]
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Writes a field with `write`, or copies its bytes from `span` when `prev` says the previous
/// reading had the same value (and wrote it there); returns where it is now.
fn cached(
    out: &mut Vec<u8>,
    prev: Option<(bool, &Range<usize>)>,
    write: impl FnOnce(&mut Vec<u8>),
) -> Range<usize> {
    let start = out.len();
    match prev {
        Some((true, span)) if !span.is_empty() => out.extend_from_within(span.clone()),
        _ => write(out),
    }
    start..out.len()
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
#[inline]
fn f64_leaf(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
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
            let refs: Vec<ReadingRef> = readings.iter().map(ReadingRef::from).collect();
            let expected = serde_json::to_vec(&ReadingBatch {
                readings: readings.clone(),
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(to_vec(refs.iter().copied())).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn writes_exactly_what_serde_writes() {
        for n in 0..6u64 {
            for start in 0..40u64 {
                let readings: Vec<Reading> =
                    (start..start + n).map(|i| reading(i * 7 + n)).collect();
                let refs: Vec<ReadingRef> = readings.iter().map(ReadingRef::from).collect();
                let expected = serde_json::to_vec(&ReadingBatch {
                    readings: readings.clone(),
                })
                .unwrap();
                assert_eq!(
                    String::from_utf8(to_vec(refs.iter().copied())).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }
}
