//! The API's description and its enforcement, from one table: each route is added to the router
//! with an [`Op`] that names who may call it, the parameters it takes and what it answers.
//! The router is built from those ops, so a route cannot exist without its entry in
//! `/api/v1/openapi.json` (OpenAPI 3.1); and each op's [`guard`] enforces what its entry says
//! (the token's role, no unknown parameter) before the handler runs. The role matrix test and
//! schemathesis read the document back against the running server.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use axum::Router;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use crate::auth::{authorize, bearer, Permission};
use crate::error::ApiFailure;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl Verb {
    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Patch => MethodFilter::PATCH,
            Verb::Delete => MethodFilter::DELETE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Anyone, no token.
    Open,
    /// `Authorization: Bearer <token>` whose role has the permission.
    Token(Permission),
    /// `?token=` (a browser cannot set headers on a websocket) whose role has the permission.
    SocketToken(Permission),
}

impl Access {
    fn permission(self) -> Option<Permission> {
        match self {
            Access::Open => None,
            Access::Token(p) | Access::SocketToken(p) => Some(p),
        }
    }
}

/// What a parameter's value may be.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Text,
    /// 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
    DeviceId,
    /// RFC 3339 with an offset, or epoch milliseconds.
    Time,
    Int {
        min: i64,
        max: i64,
    },
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these.
    ListOf(&'static [&'static str]),
    /// `south,west,north,east` in degrees.
    Bbox,
    /// A row limit: 1 to `api.query_limit`.
    Limit,
    Bool,
}

impl Kind {
    fn schema(self, query_limit: usize) -> Value {
        match self {
            Kind::Text => json!({"type": "string"}),
            Kind::DeviceId => json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}),
            Kind::Time => json!({"type": "string", "pattern": TIME_PATTERN,
                "examples": ["2026-12-01T08:00:00+07:00", "1796086800000"]}),
            Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Kind::OneOf(values) => json!({"type": "string", "enum": values}),
            // As the server reads it: split at commas, each trimmed, empty ones dropped.
            Kind::ListOf(values) => json!({"type": "string",
                "pattern": format!(r"^(\s*,)*\s*({0})\s*(,(\s*({0}))?\s*)*$", values.join("|"))}),
            Kind::Bbox => json!({"type": "string",
                "pattern": format!("^{0},{0},{0},{0}$", NUMBER_PATTERN),
                "examples": ["12.0,107.5,13.5,109.5"]}),
            Kind::Bool => json!({"type": "string", "enum": ["true", "false"]}),
            Kind::Limit => json!({"type": "integer", "minimum": 1, "maximum": query_limit}),
        }
    }
}

/// What `parse_param_ms` reads: epoch milliseconds, or RFC 3339 with an offset.
pub const TIME_PATTERN: &str = r"^([0-9]{1,13}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$";
/// A decimal number as Rust reads one, surrounding spaces allowed.
const NUMBER_PATTERN: &str = r"\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*";

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub in_path: bool,
    pub required: bool,
    pub kind: Kind,
    pub doc: &'static str,
}

impl Param {
    pub const fn query(name: &'static str, kind: Kind, doc: &'static str) -> Param {
        Param {
            name,
            in_path: false,
            required: false,
            kind,
            doc,
        }
    }

    pub const fn path(name: &'static str, kind: Kind, doc: &'static str) -> Param {
        Param {
            name,
            in_path: true,
            required: true,
            kind,
            doc,
        }
    }

    pub const fn required(self) -> Param {
        Param {
            required: true,
            ..self
        }
    }
}

/// What a route answers when it succeeds.
#[derive(Clone, Copy)]
pub enum Reply {
    Json(fn() -> Value),
    /// JSON, or CSV with `format=csv` or `Accept: text/csv`.
    JsonOrCsv(fn() -> Value),
    Html,
    Prometheus,
    /// Switches to the websocket protocol.
    Socket,
    /// No body.
    Empty,
    /// A file of the dashboard: a script, a style sheet or GeoJSON.
    Asset,
}

/// One route: its method and path, who may call it, what it takes and what it answers.
#[derive(Clone)]
pub struct Op {
    verb: Verb,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    access: Access,
    params: Vec<Param>,
    body: Option<(fn() -> Value, bool)>,
    replies: Vec<(u16, Reply)>,
    errors: Vec<u16>,
}

