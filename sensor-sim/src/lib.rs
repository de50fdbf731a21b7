//! `ioc sim`: a seeded, rate-controlled fleet of simulated devices publishing over MQTT QoS 1
//! (MQTT 3.1.1) in every payload format the IOC ingests, with optional fault injection. It knows
//! the wire formats, not the pipeline's decoders.
//!
//! - [`Fleet`]: the devices, their signals and their faults; the same seed and the same sequence
//!   of `now_ms` give the same bytes.
//! - `signals`: what the devices measure in Đắk Lắk (UTC+7): PM with night inversions, rush
//!   hours and dry-season smoke; midday ozone; factory shifts and limit breaches at wastewater
//!   stations; rush hours and incidents on traffic counters; camera violations.
//! - `wire`: the six formats ([`Format`]), each a contract with an ingest decoder.
//! - `faults`: what can go wrong ([`Fault`], [`Faults`]).
//! - [`run`]: publishes at the configured rate, exactly `count` messages if given, waits for the
//!   broker to acknowledge every one, and reports totals per format ([`SimReport`]).
//! - [`register_fleet`]: registers the fleet through the API, as an installer would.

mod faults;
mod signals;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ioc_config::{MqttConfig, SimConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use faults::{Fault, Faults, FaultsError, DEFAULT_FAULT_RATE};
use signals::{PlatePool, Sample};
pub use wire::Format;
use wire::Frame;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("registering {device}: {message}")]
    Register { device: String, message: String },
    #[error("broker did not acknowledge {missing} message(s) within {waited:?}")]
    Unacknowledged { missing: u64, waited: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    AirQuality,
    Wastewater,
    TrafficCounter,
    TrafficCamera,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AirQuality => "air_quality",
            Kind::Wastewater => "wastewater",
            Kind::TrafficCounter => "traffic_counter",
            Kind::TrafficCamera => "traffic_camera",
        }
    }
}

/// The id a device writes on the wire when that is not its device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalId {
    /// A vendor-flat sensor's 15-digit IMEI.
    Imei(String),
    /// A monitoring station's code, as in its topic (`DLK_HP_001`).
    StationCode(String),
    /// A camera's id, as in its topic and events (`CAM-BMT-001`).
    CameraId(String),
}

impl ExternalId {
    /// The key under `external_ids` in a registration.
    pub fn key(&self) -> &'static str {
        match self {
            ExternalId::Imei(_) => "imei",
            ExternalId::StationCode(_) => "station_code",
            ExternalId::CameraId(_) => "camera_id",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            ExternalId::Imei(v) | ExternalId::StationCode(v) | ExternalId::CameraId(v) => v,
        }
    }
}

/// One message the fleet publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub format: Format,
    pub device_id: String,
    /// The fault this message shows, if any (a resend is `Duplicate`, a flatlined one `Stuck`).
    pub fault: Option<Fault>,
    /// Values a correct decoder turns into readings: 0 for camera events and malformed
    /// payloads, one less than carried when a value has an unknown unit.
    pub readings: usize,
}

/// A device's clock: the timestamps it has used, so that no (device, channel, metric, ts) key
/// ever repeats, whatever the faults do.
///
/// Normal timestamps rise strictly at the format's resolution. Timestamps in the past (clock
/// behind, backfill) go below everything the device has sent, so they are free by construction;
/// timestamps ahead are remembered until the normal clock passes them.
#[derive(Debug, Clone)]
struct Clock {
    resolution_ms: i64,
    last: Option<i64>,
    /// Lowest timestamp used or reserved (the first `now` the device saw, or an older one).
    earliest: Option<i64>,
    ahead: BTreeSet<i64>,
}

impl Clock {
    fn new(resolution_ms: i64) -> Clock {
        Clock {
            resolution_ms,
            last: None,
            earliest: None,
            ahead: BTreeSet::new(),
        }
    }

    fn align(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.resolution_ms)
    }

    fn start(&mut self, now: i64) -> i64 {
        let aligned = self.align(now);
        *self.earliest.get_or_insert(aligned)
    }

    /// Whether a fresh timestamp at `now` is free (seconds-resolution formats can send once a
    /// second).
    fn can_emit(&self, now: i64) -> bool {
        self.last.is_none_or(|l| self.align(now) > l)
    }

    fn next(&mut self, now: i64) -> i64 {
        let floor = self.start(now);
        let mut t = self.align(now).max(floor);
        if let Some(l) = self.last {
            t = t.max(l + self.resolution_ms);
        }
        while self.ahead.contains(&t) {
            t += self.resolution_ms;
        }
        self.last = Some(t);
        self.ahead = self.ahead.split_off(&(t + 1));
        t
    }

    fn ahead_by(&mut self, now: i64, by_ms: i64) -> i64 {
        self.start(now);
        let mut t = self.align(now + by_ms);
        if let Some(l) = self.last {
            t = t.max(l + self.resolution_ms);
        }
        while self.ahead.contains(&t) {
            t += self.resolution_ms;
        }
        self.ahead.insert(t);
        t
    }

    /// `count` timestamps `step_ms` apart, the last no later than `latest`, all below anything
    /// the device has used.
    fn past(&mut self, now: i64, latest: i64, count: usize, step_ms: i64) -> Vec<i64> {
        let earliest = self.start(now);
        let end = self.align(latest).min(earliest - self.resolution_ms);
        let first = end - (count.max(1) as i64 - 1) * step_ms;
        self.earliest = Some(first);
        (0..count as i64).map(|k| first + k * step_ms).collect()
    }
}

#[derive(Debug, Clone)]
struct Stuck {
    /// Messages of the device still to flatline, this one included.
    remaining: u32,
    frozen: Option<Sample>,
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub device_id: String,
    pub kind: Kind,
    pub format: Format,
    pub lat: f64,
    pub lon: f64,
    pub external_id: Option<ExternalId>,
    /// Where it publishes (a vendor-flat sensor publishes on its gateway's topic).
    pub topic: String,
    /// Per-device level, so stations differ.
    level: f64,
    /// Place in its group: picks the vendor's quirks (alternative units, spellings, line ends).
    style: usize,
    /// Lanes of a traffic counter.
    lanes: u8,
    clock: Clock,
    seq: u64,
    stuck: Option<Stuck>,
    /// Picks of the round robin the device still stays silent for before its backfill.
    silent_for: Option<u32>,
    /// What it sent last, for a resend.
    last: Option<SimMessage>,
    /// A traffic counter's newest count's end: the next count is over the time since.
    counted_until: i64,
}

/// Whether a message's time is off the device's running clock (a backfill, a skewed clock).
fn off_clock(fault: Option<Fault>) -> bool {
    matches!(fault, Some(Fault::ClockSkew | Fault::Backfill))
}

