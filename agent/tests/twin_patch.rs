//! Property tests of the merge patch algebra: `apply` / `diff` round trip, `diff` minimality,
//! and the `compose` law including exactly when no composite exists.

mod twin_gen;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use twin_gen::{any_patch, at, doc, graft_path, key, member_paths, patch, shadow};
use twinbridge::twin::{
    ComposeError, JsonKind, Path, Section, applied, compose, diff, is_noop, validate_patch,
    validate_section,
};

/// Asserts that `d = diff(a, b)` mentions exactly the keys whose values differ, recursing
/// where both sides hold objects, and replaces or deletes everywhere else.
fn check_minimal(a: &Value, b: &Value, d: &Value) -> Result<(), TestCaseError> {
    let (Value::Object(a), Value::Object(b)) = (a, b) else {
        prop_assert_eq!(d, b);
        return Ok(());
    };
    let d = d
        .as_object()
        .ok_or_else(|| TestCaseError::fail("diff of objects is not an object"))?;
    for (key, change) in d {
        let (old, new) = (a.get(key), b.get(key));
        prop_assert_ne!(old, new, "diff mentions unchanged key {:?}", key);
        match (old, new) {
            (_, None) => prop_assert_eq!(change, &Value::Null),
            (Some(old @ Value::Object(_)), Some(new @ Value::Object(_))) => {
                prop_assert!(
                    change.is_object() && !is_noop(change),
                    "{:?}: {}",
                    key,
                    change
                );
                check_minimal(old, new, change)?;
            }
            (_, Some(new)) => prop_assert_eq!(change, new),
        }
    }
    for key in a.keys().chain(b.keys()) {
        if a.get(key) != b.get(key) {
            prop_assert!(d.contains_key(key), "diff misses changed key {:?}", key);
        }
    }
    Ok(())
}

/// Asserts the premise of the impossibility argument for a compose error: both patches are
/// objects on the way to `path`, `p2` holds an object there and `p1` a non-object.
fn check_conflict(p1: &Value, p2: &Value, err: &ComposeError) -> Result<(), TestCaseError> {
    for len in 0..err.path.len() {
        let prefix = Path(err.path.0[..len].to_vec());
        prop_assert!(
            at(p1, &prefix).is_some_and(Value::is_object),
            "p1 at {}",
            prefix
        );
        prop_assert!(
            at(p2, &prefix).is_some_and(Value::is_object),
            "p2 at {}",
            prefix
        );
    }
    prop_assert!(at(p2, &err.path).is_some_and(Value::is_object));
    let first = at(p1, &err.path).ok_or_else(|| TestCaseError::fail("p1 has nothing there"))?;
    prop_assert_ne!(JsonKind::of(first), JsonKind::Object);
    prop_assert_eq!(JsonKind::of(first), err.first);
    Ok(())
}

/// A pair of patches where `p2` patches an object at a path that `p1` sets, so that compose
/// conflicts whenever `p1` holds a non-object there.
fn overlapping_pair() -> impl Strategy<Value = (Value, Value)> {
    (
        patch(),
        patch(),
        any::<prop::sample::Index>(),
        proptest::collection::btree_map(
            key(),
            prop_oneof![Just(Value::Null), twin_gen::scalar()],
            0..4,
        ),
    )
        .prop_map(|(p1, mut p2, index, members)| {
            let paths = member_paths(&p1);
            if !paths.is_empty() {
                let path = index.get(&paths);
                graft_path(&mut p2, path, Value::Object(members.into_iter().collect()));
            }
            (p1, p2)
        })
}

