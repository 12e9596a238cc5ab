//! Shared proptest generators for the `twin_*` property tests.
//!
//! Keys come mostly from a small pool so that two independently generated documents or
//! patches collide on keys (the interesting merge cases), with an occasional free-form key.
//! Documents are wide (up to 8 members per object) and deep: random nesting plus a grafted
//! chain that reaches the hub's maximum depth of 10.

#![allow(dead_code)] // each test binary uses a different subset

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use twinbridge::twin::{MAX_DEPTH, MAX_INTEGER, Path, Segment};

/// The shared key pool (includes non-ASCII keys to exercise UTF-8 handling).
pub const KEYS: &[&str] = &["a", "b", "c", "d", "é", "k_1", "temp", "😀x"];

/// A key, mostly from [`KEYS`].
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => proptest::sample::select(KEYS).prop_map(String::from),
        1 => "[a-zA-Z0-9_ü-]{1,12}",
    ]
}

/// A scalar the hub accepts, drawn mostly from a small set so that values collide too.
pub fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => proptest::sample::select(vec![json!(1), json!(2), json!(true), json!(false), json!("x"), json!(""), json!(0.5)]),
        1 => any::<bool>().prop_map(Value::from),
        1 => (-MAX_INTEGER..=MAX_INTEGER).prop_map(Value::from),
        1 => prop_oneof![Just(MAX_INTEGER), Just(-MAX_INTEGER), Just(0)].prop_map(Value::from),
        1 => (-1e12f64..1e12).prop_map(Value::from),
        1 => "[a-z é😀\t]{0,10}".prop_map(Value::from),
    ]
    .boxed()
}

/// The leaves of the generated documents and patches: [`scalar`], or a test's own variant.
pub type Scalars = fn() -> BoxedStrategy<Value>;

/// A value whose objects and arrays nest at most `levels` deep (a scalar has none).
pub fn doc_value(levels: u32) -> BoxedStrategy<Value> {
    doc_value_of(scalar, levels)
}

/// [`doc_value`] with leaves from `scalar`.
pub fn doc_value_of(scalar: Scalars, levels: u32) -> BoxedStrategy<Value> {
    scalar()
        .prop_recursive(levels, 48, 5, |inner| {
            prop_oneof![
                3 => btree_map(key(), inner.clone(), 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
                1 => vec(inner, 0..4).prop_map(Value::Array),
            ]
        })
        .boxed()
}

/// A chain of keys of length 1..=`max_len`, ending in an object of scalars from `scalar`.
pub fn chain(scalar: Scalars, max_len: usize) -> impl Strategy<Value = (Vec<String>, Value)> {
    (
        vec(key(), 1..=max_len),
        btree_map(key(), scalar(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
    )
}

/// Sets `value` at the key path `keys` in `doc`, turning whatever is in the way into objects.
pub fn graft(doc: &mut Value, keys: &[String], value: Value) {
    let Some((last, parents)) = keys.split_last() else {
        *doc = value;
        return;
    };
    let mut cur = doc;
    for key in parents {
        cur = ensure_object(cur)
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    ensure_object(cur).insert(last.clone(), value);
}

/// `value` as an object, replacing it with an empty one if it is not.
pub fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("made an object just above")
}

/// Like [`graft`] but along a general path (through array elements that exist).
pub fn graft_path(doc: &mut Value, path: &Path, value: Value) {
    let mut cur = doc;
    for segment in &path.0 {
        cur = match segment {
            Segment::Key(key) => ensure_object(cur)
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Segment::Index(index) => &mut cur[*index],
        };
    }
    *cur = value;
}

/// A full section document the hub accepts: wide, with keys colliding, and deep (a grafted
/// chain reaches depth up to 10).
pub fn doc() -> BoxedStrategy<Value> {
    doc_of(scalar)
}

/// [`doc`] with leaves from `scalar`.
pub fn doc_of(scalar: Scalars) -> BoxedStrategy<Value> {
    (
        btree_map(key(), doc_value_of(scalar, MAX_DEPTH as u32), 0..8),
        proptest::option::weighted(0.7, chain(scalar, MAX_DEPTH)),
    )
        .prop_map(|(members, chain)| {
            let mut doc = Value::Object(members.into_iter().collect());
            if let Some((keys, leaf)) = chain {
                graft(&mut doc, &keys, leaf);
            }
            doc
        })
        .boxed()
}

/// A member value of a merge patch: `null` (delete), a scalar, a whole document value, or a
/// nested patch, nested at most `levels` patch levels deep.
fn patch_value(scalar: Scalars, levels: u32) -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(Value::Null),
        6 => scalar(),
        2 => doc_value_of(scalar, 2),
    ]
    .prop_recursive(levels, 48, 5, |inner| {
        btree_map(key(), inner, 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed()
    })
    .boxed()
}

/// A merge patch that is an object, valid for the hub when the hub rules allow (containers
/// at depth ≤ 10), with deletions, and sometimes a grafted deep chain.
pub fn patch() -> BoxedStrategy<Value> {
    patch_of(scalar)
}

/// [`patch`] with leaves from `scalar`.
pub fn patch_of(scalar: Scalars) -> BoxedStrategy<Value> {
    (
        btree_map(key(), patch_value(scalar, MAX_DEPTH as u32 - 2), 0..7),
        proptest::option::weighted(0.5, chain(scalar, MAX_DEPTH)),
        any::<bool>(),
    )
        .prop_map(|(members, chain, null_leaf)| {
            let mut patch = Value::Object(members.into_iter().collect());
            if let Some((keys, leaf)) = chain {
                graft(
                    &mut patch,
                    &keys,
                    if null_leaf { Value::Null } else { leaf },
                );
            }
            patch
        })
        .boxed()
}

/// Any merge patch, including (rarely) a non-object one, which replaces the whole target.
pub fn any_patch() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => patch(),
        1 => Just(Value::Null),
        1 => scalar(),
        1 => doc_value(2),
    ]
    .boxed()
}

