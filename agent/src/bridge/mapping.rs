//! Pure mapping between a device's points and its twin: poll results → reported patch (with
//! deadband), bus health → the `gateway` link-health object, desired document → the writes
//! and refusals it calls for, and the acknowledgements that answer them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use device_protocols::bus::UnitPoll;
use device_protocols::health::{PortState, UnitHealth, UnitStatus};
use device_protocols::point::{DataType, Point, Value};
use serde_json::{Map, Value as Json, json};

use crate::twin::{Ack, AckCode};

/// The reported key that carries a device's link health (`$gateway` would be illegal: keys
/// may not contain `$`).
pub const HEALTH_KEY: &str = "gateway";

/// How stale `lastGoodRead` may get in the twin while a device stays online: refreshing it on
/// every poll would turn every cycle into a `PATCH`.
pub const LAST_GOOD_READ_REFRESH: Duration = Duration::from_mins(15);

/// One point of a device and where it lives in the twin.
#[derive(Debug, Clone, PartialEq)]
pub struct PointMap {
    /// The point on the device.
    pub point: Point,
    /// Property path under `reported` (and `desired`, for a writable point: one key).
    pub property: Vec<String>,
    /// Changes of a numeric value smaller than this are not reported.
    pub deadband: Option<f64>,
}

impl PointMap {
    /// The property path joined with `.` (for messages).
    pub fn path(&self) -> String {
        self.property.join(".")
    }
}

