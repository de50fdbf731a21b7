//! The websocket routes: the live feed (`/api/v1/ws`) and one device's commissioning feed
//! (`/api/v1/devices/{id}/live`); each upgrades to a [`crate::ws::session`].

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;

use ioc_contract::sha256_hex;
use serde_json::json;

use crate::auth::{authorize, still_accepted, Permission};
use crate::commissioning;
use crate::error::{not_found_device, ApiResult};
use crate::live::{Filter, StreamName};
use crate::ws::{session, ClientFrame, OutFrame, Setup};
use crate::AppState;

/// Checks the token in `?token=` (browsers cannot set headers on a websocket) and returns the
/// check to repeat during the session, and the name the caps count the token by.
fn authorize_socket(
    state: &AppState,
    q: &HashMap<String, String>,
) -> ApiResult<(impl Fn() -> bool + Send + 'static, String)> {
    let token = q.get("token").map(String::as_str);
    authorize(state, token, Permission::ReadTelemetry)?;
    let token = token.unwrap_or_default();
    Ok((still_accepted(state, token), sha256_hex(token)))
}

/// `GET /api/v1/ws?token=`: the live feed (the protocol is [`crate::ws`]'s).
pub(crate) async fn websocket(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let (token_live, key) = authorize_socket(&state, &q)?;
    Ok(sized(upgrade).on_upgrade(move |socket| {
        serve_socket(socket, state, key, Vec::new(), Vec::new(), token_live)
    }))
}

/// `GET /api/v1/devices/{id}/live?token=`: one device's websocket for an installer. It sends
/// the commissioning checklist first, then subscribes the device's `device` (what ingest made
/// of each message: while the device is commissioning or in maintenance), `readings` and
/// `alerts` streams.
pub(crate) async fn device_live(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let (token_live, key) = authorize_socket(&state, &q)?;
    let Some(device) = state.registry.get(&id) else {
        return Err(not_found_device(&id));
    };
    let checklist = commissioning::current(&state, &device);
    let mut first = vec![json!({"stream": "checklist", "data": checklist}).to_string()];
    if !device.status.is_tapped() {
        first.push(
            json!({"op": "notice", "message": format!(
                "device {id} is {}: ingest shows what it makes of each message only while a device is commissioning or in maintenance (PATCH its status)",
                device.status.as_str()
            )})
            .to_string(),
        );
    }
    let subscriptions = [StreamName::Device, StreamName::Readings, StreamName::Alerts]
        .into_iter()
        .map(|s| (s, Filter::devices([id.clone()])))
        .collect();
    Ok(sized(upgrade).on_upgrade(move |socket| {
        serve_socket(socket, state, key, first, subscriptions, token_live)
    }))
}

/// Client messages are small requests. tungstenite zeroes its whole read buffer before every
/// read attempt, and a session's socket is polled each time the session wakes (each broadcast
/// message): with the 128 KiB default that memset was 62 % of the API's CPU at 1 000 clients.
fn sized(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(4096)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
}

async fn serve_socket(
    socket: WebSocket,
    state: AppState,
    token_key: String,
    first: Vec<String>,
    subscriptions: Vec<(StreamName, Filter)>,
    token_live: impl Fn() -> bool,
) {
    let (sink, stream) = socket.split();
    let mut out = Box::pin(sink.with(|frame: OutFrame| async move {
        Ok::<_, axum::Error>(match frame {
            OutFrame::Text(text) => Message::Text(text),
            OutFrame::Ping => Message::Ping(Default::default()),
            OutFrame::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        })
    }));
    let limits = state.config.ws.clone();
    let admission = match state.ws_caps.admit(&token_key, &limits) {
        Ok(a) => a,
        Err((code, reason)) => {
            state.metrics.ws_refused.inc();
            let _ = out
                .send(OutFrame::Text(
                    json!({"op": "closed", "reason": reason}).to_string().into(),
                ))
                .await;
            let _ = out.send(OutFrame::Close(code, reason)).await;
            return;
        }
    };
    let incoming = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Text(t)) => Some(ClientFrame::Text(t.to_string())),
            Ok(Message::Binary(_)) => Some(ClientFrame::Binary),
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(ClientFrame::Alive),
            Ok(Message::Close(_)) | Err(_) => Some(ClientFrame::Close),
        }
    });
    state.metrics.ws_clients.inc();
    let setup = Setup {
        hub: state.live.clone(),
        metrics: state.metrics.clone(),
        limits,
        admission,
        first,
        subscriptions,
        token_live,
    };
    session(out, Box::pin(incoming), setup).await;
    state.metrics.ws_clients.dec();
}
