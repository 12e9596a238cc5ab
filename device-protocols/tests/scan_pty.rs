//! Bus scan over a pty against the simulator.

use std::time::Duration;

use device_protocols::bus::Transport;
use device_protocols::point::Table;
use device_protocols::scan::{self, ProbeOutcome, ScanError, ScanSettings};
use device_protocols::serial::{self, SerialSettings};
use device_protocols::sim::{ExceptionRule, RtuSim, SimMap, UnitMap};
use tokio_modbus::ExceptionCode;

fn sim_with(ids: &[u8]) -> (tempfile::TempDir, RtuSim) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut map = SimMap::new();
    for &id in ids {
        map = map.with_unit(id, UnitMap::new().with_holding(0, &[u16::from(id)]));
    }
    let sim = RtuSim::start(dir.path().join("ttyBUS"), map).expect("simulator starts");
    (dir, sim)
}

fn attach(sim: &RtuSim) -> tokio_modbus::client::Context {
    let port = serial::open(&SerialSettings::new(sim.path())).expect("pty opens");
    tokio_modbus::client::rtu::attach(port)
}

#[tokio::test]
async fn scan_finds_exactly_the_simulated_units() {
    let (_dir, sim) = sim_with(&[2, 9, 17]);
    // Unit 9 has no register 0 … an exception answer still means "present".
    sim.handle().set_values(9, Table::Input, 0, &[1]);
    sim.handle()
        .add_exception(9, ExceptionRule::always(ExceptionCode::IllegalDataAddress));
    let mut ctx = attach(&sim);
    let settings = ScanSettings {
        units: 1..=20,
        timeout: Duration::from_millis(40),
        ..ScanSettings::default()
    };
    let mut seen = Vec::new();
    let report = scan::scan(&mut ctx, &settings, |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(report.found, [2, 9, 17]);
    assert!(report.garbled.is_empty());
    assert_eq!(seen.len(), 20);
    assert_eq!(seen.last().unwrap().done, 20);
    assert!(seen.iter().all(|p| p.total == 20));
    assert_eq!(
        seen[8].outcome,
        ProbeOutcome::Exception(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(seen[0].outcome, ProbeOutcome::Silent);
    // Every id was really probed on the line.
    assert_eq!(sim.handle().requests(17), 1);
}

#[tokio::test]
async fn full_range_scan_finds_the_first_and_last_ids() {
    let (_dir, sim) = sim_with(&[1, 100, 247]);
    let mut ctx = attach(&sim);
    // Short, to keep 244 silent ids quick, but not so short that a present unit's answer
    // misses it on a loaded 2-core machine.
    let settings = ScanSettings {
        timeout: Duration::from_millis(50),
        ..ScanSettings::default()
    };
    let mut probes = 0;
    let report = scan::scan(&mut ctx, &settings, |_| probes += 1)
        .await
        .unwrap();
    assert_eq!(report.found, [1, 100, 247]);
    assert_eq!(probes, 247);
}

#[tokio::test]
async fn garbled_and_silent_units_are_told_apart() {
    let (_dir, sim) = sim_with(&[3, 4, 5]);
    sim.handle().set_garbage(4, true);
    sim.handle().set_silent(5, true);
    let mut ctx = attach(&sim);
    let settings = ScanSettings {
        units: 3..=6,
        timeout: Duration::from_millis(100),
        ..ScanSettings::default()
    };
    let report = scan::scan(&mut ctx, &settings, |_| {}).await.unwrap();
    assert_eq!(report.found, [3]);
    assert_eq!(report.garbled, [4]);
}

#[tokio::test]
async fn unplug_stops_the_scan_with_an_error() {
    let (_dir, sim) = sim_with(&[1]);
    let mut ctx = attach(&sim);
    sim.unplug().await.unwrap();
    let settings = ScanSettings {
        units: 1..=5,
        timeout: Duration::from_millis(200),
        ..ScanSettings::default()
    };
    let err = scan::scan(&mut ctx, &settings, |_| {}).await.unwrap_err();
    assert!(
        err.to_string().starts_with("bus scan stopped at unit 1: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_late_answer_does_not_hide_the_next_unit() {
    let (_dir, sim) = sim_with(&[4, 5]);
    // Unit 4 answers after the scan has given up on it and probed unit 5; its late answer
    // arrives first (the simulated line serves one request at a time), then unit 5's. The
    // late answer lands mid-way through unit 5's wait (at 600 ms of 400..800 ms), with wide
    // margins either side so a loaded machine's scheduling delays cannot move it out.
    sim.handle().set_delay(4, Some(Duration::from_millis(600)));
    let mut ctx = attach(&sim);
    let settings = ScanSettings {
        units: 4..=5,
        timeout: Duration::from_millis(400),
        ..ScanSettings::default()
    };
    let mut seen = Vec::new();
    let report = scan::scan(&mut ctx, &settings, |p| seen.push(p.outcome))
        .await
        .unwrap();
    assert_eq!(seen[0], ProbeOutcome::Silent);
    assert_eq!(report.found, [5]);
    // Unit 4's late answer was taken for unit 5's, detected, and unit 5 probed again.
    assert_eq!(sim.handle().requests(5), 2);
}

#[tokio::test]
async fn scan_works_on_modbus_tcp_too() {
    let map = SimMap::new()
        .with_unit(5, UnitMap::new().with_holding(0, &[1]))
        .with_unit(6, UnitMap::new().with_input(0, &[1]));
    let sim = device_protocols::sim::TcpSim::start(map).await.unwrap();
    let mut ctx = tokio_modbus::client::tcp::connect(sim.addr())
        .await
        .unwrap();
    let settings = ScanSettings {
        units: 4..=7,
        timeout: Duration::from_millis(100),
        probe: scan::Probe::ReadInput {
            address: 0,
            count: 1,
        },
        ..ScanSettings::default()
    };
    let report = scan::scan(&mut ctx, &settings, |_| {}).await.unwrap();
    // Unit 5 has no input registers: exception 02, still present.
    assert_eq!(report.found, [5, 6]);
}

/// A Modbus TCP gateway answers 0A/0B itself for ids with no device behind it: those are not
/// found devices.
#[tokio::test]
async fn gateway_exceptions_are_not_found_devices() {
    let map = SimMap::new()
        .with_unit(5, UnitMap::new().with_holding(0, &[1]))
        .with_unit(6, UnitMap::new().with_holding(0, &[1]));
    let sim = device_protocols::sim::TcpSim::start(map).await.unwrap();
    sim.handle()
        .set_absent_exception(Some(ExceptionCode::GatewayTargetDevice));
    sim.handle().add_exception(
        6,
        ExceptionRule::always(ExceptionCode::GatewayPathUnavailable),
    );
    let mut ctx = tokio_modbus::client::tcp::connect(sim.addr())
        .await
        .unwrap();
    let settings = ScanSettings {
        units: 4..=7,
        timeout: Duration::from_millis(100),
        ..ScanSettings::default()
    };
    let mut seen = Vec::new();
    let report = scan::scan(&mut ctx, &settings, |p| seen.push(p.outcome))
        .await
        .unwrap();
    assert_eq!(report.found, [5]);
    assert!(report.garbled.is_empty());
    assert_eq!(
        seen,
        [
            ProbeOutcome::GatewayNoResponse(ExceptionCode::GatewayTargetDevice),
            ProbeOutcome::Answered,
            ProbeOutcome::GatewayNoResponse(ExceptionCode::GatewayPathUnavailable),
            ProbeOutcome::GatewayNoResponse(ExceptionCode::GatewayTargetDevice),
        ]
    );
}

/// `scan_port` opens the port itself, and closes it: the simulator serving RTU over TCP takes
/// one connection at a time, so a second scan (or a bus) only gets answers if the first scan
/// let go of its connection.
#[tokio::test]
async fn scan_port_opens_and_closes_its_own_port() {
    let (_dir, sim) = sim_with(&[2, 9]);
    let settings = ScanSettings {
        units: 1..=10,
        timeout: Duration::from_millis(100),
        ..ScanSettings::default()
    };
    let serial = Transport::Serial(SerialSettings::new(sim.path()));
    let mut probes = 0;
    let report = scan::scan_port(&serial, &settings, |_| probes += 1)
        .await
        .unwrap();
    assert_eq!(report.found, [2, 9]);
    assert_eq!(probes, 10);

    let map = SimMap::new()
        .with_unit(3, UnitMap::new().with_holding(0, &[3]))
        .with_unit(4, UnitMap::new().with_holding(0, &[4]));
    let tcp_sim = RtuSim::start_rtu_over_tcp("127.0.0.1:0".parse().unwrap(), map)
        .await
        .unwrap();
    let rtu_over_tcp = Transport::RtuOverTcp(tcp_sim.tcp_addr().unwrap().to_string());
    let settings = ScanSettings {
        units: 2..=5,
        timeout: Duration::from_millis(100),
        ..ScanSettings::default()
    };
    for round in 0..2 {
        let report = scan::scan_port(&rtu_over_tcp, &settings, |_| {})
            .await
            .unwrap();
        assert_eq!(report.found, [3, 4], "round {round}");
    }
}

#[tokio::test]
async fn scan_port_names_what_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ttyNOPE");
    let err = scan::scan_port(
        &Transport::Serial(SerialSettings::new(&missing)),
        &ScanSettings::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ScanError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}
