//! One websocket session of the live protocol. Generic over its outgoing sink and incoming
//! stream so unit tests drive it with channels; [`crate::socket`] wires it to a real socket.
//! The README's "Live websocket" is the protocol's reference; in short:
//!
//! Client → server: `{"op":"subscribe","stream":S, ...filter, "max_rate":N?, "recover":{...}?}`
//! with the filter any of `device_ids`, `kinds`, `communes`, `bbox` (`[south, west, north,
//! east]`), `metrics`, and `resolution` for `aggregates` (`1m` default) and `aqi` (`1h`
//! default); subscribing again replaces the stream's subscription. `{"op":"unsubscribe",
//! "stream":S}`.
//!
//! Server → client: data as `{"stream":S,"pos":[partition,offset,index],"data":{...}}`; and
//! - `{"op":"subscribed","stream":S,"epoch":E,"position":[[p,o,i],...],"recovered":false,
//!   "snapshot":[...data...]}`: the latest value per device and key in the filter, then live
//!   data continues from `position`, with nothing twice and nothing left out. With
//!   `"recover":{"epoch":E,"position":[...]}` (the last `position` the client had of the
//!   stream, merged with the `pos` of every message since), `"recovered":true` and `"missed"`:
//!   exactly what the client missed, in order; or, when this instance no longer has all of it,
//!   `{"op":"reset","stream":S,"reason":...}` first and a fresh snapshot.
//! - `{"op":"position","stream":S,"epoch":E,"position":[...]}` with each heartbeat when the
//!   stream moved on without anything in the client's filter, so its position stays recent.
//! - `{"op":"lagged","missed":N,"reason":...}` when the client's queue overflowed (or the
//!   broadcast left it behind): its data was dropped, and once its queue has drained it gets a
//!   fresh `subscribed` snapshot of every subscription.
//! - `{"op":"error","code":...,"message":...}`, `{"op":"unsubscribed","stream":S}`, and
//!   before the server closes: `{"op":"closed","reason":...}` and a close frame with a
//!   [`close`] code and the same reason.
//!
//! The server pings every `api.ws.heartbeat`; a client that sends nothing (pongs count) for
//! `api.ws.idle_timeout` is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use ioc_config::WsConfig;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use ioc_contract::Resolution;

use crate::live::{Filter, LiveHub, LiveMessage, Pos, Recover, Start, StreamName};
use crate::ApiMetrics;

/// Close codes the server uses (4000–4999 are the application's).
pub mod close {
    /// The session's token was revoked.
    pub const TOKEN_REVOKED: u16 = 4000;
    /// Nothing received for `api.ws.idle_timeout`.
    pub const IDLE: u16 = 4001;
    /// The token holds `api.ws.max_connections_per_token` connections already.
    pub const TOO_MANY_FOR_TOKEN: u16 = 4002;
    /// The instance holds `api.ws.max_connections` (try another, or later).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// What a client sent, reduced to what the session cares about.
#[derive(Debug)]
pub enum ClientFrame {
    Text(String),
    Binary,
    /// A pong (or ping): the client is alive.
    Alive,
    Close,
}

/// What the session sends.
#[derive(Debug, Clone)]
pub enum OutFrame {
    Text(Utf8Bytes),
    Ping,
    Close(u16, String),
}

impl OutFrame {
    fn text(value: serde_json::Value) -> OutFrame {
        OutFrame::Text(value.to_string().into())
    }

    fn len(&self) -> usize {
        match self {
            OutFrame::Text(t) => t.len(),
            OutFrame::Ping => 0,
            OutFrame::Close(_, reason) => reason.len(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
    stream: StreamName,
    #[serde(default)]
    device_ids: Option<Vec<String>>,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    communes: Option<Vec<String>>,
    #[serde(default)]
    bbox: Option<[f64; 4]>,
    #[serde(default)]
    metrics: Option<Vec<String>>,
    #[serde(default)]
    resolution: Option<Resolution>,
    /// At most this many updates per second per device and key; the latest wins.
    #[serde(default)]
    max_rate: Option<f64>,
    #[serde(default)]
    recover: Option<Recover>,
}

/// How often a session checks that its token was not revoked.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(1);
/// How often conflated updates that became due are sent, and a lagging client's queue is
/// checked for room.
const FLUSH_EVERY: Duration = Duration::from_millis(25);
/// Most bytes the writer hands the socket before flushing.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// How long a closing session waits for its last frames to be taken.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Connections and subscriptions per token on this instance, and connections in all.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    per_token: Arc<Mutex<HashMap<String, (usize, usize)>>>,
    total: Arc<AtomicUsize>,
}

impl Caps {
    /// Admits one more connection of `token` (any stable name of it), or says why not with
    /// the close code to send.
    pub fn admit(&self, token: &str, limits: &WsConfig) -> Result<Admission, (u16, String)> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err((
                close::TRY_AGAIN_LATER,
                format!(
                    "this instance serves {} connections, its most (api.ws.max_connections)",
                    limits.max_connections
                ),
            ));
        }
        let mut map = self.per_token.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(token.to_string()).or_default();
        if entry.0 >= limits.max_connections_per_token {
            drop(map);
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err((
                close::TOO_MANY_FOR_TOKEN,
                format!(
                    "this token has {} connections open, its most (api.ws.max_connections_per_token)",
                    limits.max_connections_per_token
                ),
            ));
        }
        entry.0 += 1;
        Ok(Admission {
            caps: self.clone(),
            token: token.to_string(),
            subscriptions: 0,
            max_subscriptions: limits.max_subscriptions_per_token,
        })
    }

