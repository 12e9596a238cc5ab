//! The field side of the configuration: `[[bus]]` entries, a device's `bus`, `unit`, `poll`,
//! `points` and `profile`, the points themselves and the profile files, validated with the
//! same positioned errors as the rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use device_protocols::bus::{BusConfig, Transport};
use device_protocols::line::{LineDeviceConfig, LineEnding, LineFormat, LineSettings, Template};
use device_protocols::point::{DataType, Order, Point, PointDefError, Table as PointTable};
use device_protocols::serial::{Parity, Rs485, RtsLevel, SerialSettings};
use serde::Deserialize;
use serde_json::json;

use super::error::ConfigError;
use super::schema::{Section, Sink, check_host};
use super::tree::{self, Node, Pos, Sources, Table, Value};
use super::{
    BusSettings, FieldBinding, LineBinding, PROFILE_DIR, PointBinding, SYSTEM_PROFILE_DIR,
};
use crate::twin::rules;

/// The keys a device gains with the field side.
pub(super) const DEVICE_FIELD_KEYS: &[&str] = &["bus", "unit", "poll", "points", "profile", "line"];

/// The keys that only mean something with `bus`.
const ON_BUS_KEYS: &[&str] = &["unit", "poll", "points", "profile"];

/// `poll` when a device on a bus does not say.
pub(super) const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// The default Modbus TCP port.
const MODBUS_TCP_PORT: u16 = 502;

const BUS_KEYS: &[&str] = &[
    "name",
    "port",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "tcp",
    "rtu_over_tcp",
    "timeout",
    "turnaround",
    "rs485",
];
const TRANSPORT_KEYS: &[&str] = &["port", "tcp", "rtu_over_tcp"];
const SERIAL_KEYS: &[&str] = &["baud", "parity", "data_bits", "stop_bits", "rs485"];
const RS485_KEYS: &[&str] = &[
    "rts_on_send",
    "delay_before_send",
    "delay_after_send",
    "rx_during_tx",
];

/// The longest RTS delay: the kernel's `serial_core` clamps larger ones to 100 ms.
const MAX_RTS_DELAY: Duration = Duration::from_millis(100);

/// The bus names as written (even of buses with errors, so that devices naming them are not
/// reported as well), with where each is first defined.
pub(super) type BusNames<'t> = HashMap<&'t str, Pos>;

/// Serial ports and TCP endpoints in use -> who uses it (`bus "a"`, `device "w"`) and where
/// it is named: two buses or line devices cannot share one line.
pub(super) type Ports = HashMap<String, (String, Pos)>;

/// A bus's settings once read; [`bus_config`] turns them into the bus runtime's.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawBus {
    pub name: String,
    pub transport: Transport,
    /// `None`: the bus runtime's default.
    pub timeout: Option<Duration>,
    /// `None`: the bus runtime's default.
    pub turnaround: Option<Duration>,
}

/// The one place where the configuration's bus settings become the bus runtime's
/// [`BusConfig`]: what the configuration does not set keeps [`BusConfig::new`]'s defaults.
pub(super) fn bus_config(raw: RawBus) -> BusConfig {
    let mut config = BusConfig::new(raw.name, raw.transport);
    if let Some(timeout) = raw.timeout {
        config.timeout = timeout;
    }
    if let Some(turnaround) = raw.turnaround {
        config.turnaround = turnaround;
    }
    config
}

/// Validates every `[[bus]]`. Returns the buses (`None` if any has an error) and the names
/// as written.
pub(super) fn buses<'t>(
    root: &'t Table,
    sink: &mut Sink<'_>,
) -> (Option<Vec<BusSettings>>, BusNames<'t>, Ports) {
    let mut names = BusNames::new();
    let mut endpoints = Ports::new();
    let Some(entry) = root.get("bus") else {
        return (Some(Vec::new()), names, endpoints);
    };
    let Value::Array(items) = &entry.node.value else {
        sink.push(
            entry.node.pos,
            "",
            "bus",
            format!(
                "expected [[bus]] tables, got {}",
                entry.node.value.describe()
            ),
        );
        return (None, names, endpoints);
    };
    let mut ok = true;
    let mut buses = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let Value::Table(table) = &item.value else {
            sink.push(
                item.pos,
                &format!("bus #{}", n + 1),
                "",
                format!("expected a table, got {}", item.value.describe()),
            );
            ok = false;
            continue;
        };
        let raw_name = table
            .get("name")
            .and_then(|e| Some((e.node.value.as_str()?, e.node.pos)));
        let context = match raw_name {
            Some((name, _)) => format!("bus {name:?}"),
            None => format!("bus #{}", n + 1),
        };
        let section = Section::new(table, item.pos, &context);
        let bus = bus(&section, sink);
        if let Some((name, pos)) = raw_name {
            if let Some(first) = names.get(name) {
                sink.push(
                    pos,
                    &context,
                    "name",
                    format!(
                        "duplicate bus name (first defined at {})",
                        sink.sources.location(*first)
                    ),
                );
                ok = false;
            } else {
                names.insert(name, pos);
            }
        }
        let Some(bus) = bus else {
            ok = false;
            continue;
        };
        let (endpoint, key) = match &bus.config.transport {
            Transport::Serial(s) => (s.path.display().to_string(), "port"),
            Transport::Tcp(a) => (a.clone(), "tcp"),
            Transport::RtuOverTcp(a) => (a.clone(), "rtu_over_tcp"),
        };
        let pos = table.get(key).map_or(item.pos, |e| e.node.pos);
        if !claim_port(&mut endpoints, endpoint, &context, pos, key, sink) {
            ok = false;
        }
        buses.push(bus);
    }
    (ok.then_some(buses), names, endpoints)
}

