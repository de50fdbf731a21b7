//! CSV of any list the API answers with (`format=csv` or `Accept: text/csv`): one row per
//! object, a column per field (the identifying ones first, the others in name order), nested
//! values as JSON in their cell.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Columns that lead, in this order, when the rows have them.
const LEADING: [&str; 6] = [
    "device_id",
    "channel",
    "metric",
    "resolution",
    "window_start",
    "ts",
];

/// The rows as CSV (RFC 4180: CRLF line ends, quotes doubled).
pub fn render(rows: &[Value]) -> String {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        if let Value::Object(map) = row {
            for k in map.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    columns.sort_by_key(|c| {
        (
            LEADING.iter().position(|l| l == c).unwrap_or(LEADING.len()),
            c.clone(),
        )
    });
    let mut out = String::new();
    line(&mut out, columns.iter().map(|c| c.as_str().into()));
    for row in rows {
        line(
            &mut out,
            columns.iter().map(|c| match row.get(c) {
                None | Some(Value::Null) => String::new().into(),
                Some(Value::String(s)) => s.as_str().into(),
                Some(other) => other.to_string().into(),
            }),
        );
    }
    out
}

fn line<'a>(out: &mut String, cells: impl Iterator<Item = std::borrow::Cow<'a, str>>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&cell);
        }
    }
    out.push_str("\r\n");
}

/// A CSV answer named `name.csv` for download.
pub fn response(name: &str, rows: &[Value]) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.csv\""),
            ),
        ],
        render(rows),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifying_columns_lead_and_cells_are_quoted_when_they_must_be() {
        let rows = [
            json!({"value": 20.8, "device_id": "aq-1", "unit": "µg/m³", "metric": "pm25", "note": "a, \"b\""}),
            json!({"value": 3, "device_id": "aq-2", "metric": "pm10", "band": {"name": "Tốt"}}),
        ];
        assert_eq!(
            render(&rows),
            "device_id,metric,band,note,unit,value\r\n\
             aq-1,pm25,,\"a, \"\"b\"\"\",µg/m³,20.8\r\n\
             aq-2,pm10,\"{\"\"name\"\":\"\"Tốt\"\"}\",,,3\r\n"
        );
    }
}
