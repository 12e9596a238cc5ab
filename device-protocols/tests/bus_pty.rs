//! The bus runtime over real pseudo-terminals, with the RTU simulator on the other end:
//! every data type and order end to end, and faults (silent unit, exceptions, garbage,
//! slow answers, unplug/replug). Conditions are awaited with deadlines, never slept for.

// Test helpers are test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{all_ok, clean, eventually, health_until, poll_until};
use device_protocols::backoff::BackoffConfig;
use device_protocols::bus::{
    Bus, BusConfig, BusHandle, Exception, PointError, Transport, UnitConfig, UnitPoll, WriteError,
};
use device_protocols::codec::{self, WriteData};
use device_protocols::health::{BusHealth, BusStatus, PortState, UnitStatus};
use device_protocols::point::{DataType, Order, Point, Table, Value};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{ExceptionRule, RtuSim, SimMap, UnitMap};
use tokio::sync::mpsc;
use tokio_modbus::ExceptionCode;

/// Fast settings for a pty: short timeout and backoff so faults play out in a second or two.
fn config(path: &std::path::Path) -> BusConfig {
    let mut settings = SerialSettings::new(path);
    settings.baud = 115_200;
    let mut c = BusConfig::new("test-bus", Transport::Serial(settings));
    // Generous for a loaded CI machine (the suite runs in parallel on 2 cores).
    c.timeout = Duration::from_millis(400);
    c.turnaround = Duration::from_millis(1);
    c.unit_backoff = BackoffConfig::new(Duration::from_millis(300), Duration::from_secs(1));
    c.reopen_backoff = BackoffConfig::new(Duration::from_millis(50), Duration::from_millis(300));
    c.offline_after = 2;
    c
}

fn u16_points(n: u16, start: u16) -> Vec<Point> {
    (0..n)
        .map(|i| {
            Point::new(
                format!("r{}", start + i),
                Table::Holding,
                start + i,
                DataType::U16,
            )
            .unwrap()
        })
        .collect()
}

fn holding_unit(values: &[u16]) -> UnitMap {
    UnitMap::new().with_holding(0, values)
}

/// A simulator whose units `1..=n` each hold four registers of their own id's value.
fn id_valued_sim(dir: &tempfile::TempDir, n: u8) -> RtuSim {
    let map = (1..=n).fold(SimMap::new(), |map, u| {
        map.with_unit(u, holding_unit(&[u16::from(u); 4]))
    });
    RtuSim::start(dir.path().join("tty"), map).unwrap()
}

/// Units `1..=n`, each with four `u16` points polled every 30 ms.
fn four_point_units(n: u8) -> Vec<UnitConfig> {
    (1..=n)
        .map(|u| UnitConfig::new(u, Duration::from_millis(30), u16_points(4, 0)))
        .collect()
}

/// Spawns a bus on the simulator's port and waits until every unit is online.
async fn spawn_online(
    sim: &RtuSim,
    units: Vec<UnitConfig>,
) -> (BusHandle, mpsc::Receiver<UnitPoll>) {
    let (bus, polls) = Bus::spawn(config(sim.path()), units).unwrap();
    health_until(&bus, "all online", |h| h.units.iter().all(|u| u.online)).await;
    (bus, polls)
}

fn cycles(h: &BusHealth, unit: u8) -> u64 {
    h.unit(unit).expect("unit on bus").poll_cycles
}

/// A value of `t` that exercises its whole width.
fn sample(t: DataType, flip: bool) -> Value {
    match (t, flip) {
        (DataType::U16, false) => Value::U64(54_321),
        (DataType::U16, true) => Value::U64(7),
        (DataType::I16, false) => Value::I64(-1234),
        (DataType::I16, true) => Value::I64(32_000),
        (DataType::U32, false) => Value::U64(3_000_000_123),
        (DataType::U32, true) => Value::U64(65_536),
        (DataType::I32, false) => Value::I64(-2_000_000_001),
        (DataType::I32, true) => Value::I64(123_456_789),
        (DataType::U64, false) => Value::U64(0x1122_3344_5566_7788),
        (DataType::U64, true) => Value::U64(u64::MAX),
        (DataType::I64, false) => Value::I64(-0x0102_0304_0506_0708),
        (DataType::I64, true) => Value::I64(i64::MIN),
        (DataType::F32, false) => Value::F64(230.5),
        (DataType::F32, true) => Value::F64(-0.125),
        (DataType::F64, false) => Value::F64(-1_234.567_8),
        (DataType::F64, true) => Value::F64(6.02e23),
        (DataType::String { .. }, false) => Value::String("ABCDEFG".into()),
        (DataType::String { .. }, true) => Value::String("xy".into()),
        (DataType::Bool | DataType::Bit(_), f) => Value::Bool(!f),
    }
}

/// One-shot reads, and writes rejected before they reach the line.
async fn reads_and_rejections(bus: &BusHandle) {
    // One-shot reads between polls (commissioning).
    assert_eq!(
        bus.read(5, "voltage").await,
        Ok(Value::F64(230.200_012_207_031_25))
    );
    assert_eq!(bus.read(5, "pump").await, Ok(Value::Bool(true)));
    assert!(matches!(
        bus.read(5, "nope").await,
        Err(WriteError::UnknownPoint { .. })
    ));

    // Rejections never reach the line.
    assert!(matches!(
        bus.write(5, "temperature", Value::F64(1.0)).await,
        Err(WriteError::NotWritable(_))
    ));
    assert!(matches!(
        bus.write(5, "setpoint", Value::F64(7000.0)).await,
        Err(WriteError::Encode { .. })
    ));
    assert!(matches!(
        bus.write(5, "nope", Value::U64(1)).await,
        Err(WriteError::UnknownPoint { .. })
    ));
    assert_eq!(
        bus.write(9, "pump", Value::U64(1)).await,
        Err(WriteError::UnknownUnit(9))
    );
}

