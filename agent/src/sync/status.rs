//! What each identity's driver publishes about itself, and the gateway twin's summary built
//! from it (pure).

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::store::SyncState;

/// One identity's sync state as its driver last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityStatus {
    /// Connected and subscribed.
    pub connected: bool,
    /// Not connecting because the wall clock is not plausible.
    pub waiting_for_clock: bool,
    /// Why the link last went down.
    pub last_disconnect: Option<String>,
    /// Since when the hub has not held the local reported document (`None`: in sync).
    pub unsynced_since: Option<SystemTime>,
    /// Reported keys the hub refused (4xx), withheld until their value changes.
    pub quarantined: Vec<QuarantinedKey>,
    /// Desired notifications refused (not JSON, against the hub's rules).
    pub bad_desired: u64,
}

/// A reported key the hub refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedKey {
    /// `reported.<key>`.
    pub path: String,
    /// The hub's status for it (400, 403, 413, …), when the last rejection was about it.
    pub status: Option<u16>,
    /// What the hub said, when known.
    pub reason: Option<String>,
}

/// The quarantined keys of a sync state, with the latest rejection's status and reason where
/// it was about that key.
pub fn quarantined_keys(state: &SyncState) -> Vec<QuarantinedKey> {
    state
        .quarantined
        .keys()
        .map(|key| {
            let rejection = state
                .last_rejection
                .as_ref()
                .filter(|r| r.patch.as_object().is_some_and(|p| p.contains_key(key)));
            QuarantinedKey {
                path: format!("reported.{key}"),
                status: rejection.map(|r| r.status),
                reason: rejection.map(|r| r.reason.clone()),
            }
        })
        .collect()
}

/// The gateway twin's reported summary: agent version, identities configured and connected,
/// how many have unsynced changes and since when, and every refused reported path.
///
/// Only legal twin content: keys without `.`/`$`/spaces (device ids go in values, not keys),
/// no `null` in arrays, timestamps as RFC 3339 strings. Absent facts are left out: send
/// [`diff`](crate::twin::diff)`(previous, new)`, which removes them from the twin.
pub fn gateway_summary(agent_version: &str, identities: &[(String, IdentityStatus)]) -> Value {
    let connected = identities.iter().filter(|(_, s)| s.connected).count();
    let unsynced: Vec<_> = identities
        .iter()
        .filter_map(|(_, s)| s.unsynced_since)
        .collect();
    let waiting_for_clock = identities.iter().any(|(_, s)| s.waiting_for_clock);
    let rejected: Vec<Value> = identities
        .iter()
        .flat_map(|(id, s)| {
            s.quarantined.iter().map(move |q| {
                let mut entry = Map::new();
                entry.insert("device".into(), json!(id));
                entry.insert("path".into(), json!(q.path));
                if let Some(status) = q.status {
                    entry.insert("status".into(), json!(status));
                }
                if let Some(reason) = &q.reason {
                    entry.insert("reason".into(), json!(truncate(reason, 256)));
                }
                Value::Object(entry)
            })
        })
        .collect();
    let mut summary = json!({
        "agent": {
            "name": "twinbridge",
            "version": agent_version,
            "waitingForClock": waiting_for_clock,
        },
        "identities": {
            "configured": identities.len(),
            "connected": connected,
            "unsynced": unsynced.len(),
        },
        "rejected": rejected,
    });
    if let Some(oldest) = unsynced.iter().min() {
        summary["identities"]["unsyncedSince"] =
            Value::String(humantime::format_rfc3339_seconds(*oldest).to_string());
    }
    summary
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::twin::{Section, validate_section};

    fn status(connected: bool, unsynced: Option<u64>) -> IdentityStatus {
        IdentityStatus {
            connected,
            unsynced_since: unsynced.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            ..IdentityStatus::default()
        }
    }

    #[test]
    fn summary_counts_and_oldest_unsynced() {
        let ids = vec![
            ("gw.1".to_owned(), status(true, None)),
            ("m-1".to_owned(), status(true, Some(1_800_000_000))),
            ("m-2".to_owned(), status(false, Some(1_700_000_000))),
        ];
        let s = gateway_summary("1.2.3", &ids);
        assert_eq!(s["agent"]["version"], "1.2.3");
        assert_eq!(s["identities"]["configured"], 3);
        assert_eq!(s["identities"]["connected"], 2);
        assert_eq!(s["identities"]["unsynced"], 2);
        assert_eq!(s["identities"]["unsyncedSince"], "2023-11-14T22:13:20Z");
        validate_section(Section::Reported, &s).expect("the summary is legal twin content");
    }

    #[test]
    fn rejected_paths_name_device_in_values_and_stay_legal() {
        let mut bad = status(true, Some(1_800_000_000));
        bad.quarantined.push(QuarantinedKey {
            path: "reported.big".into(),
            status: Some(413),
            reason: Some("é".repeat(300)),
        });
        let s = gateway_summary("1", &[("dev.with.dots".to_owned(), bad)]);
        assert_eq!(s["rejected"][0]["device"], "dev.with.dots");
        assert_eq!(s["rejected"][0]["path"], "reported.big");
        assert_eq!(s["rejected"][0]["status"], 413);
        assert!(s["rejected"][0]["reason"].as_str().expect("string").len() <= 256);
        validate_section(Section::Reported, &s).expect("legal");
    }

    #[test]
    fn quarantined_keys_take_status_from_the_rejection_about_them() {
        let mut state = SyncState::new();
        state.quarantined.insert("a".into(), json!(1));
        state.quarantined.insert("b".into(), json!(2));
        state.last_rejection = Some(crate::store::Rejection {
            status: 413,
            reason: "too large".into(),
            patch: json!({"b": 2}),
        });
        let keys = quarantined_keys(&state);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].path, "reported.a");
        assert_eq!(keys[0].status, None);
        assert_eq!(keys[1].status, Some(413));
        assert_eq!(keys[1].reason.as_deref(), Some("too large"));
    }
}
