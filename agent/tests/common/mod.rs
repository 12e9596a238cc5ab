//! Shared helpers for the hub-link tests (and the sync driver's): a TLS `hub-emulator` with
//! registered devices and `LinkSettings` pointing at it, a tiny HTTP client for its control
//! and service endpoints, a tiny HTTP CONNECT proxy, and deadline-bounded waits. Nothing
//! sleeps to synchronise.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use hub_emulator::state::DeviceIdentity;
use hub_emulator::{Config, Emulator, RunningEmulator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use twinbridge::hub::{Credential, LinkSettings, Pacing, RateLimiter, Secret, SessionEvent};

/// Primary key of every test device (base64).
pub const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Secondary key of every test device.
pub const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// A key no device has.
pub const KEY_WRONG: &str = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nISE=";

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A running TLS emulator, the CA that signed its certificate, and link settings for it.
pub struct TestHub {
    pub emu: RunningEmulator,
    /// Holds the CA file; removed on drop.
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM) that signed the emulator's server certificate.
    pub ca_file: PathBuf,
    /// The CA certificate (DER).
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    /// Settings pointing at the emulator: host `localhost`, its port, the CA file, fast
    /// backoff (50 ms → 500 ms) and a 5 s request timeout.
    pub settings: LinkSettings,
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it:
/// (CA PEM, CA DER, server rustls config).
pub fn test_pki() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    Arc<rustls::ServerConfig>,
) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "twinbridge test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let server = hub_emulator::tls::server_config(
        vec![server_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .expect("server TLS config");
    (ca.pem(), ca.der().clone(), server)
}

/// Starts a TLS emulator (host name `localhost`) with `devices` registered (keys
/// [`KEY_A`]/[`KEY_B`]), after `tweak` adjusted its config.
pub async fn start_hub_with(devices: &[&str], tweak: impl FnOnce(&mut Config)) -> TestHub {
    let (ca_pem, ca_der, server) = test_pki();
    let mut config = Config::ephemeral();
    config.hostname = "localhost".into();
    config.tls = Some(server);
    for id in devices {
        config.devices.push(DeviceIdentity::new(*id, KEY_A, KEY_B));
    }
    tweak(&mut config);
    let emu = Emulator::start(config).await.expect("emulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("CA file written");
    let mut settings = LinkSettings::new("localhost");
    settings.port = Some(emu.mqtt_addr().port());
    settings.ca_file = Some(ca_file.clone());
    settings.backoff = BackoffConfig::new(Duration::from_millis(50), Duration::from_millis(500));
    settings.request_timeout = Duration::from_secs(5);
    settings.keep_alive = Duration::from_secs(30);
    TestHub {
        emu,
        dir,
        ca_file,
        ca_der,
        settings,
    }
}

/// [`start_hub_with`] without tweaks.
pub async fn start_hub(devices: &[&str]) -> TestHub {
    start_hub_with(devices, |_| {}).await
}

/// Pacing that never waits.
pub fn unpaced() -> Pacing {
    Pacing {
        connects: RateLimiter::unlimited(),
        gets: RateLimiter::unlimited(),
        updates: RateLimiter::unlimited(),
    }
}

/// The credential of a test device (primary key).
pub fn key_a() -> Credential {
    Credential::SymmetricKey(Secret::new(KEY_A))
}

/// The next session event, failing the test after [`DEADLINE`].
pub async fn next_event(events: &mut mpsc::Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("a session event before the deadline")
        .expect("the session task is running")
}

/// Skips events until one matches `pred`; returns it and the ones skipped.
pub async fn wait_event(
    events: &mut mpsc::Receiver<SessionEvent>,
    what: &str,
    pred: impl Fn(&SessionEvent) -> bool,
) -> (SessionEvent, Vec<SessionEvent>) {
    let mut skipped = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ev = tokio::time::timeout_at(end, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {skipped:?}"))
            .expect("the session task is running");
        if pred(&ev) {
            return (ev, skipped);
        }
        skipped.push(ev);
    }
}

/// Waits for `Connected`.
pub async fn connected(events: &mut mpsc::Receiver<SessionEvent>) -> Vec<SessionEvent> {
    wait_event(events, "Connected", |e| *e == SessionEvent::Connected)
        .await
        .1
}

/// Polls `cond` until it holds; fails the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`) with a JSON body: status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    http_raw(addr, method, path, body.as_bytes()).await
}

