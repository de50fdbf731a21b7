//! The built-in alert rules (README, "Alert rules") and the rules in force: every stream and
//! API process derives the same list from the same configuration.

use std::collections::BTreeSet;

use crate::{RuleConfig, StreamConfig};

pub const PM25_RULE: &str = "pm25_1min_mean_above_limit";
pub const AQI_POOR_RULE: &str = "aqi_1h_poor";
pub const AQI_VERY_BAD_RULE: &str = "aqi_1h_very_bad";
pub const QCVN_AIR_RULE: &str = "qcvn05_exceedance";
pub const QCVN_WATER_RULE: &str = "qcvn40_exceedance";
pub const OFFLINE_RULE: &str = "device_offline";
pub const STUCK_RULE: &str = "sensor_stuck";
pub const FORECAST_RULE: &str = "forecast_poor_air";
pub const CONGESTION_RULE: &str = "traffic_jammed";

/// The built-in rules (README, "Alert rules"), from the settings they read.
pub fn builtin(config: &StreamConfig) -> Vec<RuleConfig> {
    // Severity from how far beyond its limit the mean is.
    let by_multiple = "CASE WHEN multiple >= 2 THEN 'critical' WHEN multiple >= 1.5 THEN 'major' \
                       ELSE 'minor' END AS severity";
    let exceedance = |kind: &str| {
        format!(
            "SELECT e.device_id, e.channel, e.metric, e.regulation, e.period, e.value, e.unit, \
             e.limit_high AS \"limit\", e.multiple, {by_multiple} FROM exceedances e \
             JOIN devices d ON d.device_id = e.device_id \
             WHERE e.status = 'exceeded' AND d.kind = '{kind}'"
        )
    };
    let stuck_default = config.stuck_after.get("default").copied().unwrap_or(0);
    let stuck_cases: String = config
        .stuck_after
        .iter()
        .filter(|(m, _)| *m != "default")
        .map(|(m, n)| format!(" WHEN '{}' THEN {n}", m.replace('\'', "''")))
        .collect();
    let stuck_after = if stuck_cases.is_empty() {
        stuck_default.to_string()
    } else {
        format!("CASE metric{stuck_cases} ELSE {stuck_default} END")
    };
    let limit = config.pm25_alert.limit;
    let mut rules = vec![
        RuleConfig {
            message: "PM2.5 1-minute mean {value} {unit} at {device_id} is above the limit of {limit} {unit}".into(),
            ..RuleConfig::new(
                PM25_RULE,
                "air",
                "minor",
                format!(
                    "SELECT device_id, channel, metric, value_mean AS value, unit, {limit:?} AS \"limit\" \
                     FROM aggregates_1m WHERE metric = 'pm25' AND value_mean > {limit:?}"
                ),
            )
        },
        RuleConfig {
            // Clears only below 91, so an hour hovering at 100 or 101 does not flap.
            clear_sql: Some("SELECT device_id FROM aqi_1h WHERE aqi < 91".into()),
            message: "Hourly VN_AQI {value} (Kém or worse) at {device_id}, dominant {dominant}".into(),
            ..RuleConfig::new(
                AQI_POOR_RULE,
                "air",
                "major",
                "SELECT device_id, aqi AS value, dominant, 101 AS \"limit\" FROM aqi_1h WHERE aqi >= 101"
            )
        },
        RuleConfig {
            clear_sql: Some("SELECT device_id FROM aqi_1h WHERE aqi < 181".into()),
            message: "Hourly VN_AQI {value} (Rất xấu or worse) at {device_id}, dominant {dominant}"
                .into(),
            ..RuleConfig::new(
                AQI_VERY_BAD_RULE,
                "air",
                "critical",
                "SELECT device_id, aqi AS value, dominant, 201 AS \"limit\" FROM aqi_1h WHERE aqi >= 201"
            )
        },
        RuleConfig {
            labels: vec!["metric".into(), "regulation".into(), "period".into()],
            message: "{metric} {period} mean {value} {unit} at {device_id} exceeds {regulation} (limit {limit}, {multiple}×)".into(),
            ..RuleConfig::new(QCVN_AIR_RULE, "air", "minor", exceedance("air_quality"))
        },
        RuleConfig {
            labels: vec!["metric".into(), "regulation".into(), "period".into()],
            message: "{metric} {period} mean {value} {unit} at {device_id} exceeds {regulation} (limit {limit}, {multiple}×)".into(),
            ..RuleConfig::new(QCVN_WATER_RULE, "water", "minor", exceedance("wastewater"))
        },
        RuleConfig {
            message: "{device_id} has sent nothing for {value} s (expected every {expected_interval_s} s)".into(),
            ..RuleConfig::new(
                OFFLINE_RULE,
                "device",
                "major",
                format!(
                    "SELECT device_id, silent_s AS value, 's' AS unit, \
                     {n:?} * expected_interval_s AS \"limit\", expected_interval_s FROM devices \
                     WHERE status = 'active' AND silent_s >= {n:?} * expected_interval_s",
                    n = config.offline_after
                ),
            )
        },
        RuleConfig {
            // Clears at a forecast that sees every hour below 91 and the day within its limit.
            clear_sql: Some(
                "SELECT device_id FROM forecast GROUP BY device_id \
                 HAVING MAX(COALESCE(aqi, 0)) < 91 \
                 AND MAX(CASE WHEN day_pm25 > day_pm25_limit THEN 1 ELSE 0 END) = 0"
                    .into(),
            ),
            message: "Forecast for {device_id}: {why}".into(),
            ..RuleConfig::new(
                FORECAST_RULE,
                "air",
                "warning",
                // The value and limit of what fired: the AQI, else the day's mean.
                "SELECT device_id, \
                 CASE WHEN MAX(aqi) >= 101 THEN CAST(MAX(aqi) AS DOUBLE) ELSE MAX(day_pm25) END AS value, \
                 CASE WHEN MAX(aqi) >= 101 THEN 101.0 ELSE MAX(day_pm25_limit) END AS \"limit\", \
                 CASE WHEN MAX(aqi) >= 101 THEN 'VN_AQI' ELSE 'µg/m³' END AS unit, \
                 CASE WHEN MAX(aqi) >= 101 THEN 'VN_AQI up to ' || CAST(MAX(aqi) AS VARCHAR) \
                 || ' (Kém or worse) within 6 hours, PM2.5 up to ' || CAST(MAX(pm25) AS VARCHAR) \
                 || ' µg/m³' ELSE 'the day''s PM2.5 mean ' || CAST(MAX(day_pm25) AS VARCHAR) \
                 || ' µg/m³ above QCVN 05''s ' || CAST(MAX(day_pm25_limit) AS VARCHAR) || ' µg/m³' \
                 END AS why FROM forecast \
                 WHERE aqi >= 101 OR day_pm25 > day_pm25_limit GROUP BY device_id",
            )
        },
        RuleConfig {
            // Once per episode: fires when a counter's 5 minutes are jammed and stays firing
            // through heavy traffic (a jam easing into the rush hour behind it), clearing only
            // at moderate or free; 10 minutes at that before it resolves.
            clear_sql: Some(
                "SELECT device_id FROM traffic_5m WHERE level IN ('free', 'moderate')".into(),
            ),
            keep_firing_for: Some(std::time::Duration::from_secs(600)),
            message: "Traffic jammed on {road_segment} ({device_id}): {why}".into(),
            ..RuleConfig::new(
                CONGESTION_RULE,
                "traffic",
                "warning",
                "SELECT device_id, COALESCE(occupancy_pct, 0.0) AS value, '%' AS unit, \
                 CASE WHEN road_segment = '' THEN 'its road segment' ELSE road_segment END AS road_segment, \
                 CONCAT_WS(', ', \
                   CAST(speed_kmh AS VARCHAR) || ' km/h' \
                   || COALESCE(' against ' || CAST(free_flow_speed_kmh AS VARCHAR) || ' km/h free flow', ''), \
                   'occupancy ' || CAST(occupancy_pct AS VARCHAR) || ' %', \
                   CAST(CAST(flow_vph AS BIGINT) AS VARCHAR) || ' vehicles/h') AS why \
                 FROM traffic_5m WHERE level = 'jammed'",
            )
        },
    ];
    if stuck_default > 0 || !stuck_cases.is_empty() {
        rules.push(RuleConfig {
            labels: vec!["metric".into()],
            message: "{metric} at {device_id} has read {last_value} {unit} {value} times in a row"
                .into(),
            ..RuleConfig::new(
                STUCK_RULE,
                "device",
                "minor",
                format!(
                    "SELECT device_id, channel, metric, run AS value, last_value, unit FROM runs \
                     WHERE {stuck_after} > 0 AND run >= {stuck_after}"
                ),
            )
        });
    }
    rules
}

