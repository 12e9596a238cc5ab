//! A local stand-in for Azure IoT Hub's device twin surface: device MQTT and the service REST API.
//!
//! Embed it with [`Emulator::start`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), hub_emulator::StartError> {
//! use hub_emulator::{Config, Emulator, state::DeviceIdentity};
//! let mut config = Config::ephemeral();
//! config.devices.push(DeviceIdentity::new("meter-01", DeviceIdentity::random_key(), DeviceIdentity::random_key()));
//! let hub = Emulator::start(config).await?;
//! println!("MQTT on {}, over WebSocket on {:?}", hub.mqtt_addr(), hub.ws_addr());
//! let password = hub.device_token("meter-01", 3600).expect("registered above");
//! let username = hub.username("meter-01");
//! # let _ = (password, username);
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

pub mod control;
pub mod iothub_error;
pub mod mqtt;
pub mod query;
pub mod rules;
pub mod sas;
pub mod service;
pub mod state;
pub mod throttle;
pub mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::state::{
    CloseReason, DeviceIdentity, Hub, HubError, HubSettings, SharedState, now_epoch_secs,
};

/// How long [`RunningEmulator::shutdown`] waits for device sessions to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The `api-version` the emulator puts in usernames it builds (any value is accepted).
pub const API_VERSION: &str = "2021-04-12";

/// What to start. Addresses with port 0 get an ephemeral port (read it back from
/// [`RunningEmulator`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// The hub host name devices must name in their username and SAS `sr`.
    pub hostname: String,
    /// Device MQTT listener.
    pub mqtt_bind: SocketAddr,
    /// TLS for the MQTT and WebSocket listeners; `None` = plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Device MQTT over WebSocket listener (upgrade on `/$iothub/websocket`, subprotocol
    /// `mqtt`; TLS when [`Config::tls`] is set); `None` = not started.
    pub ws_bind: Option<SocketAddr>,
    /// Service REST API listener; `None` = not started.
    pub service_bind: Option<SocketAddr>,
    /// Control endpoint listener; `None` = not started.
    pub control_bind: Option<SocketAddr>,
    /// Devices to register at start (added to, or updating, those of the state file).
    pub devices: Vec<DeviceIdentity>,
    /// Persist registry and twins here; `None` = memory only.
    pub state_file: Option<PathBuf>,
    /// Twin operations per second across the hub; `None` = unlimited.
    pub twin_ops_per_sec: Option<f64>,
    /// Shared-access key (base64) the service API requires; `None` = no auth.
    pub service_key: Option<String>,
    /// Clock skew tolerated on SAS token expiry.
    pub sas_skew: Duration,
}

impl Config {
    /// Everything on loopback with ephemeral ports, no TLS, no persistence, no throttling,
    /// no tolerated clock skew (so expiry tests need not wait five minutes); host name
    /// `127.0.0.1`.
    pub fn ephemeral() -> Self {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            hostname: "127.0.0.1".into(),
            mqtt_bind: any,
            tls: None,
            ws_bind: Some(any),
            service_bind: Some(any),
            control_bind: Some(any),
            devices: Vec::new(),
            state_file: None,
            twin_ops_per_sec: None,
            service_key: None,
            sas_skew: Duration::ZERO,
        }
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("binding the {what} listener to {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// Loading the state file or registering a device failed.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Why a registry file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("reading registry file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON of the expected shape.
    #[error("parsing registry file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(rename = "device", alias = "devices", default)]
    devices: Vec<DeviceIdentity>,
}

/// Reads a registry file: JSON when the name ends in `.json`, TOML otherwise. Both hold a list
/// `device` (or `devices`) of `{ id, primary_key, secondary_key, thumbprint?, status? }`.
pub fn load_registry_file(path: &Path) -> Result<Vec<DeviceIdentity>, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_err = |message: String| RegistryError::Parse {
        path: path.to_owned(),
        message,
    };
    let file: RegistryFile = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
    };
    Ok(file.devices)
}

