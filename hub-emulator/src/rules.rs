//! IoT Hub's rules for twin documents (tags, desired and reported properties), read from
//! Microsoft's "Understand and use device twins in IoT Hub" page, independently of the agent.
//!
//! - keys: UTF-8, at most 1 KB, not empty, without `.`, `$`, space or control characters
//!   (Unicode C0 and C1, and DEL);
//! - values: boolean, number, string, object, array; integers within
//!   −4503599627370496 ..= 4503599627370495 (the documented bounds); strings at most 4 KB;
//!   arrays may not contain `null`, not even inside an object in an array (merge patch copies
//!   arrays verbatim, so such a `null` would be stored rather than mean "delete" — the hub's
//!   documents never hold `null`; undocumented, this emulator's reading);
//! - depth: at most 10 levels of nesting below the section (objects and arrays both count);
//! - size: tags 8 KB, desired and reported 32 KB each, counted as the sum over every property of
//!   its key's characters plus its value's size: a string counts its characters except the C0
//!   and C1 control characters, a number 8, a boolean 4, an object the sum of its properties, an
//!   array the sum of its elements. `$`-prefixed members (`$version`, `$metadata`) are not
//!   counted. A "character" is a UTF-16 code unit: IoT Hub is a .NET service, where a string's
//!   length counts those (so a character outside the BMP, such as an emoji, counts 2).
//!
//! A patch is a JSON merge patch (RFC 7386): `null` deletes, objects merge, anything else (arrays
//! included) replaces. A patch that breaks a rule changes nothing: the functions return the new
//! section or the violation, never a half-applied document.

use serde_json::{Map, Value};

/// Largest integer IoT Hub accepts.
pub const MAX_INT: i64 = 4_503_599_627_370_495;
/// Smallest integer IoT Hub accepts.
pub const MIN_INT: i64 = -4_503_599_627_370_496;
/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest string value, in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Deepest nesting below a section's root.
pub const MAX_DEPTH: usize = 10;
/// Size limit of `properties.desired` and of `properties.reported`.
pub const MAX_PROPERTIES_SIZE: usize = 32 * 1024;
/// Size limit of `tags`.
pub const MAX_TAGS_SIZE: usize = 8 * 1024;

/// Status for a malformed document or patch.
pub const STATUS_BAD_REQUEST: u16 = 400;
/// Status for a document that would grow past its size limit.
pub const STATUS_TOO_LARGE: u16 = 413;

/// A broken rule: the status IoT Hub answers with (400 or 413) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct RuleViolation {
    /// 400 for a malformed patch, 413 when the section would exceed its size limit.
    pub status: u16,
    /// A human-readable reason naming the offending path.
    pub message: String,
}

