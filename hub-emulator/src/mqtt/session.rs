//! One device connection: CONNECT/authentication, then the twin session until either side
//! closes. Packets are framed by rumqttc's v4 codec; the session rules are IoT Hub's.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Framed;

use super::topics::{self, DeviceRequest, topic_matches};
use crate::iothub_error::{ErrorCode, twin_error_body};
use crate::state::{ConnEvent, Counters, HubError, SharedState, Subscriptions, now_epoch_secs};
use crate::{sas, tls};

/// Largest MQTT packet accepted or sent: IoT Hub's 256 KB message limit with room for the
/// headers, so an oversized twin patch is received whole and answered 413 rather than cut off.
pub const MAX_PACKET_SIZE: usize = 512 * 1024;
/// At most this many subscriptions per connection (IoT Hub's limit).
pub const MAX_SUBSCRIPTIONS: usize = 5;
/// A connection that sends no CONNECT within this time is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many twin responses per connection are held back by an injected delay; requests
/// beyond it are answered 429 at once.
pub const MAX_DELAYED_RESPONSES: usize = 256;
/// A device that does not take a packet off the socket within this time is disconnected: a
/// blocked write would otherwise stall its session (keep-alive, expiry, close requests) forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Filter of twin responses.
const TWIN_RES_FILTER: &str = "$iothub/twin/res/#";
/// Filter of desired-property notifications.
const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

/// Serves one accepted stream (TCP or TLS) until it closes. `client_cert` is the DER leaf
/// certificate the device presented in the TLS handshake, if any.
pub async fn serve<S>(
    stream: S,
    hub: SharedState,
    peer: SocketAddr,
    client_cert: Option<CertificateDer<'static>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(
        stream,
        Codec {
            max_incoming_size: MAX_PACKET_SIZE,
            max_outgoing_size: MAX_PACKET_SIZE,
        },
    );
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, framed.next()).await {
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Ok(other))) => {
            tracing::debug!(%peer, ?other, "first packet is not CONNECT; closing");
            return;
        }
        Ok(Some(Err(e))) => {
            tracing::debug!(%peer, error = %e, "malformed packet before CONNECT; closing");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            return;
        }
    };
    let auth = authenticate(&hub, &connect, client_cert.as_deref());
    let (device_id, expiry) = match auth {
        Ok(ok) => ok,
        Err(code) => {
            Counters::bump(&hub.counters.connects_refused);
            tracing::info!(%peer, client_id = %connect.client_id, ?code, "CONNECT refused");
            let _ = framed
                .send(Packet::ConnAck(ConnAck::new(code, false)))
                .await;
            return;
        }
    };
    let connection = match hub.connect_session(&device_id, connect.clean_session) {
        Ok(c) => c,
        Err(e) => {
            // Deleted between the check and now.
            tracing::info!(%peer, %device_id, error = %e, "CONNECT refused");
            Counters::bump(&hub.counters.connects_refused);
            let _ = framed
                .send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::NotAuthorized,
                    false,
                )))
                .await;
            return;
        }
    };
    let registration = Registration {
        hub: hub.clone(),
        device_id: device_id.clone(),
        conn_id: connection.conn_id,
    };
    Counters::bump(&hub.counters.connects);
    let session_present = connection.resumed.is_some();
    if framed
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            session_present,
        )))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(
        %peer,
        %device_id,
        keep_alive = connect.keep_alive,
        clean_session = connect.clean_session,
        session_present,
        "device connected"
    );
    let session = Session {
        hub,
        device_id,
        conn_id: connection.conn_id,
        persistent: !connect.clean_session,
        subscriptions: connection.resumed.unwrap_or_default(),
        next_pkid: 0,
        delayed_pending: 0,
    };
    let (device_id, reason) = session
        .run(&mut framed, connection.events, connect.keep_alive, expiry)
        .await;
    tracing::info!(%peer, %device_id, %reason, "device disconnected");
    // Unregister before the device can see the close, so "disconnected" is never stale.
    drop(registration);
    // Bounded: flushing to a device that stopped reading would never end.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, framed.close()).await;
}

/// Unregisters the connection from the hub however the task ends (even when aborted).
struct Registration {
    hub: SharedState,
    device_id: String,
    conn_id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnect(&self.device_id, self.conn_id);
    }
}

