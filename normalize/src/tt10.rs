//! `tt10-station`: the station file of Vietnam's automatic monitoring stations (Circular
//! 10/2021/TT-BTNMT practice, DOMAIN.md §5), decoded with no I/O.
//!
//! One parameter per line, five TAB-separated fields: parameter, value, unit, time
//! (`yyyyMMddhhmmss`, local time, no zone), status (`00` measuring, `01` calibrating, `02` device
//! error). A whole file is one message.
//!
//! - Parameter names are matched as stations write them (`pH`, `COD`, `TSS`, `NH4+` or `Amoni`,
//!   `Temp`, `Flow` or `Luu luong`, ...), case- and accent-insensitively; an unknown one is
//!   rejected alone (`unknown_metric`).
//! - Units are converted to the catalogue's (`contract::units`); an unknown or unconvertible unit
//!   rejects that value (`unknown_unit`).
//! - Local times become UTC with the configured offset (Asia/Ho_Chi_Minh: +07:00, no DST).
//! - Status `01` keeps the value as `suspect` (out of aggregates), `02` and anything else as
//!   `bad`, each with a reason. A value that is not a number (`NaN`, `-`, empty) is rejected
//!   alone; the rest of the file proceeds. A decimal comma is accepted.
//! - Old times are fine (dataloggers resend up to 60 days); times too far in the future are
//!   `suspect`, as in v1.

use ioc_contract::{catalogue, units, Quality, Reading, RejectCode};

use crate::decode::{check_size, judge, DecodeContext, Decoded, Rejection, ValueRejection};

/// The catalogue metric a station parameter name means, if any.
pub fn metric_of(parameter: &str) -> Option<&'static str> {
    let folded: String = fold(parameter)
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '.'))
        .collect();
    Some(match folded.as_str() {
        "ph" => "ph",
        "cod" => "cod",
        "bod" | "bod5" => "bod5",
        "tss" => "tss",
        "nh4" | "nh4+" | "amoni" | "nnh4" | "nh4n" | "ammonium" => "nh4",
        "tn" | "totaln" | "tongn" | "nitotong" => "total_n",
        "tp" | "totalp" | "tongp" | "photphotong" => "total_p",
        "do" | "oxyhoatan" => "do",
        "temp" | "temperature" | "nhietdo" | "t" => "temperature",
        "flow" | "luuluong" | "q" => "flow",
        "color" | "domau" | "mau" => "color",
        "turbidity" | "doduc" => "turbidity",
        "ec" | "conductivity" | "dodan" | "dodandien" => "conductivity",
        "pm25" => "pm25",
        "pm10" => "pm10",
        "pm1" => "pm1",
        "tsp" | "bui" | "buitong" | "dust" => "tsp",
        "so2" => "so2",
        "no2" => "no2",
        "no" => "no",
        "nox" => "nox",
        "co" => "co",
        "o3" => "o3",
        "humidity" | "rh" | "doam" => "humidity",
        "pressure" | "apsuat" => "pressure",
        _ => return None,
    })
}

/// Lowercase without Vietnamese diacritics (the letters station software writes).
fn fold(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            'à' | 'á' | 'ả' | 'ã' | 'ạ' | 'ă' | 'ằ' | 'ắ' | 'ẳ' | 'ẵ' | 'ặ' | 'â' | 'ầ' | 'ấ'
            | 'ẩ' | 'ẫ' | 'ậ' | 'À' | 'Á' | 'Â' | 'Ă' => 'a',
            'è' | 'é' | 'ẻ' | 'ẽ' | 'ẹ' | 'ê' | 'ề' | 'ế' | 'ể' | 'ễ' | 'ệ' | 'È' | 'É' | 'Ê' => {
                'e'
            }
            'ì' | 'í' | 'ỉ' | 'ĩ' | 'ị' | 'Ì' | 'Í' => 'i',
            'ò' | 'ó' | 'ỏ' | 'õ' | 'ọ' | 'ô' | 'ồ' | 'ố' | 'ổ' | 'ỗ' | 'ộ' | 'ơ' | 'ờ' | 'ớ'
            | 'ở' | 'ỡ' | 'ợ' | 'Ò' | 'Ó' | 'Ô' | 'Ơ' => 'o',
            'ù' | 'ú' | 'ủ' | 'ũ' | 'ụ' | 'ư' | 'ừ' | 'ứ' | 'ử' | 'ữ' | 'ự' | 'Ù' | 'Ú' | 'Ư' => {
                'u'
            }
            'ỳ' | 'ý' | 'ỷ' | 'ỹ' | 'ỵ' | 'Ý' => 'y',
            'đ' | 'Đ' => 'd',
            other => other.to_ascii_lowercase(),
        })
        .collect()
}

