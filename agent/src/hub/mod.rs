//! The hub link: one MQTT 3.1.1 session per identity to Azure IoT Hub (or `hub-emulator`).
//!
//! INTERFACE SKELETON — the bodies marked `todo!` are being written; the types and signatures
//! are the contract between this module and `sync` (the driver) / `service` (start-up).
//!
//! - [`HubLink`] holds what all sessions of a gateway share: the link settings, the TLS
//!   client configuration (built once), the gateway-wide [`Pacing`] and the wall clock.
//! - [`HubLink::spawn`] starts one session task per identity. The task connects (paced by
//!   `Pacing::connects`, with jittered exponential backoff from `device_protocols::backoff`
//!   after failures), subscribes to `$iothub/twin/res/#` and
//!   `$iothub/twin/PATCH/properties/desired/#`, waits for both SUBACKs, and only then emits
//!   [`SessionEvent::Connected`]. It renews the SAS token before expiry with a clean reconnect,
//!   waits for a sane wall clock before connecting, and routes incoming `$iothub` publishes
//!   with its own topic parser (rumqttc's matcher never matches `$` topics).
//! - [`SessionHandle`] sends twin requests (GET, reported PATCH) and awaits their answers by
//!   `$rid`. The *caller* (the sync driver) decides when to GET and PATCH and draws on
//!   `Pacing::gets` / `Pacing::updates` itself.

#![allow(clippy::unused_async, clippy::todo)] // skeleton: removed when the bodies land

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use device_protocols::backoff::BackoffConfig;
use serde_json::Value;
use tokio::sync::mpsc;

pub mod pace;

pub use pace::RateLimiter;

/// How the MQTT connection is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// MQTT over TLS, port 8883 by default.
    #[default]
    Mqtt,
    /// MQTT over WebSocket over TLS (`wss://{host}:{port}/$iothub/websocket`), port 443 by
    /// default: for sites whose firewall only opens 443.
    MqttWs,
}

impl Transport {
    /// The port used when the configuration names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Mqtt => 8883,
            Self::MqttWs => 443,
        }
    }
}

/// An HTTP CONNECT proxy in front of the hub.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy host name or address.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// Basic-auth user name and password, if the proxy asks for them.
    pub auth: Option<(String, Secret)>,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// A secret string (SAS key, proxy password) that never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself: only for signing or sending, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How one identity authenticates to the hub.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A device symmetric key (base64), used to sign SAS tokens. Group-enrollment keys are
    /// derived into this form by the config/credentials code before they get here.
    SymmetricKey(Secret),
    /// An X.509 client certificate chain and its private key (PEM files; the key file has
    /// already passed the permission check).
    X509 {
        /// Certificate chain (PEM).
        cert_file: PathBuf,
        /// Private key (PEM).
        key_file: PathBuf,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SymmetricKey(_) => f.write_str("SymmetricKey(<redacted>)"),
            Self::X509 {
                cert_file,
                key_file,
            } => f
                .debug_struct("X509")
                .field("cert_file", cert_file)
                .field("key_file", key_file)
                .finish(),
        }
    }
}

/// The wall clock (injectable so tests can start in 1970).
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Settings shared by every session of a gateway.
#[derive(Clone)]
pub struct LinkSettings {
    /// The hub's host name (`myhub.azure-devices.net`): TLS server name, SAS `sr`, username.
    pub host: String,
    /// TCP port; `None` = the transport's default.
    pub port: Option<u16>,
    /// MQTT or MQTT over WebSocket.
    pub transport: Transport,
    /// Extra trusted root CA (PEM) on top of the system's roots, for private CAs and the
    /// emulator. Verification is always on.
    pub ca_file: Option<PathBuf>,
    /// Optional HTTP CONNECT proxy.
    pub proxy: Option<ProxySettings>,
    /// Lifetime of each SAS token; the session reconnects with a fresh one before it ends.
    pub token_lifetime: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long a twin request waits for its answer before it is an unknown outcome.
    pub request_timeout: Duration,
    /// Backoff between failed connects.
    pub backoff: BackoffConfig,
    /// Largest MQTT packet in either direction (a full twin is up to 64 KB).
    pub max_packet_size: usize,
    /// Wall clock for SAS expiry and the clock sanity check.
    pub wall_clock: WallClock,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy)
            .field("token_lifetime", &self.token_lifetime)
            .field("keep_alive", &self.keep_alive)
            .field("request_timeout", &self.request_timeout)
            .field("backoff", &self.backoff)
            .field("max_packet_size", &self.max_packet_size)
            .finish_non_exhaustive()
    }
}

impl LinkSettings {
    /// Defaults for `host`: MQTT on 8883, 1 h tokens, 60 s keep-alive, 30 s request timeout,
    /// backoff 1 s → 5 min, 256 KiB packets, the system clock.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            transport: Transport::Mqtt,
            ca_file: None,
            proxy: None,
            token_lifetime: Duration::from_hours(1),
            keep_alive: Duration::from_mins(1),
            request_timeout: Duration::from_secs(30),
            backoff: BackoffConfig::new(Duration::from_secs(1), Duration::from_mins(5)),
            max_packet_size: 256 * 1024,
            wall_clock: Arc::new(SystemTime::now),
        }
    }
}