impl Op {
    fn new(verb: Verb, path: &'static str, id: &'static str, summary: &'static str) -> Op {
        Op {
            verb,
            path,
            id,
            summary,
            access: Access::Open,
            params: Vec::new(),
            body: None,
            replies: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn get(path: &'static str, id: &'static str, summary: &'static str) -> Op {
        Op::new(Verb::Get, path, id, summary)
    }
    pub fn post(path: &'static str, id: &'static str, summary: &'static str) -> Op {
        Op::new(Verb::Post, path, id, summary)
    }
    pub fn patch(path: &'static str, id: &'static str, summary: &'static str) -> Op {
        Op::new(Verb::Patch, path, id, summary)
    }
    pub fn delete(path: &'static str, id: &'static str, summary: &'static str) -> Op {
        Op::new(Verb::Delete, path, id, summary)
    }

    pub fn token(mut self, permission: Permission) -> Op {
        self.access = Access::Token(permission);
        self
    }

    pub fn socket(mut self, permission: Permission) -> Op {
        self.access = Access::SocketToken(permission);
        self.params.push(Param::query(
            "token",
            Kind::Text,
            "the bearer token (browsers cannot set headers on a websocket)",
        ));
        self.replies.push((101, Reply::Socket));
        self.errors.push(426);
        self
    }

    pub fn params(mut self, params: &[Param]) -> Op {
        self.params.extend_from_slice(params);
        self
    }

    /// A JSON request body of this schema, `required` or not.
    pub fn body(mut self, schema: fn() -> Value, required: bool) -> Op {
        self.body = Some((schema, required));
        self
    }

    pub fn reply(mut self, status: u16, reply: Reply) -> Op {
        self.replies.push((status, reply));
        self
    }

    pub fn errors(mut self, statuses: &[u16]) -> Op {
        self.errors.extend_from_slice(statuses);
        self
    }

    /// Whether unknown query parameters are refused: on every route of the API and the open
    /// data, not on the service's own pages.
    fn strict(&self) -> bool {
        self.path.starts_with("/api/") || self.path.starts_with("/open/")
    }

    fn query_names(&self) -> Vec<&'static str> {
        self.params
            .iter()
            .filter(|p| !p.in_path)
            .map(|p| p.name)
            .collect()
    }

    fn tag(&self) -> &'static str {
        let under = |prefixes: &[&str]| prefixes.iter().any(|p| self.path.starts_with(p));
        if under(&["/open/"]) {
            "open data"
        } else if under(&["/api/v1/devices", "/api/v1/map"]) {
            "devices"
        } else if under(&["/api/v1/alerts", "/api/v1/rules"]) {
            "alerts"
        } else if under(&[
            "/api/v1/tokens",
            "/api/v1/audit",
            "/api/v1/events",
            "/api/v1/evidence",
            "/api/v1/me",
        ]) {
            "access"
        } else if under(&[
            "/api/v1/readings",
            "/api/v1/aggregates",
            "/api/v1/aqi",
            "/api/v1/exceedances",
            "/api/v1/annual",
            "/api/v1/fiware",
            "/api/v1/forecast",
            "/api/v1/traffic",
        ]) {
            "history"
        } else if under(&["/api/v1/ws"]) {
            "live"
        } else {
            "service"
        }
    }

