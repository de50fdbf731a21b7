//! Roll-ups: 5-minute, hourly and daily windows, each derived from the stored windows of the
//! next finer resolution (5 minutes from 1-minute windows, hours from 5-minute ones, days from
//! hours), never from readings; no coarse window is held open in memory.
//!
//! The rule ([`due`]): a coarse window is derived from what is stored, with a higher version,
//! when it completes (its device's `closed_until` passes its end, or the device has no open
//! window left, as when it falls idle), and again whenever a window in it is emitted after
//! that (a late reading). So a coarse window is the union of its stored finer windows once
//! complete: the current hour is derived when it ends, not after every minute (the 1-minute
//! windows are the live view); a days-late backfill revises its minute, then the five
//! minutes, the hour and the day; and once the data stops every stored window at every
//! resolution equals a recomputation from the raw readings.
//! The derivation runs in the same step as the 1-minute windows it follows, before the offsets
//! move, so a crash anywhere in between replays the step and derives again; nothing coarse pins
//! the offset checkpoint.
//!
//! Reading back what was just written would cost more than the rest of the step (measured: the
//! reads were two thirds of what roll-ups added), so [`Recent`] keeps the stored finer windows of
//! each device's two newest coarse windows per resolution: they are read once, then kept up to
//! date with every window this process stores (a device's windows are written only by the
//! process reading its partition). A restart starts with none, a late revision of an older
//! window reads it again.
//!
//! `count`, `sum`, `min` and `max` compose exactly; the mean is `sum / count` (a mean of means
//! weighted by count). `capture` is computed from the count and the device's
//! `expected_interval_s` in the registry as it is when the window is derived.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ioc_contract::{capture, Aggregate, Resolution};

/// Per device, the starts of the windows of one resolution to derive.
pub type Due = BTreeMap<String, BTreeSet<i64>>;

/// Where a batch left each device's 1-minute windows: what says a coarse window is complete.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    /// `closed_until` after the batch, of every device that emitted a window or moved.
    pub closed_until: HashMap<String, i64>,
    /// `closed_until` before the batch, of the devices whose `closed_until` moved.
    pub before: HashMap<String, i64>,
    /// Devices with no open window: everything they sent is closed (they fell idle, or report
    /// sparsely).
    pub settled: BTreeSet<String>,
}

impl Marks {
    /// Every window complete: what a test of derivation alone has.
    #[cfg(test)]
    pub fn all_settled<'a>(devices: impl IntoIterator<Item = &'a str>) -> Marks {
        Marks {
            settled: devices.into_iter().map(str::to_string).collect(),
            ..Marks::default()
        }
    }

    fn complete(&self, device: &str, end: i64) -> bool {
        self.settled.contains(device) || self.closed_until.get(device).is_some_and(|u| end <= *u)
    }
}

/// The windows of `resolution` to derive after `emitted` windows (of the next finer resolution)
/// were stored: those containing one that are complete (their device's `closed_until` has
/// passed their end, or the device is settled), and each moved device's window that was in
/// progress and is now complete (its last finer windows may have been stored in earlier
/// batches, or not exist). A window still in progress waits for its end: the current hour is
/// derived once, when it completes, rather than after every minute; a late reading re-derives
/// the complete windows containing it.
pub fn due(
    emitted: &[Aggregate],
    resolution: Resolution,
    utc_offset_ms: i64,
    marks: &Marks,
) -> Due {
    let mut due = Due::new();
    for a in emitted {
        let start = resolution.start(a.window_start, utc_offset_ms);
        if marks.complete(&a.device_id, start + resolution.ms()) {
            due.entry(a.device_id.clone()).or_default().insert(start);
        }
    }
    for (device, before) in &marks.before {
        // A device's first window has nothing in progress before it.
        if *before <= 0 {
            continue;
        }
        let start = resolution.start(before - 1, utc_offset_ms);
        let end = start + resolution.ms();
        // Only a window still in progress at `before`: one that ended there was derived by
        // the move that brought `closed_until` to its end.
        if end > *before && marks.complete(device, end) {
            due.entry(device.clone()).or_default().insert(start);
        }
    }
    due
}

/// One read of stored finer windows: `devices` over `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRead {
    pub devices: Vec<String>,
    pub from: i64,
    pub to: i64,
}

