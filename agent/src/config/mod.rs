//! The configuration: `/etc/twinbridge/config.toml` plus the drop-ins `config.d/*.toml`
//! beside it.
//!
//! # Files
//!
//! The main file is read first, then every `*.toml` in `config.d/` next to it, in lexical
//! order of their names (hidden files and other extensions, such as `.dpkg-old`, are
//! skipped). Later files deep-merge into earlier ones: a table merges key by key, any other
//! value replaces the earlier one (an array, such as a device's `points`, is replaced whole),
//! and a `[[device]]` entry merges into the earlier device with the same `id` (so a drop-in
//! can override one field of a device) or, with a new id, is appended; `[[bus]]` entries
//! merge the same way by `name`. Relative paths in any file are resolved against the main
//! file's directory.
//!
//! Unknown keys are errors. Every error names file, line, column, section and field and says
//! what was expected; loading reports all errors, not just the first.
//!
//! # Schema
//!
//! ```toml
//! [gateway]
//! id = "gw-plant7-01"                  # required: the gateway's own identity (it has a twin)
//! state_dir = "/var/lib/twinbridge"    # default; the SQLite file is state_dir/twinbridge.db
//! log_level = "info"                   # default; or directives "info,twinbridge::hub=debug";
//!                                      # RUST_LOG / TWINBRIDGE_LOG override it
//! # auth, keys_file, group_key_file, cert_file, key_file: as for [[device]]
//!
//! [hub]
//! host = "myhub.azure-devices.net"     # required
//! port = 8883                          # default by transport: 8883 mqtt, 443 mqtt-ws
//! transport = "mqtt"                   # "mqtt" | "mqtt-ws"
//! ca_file = "/etc/twinbridge/ca.pem"   # extra trusted root (PEM), must exist
//! sas_token_lifetime = "1h"            # at least 10s
//! keep_alive = "60s"                   # 1s ..= 65535s
//! request_timeout = "30s"
//! connects_per_sec = 5.0               # gateway-wide pacing: MQTT connects
//! twin_reads_per_sec = 20.0            #   twin GETs
//! twin_updates_per_sec = 10.0          #   reported PATCHes
//! proxy = "http://user:pass@proxy.local:3128"  # HTTP CONNECT proxy, http:// only
//! # defaults for every identity's credentials:
//! auth = "sas"                         # "sas" | "group-key" | "x509"
//! keys_file = "/etc/twinbridge/keys.toml"      # sas: TOML table, device-id = "base64 key"
//! group_key_file = "/etc/twinbridge/group.key" # group-key: the enrollment group key (base64)
//!
//! [hub.backoff]                        # reconnect backoff of each identity's session
//! initial = "1s"
//! max = "5m"
//! multiplier = 2.0                     # >= 1
//! jitter = 0.2                         # 0 ..= 1
//!
//! [[device]]
//! id = "meter-01"                      # required: the device identity (and twin) in the hub
//! auth = "x509"                        # override of hub.auth
//! cert_file = "/etc/twinbridge/certs/meter-01.pem"  # x509 only, required then
//! key_file = "/etc/twinbridge/certs/meter-01.key"   # x509 only, required then
//! # keys_file (sas) and group_key_file (group-key) override the hub's
//! history = "latest"                   # "latest" (default) | "every-change"
//! history_max_bytes = 1048576          # every-change only: bound of the queued patches
//! history_max_age = "7d"               # every-change only
//! ```
//!
//! The sessions share one uplink, so the backoff is not the whole story: while no session is
//! connected, one of them retries whenever the gateway made no connect attempt for 5 s
//! (`hub::session::OUTAGE_PROBE`: one CONNECT per 5 s for the whole gateway during a hub
//! outage, not per identity), and when a session connects after failing, every session still
//! waiting out its backoff retries at once, at the `connects_per_sec` pace. So after an outage
//! of any length the gateway is back within about 5 s of the hub, and all its identities
//! about (identities / `connects_per_sec`) seconds later. An identity whose credentials the
//! hub refuses (wrong key, disabled device) keeps to its own backoff and never probes.
//!
//! Identity ids (gateway and devices) must be valid IoT Hub device ids: at most 128
//! characters, ASCII alphanumerics and `-.%_*?!(),:=@$'`; they are unique, and no device has
//! the gateway's id. Credentials themselves are resolved by [`crate::credentials`].
//!
//! # The field side
//!
//! ```toml
//! [[bus]]
//! name = "rs485-a"                     # required, unique; letters, digits, - _ .
//! # exactly one of:
//! port = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"  # Modbus RTU
//! tcp = "10.0.0.5:502"                 # Modbus TCP (port 502 by default)
//! rtu_over_tcp = "10.0.0.6:4001"       # RTU frames through a serial device server
//! # serial only (port): defaults 9600 8N1
//! baud = 9600
//! parity = "none"                      # "none" | "even" | "odd"
//! data_bits = 8                        # Modbus RTU: 8 only
//! stop_bits = 1                        # 1 | 2
//! # any bus (defaults: device_protocols::bus::BusConfig::new's):
//! timeout = "500ms"                    # request sent -> complete answer
//! turnaround = "0ms"                   # silence after each answer
//!
//! [[device]]
//! id = "meter-01"
//! bus = "rs485-a"                      # a [[bus]] name; without it the device is an
//!                                      # identity only and takes none of the keys below
//! unit = 1                             # required with bus: 1..=247, unique per bus
//! poll = "5s"                          # default 5s
//! profile = "eastron-sdm120"           # either a profile ...
//! points = [                           # ... or inline points (not both)
//!   { name = "setpoint", table = "holding", address = 100, type = "i16", scale = 0.1,
//!     writable = true, property = "heating.setpoint" },
//! ]
//! ```
//!
//! Two buses cannot share a serial port or TCP endpoint. A bus maps onto
//! [`device_protocols::bus::BusConfig`] in one place (`field::bus_config`); what the
//! configuration leaves out keeps the bus runtime's defaults.
//!
//! A point takes `name` (unique within the device), `table` (`coil`, `discrete_input`,
//! `input`, `holding`, and `device_protocols`' aliases), `address` (zero-based), `type`
//! (`bool`, `bit` with `bit = 0..15`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`,
//! `f64`, `string` with `length` in bytes), `order` (`ABCD` default, `CDAB`, `BADC`,
//! `DCBA`), `scale` and `offset` (numeric types), `unit` (of measure), `deadband` (≥ 0,
//! numeric types), `writable`, `write_multiple`, and `property`. The combinations are
//! checked by [`device_protocols::point::Point::validated`], reported at the point's field.
//!
//! `property` is the twin path of the value under `reported` (and, for a writable point,
//! under `desired`), dotted: `"power.active"` is `reported.power.active`; a leading
//! `reported.` is accepted and dropped; by default it is the point's name. Every key obeys
//! the hub's rules ([`crate::twin::rules`]: no `.`, `$`, space or control character, at most
//! 1 KB, the depth limit counted with the acknowledgement object a writable point reports);
//! `gateway` is reserved at the top level (the link health); no two points of a device map
//! to the same path or to a path and its parent.
//!
//! **Renaming a property between runs** (or a point's name when it has no `property`, or
//! removing a point): until the gateway runs with the new configuration, the twin keeps the
//! old key with its last reported value. When the bridge starts, it deletes (sets to `null`)
//! every reported key of the device, at any depth, that no point maps to any more, so the
//! old key never looks current; it keeps `gateway` (the link health) and the
//! acknowledgement of a desired value the device refused (so the back end still sees why).
//! A desired value under the old path is no longer applied.
//!
//! # Line devices
//!
//! A device that prints one reading per line on its own serial port (no bus, no unit):
//!
//! ```toml
//! [[device]]
//! id = "weather-01"
//! [device.line]
//! port = "/dev/serial/by-id/usb-Prolific_Technology_Inc._USB-Serial_Controller-if00-port0"
//! baud = 9600                          # baud, parity, data_bits (5..=8), stop_bits: as a bus
//! protocol = "key-value"               # required: "json-lines" | "key-value"
//! ending = "any"                       # "any" (default) | "lf" | "crlf" | "cr"
//! max_line = 4096                      # longer lines are skipped as malformed
//! command = "SET {name} {value}\r\n"   # for desired values; without it, read only
//! property = "weather"                 # the readings' fields go under reported.weather
//! ```
//!
//! A serial port is used by one bus or line device only.
//!
//! # Profiles
//!
//! `profile = "NAME"` loads `profiles/NAME.toml` beside the main file ([`PROFILE_DIR`]), else
//! `/usr/share/twinbridge/profiles/NAME.toml` ([`SYSTEM_PROFILE_DIR`], where the package
//! installs its examples): a local file of the same name takes precedence. A name is a plain
//! file name (letters, digits, `-`, `_`, `.`). A profile file holds an optional
//! `description` and `[[point]]` tables with the keys of a point; its errors name the
//! profile file, line and column, and are reported once however many devices use it. Each
//! file is read once ([`Config::profile_files`]).
//!
//! # Warnings
//!
//! [`Config::warnings`] lists what is valid but will not work as asked: a serial bus whose
//! poll cycle needs more line time ([`wire`]) than its devices' shortest poll period.
//! `check-config` prints them on stderr, prefixed `warning:`, and still exits 0.

