//! `twinbridge twin show DEVICE [--json]`: everything the store holds about one device's twin
//! — the local reported document, what the hub is known to hold and at which `$version`, the
//! patch still to send, the desired document and version, the ack of each writable property,
//! and quarantined keys. Read-only, like `status` (safe while the agent runs).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::store::DeviceSnapshot;
use crate::store::sync_state::reconcile;

/// One device's twin as the store holds it (`--json` prints it as is; field names are stable).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinView {
    /// Device identity.
    pub device: String,
    /// The reported document as the gateway knows it now.
    pub local: Value,
    /// What the hub is known to hold (as of the last ack or GET).
    pub hub_reported: Value,
    /// Its reported `$version`.
    pub hub_version: Option<i64>,
    /// Other documents the hub might hold (unanswered patches).
    pub hub_might_hold: Vec<Value>,
    /// The merge patch that would bring the hub to `local` (`{}` when in sync).
    pub pending: Value,
    /// The patch sent and not yet answered.
    pub in_flight: Option<Value>,
    /// The desired document as last received.
    pub desired: Value,
    /// Its `$version`.
    pub desired_version: Option<i64>,
    /// Per writable property: the applied desired version and the ack reported for it.
    pub acks: Vec<AckView>,
    /// Keys the hub rejected, with the value held back.
    pub quarantined: Value,
}

/// The applied version and ack of one writable property.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AckView {
    /// Property name.
    pub property: String,
    /// Desired `$version` last applied to the device.
    pub applied_version: i64,
    /// `applied_version` is below the desired version: a newer value awaits its ack.
    pub pending: bool,
    /// The ack object (`{"value", "ac", "av", "ad"}`).
    pub ack: Value,
}

