//! Schema and forward-only migrations, keyed on `PRAGMA user_version`.
//!
//! A twinbridge database is recognised by `PRAGMA application_id` = [`APPLICATION_ID`]. A file
//! with `user_version` 0, application id 0 and no tables is a fresh file and is initialised;
//! anything else without our application id is somebody else's database and is refused.

use rusqlite::Connection;

/// `PRAGMA application_id` of a twinbridge store ("TWBR").
pub const APPLICATION_ID: i32 = 0x5457_4252;

/// Migration `i` (0-based) brings `user_version` from `i` to `i + 1`.
///
/// Forward-only: a released step is never edited, new steps are appended.
pub const MIGRATIONS: &[&str] = &[
    // v1: per-device replicas and sync state, desired document, per-property applied version.
    r"
    CREATE TABLE device (
        id               TEXT PRIMARY KEY NOT NULL,
        local            TEXT NOT NULL DEFAULT '{}',
        hub_reported     TEXT NOT NULL DEFAULT '{}',
        hub_version      INTEGER,
        in_flight_rid    TEXT,
        in_flight_patch  TEXT,
        in_flight_seq    INTEGER,
        -- alternatives, quarantine, probing, last rejection (JSON; see sync_state.rs)
        sync_extra       TEXT NOT NULL DEFAULT '{}',
        desired          TEXT NOT NULL DEFAULT '{}',
        desired_version  INTEGER
    ) STRICT;
    CREATE TABLE property (
        device           TEXT NOT NULL REFERENCES device(id) ON DELETE CASCADE,
        name             TEXT NOT NULL,
        applied_version  INTEGER NOT NULL,
        ack              TEXT NOT NULL,
        PRIMARY KEY (device, name)
    ) STRICT;
    ",
    // v2: the every-change ("history") journal, bounded by bytes and age, with a drop counter.
    r"
    ALTER TABLE device ADD COLUMN history_max_bytes INTEGER;
    ALTER TABLE device ADD COLUMN history_max_age_ms INTEGER;
    ALTER TABLE device ADD COLUMN journal_dropped INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE journal (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        device      TEXT NOT NULL REFERENCES device(id) ON DELETE CASCADE,
        patch       TEXT NOT NULL,
        bytes       INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX journal_by_device ON journal(device, seq);
    ",
    // v3: each device's journal size in bytes, kept by triggers in the same transaction as
    // every insert and delete, so pruning reads only the entries it drops instead of
    // summing the whole journal on every merge.
    r"
    ALTER TABLE device ADD COLUMN journal_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE device SET journal_bytes =
        (SELECT coalesce(sum(bytes), 0) FROM journal WHERE journal.device = device.id);
    CREATE TRIGGER journal_added AFTER INSERT ON journal BEGIN
        UPDATE device SET journal_bytes = journal_bytes + NEW.bytes WHERE id = NEW.device;
    END;
    CREATE TRIGGER journal_removed AFTER DELETE ON journal BEGIN
        UPDATE device SET journal_bytes = journal_bytes - OLD.bytes WHERE id = OLD.device;
    END;
    ",
];

/// The schema version this build writes.
pub const LATEST_VERSION: i32 = MIGRATIONS.len() as i32;

/// Runs the migrations from `from` up to `to` (exclusive of nothing: `from..to`), each step in
/// its own transaction together with its `user_version` bump.
pub(crate) fn migrate(conn: &mut Connection, from: i32, to: i32) -> rusqlite::Result<()> {
    for version in from..to {
        let tx = conn.transaction()?;
        if version == 0 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        }
        tx.execute_batch(MIGRATIONS[version as usize])?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}
