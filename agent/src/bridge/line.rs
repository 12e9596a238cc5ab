//! The bridge of a line device (a serial instrument that prints one reading per line), one
//! task per device ([`run_line`]) on top of `device_protocols::line::LineDevice`:
//!
//! - Each reading becomes reported properties: its fields under the configured `property`
//!   prefix (top level without one), merged into the store only when something changed
//!   ([`mapping::reading_patch`]); readings that queued up while the store was busy are
//!   merged into one change. On start, values a changed prefix left behind are deleted
//!   ([`mapping::stale_keys_patch`]). A field the hub would refuse (a key with `.`, `$`, space or
//!   a control character, a value out of the hub's limits) or a top-level field named
//!   `gateway` is never sent: it is dropped with one warning per field name.
//! - The link health under `reported.gateway` ([`mapping::health_object`]): online while
//!   readings keep coming, offline with the reason when the port is down or the instrument
//!   has been silent for [`LineSpec::silence`]. It is re-evaluated on every reading and on a
//!   timer (a silent instrument sends nothing to react to); `lastGoodRead` is refreshed
//!   sparingly, so that health does not turn every line into a `PATCH`.
//! - Desired → command, for a device with a `command` template: each new desired version of
//!   a top-level property is rendered (`{name}`, `{value}`) and sent once, then acknowledged
//!   `{"value", "ac": 200, "av", "ad": "sent; …"}` — a line device has no read-back, so 200
//!   means the line was written to the port, not that the device took it. 400 when the
//!   device takes no commands or the value cannot be sent; 500 when writing failed. A value
//!   that arrives while the port is down is sent once it is open again. **At most once:**
//!   a 202 ("sending") acknowledgement is recorded before the line goes out; a crash between
//!   the two leaves the 202, which the next start turns into a 500 ("not confirmed") instead
//!   of sending the command again.

pub mod mapping;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use device_protocols::health::PortState;
use device_protocols::heartbeat::Heartbeat;
use device_protocols::line::{
    LineDevice, LineDeviceConfig, LineDeviceHandle, LineWriteError, Template,
};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mapping::ack;
use super::{BridgeError, HEALTH_KEY, applied, local_of, put_health};
use crate::service::RuntimeHandle;
use crate::service::status_line::DeviceLink;
use crate::twin::{Ack, AckCode, is_noop};

pub use mapping::{LineAction, LinkView, ReadingPatch, Refusal};

/// How long an instrument may stay silent (port open, no reading) before it shows offline,
/// unless the spec says otherwise.
pub const DEFAULT_SILENCE: Duration = Duration::from_mins(1);
/// How often health is re-evaluated when no reading comes.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long a command may wait for the device task to take and write it (the device has its
/// own, shorter, write timeout).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One line device and where its readings go.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSpec {
    /// Device id in the hub (one of the runtime's identities).
    pub device: String,
    /// The device's port and line format.
    pub config: LineDeviceConfig,
    /// The command that sets a desired value (`{name}`, `{value}`); `None`: read only.
    pub command: Option<Template>,
    /// Where the readings' fields go under `reported` (empty: top level).
    pub property: Vec<String>,
    /// No reading for this long with the port open shows the device offline.
    pub silence: Duration,
}

impl LineSpec {
    /// A spec with the [`DEFAULT_SILENCE`] window.
    pub fn new(
        device: impl Into<String>,
        config: LineDeviceConfig,
        command: Option<Template>,
        property: Vec<String>,
    ) -> Self {
        Self {
            device: device.into(),
            config,
            command,
            property,
            silence: DEFAULT_SILENCE,
        }
    }
}

/// What the bridge has seen of the device's link (monotonic times).
#[derive(Debug)]
struct Seen {
    started: Instant,
    reading: Option<Instant>,
    reading_wall: Option<SystemTime>,
    malformed_count: u64,
    malformed: Option<Instant>,
}