/// Records that `owner` (a context, `bus "a"`) uses `endpoint`; reports and returns false
/// when another bus or line device has it already.
pub(super) fn claim_port(
    ports: &mut Ports,
    endpoint: String,
    owner: &str,
    pos: Pos,
    field: &str,
    sink: &mut Sink<'_>,
) -> bool {
    if let Some((other, at)) = ports.get(&endpoint) {
        sink.push(
            pos,
            owner,
            field,
            format!(
                "{endpoint} is already used by {other} (at {}): one bus or line device per line or endpoint",
                sink.sources.location(*at)
            ),
        );
        return false;
    }
    ports.insert(endpoint, (owner.to_owned(), pos));
    true
}

fn bus(section: &Section<'_>, sink: &mut Sink<'_>) -> Option<BusSettings> {
    let before = sink.errors.len();
    section.deny_unknown(BUS_KEYS, sink);
    let name = match section.string("name", sink) {
        None => {
            if section.get("name").is_none() {
                section.missing(
                    sink,
                    "name",
                    "a bus needs a name (devices refer to it with bus = \"name\")",
                );
            }
            None
        }
        Some((name, pos)) => {
            if check_bus_name(name) {
                Some((name, pos))
            } else {
                sink.push(
                    pos,
                    &section.context,
                    "name",
                    format!(
                        "expected a name like \"rs485-a\" (letters, digits, '-', '_', '.'), got {name:?}"
                    ),
                );
                None
            }
        }
    };
    let transport = transport(section, sink);
    let positive = Duration::from_nanos(1);
    let timeout = section.duration("timeout", positive, sink);
    let turnaround = section.duration("turnaround", Duration::ZERO, sink);
    if sink.errors.len() > before {
        return None;
    }
    let (name, pos) = name?;
    Some(BusSettings {
        name: name.to_owned(),
        config: bus_config(RawBus {
            name: name.to_owned(),
            transport: transport?,
            timeout,
            turnaround,
        }),
        defined_at: sink.sources.location(pos),
    })
}

/// A bus name: what `bus = "…"` refers to and logs show.
fn check_bus_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn transport(section: &Section<'_>, sink: &mut Sink<'_>) -> Option<Transport> {
    let given: Vec<&str> = TRANSPORT_KEYS
        .iter()
        .copied()
        .filter(|k| section.get(k).is_some())
        .collect();
    match given.as_slice() {
        [] => {
            section.missing(
                sink,
                "port",
                "a bus needs port (a serial line), tcp (Modbus TCP) or rtu_over_tcp",
            );
            return None;
        }
        [_] => {}
        [first, rest @ ..] => {
            for key in rest {
                let pos = section.get(key).map_or(section.pos, |e| e.key_pos);
                sink.push(
                    pos,
                    &section.context,
                    key,
                    format!("a bus has one of port, tcp or rtu_over_tcp, and this one has {first} already"),
                );
            }
            return None;
        }
    }
    if given[0] != "port" {
        for key in SERIAL_KEYS {
            if let Some(entry) = section.get(key) {
                sink.push(
                    entry.key_pos,
                    &section.context,
                    key,
                    "only used with port (a serial line)",
                );
            }
        }
    }
    match given[0] {
        "port" => serial(section, true, sink).map(Transport::Serial),
        key => {
            let (text, pos) = section.string(key, sink)?;
            let default_port = (key == "tcp").then_some(MODBUS_TCP_PORT);
            match parse_endpoint(text, default_port) {
                Ok(endpoint) if key == "tcp" => Some(Transport::Tcp(endpoint)),
                Ok(endpoint) => Some(Transport::RtuOverTcp(endpoint)),
                Err(why) => {
                    sink.push(pos, &section.context, key, why);
                    None
                }
            }
        }
    }
}

/// The serial line settings of a section with `port` (a bus's, or a line device's `line`).
/// A Modbus RTU line takes 8 data bits only, a line device 5 to 8.
fn serial(section: &Section<'_>, modbus: bool, sink: &mut Sink<'_>) -> Option<SerialSettings> {
    let path = match section.string("port", sink) {
        Some((p, _)) if p.starts_with('/') => Some(p),
        Some(_) => {
            let node = &section.get("port").expect("read above").node;
            section.wrong(
                sink,
                "port",
                node,
                "an absolute device path like \"/dev/serial/by-id/usb-…-if00-port0\"",
            );
            None
        }
        None => None,
    };
    let baud = section
        .integer(
            "baud",
            1,
            i64::from(u32::MAX),
            "a baud rate like 9600 or 19200",
            sink,
        )
        .map(|b| u32::try_from(b).expect("range checked"));
    let parity = section
        .choice("parity", &["none", "even", "odd"], sink)
        .map(|(p, _)| match p {
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            _ => Parity::None,
        });
    // Modbus RTU characters always carry 8 data bits; 7 is Modbus ASCII, which the bus does
    // not speak. Line devices may use any UART setting.
    let data_bits = if modbus {
        section.integer(
            "data_bits",
            8,
            8,
            "8 (Modbus RTU characters have 8 data bits)",
            sink,
        )
    } else {
        section.integer("data_bits", 5, 8, "5, 6, 7 or 8", sink)
    }
    .map(|d| u8::try_from(d).expect("range checked"));
    let stop_bits = section
        .integer("stop_bits", 1, 2, "1 or 2", sink)
        .map(|s| u8::try_from(s).expect("range checked"));
    let mut settings = SerialSettings::new(path?);
    if section.get("baud").is_some() {
        settings.baud = baud?;
    }
    if section.get("parity").is_some() {
        settings.parity = parity?;
    }
    if section.get("data_bits").is_some() {
        settings.data_bits = data_bits?;
    }
    if section.get("stop_bits").is_some() {
        settings.stop_bits = stop_bits?;
    }
    if modbus && section.get("rs485").is_some() {
        settings.rs485 = rs485(section, sink).ok()?;
    }
    Some(settings)
}

