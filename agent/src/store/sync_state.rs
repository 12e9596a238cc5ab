//! The reported-side sync state of one device, as plain data with pure transitions.
//!
//! This is the DESIGN "sync model" for reported properties. The store persists a [`SyncState`]
//! per device and calls exactly one transition per transaction; nothing here does IO.
//!
//! # What the state knows
//!
//! - `local`: the reported document as the gateway knows it now.
//! - `hub_reported` + `hub_version`: what the hub is known to hold.
//! - `alternatives`: other documents the hub *might* hold. A PATCH whose outcome is unknown
//!   (link lost or process killed before the response, or a 5xx answer) may or may not have been
//!   applied. Re-diffing against `hub_reported` alone would then be wrong: if `local` went back
//!   to the old value in the meantime, the plain diff is empty while the hub holds the lost
//!   patch's value. So the next patch is computed to be correct for *every* possible hub document
//!   ([`reconcile`]), and an ack collapses the possibilities again. A GET of the twin
//!   ([`SyncState::on_hub_reported`]) replaces them all with the truth.
//! - `in_flight`: the one patch sent and not yet answered (at most one per device: the hub does
//!   not order concurrent `PATCH`es).
//! - `quarantined` / `probing`: bad-patch handling (400 malformed, 413 too large). Resending the
//!   same rejected patch forever is pointless, so a rejected multi-key patch is retried one
//!   top-level key at a time ("probing") to find the offending keys; a key whose single-key
//!   patch is rejected is quarantined with that exact sub-patch and withheld until its value
//!   changes. The other keys keep converging. The latest rejection is kept for `status`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::twin::{JsonKind, apply, diff, is_noop, strip_reserved};

/// How many alternative hub documents are tracked before giving up and asking for a GET.
///
/// Each unanswered PATCH adds at most one distinct alternative in practice (every possible
/// document maps to the same target), so the cap is only reached by a link that drops many
/// times in a row with a patch in flight and a quarantined key making the targets differ.
pub const MAX_ALTERNATIVES: usize = 8;

/// The plain DESIGN formula: `diff(hub_reported ⊕ in_flight, local)`, restricted to at most one
/// patch in flight per device.
///
/// Returns `None` while a patch is in flight (the caller must wait for its answer) or when
/// `hub_reported` already equals `local`. [`SyncState::next_patch`] builds on this and also
/// accounts for unknown outcomes and quarantined keys.
pub fn next_patch(hub_reported: &Value, in_flight: Option<&Value>, local: &Value) -> Option<Value> {
    if in_flight.is_some() {
        return None;
    }
    let patch = diff(hub_reported, local);
    (!is_noop(&patch)).then_some(patch)
}

