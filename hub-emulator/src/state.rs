//! The hub's state: the device registry, one twin per device, connection bookkeeping, fault
//! settings, counters and optional persistence.
//!
//! Everything lives behind [`SharedState`] (`Arc<Hub>`). The MQTT server, the service API and
//! the control endpoint all go through [`Hub`]'s methods; none of them holds the inner lock across
//! an `.await` (the lock is a plain `std::sync::Mutex`, every method is synchronous and short).
//!
//! Twin model (as IoT Hub keeps it):
//! - `tags`: service-only JSON object;
//! - `desired` / `reported`: a document (plain JSON object, without `$`-keys), its `$version`
//!   (starts at 1, +1 per applied patch) and `$metadata` (`$lastUpdated` per property and per
//!   section; desired additionally `$lastUpdatedVersion`);
//! - `version`: the twin's overall version, +1 on any change; `etag` is derived from it;
//! - `connectionState` / `lastActivityTime`: from the device's MQTT connection.
//!
//! A desired change made here (service PATCH/PUT) is pushed to the device's live MQTT
//! connection, if any, as a [`ConnEvent::Desired`] on that connection's channel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::rules;
use crate::throttle::Throttle;

/// The handle every part of the emulator shares.
pub type SharedState = Arc<Hub>;

/// Why a hub operation failed. [`HubError::status`] maps it to the HTTP/MQTT status code.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No device with this id is registered.
    #[error("device {0:?} is not registered")]
    DeviceNotFound(String),
    /// `If-Match` named another etag than the twin's (or device's) current one.
    #[error("etag mismatch: If-Match {given:?}, current {current:?}")]
    PreconditionFailed {
        /// The etag the caller sent (quotes stripped).
        given: String,
        /// The current etag.
        current: String,
    },
    /// The patch or document broke a twin rule (status 400 or 413).
    #[error("{message}")]
    Rule {
        /// 400 (malformed) or 413 (too large).
        status: u16,
        /// What rule was broken, for the response body.
        message: String,
    },
    /// The request is malformed in a way the rules module does not cover.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The device is registered but has no live connection (status 409).
    #[error("device {0:?} is not connected")]
    NotConnected(String),
    /// Writing the state file failed; the change is applied in memory but not on disk.
    #[error("persisting hub state to {path}: {source}")]
    Persist {
        /// The state file.
        path: PathBuf,
        /// The IO or serialisation error.
        source: std::io::Error,
    },
}

impl HubError {
    /// The status code IoT Hub answers with for this error.
    pub fn status(&self) -> u16 {
        match self {
            HubError::DeviceNotFound(_) => 404,
            HubError::PreconditionFailed { .. } => 412,
            HubError::Rule { status, .. } => *status,
            HubError::BadRequest(_) => 400,
            HubError::NotConnected(_) => 409,
            HubError::Persist { .. } => 500,
        }
    }
}

impl From<rules::RuleViolation> for HubError {
    fn from(v: rules::RuleViolation) -> Self {
        HubError::Rule {
            status: v.status,
            message: v.message,
        }
    }
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// The device may connect (the default).
    #[default]
    Enabled,
    /// CONNECT is refused with "not authorized"; a live connection is closed.
    Disabled,
}

/// A device identity in the registry (the registry file's entry, and what the service API's
/// `PUT /devices/{id}` registers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The device id (MQTT client id).
    #[serde(alias = "id", alias = "deviceId")]
    pub device_id: String,
    /// Base64 primary symmetric key.
    #[serde(alias = "primaryKey")]
    pub primary_key: String,
    /// Base64 secondary symmetric key.
    #[serde(alias = "secondaryKey")]
    pub secondary_key: String,
    /// Optional X.509 thumbprint (hex SHA-1 or SHA-256) for certificate authentication.
    #[serde(
        default,
        alias = "x509Thumbprint",
        skip_serializing_if = "Option::is_none"
    )]
    pub thumbprint: Option<String>,
    /// Enabled (default) or disabled.
    #[serde(default)]
    pub status: DeviceStatus,
}

impl DeviceIdentity {
    /// An enabled identity with the given keys and no thumbprint.
    pub fn new(
        device_id: impl Into<String>,
        primary_key: impl Into<String>,
        secondary_key: impl Into<String>,
    ) -> Self {
        Self {
            device_id: device_id.into(),
            primary_key: primary_key.into(),
            secondary_key: secondary_key.into(),
            thumbprint: None,
            status: DeviceStatus::Enabled,
        }
    }

    /// A fresh random 32-byte base64 key (what IoT Hub generates when none is given).
    pub fn random_key() -> String {
        let bytes: [u8; 32] = rand::random();
        B64.encode(bytes)
    }
}

/// One of a twin's property sections (`desired` or `reported`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// The document, without `$version` / `$metadata`.
    pub doc: Map<String, Value>,
    /// `$version`: 1 for a new twin, +1 per applied patch.
    pub version: u64,
    /// `$metadata` tree: `$lastUpdated` (and for desired `$lastUpdatedVersion`) per node.
    pub metadata: Map<String, Value>,
}

impl Section {
    fn new(now: &str, with_version_meta: bool) -> Self {
        let mut metadata = Map::new();
        metadata.insert("$lastUpdated".into(), Value::String(now.into()));
        if with_version_meta {
            metadata.insert("$lastUpdatedVersion".into(), json!(1));
        }
        Self {
            doc: Map::new(),
            version: 1,
            metadata,
        }
    }

    /// The section as the device sees it in a twin GET: the document plus `$version`.
    pub fn device_json(&self) -> Value {
        let mut m = self.doc.clone();
        m.insert("$version".into(), json!(self.version));
        Value::Object(m)
    }

    /// The section as the service API returns it: document, `$metadata`, `$version`.
    pub fn service_json(&self) -> Value {
        let mut m = self.doc.clone();
        m.insert("$metadata".into(), Value::Object(self.metadata.clone()));
        m.insert("$version".into(), json!(self.version));
        Value::Object(m)
    }
}

/// A device twin (the persistent part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    /// Service-only tags.
    pub tags: Map<String, Value>,
    /// Desired properties (written by the service).
    pub desired: Section,
    /// Reported properties (written by the device).
    pub reported: Section,
    /// The twin's overall version, +1 on any change.
    pub version: u64,
}

