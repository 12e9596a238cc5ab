//! The service-side REST API a back end uses (the subset of IoT Hub's that twinbridge's tests
//! and the demo need):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /twins/{id}` | the twin (`ETag` header = the twin's etag) |
//! | `PATCH /twins/{id}` | merge-patch `tags` and `properties.desired`; `If-Match` → 412 on mismatch (`*` matches any) |
//! | `PUT /twins/{id}` | replace `tags` and `properties.desired` |
//! | `GET /devices` | all device identities |
//! | `PUT /devices/{id}` | register or update a device (keys generated when omitted) |
//! | `GET /devices/{id}` | one device identity |
//! | `POST /devices/query` | `{"query": "SELECT …"}` → JSON array (paged by `x-ms-max-item-count` / `x-ms-continuation`) |
//!
//! `?api-version=…` is accepted and ignored. When the hub has a service key, every request
//! needs `Authorization: SharedAccessSignature sr={host}&sig=…&se=…[&skn=…]` signed with it,
//! else 401. Errors answer `{"Message": "ErrorCode:{code};{message}", "errorCode": code,
//! "message": …}` (plus `position` for a query that does not parse). Service calls do not draw
//! on the device-side twin throttle: the service API is the tests' oracle.
//!
//! Deliberate simplifications: `PUT /devices/{id}` creates or updates without asking for
//! `If-Match: *` on an existing device (IoT Hub answers 409 there); there is no paging of
//! `GET /devices` and no `DELETE`; a wrong method gets axum's plain 405.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::query::Query;
use crate::sas;
use crate::state::{DeviceIdentity, DeviceStatus, HubError, SharedState, now_epoch_secs};

/// Request header with the page size of a query.
pub const MAX_ITEM_COUNT_HEADER: &str = "x-ms-max-item-count";
/// Request and response header carrying the continuation token of a paged query.
pub const CONTINUATION_HEADER: &str = "x-ms-continuation";
/// Response header naming the kind of the query's rows (`twin` or `raw`).
pub const ITEM_TYPE_HEADER: &str = "x-ms-item-type";

/// The service API's routes over `state`.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/twins/{id}", get(get_twin).patch(patch_twin).put(put_twin))
        .route("/devices", get(list_devices))
        .route("/devices/query", post(query))
        .route("/devices/{id}", get(get_device).put(put_device))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// An error answer: status, IoT Hub error code, message and (for queries) the position.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    position: Option<usize>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            position: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match status.as_u16() {
            404 => "DeviceNotFound",
            412 => "PreconditionFailed",
            413 => "RequestEntityTooLarge",
            400 => "ArgumentInvalid",
            _ => "ServerError",
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "Message": format!("ErrorCode:{};{}", self.code, self.message),
            "errorCode": self.code,
            "message": self.message,
        });
        if let Some(p) = self.position {
            body["position"] = json!(p);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Checks the service SAS token when the hub has a service key.
async fn authorize(State(hub): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(key) = hub.service_key() {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = token else {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "IotHubUnauthorizedAccess",
                "missing Authorization header",
            )
            .into_response();
        };
        // The expiry check tolerates the hub's configured clock skew, as for devices.
        let now = now_epoch_secs().saturating_sub(hub.settings().sas_skew.as_secs());
        if let Err(e) = sas::verify_resource(token, hub.hostname(), &[key], now) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "IotHubUnauthorizedAccess",
                e.to_string(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn if_match(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("If-Match is not ASCII"))
        })
        .transpose()
}

/// Parses a JSON body; an empty body reads as `{}`.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))
}