    /// Every status the route may answer with an error, with the ones every route of its kind
    /// shares.
    fn error_statuses(&self) -> Vec<u16> {
        let mut all = self.errors.clone();
        if self.strict() || self.body.is_some() {
            all.push(400);
        }
        if self.access.permission().is_some() {
            all.extend([401, 403]);
        }
        if self.path.contains('{') {
            all.push(404);
        }
        if self.path.starts_with("/api/") {
            all.push(503);
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    fn document(&self, query_limit: usize) -> Value {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(self.id));
        op.insert("summary".into(), json!(self.summary));
        op.insert("tags".into(), json!([self.tag()]));
        match self.access {
            Access::Open => {
                op.insert("security".into(), json!([]));
                op.insert("x-roles".into(), json!([]));
            }
            Access::Token(p) | Access::SocketToken(p) => {
                let scheme = match self.access {
                    Access::SocketToken(_) => "query_token",
                    _ => "bearer",
                };
                let roles: Vec<&str> = p.roles().iter().map(|r| r.as_str()).collect();
                op.insert("security".into(), json!([{ scheme: [] }]));
                op.insert(
                    "description".into(),
                    json!(format!("Roles: {}.", roles.join(", "))),
                );
                op.insert("x-roles".into(), json!(roles));
            }
        }
        let params: Vec<Value> = self
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": if p.in_path { "path" } else { "query" },
                    "required": p.required,
                    "description": p.doc,
                    "schema": p.kind.schema(query_limit),
                })
            })
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if let Some((schema, required)) = self.body {
            op.insert(
                "requestBody".into(),
                json!({"required": required,
                    "content": {"application/json": {"schema": schema()}}}),
            );
        }
        let mut responses = Map::new();
        for (status, reply) in &self.replies {
            let content = match reply {
                Reply::Json(schema) => json!({"application/json": {"schema": schema()}}),
                Reply::JsonOrCsv(schema) => json!({
                    "application/json": {"schema": schema()},
                    "text/csv": {"schema": {"type": "string"}},
                }),
                Reply::Html => json!({"text/html": {"schema": {"type": "string"}}}),
                Reply::Prometheus => json!({"text/plain": {"schema": {"type": "string"}}}),
                Reply::Asset => json!({
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                    "application/geo+json": {"schema": {"type": "object"}},
                }),
                Reply::Socket | Reply::Empty => {
                    let description = match reply {
                        Reply::Socket => "switches to the websocket protocol",
                        _ => reason(*status),
                    };
                    responses.insert(status.to_string(), json!({ "description": description }));
                    continue;
                }
            };
            responses.insert(
                status.to_string(),
                json!({"description": reason(*status), "content": content}),
            );
        }
        for status in self.error_statuses() {
            responses.insert(
                status.to_string(),
                json!({"description": reason(status),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        Value::Object(op)
    }
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// The OpenAPI 3.1 document of `ops`; `query_limit`: the most rows a query may ask for.
pub fn document(ops: &[Op], query_limit: usize) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for op in ops {
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.verb.name()] = op.document(query_limit);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "IOC telemetry API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Intelligent Operations Center's API: devices, history, alerts, \
                the live websocket and open data. Each operation's `x-roles` lists the roles \
                whose tokens may call it (an empty list: no token needed). Errors are \
                `{\"error\": code, \"message\": text}`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query_token": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "problems": {"type": "array", "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        }},
                    },
                },
            },
        },
    })
}

/// The router under construction and the ops it was built from.
pub struct Routes {
    router: Router<AppState>,
    ops: Vec<Op>,
    state: AppState,
}

impl Routes {
    pub fn new(state: AppState) -> Routes {
        Routes {
            router: Router::new(),
            ops: Vec::new(),
            state,
        }
    }

    /// Adds `handler` at `op`'s method and path, behind `op`'s [`guard`].
    pub fn add<H, T>(mut self, op: Op, handler: H) -> Routes
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let check = Arc::new(Check {
            path: op.path,
            access: op.access,
            strict: op.strict(),
            query: op.query_names(),
        });
        let route = axum::routing::on(op.verb.filter(), handler).route_layer(
            axum::middleware::from_fn_with_state((self.state.clone(), check), guard),
        );
        self.router = self.router.route(op.path, route);
        self.ops.push(op);
        self
    }

    /// The router, with `GET /api/v1/openapi.json` describing every route (itself included).
    pub fn finish(mut self) -> Router<AppState> {
        self.ops.push(
            Op::get(
                "/api/v1/openapi.json",
                "openapi",
                "This document: every route, who may call it, what it takes and answers",
            )
            .reply(200, Reply::Json(|| json!({"type": "object"}))),
        );
        let doc = Arc::new(document(&self.ops, self.state.config.query_limit).to_string());
        let serve = move || {
            let doc = doc.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    doc.to_string(),
                )
            }
        };
        let op = self.ops.pop().expect("just pushed");
        self.add(op, serve).router
    }
}

/// What [`guard`] enforces for one route.
#[derive(Debug)]
struct Check {
    path: &'static str,
    access: Access,
    strict: bool,
    query: Vec<&'static str>,
}