/// Runs the bridge of one line device until `stop`: readings → reported, health → reported,
/// desired → commands → acks.
pub async fn run_line(
    spec: LineSpec,
    gateway: String,
    handle: RuntimeHandle,
    stop: CancellationToken,
) -> Result<(), BridgeError> {
    // Our own token: ending this bridge (its writer included) must not stop the runtime.
    let stop = stop.child_token();
    // An unknown device fails before the port is opened.
    handle.desired(&spec.device)?;
    let (device, mut readings) =
        LineDevice::spawn(spec.config.clone()).map_err(|source| BridgeError::Line {
            device: spec.device.clone(),
            source,
        })?;
    let local = local_of(&handle, &spec.device).await?;
    let stale = mapping::stale_keys_patch(&spec.property, &local);
    if !is_noop(&stale) {
        tracing::info!(device = spec.device, patch = %stale, "removing reported keys outside the readings' property");
        handle.merge_local(&spec.device, stale).await?;
    }
    let port_path = spec.config.serial.path.display().to_string();
    // On the watchdog's and STATUS='s boards while this bridge runs; the loop below beats on
    // every round (its health tick makes one at least every second).
    let heartbeat = Heartbeat::new();
    let _progress = handle
        .progress()
        .register(format!("line device {}", spec.device), heartbeat.clone());
    let _on_board = handle.device_board().register(&spec.device, &port_path);
    let mut writer = tokio::spawn(desired_loop(
        spec.device.clone(),
        spec.command.clone(),
        device.clone(),
        handle.clone(),
        stop.clone(),
    ));
    let mut seen = Seen {
        started: Instant::now(),
        reading: None,
        reading_wall: None,
        malformed_count: 0,
        malformed: None,
    };
    let mut warned = HashSet::new();
    let mut health_tick = tokio::time::interval(HEALTH_EVERY);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer_done = false;
    // In a block, so that a store error (`?`) still stops the writer and the port below.
    let result: Result<(), BridgeError> = async {
        loop {
            heartbeat.beat();
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                reading = readings.recv() => {
                    let Some(reading) = reading else { return Ok(()) };
                    seen.reading = Some(Instant::now());
                    seen.reading_wall = Some(SystemTime::now());
                    // Readings that queued up meanwhile become one change (later fields win).
                    let mut fields = reading.fields;
                    while let Ok(next) = readings.try_recv() {
                        fields.extend(next.fields);
                    }
                    let local = local_of(&handle, &spec.device).await?;
                    let ReadingPatch { mut patch, refused } =
                        mapping::reading_patch(&spec.property, &fields, &local);
                    for Refusal { field, reason } in refused {
                        if warned.insert(field.clone()) {
                            tracing::warn!(device = spec.device, field, reason, "reading field dropped (warned once per field)");
                        }
                    }
                    let (link, reason) = put_line_health(&mut patch, &spec, &gateway, &port_path, &device, &mut seen, &local);
                    handle.device_board().set(&spec.device, link, reason.as_deref());
                    if !is_noop(&patch) {
                        handle.merge_local(&spec.device, patch).await?;
                    }
                }
                _ = health_tick.tick() => {
                    let local = local_of(&handle, &spec.device).await?;
                    let mut patch = Json::Object(Map::new());
                    let (link, reason) = put_line_health(&mut patch, &spec, &gateway, &port_path, &device, &mut seen, &local);
                    handle.device_board().set(&spec.device, link, reason.as_deref());
                    if !is_noop(&patch) {
                        handle.merge_local(&spec.device, patch).await?;
                    }
                }
                done = &mut writer, if !writer_done => {
                    writer_done = true;
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => {
                            tracing::error!(device = spec.device, error = %e, "desired task failed");
                        }
                    }
                }
            }
        }
    }
    .await;
    stop.cancel();
    if !writer_done {
        let _ = writer.await;
    }
    device.shutdown().await;
    result
}

/// Adds the device's link-health object to `patch` when it differs from the stored one.
/// Returns the state and last error it shows, for the device board.
fn put_line_health(
    patch: &mut Json,
    spec: &LineSpec,
    gateway: &str,
    port_path: &str,
    device: &LineDeviceHandle,
    seen: &mut Seen,
    local: &Json,
) -> (DeviceLink, Option<String>) {
    let health = device.health();
    let now = Instant::now();
    if health.counters.malformed > seen.malformed_count {
        seen.malformed_count = health.counters.malformed;
        seen.malformed = Some(now);
    }
    let view = LinkView {
        gateway,
        port_path,
        port: &health.port,
        since_reading: seen.reading.map(|at| now - at),
        since_start: now - seen.started,
        malformed_recently: seen.malformed.is_some_and(|at| now - at < spec.silence),
        last_reading: seen.reading_wall,
        silence: spec.silence,
    };
    let held = local.get(HEALTH_KEY);
    let object = mapping::health_object(&view, held);
    let shown = (
        DeviceLink::from_status(object["status"].as_str().unwrap_or_default()),
        object["lastError"].as_str().map(str::to_owned),
    );
    put_health(patch, held, object);
    shown
}