/// The gateway-wide pace of hub traffic, shared by every identity, so that the return after
/// an outage with hundreds of identities is never a stampede of 429s.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// MQTT connects (taken by the session before each attempt).
    pub connects: RateLimiter,
    /// Twin GETs (taken by the sync driver).
    pub gets: RateLimiter,
    /// Reported `PATCH`es (taken by the sync driver).
    pub updates: RateLimiter,
}

/// The full twin as a GET returns it, `$version`s split out of the documents.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinDocument {
    /// `properties.desired` without `$version` (and `$metadata`).
    pub desired: Value,
    /// Its `$version`.
    pub desired_version: i64,
    /// `properties.reported` without `$version` (and `$metadata`).
    pub reported: Value,
    /// Its `$version`.
    pub reported_version: i64,
}

/// Why a twin request did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The hub answered with an error status (400, 403, 413, 429, 5xx…). `message` is the
    /// answer's `message` (or the raw body) for logs and the gateway twin.
    #[error("hub answered {status}: {message}")]
    Status {
        /// The status from the response topic.
        status: u16,
        /// What the hub said.
        message: String,
    },
    /// No answer within `request_timeout`: the outcome is unknown.
    #[error("no answer within the request timeout")]
    Timeout,
    /// The connection was lost after the request was sent: the outcome is unknown.
    #[error("connection lost before the answer")]
    LinkLost,
    /// Not connected: the request was not sent.
    #[error("not connected to the hub")]
    NotConnected,
}

impl RequestError {
    /// Whether the hub may have applied the request (it was sent and no answer came back).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Timeout | Self::LinkLost)
    }
}

/// What a session tells its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// Connected and subscribed: twin requests can be sent (GET first).
    Connected,
    /// The connection ended (token renewal, hub closed it, network error); the session
    /// reconnects by itself. Requests in flight resolve to [`RequestError::LinkLost`].
    Disconnected {
        /// Why, for logs and `status` (never contains secrets).
        reason: String,
    },
    /// A desired-properties notification: the merge patch and its `$version`.
    Desired {
        /// The patch (without `$version`).
        patch: Value,
        /// The notification's `$version`.
        version: i64,
    },
    /// A desired notification that could not be used (not JSON, no `$version`, …).
    BadDesired {
        /// What was wrong with it.
        reason: String,
    },
    /// The wall clock is not plausible (before this build was made); not connecting until it
    /// is. Emitted once per wait.
    WaitingForClock,
}

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The CA file, a client certificate or the TLS configuration is unusable.
    #[error("{0}")]
    Tls(String),
}

/// What every session of a gateway shares.
#[derive(Debug, Clone)]
pub struct HubLink {
    settings: Arc<LinkSettings>,
    pacing: Pacing,
}

impl HubLink {
    /// Builds the shared link (reads the CA file and the system roots once).
    pub fn new(settings: LinkSettings, pacing: Pacing) -> Result<Self, LinkError> {
        Ok(Self {
            settings: Arc::new(settings),
            pacing,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &LinkSettings {
        &self.settings
    }

    /// The gateway-wide pacing.
    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// Starts the session task of `device_id`. It runs until [`SessionHandle::shutdown`] or
    /// until every handle and the event receiver are dropped.
    pub fn spawn(&self, device_id: &str, credential: Credential) -> Session {
        let _ = (device_id, credential);
        todo!("hub session task")
    }
}

/// A running session: the handle to send requests, and its events.
#[derive(Debug)]
pub struct Session {
    /// Sends requests; cheap to clone.
    pub handle: SessionHandle,
    /// Connection state changes and desired notifications, in arrival order.
    pub events: mpsc::Receiver<SessionEvent>,
}

/// Sends twin requests on one identity's session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    device_id: Arc<str>,
}

impl SessionHandle {
    /// The identity of this session.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// A fresh request id (`$rid`), unique within this process's sessions.
    pub fn next_request_id(&self) -> String {
        todo!("request ids")
    }

    /// GETs the full twin.
    pub async fn get_twin(&self) -> Result<TwinDocument, RequestError> {
        todo!("twin GET")
    }

    /// `PATCH`es reported properties under `request_id`; `Ok` carries the new reported
    /// `$version` from the 204.
    pub async fn patch_reported(
        &self,
        request_id: &str,
        patch: &Value,
    ) -> Result<i64, RequestError> {
        let _ = (request_id, patch);
        todo!("reported PATCH")
    }

    /// Disconnects cleanly (MQTT DISCONNECT) and stops the session task.
    pub async fn shutdown(&self) {
        todo!("session shutdown")
    }
}