impl SimDevice {
    /// How busy it is against its kind's typical (0.6 to 1.6): a station's pollution, a road's
    /// traffic.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// `sample` at `ts` in the device's wire format, on its topic.
    fn message(
        &self,
        ts: i64,
        seq: u64,
        bogus_unit: Option<usize>,
        interval_s: i64,
        sample: &Sample,
        fault: Option<Fault>,
    ) -> SimMessage {
        let frame = Frame {
            format: self.format,
            device_id: &self.device_id,
            style: self.style,
            external_id: self.external_id.as_ref().map(ExternalId::value),
            ts,
            seq,
            bogus_unit,
            interval_s,
        };
        let (payload, readings) = wire::encode(&frame, sample);
        SimMessage {
            topic: self.topic.clone(),
            payload,
            format: self.format,
            device_id: self.device_id.clone(),
            fault,
            readings,
        }
    }

    /// The seconds a traffic counter's count ending at `ts` is over: the time since its
    /// previous count (however fast the simulator sends), from 1 s to 5 minutes; a minute for
    /// its first, for one stamped before the newest, and for one off the device's clock (a
    /// backfill, a clock skewed either way, which also leaves the next count's start alone).
    fn count_interval_s(&self, ts: i64, fault: Option<Fault>) -> i64 {
        let since = (ts - self.counted_until) / 1000;
        if self.counted_until == 0 || since < 1 || off_clock(fault) {
            60
        } else {
            since.min(300)
        }
    }
}

/// The simulated fleet.
pub struct Fleet {
    pub devices: Vec<SimDevice>,
    rng: SmallRng,
    seed: u64,
    faults: Faults,
    plates: PlatePool,
    next_device: usize,
    /// Messages already made (the rest of a burst or a backfill), sent before anything new.
    pending: VecDeque<SimMessage>,
}

/// Around Buôn Ma Thuột.
const CENTRE: (f64, f64) = (12.6667, 108.0383);

/// Whether a device speaking `format` can show `fault` (a flat vendor object has no units, a
/// camera no sensor to flatline).
fn applies(fault: Fault, format: Format) -> bool {
    match fault {
        Fault::WrongUnit => matches!(
            format,
            Format::IocJson | Format::Senml | Format::Tt10Station
        ),
        Fault::Stuck => format != Format::CameraEvent,
        _ => true,
    }
}

