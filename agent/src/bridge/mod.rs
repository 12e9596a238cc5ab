//! The bridge: field devices ↔ their local twins.
//!
//! One task per bus ([`run_bus`]) on top of `device_protocols::bus`:
//!
//! - Poll results become reported properties at their paths (deadband applied), merged into
//!   the store in one transaction per unit per cycle, only when something changed
//!   ([`mapping::reported_patch`]). The link health of each device is merged the same way under
//!   `reported.gateway` ([`mapping::health_object`]), also while its port is down or its unit
//!   backed off (the bus then sends no poll events: health is read on a timer), so stale values
//!   never look fresh.
//! - Desired → device, per device: each new desired version of a writable property is
//!   validated and encoded, written once, read back, and acknowledged as
//!   `{"value", "ac", "av", "ad"}` (IoT Plug and Play: 200 written and read back equal; 400
//!   refused — unknown property, not writable, wrong type, out of range; 500 device error or
//!   read-back mismatch). A device offline when the value arrives gets it when it is back.
//!   **At most once:** before writing, the property's version is recorded as applied with a
//!   202 ("writing") acknowledgement, in one transaction; a crash between write and ack leaves
//!   that 202, which the next start resolves by reading the point back (200 if it holds the
//!   desired value, 500 otherwise) instead of writing the same version again.
//! - On start, reported keys that no point maps to any more (a point renamed or removed in the
//!   configuration) are deleted from the twin ([`mapping::stale_keys_patch`]): a renamed
//!   property path never leaves a stale value looking current.
//!
//! Line devices (an instrument printing one reading per line on its own port) have their own
//! task, [`line::run_line`]: reading fields → reported properties, link health under
//! `reported.gateway` with a silence window, desired → rendered command line → acknowledged
//! as sent (no read-back); see [`line`].

pub mod line;
pub mod mapping;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use device_protocols::bus::{Bus, BusConfig, BusConfigError, BusHandle, UnitConfig, WriteError};
use device_protocols::health::{PortState, UnitStatus};
use serde_json::{Map, Value as Json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::service::status_line::DeviceLink;
use crate::service::{HandleError, RuntimeHandle};
use crate::twin::{Ack, AckCode, diff, is_noop};

pub use line::{LineSpec, run_line};
pub use mapping::{DesiredAction, HEALTH_KEY, Placement, PointMap};

/// One device on a bus.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMap {
    /// Device id in the hub (one of the runtime's identities).
    pub device: String,
    /// Unit id on the bus.
    pub unit: u8,
    /// Poll period.
    pub poll: Duration,
    /// Its points.
    pub points: Vec<PointMap>,
}

/// One bus and its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct BusSpec {
    /// The bus settings.
    pub config: BusConfig,
    /// The devices on it.
    pub devices: Vec<DeviceMap>,
}

/// Why a bus bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The bus configuration was refused by the bus runtime.
    #[error("bus {bus}: {source}")]
    Bus {
        /// The bus.
        bus: String,
        /// Why.
        source: BusConfigError,
    },
    /// A line device's serial settings were refused.
    #[error("line device {device}: {source}")]
    Line {
        /// The device.
        device: String,
        /// Why.
        source: device_protocols::serial::SerialError,
    },
    /// The store failed (or a device is not an identity of the runtime).
    #[error(transparent)]
    Handle(#[from] HandleError),
}

