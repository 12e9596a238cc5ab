//! Model-based test of the reported sync state through the real store (real SQLite file).
//!
//! Random sequences of local changes, sends, hub processing (which answers 204, or 400/413 by
//! content like the real hub's rules), injected 429 and 503 answers, answer delivery, link
//! drops, GETs and crashes (drop the store, reopen the file) run against several devices and a
//! model hub. `dev-c` runs in every-change mode with a small journal (entries are sent in
//! order, oldest dropped beyond the bound, bad entries dropped, then the state diff). Invariants: never more than one patch in flight per device; the store's `local`
//! equals the model's. After a drain (link up, hub accepting) the hub's reported document
//! equals `local` on every key whose value the hub accepts, and every other key is quarantined.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed store call is a test failure"
)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use twinbridge::store::{HistoryLimits, Store, StoreOptions, Synchronous};
use twinbridge::twin::apply;

const DEVICES: [&str; 3] = ["dev-a", "dev-b", "dev-c"];
const KEYS: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];
/// The model hub answers 413 to patches longer than this (JSON bytes).
const SIZE_LIMIT: usize = 100;
const BAD: &str = "BAD";

fn big() -> String {
    "x".repeat(SIZE_LIMIT + 10)
}

/// A value the model hub will never accept for a key on its own.
fn is_bad(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s == BAD || s.len() > SIZE_LIMIT)
}

/// `Recreate`: the twin is recreated in the hub (device deleted and registered again, or moved
/// to another hub by DPS): reported document `{}`, versions restart at 1, the link drops.
#[derive(Debug, Clone)]
enum Op {
    Change { dev: usize, patch: Value },
    Send { dev: usize },
    HubProcess { dev: usize },
    HubFail { dev: usize, applied: bool },
    Throttle { dev: usize },
    Deliver { dev: usize },
    Disconnect { dev: usize },
    Get { dev: usize },
    Recreate { dev: usize },
    Crash,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0i64..4).prop_map(|n| json!(n)),
        2 => ((0i64..3), (0i64..3)).prop_map(|(a, b)| json!({"a": a, "b": b})),
        2 => Just(Value::Null),
        1 => Just(json!(BAD)),
        1 => Just(json!(big())),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..DEVICES.len();
    let patch = proptest::collection::btree_map(0..KEYS.len(), value(), 1..4).prop_map(|m| {
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (KEYS[k].to_owned(), v))
                .collect::<Map<_, _>>(),
        )
    });
    prop_oneof![
        6 => (dev.clone(), patch).prop_map(|(dev, patch)| Op::Change { dev, patch }),
        5 => dev.clone().prop_map(|dev| Op::Send { dev }),
        5 => dev.clone().prop_map(|dev| Op::HubProcess { dev }),
        1 => (dev.clone(), any::<bool>()).prop_map(|(dev, applied)| Op::HubFail { dev, applied }),
        1 => dev.clone().prop_map(|dev| Op::Throttle { dev }),
        5 => dev.clone().prop_map(|dev| Op::Deliver { dev }),
        2 => dev.clone().prop_map(|dev| Op::Disconnect { dev }),
        1 => dev.clone().prop_map(|dev| Op::Get { dev }),
        1 => dev.prop_map(|dev| Op::Recreate { dev }),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone)]
enum Answer {
    Ack { rid: String, version: i64 },
    Reject { rid: String, status: u16 },
}

#[derive(Debug, Default)]
struct ModelDevice {
    local: Value,
    hub: Value,
    hub_version: i64,
    /// The request the hub received and has not processed.
    inbox: Option<(String, Value)>,
    /// The hub's answer on its way back.
    outbox: Option<Answer>,
    /// The request id the store has in flight, as the model expects it.
    in_flight: Option<String>,
    /// Every patch the hub accepted, in order.
    accepted: Vec<Value>,
    /// The twin was recreated since the store last saw a GET: the reconnect that follows
    /// GETs the twin first (DESIGN: subscribe, then GET, on every connect).
    get_pending: bool,
}