/// The smallest-effort merge patch `p` with `apply(b, p) == target` for **every** `b` in
/// `bases`.
///
/// With one base this equals [`diff`]. Keys on which all bases already agree with `target` are
/// left out; every other key is set explicitly (deleted with `null`, replaced, or recursed into
/// when `target` holds an object there).
pub fn reconcile(bases: &[&Value], target: &Value) -> Value {
    if let [only] = bases {
        return diff(only, target);
    }
    let Value::Object(want) = target else {
        return target.clone();
    };
    let empty = Map::new();
    let objects: Vec<&Map<String, Value>> = bases
        .iter()
        .map(|b| b.as_object().unwrap_or(&empty))
        .collect();
    let mut keys: BTreeSet<&String> = want.keys().collect();
    for object in &objects {
        keys.extend(object.keys());
    }
    let empty_value = Value::Object(Map::new());
    let mut patch = Map::new();
    for key in keys {
        let held: Vec<Option<&Value>> = objects.iter().map(|o| o.get(key)).collect();
        match want.get(key) {
            None => {
                if held.iter().any(Option::is_some) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            Some(value) if held.iter().all(|h| *h == Some(value)) => {}
            Some(value @ Value::Object(_)) => {
                // A merge patch object applied to a non-object starts from `{}`.
                let sub_bases: Vec<&Value> = held
                    .iter()
                    .map(|h| h.filter(|v| v.is_object()).unwrap_or(&empty_value))
                    .collect();
                let sub = reconcile(&sub_bases, value);
                let some_not_object = held.iter().any(|h| !h.is_some_and(Value::is_object));
                if some_not_object || !is_noop(&sub) {
                    patch.insert(key.clone(), sub);
                }
            }
            Some(value) => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(patch)
}

/// A reported patch sent to the hub and not yet answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    /// The `$rid` of the PATCH request; answers with another `$rid` are stale and ignored.
    pub request_id: String,
    /// The merge patch that was published.
    pub patch: Value,
    /// Set when the patch is an entry of the every-change journal (its sequence number).
    #[serde(default)]
    pub journal_seq: Option<i64>,
}

/// The latest rejection of a reported patch, kept so that `status` can show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Hub status code (400 malformed, 413 too large, ...).
    pub status: u16,
    /// Why, as far as known (hub error body or the caller's text).
    pub reason: String,
    /// The patch that was rejected.
    pub patch: Value,
}

/// What a non-success hub answer means for a reported patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// A 4xx other than 408 and 429 (400 malformed, 413 too large, 403 …: real hubs are not
    /// consistent about which one an oversize section gets): the hub refused the patch
    /// without applying it. It is quarantined (see module docs), never resent as is.
    Bad,
    /// 429: throttled before processing; nothing was applied. Retry later with backoff.
    Throttled,
    /// Anything else (5xx, 408, unexpected codes): the hub may or may not have applied the
    /// patch. Treated like a lost answer; retry later with backoff.
    Unknown,
}

impl RejectKind {
    /// Classifies a hub status code of a reported PATCH answer (non-2xx).
    pub fn of(status: u16) -> Self {
        match status {
            429 => Self::Throttled,
            408 => Self::Unknown,
            400..=499 => Self::Bad,
            _ => Self::Unknown,
        }
    }
}

/// Error of [`SyncState::merge_local`]: reported documents and their patches are objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a reported patch must be a JSON object, got {0}")]
pub struct NotAnObject(pub &'static str);

/// The reported-side sync state of one device. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// The reported document as the gateway knows it now.
    pub local: Value,
    /// The reported document the hub is known to hold (without `$version` / `$metadata`).
    pub hub_reported: Value,
    /// The hub's reported `$version` that goes with `hub_reported`, once known.
    pub hub_version: Option<i64>,
    /// Other documents the hub might hold after `PATCH`es with unknown outcome.
    pub alternatives: Vec<Value>,
    /// Too many unknown outcomes: nothing is sent until a GET result arrives.
    pub resync_needed: bool,
    /// The patch sent and not yet answered.
    pub in_flight: Option<InFlight>,
    /// Top-level keys withheld after their single-key patch was rejected, with that sub-patch.
    pub quarantined: BTreeMap<String, Value>,
    /// Top-level keys of a rejected multi-key patch, still to be tried one at a time.
    pub probing: BTreeSet<String>,
    /// The latest rejection (cleared once nothing is quarantined or probing any more).
    pub last_rejection: Option<Rejection>,
    /// How many patches the hub rejected as bad (4xx, see [`RejectKind::Bad`]) over the device's life.
    pub rejections: u64,
}

impl Default for SyncState {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncState {
    /// An empty device: nothing local, nothing known about the hub.
    pub fn new() -> Self {
        Self {
            local: Value::Object(Map::new()),
            hub_reported: Value::Object(Map::new()),
            hub_version: None,
            alternatives: Vec::new(),
            resync_needed: false,
            in_flight: None,
            quarantined: BTreeMap::new(),
            probing: BTreeSet::new(),
            last_rejection: None,
            rejections: 0,
        }
    }

    /// Merges `patch` (new poll results, an ack object, ...) into `local`.
    ///
    /// Returns the effective change: `diff(old local, new local)`, an empty object when the
    /// patch changed nothing.
    pub fn merge_local(&mut self, patch: &Value) -> Result<Value, NotAnObject> {
        if !patch.is_object() {
            return Err(NotAnObject(JsonKind::of(patch).article()));
        }
        let before = self.local.clone();
        apply(&mut self.local, patch);
        Ok(diff(&before, &self.local))
    }

