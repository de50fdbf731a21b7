//! The one way the pipeline reads and writes times: UTC epoch milliseconds inside, RFC 3339
//! UTC with milliseconds (`2026-11-26T08:05:00.000Z`) at every API boundary.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds and a `Z`.
pub fn format_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("invalid-time({ms})"),
    }
}

/// Parses an RFC 3339 time that carries an offset (`Z` or `+07:00`) into epoch milliseconds.
/// Sub-millisecond digits are truncated.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The latest time a parameter may name: 2100-01-01T00:00:00Z.
pub const MAX_PARAM_MS: i64 = 4_102_444_800_000;

/// Parses an API time parameter: RFC 3339 with offset, or epoch milliseconds (digits only),
/// from 1970 to [`MAX_PARAM_MS`] (so that arithmetic on it cannot overflow).
pub fn parse_param_ms(s: &str) -> Option<i64> {
    let ms = if !s.is_empty() && s.len() <= 13 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<i64>().ok()?
    } else {
        parse_rfc3339_ms(s)?
    };
    (0..=MAX_PARAM_MS).contains(&ms).then_some(ms)
}

/// Current wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_680_300_123), "2026-11-26T08:05:00.123Z");
    }

    #[test]
    fn parses_offsets_to_utc() {
        let a = parse_rfc3339_ms("2026-11-26T15:05:00+07:00").unwrap();
        let b = parse_rfc3339_ms("2026-11-26T08:05:00Z").unwrap();
        assert_eq!(a, b);
        assert!(parse_rfc3339_ms("2026-11-26 08:05:00").is_none());
        assert!(
            parse_rfc3339_ms("2026-11-26T08:05:00").is_none(),
            "no offset is not RFC 3339"
        );
        assert_eq!(parse_param_ms("1000"), Some(1000));
        for out_of_range in [
            "-1",
            "+5",
            "9223372036854775807",
            "4102444800001",
            "2101-01-01T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_param_ms(out_of_range), None, "{out_of_range:?}");
        }
        assert_eq!(
            parse_param_ms("2100-01-01T07:00:00+07:00"),
            Some(MAX_PARAM_MS)
        );
    }
}
