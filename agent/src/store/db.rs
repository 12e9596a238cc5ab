//! Connection-level store logic: opening and checking the file, and one function per logical
//! change, each exactly one SQLite transaction. Only the writer thread (read-write) and
//! [`super::ReadOnlyStore`] own a [`Connection`].

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::schema::{self, APPLICATION_ID, LATEST_VERSION};
use super::sync_state::{InFlight, RejectKind, Rejection, SyncState};
use super::{
    DesiredOutcome, DesiredUpdate, DeviceSnapshot, HistoryLimits, JournalStats, PropertyState,
    StoreError, StoreOptions, Synchronous,
};
use crate::twin::{VersionOrder, apply, diff, is_noop, strip_reserved};

/// The parts of [`SyncState`] that live in the `sync_extra` JSON column.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct SyncExtra {
    alternatives: Vec<Value>,
    resync_needed: bool,
    quarantined: std::collections::BTreeMap<String, Value>,
    probing: std::collections::BTreeSet<String>,
    last_rejection: Option<Rejection>,
    rejections: u64,
}

/// What the open-time identification found in the file.
enum Found {
    Fresh,
    Ours(i32),
}

fn map_open_error(path: &Path, cause: &str, source: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotTwinbridge {
            path,
            detail: format!("not an SQLite database ({source})"),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path,
            detail: source.to_string(),
        },
        Some(ErrorCode::CannotOpen) => StoreError::Open {
            path,
            cause: format!(
                "{cause} (check the permissions of the file and its directory, and that the \
                 file system is writable)"
            ),
            source,
        },
        Some(ErrorCode::ReadOnly) => StoreError::Open {
            path,
            cause: format!("{cause} (file or directory is read-only?)"),
            source,
        },
        _ => StoreError::Open {
            path,
            cause: cause.to_owned(),
            source,
        },
    }
}

/// Reads the application id, schema version and table count, and decides whether the file is
/// ours, fresh, or foreign. Nothing is written.
fn identify(conn: &Connection, path: &Path) -> Result<Found, StoreError> {
    let read = |sql: &str| -> Result<i64, StoreError> {
        conn.query_row(sql, [], |row| row.get::<_, i64>(0))
            .map_err(|e| map_open_error(path, "reading the database header", e))
    };
    let application_id = read("PRAGMA application_id")? as i32;
    let user_version = read("PRAGMA user_version")? as i32;
    let tables = read("SELECT count(*) FROM sqlite_master")?;
    if application_id == APPLICATION_ID {
        if user_version > LATEST_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: user_version,
                supported: LATEST_VERSION,
            });
        }
        return Ok(Found::Ours(user_version));
    }
    if application_id == 0 && user_version == 0 && tables == 0 {
        return Ok(Found::Fresh);
    }
    Err(StoreError::NotTwinbridge {
        path: path.to_path_buf(),
        detail: format!(
            "an SQLite database with application_id {application_id:#x} (expected {APPLICATION_ID:#x}), \
             user_version {user_version} and {tables} schema objects"
        ),
    })
}

fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| map_open_error(path, "checking the database", e))?;
    let rows: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(Iterator::collect)
        .map_err(|e| map_open_error(path, "checking the database", e))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: rows.into_iter().take(5).collect::<Vec<_>>().join("; "),
        })
    }
}

/// Maps a SQLite failure to [`StoreError::Sqlite`] naming the database at `path`.
pub(super) fn sqlite_at(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("serde_json::Value and plain structs always serialise")
}

/// The read-write database of the writer thread.
#[derive(Debug)]
pub(crate) struct Db {
    conn: Connection,
    /// Held for the writer's life; declared after `conn` so it is released after the
    /// connection has closed.
    _lock: File,
    path: PathBuf,
    options: StoreOptions,
}