    /// The full patch that would bring every possible hub document to `local`, before
    /// quarantine and probing are taken into account.
    fn full_patch(&self) -> Value {
        if self.alternatives.is_empty() {
            diff(&self.hub_reported, &self.local)
        } else {
            let mut bases = vec![&self.hub_reported];
            bases.extend(self.alternatives.iter());
            reconcile(&bases, &self.local)
        }
    }

    /// The patch to send now, or `None` when a patch is in flight, a GET is needed first
    /// ([`SyncState::resync_needed`]), or nothing (sendable) differs.
    pub fn next_patch(&self) -> Option<Value> {
        if self.in_flight.is_some() || self.resync_needed {
            return None;
        }
        let mut full = self.full_patch();
        let Value::Object(map) = &mut full else {
            return Some(full);
        };
        map.retain(|key, sub| self.quarantined.get(key) != Some(sub));
        if let Some(key) = map.keys().find(|k| self.probing.contains(*k)).cloned() {
            let sub = map.remove(&key).expect("key was just found in the map");
            return Some(Value::Object(Map::from_iter([(key, sub)])));
        }
        (!map.is_empty()).then_some(full)
    }

    /// Whether the hub is known to hold exactly `local` with nothing pending.
    pub fn converged(&self) -> bool {
        self.in_flight.is_none()
            && self.alternatives.is_empty()
            && !self.resync_needed
            && self.hub_reported == self.local
    }

    /// Computes [`SyncState::next_patch`] and records it as in flight under `request_id`.
    ///
    /// Also forgets quarantine and probing entries of keys that no longer differ.
    pub fn begin_send(&mut self, request_id: &str) -> Option<Value> {
        if self.in_flight.is_some() || self.resync_needed {
            return None;
        }
        if let Value::Object(full) = self.full_patch() {
            self.probing.retain(|k| full.contains_key(k));
            self.quarantined.retain(|k, _| full.contains_key(k));
            self.forget_rejection_if_clear();
        }
        let patch = self.next_patch()?;
        self.in_flight = Some(InFlight {
            request_id: request_id.to_owned(),
            patch: patch.clone(),
            journal_seq: None,
        });
        Some(patch)
    }

    /// Records an explicit patch (an every-change journal entry) as in flight.
    ///
    /// Returns `false` and changes nothing when a patch is already in flight or a GET is
    /// needed first.
    pub fn begin_send_patch(&mut self, request_id: &str, patch: Value, journal_seq: i64) -> bool {
        if self.in_flight.is_some() || self.resync_needed {
            return false;
        }
        self.in_flight = Some(InFlight {
            request_id: request_id.to_owned(),
            patch,
            journal_seq: Some(journal_seq),
        });
        true
    }

    /// The hub answered 204 with the new reported `$version`.
    ///
    /// Returns the acknowledged patch, or `None` (nothing changed) when `request_id` is not the
    /// one in flight (a stale answer from an earlier session).
    pub fn on_ack(&mut self, request_id: &str, version: i64) -> Option<InFlight> {
        let in_flight = self.take_in_flight(request_id)?;
        apply(&mut self.hub_reported, &in_flight.patch);
        for alternative in &mut self.alternatives {
            apply(alternative, &in_flight.patch);
        }
        self.normalize_alternatives();
        self.hub_version = Some(version);
        if in_flight.journal_seq.is_none()
            && let Value::Object(sent) = &in_flight.patch
        {
            for key in sent.keys() {
                self.probing.remove(key);
                self.quarantined.remove(key);
            }
        }
        self.forget_rejection_if_clear();
        Some(in_flight)
    }

