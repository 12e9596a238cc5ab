//! How the hub session gets to the hub: X.509 client certificates, an HTTP CONNECT proxy,
//! MQTT over WebSocket, and server verification with a private CA.

mod common;

use std::path::Path;

use common::*;
use hub_emulator::state::DeviceIdentity;
use serde_json::json;
use sha2::Digest as _;
use twinbridge::hub::{
    Credential, HubLink, LinkSettings, ProxySettings, Secret, Session, SessionEvent, Transport,
};

/// GET + PATCH + GET on a connected session; the hub's twin shows the patch.
async fn full_exchange(hub: &TestHub, s: &mut Session, device_id: &str) {
    connected(&mut s.events).await;
    let before = s.handle.get_twin().await.expect("GET");
    let rid = s.handle.next_request_id();
    let v = s
        .handle
        .patch_reported(&rid, &json!({"via": device_id}))
        .await
        .expect("PATCH");
    assert!(v > before.reported_version);
    let after = s.handle.get_twin().await.expect("GET after PATCH");
    assert_eq!(after.reported, json!({"via": device_id}));
    let twin = service_twin(&hub.emu, device_id).await;
    assert_eq!(twin["properties"]["reported"]["via"], json!(device_id));
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("file written");
    path
}

#[tokio::test]
async fn x509_identity_authenticates_by_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["x509-dev".to_owned()]).expect("cert");
    let thumbprint = sha2::Sha256::digest(ck.cert.der())
        .iter()
        .fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            write!(s, "{b:02x}").expect("writing to a String cannot fail");
            s
        });
    let hub = start_hub_with(&[], |c| {
        let mut id = DeviceIdentity::new("x509-dev", KEY_A, KEY_B);
        id.thumbprint = Some(thumbprint);
        c.devices.push(id);
    })
    .await;
    let cert_file = write(hub.dir.path(), "dev.pem", &ck.cert.pem());
    let key_file = write(hub.dir.path(), "dev.key", &ck.signing_key.serialize_pem());
    let link = HubLink::new(hub.settings.clone(), unpaced()).expect("link");
    let credential = Credential::X509 {
        cert_file,
        key_file,
    };
    link.check_credential("x509-dev", &credential)
        .expect("credential loads");
    let mut s = link.spawn("x509-dev", credential);
    full_exchange(&hub, &mut s, "x509-dev").await;

    // Another certificate is refused: no connect, only refusals.
    let other = rcgen::generate_simple_self_signed(vec!["impostor".to_owned()]).expect("cert");
    let impostor = Credential::X509 {
        cert_file: write(hub.dir.path(), "other.pem", &other.cert.pem()),
        key_file: write(
            hub.dir.path(),
            "other.key",
            &other.signing_key.serialize_pem(),
        ),
    };
    s.handle.shutdown().await;
    let mut bad = link.spawn("x509-dev", impostor);
    eventually("the impostor refused twice", || async {
        counter(&hub.emu, "connects_refused").await >= 2
    })
    .await;
    assert!(
        bad.events.try_recv().is_err(),
        "no Connected for an impostor"
    );
    assert_eq!(counter(&hub.emu, "connects").await, 1);
}

#[tokio::test]
async fn check_credential_names_the_missing_file() {
    let hub = start_hub(&["d1"]).await;
    let link = HubLink::new(hub.settings.clone(), unpaced()).expect("link");
    let missing = hub.dir.path().join("nope.pem");
    let err = link
        .check_credential(
            "d1",
            &Credential::X509 {
                cert_file: missing.clone(),
                key_file: missing.clone(),
            },
        )
        .expect_err("missing certificate");
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let err = link
        .check_credential("d1", &Credential::SymmetricKey(Secret::new("%%secret%%")))
        .expect_err("not base64");
    assert!(!err.to_string().contains("%%secret%%"), "{err}");
}

#[tokio::test]
async fn ca_file_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = LinkSettings::new("localhost");
    let missing = dir.path().join("missing-ca.pem");
    settings.ca_file = Some(missing.clone());
    let err = HubLink::new(settings.clone(), unpaced()).expect_err("missing CA file");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    let garbage = write(dir.path(), "garbage.pem", "hello\n");
    settings.ca_file = Some(garbage.clone());
    let msg = HubLink::new(settings, unpaced())
        .expect_err("no certificate in the CA file")
        .to_string();
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
}