mod error;
mod field;
mod schema;
mod tree;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use device_protocols::bus::{BusConfig, Transport, UnitConfig};
use device_protocols::line::{LineDeviceConfig, Template};
use device_protocols::point::Point;

use crate::hub;
use crate::store::HistoryLimits;

pub use error::{ConfigError, ConfigErrors, Location};
pub(crate) use schema::is_log_filter;

/// Line and column lookup for files read elsewhere (the keys file).
pub(crate) fn line_index(text: &str) -> tree::LineIndex<'_> {
    tree::LineIndex::new(text)
}

/// Where the configuration lives unless `--config` or `$TWINBRIDGE_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/twinbridge/config.toml";

/// The environment variable that overrides [`DEFAULT_PATH`].
pub const PATH_ENV: &str = "TWINBRIDGE_CONFIG";

/// The drop-in directory's name, beside the main file.
pub const DROP_IN_DIR: &str = "config.d";

/// The profile directory's name, beside the main file: `profile = "NAME"` is
/// `profiles/NAME.toml` there, else in [`SYSTEM_PROFILE_DIR`].
pub const PROFILE_DIR: &str = "profiles";

/// Where the package installs its profiles; a profile of the same name beside the
/// configuration takes precedence.
pub const SYSTEM_PROFILE_DIR: &str = "/usr/share/twinbridge/profiles";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[hub]`.
    pub hub: HubConfig,
    /// `[[device]]`, in file order (merged devices keep their first position).
    pub devices: Vec<DeviceConfig>,
    /// `[[bus]]`, in file order (merged buses keep their first position).
    pub buses: Vec<BusSettings>,
    /// The configuration files read, in merge order.
    pub files: Vec<PathBuf>,
    /// The profile files read (each once, however many devices use it), in the order they
    /// were first named.
    pub profile_files: Vec<PathBuf>,
}

/// `[gateway]`: the gateway's own identity and local state.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The gateway's device id in the hub (it has a twin too).
    pub id: String,
    /// Directory of the local state (the SQLite file).
    pub state_dir: PathBuf,
    /// `log_level`: the log filter when neither `RUST_LOG` nor `TWINBRIDGE_LOG` is set (a
    /// level or `tracing` filter directives); `None`: `info`.
    pub log_level: Option<String>,
    /// How the gateway identity authenticates (hub defaults applied).
    pub auth: AuthConfig,
    /// Where the id is set (for messages about this identity).
    pub defined_at: Location,
}

/// `[hub]`: how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Host name of the hub.
    pub host: String,
    /// Port; `None` = the transport's default.
    pub port: Option<u16>,
    /// MQTT or MQTT over WebSocket.
    pub transport: hub::Transport,
    /// Extra trusted root CA (PEM).
    pub ca_file: Option<PathBuf>,
    /// Lifetime of each SAS token.
    pub sas_token_lifetime: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long a twin request waits for its answer.
    pub request_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Gateway-wide MQTT connects per second.
    pub connects_per_sec: f64,
    /// Gateway-wide twin GETs per second.
    pub twin_reads_per_sec: f64,
    /// Gateway-wide reported `PATCH`es per second.
    pub twin_updates_per_sec: f64,
    /// HTTP CONNECT proxy.
    pub proxy: Option<hub::ProxySettings>,
}

/// `[[device]]`: one attached device and its identity in the hub.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The device id in the hub.
    pub id: String,
    /// `Some` with `history = "every-change"`: every intermediate reported value is queued,
    /// within these bounds; `None`: only the latest state is synced.
    pub history: Option<HistoryLimits>,
    /// How the device identity authenticates (hub defaults applied).
    pub auth: AuthConfig,
    /// Where the id is set (for messages about this identity).
    pub defined_at: Location,
    /// The device's place on a field bus and its point map; `None` for an identity-only
    /// device (no `bus`).
    pub field: Option<FieldBinding>,
    /// A line device's own serial port and format (`[device.line]`); `None` otherwise. A
    /// device has at most one of `field` and `line`.
    pub line: Option<LineBinding>,
}

/// `[device.line]`: a device on its own serial port that prints one reading per line
/// (`device_protocols::line`).
#[derive(Debug, Clone)]
pub struct LineBinding {
    /// The settings for [`device_protocols::line::LineDevice::spawn`]: named after the
    /// device id, with its port and line format; the rest at `LineDeviceConfig::new`'s
    /// defaults.
    pub config: LineDeviceConfig,
    /// The command that sets a value (`{name}` and `{value}` placeholders) for desired
    /// properties; `None`: the device takes no commands.
    pub command: Option<Template>,
    /// Where a reading's fields go under `reported` (`["weather"]`: `reported.weather.temp`);
    /// empty: at the top level.
    pub property: Vec<String>,
}

/// `[[bus]]`: one field bus (a serial line, a Modbus TCP endpoint, or RTU over TCP).
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// The bus's name (`[[bus]] name`), which devices refer to.
    pub name: String,
    /// The settings for [`device_protocols::bus::Bus::spawn`] (bus defaults where the
    /// configuration says nothing).
    pub config: BusConfig,
    /// Where the name is set.
    pub defined_at: Location,
}

/// A device's field side: which unit on which bus, how often to poll it, and its points.
#[derive(Debug, Clone)]
pub struct FieldBinding {
    /// The bus's name; always names one of [`Config::buses`].
    pub bus: String,
    /// The unit (slave) id, 1–247, unique on its bus.
    pub unit: u8,
    /// Poll period.
    pub poll: Duration,
    /// The points, in file order; names and property paths unique within the device.
    pub points: Vec<PointBinding>,
    /// The profile the points came from (`profile = "…"`), `None` for inline points.
    pub profile: Option<String>,
}

impl FieldBinding {
    /// The unit as [`device_protocols::bus::Bus::spawn`] takes it (the bus's planner limits).
    pub fn unit_config(&self) -> UnitConfig {
        UnitConfig::new(
            self.unit,
            self.poll,
            self.points.iter().map(|p| p.point.clone()).collect(),
        )
    }
}

/// One point of a device and the twin property it maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct PointBinding {
    /// The point (validated by `device_protocols`' rules).
    pub point: Point,
    /// The property path under `reported` (and, for a writable point, under `desired`):
    /// `["power", "active"]` for `property = "power.active"`. Never empty; each key obeys
    /// the hub's key rules; the first key is never `gateway`.
    pub property: Vec<String>,
    /// Changes smaller than this (in engineering units) are not reported; `None`: every
    /// change is.
    pub deadband: Option<f64>,
    /// Where the point is defined (its table or inline table), in the configuration or in a
    /// profile file.
    pub defined_at: Location,
}

/// A file named by the configuration, and where it was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The file (relative paths already resolved against the configuration directory).
    pub path: PathBuf,
    /// Where the configuration names it.
    pub defined_at: Location,
}

/// How one identity authenticates; resolved into a [`hub::Credential`] by
/// [`crate::credentials::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// A symmetric key: the file named after the id in `$CREDENTIALS_DIRECTORY`, else the
    /// entry for the id in `keys_file`.
    Sas {
        /// TOML table `device-id = "base64 key"`.
        keys_file: Option<FileSetting>,
    },
    /// A key derived from an enrollment group key: `group-key` in `$CREDENTIALS_DIRECTORY`,
    /// else `group_key_file`.
    GroupKey {
        /// The group key (base64).
        group_key_file: Option<FileSetting>,
    },
    /// An X.509 client certificate and its key.
    X509 {
        /// Certificate chain (PEM).
        cert_file: FileSetting,
        /// Private key (PEM).
        key_file: FileSetting,
    },
}