/// One writer per file, across processes: an exclusive `flock` on `<db>-lock`.
///
/// A separate file, not the database itself: closing any descriptor of the database file
/// would drop SQLite's own POSIX locks held by other connections of this process.
fn lock_writer(path: &Path) -> Result<File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push("-lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| StoreError::Lock {
            path: path.to_path_buf(),
            lock: lock_path.clone(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                // The writer thread, outside any runtime: nothing to await, a flock has no
                // timeout, and the holder (a child about to exec) gives no signal.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(LOCK_RETRY);
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::Lock {
                    path: path.to_path_buf(),
                    lock: lock_path,
                    source,
                });
            }
        }
    }
}

/// How long a held writer lock is waited for before the store is reported locked.
///
/// A lock can be held for a moment by a process that never opened the store: a flock
/// belongs to the open file, and a child spawned by any thread of the holder shares it from
/// `fork` until its `exec` closes the (close-on-exec) descriptor. So a store closed and
/// reopened in one process can find its own lock still held briefly while another thread
/// starts a program. A running agent holds it for good and is still reported, after this.
const LOCK_WAIT: Duration = Duration::from_millis(500);
/// Between two tries of a held lock.
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Opens (creating if missing) a read-write store; see [`super::Store::open`].
pub(crate) fn open_rw(path: &Path, options: StoreOptions) -> Result<Db, StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(StoreError::MissingDirectory {
            path: path.to_path_buf(),
            dir,
        });
    }
    if super::read_only_dir(&dir) {
        return Err(StoreError::ReadOnlyDirectory {
            path: path.to_path_buf(),
            dir,
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| map_open_error(path, "opening or creating the file", e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| map_open_error(path, "setting the busy timeout", e))?;
    let found = identify(&conn, path)?;
    if let Found::Ours(_) = found {
        quick_check(&conn, path)?;
    }
    // Only now that the file is known to be ours (or new) is anything created beside it.
    let lock = lock_writer(path)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| map_open_error(path, "switching to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setup {
            path: path.to_path_buf(),
            cause: format!("switching to WAL mode left journal_mode = {mode}"),
        });
    }
    let level = match options.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", level)
        .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
        .map_err(|e| map_open_error(path, "setting pragmas", e))?;
    let from = match found {
        Found::Fresh => 0,
        Found::Ours(version) => version,
    };
    schema::migrate(&mut conn, from, LATEST_VERSION).map_err(|source| StoreError::Migration {
        path: path.to_path_buf(),
        from,
        source,
    })?;
    let mut db = Db {
        conn,
        _lock: lock,
        path: path.to_path_buf(),
        options,
    };
    db.forget_in_flight()?;
    Ok(db)
}

