//! kill -9 the store at random moments: every change whose commit was reported survives, and
//! the file stays intact.
//!
//! The child (`store_crash_child`) prints a change's number only after its transaction has
//! committed. Each round starts it, usually waits until it has committed something, waits a
//! random few milliseconds more, and SIGKILLs it; some rounds kill it during start-up (open,
//! migration, recovery of the in-flight patch) instead.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed call is a test failure"
)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::time::timeout;
use twinbridge::store::ReadOnlyStore;

const ROUNDS: usize = 60;
const DEVICES: u64 = 4;

async fn next_number(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<u64> {
    let line = lines.next_line().await.expect("read child stdout")?;
    Some(
        line.parse()
            .unwrap_or_else(|_| panic!("child printed {line:?}")),
    )
}

/// Opens the file the way the test trusts: plain SQLite for the integrity check, then the
/// read-only store view for the documents. Also checks that each device's applied version of
/// `sp` and the ack in its `local` document agree: they are written in one transaction.
/// Returns how many devices have such an ack.
fn check(path: &Path, reported: &[u64]) -> usize {
    let conn = rusqlite::Connection::open(path).expect("open with plain SQLite");
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .expect("run integrity_check");
    assert_eq!(integrity, ["ok"]);
    drop(conn);
    let store = ReadOnlyStore::open(path).expect("open read-only");
    let mut local: BTreeMap<u64, Value> = BTreeMap::new();
    let mut with_ack = 0;
    for d in 0..DEVICES {
        let Some(snap) = store
            .snapshot(&format!("crash-{d}"))
            .expect("read snapshot")
        else {
            local.insert(d, json!({}));
            continue;
        };
        let applied = snap
            .properties
            .iter()
            .find(|p| p.name == "sp")
            .map(|p| p.applied_version);
        let acked = snap.sync.local.pointer("/sp/av").and_then(Value::as_i64);
        assert_eq!(
            applied, acked,
            "crash-{d}: applied version and ack disagree"
        );
        with_ack += usize::from(acked.is_some());
        local.insert(d, snap.sync.local);
    }
    for &n in reported {
        assert_eq!(
            local[&(n % DEVICES)].get(format!("c{n}")),
            Some(&json!(n)),
            "committed change {n} is missing"
        );
    }
    with_ack
}

#[tokio::test]
async fn committed_changes_survive_sigkill_with_synchronous_full() {
    kill_rounds("full").await;
}

/// The module docs claim both levels survive a process kill; this backs the claim.
#[tokio::test]
async fn committed_changes_survive_sigkill_with_synchronous_normal() {
    kill_rounds("normal").await;
}

async fn kill_rounds(level: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let child_bin = env!("CARGO_BIN_EXE_store_crash_child");
    let mut reported: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut killed_in_startup = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(child_bin)
            .arg(&path)
            .arg(next.to_string())
            .arg(level)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn store_crash_child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (early, delay_ms) = {
            let mut rng = rand::rng();
            (rng.random_ratio(1, 6), rng.random_range(0..20u64))
        };
        if early {
            killed_in_startup += 1;
        } else {
            // Condition, not a sleep: at least one commit reported in this round.
            let first = timeout(Duration::from_secs(20), next_number(&mut lines))
                .await
                .unwrap_or_else(|_| panic!("round {round}: no commit within 20 s"))
                .unwrap_or_else(|| panic!("round {round}: child exited before committing"));
            reported.push(first);
        }
        // The random moment of the kill.
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.start_kill().expect("SIGKILL the child");
        let status = child.wait().await.unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: child ended by SIGKILL, not {status}"
        );
        // Everything printed before the kill is still in the pipe.
        while let Some(n) = next_number(&mut lines).await {
            reported.push(n);
        }
        if let Some(&last) = reported.last() {
            next = next.max(last + 1);
        }
        if round % 10 == 9 {
            check(&path, &reported);
        }
    }
    eprintln!(
        "synchronous={level}: {ROUNDS} kills ({killed_in_startup} during start-up), {} commits reported",
        reported.len()
    );
    assert!(
        reported.len() >= ROUNDS - killed_in_startup,
        "every waited-for round committed"
    );
    assert!(check(&path, &reported) > 0, "some applied + ack committed");
}