    pub fn connections(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    token: String,
    subscriptions: usize,
    max_subscriptions: usize,
}

impl Admission {
    fn subscribe(&mut self) -> Result<(), String> {
        let mut map = self
            .caps
            .per_token
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(self.token.clone()).or_default();
        if entry.1 >= self.max_subscriptions {
            return Err(format!(
                "this token's sessions hold {} subscriptions, its most (api.ws.max_subscriptions_per_token)",
                self.max_subscriptions
            ));
        }
        entry.1 += 1;
        self.subscriptions += 1;
        Ok(())
    }

    fn unsubscribe(&mut self) {
        let mut map = self
            .caps
            .per_token
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&self.token) {
            entry.1 = entry.1.saturating_sub(1);
        }
        self.subscriptions = self.subscriptions.saturating_sub(1);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut map = self
            .caps
            .per_token
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&self.token) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = entry.1.saturating_sub(self.subscriptions);
            if *entry == (0, 0) {
                map.remove(&self.token);
            }
        }
        self.caps.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything a session starts with.
pub struct Setup<F> {
    pub hub: LiveHub,
    pub metrics: ApiMetrics,
    pub limits: WsConfig,
    pub admission: Admission,
    /// Frames sent before anything else (a device page's checklist).
    pub first: Vec<String>,
    /// Subscriptions made on the client's behalf at the start.
    pub subscriptions: Vec<(StreamName, Filter)>,
    /// Whether the session's token is still accepted.
    pub token_live: F,
}

/// One subscription of a session.
struct Sub {
    filter: Filter,
    /// Per partition: live messages at or before it were in the subscription's start.
    floor: Vec<Pos>,
    /// Per partition, the last message of the stream the session took in.
    seen: Vec<Pos>,
    /// The stream moved on since the client last learnt its position.
    moved: bool,
    /// Conflation: at most one update per key this often.
    interval: Option<Duration>,
}

/// A conflated key's state.
struct Slot {
    next_at: Instant,
    pending: Option<Arc<LiveMessage>>,
}

/// The session's sending side: a queue bounded in bytes in front of the writer.
struct Queue {
    tx: mpsc::UnboundedSender<OutFrame>,
    bytes: Arc<AtomicUsize>,
    limit: usize,
    /// Data dropped since the queue overflowed; `Some` while it is overflowed.
    missed: Option<u64>,
    reason: &'static str,
}

impl Queue {
    /// Control frames always go in (their number is bounded by what the client asks for).
    fn control(&self, frame: OutFrame) {
        self.bytes.fetch_add(frame.len(), Ordering::SeqCst);
        let _ = self.tx.send(frame);
    }

    fn data(&mut self, m: &LiveMessage, metrics: &ApiMetrics) {
        let len = m.json.len();
        if self.missed.is_none() && self.bytes.load(Ordering::SeqCst) + len > self.limit {
            self.overflowed(
                0,
                "your queue overflowed (api.ws.queue_bytes): you read too slowly",
            );
        }
        if let Some(missed) = &mut self.missed {
            *missed += 1;
            metrics.ws_lagged.inc();
            return;
        }
        self.bytes.fetch_add(len, Ordering::SeqCst);
        let _ = self.tx.send(OutFrame::Text(m.json.clone()));
        metrics.ws_sent.inc();
    }

    fn overflowed(&mut self, missed: u64, reason: &'static str) {
        if self.missed.is_none() {
            self.reason = reason;
        }
        *self.missed.get_or_insert(0) += missed;
    }

