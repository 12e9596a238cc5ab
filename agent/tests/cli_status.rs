//! `twinbridge status` and `twinbridge twin show` through the real binary, against a store
//! written here with `twinbridge::store::Store`: JSON fields, the table, the removed device,
//! the missing store (exit 69) and an invalid configuration (exit 78).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

use twinbridge::store::{DesiredUpdate, HistoryLimits, Store, StoreOptions};

fn twinbridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinbridge"));
    cmd.env_remove("TWINBRIDGE_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// A configuration with the gateway, an identity-only device and a Modbus device with
/// writable points, its store in `<dir>/state`.
fn config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        r#"
[gateway]
id = "gw-1"
state_dir = "state"

[hub]
host = "127.0.0.1"

[[bus]]
name = "rs485-a"
port = "/dev/ttyUSB0"

[[device]]
id = "meter-01"

[[device]]
id = "boiler-03"
bus = "rs485-a"
unit = 7
points = [
  { name = "temperature", table = "input", address = 0, type = "i16", scale = 0.1 },
  { name = "setpoint", table = "holding", address = 100, type = "u16", writable = true },
  { name = "mode", table = "holding", address = 101, type = "u16", writable = true },
]
"#,
    )
    .expect("writing config");
    path
}

/// Fills the store: `gw-1` with two changes queued (every-change mode); `meter-01` in sync, offline; `boiler-03` with an unsynced value, a
/// quarantined key, a desired document with one ack done and one pending; `old-07` only in
/// the store.
fn fill_store(path: &Path) {
    let store = Store::open(path, StoreOptions::default()).expect("opening the store");
    for device in ["meter-01", "boiler-03", "old-07"] {
        store
            .configure_device(device, None)
            .wait()
            .expect("configure");
    }
    // The gateway in every-change mode, two changes queued and never sent.
    let limits = HistoryLimits {
        max_bytes: 1 << 20,
        max_age: Duration::from_hours(1),
    };
    store
        .configure_device("gw-1", Some(limits))
        .wait()
        .expect("configure");
    for n in 1..=2 {
        store
            .merge_local("gw-1", json!({"uptime": n}))
            .wait()
            .expect("merge");
    }
    let health = json!({"gateway": {"id": "gw-1", "online": false, "status": "offline",
        "consecutiveErrors": 3, "lastError": "timeout", "lastGoodRead": "2026-12-03T10:00:00Z"}});
    let mut meter = json!({"power": 12.5});
    meter
        .as_object_mut()
        .expect("object")
        .extend(health.as_object().expect("object").clone());
    store.merge_local("meter-01", meter).wait().expect("merge");
    let sent = store.begin_send("meter-01", "r1").wait().expect("send");
    assert!(sent.is_some());
    assert!(store.acked("meter-01", "r1", 7).wait().expect("ack"));

    store
        .merge_local("boiler-03", json!({"temperature": 21.5}))
        .wait()
        .expect("merge");
    store.begin_send("boiler-03", "r2").wait().expect("send");
    store.acked("boiler-03", "r2", 3).wait().expect("ack");
    store
        .merge_local("boiler-03", json!({"bad key": 1}))
        .wait()
        .expect("merge");
    store.begin_send("boiler-03", "r3").wait().expect("send");
    store
        .rejected("boiler-03", "r3", 400, "invalid property name")
        .wait()
        .expect("reject");
    store
        .desired_received(
            "boiler-03",
            DesiredUpdate::Full(json!({"setpoint": 55, "mode": "eco"})),
            4,
        )
        .wait()
        .expect("desired");
    store
        .applied_ack(
            "boiler-03",
            "setpoint",
            4,
            json!({"value": 55, "ac": 200, "av": 4, "ad": "written and read back"}),
        )
        .wait()
        .expect("applied ack");
    store.close().wait().expect("close");
}

fn run(config: &Path, args: &[&str]) -> Output {
    twinbridge()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("running twinbridge")
}

