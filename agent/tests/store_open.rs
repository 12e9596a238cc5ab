//! Opening bad input: every case gives an error naming the path and the cause, and nothing is
//! deleted, recreated or modified.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed store call is a test failure"
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

/// Set (to the read-only directory) in the environment of the unprivileged child run of a
/// read-only-directory case; see [`read_only_case`].
const CHILD_DIR_ENV: &str = "TWINBRIDGE_TEST_READ_ONLY_DIR";
/// Printed by the child after its checks passed, so that the parent knows they ran (a test
/// filter that matched nothing would also exit 0).
const CHILD_DONE: &str = "read-only case checked by the unprivileged child";
/// `nobody` / `nogroup`.
const NOBODY: u32 = 65_534;

/// Runs `check` on a directory that `setup` populated and that was then made read-only.
///
/// Root ignores permission bits (and CI runs as root), so a 0555 directory would not stop it.
/// Then the check runs in a child process instead: this test binary, filtered to `test`,
/// started through `setpriv` (util-linux) as `nobody`, on a tree handed over to `nobody`.
/// Either way `check` really runs against a directory the process cannot write to.
fn read_only_case(test: &str, setup: fn(&Path), check: fn(&Path)) {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        check(Path::new(&dir));
        println!("{CHILD_DONE}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ro");
    fs::create_dir(&dir).unwrap();
    setup(&dir);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join("probe");
    if fs::write(&probe, b"x").is_err() {
        check(&dir);
    } else {
        fs::remove_file(&probe).unwrap();
        check_as_nobody(test, tmp.path(), &dir);
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the test `test` of this binary as `nobody` with [`CHILD_DIR_ENV`] = `dir`, and asserts
/// that its checks ran and passed.
fn check_as_nobody(test: &str, tmp: &Path, dir: &Path) {
    chown_tree(tmp, NOBODY);
    let mut exe = std::env::current_exe().unwrap();
    if !reachable_by_others(&exe) {
        // e.g. a checkout under /root: give `nobody` a copy it can execute.
        let copy = tmp.join("test-binary");
        fs::copy(&exe, &copy).unwrap();
        exe = copy;
    }
    let output = std::process::Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .output()
        .unwrap_or_else(|e| panic!("running setpriv (util-linux) to drop root: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("child as nobody:\n{stdout}{stderr}");
    assert!(
        output.status.success(),
        "child as nobody failed: {}",
        output.status
    );
    assert!(
        stdout.contains(CHILD_DONE),
        "the child did not run the check (exe {})",
        exe.display()
    );
}

fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::chown(path, Some(id), Some(id)).unwrap();
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), id);
        }
    }
}

/// Whether any user may execute `file`: it and every directory above it are world-executable.
fn reachable_by_others(file: &Path) -> bool {
    file.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

#[test]
fn read_only_directory_is_an_error_naming_path_and_cause() {
    read_only_case(
        "read_only_directory_is_an_error_naming_path_and_cause",
        |_| {},
        |dir| {
            let before = listing(dir);
            let path = dir.join("state.db");
            let err = open(&path).unwrap_err();
            assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
            names_path(&err, &path);
            assert!(err.to_string().contains("unable to open"), "{err}");
            assert_eq!(listing(dir), before, "nothing was created");
        },
    );
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

/// An existing store whose directory became read-only (wrong ownership after a restore, a
/// hardened unit without write access): SQLite cannot create its WAL and shared-memory files
/// there, nor the store its lock file. Both with the lock file of an earlier run beside the
/// database (the usual case: it is never removed) and without it.
#[test]
fn existing_store_in_read_only_directory_is_an_error() {
    read_only_case(
        "existing_store_in_read_only_directory_is_an_error",
        |dir| {
            for name in ["with-lock.db", "without-lock.db"] {
                let store = open(&dir.join(name)).unwrap();
                store.merge_local("d", json!({"a": 1})).wait().unwrap();
                store.close().wait().unwrap();
            }
            fs::remove_file(dir.join("without-lock.db-lock")).unwrap();
        },
        |dir| {
            let before = listing(dir);
            assert_eq!(
                before,
                ["with-lock.db", "with-lock.db-lock", "without-lock.db"]
            );
            for name in ["with-lock.db", "without-lock.db"] {
                let path = dir.join(name);
                let bytes = fs::read(&path).unwrap();
                let err = open(&path).unwrap_err();
                names_path(&err, &path);
                assert!(
                    matches!(err, StoreError::Lock { .. } | StoreError::Open { .. }),
                    "{name}: {err:?}"
                );
                let text = err.to_string();
                assert!(
                    ["read-only", "readonly", "Permission denied"]
                        .iter()
                        .any(|cause| text.contains(cause)),
                    "{name}: the error does not say why: {text}"
                );
                assert_eq!(fs::read(&path).unwrap(), bytes, "{name}: file unchanged");
                // SQLite cannot read a WAL database without creating its `-shm` file, so
                // `status` fails here too, with a clear error.
                let err = ReadOnlyStore::open(&path).unwrap_err();
                names_path(&err, &path);
                assert!(matches!(err, StoreError::Open { .. }), "{name}: {err:?}");
            }
            assert_eq!(listing(dir), before, "nothing was created");
        },
    );
}

/// A flock belongs to the open file, which a child spawned by any thread shares from `fork`
/// until its `exec`: a store closed and reopened while other threads start programs must not
/// find its own lock still held (the CLI tests and `demo` do exactly that).
#[test]
fn reopening_while_other_threads_spawn_programs_is_not_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for round in 0..200 {
        match open(&path) {
            Ok(store) => store.close().wait().unwrap(),
            Err(e) => failures.push(format!("round {round}: {e}")),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spawner in spawners {
        spawner.join().unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
