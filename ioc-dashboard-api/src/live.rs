//! Live data for websocket clients: one bus tail per API instance (outside any consumer
//! group, so every instance sees everything) into a [`LiveHub`], which keeps each stream's
//! latest values (snapshots) and recent past (resumes) and fans messages out through a bounded
//! broadcast channel. Each message is serialized once, whatever the number of clients, and
//! carries its bus position, which means the same on every instance.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;

use ioc_bus::registry::RegistryView;
use ioc_bus::{Bus, Consumer, StartAt};
use ioc_contract::time::{format_ms, now_ms};
use ioc_contract::{
    Aggregate, Alert, DeadLetter, Device, Reading, ReadingBatch, RegistryEvent, RejectCode,
    Resolution, TapRecord,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::alerts::{ApiAlert, ApiTransition};
use crate::views::{ApiAggregate, ApiAqi, ApiExceedance, ApiReading};
use ioc_history::{AqiRow, ExceedanceRow, ForecastRow, QualityRow, TrafficRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Readings,
    Aggregates,
    Alerts,
    /// What ingest made of each message of devices being commissioned or serviced.
    Device,
    /// Hourly and daily VN_AQI of air-quality stations.
    Aqi,
    /// QCVN exceedances and their withdrawals.
    Exceedances,
    /// Every alert transition (fired, acknowledged, resolved).
    #[serde(rename = "alert_transitions")]
    AlertTransitions,
    /// Each device's registry status (commissioning, active, maintenance, decommissioned) and
    /// its changes; the whole registry is in its snapshot.
    Status,
    /// Data-quality counts per device, channel, metric and minute, as each minute is counted.
    Quality,
    /// PM2.5 forecasts of air-quality stations, each hour ahead as it is made.
    Forecast,
    /// Traffic counters' 5-minute and hourly flow, speed, occupancy and congestion, and
    /// cameras' violations per type and hour, as each is derived.
    Traffic,
}

impl StreamName {
    pub const ALL: [StreamName; 11] = [
        StreamName::Readings,
        StreamName::Aggregates,
        StreamName::Alerts,
        StreamName::Device,
        StreamName::Aqi,
        StreamName::Exceedances,
        StreamName::AlertTransitions,
        StreamName::Status,
        StreamName::Quality,
        StreamName::Forecast,
        StreamName::Traffic,
    ];

    /// The resolutions a subscription to the stream may name, its default first (none: the
    /// stream has no resolution).
    pub fn resolutions(self) -> &'static [Resolution] {
        match self {
            StreamName::Aggregates => &Resolution::ALL,
            StreamName::Aqi => &[Resolution::Hour, Resolution::Day],
            StreamName::Traffic => &[Resolution::FiveMinutes, Resolution::Hour],
            _ => &[],
        }
    }

    /// The bus topic behind the stream.
    pub fn topic(self, topics: &ioc_contract::Topics) -> &str {
        match self {
            StreamName::Readings => &topics.readings,
            StreamName::Aggregates => &topics.aggregates,
            StreamName::Alerts => &topics.alerts,
            StreamName::Device => &topics.tap,
            StreamName::Aqi => &topics.aqi,
            StreamName::Exceedances => &topics.exceedances,
            StreamName::AlertTransitions => &topics.alert_transitions,
            StreamName::Status => &topics.registry,
            StreamName::Quality => &topics.quality,
            StreamName::Forecast => &topics.forecast,
            StreamName::Traffic => &topics.traffic,
        }
    }

    /// Whether the stream's messages are values, of which only the latest per device and key
    /// matters (so a client may ask for them conflated); the others are events.
    pub fn is_values(self) -> bool {
        matches!(
            self,
            StreamName::Readings
                | StreamName::Aggregates
                | StreamName::Aqi
                | StreamName::Exceedances
                | StreamName::Quality
                | StreamName::Forecast
                | StreamName::Traffic
        )
    }
}

/// Where a message stands in the bus: its record's partition and offset, and its index among
/// the messages made of that record (one readings record holds several readings). Serialized
/// as `[partition, offset, index]`; the same on every API instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Pos(pub i32, pub i64, pub i32);

impl Pos {
    /// Everything of `partition` before `offset`.
    pub fn before(partition: i32, offset: i64) -> Pos {
        Pos(partition, offset - 1, i32::MAX)
    }

    /// Whether `self` comes after `other` in their partition.
    pub fn after(self, other: Pos) -> bool {
        (self.1, self.2) > (other.1, other.2)
    }
}