/// Every type in every order (contiguous holding registers, writable), then scaled, input,
/// coil and discrete points; and a simulator map holding `sample(…, false)` for each.
fn e2e_points_and_map() -> (Vec<Point>, usize, UnitMap) {
    let types = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::String { len: 7 },
        DataType::Bool,
        DataType::Bit(5),
    ];
    let mut points = Vec::new();
    let mut address = 0;
    for order in Order::ALL {
        for t in types {
            let p = Point::new(format!("{t}-{order:?}"), Table::Holding, address, t)
                .unwrap()
                .with_order(order)
                .with_writable(true);
            address += p.count();
            points.push(p);
        }
    }
    let mut scaled = Point::new("setpoint", Table::Holding, 200, DataType::U16)
        .unwrap()
        .with_scale(0.1, 0.0)
        .with_writable(true);
    scaled.unit = Some("°C".into());
    points.push(scaled);
    points.push(
        Point::new("temperature", Table::Input, 10, DataType::I16)
            .unwrap()
            .with_scale(0.1, -40.0),
    );
    // Eastron SDM320Y manual, p. 42: 43 66 33 34 = 230.2 V.
    points.push(Point::new("voltage", Table::Input, 0, DataType::F32).unwrap());
    points.push(
        Point::new("pump", Table::Coil, 3, DataType::Bool)
            .unwrap()
            .with_writable(true),
    );
    let mut fc15 = Point::new("valve", Table::Coil, 4, DataType::Bool)
        .unwrap()
        .with_writable(true);
    fc15.write_multiple = true;
    points.push(fc15);
    points.push(Point::new("door", Table::DiscreteInput, 9, DataType::Bool).unwrap());

    let mut map = UnitMap::new()
        .with_input(0, &[0x4366, 0x3334])
        .with_input(10, &[650]) // 65.0 - 40 = 25.0
        .with_holding(200, &[215])
        .with_coils(0, &[false; 8])
        .with_discrete_inputs(9, &[true]);
    let typed = types.len() * 4;
    for p in &points[..typed] {
        let regs = match codec::encode(p, &sample(p.data_type, false)).unwrap() {
            WriteData::Registers(r) => r,
            WriteData::Bit { bit, set } => vec![codec::apply_bit(0xA00F, bit, set)],
            WriteData::Coil(_) => unreachable!(),
        };
        map = map.with_holding(p.address, &regs);
    }
    (points, typed, map)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_reads_and_writes_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (points, typed, map) = e2e_points_and_map();
    let sim = RtuSim::start(dir.path().join("tty"), SimMap::new().with_unit(5, map)).unwrap();
    let (bus, mut polls) = Bus::spawn(
        config(sim.path()),
        vec![UnitConfig::new(
            5,
            Duration::from_millis(100),
            points.clone(),
        )],
    )
    .unwrap();

    let poll = poll_until(&mut polls, "a complete poll", all_ok).await;
    for p in &points[..typed] {
        assert_eq!(
            poll.get(&p.name).unwrap().as_ref().unwrap(),
            &sample(p.data_type, false),
            "{}",
            p.name
        );
    }
    assert_eq!(poll.get("setpoint"), Some(&Ok(Value::F64(21.5))));
    let Some(Ok(Value::F64(t))) = poll.get("temperature") else {
        panic!()
    };
    assert!((t - 25.0).abs() < 1e-9);
    assert_eq!(
        poll.get("voltage"),
        Some(&Ok(Value::F64(230.200_012_207_031_25)))
    );
    assert_eq!(poll.get("door"), Some(&Ok(Value::Bool(true))));
    // First cycle: the input read bridging registers 2..=9 gets 02 and is split (7 requests);
    // from then on 6: 104 contiguous holding registers, setpoint, 2 input reads, coils, discrete.
    assert_eq!(poll.requests, 7);
    let next = poll_until(&mut polls, "second poll", |_| true).await;
    assert_eq!(
        next.requests, 6,
        "planner merged the contiguous registers, split remembered"
    );

    let fc = |code: usize| sim.handle().stats(5).unwrap().by_function[code];
    for p in &points[..typed] {
        let v = sample(p.data_type, true);
        let (fc6, fc16) = (fc(6), fc(16));
        let back = bus.write(5, &p.name, v.clone()).await.unwrap();
        // One register: fc 6 (bits by read-modify-write); more: fc 16.
        let single = p.count() == 1;
        assert_eq!(
            (fc(6) - fc6, fc(16) - fc16),
            (u64::from(single), u64::from(!single)),
            "function code for {}",
            p.name
        );
        assert_eq!(back, v, "read-back of {}", p.name);
        let regs = sim
            .handle()
            .values(5, Table::Holding, p.address, p.count())
            .unwrap();
        match codec::encode(p, &v).unwrap() {
            WriteData::Registers(want) => assert_eq!(regs, want, "{}", p.name),
            WriteData::Bit { bit, set } => {
                // Read-modify-write kept the other bits.
                assert_eq!(regs[0], codec::apply_bit(0xA00F, bit, set), "{}", p.name);
            }
            WriteData::Coil(_) => unreachable!(),
        }
    }
    assert_eq!(
        bus.write(5, "setpoint", Value::F64(22.45)).await,
        Ok(Value::F64(22.5))
    );
    assert_eq!(sim.handle().holding(5, 200), Some(225));
    let (fc5, fc15) = (fc(5), fc(15));
    assert_eq!(
        bus.write(5, "pump", Value::Bool(true)).await,
        Ok(Value::Bool(true))
    );
    assert_eq!((fc(5) - fc5, fc(15) - fc15), (1, 0), "pump: fc 5");
    assert_eq!(
        bus.write(5, "valve", Value::U64(1)).await,
        Ok(Value::Bool(true))
    );
    assert_eq!(
        (fc(5) - fc5, fc(15) - fc15),
        (1, 1),
        "valve: write_multiple, fc 15"
    );
    assert_eq!(sim.handle().values(5, Table::Coil, 3, 2), Some(vec![1, 1]));

    reads_and_rejections(&bus).await;

    // The next polls see the written values.
    poll_until(&mut polls, "written values polled", |p| {
        p.get("u64-DCBA") == Some(&Ok(Value::U64(u64::MAX)))
            && p.get("setpoint") == Some(&Ok(Value::F64(22.5)))
    })
    .await;
    bus.shutdown().await;
    assert_eq!(bus.health().port, PortState::Stopped);
}

