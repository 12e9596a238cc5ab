//! `Runtime::reload` on the real runtime: a simulated Modbus unit on a pty line, the hub
//! emulator over TLS. A changed credential gets its identity a new session while the bus keeps
//! running (and still applies desired values after the restart); new hub settings reconnect
//! every session (a PATCH left unanswered by the old one is reconciled, not waited for) and
//! leave the bus alone; a refused spec changes nothing.

use std::time::Duration;

use device_protocols::bus::{BusConfig, Transport as BusTransport};
use device_protocols::point::{DataType, Point, Table};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use hub_emulator::state::DeviceIdentity;
use serde_json::{Value, json};
use twinbridge::bridge::{BusSpec, DeviceMap, PointMap};
use twinbridge::hub::{Credential, Secret};
use twinbridge::service::{ReloadError, Runtime, RuntimeError, RuntimeSpec};
use twinbridge_e2e::{DEADLINE, TestHub, eventually, runtime_spec};

const GATEWAY: &str = "gw-1";
const BOILER: &str = "boiler-01";

/// The hub, a pty line with the boiler (unit 1: temperature input 0, setpoint holding 100),
/// and the spec of a runtime with that line's bus.
struct Site {
    hub: TestHub,
    sim: RtuSim,
    spec: RuntimeSpec,
    dir: tempfile::TempDir,
}

fn point(name: &str, table: Table, address: u16, writable: bool) -> PointMap {
    PointMap {
        point: Point::new(name, table, address, DataType::U16)
            .expect("valid point")
            .with_scale(0.1, 0.0)
            .with_writable(writable),
        property: vec![name.to_owned()],
        deadband: None,
    }
}

