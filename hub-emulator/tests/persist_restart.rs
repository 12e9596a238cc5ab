//! Registry and twins survive an emulator restart with the same state file.

mod common;

use common::{connect, start};
use hub_emulator::state::DeviceIdentity;
use hub_emulator::{Config, Emulator};
use serde_json::json;

#[tokio::test]
async fn twins_and_registry_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub-state.json");
    let emu = start(|c| c.state_file = Some(state.clone())).await;
    // A device registered at runtime (not in the start config).
    emu.hub()
        .register_device(
            DeviceIdentity::new("late", common::KEY_B, common::KEY_A),
            None,
        )
        .unwrap();
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.patch_reported(&json!({"t": 20})).await.version, Some(2));
    assert_eq!(
        dev.patch_reported(&json!({"t": 21, "u": "C"}))
            .await
            .version,
        Some(3)
    );
    emu.hub()
        .patch_twin(
            "d1",
            &json!({"tags": {"site": "plant7"}, "properties": {"desired": {"sp": 5}}}),
            None,
        )
        .unwrap();
    let before = emu.hub().twin_json("d1").unwrap();
    drop(dev);
    emu.shutdown().await;

    // Restart with no devices in the config: everything comes from the state file.
    let mut config = Config::ephemeral();
    config.state_file = Some(state.clone());
    let emu = Emulator::start(config).await.unwrap();
    assert_eq!(emu.hub().device_ids(), ["d1", "d2", "late"]);
    let after = emu.hub().twin_json("d1").unwrap();
    for field in ["etag", "version", "tags", "properties"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(after["connectionState"], "Disconnected");
    // The keys survived too: the device connects and reads its twin.
    let mut dev = connect(&emu, "d1").await;
    let r = dev.get_twin().await;
    assert_eq!(
        r.body["reported"],
        json!({"t": 21, "u": "C", "$version": 3})
    );
    assert_eq!(r.body["desired"], json!({"sp": 5, "$version": 2}));
    assert_eq!(connect(&emu, "late").await.get_twin().await.status, 200);
    // Versions continue from where they were.
    assert_eq!(dev.patch_reported(&json!({"t": 22})).await.version, Some(4));
}

#[tokio::test]
async fn registry_file_updates_keys_of_persisted_devices() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub-state.json");
    let emu = start(|c| c.state_file = Some(state.clone())).await;
    emu.hub()
        .device_patch_reported("d1", &json!({"kept": true}))
        .unwrap();
    emu.shutdown().await;

    let mut config = Config::ephemeral();
    config.state_file = Some(state);
    config.devices = vec![DeviceIdentity::new(
        "d1",
        common::KEY_WRONG,
        common::KEY_WRONG,
    )];
    let emu = Emulator::start(config).await.unwrap();
    assert_eq!(
        emu.hub().identity("d1").unwrap().primary_key,
        common::KEY_WRONG
    );
    let twin = emu.hub().twin_json("d1").unwrap();
    assert_eq!(twin["properties"]["reported"]["kept"], true);
}

#[tokio::test]
async fn corrupt_state_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("broken.json");
    std::fs::write(&state, "{ not json").unwrap();
    let mut config = Config::ephemeral();
    config.state_file = Some(state);
    let err = Emulator::start(config).await.unwrap_err();
    assert!(err.to_string().contains("broken.json"), "{err}");
}

#[tokio::test]
async fn restart_on_the_same_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub-state.json");
    let emu = start(|c| c.state_file = Some(state.clone())).await;
    let (mqtt, service, control) = (emu.mqtt_addr(), emu.service_addr(), emu.control_addr());
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.patch_reported(&json!({"n": 1})).await.status, 204);
    emu.shutdown().await;
    // The device sees the hub go away.
    dev.expect_closed().await;

    let emu = start(|c| {
        c.state_file = Some(state.clone());
        c.mqtt_bind = mqtt;
        c.service_bind = service;
        c.control_bind = control;
    })
    .await;
    assert_eq!(emu.mqtt_addr(), mqtt);
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(
        dev.get_twin().await.body["reported"],
        json!({"n": 1, "$version": 2})
    );
}

/// A reported PATCH whose state-file write fails is answered 500 with IoT Hub's error body
/// (an SDK then retries instead of taking it for a success).
#[tokio::test]
async fn a_failed_state_write_is_answered_as_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub-state.json");
    let emu = start(|c| c.state_file = Some(state.clone())).await;
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.patch_reported(&json!({"t": 1})).await.status, 204);
    // The atomic write goes through `{state}.tmp`: a directory there makes it fail.
    std::fs::create_dir(dir.path().join("hub-state.json.tmp")).unwrap();
    let r = dev.patch_reported(&json!({"t": 2})).await;
    common::assert_iothub_error(&r, 500_001);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("hub-state.json"),
        "{r:?}"
    );
}

/// `lastActivityTime` (and `connectionStateUpdatedTime`) outlive a restart, as in IoT Hub,
/// instead of going back to "never".
#[tokio::test]
async fn last_activity_time_survives_a_restart() {
    const NEVER: &str = "0001-01-01T00:00:00Z";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hub-state.json");
    let restart = || {
        let mut config = Config::ephemeral();
        config.state_file = Some(state.clone());
        Emulator::start(config)
    };
    let time = |v: &serde_json::Value| {
        humantime::parse_rfc3339(v.as_str().unwrap()).unwrap_or_else(|e| panic!("{v}: {e}"))
    };

    // d1 is active, then disconnects before the restart.
    let emu = start(|c| c.state_file = Some(state.clone())).await;
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.get_twin().await.status, 200);
    drop(dev);
    common::eventually("d1 disconnected", || !emu.hub().is_connected("d1")).await;
    let device = emu.hub().device_json("d1").unwrap();
    let (active, state_changed) = (
        device["lastActivityTime"].clone(),
        device["connectionStateUpdatedTime"].clone(),
    );
    assert_ne!(active, NEVER);
    assert_ne!(state_changed, NEVER);
    emu.shutdown().await;

    let emu = restart().await.unwrap();
    let device = emu.hub().device_json("d1").unwrap();
    assert_eq!(device["lastActivityTime"], active);
    assert_eq!(device["connectionStateUpdatedTime"], state_changed);
    assert_eq!(
        emu.hub().twin_json("d1").unwrap()["lastActivityTime"],
        active
    );
    // A device that never connected is still "never".
    assert_eq!(
        emu.hub().twin_json("d2").unwrap()["lastActivityTime"],
        NEVER
    );

    // d1 still connected at shutdown: its activity up to then is kept.
    let mut dev = connect(&emu, "d1").await;
    assert_eq!(dev.get_twin().await.status, 200);
    let seen = emu.hub().twin_json("d1").unwrap()["lastActivityTime"].clone();
    assert!(time(&seen) > time(&active), "{seen} after {active}");
    emu.shutdown().await;
    let emu = restart().await.unwrap();
    let kept = emu.hub().twin_json("d1").unwrap()["lastActivityTime"].clone();
    assert!(time(&kept) >= time(&seen), "{kept} before {seen}");
    assert_eq!(
        emu.hub().twin_json("d1").unwrap()["connectionState"],
        "Disconnected"
    );
}