impl Db {
    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        sqlite_at(&self.path)
    }

    fn begin(&mut self) -> Result<Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_at(&self.path))
    }

    fn now(&self) -> SystemTime {
        (self.options.clock)()
    }

    /// At open, no link exists yet: every in-flight patch of the previous process has an
    /// unknown outcome. One transaction for all devices.
    fn forget_in_flight(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.begin()?;
        let devices: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT id FROM device WHERE in_flight_rid IS NOT NULL")
                .map_err(sqlite_at(&path))?;
            stmt.query_map([], |row| row.get(0))
                .and_then(Iterator::collect)
                .map_err(sqlite_at(&path))?
        };
        for device in devices {
            let mut state = load_sync(&tx, &path, &device)?;
            state.on_disconnect();
            save_sync(&tx, &path, &device, &state)?;
        }
        tx.commit().map_err(sqlite_at(&path))
    }

    /// See [`super::Store::configure_device`].
    pub(crate) fn configure_device(
        &mut self,
        device: &str,
        history: Option<HistoryLimits>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.begin()?;
        ensure_device(&tx, &path, device)?;
        let (bytes, age) = history.map_or((None, None), |h| {
            (
                Some(i64::try_from(h.max_bytes).unwrap_or(i64::MAX)),
                Some(i64::try_from(h.max_age.as_millis()).unwrap_or(i64::MAX)),
            )
        });
        let sql = sqlite_at(&path);
        tx.execute(
            "UPDATE device SET history_max_bytes = ?2, history_max_age_ms = ?3 WHERE id = ?1",
            params![device, bytes, age],
        )
        .map_err(sql)?;
        if history.is_none() {
            // The state diff covers whatever the journal still held.
            tx.execute("DELETE FROM journal WHERE device = ?1", params![device])
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// See [`super::Store::remove_device`].
    pub(crate) fn remove_device(&mut self, device: &str) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let sql = sqlite_at(&path);
        let tx = self.begin()?;
        let n = tx
            .execute("DELETE FROM device WHERE id = ?1", params![device])
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(n > 0)
    }

    /// See [`super::Store::merge_local`].
    pub(crate) fn merge_local(&mut self, device: &str, patch: &Value) -> Result<Value, StoreError> {
        let now = now_ms(self.now());
        let path = self.path.clone();
        let tx = self.begin()?;
        let change = merge_local_in(&tx, &path, device, patch, now)?;
        if !is_noop(&change) {
            tx.commit().map_err(sqlite_at(&path))?;
        }
        Ok(change)
    }

    /// See [`super::Store::begin_send`].
    pub(crate) fn begin_send(
        &mut self,
        device: &str,
        request_id: &str,
    ) -> Result<Option<Value>, StoreError> {
        let now = now_ms(self.now());
        let path = self.path.clone();
        let sql = sqlite_at(&path);
        let tx = self.begin()?;
        let mut state = load_sync(&tx, &path, device)?;
        if state.in_flight.is_some() || state.resync_needed {
            return Ok(None);
        }
        let history = history_limits(&tx, &path, device)?;
        let mut patch = None;
        if let Some(limits) = history {
            prune_journal(&tx, &path, device, limits, now)?;
            let head: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, patch FROM journal WHERE device = ?1 ORDER BY seq LIMIT 1",
                    params![device],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(sql)?;
            if let Some((seq, text)) = head {
                let value = parse(&path, device, "journal.patch", &text)?;
                if state.begin_send_patch(request_id, value.clone(), seq) {
                    patch = Some(value);
                }
            }
        }
        if patch.is_none() {
            patch = state.begin_send(request_id);
        }
        save_sync(&tx, &path, device, &state)?;
        tx.commit().map_err(sql)?;
        Ok(patch)
    }

    /// See [`super::Store::acked`].
    pub(crate) fn acked(
        &mut self,
        device: &str,
        request_id: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let sql = sqlite_at(&path);
        let tx = self.begin()?;
        let mut state = load_sync(&tx, &path, device)?;
        let Some(in_flight) = state.on_ack(request_id, version) else {
            return Ok(false);
        };
        if let Some(seq) = in_flight.journal_seq {
            tx.execute("DELETE FROM journal WHERE seq = ?1", params![seq])
                .map_err(sql)?;
        }
        save_sync(&tx, &path, device, &state)?;
        tx.commit().map_err(sql)?;
        Ok(true)
    }

    /// See [`super::Store::rejected`].
    pub(crate) fn rejected(
        &mut self,
        device: &str,
        request_id: &str,
        status: u16,
        reason: &str,
    ) -> Result<Option<RejectKind>, StoreError> {
        let path = self.path.clone();
        let sql = sqlite_at(&path);
        let tx = self.begin()?;
        let mut state = load_sync(&tx, &path, device)?;
        let seq = state.in_flight.as_ref().and_then(|f| f.journal_seq);
        let Some(kind) = state.on_reject(request_id, status, reason) else {
            return Ok(None);
        };
        if let (RejectKind::Bad, Some(seq)) = (kind, seq) {
            // A bad history entry is never resent; the state diff after the journal still
            // carries its lasting effect.
            tx.execute("DELETE FROM journal WHERE seq = ?1", params![seq])
                .map_err(sql)?;
        }
        save_sync(&tx, &path, device, &state)?;
        tx.commit().map_err(sql)?;
        Ok(Some(kind))
    }

    /// See [`super::Store::disconnected`].
    pub(crate) fn disconnected(&mut self, device: &str) -> Result<(), StoreError> {
        self.update_sync(device, |state| {
            state.on_disconnect();
        })
    }

    /// See [`super::Store::hub_reported`].
    pub(crate) fn hub_reported(
        &mut self,
        device: &str,
        reported: &Value,
        version: i64,
    ) -> Result<(), StoreError> {
        self.update_sync(device, |state| state.on_hub_reported(reported, version))
    }

    fn update_sync(
        &mut self,
        device: &str,
        change: impl FnOnce(&mut SyncState),
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.begin()?;
        let mut state = load_sync(&tx, &path, device)?;
        change(&mut state);
        save_sync(&tx, &path, device, &state)?;
        tx.commit().map_err(sqlite_at(&path))
    }

    /// See [`super::Store::desired_received`].
    pub(crate) fn desired_received(
        &mut self,
        device: &str,
        update: &DesiredUpdate,
        version: i64,
    ) -> Result<DesiredOutcome, StoreError> {
        let path = self.path.clone();
        let sql = sqlite_at(&path);
        let tx = self.begin()?;
        ensure_device(&tx, &path, device)?;
        let (text, held): (String, Option<i64>) = tx
            .query_row(
                "SELECT desired, desired_version FROM device WHERE id = ?1",
                params![device],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(sql)?;
        let mut desired = parse(&path, device, "desired", &text)?;
        let outcome = match update {
            DesiredUpdate::Patch(patch) => {
                // Notifications need continuity: the twin helper's ordering decides.
                let order = VersionOrder::classify(
                    held.map(|h| order_version(&path, device, "held", h))
                        .transpose()?,
                    order_version(&path, device, "received", version)?,
                );
                match order {
                    VersionOrder::Newer => {
                        apply(&mut desired, &strip_meta(patch));
                        DesiredOutcome::Applied(desired)
                    }
                    VersionOrder::Same | VersionOrder::Older => DesiredOutcome::Stale {
                        held: held.expect("an ordering other than Gap implies a held version"),
                    },
                    VersionOrder::Gap => DesiredOutcome::Gap { held, got: version },
                }
            }
            DesiredUpdate::Full(doc) => {
                // A full document from a GET is the hub's truth when it answered and is
                // adopted whatever its version (the reported side does the same, see
                // `SyncState::on_hub_reported`): a twin recreated in the hub (device deleted
                // and registered again, or moved by DPS) restarts its versions at 1, and
                // refusing "older" documents would ignore it until it passed the old number,
                // while every notification in between would look like a gap.
                order_version(&path, device, "received", version)?;
                let doc = strip_meta(doc);
                if !doc.is_object() {
                    return Err(StoreError::InvalidInput {
                        path,
                        device: device.to_owned(),
                        detail: "a desired document must be a JSON object".to_owned(),
                    });
                }
                if held.is_some_and(|h| version < h) {
                    // Applied versions above the adopted one were counted by the previous
                    // twin; kept, they would mark the new twin's values as already written.
                    tx.execute(
                        "DELETE FROM property WHERE device = ?1 AND applied_version > ?2",
                        params![device, version],
                    )
                    .map_err(sql)?;
                }
                DesiredOutcome::Applied(doc)
            }
        };
        if let DesiredOutcome::Applied(doc) = &outcome {
            tx.execute(
                "UPDATE device SET desired = ?2, desired_version = ?3 WHERE id = ?1",
                params![device, to_json(doc), version],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        Ok(outcome)
    }

    /// See [`super::Store::applied_ack`].
    pub(crate) fn applied_ack(
        &mut self,
        device: &str,
        property: &str,
        version: i64,
        ack: &Value,
    ) -> Result<Value, StoreError> {
        let now = now_ms(self.now());
        let path = self.path.clone();
        let sql = sqlite_at(&path);
        let tx = self.begin()?;
        // The ack replaces whatever the property held (an older ack's `ad` must not linger):
        // the patch is the diff from the held value, not a merge into it.
        let held = load_sync(&tx, &path, device)?.local.get(property).cloned();
        let value = match held {
            Some(held @ Value::Object(_)) if ack.is_object() => diff(&held, ack),
            _ => ack.clone(),
        };
        let patch = Value::Object(Map::from_iter([(property.to_owned(), value)]));
        let change = merge_local_in(&tx, &path, device, &patch, now)?;
        tx.execute(
            "INSERT INTO property (device, name, applied_version, ack) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device, name) DO UPDATE SET applied_version = excluded.applied_version, ack = excluded.ack",
            params![device, property, version, to_json(ack)],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(change)
    }

    /// See [`super::Store::devices`].
    pub(crate) fn devices(&self) -> Result<Vec<String>, StoreError> {
        devices(&self.conn, &self.path)
    }

    /// See [`super::Store::sync_state`].
    pub(crate) fn sync_state(&self, device: &str) -> Result<Option<SyncState>, StoreError> {
        read_sync(&self.conn, &self.path, device)
    }

    /// See [`super::Store::snapshot`].
    pub(crate) fn snapshot(&self, device: &str) -> Result<Option<DeviceSnapshot>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        snapshot(&tx, &self.path, device)
    }
}

/// A desired `$version` as the twin helpers count it (`u64`), from the store's `i64`.
///
/// The one conversion point between the two: the hub's versions are never negative, so a
/// negative one (a caller bug, or a damaged row for `which = "held"`) is an error, not a cast.
fn order_version(path: &Path, device: &str, which: &str, version: i64) -> Result<u64, StoreError> {
    u64::try_from(version).map_err(|_| StoreError::InvalidInput {
        path: path.to_path_buf(),
        device: device.to_owned(),
        detail: format!("{which} desired $version {version} is negative"),
    })
}

/// `doc` without the hub's read-only `$version` / `$metadata` members.
fn strip_meta(doc: &Value) -> Value {
    let mut doc = doc.clone();
    strip_reserved(&mut doc);
    doc
}

fn parse(path: &Path, device: &str, column: &'static str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::BadJson {
        path: path.to_path_buf(),
        device: device.to_owned(),
        column,
        source,
    })
}

fn ensure_device(tx: &Transaction<'_>, path: &Path, device: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO device (id) VALUES (?1)",
        params![device],
    )
    .map(drop)
    .map_err(sqlite_at(path))
}