#[tokio::test]
async fn a_server_outside_the_trusted_roots_is_never_used() {
    let proxy = start_proxy().await;
    let mut hub = start_hub(&["d1"]).await;
    // Trust another CA than the one that signed the emulator's certificate.
    let (other_ca, _, _) = test_pki();
    hub.settings.ca_file = Some(write(hub.dir.path(), "other-ca.pem", &other_ca));
    // The proxy lets the test see the attempts that TLS then refuses.
    hub.settings.proxy = Some(ProxySettings {
        host: "127.0.0.1".into(),
        port: proxy.addr.port(),
        auth: None,
    });
    let mut s = HubLink::new(hub.settings.clone(), unpaced())
        .expect("link")
        .spawn("d1", key_a());
    eventually("three attempts", || async { proxy.tunnels() >= 3 }).await;
    assert!(s.events.try_recv().is_err(), "never connected");
    let c = counters(&hub.emu).await;
    assert_eq!(
        (c["connects"].as_u64(), c["connects_refused"].as_u64()),
        (Some(0), Some(0)),
        "no CONNECT reached the hub"
    );
}

#[tokio::test]
async fn http_connect_proxy_carries_the_session() {
    let proxy = start_proxy().await;
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.proxy = Some(ProxySettings {
        host: "127.0.0.1".into(),
        port: proxy.addr.port(),
        auth: Some(("gateway".into(), Secret::new("pr0xy-pass"))),
    });
    assert!(!format!("{:?}", hub.settings).contains("pr0xy-pass"));
    let mut s = HubLink::new(hub.settings.clone(), unpaced())
        .expect("link")
        .spawn("d1", key_a());
    full_exchange(&hub, &mut s, "d1").await;
    assert_eq!(proxy.tunnels(), 1);
    let seen = proxy.seen.lock().expect("proxy log").clone();
    let port = hub.emu.mqtt_addr().port();
    assert_eq!(
        seen,
        vec![(
            format!("localhost:{port}"),
            // base64("gateway:pr0xy-pass")
            Some("Basic Z2F0ZXdheTpwcjB4eS1wYXNz".to_owned())
        )]
    );
}

#[tokio::test]
async fn mqtt_over_websocket() {
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.transport = Transport::MqttWs;
    hub.settings.port = Some(hub.emu.ws_addr().expect("WebSocket listener").port());
    let mut s = HubLink::new(hub.settings.clone(), unpaced())
        .expect("link")
        .spawn("d1", key_a());
    full_exchange(&hub, &mut s, "d1").await;
    // Desired notifications come over WebSocket too.
    let t = set_desired(&hub.emu, "d1", &json!({"sp": 3})).await;
    let version = t["properties"]["desired"]["$version"]
        .as_i64()
        .expect("version");
    let (ev, _) = wait_event(&mut s.events, "Desired", |e| {
        matches!(e, SessionEvent::Desired { .. })
    })
    .await;
    assert_eq!(
        ev,
        SessionEvent::Desired {
            patch: json!({"sp": 3}),
            version
        }
    );
}

#[tokio::test]
async fn mqtt_over_websocket_through_the_proxy() {
    let proxy = start_proxy().await;
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.transport = Transport::MqttWs;
    let ws_port = hub.emu.ws_addr().expect("WebSocket listener").port();
    hub.settings.port = Some(ws_port);
    hub.settings.proxy = Some(ProxySettings {
        host: "127.0.0.1".into(),
        port: proxy.addr.port(),
        auth: None,
    });
    let mut s = HubLink::new(hub.settings.clone(), unpaced())
        .expect("link")
        .spawn("d1", key_a());
    full_exchange(&hub, &mut s, "d1").await;
    assert_eq!(proxy.tunnels(), 1);
    let seen = proxy.seen.lock().expect("proxy log").clone();
    assert_eq!(seen, vec![(format!("localhost:{ws_port}"), None)]);
}
