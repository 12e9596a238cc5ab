//! The systemd watchdog: `WATCHDOG=1` only on proof of progress.
//!
//! When systemd asks for pings (`$WATCHDOG_USEC`, and `$WATCHDOG_PID` unset or ours), the
//! agent sends `WATCHDOG=1` every half interval, but only while
//!
//! - the store's writer thread answers: a probe sends it [`Store::ping`] in a loop, and a
//!   writer stuck in SQLite (a lock never released, a dead disk) stops answering; and
//! - every registered loop has ticked within the interval: each bus task's
//!   [`Heartbeat`] (it ticks at least every second when idle or waiting to reopen its port,
//!   see `device_protocols::heartbeat`), and each line-device bridge's.
//!
//! Loops register on the [`ProgressBoard`] while they run (a reload may add and remove
//! them). The decision is [`verdict`], a pure function. When progress stops, the pings stop
//! and systemd restarts the agent after `WatchdogSec`; one warning names what is stuck.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use device_protocols::heartbeat::Heartbeat;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The watchdog interval systemd asks for: `WATCHDOG_USEC` (microseconds, > 0), when
/// `WATCHDOG_PID` is unset or is `my_pid` (systemd's `sd_watchdog_enabled` rule).
pub fn interval_from(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(my_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// [`interval_from`] this process's environment.
pub fn interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// Whether to ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything made progress recently: send `WATCHDOG=1`.
    Alive,
    /// Something did not: withhold the ping. Says what, and for how long.
    Stalled(String),
}

/// The decision: alive when the store answered and every loop ticked within `stale_after`
/// of `now`.
pub fn verdict(
    now: Instant,
    stale_after: Duration,
    store_answered: Instant,
    loops: &[(String, Instant)],
) -> Verdict {
    let age = |t: Instant| now.saturating_duration_since(t);
    if age(store_answered) > stale_after {
        return Verdict::Stalled(format!(
            "the store's writer has not answered for {}",
            humantime::format_duration(round(age(store_answered)))
        ));
    }
    for (name, last) in loops {
        if age(*last) > stale_after {
            return Verdict::Stalled(format!(
                "{name} has not ticked for {}",
                humantime::format_duration(round(age(*last)))
            ));
        }
    }
    Verdict::Alive
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

#[derive(Debug, Default)]
struct Board {
    next: AtomicU64,
    loops: Mutex<BTreeMap<u64, (String, Heartbeat)>>,
}

/// The loops whose heartbeats the watchdog checks; cheap to clone (clones share it).
#[derive(Debug, Clone, Default)]
pub struct ProgressBoard(Arc<Board>);

/// Keeps a loop on the [`ProgressBoard`]; dropping it removes the loop.
#[derive(Debug)]
#[must_use = "the loop leaves the board when this is dropped"]
pub struct ProgressRegistration {
    board: ProgressBoard,
    key: u64,
}

impl Drop for ProgressRegistration {
    fn drop(&mut self) {
        self.board.lock().remove(&self.key);
    }
}

impl ProgressBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (String, Heartbeat)>> {
        self.0.loops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks `heartbeat` (named `name` in messages, e.g. `bus rs485-a`) until the
    /// registration is dropped.
    pub fn register(&self, name: impl Into<String>, heartbeat: Heartbeat) -> ProgressRegistration {
        let key = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, (name.into(), heartbeat));
        ProgressRegistration {
            board: self.clone(),
            key,
        }
    }

    /// Each registered loop's last tick.
    pub fn snapshot(&self) -> Vec<(String, Instant)> {
        self.lock()
            .values()
            .map(|(name, beat)| (name.clone(), beat.last()))
            .collect()
    }
}

/// Until `stop`: probes the store and hands `WATCHDOG=1` to `ping` every `interval / 2` while
/// [`verdict`] says alive (stale after one `interval`). Logs once when the pings stop and when
/// they resume.
pub async fn run(
    store: Store,
    board: ProgressBoard,
    interval: Duration,
    stop: CancellationToken,
    ping: impl Fn(),
) {
    let answered = Arc::new(Mutex::new(Instant::now()));
    let health = store.clone();
    let probe = {
        let answered = answered.clone();
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = store.ping() => if r.is_err() { return },
                }
                *answered.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval / 4) => {}
                }
            }
        }
    };
    let notify = async move {
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut store_answered = *answered.lock().unwrap_or_else(PoisonError::into_inner);
            // A writer retrying a full or read-only disk is alive (it retries with backoff and
            // says so in the log and `status`); a restart would not give it space.
            if health.write_error().is_some() {
                store_answered = Instant::now();
            }
            match verdict(Instant::now(), interval, store_answered, &board.snapshot()) {
                Verdict::Alive => {
                    if stalled {
                        tracing::info!("progress again; watchdog pings resumed");
                        stalled = false;
                    }
                    ping();
                }
                Verdict::Stalled(why) => {
                    if !stalled {
                        tracing::error!(
                            "{why}: withholding watchdog pings (systemd restarts the agent)"
                        );
                        stalled = true;
                    }
                }
            }
        }
    };
    tokio::join!(probe, notify);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_asks_by_usec_for_this_pid_or_any() {
        assert_eq!(
            interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            interval_from(Some("500000"), Some("7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            interval_from(Some("500000"), Some("8"), 7),
            None,
            "another pid"
        );
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("soon"), None, 7), None);
        assert_eq!(interval_from(None, Some("7"), 7), None);
    }

    #[tokio::test(start_paused = true)]
    async fn alive_only_while_the_store_and_every_loop_made_progress() {
        let stale = Duration::from_secs(30);
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        let now = Instant::now();
        let loops = vec![("bus a".to_owned(), start), ("bus b".to_owned(), now)];
        assert_eq!(verdict(now, stale, start, &loops), Verdict::Alive);
        assert_eq!(verdict(now, stale, now, &[]), Verdict::Alive);

        tokio::time::advance(Duration::from_secs(11)).await;
        let later = Instant::now();
        assert_eq!(
            verdict(later, stale, later, &loops),
            Verdict::Stalled("bus a has not ticked for 31s".into())
        );
        assert_eq!(
            verdict(later, stale, start, &[]),
            Verdict::Stalled("the store's writer has not answered for 31s".into())
        );
        let fresh = vec![("bus a".to_owned(), later)];
        assert_eq!(verdict(later, stale, later, &fresh), Verdict::Alive);
    }

    #[tokio::test(start_paused = true)]
    async fn loops_come_and_go_with_their_registrations() {
        let board = ProgressBoard::default();
        let beat = Heartbeat::new();
        let a = board.register("bus a", beat.clone());
        let b = board.register("bus a", Heartbeat::new());
        assert_eq!(board.snapshot().len(), 2, "same name, two loops");
        drop(a);
        tokio::time::advance(Duration::from_secs(5)).await;
        beat.beat();
        let snapshot = board.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert!(
            Instant::now() - snapshot[0].1 >= Duration::from_secs(5),
            "the remaining loop is b, not the beaten a"
        );
        drop(b);
        assert!(board.snapshot().is_empty());
    }
}
