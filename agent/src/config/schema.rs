//! Reading the files and validating the merged tree into a [`Config`], collecting every
//! error with its position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;

use super::error::{ConfigError, ConfigErrors};
use super::field::{self, BusNames, Ports, Profiles};
use super::tree::{self, Entry, Node, Pos, Sources, Table, Value};
use super::{
    AuthConfig, Config, DEFAULT_HISTORY_MAX_AGE, DEFAULT_HISTORY_MAX_BYTES, DROP_IN_DIR,
    DeviceConfig, FileSetting, GatewayConfig, HubConfig, MIN_SAS_TOKEN_LIFETIME,
};
use crate::hub::{self, ProxySettings, Secret, Transport};
use crate::store::HistoryLimits;

/// Reads `path` and its drop-ins, then validates.
pub(super) fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let main = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(None, format!("reading config file {}: {e}", path.display()))
    })?;
    let mut texts = vec![(path.to_path_buf(), main)];
    let mut errors = Vec::new();
    for file in drop_ins(path, &mut errors) {
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) => errors.push(ConfigError::new(
                None,
                format!("reading config file {}: {e}", file.display()),
            )),
        }
    }
    match load_texts(path, &texts) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(more) => {
            errors.extend(more.0);
            Err(ConfigErrors(errors))
        }
    }
}

/// The `*.toml` files in `config.d/` beside `path`, in lexical order of their names.
fn drop_ins(path: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let dir = base_dir(path).join(DROP_IN_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errors.push(ConfigError::new(
                None,
                format!("reading drop-in directory {}: {e}", dir.display()),
            ));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.')
                && Path::new(&*name).extension().is_some_and(|x| x == "toml")
                && entry.path().is_file()
        })
        .map(|entry| entry.path())
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Parses, merges and validates `texts` (the main file first), collecting all errors.
pub(super) fn load_texts(main: &Path, texts: &[(PathBuf, String)]) -> Result<Config, ConfigErrors> {
    let mut sources = Sources {
        base_dir: base_dir(main),
        files: texts.iter().map(|(p, _)| p.clone()).collect(),
    };
    let mut errors = Vec::new();
    let mut root = Table::new();
    for (file, (_, text)) in texts.iter().enumerate() {
        let (table, file_errors) = tree::parse_file(text, file, &sources);
        errors.extend(file_errors);
        tree::merge_root(&mut root, table);
    }
    // A file with syntax errors yields a best-effort tree whose values may be placeholders:
    // validating it would add confusing errors, so syntax errors are reported alone.
    let config = if errors.is_empty() {
        // Profiles are read first so that their files have places in `sources`; their
        // syntax errors only fail the devices that use them.
        let dirs = field::profile_dirs(&sources.base_dir);
        let (mut profiles, profile_errors) = field::load_profiles(&root, &dirs, &mut sources);
        let mut sink = Sink {
            sources: &sources,
            errors: profile_errors,
        };
        let config = validate(&root, texts.len(), &mut profiles, &mut sink);
        errors = sink.errors;
        config
    } else {
        None
    };
    errors.sort_by_key(|(pos, _)| *pos);
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors.into_iter().map(|(_, e)| e).collect())),
    }
}

/// Collects errors with their positions (for sorting into file order).
pub(super) struct Sink<'s> {
    pub(super) sources: &'s Sources,
    pub(super) errors: Vec<(Option<Pos>, ConfigError)>,
}

impl Sink<'_> {
    pub(super) fn push(
        &mut self,
        pos: Pos,
        context: &str,
        field: &str,
        message: impl Into<String>,
    ) {
        let location = Some(self.sources.location(pos));
        self.errors.push((
            Some(pos),
            ConfigError::field(location, context, field, message),
        ));
    }
}

/// A table being validated: its entries, where it starts, how errors name it.
pub(super) struct Section<'t> {
    pub(super) table: &'t Table,
    /// The table's header, or the place to report missing keys at.
    pub(super) pos: Pos,
    /// `hub`, `device "meter-01"`…
    pub(super) context: String,
    /// Prefix of field names for nested tables (`backoff.`).
    pub(super) prefix: String,
}

const EMPTY: &Table = &Table::new();

