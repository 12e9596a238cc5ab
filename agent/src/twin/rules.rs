//! The hub's rules for twin documents, as one validator with precise error paths.
//!
//! Source: Microsoft Learn, "Understand and use device twins in IoT Hub", sections "Tags and
//! properties format" and "Device twin size". Where the documentation leaves room, this reading
//! is the stricter one, so that whatever passes here the hub accepts:
//!
//! - keys: UTF-8, 1..=1024 bytes, no `.`, `$`, space or control character (C0, DEL, C1);
//!   the empty key is rejected;
//! - depth: the section object is depth 0 and a value reached by `n` steps (keys or array
//!   indices) has depth `n`; every object and array must have depth ≤ 10. This matches the
//!   documented example, where `tags.one.two.….ten` is an object and
//!   `tags.one.….ten.property` a string. Arrays count as levels (the documentation is silent);
//! - integers within ±4503599627370495 (the hub also accepts -4503599627370496; we do not
//!   produce it). Numbers written with a fraction or exponent are floating point and unbounded;
//! - strings ≤ 4096 UTF-8 bytes; arrays hold no `null`;
//! - size ≤ 32768 per section, see [`section_size`];
//! - the read-only members `$version` (a non-negative integer) and `$metadata` (an object) are
//!   allowed at the section root, as the hub returns them, and neither checked further nor
//!   counted; in patches only `$version` of a desired notification is allowed.
//!
//! A violation knows whether the hub would answer 413 (too large) or 400 (malformed):
//! [`RuleError::rejection`].

use std::fmt;

use serde_json::{Number, Value};

use super::patch::{JsonKind, applied};
use super::path::Path;

/// Deepest allowed object or array (the section object itself is depth 0).
pub const MAX_DEPTH: usize = 10;
/// Largest allowed section size, counted by [`section_size`].
pub const MAX_SECTION_SIZE: usize = 32 * 1024;
/// Longest allowed key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest allowed string value, in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4 * 1024;
/// Largest integer magnitude the hub stores exactly (2^52 - 1).
pub const MAX_INTEGER: i64 = 4_503_599_627_370_495;
/// What a number adds to a section's size.
pub const NUMBER_SIZE: usize = 8;
/// What a boolean adds to a section's size.
pub const BOOL_SIZE: usize = 4;
/// The read-only version member at a section root.
pub const VERSION_KEY: &str = "$version";
/// The read-only metadata member at a section root.
pub const METADATA_KEY: &str = "$metadata";

/// Which properties section of a twin a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// `properties.desired`, written by the back end.
    Desired,
    /// `properties.reported`, written by the device.
    Reported,
}

impl Section {
    /// The section's name as it leads error paths: `desired` / `reported`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Reported => "reported",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the hub would answer an operation that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// 400: the document is malformed; resending the same content can never succeed.
    Malformed,
    /// 413: the section would exceed its size limit.
    TooLarge,
}

impl Rejection {
    /// The HTTP-style status code the hub answers with.
    pub fn status(self) -> u16 {
        match self {
            Self::Malformed => 400,
            Self::TooLarge => 413,
        }
    }
}