/// A 200 answer with the twin and its etag in an `ETag` header.
fn twin_response(twin: Value) -> Response {
    let etag = twin
        .get("etag")
        .and_then(Value::as_str)
        .and_then(|e| HeaderValue::from_str(&format!("\"{e}\"")).ok());
    let mut resp = axum::Json(twin).into_response();
    if let Some(etag) = etag {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

async fn get_twin(State(hub): State<SharedState>, Path(id): Path<String>) -> ApiResult {
    Ok(twin_response(hub.twin_json(&id)?))
}

async fn patch_twin(
    State(hub): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = json_body(&body)?;
    Ok(twin_response(hub.patch_twin(
        &id,
        &body,
        if_match(&headers)?,
    )?))
}

async fn put_twin(
    State(hub): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = json_body(&body)?;
    if let Some(body_id) = body.get("deviceId").and_then(Value::as_str)
        && body_id != id
    {
        return Err(ApiError::bad_request(format!(
            "deviceId {body_id:?} in the body does not match {id:?} in the path"
        )));
    }
    Ok(twin_response(hub.replace_twin(
        &id,
        &body,
        if_match(&headers)?,
    )?))
}

async fn list_devices(State(hub): State<SharedState>) -> ApiResult {
    Ok(axum::Json(hub.list_devices()).into_response())
}

async fn get_device(State(hub): State<SharedState>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(hub.device_json(&id)?).into_response())
}

async fn put_device(
    State(hub): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body = json_body(&body)?;
    let identity = identity_from_body(&id, &body, hub.identity(&id).as_ref())?;
    Ok(axum::Json(hub.register_device(identity, if_match(&headers)?)?).into_response())
}

/// Reads a device identity from IoT Hub's device JSON
/// (`authentication.symmetricKey.primaryKey`, `authentication.x509Thumbprint.primaryThumbprint`,
/// `status`) or a flat `{"primaryKey", "secondaryKey", "thumbprint", "status"}`. What the body
/// leaves out comes from the existing identity, else keys are generated and status is enabled.
fn identity_from_body(
    id: &str,
    body: &Value,
    existing: Option<&DeviceIdentity>,
) -> Result<DeviceIdentity, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("device must be a JSON object"));
    }
    if let Some(body_id) = body.get("deviceId").and_then(Value::as_str)
        && body_id != id
    {
        return Err(ApiError::bad_request(format!(
            "deviceId {body_id:?} in the body does not match {id:?} in the path"
        )));
    }
    let text = |pointers: &[&str]| -> Result<Option<String>, ApiError> {
        for p in pointers {
            match body.pointer(p) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "{p} must be a string, got {other}"
                    )));
                }
            }
        }
        Ok(None)
    };
    let key = |pointers: &[&str], old: Option<&String>| -> Result<String, ApiError> {
        match text(pointers)? {
            Some(k) if B64.decode(k.trim()).is_err() => Err(ApiError::bad_request(format!(
                "{} is not base64",
                pointers[0]
            ))),
            Some(k) => Ok(k),
            None => Ok(old.cloned().unwrap_or_else(DeviceIdentity::random_key)),
        }
    };
    let primary_key = key(
        &["/authentication/symmetricKey/primaryKey", "/primaryKey"],
        existing.map(|e| &e.primary_key),
    )?;
    let secondary_key = key(
        &["/authentication/symmetricKey/secondaryKey", "/secondaryKey"],
        existing.map(|e| &e.secondary_key),
    )?;
    let thumbprint = text(&[
        "/authentication/x509Thumbprint/primaryThumbprint",
        "/thumbprint",
    ])?
    .or_else(|| existing.and_then(|e| e.thumbprint.clone()));
    let status = match text(&["/status"])? {
        None => existing.map_or(DeviceStatus::Enabled, |e| e.status),
        Some(s) if s.eq_ignore_ascii_case("enabled") => DeviceStatus::Enabled,
        Some(s) if s.eq_ignore_ascii_case("disabled") => DeviceStatus::Disabled,
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "status {s:?} is neither \"enabled\" nor \"disabled\""
            )));
        }
    };
    let mut identity = DeviceIdentity::new(id, primary_key, secondary_key);
    identity.thumbprint = thumbprint;
    identity.status = status;
    Ok(identity)
}

async fn query(State(hub): State<SharedState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let body = json_body(&body)?;
    let Some(text) = body.get("query").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(
            "body must be {\"query\": \"SELECT … FROM devices …\"}",
        ));
    };
    let parsed = Query::parse(text).map_err(|e| ApiError {
        position: Some(e.position),
        ..ApiError::bad_request(e.to_string())
    })?;
    let rows = parsed.execute(&hub.all_twins());
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let start = match header_text(CONTINUATION_HEADER) {
        None => 0,
        Some(token) => decode_continuation(token)
            .ok_or_else(|| ApiError::bad_request(format!("invalid {CONTINUATION_HEADER}")))?,
    };
    let page = match header_text(MAX_ITEM_COUNT_HEADER) {
        None => usize::MAX,
        Some(n) => n
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::bad_request(format!("invalid {MAX_ITEM_COUNT_HEADER}")))?,
    };
    let end = start.saturating_add(page).min(rows.len());
    let items: Vec<Value> = rows
        .get(start..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut resp = axum::Json(items).into_response();
    let item_type = if parsed.returns_documents() {
        "twin"
    } else {
        "raw"
    };
    resp.headers_mut()
        .insert(ITEM_TYPE_HEADER, HeaderValue::from_static(item_type));
    if end < rows.len()
        && let Ok(v) = HeaderValue::from_str(&encode_continuation(end))
    {
        resp.headers_mut().insert(CONTINUATION_HEADER, v);
    }
    Ok(resp)
}

/// Continuation tokens are opaque to clients: base64 of the next row's offset.
fn encode_continuation(offset: usize) -> String {
    B64.encode(offset.to_string())
}

fn decode_continuation(token: &str) -> Option<usize> {
    let bytes = B64.decode(token.trim()).ok()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}
