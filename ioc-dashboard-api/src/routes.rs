//! The router: every route, the resource module that answers it, and its [`Op`] (who may call
//! it, what it takes and answers), from which `/api/v1/openapi.json` is generated. The open
//! routes (`/`, `/healthz`, `/metrics`) are here too.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ioc_contract::{DEVICE_KINDS, DEVICE_STATUSES};
use serde_json::json;

use crate::auth::Permission::{
    ActOnAlerts, Administer, ManageDevices, ReadEvents, ReadEvidence, ReadRepeats, ReadTelemetry,
};
use crate::error::not_found;
use crate::openapi::{schema, Kind, Op, Param, Reply, Routes};
use crate::AppState;
use crate::{
    access, accounts, alerts, assets, commissioning, devices, fiware, history, open_data, quality,
    replay, socket, traffic,
};

const ID: Param = Param::path("id", Kind::DeviceId, "the device's id");
const DEVICE_ID: Param = Param::query("device_id", Kind::DeviceId, "one device");
const METRIC: Param = Param::query("metric", Kind::Text, "one metric, e.g. pm25");
const FROM: Param = Param::query(
    "from",
    Kind::Time,
    "start (inclusive): RFC 3339 with an offset, or epoch milliseconds",
);
const TO: Param = Param::query(
    "to",
    Kind::Time,
    "end (exclusive): RFC 3339 with an offset, or epoch milliseconds; default now",
);
const LIMIT: Param = Param::query("limit", Kind::Limit, "at most this many rows");
const COMMUNE: Param = Param::query("commune", Kind::Text, "the devices of one commune or ward");
const BBOX: Param = Param::query(
    "bbox",
    Kind::Bbox,
    "the devices in south,west,north,east (degrees; south < north, west < east)",
);
const FORMAT: Param = Param::query(
    "format",
    Kind::OneOf(&["json", "csv"]),
    "json (default) or csv; `Accept: text/csv` asks for CSV too",
);
const POINTS: Param = Param::query(
    "points",
    Kind::Int {
        min: 1,
        max: history::MAX_POINTS as i64,
    },
    "downsampled: per series at most this many buckets of min, max and mean",
);
const HOURLY_OR_DAILY: Param = Param::query(
    "resolution",
    Kind::OneOf(&["1h", "1d"]),
    "hourly (default) or daily",
);
const ALERT: Param = Param::path("id", Kind::Text, "the alert's id");

const ANY_RESOLUTION: Param = Param::query(
    "resolution",
    Kind::OneOf(&["1m", "5m", "1h", "1d"]),
    "the windows' width (default 1h)",
);

/// The device list's and the map's filters.
const DEVICE_FILTERS: [Param; 5] = [
    Param::query("kind", Kind::OneOf(&DEVICE_KINDS), "one kind"),
    COMMUNE,
    Param::query("status", Kind::OneOf(&DEVICE_STATUSES), "one status"),
    Param::query("online", Kind::Bool, "seen within 3 expected intervals"),
    BBOX,
];

/// What the FIWARE routes take besides the entity type.
const FIWARE_FILTERS: [Param; 7] = [DEVICE_ID, FROM, TO, LIMIT, ANY_RESOLUTION, COMMUNE, BBOX];

/// FIWARE entities in keyValues form: a JSON array.
fn entities() -> serde_json::Value {
    schema::array(schema::object(&[
        ("id", schema::string()),
        ("type", schema::string()),
    ]))
}

fn with_alert() -> serde_json::Value {
    schema::object(&[("alert", schema::alert())])
}

fn pending() -> serde_json::Value {
    schema::object(&[
        ("request_id", schema::string()),
        ("message", schema::string()),
    ])
}

