//! The running agent: the store, one hub session and one sync driver per identity, and the
//! gateway twin's summary, wired together on tokio.
//!
//! [`Runtime::start`] takes a [`RuntimeSpec`] (built from the configuration by the `run`
//! command, or by tests directly) and returns once everything is spawned. The
//! [`RuntimeHandle`] is the bridge's interface: [`RuntimeHandle::merge_local`] puts new
//! reported values into the store and wakes the identity's driver;
//! [`RuntimeHandle::desired`] watches the stored desired document of a device.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::status_line::DeviceBoard;
use super::watchdog::ProgressBoard;
use crate::bridge::{BridgeError, BusSpec, LineSpec, run_bus, run_line};
use crate::hub::{Credential, HubLink, LinkError, LinkSettings, Pacing, SessionHandle};
use crate::store::{HistoryLimits, Store, StoreError, StoreOptions};
use crate::sync::{DesiredState, Driver, IdentityStatus, gateway_summary};
use crate::twin::{diff, is_noop};

/// One identity to run.
#[derive(Debug, Clone)]
pub struct IdentitySpec {
    /// Device id in the hub.
    pub id: String,
    /// How it authenticates.
    pub credential: Credential,
    /// Every-change journal bounds (`history = "every-change"`), if on.
    pub history: Option<HistoryLimits>,
}

/// Everything the runtime needs.
#[derive(Debug, Clone)]
pub struct RuntimeSpec {
    /// The SQLite file.
    pub store_path: PathBuf,
    /// Store options (durability level).
    pub store_options: StoreOptions,
    /// Settings shared by every hub session.
    pub link: LinkSettings,
    /// Gateway-wide pacing.
    pub pacing: Pacing,
    /// The gateway's own identity (its twin carries the summary).
    pub gateway: IdentitySpec,
    /// The field devices' identities.
    pub devices: Vec<IdentitySpec>,
    /// The buses and the devices on them (each device one of `devices`).
    pub buses: Vec<BusSpec>,
    /// The line devices (each one of `devices`), each on its own serial port.
    pub lines: Vec<LineSpec>,
    /// Backoff of a driver after 429, 5xx and unanswered requests.
    pub retry: BackoffConfig,
    /// At most how often the gateway twin's summary is recomputed (it is recomputed when an
    /// identity's status changed, and sent only when the summary changed).
    pub summary_every: Duration,
    /// The version reported in the gateway twin.
    pub agent_version: String,
}

/// Why the runtime could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The store failed to open, or failed while running.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub link could not be set up (CA file, TLS).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Two identities share an id.
    #[error("identity {0:?} is configured twice")]
    DuplicateIdentity(String),
    /// A bus or line-device bridge failed (configuration refused, or its store access failed).
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// A task of the runtime panicked.
    #[error("a runtime task failed: {0}")]
    Task(String),
}

/// Why a [`RuntimeHandle`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The device is not one of the runtime's identities.
    #[error("device {0:?} is not configured")]
    UnknownDevice(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Identity {
    local_changed: Arc<Notify>,
    desired: watch::Receiver<Option<DesiredState>>,
    status: watch::Receiver<IdentityStatus>,
}

/// The bridge's (and tests') interface to the running agent; cheap to clone.
#[derive(Clone)]
pub struct RuntimeHandle {
    store: Store,
    gateway_id: Arc<str>,
    /// In configuration order, gateway first.
    order: Arc<[String]>,
    identities: Arc<HashMap<String, Identity>>,
    /// Operations (systemd watchdog and status): loops to check, field devices' states.
    progress: ProgressBoard,
    device_board: DeviceBoard,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("store", &self.store.path())
            .field("identities", &self.order)
            .finish_non_exhaustive()
    }
}

impl RuntimeHandle {
    /// Merges `patch` into the local reported document of `device` (one transaction) and
    /// wakes its driver. Returns the effective change (an empty object when none).
    pub async fn merge_local(&self, device: &str, patch: Value) -> Result<Value, HandleError> {
        let identity = self.identity(device)?;
        let change = self.store.merge_local(device, patch).await?;
        if !is_noop(&change) {
            identity.local_changed.notify_one();
        }
        Ok(change)
    }

