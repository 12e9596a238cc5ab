//! Pure mapping between a line device and its twin: a reading → the reported patch (fields
//! the hub would refuse are left out and named), the device's state → the `gateway`
//! link-health object, and a desired document → the command lines it calls for.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use device_protocols::health::PortState;
use device_protocols::line::Template;
use serde_json::{Map, Value as Json, json};

use super::super::HEALTH_KEY;
use super::super::mapping::{get_path, last_good_read, rfc3339, set_path};
use crate::twin::rules::{self, Section};
use crate::twin::{Ack, AckCode, diff};

/// A reading field that is not reported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field's name in the reading.
    pub field: String,
    /// Why the hub would refuse it (or why it is reserved).
    pub reason: String,
}

/// What a reading changes in the reported document.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingPatch {
    /// The merge patch (an empty object when nothing changed).
    pub patch: Json,
    /// Fields left out.
    pub refused: Vec<Refusal>,
}

/// The reported patch for one reading: each field under `prefix` (at the top level when it is
/// empty), only where it differs from what `local` (the reported document as stored) holds.
///
/// - A field the hub would refuse (a key with `.`, `$`, space or a control character, a
///   string over 4 KB, an integer out of range, too deep, `null` in an array) is left out
///   and listed in [`ReadingPatch::refused`]; so is a top-level field named `gateway`, which
///   holds the link health.
/// - A `null` field says nothing and is skipped; `null` members inside an object field are
///   dropped (in a patch they would delete).
/// - An object field replaces the stored object (members it no longer has are deleted).
/// - A field whose stored property holds an acknowledgement of a desired value gets only the
///   ack's `value` updated, so the acknowledgement stays intact.
///
/// Fields missing from a reading keep their stored values.
pub fn reading_patch(prefix: &[String], fields: &Map<String, Json>, local: &Json) -> ReadingPatch {
    let mut patch = Map::new();
    let mut refused = Vec::new();
    for (field, value) in fields {
        if prefix.is_empty() && field == HEALTH_KEY {
            refused.push(Refusal {
                field: field.clone(),
                reason: format!("`{HEALTH_KEY}` is reserved for the link health"),
            });
            continue;
        }
        let Some(value) = without_null_members(value) else {
            continue;
        };
        let mut path = prefix.to_vec();
        path.push(field.clone());
        let mut probe = Map::new();
        set_path(&mut probe, &path, value.clone());
        if let Err(e) = rules::validate_patch(Section::Reported, &Json::Object(probe)) {
            refused.push(Refusal {
                field: field.clone(),
                reason: e.to_string(),
            });
            continue;
        }
        let held = get_path(local, &path);
        if let Some(ack) = held.filter(|h| Ack::parse(h).is_ok()) {
            if let Some(change) = change(ack.get("value"), &value) {
                path.push("value".to_owned());
                set_path(&mut patch, &path, change);
            }
        } else if let Some(change) = change(held, &value) {
            set_path(&mut patch, &path, change);
        }
    }
    ReadingPatch {
        patch: Json::Object(patch),
        refused,
    }
}

/// The reported keys that a changed `prefix` left behind (the readings went elsewhere in an
/// earlier run): at each level of the prefix, every key other than the prefix's next one, set
/// to `null` in the returned patch so the twin does not keep stale values that look current.
/// The link health and acknowledgements of desired properties (top-level objects shaped as
/// acks) stay. With an empty prefix any top-level key may be a field: nothing is removed.
pub fn stale_keys_patch(prefix: &[String], local: &Json) -> Json {
    fn stale(prefix: &[String], held: &Json, top: bool) -> Map<String, Json> {
        let mut patch = Map::new();
        let (Some(next), Json::Object(map)) = (prefix.first(), held) else {
            return patch;
        };
        for (key, value) in map {
            if key == next {
                let inner = stale(&prefix[1..], value, false);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Json::Object(inner));
                }
            } else if !(top && (key == HEALTH_KEY || Ack::parse(value).is_ok())) {
                patch.insert(key.clone(), Json::Null);
            }
        }
        patch
    }
    Json::Object(stale(prefix, local, true))
}