/// The rules in force: the configured ones (first, so that a problem's `stream.rules[i]` is
/// the configured rule's index), then the built-in ones not turned off nor replaced.
pub fn in_force(config: &StreamConfig) -> Vec<RuleConfig> {
    let configured: BTreeSet<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
    let builtin = builtin(config).into_iter().filter(|r| {
        !configured.contains(r.name.as_str()) && !config.disabled_rules.contains(&r.name)
    });
    config.rules.iter().cloned().chain(builtin).collect()
}

/// Names of the built-in rules.
pub const BUILTIN: [&str; 9] = [
    PM25_RULE,
    AQI_POOR_RULE,
    AQI_VERY_BAD_RULE,
    QCVN_AIR_RULE,
    QCVN_WATER_RULE,
    OFFLINE_RULE,
    STUCK_RULE,
    FORECAST_RULE,
    CONGESTION_RULE,
];

/// A record of the `rules` topic: every stream and API process follows it, so all of them
/// see the same rules, and every change is kept with who made it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RulesRecord {
    /// The rules in force from now on; `version` is [`version_of`] them.
    Version {
        version: String,
        rules: Vec<RuleConfig>,
        /// `config` (a stream's start), `reload` (SIGHUP, a changed file, the API).
        source: String,
        by: String,
        at: i64,
        #[serde(default)]
        request_id: Option<String>,
    },
    /// Someone asks for the rules to be read again (`POST /api/v1/rules/reload`).
    ReloadRequested {
        request_id: String,
        by: String,
        at: i64,
    },
    /// A reload found problems: the rules in force stay.
    Refused {
        #[serde(default)]
        request_id: Option<String>,
        problems: Vec<String>,
        by: String,
        at: i64,
    },
}

/// The identity of a set of rules: the SHA-256 of their JSON, 16 hex digits.
pub fn version_of(rules: &[RuleConfig]) -> String {
    let json = serde_json::to_string(rules).unwrap_or_default();
    ioc_contract::sha256_hex(&json)[..16].to_string()
}

/// What changed between two sets of rules, by name: added, removed, changed.
pub fn changes(
    before: &[RuleConfig],
    after: &[RuleConfig],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let find = |set: &[RuleConfig], name: &str| set.iter().find(|r| r.name == name).cloned();
    let added = after
        .iter()
        .filter(|r| find(before, &r.name).is_none())
        .map(|r| r.name.clone())
        .collect();
    let removed = before
        .iter()
        .filter(|r| find(after, &r.name).is_none())
        .map(|r| r.name.clone())
        .collect();
    let changed = after
        .iter()
        .filter(|r| find(before, &r.name).is_some_and(|b| &b != *r))
        .map(|r| r.name.clone())
        .collect();
    (added, removed, changed)
}
