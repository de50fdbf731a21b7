//! What the simulated devices measure, in the catalogue's canonical units, as a function of
//! local time (UTC+7) in Đắk Lắk.
//!
//! Episodes (smoke, discharge limit breaches, traffic incidents) are drawn from a hash of the
//! seed and a block of time, not from the message stream: every device sees the same regional
//! smoke at the same hour, and the same seed gives the same episodes whatever the rate.

use chrono::{DateTime, Datelike, Timelike};
use rand::rngs::SmallRng;
use rand::Rng;

pub(crate) const LOCAL_OFFSET_MS: i64 = 7 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;

/// One measured value, in the catalogue's unit (occupancy in %).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Value {
    /// Lane of a traffic counter; none for the others.
    pub lane: Option<u8>,
    pub metric: &'static str,
    pub v: f64,
    /// Station status (`00` measuring, `01` calibrating, `02` device error); only tt10 shows it.
    pub status: &'static str,
}

fn value(metric: &'static str, v: f64) -> Value {
    Value {
        lane: None,
        metric,
        v,
        status: "00",
    }
}

/// One violation seen by a camera.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Violation {
    pub kind: &'static str,
    pub plate: String,
    pub speed_kmh: f64,
    pub lane: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sample {
    Values(Vec<Value>),
    Violation(Violation),
}

/// Local calendar facts of a timestamp.
pub(crate) struct Local {
    /// Fractional hour of the day, 0..24.
    pub hour: f64,
    /// Monday 0 .. Sunday 6.
    pub weekday: u32,
    pub month: u32,
}

pub(crate) fn local(ts_ms: i64) -> Local {
    let t = DateTime::from_timestamp_millis(ts_ms + LOCAL_OFFSET_MS).unwrap_or_default();
    Local {
        hour: t.hour() as f64 + t.minute() as f64 / 60.0 + t.second() as f64 / 3600.0,
        weekday: t.weekday().num_days_from_monday(),
        month: t.month(),
    }
}