/// The reads that cover every due window of `resolution`: devices whose due windows span the
/// same range share one read (in steady state every device is at the same boundary, so a batch
/// needs one read per resolution; a backfilling device gets its own).
pub fn child_reads(due: &Due, resolution: Resolution) -> Vec<ChildRead> {
    let mut by_range: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
    for (device, starts) in due {
        let (Some(first), Some(last)) = (starts.first(), starts.last()) else {
            continue;
        };
        by_range
            .entry((*first, last + resolution.ms()))
            .or_default()
            .push(device.clone());
    }
    by_range
        .into_iter()
        .map(|((from, to), devices)| ChildRead { devices, from, to })
        .collect()
}

/// Per device and coarse resolution, the stored finer windows of its newest coarse windows, by
/// coarse window start, then by (channel, metric, finer window start).
type Windows = BTreeMap<i64, HashMap<(String, String, i64), Aggregate>>;

/// The stored finer windows of recent coarse windows (module docs).
#[derive(Debug, Default)]
pub struct Recent {
    windows: HashMap<(String, Resolution), Windows>,
}

/// Coarse windows kept per device and resolution: the current one and the one before it (its
/// stragglers come within the allowed lateness).
const KEPT: usize = 2;

impl Recent {
    /// Records `emitted` (just stored, of the resolution finer than `resolution`) in the coarse
    /// windows already kept; returns the due windows that are not kept, to be read.
    pub fn update(
        &mut self,
        resolution: Resolution,
        emitted: &[Aggregate],
        due: &Due,
        utc_offset_ms: i64,
    ) -> Due {
        for a in emitted {
            let start = resolution.start(a.window_start, utc_offset_ms);
            if let Some(children) = self
                .windows
                .get_mut(&(a.device_id.clone(), resolution))
                .and_then(|w| w.get_mut(&start))
            {
                children.insert(
                    (a.channel.clone(), a.metric.clone(), a.window_start),
                    a.clone(),
                );
            }
        }
        let mut missing = Due::new();
        for (device, starts) in due {
            let kept = self.windows.get(&(device.clone(), resolution));
            for start in starts {
                if !kept.is_some_and(|w| w.contains_key(start)) {
                    missing.entry(device.clone()).or_default().insert(*start);
                }
            }
        }
        missing
    }

    /// Keeps what was read for the `read` windows: every stored finer window in them.
    pub fn remember(
        &mut self,
        resolution: Resolution,
        read: &Due,
        children: Vec<Aggregate>,
        utc_offset_ms: i64,
    ) {
        for (device, starts) in read {
            let w = self
                .windows
                .entry((device.clone(), resolution))
                .or_default();
            for start in starts {
                w.entry(*start).or_default();
            }
        }
        for c in children {
            let start = resolution.start(c.window_start, utc_offset_ms);
            if let Some(children) = self
                .windows
                .get_mut(&(c.device_id.clone(), resolution))
                .and_then(|w| w.get_mut(&start))
            {
                children.insert((c.channel.clone(), c.metric.clone(), c.window_start), c);
            }
        }
    }

