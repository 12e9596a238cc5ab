//! `twinbridge forget` asks before deleting: the device id must be typed (a wrong answer
//! keeps everything), `--yes` skips the question, and without a terminal nor `--yes` it
//! refuses with `EX_USAGE` and a hint.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use twinbridge::cli::forget::{self, Confirmation};
use twinbridge::store::{ReadOnlyStore, Store, StoreOptions};

/// A configuration with the gateway only; its store holds `old-07`, a removed device.
fn site(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[gateway]\nid = \"gw-1\"\nstate_dir = \"state\"\n[hub]\nhost = \"127.0.0.1\"\n",
    )
    .expect("config written");
    let db = dir.join("state").join("twinbridge.db");
    let store = Store::open(&db, StoreOptions::default()).expect("store opens");
    store
        .merge_local("old-07", json!({"temperature": 21.5, "mode": 2}))
        .wait()
        .expect("local merged");
    store.close().wait().expect("store closed");
    (config, db)
}

fn in_store(db: &Path, device: &str) -> bool {
    ReadOnlyStore::open(db)
        .expect("store readable")
        .snapshot(device)
        .expect("snapshot")
        .is_some()
}

fn ask(answer: &str) -> Confirmation {
    Confirmation::Ask(Box::new(Cursor::new(answer.as_bytes().to_vec())))
}

#[test]
fn forget_shows_what_goes_and_wants_the_device_id_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = site(dir.path());

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = forget::run(&config, "old-07", ask("y\n"), &mut out, &mut err);
    assert_eq!(code, 1, "a y is not the device id");
    let shown = String::from_utf8(out).unwrap();
    assert!(
        shown.contains("its reported document (2 top-level properties)"),
        "{shown}"
    );
    assert!(
        shown.ends_with("Type the device id to confirm: "),
        "{shown}"
    );
    assert_eq!(
        String::from_utf8(err).unwrap(),
        "not confirmed: \"old-07\" is kept\n"
    );
    assert!(in_store(&db, "old-07"));

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = forget::run(&config, "old-07", ask("old-07\n"), &mut out, &mut err);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(!in_store(&db, "old-07"), "forgotten");

    // Nothing to confirm for a device the store does not hold.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = forget::run(&config, "old-07", ask("old-07\n"), &mut out, &mut err);
    assert_eq!(code, 1);
    assert!(
        String::from_utf8(err)
            .unwrap()
            .contains("is not in the store")
    );
}

#[test]
fn forget_without_a_terminal_needs_yes() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = site(dir.path());
    let refused = Command::new(env!("CARGO_BIN_EXE_twinbridge"))
        .args(["forget", "old-07", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("twinbridge runs");
    assert_eq!(refused.status.code(), Some(64), "EX_USAGE");
    assert_eq!(
        String::from_utf8(refused.stderr).unwrap(),
        "not forgetting \"old-07\": deleting its store rows cannot be undone, and there is no \
         terminal to confirm on; run it on a terminal, or pass --yes: twinbridge forget --yes old-07\n"
    );
    assert!(in_store(&db, "old-07"));

    let forgotten = Command::new(env!("CARGO_BIN_EXE_twinbridge"))
        .args(["forget", "--yes", "old-07", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("twinbridge runs");
    assert_eq!(
        forgotten.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&forgotten.stderr)
    );
    assert!(!in_store(&db, "old-07"));
}
