//! Desired-property notifications from the hub → the writes, refusals and acks they call for.
//!
//! Input: byte 0 picks the topic's `$version` (absent, or 1..=255); the rest is the payload
//! as the hub would publish it. The path is the agent's: `desired_event` → merge into the
//! held desired document → `plan_desired` (Modbus points and a line device) → acks.
//! Invariants: nothing panics; every top-level desired property that the agent answers
//! (not `$…`, not `gateway`, not already applied at this version) gets exactly one action
//! and no other property gets one; a write names a writable point mapped to that property;
//! every ack is a valid PnP ack that reads back as what was sent; for a document the hub
//! accepts, a line command is exactly one line.
#![no_main]

use std::collections::BTreeMap;

use device_protocols::codec;
use device_protocols::line::Template;
use device_protocols::point::{DataType, Point, Table};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use twinbridge::bridge::line::mapping as line_mapping;
use twinbridge::bridge::mapping::{self, DesiredAction, HEALTH_KEY, PointMap};
use twinbridge::hub::SessionEvent;
use twinbridge::hub::response::desired_event;
use twinbridge::twin::{self, Ack, AckCode};

fn point(name: &str, table: Table, data_type: DataType) -> Point {
    Point::new(name, table, 0, data_type).expect("a valid point")
}

fn points() -> Vec<PointMap> {
    let map = |point: Point, property: &[&str]| PointMap {
        point,
        property: property.iter().map(|s| (*s).to_owned()).collect(),
        deadband: None,
    };
    vec![
        map(
            point("sp", Table::Holding, DataType::U16)
                .with_scale(0.1, 0.0)
                .with_writable(true),
            &["sp"],
        ),
        map(
            point("mode", Table::Holding, DataType::Bit(3)).with_writable(true),
            &["mode"],
        ),
        map(
            point("relay", Table::Coil, DataType::Bool).with_writable(true),
            &["relay"],
        ),
        map(
            point("label", Table::Holding, DataType::String { len: 8 }).with_writable(true),
            &["label"],
        ),
        map(
            point("gain", Table::Holding, DataType::F32).with_writable(true),
            &["gain"],
        ),
        map(
            point("count", Table::Holding, DataType::I64).with_writable(true),
            &["count"],
        ),
        map(
            point("temp", Table::Input, DataType::I16).with_scale(0.1, 0.0),
            &["temp"],
        ),
        map(
            point("nested", Table::Holding, DataType::U32).with_writable(true),
            &["a", "b"],
        ),
    ]
}

/// Checks an ack built the way the bridge builds it.
fn check_ack(requested: &Value, code: AckCode, version: i64, description: Option<String>) {
    let json = mapping::ack(requested.clone(), code, version, description.clone());
    if requested.is_null() {
        assert!(Ack::parse(&json).is_err(), "an ack of null parsed: {json}");
        return;
    }
    let ack = Ack::parse(&json).unwrap_or_else(|e| panic!("ack {json} does not parse: {e}"));
    assert_eq!(&ack.value, requested);
    assert_eq!(ack.code, code);
    assert_eq!(ack.version, u64::try_from(version).unwrap_or_default());
    assert_eq!(ack.description, description);
}

fuzz_target!(|data: &[u8]| {
    let [v, payload @ ..] = data else { return };
    let topic_version = (*v != 0).then_some(i64::from(*v));
    let SessionEvent::Desired { patch, version } = desired_event(topic_version, payload) else {
        return;
    };
    // The held document (version - 1) the notification patches, and what was applied of it.
    let held = json!({"sp": 21.5, "relay": true, "other": {"x": 1}});
    let document = twin::applied(&held, &patch);
    let mut applied: BTreeMap<String, (i64, Value)> = BTreeMap::new();
    applied.insert(
        "sp".into(),
        (
            version.saturating_sub(1),
            mapping::ack(
                json!(21.5),
                AckCode::Completed,
                version.saturating_sub(1),
                None,
            ),
        ),
    );
    applied.insert(
        "relay".into(),
        (
            version,
            mapping::ack(json!(true), AckCode::Completed, version, None),
        ),
    );
    // What the hub itself accepts (its key rules forbid control characters, for one).
    let hub_valid = twin::validate_section(twin::Section::Desired, &document).is_ok();

    let answered: Vec<&String> = document
        .as_object()
        .map(|doc| {
            doc.keys()
                .filter(|k| !k.starts_with('$') && *k != HEALTH_KEY)
                .filter(|k| applied.get(*k).is_none_or(|(at, _)| *at < version))
                .collect()
        })
        .unwrap_or_default();

    // Modbus device.
    let points = points();
    let actions = mapping::plan_desired(&points, &document, version, &applied);
    let mut named: Vec<&str> = actions.iter().map(DesiredAction::property).collect();
    named.sort_unstable();
    let mut expected: Vec<&str> = answered.iter().map(|s| s.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(named, expected, "modbus actions for {document}");
    for action in &actions {
        match action {
            DesiredAction::Write {
                property,
                point,
                value,
                requested,
            } => {
                let map = points
                    .iter()
                    .find(|m| &m.point.name == point)
                    .expect("a known point");
                assert!(map.point.writable);
                assert_eq!(map.property, [property.clone()]);
                assert_eq!(&document[property.as_str()], requested);
                // What the bus would do with it.
                if let Ok(n) = codec::normalize(&map.point, value) {
                    check_ack(&n.to_json(), AckCode::Completed, version, None);
                }
                check_ack(
                    requested,
                    AckCode::Other(202),
                    version,
                    Some("writing".into()),
                );
            }
            DesiredAction::Unchanged {
                property,
                requested,
            } => {
                assert_eq!(&document[property.as_str()], requested);
                check_ack(requested, AckCode::Completed, version, None);
            }
            DesiredAction::Refuse {
                property,
                requested,
                reason,
            } => {
                assert_eq!(&document[property.as_str()], requested);
                check_ack(requested, AckCode::Invalid, version, Some(reason.clone()));
            }
        }
    }

    // Line device with a command template, and one without.
    let template = Template::parse("SET {name} {value}\r\n").expect("a valid template");
    for command in [Some(&template), None] {
        let actions = line_mapping::plan_desired(command, &document, version, &applied);
        let mut named: Vec<&str> = actions.iter().map(line_action_property).collect();
        named.sort_unstable();
        assert_eq!(named, expected, "line actions for {document}");
        for action in &actions {
            if let (true, line_mapping::LineAction::Send { line, .. }) = (hub_valid, action) {
                // One command, one line: nothing in a value may end it early.
                let body = line.strip_suffix("\r\n").expect("the template's ending");
                assert!(!body.contains(['\r', '\n']), "a line break inside {line:?}");
            }
        }
    }
});

fn line_action_property(action: &line_mapping::LineAction) -> &str {
    match action {
        line_mapping::LineAction::Send { property, .. }
        | line_mapping::LineAction::Unchanged { property, .. }
        | line_mapping::LineAction::Refuse { property, .. } => property,
    }
}
