//! The agent's and the hub emulator's readings of IoT Hub's twin rules must agree.
//!
//! `twinbridge::twin` (what the agent checks before it sends) and `hub_emulator::rules` (what
//! the emulator enforces in the hub's place) were written independently from Microsoft's
//! "Understand and use device twins in IoT Hub". Both are fed the same patches on the same
//! current sections — valid ones, ones mutated to break exactly one rule, and ones on either
//! side of every limit — and must give the same verdict (accept, 400 or 413) and, on accept,
//! the same new section. The sync engine's assumption is checked too: the agent's `diff(a, b)`
//! is accepted by the emulator on `a` and yields `b`.
//!
//! Intended differences, excluded on purpose (each exclusion below names its tag):
//! - `MIN_INT`: the integer −4503599627370496, Microsoft's documented minimum. The emulator
//!   accepts it; the agent rejects it (its range is the symmetric ±4503599627370495, so it
//!   never produces it). The generators never produce it; [`documented_difference_min_int`]
//!   pins the difference.
//! - `RESERVED_OUTPUT`: the agent's `validate_patched` keeps the base's `$version` /
//!   `$metadata`; the emulator returns the section without `$` members (its caller owns
//!   them). New sections are compared without them.
//! - `DESIRED_VERSION`: a desired patch may carry a `$version` for the agent (desired
//!   notifications do); the emulator's `check_desired_patch` checks back-end PATCH bodies and
//!   refuses every `$` key. Desired patches with a numeric root `$version` are not compared;
//!   [`documented_difference_desired_version`] pins it.
//! - `NULL_SIZE`: `section_size` of a patch with `null` members: the agent counts a deletion
//!   as nothing, the emulator counts its key. The emulator only sizes patched sections, which
//!   hold no `null`, so no verdict depends on it; sizes are compared on null-free documents.
//! - `DOLLAR_SIZE`: `$`-prefixed root members other than `$version` / `$metadata`: the
//!   emulator's `section_size` skips them, the agent's counts them. Both refuse such keys in
//!   any patch; sizes are compared on documents without them.
//! - `INVALID_BASE`: a current section that itself breaks a rule (the hub never holds one):
//!   the agent re-checks the whole patched section, the emulator only its size. Current
//!   sections here are always valid, and both readings must accept them;
//!   [`documented_difference_invalid_base`] pins it.
//!
//! Not a difference, although the agent's and the emulator's docs word it differently: both
//! refuse the empty key and DEL (U+007F) in keys (`char::is_control` covers C0, DEL and C1);
//! [`empty_key_and_del_are_refused_by_both`] pins that.

#[path = "../../agent/tests/twin_gen/mod.rs"]
mod twin_gen;

use hub_emulator::rules as hub;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};
use twin_gen::{ensure_object, object_paths};
use twinbridge::twin::{
    self, MAX_DEPTH, MAX_INTEGER, MAX_SECTION_SIZE, MAX_STRING_BYTES, Path, Section,
};

// ---------------------------------------------------------------------------------------------
// The two readings, side by side

/// Accept with the new section (without `$` members), or the status the hub would answer.
type Verdict = Result<Value, u16>;

fn agent(section: Section, current: &Value, patch: &Value) -> (Verdict, String) {
    match twin::validate_patched(section, current, patch) {
        // RESERVED_OUTPUT: the emulator hands back the section without `$version`/`$metadata`.
        Ok(out) => (Ok(without_reserved(&out)), String::new()),
        Err(e) => (Err(e.hub_status()), e.to_string()),
    }
}

fn emulator(section: Section, current: &Value, patch: &Value) -> (Verdict, String) {
    let checked = match section {
        Section::Reported => hub::check_reported_patch(current, patch),
        Section::Desired => hub::check_desired_patch(current, patch),
    };
    match checked {
        Ok(out) => (Ok(out), String::new()),
        Err(e) => (Err(e.status), e.message),
    }
}

/// Both readings of one patch; fails the case unless they agree.
fn both(section: Section, current: &Value, patch: &Value) -> Result<Verdict, TestCaseError> {
    let (mine, my_why) = agent(section, current, patch);
    let (hubs, hub_why) = emulator(section, current, patch);
    prop_assert!(
        mine == hubs,
        "{} readings disagree\n current:  {}\n patch:    {}\n agent:    {} {}\n emulator: {} {}",
        section,
        show(current),
        show(patch),
        show_verdict(&mine),
        my_why,
        show_verdict(&hubs),
        hub_why,
    );
    Ok(mine)
}