/// Sends the commands desired updates of one device call for, in order, until `stop`.
async fn desired_loop(
    device: String,
    command: Option<Template>,
    line: LineDeviceHandle,
    handle: RuntimeHandle,
    stop: CancellationToken,
) -> Result<(), BridgeError> {
    let mut desired = handle.desired(&device)?;
    resolve_interrupted(&device, &handle).await?;
    loop {
        let current = desired.borrow_and_update().clone();
        let to = Sender {
            device: &device,
            line: &line,
            handle: &handle,
            stop: &stop,
        };
        if let Some(state) = current
            && !apply_desired(&to, command.as_ref(), &state.document, state.version).await?
        {
            return Ok(());
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            changed = desired.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

/// Turns 202 acks left by a crash between recording and sending a command into 500: whether
/// the line went out is unknown, and a line device cannot be read back. Never sent again.
async fn resolve_interrupted(device: &str, handle: &RuntimeHandle) -> Result<(), BridgeError> {
    for (property, (version, held)) in applied(handle, device).await? {
        let Ok(parsed) = Ack::parse(&held) else {
            continue;
        };
        if parsed.code != AckCode::Other(202) {
            continue;
        }
        let answer = ack(
            parsed.value,
            AckCode::Failed,
            version,
            Some(
                "interrupted while sending; not confirmed (line devices have no read-back)".into(),
            ),
        );
        handle
            .applied_ack(device, &property, version, answer)
            .await?;
    }
    Ok(())
}

/// What the desired side of one device works with.
struct Sender<'a> {
    device: &'a str,
    line: &'a LineDeviceHandle,
    handle: &'a RuntimeHandle,
    stop: &'a CancellationToken,
}

/// Carries out what desired `version` asks of the device. `false` when `stop` came first.
async fn apply_desired(
    to: &Sender<'_>,
    command: Option<&Template>,
    document: &Json,
    version: i64,
) -> Result<bool, BridgeError> {
    let device = to.device;
    let applied: BTreeMap<String, (i64, Json)> =
        applied(to.handle, device).await?.into_iter().collect();
    for action in mapping::plan_desired(command, document, version, &applied) {
        let (property, answer) = match action {
            LineAction::Refuse {
                property,
                requested,
                reason,
            } => {
                tracing::info!(device, property, reason, "desired value refused");
                let answer = ack(requested, AckCode::Invalid, version, Some(reason));
                (property, answer)
            }
            LineAction::Unchanged {
                property,
                requested,
                sent_for,
            } => {
                let answer = ack(
                    requested,
                    AckCode::Completed,
                    version,
                    Some(format!(
                        "sent for version {sent_for}; unchanged, not sent again"
                    )),
                );
                (property, answer)
            }
            LineAction::Send {
                property,
                requested,
                line,
            } => {
                let Some(result) = send_once(to, &property, &requested, &line, version).await?
                else {
                    return Ok(false);
                };
                let answer = match result {
                    Ok(()) => ack(
                        requested,
                        AckCode::Completed,
                        version,
                        Some("sent (line devices have no read-back)".into()),
                    ),
                    Err(e) => ack(requested, AckCode::Failed, version, Some(e)),
                };
                tracing::info!(device, property, %answer, "desired value sent");
                (property, answer)
            }
        };
        to.handle
            .applied_ack(device, &property, version, answer)
            .await?;
    }
    Ok(true)
}

/// Records the 202 intent, then sends `text` once the port is open. A command refused with
/// the port down was not sent: it waits for the port again. `None` when `stop` came first.
async fn send_once(
    to: &Sender<'_>,
    property: &str,
    requested: &Json,
    text: &str,
    version: i64,
) -> Result<Option<Result<(), String>>, BridgeError> {
    let mut recorded = false;
    loop {
        if !wait_port_open(to.line, to.stop).await {
            return Ok(None);
        }
        if !recorded {
            let sending = ack(
                requested.clone(),
                AckCode::Other(202),
                version,
                Some("sending".into()),
            );
            to.handle
                .applied_ack(to.device, property, version, sending)
                .await?;
            recorded = true;
        }
        let result = tokio::select! {
            () = to.stop.cancelled() => return Ok(None),
            r = tokio::time::timeout(WRITE_TIMEOUT, to.line.write_line(text)) => r,
        };
        match result {
            // Nothing went out: wait for the port and try again.
            Ok(Err(LineWriteError::PortDown { .. })) => {}
            Ok(Ok(())) => return Ok(Some(Ok(()))),
            Ok(Err(e)) => return Ok(Some(Err(e.to_string()))),
            Err(_) => {
                return Ok(Some(Err(
                    "the line device did not take the command in time".to_owned(),
                )));
            }
        }
    }
}

/// Waits until the device's port is open; `false` when `stop` came first.
async fn wait_port_open(line: &LineDeviceHandle, stop: &CancellationToken) -> bool {
    let mut health = line.watch_health();
    loop {
        if matches!(health.borrow_and_update().port, PortState::Open) {
            return true;
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            changed = health.changed() => if changed.is_err() { return false },
        }
    }
}
