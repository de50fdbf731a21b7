//! Alert rules (`[[stream.rules]]`): a plain SQL query that DataFusion runs over the stream's
//! named inputs, each result row one firing instance of the rule, keyed by the rule, the row's
//! `device_id` and `channel` (empty where it has none) and the rule's `labels`; the row's
//! numeric `value` is what the alert reports.
//!
//! The inputs are the history records themselves (`ioc_history::Record`: one definition of a
//! row, its Arrow schema and codec), so a rule reads the columns the API and the tables have:
//! `aggregates_1m`, `aggregates_5m`, `aggregates_1h`, `aggregates_1d` (`AggregateRow`),
//! `aqi_1h`, `aqi_1d` (`AqiRow`), `exceedances` (`ExceedanceRow`), `forecast` (`ForecastRow`,
//! with the origin hour as its window: `window_start` an hour before `origin`, `window_end`
//! the origin), `traffic_5m`, `traffic_1h` (`TrafficRow`: a traffic counter's flow, speed,
//! occupancy and congestion level), and `devices` (the registry: `device_id`, `kind`, `status`, `grade`,
//! `commune`, `expected_interval_s`).
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
use ioc_history::{AggregateRow, AqiRow, ExceedanceRow, ForecastRow, Record, TrafficRow};

/// The registry as a rule reads it.
pub fn devices_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("grade", DataType::Utf8, false),
        Field::new("commune", DataType::Utf8, true),
        Field::new("expected_interval_s", DataType::Float64, false),
        // When this process last received a reading of it (epoch ms), and the seconds since
        // (counted from the process's start at most, so a restart raises nothing at once).
        Field::new("last_seen", DataType::Int64, true),
        Field::new("silent_s", DataType::Float64, false),
    ]))
}

/// The `devices` input: `devices` with when this process last received a reading of each
/// (`last_seen`), and the seconds since, counted from `started_at` at most (so the stream's
/// own restart makes no device look silent).
pub fn devices_batch(
    devices: &[Arc<ioc_contract::Device>],
    last_seen: &std::collections::HashMap<String, i64>,
    started_at: i64,
    now: i64,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    let text = |f: &dyn Fn(&ioc_contract::Device) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(devices.iter().map(|d| f(d))))
    };
    let seen: Vec<Option<i64>> = devices
        .iter()
        .map(|d| last_seen.get(&d.device_id).copied())
        .collect();
    RecordBatch::try_new(
        devices_schema(),
        vec![
            text(&|d| d.device_id.clone()),
            text(&|d| d.kind.clone()),
            text(&|d| d.status.as_str().to_string()),
            text(&|d| d.grade().as_str().to_string()),
            Arc::new(StringArray::from_iter(
                devices.iter().map(|d| d.commune.clone()),
            )),
            Arc::new(Float64Array::from_iter_values(
                devices.iter().map(|d| d.expected_interval_s),
            )),
            Arc::new(Int64Array::from_iter(seen.iter().copied())),
            Arc::new(Float64Array::from_iter_values(seen.iter().map(|s| {
                (now - s.unwrap_or(started_at).max(started_at)).max(0) as f64 / 1000.0
            }))),
        ],
    )
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
        ("forecast", forecast_schema()),
        ("traffic_5m", TrafficRow::arrow_schema()),
        ("traffic_1h", TrafficRow::arrow_schema()),
        ("runs", runs_schema()),
        ("devices", devices_schema()),
    ]
}

/// Runs of one value (`stuck`): per series, at the end of each 1-minute window, how many
/// readings in a row have had the same value.
/// The `forecast` input: the forecast records, and their origin hour as the window a rule is
/// evaluated in.
pub fn forecast_schema() -> SchemaRef {
    let mut fields: Vec<Field> = ForecastRow::arrow_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("window_start", DataType::Int64, false));
    fields.push(Field::new("window_end", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// The `forecast` input of `rows`.
pub fn forecast_batch(
    rows: &[ForecastRow],
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::Int64Array;
    let batch = ForecastRow::to_batch(rows)?;
    let mut columns = batch.columns().to_vec();
    let origins = || rows.iter().map(|r| r.origin);
    columns.push(Arc::new(Int64Array::from_iter_values(
        origins().map(|o| o - 3_600_000),
    )));
    columns.push(Arc::new(Int64Array::from_iter_values(origins())));
    RecordBatch::try_new(forecast_schema(), columns)
}

pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("window_start", DataType::Int64, false),
        Field::new("window_end", DataType::Int64, false),
        Field::new("last_value", DataType::Float64, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("run", DataType::Int64, false),
    ]))
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
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instance {
    pub device_id: String,
    pub channel: String,
    /// The rule's labels, in their order, as text.
    pub labels: Vec<String>,
    pub value: f64,
    /// Every column of the row as text for people (numbers to one decimal), for the message.
    pub columns: Vec<(String, String)>,
}

impl Instance {
    /// A column's text, if the row has it.
    pub fn column(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `device_id/channel` and each label (the key of the instance within its rule).
    pub fn key(&self) -> String {
        instance_key(&self.device_id, &self.channel, &self.labels)
    }
}

pub fn instance_key(device_id: &str, channel: &str, labels: &[String]) -> String {
    let mut key = format!("{device_id}/{channel}");
    for l in labels {
        key.push('/');
        key.push_str(l);
    }
    key
}

/// The inputs whose rows come in windows: each rule is driven by exactly one of them, and
/// evaluated once per window of it (`devices` alone: once per check of the fleet).
pub const WINDOWED: [&str; 11] = [
    "aggregates_1m",
    "aggregates_5m",
    "aggregates_1h",
    "aggregates_1d",
    "aqi_1h",
    "aqi_1d",
    "exceedances",
    "forecast",
    "traffic_5m",
    "traffic_1h",
    "runs",
];

/// A rule that passed [`check`], with the input that drives it.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub config: RuleConfig,
    /// One of [`WINDOWED`], or `devices`.
    pub input: &'static str,
    pub timing: crate::lifecycle::Timing,
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
    compile(rules).await.err().unwrap_or_default()
}