/// Refuses a request its route's entry does not allow, before the handler runs: a missing or
/// unknown token (401), a role without the permission (403), a query parameter the route does
/// not take (400: a typo would otherwise be silently ignored).
async fn guard(
    State((state, check)): State<(AppState, Arc<Check>)>,
    request: Request,
    next: Next,
) -> Response {
    let query = match Query::<HashMap<String, String>>::try_from_uri(request.uri()) {
        Ok(Query(q)) => q,
        Err(e) => return bad(e.body_text()).into_response(),
    };
    let given = match check.access {
        Access::Open => None,
        Access::Token(p) => Some((bearer(request.headers()), p)),
        Access::SocketToken(p) => Some((query.get("token").map(String::as_str), p)),
    };
    if let Some((token, permission)) = given {
        if let Err(refused) = authorize(&state, token, permission) {
            return refused.into_response();
        }
    }
    if check.strict {
        if let Some(k) = query.keys().find(|k| !check.query.contains(&k.as_str())) {
            let takes = if check.query.is_empty() {
                "no parameters".to_string()
            } else {
                check.query.join(", ")
            };
            return bad(format!(
                "unknown parameter {k:?}: {} takes {takes}",
                check.path
            ))
            .into_response();
        }
    }
    next.run(request).await
}

fn bad(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Turns an error answer that is not JSON (the framework's own: a path that does not decode, a
/// method the route does not take, a websocket route called without the upgrade) into the
/// API's `{"error","message"}`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        s if s.is_server_error() => "unavailable",
        _ => "error",
    };
    let message = if text.is_empty() || status.is_server_error() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = json!({"error": code, "message": message}).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The shapes of the answers, as JSON Schema. Each names the fields every answer has; answers
/// may carry more.
pub mod schema {
    use serde_json::{json, Value};

    /// An object whose `required` fields have these schemas.
    pub fn object(fields: &[(&str, Value)]) -> Value {
        let required: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(name, schema)| (name.to_string(), schema.clone()))
            .collect();
        json!({"type": "object", "required": required, "properties": properties})
    }

    /// `{name: [item...]}`.
    pub fn list(name: &str, item: Value) -> Value {
        object(&[(name, array(item))])
    }

    /// `[item...]`.
    pub fn array(item: Value) -> Value {
        json!({"type": "array", "items": item})
    }

    pub fn string() -> Value {
        json!({"type": "string"})
    }
    pub fn number() -> Value {
        json!({"type": "number"})
    }
    pub fn integer() -> Value {
        json!({"type": "integer"})
    }
    pub fn boolean() -> Value {
        json!({"type": "boolean"})
    }
    pub fn nullable(kind: &str) -> Value {
        json!({"type": [kind, "null"]})
    }
    pub fn any_object() -> Value {
        json!({"type": "object"})
    }

    pub fn device() -> Value {
        object(&[
            ("device_id", string()),
            ("kind", string()),
            ("name", string()),
            ("lat", number()),
            ("lon", number()),
            ("expected_interval_s", number()),
            ("status", string()),
            ("registered_at", string()),
            ("grade", string()),
            ("expected_metrics", array(string())),
            ("online", boolean()),
        ])
    }

    pub fn reading() -> Value {
        object(&[
            ("device_id", string()),
            ("channel", string()),
            ("ts", string()),
            ("metric", string()),
            ("value", number()),
            ("unit", string()),
            ("quality", string()),
        ])
    }

    pub fn aggregate() -> Value {
        object(&[
            ("device_id", string()),
            ("channel", string()),
            ("metric", string()),
            ("resolution", string()),
            ("window_start", string()),
            ("window_end", string()),
            ("count", integer()),
            ("min", number()),
            ("max", number()),
            ("mean", number()),
            ("unit", string()),
        ])
    }

    /// `points=N`: per series, buckets of min, max and mean.
    pub fn series() -> Value {
        let bucket = object(&[
            ("t", string()),
            ("min", number()),
            ("max", number()),
            ("mean", number()),
            ("count", integer()),
        ]);
        let series = object(&[
            ("device_id", string()),
            ("channel", string()),
            ("metric", string()),
            ("unit", string()),
            ("points", array(bucket)),
        ]);
        object(&[
            ("series", array(series)),
            ("bucket_ms", integer()),
            ("truncated", boolean()),
        ])
    }

    pub fn readings() -> Value {
        json!({"oneOf": [list("readings", reading()), series()]})
    }

    pub fn aggregates() -> Value {
        json!({"oneOf": [list("aggregates", aggregate()), series()]})
    }

    pub fn aqi() -> Value {
        object(&[
            ("device_id", string()),
            ("window_start", string()),
            ("window_end", string()),
            ("resolution", string()),
            ("aqi", nullable("integer")),
            ("dominant", nullable("string")),
            ("grade", string()),
        ])
    }

    /// One record of `/api/v1/forecast`.
    pub fn forecast() -> Value {
        object(&[
            ("device_id", string()),
            ("origin", string()),
            ("target", string()),
            ("horizon_h", integer()),
            ("pm25", number()),
            ("pm25_low", number()),
            ("pm25_high", number()),
            ("aqi", nullable("integer")),
            ("day_pm25", nullable("number")),
            ("day_pm25_limit", nullable("number")),
            ("grade", string()),
        ])
    }

    /// A traffic counter's window of `/api/v1/traffic`.
    pub fn traffic() -> Value {
        object(&[
            ("record", string()),
            ("device_id", string()),
            ("resolution", string()),
            ("window_start", string()),
            ("window_end", string()),
            ("road_segment", nullable("string")),
            ("lanes", integer()),
            ("vehicles", integer()),
            ("flow_vph", nullable("number")),
            ("speed_kmh", nullable("number")),
            ("occupancy_pct", nullable("number")),
            ("free_flow_speed_kmh", nullable("number")),
            ("capture", nullable("number")),
            ("level", nullable("string")),
            ("version", integer()),
        ])
    }

    /// A camera's count of one violation type in one hour, of `/api/v1/traffic`.
    pub fn violations() -> Value {
        object(&[
            ("record", string()),
            ("device_id", string()),
            ("window_start", string()),
            ("window_end", string()),
            ("violation", string()),
            ("count", integer()),
            ("version", integer()),
        ])
    }

    /// One plate pseudonym's violations, of `/api/v1/traffic/repeats`.
    pub fn repeat() -> Value {
        object(&[
            ("plate_pseudonym", string()),
            ("violations", integer()),
            (
                "by_type",
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
            ),
            ("cameras", array(string())),
            ("first_at", string()),
            ("last_at", string()),
        ])
    }

    /// One record of `/api/v1/quality`.
    pub fn quality() -> Value {
        let score = || nullable("number");
        object(&[
            ("resolution", string()),
            ("window_start", string()),
            ("window_end", string()),
            (
                "scores",
                object(&[
                    ("correct", score()),
                    ("complete", score()),
                    ("clean", score()),
                    ("live", score()),
                ]),
            ),
            (
                "counts",
                object(&[
                    ("expected_values", number()),
                    ("received", integer()),
                    ("good", integer()),
                    ("suspect", integer()),
                    ("bad", integer()),
                    ("stuck", integer()),
                    ("spikes", integer()),
                    (
                        "rejected",
                        json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                    ),
                    ("delay_p50_s", nullable("number")),
                    ("longest_silence_s", number()),
                ]),
            ),
        ])
    }

    pub fn exceedance() -> Value {
        object(&[
            ("device_id", string()),
            ("metric", string()),
            ("regulation", string()),
            ("period", string()),
            ("window_start", string()),
            ("value", number()),
            ("multiple", number()),
            ("status", string()),
        ])
    }

    pub fn alert() -> Value {
        object(&[
            ("alert_id", string()),
            ("rule", string()),
            ("category", string()),
            ("severity", string()),
            ("device_id", string()),
            ("state", string()),
            ("started_at", string()),
            ("fired_at", string()),
            ("resolved_at", nullable("string")),
            ("message", string()),
        ])
    }

    pub fn token() -> Value {
        object(&[
            ("token_id", string()),
            ("name", string()),
            ("role", string()),
            ("issued_at", string()),
        ])
    }

    pub fn audit_entry() -> Value {
        object(&[
            ("at", string()),
            ("by", string()),
            ("role", string()),
            ("action", string()),
            ("target", string()),
        ])
    }

    pub fn event() -> Value {
        object(&[
            ("event_id", string()),
            ("device_id", string()),
            ("ts", string()),
            ("kind", string()),
        ])
    }

    pub fn account() -> Value {
        object(&[
            ("username", string()),
            ("client_id", string()),
            ("topic", string()),
            ("issued_at", string()),
        ])
    }

    pub fn station() -> Value {
        object(&[
            ("device_id", string()),
            ("name", string()),
            ("kind", string()),
            ("lat", number()),
            ("lon", number()),
        ])
    }

    /// The details a registration may give and a change may change (each checked when
    /// present; the answer is 422 naming every field with a problem): `devices::DETAILS`.
    fn details() -> serde_json::Map<String, Value> {
        crate::devices::DETAILS
            .iter()
            .map(|d| (d.field.to_string(), (d.schema)()))
            .collect()
    }

    /// A device registration: what `POST /api/v1/devices` checks.
    pub fn registration() -> Value {
        let mut properties = details();
        properties.insert(
            "device_id".into(),
            json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}),
        );
        properties.insert(
            "kind".into(),
            json!({"type": "string", "enum": ioc_contract::DEVICE_KINDS}),
        );
        properties.insert(
            "external_ids".into(),
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
        );
        properties.insert("decoder".into(), string());
        properties.insert("vendor_profile".into(), string());
        json!({"type": "object", "required": ["device_id", "kind", "name", "lat", "lon"],
            "properties": properties})
    }

    /// What `PATCH /api/v1/devices/{id}` may change.
    pub fn device_changes() -> Value {
        json!({"type": "object", "minProperties": 1, "properties": details(),
            "additionalProperties": false})
    }

    pub fn comment() -> Value {
        json!({"type": "object", "properties": {"comment": {"type": "string", "maxLength": 2000}}})
    }

    pub fn token_request() -> Value {
        json!({"type": "object", "required": ["role", "name"], "properties": {
            "role": {"type": "string", "enum": ioc_contract::ROLES},
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Op {
        Op::get("/api/v1/devices/{id}", "getDevice", "One device")
            .token(Permission::ManageDevices)
            .params(&[
                Param::path("id", Kind::DeviceId, "the device"),
                Param::query("bbox", Kind::Bbox, "an area"),
            ])
            .reply(200, Reply::Json(schema::device))
            .errors(&[409])
    }

    #[test]
    fn an_entry_states_its_roles_parameters_and_every_status_it_may_answer() {
        let doc = document(&[op()], 100);
        let entry = &doc["paths"]["/api/v1/devices/{id}"]["get"];
        assert_eq!(entry["x-roles"], json!(["admin", "installer"]));
        assert_eq!(entry["security"], json!([{"bearer": []}]));
        let statuses: Vec<&String> = entry["responses"].as_object().unwrap().keys().collect();
        assert_eq!(
            statuses,
            ["200", "400", "401", "403", "404", "409", "503"],
            "{entry}"
        );
        assert_eq!(entry["parameters"][0]["in"], "path");
        assert_eq!(entry["parameters"][0]["required"], true);
        assert_eq!(entry["parameters"][1]["required"], false);
        assert_eq!(op().query_names(), ["bbox"]);
    }

    #[test]
    fn an_open_route_says_it_needs_no_token_and_a_socket_takes_its_token_in_the_query() {
        let open = Op::get("/open/v1/stations", "stations", "Stations")
            .reply(
                200,
                Reply::JsonOrCsv(|| schema::list("stations", schema::station())),
            )
            .errors(&[429]);
        let socket = Op::get("/api/v1/ws", "ws", "Live").socket(Permission::ReadTelemetry);
        let doc = document(&[open, socket], 100);
        let open = &doc["paths"]["/open/v1/stations"]["get"];
        assert_eq!(open["x-roles"], json!([]));
        assert_eq!(open["security"], json!([]));
        assert!(open["responses"]["200"]["content"]["text/csv"].is_object());
        assert!(open["responses"]["401"].is_null());
        let socket = &doc["paths"]["/api/v1/ws"]["get"];
        assert_eq!(socket["security"], json!([{"query_token": []}]));
        assert_eq!(socket["parameters"][0]["name"], "token");
        assert!(socket["responses"]["101"].is_object());
        assert!(socket["responses"]["426"].is_object());
        assert_eq!(socket["x-roles"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn list_parameters_accept_only_their_values() {
        let Value::String(pattern) =
            Kind::ListOf(&["firing", "resolved"]).schema(100)["pattern"].clone()
        else {
            panic!("a pattern");
        };
        assert_eq!(
            pattern,
            r"^(\s*,)*\s*(firing|resolved)\s*(,(\s*(firing|resolved))?\s*)*$"
        );
        assert_eq!(Kind::Limit.schema(100)["maximum"], 100);
    }

    #[tokio::test]
    async fn framework_errors_become_the_apis_json_errors() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: bad path").into_response();
        let r = json_errors(plain).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": "bad_request", "message": "Invalid URL: bad path"})
        );
        let empty = StatusCode::METHOD_NOT_ALLOWED.into_response();
        let body = axum::body::to_bytes(json_errors(empty).await.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "method_not_allowed");
        assert_eq!(v["message"], "Method Not Allowed");
        let ok = json_errors((StatusCode::OK, "fine").into_response()).await;
        assert!(ok.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }
}
