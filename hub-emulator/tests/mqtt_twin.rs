//! Twin GET, reported PATCH and desired notifications over real sockets with rumqttc.

mod common;

use common::{
    DESIRED_FILTER, RES_FILTER, assert_iothub_error, connect, counters, parse_response, start,
};
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};

#[tokio::test]
async fn get_of_a_new_twin() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    let r = dev.get_twin().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, None);
    assert_eq!(
        r.body,
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );
}

#[tokio::test]
async fn reported_patch_then_get() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    let r = dev
        .patch_reported(&json!({"temperature": 21.5, "gateway": {"link": "up"}}))
        .await;
    assert_eq!((r.status, r.version, &r.body), (204, Some(2), &Value::Null));
    let r = dev
        .patch_reported(&json!({"gateway": {"link": null, "rssi": -70}}))
        .await;
    assert_eq!((r.status, r.version), (204, Some(3)));
    let r = dev.get_twin().await;
    assert_eq!(
        r.body["reported"],
        json!({"temperature": 21.5, "gateway": {"rssi": -70}, "$version": 3})
    );
    // The service side sees the same document, with metadata.
    let twin = emu.hub().twin_json("d1").unwrap();
    let reported = &twin["properties"]["reported"];
    assert_eq!(reported["gateway"], json!({"rssi": -70}));
    assert!(reported["$metadata"]["gateway"]["rssi"]["$lastUpdated"].is_string());
    assert!(reported["$metadata"]["gateway"].get("link").is_none());
    assert_eq!(twin["connectionState"], "Connected");
}

#[tokio::test]
async fn desired_change_is_notified_with_version() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    let twin = emu
        .hub()
        .patch_twin(
            "d1",
            &json!({"properties": {"desired": {"setpoint": 22, "mode": "eco"}}}),
            None,
        )
        .unwrap();
    assert_eq!(twin["properties"]["desired"]["$version"], 2);
    let p = dev.next_publish().await;
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let body: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body, json!({"setpoint": 22, "mode": "eco", "$version": 2}));
    // Deleting a property is notified as null.
    emu.hub()
        .patch_twin(
            "d1",
            &json!({"properties": {"desired": {"mode": null}}}),
            None,
        )
        .unwrap();
    let p = dev.next_publish().await;
    let body: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body, json!({"mode": null, "$version": 3}));
    let r = dev.get_twin().await;
    assert_eq!(r.body["desired"], json!({"setpoint": 22, "$version": 3}));
    assert_eq!(counters(&emu).await["desired_notifications"], 2);
}

#[tokio::test]
async fn desired_change_while_offline_is_seen_by_get() {
    let emu = start(|_| {}).await;
    emu.hub()
        .patch_twin("d1", &json!({"properties": {"desired": {"sp": 1}}}), None)
        .unwrap();
    let mut dev = connect(&emu, "d1").await;
    let r = dev.get_twin().await;
    assert_eq!(r.body["desired"], json!({"sp": 1, "$version": 2}));
    assert_eq!(counters(&emu).await["desired_notifications"], 0);
}

