//! The RTU simulator seen from a real tokio-modbus RTU client over a pty.

use std::time::Duration;

mod common;
use common::until;

use device_protocols::point::Table;
use device_protocols::serial::{self, SerialSettings};
use device_protocols::sim::{ExceptionRule, Generator, RtuSim, SimMap, UnitMap};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

/// Generous: only ever reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(5);
/// A timeout for requests that must not be answered.
const SHORT: Duration = Duration::from_millis(150);

fn map() -> SimMap {
    SimMap::new()
        .with_unit(
            1,
            UnitMap::new()
                .with_holding(0, &[100, 101, 102, 103])
                .with_input(0, &[200, 201])
                .with_coils(0, &[true, false, true])
                .with_discrete_inputs(10, &[false, true]),
        )
        .with_unit(
            7,
            UnitMap::new()
                .with_holding(0, &[700, 701])
                .with_input(5, &[705]),
        )
}

struct Setup {
    _dir: tempfile::TempDir,
    sim: RtuSim,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = RtuSim::start(dir.path().join("ttyBUS"), map()).expect("simulator starts");
    Setup { _dir: dir, sim }
}

fn client(sim: &RtuSim, unit: u8) -> Context {
    let port = serial::open(&SerialSettings::new(sim.path())).expect("pty opens");
    tokio_modbus::client::rtu::attach_slave(port, Slave(unit))
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(DEADLINE, f)
        .await
        .expect("answered before the deadline")
}

#[tokio::test]
async fn reads_and_writes_every_table_of_several_units() {
    let s = setup();
    let mut c = client(&s.sim, 1);
    assert_eq!(
        within(c.read_holding_registers(1, 3)).await.unwrap(),
        Ok(vec![101, 102, 103])
    );
    assert_eq!(
        within(c.read_input_registers(0, 2)).await.unwrap(),
        Ok(vec![200, 201])
    );
    assert_eq!(
        within(c.read_coils(0, 3)).await.unwrap(),
        Ok(vec![true, false, true])
    );
    assert_eq!(
        within(c.read_discrete_inputs(10, 2)).await.unwrap(),
        Ok(vec![false, true])
    );

    within(c.write_single_register(2, 4242))
        .await
        .unwrap()
        .unwrap();
    within(c.write_multiple_registers(0, &[1, 2]))
        .await
        .unwrap()
        .unwrap();
    within(c.write_single_coil(1, true)).await.unwrap().unwrap();
    within(c.write_multiple_coils(0, &[false, false]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        within(c.read_holding_registers(0, 4)).await.unwrap(),
        Ok(vec![1, 2, 4242, 103])
    );
    assert_eq!(
        within(c.read_coils(0, 3)).await.unwrap(),
        Ok(vec![false, false, true])
    );
    let h = s.sim.handle();
    assert_eq!(
        h.values(1, Table::Holding, 0, 4),
        Some(vec![1, 2, 4242, 103])
    );
    assert_eq!(h.values(1, Table::Coil, 0, 3), Some(vec![0, 0, 1]));

    // Unit 7 on the same line, same client, other data.
    c.set_slave(Slave(7));
    assert_eq!(
        within(c.read_holding_registers(0, 2)).await.unwrap(),
        Ok(vec![700, 701])
    );
    assert_eq!(
        within(c.read_input_registers(5, 1)).await.unwrap(),
        Ok(vec![705])
    );
    assert_eq!(
        h.holding(7, 0),
        Some(700),
        "unit 1's writes did not touch unit 7"
    );

    // Addresses that do not exist, and a read-only table written to by value.
    assert_eq!(
        within(c.read_holding_registers(1, 2)).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    h.set_values(7, Table::Input, 5, &[9]);
    assert_eq!(
        within(c.read_input_registers(5, 1)).await.unwrap(),
        Ok(vec![9])
    );
    assert_eq!(h.stats(7).unwrap().exceptions, 1);
}

#[tokio::test]
async fn silent_unit_times_out_while_the_others_answer() {
    let s = setup();
    let h = s.sim.handle();
    h.set_silent(7, true);
    let mut c = client(&s.sim, 7);
    assert!(
        timeout(SHORT, c.read_holding_registers(0, 1))
            .await
            .is_err(),
        "silent unit answered"
    );
    assert_eq!(h.requests(7), 1, "the request reached the unit");
    // A fresh client (the port is exclusive: close the old one first), as a bus would
    // after a timeout, so that a late answer cannot be taken for the next one.
    drop(c);
    let mut c = client(&s.sim, 1);
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![100])
    );
    h.set_silent(7, false);
    c.set_slave(Slave(7));
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![700])
    );
    // Ids without a unit never answer either.
    c.set_slave(Slave(99));
    assert!(
        timeout(SHORT, c.read_holding_registers(0, 1))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn exception_switches_answer_the_chosen_codes() {
    let s = setup();
    let h = s.sim.handle();
    h.add_exception(
        1,
        ExceptionRule::at(Table::Holding, 2..=2, ExceptionCode::IllegalDataAddress),
    );
    h.add_exception(
        1,
        ExceptionRule::at(Table::Input, 0..=9, ExceptionCode::ServerDeviceFailure),
    );
    h.add_exception(7, ExceptionRule::always(ExceptionCode::ServerDeviceBusy));
    let mut c = client(&s.sim, 1);
    // Overlapping the rule's range fails, the rest of the table does not.
    assert_eq!(
        within(c.read_holding_registers(0, 4)).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        within(c.read_holding_registers(0, 2)).await.unwrap(),
        Ok(vec![100, 101])
    );
    assert_eq!(
        within(c.read_holding_registers(3, 1)).await.unwrap(),
        Ok(vec![103])
    );
    assert_eq!(
        within(c.read_input_registers(1, 1)).await.unwrap(),
        Err(ExceptionCode::ServerDeviceFailure)
    );
    c.set_slave(Slave(7));
    assert_eq!(
        within(c.write_single_register(0, 1)).await.unwrap(),
        Err(ExceptionCode::ServerDeviceBusy)
    );
    assert_eq!(
        h.holding(7, 0),
        Some(700),
        "a refused write changes nothing"
    );
    h.clear_faults(7);
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![700])
    );
}

