//! Property tests of desired `$version` ordering, `$version` extraction and Plug and Play
//! acknowledgements.

mod twin_gen;

use proptest::prelude::*;
use serde_json::{Value, json};
use twin_gen::{doc, doc_value};
use twinbridge::twin::{
    Ack, AckCode, MAX_INTEGER, Section, VersionError, VersionOrder, full_is_newer, set_version,
    split_version, validate_patch, validate_section, version_of,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn classify_matches_arithmetic(held in any::<u64>(), incoming in any::<u64>()) {
        let order = VersionOrder::classify(Some(held), incoming);
        let expected = if incoming < held {
            VersionOrder::Older
        } else if incoming == held {
            VersionOrder::Same
        } else if incoming - held == 1 {
            VersionOrder::Newer
        } else {
            VersionOrder::Gap
        };
        prop_assert_eq!(order, expected);
        // Exactly one action.
        let actions = [order.should_apply(), order.is_stale(), order.needs_full_get()];
        prop_assert_eq!(actions.iter().filter(|a| **a).count(), 1);
        prop_assert_eq!(full_is_newer(Some(held), incoming), incoming > held);
    }

    #[test]
    fn classify_near_the_held_version(held in 0u64..1000, delta in -3i64..=3) {
        let incoming = held.saturating_add_signed(delta);
        let order = VersionOrder::classify(Some(held), incoming);
        prop_assert_eq!(order.should_apply(), incoming == held + 1);
        prop_assert_eq!(order.is_stale(), incoming <= held);
        prop_assert_eq!(order.needs_full_get(), incoming > held + 1);
    }

    #[test]
    fn nothing_held_always_needs_a_get(incoming in any::<u64>()) {
        prop_assert_eq!(VersionOrder::classify(None, incoming), VersionOrder::Gap);
        prop_assert!(full_is_newer(None, incoming));
    }

    /// A device following the helpers over lost, duplicated and reordered notifications
    /// applies each version at most once, in order, never goes backwards, and ends up with the
    /// hub's document.
    #[test]
    fn a_device_following_the_helpers_converges(
        updates in proptest::collection::vec((twin_gen::key(), twin_gen::scalar()), 1..40),
        delivery in proptest::collection::vec((0usize..40, any::<bool>()), 0..80),
        start in 0u64..1000,
    ) {
        // The hub's desired history: version start+i holds the result of the first i updates.
        let mut history = vec![json!({})];
        for (key, value) in &updates {
            let mut next = history.last().expect("non-empty").clone();
            next[key] = value.clone();
            history.push(next);
        }
        let latest = start + updates.len() as u64;
        let patch_of = |version: u64| {
            let (key, value) = &updates[(version - start - 1) as usize];
            json!({ key.clone(): value.clone() })
        };
        // The device starts from a GET at `start`.
        let mut held = start;
        let mut doc = history[0].clone();
        let mut applied_versions = Vec::new();
        // Notifications: random versions from the history, some lost, some duplicated.
        for (pick, deliver) in delivery {
            if !deliver {
                continue;
            }
            let incoming = start + 1 + (pick % updates.len()) as u64;
            match VersionOrder::classify(Some(held), incoming) {
                VersionOrder::Newer => {
                    twinbridge::twin::apply(&mut doc, &patch_of(incoming));
                    applied_versions.push(incoming);
                    held = incoming;
                }
                VersionOrder::Same | VersionOrder::Older => {}
                VersionOrder::Gap => {
                    // A full GET returns some version at least as new as the notification.
                    prop_assert!(full_is_newer(Some(held), incoming));
                    held = incoming;
                    doc = history[(incoming - start) as usize].clone();
                }
            }
            prop_assert_eq!(&doc, &history[(held - start) as usize]);
        }
        prop_assert!(applied_versions.windows(2).all(|w| w[0] < w[1]));
        // Reconnect: a final GET at the latest version converges.
        if full_is_newer(Some(held), latest) {
            doc = history[updates.len()].clone();
        }
        prop_assert_eq!(&doc, history.last().expect("non-empty"));
    }

    #[test]
    fn split_version_round_trips(d in doc(), version in any::<u64>()) {
        let mut with = d.clone();
        set_version(&mut with, version);
        with["$metadata"] = json!({"$lastUpdated": "2026-01-01T00:00:00.000Z"});
        prop_assert_eq!(validate_section(Section::Desired, &with), Ok(()));
        prop_assert_eq!(version_of(&with), Ok(version));
        prop_assert_eq!(split_version(&mut with), Ok(version));
        prop_assert_eq!(&with, &d);
        let mut without = d.clone();
        prop_assert_eq!(split_version(&mut without), Err(VersionError::Missing));
        prop_assert_eq!(without, d);
    }

    #[test]
    fn ack_round_trips(
        value in doc_value(3),
        code in prop_oneof![Just(200u16), Just(400), Just(500), 0u16..1000],
        version in 0u64..=MAX_INTEGER.unsigned_abs(),
        description in proptest::option::of("[a-zA-Z0-9 .:é]{0,40}"),
        property in twin_gen::key(),
    ) {
        let ack = Ack::new(value, AckCode::from_u16(code), version, description);
        prop_assert_eq!(ack.code.as_u16(), code);
        let json = ack.to_json();
        prop_assert_eq!(Ack::parse(&json), Ok(ack.clone()));
        // The reported patch carrying it passes the hub rules.
        let patch = ack.to_patch(&property);
        prop_assert_eq!(validate_patch(Section::Reported, &patch), Ok(()));
        prop_assert_eq!(patch.get(&property), Some(&json));
    }

    #[test]
    fn ordinary_objects_are_not_acks(value in doc_value(3)) {
        if let Value::Object(map) = &value {
            let looks_like_ack = map.contains_key("value") && map.contains_key("ac") && map.contains_key("av");
            if !looks_like_ack {
                prop_assert!(Ack::parse(&value).is_err());
            }
        } else {
            prop_assert!(Ack::parse(&value).is_err());
        }
    }
}