/// One message for websocket clients, `{"stream": ..., "pos": [p, o, i], "data": {...}}`,
/// serialized once whatever the number of clients, with what filters look at.
#[derive(Debug)]
pub struct LiveMessage {
    pub stream: StreamName,
    pub device_id: String,
    /// The registered device, as the registry had it when the message came.
    pub device: Option<Arc<Device>>,
    /// An aggregate's or an AQI's resolution (sessions subscribe to one).
    pub resolution: Option<Resolution>,
    pub metric: Option<String>,
    /// What, within its device, the message is the latest value of (a reading's channel and
    /// metric, an alert's rule instance): snapshots keep the latest per device and key, and
    /// conflation coalesces by it. `None`: an event, kept in no snapshot.
    pub key: Option<String>,
    /// The message ends its key's entry in snapshots (a resolved alert).
    pub retire: bool,
    /// Its value, for the fleet map (a reading's, an aggregate's mean, an AQI).
    pub value: Option<f64>,
    /// A word for the fleet map (a traffic counter's congestion level).
    pub level: Option<String>,
    /// When the value is for (a reading's time, a window's start, a forecast's origin):
    /// snapshots keep the newest per key, so a late or backfilled value does not hide the
    /// current one.
    pub at: Option<i64>,
    pub pos: Pos,
    pub json: Utf8Bytes,
}

impl LiveMessage {
    pub fn new<T: Serialize>(
        stream: StreamName,
        pos: Pos,
        device_id: &str,
        data: &T,
    ) -> LiveMessage {
        #[derive(Serialize)]
        struct Envelope<'a, T> {
            stream: StreamName,
            pos: Pos,
            data: &'a T,
        }
        let json = serde_json::to_string(&Envelope { stream, pos, data })
            .expect("live messages serialize");
        LiveMessage {
            stream,
            device_id: device_id.to_string(),
            device: None,
            resolution: None,
            metric: None,
            key: None,
            retire: false,
            value: None,
            level: None,
            at: None,
            pos,
            json: json.into(),
        }
    }

    pub fn reading(r: &Reading, pos: Pos) -> LiveMessage {
        LiveMessage {
            metric: Some(r.metric.clone()),
            key: Some(format!("{}/{}", r.channel, r.metric)),
            value: Some(r.value),
            at: Some(r.ts),
            ..LiveMessage::new(
                StreamName::Readings,
                pos,
                &r.device_id,
                &ApiReading::from(r),
            )
        }
    }

    /// An aggregate of `resolution`.
    pub fn aggregate(a: &Aggregate, pos: Pos) -> LiveMessage {
        LiveMessage {
            resolution: Some(a.resolution),
            metric: Some(a.metric.clone()),
            key: Some(format!(
                "{}/{}/{}",
                a.resolution.as_str(),
                a.channel,
                a.metric
            )),
            at: Some(a.window_start),
            ..LiveMessage::new(
                StreamName::Aggregates,
                pos,
                &a.device_id,
                &ApiAggregate::from(a),
            )
        }
    }

    /// An hourly or daily AQI.
    pub fn aqi(a: &AqiRow, pos: Pos) -> LiveMessage {
        LiveMessage {
            resolution: Resolution::parse(&a.resolution),
            key: Some(a.resolution.clone()),
            value: a.aqi.map(f64::from),
            at: Some(a.window_start),
            ..LiveMessage::new(StreamName::Aqi, pos, &a.device_id, &ApiAqi::from(a))
        }
    }

    pub fn exceedance(e: &ExceedanceRow, pos: Pos) -> LiveMessage {
        LiveMessage {
            metric: Some(e.metric.clone()),
            key: Some(format!(
                "{}/{}/{}/{}",
                e.channel, e.metric, e.regulation, e.period
            )),
            ..LiveMessage::new(
                StreamName::Exceedances,
                pos,
                &e.device_id,
                &ApiExceedance::from(e),
            )
        }
    }

    /// One series' counts for one minute: snapshots keep each series' latest minute.
    pub fn quality(q: &QualityRow, pos: Pos) -> LiveMessage {
        LiveMessage {
            metric: Some(q.metric.clone()),
            key: Some(format!("{}/{}", q.channel, q.metric)),
            at: Some(q.window_start),
            ..LiveMessage::new(
                StreamName::Quality,
                pos,
                &q.device_id,
                &crate::quality::ApiMinute::from(q),
            )
        }
    }

    /// One hour ahead of a station's forecast: snapshots keep each hour ahead's latest.
    pub fn forecast(f: &ForecastRow, pos: Pos) -> LiveMessage {
        LiveMessage {
            metric: Some("pm25".into()),
            key: Some(f.horizon_h.to_string()),
            value: Some(f.pm25),
            at: Some(f.origin),
            ..LiveMessage::new(
                StreamName::Forecast,
                pos,
                &f.device_id,
                &crate::views::ApiForecast::from(f),
            )
        }
    }

    /// A counter's window (snapshots keep each resolution's latest) or a camera's count of one
    /// violation type in an hour (snapshots keep each type's latest hour).
    pub fn traffic(t: &TrafficRecord, pos: Pos) -> LiveMessage {
        match t {
            TrafficRecord::Flow(f) => LiveMessage {
                resolution: Resolution::parse(&f.resolution),
                key: Some(f.resolution.clone()),
                value: f.flow_vph,
                level: (!f.level.is_empty()).then(|| f.level.clone()),
                at: Some(f.window_start),
                ..LiveMessage::new(
                    StreamName::Traffic,
                    pos,
                    &f.device_id,
                    &crate::views::ApiTraffic::from(f),
                )
            },
            TrafficRecord::Violations(v) => LiveMessage {
                key: Some(format!("violations/{}", v.violation)),
                value: Some(v.count as f64),
                at: Some(v.window_start),
                ..LiveMessage::new(
                    StreamName::Traffic,
                    pos,
                    &v.device_id,
                    &crate::views::ApiViolations::from(v),
                )
            },
        }
    }

    /// A device's registry status as of `at`, set by `by` (none: at its registration).
    pub fn status(device: Arc<Device>, at: i64, by: Option<&str>, pos: Pos) -> LiveMessage {
        #[derive(Serialize)]
        struct ApiStatus<'a> {
            device_id: &'a str,
            kind: &'a str,
            status: &'static str,
            at: String,
            by: Option<&'a str>,
        }
        let data = ApiStatus {
            device_id: &device.device_id,
            kind: &device.kind,
            status: device.status.as_str(),
            at: format_ms(at),
            by: by.or(device.registered_by.as_ref().map(|a| a.name.as_str())),
        };
        LiveMessage {
            key: Some("status".into()),
            device: Some(device.clone()),
            ..LiveMessage::new(StreamName::Status, pos, &device.device_id, &data)
        }
    }

    /// An alert's new state: snapshots hold each device's open alerts.
    pub fn alert(a: &Alert, pos: Pos) -> LiveMessage {
        LiveMessage {
            metric: Some(a.metric.clone()),
            key: Some(format!("{}/{}", a.rule, a.instance)),
            retire: a.state == ioc_contract::AlertState::Resolved,
            ..LiveMessage::new(StreamName::Alerts, pos, &a.device_id, &ApiAlert::from(a))
        }
    }
}

