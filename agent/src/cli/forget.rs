//! `twinbridge forget DEVICE`: deletes what the store keeps about a device that was removed
//! from the configuration (its reported replica, sync state, desired document, acks, journal).
//!
//! A device removed from the configuration stops syncing, but its rows stay in the store (a
//! configuration mistake must not lose data); this is the deliberate way to drop them. The
//! agent must be stopped: the store has one writer.
//!
//! Deleting is not undoable, so it asks first: on a terminal it shows what the store holds
//! for the device and asks for the device id to be typed (a y/N is answered by reflex; the
//! id makes the technician read which device it is). `--yes` skips the question for scripts;
//! without a terminal and without `--yes` it refuses (exit 64, `EX_USAGE`) and says so.

use std::io::{BufRead, IsTerminal as _, Write};
use std::path::Path;

use super::{EX_CONFIG, EX_USAGE};
use crate::config::Config;
use crate::store::{Store, StoreError, StoreOptions};

/// How `forget` gets its go-ahead.
pub enum Confirmation {
    /// `--yes`: do not ask.
    Given,
    /// Ask, reading the answer from this terminal.
    Ask(Box<dyn BufRead>),
    /// No terminal to ask on, and no `--yes`: refuse.
    NoTerminal,
}

impl std::fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Confirmation::Given => "Given",
            Confirmation::Ask(_) => "Ask",
            Confirmation::NoTerminal => "NoTerminal",
        })
    }
}

/// The confirmation for this process: `--yes`, else ask on stdin when it is a terminal.
pub fn confirmation(yes: bool) -> Confirmation {
    if yes {
        Confirmation::Given
    } else if std::io::stdin().is_terminal() {
        Confirmation::Ask(Box::new(std::io::stdin().lock()))
    } else {
        Confirmation::NoTerminal
    }
}

/// Runs `forget`; returns the process exit code: 0 forgotten, 1 not in the store, not
/// confirmed, or the store failed (e.g. the agent is running), 64 no terminal to ask on and
/// no `--yes`, 78 the configuration is invalid or still names it.
pub fn run(
    config_path: &Path,
    device: &str,
    confirmation: Confirmation,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
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
    if matches!(confirmation, Confirmation::NoTerminal) {
        let _ = writeln!(
            err,
            "not forgetting {device:?}: deleting its store rows cannot be undone, and there is no \
             terminal to confirm on; run it on a terminal, or pass --yes: twinbridge forget --yes {device}"
        );
        return EX_USAGE;
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
    if let Confirmation::Ask(mut input) = confirmation {
        match store.snapshot(device).wait() {
            Ok(Some(snapshot)) => {
                let keys = snapshot
                    .sync
                    .local
                    .as_object()
                    .map_or(0, serde_json::Map::len);
                let _ = writeln!(
                    out,
                    "This deletes what the store {} keeps about {device:?}, for good:\n  \
                     its reported document ({keys} top-level properties) and sync state,\n  \
                     its desired document (version {}), {} applied writable properties,\n  \
                     and {} queued journal patches.",
                    path.display(),
                    snapshot
                        .desired_version
                        .map_or_else(|| "none".to_owned(), |v| v.to_string()),
                    snapshot.properties.len(),
                    snapshot.journal.len(),
                );
            }
            Ok(None) => {
                let _ = store.close().wait();
                let _ = writeln!(err, "{device:?} is not in the store {}", path.display());
                return 1;
            }
            Err(e) => {
                let _ = store.close().wait();
                let _ = writeln!(err, "reading {device:?} from the store: {e}");
                return 1;
            }
        }
        let _ = write!(out, "Type the device id to confirm: ");
        let _ = out.flush();
        let mut answer = String::new();
        let confirmed = input.read_line(&mut answer).is_ok() && answer.trim() == device;
        if !confirmed {
            let _ = store.close().wait();
            let _ = writeln!(err, "not confirmed: {device:?} is kept");
            return 1;
        }
    }
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
