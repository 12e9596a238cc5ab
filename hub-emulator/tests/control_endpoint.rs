//! The control endpoint: dropping connections, refusing connections, delaying responses,
//! changing the throttle and reading exact counters.

mod common;

use common::{
    connect, connect_with, control, counters, eventually, http, http_bytes, options, start,
};
use rumqttc::{ConnectReturnCode, ConnectionError};
use serde_json::{Value, json};

#[tokio::test]
async fn counters_count_exact_traffic_and_reset() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    dev.get_twin().await;
    dev.patch_reported(&json!({"a": 1})).await;
    dev.patch_reported(&json!({"a.b": 1})).await;
    emu.hub()
        .patch_twin("d1", &json!({"properties": {"desired": {"x": 1}}}), None)
        .unwrap();
    dev.next_publish().await;
    let c = counters(&emu).await;
    assert_eq!(
        c,
        json!({
            "connects": 1, "connects_refused": 0, "disconnects_by_hub": 0,
            "twin_gets": 1, "reported_patches": 2, "desired_notifications": 1,
            "responses_2xx": 2, "responses_4xx": 1, "responses_429": 0, "telemetry": 0,
        })
    );
    assert_eq!(control(&emu, "/counters/reset").await.0, 204);
    let c = counters(&emu).await;
    assert!(c.as_object().unwrap().values().all(|v| v == 0), "{c}");
}

#[tokio::test]
async fn drop_one_device_leaves_the_others() {
    let emu = start(|_| {}).await;
    let mut d1 = connect(&emu, "d1").await;
    let mut d2 = connect(&emu, "d2").await;
    let (status, body) = control(&emu, "/drop/d1").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"dropped": 1})
    );
    d1.expect_closed().await;
    assert_eq!(d2.get_twin().await.status, 200);
    let (status, body) = http(emu.control_addr().unwrap(), "GET", "/connections", None).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!(["d2"]));
    assert_eq!(control(&emu, "/drop/ghost").await.0, 404);
}

#[tokio::test]
async fn drop_all_devices() {
    let emu = start(|_| {}).await;
    let mut d1 = connect(&emu, "d1").await;
    let mut d2 = connect(&emu, "d2").await;
    let (_, body) = control(&emu, "/drop").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"dropped": 2})
    );
    d1.expect_closed().await;
    d2.expect_closed().await;
    eventually("no connections", || {
        emu.hub().connected_devices().is_empty()
    })
    .await;
    // A dropped device may reconnect at once.
    assert_eq!(connect(&emu, "d1").await.get_twin().await.status, 200);
}

#[tokio::test]
async fn refuse_connections_then_allow_again() {
    let emu = start(|_| {}).await;
    assert_eq!(control(&emu, "/refuse?for=1h").await.0, 204);
    let token = emu.device_token("d1", 600).unwrap();
    match connect_with(options(&emu, "d1", &emu.username("d1"), &token)).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::ServiceUnavailable);
        }
        other => panic!("expected refusal, got {:?}", other.err()),
    }
    assert_eq!(control(&emu, "/refuse?for=0s").await.0, 204);
    assert!(
        connect_with(options(&emu, "d1", &emu.username("d1"), &token))
            .await
            .is_ok()
    );
    assert_eq!(control(&emu, "/refuse?for=soon").await.0, 400);
    let c = counters(&emu).await;
    assert_eq!(
        (c["connects"].as_u64(), c["connects_refused"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn delayed_twin_response_is_overtaken_by_a_notification() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(control(&emu, "/delay?twin_responses=1h").await.0, 204);
    let rid = dev.send_get().await;
    // The GET was taken (and counted) but its answer is held back...
    eventually("GET received", || {
        emu.hub().counters.snapshot().twin_gets == 1
    })
    .await;
    emu.hub()
        .patch_twin("d1", &json!({"properties": {"desired": {"x": 1}}}), None)
        .unwrap();
    // ...so the desired notification arrives first.
    let p = dev.next_publish().await;
    assert!(
        p.topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "{p:?} (GET rid {rid})"
    );
    // Without delay, answers come at once again.
    assert_eq!(control(&emu, "/delay?twin_responses=0s").await.0, 204);
    let rid2 = dev.send_patch_raw(br#"{"y": 2}"#.to_vec()).await;
    assert_eq!(dev.response(&rid2).await.status, 204);
}

#[tokio::test]
async fn throttle_can_be_changed_at_runtime() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(control(&emu, "/throttle?ops_per_sec=0.001").await.0, 204);
    assert_eq!(dev.get_twin().await.status, 200);
    assert_eq!(dev.get_twin().await.status, 429);
    assert_eq!(control(&emu, "/throttle?ops_per_sec=off").await.0, 204);
    assert_eq!(dev.get_twin().await.status, 200);
    assert_eq!(control(&emu, "/throttle?ops_per_sec=-3").await.0, 400);
    let (status, body) = http(emu.control_addr().unwrap(), "GET", "/faults", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["twin_ops_per_sec"],
        Value::Null
    );
}

/// `POST /inject/{id}/desired?version=N` hands the device exactly the bytes given, on the
/// desired topic, and leaves the twin alone.
#[tokio::test]
async fn injected_desired_notifications_reach_the_device_verbatim() {
    let emu = start(|_| {}).await;
    let control_addr = emu.control_addr().unwrap();
    let mut dev = connect(&emu, "d1").await;
    let before = emu.hub().twin_json("d1").unwrap();

    let deep = (0..12).fold(json!(1), |v, i| json!({ format!("l{i}"): v }));
    let bodies: [(u64, Vec<u8>); 3] = [
        (7, b"{not json".to_vec()),
        (8, deep.to_string().into_bytes()),
        (2, vec![0xff, 0x00, 0xfe]),
    ];
    for (version, body) in &bodies {
        let path = format!("/inject/d1/desired?version={version}");
        let (status, text) = http_bytes(control_addr, "POST", &path, body).await;
        assert_eq!(status, 202, "{text}");
        let p = dev.next_publish().await;
        assert_eq!(
            p.topic,
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
        );
        assert_eq!(&p.payload[..], &body[..]);
    }
    let after = emu.hub().twin_json("d1").unwrap();
    for field in ["etag", "version", "tags", "properties"] {
        assert_eq!(
            after[field], before[field],
            "injection touched the twin's {field}"
        );
    }
    // The device's ordinary traffic is unaffected.
    assert_eq!(dev.get_twin().await.body["desired"]["$version"], 1);

    // Unknown device 404, registered but offline 409, no version 400: nothing is sent.
    let (status, _) = http_bytes(
        control_addr,
        "POST",
        "/inject/ghost/desired?version=1",
        b"{}",
    )
    .await;
    assert_eq!(status, 404);
    let (status, text) =
        http_bytes(control_addr, "POST", "/inject/d2/desired?version=1", b"{}").await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("not connected"), "{text}");
    let (status, _) = http_bytes(control_addr, "POST", "/inject/d1/desired", b"{}").await;
    assert_eq!(status, 400);
    let (status, _) = http_bytes(control_addr, "POST", "/inject/d1/desired?version=x", b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        dev.get_twin().await.status,
        200,
        "no stray notification came first"
    );
}