/// What a subscription selects; every part given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub device_ids: Option<HashSet<String>>,
    pub kinds: Option<HashSet<String>>,
    pub communes: Option<HashSet<String>>,
    /// `[south, west, north, east]` in degrees.
    pub bbox: Option<[f64; 4]>,
    pub metrics: Option<HashSet<String>>,
    /// For the streams that have one (absent: the stream's default).
    pub resolution: Option<Resolution>,
}

impl Filter {
    pub fn devices(ids: impl IntoIterator<Item = String>) -> Filter {
        Filter {
            device_ids: Some(ids.into_iter().collect()),
            ..Filter::default()
        }
    }

    pub fn matches(&self, m: &LiveMessage) -> bool {
        if let Some(ids) = &self.device_ids {
            if !ids.contains(&m.device_id) {
                return false;
            }
        }
        if let Some(resolution) = m.resolution {
            if Some(&resolution) != self.resolution.as_ref().or(m.stream.resolutions().first()) {
                return false;
            }
        }
        if let Some(metrics) = &self.metrics {
            if !m.metric.as_ref().is_some_and(|x| metrics.contains(x)) {
                return false;
            }
        }
        if self.kinds.is_none() && self.communes.is_none() && self.bbox.is_none() {
            return true;
        }
        let Some(d) = &m.device else {
            return false;
        };
        self.kinds.as_ref().is_none_or(|k| k.contains(&d.kind))
            && self
                .communes
                .as_ref()
                .is_none_or(|c| d.commune.as_ref().is_some_and(|x| c.contains(x)))
            && self
                .bbox
                .is_none_or(|b| crate::params::in_bbox(b, d.lat, d.lon))
    }
}

/// A client's last position, to resume from.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    pub epoch: String,
    /// The last position it has of each partition.
    pub position: Vec<Pos>,
}

/// A subscription's start: what the client gets before live messages, and the position they
/// continue from.
#[derive(Debug)]
pub struct Start {
    pub epoch: String,
    /// Per partition, the last position the client has once it has `items`.
    pub position: Vec<Pos>,
    /// The snapshot (latest per device and key), or, when `recovered`, what it missed, in order.
    pub items: Vec<Arc<LiveMessage>>,
    pub recovered: bool,
    /// Why a recovery asked for could not be made (the client gets a snapshot instead).
    pub reset: Option<String>,
}

/// One stream's recent past on this instance.
#[derive(Debug, Default)]
struct StreamState {
    /// Per partition, the last message taken in.
    head: Vec<Pos>,
    /// Per partition, the last message no longer in `ring` (or before the first).
    evicted: Vec<Pos>,
    ring: VecDeque<Arc<LiveMessage>>,
    ring_bytes: usize,
    /// The latest message per (device, key), for snapshots.
    latest: HashMap<(String, String), Arc<LiveMessage>>,
}