/// A minimal HTTP/1.1 request (`Connection: close`) with any bytes as the body.
pub async fn http_raw(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("HTTP write");
    s.write_all(body).await.expect("HTTP write");
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

/// `POST` to the emulator's control endpoint (e.g. `/drop/d1`, `/refuse?for=2s`); asserts 2xx.
pub async fn control(emu: &RunningEmulator, path: &str) -> String {
    let (status, body) = http(
        emu.control_addr().expect("control endpoint started"),
        "POST",
        path,
        None,
    )
    .await;
    assert!((200..300).contains(&status), "POST {path}: {status} {body}");
    body
}

/// The emulator's traffic counters.
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

/// One counter (`connects`, `connects_refused`, `disconnects_by_hub`, `twin_gets`, …).
pub async fn counter(emu: &RunningEmulator, name: &str) -> u64 {
    counters(emu)
        .await
        .get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// The twin as the service API shows it.
pub async fn service_twin(emu: &RunningEmulator, device_id: &str) -> Value {
    let (status, body) = http(
        emu.service_addr().expect("service API started"),
        "GET",
        &format!("/twins/{device_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("twin is JSON")
}

/// Merge-patches desired properties through the service API; returns the new twin.
pub async fn set_desired(emu: &RunningEmulator, device_id: &str, desired: &Value) -> Value {
    let (status, body) = http(
        emu.service_addr().expect("service API started"),
        "PATCH",
        &format!("/twins/{device_id}"),
        Some(&json!({ "properties": { "desired": desired } })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("twin is JSON")
}

/// Makes the emulator publish `payload` (any bytes) as a desired notification with
/// `$version={version}` to the device's live connection, the twin untouched.
pub async fn inject_desired(emu: &RunningEmulator, device_id: &str, version: u64, payload: &[u8]) {
    let (status, body) = http_raw(
        emu.control_addr().expect("control endpoint started"),
        "POST",
        &format!("/inject/{device_id}/desired?version={version}"),
        payload,
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

/// A tiny HTTP CONNECT proxy: accepts, reads `CONNECT host:port HTTP/1.1` and its headers,
/// dials the target, answers 200 and copies both ways. Counts the tunnels it opened and
/// remembers the targets and `Proxy-Authorization` headers it saw.
/// What a proxy saw per tunnel request: the `CONNECT` target and `Proxy-Authorization`.
pub type ProxyLog = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

pub struct TestProxy {
    pub addr: SocketAddr,
    pub tunnels: Arc<AtomicUsize>,
    pub seen: ProxyLog,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProxy {
    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

/// Starts a [`TestProxy`] on an ephemeral loopback port.
pub async fn start_proxy() -> TestProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy binds");
    let addr = listener.local_addr().expect("proxy address");
    let tunnels = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (t, s) = (tunnels.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (t, s) = (t.clone(), s.clone());
            tokio::spawn(async move {
                let _ = tunnel(stream, &t, &s).await;
            });
        }
    });
    TestProxy {
        addr,
        tunnels,
        seen,
        task,
    }
}

async fn tunnel(
    stream: tokio::net::TcpStream,
    tunnels: &AtomicUsize,
    seen: &std::sync::Mutex<Vec<(String, Option<String>)>>,
) -> std::io::Result<()> {
    let mut client = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    client.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        client
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Ok(());
    };
    let target = target.to_owned();
    let mut auth = None;
    loop {
        let mut header = String::new();
        if client.read_line(&mut header).await? == 0 {
            return Ok(());
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("proxy-authorization")
        {
            auth = Some(value.trim().to_owned());
        }
    }
    seen.lock()
        .expect("proxy log lock")
        .push((target.clone(), auth));
    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
        client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            .await?;
        return Ok(());
    };
    client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tunnels.fetch_add(1, Ordering::SeqCst);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