/// Loads the sync state of `device`, creating an empty device row when it is new.
fn load_sync(tx: &Transaction<'_>, path: &Path, device: &str) -> Result<SyncState, StoreError> {
    ensure_device(tx, path, device)?;
    read_sync(tx, path, device)?.ok_or_else(|| StoreError::Sqlite {
        path: path.to_path_buf(),
        source: rusqlite::Error::QueryReturnedNoRows,
    })
}

type SyncRow = (
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
);

fn read_sync(
    conn: &Connection,
    path: &Path,
    device: &str,
) -> Result<Option<SyncState>, StoreError> {
    let row: Option<SyncRow> = conn
        .query_row(
            "SELECT local, hub_reported, hub_version, in_flight_rid, in_flight_patch, in_flight_seq, sync_extra
             FROM device WHERE id = ?1",
            params![device],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            },
        )
        .optional()
        .map_err(sqlite_at(path))?;
    let Some((local, hub_reported, hub_version, rid, patch, seq, extra)) = row else {
        return Ok(None);
    };
    let extra: SyncExtra = serde_json::from_str(&extra).map_err(|source| StoreError::BadJson {
        path: path.to_path_buf(),
        device: device.to_owned(),
        column: "sync_extra",
        source,
    })?;
    let in_flight = match (rid, patch) {
        (Some(request_id), Some(patch)) => Some(InFlight {
            request_id,
            patch: parse(path, device, "in_flight_patch", &patch)?,
            journal_seq: seq,
        }),
        _ => None,
    };
    Ok(Some(SyncState {
        local: parse(path, device, "local", &local)?,
        hub_reported: parse(path, device, "hub_reported", &hub_reported)?,
        hub_version,
        alternatives: extra.alternatives,
        resync_needed: extra.resync_needed,
        in_flight,
        quarantined: extra.quarantined,
        probing: extra.probing,
        last_rejection: extra.last_rejection,
        rejections: extra.rejections,
    }))
}