/// `yyyyMMddhhmmss` local time at `offset_ms` from UTC, as UTC epoch milliseconds.
pub fn parse_local_time(s: &str, offset_ms: i64) -> Option<i64> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(n(0..4)? as i32, n(4..6)?, n(6..8)?)?;
    let time = chrono::NaiveTime::from_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?)?;
    Some(date.and_time(time).and_utc().timestamp_millis() - offset_ms)
}

/// Parses a station value: a finite number, with `.` or `,` as the decimal mark.
fn parse_value(s: &str) -> Option<f64> {
    let t = s.trim().replace(',', ".");
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Decodes one station file for `device_id`.
pub fn decode_tt10(
    device_id: &str,
    payload: &[u8],
    message_id: &str,
    ctx: &DecodeContext,
) -> Result<Decoded, Rejection> {
    check_size(payload, ctx)?;
    let text = std::str::from_utf8(payload).map_err(|e| Rejection {
        code: RejectCode::Malformed,
        reason: format!("a station file must be UTF-8 text: {e}"),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Decoded::default();
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let n = i + 1;
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let reject = |metric: &str, code: RejectCode, reason: String| ValueRejection {
            metric: metric.to_string(),
            code,
            reason: format!("line {n}: {reason}"),
        };
        if fields.len() != 5 {
            out.rejected_values.push(reject(
                fields[0],
                RejectCode::InvalidField,
                format!(
                    "expected 5 TAB-separated fields (parameter, value, unit, time, status), found {}",
                    fields.len()
                ),
            ));
            continue;
        }
        let [parameter, raw_value, unit, time, status] =
            [fields[0], fields[1], fields[2], fields[3], fields[4]];
        let Some(spec) = metric_of(parameter).and_then(catalogue::lookup) else {
            out.rejected_values.push(reject(
                parameter,
                RejectCode::UnknownMetric,
                format!("unknown station parameter {parameter:?}"),
            ));
            continue;
        };
        let Some(ts) = parse_local_time(time, ctx.utc_offset_ms) else {
            out.rejected_values.push(reject(
                spec.name,
                RejectCode::InvalidTs,
                format!("time {time:?} is not yyyyMMddhhmmss"),
            ));
            continue;
        };
        let Some(value) = parse_value(raw_value) else {
            out.rejected_values.push(reject(
                spec.name,
                RejectCode::NotANumber,
                format!("value of {parameter} is not a number: {raw_value:?}"),
            ));
            continue;
        };
        let value = match units::to_canonical(spec, value, unit) {
            Ok(v) => v,
            Err(e) => {
                out.rejected_values
                    .push(reject(spec.name, RejectCode::UnknownUnit, e.to_string()));
                continue;
            }
        };
        let (quality, quality_reason) = match status {
            "00" => judge(spec, value, ts, ctx),
            // Calibrating makes a value suspect, but one outside the physical range stays bad.
            "01" => match judge(spec, value, ts, ctx) {
                bad @ (Quality::Bad, _) => bad,
                _ => (Quality::Suspect, "station calibrating (status 01)".into()),
            },
            "02" => (Quality::Bad, "station device error (status 02)".into()),
            other => (Quality::Bad, format!("unknown station status {other:?}")),
        };
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
    if lines == 0 {
        return Err(Rejection {
            code: RejectCode::NoValues,
            reason: "the station file has no lines".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ICT: i64 = 7 * 3_600_000;

    fn ctx() -> DecodeContext {
        DecodeContext {
            // 2026-11-26T02:00:00Z = 09:00 in Đắk Lắk.
            received_at: 1_795_658_400_000,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 65_536,
            utc_offset_ms: ICT,
        }
    }

    fn decode(text: &str) -> Result<Decoded, Rejection> {
        decode_tt10("ww-001", text.as_bytes(), "m1", &ctx())
    }

    #[test]
    fn a_wastewater_file_becomes_utc_readings_in_catalogue_units() {
        let file = "pH\t7.21\tpH\t20261126085500\t00\r\nCOD\t61,5\tmg/L\t20261126085500\t00\r\n\
                    NH4+\t3.2\tmg/l\t20261126085500\t00\r\nTemp\t29.4\toC\t20261126085500\t00\r\n\
                    Luu luong\t0.01\tm3/s\t20261126085500\t00\r\n";
        let d = decode(file).unwrap();
        assert!(d.rejected_values.is_empty(), "{:?}", d.rejected_values);
        let got: Vec<(&str, f64, &str)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value, r.unit.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ph", 7.21, "pH"),
                ("cod", 61.5, "mg/L"),
                ("nh4", 3.2, "mg/L"),
                ("temperature", 29.4, "°C"),
                ("flow", 36.0, "m³/h"),
            ]
        );
        // 08:55 local (+07:00) is 01:55 UTC.
        assert!(d.readings.iter().all(|r| r.ts == 1_795_658_100_000));
        assert!(d.readings.iter().all(|r| r.quality == Quality::Good));
    }

    #[test]
    fn station_status_sets_quality_with_a_reason() {
        let file = "COD\t61\tmg/L\t20261126085500\t01\nTSS\t40\tmg/L\t20261126085500\t02\nPH\t7\tpH\t20261126085500\t09\n";
        let d = decode(file).unwrap();
        let q: Vec<(Quality, &str)> = d
            .readings
            .iter()
            .map(|r| (r.quality, r.quality_reason.as_str()))
            .collect();
        assert_eq!(
            q,
            vec![
                (Quality::Suspect, "station calibrating (status 01)"),
                (Quality::Bad, "station device error (status 02)"),
                (Quality::Bad, "unknown station status \"09\""),
            ]
        );
    }

    #[test]
    fn a_calibrating_station_cannot_make_an_impossible_value_merely_suspect() {
        // Found by fuzz_tt10: status 01 used to overwrite the physical range check.
        let d = decode("COD\t112661,2\tmg/L\t20261126085500\t01\n").unwrap();
        assert_eq!(d.readings[0].quality, Quality::Bad);
        assert!(
            d.readings[0]
                .quality_reason
                .contains("outside physical range"),
            "{}",
            d.readings[0].quality_reason
        );
    }

    #[test]
    fn bad_lines_are_rejected_alone_and_the_rest_proceeds() {
        let file = "COD\tNaN\tmg/L\t20261126085500\t00\n\
                    TSS\t-\tmg/L\t20261126085500\t00\n\
                    Radon\t1\tBq\t20261126085500\t00\n\
                    pH\t7\tpH\t2026-11-26\t00\n\
                    Flow\t12\tgallons\t20261126085500\t00\n\
                    just garbage\n\
                    Amoni\t2.5\tmg/L\t20261126085500\t00\n";
        let d = decode(file).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].metric, "nh4");
        let codes: Vec<RejectCode> = d.rejected_values.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            vec![
                RejectCode::NotANumber,
                RejectCode::NotANumber,
                RejectCode::UnknownMetric,
                RejectCode::InvalidTs,
                RejectCode::UnknownUnit,
                RejectCode::InvalidField,
            ]
        );
        assert!(
            d.rejected_values[4]
                .reason
                .starts_with("line 5: unknown unit"),
            "{:?}",
            d.rejected_values[4]
        );
    }

    #[test]
    fn backfill_is_good_and_the_future_is_suspect() {
        let old = decode("COD\t50\tmg/L\t20261001120000\t00\n").unwrap();
        assert_eq!(old.readings[0].quality, Quality::Good);
        let ahead = decode("COD\t50\tmg/L\t20261126100000\t00\n").unwrap();
        assert_eq!(ahead.readings[0].quality, Quality::Suspect);
    }

    #[test]
    fn whole_file_rejections() {
        assert_eq!(decode("").unwrap_err().code, RejectCode::NoValues);
        assert_eq!(
            decode_tt10("ww-001", &[0xff, 0xfe, 0x00], "m", &ctx())
                .unwrap_err()
                .code,
            RejectCode::Malformed
        );
    }

    #[test]
    fn names_match_as_stations_write_them() {
        for (name, metric) in [
            ("pH", "ph"),
            ("NH4+", "nh4"),
            ("N-NH4", "nh4"),
            ("Amoni", "nh4"),
            ("Lưu lượng", "flow"),
            ("Nhiệt độ", "temperature"),
            ("TEMP", "temperature"),
            ("Độ màu", "color"),
            ("BOD5", "bod5"),
            ("PM2.5", "pm25"),
        ] {
            assert_eq!(metric_of(name), Some(metric), "{name}");
        }
        assert_eq!(metric_of("O2"), None);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 11u64;
        let base = b"COD\t61,5\tmg/L\t20261126085500\t00\npH\t7\tpH\t20261126085500\t01\n".to_vec();
        for _ in 0..5000 {
            let mut buf = base.clone();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (seed >> 33) as usize % buf.len();
                buf[i] = (seed >> 17) as u8;
            }
            let _ = decode_tt10("d", &buf, "m", &ctx());
        }
    }
}