    /// Whether an overflowed queue has drained enough to resynchronize.
    fn drained(&self) -> bool {
        self.missed.is_some() && self.bytes.load(Ordering::SeqCst) <= self.limit / 2
    }
}

/// Runs one session until the client leaves, the hub closes, the client idles past its
/// timeout or the session's token is revoked.
pub async fn session<Out, In, F>(mut out: Out, mut incoming: In, setup: Setup<F>)
where
    Out: Sink<OutFrame> + Unpin,
    In: Stream<Item = ClientFrame> + Unpin,
    F: Fn() -> bool,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<OutFrame>();
    let bytes = Arc::new(AtomicUsize::new(0));
    let queue = Queue {
        tx,
        bytes: bytes.clone(),
        limit: setup.limits.queue_bytes,
        missed: None,
        reason: "",
    };
    // Takes what is queued and flushes once: under load one write carries many frames.
    let writer = async {
        while let Some(first) = rx.recv().await {
            let mut frame = Some(first);
            let mut taken = 0;
            let mut last = false;
            while let Some(f) = frame.take() {
                taken += f.len();
                last = matches!(f, OutFrame::Close(..));
                if out.feed(f).await.is_err() {
                    return;
                }
                if last || taken > WRITE_BATCH_BYTES {
                    break;
                }
                frame = rx.try_recv().ok();
            }
            if out.flush().await.is_err() {
                return;
            }
            bytes.fetch_sub(taken, Ordering::SeqCst);
            if last {
                let _ = out.close().await;
                return;
            }
        }
    };
    let pump = async {
        pump(&mut incoming, setup, queue).await;
        // Give the writer time to hand over the last frames, then give up on the client.
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        _ = writer => {}
        _ = pump => {}
    }
}

async fn pump<In, F>(incoming: &mut In, setup: Setup<F>, mut queue: Queue)
where
    In: Stream<Item = ClientFrame> + Unpin,
    F: Fn() -> bool,
{
    let Setup {
        hub,
        metrics,
        limits,
        mut admission,
        first,
        subscriptions,
        token_live,
    } = setup;
    let mut live = hub.receiver();
    for frame in first {
        queue.control(OutFrame::Text(frame.into()));
    }
    let mut subs: HashMap<StreamName, Sub> = HashMap::new();
    let mut slots: HashMap<(StreamName, String, String), Slot> = HashMap::new();
    let mut pending = 0usize;
    for (stream, filter) in subscriptions {
        if admission.subscribe().is_ok() {
            let sub = start(&hub, &mut queue, stream, filter, None, None, &metrics);
            subs.insert(stream, sub);
        }
    }
    let mut recheck = tokio::time::interval(TOKEN_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + limits.heartbeat, limits.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Messages taken in since the writer last had a turn.
    let mut burst = 0u32;
    let bye = |queue: &Queue, code: u16, reason: String| {
        queue.control(OutFrame::text(json!({"op": "closed", "reason": reason})));
        queue.control(OutFrame::Close(code, reason));
    };
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if !token_live() {
                    bye(&queue, close::TOKEN_REVOKED, "the token of this session was revoked".into());
                    return;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > limits.idle_timeout {
                    let reason = format!(
                        "idle: nothing received for {} s (api.ws.idle_timeout; answer pings)",
                        limits.idle_timeout.as_secs()
                    );
                    bye(&queue, close::IDLE, reason);
                    return;
                }
                queue.control(OutFrame::Ping);
                let epoch = hub.epoch();
                for (stream, sub) in subs.iter_mut().filter(|(_, s)| s.moved && s.interval.is_none()) {
                    sub.moved = false;
                    queue.control(OutFrame::text(json!({
                        "op": "position", "stream": stream, "epoch": epoch, "position": sub.seen,
                    })));
                }
            }
            _ = flush.tick(), if pending > 0 || queue.missed.is_some() => {
                if pending > 0 {
                    let now = Instant::now();
                    for (key, slot) in slots.iter_mut() {
                        let interval = subs.get(&key.0).and_then(|s| s.interval);
                        if let (Some(interval), true) = (interval, now >= slot.next_at) {
                            if let Some(m) = slot.pending.take() {
                                pending -= 1;
                                slot.next_at = now + interval;
                                queue.data(&m, &metrics);
                            }
                        }
                    }
                }
                if queue.drained() {
                    resync(&hub, &mut queue, &mut subs, &mut slots, &mut pending, &metrics);
                }
            }
            frame = incoming.next() => {
                last_heard = Instant::now();
                match frame {
                    None | Some(ClientFrame::Close) => return,
                    Some(ClientFrame::Alive) => {}
                    Some(ClientFrame::Binary) => queue.control(OutFrame::text(json!({
                        "op": "error", "code": "bad_request",
                        "message": "binary frames are not part of this protocol: send JSON text",
                    }))),
                    Some(ClientFrame::Text(text)) => {
                        let reply = request(&text, &hub, &mut queue, &mut subs, &mut admission, &metrics);
                        if let Some(stream) = reply {
                            slots.retain(|k, s| {
                                if k.0 == stream && s.pending.is_some() { pending -= 1; }
                                k.0 != stream
                            });
                        }
                    }
                }
            }
            message = live.recv() => match message {
                Ok(m) => {
                    // In a burst, let the writer drain the queue now and then: the queue bounds
                    // what the client has not taken, not what the writer has not had a turn at.
                    burst += 1;
                    if burst % 32 == 0 {
                        tokio::task::yield_now().await;
                    }
                    let Some(sub) = subs.get_mut(&m.stream) else { continue };
                    let p = m.pos.0.max(0) as usize;
                    if sub.floor.len() <= p {
                        sub.floor.resize(p + 1, Pos::before(m.pos.0, 0));
                        sub.seen.resize(p + 1, Pos::before(m.pos.0, 0));
                    }
                    if !m.pos.after(sub.floor[p]) {
                        continue;
                    }
                    sub.seen[p] = m.pos;
                    if !sub.filter.matches(&m) {
                        sub.moved = true;
                        continue;
                    }
                    match (sub.interval, &m.key) {
                        (Some(interval), Some(key)) => {
                            let now = Instant::now();
                            let slot = slots
                                .entry((m.stream, m.device_id.clone(), key.clone()))
                                .or_insert(Slot { next_at: now, pending: None });
                            if now >= slot.next_at && slot.pending.is_none() {
                                slot.next_at = now + interval;
                                queue.data(&m, &metrics);
                            } else {
                                if slot.pending.is_none() {
                                    pending += 1;
                                }
                                // Coalesced: only the latest value of the key is kept.
                                slot.pending = Some(m);
                            }
                        }
                        _ => queue.data(&m, &metrics),
                    }
                    if queue.drained() {
                        resync(&hub, &mut queue, &mut subs, &mut slots, &mut pending, &metrics);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics.ws_lagged.inc_by(missed);
                    queue.overflowed(missed, "the server's broadcast left you behind (api.ws_buffer)");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    bye(&queue, close::GOING_AWAY, "the server is shutting down".into());
                    return;
                }
            },
        }
    }
}

