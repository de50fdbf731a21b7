//! What a device's message becomes, with no socket in sight: the decoders, the routes, and the
//! [`Ingestor`] that turns one MQTT message into the records to produce. Ingest runs it on what
//! the broker delivers; the API runs it again on dead letters it replays, and reads the routes
//! to grant a new device its topics. Both stages use this crate; neither imports the other.
//!
//! - Decoders, pure functions of the bytes and a context: [`decode`] (device protocol v1),
//!   [`senml`] (RFC 8428), [`flat`] (vendor flat JSON and its profiles), [`tt10`] (station
//!   files), [`counter`] (per-lane traffic counts), [`camera`] (AI camera violations, and the
//!   plate pseudonyms).
//! - [`Format`]: the payload formats by name; [`route`]: which topic carries which format and
//!   names which device (`ingest.routes`).
//! - [`Ingestor`]: what one message becomes (route, registry look-up, decode, pseudonymize);
//!   [`limit`]: each device's message rate; [`tap`]: the record of a device being commissioned.

pub mod camera;
pub mod counter;
pub mod decode;
pub mod flat;
pub mod limit;
pub mod route;
pub mod senml;
pub mod tap;
pub mod tt10;

use std::sync::Arc;

use base64::Engine;
use ioc_config::IngestConfig;
use ioc_contract::readings_json::{self, ReadingRef};
use ioc_contract::registry::RegistryView;
use ioc_contract::{DeadLetter, Device, DeviceStatus, RejectCode, Topics};

use crate::camera::PlateKey;
use crate::decode::{decode_v1, DecodeContext, MessageId, Rejection};
use crate::flat::Profiles;
use crate::route::{DeviceRef, Router};

/// A payload format ingest decodes, by the name `ingest.routes`, a device's `decoder` and
/// `ioc decode --format` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Device protocol v1.
    IocJson,
    /// RFC 8428 SenML JSON.
    Senml,
    /// Flat JSON of cheap gateways, device found by an id in the payload ([`flat`]).
    VendorFlat,
    /// A station file (Circular 10/2021 practice).
    Tt10Station,
    /// Per-lane interval counts.
    TrafficCounter,
    /// AI camera violations ([`camera`]): events, not readings.
    CameraEvent,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::IocJson,
        Format::Senml,
        Format::VendorFlat,
        Format::Tt10Station,
        Format::TrafficCounter,
        Format::CameraEvent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::IocJson => "ioc-json",
            Format::Senml => "senml",
            Format::VendorFlat => "vendor-flat",
            Format::Tt10Station => "tt10-station",
            Format::TrafficCounter => "traffic-counter",
            Format::CameraEvent => "camera-event",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Decodes one payload of `device_id` into readings: pure, no I/O. `profile` is used by
    /// `vendor-flat` only. Camera events are not readings: see [`camera::decode_camera`].
    pub fn decode(
        self,
        device_id: &str,
        payload: &[u8],
        message_id: &str,
        ctx: &DecodeContext,
        profile: &flat::Profile,
    ) -> Result<decode::Decoded, decode::Rejection> {
        match self {
            Format::IocJson => decode_v1(device_id, payload, message_id, ctx),
            Format::Senml => senml::decode_senml(device_id, payload, message_id, ctx),
            Format::VendorFlat => flat::decode_flat(device_id, payload, message_id, ctx, profile),
            Format::Tt10Station => tt10::decode_tt10(device_id, payload, message_id, ctx),
            Format::TrafficCounter => counter::decode_counter(device_id, payload, message_id, ctx),
            Format::CameraEvent => {
                camera::decode_camera(payload, ctx).map(|_| decode::Decoded::default())
            }
        }
    }
}

/// One bus record to produce for a message.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Shared, not copied per record.
    pub topic: Arc<str>,
    pub key: String,
    pub payload: Vec<u8>,
    /// Readings it carries (0 for any other record), for counting.
    pub readings: usize,
}

/// What one MQTT message became.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub records: Vec<OutRecord>,
    pub rejections: Vec<RejectCode>,
}

/// Everything between an MQTT message and the records it becomes: routing, the registry
/// look-up, decoding, pseudonymization. Pure apart from reading the registry.
#[derive(Debug, Clone)]
pub struct Ingestor {
    router: Router,
    profiles: Profiles,
    plates: Option<PlateKey>,
    limiter: Arc<limit::RateLimiter>,
    registry: RegistryView,
    topics: OutTopics,
}

/// The topics ingest produces to, each name shared by the records for it.
#[derive(Debug, Clone)]
pub struct OutTopics {
    pub readings: Arc<str>,
    pub deadletter: Arc<str>,
    pub quarantine: Arc<str>,
    pub events: Arc<str>,
    pub evidence: Arc<str>,
    pub tap: Arc<str>,
}

