//! Forward-only schema migrations, tested from every older version.
//!
//! Older files are built here with plain rusqlite from the published migration steps, so the
//! test does not depend on the code path it checks.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed store call is a test failure"
)]

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;
use twinbridge::store::schema::{APPLICATION_ID, MIGRATIONS};
use twinbridge::store::{
    HistoryLimits, LATEST_VERSION, ReadOnlyStore, Store, StoreError, StoreOptions,
};

/// Creates a file at schema `version` (0 = an SQLite file with no schema at all).
fn file_at_version(path: &Path, version: i32) -> Connection {
    let conn = Connection::open(path).unwrap();
    if version > 0 {
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
    }
    for step in &MIGRATIONS[..version as usize] {
        conn.execute_batch(step).unwrap();
    }
    conn.pragma_update(None, "user_version", version).unwrap();
    conn
}

fn user_version(path: &Path) -> i32 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn integrity(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_schema_has_more_than_one_step() {
    assert_eq!(LATEST_VERSION as usize, MIGRATIONS.len());
    // The v1 -> v2 step is what "every older version" exercises beyond a fresh file.
    const { assert!(LATEST_VERSION >= 2) };
}

#[test]
fn every_older_version_migrates_to_the_latest() {
    for version in 0..=LATEST_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(file_at_version(&path, version));
        if version < LATEST_VERSION && version > 0 {
            let err = ReadOnlyStore::open(&path).unwrap_err();
            assert!(
                matches!(err, StoreError::NeedsMigration { found, .. } if found == version),
                "v{version}: {err:?}"
            );
        }
        let store = Store::open(&path, StoreOptions::default())
            .unwrap_or_else(|e| panic!("v{version}: {e}"));
        // The latest features work on the migrated file.
        store
            .configure_device(
                "d",
                Some(HistoryLimits {
                    max_bytes: 1000,
                    max_age: Duration::from_mins(1),
                }),
            )
            .wait()
            .unwrap();
        store.merge_local("d", json!({"a": 1})).wait().unwrap();
        let snap = store.snapshot("d").wait().unwrap().unwrap();
        assert_eq!(snap.journal, [json!({"a": 1})], "v{version}");
        store.close().wait().unwrap();
        assert_eq!(user_version(&path), LATEST_VERSION, "v{version}");
        assert_eq!(integrity(&path), "ok");
        assert!(ReadOnlyStore::open(&path).is_ok());
    }
}

#[test]
fn v1_data_survives_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let conn = file_at_version(&path, 1);
    conn.execute(
        "INSERT INTO device (id, local, hub_reported, hub_version, in_flight_rid, in_flight_patch, desired, desired_version)
         VALUES ('boiler-03', '{\"t\":21,\"sp\":50}', '{\"t\":20}', 4, 'r9', '{\"t\":21}', '{\"sp\":50}', 7)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO property (device, name, applied_version, ack) VALUES ('boiler-03', 'sp', 7, '{\"value\":50,\"ac\":200,\"av\":7}')",
        [],
    )
    .unwrap();
    drop(conn);

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let snap = store.snapshot("boiler-03").wait().unwrap().unwrap();
    assert_eq!(snap.sync.local, json!({"t": 21, "sp": 50}));
    assert_eq!(snap.sync.hub_reported, json!({"t": 20}));
    assert_eq!(snap.sync.hub_version, Some(4));
    // The patch in flight when the old process stopped has an unknown outcome now.
    assert_eq!(snap.sync.in_flight, None);
    assert_eq!(snap.sync.alternatives, [json!({"t": 21})]);
    assert_eq!(snap.desired, json!({"sp": 50}));
    assert_eq!(snap.desired_version, Some(7));
    assert_eq!(snap.properties.len(), 1);
    assert_eq!(snap.properties[0].applied_version, 7);
    assert_eq!(snap.history, None);
    assert_eq!(snap.journal_stats.dropped, 0);
    assert_eq!(
        store.begin_send("boiler-03", "r10").wait().unwrap(),
        Some(json!({"t": 21, "sp": 50}))
    );
    store.close().wait().unwrap();
    assert_eq!(user_version(&path), LATEST_VERSION);
}

#[test]
fn a_failing_step_rolls_back_and_leaves_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let conn = file_at_version(&path, 1);
    // Something the v2 step will collide with.
    conn.execute_batch("CREATE TABLE journal (x INTEGER)")
        .unwrap();
    drop(conn);
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::Migration { from: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(user_version(&path), 1);
    let conn = Connection::open(&path).unwrap();
    let columns: i64 = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('device') WHERE name = 'journal_dropped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(columns, 0, "the half-applied step was rolled back");
}

/// v2 → v3 adds each device's journal byte total (kept by triggers from then on): it must
/// start as the size of the journal the file already holds, or the bound would be off.
#[test]
fn v2_journal_keeps_its_byte_bound_after_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let conn = file_at_version(&path, 2);
    conn.execute(
        "INSERT INTO device (id, history_max_bytes, history_max_age_ms) VALUES ('m', 100, 86400000)",
        [],
    )
    .unwrap();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for k in 0..5 {
        conn.execute(
            "INSERT INTO journal (device, patch, bytes, created_ms) VALUES ('m', ?1, 30, ?2)",
            rusqlite::params![format!("{{\"k\":{k}}}"), now_ms],
        )
        .unwrap();
    }
    drop(conn);

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    // 150 bytes held against a bound of 100: the next merge drops the two oldest.
    store.merge_local("m", json!({"a": 1})).wait().unwrap();
    let snap = store.snapshot("m").wait().unwrap().unwrap();
    assert_eq!(
        snap.journal,
        [
            json!({"k": 2}),
            json!({"k": 3}),
            json!({"k": 4}),
            json!({"a": 1})
        ]
    );
    assert_eq!(snap.journal_stats.dropped, 2);
    store.close().wait().unwrap();
    let conn = Connection::open(&path).unwrap();
    let (kept, sum): (i64, i64) = conn
        .query_row(
            "SELECT journal_bytes, (SELECT sum(bytes) FROM journal) FROM device WHERE id = 'm'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(kept, sum, "the total follows inserts and deletes");
    assert_eq!(kept, 90 + 7, "three old entries and {{\"a\":1}}");
}
