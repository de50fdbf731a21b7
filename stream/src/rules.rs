//! Alert rules (`[[stream.rules]]`): a plain SQL query that DataFusion runs over the stream's
//! named inputs, each result row one firing instance of the rule, keyed by the rule, the row's
//! `device_id` and `channel` (empty where it has none) and the rule's `labels`; the row's
//! numeric `value` is what the alert reports.
//!
//! The inputs are the history records themselves (`ioc_history::Record`: one definition of a
//! row, its Arrow schema and codec), so a rule reads the columns the API and the tables have:
//! `aggregates_1m`, `aggregates_5m`, `aggregates_1h`, `aggregates_1d` (`AggregateRow`),
//! `aqi_1h`, `aqi_1d` (`AqiRow`), `exceedances` (`ExceedanceRow`), and `devices` (the
//! registry: `device_id`, `kind`, `status`, `grade`, `commune`, `expected_interval_s`).
//!
//! [`check`] plans every rule against empty inputs: a query that does not parse, names an
//! unknown input or column, is not a query (DDL and DML are refused), or lacks `device_id`, a
//! numeric `value` or one of its labels is refused with the rule, the field and what is wrong.
//! [`evaluate`] runs one rule's query over real inputs. (Not wired into the readings loop yet:
//! the lifecycle, the single writer of each instance and notifications come next.)

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use ioc_config::RuleConfig;
use ioc_history::{AggregateRow, AqiRow, ExceedanceRow, Record};

/// The registry as a rule reads it.
pub fn devices_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("grade", DataType::Utf8, false),
        Field::new("commune", DataType::Utf8, true),
        Field::new("expected_interval_s", DataType::Float64, false),
    ]))
}

/// Every input a rule may read, by table name.
pub fn inputs() -> Vec<(&'static str, SchemaRef)> {
    vec![
        ("aggregates_1m", AggregateRow::arrow_schema()),
        ("aggregates_5m", AggregateRow::arrow_schema()),
        ("aggregates_1h", AggregateRow::arrow_schema()),
        ("aggregates_1d", AggregateRow::arrow_schema()),
        ("aqi_1h", AqiRow::arrow_schema()),
        ("aqi_1d", AqiRow::arrow_schema()),
        ("exceedances", ExceedanceRow::arrow_schema()),
        ("devices", devices_schema()),
    ]
}

/// A problem with one rule: where (`stream.rules[i] (name).field`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// One firing instance: a result row of a rule's query.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub device_id: String,
    pub channel: String,
    /// The rule's labels, in their order, as text.
    pub labels: Vec<String>,
    pub value: f64,
}

/// A session with `tables` registered as the named inputs (an input not given is empty).
pub fn context(tables: Vec<(&str, RecordBatch)>) -> Result<SessionContext, DataFusionError> {
    let ctx = SessionContext::new();
    for (name, schema) in inputs() {
        let batches: Vec<RecordBatch> = tables
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, b)| b.clone())
            .collect();
        ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![batches])?))?;
    }
    Ok(ctx)
}

fn options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Plans every rule's queries against empty inputs; every problem found, each with its path.
pub async fn check(rules: &[RuleConfig]) -> Vec<RuleProblem> {
    let ctx = match context(Vec::new()) {
        Ok(ctx) => ctx,
        Err(e) => {
            return vec![RuleProblem {
                path: "stream.rules".into(),
                message: format!("the inputs could not be set up: {e}"),
            }]
        }
    };
    let mut problems = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let queries = [
            ("sql", Some(&rule.sql)),
            ("clear_sql", rule.clear_sql.as_ref()),
        ];
        for (field, sql) in queries {
            let Some(sql) = sql else { continue };
            let path = format!("stream.rules[{i}] ({}).{field}", rule.name);
            let schema = match ctx.sql_with_options(sql, options()).await {
                Ok(df) => df.schema().as_arrow().clone(),
                Err(e) => {
                    problems.push(RuleProblem {
                        path,
                        message: first_line(&e),
                    });
                    continue;
                }
            };
            let column = |name: &str| {
                schema
                    .field_with_name(name)
                    .ok()
                    .map(|f| f.data_type().clone())
            };
            let mut missing = |message: String| {
                problems.push(RuleProblem {
                    path: path.clone(),
                    message,
                })
            };
            match column("device_id") {
                Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {}
                Some(other) => missing(format!("its device_id column is {other}, not text")),
                None => missing(
                    "its result has no device_id column: each row is one device's instance".into(),
                ),
            }
            match column("value") {
                Some(t) if t.is_numeric() => {}
                Some(other) => missing(format!("its value column is {other}, not a number")),
                None => missing("its result has no value column (the number the alert reports; name one `AS value`)".into()),
            }
            for label in &rule.labels {
                if column(label).is_none() {
                    missing(format!(
                        "its result has no {label:?} column, which the rule names as a label"
                    ));
                }
            }
        }
    }
    problems
}