impl ModelDevice {
    fn new() -> Self {
        Self {
            local: json!({}),
            hub: json!({}),
            ..Self::default()
        }
    }

    /// The model hub's rules: 400 for a `BAD` value, 413 above the size limit, else apply.
    fn process(&mut self) {
        let Some((rid, patch)) = self.inbox.take() else {
            return;
        };
        let text = patch.to_string();
        self.outbox = Some(if text.contains(&format!("\"{BAD}\"")) {
            Answer::Reject { rid, status: 400 }
        } else if text.len() > SIZE_LIMIT {
            Answer::Reject { rid, status: 413 }
        } else {
            apply(&mut self.hub, &patch);
            self.accepted.push(patch);
            self.hub_version += 1;
            Answer::Ack {
                rid,
                version: self.hub_version,
            }
        });
    }

    fn drop_link(&mut self) {
        self.inbox = None;
        self.outbox = None;
        self.in_flight = None;
    }
}

struct Harness {
    path: PathBuf,
    store: Store,
    model: Vec<ModelDevice>,
    next_rid: u64,
}

impl Harness {
    fn open(path: &Path) -> Store {
        Store::open(
            path,
            StoreOptions {
                synchronous: Synchronous::Normal,
                ..StoreOptions::default()
            },
        )
        .expect("open store")
    }

    fn send(&mut self, dev: usize) {
        self.next_rid += 1;
        let rid = format!("r{}", self.next_rid);
        let sent = self.store.begin_send(DEVICES[dev], &rid).wait().unwrap();
        let m = &mut self.model[dev];
        if m.in_flight.is_some() {
            assert_eq!(
                sent, None,
                "{}: a second patch while one is in flight",
                DEVICES[dev]
            );
            return;
        }
        if let Some(patch) = sent {
            assert!(
                m.inbox.is_none() && m.outbox.is_none(),
                "hub holds another request"
            );
            m.inbox = Some((rid.clone(), patch));
            m.in_flight = Some(rid);
        }
    }

    fn deliver(&mut self, dev: usize) {
        let device = DEVICES[dev];
        let Some(answer) = self.model[dev].outbox.take() else {
            return;
        };
        match answer {
            Answer::Ack { rid, version } => {
                assert!(self.store.acked(device, &rid, version).wait().unwrap());
            }
            Answer::Reject { rid, status } => {
                let kind = self
                    .store
                    .rejected(device, &rid, status, "model hub")
                    .wait()
                    .unwrap();
                assert!(kind.is_some(), "answer to the request in flight");
            }
        }
        self.model[dev].in_flight = None;
    }

