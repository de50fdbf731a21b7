//! Runs of one value, per series (device, channel, metric): how many good readings in a row,
//! in event-time order, have had exactly the same value, as of the end of each 1-minute window
//! that closed in order. The `sensor_stuck` rule reads them (`runs`); the quality issue's
//! stuck counts reuse them. A fan-failed SDS011 repeats 999.9; a frozen ADC repeats its last
//! count.
//!
//! Kept in memory: a restart counts again from the replayed windows, so a run that began
//! before the checkpoint is seen shorter until it is long again.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::error::ArrowError;

use crate::windows::{OpenWindow, WindowKey};

#[derive(Debug, Default)]
pub struct Runs {
    /// Per series: its last value and how many readings in a row had it.
    last: HashMap<(String, String, String), (f64, i64)>,
}

/// One series' run at the end of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub device_id: String,
    pub channel: String,
    pub metric: String,
    pub window_start: i64,
    pub value: f64,
    pub unit: String,
    pub run: i64,
}

impl Runs {
    /// Follows the windows closed in order; the run of each at its end.
    pub fn follow(&mut self, closed: &[(WindowKey, OpenWindow)]) -> Vec<Run> {
        let mut out = Vec::with_capacity(closed.len());
        for (key, window) in closed {
            let mut values: Vec<(i64, f64)> = window.values.iter().map(|(t, v)| (*t, *v)).collect();
            values.sort_by_key(|(t, _)| *t);
            let series = (
                key.device_id.clone(),
                key.channel.clone(),
                key.metric.clone(),
            );
            let state = self.last.entry(series).or_insert((f64::NAN, 0));
            for (_, v) in values {
                if v == state.0 {
                    state.1 += 1;
                } else {
                    *state = (v, 1);
                }
            }
            out.push(Run {
                device_id: key.device_id.clone(),
                channel: key.channel.clone(),
                metric: key.metric.clone(),
                window_start: key.start,
                value: state.0,
                unit: window.unit.clone(),
                run: state.1,
            });
        }
        out
    }
}

/// The runs as the `runs` input of alert rules.
pub fn to_batch(runs: &[Run]) -> Result<RecordBatch, ArrowError> {
    let text = |f: fn(&Run) -> &str| Arc::new(StringArray::from_iter_values(runs.iter().map(f)));
    RecordBatch::try_new(
        crate::rules::runs_schema(),
        vec![
            text(|r| &r.device_id),
            text(|r| &r.channel),
            text(|r| &r.metric),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.window_start),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter()
                    .map(|r| r.window_start + ioc_contract::WINDOW_MS),
            )),
            Arc::new(Float64Array::from_iter_values(runs.iter().map(|r| r.value))),
            text(|r| &r.unit),
            Arc::new(Int64Array::from_iter_values(runs.iter().map(|r| r.run))),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: i64, values: &[f64]) -> (WindowKey, OpenWindow) {
        let key = WindowKey {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: "pm25".into(),
            start,
        };
        let mut w = OpenWindow {
            values: HashMap::new(),
            messages: HashMap::new(),
            unit: "µg/m³".into(),
            partition: 0,
            min_offset: 0,
        };
        for (i, v) in values.iter().enumerate() {
            w.values.insert(start + i as i64 * 1000, *v);
        }
        (key, w)
    }

    #[test]
    fn a_run_spans_windows_and_a_new_value_ends_it() {
        let mut runs = Runs::default();
        let got: Vec<i64> = [
            window(0, &[1.0, 999.9, 999.9]),
            window(60_000, &[999.9, 999.9]),
            window(120_000, &[999.9, 12.0]),
        ]
        .iter()
        .flat_map(|w| runs.follow(std::slice::from_ref(w)))
        .map(|r| r.run)
        .collect();
        assert_eq!(got, vec![2, 4, 1]);
    }
}