fn save_sync(
    tx: &Transaction<'_>,
    path: &Path,
    device: &str,
    state: &SyncState,
) -> Result<(), StoreError> {
    let extra = SyncExtra {
        alternatives: state.alternatives.clone(),
        resync_needed: state.resync_needed,
        quarantined: state.quarantined.clone(),
        probing: state.probing.clone(),
        last_rejection: state.last_rejection.clone(),
        rejections: state.rejections,
    };
    let in_flight = state.in_flight.as_ref();
    tx.execute(
        "UPDATE device SET local = ?2, hub_reported = ?3, hub_version = ?4, in_flight_rid = ?5,
                in_flight_patch = ?6, in_flight_seq = ?7, sync_extra = ?8
         WHERE id = ?1",
        params![
            device,
            to_json(&state.local),
            to_json(&state.hub_reported),
            state.hub_version,
            in_flight.map(|f| f.request_id.as_str()),
            in_flight.map(|f| to_json(&f.patch)),
            in_flight.and_then(|f| f.journal_seq),
            to_json(&extra),
        ],
    )
    .map(drop)
    .map_err(sqlite_at(path))
}

/// Merges `patch` into `local` and journals the effective change in every-change mode. Writes
/// nothing when the patch changes nothing.
fn merge_local_in(
    tx: &Transaction<'_>,
    path: &Path,
    device: &str,
    patch: &Value,
    now: i64,
) -> Result<Value, StoreError> {
    let sql = sqlite_at(path);
    let mut state = load_sync(tx, path, device)?;
    let change = state
        .merge_local(patch)
        .map_err(|e| StoreError::InvalidInput {
            path: path.to_path_buf(),
            device: device.to_owned(),
            detail: e.to_string(),
        })?;
    if is_noop(&change) {
        return Ok(change);
    }
    tx.execute(
        "UPDATE device SET local = ?2 WHERE id = ?1",
        params![device, to_json(&state.local)],
    )
    .map_err(sql)?;
    if let Some(limits) = history_limits(tx, path, device)? {
        let text = to_json(&change);
        tx.execute(
            "INSERT INTO journal (device, patch, bytes, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![device, text, text.len() as i64, now],
        )
        .map_err(sql)?;
        prune_journal(tx, path, device, limits, now)?;
    }
    Ok(change)
}