    fn get(&mut self, dev: usize) {
        let m = &mut self.model[dev];
        self.store
            .hub_reported(DEVICES[dev], m.hub.clone(), m.hub_version)
            .wait()
            .unwrap();
        m.get_pending = false;
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Change { dev, patch } => {
                self.store
                    .merge_local(DEVICES[*dev], patch.clone())
                    .wait()
                    .unwrap();
                apply(&mut self.model[*dev].local, patch);
            }
            Op::Send { dev } => self.send(*dev),
            Op::HubProcess { dev } => self.model[*dev].process(),
            Op::HubFail { dev, applied } => {
                let m = &mut self.model[*dev];
                if let Some((rid, patch)) = m.inbox.take() {
                    if *applied {
                        apply(&mut m.hub, &patch);
                        m.hub_version += 1;
                    }
                    m.outbox = Some(Answer::Reject { rid, status: 503 });
                }
            }
            Op::Throttle { dev } => {
                let m = &mut self.model[*dev];
                if let Some((rid, _)) = m.inbox.take() {
                    m.outbox = Some(Answer::Reject { rid, status: 429 });
                }
            }
            Op::Deliver { dev } => self.deliver(*dev),
            Op::Disconnect { dev } => {
                self.store.disconnected(DEVICES[*dev]).wait().unwrap();
                self.model[*dev].drop_link();
            }
            Op::Get { dev } => self.get(*dev),
            Op::Recreate { dev } => {
                self.store.disconnected(DEVICES[*dev]).wait().unwrap();
                let m = &mut self.model[*dev];
                m.drop_link();
                m.hub = json!({});
                m.hub_version = 1;
                m.get_pending = true;
            }
            Op::Crash => {
                // Every command was waited for, so closing leaves exactly what a crash would:
                // the file. (Reopening needs the old writer's lock released.)
                let before: Vec<_> = DEVICES
                    .iter()
                    .map(|d| self.store.snapshot(d).wait().unwrap())
                    .collect();
                self.store.clone().close().wait().unwrap();
                self.store = Self::open(&self.path);
                // Everything persisted; only the in-flight patch became an unknown outcome.
                for (device, before) in DEVICES.iter().zip(before) {
                    let after = self.store.snapshot(device).wait().unwrap();
                    let expected = before.map(|mut snap| {
                        snap.sync.on_disconnect();
                        snap
                    });
                    assert_eq!(after, expected, "{device}: state after reopen");
                }
                for m in &mut self.model {
                    m.drop_link();
                }
            }
        }
    }

    fn check_step(&self) {
        // The byte total pruning trusts (kept by triggers) is each journal's real size.
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let drifted: i64 = conn
            .query_row(
                "SELECT count(*) FROM device d WHERE journal_bytes != \
                 (SELECT coalesce(sum(bytes), 0) FROM journal j WHERE j.device = d.id)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(drifted, 0, "journal_bytes is the journal's size");
        for (dev, m) in self.model.iter().enumerate() {
            let snap = self.store.snapshot(DEVICES[dev]).wait().unwrap();
            let Some(snap) = snap else {
                assert_eq!(m.local, json!({}));
                continue;
            };
            assert_eq!(snap.sync.local, m.local, "{}: local", DEVICES[dev]);
            assert!(snap.journal_stats.bytes <= 150, "journal within its bound");
            assert_eq!(
                snap.sync.in_flight.as_ref().map(|f| &f.request_id),
                m.in_flight.as_ref(),
                "{}: in flight",
                DEVICES[dev]
            );
        }
    }

    /// The link comes up and stays up; the hub answers everything it receives.
    fn drain(&mut self) {
        for (dev, device) in DEVICES.iter().enumerate() {
            self.store.disconnected(device).wait().unwrap();
            self.model[dev].drop_link();
            if self.model[dev].get_pending {
                self.get(dev);
            }
            let mut rounds = 0;
            loop {
                rounds += 1;
                assert!(rounds < 50, "{device}: drain does not terminate");
                self.send(dev);
                if self.model[dev].inbox.is_none() {
                    let snap = self.store.snapshot(device).wait().unwrap();
                    if snap.is_some_and(|s| s.sync.resync_needed) {
                        self.get(dev);
                        continue;
                    }
                    break;
                }
                self.model[dev].process();
                self.deliver(dev);
            }
        }
    }

    fn check_converged(&self) {
        for (dev, m) in self.model.iter().enumerate() {
            let device = DEVICES[dev];
            let snap = self.store.snapshot(device).wait().unwrap();
            let Some(snap) = snap else {
                assert_eq!(m.local, json!({}));
                assert_eq!(m.hub, json!({}));
                continue;
            };
            assert!(snap.journal.is_empty(), "{device}: journal drained");
            let mut any_bad = false;
            for key in KEYS {
                let local = m.local.get(key);
                let hub = m.hub.get(key);
                if local.is_some_and(is_bad) {
                    any_bad = true;
                    if hub != local {
                        assert!(
                            snap.sync.quarantined.contains_key(key),
                            "{device}.{key}: hub {hub:?} local {local:?} but not quarantined"
                        );
                    }
                } else {
                    assert_eq!(hub, local, "{device}.{key}: hub differs from local");
                }
            }
            if !any_bad {
                assert_eq!(m.hub, m.local);
                assert!(snap.sync.converged(), "{device}: {:?}", snap.sync);
            }
        }
    }
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    run_in(&dir, ops);
}