/// A bus's `rs485`: `true` (the kernel's RS-485 mode with the defaults), `false` (none, as
/// when absent), or a table of `rts_on_send`, `delay_before_send`, `delay_after_send` and
/// `rx_during_tx`.
fn rs485(section: &Section<'_>, sink: &mut Sink<'_>) -> Result<Option<Rs485>, Reported> {
    let Some(entry) = section.get("rs485") else {
        return Ok(None);
    };
    let node = &entry.node;
    let table = match &node.value {
        Value::Boolean(on) => return Ok(on.then(Rs485::default)),
        Value::Table(_) => section.sub("rs485", sink).ok_or(Reported)?,
        _ => {
            section.wrong(
                sink,
                "rs485",
                node,
                "true, false or a table like { rts_on_send = \"high\", delay_after_send = \"1ms\" }",
            );
            return Err(Reported);
        }
    };
    let before = sink.errors.len();
    table.deny_unknown(RS485_KEYS, sink);
    let rts_on_send = table
        .choice("rts_on_send", &["high", "low"], sink)
        .map(|(level, _)| {
            if level == "low" {
                RtsLevel::Low
            } else {
                RtsLevel::High
            }
        });
    let delay = |key: &str, sink: &mut Sink<'_>| {
        let d = table.duration(key, Duration::ZERO, sink)?;
        let node = &table.get(key).expect("read above").node;
        if d > MAX_RTS_DELAY {
            table.wrong(
                sink,
                key,
                node,
                "at most \"100ms\" (the kernel caps RTS delays there)",
            );
            return None;
        }
        if d.subsec_nanos() % 1_000_000 != 0 {
            table.wrong(
                sink,
                key,
                node,
                "whole milliseconds like \"2ms\" (the kernel's resolution)",
            );
            return None;
        }
        Some(d)
    };
    let delay_before_send = delay("delay_before_send", sink);
    let delay_after_send = delay("delay_after_send", sink);
    let rx_during_tx = table.boolean("rx_during_tx", sink);
    if sink.errors.len() > before {
        return Err(Reported);
    }
    let defaults = Rs485::default();
    Ok(Some(Rs485 {
        rts_on_send: rts_on_send.unwrap_or(defaults.rts_on_send),
        delay_before_send: delay_before_send.unwrap_or(defaults.delay_before_send),
        delay_after_send: delay_after_send.unwrap_or(defaults.delay_after_send),
        rx_during_tx: rx_during_tx.unwrap_or(defaults.rx_during_tx),
    }))
}

