//! The bus runtime over TCP: Modbus TCP against the simulator's TCP server, and RTU framing
//! over TCP through a transparent "serial device server" (TCP ↔ pty bridge) in front of the
//! RTU simulator.

// Test helpers are test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{all_ok, health_until, poll_until};
use device_protocols::backoff::BackoffConfig;
use device_protocols::bus::{
    Bus, BusConfig, BusHandle, Exception, PointError, Transport, UnitConfig, UnitPoll,
};
use device_protocols::health::{PortState, UnitStatus};
use device_protocols::point::{DataType, Order, Point, Table, Value};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{ExceptionRule, RtuSim, SimMap, TcpSim, UnitMap};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_modbus::ExceptionCode;

fn config(transport: Transport) -> BusConfig {
    let mut c = BusConfig::new("tcp-bus", transport);
    c.timeout = Duration::from_millis(400);
    c.unit_backoff = BackoffConfig::new(Duration::from_millis(300), Duration::from_secs(1));
    c.reopen_backoff = BackoffConfig::new(Duration::from_millis(50), Duration::from_millis(300));
    c.offline_after = 2;
    c
}

fn points() -> Vec<Point> {
    vec![
        Point::new("power", Table::Holding, 0, DataType::F32)
            .unwrap()
            .with_order(Order::CDAB)
            .with_writable(true),
        Point::new("count", Table::Holding, 2, DataType::U32)
            .unwrap()
            .with_writable(true),
        Point::new("relay", Table::Coil, 0, DataType::Bool)
            .unwrap()
            .with_writable(true),
    ]
}

fn unit_map() -> UnitMap {
    // 230.5 = 0x4366_8000, low word first; 70000 = 0x0001_1170.
    UnitMap::new()
        .with_holding(0, &[0x8000, 0x4366, 0x0001, 0x1170])
        .with_coils(0, &[true])
}

async fn read_write_roundtrip(bus: &BusHandle, polls: &mut mpsc::Receiver<UnitPoll>, unit: u8) {
    let p = poll_until(polls, "values", |p| p.unit == unit && all_ok(p)).await;
    assert_eq!(p.get("power"), Some(&Ok(Value::F64(230.5))));
    assert_eq!(p.get("count"), Some(&Ok(Value::U64(70_000))));
    assert_eq!(p.get("relay"), Some(&Ok(Value::Bool(true))));
    // An f32 cannot hold 0.1: the read-back differs from what was written as an f64, and is
    // the same value in the point's own type.
    let back = bus.write(unit, "power", Value::F64(0.1)).await.unwrap();
    assert_ne!(back, Value::F64(0.1));
    assert!(points()[0].same_value(&back, &Value::F64(0.1)), "{back:?}");
    assert_eq!(
        bus.write(unit, "power", Value::F64(-1.5)).await,
        Ok(Value::F64(-1.5))
    );
    assert_eq!(
        bus.write(unit, "count", Value::U64(5)).await,
        Ok(Value::U64(5))
    );
    assert_eq!(
        bus.write(unit, "relay", Value::Bool(false)).await,
        Ok(Value::Bool(false))
    );
}

/// Modbus TCP with two unit ids behind one endpoint (a gateway); one goes silent and is
/// backed off while the other keeps being polled; the server restarts and the bus reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_reads_writes_and_reconnects() {
    let sim = TcpSim::start(
        SimMap::new()
            .with_unit(1, unit_map())
            .with_unit(2, unit_map()),
    )
    .await
    .unwrap();
    let addr = sim.addr();
    let units = vec![
        UnitConfig::new(1, Duration::from_millis(30), points()),
        UnitConfig::new(2, Duration::from_millis(30), points()),
    ];
    let (bus, mut polls) = Bus::spawn(config(Transport::Tcp(addr.to_string())), units).unwrap();
    read_write_roundtrip(&bus, &mut polls, 1).await;
    assert_eq!(
        sim.handle().values(1, Table::Holding, 0, 4),
        Some(vec![0x0000, 0xBFC0, 0, 5])
    );

    sim.handle().set_silent(2, true);
    let h = health_until(&bus, "unit 2 offline", |h| !h.unit(2).unwrap().online).await;
    assert!(h.unit(1).unwrap().online);
    let before = h.unit(1).unwrap().poll_cycles;
    health_until(&bus, "unit 1 keeps being polled", |h| {
        h.unit(1).unwrap().poll_cycles >= before + 10
    })
    .await;

    // The server goes away and comes back on the same address.
    drop(sim);
    health_until(&bus, "connection lost", |h| {
        matches!(h.port, PortState::Down { .. })
    })
    .await;
    let sim = TcpSim::bind(
        addr,
        SimMap::new()
            .with_unit(1, unit_map())
            .with_unit(2, unit_map()),
    )
    .await
    .unwrap();
    health_until(&bus, "reconnected", |h| {
        h.port == PortState::Open && h.opens >= 2
    })
    .await;
    for u in 1..=2 {
        poll_until(&mut polls, "polling resumed", |p| p.unit == u && all_ok(p)).await;
    }
    drop(sim);
    bus.shutdown().await;
}

/// A transparent serial device server: accepts TCP connections and shuttles bytes to and from
/// a serial port (here the simulator's pty), one connection at a time.
async fn device_server(settings: SerialSettings) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let Ok(mut port) = device_protocols::serial::open(&settings) else {
                continue;
            };
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut port).await;
        }
    });
    addr
}