impl Twin {
    fn new(now: &str) -> Self {
        Self {
            tags: Map::new(),
            desired: Section::new(now, true),
            reported: Section::new(now, false),
            version: 1,
        }
    }

    /// The twin's etag (IoT Hub style: base64 of the big-endian version number).
    pub fn etag(&self) -> String {
        B64.encode(self.version.to_be_bytes())
    }
}

/// A registered device: identity, twin and (not persisted) connection state.
#[derive(Debug)]
struct Device {
    identity: DeviceIdentity,
    /// Bumped whenever the identity changes; the device identity's etag derives from it.
    identity_version: u64,
    twin: Twin,
    connection: Option<ConnSlot>,
    /// The subscriptions of the device's persistent MQTT session (a connection with
    /// `clean_session = 0`), kept across connections; `None` when the last session was clean.
    /// In memory only: like the connection, not written to the state file.
    session: Option<Subscriptions>,
    last_activity: Option<String>,
    connection_state_updated: Option<String>,
}

/// MQTT subscriptions of a session: topic filter and granted `QoS`, in subscription order.
pub type Subscriptions = Vec<(String, rumqttc::mqttbytes::QoS)>;

/// How many events (desired notifications) may wait for one connection. A device that falls
/// this far behind is disconnected rather than buffered without bound; it reconnects and reads
/// its twin, as after any disconnect.
pub const CONN_EVENT_CAPACITY: usize = 256;

#[derive(Debug)]
struct ConnSlot {
    conn_id: u64,
    tx: mpsc::Sender<ConnEvent>,
}

impl ConnSlot {
    /// Queues `event`; `false` when the connection has fallen [`CONN_EVENT_CAPACITY`] events
    /// behind (the caller then drops the slot, which ends the session once it has drained its
    /// queue) or has already ended.
    fn send(&self, event: ConnEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    conn_id = self.conn_id,
                    "device connection is {CONN_EVENT_CAPACITY} events behind; disconnecting it"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A message from the hub to one live MQTT connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    /// Desired properties changed: send `payload` (the patch plus `$version`) on
    /// `$iothub/twin/PATCH/properties/desired/?$version={version}`.
    Desired {
        /// The new desired `$version`.
        version: u64,
        /// The notification body.
        payload: Value,
    },
    /// A desired notification injected by the control endpoint: send `payload` exactly as
    /// given (any bytes, valid or not) on the desired topic with `$version={version}`.
    RawDesired {
        /// The `$version` the topic names.
        version: u64,
        /// The notification body, verbatim.
        payload: bytes::Bytes,
    },
    /// Close the connection (kicked by a newer connection, dropped by the control endpoint,
    /// device disabled or deleted, emulator shutting down).
    Close(CloseReason),
}

/// Why the hub closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A second connection with the same device id arrived.
    Replaced,
    /// The control endpoint asked for it.
    Dropped,
    /// The device was disabled.
    Disabled,
    /// The emulator is shutting down.
    Shutdown,
}

/// A live connection's registration in the hub, returned by [`Hub::connect`].
#[derive(Debug)]
pub struct Connection {
    /// Unique per connection; pass it back to [`Hub::disconnect`].
    pub conn_id: u64,
    /// Desired notifications and close requests for this connection.
    pub events: mpsc::Receiver<ConnEvent>,
    /// The subscriptions of the persistent session this connection resumes (CONNACK
    /// "session present"); `None` when it starts a new session.
    pub resumed: Option<Subscriptions>,
}

/// Counters of device-side traffic, read through the control endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted CONNECTs (CONNACK 0).
    pub connects: AtomicU64,
    /// Refused CONNECTs (CONNACK ≠ 0).
    pub connects_refused: AtomicU64,
    /// Connections closed by the hub (kick, drop, token expiry, keep-alive, protocol violation).
    pub disconnects_by_hub: AtomicU64,
    /// Twin GET requests received.
    pub twin_gets: AtomicU64,
    /// Reported PATCH requests received.
    pub reported_patches: AtomicU64,
    /// Desired notifications published to devices.
    pub desired_notifications: AtomicU64,
    /// Twin responses with a 2xx status.
    pub responses_2xx: AtomicU64,
    /// Twin responses with a 4xx status (including 429).
    pub responses_4xx: AtomicU64,
    /// Twin responses with status 429 (also counted in `responses_4xx`).
    pub responses_429: AtomicU64,
    /// Device-to-cloud telemetry messages received.
    pub telemetry: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct CounterSnapshot {
    pub connects: u64,
    pub connects_refused: u64,
    pub disconnects_by_hub: u64,
    pub twin_gets: u64,
    pub reported_patches: u64,
    pub desired_notifications: u64,
    pub responses_2xx: u64,
    pub responses_4xx: u64,
    pub responses_429: u64,
    pub telemetry: u64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a twin response by its status.
    pub fn count_status(&self, status: u16) {
        match status {
            200..=299 => Self::bump(&self.responses_2xx),
            429 => {
                Self::bump(&self.responses_4xx);
                Self::bump(&self.responses_429);
            }
            400..=499 => Self::bump(&self.responses_4xx),
            _ => {}
        }
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            connects: r(&self.connects),
            connects_refused: r(&self.connects_refused),
            disconnects_by_hub: r(&self.disconnects_by_hub),
            twin_gets: r(&self.twin_gets),
            reported_patches: r(&self.reported_patches),
            desired_notifications: r(&self.desired_notifications),
            responses_2xx: r(&self.responses_2xx),
            responses_4xx: r(&self.responses_4xx),
            responses_429: r(&self.responses_429),
            telemetry: r(&self.telemetry),
        }
    }

    /// Sets every counter to zero.
    pub fn reset(&self) {
        for c in [
            &self.connects,
            &self.connects_refused,
            &self.disconnects_by_hub,
            &self.twin_gets,
            &self.reported_patches,
            &self.desired_notifications,
            &self.responses_2xx,
            &self.responses_4xx,
            &self.responses_429,
            &self.telemetry,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Faults injected through the control endpoint.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Refuse CONNECTs (CONNACK "server unavailable") until this instant.
    pub refuse_until: Option<Instant>,
    /// Delay every twin response (GET/PATCH result) by this much.
    pub twin_response_delay: Duration,
}

/// Hub-wide settings fixed at start.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub's host name: devices put it in the username and SAS `sr`.
    pub hostname: String,
    /// Optional shared-access key (base64) for the service API; `None` = no auth.
    pub service_key: Option<String>,
    /// Clock skew tolerated on SAS expiry (IoT Hub tolerates about 5 minutes).
    pub sas_skew: Duration,
    /// Twin operations per second across the hub; `None` = unlimited.
    pub twin_ops_per_sec: Option<f64>,
    /// Where to persist registry and twins; `None` = memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            hostname: "127.0.0.1".into(),
            service_key: None,
            sas_skew: Duration::from_mins(5),
            twin_ops_per_sec: None,
            state_file: None,
        }
    }
}