/// The emulator's entry point.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Binds every listener, loads state and registry, and starts serving. Returns once all
    /// listeners are bound, so the addresses in the handle accept connections immediately.
    pub async fn start(config: Config) -> Result<RunningEmulator, StartError> {
        let hub = Hub::new(HubSettings {
            hostname: config.hostname.clone(),
            service_key: config.service_key.clone(),
            sas_skew: config.sas_skew,
            twin_ops_per_sec: config.twin_ops_per_sec,
            state_file: config.state_file.clone(),
        })?;
        hub.load_registry(config.devices.clone())?;

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let mqtt = bind("MQTT", config.mqtt_bind).await?;
        let mqtt_addr = local_addr(&mqtt, "MQTT", config.mqtt_bind)?;
        let mut tasks = vec![tokio::spawn(mqtt::accept_loop(
            mqtt,
            hub.clone(),
            config.tls.clone(),
            mqtt::Transport::Raw,
        ))];
        let mut ws_addr = None;
        if let Some(addr) = config.ws_bind {
            let listener = bind("WebSocket", addr).await?;
            ws_addr = Some(local_addr(&listener, "WebSocket", addr)?);
            tasks.push(tokio::spawn(mqtt::accept_loop(
                listener,
                hub.clone(),
                config.tls.clone(),
                mqtt::Transport::WebSocket,
            )));
        }

        let mut service_addr = None;
        if let Some(addr) = config.service_bind {
            let listener = bind("service", addr).await?;
            service_addr = Some(local_addr(&listener, "service", addr)?);
            tasks.push(serve_http(listener, service::router(hub.clone())));
        }
        let mut control_addr = None;
        if let Some(addr) = config.control_bind {
            let listener = bind("control", addr).await?;
            control_addr = Some(local_addr(&listener, "control", addr)?);
            tasks.push(serve_http(listener, control::router(hub.clone())));
        }
        Ok(RunningEmulator {
            hub,
            mqtt_addr,
            ws_addr,
            tls: config.tls.is_some(),
            service_addr,
            control_addr,
            tasks,
        })
    }
}

fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn serve_http(listener: TcpListener, router: axum::Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    })
}

/// A running emulator. Dropping it stops every listener and connection (as
/// [`RunningEmulator::shutdown`] does, without waiting).
#[derive(Debug)]
pub struct RunningEmulator {
    hub: SharedState,
    mqtt_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    tls: bool,
    service_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningEmulator {
    /// The hub's state (registry, twins, counters, faults).
    pub fn hub(&self) -> &SharedState {
        &self.hub
    }

    /// The bound device MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The bound MQTT over WebSocket address, if started. Devices connect to
    /// `wss://HOST:PORT/$iothub/websocket` (`ws://` without TLS) with subprotocol `mqtt`.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// Whether the MQTT and WebSocket listeners speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The bound service API address, if started.
    pub fn service_addr(&self) -> Option<SocketAddr> {
        self.service_addr
    }

    /// The bound control endpoint address, if started.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The hub host name.
    pub fn hostname(&self) -> &str {
        self.hub.hostname()
    }

    /// The MQTT username a device must send: `{host}/{deviceId}/?api-version=2021-04-12`.
    pub fn username(&self, device_id: &str) -> String {
        mqtt_username(self.hub.hostname(), device_id)
    }

    /// A SAS token for a registered device, signed with its primary key, valid for
    /// `valid_secs` from now; `None` for an unknown device.
    pub fn device_token(&self, device_id: &str, valid_secs: u64) -> Option<String> {
        let identity = self.hub.identity(device_id)?;
        Some(sas::generate(
            self.hub.hostname(),
            device_id,
            &identity.primary_key,
            now_epoch_secs() + valid_secs,
        ))
    }

    /// The startup line the binary prints:
    /// `listening mqtt=ADDR tls=BOOL ws=ADDR|off service=ADDR|off control=ADDR|off`
    /// (space-separated `key=value` fields; readers should look fields up by key).
    pub fn listening_line(&self) -> String {
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        format!(
            "listening mqtt={} tls={} ws={} service={} control={}",
            self.mqtt_addr,
            self.tls,
            show(self.ws_addr),
            show(self.service_addr),
            show(self.control_addr)
        )
    }

    /// Stops accepting, closes every device connection and waits for the listeners to end.
    /// State is persisted on every change, and activity times once more here, so nothing is
    /// lost.
    pub async fn shutdown(mut self) {
        self.hub.drop_connections(None, CloseReason::Shutdown);
        // Let the sessions unregister themselves (each writes its disconnect time) before they
        // are aborted: an aborted session would do so later, after a restarted emulator may
        // already have loaded the state file. Bounded: a session stuck in a write is aborted.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.hub.connected_devices().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.hub.persist_activity();
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The MQTT username of a device: `{host}/{deviceId}/?api-version=2021-04-12`.
pub fn mqtt_username(host: &str, device_id: &str) -> String {
    format!("{host}/{device_id}/?api-version={API_VERSION}")
}