impl<'t> Section<'t> {
    /// A top-level section (`hub`) or an entry of an array of tables (`device "m"`).
    pub(super) fn new(table: &'t Table, pos: Pos, context: &str) -> Self {
        Self {
            table,
            pos,
            context: context.to_owned(),
            prefix: String::new(),
        }
    }

    pub(super) fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn get(&self, key: &str) -> Option<&'t Entry> {
        self.table.get(key)
    }

    /// Reports every key not in `allowed`.
    pub(super) fn deny_unknown(&self, allowed: &[&str], sink: &mut Sink<'_>) {
        for (key, entry) in self.table {
            if !allowed.contains(&key.as_str()) {
                sink.push(
                    entry.key_pos,
                    &self.context,
                    &self.field(key),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    pub(super) fn wrong(&self, sink: &mut Sink<'_>, key: &str, node: &Node, expected: &str) {
        sink.push(
            node.pos,
            &self.context,
            &self.field(key),
            format!("expected {expected}, got {}", node.value.describe()),
        );
    }

    pub(super) fn missing(&self, sink: &mut Sink<'_>, key: &str, why: &str) {
        sink.push(
            self.pos,
            &self.context,
            &self.field(key),
            format!("missing: {why}"),
        );
    }

    pub(super) fn string(&self, key: &str, sink: &mut Sink<'_>) -> Option<(&'t str, Pos)> {
        let node = &self.get(key)?.node;
        if let Value::String(s) = &node.value {
            Some((s, node.pos))
        } else {
            self.wrong(sink, key, node, "a string");
            None
        }
    }

    pub(super) fn choice<'c>(
        &self,
        key: &str,
        choices: &[&'c str],
        sink: &mut Sink<'_>,
    ) -> Option<(&'c str, Pos)> {
        let node = &self.get(key)?.node;
        if let Some(choice) = node
            .value
            .as_str()
            .and_then(|s| choices.iter().find(|c| **c == s))
        {
            return Some((choice, node.pos));
        }
        let expected: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
        self.wrong(sink, key, node, &format!("one of {}", expected.join(", ")));
        None
    }

    /// A boolean.
    pub(super) fn boolean(&self, key: &str, sink: &mut Sink<'_>) -> Option<bool> {
        let node = &self.get(key)?.node;
        if let Value::Boolean(b) = node.value {
            Some(b)
        } else {
            self.wrong(sink, key, node, "true or false");
            None
        }
    }

    /// A duration string (humantime: "5s", "1h 30m", "250ms") of at least `min`.
    pub(super) fn duration(
        &self,
        key: &str,
        min: Duration,
        sink: &mut Sink<'_>,
    ) -> Option<Duration> {
        let node = &self.get(key)?.node;
        let Some(d) = node
            .value
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
        else {
            self.wrong(sink, key, node, "a duration like \"5s\"");
            return None;
        };
        if d < min {
            let min = if min == Duration::from_nanos(1) {
                "more than 0".to_owned()
            } else {
                format!("at least {}", humantime::format_duration(min))
            };
            sink.push(
                node.pos,
                &self.context,
                &self.field(key),
                format!(
                    "must be {min}, got {:?}",
                    node.value.as_str().unwrap_or_default()
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A number (integer or float) within `range` (inclusive; `what` describes it).
    pub(super) fn number(
        &self,
        key: &str,
        ok: impl Fn(f64) -> bool,
        what: &str,
        sink: &mut Sink<'_>,
    ) -> Option<f64> {
        let node = &self.get(key)?.node;
        let n = match node.value {
            Value::Integer(Some(i)) => i as f64,
            Value::Float(f) => f,
            _ => {
                self.wrong(sink, key, node, what);
                return None;
            }
        };
        if n.is_finite() && ok(n) {
            Some(n)
        } else {
            self.wrong(sink, key, node, what);
            None
        }
    }

    /// An integer within `min..=max` (`what` describes the range).
    pub(super) fn integer(
        &self,
        key: &str,
        min: i64,
        max: i64,
        what: &str,
        sink: &mut Sink<'_>,
    ) -> Option<i64> {
        let node = &self.get(key)?.node;
        match node.value {
            Value::Integer(Some(i)) if (min..=max).contains(&i) => Some(i),
            _ => {
                self.wrong(sink, key, node, what);
                None
            }
        }
    }

    /// A non-empty path string, resolved against the configuration directory.
    pub(super) fn path(&self, key: &str, sink: &mut Sink<'_>) -> Option<FileSetting> {
        let node = &self.get(key)?.node;
        match node.value.as_str() {
            Some(s) if !s.is_empty() => Some(FileSetting {
                path: sink.sources.resolve(s),
                defined_at: sink.sources.location(node.pos),
            }),
            _ => {
                self.wrong(sink, key, node, "a file path");
                None
            }
        }
    }

    /// A sub-table (`[hub.backoff]`); an empty one when absent.
    pub(super) fn sub(&self, key: &str, sink: &mut Sink<'_>) -> Option<Section<'t>> {
        let sub = |table, pos| Section {
            table,
            pos,
            context: self.context.clone(),
            prefix: format!("{}{key}.", self.prefix),
        };
        match self.get(key) {
            None => Some(sub(EMPTY, self.pos)),
            Some(entry) => {
                if let Value::Table(t) = &entry.node.value {
                    Some(sub(t, entry.node.pos))
                } else {
                    self.wrong(sink, key, &entry.node, "a table");
                    None
                }
            }
        }
    }
}

/// The first position of the main file: where things missing altogether are reported.
const START: Pos = Pos {
    file: 0,
    line: 1,
    column: 1,
};

/// Looks up a top-level table; reports it if it is not a table.
fn top_table<'t>(root: &'t Table, key: &str, sink: &mut Sink<'_>) -> Option<(&'t Table, Pos)> {
    let entry = root.get(key)?;
    match &entry.node.value {
        Value::Table(t) => Some((t, entry.node.pos)),
        other => {
            sink.push(
                entry.node.pos,
                "",
                key,
                format!("expected a table [{key}], got {}", other.describe()),
            );
            None
        }
    }
}

fn validate(
    root: &Table,
    config_files: usize,
    profiles: &mut Profiles,
    sink: &mut Sink<'_>,
) -> Option<Config> {
    Section::new(root, START, "").deny_unknown(&["gateway", "hub", "bus", "device"], sink);

    let section_of = |key: &str, why: &str, sink: &mut Sink<'_>| {
        if root.get(key).is_none() {
            sink.push(START, "", key, format!("missing table [{key}] ({why})"));
        }
        top_table(root, key, sink).map(|(table, pos)| Section::new(table, pos, key))
    };
    let gateway = section_of("gateway", "its id is required", sink);
    let hub = section_of("hub", "its host is required", sink);

    let hub_config = hub.as_ref().and_then(|hub| hub_config(hub, sink));
    let defaults = hub
        .as_ref()
        .map(|hub| auth_defaults(hub, sink))
        .unwrap_or_default();
    let gateway_config = gateway
        .as_ref()
        .and_then(|gateway| gateway_config(gateway, &defaults, sink));
    // The raw id, so a device with the gateway's id is reported even if [gateway] has other
    // errors.
    let gateway_id = gateway.as_ref().and_then(|g| {
        let entry = g.get("id")?;
        Some((entry.node.value.as_str()?, entry.node.pos))
    });
    let (buses, bus_names, mut ports) = field::buses(root, sink);
    let field = Field {
        buses: &bus_names,
        ports: &mut ports,
        profiles,
    };
    let devices = devices(root, &defaults, gateway_id, field, sink);

    Some(Config {
        gateway: gateway_config?,
        hub: hub_config?,
        devices: devices?,
        buses: buses?,
        files: sink.sources.files[..config_files].to_vec(),
        profile_files: sink.sources.files[config_files..].to_vec(),
    })
}

/// Checks an identity id and returns it.
fn identity_id<'t>(section: &Section<'t>, sink: &mut Sink<'_>) -> Option<(&'t str, Pos)> {
    let Some((id, pos)) = section.string("id", sink) else {
        if section.get("id").is_none() {
            section.missing(
                sink,
                "id",
                "the identity's device id in the hub is required",
            );
        }
        return None;
    };
    if let Err(why) = check_device_id(id) {
        sink.push(pos, &section.context, "id", format!("{why}, got {id:?}"));
        return None;
    }
    Some((id, pos))
}

/// Whether `id` is a valid IoT Hub device id.
pub(crate) fn check_device_id(id: &str) -> Result<(), &'static str> {
    const SPECIAL: &str = "-.%_*?!(),:=@$'";
    if id.is_empty() {
        return Err("expected a device id, not an empty string");
    }
    if id.chars().count() > 128 {
        return Err("a device id has at most 128 characters");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SPECIAL.contains(c))
    {
        return Err("a device id may only contain ASCII letters, digits and -.%_*?!(),:=@$'");
    }
    Ok(())
}

const AUTH_METHODS: &[&str] = &["sas", "group-key", "x509"];
const AUTH_KEYS: &[&str] = &[
    "auth",
    "keys_file",
    "group_key_file",
    "cert_file",
    "key_file",
];

/// The hub-level credential defaults.
#[derive(Debug, Default)]
struct AuthDefaults {
    method: Option<&'static str>,
    keys_file: Option<FileSetting>,
    group_key_file: Option<FileSetting>,
}

fn auth_defaults(hub: &Section<'_>, sink: &mut Sink<'_>) -> AuthDefaults {
    AuthDefaults {
        method: hub.choice("auth", AUTH_METHODS, sink).map(|(m, _)| m),
        keys_file: hub.path("keys_file", sink),
        group_key_file: hub.path("group_key_file", sink),
    }
}

/// An identity's credentials: its own settings over the hub's defaults.
fn auth(section: &Section<'_>, defaults: &AuthDefaults, sink: &mut Sink<'_>) -> Option<AuthConfig> {
    let own_method = section.choice("auth", AUTH_METHODS, sink);
    if own_method.is_none() && section.get("auth").is_some() {
        return None;
    }
    let method = own_method
        .map(|(m, _)| m)
        .or(defaults.method)
        .unwrap_or("sas");
    let keys_file = section.path("keys_file", sink);
    let group_key_file = section.path("group_key_file", sink);
    let cert_file = section.path("cert_file", sink);
    let key_file = section.path("key_file", sink);
    let mut ok = true;
    for (key, set, used_by) in [
        ("keys_file", keys_file.is_some(), "sas"),
        ("group_key_file", group_key_file.is_some(), "group-key"),
        ("cert_file", cert_file.is_some(), "x509"),
        ("key_file", key_file.is_some(), "x509"),
    ] {
        if set && method != used_by {
            let pos = section.get(key).map_or(section.pos, |e| e.key_pos);
            sink.push(
                pos,
                &section.context,
                key,
                format!(
                    "only used with auth = {used_by:?}, but this identity's auth is {method:?}"
                ),
            );
            ok = false;
        }
    }
    let auth = match method {
        "sas" => AuthConfig::Sas {
            keys_file: keys_file.or_else(|| defaults.keys_file.clone()),
        },
        "group-key" => AuthConfig::GroupKey {
            group_key_file: group_key_file.or_else(|| defaults.group_key_file.clone()),
        },
        _ => {
            for (key, set) in [
                ("cert_file", cert_file.is_some()),
                ("key_file", key_file.is_some()),
            ] {
                if !set && section.get(key).is_none() {
                    section.missing(sink, key, "required with auth = \"x509\"");
                }
            }
            AuthConfig::X509 {
                cert_file: cert_file?,
                key_file: key_file?,
            }
        }
    };
    ok.then_some(auth)
}

fn gateway_config(
    section: &Section<'_>,
    defaults: &AuthDefaults,
    sink: &mut Sink<'_>,
) -> Option<GatewayConfig> {
    let mut allowed = vec!["id", "state_dir", "log_level"];
    allowed.extend(AUTH_KEYS);
    section.deny_unknown(&allowed, sink);
    let id = identity_id(section, sink);
    let state_dir = match section.get("state_dir") {
        None => Some(PathBuf::from("/var/lib/twinbridge")),
        Some(_) => section.path("state_dir", sink).map(|f| f.path),
    };
    let log_level = log_level(section, sink);
    let auth = auth(section, defaults, sink);
    let (id, pos) = id?;
    Some(GatewayConfig {
        id: id.to_owned(),
        state_dir: state_dir?,
        log_level: log_level.ok()?,
        auth: auth?,
        defined_at: sink.sources.location(pos),
    })
}

/// `log_level`: a level or `tracing` filter directives (`"info,twinbridge::hub=debug"`);
/// `Ok(None)` when absent, `Err` when invalid (reported to `sink`).
fn log_level(section: &Section<'_>, sink: &mut Sink<'_>) -> Result<Option<String>, ()> {
    let Some(entry) = section.get("log_level") else {
        return Ok(None);
    };
    let expected = "a level (\"error\", \"warn\", \"info\", \"debug\", \"trace\") or filter \
                    directives like \"info,twinbridge::hub=debug\"";
    match entry.node.value.as_str() {
        Some(text) if is_log_filter(text) => Ok(Some(text.to_owned())),
        Some(text) => {
            sink.push(
                entry.node.pos,
                &section.context,
                &section.field("log_level"),
                format!("expected {expected}, got {text:?}"),
            );
            Err(())
        }
        None => {
            section.wrong(sink, "log_level", &entry.node, expected);
            Err(())
        }
    }
}

/// A level name, or `tracing` filter directives (a bare word that is not a level would be
/// taken as a target name by the filter parser: a typo like `"inof"` must be an error).
pub(crate) fn is_log_filter(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let text = text.trim();
    if text.is_empty() {
        return false;
    }
    if !text.contains(['=', ',', '[', ':']) {
        return LEVELS.contains(&text.to_ascii_lowercase().as_str());
    }
    tracing_subscriber::EnvFilter::builder().parse(text).is_ok()
}

const HUB_KEYS: &[&str] = &[
    "host",
    "port",
    "transport",
    "ca_file",
    "sas_token_lifetime",
    "keep_alive",
    "request_timeout",
    "backoff",
    "connects_per_sec",
    "twin_reads_per_sec",
    "twin_updates_per_sec",
    "proxy",
    "auth",
    "keys_file",
    "group_key_file",
];

/// Every field is validated (so all errors are reported) before any `?`.
#[allow(clippy::similar_names)]
fn hub_config(section: &Section<'_>, sink: &mut Sink<'_>) -> Option<HubConfig> {
    section.deny_unknown(HUB_KEYS, sink);
    let defaults = hub::LinkSettings::new("");
    let positive = Duration::from_nanos(1);

    let host = match section.string("host", sink) {
        None => {
            if section.get("host").is_none() {
                section.missing(sink, "host", "the hub's host name is required");
            }
            None
        }
        Some((host, pos)) => match check_host(host) {
            Ok(()) => Some(host.to_owned()),
            Err(why) => {
                sink.push(pos, "hub", "host", format!("{why}, got {host:?}"));
                None
            }
        },
    };
    let port = section
        .integer("port", 1, 65535, "a port number from 1 to 65535", sink)
        .map(|p| u16::try_from(p).expect("range checked"));
    let transport = section
        .choice("transport", &["mqtt", "mqtt-ws"], sink)
        .map(|(t, _)| match t {
            "mqtt-ws" => Transport::MqttWs,
            _ => Transport::Mqtt,
        });
    let ca_file = section.path("ca_file", sink);
    if let Some(ca) = &ca_file
        && let Err(why) = check_ca_file(&ca.path)
    {
        let pos = section.get("ca_file").expect("read above").node.pos;
        sink.push(pos, "hub", "ca_file", why);
    }
    let token = section.duration("sas_token_lifetime", MIN_SAS_TOKEN_LIFETIME, sink);
    let keep_alive = section.duration("keep_alive", Duration::from_secs(1), sink);
    if let Some(k) = keep_alive
        && k > Duration::from_secs(u64::from(u16::MAX))
    {
        let pos = section.get("keep_alive").expect("read above").node.pos;
        sink.push(
            pos,
            "hub",
            "keep_alive",
            "must be at most 65535s (MQTT keep-alive is 16-bit seconds)",
        );
    }
    let request_timeout = section.duration("request_timeout", positive, sink);
    let backoff = section
        .sub("backoff", sink)
        .map(|b| backoff(&b, defaults.backoff, sink));
    let rate = |key: &str, default: f64, sink: &mut Sink<'_>| match section.get(key) {
        None => Some(default),
        Some(_) => section.number(key, |r| r > 0.0, "a positive number (per second)", sink),
    };
    let connects = rate("connects_per_sec", 5.0, sink);
    let reads = rate("twin_reads_per_sec", 20.0, sink);
    let updates = rate("twin_updates_per_sec", 10.0, sink);
    let proxy = proxy_setting(section, sink);

    Some(HubConfig {
        host: host?,
        port: if section.get("port").is_some() {
            Some(port?)
        } else {
            None
        },
        transport: if section.get("transport").is_some() {
            transport?
        } else {
            Transport::Mqtt
        },
        ca_file: ca_file.map(|f| f.path),
        sas_token_lifetime: or_default(
            section,
            "sas_token_lifetime",
            token,
            defaults.token_lifetime,
        )?,
        keep_alive: or_default(section, "keep_alive", keep_alive, defaults.keep_alive)
            .filter(|k| *k <= Duration::from_secs(u64::from(u16::MAX)))?,
        request_timeout: or_default(
            section,
            "request_timeout",
            request_timeout,
            defaults.request_timeout,
        )?,
        backoff: backoff??,
        connects_per_sec: connects?,
        twin_reads_per_sec: reads?,
        twin_updates_per_sec: updates?,
        proxy,
    })
}

/// `hub.proxy`: `None` when absent or invalid (reported, so loading fails).
fn proxy_setting(section: &Section<'_>, sink: &mut Sink<'_>) -> Option<ProxySettings> {
    match section.get("proxy") {
        None => None,
        Some(entry) => match entry.node.value.as_str().map(parse_proxy) {
            Some(Ok(proxy)) => Some(proxy),
            Some(Err(why)) => {
                sink.push(entry.node.pos, "hub", "proxy", why);
                None
            }
            None => {
                section.wrong(
                    sink,
                    "proxy",
                    &entry.node,
                    "a URL like \"http://proxy.local:3128\"",
                );
                None
            }
        },
    }
}

/// `parsed` when the key is present (None = it was invalid), else the default.
fn or_default<T>(section: &Section<'_>, key: &str, parsed: Option<T>, default: T) -> Option<T> {
    if section.get(key).is_some() {
        parsed
    } else {
        Some(default)
    }
}

fn backoff(
    section: &Section<'_>,
    defaults: BackoffConfig,
    sink: &mut Sink<'_>,
) -> Option<BackoffConfig> {
    section.deny_unknown(&["initial", "max", "multiplier", "jitter"], sink);
    let positive = Duration::from_nanos(1);
    let initial = or_default(
        section,
        "initial",
        section.duration("initial", positive, sink),
        defaults.initial,
    );
    let max = or_default(
        section,
        "max",
        section.duration("max", positive, sink),
        defaults.max,
    );
    let multiplier = or_default(
        section,
        "multiplier",
        section.number("multiplier", |m| m >= 1.0, "a number of at least 1", sink),
        defaults.multiplier,
    );
    let jitter = or_default(
        section,
        "jitter",
        section.number(
            "jitter",
            |j| (0.0..=1.0).contains(&j),
            "a number from 0 to 1",
            sink,
        ),
        defaults.jitter,
    );
    let (initial, max) = (initial?, max?);
    if max < initial {
        let pos = section
            .get("max")
            .or_else(|| section.get("initial"))
            .map_or(section.pos, |e| e.node.pos);
        sink.push(
            pos,
            &section.context,
            &section.field("max"),
            format!(
                "must be at least initial ({}), got {}",
                humantime::format_duration(initial),
                humantime::format_duration(max)
            ),
        );
        return None;
    }
    Some(BackoffConfig {
        initial,
        max,
        multiplier: multiplier?,
        jitter: jitter?,
    })
}

/// What devices are checked against on the field side.
struct Field<'n, 'p> {
    buses: &'p BusNames<'n>,
    ports: &'p mut Ports,
    profiles: &'p mut Profiles,
}

const DEVICE_KEYS: &[&str] = &["id", "history", "history_max_bytes", "history_max_age"];

fn devices(
    root: &Table,
    defaults: &AuthDefaults,
    gateway_id: Option<(&str, Pos)>,
    mut field: Field<'_, '_>,
    sink: &mut Sink<'_>,
) -> Option<Vec<DeviceConfig>> {
    let Some(entry) = root.get("device") else {
        return Some(Vec::new());
    };
    let Value::Array(items) = &entry.node.value else {
        sink.push(
            entry.node.pos,
            "",
            "device",
            format!(
                "expected [[device]] tables, got {}",
                entry.node.value.describe()
            ),
        );
        return None;
    };
    let mut ok = true;
    let mut devices = Vec::new();
    let mut first_seen: HashMap<&str, Pos> = HashMap::new();
    // (bus, unit) -> (device, where its unit is set): a unit id is unique on its bus.
    let mut units: HashMap<(String, u8), (String, Pos)> = HashMap::new();
    for (n, item) in items.iter().enumerate() {
        let Value::Table(table) = &item.value else {
            sink.push(
                item.pos,
                &format!("device #{}", n + 1),
                "",
                format!("expected a table, got {}", item.value.describe()),
            );
            ok = false;
            continue;
        };
        let context = match table.get("id").and_then(|e| e.node.value.as_str()) {
            Some(id) => format!("device {id:?}"),
            None => format!("device #{}", n + 1),
        };
        let section = Section::new(table, item.pos, &context);
        let device = device(&section, defaults, &mut field, sink);
        if let Some((id, pos)) = table
            .get("id")
            .and_then(|e| Some((e.node.value.as_str()?, e.node.pos)))
        {
            if let Some(first) = first_seen.get(id) {
                sink.push(
                    pos,
                    &section.context,
                    "id",
                    format!(
                        "duplicate device id (first defined at {})",
                        sink.sources.location(*first)
                    ),
                );
                ok = false;
            } else {
                first_seen.insert(id, pos);
            }
            if let Some((gateway_id, gateway_pos)) = gateway_id
                && gateway_id == id
            {
                let at = sink.sources.location(gateway_pos);
                sink.push(
                    pos,
                    &section.context,
                    "id",
                    format!("a device cannot have the gateway's id (set at {at})"),
                );
                ok = false;
            }
        }
        match device {
            Some(d) => {
                if let Some(field) = &d.field {
                    let pos = table.get("unit").map_or(item.pos, |e| e.node.pos);
                    let key = (field.bus.clone(), field.unit);
                    if let Some((other, at)) = units.get(&key) {
                        sink.push(
                            pos,
                            &section.context,
                            "unit",
                            format!(
                                "unit {} on bus {:?} is already device {other:?}'s (at {})",
                                field.unit,
                                field.bus,
                                sink.sources.location(*at)
                            ),
                        );
                        ok = false;
                    } else {
                        units.insert(key, (d.id.clone(), pos));
                    }
                }
                devices.push(d);
            }
            None => ok = false,
        }
    }
    ok.then_some(devices)
}

fn device(
    section: &Section<'_>,
    defaults: &AuthDefaults,
    field: &mut Field<'_, '_>,
    sink: &mut Sink<'_>,
) -> Option<DeviceConfig> {
    let mut allowed = DEVICE_KEYS.to_vec();
    allowed.extend(AUTH_KEYS);
    allowed.extend(field::DEVICE_FIELD_KEYS);
    section.deny_unknown(&allowed, sink);
    let id = identity_id(section, sink);
    let every_change = section.choice("history", &["latest", "every-change"], sink);
    let history_ok = every_change.is_some() || section.get("history").is_none();
    let every_change = every_change.is_some_and(|(h, _)| h == "every-change");
    let max_bytes = section.integer(
        "history_max_bytes",
        1,
        i64::MAX,
        "a positive number of bytes",
        sink,
    );
    let max_age = section.duration("history_max_age", Duration::from_nanos(1), sink);
    let mut ok = history_ok;
    if history_ok && !every_change {
        for key in ["history_max_bytes", "history_max_age"] {
            if let Some(entry) = section.get(key) {
                sink.push(
                    entry.key_pos,
                    &section.context,
                    key,
                    "only used with history = \"every-change\"",
                );
                ok = false;
            }
        }
    }
    let history = if every_change {
        Some(HistoryLimits {
            max_bytes: or_default(
                section,
                "history_max_bytes",
                max_bytes,
                i64::try_from(DEFAULT_HISTORY_MAX_BYTES).expect("small"),
            )
            .map(|b| u64::try_from(b).expect("checked positive"))?,
            max_age: or_default(section, "history_max_age", max_age, DEFAULT_HISTORY_MAX_AGE)?,
        })
    } else {
        None
    };
    let auth = auth(section, defaults, sink);
    let line = field::line_binding(section, id.map(|(id, _)| id), field.ports, sink);
    let field = field::binding(section, field.buses, field.profiles, sink);
    let (id, pos) = id?;
    let auth = auth?;
    let field = field.ok()?;
    let line = line.ok()?;
    ok.then(|| DeviceConfig {
        id: id.to_owned(),
        history,
        auth,
        defined_at: sink.sources.location(pos),
        field,
        line,
    })
}

/// A host name or IP address: no scheme, port or path.
pub(super) fn check_host(host: &str) -> Result<(), &'static str> {
    if host.contains("://") {
        return Err("expected a host name without scheme, like \"myhub.azure-devices.net\"");
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err("expected a host name like \"myhub.azure-devices.net\" (no port or path)");
    }
    Ok(())
}

/// The CA file exists and holds at least one PEM certificate.
fn check_ca_file(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{}: not a valid PEM file", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it",
            path.display()
        ));
    }
    Ok(())
}