/// Three units; unit 2 goes silent. It is reported offline and backed off (one request per
/// attempt, even though its plan has two requests), units 1 and 3 keep being polled, and
/// when unit 2 answers again it comes back without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_unit_is_backed_off_alone_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let map = SimMap::new()
        .with_unit(1, holding_unit(&[1; 10]))
        .with_unit(2, holding_unit(&[2; 10]).with_input(0, &[7]))
        .with_unit(3, holding_unit(&[3; 10]));
    let sim = RtuSim::start(dir.path().join("tty"), map).unwrap();
    let mut two = u16_points(10, 0);
    two.push(Point::new("in0", Table::Input, 0, DataType::U16).unwrap());
    let units = vec![
        UnitConfig::new(1, Duration::from_millis(50), u16_points(10, 0)),
        UnitConfig::new(2, Duration::from_millis(50), two),
        UnitConfig::new(3, Duration::from_millis(50), u16_points(10, 0)),
    ];
    let (bus, mut polls) = Bus::spawn(config(sim.path()), units).unwrap();
    poll_until(&mut polls, "unit 2 answers", |p| p.unit == 2 && all_ok(p)).await;
    health_until(&bus, "all online", |h| h.units.iter().all(|u| u.online)).await;

    sim.handle().set_silent(2, true);
    let h = health_until(&bus, "unit 2 offline", |h| !h.unit(2).unwrap().online).await;
    assert!(h.unit(1).unwrap().online && h.unit(3).unwrap().online);
    let before_requests = sim.handle().requests(2);
    let before = bus.health();
    // Healthy units keep being polled while unit 2 stays dead.
    health_until(&bus, "units 1 and 3 polled 20 more times", |h| {
        cycles(h, 1) >= cycles(&before, 1) + 20 && cycles(h, 3) >= cycles(&before, 3) + 20
    })
    .await;
    let after = bus.health();
    let dead = after.unit(2).unwrap();
    assert!(!dead.online);
    assert!(dead.backoff.is_some(), "unit 2 is backed off");
    // Each attempt on the dead unit is exactly one request (its cycle ends at the timeout),
    // and it got far fewer attempts than the healthy units got cycles.
    let attempts = sim.handle().requests(2) - before_requests;
    let timeouts = dead.timeouts - before.unit(2).unwrap().timeouts;
    assert_eq!(attempts, timeouts, "one request per timeout, no retries");
    assert!(
        attempts * 4 < cycles(&after, 1) - cycles(&before, 1),
        "dead unit is backed off: {attempts} attempts"
    );
    // The cycle in which it went silent retried the request once (one lost frame must not
    // flap a unit's health) and took it offline; the cycles after that are one request each.
    let first = poll_until(&mut polls, "the first failed poll of unit 2", |p| {
        p.unit == 2 && !all_ok(p)
    })
    .await;
    assert_eq!(first.requests, 2, "timeout, retry, offline");
    let failed = poll_until(&mut polls, "a failed poll of unit 2", |p| p.unit == 2).await;
    assert_eq!(failed.requests, 1);
    assert!(
        failed
            .readings
            .iter()
            .all(|r| r.result == Err(PointError::Timeout))
    );
    assert_eq!(after.unit(1).unwrap().timeouts, 0);
    assert_eq!(after.unit(3).unwrap().timeouts, 0);

    sim.handle().set_silent(2, false);
    poll_until(&mut polls, "unit 2 answers again", |p| {
        p.unit == 2 && all_ok(p)
    })
    .await;
    let h = health_until(&bus, "unit 2 online", |h| h.unit(2).unwrap().online).await;
    assert_eq!(h.unit(2).unwrap().consecutive_errors, 0);
    assert!(h.unit(2).unwrap().backoff.is_none());
    bus.shutdown().await;
}

/// Exceptions mean alive: the unit stays online, the failing point carries the code, its
/// neighbours keep their values. An undefined register inside a merged read (exception 02)
/// is split off in the very first cycle, and the split is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_keep_the_unit_online_and_02_splits_the_read() {
    let dir = tempfile::tempdir().unwrap();
    // Registers 0..=4 and 6..=9 exist; 5 is undefined (02). Register 20 answers 04.
    let unit = UnitMap::new()
        .with_holding(0, &[10, 11, 12, 13, 14])
        .with_holding(6, &[16, 17, 18, 19])
        .with_holding(20, &[20]);
    let sim = RtuSim::start(dir.path().join("tty"), SimMap::new().with_unit(1, unit)).unwrap();
    sim.handle().add_exception(
        1,
        ExceptionRule::at(Table::Holding, 20..=20, ExceptionCode::ServerDeviceFailure),
    );
    let mut points: Vec<Point> = [0u16, 1, 2, 3, 4, 6, 7, 8, 9]
        .iter()
        .map(|&a| Point::new(format!("r{a}"), Table::Holding, a, DataType::U16).unwrap())
        .collect();
    points.push(Point::new("r5", Table::Holding, 5, DataType::U16).unwrap());
    points.push(Point::new("r20", Table::Holding, 20, DataType::U16).unwrap());
    let (bus, mut polls) = Bus::spawn(
        config(sim.path()),
        vec![UnitConfig::new(1, Duration::from_millis(50), points)],
    )
    .unwrap();

    let first = poll_until(&mut polls, "first poll", |_| true).await;
    for a in [0u16, 1, 2, 3, 4, 6, 7, 8, 9] {
        assert_eq!(
            first.get(&format!("r{a}")),
            Some(&Ok(Value::U64(u64::from(a) + 10))),
            "r{a}"
        );
    }
    assert_eq!(
        first.get("r5"),
        Some(&Err(PointError::Exception(Exception(2))))
    );
    assert_eq!(
        first.get("r20"),
        Some(&Err(PointError::Exception(Exception(4))))
    );
    let h = bus.health();
    let u = h.unit(1).unwrap();
    // (Exceptions are not timeouts: r5 and r20 carry their codes above.)
    assert!(u.online, "exceptions mean alive");
    assert!(u.exceptions >= 2);

    // Learned: later cycles need no more splitting and give the same readings (clean cycles:
    // on a loaded machine an answer can time out now and then and be retried).
    let second = poll_until(&mut polls, "a clean poll", clean).await;
    let exceptions = exceptions_over_cycles(&sim, &mut polls, CYCLES).await;
    let third = poll_until(&mut polls, "a later clean poll", clean).await;
    assert_eq!(second.readings, third.readings);
    // Per cycle: 02 for r5 alone and 04 for r20 — no merged request fails any more (that
    // would be 3 or more per cycle).
    assert!(
        exceptions <= 2 * (CYCLES + 1),
        "{exceptions} exceptions in {CYCLES} cycles"
    );
    bus.shutdown().await;
}