/// How often health is re-read when no poll event comes (port down, unit backed off).
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long a write waits for its answer (the bus has its own per-request timeout; this
/// bounds the queueing behind polls).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the bridge of one bus until `stop`: polls → reported, health → reported,
/// desired → writes → acks.
pub async fn run_bus(
    spec: BusSpec,
    gateway: String,
    handle: RuntimeHandle,
    stop: CancellationToken,
) -> Result<(), BridgeError> {
    // Our own token: ending this bridge (its writers included) must not stop the runtime.
    let stop = stop.child_token();
    let bus_name = spec.config.name.clone();
    let units = spec
        .devices
        .iter()
        .map(|d| {
            UnitConfig::new(
                d.unit,
                d.poll,
                d.points.iter().map(|p| p.point.clone()).collect(),
            )
        })
        .collect();
    let (bus, mut polls) = Bus::spawn(spec.config, units).map_err(|source| BridgeError::Bus {
        bus: bus_name.clone(),
        source,
    })?;
    let devices: HashMap<u8, DeviceMap> = spec.devices.into_iter().map(|d| (d.unit, d)).collect();
    // On the watchdog's and STATUS='s boards while this bridge runs.
    let _progress = handle
        .progress()
        .register(format!("bus {bus_name}"), bus.heartbeat());
    let _on_board: Vec<_> = devices
        .values()
        .map(|d| handle.device_board().register(&d.device, &bus_name))
        .collect();

    let mut writers = tokio::task::JoinSet::new();
    for device in devices.values() {
        let local = local_of(&handle, &device.device).await?;
        let stale = mapping::stale_keys_patch(&device.points, &local);
        if !is_noop(&stale) {
            tracing::info!(device = device.device, patch = %stale, "removing reported keys no point maps to any more");
            handle.merge_local(&device.device, stale).await?;
        }
        writers.spawn(desired_loop(
            device.clone(),
            bus.clone(),
            handle.clone(),
            stop.clone(),
        ));
    }

    let mut health_tick = tokio::time::interval(HEALTH_EVERY);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            () = stop.cancelled() => break Ok(()),
            poll = polls.recv() => {
                let Some(poll) = poll else { break Ok(()) };
                let Some(device) = devices.get(&poll.unit) else { continue };
                let local = local_of(&handle, &device.device).await?;
                let mut patch = mapping::reported_patch(&device.points, &poll, &local);
                merge_health(&mut patch, device, &gateway, &bus_name, &bus, &local);
                if !is_noop(&patch) {
                    handle.merge_local(&device.device, patch).await?;
                }
                board_health(&handle, device, &bus);
            }
            _ = health_tick.tick() => {
                for device in devices.values() {
                    let local = local_of(&handle, &device.device).await?;
                    let mut patch = Json::Object(Map::new());
                    merge_health(&mut patch, device, &gateway, &bus_name, &bus, &local);
                    if !is_noop(&patch) {
                        handle.merge_local(&device.device, patch).await?;
                    }
                    board_health(&handle, device, &bus);
                }
            }
            Some(done) = writers.join_next() => {
                if let Ok(Err(e)) = done {
                    break Err(e);
                }
            }
        }
    };
    stop.cancel();
    while writers.join_next().await.is_some() {}
    bus.shutdown().await;
    result
}

/// Puts the device's state on the runtime's device board (which logs changes).
fn board_health(handle: &RuntimeHandle, device: &DeviceMap, bus: &BusHandle) {
    let health = bus.health();
    let unit = health.unit(device.unit);
    let link = match health.port {
        PortState::Open => unit.map_or(DeviceLink::Unknown, |u| {
            DeviceLink::from_status(u.status.as_str())
        }),
        PortState::Starting => DeviceLink::Unknown,
        PortState::Down { .. } | PortState::Stopped => DeviceLink::Offline,
    };
    let reason = match &health.port {
        PortState::Down { error, .. } => Some(error.as_str()),
        _ => unit.and_then(|u| u.last_error.as_deref()),
    };
    handle.device_board().set(&device.device, link, reason);
}

/// Adds the device's link-health object to `patch` when it differs from the stored one.
fn merge_health(
    patch: &mut Json,
    device: &DeviceMap,
    gateway: &str,
    bus_name: &str,
    bus: &BusHandle,
    local: &Json,
) {
    let health = bus.health();
    let placement = Placement {
        gateway: gateway.to_owned(),
        bus: bus_name.to_owned(),
        unit: device.unit,
    };
    let held = local.get(HEALTH_KEY);
    let object = mapping::health_object(&placement, health.unit(device.unit), &health.port, held);
    put_health(patch, held, object);
}

/// Puts the change from the stored link-health object (`held`) to `object` into `patch`: the
/// merge patch [`diff`] computes, so keys that no longer apply (`lastError`) are deleted.
fn put_health(patch: &mut Json, held: Option<&Json>, object: Json) {
    let change = match held {
        Some(held) => diff(held, &object),
        None => object,
    };
    if !is_noop(&change)
        && let Json::Object(map) = patch
    {
        map.insert(HEALTH_KEY.to_owned(), change);
    }
}

async fn local_of(handle: &RuntimeHandle, device: &str) -> Result<Json, HandleError> {
    Ok(handle
        .store()
        .sync_state(device)
        .await?
        .map_or_else(|| Json::Object(Map::new()), |s| s.local))
}