/// DataFusion's message, without the backtrace-like detail it may append.
fn first_line(e: &DataFusionError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The instances `rule`'s query finds in the inputs of `ctx`.
pub async fn evaluate(
    ctx: &SessionContext,
    rule: &RuleConfig,
) -> Result<Vec<Instance>, DataFusionError> {
    let batches = ctx
        .sql_with_options(&rule.sql, options())
        .await?
        .collect()
        .await?;
    let mut out = Vec::new();
    for batch in batches {
        let text = |name: &str| -> Result<Option<StringArray>, DataFusionError> {
            let Some(col) = batch.column_by_name(name) else {
                return Ok(None);
            };
            let col = cast(col, &DataType::Utf8)?;
            Ok(col.as_any().downcast_ref::<StringArray>().cloned())
        };
        let device = text("device_id")?.ok_or_else(|| {
            DataFusionError::Plan(format!("rule {}: no device_id column", rule.name))
        })?;
        let channel = text("channel")?;
        let value = batch
            .column_by_name("value")
            .ok_or_else(|| DataFusionError::Plan(format!("rule {}: no value column", rule.name)))?;
        let value = cast(value, &DataType::Float64)?;
        let value = value
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| {
                DataFusionError::Plan(format!("rule {}: value is not a number", rule.name))
            })?
            .clone();
        let labels: Vec<Option<StringArray>> = rule
            .labels
            .iter()
            .map(|l| text(l))
            .collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            // A row without a device or a value names no instance.
            if device.is_null(i) || value.is_null(i) {
                continue;
            }
            let at = |a: &Option<StringArray>| {
                a.as_ref()
                    .filter(|a| !a.is_null(i))
                    .map(|a| a.value(i).to_string())
                    .unwrap_or_default()
            };
            out.push(Instance {
                device_id: device.value(i).to_string(),
                channel: at(&channel),
                labels: labels.iter().map(at).collect(),
                value: value.value(i),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.device_id, &a.channel, &a.labels).cmp(&(&b.device_id, &b.channel, &b.labels))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, sql: &str) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            category: "air".into(),
            severity: "major".into(),
            sql: sql.into(),
            clear_sql: None,
            for_: None,
            keep_firing_for: None,
            renotify: None,
            labels: Vec::new(),
            message: String::new(),
            recipients: Vec::new(),
        }
    }

    fn aqi(device: &str, start: i64, aqi: Option<u32>) -> AqiRow {
        AqiRow {
            device_id: device.into(),
            resolution: "1h".into(),
            window_start: start,
            window_end: start + 3_600_000,
            aqi,
            dominant: "pm25".into(),
            pm25: aqi,
            pm10: None,
            o3_1h: None,
            o3_8h: None,
            no2: None,
            so2: None,
            co: None,
            nowcast_pm25: None,
            nowcast_pm10: None,
            valid_hours: None,
            grade: "reference".into(),
            low_capture: String::new(),
            version: 1,
        }
    }

    #[tokio::test]
    async fn a_rule_is_refused_with_what_is_wrong_and_where() {
        let mut labelled = rule("poor", "SELECT device_id, aqi AS value FROM aqi_1h");
        labelled.labels = vec!["dominant".into()];
        labelled.clear_sql = Some("SELECT device_id FROM aqi_1h".into());
        let rules = [
            rule(
                "ok",
                "SELECT device_id, aqi AS value FROM aqi_1h WHERE aqi >= 101",
            ),
            rule("typo", "SELEC device_id FROM aqi_1h"),
            rule("table", "SELECT device_id, 1 AS value FROM aqi_2h"),
            rule("column", "SELECT device_id, aqii AS value FROM aqi_1h"),
            rule("text", "SELECT device_id, dominant AS value FROM aqi_1h"),
            rule("ddl", "DROP TABLE aqi_1h"),
            labelled,
        ];
        let problems = check(&rules).await;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "stream.rules[1] (typo).sql",
                "stream.rules[2] (table).sql",
                "stream.rules[3] (column).sql",
                "stream.rules[4] (text).sql",
                "stream.rules[5] (ddl).sql",
                "stream.rules[6] (poor).sql",
                "stream.rules[6] (poor).clear_sql",
                "stream.rules[6] (poor).clear_sql",
            ],
            "{problems:#?}"
        );
        assert!(problems[1].message.contains("aqi_2h"), "{}", problems[1]);
        assert!(problems[2].message.contains("aqii"), "{}", problems[2]);
        assert!(
            problems[3].message.contains("not a number"),
            "{}",
            problems[3]
        );
        assert!(
            problems[5].message.contains("\"dominant\""),
            "{}",
            problems[5]
        );
        assert!(
            problems[6].message.contains("no value column"),
            "{}",
            problems[6]
        );
    }

    #[tokio::test]
    async fn each_row_of_the_query_is_one_instance() {
        let rows = [
            aqi("aq-1", 0, Some(120)),
            aqi("aq-2", 0, Some(80)),
            aqi("aq-3", 0, None),
            aqi("aq-1", 3_600_000, Some(210)),
        ];
        let ctx = context(vec![("aqi_1h", AqiRow::to_batch(&rows).unwrap())]).unwrap();
        let mut r = rule(
            "poor",
            "SELECT device_id, max(aqi) AS value, min(dominant) AS dominant FROM aqi_1h \
             WHERE aqi >= 101 GROUP BY device_id",
        );
        r.labels = vec!["dominant".into()];
        let got = evaluate(&ctx, &r).await.unwrap();
        assert_eq!(
            got,
            vec![Instance {
                device_id: "aq-1".into(),
                channel: String::new(),
                labels: vec!["pm25".into()],
                value: 210.0,
            }]
        );
        // Another input is empty, not an error.
        let none = evaluate(&ctx, &rule("q", "SELECT device_id, value FROM exceedances"))
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