/// Some devices answer 03 (illegal data value) instead of 02 to a read that spans a register
/// they cannot serve: on a merged read that is split like 02, so the neighbours keep their
/// values, and the split is remembered. A single point refused with 03 carries the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_03_on_a_merged_read_is_split_like_02() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u16> = (10..20).collect();
    let sim = RtuSim::start(
        dir.path().join("tty"),
        SimMap::new().with_unit(1, holding_unit(&values)),
    )
    .unwrap();
    sim.handle().add_exception(
        1,
        ExceptionRule::at(Table::Holding, 5..=5, ExceptionCode::IllegalDataValue),
    );
    let (bus, mut polls) = Bus::spawn(
        config(sim.path()),
        vec![UnitConfig::new(
            1,
            Duration::from_millis(50),
            u16_points(10, 0),
        )],
    )
    .unwrap();

    let first = poll_until(&mut polls, "first poll", |_| true).await;
    for a in (0u16..10).filter(|&a| a != 5) {
        assert_eq!(
            first.get(&format!("r{a}")),
            Some(&Ok(Value::U64(u64::from(a) + 10))),
            "r{a}"
        );
    }
    assert_eq!(
        first.get("r5"),
        Some(&Err(PointError::Exception(Exception(3))))
    );
    assert!(first.requests > 1, "the merged read was split");
    let h = bus.health();
    assert!(h.unit(1).unwrap().online, "exceptions mean alive");

    // Learned: later cycles give the same readings with only r5's own request refused (a
    // merged read refused as well would be 2 per cycle).
    let second = poll_until(&mut polls, "a clean poll", clean).await;
    let exceptions = exceptions_over_cycles(&sim, &mut polls, CYCLES).await;
    let third = poll_until(&mut polls, "a later clean poll", clean).await;
    assert_eq!(second.readings, third.readings);
    assert_eq!(second.readings, first.readings);
    assert!(
        exceptions <= CYCLES + 2,
        "{exceptions} exceptions in {CYCLES} cycles"
    );
    bus.shutdown().await;
}

/// Line noise: a unit answering garbage is counted and reported while the others keep
/// being read; noise injected between frames does not stop the bus; healed, it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_healthy_units_keep_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 3);
    let (bus, mut polls) = spawn_online(&sim, four_point_units(3)).await;

    sim.handle().set_garbage(2, true);
    let bad = poll_until(&mut polls, "unit 2 garbage", |p| {
        p.unit == 2 && matches!(p.readings[0].result, Err(PointError::Garbage(_)))
    })
    .await;
    assert!(bad.readings.iter().all(|r| r.result.is_err()));
    // Only corrupted answers means no data: the unit is reported offline, the others not.
    let h = health_until(&bus, "unit 2 offline", |h| !h.unit(2).unwrap().online).await;
    assert!(h.unit(1).unwrap().online && h.unit(3).unwrap().online);
    assert_eq!(h.unit(2).unwrap().timeouts, 0);
    assert_eq!(h.unit(2).unwrap().status, UnitStatus::Offline);
    assert!(
        h.unit(2).unwrap().backoff.is_some(),
        "offline means backed off"
    );
    let before = bus.health();
    health_until(&bus, "more garbage counted, healthy units polled", |h| {
        h.unit(2).unwrap().crc_errors >= before.unit(2).unwrap().crc_errors + 3
            && cycles(h, 1) >= cycles(&before, 1) + 10
            && cycles(h, 3) >= cycles(&before, 3) + 10
    })
    .await;
    // Healthy units still deliver values.
    poll_until(&mut polls, "unit 1 ok", |p| p.unit == 1 && all_ok(p)).await;
    poll_until(&mut polls, "unit 3 ok", |p| p.unit == 3 && all_ok(p)).await;

    sim.handle().set_garbage(2, false);
    poll_until(&mut polls, "unit 2 recovers", |p| p.unit == 2 && all_ok(p)).await;
    health_until(&bus, "unit 2 online again", |h| h.unit(2).unwrap().online).await;

    // Raw noise on the line while polling: the bus keeps going and every unit reads again.
    for _ in 0..5 {
        sim.inject_noise(&[0x01, 0x03, 0xFF, 0x00, 0x42]);
        poll_until(&mut polls, "a poll after noise", |_| true).await;
    }
    for u in 1..=3 {
        poll_until(&mut polls, "clean polls after noise", |p| {
            p.unit == u && all_ok(p)
        })
        .await;
    }
    assert!(matches!(bus.health().port, PortState::Open));
    bus.shutdown().await;
}

