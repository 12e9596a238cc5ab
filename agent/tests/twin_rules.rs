//! Property tests of the hub document rules: generated valid documents pass; each kind of
//! single mutation is rejected with exactly its path and kind, and the right hub status.

mod twin_gen;

use proptest::prelude::*;
use serde_json::{Value, json};
use twin_gen::{doc, graft_path, key, object_paths, patch};
use twinbridge::twin::{
    MAX_DEPTH, MAX_INTEGER, MAX_SECTION_SIZE, Path, Rejection, RuleError, Section, Segment,
    Violation, applied, section_size, validate_patch, validate_patched, validate_section,
};

fn section() -> impl Strategy<Value = Section> {
    prop_oneof![Just(Section::Desired), Just(Section::Reported)]
}

/// One rule-breaking change, made at an object of a valid document.
#[derive(Debug, Clone)]
enum Mutation {
    BadKeyChar(char),
    LongKey,
    EmptyKey,
    LongString,
    BigInteger(Value),
    NullMember,
    NullInArray,
    /// Nest containers below the target until one sits at depth 11 (`true`: the last is an
    /// array).
    TooDeep(bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        proptest::sample::select(vec![
            '.', '$', ' ', '\u{0}', '\n', '\u{7f}', '\u{85}', '\u{9f}'
        ])
        .prop_map(Mutation::BadKeyChar),
        Just(Mutation::LongKey),
        Just(Mutation::EmptyKey),
        Just(Mutation::LongString),
        proptest::sample::select(vec![
            json!(MAX_INTEGER + 1),
            json!(-MAX_INTEGER - 1),
            json!(i64::MIN),
            json!(u64::MAX),
        ])
        .prop_map(Mutation::BigInteger),
        Just(Mutation::NullMember),
        Just(Mutation::NullInArray),
        any::<bool>().prop_map(Mutation::TooDeep),
    ]
}

/// Applies `mutation` at the object `target` of `doc`; returns the expected error path and
/// kind.
fn mutate(doc: &mut Value, target: &Path, mutation: &Mutation, key: &str) -> (Path, Violation) {
    let object = doc
        .pointer_mut(&target.to_pointer())
        .and_then(Value::as_object_mut)
        .expect("target is an object of the document");
    match mutation {
        Mutation::BadKeyChar(ch) => {
            let bad = format!("{key}{ch}z");
            object.insert(bad.clone(), json!(1));
            (target.key(&bad), Violation::KeyCharacter { ch: *ch })
        }
        Mutation::LongKey => {
            // 513 two-byte characters: 1026 bytes, though only 513 characters.
            let long = "é".repeat(513);
            object.insert(long.clone(), json!(true));
            (target.key(&long), Violation::KeyTooLong { bytes: 1026 })
        }
        Mutation::EmptyKey => {
            object.insert(String::new(), json!("v"));
            (target.key(""), Violation::EmptyKey)
        }
        Mutation::LongString => {
            object.insert(key.to_owned(), json!("ü".repeat(2049)));
            (target.key(key), Violation::StringTooLong { bytes: 4098 })
        }
        Mutation::BigInteger(value) => {
            let number = value.as_number().expect("a number").clone();
            object.insert(key.to_owned(), value.clone());
            (
                target.key(key),
                Violation::IntegerOutOfRange { value: number },
            )
        }
        Mutation::NullMember => {
            object.insert(key.to_owned(), Value::Null);
            (target.key(key), Violation::NullMember)
        }
        Mutation::NullInArray => {
            object.insert(key.to_owned(), json!([1, "x", null, 2]));
            let array = target.key(key);
            if array.len() > MAX_DEPTH {
                (array.clone(), Violation::TooDeep { depth: array.len() })
            } else {
                (array.index(2), Violation::NullInArray)
            }
        }
        Mutation::TooDeep(array_last) => {
            let mut path = target.key(key);
            while path.len() < MAX_DEPTH + 1 {
                path = path.key("n");
            }
            let last = if *array_last {
                json!([1])
            } else {
                json!({"leaf": 1})
            };
            graft_path(doc, &path, last);
            (
                path.clone(),
                Violation::TooDeep {
                    depth: MAX_DEPTH + 1,
                },
            )
        }
    }
}