    /// The kept finer windows of the `due` windows.
    pub fn children<'a>(
        &'a self,
        resolution: Resolution,
        due: &'a Due,
    ) -> impl Iterator<Item = &'a Aggregate> + 'a {
        due.iter().flat_map(move |(device, starts)| {
            let kept = self.windows.get(&(device.clone(), resolution));
            starts
                .iter()
                .filter_map(move |s| kept.and_then(|w| w.get(s)))
                .flat_map(|children| children.values())
        })
    }

    /// Forgets all but each device's [`KEPT`] newest coarse windows of `resolution`.
    pub fn forget_old(&mut self, resolution: Resolution, due: &Due) {
        for device in due.keys() {
            if let Some(w) = self.windows.get_mut(&(device.clone(), resolution)) {
                while w.len() > KEPT {
                    w.pop_first();
                }
            }
        }
    }

    /// Finer windows kept, over every device and resolution.
    pub fn len(&self) -> usize {
        self.windows
            .values()
            .flat_map(|w| w.values())
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Derives the due windows of `resolution` from `children`, the stored windows of the next
/// finer resolution in them (others are ignored), stamping each with `version`.
/// `expected_interval_s` gives a device's expected interval as the registry has it now.
pub fn derive<'a>(
    resolution: Resolution,
    due: &Due,
    children: impl IntoIterator<Item = &'a Aggregate>,
    utc_offset_ms: i64,
    expected_interval_s: impl Fn(&str) -> Option<f64>,
    version: u64,
) -> Vec<Aggregate> {
    let finer = resolution.finer();
    let mut windows: HashMap<(&str, &str, &str, i64), Aggregate> = HashMap::new();
    for c in children {
        debug_assert_eq!(Some(c.resolution), finer);
        let start = resolution.start(c.window_start, utc_offset_ms);
        if !due
            .get(&c.device_id)
            .is_some_and(|starts| starts.contains(&start))
        {
            continue;
        }
        let key = (
            c.device_id.as_str(),
            c.channel.as_str(),
            c.metric.as_str(),
            start,
        );
        match windows.get_mut(&key) {
            None => {
                windows.insert(
                    key,
                    Aggregate {
                        device_id: c.device_id.clone(),
                        channel: c.channel.clone(),
                        metric: c.metric.clone(),
                        resolution,
                        window_start: start,
                        window_end: start + resolution.ms(),
                        count: c.count,
                        sum: c.sum,
                        min: c.min,
                        max: c.max,
                        mean: 0.0,
                        capture: None,
                        unit: c.unit.clone(),
                        version,
                    },
                );
            }
            Some(w) => {
                w.count += c.count;
                w.sum += c.sum;
                w.min = w.min.min(c.min);
                w.max = w.max.max(c.max);
                // As the 1-minute query does: one unit per metric, the least if they ever differ.
                if c.unit < w.unit {
                    w.unit = c.unit.clone();
                }
            }
        }
    }
    let mut out: Vec<Aggregate> = windows
        .into_values()
        .map(|mut w| {
            w.mean = w.sum / w.count as f64;
            w.capture = capture(w.count, resolution.ms(), expected_interval_s(&w.device_id));
            w
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.device_id, &a.channel, &a.metric, a.window_start).cmp(&(
            &b.device_id,
            &b.channel,
            &b.metric,
            b.window_start,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26T00:00:00+07:00.
    const DAY: i64 = 1_795_626_000_000;
    const ICT: i64 = 7 * 3_600_000;

    /// A golden case: finer windows in, derived windows out, written as text so a case reads
    /// like a table (`stream/golden/rollup/*.txt`). Input lines: `device metric
    /// start_offset_ms count sum min max`; output lines: `device metric start_offset_ms count
    /// sum min max mean capture`.
    struct Golden<'a> {
        resolution: Resolution,
        input: &'a str,
        output: &'a str,
    }

    impl<'a> Golden<'a> {
        /// `resolution R`, then `input` and its lines, then `output` and its lines; `#`
        /// comments anywhere.
        fn parse(text: &'a str) -> Golden<'a> {
            let resolution = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("resolution "))
                .and_then(|r| Resolution::parse(r.trim()))
                .expect("a `resolution` line");
            let input_at = text.find("\ninput\n").expect("an `input` line") + "\ninput\n".len();
            let output_at = text.find("\noutput\n").expect("an `output` line");
            Golden {
                resolution,
                input: &text[input_at..output_at],
                output: &text[output_at + "\noutput\n".len()..],
            }
        }
    }

    /// Every golden file, each case named in a failure.
    #[test]
    fn every_golden_file_of_roll_ups_and_capture() {
        let files = crate::tests::golden_files("rollup");
        assert!(files.len() >= 3, "golden files: {files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let case = Golden::parse(&text);
            let outcome = std::panic::catch_unwind(|| run(&case));
            assert!(outcome.is_ok(), "golden case {} failed", file.display());
        }
    }

    fn windows(text: &str, resolution: Resolution) -> Vec<Aggregate> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let num = |i: usize| f[i].parse::<f64>().unwrap();
                let start = DAY + f[2].parse::<i64>().unwrap();
                let count = f[3].parse::<u64>().unwrap();
                Aggregate {
                    device_id: f[0].into(),
                    channel: String::new(),
                    metric: f[1].into(),
                    resolution,
                    window_start: start,
                    window_end: start + resolution.ms(),
                    count,
                    sum: num(4),
                    min: num(5),
                    max: num(6),
                    mean: f.get(7).map_or(num(4) / count as f64, |_| num(7)),
                    capture: f.get(8).and_then(|c| c.parse().ok()),
                    unit: "µg/m³".into(),
                    version: 9,
                }
            })
            .collect()
    }

    fn run(g: &Golden) {
        let finer = g.resolution.finer().unwrap();
        let children = windows(g.input, finer);
        let due = due(
            &children,
            g.resolution,
            ICT,
            &Marks::all_settled(["aq-1", "aq-2"]),
        );
        let got = derive(
            g.resolution,
            &due,
            &children,
            ICT,
            |d| (d == "aq-1").then_some(60.0),
            9,
        );
        let want = windows(g.output, g.resolution);
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (
                    &g.device_id,
                    &g.metric,
                    g.window_start,
                    g.count,
                    g.min,
                    g.max
                ),
                (
                    &w.device_id,
                    &w.metric,
                    w.window_start,
                    w.count,
                    w.min,
                    w.max
                )
            );
            assert!(
                (g.sum - w.sum).abs() < 1e-9 && (g.mean - w.mean).abs() < 1e-9,
                "{g:?}"
            );
            match (g.capture, w.capture) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "capture {a} != {b}"),
                (a, b) => assert_eq!(a, b),
            }
            assert_eq!(g.window_end - g.window_start, g.resolution.ms());
        }
    }

    #[test]
    fn a_coarse_window_is_read_once_then_kept_up_to_date_and_only_the_newest_two_are_kept() {
        let mut recent = Recent::default();
        let hour = |h: i64| DAY + h * 3_600_000;
        let minute = |h: i64, m: i64, count: u64| {
            let mut w = windows("aq-1 pm25 0 1 1 1 1", Resolution::FiveMinutes).remove(0);
            w.window_start = hour(h) + m * 300_000;
            w.count = count;
            w
        };
        let first = vec![minute(0, 0, 1)];
        let due = due(
            &first,
            Resolution::Hour,
            ICT,
            &Marks::all_settled(["aq-1", "aq-2"]),
        );
        let missing = recent.update(Resolution::Hour, &first, &due, ICT);
        assert_eq!(missing, due, "nothing kept yet: read it");
        // What the read found: an earlier five minutes and the one just stored.
        recent.remember(
            Resolution::Hour,
            &missing,
            vec![minute(0, 1, 4), minute(0, 0, 1)],
            ICT,
        );
        let next = vec![minute(0, 0, 2), minute(0, 2, 3)];
        assert!(recent.update(Resolution::Hour, &next, &due, ICT).is_empty());
        let derived = derive(
            Resolution::Hour,
            &due,
            recent.children(Resolution::Hour, &due),
            ICT,
            |_| None,
            2,
        );
        assert_eq!(derived.len(), 1);
        assert_eq!(
            derived[0].count,
            4 + 2 + 3,
            "the revised five minutes replaced the old one"
        );
        for h in 1..4 {
            let w = vec![minute(h, 0, 1)];
            let d = super::due(
                &w,
                Resolution::Hour,
                ICT,
                &Marks::all_settled(["aq-1", "aq-2"]),
            );
            let missing = recent.update(Resolution::Hour, &w, &d, ICT);
            recent.remember(Resolution::Hour, &missing, w, ICT);
            recent.forget_old(Resolution::Hour, &d);
        }
        assert_eq!(recent.len(), KEPT, "hours 2 and 3");
        assert_eq!(
            recent.update(Resolution::Hour, &[], &due, ICT),
            due,
            "hour 0 is read again"
        );
    }

    #[test]
    fn only_due_windows_are_derived_and_reads_share_ranges() {
        let children = windows(
            "
            aq-1 pm25 0 1 1 1 1
            aq-1 pm25 3600000 1 1 1 1
            aq-2 pm25 0 1 1 1 1
            ",
            Resolution::FiveMinutes,
        );
        let mut due = Due::new();
        due.entry("aq-1".into()).or_default().insert(DAY);
        due.entry("aq-2".into()).or_default().insert(DAY);
        let derived = derive(Resolution::Hour, &due, &children, ICT, |_| None, 1);
        assert_eq!(derived.len(), 2, "the second hour of aq-1 is not due");
        assert_eq!(
            child_reads(&due, Resolution::Hour),
            vec![ChildRead {
                devices: vec!["aq-1".into(), "aq-2".into()],
                from: DAY,
                to: DAY + 3_600_000
            }]
        );
        due.entry("aq-2".into())
            .or_default()
            .insert(DAY - 86_400_000);
        assert_eq!(child_reads(&due, Resolution::Hour).len(), 2);
    }
}