/// A unit whose answers arrive with a broken CRC (noise, bad termination): tokio-modbus
/// never frames them, so each attempt costs a timeout; the unit is backed off like a silent
/// one but reported with corrupted answers, not timeouts, so the technician looks at the
/// wiring and line settings rather than the power. The other unit keeps its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_unit_is_reported_as_corrupted_and_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 2);
    let (bus, mut polls) = spawn_online(&sim, four_point_units(2)).await;

    sim.handle().set_bad_crc(2, true);
    let h = health_until(&bus, "unit 2 offline", |h| !h.unit(2).unwrap().online).await;
    let u2 = h.unit(2).unwrap();
    assert!(u2.crc_errors >= 2, "{u2:?}");
    assert_eq!(u2.timeouts, 0, "bytes came back: not silence");
    assert!(u2.backoff.is_some(), "backed off like a silent unit");
    let bad = poll_until(&mut polls, "a failed poll of unit 2", |p| {
        p.unit == 2 && !all_ok(p)
    })
    .await;
    assert!(
        bad.readings
            .iter()
            .all(|r| matches!(r.result, Err(PointError::Garbage(_)))),
        "{bad:?}"
    );
    let before = bus.health();
    health_until(&bus, "unit 1 keeps being polled", |h| {
        cycles(h, 1) >= cycles(&before, 1) + 10
    })
    .await;
    poll_until(&mut polls, "unit 1 values", |p| p.unit == 1 && all_ok(p)).await;

    sim.handle().set_bad_crc(2, false);
    poll_until(&mut polls, "unit 2 recovers", |p| p.unit == 2 && all_ok(p)).await;
    health_until(&bus, "unit 2 online", |h| h.unit(2).unwrap().online).await;
    bus.shutdown().await;
}

/// Slow answers: beyond the timeout they are timeouts and the slow unit is backed off; within
/// it they are fine. The other unit keeps being polled. (The simulator keeps the line busy
/// while a slow unit "thinks", like a real device would hold the RS-485 line, so the healthy
/// unit may lose a transaction when the slow one is attempted; it is never starved.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_alone_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 2);
    let (bus, mut polls) = spawn_online(&sim, four_point_units(2)).await;

    sim.handle().set_delay(2, Some(Duration::from_millis(700)));
    health_until(&bus, "unit 2 offline", |h| !h.unit(2).unwrap().online).await;
    let before = bus.health();
    let u2 = |h: &BusHealth| h.unit(2).unwrap().timeouts;
    let after = health_until(
        &bus,
        "unit 1 keeps being read while unit 2 keeps timing out",
        |h| {
            h.unit(1).unwrap().successes >= before.unit(1).unwrap().successes + 20
                && u2(h) > u2(&before)
        },
    )
    .await;
    assert!(!after.unit(2).unwrap().online, "slow unit reported");
    poll_until(&mut polls, "unit 1 values", |p| p.unit == 1 && all_ok(p)).await;

    // Slow but within the timeout: fine.
    sim.handle().set_delay(2, Some(Duration::from_millis(40)));
    poll_until(&mut polls, "unit 2 answers slowly", |p| {
        p.unit == 2 && all_ok(p)
    })
    .await;
    health_until(&bus, "unit 2 online", |h| h.unit(2).unwrap().online).await;
    bus.shutdown().await;
}

/// The adapter vanishes in the middle of a transaction and comes back behind the same path:
/// the bus reports the port down, reopens it with backoff, and polling resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_mid_transaction_then_replug_resumes_polling() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 2);
    let units = (1..=2)
        .map(|u| {
            let points = u16_points(4, 0)
                .into_iter()
                .map(|p| p.with_writable(true))
                .collect();
            UnitConfig::new(u, Duration::from_millis(20), points)
        })
        .collect();
    let (bus, mut polls) = spawn_online(&sim, units).await;
    assert_eq!(bus.health().opens, 1);

    // Unit 2 answers after 300 ms: wait until a request to it is in flight, then unplug.
    sim.handle().set_delay(2, Some(Duration::from_millis(300)));
    let sent = sim.handle().requests(2);
    eventually("a request to unit 2 in flight", || {
        let n = sim.handle().requests(2);
        async move { n > sent }
    })
    .await;
    sim.unplug().await.unwrap();
    // Down lasts until the replug (the link is gone, so no reopen can succeed); a reopen
    // meanwhile would mean the bus reached some other pty, so stop at either and tell which.
    let h = health_until(&bus, "port down (or reopened)", |h| {
        matches!(h.port, PortState::Down { .. }) || h.opens > 1
    })
    .await;
    assert_eq!(
        h.opens, 1,
        "the bus reopened the port while it was unplugged: {h:#?}"
    );
    assert!(
        h.units.iter().all(|u| !u.online),
        "units unreachable while the port is down"
    );
    let PortState::Down { error, .. } = &h.port else {
        unreachable!()
    };
    assert!(
        error.contains(&sim.path().display().to_string()),
        "the error names the port: {error}"
    );
    // Writes fail fast with a port error while it is down.
    let w = bus.write(1, "r0", Value::U64(1)).await;
    assert!(
        matches!(
            w,
            Err(WriteError::Write {
                source: PointError::Port(_),
                ..
            })
        ),
        "{w:?}"
    );

    health_until(
        &bus,
        "reopen attempts fail while unplugged",
        |h| matches!(h.port, PortState::Down { attempts, .. } if attempts >= 2),
    )
    .await;
    sim.handle().set_delay(2, None);
    sim.replug().await.unwrap();
    health_until(&bus, "port reopened", |h| {
        h.port == PortState::Open && h.opens == 2
    })
    .await;
    for u in 1..=2 {
        poll_until(&mut polls, "polling resumed", |p| p.unit == u && all_ok(p)).await;
    }
    health_until(&bus, "all online again", |h| {
        h.units.iter().all(|u| u.online)
    })
    .await;
    bus.shutdown().await;
}