async fn site() -> Site {
    let hub = TestHub::start(&[GATEWAY, BOILER]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = RtuSim::start(
        dir.path().join("ttyBUS"),
        SimMap::new().with_unit(
            1,
            UnitMap::new()
                .with_input(0, &[215])
                .with_holding(100, &[200]),
        ),
    )
    .expect("simulator starts");
    let mut bus = BusConfig::new(
        "rs485-a",
        BusTransport::Serial(SerialSettings::new(sim.path())),
    );
    bus.timeout = Duration::from_millis(200);
    let mut spec = runtime_spec(&hub, &dir.path().join("tb.db"), GATEWAY, &[BOILER]);
    spec.buses = vec![BusSpec {
        config: bus,
        devices: vec![DeviceMap {
            device: BOILER.into(),
            unit: 1,
            poll: Duration::from_millis(200),
            points: vec![
                point("temperature", Table::Input, 0, false),
                point("setpoint", Table::Holding, 100, true),
            ],
        }],
    }];
    Site {
        hub,
        sim,
        spec,
        dir,
    }
}

impl Site {
    /// When the hub last saw `device` connect or disconnect (microseconds).
    fn connection_changed(&self, device: &str) -> Value {
        self.hub
            .emu()
            .hub()
            .device_json(device)
            .expect("registered")["connectionStateUpdatedTime"]
            .clone()
    }

    fn connected(&self, device: &str) -> bool {
        self.hub.emu().hub().is_connected(device)
    }

    async fn temperature_reaches_hub(&self, tenths: u16) {
        self.sim.handle().set_values(1, Table::Input, 0, &[tenths]);
        let want = json!(f64::from(tenths) / 10.0);
        eventually(
            &format!("temperature {want} reaches the hub"),
            DEADLINE,
            || {
                let got = self.hub.reported(BOILER).0["temperature"].clone();
                let want = want.clone();
                async move { got == want }
            },
        )
        .await;
    }

    /// Removes the port's by-id-style link: the open port keeps working, a reopen would fail.
    fn remove_port_link(&self) {
        std::fs::remove_file(self.sim.path()).expect("port link removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_credential_gets_a_new_session_and_the_bus_keeps_running() {
    let site = site().await;
    let mut runtime = Runtime::start(site.spec.clone())
        .await
        .expect("runtime starts");
    site.temperature_reaches_hub(216).await;
    eventually("both identities connected", DEADLINE, || async {
        site.connected(GATEWAY) && site.connected(BOILER)
    })
    .await;
    let gateway_since = site.connection_changed(GATEWAY);
    site.remove_port_link();

    // A key the hub does not know: the boiler's session is replaced and refused.
    let mut wrong = site.spec.clone();
    wrong.devices[0].credential =
        Credential::SymmetricKey(Secret::new(DeviceIdentity::random_key()));
    let plan = runtime.reload(wrong).await.expect("reload applies");
    assert_eq!(plan.identities.changed, [BOILER]);
    assert!(plan.buses.is_unchanged() && !plan.relink, "{plan:?}");
    eventually("the boiler's old session is gone", DEADLINE, || async {
        !site.connected(BOILER)
    })
    .await;
    // The bus still polls (into the store) while the boiler cannot reach the hub.
    site.sim.handle().set_values(1, Table::Input, 0, &[217]);
    let store = runtime.handle().store().clone();
    eventually("the bus keeps polling", DEADLINE, || {
        let store = store.clone();
        async move {
            store
                .sync_state(BOILER)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.local["temperature"] == json!(21.7))
        }
    })
    .await;

    // The right key again: a new session, and the same bus bridge applies desired values.
    let plan = runtime
        .reload(site.spec.clone())
        .await
        .expect("reload applies");
    assert_eq!(plan.identities.changed, [BOILER]);
    site.temperature_reaches_hub(218).await;
    let version = site.hub.set_desired(BOILER, &json!({"setpoint": 19.5}));
    let hub = &site.hub;
    let sim = site.sim.handle();
    eventually(
        "the desired value is written and acknowledged",
        DEADLINE,
        || async move {
            sim.holding(1, 100) == Some(195)
                && hub.reported(BOILER).0["setpoint"]
                    == json!({"value": 19.5, "ac": 200, "av": version})
        },
    )
    .await;
    assert_eq!(
        site.connection_changed(GATEWAY),
        gateway_since,
        "the gateway's session was not touched"
    );
    assert!(site.connected(GATEWAY));
    runtime.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hub_settings_reconnect_every_session_and_leave_the_bus_alone() {
    let site = site().await;
    let mut runtime = Runtime::start(site.spec.clone())
        .await
        .expect("runtime starts");
    site.temperature_reaches_hub(216).await;
    eventually("both identities connected", DEADLINE, || async {
        site.connected(GATEWAY) && site.connected(BOILER)
    })
    .await;
    let since = [GATEWAY, BOILER].map(|d| site.connection_changed(d));
    site.remove_port_link();
    // A PATCH still in flight when its session is replaced: it will never be answered.
    site.hub
        .emu()
        .hub()
        .set_faults(|f| f.twin_response_delay = Duration::from_hours(1));
    site.sim.handle().set_values(1, Table::Input, 0, &[217]);
    let store = runtime.handle().store().clone();
    eventually("a PATCH is in flight", DEADLINE, || {
        let store = store.clone();
        async move {
            store
                .sync_state(BOILER)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.in_flight.is_some() && s.local["temperature"] == json!(21.7))
        }
    })
    .await;
    // Only that PATCH is held up (the delay is taken when a request arrives).
    site.hub
        .emu()
        .hub()
        .set_faults(|f| f.twin_response_delay = Duration::ZERO);

    let mut new = site.spec.clone();
    new.link.request_timeout = Duration::from_secs(4);
    let plan = runtime.reload(new).await.expect("reload applies");
    assert!(plan.relink, "{plan:?}");
    assert_eq!(plan.identities.changed, [GATEWAY, BOILER]);
    assert!(plan.buses.is_unchanged(), "{plan:?}");
    let site = &site;
    for (device, before) in [GATEWAY, BOILER].iter().zip(since) {
        let before = &before;
        eventually(&format!("{device} reconnects"), DEADLINE, || async move {
            site.connected(device) && site.connection_changed(device) != *before
        })
        .await;
    }
    site.temperature_reaches_hub(219).await;
    let gateway = site.hub.reported(GATEWAY).0;
    assert_eq!(gateway["identities"]["configured"], json!(2), "{gateway}");
    runtime.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_spec_changes_nothing() {
    let site = site().await;
    let mut runtime = Runtime::start(site.spec.clone())
        .await
        .expect("runtime starts");
    site.temperature_reaches_hub(216).await;
    eventually("both identities connected", DEADLINE, || async {
        site.connected(GATEWAY) && site.connected(BOILER)
    })
    .await;
    let since = [GATEWAY, BOILER].map(|d| site.connection_changed(d));

    // A device added with a CA file that does not exist: refused before anything stops.
    let mut new = site.spec.clone();
    new.link.ca_file = Some(site.dir.path().join("missing-ca.pem"));
    new.devices.push(new.devices[0].clone());
    new.devices[1].id = "boiler-02".into();
    new.buses.clear();
    match runtime.reload(new).await {
        Err(ReloadError::Refused(RuntimeError::Link(e))) => {
            assert!(e.to_string().contains("missing-ca.pem"), "{e}");
        }
        other => panic!("a missing CA file is refused: {other:?}"),
    }
    // Twice the same identity: refused too.
    let mut twice = site.spec.clone();
    twice.devices.push(twice.devices[0].clone());
    assert!(matches!(
        runtime.reload(twice).await,
        Err(ReloadError::Refused(RuntimeError::DuplicateIdentity(id))) if id == BOILER
    ));
    site.temperature_reaches_hub(220).await;
    assert_eq!(
        [GATEWAY, BOILER].map(|d| site.connection_changed(d)),
        since,
        "no session was touched"
    );
    assert_eq!(runtime.handle().identity_ids(), [GATEWAY, BOILER]);
    runtime.shutdown().await.expect("clean shutdown");
}