/// `host:port`, `[v6]:port`, or (with a default port) a bare host; returns `host:port`.
pub(super) fn parse_endpoint(text: &str, default_port: Option<u16>) -> Result<String, String> {
    let example = if default_port.is_some() {
        "\"10.0.0.5:502\" or \"plc.local\""
    } else {
        "\"10.0.0.6:4001\""
    };
    let bad = |why: &str| format!("{why}: expected host:port like {example}, got {text:?}");
    let (host, port, bracketed) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
        };
        (host, port, true)
    } else {
        match text.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(bad("write an IPv6 address in brackets, like [fd00::5]:502"));
            }
            Some((h, p)) => (h, Some(p), false),
            None => (text, None, false),
        }
    };
    if bracketed && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(bad("not an IPv6 address in brackets"));
    }
    if !bracketed && check_host(host).is_err() {
        return Err(bad("bad host"));
    }
    let port = match port {
        None => default_port.ok_or_else(|| bad("the port is required"))?,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("bad port"))?,
    };
    Ok(if bracketed {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Something was wrong, and is reported (or was, for a profile shared by devices).
#[derive(Debug)]
pub(super) struct Reported;

/// A device's field binding: `Ok(None)` for an identity-only device (no `bus`).
pub(super) fn binding(
    section: &Section<'_>,
    buses: &BusNames<'_>,
    profiles: &mut Profiles,
    sink: &mut Sink<'_>,
) -> Result<Option<FieldBinding>, Reported> {
    if section.get("bus").is_none() {
        let mut ok = true;
        for key in ON_BUS_KEYS {
            if let Some(entry) = section.get(key) {
                sink.push(
                    entry.key_pos,
                    &section.context,
                    key,
                    "only used with bus (a device without bus is an identity only)",
                );
                ok = false;
            }
        }
        return if ok { Ok(None) } else { Err(Reported) };
    }
    let before = sink.errors.len();
    let bus = section.string("bus", sink).and_then(|(name, pos)| {
        if buses.contains_key(name) {
            return Some(name);
        }
        let mut known: Vec<String> = buses.keys().map(|n| format!("{n:?}")).collect();
        known.sort();
        let known = if known.is_empty() {
            "there is no [[bus]]".to_owned()
        } else {
            format!("the buses are {}", known.join(", "))
        };
        sink.push(
            pos,
            &section.context,
            "bus",
            format!("no [[bus]] named {name:?} ({known})"),
        );
        None
    });
    let unit = section
        .integer("unit", 1, 247, "a unit id from 1 to 247", sink)
        .map(|u| u8::try_from(u).expect("range checked"));
    if section.get("unit").is_none() {
        section.missing(
            sink,
            "unit",
            "the device's unit (slave) id is required with bus",
        );
    }
    let poll = match section.get("poll") {
        None => Some(DEFAULT_POLL),
        Some(_) => section.duration("poll", Duration::from_millis(1), sink),
    };
    let points = device_points(section, profiles, sink);
    if sink.errors.len() > before {
        return Err(Reported);
    }
    match (bus, unit, poll, points) {
        (Some(bus), Some(unit), Some(poll), Some((points, profile))) => Ok(Some(FieldBinding {
            bus: bus.to_owned(),
            unit,
            poll,
            points,
            profile,
        })),
        _ => Err(Reported),
    }
}

/// A device's points, inline or from its profile (with the profile's name). `None` when
/// they are invalid (reported, maybe earlier for a profile).
fn device_points(
    section: &Section<'_>,
    profiles: &mut Profiles,
    sink: &mut Sink<'_>,
) -> Option<(Vec<PointBinding>, Option<String>)> {
    match (section.get("points"), section.get("profile")) {
        (Some(_), Some(profile)) => {
            sink.push(
                profile.key_pos,
                &section.context,
                "profile",
                "a device has either points or profile, not both",
            );
            None
        }
        (None, None) => {
            section.missing(
                sink,
                "points",
                "a device on a bus needs points = [ … ] or profile = \"name\"",
            );
            None
        }
        (Some(entry), None) => {
            if let Value::Array(items) = &entry.node.value {
                points_list(items, &section.context, sink).map(|p| (p, None))
            } else {
                section.wrong(
                    sink,
                    "points",
                    &entry.node,
                    "an array of points like [ { name = \"t\", table = \"input\", address = 0, type = \"i16\" } ]",
                );
                None
            }
        }
        (None, Some(_)) => {
            let (name, pos) = section.string("profile", sink)?;
            let points = profiles.points(name, pos, &section.context, sink)?;
            Some((points, Some(name.to_owned())))
        }
    }
}

const POINT_KEYS: &[&str] = &[
    "name",
    "table",
    "address",
    "type",
    "bit",
    "length",
    "order",
    "scale",
    "offset",
    "unit",
    "writable",
    "write_multiple",
    "property",
    "deadband",
];

const TYPES: &[&str] = &[
    "bool", "bit", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string",
];

/// A validated point with the positions later checks report at.
struct Parsed {
    binding: PointBinding,
    name_pos: Pos,
    /// The `property` value, or the name when the property defaults to it.
    property_pos: Pos,
    /// `property`, or `name` when the property defaults to it.
    property_field: &'static str,
}

/// The points of one device or profile (`owner` is its context, e.g. `device "m"`): each
/// valid, names unique, property paths distinct and none inside another.
fn points_list(items: &[Node], owner: &str, sink: &mut Sink<'_>) -> Option<Vec<PointBinding>> {
    let mut ok = true;
    let mut parsed: Vec<(String, Parsed)> = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let Value::Table(table) = &item.value else {
            sink.push(
                item.pos,
                &format!("{owner}: point #{}", n + 1),
                "",
                format!(
                    "expected a table like {{ name = \"t\", table = \"input\", address = 0, type = \"i16\" }}, got {}",
                    item.value.describe()
                ),
            );
            ok = false;
            continue;
        };
        let context = match table.get("name").and_then(|e| e.node.value.as_str()) {
            Some(name) => format!("{owner}: point {name:?}"),
            None => format!("{owner}: point #{}", n + 1),
        };
        match point(&Section::new(table, item.pos, &context), sink) {
            Some(p) => parsed.push((context, p)),
            None => ok = false,
        }
    }
    for (i, (context, p)) in parsed.iter().enumerate() {
        let earlier = &parsed[..i];
        if let Some((_, first)) = earlier
            .iter()
            .find(|(_, q)| q.binding.point.name == p.binding.point.name)
        {
            sink.push(
                p.name_pos,
                context,
                "name",
                format!(
                    "duplicate point name (first defined at {})",
                    sink.sources.location(first.name_pos)
                ),
            );
            ok = false;
            continue;
        }
        let (mine, shown) = (&p.binding.property, p.binding.property.join("."));
        for (_, q) in earlier {
            let theirs = &q.binding.property;
            let clash = if mine == theirs {
                "is the same as"
            } else if mine.starts_with(theirs) {
                "lies inside"
            } else if theirs.starts_with(mine) {
                "contains"
            } else {
                continue;
            };
            sink.push(
                p.property_pos,
                context,
                p.property_field,
                format!(
                    "reported.{shown} {clash} reported.{} of point {:?} (at {}): each point needs its own twin property, and a value cannot also hold members",
                    theirs.join("."),
                    q.binding.point.name,
                    sink.sources.location(q.property_pos)
                ),
            );
            ok = false;
            break;
        }
    }
    ok.then(|| {
        let mut points: Vec<PointBinding> = parsed.into_iter().map(|(_, p)| p.binding).collect();
        // The collect reuses the larger allocation of `parsed`; the list lives as long as the
        // agent, once per device.
        points.shrink_to_fit();
        points
    })
}

/// One point. Value types and ranges are checked here, field by field; the rules about
/// combinations (type and table, writable tables, scale of non-numeric types…) are
/// `device_protocols`' own ([`Point::validated`]), reported at the field they concern.
#[allow(clippy::too_many_lines)] // one flat list of fields reads best
fn point(section: &Section<'_>, sink: &mut Sink<'_>) -> Option<Parsed> {
    let before = sink.errors.len();
    section.deny_unknown(POINT_KEYS, sink);
    for (key, why) in [
        ("name", "every point needs a name"),
        (
            "table",
            "the table, one of \"coil\", \"discrete_input\", \"input\", \"holding\"",
        ),
        ("address", "the zero-based register or bit address"),
        ("type", "the data type, e.g. \"u16\" or \"f32\""),
    ] {
        if section.get(key).is_none() {
            section.missing(sink, key, why);
        }
    }
    let name = match section.string("name", sink) {
        Some(("", pos)) => {
            sink.push(
                pos,
                &section.context,
                "name",
                "expected a point name, got \"\"",
            );
            None
        }
        other => other,
    };
    let table = section.get("table").and_then(|e| {
        let parsed = e
            .node
            .value
            .as_str()
            .and_then(|s| PointTable::deserialize(toml::Value::String(s.to_owned())).ok());
        if parsed.is_none() {
            section.wrong(
                sink,
                "table",
                &e.node,
                "one of \"coil\", \"discrete_input\", \"input\", \"holding\"",
            );
        }
        parsed
    });
    let address = section
        .integer("address", 0, 65535, "an address from 0 to 65535", sink)
        .map(|a| u16::try_from(a).expect("range checked"));
    let type_name = section.choice("type", TYPES, sink).map(|(t, _)| t);
    let bit = section
        .integer("bit", 0, 15, "a bit number from 0 to 15", sink)
        .map(|b| u8::try_from(b).expect("range checked"));
    let length = section
        .integer("length", 1, 250, "a length in bytes from 1 to 250", sink)
        .map(|l| u16::try_from(l).expect("range checked"));
    let order = section.get("order").and_then(|e| {
        let parsed = e
            .node
            .value
            .as_str()
            .and_then(|s| Order::deserialize(toml::Value::String(s.to_owned())).ok());
        if parsed.is_none() {
            section.wrong(
                sink,
                "order",
                &e.node,
                "one of \"ABCD\", \"CDAB\", \"BADC\", \"DCBA\"",
            );
        }
        parsed
    });
    let scale = section.number("scale", |s| s != 0.0, "a non-zero number", sink);
    let offset = section.number("offset", |_| true, "a number", sink);
    let unit = section.string("unit", sink);
    let writable = section.boolean("writable", sink);
    let write_multiple = section.boolean("write_multiple", sink);
    let deadband = section.number("deadband", |d| d >= 0.0, "a number of at least 0", sink);
    let property = section.string("property", sink);

    let data_type = match type_name {
        Some("bit") => match section.get("bit") {
            None => {
                section.missing(sink, "bit", "type = \"bit\" needs bit = 0..15");
                None
            }
            Some(_) => bit.map(DataType::Bit),
        },
        Some("string") => match section.get("length") {
            None => {
                section.missing(sink, "length", "type = \"string\" needs length (in bytes)");
                None
            }
            Some(_) => length.map(|len| DataType::String { len }),
        },
        Some(t) => Some(match t {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            _ => DataType::F64,
        }),
        None => None,
    };
    for (key, applies, to) in [
        ("bit", "bit", "type = \"bit\""),
        ("length", "string", "type = \"string\""),
    ] {
        if let (Some(entry), Some(t)) = (section.get(key), type_name)
            && t != applies
        {
            sink.push(
                entry.key_pos,
                &section.context,
                key,
                format!("only used with {to}"),
            );
        }
    }
    if let (Some(entry), Some(t)) = (section.get("deadband"), data_type)
        && !t.is_numeric()
    {
        sink.push(
            entry.key_pos,
            &section.context,
            "deadband",
            format!("only applies to numeric points, not {t}"),
        );
    }
    if sink.errors.len() > before {
        return None;
    }
    let (name, name_pos) = name?;
    let point = Point::new(name, table?, address?, data_type?)
        .map(|mut p| {
            p.order = order.unwrap_or_default();
            p.scale = scale.unwrap_or(1.0);
            p.offset = offset.unwrap_or(0.0);
            p.unit = unit.map(|(u, _)| u.to_owned());
            p.writable = writable.unwrap_or(false);
            p.write_multiple = write_multiple.unwrap_or(false);
            p
        })
        .and_then(Point::validated);
    let point = match point {
        Ok(point) => point,
        Err(e) => {
            let (key, message) = point_error(&e);
            let pos = key
                .and_then(|k| section.get(k))
                .map_or(section.pos, |e| e.node.pos);
            sink.push(pos, &section.context, key.unwrap_or(""), message);
            return None;
        }
    };
    let (text, property_pos) = property.unwrap_or((name, name_pos));
    let writable_nested = |path: &Vec<String>| point.writable && path.len() > 1;
    let property = match property_path(text, point.writable).and_then(|path| {
        if writable_nested(&path) {
            // Desired values and their acknowledgements live at the twin's top level (IoT Plug
            // and Play writable properties): the bridge answers desired.<key> at reported.<key>.
            Err(format!(
                "expected a twin property path like \"power.active\", got {text:?}: a writable point maps to a top-level property (desired values and their acknowledgements live at the top level)"
            ))
        } else {
            Ok(path)
        }
    }) {
        Ok(path) => path,
        Err(why) => {
            // A default path comes from the name: say so.
            let field = if section.get("property").is_some() {
                "property"
            } else {
                "name"
            };
            let why = if field == "name" {
                format!(
                    "{why} (the name is the twin property unless property = \"…\" says otherwise)"
                )
            } else {
                why
            };
            sink.push(property_pos, &section.context, field, why);
            return None;
        }
    };
    Some(Parsed {
        binding: PointBinding {
            point,
            property,
            deadband,
            defined_at: sink.sources.location(section.pos),
        },
        name_pos,
        property_pos,
        property_field: if section.get("property").is_some() {
            "property"
        } else {
            "name"
        },
    })
}

/// The field a [`PointDefError`] is about and what to say (the context already names the
/// point).
fn point_error(e: &PointDefError) -> (Option<&'static str>, String) {
    match e {
        PointDefError::TypeTable {
            data_type, table, ..
        } => (
            Some("type"),
            format!(
                "type {data_type} cannot live in the {table} table (coils and discrete inputs hold type = \"bool\")"
            ),
        ),
        PointDefError::ReadOnlyTable { table, .. } => (
            Some("writable"),
            format!("the {table} table is read-only, writable = true is not possible"),
        ),
        PointDefError::Invalid { message, .. } => {
            let key = ["scale", "offset", "address", "bit", "string length", "name"]
                .into_iter()
                .find(|k| message.starts_with(k))
                .map(|k| if k == "string length" { "length" } else { k });
            (key, message.clone())
        }
    }
}

/// A twin property path: `"power.active"` (or `"reported.power.active"`) →
/// `["power", "active"]`, checked against the hub's rules for the value the bridge reports
/// there: a number, or with `object_leaf` an object (a writable point's acknowledgement, a
/// line device's readings), which the depth limit counts as one more level.
pub(super) fn property_path(text: &str, object_leaf: bool) -> Result<Vec<String>, String> {
    let expected = |why: &str| {
        format!("expected a twin property path like \"power.active\", got {text:?}: {why}")
    };
    let rest = text.strip_prefix("reported.").unwrap_or(text);
    let keys: Vec<String> = rest.split('.').map(str::to_owned).collect();
    if keys.iter().any(String::is_empty) {
        return Err(expected("empty key (a dot at an end, or two in a row)"));
    }
    if keys[0] == "gateway" {
        return Err(expected(
            "\"gateway\" is reserved at the top level (the gateway's link health)",
        ));
    }
    // `$version` and `$metadata` are the hub's own members at the root; no key of ours may
    // hold a `$` anywhere.
    if let Some(key) = keys.iter().find(|k| k.contains('$')) {
        return Err(expected(&format!("key {key:?} contains '$'")));
    }
    let mut doc = if object_leaf {
        json!({ "value": 0, "ac": 200, "av": 1, "ad": "" })
    } else {
        json!(0)
    };
    for key in keys.iter().rev() {
        doc = json!({ key.clone(): doc });
    }
    rules::validate_section(rules::Section::Reported, &doc)
        .map_err(|e| expected(&e.to_string()))?;
    Ok(keys)
}

/// The profiles the devices name, read (and parsed) before validation so that their files
/// take part in error positions; each validated once, on first use.
#[derive(Debug, Default)]
pub(super) struct Profiles {
    loaded: HashMap<String, Loaded>,
    validated: HashMap<String, Option<Vec<PointBinding>>>,
}

#[derive(Debug)]
enum Loaded {
    /// Parsed: the file's index in [`Sources`] and its tree.
    File { file: usize, table: Table },
    /// Not in any profile directory: the places looked at.
    Missing(Vec<PathBuf>),
    /// The file exists but cannot be read.
    Unreadable(String),
    /// Syntax errors, already reported.
    Broken,
}

/// Whether `name` can be a profile's name (a file name without directories).
fn check_profile_name(name: &str) -> bool {
    name.len() <= 100
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Where profiles are looked for: `profiles/` beside the main configuration file, then
/// the package's directory.
pub(super) fn profile_dirs(base_dir: &std::path::Path) -> Vec<PathBuf> {
    vec![
        base_dir.join(PROFILE_DIR),
        PathBuf::from(SYSTEM_PROFILE_DIR),
    ]
}

/// Reads and parses every profile named by a `[[device]]` in `root`, adding the files to
/// `sources`. Returns them with the syntax errors found.
pub(super) fn load_profiles(
    root: &Table,
    dirs: &[PathBuf],
    sources: &mut Sources,
) -> (Profiles, Vec<(Option<Pos>, ConfigError)>) {
    let mut profiles = Profiles::default();
    let mut errors = Vec::new();
    let names = match root.get("device").map(|e| &e.node.value) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|d| d.value.as_table())
            // A device without bus takes no profile (reported as such): its file is not read.
            .filter(|d| d.contains_key("bus"))
            .filter_map(|d| d.get("profile")?.node.value.as_str())
            .filter(|n| check_profile_name(n))
            .collect(),
        _ => Vec::new(),
    };
    for name in names {
        if profiles.loaded.contains_key(name) {
            continue;
        }
        let candidates: Vec<PathBuf> = dirs
            .iter()
            .map(|d| d.join(format!("{name}.toml")))
            .collect();
        let loaded = match candidates.iter().find(|p| p.is_file()) {
            None => Loaded::Missing(candidates),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => Loaded::Unreadable(format!("reading {}: {e}", path.display())),
                Ok(text) => {
                    sources.files.push(path.clone());
                    let file = sources.files.len() - 1;
                    let (table, syntax) = tree::parse_file(&text, file, sources);
                    if syntax.is_empty() {
                        Loaded::File { file, table }
                    } else {
                        errors.extend(syntax);
                        Loaded::Broken
                    }
                }
            },
        };
        profiles.loaded.insert(name.to_owned(), loaded);
    }
    (profiles, errors)
}