/// Write failures are typed: a silent unit times out, a refusing unit gives its exception
/// code, and a unit with a dead line after the write gives a read-back error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let map = SimMap::new()
        .with_unit(1, holding_unit(&[0; 4]))
        .with_unit(2, holding_unit(&[0; 4]));
    let sim = RtuSim::start(dir.path().join("tty"), map).unwrap();
    let writable = |a: u16| {
        Point::new(format!("w{a}"), Table::Holding, a, DataType::U16)
            .unwrap()
            .with_writable(true)
    };
    let units = (1..=2)
        .map(|u| UnitConfig::new(u, Duration::from_millis(50), vec![writable(0), writable(1)]))
        .collect();
    let (bus, _polls) = spawn_online(&sim, units).await;

    assert_eq!(bus.write(1, "w0", Value::U64(42)).await, Ok(Value::U64(42)));
    sim.handle().add_exception(
        1,
        ExceptionRule::at(Table::Holding, 1..=1, ExceptionCode::IllegalDataValue),
    );
    assert!(matches!(
        bus.write(1, "w1", Value::U64(1)).await,
        Err(WriteError::Write {
            source: PointError::Exception(Exception(3)),
            ..
        })
    ));
    // One-shot reads share the read-back path: its failures name the point.
    assert!(matches!(
        bus.read(1, "w1").await,
        Err(WriteError::ReadBack {
            point,
            source: PointError::Exception(Exception(3)),
        }) if point == "w1"
    ));
    sim.handle().set_silent(2, true);
    assert!(matches!(
        bus.write(2, "w0", Value::U64(1)).await,
        Err(WriteError::Write {
            source: PointError::Timeout,
            ..
        })
    ));
    assert_eq!(sim.handle().holding(2, 0), Some(0));
    bus.shutdown().await;
}

#[test]
fn bus_config_is_validated_before_spawning() {
    let c = BusConfig::new("b", Transport::Tcp("127.0.0.1:1".into()));
    let unit = |u: u8, points: Vec<Point>| UnitConfig::new(u, Duration::from_secs(1), points);
    let err = |units| Bus::spawn(c.clone(), units).err().map(|e| e.to_string());
    assert_eq!(
        err(vec![unit(0, vec![])]),
        Some("bus b: unit id 0 is not a device address (1–247)".into())
    );
    assert_eq!(
        err(vec![unit(3, vec![]), unit(3, vec![])]),
        Some("bus b: unit 3 is configured twice".into())
    );
    assert_eq!(
        err(vec![unit(3, [u16_points(1, 0), u16_points(1, 0)].concat())]),
        Some("bus b: unit 3: point `r0` is defined twice".into())
    );
    let mut zero = unit(4, vec![]);
    zero.poll = Duration::ZERO;
    assert_eq!(
        err(vec![zero]),
        Some("bus b: unit 4 poll period must be greater than zero".into())
    );
}

/// A consumer that does not read its poll events never stalls the bus: events are dropped
/// and counted, polling goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_never_stalls_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let sim = RtuSim::start(
        dir.path().join("tty"),
        SimMap::new().with_unit(1, holding_unit(&[1; 2])),
    )
    .unwrap();
    let mut c = config(sim.path());
    c.event_capacity = 2;
    let (bus, polls) = Bus::spawn(
        c,
        vec![UnitConfig::new(
            1,
            Duration::from_millis(5),
            u16_points(2, 0),
        )],
    )
    .unwrap();
    let h = health_until(&bus, "events dropped while polling continues", |h| {
        h.events_dropped >= 5 && cycles(h, 1) >= 7
    })
    .await;
    assert_eq!(h.port, PortState::Open);
    drop(polls);
    bus.shutdown().await;
}

/// Fairness: with every unit always due, units take turns request by request, so a unit with
/// a big plan cannot crowd out the others (and its cycles take proportionally longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_take_turns_request_by_request() {
    let dir = tempfile::tempdir().unwrap();
    let spread: Vec<u16> = (0..5).map(|i| i * 100).collect();
    let mut big = UnitMap::new();
    for &a in &spread {
        big = big.with_holding(a, &[a]);
    }
    let map = SimMap::new()
        .with_unit(1, big)
        .with_unit(2, holding_unit(&[2]))
        .with_unit(3, holding_unit(&[3]));
    let sim = RtuSim::start(dir.path().join("tty"), map).unwrap();
    let big_points = spread
        .iter()
        .map(|&a| Point::new(format!("r{a}"), Table::Holding, a, DataType::U16).unwrap())
        .collect();
    let units = vec![
        UnitConfig::new(1, Duration::from_millis(1), big_points),
        UnitConfig::new(2, Duration::from_millis(1), u16_points(1, 0)),
        UnitConfig::new(3, Duration::from_millis(1), u16_points(1, 0)),
    ];
    let (bus, mut polls) = Bus::spawn(config(sim.path()), units).unwrap();
    let big_poll = poll_until(&mut polls, "unit 1 cycle", |p| p.unit == 1 && all_ok(p)).await;
    assert_eq!(big_poll.requests, 5, "gaps of 100 are not bridged");
    let h = health_until(&bus, "300 transactions", |h| {
        h.units.iter().map(|u| u.transactions).sum::<u64>() >= 300
    })
    .await;
    let tx: Vec<u64> = h.units.iter().map(|u| u.transactions).collect();
    let (min, max) = (*tx.iter().min().unwrap(), *tx.iter().max().unwrap());
    assert!(max - min <= 3, "transactions per unit {tx:?}");
    // Unit 1 needs 5 requests per cycle, the others 1.
    assert!(cycles(&h, 2) >= 4 * cycles(&h, 1), "{h:#?}");
    bus.shutdown().await;
}

