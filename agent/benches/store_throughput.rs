//! Store throughput: committed poll-result transactions per second for 100 devices × 20
//! properties, with `synchronous = FULL` (the default) and `NORMAL`; and the same for
//! `every-change` devices whose journal is at its default 1 MiB bound (each merge journals
//! the change and prunes the oldest entries).
//!
//! Run: `cargo bench -p twinbridge --bench store_throughput`
//! The database goes to a temporary directory; set `TWINBRIDGE_BENCH_DIR` to measure another
//! disk (e.g. the gateway's SD card).

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;
use twinbridge::store::{HistoryLimits, Store, StoreOptions, Synchronous};

const DEVICES: usize = 100;
const PROPERTIES: usize = 20;
const MIN_TIME: Duration = Duration::from_secs(3);

/// One poll result: every property of the device changed.
fn poll_result(round: usize, device: usize) -> Value {
    let mut map = Map::new();
    for p in 0..PROPERTIES {
        map.insert(
            format!("property_{p:02}"),
            json!((round * 31 + device * 7 + p) as f64 / 10.0),
        );
    }
    Value::Object(map)
}

fn device(d: usize) -> String {
    format!("device-{d:03}")
}

/// The bench store `bench-{name}{level}.db` in `dir`.
fn open(dir: &std::path::Path, name: &str, level: Synchronous) -> Store {
    let path = dir.join(format!("bench-{name}{level:?}.db"));
    Store::open(
        &path,
        StoreOptions {
            synchronous: level,
            ..StoreOptions::default()
        },
    )
    .expect("open bench store")
}

/// Runs whole poll rounds of `devices` (one transaction per device) until `MIN_TIME` has
/// passed. `pipelined`: all the devices' results are queued before waiting (as concurrent
/// device tasks do); otherwise each commit is awaited before the next is queued.
fn poll_rounds(store: &Store, devices: usize, pipelined: bool) -> f64 {
    let start = Instant::now();
    let mut transactions = 0usize;
    let mut round = 1;
    while start.elapsed() < MIN_TIME {
        if pipelined {
            let replies: Vec<_> = (0..devices)
                .map(|d| store.merge_local(&device(d), poll_result(round, d)))
                .collect();
            for reply in replies {
                reply.wait().expect("commit");
            }
        } else {
            for d in 0..devices {
                store
                    .merge_local(&device(d), poll_result(round, d))
                    .wait()
                    .expect("commit");
            }
        }
        transactions += devices;
        round += 1;
    }
    transactions as f64 / start.elapsed().as_secs_f64()
}

/// Poll result + PATCH sent + PATCH acked per device: three transactions.
fn sync_cycles(store: &Store) -> f64 {
    let start = Instant::now();
    let mut transactions = 0usize;
    let mut round = 1_000_000;
    while start.elapsed() < MIN_TIME {
        for d in 0..DEVICES {
            let name = device(d);
            store
                .merge_local(&name, poll_result(round, d))
                .wait()
                .expect("commit");
            let rid = format!("{round}-{d}");
            store
                .begin_send(&name, &rid)
                .wait()
                .expect("commit")
                .expect("a patch to send");
            assert!(
                store
                    .acked(&name, &rid, round as i64)
                    .wait()
                    .expect("commit")
            );
            transactions += 3;
        }
        round += 1;
    }
    transactions as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let base = std::env::var_os("TWINBRIDGE_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    println!(
        "store_throughput: {DEVICES} devices x {PROPERTIES} properties, database in {}",
        dir.path().display()
    );
    println!(
        "{:<8} {:>22} {:>22} {:>26} {:>30}",
        "sync",
        "poll tx/s (sequential)",
        "poll tx/s (pipelined)",
        "send+ack cycle tx/s",
        "every-change tx/s (at 1 MiB)"
    );
    for level in [Synchronous::Full, Synchronous::Normal] {
        let store = open(dir.path(), "", level);
        // Warm-up: create the devices and their first documents.
        poll_rounds_once(&store);
        let sequential = poll_rounds(&store, DEVICES, false);
        let pipelined = poll_rounds(&store, DEVICES, true);
        let cycles = sync_cycles(&store);
        store.close().wait().expect("close");
        let journaled = every_change_at_bound(dir.path(), level);
        println!(
            "{:<8} {sequential:>22.0} {pipelined:>22.0} {cycles:>26.0} {journaled:>30.0}",
            format!("{level:?}")
        );
    }
}

/// `every-change` devices with their journal at the default bound (1 MiB, 7 days): merges
/// per second, sequential, once every journal has started dropping its oldest entries.
fn every_change_at_bound(dir: &std::path::Path, level: Synchronous) -> f64 {
    const JOURNALED: usize = 10;
    let store = open(dir, "history-", level);
    let limits = HistoryLimits {
        max_bytes: twinbridge::config::DEFAULT_HISTORY_MAX_BYTES,
        max_age: twinbridge::config::DEFAULT_HISTORY_MAX_AGE,
    };
    for d in 0..JOURNALED {
        store
            .configure_device(&device(d), Some(limits))
            .wait()
            .expect("configure");
    }
    // Fill every journal past its bound (pipelined, as concurrent device tasks do).
    let mut round = 1;
    loop {
        let replies: Vec<_> = (0..JOURNALED)
            .map(|d| store.merge_local(&device(d), poll_result(round, d)))
            .collect();
        for reply in replies {
            reply.wait().expect("commit");
        }
        round += 1;
        let full = (0..JOURNALED).all(|d| {
            store
                .snapshot(&device(d))
                .wait()
                .expect("snapshot")
                .is_some_and(|s| s.journal_stats.dropped > 0)
        });
        if full {
            break;
        }
    }
    // Its rounds start over at 1: values other than the last fill round's, so each merge
    // is a change and is journaled.
    let rate = poll_rounds(&store, JOURNALED, false);
    store.close().wait().expect("close");
    rate
}

fn poll_rounds_once(store: &Store) {
    for d in 0..DEVICES {
        store
            .merge_local(&device(d), poll_result(0, d))
            .wait()
            .expect("commit");
    }
}
