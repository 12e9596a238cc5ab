//! `twinbridge status [--json]`: one line per device identity — twin sync state, field link
//! health, desired version and pending acks — read from the store **read-only** (safe while
//! the agent runs: WAL lets this reader see a consistent snapshot without blocking the
//! writer, and the writer lock is never taken).
//!
//! Everything shown is what the store holds. The hub link's connected state is not stored:
//! the gateway twin shows it; "hub" here is the last `$version` the hub acknowledged.
//!
//! Building the report ([`build`]) and rendering it ([`render_table`], [`render_json`]) are
//! pure functions; [`run`] does the IO.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::EX_CONFIG;
use crate::config::Config;
use crate::store::sync_state::reconcile;
use crate::store::{DeviceSnapshot, ReadOnlyStore, StoreError, SyncState};

// 69: the store does not exist (the agent has not run yet); 77: this user may not read it.
pub use super::{EX_NOPERM, EX_UNAVAILABLE};

/// The whole status report (`--json` prints it as is; field names are stable).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The store file read.
    pub store: String,
    /// Where the hub link state is (not in the store).
    pub hub_link: &'static str,
    /// Why the agent cannot commit new values right now, when the state directory is full or
    /// read-only (absent when writable with room). The agent keeps polling and retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir_problem: Option<String>,
    /// Every identity of the configuration (the gateway first), then devices only in the store.
    pub devices: Vec<DeviceStatus>,
}

/// Where a listed identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The gateway's own identity.
    Gateway,
    /// A device of the configuration.
    Device,
    /// In the store but no longer in the configuration (`twinbridge forget` drops it).
    Removed,
}

/// The status of one identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Identity (device id in the hub).
    pub id: String,
    /// Gateway, configured device, or removed from the configuration.
    pub role: Role,
    /// Whether the store has any state for it yet.
    pub in_store: bool,
    /// Reported-side sync state; `None` when not in the store.
    pub sync: Option<SyncStatus>,
    /// Field link health from the local reported `gateway` object, when the bridge wrote one.
    pub link: Option<LinkHealth>,
    /// Desired `$version` last received from the hub.
    pub desired_version: Option<i64>,
    /// Whether a bridge serves it (a field or line device) and so applies its desired
    /// properties (false for the gateway, an identity-only device and a removed device:
    /// nothing acks them).
    pub applies_desired: bool,
    /// Desired properties not yet acknowledged at the desired version, sorted (always empty
    /// when `appliesDesired` is false).
    pub acks_pending: Vec<String>,
}

/// Reported-side sync state of one identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The hub is known to hold exactly the local reported document, nothing pending.
    pub in_sync: bool,
    /// Top-level reported properties that still differ from what the hub may hold, sorted.
    pub unsynced: Vec<String>,
    /// A patch is sent and not yet answered.
    pub in_flight: bool,
    /// Documents the hub might hold besides the known one (unanswered patches).
    pub unknown_outcomes: usize,
    /// Sending waits for a GET of the twin.
    pub resync_needed: bool,
    /// Reported `$version` the hub last acknowledged (or returned in a GET).
    pub hub_version: Option<i64>,
    /// Keys the hub rejected and that are held back, sorted.
    pub quarantined: Vec<String>,
    /// Rejections counted over the device's life.
    pub rejections: u64,
    /// The latest rejection.
    pub last_rejection: Option<RejectionStatus>,
    /// Every-change journal entries queued (0 in the default mode).
    pub journal_entries: u64,
    /// When the oldest of them was queued (RFC 3339): how long the hub has been behind.
    /// The default (latest-value) mode keeps no such time.
    pub queued_since: Option<String>,
    /// Every-change journal entries dropped for exceeding the bounds.
    pub journal_dropped: u64,
}

/// The latest rejection of a reported patch (the patch itself is in `twin show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionStatus {
    /// Hub status code.
    pub status: u16,
    /// Why, as far as known.
    pub reason: String,
}

/// The bridge's link-health object (`reported.gateway`), as stored; absent members are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkHealth {
    /// Answers with data.
    pub online: Option<bool>,
    /// `online`, `faulted`, `offline` or `unknown`.
    pub status: Option<String>,
    /// Time of the last good read (RFC 3339).
    pub last_good_read: Option<String>,
    /// The last error while not online.
    pub last_error: Option<String>,
    /// Failed polls in a row.
    pub consecutive_errors: Option<u64>,
}

