//! Twin validation and the merge-patch algebra on arbitrary JSON.
//!
//! Input: up to three concatenated JSON values `a b c` (whitespace-separated).
//! Invariants:
//! - no validator panics; every document a validator accepts round-trips through
//!   `serde_json` text unchanged;
//! - `validate_patched(a, b)` returns a section that `validate_section` accepts;
//! - `diff`: `applied(a, diff(a, b)) == b` for every `b` the hub accepts;
//! - `compose`: `applied(applied(c, a), b) == applied(c, compose(a, b))` when it composes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use twinbridge::twin::{self, Section};

fn round_trips(doc: &Value) {
    let text = serde_json::to_string(doc).expect("a Value always serialises");
    let back: Value = serde_json::from_str(&text).expect("serde_json reads its own output");
    assert_eq!(&back, doc, "accepted document does not round-trip: {text}");
}

fuzz_target!(|data: &[u8]| {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(a)) = values.next() else { return };
    let b = values.next().and_then(Result::ok);
    let c = values
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| Value::Object(Default::default()));

    let _ = twin::section_size(&a);
    let _ = twin::version_of(&a);
    let mut stripped = a.clone();
    let _ = twin::split_version(&mut stripped);
    twin::strip_reserved(&mut stripped);
    for section in [Section::Desired, Section::Reported] {
        match twin::validate_section(section, &a) {
            Ok(()) => round_trips(&a),
            Err(e) => {
                let _ = (
                    e.to_string(),
                    e.rejection(),
                    e.hub_status(),
                    e.is_too_large(),
                );
            }
        }
        if twin::validate_patch(section, &a).is_ok() {
            round_trips(&a);
        }
        if let Some(b) = &b {
            if let Ok(out) = twin::validate_patched(section, &a, b) {
                assert!(twin::validate_section(section, &out).is_ok());
                round_trips(&out);
            }
        }
    }
    if let Some(b) = &b {
        if twin::validate_section(Section::Reported, b).is_ok() {
            let d = twin::diff(&a, b);
            assert_eq!(
                &twin::applied(&a, &d),
                b,
                "diff does not patch a into b (diff {d})"
            );
            if a.is_object() && b.is_object() {
                assert!(d.is_object());
                assert_eq!(twin::is_noop(&d), a == *b);
            }
        }
        if let Ok(composite) = twin::compose(&a, b) {
            let sequence = twin::applied(&twin::applied(&c, &a), b);
            assert_eq!(
                twin::applied(&c, &composite),
                sequence,
                "compose({a}, {b}) = {composite} is not the sequence on {c}"
            );
        }
    }
});
