//! The readings topic's record, written by hand for ingest's hot path: byte for byte what
//! `serde_json::to_vec(&ReadingBatch)` writes, from borrowed fields, into one buffer sized up
//! front. Leaves (strings, numbers) go through serde_json itself, so escaping and number
//! formatting cannot drift from the derived serializer; only the punctuation and the field
//! order are written here, and a test holds them to the derive.

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

/// The JSON of `ReadingBatch { readings }`, as `serde_json::to_vec` writes it.
pub fn to_vec<'a>(readings: &[ReadingRef<'a>]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + readings.iter().map(ReadingRef::size_hint).sum::<usize>());
    write(&mut out, readings);
    out
}

/// Appends the JSON of `ReadingBatch { readings }` to `out`.
pub fn write(out: &mut Vec<u8>, readings: &[ReadingRef<'_>]) {
    out.extend_from_slice(b"{\"readings\":[");
    // The readings of one message share most fields (device, channel, time, message id): a
    // field equal to the previous reading's is copied from where it was written, not
    // escaped or formatted again.
    let mut prev: Option<(&ReadingRef<'_>, Spans)> = None;
    for r in readings {
        if prev.is_some() {
            out.push(b',');
        }
        let mut spans = Spans::default();
        out.extend_from_slice(b"{\"device_id\":");
        spans.device_id = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (p.device_id == r.device_id, &s.device_id)),
            |out| leaf(out, r.device_id),
        );
        out.extend_from_slice(b",\"channel\":");
        spans.channel = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (p.channel == r.channel, &s.channel)),
            |out| leaf(out, r.channel),
        );
        out.extend_from_slice(b",\"metric\":");
        leaf(out, r.metric);
        out.extend_from_slice(b",\"ts\":");
        spans.ts = cached(
            out,
            prev.as_ref().map(|(p, s)| (p.ts == r.ts, &s.ts)),
            |out| leaf(out, &r.ts),
        );
        out.extend_from_slice(b",\"value\":");
        leaf(out, &r.value);
        out.extend_from_slice(b",\"unit\":");
        leaf(out, r.unit);
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
                |out| leaf(out, &interval_s),
            );
        }
        out.extend_from_slice(b",\"quality\":\"");
        out.extend_from_slice(r.quality.as_str().as_bytes());
        out.extend_from_slice(b"\",\"quality_reason\":");
        leaf(out, r.quality_reason);
        out.extend_from_slice(b",\"received_at\":");
        spans.received_at = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (p.received_at == r.received_at, &s.received_at)),
            |out| leaf(out, &r.received_at),
        );
        out.extend_from_slice(b",\"message_id\":");
        spans.message_id = cached(
            out,
            prev.as_ref()
                .map(|(p, s)| (p.message_id == r.message_id, &s.message_id)),
            |out| leaf(out, r.message_id),
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

/// A string or number as serde_json writes it (escapes, shortest round-trip floats, `null` for
/// a non-finite float).
fn leaf<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing a string or a number into a Vec cannot fail.
    serde_json::to_writer(out, v).expect("a JSON leaf serializes");
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
        ];
        Reading {
            device_id: pick(&["aq-001", "dev\"quoted\"", "tab\there", "ünïcödé-đắk-lắk"]),
            channel: pick(&["", "lane-1", "in\\let", "ctl\u{1}\u{1f}\u{7f}", "inlet"]),
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
                String::from_utf8(to_vec(&refs)).unwrap(),
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
                    String::from_utf8(to_vec(&refs)).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }
}