/// Answers one client request. Returns the stream it subscribed to or unsubscribed from: its
/// conflated values pending are void.
fn request(
    text: &str,
    hub: &LiveHub,
    queue: &mut Queue,
    subs: &mut HashMap<StreamName, Sub>,
    admission: &mut Admission,
    metrics: &ApiMetrics,
) -> Option<StreamName> {
    let error = |code: &str, message: String| {
        OutFrame::text(json!({"op": "error", "code": code, "message": message}))
    };
    let r = match serde_json::from_str::<Request>(text) {
        Ok(r) => r,
        Err(e) => {
            queue.control(error("bad_request", format!("bad request: {e}")));
            return None;
        }
    };
    match r.op.as_str() {
        "unsubscribe" => {
            if subs.remove(&r.stream).is_some() {
                admission.unsubscribe();
            }
            queue.control(OutFrame::text(
                json!({"op": "unsubscribed", "stream": r.stream}),
            ));
            Some(r.stream)
        }
        "subscribe" => {
            let (filter, max_rate) = match filter_of(&r) {
                Ok(f) => f,
                Err(message) => {
                    queue.control(error("bad_request", message));
                    return None;
                }
            };
            if !subs.contains_key(&r.stream) {
                if let Err(message) = admission.subscribe() {
                    queue.control(error("too_many_subscriptions", message));
                    return None;
                }
            }
            let sub = start(
                hub,
                queue,
                r.stream,
                filter,
                max_rate,
                r.recover.as_ref(),
                metrics,
            );
            subs.insert(r.stream, sub);
            Some(r.stream)
        }
        other => {
            queue.control(error(
                "bad_request",
                format!("unknown op {other:?}; use subscribe or unsubscribe"),
            ));
            None
        }
    }
}

