//! Shared helpers of the `config_*` tests: fixtures are copied into a temporary directory
//! (git does not keep file modes, and key files must be owner-only to be accepted).

#![allow(dead_code)] // each test crate uses a different subset

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// `agent/tests/fixtures/config/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// A copy of fixture `name` in a fresh temporary directory, key files (`keys.toml`,
/// `*.key`) made owner-only; returns the directory and its `config.toml`.
pub fn copy_fixture(name: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    copy_tree(&fixture_dir(name), dir.path());
    let config = dir.path().join("config.toml");
    (dir, config)
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("creating a fixture directory");
    for entry in fs::read_dir(from).expect("listing a fixture directory") {
        let entry = entry.expect("fixture directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("fixture file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copying a fixture");
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_key = Path::new(&name).extension().is_some_and(|x| x == "key");
            let mode = if name == "keys.toml" || is_key {
                0o600
            } else {
                0o644
            };
            set_mode(&target, mode);
        }
    }
}

/// `chmod mode path`.
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Writes `text` to `dir/name` (creating parent directories) and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().expect("a file in a directory"))
        .expect("creating a directory");
    fs::write(&path, text).expect("writing a test file");
    path
}

/// The errors' lines, with the temporary directory shown as `$DIR`.
pub fn error_lines(errors: &twinbridge::config::ConfigErrors, dir: &Path) -> Vec<String> {
    errors
        .iter()
        .map(|e| e.to_string().replace(&dir.display().to_string(), "$DIR"))
        .collect()
}

/// The test-only keys of the `good` fixture (from its keys.toml and group.key), to check
/// that they never show in output.
pub const GOOD_SECRETS: &[&str] = &[
    "Z2F0ZXdheS1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM=",
    "bWV0ZXItMDEta2V5LTAxMjM0NTY3ODlhYmNkZWYwMTI=",
    "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=",
    "s3cr",
];