impl Profiles {
    /// The points of profile `name`, named by a device at `pos` (whose context is `device`).
    /// `None` when the profile is missing or invalid (reported, the profile's own errors
    /// once, at their place in the profile file).
    fn points(
        &mut self,
        name: &str,
        pos: Pos,
        device: &str,
        sink: &mut Sink<'_>,
    ) -> Option<Vec<PointBinding>> {
        if !check_profile_name(name) {
            sink.push(
                pos,
                device,
                "profile",
                format!(
                    "expected a profile name like \"eastron-sdm120\" (letters, digits, '-', '_', '.'; the file profiles/NAME.toml), got {name:?}"
                ),
            );
            return None;
        }
        match self.loaded.get(name) {
            None | Some(Loaded::Broken) => None,
            Some(Loaded::Missing(looked)) => {
                let looked: Vec<String> = looked
                    .iter()
                    .map(|p| sink.sources.display_path(p).display().to_string())
                    .collect();
                sink.push(
                    pos,
                    device,
                    "profile",
                    format!("no profile {name:?}: looked for {}", looked.join(" and ")),
                );
                None
            }
            Some(Loaded::Unreadable(why)) => {
                sink.push(pos, device, "profile", why.clone());
                None
            }
            Some(Loaded::File { file, table }) => {
                if let Some(done) = self.validated.get(name) {
                    return done.clone();
                }
                let start = Pos {
                    file: *file,
                    line: 1,
                    column: 1,
                };
                let context = format!("profile {name:?}");
                let points = profile(&Section::new(table, start, &context), sink);
                if points.is_none() {
                    // Said once, at the device that first used it; other devices fail
                    // silently with the profile's own errors.
                    sink.push(
                        pos,
                        device,
                        "profile",
                        format!(
                            "profile {name:?} ({}) has errors",
                            sink.sources
                                .display_path(&sink.sources.files[*file])
                                .display()
                        ),
                    );
                }
                self.validated.insert(name.to_owned(), points.clone());
                points
            }
        }
    }
}

