//! IoT Hub's twin document rules: each documented limit at and just past its edge, and
//! properties of patch application over arbitrary documents.

use hub_emulator::rules::{
    self, MAX_INT, MIN_INT, RuleViolation, check_desired_patch, check_reported_patch, check_tags,
    check_tags_patch, section_size,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn status(r: Result<Value, RuleViolation>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(v) => v.status,
    }
}

fn reported(patch: &Value) -> u16 {
    status(check_reported_patch(&json!({}), patch))
}

#[test]
fn key_characters() {
    for bad in [
        "a.b", "a$b", "$version", "a b", "a\u{0}", "tab\t", "\u{1f}", "\u{7f}", "c1\u{85}",
        "\u{9f}x", "",
    ] {
        let mut m = Map::new();
        m.insert(bad.to_owned(), json!(1));
        assert_eq!(reported(&Value::Object(m)), 400, "key {bad:?}");
    }
    for good in [
        "a-b",
        "a_b",
        "Ä",
        "数据",
        "a:b",
        "a/b",
        "a@b",
        "\u{a0}nbsp",
        "emoji😀",
    ] {
        let mut m = Map::new();
        m.insert(good.to_owned(), json!(1));
        assert_eq!(reported(&Value::Object(m)), 200, "key {good:?}");
    }
}

#[test]
fn nested_keys_are_checked_too() {
    assert_eq!(reported(&json!({"a": {"b": {"c.d": 1}}})), 400);
    assert_eq!(reported(&json!({"a": [{"ok": 1}, {"not ok": 2}]})), 400);
    // Even a deletion must name a valid key.
    assert_eq!(reported(&json!({"a b": null})), 400);
}

#[test]
fn key_length_is_counted_in_utf8_bytes() {
    let at = |k: String| {
        let mut m = Map::new();
        m.insert(k, json!(true));
        reported(&Value::Object(m))
    };
    assert_eq!(at("k".repeat(1024)), 200);
    assert_eq!(at("k".repeat(1025)), 400);
    assert_eq!(at("é".repeat(512)), 200);
    assert_eq!(at("é".repeat(513)), 400);
}

/// Microsoft's example: ten nested objects holding a property is the deepest valid twin.
#[test]
fn depth_ten_is_the_limit() {
    let nest = |levels: usize, leaf: Value| {
        (0..levels).fold(leaf, |inner, i| json!({ format!("l{i}"): inner }))
    };
    // `nest(n, …)` is a section whose deepest object is n levels below the root.
    assert_eq!(reported(&nest(11, json!("value"))), 200);
    assert_eq!(reported(&nest(11, json!({}))), 400);
    assert_eq!(reported(&nest(12, json!("value"))), 400);
    // Arrays count as a level.
    assert_eq!(reported(&nest(10, json!([1]))), 200);
    assert_eq!(reported(&nest(11, json!([1]))), 400);
}

#[test]
fn integer_range() {
    assert_eq!(reported(&json!({ "n": MAX_INT })), 200);
    assert_eq!(reported(&json!({ "n": MAX_INT + 1 })), 400);
    assert_eq!(reported(&json!({ "n": MIN_INT })), 200);
    assert_eq!(reported(&json!({ "n": MIN_INT - 1 })), 400);
    assert_eq!(reported(&json!({ "n": u64::MAX })), 400);
    assert_eq!(reported(&json!({ "n": i64::MIN })), 400);
    assert_eq!(reported(&json!({ "n": [1, MAX_INT + 1] })), 400);
    // Floats are not integers: any finite double is accepted.
    assert_eq!(reported(&json!({ "n": 1.0e300 })), 200);
    assert_eq!(reported(&json!({ "n": -0.5 })), 200);
}

#[test]
fn string_length_is_counted_in_utf8_bytes() {
    assert_eq!(reported(&json!({ "s": "x".repeat(4096) })), 200);
    assert_eq!(reported(&json!({ "s": "x".repeat(4097) })), 400);
    assert_eq!(reported(&json!({ "s": "€".repeat(1365) })), 200); // 4095 bytes
    assert_eq!(reported(&json!({ "s": "€".repeat(1366) })), 400); // 4098 bytes
}

#[test]
fn arrays_replace_whole_and_may_not_hold_null() {
    let cur = json!({"a": [1, 2, 3], "b": 1});
    let next = check_reported_patch(&cur, &json!({"a": [4]})).unwrap();
    assert_eq!(next, json!({"a": [4], "b": 1}));
    assert_eq!(
        status(check_reported_patch(&cur, &json!({"a": [4, null]}))),
        400
    );
    assert_eq!(
        status(check_reported_patch(&cur, &json!({"a": [[null]]}))),
        400
    );
    // Not even inside an object in an array: arrays are stored verbatim, and a stored twin
    // never holds null.
    assert_eq!(
        status(check_reported_patch(&cur, &json!({"a": [{"x": null}]}))),
        400
    );
    assert_eq!(
        status(check_reported_patch(&cur, &json!({"a": [{"x": [1]}]}))),
        200
    );
}

