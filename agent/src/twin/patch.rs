//! JSON merge patch (RFC 7396) algebra over twin documents: `apply`, `diff`, `compose`.
//!
//! Twin sections (desired, reported) are JSON objects. Arrays replace whole and a patch
//! cannot reach inside an array; `null` in a patch deletes the key.

use serde_json::{Map, Value};

/// Applies a merge patch to `doc` in place (RFC 7396 section 2).
pub fn apply(doc: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("made an object just above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            apply(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Returns `apply(doc, patch)` without touching `doc`.
pub fn applied(doc: &Value, patch: &Value) -> Value {
    let mut out = doc.clone();
    apply(&mut out, patch);
    out
}

/// The smallest merge patch `p` with `apply(a, p) == b`.
///
/// Holds for every pair of documents the hub accepts (no `null` object members). When both
/// are objects the result is an object, empty when `a == b`.
pub fn diff(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = Map::new();
            for key in a.keys() {
                if !b.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            for (key, new) in b {
                match a.get(key) {
                    Some(old @ Value::Object(_)) if new.is_object() => {
                        let sub = diff(old, new);
                        if sub.as_object().is_some_and(|m| !m.is_empty()) {
                            patch.insert(key.clone(), sub);
                        }
                    }
                    Some(old) if old == new => {}
                    _ => {
                        patch.insert(key.clone(), new.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => b.clone(),
    }
}

/// True when the patch changes nothing whatever it is applied to (an empty object).
pub fn is_noop(patch: &Value) -> bool {
    patch.as_object().is_some_and(Map::is_empty)
}