/// What is wrong at a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The section (or patch) is not a JSON object.
    #[error("{found} where an object is required")]
    NotAnObject {
        /// What was found instead.
        found: JsonKind,
    },
    /// An empty key.
    #[error("empty key")]
    EmptyKey,
    /// A key longer than [`MAX_KEY_BYTES`].
    #[error("key is {bytes} bytes > {MAX_KEY_BYTES}")]
    KeyTooLong {
        /// UTF-8 length of the key.
        bytes: usize,
    },
    /// A key holding `.`, `$`, space or a control character.
    #[error("key contains forbidden character {ch:?}")]
    KeyCharacter {
        /// The first forbidden character.
        ch: char,
    },
    /// A read-only root member (`$version`, `$metadata`) of the wrong type or in a patch.
    #[error("read-only member must be {expected}")]
    Reserved {
        /// What the member must be.
        expected: &'static str,
    },
    /// An object or array nested deeper than [`MAX_DEPTH`].
    #[error("depth {depth} > {MAX_DEPTH}")]
    TooDeep {
        /// Depth of the object or array at the path.
        depth: usize,
    },
    /// A string value longer than [`MAX_STRING_BYTES`].
    #[error("string is {bytes} bytes > {MAX_STRING_BYTES}")]
    StringTooLong {
        /// UTF-8 length of the string.
        bytes: usize,
    },
    /// An integer outside ±[`MAX_INTEGER`].
    #[error("integer {value} outside ±{MAX_INTEGER}")]
    IntegerOutOfRange {
        /// The offending number.
        value: Number,
    },
    /// `null` as an array element.
    #[error("null inside an array")]
    NullInArray,
    /// `null` as an object member where it cannot mean "delete": anywhere in a full section,
    /// and inside arrays in a patch.
    #[error("null member (only a patch may hold null, meaning delete)")]
    NullMember,
    /// The section exceeds [`MAX_SECTION_SIZE`].
    #[error("section size {size} > {MAX_SECTION_SIZE}")]
    TooLarge {
        /// The size as [`section_size`] counts it.
        size: usize,
    },
}

impl Violation {
    /// How the hub would answer.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::TooLarge { .. } => Rejection::TooLarge,
            _ => Rejection::Malformed,
        }
    }
}

/// A rule violation: which section, where in it, and what.
///
/// Displays as `reported.config.a: depth 11 > 10`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind}", Located(*section, path))]
pub struct RuleError {
    /// The section the document belongs to.
    pub section: Section,
    /// Where the violation is, relative to the section root.
    pub path: Path,
    /// What is wrong there.
    pub kind: Violation,
}

impl RuleError {
    /// How the hub would answer (400 malformed or 413 too large).
    pub fn rejection(&self) -> Rejection {
        self.kind.rejection()
    }

    /// True when the hub would answer 413.
    pub fn is_too_large(&self) -> bool {
        self.rejection() == Rejection::TooLarge
    }

    /// The status code the hub would answer with (400 or 413).
    pub fn hub_status(&self) -> u16 {
        self.rejection().status()
    }
}

/// Displays a section name followed by a path, e.g. `reported.config.a[2]`.
struct Located<'a>(Section, &'a Path);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())?;
        self.1.write_segments(f, true)
    }
}

/// Checks a full section document (as stored, or as the hub returns it from a GET).
///
/// `null` is not allowed anywhere; `$version` / `$metadata` are allowed at the root.
/// Malformed content is reported before size, so a 413 means the content is otherwise valid.
pub fn validate_section(section: Section, doc: &Value) -> Result<(), RuleError> {
    Walker {
        section,
        mode: Mode::Full,
    }
    .root(doc)?;
    check_size(section, section_size(doc))
}

/// Checks a merge patch for a section, on its own.
///
/// `null` object members (deletions) are allowed outside arrays; `$version` is allowed at the
/// root of a desired patch (notifications carry it), not in a reported one; `$metadata` never.
/// The size check is on the patch's content without its deletions: every member it sets ends
/// up in the patched section, so a patch over the limit is certainly too large. Whether the
/// patched section fits depends on the section it is applied to: use [`validate_patched`].
pub fn validate_patch(section: Section, patch: &Value) -> Result<(), RuleError> {
    Walker {
        section,
        mode: Mode::Patch,
    }
    .root(patch)?;
    check_size(section, section_size(patch))
}

/// Checks `patch` and the section it produces on `base`; returns that section.
///
/// This is the hub's view of a PATCH: the patch must be well formed and the result must fit.
/// (The hub only refuses updates that grow a section past the limit; a `base` that is already
/// over it, which the hub never holds, fails here whatever the patch.)
pub fn validate_patched(section: Section, base: &Value, patch: &Value) -> Result<Value, RuleError> {
    validate_patch(section, patch)?;
    let out = applied(base, patch);
    validate_section(section, &out)?;
    Ok(out)
}

