//! The traffic operator: when a batch stores 5-minute or hourly windows of a traffic counter
//! (a road segment; its lanes are channels), the segment's flow, count-weighted speed,
//! occupancy and congestion level over each such window, from its stored raw readings (one read
//! per range, shared by the counters due over it). No state: a replay, or a late reading that
//! revises a window, derives it again with a higher version.
//!
//! A counter's message gives per lane the vehicles counted over its `interval_s`, their mean
//! speed and the lane's occupancy, stamped at the interval's end. Over a window, from its good
//! readings:
//! - flow (vehicles per hour) is each lane's count over the time its counts cover (the sum of
//!   their intervals; a count without one covers the device's `expected_interval_s`), summed
//!   over lanes: a lane that missed counts is not read as an empty road, and a count over 5
//!   minutes is not read as a minute's;
//! - speed is each count's mean speed (the lane's, in the same message) weighted by the count:
//!   the motorbike lane carries most vehicles, slowest;
//! - occupancy is the mean of the lanes' occupancies;
//! - capture is the time the counts cover over the window's length times its lanes (every lane
//!   with a reading), at most 1;
//! - the level is the worse of the speed against the registered free-flow speed and the
//!   occupancy (`stream.congestion`): a jam can count few vehicles, but its detectors stay
//!   occupied.

use std::collections::{BTreeMap, BTreeSet};

use ioc_config::CongestionConfig;
use ioc_contract::{Aggregate, Device, Resolution};
use ioc_history::{ReadingRow, TrafficRow};

/// A congestion level, from free to jammed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Free,
    Moderate,
    Heavy,
    Jammed,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Free, Level::Moderate, Level::Heavy, Level::Jammed];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Free => "free",
            Level::Moderate => "moderate",
            Level::Heavy => "heavy",
            Level::Jammed => "jammed",
        }
    }

    /// The level of a speed ÷ free-flow speed and an occupancy (%), the worse of the two;
    /// none with neither.
    pub fn of(
        speed_ratio: Option<f64>,
        occupancy: Option<f64>,
        c: &CongestionConfig,
    ) -> Option<Level> {
        let step = |passed: usize| Level::ALL[passed];
        let by_speed = speed_ratio.map(|r| step(c.speed_ratio.iter().filter(|t| r < **t).count()));
        let by_occupancy =
            occupancy.map(|o| step(c.occupancy_pct.iter().filter(|t| o >= **t).count()));
        by_speed.max(by_occupancy)
    }
}

/// The windows a batch's stored windows make due: per counter, the 5-minute and hourly
/// windows stored, as (resolution, start, end).
pub fn due(
    stored: &[Aggregate],
    is_counter: impl Fn(&str) -> bool,
) -> BTreeMap<String, BTreeSet<(Resolution, i64, i64)>> {
    let mut due: BTreeMap<String, BTreeSet<(Resolution, i64, i64)>> = BTreeMap::new();
    for w in stored {
        if !matches!(w.resolution, Resolution::FiveMinutes | Resolution::Hour)
            || !METRICS.contains(&w.metric.as_str())
        {
            continue;
        }
        let window = (w.resolution, w.window_start, w.window_end);
        if let Some(windows) = due.get_mut(&w.device_id) {
            windows.insert(window);
        } else if is_counter(&w.device_id) {
            due.insert(w.device_id.clone(), BTreeSet::from([window]));
        }
    }
    due
}

/// The stored readings `windows` read: `[from, to)` of reading times.
pub fn range(windows: &BTreeSet<(Resolution, i64, i64)>) -> (i64, i64) {
    let from = windows.iter().map(|w| w.1).min().unwrap_or(0);
    let to = windows.iter().map(|w| w.2).max().unwrap_or(0);
    (from, to)
}

/// The metrics of a counter's message.
pub const METRICS: [&str; 3] = ["vehicle_count", "avg_speed", "occupancy"];

/// One lane's message, as its readings have it.
#[derive(Default)]
struct LaneCount {
    vehicles: Option<f64>,
    /// Seconds the count covers.
    covered_s: f64,
    speed: Option<f64>,
    occupancy: Option<f64>,
}