impl StreamState {
    fn partition(&mut self, p: i32) -> usize {
        let i = p.max(0) as usize;
        while self.head.len() <= i {
            let q = self.head.len() as i32;
            self.head.push(Pos::before(q, 0));
            self.evicted.push(Pos::before(q, 0));
        }
        i
    }
}

#[derive(Debug, Default)]
struct HubState {
    epoch: String,
    streams: HashMap<StreamName, StreamState>,
}

/// The fan-out point: each message is taken in once (its stream's recent past and latest
/// values updated, then broadcast). Slow clients lag instead of slowing everyone down.
#[derive(Clone)]
pub struct LiveHub {
    tx: broadcast::Sender<Arc<LiveMessage>>,
    state: Arc<Mutex<HubState>>,
    history_bytes: usize,
}

impl LiveHub {
    /// A hub whose broadcast holds `capacity` messages a session has not read yet, keeping
    /// `history_bytes` of each stream's recent messages for clients that resume.
    pub fn new(capacity: usize, history_bytes: usize) -> LiveHub {
        let (tx, _) = broadcast::channel(capacity.max(1));
        LiveHub {
            tx,
            state: Arc::default(),
            history_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_epoch(&self, epoch: &str) {
        self.lock().epoch = epoch.to_string();
    }

    pub fn epoch(&self) -> String {
        self.lock().epoch.clone()
    }

    /// Where a stream's partitions start on this instance: messages before `offsets` are not
    /// taken in (a consumer may deliver a few from before where it was asked to start).
    pub fn start_stream(&self, stream: StreamName, offsets: &[i64]) {
        let mut state = self.lock();
        let s = state.streams.entry(stream).or_default();
        s.head = offsets
            .iter()
            .enumerate()
            .map(|(p, o)| Pos::before(p as i32, *o))
            .collect();
        s.evicted = s.head.clone();
    }

    /// Takes a message in, unless its position is not past its partition's last one (a
    /// record read twice), and broadcasts it.
    pub fn publish(&self, message: LiveMessage) {
        let message = Arc::new(message);
        let mut state = self.lock();
        let s = state.streams.entry(message.stream).or_default();
        let p = s.partition(message.pos.0);
        if !message.pos.after(s.head[p]) {
            return;
        }
        s.head[p] = message.pos;
        if let Some(key) = &message.key {
            let entry = (message.device_id.clone(), key.clone());
            let held_newer = s
                .latest
                .get(&entry)
                .and_then(|held| held.at)
                .is_some_and(|held| message.at.is_some_and(|at| at < held));
            if message.retire {
                s.latest.remove(&entry);
            } else if !held_newer {
                s.latest.insert(entry, message.clone());
            }
        }
        s.ring_bytes += message.json.len();
        s.ring.push_back(message.clone());
        while s.ring_bytes > self.history_bytes {
            let Some(old) = s.ring.pop_front() else { break };
            s.ring_bytes -= old.json.len();
            let q = s.partition(old.pos.0);
            s.evicted[q] = old.pos;
        }
        // Sent under the lock: a session that starts a subscription (under the lock too)
        // either finds the message in its snapshot or receives it after, never both or
        // neither; it drops what it receives at or before its start position.
        let _ = self.tx.send(message);
    }

    /// A stream's latest message per device and key.
    pub fn latest(&self, stream: StreamName) -> Vec<Arc<LiveMessage>> {
        let state = self.lock();
        state
            .streams
            .get(&stream)
            .map(|s| s.latest.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn receiver(&self) -> broadcast::Receiver<Arc<LiveMessage>> {
        self.tx.subscribe()
    }

    /// Starts a subscription: what the client gets first and the position live messages
    /// continue from. With `recover`, what it missed since its position, if this instance
    /// still has all of it in the same epoch; otherwise a snapshot and why.
    pub fn start(&self, stream: StreamName, filter: &Filter, recover: Option<&Recover>) -> Start {
        let mut state = self.lock();
        let epoch = state.epoch.clone();
        let s = state.streams.entry(stream).or_default();
        let mut reset = None;
        if let Some(r) = recover {
            match recoverable(s, &epoch, r) {
                Ok(from) => {
                    let items = s
                        .ring
                        .iter()
                        .filter(|m| {
                            let p = m.pos.0.max(0) as usize;
                            from.get(p).is_none_or(|f| m.pos.after(*f)) && filter.matches(m)
                        })
                        .cloned()
                        .collect();
                    // A client ahead of this instance (it came from another) keeps its
                    // position: what it already has is not sent again.
                    let position = s
                        .head
                        .iter()
                        .zip(&from)
                        .map(|(h, f)| if f.after(*h) { *f } else { *h })
                        .collect();
                    return Start {
                        epoch,
                        position,
                        items,
                        recovered: true,
                        reset: None,
                    };
                }
                Err(why) => reset = Some(why),
            }
        }
        let mut items: Vec<Arc<LiveMessage>> = s
            .latest
            .values()
            .filter(|m| filter.matches(m))
            .cloned()
            .collect();
        // In bus order within each partition, as a client applying them in turn expects.
        items.sort_by_key(|m| (m.pos.1, m.pos.0, m.pos.2));
        Start {
            epoch,
            position: s.head.clone(),
            items,
            recovered: false,
            reset,
        }
    }
}

/// Per partition, the position a recovery continues from, or why it cannot be made.
fn recoverable(s: &mut StreamState, epoch: &str, r: &Recover) -> Result<Vec<Pos>, String> {
    if r.epoch != epoch {
        return Err(format!(
            "the bus's history changed: your positions are of epoch {:?}, this one is {epoch:?}",
            r.epoch
        ));
    }
    let mut from: Vec<Pos> = s.head.clone();
    let mut given = vec![false; from.len()];
    for pos in &r.position {
        let p = s.partition(pos.0);
        if from.len() <= p {
            from.resize(p + 1, Pos::before(pos.0, 0));
            given.resize(p + 1, false);
        }
        from[p] = *pos;
        given[p] = true;
    }
    if let Some(p) = given.iter().position(|g| !g) {
        return Err(format!("your position names no offset for partition {p}"));
    }
    for (p, f) in from.iter().enumerate() {
        if s.evicted[p].after(*f) {
            return Err(format!(
                "what you missed of partition {p} is older than this instance keeps (api.ws.history_bytes)"
            ));
        }
    }
    Ok(from)
}

/// What this API instance has seen of a device since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceActivity {
    /// When ingest first and last received a message from it, stored or rejected (epoch ms).
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    /// Receipt times and ids of its latest messages, oldest first (at most
    /// [`RECENT_MESSAGES`]).
    pub recent: VecDeque<(i64, String)>,
    pub last_rejection: Option<Rejection>,
    /// What its latest message became.
    pub last_message: Option<MessageOutcome>,
}

/// The window of [`Activity::events_in_last_hour`], and how many events a camera keeps at most.
pub const EVENTS_WINDOW_MS: i64 = 3_600_000;
const EVENTS_KEPT: usize = 10_000;

/// How many receipt times [`DeviceActivity::recent`] keeps.
pub const RECENT_MESSAGES: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub at: i64,
    pub code: RejectCode,
    pub reason: String,
    /// For a rejected value: its metric; `None` when the whole message was rejected.
    pub metric: Option<String>,
}

/// One message's readings and rejections, gathered from the records made from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageOutcome {
    pub message_id: String,
    pub received_at: i64,
    pub readings: Vec<Reading>,
    pub rejections: Vec<Rejection>,
}

/// Per device, its [`DeviceActivity`], fed by the tail. Cheap to clone; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    inner: Arc<RwLock<HashMap<String, DeviceActivity>>>,
    /// Per camera, its events of the last hour (event time, event id), in event-time order; a
    /// resend counts once. Only counts are shown (no pseudonym is kept).
    events: Arc<RwLock<HashMap<String, VecDeque<(i64, String)>>>>,
    /// When the tail began reading events (it reads them from their end): counts cover the
    /// last hour only once it has read for an hour.
    events_since: Arc<std::sync::atomic::AtomicI64>,
}