/// Top-level keys of the patch that would turn every document the hub might hold into
/// `local` (quarantined keys included: they are unsynced too).
pub fn unsynced_keys(sync: &SyncState) -> Vec<String> {
    let mut bases = vec![&sync.hub_reported];
    bases.extend(sync.alternatives.iter());
    let mut keys: Vec<String> = match reconcile(&bases, &sync.local) {
        Value::Object(map) => map.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    };
    keys.sort();
    keys
}

/// Desired top-level properties whose applied version is below the desired version.
pub fn acks_pending(snapshot: &DeviceSnapshot) -> Vec<String> {
    let Some(version) = snapshot.desired_version else {
        return Vec::new();
    };
    let Value::Object(desired) = &snapshot.desired else {
        return Vec::new();
    };
    let mut pending: Vec<String> = desired
        .keys()
        .filter(|key| !key.starts_with('$'))
        .filter(|key| {
            !snapshot
                .properties
                .iter()
                .any(|p| &p.name == *key && p.applied_version >= version)
        })
        .cloned()
        .collect();
    pending.sort();
    pending
}

/// The link-health object of a local reported document, if the bridge wrote one.
pub fn link_health(local: &Value) -> Option<LinkHealth> {
    let health = local.get("gateway")?.as_object()?;
    let text = |key: &str| health.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(LinkHealth {
        online: health.get("online").and_then(Value::as_bool),
        status: text("status"),
        last_good_read: text("lastGoodRead"),
        last_error: text("lastError"),
        consecutive_errors: health.get("consecutiveErrors").and_then(Value::as_u64),
    })
}

/// The status of one identity from its snapshot (`None`: not in the store yet);
/// `applies_desired`: a bridge writes its desired properties to a device and acks them.
pub fn device_status(
    id: &str,
    role: Role,
    applies_desired: bool,
    snapshot: Option<&DeviceSnapshot>,
) -> DeviceStatus {
    let Some(snapshot) = snapshot else {
        return DeviceStatus {
            id: id.to_owned(),
            role,
            in_store: false,
            sync: None,
            link: None,
            desired_version: None,
            applies_desired,
            acks_pending: Vec::new(),
        };
    };
    let sync = &snapshot.sync;
    DeviceStatus {
        id: id.to_owned(),
        role,
        in_store: true,
        sync: Some(SyncStatus {
            in_sync: sync.converged(),
            unsynced: unsynced_keys(sync),
            in_flight: sync.in_flight.is_some(),
            unknown_outcomes: sync.alternatives.len(),
            resync_needed: sync.resync_needed,
            hub_version: sync.hub_version,
            quarantined: sync.quarantined.keys().cloned().collect(),
            rejections: sync.rejections,
            last_rejection: sync.last_rejection.as_ref().map(|r| RejectionStatus {
                status: r.status,
                reason: r.reason.clone(),
            }),
            journal_entries: snapshot.journal_stats.entries,
            queued_since: None,
            journal_dropped: snapshot.journal_stats.dropped,
        }),
        link: link_health(&sync.local),
        desired_version: snapshot.desired_version,
        applies_desired,
        acks_pending: if applies_desired {
            acks_pending(snapshot)
        } else {
            Vec::new()
        },
    }
}