/// The rules ready to run, or every problem found in them, each with its path.
pub async fn compile(rules: &[RuleConfig]) -> Result<Vec<Compiled>, Vec<RuleProblem>> {
    let ctx = match context(Vec::new()) {
        Ok(ctx) => ctx,
        Err(e) => {
            return Err(vec![RuleProblem {
                path: "stream.rules".into(),
                message: format!("the inputs could not be set up: {e}"),
            }])
        }
    };
    let mut problems = Vec::new();
    let mut compiled = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut input: Option<&'static str> = None;
        let queries = [
            ("sql", Some(&rule.sql)),
            ("clear_sql", rule.clear_sql.as_ref()),
        ];
        for (field, sql) in queries {
            let Some(sql) = sql else { continue };
            let path = format!("stream.rules[{i}] ({}).{field}", rule.name);
            let schema = match ctx.sql_with_options(sql, options()).await {
                Ok(df) => {
                    let read = tables_read(df.logical_plan());
                    let windowed: Vec<&'static str> = WINDOWED
                        .into_iter()
                        .filter(|t| read.iter().any(|r| r == t))
                        .collect();
                    match (windowed.as_slice(), field) {
                        ([], _) => input = input.or(Some("devices")),
                        ([one], "sql") => input = Some(one),
                        ([one], _) if input.is_none_or(|i| i == *one || i == "devices") => {}
                        ([one], _) => problems.push(RuleProblem {
                            path: path.clone(),
                            message: format!(
                                "it reads {one}, but the rule's sql reads {}: a clear query reads the input its rule does",
                                input.unwrap_or_default()
                            ),
                        }),
                        (many, _) => problems.push(RuleProblem {
                            path: path.clone(),
                            message: format!(
                                "it reads {}: a rule is evaluated window by window of one input (and may join devices)",
                                many.join(", ")
                            ),
                        }),
                    }
                    df.schema().as_arrow().clone()
                }
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
            // A clear query names instances; only the rule's own query reports a value.
            match column("value") {
                Some(t) if t.is_numeric() => {}
                Some(other) => missing(format!("its value column is {other}, not a number")),
                None if field == "clear_sql" => {}
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
        if let Some(input) = input {
            compiled.push(Compiled {
                config: rule.clone(),
                input,
                timing: crate::lifecycle::Timing {
                    for_ms: rule.for_.map_or(0, |d| d.as_millis() as i64),
                    keep_firing_for_ms: rule.keep_firing_for.map_or(0, |d| d.as_millis() as i64),
                    has_clear: rule.clear_sql.is_some(),
                },
            });
        }
    }
    if problems.is_empty() {
        Ok(compiled)
    } else {
        Err(problems)
    }
}

/// The tables a plan scans, subqueries included.
fn tables_read(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let mut read = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            read.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    read
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
    run(ctx, rule, &rule.sql).await
}

/// The instances one of `rule`'s queries (`sql` or `clear_sql`) finds.
pub async fn run(
    ctx: &SessionContext,
    rule: &RuleConfig,
    sql: &str,
) -> Result<Vec<Instance>, DataFusionError> {
    let batches = ctx
        .sql_with_options(sql, options())
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
        // A clear query may have no value (every row then names an instance, value NaN).
        let value = match batch.column_by_name("value") {
            Some(v) => cast(v, &DataType::Float64)?,
            None if sql != rule.sql => {
                Arc::new(Float64Array::from(vec![f64::NAN; batch.num_rows()]))
            }
            None => {
                return Err(DataFusionError::Plan(format!(
                    "rule {}: no value column",
                    rule.name
                )))
            }
        };
        // Every column as text for the message: numbers to one decimal.
        let shown: Vec<(String, StringArray)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .filter_map(|(f, c)| {
                let c = if f.data_type().is_floating() {
                    let c = cast(c, &DataType::Float64).ok()?;
                    let c = c.as_any().downcast_ref::<Float64Array>()?.clone();
                    Arc::new(StringArray::from_iter(
                        c.iter().map(|v| v.map(|v| format!("{:.1}", v))),
                    )) as datafusion::arrow::array::ArrayRef
                } else {
                    cast(c, &DataType::Utf8).ok()?
                };
                Some((
                    f.name().clone(),
                    c.as_any().downcast_ref::<StringArray>()?.clone(),
                ))
            })
            .collect();
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
                columns: shown
                    .iter()
                    .filter(|(_, a)| !a.is_null(i))
                    .map(|(n, a)| (n.clone(), a.value(i).to_string()))
                    .collect(),
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
        RuleConfig::new(name, "air", "major", sql)
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
            problems[6].message.contains("\"dominant\""),
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
                columns: vec![
                    ("device_id".into(), "aq-1".into()),
                    ("value".into(), "210".into()),
                    ("dominant".into(), "pm25".into()),
                ],
            }]
        );
        assert_eq!(got[0].key(), "aq-1//pm25");
        // Another input is empty, not an error.
        let none = evaluate(&ctx, &rule("q", "SELECT device_id, value FROM exceedances"))
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