/// The merge patch that turns `held` into `new`; `None` when they are equal.
fn change(held: Option<&Json>, new: &Json) -> Option<Json> {
    match held {
        Some(old) if old == new => None,
        Some(old) => Some(diff(old, new)),
        None => Some(new.clone()),
    }
}

/// `value` without `null` object members (at any depth); `None` for `null` itself. Arrays are
/// kept as they are (the hub refuses `null` in them: [`rules::validate_patch`] says so).
fn without_null_members(value: &Json) -> Option<Json> {
    match value {
        Json::Null => None,
        Json::Object(map) => Some(Json::Object(
            map.iter()
                .filter_map(|(k, v)| without_null_members(v).map(|v| (k.clone(), v)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// What the bridge knows of a line device's link, for its health object.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkView<'a> {
    /// The gateway's device id.
    pub gateway: &'a str,
    /// The serial port's path.
    pub port_path: &'a str,
    /// The port's state.
    pub port: &'a PortState,
    /// How long ago the last reading arrived (`None`: none since the bridge started).
    pub since_reading: Option<Duration>,
    /// How long the bridge has been running.
    pub since_start: Duration,
    /// Whether malformed lines arrived within [`silence`](Self::silence).
    pub malformed_recently: bool,
    /// Wall-clock time of the last reading.
    pub last_reading: Option<SystemTime>,
    /// A device with an open port and no reading for this long is offline.
    pub silence: Duration,
}

/// The link-health object of a line device (`reported.gateway`): `id` (the gateway's id),
/// `port` (the serial port's path), `online` (a reading arrived within the silence window),
/// `status` (`online`, `offline`, `unknown`: port opening or no reading yet, still within the
/// window), `lastError` while not online (the port's error, or no reading within the window),
/// and `lastGoodRead` — refreshed only when the online state changes or the stored one is
/// older than [`super::super::mapping::LAST_GOOD_READ_REFRESH`], so that health does not turn
/// every line into a `PATCH`.
pub fn health_object(view: &LinkView<'_>, held: Option<&Json>) -> Json {
    let window = humantime::format_duration(view.silence);
    let (status, error) = match view.port {
        PortState::Starting => ("unknown", None),
        PortState::Down { error, .. } => ("offline", Some(format!("port down: {error}"))),
        PortState::Stopped => ("offline", Some("line device stopped".to_owned())),
        PortState::Open => {
            let waited = view.since_reading.unwrap_or(view.since_start);
            if view.since_reading.is_some_and(|age| age < view.silence) {
                ("online", None)
            } else if waited < view.silence {
                ("unknown", None)
            } else if view.malformed_recently {
                (
                    "offline",
                    Some(format!(
                        "no valid reading for {window} (only malformed lines)"
                    )),
                )
            } else {
                ("offline", Some(format!("no reading for {window}")))
            }
        }
    };
    let online = status == "online";
    let mut object = json!({
        "id": view.gateway,
        "port": view.port_path,
        "online": online,
        "status": status,
    });
    if let Some(error) = error {
        object["lastError"] = json!(error);
    }
    if let Some(at) = last_good_read(view.last_reading, online, held) {
        object["lastGoodRead"] = json!(rfc3339(at));
    }
    object
}

/// What a desired document asks of a line device.
#[derive(Debug, Clone, PartialEq)]
pub enum LineAction {
    /// Send `line` (the rendered command) and acknowledge it as sent.
    Send {
        /// Property (top-level desired key).
        property: String,
        /// The desired value as the hub sent it.
        requested: Json,
        /// The command line, ending included.
        line: String,
    },
    /// Acknowledge at the new version without sending: the value is the one already sent
    /// (acknowledged 200) for an earlier version.
    Unchanged {
        /// Property (top-level desired key).
        property: String,
        /// The desired value as the hub sent it.
        requested: Json,
        /// The version it was sent for.
        sent_for: i64,
    },
    /// Refuse with a 400 acknowledgement.
    Refuse {
        /// Property (top-level desired key).
        property: String,
        /// The desired value as the hub sent it.
        requested: Json,
        /// Why.
        reason: String,
    },
}

/// The actions desired `version` calls for on a line device with `command` (its template,
/// `None` when it takes no commands): one per top-level desired property whose applied version
/// (in `applied`, with its ack) is older than `version`. A desired version covers the whole
/// document, so a property whose value is the one already sent and acknowledged 200 is only
/// acknowledged again ([`LineAction::Unchanged`]): an unrelated change never repeats a
/// command. Any other is sent as `command` rendered with `{name}` = the
/// property and `{value}` = its value (strings raw, anything else as JSON text). Refused:
/// every property of a device without a command, `null`, a string holding a control character
/// (a line break in it would send a second command), and a template that needs other
/// placeholders. `$`-keys and `gateway` (whose ack would overwrite the link health) are left
/// alone.
pub fn plan_desired(
    command: Option<&Template>,
    desired: &Json,
    version: i64,
    applied: &BTreeMap<String, (i64, Json)>,
) -> Vec<LineAction> {
    let Json::Object(doc) = desired else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    for (property, requested) in doc {
        if property.starts_with('$')
            || property == HEALTH_KEY
            || applied.get(property).is_some_and(|(v, _)| *v >= version)
        {
            continue;
        }
        if let Some((sent_for, held)) = applied.get(property)
            && Ack::parse(held).is_ok_and(|a| a.code == AckCode::Completed && &a.value == requested)
        {
            actions.push(LineAction::Unchanged {
                property: property.clone(),
                requested: requested.clone(),
                sent_for: *sent_for,
            });
            continue;
        }
        let refuse = |reason: String| LineAction::Refuse {
            property: property.clone(),
            requested: requested.clone(),
            reason,
        };
        let Some(template) = command else {
            actions.push(refuse(
                "the device takes no commands (no `command` in its [device.line])".to_owned(),
            ));
            continue;
        };
        if requested.is_null() {
            actions.push(refuse("null is not a value to send".to_owned()));
            continue;
        }
        if requested
            .as_str()
            .is_some_and(|s| s.chars().any(char::is_control))
        {
            actions.push(refuse(
                "a control character (line break) in a command value".to_owned(),
            ));
            continue;
        }
        match template.render_set(property, requested) {
            Ok(line) => actions.push(LineAction::Send {
                property: property.clone(),
                requested: requested.clone(),
                line,
            }),
            Err(e) => actions.push(refuse(e.to_string())),
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(m) => m,
            _ => unreachable!("an object"),
        }
    }

    fn prefix(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn fields_land_under_the_prefix_and_only_changes_are_patched() {
        let p = prefix(&["weather"]);
        let first = reading_patch(&p, &fields(json!({"temp": 21.5, "hum": 40})), &json!({}));
        assert_eq!(first.patch, json!({"weather": {"temp": 21.5, "hum": 40}}));
        assert!(first.refused.is_empty());
        let held = json!({"weather": {"temp": 21.5, "hum": 40}});
        let same = reading_patch(&p, &fields(json!({"temp": 21.5, "hum": 40})), &held);
        assert_eq!(
            same.patch,
            json!({}),
            "an unchanged reading patches nothing"
        );
        let moved = reading_patch(&p, &fields(json!({"temp": 22.0})), &held);
        assert_eq!(
            moved.patch,
            json!({"weather": {"temp": 22.0}}),
            "a missing field keeps its value"
        );
        let top = reading_patch(&[], &fields(json!({"temp": 1})), &json!({}));
        assert_eq!(top.patch, json!({"temp": 1}));
    }

    #[test]
    fn keys_the_hub_refuses_and_the_health_key_are_left_out_and_named() {
        let reading = fields(json!({
            "ok": 1, "gateway": "fake", "a.b": 1, "$x": 2, "with space": 3, "tab\tkey": 4,
            "big": 9_007_199_254_740_993_i64, "nulls": [1, null],
        }));
        let out = reading_patch(&[], &reading, &json!({}));
        assert_eq!(out.patch, json!({"ok": 1}));
        let mut refused: Vec<&str> = out.refused.iter().map(|r| r.field.as_str()).collect();
        refused.sort_unstable();
        assert_eq!(
            refused,
            [
                "$x",
                "a.b",
                "big",
                "gateway",
                "nulls",
                "tab\tkey",
                "with space"
            ]
        );
        assert!(
            out.refused
                .iter()
                .any(|r| r.field == "a.b" && r.reason.contains("forbidden character")),
            "{:?}",
            out.refused
        );
        // Under a prefix `gateway` is an ordinary field.
        let under = reading_patch(&prefix(&["w"]), &fields(json!({"gateway": 1})), &json!({}));
        assert_eq!(under.patch, json!({"w": {"gateway": 1}}));
    }

    #[test]
    fn nulls_objects_and_acknowledged_properties() {
        let held = json!({
            "n": {"x": 1, "y": 2},
            "fan": {"value": 1, "ac": 200, "av": 3, "ad": "sent"},
        });
        let out = reading_patch(
            &[],
            &fields(json!({"gone": null, "n": {"x": 1, "z": null}, "fan": 2})),
            &held,
        );
        assert_eq!(
            out.patch,
            json!({"n": {"y": null}, "fan": {"value": 2}}),
            "null says nothing; an object replaces the stored one; an ack keeps its shape"
        );
        let same = reading_patch(&[], &fields(json!({"fan": 1})), &held);
        assert_eq!(same.patch, json!({}));
    }

    #[test]
    fn a_changed_prefix_leaves_no_stale_values() {
        let local = json!({
            "temp": 20, "old": {"x": 1},
            "weather": {"outside": {"temp": 1}, "inside": {"temp": 2}},
            "gateway": {"online": true},
            "fan": {"value": 1, "ac": 200, "av": 2},
        });
        assert_eq!(
            stale_keys_patch(&prefix(&["weather", "outside"]), &local),
            json!({"temp": null, "old": null, "weather": {"inside": null}})
        );
        assert_eq!(stale_keys_patch(&[], &local), json!({}));
        assert_eq!(
            stale_keys_patch(&prefix(&["w"]), &json!({"w": 1})),
            json!({}),
            "a scalar at the prefix is overwritten by the next reading"
        );
    }

    fn view(port: &PortState) -> LinkView<'_> {
        LinkView {
            gateway: "gw-1",
            port_path: "/dev/ttyX",
            port,
            since_reading: None,
            since_start: Duration::ZERO,
            malformed_recently: false,
            last_reading: None,
            silence: Duration::from_mins(1),
        }
    }

    #[test]
    fn health_follows_the_port_and_the_silence_window() {
        let open = PortState::Open;
        let starting = health_object(&view(&open), None);
        assert_eq!(
            starting,
            json!({"id": "gw-1", "port": "/dev/ttyX", "online": false, "status": "unknown"})
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_hours(500_000);
        let online = health_object(
            &LinkView {
                since_reading: Some(Duration::from_secs(1)),
                last_reading: Some(at),
                ..view(&open)
            },
            Some(&starting),
        );
        assert_eq!(online["online"], true);
        assert_eq!(online["status"], "online");
        assert_eq!(online["lastGoodRead"], "2027-01-15T08:00:00Z");
        assert!(online.get("lastError").is_none());
        let a_line_later = health_object(
            &LinkView {
                since_reading: Some(Duration::from_secs(2)),
                last_reading: Some(at + Duration::from_secs(61)),
                ..view(&open)
            },
            Some(&online),
        );
        assert_eq!(a_line_later, online, "a minute later nothing changes");
        let silent = health_object(
            &LinkView {
                since_reading: Some(Duration::from_mins(1)),
                last_reading: Some(at),
                ..view(&open)
            },
            Some(&online),
        );
        assert_eq!(silent["online"], false);
        assert_eq!(silent["lastError"], "no reading for 1m");
        let garbage = health_object(
            &LinkView {
                since_start: Duration::from_secs(90),
                malformed_recently: true,
                ..view(&open)
            },
            None,
        );
        assert_eq!(garbage["status"], "offline");
        assert!(
            garbage["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("malformed"))
        );
        let down = PortState::Down {
            error: "serial port /dev/ttyX: end of stream".into(),
            attempts: 3,
        };
        let unplugged = health_object(
            &LinkView {
                since_reading: Some(Duration::from_secs(1)),
                last_reading: Some(at),
                ..view(&down)
            },
            Some(&online),
        );
        assert_eq!(unplugged["online"], false);
        assert_eq!(
            unplugged["lastError"],
            "port down: serial port /dev/ttyX: end of stream"
        );
        assert_eq!(unplugged["lastGoodRead"], "2027-01-15T08:00:00Z");
    }

    #[test]
    fn desired_values_become_command_lines_or_refusals() {
        let t = Template::parse("SET {name} {value}\r\n").expect("valid template");
        let desired = json!({"fan": 2, "mode": "eco", "gateway": 1, "$version": 4});
        let actions = plan_desired(Some(&t), &desired, 4, &BTreeMap::new());
        assert_eq!(
            actions,
            [
                LineAction::Send {
                    property: "fan".into(),
                    requested: json!(2),
                    line: "SET fan 2\r\n".into()
                },
                LineAction::Send {
                    property: "mode".into(),
                    requested: json!("eco"),
                    line: "SET mode eco\r\n".into()
                },
            ]
        );
        let sent = json!({"value": 2, "ac": 200, "av": 4, "ad": "sent"});
        let applied = BTreeMap::from([("fan".to_owned(), (4, sent.clone()))]);
        assert_eq!(
            plan_desired(Some(&t), &json!({"fan": 2}), 4, &applied),
            [],
            "a version is sent once"
        );
        let later = plan_desired(Some(&t), &json!({"fan": 2, "mode": "eco"}), 5, &applied);
        assert_eq!(
            later[0],
            LineAction::Unchanged {
                property: "fan".into(),
                requested: json!(2),
                sent_for: 4
            },
            "an unrelated change does not repeat a command"
        );
        let failed = json!({"value": 2, "ac": 500, "av": 4, "ad": "port down"});
        let retry = plan_desired(
            Some(&t),
            &json!({"fan": 2}),
            5,
            &BTreeMap::from([("fan".to_owned(), (4, failed))]),
        );
        assert!(
            matches!(&retry[..], [LineAction::Send { .. }]),
            "a failed value is sent again at a new version"
        );
        let moved = plan_desired(
            Some(&t),
            &json!({"fan": 3}),
            5,
            &BTreeMap::from([("fan".to_owned(), (4, sent))]),
        );
        assert!(matches!(&moved[..], [LineAction::Send { line, .. }] if line == "SET fan 3\r\n"));
        let injected = plan_desired(
            Some(&t),
            &json!({"mode": "eco\r\nRESET"}),
            5,
            &BTreeMap::new(),
        );
        assert!(
            matches!(&injected[..], [LineAction::Refuse { reason, .. }] if reason.contains("control"))
        );
        let none = plan_desired(None, &json!({"fan": 2}), 5, &BTreeMap::new());
        assert!(
            matches!(&none[..], [LineAction::Refuse { reason, .. }] if reason.contains("no commands"))
        );
        let other = Template::parse("{unit} {value}\n").expect("valid template");
        let missing = plan_desired(Some(&other), &json!({"fan": 2}), 5, &BTreeMap::new());
        assert!(
            matches!(&missing[..], [LineAction::Refuse { reason, .. }] if reason.contains("unit"))
        );
    }
}