/// Checks a CONNECT; on success the device id and the instant its credentials stop being
/// valid. A non-empty password is a SAS token; an empty one asks for X.509 authentication by
/// the client certificate's thumbprint.
fn authenticate(
    hub: &SharedState,
    connect: &rumqttc::mqttbytes::v4::Connect,
    client_cert: Option<&[u8]>,
) -> Result<(String, Instant), ConnectReturnCode> {
    if hub.refusing_connections() {
        return Err(ConnectReturnCode::ServiceUnavailable);
    }
    if connect.protocol != Protocol::V4 {
        return Err(ConnectReturnCode::RefusedProtocolVersion);
    }
    let device_id = connect.client_id.as_str();
    if device_id.is_empty() {
        return Err(ConnectReturnCode::BadClientId);
    }
    let login = connect
        .login
        .as_ref()
        .ok_or(ConnectReturnCode::BadUserNamePassword)?;
    let username =
        topics::parse_username(&login.username).ok_or(ConnectReturnCode::BadUserNamePassword)?;
    if !username.host.eq_ignore_ascii_case(hub.hostname()) {
        return Err(ConnectReturnCode::BadUserNamePassword);
    }
    if username.device_id != device_id {
        return Err(ConnectReturnCode::BadClientId);
    }
    let identity = hub
        .identity(device_id)
        .ok_or(ConnectReturnCode::NotAuthorized)?;
    if identity.status == crate::state::DeviceStatus::Disabled {
        return Err(ConnectReturnCode::NotAuthorized);
    }
    if login.password.is_empty() {
        let (Some(cert), Some(thumbprint)) = (client_cert, identity.thumbprint.as_deref()) else {
            tracing::info!(%device_id, "no SAS token, and no client certificate or registered thumbprint");
            return Err(ConnectReturnCode::NotAuthorized);
        };
        if !tls::thumbprint_matches(cert, thumbprint) {
            tracing::info!(%device_id, "client certificate does not match the registered thumbprint");
            return Err(ConnectReturnCode::NotAuthorized);
        }
        // A certificate does not expire mid-connection the way a token does.
        return Ok((
            device_id.to_owned(),
            Instant::now() + Duration::from_hours(24 * 365),
        ));
    }
    let skew = hub.settings().sas_skew;
    let now = now_epoch_secs();
    let claims = sas::verify(
        &login.password,
        hub.hostname(),
        device_id,
        &[&identity.primary_key, &identity.secondary_key],
        now.saturating_sub(skew.as_secs()),
    )
    .map_err(|e| {
        tracing::info!(%device_id, error = %e, "SAS token refused");
        ConnectReturnCode::NotAuthorized
    })?;
    // The connection lives until the token (plus the tolerated skew) expires.
    let deadline = UNIX_EPOCH + Duration::from_secs(claims.expiry_epoch_secs) + skew;
    let now = Instant::now();
    let expiry = deadline
        .duration_since(SystemTime::now())
        .ok()
        .and_then(|left| now.checked_add(left))
        .unwrap_or(now);
    Ok((device_id.to_owned(), expiry))
}

struct Session {
    hub: SharedState,
    device_id: String,
    conn_id: u64,
    /// `clean_session = 0`: subscriptions are kept in the hub for the next connection.
    persistent: bool,
    subscriptions: Subscriptions,
    next_pkid: u16,
    /// Twin responses held back by the control endpoint's delay, not yet sent.
    delayed_pending: usize,
}

/// Why the session ended: (device id, reason).
type End = (String, String);

enum Step {
    Continue,
    Close(String),
}

