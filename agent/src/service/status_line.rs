//! What `systemctl status twinbridge` shows (`STATUS=`), and the state-change log lines of
//! devices and hub links.
//!
//! - [`DeviceBoard`]: each field device's link state, set by the bridge whenever it computes
//!   the device's health. Devices are registered while their bridge runs (a reload may add
//!   and remove them); a change of state is logged once, rate-limited by a
//!   [`StateLog`] ("device offline", …, or one summary for a flapping device).
//! - [`status_line`] (pure): "12/14 devices online, hub connected, 3 unsynced".
//! - [`observe`]: the task that logs hub link changes per identity (rate-limited too), emits
//!   due summaries and sends `STATUS=` when the line changed, at most every
//!   [`STATUS_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RuntimeHandle;
use super::state_log::{Say, StateLog};
use crate::sync::IdentityStatus;

/// At most how often `STATUS=` is sent.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often identity statuses are compared and pending summaries emitted.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// A field device's link state, as its twin's `reported.gateway.status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceLink {
    /// Not polled (or heard from) yet.
    Unknown,
    /// Delivers data.
    Online,
    /// Answers, but only with exceptions.
    Faulted,
    /// Does not answer, or its port is down.
    Offline,
}

impl DeviceLink {
    /// From the health object's `status` (`"online"`, `"faulted"`, `"offline"`, else unknown).
    pub fn from_status(status: &str) -> Self {
        match status {
            "online" => Self::Online,
            "faulted" => Self::Faulted,
            "offline" => Self::Offline,
            _ => Self::Unknown,
        }
    }

    /// The lower-case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Online => "online",
            Self::Faulted => "faulted",
            Self::Offline => "offline",
        }
    }
}

impl std::fmt::Display for DeviceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
struct DeviceEntry {
    /// Which registration owns the entry (a device re-registered by a reload gets a new one).
    registration: u64,
    bus: String,
    link: DeviceLink,
    log: StateLog<DeviceLink>,
}

#[derive(Debug, Default)]
struct Board {
    next: AtomicU64,
    devices: Mutex<BTreeMap<String, DeviceEntry>>,
}

/// Every running field device's link state; cheap to clone (clones share it).
#[derive(Debug, Clone, Default)]
pub struct DeviceBoard(Arc<Board>);

/// Keeps a device on the [`DeviceBoard`]; dropping it removes the device.
#[derive(Debug)]
#[must_use = "the device leaves the board when this is dropped"]
pub struct DeviceRegistration {
    board: DeviceBoard,
    device: String,
    registration: u64,
}

impl Drop for DeviceRegistration {
    fn drop(&mut self) {
        let mut devices = self.board.lock();
        if devices
            .get(&self.device)
            .is_some_and(|e| e.registration == self.registration)
        {
            devices.remove(&self.device);
        }
    }
}

impl DeviceBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceEntry>> {
        self.0
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `device` (on `bus`: a bus name, or the port of a line device) on the board, state
    /// unknown, until the registration is dropped.
    pub fn register(&self, device: &str, bus: &str) -> DeviceRegistration {
        let registration = self.0.next.fetch_add(1, Ordering::Relaxed);
        let mut log = StateLog::default();
        let _ = log.observe(DeviceLink::Unknown, Instant::now());
        self.lock().insert(
            device.to_owned(),
            DeviceEntry {
                registration,
                bus: bus.to_owned(),
                link: DeviceLink::Unknown,
                log,
            },
        );
        DeviceRegistration {
            board: self.clone(),
            device: device.to_owned(),
            registration,
        }
    }

    /// Records the device's state (`reason`: its last error, for the log line). A change is
    /// logged once (or counted into a summary when the device flaps). Unregistered devices
    /// are ignored.
    pub fn set(&self, device: &str, link: DeviceLink, reason: Option<&str>) {
        let mut devices = self.lock();
        let Some(entry) = devices.get_mut(device) else {
            return;
        };
        entry.link = link;
        if let Some(Say::Change { from, to }) = entry.log.observe(link, Instant::now()) {
            log_device_change(device, &entry.bus, from, to, reason);
        }
    }

    /// Every device's state, by device id.
    pub fn snapshot(&self) -> Vec<(String, DeviceLink)> {
        self.lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.link))
            .collect()
    }

    /// Logs the summaries of flapping devices that are due.
    pub fn log_due(&self, now: Instant) {
        for (device, entry) in self.lock().iter_mut() {
            if let Some(Say::Summary {
                changes,
                window,
                now,
            }) = entry.log.due(now)
            {
                tracing::warn!(
                    device,
                    bus = entry.bus,
                    changes,
                    "{device} went offline/online {changes} times in the last {} (now {now})",
                    humantime::format_duration(window)
                );
            }
        }
    }
}

fn log_device_change(
    device: &str,
    bus: &str,
    from: Option<DeviceLink>,
    to: DeviceLink,
    reason: Option<&str>,
) {
    let from = from.map_or("unknown", DeviceLink::as_str);
    match to {
        DeviceLink::Online => tracing::info!(device, bus, from, "device online"),
        DeviceLink::Offline => tracing::warn!(device, bus, from, reason, "device offline"),
        DeviceLink::Faulted => tracing::warn!(device, bus, from, reason, "device faulted"),
        DeviceLink::Unknown => {}
    }
}

