//! Helpers shared by the device-protocols tests: awaiting a condition (on the health watch, the
//! poll stream, or any state without a channel) with a deadline, never a bare sleep.
// Each test binary uses a subset of these.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use device_protocols::bus::{BusHandle, UnitPoll};
use device_protocols::health::BusHealth;
use tokio::sync::mpsc;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `cond` on the health watch, with a deadline.
pub async fn health_until(
    bus: &BusHandle,
    what: &str,
    cond: impl FnMut(&BusHealth) -> bool,
) -> BusHealth {
    let mut rx = bus.watch_health();
    match tokio::time::timeout(DEADLINE, rx.wait_for(cond)).await {
        Ok(Ok(h)) => h.clone(),
        _ => panic!(
            "timed out waiting for: {what}\nlast health: {:#?}",
            bus.health()
        ),
    }
}

/// Receives polls until `cond` holds for one, with a deadline.
pub async fn poll_until(
    polls: &mut mpsc::Receiver<UnitPoll>,
    what: &str,
    mut cond: impl FnMut(&UnitPoll) -> bool,
) -> UnitPoll {
    let wait = async {
        loop {
            let p = polls.recv().await.expect("bus running");
            if cond(&p) {
                return p;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for poll: {what}"))
}

/// Whether every reading of `p` succeeded.
pub fn all_ok(p: &UnitPoll) -> bool {
    p.readings.iter().all(|r| r.result.is_ok())
}

/// Whether every reading of the cycle came back (a value or an exception): no timeout, no
/// garbled answer. Tests that compare cycles use clean ones, since on a loaded machine an
/// answer can miss the timeout now and then (and is then retried), which is not what they test.
pub fn clean(p: &UnitPoll) -> bool {
    p.readings.iter().all(|r| {
        matches!(
            r.result,
            Ok(_) | Err(device_protocols::bus::PointError::Exception(_))
        )
    })
}

/// Awaits an async condition, re-checked every 10 ms, with a deadline.
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let wait = async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

/// Awaits a condition on state that has no channel to wait on (simulator counters, kernel
/// buffers), re-checked every 10 ms, with a deadline.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(cond())).await;
}