/// A profile file: `description` and `[[point]]` entries.
fn profile(section: &Section<'_>, sink: &mut Sink<'_>) -> Option<Vec<PointBinding>> {
    let before = sink.errors.len();
    section.deny_unknown(&["description", "point"], sink);
    section.string("description", sink);
    let points = match section.get("point") {
        None => {
            section.missing(sink, "point", "a profile holds [[point]] entries");
            None
        }
        Some(entry) => match &entry.node.value {
            Value::Array(items) if !items.is_empty() => points_list(items, &section.context, sink),
            _ => {
                section.wrong(sink, "point", &entry.node, "[[point]] tables");
                None
            }
        },
    };
    if sink.errors.len() > before {
        return None;
    }
    points
}

const LINE_KEYS: &[&str] = &[
    "port",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "protocol",
    "ending",
    "max_line",
    "command",
    "property",
];

/// A device's `[device.line]`: `Ok(None)` without one. Its port is claimed in `ports`.
pub(super) fn line_binding(
    device: &Section<'_>,
    id: Option<&str>,
    ports: &mut Ports,
    sink: &mut Sink<'_>,
) -> Result<Option<LineBinding>, Reported> {
    let Some(entry) = device.get("line") else {
        return Ok(None);
    };
    let before = sink.errors.len();
    if device.get("bus").is_some() {
        sink.push(
            entry.key_pos,
            &device.context,
            "line",
            "a device is either on a bus or has its own line, not both",
        );
        return Err(Reported);
    }
    let section = device.sub("line", sink).ok_or(Reported)?;
    section.deny_unknown(LINE_KEYS, sink);
    for (key, why) in [
        ("port", "the serial port of the line device"),
        ("protocol", "\"json-lines\" or \"key-value\""),
    ] {
        if section.get(key).is_none() {
            section.missing(sink, key, why);
        }
    }
    let serial = section
        .get("port")
        .and_then(|_| serial(&section, false, sink));
    let format = section
        .choice("protocol", &["json-lines", "key-value"], sink)
        .map(|(f, _)| {
            if f == "key-value" {
                LineFormat::KeyValue
            } else {
                LineFormat::JsonLines
            }
        });
    let ending = section
        .choice("ending", &["any", "lf", "crlf", "cr"], sink)
        .map(|(e, _)| match e {
            "lf" => LineEnding::Lf,
            "crlf" => LineEnding::Crlf,
            "cr" => LineEnding::Cr,
            _ => LineEnding::Any,
        });
    let max_line = section
        .integer(
            "max_line",
            16,
            1024 * 1024,
            "a line length in bytes from 16 to 1048576",
            sink,
        )
        .map(|m| usize::try_from(m).expect("range checked"));
    let (command, property) = command_and_property(&section, sink);
    if let (Some(serial), Some(entry)) = (&serial, section.get("port")) {
        claim_port(
            ports,
            serial.path.display().to_string(),
            &device.context,
            entry.node.pos,
            &section.field("port"),
            sink,
        );
    }
    if sink.errors.len() > before {
        return Err(Reported);
    }
    let (Some(serial), Some(format), Some(id)) = (serial, format, id) else {
        return Err(Reported);
    };
    let defaults = LineSettings::default();
    let line = LineSettings {
        format,
        ending: ending.unwrap_or(defaults.ending),
        max_line: max_line.unwrap_or(defaults.max_line),
    };
    Ok(Some(LineBinding {
        config: LineDeviceConfig::new(id, serial, line),
        command,
        property: property.unwrap_or_default(),
    }))
}

