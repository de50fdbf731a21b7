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

/// Parses an API time parameter: RFC 3339 with offset, or integer epoch milliseconds.
pub fn parse_param_ms(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    parse_rfc3339_ms(s)
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
    }
}