impl OutTopics {
    fn new(t: &Topics) -> OutTopics {
        OutTopics {
            readings: t.readings.as_str().into(),
            deadletter: t.deadletter.as_str().into(),
            quarantine: t.quarantine.as_str().into(),
            events: t.events.as_str().into(),
            evidence: t.evidence.as_str().into(),
            tap: t.tap.as_str().into(),
        }
    }
}

impl Ingestor {
    pub fn new(
        config: &IngestConfig,
        registry: RegistryView,
        topics: Topics,
    ) -> Result<Ingestor, String> {
        Ok(Ingestor {
            router: Router::new(&config.routes),
            profiles: Profiles::new(&config.vendor_profiles)?,
            plates: PlateKey::new(&config.plate_secret),
            limiter: Arc::new(limit::RateLimiter::new(
                config.device_rate_limit,
                config.device_burst,
            )),
            registry,
            topics: OutTopics::new(&topics),
        })
    }

    /// The MQTT filters ingest subscribes to.
    pub fn filters(&self) -> Vec<String> {
        self.router.filters()
    }

    /// Turns one MQTT message into the records to produce, plus, for a device being
    /// commissioned or serviced, its record on the `tap` topic ([`tap`]).
    pub fn process(&self, topic: &str, payload: &[u8], ctx: &DecodeContext) -> Outcome {
        let mut outcome = self.decide(topic, payload, ctx);
        if self.registry.tapped() > 0 {
            // Every record of a message is keyed by its device, when it has one.
            let device = outcome
                .records
                .first()
                .filter(|r| !r.key.is_empty())
                .and_then(|r| self.registry.get(&r.key))
                .filter(|d| d.status.is_tapped());
            if let Some(device) = device {
                let withhold = is_camera(&device) || self.router.camera_like(topic);
                let record = tap::record(
                    &device,
                    topic,
                    payload,
                    ctx.received_at,
                    &outcome.records,
                    &self.topics,
                    withhold,
                );
                outcome.records.push(record);
            }
        }
        outcome
    }

