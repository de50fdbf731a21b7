//! `GET /api/v1/devices/{id}/commissioning`: what an installer needs on site. Each item of the
//! checklist has a status (`pass`, `fail`, `pending`) and the evidence it was judged on, in
//! words an installer can act on; the verdict is `ready` when every item passes, `failing` when
//! one fails, `in_progress` otherwise.
//!
//! The evidence is what this API process has seen since it started: connections reported by
//! the broker ([`crate::connections`]) and what ingest made of the device's messages
//! ([`crate::live::Activity`]). A device reporting every few minutes shows again within one of
//! its intervals after an API restart.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ioc_config::ApiConfig;
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::{Device, Quality};
use serde::Serialize;

use crate::auth::{authorize, bearer, Permission};
use crate::connections::ClientState;
use crate::error::{ApiFailure, ApiResult};
use crate::live::DeviceActivity;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Pending,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub item: &'static str,
    pub status: Status,
    /// What it was judged on, in English and in Vietnamese (the installer's page shows the one
    /// of its language; rejection reasons from the decoders stay in English in both).
    pub evidence: String,
    pub evidence_vi: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checklist {
    pub device_id: String,
    pub device_status: &'static str,
    pub verdict: &'static str,
    pub items: Vec<Item>,
    pub checked_at: String,
}

/// Messages needed before the reporting interval is judged.
const INTERVAL_SAMPLE: usize = 3;

/// What a rejection code means, in Vietnamese, for the installer's page.
fn code_vi(code: ioc_contract::RejectCode) -> &'static str {
    use ioc_contract::RejectCode as C;
    match code {
        C::PayloadTooLarge => "tin nhắn quá lớn",
        C::BadTopic => "chủ đề (topic) không hợp lệ",
        C::Malformed => "sai định dạng, không đọc được",
        C::MissingTs => "thiếu thời điểm đo (ts)",
        C::InvalidTs => "thời điểm đo không hợp lệ",
        C::InvalidField => "trường dữ liệu không hợp lệ",
        C::NoValues => "không có giá trị đo nào",
        C::UnknownDevice => "thiết bị chưa đăng ký",
        C::UnknownMetric => "thông số không có trong danh mục",
        C::NotANumber => "giá trị không phải là số",
        C::UnknownUnit => "đơn vị đo không xác định",
        C::WrongFormat => "khác định dạng đã đăng ký cho thiết bị",
        C::NotConfigured => "thiếu cấu hình cần để đọc tin nhắn",
        C::RateLimited => "gửi quá nhanh, vượt giới hạn tần suất",
        C::Decommissioned => "thiết bị đã ngừng sử dụng",
    }
}

fn item(item: &'static str, status: Status, (evidence, evidence_vi): (String, String)) -> Item {
    Item {
        item,
        status,
        evidence,
        evidence_vi,
    }
}

/// The same evidence in English and Vietnamese.
fn both(en: impl Into<String>, vi: impl Into<String>) -> (String, String) {
    (en.into(), vi.into())
}