impl Session {
    async fn run<S>(
        mut self,
        framed: &mut Framed<S, Codec>,
        mut events: mpsc::Receiver<ConnEvent>,
        keep_alive_secs: u16,
        expiry: Instant,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Delayed twin responses come back through this channel to keep per-connection order
        // of writes in this task.
        let (delayed_tx, mut delayed_rx) = mpsc::unbounded_channel::<(u16, String, Bytes)>();
        // Keep-alive: the client must send something within 1.5 × its keep-alive.
        let grace =
            (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
        let mut last_rx = Instant::now();
        let far = Instant::now() + Duration::from_hours(24 * 365);
        let reason = loop {
            let ka_deadline = grace.map_or(far, |g| last_rx + g);
            let step = tokio::select! {
                packet = framed.next() => match packet {
                    None => Step::Close("connection closed by the device".into()),
                    Some(Err(e)) => {
                        self.count_hub_close();
                        Step::Close(format!("malformed packet: {e}"))
                    }
                    Some(Ok(packet)) => {
                        last_rx = Instant::now();
                        self.hub.touch_activity(&self.device_id);
                        self.on_packet(framed, packet, &delayed_tx).await
                    }
                },
                event = events.recv() => match event {
                    Some(ConnEvent::Desired { version, payload }) => {
                        let payload = Bytes::from(payload.to_string());
                        self.on_desired(framed, version, payload).await
                    }
                    Some(ConnEvent::RawDesired { version, payload }) => {
                        self.on_desired(framed, version, payload).await
                    }
                    Some(ConnEvent::Close(reason)) => {
                        self.count_hub_close();
                        Step::Close(format!("closed by the hub: {reason:?}"))
                    }
                    None => Step::Close("hub dropped the connection".into()),
                },
                Some((status, topic, body)) = delayed_rx.recv() => {
                    self.delayed_pending = self.delayed_pending.saturating_sub(1);
                    self.send_response(framed, status, topic, body).await
                }
                () = sleep_until(ka_deadline) => {
                    self.count_hub_close();
                    Step::Close(format!("keep-alive of {keep_alive_secs} s exceeded by 50%"))
                }
                () = sleep_until(expiry) => {
                    self.count_hub_close();
                    Step::Close("SAS token expired".into())
                }
            };
            if let Step::Close(reason) = step {
                break reason;
            }
        };
        (self.device_id, reason)
    }

    fn count_hub_close(&self) {
        Counters::bump(&self.hub.counters.disconnects_by_hub);
    }

    async fn on_packet<S>(
        &mut self,
        framed: &mut Framed<S, Codec>,
        packet: Packet,
        delayed_tx: &mpsc::UnboundedSender<(u16, String, Bytes)>,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match packet {
            Packet::PingReq => send(framed, Packet::PingResp).await,
            Packet::Disconnect => Step::Close("DISCONNECT from the device".into()),
            Packet::Subscribe(sub) => {
                let codes = sub
                    .filters
                    .iter()
                    .map(|f| self.subscribe(&f.path, f.qos))
                    .collect();
                self.save_session();
                send(framed, Packet::SubAck(SubAck::new(sub.pkid, codes))).await
            }
            Packet::Unsubscribe(unsub) => {
                self.subscriptions
                    .retain(|(f, _)| !unsub.topics.contains(f));
                self.save_session();
                send(framed, Packet::UnsubAck(UnsubAck::new(unsub.pkid))).await
            }
            Packet::Publish(publish) => self.on_publish(framed, publish, delayed_tx).await,
            // Acknowledgements of our QoS 1 publishes: nothing is retransmitted, so nothing to do.
            Packet::PubAck(_) => Step::Continue,
            other => {
                self.count_hub_close();
                Step::Close(format!("unexpected packet {other:?}"))
            }
        }
    }

    /// Keeps the subscriptions of a persistent session in the hub (before the SUBACK/UNSUBACK,
    /// so a reconnect after the acknowledgement finds them).
    fn save_session(&self) {
        if self.persistent {
            self.hub
                .save_subscriptions(&self.device_id, self.conn_id, &self.subscriptions);
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        if !topics::is_supported_filter(filter, &self.device_id) {
            return SubscribeReasonCode::Failure;
        }
        let granted = if qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        if let Some(existing) = self.subscriptions.iter_mut().find(|(f, _)| f == filter) {
            existing.1 = granted;
        } else if self.subscriptions.len() < MAX_SUBSCRIPTIONS {
            self.subscriptions.push((filter.to_owned(), granted));
        } else {
            return SubscribeReasonCode::Failure;
        }
        SubscribeReasonCode::Success(granted)
    }

    /// The granted `QoS` of the subscription matching `topic`, if any.
    fn subscribed(&self, topic: &str) -> Option<QoS> {
        self.subscriptions
            .iter()
            .filter(|(f, _)| topic_matches(topic, f))
            .map(|(_, q)| *q)
            .max_by_key(|q| *q as u8)
    }

    async fn on_publish<S>(
        &mut self,
        framed: &mut Framed<S, Codec>,
        publish: Publish,
        delayed_tx: &mpsc::UnboundedSender<(u16, String, Bytes)>,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if publish.qos == QoS::ExactlyOnce {
            self.count_hub_close();
            return Step::Close("QoS 2 PUBLISH is not supported".into());
        }
        let request = match topics::parse_publish_topic(&publish.topic, &self.device_id) {
            Ok(r) => r,
            Err(e) => {
                self.count_hub_close();
                return Step::Close(e.to_string());
            }
        };
        let delay = self.hub.faults().twin_response_delay;
        // A device pipelining requests while responses are delayed: answer 429 at once beyond
        // a bound, rather than holding responses without limit.
        let backlog_full = !delay.is_zero() && self.delayed_pending >= MAX_DELAYED_RESPONSES;
        let (rid, status, version, body) = match request {
            DeviceRequest::Telemetry => {
                Counters::bump(&self.hub.counters.telemetry);
                return self.puback(framed, &publish).await;
            }
            DeviceRequest::TwinGet { rid } => {
                Counters::bump(&self.hub.counters.twin_gets);
                if !backlog_full && self.hub.try_twin_op() {
                    match self.hub.device_twin_get(&self.device_id) {
                        Ok(twin) => (rid, 200, None, Bytes::from(twin.to_string())),
                        Err(e) => error_response(rid, &e),
                    }
                } else {
                    throttled(rid)
                }
            }
            DeviceRequest::ReportedPatch { rid } => {
                Counters::bump(&self.hub.counters.reported_patches);
                if !backlog_full && self.hub.try_twin_op() {
                    self.apply_reported(rid, &publish.payload)
                } else {
                    throttled(rid)
                }
            }
        };
        self.hub.counters.count_status(status);
        // PUBACK after the request took effect (and was counted), before the response.
        if let Step::Close(r) = self.puback(framed, &publish).await {
            return Step::Close(r);
        }
        let topic = topics::twin_response_topic(status, &rid, version);
        if delay.is_zero() || backlog_full {
            self.send_response(framed, status, topic, body).await
        } else {
            let tx = delayed_tx.clone();
            self.delayed_pending += 1;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send((status, topic, body));
            });
            Step::Continue
        }
    }