/// Parses `http://[user[:password]@]host[:port]` (port 80 by default). Messages never show
/// the password.
pub(crate) fn parse_proxy(url: &str) -> Result<ProxySettings, String> {
    let bad = |why: &str| {
        format!(
            "{why}: expected a URL like \"http://proxy.local:3128\", got {:?}",
            redact_userinfo(url)
        )
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(bad("only http:// proxies are supported"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(bad("no path expected"));
    }
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("bad port"))?;
            (h, port)
        }
        _ => (hostport, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if check_host(host).is_err() {
        return Err(bad("bad host"));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
    };
    let auth = match userinfo {
        None => None,
        Some(info) => {
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            let user = decode(user).map_err(|_| bad("user name is not UTF-8"))?;
            let pass = decode(pass).map_err(|_| bad("password is not UTF-8"))?;
            Some((user, Secret::new(pass)))
        }
    };
    Ok(ProxySettings {
        host: host.to_owned(),
        port,
        auth,
    })
}

/// `url` with any user info replaced by `***`.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_iot_hub_rules() {
        assert!(check_device_id("meter-01").is_ok());
        assert!(check_device_id("a.b%c_d*e?f!g(h)i,j:k=l@m$n'o").is_ok());
        assert!(check_device_id(&"x".repeat(128)).is_ok());
        assert!(check_device_id(&"x".repeat(129)).is_err());
        assert!(check_device_id("").is_err());
        for bad in ["a b", "a/b", "a#b", "a+b", "é", "a\nb"] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_are_names_or_addresses() {
        for good in [
            "myhub.azure-devices.net",
            "127.0.0.1",
            "::1",
            "localhost",
            "hub.",
        ] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "mqtts://hub",
            "hub:8883",
            "hub/x",
            "a..b",
            "-a.b",
            "a b",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_urls_parse_with_default_port_and_decoded_credentials() {
        let p = parse_proxy("http://proxy.local").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.auth.is_none()),
            ("proxy.local", 80, true)
        );
        let p = parse_proxy("http://us%40r:p%3Ass@10.0.0.1:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 3128));
        let (user, pass) = p.auth.unwrap();
        assert_eq!((user.as_str(), pass.expose()), ("us@r", "p:ss"));
        let p = parse_proxy("http://[::1]:8080").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
    }

    #[test]
    fn proxy_errors_never_show_the_password() {
        for bad in [
            "https://user:hunter2@proxy:3128",
            "http://user:hunter2@proxy:99999",
            "http://user:hunter2@proxy:3128/path",
            "socks5://user:hunter2@proxy",
        ] {
            let err = parse_proxy(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("***@proxy"), "{err}");
        }
    }
}
