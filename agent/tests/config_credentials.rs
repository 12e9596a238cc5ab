//! Resolving every identity's credential: keys files, `$CREDENTIALS_DIRECTORY`, group keys,
//! X.509 files, the key-file permission check, and secrets that never show.

mod config_common;

use std::path::Path;

use config_common::{GOOD_SECRETS, copy_fixture, error_lines, set_mode, write};
use twinbridge::config::Config;
use twinbridge::credentials::{self, Identity};
use twinbridge::hub::{Credential, Secret};

fn sas(key: &str) -> Credential {
    Credential::SymmetricKey(Secret::new(key))
}

fn resolve(
    path: &Path,
    credentials_dir: Option<&Path>,
) -> Result<Vec<Identity>, twinbridge::config::ConfigErrors> {
    credentials::resolve(
        &Config::load(path).expect("valid configuration"),
        credentials_dir,
    )
}

#[test]
fn every_identity_of_the_good_fixture_resolves_gateway_first() {
    let (dir, path) = copy_fixture("good");
    let identities = resolve(&path, None).unwrap();
    let d = dir.path();
    assert_eq!(
        identities,
        [
            Identity {
                id: "gw-plant7-01".into(),
                credential: sas("Z2F0ZXdheS1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM="),
                is_gateway: true,
            },
            Identity {
                id: "meter-01".into(),
                credential: sas("bWV0ZXItMDEta2V5LTAxMjM0NTY3ODlhYmNkZWYwMTI="),
                is_gateway: false,
            },
            Identity {
                id: "boiler-03".into(),
                // openssl's reading of the DPS convention:
                // printf boiler-03 | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(base64 -d group.key | xxd -p -c 100) -binary | base64
                credential: sas("dubYp1j6vSCRB7qV3ajikc5BR8EmbnwBDPzKQaVTVdQ="),
                is_gateway: false,
            },
            Identity {
                id: "meter-02".into(),
                credential: Credential::X509 {
                    cert_file: d.join("certs/meter-02.pem"),
                    key_file: d.join("certs/meter-02.key"),
                },
                is_gateway: false,
            },
        ]
    );
    let shown = format!("{identities:?}");
    for secret in GOOD_SECRETS {
        assert!(!shown.contains(secret), "Debug shows a key: {shown}");
    }
}

#[test]
fn the_credentials_directory_wins_and_skips_the_mode_check() {
    let (dir, path) = copy_fixture("good");
    let creds = dir.path().join("creds");
    // systemd owns these files: a loose mode is not ours to judge.
    write(&creds, "meter-01", "Y3JlZGVudGlhbC1rZXk=\n");
    write(
        &creds,
        "group-key",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    );
    set_mode(&creds.join("meter-01"), 0o644);
    set_mode(&creds.join("group-key"), 0o644);
    let identities = resolve(&path, Some(&creds)).unwrap();
    let key_of = |id: &str| {
        identities
            .iter()
            .find(|i| i.id == id)
            .unwrap()
            .credential
            .clone()
    };
    assert_eq!(
        key_of("meter-01"),
        sas("Y3JlZGVudGlhbC1rZXk="),
        "trimmed, from the directory"
    );
    assert_eq!(
        key_of("gw-plant7-01"),
        sas("Z2F0ZXdheS1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM="),
        "from keys.toml"
    );
    // Derived from the directory's group key (the derivation itself is pinned against
    // openssl in the unit tests).
    let expected = credentials::derive_device_key(&(0u8..32).collect::<Vec<_>>(), "boiler-03");
    assert_eq!(key_of("boiler-03"), Credential::SymmetricKey(expected));
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let (dir, path) = copy_fixture("good");
    let d = dir.path();
    set_mode(&d.join("keys.toml"), 0o644);
    set_mode(&d.join("group.key"), 0o620);
    set_mode(&d.join("certs/meter-02.key"), 0o604);
    let errors = resolve(&path, None).unwrap_err();
    assert_eq!(
        error_lines(&errors, d),
        [
            "config.toml:19:13: keys_file: refusing key file $DIR/keys.toml: mode 0644 lets group or others read it; restrict it with chmod 600 $DIR/keys.toml",
            "config.toml:20:18: group_key_file: refusing key file $DIR/group.key: mode 0620 lets group or others write it; restrict it with chmod 600 $DIR/group.key",
            r#"config.d/10-meters.toml:6:12: device "meter-02": key_file: refusing key file $DIR/certs/meter-02.key: mode 0604 lets group or others read it; restrict it with chmod 600 $DIR/certs/meter-02.key"#,
        ],
        "one error per file, however many identities use it"
    );
}