/// The hub. Create it with [`Hub::new`] (or through `Emulator::start`).
#[derive(Debug)]
pub struct Hub {
    settings: HubSettings,
    inner: Mutex<Inner>,
    /// Serialises state-file writes so an older snapshot never overwrites a newer one.
    persist_lock: Mutex<u64>,
    /// Device-side traffic counters.
    pub counters: Counters,
    faults: Mutex<Faults>,
    throttle: Mutex<Throttle>,
}

#[derive(Debug, Default)]
struct Inner {
    devices: BTreeMap<String, Device>,
    next_conn_id: u64,
    /// Bumped on every persisted change; used to order state-file writes.
    generation: u64,
}

impl Inner {
    /// The registered device `id`, or [`HubError::DeviceNotFound`].
    fn device(&self, id: &str) -> Result<&Device, HubError> {
        self.devices
            .get(id)
            .ok_or_else(|| HubError::DeviceNotFound(id.to_owned()))
    }

    /// The registered device `id` for changing, or [`HubError::DeviceNotFound`].
    fn device_mut(&mut self, id: &str) -> Result<&mut Device, HubError> {
        self.devices
            .get_mut(id)
            .ok_or_else(|| HubError::DeviceNotFound(id.to_owned()))
    }
}

/// The state file's format.
#[derive(Debug, Serialize, Deserialize)]
struct PersistedState {
    devices: Vec<PersistedDevice>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedDevice {
    identity: DeviceIdentity,
    #[serde(default = "one")]
    identity_version: u64,
    twin: Twin,
    /// `lastActivityTime`, kept across restarts as IoT Hub keeps it (absent: never active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_activity: Option<String>,
    /// `connectionStateUpdatedTime`, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connection_state_updated: Option<String>,
}

fn one() -> u64 {
    1
}

/// The current time as IoT Hub writes it (RFC 3339, UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Seconds since the Unix epoch, now.
pub fn now_epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Strips the quotes (and a weak `W/` prefix) from an `If-Match`/`ETag` header value.
pub fn unquote_etag(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

fn check_etag(if_match: Option<&str>, current: &str) -> Result<(), HubError> {
    match if_match.map(unquote_etag) {
        None | Some("*") => Ok(()),
        Some(given) if given == current => Ok(()),
        Some(given) => Err(HubError::PreconditionFailed {
            given: given.to_owned(),
            current: current.to_owned(),
        }),
    }
}

/// Updates a `$metadata` tree for a merge patch that was applied to `old` (the document before
/// the patch). Every touched node gets `$lastUpdated = now` (and `$lastUpdatedVersion` when
/// given); deleted properties lose their metadata; so does a subtree replaced by a scalar.
pub fn touch_metadata(
    meta: &mut Map<String, Value>,
    old: Option<&Map<String, Value>>,
    patch: &Map<String, Value>,
    now: &str,
    version: Option<u64>,
) {
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                meta.remove(key);
            }
            Value::Object(sub) => {
                let old_sub = old.and_then(|o| o.get(key)).and_then(Value::as_object);
                let entry = meta.entry(key.clone()).or_insert_with(|| json!({}));
                if old_sub.is_none() || !entry.is_object() {
                    *entry = json!({});
                }
                let entry = entry.as_object_mut().expect("just made an object");
                touch_metadata(entry, old_sub, sub, now, version);
            }
            _ => {
                meta.insert(key.clone(), leaf_meta(now, version));
            }
        }
    }
    stamp(meta, now, version);
}

/// Builds a fresh `$metadata` tree for a whole document (a replaced section).
pub fn fresh_metadata(
    doc: &Map<String, Value>,
    now: &str,
    version: Option<u64>,
) -> Map<String, Value> {
    let mut meta = Map::new();
    touch_metadata(&mut meta, None, doc, now, version);
    meta
}

fn leaf_meta(now: &str, version: Option<u64>) -> Value {
    let mut m = Map::new();
    stamp(&mut m, now, version);
    Value::Object(m)
}

fn stamp(meta: &mut Map<String, Value>, now: &str, version: Option<u64>) {
    meta.insert("$lastUpdated".into(), Value::String(now.into()));
    if let Some(v) = version {
        meta.insert("$lastUpdatedVersion".into(), json!(v));
    }
}

fn as_object(v: Value, what: &str) -> Result<Map<String, Value>, HubError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(HubError::BadRequest(format!(
            "{what} must be a JSON object, got {other}"
        ))),
    }
}