impl Activity {
    pub fn get(&self, device_id: &str) -> Option<DeviceActivity> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(device_id).cloned()
    }

    /// Adds what one record made of message `message_id` to the device's activity.
    fn note(
        &self,
        device_id: &str,
        message_id: &str,
        at: i64,
        readings: Vec<Reading>,
        rejection: Option<Rejection>,
    ) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(device_id.to_string()).or_default();
        entry.first_seen = Some(entry.first_seen.map_or(at, |t| t.min(at)));
        entry.last_seen = entry.last_seen.max(Some(at));
        let known = entry.recent.iter().any(|(_, id)| id == message_id);
        if !known {
            entry.recent.push_back((at, message_id.to_string()));
            if entry.recent.len() > RECENT_MESSAGES {
                entry.recent.pop_front();
            }
            entry.last_message = Some(MessageOutcome {
                message_id: message_id.to_string(),
                received_at: at,
                ..Default::default()
            });
        }
        // Records of one message arrive on several topics, in any order; an older message's
        // late record only updates the last rejection.
        if let Some(last) = entry
            .last_message
            .as_mut()
            .filter(|m| m.message_id == message_id)
        {
            last.readings.extend(readings);
            if let Some(rejection) = &rejection {
                last.rejections.push(rejection.clone());
            }
        }
        if let Some(rejection) = rejection {
            entry.last_rejection = Some(rejection);
        }
    }

    /// Notes a camera's event (its time and id), keeping the last hour's.
    pub fn event(&self, device_id: &str, ts: i64, event_id: &str, now: i64) {
        let mut map = self.events.write().unwrap_or_else(|e| e.into_inner());
        let events = map.entry(device_id.to_string()).or_default();
        while events
            .front()
            .is_some_and(|(t, _)| *t <= now - EVENTS_WINDOW_MS)
        {
            events.pop_front();
        }
        if ts > now - EVENTS_WINDOW_MS && !events.iter().any(|(_, id)| id == event_id) {
            if events.len() >= EVENTS_KEPT {
                events.pop_front();
            }
            // In event-time order: a late event goes where it belongs.
            let at = events.partition_point(|(t, _)| *t <= ts);
            events.insert(at, (ts, event_id.to_string()));
        }
    }

    /// When this instance began counting events (epoch ms; 0 before its tail started).
    pub fn events_since(&self) -> i64 {
        self.events_since.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many events `device_id` had in the hour before `now`.
    pub fn events_in_last_hour(&self, device_id: &str, now: i64) -> usize {
        let map = self.events.read().unwrap_or_else(|e| e.into_inner());
        map.get(device_id).map_or(0, |events| {
            events
                .iter()
                .filter(|(t, _)| *t > now - EVENTS_WINDOW_MS && *t <= now)
                .count()
        })
    }

    /// Notes a readings record (one message's readings; one device's in practice).
    fn readings(&self, batch: ReadingBatch) {
        let mut by_device: HashMap<(String, String), (i64, Vec<Reading>)> = HashMap::new();
        for r in batch.readings {
            let entry = by_device
                .entry((r.device_id.clone(), r.message_id.clone()))
                .or_insert((r.received_at, Vec::new()));
            entry.0 = entry.0.max(r.received_at);
            entry.1.push(r);
        }
        for ((device, message), (at, readings)) in by_device {
            self.note(&device, &message, at, readings, None);
        }
    }

    /// Notes a rejection of a registered device's message or value (letters can name any id a
    /// client made up: those are nobody's activity).
    fn rejected(&self, letter: DeadLetter, registry: &RegistryView) {
        if let Some(device) = letter.device_id.as_ref().filter(|d| registry.contains(d)) {
            let rejection = Rejection {
                at: letter.received_at,
                code: letter.code,
                reason: letter.reason,
                metric: letter.metric,
            };
            self.note(
                device,
                &letter.message_id,
                letter.received_at,
                Vec::new(),
                Some(rejection),
            );
        }
    }
}