/// Sets `value` at `path` in the object `doc`, creating intermediate objects.
pub(crate) fn set_path(doc: &mut Map<String, Json>, path: &[String], value: Json) {
    match path {
        [] => {}
        [last] => {
            doc.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = doc
                .entry(first.clone())
                .or_insert_with(|| Json::Object(Map::new()));
            if !entry.is_object() {
                *entry = Json::Object(Map::new());
            }
            if let Json::Object(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// The value at `path` in `doc`.
pub fn get_path<'a>(doc: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(doc, |node, key| node.get(key))
}

/// Whether `new` differs enough from `old` to be reported.
fn beyond_deadband(old: Option<&Json>, new: &Json, deadband: Option<f64>) -> bool {
    let Some(old) = old else { return true };
    match (deadband, old.as_f64(), new.as_f64()) {
        (Some(band), Some(a), Some(b)) if band > 0.0 => (a - b).abs() >= band,
        _ => old != new,
    }
}

/// The reported patch for one poll cycle: every point read successfully whose value moved
/// past its deadband compared with what `local` (the reported document as stored) holds.
/// A writable point whose property holds an acknowledgement gets only the ack's `value`
/// updated, so the acknowledgement stays intact. Points that failed are left as they were:
/// the link health says why.
pub fn reported_patch(points: &[PointMap], poll: &UnitPoll, local: &Json) -> Json {
    let mut patch = Map::new();
    for map in points {
        let Some(Ok(value)) = poll.get(&map.point.name) else {
            continue;
        };
        let value = value.to_json();
        if value.is_null() {
            continue; // NaN/inf: nothing JSON can carry
        }
        let held = get_path(local, &map.property);
        if let Some(ack) = held.filter(|h| Ack::parse(h).is_ok()) {
            if beyond_deadband(ack.get("value"), &value, map.deadband) {
                let mut path = map.property.clone();
                path.push("value".to_owned());
                set_path(&mut patch, &path, value);
            }
        } else if beyond_deadband(held, &value, map.deadband) {
            set_path(&mut patch, &map.property, value);
        }
    }
    Json::Object(patch)
}

/// Where a device sits, for its link-health object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The gateway's device id.
    pub gateway: String,
    /// The bus name.
    pub bus: String,
    /// The unit id on the bus.
    pub unit: u8,
}

/// The link-health object of a device (`reported.gateway`): `id` (the gateway's id, so the
/// back end finds every device of a gateway with one query), `bus`, `unit`, `online` (answers
/// with data), `status` (`online`, `faulted`: answers only with exceptions, `offline`,
/// `unknown`: not polled yet),
/// `consecutiveErrors`, `lastError` (while the bus's port is down: `port down: <why>`, e.g. a
/// UART without the RS-485 mode the bus asks for), and `lastGoodRead` — refreshed only when
/// the device's online state changes or the stored one is older than
/// [`LAST_GOOD_READ_REFRESH`].
pub fn health_object(
    placement: &Placement,
    health: Option<&UnitHealth>,
    port: &PortState,
    held: Option<&Json>,
) -> Json {
    let port_up = matches!(port, PortState::Open);
    let status = if port_up {
        health.map_or(UnitStatus::Unknown, |h| h.status)
    } else {
        UnitStatus::Offline
    };
    let online = status == UnitStatus::Online;
    let mut object = json!({
        "id": placement.gateway,
        "bus": placement.bus,
        "unit": placement.unit,
        "online": online,
        "status": status.as_str(),
        "consecutiveErrors": health.map_or(0, |h| h.consecutive_errors),
    });
    if let PortState::Down { error, .. } = port {
        // The port's own error says what to fix; a unit's last error predates it.
        object["lastError"] = json!(format!("port down: {error}"));
    } else if let Some(error) = health
        .and_then(|h| h.last_error.as_ref())
        .filter(|_| !online)
    {
        object["lastError"] = json!(error);
    } else if !port_up {
        object["lastError"] = json!("port down");
    }
    if let Some(at) = last_good_read(health.and_then(|h| h.last_success), online, held) {
        object["lastGoodRead"] = json!(rfc3339(at));
    }
    object
}

/// The `lastGoodRead` to show, given the latest good read (`fresh`), the online state now and
/// the stored health object (`held`): `fresh` when the online state changed or the stored
/// time is older than [`LAST_GOOD_READ_REFRESH`], the stored time otherwise.
pub(crate) fn last_good_read(
    fresh: Option<SystemTime>,
    online: bool,
    held: Option<&Json>,
) -> Option<SystemTime> {
    let held_read = held
        .and_then(|h| h.get("lastGoodRead"))
        .and_then(Json::as_str)
        .and_then(|s| humantime::parse_rfc3339(s).ok());
    let held_online = held.and_then(|h| h.get("online")).and_then(Json::as_bool);
    let refresh = match (fresh, held_read) {
        (Some(_), None) => true,
        (Some(now), Some(then)) => {
            held_online != Some(online)
                || now
                    .duration_since(then)
                    .is_ok_and(|age| age >= LAST_GOOD_READ_REFRESH)
        }
        (None, _) => false,
    };
    if refresh { fresh } else { held_read }
}

/// `at` as RFC 3339 in whole seconds (UTC).
pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What a desired document asks of one device.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredAction {
    /// Write `value` to `point` (property `property`) and acknowledge the read-back.
    Write {
        /// Property (top-level desired key).
        property: String,
        /// Point name on the device.
        point: String,
        /// The value, converted for the point.
        value: Value,
        /// The desired value as the hub sent it (for a refusal's ack).
        requested: Json,
    },
    /// The value is the one last written and acknowledged: acknowledge the new version
    /// (200) without writing.
    Unchanged {
        /// Property (top-level desired key).
        property: String,
        /// The desired value as the hub sent it.
        requested: Json,
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

impl DesiredAction {
    /// The property this action answers.
    pub fn property(&self) -> &str {
        match self {
            Self::Write { property, .. }
            | Self::Unchanged { property, .. }
            | Self::Refuse { property, .. } => property,
        }
    }
}

/// The actions a desired document at `version` calls for: one per top-level desired property
/// whose applied version (`applied`) is older than `version`. Writable points map to
/// top-level properties; any other desired property is refused (unknown, or not writable),
/// as is a value of the wrong type for its point. `$`-keys and `gateway` (the link health's
/// key) are left alone. Range checks happen when the bus encodes.
pub fn plan_desired(
    points: &[PointMap],
    desired: &Json,
    version: i64,
    applied: &BTreeMap<String, (i64, Json)>,
) -> Vec<DesiredAction> {
    let Json::Object(doc) = desired else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    for (property, requested) in doc {
        // `gateway`: an acknowledgement there would overwrite the link health.
        if property.starts_with('$')
            || property == HEALTH_KEY
            || applied.get(property).is_some_and(|(v, _)| *v >= version)
        {
            continue;
        }
        let refuse = |reason: String| DesiredAction::Refuse {
            property: property.clone(),
            requested: requested.clone(),
            reason,
        };
        let Some(map) = points
            .iter()
            .find(|m| m.property.len() == 1 && &m.property[0] == property)
        else {
            actions.push(refuse(format!("unknown property {property:?}")));
            continue;
        };
        if !map.point.writable {
            actions.push(refuse(format!("property {property:?} is not writable")));
            continue;
        }
        match desired_value(&map.point, requested) {
            // A new desired version that leaves this property's value as last written and
            // acknowledged: acknowledge it at the new version without writing again.
            Ok(value)
                if applied.get(property).is_some_and(|(_, ack)| {
                    Ack::parse(ack).is_ok_and(|ack| {
                        ack.code == AckCode::Completed
                            && Value::from_json(&ack.value)
                                .is_some_and(|held| map.point.same_value(&value, &held))
                    })
                }) =>
            {
                actions.push(DesiredAction::Unchanged {
                    property: property.clone(),
                    requested: requested.clone(),
                });
            }
            Ok(value) => actions.push(DesiredAction::Write {
                property: property.clone(),
                point: map.point.name.clone(),
                value,
                requested: requested.clone(),
            }),
            Err(reason) => actions.push(refuse(reason)),
        }
    }
    actions
}

/// Converts a desired JSON value for `point`, refusing the wrong type.
fn desired_value(point: &Point, requested: &Json) -> Result<Value, String> {
    let wrong = || {
        format!(
            "expected {} for {}, got {requested}",
            expected_kind(point),
            point.name
        )
    };
    let value = Value::from_json(requested).ok_or_else(wrong)?;
    let fits = match point.data_type {
        DataType::Bool => matches!(value, Value::Bool(_)),
        DataType::String { .. } => matches!(value, Value::String(_)),
        _ => matches!(value, Value::U64(_) | Value::I64(_) | Value::F64(_)),
    };
    if !fits {
        return Err(wrong());
    }
    // A scaled point takes engineering units (a float), whatever JSON number came in.
    Ok(match value {
        Value::U64(u) if point.is_scaled() => Value::F64(u as f64),
        Value::I64(i) if point.is_scaled() => Value::F64(i as f64),
        other => other,
    })
}

fn expected_kind(point: &Point) -> &'static str {
    match point.data_type {
        DataType::Bool => "a boolean",
        DataType::String { .. } => "a string",
        _ => "a number",
    }
}

/// The acknowledgement JSON for desired `version` of a property.
pub fn ack(value: Json, code: AckCode, version: i64, description: Option<String>) -> Json {
    Ack::new(
        value,
        code,
        u64::try_from(version).unwrap_or_default(),
        description,
    )
    .to_json()
}

/// The reported keys no point maps to any more (a point renamed or removed between runs),
/// at any depth: each set to `null` in the returned patch so the twin does not keep a stale
/// value that looks current. The link-health key and the acknowledgements of desired
/// properties the device refused stay.
pub fn stale_keys_patch(points: &[PointMap], local: &Json) -> Json {
    let mut mapped = Map::new();
    for p in points {
        set_path(&mut mapped, &p.property, Json::Bool(true));
    }
    let mut patch = Map::new();
    if let Json::Object(map) = local {
        for (key, value) in map {
            let refused_ack = Ack::parse(value).is_ok_and(|a| a.code != AckCode::Completed);
            if key == HEALTH_KEY || (refused_ack && !mapped.contains_key(key)) {
                continue;
            }
            stale_in(&mapped, key, value, &mut patch);
        }
    }
    Json::Object(patch)
}

fn stale_in(mapped: &Map<String, Json>, key: &str, value: &Json, patch: &mut Map<String, Json>) {
    match mapped.get(key) {
        None => {
            patch.insert(key.to_owned(), Json::Null);
        }
        Some(Json::Object(inner)) => {
            if let Json::Object(held) = value {
                let mut sub = Map::new();
                for (k, v) in held {
                    stale_in(inner, k, v, &mut sub);
                }
                if !sub.is_empty() {
                    patch.insert(key.to_owned(), Json::Object(sub));
                }
            }
        }
        Some(_) => {} // a mapped leaf (or an ack object at it)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use device_protocols::bus::{PointError, PointReading};
    use device_protocols::point::Table;

    use super::*;

    fn map(point: Point, property: &[&str], deadband: Option<f64>) -> PointMap {
        PointMap {
            point,
            property: property.iter().map(|s| (*s).to_owned()).collect(),
            deadband,
        }
    }

    fn temperature() -> PointMap {
        map(
            Point::new("t", Table::Input, 0, DataType::I16)
                .expect("valid")
                .with_scale(0.1, 0.0),
            &["climate", "temperature"],
            Some(0.5),
        )
    }

    fn setpoint() -> PointMap {
        map(
            Point::new("sp", Table::Holding, 100, DataType::U16)
                .expect("valid")
                .with_scale(0.1, 0.0)
                .with_writable(true),
            &["setpoint"],
            None,
        )
    }

    fn poll(readings: Vec<(&str, Result<Value, PointError>)>) -> UnitPoll {
        UnitPoll {
            unit: 1,
            at: SystemTime::UNIX_EPOCH,
            requests: 1,
            readings: readings
                .into_iter()
                .map(|(name, result)| PointReading {
                    name: Arc::from(name),
                    result,
                })
                .collect(),
        }
    }

    #[test]
    fn readings_land_at_their_paths_past_the_deadband_only() {
        let points = [temperature(), setpoint()];
        let first = reported_patch(
            &points,
            &poll(vec![
                ("t", Ok(Value::F64(21.5))),
                ("sp", Ok(Value::F64(20.0))),
            ]),
            &json!({}),
        );
        assert_eq!(
            first,
            json!({"climate": {"temperature": 21.5}, "setpoint": 20.0})
        );
        let held = json!({"climate": {"temperature": 21.5}, "setpoint": 20.0});
        let small = reported_patch(&points, &poll(vec![("t", Ok(Value::F64(21.8)))]), &held);
        assert_eq!(small, json!({}), "0.3 is inside the 0.5 deadband");
        let big = reported_patch(&points, &poll(vec![("t", Ok(Value::F64(22.0)))]), &held);
        assert_eq!(big, json!({"climate": {"temperature": 22.0}}));
        let failed = reported_patch(&points, &poll(vec![("t", Err(PointError::Timeout))]), &held);
        assert_eq!(
            failed,
            json!({}),
            "a failed read leaves the value as it was"
        );
    }

    #[test]
    fn a_reading_of_an_acknowledged_property_updates_only_the_ack_value() {
        let held = json!({"setpoint": {"value": 22.5, "ac": 200, "av": 3}});
        let patch = reported_patch(
            &[setpoint()],
            &poll(vec![("sp", Ok(Value::F64(23.0)))]),
            &held,
        );
        assert_eq!(patch, json!({"setpoint": {"value": 23.0}}));
        let same = reported_patch(
            &[setpoint()],
            &poll(vec![("sp", Ok(Value::F64(22.5)))]),
            &held,
        );
        assert_eq!(same, json!({}));
    }

    #[test]
    fn desired_plan_writes_new_versions_and_refuses_what_it_cannot() {
        let points = [temperature(), setpoint()];
        let desired =
            json!({"setpoint": 22.5, "climate": 1, "colour": "red", "gateway": 1, "$version": 4});
        let actions = plan_desired(&points, &desired, 4, &BTreeMap::new());
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert!(actions.iter().any(|a| matches!(a,
            DesiredAction::Write { property, value: Value::F64(v), .. } if property == "setpoint" && (*v - 22.5).abs() < 1e-9)));
        assert!(actions.iter().any(|a| matches!(a,
            DesiredAction::Refuse { property, reason, .. } if property == "colour" && reason.contains("unknown"))));
        assert!(actions.iter().any(|a| matches!(a,
            DesiredAction::Refuse { property, .. } if property == "climate")));
        let wrong = plan_desired(&points, &json!({"setpoint": "hot"}), 5, &BTreeMap::new());
        assert!(
            matches!(&wrong[..], [DesiredAction::Refuse { reason, .. }] if reason.contains("number"))
        );
        let acked = json!({"value": 22.5, "ac": 200, "av": 4});
        let applied = BTreeMap::from([("setpoint".to_owned(), (4, acked))]);
        assert!(
            plan_desired(&points, &json!({"setpoint": 22.5}), 4, &applied).is_empty(),
            "a version is written once"
        );
        assert!(
            matches!(
                &plan_desired(&points, &json!({"setpoint": 22.5, "x": 1}), 5, &applied)[..],
                [DesiredAction::Unchanged { property, .. }, DesiredAction::Refuse { .. }] if property == "setpoint"
            ),
            "an unchanged value is acknowledged at the new version, not written again"
        );
        assert!(matches!(
            &plan_desired(&points, &json!({"setpoint": 23.0}), 5, &applied)[..],
            [DesiredAction::Write { .. }]
        ));
    }

    #[test]
    fn health_names_the_gateway_and_refreshes_last_good_read_sparingly() {
        let placement = Placement {
            gateway: "gw-1".into(),
            bus: "rs485-a".into(),
            unit: 7,
        };
        let mut unit = UnitHealth::new(7);
        unit.online = true;
        unit.status = UnitStatus::Online;
        unit.last_success = Some(SystemTime::UNIX_EPOCH + Duration::from_hours(500_000));
        let first = health_object(&placement, Some(&unit), &PortState::Open, None);
        assert_eq!(first["id"], "gw-1");
        assert_eq!(first["online"], true);
        assert_eq!(first["lastGoodRead"], "2027-01-15T08:00:00Z");
        unit.last_success = Some(SystemTime::UNIX_EPOCH + Duration::from_mins(30_000_001));
        let later = health_object(&placement, Some(&unit), &PortState::Open, Some(&first));
        assert_eq!(later, first, "a minute later nothing changes");
        unit.online = false;
        unit.status = UnitStatus::Offline;
        unit.last_error = Some("timeout".into());
        let offline = health_object(&placement, Some(&unit), &PortState::Open, Some(&first));
        assert_eq!(offline["online"], false);
        assert_eq!(offline["status"], "offline");
        assert_eq!(offline["lastError"], "timeout");
        let down = PortState::Down {
            error: "opening serial port /dev/ttyAMA0: no such file or directory".into(),
            attempts: 3,
        };
        let port_down = health_object(&placement, Some(&unit), &down, Some(&first));
        assert_eq!(port_down["online"], false);
        assert_eq!(
            port_down["lastError"],
            "port down: opening serial port /dev/ttyAMA0: no such file or directory"
        );
        let starting = health_object(&placement, None, &PortState::Starting, None);
        assert_eq!(starting["lastError"], "port down");
    }

    #[test]
    fn stale_keys_are_removed_at_any_depth_but_health_and_refusals_stay() {
        let points = [temperature(), setpoint()];
        let local = json!({
            "climate": {"temperature": 21.0, "humidity": 40},
            "setpoint": {"value": 20.0, "ac": 200, "av": 1},
            "old": 1,
            "gateway": {"online": true},
            "colour": {"value": "red", "ac": 400, "av": 2, "ad": "unknown property"},
        });
        assert_eq!(
            stale_keys_patch(&points, &local),
            json!({"climate": {"humidity": null}, "old": null})
        );
    }
}
