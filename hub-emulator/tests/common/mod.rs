//! Shared helpers for the emulator's socket tests: start an emulator, drive a rumqttc device
//! client, talk HTTP to the control endpoint. Every wait has a deadline; nothing sleeps to
//! synchronise.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hub_emulator::state::DeviceIdentity;
use hub_emulator::{Config, Emulator, RunningEmulator};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Base64 keys of the test devices.
pub const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// A key no device has.
pub const KEY_WRONG: &str = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nISE=";

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Twin response topic filter.
pub const RES_FILTER: &str = "$iothub/twin/res/#";
/// Desired notification topic filter.
pub const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

/// A config with devices `d1` and `d2` (primary `KEY_A`, secondary `KEY_B`).
pub fn config() -> Config {
    let mut c = Config::ephemeral();
    for id in ["d1", "d2"] {
        c.devices.push(DeviceIdentity::new(id, KEY_A, KEY_B));
    }
    c
}

/// Starts an emulator with [`config`] changed by `tweak`.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> RunningEmulator {
    let mut c = config();
    tweak(&mut c);
    Emulator::start(c).await.expect("emulator starts")
}

/// A rumqttc device client whose event loop runs in a task; events arrive on a channel. The
/// loop stops at the first connection error (no automatic reconnect).
pub struct TestDevice {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    driver: JoinHandle<()>,
    next_rid: u64,
    pub closed: bool,
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// MQTT options for `device_id` at the emulator's MQTT address.
pub fn options(
    emu: &RunningEmulator,
    device_id: &str,
    username: &str,
    password: &str,
) -> MqttOptions {
    let addr = emu.mqtt_addr();
    let mut o = MqttOptions::new(device_id, addr.ip().to_string(), addr.port());
    o.set_credentials(username, password);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    o
}

/// Connects with the given options; `Err` carries the connection error (for refused CONNACKs
/// `ConnectionError::ConnectionRefused(code)`).
pub async fn connect_with(options: MqttOptions) -> Result<TestDevice, ConnectionError> {
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (tx, mut events) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(eventloop, tx));
    let first = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("CONNACK or error before the deadline")
        .expect("driver sends at least one event");
    match first {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(TestDevice {
            client,
            events,
            driver,
            next_rid: 0,
            closed: false,
        }),
        Ok(other) => panic!("expected CONNACK first, got {other:?}"),
        Err(e) => Err(e),
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let stop = event.is_err();
        if tx.send(event).is_err() || stop {
            break;
        }
    }
}

/// Connects `device_id` with a valid token (primary key, one hour) and subscribes to twin
/// responses and desired notifications.
pub async fn connect(emu: &RunningEmulator, device_id: &str) -> TestDevice {
    let token = emu
        .device_token(device_id, 3600)
        .expect("device registered");
    let mut dev = connect_with(options(emu, device_id, &emu.username(device_id), &token))
        .await
        .expect("connection accepted");
    let granted = dev.subscribe(&[RES_FILTER, DESIRED_FILTER]).await;
    assert_eq!(
        granted,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce); 2]
    );
    dev
}

/// A parsed twin response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub rid: String,
    pub version: Option<u64>,
    pub body: Value,
}

/// Parses `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` (independently of the
/// emulator's own topic code).
pub fn parse_response(p: &Publish) -> Option<Response> {
    let rest = p.topic.strip_prefix("$iothub/twin/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let mut rid = None;
    let mut version = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("$rid", v)) => rid = Some(v.to_owned()),
            Some(("$version", v)) => version = Some(v.parse().ok()?),
            _ => {}
        }
    }
    let body = if p.payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&p.payload).ok()?
    };
    Some(Response {
        status: status.parse().ok()?,
        rid: rid?,
        version,
        body,
    })
}

impl TestDevice {
    /// The next event, or `None` once the connection has failed/closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        if self.closed {
            return None;
        }
        let ev = tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("an event before the deadline");
        if let Some(Ok(ev)) = ev {
            Some(ev)
        } else {
            self.closed = true;
            None
        }
    }

    /// The next incoming PUBLISH; panics if the connection closes first.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next_event().await {
                Some(Event::Incoming(Packet::Publish(p))) => return p,
                Some(_) => {}
                None => panic!("connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Waits until the hub closes the connection; panics if a PUBLISH arrives first.
    pub async fn expect_closed(&mut self) {
        loop {
            match self.next_event().await {
                None => return,
                Some(Event::Incoming(Packet::Publish(p))) => panic!("expected close, got {p:?}"),
                Some(_) => {}
            }
        }
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
        let filters: Vec<_> = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce))
            .collect();
        self.client
            .subscribe_many(filters)
            .await
            .expect("subscribe queued");
        loop {
            match self.next_event().await {
                Some(Event::Incoming(Packet::SubAck(ack))) => return ack.return_codes,
                Some(_) => {}
                None => panic!("connection closed while waiting for SUBACK"),
            }
        }
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        self.next_rid.to_string()
    }

    /// Publishes a twin GET and returns its rid.
    pub async fn send_get(&mut self) -> String {
        let rid = self.rid();
        publish_twin_get(&self.client, &rid).await;
        rid
    }

    /// Publishes a reported PATCH (raw bytes) and returns its rid.
    pub async fn send_patch_raw(&mut self, payload: Vec<u8>) -> String {
        let rid = self.rid();
        self.client
            .publish(
                format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish queued");
        rid
    }

    /// Waits for the twin response with `rid`; any other PUBLISH fails the test.
    pub async fn response(&mut self, rid: &str) -> Response {
        let p = self.next_publish().await;
        let r = parse_response(&p).unwrap_or_else(|| panic!("not a twin response: {p:?}"));
        assert_eq!(r.rid, rid, "response for another request: {r:?}");
        r
    }

    /// Twin GET round trip.
    pub async fn get_twin(&mut self) -> Response {
        let rid = self.send_get().await;
        self.response(&rid).await
    }

    /// Reported PATCH round trip.
    pub async fn patch_reported(&mut self, patch: &Value) -> Response {
        let rid = self.send_patch_raw(patch.to_string().into_bytes()).await;
        self.response(&rid).await
    }
}

