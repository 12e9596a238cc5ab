//! The Modbus TCP simulator seen from a real tokio-modbus TCP client.

use std::time::Duration;

use device_protocols::point::Table;
use device_protocols::sim::{ExceptionRule, SimMap, TcpSim, UnitMap};
use tokio::time::timeout;
use tokio_modbus::client::{Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

const DEADLINE: Duration = Duration::from_secs(5);

fn map() -> SimMap {
    SimMap::new()
        .with_unit(
            1,
            UnitMap::new()
                .with_holding(0, &[10, 11])
                .with_coils(0, &[false]),
        )
        .with_unit(
            2,
            UnitMap::new()
                .with_input(0, &[20])
                .with_discrete_inputs(0, &[true]),
        )
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(DEADLINE, f)
        .await
        .expect("answered before the deadline")
}

#[tokio::test]
async fn units_behind_one_endpoint_read_write_and_fault() {
    let sim = TcpSim::start(map()).await.unwrap();
    let mut c = tokio_modbus::client::tcp::connect_slave(sim.addr(), Slave(1))
        .await
        .unwrap();
    assert_eq!(
        within(c.read_holding_registers(0, 2)).await.unwrap(),
        Ok(vec![10, 11])
    );
    within(c.write_multiple_registers(0, &[5, 6]))
        .await
        .unwrap()
        .unwrap();
    within(c.write_single_coil(0, true)).await.unwrap().unwrap();
    assert_eq!(
        sim.handle().values(1, Table::Holding, 0, 2),
        Some(vec![5, 6])
    );
    assert_eq!(within(c.read_coils(0, 1)).await.unwrap(), Ok(vec![true]));
    c.set_slave(Slave(2));
    assert_eq!(
        within(c.read_input_registers(0, 1)).await.unwrap(),
        Ok(vec![20])
    );
    assert_eq!(
        within(c.read_discrete_inputs(0, 1)).await.unwrap(),
        Ok(vec![true])
    );

    sim.handle()
        .add_exception(2, ExceptionRule::always(ExceptionCode::GatewayTargetDevice));
    assert_eq!(
        within(c.read_input_registers(0, 1)).await.unwrap(),
        Err(ExceptionCode::GatewayTargetDevice)
    );
    sim.handle().set_silent(1, true);
    c.set_slave(Slave(1));
    assert!(
        timeout(Duration::from_millis(150), c.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    assert_eq!(sim.handle().requests(1), 5, "4 answered + 1 unanswered");
}

#[tokio::test]
async fn stop_closes_connections_and_restart_serves_the_same_state() {
    let mut sim = TcpSim::start(map()).await.unwrap();
    let mut c = tokio_modbus::client::tcp::connect_slave(sim.addr(), Slave(1))
        .await
        .unwrap();
    assert_eq!(
        within(c.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![10])
    );
    sim.stop();
    let r = within(c.read_holding_registers(0, 1)).await;
    assert!(matches!(r, Err(tokio_modbus::Error::Transport(_))), "{r:?}");
    assert!(
        tokio_modbus::client::tcp::connect(sim.addr())
            .await
            .is_err()
    );

    sim.handle().set_values(1, Table::Holding, 1, &[99]);
    sim.restart().await.unwrap();
    let mut c = tokio_modbus::client::tcp::connect_slave(sim.addr(), Slave(1))
        .await
        .unwrap();
    assert_eq!(
        within(c.read_holding_registers(0, 2)).await.unwrap(),
        Ok(vec![10, 99])
    );
}

#[tokio::test]
async fn rtu_over_tcp_serves_rtu_frames_and_drops_connections_on_unplug() {
    use device_protocols::sim::RtuSim;
    let sim = RtuSim::start_rtu_over_tcp("127.0.0.1:0".parse().unwrap(), map())
        .await
        .unwrap();
    let addr = sim.tcp_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // RTU framing (slave id + CRC) on a TCP stream, as a serial device server passes it.
    let mut c = tokio_modbus::client::rtu::attach_slave(stream, Slave(2));
    assert_eq!(
        within(c.read_input_registers(0, 1)).await.unwrap(),
        Ok(vec![20])
    );
    sim.handle().set_garbage(2, true);
    assert!(within(c.read_input_registers(0, 1)).await.is_err());
    sim.handle().set_garbage(2, false);

    sim.unplug().await.unwrap();
    let res = within(c.read_input_registers(0, 1)).await;
    assert!(
        matches!(res, Err(tokio_modbus::Error::Transport(_))),
        "{res:?}"
    );
    // The next connection is served.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = tokio_modbus::client::rtu::attach_slave(stream, Slave(1));
    assert_eq!(
        within(c.read_holding_registers(1, 1)).await.unwrap(),
        Ok(vec![11])
    );
}
