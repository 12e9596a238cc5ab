//! The demo's view: one line per device with its link, values, the hub's reported version and
//! whether the hub holds what the gateway knows.

use std::fmt::Write as _;

use serde_json::Value;

use super::Demo;
use crate::bridge::HEALTH_KEY;
use crate::twin::Ack;

/// One device's state as shown.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) device: String,
    pub(crate) online: Option<bool>,
    pub(crate) values: String,
    pub(crate) hub_version: i64,
    /// The hub holds exactly the local reported document and nothing is pending.
    pub(crate) in_sync: bool,
}

/// Reads every device's row.
pub(crate) async fn rows(demo: &Demo) -> Vec<Row> {
    let mut rows = Vec::with_capacity(demo.devices.len());
    for device in &demo.devices {
        let state = demo.handle.store().sync_state(device).await.ok().flatten();
        let local = state.as_ref().map_or(Value::Null, |s| s.local.clone());
        let (hub_reported, hub_version) = hub_reported(demo, device);
        rows.push(Row {
            device: device.clone(),
            online: local
                .get(HEALTH_KEY)
                .and_then(|h| h.get("online"))
                .and_then(Value::as_bool),
            values: values(&local),
            hub_version,
            in_sync: state.is_some_and(|s| s.converged()) && hub_reported == local,
        });
    }
    rows
}

/// The hub's reported document (without `$version`/`$metadata`) and its version.
pub(crate) fn hub_reported(demo: &Demo, device: &str) -> (Value, i64) {
    let twin = demo.hub.hub().twin_json(device).unwrap_or(Value::Null);
    let mut reported = twin["properties"]["reported"].clone();
    let version = reported["$version"].as_i64().unwrap_or_default();
    if let Value::Object(map) = &mut reported {
        map.remove("$version");
        map.remove("$metadata");
    }
    (reported, version)
}

/// `name=value` pairs of a reported document (nested keys joined with `.`), the link-health
/// key left out, acknowledgements shown with their code and version.
fn values(local: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(map) = local {
        for (key, value) in map {
            if key != HEALTH_KEY {
                flatten(&mut out, key, value);
            }
        }
    }
    out
}

fn flatten(out: &mut String, path: &str, value: &Value) {
    if let Ok(ack) = Ack::parse(value) {
        let _ = write!(
            out,
            "{path}={} (ack {} v{}) ",
            ack.value,
            ack.code.as_u16(),
            ack.version
        );
    } else if let Value::Object(map) = value {
        for (key, inner) in map {
            flatten(out, &format!("{path}.{key}"), inner);
        }
    } else {
        let _ = write!(out, "{path}={value} ");
    }
}

/// The table, one line per device.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<7} {:<8} values\n",
        "device", "link", "hub v", "twin"
    );
    for row in rows {
        let link = match row.online {
            Some(true) => "online",
            Some(false) => "OFFLINE",
            None => "?",
        };
        let sync = if row.in_sync { "in sync" } else { "pending" };
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:<7} {:<8} {}",
            row.device,
            link,
            row.hub_version,
            sync,
            row.values.trim_end()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_flatten_paths_show_acks_and_hide_health() {
        let local = json!({
            "power": {"active": 12.5},
            "setpoint": {"value": 22.5, "ac": 200, "av": 3},
            "gateway": {"online": true},
        });
        assert_eq!(
            values(&local).trim_end(),
            "power.active=12.5 setpoint=22.5 (ack 200 v3)"
        );
    }

    #[test]
    fn render_says_link_and_sync() {
        let table = render(&[Row {
            device: "m".into(),
            online: Some(false),
            values: "a=1 ".into(),
            hub_version: 7,
            in_sync: false,
        }]);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.contains("OFFLINE")
                && l.contains("pending")
                && l.ends_with("a=1"))
        );
    }
}
