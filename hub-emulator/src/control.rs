//! The control endpoint (HTTP, loopback by default): fault injection and traffic counters for
//! tests and benchmarks. Not part of IoT Hub.
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /health` | `ok` |
//! | `GET /counters` | device traffic counters as JSON ([`CounterSnapshot`](crate::state::CounterSnapshot)) |
//! | `POST /counters/reset` | all counters to zero |
//! | `GET /connections` | ids of the connected devices, as a JSON array |
//! | `POST /drop` | close every device connection; `{"dropped": n}` |
//! | `POST /drop/{deviceId}` | close one device's connection; `{"dropped": 0 or 1}` |
//! | `POST /refuse?for=30s` | refuse CONNECTs (CONNACK 3, server unavailable) for a duration; `for=0s` ends it |
//! | `POST /delay?twin_responses=500ms` | delay every twin response; `0s` ends it |
//! | `POST /throttle?ops_per_sec=5` | change the twin operation rate; `off` = unlimited |
//! | `GET /faults` | the current refuse/delay/throttle settings |
//! | `POST /inject/{deviceId}/desired?version=N` | publish the raw request body (any bytes: not JSON, too deep, …) on `$iothub/twin/PATCH/properties/desired/?$version=N` to the device's live connection, twin untouched; 202, 404 unknown device, 409 not connected, 413 body over an MQTT packet |
//!
//! Durations use humantime syntax (`250ms`, `5s`, `1m`).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::state::{CloseReason, SharedState};

/// The control endpoint's routes.
pub fn router(hub: SharedState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/counters", get(counters))
        .route("/counters/reset", post(reset_counters))
        .route("/connections", get(connections))
        .route("/drop", post(drop_all))
        .route("/drop/{device_id}", post(drop_one))
        .route("/refuse", post(refuse))
        .route("/delay", post(delay))
        .route("/throttle", post(throttle))
        .route("/faults", get(faults))
        .route("/inject/{device_id}/desired", post(inject_desired))
        .with_state(hub)
}

async fn counters(State(hub): State<SharedState>) -> Response {
    Json(hub.counters.snapshot()).into_response()
}

async fn reset_counters(State(hub): State<SharedState>) -> StatusCode {
    hub.counters.reset();
    StatusCode::NO_CONTENT
}

async fn connections(State(hub): State<SharedState>) -> Response {
    Json(hub.connected_devices()).into_response()
}

async fn drop_all(State(hub): State<SharedState>) -> Response {
    let n = hub.drop_connections(None, CloseReason::Dropped);
    Json(json!({ "dropped": n })).into_response()
}

async fn drop_one(State(hub): State<SharedState>, Path(device_id): Path<String>) -> Response {
    if hub.identity(&device_id).is_none() {
        return bad(
            StatusCode::NOT_FOUND,
            &format!("device {device_id:?} is not registered"),
        );
    }
    let n = hub.drop_connections(Some(&device_id), CloseReason::Dropped);
    Json(json!({ "dropped": n })).into_response()
}

#[derive(Debug, Deserialize)]
struct RefuseQuery {
    #[serde(rename = "for")]
    duration: String,
}

async fn refuse(State(hub): State<SharedState>, Query(q): Query<RefuseQuery>) -> Response {
    let d = match parse_duration(&q.duration) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    hub.set_faults(|f| f.refuse_until = (!d.is_zero()).then(|| Instant::now() + d));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
struct DelayQuery {
    twin_responses: String,
}

async fn delay(State(hub): State<SharedState>, Query(q): Query<DelayQuery>) -> Response {
    let d = match parse_duration(&q.twin_responses) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    hub.set_faults(|f| f.twin_response_delay = d);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
struct ThrottleQuery {
    ops_per_sec: String,
}

async fn throttle(State(hub): State<SharedState>, Query(q): Query<ThrottleQuery>) -> Response {
    let rate = if q.ops_per_sec == "off" {
        None
    } else {
        match q.ops_per_sec.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Some(r),
            _ => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "ops_per_sec {:?}: expected a positive number or \"off\"",
                        q.ops_per_sec
                    ),
                );
            }
        }
    };
    hub.set_twin_ops_per_sec(rate);
    StatusCode::NO_CONTENT.into_response()
}

async fn faults(State(hub): State<SharedState>) -> Response {
    let f = hub.faults();
    let now = Instant::now();
    let refuse_left = f
        .refuse_until
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
    Json(json!({
        "refuse_connections_for_ms": refuse_left.as_millis(),
        "twin_response_delay_ms": f.twin_response_delay.as_millis(),
        "twin_ops_per_sec": hub.twin_ops_per_sec(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct InjectQuery {
    version: u64,
}

/// Room left in an MQTT packet for the desired topic and headers.
const MAX_INJECTED_BODY: usize = crate::mqtt::session::MAX_PACKET_SIZE - 1024;

async fn inject_desired(
    State(hub): State<SharedState>,
    Path(device_id): Path<String>,
    Query(q): Query<InjectQuery>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_INJECTED_BODY {
        return bad(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} bytes do not fit an MQTT packet (at most {MAX_INJECTED_BODY})",
                body.len()
            ),
        );
    }
    match hub.inject_desired(&device_id, q.version, body) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => bad(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &e.to_string(),
        ),
    }
}

fn parse_duration(s: &str) -> Result<Duration, Box<Response>> {
    humantime::parse_duration(s).map_err(|e| {
        Box::new(bad(
            StatusCode::BAD_REQUEST,
            &format!("duration {s:?}: {e}"),
        ))
    })
}

fn bad(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Hub, HubSettings};

    #[tokio::test(start_paused = true)]
    async fn refusal_ends_by_itself_after_its_duration() {
        let hub = Hub::new(HubSettings::default()).unwrap();
        let q = |d: &str| {
            Query(RefuseQuery {
                duration: d.to_owned(),
            })
        };
        let resp = refuse(State(hub.clone()), q("30s")).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(hub.refusing_connections());
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(hub.refusing_connections());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!hub.refusing_connections());
        // A new refusal can be ended early.
        refuse(State(hub.clone()), q("1h")).await;
        assert!(hub.refusing_connections());
        refuse(State(hub.clone()), q("0s")).await;
        assert!(!hub.refusing_connections());
    }
}