#[tokio::test]
async fn garbage_unit_makes_the_client_fail_to_decode() {
    let s = setup();
    let h = s.sim.handle();
    h.set_garbage(1, true);
    let mut c = client(&s.sim, 1);
    let res = within(c.read_holding_registers(0, 1)).await;
    assert!(
        matches!(&res, Err(tokio_modbus::Error::Transport(err)) if err.kind() == std::io::ErrorKind::InvalidData),
        "{res:?}"
    );
    // The healthy unit answers on a fresh connection; the garbage unit heals when switched.
    h.set_garbage(1, false);
    drop(c);
    let mut c = client(&s.sim, 7);
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![700])
    );
    c.set_slave(Slave(1));
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![100])
    );
}

#[tokio::test]
async fn bad_crc_answer_is_never_accepted() {
    let s = setup();
    s.sim.handle().set_bad_crc(7, true);
    let mut c = client(&s.sim, 7);
    // tokio-modbus drops a frame with a bad CRC: a timeout or a decode error, never a value.
    match timeout(SHORT, c.read_holding_registers(0, 1)).await {
        Err(_) | Ok(Err(_)) => {}
        Ok(Ok(v)) => panic!("corrupted answer accepted: {v:?}"),
    }
    assert_eq!(
        s.sim.handle().stats(7).unwrap().answered,
        1,
        "the unit did answer"
    );
}

#[tokio::test]
async fn slow_unit_answers_late() {
    let s = setup();
    s.sim
        .handle()
        .set_delay(7, Some(Duration::from_millis(400)));
    let mut c = client(&s.sim, 7);
    // A patient client gets the value …
    assert_eq!(
        within(c.read_holding_registers(1, 1)).await.unwrap(),
        Ok(vec![701])
    );
    // … an impatient one cannot: the unit waits 400 ms before answering. (The late answer
    // then sits in the port's input buffer, where it would be taken for the answer to the
    // next request: a bus must discard stale input before each request.)
    assert!(
        timeout(Duration::from_millis(50), c.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    until("late answer sent", || {
        s.sim.handle().stats(7).unwrap().answered >= 2
    })
    .await;
}

#[tokio::test]
async fn unplug_fails_the_client_and_replug_recovers() {
    let s = setup();
    let mut c = client(&s.sim, 1);
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![100])
    );
    s.sim.unplug().await.unwrap();
    let r = within(c.read_holding_registers(0, 1)).await;
    assert!(matches!(r, Err(tokio_modbus::Error::Transport(_))), "{r:?}");
    let err = serial::open(&SerialSettings::new(s.sim.path())).unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let pts = s.sim.replug().await.unwrap();
    assert_eq!(std::fs::read_link(s.sim.path()).unwrap(), pts);
    let mut c = client(&s.sim, 1);
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![100])
    );
}