    /// The hub answered the in-flight patch with a non-success `status`.
    ///
    /// Returns how the answer was classified, or `None` (nothing changed) when `request_id` is
    /// not the one in flight. The caller backs off before the next send for
    /// [`RejectKind::Throttled`] and [`RejectKind::Unknown`].
    pub fn on_reject(&mut self, request_id: &str, status: u16, reason: &str) -> Option<RejectKind> {
        let in_flight = self.take_in_flight(request_id)?;
        let kind = RejectKind::of(status);
        match kind {
            RejectKind::Bad => {
                self.rejections += 1;
                // Journal entries are history: a bad one is dropped by the store, and the
                // state diff that follows the journal gets its own quarantine if needed.
                if in_flight.journal_seq.is_none()
                    && let Value::Object(sent) = &in_flight.patch
                {
                    if let [(key, sub)] = sent.iter().collect::<Vec<_>>()[..] {
                        self.probing.remove(key);
                        self.quarantined.insert(key.clone(), sub.clone());
                    } else {
                        self.probing.extend(sent.keys().cloned());
                    }
                }
                self.last_rejection = Some(Rejection {
                    status,
                    reason: reason.to_owned(),
                    patch: in_flight.patch,
                });
            }
            RejectKind::Throttled => {}
            RejectKind::Unknown => self.add_unknown_outcome(&in_flight.patch),
        }
        Some(kind)
    }

    /// The link (or the process) went away: an in-flight patch may or may not have been
    /// applied. It is no longer in flight; the next patch is correct either way.
    pub fn on_disconnect(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            self.add_unknown_outcome(&in_flight.patch);
        }
    }

    /// A GET of the twin returned the hub's reported section with its `$version`.
    ///
    /// Adopted whatever its version: it becomes `hub_reported` and `hub_version`, and clears
    /// `resync_needed`.
    ///
    /// The version is deliberately not used to ignore the result. A twin that is recreated in
    /// the hub (device deleted and registered again, or moved to another hub by DPS) restarts
    /// its versions at 1; ignoring "older" GET results would then ignore every GET from that
    /// point on: keys that never change would never be sent again, and once `resync_needed` is
    /// set nothing would be sent at all.
    ///
    /// A lower version can also mean the answer was overtaken by the ack of a later PATCH (the
    /// hub does not promise to answer in order). Then the hub holds the previous
    /// `hub_reported`, not the GET's document, and plain adoption would lose that: if `local`
    /// went back to the GET's value meanwhile, the diff would be empty while the hub keeps the
    /// acked value. So when the version goes down the previous document stays in
    /// `alternatives`: the next patch is right for both readings (a recreated twin only gets
    /// some keys re-sent and some absent keys nulled, both no-ops), and its ack collapses them.
    /// At the same or a higher version the GET is the newest truth and replaces everything.
    ///
    /// The in-flight bookkeeping is untouched: an in-flight patch stays in flight and its ack
    /// applies it on top of every candidate, which is right whether or not the GET already saw
    /// it (a merge patch is idempotent); quarantine and probing keep their keys, since the
    /// hub's content rules did not change with the document.
    pub fn on_hub_reported(&mut self, reported: &Value, version: i64) {
        let mut doc = match reported {
            Value::Object(_) => reported.clone(),
            _ => Value::Object(Map::new()),
        };
        strip_reserved(&mut doc);
        let went_back = self.hub_version.is_some_and(|known| version < known);
        let previous = std::mem::replace(&mut self.hub_reported, doc);
        self.hub_version = Some(version);
        self.resync_needed = false;
        if went_back {
            self.alternatives.push(previous);
            self.normalize_alternatives();
            if self.alternatives.len() > MAX_ALTERNATIVES {
                // Too many readings to reconcile: the next GET (at this version or later,
                // hence the truth) settles it.
                self.alternatives.clear();
                self.resync_needed = true;
            }
        } else {
            self.alternatives.clear();
        }
    }