#[test]
fn missing_keys_are_named_with_where_they_were_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = write(d, "keys.toml", "gw = \"Z3c=\"\n");
    set_mode(&keys, 0o600);
    let path = write(
        d,
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\nkeys_file = \"keys.toml\"\n\
         [[device]]\nid = \"m1\"\n\
         [[device]]\nid = \"m2\"\nauth = \"group-key\"\n",
    );
    let creds = d.join("creds");
    std::fs::create_dir(&creds).unwrap();
    let errors = resolve(&path, Some(&creds)).unwrap_err();
    assert_eq!(
        error_lines(&errors, d),
        [
            r#"config.toml:7:6: device "m1": no SAS key: no entry "m1" in keys file $DIR/keys.toml, and no credential "m1" in $DIR/creds"#,
            r#"config.toml:9:6: device "m2": no group key: no credential "group-key" in $DIR/creds, and no group_key_file is set"#,
        ]
    );
    let errors = resolve(&path, None).unwrap_err();
    assert_eq!(
        errors.0[0].message,
        r#"no SAS key: no entry "m1" in keys file "#.to_owned()
            + &keys.display().to_string()
            + r#", and no credential "m1" ($CREDENTIALS_DIRECTORY is not set: outside systemd, pass --credentials-dir)"#
    );
}

#[test]
fn bad_keys_are_reported_at_their_line_without_showing_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = write(
        d,
        "keys.toml",
        "# keys\ngw = \"Z3c=\"\nm1 = \"hunter2-not-base64!\"\nm2 = 12345\n",
    );
    set_mode(&keys, 0o600);
    let creds = d.join("creds");
    write(&creds, "m3", "s3cret-not-base64!\n");
    let path = write(
        d,
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\nkeys_file = \"keys.toml\"\n\
         [[device]]\nid = \"m1\"\n[[device]]\nid = \"m2\"\n[[device]]\nid = \"m3\"\n",
    );
    let errors = resolve(&path, Some(&creds)).unwrap_err();
    let lines = error_lines(&errors, d);
    assert_eq!(
        lines,
        [
            r#"keys.toml:3:6: key "m1": expected a base64 key string (the value is not shown)"#,
            r#"keys.toml:4:6: key "m2": expected a base64 key string (the value is not shown)"#,
            r#"config.toml:11:6: device "m3": credential $DIR/creds/m3: not a valid base64 key"#,
        ]
    );
    let all = lines.join("\n");
    for secret in ["hunter2", "12345", "s3cret"] {
        assert!(!all.contains(secret), "{all}");
    }
}

#[test]
fn a_keys_file_with_broken_toml_is_reported_once_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = write(
        d,
        "keys.toml",
        "gw = \"Z3c=\"\nm1 = \"unterminated-secret\n",
    );
    set_mode(&keys, 0o600);
    let path = write(
        d,
        "config.toml",
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\nkeys_file = \"keys.toml\"\n[[device]]\nid = \"m1\"\n",
    );
    let errors = resolve(&path, None).unwrap_err();
    let lines = error_lines(&errors, d);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("keys.toml:2:"), "{lines:?}");
    assert!(!lines[0].contains("unterminated-secret"), "{lines:?}");
}

#[test]
fn x509_files_must_hold_a_certificate_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "c.pem", "no certificate here\n");
    let key = write(d, "c.key", "no key here\n");
    set_mode(&key, 0o600);
    let path = write(
        d,
        "config.toml",
        "[gateway]\nid = \"gw\"\nauth = \"x509\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n\
         [hub]\nhost = \"h\"\n\
         [[device]]\nid = \"m1\"\nauth = \"x509\"\ncert_file = \"none.pem\"\nkey_file = \"none.key\"\n",
    );
    let errors = resolve(&path, None).unwrap_err();
    assert_eq!(
        error_lines(&errors, d),
        [
            "config.toml:4:13: gateway: cert_file: $DIR/c.pem: no PEM certificate in it",
            "config.toml:5:12: gateway: key_file: $DIR/c.key: no PEM private key in it",
            r#"config.toml:11:13: device "m1": cert_file: reading $DIR/none.pem: No such file or directory (os error 2)"#,
            r#"config.toml:12:12: device "m1": key_file: reading key file $DIR/none.key: No such file or directory (os error 2)"#,
        ]
    );
}

#[test]
fn a_keys_file_inside_the_credentials_directory_skips_the_mode_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let creds = d.join("creds");
    let keys = write(&creds, "keys.toml", "gw = \"Z3c=\"\n");
    set_mode(&keys, 0o644);
    let config = format!(
        "[gateway]\nid = \"gw\"\n[hub]\nhost = \"h\"\nkeys_file = \"{}\"\n",
        keys.display()
    );
    let path = write(d, "config.toml", &config);
    assert_eq!(
        resolve(&path, Some(&creds)).unwrap()[0].credential,
        sas("Z3c=")
    );
    let errors = resolve(&path, None).unwrap_err();
    assert!(
        errors.0[0].message.starts_with("refusing key file"),
        "{errors}"
    );
}