impl RuleViolation {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: STATUS_BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// Applies a reported-properties patch from a device to `current_reported` and returns the new
/// section (without `$`-prefixed members: `$version` and `$metadata` belong to the caller).
pub fn check_reported_patch(
    current_reported: &Value,
    patch: &Value,
) -> Result<Value, RuleViolation> {
    check_patch(current_reported, patch, MAX_PROPERTIES_SIZE, "reported")
}

/// Applies a desired-properties patch from the back end; same contract as
/// [`check_reported_patch`].
pub fn check_desired_patch(current_desired: &Value, patch: &Value) -> Result<Value, RuleViolation> {
    check_patch(current_desired, patch, MAX_PROPERTIES_SIZE, "desired")
}

/// Applies a tags patch from the back end (8 KB limit); same contract as
/// [`check_reported_patch`].
pub fn check_tags_patch(current_tags: &Value, patch: &Value) -> Result<Value, RuleViolation> {
    check_patch(current_tags, patch, MAX_TAGS_SIZE, "tags")
}

/// Validates a whole new `tags` document (a replacement, as in `PUT /twins/{id}`) and returns it
/// with `null` members dropped.
pub fn check_tags(tags: &Value) -> Result<Value, RuleViolation> {
    check_tags_patch(&Value::Object(Map::new()), tags)
}

/// Validates a whole new desired document (a replacement) and returns it with `null` members
/// dropped.
pub fn check_desired(desired: &Value) -> Result<Value, RuleViolation> {
    check_desired_patch(&Value::Object(Map::new()), desired)
}

fn check_patch(
    current: &Value,
    patch: &Value,
    limit: usize,
    section: &str,
) -> Result<Value, RuleViolation> {
    if !patch.is_object() {
        return Err(RuleViolation::bad(format!(
            "{section}: a patch must be a JSON object"
        )));
    }
    validate(patch, section, 0, true)?;
    let mut next = strip_system(current);
    merge_patch(&mut next, patch);
    let size = section_size(&next);
    if size > limit {
        return Err(RuleViolation {
            status: STATUS_TOO_LARGE,
            message: format!("{section}: size {size} would exceed the limit of {limit} bytes"),
        });
    }
    Ok(next)
}

/// `current` without `$`-prefixed top-level members; a non-object counts as empty.
fn strip_system(current: &Value) -> Value {
    match current {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Object(Map::new()),
    }
}

/// Checks keys, values and depth of `value` found at `path`, `depth` containers below the
/// section root. `null_ok` says whether `null` is allowed here (a deletion in a patch: not
/// anywhere below an array).
fn validate(value: &Value, path: &str, depth: usize, null_ok: bool) -> Result<(), RuleViolation> {
    match value {
        Value::Null if !null_ok => Err(RuleViolation::bad(format!(
            "{path}: arrays may not contain null"
        ))),
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(n) => check_number(n, path),
        Value::String(s) => {
            if s.len() > MAX_STRING_BYTES {
                Err(RuleViolation::bad(format!(
                    "{path}: string of {} bytes exceeds {MAX_STRING_BYTES}",
                    s.len()
                )))
            } else {
                Ok(())
            }
        }
        Value::Array(items) => {
            check_depth(depth, path)?;
            for (i, item) in items.iter().enumerate() {
                validate(item, &format!("{path}[{i}]"), depth + 1, false)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            check_depth(depth, path)?;
            for (key, item) in map {
                check_key(key, path)?;
                validate(item, &format!("{path}.{key}"), depth + 1, null_ok)?;
            }
            Ok(())
        }
    }
}

fn check_depth(depth: usize, path: &str) -> Result<(), RuleViolation> {
    if depth > MAX_DEPTH {
        Err(RuleViolation::bad(format!(
            "{path}: nesting deeper than {MAX_DEPTH} levels"
        )))
    } else {
        Ok(())
    }
}

fn check_number(n: &serde_json::Number, path: &str) -> Result<(), RuleViolation> {
    let in_range = if let Some(i) = n.as_i64() {
        (MIN_INT..=MAX_INT).contains(&i)
    } else {
        // A u64 above i64::MAX is an out-of-range integer; anything else is a float.
        n.as_u64().is_none()
    };
    if in_range {
        Ok(())
    } else {
        Err(RuleViolation::bad(format!(
            "{path}: integer {n} outside {MIN_INT}..={MAX_INT}"
        )))
    }
}

/// Checks one key against IoT Hub's key rules.
pub fn check_key(key: &str, path: &str) -> Result<(), RuleViolation> {
    if key.is_empty() {
        return Err(RuleViolation::bad(format!("{path}: empty key")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RuleViolation::bad(format!(
            "{path}: key of {} bytes exceeds {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, '.' | '$' | ' ') || c.is_control())
    {
        return Err(RuleViolation::bad(format!(
            "{path}: key {key:?} contains the forbidden character {c:?}"
        )));
    }
    Ok(())
}

/// Applies an RFC 7386 JSON merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object just above");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The size of a section as IoT Hub counts it; `$`-prefixed top-level members are ignored.
pub fn section_size(section: &Value) -> usize {
    match section {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| text_size(k) + value_size(v))
            .sum(),
        other => value_size(other),
    }
}

/// The size of one value: string characters except control characters, 8 per number, 4 per
/// boolean, the sum of keys and values for an object, the sum of the elements for an array.
pub fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => text_size(s),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| text_size(k) + value_size(v)).sum(),
    }
}

/// Characters of `s` as IoT Hub counts them: UTF-16 code units, without C0 and C1 controls.
fn text_size(s: &str) -> usize {
    s.chars()
        .filter(|&c| !(c <= '\u{1f}' || ('\u{80}'..='\u{9f}').contains(&c)))
        .map(char::len_utf16)
        .sum()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn applies_merge_patch() {
        let cur = json!({"a": 1, "b": {"c": 2, "d": 3}, "$version": 4});
        let next =
            check_reported_patch(&cur, &json!({"b": {"c": null, "e": [1, 2]}, "a": null})).unwrap();
        assert_eq!(next, json!({"b": {"d": 3, "e": [1, 2]}}));
    }

    #[test]
    fn sizes_follow_the_documented_counting() {
        assert_eq!(section_size(&json!({"ab": "xyz"})), 5);
        assert_eq!(section_size(&json!({"n": 1.5, "b": true})), 1 + 8 + 1 + 4);
        assert_eq!(section_size(&json!({"o": {"k": "v"}, "$version": 9})), 3);
        assert_eq!(section_size(&json!({"s": "a\u{0}\u{85}é"})), 1 + 2);
        assert_eq!(section_size(&json!({"a": [1, "xy", false]})), 1 + 8 + 2 + 4);
    }
}