    /// Records that desired `version` of `property` was applied to `device` (or refused) and
    /// merges its acknowledgement into the local reported document, in one transaction; wakes
    /// the device's driver. Returns the effective change.
    pub async fn applied_ack(
        &self,
        device: &str,
        property: &str,
        version: i64,
        ack: Value,
    ) -> Result<Value, HandleError> {
        let identity = self.identity(device)?;
        let change = self
            .store
            .applied_ack(device, property, version, ack)
            .await?;
        if !is_noop(&change) {
            identity.local_changed.notify_one();
        }
        Ok(change)
    }

    /// The stored desired document of `device`, as a watch: it changes when a desired
    /// update has been stored.
    pub fn desired(
        &self,
        device: &str,
    ) -> Result<watch::Receiver<Option<DesiredState>>, HandleError> {
        Ok(self.identity(device)?.desired.clone())
    }

    /// Every identity's status, gateway first.
    pub fn statuses(&self) -> Vec<(String, IdentityStatus)> {
        self.order
            .iter()
            .map(|id| (id.clone(), self.identities[id].status.borrow().clone()))
            .collect()
    }

    /// The gateway's own identity.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// The store (read access for status and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The loops the systemd watchdog checks (bus tasks and line-device bridges register).
    pub fn progress(&self) -> &ProgressBoard {
        &self.progress
    }

    /// Every running field device's link state (the bridges set it), for `STATUS=` and the
    /// state-change log lines.
    pub fn device_board(&self) -> &DeviceBoard {
        &self.device_board
    }

    fn identity(&self, device: &str) -> Result<&Identity, HandleError> {
        self.identities
            .get(device)
            .ok_or_else(|| HandleError::UnknownDevice(device.to_owned()))
    }
}

/// The running agent.
#[derive(Debug)]
pub struct Runtime {
    handle: RuntimeHandle,
    sessions: Vec<SessionHandle>,
    tasks: JoinSet<Result<(), RuntimeError>>,
    stop: CancellationToken,
}

