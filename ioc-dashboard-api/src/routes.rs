//! The router: every route and the resource module that answers it, plus the open routes
//! (`/`, `/healthz`, `/metrics`).

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::not_found;
use crate::AppState;
use crate::{access, accounts, alerts, commissioning, devices, history, open_data, replay, socket};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/devices",
            get(devices::list_devices).post(devices::register_device),
        )
        .route(
            "/api/v1/devices/{id}",
            get(devices::get_device).patch(devices::update_device),
        )
        .route("/api/v1/devices/{id}/replay", post(replay::replay))
        .route(
            "/api/v1/devices/{id}/credentials",
            post(accounts::rotate).delete(accounts::delete),
        )
        .route(
            "/api/v1/devices/{id}/commissioning",
            get(commissioning::commissioning),
        )
        .route("/api/v1/devices/{id}/live", get(socket::device_live))
        .route("/api/v1/map", get(devices::map))
        .route("/api/v1/readings", get(history::readings))
        .route("/api/v1/aggregates", get(history::aggregates))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/{id}", get(alerts::get_one))
        .route("/api/v1/alerts/{id}/ack", post(alerts::acknowledge))
        .route("/api/v1/alerts/{id}/resolve", post(alerts::resolve))
        .route("/api/v1/rules", get(alerts::rules))
        .route("/api/v1/rules/reload", post(alerts::reload_rules))
        .route("/api/v1/aqi", get(history::aqi))
        .route("/api/v1/exceedances", get(history::exceedances))
        .route("/api/v1/annual", get(history::annual))
        .route("/api/v1/ws", get(socket::websocket))
        .route(
            "/api/v1/tokens",
            get(access::list_tokens).post(access::issue_token),
        )
        .route("/api/v1/tokens/{id}", delete(access::revoke_token))
        .route("/api/v1/audit", get(access::audit))
        .route("/api/v1/events", get(access::events))
        .route("/api/v1/evidence", get(access::evidence))
        .route("/open/v1/stations", get(open_data::stations))
        .route("/open/v1/aggregates", get(open_data::aggregates))
        .route("/open/v1/aqi", get(open_data::aqi))
        .fallback(not_found)
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
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
