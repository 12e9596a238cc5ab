//! The store's logical changes through the async API (and the read-only view beside it).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed store call is a test failure"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use twinbridge::store::{
    DesiredOutcome, DesiredUpdate, HistoryLimits, ReadOnlyStore, RejectKind, Store, StoreError,
    StoreOptions,
};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
    now_ms: Arc<AtomicU64>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let now_ms = Arc::new(AtomicU64::new(1_000_000));
    let clock = now_ms.clone();
    let store = Store::open(
        &path,
        StoreOptions {
            clock: Arc::new(move || {
                UNIX_EPOCH + Duration::from_millis(clock.load(Ordering::SeqCst))
            }),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    Fixture {
        _dir: dir,
        path,
        store,
        now_ms,
    }
}

#[tokio::test]
async fn poll_send_ack_cycle() {
    let f = fixture();
    let s = &f.store;
    assert_eq!(
        s.merge_local("m1", json!({"v": 1, "i": 2})).await.unwrap(),
        json!({"v": 1, "i": 2})
    );
    assert_eq!(
        s.merge_local("m1", json!({"v": 1})).await.unwrap(),
        json!({}),
        "no change"
    );
    let patch = s.begin_send("m1", "1").await.unwrap();
    assert_eq!(patch, Some(json!({"v": 1, "i": 2})));
    assert_eq!(
        s.begin_send("m1", "2").await.unwrap(),
        None,
        "one in flight"
    );
    s.merge_local("m1", json!({"v": 3})).await.unwrap();
    assert!(!s.acked("m1", "0", 1).await.unwrap(), "stale rid");
    assert!(s.acked("m1", "1", 1).await.unwrap());
    assert_eq!(
        s.begin_send("m1", "3").await.unwrap(),
        Some(json!({"v": 3}))
    );
    assert_eq!(
        s.rejected("m1", "3", 429, "slow down").await.unwrap(),
        Some(RejectKind::Throttled)
    );
    assert_eq!(
        s.begin_send("m1", "4").await.unwrap(),
        Some(json!({"v": 3}))
    );
    s.disconnected("m1").await.unwrap();
    let snap = s.snapshot("m1").await.unwrap().unwrap();
    assert_eq!(snap.sync.in_flight, None);
    assert_eq!(snap.sync.hub_version, Some(1));
    assert_eq!(s.devices().await.unwrap(), ["m1"]);
    s.hub_reported("m1", json!({"v": 3, "i": 2, "$version": 2}), 2)
        .await
        .unwrap();
    assert!(s.snapshot("m1").await.unwrap().unwrap().sync.converged());
    assert_eq!(s.begin_send("m1", "5").await.unwrap(), None);
}

#[tokio::test]
async fn bad_input_is_an_error_naming_device_and_path() {
    let f = fixture();
    let err = f.store.merge_local("m1", json!([1, 2])).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("m1") && text.contains(&f.path.display().to_string()),
        "{text}"
    );
    let err = f
        .store
        .desired_received("m1", DesiredUpdate::Full(json!(5)), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
}

#[tokio::test]
async fn desired_versions_are_ordered() {
    let f = fixture();
    let s = &f.store;
    let out = s
        .desired_received("b", DesiredUpdate::Patch(json!({"sp": 1})), 3)
        .await
        .unwrap();
    assert_eq!(out, DesiredOutcome::Gap { held: None, got: 3 });
    let out = s
        .desired_received(
            "b",
            DesiredUpdate::Full(json!({"sp": 50, "mode": "auto", "$version": 5})),
            5,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        DesiredOutcome::Applied(json!({"sp": 50, "mode": "auto"}))
    );
    let out = s
        .desired_received(
            "b",
            DesiredUpdate::Patch(json!({"sp": 55, "mode": null, "$version": 6})),
            6,
        )
        .await
        .unwrap();
    assert_eq!(out, DesiredOutcome::Applied(json!({"sp": 55})));
    let out = s
        .desired_received("b", DesiredUpdate::Patch(json!({"sp": 1})), 6)
        .await
        .unwrap();
    assert_eq!(out, DesiredOutcome::Stale { held: 6 });
    let out = s
        .desired_received("b", DesiredUpdate::Patch(json!({"sp": 1})), 4)
        .await
        .unwrap();
    assert_eq!(out, DesiredOutcome::Stale { held: 6 });
    let out = s
        .desired_received("b", DesiredUpdate::Patch(json!({"sp": 1})), 8)
        .await
        .unwrap();
    assert_eq!(
        out,
        DesiredOutcome::Gap {
            held: Some(6),
            got: 8
        }
    );
    let snap = s.snapshot("b").await.unwrap().unwrap();
    assert_eq!(snap.desired, json!({"sp": 55}));
    assert_eq!(snap.desired_version, Some(6));
}

/// A twin recreated in the hub (device deleted and registered again, or moved by DPS)
/// restarts its desired `$version`: the full document of the next GET is adopted anyway, and
/// applied versions counted by the old twin are forgotten so the new values get written.
#[tokio::test]
async fn desired_full_of_a_recreated_twin_is_adopted_despite_its_lower_version() {
    let f = fixture();
    let s = &f.store;
    let full = |doc: Value| DesiredUpdate::Full(doc);
    assert_eq!(
        s.desired_received("b", full(json!({"sp": 50, "mode": "auto", "fan": 1})), 6)
            .await
            .unwrap(),
        DesiredOutcome::Applied(json!({"sp": 50, "mode": "auto", "fan": 1}))
    );
    let ack = |v: i64| json!({"value": 1, "ac": 200, "av": v});
    s.applied_ack("b", "sp", 6, ack(6)).await.unwrap();
    s.applied_ack("b", "mode", 3, ack(3)).await.unwrap();
    s.applied_ack("b", "fan", 2, ack(2)).await.unwrap();
    // The same version again (a reconnect's GET) is adopted too: it is the hub's truth.
    assert_eq!(
        s.desired_received("b", full(json!({"sp": 50, "mode": "auto", "fan": 1})), 6)
            .await
            .unwrap(),
        DesiredOutcome::Applied(json!({"sp": 50, "mode": "auto", "fan": 1}))
    );
    assert_eq!(s.snapshot("b").await.unwrap().unwrap().properties.len(), 3);
    // Recreated: version 2 holds new values.
    assert_eq!(
        s.desired_received("b", full(json!({"sp": 20, "$version": 2})), 2)
            .await
            .unwrap(),
        DesiredOutcome::Applied(json!({"sp": 20}))
    );
    let snap = s.snapshot("b").await.unwrap().unwrap();
    assert_eq!(snap.desired, json!({"sp": 20}));
    assert_eq!(snap.desired_version, Some(2));
    let kept: Vec<(&str, i64)> = snap
        .properties
        .iter()
        .map(|p| (p.name.as_str(), p.applied_version))
        .collect();
    assert_eq!(kept, [("fan", 2)], "applied versions above 2 are forgotten");
    // Notifications follow the new numbering: the next one applies, older ones are stale,
    // a jump is a gap.
    assert_eq!(
        s.desired_received("b", DesiredUpdate::Patch(json!({"sp": 21})), 3)
            .await
            .unwrap(),
        DesiredOutcome::Applied(json!({"sp": 21}))
    );
    assert_eq!(
        s.desired_received("b", DesiredUpdate::Patch(json!({"sp": 1})), 3)
            .await
            .unwrap(),
        DesiredOutcome::Stale { held: 3 }
    );
    assert_eq!(
        s.desired_received("b", DesiredUpdate::Patch(json!({"sp": 1})), 5)
            .await
            .unwrap(),
        DesiredOutcome::Gap {
            held: Some(3),
            got: 5
        }
    );
    let snap = s.snapshot("b").await.unwrap().unwrap();
    assert_eq!(snap.desired, json!({"sp": 21}));
    assert_eq!(snap.desired_version, Some(3));
}

#[tokio::test]
async fn negative_desired_versions_are_refused_not_cast() {
    let f = fixture();
    let s = &f.store;
    s.desired_received("b", DesiredUpdate::Full(json!({"sp": 1})), 4)
        .await
        .unwrap();
    for update in [
        DesiredUpdate::Patch(json!({"sp": 2})),
        DesiredUpdate::Full(json!({"sp": 2})),
    ] {
        let err = s.desired_received("b", update, -1).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("-1") && text.contains("negative") && text.contains('b'),
            "{text}"
        );
    }
    let snap = s.snapshot("b").await.unwrap().unwrap();
    assert_eq!(snap.desired, json!({"sp": 1}));
    assert_eq!(snap.desired_version, Some(4));
}