    /// What one MQTT message becomes: its records on the bus and its rejections.
    fn decide(&self, topic: &str, payload: &[u8], ctx: &DecodeContext) -> Outcome {
        // The message id, hashed when first needed.
        let id = std::cell::OnceCell::new();
        let id_of = || *id.get_or_init(|| MessageId::of(topic, payload));
        let mut outcome = Outcome::default();
        let route = self.router.route(topic);
        // A camera message may hold a plate: whatever is wrong with it (an invalid id in its
        // topic, a camera device on another format's topic), it goes to quarantine.
        // (Decided when a letter is written: a message that becomes readings never asks.)
        let camera_device = std::cell::Cell::new(false);
        let reject_to = || {
            if camera_device.get() || self.router.camera_like(topic) {
                &self.topics.quarantine
            } else {
                &self.topics.deadletter
            }
        };
        let named = route.and_then(|(_, d)| d.named());
        let letter = |outcome: &mut Outcome,
                      code: RejectCode,
                      reason: String,
                      device: Option<&str>,
                      external_id: Option<String>,
                      metric: Option<String>| {
            outcome.rejections.push(code);
            let letter = DeadLetter {
                code,
                reason,
                topic: topic.to_string(),
                received_at: ctx.received_at,
                message_id: id_of().as_str().to_string(),
                device_id: device.map(str::to_string),
                external_id,
                metric,
                raw_base64: base64::engine::general_purpose::STANDARD.encode(payload),
            };
            outcome.records.push(OutRecord {
                topic: reject_to().clone(),
                key: device.unwrap_or("").to_string(),
                payload: serde_json::to_vec(&letter).expect("dead letters serialize"),
                readings: 0,
            });
        };

        let Some((format, device_ref)) = route else {
            letter(
                &mut outcome,
                RejectCode::BadTopic,
                format!(
                    "topic {topic:?} matches none of ingest.routes ({}) with a valid id",
                    self.router.patterns().join(", ")
                ),
                None,
                None,
                None,
            );
            return outcome;
        };
        let device = match self.resolve(format, device_ref, payload, ctx) {
            Ok(device) => device,
            Err(Unresolved::Rejected(r)) => {
                letter(&mut outcome, r.code, r.reason, named, None, None);
                return outcome;
            }
            Err(Unresolved::Unknown { kind, value }) => {
                let reason = match &kind {
                    Some(kind) => format!("no registered device has {kind} {value:?}"),
                    None => format!("device {value:?} is not registered"),
                };
                let external = kind.as_ref().map(|k| format!("{k}:{value}"));
                let device = kind.is_none().then_some(value.as_str());
                letter(
                    &mut outcome,
                    RejectCode::UnknownDevice,
                    reason,
                    device,
                    external,
                    None,
                );
                return outcome;
            }
        };
        let device_id = device.device_id.as_str();
        if is_camera(&device) {
            camera_device.set(true);
        }
        if device.status == DeviceStatus::Decommissioned {
            letter(
                &mut outcome,
                RejectCode::Decommissioned,
                format!("device {device_id} is decommissioned; its messages are not accepted"),
                Some(device_id),
                None,
                None,
            );
            return outcome;
        }
        if !self.limiter.admit(device_id, ctx.received_at) {
            letter(
                &mut outcome,
                RejectCode::RateLimited,
                format!(
                    "device {device_id} sends faster than {}; this message was not decoded",
                    self.limiter.describe()
                ),
                Some(device_id),
                None,
                None,
            );
            return outcome;
        }
        if let Some(expected) = device.decoder.as_deref().filter(|d| *d != format.name()) {
            letter(
                &mut outcome,
                RejectCode::WrongFormat,
                format!(
                    "device {device_id} is registered as speaking {expected}, but this topic carries {}",
                    format.name()
                ),
                Some(device_id),
                None,
                None,
            );
            return outcome;
        }
        let profile = match device.vendor_profile.as_deref() {
            None => self.profiles.default_profile(),
            Some(name) => match self.profiles.get(name) {
                Some(p) => p,
                None => {
                    letter(
                        &mut outcome,
                        RejectCode::NotConfigured,
                        format!("device {device_id} names vendor profile {name:?}, which ingest.vendor_profiles does not define"),
                        Some(device_id),
                        None,
                        None,
                    );
                    return outcome;
                }
            },
        };
        if format == Format::CameraEvent {
            match self.camera_records(&device, device_ref, payload, id_of().as_str(), ctx) {
                Ok(records) => outcome.records.extend(records),
                Err(r) => letter(&mut outcome, r.code, r.reason, Some(device_id), None, None),
            }
            return outcome;
        }
        // v1, the busiest format, goes from the payload's borrowed strings to the record's bytes
        // without owned readings in between; the others build their readings first.
        let message_id = id_of();
        let decoded = match format {
            Format::IocJson => decode::decode_v1_borrowed(payload, ctx).map(|m| {
                let readings = m.accepted.iter().map(|a| ReadingRef {
                    device_id,
                    channel: &m.channel,
                    metric: a.spec.name,
                    ts: m.ts,
                    value: a.value,
                    value_json: a.json,
                    unit: a.spec.unit,
                    interval_s: m.interval_s,
                    quality: a.quality,
                    quality_reason: &a.quality_reason,
                    received_at: ctx.received_at,
                    message_id: message_id.as_str(),
                    spec: Some(a.spec),
                });
                (
                    readings_json::to_vec(readings),
                    m.accepted.len(),
                    m.rejected_values,
                )
            }),
            _ => format
                .decode(device_id, payload, message_id.as_str(), ctx, profile)
                .map(|d| {
                    (
                        readings_json::to_vec(d.readings.iter().map(ReadingRef::from)),
                        d.readings.len(),
                        d.rejected_values,
                    )
                }),
        };
        match decoded {
            Err(r) => letter(&mut outcome, r.code, r.reason, Some(device_id), None, None),
            Ok((payload, n, rejected_values)) => {
                if n > 0 {
                    outcome.records.push(OutRecord {
                        topic: self.topics.readings.clone(),
                        key: device_id.to_string(),
                        payload,
                        readings: n,
                    });
                }
                for r in rejected_values {
                    letter(
                        &mut outcome,
                        r.code,
                        r.reason,
                        Some(device_id),
                        None,
                        Some(r.metric),
                    );
                }
            }
        }
        outcome
    }