/// Asserts `r` is an error answer in IoT Hub's shape with `error_code`:
/// `{"errorCode": n, "trackingId": "…", "message": "…", "timestampUtc": "…Z"}` and the status
/// that the code's first three digits name (SDKs decide success from `errorCode`).
pub fn assert_iothub_error(r: &Response, error_code: u32) {
    assert_eq!(r.body["errorCode"], error_code, "{r:?}");
    assert_eq!(u32::from(r.status), error_code / 1000, "{r:?}");
    assert_eq!(r.version, None, "{r:?}");
    let text = |field: &str| {
        r.body[field]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{field} is not a non-empty string: {r:?}"))
    };
    text("message");
    text("trackingId");
    let ts = text("timestampUtc");
    assert!(
        ts.ends_with('Z') && humantime::parse_rfc3339(ts).is_ok(),
        "timestampUtc {ts:?} is not RFC 3339 UTC"
    );
    assert_eq!(
        r.body.as_object().map(serde_json::Map::len),
        Some(4),
        "{r:?}"
    );
}

/// Publishes a twin GET with `rid`, at most once.
pub async fn publish_twin_get(client: &AsyncClient, rid: &str) {
    client
        .publish(
            format!("$iothub/twin/GET/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            Vec::new(),
        )
        .await
        .expect("publish queued");
}

/// A minimal HTTP/1.1 request (`Connection: close`); returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    http_bytes(addr, method, path, body.as_bytes()).await
}

/// [`http`] with a raw body (any bytes).
pub async fn http_bytes(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.expect("HTTP write");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("HTTP response before the deadline")
        .expect("HTTP read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `POST` to the control endpoint.
pub async fn control(emu: &RunningEmulator, path: &str) -> (u16, String) {
    http(
        emu.control_addr().expect("control endpoint started"),
        "POST",
        path,
        None,
    )
    .await
}

/// The control endpoint's counters.
pub async fn counters(emu: &RunningEmulator) -> Value {
    let (status, body) = http(
        emu.control_addr().expect("control endpoint started"),
        "GET",
        "/counters",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("counters are JSON")
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(DEADLINE, what, cond).await;
}

/// Polls `cond` until it holds or `deadline` passes.
pub async fn eventually_within(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A self-signed certificate for `127.0.0.1`/`localhost` (PEM cert, PEM key, DER cert).
pub fn test_cert() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("rcgen generates a certificate");
    let der = ck.cert.der().clone();
    (ck.cert.pem(), ck.signing_key.serialize_pem(), der)
}

/// A rustls client config builder trusting `ca` only, with the ring provider.
fn trusting(
    ca: rustls::pki_types::CertificateDer<'static>,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("test CA added");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
}

/// A rustls client config trusting `ca` only, with the ring provider.
pub fn tls_client(ca: rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    Arc::new(trusting(ca).with_no_client_auth())
}

/// A running `hub-emulator` binary (killed when dropped) and the addresses it printed.
pub struct Binary {
    pub child: tokio::process::Child,
    pub mqtt: SocketAddr,
    pub ws: Option<SocketAddr>,
    pub service: Option<SocketAddr>,
    pub control: Option<SocketAddr>,
    /// The listening line as printed.
    pub line: String,
}

/// Starts the binary with `args` plus ephemeral loopback ports, and parses its
/// `listening mqtt=… tls=… ws=… service=… control=…` line.
pub async fn spawn_binary(args: &[&str]) -> Binary {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hub-emulator"))
        .args([
            "--mqtt-bind",
            "127.0.0.1:0",
            "--service-bind",
            "127.0.0.1:0",
            "--control-bind",
            "127.0.0.1:0",
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hub-emulator binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("listening line before the deadline")
        .expect("stdout readable")
        .expect("binary printed a line");
    let field = |name: &str| -> Option<SocketAddr> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    Binary {
        mqtt: field("mqtt").unwrap_or_else(|| panic!("no mqtt address in {line:?}")),
        ws: field("ws"),
        service: field("service"),
        control: field("control"),
        line,
        child,
    }
}

/// A self-signed client certificate: (DER certificate, DER PKCS#8 key).
pub fn client_cert(
    name: &str,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()])
        .expect("rcgen generates a certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    (ck.cert.der().clone(), key)
}

/// A rustls client config trusting `ca` and presenting `cert`/`key`.
pub fn tls_client_with_cert(
    ca: rustls::pki_types::CertificateDer<'static>,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let config = trusting(ca)
        .with_client_auth_cert(vec![cert], key)
        .expect("client certificate and key match");
    Arc::new(config)
}