/// A damaged row (a negative held version) is reported, not cast into a huge `u64`.
#[tokio::test]
async fn negative_held_desired_version_is_an_error() {
    let f = fixture();
    f.store
        .desired_received("b", DesiredUpdate::Full(json!({"sp": 1})), 4)
        .await
        .unwrap();
    f.store.clone().close().await.unwrap();
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    conn.execute("UPDATE device SET desired_version = -5 WHERE id = 'b'", [])
        .unwrap();
    drop(conn);
    let store = Store::open(&f.path, StoreOptions::default()).unwrap();
    let err = store
        .desired_received("b", DesiredUpdate::Patch(json!({"sp": 2})), 5)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("held desired $version -5 is negative"),
        "{err}"
    );
    // A GET still recovers: the full document is adopted.
    assert_eq!(
        store
            .desired_received("b", DesiredUpdate::Full(json!({"sp": 3})), 1)
            .await
            .unwrap(),
        DesiredOutcome::Applied(json!({"sp": 3}))
    );
}

#[tokio::test]
async fn applied_ack_records_the_version_and_reports_the_ack() {
    let f = fixture();
    let s = &f.store;
    let ack = json!({"value": 55, "ac": 200, "av": 6, "ad": "written"});
    let change = s.applied_ack("b", "sp", 6, ack.clone()).await.unwrap();
    assert_eq!(change, json!({"sp": ack}));
    let snap = s.snapshot("b").await.unwrap().unwrap();
    assert_eq!(snap.sync.local, json!({"sp": ack}));
    assert_eq!(snap.properties.len(), 1);
    assert_eq!(snap.properties[0].name, "sp");
    assert_eq!(snap.properties[0].applied_version, 6);
    assert_eq!(snap.properties[0].ack, ack);
    assert_eq!(
        s.begin_send("b", "1").await.unwrap(),
        Some(json!({"sp": ack}))
    );
}