    /// Applies a reported PATCH body; the response tuple for it.
    fn apply_reported(&self, rid: String, payload: &[u8]) -> (String, u16, Option<u64>, Bytes) {
        let patch = match serde_json::from_slice::<Value>(payload) {
            Ok(p) => p,
            Err(e) => {
                let e = HubError::BadRequest(format!("reported patch is not JSON: {e}"));
                return error_response(rid, &e);
            }
        };
        match self.hub.device_patch_reported(&self.device_id, &patch) {
            Ok(v) => (rid, 204, Some(v), Bytes::new()),
            Err(e) => error_response(rid, &e),
        }
    }

    async fn puback<S>(&mut self, framed: &mut Framed<S, Codec>, publish: &Publish) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if publish.qos == QoS::AtLeastOnce {
            send(framed, Packet::PubAck(PubAck::new(publish.pkid))).await
        } else {
            Step::Continue
        }
    }

    /// Sends a twin response if the device subscribed to twin responses.
    async fn send_response<S>(
        &mut self,
        framed: &mut Framed<S, Codec>,
        status: u16,
        topic: String,
        body: Bytes,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(qos) = self.subscribed(&topic) else {
            tracing::debug!(device_id = %self.device_id, status, "twin response dropped: not subscribed to {TWIN_RES_FILTER}");
            return Step::Continue;
        };
        self.publish(framed, topic, qos, body).await
    }

    async fn on_desired<S>(
        &mut self,
        framed: &mut Framed<S, Codec>,
        version: u64,
        payload: Bytes,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let topic = topics::desired_patch_topic(version);
        let Some(qos) = self.subscribed(&topic) else {
            tracing::debug!(device_id = %self.device_id, version, "desired notification dropped: not subscribed to {DESIRED_FILTER}");
            return Step::Continue;
        };
        Counters::bump(&self.hub.counters.desired_notifications);
        self.publish(framed, topic, qos, payload).await
    }

    async fn publish<S>(
        &mut self,
        framed: &mut Framed<S, Codec>,
        topic: String,
        qos: QoS,
        body: Bytes,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut publish = Publish::from_bytes(topic, qos, body);
        if qos != QoS::AtMostOnce {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            publish.pkid = self.next_pkid;
        }
        send(framed, Packet::Publish(publish)).await
    }
}

