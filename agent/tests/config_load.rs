//! Loading a valid configuration: drop-ins merged in order, defaults, and the values handed
//! to the hub link and the store.

mod config_common;

use std::time::Duration;

use config_common::{copy_fixture, write};
use twinbridge::config::{AuthConfig, Config};
use twinbridge::hub::Transport;
use twinbridge::store::HistoryLimits;

#[test]
fn the_good_fixture_loads_with_drop_ins_merged_in_name_order() {
    let (dir, path) = copy_fixture("good");
    let config = Config::load(&path).unwrap();
    let d = dir.path();

    // Files: the main file, then *.toml drop-ins by name; hidden and other files skipped.
    assert_eq!(
        config.files,
        [
            path.clone(),
            d.join("config.d/10-meters.toml"),
            d.join("config.d/20-overrides.toml")
        ]
    );

    assert_eq!(config.gateway.id, "gw-plant7-01");
    assert_eq!(
        config.gateway.state_dir,
        d.join("state"),
        "relative to the config dir"
    );
    assert_eq!(config.store_path(), d.join("state/twinbridge.db"));
    assert_eq!(
        config.gateway.log_level.as_deref(),
        Some("info,twinbridge::hub=debug")
    );

    let hub = &config.hub;
    assert_eq!(hub.host, "myhub.azure-devices.net");
    assert_eq!(hub.port, Some(8443), "overridden by 20-overrides.toml");
    assert_eq!(hub.transport, Transport::MqttWs);
    assert_eq!(hub.ca_file, Some(d.join("ca.pem")));
    assert_eq!(hub.sas_token_lifetime, Duration::from_secs(10));
    assert_eq!(hub.keep_alive, Duration::from_secs(30));
    assert_eq!(hub.request_timeout, Duration::from_secs(5));
    assert_eq!(hub.backoff.initial, Duration::from_millis(500));
    assert_eq!(hub.backoff.max, Duration::from_mins(2));
    assert!((hub.connects_per_sec - 2.0).abs() < f64::EPSILON);
    assert!((hub.twin_reads_per_sec - 50.5).abs() < f64::EPSILON);
    assert!((hub.twin_updates_per_sec - 25.0).abs() < f64::EPSILON);
    let proxy = hub.proxy.as_ref().unwrap();
    assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.local", 3128));
    let (user, password) = proxy.auth.as_ref().unwrap();
    assert_eq!((user.as_str(), password.expose()), ("squid", "s3cr@t"));

    let ids: Vec<_> = config.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["meter-01", "boiler-03", "meter-02"]);
    assert_eq!(config.identity_ids().collect::<Vec<_>>()[0], "gw-plant7-01");

    let keys_file = d.join("keys.toml");
    assert!(
        matches!(&config.gateway.auth, AuthConfig::Sas { keys_file: Some(f) } if f.path == keys_file)
    );
    assert!(
        matches!(&config.devices[0].auth, AuthConfig::Sas { keys_file: Some(f) } if f.path == keys_file)
    );
    assert!(
        matches!(&config.devices[1].auth, AuthConfig::GroupKey { group_key_file: Some(f) } if f.path == d.join("group.key"))
    );
    match &config.devices[2].auth {
        AuthConfig::X509 {
            cert_file,
            key_file,
        } => {
            assert_eq!(cert_file.path, d.join("certs/meter-02.pem"));
            assert_eq!(key_file.path, d.join("certs/meter-02.key"));
            assert_eq!(
                cert_file.defined_at.to_string(),
                "config.d/10-meters.toml:5:13"
            );
        }
        other => panic!("expected x509, got {other:?}"),
    }

    assert_eq!(config.devices[0].history, None);
    assert_eq!(
        config.devices[1].history,
        Some(HistoryLimits {
            max_bytes: twinbridge::config::DEFAULT_HISTORY_MAX_BYTES,
            max_age: Duration::from_hours(48),
        }),
        "history from config.toml, max age from 20-overrides.toml"
    );
    assert_eq!(config.devices[1].defined_at.to_string(), "config.toml:30:6");
}

#[test]
fn link_settings_and_pacing_carry_the_hub_section() {
    let (_dir, path) = copy_fixture("good");
    let config = Config::load(&path).unwrap();
    let link = config.link_settings();
    assert_eq!(link.host, "myhub.azure-devices.net");
    assert_eq!(link.port, Some(8443));
    assert_eq!(link.transport, Transport::MqttWs);
    assert_eq!(link.ca_file, config.hub.ca_file);
    assert_eq!(link.proxy, config.hub.proxy);
    assert_eq!(link.token_lifetime, Duration::from_secs(10));
    assert_eq!(link.keep_alive, Duration::from_secs(30));
    assert_eq!(link.request_timeout, Duration::from_secs(5));
    assert_eq!(link.backoff, config.hub.backoff);
    // The Debug of settings built from a proxy URL with a password never shows it.
    assert!(!format!("{link:?} {config:?}").contains("s3cr"));
    let _pacing = config.pacing();
}

#[test]
fn a_minimal_configuration_gets_the_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"127.0.0.1\"\n",
    );
    let config = Config::load(&path).unwrap();
    assert_eq!(config.files, [path]);
    assert_eq!(
        config.gateway.state_dir,
        std::path::Path::new("/var/lib/twinbridge")
    );
    assert_eq!(
        config.store_path(),
        std::path::Path::new("/var/lib/twinbridge/twinbridge.db")
    );
    assert!(config.devices.is_empty());
    let hub = &config.hub;
    assert_eq!(
        (hub.port, hub.transport, hub.ca_file.as_ref()),
        (None, Transport::Mqtt, None)
    );
    assert_eq!(hub.sas_token_lifetime, Duration::from_hours(1));
    assert_eq!(hub.keep_alive, Duration::from_mins(1));
    assert_eq!(hub.request_timeout, Duration::from_secs(30));
    assert_eq!(hub.backoff.initial, Duration::from_secs(1));
    assert_eq!(hub.backoff.max, Duration::from_mins(5));
    assert_eq!(
        (
            hub.connects_per_sec,
            hub.twin_reads_per_sec,
            hub.twin_updates_per_sec
        ),
        (5.0, 20.0, 10.0)
    );
    assert!(hub.proxy.is_none());
    assert_eq!(config.gateway.auth, AuthConfig::Sas { keys_file: None });
}

#[test]
fn a_drop_in_device_with_a_new_id_appends_and_a_known_id_overrides_one_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\n\
         [[device]]\nid = \"a\"\nhistory = \"every-change\"\nhistory_max_bytes = 10\n\
         [[device]]\nid = \"b\"\n",
    );
    write(
        dir.path(),
        "config.d/50-a.toml",
        "[[device]]\nid = \"a\"\nhistory_max_bytes = 20\n",
    );
    write(dir.path(), "config.d/60-c.toml", "[[device]]\nid = \"c\"\n");
    let config = Config::load(&path).unwrap();
    let ids: Vec<_> = config.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(config.devices[0].history.unwrap().max_bytes, 20);
    assert_eq!(config.devices[0].defined_at.to_string(), "config.toml:6:6");
}

#[test]
fn default_path_is_the_env_override_or_etc() {
    // The override itself is tested through the binary (config_cli.rs), in a child process
    // with its own environment: setting variables in this process would race other tests.
    if std::env::var_os("TWINBRIDGE_CONFIG").is_none() {
        assert_eq!(
            Config::default_path(),
            std::path::Path::new("/etc/twinbridge/config.toml")
        );
    }
}