fn limits(max_bytes: u64, max_age_s: u64) -> HistoryLimits {
    HistoryLimits {
        max_bytes,
        max_age: Duration::from_secs(max_age_s),
    }
}

#[tokio::test]
async fn every_change_journal_sends_in_order_then_the_state_diff() {
    let f = fixture();
    let s = &f.store;
    s.configure_device("h", Some(limits(10_000, 3600)))
        .await
        .unwrap();
    for v in 1..=3 {
        s.merge_local("h", json!({"v": v})).await.unwrap();
    }
    s.merge_local("h", json!({"v": 3})).await.unwrap(); // no change, no entry
    let snap = s.snapshot("h").await.unwrap().unwrap();
    assert_eq!(
        snap.journal,
        [json!({"v": 1}), json!({"v": 2}), json!({"v": 3})]
    );
    let mut sent = Vec::new();
    for i in 0..10 {
        let rid = i.to_string();
        let Some(p) = s.begin_send("h", &rid).await.unwrap() else {
            break;
        };
        if i == 1 {
            // A lost answer resends the same entry (a merge patch is idempotent).
            s.disconnected("h").await.unwrap();
            continue;
        }
        sent.push(p);
        assert!(s.acked("h", &rid, i64::from(i)).await.unwrap());
    }
    assert_eq!(sent, [json!({"v": 1}), json!({"v": 2}), json!({"v": 3})]);
    let snap = s.snapshot("h").await.unwrap().unwrap();
    assert!(snap.journal.is_empty());
    assert!(snap.sync.converged(), "{:?}", snap.sync);
}

#[tokio::test]
async fn journal_drops_oldest_by_bytes_and_age_and_counts() {
    let f = fixture();
    let s = &f.store;
    // Each entry `{"v":N}` is 7 bytes: 3 fit in 21.
    s.configure_device("h", Some(limits(21, 60))).await.unwrap();
    for v in 1..=5 {
        s.merge_local("h", json!({"v": v})).await.unwrap();
    }
    let snap = s.snapshot("h").await.unwrap().unwrap();
    assert_eq!(
        snap.journal,
        [json!({"v": 3}), json!({"v": 4}), json!({"v": 5})]
    );
    assert_eq!(snap.journal_stats.entries, 3);
    assert_eq!(snap.journal_stats.bytes, 21);
    assert_eq!(snap.journal_stats.dropped, 2);

    f.now_ms.fetch_add(30_000, Ordering::SeqCst);
    s.merge_local("h", json!({"w": 1})).await.unwrap();
    f.now_ms.fetch_add(31_000, Ordering::SeqCst);
    // The first three are now 61 s old: dropped when the next send looks at the journal.
    assert_eq!(s.begin_send("h", "1").await.unwrap(), Some(json!({"w": 1})));
    let snap = s.snapshot("h").await.unwrap().unwrap();
    assert_eq!(snap.journal_stats.dropped, 5);
    assert!(s.acked("h", "1", 1).await.unwrap());
    // The dropped history still converges through the state diff.
    assert_eq!(s.begin_send("h", "2").await.unwrap(), Some(json!({"v": 5})));
    assert!(s.acked("h", "2", 2).await.unwrap());
    assert!(s.snapshot("h").await.unwrap().unwrap().sync.converged());
}