/// The traffic record of `device` over `[start, end)` from its stored readings (`readings`,
/// any device's and quality: only its good ones count); none when the window holds none of its
/// traffic readings.
pub fn derive(
    device: &Device,
    (resolution, start, end): (Resolution, i64, i64),
    readings: &[ReadingRow],
    congestion: &CongestionConfig,
    version: u64,
) -> Option<TrafficRow> {
    let mut messages: BTreeMap<(&str, i64), LaneCount> = BTreeMap::new();
    for r in readings {
        if r.device_id != device.device_id
            || r.ts < start
            || r.ts >= end
            || r.quality != "good"
            || !r.value.is_finite()
        {
            continue;
        }
        let m = || LaneCount::default();
        match r.metric.as_str() {
            "vehicle_count" => {
                let c = messages.entry((&r.channel, r.ts)).or_insert_with(m);
                c.vehicles = Some(r.value);
                c.covered_s = r
                    .interval_s
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .unwrap_or(device.expected_interval_s);
            }
            "avg_speed" => {
                messages.entry((&r.channel, r.ts)).or_insert_with(m).speed = Some(r.value);
            }
            "occupancy" => {
                messages
                    .entry((&r.channel, r.ts))
                    .or_insert_with(m)
                    .occupancy = Some(r.value);
            }
            _ => {}
        }
    }
    if messages.is_empty() {
        return None;
    }
    // Per lane: vehicles, and the seconds their counts cover.
    let mut per_lane: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let (mut weighted, mut weights) = (0.0, 0.0);
    let (mut occupancy, mut occupied) = (0.0, 0usize);
    for ((lane, _), m) in &messages {
        if let Some(v) = m.vehicles {
            let l = per_lane.entry(lane).or_default();
            l.0 += v;
            l.1 += m.covered_s;
            if let Some(s) = m.speed {
                weighted += v * s;
                weights += v;
            }
        }
        if let Some(o) = m.occupancy {
            occupancy += o;
            occupied += 1;
        }
    }
    let lanes: BTreeSet<&str> = messages.keys().map(|(l, _)| *l).collect();
    let window_s = (end - start) as f64 / 1000.0;
    let vehicles: f64 = per_lane.values().map(|(v, _)| v).sum();
    let covered_s: f64 = per_lane.values().map(|(_, c)| c).sum();
    let flow = (covered_s > 0.0).then(|| {
        per_lane
            .values()
            .filter(|(_, c)| *c > 0.0)
            .map(|(v, c)| v * 3600.0 / c)
            .sum::<f64>()
            .round()
    });
    let speed = (weights > 0.0).then(|| weighted / weights);
    let occupancy = (occupied > 0).then(|| occupancy / occupied as f64);
    let free_flow = device.free_flow_speed_kmh;
    let ratio = speed.zip(free_flow).map(|(s, f)| s / f);
    let round = |v: f64, p: f64| (v * p).round() / p;
    Some(TrafficRow {
        device_id: device.device_id.clone(),
        resolution: resolution.as_str().to_string(),
        window_start: start,
        window_end: end,
        road_segment: device.road_segment.clone().unwrap_or_default(),
        lanes: lanes.len() as u32,
        vehicles: vehicles.round() as u64,
        flow_vph: flow,
        speed_kmh: speed.map(|s| round(s, 10.0)),
        occupancy_pct: occupancy.map(|o| round(o, 10.0)),
        free_flow_speed_kmh: free_flow,
        capture: (window_s > 0.0).then(|| {
            round(
                (covered_s / (lanes.len() as f64 * window_s)).min(1.0),
                100.0,
            )
        }),
        level: Level::of(ratio, occupancy, congestion)
            .map_or("", Level::as_str)
            .into(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_651_200_000;
    const MIN: i64 = 60_000;

    fn congestion() -> CongestionConfig {
        CongestionConfig {
            speed_ratio: [0.7, 0.5, 0.3],
            occupancy_pct: [20.0, 30.0, 45.0],
        }
    }

    fn counter(free_flow: Option<f64>) -> Device {
        Device {
            device_id: "tc-1".into(),
            kind: "traffic_counter".into(),
            expected_interval_s: 60.0,
            road_segment: Some("Lê Duẩn".into()),
            free_flow_speed_kmh: free_flow,
            ..Default::default()
        }
    }

    /// A stored reading of `lane` at the end of minute `m`, a count over that minute.
    fn minute(lane: &str, metric: &str, m: i64, value: f64) -> ReadingRow {
        ReadingRow {
            device_id: "tc-1".into(),
            channel: lane.into(),
            metric: metric.into(),
            ts: T0 + m * MIN,
            value,
            unit: String::new(),
            interval_s: (metric == "vehicle_count").then_some(60.0),
            quality: "good".into(),
            quality_reason: String::new(),
            received_at: T0 + m * MIN,
            message_id: format!("m{m}"),
            version: 1,
        }
    }

    /// `(lane, vehicles, speed, occupancy)` for each of minutes 0..5.
    fn five_minutes(lanes: &[(&str, f64, f64, f64)]) -> Vec<ReadingRow> {
        let mut out = Vec::new();
        for m in 0..5 {
            for (lane, v, s, o) in lanes {
                out.push(minute(lane, "vehicle_count", m, *v));
                out.push(minute(lane, "avg_speed", m, *s));
                out.push(minute(lane, "occupancy", m, *o));
            }
        }
        out
    }

    fn derive5_opt(device: &Device, readings: &[ReadingRow]) -> Option<TrafficRow> {
        derive(
            device,
            (Resolution::FiveMinutes, T0, T0 + 5 * MIN),
            readings,
            &congestion(),
            3,
        )
    }

    fn derive5(device: &Device, readings: &[ReadingRow]) -> TrafficRow {
        derive5_opt(device, readings).expect("a window with data")
    }

    #[test]
    fn flow_sums_lanes_per_hour_and_speed_is_weighted_by_count() {
        // 30 motorbikes a minute at 20 km/h, 10 cars at 50 km/h.
        let readings = five_minutes(&[("lane-1", 30.0, 20.0, 25.0), ("lane-2", 10.0, 50.0, 15.0)]);
        let row = derive5(&counter(Some(45.0)), &readings);
        assert_eq!(row.vehicles, 200);
        assert_eq!(row.flow_vph, Some(2400.0), "40 vehicles a minute");
        // Count-weighted: (30×20 + 10×50) / 40 = 27.5, not the lanes' plain mean of 35.
        assert_eq!(row.speed_kmh, Some(27.5));
        assert_eq!(row.occupancy_pct, Some(20.0));
        assert_eq!(row.lanes, 2);
        assert_eq!(row.capture, Some(1.0));
        assert_eq!(row.road_segment, "Lê Duẩn");
        assert_eq!((row.resolution.as_str(), row.version), ("5m", 3));
        // 27.5 / 45 = 0.61: moderate by speed; 20 % occupancy: moderate.
        assert_eq!(row.level, "moderate");
    }

    #[test]
    fn a_lane_that_missed_counts_is_not_read_as_an_empty_road() {
        let both = five_minutes(&[("lane-1", 30.0, 40.0, 5.0), ("lane-2", 12.0, 40.0, 5.0)]);
        // Lane 2's counts of minutes 3 and 4 never came.
        let mut missed = both.clone();
        missed.retain(|r| {
            !(r.channel == "lane-2" && r.metric == "vehicle_count" && r.ts >= T0 + 3 * MIN)
        });
        let row = derive5(&counter(Some(45.0)), &missed);
        assert_eq!(row.vehicles, 150 + 36);
        assert_eq!(row.flow_vph, Some(1800.0 + 720.0));
        assert_eq!(row.capture, Some(0.8), "8 of 10 lane-minutes");
        // A lane whose counts never came at all lowers the capture: it is a lane of the road.
        let mut dead = both;
        dead.retain(|r| !(r.channel == "lane-2" && r.metric == "vehicle_count"));
        let row = derive5(&counter(Some(45.0)), &dead);
        assert_eq!(
            (row.lanes, row.capture, row.flow_vph),
            (2, Some(0.5), Some(1800.0))
        );
    }

    #[test]
    fn a_count_covers_its_own_interval() {
        // One 5-minute count of 100 vehicles: 1 200 an hour, the window fully covered.
        let mut count = minute("lane-1", "vehicle_count", 4, 100.0);
        count.interval_s = Some(300.0);
        let row = derive5(&counter(None), std::slice::from_ref(&count));
        assert_eq!((row.flow_vph, row.capture), (Some(1200.0), Some(1.0)));
        // Without one, it covers the device's expected interval.
        count.interval_s = None;
        let mut five = counter(None);
        five.expected_interval_s = 300.0;
        assert_eq!(derive5(&five, &[count]).flow_vph, Some(1200.0));
        // Counts every 20 s: three a minute, each over its 20 s.
        let quick: Vec<ReadingRow> = (0..15)
            .map(|k| ReadingRow {
                ts: T0 + k * 20_000,
                interval_s: Some(20.0),
                ..minute("lane-1", "vehicle_count", 0, 10.0)
            })
            .collect();
        let row = derive5(&counter(None), &quick);
        assert_eq!((row.flow_vph, row.capture), (Some(1800.0), Some(1.0)));
        // Bad readings are not traffic.
        let mut bad = minute("lane-1", "vehicle_count", 1, 5000.0);
        bad.quality = "bad".into();
        assert!(derive5_opt(&counter(None), &[bad]).is_none());
    }

    #[test]
    fn levels_are_the_worse_of_speed_and_occupancy() {
        let c = congestion();
        let level = |r, o| Level::of(r, o, &c).map(Level::as_str);
        assert_eq!(level(Some(0.95), Some(5.0)), Some("free"));
        assert_eq!(
            level(Some(0.7), Some(19.9)),
            Some("free"),
            "limits begin the next level below"
        );
        assert_eq!(level(Some(0.69), Some(5.0)), Some("moderate"));
        assert_eq!(level(Some(0.45), Some(5.0)), Some("heavy"));
        assert_eq!(level(Some(0.2), Some(5.0)), Some("jammed"));
        assert_eq!(level(Some(0.9), Some(30.0)), Some("heavy"));
        assert_eq!(level(Some(0.9), Some(60.0)), Some("jammed"));
        assert_eq!(
            level(None, Some(25.0)),
            Some("moderate"),
            "no free-flow speed: occupancy alone"
        );
        assert_eq!(level(Some(0.4), None), Some("heavy"));
        assert_eq!(level(None, None), None);
    }

    #[test]
    fn a_jam_that_counts_almost_nothing_is_jammed_by_occupancy() {
        // Stopped traffic: a vehicle a minute creeps over the loop, which stays occupied.
        let readings = five_minutes(&[("lane-1", 1.0, 4.0, 80.0), ("lane-2", 0.0, 0.0, 75.0)]);
        let row = derive5(&counter(None), &readings);
        assert_eq!(row.flow_vph, Some(60.0));
        assert_eq!(
            row.speed_kmh,
            Some(4.0),
            "a lane with no vehicles weighs nothing"
        );
        assert_eq!(row.level, "jammed");
        // With no speed and no occupancy there is nothing to judge.
        let counts: Vec<ReadingRow> = five_minutes(&[("lane-1", 3.0, 40.0, 5.0)])
            .into_iter()
            .filter(|r| r.metric == "vehicle_count")
            .collect();
        let row = derive5(&counter(Some(45.0)), &counts);
        assert_eq!((row.speed_kmh, row.level.as_str()), (None, ""));
    }

    #[test]
    fn only_the_counters_own_readings_inside_the_window_count() {
        let mut readings = five_minutes(&[("lane-1", 10.0, 40.0, 5.0)]);
        let mut other = minute("lane-1", "vehicle_count", 2, 500.0);
        other.device_id = "tc-2".into();
        readings.push(other);
        readings.push(minute("lane-1", "vehicle_count", 5, 500.0));
        readings.push(minute("lane-1", "vehicle_count", -1, 500.0));
        let row = derive5(&counter(None), &readings);
        assert_eq!((row.vehicles, row.flow_vph), (50, Some(600.0)));
        assert!(derive(
            &counter(None),
            (Resolution::FiveMinutes, T0 + 10 * MIN, T0 + 15 * MIN),
            &readings,
            &congestion(),
            1
        )
        .is_none());
    }

    /// A stored window of `resolution` from T0.
    fn window(metric: &str, resolution: Resolution) -> Aggregate {
        Aggregate {
            device_id: "tc-1".into(),
            channel: "lane-1".into(),
            metric: metric.into(),
            resolution,
            window_start: T0,
            window_end: T0 + resolution.ms(),
            count: 1,
            sum: 10.0,
            min: 10.0,
            max: 10.0,
            mean: 10.0,
            capture: Some(1.0),
            unit: String::new(),
            version: 1,
        }
    }

    #[test]
    fn due_are_the_counters_coarse_windows_stored() {
        let five = window("vehicle_count", Resolution::FiveMinutes);
        let hour = window("avg_speed", Resolution::Hour);
        let mut air = five.clone();
        air.device_id = "aq-1".into();
        air.metric = "pm25".into();
        let one_minute = window("occupancy", Resolution::Minute);
        let due = due(&[five, hour, air, one_minute], |d| d == "tc-1");
        assert_eq!(
            due["tc-1"],
            BTreeSet::from([
                (Resolution::FiveMinutes, T0, T0 + 5 * MIN),
                (Resolution::Hour, T0, T0 + 60 * MIN)
            ])
        );
        assert_eq!(due.len(), 1);
        assert_eq!(range(&due["tc-1"]), (T0, T0 + 60 * MIN));
    }
}