/// The checklist of `device`. `connection` is `None` when the broker reports no connections;
/// `login` is when it last logged in on a broker that reports only that (`ioc up`'s).
pub fn checklist(
    device: &Device,
    activity: &DeviceActivity,
    connection: Option<Option<ClientState>>,
    login: Option<i64>,
    config: &ApiConfig,
    now: i64,
) -> Checklist {
    let id = &device.device_id;
    let last_seen = activity.last_seen.map(format_ms);
    let mut items = Vec::new();

    items.push(match (connection, &last_seen) {
        (Some(Some(c)), _) if c.is_connected() => {
            let at = format_ms(c.connected_at.unwrap_or_default());
            let from = c.address.as_deref().unwrap_or("?");
            let user = c.username.as_deref();
            item(
                "connected",
                Status::Pass,
                both(
                    format!(
                        "client {id} connected at {at} from {from}{}",
                        user.map(|u| format!(" as user {u}")).unwrap_or_default()
                    ),
                    format!(
                        "thiết bị {id} kết nối lúc {at} từ {from}{}",
                        user.map(|u| format!(", tài khoản {u}")).unwrap_or_default()
                    ),
                ),
            )
        }
        // Gone since its latest message (or before any): a message from it since then would
        // mean it is back (through a gateway, say).
        (Some(Some(c)), _) if c.disconnected_at > activity.last_seen => {
            let at = format_ms(c.disconnected_at.unwrap_or_default());
            item(
                "connected",
                Status::Fail,
                both(
                    format!("client {id} disconnected at {at}; check power, network and credentials"),
                    format!("thiết bị {id} mất kết nối lúc {at}; kiểm tra nguồn điện, mạng và tài khoản"),
                ),
            )
        }
        (_, Some(last)) => item(
            "connected",
            Status::Pass,
            both(
                format!("its messages arrive (latest received {last})"),
                format!("tin nhắn đang đến (mới nhất lúc {last})"),
            ),
        ),
        (Some(_), None) => item(
            "connected",
            Status::Pending,
            both(
                format!("no MQTT client with id {id} has connected yet"),
                format!("chưa có thiết bị MQTT nào với mã {id} kết nối"),
            ),
        ),
        (None, None) if login.is_some() => {
            let at = format_ms(login.unwrap_or_default());
            item(
                "connected",
                Status::Pass,
                both(
                    format!("client {id} logged in at {at} (this broker reports logins, not disconnections)"),
                    format!("thiết bị {id} đăng nhập lúc {at} (broker này chỉ báo đăng nhập, không báo mất kết nối)"),
                ),
            )
        }
        (None, None) => item(
            "connected",
            Status::Pending,
            both(
                "no login or message yet (this broker reports logins, not disconnections)",
                "chưa đăng nhập hay gửi tin nhắn nào (broker này chỉ báo đăng nhập, không báo mất kết nối)",
            ),
        ),
    });

    let last = activity.last_message.as_ref();
    items.push(match (activity.first_seen, &last_seen) {
        (Some(first), Some(latest)) => item(
            "first_message",
            Status::Pass,
            both(
                format!("first received {}; latest {latest}", format_ms(first)),
                format!(
                    "nhận lần đầu lúc {}; mới nhất lúc {latest}",
                    format_ms(first)
                ),
            ),
        ),
        _ => item("first_message", Status::Pending, no_message()),
    });

    items.push(match last {
        None => item("decoding", Status::Pending, no_message()),
        Some(m) if m.rejections.is_empty() => {
            let (at, n) = (format_ms(m.received_at), m.readings.len());
            item(
                "decoding",
                Status::Pass,
                both(
                    format!("latest message ({at}) decoded into {n} readings"),
                    format!("tin nhắn mới nhất ({at}) giải mã được {n} giá trị"),
                ),
            )
        }
        Some(m) => {
            // The decoders' reasons are English; in Vietnamese each is named first, the
            // decoder's detail kept beside it.
            let on = |metric: &Option<String>| {
                metric
                    .as_ref()
                    .map(|m| format!("{m}: "))
                    .unwrap_or_default()
            };
            let reasons: Vec<String> = m
                .rejections
                .iter()
                .map(|r| format!("{}{}: {}", on(&r.metric), r.code.as_str(), r.reason))
                .collect();
            let reasons_vi: Vec<String> = m
                .rejections
                .iter()
                .map(|r| {
                    format!(
                        "{}{} ({}: {})",
                        on(&r.metric),
                        code_vi(r.code),
                        r.code.as_str(),
                        r.reason
                    )
                })
                .collect();
            let at = format_ms(m.received_at);
            item(
                "decoding",
                Status::Fail,
                both(
                    format!("latest message ({at}) rejected: {}", reasons.join("; ")),
                    format!(
                        "tin nhắn mới nhất ({at}) bị từ chối: {}",
                        reasons_vi.join("; ")
                    ),
                ),
            )
        }
    });

    items.push(match last.map(|m| &m.readings) {
        None => item("values_in_range", Status::Pending, no_message()),
        Some(readings) if readings.is_empty() => item(
            "values_in_range",
            Status::Pending,
            both(
                "the latest message gave no values",
                "tin nhắn mới nhất không có giá trị nào",
            ),
        ),
        Some(readings) => {
            let show = |r: &ioc_contract::Reading| {
                let channel = if r.channel.is_empty() {
                    String::new()
                } else {
                    format!("[{}]", r.channel)
                };
                format!("{}{channel}={} {}", r.metric, r.value, r.unit)
            };
            let bad: Vec<&ioc_contract::Reading> = readings
                .iter()
                .filter(|r| r.quality != Quality::Good)
                .collect();
            if bad.is_empty() {
                let all = readings.iter().map(show).collect::<Vec<_>>().join(", ");
                item("values_in_range", Status::Pass, both(all.clone(), all))
            } else {
                let quality_vi = |q: Quality| match q {
                    Quality::Good => "tốt",
                    Quality::Suspect => "đáng ngờ",
                    Quality::Bad => "sai",
                };
                item(
                    "values_in_range",
                    Status::Fail,
                    both(
                        bad.iter()
                            .map(|r| format!("{} is {}: {}", show(r), r.quality, r.quality_reason))
                            .collect::<Vec<_>>()
                            .join("; "),
                        bad.iter()
                            .map(|r| {
                                format!(
                                    "{} {}: {}",
                                    show(r),
                                    quality_vi(r.quality),
                                    r.quality_reason
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                )
            }
        }
    });

    let mut missing = Vec::new();
    let (lat, lon) = (device.lat, device.lon);
    if !config.in_service_area(lat, lon) {
        let [s, w, n, e] = config.service_area;
        missing.push(both(
            format!("lat {lat}, lon {lon} is outside the service area ({s}..{n} N, {w}..{e} E)"),
            format!("vĩ độ {lat}, kinh độ {lon} nằm ngoài vùng phục vụ ({s}..{n} B, {w}..{e} Đ)"),
        ));
    }
    if device.commune.is_none() {
        missing.push(both("commune not set", "chưa có xã/phường"));
    }
    let commune = device.commune.as_deref().unwrap_or_default();
    items.push(if missing.is_empty() {
        item(
            "location_set",
            Status::Pass,
            both(
                format!("lat {lat}, lon {lon}, {commune}"),
                format!("vĩ độ {lat}, kinh độ {lon}, {commune}"),
            ),
        )
    } else {
        let en: Vec<&str> = missing.iter().map(|m| m.0.as_str()).collect();
        let vi: Vec<&str> = missing.iter().map(|m| m.1.as_str()).collect();
        item(
            "location_set",
            Status::Fail,
            both(
                format!(
                    "{} (correct it with PATCH /api/v1/devices/{id})",
                    en.join("; ")
                ),
                format!("{} (sửa bằng PATCH /api/v1/devices/{id})", vi.join("; ")),
            ),
        )
    });

    let expected = device.expected_interval_s;
    let mut recent: Vec<i64> = activity.recent.iter().map(|(at, _)| *at).collect();
    recent.sort_unstable();
    items.push(if recent.len() < INTERVAL_SAMPLE {
        let n = recent.len();
        item(
            "reporting_interval",
            Status::Pending,
            both(
                format!("{n} of the {INTERVAL_SAMPLE} messages needed to judge (expected every {expected} s)"),
                format!("đã có {n} trong {INTERVAL_SAMPLE} tin nhắn cần để đánh giá (dự kiến mỗi {expected} giây)"),
            ),
        )
    } else {
        let mut gaps: Vec<f64> = recent
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1000.0)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let median = gaps[gaps.len() / 2];
        let silent = (now - recent[recent.len() - 1]) as f64 / 1000.0;
        let n = recent.len();
        if silent > 3.0 * expected {
            item(
                "reporting_interval",
                Status::Fail,
                both(
                    format!("silent for {silent:.0} s (expected every {expected} s)"),
                    format!("không gửi gì trong {silent:.0} giây (dự kiến mỗi {expected} giây)"),
                ),
            )
        } else if (0.5 * expected..=1.5 * expected).contains(&median) {
            item(
                "reporting_interval",
                Status::Pass,
                both(
                    format!("median gap {median:.1} s over the latest {n} messages (expected {expected} s)"),
                    format!("khoảng cách trung vị {median:.1} giây qua {n} tin nhắn gần nhất (dự kiến {expected} giây)"),
                ),
            )
        } else {
            item(
                "reporting_interval",
                Status::Fail,
                both(
                    format!("median gap {median:.1} s over the latest {n} messages, expected {expected} s: check the device's reporting period or correct expected_interval_s"),
                    format!("khoảng cách trung vị {median:.1} giây qua {n} tin nhắn gần nhất, dự kiến {expected} giây: kiểm tra chu kỳ gửi của thiết bị hoặc sửa expected_interval_s"),
                ),
            )
        }
    });

    let verdict = if items.iter().all(|i| i.status == Status::Pass) {
        "ready"
    } else if items.iter().any(|i| i.status == Status::Fail) {
        "failing"
    } else {
        "in_progress"
    };
    Checklist {
        device_id: id.clone(),
        device_status: device.status.as_str(),
        verdict,
        items,
        checked_at: format_ms(now),
    }
}

fn no_message() -> (String, String) {
    both("no message yet", "chưa có tin nhắn")
}

pub async fn commissioning(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Checklist>> {
    authorize(&state, bearer(&headers), Permission::ReadTelemetry)?;
    let device = state.registry.get(&id).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {id:?}"),
        )
    })?;
    Ok(Json(current(&state, &device)))
}

/// The checklist of `device` now, from what this API process has seen.
pub fn current(state: &AppState, device: &Device) -> Checklist {
    let activity = state.activity.get(&device.device_id).unwrap_or_default();
    let seen = state.connections.get(&device.device_id);
    let (connection, login) = if state.connections.reported {
        (Some(seen), None)
    } else {
        (None, seen.and_then(|c| c.connected_at))
    };
    checklist(
        device,
        &activity,
        connection,
        login,
        &state.config,
        now_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{MessageOutcome, Rejection};
    use ioc_contract::{Reading, RejectCode};

    fn config() -> ApiConfig {
        ioc_config::load_str(None, Vec::new()).unwrap().api
    }

    fn device() -> Device {
        Device {
            device_id: "aq-1".into(),
            lat: 12.68,
            lon: 108.05,
            expected_interval_s: 60.0,
            commune: Some("Phường Tân Lập".into()),
            ..Default::default()
        }
    }

    fn reading(value: f64, quality: Quality, reason: &str) -> Reading {
        Reading {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: "pm25".into(),
            ts: 0,
            value,
            unit: "µg/m³".into(),
            interval_s: None,
            quality,
            quality_reason: reason.into(),
            received_at: 0,
            message_id: "m".into(),
        }
    }

    fn times(at: &[i64]) -> std::collections::VecDeque<(i64, String)> {
        at.iter().map(|t| (*t, format!("m{t}"))).collect()
    }

    fn status(list: &Checklist, name: &str) -> (Status, String) {
        let i = list.items.iter().find(|i| i.item == name).unwrap();
        (i.status, i.evidence.clone())
    }

    #[test]
    fn nothing_yet_is_pending_and_a_good_device_becomes_ready() {
        let list = checklist(
            &device(),
            &DeviceActivity::default(),
            Some(None),
            None,
            &config(),
            0,
        );
        assert_eq!(list.verdict, "in_progress");
        assert_eq!(status(&list, "location_set").0, Status::Pass);
        for name in [
            "connected",
            "first_message",
            "decoding",
            "values_in_range",
            "reporting_interval",
        ] {
            assert_eq!(status(&list, name).0, Status::Pending, "{name}");
        }
        let now = 1_000_000;
        let activity = DeviceActivity {
            first_seen: Some(now - 180_000),
            last_seen: Some(now - 1_000),
            recent: times(&[now - 181_000, now - 121_000, now - 62_000, now - 1_000]),
            last_rejection: None,
            last_message: Some(MessageOutcome {
                message_id: "m".into(),
                received_at: now - 1_000,
                readings: vec![reading(12.5, Quality::Good, "")],
                rejections: vec![],
            }),
        };
        let list = checklist(&device(), &activity, None, None, &config(), now);
        assert_eq!(list.verdict, "ready", "{list:?}");
        assert!(status(&list, "values_in_range")
            .1
            .contains("pm25=12.5 µg/m³"));
        assert!(
            status(&list, "reporting_interval")
                .1
                .contains("median gap 60.0 s"),
            "{list:?}"
        );
    }

    #[test]
    fn a_faulty_device_shows_the_failing_item_and_its_reason() {
        let now = 1_000_000;
        let mut activity = DeviceActivity {
            first_seen: Some(now - 10_000),
            last_seen: Some(now - 1_000),
            recent: times(&[now - 601_000, now - 301_000, now - 1_000]),
            last_rejection: None,
            last_message: Some(MessageOutcome {
                message_id: "m".into(),
                received_at: now - 1_000,
                readings: vec![reading(-40.0, Quality::Bad, "below the physical range")],
                rejections: vec![Rejection {
                    at: now - 1_000,
                    code: RejectCode::UnknownMetric,
                    reason: "metric \"xyz\" is not in the catalogue".into(),
                    metric: Some("xyz".into()),
                }],
            }),
        };
        let mut far = device();
        far.lat = 21.0;
        far.commune = None;
        let list = checklist(&far, &activity, None, None, &config(), now);
        assert_eq!(list.verdict, "failing");
        let (s, evidence) = status(&list, "decoding");
        assert_eq!(s, Status::Fail);
        assert!(evidence.contains("xyz: unknown_metric"), "{evidence}");
        let decoding_vi = &list
            .items
            .iter()
            .find(|i| i.item == "decoding")
            .unwrap()
            .evidence_vi;
        assert!(
            decoding_vi.contains("xyz: thông số không có trong danh mục (unknown_metric: "),
            "{decoding_vi}"
        );
        let (s, evidence) = status(&list, "values_in_range");
        assert_eq!(s, Status::Fail);
        assert!(
            evidence.contains("pm25=-40 µg/m³ is bad: below the physical range"),
            "{evidence}"
        );
        let (s, evidence) = status(&list, "location_set");
        assert_eq!(s, Status::Fail);
        assert!(
            evidence.contains("outside the service area") && evidence.contains("commune not set")
        );
        // The same in Vietnamese, for the installer's page.
        let vi = &list
            .items
            .iter()
            .find(|i| i.item == "location_set")
            .unwrap()
            .evidence_vi;
        assert!(
            vi.contains("nằm ngoài vùng phục vụ") && vi.contains("chưa có xã/phường"),
            "{vi}"
        );
        let values = list
            .items
            .iter()
            .find(|i| i.item == "values_in_range")
            .unwrap();
        assert!(
            values.evidence_vi.contains("pm25=-40 µg/m³ sai"),
            "{}",
            values.evidence_vi
        );
        let (s, evidence) = status(&list, "reporting_interval");
        assert_eq!(s, Status::Fail);
        assert!(evidence.contains("median gap 300.0 s"), "{evidence}");
        // Gone quiet: silent for more than three intervals.
        activity.recent = times(&[now - 900_000, now - 840_000, now - 780_000]);
        let list = checklist(&device(), &activity, None, None, &config(), now);
        assert!(status(&list, "reporting_interval")
            .1
            .starts_with("silent for 780 s"));
        // A broker that saw the client leave, and no message since the API started.
        let gone = ClientState {
            connected_at: Some(5),
            disconnected_at: Some(9),
            ..Default::default()
        };
        let list = checklist(
            &device(),
            &DeviceActivity::default(),
            Some(Some(gone)),
            None,
            &config(),
            now,
        );
        assert_eq!(status(&list, "connected").0, Status::Fail);
    }

    #[test]
    fn on_a_broker_that_reports_only_logins_a_login_counts_as_connected() {
        let quiet = DeviceActivity::default();
        let list = checklist(&device(), &quiet, None, None, &config(), 10);
        assert_eq!(status(&list, "connected").0, Status::Pending);
        let list = checklist(&device(), &quiet, None, Some(5), &config(), 10);
        let (verdict, evidence) = status(&list, "connected");
        assert_eq!(verdict, Status::Pass);
        assert!(
            evidence.starts_with("client aq-1 logged in at"),
            "{evidence}"
        );
    }
}
