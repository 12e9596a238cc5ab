//! JSON merge patch (RFC 7396) algebra over twin documents: `apply`, `diff`, `compose`.
//!
//! Twin sections (desired, reported) are JSON objects. Arrays replace whole and a patch
//! cannot reach inside an array; `null` in a patch deletes the key.

use serde_json::{Map, Value};

use super::path::Path;

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
/// are objects the result is an object, empty when `a == b`; it mentions exactly the keys
/// whose values differ, recursing where both sides hold objects (replacing such an object
/// could not remove its stale members anyway) and replacing or deleting everywhere else.
/// Between documents that pass [`validate_section`](super::validate_section) the result
/// passes [`validate_patch`](super::validate_patch). Strip `$version` / `$metadata` first
/// ([`split_version`](super::split_version)): they are not the device's to patch.
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

/// The JSON type of a value, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    /// `null`
    Null,
    /// `true` / `false`
    Bool,
    /// a number
    Number,
    /// a string
    String,
    /// an array
    Array,
    /// an object
    Object,
}

impl JsonKind {
    /// The kind of `value`.
    pub fn of(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(_) => Self::Bool,
            Value::Number(_) => Self::Number,
            Value::String(_) => Self::String,
            Value::Array(_) => Self::Array,
            Value::Object(_) => Self::Object,
        }
    }

    /// The kind with an article, for messages: `a number`, `an array`, `null`.
    pub fn article(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            Self::Null => "deletes it",
            Self::Bool => "sets a boolean",
            Self::Number => "sets a number",
            Self::String => "sets a string",
            Self::Array => "sets an array",
            Self::Object => "patches an object",
        }
    }
}

impl std::fmt::Display for JsonKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.article())
    }
}

/// Two merge patches whose sequential effect no single merge patch can express.
///
/// At `path` the first patch replaces the value (with a scalar, an array, or deletes it with
/// `null`) and the second patch then patches members of an object there. Applied in sequence,
/// the object at `path` ends up holding exactly the second patch's members; a single merge patch
/// can only add to or delete named members of an object that is already there, so on a document
/// whose `path` holds an object with other members it would leave those stale members behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot compose merge patches at {path}: the first patch {} there and the second patches \
     members of an object there; no single merge patch has that effect",
    first.phrase()
)]
pub struct ComposeError {
    /// Where the two patches conflict (relative to the patch root).
    pub path: Path,
    /// What the first patch puts at `path` (never [`JsonKind::Object`]).
    pub first: JsonKind,
}

/// One merge patch with the effect of applying `p1` and then `p2`.
///
/// Law: for every document `d`, `applied(&applied(d, p1), p2) == applied(d, &compose(p1, p2)?)`.
/// `null` deletions of either patch are kept (unless `p2` sets that key again).
///
/// # Errors
/// [`ComposeError`] naming a path where `p1` holds a non-object
/// (scalar, array or `null`) and `p2` an object, with both patches objects on the way there.
/// Exactly there no composite exists. Proof: along the way both patches are objects, so a
/// composite `q` must be an object along the way too (a non-object or `null` at an ancestor
/// would replace or delete members that the sequence keeps). At `path` the sequence always
/// yields the object `C = apply({}, p2@path)`. If `q@path` is absent, `null` or a non-object,
/// `d@path = {z: 1}` (or any `d@path` other than `C`) gives a result other than `C`; if
/// `q@path` is an object, pick a key `z` that neither `q` nor `C` mention and `d@path = {z: 1}`:
/// `q` keeps `z`, the sequence does not. Everywhere else the recursion below is exact, so the
/// function returns an error if and only if no composite exists.
///
/// Note that diffs of consecutive states compose unless a value turns from a non-object (or
/// nothing) into an object: `diff({k: 1}, {k: {}})` is `{k: {}}`, which patches an object that
/// the earlier diff replaced. With a known base `a`, `diff(a, applied(&applied(a, p1), p2))`
/// always works.
pub fn compose(p1: &Value, p2: &Value) -> Result<Value, ComposeError> {
    compose_at(p1, p2, &Path::root())
}

fn compose_at(p1: &Value, p2: &Value, path: &Path) -> Result<Value, ComposeError> {
    // A non-object p2 replaces whatever p1 produced.
    let Value::Object(second) = p2 else {
        return Ok(p2.clone());
    };
    // p2 patches an object here: fine only if p1 left the target's members alone.
    let Value::Object(first) = p1 else {
        return Err(ComposeError {
            path: path.clone(),
            first: JsonKind::of(p1),
        });
    };
    let mut out = first.clone();
    for (key, later) in second {
        let merged = match first.get(key) {
            // p1 does not touch `key`: p2's effect there is the composite's.
            None => later.clone(),
            Some(earlier) => compose_at(earlier, later, &path.key(key))?,
        };
        out.insert(key.clone(), merged);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The test vectors of RFC 7396, Appendix A.
    #[test]
    fn rfc7396_appendix_a() {
        let vectors = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, expected) in vectors {
            assert_eq!(applied(&target, &patch), expected, "{target} + {patch}");
        }
    }

    #[test]
    fn diff_examples() {
        let a = json!({"t": 1, "cfg": {"x": 1, "y": [1, 2]}, "gone": true});
        let b = json!({"t": 2, "cfg": {"x": 1, "y": [1]}, "new": {"z": {}}});
        let d = diff(&a, &b);
        assert_eq!(
            d,
            json!({"t": 2, "cfg": {"y": [1]}, "gone": null, "new": {"z": {}}})
        );
        assert_eq!(applied(&a, &d), b);
        assert!(is_noop(&diff(&a, &a)));
        assert!(!is_noop(&json!(null)));
    }
}