fn without_reserved(section: &Value) -> Value {
    let mut out = section.clone();
    twin::strip_reserved(&mut out);
    out
}

fn show(value: &Value) -> String {
    const SHOWN: usize = 600;
    let text = value.to_string();
    if text.len() <= SHOWN {
        return text;
    }
    let cut = (0..=SHOWN)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

fn show_verdict(verdict: &Verdict) -> String {
    match verdict {
        Ok(out) => format!("accept {}", show(out)),
        Err(status) => format!("reject {status}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Generators: the agent's (`agent/tests/twin_gen`), with leaves both readings accept

/// A scalar both readings accept. (`MIN_INT` never appears: the range is symmetric.)
fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => select(vec![json!(1), json!(2), json!(true), json!(false), json!("x"), json!(""), json!(0.5)]),
        1 => (-MAX_INTEGER..=MAX_INTEGER).prop_map(Value::from),
        1 => prop_oneof![Just(MAX_INTEGER), Just(-MAX_INTEGER), Just(0)].prop_map(Value::from),
        1 => (-1e12f64..1e12).prop_map(Value::from),
        1 => "[a-z é😀\t\u{85}]{0,10}".prop_map(Value::from),
    ]
    .boxed()
}

/// A full section both readings accept: wide, keys colliding, sometimes as deep as allowed.
fn doc() -> BoxedStrategy<Value> {
    twin_gen::doc_of(scalar)
}

/// An object merge patch with deletions; mostly valid, sometimes deeper than allowed (then
/// both readings must refuse it alike).
fn patch() -> BoxedStrategy<Value> {
    twin_gen::patch_of(scalar)
}

// ---------------------------------------------------------------------------------------------
// Size filler: members that add an exact amount to a section's size

/// Characters the filler strings are made of: 1 unit (ASCII, Latin-1, CJK) or 2 units (an
/// emoji, outside the BMP), so the UTF-16 counting is exercised at the limit.
fn fill_char() -> impl Strategy<Value = char> {
    select(vec!['x', 'é', '中', '😀'])
}

/// Root members `{prefix}0`, `{prefix}1`, … whose size adds up to exactly `units`. The first
/// string starts with `controls` control characters (C0 and C1), which count nothing but take
/// bytes. (`~` keeps the keys out of the generators' key space.)
fn filler(prefix: &str, units: usize, ch: char, controls: usize) -> Map<String, Value> {
    let mut out = Map::new();
    let mut remaining = units;
    for i in 0.. {
        let key = format!("{prefix}{i}");
        assert!(remaining >= key.len(), "no filler of exactly {units} units");
        let body = remaining - key.len();
        let lead: String = if i == 0 {
            (0..controls)
                .map(|j| if j % 2 == 0 { '\u{1}' } else { '\u{85}' })
                .collect()
        } else {
            String::new()
        };
        let budget = MAX_STRING_BYTES - lead.len();
        if body <= budget {
            // The last member: ASCII makes the count exact.
            out.insert(key, Value::String(lead + &"x".repeat(body)));
            break;
        }
        // A full member of `ch`, leaving enough for at least one more key.
        let n = (budget / ch.len_utf8()).min((body - 100) / ch.len_utf16());
        remaining -= key.len() + n * ch.len_utf16();
        out.insert(key, Value::String(lead + &ch.to_string().repeat(n)));
    }
    out
}

/// Adds filler members to `doc` so that its size becomes `size`; false if it is already too
/// close to (or past) that size.
fn fill_to(doc: &mut Value, size: usize, ch: char, controls: usize) -> bool {
    let now = twin::section_size(doc);
    if size < now + 10 {
        return false;
    }
    let map = ensure_object(doc);
    for (key, value) in filler("~fill", size - now, ch, controls) {
        map.insert(key, value);
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Mutations: one rule broken (or one limit met exactly)

/// A change to a patch. `at` picks an object of the patch (root, nested, or inside an array,
/// at most 8 deep so that what is inserted stays within the depth limit).
#[derive(Debug, Clone)]
enum Mutation {
    /// The patch as generated.
    None,
    /// A key holding a forbidden character; `delete`: its value is `null`.
    KeyChar { at: usize, ch: char, delete: bool },
    /// The empty key.
    EmptyKey { at: usize, delete: bool },
    /// A key of exactly `bytes` UTF-8 bytes, mostly made of `ch`.
    KeyLen { at: usize, bytes: usize, ch: char },
    /// A string of exactly `bytes` UTF-8 bytes, mostly made of `ch`.
    StrLen { at: usize, bytes: usize, ch: char },
    /// A container at exactly `depth` under the root member `deep`; `arrays[i]`: level `i`
    /// is an array; `leaf` picks the innermost container.
    Depth {
        depth: usize,
        arrays: Vec<bool>,
        leaf: u8,
    },
    /// A number, as a member or an array element; `ok`: the hub accepts it.
    Number {
        at: usize,
        value: Value,
        ok: bool,
        in_array: bool,
    },
    /// `null` inside an array (directly or in an object or array in it).
    NullInArray { at: usize, shape: u8 },
    /// A `$` member at the patch root.
    Reserved { key: &'static str, value: Value },
    /// A patch that is not an object.
    NotObject(Value),
    /// Root filler so that the patched section's size is exactly `target`.
    Size {
        target: usize,
        ch: char,
        controls: usize,
    },
    /// Two broken rules: too large and a bad key. Malformed is answered first, by both.
    SizeAndKey { at: usize, target: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>;
    // `MIN_INT` (-MAX_INTEGER - 1) is left out: a documented difference.
    let numbers = vec![
        (json!(MAX_INTEGER), true),
        (json!(-MAX_INTEGER), true),
        (json!(0), true),
        (json!(MAX_INTEGER + 1), false),
        (json!(-MAX_INTEGER - 2), false),
        (json!(i64::MAX), false),
        (json!(i64::MIN), false),
        (json!(u64::MAX), false),
        (json!(1_u64 << 53), false),
        (json!(4_503_599_627_370_496.0_f64), true),
        (json!(-1e20), true),
        (json!(1e300), true),
        (json!(-0.0), true),
    ];
    let reserved = vec![
        ("$version", json!(3)),
        ("$version", json!("3")),
        ("$version", Value::Null),
        ("$metadata", json!({})),
        ("$foo", json!(1)),
    ];
    let not_objects = vec![
        Value::Null,
        json!(1),
        json!("x"),
        json!(true),
        json!([]),
        json!([{"a": 1}]),
    ];
    let forbidden = vec![
        '.', '$', ' ', '\u{0}', '\t', '\n', '\u{1f}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}',
    ];
    let size_target = prop_oneof![
        4 => (MAX_SECTION_SIZE - 3)..=(MAX_SECTION_SIZE + 3),
        1 => Just(MAX_SECTION_SIZE - 600),
        1 => Just(MAX_SECTION_SIZE + 600),
    ];
    prop_oneof![
        2 => Just(Mutation::None),
        3 => (at(), select(forbidden), any::<bool>())
            .prop_map(|(at, ch, delete)| Mutation::KeyChar { at, ch, delete }),
        1 => (at(), any::<bool>()).prop_map(|(at, delete)| Mutation::EmptyKey { at, delete }),
        2 => (at(), 1022_usize..=1027, select(vec!['k', 'é', '😀']))
            .prop_map(|(at, bytes, ch)| Mutation::KeyLen { at, bytes, ch }),
        2 => (at(), 4094_usize..=4099, select(vec!['x', 'é', '😀', '\u{1}']))
            .prop_map(|(at, bytes, ch)| Mutation::StrLen { at, bytes, ch }),
        2 => (8_usize..=12, vec(any::<bool>(), 12), 0_u8..4)
            .prop_map(|(depth, arrays, leaf)| Mutation::Depth { depth, arrays, leaf }),
        2 => (at(), select(numbers), any::<bool>())
            .prop_map(|(at, (value, ok), in_array)| Mutation::Number { at, value, ok, in_array }),
        1 => (at(), 0_u8..5).prop_map(|(at, shape)| Mutation::NullInArray { at, shape }),
        1 => select(reserved).prop_map(|(key, value)| Mutation::Reserved { key, value }),
        1 => select(not_objects).prop_map(Mutation::NotObject),
        3 => (size_target, fill_char(), 0_usize..20)
            .prop_map(|(target, ch, controls)| Mutation::Size { target, ch, controls }),
        1 => (at(), (MAX_SECTION_SIZE + 1)..=(MAX_SECTION_SIZE + 500))
            .prop_map(|(at, target)| Mutation::SizeAndKey { at, target }),
    ]
}

/// `bytes` UTF-8 bytes: as many `ch` as fit, padded with ASCII.
fn text_of(bytes: usize, ch: char) -> String {
    let n = bytes / ch.len_utf8();
    let mut out = ch.to_string().repeat(n);
    out.push_str(&"x".repeat(bytes - n * ch.len_utf8()));
    out
}

/// The object at the `at`-th eligible path of `patch`.
fn target(patch: &mut Value, at: usize) -> &mut Map<String, Value> {
    let paths: Vec<Path> = object_paths(patch)
        .into_iter()
        .filter(|p| p.len() <= MAX_DEPTH - 2)
        .collect();
    let path = &paths[at % paths.len()]; // the root is always eligible
    patch
        .pointer_mut(&path.to_pointer())
        .and_then(Value::as_object_mut)
        .expect("object_paths lists objects")
}

/// The verdict a mutation calls for on a patch that was accepted before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept,
    Reject(u16),
}

impl Expect {
    fn of(verdict: &Verdict) -> Self {
        match verdict {
            Ok(_) => Self::Accept,
            Err(status) => Self::Reject(*status),
        }
    }

    fn unless(ok: bool, status: u16) -> Self {
        if ok {
            Self::Accept
        } else {
            Self::Reject(status)
        }
    }
}

/// Applies `mutation` to `patch` (accepted on `current` with the new section `accepted`, if
/// it was); returns what the outcome must be when the unmutated patch was accepted, or `None`
/// when the mutation did not apply or calls for nothing in particular.
fn mutate(patch: &mut Value, mutation: &Mutation, accepted: Option<&Value>) -> Option<Expect> {
    const BAD: Expect = Expect::Reject(400);
    let value_or_null = |delete: bool| if delete { Value::Null } else { json!(1) };
    match mutation {
        Mutation::None => None,
        Mutation::KeyChar { at, ch, delete } => {
            target(patch, *at).insert(format!("a{ch}b"), value_or_null(*delete));
            Some(BAD)
        }
        Mutation::EmptyKey { at, delete } => {
            target(patch, *at).insert(String::new(), value_or_null(*delete));
            Some(BAD)
        }
        Mutation::KeyLen { at, bytes, ch } => {
            target(patch, *at).insert(text_of(*bytes, *ch), json!(true));
            Some(Expect::unless(*bytes <= 1024, 400))
        }
        Mutation::StrLen { at, bytes, ch } => {
            target(patch, *at).insert("long".into(), Value::String(text_of(*bytes, *ch)));
            Some(Expect::unless(*bytes <= MAX_STRING_BYTES, 400))
        }
        Mutation::Depth {
            depth,
            arrays,
            leaf,
        } => {
            let mut inner = match leaf {
                0 => json!({}),
                1 => json!({"leaf": 1}),
                2 => json!([]),
                _ => json!([true]),
            };
            // Levels depth-1 … 1 wrap the innermost container; `deep` sits at level 1.
            for level in (1..*depth).rev() {
                inner = if arrays[level] {
                    json!([inner])
                } else {
                    json!({ "d": inner })
                };
            }
            // The root member itself must be an object or array at depth 1.
            ensure_object(patch).insert("deep".into(), inner);
            Some(Expect::unless(*depth <= MAX_DEPTH, 400))
        }
        Mutation::Number {
            at,
            value,
            ok,
            in_array,
        } => {
            let value = if *in_array {
                json!(["n", value])
            } else {
                value.clone()
            };
            target(patch, *at).insert("num".into(), value);
            Some(Expect::unless(*ok, 400))
        }
        Mutation::NullInArray { at, shape } => {
            let value = match shape {
                0 => json!([1, null]),
                1 => json!([null]),
                2 => json!([[null]]),
                3 => json!([{"n": null}]),
                _ => json!([{"o": {"n": null}, "p": 1}]),
            };
            target(patch, *at).insert("arr".into(), value);
            Some(BAD)
        }
        Mutation::Reserved { key, value } => {
            ensure_object(patch).insert((*key).into(), value.clone());
            Some(BAD)
        }
        Mutation::NotObject(value) => {
            *patch = value.clone();
            Some(BAD)
        }
        Mutation::Size {
            target,
            ch,
            controls,
        } => {
            let now = twin::section_size(accepted?);
            let fill = filler("~grow", target.checked_sub(now + 10)? + 10, *ch, *controls);
            ensure_object(patch).extend(fill);
            Some(Expect::unless(*target <= MAX_SECTION_SIZE, 413))
        }
        Mutation::SizeAndKey { at, target: size } => {
            let now = twin::section_size(accepted?);
            let fill = filler("~grow", size.checked_sub(now + 10)? + 10, 'x', 0);
            ensure_object(patch).extend(fill);
            target(patch, *at).insert("bad key".into(), json!(1));
            Some(BAD)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One agreement case

#[derive(Debug, Clone)]
struct Case {
    current: Value,
    patch: Value,
    mutation: Mutation,
    /// `$version` / `$metadata` on the current section, as the hub returns it.
    version: Option<u64>,
    /// Fill the current section to `MAX_SECTION_SIZE - slack` with this character.
    near_full: Option<(usize, char)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        doc(),
        patch(),
        mutation(),
        proptest::option::of(0_u64..1000),
        proptest::option::weighted(0.2, (0_usize..120, fill_char())),
    )
        .prop_map(|(current, patch, mutation, version, near_full)| Case {
            current,
            patch,
            mutation,
            version,
            near_full,
        })
}

/// What a case came to, for the distribution guard.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    bad: usize,
    too_large: usize,
    expectations_checked: usize,
}

impl Tally {
    fn count(&mut self, verdict: &Verdict) {
        match verdict {
            Ok(_) => self.accepted += 1,
            Err(413) => self.too_large += 1,
            Err(_) => self.bad += 1,
        }
    }
}

fn run_case(case: &Case, tally: &mut Tally) -> Result<(), TestCaseError> {
    let mut current = case.current.clone();
    if let Some((slack, ch)) = case.near_full {
        prop_assert!(fill_to(
            &mut current,
            MAX_SECTION_SIZE - slack,
            ch,
            slack % 7
        ));
    }
    let bare = current.clone();
    if let Some(version) = case.version {
        let map = ensure_object(&mut current);
        map.insert("$version".into(), json!(version));
        map.insert(
            "$metadata".into(),
            json!({"$lastUpdated": "2026-11-26T09:00:00Z", "a": {"$lastUpdated": "2026-11-26T09:00:00Z"}}),
        );
    }
    for section in [Section::Reported, Section::Desired] {
        // INVALID_BASE: the current section must be one the hub could hold, by both readings.
        prop_assert_eq!(twin::validate_section(section, &current), Ok(()));
        let (fresh, why) = emulator(section, &json!({}), &bare);
        prop_assert_eq!(
            fresh,
            Ok(bare.clone()),
            "emulator refuses a valid section: {}",
            why
        );
        prop_assert_eq!(twin::section_size(&current), hub::section_size(&current));

        let before = both(section, &current, &case.patch)?;
        let mut mutated = case.patch.clone();
        let expect = mutate(&mut mutated, &case.mutation, before.as_ref().ok());
        // DESIRED_VERSION: the agent takes a desired notification's `$version`; the
        // emulator's back-end PATCH does not.
        if section == Section::Desired && mutated.get("$version").is_some_and(Value::is_u64) {
            continue;
        }
        let after = both(section, &current, &mutated)?;
        tally.count(&after);
        // A current section filled near the limit may make any addition a 413: there only
        // the refusals of malformed patches (checked before size) are certain.
        let expect = expect.filter(|e| case.near_full.is_none() || *e != Expect::Accept);
        if let (Ok(_), Some(expect)) = (&before, expect) {
            tally.expectations_checked += 1;
            prop_assert_eq!(
                Expect::of(&after),
                expect,
                "{} {:?}: patch {}",
                section,
                case.mutation,
                show(&mutated)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 320, ..ProptestConfig::default() })]

    /// Same verdict, same status class, same new section, for valid and mutated patches.
    #[test]
    fn both_readings_agree_on_patches(case in case()) {
        run_case(&case, &mut Tally::default())?;
    }

    /// The agent's `diff(a, b)` is what the sync engine sends: the emulator must accept it on
    /// `a` and arrive at `b` — also when `a`, `b` or both are filled up to the size limit.
    #[test]
    fn emulator_accepts_agent_diffs(
        a in doc(),
        other in doc(),
        patch in patch(),
        related in any::<bool>(),
        fill_a in proptest::option::weighted(0.3, (0_usize..200, fill_char())),
        fill_b in proptest::option::weighted(0.3, (0_usize..200, fill_char())),
    ) {
        let mut b = other;
        if related && let (Ok(next), _) = agent(Section::Reported, &a, &patch) {
            b = next;
        }
        let mut a = a;
        if let Some((slack, ch)) = fill_a {
            prop_assert!(fill_to(&mut a, MAX_SECTION_SIZE - slack, ch, slack % 5));
        }
        if let Some((slack, ch)) = fill_b {
            prop_assert!(fill_to(&mut b, MAX_SECTION_SIZE - slack, ch, 0));
        }
        for doc in [&a, &b] {
            prop_assert_eq!(twin::validate_section(Section::Reported, doc), Ok(()));
            prop_assert_eq!(twin::section_size(doc), hub::section_size(doc));
        }
        let d = twin::diff(&a, &b);
        let (hub_out, why) = emulator(Section::Reported, &a, &d);
        prop_assert!(
            hub_out.as_ref() == Ok(&b),
            "emulator on diff: {} {}\n a: {}\n b: {}\n diff: {}",
            show_verdict(&hub_out), why, show(&a), show(&b), show(&d)
        );
        prop_assert_eq!(agent(Section::Reported, &a, &d).0, Ok(b));
    }

    /// Both count a section's size alike, on documents full of what counting can get wrong:
    /// C0/DEL/C1 control characters, characters outside the BMP, nested `$` keys, `$version`
    /// and `$metadata` at the root.
    #[test]
    fn section_sizes_agree(doc in wild_doc(), version in proptest::option::of(any::<u64>())) {
        let mut doc = doc;
        let map = ensure_object(&mut doc);
        // DOLLAR_SIZE: no other `$` member at the root (a section never holds one).
        map.retain(|key, _| !key.starts_with('$'));
        if let Some(version) = version {
            map.insert("$version".into(), json!(version));
            map.insert("$metadata".into(), json!({"$lastUpdated": "2026-11-26T09:00:00Z", "x": 1}));
        }
        prop_assert_eq!(twin::section_size(&doc), hub::section_size(&doc), "{}", show(&doc));
    }
}

/// Text with the characters size counting can get wrong.
fn wild_text() -> impl Strategy<Value = String> {
    use proptest::char::range;
    vec(
        prop_oneof![
            4 => range('a', 'z'),
            1 => range('\u{0}', '\u{1f}'),
            1 => Just('\u{7f}'),
            1 => range('\u{80}', '\u{9f}'),
            1 => range('\u{a0}', '\u{2fff}'),
            1 => range('\u{e000}', '\u{ffff}'),
            1 => range('\u{10000}', '\u{10ffff}'),
            1 => Just('$'),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// `NULL_SIZE`: no `null` anywhere (sections hold none).
fn wild_doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        wild_text().prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ];
    let tree = leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            btree_map(wild_text(), inner.clone(), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            vec(inner, 0..5).prop_map(Value::Array),
        ]
    });
    btree_map(wild_text(), tree, 0..8).prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Guards against generators that silently stop producing the interesting cases: over a
/// fixed sample, every verdict occurs often and the mutations' expectations are checked.
#[test]
fn agreement_cases_cover_every_verdict() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut tally = Tally::default();
    for _ in 0..200 {
        let case = strategy
            .new_tree(&mut runner)
            .expect("the strategy generates")
            .current();
        run_case(&case, &mut tally).expect("the readings agree");
    }
    // Two sections per case.
    assert!(tally.accepted >= 60, "{tally:?}");
    assert!(tally.bad >= 60, "{tally:?}");
    assert!(tally.too_large >= 15, "{tally:?}");
    assert!(tally.expectations_checked >= 150, "{tally:?}");
}

// ---------------------------------------------------------------------------------------------
// The intended differences, pinned: if one side changes, update the module docs and this test

/// `MIN_INT`: Microsoft documents −4503599627370496 as the minimum. The emulator follows the
/// documentation; the agent keeps to the symmetric range and refuses it.
#[test]
fn documented_difference_min_int() {
    let patch = json!({"i": -MAX_INTEGER - 1});
    assert_eq!(
        emulator(Section::Reported, &json!({}), &patch).0,
        Ok(patch.clone())
    );
    assert_eq!(agent(Section::Reported, &json!({}), &patch).0, Err(400));
    // One below is refused by both.
    let below = json!({"i": -MAX_INTEGER - 2});
    assert_eq!(emulator(Section::Reported, &json!({}), &below).0, Err(400));
    assert_eq!(agent(Section::Reported, &json!({}), &below).0, Err(400));
}

/// `DESIRED_VERSION`: a desired notification carries `$version`, which the agent's desired
/// patch check allows; a back-end PATCH body may not hold `$` keys at the emulator.
#[test]
fn documented_difference_desired_version() {
    let patch = json!({"a": 1, "$version": 5});
    assert_eq!(
        agent(Section::Desired, &json!({}), &patch).0,
        Ok(json!({"a": 1}))
    );
    assert_eq!(emulator(Section::Desired, &json!({}), &patch).0, Err(400));
    // In a reported patch both refuse it.
    assert_eq!(agent(Section::Reported, &json!({}), &patch).0, Err(400));
    assert_eq!(emulator(Section::Reported, &json!({}), &patch).0, Err(400));
}

/// `INVALID_BASE`, pinned: on a current section the hub could never hold, the agent refuses
/// any patch (it checks the whole result), the emulator checks only the patch and the size.
#[test]
fn documented_difference_invalid_base() {
    let current = json!({"a.b": 1});
    let patch = json!({"c": 1});
    assert_eq!(agent(Section::Reported, &current, &patch).0, Err(400));
    assert_eq!(
        emulator(Section::Reported, &current, &patch).0,
        Ok(json!({"a.b": 1, "c": 1}))
    );
}

/// Not a difference: both refuse the empty key and DEL, also as deletions and nested.
#[test]
fn empty_key_and_del_are_refused_by_both() {
    for patch in [
        json!({"": 1}),
        json!({"": null}),
        json!({"a": {"": true}}),
        json!({"a\u{7f}": 1}),
        json!({"a\u{7f}": null}),
        json!({"x": [{"\u{7f}": 1}]}),
    ] {
        for section in [Section::Reported, Section::Desired] {
            assert_eq!(agent(section, &json!({}), &patch).0, Err(400), "{patch}");
            assert_eq!(emulator(section, &json!({}), &patch).0, Err(400), "{patch}");
        }
    }
}

/// `NULL_SIZE` and `DOLLAR_SIZE`, pinned: the two `section_size`s differ only on documents no
/// section holds.
#[test]
fn section_sizes_differ_only_off_the_sections() {
    let with_null = json!({"abc": null, "d": 1});
    assert_eq!(twin::section_size(&with_null), 1 + 8);
    assert_eq!(hub::section_size(&with_null), 3 + 1 + 8);
    let with_dollar = json!({"$other": 1, "d": 1});
    assert_eq!(twin::section_size(&with_dollar), 6 + 8 + 1 + 8);
    assert_eq!(hub::section_size(&with_dollar), 1 + 8);
}

/// The size limit, exactly: filled to 32768 both accept, one more unit and both answer 413 —
/// whichever character fills it, with control characters that count nothing.
#[test]
fn size_limit_boundary_is_shared() {
    for ch in ['x', 'é', '中', '😀'] {
        for (size, expected) in [
            (MAX_SECTION_SIZE, Expect::Accept),
            (MAX_SECTION_SIZE + 1, Expect::Reject(413)),
        ] {
            let patch = Value::Object(filler("~grow", size, ch, 9));
            assert_eq!(twin::section_size(&patch), size);
            assert_eq!(hub::section_size(&patch), size);
            for section in [Section::Reported, Section::Desired] {
                let (mine, _) = agent(section, &json!({}), &patch);
                let (hubs, _) = emulator(section, &json!({}), &patch);
                assert_eq!(Expect::of(&mine), expected, "{section} {ch} {size}");
                assert_eq!(mine, hubs, "{section} {ch} {size}");
            }
        }
    }
}