/// The `STATUS=` line: devices online out of all, hub connectivity, unsynced identities and
/// refused reported keys, e.g. "12/14 devices online, hub connected, 3 unsynced".
///
/// Hub: "hub connected" when every identity is, "hub disconnected" when none is, else
/// "hub 14/15 connected"; "waiting for a valid clock" when that is why.
pub fn status_line(devices: &[DeviceLink], identities: &[(String, IdentityStatus)]) -> String {
    let mut parts = Vec::new();
    if !devices.is_empty() {
        let online = devices.iter().filter(|d| **d == DeviceLink::Online).count();
        let faulted = devices
            .iter()
            .filter(|d| **d == DeviceLink::Faulted)
            .count();
        parts.push(format!("{online}/{} devices online", devices.len()));
        if faulted > 0 {
            parts.push(format!("{faulted} faulted"));
        }
    }
    let connected = identities.iter().filter(|(_, s)| s.connected).count();
    let total = identities.len();
    parts.push(if identities.iter().any(|(_, s)| s.waiting_for_clock) {
        "hub waiting for a valid clock".to_owned()
    } else if connected == total {
        "hub connected".to_owned()
    } else if connected == 0 {
        "hub disconnected".to_owned()
    } else {
        format!("hub {connected}/{total} connected")
    });
    let unsynced = identities
        .iter()
        .filter(|(_, s)| s.unsynced_since.is_some())
        .count();
    parts.push(if unsynced == 0 {
        "all in sync".to_owned()
    } else {
        format!("{unsynced} unsynced")
    });
    let rejected: usize = identities.iter().map(|(_, s)| s.quarantined.len()).sum();
    if rejected > 0 {
        parts.push(format!("{rejected} reported keys refused by the hub"));
    }
    parts.join(", ")
}

/// Until `stop`: logs hub link changes per identity (rate-limited), emits the due summaries
/// of flapping devices and links, and hands a changed `STATUS=` line to `send` (at most every
/// [`STATUS_EVERY`]).
pub async fn observe(handle: RuntimeHandle, stop: CancellationToken, send: impl Fn(&str)) {
    let mut links: HashMap<String, StateLog<bool>> = HashMap::new();
    let mut sent: Option<(String, Instant)> = None;
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let statuses = handle.statuses();
        links.retain(|id, _| statuses.iter().any(|(s, _)| s == id));
        for (id, status) in &statuses {
            let log = links.entry(id.clone()).or_default();
            match log.observe(status.connected, now) {
                Some(Say::Change { to: true, .. }) => {
                    tracing::info!(identity = id, device = id, "hub connected");
                }
                // The first observation of a link that is not up yet is not a change.
                Some(Say::Change {
                    from: Some(true),
                    to: false,
                }) => tracing::warn!(
                    identity = id,
                    device = id,
                    reason = status.last_disconnect,
                    "hub disconnected"
                ),
                _ => {}
            }
            if let Some(Say::Summary {
                changes,
                window,
                now: up,
            }) = log.due(now)
            {
                tracing::warn!(
                    identity = id,
                    device = id,
                    changes,
                    "hub link of {id} went down/up {changes} times in the last {} (now {})",
                    humantime::format_duration(window),
                    if up { "connected" } else { "disconnected" }
                );
            }
        }
        let board = handle.device_board();
        board.log_due(now);
        let devices: Vec<DeviceLink> = board.snapshot().into_iter().map(|(_, l)| l).collect();
        let line = status_line(&devices, &statuses);
        let due = sent
            .as_ref()
            .is_none_or(|(last, at)| *last != line && now >= *at + STATUS_EVERY);
        if due {
            send(&line);
            sent = Some((line, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::sync::QuarantinedKey;

    fn id(connected: bool, unsynced: bool) -> (String, IdentityStatus) {
        (
            "x".to_owned(),
            IdentityStatus {
                connected,
                unsynced_since: unsynced.then_some(SystemTime::UNIX_EPOCH),
                ..IdentityStatus::default()
            },
        )
    }

    #[test]
    fn the_line_counts_devices_online_hub_links_and_unsynced_identities() {
        use DeviceLink::{Faulted, Offline, Online, Unknown};
        let mut devices = vec![Online; 12];
        devices.extend([Offline, Unknown]);
        let ids = vec![id(true, false), id(true, true), id(true, true)];
        assert_eq!(
            status_line(&devices, &ids),
            "12/14 devices online, hub connected, 2 unsynced"
        );
        let ids = vec![id(true, false), id(false, true)];
        assert_eq!(
            status_line(&[Online, Faulted], &ids),
            "1/2 devices online, 1 faulted, hub 1/2 connected, 1 unsynced"
        );
        assert_eq!(
            status_line(&[], &[id(false, false)]),
            "hub disconnected, all in sync"
        );
        let mut refused = id(true, true);
        refused.1.quarantined.push(QuarantinedKey {
            path: "reported.a".into(),
            status: Some(400),
            reason: None,
        });
        refused.1.waiting_for_clock = true;
        assert_eq!(
            status_line(&[Online], &[refused]),
            "1/1 devices online, hub waiting for a valid clock, 1 unsynced, \
             1 reported keys refused by the hub"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_board_follows_registrations_and_a_reregistered_device_survives_the_old_guard() {
        let board = DeviceBoard::default();
        let first = board.register("m1", "a");
        board.set("m1", DeviceLink::Online, None);
        board.set("ghost", DeviceLink::Online, None);
        assert_eq!(board.snapshot(), [("m1".to_owned(), DeviceLink::Online)]);
        // A reload moves m1 to bus b: the new registration replaces the entry, and dropping
        // the old guard afterwards leaves it in place.
        let second = board.register("m1", "b");
        drop(first);
        assert_eq!(board.snapshot(), [("m1".to_owned(), DeviceLink::Unknown)]);
        drop(second);
        assert!(board.snapshot().is_empty());
    }
}
