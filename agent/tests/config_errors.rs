//! Invalid configurations: every error is reported, in file order, each naming file, line,
//! column, section and field, and saying what was expected.

mod config_common;

use std::path::Path;

use config_common::{copy_fixture, error_lines, write};
use twinbridge::config::Config;

fn errors_of(text: &str) -> Vec<String> {
    let errors = Config::from_str_at(text, Path::new("/etc/twinbridge/config.toml"))
        .expect_err("the configuration is invalid");
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn every_error_of_the_bad_fixture_is_reported_with_its_place() {
    let (dir, path) = copy_fixture("bad");
    let errors = Config::load(&path).unwrap_err();
    let expected = [
        r#"config.toml:4:6: gateway: id: a device id may only contain ASCII letters, digits and -.%_*?!(),:=@$', got "gw 01""#,
        "config.toml:5:1: gateway: colour: unknown key (expected one of: id, state_dir, log_level, auth, keys_file, group_key_file, cert_file, key_file)",
        r#"config.toml:8:8: hub: host: expected a host name without scheme, like "myhub.azure-devices.net", got "mqtts://myhub.azure-devices.net""#,
        "config.toml:9:8: hub: port: expected a port number from 1 to 65535, got 70000",
        r#"config.toml:10:13: hub: transport: expected one of "mqtt", "mqtt-ws", got "amqp""#,
        "config.toml:11:11: hub: ca_file: reading $DIR/missing-ca.pem: No such file or directory (os error 2)",
        r#"config.toml:12:22: hub: sas_token_lifetime: must be at least 10s, got "5s""#,
        r#"config.toml:13:14: hub: keep_alive: expected a duration like "5s", got "forever""#,
        "config.toml:14:20: hub: connects_per_sec: expected a positive number (per second), got 0",
        "config.toml:15:22: hub: twin_reads_per_sec: expected a positive number (per second), got -1.5",
        r#"config.toml:16:24: hub: twin_updates_per_sec: expected a positive number (per second), got "fast""#,
        r#"config.toml:17:9: hub: proxy: only http:// proxies are supported: expected a URL like "http://proxy.local:3128", got "https://***@proxy.local:3128""#,
        r#"config.toml:18:8: hub: auth: expected one of "sas", "group-key", "x509", got "password""#,
        "config.toml:22:7: hub: backoff.max: must be at least initial (10s), got 1s",
        "config.toml:23:10: hub: backoff.jitter: expected a number from 0 to 1, got 2",
        r#"config.toml:27:11: device "meter-01": history: expected one of "latest", "every-change", got "sometimes""#,
        r#"config.toml:30:6: device "meter-01": id: duplicate device id (first defined at config.toml:26:6)"#,
        "config.toml:32:1: device #3: id: missing: the identity's device id in the hub is required",
        r#"config.toml:35:1: device "cam-01": key_file: missing: required with auth = "x509""#,
        r#"config.toml:39:1: device "cam-01": keys_file: only used with auth = "sas", but this identity's auth is "x509""#,
        r#"config.d/10-meters.toml:4:1: device "meter-02": poll: only used with bus (a device without bus is an identity only)"#,
        r#"config.d/10-meters.toml:5:1: device "meter-02": history_max_age: only used with history = "every-change""#,
        r#"config.d/10-meters.toml:10:19: device "meter-03": history_max_age: expected a duration like "5s", got "fast""#,
        r#"config.d/10-meters.toml:11:21: device "meter-03": history_max_bytes: expected a positive number of bytes, got 0"#,
        r#"config.d/10-meters.toml:13:1: bus "rs485-a": port: missing: a bus needs port (a serial line), tcp (Modbus TCP) or rtu_over_tcp"#,
    ];
    assert_eq!(error_lines(&errors, dir.path()), expected);
    // Display is one error per line, in the same order.
    let shown = errors
        .to_string()
        .replace(&dir.path().display().to_string(), "$DIR");
    assert_eq!(shown, expected.join("\n"));
    assert!(!shown.contains("hunter2"), "the proxy password never shows");
}

#[test]
fn syntax_errors_of_every_file_are_reported_alone() {
    let (dir, path) = copy_fixture("bad-syntax");
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(
        error_lines(&errors, dir.path()),
        [
            "config.toml:3:12: invalid TOML: invalid basic string, expected `\"`",
            "config.toml:5:8: invalid TOML: extra `=`, expected nothing",
            "config.toml:5:10: invalid TOML: unexpected key or value, expected newline, `#`",
            "config.d/10-more.toml:3:1: invalid TOML: duplicate key",
        ]
    );
}

#[test]
fn an_empty_file_lacks_gateway_and_hub() {
    assert_eq!(
        errors_of(""),
        [
            "config.toml:1:1: gateway: missing table [gateway] (its id is required)",
            "config.toml:1:1: hub: missing table [hub] (its host is required)",
        ]
    );
}

#[test]
fn required_fields_are_reported_at_their_table() {
    assert_eq!(
        errors_of("# x\n[gateway]\n[hub]\nport = 1\n"),
        [
            "config.toml:2:1: gateway: id: missing: the identity's device id in the hub is required",
            "config.toml:3:1: hub: host: missing: the hub's host name is required",
        ]
    );
}

#[test]
fn a_device_cannot_take_the_gateway_id() {
    assert_eq!(
        errors_of("[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\n[[device]]\nid = \"gw\"\n"),
        [
            r#"config.toml:6:6: device "gw": id: a device cannot have the gateway's id (set at config.toml:2:6)"#
        ]
    );
}

#[test]
fn the_gateway_id_clash_is_reported_even_when_the_gateway_has_other_errors() {
    assert_eq!(
        errors_of(
            "[gateway]\nid = \"gw\"\nauth = \"nope\"\n[hub]\nhost = \"h\"\n[[device]]\nid = \"gw\"\n"
        ),
        [
            r#"config.toml:3:8: gateway: auth: expected one of "sas", "group-key", "x509", got "nope""#,
            r#"config.toml:7:6: device "gw": id: a device cannot have the gateway's id (set at config.toml:2:6)"#,
        ]
    );
}

#[test]
fn ids_longer_than_128_characters_are_refused() {
    let long = "x".repeat(129);
    let errors = errors_of(&format!(
        "[gateway]\nid = \"{long}\"\n[hub]\nhost = \"h\"\n"
    ));
    assert_eq!(
        errors,
        [format!(
            r#"config.toml:2:6: gateway: id: a device id has at most 128 characters, got "{long}""#
        )]
    );
}

#[test]
fn sections_of_the_wrong_type_are_named() {
    assert_eq!(
        errors_of("gateway = 1\nhub = \"h\"\ndevice = 3\n"),
        [
            "config.toml:1:11: gateway: expected a table [gateway], got 1",
            "config.toml:2:7: hub: expected a table [hub], got \"h\"",
            "config.toml:3:10: device: expected [[device]] tables, got 3",
        ]
    );
}

#[test]
fn an_invalid_override_is_reported_in_the_drop_in_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\nkeep_alive = \"10s\"\n[[device]]\nid = \"m\"\n",
    );
    write(
        dir.path(),
        "config.d/10-a.toml",
        "[hub]\nkeep_alive = \"0s\"\n",
    );
    write(
        dir.path(),
        "config.d/20-b.toml",
        "[[device]]\nid = \"m\"\nauth = \"x\"\n",
    );
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(
        error_lines(&errors, dir.path()),
        [
            r#"config.d/10-a.toml:2:14: hub: keep_alive: must be at least 1s, got "0s""#,
            r#"config.d/20-b.toml:3:8: device "m": auth: expected one of "sas", "group-key", "x509", got "x""#,
        ]
    );
}

#[test]
fn an_unreadable_main_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "reading config file {}: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", "not a certificate\n");
    let path = write(
        dir.path(),
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\nca_file = \"ca.pem\"\n",
    );
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(
        error_lines(&errors, dir.path()),
        [
            r#"config.toml:5:11: hub: ca_file: $DIR/ca.pem: no PEM certificate ("-----BEGIN CERTIFICATE-----") in it"#
        ]
    );
}

#[test]
fn a_log_level_that_is_neither_a_level_nor_directives_is_refused_with_its_place() {
    for value in ["\"inof\"", "3", "\"info,=x[\""] {
        let lines = errors_of(&format!(
            "[gateway]\nid = \"gw\"\nlog_level = {value}\n[hub]\nhost = \"h\"\n"
        ));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("config.toml:3:13: gateway: log_level: expected a level"),
            "{lines:?}"
        );
    }
    for good in ["\"debug\"", "\"WARN\"", "\"warn,twinbridge::bridge=debug\""] {
        let text = format!("[gateway]\nid = \"gw\"\nlog_level = {good}\n[hub]\nhost = \"h\"\n");
        Config::from_str_at(&text, Path::new("/etc/twinbridge/config.toml")).expect("accepted");
    }
}