/// A uniform number in [0, 1) from the seed and a few integers (splitmix64).
pub(crate) fn unit_hash(seed: u64, parts: &[i64]) -> f64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for p in parts {
        x = x
            .wrapping_add(*p as u64)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn bump(hour: f64, centre: f64, width: f64) -> f64 {
    (-((hour - centre) / width).powi(2)).exp()
}

/// Dry season (November to April), with field burning peaking February to April.
fn dry(month: u32) -> bool {
    !(5..=10).contains(&month)
}

/// How much above normal traffic is, 1 outside rush hours (07:30 and 17:30 local).
fn rush(l: &Local) -> f64 {
    let weekend = if l.weekday >= 5 { 0.5 } else { 1.0 };
    1.0 + weekend * (0.8 * bump(l.hour, 7.5, 1.0) + 0.7 * bump(l.hour, 17.5, 1.2))
}

/// How far back smoke episodes still add anything (their decay is at most 24 hours per e-fold).
const SMOKE_REACH_H: i64 = 144;

/// Regional smoke from dry-season burning, in µg/m³ of PM2.5 added. Episodes start at random
/// hours (most often February to April), build up over 6 to 18 hours to a peak of 40 to 160 and
/// decay by e every 8 to 24 hours, as regional haze does; they overlap. Each is drawn from a hash of the seed and its
/// starting hour, so the value at any time is a sum over the episodes begun in the 6 days
/// before it, with no state.
pub(crate) fn smoke(seed: u64, ts_ms: i64) -> f64 {
    const MAX_START: f64 = 0.011;
    let t = ts_ms + LOCAL_OFFSET_MS;
    let hour = t.div_euclid(HOUR_MS);
    let mut total = 0.0;
    for start in hour - SMOKE_REACH_H..=hour {
        let draw = unit_hash(seed, &[1, start]);
        if draw >= MAX_START {
            continue;
        }
        let p = match local(start * HOUR_MS - LOCAL_OFFSET_MS).month {
            2..=4 => MAX_START,
            11 | 12 | 1 => 0.0045,
            _ => 0.0008,
        };
        if draw >= p {
            continue;
        }
        let peak = 40.0 + 120.0 * unit_hash(seed, &[2, start]);
        let rise = 6.0 + 12.0 * unit_hash(seed, &[7, start]);
        let decay = 8.0 + 16.0 * unit_hash(seed, &[8, start]);
        let age = (t - start * HOUR_MS) as f64 / HOUR_MS as f64;
        total += if age < rise {
            peak * (std::f64::consts::FRAC_PI_2 * age / rise).sin().powi(2)
        } else {
            peak * (-(age - rise) / decay).exp()
        };
    }
    total
}

/// How long the weather remembers: a shock's effect halves in about 6.6 hours.
const WEATHER_PHI: f64 = 0.9;
const WEATHER_REACH_H: i64 = 48;

/// The weather's hold on particles (wind, mixing height) as a log factor: a first-order
/// autoregressive process over hours, AR(1) with φ = 0.9 and standard deviation `sd`, made of
/// hashed hourly shocks of the last two days (so any time has its value with no state) and
/// interpolated between hours. `place` 0 is the province's; others are a station's own.
pub(crate) fn weather(seed: u64, place: i64, sd: f64, ts_ms: i64) -> f64 {
    let t = ts_ms + LOCAL_OFFSET_MS;
    let hour = t.div_euclid(HOUR_MS);
    // Uniform shocks of this spread give the process a standard deviation of `sd`.
    let spread = sd * (1.0 - WEATHER_PHI * WEATHER_PHI).sqrt() * 12f64.sqrt();
    let shock = |h: i64| (unit_hash(seed, &[6, place, h]) - 0.5) * spread;
    let mut at_hour = 0.0;
    let mut weight = 1.0;
    for k in 0..WEATHER_REACH_H {
        at_hour += weight * shock(hour - k);
        weight *= WEATHER_PHI;
    }
    let next = WEATHER_PHI * at_hour + shock(hour + 1);
    let frac = t.rem_euclid(HOUR_MS) as f64 / HOUR_MS as f64;
    at_hour + (next - at_hour) * frac
}

/// An air-quality station: PM, gases, temperature and humidity.
pub(crate) fn air(seed: u64, station: usize, level: f64, ts_ms: i64, rng: &mut SmallRng) -> Sample {
    let l = local(ts_ms);
    let mut noise = |s: f64| rng.random_range(-s..s);
    let r = rush(&l);
    let season = if dry(l.month) { 1.35 } else { 0.8 };
    // Night inversion keeps particles near the ground; afternoon mixing clears them.
    let inversion = 1.0 + 0.35 * ((l.hour - 5.0) / 24.0 * std::f64::consts::TAU).cos();
    let smoke = smoke(seed, ts_ms) * (0.7 + 0.3 * level);
    let sun = if (6.0..18.5).contains(&l.hour) {
        bump(l.hour, 12.5, 3.0)
    } else {
        0.0
    };
    // Particles linger with the weather: the province's and the station's own, hours long.
    let held =
        (weather(seed, 0, 0.3, ts_ms) + weather(seed, 1 + station as i64, 0.15, ts_ms)).exp();
    let pm25 =
        ((14.0 * level * season * inversion + 9.0 * level * (r - 1.0)) * held + smoke + noise(3.0))
            .max(2.0);
    let pm10 = pm25 * 1.65 + 10.0 * level * (r - 1.0) + noise(4.0).abs();
    let o3 = (30.0 + 110.0 * sun * if dry(l.month) { 1.2 } else { 0.9 } - 8.0 * (r - 1.0)
        + noise(5.0))
    .max(2.0);
    let no2 = ((12.0 + 40.0 * (r - 1.0) + 8.0 * (1.0 - sun)) * level + noise(4.0)).max(1.0);
    let co = ((500.0 + 1100.0 * (r - 1.0)) * level + 12.0 * smoke + noise(100.0)).max(100.0);
    let so2 = (6.0 * level + noise(1.5)).max(0.5);
    let daily = ((l.hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
    let temperature = 24.0 + 5.0 * daily - if dry(l.month) { 1.0 } else { 0.0 } + noise(0.4);
    let humidity = (76.0 - 16.0 * daily + if dry(l.month) { -8.0 } else { 8.0 } + noise(2.0))
        .clamp(25.0, 100.0);
    Sample::Values(vec![
        value("pm25", pm25),
        value("pm10", pm10),
        value("no2", no2),
        value("so2", so2),
        value("co", co),
        value("o3", o3),
        value("temperature", temperature),
        value("humidity", humidity),
    ])
}

/// Production share of a factory behind a discharge point: two day shifts and a thin night crew,
/// washdown at each changeover, little on Sundays.
fn production(l: &Local) -> f64 {
    if l.weekday == 6 {
        return 0.25;
    }
    let shift = match l.hour {
        h if (6.0..14.0).contains(&h) => 1.0,
        h if (14.0..22.0).contains(&h) => 0.85,
        _ => 0.35,
    };
    let washdown =
        0.3 * (bump(l.hour, 6.25, 0.3) + bump(l.hour, 14.25, 0.3) + bump(l.hour, 22.25, 0.3));
    shift + washdown
}

/// A wastewater discharge station after treatment (QCVN 40:2011 column B limits: COD 150,
/// TSS 100, NH4+ 10 mg/L, pH 5.5–9), breaching them in occasional two-hour episodes.
pub(crate) fn wastewater(
    seed: u64,
    device: usize,
    level: f64,
    ts_ms: i64,
    rng: &mut SmallRng,
) -> Sample {
    let l = local(ts_ms);
    let mut noise = |s: f64| rng.random_range(-s..s);
    let p = production(&l);
    let mut flow = (25.0 * level + 70.0 * level * p + noise(4.0)).max(0.0);
    let mut cod = (40.0 + 45.0 * level * p + noise(6.0)).max(5.0);
    let mut tss = (22.0 + 30.0 * level * p + noise(4.0)).max(2.0);
    let mut nh4 = (2.5 + 4.0 * level * p + noise(0.6)).max(0.1);
    let mut ph = 7.2 + 0.3 * (p - 0.6) + noise(0.15);
    let temperature = 28.0 + 3.0 * p + noise(0.5);

    let block_ms = 2 * HOUR_MS;
    let t = ts_ms + LOCAL_OFFSET_MS;
    let block = t.div_euclid(block_ms);
    let d = device as i64;
    if unit_hash(seed, &[3, d, block]) < 0.07 {
        // Rises through the episode: the treatment plant degrades, then someone fixes it.
        let ramp =
            0.5 + (std::f64::consts::PI * t.rem_euclid(block_ms) as f64 / block_ms as f64).sin();
        let severity = 1.0 + ramp * (0.4 + unit_hash(seed, &[4, d, block]));
        match (unit_hash(seed, &[5, d, block]) * 6.0) as u32 {
            0 => cod = cod.max(110.0) * 1.4 * severity,
            1 => tss = tss.max(80.0) * 1.3 * severity,
            2 => nh4 = nh4.max(7.0) * 1.5 * severity,
            3 => ph = 5.4 - 0.4 * severity,
            4 => ph = 9.0 + 0.4 * severity,
            _ => {
                cod = cod.max(110.0) * 1.3 * severity;
                tss = tss.max(80.0) * 1.3 * severity;
                nh4 = nh4.max(7.0) * 1.4 * severity;
                flow *= 1.3;
            }
        }
    }
    let mut values = vec![
        value("ph", ph),
        value("cod", cod),
        value("tss", tss),
        value("nh4", nh4),
        value("temperature", temperature),
        value("flow", flow),
    ];
    // The COD analyser calibrates itself daily 08:00–08:20; the TSS probe fails now and then.
    if (8.0..8.34).contains(&l.hour) {
        values[1].status = "01";
    }
    if unit_hash(seed, &[6, d, t.div_euclid(HOUR_MS / 2)]) < 0.02 {
        values[2].status = "02";
    }
    Sample::Values(values)
}

/// The road segment the `style`-th traffic counter counts: main roads of Buôn Ma Thuột and
/// Tuy Hòa.
pub(crate) fn road_segment(style: usize) -> String {
    const ROADS: [&str; 8] = [
        "Lê Duẩn, Buôn Ma Thuột",
        "Nguyễn Tất Thành, Buôn Ma Thuột",
        "Phan Bội Châu, Buôn Ma Thuột",
        "Quốc lộ 14, Hòa Thắng",
        "Quốc lộ 26, Ea Kao",
        "Lê Thánh Tông, Buôn Ma Thuột",
        "Hùng Vương, Tuy Hòa",
        "Trần Hưng Đạo, Tuy Hòa",
    ];
    let road = ROADS[style.saturating_sub(1) % ROADS.len()];
    match style.saturating_sub(1) / ROADS.len() {
        0 => road.to_string(),
        n => format!("{road} ({})", n + 1),
    }
}

/// The free-flow speed (km/h) of a counter with `lanes` lanes: the count-weighted speed
/// [`traffic`] gives with next to no traffic (its lanes' free speeds less what a few percent
/// of occupancy takes), rounded to whole km/h.
pub(crate) fn free_flow_kmh(lanes: u8) -> f64 {
    let (weights, speeds): (f64, f64) = (1..=lanes)
        .map(lane_mix)
        .fold((0.0, 0.0), |(w, s), (share, free)| {
            (w + share, s + share * free)
        });
    (speeds / weights * (1.0 - 3.5 / 60.0)).round()
}

/// A lane's share of the traffic and its free speed: lane 1 carries the motorbikes, more of
/// them and slower.
fn lane_mix(lane: u8) -> (f64, f64) {
    match lane {
        1 => (1.2, 40.0),
        2 => (1.0, 48.0),
        _ => (0.7, 55.0),
    }
}

/// Whether the `device`-th counter has an incident (a 15-minute block of jammed lanes) at
/// `ts_ms`: about 3 % of blocks.
pub(crate) fn incident(seed: u64, device: usize, ts_ms: i64) -> bool {
    let block = (ts_ms + LOCAL_OFFSET_MS).div_euclid(HOUR_MS / 4);
    unit_hash(seed, &[7, device as i64, block]) < 0.03
}

/// A per-lane traffic counter's counts over the `interval_s` seconds ending at `ts_ms`, with
/// the lanes' mean speed and occupancy; incidents (15-minute blocks) drop speeds and raise
/// occupancy. Counts are whole vehicles, rounded at random so that short intervals add up to
/// the flow of long ones.
pub(crate) fn traffic(
    seed: u64,
    device: usize,
    level: f64,
    lanes: u8,
    ts_ms: i64,
    interval_s: f64,
    rng: &mut SmallRng,
) -> Sample {
    let l = local(ts_ms);
    let weekend = if l.weekday >= 5 { 0.6 } else { 1.0 };
    let day = if (5.5..22.0).contains(&l.hour) {
        0.5
    } else {
        0.0
    };
    let demand =
        0.08 + day + weekend * (0.9 * bump(l.hour, 7.3, 0.9) + 0.8 * bump(l.hour, 17.4, 1.1));
    let incident = incident(seed, device, ts_ms);
    let mut values = Vec::with_capacity(lanes as usize * 3);
    for lane in 1..=lanes {
        let (share, free_speed) = lane_mix(lane);
        let mut occupancy =
            (2.0 + 22.0 * demand * level * share / 1.2 + rng.random_range(-1.5..1.5))
                .clamp(0.5, 100.0);
        // Vehicles a minute.
        let mut count = (45.0 * level * demand * share + rng.random_range(-3.0..3.0)).max(0.0);
        let mut speed =
            (free_speed * (1.0 - occupancy / 60.0) + rng.random_range(-3.0..3.0)).max(5.0);
        if incident {
            speed = rng.random_range(4.0..12.0);
            occupancy = rng.random_range(55.0..85.0);
            count *= 0.45;
        }
        let expected = count * interval_s / 60.0;
        let whole = expected.floor() + f64::from(u8::from(rng.random_bool(expected.fract())));
        for (metric, v) in [
            ("vehicle_count", whole),
            ("avg_speed", speed),
            ("occupancy", occupancy),
        ] {
            values.push(Value {
                lane: Some(lane),
                ..value(metric, v)
            });
        }
    }
    Sample::Values(values)
}

/// Violation types AI cameras report (DOMAIN.md §7), with how often.
const VIOLATIONS: [(&str, f64); 6] = [
    ("no_helmet", 0.33),
    ("red_light", 0.22),
    ("wrong_lane", 0.20),
    ("speeding", 0.12),
    ("wrong_way", 0.08),
    ("no_seatbelt", 0.05),
];

/// One violation, its plate from `plates` (a few repeat offenders draw most of the fines).
pub(crate) fn violation(plates: &PlatePool, rng: &mut SmallRng) -> Sample {
    let mut x: f64 = rng.random();
    let mut kind = VIOLATIONS[0].0;
    for (k, p) in VIOLATIONS {
        if x < p {
            kind = k;
            break;
        }
        x -= p;
    }
    let vehicle = match kind {
        "no_helmet" => Vehicle::Motorbike,
        "no_seatbelt" => Vehicle::Car,
        _ if rng.random_bool(0.6) => Vehicle::Motorbike,
        _ => Vehicle::Car,
    };
    let speed_kmh = match kind {
        "speeding" => rng.random_range(62.0..105.0),
        "wrong_way" => rng.random_range(8.0..30.0),
        _ => rng.random_range(10.0..55.0),
    };
    Sample::Violation(Violation {
        kind,
        plate: plates.draw(vehicle, rng),
        speed_kmh,
        lane: rng.random_range(1..=3),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vehicle {
    Motorbike,
    Car,
}

/// A bounded set of plates, so the same vehicles come back.
pub(crate) struct PlatePool {
    plates: Vec<(String, Vehicle)>,
}

/// Đắk Lắk is 47 (Phú Yên, merged into it in 2025, 78); neighbours and the big cities.
const PROVINCES: [(u32, f64); 8] = [
    (47, 0.70),
    (78, 0.08),
    (81, 0.05),
    (48, 0.04),
    (49, 0.04),
    (79, 0.03),
    (51, 0.04),
    (29, 0.02),
];

impl PlatePool {
    pub fn new(size: usize, rng: &mut SmallRng) -> PlatePool {
        let mut plates: Vec<(String, Vehicle)> = Vec::with_capacity(size);
        while plates.len() < size {
            let mut x: f64 = rng.random();
            let mut province = 47;
            for (p, share) in PROVINCES {
                if x < share {
                    province = p;
                    break;
                }
                x -= share;
            }
            let (plate, vehicle) = if rng.random_bool(0.7) {
                let series = b"BCDEFGHKLMNPSTUVXYZ"[rng.random_range(0..19)] as char;
                let plate = format!(
                    "{province}{series}{}-{:03}.{:02}",
                    rng.random_range(1..=9),
                    rng.random_range(0..1000),
                    rng.random_range(0..100)
                );
                (plate, Vehicle::Motorbike)
            } else {
                let series = ["A", "A", "A", "C", "D", "LD"][rng.random_range(0..6)];
                let plate = format!(
                    "{province}{series}-{:03}.{:02}",
                    rng.random_range(0..1000),
                    rng.random_range(0..100)
                );
                (plate, Vehicle::Car)
            };
            if !plates.iter().any(|(p, _)| *p == plate) {
                plates.push((plate, vehicle));
            }
        }
        PlatePool { plates }
    }

    /// A plate of that kind of vehicle; 40% of draws come from the first eighth of the pool.
    fn draw(&self, vehicle: Vehicle, rng: &mut SmallRng) -> String {
        let n = if rng.random_bool(0.4) {
            (self.plates.len() / 8).max(1)
        } else {
            self.plates.len()
        };
        let start = rng.random_range(0..n);
        (0..n)
            .map(|k| &self.plates[(start + k) % n])
            .find(|(_, v)| *v == vehicle)
            .or_else(|| self.plates.iter().find(|(_, v)| *v == vehicle))
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| self.plates[start].0.clone())
    }
}

/// A value outside the metric's physical range, in its canonical unit.
pub(crate) fn absurd(metric: &str) -> f64 {
    match metric {
        "pm25" | "o3" => 9999.0,
        "pm10" | "no2" | "so2" => 99999.0,
        "co" => 999_999.0,
        "temperature" => 150.0,
        "humidity" => 180.0,
        "ph" => 15.0,
        "cod" | "tss" => 250_000.0,
        "nh4" => 20_000.0,
        "flow" => 999_999.0,
        "vehicle_count" => 250_000.0,
        "avg_speed" => 999.0,
        "occupancy" => 250.0,
        _ => 1e9,
    }
}

#[cfg(test)]
mod tests {
    //! The signals' shape, measured the way an analyst would: hourly means over weeks of samples.
    use super::*;
    use rand::SeedableRng;

    /// Local midnight starting a Monday, in March (dry, burning season) and July (wet).
    const MARCH: i64 = 1_772_384_400_000;
    const JULY: i64 = 1_783_270_800_000;
    const TEN_MINUTES: i64 = 600_000;

    fn values(s: Sample) -> Vec<Value> {
        match s {
            Sample::Values(v) => v,
            Sample::Violation(_) => panic!("a violation"),
        }
    }

    /// Mean of `metric` over `days` from `start`, at samples whose local time satisfies `when`.
    fn mean(
        start: i64,
        days: i64,
        metric: &str,
        when: impl Fn(&Local) -> bool,
        sample: &mut impl FnMut(i64) -> Vec<Value>,
    ) -> f64 {
        let (mut sum, mut n) = (0.0, 0);
        for k in 0..days * 144 {
            let ts = start + k * TEN_MINUTES;
            if !when(&local(ts)) {
                continue;
            }
            for v in sample(ts).into_iter().filter(|v| v.metric == metric) {
                sum += v.v;
                n += 1;
            }
        }
        assert!(n > 0, "no samples of {metric}");
        sum / n as f64
    }

    fn between(from: f64, to: f64) -> impl Fn(&Local) -> bool {
        move |l: &Local| l.weekday < 5 && (from..to).contains(&l.hour)
    }

    #[test]
    fn air_has_rush_hour_peaks_midday_ozone_and_a_smoky_dry_season() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut station = |ts| values(air(7, 0, 1.0, ts, &mut rng));
        let days = 28;
        // The day's shape, in July when little smoke hides it.
        let pm25_rush = mean(JULY, days, "pm25", between(7.0, 8.0), &mut station);
        let pm25_afternoon = mean(JULY, days, "pm25", between(14.0, 15.0), &mut station);
        assert!(
            pm25_rush > 1.8 * pm25_afternoon,
            "{pm25_rush} {pm25_afternoon}"
        );
        let no2_rush = mean(JULY, days, "no2", between(17.0, 18.0), &mut station);
        let no2_midday = mean(JULY, days, "no2", between(12.0, 13.0), &mut station);
        assert!(no2_rush > 2.0 * no2_midday, "{no2_rush} {no2_midday}");
        let co_rush = mean(JULY, days, "co", between(7.0, 8.0), &mut station);
        let co_night = mean(JULY, days, "co", between(2.0, 3.0), &mut station);
        assert!(co_rush > 1.5 * co_night, "{co_rush} {co_night}");
        let o3_midday = mean(JULY, days, "o3", between(12.0, 13.0), &mut station);
        let o3_night = mean(JULY, days, "o3", between(1.0, 4.0), &mut station);
        assert!(o3_midday > 3.0 * o3_night, "{o3_midday} {o3_night}");
        // Weekends have thinner rush hours.
        let weekend_rush = mean(
            JULY,
            days,
            "no2",
            |l| l.weekday >= 5 && (17.0..18.0).contains(&l.hour),
            &mut station,
        );
        assert!(weekend_rush < 0.8 * no2_rush, "{weekend_rush} {no2_rush}");

        let all = |_: &Local| true;
        let march = mean(MARCH, days, "pm25", all, &mut station);
        let july = mean(JULY, days, "pm25", all, &mut station);
        assert!(march > 1.8 * july, "dry season smoke: {march} vs {july}");
    }

    #[test]
    fn smoke_episodes_come_in_the_burning_season_and_rise_and_fall() {
        let hours = |start: i64| -> Vec<f64> {
            (0..28 * 24)
                .map(|h| smoke(7, start + h * HOUR_MS + 30 * 60_000))
                .collect()
        };
        let smoky = |h: &[f64]| h.iter().filter(|v| **v > 10.0).count() as f64 / h.len() as f64;
        let (march, july) = (hours(MARCH), hours(JULY));
        assert!((0.2..0.8).contains(&smoky(&march)), "{}", smoky(&march));
        assert!(smoky(&july) < 0.1, "{}", smoky(&july));
        // An episode builds for hours, then decays for longer: find a peak above 40 with a
        // rise over the 3 hours before it and a fall over the 6 after.
        let peak = (3..march.len() - 6)
            .find(|&i| {
                march[i] > 40.0
                    && (i - 3..i).all(|k| march[k] < march[k + 1])
                    && (i..i + 6).all(|k| march[k] > march[k + 1])
            })
            .expect("an episode that rises and falls");
        assert!(march[peak + 6] > 0.2 * march[peak], "it decays over hours");
    }

    #[test]
    fn the_weather_remembers_hours_and_forgets_days() {
        let series: Vec<f64> = (0..60 * 24)
            .map(|h| weather(7, 0, 0.3, MARCH + h * HOUR_MS + 20 * 60_000))
            .collect();
        let n = series.len() as f64;
        let mean = series.iter().sum::<f64>() / n;
        let var = series.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let lag = |k: usize| {
            series
                .windows(k + 1)
                .map(|w| (w[0] - mean) * (w[k] - mean))
                .sum::<f64>()
                / (n - k as f64)
                / var
        };
        assert!((0.2..0.4).contains(&var.sqrt()), "sd {}", var.sqrt());
        assert!(
            lag(1) > 0.8 && lag(6) > 0.35 && lag(48) < 0.2,
            "{} {} {}",
            lag(1),
            lag(6),
            lag(48)
        );
        // Continuous within an hour: no steps between minutes.
        let a = weather(7, 0, 0.3, MARCH + 59 * 60_000);
        let b = weather(7, 0, 0.3, MARCH + 60 * 60_000);
        assert!((a - b).abs() < 0.02, "{a} {b}");
    }

    #[test]
    fn wastewater_follows_shifts_and_breaches_its_limits_now_and_then() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut station = |ts| values(wastewater(7, 0, 1.0, ts, &mut rng));
        let days = 56;
        let day_flow = mean(MARCH, days, "flow", between(8.0, 13.0), &mut station);
        let night_flow = mean(MARCH, days, "flow", between(0.0, 5.0), &mut station);
        assert!(day_flow > 1.6 * night_flow, "{day_flow} {night_flow}");
        let sunday = mean(
            MARCH,
            days,
            "flow",
            |l| l.weekday == 6 && (8.0..13.0).contains(&l.hour),
            &mut station,
        );
        assert!(sunday < 0.7 * day_flow, "{sunday} {day_flow}");
        // QCVN 40:2011 column B: COD 150, TSS 100, NH4+ 10 mg/L, pH 5.5–9.
        let (mut samples, mut breaches, mut calibrating) = (0, 0, 0);
        for k in 0..days * 144 {
            let ts = MARCH + k * TEN_MINUTES;
            let v = station(ts);
            samples += 1;
            let get = |m: &str| v.iter().find(|x| x.metric == m).unwrap().v;
            if get("cod") > 150.0
                || get("tss") > 100.0
                || get("nh4") > 10.0
                || !(5.5..=9.0).contains(&get("ph"))
            {
                breaches += 1;
            }
            if v.iter().any(|x| x.status == "01") {
                calibrating += 1;
                assert!((8.0..8.34).contains(&local(ts).hour));
            }
        }
        let share = breaches as f64 / samples as f64;
        assert!(
            (0.01..0.15).contains(&share),
            "breaches in {share} of samples"
        );
        assert_eq!(calibrating, days * 3, "08:00, 08:10 and 08:20 every day");
    }

    #[test]
    fn counts_over_short_intervals_add_up_to_the_flow_of_a_minute() {
        let mut rng = SmallRng::seed_from_u64(5);
        let count = |interval: f64, rng: &mut SmallRng| -> f64 {
            (0..4000)
                .map(|k| {
                    let ts = MARCH + 8 * 3_600_000 + (k % 30) * 60_000;
                    values(traffic(7, 0, 1.0, 2, ts, interval, rng))
                        .iter()
                        .filter(|v| v.metric == "vehicle_count")
                        .map(|v| v.v)
                        .sum::<f64>()
                })
                .sum()
        };
        let minute = count(60.0, &mut rng);
        let quarter = count(15.0, &mut rng) * 4.0;
        assert!(
            (quarter / minute - 1.0).abs() < 0.03,
            "{quarter} vehicles in quarter-minutes against {minute} in minutes"
        );
        assert_eq!(free_flow_kmh(2), 41.0);
        assert_eq!(free_flow_kmh(3), 44.0);
        assert_eq!(road_segment(9), "Lê Duẩn, Buôn Ma Thuột (2)");
    }

    #[test]
    fn traffic_peaks_at_rush_hour_and_incidents_jam_it() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counter = |ts| values(traffic(7, 0, 1.0, 2, ts, 60.0, &mut rng));
        let days = 28;
        let rush = mean(
            MARCH,
            days,
            "vehicle_count",
            between(7.0, 8.0),
            &mut counter,
        );
        let night = mean(
            MARCH,
            days,
            "vehicle_count",
            between(2.0, 4.0),
            &mut counter,
        );
        assert!(rush > 4.0 * night, "{rush} {night}");
        let rush_speed = mean(MARCH, days, "avg_speed", between(7.0, 8.0), &mut counter);
        let night_speed = mean(MARCH, days, "avg_speed", between(2.0, 4.0), &mut counter);
        assert!(rush_speed < night_speed, "{rush_speed} {night_speed}");
        let (mut samples, mut jammed) = (0, 0);
        for k in 0..days * 144 {
            let v = counter(MARCH + k * TEN_MINUTES);
            samples += 1;
            let speed = v.iter().find(|x| x.metric == "avg_speed").unwrap().v;
            let occupancy = v.iter().find(|x| x.metric == "occupancy").unwrap().v;
            if speed < 12.0 && occupancy >= 55.0 {
                jammed += 1;
            }
        }
        let share = jammed as f64 / samples as f64;
        assert!(
            (0.01..0.06).contains(&share),
            "incidents in {share} of minutes"
        );
    }
}