fn history_limits(
    conn: &Connection,
    path: &Path,
    device: &str,
) -> Result<Option<HistoryLimits>, StoreError> {
    let (bytes, age): (Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT history_max_bytes, history_max_age_ms FROM device WHERE id = ?1",
            params![device],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sqlite_at(path))?
        .unwrap_or((None, None));
    Ok(match (bytes, age) {
        (Some(bytes), Some(age)) => Some(HistoryLimits {
            max_bytes: u64::try_from(bytes).unwrap_or(0),
            max_age: Duration::from_millis(u64::try_from(age).unwrap_or(0)),
        }),
        _ => None,
    })
}

/// Drops the oldest journal entries older than `max_age` or beyond `max_bytes`, counting them.
///
/// Reads the journal oldest first and stops at the first entry it keeps, so a merge costs
/// the entries it drops, not the journal's length (the byte total is kept by triggers, see
/// schema v3). Entries are in `seq` order, which is creation order: should the wall clock
/// have gone back, an entry older than `max_age` behind a newer one waits for that one.
fn prune_journal(
    tx: &Transaction<'_>,
    path: &Path,
    device: &str,
    limits: HistoryLimits,
    now: i64,
) -> Result<(), StoreError> {
    let sql = sqlite_at(path);
    let oldest_kept =
        now.saturating_sub(i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX));
    let max_bytes = i64::try_from(limits.max_bytes).unwrap_or(i64::MAX);
    let mut total: i64 = tx
        .query_row(
            "SELECT journal_bytes FROM device WHERE id = ?1",
            params![device],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql)?
        .unwrap_or(0);
    let mut cutoff = None;
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, bytes, created_ms FROM journal WHERE device = ?1 ORDER BY seq",
            )
            .map_err(sql)?;
        let mut rows = stmt.query(params![device]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let (seq, bytes, created): (i64, i64, i64) = (
                row.get(0).map_err(sql)?,
                row.get(1).map_err(sql)?,
                row.get(2).map_err(sql)?,
            );
            if created >= oldest_kept && total <= max_bytes {
                break;
            }
            total -= bytes;
            cutoff = Some(seq);
        }
    }
    let Some(cutoff) = cutoff else {
        return Ok(());
    };
    let dropped = tx
        .execute(
            "DELETE FROM journal WHERE device = ?1 AND seq <= ?2",
            params![device, cutoff],
        )
        .map_err(sql)?;
    tx.execute(
        "UPDATE device SET journal_dropped = journal_dropped + ?2 WHERE id = ?1",
        params![device, dropped as i64],
    )
    .map_err(sql)?;
    Ok(())
}