#[test]
fn null_deletes_and_objects_merge() {
    let cur = json!({"a": {"x": 1, "y": 2}, "b": "keep", "$version": 7, "$metadata": {"big": "x"}});
    let next = check_desired_patch(
        &cur,
        &json!({"a": {"x": null, "z": {"n": null}}, "c": null}),
    )
    .unwrap();
    assert_eq!(next, json!({"a": {"y": 2, "z": {}}, "b": "keep"}));
    // A scalar replaced by an object, an object replaced by a scalar.
    let next = check_desired_patch(
        &json!({"a": 1, "b": {"c": 1}}),
        &json!({"a": {"q": 1}, "b": 2}),
    )
    .unwrap();
    assert_eq!(next, json!({"a": {"q": 1}, "b": 2}));
}

#[test]
fn a_patch_must_be_an_object() {
    for bad in [json!(null), json!(1), json!("x"), json!([1]), json!(true)] {
        assert_eq!(reported(&bad), 400, "{bad}");
    }
}

/// Eight properties `pN` of 4093 characters: 8 × (2 + 4093) … padded to exactly 32768.
fn section_of_size(size: usize) -> Value {
    let mut m = Map::new();
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        let key = format!("p{i:02}"); // 3 characters
        let len = (left - 3).min(4096);
        m.insert(key, Value::String("v".repeat(len)));
        left -= 3 + len;
        i += 1;
    }
    Value::Object(m)
}

#[test]
fn size_limit_is_32_kb_for_properties_and_8_kb_for_tags() {
    let full = section_of_size(32 * 1024);
    assert_eq!(section_size(&full), 32 * 1024);
    assert_eq!(reported(&full), 200);
    let over = section_of_size(32 * 1024 + 1);
    assert_eq!(reported(&over), 413);
    assert_eq!(status(check_desired_patch(&json!({}), &over)), 413);
    // Growing a full section by a boolean (1-char key + 4) is refused, with nothing changed.
    assert_eq!(
        status(check_reported_patch(&full, &json!({"b": true}))),
        413
    );
    // Shrinking one value while adding another that fits is fine.
    let next = check_reported_patch(&full, &json!({"p00": "short", "b": true})).unwrap();
    assert!(section_size(&next) <= 32 * 1024);

    let tags = section_of_size(8 * 1024);
    assert_eq!(status(check_tags(&tags)), 200);
    assert_eq!(status(check_tags(&section_of_size(8 * 1024 + 1))), 413);
    assert_eq!(status(check_tags_patch(&tags, &json!({"x": 1}))), 413);
}

#[test]
fn size_counting_rules() {
    // Keys count their characters; numbers 8; booleans 4; strings their characters except
    // control characters; objects and arrays the sum of their parts; `$` members nothing.
    assert_eq!(section_size(&json!({"abc": 1})), 3 + 8);
    assert_eq!(section_size(&json!({"abc": 1.25})), 3 + 8);
    assert_eq!(section_size(&json!({"ab": false})), 2 + 4);
    assert_eq!(section_size(&json!({"ab": "x\n\u{1}\u{9f}y"})), 2 + 2);
    assert_eq!(section_size(&json!({"数据": "数据"})), 4);
    // Characters are UTF-16 code units: an emoji counts 2; DEL (not C0 or C1) counts.
    assert_eq!(section_size(&json!({"e": "😀"})), 1 + 2);
    assert_eq!(section_size(&json!({"d": "\u{7f}"})), 1 + 1);
    assert_eq!(
        section_size(&json!({"o": {"k": {"kk": "v"}}})),
        1 + 1 + 2 + 1
    );
    assert_eq!(section_size(&json!({"a": [true, 2, "xyz"]})), 1 + 4 + 8 + 3);
    assert_eq!(
        section_size(&json!({"a": 1, "$version": 12, "$metadata": {"a": {"$lastUpdated": "x"}}})),
        9
    );
    // Control characters inside strings do not count, so this 4096-byte string weighs 0.
    let controls = "\u{1}".repeat(4096);
    assert_eq!(section_size(&json!({ "c": controls })), 1);
}

// ----- properties -----------------------------------------------------------------------------

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z]{1,4}",
        1 => "[a-z]{0,2}[.$ \u{0}\u{85}][a-z]{0,2}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (MIN_INT - 2..=MAX_INT + 2).prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        "[a-z\u{1}]{0,12}".prop_map(Value::String),
    ]
}

