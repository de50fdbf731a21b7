//! The installer's live view of a device: for a device being commissioned or serviced, one
//! record on the `tap` topic per message, saying what ingest made of it (the bytes as received,
//! its readings, its rejections with their reasons).
//!
//! Built from the records ingest already made, read back: this costs something only for the
//! few devices in those states, and a look-up of one atomic counter for every other message.

use base64::Engine as _;
use ioc_contract::{DeadLetter, Device, ReadingBatch, TapRecord, TapRejection};

use crate::{OutRecord, OutTopics};

/// The tap record of one message from `device`, made of `records` (what ingest produces for
/// it). `withhold` keeps the bytes out (camera messages may hold plates).
pub(crate) fn record(
    device: &Device,
    topic: &str,
    payload: &[u8],
    received_at: i64,
    records: &[OutRecord],
    topics: &OutTopics,
    withhold: bool,
) -> OutRecord {
    let mut tap = TapRecord {
        device_id: device.device_id.clone(),
        topic: topic.to_string(),
        received_at,
        message_id: crate::decode::message_id(topic, payload),
        raw_text: None,
        raw_base64: None,
        withheld: None,
        readings: Vec::new(),
        rejections: Vec::new(),
    };
    if withhold {
        tap.withheld = Some("camera messages may hold licence plates".into());
    } else {
        match std::str::from_utf8(payload) {
            Ok(text) => tap.raw_text = Some(text.to_string()),
            Err(_) => {
                tap.raw_base64 = Some(base64::engine::general_purpose::STANDARD.encode(payload))
            }
        }
    }
    for r in records {
        if r.topic == topics.readings {
            if let Ok(batch) = serde_json::from_slice::<ReadingBatch>(&r.payload) {
                tap.readings.extend(batch.readings);
            }
        } else if r.topic == topics.deadletter || r.topic == topics.quarantine {
            if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&r.payload) {
                tap.rejections.push(TapRejection {
                    code: letter.code,
                    reason: letter.reason,
                    metric: letter.metric,
                });
            }
        }
    }
    OutRecord {
        topic: topics.tap.clone(),
        key: device.device_id.clone(),
        payload: serde_json::to_vec(&tap).expect("tap records serialize"),
        readings: 0,
    }
}