/// A unit that answers every read with an exception (here 04, server device failure) is
/// alive but delivers no data: it is reported faulted, not online, and backed off like an
/// offline unit, while its neighbour keeps being polled. Healed, it is online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_refusing_every_read_is_faulted_and_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 2);
    let (bus, mut polls) = spawn_online(&sim, four_point_units(2)).await;
    assert!(
        bus.health()
            .units
            .iter()
            .all(|u| u.status == UnitStatus::Online)
    );

    sim.handle()
        .add_exception(2, ExceptionRule::always(ExceptionCode::ServerDeviceFailure));
    let h = health_until(&bus, "unit 2 faulted", |h| {
        h.unit(2).unwrap().status == UnitStatus::Faulted
    })
    .await;
    let u2 = h.unit(2).unwrap();
    assert!(u2.backoff.is_some(), "a faulted unit is backed off");
    assert!(
        u2.last_error.as_deref().unwrap().contains("exception 04"),
        "{u2:?}"
    );
    assert_eq!(h.unit(1).unwrap().status, UnitStatus::Online);
    let refused = poll_until(&mut polls, "a refused poll of unit 2", |p| {
        p.unit == 2 && !all_ok(p)
    })
    .await;
    assert!(
        refused
            .readings
            .iter()
            .all(|r| r.result == Err(PointError::Exception(Exception(4))))
    );

    // Backed off: far fewer attempts than the healthy unit's cycles.
    let before = bus.health();
    let requests = sim.handle().requests(2);
    let after = health_until(&bus, "unit 1 polled 60 more times", |h| {
        cycles(h, 1) >= cycles(&before, 1) + 60
    })
    .await;
    let attempts = sim.handle().requests(2) - requests;
    assert!(attempts * 5 < 60, "faulted unit polled {attempts} times");
    let u2 = after.unit(2).unwrap();
    assert_eq!(u2.status, UnitStatus::Faulted);
    assert!(u2.online, "it answers");
    assert_eq!(u2.timeouts, 0);

    sim.handle().clear_faults(2);
    poll_until(&mut polls, "unit 2 delivers again", |p| {
        p.unit == 2 && all_ok(p)
    })
    .await;
    let h = health_until(&bus, "unit 2 online", |h| {
        h.unit(2).unwrap().status == UnitStatus::Online
    })
    .await;
    assert!(h.unit(2).unwrap().backoff.is_none());
    bus.shutdown().await;
}

/// A unit where only some reads are refused still delivers data: online, not faulted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_refusing_some_reads_stays_online() {
    let dir = tempfile::tempdir().unwrap();
    let sim = RtuSim::start(
        dir.path().join("tty"),
        SimMap::new().with_unit(1, holding_unit(&[1; 4]).with_holding(100, &[5])),
    )
    .unwrap();
    sim.handle().add_exception(
        1,
        ExceptionRule::at(Table::Holding, 100..=100, ExceptionCode::ServerDeviceBusy),
    );
    let mut points = u16_points(4, 0);
    points.push(Point::new("far", Table::Holding, 100, DataType::U16).unwrap());
    let (bus, mut polls) = Bus::spawn(
        config(sim.path()),
        vec![UnitConfig::new(1, Duration::from_millis(30), points)],
    )
    .unwrap();
    for _ in 0..3 {
        let p = poll_until(&mut polls, "a poll", |_| true).await;
        assert_eq!(
            p.get("far"),
            Some(&Err(PointError::Exception(Exception(6))))
        );
        assert_eq!(p.get("r0"), Some(&Ok(Value::U64(1))));
        let h = bus.health();
        let u = h.unit(1).unwrap();
        assert_eq!(u.status, UnitStatus::Online);
        assert!(u.backoff.is_none());
    }
    bus.shutdown().await;
}

/// The offline rule: a unit that stops answering is reported offline within the cycle in
/// which it fell silent — its request is retried once (one lost frame must not flap its
/// health) and the second miss (the default `offline_after`) takes it offline and backs it
/// off. No backoff period passes before it is reported: here the first backoff is a minute,
/// far beyond the test's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_is_offline_within_one_cycle() {
    assert_eq!(
        BusConfig::new("b", Transport::Tcp("127.0.0.1:1".into())).offline_after,
        2,
        "the documented default"
    );
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 2);
    let mut c = config(sim.path());
    c.offline_after = 2;
    c.unit_backoff = BackoffConfig::new(Duration::from_mins(1), Duration::from_mins(1));
    let (bus, mut polls) = Bus::spawn(c, four_point_units(2)).unwrap();
    health_until(&bus, "all online", |h| {
        h.units.iter().all(|u| u.status == UnitStatus::Online)
    })
    .await;

    sim.handle().set_silent(2, true);
    let requests = sim.handle().requests(2);
    let failed = poll_until(&mut polls, "unit 2's failed cycle", |p| {
        p.unit == 2 && !all_ok(p)
    })
    .await;
    // The health was settled before the cycle was emitted.
    let h = bus.health();
    let u2 = h.unit(2).unwrap();
    assert_eq!(u2.status, UnitStatus::Offline, "{u2:?}");
    assert!(!u2.online);
    assert_eq!(u2.consecutive_unanswered, 2);
    assert!(
        u2.backoff.is_some_and(|b| b >= Duration::from_secs(40)),
        "backed off when it went offline: {u2:?}"
    );
    assert_eq!(failed.requests, 2, "the request and one retry");
    assert_eq!(sim.handle().requests(2) - requests, 2);
    assert!(
        failed
            .readings
            .iter()
            .all(|r| r.result == Err(PointError::Timeout))
    );
    assert_eq!(h.unit(1).unwrap().status, UnitStatus::Online);
    bus.shutdown().await;
}

/// One lost answer is retried at once and does not flap the unit's health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lost_answer_is_retried_without_going_offline() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 1);
    let (bus, mut polls) = spawn_online(&sim, four_point_units(1)).await;
    // Silent for exactly one request: the retry finds it answering again.
    sim.handle().set_silent(1, true);
    let requests = sim.handle().requests(1);
    common::until("one request unanswered", || {
        sim.handle().requests(1) > requests
    })
    .await;
    sim.handle().set_silent(1, false);
    let h = health_until(&bus, "a timeout counted and recovered", |h| {
        let u = h.unit(1).unwrap();
        u.timeouts == 1 && u.consecutive_unanswered == 0 && u.successes > 0
    })
    .await;
    let u = h.unit(1).unwrap();
    assert!(u.backoff.is_none());
    assert_eq!(u.status, UnitStatus::Online);
    // The retry filled the cycle: every cycle so far delivered every value.
    let cycles = u.poll_cycles;
    let mut seen = 0;
    while seen < cycles {
        let p = poll_until(&mut polls, "the cycles so far", |_| true).await;
        assert!(all_ok(&p), "{p:?}");
        seen += 1;
    }
    bus.shutdown().await;
}

/// Awaits `cond` on the status watch, with a deadline.
async fn status_until(
    rx: &mut tokio::sync::watch::Receiver<BusStatus>,
    what: &str,
    cond: impl FnMut(&BusStatus) -> bool,
) -> BusStatus {
    let found = match tokio::time::timeout(common::DEADLINE, rx.wait_for(cond)).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for: {what}\nlast status: {:#?}",
            rx.borrow()
        )
    })
}