/// RTU frames over TCP (the common field setup with Ethernet-to-RS-485 converters): reads,
/// writes, and garbage from one unit does not stop the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_through_a_device_server() {
    let dir = tempfile::tempdir().unwrap();
    let sim = RtuSim::start(
        dir.path().join("tty"),
        SimMap::new()
            .with_unit(1, unit_map())
            .with_unit(2, unit_map()),
    )
    .unwrap();
    let addr = device_server(SerialSettings::new(sim.path())).await;
    let units = vec![
        UnitConfig::new(1, Duration::from_millis(30), points()),
        UnitConfig::new(2, Duration::from_millis(30), points()),
    ];
    let (bus, mut polls) =
        Bus::spawn(config(Transport::RtuOverTcp(addr.to_string())), units).unwrap();
    read_write_roundtrip(&bus, &mut polls, 2).await;

    sim.handle().set_garbage(1, true);
    poll_until(&mut polls, "unit 1 garbage", |p| {
        p.unit == 1 && matches!(p.readings[0].result, Err(PointError::Garbage(_)))
    })
    .await;
    let before = bus.health().unit(2).unwrap().successes;
    health_until(&bus, "unit 2 keeps being read", |h| {
        h.unit(2).unwrap().successes >= before + 10
    })
    .await;
    sim.handle().set_garbage(1, false);
    poll_until(&mut polls, "unit 1 recovers", |p| p.unit == 1 && all_ok(p)).await;
    bus.shutdown().await;
}

/// Behind a Modbus TCP gateway, an absent device is answered by the gateway itself with
/// exception 0B (target failed to respond) or 0A (path unavailable): that is no answer from
/// the unit. It is reported offline and backed off like a silent unit, not online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_exceptions_0a_0b_mean_offline() {
    let sim = TcpSim::start(
        SimMap::new()
            .with_unit(1, unit_map())
            .with_unit(2, unit_map()),
    )
    .await
    .unwrap();
    // Unit 2 is configured in the gateway but its device does not answer; unit 3 is not
    // behind the gateway at all.
    sim.handle()
        .add_exception(2, ExceptionRule::always(ExceptionCode::GatewayTargetDevice));
    sim.handle()
        .set_absent_exception(Some(ExceptionCode::GatewayPathUnavailable));
    let units = (1..=3)
        .map(|u| UnitConfig::new(u, Duration::from_millis(30), points()))
        .collect();
    let (bus, mut polls) =
        Bus::spawn(config(Transport::Tcp(sim.addr().to_string())), units).unwrap();
    let h = health_until(&bus, "units 2 and 3 offline, unit 1 online", |h| {
        h.unit(1).unwrap().status == UnitStatus::Online
            && h.unit(2).unwrap().status == UnitStatus::Offline
            && h.unit(3).unwrap().status == UnitStatus::Offline
    })
    .await;
    for u in [2, 3] {
        let uh = h.unit(u).unwrap();
        assert!(!uh.online);
        assert!(uh.backoff.is_some(), "unit {u} backed off: {uh:?}");
        assert!(uh.gateway_errors >= 2, "{uh:?}");
        assert_eq!(uh.exceptions, 0, "0A/0B are not counted as refusals");
    }
    let p = poll_until(&mut polls, "a failed poll of unit 2", |p| p.unit == 2).await;
    assert_eq!(
        p.get("power"),
        Some(&Err(PointError::Exception(
            Exception::GATEWAY_TARGET_FAILED
        )))
    );

    // Backed off: unit 2 costs few requests while unit 1 is polled on.
    let before = bus.health();
    let requests = sim.handle().requests(2);
    health_until(&bus, "unit 1 polled 60 more times", |h| {
        h.unit(1).unwrap().poll_cycles >= before.unit(1).unwrap().poll_cycles + 60
    })
    .await;
    let attempts = sim.handle().requests(2) - requests;
    assert!(attempts * 5 < 60, "unit 2 attempted {attempts} times");

    // The device comes back behind the gateway.
    sim.handle().clear_faults(2);
    poll_until(&mut polls, "unit 2 answers", |p| p.unit == 2 && all_ok(p)).await;
    assert_eq!(bus.health().unit(2).unwrap().status, UnitStatus::Online);
    bus.shutdown().await;
}

/// A peer that takes each connection, reads one request and closes the connection: the bus
/// reports "connection closed by peer", not whatever `errno` happened to hold (tokio-modbus
/// reports a TCP end of stream as `last_os_error`, e.g. "Operation now in progress (os error
/// 115)"), and keeps reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_closing_the_connection_is_named() {
    for transport in [Transport::Tcp, Transport::RtuOverTcp] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                // Dropped: FIN after the request was read.
            }
        });
        let (bus, _polls) = Bus::spawn(
            config(transport(addr)),
            vec![UnitConfig::new(1, Duration::from_millis(30), points())],
        )
        .unwrap();
        let h = health_until(&bus, "connection closed by the peer, reopened", |h| {
            h.opens >= 2 && matches!(h.port, PortState::Down { .. })
        })
        .await;
        let PortState::Down { error, .. } = &h.port else {
            unreachable!()
        };
        assert!(error.contains("connection closed by peer"), "{error}");
        assert!(!error.contains("os error"), "{error}");
        assert_eq!(h.unit(1).unwrap().status, UnitStatus::Offline);
        bus.shutdown().await;
        server.abort();
    }
}