#[tokio::test]
async fn bad_journal_entry_is_dropped_not_resent() {
    let f = fixture();
    let s = &f.store;
    s.configure_device("h", Some(limits(10_000, 3600)))
        .await
        .unwrap();
    s.merge_local("h", json!({"a": "bad"})).await.unwrap();
    s.merge_local("h", json!({"a": "good"})).await.unwrap();
    assert_eq!(
        s.begin_send("h", "1").await.unwrap(),
        Some(json!({"a": "bad"}))
    );
    assert_eq!(
        s.rejected("h", "1", 400, "nope").await.unwrap(),
        Some(RejectKind::Bad)
    );
    assert_eq!(
        s.begin_send("h", "2").await.unwrap(),
        Some(json!({"a": "good"}))
    );
    let snap = s.snapshot("h").await.unwrap().unwrap();
    assert_eq!(snap.sync.rejections, 1);
    assert_eq!(snap.journal, [json!({"a": "good"})]);
}

#[tokio::test]
async fn turning_history_off_discards_the_queue() {
    let f = fixture();
    let s = &f.store;
    s.configure_device("h", Some(limits(10_000, 3600)))
        .await
        .unwrap();
    s.merge_local("h", json!({"a": 1})).await.unwrap();
    s.merge_local("h", json!({"a": 2})).await.unwrap();
    s.configure_device("h", None).await.unwrap();
    let snap = s.snapshot("h").await.unwrap().unwrap();
    assert!(snap.journal.is_empty());
    assert_eq!(snap.history, None);
    assert_eq!(s.begin_send("h", "1").await.unwrap(), Some(json!({"a": 2})));
}

#[tokio::test]
async fn read_only_view_sees_commits_while_the_writer_runs() {
    let f = fixture();
    let s = &f.store;
    s.merge_local("a", json!({"x": 1})).await.unwrap();
    let ro = ReadOnlyStore::open(&f.path).unwrap();
    assert_eq!(ro.devices().unwrap(), ["a"]);
    s.merge_local("b", json!({"y": 2})).await.unwrap();
    assert_eq!(ro.devices().unwrap(), ["a", "b"]);
    assert_eq!(
        ro.snapshot("b").unwrap().unwrap().sync.local,
        json!({"y": 2})
    );
    assert!(ro.snapshot("zz").unwrap().is_none());
    // The writer keeps committing while a reader exists.
    s.merge_local("a", json!({"x": 3})).await.unwrap();
    assert_eq!(
        ro.snapshot("a").unwrap().unwrap().sync.local,
        json!({"x": 3})
    );
}

#[tokio::test]
async fn remove_device_and_closed_store() {
    let f = fixture();
    let s = f.store.clone();
    s.merge_local("a", json!({"x": 1})).await.unwrap();
    s.applied_ack("a", "sp", 1, json!({"value": 1, "ac": 200, "av": 1}))
        .await
        .unwrap();
    assert!(s.remove_device("a").await.unwrap());
    assert!(!s.remove_device("a").await.unwrap());
    assert!(s.snapshot("a").await.unwrap().is_none());
    f.store.close().await.unwrap();
    let err = s.merge_local("a", json!({"x": 2})).await.unwrap_err();
    assert!(matches!(err, StoreError::Closed { .. }), "{err:?}");
}

#[tokio::test]
async fn commands_run_in_call_order_without_awaiting_each() {
    let f = fixture();
    let s = &f.store;
    let replies: Vec<_> = (0..100)
        .map(|i| s.merge_local("a", json!({"n": i})))
        .collect();
    for reply in replies {
        reply.await.unwrap();
    }
    let local: Value = s.snapshot("a").await.unwrap().unwrap().sync.local;
    assert_eq!(local, json!({"n": 99}));
}