/// A 15-digit IMEI with its Luhn check digit; `salt` (from an id prefix) moves the serial
/// number, so that fleets with the same seed and other prefixes have other sensors.
fn imei(rng: &mut SmallRng, salt: u32) -> String {
    let serial = (rng.random_range(0..100_000_000u32) + salt) % 100_000_000;
    let body = format!("861234{serial:08}");
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = (b - b'0') as u32;
            if i % 2 == 0 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

impl Fleet {
    /// The fleet with no faults.
    pub fn new(config: &SimConfig) -> Fleet {
        Fleet::with_faults(config, Faults::none())
    }

    pub fn with_faults(config: &SimConfig, faults: Faults) -> Fleet {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut devices = Vec::new();
        // The first three groups come first and in this order, so their ids, places and levels
        // are the same as before the other formats existed (their registrations still match).
        let mut add = |kind: Kind,
                       format: Format,
                       device_id: String,
                       style: usize,
                       external_id: Option<ExternalId>,
                       topic: String,
                       rng: &mut SmallRng| {
            devices.push(SimDevice {
                device_id,
                kind,
                format,
                lat: CENTRE.0 + rng.random_range(-0.3..0.3),
                lon: CENTRE.1 + rng.random_range(-0.3..0.3),
                external_id,
                topic,
                level: rng.random_range(0.6..1.6),
                style,
                lanes: 2 + (style % 2) as u8,
                clock: Clock::new(format.resolution_ms()),
                seq: 0,
                stuck: None,
                silent_for: None,
                last: None,
                counted_until: 0,
            });
        };
        let prefix = &config.id_prefix;
        let salt = prefix
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 100_000_000;
        for i in 1..=config.air_quality {
            let id = format!("{prefix}aq-{i:03}");
            let topic = format!("ioc/v1/devices/{id}/telemetry");
            add(
                Kind::AirQuality,
                Format::IocJson,
                id,
                i as usize,
                None,
                topic,
                &mut rng,
            );
        }
        for i in 1..=config.wastewater {
            // Hòa Phú (Buôn Ma Thuột) and Hòa Hiệp (the Phú Yên side) industrial zones.
            let zone = if i % 2 == 1 { "HP" } else { "HH" };
            let code = format!("{prefix}DLK_{zone}_{i:03}");
            let topic = format!("ioc/v1/stations/{code}/file");
            let ext = Some(ExternalId::StationCode(code));
            add(
                Kind::Wastewater,
                Format::Tt10Station,
                format!("{prefix}ww-{i:03}"),
                i as usize,
                ext,
                topic,
                &mut rng,
            );
        }
        for i in 1..=config.traffic_counters {
            let id = format!("{prefix}tc-{i:03}");
            let topic = format!("ioc/v1/devices/{id}/counts");
            add(
                Kind::TrafficCounter,
                Format::TrafficCounter,
                id,
                i as usize,
                None,
                topic,
                &mut rng,
            );
        }
        for i in 1..=config.senml_air {
            let id = format!("{prefix}aqs-{i:03}");
            let topic = format!("ioc/v1/devices/{id}/senml");
            add(
                Kind::AirQuality,
                Format::Senml,
                id,
                i as usize,
                None,
                topic,
                &mut rng,
            );
        }
        let mut imeis = BTreeSet::new();
        let mut n = 0;
        for g in 1..=config.flat_gateways {
            for _ in 0..config.flat_sensors_per_gateway {
                n += 1;
                let imei = loop {
                    let candidate = imei(&mut rng, salt);
                    if imeis.insert(candidate.clone()) {
                        break candidate;
                    }
                };
                let topic = format!("ioc/v1/gateways/{prefix}gw-{g:03}/flat");
                let ext = Some(ExternalId::Imei(imei));
                add(
                    Kind::AirQuality,
                    Format::VendorFlat,
                    format!("{prefix}aqf-{n:03}"),
                    n,
                    ext,
                    topic,
                    &mut rng,
                );
            }
        }
        for i in 1..=config.cameras {
            let camera = format!("{prefix}CAM-BMT-{i:03}");
            let topic = format!("ioc/v1/cameras/{camera}/events");
            let ext = Some(ExternalId::CameraId(camera));
            add(
                Kind::TrafficCamera,
                Format::CameraEvent,
                format!("{prefix}cam-{i:03}"),
                i as usize,
                ext,
                topic,
                &mut rng,
            );
        }
        let plates = PlatePool::new(300, &mut rng);
        Fleet {
            devices,
            rng,
            seed: config.seed,
            faults,
            plates,
            next_device: 0,
            pending: VecDeque::new(),
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// An air station's hourly PM2.5 means (µg/m³, one decimal) as its minute readings make
    /// them, with no faults: `hours` hours from the hour starting at `from_ms`. None for a
    /// device that is not an air station of this fleet. For forecasts' backtests.
    pub fn hourly_pm25(&self, device_id: &str, from_ms: i64, hours: usize) -> Option<Vec<f64>> {
        let i = self.devices.iter().position(|d| d.device_id == device_id)?;
        let d = &self.devices[i];
        if d.kind != Kind::AirQuality {
            return None;
        }
        let mut rng = SmallRng::seed_from_u64(self.seed ^ (i as u64).rotate_left(32));
        let start = from_ms - from_ms.rem_euclid(3_600_000);
        Some(
            (0..hours as i64)
                .map(|h| {
                    let sum: f64 = (0..60)
                        .map(|m| {
                            let ts = start + h * 3_600_000 + m * 60_000 + 30_000;
                            match signals::air(self.seed, i, d.level, ts, &mut rng) {
                                Sample::Values(v) => {
                                    v.iter().find(|x| x.metric == "pm25").map_or(0.0, |x| x.v)
                                }
                                Sample::Violation(_) => 0.0,
                            }
                        })
                        .sum();
                    (sum / 60.0 * 10.0).round() / 10.0
                })
                .collect(),
        )
    }

    /// A traffic counter's messages with no faults, one a minute, each a minute's counts
    /// stamped at its end: `minutes` of them, the first ending a minute after `from_ms`. None
    /// for a device that is not a counter of this fleet. For tests that need hours of traffic
    /// (rush hours, incidents) at once.
    pub fn counter_minutes(
        &self,
        device_id: &str,
        from_ms: i64,
        minutes: usize,
    ) -> Option<Vec<SimMessage>> {
        let i = self.devices.iter().position(|d| d.device_id == device_id)?;
        let d = &self.devices[i];
        if d.kind != Kind::TrafficCounter {
            return None;
        }
        let mut rng = SmallRng::seed_from_u64(self.seed ^ (i as u64).rotate_left(32));
        let start = from_ms - from_ms.rem_euclid(60_000);
        Some(
            (1..=minutes as i64)
                .map(|m| {
                    let ts = start + m * 60_000;
                    let sample =
                        signals::traffic(self.seed, i, d.level, d.lanes, ts, 60.0, &mut rng);
                    d.message(ts, m as u64, None, 60, &sample, None)
                })
                .collect(),
        )
    }

    /// Whether a traffic counter of this fleet has an incident (its lanes jammed for a
    /// quarter of an hour) at `ts_ms`.
    pub fn incident_at(&self, device_id: &str, ts_ms: i64) -> bool {
        self.devices
            .iter()
            .position(|d| d.device_id == device_id && d.kind == Kind::TrafficCounter)
            .is_some_and(|i| signals::incident(self.seed, i, ts_ms))
    }

    /// Whether the next message is the rest of a burst.
    pub fn burst_pending(&self) -> bool {
        self.pending
            .front()
            .is_some_and(|m| m.fault == Some(Fault::Burst))
    }

    /// The next message. Devices take turns; a device whose format writes whole seconds waits
    /// its turn until its next second is free (unless every device waits), so timestamps stay
    /// near `now_ms`. Panics if the fleet has no device (the configuration forbids that).
    pub fn next_message(&mut self, now_ms: i64) -> SimMessage {
        if let Some(m) = self.pending.pop_front() {
            return m;
        }
        let n = self.devices.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let forced = attempt >= n;
            let i = self.next_device;
            self.next_device = (i + 1) % n;
            if let Some(silent) = self.devices[i].silent_for {
                if silent > 0 && !forced {
                    self.devices[i].silent_for = Some(silent - 1);
                    continue;
                }
                self.devices[i].silent_for = None;
                return self.backfill(i, now_ms);
            }
            if !forced && !self.devices[i].clock.can_emit(now_ms) {
                continue;
            }
            match self.draw_fault(i) {
                Some(Fault::Backfill) if !forced => {
                    // The uplink goes down: silent for a while, then the logger's backlog.
                    self.devices[i].silent_for = Some(self.rng.random_range(3..=10));
                    continue;
                }
                Some(Fault::Duplicate) => {
                    if let Some(m) = self.resend(i) {
                        return m;
                    }
                }
                Some(Fault::Burst) => {
                    let k = self.rng.random_range(5..=15);
                    for _ in 0..k {
                        let ts = self.devices[i].clock.next(now_ms);
                        let m = self.generate(i, ts, Some(Fault::Burst));
                        self.pending.push_back(m);
                    }
                    if let Some(m) = self.pending.pop_front() {
                        return m;
                    }
                }
                Some(Fault::Stuck) => {
                    self.devices[i].stuck = Some(Stuck {
                        remaining: self.rng.random_range(8..=20),
                        frozen: None,
                    });
                }
                Some(Fault::ClockSkew) => {
                    let hours = self.rng.random_range(1..=12i64);
                    let by = hours * 3_600_000 + self.rng.random_range(0..3_600_000i64);
                    let clock = &mut self.devices[i].clock;
                    let ts = if self.rng.random_bool(0.6) {
                        clock.ahead_by(now_ms, by)
                    } else {
                        clock.past(now_ms, now_ms - by, 1, clock.resolution_ms)[0]
                    };
                    return self.generate(i, ts, Some(Fault::ClockSkew));
                }
                Some(f @ (Fault::Malformed | Fault::WrongUnit | Fault::Spike)) => {
                    let ts = self.devices[i].clock.next(now_ms);
                    return self.generate(i, ts, Some(f));
                }
                _ => {}
            }
            let ts = self.devices[i].clock.next(now_ms);
            return self.generate(i, ts, None);
        }
    }

    fn draw_fault(&mut self, i: usize) -> Option<Fault> {
        let d = &self.devices[i];
        if self.faults.is_none() || d.stuck.is_some() {
            return None;
        }
        if !self.rng.random_bool(self.faults.rate()) {
            return None;
        }
        let options: Vec<Fault> = self
            .faults
            .enabled()
            .filter(|f| applies(*f, d.format))
            .collect();
        if options.is_empty() {
            return None;
        }
        Some(options[self.rng.random_range(0..options.len())])
    }

    /// The device sends its last message's readings again. One that numbers its messages
    /// (ioc-json's `seq`) sends them as a new message, the next number: its own resend, which the
    /// pipeline counts against it. The other formats have nothing that tells a resend from the
    /// first send, so theirs are the same bytes, which the pipeline takes for a redelivery of one
    /// message (as it does a camera's event sent again: the same event id). None before a first
    /// message.
    fn resend(&mut self, i: usize) -> Option<SimMessage> {
        let d = &mut self.devices[i];
        let mut m = d.last.clone()?;
        m.fault = Some(Fault::Duplicate);
        if d.format == Format::IocJson {
            // A garbled message stays garbled: it has no number to change.
            if let Ok(serde_json::Value::Object(mut body)) =
                serde_json::from_slice::<serde_json::Value>(&m.payload)
            {
                d.seq += 1;
                body.insert("seq".into(), json!(d.seq));
                m.payload = serde_json::to_vec(&body).expect("a JSON object serializes");
            }
        }
        Some(m)
    }

    /// The device is back: it sends what its logger kept, oldest first, from hours to two days
    /// ago and below anything it has sent before (so a later backlog is older than an earlier
    /// one: it can never land on a timestamp already used).
    fn backfill(&mut self, i: usize, now_ms: i64) -> SimMessage {
        let count = self.rng.random_range(3..=12);
        let gap = self.rng.random_range(3_600_000..=2 * 86_400_000i64);
        let step = match self.devices[i].format {
            Format::Tt10Station => 300_000,
            _ => 60_000,
        };
        let stamps = self.devices[i]
            .clock
            .past(now_ms, now_ms - gap, count, step);
        for ts in stamps {
            let m = self.generate(i, ts, Some(Fault::Backfill));
            self.pending.push_back(m);
        }
        match self.pending.pop_front() {
            Some(m) => m,
            None => {
                let ts = self.devices[i].clock.next(now_ms);
                self.generate(i, ts, None)
            }
        }
    }

    /// Measures at `ts`, applies the device's state and `fault`, and encodes.
    fn generate(&mut self, i: usize, ts: i64, fault: Option<Fault>) -> SimMessage {
        let seed = self.seed;
        let rng = &mut self.rng;
        let d = &mut self.devices[i];
        d.seq += 1;
        let mut sample = match d.format {
            Format::IocJson | Format::Senml => signals::air(seed, i, d.level, ts, rng),
            Format::VendorFlat => {
                let mut s = signals::air(seed, i, d.level, ts, rng);
                // Low-cost sensors: no SO2 or O3 cell.
                if let Sample::Values(v) = &mut s {
                    v.retain(|x| !matches!(x.metric, "so2" | "o3"));
                }
                s
            }
            Format::Tt10Station => signals::wastewater(seed, i, d.level, ts, rng),
            Format::TrafficCounter => {
                let interval = d.count_interval_s(ts, fault) as f64;
                signals::traffic(seed, i, d.level, d.lanes, ts, interval, rng)
            }
            Format::CameraEvent => signals::violation(&self.plates, rng),
        };
        let mut label = fault;
        if let Some(stuck) = &mut d.stuck {
            match &stuck.frozen {
                Some(frozen) => sample = frozen.clone(),
                None => stuck.frozen = Some(sample.clone()),
            }
            stuck.remaining = stuck.remaining.saturating_sub(1);
            if stuck.remaining == 0 {
                d.stuck = None;
            }
            label = label.or(Some(Fault::Stuck));
        }
        let mut bogus_unit = None;
        match (&mut sample, fault) {
            (Sample::Values(values), Some(Fault::Spike)) if !values.is_empty() => {
                let k = rng.random_range(0..values.len());
                values[k].v = signals::absurd(values[k].metric);
            }
            (Sample::Violation(v), Some(Fault::Spike)) => v.speed_kmh = 999.0,
            (Sample::Values(values), Some(Fault::WrongUnit)) if !values.is_empty() => {
                bogus_unit = Some(rng.random_range(0..values.len()));
            }
            _ => {}
        }
        let interval_s = d.count_interval_s(ts, fault);
        let mut message = d.message(ts, d.seq, bogus_unit, interval_s, &sample, label);
        if d.format == Format::TrafficCounter && !off_clock(fault) && ts > d.counted_until {
            d.counted_until = ts;
        }
        if fault == Some(Fault::Malformed) {
            message.payload = wire::garble(d.format, &message.payload, rng);
            message.readings = 0;
        }
        d.last = Some(message.clone());
        message
    }
}

/// What a run sent of one format.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct FormatTotals {
    pub messages: u64,
    pub readings: u64,
    /// Messages per fault name.
    pub faults: BTreeMap<String, u64>,
}

/// What a run sent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SimReport {
    pub messages: u64,
    pub readings: u64,
    pub acknowledged: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// Per format name: what was sent, and which faults.
    pub by_format: BTreeMap<String, FormatTotals>,
}

