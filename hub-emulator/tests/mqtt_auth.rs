//! CONNECT authentication over real sockets with rumqttc as the device.

mod common;

use common::{
    KEY_A, KEY_B, KEY_WRONG, connect, connect_with, counters, eventually, options, start,
};
use hub_emulator::sas;
use hub_emulator::state::now_epoch_secs;
use rumqttc::{ConnectReturnCode, ConnectionError};

fn refused(r: Result<common::TestDevice, ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refused CONNACK, got {e:?}"),
        Ok(_) => panic!("expected a refused CONNACK, got a connection"),
    }
}

#[tokio::test]
async fn valid_token_with_either_key_is_accepted() {
    let emu = start(|_| {}).await;
    for key in [KEY_A, KEY_B] {
        let token = sas::generate("127.0.0.1", "d1", key, now_epoch_secs() + 600);
        let dev = connect_with(options(&emu, "d1", &emu.username("d1"), &token)).await;
        assert!(dev.is_ok(), "key {key} refused");
        drop(dev);
        eventually("d1 disconnected", || !emu.hub().is_connected("d1")).await;
    }
    let twin = emu.hub().twin_json("d1").unwrap();
    assert_ne!(twin["lastActivityTime"], "0001-01-01T00:00:00Z");
    assert_eq!(counters(&emu).await["connects"], 2);
}

#[tokio::test]
async fn wrong_key_is_not_authorized() {
    let emu = start(|_| {}).await;
    let token = sas::generate("127.0.0.1", "d1", KEY_WRONG, now_epoch_secs() + 600);
    let code = refused(connect_with(options(&emu, "d1", &emu.username("d1"), &token)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    assert!(!emu.hub().is_connected("d1"));
    let c = counters(&emu).await;
    assert_eq!(
        (c["connects"].as_u64(), c["connects_refused"].as_u64()),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn expired_token_is_not_authorized() {
    let emu = start(|_| {}).await;
    let token = sas::generate("127.0.0.1", "d1", KEY_A, now_epoch_secs() - 1);
    let code = refused(connect_with(options(&emu, "d1", &emu.username("d1"), &token)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn clock_skew_is_tolerated_when_configured() {
    let emu = start(|c| c.sas_skew = std::time::Duration::from_mins(5)).await;
    let slightly_expired = sas::generate("127.0.0.1", "d1", KEY_A, now_epoch_secs() - 60);
    assert!(
        connect_with(options(&emu, "d1", &emu.username("d1"), &slightly_expired))
            .await
            .is_ok()
    );
    let long_expired = sas::generate("127.0.0.1", "d1", KEY_A, now_epoch_secs() - 600);
    let code = refused(connect_with(options(&emu, "d1", &emu.username("d1"), &long_expired)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn token_for_another_device_is_not_authorized() {
    let emu = start(|_| {}).await;
    // d2 has the same keys, so only `sr` tells the tokens apart.
    let token = emu.device_token("d2", 600).unwrap();
    let code = refused(connect_with(options(&emu, "d1", &emu.username("d1"), &token)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn unknown_device_is_not_authorized() {
    let emu = start(|_| {}).await;
    let token = sas::generate("127.0.0.1", "ghost", KEY_A, now_epoch_secs() + 600);
    let code = refused(connect_with(options(&emu, "ghost", &emu.username("ghost"), &token)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn wrong_username_is_bad_username_or_password() {
    let emu = start(|_| {}).await;
    let token = emu.device_token("d1", 600).unwrap();
    for username in [
        "127.0.0.1/d1",                          // no api-version
        "127.0.0.1/d1/?foo=bar",                 // still no api-version
        "other.host/d1/?api-version=2021-04-12", // another hub
        "d1",
    ] {
        let code = refused(connect_with(options(&emu, "d1", username, &token)).await);
        assert_eq!(code, ConnectReturnCode::BadUserNamePassword, "{username}");
    }
}

#[tokio::test]
async fn client_id_must_match_username() {
    let emu = start(|_| {}).await;
    let token = emu.device_token("d1", 600).unwrap();
    let code = refused(connect_with(options(&emu, "d2", &emu.username("d1"), &token)).await);
    assert_eq!(code, ConnectReturnCode::BadClientId);
}

#[tokio::test]
async fn second_connection_kicks_the_first() {
    let emu = start(|_| {}).await;
    let mut first = connect(&emu, "d1").await;
    let mut second = connect(&emu, "d1").await;
    first.expect_closed().await;
    // The newer connection still works and the hub still counts the device as connected.
    let r = second.get_twin().await;
    assert_eq!(r.status, 200);
    assert!(emu.hub().is_connected("d1"));
    assert_eq!(
        emu.hub().twin_json("d1").unwrap()["connectionState"],
        "Connected"
    );
    let c = counters(&emu).await;
    assert_eq!(c["connects"], 2);
    assert_eq!(c["disconnects_by_hub"], 1);
}

#[tokio::test]
async fn token_expiring_while_connected_closes_the_connection() {
    let emu = start(|_| {}).await; // no tolerated skew
    // Two to three seconds of validity: time to connect even on a loaded machine.
    let token = sas::generate("127.0.0.1", "d1", KEY_A, now_epoch_secs() + 3);
    let mut dev = connect_with(options(&emu, "d1", &emu.username("d1"), &token))
        .await
        .expect("token still valid");
    dev.expect_closed().await;
    eventually("d1 disconnected", || !emu.hub().is_connected("d1")).await;
    assert_eq!(
        emu.hub().twin_json("d1").unwrap()["connectionState"],
        "Disconnected"
    );
}

#[tokio::test]
async fn disabled_device_is_refused_and_kicked() {
    let emu = start(|_| {}).await;
    let mut dev = connect(&emu, "d1").await;
    let mut identity = emu.hub().identity("d1").unwrap();
    identity.status = hub_emulator::state::DeviceStatus::Disabled;
    emu.hub().register_device(identity, None).unwrap();
    dev.expect_closed().await;
    let token = emu.device_token("d1", 600).unwrap();
    let code = refused(connect_with(options(&emu, "d1", &emu.username("d1"), &token)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}
