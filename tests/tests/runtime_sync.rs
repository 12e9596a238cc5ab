//! The runtime (store + hub sessions + sync drivers) against the hub emulator over real TLS
//! sockets: local changes reach the hub, desired updates land in the store, and every twin
//! converges across outages, token renewals, hub restarts, dropped connections and 429s.

use std::time::Duration;

use serde_json::{Value, json};
use twinbridge::hub::{Pacing, ProxySettings, RateLimiter, Transport};
use twinbridge::service::{Runtime, RuntimeHandle, RuntimeSpec};
use twinbridge::sync::DesiredState;
use twinbridge_e2e::{ConnectProxy, DEADLINE, TestHub, eventually, runtime_spec};

async fn local(handle: &RuntimeHandle, device: &str) -> Value {
    handle
        .store()
        .sync_state(device)
        .await
        .expect("store readable")
        .expect("device known")
        .local
}

/// Waits until the hub's reported document of every device equals its local replica.
async fn converged(hub: &TestHub, handle: &RuntimeHandle, devices: &[String], deadline: Duration) {
    for device in devices {
        let want = local(handle, device).await;
        eventually(&format!("{device} converges"), deadline, || {
            let got = hub.reported(device).0;
            let want = want.clone();
            async move { got == want }
        })
        .await;
    }
}

async fn all_connected(handle: &RuntimeHandle, connected: bool) {
    eventually(
        &format!("every identity connected = {connected}"),
        DEADLINE,
        || {
            let ok = handle
                .statuses()
                .iter()
                .all(|(_, s)| s.connected == connected);
            async move { ok }
        },
    )
    .await;
}

/// A running runtime for `gw-1` + `devices` on a hub, its store in a temp dir.
struct Agent {
    runtime: Runtime,
    handle: RuntimeHandle,
    _dir: tempfile::TempDir,
}

async fn start_agent<S: AsRef<str>>(
    hub: &TestHub,
    devices: &[S],
    tweak: impl FnOnce(&mut RuntimeSpec),
) -> Agent {
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<&str> = devices.iter().map(AsRef::as_ref).collect();
    let mut spec = runtime_spec(hub, &dir.path().join("tb.db"), "gw-1", &names);
    tweak(&mut spec);
    let runtime = Runtime::start(spec).await.expect("runtime starts");
    Agent {
        handle: runtime.handle(),
        runtime,
        _dir: dir,
    }
}

/// Waits until the stored desired document of `device` satisfies `want`.
async fn desired_where(
    handle: &RuntimeHandle,
    device: &str,
    want: impl FnMut(&Option<DesiredState>) -> bool,
) {
    let mut desired = handle.desired(device).expect("configured");
    tokio::time::timeout(DEADLINE, desired.wait_for(want))
        .await
        .expect("desired state before the deadline")
        .expect("watch open");
}