/// A tap record as websocket clients see it.
#[derive(Debug, Serialize)]
pub struct ApiTap {
    pub device_id: String,
    pub topic: String,
    pub received_at: String,
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    pub readings: Vec<ApiReading>,
    pub rejections: Vec<serde_json::Value>,
}

impl From<&TapRecord> for ApiTap {
    fn from(t: &TapRecord) -> Self {
        ApiTap {
            device_id: t.device_id.clone(),
            topic: t.topic.clone(),
            received_at: format_ms(t.received_at),
            message_id: t.message_id.clone(),
            raw_text: t.raw_text.clone(),
            raw_base64: t.raw_base64.clone(),
            withheld: t.withheld.clone(),
            readings: t.readings.iter().map(ApiReading::from).collect(),
            rejections: t
                .rejections
                .iter()
                .map(|r| serde_json::json!({"code": r.code.as_str(), "reason": r.reason, "metric": r.metric}))
                .collect(),
        }
    }
}

/// Starts tailing the bus: each stream's topic from `warm` records before its end (so this
/// instance answers snapshots and resumes at once), the alert replies from their end, and the
/// dead-letter, quarantine and events topics for devices' activity (their reasons never quote a
/// plate; their raw bytes are not kept).
pub async fn tail(
    bus: &Bus,
    hub: LiveHub,
    activity: Activity,
    registry: RegistryView,
    replies: crate::alerts::Replies,
    warm: i64,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ioc_bus::BusError> {
    let topics = bus.topics().clone();
    activity
        .events_since
        .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    // Watermarks and partition counts are blocking look-ups.
    let starts = {
        let bus = bus.clone();
        let topics = topics.clone();
        tokio::task::spawn_blocking(move || -> Result<_, ioc_bus::BusError> {
            let mut streams = Vec::new();
            for stream in StreamName::ALL {
                let topic = stream.topic(&topics);
                let mut offsets = Vec::new();
                for p in 0..bus.partitions(topic)? {
                    let (low, high) = bus.watermarks(topic, p)?;
                    // The status snapshot is every device's: the registry from its start.
                    let warm = if stream == StreamName::Status {
                        high
                    } else {
                        warm
                    };
                    offsets.push((high - warm).max(low));
                }
                streams.push((stream, offsets));
            }
            let mut ends = Vec::new();
            for topic in [
                &topics.alert_replies,
                &topics.deadletter,
                &topics.quarantine,
                &topics.events,
            ] {
                ends.push((topic.clone(), bus.partitions(topic)?));
            }
            Ok((streams, ends))
        })
        .await
        .expect("watermark look-up does not panic")?
    };
    let (streams, ends) = starts;
    let mut from: Vec<(&str, i32, StartAt)> = Vec::new();
    for (stream, offsets) in &streams {
        hub.start_stream(*stream, offsets);
        for (p, o) in offsets.iter().enumerate() {
            from.push((stream.topic(&topics), p as i32, StartAt::Offset(*o)));
        }
    }
    for (topic, partitions) in &ends {
        for p in 0..*partitions {
            from.push((topic, p, StartAt::End));
        }
    }
    let mut consumer = bus.consumer_from(&from)?;
    Ok(tokio::spawn(async move {
        loop {
            let record = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = recv(&mut consumer) => m,
            };
            let Some(record) = record else {
                continue;
            };
            let (topic, payload) = (&record.topic, &record.payload);
            let pos = |i: usize| Pos(record.partition, record.offset, i as i32);
            let publish = |mut m: LiveMessage| {
                if m.device.is_none() {
                    m.device = registry.get(&m.device_id);
                }
                hub.publish(m);
            };
            if *topic == topics.readings {
                if let Ok(batch) = serde_json::from_slice::<ReadingBatch>(payload) {
                    for (i, r) in batch.readings.iter().enumerate() {
                        publish(LiveMessage::reading(r, pos(i)));
                    }
                    activity.readings(batch);
                }
            } else if *topic == topics.aggregates {
                if let Ok(a) = serde_json::from_slice::<Aggregate>(payload) {
                    publish(LiveMessage::aggregate(&a.upgraded(), pos(0)));
                }
            } else if *topic == topics.aqi {
                if let Ok(a) = serde_json::from_slice::<AqiRow>(payload) {
                    publish(LiveMessage::aqi(&a, pos(0)));
                }
            } else if *topic == topics.exceedances {
                if let Ok(e) = serde_json::from_slice::<ExceedanceRow>(payload) {
                    publish(LiveMessage::exceedance(&e, pos(0)));
                }
            } else if *topic == topics.quality {
                if let Ok(q) = serde_json::from_slice::<QualityRow>(payload) {
                    publish(LiveMessage::quality(&q, pos(0)));
                }
            } else if *topic == topics.forecast {
                if let Ok(f) = serde_json::from_slice::<ForecastRow>(payload) {
                    publish(LiveMessage::forecast(&f, pos(0)));
                }
            } else if *topic == topics.traffic {
                if let Ok(t) = serde_json::from_slice::<TrafficRecord>(payload) {
                    publish(LiveMessage::traffic(&t, pos(0)));
                }
            } else if *topic == topics.alerts {
                if let Ok(a) = serde_json::from_slice::<Alert>(payload) {
                    publish(LiveMessage::alert(&a, pos(0)));
                }
            } else if *topic == topics.alert_transitions {
                if let Ok(t) = serde_json::from_slice::<ioc_contract::AlertTransition>(payload) {
                    publish(LiveMessage::new(
                        StreamName::AlertTransitions,
                        pos(0),
                        &t.alert.device_id,
                        &ApiTransition::from(&t),
                    ));
                }
            } else if *topic == topics.registry {
                // The registry's own follower may not have applied this record yet: the
                // device is taken from the record where it has it.
                match serde_json::from_slice::<RegistryEvent>(payload) {
                    Ok(RegistryEvent::Registered { device }) => {
                        let at = device.registered_at;
                        publish(LiveMessage::status(Arc::new(device), at, None, pos(0)));
                    }
                    Ok(RegistryEvent::Updated {
                        device_id,
                        changes,
                        by,
                        at,
                    }) => {
                        if let (Some(status), Some(device)) =
                            (changes.status, registry.get(&device_id))
                        {
                            let device = Arc::new(Device {
                                status,
                                ..(*device).clone()
                            });
                            publish(LiveMessage::status(device, at, Some(&by.name), pos(0)));
                        }
                    }
                    _ => {}
                }
            } else if *topic == topics.alert_replies {
                if let Ok(r) = serde_json::from_slice::<ioc_contract::AlertReply>(payload) {
                    replies.deliver(&r.request_id.clone(), r);
                }
            } else if *topic == topics.tap {
                if let Ok(tap) = serde_json::from_slice::<TapRecord>(payload) {
                    publish(LiveMessage::new(
                        StreamName::Device,
                        pos(0),
                        &tap.device_id,
                        &ApiTap::from(&tap),
                    ));
                }
            } else if *topic == topics.deadletter || *topic == topics.quarantine {
                if let Ok(letter) = serde_json::from_slice::<DeadLetter>(payload) {
                    activity.rejected(letter, &registry);
                }
            } else if *topic == topics.events {
                // A camera's accepted event: only that it was seen (no pseudonym is kept).
                if let Ok(e) = serde_json::from_slice::<ioc_contract::Event>(payload) {
                    activity.note(&e.device_id, &e.message_id, e.received_at, Vec::new(), None);
                    activity.event(&e.device_id, e.ts, &e.event_id, now_ms());
                }
            }
        }
    }))
}