fn run_in(dir: &tempfile::TempDir, ops: &[Op]) -> Harness {
    let mut h = start(dir);
    for op in ops {
        h.apply(op);
        h.check_step();
    }
    h.drain();
    h.check_converged();
    // And the converged state survives a final crash.
    h.apply(&Op::Crash);
    h.drain();
    h.check_converged();
    h
}

/// A harness on a fresh store in `dir`, `dev-c` in every-change mode.
fn start(dir: &tempfile::TempDir) -> Harness {
    let path = dir.path().join("state.db");
    let store = Harness::open(&path);
    store
        .configure_device(
            DEVICES[2],
            Some(HistoryLimits {
                max_bytes: 150,
                max_age: std::time::Duration::from_hours(1),
            }),
        )
        .wait()
        .unwrap();
    Harness {
        path,
        store,
        model: DEVICES.iter().map(|_| ModelDevice::new()).collect(),
        next_rid: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn hub_converges_to_local_and_at_most_one_patch_is_in_flight(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

/// The scenario that a plain re-diff gets wrong, through crashes: the hub applied a patch whose
/// ack was lost, then `local` went back to the old value.
#[test]
fn applied_but_unacked_patch_then_revert_across_a_crash() {
    run(&[
        Op::Change {
            dev: 0,
            patch: json!({"p0": 1}),
        },
        Op::Send { dev: 0 },
        Op::HubProcess { dev: 0 },
        Op::Deliver { dev: 0 },
        Op::Change {
            dev: 0,
            patch: json!({"p0": 2}),
        },
        Op::Send { dev: 0 },
        Op::HubProcess { dev: 0 },
        Op::Crash,
        Op::Change {
            dev: 0,
            patch: json!({"p0": 1}),
        },
    ]);
}

/// A bad value next to good ones: the good ones reach the hub, the bad one is quarantined.
#[test]
fn bad_key_does_not_block_the_others() {
    run(&[
        Op::Change {
            dev: 1,
            patch: json!({"p0": 1, "p1": BAD, "p2": {"a": 1, "b": 2}}),
        },
        Op::Send { dev: 1 },
        Op::HubProcess { dev: 1 },
        Op::Deliver { dev: 1 },
    ]);
}

/// Every-change mode: each change reaches the hub as its own patch, in order.
#[test]
fn history_device_sends_every_change_in_order() {
    let changes = [
        json!({"p0": 1}),
        json!({"p0": 2, "p1": 0}),
        json!({"p0": 3}),
    ];
    let ops: Vec<Op> = changes
        .iter()
        .map(|patch| Op::Change {
            dev: 2,
            patch: patch.clone(),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let h = run_in(&dir, &ops);
    assert_eq!(h.model[2].accepted[..3], changes);
}

/// The twin is recreated after the store has seen higher versions: the GET on reconnect
/// (version 1, empty document) is adopted, and keys that did not change since are sent again.
#[test]
fn recreated_twin_gets_every_key_again() {
    let mut ops = Vec::new();
    for (i, key) in ["p0", "p1", "p2"].into_iter().enumerate() {
        ops.extend([
            Op::Change {
                dev: 0,
                patch: json!({ key: i }),
            },
            Op::Send { dev: 0 },
            Op::HubProcess { dev: 0 },
            Op::Deliver { dev: 0 },
        ]);
    }
    ops.push(Op::Recreate { dev: 0 });
    let dir = tempfile::tempdir().unwrap();
    let h = run_in(&dir, &ops);
    assert_eq!(h.model[0].hub, json!({"p0": 0, "p1": 1, "p2": 2}));
    let snap = h.store.snapshot(DEVICES[0]).wait().unwrap().unwrap();
    assert!(snap.sync.converged());
    assert!(
        snap.sync.hub_version < Some(3),
        "versions follow the new twin"
    );
}