/// Builds the report: every identity of `config` (gateway first, in configuration order),
/// then the identities only in the store (`stored`, sorted) as [`Role::Removed`].
/// `snapshot` looks an identity up in the store, `oldest_queued` the time of its oldest
/// queued every-change journal entry.
pub fn build(
    config: &Config,
    store: &Path,
    stored: &[String],
    mut snapshot: impl FnMut(&str) -> Result<Option<DeviceSnapshot>, StoreError>,
    mut oldest_queued: impl FnMut(&str) -> Result<Option<SystemTime>, StoreError>,
) -> Result<Report, StoreError> {
    let mut devices = Vec::new();
    let gateway = &config.gateway.id;
    devices.push(device_status(
        gateway,
        Role::Gateway,
        false,
        snapshot(gateway)?.as_ref(),
    ));
    for device in &config.devices {
        let bridged = device.field.is_some() || device.line.is_some();
        let status = device_status(
            &device.id,
            Role::Device,
            bridged,
            snapshot(&device.id)?.as_ref(),
        );
        devices.push(status);
    }
    let configured: Vec<&str> = config.identity_ids().collect();
    for id in stored
        .iter()
        .filter(|id| !configured.contains(&id.as_str()))
    {
        devices.push(device_status(
            id,
            Role::Removed,
            false,
            snapshot(id)?.as_ref(),
        ));
    }
    for device in &mut devices {
        if let Some(sync) = device.sync.as_mut().filter(|s| s.journal_entries > 0) {
            sync.queued_since = oldest_queued(&device.id)?
                .map(|at| humantime::format_rfc3339_seconds(at).to_string());
        }
    }
    Ok(Report {
        store: store.display().to_string(),
        hub_link: "not in the store: see the gateway twin and journalctl -u twinbridge",
        state_dir_problem: None,
        devices,
    })
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The LINK cell: field link health in a few words.
fn link_cell(device: &DeviceStatus) -> String {
    match &device.link {
        // The gateway and identity-only devices have no field link.
        None if !device.applies_desired => "-".to_owned(),
        None => "no reading yet".to_owned(),
        Some(link) => {
            let status = link.status.clone().unwrap_or_else(|| {
                match link.online {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "unknown",
                }
                .to_owned()
            });
            match link.consecutive_errors {
                Some(n) if n > 0 => format!(
                    "{status} ({})",
                    plural(usize::try_from(n).unwrap_or(usize::MAX), "error")
                ),
                _ => status,
            }
        }
    }
}

/// The SYNC cell: in sync, or how many properties are unsynced and why they wait.
fn sync_cell(sync: &SyncStatus) -> String {
    if sync.in_sync {
        return "in sync".to_owned();
    }
    let mut text = if sync.unsynced.is_empty() {
        "settling".to_owned()
    } else {
        format!("{} unsynced", sync.unsynced.len())
    };
    let mut notes = Vec::new();
    if sync.in_flight {
        notes.push("sending".to_owned());
    }
    if sync.unknown_outcomes > 0 {
        notes.push("outcome unknown".to_owned());
    }
    if sync.resync_needed {
        notes.push("waiting for a GET".to_owned());
    }
    if !sync.quarantined.is_empty() {
        notes.push(format!("{} quarantined", sync.quarantined.len()));
    }
    if sync.journal_entries > 0 {
        notes.push(match &sync.queued_since {
            Some(at) => format!("{} queued since {at}", sync.journal_entries),
            None => format!("{} queued", sync.journal_entries),
        });
    }
    if !notes.is_empty() {
        text = format!("{text} ({})", notes.join(", "));
    }
    text
}

/// The cells of one table row (DEVICE, LINK, SYNC, HUB, DESIRED, ACKS).
fn row(device: &DeviceStatus) -> [String; 6] {
    let id = device.id.clone();
    if device.role == Role::Removed {
        return [
            id.clone(),
            format!("removed (twinbridge forget {id})"),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ];
    }
    let Some(sync) = &device.sync else {
        return [
            id,
            "-".to_owned(),
            "no state yet".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ];
    };
    let version = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
    let acks = if !device.applies_desired {
        "n/a".to_owned()
    } else if device.acks_pending.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{} pending ({})",
            device.acks_pending.len(),
            device.acks_pending.join(", ")
        )
    };
    [
        id,
        link_cell(device),
        sync_cell(sync),
        version(sync.hub_version),
        version(device.desired_version),
        acks,
    ]
}