/// True when the path goes through an array element (where `null` never means delete).
fn inside_array(path: &Path) -> bool {
    path.0.iter().any(|s| matches!(s, Segment::Index(_)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_are_valid(section in section(), d in doc()) {
        prop_assert_eq!(validate_section(section, &d), Ok(()));
        prop_assert_eq!(validate_patch(section, &d), Ok(()), "a document is also a patch");
    }

    #[test]
    fn generated_patches_are_valid_patches(section in section(), p in patch()) {
        prop_assert_eq!(validate_patch(section, &p), Ok(()));
    }

    #[test]
    fn each_mutation_is_reported_at_its_path(
        section in section(),
        mut d in doc(),
        target in any::<prop::sample::Index>(),
        mutation in mutation(),
        key in key(),
    ) {
        let targets = object_paths(&d);
        let target = target.get(&targets).clone();
        let (path, kind) = mutate(&mut d, &target, &mutation, &key);
        let err = validate_section(section, &d).expect_err("the mutation breaks a rule");
        prop_assert_eq!(&err, &RuleError { section, path: path.clone(), kind: kind.clone() });
        prop_assert_eq!(err.rejection(), Rejection::Malformed);
        prop_assert_eq!(err.hub_status(), 400);
        let shown = err.to_string();
        prop_assert!(shown.starts_with(section.name()), "{}", shown);
        prop_assert!(shown.ends_with(&format!(": {kind}")), "{}", shown);
        // As a patch, a null member outside arrays is a deletion, not a violation.
        let as_patch = validate_patch(section, &d);
        if kind == Violation::NullMember && !inside_array(&path) {
            prop_assert_eq!(as_patch, Ok(()));
        } else {
            prop_assert_eq!(as_patch, Err(err));
        }
    }

    #[test]
    fn size_is_the_sum_of_member_sizes(d in doc()) {
        let members = d.as_object().expect("documents are objects");
        let sum: usize = members
            .iter()
            .map(|(k, v)| section_size(&json!({ k.clone(): v.clone() })))
            .sum();
        prop_assert_eq!(section_size(&d), sum);
        for (k, v) in members {
            let single = section_size(&json!({ k.clone(): v.clone() }));
            prop_assert!(single >= k.chars().count(), "key {:?} counted", k);
        }
    }

    /// Characters count one each (as UTF-16 units: two for characters beyond the Basic
    /// Multilingual Plane), control characters nothing, numbers 8 and booleans 4.
    #[test]
    fn size_counts_characters_numbers_and_booleans(
        k in key(),
        text in "[a-z é😀\t\u{85}]{0,20}",
        number in any::<i32>(),
        flag in any::<bool>(),
    ) {
        let chars = |t: &str| -> usize {
            t.chars().map(|c| match c { '😀' => 2, '\t' | '\u{85}' => 0, _ => 1 }).sum()
        };
        prop_assert_eq!(section_size(&json!({ k.clone(): text.clone() })), chars(&k) + chars(&text));
        prop_assert_eq!(section_size(&json!({ k.clone(): number })), chars(&k) + 8);
        prop_assert_eq!(section_size(&json!({ k.clone(): flag })), chars(&k) + 4);
        prop_assert_eq!(
            section_size(&json!({ k.clone(): { "n": [number, flag, text.clone()] } })),
            chars(&k) + 1 + 8 + 4 + chars(&text)
        );
    }

    /// What `validate_patch` relies on: a patch (without its deletions) never counts more
    /// than the section it produces, so a patch over the limit is certainly too large.
    #[test]
    fn patch_size_bounds_the_patched_size(base in doc(), p in patch()) {
        prop_assert!(section_size(&p) <= section_size(&applied(&base, &p)));
    }

    #[test]
    fn patched_is_patch_then_section(section in section(), base in doc(), p in patch()) {
        let expected = validate_patch(section, &p).and_then(|()| {
            let out = applied(&base, &p);
            validate_section(section, &out).map(|()| out)
        });
        prop_assert_eq!(validate_patched(section, &base, &p), expected);
    }

    #[test]
    fn deep_documents_pass_exactly_up_to_depth_ten(
        section in section(),
        keys in proptest::collection::vec(key(), 1..=12),
        array_last in any::<bool>(),
    ) {
        let path = Path::from_keys(keys.clone());
        let mut d = json!({});
        graft_path(&mut d, &path, if array_last { json!([true]) } else { json!({"v": 1}) });
        let result = validate_section(section, &d);
        if keys.len() <= MAX_DEPTH {
            prop_assert_eq!(result, Ok(()));
        } else {
            let first_too_deep = Path(path.0[..=MAX_DEPTH].to_vec());
            prop_assert_eq!(result, Err(RuleError {
                section,
                path: first_too_deep,
                kind: Violation::TooDeep { depth: MAX_DEPTH + 1 },
            }));
        }
    }
}

proptest! {
    // Large documents: fewer cases keep this fast in debug builds.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn too_large_is_413_at_the_section_root(
        section in section(),
        mut d in doc(),
        extra in 1usize..2000,
    ) {
        // Fill with 4000-character strings under fresh keys until just over the limit.
        // Each filler adds its key (6 characters) and 4000 characters; stop when the rest
        // fits in one string of at most 4096 bytes.
        d.as_object_mut().expect("documents are objects").remove("last");
        let mut size = section_size(&d);
        let mut i = 0;
        while MAX_SECTION_SIZE - size > 4096 + 4 {
            d[format!("big{i:03}")] = json!("x".repeat(4000));
            size += 4000 + 6;
            i += 1;
        }
        prop_assert_eq!(section_size(&d), size);
        let room = MAX_SECTION_SIZE - size;
        let fill = room - 4; // key "last" is 4 characters; fill ≤ 4096 bytes
        d["last"] = json!("y".repeat(fill));
        prop_assert_eq!(section_size(&d), MAX_SECTION_SIZE);
        prop_assert_eq!(validate_section(section, &d), Ok(()));
        d["last"] = json!("y".repeat(fill + extra.min(4096 - fill)));
        let size = section_size(&d);
        prop_assume!(size > MAX_SECTION_SIZE);
        let err = validate_section(section, &d).expect_err("over the limit");
        prop_assert_eq!(&err, &RuleError { section, path: Path::root(), kind: Violation::TooLarge { size } });
        prop_assert!(err.is_too_large());
        prop_assert_eq!(err.hub_status(), 413);
        // Reserved members are not counted.
        let mut with_reserved = d.clone();
        with_reserved["$version"] = json!(12);
        with_reserved["$metadata"] = json!({"$lastUpdated": "2026-01-01T00:00:00.000Z"});
        prop_assert_eq!(section_size(&with_reserved), size);
    }

}

#[test]
fn integer_bounds_are_inclusive() {
    for ok in [MAX_INTEGER, -MAX_INTEGER, 0] {
        assert_eq!(
            validate_section(Section::Reported, &json!({ "i": ok })),
            Ok(())
        );
    }
    for bad in [MAX_INTEGER + 1, -MAX_INTEGER - 1] {
        assert!(validate_section(Section::Reported, &json!({ "i": bad })).is_err());
    }
}