/// A section's size as IoT Hub counts it.
///
/// For every member: its key as a string plus its value; a string counts its characters
/// excluding control characters (C0 and C1), a number 8, a boolean 4, an object or array the
/// sum of what it contains. Characters are counted as UTF-16 code units (as .NET strings count
/// them): equal to the character count for text in the Basic Multilingual Plane, and larger,
/// so on the safe side, for characters outside it. `$version` and `$metadata` at the root and
/// `null` members (deletions in a patch) count nothing.
pub fn section_size(doc: &Value) -> usize {
    match doc {
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| !is_reserved(key))
            .map(|(key, value)| member_size(key, value))
            .sum(),
        other => value_size(other),
    }
}

fn member_size(key: &str, value: &Value) -> usize {
    if value.is_null() {
        0
    } else {
        text_size(key) + value_size(value)
    }
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => BOOL_SIZE,
        Value::Number(_) => NUMBER_SIZE,
        Value::String(text) => text_size(text),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(map) => map.iter().map(|(key, value)| member_size(key, value)).sum(),
    }
}

fn text_size(text: &str) -> usize {
    text.chars()
        .filter(|&c| !is_c0_or_c1(c))
        .map(char::len_utf16)
        .sum()
}

fn is_c0_or_c1(c: char) -> bool {
    c <= '\u{1f}' || ('\u{80}'..='\u{9f}').contains(&c)
}

fn is_reserved(key: &str) -> bool {
    key == VERSION_KEY || key == METADATA_KEY
}

/// The character that makes `key` invalid, if any.
fn forbidden_char(key: &str) -> Option<char> {
    key.chars()
        .find(|&c| matches!(c, '.' | '$' | ' ') || c.is_control())
}

