//! The bridge end to end: simulated Modbus units on a pseudo-terminal RTU line, the real
//! runtime, the hub emulator over TLS. Register values reach the hub twins with link health;
//! desired values are written, read back and acknowledged; bad ones are refused with 400.

use std::time::Duration;

use device_protocols::bus::{BusConfig, Transport as BusTransport};
use device_protocols::point::{DataType, Order, Point, Table};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use serde_json::json;
use twinbridge::bridge::{BusSpec, DeviceMap, PointMap};
use twinbridge::service::Runtime;
use twinbridge::store::HistoryLimits;
use twinbridge_e2e::{DEADLINE, TestHub, eventually, runtime_spec};

fn point_map(point: Point, property: &[&str], deadband: Option<f64>) -> PointMap {
    PointMap {
        point,
        property: property.iter().map(|s| (*s).to_owned()).collect(),
        deadband,
    }
}

/// Register writes (fc 6 and 16) the simulator answered for `unit`.
fn register_writes(sim: &RtuSim, unit: u8) -> u64 {
    let stats = sim.handle().stats(unit).expect("unit simulated");
    stats.by_function[6] + stats.by_function[16]
}

/// f32 in CDAB word order (low word first), as many energy meters store it.
fn f32_cdab(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits & 0xffff) as u16, (bits >> 16) as u16]
}

/// The hub, a simulated RTU line with a boiler (unit 1) and an energy meter (unit 2), the
/// runtime with the bridge of that line.
struct Site {
    hub: TestHub,
    sim: RtuSim,
    runtime: Runtime,
    _dir: tempfile::TempDir,
}