/// The filter a subscribe request asks for, or what is wrong with it.
fn filter_of(r: &Request) -> Result<(Filter, Option<f64>), String> {
    let stream = r.stream;
    if let Some(res) = r.resolution {
        let allowed = stream.resolutions();
        if allowed.is_empty() {
            return Err(format!(
                "resolution applies only to the aggregates and aqi streams, not {stream:?}"
            ));
        }
        if !allowed.contains(&res) {
            let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
            return Err(format!(
                "the {stream:?} stream's resolution is one of {}",
                names.join(", ")
            ));
        }
    }
    if let Some([south, west, north, east]) = r.bbox {
        let ok = [south, west, north, east].iter().all(|x| x.is_finite())
            && (-90.0..=90.0).contains(&south)
            && (-90.0..=90.0).contains(&north)
            && south < north
            && west < east;
        if !ok {
            return Err(
                "bbox is [south, west, north, east] in degrees, south < north and west < east"
                    .into(),
            );
        }
    }
    if let Some(rate) = r.max_rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "max_rate must be a positive number of updates per second, not {rate}"
            ));
        }
        if !stream.is_values() {
            return Err(format!(
                "max_rate applies to the readings, aggregates, aqi and exceedances streams, not {stream:?}: every one of its messages matters"
            ));
        }
    }
    let set = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.iter().cloned().collect());
    Ok((
        Filter {
            device_ids: set(&r.device_ids),
            kinds: set(&r.kinds),
            communes: set(&r.communes),
            bbox: r.bbox,
            metrics: set(&r.metrics),
            resolution: r.resolution,
        },
        r.max_rate,
    ))
}

/// Starts (or restarts) one subscription: its `subscribed` frame with the snapshot or what
/// the client missed, preceded by a `reset` when a recovery could not be made.
fn start(
    hub: &LiveHub,
    queue: &mut Queue,
    stream: StreamName,
    filter: Filter,
    max_rate: Option<f64>,
    recover: Option<&Recover>,
    metrics: &ApiMetrics,
) -> Sub {
    // A conflated subscription drops values by design: it resumes as a fresh snapshot.
    let recover = recover.filter(|_| max_rate.is_none());
    let start = hub.start(stream, &filter, recover);
    if let Some(reason) = &start.reset {
        metrics.ws_resets.inc();
        queue.control(OutFrame::text(
            json!({"op": "reset", "stream": stream, "reason": reason}),
        ));
    } else if start.recovered {
        metrics.ws_recovered.inc();
    }
    queue.control(OutFrame::Text(
        subscribed(stream, &filter, max_rate, &start).into(),
    ));
    Sub {
        filter,
        seen: start.position.clone(),
        floor: start.position,
        moved: false,
        interval: max_rate.map(|r| Duration::from_secs_f64(1.0 / r)),
    }
}

/// The `subscribed` frame, its snapshot (or missed messages) spliced in as they were
/// serialized once for everyone.
fn subscribed(stream: StreamName, filter: &Filter, max_rate: Option<f64>, start: &Start) -> String {
    let mut head = json!({
        "op": "subscribed",
        "stream": stream,
        "epoch": start.epoch,
        "position": start.position,
        "recovered": start.recovered,
    });
    if let Some(res) = filter.resolution.or(stream.resolutions().first().copied()) {
        head["resolution"] = json!(res);
    }
    if let Some(rate) = max_rate {
        head["max_rate"] = json!(rate);
    }
    let mut text = head.to_string();
    text.pop();
    text.push_str(if start.recovered {
        ",\"missed\":["
    } else {
        ",\"snapshot\":["
    });
    for (i, m) in start.items.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&m.json);
    }
    text.push_str("]}");
    text
}

/// After an overflow: tells the client what it missed and restarts every subscription from a
/// fresh snapshot.
fn resync(
    hub: &LiveHub,
    queue: &mut Queue,
    subs: &mut HashMap<StreamName, Sub>,
    slots: &mut HashMap<(StreamName, String, String), Slot>,
    pending: &mut usize,
    metrics: &ApiMetrics,
) {
    let missed = queue.missed.take().unwrap_or(0);
    metrics.ws_resyncs.inc();
    queue.control(OutFrame::text(
        json!({"op": "lagged", "missed": missed, "reason": queue.reason}),
    ));
    slots.clear();
    *pending = 0;
    for (stream, sub) in subs.iter_mut() {
        let max_rate = sub.interval.map(|i| 1.0 / i.as_secs_f64());
        *sub = start(
            hub,
            queue,
            *stream,
            sub.filter.clone(),
            max_rate,
            None,
            metrics,
        );
    }
}

#[cfg(test)]
mod tests;
