//! MQTT over TLS with a certificate generated at test time.

mod common;

use common::{
    KEY_A, KEY_B, RES_FILTER, client_cert, connect_with, options, start, test_cert, tls_client,
    tls_client_with_cert,
};
use hub_emulator::state::DeviceIdentity;
use rumqttc::{ConnectReturnCode, ConnectionError, TlsConfiguration, Transport};

#[tokio::test]
async fn tls_connect_get_and_plain_tcp_is_refused() {
    let (cert_pem, key_pem, der) = test_cert();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert_pem).unwrap();
    write_private(&key_path, &key_pem);
    let server = hub_emulator::tls::server_config_from_files(&cert_path, &key_path).unwrap();
    let emu = start(|c| c.tls = Some(server)).await;
    assert!(emu.is_tls());

    let token = emu.device_token("d1", 600).unwrap();
    let mut o = options(&emu, "d1", &emu.username("d1"), &token);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls_client(der),
    )));
    let mut dev = connect_with(o).await.expect("TLS connection accepted");
    dev.subscribe(&[RES_FILTER]).await;
    let r = dev.get_twin().await;
    assert_eq!(r.status, 200);

    // A plain-TCP client cannot talk MQTT to the TLS listener.
    let plain = connect_with(options(
        &emu,
        "d2",
        &emu.username("d2"),
        &emu.device_token("d2", 600).unwrap(),
    ))
    .await;
    assert!(plain.is_err());
    assert!(!emu.hub().is_connected("d2"));
}

/// SHA-256 thumbprint, computed here independently of the emulator.
fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    sha2::Sha256::digest(der)
        .iter()
        .fold(String::new(), |mut s, b| {
            write!(s, "{b:02X}").expect("writing to a String cannot fail");
            s
        })
}

#[tokio::test]
async fn x509_device_authenticates_by_thumbprint() {
    let (cert_pem, key_pem, ca) = test_cert();
    let server = hub_emulator::tls::server_config(
        vec![
            rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap(),
        ],
        rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let (dev_cert, dev_key) = client_cert("x509-dev");
    let (other_cert, other_key) = client_cert("impostor");
    let mut identity = DeviceIdentity::new("x509-dev", KEY_A, KEY_B);
    identity.thumbprint = Some(sha256_hex(&dev_cert));
    let emu = start(|c| {
        c.tls = Some(server);
        c.devices.push(identity);
    })
    .await;
    let x509_options = |tls: std::sync::Arc<rustls::ClientConfig>| {
        // Empty password: authenticate by certificate.
        let mut o = options(&emu, "x509-dev", &emu.username("x509-dev"), "");
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        o
    };

    let mut dev = connect_with(x509_options(tls_client_with_cert(
        ca.clone(),
        dev_cert,
        dev_key,
    )))
    .await
    .expect("registered certificate accepted");
    dev.subscribe(&[RES_FILTER]).await;
    assert_eq!(dev.get_twin().await.status, 200);
    assert_eq!(
        emu.hub().twin_json("x509-dev").unwrap()["authenticationType"],
        "selfSigned"
    );

    for tls in [
        tls_client_with_cert(ca.clone(), other_cert, other_key),
        tls_client(ca.clone()),
    ] {
        match connect_with(x509_options(tls)).await {
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::NotAuthorized);
            }
            other => panic!("expected refusal, got {:?}", other.err()),
        }
    }
}

#[test]
fn missing_key_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, _, _) = test_cert();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    let key = dir.path().join("nope.pem");
    let err = hub_emulator::tls::server_config_from_files(&cert, &key).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    write_private(&key, "not a key");
    let err = hub_emulator::tls::server_config_from_files(&cert, &key).unwrap_err();
    assert!(
        matches!(err, hub_emulator::tls::TlsError::NoKey(_)),
        "{err}"
    );
}

/// Writes a file only its owner may read (mode 0600), as a key file must be.
fn write_private(path: &std::path::Path, contents: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("creating the key file");
    f.write_all(contents.as_bytes())
        .expect("writing the key file");
}

#[test]
fn key_file_readable_by_group_or_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, _) = test_cert();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    write_private(&key, &key_pem);
    assert!(hub_emulator::tls::server_config_from_files(&cert, &key).is_ok());
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = hub_emulator::tls::server_config_from_files(&cert, &key).unwrap_err();
        assert!(
            matches!(err, hub_emulator::tls::TlsError::KeyNotPrivate { mode: m, .. } if m == mode),
            "mode {mode:o}: {err}"
        );
    }
    // The binary refuses to start, naming the file and the fix.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub-emulator"))
        .args(["--mqtt-bind", "127.0.0.1:0", "--no-service", "--no-control"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("chmod 600"),
        "{stderr}"
    );
}