/// A line device's `command` template and `property` prefix.
fn command_and_property(
    section: &Section<'_>,
    sink: &mut Sink<'_>,
) -> (Option<Template>, Option<Vec<String>>) {
    let command =
        section
            .string("command", sink)
            .and_then(|(text, pos)| match Template::parse(text) {
                Ok(t) => Some(t),
                Err(e) => {
                    sink.push(
                        pos,
                        &section.context,
                        &section.field("command"),
                        e.to_string(),
                    );
                    None
                }
            });
    let property =
        section
            .string("property", sink)
            .and_then(|(text, pos)| match property_path(text, true) {
                Ok(path) => Some(path),
                Err(why) => {
                    sink.push(pos, &section.context, &section.field("property"), why);
                    None
                }
            });
    (command, property)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_host_and_port_with_502_for_modbus_tcp() {
        assert_eq!(
            parse_endpoint("10.0.0.5:1502", Some(502)).unwrap(),
            "10.0.0.5:1502"
        );
        assert_eq!(
            parse_endpoint("plc.local", Some(502)).unwrap(),
            "plc.local:502"
        );
        assert_eq!(
            parse_endpoint("[fd00::5]:502", None).unwrap(),
            "[fd00::5]:502"
        );
        assert_eq!(
            parse_endpoint("[fd00::5]", Some(502)).unwrap(),
            "[fd00::5]:502"
        );
        for bad in ["gw:0", "gw:x", "fd00::5", "[nope]:1", "a b:1", ""] {
            assert!(parse_endpoint(bad, Some(502)).is_err(), "{bad}");
        }
        let err = parse_endpoint("moxa.local", None).unwrap_err();
        assert!(err.contains("the port is required"), "{err}");
    }

    #[test]
    fn property_paths_split_on_dots_and_follow_hub_key_rules() {
        assert_eq!(
            property_path("power.active", false).unwrap(),
            ["power", "active"]
        );
        assert_eq!(
            property_path("reported.power.active", false).unwrap(),
            ["power", "active"]
        );
        assert_eq!(property_path("t", true).unwrap(), ["t"]);
        // Ten keys: the innermost object is at depth 9 and holds a number.
        let ten = ["k"; 10].join(".");
        assert!(property_path(&ten, false).is_ok());
        // A writable point reports an ack object: it adds a level.
        let eleven = ["k"; 11].join(".");
        assert!(property_path(&eleven, false).is_ok());
        assert!(property_path(&eleven, true).is_err());
        assert!(property_path(&["k"; 12].join("."), false).is_err());
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a.$version",
            "$version",
            "gateway",
            "gateway.x",
            "a\u{7}",
        ] {
            assert!(property_path(bad, false).is_err(), "{bad:?}");
        }
        assert!(
            property_path("x.gateway", false).is_ok(),
            "reserved at the top only"
        );
        assert!(property_path(&"k".repeat(1025), false).is_err());
        assert!(property_path(&"k".repeat(1024), false).is_ok());
    }

    #[test]
    fn bus_settings_map_onto_the_bus_runtime_with_its_defaults() {
        let serial = SerialSettings::new("/dev/ttyUSB0");
        let config = bus_config(RawBus {
            name: "a".into(),
            transport: Transport::Serial(serial.clone()),
            timeout: None,
            turnaround: Some(Duration::from_millis(5)),
        });
        let defaults = BusConfig::new("a", Transport::Serial(serial));
        assert_eq!(config.timeout, defaults.timeout);
        assert_eq!(config.turnaround, Duration::from_millis(5));
        assert_eq!(config.transport, defaults.transport);
        assert_eq!(config.limits, defaults.limits);
    }

    #[test]
    fn profiles_are_looked_for_beside_the_configuration_first() {
        assert_eq!(
            profile_dirs(std::path::Path::new("/etc/twinbridge")),
            [
                PathBuf::from("/etc/twinbridge/profiles"),
                PathBuf::from("/usr/share/twinbridge/profiles")
            ]
        );
    }

    #[test]
    fn profile_names_are_plain_file_names() {
        for good in ["eastron-sdm120", "abb_b23.v2", "x"] {
            assert!(check_profile_name(good), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(!check_profile_name(bad), "{bad}");
        }
    }
}