#[tokio::test]
async fn noise_injected_on_the_line_reaches_the_client_raw() {
    let s = setup();
    let mut port = serial::open(&SerialSettings::new(s.sim.path())).unwrap();
    s.sim.inject_noise(&[0x00, 0x13, 0x37, 0xFF]);
    let mut buf = [0u8; 4];
    within(port.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, [0x00, 0x13, 0x37, 0xFF]);
}

#[tokio::test]
async fn server_survives_undecodable_requests() {
    let s = setup();
    let mut port = serial::open(&SerialSettings::new(s.sim.path())).unwrap();
    // Invalid function codes: tokio-modbus' server gives up on this stream; the line
    // restarts it behind the unchanged pty.
    tokio::io::AsyncWriteExt::write_all(&mut port, &[0x01, 0x77].repeat(40))
        .await
        .unwrap();
    drop(port);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut c = client(&s.sim, 1);
        if let Ok(Ok(Ok(v))) = timeout(SHORT, c.read_holding_registers(0, 1)).await {
            assert_eq!(v, vec![100]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never came back"
        );
    }
}

#[tokio::test]
async fn broadcast_writes_reach_every_unit_unanswered() {
    let s = setup();
    let mut c = client(&s.sim, 0);
    assert!(
        timeout(SHORT, c.write_single_register(1, 55))
            .await
            .is_err(),
        "broadcasts are not answered"
    );
    let h = s.sim.handle();
    until("broadcast applied", || {
        h.holding(1, 1) == Some(55) && h.holding(7, 1) == Some(55)
    })
    .await;
}

#[tokio::test]
async fn generated_values_change_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let map = SimMap::new().with_unit(
        3,
        UnitMap::new().with_generator(
            Table::Input,
            0,
            Generator::Counter {
                start: 0,
                step: 1,
                every: Duration::from_millis(20),
            },
        ),
    );
    let sim = RtuSim::start(dir.path().join("ttyBUS"), map).unwrap();
    let mut c = client(&sim, 3);
    let first = within(c.read_input_registers(0, 1)).await.unwrap().unwrap()[0];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = within(c.read_input_registers(0, 1)).await.unwrap().unwrap()[0];
        if now != first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counter never moved"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn simulator_serves_a_real_serial_port_path() {
    // The "real port" is a pty slave; the client talks through the master side.
    let master = device_protocols::pty::PtyMaster::open().unwrap();
    let settings = SerialSettings {
        baud: 19_200,
        parity: device_protocols::serial::Parity::Even,
        ..SerialSettings::new(master.slave_path())
    };
    let sim = RtuSim::start_on_serial(settings, map()).unwrap();
    assert_eq!(sim.path(), master.slave_path());
    let mut c = tokio_modbus::client::rtu::attach_slave(master, Slave(7));
    assert_eq!(
        within(c.read_holding_registers(0, 2)).await.unwrap(),
        Ok(vec![700, 701])
    );
    assert!(
        sim.unplug().await.is_err(),
        "a real port cannot be unplugged by software"
    );
}

#[tokio::test]
async fn unplug_mid_transaction_loses_the_answer_in_flight() {
    let s = setup();
    let h = s.sim.handle();
    h.set_delay(7, Some(Duration::from_millis(300)));
    let mut c = client(&s.sim, 7);
    let pending = tokio::spawn(async move { c.read_holding_registers(0, 1).await });
    // Unplug once the request is being served (the unit is "thinking").
    until("request arrived", || h.requests(7) > 0).await;
    s.sim.unplug().await.unwrap();
    let res = within(pending).await.unwrap();
    assert!(
        matches!(res, Err(tokio_modbus::Error::Transport(_))),
        "{res:?}"
    );
    h.set_delay(7, None);
    s.sim.replug().await.unwrap();
    let mut c = client(&s.sim, 7);
    // The new client gets its own answer (register 1), not the old one (register 0) that the
    // unit was still working on (it would come first: the line serves one request at a time).
    assert_eq!(
        within(c.read_holding_registers(1, 1)).await.unwrap(),
        Ok(vec![701])
    );
}