/// Builds the view of one device's snapshot.
pub fn view(snapshot: &DeviceSnapshot) -> TwinView {
    let sync = &snapshot.sync;
    let mut bases = vec![&sync.hub_reported];
    bases.extend(sync.alternatives.iter());
    TwinView {
        device: snapshot.device.clone(),
        local: sync.local.clone(),
        hub_reported: sync.hub_reported.clone(),
        hub_version: sync.hub_version,
        hub_might_hold: sync.alternatives.clone(),
        pending: reconcile(&bases, &sync.local),
        in_flight: sync.in_flight.as_ref().map(|f| f.patch.clone()),
        desired: snapshot.desired.clone(),
        desired_version: snapshot.desired_version,
        acks: snapshot
            .properties
            .iter()
            .map(|p| AckView {
                property: p.name.clone(),
                applied_version: p.applied_version,
                pending: snapshot
                    .desired_version
                    .is_some_and(|v| p.applied_version < v),
                ack: p.ack.clone(),
            })
            .collect(),
        quarantined: Value::Object(sync.quarantined.clone().into_iter().collect()),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn section(out: &mut String, title: &str, value: &Value) {
    out.push_str(title);
    out.push_str(":\n");
    for line in pretty(value).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

fn version(v: Option<i64>) -> String {
    v.map_or_else(|| "none yet".to_owned(), |v| format!("$version {v}"))
}

/// The view for humans: one titled, indented JSON section per part.
pub fn render_text(view: &TwinView) -> String {
    let mut out = format!("device: {}\n", view.device);
    section(&mut out, "local reported", &view.local);
    section(
        &mut out,
        &format!("hub holds ({})", version(view.hub_version)),
        &view.hub_reported,
    );
    for (i, other) in view.hub_might_hold.iter().enumerate() {
        section(
            &mut out,
            &format!("hub might hold instead ({}, unanswered patch)", i + 1),
            other,
        );
    }
    if view
        .pending
        .as_object()
        .is_some_and(serde_json::Map::is_empty)
    {
        out.push_str("pending: nothing (in sync)\n");
    } else {
        section(&mut out, "pending (to send)", &view.pending);
    }
    if let Some(patch) = &view.in_flight {
        section(&mut out, "in flight (sent, not answered)", patch);
    }
    section(
        &mut out,
        &format!("desired ({})", version(view.desired_version)),
        &view.desired,
    );
    if view.acks.is_empty() {
        out.push_str("acks: none\n");
    } else {
        out.push_str("acks:\n");
        for ack in &view.acks {
            let _ = writeln!(
                out,
                "  {}: applied v{}{}: {}",
                ack.property,
                ack.applied_version,
                if ack.pending {
                    " (newer desired pending)"
                } else {
                    ""
                },
                ack.ack
            );
        }
    }
    if view.quarantined.as_object().is_some_and(|m| !m.is_empty()) {
        section(
            &mut out,
            "quarantined (rejected by the hub, held back)",
            &view.quarantined,
        );
    }
    out
}

/// Runs `twin show`; returns the exit code: 0 shown, 1 the device is not in the store or the
/// store could not be read, and the codes of [`super::status::run`] for a missing store or an
/// invalid configuration.
pub fn run(
    config_path: &Path,
    device: &str,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let (config, store) = match super::status::open(config_path, err) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    match store.snapshot(device) {
        Ok(Some(snapshot)) => {
            let view = view(&snapshot);
            let text = if json {
                super::status::render_json(&view)
            } else {
                render_text(&view)
            };
            let _ = out.write_all(text.as_bytes());
            0
        }
        Ok(None) => {
            let known = config.identity_ids().any(|id| id == device);
            let _ = writeln!(
                err,
                "{device:?} is not in the store {}{}",
                store.path().display(),
                if known {
                    " yet (it is in the configuration: has the service run since it was added?)"
                } else {
                    " (and not in the configuration)"
                }
            );
            1
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{InFlight, JournalStats, PropertyState, SyncState};

    fn snapshot() -> DeviceSnapshot {
        let mut sync = SyncState::new();
        sync.local = json!({"t": 2, "setpoint": {"value": 5, "ac": 200, "av": 4}});
        sync.hub_reported = json!({"t": 1});
        sync.hub_version = Some(8);
        sync.in_flight = Some(InFlight {
            request_id: "r9".to_owned(),
            patch: json!({"t": 2}),
            journal_seq: None,
        });
        DeviceSnapshot {
            device: "boiler-03".to_owned(),
            history: None,
            sync,
            desired: json!({"setpoint": 6}),
            desired_version: Some(5),
            properties: vec![PropertyState {
                name: "setpoint".to_owned(),
                applied_version: 4,
                ack: json!({"value": 5, "ac": 200, "av": 4}),
            }],
            journal_stats: JournalStats::default(),
            journal: Vec::new(),
        }
    }

    #[test]
    fn the_view_holds_the_pending_diff_and_the_acks() {
        let view = view(&snapshot());
        assert_eq!(
            view.pending,
            json!({"t": 2, "setpoint": {"value": 5, "ac": 200, "av": 4}})
        );
        assert_eq!(view.in_flight, Some(json!({"t": 2})));
        assert!(view.acks[0].pending);
        let json: Value =
            serde_json::from_str(&super::super::status::render_json(&view)).expect("JSON");
        assert_eq!(json["hubVersion"], 8);
        assert_eq!(json["acks"][0]["appliedVersion"], 4);
        assert_eq!(json["quarantined"], json!({}));
    }

    #[test]
    fn the_text_has_a_titled_section_per_part() {
        let text = render_text(&view(&snapshot()));
        assert!(
            text.starts_with("device: boiler-03\nlocal reported:\n  {\n"),
            "{text}"
        );
        assert!(
            text.contains("hub holds ($version 8):\n  {\n    \"t\": 1\n  }\n"),
            "{text}"
        );
        assert!(text.contains("pending (to send):\n"), "{text}");
        assert!(text.contains("in flight (sent, not answered):\n"), "{text}");
        assert!(text.contains("desired ($version 5):\n"), "{text}");
        assert!(
            text.contains("  setpoint: applied v4 (newer desired pending): {\"ac\":200"),
            "{text}"
        );
        assert!(!text.contains("quarantined"), "{text}");
    }
}