fn statuses(s: &BusStatus) -> Vec<UnitStatus> {
    s.units.iter().map(|u| u.status).collect()
}

/// Health changes are observable without poll events (nobody reads them here: a port that
/// is down or a backed-off unit sends none anyway): the status watch follows a unit going
/// offline, the port going down and coming back, and units answering again — and stays
/// quiet while nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_are_observable_without_poll_events() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 2);
    let (bus, polls) = Bus::spawn(config(sim.path()), four_point_units(2)).unwrap();
    drop(polls);
    let mut rx = bus.watch_status();
    assert_eq!(
        statuses(&rx.borrow_and_update()),
        [UnitStatus::Unknown, UnitStatus::Unknown]
    );
    status_until(&mut rx, "all online", |s| {
        statuses(s) == [UnitStatus::Online, UnitStatus::Online]
    })
    .await;

    // Quiet while nothing changes, though every transaction updates the health.
    rx.mark_unchanged();
    let before = bus.health();
    health_until(&bus, "10 more cycles each", |h| {
        cycles(h, 1) >= cycles(&before, 1) + 10 && cycles(h, 2) >= cycles(&before, 2) + 10
    })
    .await;
    assert!(
        !rx.has_changed().unwrap(),
        "no status change: no notification"
    );

    // A unit goes silent: offline (with the reason), and backed off.
    sim.handle().set_silent(2, true);
    let s = status_until(&mut rx, "unit 2 offline", |s| {
        s.unit(2).unwrap().status == UnitStatus::Offline
    })
    .await;
    assert_eq!(s.unit(2).unwrap().error.as_deref(), Some("timeout"));
    assert_eq!(s.unit(1).unwrap().status, UnitStatus::Online);
    assert!(bus.health().unit(2).unwrap().backoff.is_some());

    // The port goes away: every unit offline, naming the port.
    sim.unplug().await.unwrap();
    let s = status_until(&mut rx, "port down", |s| s.port_down.is_some()).await;
    assert_eq!(statuses(&s), [UnitStatus::Offline, UnitStatus::Offline]);
    let error = s.unit(1).unwrap().error.clone().unwrap();
    assert!(
        error.starts_with("port: ") && error.contains(&sim.path().display().to_string()),
        "{error}"
    );

    sim.handle().set_silent(2, false);
    sim.replug().await.unwrap();
    let s = status_until(&mut rx, "all online again", |s| {
        statuses(s) == [UnitStatus::Online, UnitStatus::Online]
    })
    .await;
    assert_eq!(s.port_down, None);
    assert!(s.units.iter().all(|u| u.error.is_none()));
    bus.shutdown().await;
}

/// Round robin starts with the first configured unit, and keeps the configured order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_starts_with_the_first_unit() {
    let dir = tempfile::tempdir().unwrap();
    let sim = id_valued_sim(&dir, 3);
    // One request per cycle each, all due together every 200 ms.
    let units = (1..=3)
        .map(|u| UnitConfig::new(u, Duration::from_millis(200), u16_points(1, 0)))
        .collect();
    let (bus, mut polls) = Bus::spawn(config(sim.path()), units).unwrap();
    let mut order = Vec::new();
    for _ in 0..6 {
        let p = poll_until(&mut polls, "a poll", |_| true).await;
        assert!(all_ok(&p), "{p:?}");
        order.push(p.unit);
    }
    assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    bus.shutdown().await;
}

/// `UnitConfig::with_write_multiple`: a device without fc 5/6 gets fc 15/16 for every
/// write, single coils and registers included; read-backs work as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_multiple_unit_uses_fc_15_and_16() {
    let dir = tempfile::tempdir().unwrap();
    let sim = RtuSim::start(
        dir.path().join("tty"),
        SimMap::new().with_unit(1, holding_unit(&[0; 2]).with_coils(0, &[false])),
    )
    .unwrap();
    let unit = UnitConfig::new(
        1,
        Duration::from_millis(50),
        vec![
            Point::new("reg", Table::Holding, 0, DataType::U16)
                .unwrap()
                .with_writable(true),
            Point::new("flag", Table::Holding, 1, DataType::Bit(2))
                .unwrap()
                .with_writable(true),
            Point::new("coil", Table::Coil, 0, DataType::Bool)
                .unwrap()
                .with_writable(true),
        ],
    )
    .with_write_multiple(true);
    assert!(unit.points.iter().all(|p| p.write_multiple));
    let (bus, _polls) = spawn_online(&sim, vec![unit]).await;
    assert_eq!(bus.write(1, "reg", Value::U64(9)).await, Ok(Value::U64(9)));
    assert_eq!(
        bus.write(1, "flag", Value::Bool(true)).await,
        Ok(Value::Bool(true))
    );
    assert_eq!(
        bus.write(1, "coil", Value::Bool(true)).await,
        Ok(Value::Bool(true))
    );
    let by_fc = sim.handle().stats(1).unwrap().by_function;
    assert_eq!((by_fc[5], by_fc[6]), (0, 0), "no single writes");
    assert_eq!((by_fc[15], by_fc[16]), (1, 2));
    assert_eq!(
        sim.handle().values(1, Table::Holding, 0, 2),
        Some(vec![9, 4])
    );
    bus.shutdown().await;
}

/// Cycles over which the exceptions of a learned unit are counted.
const CYCLES: u64 = 10;

/// The simulator's exception count of unit 1 over the next `cycles` poll cycles. Counted over
/// many cycles, not one: the test task may read the counter late, after the next cycle has
/// begun, which moves a window's edge by one cycle.
async fn exceptions_over_cycles(
    sim: &RtuSim,
    polls: &mut tokio::sync::mpsc::Receiver<device_protocols::bus::UnitPoll>,
    cycles: u64,
) -> u64 {
    let before = sim.handle().stats(1).unwrap().exceptions;
    for _ in 0..cycles {
        poll_until(polls, "a poll", |_| true).await;
    }
    sim.handle().stats(1).unwrap().exceptions - before
}
