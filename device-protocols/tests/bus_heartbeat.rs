//! The bus task's heartbeat (the agent's watchdog proof of progress) keeps beating while the
//! loop waits legitimately: a port that cannot be opened (waiting to retry), and units with
//! nothing due for an hour. It stops when the task ends.

// Test helpers are test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, health_until};
use device_protocols::backoff::BackoffConfig;
use device_protocols::bus::{Bus, BusConfig, Transport, UnitConfig};
use device_protocols::health::PortState;
use device_protocols::heartbeat::HEARTBEAT_EVERY;
use device_protocols::point::{DataType, Point, Table};
use device_protocols::serial::SerialSettings;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use tokio::time::Instant;

fn unit(poll: Duration) -> UnitConfig {
    UnitConfig::new(
        1,
        poll,
        vec![Point::new("r0", Table::Holding, 0, DataType::U16).unwrap()],
    )
}

#[tokio::test(start_paused = true)]
async fn a_port_waiting_to_reopen_still_beats_every_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BusConfig::new(
        "gone",
        Transport::Serial(SerialSettings::new(dir.path().join("no-such-tty"))),
    );
    // One attempt, then a long wait: the loop must not go quiet for it.
    config.reopen_backoff = BackoffConfig::new(Duration::from_mins(1), Duration::from_mins(1));
    let (bus, _polls) = Bus::spawn(config, vec![unit(Duration::from_secs(1))]).unwrap();
    let heartbeat = bus.heartbeat();
    health_until(&bus, "port down", |h| {
        matches!(h.port, PortState::Down { .. })
    })
    .await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let age = heartbeat.last().elapsed();
        assert!(
            age <= HEARTBEAT_EVERY,
            "no beat for {age:?} while waiting to reopen"
        );
    }
    assert!(
        matches!(bus.health().port, PortState::Down { attempts: 1, .. }),
        "still in the first backoff: {:?}",
        bus.health().port
    );
    bus.shutdown().await;
    let last = heartbeat.last();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(heartbeat.last(), last, "a stopped bus does not beat");
}

#[tokio::test]
async fn units_with_nothing_due_for_an_hour_still_beat() {
    let dir = tempfile::tempdir().unwrap();
    let sim = RtuSim::start(
        dir.path().join("tty"),
        SimMap::new().with_unit(1, UnitMap::new().with_holding(0, &[7])),
    )
    .unwrap();
    let config = BusConfig::new("idle", Transport::Serial(SerialSettings::new(sim.path())));
    let (bus, mut polls) = Bus::spawn(config, vec![unit(Duration::from_hours(1))]).unwrap();
    polls
        .recv()
        .await
        .expect("the first (and only) poll of the hour");
    let heartbeat = bus.heartbeat();
    let after_poll = heartbeat.last();
    // Two more beats with nothing due: the loop wakes by itself.
    eventually("beats while idle", || async {
        heartbeat.last() >= after_poll + HEARTBEAT_EVERY * 2
    })
    .await;
    assert_eq!(
        sim.handle().stats(1).map(|s| s.requests),
        Some(1),
        "the beats are not polls"
    );
    bus.shutdown().await;
}