/// Paths of every member of every object reachable through objects only (not arrays).
pub fn member_paths(value: &Value) -> Vec<Path> {
    fn walk(value: &Value, path: &Path, out: &mut Vec<Path>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                let child_path = path.key(key);
                out.push(child_path.clone());
                walk(child, &child_path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(value, &Path::root(), &mut out);
    out
}

/// Paths of every object in `value`, including the root and objects inside arrays.
pub fn object_paths(value: &Value) -> Vec<Path> {
    fn walk(value: &Value, path: &Path, out: &mut Vec<Path>) {
        match value {
            Value::Object(map) => {
                out.push(path.clone());
                for (key, child) in map {
                    walk(child, &path.key(key), out);
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    walk(child, &path.index(index), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &Path::root(), &mut out);
    out
}

/// The value at `path`, if any.
pub fn at<'a>(value: &'a Value, path: &Path) -> Option<&'a Value> {
    value.pointer(&path.to_pointer())
}

/// A document built to overlap the given patches: along their object paths it holds objects
/// (with a stale extra member), scalars or nothing, as `choices` dictates, so that deletions,
/// replacements and nested patches all meet something to act on.
pub fn shadow(patches: &[&Value], choices: &[u8], filler: &Value) -> Value {
    fn build(
        patches: &[&Value],
        choices: &[u8],
        next: &mut usize,
        filler: Option<&Value>,
    ) -> Value {
        let mut out = match filler {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        out.insert("stale".into(), json!(1));
        let mut keys: Vec<&String> = patches
            .iter()
            .filter_map(|p| p.as_object())
            .flat_map(|m| m.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let choice = choices
                .get(*next % choices.len().max(1))
                .copied()
                .unwrap_or(0);
            *next += 1;
            let subs: Vec<&Value> = patches.iter().filter_map(|p| p.get(key)).collect();
            match choice % 4 {
                0 => {
                    out.remove(key);
                }
                1 => {
                    out.insert(key.clone(), json!(7));
                }
                _ => {
                    let sub = build(&subs, choices, next, out.get(key));
                    out.insert(key.clone(), sub);
                }
            }
        }
        Value::Object(out)
    }
    let mut next = 0;
    build(patches, choices, &mut next, Some(filler))
}
