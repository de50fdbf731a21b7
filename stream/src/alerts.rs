//! The PM2.5 threshold alert: one alert while a device channel's 1-minute PM2.5 mean stays above
//! the limit, cleared by the first window at or below it. Never one alert per window.
//!
//! Windows are evaluated in event-time order per device channel as they close. The state can be
//! rebuilt from the latest stored alert of each device channel: windows at or before that
//! alert's last transition are skipped, so a replay after a crash neither raises a second
//! alert nor clears one early. Windows re-emitted for late readings are not re-evaluated.

use std::collections::HashMap;

use ioc_contract::{Aggregate, Alert, AlertStatus};

pub const PM25_RULE: &str = "pm25_1min_mean_above_limit";

#[derive(Debug, Default)]
struct ChannelState {
    active: Option<Alert>,
    /// Window start of the last raise or clear; windows at or before it are already decided.
    last_transition: i64,
}

#[derive(Debug)]
pub struct Pm25Rule {
    limit: f64,
    state: HashMap<(String, String), ChannelState>,
}

impl Pm25Rule {
    pub fn new(limit: f64) -> Pm25Rule {
        Pm25Rule {
            limit,
            state: HashMap::new(),
        }
    }

    /// Restores the state from the latest stored alert of a device channel.
    pub fn restore(&mut self, alert: Alert) {
        if alert.rule != PM25_RULE {
            return;
        }
        let key = (alert.device_id.clone(), alert.channel.clone());
        let (active, last_transition) = match alert.status {
            AlertStatus::Active => (Some(alert.raised_at), alert.raised_at),
            AlertStatus::Cleared => (None, alert.cleared_at.unwrap_or(alert.raised_at)),
        };
        let state = self.state.entry(key).or_default();
        if last_transition >= state.last_transition {
            state.last_transition = last_transition;
            state.active = active.map(|_| alert);
        }
    }

    /// Evaluates one closed window; returns the alert to publish if its state changed.
    pub fn evaluate(&mut self, agg: &Aggregate, version: u64) -> Option<Alert> {
        if agg.metric != "pm25" {
            return None;
        }
        let state = self
            .state
            .entry((agg.device_id.clone(), agg.channel.clone()))
            .or_default();
        if agg.window_start <= state.last_transition {
            return None;
        }
        let above = agg.mean > self.limit;
        match (&mut state.active, above) {
            (None, true) => {
                let alert = Alert {
                    alert_id: format!(
                        "{PM25_RULE}:{}:{}:{}",
                        agg.device_id, agg.channel, agg.window_start
                    ),
                    rule: PM25_RULE.to_string(),
                    device_id: agg.device_id.clone(),
                    channel: agg.channel.clone(),
                    metric: agg.metric.clone(),
                    status: AlertStatus::Active,
                    raised_at: agg.window_start,
                    cleared_at: None,
                    value: agg.mean,
                    peak: agg.mean,
                    limit: self.limit,
                    unit: agg.unit.clone(),
                    message: format!(
                        "PM2.5 1-minute mean {:.1} {} at {} is above the limit of {} {}",
                        agg.mean, agg.unit, agg.device_id, self.limit, agg.unit
                    ),
                    version,
                };
                state.last_transition = agg.window_start;
                state.active = Some(alert.clone());
                Some(alert)
            }
            (Some(active), true) => {
                // Still above: the same alert holds; remember the peak for when it clears.
                active.peak = active.peak.max(agg.mean);
                None
            }
            (Some(_), false) => {
                let mut alert = state.active.take().expect("matched Some");
                alert.status = AlertStatus::Cleared;
                alert.cleared_at = Some(agg.window_start);
                alert.version = version;
                alert.message = format!(
                    "PM2.5 at {} back to {:.1} {} (limit {}); peak was {:.1}",
                    agg.device_id, agg.mean, agg.unit, self.limit, alert.peak
                );
                state.last_transition = agg.window_start;
                Some(alert)
            }
            (None, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_680_000_000;

    fn window(minute: i64, mean: f64) -> Aggregate {
        Aggregate {
            device_id: "aq-1".into(),
            channel: String::new(),
            metric: "pm25".into(),
            resolution: ioc_contract::Resolution::Minute,
            window_start: T0 + minute * 60_000,
            window_end: T0 + (minute + 1) * 60_000,
            count: 4,
            sum: 4.0 * mean,
            min: mean,
            max: mean,
            mean,
            capture: None,
            unit: "µg/m³".into(),
            version: 1,
        }
    }

    fn run(rule: &mut Pm25Rule, means: &[f64]) -> Vec<(AlertStatus, i64)> {
        means
            .iter()
            .enumerate()
            .filter_map(|(m, mean)| rule.evaluate(&window(m as i64, *mean), m as u64 + 1))
            .map(|a| {
                (
                    a.status,
                    (a.cleared_at.unwrap_or(a.raised_at) - T0) / 60_000,
                )
            })
            .collect()
    }

    #[test]
    fn one_alert_while_the_condition_holds_then_one_clear() {
        let mut rule = Pm25Rule::new(50.0);
        let events = run(&mut rule, &[10.0, 60.0, 70.0, 80.0, 50.0, 40.0, 55.0]);
        assert_eq!(
            events,
            vec![
                (AlertStatus::Active, 1),
                (AlertStatus::Cleared, 4),
                (AlertStatus::Active, 6)
            ]
        );
    }

    #[test]
    fn clear_keeps_the_alert_id_and_reports_the_peak() {
        let mut rule = Pm25Rule::new(50.0);
        let raised = rule.evaluate(&window(0, 60.0), 1).unwrap();
        rule.evaluate(&window(1, 90.0), 2);
        let cleared = rule.evaluate(&window(2, 20.0), 3).unwrap();
        assert_eq!(raised.alert_id, cleared.alert_id);
        assert_eq!(cleared.peak, 90.0);
        assert!(cleared.version > raised.version);
    }

    #[test]
    fn other_metrics_and_channels_are_independent() {
        let mut rule = Pm25Rule::new(50.0);
        let mut pm10 = window(0, 500.0);
        pm10.metric = "pm10".into();
        assert!(rule.evaluate(&pm10, 1).is_none());
        assert!(rule.evaluate(&window(0, 60.0), 1).is_some());
        let mut other = window(0, 60.0);
        other.channel = "north".into();
        assert!(rule.evaluate(&other, 1).is_some());
    }

    #[test]
    fn a_replay_after_restore_neither_duplicates_nor_clears_early() {
        let mut first = Pm25Rule::new(50.0);
        let raised = first.evaluate(&window(3, 60.0), 1).unwrap();
        // Restart: state restored from the stored alert, windows 2..5 replayed.
        let mut rule = Pm25Rule::new(50.0);
        rule.restore(raised.clone());
        assert!(
            rule.evaluate(&window(2, 10.0), 2).is_none(),
            "before the raise: already decided"
        );
        assert!(
            rule.evaluate(&window(3, 60.0), 2).is_none(),
            "the raising window again"
        );
        assert!(rule.evaluate(&window(4, 70.0), 2).is_none());
        let cleared = rule.evaluate(&window(5, 10.0), 3).unwrap();
        assert_eq!(cleared.alert_id, raised.alert_id);
        // And a restored clear suppresses the windows it already covered.
        let mut rule = Pm25Rule::new(50.0);
        rule.restore(cleared);
        assert!(rule.evaluate(&window(4, 70.0), 4).is_none());
        assert!(rule.evaluate(&window(6, 70.0), 4).is_some());
    }
}