    fn take_in_flight(&mut self, request_id: &str) -> Option<InFlight> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.request_id == request_id)
        {
            self.in_flight.take()
        } else {
            None
        }
    }

    fn add_unknown_outcome(&mut self, patch: &Value) {
        let mut possible: Vec<Value> = Vec::with_capacity(self.alternatives.len() + 1);
        for base in std::iter::once(&self.hub_reported).chain(self.alternatives.iter()) {
            let mut after = base.clone();
            apply(&mut after, patch);
            possible.push(after);
        }
        self.alternatives.extend(possible);
        self.normalize_alternatives();
        if self.alternatives.len() > MAX_ALTERNATIVES {
            self.alternatives.clear();
            self.resync_needed = true;
        }
    }

    fn normalize_alternatives(&mut self) {
        let mut unique: Vec<Value> = Vec::with_capacity(self.alternatives.len());
        for alternative in self.alternatives.drain(..) {
            if alternative != self.hub_reported && !unique.contains(&alternative) {
                unique.push(alternative);
            }
        }
        self.alternatives = unique;
    }

    fn forget_rejection_if_clear(&mut self) {
        if self.quarantined.is_empty() && self.probing.is_empty() {
            self.last_rejection = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::twin::applied;

    fn state(local: Value, hub: Value) -> SyncState {
        SyncState {
            local,
            hub_reported: hub,
            ..SyncState::new()
        }
    }

    #[test]
    fn plain_next_patch_is_the_diff_and_waits_for_in_flight() {
        let hub = json!({"a": 1, "b": 2});
        let local = json!({"a": 1, "b": 3, "c": 4});
        assert_eq!(
            next_patch(&hub, None, &local),
            Some(json!({"b": 3, "c": 4}))
        );
        assert_eq!(next_patch(&hub, Some(&json!({"b": 3})), &local), None);
        assert_eq!(next_patch(&local, None, &local), None);
    }

    #[test]
    fn merge_local_returns_the_effective_change_and_refuses_non_objects() {
        let mut s = SyncState::new();
        assert_eq!(
            s.merge_local(&json!({"a": 1, "b": {"c": 2}})).unwrap(),
            json!({"a": 1, "b": {"c": 2}})
        );
        assert_eq!(s.merge_local(&json!({"a": 1})).unwrap(), json!({}));
        assert_eq!(
            s.merge_local(&json!({"a": null})).unwrap(),
            json!({"a": null})
        );
        assert_eq!(s.merge_local(&json!([1])), Err(NotAnObject("an array")));
        assert_eq!(s.local, json!({"b": {"c": 2}}));
    }

    #[test]
    fn send_then_ack_moves_hub_reported_to_local() {
        let mut s = state(json!({"a": 2}), json!({"a": 1}));
        assert_eq!(s.begin_send("r1"), Some(json!({"a": 2})));
        assert_eq!(s.begin_send("r2"), None, "at most one patch in flight");
        assert!(s.on_ack("r0", 5).is_none(), "stale request id is ignored");
        assert!(s.on_ack("r1", 5).is_some());
        assert_eq!(s.hub_reported, json!({"a": 2}));
        assert_eq!(s.hub_version, Some(5));
        assert!(s.converged());
        assert_eq!(s.begin_send("r3"), None);
    }

    #[test]
    fn lost_ack_then_revert_still_resets_the_hub() {
        // The plain re-diff would send nothing here while the hub may hold a = 2.
        let mut s = state(json!({"a": 2}), json!({"a": 1}));
        s.begin_send("r1");
        s.on_disconnect();
        assert!(s.in_flight.is_none());
        s.merge_local(&json!({"a": 1})).unwrap();
        assert_eq!(s.next_patch(), Some(json!({"a": 1})));
        s.begin_send("r2");
        s.on_ack("r2", 7);
        assert!(s.converged());
    }

    #[test]
    fn throttled_patch_is_resent_unchanged() {
        let mut s = state(json!({"a": 2}), json!({}));
        let p = s.begin_send("r1");
        assert_eq!(
            s.on_reject("r1", 429, "throttled"),
            Some(RejectKind::Throttled)
        );
        assert!(s.alternatives.is_empty());
        assert_eq!(s.begin_send("r2"), p);
    }

    #[test]
    fn server_error_counts_as_unknown_outcome() {
        let mut s = state(json!({"a": 2}), json!({"a": 1}));
        s.begin_send("r1");
        assert_eq!(s.on_reject("r1", 503, "busy"), Some(RejectKind::Unknown));
        assert_eq!(s.alternatives, vec![json!({"a": 2})]);
        s.merge_local(&json!({"a": 1})).unwrap();
        assert_eq!(s.next_patch(), Some(json!({"a": 1})));
    }

    #[test]
    fn bad_multi_key_patch_is_probed_key_by_key_and_the_bad_key_quarantined() {
        let mut s = state(json!({"good": 1, "bad": "x", "other": 3}), json!({}));
        let p = s.begin_send("r1").unwrap();
        assert_eq!(p.as_object().unwrap().len(), 3);
        assert_eq!(s.on_reject("r1", 400, "malformed"), Some(RejectKind::Bad));
        assert_eq!(s.last_rejection.as_ref().unwrap().status, 400);
        let mut acked = Vec::new();
        for i in 0..10 {
            let rid = format!("p{i}");
            let Some(p) = s.begin_send(&rid) else { break };
            let map = p.as_object().unwrap();
            assert_eq!(map.len(), 1, "probing sends one key at a time");
            if map.contains_key("bad") {
                s.on_reject(&rid, 400, "malformed");
            } else {
                acked.extend(map.keys().cloned());
                s.on_ack(&rid, i);
            }
        }
        acked.sort();
        assert_eq!(acked, ["good", "other"]);
        assert_eq!(
            s.quarantined,
            BTreeMap::from([("bad".to_owned(), json!("x"))])
        );
        assert_eq!(s.next_patch(), None, "the same bad patch is never resent");
        assert!(s.last_rejection.is_some(), "the rejection stays visible");
        // A new value for the bad key is tried again, and clears the quarantine when accepted.
        s.merge_local(&json!({"bad": "fixed"})).unwrap();
        assert_eq!(s.begin_send("f"), Some(json!({"bad": "fixed"})));
        s.on_ack("f", 99);
        assert!(s.quarantined.is_empty());
        assert!(s.last_rejection.is_none());
        assert!(s.converged());
    }

    #[test]
    fn too_many_unknown_outcomes_ask_for_a_get() {
        let mut s = state(json!({}), json!({}));
        // Partial patches with unknown outcome: every subset may have been applied.
        for i in 0..3 {
            s.in_flight = Some(InFlight {
                request_id: format!("r{i}"),
                patch: json!({ format!("k{i}"): i }),
                journal_seq: None,
            });
            s.on_disconnect();
        }
        assert_eq!(s.alternatives.len(), 7);
        assert!(!s.resync_needed);
        assert_eq!(
            s.next_patch(),
            Some(json!({"k0": null, "k1": null, "k2": null}))
        );
        s.in_flight = Some(InFlight {
            request_id: "r3".to_owned(),
            patch: json!({"k3": 3}),
            journal_seq: None,
        });
        s.on_disconnect();
        assert!(s.resync_needed);
        assert!(s.alternatives.is_empty());
        assert_eq!(s.next_patch(), None);
        assert_eq!(s.begin_send("r4"), None);
        s.on_hub_reported(&json!({"k3": 3, "$version": 3, "$metadata": {}}), 3);
        assert!(!s.resync_needed);
        assert_eq!(s.hub_reported, json!({"k3": 3}));
        assert_eq!(s.next_patch(), Some(json!({"k3": null})));
    }

    #[test]
    fn get_of_a_recreated_twin_is_adopted_despite_its_lower_version() {
        // The hub held version 7; the twin was recreated and now holds an empty document at
        // version 1. Keys that never change must be sent again.
        let mut s = state(json!({"fixed": 1, "moving": 2}), json!({"fixed": 1}));
        s.hub_version = Some(7);
        s.resync_needed = true;
        assert_eq!(s.next_patch(), None);
        s.on_hub_reported(&json!({"$version": 1}), 1);
        assert!(!s.resync_needed);
        assert_eq!(s.hub_version, Some(1));
        assert_eq!(s.hub_reported, json!({}));
        assert_eq!(s.begin_send("r1"), Some(json!({"fixed": 1, "moving": 2})));
        // A GET while the patch is in flight keeps it in flight; its ack lands on top.
        s.on_hub_reported(&json!({}), 1);
        assert!(s.in_flight.is_some());
        assert!(s.on_ack("r1", 2).is_some());
        assert!(s.converged());
    }

    #[test]
    fn get_overtaken_by_an_ack_still_lets_a_revert_through() {
        // The hub answers a GET at version 6 ({a: 1}), then acks {a: 2} at version 7, and the
        // GET's answer is handled last. Then the device reverts to a = 1.
        let mut s = state(json!({"a": 2}), json!({"a": 1}));
        s.hub_version = Some(6);
        s.begin_send("r1");
        assert!(s.on_ack("r1", 7).is_some());
        s.on_hub_reported(&json!({"a": 1, "$version": 6}), 6);
        assert_eq!(s.hub_reported, json!({"a": 1}));
        assert_eq!(s.alternatives, vec![json!({"a": 2})]);
        s.merge_local(&json!({"a": 1})).unwrap();
        assert_eq!(s.begin_send("r2"), Some(json!({"a": 1})));
        s.on_ack("r2", 8);
        assert!(s.converged());
        // At the same or a higher version a GET is the truth and replaces every reading.
        s.alternatives.push(json!({"a": 5}));
        s.on_hub_reported(&json!({"a": 3}), 8);
        assert!(s.alternatives.is_empty());
        assert_eq!(s.hub_reported, json!({"a": 3}));
    }

    #[test]
    fn reject_classification() {
        assert_eq!(RejectKind::of(400), RejectKind::Bad);
        assert_eq!(RejectKind::of(413), RejectKind::Bad);
        assert_eq!(RejectKind::of(403), RejectKind::Bad);
        assert_eq!(RejectKind::of(408), RejectKind::Unknown);
        assert_eq!(RejectKind::of(429), RejectKind::Throttled);
        assert_eq!(RejectKind::of(500), RejectKind::Unknown);
        assert_eq!(RejectKind::of(503), RejectKind::Unknown);
    }

    /// Documents as the hub accepts them: objects of scalars, arrays without null, nested
    /// objects; no null members.
    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
            proptest::collection::vec((0i64..3).prop_map(|n| json!(n)), 0..3)
                .prop_map(Value::Array),
        ];
        let tree = leaf.prop_recursive(4, 40, 4, |inner| {
            proptest::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        proptest::collection::btree_map("[a-d]", tree, 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn reconcile_brings_every_base_to_the_target(bases in proptest::collection::vec(doc(), 1..4), target in doc()) {
            let refs: Vec<&Value> = bases.iter().collect();
            let patch = reconcile(&refs, &target);
            for base in &bases {
                prop_assert_eq!(&applied(base, &patch), &target);
            }
        }

        #[test]
        fn reconcile_of_one_base_is_the_diff(base in doc(), target in doc()) {
            prop_assert_eq!(reconcile(&[&base], &target), diff(&base, &target));
        }

        #[test]
        fn reconcile_of_equal_bases_is_the_diff(base in doc(), target in doc()) {
            prop_assert_eq!(reconcile(&[&base, &base.clone()], &target), diff(&base, &target));
        }
    }

    /// Operations of the pure model test (one device, no store). `Recreate`: the twin is
    /// recreated in the hub (device deleted and registered again, or moved by DPS): an empty
    /// reported document, versions restart at 1, the link drops.
    #[derive(Debug, Clone)]
    enum Op {
        Change(Value),
        Send,
        Process,
        Fail { applied: bool },
        Throttle,
        Deliver,
        Disconnect,
        Get,
        Recreate,
    }

    const LIMIT: usize = 60;

    fn op() -> impl Strategy<Value = Op> {
        let value = prop_oneof![
            5 => (0i64..4).prop_map(|n| json!(n)),
            2 => (0i64..3).prop_map(|n| json!({"a": n, "b": 1})),
            2 => Just(Value::Null),
            1 => Just(json!("BAD")),
            1 => Just(json!("x".repeat(LIMIT))),
        ];
        let patch = proptest::collection::btree_map("k[0-4]", value, 1..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()));
        prop_oneof![
            5 => patch.prop_map(Op::Change),
            4 => Just(Op::Send),
            4 => Just(Op::Process),
            1 => any::<bool>().prop_map(|applied| Op::Fail { applied }),
            1 => Just(Op::Throttle),
            4 => Just(Op::Deliver),
            2 => Just(Op::Disconnect),
            1 => Just(Op::Get),
            1 => Just(Op::Recreate),
        ]
    }

    /// A hub with the same content rules as the store-level model test.
    #[derive(Debug, Default)]
    struct Hub {
        doc: Value,
        version: i64,
        inbox: Option<(String, Value)>,
        outbox: Option<(String, Result<i64, u16>)>,
    }

    impl Hub {
        fn process(&mut self) {
            if let Some((rid, patch)) = self.inbox.take() {
                let text = patch.to_string();
                let answer = if text.contains("BAD") {
                    Err(400)
                } else if text.len() > LIMIT {
                    Err(413)
                } else {
                    apply(&mut self.doc, &patch);
                    self.version += 1;
                    Ok(self.version)
                };
                self.outbox = Some((rid, answer));
            }
        }
    }

    fn deliver(s: &mut SyncState, hub: &mut Hub) {
        if let Some((rid, answer)) = hub.outbox.take() {
            match answer {
                Ok(version) => assert!(s.on_ack(&rid, version).is_some()),
                Err(status) => assert!(s.on_reject(&rid, status, "").is_some()),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn pure_state_converges_with_a_model_hub(ops in proptest::collection::vec(op(), 0..80)) {
            let mut s = SyncState::new();
            let mut hub = Hub { doc: json!({}), ..Hub::default() };
            let mut rid = 0u32;
            // Set by a recreation: the reconnect that follows GETs the twin (DESIGN: subscribe,
            // then GET, on every connect); until then the state cannot know.
            let mut get_pending = false;
            for op in ops {
                match op {
                    Op::Change(patch) => { s.merge_local(&patch).unwrap(); }
                    Op::Send => {
                        rid += 1;
                        let had = s.in_flight.is_some();
                        if let Some(p) = s.begin_send(&rid.to_string()) {
                            prop_assert!(!had && hub.inbox.is_none() && hub.outbox.is_none());
                            hub.inbox = Some((rid.to_string(), p));
                        }
                    }
                    Op::Process => hub.process(),
                    Op::Fail { applied } => {
                        if let Some((r, p)) = hub.inbox.take() {
                            if applied {
                                apply(&mut hub.doc, &p);
                                hub.version += 1;
                            }
                            hub.outbox = Some((r, Err(503)));
                        }
                    }
                    Op::Throttle => {
                        if let Some((r, _)) = hub.inbox.take() {
                            hub.outbox = Some((r, Err(429)));
                        }
                    }
                    Op::Deliver => deliver(&mut s, &mut hub),
                    Op::Disconnect => {
                        s.on_disconnect();
                        hub.inbox = None;
                        hub.outbox = None;
                    }
                    Op::Get => {
                        s.on_hub_reported(&hub.doc, hub.version);
                        get_pending = false;
                    }
                    Op::Recreate => {
                        hub = Hub { doc: json!({}), version: 1, ..Hub::default() };
                        s.on_disconnect();
                        get_pending = true;
                    }
                }
            }
            s.on_disconnect();
            hub.inbox = None;
            hub.outbox = None;
            if get_pending {
                s.on_hub_reported(&hub.doc, hub.version);
            }
            for round in 0.. {
                prop_assert!(round < 40, "drain does not terminate: {:?}", s);
                rid += 1;
                if let Some(p) = s.begin_send(&rid.to_string()) {
                    hub.inbox = Some((rid.to_string(), p));
                    hub.process();
                    deliver(&mut s, &mut hub);
                } else if s.resync_needed {
                    s.on_hub_reported(&hub.doc, hub.version);
                } else {
                    break;
                }
            }
            let bad = |v: &Value| v.as_str().is_some_and(|t| t == "BAD" || t.len() >= LIMIT);
            let keys: BTreeSet<&String> = s.local.as_object().unwrap().keys()
                .chain(hub.doc.as_object().unwrap().keys()).collect();
            for key in keys {
                let local = s.local.get(key);
                if local.is_some_and(bad) {
                    if hub.doc.get(key) != local {
                        prop_assert!(s.quarantined.contains_key(key));
                    }
                } else {
                    prop_assert_eq!(hub.doc.get(key), local, "key {}", key);
                }
            }
            // What the state believes about the hub is true.
            if s.alternatives.is_empty() && !s.resync_needed {
                prop_assert_eq!(&s.hub_reported, &hub.doc);
            }
        }
    }
}