pub(crate) fn devices(conn: &Connection, path: &Path) -> Result<Vec<String>, StoreError> {
    let sql = sqlite_at(path);
    let mut stmt = conn
        .prepare("SELECT id FROM device ORDER BY id")
        .map_err(sql)?;
    stmt.query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .map_err(sql)
}

/// When the oldest queued journal entry of `device` was created (ms since the Unix epoch), or
/// `None` when its journal is empty.
pub(crate) fn oldest_journal_ms(
    conn: &Connection,
    path: &Path,
    device: &str,
) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT MIN(created_ms) FROM journal WHERE device = ?1",
        params![device],
        |row| row.get(0),
    )
    .map_err(sqlite_at(path))
}

/// Everything stored about `device`, read in the caller's (read) transaction.
pub(crate) fn snapshot(
    conn: &Connection,
    path: &Path,
    device: &str,
) -> Result<Option<DeviceSnapshot>, StoreError> {
    let sql = sqlite_at(path);
    let Some(sync) = read_sync(conn, path, device)? else {
        return Ok(None);
    };
    let (desired, desired_version, journal_dropped): (String, Option<i64>, i64) = conn
        .query_row(
            "SELECT desired, desired_version, journal_dropped FROM device WHERE id = ?1",
            params![device],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .map_err(sql)?;
    let mut properties = Vec::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT name, applied_version, ack FROM property WHERE device = ?1 ORDER BY name",
            )
            .map_err(sql)?;
        let rows: Vec<(String, i64, String)> = stmt
            .query_map(params![device], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .and_then(Iterator::collect)
            .map_err(sql)?;
        for (name, applied_version, ack) in rows {
            properties.push(PropertyState {
                ack: parse(path, device, "property.ack", &ack)?,
                name,
                applied_version,
            });
        }
    }
    let (entries, bytes): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM journal WHERE device = ?1",
            params![device],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(sql)?;
    let mut journal = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT patch FROM journal WHERE device = ?1 ORDER BY seq")
            .map_err(sql)?;
        let rows: Vec<String> = stmt
            .query_map(params![device], |row| row.get(0))
            .and_then(Iterator::collect)
            .map_err(sql)?;
        for text in rows {
            journal.push(parse(path, device, "journal.patch", &text)?);
        }
    }
    Ok(Some(DeviceSnapshot {
        device: device.to_owned(),
        history: history_limits(conn, path, device)?,
        sync,
        desired: parse(path, device, "desired", &desired)?,
        desired_version,
        properties,
        journal_stats: JournalStats {
            entries: u64::try_from(entries).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
            dropped: u64::try_from(journal_dropped).unwrap_or(0),
        },
        journal,
    }))
}

/// Opens an existing store read-only; see [`super::ReadOnlyStore::open`].
pub(crate) fn open_ro(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| map_open_error(path, "opening the file read-only", e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| map_open_error(path, "setting the busy timeout", e))?;
    match identify(&conn, path)? {
        Found::Fresh => Err(StoreError::NotTwinbridge {
            path: path.to_path_buf(),
            detail: "an empty file (the agent has not initialised it yet)".to_owned(),
        }),
        Found::Ours(version) if version < LATEST_VERSION => Err(StoreError::NeedsMigration {
            path: path.to_path_buf(),
            found: version,
            supported: LATEST_VERSION,
        }),
        Found::Ours(_) => Ok(conn),
    }
}
