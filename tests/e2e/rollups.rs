//! Roll-ups end to end, the same check on both modes: a day of backdated readings over MQTT,
//! some hours missing and one half-empty; every window at 1 minute, 5 minutes, 1 hour and 1 day
//! through the API equals what the raw readings (through the API) give; then a late reading
//! revises its minute, five minutes, hour and day, each with a higher version.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ioc_contract::Resolution;
use rumqttc::QoS;

use crate::harness::eventually;

const ICT: i64 = 7 * 3_600_000;

/// A running deployment's API.
pub(crate) struct Api<'a> {
    pub http: &'a reqwest::Client,
    pub base: String,
    pub token: String,
    pub logs: &'a Path,
}

impl Api<'_> {
    pub(crate) async fn get(&self, path: &str) -> Result<serde_json::Value> {
        crate::harness::get_json(self.http, &format!("{}{path}", self.base), &self.token).await
    }

    /// Subscribes to the websocket's `stream` for `device` and hands each data frame's `data`,
    /// the snapshot's then the live ones (the bus reaches the API a moment after the store),
    /// to `seen` until it says it has seen enough; fails after 30 s with `what` and the last
    /// frame.
    pub(crate) async fn watch(
        &self,
        stream: &str,
        device: &str,
        what: &str,
        mut seen: impl FnMut(&serde_json::Value) -> Result<bool>,
    ) -> Result<()> {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!(
            "{}/api/v1/ws?token={}",
            self.base.replacen("http://", "ws://", 1),
            self.token
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let subscribe =
            serde_json::json!({"op": "subscribe", "stream": stream, "device_ids": [device]});
        ws.send(Message::Text(subscribe.to_string().into())).await?;
        let mut last_frame = serde_json::Value::Null;
        let watched = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(frame) = ws.next().await {
                if let Message::Text(text) = frame? {
                    let v: serde_json::Value = serde_json::from_str(&text)?;
                    anyhow::ensure!(v["op"] != "error", "{v}");
                    let frames = match v["snapshot"].as_array() {
                        Some(snapshot) => snapshot.clone(),
                        None => vec![v.clone()],
                    };
                    last_frame = v;
                    for f in frames.iter().filter(|f| f["stream"] == stream) {
                        if seen(&f["data"])? {
                            return Ok(());
                        }
                    }
                }
            }
            anyhow::bail!("the socket closed")
        })
        .await;
        let _ = ws.close(None).await;
        watched
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
            .with_context(|| format!("{what} on the {stream} stream; last frame {last_frame}"))
    }

    /// Changes `device`'s registry details by `PATCH`; the device as the API shows it after.
    pub(crate) async fn patch_device(
        &self,
        device: &str,
        changes: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let r = self
            .http
            .patch(format!("{}/api/v1/devices/{device}", self.base))
            .bearer_auth(&self.token)
            .json(&changes)
            .send()
            .await?;
        let status = r.status();
        anyhow::ensure!(
            status.is_success(),
            "PATCH {device}: {status} {}",
            r.text().await?
        );
        Ok(r.json().await?)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Window {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    mean: f64,
    capture: Option<f64>,
    version: u64,
}

impl Window {
    fn same_as(&self, other: &Window) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        self.count == other.count
            && close(self.sum, other.sum)
            && self.min == other.min
            && self.max == other.max
            && close(self.mean, other.mean)
            && match (self.capture, other.capture) {
                (Some(a), Some(b)) => close(a, b),
                (a, b) => a == b,
            }
    }
}

