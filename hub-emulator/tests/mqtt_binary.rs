//! The `hub-emulator` binary: registry file, printed addresses, `--help`, kill -9 + restart.

mod common;

use common::{DESIRED_FILTER, KEY_A, KEY_B, RES_FILTER, TestDevice, connect_with, spawn_binary};
use hub_emulator::sas;
use hub_emulator::state::now_epoch_secs;
use rumqttc::MqttOptions;
use serde_json::json;

fn registry(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("registry.toml");
    std::fs::write(
        &path,
        format!(
            "[[device]]\nid = \"meter-01\"\nprimary_key = \"{KEY_A}\"\nsecondary_key = \"{KEY_B}\"\n"
        ),
    )
    .expect("temp dir writable");
    path
}

async fn connect_device(mqtt: std::net::SocketAddr, id: &str) -> TestDevice {
    let mut o = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(
        hub_emulator::mqtt_username("myhub.example", id),
        sas::generate("myhub.example", id, KEY_B, now_epoch_secs() + 600),
    );
    let mut dev = connect_with(o).await.expect("accepted");
    dev.subscribe(&[RES_FILTER, DESIRED_FILTER]).await;
    dev
}

#[tokio::test]
async fn binary_serves_a_registry_file_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path());
    let state = dir.path().join("state.json");
    let args = [
        "--registry",
        reg.to_str().unwrap(),
        "--hostname",
        "myhub.example",
        "--state-file",
        state.to_str().unwrap(),
        "--log",
        "warn",
    ];
    let mut bin = spawn_binary(&args).await;
    assert!(bin.control.is_some() && bin.service.is_some());
    let mut dev = connect_device(bin.mqtt, "meter-01").await;
    assert_eq!(
        dev.patch_reported(&json!({"kwh": 12.5})).await.version,
        Some(2)
    );

    // kill -9: the acknowledged PATCH must already be on disk.
    bin.child.start_kill().unwrap();
    bin.child.wait().await.unwrap();
    dev.expect_closed().await;

    let bin = spawn_binary(&args).await;
    let mut dev = connect_device(bin.mqtt, "meter-01").await;
    let r = dev.get_twin().await;
    assert_eq!(r.body["reported"], json!({"kwh": 12.5, "$version": 2}));
}

#[tokio::test]
async fn json_registry_and_no_control() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    std::fs::write(
        &path,
        json!({"devices": [{"id": "meter-01", "primary_key": KEY_A, "secondary_key": KEY_B}]})
            .to_string(),
    )
    .unwrap();
    let bin = spawn_binary(&[
        "--registry",
        path.to_str().unwrap(),
        "--hostname",
        "myhub.example",
        "--no-control",
        "--log",
        "warn",
    ])
    .await;
    assert_eq!(bin.control, None);
    let mut dev = connect_device(bin.mqtt, "meter-01").await;
    assert_eq!(dev.get_twin().await.status, 200);
}

#[test]
fn help_documents_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub-emulator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--registry",
        "--hostname",
        "--mqtt-bind",
        "--ws-bind",
        "--tls-cert",
        "--tls-key",
        "--service-bind",
        "--no-service",
        "--service-key",
        "--control-bind",
        "--no-control",
        "--state-file",
        "--twin-ops-per-sec",
        "--sas-skew",
        "--log",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_registry_file_fails_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reg.toml");
    std::fs::write(&path, "[[device]]\nid = \"x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub-emulator"))
        .args([
            "--registry",
            path.to_str().unwrap(),
            "--mqtt-bind",
            "127.0.0.1:0",
            "--no-service",
            "--no-control",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reg.toml") && err.contains("primary_key"),
        "{err}"
    );
}

#[tokio::test]
async fn token_subcommand_prints_a_working_password() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub-emulator"))
        .args(["token", "--device", "meter-01", "--ttl", "10m"])
        .args([
            "--registry",
            reg.to_str().unwrap(),
            "--hostname",
            "myhub.example",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims = sas::verify(
        &token,
        "myhub.example",
        "meter-01",
        &[KEY_A],
        now_epoch_secs(),
    )
    .unwrap();
    assert!(claims.expiry_epoch_secs > now_epoch_secs() + 500);

    let bin = spawn_binary(&[
        "--registry",
        reg.to_str().unwrap(),
        "--hostname",
        "myhub.example",
        "--log",
        "warn",
    ])
    .await;
    let mut o = MqttOptions::new("meter-01", bin.mqtt.ip().to_string(), bin.mqtt.port());
    o.set_credentials(
        hub_emulator::mqtt_username("myhub.example", "meter-01"),
        token,
    );
    assert!(connect_with(o).await.is_ok());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub-emulator"))
        .args([
            "token",
            "--device",
            "nobody",
            "--registry",
            reg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
}
