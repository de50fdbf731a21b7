//! What a notification says, in Vietnamese and English: the station's name and commune, the
//! value and limit formatted for people, times in local time, and a link to the dashboard.

use ioc_contract::{Alert, Device};
use serde::{Deserialize, Serialize};

/// One notification of one alert event (stored with its delivery, sent as JSON to webhooks,
/// as text by email).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `alert_id/event`: what a receiver drops a repeat by.
    pub idempotency_key: String,
    /// `fired`, `resolved`, `renotify-N` or `escalated`.
    pub event: String,
    pub alert: Alert,
    pub station: Station,
    pub subject: String,
    pub text_vi: String,
    pub text_en: String,
    pub link: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Station {
    pub device_id: String,
    pub name: String,
    pub commune: Option<String>,
    pub kind: String,
}

/// A number for people: at most one decimal, none when whole.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// A time in the province's local time: `2026-12-01 14:05 (UTC+07:00)`.
pub fn local_time(ms: i64, utc_offset_ms: i64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms + utc_offset_ms) else {
        return "?".into();
    };
    let minutes = utc_offset_ms / 60_000;
    let sign = if minutes < 0 { '-' } else { '+' };
    format!(
        "{} (UTC{sign}{:02}:{:02})",
        t.format("%Y-%m-%d %H:%M"),
        minutes.abs() / 60,
        minutes.abs() % 60
    )
}

fn severity_vi(s: &str) -> &'static str {
    match s {
        "critical" => "Nghiêm trọng",
        "major" => "Cao",
        "minor" => "Trung bình",
        "warning" => "Lưu ý",
        _ => "Cảnh báo",
    }
}

/// The notification of `event` of `alert`.
pub fn compose(
    alert: &Alert,
    event: &str,
    device: Option<&Device>,
    dashboard_url: &str,
    utc_offset_ms: i64,
) -> Notification {
    let station = Station {
        device_id: alert.device_id.clone(),
        name: device.map_or_else(|| alert.device_id.clone(), |d| d.name.clone()),
        commune: device.and_then(|d| d.commune.clone()),
        kind: device.map(|d| d.kind.clone()).unwrap_or_default(),
    };
    let place_vi = match &station.commune {
        Some(c) => format!("{} ({c})", station.name),
        None => station.name.clone(),
    };
    let unit = if alert.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", alert.unit)
    };
    let value = format!("{}{unit}", number(alert.value));
    let limit_vi = alert
        .limit
        .map(|l| format!(", giới hạn {}{unit}", number(l)))
        .unwrap_or_default();
    let limit_en = alert
        .limit
        .map(|l| format!(", limit {}{unit}", number(l)))
        .unwrap_or_default();
    let fired = local_time(alert.fired_at, utc_offset_ms);
    let link = format!(
        "{}#/alerts/{}",
        dashboard_url.trim_end_matches('/').to_string() + "/",
        alert.alert_id
    );
    let (head_vi, head_en, body_vi, body_en) = if event == "resolved" {
        let at = alert
            .resolved_at
            .map(|t| local_time(t, utc_offset_ms))
            .unwrap_or_default();
        let why_vi = match alert.resolve_reason.map(|r| r.as_str()) {
            Some("manual") => "đóng thủ công",
            Some("revised") => "dữ liệu được hiệu chỉnh",
            Some("decommissioned") => "thiết bị ngừng hoạt động",
            Some("rule_removed") => "quy tắc đã thay đổi",
            _ => "trở lại trong giới hạn",
        };
        let why_en = alert.resolve_reason.map_or("cleared", |r| r.as_str());
        (
            "ĐÃ KẾT THÚC".to_string(),
            "RESOLVED".to_string(),
            format!(
                "Cảnh báo tại {place_vi} đã kết thúc lúc {at} ({why_vi}). Giá trị cao nhất {}{unit}{limit_vi}. {}",
                number(alert.peak),
                alert.message
            ),
            format!(
                "The alert at {place_vi} resolved at {at} ({why_en}). Peak {}{unit}{limit_en}. {}",
                number(alert.peak),
                alert.message
            ),
        )
    } else {
        let again = if event.starts_with("renotify") {
            (
                " (nhắc lại, chưa ai xác nhận)",
                " (reminder: not yet acknowledged)",
            )
        } else if event == "escalated" {
            (
                " (chuyển cấp: chưa ai xác nhận)",
                " (escalated: not yet acknowledged)",
            )
        } else {
            ("", "")
        };
        (
            format!("CẢNH BÁO {}", severity_vi(&alert.severity).to_uppercase()),
            format!("ALERT {}", alert.severity.to_uppercase()),
            format!(
                "Cảnh báo{} tại {place_vi}: {value}{limit_vi}, từ {fired}. {}",
                again.0, alert.message
            ),
            format!(
                "Alert{} at {place_vi}: {value}{limit_en}, since {fired}. {}",
                again.1, alert.message
            ),
        )
    };
    Notification {
        idempotency_key: format!("{}/{event}", alert.alert_id),
        event: event.to_string(),
        subject: format!(
            "[IOC] {head_vi} / {head_en}: {} – {}",
            station.name, alert.rule
        ),
        text_vi: body_vi,
        text_en: body_en,
        link,
        station,
        alert: alert.clone(),
    }
}

/// Several notifications as one: the subject and text of a digest.
pub fn digest_text(items: &[Notification]) -> (String, String) {
    if let [one] = items {
        return (
            one.subject.clone(),
            format!("{}\n\n{}\n\n{}\n", one.text_vi, one.text_en, one.link),
        );
    }
    let subject = format!("[IOC] {} thông báo / notifications", items.len());
    let mut body = String::new();
    for n in items {
        body.push_str(&format!(
            "• {}\n  {}\n  {}\n  {}\n\n",
            n.subject, n.text_vi, n.text_en, n.link
        ));
    }
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_for_people() {
        assert_eq!(number(20.777777777777786), "20.8");
        assert_eq!(number(150.0), "150");
        assert_eq!(number(f64::NAN), "?");
        assert_eq!(
            local_time(1_795_680_000_000, 7 * 3_600_000),
            "2026-11-26 15:00 (UTC+07:00)"
        );
    }
}
