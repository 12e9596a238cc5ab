//! The running agent: the store, one hub session and one sync driver per identity, and the
//! gateway twin's summary, wired together on tokio.
//!
//! [`Runtime::start`] takes a [`RuntimeSpec`] (built from the configuration by the `run`
//! command, or by tests directly) and returns once everything is spawned. The
//! [`RuntimeHandle`] is the bridge's interface: [`RuntimeHandle::merge_local`] puts new
//! reported values into the store and wakes the identity's driver;
//! [`RuntimeHandle::desired`] watches the stored desired document of a device.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
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
#[derive(Debug, Clone, PartialEq)]
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

/// Keeps the first failure of a stopping agent in `first`. A store write given up for the
/// stop (state directory full or not writable) is only logged: not committed, and nothing
/// more can be done about it now.
fn note_stop_error(error: Option<RuntimeError>, first: &mut Option<RuntimeError>) {
    match error {
        Some(e) if e.is_unwritable_store() => {
            tracing::warn!(error = %e, "stopping with a change not committed (state directory full or not writable)");
        }
        Some(e) if first.is_none() => *first = Some(e),
        _ => {}
    }
}

impl RuntimeError {
    /// Whether this is a store write that failed on a full, read-only or failing state
    /// directory ([`StoreError::is_out_of_space`]), directly or through a bridge.
    pub fn is_unwritable_store(&self) -> bool {
        match self {
            Self::Store(e) | Self::Bridge(BridgeError::Handle(HandleError::Store(e))) => {
                e.is_out_of_space()
            }
            _ => false,
        }
    }
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

/// What the handle knows of one identity; replaced when its driver restarts.
#[derive(Clone)]
struct Identity {
    local_changed: Arc<Notify>,
    desired: watch::Receiver<Option<DesiredState>>,
    status: watch::Receiver<IdentityStatus>,
}

/// The identities the handle serves: a reload adds and removes some while bridges run.
#[derive(Default)]
struct Registry {
    /// In configuration order, gateway first.
    order: Vec<String>,
    map: HashMap<String, Identity>,
}

/// The bridge's (and tests') interface to the running agent; cheap to clone.
#[derive(Clone)]
pub struct RuntimeHandle {
    store: Store,
    gateway_id: Arc<str>,
    /// Held only for map look-ups and updates, never across an await.
    identities: Arc<RwLock<Registry>>,
    /// Operations (systemd watchdog and status): loops to check, field devices' states.
    progress: ProgressBoard,
    device_board: DeviceBoard,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("store", &self.store.path())
            .field("identities", &self.registry().order)
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
    /// update has been stored. It stays open while the device is configured (across a
    /// restart of its driver by a reload) and closes when a reload removes the device.
    pub fn desired(
        &self,
        device: &str,
    ) -> Result<watch::Receiver<Option<DesiredState>>, HandleError> {
        Ok(self.identity(device)?.desired)
    }

    /// Every identity's status, gateway first.
    pub fn statuses(&self) -> Vec<(String, IdentityStatus)> {
        let registry = self.registry();
        registry
            .order
            .iter()
            .filter_map(|id| {
                let identity = registry.map.get(id)?;
                Some((id.clone(), identity.status.borrow().clone()))
            })
            .collect()
    }