impl SimReport {
    /// Counts one message handed to the broker.
    pub fn record(&mut self, message: &SimMessage) {
        self.messages += 1;
        self.readings += message.readings as u64;
        let totals = self
            .by_format
            .entry(message.format.name().to_string())
            .or_default();
        totals.messages += 1;
        totals.readings += message.readings as u64;
        if let Some(f) = message.fault {
            *totals.faults.entry(f.name().to_string()).or_default() += 1;
        }
    }

    /// One line per format, for people.
    pub fn format_lines(&self) -> Vec<String> {
        self.by_format
            .iter()
            .map(|(name, t)| {
                let faults: Vec<String> =
                    t.faults.iter().map(|(f, n)| format!("{f} {n}")).collect();
                let faults = if faults.is_empty() {
                    String::new()
                } else {
                    format!(", faults: {}", faults.join(", "))
                };
                format!(
                    "{name}: {} messages, {} readings{faults}",
                    t.messages, t.readings
                )
            })
            .collect()
    }
}

/// Options of one run besides the fleet.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub count: Option<u64>,
    pub rate: f64,
    pub client_id: String,
    /// Print progress to stderr every second.
    pub progress: bool,
}

/// Publishes until `count` messages were sent (or `shutdown`), then waits until the broker has
/// acknowledged every message.
pub async fn run(
    mqtt: &MqttConfig,
    fleet: &mut Fleet,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> Result<SimReport, SimError> {
    let mut mqtt_options = MqttOptions::new(&options.client_id, &mqtt.host, mqtt.port);
    mqtt_options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(500)
        .set_clean_session(true);
    if !mqtt.username.is_empty() {
        mqtt_options.set_credentials(&mqtt.username, &mqtt.password);
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt_options, 1000);
    let (ack_tx, mut ack_rx) = tokio::sync::watch::channel(0u64);
    let (err_tx, mut err_rx) = tokio::sync::watch::channel::<Option<String>>(None);
    let poller = tokio::spawn(async move {
        let mut acked = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    let _ = ack_tx.send(acked);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = err_tx.send(Some(e.to_string()));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });

    let mut report = SimReport::default();
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_progress_count = 0u64;
    // Messages sent on the rate's clock (the rest of a burst goes out at once, as a device
    // flushing its buffer sends it).
    let mut paced = 0u64;
    while options.count.is_none_or(|c| report.messages < c) && !shutdown.is_cancelled() {
        if !fleet.burst_pending() {
            let due = (start.elapsed().as_secs_f64() * options.rate).floor() as u64 + 1;
            if paced >= due {
                let wait = Duration::from_secs_f64(
                    ((paced as f64) / options.rate - start.elapsed().as_secs_f64()).max(0.0),
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_millis(50))) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            paced += 1;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let message = fleet.next_message(now);
        report.record(&message);
        client
            .publish(message.topic, QoS::AtLeastOnce, false, message.payload)
            .await
            .map_err(|e| SimError::Mqtt(e.to_string()))?;
        if options.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let rate = (report.messages - last_progress_count) as f64
                / last_progress.elapsed().as_secs_f64();
            eprintln!(
                "sim: {} messages, {} readings, {:.0} msg/s",
                report.messages, report.readings, rate
            );
            last_progress = Instant::now();
            last_progress_count = report.messages;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.messages_per_second = report.messages as f64 / report.seconds.max(1e-9);

    // Every message counts only once the broker has it.
    let waited = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        report.acknowledged = *ack_rx.borrow_and_update();
        if report.acknowledged >= report.messages {
            break;
        }
        tokio::select! {
            _ = ack_rx.changed() => {}
            _ = err_rx.changed() => {
                if let Some(e) = err_rx.borrow().clone() {
                    tracing::warn!(error = %e, "MQTT connection error while waiting for acknowledgements");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                poller.abort();
                return Err(SimError::Unacknowledged { missing: report.messages - report.acknowledged, waited });
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(report)
}

/// Registers every device of the fleet through the API, in service (`active`), with the decoder
/// it needs and the id it writes on the wire (idempotent: an identical registration is accepted again; a 409 means the
/// id or an external id is taken with other details, and is an error).
pub async fn register_fleet(fleet: &Fleet, api_url: &str, token: &str) -> Result<usize, SimError> {
    let http = reqwest::Client::new();
    for d in &fleet.devices {
        let mut body = json!({
            "device_id": d.device_id,
            "kind": d.kind.as_str(),
            "name": format!("Simulated {} {}", d.kind.as_str().replace('_', " "), d.device_id),
            "lat": (d.lat * 1e5).round() / 1e5,
            "lon": (d.lon * 1e5).round() / 1e5,
            "expected_interval_s": 60,
            "decoder": d.format.name(),
            // A simulated fleet is in service: not commissioning, so ingest does not tap it.
            "status": "active",
        });
        if let Some(ext) = &d.external_id {
            body["external_ids"] = json!({ ext.key(): ext.value() });
        }
        if d.kind == Kind::TrafficCounter {
            body["road_segment"] = json!(signals::road_segment(d.style));
            body["free_flow_speed_kmh"] = json!(signals::free_flow_kmh(d.lanes));
        }
        let response = http
            .post(format!("{}/api/v1/devices", api_url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| SimError::Register {
                device: d.device_id.clone(),
                message: e.to_string(),
            })?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(SimError::Register {
                device: d.device_id.clone(),
                message: format!("{status}: {text}"),
            });
        }
    }
    Ok(fleet.devices.len())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use chrono::{DateTime, NaiveDateTime};
    use serde_json::Value as Json;

    use super::*;

    /// 2026-11-26 00:00 UTC (07:00 local): dry season, morning rush ahead.
    const T0: i64 = 1_795_651_200_000;
    const STEP: i64 = 1_700;
    const LOCAL: i64 = 7 * 3_600_000;

    fn config(seed: u64) -> SimConfig {
        SimConfig {
            air_quality: 3,
            wastewater: 2,
            traffic_counters: 2,
            senml_air: 2,
            flat_gateways: 1,
            flat_sensors_per_gateway: 3,
            cameras: 2,
            rate: 10.0,
            seed,
            id_prefix: String::new(),
            username: String::new(),
            password: String::new(),
        }
    }

    /// `(now_ms, message)` for `n` messages, the clock advancing `STEP` each.
    fn run_fleet(fleet: &mut Fleet, n: usize) -> Vec<(i64, SimMessage)> {
        (0..n)
            .map(|k| {
                let now = T0 + k as i64 * STEP;
                (now, fleet.next_message(now))
            })
            .collect()
    }

    fn faulty(faults: Faults, n: usize) -> Vec<(i64, SimMessage)> {
        run_fleet(&mut Fleet::with_faults(&config(11), faults), n)
    }

    /// One value as a test decoder sees it: key parts, value and the unit it came in.
    #[derive(Debug)]
    struct Seen {
        channel: String,
        metric: String,
        ts: i64,
        value: f64,
        unit: String,
    }

    fn local_ms(text: &str, pattern: &str) -> i64 {
        NaiveDateTime::parse_from_str(text, pattern)
            .unwrap_or_else(|e| panic!("{text:?} is not {pattern}: {e}"))
            .and_utc()
            .timestamp_millis()
            - LOCAL
    }

    fn number(text: &str) -> f64 {
        text.replace(',', ".")
            .parse()
            .unwrap_or_else(|_| panic!("{text:?}"))
    }

    /// A minimal reading of each format, enough to check keys, times and ranges.
    fn seen(m: &SimMessage) -> Vec<Seen> {
        let mut out = Vec::new();
        let mut push = |channel: &str, metric: &str, ts: i64, value: f64, unit: &str| {
            out.push(Seen {
                channel: channel.into(),
                metric: metric.into(),
                ts,
                value,
                unit: unit.into(),
            })
        };
        match m.format {
            Format::IocJson => {
                let b: Json = serde_json::from_slice(&m.payload).unwrap();
                let ts = b["ts"].as_i64().unwrap();
                for (k, v) in b["values"].as_object().unwrap() {
                    let unit = b["units"][k].as_str().unwrap_or("canonical");
                    push("", k, ts, v.as_f64().unwrap(), unit);
                }
            }
            Format::Senml => {
                let b: Json = serde_json::from_slice(&m.payload).unwrap();
                let pack = b.as_array().unwrap();
                let bt = pack[0]["bt"].as_f64().unwrap();
                let bu = pack[0]["bu"].as_str().unwrap();
                for r in pack {
                    let t = r["t"].as_f64().unwrap_or(0.0);
                    let ts = ((bt + t) * 1000.0).round() as i64;
                    let unit = r["u"].as_str().unwrap_or(bu);
                    push(
                        "",
                        r["n"].as_str().unwrap(),
                        ts,
                        r["v"].as_f64().unwrap(),
                        unit,
                    );
                }
            }
            Format::VendorFlat => {
                let b: Json = serde_json::from_slice(&m.payload).unwrap();
                let ts = local_ms(b["time"].as_str().unwrap(), "%d/%m/%Y %H:%M:%S");
                for (k, v) in b.as_object().unwrap() {
                    if k != "imei" && k != "time" {
                        push("", k, ts, number(v.as_str().unwrap()), "vendor");
                    }
                }
            }
            Format::Tt10Station => {
                for line in std::str::from_utf8(&m.payload).unwrap().lines() {
                    let f: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
                    assert_eq!(f.len(), 5, "{line:?}");
                    let ts = local_ms(f[3], "%Y%m%d%H%M%S");
                    push("", f[0], ts, number(f[1]), f[2]);
                }
            }
            Format::TrafficCounter => {
                let b: Json = serde_json::from_slice(&m.payload).unwrap();
                let ts = b["end"].as_i64().unwrap() * 1000;
                for lane in b["lanes"].as_array().unwrap() {
                    let ch = format!("lane-{}", lane["lane"]);
                    for k in ["count", "avg_speed", "occupancy"] {
                        push(&ch, k, ts, lane[k].as_f64().unwrap(), "canonical");
                    }
                }
            }
            Format::CameraEvent => {
                let b: Json = serde_json::from_slice(&m.payload).unwrap();
                let t = DateTime::parse_from_rfc3339(b["event_time"].as_str().unwrap()).unwrap();
                assert_eq!(t.offset().local_minus_utc(), 7 * 3600);
                push(
                    "",
                    "speed_kmh",
                    t.timestamp_millis(),
                    b["speed_kmh"].as_f64().unwrap(),
                    "km/h",
                );
            }
        }
        out
    }

    /// Whether a value is physically possible in the unit it came in.
    fn plausible(s: &Seen) -> bool {
        let max = match (s.metric.as_str(), s.unit.as_str()) {
            ("co", "mg/m3") | ("CO", _) => 200.0,
            ("temperature", "°F") => 212.0,
            ("no2", "ppb") | ("NO2", _) => 10_000.0,
            ("o3", "ppb") => 2_500.0,
            ("pm25" | "PM2_5", _) => 2_000.0,
            ("pm10" | "PM10" | "o3", _) => 5_000.0,
            ("co", _) => 200_000.0,
            ("no2" | "so2", _) => 20_000.0,
            ("temperature" | "Temp", _) => 100.0,
            ("humidity" | "Humi", _) => 100.0,
            ("pH", _) => 14.0,
            ("COD" | "TSS" | "Flow" | "Luu luong", _) => 100_000.0,
            ("NH4+" | "Amoni", _) => 10_000.0,
            ("count", _) => 100_000.0,
            ("avg_speed" | "speed_kmh", _) => 300.0,
            ("occupancy", _) => 1.0,
            (other, _) => panic!("unexpected metric {other}"),
        };
        (0.0..=max).contains(&s.value)
    }

    #[test]
    fn same_seed_same_bytes_with_faults_on() {
        let mut a = Fleet::with_faults(&config(7), Faults::all(0.1));
        let mut b = Fleet::with_faults(&config(7), Faults::all(0.1));
        assert_eq!(run_fleet(&mut a, 2000), run_fleet(&mut b, 2000));
        let mut c = Fleet::with_faults(&config(8), Faults::all(0.1));
        let mut a = Fleet::with_faults(&config(7), Faults::all(0.1));
        assert_ne!(run_fleet(&mut a, 200), run_fleet(&mut c, 200));
    }

    #[test]
    fn every_format_appears_and_no_fault_when_none_enabled() {
        let messages = run_fleet(&mut Fleet::new(&config(3)), 2000);
        let formats: HashSet<Format> = messages.iter().map(|(_, m)| m.format).collect();
        assert_eq!(formats.len(), Format::ALL.len());
        assert!(messages.iter().all(|(_, m)| m.fault.is_none()));
    }

    #[test]
    fn each_fault_appears_alone_when_enabled() {
        for fault in Fault::ALL {
            let messages = faulty(Faults::only(&[fault]).with_rate(0.1).unwrap(), 2000);
            let shown: HashSet<Option<Fault>> = messages.iter().map(|(_, m)| m.fault).collect();
            assert!(shown.contains(&Some(fault)), "{fault} never appeared");
            assert!(
                shown.iter().all(|f| f.is_none() || *f == Some(fault)),
                "{fault} alone enabled, saw {shown:?}"
            );
        }
        let all = faulty(Faults::all(0.1), 3000);
        for fault in Fault::ALL {
            assert!(all.iter().any(|(_, m)| m.fault == Some(fault)), "{fault}");
        }
    }

    #[test]
    fn clean_payloads_have_their_format_shape() {
        let fleet = Fleet::new(&config(5));
        let ids: HashMap<String, (Format, Option<String>)> = fleet
            .devices
            .iter()
            .map(|d| {
                let ext = d.external_id.as_ref().map(|e| e.value().to_string());
                (d.device_id.clone(), (d.format, ext))
            })
            .collect();
        let mut fleet = fleet;
        let mut plates = HashMap::<String, u32>::new();
        for (now, m) in run_fleet(&mut fleet, 2000) {
            let (format, ext) = &ids[&m.device_id];
            assert_eq!(*format, m.format);
            let values = seen(&m);
            assert!(values.iter().all(plausible), "{m:?}");
            let aligned = now - now % 1000;
            let body: Option<Json> = serde_json::from_slice(&m.payload).ok();
            match m.format {
                Format::IocJson => {
                    assert_eq!(m.topic, format!("ioc/v1/devices/{}/telemetry", m.device_id));
                    assert_eq!(values.len(), 8);
                    assert!(values.iter().all(|v| v.ts == now));
                    let b = body.unwrap();
                    if b.get("units").is_some() {
                        assert_eq!(b["units"], json!({"co": "mg/m3", "temperature": "°F"}));
                        let co = b["values"]["co"].as_f64().unwrap();
                        let t = b["values"]["temperature"].as_f64().unwrap();
                        assert!(co < 20.0 && (50.0..110.0).contains(&t), "{b}");
                    }
                }
                Format::Senml => {
                    assert_eq!(m.topic, format!("ioc/v1/devices/{}/senml", m.device_id));
                    let b = body.unwrap();
                    assert_eq!(b[0]["bn"], json!(format!("urn:dev:{}:", m.device_id)));
                    let bt = b[0]["bt"].as_f64().unwrap();
                    assert!((bt * 1000.0 - now as f64).abs() < 1.0, "bt is seconds");
                    for v in &values {
                        assert!(ioc_names().contains(&v.metric.as_str()), "{v:?}");
                        assert!(["ug/m3", "Cel", "%RH", "ppb"].contains(&v.unit.as_str()));
                    }
                }
                Format::VendorFlat => {
                    assert!(
                        m.topic.starts_with("ioc/v1/gateways/gw-") && m.topic.ends_with("/flat")
                    );
                    let b = body.unwrap();
                    let imei = b["imei"].as_str().unwrap();
                    assert_eq!(Some(imei), ext.as_deref());
                    assert!(imei.len() == 15 && imei.bytes().all(|c| c.is_ascii_digit()));
                    let text = std::str::from_utf8(&m.payload).unwrap();
                    assert!(text.starts_with("{\"imei\":"), "{text}");
                    for key in ["PM2_5", "PM10", "CO", "Temp"] {
                        let v = b[key].as_str().unwrap();
                        assert!(v.contains(',') && !v.contains('.'), "{key} {v}");
                    }
                    for key in ["NO2", "Humi"] {
                        assert!(b[key].as_str().unwrap().parse::<u32>().is_ok());
                    }
                    assert!(
                        values.iter().all(|v| v.ts == aligned),
                        "local time = UTC + 7h"
                    );
                    assert_eq!(values.len(), m.readings);
                }
                Format::Tt10Station => {
                    let code = ext.clone().unwrap();
                    assert_eq!(m.topic, format!("ioc/v1/stations/{code}/file"));
                    assert!(code
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
                    let text = std::str::from_utf8(&m.payload).unwrap();
                    for line in text.lines() {
                        let status = line.trim_end_matches('\r').split('\t').nth(4).unwrap();
                        assert!(["00", "01", "02"].contains(&status));
                    }
                    let names: HashSet<&str> = values.iter().map(|v| v.metric.as_str()).collect();
                    assert!(names.contains("pH") && names.contains("COD") && names.contains("TSS"));
                    assert!(names.contains("NH4+") || names.contains("Amoni"));
                    assert!(names.contains("Flow") || names.contains("Luu luong"));
                    assert!(values.iter().all(|v| v.ts == aligned));
                    assert_eq!(values.len(), 6);
                }
                Format::TrafficCounter => {
                    assert_eq!(m.topic, format!("ioc/v1/devices/{}/counts", m.device_id));
                    let b = body.unwrap();
                    assert_eq!(b["sensor"], json!(m.device_id));
                    // Each count is over the time since the counter's previous one.
                    assert!(
                        b["interval_s"]
                            .as_i64()
                            .is_some_and(|s| (1..=300).contains(&s)),
                        "{b}"
                    );
                    assert!(values.iter().all(|v| v.ts == aligned));
                    assert_eq!(values.len(), m.readings);
                }
                Format::CameraEvent => {
                    let camera = ext.clone().unwrap();
                    assert_eq!(m.topic, format!("ioc/v1/cameras/{camera}/events"));
                    let b = body.unwrap();
                    assert_eq!(b["camera_id"], json!(camera));
                    let event = b["event_id"].as_str().unwrap();
                    assert!(event.starts_with(&format!("{camera}-")));
                    let seq = event.rsplit('-').next().unwrap();
                    assert_eq!(
                        b["image_ref"],
                        json!(format!("s3://evidence/{camera}/{seq}.jpg"))
                    );
                    assert!(signals_types().contains(&b["type"].as_str().unwrap()));
                    let plate = b["plate"].as_str().unwrap();
                    let (head, tail) = plate.split_once('-').unwrap();
                    assert!(head.len() >= 3 && head[..2].bytes().all(|c| c.is_ascii_digit()));
                    assert!(tail.len() == 6 && &tail[3..4] == ".", "{plate}");
                    *plates.entry(plate.to_string()).or_default() += 1;
                    assert_eq!(values[0].ts, aligned);
                    assert_eq!(m.readings, 0);
                }
            }
        }
        assert!(plates.values().any(|n| *n > 1), "repeat offenders exist");
        assert!(plates.keys().any(|p| p.starts_with("47")));
    }

    fn ioc_names() -> [&'static str; 8] {
        [
            "pm25",
            "pm10",
            "no2",
            "so2",
            "co",
            "o3",
            "temperature",
            "humidity",
        ]
    }

    fn signals_types() -> [&'static str; 6] {
        [
            "red_light",
            "no_helmet",
            "wrong_lane",
            "wrong_way",
            "speeding",
            "no_seatbelt",
        ]
    }

    #[test]
    fn reading_keys_and_event_ids_are_unique_apart_from_resends() {
        let messages = faulty(Faults::all(0.15), 4000);
        let mut keys = HashSet::new();
        let mut events = HashSet::new();
        let mut checked = 0;
        for (_, m) in &messages {
            if matches!(m.fault, Some(Fault::Duplicate | Fault::Malformed)) {
                continue;
            }
            for s in seen(m) {
                if m.format == Format::CameraEvent {
                    let b: Json = serde_json::from_slice(&m.payload).unwrap();
                    let id = b["event_id"].as_str().unwrap().to_string();
                    assert!(events.insert(id), "{m:?}");
                } else {
                    let key = (m.device_id.clone(), s.channel, s.metric, s.ts);
                    assert!(keys.insert(key.clone()), "{key:?} again in {m:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn duplicates_resend_readings_as_a_new_message_where_the_format_numbers_them() {
        let messages = faulty(
            Faults::only(&[Fault::Duplicate]).with_rate(0.2).unwrap(),
            2000,
        );
        let mut sent = HashSet::new();
        let mut last: HashMap<String, &SimMessage> = HashMap::new();
        let (mut new_messages, mut same_bytes) = (0, 0);
        for (_, m) in &messages {
            let bytes = (m.topic.clone(), m.payload.clone());
            if m.fault == Some(Fault::Duplicate) {
                let before = last[&m.device_id];
                if m.format == Format::IocJson {
                    // The same readings under the next number: another message.
                    assert!(!sent.contains(&bytes), "{m:?}");
                    let (a, b): (Json, Json) = (
                        serde_json::from_slice(&m.payload).unwrap(),
                        serde_json::from_slice(&before.payload).unwrap(),
                    );
                    assert_eq!(a["seq"], b["seq"].as_u64().unwrap() + 1, "{m:?}");
                    assert_eq!((&a["ts"], &a["values"]), (&b["ts"], &b["values"]));
                    new_messages += 1;
                } else {
                    assert_eq!(m.payload, before.payload, "{m:?}");
                    same_bytes += 1;
                }
            } else {
                assert!(sent.insert(bytes), "only resends repeat");
            }
            sent.insert((m.topic.clone(), m.payload.clone()));
            last.insert(m.device_id.clone(), m);
        }
        assert!(
            new_messages > 10 && same_bytes > 30,
            "{new_messages} {same_bytes}"
        );
    }

    #[test]
    fn a_prefix_names_every_device_and_external_id() {
        let plain = Fleet::new(&config(3));
        let prefixed = Fleet::new(&SimConfig {
            id_prefix: "b-".into(),
            ..config(3)
        });
        for (a, b) in plain.devices.iter().zip(&prefixed.devices) {
            assert_eq!(b.device_id, format!("b-{}", a.device_id));
            match (&a.external_id, &b.external_id) {
                (Some(ExternalId::Imei(x)), Some(ExternalId::Imei(y))) => assert_ne!(x, y),
                (Some(x), Some(y)) => assert_eq!(y.value(), format!("b-{}", x.value())),
                (None, None) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn backfill_follows_silence_with_times_older_than_the_outage() {
        let messages = faulty(
            Faults::only(&[Fault::Backfill]).with_rate(0.1).unwrap(),
            3000,
        );
        // Per device: index of its last message, every timestamp it has sent, and the oldest
        // one sent before the current backfill began.
        let mut last_index: HashMap<String, usize> = HashMap::new();
        let mut sent: HashMap<String, Vec<i64>> = HashMap::new();
        let mut floor: HashMap<String, i64> = HashMap::new();
        let mut seen_backfill = HashSet::new();
        let mut backfilled = 0;
        for (k, (now, m)) in messages.iter().enumerate() {
            let ts = seen(m)[0].ts;
            let earlier = sent.entry(m.device_id.clone()).or_default();
            let previous = last_index.insert(m.device_id.clone(), k);
            if m.fault == Some(Fault::Backfill) {
                backfilled += 1;
                // A backlog goes out in one piece, before anything else is sent.
                let first_of_batch = previous
                    .is_none_or(|p| k - p > 1 || messages[p].1.fault != Some(Fault::Backfill));
                if first_of_batch {
                    if let Some(p) = previous {
                        // The device stayed silent while at least three turns went by.
                        assert!(k - p > 3 * 2, "{k} {p}");
                    }
                    floor.insert(
                        m.device_id.clone(),
                        earlier.iter().copied().min().unwrap_or(*now),
                    );
                } else {
                    assert!(ts > *earlier.last().unwrap(), "oldest first");
                }
                // Older than anything sent before, so older than the outage's start.
                assert!(ts < floor[&m.device_id], "{m:?}");
                // Hours to two days old; later backlogs stack below earlier ones (never over
                // anything sent), still well inside a datalogger's 60 days.
                let first_ever = !seen_backfill.contains(&m.device_id);
                assert!(
                    !first_ever || now - ts <= 2 * 86_400_000 + 3_600_000,
                    "{m:?}"
                );
                assert!(now - ts <= 60 * 86_400_000 && now - ts >= 3_600_000);
                seen_backfill.insert(m.device_id.clone());
            }
            earlier.push(ts);
        }
        assert!(backfilled > 30);
    }

    #[test]
    fn clock_skew_is_hours_off() {
        let messages = faulty(
            Faults::only(&[Fault::ClockSkew]).with_rate(0.1).unwrap(),
            2000,
        );
        let (mut ahead, mut behind) = (0, 0);
        for (now, m) in messages
            .iter()
            .filter(|(_, m)| m.fault == Some(Fault::ClockSkew))
        {
            let off = seen(m)[0].ts - now;
            assert!(off.abs() >= 3_600_000 - 1000, "{off}");
            if off > 0 {
                ahead += 1
            } else {
                behind += 1
            }
        }
        assert!(ahead > 0 && behind > 0);
    }

    #[test]
    fn stuck_devices_repeat_their_values_and_spikes_are_impossible_values() {
        let messages = faulty(Faults::only(&[Fault::Stuck]).with_rate(0.1).unwrap(), 3000);
        let mut previous: HashMap<String, Vec<f64>> = HashMap::new();
        let mut repeats = 0;
        for (_, m) in messages
            .iter()
            .filter(|(_, m)| m.fault == Some(Fault::Stuck))
        {
            let values: Vec<f64> = seen(m).iter().map(|s| s.value).collect();
            if previous.get(&m.device_id) == Some(&values) {
                repeats += 1;
            }
            previous.insert(m.device_id.clone(), values);
        }
        assert!(repeats > 20, "{repeats}");

        let messages = faulty(Faults::only(&[Fault::Spike]).with_rate(0.1).unwrap(), 2000);
        let mut spikes = 0;
        for (_, m) in &messages {
            let implausible = seen(m).iter().filter(|s| !plausible(s)).count();
            if m.fault == Some(Fault::Spike) {
                assert_eq!(implausible, 1, "{m:?}");
                spikes += 1;
            } else {
                assert_eq!(implausible, 0, "{m:?}");
            }
        }
        assert!(spikes > 30);
    }

    #[test]
    fn wrong_units_and_malformed_payloads_are_visible() {
        let messages = faulty(
            Faults::only(&[Fault::WrongUnit]).with_rate(0.2).unwrap(),
            2000,
        );
        let known = [
            "canonical",
            "vendor",
            "mg/m3",
            "°F",
            "ug/m3",
            "Cel",
            "%RH",
            "ppb",
            "pH",
            "mg/L",
            "oC",
            "m3/h",
            "km/h",
        ];
        let mut wrong = 0;
        for (_, m) in &messages {
            let unknown = seen(m)
                .iter()
                .filter(|s| !known.contains(&s.unit.as_str()))
                .count();
            if m.fault == Some(Fault::WrongUnit) {
                assert_eq!(unknown, 1, "{m:?}");
                assert_eq!(m.readings, seen(m).len() - 1);
                wrong += 1;
            } else {
                assert_eq!(unknown, 0, "{m:?}");
            }
        }
        assert!(wrong > 30);

        let messages = faulty(
            Faults::only(&[Fault::Malformed]).with_rate(0.2).unwrap(),
            2000,
        );
        let mut malformed = 0;
        for (_, m) in messages
            .iter()
            .filter(|(_, m)| m.fault == Some(Fault::Malformed))
        {
            malformed += 1;
            assert_eq!(m.readings, 0);
            // A test decoder fails on it, or (a station file cut at a line end) sees less.
            match std::panic::catch_unwind(|| seen(m)) {
                Err(_) => {}
                Ok(values) => assert!(m.format == Format::Tt10Station && values.len() < 6, "{m:?}"),
            }
        }
        assert!(malformed > 30);
    }

    #[test]
    fn bursts_come_from_one_device_back_to_back() {
        let messages = faulty(Faults::only(&[Fault::Burst]).with_rate(0.05).unwrap(), 2000);
        let mut longest = 0;
        let mut run = 0;
        let mut last = String::new();
        for (_, m) in &messages {
            if m.fault == Some(Fault::Burst) && m.device_id == last {
                run += 1;
            } else {
                run = 1;
            }
            longest = longest.max(run);
            last = m.device_id.clone();
        }
        assert!(longest >= 5);
    }

    #[test]
    fn report_counts_every_message_once_per_format() {
        let messages = faulty(Faults::all(0.2), 1234);
        let mut report = SimReport::default();
        for (_, m) in &messages {
            report.record(m);
        }
        assert_eq!(report.messages, 1234);
        let sum: u64 = report.by_format.values().map(|t| t.messages).sum();
        assert_eq!(sum, 1234);
        let readings: u64 = report.by_format.values().map(|t| t.readings).sum();
        assert_eq!(readings, report.readings);
        let faults: u64 = report
            .by_format
            .values()
            .flat_map(|t| t.faults.values())
            .sum();
        assert_eq!(
            faults as usize,
            messages.iter().filter(|(_, m)| m.fault.is_some()).count()
        );
        let line = serde_json::to_value(&report).unwrap();
        assert_eq!(line["by_format"]["camera-event"]["readings"], json!(0));
        assert!(line["by_format"]["tt10-station"]["faults"].is_object());
        assert_eq!(report.format_lines().len(), 6);
    }
}