#[tokio::test]
async fn responses_go_only_to_the_requesting_connection() {
    let emu = start(|_| {}).await;
    let mut d1 = connect(&emu, "d1").await;
    let mut d2 = connect(&emu, "d2").await;
    // Same rid on both connections: each must get exactly its own answer.
    let rid1 = d1.send_patch_raw(br#"{"who": "d1"}"#.to_vec()).await;
    let rid2 = d2.send_get().await;
    assert_eq!(rid1, rid2);
    let r2 = d2.response(&rid2).await;
    assert_eq!(r2.status, 200);
    let r1 = d1.response(&rid1).await;
    assert_eq!(r1.status, 204);
    // A second round trip on each: had a foreign response leaked, it would come first here.
    let r = d2.get_twin().await;
    assert_eq!(r.body["reported"], json!({"$version": 1}));
    let r = d1.get_twin().await;
    assert_eq!(r.body["reported"], json!({"who": "d1", "$version": 2}));
}

#[tokio::test]
async fn rule_violations_leave_the_twin_unchanged() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.patch_reported(&json!({"keep": 1})).await.status, 204);
    let before = emu.hub().twin_json("d1").unwrap();

    let deep = (0..12).fold(json!(1), |v, i| json!({ format!("l{i}"): v }));
    let cases = [
        (json!({"a.b": 1}), 400_004),
        (json!({"a b": 1}), 400_004),
        (json!({"$x": 1}), 400_004),
        (json!({"big": 4_503_599_627_370_496_i64}), 400_004),
        (json!({"arr": [1, null]}), 400_004),
        (deep, 400_004),
        (
            json!({"huge": "x".repeat(4000), "h2": "y".repeat(4000), "h3": "z".repeat(4000), "h4": "w".repeat(4000), "h5": "v".repeat(4000), "h6": "u".repeat(4000), "h7": "t".repeat(4000), "h8": "s".repeat(4000), "h9": "r".repeat(4000)}),
            413_001,
        ),
        (json!([1, 2]), 400_004),
    ];
    for (patch, error_code) in cases {
        let r = dev.patch_reported(&patch).await;
        assert_iothub_error(&r, error_code);
    }
    // Not JSON at all.
    let rid = dev.send_patch_raw(b"{not json".to_vec()).await;
    assert_iothub_error(&dev.response(&rid).await, 400_004);

    let after = emu.hub().twin_json("d1").unwrap();
    assert_eq!(
        after["properties"]["reported"],
        before["properties"]["reported"]
    );
    assert_eq!(after["etag"], before["etag"]);
    let r = dev.get_twin().await;
    assert_eq!(r.body["reported"], json!({"keep": 1, "$version": 2}));
    let c = counters(&emu).await;
    assert_eq!(c["reported_patches"], 10);
    assert_eq!(c["responses_4xx"], 9);
    assert_eq!(c["responses_429"], 0);
}

#[tokio::test]
async fn twin_of_64_kb_round_trips() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    // Just under 32 KB per section, both sections: a ~64 KB GET response.
    let doc: serde_json::Map<String, Value> = (0..30)
        .map(|i| (format!("k{i:02}"), json!("v".repeat(1000))))
        .collect();
    let patch = Value::Object(doc.clone());
    emu.hub()
        .patch_twin("d1", &json!({"properties": {"desired": patch}}), None)
        .unwrap();
    let _ = dev.next_publish().await; // the desired notification
    assert_eq!(dev.patch_reported(&Value::Object(doc)).await.status, 204);
    let r = dev.get_twin().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["desired"]["k29"].as_str().map(str::len), Some(1000));
    assert_eq!(r.body["reported"]["k00"].as_str().map(str::len), Some(1000));
}

#[tokio::test]
async fn qos1_publish_is_acknowledged() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    dev.client
        .publish(
            "$iothub/twin/GET/?$rid=q1",
            QoS::AtLeastOnce,
            false,
            Vec::new(),
        )
        .await
        .unwrap();
    let mut acked = false;
    loop {
        match dev.next_event().await.expect("connection stays up") {
            Event::Incoming(Packet::PubAck(_)) => acked = true,
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(parse_response(&p).unwrap().status, 200);
                break;
            }
            _ => {}
        }
    }
    assert!(acked, "PUBACK before the response");
}

#[tokio::test]
async fn qos2_publish_closes_the_connection() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    dev.client
        .publish(
            "$iothub/twin/GET/?$rid=1",
            QoS::ExactlyOnce,
            false,
            Vec::new(),
        )
        .await
        .unwrap();
    dev.expect_closed().await;
    assert_eq!(counters(&emu).await["twin_gets"], 0);
}

#[tokio::test]
async fn unknown_topic_closes_the_connection() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    dev.client
        .publish("some/other/topic", QoS::AtMostOnce, false, Vec::new())
        .await
        .unwrap();
    dev.expect_closed().await;
}

#[tokio::test]
async fn telemetry_is_accepted() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    dev.client
        .publish(
            "devices/d1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    // The connection survives: a GET still works afterwards.
    assert_eq!(dev.get_twin().await.status, 200);
    assert_eq!(counters(&emu).await["telemetry"], 1);
}