    /// Finds the registered device a message comes from.
    fn resolve(
        &self,
        format: Format,
        device_ref: DeviceRef<'_>,
        payload: &[u8],
        ctx: &DecodeContext,
    ) -> Result<Arc<Device>, Unresolved> {
        let unknown = |kind: Option<&str>, value: &str| Unresolved::Unknown {
            kind: kind.map(str::to_string),
            value: value.to_string(),
        };
        match device_ref {
            DeviceRef::Id(id) => self.registry.get(id).ok_or_else(|| unknown(None, id)),
            DeviceRef::External { kind, value } => self
                .registry
                .by_external_id(kind, value)
                .or_else(|| {
                    // A device id in place of the external id, only for a device that has no
                    // such id and may speak this format: never any device by its name.
                    self.registry
                        .get(value)
                        .filter(|d| !d.external_ids.contains_key(kind) && may_speak(d, format))
                })
                .ok_or_else(|| unknown(Some(kind), value)),
            DeviceRef::InPayload if format == Format::VendorFlat => {
                // The default profile first (one parse in the common case), then the others.
                let default = self.profiles.default_profile();
                let mut first_error = None;
                let mut first_id = None;
                for p in
                    std::iter::once(default).chain(self.profiles.all().filter(|p| *p != default))
                {
                    match flat::external_id(payload, p, ctx) {
                        Ok(value) => {
                            // Only a device that follows this profile: another vendor's payload
                            // naming a registered id under its own key is not that device's.
                            let follows = |d: &Arc<Device>| {
                                d.vendor_profile.as_deref().unwrap_or(flat::DEFAULT_PROFILE)
                                    == p.name
                            };
                            if let Some(d) = self
                                .registry
                                .by_external_id(&p.id_kind, &value)
                                .filter(follows)
                            {
                                return Ok(d);
                            }
                            first_id.get_or_insert((p.id_kind.clone(), value));
                        }
                        Err(r) => {
                            first_error.get_or_insert(r);
                        }
                    }
                }
                match (first_id, first_error) {
                    (Some((kind, value)), _) => Err(Unresolved::Unknown {
                        kind: Some(kind),
                        value,
                    }),
                    (None, Some(r)) => Err(Unresolved::Rejected(r)),
                    (None, None) => unreachable!("at least the default profile was tried"),
                }
            }
            DeviceRef::InPayload => Err(Unresolved::Rejected(Rejection::new(
                RejectCode::BadTopic,
                format!(
                    "the route of this topic names no device, and {} payloads do not either",
                    format.name()
                ),
            ))),
        }
    }

    /// A camera message's event (plate pseudonymized) and evidence records.
    fn camera_records(
        &self,
        device: &Device,
        device_ref: DeviceRef<'_>,
        payload: &[u8],
        message_id: &str,
        ctx: &DecodeContext,
    ) -> Result<[OutRecord; 2], Rejection> {
        let Some(plates) = &self.plates else {
            return Err(Rejection::new(
                RejectCode::NotConfigured,
                "ingest.plate_secret is not set, so plates cannot be pseudonymized; camera events are quarantined",
            ));
        };
        let e = camera::decode_camera(payload, ctx)?;
        // The camera the registry knows the device as; else the id its topic gave.
        let camera = device
            .external_ids
            .get("camera_id")
            .map(String::as_str)
            .or(device_ref.named());
        if camera.is_some_and(|c| c != e.camera_id) {
            return Err(Rejection::new(
                RejectCode::InvalidField,
                format!(
                    "camera_id differs from the camera this topic and device {} name",
                    device.device_id
                ),
            ));
        }
        let pseudonym = plates.pseudonym(&e.plate);
        let mut attributes = serde_json::Map::new();
        attributes.insert("camera_id".into(), e.camera_id.clone().into());
        attributes.insert("plate_pseudonym".into(), pseudonym.clone().into());
        if let Some(s) = e.speed_kmh {
            attributes.insert("speed_kmh".into(), s.into());
        }
        if let Some(l) = e.lane {
            attributes.insert("lane".into(), l.into());
        }
        if !e.suspect_reason.is_empty() {
            attributes.insert("quality".into(), "suspect".into());
            attributes.insert("quality_reason".into(), e.suspect_reason.clone().into());
        }
        let event = ioc_contract::Event {
            event_id: e.event_id.clone(),
            device_id: device.device_id.clone(),
            ts: e.ts,
            kind: e.kind.clone(),
            attributes,
            received_at: ctx.received_at,
            message_id: message_id.to_string(),
        };
        let evidence = ioc_contract::Evidence {
            event_id: e.event_id,
            device_id: device.device_id.clone(),
            camera_id: e.camera_id,
            ts: e.ts,
            kind: e.kind,
            plate: e.plate,
            plate_pseudonym: pseudonym,
            image_ref: e.image_ref,
            received_at: ctx.received_at,
            message_id: message_id.to_string(),
        };
        let record = |topic: &Arc<str>, payload: Vec<u8>| OutRecord {
            topic: topic.clone(),
            key: device.device_id.clone(),
            payload,
            readings: 0,
        };
        Ok([
            record(
                &self.topics.events,
                serde_json::to_vec(&event).expect("events serialize"),
            ),
            record(
                &self.topics.evidence,
                serde_json::to_vec(&evidence).expect("evidence serializes"),
            ),
        ])
    }
}

/// A camera, whose messages may hold plates.
fn is_camera(d: &Device) -> bool {
    d.decoder.as_deref() == Some(Format::CameraEvent.name()) || d.kind == "traffic_camera"
}