fn throttled(rid: String) -> (String, u16, Option<u64>, Bytes) {
    let body = twin_error_body(
        ErrorCode::ThrottlingException,
        "twin operations throttled: back off and retry",
    );
    (rid, 429, None, Bytes::from(body.to_string()))
}

/// The answer to a failed twin request: the error's status, and a body in IoT Hub's shape
/// (SDKs decide success from its `errorCode`).
fn error_response(rid: String, e: &HubError) -> (String, u16, Option<u64>, Bytes) {
    let status = e.status();
    let body = twin_error_body(ErrorCode::for_status(status), &e.to_string());
    (rid, status, None, Bytes::from(body.to_string()))
}

async fn send<S>(framed: &mut Framed<S, Codec>, packet: Packet) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(WRITE_TIMEOUT, framed.send(packet)).await {
        Ok(Ok(())) => Step::Continue,
        Ok(Err(e)) => Step::Close(format!("write failed: {e}")),
        Err(_) => Step::Close(format!(
            "the device took no data for {WRITE_TIMEOUT:?}; disconnecting it"
        )),
    }
}

#[cfg(test)]
mod tests {
    //! Session timing rules under paused tokio time, over an in-memory stream: exact, and
    //! without real waiting.

    use rumqttc::mqttbytes::v4::Connect;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::state::{DeviceIdentity, Hub, HubSettings};

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    struct Client {
        framed: Framed<DuplexStream, Codec>,
        hub: SharedState,
        server: JoinHandle<()>,
    }

    /// A hub with device `d1` (no tolerated skew) and a client connected to it with
    /// `keep_alive` and a token valid for `token_secs`.
    async fn connected(keep_alive: u16, token_secs: u64) -> Client {
        connected_over(keep_alive, token_secs, 64 * 1024).await
    }

