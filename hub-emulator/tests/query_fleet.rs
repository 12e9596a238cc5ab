//! The IoT Hub query subset against a fixed fleet of 13 twins (`tests/fixtures/fleet.json`):
//! every form the service API offers, parse errors with their positions, and properties.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use hub_emulator::query::{MAX_QUERY_CHARS, Query};
use proptest::prelude::*;
use serde_json::{Value, json};

static FLEET: LazyLock<Vec<Value>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("fixtures/fleet.json")).expect("fleet fixture is JSON")
});

fn run(q: &str) -> Vec<Value> {
    Query::parse(q)
        .unwrap_or_else(|e| panic!("{q:?} should parse: {e}"))
        .execute(&FLEET)
}

/// The device ids a `SELECT *` query returns, sorted.
fn ids(q: &str) -> Vec<String> {
    let mut ids: Vec<String> = run(q)
        .iter()
        .map(|t| {
            t["deviceId"]
                .as_str()
                .expect("a twin has a deviceId")
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

fn where_ids(cond: &str) -> Vec<String> {
    ids(&format!("SELECT * FROM devices WHERE {cond}"))
}

fn set(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

fn rows_as_set(rows: Vec<Value>) -> BTreeSet<String> {
    rows.into_iter().map(|r| r.to_string()).collect()
}

#[test]
fn fixture_has_a_dozen_twins() {
    assert_eq!(FLEET.len(), 13);
}

#[test]
fn select_star_returns_every_twin_unchanged() {
    assert_eq!(run("SELECT * FROM devices"), *FLEET);
}

#[test]
fn equality_on_tags_is_case_sensitive_for_values() {
    assert_eq!(
        where_ids("tags.location.region = 'US'"),
        set(&["meter-01", "meter-02", "meter-03", "sensor-a", "sensor-b"])
    );
}

#[test]
fn microsoft_example_and_with_numeric_comparison() {
    assert_eq!(
        where_ids(
            "tags.location.region = 'US' AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60"
        ),
        set(&["meter-01", "meter-02"])
    );
}

#[test]
fn not_equal_excludes_devices_without_the_property() {
    let expected = set(&[
        "boiler-01",
        "boiler-02",
        "boiler-03",
        "pump-02",
        "Sensor-C",
        "räder-1",
    ]);
    assert_eq!(where_ids("tags.location.region != 'US'"), expected);
    assert_eq!(where_ids("tags.location.region <> 'US'"), expected);
}

#[test]
fn ordering_operators_compare_numbers_only_with_numbers() {
    let temp = "properties.reported.temperature";
    assert_eq!(
        where_ids(&format!("{temp} > 20")),
        set(&[
            "meter-01",
            "meter-03",
            "boiler-01",
            "boiler-02",
            "boiler-03"
        ])
    );
    assert_eq!(
        where_ids(&format!("{temp} >= 25")),
        set(&["meter-03", "boiler-01", "boiler-02", "boiler-03"])
    );
    assert_eq!(where_ids(&format!("{temp} < 0")), set(&["sensor-a"]));
    assert_eq!(
        where_ids(&format!("{temp} <= 0")),
        set(&["sensor-a", "sensor-b"])
    );
    assert_eq!(where_ids(&format!("{temp} < -1")), set(&["sensor-a"]));
    assert_eq!(where_ids(&format!("{temp} = -5")), set(&["sensor-a"]));
    assert_eq!(where_ids(&format!("{temp} = 21.5")), set(&["meter-01"]));
    // 19 and 19.0 are the same number.
    assert_eq!(where_ids(&format!("{temp} = 19.0")), set(&["meter-02"]));
    assert_eq!(where_ids(&format!("{temp} = 1.9e1")), set(&["meter-02"]));
    // A string is not comparable with a number: Sensor-C ("hot") is in neither result.
    assert!(!where_ids(&format!("{temp} > 0")).contains(&"Sensor-C".to_owned()));
    assert!(!where_ids(&format!("{temp} <= 0")).contains(&"Sensor-C".to_owned()));
    assert_eq!(where_ids(&format!("{temp} > 'a'")), set(&["Sensor-C"]));
}

#[test]
fn or_not_and_parentheses() {
    assert_eq!(
        where_ids("tags.kind = 'boiler' OR tags.kind = 'gateway'"),
        set(&["boiler-01", "boiler-02", "boiler-03", "gw-plant7-01"])
    );
    // NOT of an undefined comparison is undefined: devices without a kind stay out.
    assert_eq!(
        where_ids("NOT (tags.kind = 'meter' OR tags.kind = 'sensor')"),
        set(&["boiler-01", "boiler-02", "boiler-03", "gw-plant7-01"])
    );
    // AND binds tighter than OR.
    assert_eq!(
        where_ids("tags.kind = 'meter' AND tags.location.region = 'EU' OR tags.kind = 'gateway'"),
        set(&["räder-1", "gw-plant7-01"])
    );
    assert_eq!(
        where_ids("tags.kind = 'meter' AND (tags.location.region = 'EU' OR tags.kind = 'gateway')"),
        set(&["räder-1"])
    );
    // NOT applies to the comparison, then AND.
    assert_eq!(
        where_ids("NOT tags.kind = 'meter' AND connectionState = 'Connected'"),
        set(&["boiler-01", "gw-plant7-01", "sensor-b"])
    );
    assert_eq!(
        where_ids("NOT NOT tags.kind = 'gateway'"),
        set(&["gw-plant7-01"])
    );
}

#[test]
fn is_defined() {
    assert_eq!(
        where_ids("IS_DEFINED(properties.reported.telemetryConfig.status)"),
        set(&[
            "meter-01",
            "meter-02",
            "meter-03",
            "boiler-01",
            "boiler-02",
            "pump-02",
            "räder-1"
        ])
    );
    assert_eq!(
        where_ids("NOT is_defined(tags.location)"),
        set(&["pump-01", "gw-plant7-01"])
    );
    // null is a value: every twin defines x509Thumbprint.primaryThumbprint as null.
    assert_eq!(
        where_ids("IS_DEFINED(x509Thumbprint.primaryThumbprint)").len(),
        13
    );
}

#[test]
fn connection_state_device_id_and_case_insensitive_system_names() {
    assert_eq!(
        where_ids("connectionState = 'Connected'"),
        set(&[
            "meter-01",
            "meter-02",
            "boiler-01",
            "pump-02",
            "gw-plant7-01",
            "sensor-b"
        ])
    );
    assert_eq!(where_ids("deviceId = 'meter-01'"), set(&["meter-01"]));
    assert_eq!(where_ids("DeviceId = 'meter-01'"), set(&["meter-01"]));
    assert_eq!(where_ids("deviceId = 'räder-1'"), set(&["räder-1"]));
    assert_eq!(where_ids("status = 'disabled'"), set(&["pump-01"]));
    // Below the top level, names are case-sensitive.
    assert!(where_ids("Tags.Kind = 'meter'").is_empty());
}

#[test]
fn boolean_and_null_literals() {
    assert_eq!(
        where_ids("properties.reported.alarm = true"),
        set(&["sensor-a"])
    );
    assert_eq!(
        where_ids("properties.reported.alarm = FALSE"),
        set(&["sensor-b"])
    );
    // Sensor-C's alarm is the string "yes": not comparable with a Boolean.
    assert_eq!(
        where_ids("properties.reported.alarm != true"),
        set(&["sensor-b"])
    );
    assert_eq!(
        where_ids("x509Thumbprint.primaryThumbprint = null").len(),
        13
    );
    assert!(where_ids("properties.reported.temperature = null").is_empty());
    // A bare Boolean property is a condition.
    assert_eq!(
        where_ids("properties.reported.gateway.online"),
        set(&["gw-plant7-01"])
    );
    // Only Boolean true selects: a number or a string is not true.
    assert!(where_ids("properties.reported.temperature").is_empty());
}

#[test]
fn in_and_nin() {
    assert_eq!(
        where_ids("properties.reported.connectivity.type IN ['wired', 'wifi']"),
        set(&[
            "meter-02",
            "meter-03",
            "boiler-02",
            "boiler-03",
            "gw-plant7-01"
        ])
    );
    assert_eq!(
        where_ids("properties.reported.connectivity.type NIN ['wired', 'wifi']"),
        set(&["meter-01"])
    );
    assert_eq!(
        where_ids("deviceId in ['pump-01', 'pump-02', 'nobody']"),
        set(&["pump-01", "pump-02"])
    );
}

#[test]
fn keywords_are_case_insensitive() {
    assert_eq!(
        ids("select * from DEVICES where tags.kind = 'pump' Or deviceId = 'pump-01'"),
        set(&["pump-01"])
    );
    assert_eq!(ids("SeLeCt * FrOm devices"), ids("SELECT * FROM devices"));
}

#[test]
fn string_literals_and_escapes() {
    assert_eq!(where_ids(r"tags.note = 'O\'Brien\'s'"), set(&["boiler-01"]));
    assert_eq!(where_ids(r#"tags.note = "O'Brien's""#), set(&["boiler-01"]));
    assert_eq!(
        where_ids(r"tags.location.plant = 'Z\u00fcrich'"),
        set(&["räder-1"])
    );
    assert_eq!(
        where_ids("tags.location.plant = 'Zürich'"),
        set(&["räder-1"])
    );
}

#[test]
fn versions_and_metadata_are_queryable() {
    assert_eq!(
        where_ids("properties.desired.$version > 2"),
        set(&["meter-01", "boiler-02", "pump-02"])
    );
    assert_eq!(
        where_ids("properties.reported.$version = 9"),
        set(&["boiler-01"])
    );
}

#[test]
fn count_without_grouping() {
    assert_eq!(
        run("SELECT COUNT() AS total FROM devices"),
        vec![json!({"total": 13})]
    );
    assert_eq!(
        run("SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'"),
        vec![json!({"n": 6})]
    );
    assert_eq!(
        run("SELECT COUNT() AS n FROM devices WHERE deviceId = 'nobody'"),
        vec![json!({"n": 0})]
    );
}

#[test]
fn count_grouped_by_one_field() {
    let expected = rows_as_set(vec![
        json!({"status": "Success", "numberOfDevices": 4}),
        json!({"status": "Pending", "numberOfDevices": 2}),
        json!({"status": "Error", "numberOfDevices": 1}),
        // Devices without the property form one group without the field.
        json!({"numberOfDevices": 6}),
    ]);
    // The short form: the grouped field appears under its leaf name.
    assert_eq!(
        rows_as_set(run(
            "SELECT COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status"
        )),
        expected
    );
    // Microsoft's documented form with an explicit projection and alias.
    assert_eq!(
        rows_as_set(run(
            "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices \
             FROM devices GROUP BY properties.reported.telemetryConfig.status"
        )),
        expected
    );
    assert_eq!(
        rows_as_set(run(
            "SELECT COUNT() AS n FROM devices GROUP BY connectionState"
        )),
        rows_as_set(vec![
            json!({"connectionState": "Connected", "n": 6}),
            json!({"connectionState": "Disconnected", "n": 7}),
        ])
    );
    assert_eq!(
        rows_as_set(run(
            "SELECT COUNT() AS n FROM devices WHERE tags.kind = 'meter' GROUP BY tags.location.region"
        )),
        rows_as_set(vec![
            json!({"region": "US", "n": 3}),
            json!({"region": "EU", "n": 1})
        ])
    );
}

#[test]
fn other_aggregates() {
    assert_eq!(
        run("SELECT MAX(properties.reported.temperature) AS hottest, \
             MIN(properties.reported.temperature) AS coldest, COUNT() AS n FROM devices"),
        vec![json!({"hottest": 70, "coldest": -5, "n": 13})]
    );
    assert_eq!(
        run(
            "SELECT SUM(properties.reported.humidity) AS h, AVG(properties.reported.humidity) AS a FROM devices"
        ),
        vec![json!({"h": 95.5, "a": 47.75})]
    );
}

#[test]
fn projection_of_system_properties() {
    // Microsoft's example: names come back as the twin spells them.
    let rows = run("SELECT DeviceId, LastActivityTime FROM devices \
         WHERE status = 'enabled' AND connectionState = 'Disconnected'");
    let got: BTreeSet<String> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.as_object().unwrap().len(), 2, "{r}");
            assert!(r["lastActivityTime"].is_string());
            r["deviceId"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = [
        "meter-03",
        "boiler-02",
        "boiler-03",
        "sensor-a",
        "Sensor-C",
        "räder-1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(got, expected);
    assert_eq!(
        run("SELECT deviceId AS id, tags.kind FROM devices WHERE deviceId = 'meter-01'"),
        vec![json!({"id": "meter-01", "kind": "meter"})]
    );
}

#[test]
fn top_limits_rows() {
    let rows = run("SELECT TOP 3 * FROM devices");
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["meter-01", "meter-02", "meter-03"]);
}

#[test]
fn bracket_paths_functions_and_path_comparisons() {
    assert_eq!(where_ids("tags['weird-key']['a-b'] = 1"), set(&["räder-1"]));
    assert_eq!(where_ids("tags.zones[1] = 'b'"), set(&["gw-plant7-01"]));
    assert_eq!(
        where_ids("STARTS_WITH(deviceId, 'boiler')"),
        set(&["boiler-01", "boiler-02", "boiler-03"])
    );
    assert_eq!(where_ids("ENDS_WITH(deviceId, '-1')"), set(&["räder-1"]));
    assert_eq!(
        where_ids(
            "properties.desired.telemetryConfig.sendFrequencyInSecs = \
             properties.reported.telemetryConfig.sendFrequencyInSecs"
        ),
        set(&["meter-01", "meter-03"])
    );
    assert_eq!(
        where_ids("properties.reported.gateway.devices = 0x3"),
        set(&["gw-plant7-01"])
    );
    assert_eq!(
        where_ids("IS_STRING(properties.reported.temperature)"),
        set(&["Sensor-C"])
    );
    // Objects are not comparable (only primitives are).
    assert!(where_ids("properties.reported.gateway = properties.reported.gateway").is_empty());
}

// ----- parse errors -----------------------------------------------------------------------------

fn error_at(q: &str) -> (usize, String) {
    let e = Query::parse(q).expect_err(q);
    assert!(e.position <= q.chars().count(), "{q:?}: {e}");
    (e.position, e.message)
}

/// Character offset of the first occurrence of `needle` in `q`.
fn char_pos(q: &str, needle: &str) -> usize {
    q[..q.find(needle).expect("needle in query")]
        .chars()
        .count()
}

#[test]
fn parse_errors_point_at_the_offending_token() {
    let cases: &[(&str, &str)] = &[
        ("SELECT * FORM devices", "FORM"),
        ("SELECT * FROM devices WHERE tags.x == 1", "= 1"),
        ("SELECT * FROM devices.modules", ".modules"),
        ("SELECT * FROM twins", "twins"),
        (
            "SELECT * FROM devices WHERE tags.x = 1 GROUP BY tags.y",
            "*",
        ),
        ("SELECT * FROM devices WHERE tags.x = 'abc", "'abc"),
        ("SELECT * FROM devices WHERE FOO(tags.x)", "FOO"),
        ("SELECT * FROM devices WHERE tags.a + 1 = 2", "+"),
        ("SELECT * FROM devices WHERE tags.a = 1 AND AND", "AND AND"),
        ("SELECT * FROM devices WHERE tags.ä = 'ö' AND #", "#"),
        ("SELECT * FROM devices WHERE deviceId IN 'x'", "'x'"),
        ("SELECT * FROM devices WHERE tags.x = 1 extra", "extra"),
        ("SELECT TOP x * FROM devices", "x *"),
        ("SELECT * FROM devices WHERE tags.x = 12abc", "12abc"),
        ("SELECT * FROM devices WHERE tags.x = 'a\\q'", "\\q"),
        ("SELECT FROM devices", "FROM"),
        ("SELECT COUNT(), deviceId FROM devices", "deviceId"),
        (
            "SELECT tags.x, COUNT() FROM devices GROUP BY tags.y",
            "tags.x",
        ),
        ("SELECT * FROM devices WHERE IS_DEFINED(a, b)", "IS_DEFINED"),
        ("SELECT * FROM devices WHERE tags.", "tags."),
    ];
    for (q, at) in cases {
        let expected = match *at {
            "= 1" => char_pos(q, "== 1") + 1,
            "AND AND" => char_pos(q, "AND AND") + 4,
            "x *" => char_pos(q, "x *"),
            ".modules" => char_pos(q, ".modules"),
            "tags." => q.chars().count(),
            "\\q" => char_pos(q, "\\q"),
            other => char_pos(q, other),
        };
        let (pos, msg) = error_at(q);
        assert_eq!(pos, expected, "{q:?}: {msg}");
    }
}

#[test]
fn errors_at_the_end_point_past_the_last_character() {
    for q in [
        "SELECT * FROM devices WHERE",
        "SELECT * FROM devices WHERE (tags.a = 1",
        "SELECT * FROM",
        "SELECT",
        "SELECT * FROM devices GROUP BY",
        "SELECT * FROM devices WHERE tags.x IN ['a',",
    ] {
        assert_eq!(error_at(q).0, q.chars().count(), "{q:?}");
    }
    assert_eq!(error_at("").0, 0);
    assert_eq!(error_at("   ").0, 3);
}

#[test]
fn error_messages_say_what_was_expected() {
    let (_, msg) = error_at("SELECT * FORM devices");
    assert!(msg.contains("FROM") && msg.contains("FORM"), "{msg}");
    let (_, msg) = error_at("SELECT * FROM devices WHERE tags.x = 'abc");
    assert!(msg.contains("unterminated"), "{msg}");
}

#[test]
fn queries_longer_than_8192_characters_are_refused() {
    let pad = " ".repeat(MAX_QUERY_CHARS);
    assert_eq!(
        error_at(&format!("SELECT * FROM devices{pad}")).0,
        MAX_QUERY_CHARS
    );
    let fits = format!("SELECT * FROM devices{}", " ".repeat(MAX_QUERY_CHARS - 21));
    assert!(Query::parse(&fits).is_ok());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let q = format!(
        "SELECT * FROM devices WHERE {}tags.a = 1{}",
        "(".repeat(4000),
        ")".repeat(4000)
    );
    let (_, msg) = error_at(&q);
    assert!(msg.contains("nested"), "{msg}");
    let q = format!(
        "SELECT * FROM devices WHERE {}tags.a = 1",
        "NOT ".repeat(2000)
    );
    error_at(&q);
    // Within the limit it works.
    let q = format!(
        "SELECT * FROM devices WHERE {}deviceId = 'pump-01'{}",
        "(".repeat(30),
        ")".repeat(30)
    );
    assert_eq!(ids(&q), set(&["pump-01"]));
}

// ----- properties -------------------------------------------------------------------------------

const TOKENS: &[&str] = &[
    "SELECT",
    "*",
    "FROM",
    "devices",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "(",
    ")",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "IN",
    "NIN",
    "[",
    "]",
    ",",
    ".",
    "'x'",
    "\"y",
    "12",
    "-3.5",
    "0x1f",
    "true",
    "null",
    "undefined",
    "tags",
    "properties",
    "reported",
    "IS_DEFINED",
    "COUNT",
    "()",
    "AS",
    "n",
    "GROUP",
    "BY",
    "TOP",
    "$version",
    "'",
    "\\",
    "€",
    "+",
    "1e",
    ";",
];

fn token_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..30).prop_map(|t| t.join(" "))
}

/// A random WHERE condition over the fleet's properties.
fn condition() -> impl Strategy<Value = String> {
    let path = proptest::sample::select(vec![
        "deviceId",
        "connectionState",
        "tags.kind",
        "tags.location.region",
        "properties.reported.temperature",
        "properties.reported.alarm",
        "properties.reported.telemetryConfig.status",
        "properties.desired.$version",
        "tags.missing",
    ]);
    let constant = proptest::sample::select(vec![
        "'US'",
        "'meter'",
        "'Connected'",
        "'Success'",
        "0",
        "20",
        "-5",
        "21.5",
        "true",
        "false",
        "null",
        "'hot'",
        "3",
    ]);
    let op = proptest::sample::select(vec!["=", "!=", "<>", "<", "<=", ">", ">="]);
    let atom = prop_oneof![
        (path.clone(), op, constant).prop_map(|(p, o, c)| format!("{p} {o} {c}")),
        path.prop_map(|p| format!("IS_DEFINED({p})")),
    ];
    atom.prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} OR {b})")),
            inner.prop_map(|a| format!("NOT ({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(q in ".{0,200}") {
        if let Err(e) = Query::parse(&q) {
            prop_assert!(e.position <= q.chars().count());
        }
    }

    #[test]
    fn parse_never_panics_on_token_soup(q in token_soup()) {
        match Query::parse(&q) {
            Ok(parsed) => { let _ = parsed.execute(&FLEET); }
            Err(e) => prop_assert!(e.position <= q.chars().count()),
        }
    }

    /// AND is intersection, OR is union, and a condition and its negation never both select
    /// a device (three-valued logic: some devices may be in neither).
    #[test]
    fn boolean_algebra_over_the_fleet(a in condition(), b in condition()) {
        let sa: BTreeSet<String> = where_ids(&a).into_iter().collect();
        let sb: BTreeSet<String> = where_ids(&b).into_iter().collect();
        let and: BTreeSet<String> = where_ids(&format!("({a}) AND ({b})")).into_iter().collect();
        let or: BTreeSet<String> = where_ids(&format!("({a}) OR ({b})")).into_iter().collect();
        let not_a: BTreeSet<String> = where_ids(&format!("NOT ({a})")).into_iter().collect();
        prop_assert_eq!(and, sa.intersection(&sb).cloned().collect::<BTreeSet<_>>());
        prop_assert_eq!(or, sa.union(&sb).cloned().collect::<BTreeSet<_>>());
        prop_assert!(sa.is_disjoint(&not_a));
        // COUNT agrees with the rows.
        let count = run(&format!("SELECT COUNT() AS n FROM devices WHERE {a}"));
        prop_assert_eq!(count, vec![json!({ "n": sa.len() })]);
        // Grouping partitions the selected devices.
        let groups = run(&format!("SELECT COUNT() AS n FROM devices WHERE {a} GROUP BY tags.kind"));
        let total: u64 = groups.iter().map(|g| g["n"].as_u64().unwrap()).sum();
        prop_assert_eq!(total, sa.len() as u64);
    }
}
