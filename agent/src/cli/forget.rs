//! `twinbridge forget DEVICE`: deletes what the store keeps about a device that was removed
//! from the configuration (its reported replica, sync state, desired document, acks, journal).
//!
//! A device removed from the configuration stops syncing, but its rows stay in the store (a
//! configuration mistake must not lose data); this is the deliberate way to drop them. The
//! agent must be stopped: the store has one writer.

use std::io::Write;
use std::path::Path;

use super::EX_CONFIG;
use crate::config::Config;
use crate::store::{Store, StoreError, StoreOptions};

/// Runs `forget`; returns the process exit code: 0 forgotten, 1 not in the store or the store
/// failed (e.g. the agent is running), 78 the configuration is invalid or still names it.
pub fn run(config_path: &Path, device: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            super::print_config_errors(err, &errors, config_path, "not forgetting: ");
            return EX_CONFIG;
        }
    };
    if config.identity_ids().any(|id| id == device) {
        let _ = writeln!(
            err,
            "{device:?} is still in the configuration ({}): remove it there first, then forget it",
            config_path.display()
        );
        return EX_CONFIG;
    }
    let path = config.store_path();
    let store = match Store::open(&path, StoreOptions::default()) {
        Ok(store) => store,
        Err(e @ StoreError::Locked { .. }) => {
            let _ = writeln!(err, "{e} (stop the agent first: systemctl stop twinbridge)");
            return 1;
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 1;
        }
    };
    let removed = store.remove_device(device).wait();
    let closed = store.close().wait();
    match (removed, closed) {
        (Ok(true), Ok(())) => {
            let _ = writeln!(out, "forgot {device:?} (store {})", path.display());
            0
        }
        (Ok(false), Ok(())) => {
            let _ = writeln!(err, "{device:?} is not in the store {}", path.display());
            1
        }
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(err, "{e}");
            1
        }
    }
}