    /// As [`connected`], over a stream that buffers `buffer` bytes each way.
    async fn connected_over(keep_alive: u16, token_secs: u64, buffer: usize) -> Client {
        let hub = Hub::new(HubSettings {
            sas_skew: Duration::ZERO,
            ..HubSettings::default()
        })
        .unwrap();
        hub.register_device(DeviceIdentity::new("d1", KEY, KEY), None)
            .unwrap();
        let (client, server) = tokio::io::duplex(buffer);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let server = tokio::spawn(serve(server, hub.clone(), peer, None));
        let mut framed = Framed::new(
            client,
            Codec {
                max_incoming_size: MAX_PACKET_SIZE,
                max_outgoing_size: MAX_PACKET_SIZE,
            },
        );
        let mut connect = Connect::new("d1");
        connect.keep_alive = keep_alive;
        let token = sas::generate(hub.hostname(), "d1", KEY, now_epoch_secs() + token_secs);
        connect.set_login(crate::mqtt_username(hub.hostname(), "d1"), token);
        framed.send(Packet::Connect(connect)).await.unwrap();
        match framed.next().await {
            Some(Ok(Packet::ConnAck(ack))) => assert_eq!(ack.code, ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert!(hub.is_connected("d1"));
        Client {
            framed,
            hub,
            server,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_responses_are_bounded_per_connection() {
        let mut c = connected(0, 3600).await;
        let subscribe = rumqttc::mqttbytes::v4::Subscribe::new(TWIN_RES_FILTER, QoS::AtMostOnce);
        c.framed.send(Packet::Subscribe(subscribe)).await.unwrap();
        assert!(matches!(c.framed.next().await, Some(Ok(Packet::SubAck(_)))));
        c.hub
            .set_faults(|f| f.twin_response_delay = Duration::from_secs(10));
        let requests = MAX_DELAYED_RESPONSES + 1;
        for rid in 1..=requests {
            let get = Publish::new(format!("$iothub/twin/GET/?$rid={rid}"), QoS::AtMostOnce, "");
            c.framed.send(Packet::Publish(get)).await.unwrap();
        }
        let start = Instant::now();
        let mut topics = Vec::new();
        for _ in 0..requests {
            match c.framed.next().await {
                Some(Ok(Packet::Publish(p))) => topics.push((p.topic, start.elapsed())),
                other => panic!("expected a twin response, got {other:?}"),
            }
        }
        // The request beyond the bound is refused at once; the others come after the delay.
        assert_eq!(
            topics[0],
            (
                format!("$iothub/twin/res/429/?$rid={requests}"),
                Duration::ZERO
            )
        );
        let mut delayed: Vec<usize> = topics[1..]
            .iter()
            .map(|(topic, at)| {
                assert_eq!(*at, Duration::from_secs(10), "{topic}");
                let rid = topic.strip_prefix("$iothub/twin/res/200/?$rid=");
                rid.and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("{topic}"))
            })
            .collect();
        delayed.sort_unstable();
        assert_eq!(delayed, (1..requests).collect::<Vec<_>>());
        let counters = c.hub.counters.snapshot();
        assert_eq!((counters.twin_gets, counters.responses_429), (257, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_that_stops_reading_is_disconnected_not_buffered() {
        let mut c = connected_over(0, 3600, 1024).await;
        let subscribe = rumqttc::mqttbytes::v4::Subscribe::new(DESIRED_FILTER, QoS::AtLeastOnce);
        c.framed.send(Packet::Subscribe(subscribe)).await.unwrap();
        assert!(matches!(c.framed.next().await, Some(Ok(Packet::SubAck(_)))));
        // From here on the device keeps its socket open but never reads again.
        let mut notifications = 0;
        while c.hub.is_connected("d1") {
            let patch = serde_json::json!({"properties": {"desired": {"n": notifications}}});
            c.hub.patch_twin("d1", &patch, None).unwrap();
            notifications += 1;
            assert!(
                notifications <= 2 * crate::state::CONN_EVENT_CAPACITY,
                "still connected after {notifications} unread notifications"
            );
            // Let the session write what the stream takes.
            tokio::task::yield_now().await;
        }
        assert!(notifications > crate::state::CONN_EVENT_CAPACITY);
        // The blocked session gives up after the write timeout instead of hanging forever.
        let start = Instant::now();
        tokio::time::timeout(Duration::from_hours(1), c.server)
            .await
            .expect("the session ends")
            .unwrap();
        assert!(start.elapsed() >= WRITE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_is_enforced_at_one_and_a_half_times() {
        let mut c = connected(10, 3600).await;
        // A ping every 14 s: later than the keep-alive itself, within 1.5 × of it.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(14)).await;
            c.framed.send(Packet::PingReq).await.unwrap();
            assert!(matches!(c.framed.next().await, Some(Ok(Packet::PingResp))));
        }
        // Then silence: the hub closes exactly 15 s after the last packet.
        let silent_since = Instant::now();
        assert!(c.framed.next().await.is_none(), "closed without a packet");
        assert_eq!(silent_since.elapsed(), Duration::from_secs(15));
        assert!(!c.hub.is_connected("d1"));
        assert_eq!(c.hub.counters.snapshot().disconnects_by_hub, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_zero_is_never_enforced_but_the_token_expiry_is() {
        let mut c = connected(0, 100).await;
        let start = Instant::now();
        // No keep-alive, no traffic: the connection lives until the token expires (se is whole
        // seconds, so up to one second earlier than 100 s after the token was made).
        assert!(c.framed.next().await.is_none(), "closed without a packet");
        let lived = start.elapsed();
        assert!(
            lived > Duration::from_secs(98) && lived <= Duration::from_secs(100),
            "{lived:?}"
        );
        assert!(!c.hub.is_connected("d1"));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_do_not_extend_an_expiring_token() {
        let mut c = connected(10, 60).await;
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if c.framed.send(Packet::PingReq).await.is_err() {
                break;
            }
            match c.framed.next().await {
                Some(Ok(Packet::PingResp)) => {}
                None => break,
                other => panic!("expected PINGRESP or close, got {other:?}"),
            }
        }
        assert!(
            start.elapsed() <= Duration::from_mins(1),
            "{:?}",
            start.elapsed()
        );
        assert!(!c.hub.is_connected("d1"));
    }
}