async fn start_site() -> Site {
    let hub = TestHub::start(&["gw-1", "boiler-01", "meter-01"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = RtuSim::start(
        dir.path().join("ttyBUS"),
        SimMap::new()
            .with_unit(
                1,
                UnitMap::new()
                    .with_input(0, &[215])
                    .with_holding(100, &[200]),
            )
            .with_unit(2, UnitMap::new().with_input(0, &f32_cdab(1234.5))),
    )
    .expect("simulator starts");
    let mut bus = BusConfig::new(
        "rs485-a",
        BusTransport::Serial(SerialSettings::new(sim.path())),
    );
    bus.timeout = Duration::from_millis(200);
    let boiler = DeviceMap {
        device: "boiler-01".into(),
        unit: 1,
        poll: Duration::from_millis(200),
        points: vec![
            point_map(
                Point::new("temperature", Table::Input, 0, DataType::I16)
                    .expect("valid point")
                    .with_scale(0.1, 0.0),
                &["temperature"],
                Some(0.5),
            ),
            point_map(
                Point::new("setpoint", Table::Holding, 100, DataType::U16)
                    .expect("valid point")
                    .with_scale(0.1, 0.0)
                    .with_writable(true),
                &["setpoint"],
                None,
            ),
        ],
    };
    let meter = DeviceMap {
        device: "meter-01".into(),
        unit: 2,
        poll: Duration::from_millis(200),
        points: vec![point_map(
            Point::new("power", Table::Input, 0, DataType::F32)
                .expect("valid point")
                .with_order(Order::CDAB),
            &["power", "active"],
            None,
        )],
    };
    let mut spec = runtime_spec(
        &hub,
        &dir.path().join("tb.db"),
        "gw-1",
        &["boiler-01", "meter-01"],
    );
    // The meter keeps every intermediate value (`history = "every-change"`).
    spec.devices[1].history = Some(HistoryLimits {
        max_bytes: 1 << 20,
        max_age: Duration::from_hours(1),
    });
    spec.buses = vec![BusSpec {
        config: bus,
        devices: vec![boiler, meter],
    }];
    let runtime = Runtime::start(spec).await.expect("runtime starts");

    Site {
        hub,
        sim,
        runtime,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_values_reach_the_hub_and_desired_values_reach_the_device() {
    let Site {
        hub,
        sim,
        runtime,
        _dir,
    } = start_site().await;
    let hub_ref = &hub;
    eventually(
        "register values reach the hub twins",
        DEADLINE,
        || async move {
            let boiler = hub_ref.reported("boiler-01").0;
            let meter = hub_ref.reported("meter-01").0;
            boiler["temperature"] == json!(21.5)
                && boiler["setpoint"] == json!(20.0)
                && boiler["gateway"]["online"] == json!(true)
                && meter["power"]["active"] == json!(1234.5)
        },
    )
    .await;
    let health = hub.reported("boiler-01").0["gateway"].clone();
    assert_eq!(health["id"], "gw-1");
    assert_eq!(health["bus"], "rs485-a");
    assert_eq!(health["unit"], 1);
    assert!(health["lastGoodRead"].is_string(), "{health}");

    // The back end finds every device of the gateway with one query (the emulator's engine).
    let query = hub_emulator::query::Query::parse(
        "SELECT deviceId FROM devices WHERE properties.reported.gateway.id = 'gw-1'",
    )
    .expect("query parses");
    let mut found: Vec<String> = query
        .execute(&hub.emu().hub().all_twins())
        .iter()
        .filter_map(|row| row["deviceId"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    assert_eq!(found, ["boiler-01", "meter-01"]);

    // Deadband: 0.3 °C is not reported, 1.0 °C is.
    sim.handle().set_values(1, Table::Input, 0, &[218]);
    sim.handle().set_values(1, Table::Input, 0, &[225]);
    eventually(
        "a change past the deadband is reported",
        DEADLINE,
        || async move { hub_ref.reported("boiler-01").0["temperature"] == json!(22.5) },
    )
    .await;

    // Desired → register, read back, acknowledged.
    let version = hub.set_desired("boiler-01", &json!({"setpoint": 22.5}));
    let sim_ref = &sim;
    eventually(
        "the setpoint is written to the device",
        DEADLINE,
        || async move { sim_ref.handle().holding(1, 100) == Some(225) },
    )
    .await;
    eventually(
        "the write is acknowledged in the twin",
        DEADLINE,
        || async move {
            hub_ref.reported("boiler-01").0["setpoint"]
                == json!({"value": 22.5, "ac": 200, "av": version})
        },
    )
    .await;

    // Wrong type and unknown property: refused with 400 and a reason; nothing written.
    let writes_before = register_writes(&sim, 1);
    let bad = hub.set_desired("boiler-01", &json!({"setpoint": "hot", "colour": "red"}));
    eventually("bad desired values are refused", DEADLINE, || async move {
        let reported = hub_ref.reported("boiler-01").0;
        reported["setpoint"]["ac"] == 400
            && reported["setpoint"]["av"] == bad
            && reported["colour"]["ac"] == 400
            && reported["colour"]["av"] == bad
    })
    .await;
    let reported = hub.reported("boiler-01").0;
    assert!(
        reported["setpoint"]["ad"]
            .as_str()
            .is_some_and(|r| r.contains("number")),
        "{reported}"
    );
    assert_eq!(
        register_writes(&sim, 1),
        writes_before,
        "nothing written for refused values"
    );
    assert_eq!(sim.handle().holding(1, 100), Some(225));

    runtime.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_shows_offline_while_the_other_keeps_its_cycle() {
    let Site {
        hub,
        sim,
        runtime,
        _dir,
    } = start_site().await;
    let hub_ref = &hub;
    eventually("the meter shows online first", DEADLINE, || async move {
        hub_ref.reported("meter-01").0["gateway"]["online"] == json!(true)
    })
    .await;
    // A silent unit shows offline in its twin; the other keeps its cycle.
    sim.handle().set_silent(2, true);
    eventually("the silent meter shows offline", DEADLINE, || async move {
        hub_ref.reported("meter-01").0["gateway"]["online"] == json!(false)
    })
    .await;
    sim.handle().set_values(1, Table::Input, 0, &[240]);
    eventually("the boiler keeps its cycle", DEADLINE, || async move {
        hub_ref.reported("boiler-01").0["temperature"] == json!(24.0)
    })
    .await;

    runtime.shutdown().await.expect("clean shutdown");
}

/// The hub refuses connections while register values change: afterwards the default
/// (latest-value) device converges with at most one PATCH, and the `every-change` device
/// delivers every intermediate value, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_no_change_and_costs_one_patch_per_latest_device() {
    let Site {
        hub,
        sim,
        runtime,
        _dir,
    } = start_site().await;
    let handle = runtime.handle();
    let hub_ref = &hub;
    eventually("both devices synced first", DEADLINE, || async move {
        hub_ref.reported("boiler-01").0["temperature"] == json!(21.5)
            && hub_ref.reported("meter-01").0["power"]["active"] == json!(1234.5)
    })
    .await;
    hub.outage(true);
    eventually("the gateway sees the outage", DEADLINE, || {
        let down = handle.statuses().iter().all(|(_, s)| !s.connected);
        async move { down }
    })
    .await;
    let before = (hub.reported("boiler-01").1, hub.reported("meter-01").1);
    let powers = [1300.5_f32, 1400.5, 1500.5, 1600.5, 1700.5];
    for (i, power) in powers.iter().enumerate() {
        sim.handle()
            .set_values(2, Table::Input, 0, &f32_cdab(*power));
        sim.handle().set_values(
            1,
            Table::Input,
            0,
            &[230 + 10 * u16::try_from(i).expect("small")],
        );
        let handle = &handle;
        eventually(
            "the change is in the local replica",
            DEADLINE,
            || async move {
                let local = handle
                    .store()
                    .sync_state("meter-01")
                    .await
                    .expect("store readable")
                    .expect("device known")
                    .local;
                local["power"]["active"] == json!(f64::from(*power))
            },
        )
        .await;
    }
    hub.outage(false);
    eventually("both converge after the outage", DEADLINE, || async move {
        hub_ref.reported("boiler-01").0["temperature"] == json!(27.0)
            && hub_ref.reported("meter-01").0["power"]["active"] == json!(1700.5)
    })
    .await;
    let after = (hub.reported("boiler-01").1, hub.reported("meter-01").1);
    assert!(
        after.0 - before.0 <= 1,
        "latest mode: at most one PATCH after the outage ({before:?} -> {after:?})"
    );
    assert!(
        after.1 - before.1 >= i64::try_from(powers.len()).expect("small"),
        "every-change mode: each of the {} changes reached the hub ({before:?} -> {after:?})",
        powers.len()
    );
    runtime.shutdown().await.expect("clean shutdown");
}

/// Line noise (answers with a bad CRC) takes the noisy unit offline without stalling the
/// other; a desired value out of the point's range is refused with 400 and nothing written;
/// a hub restart in the middle loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_out_of_range_values_and_a_hub_restart_are_survived() {
    let Site {
        mut hub,
        sim,
        runtime,
        _dir,
    } = start_site().await;
    let hub_ref = &hub;
    eventually("the meter is online first", DEADLINE, || async move {
        hub_ref.reported("meter-01").0["gateway"]["online"] == json!(true)
    })
    .await;
    sim.handle().set_bad_crc(2, true);
    sim.handle().set_values(1, Table::Input, 0, &[260]);
    eventually(
        "the noisy meter is offline, the boiler keeps its cycle",
        DEADLINE,
        || async move {
            hub_ref.reported("meter-01").0["gateway"]["online"] == json!(false)
                && hub_ref.reported("boiler-01").0["temperature"] == json!(26.0)
        },
    )
    .await;
    sim.handle().set_bad_crc(2, false);
    sim.handle().set_values(2, Table::Input, 0, &f32_cdab(42.0));
    eventually(
        "the meter is back with its new value",
        DEADLINE,
        || async move {
            let meter = hub_ref.reported("meter-01").0;
            meter["gateway"]["online"] == json!(true) && meter["power"]["active"] == json!(42.0)
        },
    )
    .await;

    let writes = register_writes(&sim, 1);
    let version = hub.set_desired("boiler-01", &json!({"setpoint": 7000.0}));
    eventually(
        "an out-of-range value is refused",
        DEADLINE,
        || async move {
            let setpoint = hub_ref.reported("boiler-01").0["setpoint"].clone();
            setpoint["ac"] == 400 && setpoint["av"] == version
        },
    )
    .await;
    assert_eq!(register_writes(&sim, 1), writes, "nothing written");
    assert_eq!(sim.handle().holding(1, 100), Some(200));

    hub.restart().await;
    sim.handle().set_values(1, Table::Input, 0, &[270]);
    let hub_ref = &hub;
    eventually(
        "values flow again after the hub restart",
        DEADLINE,
        || async move { hub_ref.reported("boiler-01").0["temperature"] == json!(27.0) },
    )
    .await;
    runtime.shutdown().await.expect("clean shutdown");
}
