//! MQTT over WebSocket (IoT Hub's port-443 transport): a real rumqttc client over `ws://` and
//! `wss://`, and the upgrade's refusals seen on the raw socket.

mod common;

use std::net::SocketAddr;

use common::{
    DEADLINE, DESIRED_FILTER, RES_FILTER, TestDevice, connect_with, spawn_binary, start, test_cert,
    tls_client,
};
use hub_emulator::RunningEmulator;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Options for `device_id` at the emulator's WebSocket listener, named by `host`.
fn ws_options(emu: &RunningEmulator, host: &str, device_id: &str) -> MqttOptions {
    let port = emu.ws_addr().expect("WebSocket listener started").port();
    let scheme = if emu.is_tls() { "wss" } else { "ws" };
    let url = format!("{scheme}://{host}:{port}/$iothub/websocket");
    let mut o = MqttOptions::new(device_id, url, port);
    let token = emu.device_token(device_id, 600).expect("device registered");
    o.set_credentials(emu.username(device_id), token);
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    o
}

/// GET, reported PATCH, a desired notification and a GET that shows both, over one connection.
async fn twin_round_trip(emu: &RunningEmulator, dev: &mut TestDevice) {
    dev.subscribe(&[RES_FILTER, DESIRED_FILTER]).await;
    assert!(emu.hub().is_connected("d1"));
    let r = dev.get_twin().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["reported"]["$version"], 1);

    let r = dev.patch_reported(&json!({"temperature": 21.5})).await;
    assert_eq!((r.status, r.version), (204, Some(2)), "{r:?}");

    emu.hub()
        .patch_twin(
            "d1",
            &json!({"properties": {"desired": {"setpoint": 19}}}),
            None,
        )
        .expect("desired patch applied");
    let p = dev.next_publish().await;
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let desired: serde_json::Value =
        serde_json::from_slice(&p.payload).expect("desired notification is JSON");
    assert_eq!(desired["setpoint"], 19);

    let r = dev.get_twin().await;
    assert_eq!(r.body["reported"]["temperature"], 21.5);
    assert_eq!(r.body["desired"]["setpoint"], 19);
    // Packets larger than a read buffer cross intact both ways (a 27 KB patch, then the twin).
    let big = "x".repeat(3000);
    let patch: serde_json::Map<_, _> = (0..9).map(|i| (format!("k{i}"), json!(big))).collect();
    let r = dev.patch_reported(&serde_json::Value::Object(patch)).await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = dev.get_twin().await;
    assert_eq!(r.body["reported"]["k8"], json!(big));
}

#[tokio::test]
async fn plain_websocket_carries_a_twin_session() {
    let emu = start(|_| {}).await;
    let addr = emu
        .ws_addr()
        .expect("ephemeral config starts the WebSocket listener");
    assert_ne!(addr.port(), emu.mqtt_addr().port());
    assert!(
        emu.listening_line().contains(&format!(" ws={addr} ")),
        "{}",
        emu.listening_line()
    );
    let mut o = ws_options(&emu, "127.0.0.1", "d1");
    o.set_transport(Transport::Ws);
    let mut dev = connect_with(o)
        .await
        .expect("WebSocket connection accepted");
    twin_round_trip(&emu, &mut dev).await;
}

#[tokio::test]
async fn websocket_over_tls_carries_a_twin_session() {
    let (cert_pem, key_pem, der) = test_cert();
    let server = hub_emulator::tls::server_config(
        vec![
            rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap(),
        ],
        rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let emu = start(|c| c.tls = Some(server)).await;
    let mut o = ws_options(&emu, "localhost", "d1");
    o.set_transport(Transport::wss_with_config(TlsConfiguration::Rustls(
        tls_client(der),
    )));
    let mut dev = connect_with(o).await.expect("wss connection accepted");
    twin_round_trip(&emu, &mut dev).await;

    // The listener speaks TLS only: a plain ws:// client does not get through.
    let mut plain = ws_options(&emu, "localhost", "d2");
    plain.set_transport(Transport::Ws);
    assert!(connect_with(plain).await.is_err());
    assert!(!emu.hub().is_connected("d2"));
}

#[tokio::test]
async fn wrong_credentials_over_websocket_are_refused_like_over_tcp() {
    let emu = start(|_| {}).await;
    let mut o = ws_options(&emu, "127.0.0.1", "d1");
    o.set_credentials(emu.username("d1"), "SharedAccessSignature sr=x&sig=y&se=1");
    o.set_transport(Transport::Ws);
    match connect_with(o).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::NotAuthorized);
        }
        other => panic!("expected CONNACK 5, got {:?}", other.map(|_| ())),
    }
}

/// Sends an upgrade request for `path` offering `protocol`; the HTTP status line and headers.
async fn upgrade_request(addr: SocketAddr, path: &str, protocol: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("WebSocket listener accepts");
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("request sent");
    // Read up to the end of the headers (a successful upgrade keeps the socket open).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(DEADLINE, async {
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.expect("socket readable") == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await
    .expect("an HTTP answer before the deadline");
    String::from_utf8(head).expect("HTTP head is ASCII")
}

#[tokio::test]
async fn upgrade_checks_path_and_subprotocol() {
    let emu = start(|_| {}).await;
    let addr = emu.ws_addr().unwrap();

    let ok = upgrade_request(addr, "/$iothub/websocket", Some("mqtt")).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert!(
        ok.lines()
            .any(|l| l.eq_ignore_ascii_case("sec-websocket-protocol: mqtt")),
        "{ok}"
    );
    // Clients that offer several subprotocols get mqtt chosen.
    let ok = upgrade_request(addr, "/$iothub/websocket", Some("mqttv3.1, mqtt")).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");

    let wrong_path = upgrade_request(addr, "/mqtt", Some("mqtt")).await;
    assert!(wrong_path.starts_with("HTTP/1.1 404"), "{wrong_path}");
    let no_protocol = upgrade_request(addr, "/$iothub/websocket", None).await;
    assert!(no_protocol.starts_with("HTTP/1.1 400"), "{no_protocol}");
    assert_eq!(emu.hub().counters.snapshot().connects, 0);
}

#[tokio::test]
async fn binary_serves_websocket_when_asked_and_names_it_in_its_line() {
    let with = spawn_binary(&["--ws-bind", "127.0.0.1:0"]).await;
    let ws = with.ws.expect("ws=ADDR in the listening line");
    let ok = upgrade_request(ws, "/$iothub/websocket", Some("mqtt")).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    let without = spawn_binary(&[]).await;
    assert!(without.ws.is_none());
    assert!(without.line.contains(" ws=off "), "{}", without.line);
}