impl Runtime {
    /// Opens the store, registers the identities in it and starts every session, driver and
    /// the summary task.
    pub async fn start(spec: RuntimeSpec) -> Result<Self, RuntimeError> {
        let mut all = vec![spec.gateway.clone()];
        all.extend(spec.devices.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        for identity in &all {
            if !seen.insert(identity.id.as_str()) {
                return Err(RuntimeError::DuplicateIdentity(identity.id.clone()));
            }
        }

        // Link and credentials first: a bad CA file or key stops start-up before the store opens.
        let link = HubLink::new(spec.link.clone(), spec.pacing.clone())?;
        for identity in &all {
            link.check_credential(&identity.id, &identity.credential)?;
        }
        let store = {
            let path = spec.store_path.clone();
            let options = spec.store_options.clone();
            tokio::task::spawn_blocking(move || Store::open(path, options))
                .await
                .map_err(|e| RuntimeError::Task(e.to_string()))??
        };
        for identity in &all {
            store
                .configure_device(&identity.id, identity.history)
                .await?;
        }

        let stop = CancellationToken::new();
        let status_changed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let mut sessions = Vec::with_capacity(all.len());
        let mut identities = HashMap::with_capacity(all.len());
        for identity in &all {
            let session = link.spawn(&identity.id, identity.credential.clone());
            let local_changed = Arc::new(Notify::new());
            let (status_tx, status_rx) = watch::channel(IdentityStatus::default());
            let (desired_tx, desired_rx) = watch::channel(None);
            sessions.push(session.handle.clone());
            let driver = Driver {
                device: identity.id.clone(),
                store: store.clone(),
                session: session.handle,
                events: session.events,
                pacing: spec.pacing.clone(),
                local_changed: local_changed.clone(),
                status: status_tx,
                status_changed: status_changed.clone(),
                desired: desired_tx,
                retry: spec.retry,
            };
            let run = driver.run(stop.clone());
            tasks.spawn(async move { run.await.map_err(RuntimeError::Store) });
            identities.insert(
                identity.id.clone(),
                Identity {
                    local_changed,
                    desired: desired_rx,
                    status: status_rx,
                },
            );
        }
        let handle = RuntimeHandle {
            store,
            gateway_id: Arc::from(spec.gateway.id.as_str()),
            order: all.iter().map(|i| i.id.clone()).collect(),
            identities: Arc::new(identities),
            progress: ProgressBoard::default(),
            device_board: DeviceBoard::default(),
        };
        // The first summary goes out at start, whether or not a status changes.
        status_changed.notify_one();
        let summary = summarize(
            handle.clone(),
            spec.agent_version.clone(),
            spec.summary_every,
            status_changed,
            stop.clone(),
        );
        tasks.spawn(async move { summary.await.map_err(RuntimeError::Store) });
        for bus in spec.buses.iter().cloned() {
            let bridge = run_bus(bus, spec.gateway.id.clone(), handle.clone(), stop.clone());
            tasks.spawn(async move { bridge.await.map_err(RuntimeError::Bridge) });
        }
        for line in spec.lines.iter().cloned() {
            let bridge = run_line(line, spec.gateway.id.clone(), handle.clone(), stop.clone());
            tasks.spawn(async move { bridge.await.map_err(RuntimeError::Bridge) });
        }
        tracing::info!(
            gateway = spec.gateway.id,
            devices = spec.devices.len(),
            host = spec.link.host,
            "runtime started"
        );
        Ok(Self {
            handle,
            sessions,
            tasks,
            stop,
        })
    }

    /// The handle for the bridge and tests.
    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Waits until a task fails (a store error: the agent cannot keep its promises without
    /// the store). Pending forever while all is well; cancel-safe.
    pub async fn failed(&mut self) -> RuntimeError {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return e,
                Some(Err(e)) => return RuntimeError::Task(e.to_string()),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops cleanly: drivers first (a request still pending keeps its unknown outcome in the
    /// store), then every session with an MQTT DISCONNECT, then the store.
    pub async fn shutdown(mut self) -> Result<(), RuntimeError> {
        self.stop.cancel();
        let mut first_error = None;
        while let Some(result) = self.tasks.join_next().await {
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(RuntimeError::Task(e.to_string())),
            };
            if first_error.is_none() {
                first_error = error;
            }
        }
        futures::future::join_all(self.sessions.iter().map(SessionHandle::shutdown)).await;
        self.handle.store.clone().close().await?;
        first_error.map_or(Ok(()), Err)
    }
}

/// Keeps the gateway twin's summary current: recomputed when an identity's status changed (at
/// most once per `every`, so a flapping link does not turn into a stream of updates) and at
/// start, merged into the gateway's local reported document when it changed.
async fn summarize(
    handle: RuntimeHandle,
    agent_version: String,
    every: Duration,
    status_changed: Arc<Notify>,
    stop: CancellationToken,
) -> Result<(), StoreError> {
    let gateway = handle.gateway_id().to_owned();
    // What the previous run left in the gateway twin, so that stale keys are removed.
    let mut last = match handle.store.sync_state(&gateway).await? {
        Some(state) => summary_part(&state.local),
        None => Value::Object(Map::new()),
    };
    let mut next_allowed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(next_allowed) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = status_changed.notified() => {}
        }
        next_allowed = tokio::time::Instant::now() + every;
        let summary = gateway_summary(&agent_version, &handle.statuses());
        let patch = diff(&last, &summary);
        if !is_noop(&patch) {
            match handle.merge_local(&gateway, patch).await {
                Ok(_) => last = summary,
                Err(HandleError::Store(e)) => return Err(e),
                Err(HandleError::UnknownDevice(_)) => {
                    unreachable!("the gateway is always an identity of its runtime")
                }
            }
        }
    }
}

/// The keys of a gateway's reported document that the summary owns.
fn summary_part(local: &Value) -> Value {
    let mut part = Map::new();
    if let Value::Object(map) = local {
        for key in ["agent", "identities", "rejected"] {
            if let Some(value) = map.get(key) {
                part.insert(key.to_owned(), value.clone());
            }
        }
    }
    Value::Object(part)
}
