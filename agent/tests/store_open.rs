//! Opening bad input: every case gives an error naming the path and the cause, and nothing is
//! deleted, recreated or modified.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed store call is a test failure"
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rusqlite::Connection;
use serde_json::json;
use twinbridge::store::schema::APPLICATION_ID;
use twinbridge::store::{LATEST_VERSION, ReadOnlyStore, Store, StoreError, StoreOptions};

fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(path, StoreOptions::default())
}

fn names_path(err: &StoreError, path: &Path) {
    eprintln!("{err}");
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "error does not name {}: {text}",
        path.display()
    );
}

/// Names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fresh_file_is_initialised_in_wal_mode_at_the_latest_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = open(&path).unwrap();
    store.merge_local("d", json!({"a": 1})).wait().unwrap();
    let conn = Connection::open(&path).unwrap();
    let pragma = |name: &str| -> String {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| format!("{v:?}"))
        .unwrap()
    };
    assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
    assert_eq!(
        pragma("application_id"),
        format!("Integer({APPLICATION_ID})")
    );
    assert_eq!(pragma("user_version"), format!("Integer({LATEST_VERSION})"));
    store.close().wait().unwrap();
}

#[test]
fn missing_directory_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let path = missing.join("state.db");
    let err = open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::MissingDirectory { .. }),
        "{err:?}"
    );
    names_path(&err, &path);
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists());
}

/// A directory where files cannot be created. Root ignores permission bits, so when the test
/// runs as root (containers) the 0555 directory is still writable and `/sys` (sysfs refuses
/// file creation even to root) stands in for it.
fn read_only_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("ro");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(dir.join("probe"), b"x").is_err() {
        return dir;
    }
    fs::remove_file(dir.join("probe")).unwrap();
    eprintln!(
        "running as root: permission bits do not stop root, using /sys as the read-only directory"
    );
    PathBuf::from("/sys")
}

#[test]
fn read_only_directory_is_an_error_naming_path_and_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = read_only_dir(tmp.path());
    let before = listing(&dir);
    let path = dir.join("twinbridge-store-test.db");
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    names_path(&err, &path);
    assert!(err.to_string().contains("unable to open"), "{err}");
    assert_eq!(listing(&dir), before, "nothing was created");
    fs::set_permissions(tmp.path().join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn another_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'x');")
            .unwrap();
    }
    let bytes = fs::read(&path).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotTwinbridge { .. }), "{err:?}");
    names_path(&err, &path);
    assert!(
        err.to_string().contains("not a twinbridge database"),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
    assert_eq!(
        listing(dir.path()),
        ["other.db"],
        "no WAL or other file created"
    );
    let err = ReadOnlyStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotTwinbridge { .. }), "{err:?}");
}

#[test]
fn random_bytes_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.db");
    let mut bytes = vec![0u8; 8192];
    rand::rng().fill_bytes(&mut bytes);
    fs::write(&path, &bytes).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotTwinbridge { .. }), "{err:?}");
    names_path(&err, &path);
    assert!(err.to_string().contains("not an SQLite database"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
    assert_eq!(listing(dir.path()), ["random.db"]);
}

#[test]
fn corrupt_store_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = open(&path).unwrap();
    for i in 0..200 {
        store
            .merge_local(
                &format!("device-{i:03}"),
                json!({"value": "v".repeat(200), "i": i}),
            )
            .wait()
            .unwrap();
    }
    store.close().wait().unwrap();
    // Closing the last connection checkpoints the WAL into the main file.
    assert_eq!(listing(dir.path()), ["state.db", "state.db-lock"]);
    let mut bytes = fs::read(&path).unwrap();
    assert!(bytes.len() > 4096 * 8, "several pages");
    // Overwrite the middle of the file (b-tree pages of the device table).
    let middle = bytes.len() / 2 / 4096 * 4096;
    for b in &mut bytes[middle..middle + 4096] {
        *b = 0x5A;
    }
    fs::write(&path, &bytes).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    names_path(&err, &path);
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    open(&path).unwrap().close().wait().unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", LATEST_VERSION + 7)
            .unwrap();
    }
    let bytes = fs::read(&path).unwrap();
    let err = open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, .. } if found == LATEST_VERSION + 7),
        "{err:?}"
    );
    names_path(&err, &path);
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert!(matches!(
        ReadOnlyStore::open(&path).unwrap_err(),
        StoreError::TooNew { .. }
    ));
}

#[test]
fn read_only_open_of_missing_file_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let err = ReadOnlyStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::MissingFile { .. }), "{err:?}");
    names_path(&err, &path);
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn empty_file_is_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    fs::write(&path, b"").unwrap();
    let err = ReadOnlyStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotTwinbridge { .. }), "{err:?}");
    let store = open(&path).unwrap();
    assert!(store.devices().wait().unwrap().is_empty());
}

#[test]
fn second_writer_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = open(&path).unwrap();
    first.merge_local("d", json!({"a": 1})).wait().unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    names_path(&err, &path);
    // Readers are not writers: status works while the agent runs.
    assert_eq!(
        ReadOnlyStore::open(&path).unwrap().devices().unwrap(),
        ["d"]
    );
    first.close().wait().unwrap();
    let second = open(&path).unwrap();
    assert_eq!(second.devices().wait().unwrap(), ["d"]);
}

/// An existing store whose directory became read-only: SQLite cannot create the WAL and lock
/// files beside it. Root ignores permission bits, so as root this case cannot be set up; the
/// test then says so and checks nothing (the new-file case above covers root via `/sys`).
#[test]
fn existing_store_in_read_only_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("state.db");
    open(&path).unwrap().close().wait().unwrap();
    fs::remove_file(dir.join("state.db-lock")).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(dir.join("probe"), b"x").is_ok() {
        eprintln!("running as root: cannot make a directory read-only for root; case not checked");
        return;
    }
    let bytes = fs::read(&path).unwrap();
    let err = open(&path).unwrap_err();
    names_path(&err, &path);
    assert!(
        matches!(err, StoreError::Lock { .. } | StoreError::Open { .. }),
        "{err:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
}
