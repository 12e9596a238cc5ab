//! Throttling (429), keep-alive enforcement and raw-protocol violations over real sockets.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{DEADLINE, assert_iothub_error, connect, counters, start};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::test]
async fn twin_requests_above_the_rate_get_429() {
    // One operation per 1000 s: the first request takes the only token, deterministically.
    let emu = start(|c| c.twin_ops_per_sec = Some(0.001)).await;
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.get_twin().await.status, 200);
    let r = dev.get_twin().await;
    assert_iothub_error(&r, 429_001);
    let r = dev.patch_reported(&json!({"x": 1})).await;
    assert_iothub_error(&r, 429_001);
    // The throttled PATCH changed nothing.
    let twin = emu.hub().twin_json("d1").unwrap();
    assert_eq!(twin["properties"]["reported"]["$version"], 1);
    let c = counters(&emu).await;
    assert_eq!(c["twin_gets"], 2);
    assert_eq!(c["reported_patches"], 1);
    assert_eq!(c["responses_2xx"], 1);
    assert_eq!(c["responses_429"], 2);
    assert_eq!(c["responses_4xx"], 2);
}

#[tokio::test]
async fn throttle_is_hub_wide() {
    let emu = start(|c| c.twin_ops_per_sec = Some(0.001)).await;
    let mut d1 = connect(&emu, "d1").await;
    let mut d2 = connect(&emu, "d2").await;
    assert_eq!(d1.get_twin().await.status, 200);
    assert_eq!(d2.get_twin().await.status, 429);
}

/// Writes one MQTT packet with rumqttc's codec.
async fn write(s: &mut TcpStream, p: Packet) {
    let mut buf = BytesMut::new();
    p.write(&mut buf, 1 << 20).expect("packet encodes");
    s.write_all(&buf).await.expect("hub socket writable");
}

/// Reads one MQTT packet, or `None` when the hub closed the socket.
async fn read(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(p) => return Some(p),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet from the hub: {e}"),
        }
        let n = tokio::time::timeout(DEADLINE, s.read_buf(buf))
            .await
            .expect("hub answers or closes before the deadline")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
    }
}

async fn raw_connect(
    emu: &hub_emulator::RunningEmulator,
    keep_alive: u16,
) -> (TcpStream, BytesMut) {
    let mut s = TcpStream::connect(emu.mqtt_addr())
        .await
        .expect("MQTT listener accepts");
    let mut c = Connect::new("d1");
    c.keep_alive = keep_alive;
    let token = emu.device_token("d1", 600).expect("d1 registered");
    c.set_login(emu.username("d1"), token);
    write(&mut s, Packet::Connect(c)).await;
    let mut buf = BytesMut::new();
    match read(&mut s, &mut buf).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    (s, buf)
}

#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let emu = start(|_| {}).await;
    let (mut s, mut buf) = raw_connect(&emu, 1).await;
    // Say nothing: the hub must close the socket (after 1.5 s).
    assert_eq!(read(&mut s, &mut buf).await, None);
    assert!(!emu.hub().is_connected("d1"));
    assert_eq!(counters(&emu).await["disconnects_by_hub"], 1);
}

#[tokio::test]
async fn pinging_client_stays_connected_past_the_keep_alive() {
    let emu = start(|_| {}).await;
    let (mut s, mut buf) = raw_connect(&emu, 1).await;
    // Four pings 0.5 s apart span 2 s, beyond the 1.5 s limit of a silent client.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        write(&mut s, Packet::PingReq).await;
        assert_eq!(read(&mut s, &mut buf).await, Some(Packet::PingResp));
    }
    assert!(emu.hub().is_connected("d1"));
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    let emu = start(|_| {}).await;
    let mut s = TcpStream::connect(emu.mqtt_addr()).await.unwrap();
    write(&mut s, Packet::PingReq).await;
    let mut buf = BytesMut::new();
    assert_eq!(read(&mut s, &mut buf).await, None);
}

#[tokio::test]
async fn second_connect_on_a_session_closes_it() {
    let emu = start(|_| {}).await;
    let (mut s, mut buf) = raw_connect(&emu, 30).await;
    let mut c = Connect::new("d1");
    c.set_login(emu.username("d1"), emu.device_token("d1", 600).unwrap());
    write(&mut s, Packet::Connect(c)).await;
    assert_eq!(read(&mut s, &mut buf).await, None);
}

#[tokio::test]
async fn qos2_publish_from_raw_client_closes_without_ack() {
    let emu = start(|_| {}).await;
    let (mut s, mut buf) = raw_connect(&emu, 30).await;
    let mut p = rumqttc::Publish::new("$iothub/twin/GET/?$rid=1", QoS::ExactlyOnce, Vec::new());
    p.pkid = 7;
    write(&mut s, Packet::Publish(p)).await;
    // No PUBREC, no response: just the close.
    assert_eq!(read(&mut s, &mut buf).await, None);
}
