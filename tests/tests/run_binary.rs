//! The real `twinbridge run` process against the hub emulator: a config written as the docs
//! say, SIGTERM stops it cleanly, a bad config is refused with `EX_CONFIG`, and kill -9 at
//! random moments while it syncs loses nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng as _;
use serde_json::{Value, json};
use twinbridge::store::{ReadOnlyStore, Store, StoreOptions};
use twinbridge_e2e::{DEADLINE, TestHub, agent_binary, eventually, spawn_ready, terminate};

const GATEWAY: &str = "gw-1";

fn devices() -> Vec<String> {
    (1..=5).map(|i| format!("meter-{i:02}")).collect()
}

/// A hub with the gateway and the devices registered.
async fn start_hub() -> TestHub {
    let mut all = vec![GATEWAY.to_owned()];
    all.extend(devices());
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    TestHub::start(&names).await
}

/// Writes `config.toml` for `hub` into its folder, as a technician would from the docs.
/// Returns the config file and the store it names.
fn write_config(hub: &TestHub) -> (PathBuf, PathBuf) {
    let state_dir = hub.dir().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let mut text = hub.config_head(GATEWAY, &state_dir.display().to_string());
    for device in devices() {
        write!(text, "\n[[device]]\nid = \"{device}\"\n").expect("writing to a String");
    }
    let path = hub.dir().join("config.toml");
    std::fs::write(&path, text).expect("config written");
    (path, state_dir.join("twinbridge.db"))
}

fn agent_command(config: &Path) -> Command {
    let mut command = Command::new(agent_binary());
    command
        .args(["run", "--config"])
        .arg(config)
        .env("TWINBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Starts the agent and waits for its READY=1 (it will be signalled).
async fn start_agent(config: &Path) -> Child {
    spawn_ready(agent_command(config)).await
}

/// Merges `patch` into `device`'s local replica while the agent is stopped (as the bridge
/// would have while running).
async fn change_offline(db: &Path, device: &str, patch: Value) {
    let store = Store::open(db, StoreOptions::default()).expect("store opens");
    store.merge_local(device, patch).await.expect("merged");
    store.close().await.expect("closed");
}

fn local(db: &Path, device: &str) -> Value {
    let store = ReadOnlyStore::open(db).expect("store opens read-only");
    store
        .snapshot(device)
        .expect("readable")
        .expect("device known")
        .sync
        .local
}

async fn wait_converged(hub: &TestHub, db: &Path) {
    for device in devices().iter().map(String::as_str).chain([GATEWAY]) {
        let db = db.to_owned();
        eventually(&format!("{device} converges"), DEADLINE, || {
            let want = local(&db, device);
            let got = hub.reported(device).0;
            async move { got == want }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_syncs_and_stops_cleanly_on_sigterm() {
    let hub = start_hub().await;
    let (config, db) = write_config(&hub);

    // The store is created by the first run; values merged while it is stopped are synced by
    // the next.
    let child = start_agent(&config).await;
    let db_ref = &db;
    eventually(
        "the store exists",
        DEADLINE,
        || async move { db_ref.exists() },
    )
    .await;
    let status = terminate(child).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    for device in devices() {
        change_offline(&db, &device, json!({"serial": device, "power": 1.5})).await;
    }
    let child = start_agent(&config).await;
    wait_converged(&hub, &db).await;
    let gateway = hub.reported(GATEWAY).0;
    assert_eq!(gateway["identities"]["configured"], 6, "{gateway}");
    let status = terminate(child).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[test]
fn run_refuses_an_invalid_config_with_ex_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[gateway]\nid = \"gw\"\nbogus = 1\n").expect("written");
    let out = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("twinbridge runs");
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.toml:3:1") && stderr.contains("bogus"),
        "the error names file, line, column and field: {stderr}"
    );
}

/// kill -9 the agent at random moments while it syncs (with slow hub answers, so requests
/// are often in flight); after a final restart every twin equals its local replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing() {
    let hub = start_hub().await;
    hub.emu()
        .hub()
        .set_faults(|f| f.twin_response_delay = Duration::from_millis(40));
    let (config, db) = write_config(&hub);
    let mut rng = rand::rng();
    let trials = 24;
    for trial in 0..trials {
        if db.exists() {
            for device in devices() {
                if rng.random_bool(0.7) {
                    let slot = rng.random_range(0..4);
                    let patch = if rng.random_bool(0.2) {
                        json!({ format!("k{slot}"): null })
                    } else {
                        json!({ format!("k{slot}"): {"trial": trial, "v": rng.random_range(0..1000)} })
                    };
                    change_offline(&db, &device, patch).await;
                }
            }
        }
        let mut child = agent_command(&config).spawn().expect("twinbridge starts");
        let wait = Duration::from_millis(rng.random_range(50..600));
        tokio::time::sleep(wait).await; // the random moment of the kill
        child.kill().expect("SIGKILL sent");
        child.wait().expect("reaped");
    }
    let during = hub.counters();
    assert!(
        during.reported_patches > 0 && during.twin_gets > trials,
        "the kills landed while the agent was syncing: {during:?}"
    );
    hub.emu()
        .hub()
        .set_faults(|f| f.twin_response_delay = Duration::ZERO);
    let child = start_agent(&config).await;
    wait_converged(&hub, &db).await;
    let status = terminate(child).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