/// Applies desired updates of one device, in order, until `stop`.
async fn desired_loop(
    device: DeviceMap,
    bus: BusHandle,
    handle: RuntimeHandle,
    stop: CancellationToken,
) -> Result<(), BridgeError> {
    let mut desired = handle.desired(&device.device)?;
    resolve_interrupted(&device, &bus, &handle).await?;
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some(state) = current {
            apply_desired(
                &device,
                &bus,
                &handle,
                &state.document,
                state.version,
                &stop,
            )
            .await?;
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            changed = desired.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

/// What the store holds about each property: applied version and ack.
async fn applied(
    handle: &RuntimeHandle,
    device: &str,
) -> Result<HashMap<String, (i64, Json)>, HandleError> {
    Ok(handle
        .store()
        .snapshot(device)
        .await?
        .map(|s| {
            s.properties
                .into_iter()
                .map(|p| (p.name, (p.applied_version, p.ack)))
                .collect()
        })
        .unwrap_or_default())
}

/// Resolves 202 acks left by a crash between a write and its ack: read the point back and
/// acknowledge what it holds; never write that version again.
async fn resolve_interrupted(
    device: &DeviceMap,
    bus: &BusHandle,
    handle: &RuntimeHandle,
) -> Result<(), BridgeError> {
    for (property, (version, ack)) in applied(handle, &device.device).await? {
        let Ok(parsed) = Ack::parse(&ack) else {
            continue;
        };
        if parsed.code != AckCode::Other(202) {
            continue;
        }
        let Some(map) = device
            .points
            .iter()
            .find(|p| p.property == [property.clone()])
        else {
            continue;
        };
        let requested = device_protocols::point::Value::from_json(&parsed.value);
        let read =
            tokio::time::timeout(WRITE_TIMEOUT, bus.read(device.unit, &map.point.name)).await;
        let answer = match (read, requested) {
            (Ok(Ok(value)), Some(requested)) if map.point.same_value(&requested, &value) => {
                mapping::ack(value.to_json(), AckCode::Completed, version, None)
            }
            (Ok(Ok(value)), _) => mapping::ack(
                value.to_json(),
                AckCode::Failed,
                version,
                Some("interrupted before the read-back; the device holds another value".into()),
            ),
            _ => mapping::ack(
                parsed.value.clone(),
                AckCode::Failed,
                version,
                Some("interrupted before the read-back; not confirmed".into()),
            ),
        };
        handle
            .applied_ack(&device.device, &property, version, answer)
            .await?;
    }
    Ok(())
}

/// Carries out what desired `version` asks of the device.
async fn apply_desired(
    device: &DeviceMap,
    bus: &BusHandle,
    handle: &RuntimeHandle,
    document: &Json,
    version: i64,
    stop: &CancellationToken,
) -> Result<(), BridgeError> {
    let applied: BTreeMap<String, (i64, Json)> =
        applied(handle, &device.device).await?.into_iter().collect();
    for action in mapping::plan_desired(&device.points, document, version, &applied) {
        let answer = match action {
            DesiredAction::Unchanged {
                property,
                requested,
            } => {
                let ack = mapping::ack(requested, AckCode::Completed, version, None);
                (property, ack)
            }
            DesiredAction::Refuse {
                property,
                requested,
                reason,
            } => {
                tracing::info!(
                    device = device.device,
                    property,
                    reason,
                    "desired value refused"
                );
                let ack = mapping::ack(requested, AckCode::Invalid, version, Some(reason));
                (property, ack)
            }
            DesiredAction::Write {
                property,
                point,
                value,
                requested,
            } => {
                // Offline: wait until the device answers again (the value is kept).
                if !wait_online(bus, device.unit, stop).await {
                    return Ok(());
                }
                let writing = mapping::ack(
                    requested.clone(),
                    AckCode::Other(202),
                    version,
                    Some("writing".into()),
                );
                handle
                    .applied_ack(&device.device, &property, version, writing)
                    .await?;
                let result = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    bus.write(device.unit, &point, value.clone()),
                )
                .await;
                let map = device
                    .points
                    .iter()
                    .find(|p| p.point.name == point)
                    .expect("plan_desired only names points of this device");
                let ack = match result {
                    Ok(Ok(read)) if map.point.same_value(&value, &read) => {
                        mapping::ack(read.to_json(), AckCode::Completed, version, None)
                    }
                    Ok(Ok(read)) => mapping::ack(
                        read.to_json(),
                        AckCode::Failed,
                        version,
                        Some(format!("read back {read} after writing {value}")),
                    ),
                    Ok(Err(e @ (WriteError::Encode { .. } | WriteError::NotWritable(_)))) => {
                        mapping::ack(requested, AckCode::Invalid, version, Some(e.to_string()))
                    }
                    Ok(Err(e)) => {
                        mapping::ack(requested, AckCode::Failed, version, Some(e.to_string()))
                    }
                    Err(_) => mapping::ack(
                        requested,
                        AckCode::Failed,
                        version,
                        Some("no answer from the device".into()),
                    ),
                };
                tracing::info!(device = device.device, property, %ack, "desired value applied");
                (property, ack)
            }
        };
        let (property, ack) = answer;
        handle
            .applied_ack(&device.device, &property, version, ack)
            .await?;
    }
    Ok(())
}

/// Waits until `unit` is online on its bus; `false` when `stop` came first.
async fn wait_online(bus: &BusHandle, unit: u8, stop: &CancellationToken) -> bool {
    let mut health: watch::Receiver<_> = bus.watch_health();
    loop {
        {
            let h = health.borrow_and_update();
            // Answering at all (online, or faulted on reads) is enough to try a write.
            if matches!(h.port, PortState::Open)
                && h.unit(unit)
                    .is_some_and(|u| matches!(u.status, UnitStatus::Online | UnitStatus::Faulted))
            {
                return true;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            changed = health.changed() => if changed.is_err() { return false },
        }
    }
}