fn json_of(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn status_and_twin_show_read_a_real_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    fill_store(&dir.path().join("state/twinbridge.db"));

    let status = json_of(&run(&config, &["status", "--json"]));
    let devices = status["devices"].as_array().expect("devices");
    let ids: Vec<_> = devices.iter().map(|d| d["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            Some("gw-1"),
            Some("meter-01"),
            Some("boiler-03"),
            Some("old-07")
        ]
    );
    let roles: Vec<_> = devices.iter().map(|d| d["role"].as_str()).collect();
    assert_eq!(
        roles,
        [
            Some("gateway"),
            Some("device"),
            Some("device"),
            Some("removed")
        ]
    );

    let gateway = &devices[0]["sync"];
    assert_eq!(gateway["inSync"], false);
    assert_eq!(gateway["unsynced"], json!(["uptime"]));
    assert_eq!(gateway["journalEntries"], 2);
    let since = humantime::parse_rfc3339(gateway["queuedSince"].as_str().expect("a time"))
        .expect("RFC 3339");
    let age = SystemTime::now()
        .duration_since(since)
        .expect("in the past");
    assert!(age < Duration::from_mins(10), "{age:?}");

    let meter = &devices[1];
    assert_eq!(meter["sync"]["inSync"], true);
    assert_eq!(meter["sync"]["hubVersion"], 7);
    assert_eq!(meter["sync"]["unsynced"], json!([]));
    assert_eq!(
        meter["link"],
        json!({"online": false, "status": "offline", "lastGoodRead": "2026-12-03T10:00:00Z",
               "lastError": "timeout", "consecutiveErrors": 3})
    );

    let boiler = &devices[2];
    assert_eq!(boiler["sync"]["inSync"], false);
    // The ack went into `local` after the last PATCH: not sent yet either.
    assert_eq!(boiler["sync"]["unsynced"], json!(["bad key", "setpoint"]));
    assert_eq!(boiler["sync"]["quarantined"], json!(["bad key"]));
    assert_eq!(boiler["sync"]["hubVersion"], 3);
    assert_eq!(boiler["sync"]["lastRejection"]["status"], 400);
    assert_eq!(boiler["desiredVersion"], 4);
    assert_eq!(boiler["appliesDesired"], true);
    assert_eq!(boiler["acksPending"], json!(["mode"]));
    assert_eq!(boiler["link"], Value::Null);

    // The table: a line per device, the removed one pointing at `forget`, errors indented.
    let table = run(&config, &["status"]);
    assert_eq!(table.status.code(), Some(0));
    let table = text(&table.stdout);
    assert!(
        table.contains("removed (twinbridge forget old-07)"),
        "{table}"
    );
    assert!(
        table.contains("    link: timeout; last good read"),
        "{table}"
    );
    assert!(table.contains("1 pending (mode)"), "{table}");
    assert!(table.contains("held back: bad key"), "{table}");
    assert!(table.contains("1 unsynced (2 queued since "), "{table}");
    assert!(table.contains("2 unsynced (1 quarantined)"), "{table}");

    let twin = json_of(&run(&config, &["twin", "show", "boiler-03", "--json"]));
    assert_eq!(twin["device"], "boiler-03");
    assert_eq!(twin["hubReported"], json!({"temperature": 21.5}));
    assert_eq!(twin["hubVersion"], 3);
    assert_eq!(
        twin["pending"],
        json!({"bad key": 1, "setpoint": {"value": 55, "ac": 200, "av": 4, "ad": "written and read back"}})
    );
    assert_eq!(twin["quarantined"], json!({"bad key": 1}));
    assert_eq!(twin["desired"], json!({"setpoint": 55, "mode": "eco"}));
    assert_eq!(twin["desiredVersion"], 4);
    assert_eq!(twin["local"]["setpoint"]["ac"], 200);
    assert_eq!(twin["acks"][0]["property"], "setpoint");
    assert_eq!(twin["acks"][0]["appliedVersion"], 4);
    assert_eq!(twin["acks"][0]["pending"], false);

    let unknown = run(&config, &["twin", "show", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("not in the store"));
}

#[test]
fn a_missing_store_exits_69_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    for args in [&["status"][..], &["twin", "show", "meter-01"]] {
        let out = run(&config, args);
        assert_eq!(out.status.code(), Some(69));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "no state yet at {}: has the service run?",
                dir.path().join("state/twinbridge.db").display()
            )),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn an_invalid_configuration_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[gateway]\ncolour = 1\n").expect("writing config");
    let out = run(&config, &["status"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("colour"));
}

#[test]
fn a_state_directory_this_user_may_not_enter_is_not_called_missing() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let state = dir.path().join("state");
    fill_store(&state.join("twinbridge.db"));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let readable = std::fs::read_dir(&state).is_ok(); // root reads anything
    let out = run(&config, &["status"]);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if readable {
        assert_eq!(out.status.code(), Some(0));
        return;
    }
    assert_eq!(out.status.code(), Some(77));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_subcommand_help_shows_an_example() {
    for args in [
        &["run"][..],
        &["status"],
        &["twin"],
        &["twin", "show"],
        &["forget"],
        &["check-config"],
        &["scan"],
        &["read"],
        &["write"],
        &["simulate"],
        &["demo"],
    ] {
        let out = twinbridge()
            .args(args)
            .arg("--help")
            .output()
            .expect("running twinbridge");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = text(&out.stdout);
        assert!(help.contains("Example"), "{args:?}: {help}");
        assert!(help.contains("  twinbridge "), "{args:?}: {help}");
    }
}