async fn recv(consumer: &mut Consumer) -> Option<ioc_bus::Record> {
    match consumer.recv().await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "live tail consume error");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ioc_contract::Quality;

    #[test]
    fn a_camera_counts_the_last_hours_events_once_each() {
        let a = Activity::default();
        let now = 10 * EVENTS_WINDOW_MS;
        for (ts, id) in [
            (now - 60_000, "e1"),
            (now - 60_000, "e1"), // a resend
            (now - 2 * EVENTS_WINDOW_MS, "old"),
            (now - 30_000, "e2"),
            (now - 90_000, "late"), // arrives after newer ones
        ] {
            a.event("cam-1", ts, id, now);
        }
        assert_eq!(a.events_in_last_hour("cam-1", now), 3);
        assert_eq!(a.events_in_last_hour("cam-2", now), 0);
        // An hour on, they have all aged out.
        assert_eq!(a.events_in_last_hour("cam-1", now + EVENTS_WINDOW_MS), 0);
    }

    fn reading(message: &str, at: i64) -> Reading {
        Reading {
            device_id: "d".into(),
            channel: String::new(),
            metric: "pm25".into(),
            ts: at,
            value: 1.0,
            unit: "µg/m³".into(),
            interval_s: None,
            quality: Quality::Good,
            quality_reason: String::new(),
            received_at: at,
            message_id: message.into(),
        }
    }

    fn letter(message: &str, at: i64, metric: Option<&str>) -> DeadLetter {
        DeadLetter {
            code: RejectCode::UnknownMetric,
            reason: "no such metric".into(),
            topic: "t".into(),
            received_at: at,
            message_id: message.into(),
            device_id: Some("d".into()),
            external_id: None,
            metric: metric.map(str::to_string),
            raw_base64: String::new(),
        }
    }

    #[test]
    fn a_status_message_carries_its_device_so_a_kind_filter_needs_no_registry() {
        let device = Arc::new(Device {
            device_id: "ww-1".into(),
            kind: "wastewater".into(),
            status: ioc_contract::DeviceStatus::Maintenance,
            ..Default::default()
        });
        let m = LiveMessage::status(device, 1_796_086_800_000, Some("lan"), Pos(0, 7, 0));
        let v: serde_json::Value = serde_json::from_str(m.json.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"stream": "status", "pos": [0, 7, 0], "data": {
                "device_id": "ww-1", "kind": "wastewater", "status": "maintenance",
                "at": "2026-12-01T01:00:00.000Z", "by": "lan"}})
        );
        assert_eq!(m.key.as_deref(), Some("status"), "the latest per device");
        let kinds = |k: &str| Filter {
            kinds: Some([k.to_string()].into()),
            ..Filter::default()
        };
        assert!(kinds("wastewater").matches(&m));
        assert!(!kinds("air_quality").matches(&m));
    }

    #[test]
    fn the_records_of_one_message_make_one_outcome_whatever_their_order() {
        let activity = Activity::default();
        let registry = RegistryView::default();
        registry.apply(ioc_contract::RegistryEvent::Registered {
            device: ioc_contract::Device {
                device_id: "d".into(),
                ..Default::default()
            },
        });
        activity.rejected(letter("m1", 10, Some("xyz")), &registry);
        activity.readings(ReadingBatch {
            readings: vec![reading("m1", 10)],
        });
        activity.readings(ReadingBatch {
            readings: vec![reading("m2", 20)],
        });
        // m1's second letter arrives after m2: it is m1's, not the latest message's.
        activity.rejected(letter("m1", 10, Some("abc")), &registry);
        let a = activity.get("d").unwrap();
        assert_eq!(a.recent.len(), 2, "two messages: {:?}", a.recent);
        assert_eq!((a.first_seen, a.last_seen), (Some(10), Some(20)));
        let last = a.last_message.unwrap();
        assert_eq!((last.message_id.as_str(), last.readings.len()), ("m2", 1));
        assert!(last.rejections.is_empty());
        assert_eq!(a.last_rejection.unwrap().metric.as_deref(), Some("abc"));
        // A letter without a device (unknown device) is nobody's activity.
        let mut orphan = letter("m3", 30, None);
        orphan.device_id = None;
        activity.rejected(orphan, &registry);
        // Nor is one naming an id nobody registered.
        let mut made_up = letter("m4", 40, None);
        made_up.device_id = Some("made-up".into());
        activity.rejected(made_up, &registry);
        assert_eq!(activity.get("d").unwrap().last_seen, Some(20));
        assert!(activity.get("made-up").is_none());
    }
}