/// Waits until the stored desired document of `device` is at `version`.
async fn desired_at(handle: &RuntimeHandle, device: &str, version: i64) {
    desired_where(handle, device, |d| {
        d.as_ref().is_some_and(|d| d.version == version)
    })
    .await;
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

fn with_gateway(devices: &[String]) -> Vec<&str> {
    let mut all = vec!["gw-1"];
    all.extend(devices.iter().map(String::as_str));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_changes_reach_the_hub_and_desired_lands_in_the_store() {
    let hub = TestHub::start(&["gw-1", "meter-01"]).await;
    let agent = start_agent(&hub, &["meter-01"], |_| {}).await;
    let handle = &agent.handle;

    let change = json!({"power": {"active": 12.5, "reactive": 1}, "serial": "A1"});
    handle
        .merge_local("meter-01", change.clone())
        .await
        .expect("merged");
    let hub_ref = &hub;
    let change = &change;
    eventually("the hub holds the local change", DEADLINE, || async move {
        hub_ref.reported("meter-01").0 == *change
    })
    .await;

    // A desired patch set by the back end is stored with its version, then published.
    let version = hub.set_desired("meter-01", &json!({"setpoint": 21, "mode": {"eco": true}}));
    desired_at(handle, "meter-01", version).await;
    let snapshot = handle
        .store()
        .snapshot("meter-01")
        .await
        .expect("store readable")
        .expect("device known");
    assert_eq!(snapshot.desired_version, Some(version));
    assert_eq!(
        snapshot.desired,
        json!({"setpoint": 21, "mode": {"eco": true}})
    );

    // The gateway's own twin carries the summary.
    eventually(
        "the gateway twin reports its summary",
        DEADLINE,
        || async move {
            let gw = hub_ref.reported("gw-1").0;
            gw["identities"]["configured"] == 2
                && gw["identities"]["connected"] == 2
                && gw["agent"]["version"] == env!("CARGO_PKG_VERSION")
        },
    )
    .await;

    // An unknown device is refused, not created.
    assert!(handle.merge_local("nope", json!({"a": 1})).await.is_err());
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// 20 identities, 100 changes each while the hub refuses connections: when it returns, each
/// identity converges with exactly one PATCH (its reported `$version` moves by one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_converges_with_one_patch_per_identity() {
    let devices = ids("dev", 20);
    let hub = TestHub::start(&with_gateway(&devices)).await;
    let agent = start_agent(&hub, &devices, |_| {}).await;
    let handle = &agent.handle;
    for device in &devices {
        handle
            .merge_local(device, json!({"online": true, "round": -1}))
            .await
            .expect("merged");
    }
    all_connected(handle, true).await;
    converged(&hub, handle, &devices, DEADLINE).await;

    hub.outage(true);
    all_connected(handle, false).await;
    let before: Vec<i64> = devices.iter().map(|d| hub.reported(d).1).collect();
    for round in 0..100 {
        for (i, device) in devices.iter().enumerate() {
            // Values change, keys come and go (nulls delete), nested objects grow.
            let mut patch = json!({
                "round": round,
                "energy": {"total": round * 10 + i as i64},
                format!("slot{}", round % 7): round,
            });
            if round % 7 == 3 {
                patch[format!("slot{}", (round + 1) % 7)] = Value::Null;
            }
            handle.merge_local(device, patch).await.expect("merged");
        }
    }
    hub.outage(false);
    converged(&hub, handle, &devices, DEADLINE).await;
    for (device, before) in devices.iter().zip(before) {
        let after = hub.reported(device).1;
        assert_eq!(
            after - before,
            1,
            "{device}: expected exactly one PATCH after the outage"
        );
    }
    let hub_ref = &hub;
    eventually(
        "the gateway twin shows everyone back and in sync",
        DEADLINE,
        || async move {
            let ids = hub_ref.reported("gw-1").0["identities"].clone();
            ids["connected"] == 21 && ids["unsynced"] == 0 && ids.get("unsyncedSince").is_none()
        },
    )
    .await;
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// Tokens that live 10 s are renewed with clean reconnects: over ~25 s of steady changes
/// nothing is lost and the hub never has to kick an expired session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_tokens_are_renewed_without_losing_updates() {
    let hub = TestHub::start(&["gw-1", "meter-01"]).await;
    let agent = start_agent(&hub, &["meter-01"], |spec| {
        spec.link.token_lifetime = Duration::from_secs(10);
    })
    .await;
    let handle = &agent.handle;
    let start = tokio::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(25) {
        n += 1;
        handle
            .merge_local("meter-01", json!({"count": n}))
            .await
            .expect("merged");
        tokio::time::sleep(Duration::from_millis(250)).await; // the pace of the changes
    }
    converged(&hub, handle, &["meter-01".to_owned()], DEADLINE).await;
    assert_eq!(hub.reported("meter-01").0["count"], n);
    let counters = hub.counters();
    assert!(
        counters.connects >= 4,
        "two identities × (first connect + at least one renewal): {counters:?}"
    );
    assert_eq!(
        counters.disconnects_by_hub, 0,
        "the hub never had to close an expired session: {counters:?}"
    );
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// The hub restarts (state kept), and separately drops every connection every few hundred
/// milliseconds while changes keep coming: the twins converge all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restarts_and_dropped_connections_lose_nothing() {
    let devices = ids("dev", 3);
    let mut hub = TestHub::start(&with_gateway(&devices)).await;
    let agent = start_agent(&hub, &devices, |_| {}).await;
    let handle = &agent.handle;

    for round in 0..5 {
        for device in &devices {
            handle
                .merge_local(device, json!({"phase": "before-restart", "round": round}))
                .await
                .expect("merged");
        }
    }
    hub.restart().await;
    for device in &devices {
        handle
            .merge_local(device, json!({"phase": "after-restart"}))
            .await
            .expect("merged");
    }
    converged(&hub, handle, &devices, DEADLINE).await;

    let connects_before = hub.counters().connects;
    for round in 0..20 {
        for device in &devices {
            handle
                .merge_local(device, json!({"phase": "flapping", "round": round}))
                .await
                .expect("merged");
        }
        if round % 4 == 0 {
            hub.emu()
                .hub()
                .drop_connections(None, hub_emulator::state::CloseReason::Dropped);
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the pace of the changes
    }
    converged(&hub, handle, &devices, DEADLINE).await;
    assert!(
        hub.counters().connects >= connects_before + 4,
        "the agent reconnected after the drops"
    );
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// A hub that allows only 3 twin operations per second answers most of a 10-identity
/// start-up with 429: the drivers back off and every twin still converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_ridden_out() {
    let devices = ids("dev", 10);
    let hub = TestHub::start_with(&with_gateway(&devices), |c| {
        c.twin_ops_per_sec = Some(3.0);
    })
    .await;
    let agent = start_agent(&hub, &devices, |_| {}).await;
    let handle = &agent.handle;
    for device in &devices {
        handle
            .merge_local(device, json!({"value": device}))
            .await
            .expect("merged");
    }
    converged(&hub, handle, &devices, Duration::from_mins(1)).await;
    assert!(
        hub.counters().responses_429 > 0,
        "the storm happened: {:?}",
        hub.counters()
    );
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// A value the hub refuses (a string over 4 KB) is quarantined: the rest of the twin
/// converges, the refused path shows in the gateway twin, and nothing is retried in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_property_is_quarantined_and_surfaced_in_the_gateway_twin() {
    let hub = TestHub::start(&["gw-1", "meter-01"]).await;
    let agent = start_agent(&hub, &["meter-01"], |_| {}).await;
    let handle = &agent.handle;
    handle
        .merge_local(
            "meter-01",
            json!({"ok": 1, "label": "x".repeat(5000), "other": {"a": true}}),
        )
        .await
        .expect("merged");
    let hub_ref = &hub;
    eventually(
        "the acceptable keys reach the hub",
        DEADLINE,
        || async move { hub_ref.reported("meter-01").0 == json!({"ok": 1, "other": {"a": true}}) },
    )
    .await;
    eventually(
        "the gateway twin names the refused path",
        DEADLINE,
        || async move {
            let rejected = hub_ref.reported("gw-1").0["rejected"].clone();
            rejected.as_array().is_some_and(|r| {
                r.iter()
                    .any(|e| e["device"] == "meter-01" && e["path"] == "reported.label")
            })
        },
    )
    .await;
    // Settled: no PATCH loop on the refused key.
    let patches = hub.counters().reported_patches;
    tokio::time::sleep(Duration::from_secs(1)).await; // a window in which a loop would show
    let settled = hub.counters().reported_patches;
    assert!(
        settled <= patches + 1,
        "the refused key is not resent in a loop: {patches} -> {settled}"
    );
    // A new value of the key goes out again (and is accepted).
    handle
        .merge_local("meter-01", json!({"label": "short"}))
        .await
        .expect("merged");
    eventually("the new value reaches the hub", DEADLINE, || async move {
        hub_ref.reported("meter-01").0["label"] == "short"
    })
    .await;
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// Desired notifications that are not JSON, or deeper than the hub's 10 levels, are refused
/// with one warning each: the agent keeps running, stores nothing of them, and the next
/// genuine desired update still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_desired_notifications_are_refused_and_the_agent_keeps_going() {
    let hub = TestHub::start(&["gw-1", "meter-01"]).await;
    let agent = start_agent(&hub, &["meter-01"], |_| {}).await;
    let handle = &agent.handle;
    let first = hub.set_desired("meter-01", &json!({"setpoint": 20}));
    desired_at(handle, "meter-01", first).await;

    let mut deep = json!(1);
    for _ in 0..12 {
        deep = json!({ "d": deep });
    }
    let deep = deep.to_string();
    let bad: [&[u8]; 2] = [b"{not json", deep.as_bytes()];
    for (i, payload) in bad.iter().enumerate() {
        hub.emu()
            .hub()
            .inject_desired(
                "meter-01",
                u64::try_from(first).expect("positive") + 1 + i as u64,
                bytes::Bytes::copy_from_slice(payload),
            )
            .expect("injected into the live connection");
    }
    eventually("both notifications are refused", DEADLINE, || {
        let refused = handle.statuses()[1].1.bad_desired;
        async move { refused == 2 }
    })
    .await;
    let snapshot = handle
        .store()
        .snapshot("meter-01")
        .await
        .expect("store readable")
        .expect("device known");
    assert_eq!(
        snapshot.desired,
        json!({"setpoint": 20}),
        "nothing of them stored"
    );
    assert_eq!(snapshot.desired_version, Some(first));

    let next = hub.set_desired("meter-01", &json!({"setpoint": 22}));
    desired_where(handle, "meter-01", |d| {
        d.as_ref()
            .is_some_and(|d| d.version == next && d.document["setpoint"] == 22)
    })
    .await;
    assert!(handle.statuses()[1].1.connected, "still connected");
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// MQTT over WebSocket (443-style, `/$iothub/websocket`) through an HTTP CONNECT proxy
/// carries a full sync: reported up, desired down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_a_connect_proxy_carries_a_full_sync() {
    let hub = TestHub::start(&["gw-1", "meter-01"]).await;
    let proxy = ConnectProxy::start().await;
    let agent = start_agent(&hub, &["meter-01"], |spec| {
        spec.link.transport = Transport::MqttWs;
        spec.link.port = Some(hub.emu().ws_addr().expect("WebSocket listener").port());
        spec.link.proxy = Some(ProxySettings {
            host: "127.0.0.1".into(),
            port: proxy.addr().port(),
            auth: None,
        });
    })
    .await;
    let handle = &agent.handle;
    handle
        .merge_local("meter-01", json!({"via": "websocket+proxy"}))
        .await
        .expect("merged");
    converged(&hub, handle, &["meter-01".to_owned()], DEADLINE).await;
    let version = hub.set_desired("meter-01", &json!({"mode": "eco"}));
    desired_at(handle, "meter-01", version).await;
    assert!(
        proxy.tunnels() >= 2,
        "both identities went through the proxy: {}",
        proxy.tunnels()
    );
    assert_eq!(
        hub.counters().connects,
        proxy.tunnels(),
        "no connection bypassed the proxy"
    );
    agent.runtime.shutdown().await.expect("clean shutdown");
}

/// The return after an outage is paced gateway-wide: 40 identities against a hub that allows
/// 20 twin operations per second, with the gateway pacing GETs and `PATCH`es at 8/s each, see
/// not a single 429, on start-up or after the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_return_after_an_outage_never_gets_a_429() {
    let devices = ids("dev", 39);
    let hub = TestHub::start_with(&with_gateway(&devices), |c| {
        c.twin_ops_per_sec = Some(20.0);
    })
    .await;
    let agent = start_agent(&hub, &devices, |spec| {
        spec.pacing = Pacing {
            connects: RateLimiter::new(20.0, 20),
            gets: RateLimiter::new(8.0, 8),
            updates: RateLimiter::new(8.0, 8),
        };
    })
    .await;
    let handle = &agent.handle;
    for device in &devices {
        handle
            .merge_local(device, json!({"phase": "start"}))
            .await
            .expect("merged");
    }
    converged(&hub, handle, &devices, Duration::from_mins(1)).await;
    hub.outage(true);
    all_connected(handle, false).await;
    for device in &devices {
        handle
            .merge_local(device, json!({"phase": "offline"}))
            .await
            .expect("merged");
    }
    hub.outage(false);
    converged(&hub, handle, &devices, Duration::from_mins(1)).await;
    let counters = hub.counters();
    assert_eq!(counters.responses_429, 0, "no stampede: {counters:?}");
    assert!(
        counters.twin_gets >= 80,
        "every identity fetched its twin twice: {counters:?}"
    );
    agent.runtime.shutdown().await.expect("clean shutdown");
}