/// The naive "deep merge" of two patches, which is wrong exactly in the conflict cases.
fn naive_merge(p1: &Value, p2: &Value) -> Value {
    match (p1, p2) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out: Map<String, Value> = a.clone();
            for (key, value) in b {
                let merged = match a.get(key) {
                    Some(old) => naive_merge(old, value),
                    None => value.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        _ => p2.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn diff_round_trips_unrelated_documents(a in doc(), b in doc()) {
        prop_assert_eq!(applied(&a, &diff(&a, &b)), b);
    }

    #[test]
    fn diff_round_trips_and_is_minimal_on_nearby_documents(a in doc(), p in patch()) {
        let b = applied(&a, &p);
        let d = diff(&a, &b);
        prop_assert_eq!(&applied(&a, &d), &b);
        check_minimal(&a, &b, &d)?;
    }

    #[test]
    fn diff_is_minimal_on_unrelated_documents(a in doc(), b in doc()) {
        check_minimal(&a, &b, &diff(&a, &b))?;
    }

    #[test]
    fn diff_of_a_document_with_itself_is_empty(a in doc()) {
        let d = diff(&a, &a);
        prop_assert!(is_noop(&d), "{}", d);
    }

    #[test]
    fn diff_of_valid_documents_is_a_valid_patch(a in doc(), p in patch()) {
        let b = applied(&a, &p);
        prop_assert_eq!(validate_section(Section::Reported, &a), Ok(()));
        if validate_section(Section::Reported, &b).is_ok() {
            prop_assert_eq!(validate_patch(Section::Reported, &diff(&a, &b)), Ok(()));
        }
    }

    #[test]
    fn apply_is_idempotent(a in doc(), p in any_patch()) {
        let once = applied(&a, &p);
        prop_assert_eq!(applied(&once, &p), once);
    }

    #[test]
    fn compose_law_on_overlapping_documents(
        p1 in any_patch(),
        p2 in any_patch(),
        filler in doc(),
        choices in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        let d = shadow(&[&p1, &p2], &choices, &filler);
        match compose(&p1, &p2) {
            Ok(c) => {
                prop_assert_eq!(applied(&applied(&d, &p1), &p2), applied(&d, &c));
                // Also on documents that are not objects at all.
                for d in [json!(null), json!(5), json!([1, 2]), json!({})] {
                    prop_assert_eq!(applied(&applied(&d, &p1), &p2), applied(&d, &c));
                }
            }
            Err(err) => check_conflict(&p1, &p2, &err)?,
        }
    }

    #[test]
    fn compose_law_on_conflict_prone_pairs(
        (p1, p2) in overlapping_pair(),
        filler in doc(),
        choices in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        let d = shadow(&[&p1, &p2], &choices, &filler);
        match compose(&p1, &p2) {
            Ok(c) => prop_assert_eq!(applied(&applied(&d, &p1), &p2), applied(&d, &c)),
            Err(err) => check_conflict(&p1, &p2, &err)?,
        }
    }

    /// When compose refuses, no patch `q` reproduces the sequence: the document with a fresh
    /// member at the conflict path tells `q` and the sequence apart (the proof on `compose`).
    #[test]
    fn compose_refuses_only_when_no_composite_exists(
        (p1, p2) in overlapping_pair(),
        q in any_patch(),
        d in doc(),
    ) {
        if let Err(err) = compose(&p1, &p2) {
            let mut witness = d.clone();
            graft_path(&mut witness, &err.path, json!({"~fresh~": true}));
            let sequence = applied(&applied(&witness, &p1), &p2);
            let there = at(&sequence, &err.path).ok_or_else(|| TestCaseError::fail("sequence lost the path"))?;
            prop_assert!(there.is_object() && there.get("~fresh~").is_none());
            let naive = naive_merge(&p1, &p2);
            for candidate in [&q, &p2, &p1, &naive] {
                prop_assert_ne!(&applied(&witness, candidate), &sequence, "candidate {}", candidate);
            }
        }
    }

    /// Consecutive diffs compose unless a value turns from a non-object (or nothing) into an
    /// object: then the second diff patches an object that the first replaced, and on a
    /// document other than `a` the composite would keep stale members.
    #[test]
    fn diffs_along_a_chain_compose_unless_a_value_becomes_an_object(
        a in doc(), p in patch(), q in patch(),
    ) {
        let b = applied(&a, &p);
        let c = applied(&b, &q);
        match compose(&diff(&a, &b), &diff(&b, &c)) {
            Ok(composite) => prop_assert_eq!(applied(&a, &composite), c),
            Err(err) => {
                prop_assert!(!at(&b, &err.path).is_some_and(Value::is_object), "{}", err);
                prop_assert!(at(&c, &err.path).is_some_and(Value::is_object), "{}", err);
            }
        }
    }

    #[test]
    fn compose_is_associative_in_effect(
        p1 in patch(), p2 in patch(), p3 in patch(),
        filler in doc(),
        choices in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        let left = compose(&p1, &p2).and_then(|c| compose(&c, &p3));
        let right = compose(&p2, &p3).and_then(|c| compose(&p1, &c));
        if let (Ok(left), Ok(right)) = (left, right) {
            let d = shadow(&[&p1, &p2, &p3], &choices, &filler);
            let sequence = applied(&applied(&applied(&d, &p1), &p2), &p3);
            prop_assert_eq!(applied(&d, &left), sequence.clone());
            prop_assert_eq!(applied(&d, &right), sequence);
        }
    }

    #[test]
    fn empty_patch_is_an_identity_of_compose(p in any_patch()) {
        prop_assert_eq!(compose(&json!({}), &p), Ok(p.clone()));
        if p.is_object() {
            prop_assert_eq!(compose(&p, &json!({})), Ok(p));
        }
    }
}

#[test]
fn compose_keeps_deletions() {
    let c = compose(
        &json!({"a": null, "b": {"x": null}}),
        &json!({"c": 1, "b": {"y": 2}}),
    )
    .expect("no conflict");
    assert_eq!(c, json!({"a": null, "b": {"x": null, "y": 2}, "c": 1}));
    let d = json!({"a": 1, "b": {"x": 1, "z": 1}});
    assert_eq!(applied(&d, &c), json!({"b": {"y": 2, "z": 1}, "c": 1}));
}

#[test]
fn compose_later_replacement_wins() {
    assert_eq!(
        compose(&json!({"a": {"x": 1}}), &json!({"a": 5})),
        Ok(json!({"a": 5}))
    );
    assert_eq!(
        compose(&json!({"a": 5}), &json!({"a": null})),
        Ok(json!({"a": null}))
    );
    assert_eq!(compose(&json!({"a": 1}), &json!([1])), Ok(json!([1])));
}

#[test]
fn compose_error_names_the_path() {
    let err = compose(&json!({"cfg": {"a": 3}}), &json!({"cfg": {"a": {"x": 1}}}))
        .expect_err("scalar then object patch");
    assert_eq!(err.path, Path::from_keys(["cfg", "a"]));
    assert_eq!(err.first, JsonKind::Number);
    assert_eq!(
        err.to_string(),
        "cannot compose merge patches at cfg.a: the first patch sets a number there and the \
         second patches members of an object there; no single merge patch has that effect"
    );
    let err = compose(&json!({"a": null}), &json!({"a": {}})).expect_err("delete then patch");
    assert_eq!(err.first, JsonKind::Null);
    let err = compose(&json!(7), &json!({"a": 1})).expect_err("root replaced then patched");
    assert!(err.path.is_root());
    assert_eq!(
        err.to_string().split(':').next(),
        Some("cannot compose merge patches at <root>")
    );
}

#[test]
fn generators_reach_depth_ten_and_conflicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    // Guard against generators that silently stop producing the interesting cases.
    let mut runner = TestRunner::deterministic();
    let mut deepest = 0;
    let mut conflicts = 0;
    let mut composed = 0;
    for _ in 0..200 {
        let d = doc().new_tree(&mut runner).expect("doc").current();
        deepest = deepest.max(
            twin_gen::object_paths(&d)
                .iter()
                .map(Path::len)
                .max()
                .unwrap_or(0),
        );
        let (p1, p2) = overlapping_pair()
            .new_tree(&mut runner)
            .expect("pair")
            .current();
        match compose(&p1, &p2) {
            Ok(_) => composed += 1,
            Err(_) => conflicts += 1,
        }
    }
    assert_eq!(deepest, 10, "documents reach the maximum depth");
    assert!(
        conflicts > 20 && composed > 20,
        "conflicts {conflicts}, composed {composed}"
    );
}