/// The windows the API has for `device` at `resolution` starting in `[from, to)`, by start.
async fn stored(
    api: &Api<'_>,
    device: &str,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, Window>> {
    let body = api
        .get(&format!(
            "/api/v1/aggregates?device_id={device}&from={from}&to={to}&resolution={resolution}"
        ))
        .await?;
    let mut out = BTreeMap::new();
    for a in body["aggregates"].as_array().context("aggregates")? {
        anyhow::ensure!(a["resolution"] == resolution.as_str(), "{a}");
        let start =
            ioc_contract::time::parse_rfc3339_ms(a["window_start"].as_str().context("start")?)
                .context("window_start")?;
        let f = |k: &str| a[k].as_f64().with_context(|| format!("{k} in {a}"));
        out.insert(
            start,
            Window {
                count: a["count"].as_u64().context("count")?,
                sum: f("sum")?,
                min: f("min")?,
                max: f("max")?,
                mean: f("mean")?,
                capture: a["capture"].as_f64(),
                version: a["version"].as_u64().context("version")?,
            },
        );
    }
    Ok(out)
}

/// The good PM2.5 readings the API has for `device` in `[from, to)`, as `(ts, value)`.
async fn good_readings(api: &Api<'_>, device: &str, from: i64, to: i64) -> Result<Vec<(i64, f64)>> {
    let body = api
        .get(&format!(
            "/api/v1/readings?device_id={device}&from={from}&to={to}&metric=pm25"
        ))
        .await?;
    let mut out = Vec::new();
    for r in body["readings"].as_array().context("readings")? {
        if r["quality"] == "good" {
            let ts = ioc_contract::time::parse_rfc3339_ms(r["ts"].as_str().context("ts")?)
                .context("ts")?;
            out.push((ts, r["value"].as_f64().context("value")?));
        }
    }
    Ok(out)
}

/// The windows of `resolution` recomputed from `readings`.
fn recomputed(readings: &[(i64, f64)], resolution: Resolution) -> BTreeMap<i64, Window> {
    let mut out: BTreeMap<i64, Window> = BTreeMap::new();
    for &(ts, v) in readings {
        let w = out.entry(resolution.start(ts, ICT)).or_insert(Window {
            count: 0,
            sum: 0.0,
            min: f64::MAX,
            max: f64::MIN,
            mean: 0.0,
            capture: None,
            version: 0,
        });
        w.count += 1;
        w.sum += v;
        w.min = w.min.min(v);
        w.max = w.max.max(v);
    }
    for w in out.values_mut() {
        w.mean = w.sum / w.count as f64;
        // Devices here are expected once a minute.
        w.capture = ioc_contract::capture(w.count, resolution.ms(), Some(60.0));
    }
    out
}

/// Waits until every resolution's windows equal the recomputation and the day holds `count`
/// readings; returns the stored windows by resolution.
async fn settled(
    api: &Api<'_>,
    device: &str,
    day: i64,
    count: u64,
) -> Result<BTreeMap<Resolution, BTreeMap<i64, Window>>> {
    let to = day + 86_400_000;
    eventually(
        "every window at every resolution to equal the recomputation from the readings",
        Duration::from_secs(120),
        api.logs,
        || async {
            let days = stored(api, device, Resolution::Day, day, to).await?;
            if days.get(&day).map(|w| w.count) != Some(count) {
                return Ok(None);
            }
            let readings = good_readings(api, device, day, to).await?;
            let mut all = BTreeMap::new();
            for resolution in Resolution::ALL {
                let got = stored(api, device, resolution, day, to).await?;
                let want = recomputed(&readings, resolution);
                let same = got.len() == want.len()
                    && got
                        .iter()
                        .zip(&want)
                        .all(|((s1, g), (s2, w))| s1 == s2 && g.same_as(w));
                if !same {
                    let diff: Vec<String> = want
                        .iter()
                        .filter(|(s, w)| !got.get(s).is_some_and(|g| g.same_as(w)))
                        .take(3)
                        .map(|(s, w)| format!("{s}: stored {:?}, recomputed {w:?}", got.get(s)))
                        .collect();
                    bail!("{resolution} differs: {diff:?}");
                }
                all.insert(resolution, got);
            }
            Ok(Some(all))
        },
    )
    .await
}

/// Publishes a backdated local day for `device` (PM2.5 once a minute; 03:00–06:00 missing,
/// 07:00–08:00 every other minute), checks every resolution against the readings, then sends
/// one late reading and checks it revised its minute, five minutes, hour and day. Returns the
/// day's start.
pub(crate) async fn a_backdated_day_rolls_up_and_a_late_reading_revises_it(
    api: &Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<i64> {
    let now = ioc_contract::time::now_ms();
    let day = Resolution::Day.start(now, ICT) - 2 * 86_400_000;
    let topic = format!("ioc/v1/devices/{device}/telemetry");
    let mut sent = 0u64;
    for minute in 0..1440i64 {
        let hour = minute / 60;
        if (3..6).contains(&hour) || (hour == 7 && minute % 2 == 1) {
            continue;
        }
        let ts = day + minute * 60_000 + 15_000;
        let value = ((minute * 37) % 200) as f64 / 4.0;
        let body = format!(r#"{{"ts":{ts},"values":{{"pm25":{value}}}}}"#);
        mqtt.publish(&topic, QoS::AtLeastOnce, false, body).await?;
        sent += 1;
    }
    let before = settled(api, device, day, sent).await?;
    let hours = &before[&Resolution::Hour];
    assert!(
        !hours.contains_key(&(day + 4 * 3_600_000)),
        "a missing hour has no window"
    );
    let half = &hours[&(day + 7 * 3_600_000)];
    assert_eq!(
        (half.count, half.capture),
        (30, Some(0.5)),
        "the half-empty hour"
    );
    assert_eq!(
        before[&Resolution::Day][&day].capture,
        Some(sent as f64 / 1440.0)
    );

    // A reading for 10:20:45 local, long after its minute closed.
    let late = day + 10 * 3_600_000 + 20 * 60_000 + 45_000;
    let body = format!(r#"{{"ts":{late},"values":{{"pm25":400}}}}"#);
    mqtt.publish(&topic, QoS::AtLeastOnce, false, body).await?;
    let after = settled(api, device, day, sent + 1).await?;
    for resolution in Resolution::ALL {
        let start = resolution.start(late, ICT);
        let (old, new) = (&before[&resolution][&start], &after[&resolution][&start]);
        assert_eq!(new.count, old.count + 1, "{resolution}");
        assert_eq!(new.max, 400.0, "{resolution}");
        assert!(
            new.version > old.version,
            "the {resolution} window is re-emitted with a higher version: {old:?} → {new:?}"
        );
        // Windows that do not contain it are as they were.
        for (s, w) in &after[&resolution] {
            if *s != start {
                assert_eq!(
                    w, &before[&resolution][s],
                    "{resolution} window {s} unchanged"
                );
            }
        }
    }
    Ok(day)
}
