//! MQTT over WebSocket, as IoT Hub serves it on port 443: an HTTP/1.1 upgrade on
//! `/$iothub/websocket` with subprotocol `mqtt`, then binary frames carrying the MQTT byte
//! stream. After the upgrade the connection is an ordinary device session.

use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

use super::session::MAX_PACKET_SIZE;

/// The upgrade path IoT Hub serves MQTT on.
pub const WS_PATH: &str = "/$iothub/websocket";
/// The WebSocket subprotocol of MQTT (RFC 6455 registry; MQTT 3.1.1 §6).
pub const WS_SUBPROTOCOL: &str = "mqtt";
/// An upgrade request that does not complete within this time is abandoned.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte stream of an upgraded connection: MQTT bytes in binary frames.
pub type WsByteStream<S> = WsStream<async_tungstenite::tokio::TokioAdapter<S>>;

/// Performs the server side of the WebSocket upgrade on `stream` (TCP or TLS). `None` when the
/// request is refused (wrong path: 404; no `mqtt` subprotocol: 400), malformed, or too slow.
pub async fn upgrade<S>(stream: S, peer: SocketAddr) -> Option<WsByteStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // A frame or message larger than an MQTT packet can only be garbage: bound the memory a
    // peer can make the emulator buffer.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_PACKET_SIZE + 1024))
        .max_frame_size(Some(MAX_PACKET_SIZE + 1024));
    let accept =
        async_tungstenite::tokio::accept_hdr_async_with_config(stream, check_request, Some(config));
    match tokio::time::timeout(UPGRADE_TIMEOUT, accept).await {
        Ok(Ok(ws)) => Some(WsStream::new(ws)),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "WebSocket upgrade refused or failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "WebSocket upgrade timed out");
            None
        }
    }
}

/// The header callback of the upgrade: the path must be IoT Hub's, and the client must offer
/// the `mqtt` subprotocol, which the response then names.
#[expect(
    clippy::result_large_err,
    reason = "the signature is tungstenite's Callback"
)]
fn check_request(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let path = request.uri().path();
    // `$` may arrive percent-encoded.
    if path != WS_PATH && !path.eq_ignore_ascii_case("/%24iothub/websocket") {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("no WebSocket endpoint at {path}; MQTT is served on {WS_PATH}"),
        ));
    }
    let offers_mqtt = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(WS_SUBPROTOCOL));
    if !offers_mqtt {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("the WebSocket subprotocol must be {WS_SUBPROTOCOL:?}"),
        ));
    }
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    Ok(response)
}

fn refusal(status: StatusCode, message: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message));
    *response.status_mut() = status;
    response
}