/// The error line under a row, if there is anything wrong to explain.
fn error_line(device: &DeviceStatus) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(link) = device.link.as_ref().filter(|l| l.online != Some(true)) {
        if let Some(error) = &link.last_error {
            parts.push(format!("link: {error}"));
        }
        if let Some(at) = &link.last_good_read {
            parts.push(format!("last good read {at}"));
        }
    }
    if let Some(sync) = &device.sync {
        if !sync.quarantined.is_empty() {
            parts.push(format!("held back: {}", sync.quarantined.join(", ")));
        }
        if let Some(rejection) = sync.last_rejection.as_ref().filter(|_| !sync.in_sync) {
            parts.push(format!(
                "hub rejected a patch: {} {}",
                rejection.status, rejection.reason
            ));
        }
        if sync.journal_dropped > 0 {
            parts.push(format!(
                "{} dropped from the history",
                plural(
                    usize::try_from(sync.journal_dropped).unwrap_or(usize::MAX),
                    "change"
                )
            ));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The table for humans: aligned columns, one line per identity, a second (indented) line
/// only for errors.
pub fn render_table(report: &Report) -> String {
    const HEADER: [&str; 6] = ["DEVICE", "LINK", "SYNC", "HUB", "DESIRED", "ACKS"];
    let rows: Vec<[String; 6]> = report.devices.iter().map(row).collect();
    let mut widths = HEADER.map(str::len);
    for (r, device) in rows.iter().zip(&report.devices) {
        // A removed device's long LINK cell runs on; it must not widen the column.
        let cells = if device.role == Role::Removed { 1 } else { 6 };
        for (width, cell) in widths.iter_mut().zip(r).take(cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < cells.len() {
                let pad = width.saturating_sub(cell.chars().count());
                text.push_str(&" ".repeat(pad));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = format!("store: {}\nhub link: {}\n", report.store, report.hub_link);
    if let Some(problem) = &report.state_dir_problem {
        out.push_str("WARNING: ");
        out.push_str(problem);
        out.push('\n');
    }
    out.push_str(&line(&HEADER.map(str::to_owned)));
    out.push('\n');
    for (r, device) in rows.iter().zip(&report.devices) {
        out.push_str(&line(r));
        out.push('\n');
        if let Some(error) = error_line(device) {
            out.push_str("    ");
            out.push_str(&error);
            out.push('\n');
        }
    }
    out
}

/// The report as pretty JSON (stable camelCase field names), newline-terminated.
pub fn render_json(report: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    text.push('\n');
    text
}

/// Loads the configuration and opens its store read-only, or prints why not and returns the
/// exit code: [`EX_CONFIG`] for an invalid configuration, [`EX_UNAVAILABLE`] for a missing
/// store, [`EX_NOPERM`] for a store this user may not read, 1 for any other store error.
pub(crate) fn open(config_path: &Path, err: &mut dyn Write) -> Result<(Config, ReadOnlyStore), u8> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            super::print_config_errors(err, &errors, config_path, "");
            return Err(EX_CONFIG);
        }
    };
    let path = config.store_path();
    match ReadOnlyStore::open(&path) {
        Ok(store) => Ok((config, store)),
        // A state directory this user may not enter looks like a missing file to the store.
        Err(StoreError::MissingFile { .. })
            if std::fs::metadata(&path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied) =>
        {
            let _ = writeln!(
                err,
                "cannot read {}: permission denied (run it as root or as the service user: \
                 sudo twinbridge status)",
                path.display()
            );
            Err(EX_NOPERM)
        }
        Err(StoreError::MissingFile { .. }) => {
            let _ = writeln!(
                err,
                "no state yet at {}: has the service run? (systemctl status twinbridge)",
                path.display()
            );
            Err(EX_UNAVAILABLE)
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            Err(1)
        }
    }
}

/// Below this much free space the state directory counts as full: SQLite needs room for WAL
/// frames and the agent's commits fail.
const FULL_BELOW: u64 = 256 * 1024;

/// What keeps the agent from committing in `dir`: "state directory full" or "read-only".
fn state_dir_problem(dir: &Path) -> Option<String> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    if crate::store::read_only_dir(dir) {
        return Some(format!(
            "state directory {} is read-only: new values are not committed (the agent keeps \
             polling and retries)",
            dir.display()
        ));
    }
    // fsblkcnt_t and c_ulong are 32-bit on some targets (armhf).
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
    (free < FULL_BELOW).then(|| {
        format!(
            "state directory full: {} has {} KiB free; new values are not committed (the agent \
             keeps polling and retries)",
            dir.display(),
            free / 1024
        )
    })
}

/// Runs `status`; returns the exit code: 0 shown, [`EX_CONFIG`] invalid configuration,
/// [`EX_UNAVAILABLE`] no store yet, [`EX_NOPERM`] not readable by this user, 1 the store could
/// not be read.
pub fn run(config_path: &Path, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (config, store) = match open(config_path, err) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let report = store.devices().and_then(|stored| {
        build(
            &config,
            store.path(),
            &stored,
            |id| store.snapshot(id),
            |id| store.oldest_queued(id),
        )
    });
    match report {
        Ok(mut report) => {
            report.state_dir_problem = store.path().parent().and_then(state_dir_problem);
            let text = if json {
                render_json(&report)
            } else {
                render_table(&report)
            };
            let _ = out.write_all(text.as_bytes());
            0
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{JournalStats, PropertyState, Rejection};

    fn snapshot(device: &str, sync: SyncState) -> DeviceSnapshot {
        DeviceSnapshot {
            device: device.to_owned(),
            history: None,
            sync,
            desired: json!({}),
            desired_version: None,
            properties: Vec::new(),
            journal_stats: JournalStats::default(),
            journal: Vec::new(),
        }
    }

    fn synced(local: Value, version: i64) -> SyncState {
        let mut sync = SyncState::new();
        sync.local = local.clone();
        sync.hub_reported = local;
        sync.hub_version = Some(version);
        sync
    }

    fn report() -> Report {
        let gateway = snapshot("gw-1", synced(json!({"agent": "1.0"}), 2));
        let mut meter = snapshot(
            "meter-01",
            synced(
                json!({"power": 1, "gateway": {"online": false, "status": "offline",
                    "consecutiveErrors": 3, "lastError": "timeout",
                    "lastGoodRead": "2026-12-03T10:00:00Z"}}),
                9,
            ),
        );
        meter.sync.local["power"] = json!(2);
        meter
            .sync
            .quarantined
            .insert("bad key".to_owned(), json!(1));
        meter.sync.local["bad key"] = json!(1);
        meter.sync.last_rejection = Some(Rejection {
            status: 400,
            reason: "invalid key".to_owned(),
            patch: json!({"bad key": 1}),
        });
        meter.desired = json!({"setpoint": 5, "mode": "eco"});
        meter.desired_version = Some(4);
        meter.properties = vec![
            PropertyState {
                name: "setpoint".to_owned(),
                applied_version: 4,
                ack: json!({"value": 5, "ac": 200, "av": 4}),
            },
            PropertyState {
                name: "mode".to_owned(),
                applied_version: 3,
                ack: json!({"value": "off", "ac": 200, "av": 3}),
            },
        ];
        let old = snapshot("old-7", synced(json!({}), 1));
        Report {
            store: "/var/lib/twinbridge/twinbridge.db".to_owned(),
            hub_link: "see the gateway twin",
            state_dir_problem: None,
            devices: vec![
                device_status("gw-1", Role::Gateway, false, Some(&gateway)),
                device_status("meter-01", Role::Device, true, Some(&meter)),
                device_status("boiler-03", Role::Device, true, None),
                device_status("old-7", Role::Removed, false, Some(&old)),
            ],
        }
    }

    #[test]
    fn the_table_aligns_columns_and_explains_errors_on_a_second_line() {
        assert_eq!(
            render_table(&report()),
            "store: /var/lib/twinbridge/twinbridge.db\n\
             hub link: see the gateway twin\n\
             DEVICE     LINK                SYNC                        HUB  DESIRED  ACKS\n\
             gw-1       -                   in sync                     v2   -        n/a\n\
             meter-01   offline (3 errors)  2 unsynced (1 quarantined)  v9   v4       1 pending (mode)\n\
             \x20   link: timeout; last good read 2026-12-03T10:00:00Z; held back: bad key; hub rejected a patch: 400 invalid key\n\
             boiler-03  -                   no state yet                -    -        -\n\
             old-7      removed (twinbridge forget old-7)\n"
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let json: Value = serde_json::from_str(&render_json(&report())).expect("JSON");
        let meter = &json["devices"][1];
        assert_eq!(meter["role"], "device");
        assert_eq!(meter["inStore"], true);
        assert_eq!(meter["sync"]["inSync"], false);
        assert_eq!(meter["sync"]["unsynced"], json!(["bad key", "power"]));
        assert_eq!(meter["sync"]["quarantined"], json!(["bad key"]));
        assert_eq!(meter["sync"]["lastRejection"]["status"], 400);
        assert_eq!(meter["link"]["consecutiveErrors"], 3);
        assert_eq!(meter["acksPending"], json!(["mode"]));
        assert_eq!(json["devices"][2]["inStore"], false);
        assert_eq!(json["devices"][3]["role"], "removed");
        assert_eq!(json["hubLink"], "see the gateway twin");
    }

    #[test]
    fn unknown_outcomes_count_every_document_the_hub_might_hold() {
        let mut sync = synced(json!({"a": 1}), 3);
        sync.alternatives.push(json!({"a": 2}));
        assert_eq!(unsynced_keys(&sync), ["a"]);
        let status = device_status("d", Role::Device, true, Some(&snapshot("d", sync)));
        let sync = status.sync.expect("in store");
        assert!(!sync.in_sync);
        assert_eq!(sync.unknown_outcomes, 1);
        assert_eq!(sync_cell(&sync), "1 unsynced (outcome unknown)");
    }

    #[test]
    fn nothing_is_pending_without_a_desired_version() {
        let mut snap = snapshot("d", SyncState::new());
        snap.desired = json!({"x": 1});
        assert!(acks_pending(&snap).is_empty());
        snap.desired_version = Some(1);
        assert_eq!(acks_pending(&snap), ["x"]);
    }
}