impl AuthConfig {
    /// The `auth` value that selects this method.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Sas { .. } => "sas",
            Self::GroupKey { .. } => "group-key",
            Self::X509 { .. } => "x509",
        }
    }
}

/// Default `history_max_bytes`.
pub const DEFAULT_HISTORY_MAX_BYTES: u64 = 1024 * 1024;
/// Default `history_max_age`.
pub const DEFAULT_HISTORY_MAX_AGE: Duration = Duration::from_hours(24 * 7);
/// Smallest `sas_token_lifetime`.
pub const MIN_SAS_TOKEN_LIFETIME: Duration = Duration::from_secs(10);

impl Config {
    /// Reads `path` and the drop-ins in `config.d/` beside it, merges and validates them.
    /// On failure, returns every error found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        schema::load(path)
    }

    /// Validates configuration text as if it were the only file, at `path` (which is not
    /// read; relative paths resolve against its directory, and profiles are looked for in
    /// its `profiles/` and the system directory, on disk). For tests and tools.
    pub fn from_str_at(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        schema::load_texts(path, &[(path.to_path_buf(), text.to_owned())])
    }

    /// `$TWINBRIDGE_CONFIG`, or `/etc/twinbridge/config.toml`.
    pub fn default_path() -> PathBuf {
        std::env::var_os(PATH_ENV)
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
    }

    /// The SQLite file: `state_dir/twinbridge.db`.
    pub fn store_path(&self) -> PathBuf {
        self.gateway.state_dir.join("twinbridge.db")
    }

    /// Every identity id, the gateway's first.
    pub fn identity_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.gateway.id.as_str()).chain(self.devices.iter().map(|d| d.id.as_str()))
    }

    /// The hub link settings (wall clock and packet size at their defaults).
    pub fn link_settings(&self) -> hub::LinkSettings {
        let h = &self.hub;
        let mut settings = hub::LinkSettings::new(h.host.clone());
        settings.port = h.port;
        settings.transport = h.transport;
        settings.ca_file.clone_from(&h.ca_file);
        settings.proxy.clone_from(&h.proxy);
        settings.token_lifetime = h.sas_token_lifetime;
        settings.keep_alive = h.keep_alive;
        settings.request_timeout = h.request_timeout;
        settings.backoff = h.backoff;
        settings
    }

    /// Warnings about a configuration that is valid but will not work as asked, in bus
    /// order: a serial port named by its kernel number (`/dev/ttyUSB0`, `/dev/ttyACM0`),
    /// which changes after a replug or a reboot; and each serial bus whose poll cycle (the
    /// wire time of every unit's planned reads, see [`wire`]) takes longer than the
    /// shortest poll period of its devices. TCP buses are not checked. Each line is one
    /// warning, without a `warning:` prefix.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for bus in &self.buses {
            let Transport::Serial(serial) = &bus.config.transport else {
                continue;
            };
            let port = serial.path.to_string_lossy();
            if ["/dev/ttyUSB", "/dev/ttyACM"]
                .iter()
                .any(|p| port.starts_with(p))
            {
                warnings.push(format!(
                    "bus {}: port {port} may name another adapter after a replug or a reboot; use its /dev/serial/by-id/… link ({})",
                    bus.name, bus.defined_at
                ));
            }
            let fields: Vec<&FieldBinding> = self
                .devices
                .iter()
                .filter_map(|d| d.field.as_ref())
                .filter(|f| f.bus == bus.name)
                .collect();
            let Some(shortest) = fields.iter().map(|f| f.poll).min() else {
                continue;
            };
            let points: Vec<Vec<Point>> = fields
                .iter()
                .map(|f| f.points.iter().map(|p| p.point.clone()).collect())
                .collect();
            let units: Vec<&[Point]> = points.iter().map(Vec::as_slice).collect();
            let needed = wire::cycle_wire_time(
                serial.baud,
                bus.config.turnaround,
                &bus.config.limits,
                &units,
            );
            if needed > shortest {
                warnings.push(format!(
                    "bus {} needs {} per cycle at {} baud, devices ask every {} ({} more than that; raise the baud rate or the poll periods)",
                    bus.name,
                    wire::format_seconds(needed),
                    serial.baud,
                    wire::format_seconds(shortest),
                    wire::format_seconds(needed.saturating_sub(shortest)),
                ));
            }
        }
        warnings
    }

    /// The gateway-wide pacing. Each bucket holds one second's worth of tokens (at least
    /// one), so a quiet gateway may spend a short burst but never more than the rate after.
    pub fn pacing(&self) -> hub::Pacing {
        let limiter = |rate: f64| hub::RateLimiter::new(rate, burst_for(rate));
        hub::Pacing {
            connects: limiter(self.hub.connects_per_sec),
            gets: limiter(self.hub.twin_reads_per_sec),
            updates: limiter(self.hub.twin_updates_per_sec),
        }
    }
}

/// One second's worth of tokens, at least 1.
fn burst_for(rate: f64) -> u32 {
    // Validation bounds rates to finite positive numbers; clamp keeps the cast exact anyway.
    rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_one_second_of_tokens_and_at_least_one() {
        assert_eq!(burst_for(0.2), 1);
        assert_eq!(burst_for(5.0), 5);
        assert_eq!(burst_for(10.5), 11);
    }
}
