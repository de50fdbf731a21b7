//! Window aggregates computed by DataFusion over an Arrow record batch of good readings.
//!
//! The same query serves windows closing in order (rows from memory) and windows re-emitted
//! for late readings (rows read back from history), so both give exactly what a recomputation
//! from the raw rows gives.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, StringArray, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use ioc_contract::{Aggregate, Resolution, WINDOW_MS};

/// The aggregation, as SQL over the table `closing`. Windows are event-time tumbling windows
/// of `WINDOW_MS`; event times are positive (ingest rejects anything before 2000).
fn query() -> String {
    format!(
        "SELECT device_id, channel, metric, ts - (ts % {WINDOW_MS}) AS window_start, \
                min(unit) AS unit, count(*) AS n, min(value) AS vmin, max(value) AS vmax, avg(value) AS vmean, \
                sum(value) AS vsum \
         FROM closing \
         GROUP BY device_id, channel, metric, ts - (ts % {WINDOW_MS}) \
         ORDER BY device_id, channel, metric, window_start"
    )
}

/// Column builders for the `closing` table: one row per good reading.
/// Strings go straight into Arrow builders (one buffer per column), not one `String` each.
#[derive(Debug, Default)]
pub struct ClosingRows {
    device_id: StringBuilder,
    channel: StringBuilder,
    metric: StringBuilder,
    unit: StringBuilder,
    ts: Vec<i64>,
    value: Vec<f64>,
}

impl ClosingRows {
    pub fn push(
        &mut self,
        device_id: &str,
        channel: &str,
        metric: &str,
        unit: &str,
        ts: i64,
        value: f64,
    ) {
        self.device_id.append_value(device_id);
        self.channel.append_value(channel);
        self.metric.append_value(metric);
        self.unit.append_value(unit);
        self.ts.push(ts);
        self.value.push(value);
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    fn into_batch(mut self) -> Result<RecordBatch, DataFusionError> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("channel", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("unit", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.device_id.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.unit.finish()),
            Arc::new(Int64Array::from(self.ts)),
            Arc::new(Float64Array::from(self.value)),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// Computes count, sum, min, max and mean per (device, channel, metric, 1-minute window) of
/// `rows`, stamping every aggregate with `version` (the caller fills in `capture`).
pub async fn aggregate(rows: ClosingRows, version: u64) -> Result<Vec<Aggregate>, DataFusionError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    ctx.register_batch("closing", rows.into_batch()?)?;
    let batches = ctx.sql(&query()).await?.collect().await?;
    let mut out = Vec::new();
    for batch in batches {
        let strings = |i: usize| -> Result<StringArray, DataFusionError> {
            let array = cast(batch.column(i), &DataType::Utf8)?;
            Ok(array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let ints = |i: usize| -> Result<Int64Array, DataFusionError> {
            let array = cast(batch.column(i), &DataType::Int64)?;
            Ok(array
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64")
                .clone())
        };
        let floats = |i: usize| -> Result<Float64Array, DataFusionError> {
            let array = cast(batch.column(i), &DataType::Float64)?;
            Ok(array
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .clone())
        };
        let (device, channel, metric, start, unit) =
            (strings(0)?, strings(1)?, strings(2)?, ints(3)?, strings(4)?);
        let (n, vmin, vmax, vmean) = (ints(5)?, floats(6)?, floats(7)?, floats(8)?);
        let vsum = floats(9)?;
        for i in 0..batch.num_rows() {
            out.push(Aggregate {
                device_id: device.value(i).to_string(),
                channel: channel.value(i).to_string(),
                metric: metric.value(i).to_string(),
                resolution: Resolution::Minute,
                window_start: start.value(i),
                window_end: start.value(i) + WINDOW_MS,
                count: n.value(i) as u64,
                sum: vsum.value(i),
                min: vmin.value(i),
                max: vmax.value(i),
                mean: vmean.value(i),
                capture: None,
                unit: unit.value(i).to_string(),
                version,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_680_000_000;

    #[tokio::test]
    async fn groups_by_device_channel_metric_and_minute() {
        let mut rows = ClosingRows::default();
        rows.push("a", "", "pm25", "µg/m³", T0 + 1_000, 10.0);
        rows.push("a", "", "pm25", "µg/m³", T0 + 59_000, 20.0);
        rows.push("a", "", "pm25", "µg/m³", T0 + 60_000, 5.0);
        rows.push("a", "outlet", "cod", "mg/L", T0 + 2_000, 80.0);
        rows.push("b", "", "pm25", "µg/m³", T0 + 3_000, 1.0);
        let aggs = aggregate(rows, 7).await.unwrap();
        let summary: Vec<(String, String, String, i64, u64, f64, f64, f64)> = aggs
            .iter()
            .map(|a| {
                (
                    a.device_id.clone(),
                    a.channel.clone(),
                    a.metric.clone(),
                    a.window_start - T0,
                    a.count,
                    a.min,
                    a.max,
                    a.mean,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a".into(), "".into(), "pm25".into(), 0, 2, 10.0, 20.0, 15.0),
                (
                    "a".into(),
                    "".into(),
                    "pm25".into(),
                    60_000,
                    1,
                    5.0,
                    5.0,
                    5.0
                ),
                (
                    "a".into(),
                    "outlet".into(),
                    "cod".into(),
                    0,
                    1,
                    80.0,
                    80.0,
                    80.0
                ),
                ("b".into(), "".into(), "pm25".into(), 0, 1, 1.0, 1.0, 1.0),
            ]
        );
        assert!(aggs
            .iter()
            .all(|a| a.version == 7 && a.window_end == a.window_start + 60_000));
        assert!(aggs
            .iter()
            .all(|a| a.resolution == Resolution::Minute && a.sum == a.mean * a.count as f64));
        assert_eq!(
            aggs.iter().find(|a| a.metric == "cod").unwrap().unit,
            "mg/L"
        );
    }

    #[tokio::test]
    async fn no_rows_no_aggregates() {
        assert!(aggregate(ClosingRows::default(), 1)
            .await
            .unwrap()
            .is_empty());
    }
}