pub fn router(state: AppState) -> Router {
    let history = [DEVICE_ID, METRIC, FROM, TO, LIMIT, COMMUNE, BBOX, FORMAT];
    let routes = Routes::new(state.clone())
        .add(
            Op::get("/", "index", "The dashboard").reply(200, Reply::Html),
            assets::index,
        )
        .add(
            Op::get("/assets/{file}", "asset", "The dashboard's scripts, styles and map outline")
                .params(&[Param::path(
                    "file",
                    Kind::Text,
                    "app.js, i18n.js, app.css, province.geojson, leaflet.js, leaflet.css, uPlot.iife.min.js, uPlot.min.css",
                )])
                .reply(200, Reply::Asset)
                .errors(&[404]),
            assets::asset,
        )
        .add(
            Op::get("/api/v1/me", "me", "Who the token is: its name, role and default view")
                .token(ReadTelemetry)
                .reply(
                    200,
                    Reply::Json(|| {
                        schema::object(&[
                            ("name", schema::string()),
                            ("role", schema::string()),
                            ("view", schema::string()),
                        ])
                    }),
                ),
            access::me,
        )
        .add(
            Op::get(
                "/healthz",
                "health",
                "Whether the API is up, and its registry's size",
            )
            .reply(
                200,
                Reply::Json(|| schema::object(&[("status", schema::string())])),
            ),
            healthz,
        )
        .add(
            Op::get("/metrics", "metrics", "Prometheus metrics").reply(200, Reply::Prometheus),
            metrics,
        )
        // Devices.
        .add(
            Op::get("/api/v1/devices", "listDevices", "The registered devices")
                .token(ReadTelemetry)
                .params(&DEVICE_FILTERS)
                .reply(
                    200,
                    Reply::Json(|| schema::list("devices", schema::device())),
                ),
            devices::list_devices,
        )
        .add(
            Op::post("/api/v1/devices", "registerDevice", "Register a device")
                .token(ManageDevices)
                .body(schema::registration, true)
                .reply(201, Reply::Json(schema::device))
                .errors(&[409, 422]),
            devices::register_device,
        )
        .add(
            Op::get("/api/v1/devices/{id}", "getDevice", "One device")
                .token(ReadTelemetry)
                .params(&[ID])
                .reply(200, Reply::Json(schema::device)),
            devices::get_device,
        )
        .add(
            Op::patch(
                "/api/v1/devices/{id}",
                "updateDevice",
                "Change a device's details",
            )
            .token(ManageDevices)
            .params(&[ID])
            .body(schema::device_changes, true)
            .reply(200, Reply::Json(schema::device))
            .errors(&[409, 422]),
            devices::update_device,
        )
        .add(
            Op::post(
                "/api/v1/devices/{id}/replay",
                "replayDevice",
                "Process again the dead letters of a device not registered when they came",
            )
            .token(ManageDevices)
            .params(&[ID])
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("device_id", schema::string()),
                        ("messages", schema::integer()),
                        ("readings", schema::integer()),
                    ])
                }),
            ),
            replay::replay,
        )
        .add(
            Op::post(
                "/api/v1/devices/{id}/credentials",
                "rotateCredentials",
                "Give a device a new MQTT password (shown once)",
            )
            .token(ManageDevices)
            .params(&[ID])
            .reply(
                201,
                Reply::Json(|| {
                    schema::object(&[("device_id", schema::string()), ("mqtt", schema::account())])
                }),
            )
            .errors(&[409]),
            accounts::rotate,
        )
        .add(
            Op::delete(
                "/api/v1/devices/{id}/credentials",
                "deleteCredentials",
                "Remove a device's MQTT account",
            )
            .token(ManageDevices)
            .params(&[ID])
            .reply(204, Reply::Empty)
            .errors(&[409]),
            accounts::delete,
        )
        .add(
            Op::get(
                "/api/v1/devices/{id}/commissioning",
                "commissioning",
                "A device's commissioning checklist",
            )
            .token(ReadTelemetry)
            .params(&[ID])
            .reply(200, Reply::Json(schema::any_object)),
            commissioning::commissioning,
        )
        .add(
            Op::get(
                "/api/v1/devices/{id}/limits",
                "deviceLimits",
                "The QCVN limits a station is held to today",
            )
            .token(ReadTelemetry)
            .params(&[ID])
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("device_id", schema::string()),
                        ("regulation", schema::string()),
                        (
                            "limits",
                            schema::array(schema::object(&[
                                ("channel", schema::string()),
                                ("metric", schema::string()),
                                ("period", schema::string()),
                                ("unit", schema::string()),
                                ("limit", schema::any_object()),
                            ])),
                        ),
                    ])
                }),
            ),
            devices::limits,
        )
        .add(
            Op::get(
                "/api/v1/devices/{id}/live",
                "deviceLive",
                "Websocket: a device's checklist, then what ingest makes of its messages",
            )
            .socket(ReadTelemetry)
            .params(&[ID]),
            socket::device_live,
        )
        .add(
            Op::get(
                "/api/v1/map",
                "map",
                "The whole fleet for a map: positions, latest values, hourly AQI, open alerts",
            )
            .token(ReadTelemetry)
            .params(&DEVICE_FILTERS)
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        (
                            "fields",
                            schema::array(schema::string()),
                        ),
                        (
                            "devices",
                            schema::array(json!({"type": "array"})),
                        ),
                    ])
                }),
            ),
            devices::map,
        )
        // History.
        .add(
            Op::get(
                "/api/v1/readings",
                "readings",
                "Raw readings, or downsampled",
            )
            .token(ReadTelemetry)
            .params(&history)
            .params(&[POINTS])
            .reply(200, Reply::JsonOrCsv(schema::readings)),
            history::readings,
        )
        .add(
            Op::get(
                "/api/v1/aggregates",
                "aggregates",
                "Windows of a resolution, or downsampled",
            )
            .token(ReadTelemetry)
            .params(&history)
            .params(&[
                POINTS,
                Param::query(
                    "resolution",
                    Kind::OneOf(&["1m", "5m", "1h", "1d"]),
                    "the windows' width (default 1m)",
                ),
            ])
            .reply(200, Reply::JsonOrCsv(schema::aggregates)),
            history::aggregates,
        )
        .add(
            Op::get("/api/v1/aqi", "aqi", "Hourly or daily VN_AQI")
                .token(ReadTelemetry)
                .params(&[
                    DEVICE_ID,
                    FROM,
                    TO,
                    LIMIT,
                    HOURLY_OR_DAILY,
                    COMMUNE,
                    BBOX,
                    FORMAT,
                ])
                .reply(200, Reply::JsonOrCsv(|| schema::list("aqi", schema::aqi()))),
            history::aqi,
        )
        .add(
            Op::get(
                "/api/v1/forecast",
                "forecast",
                "A station's PM2.5 forecast, 1 to 6 hours ahead",
            )
            .token(ReadTelemetry)
            .params(&[
                Param::query("device_id", Kind::DeviceId, "the air-quality station").required(),
                Param::query("from", Kind::Time, "origins from (default: the latest forecast only)"),
                Param::query("to", Kind::Time, "origins before"),
                FORMAT,
            ])
            .reply(
                200,
                Reply::JsonOrCsv(|| schema::list("forecasts", schema::forecast())),
            )
            .errors(&[404]),
            history::forecast,
        )
        .add(
            Op::get(
                "/api/v1/traffic",
                "traffic",
                "Road segments' flow, speed, occupancy and congestion; cameras' violations per type and hour",
            )
            .token(ReadTelemetry)
            .params(&[
                Param::query(
                    "device_id",
                    Kind::DeviceId,
                    "one traffic counter or camera (default: every one of the area or province)",
                ),
                FROM,
                TO,
                LIMIT,
                Param::query(
                    "resolution",
                    Kind::OneOf(&["5m", "1h"]),
                    "the counters' windows: 5 minutes or an hour (default 1h); cameras count per hour",
                ),
                COMMUNE,
                BBOX,
            ])
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("traffic", schema::array(schema::traffic())),
                        ("violations", schema::array(schema::violations())),
                        ("truncated", schema::boolean()),
                    ])
                }),
            )
            .errors(&[404]),
            traffic::traffic,
        )
        .add(
            Op::get(
                "/api/v1/traffic/repeats",
                "trafficRepeats",
                "Violations per plate pseudonym: who offends again (personal data: each read is audited)",
            )
            .token(ReadRepeats)
            .params(&[
                Param::query("device_id", Kind::DeviceId, "one camera (default: every camera)"),
                Param::query("from", Kind::Time, "start (inclusive; default: 7 days before to)"),
                TO,
                Param::query(
                    "min_violations",
                    Kind::Int { min: 1, max: 10_000 },
                    "only pseudonyms with at least this many violations (default 2)",
                ),
            ])
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("from", schema::string()),
                        ("to", schema::string()),
                        ("min_violations", schema::integer()),
                        ("repeats", schema::array(schema::repeat())),
                    ])
                }),
            )
            .errors(&[404]),
            traffic::repeat_offenders,
        )
        .add(
            Op::get(
                "/api/v1/aqi/bands",
                "aqiBands",
                "VN_AQI bands: values, names, colours and health advice",
            )
            .token(ReadTelemetry)
            .reply(
                200,
                Reply::Json(|| {
                    let text = || {
                        schema::object(&[("vi", schema::string()), ("en", schema::string())])
                    };
                    schema::object(&[
                        ("source", schema::string()),
                        (
                            "bands",
                            schema::array(schema::object(&[
                                ("level", schema::integer()),
                                ("from", schema::integer()),
                                ("to", schema::integer()),
                                ("vi", schema::string()),
                                ("en", schema::string()),
                                ("colour", schema::string()),
                                ("advice", schema::object(&[
                                    ("general", text()),
                                    ("sensitive", text()),
                                ])),
                            ])),
                        ),
                    ])
                }),
            ),
            history::aqi_bands,
        )
        .add(
            Op::get("/api/v1/exceedances", "exceedances", "QCVN exceedances")
                .token(ReadTelemetry)
                .params(&history)
                .params(&[Param::query("regulation", Kind::Text, "one regulation")])
                .reply(
                    200,
                    Reply::JsonOrCsv(|| schema::list("exceedances", schema::exceedance())),
                ),
            history::exceedances,
        )
        .add(
            Op::get(
                "/api/v1/quality",
                "quality",
                "Data quality scores (đúng, đủ, sạch, sống) per hour or day",
            )
            .token(ReadTelemetry)
            .params(&[
                DEVICE_ID,
                Param::query("commune", Kind::Text, "the devices of one commune or ward, rolled up"),
                Param::query("agency", Kind::Text, "the devices of one agency, rolled up"),
                Param::query(
                    "by",
                    Kind::OneOf(&["device", "commune", "agency", "kind"]),
                    "group the records per device (default), commune, agency or kind of device",
                ),
                FROM,
                TO,
                HOURLY_OR_DAILY,
            ])
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("by", schema::string()),
                        ("quality", schema::array(schema::quality())),
                    ])
                }),
            )
            .errors(&[404]),
            quality::quality,
        )
        .add(
            Op::get(
                "/api/v1/annual",
                "annual",
                "A station's calendar-year means against QCVN 05",
            )
            .token(ReadTelemetry)
            .params(&[
                DEVICE_ID.required(),
                Param::query(
                    "year",
                    Kind::Int {
                        min: 2000,
                        max: 2100,
                    },
                    "the calendar year",
                )
                .required(),
            ])
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("device_id", schema::string()),
                        ("year", schema::integer()),
                        ("means", json!({"type": "array"})),
                    ])
                }),
            )
            .errors(&[404]),
            history::annual,
        )
        .add(
            Op::get(
                "/api/v1/fiware",
                "fiware",
                "FIWARE Smart Data Models entities (keyValues): observations per window, devices",
            )
            .token(ReadTelemetry)
            .params(&[
                Param::query("type", Kind::OneOf(&fiware::TYPES), "the entity type").required(),
            ])
            .params(&FIWARE_FILTERS)
            .reply(200, Reply::Json(entities)),
            fiware::api,
        )
        // Alerts and rules.
        .add(
            Op::get("/api/v1/alerts", "listAlerts", "Alerts, newest first")
                .token(ReadTelemetry)
                .params(&[
                    Param::query(
                        "state",
                        Kind::ListOf(&["firing", "acknowledged", "resolved"]),
                        "comma-separated states",
                    ),
                    Param::query(
                        "severity",
                        Kind::ListOf(&ioc_config::RULE_SEVERITIES),
                        "comma-separated severities",
                    ),
                    Param::query(
                        "category",
                        Kind::ListOf(&ioc_config::RULE_CATEGORIES),
                        "comma-separated categories",
                    ),
                    Param::query("rule", Kind::Text, "comma-separated rule names"),
                    DEVICE_ID,
                    Param::query("commune", Kind::Text, "comma-separated communes"),
                    FROM,
                    TO,
                    LIMIT,
                ])
                .reply(200, Reply::Json(|| schema::list("alerts", schema::alert()))),
            alerts::list,
        )
        .add(
            Op::get(
                "/api/v1/alerts/{id}",
                "getAlert",
                "One alert with its transitions and notifications",
            )
            .token(ReadTelemetry)
            .params(&[ALERT])
            .reply(200, Reply::Json(with_alert)),
            alerts::get_one,
        )
        .add(
            Op::post(
                "/api/v1/alerts/{id}/ack",
                "acknowledgeAlert",
                "Acknowledge an alert (mutes its re-notification)",
            )
            .token(ActOnAlerts)
            .params(&[ALERT])
            .body(schema::comment, false)
            .reply(200, Reply::Json(with_alert))
            .reply(202, Reply::Json(pending))
            .errors(&[409]),
            alerts::acknowledge,
        )
        .add(
            Op::post(
                "/api/v1/alerts/{id}/resolve",
                "resolveAlert",
                "Resolve an alert by hand, with a comment saying why",
            )
            .token(ActOnAlerts)
            .params(&[ALERT])
            .body(schema::comment, true)
            .reply(200, Reply::Json(with_alert))
            .reply(202, Reply::Json(pending))
            .errors(&[409]),
            alerts::resolve,
        )
        .add(
            Op::get(
                "/api/v1/rules",
                "listRules",
                "The alert rules in force and their open alerts",
            )
            .token(ReadTelemetry)
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[
                        ("version", schema::string()),
                        ("rules", json!({"type": "array"})),
                    ])
                }),
            ),
            alerts::rules,
        )
        .add(
            Op::post(
                "/api/v1/rules/reload",
                "reloadRules",
                "Reload the rules from configuration",
            )
            .token(Administer)
            .reply(
                200,
                Reply::Json(|| {
                    schema::object(&[("version", schema::string()), ("rules", schema::integer())])
                }),
            )
            .reply(202, Reply::Json(pending))
            .errors(&[422]),
            alerts::reload_rules,
        )
        // Live.
        .add(
            Op::get(
                "/api/v1/ws",
                "websocket",
                "Websocket: snapshots, live streams and resume (README: Live websocket)",
            )
            .socket(ReadTelemetry),
            socket::websocket,
        )
        // Access.
        .add(
            Op::get("/api/v1/tokens", "listTokens", "The tokens in force")
                .token(Administer)
                .reply(200, Reply::Json(|| schema::list("tokens", schema::token()))),
            access::list_tokens,
        )
        .add(
            Op::post(
                "/api/v1/tokens",
                "issueToken",
                "Issue a token (its secret shown once)",
            )
            .token(Administer)
            .body(schema::token_request, true)
            .reply(201, Reply::Json(schema::token))
            .errors(&[422]),
            access::issue_token,
        )
        .add(
            Op::delete("/api/v1/tokens/{id}", "revokeToken", "Revoke a token")
                .token(Administer)
                .params(&[Param::path("id", Kind::Text, "the token's id")])
                .reply(
                    200,
                    Reply::Json(|| schema::object(&[("token_id", schema::string())])),
                ),
            access::revoke_token,
        )
        .add(
            Op::get("/api/v1/audit", "audit", "The audit log, newest first")
                .token(Administer)
                .params(&[
                    DEVICE_ID,
                    Param::query("action", Kind::Text, "one action, e.g. device.registered"),
                    FROM,
                    TO,
                    LIMIT,
                ])
                .reply(
                    200,
                    Reply::Json(|| {
                        schema::object(&[
                            (
                                "entries",
                                schema::array(schema::audit_entry()),
                            ),
                            ("truncated", schema::boolean()),
                        ])
                    }),
                ),
            access::audit,
        )
        .add(
            Op::get(
                "/api/v1/events",
                "events",
                "Camera events with plate pseudonyms (personal data: each read is audited)",
            )
            .token(ReadEvents)
            .params(&[DEVICE_ID, FROM, TO, LIMIT])
            .reply(200, Reply::Json(|| schema::list("events", schema::event()))),
            access::events,
        )
        .add(
            Op::get(
                "/api/v1/evidence",
                "evidence",
                "Camera evidence with plates in the clear (personal data: each read is audited)",
            )
            .token(ReadEvidence)
            .params(&[DEVICE_ID, FROM, TO, LIMIT])
            .reply(
                200,
                Reply::Json(|| schema::list("evidence", schema::event())),
            ),
            access::evidence,
        )
        // Open data: no token.
        .add(
            Op::get(
                "/open/v1/stations",
                "openStations",
                "Open data: the air and wastewater stations",
            )
            .params(&[FORMAT])
            .reply(
                200,
                Reply::JsonOrCsv(|| schema::list("stations", schema::station())),
            )
            .errors(&[404, 429]),
            open_data::stations,
        )
        .add(
            Op::get(
                "/open/v1/aggregates",
                "openAggregates",
                "Open data: the stations' hourly or daily means",
            )
            .params(&[
                DEVICE_ID,
                METRIC,
                FROM,
                TO,
                LIMIT,
                HOURLY_OR_DAILY,
                COMMUNE,
                BBOX,
                FORMAT,
            ])
            .reply(
                200,
                Reply::JsonOrCsv(|| schema::list("aggregates", schema::aggregate())),
            )
            .errors(&[404, 429]),
            open_data::aggregates,
        )
        .add(
            Op::get(
                "/open/v1/aqi",
                "openAqi",
                "Open data: the stations' hourly or daily VN_AQI",
            )
            .params(&[
                DEVICE_ID,
                FROM,
                TO,
                LIMIT,
                HOURLY_OR_DAILY,
                COMMUNE,
                BBOX,
                FORMAT,
            ])
            .reply(200, Reply::JsonOrCsv(|| schema::list("aqi", schema::aqi())))
            .errors(&[404, 429]),
            open_data::aqi,
        )
        .add(
            Op::get(
                "/open/v1/quality",
                "openQuality",
                "Open data: the stations' data quality scores (đúng, đủ, sạch, sống) per hour or day",
            )
            .params(&[DEVICE_ID, FROM, TO, HOURLY_OR_DAILY, COMMUNE, BBOX, FORMAT])
            .reply(
                200,
                Reply::JsonOrCsv(|| schema::list("quality", schema::quality())),
            )
            .errors(&[404, 429]),
            open_data::quality,
        )
        .add(
            Op::get(
                "/open/v1/fiware",
                "openFiware",
                "Open data: the stations as FIWARE Smart Data Models entities (keyValues)",
            )
            .params(&[
                Param::query("type", Kind::OneOf(&fiware::OPEN_TYPES), "the entity type")
                    .required(),
            ])
            .params(&FIWARE_FILTERS)
            .reply(200, Reply::Json(entities))
            .errors(&[404, 429]),
            fiware::open,
        );
    routes
        .finish()
        .fallback(not_found)
        .layer(axum::middleware::map_response(crate::openapi::json_errors))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "devices": state.registry.len()}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&state.prometheus.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