    /// The configured identities, gateway first.
    pub fn identity_ids(&self) -> Vec<String> {
        self.registry().order.clone()
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

    fn identity(&self, device: &str) -> Result<Identity, HandleError> {
        self.registry()
            .map
            .get(device)
            .cloned()
            .ok_or_else(|| HandleError::UnknownDevice(device.to_owned()))
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // The registry is only replaced whole-entry at a time: a panicking writer leaves it
        // consistent.
        self.identities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.identities
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A task of the runtime that can be stopped on its own (one identity's driver, one bus, one
/// line device).
#[derive(Debug)]
struct Unit {
    stop: CancellationToken,
    task: tokio::task::Id,
}

/// The running parts of one identity.
#[derive(Debug)]
struct RunningIdentity {
    session: SessionHandle,
    driver: Unit,
    /// Kept across driver restarts, so that the bridges' desired watches stay open.
    desired: watch::Sender<Option<DesiredState>>,
    local_changed: Arc<Notify>,
}

/// Every task of the runtime. A task that fails while another is being stopped is kept for
/// [`Runtime::failed`].
#[derive(Debug, Default)]
struct Tasks {
    set: JoinSet<Result<(), RuntimeError>>,
    /// The tasks not joined yet: one that ended on its own (a session gone) and was joined by
    /// `failed` must not be waited for when it is stopped later.
    live: HashSet<tokio::task::Id>,
    failure: Option<RuntimeError>,
}

impl Tasks {
    fn spawn(
        &mut self,
        task: impl Future<Output = Result<(), RuntimeError>> + Send + 'static,
    ) -> tokio::task::Id {
        let id = self.set.spawn(task).id();
        self.live.insert(id);
        id
    }

    /// Joins the next task to end: `None` when there is none, else its failure if it failed.
    /// Cancel-safe.
    async fn join_next(&mut self) -> Option<(tokio::task::Id, Option<RuntimeError>)> {
        let (id, error) = match self.set.join_next_with_id().await? {
            Ok((id, Ok(()))) => (id, None),
            Ok((id, Err(e))) => (id, Some(e)),
            Err(e) => (e.id(), Some(RuntimeError::Task(e.to_string()))),
        };
        self.live.remove(&id);
        Some((id, error))
    }

    /// The next failure; pending forever while all is well. Cancel-safe.
    async fn failed(&mut self) -> RuntimeError {
        if let Some(e) = self.failure.take() {
            return e;
        }
        loop {
            match self.join_next().await {
                Some((_, None)) => {}
                Some((_, Some(e))) => return e,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Waits until every task in `ids` has ended (their tokens already cancelled).
    async fn wait_for(&mut self, mut ids: HashSet<tokio::task::Id>) {
        ids.retain(|id| self.live.contains(id));
        while !ids.is_empty() {
            let Some((id, error)) = self.join_next().await else {
                return;
            };
            ids.remove(&id);
            if self.failure.is_none() {
                self.failure = error;
            }
        }
    }
}

/// The running agent.
#[derive(Debug)]
pub struct Runtime {
    pub(super) handle: RuntimeHandle,
    /// What is running now (after the last reload).
    pub(super) spec: RuntimeSpec,
    pub(super) link: HubLink,
    tasks: Tasks,
    /// Cancels everything; every unit's token is a child of it.
    stop: CancellationToken,
    status_changed: Arc<Notify>,
    identities: HashMap<String, RunningIdentity>,
    buses: HashMap<String, Unit>,
    lines: HashMap<String, Unit>,
}

impl Runtime {
    /// Opens the store, registers the identities in it and starts every session, driver,
    /// bridge and the summary task.
    pub async fn start(spec: RuntimeSpec) -> Result<Self, RuntimeError> {
        // Link and credentials first: a bad CA file or key stops start-up before the store opens.
        let link = check(&spec)?;
        let store = {
            let path = spec.store_path.clone();
            let options = spec.store_options.clone();
            tokio::task::spawn_blocking(move || Store::open(path, options))
                .await
                .map_err(|e| RuntimeError::Task(e.to_string()))??
        };
        let handle = RuntimeHandle {
            store,
            gateway_id: Arc::from(spec.gateway.id.as_str()),
            identities: Arc::default(),
            progress: ProgressBoard::default(),
            device_board: DeviceBoard::default(),
        };
        let mut runtime = Self {
            handle,
            spec: spec.clone(),
            link,
            tasks: Tasks::default(),
            stop: CancellationToken::new(),
            status_changed: Arc::new(Notify::new()),
            identities: HashMap::new(),
            buses: HashMap::new(),
            lines: HashMap::new(),
        };
        for identity in spec.identities() {
            runtime.start_identity(identity.clone()).await?;
        }
        runtime.set_order(&spec);
        // The first summary goes out at start, whether or not a status changes.
        runtime.status_changed.notify_one();
        let summary = summarize(
            runtime.handle.clone(),
            spec.agent_version.clone(),
            spec.summary_every,
            runtime.status_changed.clone(),
            runtime.stop.clone(),
        );
        runtime
            .tasks
            .spawn(async move { summary.await.map_err(RuntimeError::Store) });
        for bus in &spec.buses {
            runtime.start_bus(bus.clone());
        }
        for line in &spec.lines {
            runtime.start_line(line.clone());
        }
        tracing::info!(
            gateway = spec.gateway.id,
            devices = spec.devices.len(),
            host = spec.link.host,
            "runtime started"
        );
        Ok(runtime)
    }

    /// The handle for the bridge and tests.
    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Waits until a task fails (a store error: the agent cannot keep its promises without
    /// the store). Pending forever while all is well; cancel-safe.
    pub async fn failed(&mut self) -> RuntimeError {
        self.tasks.failed().await
    }

    /// Stops cleanly: drivers and bridges first (a request still pending keeps its unknown
    /// outcome in the store), then every session with an MQTT DISCONNECT, then the store.
    pub async fn shutdown(mut self) -> Result<(), RuntimeError> {
        self.stop.cancel();
        // A task may wait behind a write the store retries (disk full or read-only): without
        // this the stop would wait until the disk recovers.
        self.handle.store.give_up_retries();
        let mut first_error = None;
        // A failure already seen is sorted the same way: retries can also have been given up
        // before this call (a SIGTERM during a reload), and a task failed on that meanwhile.
        note_stop_error(self.tasks.failure.take(), &mut first_error);
        while let Some((_, error)) = self.tasks.join_next().await {
            note_stop_error(error, &mut first_error);
        }
        futures::future::join_all(self.identities.values().map(|i| i.session.shutdown())).await;
        self.handle.store.clone().close().await?;
        first_error.map_or(Ok(()), Err)
    }

    /// Starts (or restarts, after [`Runtime::stop_identities`]) the session and driver of
    /// `spec`, and registers it with the handle (at the end of the order; see
    /// [`Runtime::set_order`]).
    pub(super) async fn start_identity(&mut self, spec: IdentitySpec) -> Result<(), RuntimeError> {
        let store = &self.handle.store;
        store.configure_device(&spec.id, spec.history).await?;
        let session = self.link.spawn(&spec.id, spec.credential.clone());
        let (status_tx, status_rx) = watch::channel(IdentityStatus::default());
        // A restarted identity keeps its desired watch and wake-up (the bridges hold them).
        let kept = self.identities.remove(&spec.id);
        let (desired, local_changed) = match kept {
            Some(old) => (old.desired, old.local_changed),
            None => (watch::channel(None).0, Arc::new(Notify::new())),
        };
        let stop = self.stop.child_token();
        let driver = Driver {
            device: spec.id.clone(),
            store: store.clone(),
            session: session.handle.clone(),
            events: session.events,
            pacing: self.link.pacing().clone(),
            local_changed: local_changed.clone(),
            status: status_tx,
            status_changed: self.status_changed.clone(),
            desired: desired.clone(),
            retry: self.spec.retry,
        };
        let run = driver.run(stop.clone());
        let task = self
            .tasks
            .spawn(async move { run.await.map_err(RuntimeError::Store) });
        {
            let mut registry = self.handle.registry_mut();
            if !registry.order.contains(&spec.id) {
                registry.order.push(spec.id.clone());
            }
            registry.map.insert(
                spec.id.clone(),
                Identity {
                    local_changed: local_changed.clone(),
                    desired: desired.subscribe(),
                    status: status_rx,
                },
            );
        }
        self.identities.insert(
            spec.id.clone(),
            RunningIdentity {
                session: session.handle,
                driver: Unit { stop, task },
                desired,
                local_changed,
            },
        );
        Ok(())
    }

    /// Stops the drivers of `ids`, then their sessions (MQTT DISCONNECT). With `forget`, they
    /// are also removed from the handle (their desired watches close); otherwise they are
    /// expected to be started again with [`Runtime::start_identity`].
    pub(super) async fn stop_identities(
        &mut self,
        ids: &[String],
        forget: bool,
    ) -> Result<(), StoreError> {
        let mut tasks = HashSet::new();
        for id in ids {
            if let Some(identity) = self.identities.get(id) {
                identity.driver.stop.cancel();
                tasks.insert(identity.driver.task);
            }
        }
        self.tasks.wait_for(tasks).await;
        let sessions: Vec<_> = ids
            .iter()
            .filter_map(|id| self.identities.get(id))
            .map(|i| i.session.clone())
            .collect();
        // One connection per identity at the hub: the old one is gone before a new one starts.
        futures::future::join_all(sessions.iter().map(SessionHandle::shutdown)).await;
        // A PATCH the stopped driver left in flight will never be answered: its outcome is
        // unknown, as after a lost link (else the next driver would wait for it forever).
        for id in ids {
            self.handle.store.disconnected(id).await?;
        }
        if forget {
            let mut registry = self.handle.registry_mut();
            for id in ids {
                registry.map.remove(id);
                registry.order.retain(|o| o != id);
                self.identities.remove(id);
            }
        }
        Ok(())
    }

    /// Puts the handle's identities in the order of `spec` (gateway first).
    pub(super) fn set_order(&self, spec: &RuntimeSpec) {
        let mut registry = self.handle.registry_mut();
        registry.order = spec
            .identities()
            .map(|i| i.id.clone())
            .filter(|id| registry.map.contains_key(id))
            .collect();
    }

    /// Starts the bridge of a bus (its devices must be identities already).
    pub(super) fn start_bus(&mut self, bus: BusSpec) {
        let name = bus.config.name.clone();
        let stop = self.stop.child_token();
        let bridge = run_bus(
            bus,
            self.spec.gateway.id.clone(),
            self.handle.clone(),
            stop.clone(),
        );
        let task = self
            .tasks
            .spawn(async move { bridge.await.map_err(RuntimeError::Bridge) });
        self.buses.insert(name, Unit { stop, task });
    }

    /// Starts the bridge of a line device (it must be an identity already).
    pub(super) fn start_line(&mut self, line: LineSpec) {
        let device = line.device.clone();
        let stop = self.stop.child_token();
        let bridge = run_line(
            line,
            self.spec.gateway.id.clone(),
            self.handle.clone(),
            stop.clone(),
        );
        let task = self
            .tasks
            .spawn(async move { bridge.await.map_err(RuntimeError::Bridge) });
        self.lines.insert(device, Unit { stop, task });
    }

    /// Stops the bridges of the buses named `buses` and of the line devices `lines`, and
    /// waits until they have closed their ports.
    pub(super) async fn stop_bridges(&mut self, buses: &[String], lines: &[String]) {
        let units: Vec<Unit> = buses
            .iter()
            .filter_map(|b| self.buses.remove(b))
            .chain(lines.iter().filter_map(|l| self.lines.remove(l)))
            .collect();
        for unit in &units {
            unit.stop.cancel();
        }
        self.tasks
            .wait_for(units.iter().map(|u| u.task).collect())
            .await;
    }

    /// Pokes the summary task (the set of identities changed).
    pub(super) fn identities_changed(&self) {
        self.status_changed.notify_one();
    }
}

/// Checks what can be checked before anything starts: unique identities, the link (CA file)
/// and every credential. Returns the link to use.
pub(super) fn check(spec: &RuntimeSpec) -> Result<HubLink, RuntimeError> {
    let mut seen = HashSet::new();
    for identity in spec.identities() {
        if !seen.insert(identity.id.as_str()) {
            return Err(RuntimeError::DuplicateIdentity(identity.id.clone()));
        }
    }
    let link = HubLink::new(spec.link.clone(), spec.pacing.clone())?;
    for identity in spec.identities() {
        link.check_credential(&identity.id, &identity.credential)?;
    }
    Ok(link)
}

impl RuntimeSpec {
    /// Every identity: the gateway first, then the devices.
    pub fn identities(&self) -> impl Iterator<Item = &IdentitySpec> {
        std::iter::once(&self.gateway).chain(&self.devices)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_task_that_ended_on_its_own_is_not_waited_for_when_stopped() {
        let mut tasks = Tasks::default();
        let ended = tasks.spawn(async { Ok(()) });
        let forever = CancellationToken::new();
        let stop = forever.clone();
        let running = tasks.spawn(async move {
            stop.cancelled().await;
            Ok(())
        });
        // `failed` joins the task that ended (and keeps waiting: nothing failed).
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tasks.failed())
                .await
                .is_err()
        );
        tokio::time::timeout(
            Duration::from_secs(5),
            tasks.wait_for(HashSet::from([ended])),
        )
        .await
        .expect("not waiting for a task that was joined already");
        forever.cancel();
        tokio::time::timeout(
            Duration::from_secs(5),
            tasks.wait_for(HashSet::from([running])),
        )
        .await
        .expect("the stopped task is joined");
        assert!(tasks.live.is_empty() && tasks.failure.is_none());
    }

    #[tokio::test]
    async fn a_failure_seen_while_waiting_for_another_task_is_kept() {
        let mut tasks = Tasks::default();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let stopped = tasks.spawn(async move {
            token.cancelled().await;
            Ok(())
        });
        tasks.spawn(async { Err(RuntimeError::Task("boom".into())) });
        // Let the failing task end before the other is stopped.
        tokio::task::yield_now().await;
        stop.cancel();
        tasks.wait_for(HashSet::from([stopped])).await;
        let failure = tokio::time::timeout(Duration::from_secs(5), tasks.failed())
            .await
            .expect("the failure is reported");
        assert!(matches!(failure, RuntimeError::Task(m) if m == "boom"));
    }
}
