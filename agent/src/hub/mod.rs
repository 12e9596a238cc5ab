//! The hub link: one MQTT 3.1.1 session per identity to Azure IoT Hub (or `hub-emulator`).
//!
//! The types and signatures here are the contract between this module and `sync` (the
//! driver) / `service` (start-up).
//!
//! - [`HubLink`] holds what all sessions of a gateway share: the link settings, the TLS
//!   client configuration (built once), the gateway-wide [`Pacing`] and the wall clock.
//! - [`HubLink::spawn`] starts one session task per identity. The task connects (paced by
//!   `Pacing::connects`, with jittered exponential backoff from `device_protocols::backoff`
//!   after failures; the sessions share one uplink, so while none is connected one of them
//!   retries at least every [`session::OUTAGE_PROBE`] whatever its backoff, and when one gets
//!   back in after failing the others stop waiting out theirs), subscribes to `$iothub/twin/res/#` and
//!   `$iothub/twin/PATCH/properties/desired/#`, waits for both SUBACKs, and only then emits
//!   [`SessionEvent::Connected`]. It renews the SAS token before expiry with a clean reconnect,
//!   waits for a sane wall clock before connecting, and routes incoming `$iothub` publishes
//!   with its own topic parser (rumqttc's matcher never matches `$` topics).
//! - [`SessionHandle`] sends twin requests (GET, reported PATCH) and awaits their answers by
//!   `$rid`. The *caller* (the sync driver) decides when to GET and PATCH and draws on
//!   `Pacing::gets` / `Pacing::updates` itself.
//!
//! Submodules, one concern each: [`topics`] (twin topics: build and route, pure), [`sas`]
//! (tokens and username, pure), [`response`] (answers and desired notifications → results
//! and events, pure), [`pace`] (the token bucket), [`clock`] (wall-clock sanity), [`tls`]
//! (rustls configuration), [`session`] (the task on rumqttc).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use device_protocols::backoff::BackoffConfig;
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub mod clock;
pub mod pace;
pub mod response;
pub mod sas;
pub mod session;
pub mod tls;
pub mod topics;

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
    /// A credential is unusable (e.g. a symmetric key that is not base64; never the key).
    #[error("{0}")]
    Credential(String),
}

/// What every session of a gateway shares.
#[derive(Clone)]
pub struct HubLink {
    settings: Arc<LinkSettings>,
    pacing: Pacing,
    /// The trusted roots (system + `ca_file`), read once.
    roots: Arc<RootCertStore>,
    /// TLS without a client certificate (SAS identities), built once.
    tls: Arc<ClientConfig>,
    /// What the sessions know together about their shared uplink (outage probes, recovery).
    uplink: Arc<session::Uplink>,
}

impl std::fmt::Debug for HubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the roots themselves: a system store holds well over a hundred certificates.
        f.debug_struct("HubLink")
            .field("settings", &self.settings)
            .field("pacing", &self.pacing)
            .field("trusted_roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl HubLink {
    /// Builds the shared link (reads the CA file and the system roots once).
    pub fn new(settings: LinkSettings, pacing: Pacing) -> Result<Self, LinkError> {
        let roots = Arc::new(tls::root_store(settings.ca_file.as_deref())?);
        let tls = tls::client_config(roots.clone())?;
        Ok(Self {
            settings: Arc::new(settings),
            pacing,
            roots,
            tls,
            uplink: Arc::new(session::Uplink::new()),
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

    /// Checks that a credential is usable before a session is spawned with it: a symmetric
    /// key must be base64, an X.509 certificate and key must load and match. (A session
    /// whose credential breaks later keeps retrying with backoff and logs why.)
    pub fn check_credential(
        &self,
        device_id: &str,
        credential: &Credential,
    ) -> Result<(), LinkError> {
        match credential {
            Credential::SymmetricKey(key) => {
                sas::device_token(&self.settings.host, device_id, key.expose(), 0)
                    .map(drop)
                    .map_err(|e| LinkError::Credential(e.to_string()))
            }
            Credential::X509 {
                cert_file,
                key_file,
            } => tls::client_config_with_cert(self.roots.clone(), cert_file, key_file).map(drop),
        }
    }

    /// Starts the session task of `device_id`. It runs until [`SessionHandle::shutdown`] or
    /// until every handle and the event receiver are dropped.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(&self, device_id: &str, credential: Credential) -> Session {
        let device_id: Arc<str> = Arc::from(device_id);
        let (shared, commands, events) = session::spawn(self, device_id.clone(), credential);
        Session {
            handle: SessionHandle {
                device_id,
                shared,
                commands,
            },
            events,
        }
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

/// Process-wide source of request ids.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// Sends twin requests on one identity's session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    device_id: Arc<str>,
    shared: Arc<session::Shared>,
    commands: mpsc::Sender<session::Command>,
}

impl SessionHandle {
    /// The identity of this session.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// A fresh request id (`$rid`), unique within this process's sessions.
    pub fn next_request_id(&self) -> String {
        NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// GETs the full twin.
    ///
    /// A 200 whose body is not a twin document is reported as `Status { status: 200, .. }`
    /// with a message starting "malformed twin document".
    pub async fn get_twin(&self) -> Result<TwinDocument, RequestError> {
        let rid = self.next_request_id();
        let raw = self
            .shared
            .request(&rid, topics::get_twin(&rid), Vec::new())
            .await?;
        response::get_result(&raw)
    }

    /// `PATCH`es reported properties under `request_id`; `Ok` carries the new reported
    /// `$version` from the 204.
    ///
    /// `request_id` should come from [`SessionHandle::next_request_id`]: a request id that is
    /// still pending is replaced, and the earlier request resolves to `LinkLost`.
    pub async fn patch_reported(
        &self,
        request_id: &str,
        patch: &Value,
    ) -> Result<i64, RequestError> {
        let raw = self
            .shared
            .request(
                request_id,
                topics::patch_reported(request_id),
                patch.to_string().into_bytes(),
            )
            .await?;
        response::patch_result(&raw)
    }

    /// Disconnects cleanly (MQTT DISCONNECT) and stops the session task. Returns once the
    /// task has ended (at once if it already had).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(session::Command::Shutdown(tx))
            .await
            .is_ok()
        {
            // The task drops `tx` when it ends.
            let _ = rx.await;
        }
    }
}