fn check_size(section: Section, size: usize) -> Result<(), RuleError> {
    if size > MAX_SECTION_SIZE {
        return Err(RuleError {
            section,
            path: Path::root(),
            kind: Violation::TooLarge { size },
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Patch,
}

struct Walker {
    section: Section,
    mode: Mode,
}

impl Walker {
    fn fail(&self, path: Path, kind: Violation) -> Result<(), RuleError> {
        Err(RuleError {
            section: self.section,
            path,
            kind,
        })
    }

    fn root(&self, doc: &Value) -> Result<(), RuleError> {
        let Value::Object(map) = doc else {
            return self.fail(
                Path::root(),
                Violation::NotAnObject {
                    found: JsonKind::of(doc),
                },
            );
        };
        let root = Path::root();
        for (key, value) in map {
            match key.as_str() {
                VERSION_KEY if !value.is_u64() => {
                    return self.fail(
                        root.key(key),
                        Violation::Reserved {
                            expected: "a non-negative integer",
                        },
                    );
                }
                // The device writes reported patches; `$version` there is the hub's to set.
                VERSION_KEY if self.mode == Mode::Patch && self.section == Section::Reported => {
                    return self.fail(
                        root.key(key),
                        Violation::Reserved {
                            expected: "absent from a reported patch",
                        },
                    );
                }
                METADATA_KEY if self.mode == Mode::Patch => {
                    return self.fail(
                        root.key(key),
                        Violation::Reserved {
                            expected: "absent from a patch",
                        },
                    );
                }
                METADATA_KEY if !value.is_object() => {
                    return self.fail(
                        root.key(key),
                        Violation::Reserved {
                            expected: "an object",
                        },
                    );
                }
                VERSION_KEY | METADATA_KEY => {}
                _ => self.members(
                    &root,
                    std::iter::once((key, value)),
                    self.mode == Mode::Patch,
                )?,
            }
        }
        Ok(())
    }

    /// Checks object members below `parent`. `nulls_delete`: a `null` member is a deletion
    /// (patch mode, not inside an array).
    fn members<'a>(
        &self,
        parent: &Path,
        members: impl IntoIterator<Item = (&'a String, &'a Value)>,
        nulls_delete: bool,
    ) -> Result<(), RuleError> {
        for (key, value) in members {
            let path = parent.key(key);
            if key.is_empty() {
                return self.fail(path, Violation::EmptyKey);
            }
            if key.len() > MAX_KEY_BYTES {
                return self.fail(path, Violation::KeyTooLong { bytes: key.len() });
            }
            if let Some(ch) = forbidden_char(key) {
                return self.fail(path, Violation::KeyCharacter { ch });
            }
            if value.is_null() {
                if nulls_delete {
                    continue;
                }
                return self.fail(path, Violation::NullMember);
            }
            self.value(path, value, nulls_delete)?;
        }
        Ok(())
    }

    /// Checks a non-null value at `path` (whose depth is `path.len()`).
    fn value(&self, path: Path, value: &Value, nulls_delete: bool) -> Result<(), RuleError> {
        match value {
            Value::Null | Value::Bool(_) => Ok(()),
            Value::Number(number) => {
                let in_range = match number.as_i64() {
                    Some(int) => int.unsigned_abs() <= MAX_INTEGER.unsigned_abs(),
                    // Above i64::MAX: an integer far out of range.
                    None if number.is_u64() => false,
                    None => true,
                };
                if in_range {
                    Ok(())
                } else {
                    self.fail(
                        path,
                        Violation::IntegerOutOfRange {
                            value: number.clone(),
                        },
                    )
                }
            }
            Value::String(text) => {
                if text.len() > MAX_STRING_BYTES {
                    self.fail(path, Violation::StringTooLong { bytes: text.len() })
                } else {
                    Ok(())
                }
            }
            Value::Array(items) => {
                self.depth(&path)?;
                for (index, item) in items.iter().enumerate() {
                    if item.is_null() {
                        return self.fail(path.index(index), Violation::NullInArray);
                    }
                    // Inside an array nothing is a patch any more: the array replaces whole.
                    self.value(path.index(index), item, false)?;
                }
                Ok(())
            }
            Value::Object(map) => {
                self.depth(&path)?;
                self.members(&path, map, nulls_delete)
            }
        }
    }

    fn depth(&self, path: &Path) -> Result<(), RuleError> {
        if path.len() > MAX_DEPTH {
            return self.fail(path.clone(), Violation::TooDeep { depth: path.len() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn err(section: Section, doc: &Value) -> String {
        validate_section(section, doc)
            .expect_err("the document breaks a rule")
            .to_string()
    }

    /// Found by the `twin_rules` fuzz target: without `serde_json`'s `float_roundtrip` (enabled
    /// in the workspace) an accepted document's float read back from its JSON text one step
    /// off (`19999990000000.5956296`), so a document stored as text and read again differed
    /// from itself.
    #[test]
    fn accepted_documents_round_trip_through_json_text() {
        let doc: Value =
            serde_json::from_str(r#"{"k": 19999990000000.5956296, "m": 5.555555555555555e32}"#)
                .expect("JSON");
        validate_section(Section::Reported, &doc).expect("valid");
        let text = serde_json::to_string(&doc).expect("serialises");
        let back: Value = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, doc, "{text}");
    }

    #[test]
    fn depth_follows_the_documented_example() {
        // tags.one.….ten is an object holding a string: valid per the documentation.
        let mut doc = json!({"property": "value"});
        for key in [
            "ten", "nine", "eight", "seven", "six", "five", "four", "three", "two", "one",
        ] {
            doc = json!({ key: doc });
        }
        assert_eq!(validate_section(Section::Desired, &doc), Ok(()));
        // One more object level is too deep, and the error names it.
        let leaf = "/one/two/three/four/five/six/seven/eight/nine/ten/property";
        let mut deeper = doc.clone();
        *deeper.pointer_mut(leaf).expect("the leaf exists") = json!({});
        assert_eq!(
            err(Section::Reported, &deeper),
            "reported.one.two.three.four.five.six.seven.eight.nine.ten.property: depth 11 > 10"
        );
        // An array counts as a level too.
        *deeper.pointer_mut(leaf).expect("the leaf exists") = json!([1]);
        assert_eq!(
            validate_section(Section::Reported, &deeper).map_err(|e| e.kind),
            Err(Violation::TooDeep { depth: 11 })
        );
    }

    #[test]
    fn keys() {
        assert_eq!(
            err(Section::Reported, &json!({"a": {"b.c": 1}})),
            r#"reported.a["b.c"]: key contains forbidden character '.'"#
        );
        assert_eq!(
            err(Section::Reported, &json!({"a": {"b$": 1}})),
            "reported.a.b$: key contains forbidden character '$'"
        );
        assert_eq!(
            err(Section::Reported, &json!({"a b": 1})),
            r#"reported["a b"]: key contains forbidden character ' '"#
        );
        assert_eq!(
            err(Section::Reported, &json!({"a\u{85}": 1})),
            "reported[\"a\\u{85}\"]: key contains forbidden character '\\u{85}'"
        );
        assert_eq!(
            err(Section::Reported, &json!({"": 1})),
            r#"reported[""]: empty key"#
        );
        let long = "é".repeat(513); // 1026 bytes, 513 characters
        assert_eq!(
            validate_section(Section::Reported, &json!({ long: 1 })).map_err(|e| e.kind),
            Err(Violation::KeyTooLong { bytes: 1026 })
        );
        let fits = "é".repeat(512);
        assert_eq!(
            validate_section(Section::Reported, &json!({ fits: 1 })),
            Ok(())
        );
    }

    #[test]
    fn values() {
        assert_eq!(
            validate_section(
                Section::Reported,
                &json!({"i": 4_503_599_627_370_495_i64, "j": -4_503_599_627_370_495_i64, "f": 1e300})
            ),
            Ok(())
        );
        assert_eq!(
            err(
                Section::Reported,
                &json!({"x": [1, {"i": 4_503_599_627_370_496_i64}]})
            ),
            "reported.x[1].i: integer 4503599627370496 outside ±4503599627370495"
        );
        assert_eq!(
            err(Section::Reported, &json!({"i": u64::MAX})),
            "reported.i: integer 18446744073709551615 outside ±4503599627370495"
        );
        assert_eq!(
            err(Section::Reported, &json!({"x": [1, null]})),
            "reported.x[1]: null inside an array"
        );
        assert_eq!(
            err(Section::Reported, &json!({"x": {"y": null}})),
            "reported.x.y: null member (only a patch may hold null, meaning delete)"
        );
        let s = "ü".repeat(2049); // 4098 bytes
        assert_eq!(
            err(Section::Reported, &json!({ "s": s })),
            "reported.s: string is 4098 bytes > 4096"
        );
        assert_eq!(
            err(Section::Desired, &json!([1])),
            "desired: an array where an object is required"
        );
    }

    #[test]
    fn reserved_members_at_the_root_only() {
        let doc = json!({"a": 1, "$version": 7, "$metadata": {"$lastUpdated": "2016-03-30T16:24:48.789Z"}});
        assert_eq!(validate_section(Section::Desired, &doc), Ok(()));
        assert_eq!(section_size(&doc), 1 + 8);
        assert_eq!(
            err(Section::Desired, &json!({"a": {"$version": 1}})),
            "desired.a.$version: key contains forbidden character '$'"
        );
        assert_eq!(
            err(Section::Desired, &json!({"$version": "7"})),
            "desired.$version: read-only member must be a non-negative integer"
        );
        assert_eq!(
            validate_patch(Section::Desired, &json!({"a": null, "$version": 8})),
            Ok(())
        );
        assert!(validate_patch(Section::Reported, &json!({"$metadata": {}})).is_err());
        assert_eq!(
            validate_patch(Section::Reported, &json!({"a": 1, "$version": 8}))
                .map_err(|e| e.to_string()),
            Err("reported.$version: read-only member must be absent from a reported patch".into())
        );
    }

    #[test]
    fn size_counts_like_the_hub() {
        // key "ab" (2) + "héllo" (5) + key "n" (1) + 8 + key "b" (1) + 4 + key "o" (1)
        // + key "c" (1) + "x\u{1}" (1: control characters do not count) + array [1, true] (12)
        // + key "l" (1) + "😀" (2 UTF-16 units).
        let doc = json!({"ab": "héllo", "n": 1.5, "b": true, "o": {"c": "x\u{1}"}, "arr": [1, true], "l": "😀"});
        assert_eq!(
            section_size(&doc),
            2 + 5 + 1 + 8 + 1 + 4 + 1 + 1 + 1 + 3 + 12 + 1 + 2
        );
        // Exactly at the limit passes; one more is a 413.
        let filler = |n: usize| {
            let mut map = Map::new();
            for i in 0..n / 4000 {
                map.insert(format!("k{i:03}"), json!("x".repeat(4000 - 4)));
            }
            let used: usize = section_size(&Value::Object(map.clone()));
            map.insert("z".into(), json!("y".repeat(n - used - 1)));
            Value::Object(map)
        };
        let at_limit = filler(MAX_SECTION_SIZE);
        assert_eq!(section_size(&at_limit), MAX_SECTION_SIZE);
        assert_eq!(validate_section(Section::Reported, &at_limit), Ok(()));
        let over = filler(MAX_SECTION_SIZE + 1);
        let e = validate_section(Section::Reported, &over).expect_err("over the limit");
        assert!(e.is_too_large());
        assert_eq!(e.hub_status(), 413);
        assert_eq!(e.to_string(), "reported: section size 32769 > 32768");
        // Malformed is 400.
        let e = validate_section(Section::Reported, &json!({"a.b": 1})).expect_err("bad key");
        assert!(!e.is_too_large());
        assert_eq!(e.hub_status(), 400);
    }

    #[test]
    fn patches_may_delete_but_not_inside_arrays() {
        assert_eq!(
            validate_patch(Section::Reported, &json!({"a": null, "b": {"c": null}})),
            Ok(())
        );
        let e = validate_patch(Section::Reported, &json!({"a": [{"c": null}]}))
            .expect_err("null inside array");
        assert_eq!(
            e.to_string(),
            "reported.a[0].c: null member (only a patch may hold null, meaning delete)"
        );
        let e =
            validate_patch(Section::Reported, &json!({"a": [null]})).expect_err("null in array");
        assert_eq!(e.kind, Violation::NullInArray);
    }

    #[test]
    fn patched_checks_the_result_size() {
        let base = json!({"a": "x".repeat(4000), "b": "x".repeat(4000), "c": "x".repeat(4000), "d": "x".repeat(4000),
                          "e": "x".repeat(4000), "f": "x".repeat(4000), "g": "x".repeat(4000), "h": "x".repeat(4000)});
        assert_eq!(validate_section(Section::Reported, &base), Ok(()));
        let grow = json!({"i": "x".repeat(800)});
        assert_eq!(validate_patch(Section::Reported, &grow), Ok(()));
        let e = validate_patched(Section::Reported, &base, &grow).expect_err("result too large");
        assert!(e.is_too_large());
        let swap = json!({"a": null, "i": "x".repeat(800)});
        let out =
            validate_patched(Section::Reported, &base, &swap).expect("fits after the deletion");
        assert_eq!(out["i"], json!("x".repeat(800)));
    }
}
