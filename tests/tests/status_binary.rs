//! `twinbridge status` and `twinbridge twin show` while the real `twinbridge run` holds the
//! store: they read it read-only (never the writer lock), report what the agent synced, and
//! the agent keeps running and stops cleanly afterwards; with field devices, it shows which
//! one is offline and why, and desired values acknowledged.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use device_protocols::sim::{SimMap, TcpSim, UnitMap};
use serde_json::{Value, json};
use twinbridge::store::ReadOnlyStore;
use twinbridge_e2e::{DEADLINE, TestHub, agent_binary, eventually, terminate};

const GATEWAY: &str = "gw-1";
const DEVICES: [&str; 2] = ["meter-01", "meter-02"];

/// Writes `config.toml` for `hub`; returns it and the store it names.
fn write_config(hub: &TestHub) -> (PathBuf, PathBuf) {
    let state_dir = hub.dir().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let mut text = hub.config_head(GATEWAY, &state_dir.display().to_string());
    for device in DEVICES {
        write!(text, "\n[[device]]\nid = \"{device}\"\n").expect("writing to a String");
    }
    let path = hub.dir().join("config.toml");
    std::fs::write(&path, text).expect("config written");
    (path, state_dir.join("twinbridge.db"))
}

fn local(db: &Path, device: &str) -> Option<Value> {
    let store = ReadOnlyStore::open(db).ok()?;
    Some(store.snapshot(device).ok()??.sync.local)
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(agent_binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TWINBRIDGE_CONFIG")
        .output()
        .expect("twinbridge runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_store_while_the_agent_runs() {
    let mut names = vec![GATEWAY];
    names.extend(DEVICES);
    let hub = TestHub::start(&names).await;
    let (config, db) = write_config(&hub);

    let missing = cli(&config, &["status"]);
    assert_eq!(missing.status.code(), Some(69), "no store yet");

    let mut child = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&config)
        .env("TWINBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("twinbridge starts");

    // The agent reports the gateway's own twin; wait until the hub holds it.
    let db_ref = &db;
    let hub_ref = &hub;
    eventually("the gateway twin converges", DEADLINE, || async move {
        local(db_ref, GATEWAY).is_some_and(|want| {
            want.as_object().is_some_and(|m| !m.is_empty()) && hub_ref.reported(GATEWAY).0 == want
        })
    })
    .await;

    // Status runs to completion while the agent holds the writer lock, many times over.
    let mut last = Value::Null;
    for _ in 0..5 {
        let out = cli(&config, &["status", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    }
    let devices = last["devices"].as_array().expect("devices");
    let ids: Vec<_> = devices.iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, [GATEWAY, DEVICES[0], DEVICES[1]]);
    let gateway = &devices[0];
    assert_eq!(gateway["role"], "gateway");
    assert_eq!(gateway["sync"]["inSync"], true, "{gateway}");
    assert!(
        gateway["sync"]["hubVersion"].as_i64().is_some(),
        "{gateway}"
    );

    let table = cli(&config, &["status"]);
    assert_eq!(table.status.code(), Some(0));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("in sync"), "{table}");

    let twin = cli(&config, &["twin", "show", GATEWAY, "--json"]);
    assert_eq!(twin.status.code(), Some(0));
    let twin: Value = serde_json::from_slice(&twin.stdout).expect("JSON on stdout");
    assert_eq!(twin["hubReported"], hub.reported(GATEWAY).0);

    // The agent was not blocked or disturbed: still running, and it stops cleanly.
    assert!(
        child.try_wait().expect("wait").is_none(),
        "agent still runs"
    );
    let status = terminate(child).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// Writes `config.toml` with `plc-01` (unit 1 of `plc`) and `ghost-09` (unit 9, absent), each
/// with a temperature and a writable setpoint; returns it and the store it names.
fn write_field_config(hub: &TestHub, plc: &TcpSim) -> (PathBuf, PathBuf) {
    let state_dir = hub.dir().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let mut text = hub.config_head(GATEWAY, &state_dir.display().to_string());
    write!(
        text,
        r#"
[[bus]]
name = "plc"
tcp = "{addr}"
timeout = "200ms"
"#,
        addr = plc.addr()
    )
    .expect("writing to a String");
    for (id, unit) in [("plc-01", 1), ("ghost-09", 9)] {
        write!(
            text,
            r#"
[[device]]
id = "{id}"
bus = "plc"
unit = {unit}
poll = "200ms"
points = [
  {{ name = "temperature", table = "input", address = 0, type = "u16", scale = 0.1 }},
  {{ name = "setpoint", table = "holding", address = 0, type = "u16", scale = 0.1, writable = true }},
]
"#
        )
        .expect("writing to a String");
    }
    let config = hub.dir().join("config.toml");
    std::fs::write(&config, text).expect("config written");
    (config, state_dir.join("twinbridge.db"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_an_offline_device_and_acknowledged_desired_values() {
    let hub = TestHub::start(&[GATEWAY, "plc-01", "ghost-09"]).await;
    // Unit 1 answers; unit 9 is not there.
    let plc = TcpSim::start(SimMap::new().with_unit(
        1,
        UnitMap::new().with_input(0, &[215]).with_holding(0, &[200]),
    ))
    .await
    .expect("Modbus TCP simulated");
    let (config, db) = write_field_config(&hub, &plc);

    let child = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&config)
        .env("TWINBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("twinbridge starts");

    let version = hub.set_desired("plc-01", &json!({"setpoint": 22.5}));
    let hub_ref = &hub;
    eventually(
        "the setpoint is acknowledged in the hub",
        DEADLINE,
        || async move { hub_ref.reported("plc-01").0["setpoint"]["av"] == json!(version) },
    )
    .await;
    let status = |args: &[&str]| {
        let out = cli(&config, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let config_ref = &config;
    eventually(
        "status shows plc-01 online and ghost-09 not",
        DEADLINE,
        || async move {
            let out = cli(config_ref, &["status", "--json"]);
            let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) else {
                return false;
            };
            let plc = &report["devices"][1];
            let ghost = &report["devices"][2];
            plc["link"]["online"] == true
                && plc["desiredVersion"] == json!(version)
                && plc["acksPending"] == json!([])
                && ghost["link"]["online"] == false
                && ghost["link"]["lastError"].is_string()
        },
    )
    .await;
    let (code, table) = status(&["status"]);
    assert_eq!(code, Some(0));
    let ghost_line = table
        .lines()
        .skip_while(|l| !l.starts_with("ghost-09"))
        .nth(1)
        .unwrap_or_default();
    assert!(ghost_line.starts_with("    link: "), "{table}");

    let (code, twin) = status(&["twin", "show", "plc-01", "--json"]);
    assert_eq!(code, Some(0));
    let twin: Value = serde_json::from_str(&twin).expect("JSON");
    assert_eq!(twin["desired"]["setpoint"], 22.5);
    assert_eq!(twin["acks"][0]["property"], "setpoint");
    assert_eq!(twin["acks"][0]["appliedVersion"], json!(version));
    assert_eq!(twin["acks"][0]["ack"]["ac"], 200);
    assert!(db.exists());
    let status = terminate(child).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