#[tokio::test]
async fn at_most_five_subscriptions() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await; // 2 subscriptions
    let codes = dev
        .subscribe(&[
            "$iothub/methods/POST/#",
            "devices/d1/messages/devicebound/#",
            "$iothub/twin/res/+/#",
            "$iothub/twin/PATCH/properties/desired/+",
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    // Re-subscribing to an existing filter does not count as a new one.
    let codes = dev.subscribe(&[RES_FILTER, DESIRED_FILTER]).await;
    assert_eq!(
        codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 2]
    );
    // Filters the hub does not serve are refused.
    dev.client
        .unsubscribe("$iothub/methods/POST/#")
        .await
        .unwrap();
    let codes = dev
        .subscribe(&["devices/d2/messages/devicebound/#", "#"])
        .await;
    assert_eq!(codes, vec![SubscribeReasonCode::Failure; 2]);
}

#[tokio::test]
async fn no_response_without_subscription() {
    let emu = start(|_| {}).await;
    let token = emu.device_token("d1", 600).unwrap();
    let mut dev = common::connect_with(common::options(&emu, "d1", &emu.username("d1"), &token))
        .await
        .unwrap();
    // Only desired notifications: the GET is answered into the void.
    dev.subscribe(&[DESIRED_FILTER]).await;
    dev.client
        .publish(
            "$iothub/twin/GET/?$rid=1",
            QoS::AtLeastOnce,
            false,
            Vec::new(),
        )
        .await
        .unwrap();
    // The hub answers (and counts) a request before it acknowledges the PUBLISH.
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = dev.next_event().await.expect("connected") {
            break;
        }
    }
    emu.hub()
        .patch_twin("d1", &json!({"properties": {"desired": {"x": 1}}}), None)
        .unwrap();
    let p = dev.next_publish().await;
    assert!(
        p.topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "{p:?}"
    );
    let c = counters(&emu).await;
    assert_eq!(
        (c["twin_gets"].as_u64(), c["responses_2xx"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn desired_patch_through_the_service_api_reaches_the_device() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    let service = emu.service_addr().expect("service API started");
    let (status, body) = common::http(
        service,
        "PATCH",
        "/twins/d1?api-version=2021-04-12",
        Some(&json!({"properties": {"desired": {"setpoint": 19.5}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let p = dev.next_publish().await;
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let body: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body, json!({"setpoint": 19.5, "$version": 2}));
    // The device's reported change is visible through the service API.
    assert_eq!(
        dev.patch_reported(&json!({"setpoint": 19.5})).await.status,
        204
    );
    let (status, body) = common::http(service, "GET", "/twins/d1", None).await;
    assert_eq!(status, 200);
    let twin: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(twin["properties"]["reported"]["setpoint"], 19.5);
    assert_eq!(twin["connectionState"], "Connected");
}

#[tokio::test]
async fn many_devices_pipelining_patches_stay_isolated() {
    const DEVICES: usize = 20;
    const PATCHES: u64 = 10;
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i:02}")).collect();
    let emu = start(|c| {
        for id in &ids {
            c.devices.push(hub_emulator::state::DeviceIdentity::new(
                id.as_str(),
                common::KEY_A,
                common::KEY_B,
            ));
        }
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let mut dev = connect(&emu, &id).await;
        tasks.spawn(async move {
            // Send every PATCH before reading any response.
            let mut rids = Vec::new();
            for n in 0..PATCHES {
                let body = json!({"owner": id, "n": n}).to_string().into_bytes();
                rids.push(dev.send_patch_raw(body).await);
            }
            let mut versions = Vec::new();
            for rid in rids {
                let r = dev.response(&rid).await;
                assert_eq!(r.status, 204, "{id}: {r:?}");
                versions.push(r.version.expect("204 carries $version"));
            }
            assert_eq!(versions, (2..2 + PATCHES).collect::<Vec<_>>(), "{id}");
            let r = dev.get_twin().await;
            assert_eq!(
                r.body["reported"],
                json!({"owner": id, "n": PATCHES - 1, "$version": PATCHES + 1})
            );
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }
    let c = counters(&emu).await;
    assert_eq!(c["reported_patches"], DEVICES as u64 * PATCHES);
    assert_eq!(c["responses_2xx"], DEVICES as u64 * (PATCHES + 1));
}