/// Strips `$`-prefixed top-level keys (`$version`, `$metadata`) that the service API's GET
/// output carries, so a document read back can be written again.
fn without_dollar_keys(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Hub {
    /// A hub with an empty registry, loading the state file when `settings.state_file` names an
    /// existing file.
    pub fn new(settings: HubSettings) -> Result<SharedState, HubError> {
        let mut inner = Inner::default();
        if let Some(path) = &settings.state_file
            && path.exists()
        {
            inner.devices = load_state(path)?;
        }
        let throttle = Throttle::new(settings.twin_ops_per_sec);
        Ok(Arc::new(Hub {
            settings,
            inner: Mutex::new(inner),
            persist_lock: Mutex::new(0),
            counters: Counters::default(),
            faults: Mutex::new(Faults::default()),
            throttle: Mutex::new(throttle),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The hub's settings.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The hub's host name (devices' username and SAS `sr` must name it).
    pub fn hostname(&self) -> &str {
        &self.settings.hostname
    }

    /// The service API's shared-access key (base64), if one is configured.
    pub fn service_key(&self) -> Option<&str> {
        self.settings.service_key.as_deref()
    }

    // ----- registry -------------------------------------------------------------------------

    /// Registers a device, or updates the identity of an existing one (keys, thumbprint,
    /// status; the twin is kept). `if_match` is checked against the identity's etag when the
    /// device exists. Disabling a connected device closes its connection. Returns the device
    /// identity JSON (see [`Hub::device_json`]).
    pub fn register_device(
        &self,
        identity: DeviceIdentity,
        if_match: Option<&str>,
    ) -> Result<Value, HubError> {
        let out = {
            let mut inner = self.lock();
            let out = register_locked(&mut inner, identity, if_match)?;
            inner.generation += 1;
            out
        };
        self.persist()?;
        Ok(out)
    }

    /// Adds the devices of a registry file: new ids are registered; for known ids the keys,
    /// thumbprint and status from the file replace the stored ones (the twin is kept). One
    /// state-file write for the whole list; on an invalid entry nothing is written and the
    /// entries before it stay registered in memory.
    pub fn load_registry(&self, identities: Vec<DeviceIdentity>) -> Result<(), HubError> {
        {
            let mut inner = self.lock();
            for identity in identities {
                register_locked(&mut inner, identity, None)?;
            }
            inner.generation += 1;
        }
        self.persist()
    }

    /// The identity of one device (keys included), if registered.
    pub fn identity(&self, device_id: &str) -> Option<DeviceIdentity> {
        self.lock()
            .devices
            .get(device_id)
            .map(|d| d.identity.clone())
    }

    /// The device identity JSON of one device, as `GET /devices/{id}` returns it.
    pub fn device_json(&self, device_id: &str) -> Result<Value, HubError> {
        self.lock().device(device_id).map(device_json)
    }

    /// All device identities as `GET /devices` returns them, ordered by device id.
    pub fn list_devices(&self) -> Vec<Value> {
        self.lock().devices.values().map(device_json).collect()
    }

    /// All registered device ids, sorted.
    pub fn device_ids(&self) -> Vec<String> {
        self.lock().devices.keys().cloned().collect()
    }

    // ----- twins (service side) -------------------------------------------------------------

    /// The twin of one device in the service API's shape (see [`Hub::all_twins`]).
    pub fn twin_json(&self, device_id: &str) -> Result<Value, HubError> {
        self.lock().device(device_id).map(twin_json)
    }

    /// Every twin in the service API's shape, ordered by device id (the input of queries):
    /// `deviceId`, `etag`, `deviceEtag`, `version`, `status`, `statusUpdateTime`,
    /// `connectionState` (`Connected`/`Disconnected`), `lastActivityTime`,
    /// `cloudToDeviceMessageCount`, `authenticationType`, `x509Thumbprint`, `tags`,
    /// `properties: {desired, reported}` each with `$metadata` and `$version`.
    pub fn all_twins(&self) -> Vec<Value> {
        self.lock().devices.values().map(twin_json).collect()
    }

    /// Service `PATCH /twins/{id}`: `body` may hold `tags` (merge patch) and
    /// `properties.desired` (merge patch, checked by [`rules::check_desired_patch`]);
    /// `properties.reported` is refused (400). `if_match` (quotes optional, `*` = any) must
    /// equal the twin's etag, else 412. A desired change bumps desired `$version` and is
    /// pushed to the connected device. Returns the new twin JSON.
    pub fn patch_twin(
        &self,
        device_id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, HubError> {
        let body = body
            .as_object()
            .ok_or_else(|| HubError::BadRequest("twin patch must be a JSON object".into()))?;
        let tags = body
            .get("tags")
            .cloned()
            .map(|t| as_object(t, "tags"))
            .transpose()?;
        let mut desired = None;
        if let Some(props) = body.get("properties") {
            let props = props
                .as_object()
                .ok_or_else(|| HubError::BadRequest("properties must be a JSON object".into()))?;
            if props.contains_key("reported") {
                return Err(HubError::BadRequest(
                    "reported properties can only be written by the device".into(),
                ));
            }
            if let Some(d) = props.get("desired") {
                desired = Some(without_dollar_keys(&as_object(
                    d.clone(),
                    "properties.desired",
                )?));
            }
        }
        self.update_twin(device_id, if_match, |twin, now| {
            let mut changed = false;
            if let Some(tags) = &tags {
                let new = rules::check_tags_patch(
                    &Value::Object(twin.tags.clone()),
                    &Value::Object(tags.clone()),
                )?;
                twin.tags = as_object(new, "tags")?;
                changed = true;
            }
            let mut notify = None;
            if let Some(patch) = &desired {
                let patch_v = Value::Object(patch.clone());
                let new =
                    rules::check_desired_patch(&Value::Object(twin.desired.doc.clone()), &patch_v)?;
                let new = as_object(new, "desired")?;
                let version = twin.desired.version + 1;
                touch_metadata(
                    &mut twin.desired.metadata,
                    Some(&twin.desired.doc),
                    patch,
                    now,
                    Some(version),
                );
                twin.desired.doc = new;
                twin.desired.version = version;
                let mut payload = patch.clone();
                payload.insert("$version".into(), json!(version));
                notify = Some((version, Value::Object(payload)));
                changed = true;
            }
            Ok((changed, notify))
        })
    }

    /// Service `PUT /twins/{id}`: replaces `tags` and `properties.desired` as a whole (missing
    /// ones become empty); reported properties in the body are ignored. Desired `$version` is
    /// bumped and the full new desired document is pushed to the connected device.
    pub fn replace_twin(
        &self,
        device_id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, HubError> {
        let body = body
            .as_object()
            .ok_or_else(|| HubError::BadRequest("twin must be a JSON object".into()))?;
        let tags = match body.get("tags") {
            None | Some(Value::Null) => Map::new(),
            Some(t) => as_object(t.clone(), "tags")?,
        };
        let desired = match body.get("properties").and_then(|p| p.get("desired")) {
            None | Some(Value::Null) => Map::new(),
            Some(d) => without_dollar_keys(&as_object(d.clone(), "properties.desired")?),
        };
        self.update_twin(device_id, if_match, |twin, now| {
            let new = as_object(
                rules::check_desired(&Value::Object(desired.clone()))?,
                "desired",
            )?;
            let version = twin.desired.version + 1;
            twin.tags = as_object(rules::check_tags(&Value::Object(tags.clone()))?, "tags")?;
            twin.desired.metadata = fresh_metadata(&new, now, Some(version));
            twin.desired.doc = new;
            twin.desired.version = version;
            let mut payload = twin.desired.doc.clone();
            payload.insert("$version".into(), json!(version));
            Ok((true, Some((version, Value::Object(payload)))))
        })
    }

    /// Runs a twin mutation under the lock, bumps the twin version when it changed, persists,
    /// and pushes a desired notification if the mutation produced one.
    fn update_twin<F>(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        f: F,
    ) -> Result<Value, HubError>
    where
        F: FnOnce(&mut Twin, &str) -> Result<(bool, Option<(u64, Value)>), HubError>,
    {
        let out;
        let mut changed_any = false;
        {
            let mut inner = self.lock();
            let dev = inner.device_mut(device_id)?;
            check_etag(if_match, &dev.twin.etag())?;
            let now = now_rfc3339();
            // Work on a copy so a rule violation leaves the twin untouched.
            let mut twin = dev.twin.clone();
            let (changed, notify) = f(&mut twin, &now)?;
            if changed {
                twin.version += 1;
                dev.twin = twin;
                changed_any = true;
            }
            if let (Some((version, payload)), Some(conn)) = (notify, &dev.connection)
                && !conn.send(ConnEvent::Desired { version, payload })
            {
                // Too far behind (or gone): unregister it; its session ends once drained.
                dev.connection = None;
                dev.connection_state_updated = Some(now);
            }
            out = twin_json(dev);
            if changed_any {
                inner.generation += 1;
            }
        }
        if changed_any {
            self.persist()?;
        }
        Ok(out)
    }

    // ----- twins (device side) --------------------------------------------------------------

    /// Device twin GET: `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`.
    pub fn device_twin_get(&self, device_id: &str) -> Result<Value, HubError> {
        let mut inner = self.lock();
        let dev = inner.device_mut(device_id)?;
        dev.last_activity = Some(now_rfc3339());
        Ok(json!({
            "desired": dev.twin.desired.device_json(),
            "reported": dev.twin.reported.device_json(),
        }))
    }

    /// Device reported PATCH: checked by [`rules::check_reported_patch`]; on success the new
    /// reported `$version` is returned, on a violation the twin is unchanged.
    pub fn device_patch_reported(&self, device_id: &str, patch: &Value) -> Result<u64, HubError> {
        let version;
        {
            let mut inner = self.lock();
            let dev = inner.device_mut(device_id)?;
            let now = now_rfc3339();
            dev.last_activity = Some(now.clone());
            let new =
                rules::check_reported_patch(&Value::Object(dev.twin.reported.doc.clone()), patch)?;
            let new = as_object(new, "reported")?;
            let patch_map = patch.as_object().cloned().unwrap_or_default();
            let section = &mut dev.twin.reported;
            touch_metadata(
                &mut section.metadata,
                Some(&section.doc),
                &patch_map,
                &now,
                None,
            );
            section.doc = new;
            section.version += 1;
            version = section.version;
            dev.twin.version += 1;
            inner.generation += 1;
        }
        self.persist()?;
        Ok(version)
    }

    /// Sends `payload` verbatim to the device's live connection as a desired notification on
    /// `$iothub/twin/PATCH/properties/desired/?$version={version}`, without touching the twin
    /// (to test how a device copes with notifications IoT Hub should never send). Like any
    /// notification it is dropped when the device has not subscribed to desired updates.
    /// [`HubError::DeviceNotFound`] for an unknown device, [`HubError::NotConnected`] when it
    /// has no live connection (or its queue is full, which disconnects it).
    pub fn inject_desired(
        &self,
        device_id: &str,
        version: u64,
        payload: bytes::Bytes,
    ) -> Result<(), HubError> {
        let mut inner = self.lock();
        let dev = inner.device_mut(device_id)?;
        let Some(conn) = &dev.connection else {
            return Err(HubError::NotConnected(device_id.to_owned()));
        };
        if conn.send(ConnEvent::RawDesired { version, payload }) {
            Ok(())
        } else {
            // Too far behind (or gone): unregister it; its session ends once drained.
            dev.connection = None;
            dev.connection_state_updated = Some(now_rfc3339());
            Err(HubError::NotConnected(device_id.to_owned()))
        }
    }

    /// Marks activity of a device (any packet from its connection).
    pub fn touch_activity(&self, device_id: &str) {
        if let Some(dev) = self.lock().devices.get_mut(device_id) {
            dev.last_activity = Some(now_rfc3339());
        }
    }

    // ----- connections ----------------------------------------------------------------------

    /// Registers a live, authenticated connection of `device_id` with a clean session. A
    /// previous connection of the same device is told to close ([`CloseReason::Replaced`]).
    pub fn connect(&self, device_id: &str) -> Result<Connection, HubError> {
        self.connect_session(device_id, true)
    }

    /// Registers a live, authenticated connection of `device_id`, as [`Hub::connect`] does, with
    /// MQTT session semantics: `clean_session = false` resumes the device's persistent session
    /// (its subscriptions, returned in [`Connection::resumed`]) or starts one that outlives the
    /// connection, as IoT Hub keeps the subscriptions of devices that connect with
    /// `CleanSession = 0` (Microsoft's Python device SDK does, and never subscribes again after
    /// a reconnect); `clean_session = true` discards any persistent session.
    pub fn connect_session(
        &self,
        device_id: &str,
        clean_session: bool,
    ) -> Result<Connection, HubError> {
        let mut inner = self.lock();
        inner.next_conn_id += 1;
        let conn_id = inner.next_conn_id;
        let dev = inner.device_mut(device_id)?;
        let (tx, events) = mpsc::channel(CONN_EVENT_CAPACITY);
        if let Some(old) = dev.connection.replace(ConnSlot { conn_id, tx }) {
            // If the queue is full, dropping `old` ends that session once it has drained.
            old.send(ConnEvent::Close(CloseReason::Replaced));
        }
        let resumed = if clean_session {
            dev.session = None;
            None
        } else {
            let resumed = dev.session.clone();
            dev.session = Some(resumed.clone().unwrap_or_default());
            resumed
        };
        let now = now_rfc3339();
        dev.last_activity = Some(now.clone());
        dev.connection_state_updated = Some(now);
        drop(inner);
        self.persist_activity();
        Ok(Connection {
            conn_id,
            events,
            resumed,
        })
    }

    /// Records the subscriptions of connection `conn_id` in the device's persistent session; a
    /// no-op when that connection has been replaced or its session is clean.
    pub fn save_subscriptions(&self, device_id: &str, conn_id: u64, subscriptions: &Subscriptions) {
        let mut inner = self.lock();
        if let Some(dev) = inner.devices.get_mut(device_id)
            && dev
                .connection
                .as_ref()
                .is_some_and(|c| c.conn_id == conn_id)
            && let Some(session) = &mut dev.session
        {
            session.clone_from(subscriptions);
        }
    }

    /// Unregisters a connection; a no-op if a newer connection has replaced it.
    /// Activity and connection times since the last state-file write are written then.
    pub fn disconnect(&self, device_id: &str, conn_id: u64) {
        let mut inner = self.lock();
        if let Some(dev) = inner.devices.get_mut(device_id)
            && dev
                .connection
                .as_ref()
                .is_some_and(|c| c.conn_id == conn_id)
        {
            dev.connection = None;
            dev.connection_state_updated = Some(now_rfc3339());
            drop(inner);
            self.persist_activity();
        }
    }

    /// Whether the device has a live connection.
    pub fn is_connected(&self, device_id: &str) -> bool {
        self.lock()
            .devices
            .get(device_id)
            .is_some_and(|d| d.connection.is_some())
    }

    /// Ids of the devices connected now, sorted.
    pub fn connected_devices(&self) -> Vec<String> {
        self.lock()
            .devices
            .values()
            .filter(|d| d.connection.is_some())
            .map(|d| d.identity.device_id.clone())
            .collect()
    }

    /// Closes the connection of one device (`Some(id)`) or of all devices (`None`); returns how
    /// many connections were told to close.
    pub fn drop_connections(&self, device_id: Option<&str>, reason: CloseReason) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for dev in inner.devices.values_mut() {
            if device_id.is_some_and(|id| id != dev.identity.device_id) {
                continue;
            }
            if let Some(conn) = &dev.connection {
                if conn.send(ConnEvent::Close(reason)) {
                    n += 1;
                } else if !conn.tx.is_closed() {
                    // Queue full: dropping the slot ends the session once it has drained.
                    dev.connection = None;
                    dev.connection_state_updated = Some(now_rfc3339());
                    n += 1;
                }
            }
        }
        n
    }

    // ----- faults and throttling ------------------------------------------------------------

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the fault settings.
    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Whether CONNECTs are being refused right now.
    pub fn refusing_connections(&self) -> bool {
        self.faults()
            .refuse_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// Takes one twin operation from the hub-wide budget; `false` means answer 429.
    pub fn try_twin_op(&self) -> bool {
        self.throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_acquire(Instant::now())
    }

    /// Changes the twin operation rate (`None` = unlimited).
    pub fn set_twin_ops_per_sec(&self, rate: Option<f64>) {
        *self
            .throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Throttle::new(rate);
    }

    /// The current twin operation rate.
    pub fn twin_ops_per_sec(&self) -> Option<f64> {
        self.throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rate()
    }

    // ----- persistence ----------------------------------------------------------------------

    /// Persists activity times (`lastActivityTime`, `connectionStateUpdatedTime`), as at a
    /// connect, a disconnect and shutdown. They change on every packet, so they are written at
    /// those moments and with every other change rather than per packet; a failed write is
    /// logged, not fatal (the next write catches up).
    pub fn persist_activity(&self) {
        if self.settings.state_file.is_none() {
            return;
        }
        self.lock().generation += 1;
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "persisting device activity times failed");
        }
    }

    /// Writes registry and twins to the state file (tmp + rename), if one is configured.
    /// Called after every change; an older snapshot never overwrites a newer one.
    pub fn persist(&self) -> Result<(), HubError> {
        let Some(path) = &self.settings.state_file else {
            return Ok(());
        };
        let (generation, bytes) = {
            let inner = self.lock();
            let state = PersistedState {
                devices: inner
                    .devices
                    .values()
                    .map(|d| PersistedDevice {
                        identity: d.identity.clone(),
                        identity_version: d.identity_version,
                        twin: d.twin.clone(),
                        last_activity: d.last_activity.clone(),
                        connection_state_updated: d.connection_state_updated.clone(),
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec(&state).map_err(|e| HubError::Persist {
                path: path.clone(),
                source: e.into(),
            })?;
            (inner.generation, bytes)
        };
        let mut written = self
            .persist_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *written >= generation && generation != 0 {
            return Ok(());
        }
        write_atomic(path, &bytes).map_err(|source| HubError::Persist {
            path: path.clone(),
            source,
        })?;
        *written = generation;
        Ok(())
    }
}

/// Registers or updates one identity under the lock (see [`Hub::register_device`]).
fn register_locked(
    inner: &mut Inner,
    identity: DeviceIdentity,
    if_match: Option<&str>,
) -> Result<Value, HubError> {
    if identity.device_id.is_empty() {
        return Err(HubError::BadRequest("device id must not be empty".into()));
    }
    for key in [&identity.primary_key, &identity.secondary_key] {
        if B64.decode(key.trim()).is_err() {
            return Err(HubError::BadRequest(format!(
                "key of device {:?} is not base64",
                identity.device_id
            )));
        }
    }
    let id = identity.device_id.clone();
    if let Some(dev) = inner.devices.get_mut(&id) {
        check_etag(if_match, &identity_etag(dev.identity_version))?;
        if dev.identity != identity {
            dev.identity = identity;
            dev.identity_version += 1;
        }
        if dev.identity.status == DeviceStatus::Disabled
            && let Some(conn) = dev.connection.take()
        {
            conn.send(ConnEvent::Close(CloseReason::Disabled));
        }
    } else {
        let now = now_rfc3339();
        inner.devices.insert(
            id.clone(),
            Device {
                identity,
                identity_version: 1,
                twin: Twin::new(&now),
                connection: None,
                session: None,
                last_activity: None,
                connection_state_updated: None,
            },
        );
    }
    Ok(device_json(inner.devices.get(&id).expect("inserted above")))
}

fn identity_etag(version: u64) -> String {
    B64.encode(version.to_be_bytes())
}

fn connection_state(dev: &Device) -> &'static str {
    if dev.connection.is_some() {
        "Connected"
    } else {
        "Disconnected"
    }
}

const NEVER: &str = "0001-01-01T00:00:00Z";

fn auth_json(id: &DeviceIdentity) -> (&'static str, Value) {
    let kind = if id.thumbprint.is_some() {
        "selfSigned"
    } else {
        "sas"
    };
    (
        kind,
        json!({ "primaryThumbprint": id.thumbprint, "secondaryThumbprint": null }),
    )
}

fn device_json(dev: &Device) -> Value {
    let id = &dev.identity;
    let (kind, thumb) = auth_json(id);
    json!({
        "deviceId": id.device_id,
        "generationId": format!("{:016x}", fxhash(&id.device_id)),
        "etag": identity_etag(dev.identity_version),
        "connectionState": connection_state(dev),
        "status": id.status,
        "statusReason": null,
        "connectionStateUpdatedTime": dev.connection_state_updated.as_deref().unwrap_or(NEVER),
        "statusUpdatedTime": NEVER,
        "lastActivityTime": dev.last_activity.as_deref().unwrap_or(NEVER),
        "cloudToDeviceMessageCount": 0,
        "authentication": {
            "symmetricKey": { "primaryKey": id.primary_key, "secondaryKey": id.secondary_key },
            "x509Thumbprint": thumb,
            "type": kind,
        },
        "capabilities": { "iotEdge": false },
    })
}

fn twin_json(dev: &Device) -> Value {
    let id = &dev.identity;
    let (kind, thumb) = auth_json(id);
    json!({
        "deviceId": id.device_id,
        "etag": dev.twin.etag(),
        "deviceEtag": identity_etag(dev.identity_version),
        "status": id.status,
        "statusUpdateTime": NEVER,
        "connectionState": connection_state(dev),
        "lastActivityTime": dev.last_activity.as_deref().unwrap_or(NEVER),
        "cloudToDeviceMessageCount": 0,
        "authenticationType": kind,
        "x509Thumbprint": thumb,
        "version": dev.twin.version,
        "tags": dev.twin.tags,
        "properties": {
            "desired": dev.twin.desired.service_json(),
            "reported": dev.twin.reported.service_json(),
        },
    })
}

/// A stable, dependency-free hash for the informational `generationId`.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn load_state(path: &Path) -> Result<BTreeMap<String, Device>, HubError> {
    let persist_err = |source: std::io::Error| HubError::Persist {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read(path).map_err(persist_err)?;
    let state: PersistedState = serde_json::from_slice(&text).map_err(|e| persist_err(e.into()))?;
    Ok(state
        .devices
        .into_iter()
        .map(|d| {
            (
                d.identity.device_id.clone(),
                Device {
                    identity: d.identity,
                    identity_version: d.identity_version,
                    twin: d.twin,
                    connection: None,
                    session: None,
                    last_activity: d.last_activity,
                    connection_state_updated: d.connection_state_updated,
                },
            )
        })
        .collect())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then rename.
/// Replaces `path` with `bytes` so that a crash or power cut leaves the old or the new file,
/// never a torn one. The file holds device keys, so it is created owner-only (0600).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn hub() -> SharedState {
        let hub = Hub::new(HubSettings::default()).unwrap();
        hub.register_device(DeviceIdentity::new("d1", KEY, KEY), None)
            .unwrap();
        hub
    }

    #[test]
    fn persistent_sessions_keep_subscriptions_and_clean_ones_discard_them() {
        use rumqttc::mqttbytes::QoS;
        let hub = hub();
        let subs: Subscriptions = vec![("$iothub/twin/res/#".into(), QoS::AtLeastOnce)];
        // No session yet: a persistent connection starts a new one.
        let c1 = hub.connect_session("d1", false).unwrap();
        assert_eq!(c1.resumed, None);
        hub.save_subscriptions("d1", c1.conn_id, &subs);
        hub.disconnect("d1", c1.conn_id);
        // The next persistent connection resumes it.
        let c2 = hub.connect_session("d1", false).unwrap();
        assert_eq!(c2.resumed.as_ref(), Some(&subs));
        // A replaced connection can no longer change the session.
        let c3 = hub.connect_session("d1", false).unwrap();
        assert_eq!(c3.resumed.as_ref(), Some(&subs));
        hub.save_subscriptions("d1", c2.conn_id, &Vec::new());
        hub.disconnect("d1", c3.conn_id);
        assert_eq!(
            hub.connect_session("d1", false).unwrap().resumed.as_ref(),
            Some(&subs)
        );
        // A clean connection discards the session and keeps none of its own.
        let clean = hub.connect("d1").unwrap();
        assert_eq!(clean.resumed, None);
        hub.save_subscriptions("d1", clean.conn_id, &subs);
        hub.disconnect("d1", clean.conn_id);
        assert_eq!(hub.connect_session("d1", false).unwrap().resumed, None);
    }

    #[test]
    fn new_twin_shape() {
        let hub = hub();
        let t = hub.twin_json("d1").unwrap();
        assert_eq!(t["deviceId"], "d1");
        assert_eq!(t["version"], 1);
        assert_eq!(t["connectionState"], "Disconnected");
        assert_eq!(t["properties"]["desired"]["$version"], 1);
        assert_eq!(t["properties"]["reported"]["$version"], 1);
        assert!(t["properties"]["desired"]["$metadata"]["$lastUpdated"].is_string());
        assert_eq!(
            t["properties"]["desired"]["$metadata"]["$lastUpdatedVersion"],
            1
        );
        assert_eq!(
            hub.device_twin_get("d1").unwrap(),
            json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
        );
    }

    #[test]
    fn desired_patch_notifies_and_bumps_versions() {
        let hub = hub();
        let mut conn = hub.connect("d1").unwrap();
        let etag = hub.twin_json("d1").unwrap()["etag"]
            .as_str()
            .unwrap()
            .to_owned();
        let t = hub
            .patch_twin(
                "d1",
                &json!({"properties": {"desired": {"sp": 21}}, "tags": {"site": "a"}}),
                Some(&format!("\"{etag}\"")),
            )
            .unwrap();
        assert_eq!(t["properties"]["desired"]["sp"], 21);
        assert_eq!(t["properties"]["desired"]["$version"], 2);
        assert_eq!(
            t["properties"]["desired"]["$metadata"]["sp"]["$lastUpdatedVersion"],
            2
        );
        assert_eq!(t["tags"]["site"], "a");
        assert_eq!(t["version"], 2);
        assert_eq!(t["connectionState"], "Connected");
        assert_eq!(
            conn.events.try_recv().unwrap(),
            ConnEvent::Desired {
                version: 2,
                payload: json!({"sp": 21, "$version": 2})
            }
        );
        // The old etag no longer matches.
        let err = hub
            .patch_twin("d1", &json!({"tags": {"x": 1}}), Some(&etag))
            .unwrap_err();
        assert_eq!(err.status(), 412);
    }

    #[test]
    fn reported_patch_and_metadata() {
        let hub = hub();
        assert_eq!(
            hub.device_patch_reported("d1", &json!({"a": {"b": 1}, "c": 2}))
                .unwrap(),
            2
        );
        assert_eq!(
            hub.device_patch_reported("d1", &json!({"a": null}))
                .unwrap(),
            3
        );
        let t = hub.twin_json("d1").unwrap();
        let r = &t["properties"]["reported"];
        assert_eq!(r["c"], 2);
        assert!(r.get("a").is_none());
        assert!(r["$metadata"].get("a").is_none());
        assert!(r["$metadata"]["c"]["$lastUpdated"].is_string());
        assert!(r["$metadata"]["c"].get("$lastUpdatedVersion").is_none());
    }

    #[test]
    fn second_connection_replaces_first() {
        let hub = hub();
        let mut first = hub.connect("d1").unwrap();
        let second = hub.connect("d1").unwrap();
        assert_eq!(
            first.events.try_recv().unwrap(),
            ConnEvent::Close(CloseReason::Replaced)
        );
        // The stale connection's disconnect does not unregister the new one.
        hub.disconnect("d1", first.conn_id);
        assert!(hub.is_connected("d1"));
        hub.disconnect("d1", second.conn_id);
        assert!(!hub.is_connected("d1"));
    }

    #[test]
    fn persistence_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let settings = HubSettings {
            state_file: Some(path.clone()),
            ..HubSettings::default()
        };
        {
            let hub = Hub::new(settings.clone()).unwrap();
            hub.register_device(DeviceIdentity::new("d1", KEY, KEY), None)
                .unwrap();
            hub.device_patch_reported("d1", &json!({"t": 1})).unwrap();
            hub.patch_twin("d1", &json!({"properties": {"desired": {"sp": 3}}}), None)
                .unwrap();
        }
        let hub = Hub::new(settings).unwrap();
        let t = hub.twin_json("d1").unwrap();
        assert_eq!(t["properties"]["reported"]["t"], 1);
        assert_eq!(t["properties"]["reported"]["$version"], 2);
        assert_eq!(t["properties"]["desired"]["sp"], 3);
        assert_eq!(t["properties"]["desired"]["$version"], 2);
        assert!(!dir.path().join("state.json.tmp").exists());
        // It holds device keys: owner-only, whatever the umask.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "state file mode {mode:o}");
    }

    #[test]
    fn unquote() {
        assert_eq!(unquote_etag("\"abc\""), "abc");
        assert_eq!(unquote_etag("W/\"abc\""), "abc");
        assert_eq!(unquote_etag("abc"), "abc");
    }

    /// Every property of the document has a metadata node and no metadata node outlives its
    /// property: `$metadata` mirrors the document's shape after any patch sequence.
    fn assert_mirrors(doc: &Map<String, Value>, meta: &Map<String, Value>, path: &str) {
        assert!(meta["$lastUpdated"].is_string(), "{path}: no $lastUpdated");
        for (k, v) in doc {
            let m = meta
                .get(k)
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("{path}.{k}: no metadata"));
            if let Value::Object(sub) = v {
                assert_mirrors(sub, m, &format!("{path}.{k}"));
            } else {
                assert!(
                    m.keys().all(|mk| mk.starts_with('$')),
                    "{path}.{k}: leaf metadata has children {m:?}"
                );
            }
        }
        for k in meta.keys().filter(|k| !k.starts_with('$')) {
            assert!(doc.contains_key(k), "{path}.{k}: metadata without property");
        }
    }

    /// Random merge patches over a few keys: nested objects, scalars, arrays and deletions.
    fn patch_strategy() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i32>().prop_map(|i| json!(i)),
            "[a-z]{0,3}".prop_map(Value::String),
            Just(json!([1, 2])),
        ];
        let object = |inner: BoxedStrategy<Value>| {
            proptest::collection::btree_map(
                prop_oneof![Just("a"), Just("b"), Just("c")],
                inner,
                0..3,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        };
        let tree = leaf.prop_recursive(3, 16, 3, move |inner| object(inner.boxed()));
        object(tree.boxed())
    }

    proptest::proptest! {
        #[test]
        fn metadata_mirrors_the_document(patches in proptest::collection::vec(patch_strategy(), 1..6)) {
            let hub = hub();
            for patch in patches {
                if hub.device_patch_reported("d1", &patch).is_err() {
                    continue;
                }
                let twin = hub.twin_json("d1").unwrap();
                let mut doc = twin["properties"]["reported"].as_object().unwrap().clone();
                let meta = doc.remove("$metadata").unwrap();
                doc.remove("$version");
                assert_mirrors(&doc, meta.as_object().unwrap(), "reported");
            }
        }
    }
}