fn doc() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(12, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(key(), doc(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// An independent statement of the rules, written as predicates rather than a walk with
/// early returns, to cross-check the module.
fn valid_value(v: &Value, depth: usize, in_array: bool) -> bool {
    match v {
        Value::Null => !in_array,
        Value::Bool(_) => true,
        Value::Number(n) => {
            n.as_f64().is_some()
                && n.as_i64().is_none_or(|i| (MIN_INT..=MAX_INT).contains(&i))
                && (n.as_i64().is_some() || n.as_u64().is_none())
        }
        Value::String(s) => s.len() <= 4096,
        Value::Array(items) => depth <= 10 && items.iter().all(|i| valid_value(i, depth + 1, true)),
        Value::Object(m) => {
            depth <= 10
                && m.iter().all(|(k, v)| {
                    !k.is_empty()
                        && k.len() <= 1024
                        && !k
                            .chars()
                            .any(|c| c == '.' || c == '$' || c == ' ' || c.is_control())
                        && valid_value(v, depth + 1, in_array)
                })
        }
    }
}

fn contains_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(items) => items.iter().any(contains_null),
        Value::Object(m) => m.values().any(contains_null),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A patch is accepted exactly when it obeys the rules (sizes stay far below the limits
    /// here), and the result is the RFC 7386 merge.
    #[test]
    fn accepted_iff_valid(current in object(), patch in object()) {
        let current = check_reported_patch(&json!({}), &current).unwrap_or_else(|_| json!({}));
        let verdict = check_reported_patch(&current, &patch);
        prop_assert_eq!(verdict.is_ok(), valid_value(&patch, 0, false), "{:?}", verdict);
        if let Ok(next) = verdict {
            let mut expected = current.clone();
            rules::merge_patch(&mut expected, &patch);
            prop_assert_eq!(&next, &expected);
            // The result holds no nulls and re-validates to itself.
            prop_assert!(!contains_null(&next));
            prop_assert_eq!(check_reported_patch(&json!({}), &next).unwrap(), next);
        }
    }

    /// Every member of the patch is reflected in the result: nulls removed, scalars and arrays
    /// equal to the patch, objects present.
    #[test]
    fn merge_reflects_every_patch_member(current in object(), patch in object()) {
        let current = check_desired_patch(&json!({}), &current).unwrap_or_else(|_| json!({}));
        if let Ok(next) = check_desired_patch(&current, &patch) {
            for (k, v) in patch.as_object().unwrap() {
                match v {
                    Value::Null => prop_assert!(next.get(k).is_none()),
                    Value::Object(_) => prop_assert!(next[k].is_object()),
                    other => prop_assert_eq!(&next[k], other),
                }
            }
            for (k, v) in current.as_object().unwrap() {
                if !patch.as_object().unwrap().contains_key(k) {
                    prop_assert_eq!(&next[k], v);
                }
            }
        }
    }

    /// `$`-prefixed members of the current section (`$version`, `$metadata`) neither count nor
    /// survive into the returned section.
    #[test]
    fn system_members_are_ignored(current in object(), version in 1u64..1000) {
        let current = check_reported_patch(&json!({}), &current).unwrap_or_else(|_| json!({}));
        let mut with_system = current.clone();
        with_system["$version"] = json!(version);
        with_system["$metadata"] = json!({"$lastUpdated": "x".repeat(40_000)});
        prop_assert_eq!(section_size(&with_system), section_size(&current));
        prop_assert_eq!(check_reported_patch(&with_system, &json!({})).unwrap(), current);
    }
}

proptest! {
    /// Around the size limits: a patch of string members is refused with 413 exactly when the
    /// resulting section, counted by hand (3-character keys plus string lengths, plus what the
    /// current section already holds), exceeds the limit.
    #[test]
    fn too_large_exactly_past_the_limit(
        lens in proptest::collection::vec(0usize..=4096, 1..12),
        current_len in 0usize..=4096,
        tags in any::<bool>(),
    ) {
        let current = json!({ "cur": "c".repeat(current_len) });
        let patch: Map<String, Value> = lens
            .iter()
            .enumerate()
            .map(|(i, len)| (format!("k{i:02}"), Value::String("x".repeat(*len))))
            .collect();
        let expected_size = 3 + current_len + lens.iter().map(|l| 3 + l).sum::<usize>();
        let (verdict, limit) = if tags {
            (check_tags_patch(&current, &Value::Object(patch)), 8 * 1024)
        } else {
            (check_desired_patch(&current, &Value::Object(patch)), 32 * 1024)
        };
        match verdict {
            Ok(next) => {
                prop_assert!(expected_size <= limit);
                prop_assert_eq!(section_size(&next), expected_size);
            }
            Err(v) => {
                prop_assert_eq!(v.status, 413);
                prop_assert!(expected_size > limit);
            }
        }
    }
}