/// Whether a device may send `format`: its registered decoder, or with none, a format its kind
/// can speak.
pub fn may_speak(d: &Device, format: Format) -> bool {
    match d.decoder.as_deref() {
        Some(decoder) => decoder == format.name(),
        None => match format {
            Format::CameraEvent => d.kind == "traffic_camera",
            Format::Tt10Station => d.kind == "wastewater" || d.kind == "air_quality",
            _ => true,
        },
    }
}

/// Why a message's device was not found.
enum Unresolved {
    /// The payload could not even say which device it is from.
    Rejected(Rejection),
    /// It names a device (by id, or by an external id of `kind`) that is not registered.
    Unknown { kind: Option<String>, value: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_contract::{Device, ReadingBatch, RegistryEvent};

    fn topics() -> Topics {
        Topics::with_prefix("t.")
    }

    fn device(id: &str, external: Option<(&str, &str)>, decoder: Option<&str>) -> RegistryEvent {
        RegistryEvent::Registered {
            device: Device {
                device_id: id.into(),
                kind: "air_quality".into(),
                name: "a".into(),
                lat: 12.6,
                lon: 108.0,
                expected_interval_s: 60.0,
                external_ids: external
                    .map(|(k, v)| [(k.to_string(), v.to_string())].into())
                    .unwrap_or_default(),
                decoder: decoder.map(str::to_string),
                ..Default::default()
            },
        }
    }

    fn registry() -> RegistryView {
        let view = RegistryView::default();
        view.apply(device("aq-1", None, None));
        view.apply(device(
            "aqf-1",
            Some(("imei", "861234567890123")),
            Some("vendor-flat"),
        ));
        view.apply(device("ww-1", Some(("station_code", "DLK_NT_001")), None));
        view.apply(device(
            "cam-1",
            Some(("camera_id", "CAM-1")),
            Some("camera-event"),
        ));
        view
    }

    fn ingestor(plate_secret: &str) -> Ingestor {
        let mut config = ioc_config::load_str(None, Vec::new()).unwrap().ingest;
        config.plate_secret = plate_secret.into();
        Ingestor::new(&config, registry(), topics()).unwrap()
    }

    fn ctx() -> DecodeContext {
        DecodeContext {
            received_at: 1_795_680_300_000,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 1024,
            utc_offset_ms: 7 * 3_600_000,
        }
    }

    fn process(topic: &str, body: &[u8]) -> Outcome {
        ingestor("k").process(topic, body, &ctx())
    }

    fn on(outcome: &Outcome, topic: &str) -> Vec<serde_json::Value> {
        outcome
            .records
            .iter()
            .filter(|r| &*r.topic == topic)
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }

    fn letters(outcome: &Outcome) -> Vec<DeadLetter> {
        on(outcome, "t.deadletter")
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    fn set_status(ingestor: &Ingestor, id: &str, status: DeviceStatus) {
        ingestor.registry.apply(RegistryEvent::Updated {
            device_id: id.into(),
            changes: ioc_contract::DeviceChanges {
                status: Some(status),
                ..Default::default()
            },
            by: ioc_contract::Actor::admin_token(),
            at: 1,
        });
    }

    #[test]
    fn a_commissioning_device_is_tapped_and_a_decommissioned_one_refused() {
        let ingestor = ingestor("k");
        let body = br#"{"ts":1795680240000,"values":{"pm25":12.5,"xyz":1}}"#;
        let topic = "ioc/v1/devices/aq-1/telemetry";
        let plain = ingestor.process(topic, body, &ctx());
        assert!(
            on(&plain, "t.tap").is_empty(),
            "active devices are not tapped"
        );

        set_status(&ingestor, "aq-1", DeviceStatus::Commissioning);
        let out = ingestor.process(topic, body, &ctx());
        let taps = on(&out, "t.tap");
        assert_eq!(taps.len(), 1);
        let tap: ioc_contract::TapRecord = serde_json::from_value(taps[0].clone()).unwrap();
        assert_eq!(tap.raw_text.as_deref().map(str::as_bytes), Some(&body[..]));
        assert_eq!(tap.readings.len(), 1);
        assert_eq!(tap.readings[0].metric, "pm25");
        assert_eq!(tap.rejections.len(), 1);
        assert_eq!(tap.rejections[0].code, RejectCode::UnknownMetric);
        assert_eq!(tap.rejections[0].metric.as_deref(), Some("xyz"));
        assert_eq!(tap.message_id, letters(&out)[0].message_id);
        // Everything else is what it would have been.
        assert_eq!(out.records.len(), plain.records.len() + 1);

        // A camera being commissioned: tapped, its bytes withheld.
        set_status(&ingestor, "cam-1", DeviceStatus::Maintenance);
        let camera = br#"{"camera_id":"CAM-1","event_id":"e1","event_time":"2026-11-26T08:05:00+07:00","type":"red_light","plate":"47A-123.45","lane":1}"#;
        let out = ingestor.process("ioc/v1/cameras/CAM-1/events", camera, &ctx());
        let taps = on(&out, "t.tap");
        assert_eq!(taps.len(), 1);
        assert!(!taps[0].to_string().contains("123"), "{}", taps[0]);
        assert!(taps[0]["withheld"].is_string());

        set_status(&ingestor, "aq-1", DeviceStatus::Decommissioned);
        let out = ingestor.process(topic, body, &ctx());
        assert_eq!(out.rejections, vec![RejectCode::Decommissioned]);
        assert!(on(&out, "t.readings").is_empty());
    }

    #[test]
    fn vendor_flat_finds_its_device_by_imei_and_unknown_imeis_keep_the_id() {
        let body =
            br#"{"imei":"861234567890123","time":"26/11/2026 08:05:00","PM2_5":"35,2","CO":"1,2"}"#;
        let out = process("ioc/v1/gateways/gw-1/flat", body);
        let batch: ReadingBatch = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(batch.readings.len(), 2);
        assert!(batch.readings.iter().all(|r| r.device_id == "aqf-1"));
        let body = br#"{"imei":"869999999999999","time":"26/11/2026 08:05:00","PM2_5":"35,2"}"#;
        let out = process("ioc/v1/gateways/gw-1/flat", body);
        assert_eq!(out.rejections, vec![RejectCode::UnknownDevice]);
        let letter = &letters(&out)[0];
        assert_eq!(letter.external_id.as_deref(), Some("imei:869999999999999"));
        assert_eq!(letter.device_id, None);
    }

    #[test]
    fn a_flooding_device_is_dead_lettered_beyond_its_burst_and_others_pass() {
        let mut config = ioc_config::load_str(None, Vec::new()).unwrap().ingest;
        (config.device_rate_limit, config.device_burst) = (1.0, 3.0);
        let ingestor = Ingestor::new(&config, registry(), topics()).unwrap();
        let mut codes = Vec::new();
        for i in 0..10 {
            let body = format!(
                r#"{{"ts":{},"values":{{"pm25":12}}}}"#,
                1_795_680_240_000i64 + i
            );
            let out = ingestor.process("ioc/v1/devices/aq-1/telemetry", body.as_bytes(), &ctx());
            codes.push(out.rejections.first().copied());
            if i >= 3 {
                assert!(letters(&out)[0].reason.contains("faster than 1 messages/s"));
            }
        }
        assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 3);
        assert_eq!(
            codes
                .iter()
                .filter(|c| **c == Some(RejectCode::RateLimited))
                .count(),
            7
        );
        let file = b"COD\t61.5\tmg/L\t20261126085500\t00\n";
        let out = ingestor.process("ioc/v1/stations/DLK_NT_001/file", file, &ctx());
        assert!(out.rejections.is_empty(), "another device is not affected");
    }

    #[test]
    fn a_device_registered_for_one_format_is_refused_on_another() {
        let out = process(
            "ioc/v1/devices/aqf-1/telemetry",
            br#"{"ts":1795680240000,"values":{"pm25":12}}"#,
        );
        assert_eq!(out.rejections, vec![RejectCode::WrongFormat]);
    }

    #[test]
    fn camera_messages_never_reach_the_dead_letter_topic_and_no_device_is_a_camera_by_name() {
        let aq_as_camera = CAMERA.replace("CAM-1", "aq-1");
        for (topic, body, code) in [
            // A camera device on another format's topic.
            (
                "ioc/v1/devices/cam-1/telemetry",
                CAMERA,
                RejectCode::WrongFormat,
            ),
            // An id the route cannot capture.
            ("ioc/v1/cameras/CAM 1/events", CAMERA, RejectCode::BadTopic),
            // An air-quality device's id in a camera topic is not a camera.
            (
                "ioc/v1/cameras/aq-1/events",
                aq_as_camera.as_str(),
                RejectCode::UnknownDevice,
            ),
        ] {
            let out = process(topic, body.as_bytes());
            assert_eq!(out.rejections, vec![code], "{topic}");
            assert!(on(&out, "t.deadletter").is_empty(), "{topic}");
            assert_eq!(on(&out, "t.quarantine").len(), 1, "{topic}");
        }
        // A camera registered with a camera id is found by it only, not by its device id.
        let out = process("ioc/v1/cameras/cam-1/events", CAMERA.as_bytes());
        assert_eq!(out.rejections, vec![RejectCode::UnknownDevice]);
        assert_eq!(on(&out, "t.quarantine").len(), 1);
    }

    #[test]
    fn stations_are_found_by_station_code() {
        let file = b"COD\t61.5\tmg/L\t20261126085500\t00\n";
        let out = process("ioc/v1/stations/DLK_NT_001/file", file);
        let batch: ReadingBatch = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(batch.readings[0].device_id, "ww-1");
        let out = process("ioc/v1/stations/DLK_NT_999/file", file);
        assert_eq!(
            letters(&out)[0].external_id.as_deref(),
            Some("station_code:DLK_NT_999")
        );
    }

    const CAMERA: &str = r#"{"camera_id":"CAM-1","event_id":"CAM-1-42","event_time":"2026-11-26T15:04:00+07:00","type":"speeding","plate":"47A-123.45","speed_kmh":71.5,"lane":2,"image_ref":"s3://e/42.jpg"}"#;

    #[test]
    fn camera_plates_reach_only_the_evidence_topic() {
        let out = process("ioc/v1/cameras/CAM-1/events", CAMERA.as_bytes());
        assert!(out.rejections.is_empty());
        let events = on(&out, "t.events");
        let evidence = on(&out, "t.evidence");
        assert_eq!((events.len(), evidence.len(), out.records.len()), (1, 1, 2));
        let pseudonym = camera::PlateKey::new("k").unwrap().pseudonym("47A-123.45");
        assert_eq!(
            events[0]["attributes"]["plate_pseudonym"],
            pseudonym.as_str()
        );
        assert_eq!(events[0]["device_id"], "cam-1");
        assert_eq!(evidence[0]["plate"], "47A-123.45");
        assert_eq!(evidence[0]["image_ref"], "s3://e/42.jpg");
        for r in out.records.iter().filter(|r| &*r.topic != "t.evidence") {
            let text = String::from_utf8_lossy(&r.payload);
            assert!(!text.contains("123") && !text.contains("s3://"), "{text}");
        }
    }

    #[test]
    fn rejected_camera_messages_go_to_quarantine_not_the_dead_letter_topic() {
        let wrong_camera = CAMERA.replace(r#""camera_id":"CAM-1""#, r#""camera_id":"CAM-2""#);
        let bad_type = CAMERA.replace("speeding", "littering");
        for (topic, body, code) in [
            (
                "ioc/v1/cameras/CAM-1/events",
                wrong_camera.as_str(),
                RejectCode::InvalidField,
            ),
            (
                "ioc/v1/cameras/CAM-1/events",
                bad_type.as_str(),
                RejectCode::InvalidField,
            ),
            (
                "ioc/v1/cameras/CAM-1/events",
                "{not json",
                RejectCode::Malformed,
            ),
            (
                "ioc/v1/cameras/CAM-9/events",
                CAMERA,
                RejectCode::UnknownDevice,
            ),
        ] {
            let out = process(topic, body.as_bytes());
            assert_eq!(out.rejections, vec![code], "{body}");
            assert!(on(&out, "t.deadletter").is_empty());
            let q = on(&out, "t.quarantine");
            assert_eq!(q.len(), 1);
            assert!(!q[0]["reason"].as_str().unwrap().contains("123"));
        }
        // No key, no pseudonyms: quarantined, never stored in clear.
        let out = ingestor("").process("ioc/v1/cameras/CAM-1/events", CAMERA.as_bytes(), &ctx());
        assert_eq!(out.rejections, vec![RejectCode::NotConfigured]);
        assert_eq!(on(&out, "t.quarantine").len(), 1);
        assert_eq!(out.records.len(), 1);
    }

    #[test]
    fn a_good_message_is_one_readings_record_keyed_by_device() {
        let body = br#"{"ts":1795680240000,"values":{"pm25":12,"no2":20}}"#;
        let out = process("ioc/v1/devices/aq-1/telemetry", body);
        assert_eq!(out.records.len(), 1);
        assert_eq!(
            (&*out.records[0].topic, out.records[0].key.as_str()),
            ("t.readings", "aq-1")
        );
        let batch: ReadingBatch = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(batch.readings.len(), 2);
        assert!(out.rejections.is_empty());
    }

    #[test]
    fn the_readings_record_is_what_serde_writes_for_the_decoded_readings() {
        let bodies: [&[u8]; 4] = [
            br#"{"ts":1795680240000,"seq":1,"channel":"in\"l\u00e9t\\\/","interval_s":60,"values":{"pm25":35.2,"no2":1e-7,"co":1180.5,"humidity":140}}"#,
            br#"{"ts":"2026-11-26T15:04:00+07:00","values":{"temperature":82.4,"co":1.2,"radon":3},"units":{"temperature":"F","co":"mg/m3"}}"#,
            br#"{"ts":1795690240000,"values":{"vehicle_count":18446744073709551615,"occupancy":-0.0}}"#,
            br#"{"ts":1795680240000,"values":{"ph":7,"ph":7.5}}"#,
        ];
        let topic = "ioc/v1/devices/aq-1/telemetry";
        for body in bodies {
            let out = process(topic, body);
            let id = decode::message_id(topic, body);
            let decoded = decode_v1("aq-1", body, &id, &ctx()).unwrap();
            let expected = serde_json::to_vec(&ReadingBatch {
                readings: decoded.readings,
            })
            .unwrap();
            let record = out
                .records
                .iter()
                .find(|r| &*r.topic == "t.readings")
                .unwrap_or_else(|| panic!("{out:?}"));
            assert_eq!(
                String::from_utf8_lossy(&record.payload),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn unknown_devices_are_rejected_whole_with_provenance_and_raw_bytes() {
        let body = br#"{"ts":1795680240000,"values":{"pm25":12}}"#;
        let out = process("ioc/v1/devices/ghost/telemetry", body);
        assert_eq!(out.rejections, vec![RejectCode::UnknownDevice]);
        let letter = &letters(&out)[0];
        assert_eq!(letter.topic, "ioc/v1/devices/ghost/telemetry");
        assert_eq!(letter.device_id.as_deref(), Some("ghost"));
        assert_eq!(letter.received_at, ctx().received_at);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&letter.raw_base64)
            .unwrap();
        assert_eq!(raw, body);
    }

    #[test]
    fn a_partly_bad_message_gives_readings_and_one_letter_per_bad_value() {
        let body = br#"{"ts":1795680240000,"values":{"pm25":12,"radon":1,"no2":"x"}}"#;
        let out = process("ioc/v1/devices/aq-1/telemetry", body);
        assert_eq!(out.records.len(), 3);
        let mut metrics: Vec<String> = letters(&out).into_iter().filter_map(|l| l.metric).collect();
        metrics.sort();
        assert_eq!(metrics, vec!["no2", "radon"]);
    }

    #[test]
    fn station_files_are_routed_to_the_station_decoder() {
        let file = b"COD\t61.5\tmg/L\t20261126085500\t00\nTSS\t12\tgrains\t20261126085500\t00\n";
        let out = process("ioc/v1/stations/aq-1/file", file);
        let batch: ReadingBatch = serde_json::from_slice(&out.records[0].payload).unwrap();
        assert_eq!(batch.readings.len(), 1);
        assert_eq!(batch.readings[0].metric, "cod");
        assert_eq!(out.rejections, vec![RejectCode::UnknownUnit]);
        assert_eq!(letters(&out)[0].metric.as_deref(), Some("tss"));
        let out = process("ioc/v1/stations/ghost/file", file);
        assert_eq!(out.rejections, vec![RejectCode::UnknownDevice]);
    }

    #[test]
    fn no_format_panics_on_mutated_payloads() {
        let samples: [(Format, &[u8]); 6] = [
            (Format::IocJson, br#"{"ts":1795680240000,"channel":"a","values":{"pm25":12,"no2":20},"units":{"no2":"ppb"}}"#),
            (Format::VendorFlat, br#"{"imei":"861234567890123","time":"26/11/2026 08:05:00","PM2_5":"35,2","NO2":"21"}"#),
            (Format::CameraEvent, CAMERA.as_bytes()),
            (Format::Tt10Station, b"COD\t61,5\tmg/L\t20261126085500\t00\npH\t7\tpH\t20261126085500\t01\n"),
            (Format::Senml, br#"[{"bn":"x:","bt":1795658340,"bu":"ug/m3","n":"pm25","v":35.2},{"n":"co","u":"ppm","v":1,"t":-5}]"#),
            (Format::TrafficCounter, br#"{"end":1795658340,"interval_s":60,"lanes":[{"lane":1,"count":17,"avg_speed":42.5,"occupancy":0.12}]}"#),
        ];
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let profile = flat::Profile::flat_gateway();
        for (format, sample) in samples {
            assert!(
                format.decode("d", sample, "m", &ctx(), &profile).is_ok(),
                "{format:?} sample decodes"
            );
            for _ in 0..3000 {
                let mut buf = sample.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let i = next() as usize % buf.len();
                    match next() % 3 {
                        0 => buf[i] = next() as u8,
                        1 => {
                            buf.remove(i);
                        }
                        _ => {
                            let alphabet = b"{}[]\t,:\"0-9e.";
                            buf.insert(i, alphabet[next() as usize % alphabet.len()])
                        }
                    }
                    if buf.is_empty() {
                        buf.push(b'{');
                    }
                }
                let _ = format.decode("d", &buf, "m", &ctx(), &profile);
            }
        }
    }

    #[test]
    fn invalid_device_ids_in_topics_are_bad_topics() {
        let out = process("ioc/v1/devices/a+b/telemetry", b"{}");
        assert_eq!(out.rejections, vec![RejectCode::BadTopic]);
        assert_eq!(letters(&out)[0].device_id, None);
    }
}
